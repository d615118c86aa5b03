//! The inference workers: a fixed pool taking jobs from the bounded queue. A worker owns
//! nothing but its turn at a model; the model's backend keeps a pool of run states, so
//! workers share one loaded model.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::kserve::{self, InputTensor};
use super::metrics::StageUs;
use super::{ServedModel, Shared};
use crate::model::us;
use crate::postprocess::Class;
use crate::tensor::Tensor;
use crate::thermal::StageSample;

/// How often an idle worker shows it is alive (the watchdog reads the heartbeats).
const IDLE_TICK: Duration = Duration::from_millis(250);

pub(crate) struct Job {
    pub model: Arc<ServedModel>,
    pub input: InputTensor,
    pub enqueued: Instant,
    pub reply: SyncSender<JobResult>,
}

pub(crate) struct Done {
    pub outputs: Vec<Tensor>,
    pub stages: StageUs,
    pub top1: Option<Class>,
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
            Ok(job) => {
                shared.metrics.queue_depth.fetch_sub(1, Relaxed);
                let reply = job.reply.clone();
                // The connection may have gone (client timeout); nothing to tell then.
                let _ = reply.send(run(shared, job));
            }
            Err(RecvTimeoutError::Timeout) if shared.workers_stop.load(Relaxed) => return,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

fn run(shared: &Shared, job: Job) -> JobResult {
    let queued = job.enqueued.elapsed();
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
    let result = infer(&job.model, job.input, us(queued));
    shared.metrics.in_flight.fetch_sub(1, Relaxed);
    if let Ok(done) = &result {
        job.model.metrics.record_stages(&done.stages);
        let sample = StageSample {
            queue_us: done.stages[0],
            preprocess_us: done.stages[1],
            inference_us: done.stages[2],
            postprocess_us: done.stages[3],
        };
        let now = shared.now_ms();
        if let Ok(mut w) = shared.windows.lock() {
            w.record(now, &sample);
        }
    }
    result
}

fn infer(m: &ServedModel, input: InputTensor, queue_us: u64) -> JobResult {
    let manifest = m.model.manifest();
    let t0 = Instant::now();
    let tensor =
        kserve::to_model_input(input, &manifest.input).map_err(|e| (400, e.to_string()))?;
    let t1 = Instant::now();
    let outputs = m.model.run_tensor(&tensor).map_err(|e| {
        if e.is_input_error() {
            (400, e.to_string())
        } else {
            log::error!("{} failed on a request: {e}", m.name());
            (500, format!("model {} failed: {e}", m.name()))
        }
    })?;
    let t2 = Instant::now();
    let top1 = m.model.classes(&outputs, 1).into_iter().next();
    let t3 = Instant::now();
    let (pre, inf, post) = (us(t1 - t0), us(t2 - t1), us(t3 - t2));
    Ok(Done {
        outputs,
        stages: [queue_us, pre, inf, post, pre + inf + post],
        top1,
    })
}
