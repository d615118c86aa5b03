//! Thermal monitoring and the sustained-p95 governor.
//!
//! A benchmark is a burst; a belt box runs all shift. After minutes of load the SoC heats,
//! the platform lowers the CPU clock, and a p95 that looked fine for 30 seconds drifts
//! past the SLO. This module watches for that and acts before it happens.
//!
//! | module | concern | I/O? |
//! |---|---|---|
//! | [`sysfs`] | read zones, trip points, cpufreq, vendor flags under a root; warn once | yes |
//! | [`throttle`] | snapshot + board limits -> throttled? why? | no |
//! | [`window`] | burst / sustained p95 per stage in fixed histograms | no |
//! | [`governor`] | the state machine: threads -> pacing -> fallback and back | no |
//! | [`status`] | the JSON status a running loop publishes for `beltbox thermal`; Prometheus text | file |
//!
//! Data flows one way: sysfs -> throttle -> governor inputs; frames -> windows and
//! governor; governor -> knobs the adapter applies. See docs/thermal.md.

pub mod governor;
pub mod status;
pub mod sysfs;
pub mod throttle;
pub mod window;

use std::path::PathBuf;

pub use governor::{Governor, GovernorConfig, Level};
pub use sysfs::{Monitor, Snapshot};
pub use throttle::{assess, limits, Limits, ThrottleStatus};
pub use window::{LatencyWindows, WindowConfig};

#[derive(Debug, thiserror::Error)]
pub enum ThermalError {
    #[error("{0}: sysfs root is not a directory; give --sysfs-root a directory laid out like / (with sys/class/thermal, ...)")]
    Root(PathBuf),
    #[error(transparent)]
    Board(#[from] crate::board::BoardError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a beltbox thermal status file: {message}")]
    Status { path: PathBuf, message: String },
    /// A setting out of range (exit code 2).
    #[error("{0}")]
    Invalid(String),
}

impl ThermalError {
    /// Faults in what the caller handed us (paths, names, packages) -> exit code 2.
    pub fn is_input_error(&self) -> bool {
        !matches!(self, ThermalError::Io { .. })
    }
}
