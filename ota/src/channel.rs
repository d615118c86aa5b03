//! A channel is a TUF repository (The Update Framework) of model package archives,
//! verified on the box with awslabs' `tough`: root, timestamp, snapshot and targets
//! metadata with threshold signatures, root rotation, rollback and mix-and-match
//! protection, and each target's length and sha256 in signed metadata. The same
//! verification runs whether the channel is a static HTTP(S) server or CDN (the fleet) or
//! a directory such as a USB stick (a technician, offline).
//!
//! A channel's layout is TUF's: `BASE/metadata/` (`N.root.json`, `timestamp.json`,
//! `N.snapshot.json`, `N.targets.json`, consistent snapshots) and `BASE/targets/`
//! (`SHA256.NAME-VERSION.tar.gz`). Each package target carries, in its signed custom
//! metadata under `beltbox`, the model name and version it holds, when it was published
//! and optionally its rollout waves ([`TargetInfo`]).
//!
//! What beltbox adds around tough, and why:
//! - **The trusted state lives in `state_dir/ota/tuf`** (tough's datastore): the newest
//!   root, timestamp and snapshot the box has verified, so an older snapshot or timestamp
//!   served later (a rollback attack) is refused, across restarts, from any source. The
//!   load starts from the newer of that root and the shipped one (`/etc/beltbox/ota/root.json`).
//! - **Expiry against the time floor** ([`crate::clock`]): tough refuses to load when the
//!   system clock is earlier than the last it saw, which on a box without an RTC after a
//!   reboot means every update refused. So its datastore's clock file is removed before
//!   each load, tough loads with expiry unenforced, and beltbox checks every role's expiry
//!   itself against the later of the clock and the floor. (Upstream could take the time
//!   from the caller; until then this goes through tough's public API only.)
//! - **Metadata files are synced** after tough writes them (it does not fsync).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tough::schema::{Root, Signed};
use tough::{
    DefaultTransport, ExpirationEnforcement, HttpTransportBuilder, Repository, RepositoryLoader,
    TargetName,
};
use url::Url;

use crate::clock::{ClockError, Floor, Now};
pub(crate) use crate::download::hex;
use crate::download::{self, Part, Stop};
use crate::durable::{self, DurableError};

/// Resumes of one download within one pull, each only after the last made progress.
pub const RESUMES: u32 = 3;

/// Key of beltbox's entry in a target's custom metadata.
pub const CUSTOM_KEY: &str = "beltbox";

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("channel `{0}`: not a directory or an http(s):// URL")]
    Source(String),
    #[error("trusted root {}: {problem}", path.display())]
    TrustedRoot { path: PathBuf, problem: String },
    #[error("channel {source_}: refused: {what}")]
    Refused { source_: String, what: String },
    #[error("channel {source_}: {role} metadata expired at {expires} (checked against {now}, from the {now_source}); pass --allow-expired to override (logged)")]
    Expired {
        source_: String,
        role: String,
        expires: String,
        now: String,
        now_source: String,
    },
    #[error("target `{target}`: custom metadata `{CUSTOM_KEY}` is malformed: {problem}")]
    Custom { target: String, problem: String },
    #[error("target `{target}` declares {length} bytes, over the {limit}-byte package cap: refused before download")]
    TooLarge {
        target: String,
        length: u64,
        limit: u64,
    },
    #[error("target `{target}`: download refused: {what}")]
    Fetch { target: String, what: String },
    #[error("cannot start the channel's I/O runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Io(#[from] DurableError),
    #[error(transparent)]
    Clock(#[from] ClockError),
}

/// Where a channel is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Dir(PathBuf),
    Url(Url),
}

impl Source {
    pub fn parse(s: &str) -> Result<Source, ChannelError> {
        if s.starts_with("http://") || s.starts_with("https://") {
            let with_slash = if s.ends_with('/') {
                s.to_string()
            } else {
                format!("{s}/")
            };
            Url::parse(&with_slash)
                .map(Source::Url)
                .map_err(|_| ChannelError::Source(s.into()))
        } else if s.contains("://") {
            Err(ChannelError::Source(s.into()))
        } else {
            Ok(Source::Dir(PathBuf::from(s)))
        }
    }

    /// (metadata base, targets base)
    fn urls(&self) -> Result<(Url, Url), ChannelError> {
        let bad = || ChannelError::Source(self.to_string());
        match self {
            Source::Dir(d) => {
                let abs = fs::canonicalize(d).map_err(|_| bad())?;
                let m = Url::from_directory_path(abs.join("metadata")).map_err(|_| bad())?;
                let t = Url::from_directory_path(abs.join("targets")).map_err(|_| bad())?;
                Ok((m, t))
            }
            Source::Url(u) => Ok((
                u.join("metadata/").map_err(|_| bad())?,
                u.join("targets/").map_err(|_| bad())?,
            )),
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Dir(d) => write!(f, "{}", d.display()),
            Source::Url(u) => write!(f, "{u}"),
        }
    }
}

/// One rollout wave: `share_ppm` parts per million of the fleet (by each box's stable
/// seed) may install from `opens_unix_s` on. An integer, because TUF signs canonical JSON,
/// which has no floating-point numbers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wave {
    pub share_ppm: u32,
    pub opens_unix_s: i64,
}

/// beltbox's signed custom metadata of a package target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetInfo {
    pub model: String,
    pub version: String,
    pub published_unix_s: i64,
    /// No waves: every box at once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waves: Vec<Wave>,
}

impl TargetInfo {
    /// Whether a box with `seed` (in [0, 1)) may install at `now`: some wave that has
    /// opened covers it. Waves are cumulative shares (1 %, 10 %, 100 %), as Bottlerocket's.
    pub fn wave_open(&self, seed: f64, now_unix_s: i64) -> bool {
        self.waves.is_empty()
            || self
                .waves
                .iter()
                .any(|w| w.opens_unix_s <= now_unix_s && seed * 1e6 < f64::from(w.share_ppm))
    }
}

/// A package the channel offers.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    pub target: String,
    pub info: TargetInfo,
    pub length: u64,
    pub sha256: String,
}

/// Where the box keeps its trust.
#[derive(Debug, Clone)]
pub struct Trust {
    /// The root shipped with the image (`/etc/beltbox/ota/root.json`).
    pub shipped_root: PathBuf,
    /// tough's datastore: the newest verified root, timestamp, snapshot.
    pub tuf_dir: PathBuf,
    pub floor: Floor,
    /// Partial downloads, kept across restarts (`crate::download`).
    pub downloads: PathBuf,
}

/// A verified channel.
pub struct Channel {
    rt: tokio::runtime::Runtime,
    repo: Repository,
    /// Where targets are served from (resumes fetch from it directly).
    targets_base: Url,
    downloads: PathBuf,
    pub source: Source,
    pub offers: Vec<Offer>,
    /// The time expiry was checked against.
    pub now: Now,
    /// Set when expired metadata was accepted on the technician's override: which role.
    pub expired_override: Option<String>,
}

fn refused(source: &Source, e: impl std::fmt::Display) -> ChannelError {
    ChannelError::Refused {
        source_: source.to_string(),
        what: e.to_string(),
    }
}

fn read_root(path: &Path) -> Result<Option<(Vec<u8>, u64)>, ChannelError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(durable::at("read", path)(e).into()),
    };
    let root: Signed<Root> =
        serde_json::from_slice(&bytes).map_err(|e| ChannelError::TrustedRoot {
            path: path.to_path_buf(),
            problem: format!("not TUF root metadata: {e}"),
        })?;
    Ok(Some((bytes, root.signed.version.get())))
}

fn iso(unix_s: i64) -> String {
    jiff::Timestamp::from_second(unix_s)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| format!("{unix_s} s"))
}

impl Channel {
    /// Fetches and verifies the channel's metadata (nothing of the targets yet), checks
    /// expiry against the time floor, then raises the floor to the newest publication.
    pub fn open(
        source: &Source,
        trust: &Trust,
        allow_expired: bool,
    ) -> Result<Channel, ChannelError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ChannelError::Runtime)?;
        let shipped = read_root(&trust.shipped_root)?.ok_or_else(|| ChannelError::TrustedRoot {
            path: trust.shipped_root.clone(),
            problem: "missing: the box has no root of trust (install one from the channel's publisher, docs/ota.md)".into(),
        })?;
        durable::create_dir_durable(&trust.tuf_dir)?;
        // A trusted root of a later version (rotated) may sit in the datastore; a corrupt
        // one (it is not fsynced by tough) falls back to the shipped root.
        let stored = read_root(&trust.tuf_dir.join("root.json")).ok().flatten();
        let root = match stored {
            Some((b, v)) if v > shipped.1 => b,
            _ => shipped.0,
        };
        // tough compares the system clock with the last it saw and refuses when it went
        // back; beltbox has its own floor (module docs).
        let clock_file = trust.tuf_dir.join("latest_known_time.json");
        match fs::remove_file(&clock_file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(durable::at("remove", &clock_file)(e).into()),
        }
        let (meta, targets) = source.urls()?;
        let targets_for_resume = targets.clone();
        let http = HttpTransportBuilder::new()
            .timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(10))
            .tries(4)
            .initial_backoff(Duration::from_millis(200))
            .max_backoff(Duration::from_secs(5));
        let loader = RepositoryLoader::new(&root, meta, targets)
            .transport(DefaultTransport::new_with_http_settings(http))
            .datastore(trust.tuf_dir.clone())
            .expiration_enforcement(ExpirationEnforcement::Unsafe);
        let loaded = rt.block_on(loader.load());
        // Whatever tough wrote (even on refusal) reaches the disk.
        durable::sync_tree(&trust.tuf_dir)?;
        let repo = loaded.map_err(|e| refused(source, e))?;

        let now = trust.floor.now()?;
        let roles = [
            ("root", repo.root().signed.expires),
            ("timestamp", repo.timestamp().signed.expires),
            ("snapshot", repo.snapshot().signed.expires),
            ("targets", repo.targets().signed.expires),
        ];
        let mut expired_override = None;
        if let Some((role, exp)) = roles.iter().min_by_key(|r| r.1) {
            if exp.as_second() <= now.unix_s {
                if !allow_expired {
                    return Err(ChannelError::Expired {
                        source_: source.to_string(),
                        role: role.to_string(),
                        expires: exp.to_string(),
                        now: iso(now.unix_s),
                        now_source: match now.source {
                            crate::clock::TimeSource::SystemClock => "system clock".into(),
                            crate::clock::TimeSource::Floor => {
                                "time floor (the clock is behind it)".into()
                            }
                        },
                    });
                }
                log::warn!(
                    "channel {source}: {role} metadata expired at {exp}; accepted on the technician's --allow-expired"
                );
                expired_override = Some(role.to_string());
            }
        }

        let mut offers = Vec::new();
        for (name, t) in repo.all_targets() {
            let Some(v) = t.custom.get(CUSTOM_KEY) else {
                continue;
            };
            let info: TargetInfo =
                serde_json::from_value(v.clone()).map_err(|e| ChannelError::Custom {
                    target: name.raw().into(),
                    problem: e.to_string(),
                })?;
            offers.push(Offer {
                target: name.raw().to_string(),
                info,
                length: t.length,
                sha256: hex(&t.hashes.sha256),
            });
        }
        offers.sort_by(|a, b| a.target.cmp(&b.target));
        if expired_override.is_none() {
            if let Some(newest) = offers.iter().map(|o| o.info.published_unix_s).max() {
                trust
                    .floor
                    .raise(newest, &format!("published time in {source}"))?;
            }
        }
        Ok(Channel {
            rt,
            repo,
            targets_base: targets_for_resume,
            downloads: trust.downloads.clone(),
            source: source.clone(),
            offers,
            now,
            expired_override,
        })
    }

    /// Downloads `offer` into `dest` (created; synced), at most its signed length and at
    /// most `cap` bytes, its sha256 checked against the signed one. A download cut short is
    /// resumed from its partial (`crate::download`): at once, up to [`RESUMES`] times while
    /// it makes progress, and by the next pull after that or after a restart.
    pub fn fetch(&self, offer: &Offer, dest: &Path, cap: u64) -> Result<(), ChannelError> {
        if offer.length > cap {
            return Err(ChannelError::TooLarge {
                target: offer.target.clone(),
                length: offer.length,
                limit: cap,
            });
        }
        let fetch_err = |what: String| ChannelError::Fetch {
            target: offer.target.clone(),
            what,
        };
        let part = Part::open(&self.downloads, &offer.sha256, offer.length)?;
        let mut resumes = 0;
        loop {
            let have = part.have()?;
            let step = if have == 0 {
                self.whole(offer, &part)
            } else {
                // A warning: a download was cut before (a technician reading the log
                // after a flaky night wants to see it).
                log::warn!(
                    "target {}: resuming its download at byte {have} of {}",
                    offer.target,
                    offer.length
                );
                self.rest(offer, &part, have)
            }
            .and_then(|()| part.verify());
            match step {
                Ok(()) => break,
                Err(Stop::Io(e)) => return Err(e.into()),
                Err(Stop::Bad(what)) => {
                    part.discard();
                    return Err(fetch_err(what));
                }
                Err(Stop::Cut(what)) => {
                    let now = part.have()?;
                    if now >= offer.length {
                        // All the bytes arrived and tough still refused them (a hash
                        // mismatch): nothing to resume.
                        part.discard();
                        return Err(fetch_err(what));
                    }
                    if now > have && resumes < RESUMES {
                        resumes += 1;
                        log::warn!("target {}: download cut ({what}); resuming", offer.target);
                        continue;
                    }
                    return Err(fetch_err(format!(
                        "{what}; {now} of {} bytes kept for the next pull to resume",
                        offer.length
                    )));
                }
            }
        }
        durable::rename_durable(&part.path, dest)?;
        Ok(())
    }

    /// The whole target through tough (which verifies it as it streams).
    fn whole(&self, offer: &Offer, part: &Part) -> Result<(), Stop> {
        let name = TargetName::new(offer.target.clone()).map_err(|e| Stop::Bad(e.to_string()))?;
        self.rt.block_on(async {
            let stream = self
                .repo
                .read_target(&name)
                .await
                .map_err(|e| Stop::Cut(e.to_string()))?
                .ok_or_else(|| Stop::Bad("not in the signed targets".into()))?;
            part.append_stream(0, stream).await
        })
    }

    /// The rest of the target from byte `from`, straight from the channel (tough has no
    /// start offset); [`Part::verify`] checks the whole afterwards.
    fn rest(&self, offer: &Offer, part: &Part, from: u64) -> Result<(), Stop> {
        let file = if self.repo.root().signed.consistent_snapshot {
            format!("{}.{}", offer.sha256, offer.target)
        } else {
            offer.target.clone()
        };
        let url = self
            .targets_base
            .join(&file)
            .map_err(|e| Stop::Bad(format!("target URL: {e}")))?;
        match &self.source {
            Source::Dir(_) => {
                let path = url
                    .to_file_path()
                    .map_err(|()| Stop::Bad(format!("{url}: not a file")))?;
                part.append_file(&path, from)
            }
            Source::Url(_) => self.rt.block_on(async {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(60))
                    .connect_timeout(Duration::from_secs(10))
                    .build()
                    .map_err(|e| Stop::Cut(e.to_string()))?;
                let (resp, ranged) = download::http_rest(&client, &url, from).await?;
                let start = if ranged {
                    from
                } else {
                    // The server sent the whole file: start the partial over.
                    part.discard();
                    0
                };
                part.append_stream(start, resp.bytes_stream()).await
            }),
        }
    }

    /// The newest offer of `model`, if any.
    pub fn newest(&self, model: &str) -> Option<&Offer> {
        self.offers
            .iter()
            .filter(|o| o.info.model == model)
            .max_by(|a, b| cmp_versions(&a.info.version, &b.info.version))
    }
}

/// Orders MAJOR.MINOR.PATCH versions numerically (anything else sorts lowest, by text).
pub fn cmp_versions(a: &str, b: &str) -> std::cmp::Ordering {
    let key = |s: &str| -> Option<(u64, u64, u64)> {
        let mut it = s.split('.').map(|p| p.parse::<u64>().ok());
        let r = (it.next()??, it.next()??, it.next()??);
        it.next().is_none().then_some(r)
    };
    match (key(a), key(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => std::cmp::Ordering::Greater,
        (None, Some(_)) => std::cmp::Ordering::Less,
        (None, None) => a.cmp(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_numerically() {
        use std::cmp::Ordering::*;
        assert_eq!(cmp_versions("1.10.0", "1.9.0"), Greater);
        assert_eq!(cmp_versions("1.0.0", "1.0.0"), Equal);
        assert_eq!(cmp_versions("2.0.0", "10.0.0"), Less);
    }

    #[test]
    fn waves_open_by_seed_and_time() {
        let t = TargetInfo {
            model: "m".into(),
            version: "1.0.0".into(),
            published_unix_s: 0,
            waves: vec![
                Wave {
                    share_ppm: 100_000,
                    opens_unix_s: 100,
                },
                Wave {
                    share_ppm: 1_000_000,
                    opens_unix_s: 200,
                },
            ],
        };
        assert!(!t.wave_open(0.05, 99));
        assert!(t.wave_open(0.05, 100));
        assert!(!t.wave_open(0.5, 150));
        assert!(t.wave_open(0.5, 200));
    }

    #[test]
    fn sources_parse() {
        assert!(matches!(
            Source::parse("/media/usb/channel"),
            Ok(Source::Dir(_))
        ));
        match Source::parse("http://10.0.0.1:8000/stable").unwrap() {
            Source::Url(u) => assert_eq!(u.as_str(), "http://10.0.0.1:8000/stable/"),
            s => panic!("{s:?}"),
        }
        assert!(Source::parse("ftp://x/y").is_err());
    }
}
