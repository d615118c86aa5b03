//! Live model swaps: the KServe/Triton model-repository extension's `load` and `unload`.
//!
//! `load NAME` serves what should serve for NAME now: the OTA store's version (candidate on
//! probation, else active, else factory), else the bundled package. The swap, in order:
//!
//! 1. **Room first.** The new model's RAM is reserved at the admission gate before it is
//!    built: its qualification card's planned bytes when the store has one, else the
//!    serving model's. During the swap both models are resident (qualification checked
//!    that they fit together); requests wait or get 503 for the room the swap holds, the
//!    heap stays within the budget.
//! 2. **Build and golden self-check** on this thread, while the old model serves.
//! 3. **Switch**: one write of the model list. A request looks its model up once, at
//!    admission, and holds it (`Arc`) until answered, so in-flight requests finish on the
//!    old model and new ones go to the new: no request fails, none is retried.
//! 4. **Retire**: when the last in-flight request lets go of the old model it is dropped;
//!    the gate's limit moves by the difference of the two models and the swap's
//!    reservation is released.
//!
//! A load that fails at any step changes nothing: the old model keeps serving (Triton's
//! rule for a failed reload).

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use beltbox_core::memory::budget::human;
use beltbox_core::model::{self, LoadOptions};

use super::fallback::{Origin, Source};
use super::probation::{self, Baseline, Reason, Verdict, Watch};
use super::{ServedModel, Shared};

#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    #[error("model `{0}` is not configured on this service (models.load)")]
    Unknown(String),
    #[error(
        "model `{0}`: no package found (neither the OTA store nor the bundled packages have it)"
    )]
    NotFound(String),
    #[error("model `{name}`: {why}; the serving version is unchanged")]
    Load { name: String, why: String },
    #[error("model `{name}`: no room to load {need} beside the serving model within {wait_s} s; the serving version is unchanged")]
    NoRoom {
        name: String,
        need: String,
        wait_s: u64,
    },
}

/// What a load did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Swapped {
    pub name: String,
    pub from: Option<String>,
    pub to: String,
    /// Build + self-check, ms.
    pub load_ms: f64,
    /// The switch itself, ms.
    pub switch_ms: f64,
}

/// The package directory that should serve `name` now, and which link of the fallback
/// chain it is.
fn wanted(shared: &Shared, name: &str) -> Result<(PathBuf, Source), SwapError> {
    let arg = shared
        .configured
        .get()
        .and_then(|c| c.iter().find(|(n, _)| n == name))
        .map(|(_, a)| a.clone())
        .ok_or_else(|| SwapError::Unknown(name.to_string()))?;
    if let Some(found) = super::ota_version(&shared.cfg, name) {
        return Ok(found);
    }
    beltbox_core::model::package::resolve(&arg, shared.cfg.models_dir.as_deref())
        .map(|d| (d, Source::Bundled))
        .ok_or_else(|| SwapError::NotFound(name.to_string()))
}

/// Swaps `name` to the version that should serve now (module docs). A no-op when it
/// already serves.
pub fn load(shared: &Arc<Shared>, name: &str) -> Result<Swapped, SwapError> {
    // One swap at a time; a second waits for the first (a technician's load during a
    // probation rollback).
    let _one = shared.swap_lock.lock().unwrap_or_else(|p| p.into_inner());
    let (dir, source) = wanted(shared, name)?;
    let old = shared.find(name);
    if let Some(o) = &old {
        if o.model.package.dir == dir {
            return Ok(Swapped {
                name: name.into(),
                from: Some(o.version()),
                to: o.version(),
                load_ms: 0.0,
                switch_ms: 0.0,
            });
        }
    }
    let fail = |why: String| {
        shared.metrics.swap_failures.fetch_add(1, Relaxed);
        SwapError::Load {
            name: name.into(),
            why,
        }
    };
    // 1. Room first.
    let guess = card_plan_bytes(&dir)
        .or_else(|| old.as_ref().map(|o| o.model.plan.model_bytes()))
        .unwrap_or(0);
    let wait = Duration::from_millis(shared.cfg.request_timeout_ms);
    let gate = shared.gate.get().cloned();
    let mut held = match &gate {
        Some(g) => Some(
            g.reserve_until(guess, Instant::now() + wait)
                .ok_or_else(|| {
                    shared.metrics.swap_failures.fetch_add(1, Relaxed);
                    SwapError::NoRoom {
                        name: name.into(),
                        need: human(guess),
                        wait_s: wait.as_secs(),
                    }
                })?,
        ),
        None => None,
    };
    // 2. Build and self-check while the old model serves.
    let t0 = Instant::now();
    let opts = LoadOptions {
        threads: shared.cfg.threads,
        ..LoadOptions::default()
    };
    let built = model::build(&dir, &opts, None).map_err(|e| fail(e.to_string()))?;
    if built.package.manifest.name != name {
        return Err(fail(format!(
            "{} holds model `{}`",
            dir.display(),
            built.package.manifest.name
        )));
    }
    let new_bytes = built.plan.model_bytes();
    if let Some(r) = held.as_mut() {
        // The plan is exact now; the gap must fit at once (the guess was short) or the
        // swap gives way.
        if !r.try_resize_to(new_bytes.max(r.bytes())) {
            return Err(fail(format!(
                "its plan ({}) does not fit beside the serving model now",
                human(new_bytes)
            )));
        }
    }
    let fresh = built.self_check().map_err(|e| fail(e.to_string()))?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let to = fresh.manifest().version.to_string();
    let new = Arc::new(ServedModel::new(
        fresh,
        Origin {
            source,
            passed_over: Vec::new(),
        },
    ));
    // 3. Switch.
    let t1 = Instant::now();
    {
        let mut models = shared.models.write().unwrap_or_else(|p| p.into_inner());
        match models.iter().position(|m| m.name() == name) {
            Some(i) => models[i] = Arc::clone(&new),
            None => models.push(Arc::clone(&new)),
        }
    }
    let switch_ms = t1.elapsed().as_secs_f64() * 1e3;
    // Stop watching what no longer serves; watch the store's candidate when it is this.
    if let Ok(mut w) = shared.watches.lock() {
        w.retain(|x| x.model.name() != name);
    }
    if store_candidate(&shared.cfg, name).as_deref() == Some(to.as_str()) {
        let baseline = old.as_ref().map(|o| {
            o.tally
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .baseline(&o.model.labels, &new.model)
        });
        watch(shared, &new, baseline);
    }
    shared.metrics.swaps.fetch_add(1, Relaxed);
    let from = old.as_ref().map(|o| o.version());
    log::info!(
        "{name}: now serving {to} (was {}); built and self-checked in {load_ms:.1} ms",
        from.as_deref().unwrap_or("not loaded")
    );
    // 4. Retire the old model once the requests holding it are answered.
    let old_bytes = old
        .as_ref()
        .map(|o| o.model.plan.model_bytes())
        .unwrap_or(0);
    if let Some(o) = old {
        retire(o, Duration::from_millis(shared.cfg.request_timeout_ms * 2));
    }
    if let Some(g) = &gate {
        if g.limit() != u64::MAX {
            g.set_limit((g.limit() + old_bytes).saturating_sub(new_bytes));
        }
    }
    drop(held);
    Ok(Swapped {
        name: name.into(),
        from,
        to,
        load_ms,
        switch_ms,
    })
}

/// Waits until nothing but `old` itself holds the model, then drops it.
fn retire(old: Arc<ServedModel>, patience: Duration) {
    let until = Instant::now() + patience;
    while Arc::strong_count(&old) > 1 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    if Arc::strong_count(&old) > 1 {
        log::warn!(
            "{} {}: still held by a request after {} ms; it is freed when that request ends",
            old.name(),
            old.version(),
            patience.as_millis()
        );
    }
}

/// Stops serving `name` (its requests answer 404 until it is loaded again). In-flight
/// requests finish on it.
pub fn unload(shared: &Arc<Shared>, name: &str) -> Result<(), SwapError> {
    let _one = shared.swap_lock.lock().unwrap_or_else(|p| p.into_inner());
    let old = {
        let mut models = shared.models.write().unwrap_or_else(|p| p.into_inner());
        let i = models
            .iter()
            .position(|m| m.name() == name)
            .ok_or_else(|| SwapError::Unknown(name.to_string()))?;
        models.remove(i)
    };
    log::info!("{name}: unloaded {}", old.version());
    let bytes = old.model.plan.model_bytes();
    retire(
        old,
        Duration::from_millis(shared.cfg.request_timeout_ms * 2),
    );
    if let Some(g) = shared.gate.get() {
        if g.limit() != u64::MAX {
            g.set_limit(g.limit().saturating_add(bytes));
        }
    }
    Ok(())
}

/// The planned bytes on the qualification card kept beside a store version
/// (`ota/cards/NAME@VERSION.json` for `ota/versions/NAME@VERSION`).
fn card_plan_bytes(dir: &std::path::Path) -> Option<u64> {
    let name = dir.file_name()?.to_str()?;
    let card = dir
        .parent()?
        .parent()?
        .join("cards")
        .join(format!("{name}.json"));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(card).ok()?).ok()?;
    v["plan_bytes"].as_u64()
}

/// The loop breaker: the service is starting; if the store has a candidate on probation
/// for `name`, the start is counted, and a candidate started with too often without a
/// verdict is rolled back before it loads (`ModelState::boot`). Takes the store's lock
/// only when there is a candidate.
pub(crate) fn count_boot(shared: &Shared, name: &str) {
    let cfg = &shared.cfg;
    if store_candidate(cfg, name).is_none() {
        return;
    }
    let root = cfg.state_dir.join("ota");
    let result = (|| -> Result<Option<String>, String> {
        let (store, _) = beltbox_ota::store::Store::open(&root).map_err(|e| e.to_string())?;
        let mut state = store.load().map_err(|e| e.to_string())?;
        let now = beltbox_ota::clock::system_unix_ms();
        let Some(ms) = state.models.get_mut(name) else {
            return Ok(None);
        };
        let rolled = ms.boot(name, now);
        store.save(&state).map_err(|e| e.to_string())?;
        Ok(rolled)
    })();
    match result {
        Ok(Some(v)) => {
            shared.metrics.rolled_back(Reason::CrashLoop);
            log::error!(
                "{name} {v}: the service keeps starting with it on probation without a verdict; rolled back"
            )
        }
        Ok(None) => {}
        Err(e) => log::error!("{name}: cannot count this start in the OTA store: {e}"),
    }
}

/// The version the OTA store has on probation for `name`, if any.
pub(crate) fn store_candidate(cfg: &super::Config, name: &str) -> Option<String> {
    let store = beltbox_ota::store::Store::reader(&cfg.state_dir.join("ota"));
    let state = store.load().ok()?;
    state
        .models
        .get(name)?
        .candidate
        .as_ref()
        .map(|c| c.version.clone())
}

/// Where the previous version's top-1 distribution is kept while `name@version` is on
/// probation, so that a service restarted mid-probation (a crash, a power cut) still judges
/// agreement against what served before it.
fn baseline_path(cfg: &super::Config, name: &str, version: &str) -> PathBuf {
    // The store collects it when `version` is no longer on probation.
    beltbox_ota::store::Store::reader(&cfg.state_dir.join("ota"))
        .probation_dir()
        .join(format!("{name}@{version}.baseline.json"))
}

/// Keeps `baseline` for a restart (best effort: without it a restart judges no agreement).
/// Written twice, the copy first (`durable::backup_of`): storage that loses the tail of the
/// last file written in a power cut still has one whole copy.
fn keep_baseline(cfg: &super::Config, name: &str, version: &str, baseline: &Baseline) {
    use beltbox_ota::durable;
    let path = baseline_path(cfg, name, version);
    let written = serde_json::to_vec(baseline)
        .map_err(|e| e.to_string())
        .and_then(|bytes| {
            if let Some(dir) = path.parent() {
                durable::create_dir_durable(dir).map_err(|e| e.to_string())?;
            }
            durable::write_atomic(&durable::backup_of(&path), &bytes)
                .and_then(|()| durable::write_atomic(&path, &bytes))
                .map_err(|e| e.to_string())
        });
    if let Err(e) = written {
        log::warn!("{name} {version}: cannot keep the probation baseline: {e}");
    }
}

/// The baseline kept for `name@version`, if a readable copy is there.
fn kept_baseline(cfg: &super::Config, name: &str, version: &str) -> Option<Baseline> {
    let one = |p: &std::path::Path| -> Result<Option<Baseline>, String> {
        match std::fs::read(p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| format!("{}: {e}", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", p.display())),
        }
    };
    match beltbox_ota::durable::read_kept(&baseline_path(cfg, name, version), one) {
        Ok(b) => b,
        Err(e) => {
            log::warn!(
                "{name} {version}: probation baseline unreadable ({e}); agreement is not judged"
            );
            None
        }
    }
}

/// Starts watching `m` on probation. Without a `baseline` (the service restarted while
/// `m` was on probation), the one kept when its probation began is used.
pub(crate) fn watch(shared: &Shared, m: &Arc<ServedModel>, baseline: Option<Baseline>) {
    let baseline = match baseline {
        Some(b) => {
            keep_baseline(&shared.cfg, m.name(), &m.version(), &b);
            Some(b)
        }
        None => kept_baseline(&shared.cfg, m.name(), &m.version()),
    };
    log::info!(
        "{} {}: on probation ({} requests or {} s)",
        m.name(),
        m.version(),
        shared.cfg.probation.requests,
        shared.cfg.probation.max_s
    );
    if let Ok(mut w) = shared.watches.lock() {
        w.push(Watch {
            model: Arc::clone(m),
            baseline,
            since: Instant::now(),
        });
    }
}

/// The supervisor's probation step: judges every watch; a verdict is carried out on its
/// own thread (it takes the store's lock and may swap), never on the supervisor's.
pub(crate) fn judge_watches(shared: &Arc<Shared>) {
    // Name and version only leave the lock: a verdict's thread must not keep the model
    // alive (the swap retires it when nothing holds it).
    let verdicts: Vec<(String, String, Verdict)> = {
        let Ok(mut w) = shared.watches.lock() else {
            return;
        };
        let mut out = Vec::new();
        w.retain(
            |x| match probation::judge(x, &shared.cfg.probation, x.since.elapsed()) {
                Verdict::Continue => {
                    beltbox_ota::kill::point("probation");
                    true
                }
                v => {
                    out.push((x.model.name().to_string(), x.model.version(), v));
                    false
                }
            },
        );
        out
    };
    for (name, version, v) in verdicts {
        let s = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name("beltbox-probation".into())
            .spawn(move || settle(&s, &name, &version, v));
        if let Err(e) = spawned {
            log::error!("cannot start the probation verdict's thread: {e}");
        }
    }
}

/// Commits the candidate, or rolls it back in the store and swaps live to what serves
/// after it.
fn settle(shared: &Arc<Shared>, name: &str, version: &str, v: Verdict) {
    let (name, version) = (name.to_string(), version.to_string());
    let root = shared.cfg.state_dir.join("ota");
    let result = (|| -> Result<(), String> {
        let (store, _) = beltbox_ota::store::Store::open(&root).map_err(|e| e.to_string())?;
        let mut state = store.load().map_err(|e| e.to_string())?;
        beltbox_ota::kill::point("verdict");
        let ms = state.models.entry(name.clone()).or_default();
        if ms.candidate.as_ref().map(|c| c.version.as_str()) != Some(version.as_str()) {
            return Err(format!("the store's candidate is no longer {version}"));
        }
        let now = beltbox_ota::clock::system_unix_ms();
        match &v {
            Verdict::Pass(why) => {
                ms.commit(&name, now).map_err(|e| e.to_string())?;
                ms.note(now, format!("{version}: {why}"));
                store.save(&state).map_err(|e| e.to_string())?;
                beltbox_ota::kill::point("commit");
                shared.metrics.ota_commits.fetch_add(1, Relaxed);
                log::info!("{name} {version}: {why}; committed");
            }
            Verdict::Fail(failure) => {
                let why = format!("failed probation: {}", failure.why);
                ms.roll_back(&name, &why, now).map_err(|e| e.to_string())?;
                store.save(&state).map_err(|e| e.to_string())?;
                beltbox_ota::kill::point("rollback");
                shared.metrics.rolled_back(failure.reason);
                log::warn!("{name} {version}: {why}; rolling back");
                drop(store);
                let back = load(shared, &name).map_err(|e| e.to_string())?;
                beltbox_ota::kill::point("rolled-back");
                log::warn!("{name}: rolled back live to {}", back.to);
                let (store, _) =
                    beltbox_ota::store::Store::open(&root).map_err(|e| e.to_string())?;
                let state = store.load().map_err(|e| e.to_string())?;
                store.collect_garbage(&state).map_err(|e| e.to_string())?;
            }
            Verdict::Continue => {}
        }
        Ok(())
    })();
    if let Err(e) = result {
        log::error!("{name} {version}: probation verdict not carried out: {e}");
    }
}
