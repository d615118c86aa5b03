//! The service (`beltbox run`): KServe v2 over HTTP/1.1 (hyper) on TCP and/or a unix
//! socket, a bounded queue in front of a fixed pool of inference workers, RAM admission,
//! Prometheus metrics, and the systemd protocol (READY, STATUS, WATCHDOG, STOPPING).
//!
//! | module | concern | I/O? |
//! |---|---|---|
//! | [`config`] | `beltbox.toml`, strict, errors name the key | file |
//! | [`http`] | around hyper: bodies under the memory gate, Content-Encoding, responses | bytes |
//! | [`kserve`] | the protocol: decode requests, map to the model input, encode responses | no |
//! | [`metrics`] | counters, histograms, Prometheus text | no |
//! | [`systemd`] | sd_notify and the watchdog interval | socket |
//! | [`conn`] | the HTTP runtime: listeners, connection caps, graceful drain | socket |
//! | [`router`] | the routes: KServe v2 endpoints, `/metrics`; inference admission and queueing | no |
//! | [`supervisor`] | watchdog pings, thermal sample, `STATUS=` every second | no |
//! | [`fallback`] | the chain a model serves from at start: candidate, active, previous, factory, bundled | files |
//! | [`swap`] | live model swaps: the model-repository extension's load and unload | model |
//! | [`poll`] | the service polling its OTA channel (an `ota pull` child) and swapping live | process |
//! | [`probation`] | a candidate version watched on real traffic, then committed or rolled back | no |
//! | [`recent`] | a few recent frames per model kept on disk for OTA shadow runs | files |
//! | [`lowconf`] | answers under the manifest's `low_confidence`: flagged, re-run on a secondary, input kept | no |
//! | [`outbox`] | every result appended to the durable spool before its answer; the uploader; the acknowledgement contract | files, network (via `beltbox-spool`) |
//! | [`worker`] | the queue and the inference workers | model |
//! | [`retention`] | glibc's allocator kept from retaining freed request memory | — |
//!
//! Threads: one HTTP thread (a current-thread tokio runtime: every listener and every
//! connection are tasks on it), `workers` inference workers, one supervisor (watchdog,
//! thermal, status), one signal thread. A request's life: the HTTP thread reads its body
//! (reserving memory as bytes arrive), decodes it, reserves what its tensors and their
//! preprocessing take and queues it (503 when full); a worker preprocesses, runs and
//! postprocesses it; the HTTP thread encodes and writes the answer.

pub mod config;
mod conn;
mod fallback;
pub mod http;
pub mod kserve;
mod lowconf;
pub mod metrics;
mod outbox;
mod poll;
mod probation;
mod recent;
mod retention;
mod router;
mod supervisor;
mod swap;
pub mod systemd;
mod worker;

use std::net::TcpListener;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use beltbox_core::board;
use beltbox_core::memory::admission::Gate;
use beltbox_core::memory::budget::human;
use beltbox_core::memory::{self, Budget, BudgetSource, Plan};
use beltbox_core::model::{self, LoadOptions, Model, ModelError};
use beltbox_core::thermal::{LatencyWindows, WindowConfig};

pub use config::{Config, ConfigError, Listen};
pub use conn::CONNECTION_BYTES;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("model package `{0}` not found: give a package directory or the name of one in models.dir, $BELTBOX_MODELS_DIR, ./models or /usr/share/beltbox/models")]
    ModelNotFound(String),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("two loaded packages are both named `{0}`; model names must be unique")]
    DuplicateModel(String),
    #[error(transparent)]
    OverBudget(Box<OverBudget>),
    #[error("board: {0}")]
    Board(#[from] board::BoardError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("{0}: the OTA store names this version but its directory is missing")]
    MissingVersion(String),
    #[error("{}: holds model `{found}`, not `{wanted}`", dir.display())]
    WrongModel {
        dir: PathBuf,
        found: String,
        wanted: String,
    },
    #[error("{0}: another process is already serving on this socket")]
    SocketInUse(PathBuf),
    #[error("cannot install the SIGTERM handler: {0}")]
    Signals(std::io::Error),
}

/// A model (or the first request) does not fit the RAM budget.
#[derive(Debug, thiserror::Error)]
#[error("{what} needs {need} but the budget is {budget} (from {bound_by}); plan: {detail}")]
pub struct OverBudget {
    pub what: String,
    pub need: String,
    pub budget: String,
    pub bound_by: BudgetSource,
    pub detail: String,
}

impl ServeError {
    /// 0 ok, 1 check failed, 2 usage or input error, 3 over budget.
    pub fn exit_code(&self) -> u8 {
        match self {
            ServeError::OverBudget(_) => 3,
            ServeError::Model(e) if !e.is_input_error() => 1,
            ServeError::Signals(_) => 1,
            _ => 2,
        }
    }
}

/// A model being served (its RAM plan is `model.plan`), with its counters.
pub struct ServedModel {
    pub model: Model,
    pub metrics: metrics::ModelMetrics,
    /// Recent answers, for probation (`probation`).
    pub tally: Mutex<probation::Tally>,
    /// When its last frame was kept for shadow runs (`recent`).
    pub frame_at_ms: AtomicU64,
    /// Which link of the fallback chain serves, and why the ones before it did not.
    pub origin: fallback::Origin,
    /// The low-confidence path's counters (`lowconf`).
    pub low_confidence: lowconf::Counters,
}

impl ServedModel {
    pub fn new(model: Model, origin: fallback::Origin) -> ServedModel {
        ServedModel {
            model,
            origin,
            low_confidence: lowconf::Counters::default(),
            metrics: metrics::ModelMetrics::default(),
            tally: Mutex::new(probation::Tally::default()),
            frame_at_ms: AtomicU64::new(0),
        }
    }

    pub fn name(&self) -> &str {
        self.model.name()
    }

    pub fn version(&self) -> String {
        self.model.manifest().version.to_string()
    }
}

/// State every thread sees.
pub(crate) struct Shared {
    pub cfg: Config,
    pub models: RwLock<Vec<Arc<ServedModel>>>,
    pub ready: AtomicBool,
    pub stopping: AtomicBool,
    pub workers_stop: AtomicBool,
    pub metrics: metrics::ServerMetrics,
    pub gate: OnceLock<Arc<Gate>>,
    pub budget: OnceLock<Option<Budget>>,
    pub queue: SyncSender<worker::Job>,
    pub started: Instant,
    pub windows: Mutex<LatencyWindows>,
    /// Latest throttle assessment, refreshed by the supervisor each second.
    pub throttle: Mutex<Option<beltbox_core::thermal::ThrottleStatus>>,
    /// Per worker: ms since `started` of its last sign of life.
    pub heartbeats: Vec<AtomicU64>,
    pub notifier: systemd::Notifier,
    /// Open connections per peer (the per-peer cap).
    pub peers: conn::Peers,
    /// Requests in admission, oldest first (who may wait for memory).
    pub admissions: http::Admissions,
    /// Turned true once to stop: the HTTP side closes its listeners and drains.
    pub stop: tokio::sync::watch::Sender<bool>,
    /// Each configured model's manifest name and its `models.load` entry (a name or a
    /// directory), for loads after an unload.
    pub configured: OnceLock<Vec<(String, String)>>,
    /// One model load or unload at a time.
    pub swap_lock: Mutex<()>,
    /// Candidates on probation.
    pub watches: probation::Watches,
    /// The recent-frames writer; `None` when `ota.recent_frames = 0`.
    pub recent: Option<recent::Recent>,
    /// The result spool and its uploader; `None` when `spool.enabled = false`.
    pub outbox: Option<outbox::Outbox>,
}

impl Shared {
    pub fn now_ms(&self) -> u64 {
        beltbox_core::timing::ms_since(self.started)
    }

    pub fn models(&self) -> Vec<Arc<ServedModel>> {
        self.models
            .read()
            .map(|m| m.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    pub fn find(&self, name: &str) -> Option<Arc<ServedModel>> {
        self.models().into_iter().find(|m| m.name() == name)
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Relaxed) && !self.stopping.load(Relaxed)
    }

    /// Starts the drain: not ready any more, listeners close, connections finish.
    fn begin_stop(&self) {
        self.stopping.store(true, Relaxed);
        self.stop.send_replace(true);
    }
}

fn bind(l: &Listen) -> Result<conn::Listener, ServeError> {
    let bind_err = |source| ServeError::Bind {
        addr: l.to_string(),
        source,
    };
    match l {
        Listen::Tcp(addr) => TcpListener::bind(addr)
            .map(conn::Listener::Tcp)
            .map_err(bind_err),
        Listen::Unix(path) => {
            if path.exists() {
                // A live server answers a connect; a stale socket file from a crash
                // does not and is replaced.
                if UnixStream::connect(path).is_ok() {
                    return Err(ServeError::SocketInUse(path.clone()));
                }
                std::fs::remove_file(path).map_err(bind_err)?;
            }
            UnixListener::bind(path)
                .map(|s| conn::Listener::Unix(s, path.clone()))
                .map_err(bind_err)
        }
    }
}

/// The service's own budget: the operator's (`memory.budget`, `--budget`) or the board
/// profile's AI share, the stricter of the two. It bounds the models together and every
/// request buffer; each model's manifest `ram_mib` bounds that model alone.
fn service_budget(cfg: &Config) -> Result<Option<Budget>, ServeError> {
    let operator = cfg
        .budget
        .as_ref()
        .map(|(bytes, text)| Budget::new(*bytes, BudgetSource::Config { text: text.clone() }));
    let board = if cfg.board == "auto" {
        board::identify()?.profile
    } else {
        Some(board::profile(&cfg.board)?)
    };
    let all = memory::budget::applicable(operator, &[], board.as_ref());
    Ok(memory::strictest(&all).cloned())
}

fn over(what: String, need: u64, b: &Budget, detail: String) -> ServeError {
    ServeError::OverBudget(Box::new(OverBudget {
        what,
        need: human(need),
        budget: human(b.bytes),
        bound_by: b.source.clone(),
        detail,
    }))
}

/// What the models loaded so far, plus the next one, need together: the sum of their
/// heaps, the runtime once, and one in-flight request per extra worker.
#[derive(Default, Clone)]
struct Tally {
    models: usize,
    heap: u64,
    runtime: u64,
    per_request: u64,
}

impl Tally {
    /// Adds `plan`, refusing it when the model alone exceeds its manifest's budget or
    /// all models together exceed the service's.
    fn admit(
        &mut self,
        plan: &Plan,
        model_budget: &Budget,
        service: Option<&Budget>,
        workers: usize,
    ) -> Result<(), ServeError> {
        let extra = workers.saturating_sub(1) as u64;
        log::info!(
            "RAM plan of {} {}: {} (weights {}, activations {}, per request {})",
            plan.model,
            plan.version,
            human(plan.total_bytes()),
            human(plan.weights_bytes),
            human(plan.activation_bytes),
            human(plan.per_request_bytes())
        );
        let alone = plan.model_bytes() + plan.runtime_bytes + extra * plan.per_request_bytes();
        if alone > model_budget.bytes {
            return Err(over(
                format!("loading {} with {workers} worker(s)", plan.model),
                alone,
                model_budget,
                format!(
                    "model heap {} + runtime {} + {extra} extra worker(s) x {} per request; run `beltbox plan --model {}` for the breakdown",
                    human(plan.model_bytes()),
                    human(plan.runtime_bytes),
                    human(plan.per_request_bytes()),
                    plan.model
                ),
            ));
        }
        let heap = self.heap + plan.model_bytes();
        let runtime = self.runtime.max(plan.runtime_bytes);
        let per_request = self.per_request.max(plan.per_request_bytes());
        let need = heap + runtime + extra * per_request;
        if let Some(b) = service {
            if need > b.bytes {
                return Err(over(
                    format!("loading {} (with {} model(s) before it and {workers} worker(s))", plan.model, self.models),
                    need,
                    b,
                    format!(
                        "model heap {} + runtime {} + {extra} extra worker(s) x {} per request; run `beltbox plan --model {}` for the breakdown",
                        human(heap),
                        human(runtime),
                        human(per_request),
                        plan.model
                    ),
                ));
            }
        }
        *self = Tally {
            models: self.models + 1,
            heap,
            runtime,
            per_request,
        };
        Ok(())
    }
}

/// Runs the service until SIGTERM/SIGINT, then drains and returns.
pub fn run(cfg: Config) -> Result<(), ServeError> {
    if !retention::bound_allocator_retention(cfg.strict_rss) {
        log::warn!("cannot bound the allocator's retention (not glibc?): RSS may exceed the RAM budget under large requests");
    }
    let notifier = systemd::Notifier::from_env();
    notifier.status("starting: binding listeners");
    // Bind first: a taken port fails in milliseconds, not after a model load.
    let listeners: Vec<conn::Listener> = cfg.listen.iter().map(bind).collect::<Result<_, _>>()?;
    for l in &listeners {
        match l {
            conn::Listener::Tcp(t) => match t.local_addr() {
                Ok(a) => log::info!("listening on http://{a}"),
                Err(e) => log::warn!("listening on a TCP socket whose address is unknown: {e}"),
            },
            conn::Listener::Unix(_, p) => log::info!("listening on unix:{}", p.display()),
        }
    }

    let (tx, rx) = std::sync::mpsc::sync_channel(cfg.queue_depth);
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let drain = Duration::from_millis(cfg.request_timeout_ms + 5_000);
    let recent = recent::Recent::start(&cfg);
    let outbox = outbox::Outbox::start(&cfg, &board_name(&cfg));
    let shared = Arc::new(Shared {
        heartbeats: (0..cfg.workers).map(|_| AtomicU64::new(0)).collect(),
        cfg,
        models: RwLock::new(Vec::new()),
        ready: AtomicBool::new(false),
        stopping: AtomicBool::new(false),
        workers_stop: AtomicBool::new(false),
        metrics: metrics::ServerMetrics::default(),
        gate: OnceLock::new(),
        budget: OnceLock::new(),
        queue: tx,
        started: Instant::now(),
        windows: Mutex::new(LatencyWindows::new(WindowConfig::default())),
        throttle: Mutex::new(None),
        notifier,
        peers: conn::Peers::default(),
        admissions: http::Admissions::default(),
        stop,
        configured: OnceLock::new(),
        swap_lock: Mutex::new(()),
        watches: Mutex::new(Vec::new()),
        recent,
        outbox,
    });
    let signals = install_signals(&shared)?;
    // Serve from the start: health and metrics answer while models load (ready = 503).
    let http = {
        let s = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("beltbox-http".into())
            .spawn(move || conn::run(s, listeners, stop_rx, drain))
            .map_err(ServeError::Signals)?
    };

    let workers = match load_models(&shared) {
        Ok(()) => {
            let rx = Arc::new(Mutex::new(rx));
            let workers = worker::start(&shared, rx).map_err(ServeError::Signals)?;
            let sup = supervisor::start(&shared).map_err(ServeError::Signals)?;
            // Not joined at shutdown: it sleeps in short steps and ends with the workers;
            // an install it started finishes (or is swept) on its own.
            let _poller = poll::start(&shared);
            // From here the high-water mark measures serving, not loading: that is
            // what admission control bounds (and what /metrics reports as the peak).
            memory::alloc::reset_peak();
            shared.ready.store(true, Relaxed);
            let names: Vec<String> = shared
                .models()
                .iter()
                .map(|m| match m.origin.passed_over.is_empty() {
                    true => format!("{} {}", m.name(), m.version()),
                    false => format!(
                        "{} {} (FALLBACK: {})",
                        m.name(),
                        m.version(),
                        m.origin.describe()
                    ),
                })
                .collect();
            let listen: Vec<String> = shared.cfg.listen.iter().map(|l| l.to_string()).collect();
            let msg = format!("serving {} on {}", names.join(", "), listen.join(", "));
            log::info!("ready: {msg}");
            shared.notifier.notify(&format!("READY=1\nSTATUS={msg}"));
            (workers, sup)
        }
        Err(e) => {
            shared.begin_stop();
            let _ = http.join();
            if let Some(o) = &shared.outbox {
                o.close();
            }
            return Err(e);
        }
    };

    let _ = signals.join();
    // Stopping: the HTTP side has closed its listeners; it returns once the open
    // connections have finished their requests (or the drain period is over).
    match http.join() {
        Ok(Err(e)) => log::error!("the HTTP runtime failed: {e}"),
        Err(_) => log::error!("the HTTP thread panicked"),
        Ok(Ok(())) => {}
    }
    shared.workers_stop.store(true, Relaxed);
    let (workers, sup) = workers;
    for w in workers {
        let _ = w.join();
    }
    let _ = sup.join();
    // Every answer has been written: what is left to sync is synced, the uploader stops
    // (what it had not confirmed is sent again on the next start).
    if let Some(o) = &shared.outbox {
        o.close();
    }
    let served: u64 = shared
        .models()
        .iter()
        .map(|m| m.metrics.count(metrics::Outcome::Ok))
        .sum();
    log::info!("stopped after {served} successful inference(s)");
    Ok(())
}

/// The board named in result records: the configured profile, or the one identified.
fn board_name(cfg: &Config) -> String {
    if cfg.board != "auto" {
        return cfg.board.clone();
    }
    match board::identify() {
        Ok(id) => id
            .profile
            .map_or_else(|| "unknown".into(), |p| p.name.to_string()),
        Err(_) => "unknown".into(),
    }
}

fn install_signals(shared: &Arc<Shared>) -> Result<std::thread::JoinHandle<()>, ServeError> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).map_err(ServeError::Signals)?;
    let shared = Arc::clone(shared);
    std::thread::Builder::new()
        .name("beltbox-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                log::info!("signal {sig}: closing the listeners, draining in-flight requests, then stopping");
                shared.notifier.notify("STOPPING=1\nSTATUS=draining");
                shared.begin_stop();
            }
        })
        .map_err(ServeError::Signals)
}

/// The directory of the version the OTA store serves for `name` (`state_dir/ota`), if a
/// model by that name was installed over the air. A store that cannot be read is logged
/// and ignored: the bundled packages still serve.
pub(crate) fn ota_version(cfg: &Config, name: &str) -> Option<(PathBuf, fallback::Source)> {
    if name.contains('/') {
        return None;
    }
    let store = beltbox_ota::store::Store::reader(&cfg.state_dir.join("ota"));
    let state = match store.load() {
        Ok(s) => s,
        Err(e) => {
            log::error!("OTA store: {e}; serving the bundled packages");
            return None;
        }
    };
    let ms = state.models.get(name)?;
    let version = ms.serving()?.to_string();
    let source = if ms.candidate.as_ref().is_some_and(|c| c.version == version) {
        fallback::Source::Candidate
    } else if ms.active.as_deref() == Some(&version) {
        fallback::Source::Active
    } else {
        fallback::Source::Factory
    };
    let dir = store.version_dir(name, &version).ok()?;
    if dir.is_dir() {
        log::info!(
            "{name}: serving {version} from the OTA store ({})",
            dir.display()
        );
        Some((dir, source))
    } else {
        log::error!(
            "{name}: the OTA store names {version} but {} is missing",
            dir.display()
        );
        None
    }
}

/// Serves `arg` from the first link of its fallback chain that builds (verified), fits
/// its own and the service's budget (before its golden self-check runs anything) and
/// passes the self-check. Every link passed over is logged and kept in the origin. When
/// no link serves, the last link's error is returned (the bundled package's: what a box
/// without OTA history has always reported).
fn serve_first(
    shared: &Shared,
    arg: &str,
    links: &[fallback::Link],
    opts: &LoadOptions,
    tally: &mut Tally,
    service: Option<&Budget>,
) -> Result<(Model, fallback::Origin), ServeError> {
    let cfg = &shared.cfg;
    let mut passed_over = Vec::new();
    let mut last = ServeError::ModelNotFound(arg.to_string());
    for link in links {
        let attempt = (|| -> Result<Model, ServeError> {
            let dir = link.dir.as_ref().ok_or_else(|| match link.version {
                Some(_) => ServeError::MissingVersion(format!("{arg} {}", link.describe())),
                None => ServeError::ModelNotFound(arg.to_string()),
            })?;
            let built = model::build(dir, opts, None)?;
            let m = &built.package.manifest;
            if link.version.is_some() && m.name != arg {
                return Err(ServeError::WrongModel {
                    dir: dir.clone(),
                    found: m.name.clone(),
                    wanted: arg.to_string(),
                });
            }
            let own = Budget::from_mib(
                m.budgets.ram_mib,
                BudgetSource::Manifest {
                    model: m.name.clone(),
                },
            );
            // Admitted on a copy: a link that fails its self-check leaves no trace.
            let mut t = tally.clone();
            t.admit(&built.plan, &own, service, cfg.workers)?;
            shared.notifier.status(&format!(
                "running the golden self-check of {}",
                built.plan.model
            ));
            let model = built.self_check()?;
            *tally = t;
            Ok(model)
        })();
        match attempt {
            Ok(model) => {
                return Ok((
                    model,
                    fallback::Origin {
                        source: link.source,
                        passed_over,
                    },
                ))
            }
            Err(e) => {
                if links.len() > 1 {
                    log::error!("{arg}: {} does not serve: {e}", link.describe());
                }
                passed_over.push((link.describe(), e.to_string()));
                last = e;
            }
        }
    }
    Err(last)
}

/// Loads every configured model in one pass each: verify and build once, plan from the
/// built graph, refuse what does not fit its own or the service's budget (before the
/// golden self-check runs anything), self-check, then open the gate.
fn load_models(shared: &Arc<Shared>) -> Result<(), ServeError> {
    let cfg = &shared.cfg;
    let service = service_budget(cfg)?;
    let opts = LoadOptions {
        threads: cfg.threads,
        ..LoadOptions::default()
    };
    let mut names: Vec<String> = Vec::new();
    let mut tally = Tally::default();
    let mut served = Vec::new();
    for arg in &cfg.models {
        shared
            .notifier
            .status(&format!("verifying and building package {arg}"));
        swap::count_boot(shared, arg);
        let links = fallback::chain(cfg, arg);
        let (model, origin) =
            serve_first(shared, arg, &links, &opts, &mut tally, service.as_ref())?;
        let name = &model.manifest().name;
        if names.contains(name) {
            return Err(ServeError::DuplicateModel(name.clone()));
        }
        names.push(name.clone());
        if !origin.passed_over.is_empty() {
            log::warn!(
                "{arg}: serving {} {} from the fallback chain: {}",
                name,
                model.manifest().version,
                origin.describe()
            );
        }
        served.push(Arc::new(ServedModel::new(model, origin)));
    }
    // The golden self-check has run every model on every golden input: that is the
    // warm-up (allocator arenas, caches, lazily built kernels).
    let limit = gate_limit(&served, service.as_ref(), cfg.max_connections)?;
    match &service {
        Some(b) => log::info!(
            "RAM budget {} from {}: {} left for in-flight requests",
            human(b.bytes),
            b.source,
            human(limit)
        ),
        None => log::info!(
            "no service RAM budget applies (set memory.budget or a board profile): requests are bounded by limits.max_body and server.queue_depth only"
        ),
    }
    let _ = shared.gate.set(Gate::new(limit));
    let _ = shared.budget.set(service);
    let configured = cfg
        .models
        .iter()
        .zip(&served)
        .map(|(arg, m)| (m.name().to_string(), arg.clone()))
        .collect();
    let _ = shared.configured.set(configured);
    // A candidate that was on probation when the service stopped is watched again (no
    // baseline: what served before it is not loaded).
    for m in &served {
        if swap::store_candidate(cfg, m.name()).as_deref() == Some(&m.version()) {
            swap::watch(shared, m, None);
        }
    }
    *shared.models.write().unwrap_or_else(|p| p.into_inner()) = served;
    Ok(())
}

/// What requests may reserve: the heap budget (budget minus the runtime's non-heap
/// overhead) minus the heap measured now that every model is loaded and warm, minus what
/// the allowed connections may hold outside their requests.
fn gate_limit(
    served: &[Arc<ServedModel>],
    bound: Option<&Budget>,
    max_connections: usize,
) -> Result<u64, ServeError> {
    let Some(b) = bound else {
        return Ok(u64::MAX);
    };
    let runtime = served
        .iter()
        .map(|m| m.model.plan.runtime_bytes)
        .max()
        .unwrap_or(0);
    let baseline = match memory::alloc::snapshot() {
        Some((current, _)) => current as u64,
        // Library use without the counting allocator: trust the plans.
        None => served
            .iter()
            .map(|m| {
                let p = &m.model.plan;
                p.weights_bytes + p.graph_bytes + p.scratch_bytes
            })
            .sum(),
    };
    let connections = max_connections as u64 * conn::CONNECTION_BYTES;
    let heap_budget = b.bytes.saturating_sub(runtime);
    let limit = heap_budget.saturating_sub(baseline + connections);
    let one = served
        .iter()
        .map(|m| m.model.plan.per_request_bytes())
        .max()
        .unwrap_or(0);
    if limit < one {
        return Err(over(
            "serving one request".into(),
            baseline + runtime + connections + one,
            b,
            format!(
                "heap after loading {} + runtime {} + {max_connections} connection(s) x {} + one request {}",
                human(baseline),
                human(runtime),
                human(conn::CONNECTION_BYTES),
                human(one)
            ),
        ));
    }
    Ok(limit)
}
