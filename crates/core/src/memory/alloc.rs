//! A counting global allocator: live heap bytes and their high-water mark.
//!
//! It wraps [`System`] and adds two relaxed atomic updates per allocation. Relaxed is
//! enough: the counters are statistics, not synchronisation — nobody orders other memory
//! accesses by them — and on aarch64 a relaxed `fetch_add` is a single LSE instruction
//! (or a short LL/SC loop on armv7), so the hot path stays cheap. The high-water mark is
//! updated with `fetch_max` after the add; two racing allocations can each see the other's
//! bytes or not, but the mark never misses a value that `CURRENT` actually held.
//!
//! Installed only by the binary (`#[global_allocator]` in `main.rs`); library users and
//! unit tests run on the plain system allocator, where [`installed`] is false and every
//! counter reads 0.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// `System` plus live-byte accounting. Counts requested sizes (`Layout::size`), not what
/// glibc rounds them up to, so it measures what the program asked for; the difference
/// (malloc headers, fragmentation, arenas) is part of the measured runtime overhead.
pub struct CountingAlloc;

impl CountingAlloc {
    #[inline]
    fn grew(by: usize) {
        let now = CURRENT.fetch_add(by, Relaxed) + by;
        PEAK.fetch_max(now, Relaxed);
    }

    #[inline]
    fn shrank(by: usize) {
        CURRENT.fetch_sub(by, Relaxed);
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged and only
// adds counter updates, so `System`'s guarantees carry over.
unsafe impl GlobalAlloc for CountingAlloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            Self::grew(layout.size());
        }
        p
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            Self::grew(layout.size());
        }
        p
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(ptr, layout) };
        Self::shrank(layout.size());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // A failed realloc leaves the old block (and the counters) as they were.
            if new_size >= layout.size() {
                Self::grew(new_size - layout.size());
            } else {
                Self::shrank(layout.size() - new_size);
            }
        }
        p
    }
}

/// Marks the counting allocator as the process's global allocator. `main` calls this
/// first thing; before it, reports say "not installed" rather than a misleading 0.
pub fn mark_installed() {
    INSTALLED.store(true, Relaxed);
}

/// Whether the binary installed [`CountingAlloc`] (false in library tests).
pub fn installed() -> bool {
    INSTALLED.load(Relaxed)
}

/// Live heap bytes right now.
pub fn current_bytes() -> usize {
    CURRENT.load(Relaxed)
}

/// Highest live heap bytes since start or the last [`reset_peak`].
pub fn peak_bytes() -> usize {
    PEAK.load(Relaxed)
}

/// Starts a new measurement window: the high-water mark becomes the current live bytes.
/// Returns the previous peak.
pub fn reset_peak() -> usize {
    PEAK.swap(CURRENT.load(Relaxed), Relaxed)
}

/// Heap high-water mark above the live bytes at the start, while `f` runs (what `f`
/// needed at its peak). Meaningful only where [`CountingAlloc`] is installed.
pub fn peak_during(f: impl FnOnce()) -> usize {
    let before = current_bytes();
    reset_peak();
    f();
    peak_bytes().saturating_sub(before)
}

/// Current and peak bytes, when the counting allocator is installed.
pub fn snapshot() -> Option<(usize, usize)> {
    installed().then(|| (current_bytes(), peak_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The unit-test binary does not install the allocator, so exercise the counting
    // paths directly through the GlobalAlloc impl.
    #[test]
    fn counts_alloc_realloc_dealloc_and_peak() {
        let a = CountingAlloc;
        let before = current_bytes();
        let layout = Layout::from_size_align(4096, 8).unwrap();
        // SAFETY: non-zero-sized layouts; each pointer is reallocated or freed once, with the
        // layout it currently has.
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            assert!(current_bytes() >= before + 4096);
            assert!(peak_bytes() >= before + 4096);
            let q = a.realloc(p, layout, 8192);
            assert!(!q.is_null());
            assert!(peak_bytes() >= before + 8192);
            let q = a.realloc(q, Layout::from_size_align(8192, 8).unwrap(), 100);
            a.dealloc(q, Layout::from_size_align(100, 8).unwrap());
        }
        // Other tests run in parallel on the system allocator, never through these
        // counters, so the balance is exact.
        assert_eq!(current_bytes(), before);
        reset_peak();
        assert_eq!(peak_bytes(), current_bytes());
    }
}
