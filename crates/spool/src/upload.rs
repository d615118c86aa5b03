//! The uploader: drains spools to their sinks (MQTT, HTTP) on its own thread, so
//! inference never waits for the network.
//!
//! - One thread runs a current-thread tokio runtime; each (stream, sink) pair is a task
//!   with its own persisted [`Cursor`]. A sink that is down delays only itself.
//! - A task reads the next batch of durable records after its cursor (at most `batch`
//!   records and `batch_bytes` bytes: bounded memory), wraps each in its envelope, sends
//!   the batch, and advances the cursor only once the sink confirmed all of it. So after
//!   a crash it resumes at the first unconfirmed record: at-least-once, in order.
//! - On failure it waits a backoff with full jitter (uniform in [min, current]; current
//!   doubles up to `backoff_max`), so a fleet coming back online does not reconnect in
//!   step.
//! - Records dropped to the spool's size bound before they were sent are skipped (the
//!   spool counts them); a cursor that cannot be trusted (damaged, of another epoch, past
//!   the spool's end) starts over at 0, reported: duplicates, never a gap.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::watch;

use crate::cursor::{Cursor, Fault};
use crate::http_sink::HttpSink;
use crate::mqtt::{MqttSink, MqttTarget};
use crate::{envelope, Spool};

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("cannot start the uploader: {0}")]
    Start(std::io::Error),
    #[error(transparent)]
    Cursor(#[from] crate::cursor::CursorError),
}

/// How the uploader behaves (`[upload]` in beltbox.toml).
#[derive(Debug, Clone, PartialEq)]
pub struct UploadConfig {
    /// Names the box in topics, message ids and the MQTT client id.
    pub box_id: String,
    pub mqtt: Option<MqttTarget>,
    pub http: Option<String>,
    /// Records and bytes per batch at most.
    pub batch: usize,
    pub batch_bytes: usize,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// A batch not confirmed within this is a failure.
    pub timeout: Duration,
    /// Where the cursors live (one file per stream and sink).
    pub cursor_dir: PathBuf,
}

impl UploadConfig {
    pub fn new(box_id: &str, cursor_dir: PathBuf) -> UploadConfig {
        UploadConfig {
            box_id: box_id.to_string(),
            mqtt: None,
            http: None,
            batch: 100,
            batch_bytes: 1 << 20,
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            timeout: Duration::from_secs(30),
            cursor_dir,
        }
    }
}

/// One (stream, sink) pair's counters, for `/metrics` and health.
#[derive(Debug, Default)]
pub struct SinkStats {
    pub stream: String,
    /// `mqtt` or `http`.
    pub sink: &'static str,
    /// The last sequence number the sink confirmed (the cursor).
    pub confirmed: AtomicU64,
    /// Records confirmed since start (a record sent twice counts twice).
    pub sent: AtomicU64,
    pub failures: AtomicU64,
    /// The last batch went through.
    pub up: AtomicBool,
    pub last_error: Mutex<Option<String>>,
}

/// The running uploader; dropping it does not stop it, [`Uploader::stop`] does.
pub struct Uploader {
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
    pub sinks: Vec<Arc<SinkStats>>,
}

enum Sink {
    // Boxed: the MQTT client with its options is large beside the HTTP sink.
    Mqtt(Box<MqttSink>),
    Http(HttpSink),
}

struct Task {
    spool: Arc<Spool>,
    stats: Arc<SinkStats>,
    cursor: Cursor,
    sink: Sink,
    cfg: UploadConfig,
    /// The batch that failed, kept for the retry: a sink that is down costs each attempt
    /// its network try only, not a segment read and the envelopes again.
    pending: Option<Batch>,
}

/// A batch ready to send: its first and last sequence numbers and its messages.
struct Batch {
    first: u64,
    last: u64,
    messages: Vec<Vec<u8>>,
}

impl Uploader {
    /// Starts draining each `(stream, spool)` to every configured sink. `None` when no
    /// sink is configured (the spool only keeps).
    pub fn start(
        spools: &[(&str, Arc<Spool>)],
        cfg: &UploadConfig,
    ) -> Result<Option<Uploader>, UploadError> {
        let mut tasks = Vec::new();
        std::fs::create_dir_all(&cfg.cursor_dir).map_err(UploadError::Start)?;
        for (stream, spool) in spools {
            let mut sinks: Vec<(&'static str, Sink)> = Vec::new();
            if let Some(t) = &cfg.mqtt {
                let max = crate::record::MAX_PAYLOAD + 4096;
                sinks.push((
                    "mqtt",
                    // One client id per stream: a broker disconnects the older of two
                    // connections with the same id.
                    Sink::Mqtt(Box::new(MqttSink::new(
                        t.clone(),
                        &format!("{}-{stream}", cfg.box_id),
                        cfg.batch,
                        max,
                    ))),
                ));
            }
            if let Some(url) = &cfg.http {
                match HttpSink::new(url) {
                    Ok(h) => sinks.push(("http", Sink::Http(h))),
                    // Checked when the config was read; a failure here is reported, and
                    // the other sinks still run.
                    Err(e) => log::error!("upload: {e}"),
                }
            }
            for (name, sink) in sinks {
                let path = cfg.cursor_dir.join(format!("{stream}.{name}"));
                let (mut cursor, fault) = Cursor::open(&path, spool.epoch())?;
                if let Some(Fault::Damaged(why)) = fault {
                    log::warn!("upload cursor {why}");
                }
                let end = spool.stats().written;
                let past = cursor.seq();
                if cursor.reset_if_past(end) {
                    log::warn!(
                        "upload cursor {} confirmed {past}, past the spool's end ({end}): sending everything spooled again",
                        path.display()
                    );
                }
                let stats = Arc::new(SinkStats {
                    stream: stream.to_string(),
                    sink: name,
                    confirmed: AtomicU64::new(cursor.seq()),
                    ..SinkStats::default()
                });
                tasks.push(Task {
                    spool: Arc::clone(spool),
                    stats,
                    cursor,
                    sink,
                    cfg: cfg.clone(),
                    pending: None,
                });
            }
        }
        if tasks.is_empty() {
            return Ok(None);
        }
        let sinks = tasks.iter().map(|t| Arc::clone(&t.stats)).collect();
        let (stop, stop_rx) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("beltbox-upload".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        log::error!("upload: cannot start its runtime: {e}; nothing is uploaded (results stay spooled)");
                        return;
                    }
                };
                rt.block_on(async move {
                    let handles: Vec<_> = tasks
                        .into_iter()
                        .map(|t| tokio::spawn(t.run(stop_rx.clone())))
                        .collect();
                    for h in handles {
                        let _ = h.await;
                    }
                });
            })
            .map_err(UploadError::Start)?;
        Ok(Some(Uploader {
            stop,
            thread: Some(thread),
            sinks,
        }))
    }

    /// Stops the tasks (a batch in flight is abandoned; its records are sent again on the
    /// next start) and joins the thread.
    pub fn stop(mut self) {
        self.stop.send_replace(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Full jitter: uniform in [min, current].
fn jittered(min: Duration, current: Duration) -> Duration {
    let (lo, hi) = (
        min.as_millis() as u64,
        current.as_millis().max(min.as_millis()) as u64,
    );
    Duration::from_millis(fastrand::u64(lo..=hi))
}

impl Task {
    fn name(&self) -> String {
        format!("{}→{}", self.stats.stream, self.stats.sink)
    }

    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut progress = self.spool.progress();
        let mut backoff = self.cfg.backoff_min;
        loop {
            if *stop.borrow() {
                return;
            }
            let durable = progress.borrow_and_update().durable;
            if self.cursor.seq() >= durable {
                // Caught up: wait for new durable records (or a stop).
                tokio::select! {
                    _ = progress.changed() => {}
                    _ = stop.changed() => {}
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
                continue;
            }
            // A stop ends a batch in flight (a receiver that hangs must not hold up the
            // service's shutdown); its records are sent again on the next start.
            let step = tokio::select! {
                r = self.step(durable) => r,
                _ = stop.changed() => return,
            };
            match step {
                Ok(()) => {
                    backoff = self.cfg.backoff_min;
                    self.stats.up.store(true, Relaxed);
                }
                Err(why) => {
                    let first = self.stats.up.swap(false, Relaxed)
                        || self.stats.failures.load(Relaxed) == 0;
                    self.stats.failures.fetch_add(1, Relaxed);
                    if first {
                        log::warn!(
                            "upload {}: {why}; retrying with backoff (results stay spooled)",
                            self.name()
                        );
                    } else {
                        log::debug!("upload {}: {why}", self.name());
                    }
                    if let Ok(mut e) = self.stats.last_error.lock() {
                        *e = Some(why);
                    }
                    let wait = jittered(self.cfg.backoff_min, backoff);
                    backoff = (backoff * 2).min(self.cfg.backoff_max);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.changed() => {}
                    }
                }
            }
        }
    }

    /// Sends the next batch after the cursor; advances the cursor on confirmation.
    async fn step(&mut self, durable: u64) -> Result<(), String> {
        let batch = match self.pending.take() {
            Some(b) => b,
            None => match self.next_batch()? {
                Some(b) => b,
                None => {
                    // Nothing intact left up to `durable` (dropped to the bound, or
                    // damaged): move past it.
                    self.advance(durable)?;
                    return Ok(());
                }
            },
        };
        let stream = self.stats.stream.clone();
        let timeout = self.cfg.timeout;
        let sent = match &mut self.sink {
            Sink::Mqtt(m) => {
                let topic = m.target().topic(&self.cfg.box_id, &stream);
                m.send(&topic, &batch.messages, timeout)
                    .await
                    .map_err(|e| e.to_string())
            }
            Sink::Http(h) => {
                let key = format!(
                    "{}/{stream}/{}-{}",
                    self.cfg.box_id, batch.first, batch.last
                );
                h.send(&key, &batch.messages, timeout)
                    .await
                    .map_err(|e| e.to_string())
            }
        };
        if let Err(e) = sent {
            self.pending = Some(batch);
            return Err(e);
        }
        self.stats
            .sent
            .fetch_add(batch.messages.len() as u64, Relaxed);
        self.advance(batch.last)
    }

    /// The next batch after the cursor (bounded by `batch` records and `batch_bytes`),
    /// each record in its envelope; `None` when no intact record is left to the end.
    fn next_batch(&self) -> Result<Option<Batch>, String> {
        let from = self.cursor.seq() + 1;
        let records = self
            .spool
            .read_from_bounded(from, self.cfg.batch, self.cfg.batch_bytes)
            .map_err(|e| e.to_string())?;
        let (Some(first), Some(last)) = (records.first(), records.last()) else {
            return Ok(None);
        };
        let (first, last) = (first.0, last.0);
        let stream = &self.stats.stream;
        let messages = records
            .iter()
            .map(|(seq, payload)| {
                envelope::encode(&self.cfg.box_id, stream, self.spool.epoch(), *seq, payload)
            })
            .collect();
        Ok(Some(Batch {
            first,
            last,
            messages,
        }))
    }

    fn advance(&mut self, seq: u64) -> Result<(), String> {
        self.cursor.advance(seq).map_err(|e| e.to_string())?;
        self.stats.confirmed.store(seq, Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_its_bounds() {
        let (min, cur) = (Duration::from_millis(500), Duration::from_secs(8));
        let waits: Vec<Duration> = (0..1000).map(|_| jittered(min, cur)).collect();
        assert!(waits.iter().all(|w| *w >= min && *w <= cur));
        // Spread, not in step.
        let distinct: std::collections::BTreeSet<_> = waits.iter().collect();
        assert!(distinct.len() > 100);
        assert_eq!(jittered(min, Duration::ZERO), min);
    }
}
