//! Bounds what glibc's allocator keeps after requests free their memory, so the service's
//! resident set (VmHWM), not only its heap, can be held within its budget.
//!
//! Measured (`tests/serve_attacks.rs::rss_stays_under_budget_with_large_bodies`: 60
//! clients each sending 2 MB JSON frames, 64 MiB budget, debug build): with glibc's
//! defaults the heap peaked at 32.9 MiB and VmHWM at 71.2 MiB — over the budget. Two
//! causes: each thread that allocates gets its own arena (up to 8 per core), each keeping
//! its own freed memory; and glibc raises its mmap threshold to the size of every large
//! block it frees (up to 32 MiB), so after the first 2 MB body every later one is carved
//! from an arena and kept there when freed.
//!
//! Always: two arenas (one for the HTTP thread, one shared by the rest; no measurable cost).
//! With `memory.strict_rss = true`: a fixed 64 KiB mmap threshold as well, so every large
//! block is its own mapping, returned to the kernel when freed — VmHWM 60.6–61.9 MiB in
//! the run above. It is not the default because every large block of tract's is then a
//! fresh mapping too, faulted in on every inference: +3 165 page faults and +26 % CPU per
//! MobileNetV2 INT8 inference at a 256 KiB threshold, and a 1 MiB threshold (+3 %) no
//! longer bounds the peak (table in docs/service.md, "RSS"). Trimming the arenas after
//! large requests (`malloc_trim`) was tried and did not bound the peak (VmHWM 66–70 MiB).

/// Arenas glibc may create.
pub const ARENA_MAX: i32 = 2;
/// Blocks this large or larger get their own mapping (strict mode).
pub const MMAP_THRESHOLD: i32 = 64 * 1024;

/// Applies the settings. Call before the service starts its threads. `false` when the C
/// library refused them or is not glibc.
pub fn bound_allocator_retention(strict: bool) -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets allocator parameters; called before the service
        // starts its threads.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX) == 1
                && (!strict
                    || (libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                        && libc::mallopt(libc::M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD) == 1))
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = strict;
        false
    }
}
