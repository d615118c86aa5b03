//! The service (`beltbox run`): KServe v2 over HTTP/1.1 on TCP and/or a unix socket, a
//! bounded queue in front of a fixed pool of inference workers, RAM admission, Prometheus
//! metrics, and the systemd protocol (READY, STATUS, WATCHDOG, STOPPING).
//!
//! | module | concern | I/O? |
//! |---|---|---|
//! | [`config`] | `beltbox.toml`, strict, errors name the key | file |
//! | [`http`] | HTTP/1.1 framing with limits | bytes |
//! | [`kserve`] | the protocol: decode requests, map to the model input, encode responses | no |
//! | [`metrics`] | counters, histograms, Prometheus text | no |
//! | [`systemd`] | sd_notify and the watchdog interval | socket |
//! | [`conn`] | one client connection: read requests with deadlines, write answers | socket |
//! | [`router`] | the routes: KServe v2 endpoints, `/metrics`; inference admission and queueing | no |
//! | [`supervisor`] | watchdog pings, thermal sample, `STATUS=` every second | no |
//! | [`worker`] | the queue and the inference workers | model |
//!
//! Threads: one acceptor per listener, one thread per open connection (at most
//! `max_connections`), `workers` inference workers, one supervisor (watchdog, thermal,
//! status), one signal thread. A request's life: connection thread reads and decodes it
//! (after reserving its memory), queues it (503 when full), a worker preprocesses, runs
//! and postprocesses it, the connection thread encodes and writes the answer.

pub mod config;
mod conn;
pub mod http;
pub mod kserve;
pub mod metrics;
mod router;
mod supervisor;
pub mod systemd;
mod worker;

use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use beltbox_core::board;
use beltbox_core::manifest::Manifest;
use beltbox_core::memory::admission::Gate;
use beltbox_core::memory::budget::human;
use beltbox_core::memory::{self, Budget, BudgetSource, Plan};
use beltbox_core::model::{self, LoadOptions, Model, ModelError};
use beltbox_core::thermal::{LatencyWindows, WindowConfig};

pub use config::{Config, ConfigError, Listen};

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
}

impl ServedModel {
    pub fn name(&self) -> &str {
        self.model.name()
    }

    pub fn version(&self) -> String {
        self.model.manifest().version.to_string()
    }

    /// Bytes reserved for a request whose body is `body_bytes` long: the body, an upper
    /// bound on what decoding makes of it (an element takes at least one body byte and
    /// at most 4 bytes decoded; a decoded image sample costs a u16 plus the f32
    /// conversion and resize buffers — 16x covers both), plus the plan's per-request
    /// activations and preprocessing.
    pub fn request_bytes(&self, body_bytes: u64) -> u64 {
        body_bytes
            .saturating_mul(16)
            .saturating_add(self.model.plan.per_request_bytes())
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
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

fn bind(l: &Listen) -> Result<Listener, ServeError> {
    let bind_err = |source| ServeError::Bind {
        addr: l.to_string(),
        source,
    };
    match l {
        Listen::Tcp(addr) => TcpListener::bind(addr).map(Listener::Tcp).map_err(bind_err),
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
                .map(|s| Listener::Unix(s, path.clone()))
                .map_err(bind_err)
        }
    }
}

/// Connects to a listener once so its blocking `accept` returns and sees `stopping`.
fn wake(l: &Listener) {
    match l {
        Listener::Tcp(t) => {
            if let Ok(mut addr) = t.local_addr() {
                if addr.ip().is_unspecified() {
                    addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                let _ = TcpStream::connect_timeout(&addr, Duration::from_millis(500));
            }
        }
        Listener::Unix(_, path) => {
            let _ = UnixStream::connect(path);
        }
    }
}

fn accept_loop(shared: Arc<Shared>, listener: Arc<Listener>) {
    loop {
        let stream = match &*listener {
            Listener::Tcp(t) => t.accept().map(|(s, _)| {
                let _ = s.set_nodelay(true);
                conn::Stream::Tcp(s)
            }),
            Listener::Unix(u, _) => u.accept().map(|(s, _)| conn::Stream::Unix(s)),
        };
        if shared.stopping.load(Relaxed) {
            return;
        }
        match stream {
            Ok(s) => conn::spawn(&shared, s),
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                log::warn!("accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// The operator's and the board's budgets; each model adds its manifest's as it is
/// loaded (see [`load_models`]).
fn service_budgets(
    cfg: &Config,
) -> Result<(Option<Budget>, Option<board::BoardProfile>), ServeError> {
    let operator = cfg
        .budget
        .as_ref()
        .map(|(bytes, text)| Budget::new(*bytes, BudgetSource::Config { text: text.clone() }));
    let board = if cfg.board == "auto" {
        board::identify()?.profile
    } else {
        Some(board::profile(&cfg.board)?)
    };
    Ok((operator, board))
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
#[derive(Default)]
struct Tally {
    models: usize,
    heap: u64,
    runtime: u64,
    per_request: u64,
}

impl Tally {
    /// Adds `plan` and refuses it when the total would exceed the strictest budget.
    fn admit(
        &mut self,
        plan: &Plan,
        bound: Option<&Budget>,
        workers: usize,
    ) -> Result<(), ServeError> {
        let heap = self.heap + plan.model_bytes();
        let runtime = self.runtime.max(plan.runtime_bytes);
        let per_request = self.per_request.max(plan.per_request_bytes());
        let extra = workers.saturating_sub(1);
        let need = heap + runtime + extra as u64 * per_request;
        log::info!(
            "RAM plan of {} {}: {} (weights {}, activations {}, per request {})",
            plan.model,
            plan.version,
            human(plan.total_bytes()),
            human(plan.weights_bytes),
            human(plan.activation_bytes),
            human(plan.per_request_bytes())
        );
        if let Some(b) = bound {
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
    let notifier = systemd::Notifier::from_env();
    notifier.status("starting: binding listeners");
    // Bind first: a taken port fails in milliseconds, not after a model load.
    let listeners: Vec<Arc<Listener>> = cfg
        .listen
        .iter()
        .map(|l| bind(l).map(Arc::new))
        .collect::<Result<_, _>>()?;

    let (tx, rx) = std::sync::mpsc::sync_channel(cfg.queue_depth);
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
    });
    let signals = install_signals(&shared, &listeners)?;
    // Accept from the start: health and metrics answer while models load (ready = 503).
    let acceptors: Vec<_> = listeners
        .iter()
        .map(|l| {
            let (s, l) = (Arc::clone(&shared), Arc::clone(l));
            std::thread::Builder::new()
                .name("beltbox-accept".into())
                .spawn(move || accept_loop(s, l))
        })
        .collect::<Result<_, _>>()
        .map_err(ServeError::Signals)?;
    for l in &listeners {
        match &**l {
            Listener::Tcp(t) => match t.local_addr() {
                Ok(a) => log::info!("listening on http://{a}"),
                Err(e) => log::warn!("listening on a TCP socket whose address is unknown: {e}"),
            },
            Listener::Unix(_, p) => log::info!("listening on unix:{}", p.display()),
        }
    }

    let loaded = load_models(&shared);
    let supervisor = match loaded {
        Ok(()) => {
            let rx = Arc::new(Mutex::new(rx));
            let workers = worker::start(&shared, rx).map_err(ServeError::Signals)?;
            let sup = supervisor::start(&shared).map_err(ServeError::Signals)?;
            // From here the high-water mark measures serving, not loading: that is
            // what admission control bounds (and what /metrics reports as the peak).
            memory::alloc::reset_peak();
            shared.ready.store(true, Relaxed);
            let names: Vec<String> = shared
                .models()
                .iter()
                .map(|m| format!("{} {}", m.name(), m.version()))
                .collect();
            let listen: Vec<String> = shared.cfg.listen.iter().map(|l| l.to_string()).collect();
            let msg = format!("serving {} on {}", names.join(", "), listen.join(", "));
            log::info!("ready: {msg}");
            shared.notifier.notify(&format!("READY=1\nSTATUS={msg}"));
            Some((workers, sup))
        }
        Err(e) => {
            shared.stopping.store(true, Relaxed);
            for l in &listeners {
                wake(l);
            }
            for a in acceptors {
                let _ = a.join();
            }
            cleanup(&listeners);
            return Err(e);
        }
    };

    let _ = signals.join();
    // Stopping: acceptors have been woken; let open connections finish their request.
    for a in acceptors {
        let _ = a.join();
    }
    let drain_deadline =
        Instant::now() + Duration::from_millis(shared.cfg.request_timeout_ms + 5_000);
    while shared.metrics.connections_open.load(Relaxed) > 0 && Instant::now() < drain_deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left = shared.metrics.connections_open.load(Relaxed);
    if left > 0 {
        log::warn!("{left} connection(s) still open after the drain period; exiting anyway");
    }
    shared.workers_stop.store(true, Relaxed);
    if let Some((workers, sup)) = supervisor {
        for w in workers {
            let _ = w.join();
        }
        let _ = sup.join();
    }
    cleanup(&listeners);
    let served: u64 = shared
        .models()
        .iter()
        .map(|m| m.metrics.count(metrics::Outcome::Ok))
        .sum();
    log::info!("stopped after {served} successful inference(s)");
    Ok(())
}

fn cleanup(listeners: &[Arc<Listener>]) {
    for l in listeners {
        if let Listener::Unix(_, path) = &**l {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn install_signals(
    shared: &Arc<Shared>,
    listeners: &[Arc<Listener>],
) -> Result<std::thread::JoinHandle<()>, ServeError> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).map_err(ServeError::Signals)?;
    let (shared, listeners) = (Arc::clone(shared), listeners.to_vec());
    std::thread::Builder::new()
        .name("beltbox-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                log::info!("signal {sig}: draining in-flight requests, then stopping");
                shared.stopping.store(true, Relaxed);
                shared.notifier.notify("STOPPING=1\nSTATUS=draining");
                for l in &listeners {
                    wake(l);
                }
            }
        })
        .map_err(ServeError::Signals)
}

/// Loads every configured model in one pass each: verify and build once, plan from the
/// built graph, refuse what does not fit the strictest budget (before the golden
/// self-check runs anything), self-check, then open the gate.
fn load_models(shared: &Arc<Shared>) -> Result<(), ServeError> {
    let cfg = &shared.cfg;
    let (operator, board) = service_budgets(cfg)?;
    let opts = LoadOptions {
        threads: cfg.threads,
        ..LoadOptions::default()
    };
    let mut manifests: Vec<Manifest> = Vec::new();
    let mut tally = Tally::default();
    let mut bound = None;
    let mut served = Vec::new();
    for arg in &cfg.models {
        shared
            .notifier
            .status(&format!("verifying and building package {arg}"));
        let dir = beltbox_core::model::package::resolve(arg, cfg.models_dir.as_deref())
            .ok_or_else(|| ServeError::ModelNotFound(arg.clone()))?;
        let built = model::build(&dir, &opts, None)?;
        let m = &built.package.manifest;
        if manifests.iter().any(|q| q.name == m.name) {
            return Err(ServeError::DuplicateModel(m.name.clone()));
        }
        manifests.push(m.clone());
        let refs: Vec<&Manifest> = manifests.iter().collect();
        let all = memory::budget::applicable(operator.clone(), &refs, board.as_ref());
        bound = memory::strictest(&all).cloned();
        tally.admit(&built.plan, bound.as_ref(), cfg.workers)?;
        shared.notifier.status(&format!(
            "running the golden self-check of {}",
            built.plan.model
        ));
        let model = built.self_check()?;
        served.push(Arc::new(ServedModel {
            model,
            metrics: metrics::ModelMetrics::default(),
        }));
    }
    // The golden self-check has run every model on every golden input: that is the
    // warm-up (allocator arenas, caches, lazily built kernels).
    let limit = gate_limit(&served, bound.as_ref())?;
    match &bound {
        Some(b) => log::info!(
            "RAM budget {} from {}: {} left for in-flight requests",
            human(b.bytes),
            b.source,
            human(limit)
        ),
        None => log::info!("no RAM budget applies"),
    }
    let _ = shared.gate.set(Gate::new(limit));
    let _ = shared.budget.set(bound);
    *shared.models.write().unwrap_or_else(|p| p.into_inner()) = served;
    Ok(())
}

/// What requests may reserve: the heap budget (budget minus the runtime's non-heap
/// overhead) minus the heap measured now that every model is loaded and warm.
fn gate_limit(served: &[Arc<ServedModel>], bound: Option<&Budget>) -> Result<u64, ServeError> {
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
    let heap_budget = b.bytes.saturating_sub(runtime);
    let limit = heap_budget.saturating_sub(baseline);
    let one = served.iter().map(|m| m.request_bytes(0)).max().unwrap_or(0);
    if limit < one {
        return Err(over(
            "serving one request".into(),
            baseline + runtime + one,
            b,
            format!(
                "heap after loading {} + runtime {} + one request {}",
                human(baseline),
                human(runtime),
                human(one)
            ),
        ));
    }
    Ok(limit)
}
