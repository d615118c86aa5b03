//! `beltbox.toml`: the service configuration (`/etc/beltbox/beltbox.toml` on a device).
//!
//! Every key is optional (defaults serve the bundled default model on 127.0.0.1:8080);
//! unknown keys are errors, and every error names the key (`server.listen[1]: ...`). The
//! installed default with comments is `cross/beltbox.toml`; the reference is docs/service.md.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

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
            state_dir: PathBuf::from("/var/lib/beltbox"),
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
        Ok(c)
    }
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
}
