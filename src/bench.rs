//! `beltbox bench`: load time, per-stage latency percentiles, peak RSS.
//!
//! Percentiles use the nearest-rank method on the recorded samples (no interpolation), so
//! a reported p95 is a latency that actually happened.

use std::time::Instant;

use serde::Serialize;

use crate::model::{Model, ModelError, StageTimings};
use crate::preprocess::InputKind;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Percentiles {
    /// From samples in microseconds; all zeros for no samples.
    pub fn from_us(samples: &[u64]) -> Percentiles {
        let mut v: Vec<f64> = samples.iter().map(|&u| u as f64 / 1e3).collect();
        v.sort_by(f64::total_cmp);
        let rank = |p: f64| -> f64 {
            if v.is_empty() {
                return 0.0;
            }
            let idx = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
            v[idx]
        };
        Percentiles {
            p50_ms: rank(0.50),
            p95_ms: rank(0.95),
            p99_ms: rank(0.99),
            min_ms: v.first().copied().unwrap_or(0.0),
            max_ms: v.last().copied().unwrap_or(0.0),
            mean_ms: if v.is_empty() {
                0.0
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            },
        }
    }
}

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
    pub op_counts: Option<crate::model::backend::OpCounts>,
    /// Per-op-type time (`bench --profile`), slowest first.
    pub profile: Option<Vec<crate::model::backend::OpTime>>,
}

pub struct BenchConfig<'a> {
    pub runs: usize,
    pub warmup: usize,
    pub input: &'a [u8],
    pub input_name: String,
    pub kind: InputKind,
    /// Called with (done, total) about once a second, for progress on long runs.
    pub progress: &'a dyn Fn(usize, usize),
    /// Also attribute time to op types over this many extra runs (0: no profile).
    pub profile_runs: usize,
}

pub fn run(model: &Model, cfg: &BenchConfig) -> Result<BenchReport, ModelError> {
    // Split the allocator's high-water mark: what loading cost vs what serving costs.
    let load_peak = crate::memory::alloc::installed().then(crate::memory::alloc::reset_peak);
    for _ in 0..cfg.warmup {
        model.infer(cfg.input, cfg.kind, 5)?;
    }
    let mut timings: Vec<StageTimings> = Vec::with_capacity(cfg.runs);
    let start = Instant::now();
    let mut last_progress = Instant::now();
    for i in 0..cfg.runs {
        timings.push(model.infer(cfg.input, cfg.kind, 5)?.timings);
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
        model.profile(cfg.input, cfg.kind, cfg.profile_runs)?
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
        arch: crate::cpu::arch(),
        cpu_features: crate::cpu::features(),
        board: crate::board::detect(),
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
        peak_rss_bytes: crate::procfs::peak_rss_bytes(),
        alloc_current_bytes: crate::memory::alloc::snapshot().map(|(c, _)| c as u64),
        alloc_peak_bytes: crate::memory::alloc::snapshot().map(|(_, p)| p as u64),
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

#[cfg(test)]
mod tests {
    use super::Percentiles;

    #[test]
    fn nearest_rank() {
        let us: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        let p = Percentiles::from_us(&us);
        assert_eq!((p.p50_ms, p.p95_ms, p.p99_ms), (50.0, 95.0, 99.0));
        assert_eq!((p.min_ms, p.max_ms), (1.0, 100.0));
        assert_eq!(Percentiles::from_us(&[7000]).p99_ms, 7.0);
        assert_eq!(Percentiles::from_us(&[]).p50_ms, 0.0);
    }
}
