//! Run-time admission against the RAM budget: a request may start only while the memory
//! it is planned to need fits beside what is already committed.
//!
//! The service measures its heap once models are loaded and warm (the baseline), so the
//! gate's limit is `heap budget - baseline`. A request's reservation grows with what it
//! actually holds — body bytes as they arrive ([`Reservation::try_resize_to`]), then an
//! upper bound of what decoding will allocate, then exactly what the decoded tensors,
//! their preprocessing and the plan's per-request activations take —
//! and is released when its response is written. Announced lengths reserve nothing: a
//! client that announces a large body and sends one byte holds one byte. The sum of
//! reservations never exceeds the limit, so the heap never exceeds the budget as long as
//! the per-request bounds hold — the integration tests check that against the counting
//! allocator's high-water mark.
//!
//! Why reservations and not the allocator's live count: live bytes lag (a request that
//! was admitted has not allocated yet), so two requests checked at once would both see
//! room. Reservations are taken under one lock and cannot race.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

/// Pure policy: may `need` more bytes be reserved?
pub fn fits(reserved: u64, need: u64, limit: u64) -> bool {
    reserved.checked_add(need).is_some_and(|t| t <= limit)
}

#[derive(Debug)]
pub struct Gate {
    /// Changes only when a model is swapped (`set_limit`); read under `reserved`'s lock.
    limit: AtomicU64,
    reserved: Mutex<u64>,
    freed: Condvar,
}

/// Bytes held for one request; released on drop.
#[derive(Debug)]
pub struct Reservation {
    gate: Arc<Gate>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // A poisoned lock means a panic elsewhere while holding it; the count is still a
        // plain integer, so keep using it.
        let mut r = self.gate.reserved.lock().unwrap_or_else(|p| p.into_inner());
        *r = r.saturating_sub(self.bytes);
        drop(r);
        self.gate.freed.notify_all();
    }
}

impl Reservation {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The gate this reservation is held at.
    pub fn gate(&self) -> Arc<Gate> {
        Arc::clone(&self.gate)
    }

    /// Sets this reservation to `total` bytes: shrinking always succeeds (and wakes
    /// waiters); growing succeeds only if the difference fits now (never waits).
    pub fn try_resize_to(&mut self, total: u64) -> bool {
        let mut r = self.gate.reserved.lock().unwrap_or_else(|p| p.into_inner());
        if total <= self.bytes {
            *r = r.saturating_sub(self.bytes - total);
            self.bytes = total;
            drop(r);
            self.gate.freed.notify_all();
            return true;
        }
        let more = total - self.bytes;
        if !fits(*r, more, self.gate.limit()) {
            return false;
        }
        *r += more;
        self.bytes = total;
        true
    }
}

impl Gate {
    /// `limit` in bytes; `u64::MAX` for "no budget".
    pub fn new(limit: u64) -> Arc<Gate> {
        Arc::new(Gate {
            limit: AtomicU64::new(limit),
            reserved: Mutex::new(0),
            freed: Condvar::new(),
        })
    }

    pub fn limit(&self) -> u64 {
        self.limit.load(Relaxed)
    }

    /// A model swap changed what the models hold (the old one's share freed, the new
    /// one's taken): the room left for requests moves with it. Reservations already held
    /// stay; waiters are woken to look again.
    pub fn set_limit(&self, limit: u64) {
        let r = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
        self.limit.store(limit, Relaxed);
        drop(r);
        self.freed.notify_all();
    }

    pub fn reserved(&self) -> u64 {
        *self.reserved.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves `need` bytes if they fit now; never waits (the async HTTP side polls).
    pub fn try_reserve(self: &Arc<Gate>, need: u64) -> Option<Reservation> {
        let mut r = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
        if !fits(*r, need, self.limit()) {
            return None;
        }
        *r += need;
        Some(Reservation {
            gate: Arc::clone(self),
            bytes: need,
        })
    }

    /// Reserves `need` bytes, waiting for other requests to release memory until
    /// `deadline`. `None` when it does not fit by then — or can never fit (`need` over the
    /// whole limit), which is answered at once rather than after a pointless wait.
    pub fn reserve_until(self: &Arc<Gate>, need: u64, deadline: Instant) -> Option<Reservation> {
        if need > self.limit() {
            return None;
        }
        let mut r = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if fits(*r, need, self.limit()) {
                *r += need;
                return Some(Reservation {
                    gate: Arc::clone(self),
                    bytes: need,
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            r = self
                .freed
                .wait_timeout(r, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn policy() {
        assert!(fits(0, 10, 10));
        assert!(!fits(1, 10, 10));
        assert!(!fits(u64::MAX, 1, u64::MAX));
    }

    #[test]
    fn reservations_add_up_and_release_on_drop() {
        let g = Gate::new(100);
        let soon = || Instant::now() + Duration::from_millis(20);
        let a = g.reserve_until(60, soon()).unwrap();
        assert_eq!(g.reserved(), 60);
        assert!(g.reserve_until(50, soon()).is_none());
        let b = g.reserve_until(40, soon()).unwrap();
        assert_eq!(g.reserved(), 100);
        drop(a);
        assert_eq!(g.reserved(), 40);
        drop(b);
        assert_eq!(g.reserved(), 0);
        assert!(g
            .reserve_until(101, Instant::now() + Duration::from_secs(60))
            .is_none());
    }

    #[test]
    fn a_reservation_grows_only_while_it_fits_and_shrinks_always() {
        let g = Gate::new(100);
        let mut a = g.try_reserve(10).unwrap();
        assert!(a.try_resize_to(70));
        assert!(a.try_resize_to(60), "shrinking always succeeds");
        assert_eq!((a.bytes(), g.reserved()), (60, 60));
        let b = g.try_reserve(30).unwrap();
        assert!(!a.try_resize_to(71));
        assert_eq!((a.bytes(), g.reserved()), (60, 90));
        assert!(g.try_reserve(11).is_none());
        drop(b);
        assert!(a.try_resize_to(100));
        drop(a);
        assert_eq!(g.reserved(), 0);
    }

    #[test]
    fn a_waiter_gets_memory_when_another_request_finishes() {
        let g = Gate::new(100);
        let held = g.reserve_until(80, Instant::now()).unwrap();
        let g2 = Arc::clone(&g);
        let t = std::thread::spawn(move || {
            g2.reserve_until(50, Instant::now() + Duration::from_secs(10))
                .map(|r| r.bytes())
        });
        std::thread::sleep(Duration::from_millis(50));
        drop(held);
        assert_eq!(t.join().unwrap(), Some(50));
    }

    #[test]
    fn concurrent_reservations_never_exceed_the_limit() {
        let g = Gate::new(1000);
        let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let g = Arc::clone(&g);
                let peak = Arc::clone(&peak);
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        if let Some(r) =
                            g.reserve_until(100 + i * 37, Instant::now() + Duration::from_millis(5))
                        {
                            peak.fetch_max(g.reserved(), std::sync::atomic::Ordering::Relaxed);
                            drop(r);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(peak.load(std::sync::atomic::Ordering::Relaxed) <= 1000);
        assert_eq!(g.reserved(), 0);
    }
}
