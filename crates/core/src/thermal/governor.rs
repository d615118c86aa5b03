//! The governor: a small state machine that trades throughput and model quality for a
//! sustained p95 that stays where the benchmark put it. Pure code over plain inputs
//! (temperature, throttle flag, per-frame latency, a clock in ms): no sysfs, no model, no
//! sleeping — the adapter (service loop, soak harness) applies the knobs it returns.
//! The state machine is written down, with its reasons and thresholds, in docs/thermal.md.
//!
//! Levels, each cheaper in heat than the one above it:
//!
//! | level            | threads  | frames served | model    |
//! |------------------|----------|---------------|----------|
//! | `Full`           | full     | all           | primary  |
//! | `ReducedThreads` | reduced  | all           | primary  |
//! | `Paced`          | reduced if that level is fit, else full | `pace_duty` (evenly spread; the rest shed and counted) | primary |
//! | `Fallback`       | reduced  | all           | fallback (results flagged) |
//!
//! Why step *down* fast and *up* slowly: heat builds over minutes and throttling costs
//! far more latency than any of our steps, so pressure acts after a short dwell (or at
//! once when the platform already throttles), while recovery waits for the temperature to
//! fall below `resume_c` — well under the `warn_c` that caused the step — and to stay
//! there for `up_dwell_ms`. The gap between the two temperatures is the hysteresis that
//! stops a box hovering at `warn_c` from flapping.
//!
//! Why latency is watched per level: a step only helps if the frames it serves still meet
//! the latency target — `SLO * slo_guard` at `Full`, and `min(SLO * slo_guard, reference
//! p95 * tolerance)` below it (a step must not cost more than `tolerance` over what the
//! cold benchmark showed). Two mechanisms keep slow levels out of the ladder:
//! - *expected* p95 and CPU time per level (`expected_p95_ms`, `expected_cpu_ms`, from a
//!   startup bench where all configurations run interleaved so background load hits
//!   them alike): a level more than `tolerance` slower than `Full`, or one that does not
//!   save at least `min_cpu_saving` of the CPU time per frame (no less heat, so no
//!   reason to pay anything for it), is *unfit* and skipped without being visited;
//! - *observed* p95: a level whose own recent p95 breaks the target is left at once and
//!   *blocked* for `block_ms` (doubling each time it fails again, up to `max_block_ms`).

use serde::Serialize;

use super::window::Window;

/// Governor levels, from full speed down to the fallback model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Level {
    Full,
    ReducedThreads,
    Paced,
    Fallback,
}

impl Level {
    pub const ALL: [Level; 4] = [
        Level::Full,
        Level::ReducedThreads,
        Level::Paced,
        Level::Fallback,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Level::Full => "full",
            Level::ReducedThreads => "reduced-threads",
            Level::Paced => "paced",
            Level::Fallback => "fallback",
        }
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Thresholds and knobs. Temperatures in °C, times in ms.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GovernorConfig {
    /// The platform throttles here: act at once, go to the deepest level.
    pub throttle_c: f64,
    /// Step down (after `down_dwell_ms`) at or above this temperature.
    pub warn_c: f64,
    /// Step up only after staying at or below this temperature for `up_dwell_ms`.
    pub resume_c: f64,
    /// The model's p95 SLO (manifest `budgets.p95_ms`).
    pub slo_ms: f64,
    /// Latency target never exceeds `slo_ms * slo_guard` (act before the SLO is broken).
    pub slo_guard: f64,
    /// ...nor `reference_p95 * tolerance` (the sustained tail stays near the burst one).
    pub tolerance: f64,
    /// Frames a level must serve before its latency is judged.
    pub min_frames: u64,
    /// Minimum time between a transition and the next step down.
    pub down_dwell_ms: u64,
    /// How long it must stay cool before one step up.
    pub up_dwell_ms: u64,
    /// First blocking period for a level that broke the latency target; doubles on repeat.
    pub block_ms: u64,
    pub max_block_ms: u64,
    /// Span of the per-level latency window.
    pub level_window_ms: u64,
    pub full_threads: usize,
    pub reduced_threads: usize,
    /// Fraction of frames served at `Paced` (0 < duty <= 1; 1 disables the level).
    pub pace_duty: f64,
    /// Whether a fallback model is loaded (otherwise `Paced` is the deepest level).
    pub has_fallback: bool,
    /// p95 each level is expected to have (startup bench), indexed by `Level::index`;
    /// `None` = unknown (the level is assumed fit until observed).
    pub expected_p95_ms: [Option<f64>; 4],
    /// CPU time per frame each level is expected to cost (same bench), ms.
    pub expected_cpu_ms: [Option<f64>; 4],
    /// A level must save at least this fraction of `Full`'s CPU time per frame.
    pub min_cpu_saving: f64,
}

impl GovernorConfig {
    /// Product defaults for a board's thresholds and a model's SLO.
    pub fn new(
        throttle_c: f64,
        warn_c: f64,
        resume_c: f64,
        slo_ms: f64,
        full_threads: usize,
        has_fallback: bool,
    ) -> Self {
        let full_threads = full_threads.max(1);
        GovernorConfig {
            throttle_c,
            warn_c,
            resume_c,
            slo_ms,
            slo_guard: 0.9,
            tolerance: 1.1,
            min_frames: 20,
            down_dwell_ms: 5_000,
            up_dwell_ms: 30_000,
            block_ms: 60_000,
            max_block_ms: 600_000,
            level_window_ms: 30_000,
            full_threads,
            reduced_threads: (full_threads / 2).max(1),
            pace_duty: 0.5,
            has_fallback,
            expected_p95_ms: [None; 4],
            expected_cpu_ms: [None; 4],
            min_cpu_saving: 0.1,
        }
    }

    /// The same policy on a compressed clock (the soak's short mode): every duration is
    /// multiplied by `factor`.
    pub fn time_scaled(mut self, factor: f64) -> Self {
        let s = |ms: u64| ((ms as f64 * factor).round() as u64).max(1);
        self.down_dwell_ms = s(self.down_dwell_ms);
        self.up_dwell_ms = s(self.up_dwell_ms);
        self.block_ms = s(self.block_ms);
        self.max_block_ms = s(self.max_block_ms);
        self.level_window_ms = s(self.level_window_ms);
        self
    }

    fn available(&self, l: Level) -> bool {
        match l {
            Level::Full => true,
            // A step that changes nothing is no step: skip it.
            Level::ReducedThreads => self.reduced_threads < self.full_threads,
            Level::Paced => self.pace_duty > 0.0 && self.pace_duty < 1.0,
            Level::Fallback => self.has_fallback,
        }
    }

    /// Whether the startup bench says this level is worth its place in the ladder: its
    /// tail within `tolerance` of `Full`'s (relative, so background load during the bench
    /// cancels out) and its CPU time per frame at least `min_cpu_saving` lower. Unknown
    /// values count as fit. `Full` is the reference; `Paced` runs the fittest thread
    /// count and saves by serving fewer frames, so both are always fit. The deepest level
    /// is used regardless (there is nothing below it).
    pub fn fit(&self, l: Level) -> bool {
        if matches!(l, Level::Full | Level::Paced) {
            return true;
        }
        let i = l.index();
        let full = Level::Full.index();
        let latency_ok = match (self.expected_p95_ms[i], self.expected_p95_ms[full]) {
            (Some(e), Some(f)) => e <= f * self.tolerance,
            (Some(e), None) => e <= self.slo_ms * self.slo_guard,
            (None, _) => true,
        };
        let saves_heat = match (self.expected_cpu_ms[i], self.expected_cpu_ms[full]) {
            (Some(e), Some(f)) => e <= f * (1.0 - self.min_cpu_saving),
            _ => true,
        };
        latency_ok && saves_heat
    }

    fn deepest(&self) -> Level {
        Level::ALL
            .iter()
            .rev()
            .copied()
            .find(|l| self.available(*l))
            .unwrap_or(Level::Full)
    }

    pub fn knobs(&self, l: Level) -> Knobs {
        match l {
            Level::Full => Knobs {
                threads: self.full_threads,
                duty: 1.0,
                fallback: false,
            },
            Level::ReducedThreads => Knobs {
                threads: self.reduced_threads,
                duty: 1.0,
                fallback: false,
            },
            Level::Paced => Knobs {
                // Pacing keeps per-frame latency; run it on fewer threads only if that
                // configuration is fit.
                threads: if self.available(Level::ReducedThreads) && self.fit(Level::ReducedThreads)
                {
                    self.reduced_threads
                } else {
                    self.full_threads
                },
                duty: self.pace_duty,
                fallback: false,
            },
            Level::Fallback => Knobs {
                threads: self.reduced_threads,
                duty: 1.0,
                fallback: true,
            },
        }
    }

    /// The latency a level's recent p95 must stay under. `Full` is what the reference
    /// was measured on, so only the SLO binds it (comparing it with itself would make
    /// background noise look like a slow level).
    pub fn target_for(&self, l: Level, reference_p95_ms: Option<f64>) -> f64 {
        if l == Level::Full {
            self.slo_ms * self.slo_guard
        } else {
            self.latency_target_ms(reference_p95_ms)
        }
    }

    /// The latency target below `Full`: `min(SLO * slo_guard, reference * tolerance)`.
    pub fn latency_target_ms(&self, reference_p95_ms: Option<f64>) -> f64 {
        let slo = self.slo_ms * self.slo_guard;
        match reference_p95_ms {
            Some(r) if r.is_finite() && r > 0.0 => slo.min(r * self.tolerance),
            _ => slo,
        }
    }
}

/// What the adapter must apply at a level.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Knobs {
    pub threads: usize,
    /// Fraction of arriving frames to serve, evenly spread (1 = all); the others are shed
    /// and counted. Per-frame latency is unchanged; heat drops with the work.
    pub duty: f64,
    /// Serve with the fallback model and flag the results.
    pub fallback: bool,
}

/// One tick's view of the world.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Inputs {
    pub now_ms: u64,
    /// Hottest watched zone; `None` when the board has no readable sensor.
    pub temp_c: Option<f64>,
    /// The platform reports throttling (cpufreq capped, vendor flag).
    pub throttled: bool,
    /// Cold burst p95 at `Full` (what a benchmark shows), once known.
    pub reference_p95_ms: Option<f64>,
}

/// Why a transition happened.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Reason {
    /// The platform says it is throttling.
    Throttled { temp_c: Option<f64> },
    /// At or above the temperature where the platform throttles.
    AtThrottleTemp { temp_c: f64, throttle_c: f64 },
    /// At or above the warning temperature.
    NearThrottle { temp_c: f64, warn_c: f64 },
    /// The level's own recent p95 broke the latency target.
    LatencyOverTarget { p95_ms: f64, target_ms: f64 },
    /// Cool (or no sensor) and fast enough for long enough: one step back up.
    Recovered { temp_c: Option<f64>, calm_ms: u64 },
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Throttled { temp_c: Some(t) } => {
                write!(f, "platform reports throttling at {t:.1} °C")
            }
            Reason::Throttled { temp_c: None } => write!(f, "platform reports throttling"),
            Reason::AtThrottleTemp { temp_c, throttle_c } => {
                write!(
                    f,
                    "temperature {temp_c:.1} °C at or above throttle point {throttle_c:.1} °C"
                )
            }
            Reason::NearThrottle { temp_c, warn_c } => {
                write!(
                    f,
                    "temperature {temp_c:.1} °C at or above warning {warn_c:.1} °C"
                )
            }
            Reason::LatencyOverTarget { p95_ms, target_ms } => {
                write!(
                    f,
                    "recent p95 {p95_ms:.2} ms above target {target_ms:.2} ms"
                )
            }
            Reason::Recovered {
                temp_c: Some(t),
                calm_ms,
            } => {
                write!(
                    f,
                    "cooled to {t:.1} °C and calm for {:.1} s",
                    *calm_ms as f64 / 1e3
                )
            }
            Reason::Recovered {
                temp_c: None,
                calm_ms,
            } => write!(f, "calm for {:.1} s", *calm_ms as f64 / 1e3),
        }
    }
}

/// Metric labels of the reasons, in `Reason::index` order.
pub const REASON_LABELS: [&str; 5] = [
    "throttled",
    "at-throttle-temp",
    "near-throttle",
    "latency",
    "recovered",
];

impl Reason {
    pub fn index(&self) -> usize {
        match self {
            Reason::Throttled { .. } => 0,
            Reason::AtThrottleTemp { .. } => 1,
            Reason::NearThrottle { .. } => 2,
            Reason::LatencyOverTarget { .. } => 3,
            Reason::Recovered { .. } => 4,
        }
    }

    /// Short label for metrics.
    pub fn label(&self) -> &'static str {
        REASON_LABELS[self.index()]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Transition {
    pub at_ms: u64,
    pub from: Level,
    pub to: Level,
    pub reason: Reason,
}

impl std::fmt::Display for Transition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "governor {} -> {} at {:.1} s: {}",
            self.from,
            self.to,
            self.at_ms as f64 / 1e3,
            self.reason
        )
    }
}

/// Counters for metrics and reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GovernorStats {
    pub transitions: u64,
    pub fallback_switches: u64,
    /// Per level (indexed by `Level::index`).
    pub entries: [u64; 4],
    pub time_ms: [u64; 4],
    pub frames: [u64; 4],
    /// Transitions per reason (indexed like `REASON_LABELS`).
    pub by_reason: [u64; 5],
}

/// How many recent transitions are kept for `beltbox thermal` and the metrics endpoint.
pub const HISTORY: usize = 32;

#[derive(Debug, Clone)]
pub struct Governor {
    cfg: GovernorConfig,
    level: Level,
    last_change_ms: Option<u64>,
    calm_since_ms: Option<u64>,
    /// Frames served at the current level (cleared on every transition).
    level_window: Window,
    level_p95_ms: [Option<f64>; 4],
    blocked_until_ms: [u64; 4],
    block_len_ms: [u64; 4],
    history: heapless::HistoryBuf<Transition, HISTORY>,
    stats: GovernorStats,
    last_tick_ms: Option<u64>,
}

impl Governor {
    pub fn new(cfg: GovernorConfig) -> Governor {
        let level_window = Window::new(cfg.level_window_ms, 10);
        Governor {
            cfg,
            level: Level::Full,
            last_change_ms: None,
            calm_since_ms: None,
            level_window,
            level_p95_ms: [None; 4],
            blocked_until_ms: [0; 4],
            block_len_ms: [0; 4],
            history: heapless::HistoryBuf::new(),
            stats: GovernorStats {
                entries: [1, 0, 0, 0],
                ..GovernorStats::default()
            },
            last_tick_ms: None,
        }
    }

    pub fn config(&self) -> &GovernorConfig {
        &self.cfg
    }

    pub fn level(&self) -> Level {
        self.level
    }

    pub fn knobs(&self) -> Knobs {
        self.cfg.knobs(self.level)
    }

    pub fn stats(&self) -> &GovernorStats {
        &self.stats
    }

    /// Recent transitions, oldest first.
    pub fn history(&self) -> impl Iterator<Item = &Transition> {
        self.history.oldest_ordered()
    }

    /// Hot path: one served frame's SLO latency (preprocess + inference + postprocess).
    /// O(1), no allocation.
    pub fn observe(&mut self, now_ms: u64, total_us: u64) {
        self.level_window.record(now_ms, total_us);
        self.stats.frames[self.level.index()] += 1;
    }

    fn blocked(&self, l: Level, now_ms: u64) -> bool {
        now_ms < self.blocked_until_ms[l.index()]
    }

    fn dwell_elapsed(&self, now_ms: u64, dwell_ms: u64) -> bool {
        self.last_change_ms
            .is_none_or(|t| now_ms.saturating_sub(t) >= dwell_ms)
    }

    /// A level the ladder may use now: available, fit, not latency-blocked.
    fn usable(&self, l: Level, now_ms: u64) -> bool {
        self.cfg.available(l) && self.cfg.fit(l) && !self.blocked(l, now_ms)
    }

    /// The next deeper usable level; the deepest level is always acceptable (there is
    /// nothing below it).
    fn next_down(&self, now_ms: u64) -> Option<Level> {
        let deepest = self.cfg.deepest();
        Level::ALL
            .iter()
            .copied()
            .filter(|l| *l > self.level && *l <= deepest)
            .find(|l| *l == deepest || self.usable(*l, now_ms))
    }

    /// The next shallower usable level.
    fn next_up(&self, now_ms: u64) -> Option<Level> {
        Level::ALL
            .iter()
            .rev()
            .copied()
            .filter(|l| *l < self.level)
            .find(|l| self.usable(*l, now_ms))
    }

    fn go(&mut self, now_ms: u64, to: Level, reason: Reason) -> Option<Transition> {
        if to == self.level {
            return None;
        }
        let t = Transition {
            at_ms: now_ms,
            from: self.level,
            to,
            reason,
        };
        if let Reason::LatencyOverTarget { .. } = reason {
            // The level we leave could not hold the tail: keep away from it for a while,
            // longer each time it fails again.
            let i = self.level.index();
            let len = if self.block_len_ms[i] == 0 {
                self.cfg.block_ms
            } else {
                (self.block_len_ms[i] * 2).min(self.cfg.max_block_ms)
            };
            self.block_len_ms[i] = len;
            self.blocked_until_ms[i] = now_ms.saturating_add(len);
        }
        if to == Level::Fallback || self.level == Level::Fallback {
            self.stats.fallback_switches += 1;
        }
        self.level = to;
        self.last_change_ms = Some(now_ms);
        self.level_window = Window::new(self.cfg.level_window_ms, 10);
        self.stats.transitions += 1;
        self.stats.by_reason[reason.index()] += 1;
        self.stats.entries[to.index()] += 1;
        self.history.write(t);
        Some(t)
    }

    /// One decision. Call about once a second (and whenever a sensor sample arrives);
    /// returns the transition it made, if any. The caller logs it and applies `knobs()`.
    pub fn tick(&mut self, inp: &Inputs) -> Option<Transition> {
        let now = inp.now_ms;
        if let Some(last) = self.last_tick_ms {
            self.stats.time_ms[self.level.index()] += now.saturating_sub(last);
        }
        self.last_tick_ms = Some(now);

        let target = self.cfg.target_for(self.level, inp.reference_p95_ms);
        let n = self.level_window.count(now);
        let level_p95 = if n >= self.cfg.min_frames {
            self.level_window
                .quantile_us(now, 0.95)
                .map(|us| us as f64 / 1e3)
        } else {
            None
        };
        if level_p95.is_some() {
            self.level_p95_ms[self.level.index()] = level_p95;
        }
        // A temperature that is not a number is no temperature.
        let temp = inp.temp_c.filter(|t| t.is_finite());

        // 1. The platform throttles (or is about to): no dwell, straight to the deepest
        //    level — throttling costs far more latency than any of our steps.
        let critical = if inp.throttled {
            Some(Reason::Throttled { temp_c: temp })
        } else {
            temp.filter(|t| *t >= self.cfg.throttle_c)
                .map(|t| Reason::AtThrottleTemp {
                    temp_c: t,
                    throttle_c: self.cfg.throttle_c,
                })
        };
        if let Some(reason) = critical {
            self.calm_since_ms = None;
            let deepest = self.cfg.deepest();
            return if self.level < deepest {
                self.go(now, deepest, reason)
            } else {
                None
            };
        }

        // 2. Pressure: too warm, or this level's frames are too slow. One step per dwell.
        let latency = level_p95
            .filter(|p| *p > target)
            .map(|p| Reason::LatencyOverTarget {
                p95_ms: p,
                target_ms: target,
            });
        let warm = temp
            .filter(|t| *t >= self.cfg.warn_c)
            .map(|t| Reason::NearThrottle {
                temp_c: t,
                warn_c: self.cfg.warn_c,
            });
        if let Some(reason) = latency.or(warm) {
            self.calm_since_ms = None;
            if self.dwell_elapsed(now, self.cfg.down_dwell_ms) {
                if let Some(next) = self.next_down(now) {
                    return self.go(now, next, reason);
                }
            }
            return None;
        }

        // 3. Calm: cool enough (or no sensor) for long enough -> one step up.
        //    Between resume_c and warn_c we hold: that band is the hysteresis.
        let cool = temp.is_none_or(|t| t <= self.cfg.resume_c);
        if !cool {
            self.calm_since_ms = None;
            return None;
        }
        let since = *self.calm_since_ms.get_or_insert(now);
        let calm_ms = now.saturating_sub(since);
        if level_p95.is_some() && calm_ms >= self.cfg.up_dwell_ms {
            // This level has proven itself: forget its past latency failures.
            self.block_len_ms[self.level.index()] = 0;
        }
        if calm_ms >= self.cfg.up_dwell_ms && self.dwell_elapsed(now, self.cfg.up_dwell_ms) {
            if let Some(next) = self.next_up(now) {
                self.calm_since_ms = Some(now);
                return self.go(
                    now,
                    next,
                    Reason::Recovered {
                        temp_c: temp,
                        calm_ms,
                    },
                );
            }
        }
        None
    }

    /// A serialisable snapshot for `beltbox thermal`, the status file and metrics.
    pub fn report(&self, now_ms: u64) -> GovernorReport {
        GovernorReport {
            level: self.level,
            knobs: self.knobs(),
            level_p95_ms: self.level_p95_ms,
            blocked_levels: Level::ALL
                .iter()
                .copied()
                .filter(|l| self.blocked(*l, now_ms))
                .collect(),
            stats: self.stats.clone(),
            recent: self.history().copied().collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GovernorReport {
    pub level: Level,
    pub knobs: Knobs,
    pub level_p95_ms: [Option<f64>; 4],
    pub blocked_levels: Vec<Level>,
    pub stats: GovernorStats,
    pub recent: Vec<Transition>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> GovernorConfig {
        // rpi4-like thresholds, 100 ms SLO, 4 threads, with a fallback model.
        GovernorConfig::new(80.0, 75.0, 68.0, 100.0, 4, true)
    }

    /// A governor parked at `level` at t = 0 (last change at 0).
    fn at(level: Level, c: GovernorConfig) -> Governor {
        let mut g = Governor::new(c);
        if level != Level::Full {
            g.go(0, level, Reason::Throttled { temp_c: None });
        }
        g
    }

    fn feed(g: &mut Governor, from_ms: u64, to_ms: u64, every_ms: u64, latency_ms: f64) {
        let mut t = from_ms;
        while t < to_ms {
            g.observe(t, (latency_ms * 1e3) as u64);
            t += every_ms;
        }
    }

    #[derive(Debug, Clone, Copy)]
    enum Cond {
        /// Platform throttling flag.
        Throttled,
        /// Temperature at the throttle point.
        Hot,
        /// Temperature at the warning point.
        Warm,
        /// Temperature inside the hysteresis band (between resume and warn).
        Band,
        /// Temperature below resume.
        Cool,
        /// No sensor at all.
        NoSensor,
    }

    fn temp(c: Cond) -> (Option<f64>, bool) {
        match c {
            Cond::Throttled => (Some(70.0), true),
            Cond::Hot => (Some(80.5), false),
            Cond::Warm => (Some(75.0), false),
            Cond::Band => (Some(71.0), false),
            Cond::Cool => (Some(60.0), false),
            Cond::NoSensor => (None, false),
        }
    }

    /// Every level x every thermal condition x {dwell not elapsed, elapsed}, latency fine.
    /// `now` is 1 s (inside every dwell) or 120 s (past every dwell, condition held since
    /// t = 0 for the calm cases).
    #[test]
    fn thermal_transition_table() {
        use Cond::*;
        use Level::*;
        #[rustfmt::skip]
        let table: &[(Level, Cond, u64, Level)] = &[
            // level, condition, now_ms, expected level
            (Full, Throttled, 1_000, Fallback),
            (Full, Hot, 1_000, Fallback),
            (Full, Warm, 1_000, ReducedThreads),    // first step needs no dwell
            (Full, Band, 120_000, Full),
            (Full, Cool, 120_000, Full),
            (Full, NoSensor, 120_000, Full),
            (ReducedThreads, Throttled, 1_000, Fallback),
            (ReducedThreads, Hot, 1_000, Fallback),
            (ReducedThreads, Warm, 1_000, ReducedThreads), // dwell not elapsed
            (ReducedThreads, Warm, 120_000, Paced),
            (ReducedThreads, Band, 120_000, ReducedThreads),
            (ReducedThreads, Cool, 1_000, ReducedThreads), // not calm long enough
            (ReducedThreads, Cool, 120_000, Full),
            (ReducedThreads, NoSensor, 120_000, Full),
            (Paced, Throttled, 1_000, Fallback),
            (Paced, Hot, 1_000, Fallback),
            (Paced, Warm, 1_000, Paced),
            (Paced, Warm, 120_000, Fallback),
            (Paced, Band, 120_000, Paced),
            (Paced, Cool, 1_000, Paced),
            (Paced, Cool, 120_000, ReducedThreads),
            (Fallback, Throttled, 120_000, Fallback),      // nothing deeper
            (Fallback, Hot, 120_000, Fallback),
            (Fallback, Warm, 120_000, Fallback),
            (Fallback, Band, 120_000, Fallback),
            (Fallback, Cool, 1_000, Fallback),
            (Fallback, Cool, 120_000, Paced),
            (Fallback, NoSensor, 120_000, Paced),
        ];
        for &(level, cond, now, want) in table {
            let mut g = at(level, cfg());
            let (t, throttled) = temp(cond);
            // Conditions hold from t = 0: one tick then, one at `now`.
            g.tick(&Inputs {
                now_ms: 0,
                temp_c: t,
                throttled,
                reference_p95_ms: None,
            });
            g.tick(&Inputs {
                now_ms: now,
                temp_c: t,
                throttled,
                reference_p95_ms: None,
            });
            assert_eq!(g.level(), want, "{level:?} under {cond:?} at {now} ms");
        }
    }

    #[test]
    fn knobs_per_level() {
        let c = cfg();
        assert_eq!(
            c.knobs(Level::Full),
            Knobs {
                threads: 4,
                duty: 1.0,
                fallback: false
            }
        );
        assert_eq!(
            c.knobs(Level::ReducedThreads),
            Knobs {
                threads: 2,
                duty: 1.0,
                fallback: false
            }
        );
        assert_eq!(
            c.knobs(Level::Paced),
            Knobs {
                threads: 2,
                duty: 0.5,
                fallback: false
            }
        );
        assert_eq!(
            c.knobs(Level::Fallback),
            Knobs {
                threads: 2,
                duty: 1.0,
                fallback: true
            }
        );
    }

    /// (expected p95 of reduced threads vs full 50 ms) -> (first step when warm, threads
    /// used while paced).
    #[test]
    fn unfit_levels_are_skipped_and_pacing_keeps_the_fit_thread_count() {
        let cases: &[(Option<f64>, Level, usize)] = &[
            (None, Level::ReducedThreads, 2),       // unknown: assumed fit
            (Some(54.0), Level::ReducedThreads, 2), // within 1.1x
            (Some(56.0), Level::Paced, 4),          // 12 % slower: skipped, pace on 4 threads
            (Some(150.0), Level::Paced, 4),
        ];
        for &(reduced, first, paced_threads) in cases {
            let mut c = cfg();
            c.expected_p95_ms = [Some(50.0), reduced, None, Some(20.0)];
            c.expected_cpu_ms = [Some(100.0), Some(60.0), None, Some(30.0)];
            assert_eq!(c.knobs(Level::Paced).threads, paced_threads, "{reduced:?}");
            let mut g = Governor::new(c);
            let t = g.tick(&Inputs {
                now_ms: 0,
                temp_c: Some(76.0),
                ..Inputs::default()
            });
            assert_eq!(t.map(|t| t.to), Some(first), "{reduced:?}");
        }
    }

    /// Fewer threads that cost as much CPU per frame buy no heat: the step is skipped.
    #[test]
    fn a_step_that_saves_no_cpu_is_skipped() {
        for (cpu, first) in [
            (Some(95.0), Level::Paced),
            (Some(85.0), Level::ReducedThreads),
            (None, Level::ReducedThreads),
        ] {
            let mut c = cfg();
            c.expected_p95_ms = [Some(50.0), Some(50.0), None, Some(20.0)];
            c.expected_cpu_ms = [Some(100.0), cpu, None, Some(30.0)];
            assert_eq!(c.fit(Level::ReducedThreads), first == Level::ReducedThreads);
            let mut g = Governor::new(c);
            let t = g.tick(&Inputs {
                now_ms: 0,
                temp_c: Some(76.0),
                ..Inputs::default()
            });
            assert_eq!(t.map(|t| t.to), Some(first), "{cpu:?}");
        }
    }

    /// At `Full`, a recent p95 a little above 1.1x the burst reference is background
    /// noise, not a reason to leave: only the SLO binds the reference level.
    #[test]
    fn full_is_judged_against_the_slo_only() {
        let mut g = Governor::new(cfg());
        feed(&mut g, 0, 2_000, 20, 30.0);
        let calm = |now| Inputs {
            now_ms: now,
            temp_c: Some(50.0),
            throttled: false,
            reference_p95_ms: Some(20.0), // 1.1x = 22 ms < 30 ms
        };
        assert_eq!(g.tick(&calm(2_000)), None);
        feed(&mut g, 2_000, 4_000, 20, 95.0); // above 0.9 x 100 ms SLO
        assert_eq!(
            g.tick(&calm(4_000)).map(|t| t.to),
            Some(Level::ReducedThreads)
        );
    }

    #[test]
    fn unavailable_levels_are_skipped() {
        // One thread (nothing to reduce), no fallback: Full -> Paced is the whole ladder.
        let mut c = cfg();
        c.full_threads = 1;
        c.reduced_threads = 1;
        c.has_fallback = false;
        let mut g = Governor::new(c.clone());
        let warm = Inputs {
            now_ms: 0,
            temp_c: Some(76.0),
            ..Inputs::default()
        };
        assert_eq!(g.tick(&warm).map(|t| t.to), Some(Level::Paced));
        let hot = Inputs {
            now_ms: 100,
            temp_c: Some(90.0),
            ..Inputs::default()
        };
        assert_eq!(g.tick(&hot), None, "Paced is already the deepest level");
        // No pacing either: the governor can only watch.
        c.pace_duty = 1.0;
        let mut g = Governor::new(c);
        assert_eq!(g.tick(&hot), None);
        assert_eq!(g.level(), Level::Full);
    }

    /// Temperature oscillating around the warning point (sensor noise, ±1.5 °C every
    /// second for 10 minutes) must not make the governor flap: it steps down through the
    /// ladder at most once per dwell and never steps up while inside the band.
    #[test]
    fn no_flapping_around_the_warning_point() {
        let mut g = Governor::new(cfg());
        for s in 0..600u64 {
            let noise = if s % 2 == 0 { 1.5 } else { -1.5 };
            let tr = g.tick(&Inputs {
                now_ms: s * 1000,
                temp_c: Some(75.0 + noise),
                ..Inputs::default()
            });
            if let Some(t) = tr {
                assert!(t.to > t.from, "stepped up inside the band: {t}");
            }
        }
        assert_eq!(
            g.stats().transitions,
            3,
            "Full -> Reduced -> Paced -> Fallback, once each"
        );
        assert_eq!(g.level(), Level::Fallback);
    }

    /// A full thermal cycle: heat up, step down, cool below resume, come back one level
    /// per up_dwell, with a transition count that matches the ladder exactly.
    #[test]
    fn cycle_down_and_back_up_with_hysteresis() {
        let mut g = Governor::new(cfg());
        let mut log = Vec::new();
        // Temperature ramps 60 -> 79 °C over 95 s, then falls to 60 °C and stays there.
        for s in 0..400u64 {
            let t = if s < 95 {
                60.0 + s as f64 * 0.2
            } else {
                (79.0 - (s - 95) as f64 * 0.5).max(60.0)
            };
            if let Some(tr) = g.tick(&Inputs {
                now_ms: s * 1000,
                temp_c: Some(t),
                ..Inputs::default()
            }) {
                log.push(tr);
            }
        }
        let path: Vec<(Level, Level)> = log.iter().map(|t| (t.from, t.to)).collect();
        use Level::*;
        assert_eq!(
            path,
            vec![
                (Full, ReducedThreads),
                (ReducedThreads, Paced),
                (Paced, Fallback),
                (Fallback, Paced),
                (Paced, ReducedThreads),
                (ReducedThreads, Full),
            ],
            "{log:#?}"
        );
        // Steps down 5 s apart (down_dwell), up 30 s apart (up_dwell), and the first step
        // up only once below resume_c (68 °C).
        assert_eq!(log[1].at_ms - log[0].at_ms, 5_000);
        assert!(log[4].at_ms - log[3].at_ms >= 30_000);
        match log[3].reason {
            Reason::Recovered {
                temp_c: Some(t),
                calm_ms,
            } => {
                assert!(t <= 68.0 && calm_ms >= 30_000, "{}", log[3]);
            }
            r => panic!("unexpected reason {r:?}"),
        }
        assert_eq!(g.stats().fallback_switches, 2);
        assert_eq!(g.report(400_000).recent.len(), 6);
    }

    /// A level whose frames break the latency target is left and then skipped.
    #[test]
    fn slow_levels_are_left_blocked_and_skipped() {
        let mut g = Governor::new(cfg());
        let reference = Some(10.0); // target = min(90, 11) = 11 ms
        let tick = |g: &mut Governor, now: u64, t: f64| {
            g.tick(&Inputs {
                now_ms: now,
                temp_c: Some(t),
                throttled: false,
                reference_p95_ms: reference,
            })
        };
        // Warm: Full -> ReducedThreads.
        feed(&mut g, 0, 1_000, 20, 10.0);
        assert_eq!(
            tick(&mut g, 1_000, 76.0).map(|t| t.to),
            Some(Level::ReducedThreads)
        );
        // Two threads are slower: 18 ms per frame. Once dwell has passed, latency pressure
        // moves on (Paced has the same threads: unknown yet, so it is tried).
        feed(&mut g, 1_000, 6_000, 20, 18.0);
        let tr = tick(&mut g, 6_000, 72.0).unwrap();
        assert_eq!(tr.to, Level::Paced);
        assert!(
            matches!(tr.reason, Reason::LatencyOverTarget { .. }),
            "{tr}"
        );
        feed(&mut g, 6_000, 11_000, 20, 18.0);
        assert_eq!(
            tick(&mut g, 11_000, 70.0).map(|t| t.to),
            Some(Level::Fallback)
        );
        // Fallback is fast. Cool down; recovery skips the two blocked levels.
        feed(&mut g, 11_000, 50_000, 20, 2.0);
        let mut t = 11_000;
        let mut up = None;
        while up.is_none() && t < 50_000 {
            t += 1_000;
            up = tick(&mut g, t, 60.0);
        }
        let up = up.unwrap();
        assert_eq!((up.from, up.to), (Level::Fallback, Level::Full), "{up}");
        // Heat again (after the dwell): straight to Fallback, the intermediate levels are
        // still blocked.
        feed(&mut g, t, t + 6_000, 20, 10.0);
        let down = tick(&mut g, t + 6_000, 76.0).unwrap();
        assert_eq!(down.to, Level::Fallback, "{down}");
        let r = g.report(t + 6_000);
        assert_eq!(r.blocked_levels, vec![Level::ReducedThreads, Level::Paced]);
        assert_eq!(
            r.level_p95_ms[Level::ReducedThreads.index()].map(|p| p >= 18.0),
            Some(true)
        );
    }

    #[test]
    fn blocks_double_and_expire() {
        let mut c = cfg();
        c.block_ms = 10_000;
        c.max_block_ms = 25_000;
        let mut g = Governor::new(c);
        let mut last_until = 0;
        for (i, want_len) in [10_000u64, 20_000, 25_000].iter().enumerate() {
            // Force back to Full, then fail latency there.
            g.level = Level::Full;
            g.last_change_ms = None;
            let now = (i as u64 + 1) * 100_000;
            feed(&mut g, now - 1_000, now, 20, 200.0);
            let tr = g.tick(&Inputs {
                now_ms: now,
                temp_c: Some(50.0),
                ..Inputs::default()
            });
            assert!(matches!(
                tr.map(|t| t.reason),
                Some(Reason::LatencyOverTarget { .. })
            ));
            assert_eq!(g.blocked_until_ms[0], now + want_len);
            last_until = g.blocked_until_ms[0];
        }
        assert!(!g.blocked(Level::Full, last_until));
    }

    #[test]
    fn latency_target_is_the_tighter_of_slo_and_reference() {
        let c = cfg();
        assert_eq!(c.latency_target_ms(None), 90.0);
        assert!((c.latency_target_ms(Some(50.0)) - 55.0).abs() < 1e-9);
        assert_eq!(c.latency_target_ms(Some(200.0)), 90.0);
        assert_eq!(c.latency_target_ms(Some(f64::NAN)), 90.0);
        assert_eq!(c.target_for(Level::Full, Some(50.0)), 90.0);
        assert!((c.target_for(Level::Paced, Some(50.0)) - 55.0).abs() < 1e-9);
    }

    #[test]
    fn nan_temperature_is_treated_as_no_sensor() {
        let mut g = at(Level::ReducedThreads, cfg());
        for s in 0..=60u64 {
            g.tick(&Inputs {
                now_ms: s * 1000,
                temp_c: Some(f64::NAN),
                ..Inputs::default()
            });
        }
        assert_eq!(g.level(), Level::Full);
    }

    #[test]
    fn time_scaling_scales_every_duration() {
        let c = cfg().time_scaled(0.1);
        assert_eq!(
            (c.down_dwell_ms, c.up_dwell_ms, c.block_ms),
            (500, 3_000, 6_000)
        );
        assert_eq!(c.max_block_ms, 60_000);
    }
}
