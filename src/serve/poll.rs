//! The service polls its channel (`ota.channel`) every `ota.poll_interval_s` (with ±10 %
//! jitter, so a fleet does not hit its server in step) and swaps live to what it installed.
//!
//! The install runs in a child process, `beltbox ota pull --no-reload --json`, not on a
//! thread of the service: qualification loads and times the candidate, and whatever that
//! costs or breaks (memory, a panic caught or not, a kill) stays out of the process that
//! is serving; the child takes the store's lock like a technician's install, and the
//! crash harness that kills `beltbox ota install` covers it. The service then loads each
//! installed model (`swap::load`), which starts its probation.

use std::process::Command;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{swap, Shared};

/// Starts the poller when the config names a channel and an interval.
pub(crate) fn start(shared: &Arc<Shared>) -> Option<JoinHandle<()>> {
    let channel = shared.cfg.ota_channel.clone()?;
    if shared.cfg.ota_poll_interval_s == 0 {
        return None;
    }
    let s = Arc::clone(shared);
    std::thread::Builder::new()
        .name("beltbox-ota-poll".into())
        .spawn(move || run(&s, &channel))
        .map_err(|e| log::error!("OTA polling off: cannot start its thread: {e}"))
        .ok()
}

fn run(shared: &Arc<Shared>, channel: &str) {
    let every = Duration::from_secs(shared.cfg.ota_poll_interval_s);
    log::info!("OTA: polling {channel} every {} s", every.as_secs());
    loop {
        let jitter = 0.9 + 0.2 * fastrand_unit();
        let until = Instant::now() + every.mul_f64(jitter);
        while Instant::now() < until {
            if shared.workers_stop.load(Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        poll_once(shared, channel);
    }
}

/// A number in [0, 1) from the clock's nanoseconds: jitter needs no better.
fn fastrand_unit() -> f64 {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    f64::from(n % 1_000_000) / 1_000_000.0
}

fn poll_once(shared: &Arc<Shared>, channel: &str) {
    shared.metrics.ota_polls.fetch_add(1, Relaxed);
    let cfg = &shared.cfg;
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            log::error!("OTA poll: cannot find this executable: {e}");
            shared.metrics.ota_poll_failures.fetch_add(1, Relaxed);
            return;
        }
    };
    let mut cmd = Command::new(exe);
    cmd.args(["ota", "pull", "--json", "--no-reload", "--channel", channel])
        .arg("--state-dir")
        .arg(&cfg.state_dir)
        .arg("--root")
        .arg(&cfg.ota_root);
    if let Some(p) = &cfg.source {
        cmd.arg("--config").arg(p);
    }
    if let Some((_, text)) = &cfg.budget {
        cmd.args(["--budget", text]);
    }
    if let Some(d) = &cfg.models_dir {
        cmd.arg("--models-dir").arg(d);
    }
    let out = match cmd.output() {
        Ok(o) => o,
        Err(e) => {
            log::error!("OTA poll: cannot run `beltbox ota pull`: {e}");
            shared.metrics.ota_poll_failures.fetch_add(1, Relaxed);
            return;
        }
    };
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        log::info!("OTA poll: {line}");
    }
    let results: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    if !out.status.success() {
        shared.metrics.ota_poll_failures.fetch_add(1, Relaxed);
    }
    for r in results {
        if r["installed"] != true {
            continue;
        }
        let Some(model) = r["model"].as_str() else {
            continue;
        };
        shared.metrics.ota_installs.fetch_add(1, Relaxed);
        match swap::load(shared, model) {
            Ok(w) => log::info!("OTA poll: {model} now serves {} (live)", w.to),
            Err(e) => log::error!("OTA poll: installed {model} but the swap failed: {e}"),
        }
    }
}
