//! The box's outbox (issue #16, docs/offline.md): every inference result is appended to
//! the durable result spool (`beltbox-spool`, `state_dir/spool/results`) before its answer
//! is sent, and the spool's uploader drains it to MQTT and/or HTTP on its own thread.
//!
//! **The acknowledgement contract.** An answer whose `parameters` say `"spooled": true`
//! carries `result_seq`: that record was on stable storage (fdatasync) before the answer
//! was written, and will reach the receiver at least once (exactly once after dropping
//! duplicates by message id) unless the spool's size bound drops it first, which is
//! counted. An answer with `"spooled": false` (the spool is failing: a full disk, a
//! broken card) still carries the result, so the belt does not stop, but no promise: the
//! service says so in `spool_error`, in `/v2/health/ready`, on `/metrics` and in STATUS=.
//!
//! Where the work runs: the worker thread appends (a `write(2)`, no sync) right after
//! inference; the HTTP task then awaits the group commit on a watch channel, holding no
//! thread; the spool's committer syncs.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;

use beltbox_core::postprocess::Class;
use beltbox_core::timing::StageTimings;
use beltbox_spool::{Progress, Recovery, SinkStats, Spool, Uploader};

use super::config::Config;
use super::kserve::InputTensor;
use super::ServedModel;

/// Classes kept per result record.
pub const TOP_K: usize = 5;

/// What the service knows of its spool and uploader.
pub(crate) struct Outbox {
    spool: Option<Arc<Spool>>,
    /// Kept low-confidence inputs (`lowconf`); `None` when not kept.
    inputs: Option<Arc<Spool>>,
    progress: Option<watch::Receiver<Progress>>,
    ack_timeout: Duration,
    box_id: String,
    board: String,
    /// Answers sent without a durable record (the spool failing).
    pub unspooled: AtomicU64,
    /// Why the spool is failing (`None`: healthy).
    error: Mutex<Option<String>>,
    pub recovery: Recovery,
    uploader: Mutex<Option<Uploader>>,
    pub sinks: Vec<Arc<SinkStats>>,
}

/// The parts of a finished inference a record keeps.
pub(crate) struct Finished<'a> {
    pub model: &'a ServedModel,
    pub request_id: Option<&'a str>,
    pub input_crc32: u32,
    pub stages: &'a StageTimings,
    pub classes: &'a [Class],
    pub detections: usize,
    /// Under the manifest's `low_confidence` (`None`: it sets none).
    pub low_confidence: Option<bool>,
    pub secondary: Option<&'a super::lowconf::Secondary>,
}

impl Outbox {
    /// Opens the spool and starts the uploader; `None` when `spool.enabled = false`. A
    /// spool that cannot be opened does not stop the service: it serves, unspooled, and
    /// says why everywhere.
    pub fn start(cfg: &Config, board: &str) -> Option<Outbox> {
        let s = cfg.spool.as_ref()?;
        let dir = cfg.state_dir.join("spool").join("results");
        let opts = beltbox_spool::Options {
            segment_bytes: s.segment_bytes,
            max_bytes: s.max_bytes,
            commit_interval: Duration::from_millis(s.commit_interval_ms),
            ..beltbox_spool::Options::new(&dir)
        };
        let mut outbox = Outbox {
            spool: None,
            inputs: None,
            progress: None,
            ack_timeout: Duration::from_millis(s.ack_timeout_ms),
            box_id: s.box_id.clone(),
            board: board.to_string(),
            unspooled: AtomicU64::new(0),
            error: Mutex::new(None),
            recovery: Recovery::default(),
            uploader: Mutex::new(None),
            sinks: Vec::new(),
        };
        match Spool::open(opts) {
            Ok((spool, recovery)) => {
                log::info!(
                    "result spool {}: {} record(s) kept in {} segment(s){}",
                    dir.display(),
                    recovery.records,
                    recovery.segments,
                    if recovery.foreign.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; left alone, not spool files: {}",
                            recovery.foreign.join(", ")
                        )
                    }
                );
                outbox.progress = Some(spool.progress());
                outbox.recovery = recovery;
                let mut streams = vec![("results", Arc::clone(&spool))];
                let keep = &cfg.low_confidence;
                if keep.keep_inputs {
                    let dir = cfg.state_dir.join("spool").join("inputs");
                    let opts = beltbox_spool::Options {
                        // Small segments: the bounds drop whole segments.
                        segment_bytes: (keep.keep_max_bytes / 4).clamp(4096, s.segment_bytes),
                        segment_records: (keep.keep_max_count / 4).max(1),
                        max_bytes: keep.keep_max_bytes,
                        max_records: keep.keep_max_count,
                        commit_interval: Duration::from_millis(s.commit_interval_ms),
                        ..beltbox_spool::Options::new(&dir)
                    };
                    match Spool::open(opts) {
                        Ok((inputs, r)) => {
                            log::info!(
                                "low-confidence inputs {}: {} kept",
                                dir.display(),
                                r.records
                            );
                            streams.push(("inputs", Arc::clone(&inputs)));
                            outbox.inputs = Some(inputs);
                        }
                        Err(e) => log::error!(
                            "cannot open the spool of low-confidence inputs: {e}; they are not kept"
                        ),
                    }
                }
                let upload = beltbox_spool::UploadConfig {
                    box_id: s.box_id.clone(),
                    cursor_dir: cfg.state_dir.join("spool").join("cursors"),
                    ..cfg.upload.clone()
                };
                match Uploader::start(&streams, &upload) {
                    Ok(Some(u)) => {
                        outbox.sinks = u.sinks.clone();
                        *outbox.uploader.lock().unwrap_or_else(|p| p.into_inner()) = Some(u);
                    }
                    Ok(None) => log::info!(
                        "no upload sink configured (upload.mqtt, upload.http): results are kept in the spool only"
                    ),
                    Err(e) => outbox.fail(format!("uploader: {e}")),
                }
                outbox.spool = Some(spool);
            }
            Err(e) => outbox.fail(format!("cannot open the result spool: {e}")),
        }
        Some(outbox)
    }

    fn fail(&self, why: String) {
        let mut e = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if e.as_deref() != Some(why.as_str()) {
            log::error!("{why}; answers are sent unspooled (\"spooled\": false) until it recovers");
        }
        *e = Some(why);
    }

    fn recovered(&self) {
        let mut e = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(was) = e.take() {
            log::info!("result spool recovered (was: {was})");
        }
    }

    /// Why the spool is failing now, if it is.
    pub fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Appends a result's record (worker thread; no sync): its sequence number, or why
    /// it could not be written.
    pub fn append(&self, r: &Finished<'_>) -> Result<u64, String> {
        let Some(spool) = &self.spool else {
            return Err(self.error().unwrap_or_else(|| "no spool".into()));
        };
        let payload = self.record(r);
        match spool.append(&payload) {
            Ok(seq) => Ok(seq),
            Err(e) => {
                let why = e.to_string();
                self.fail(why.clone());
                Err(why)
            }
        }
    }

    pub fn keeps_inputs(&self) -> bool {
        self.inputs.is_some()
    }

    /// Keeps a low-confidence input for review (worker thread; appended, synced by the
    /// committer, not awaited: the answer's promise is its result record). Its record
    /// names the result's sequence number.
    pub fn keep_input(
        &self,
        r: &Finished<'_>,
        result_seq: Option<u64>,
        inputs: &[InputTensor],
    ) -> Result<u64, String> {
        use base64::Engine as _;
        let spool = self.inputs.as_ref().ok_or("inputs are not kept")?;
        let m = r.model.model.manifest();
        let tensors: Vec<_> = inputs
            .iter()
            .map(|t| {
                let mut bytes = Vec::new();
                let kind = beltbox_core::frames::encode(&t.shape, &t.data, &mut bytes)
                    .map_err(|e| e.to_string())?;
                Ok(json!({
                    "name": t.name,
                    "shape": t.shape,
                    "encoding": kind.extension(),
                    "data_b64": base64::engine::general_purpose::STANDARD.encode(&bytes),
                }))
            })
            .collect::<Result<_, String>>()?;
        let v = json!({
            "v": 1,
            "at": jiff::Timestamp::now().to_string(),
            "box": self.box_id,
            "model": m.name,
            "version": m.version.to_string(),
            "result_seq": result_seq,
            "request_id": r.request_id,
            "input_crc32": format!("{:08x}", r.input_crc32),
            "confidence": r.classes.first().map(|c| c.score),
            "threshold": m.low_confidence,
            "tensors": tensors,
        });
        let payload = serde_json::to_vec(&v).map_err(|e| e.to_string())?;
        spool.append(&payload).map_err(|e| e.to_string())
    }

    /// Waits (HTTP task, no thread held) until record `seq` is durable.
    pub async fn acknowledge(&self, seq: u64) -> Result<(), String> {
        let Some(rx) = &self.progress else {
            return Err("no spool".into());
        };
        let mut rx = rx.clone();
        match beltbox_spool::durable(&mut rx, seq, self.ack_timeout).await {
            Ok(()) => {
                self.recovered();
                Ok(())
            }
            Err(e) => {
                let why = e.to_string();
                self.fail(why.clone());
                Err(why)
            }
        }
    }

    /// Counts an answer sent without a durable record.
    pub fn count_unspooled(&self) {
        self.unspooled.fetch_add(1, Relaxed);
    }

    /// The record's payload: the schema in docs/offline.md ("Record").
    fn record(&self, r: &Finished<'_>) -> Vec<u8> {
        let m = r.model.model.manifest();
        let top: Vec<_> = r
            .classes
            .iter()
            .take(TOP_K)
            .map(|c| json!({"index": c.index, "label": c.label, "score": c.score}))
            .collect();
        let confidence = r.classes.first().map(|c| c.score);
        let t = r.stages;
        let v = json!({
            "v": 1,
            "at": jiff::Timestamp::now().to_string(),
            "box": self.box_id,
            "board": self.board,
            "model": m.name,
            "version": m.version.to_string(),
            "request_id": r.request_id,
            "input_crc32": format!("{:08x}", r.input_crc32),
            "stages_us": {
                "queue": t.queue_us,
                "preprocess": t.preprocess_us,
                "inference": t.inference_us,
                "postprocess": t.postprocess_us,
                "total": t.total_us(),
            },
            "top_k": top,
            "confidence": confidence,
            "low_confidence": r.low_confidence,
            "secondary": r.secondary.map(|s| s.json()),
            "detections": r.detections,
        });
        serde_json::to_vec(&v).unwrap_or_default()
    }

    fn stream(&self, name: &str) -> Option<&Arc<Spool>> {
        match name {
            "inputs" => self.inputs.as_ref(),
            _ => self.spool.as_ref(),
        }
    }

    /// Durable records of the sink's stream it has not confirmed.
    fn backlog(&self, k: &SinkStats) -> u64 {
        let durable = self.stream(&k.stream).map_or(0, |s| s.stats().durable);
        durable.saturating_sub(k.confirmed.load(Relaxed))
    }

    /// `/v2/health/ready`'s `spool` object.
    pub fn health(&self) -> serde_json::Value {
        let stats = self.spool.as_ref().map(|s| s.stats()).unwrap_or_default();
        let sinks: Vec<_> = self
            .sinks
            .iter()
            .map(|k| {
                let confirmed = k.confirmed.load(Relaxed);
                json!({
                    "stream": k.stream,
                    "sink": k.sink,
                    "up": k.up.load(Relaxed),
                    "confirmed_seq": confirmed,
                    "backlog": self.backlog(k),
                    "last_error": k.last_error.lock().ok().and_then(|e| e.clone()),
                })
            })
            .collect();
        let error = self.error();
        json!({
            "state": if error.is_some() { "error" } else { "ok" },
            "error": error,
            "box": self.box_id,
            "written_seq": stats.written,
            "durable_seq": stats.durable,
            "dropped": stats.dropped,
            "unspooled": self.unspooled.load(Relaxed),
            "bytes": stats.bytes,
            "inputs_kept": self.inputs.as_ref().map(|i| i.stats().written),
            "upload": sinks,
        })
    }

    /// One phrase for the STATUS= line.
    pub fn status(&self) -> String {
        if let Some(e) = self.error() {
            return format!("spool FAILING ({e})");
        }
        let stats = self.spool.as_ref().map(|s| s.stats()).unwrap_or_default();
        let backlog = self.sinks.iter().map(|k| self.backlog(k)).max();
        match backlog {
            Some(b) => format!("spool {} kept, {b} to upload", stats.written),
            None => format!("spool {} kept", stats.written),
        }
    }

    /// The `beltbox_spool_*` and `beltbox_upload_*` families.
    pub fn prometheus(&self, out: &mut beltbox_core::prom::Exposition) {
        use beltbox_core::prom::{labels, Kind};
        let st = self.spool.as_ref().map(|s| s.stats()).unwrap_or_default();
        out.single(
            "beltbox_spool_sync_seconds_total",
            Kind::Counter,
            "Time spent in the spool committer's fdatasync calls.",
            st.sync_us as f64 / 1e6,
        );
        let rows: [(&str, Kind, &str, u64); 9] = [
            ("beltbox_spool_ok", Kind::Gauge, "1 while the result spool accepts and syncs records; 0 when it is failing (answers go out with \"spooled\": false).", u64::from(self.error().is_none())),
            ("beltbox_spool_written_seq", Kind::Counter, "The last result record's sequence number.", st.written),
            ("beltbox_spool_durable_seq", Kind::Counter, "Every result record up to this sequence number is on stable storage.", st.durable),
            ("beltbox_spool_syncs_total", Kind::Counter, "Group commits (fdatasync) of the result spool.", st.syncs),
            ("beltbox_spool_dropped_total", Kind::Counter, "Result records deleted, oldest first, to keep the spool within spool.max_size.", st.dropped),
            ("beltbox_spool_bytes", Kind::Gauge, "Bytes of the result spool's segment files.", st.bytes),
            ("beltbox_spool_unspooled_total", Kind::Counter, "Answers sent without a durable record because the spool was failing.", self.unspooled.load(Relaxed)),
            ("beltbox_spool_recovered_torn_bytes", Kind::Gauge, "Bytes of a torn write truncated when the spool was opened.", self.recovery.torn_bytes),
            ("beltbox_spool_recovered_damaged_bytes", Kind::Gauge, "Bytes of damaged records skipped when the spool was opened.", self.recovery.damaged_bytes),
        ];
        for (name, kind, help, v) in rows {
            out.single(name, kind, help, v);
        }
        if let Some(i) = &self.inputs {
            let st = i.stats();
            let rows: [(&str, Kind, &str, u64); 3] = [
                ("beltbox_spool_inputs_seq", Kind::Counter, "The last low-confidence input kept for review (its record's sequence number).", st.written),
                ("beltbox_spool_inputs_dropped_total", Kind::Counter, "Kept inputs deleted, oldest first, to stay within low_confidence.keep_max_size and keep_max_count.", st.dropped),
                ("beltbox_spool_inputs_bytes", Kind::Gauge, "Bytes of the kept inputs' segment files.", st.bytes),
            ];
            for (name, kind, help, v) in rows {
                out.single(name, kind, help, v);
            }
        }
        type Get = fn(&SinkStats, u64) -> u64;
        let families: [(&str, Kind, &str, Get); 5] = [
            (
                "beltbox_upload_confirmed_seq",
                Kind::Counter,
                "The last record the sink confirmed (the persisted cursor).",
                |k, _| k.confirmed.load(Relaxed),
            ),
            (
                "beltbox_upload_backlog",
                Kind::Gauge,
                "Durable records the sink has not confirmed yet.",
                |k, d| d.saturating_sub(k.confirmed.load(Relaxed)),
            ),
            (
                "beltbox_upload_sent_total",
                Kind::Counter,
                "Records the sink confirmed since start (a record sent again counts again).",
                |k, _| k.sent.load(Relaxed),
            ),
            (
                "beltbox_upload_failures_total",
                Kind::Counter,
                "Batches that failed (broker or receiver down, refused, timed out).",
                |k, _| k.failures.load(Relaxed),
            ),
            (
                "beltbox_upload_up",
                Kind::Gauge,
                "1 when the sink's last batch went through.",
                |k, _| u64::from(k.up.load(Relaxed)),
            ),
        ];
        for (name, kind, help, get) in families {
            out.family(name, kind, help);
            for k in &self.sinks {
                let l = labels(&[("stream", &k.stream), ("sink", k.sink)]);
                let durable = self.stream(&k.stream).map_or(0, |s| s.stats().durable);
                out.sample(name, &l, get(k, durable));
            }
        }
    }

    /// Stops the uploader and syncs the spool (the service is stopping).
    pub fn close(&self) {
        if let Some(u) = self
            .uploader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            u.stop();
        }
        for s in self.spool.iter().chain(&self.inputs) {
            s.close();
        }
    }
}

/// CRC-32 of a request's tensors (shape and elements): identifies the input in a record
/// without keeping it.
pub(crate) fn input_crc32(inputs: &[InputTensor]) -> u32 {
    use beltbox_core::preprocess::Elements;
    let mut h = crc32fast::Hasher::new();
    for t in inputs {
        for d in &t.shape {
            h.update(&(*d as u64).to_le_bytes());
        }
        match &t.data {
            Elements::U8(v) => h.update(v),
            Elements::I8(v) => chunked(&mut h, v, |x| x.to_le_bytes()),
            Elements::F32(v) => chunked(&mut h, v, |x| x.to_le_bytes()),
            Elements::Bytes(files) => files.iter().for_each(|f| h.update(f)),
            Elements::Typed(d) => h.update(&d.to_le_bytes()),
        }
    }
    h.finalize()
}

/// Hashes elements through a small buffer of their little-endian bytes (one `update` per
/// element is ten times slower on a camera frame).
fn chunked<T: Copy, const N: usize>(h: &mut crc32fast::Hasher, v: &[T], le: fn(T) -> [u8; N]) {
    let mut buf = Vec::with_capacity(4096 * N);
    for chunk in v.chunks(4096) {
        buf.clear();
        chunk.iter().for_each(|x| buf.extend_from_slice(&le(*x)));
        h.update(&buf);
    }
}
