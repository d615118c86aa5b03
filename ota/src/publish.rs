//! The publisher's side of a channel (`beltbox ota channel-init`, `beltbox ota publish`):
//! Ed25519 keys, the root metadata, and signed releases of model packages, all written
//! through tough's editor so that what the box verifies is TUF as tough reads it.
//!
//! Keys are PKCS#8 files `KEYS/ROLE-N.pk8` (mode 0600), `threshold` of them per role; the
//! root keys belong offline once the root is signed (docs/ota.md). Every publish re-signs
//! targets, snapshot and timestamp with versions one above the channel's current ones and
//! keeps every target already published: a version, once published, is immutable (the
//! same target name with other bytes is refused).
//!
//! Metadata is written to a scratch directory and moved into `metadata/` with
//! `timestamp.json` last, so a box reading the channel mid-publish sees the old release
//! or the new one.

use std::collections::HashMap;
use std::fs;
use std::num::NonZeroU64;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SystemRandom;
use sha2::{Digest, Sha256};
use tough::editor::signed::{PathExists, SignedRole};
use tough::editor::RepositoryEditor;
use tough::key_source::{KeySource, LocalKeySource};
use tough::schema::{Hashes, KeyHolder, RoleKeys, RoleType, Root, Target};
use tough::{ExpirationEnforcement, FilesystemTransport, RepositoryLoader};

use crate::archive::{self, ArchiveError};
use crate::channel::{hex, TargetInfo, Wave, CUSTOM_KEY};
use crate::durable::{self, DurableError};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{0}")]
    Tuf(String),
    #[error("key {}: {problem}", path.display())]
    Key { path: PathBuf, problem: String },
    #[error("{} already holds a channel (metadata/1.root.json); refusing to overwrite its root", .0.display())]
    Exists(PathBuf),
    #[error("{} is not a channel: no metadata/N.root.json (run `beltbox ota channel-init` first)", .0.display())]
    NoChannel(PathBuf),
    #[error("package {}: {problem}", dir.display())]
    Package { dir: PathBuf, problem: String },
    #[error("target `{0}` is already published with other bytes: a published version is immutable, publish a new version")]
    Immutable(String),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Io(#[from] DurableError),
}

fn tuf(e: impl std::fmt::Display) -> PublishError {
    PublishError::Tuf(e.to_string())
}

const ROLES: [(RoleType, &str); 4] = [
    (RoleType::Root, "root"),
    (RoleType::Targets, "targets"),
    (RoleType::Snapshot, "snapshot"),
    (RoleType::Timestamp, "timestamp"),
];

fn runtime() -> Result<tokio::runtime::Runtime, PublishError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| PublishError::Tuf(format!("cannot start an I/O runtime: {e}")))
}

fn days_from_now(days: u64) -> Result<jiff::Timestamp, PublishError> {
    let secs = i64::try_from(days.saturating_mul(86_400)).unwrap_or(i64::MAX / 2);
    jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(secs))
        .map_err(tuf)
}

/// Creates `keys/ROLE-N.pk8` for every role and `channel/metadata/1.root.json` signed by
/// the root keys. Returns the root file: the trust anchor boxes ship
/// (`/etc/beltbox/ota/root.json`).
pub fn init(
    channel: &Path,
    keys: &Path,
    threshold: u64,
    root_expires_days: u64,
) -> Result<PathBuf, PublishError> {
    let meta = channel.join("metadata");
    let root_path = meta.join("1.root.json");
    if root_path.exists() {
        return Err(PublishError::Exists(channel.to_path_buf()));
    }
    let threshold = NonZeroU64::new(threshold.max(1)).unwrap_or(NonZeroU64::MIN);
    fs::create_dir_all(keys).map_err(durable::at("create", keys))?;
    let rng = SystemRandom::new();
    let mut root = Root {
        spec_version: "1.0.0".into(),
        consistent_snapshot: true,
        version: NonZeroU64::MIN,
        expires: days_from_now(root_expires_days)?,
        keys: HashMap::new(),
        roles: HashMap::new(),
        _extra: HashMap::new(),
    };
    let mut root_sources: Vec<Box<dyn KeySource>> = Vec::new();
    for (role, name) in ROLES {
        let mut keyids = Vec::new();
        for i in 1..=threshold.get() {
            let path = keys.join(format!("{name}-{i}.pk8"));
            let id = new_key(&path, &rng, &mut root)?;
            keyids.push(id);
            if role == RoleType::Root {
                root_sources.push(Box::new(LocalKeySource { path }));
            }
        }
        root.roles.insert(
            role,
            RoleKeys {
                keyids,
                threshold,
                _extra: HashMap::new(),
            },
        );
    }
    let rt = runtime()?;
    let holder = KeyHolder::Root(root.clone());
    let signed = rt
        .block_on(SignedRole::new(root, &holder, &root_sources, &rng))
        .map_err(tuf)?;
    fs::create_dir_all(&meta).map_err(durable::at("create", &meta))?;
    fs::create_dir_all(channel.join("targets")).map_err(durable::at("create", channel))?;
    durable::write_atomic(&root_path, signed.buffer())?;
    Ok(root_path)
}

/// Rotates the root keys: root version N+1 lists `threshold` fresh root keys (written to
/// `new_keys/root-K.pk8`) and keeps the other roles' keys. As TUF requires, it is signed
/// by the old root's keys (so a box that trusts N accepts it) and by the new ones (so it
/// is valid on its own). Returns the new root file.
pub fn rotate_root(
    channel: &Path,
    old_keys: &Path,
    new_keys: &Path,
    threshold: u64,
    root_expires_days: u64,
) -> Result<PathBuf, PublishError> {
    let (old_path, n) = latest_root(channel)?;
    let bytes = fs::read(&old_path).map_err(durable::at("read", &old_path))?;
    let old: tough::schema::Signed<Root> = serde_json::from_slice(&bytes).map_err(tuf)?;
    let old_root = old.signed;
    let threshold = NonZeroU64::new(threshold.max(1)).unwrap_or(NonZeroU64::MIN);
    fs::create_dir_all(new_keys).map_err(durable::at("create", new_keys))?;
    let rng = SystemRandom::new();
    let mut root = old_root.clone();
    root.version = NonZeroU64::new(n + 1).unwrap_or(NonZeroU64::MIN);
    root.expires = days_from_now(root_expires_days)?;
    let old_root_ids: Vec<_> = old_root
        .roles
        .get(&RoleType::Root)
        .map(|r| r.keyids.clone())
        .unwrap_or_default();
    let mut new_sources: Vec<Box<dyn KeySource>> = Vec::new();
    let mut keyids = Vec::new();
    for i in 1..=threshold.get() {
        let path = new_keys.join(format!("root-{i}.pk8"));
        let id = new_key(&path, &rng, &mut root)?;
        keyids.push(id);
        new_sources.push(Box::new(LocalKeySource { path }));
    }
    // The old root keys sign this version but are no longer listed.
    for id in &old_root_ids {
        let still_used = root
            .roles
            .iter()
            .any(|(r, k)| *r != RoleType::Root && k.keyids.contains(id));
        if !still_used {
            root.keys.remove(id);
        }
    }
    root.roles.insert(
        RoleType::Root,
        RoleKeys {
            keyids,
            threshold,
            _extra: HashMap::new(),
        },
    );
    let old_sources = key_sources(old_keys)?;
    let rt = runtime()?;
    let by_new = rt
        .block_on(SignedRole::new(
            root.clone(),
            &KeyHolder::Root(root.clone()),
            &new_sources,
            &rng,
        ))
        .map_err(tuf)?;
    let by_old = rt
        .block_on(SignedRole::new(
            root.clone(),
            &KeyHolder::Root(old_root),
            &old_sources,
            &rng,
        ))
        .map_err(tuf)?;
    let signed = by_new
        .add_old_signatures(by_old.signed().signatures.clone())
        .map_err(tuf)?;
    let path = channel
        .join("metadata")
        .join(format!("{}.root.json", n + 1));
    durable::write_atomic(&path, signed.buffer())?;
    Ok(path)
}

/// Generates an Ed25519 key into `path` (PKCS#8, mode 0600) and lists it in `root`'s keys;
/// returns its key id (the caller puts it in a role).
fn new_key(
    path: &Path,
    rng: &SystemRandom,
    root: &mut Root,
) -> Result<tough::schema::decoded::Decoded<tough::schema::decoded::Hex>, PublishError> {
    let key_err = |problem: String| PublishError::Key {
        path: path.to_path_buf(),
        problem,
    };
    let pkcs8 = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(rng)
        .map_err(|e| key_err(format!("cannot generate: {e}")))?;
    write_secret(path, pkcs8.as_ref())?;
    let key = tough::sign::parse_keypair(pkcs8.as_ref()).map_err(|e| key_err(e.to_string()))?;
    let tuf_key = tough::sign::Sign::tuf_key(&key);
    let id = tuf_key.key_id().map_err(tuf)?;
    root.keys.insert(id.clone(), tuf_key);
    Ok(id)
}

fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), PublishError> {
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(durable::at("create", path))?;
    f.write_all(bytes).map_err(durable::at("write", path))?;
    f.sync_all().map_err(durable::at("sync", path))?;
    Ok(())
}

/// Every `*.pk8` in `keys`: tough signs each role with those of its keys it finds.
fn key_sources(keys: &Path) -> Result<Vec<Box<dyn KeySource>>, PublishError> {
    let mut out: Vec<Box<dyn KeySource>> = Vec::new();
    for e in fs::read_dir(keys).map_err(durable::at("list", keys))? {
        let p = e.map_err(durable::at("list", keys))?.path();
        if p.extension().is_some_and(|x| x == "pk8") {
            out.push(Box::new(LocalKeySource { path: p }));
        }
    }
    out.sort_by_key(|k| format!("{k:?}"));
    Ok(out)
}

/// The newest `N.root.json` in `metadata/`.
pub fn latest_root(channel: &Path) -> Result<(PathBuf, u64), PublishError> {
    let meta = channel.join("metadata");
    let mut best: Option<(PathBuf, u64)> = None;
    let entries = fs::read_dir(&meta).map_err(|_| PublishError::NoChannel(channel.into()))?;
    for e in entries {
        let e = e.map_err(durable::at("list", &meta))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(n) = name
            .strip_suffix(".root.json")
            .and_then(|n| n.parse::<u64>().ok())
        {
            if best.as_ref().is_none_or(|b| n > b.1) {
                best = Some((e.path(), n));
            }
        }
    }
    best.ok_or_else(|| PublishError::NoChannel(channel.into()))
}

/// A package to publish: its directory and what its manifest says.
#[derive(Debug, Clone)]
pub struct Release {
    pub dir: PathBuf,
    pub model: String,
    pub version: String,
    pub waves: Vec<Wave>,
}

#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// Targets and snapshot lifetime.
    pub expires_days: u64,
    /// Timestamp lifetime: short for an online fleet (a frozen mirror is noticed soon),
    /// long for a USB stick that sits in a drawer.
    pub timestamp_expires_days: u64,
}

/// What one publish wrote.
#[derive(Debug, Clone)]
pub struct Published {
    pub target: String,
    pub length: u64,
    pub sha256: String,
    pub snapshot_version: u64,
}

/// Adds `releases` to the channel and re-signs it.
pub fn publish(
    channel: &Path,
    keys: &Path,
    releases: &[Release],
    opts: &PublishOptions,
) -> Result<Vec<Published>, PublishError> {
    let (root_path, _) = latest_root(channel)?;
    let meta = channel.join("metadata");
    let targets_dir = channel.join("targets");
    let rt = runtime()?;
    let sources = key_sources(keys)?;

    // The current release, if any: its targets are kept and its versions continued.
    let current = if meta.join("timestamp.json").exists() {
        let root_bytes = fs::read(&root_path).map_err(durable::at("read", &root_path))?;
        let m = url::Url::from_directory_path(
            fs::canonicalize(&meta).map_err(durable::at("resolve", &meta))?,
        )
        .map_err(|_| PublishError::NoChannel(channel.into()))?;
        let t = url::Url::from_directory_path(
            fs::canonicalize(&targets_dir).map_err(durable::at("resolve", &targets_dir))?,
        )
        .map_err(|_| PublishError::NoChannel(channel.into()))?;
        let repo = rt
            .block_on(
                RepositoryLoader::new(&root_bytes, m, t)
                    .transport(FilesystemTransport)
                    .expiration_enforcement(ExpirationEnforcement::Unsafe)
                    .load(),
            )
            .map_err(tuf)?;
        Some(repo)
    } else {
        None
    };
    let next = |v: Option<u64>| NonZeroU64::new(v.unwrap_or(0) + 1).unwrap_or(NonZeroU64::MIN);
    let (tv, sv, tsv) = match &current {
        Some(r) => (
            next(Some(r.targets().signed.version.get())),
            next(Some(r.snapshot().signed.version.get())),
            next(Some(r.timestamp().signed.version.get())),
        ),
        None => (next(None), next(None), next(None)),
    };
    let existing: HashMap<String, String> = current
        .as_ref()
        .map(|r| {
            r.all_targets()
                .map(|(n, t)| (n.raw().to_string(), hex(&t.hashes.sha256)))
                .collect()
        })
        .unwrap_or_default();
    let mut editor = match current {
        Some(repo) => rt.block_on(RepositoryEditor::from_repo(&root_path, repo)),
        None => rt.block_on(RepositoryEditor::new(&root_path)),
    }
    .map_err(tuf)?;

    let incoming = channel.join(".incoming");
    if incoming.exists() {
        fs::remove_dir_all(&incoming).map_err(durable::at("remove", &incoming))?;
    }
    fs::create_dir_all(&incoming).map_err(durable::at("create", &incoming))?;
    let published_unix_s = jiff::Timestamp::now().as_second();
    let mut out = Vec::new();
    for r in releases {
        crate::store::check_name(&r.model).map_err(|e| PublishError::Package {
            dir: r.dir.clone(),
            problem: e.to_string(),
        })?;
        crate::store::check_name(&r.version).map_err(|e| PublishError::Package {
            dir: r.dir.clone(),
            problem: e.to_string(),
        })?;
        let bytes = archive::pack(&r.dir)?;
        let sha = hex(&Sha256::digest(&bytes));
        let name = format!("{}-{}.tar.gz", r.model, r.version);
        match existing.get(&name) {
            Some(old) if *old == sha => {}
            Some(_) => return Err(PublishError::Immutable(name)),
            None => {}
        }
        let path = incoming.join(&name);
        durable::write_atomic(&path, &bytes)?;
        let info = TargetInfo {
            model: r.model.clone(),
            version: r.version.clone(),
            published_unix_s,
            waves: r.waves.clone(),
        };
        let mut custom = HashMap::new();
        custom.insert(
            CUSTOM_KEY.to_string(),
            serde_json::to_value(&info).map_err(tuf)?,
        );
        let target = Target {
            length: bytes.len() as u64,
            hashes: Hashes {
                sha256: Sha256::digest(&bytes).to_vec().into(),
                _extra: HashMap::new(),
            },
            custom,
            _extra: HashMap::new(),
        };
        editor.add_target(name.as_str(), target).map_err(tuf)?;
        out.push(Published {
            target: name,
            length: bytes.len() as u64,
            sha256: sha,
            snapshot_version: sv.get(),
        });
    }
    let expires = days_from_now(opts.expires_days)?;
    editor
        .targets_version(tv)
        .map_err(tuf)?
        .targets_expires(expires)
        .map_err(tuf)?
        .snapshot_version(sv)
        .snapshot_expires(expires)
        .timestamp_version(tsv)
        .timestamp_expires(days_from_now(opts.timestamp_expires_days)?);
    let signed = rt.block_on(editor.sign(&sources)).map_err(tuf)?;

    let scratch = channel.join(".metadata-new");
    if scratch.exists() {
        fs::remove_dir_all(&scratch).map_err(durable::at("remove", &scratch))?;
    }
    rt.block_on(signed.write(&scratch)).map_err(tuf)?;
    rt.block_on(signed.copy_targets(&incoming, &targets_dir, PathExists::Skip))
        .map_err(tuf)?;
    durable::sync_tree(&targets_dir)?;
    // Versioned files first, timestamp.json last: readers see one release or the next.
    let mut names: Vec<_> = fs::read_dir(&scratch)
        .map_err(durable::at("list", &scratch))?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    names.sort_by_key(|n| n == "timestamp.json");
    durable::sync_tree(&scratch)?;
    for n in names {
        durable::rename_durable(&scratch.join(&n), &meta.join(&n))?;
    }
    fs::remove_dir_all(&scratch).map_err(durable::at("remove", &scratch))?;
    fs::remove_dir_all(&incoming).map_err(durable::at("remove", &incoming))?;
    Ok(out)
}
