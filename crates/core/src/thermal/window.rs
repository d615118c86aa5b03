//! Latency windows: burst p95 (the last ~30 s) and sustained p95 (the last ~10 min), per
//! stage, kept in fixed-size log-linear histograms.
//!
//! Why histograms and not sample rings: a belt box serves an unbounded number of frames
//! per window (a 0.1 ms model does 10 000 a second), so any exact-sample ring must either
//! grow or sample. A histogram with 16 sub-buckets per power of two costs 1.5 KiB, records
//! in O(1) with no allocation, and bounds the relative error of a percentile by 1/16
//! (6.25 %). Both the SLO check and the burst/sustained comparison see the same
//! quantisation, so the ratio between them is unaffected.
//!
//! Why rotating slots: a window is a ring of time slots (burst: 15 slots, sustained: 20);
//! recording touches the current slot only, and a slot is cleared in place when time moves
//! past it. A window therefore covers between `(slots - 1) * slot` and `slots * slot` of
//! history; with 15 and 20 slots that is at most 7 % / 5 % short of the nominal span.
//!
//! All functions take `now_ms` (milliseconds on a monotonic clock) rather than reading a
//! clock, so tests can drive time exactly.

use crate::timing::{Stage, StageTimings};
use serde::Serialize;

/// Sub-bucket bits: 16 sub-buckets per power of two.
const SUB_BITS: u32 = 4;
const SUB: usize = 1 << SUB_BITS;
/// Values at or above 2^26 µs (67 s) share the top bucket; the exact max is kept apart.
const MAX_EXP: u32 = 26;
/// Number of buckets: exact below 16 µs, then 16 per octave up to 2^26 µs.
pub const BUCKETS: usize = SUB + (MAX_EXP - SUB_BITS) as usize * SUB;

/// Bucket index of a latency in microseconds.
pub fn bucket_of(us: u64) -> usize {
    if us < SUB as u64 {
        return us as usize;
    }
    let us = us.min((1u64 << MAX_EXP) - 1);
    let e = 63 - us.leading_zeros(); // floor(log2(us)), >= SUB_BITS here
    let sub = ((us >> (e - SUB_BITS)) as usize) & (SUB - 1);
    SUB + (e - SUB_BITS) as usize * SUB + sub
}

/// Largest value that falls into bucket `i` (percentiles report this: conservative).
pub fn bucket_upper(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let k = i.min(BUCKETS - 1) - SUB;
    let shift = (k / SUB) as u32; // e - SUB_BITS
    let sub = (k % SUB) as u64;
    let lower = (SUB as u64 + sub) << shift;
    lower + (1u64 << shift) - 1
}

/// A fixed histogram of latencies in microseconds.
#[derive(Clone)]
pub struct Histogram {
    counts: [u32; BUCKETS],
    n: u64,
    max_us: u64,
    sum_us: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: [0; BUCKETS],
            n: 0,
            max_us: 0,
            sum_us: 0,
        }
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("n", &self.n)
            .field("max_us", &self.max_us)
            .finish()
    }
}

impl Histogram {
    pub fn record(&mut self, us: u64) {
        let b = &mut self.counts[bucket_of(us)];
        *b = b.saturating_add(1);
        self.n += 1;
        self.max_us = self.max_us.max(us);
        self.sum_us = self.sum_us.saturating_add(us);
    }

    pub fn clear(&mut self) {
        self.counts = [0; BUCKETS];
        self.n = 0;
        self.max_us = 0;
        self.sum_us = 0;
    }

    pub fn count(&self) -> u64 {
        self.n
    }

    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        quantile(std::slice::from_ref(&self), q)
    }
}

/// Nearest-rank quantile over several histograms, without merging them into a new one
/// (no allocation, no 1.5 KiB temporary). Reports the bucket's upper bound, capped by the
/// exact maximum, so a reported p95 is never below the true one by more than the bucket
/// width and never above the largest latency that happened.
fn quantile(hs: &[&Histogram], q: f64) -> Option<u64> {
    let n: u64 = hs.iter().map(|h| h.n).sum();
    if n == 0 || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let max = hs.iter().map(|h| h.max_us).max().unwrap_or(0);
    let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
    let mut seen = 0u64;
    for i in 0..BUCKETS {
        seen += hs.iter().map(|h| u64::from(h.counts[i])).sum::<u64>();
        if seen >= rank {
            return Some(bucket_upper(i).min(max));
        }
    }
    Some(max)
}

/// Upper bound on slots per window, so queries can work in a fixed-size buffer.
const MAX_SLOTS: usize = 64;

#[derive(Debug, Clone)]
struct Slot {
    /// Slot number + 1 (`now_ms / slot_ms + 1`); 0 marks a never-used slot.
    epoch: u64,
    hist: Histogram,
}

/// One sliding window over time: a ring of slots, allocated once.
#[derive(Debug, Clone)]
pub struct Window {
    slot_ms: u64,
    slots: Box<[Slot]>,
}

impl Window {
    /// A window of `span_ms` in `slots` slots (clamped to 1..=64).
    pub fn new(span_ms: u64, slots: usize) -> Window {
        let slots = slots.clamp(1, MAX_SLOTS);
        let slot_ms = (span_ms / slots as u64).max(1);
        let empty = Slot {
            epoch: 0,
            hist: Histogram::default(),
        };
        Window {
            slot_ms,
            slots: vec![empty; slots].into_boxed_slice(),
        }
    }

    pub fn span_ms(&self) -> u64 {
        self.slot_ms * self.slots.len() as u64
    }

    fn epoch(&self, now_ms: u64) -> u64 {
        now_ms / self.slot_ms + 1
    }

    /// Records one latency at `now_ms`. O(1); allocation-free; clears at most one slot.
    pub fn record(&mut self, now_ms: u64, us: u64) {
        let epoch = self.epoch(now_ms);
        let len = self.slots.len() as u64;
        let slot = &mut self.slots[(epoch % len) as usize];
        if slot.epoch < epoch {
            slot.hist.clear();
            slot.epoch = epoch;
        }
        // slot.epoch > epoch only if the caller's clock went backwards: count the sample
        // in the newer slot rather than wiping recent history.
        slot.hist.record(us);
    }

    fn live(&self, now_ms: u64) -> impl Iterator<Item = &Histogram> {
        let cur = self.epoch(now_ms);
        let len = self.slots.len() as u64;
        self.slots
            .iter()
            .filter(move |s| s.epoch != 0 && s.epoch <= cur && s.epoch + len > cur)
            .map(|s| &s.hist)
    }

    /// Frames in the window.
    pub fn count(&self, now_ms: u64) -> u64 {
        self.live(now_ms).map(|h| h.n).sum()
    }

    /// Nearest-rank quantile in microseconds, `None` for an empty window.
    pub fn quantile_us(&self, now_ms: u64, q: f64) -> Option<u64> {
        // Windows have at most MAX_SLOTS slots (see `new`), so this never truncates.
        let hs: heapless::Vec<&Histogram, MAX_SLOTS> = self.live(now_ms).take(MAX_SLOTS).collect();
        quantile(&hs, q)
    }

    pub fn summary(&self, now_ms: u64) -> Summary {
        let ms = |q: f64| self.quantile_us(now_ms, q).map(|us| us as f64 / 1e3);
        let n = self.count(now_ms);
        let sum: u64 = self.live(now_ms).map(|h| h.sum_us).sum();
        Summary {
            count: n,
            p50_ms: ms(0.50),
            p95_ms: ms(0.95),
            p99_ms: ms(0.99),
            max_ms: self
                .live(now_ms)
                .map(|h| h.max_us)
                .max()
                .map(|us| us as f64 / 1e3),
            mean_ms: (n > 0).then(|| sum as f64 / n as f64 / 1e3),
        }
    }
}

/// Percentiles of one window at one moment (`None` when it holds no frames).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub mean_ms: Option<f64>,
}

/// Window lengths. The defaults are the product's: 30 s burst, 10 min sustained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct WindowConfig {
    pub burst_ms: u64,
    pub sustained_ms: u64,
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig {
            burst_ms: 30_000,
            sustained_ms: 600_000,
        }
    }
}

const BURST_SLOTS: usize = 15;
const SUSTAINED_SLOTS: usize = 20;

/// Burst and sustained windows for every stage (~260 KiB, allocated once).
#[derive(Debug, Clone)]
pub struct LatencyWindows {
    cfg: WindowConfig,
    burst: [Window; 5],
    sustained: [Window; 5],
}

impl LatencyWindows {
    pub fn new(cfg: WindowConfig) -> LatencyWindows {
        LatencyWindows {
            cfg,
            burst: std::array::from_fn(|_| Window::new(cfg.burst_ms, BURST_SLOTS)),
            sustained: std::array::from_fn(|_| Window::new(cfg.sustained_ms, SUSTAINED_SLOTS)),
        }
    }

    pub fn config(&self) -> WindowConfig {
        self.cfg
    }

    /// Hot path: one frame. No allocation, no locks.
    pub fn record(&mut self, now_ms: u64, sample: &StageTimings) {
        for (i, s) in Stage::ALL.iter().enumerate() {
            let us = sample.get(*s);
            self.burst[i].record(now_ms, us);
            self.sustained[i].record(now_ms, us);
        }
    }

    pub fn burst(&self, stage: Stage) -> &Window {
        &self.burst[stage_index(stage)]
    }

    pub fn sustained(&self, stage: Stage) -> &Window {
        &self.sustained[stage_index(stage)]
    }

    /// Burst p95 of the SLO stage (total), in ms.
    pub fn burst_p95_ms(&self, now_ms: u64) -> Option<f64> {
        self.burst(Stage::Total)
            .quantile_us(now_ms, 0.95)
            .map(|us| us as f64 / 1e3)
    }

    /// Sustained p95 of the SLO stage (total), in ms.
    pub fn sustained_p95_ms(&self, now_ms: u64) -> Option<f64> {
        self.sustained(Stage::Total)
            .quantile_us(now_ms, 0.95)
            .map(|us| us as f64 / 1e3)
    }

    pub fn report(&self, now_ms: u64) -> WindowReport {
        WindowReport {
            burst_window_s: self.burst[0].span_ms() as f64 / 1e3,
            sustained_window_s: self.sustained[0].span_ms() as f64 / 1e3,
            stages: Stage::ALL
                .iter()
                .enumerate()
                .map(|(i, s)| StageReport {
                    stage: *s,
                    burst: self.burst[i].summary(now_ms),
                    sustained: self.sustained[i].summary(now_ms),
                })
                .collect(),
        }
    }
}

fn stage_index(s: Stage) -> usize {
    Stage::ALL
        .iter()
        .position(|x| *x == s)
        .unwrap_or(Stage::ALL.len() - 1)
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StageReport {
    pub stage: Stage,
    pub burst: Summary,
    pub sustained: Summary,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WindowReport {
    pub burst_window_s: f64,
    pub sustained_window_s: f64,
    pub stages: Vec<StageReport>,
}

impl WindowReport {
    pub fn stage(&self, s: Stage) -> Option<&StageReport> {
        self.stages.iter().find(|r| r.stage == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_contiguous_and_tight() {
        let mut prev_upper = None;
        for i in 0..BUCKETS {
            let up = bucket_upper(i);
            if let Some(p) = prev_upper {
                assert!(up > p, "bucket {i}");
                // The next bucket starts right after the previous one ends.
                assert_eq!(bucket_of(p + 1), i, "bucket {i} lower edge");
            }
            assert_eq!(bucket_of(up), i, "bucket {i} upper edge");
            prev_upper = Some(up);
        }
        // Relative width at most 1/16 above the exact range.
        for us in [17u64, 100, 999, 12_345, 1_000_000, 60_000_000] {
            let up = bucket_upper(bucket_of(us));
            assert!(
                up >= us && (up - us) as f64 <= us as f64 / 16.0,
                "{us} -> {up}"
            );
        }
        // Saturation instead of overflow.
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_match_nearest_rank_within_bucket_error() {
        let mut h = Histogram::default();
        for us in 1..=1000u64 {
            h.record(us * 100); // 0.1 .. 100 ms
        }
        let p95 = h.quantile_us(0.95).unwrap();
        assert!((95_000..=95_000 + 95_000 / 16).contains(&p95), "{p95}");
        assert_eq!(h.quantile_us(1.0), Some(100_000));
        assert_eq!(Histogram::default().quantile_us(0.95), None);
        assert_eq!(h.quantile_us(f64::NAN), None);
    }

    #[test]
    fn window_forgets_old_slots_and_keeps_recent_ones() {
        // 10 s window in 10 slots of 1 s.
        let mut w = Window::new(10_000, 10);
        for t in 0..10_000u64 {
            w.record(t, 1_000); // 1 ms for the first 10 s
        }
        assert_eq!(w.count(9_999), 10_000);
        for t in 10_000..15_000u64 {
            w.record(t, 50_000); // 50 ms for the next 5 s
        }
        // Just before t = 15 s the window holds seconds 5..15: 5 s of 1 ms, 5 s of 50 ms.
        assert_eq!(w.count(14_999), 5_000 + 5_000);
        let p95 = w.quantile_us(14_999, 0.95).unwrap();
        assert!((50_000..=53_125).contains(&p95), "{p95}");
        assert!(w.quantile_us(14_999, 0.4).unwrap() <= 1_063);
        assert!(w.quantile_us(14_999, 0.6).unwrap() >= 50_000);
        // One slot later the oldest fast second has gone.
        assert_eq!(w.count(15_000), 4_000 + 5_000);
        // Long after: everything expired without any new record.
        assert_eq!(w.count(100_000), 0);
        assert_eq!(w.quantile_us(100_000, 0.95), None);
    }

    #[test]
    fn a_clock_going_backwards_does_not_wipe_history() {
        let mut w = Window::new(10_000, 10);
        w.record(5_000, 10);
        w.record(4_000, 20);
        w.record(5_000, 30);
        assert_eq!(w.count(5_000), 3);
    }

    #[test]
    fn burst_reacts_while_sustained_remembers() {
        let cfg = WindowConfig {
            burst_ms: 30_000,
            sustained_ms: 600_000,
        };
        let mut lw = LatencyWindows::new(cfg);
        let fast = StageTimings {
            queue_us: 100,
            preprocess_us: 1_000,
            inference_us: 8_000,
            postprocess_us: 1_000,
        };
        let slow = StageTimings {
            inference_us: 38_000,
            ..fast
        };
        // 9 minutes slow (throttled), then 1 minute fast, 10 frames/s.
        let mut t = 0;
        while t < 540_000 {
            lw.record(t, &slow);
            t += 100;
        }
        while t < 600_000 {
            lw.record(t, &fast);
            t += 100;
        }
        let burst = lw.burst_p95_ms(t).unwrap();
        let sustained = lw.sustained_p95_ms(t).unwrap();
        assert!((10.0..=10.7).contains(&burst), "burst {burst}");
        assert!((40.0..=42.6).contains(&sustained), "sustained {sustained}");
        let r = lw.report(t);
        assert_eq!(r.stages.len(), 5);
        let q = r.stage(Stage::Queue).unwrap();
        assert!(q.burst.p95_ms.unwrap() <= 0.11);
        assert_eq!(r.burst_window_s, 30.0);
        assert_eq!(r.sustained_window_s, 600.0);
    }
}
