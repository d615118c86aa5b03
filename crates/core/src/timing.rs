//! Per-stage latency of one request: the one shape every layer uses (the model's timed run,
//! the service's metrics, the thermal windows, bench and soak).
//!
//! Stages are named fields, not positions: a `[u64; 5]` read as `stages[2]` once meant
//! "inference" in one module and nothing in another.

use std::time::{Duration, Instant};

use serde::Serialize;

/// A timed stage of a request, in the order a request passes through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Waiting for a worker (the service's bounded queue); 0 outside the service.
    Queue,
    /// Input bytes or request tensor -> model input tensor.
    Preprocess,
    /// The backend's run.
    Inference,
    /// Outputs -> classes / detections.
    Postprocess,
    /// Preprocess + inference + postprocess: the time a worker spends on the request.
    /// The queue is its own stage (waiting is not work, and the governor acts on work).
    Total,
}

impl Stage {
    /// Every stage, in request order, `Total` last.
    pub const ALL: [Stage; 5] = [
        Stage::Queue,
        Stage::Preprocess,
        Stage::Inference,
        Stage::Postprocess,
        Stage::Total,
    ];

    /// The name used in metrics labels, JSON and logs.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Queue => "queue",
            Stage::Preprocess => "preprocess",
            Stage::Inference => "inference",
            Stage::Postprocess => "postprocess",
            Stage::Total => "total",
        }
    }
}

/// Wall-clock microseconds per stage of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StageTimings {
    pub queue_us: u64,
    pub preprocess_us: u64,
    pub inference_us: u64,
    pub postprocess_us: u64,
}

impl StageTimings {
    /// Preprocess + inference + postprocess (see [`Stage::Total`]), saturating.
    pub fn total_us(&self) -> u64 {
        self.preprocess_us
            .saturating_add(self.inference_us)
            .saturating_add(self.postprocess_us)
    }

    /// One stage by name.
    pub fn get(&self, s: Stage) -> u64 {
        match s {
            Stage::Queue => self.queue_us,
            Stage::Preprocess => self.preprocess_us,
            Stage::Inference => self.inference_us,
            Stage::Postprocess => self.postprocess_us,
            Stage::Total => self.total_us(),
        }
    }
}

/// Whole microseconds of a duration, saturating.
pub fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Whole milliseconds since `start`, saturating.
pub fn ms_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Fractional milliseconds since `start` (load times, reports).
pub fn ms_f64(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn total_is_the_work_and_saturates() {
        let t = StageTimings {
            queue_us: 1,
            preprocess_us: 2,
            inference_us: 3,
            postprocess_us: 4,
        };
        assert_eq!(t.total_us(), 9);
        assert_eq!(t.get(Stage::Inference), 3);
        let big = StageTimings {
            preprocess_us: u64::MAX,
            inference_us: 5,
            ..StageTimings::default()
        };
        assert_eq!(big.total_us(), u64::MAX);
    }

    #[test]
    fn stage_names_are_distinct() {
        let names: std::collections::HashSet<_> = Stage::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(names.len(), Stage::ALL.len());
    }
}
