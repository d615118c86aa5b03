//! The device store under `state_dir/ota`:
//!
//! ```text
//! state.json                    which version of each model is active, previous, factory,
//!                               in probation, and which versions are bad (one file, replaced
//!                               atomically: every transition is one write)
//! state.prev.json               the state before the last transition, for storage that
//!                               loses a synced file's tail in a power cut (Store::load)
//! versions/NAME@VERSION/        an unpacked, verified package, moved in whole by a rename
//! staging/                      unpacking in progress; emptied when the store opens
//! cards/NAME@VERSION.json       qualification evidence, passed or failed
//! tuf/, time-floor.json         the channel's trusted metadata, the clock's floor (channel.rs)
//! downloads/SHA256.part         a package download in progress, kept across restarts (download.rs)
//! recent/, probation/           the service's recent frames and probation baselines
//! lock                          held (flock) by whoever changes the store
//! ```
//!
//! Writers take the lock ([`Store::open`] blocks on it and holds it for the store's life):
//! the service's poller and a technician's `beltbox ota install` never interleave, and a
//! writer's staging is never swept by another. Readers ([`Store::reader`]) take no lock:
//! every file they read is replaced atomically.
//!
//! The model served for a name is the candidate while it is in probation, else the active
//! version, else the factory one ([`ModelState::serving`]). Transitions are pure functions
//! on [`ModelState`] ([`ModelState::activate`], [`ModelState::commit`],
//! [`ModelState::roll_back`]); [`Store::save`] makes one durable. A crash between two saves
//! leaves the state of the first; a version directory renamed in but never named by the
//! state is unreferenced and garbage ([`Store::collect_garbage`]).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::durable::{self, at, DurableError};

/// The state file's format; a newer one is refused, not misread.
pub const FORMAT: u32 = 1;
/// Service starts allowed with one candidate on probation before it is rolled back.
pub const MAX_BOOTS_ON_PROBATION: u32 = 3;
/// Bad versions remembered per model (never retried from the channel); the oldest go first.
pub const MAX_BAD: usize = 64;
/// Transitions remembered per model for `beltbox ota history`.
pub const MAX_HISTORY: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Io(#[from] DurableError),
    #[error("{}: {problem}", path.display())]
    State { path: PathBuf, problem: String },
    #[error("`{0}` is not a valid model name or version: use 1-64 of A-Z a-z 0-9 . _ - (not starting with . or -)")]
    Name(String),
    #[error("{0}")]
    Transition(#[from] TransitionError),
}

/// Why a transition is not allowed from the current state.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransitionError {
    #[error("{model} {version} is marked bad ({why}); it is never activated again")]
    Bad {
        model: String,
        version: String,
        why: String,
    },
    #[error("{model} {version} is already active")]
    AlreadyActive { model: String, version: String },
    #[error("{model} has {version} in probation; commit or roll it back first")]
    InProbation { model: String, version: String },
    #[error("{model} has no version in probation")]
    NoCandidate { model: String },
    #[error("{model} has no previous version to roll back to")]
    NoPrevious { model: String },
}

/// A version that failed and must not come back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadVersion {
    pub version: String,
    pub why: String,
    pub at_unix_ms: u64,
}

/// One line of a model's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub at_unix_ms: u64,
    pub what: String,
}

/// A version serving on probation since `since_unix_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    pub version: String,
    pub since_unix_ms: u64,
    /// Service starts with this candidate on probation (the loop breaker, [`ModelState::boot`]).
    #[serde(default)]
    pub boots: u32,
}

/// What the store knows about one model name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelState {
    /// The last version that passed probation (or was installed as the first).
    pub active: Option<String>,
    /// The active version before it: where a manual rollback goes.
    pub previous: Option<String>,
    /// Shipped with the image: the last resort, never collected.
    pub factory: Option<String>,
    pub candidate: Option<Candidate>,
    #[serde(default)]
    pub bad: Vec<BadVersion>,
    #[serde(default)]
    pub history: Vec<Event>,
}

impl ModelState {
    /// The version to serve now.
    pub fn serving(&self) -> Option<&str> {
        self.candidate
            .as_ref()
            .map(|c| c.version.as_str())
            .or(self.active.as_deref())
            .or(self.factory.as_deref())
    }

    pub fn bad(&self, version: &str) -> Option<&BadVersion> {
        self.bad.iter().find(|b| b.version == version)
    }

    /// Versions the store must keep on disk.
    pub fn referenced(&self) -> impl Iterator<Item = &str> {
        [
            self.active.as_deref(),
            self.previous.as_deref(),
            self.factory.as_deref(),
            self.candidate.as_ref().map(|c| c.version.as_str()),
        ]
        .into_iter()
        .flatten()
    }

    /// Starts serving `version` on probation. The first version of a model has nothing to
    /// fall back to and no probation to pass: it becomes active at once.
    pub fn activate(
        &mut self,
        model: &str,
        version: &str,
        now: u64,
    ) -> Result<(), TransitionError> {
        if let Some(b) = self.bad(version) {
            return Err(TransitionError::Bad {
                model: model.into(),
                version: version.into(),
                why: b.why.clone(),
            });
        }
        if let Some(c) = &self.candidate {
            return Err(TransitionError::InProbation {
                model: model.into(),
                version: c.version.clone(),
            });
        }
        if self.active.as_deref() == Some(version) {
            return Err(TransitionError::AlreadyActive {
                model: model.into(),
                version: version.into(),
            });
        }
        if self.active.is_none() && self.factory.is_none() {
            self.active = Some(version.into());
            self.log(now, format!("installed {version} as the first version"));
        } else {
            self.candidate = Some(Candidate {
                version: version.into(),
                since_unix_ms: now,
                boots: 0,
            });
            self.log(now, format!("activated {version} on probation"));
        }
        Ok(())
    }

    /// The candidate passed probation: it becomes active, the active one previous.
    pub fn commit(&mut self, model: &str, now: u64) -> Result<String, TransitionError> {
        let c = self
            .candidate
            .take()
            .ok_or_else(|| TransitionError::NoCandidate {
                model: model.into(),
            })?;
        self.previous = self.active.replace(c.version.clone());
        self.log(now, format!("committed {} after probation", c.version));
        Ok(c.version)
    }

    /// The candidate failed probation (or a technician rolled it back): it is marked bad
    /// and the active version serves again. Without a candidate, the active version is
    /// rolled back to the previous one and marked bad.
    pub fn roll_back(
        &mut self,
        model: &str,
        why: &str,
        now: u64,
    ) -> Result<String, TransitionError> {
        let failed = match self.candidate.take() {
            Some(c) => c.version,
            None => match (self.active.take(), self.previous.take()) {
                (Some(active), Some(prev)) => {
                    self.active = Some(prev);
                    active
                }
                (active, prev) => {
                    // Nothing changes when there is nowhere to go.
                    self.active = active;
                    self.previous = prev;
                    return Err(TransitionError::NoPrevious {
                        model: model.into(),
                    });
                }
            },
        };
        self.push_bad(&failed, why, now);
        self.log(now, format!("rolled back {failed}: {why}"));
        Ok(failed)
    }

    /// The service is starting with the candidate on probation: the start is counted. A
    /// candidate the service has started with more than [`MAX_BOOTS_ON_PROBATION`] times
    /// without reaching a verdict is taken for the cause of a crash loop (a box that keeps
    /// dying mid-update) and rolled back, so the box ends on its active version. Returns
    /// the version rolled back, if it came to that.
    pub fn boot(&mut self, model: &str, now: u64) -> Option<String> {
        let c = self.candidate.as_mut()?;
        c.boots += 1;
        if c.boots <= MAX_BOOTS_ON_PROBATION {
            return None;
        }
        let why = format!(
            "the service started {} times with it on probation without a verdict (crash loop)",
            c.boots
        );
        self.roll_back(model, &why, now).ok()
    }

    /// A version that never served is refused for good (failed qualification).
    pub fn mark_bad(&mut self, version: &str, why: &str, now: u64) {
        self.push_bad(version, why, now);
        self.log(now, format!("refused {version}: {why}"));
    }

    fn push_bad(&mut self, version: &str, why: &str, now: u64) {
        if self.bad(version).is_some() {
            return;
        }
        self.bad.push(BadVersion {
            version: version.into(),
            why: why.into(),
            at_unix_ms: now,
        });
        if self.bad.len() > MAX_BAD {
            self.bad.remove(0);
        }
    }

    /// Adds a line to the history (what a transition's own line does not say).
    pub fn note(&mut self, now: u64, what: String) {
        self.log(now, what);
    }

    fn log(&mut self, now: u64, what: String) {
        self.history.push(Event {
            at_unix_ms: now,
            what,
        });
        if self.history.len() > MAX_HISTORY {
            self.history.remove(0);
        }
    }
}

/// The whole state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub format: u32,
    pub models: BTreeMap<String, ModelState>,
}

impl Default for State {
    fn default() -> Self {
        State {
            format: FORMAT,
            models: BTreeMap::new(),
        }
    }
}

/// What opening the store found and cleaned.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Staging directories of installs a crash interrupted.
    pub staging: Vec<String>,
    /// Temporaries of writes a crash interrupted.
    pub temporaries: Vec<String>,
}

#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    /// The flock; `None` for a reader.
    _lock: Option<fs::File>,
}

/// Checks a model name or version used in a path: no separators, no `..`, bounded.
pub fn check_name(s: &str) -> Result<(), StoreError> {
    let ok = (1..=64).contains(&s.len())
        && !s.starts_with(['.', '-'])
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Name(s.chars().take(80).collect()))
    }
}

impl Store {
    /// Opens (creating) the store at `root`, removing what interrupted installs and writes
    /// left behind.
    pub fn open(root: &Path) -> Result<(Store, Recovered), StoreError> {
        durable::create_dir_durable(root)?;
        let lock_path = root.join("lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(at("open", &lock_path))?;
        flock(&lock).map_err(at("lock", &lock_path))?;
        let store = Store {
            root: root.to_path_buf(),
            _lock: Some(lock),
        };
        durable::create_dir_durable(&store.versions_dir())?;
        durable::create_dir_durable(&store.cards_dir())?;
        durable::create_dir_durable(&store.staging_dir())?;
        let mut found = Recovered {
            temporaries: durable::remove_leftovers(root)?,
            ..Recovered::default()
        };
        let staging = store.staging_dir();
        for entry in fs::read_dir(&staging).map_err(at("list", &staging))? {
            let entry = entry.map_err(at("list", &staging))?;
            let path = entry.path();
            remove_all(&path)?;
            found
                .staging
                .push(entry.file_name().to_string_lossy().into_owned());
        }
        if !found.staging.is_empty() {
            durable::sync_dir(&staging)?;
        }
        Ok((store, found))
    }

    /// The store for reading only (status, the service's start): no lock, nothing swept
    /// or created.
    pub fn reader(root: &Path) -> Store {
        Store {
            root: root.to_path_buf(),
            _lock: None,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn cards_dir(&self) -> PathBuf {
        self.root.join("cards")
    }

    /// Where a version's qualification card is kept.
    pub fn card_path(&self, model: &str, version: &str) -> Result<PathBuf, StoreError> {
        check_name(model)?;
        check_name(version)?;
        Ok(self.cards_dir().join(format!("{model}@{version}.json")))
    }

    fn state_path(&self) -> PathBuf {
        self.root.join("state.json")
    }

    fn versions_dir(&self) -> PathBuf {
        self.root.join("versions")
    }

    pub fn staging_dir(&self) -> PathBuf {
        self.root.join("staging")
    }

    /// Where a version's package lives.
    pub fn version_dir(&self, model: &str, version: &str) -> Result<PathBuf, StoreError> {
        check_name(model)?;
        check_name(version)?;
        Ok(self.versions_dir().join(format!("{model}@{version}")))
    }

    /// The state; an empty one on a fresh box.
    ///
    /// `state.json` is replaced atomically and synced, and the state it replaces is kept as
    /// `state.prev.json` ([`durable::write_kept`]): on storage that loses a synced file's
    /// tail in a power cut, a damaged `state.json` reads as the state before the last
    /// transition, with a warning. At most that one transition is lost; the versions it
    /// named are on disk or collected, never half there.
    pub fn load(&self) -> Result<State, StoreError> {
        Ok(durable::read_kept(&self.state_path(), |p| self.load_file(p))?.unwrap_or_default())
    }

    /// One state file; `None` when it does not exist.
    fn load_file(&self, path: &Path) -> Result<Option<State>, StoreError> {
        match fs::read(path) {
            Ok(b) => parse_state(&b).map(Some).map_err(|problem| match problem {
                StateProblem::Name(e) => e,
                StateProblem::Text(problem) => StoreError::State {
                    path: path.to_path_buf(),
                    problem,
                },
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(at("read", path)(e).into()),
        }
    }

    /// Makes `state` the store's state, atomically and durably, keeping the one it
    /// replaces (see [`Store::load`]).
    pub fn save(&self, state: &State) -> Result<(), StoreError> {
        let path = self.state_path();
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| StoreError::State {
            path: path.clone(),
            problem: format!("cannot encode: {e}"),
        })?;
        let fresh = serde_json::to_vec_pretty(&State::default()).unwrap_or_default();
        let valid = |b: &[u8]| parse_state(b).is_ok();
        Ok(durable::write_kept(&path, &bytes, valid, &fresh)?)
    }

    /// Moves a verified package from staging into the store as `model@version`, durably.
    /// An existing directory of that version (an earlier install a crash cut off before
    /// the state named it) is replaced.
    pub fn adopt(&self, staged: &Path, model: &str, version: &str) -> Result<PathBuf, StoreError> {
        let dest = self.version_dir(model, version)?;
        durable::sync_tree(staged)?;
        if dest.exists() {
            remove_all(&dest)?;
        }
        durable::rename_durable(staged, &dest)?;
        Ok(dest)
    }

    /// Deletes every version directory the state does not name, and the probation
    /// baselines (`probation/`, kept by the service) of versions no longer on probation.
    /// Returns the versions removed and the bytes freed.
    ///
    /// `state` is saved once more first, so that the backup `state.prev.json` holds it too:
    /// a state before it, which may name what is deleted here, can then never come back
    /// (not even from a power cut that damages `state.json`, see [`Store::load`]).
    pub fn collect_garbage(&self, state: &State) -> Result<(Vec<String>, u64), StoreError> {
        self.save(state)?;
        self.collect_baselines(state)?;
        let keep: Vec<String> = state
            .models
            .iter()
            .flat_map(|(m, s)| s.referenced().map(move |v| format!("{m}@{v}")))
            .collect();
        let dir = self.versions_dir();
        let mut removed = Vec::new();
        let mut freed = 0;
        for entry in fs::read_dir(&dir).map_err(at("list", &dir))? {
            let entry = entry.map_err(at("list", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if keep.contains(&name) {
                continue;
            }
            let path = entry.path();
            freed += disk_bytes(&path)?;
            remove_all(&path)?;
            removed.push(name);
        }
        if !removed.is_empty() {
            durable::sync_dir(&dir)?;
        }
        Ok((removed, freed))
    }

    /// Where the service keeps a candidate's probation baseline (its own format).
    pub fn probation_dir(&self) -> PathBuf {
        self.root.join("probation")
    }

    fn collect_baselines(&self, state: &State) -> Result<(), StoreError> {
        let dir = self.probation_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(at("list", &dir)(e).into()),
        };
        let candidates: Vec<String> = state
            .models
            .iter()
            .filter_map(|(m, s)| Some(format!("{m}@{}.", s.candidate.as_ref()?.version)))
            .collect();
        for entry in entries {
            let entry = entry.map_err(at("list", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !candidates.iter().any(|c| name.starts_with(c.as_str())) {
                let path = entry.path();
                fs::remove_file(&path).map_err(at("remove", &path))?;
            }
        }
        Ok(())
    }

    /// Bytes the store holds on disk (versions, staging, the state file).
    pub fn disk_usage(&self) -> Result<u64, StoreError> {
        disk_bytes(&self.root)
    }
}

enum StateProblem {
    Text(String),
    Name(StoreError),
}

/// A state file's bytes, checked: its format, and every name it holds safe for a path.
fn parse_state(bytes: &[u8]) -> Result<State, StateProblem> {
    let state: State = serde_json::from_slice(bytes)
        .map_err(|e| StateProblem::Text(format!("not a valid state file: {e}")))?;
    if state.format != FORMAT {
        return Err(StateProblem::Text(format!(
            "state format {} is not the {FORMAT} this beltbox reads",
            state.format
        )));
    }
    for (model, m) in &state.models {
        check_name(model).map_err(StateProblem::Name)?;
        for v in m.referenced() {
            check_name(v).map_err(StateProblem::Name)?;
        }
    }
    Ok(state)
}

/// Blocks until this process holds the exclusive advisory lock on `f` (released when the
/// file closes, also when the process dies).
fn flock(f: &fs::File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: as below.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(());
    }
    log::info!("waiting for the OTA store: another install holds it");
    loop {
        // SAFETY: flock on a descriptor this File owns; no memory is involved.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Removes a file or a directory tree without following links out of it.
fn remove_all(path: &Path) -> Result<(), StoreError> {
    let meta = fs::symlink_metadata(path).map_err(at("stat", path))?;
    let r = if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    Ok(r.map_err(at("remove", path))?)
}

/// Apparent size of the files below `path` (links are not followed). A file that goes
/// between the listing and its stat counts 0: the service renames its state's temporaries
/// into place while `ota status` walks the store.
fn disk_bytes(path: &Path) -> Result<u64, StoreError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(at("stat", path)(e).into()),
    };
    if !meta.is_dir() {
        return Ok(meta.len());
    }
    let mut total = 0;
    let entries = match fs::read_dir(path) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(at("list", path)(e).into()),
    };
    for entry in entries {
        let entry = entry.map_err(at("list", path))?;
        total += disk_bytes(&entry.path())?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_gone_between_listing_and_stat_counts_zero() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("a"), b"12345").unwrap();
        assert_eq!(disk_bytes(d.path()).unwrap(), 5);
        // What `ota status` meets when the service renames a temporary away mid-walk.
        assert_eq!(disk_bytes(&d.path().join(".state.json.tmp-1")).unwrap(), 0);
    }

    fn staged(store: &Store, id: &str, bytes: usize) -> PathBuf {
        let p = store.staging_dir().join(id);
        fs::create_dir_all(&p).unwrap();
        fs::write(p.join("model.onnx"), vec![7u8; bytes]).unwrap();
        p
    }

    #[test]
    fn names_that_could_leave_the_store_are_refused() {
        for bad in [
            "",
            "..",
            ".hidden",
            "-x",
            "a/b",
            "a\\b",
            "a b",
            "é",
            &"x".repeat(65),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for good in ["digits-int8-qdq", "1.2.0", "v2_rc1", &"x".repeat(64)] {
            check_name(good).unwrap();
        }
    }

    #[test]
    fn probation_commit_and_rollback_move_the_served_version() {
        let mut m = ModelState::default();
        m.activate("digits", "1", 10).unwrap();
        assert_eq!(
            (m.serving(), m.candidate.is_none()),
            (Some("1"), true),
            "first: active at once"
        );
        m.activate("digits", "2", 20).unwrap();
        assert_eq!(m.serving(), Some("2"));
        assert_eq!(
            m.activate("digits", "3", 21),
            Err(TransitionError::InProbation {
                model: "digits".into(),
                version: "2".into()
            })
        );
        assert_eq!(
            m.roll_back("digits", "p95 41 ms over the 30 ms SLO", 30)
                .unwrap(),
            "2"
        );
        assert_eq!((m.serving(), m.active.as_deref()), (Some("1"), Some("1")));
        let e = m.activate("digits", "2", 40).unwrap_err();
        assert!(e.to_string().contains("p95 41 ms"), "{e}");
        m.activate("digits", "3", 50).unwrap();
        assert_eq!(m.commit("digits", 60).unwrap(), "3");
        assert_eq!(
            (m.active.as_deref(), m.previous.as_deref()),
            (Some("3"), Some("1"))
        );
        // A technician's rollback of the committed version goes to the previous one.
        assert_eq!(
            m.roll_back("digits", "technician: wrong labels", 70)
                .unwrap(),
            "3"
        );
        assert_eq!((m.serving(), m.previous.as_deref()), (Some("1"), None));
        let before = m.clone();
        assert!(matches!(
            m.roll_back("digits", "again", 80),
            Err(TransitionError::NoPrevious { .. })
        ));
        assert_eq!(m, before, "a refused transition changes nothing");
        assert_eq!(m.history.len(), 6);
    }

    #[test]
    fn the_factory_version_serves_until_another_passes_probation() {
        let mut m = ModelState {
            factory: Some("0".into()),
            ..ModelState::default()
        };
        assert_eq!(m.serving(), Some("0"));
        m.activate("digits", "1", 1).unwrap();
        assert!(
            m.candidate.is_some(),
            "with a factory version there is something to fall back to"
        );
        m.roll_back("digits", "error rate", 2).unwrap();
        assert_eq!(m.serving(), Some("0"));
    }

    #[test]
    fn state_survives_a_reopen_and_garbage_is_what_no_role_names() {
        let d = tempfile::tempdir().unwrap();
        let (store, found) = Store::open(d.path()).unwrap();
        assert_eq!(found, Recovered::default());
        assert_eq!(store.load().unwrap(), State::default());
        let mut state = State::default();
        for (v, size) in [("1", 1000), ("2", 2000), ("3", 4000)] {
            let s = staged(&store, &format!("job-{v}"), size);
            store.adopt(&s, "digits", v).unwrap();
            let m = state.models.entry("digits".into()).or_default();
            m.activate("digits", v, 1).unwrap();
            if m.candidate.is_some() {
                m.commit("digits", 2).unwrap();
            }
        }
        store.save(&state).unwrap();
        drop(store);
        let (store, _) = Store::open(d.path()).unwrap();
        let state = store.load().unwrap();
        assert_eq!(state.models["digits"].active.as_deref(), Some("3"));
        let (removed, freed) = store.collect_garbage(&state).unwrap();
        assert_eq!((removed, freed), (vec!["digits@1".to_string()], 1000));
        assert!(store
            .version_dir("digits", "2")
            .unwrap()
            .join("model.onnx")
            .is_file());
        assert!(store.disk_usage().unwrap() >= 6000);
    }

    #[test]
    fn an_interrupted_install_is_swept_when_the_store_opens() {
        let d = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(d.path()).unwrap();
        staged(&store, "half-unpacked", 10);
        fs::write(d.path().join(".state.json.tmp-4194305"), b"{\"form").unwrap();
        drop(store);
        let (_, found) = Store::open(d.path()).unwrap();
        assert_eq!(found.staging, vec!["half-unpacked".to_string()]);
        assert_eq!(
            found.temporaries,
            vec![".state.json.tmp-4194305".to_string()]
        );
    }

    #[test]
    fn a_candidate_that_keeps_the_service_from_a_verdict_is_rolled_back() {
        let mut m = ModelState::default();
        m.activate("d", "1", 0).unwrap();
        m.activate("d", "2", 1).unwrap();
        for _ in 0..MAX_BOOTS_ON_PROBATION {
            assert_eq!(m.boot("d", 2), None);
        }
        assert_eq!(m.boot("d", 3).as_deref(), Some("2"));
        assert_eq!(m.serving(), Some("1"));
        assert!(m.bad("2").unwrap().why.contains("crash loop"));
        assert_eq!(m.boot("d", 4), None);
    }

    #[test]
    fn a_second_writer_waits_for_the_first() {
        let d = tempfile::tempdir().unwrap();
        let (first, _) = Store::open(d.path()).unwrap();
        let staging = staged(&first, "in-progress", 10);
        let root = d.path().to_path_buf();
        let second = std::thread::spawn(move || Store::open(&root).map(|(_, r)| r));
        std::thread::sleep(std::time::Duration::from_millis(200));
        // The second writer has not swept the first one's staging.
        assert!(staging.exists());
        assert!(!second.is_finished());
        drop(first);
        let found = second.join().unwrap().unwrap();
        assert_eq!(found.staging, vec!["in-progress".to_string()]);
    }

    #[test]
    fn a_damaged_or_foreign_state_file_is_refused_with_its_path() {
        let d = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(d.path()).unwrap();
        let path = d.path().join("state.json");
        for (text, says) in [
            ("{\"format\": 1, \"mod", "not a valid state file"),
            ("{\"format\": 9, \"models\": {}}", "state format 9"),
            (
                "{\"format\": 1, \"models\": {\"../etc\": {\"active\": \"1\", \"previous\": null, \"factory\": null, \"candidate\": null}}}",
                "not a valid model name",
            ),
        ] {
            fs::write(&path, text).unwrap();
            let e = store.load().unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
            assert!(e.contains("state.json") || says.contains("name"), "{e}");
        }
    }
}
