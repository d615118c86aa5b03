//! The supervisor thread: feeds the systemd watchdog only while the serving loop is
//! alive, samples the thermal state for `/metrics` and `beltbox thermal`, and keeps the
//! unit's STATUS= line current.
//!
//! Watchdog rule: ping only if every worker showed a sign of life within the watchdog
//! interval (idle workers tick every 250 ms; a busy one when its inference ends). A
//! worker stuck in a kernel longer than `WatchdogSec=` stops the pings and systemd
//! restarts the service — which is what a hung box on a belt needs.

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::metrics::Outcome;
use super::{systemd, Shared};
use beltbox_core::board::{self, BoardProfile};
use beltbox_core::thermal::{self, status, Monitor};

const TICK: Duration = Duration::from_millis(1000);
const STATUS_EVERY: Duration = Duration::from_secs(10);

pub(crate) fn start(shared: &Arc<Shared>) -> std::io::Result<JoinHandle<()>> {
    let s = Arc::clone(shared);
    std::thread::Builder::new()
        .name("beltbox-supervisor".into())
        .spawn(move || run(&s))
}

/// `$BELTBOX_SYSFS_ROOT` (tests, fake boards) or `/`.
fn sysfs_root() -> PathBuf {
    std::env::var_os("BELTBOX_SYSFS_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

fn profile(shared: &Shared, root: &std::path::Path) -> Option<BoardProfile> {
    let found = if shared.cfg.board == "auto" {
        board::identify_under(root, beltbox_core::cpu::arch()).map(|id| id.profile)
    } else {
        board::profile(&shared.cfg.board).map(Some)
    };
    found.unwrap_or_else(|e| {
        log::warn!("thermal: no board profile ({e}); watching every zone");
        None
    })
}

fn run(shared: &Arc<Shared>) {
    let watchdog = systemd::watchdog_interval();
    if let Some(w) = watchdog {
        log::info!("systemd watchdog every {:?}: pinging at half of it", w);
    }
    let tick = watchdog.map(|w| (w / 2).min(TICK)).unwrap_or(TICK);
    let root = sysfs_root();
    let board = profile(shared, &root);
    let mut monitor = match Monitor::new(&root, board.as_ref()) {
        Ok(m) => Some(m),
        Err(e) => {
            log::warn!("thermal monitoring off: {e}");
            None
        }
    };
    let status_path = status::default_path();
    let mut status_warned = false;
    let mut last_status = Instant::now();
    let board_name = board
        .as_ref()
        .map(|b| b.name.clone())
        .unwrap_or_else(|| "unknown".into());
    while !shared.workers_stop.load(Relaxed) {
        let now = shared.now_ms();
        super::swap::judge_watches(shared);
        if let Some(w) = watchdog {
            let limit = u64::try_from(w.as_millis()).unwrap_or(u64::MAX);
            let alive = shared
                .heartbeats
                .iter()
                .all(|h| now.saturating_sub(h.load(Relaxed)) < limit);
            if alive {
                shared.notifier.notify("WATCHDOG=1");
            } else {
                log::error!("a worker has shown no sign of life for {limit} ms; withholding the watchdog ping");
            }
        }
        if let Some(m) = monitor.as_mut() {
            let snap = m.sample();
            let limits = thermal::limits(board.as_ref(), &snap);
            let st = thermal::assess(&snap, &limits);
            let report = shared.windows.lock().map(|w| w.report(now)).ok();
            if let Ok(mut t) = shared.throttle.lock() {
                *t = Some(st.clone());
            }
            if let Some(report) = report {
                let models = shared.models();
                let model = models
                    .first()
                    .map(|m| m.name().to_string())
                    .unwrap_or_default();
                let slo = models
                    .first()
                    .map(|m| m.model.manifest().budgets.p95_ms)
                    .unwrap_or(0.0);
                let file = status::StatusFile {
                    schema: status::SCHEMA,
                    updated_unix_ms: status::unix_ms(),
                    pid: std::process::id(),
                    model: &model,
                    fallback_model: None,
                    board: &board_name,
                    slo_ms: slo,
                    latency: &report,
                    governor: None,
                    throttle: Some(&st),
                };
                // The runtime directory exists under systemd (RuntimeDirectory=); in a
                // terminal it usually does not, and that is fine.
                if status_path.parent().is_some_and(|d| d.is_dir()) {
                    if let Err(e) = status::write(&status_path, &file) {
                        if !status_warned {
                            log::warn!("cannot publish thermal status: {e}");
                            status_warned = true;
                        }
                    }
                }
            }
        }
        if last_status.elapsed() >= STATUS_EVERY && shared.notifier.enabled() {
            last_status = Instant::now();
            let models = shared.models();
            let count = |o: Outcome| -> u64 { models.iter().map(|m| m.metrics.count(o)).sum() };
            let (ok, rejected) = (count(Outcome::Ok), count(Outcome::Rejected));
            // The spool's state, and any model serving from down its fallback chain.
            let mut extra = shared
                .outbox
                .as_ref()
                .map(|o| format!(", {}", o.status()))
                .unwrap_or_default();
            for m in models.iter().filter(|m| !m.origin.passed_over.is_empty()) {
                extra.push_str(&format!(
                    ", FALLBACK {} {} from {}",
                    m.name(),
                    m.version(),
                    m.origin.source.label()
                ));
            }
            shared.notifier.status(&format!(
                "serving: {ok} ok, {rejected} rejected, queue {}/{}{extra}",
                shared.metrics.queue_depth.load(Relaxed),
                shared.cfg.queue_depth
            ));
        }
        std::thread::sleep(tick);
    }
}
