//! `beltbox bench`: load time, per-stage latency percentiles, peak RSS.
//!
//! Percentiles are `beltbox_core::stats`' nearest rank: a reported p95 is a latency that
//! actually happened.

use std::time::Instant;

use serde::Serialize;

use beltbox_core::model::{Model, ModelError};
use beltbox_core::preprocess::InputKind;
use beltbox_core::stats::Percentiles;
use beltbox_core::timing::StageTimings;

#[derive(Debug, Clone, Serialize)]
pub struct Stages {
    pub preprocess: Percentiles,
    pub inference: Percentiles,
    pub postprocess: Percentiles,
    pub total: Percentiles,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub version: String,
    pub format: String,
    pub precision: String,
    pub backend: String,
    pub runtime: String,
    pub arch: &'static str,
    pub cpu_features: Vec<&'static str>,
    pub board: String,
    pub threads: usize,
    pub runs: usize,
    pub warmup: usize,
    pub input: String,
    pub load_ms: f64,
    pub selfcheck_ms: f64,
    /// Total per-frame latency percentiles (also broken down in `stages`).
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub stages: Stages,
    pub peak_rss_bytes: Option<u64>,
    /// Live heap bytes at the end of the run (counting allocator; null when the
    /// allocator is not installed, e.g. library use).
    pub alloc_current_bytes: Option<u64>,
    /// Heap high-water mark during warm-up and measured runs (serving).
    pub alloc_peak_bytes: Option<u64>,
    /// Heap high-water mark from process start through load and golden self-check.
    pub alloc_load_peak_bytes: Option<u64>,
    pub throughput_fps: f64,
    /// Integer vs float nodes of the loaded graph (null for engines that hide theirs).
    pub op_counts: Option<beltbox_core::model::backend::OpCounts>,
    /// Per-op-type time (`bench --profile`), slowest first.
    pub profile: Option<Vec<beltbox_core::model::backend::OpTime>>,
}

pub struct BenchConfig<'a> {
    pub runs: usize,
    pub warmup: usize,
    /// One file's bytes per manifest input, in manifest order.
    pub inputs: &'a [(&'a [u8], InputKind)],
    pub input_name: String,
    /// Called with (done, total) about once a second, for progress on long runs.
    pub progress: &'a dyn Fn(usize, usize),
    /// Also attribute time to op types over this many extra runs (0: no profile).
    pub profile_runs: usize,
}

pub fn run(model: &Model, cfg: &BenchConfig) -> Result<BenchReport, ModelError> {
    // Split the allocator's high-water mark: what loading cost vs what serving costs.
    let load_peak =
        beltbox_core::memory::alloc::installed().then(beltbox_core::memory::alloc::reset_peak);
    for _ in 0..cfg.warmup {
        model.infer(cfg.inputs, 5)?;
    }
    let mut timings: Vec<StageTimings> = Vec::with_capacity(cfg.runs);
    let start = Instant::now();
    let mut last_progress = Instant::now();
    for i in 0..cfg.runs {
        timings.push(model.infer(cfg.inputs, 5)?.timings);
        if last_progress.elapsed().as_secs() >= 1 {
            (cfg.progress)(i + 1, cfg.runs);
            last_progress = Instant::now();
        }
    }
    let wall = start.elapsed().as_secs_f64();
    let pick = |f: fn(&StageTimings) -> u64| {
        Percentiles::from_us(&timings.iter().map(f).collect::<Vec<_>>())
    };
    let total = pick(|t| t.total_us());
    // Profiled runs come after the measured ones so their overhead cannot touch the numbers.
    let profile = if cfg.profile_runs > 0 {
        model.profile(cfg.inputs, cfg.profile_runs)?
    } else {
        None
    };
    let m = model.manifest();
    Ok(BenchReport {
        model: m.name.clone(),
        version: m.version.to_string(),
        format: m.model.format.to_string(),
        precision: m.model.precision.to_string(),
        backend: model.info.backend.to_string(),
        runtime: model.info.runtime.clone(),
        arch: beltbox_core::cpu::arch(),
        cpu_features: beltbox_core::cpu::features(),
        board: beltbox_core::board::detect(),
        threads: model.info.threads,
        runs: cfg.runs,
        warmup: cfg.warmup,
        input: cfg.input_name.clone(),
        load_ms: model.info.load_ms,
        selfcheck_ms: model.info.selfcheck_ms,
        p50_ms: total.p50_ms,
        p95_ms: total.p95_ms,
        p99_ms: total.p99_ms,
        stages: Stages {
            preprocess: pick(|t| t.preprocess_us),
            inference: pick(|t| t.inference_us),
            postprocess: pick(|t| t.postprocess_us),
            total,
        },
        peak_rss_bytes: beltbox_core::procfs::peak_rss_bytes(),
        alloc_current_bytes: beltbox_core::memory::alloc::snapshot().map(|(c, _)| c as u64),
        alloc_peak_bytes: beltbox_core::memory::alloc::snapshot().map(|(_, p)| p as u64),
        alloc_load_peak_bytes: load_peak.map(|p| p as u64),
        throughput_fps: if wall > 0.0 {
            cfg.runs as f64 / wall
        } else {
            0.0
        },
        op_counts: model.op_counts(),
        profile,
    })
}
