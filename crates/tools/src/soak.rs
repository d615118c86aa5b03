//! The reproducible soak: does the governor hold the sustained p95?
//!
//! A real box needs minutes in a warm enclosure to throttle; the soak reproduces that on
//! any machine, in about a minute (short mode) or twelve (long mode):
//!
//! - **The belt**: frames arrive at a fixed rate into a bounded queue (2 frames). A frame
//!   that finds the queue full is *shed* and counted — never silently lost.
//! - **The fake platform** (one thread, every 100 ms): a first-order thermal model
//!   `dT/dt = (T_ss - T) / tau`, `T_ss = ambient + k * P`, where `P` is the CPU time the
//!   runtime's own threads consumed in the last step (from `/proc/self/task/*/schedstat`,
//!   emulation threads excluded) scaled by the current clock ratio. At the board's
//!   throttle point it "throttles" like the board does — cpufreq capped (or, on a
//!   Raspberry Pi, the firmware's `get_throttled` bits and a lower `scaling_cur_freq`) —
//!   and releases 2 °C lower. Everything is written to a fake sysfs tree laid out like the
//!   board's, which the runtime reads through the production [`Monitor`].
//! - **The real slowdown**: while throttled, the platform runs CPU burner threads so the
//!   runtime's threads get `1/slowdown` of the CPU they had (default 3x: a Pi 4 drops from
//!   1.8 GHz to 600 MHz). Latency really grows; nothing is simulated on the runtime side.
//! - **The runtime**: the real model, the real [`LatencyWindows`], and — in the governed
//!   run — the real [`Governor`], fed by the monitor and applying its knobs (threads via a
//!   second pre-loaded instance, pacing by resting after frames, the fallback model).
//!
//! Calibration makes the scenario the same on every machine: the primary model is
//! measured cold first; the belt rate keeps a cold box `utilisation` busy at full threads,
//! and `k` is chosen so that full load settles `overshoot_c` above the throttle point.
//! Both runs then use the same rate, the same `k`, and start from the same ambient.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

use beltbox_core::board::{BoardError, BoardProfile, CpufreqPolicy, VendorFlagKind};
use beltbox_core::model::{LoadOptions, Model, ModelError};
use beltbox_core::preprocess::InputKind;
use beltbox_core::stats::nearest_rank;
use beltbox_core::thermal::governor::{Governor, GovernorConfig, Inputs, Knobs, Level, Transition};
use beltbox_core::thermal::status::{self, StatusFile};
use beltbox_core::thermal::sysfs::Monitor;
use beltbox_core::thermal::throttle::{assess, limits};
use beltbox_core::thermal::window::{LatencyWindows, WindowConfig, WindowReport};
use beltbox_core::thermal::ThermalError;
use beltbox_core::timing::{ms_since, Stage, StageTimings};

/// Why a soak could not run or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum SoakError {
    #[error(transparent)]
    Thermal(#[from] ThermalError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Board(#[from] BoardError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("soak: {0}")]
    Failed(String),
    #[error("{0}")]
    Invalid(String),
}

impl SoakError {
    /// Whether the fault lies in what the caller handed us (exit 2) rather than in the run
    /// (exit 1).
    pub fn is_input_error(&self) -> bool {
        match self {
            SoakError::Model(e) => e.is_input_error(),
            SoakError::Thermal(e) => e.is_input_error(),
            SoakError::Io { .. } | SoakError::Failed(_) => false,
            SoakError::Board(_) | SoakError::Invalid(_) => true,
        }
    }
}

/// Time scales of a soak.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    pub name: &'static str,
    pub duration_s: f64,
    pub windows: WindowConfig,
    /// Thermal time constant of the fake board.
    pub tau_s: f64,
    /// Multiplies every governor duration (dwell, block, level window).
    pub governor_time_scale: f64,
    pub tick_ms: u64,
    pub progress_every_s: f64,
}

impl Scenario {
    /// About a minute per run: windows, time constant and governor clock compressed
    /// together, so the same story plays out faster.
    pub fn short() -> Scenario {
        Scenario {
            name: "short",
            duration_s: 60.0,
            windows: WindowConfig {
                burst_ms: 10_000,
                sustained_ms: 40_000,
            },
            tau_s: 12.0,
            governor_time_scale: 0.2,
            tick_ms: 250,
            progress_every_s: 5.0,
        }
    }

    /// The record: 12 minutes per run, the product's 30 s / 10 min windows, a one-minute
    /// thermal time constant, the governor's real clock.
    pub fn long() -> Scenario {
        Scenario {
            name: "long",
            duration_s: 720.0,
            windows: WindowConfig::default(),
            tau_s: 60.0,
            governor_time_scale: 1.0,
            tick_ms: 1_000,
            progress_every_s: 30.0,
        }
    }

    /// Same scales, another duration; the sustained window shrinks to fit after the
    /// burst window and a warm-up of one burst window.
    pub fn with_duration(mut self, duration_s: f64) -> Scenario {
        self.duration_s = duration_s;
        let room = ((duration_s * 1000.0) as u64).saturating_sub(2 * self.windows.burst_ms);
        self.windows.sustained_ms = self
            .windows
            .sustained_ms
            .min(room.max(self.windows.burst_ms));
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Governed,
    Ungoverned,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Governed => "governed",
            Mode::Ungoverned => "ungoverned",
        }
    }
}

#[derive(Debug, Clone)]
pub struct SoakConfig {
    pub primary: PathBuf,
    pub fallback: Option<PathBuf>,
    pub board: BoardProfile,
    pub scenario: Scenario,
    pub modes: Vec<Mode>,
    /// Intra-op threads at full speed.
    pub threads: usize,
    /// Belt rate; `None`: calibrated from `utilisation`.
    pub fps: Option<f64>,
    pub utilisation: f64,
    pub ambient_c: f64,
    pub overshoot_c: f64,
    pub slowdown: f64,
    pub queue: usize,
    /// Where the fake sysfs tree is built (must be empty or a previous soak's tree).
    pub root: PathBuf,
    /// Remove the tree when done (the default temporary one); keep a tree the user named
    /// so it can be inspected with `beltbox thermal --sysfs-root`.
    pub remove_root: bool,
}

impl SoakConfig {
    pub fn new(
        primary: PathBuf,
        fallback: Option<PathBuf>,
        board: BoardProfile,
        scenario: Scenario,
    ) -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let threads = (board.budgets.threads as usize).clamp(1, cores.max(1));
        SoakConfig {
            primary,
            fallback,
            board,
            scenario,
            modes: vec![Mode::Ungoverned, Mode::Governed],
            threads,
            fps: None,
            utilisation: 0.5,
            ambient_c: 40.0,
            overshoot_c: 10.0,
            slowdown: 3.0,
            queue: 2,
            root: std::env::temp_dir().join(format!("beltbox-soak-{}", std::process::id())),
            remove_root: true,
        }
    }
}

/// What calibration measured and chose.
#[derive(Debug, Clone, Serialize)]
pub struct Calibration {
    pub full_threads: usize,
    pub reduced_threads: usize,
    /// Median total latency per configuration, cold, ms.
    pub primary_full_ms: f64,
    pub primary_reduced_ms: Option<f64>,
    pub fallback_ms: Option<f64>,
    /// p95 per configuration from the interleaved bench; seeds the governor's
    /// `expected_p95_ms` (full, reduced threads, -, fallback).
    pub p95_ms: [Option<f64>; 4],
    /// CPU time per frame per configuration (same order); seeds `expected_cpu_ms`.
    pub cpu_ms: [Option<f64>; 4],
    /// Interleaved rounds measured (one frame per configuration each).
    pub rounds: usize,
    /// CPU time per frame at full threads, ms (how the heat input is scaled).
    pub cpu_ms_per_frame: f64,
    pub cpu_source: &'static str,
    pub fps: f64,
    pub k_c_per_core: f64,
    pub ambient_c: f64,
    pub throttle_c: f64,
    pub slowdown: f64,
    pub tau_s: f64,
    /// Machine load average when the soak started (other work skews latencies).
    pub load_avg_1m: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub mode: Mode,
    pub duration_s: f64,
    pub slo_ms: f64,
    pub frames_offered: u64,
    pub frames_served: u64,
    /// Refused at a full queue (overload), counted and reported.
    pub frames_shed: u64,
    /// Not served by choice while paced (the governor's `duty`), counted and reported.
    pub frames_skipped: u64,
    /// Still queued when the run stopped (not lost: the run ended).
    pub frames_pending: u64,
    /// Served by the fallback model (results flagged).
    pub frames_fallback: u64,
    /// Frames whose total latency exceeded the SLO.
    pub slo_violations: u64,
    /// p95 of the first burst window: the cold box, what a benchmark shows.
    pub burst_p95_ms: Option<f64>,
    /// p95 over the sustained window at the end of the run.
    pub sustained_p95_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub peak_temp_c: f64,
    pub throttled_s: f64,
    pub model_switches: u64,
    pub transitions: Vec<Transition>,
    /// Seconds spent at each governor level (full, reduced-threads, paced, fallback).
    pub level_s: [f64; 4],
    /// Last p95 the governor observed at each level (governed run).
    pub level_p95_ms: [Option<f64>; 4],
    pub final_windows: WindowReport,
    pub monitor_warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Targets {
    pub governed_sustained_within_slo: bool,
    pub governed_sustained_within_1_1_burst: bool,
    pub ungoverned_violates_slo: bool,
    /// offered = served + shed + skipped + pending in the governed run: every frame
    /// accounted for.
    pub governed_frames_accounted: bool,
    pub met: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    pub board: String,
    pub model: String,
    pub fallback_model: Option<String>,
    pub scenario: Scenario,
    pub calibration: Calibration,
    pub runs: Vec<RunReport>,
    pub targets: Option<Targets>,
    pub sysfs_root: String,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking thread cannot leave these counters half-updated in a harmful way.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> SoakError + '_ {
    move |source| SoakError::Io {
        path: path.to_path_buf(),
        source,
    }
}

// ---------------------------------------------------------------------------------------
// The thermal model (pure).

/// First-order thermal model of the board plus its throttling firmware/kernel.
#[derive(Debug, Clone, PartialEq)]
pub struct ThermalModel {
    pub ambient_c: f64,
    /// Steady-state rise per core of CPU use at full clock.
    pub k_c_per_core: f64,
    pub tau_s: f64,
    pub throttle_c: f64,
    /// Release below this (2 °C of hysteresis, like the boards' trip points).
    pub release_c: f64,
    pub slowdown: f64,
    pub temp_c: f64,
    pub throttled: bool,
    /// Throttling has happened since "boot" (the firmware's sticky bits).
    pub occurred: bool,
}

impl ThermalModel {
    pub fn new(
        ambient_c: f64,
        k_c_per_core: f64,
        tau_s: f64,
        throttle_c: f64,
        slowdown: f64,
    ) -> Self {
        ThermalModel {
            ambient_c,
            k_c_per_core,
            tau_s,
            throttle_c,
            release_c: throttle_c - 2.0,
            slowdown: slowdown.max(1.0),
            temp_c: ambient_c,
            throttled: false,
            occurred: false,
        }
    }

    /// Clock ratio now (1 at full clock).
    pub fn ratio(&self) -> f64 {
        if self.throttled {
            1.0 / self.slowdown
        } else {
            1.0
        }
    }

    /// Advances `dt_s` with `cores_used` cores of the runtime busy. Power scales with the
    /// clock: a throttled core doing the same work heats less, which is why real boards
    /// settle around their throttle point instead of running away.
    pub fn step(&mut self, dt_s: f64, cores_used: f64) -> f64 {
        let power = cores_used.max(0.0) * self.ratio();
        let target = self.ambient_c + self.k_c_per_core * power;
        let a = 1.0 - (-dt_s.max(0.0) / self.tau_s.max(1e-3)).exp();
        self.temp_c += (target - self.temp_c) * a;
        if self.temp_c >= self.throttle_c {
            self.throttled = true;
            self.occurred = true;
        } else if self.temp_c < self.release_c {
            self.throttled = false;
        }
        self.temp_c
    }
}

/// Burner threads needed so the runtime's `threads` get `1/slowdown` of what they had on
/// `cores` CPUs (CFS shares a core equally among runnable threads).
pub fn burners_for(slowdown: f64, cores: usize, threads: usize) -> usize {
    let want = (slowdown * cores.max(threads) as f64).ceil() as usize;
    want.saturating_sub(threads)
}

// ---------------------------------------------------------------------------------------
// The fake sysfs tree.

const MARKER: &str = ".beltbox-fake-sysfs";

struct FakeZone {
    temp: PathBuf,
    offset_c: f64,
}

struct FakePolicy {
    dir: PathBuf,
    p: CpufreqPolicy,
}

/// A sysfs tree laid out like `board`'s, written atomically (temp file + rename) so the
/// monitor never reads half a value.
struct FakeBoard {
    zones: Vec<FakeZone>,
    policies: Vec<FakePolicy>,
    vendor: Option<PathBuf>,
    /// Kernel cooling devices lower `scaling_max_freq`; the Pi firmware does not.
    cap_scaling_max: bool,
}

fn put(path: &Path, text: &str) -> Result<(), SoakError> {
    let tmp = path.with_extension("beltbox-tmp");
    std::fs::write(&tmp, text).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

fn mkdir(path: &Path) -> Result<(), SoakError> {
    std::fs::create_dir_all(path).map_err(io_err(path))
}

impl FakeBoard {
    fn create(root: &Path, board: &BoardProfile, cores: usize) -> Result<FakeBoard, SoakError> {
        // Never clobber a real tree: only an empty directory or our own marker.
        if root.exists() {
            let ours = root.join(MARKER).is_file();
            let empty = std::fs::read_dir(root)
                .map_err(io_err(root))?
                .next()
                .is_none();
            if !ours && !empty {
                return Err(SoakError::Failed(format!(
                    "{} exists and is not a beltbox fake sysfs tree; give --sysfs-root an empty or new directory",
                    root.display()
                )));
            }
            for sub in ["sys", "proc"] {
                let p = root.join(sub);
                if p.exists() {
                    std::fs::remove_dir_all(&p).map_err(io_err(&p))?;
                }
            }
        }
        mkdir(root)?;
        put(
            &root.join(MARKER),
            "beltbox soak fake sysfs; safe to delete\n",
        )?;

        if !board.detect.compatible.is_empty() {
            let dt = root.join("sys/firmware/devicetree/base");
            mkdir(&dt)?;
            let model = format!("beltbox soak (fake {})\0", board.name);
            std::fs::write(dt.join("model"), model).map_err(io_err(&dt))?;
            let compat: String = board
                .detect
                .compatible
                .iter()
                .map(|c| format!("{c}\0"))
                .collect();
            std::fs::write(dt.join("compatible"), compat).map_err(io_err(&dt))?;
        }

        let mut zone_specs: Vec<(String, Vec<(f64, String)>)> = board
            .thermal
            .zones
            .iter()
            .map(|z| {
                (
                    z.zone_type.clone(),
                    z.trips.iter().map(|t| (t.temp_c, t.kind.clone())).collect(),
                )
            })
            .collect();
        if zone_specs.is_empty() {
            // Boards without sensors (QEMU, some x86 VMs) still get one, so the soak can
            // run anywhere; it is named after the first zone the profile watches.
            let t = board
                .thermal
                .watch
                .first()
                .cloned()
                .unwrap_or_else(|| "cpu-thermal".into());
            zone_specs.push((t, Vec::new()));
        }
        let class = root.join("sys/class/thermal");
        mkdir(&class)?;
        let mut zones = Vec::new();
        for (n, (zone_type, trips)) in zone_specs.iter().enumerate() {
            let dir = root.join(format!("sys/devices/virtual/thermal/thermal_zone{n}"));
            mkdir(&dir)?;
            put(&dir.join("type"), &format!("{zone_type}\n"))?;
            for (k, (temp, kind)) in trips.iter().enumerate() {
                put(
                    &dir.join(format!("trip_point_{k}_temp")),
                    &format!("{}\n", (temp * 1000.0).round() as i64),
                )?;
                put(
                    &dir.join(format!("trip_point_{k}_type")),
                    &format!("{kind}\n"),
                )?;
            }
            link_or_copy(&dir, &class.join(format!("thermal_zone{n}")))?;
            let watched = board.thermal.watch.is_empty() || board.thermal.watch.contains(zone_type);
            zones.push(FakeZone {
                temp: dir.join("temp"),
                // Unwatched sensors (GPU, NPU) run a little cooler than the CPU.
                offset_c: if watched { 0.0 } else { -3.0 },
            });
        }

        let policies_spec = if board.cpufreq.is_empty() {
            vec![CpufreqPolicy {
                policy: "policy0".into(),
                cpus: (0..cores.max(1) as u32).collect(),
                min_khz: 600_000,
                max_khz: 1_800_000,
            }]
        } else {
            board.cpufreq.clone()
        };
        let mut policies = Vec::new();
        for p in policies_spec {
            let dir = root.join("sys/devices/system/cpu/cpufreq").join(&p.policy);
            mkdir(&dir)?;
            put(&dir.join("cpuinfo_max_freq"), &format!("{}\n", p.max_khz))?;
            put(&dir.join("cpuinfo_min_freq"), &format!("{}\n", p.min_khz))?;
            let cpus: Vec<String> = p.cpus.iter().map(|c| c.to_string()).collect();
            put(&dir.join("affected_cpus"), &format!("{}\n", cpus.join(" ")))?;
            for c in &p.cpus {
                let cpu = root.join(format!("sys/devices/system/cpu/cpu{c}"));
                mkdir(&cpu)?;
                link_or_copy(&dir, &cpu.join("cpufreq"))?;
            }
            policies.push(FakePolicy { dir, p });
        }

        let vendor = match &board.vendor_flag {
            Some(v) if v.kind == VendorFlagKind::RpiGetThrottled => match v.paths.first() {
                Some(rel) => {
                    let path = root.join(rel);
                    if let Some(parent) = path.parent() {
                        mkdir(parent)?;
                    }
                    Some(path)
                }
                None => None,
            },
            _ => None,
        };
        let fake = FakeBoard {
            cap_scaling_max: vendor.is_none(),
            zones,
            policies,
            vendor,
        };
        Ok(fake)
    }

    fn write(&self, m: &ThermalModel) -> Result<(), SoakError> {
        for z in &self.zones {
            put(
                &z.temp,
                &format!("{}\n", ((m.temp_c + z.offset_c) * 1000.0).round() as i64),
            )?;
        }
        for fp in &self.policies {
            let cur = ((fp.p.max_khz as f64 * m.ratio()) as u64).max(fp.p.min_khz);
            let max = if self.cap_scaling_max {
                cur
            } else {
                fp.p.max_khz
            };
            put(&fp.dir.join("scaling_cur_freq"), &format!("{cur}\n"))?;
            put(&fp.dir.join("scaling_max_freq"), &format!("{max}\n"))?;
        }
        if let Some(v) = &self.vendor {
            // Bits 1-3: ARM clock capped, throttled, soft temperature limit; 17-19: the
            // same since boot.
            let word = if m.throttled { 0xe } else { 0 } | if m.occurred { 0xe_0000 } else { 0 };
            put(v, &format!("{word:x}\n"))?;
        }
        Ok(())
    }
}

/// Real sysfs uses symlinks (class -> devices, cpuN/cpufreq -> policyN); do the same.
fn link_or_copy(target: &Path, link: &Path) -> Result<(), SoakError> {
    if link.exists() {
        return Ok(());
    }
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(target, link).map_err(io_err(link))
    }
    #[cfg(not(unix))]
    {
        let _ = target;
        mkdir(link)
    }
}

// ---------------------------------------------------------------------------------------
// CPU accounting and burners.

/// This thread's kernel task id (`/proc/thread-self` -> `PID/task/TID`).
fn current_tid() -> Option<u32> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}

/// CPU time (ns) of every thread of this process except `exclude`, from schedstat.
fn runtime_cpu_ns(exclude: &[u32]) -> Option<u64> {
    let mut total = 0u64;
    let mut any = false;
    for e in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if exclude.contains(&tid) {
            continue;
        }
        if let Ok(s) = std::fs::read_to_string(e.path().join("schedstat")) {
            if let Some(ns) = s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
            {
                total = total.saturating_add(ns);
                any = true;
            }
        }
    }
    any.then_some(total)
}

struct Burners {
    active: AtomicUsize,
    stop: AtomicBool,
    tids: Mutex<Vec<u32>>,
}

impl Burners {
    fn new() -> Burners {
        Burners {
            active: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            tids: Mutex::new(Vec::new()),
        }
    }

    /// Body of burner `i`: spin in 2 ms slices while `i < active`, else nap.
    fn burn(&self, i: usize) {
        if let Some(t) = current_tid() {
            lock(&self.tids).push(t);
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        while !self.stop.load(Ordering::Relaxed) {
            if i < self.active.load(Ordering::Relaxed) {
                let t = Instant::now();
                while t.elapsed() < Duration::from_millis(2) {
                    x = std::hint::black_box(
                        x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1),
                    );
                }
            } else {
                // Idle burners nap long enough not to disturb the runtime with wakeups;
                // the platform steps every 100 ms anyway.
                std::thread::sleep(Duration::from_millis(25));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The belt.

struct Belt {
    q: Mutex<VecDeque<Instant>>,
    cv: Condvar,
    cap: usize,
    offered: AtomicU64,
    shed: AtomicU64,
}

impl Belt {
    fn new(cap: usize) -> Belt {
        Belt {
            q: Mutex::new(VecDeque::with_capacity(cap.max(1))),
            cv: Condvar::new(),
            cap: cap.max(1),
            offered: AtomicU64::new(0),
            shed: AtomicU64::new(0),
        }
    }

    fn push(&self, at: Instant) {
        self.offered.fetch_add(1, Ordering::Relaxed);
        let mut q = lock(&self.q);
        if q.len() >= self.cap {
            // Bounded queue: overload is answered, never buffered without limit.
            self.shed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        q.push_back(at);
        self.cv.notify_one();
    }

    /// The next frame, or `None` once `end` has passed.
    fn pop(&self, end: Instant) -> Option<Instant> {
        let mut q = lock(&self.q);
        loop {
            if Instant::now() >= end {
                return None;
            }
            if let Some(a) = q.pop_front() {
                return Some(a);
            }
            let wait = end
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(50));
            q = self
                .cv
                .wait_timeout(q, wait)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn pending(&self) -> u64 {
        lock(&self.q).len() as u64
    }
}

// ---------------------------------------------------------------------------------------
// Models and calibration.

struct Models {
    primary_full: Model,
    primary_reduced: Option<Model>,
    fallback: Option<Model>,
    /// One file per input of the primary's first golden sample: the belt's frame.
    frame: Vec<(Vec<u8>, InputKind)>,
    reduced_threads: usize,
}

impl Models {
    fn load(cfg: &SoakConfig) -> Result<Models, SoakError> {
        let primary_full = Model::load(
            &cfg.primary,
            &LoadOptions {
                threads: cfg.threads,
                ..Default::default()
            },
        )?;
        let reduced_threads =
            GovernorConfig::new(0.0, 0.0, 0.0, 0.0, cfg.threads, false).reduced_threads;
        let primary_reduced = if reduced_threads < cfg.threads {
            Some(Model::load(
                &cfg.primary,
                &LoadOptions {
                    threads: reduced_threads,
                    ..Default::default()
                },
            )?)
        } else {
            None
        };
        let fallback = match &cfg.fallback {
            Some(p) => Some(Model::load(
                p,
                &LoadOptions {
                    threads: reduced_threads,
                    ..Default::default()
                },
            )?),
            None => None,
        };
        // Manifest validation guarantees at least one golden sample.
        let sample = primary_full
            .manifest()
            .golden
            .samples
            .first()
            .map(|s| s.inputs.clone())
            .ok_or_else(|| {
                SoakError::Failed("the primary model has no golden sample to use as a frame".into())
            })?;
        let frame = sample
            .iter()
            .map(|f| {
                let bytes = primary_full
                    .package
                    .read(f)
                    .map_err(beltbox_core::model::ModelError::from)?;
                Ok((bytes, InputKind::from_file_name(f)))
            })
            .collect::<Result<Vec<_>, SoakError>>()?;
        Ok(Models {
            primary_full,
            primary_reduced,
            fallback,
            frame,
            reduced_threads,
        })
    }

    fn pick(&self, k: &Knobs) -> (&Model, usize) {
        if k.fallback {
            if let Some(f) = &self.fallback {
                return (f, self.reduced_threads);
            }
        }
        match &self.primary_reduced {
            Some(r) if k.threads < self.primary_full.info.threads => (r, self.reduced_threads),
            _ => (&self.primary_full, self.primary_full.info.threads),
        }
    }
}

/// Measures every configuration the governor may use, *interleaved* (one frame each per
/// round) so that background load on a shared machine hits them alike and their ratio
/// is meaningful; then derives the belt rate and the thermal gain.
fn calibrate(cfg: &SoakConfig, m: &Models) -> Result<Calibration, SoakError> {
    let frame: Vec<(&[u8], InputKind)> = m.frame.iter().map(|(b, k)| (&b[..], *k)).collect();
    let configs: [Option<&Model>; 3] = [
        Some(&m.primary_full),
        m.primary_reduced.as_ref(),
        m.fallback.as_ref(),
    ];
    // Warm caches, allocators and thread pools of every instance first.
    for model in configs.iter().flatten() {
        for _ in 0..3 {
            model.infer(&frame, 1)?;
        }
    }
    let mut lat: [Vec<f64>; 3] = Default::default();
    let mut cpu_ns = [0u64; 3];
    let mut cpu_ok = true;
    let t0 = Instant::now();
    let mut rounds = 0;
    while rounds < 30 || t0.elapsed() < Duration::from_secs(3) {
        for (i, model) in configs.iter().enumerate() {
            let Some(model) = model else { continue };
            let before = runtime_cpu_ns(&[]);
            let ms = model.infer(&frame, 1)?.timings.total_us() as f64 / 1e3;
            match (before, runtime_cpu_ns(&[])) {
                (Some(a), Some(b)) => cpu_ns[i] += b.saturating_sub(a),
                _ => cpu_ok = false,
            }
            lat[i].push(ms);
        }
        rounds += 1;
        if rounds >= 1_000 {
            break;
        }
    }
    let per_frame = |i: usize| -> Option<f64> {
        (cpu_ok && !lat[i].is_empty() && cpu_ns[i] > 0)
            .then(|| cpu_ns[i] as f64 / 1e6 / lat[i].len() as f64)
    };
    let cpu_ms = [per_frame(0), per_frame(1), None, per_frame(2)];
    let [full, reduced, fallback] = &mut lat;
    let primary_full_ms = nearest_rank(full, 0.5).unwrap_or(1.0).max(0.01);
    let (cpu_ms_per_frame, cpu_source) = if let Some(c) = cpu_ms[0] {
        (c, "schedstat")
    } else {
        // No schedstat: assume every thread busy for the whole frame.
        (primary_full_ms * cfg.threads as f64, "busy-time")
    };
    let fps = cfg.fps.unwrap_or(cfg.utilisation / (primary_full_ms / 1e3));
    let cores_at_full = (fps * cpu_ms_per_frame / 1e3).max(1e-3);
    let throttle_c = cfg.board.thermal.throttle_c;
    let k = (throttle_c + cfg.overshoot_c - cfg.ambient_c) / cores_at_full;
    Ok(Calibration {
        full_threads: cfg.threads,
        reduced_threads: m.reduced_threads,
        primary_full_ms,
        primary_reduced_ms: nearest_rank(reduced, 0.5),
        fallback_ms: nearest_rank(fallback, 0.5),
        cpu_ms,
        p95_ms: [
            nearest_rank(full, 0.95),
            nearest_rank(reduced, 0.95),
            None,
            nearest_rank(fallback, 0.95),
        ],
        rounds,
        cpu_ms_per_frame,
        cpu_source,
        fps,
        k_c_per_core: k,
        ambient_c: cfg.ambient_c,
        throttle_c,
        slowdown: cfg.slowdown,
        tau_s: cfg.scenario.tau_s,
        load_avg_1m: sysinfo::System::load_average().one,
    })
}

// ---------------------------------------------------------------------------------------
// One run.

/// What the worker, the controller and the report share.
struct Shared {
    windows: LatencyWindows,
    governor: Option<Governor>,
    knobs: Knobs,
    served: u64,
    fallback_frames: u64,
    slo_violations: u64,
    burst_p95_ms: Option<f64>,
    transitions: Vec<Transition>,
    error: Option<SoakError>,
}

struct PlatformStats {
    peak_temp_c: f64,
    throttled_ms: u64,
}

fn run_one(
    cfg: &SoakConfig,
    cal: &Calibration,
    m: &Models,
    mode: Mode,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<RunReport, SoakError> {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let fake = FakeBoard::create(&cfg.root, &cfg.board, cores)?;
    let mut thermal = ThermalModel::new(
        cal.ambient_c,
        cal.k_c_per_core,
        cal.tau_s,
        cal.throttle_c,
        cal.slowdown,
    );
    fake.write(&thermal)?;
    let mut monitor = Monitor::new(&cfg.root, Some(&cfg.board))?;
    let limits = limits(Some(&cfg.board), &monitor.sample());
    let slo_ms = m.primary_full.manifest().budgets.p95_ms;
    let gcfg = GovernorConfig::new(
        limits.throttle_c,
        limits.warn_c,
        limits.resume_c,
        slo_ms,
        cfg.threads,
        m.fallback.is_some(),
    )
    .time_scaled(cfg.scenario.governor_time_scale);
    let gcfg = GovernorConfig {
        expected_p95_ms: cal.p95_ms,
        expected_cpu_ms: cal.cpu_ms,
        ..gcfg
    };
    let full_knobs = gcfg.knobs(Level::Full);
    let shared = Mutex::new(Shared {
        windows: LatencyWindows::new(cfg.scenario.windows),
        governor: (mode == Mode::Governed).then(|| Governor::new(gcfg.clone())),
        knobs: full_knobs,
        served: 0,
        fallback_frames: 0,
        slo_violations: 0,
        burst_p95_ms: None,
        transitions: Vec::new(),
        error: None,
    });
    let belt = Belt::new(cfg.queue);
    let skipped = AtomicU64::new(0);
    let burners = Burners::new();
    let runtime_threads = AtomicUsize::new(cfg.threads);
    let emulation_tids: Mutex<Vec<u32>> = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    let status_path = cfg.root.join("run/beltbox/thermal.json");
    mkdir(status_path.parent().unwrap_or(&cfg.root))?;
    let max_burners = burners_for(cfg.slowdown, cores, cfg.threads.min(m.reduced_threads));
    let duration = Duration::from_secs_f64(cfg.scenario.duration_s);
    let start = Instant::now();
    let end = start + duration;
    let slo_us = (slo_ms * 1e3) as u64;

    let platform_stats = std::thread::scope(|s| -> Result<PlatformStats, SoakError> {
        for i in 0..max_burners {
            let b = &burners;
            s.spawn(move || b.burn(i));
        }
        // The belt: one frame every 1/fps, on a fixed schedule (no drift).
        s.spawn(|| {
            if let Some(t) = current_tid() {
                lock(&emulation_tids).push(t);
            }
            let period = Duration::from_secs_f64(1.0 / cal.fps.max(0.01));
            let mut next = start;
            while next < end && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
                belt.push(next);
                next += period;
            }
        });
        // The fake platform: thermal model, sysfs, throttling, burners.
        let platform = s.spawn(|| -> Result<PlatformStats, SoakError> {
            if let Some(t) = current_tid() {
                lock(&emulation_tids).push(t);
            }
            let mut stats = PlatformStats {
                peak_temp_c: thermal.temp_c,
                throttled_ms: 0,
            };
            let exclude = || {
                let mut v = lock(&emulation_tids).clone();
                v.extend(lock(&burners.tids).iter());
                v
            };
            let mut last = Instant::now();
            let mut last_cpu = runtime_cpu_ns(&exclude());
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                let now = Instant::now();
                let dt = now.duration_since(last).as_secs_f64();
                let cpu = runtime_cpu_ns(&exclude());
                let cores_used = match (last_cpu, cpu) {
                    (Some(a), Some(b)) => b.saturating_sub(a) as f64 / 1e9 / dt.max(1e-3),
                    _ => 0.0,
                };
                last = now;
                last_cpu = cpu;
                let was = thermal.throttled;
                thermal.step(dt, cores_used);
                if thermal.throttled {
                    stats.throttled_ms += (dt * 1e3) as u64;
                }
                stats.peak_temp_c = stats.peak_temp_c.max(thermal.temp_c);
                if thermal.throttled != was {
                    log::debug!(
                        "soak platform: {} at {:.1} °C",
                        if thermal.throttled {
                            "throttling"
                        } else {
                            "released"
                        },
                        thermal.temp_c
                    );
                }
                let t = runtime_threads.load(Ordering::Relaxed);
                let n = if thermal.throttled {
                    burners_for(cfg.slowdown, cores, t)
                } else {
                    0
                };
                burners.active.store(n, Ordering::Relaxed);
                fake.write(&thermal)?;
            }
            burners.active.store(0, Ordering::Relaxed);
            Ok(stats)
        });
        // The runtime's controller: production monitor + governor, status file, progress.
        s.spawn(|| {
            let tick = Duration::from_millis(cfg.scenario.tick_ms.max(10));
            let mut next = start + tick;
            let mut last_status = start;
            let mut last_progress = start;
            let burst_ms = cfg.scenario.windows.burst_ms;
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
                next += tick;
                let now_ms = ms_since(start);
                let snap = monitor.sample();
                let st = assess(&snap, &limits);
                let mut sh = lock(&shared);
                if sh.burst_p95_ms.is_none() && now_ms >= burst_ms {
                    sh.burst_p95_ms = sh.windows.burst_p95_ms(now_ms);
                }
                let reference = sh.burst_p95_ms;
                if let Some(g) = sh.governor.as_mut() {
                    let tr = g.tick(&Inputs {
                        now_ms,
                        temp_c: st.hottest.as_ref().map(|h| h.temp_c),
                        throttled: st.throttled,
                        reference_p95_ms: reference,
                    });
                    let knobs = g.knobs();
                    if let Some(t) = tr {
                        log::info!("{t}");
                        sh.transitions.push(t);
                    }
                    sh.knobs = knobs;
                }
                let publish = last_status.elapsed() >= Duration::from_secs(1);
                let latency = publish.then(|| sh.windows.report(now_ms));
                let gov = if publish { sh.governor.as_ref().map(|g| g.report(now_ms)) } else { None };
                let show = last_progress.elapsed().as_secs_f64() >= cfg.scenario.progress_every_s;
                let line = show.then(|| {
                    let level = sh.governor.as_ref().map(|g| g.level()).unwrap_or(Level::Full);
                    let fmt = |v: Option<f64>| v.map(|x| format!("{x:.1}")).unwrap_or_else(|| "-".into());
                    format!(
                        "{:<10} t={:>4.0}s {:>5.1}°C{} level={:<15} served={:<5} shed={:<4} p95 burst={} sustained={} ms",
                        mode.name(),
                        now_ms as f64 / 1e3,
                        st.hottest.as_ref().map(|h| h.temp_c).unwrap_or(f64::NAN),
                        if st.throttled { " THROTTLED" } else { "" },
                        level.name(),
                        sh.served,
                        belt.shed.load(Ordering::Relaxed),
                        fmt(sh.windows.burst_p95_ms(now_ms)),
                        fmt(sh.windows.sustained_p95_ms(now_ms)),
                    )
                });
                // File I/O and printing happen without holding the worker's lock.
                drop(sh);
                if let Some(latency) = latency {
                    last_status = Instant::now();
                    let file = StatusFile {
                        schema: status::SCHEMA,
                        updated_unix_ms: status::unix_ms(),
                        pid: std::process::id(),
                        model: m.primary_full.name(),
                        fallback_model: m.fallback.as_ref().map(|f| f.name()),
                        board: &cfg.board.name,
                        slo_ms,
                        latency: &latency,
                        governor: gov.as_ref(),
                        throttle: Some(&st),
                    };
                    if let Err(e) = status::write(&status_path, &file) {
                        log::warn!("soak: {e}");
                    }
                }
                if let Some(line) = line {
                    last_progress = Instant::now();
                    progress(&line);
                }
            }
        });

        // The worker: this thread serves frames until the run ends.
        let mut keep = 0.0f64;
        while let Some(arrival) = belt.pop(end) {
            let knobs = lock(&shared).knobs;
            if knobs.duty < 1.0 {
                // Pacing: serve `duty` of the frames, evenly spread; shed the rest and
                // count them (a belt camera sees each parcel in several frames).
                keep += knobs.duty.max(0.0);
                if keep < 1.0 {
                    skipped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                keep -= 1.0;
            } else {
                keep = 0.0;
            }
            let (model, threads) = m.pick(&knobs);
            runtime_threads.store(threads, Ordering::Relaxed);
            let queue_us = u64::try_from(arrival.elapsed().as_micros()).unwrap_or(u64::MAX);
            let frame: Vec<(&[u8], InputKind)> =
                m.frame.iter().map(|(b, k)| (&b[..], *k)).collect();
            let inference = match model.infer(&frame, 1) {
                Ok(i) => i,
                Err(e) => {
                    lock(&shared).error = Some(e.into());
                    break;
                }
            };
            let now_ms = ms_since(start);
            let sample = StageTimings {
                queue_us,
                ..inference.timings
            };
            let total = sample.total_us();
            {
                let mut sh = lock(&shared);
                sh.windows.record(now_ms, &sample);
                if let Some(g) = sh.governor.as_mut() {
                    g.observe(now_ms, total);
                }
                sh.served += 1;
                sh.fallback_frames += u64::from(knobs.fallback);
                sh.slo_violations += u64::from(total > slo_us);
            }
        }
        stop.store(true, Ordering::Relaxed);
        burners.stop.store(true, Ordering::Relaxed);
        belt.cv.notify_all();
        platform
            .join()
            .map_err(|_| SoakError::Failed("the fake platform thread panicked".into()))?
    })?;

    let end_ms = ms_since(start);
    let mut sh = lock(&shared);
    if let Some(e) = sh.error.take() {
        return Err(e);
    }
    let final_windows = sh.windows.report(end_ms);
    let total = final_windows.stage(Stage::Total);
    let (level_s, model_switches, level_p95_ms) = match &sh.governor {
        Some(g) => {
            let s = g.stats();
            (
                s.time_ms.map(|ms| ms as f64 / 1e3),
                s.fallback_switches,
                g.report(end_ms).level_p95_ms,
            )
        }
        None => ([end_ms as f64 / 1e3, 0.0, 0.0, 0.0], 0, [None; 4]),
    };
    Ok(RunReport {
        mode,
        duration_s: end_ms as f64 / 1e3,
        slo_ms,
        frames_offered: belt.offered.load(Ordering::Relaxed),
        frames_served: sh.served,
        frames_shed: belt.shed.load(Ordering::Relaxed),
        frames_skipped: skipped.load(Ordering::Relaxed),
        frames_pending: belt.pending(),
        frames_fallback: sh.fallback_frames,
        slo_violations: sh.slo_violations,
        burst_p95_ms: sh.burst_p95_ms,
        sustained_p95_ms: sh.windows.sustained_p95_ms(end_ms),
        max_ms: total.and_then(|t| t.sustained.max_ms),
        peak_temp_c: platform_stats.peak_temp_c,
        throttled_s: platform_stats.throttled_ms as f64 / 1e3,
        model_switches,
        transitions: std::mem::take(&mut sh.transitions),
        level_s,
        level_p95_ms,
        final_windows,
        monitor_warnings: monitor_warnings(&cfg.root),
    })
}

/// The warnings a fresh monitor raises on the final tree (there should be none: the fake
/// tree is complete; a warning here means the fake board and the monitor disagree).
fn monitor_warnings(root: &Path) -> Vec<String> {
    match Monitor::new(root, None) {
        Ok(mut m) => {
            m.sample();
            m.warnings().to_vec()
        }
        Err(e) => vec![e.to_string()],
    }
}

/// Judges the targets of issue 6 from a governed and an ungoverned run.
pub fn targets(runs: &[RunReport]) -> Option<Targets> {
    let g = runs.iter().find(|r| r.mode == Mode::Governed)?;
    let u = runs.iter().find(|r| r.mode == Mode::Ungoverned)?;
    let gs = g.sustained_p95_ms?;
    let within_slo = gs <= g.slo_ms;
    let within_burst = g.burst_p95_ms.is_some_and(|b| gs <= 1.1 * b);
    let violates = u.sustained_p95_ms.is_some_and(|s| s > u.slo_ms);
    let accounted =
        g.frames_offered == g.frames_served + g.frames_shed + g.frames_skipped + g.frames_pending;
    Some(Targets {
        governed_sustained_within_slo: within_slo,
        governed_sustained_within_1_1_burst: within_burst,
        ungoverned_violates_slo: violates,
        governed_frames_accounted: accounted,
        met: within_slo && within_burst && violates && accounted,
    })
}

/// Removes the fake tree if it is ours to remove (the marker proves it is a soak tree).
fn remove_tree(cfg: &SoakConfig) {
    if cfg.remove_root && cfg.root.join(MARKER).is_file() {
        if let Err(e) = std::fs::remove_dir_all(&cfg.root) {
            log::warn!("soak: cannot remove {}: {e}", cfg.root.display());
        }
    }
}

/// Loads the models, calibrates, runs each mode back to back on the same load.
pub fn run(cfg: &SoakConfig, progress: &(dyn Fn(&str) + Sync)) -> Result<SoakReport, SoakError> {
    if !(cfg.slowdown >= 1.0 && cfg.utilisation > 0.0 && cfg.utilisation <= 1.0) {
        return Err(SoakError::Invalid(format!(
            "soak: slowdown must be >= 1 and utilisation in (0, 1]; got {} and {}",
            cfg.slowdown, cfg.utilisation
        )));
    }
    let d = cfg.scenario.duration_s;
    if !(d.is_finite() && (1.0..=86_400.0).contains(&d)) {
        return Err(SoakError::Invalid(format!(
            "soak: duration must be 1 s to 24 h; got {d} s"
        )));
    }
    if let Some(f) = cfg.fps {
        if !(f.is_finite() && f > 0.0 && f <= 10_000.0) {
            return Err(SoakError::Invalid(format!(
                "soak: --fps must be in (0, 10000]; got {f}"
            )));
        }
    }
    progress("loading models and calibrating (cold box)...");
    let models = Models::load(cfg)?;
    let cal = calibrate(cfg, &models)?;
    progress(&format!(
        "calibrated: primary {:.1} ms/frame at {} threads ({:.1} ms CPU), belt {:.2} fps, k = {:.1} °C/core, \
         slowdown {}x when throttled, load average {:.2}",
        cal.primary_full_ms, cal.full_threads, cal.cpu_ms_per_frame, cal.fps, cal.k_c_per_core, cal.slowdown, cal.load_avg_1m
    ));
    let mut runs = Vec::new();
    for mode in &cfg.modes {
        progress(&format!(
            "{} run: {:.0} s; live view: beltbox thermal --sysfs-root {}",
            mode.name(),
            cfg.scenario.duration_s,
            cfg.root.display()
        ));
        let run = run_one(cfg, &cal, &models, *mode, progress);
        if run.is_err() || Some(mode) == cfg.modes.last() {
            remove_tree(cfg);
        }
        runs.push(run?);
    }
    Ok(SoakReport {
        board: cfg.board.name.clone(),
        model: models.primary_full.name().to_string(),
        fallback_model: models.fallback.as_ref().map(|f| f.name().to_string()),
        scenario: cfg.scenario.clone(),
        calibration: cal,
        targets: targets(&runs),
        runs,
        sysfs_root: cfg.root.display().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thermal_model_settles_and_throttles_with_hysteresis() {
        // 1 core at full clock settles 60 °C above a 40 °C ambient: past an 80 °C limit.
        let mut m = ThermalModel::new(40.0, 60.0, 10.0, 80.0, 3.0);
        let mut first = None;
        for i in 0..600 {
            m.step(0.1, 1.0);
            if m.throttled && first.is_none() {
                first = Some(i);
            }
        }
        // ln(60 / 20) * tau = 11 s to reach 80 °C.
        let first = first.unwrap();
        assert!((100..=115).contains(&first), "{first}");
        assert!(m.occurred);
        // Throttled, the same work heats a third as much: it hovers in the 2 °C band.
        assert!((77.0..=81.0).contains(&m.temp_c), "{}", m.temp_c);
        // Idle: it cools, releases below 78 °C, and the sticky bit stays.
        for _ in 0..600 {
            m.step(0.1, 0.0);
        }
        assert!(!m.throttled && m.occurred && m.temp_c < 45.0);
    }

    #[test]
    fn burner_counts_give_the_asked_slowdown() {
        // 2 cores, 2 runtime threads, 3x: 4 burners -> each thread gets 2/6 core.
        assert_eq!(burners_for(3.0, 2, 2), 4);
        assert_eq!(burners_for(3.0, 2, 1), 5);
        assert_eq!(burners_for(3.0, 4, 2), 10);
        assert_eq!(burners_for(1.0, 2, 2), 0);
    }

    #[test]
    fn fake_board_is_what_the_monitor_expects() {
        for name in beltbox_core::board::names() {
            let board = beltbox_core::board::profile(name).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("root");
            let fake = FakeBoard::create(&root, &board, 2).unwrap();
            let mut m = ThermalModel::new(40.0, 50.0, 1.0, board.thermal.throttle_c, 3.0);
            fake.write(&m).unwrap();
            let mut mon = Monitor::new(&root, Some(&board)).unwrap();
            let snap = mon.sample();
            let lim = limits(Some(&board), &snap);
            let st = assess(&snap, &lim);
            assert!(!st.throttled, "{name}: {st:?}");
            assert_eq!(st.hottest.as_ref().map(|h| h.temp_c), Some(40.0), "{name}");
            assert!(mon.warnings().is_empty(), "{name}: {:?}", mon.warnings());
            // Hot: every signal the board has must show it.
            m.temp_c = board.thermal.throttle_c + 1.0;
            m.throttled = true;
            m.occurred = true;
            fake.write(&m).unwrap();
            let st = assess(&mon.sample(), &lim);
            assert!(st.throttled, "{name}");
            let kinds: Vec<String> = st
                .reasons
                .iter()
                .map(|r| serde_json::to_value(r).unwrap()["kind"].to_string())
                .collect();
            let want_vendor = board.vendor_flag.is_some();
            assert_eq!(
                kinds.iter().any(|k| k.contains("vendor")),
                want_vendor,
                "{name}: {kinds:?}"
            );
            assert_eq!(
                kinds.iter().any(|k| k.contains("freq-capped")),
                !want_vendor,
                "{name}: {kinds:?}"
            );
            // The tree is recognised as the board it imitates.
            if !board.detect.compatible.is_empty() {
                assert_eq!(
                    beltbox_core::board::identify_under(&root, "aarch64")
                        .unwrap()
                        .name(),
                    name
                );
            }
            // And a second soak may reuse it, but a foreign directory is refused.
            FakeBoard::create(&root, &board, 2).unwrap();
            let foreign = dir.path().join("foreign");
            std::fs::create_dir_all(foreign.join("etc")).unwrap();
            assert!(FakeBoard::create(&foreign, &board, 2).is_err());
        }
    }

    #[test]
    fn runtime_cpu_is_measured_and_excludes_threads() {
        let Some(before) = runtime_cpu_ns(&[]) else {
            return; // no schedstat on this kernel: the soak falls back to busy time
        };
        // Burn until this thread has had 20 ms of CPU (wall time varies on a busy box).
        let own = || -> u64 {
            std::fs::read_to_string("/proc/thread-self/schedstat")
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        let (t, start) = (Instant::now(), own());
        let mut x = 1u64;
        while own() < start + 20_000_000 && t.elapsed() < Duration::from_secs(10) {
            x = std::hint::black_box(x.wrapping_mul(3).wrapping_add(1));
        }
        let after = runtime_cpu_ns(&[]).unwrap();
        assert!(after - before >= 20_000_000, "{}", after - before);
        let me = current_tid().unwrap();
        assert!(runtime_cpu_ns(&[me]).unwrap() < after);
    }

    #[test]
    fn targets_need_both_runs_and_judge_each_clause() {
        let run = |mode, burst: f64, sustained: f64| RunReport {
            mode,
            duration_s: 60.0,
            slo_ms: 200.0,
            frames_offered: 100,
            frames_served: 90,
            frames_shed: 5,
            frames_skipped: 4,
            frames_pending: 1,
            frames_fallback: 0,
            slo_violations: 0,
            burst_p95_ms: Some(burst),
            sustained_p95_ms: Some(sustained),
            max_ms: None,
            peak_temp_c: 0.0,
            throttled_s: 0.0,
            model_switches: 0,
            transitions: vec![],
            level_s: [0.0; 4],
            level_p95_ms: [None; 4],
            final_windows: LatencyWindows::new(WindowConfig::default()).report(0),
            monitor_warnings: vec![],
        };
        assert!(targets(&[run(Mode::Governed, 80.0, 85.0)]).is_none());
        let t = targets(&[
            run(Mode::Ungoverned, 80.0, 260.0),
            run(Mode::Governed, 80.0, 85.0),
        ])
        .unwrap();
        assert!(t.met, "{t:?}");
        let t = targets(&[
            run(Mode::Ungoverned, 80.0, 260.0),
            run(Mode::Governed, 80.0, 90.0),
        ])
        .unwrap();
        assert!(!t.governed_sustained_within_1_1_burst && !t.met);
        let t = targets(&[
            run(Mode::Ungoverned, 80.0, 150.0),
            run(Mode::Governed, 80.0, 85.0),
        ])
        .unwrap();
        assert!(!t.ungoverned_violates_slo && !t.met);
    }
}
