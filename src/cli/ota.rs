//! `beltbox ota`: installs from signed channels or local packages, the store's state and
//! history, rollback, and the publisher's `channel-init` and `publish` (docs/ota.md).

use std::path::{Path, PathBuf};

use clap::Subcommand;

use beltbox::serve::Config;
use beltbox_core::model::LoadOptions;
use beltbox_ota::channel::Source;
use beltbox_ota::install::{self, InstallError, Installed, Options, Paths, Pulled};
use beltbox_ota::publish::{self, PublishError, PublishOptions, Release};
use beltbox_ota::qualify::Context;
use beltbox_ota::store::{State, Store, StoreError, TransitionError};

const DEFAULT_CONFIG: &str = "/etc/beltbox/beltbox.toml";

#[derive(clap::Args)]
pub struct OtaArgs {
    #[command(subcommand)]
    action: Action,
    /// Config file (default /etc/beltbox/beltbox.toml when it exists): state_dir, [ota]
    /// root, channel and max_package, memory.budget.
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// The state directory, overriding the config (the store is STATE_DIR/ota).
    #[arg(long, value_name = "DIR", global = true)]
    state_dir: Option<PathBuf>,
    /// The trusted root.json, overriding the config's ota.root.
    #[arg(long, value_name = "FILE", global = true)]
    root: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    /// RAM budget the candidate must fit alongside the serving model, overriding the
    /// config's memory.budget (e.g. 512MiB).
    #[arg(long, value_name = "SIZE", global = true)]
    budget: Option<String>,
    /// Directory of bundled packages, overriding the config's models.dir.
    #[arg(long, value_name = "DIR", global = true)]
    models_dir: Option<PathBuf>,
    /// Do not ask the running service to load what changed (it serves it when it next
    /// starts).
    #[arg(long, global = true)]
    no_reload: bool,
}

#[derive(Subcommand)]
enum Action {
    /// Install the newest version of each model a signed channel offers (or of --model).
    Pull {
        /// The channel: an http(s):// URL or a directory (a USB stick); default the
        /// config's ota.channel.
        #[arg(long, value_name = "URL|DIR")]
        channel: Option<String>,
        /// Only this model (repeatable).
        #[arg(long, value_name = "NAME")]
        model: Vec<String>,
        #[command(flatten)]
        technician: Technician,
    },
    /// Install from a channel directory (verified as `pull` does), or a package archive or
    /// directory (needs --unsigned).
    Install {
        path: PathBuf,
        /// Accept a package no channel signed (a technician on site).
        #[arg(long)]
        unsigned: bool,
        #[command(flatten)]
        technician: Technician,
    },
    /// What the store serves, holds and refused.
    Status,
    /// What happened to each model, oldest first.
    History {
        #[arg(long, value_name = "NAME")]
        model: Option<String>,
    },
    /// Roll MODEL back: the candidate on probation, else the active version, is marked bad
    /// and the version before it serves.
    Rollback {
        model: String,
        /// Why (recorded).
        #[arg(long, default_value = "rolled back by a technician")]
        reason: String,
    },
    /// Publisher: create a channel's keys and signed root (keep the root keys offline).
    ChannelInit {
        channel: PathBuf,
        #[arg(long, value_name = "DIR")]
        keys: PathBuf,
        /// Signatures each role needs (and keys generated per role).
        #[arg(long, default_value_t = 1)]
        threshold: u64,
        #[arg(long, default_value_t = 365, value_name = "DAYS")]
        root_expires: u64,
    },
    /// Publisher: rotate the root keys (root version N+1 signed by the old root keys and
    /// the new ones; boxes follow it on their next pull).
    RotateRoot {
        channel: PathBuf,
        /// The current keys (their root-*.pk8 sign the new root).
        #[arg(long, value_name = "DIR")]
        keys: PathBuf,
        /// Where the new root-*.pk8 are written (then move them offline).
        #[arg(long, value_name = "DIR")]
        new_keys: PathBuf,
        #[arg(long, default_value_t = 1)]
        threshold: u64,
        #[arg(long, default_value_t = 365, value_name = "DAYS")]
        root_expires: u64,
    },
    /// Publisher: add model packages to a channel and re-sign it.
    Publish {
        channel: PathBuf,
        /// Package directories.
        #[arg(required = true)]
        packages: Vec<PathBuf>,
        #[arg(long, value_name = "DIR")]
        keys: PathBuf,
        /// Lifetime of targets and snapshot metadata.
        #[arg(long, default_value_t = 90, value_name = "DAYS")]
        expires: u64,
        /// Lifetime of the timestamp: short for an online fleet, long for a USB stick.
        #[arg(long, default_value_t = 7, value_name = "DAYS")]
        timestamp_expires: u64,
        /// Rollout waves FRACTION@HOURS (cumulative share of the fleet, hours after
        /// publishing), e.g. --wave 0.05@0 --wave 0.5@24 --wave 1@72.
        #[arg(long, value_name = "FRACTION@HOURS")]
        wave: Vec<String>,
    },
}

#[derive(clap::Args)]
struct Technician {
    /// Allow a version not newer than the one serving.
    #[arg(long)]
    downgrade: bool,
    /// Accept expired channel metadata (logged and recorded in the history).
    #[arg(long)]
    allow_expired: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum OtaError {
    #[error(transparent)]
    Config(#[from] beltbox::serve::ConfigError),
    #[error(transparent)]
    Install(#[from] InstallError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error("no channel: pass --channel URL|DIR or set ota.channel in the config")]
    NoChannel,
    #[error("{0} is a package, not a channel: pass --unsigned to install it without a signature")]
    Unsigned(PathBuf),
    #[error("--wave `{0}`: expected FRACTION@HOURS with 0 < FRACTION <= 1, e.g. 0.1@24")]
    Wave(String),
    #[error("package {}: {problem}", dir.display())]
    Package { dir: PathBuf, problem: String },
    #[error("--budget: {0}")]
    Budget(String),
    #[error("{0} of the offered installs failed (above)")]
    Partial(usize),
}

impl OtaError {
    pub fn exit_code(&self) -> u8 {
        match self {
            OtaError::Install(e) => e.exit_code(),
            OtaError::Partial(_) | OtaError::Transition(_) => 1,
            _ => 2,
        }
    }
}

fn config(args: &OtaArgs) -> Result<Config, OtaError> {
    let mut cfg = match &args.config {
        Some(p) => Config::load(p)?,
        None if Path::new(DEFAULT_CONFIG).exists() => Config::load(Path::new(DEFAULT_CONFIG))?,
        None => Config::default(),
    };
    if let Some(s) = &args.state_dir {
        cfg.state_dir = s.clone();
    }
    if let Some(r) = &args.root {
        cfg.ota_root = r.clone();
    }
    if let Some(b) = &args.budget {
        let bytes =
            beltbox_core::memory::parse_size(b).map_err(|e| OtaError::Budget(e.to_string()))?;
        cfg.budget = Some((bytes, b.clone()));
    }
    if let Some(d) = &args.models_dir {
        cfg.models_dir = Some(d.clone());
    }
    Ok(cfg)
}

fn options(cfg: &Config, t: &Technician) -> Options {
    Options {
        qualify: Context {
            load: LoadOptions {
                threads: cfg.threads,
                ..LoadOptions::default()
            },
            budget_bytes: cfg.budget.as_ref().map(|b| b.0),
            alongside: None,
            timing_runs: 50,
            shadow: None,
            min_agreement: cfg.probation.min_agreement,
        },
        downgrade: t.downgrade,
        allow_expired: t.allow_expired,
        max_package_bytes: cfg.ota_max_package_bytes,
        models_dir: cfg.models_dir.clone(),
        machine_id: std::fs::read_to_string("/etc/machine-id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
    }
}

pub fn ota_cmd(args: &OtaArgs) -> Result<(), OtaError> {
    if let Action::ChannelInit { .. } | Action::Publish { .. } | Action::RotateRoot { .. } =
        &args.action
    {
        return publisher(args);
    }
    let cfg = config(args)?;
    let paths = Paths::new(&cfg.state_dir, &cfg.ota_root);
    match &args.action {
        Action::Pull {
            channel,
            model,
            technician,
        } => {
            let src = channel
                .clone()
                .or_else(|| cfg.ota_channel.clone())
                .ok_or(OtaError::NoChannel)?;
            pull(
                &cfg,
                &paths,
                &Source::parse(&src).map_err(InstallError::from)?,
                model,
                &options(&cfg, technician),
                args.json,
                !args.no_reload,
            )
        }
        Action::Install {
            path,
            unsigned,
            technician,
        } => {
            let opts = options(&cfg, technician);
            if path.join("metadata").is_dir() {
                return pull(
                    &cfg,
                    &paths,
                    &Source::Dir(path.clone()),
                    &[],
                    &opts,
                    args.json,
                    !args.no_reload,
                );
            }
            if !unsigned {
                return Err(OtaError::Unsigned(path.clone()));
            }
            let done = install::install_local(&paths, path, &opts)?;
            report(&done, args.json);
            tell_service(&cfg, &done.model, !args.no_reload, args.json);
            Ok(())
        }
        Action::Status => {
            let (state, used) = install::status(&paths)?;
            status(&state, used, &paths, args.json);
            Ok(())
        }
        Action::History { model } => {
            let (state, _) = install::status(&paths)?;
            history(&state, model.as_deref(), args.json);
            Ok(())
        }
        Action::Rollback { model, reason } => {
            let (store, _) = Store::open(&paths.ota_dir)?;
            let mut state = store.load()?;
            let ms = state.models.entry(model.clone()).or_default();
            let failed = ms.roll_back(model, reason, beltbox_ota::clock::system_unix_ms())?;
            let now_serving = ms.serving().unwrap_or("the bundled package").to_string();
            store.save(&state)?;
            beltbox_ota::kill::point("rollback");
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"model": model, "rolled_back": failed, "serving": now_serving})
                );
            } else {
                println!("{model}: rolled back {failed} (marked bad: {reason}); {now_serving} is to serve.");
            }
            tell_service(&cfg, model, !args.no_reload, args.json);
            Ok(())
        }
        Action::ChannelInit { .. } | Action::Publish { .. } | Action::RotateRoot { .. } => Ok(()),
    }
}

fn pull(
    cfg: &Config,
    paths: &Paths,
    src: &Source,
    models: &[String],
    opts: &Options,
    json: bool,
    reload: bool,
) -> Result<(), OtaError> {
    let results = install::pull(paths, src, models, opts)?;
    let mut failed = 0;
    let mut out = Vec::new();
    for r in results {
        match r {
            Ok(Pulled::Installed(i)) => {
                if !json {
                    report(&i, false);
                }
                tell_service(cfg, &i.model, reload, json);
                out.push(serde_json::json!({"model": i.model, "version": i.version, "installed": true, "on_probation": i.on_probation, "card": i.card}));
            }
            Ok(Pulled::UpToDate { model, version }) => {
                if !json {
                    println!(
                        "{model}: up to date ({version} serves; the channel has nothing newer)."
                    );
                }
                out.push(serde_json::json!({"model": model, "version": version, "installed": false, "reason": "up_to_date"}));
            }
            Ok(Pulled::WaveNotOpen { model, version }) => {
                if !json {
                    println!("{model}: {version} is published, but this box's rollout wave has not opened yet.");
                }
                out.push(serde_json::json!({"model": model, "version": version, "installed": false, "reason": "wave_not_open"}));
            }
            Ok(Pulled::SkippedBad { model, version }) => {
                if !json {
                    println!(
                        "{model}: {version} was marked bad on this box and is not installed again."
                    );
                }
                out.push(serde_json::json!({"model": model, "version": version, "installed": false, "reason": "bad"}));
            }
            Err(e) => {
                failed += 1;
                eprintln!("error: {e}");
                out.push(serde_json::json!({"error": e.to_string()}));
            }
        }
    }
    if json {
        println!("{}", serde_json::Value::Array(out));
    }
    if failed > 0 {
        return Err(OtaError::Partial(failed));
    }
    Ok(())
}

fn report(i: &Installed, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({"model": i.model, "version": i.version, "on_probation": i.on_probation, "card": i.card, "dir": i.dir})
        );
        return;
    }
    let p95 = i
        .card
        .p95_ms
        .map(|p| format!("{p:.2} ms"))
        .unwrap_or("-".into());
    println!(
        "{} {}: installed and qualified (p95 {p95}); {}.",
        i.model,
        i.version,
        if i.on_probation {
            "it serves on probation"
        } else {
            "it is the model's first version and is active"
        }
    );
    if !i.collected.0.is_empty() {
        println!(
            "  removed {} ({} freed)",
            i.collected.0.join(", "),
            beltbox_core::memory::budget::human(i.collected.1)
        );
    }
}

/// Asks the running service (its first TCP listen address) to load what should serve
/// `model` now: the model-repository extension's load, a live swap. Reports; never fails
/// the command (the store is already right, and the service reads it when it starts).
fn tell_service(cfg: &Config, model: &str, reload: bool, json: bool) {
    if !reload {
        return;
    }
    let Some(addr) = cfg.listen.iter().find_map(|l| match l {
        beltbox::serve::Listen::Tcp(a) => Some(*a),
        beltbox::serve::Listen::Unix(_) => None,
    }) else {
        return;
    };
    let mut c = beltbox_tools::client::Client::new(addr, std::time::Duration::from_secs(120));
    let said = match c.request(
        "POST",
        &format!("/v2/repository/models/{model}/load"),
        &[],
        &[],
    ) {
        Err(_) => format!("the service is not running at {addr}; it serves this when it starts"),
        Ok(r) if r.status == 200 => {
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
            format!(
                "the service at {addr} now serves {} (loaded and self-checked in {:.0} ms, no restart)",
                v["to"].as_str().unwrap_or("?"),
                v["load_ms"].as_f64().unwrap_or(0.0)
            )
        }
        Ok(r) => format!(
            "warning: the service at {addr} kept its serving version: {}",
            String::from_utf8_lossy(&r.body)
        ),
    };
    if json {
        log::info!("{model}: {said}");
    } else {
        println!("{model}: {said}.");
    }
}

fn status(state: &State, used: u64, paths: &Paths, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({"store": paths.ota_dir, "disk_bytes": used, "models": state.models})
        );
        return;
    }
    if state.models.is_empty() {
        println!("No model installed over the air; the service serves its bundled packages.");
    }
    for (name, m) in &state.models {
        let serving = m.serving().unwrap_or("its bundled package");
        let mut line = format!("{name}: serving {serving}");
        if let Some(c) = &m.candidate {
            line += &format!(" (on probation since {})", when(c.since_unix_ms));
        }
        if let Some(p) = &m.previous {
            line += &format!("; previous {p}");
        }
        if let Some(f) = &m.factory {
            line += &format!("; factory {f}");
        }
        println!("{line}.");
        for b in &m.bad {
            println!("  bad: {} ({})", b.version, b.why);
        }
    }
    println!(
        "Store {} uses {}.",
        paths.ota_dir.display(),
        beltbox_core::memory::budget::human(used)
    );
}

fn history(state: &State, model: Option<&str>, json: bool) {
    let rows: Vec<_> = state
        .models
        .iter()
        .filter(|(n, _)| model.is_none_or(|m| m == n.as_str()))
        .flat_map(|(n, m)| m.history.iter().map(move |e| (n, e)))
        .collect();
    if json {
        let v: Vec<_> = rows
            .iter()
            .map(|(n, e)| serde_json::json!({"model": n, "at_unix_ms": e.at_unix_ms, "what": e.what}))
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return;
    }
    if rows.is_empty() {
        println!("Nothing has happened yet.");
    }
    for (n, e) in rows {
        println!("{}  {n}: {}", when(e.at_unix_ms), e.what);
    }
}

fn when(unix_ms: u64) -> String {
    jiff::Timestamp::from_millisecond(i64::try_from(unix_ms).unwrap_or(i64::MAX))
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|_| format!("{unix_ms} ms"))
}

fn publisher(args: &OtaArgs) -> Result<(), OtaError> {
    match &args.action {
        Action::ChannelInit {
            channel,
            keys,
            threshold,
            root_expires,
        } => {
            let root = publish::init(channel, keys, *threshold, *root_expires)?;
            println!(
                "Channel {} created; keys in {} (keep the root-*.pk8 offline).\nShip {} to the boxes as /etc/beltbox/ota/root.json.",
                channel.display(),
                keys.display(),
                root.display()
            );
            Ok(())
        }
        Action::RotateRoot {
            channel,
            keys,
            new_keys,
            threshold,
            root_expires,
        } => {
            let root = publish::rotate_root(channel, keys, new_keys, *threshold, *root_expires)?;
            println!(
                "{} written, signed by the old and the new root keys; the new keys are in {} (keep them offline). Boxes follow it on their next pull.",
                root.display(),
                new_keys.display()
            );
            Ok(())
        }
        Action::Publish {
            channel,
            packages,
            keys,
            expires,
            timestamp_expires,
            wave,
        } => {
            let now = jiff::Timestamp::now().as_second();
            let waves = wave
                .iter()
                .map(|w| parse_wave(w, now))
                .collect::<Result<Vec<_>, _>>()?;
            let mut releases = Vec::new();
            for dir in packages {
                let p = beltbox_core::model::package::Package::open(dir).map_err(|e| {
                    OtaError::Package {
                        dir: dir.clone(),
                        problem: e.to_string(),
                    }
                })?;
                releases.push(Release {
                    dir: dir.clone(),
                    model: p.manifest.name.clone(),
                    version: p.manifest.version.to_string(),
                    waves: waves.clone(),
                });
            }
            let done = publish::publish(
                channel,
                keys,
                &releases,
                &PublishOptions {
                    expires_days: *expires,
                    timestamp_expires_days: *timestamp_expires,
                },
            )?;
            for p in &done {
                if args.json {
                    println!(
                        "{}",
                        serde_json::json!({"target": p.target, "length": p.length, "sha256": p.sha256, "snapshot_version": p.snapshot_version})
                    );
                } else {
                    println!(
                        "published {} ({} bytes, sha256 {}) in snapshot {}",
                        p.target, p.length, p.sha256, p.snapshot_version
                    );
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn parse_wave(s: &str, now: i64) -> Result<beltbox_ota::channel::Wave, OtaError> {
    let bad = || OtaError::Wave(s.to_string());
    let (f, h) = s.split_once('@').ok_or_else(bad)?;
    let fraction: f64 = f.parse().map_err(|_| bad())?;
    let hours: f64 = h.parse().map_err(|_| bad())?;
    let sane = fraction > 0.0 && fraction <= 1.0 && (0.0..=24.0 * 365.0).contains(&hours);
    if !sane {
        return Err(bad());
    }
    Ok(beltbox_ota::channel::Wave {
        share_ppm: (fraction * 1e6).round() as u32,
        opens_unix_s: now + (hours * 3600.0) as i64,
    })
}
