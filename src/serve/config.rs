//! `beltbox.toml`: the service configuration (`/etc/beltbox/beltbox.toml` on a device).
//!
//! Every key is optional (defaults serve the bundled default model on 127.0.0.1:8080);
//! unknown keys are errors, and every error names the key (`server.listen[1]: ...`). The
//! installed default with comments is `cross/beltbox.toml`; the reference is docs/service.md.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use beltbox_core::memory::parse_size;

/// The model served when neither config nor flags name one.
pub const DEFAULT_MODEL: &str = "digits-int8-qdq";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read config: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: `{key}`: {message}")]
    Invalid {
        path: String,
        key: String,
        message: String,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: Option<PathBuf>,
    board: Option<String>,
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    models: RawModels,
    #[serde(default)]
    memory: RawMemory,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    ota: RawOta,
    #[serde(default)]
    spool: RawSpool,
    #[serde(default)]
    upload: RawUpload,
    #[serde(default)]
    low_confidence: RawLowConfidence,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLowConfidence {
    keep_inputs: Option<bool>,
    keep_max_size: Option<String>,
    keep_max_count: Option<i64>,
    secondary: Option<std::collections::BTreeMap<String, String>>,
}

/// `[low_confidence]`: what happens to an answer under its manifest's `low_confidence`
/// (`serve::lowconf`, docs/offline.md).
#[derive(Debug, Clone, PartialEq)]
pub struct LowConfidenceSettings {
    /// Keep such inputs in the `inputs` spool for upload and review.
    pub keep_inputs: bool,
    pub keep_max_bytes: u64,
    pub keep_max_count: u64,
    /// Model name -> the served model that re-runs its low-confidence inputs.
    pub secondary: std::collections::BTreeMap<String, String>,
}

impl Default for LowConfidenceSettings {
    fn default() -> Self {
        LowConfidenceSettings {
            keep_inputs: true,
            keep_max_bytes: 64 << 20,
            keep_max_count: 1000,
            secondary: Default::default(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpool {
    enabled: Option<bool>,
    max_size: Option<String>,
    segment_size: Option<String>,
    commit_interval_ms: Option<i64>,
    ack_timeout_ms: Option<i64>,
    box_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpload {
    mqtt: Option<String>,
    topic_prefix: Option<String>,
    http: Option<String>,
    batch: Option<i64>,
    backoff_min_ms: Option<i64>,
    backoff_max_ms: Option<i64>,
    timeout_ms: Option<i64>,
}

/// `[spool]`: the durable result spool (docs/offline.md).
#[derive(Debug, Clone, PartialEq)]
pub struct SpoolSettings {
    pub max_bytes: u64,
    pub segment_bytes: u64,
    pub commit_interval_ms: u64,
    /// How long an answer waits for its record's sync before it goes out unspooled.
    pub ack_timeout_ms: u64,
    /// Names the box in records, topics and message ids.
    pub box_id: String,
}

impl Default for SpoolSettings {
    fn default() -> Self {
        SpoolSettings {
            max_bytes: 256 << 20,
            segment_bytes: 4 << 20,
            commit_interval_ms: 0,
            ack_timeout_ms: 2_000,
            box_id: default_box_id(),
        }
    }
}

/// The box's id when the config names none: the first 12 hex digits of
/// `/etc/machine-id` (systemd's stable per-install id), else the host name.
pub fn default_box_id() -> String {
    let machine = std::fs::read_to_string("/etc/machine-id")
        .ok()
        .map(|t| t.trim().chars().take(12).collect::<String>())
        .filter(|t| t.len() == 12 && valid_box_id(t));
    let host = || {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| valid_box_id(t))
    };
    machine.or_else(host).unwrap_or_else(|| "beltbox".into())
}

/// One MQTT topic level and one part of a message id: letters, digits, `.`, `_`, `-`.
fn valid_box_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOta {
    root: Option<PathBuf>,
    channel: Option<String>,
    max_package: Option<String>,
    probation_requests: Option<i64>,
    probation_max_s: Option<i64>,
    probation_max_error_rate: Option<f64>,
    probation_min_agreement: Option<f64>,
    probation_max_low_confidence_rise: Option<f64>,
    poll_interval_s: Option<i64>,
    recent_frames: Option<i64>,
    recent_frame_interval_ms: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<Vec<String>>,
    workers: Option<i64>,
    queue_depth: Option<i64>,
    max_connections: Option<i64>,
    max_connections_per_peer: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModels {
    load: Option<Vec<String>>,
    dir: Option<PathBuf>,
    threads: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMemory {
    budget: Option<String>,
    strict_rss: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_body: Option<String>,
    max_tensor_elements: Option<i64>,
    max_json_depth: Option<i64>,
    request_timeout_ms: Option<i64>,
    queue_timeout_ms: Option<i64>,
    header_timeout_ms: Option<i64>,
    body_idle_timeout_ms: Option<i64>,
}

/// Where the service listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(a) => write!(f, "http://{a}"),
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl Listen {
    /// `HOST:PORT` or `unix:/path`. Host names resolve once, here.
    pub fn parse(text: &str) -> Result<Listen, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(format!("`{text}`: a unix socket needs an absolute path (unix:/run/beltbox/beltbox.sock)"));
            }
            return Ok(Listen::Unix(PathBuf::from(path)));
        }
        let mut addrs = text
            .to_socket_addrs()
            .map_err(|e| format!("`{text}` is not HOST:PORT or unix:/path ({e})"))?;
        addrs
            .next()
            .map(Listen::Tcp)
            .ok_or_else(|| format!("`{text}` resolves to no address"))
    }
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: Vec<Listen>,
    pub workers: usize,
    pub queue_depth: usize,
    pub max_connections: usize,
    /// Open connections one peer may hold (a TCP address, or a unix-socket client's uid).
    pub max_connections_per_peer: usize,
    /// Package directories or bundled names; the first is the default model.
    pub models: Vec<String>,
    pub models_dir: Option<PathBuf>,
    pub threads: usize,
    /// Bytes, with the text it came from.
    pub budget: Option<(u64, String)>,
    /// Hold the resident set, not only the heap, within the budget (`serve::retention`).
    pub strict_rss: bool,
    pub board: String,
    pub state_dir: PathBuf,
    pub max_body_bytes: usize,
    pub max_tensor_elements: u64,
    pub max_json_depth: usize,
    pub request_timeout_ms: u64,
    pub queue_timeout_ms: u64,
    /// A request's head (line + headers) must arrive within this of its connection
    /// becoming idle; a keep-alive connection idle this long is closed.
    pub header_timeout_ms: u64,
    /// A body that makes no progress for this long is answered 408.
    pub body_idle_timeout_ms: u64,
    /// OTA: the shipped TUF root of trust (docs/ota.md).
    pub ota_root: PathBuf,
    /// OTA: the channel `beltbox ota pull` uses without `--channel` (URL or directory).
    pub ota_channel: Option<String>,
    /// OTA: the largest package archive fetched or installed.
    pub ota_max_package_bytes: u64,
    /// OTA: how a candidate is judged on real traffic.
    pub probation: super::probation::Rules,
    /// OTA: seconds between polls of `ota_channel` by the service; 0 = never.
    pub ota_poll_interval_s: u64,
    /// OTA: frames kept per model for qualification's shadow run (0: none kept), and the
    /// least time between two kept frames (`serve::recent`).
    pub recent_frames: usize,
    pub recent_frame_interval_ms: u64,
    /// The result spool; `None` when `spool.enabled = false`.
    pub spool: Option<SpoolSettings>,
    /// `[upload]`: the sinks the spool drains to (box id and cursor directory are filled
    /// in from `[spool]` and `state_dir` when the service starts).
    pub upload: beltbox_spool::UploadConfig,
    pub low_confidence: LowConfidenceSettings,
    /// The file this config was read from (the OTA poller's child reads it too).
    pub source: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: vec![Listen::Tcp(SocketAddr::from(([127, 0, 0, 1], 8080)))],
            workers: 1,
            queue_depth: 16,
            // Connections are cheap tasks, not threads: what bounds them is memory
            // (conn::CONNECTION_BYTES each is set aside from the budget). On a box most
            // clients share one peer (loopback), so the per-peer cap leaves room for 100+
            // stuck sockets beside the real clients.
            max_connections: 256,
            max_connections_per_peer: 192,
            models: vec![DEFAULT_MODEL.to_string()],
            models_dir: None,
            threads: 1,
            budget: None,
            strict_rss: false,
            board: "auto".into(),
            // systemd's StateDirectory= sets $STATE_DIRECTORY (/var/lib/beltbox in the unit).
            state_dir: std::env::var_os("STATE_DIRECTORY")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/var/lib/beltbox")),
            max_body_bytes: 8 * 1024 * 1024,
            // A 1920x1080 RGB frame is 6,220,800 elements (docs/service.md, "Camera frames").
            max_tensor_elements: 8 * 1024 * 1024,
            max_json_depth: 32,
            request_timeout_ms: 10_000,
            queue_timeout_ms: 2_000,
            header_timeout_ms: 5_000,
            body_idle_timeout_ms: 5_000,
            ota_root: PathBuf::from("/etc/beltbox/ota/root.json"),
            ota_channel: None,
            ota_max_package_bytes: 512 * 1024 * 1024,
            probation: super::probation::Rules {
                requests: 1000,
                max_s: 600,
                max_error_rate: 0.01,
                min_agreement: 0.8,
                max_low_confidence_rise: 0.1,
            },
            ota_poll_interval_s: 3600,
            recent_frames: 32,
            recent_frame_interval_ms: 5_000,
            spool: Some(SpoolSettings::default()),
            upload: beltbox_spool::UploadConfig::new("", PathBuf::new()),
            low_confidence: LowConfidenceSettings::default(),
            source: None,
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut c = Config::from_toml(&text, &path.display().to_string())?;
        c.source = Some(path.to_path_buf());
        Ok(c)
    }

    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.message().to_string()
                + &e.span()
                    .map(|s| format!(" (at byte {})", s.start))
                    .unwrap_or_default(),
        })?;
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: origin.to_string(),
            key: key.to_string(),
            message,
        };
        let ranged = |key: &str, v: Option<i64>, lo: i64, hi: i64, default: u64| match v {
            None => Ok(default),
            Some(n) if (lo..=hi).contains(&n) => Ok(n as u64),
            Some(n) => Err(invalid(key, format!("{n} is out of range {lo}..={hi}"))),
        };
        let d = Config::default();
        let d_probation = d.probation.clone();
        let d_poll = d.ota_poll_interval_s;
        let (d_frames, d_frame_ms) = (d.recent_frames as u64, d.recent_frame_interval_ms);
        let mut c = Config {
            workers: ranged(
                "server.workers",
                raw.server.workers,
                1,
                256,
                d.workers as u64,
            )? as usize,
            queue_depth: ranged(
                "server.queue_depth",
                raw.server.queue_depth,
                0,
                65536,
                d.queue_depth as u64,
            )? as usize,
            max_connections: ranged(
                "server.max_connections",
                raw.server.max_connections,
                1,
                65536,
                d.max_connections as u64,
            )? as usize,
            max_connections_per_peer: ranged(
                "server.max_connections_per_peer",
                raw.server.max_connections_per_peer,
                1,
                65536,
                d.max_connections_per_peer as u64,
            )? as usize,
            threads: ranged(
                "models.threads",
                raw.models.threads,
                1,
                256,
                d.threads as u64,
            )? as usize,
            max_tensor_elements: ranged(
                "limits.max_tensor_elements",
                raw.limits.max_tensor_elements,
                1,
                1 << 32,
                d.max_tensor_elements,
            )?,
            max_json_depth: ranged(
                "limits.max_json_depth",
                raw.limits.max_json_depth,
                2,
                128,
                d.max_json_depth as u64,
            )? as usize,
            request_timeout_ms: ranged(
                "limits.request_timeout_ms",
                raw.limits.request_timeout_ms,
                100,
                3_600_000,
                d.request_timeout_ms,
            )?,
            queue_timeout_ms: ranged(
                "limits.queue_timeout_ms",
                raw.limits.queue_timeout_ms,
                1,
                3_600_000,
                d.queue_timeout_ms,
            )?,
            header_timeout_ms: ranged(
                "limits.header_timeout_ms",
                raw.limits.header_timeout_ms,
                100,
                3_600_000,
                d.header_timeout_ms,
            )?,
            body_idle_timeout_ms: ranged(
                "limits.body_idle_timeout_ms",
                raw.limits.body_idle_timeout_ms,
                100,
                3_600_000,
                d.body_idle_timeout_ms,
            )?,
            ..d
        };
        if let Some(list) = raw.server.listen {
            if list.is_empty() {
                return Err(invalid(
                    "server.listen",
                    "needs at least one address".into(),
                ));
            }
            c.listen = list
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    Listen::parse(s).map_err(|m| invalid(&format!("server.listen[{i}]"), m))
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(models) = raw.models.load {
            if models.is_empty() {
                return Err(invalid(
                    "models.load",
                    "needs at least one model package".into(),
                ));
            }
            if let Some(i) = models.iter().position(|m| m.trim().is_empty()) {
                return Err(invalid(&format!("models.load[{i}]"), "is empty".into()));
            }
            c.models = models;
        }
        c.models_dir = raw.models.dir;
        if let Some(b) = raw.memory.budget {
            let bytes = parse_size(&b).map_err(|e| invalid("memory.budget", e.to_string()))?;
            c.budget = Some((bytes, b));
        }
        if let Some(m) = raw.limits.max_body {
            let bytes = parse_size(&m).map_err(|e| invalid("limits.max_body", e.to_string()))?;
            if !(1024..=1 << 30).contains(&bytes) {
                return Err(invalid(
                    "limits.max_body",
                    format!("`{m}` must be between 1KiB and 1GiB"),
                ));
            }
            c.max_body_bytes = bytes as usize;
        }
        c.strict_rss = raw.memory.strict_rss.unwrap_or(false);
        if let Some(b) = raw.board {
            c.board = b;
        }
        if let Some(s) = raw.state_dir {
            c.state_dir = s;
        }
        if let Some(r) = raw.ota.root {
            c.ota_root = r;
        }
        c.ota_channel = raw.ota.channel;
        c.probation.requests = ranged(
            "ota.probation_requests",
            raw.ota.probation_requests,
            1,
            10_000_000,
            d_probation.requests,
        )?;
        c.ota_poll_interval_s = ranged(
            "ota.poll_interval_s",
            raw.ota.poll_interval_s,
            0,
            30 * 86_400,
            d_poll,
        )?;
        c.recent_frames = ranged(
            "ota.recent_frames",
            raw.ota.recent_frames,
            0,
            1000,
            d_frames,
        )? as usize;
        c.recent_frame_interval_ms = ranged(
            "ota.recent_frame_interval_ms",
            raw.ota.recent_frame_interval_ms,
            0,
            86_400_000,
            d_frame_ms,
        )?;
        c.probation.max_s = ranged(
            "ota.probation_max_s",
            raw.ota.probation_max_s,
            1,
            30 * 86_400,
            d_probation.max_s,
        )?;
        for (key, v, slot) in [
            (
                "ota.probation_max_error_rate",
                raw.ota.probation_max_error_rate,
                &mut c.probation.max_error_rate,
            ),
            (
                "ota.probation_min_agreement",
                raw.ota.probation_min_agreement,
                &mut c.probation.min_agreement,
            ),
            (
                "ota.probation_max_low_confidence_rise",
                raw.ota.probation_max_low_confidence_rise,
                &mut c.probation.max_low_confidence_rise,
            ),
        ] {
            if let Some(v) = v {
                if !(0.0..=1.0).contains(&v) {
                    return Err(invalid(key, format!("{v} must be within 0..=1")));
                }
                *slot = v;
            }
        }
        if let Some(m) = raw.ota.max_package {
            c.ota_max_package_bytes =
                parse_size(&m).map_err(|e| invalid("ota.max_package", e.to_string()))?;
        }
        c.spool = spool_settings(&raw.spool, &invalid, &ranged)?;
        c.upload = upload_settings(raw.upload, c.upload, &invalid, &ranged)?;
        c.low_confidence = low_confidence_settings(raw.low_confidence, &invalid, &ranged)?;
        Ok(c)
    }
}

type Invalid<'a> = &'a dyn Fn(&str, String) -> ConfigError;
type Ranged<'a> = &'a dyn Fn(&str, Option<i64>, i64, i64, u64) -> Result<u64, ConfigError>;

fn spool_settings(
    raw: &RawSpool,
    invalid: Invalid,
    ranged: Ranged,
) -> Result<Option<SpoolSettings>, ConfigError> {
    if raw.enabled == Some(false) {
        return Ok(None);
    }
    let d = SpoolSettings::default();
    let size = |key: &str, v: &Option<String>, lo: u64, default: u64| match v {
        None => Ok(default),
        Some(t) => {
            let n = parse_size(t).map_err(|e| invalid(key, e.to_string()))?;
            if n < lo {
                return Err(invalid(
                    key,
                    format!("`{t}` is under the least, {lo} bytes"),
                ));
            }
            Ok(n)
        }
    };
    let segment_bytes = size(
        "spool.segment_size",
        &raw.segment_size,
        4096,
        d.segment_bytes,
    )?;
    let max_bytes = size(
        "spool.max_size",
        &raw.max_size,
        2 * segment_bytes,
        d.max_bytes,
    )?;
    let box_id = match &raw.box_id {
        None => d.box_id,
        Some(id) if valid_box_id(id) => id.clone(),
        Some(id) => {
            return Err(invalid(
                "spool.box_id",
                format!("`{id}` must be 1 to 64 letters, digits, `.`, `_` or `-` (it is an MQTT topic level)"),
            ))
        }
    };
    Ok(Some(SpoolSettings {
        max_bytes,
        segment_bytes,
        commit_interval_ms: ranged(
            "spool.commit_interval_ms",
            raw.commit_interval_ms,
            0,
            1_000,
            d.commit_interval_ms,
        )?,
        ack_timeout_ms: ranged(
            "spool.ack_timeout_ms",
            raw.ack_timeout_ms,
            10,
            60_000,
            d.ack_timeout_ms,
        )?,
        box_id,
    }))
}

fn low_confidence_settings(
    raw: RawLowConfidence,
    invalid: Invalid,
    ranged: Ranged,
) -> Result<LowConfidenceSettings, ConfigError> {
    let d = LowConfidenceSettings::default();
    let keep_max_bytes = match &raw.keep_max_size {
        None => d.keep_max_bytes,
        Some(t) => {
            parse_size(t).map_err(|e| invalid("low_confidence.keep_max_size", e.to_string()))?
        }
    };
    let secondary = raw.secondary.unwrap_or_default();
    if let Some((k, v)) = secondary
        .iter()
        .find(|(k, v)| k.is_empty() || v.is_empty() || k == v)
    {
        return Err(invalid(
            &format!("low_confidence.secondary.{k}"),
            format!("`{v}` must name another served model"),
        ));
    }
    Ok(LowConfidenceSettings {
        keep_inputs: raw.keep_inputs.unwrap_or(d.keep_inputs),
        keep_max_bytes,
        keep_max_count: ranged(
            "low_confidence.keep_max_count",
            raw.keep_max_count,
            1,
            1_000_000,
            d.keep_max_count,
        )?,
        secondary,
    })
}

fn upload_settings(
    raw: RawUpload,
    d: beltbox_spool::UploadConfig,
    invalid: Invalid,
    ranged: Ranged,
) -> Result<beltbox_spool::UploadConfig, ConfigError> {
    let prefix = raw.topic_prefix.as_deref().unwrap_or("beltbox");
    let mqtt = raw
        .mqtt
        .map(|u| {
            beltbox_spool::mqtt::MqttTarget::parse(&u, prefix)
                .map_err(|e| invalid("upload.mqtt", e.to_string()))
        })
        .transpose()?;
    if let Some(u) = &raw.http {
        beltbox_spool::http_sink::HttpSink::new(u)
            .map_err(|e| invalid("upload.http", e.to_string()))?;
    }
    let ms = |key: &str, v: Option<i64>, lo: i64, hi: i64, default: Duration| {
        ranged(key, v, lo, hi, default.as_millis() as u64).map(Duration::from_millis)
    };
    let backoff_min = ms(
        "upload.backoff_min_ms",
        raw.backoff_min_ms,
        10,
        3_600_000,
        d.backoff_min,
    )?;
    let backoff_max = ms(
        "upload.backoff_max_ms",
        raw.backoff_max_ms,
        10,
        86_400_000,
        d.backoff_max,
    )?;
    if backoff_max < backoff_min {
        return Err(invalid(
            "upload.backoff_max_ms",
            "must not be under upload.backoff_min_ms".into(),
        ));
    }
    Ok(beltbox_spool::UploadConfig {
        mqtt,
        http: raw.http,
        batch: ranged("upload.batch", raw.batch, 1, 10_000, d.batch as u64)? as usize,
        backoff_min,
        backoff_max,
        timeout: ms(
            "upload.timeout_ms",
            raw.timeout_ms,
            100,
            3_600_000,
            d.timeout,
        )?,
        ..d
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::from_toml(text, "t.toml").unwrap_err().to_string()
    }

    #[test]
    fn empty_config_is_the_default() {
        assert_eq!(Config::from_toml("", "t").unwrap(), Config::default());
    }

    #[test]
    fn full_config() {
        let c = Config::from_toml(
            r#"
state_dir = "/tmp/s"
board = "rpi4"
[server]
listen = ["127.0.0.1:9000", "unix:/run/beltbox/beltbox.sock"]
workers = 2
queue_depth = 4
max_connections = 8
[models]
load = ["a", "/x/b"]
dir = "/usr/share/beltbox/models"
threads = 2
[memory]
budget = "1536MiB"
[limits]
max_body = "1MiB"
max_tensor_elements = 1000
max_json_depth = 10
request_timeout_ms = 5000
queue_timeout_ms = 100
"#,
            "t",
        )
        .unwrap();
        assert_eq!(
            c.listen[1],
            Listen::Unix("/run/beltbox/beltbox.sock".into())
        );
        assert_eq!(
            (c.workers, c.queue_depth, c.max_connections, c.threads),
            (2, 4, 8, 2)
        );
        assert_eq!(c.budget, Some((1536 << 20, "1536MiB".into())));
        assert_eq!(c.max_body_bytes, 1 << 20);
        assert_eq!(c.models, vec!["a", "/x/b"]);
    }

    #[test]
    fn the_installed_default_config_is_valid() {
        let c = Config::from_toml(
            include_str!("../../cross/beltbox.toml"),
            "cross/beltbox.toml",
        )
        .unwrap();
        assert_eq!(c.models, vec![DEFAULT_MODEL]);
        assert!(c
            .listen
            .contains(&Listen::Tcp(DEFAULT_LISTEN.parse().unwrap())));
        // The file spells out the built-in limits (its comments explain them).
        let d = Config::default();
        let limits = |c: &Config| {
            (
                c.max_connections,
                c.max_connections_per_peer,
                c.max_body_bytes,
                c.max_tensor_elements,
                c.request_timeout_ms,
                c.header_timeout_ms,
                c.body_idle_timeout_ms,
            )
        };
        assert_eq!(limits(&c), limits(&d));
        // A 1920x1080 RGB camera frame fits them as binary UINT8 (plus its JSON header).
        let frame = 1920 * 1080 * 3;
        assert!(frame <= c.max_tensor_elements);
        assert!(frame + 4096 <= c.max_body_bytes as u64);
    }

    #[test]
    fn errors_name_the_key() {
        assert!(err("[server]\nworkers = 0").contains("`server.workers`: 0 is out of range"));
        assert!(
            err("[server]\nlisten = [\"127.0.0.1:80\", \"nope\"]").contains("`server.listen[1]`")
        );
        assert!(err("[server]\nlisten = [\"unix:rel.sock\"]").contains("absolute path"));
        assert!(err("[memory]\nbudget = \"12XB\"").contains("`memory.budget`"));
        assert!(err("[limits]\nmax_body = \"1\"").contains("`limits.max_body`"));
        assert!(err("[models]\nload = []").contains("`models.load`"));
        assert!(err("[server]\nlisen = []").contains("unknown field `lisen`"));
        assert!(err("bogus = 1").contains("unknown field `bogus`"));
        assert!(err("[server]\nworkers = \"two\"").contains("invalid type"));
    }

    #[test]
    fn spool_and_upload_keys_are_checked() {
        let c = Config::from_toml(
            "[spool]\nmax_size = \"64MiB\"\nbox_id = \"dock-3.belt_1\"\n[upload]\nmqtt = \"mqtt://10.0.0.5\"\nhttp = \"http://10.0.0.5:8000/ingest\"\nbatch = 50\n",
            "t",
        )
        .unwrap();
        let s = c.spool.unwrap();
        assert_eq!(
            (s.max_bytes, s.box_id.as_str()),
            (64 << 20, "dock-3.belt_1")
        );
        assert_eq!(c.upload.mqtt.unwrap().port, 1883);
        assert_eq!(c.upload.batch, 50);
        assert!(Config::from_toml("[spool]\nenabled = false", "t")
            .unwrap()
            .spool
            .is_none());
        for (text, says) in [
            ("[spool]\nbox_id = \"a/b\"", "`spool.box_id`"),
            ("[spool]\nmax_size = \"1KiB\"", "`spool.max_size`"),
            (
                "[spool]\ncommit_interval_ms = 5000",
                "`spool.commit_interval_ms`",
            ),
            ("[upload]\nmqtt = \"http://broker\"", "`upload.mqtt`"),
            ("[upload]\nmqtt = \"broker:1883\"", "`upload.mqtt`"),
            ("[upload]\nhttp = \"10.0.0.5/ingest\"", "`upload.http`"),
            (
                "[upload]\nbackoff_min_ms = 900\nbackoff_max_ms = 800",
                "`upload.backoff_max_ms`",
            ),
            ("[upload]\nbroker = \"x\"", "unknown field `broker`"),
            ("[spool]\nsize = 1", "unknown field `size`"),
            (
                "[low_confidence]\nkeep_max_count = 0",
                "`low_confidence.keep_max_count`",
            ),
            (
                "[low_confidence]\nkeep_max_size = \"lots\"",
                "`low_confidence.keep_max_size`",
            ),
            (
                "[low_confidence]\nsecondary = { a = \"a\" }",
                "`low_confidence.secondary.a`",
            ),
        ] {
            assert!(err(text).contains(says), "{text}: {}", err(text));
        }
    }
}
