//! The inference workers: a fixed pool taking jobs from the bounded queue. A worker owns
//! nothing but its turn at a model; the model's backend keeps a pool of run states, so
//! workers share one loaded model.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::kserve::{self, InputTensor};
use super::recent::Recent;
use super::{lowconf, outbox};
use super::{ServedModel, Shared};
use beltbox_core::detect::Detection;
use beltbox_core::model::ModelError;
use beltbox_core::postprocess::Class;
use beltbox_core::tensor::Tensor;
use beltbox_core::timing::{us, StageTimings};

/// How often an idle worker shows it is alive (the watchdog reads the heartbeats).
const IDLE_TICK: Duration = Duration::from_millis(250);

pub(crate) struct Job {
    pub model: Arc<ServedModel>,
    /// The request's tensors, in the manifest's input order.
    pub inputs: Vec<InputTensor>,
    pub enqueued: Instant,
    /// The request's `id`, kept in its result record.
    pub request_id: Option<String>,
    /// The HTTP side awaits this; it is gone when the client went away.
    pub reply: tokio::sync::oneshot::Sender<JobResult>,
}

pub(crate) struct Done {
    pub outputs: Vec<Tensor>,
    pub stages: StageTimings,
    pub top1: Option<Class>,
    /// The best classes, best first (at most `outbox::TOP_K`).
    pub classes: Vec<Class>,
    pub detections: Vec<Detection>,
    /// The result's record in the spool: its sequence number (appended, not yet
    /// durable: the HTTP side awaits that), or why it was not written. `None` when the
    /// spool is off.
    pub spooled: Option<Result<u64, String>>,
    /// Under the manifest's `low_confidence` threshold (`None`: it sets none).
    pub low_confidence: Option<bool>,
    /// The secondary model's opinion on a low-confidence input (`lowconf`).
    pub secondary: Option<lowconf::Secondary>,
}

/// `Err((status, message))` for requests that could not be served.
pub(crate) type JobResult = Result<Done, (u16, String)>;

pub(crate) fn start(
    shared: &Arc<Shared>,
    rx: Arc<Mutex<Receiver<Job>>>,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    (0..shared.cfg.workers)
        .map(|i| {
            let (s, rx) = (Arc::clone(shared), Arc::clone(&rx));
            std::thread::Builder::new()
                .name(format!("beltbox-worker-{i}"))
                .spawn(move || worker(&s, &rx, i))
        })
        .collect()
}

fn worker(shared: &Shared, rx: &Mutex<Receiver<Job>>, idx: usize) {
    let beat = || {
        if let Some(h) = shared.heartbeats.get(idx) {
            h.store(shared.now_ms(), Relaxed);
        }
    };
    loop {
        beat();
        let msg = {
            let guard = rx.lock().unwrap_or_else(|p| p.into_inner());
            guard.recv_timeout(IDLE_TICK)
        };
        match msg {
            Ok(Job {
                model,
                inputs,
                enqueued,
                request_id,
                reply,
            }) => {
                shared.metrics.queue_depth.fetch_sub(1, Relaxed);
                // The client may have gone (its connection closed); it is not run then.
                if reply.is_closed() {
                    continue;
                }
                // Nothing to tell if it went while this ran.
                let _ = reply.send(run(shared, &model, inputs, enqueued, request_id.as_deref()));
            }
            Err(RecvTimeoutError::Timeout) if shared.workers_stop.load(Relaxed) => return,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

fn run(
    shared: &Shared,
    model: &ServedModel,
    inputs: Vec<InputTensor>,
    enqueued: Instant,
    request_id: Option<&str>,
) -> JobResult {
    let queued = enqueued.elapsed();
    let limit = Duration::from_millis(shared.cfg.queue_timeout_ms);
    if queued > limit {
        return Err((
            503,
            format!(
                "waited {} ms for a worker, over limits.queue_timeout_ms = {}",
                queued.as_millis(),
                limit.as_millis()
            ),
        ));
    }
    shared.metrics.in_flight.fetch_add(1, Relaxed);
    let frame = shared
        .recent
        .as_ref()
        .filter(|r| r.claim(&model.frame_at_ms, shared.now_ms()))
        .and_then(|_| Recent::copy(&inputs, shared.gate.get()));
    let crc = shared.outbox.as_ref().map(|_| outbox::input_crc32(&inputs));
    // The low-confidence path needs the inputs after the model has consumed them.
    let mut copy = lowconf::wants_copy(shared, model)
        .then(|| lowconf::copy(&inputs, shared.gate.get()))
        .flatten();
    let mut result = infer(model, inputs, us(queued));
    if let Ok(done) = &mut result {
        done.low_confidence = lowconf::is_low(model, done.top1.as_ref());
        if done.low_confidence == Some(true) {
            model.low_confidence.flagged.fetch_add(1, Relaxed);
            if let Some((inputs, _)) = &copy {
                done.secondary = lowconf::rerun(shared, model, inputs.clone(), |sec, i| {
                    infer(sec, i, 0).map(|d| d.top1).map_err(|(_, m)| m)
                });
            }
        } else {
            // Not needed: give its room back now.
            copy = None;
        }
    }
    if let (Some(r), Some(f), Ok(_)) = (&shared.recent, frame, &result) {
        r.offer(model.name(), f);
    }
    shared.metrics.in_flight.fetch_sub(1, Relaxed);
    if let Ok(mut t) = model.tally.lock() {
        match &result {
            Ok(done) => t.record_ok(
                done.top1.as_ref().map(|c| (c.index, c.score)),
                done.stages.total_us(),
            ),
            // A model failure counts against it; a client's bad request does not.
            Err((status, _)) if *status >= 500 => t.record_error(),
            Err(_) => {}
        }
    }
    if let (Some(o), Some(crc), Ok(done)) = (&shared.outbox, crc, &mut result) {
        let finished = outbox::Finished {
            model,
            request_id,
            input_crc32: crc,
            stages: &done.stages,
            classes: &done.classes,
            detections: done.detections.len(),
            low_confidence: done.low_confidence,
            secondary: done.secondary.as_ref(),
        };
        // Appended here, on the worker (a write, no sync); the HTTP task awaits the sync.
        let spooled = o.append(&finished);
        if done.low_confidence == Some(true) && o.keeps_inputs() {
            let kept = match &copy {
                Some((inputs, _)) => o
                    .keep_input(&finished, spooled.as_ref().ok().copied(), inputs)
                    .map_err(|e| {
                        log::warn!("{}: a low-confidence input not kept: {e}", model.name())
                    })
                    .is_ok(),
                // No room at the gate for the copy.
                None => false,
            };
            let counter = if kept {
                &model.low_confidence.kept
            } else {
                &model.low_confidence.not_kept
            };
            counter.fetch_add(1, Relaxed);
        }
        done.spooled = Some(spooled);
    }
    drop(copy);
    if let Ok(done) = &result {
        model.metrics.record_stages(&done.stages);
        let now = shared.now_ms();
        if let Ok(mut w) = shared.windows.lock() {
            w.record(now, &done.stages);
        }
    }
    result
}

/// A failed request: the HTTP status and the message for the client.
struct Fail(u16, String);

impl From<ModelError> for Fail {
    fn from(e: ModelError) -> Fail {
        if e.is_input_error() {
            Fail(400, e.to_string())
        } else {
            Fail(500, e.to_string())
        }
    }
}

fn infer(m: &ServedModel, inputs: Vec<InputTensor>, queue_us: u64) -> JobResult {
    let inference = m
        .model
        .infer_with(
            |specs| {
                inputs
                    .into_iter()
                    .zip(specs)
                    .map(|(t, spec)| {
                        kserve::to_model_input(t, spec).map_err(|e| Fail(400, e.to_string()))
                    })
                    .collect()
            },
            outbox::TOP_K,
        )
        .map_err(|Fail(status, message)| {
            if status >= 500 {
                log::error!("{} failed on a request: {message}", m.name());
                (status, format!("model {} failed: {message}", m.name()))
            } else {
                (status, message)
            }
        })?;
    Ok(Done {
        outputs: inference.outputs,
        stages: StageTimings {
            queue_us,
            ..inference.timings
        },
        top1: inference.classes.first().cloned(),
        classes: inference.classes,
        detections: inference.detections,
        spooled: None,
        low_confidence: None,
        secondary: None,
    })
}
