//! What a running inference loop (the service, a soak run) publishes about its thermal
//! state: a JSON status file that `beltbox thermal` reads, and Prometheus text for the
//! metrics endpoint.
//!
//! Why a file: `beltbox thermal` is a separate process, typically run by a technician over
//! SSH while the service runs; a small file in the runtime directory, replaced atomically
//! about once a second, needs no socket, no locking, and survives the reader crashing.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::governor::{GovernorReport, Level, REASON_LABELS};
use super::throttle::ThrottleStatus;
use super::window::WindowReport;
use super::ThermalError;
use crate::prom::{self, Exposition, Kind};

/// Marks the file as ours and versions its layout.
pub const SCHEMA: &str = "beltbox-thermal-status/1";

/// A status older than this is reported as stale (the writer stopped or hung).
pub const STALE_AFTER_MS: u64 = 10_000;

/// `$BELTBOX_RUNTIME_DIR/thermal.json`, else `/run/beltbox/thermal.json` (systemd's
/// `RuntimeDirectory=beltbox`).
pub fn default_path() -> PathBuf {
    std::env::var_os("BELTBOX_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/beltbox"))
        .join("thermal.json")
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusFile<'a> {
    pub schema: &'static str,
    pub updated_unix_ms: u64,
    pub pid: u32,
    pub model: &'a str,
    pub fallback_model: Option<&'a str>,
    pub board: &'a str,
    pub slo_ms: f64,
    pub latency: &'a WindowReport,
    pub governor: Option<&'a GovernorReport>,
    pub throttle: Option<&'a ThrottleStatus>,
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Replaces `path` atomically: write a temp file beside it, fsync, rename. A reader sees
/// the old or the new status, never half of one.
pub fn write(path: &Path, status: &StatusFile<'_>) -> Result<(), ThermalError> {
    let io = |source| ThermalError::Io {
        path: path.to_path_buf(),
        source,
    };
    let text = serde_json::to_vec_pretty(status).map_err(|e| io(std::io::Error::other(e)))?;
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&text).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}

/// What `beltbox thermal` shows about a running loop.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Published {
    pub path: String,
    pub age_ms: u64,
    pub stale: bool,
    pub status: serde_json::Value,
}

/// Reads a status file. `Ok(None)` when there is none (nothing runs); an error when the
/// file exists but is not ours.
pub fn read(path: &Path) -> Result<Option<Published>, ThermalError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ThermalError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let bad = |message: String| ThermalError::Status {
        path: path.to_path_buf(),
        message,
    };
    let status: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    if status.get("schema").and_then(|s| s.as_str()) != Some(SCHEMA) {
        return Err(bad(format!("missing `schema = {SCHEMA}`")));
    }
    let updated = status
        .get("updated_unix_ms")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| bad("missing `updated_unix_ms`".into()))?;
    let age_ms = unix_ms().saturating_sub(updated);
    Ok(Some(Published {
        path: path.display().to_string(),
        age_ms,
        stale: age_ms > STALE_AFTER_MS,
        status,
    }))
}

/// Prometheus text exposition of the thermal state, for the service's `/metrics`.
pub fn prometheus(
    latency: &WindowReport,
    governor: Option<&GovernorReport>,
    throttle: Option<&ThrottleStatus>,
) -> String {
    let mut out = Exposition::new();
    let mut metric = |name: &str, kind: Kind, help: &str, samples: &[(String, f64)]| {
        out.family(name, kind, help);
        for (labels, v) in samples {
            out.sample(name, labels, v);
        }
    };
    if let Some(t) = throttle {
        metric(
            "beltbox_thermal_throttled",
            Kind::Gauge,
            "1 when the platform reports or shows throttling.",
            &[(String::new(), f64::from(u8::from(t.throttled)))],
        );
        if let Some(h) = &t.hottest {
            metric(
                "beltbox_thermal_temperature_celsius",
                Kind::Gauge,
                "Hottest watched thermal zone.",
                &[(prom::labels(&[("zone", &h.zone)]), h.temp_c)],
            );
        }
        metric(
            "beltbox_thermal_throttle_point_celsius",
            Kind::Gauge,
            "Temperature at which the platform starts throttling.",
            &[(String::new(), t.limits.throttle_c)],
        );
    }
    let mut p95 = Vec::new();
    for s in &latency.stages {
        for (window, summary) in [("burst", &s.burst), ("sustained", &s.sustained)] {
            if let Some(v) = summary.p95_ms {
                p95.push((
                    format!("stage=\"{}\",window=\"{window}\"", s.stage.name()),
                    v / 1e3,
                ));
            }
        }
    }
    metric(
        "beltbox_latency_p95_seconds",
        Kind::Gauge,
        "p95 latency per stage over the burst (~30 s) and sustained (~10 min) windows.",
        &p95,
    );
    if let Some(g) = governor {
        metric(
            "beltbox_governor_level",
            Kind::Gauge,
            "Governor level: 0 full, 1 reduced threads, 2 paced, 3 fallback model.",
            &[(format!("level=\"{}\"", g.level), g.level.index() as f64)],
        );
        metric(
            "beltbox_governor_transitions_total",
            Kind::Counter,
            "Governor transitions by reason.",
            &REASON_LABELS
                .iter()
                .zip(g.stats.by_reason)
                .map(|(r, n)| (format!("reason=\"{r}\""), n as f64))
                .collect::<Vec<_>>(),
        );
        let per_level = |vals: [u64; 4], scale: f64| -> Vec<(String, f64)> {
            Level::ALL
                .iter()
                .map(|l| (format!("level=\"{l}\""), vals[l.index()] as f64 * scale))
                .collect()
        };
        metric(
            "beltbox_governor_seconds_total",
            Kind::Counter,
            "Time spent at each governor level.",
            &per_level(g.stats.time_ms, 1e-3),
        );
        metric(
            "beltbox_governor_frames_total",
            Kind::Counter,
            "Frames served at each governor level (fallback frames are flagged).",
            &per_level(g.stats.frames, 1.0),
        );
    }
    out.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::thermal::governor::{Governor, GovernorConfig};
    use crate::thermal::window::{LatencyWindows, WindowConfig};
    use crate::timing::StageTimings;

    #[test]
    fn status_round_trip_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("thermal.json");
        assert_eq!(read(&path).unwrap(), None);
        let mut lw = LatencyWindows::new(WindowConfig::default());
        lw.record(0, &StageTimings::default());
        let rep = lw.report(0);
        let g = Governor::new(GovernorConfig::new(80.0, 75.0, 68.0, 5.0, 2, true)).report(0);
        write(
            &path,
            &StatusFile {
                schema: SCHEMA,
                updated_unix_ms: unix_ms(),
                pid: 1,
                model: "digits-int8-qdq",
                fallback_model: None,
                board: "rpi4",
                slo_ms: 5.0,
                latency: &rep,
                governor: Some(&g),
                throttle: None,
            },
        )
        .unwrap();
        let p = read(&path).unwrap().unwrap();
        assert!(!p.stale);
        assert_eq!(p.status["governor"]["level"], "full");
        std::fs::write(&path, b"{\"schema\": \"other\"}").unwrap();
        assert!(read(&path).unwrap_err().to_string().contains("schema"));
        std::fs::write(&path, b"\xff\x00").unwrap();
        assert!(read(&path).is_err());
    }

    #[test]
    fn prometheus_text_has_help_type_and_labels() {
        let mut lw = LatencyWindows::new(WindowConfig::default());
        lw.record(
            0,
            &StageTimings {
                inference_us: 2_000,
                ..StageTimings::default()
            },
        );
        let g = Governor::new(GovernorConfig::new(80.0, 75.0, 68.0, 5.0, 2, true)).report(0);
        let text = prometheus(&lw.report(0), Some(&g), None);
        assert!(
            text.contains("# TYPE beltbox_governor_transitions_total counter"),
            "{text}"
        );
        assert!(
            text.contains(
                "beltbox_latency_p95_seconds{stage=\"inference\",window=\"burst\"} 0.002"
            ),
            "{text}"
        );
        assert!(
            text.contains("beltbox_governor_level{level=\"full\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("beltbox_governor_frames_total{level=\"fallback\"} 0"),
            "{text}"
        );
    }
}
