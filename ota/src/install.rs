//! The install pipeline: a package from a channel (verified by TUF), or from a local
//! archive or directory (a technician's `--unsigned`), into the store and activated.
//!
//! ```text
//! lock the store ─► (channel) size cap ─► download into staging, length and sha256 checked
//!   ─► unpack (no traversal, links, devices; capped) ─► manifest matches the signed target
//!   ─► not bad, not installed, not older (unless --downgrade)
//!   ─► qualify (RAM alongside the serving model, golden, top-1, p95) ─► card written
//!   ─► move into versions/ ─► state: activate (first version: active; else candidate on
//!      probation) ─► garbage collection
//! ```
//!
//! Every refusal leaves the store and the serving model as they were (a failed
//! qualification from a channel also marks the version bad, so the poller never fetches it
//! again). A crash anywhere leaves staging (swept by the next open), or a version directory
//! the state does not name (collected), or the new state: never a half-written version
//! named by the state. The kill points are in [`crate::kill::POINTS`].

use std::fs;
use std::path::{Path, PathBuf};

use beltbox_core::memory::Plan;
use beltbox_core::model::package::Package;

use crate::archive::{self, ArchiveError, Limits};
use crate::channel::{self, Channel, ChannelError, Offer, Source, Trust};
use crate::clock::{self, Floor};
use crate::durable::{self, DurableError};
use crate::kill;
use crate::qualify::{self, Card, Context, Shadow};
use crate::store::{ModelState, State, Store, StoreError, TransitionError};

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error(transparent)]
    Io(#[from] DurableError),
    #[error("package: {0}")]
    Package(String),
    #[error("target `{target}` is signed as {signed} but its manifest says {manifest}: refused")]
    Mismatch {
        target: String,
        signed: String,
        manifest: String,
    },
    #[error("{model} {version} is older than or the same as {serving}, which serves now: refused (anti-rollback); a technician may pass --downgrade")]
    Downgrade {
        model: String,
        version: String,
        serving: String,
    },
    #[error("{model} {version} is already installed ({role})")]
    Installed {
        model: String,
        version: String,
        role: &'static str,
    },
    #[error("{model} {version} was marked bad ({why}); it is never installed again")]
    Bad {
        model: String,
        version: String,
        why: String,
    },
    #[error("{model} {version}: {why}; evidence: {}", card.display())]
    Qualification {
        model: String,
        version: String,
        why: String,
        card: PathBuf,
    },
    #[error("`{0}` is neither a package archive (.tar.gz, .tar) nor a package directory (manifest.toml) nor a channel directory (metadata/)")]
    Unknown(PathBuf),
    #[error("channel {source_} offers no package of {model}")]
    NoOffer { source_: String, model: String },
}

impl InstallError {
    /// 1: the package or channel failed a check; 2: usage or input; 3: over budget.
    pub fn exit_code(&self) -> u8 {
        match self {
            InstallError::Qualification { why, .. } if why.contains(": ram:") => 3,
            InstallError::Unknown(_) | InstallError::NoOffer { .. } => 2,
            InstallError::Io(_) | InstallError::Store(StoreError::Io(_)) => 2,
            _ => 1,
        }
    }
}

/// Where the box keeps OTA state.
#[derive(Debug, Clone)]
pub struct Paths {
    /// `state_dir/ota`.
    pub ota_dir: PathBuf,
    /// The shipped root of trust.
    pub shipped_root: PathBuf,
}

impl Paths {
    pub fn new(state_dir: &Path, shipped_root: &Path) -> Paths {
        Paths {
            ota_dir: state_dir.join("ota"),
            shipped_root: shipped_root.to_path_buf(),
        }
    }

    pub fn trust(&self) -> Trust {
        Trust {
            shipped_root: self.shipped_root.clone(),
            tuf_dir: self.ota_dir.join("tuf"),
            floor: self.floor(),
            downloads: self.ota_dir.join("downloads"),
        }
    }

    pub fn floor(&self) -> Floor {
        Floor::at(&self.ota_dir.join("time-floor.json"))
    }
}

/// How to install.
#[derive(Debug, Clone)]
pub struct Options {
    pub qualify: Context,
    /// Technician: allow a version not newer than the serving one.
    pub downgrade: bool,
    /// Technician: accept expired channel metadata (logged, recorded).
    pub allow_expired: bool,
    /// Largest package archive fetched or unpacked.
    pub max_package_bytes: u64,
    /// Where the service finds bundled packages (`models.dir`), for the RAM check against
    /// a bundled model that serves while the store has no version of it.
    pub models_dir: Option<PathBuf>,
    /// This box's id for rollout waves (`/etc/machine-id`; [`seed`]).
    pub machine_id: String,
}

/// What an install did.
#[derive(Debug, Clone)]
pub struct Installed {
    pub model: String,
    pub version: String,
    pub card: Card,
    /// Active at once (the model's first version) or on probation.
    pub on_probation: bool,
    pub dir: PathBuf,
    /// Versions garbage-collected and the bytes freed.
    pub collected: (Vec<String>, u64),
}

/// Outcome of offering one model from a channel.
#[derive(Debug)]
pub enum Pulled {
    Installed(Box<Installed>),
    UpToDate { model: String, version: String },
    WaveNotOpen { model: String, version: String },
    SkippedBad { model: String, version: String },
}

/// Installs the newest version of each of `models` (every model the channel offers when
/// empty) from a channel.
pub fn pull(
    paths: &Paths,
    source: &Source,
    models: &[String],
    opts: &Options,
) -> Result<Vec<Result<Pulled, InstallError>>, InstallError> {
    let channel = Channel::open(source, &paths.trust(), opts.allow_expired)?;
    let mut names: Vec<String> = if models.is_empty() {
        let mut n: Vec<String> = channel
            .offers
            .iter()
            .map(|o| o.info.model.clone())
            .collect();
        n.dedup();
        n
    } else {
        models.to_vec()
    };
    names.sort();
    names.dedup();
    let mut out = Vec::new();
    for model in names {
        let Some(offer) = channel.newest(&model).cloned() else {
            out.push(Err(InstallError::NoOffer {
                source_: source.to_string(),
                model,
            }));
            continue;
        };
        out.push(pull_one(paths, &channel, &offer, opts));
    }
    Ok(out)
}

fn pull_one(
    paths: &Paths,
    channel: &Channel,
    offer: &Offer,
    opts: &Options,
) -> Result<Pulled, InstallError> {
    let (model, version) = (offer.info.model.clone(), offer.info.version.clone());
    {
        let state = Store::reader(&paths.ota_dir).load()?;
        let ms = state.models.get(&model).cloned().unwrap_or_default();
        if ms.bad(&version).is_some() {
            return Ok(Pulled::SkippedBad { model, version });
        }
        if let Some(serving) = ms.serving() {
            if channel::cmp_versions(&version, serving) != std::cmp::Ordering::Greater
                && !opts.downgrade
            {
                return Ok(Pulled::UpToDate {
                    model,
                    version: serving.to_string(),
                });
            }
        }
    }
    if !offer
        .info
        .wave_open(seed(&opts.machine_id, &model), channel.now.unix_s)
    {
        return Ok(Pulled::WaveNotOpen { model, version });
    }
    let (store, _) = Store::open(&paths.ota_dir)?;
    kill::point("open");
    let staged = store
        .staging_dir()
        .join(format!("{model}@{version}.{}", std::process::id()));
    let archive_path = staged.with_extension("tar.gz");
    let result = (|| {
        channel.fetch(offer, &archive_path, opts.max_package_bytes)?;
        kill::point("verify");
        durable::create_dir_durable(&staged)?;
        let f = fs::File::open(&archive_path).map_err(durable::at("open", &archive_path))?;
        archive::unpack(f, &staged, limits(opts))?;
        fs::remove_file(&archive_path).map_err(durable::at("remove", &archive_path))?;
        kill::point("unpack");
        let origin = format!("{} from {}", offer.target, channel.source);
        let mut note = String::new();
        if let Some(role) = &channel.expired_override {
            note = format!(" (expired {role} metadata accepted by --allow-expired)");
        }
        install_staged(
            &store,
            &staged,
            Some((&offer.target, &model, &version)),
            &format!("{origin}{note}"),
            true,
            opts,
        )
    })();
    discard(&staged);
    discard(&archive_path);
    result.map(|i| Pulled::Installed(Box::new(i)))
}

/// Installs a local package archive or directory, unsigned (a technician's choice).
pub fn install_local(
    paths: &Paths,
    path: &Path,
    opts: &Options,
) -> Result<Installed, InstallError> {
    let (store, _) = Store::open(&paths.ota_dir)?;
    kill::point("open");
    let staged = store
        .staging_dir()
        .join(format!("local.{}", std::process::id()));
    durable::create_dir_durable(&staged)?;
    let result = (|| {
        if path.is_dir() {
            if !path.join("manifest.toml").is_file() {
                return Err(InstallError::Unknown(path.to_path_buf()));
            }
            // Through the same checks as an archive: pack it, unpack it.
            let bytes = archive::pack(path)?;
            archive::unpack(&bytes[..], &staged, limits(opts))?;
        } else {
            let f = fs::File::open(path).map_err(durable::at("open", path))?;
            let len = f.metadata().map_err(durable::at("stat", path))?.len();
            if len > opts.max_package_bytes {
                return Err(ArchiveError::TooLarge {
                    path: path.display().to_string(),
                    limit: opts.max_package_bytes,
                }
                .into());
            }
            archive::unpack(f, &staged, limits(opts))?;
        }
        kill::point("unpack");
        install_staged(
            &store,
            &staged,
            None,
            &format!("{} (unsigned, local)", path.display()),
            false,
            opts,
        )
    })();
    discard(&staged);
    result
}

fn limits(opts: &Options) -> Limits {
    Limits {
        max_bytes: opts.max_package_bytes.saturating_mul(4),
        max_entries: 10_000,
    }
}

fn discard(p: &Path) {
    let r = if p.is_dir() {
        fs::remove_dir_all(p)
    } else {
        fs::remove_file(p)
    };
    if let Err(e) = r {
        if e.kind() != std::io::ErrorKind::NotFound {
            log::warn!(
                "could not remove {}: {e} (the next install sweeps it)",
                p.display()
            );
        }
    }
}

/// Checks, qualifies and installs the package unpacked at `staged`.
fn install_staged(
    store: &Store,
    staged: &Path,
    signed: Option<(&str, &str, &str)>,
    origin: &str,
    mark_bad_on_failure: bool,
    opts: &Options,
) -> Result<Installed, InstallError> {
    let package = Package::open(staged).map_err(|e| InstallError::Package(e.to_string()))?;
    let model = package.manifest.name.clone();
    let version = package.manifest.version.to_string();
    drop(package);
    if let Some((target, m, v)) = signed {
        if m != model || v != version {
            return Err(InstallError::Mismatch {
                target: target.into(),
                signed: format!("{m} {v}"),
                manifest: format!("{model} {version}"),
            });
        }
    }
    let mut state = store.load()?;
    let ms = state.models.get(&model).cloned().unwrap_or_default();
    refuse_early(&ms, &model, &version, opts.downgrade)?;
    // The transition must be possible before the work: a candidate on probation blocks it.
    ms.clone().activate(&model, &version, 0)?;

    let mut ctx = opts.qualify.clone();
    if ctx.alongside.is_none() {
        if let Some((dir, plan)) =
            serving_plan(store, &ms, &model, &ctx, opts.models_dir.as_deref())
        {
            ctx.alongside = plan;
            if ctx.shadow.is_none() {
                ctx.shadow = Some(Shadow {
                    serving: dir,
                    frames: store.root().join("recent").join(&model),
                });
            }
        }
    }
    let now = clock::system_unix_ms();
    let (card, _model) = qualify::qualify(staged, &ctx, now);
    kill::point("qualify");
    let card_path = store.card_path(&model, &version)?;
    let bytes = serde_json::to_vec_pretty(&card).unwrap_or_default();
    durable::write_atomic(&card_path, &bytes)?;
    kill::point("card");
    if let Some(why) = card.why() {
        if mark_bad_on_failure {
            let entry = state.models.entry(model.clone()).or_default();
            entry.mark_bad(&version, &why, now);
            store.save(&state)?;
        }
        return Err(InstallError::Qualification {
            model,
            version,
            why,
            card: card_path,
        });
    }
    let dir = store.adopt(staged, &model, &version)?;
    kill::point("adopt");
    let entry = state.models.entry(model.clone()).or_default();
    entry.activate(&model, &version, now)?;
    entry.note(now, format!("installed {version} from {origin}"));
    let on_probation = entry.candidate.is_some();
    store.save(&state)?;
    kill::point("activate");
    let collected = store.collect_garbage(&state)?;
    kill::point("gc");
    Ok(Installed {
        model,
        version,
        card,
        on_probation,
        dir,
        collected,
    })
}

fn refuse_early(
    ms: &ModelState,
    model: &str,
    version: &str,
    downgrade: bool,
) -> Result<(), InstallError> {
    if let Some(b) = ms.bad(version) {
        return Err(InstallError::Bad {
            model: model.into(),
            version: version.into(),
            why: b.why.clone(),
        });
    }
    for (role, v) in [
        ("active", ms.active.as_deref()),
        (
            "on probation",
            ms.candidate.as_ref().map(|c| c.version.as_str()),
        ),
    ] {
        if v == Some(version) {
            return Err(InstallError::Installed {
                model: model.into(),
                version: version.into(),
                role,
            });
        }
    }
    if let Some(serving) = ms.serving() {
        if channel::cmp_versions(version, serving) != std::cmp::Ordering::Greater && !downgrade {
            return Err(InstallError::Downgrade {
                model: model.into(),
                version: version.into(),
                serving: serving.into(),
            });
        }
    }
    Ok(())
}

/// The package that serves `model` now (the store's version, else the bundled package of
/// that name: `models_dir`, then the service's search path) and its RAM plan.
fn serving_plan(
    store: &Store,
    ms: &ModelState,
    model: &str,
    ctx: &Context,
    models_dir: Option<&Path>,
) -> Option<(PathBuf, Option<Plan>)> {
    let (dir, v) = match ms.serving() {
        Some(v) => (store.version_dir(model, v).ok()?, v.to_string()),
        None => (
            beltbox_core::model::package::resolve(model, models_dir)?,
            "bundled".to_string(),
        ),
    };
    match beltbox_core::model::plan(&dir, &ctx.load, None) {
        Ok((_, plan, _)) => Some((dir, Some(plan))),
        Err(e) => {
            log::warn!("{model} {v}: cannot plan the serving version ({e}); qualifying without it");
            Some((dir, None))
        }
    }
}

/// This box's stable rollout seed in [0, 1): from `/etc/machine-id` (systemd's per-install
/// id) and the model name, so each model's waves reach a different slice of the fleet.
pub fn seed(machine_id: &str, model: &str) -> f64 {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(format!("{machine_id}/{model}").as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[..8]);
    (u64::from_be_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// What `ota status` shows: the state and the store's disk use.
pub fn status(paths: &Paths) -> Result<(State, u64), InstallError> {
    let store = Store::reader(&paths.ota_dir);
    let state = store.load()?;
    let used = if paths.ota_dir.exists() {
        store.disk_usage()?
    } else {
        0
    };
    Ok((state, used))
}
