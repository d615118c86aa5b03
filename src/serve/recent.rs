//! Keeps a few recent frames per model on disk (`beltbox_core::frames`, under
//! `state_dir/ota/recent/NAME/`), for OTA qualification's shadow run: a candidate is run
//! beside the serving version on what this belt really sends before it may serve.
//!
//! Inference never waits for it: at most one frame per `ota.recent_frame_interval_ms` per
//! model is copied (a claim on an atomic timestamp; the copy is one frame's bytes), handed
//! to a writer thread through a queue of two, and dropped when the queue is full. Only
//! frames a model answered are kept. The ring holds the newest `ota.recent_frames`.
//!
//! The copy is heap the RAM budget must see: twice its bytes (the copy, and its encoding
//! while it is written) are reserved at the admission gate without waiting, and held until
//! the frame is on disk. When the gate has no room the frame is simply not kept.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;

use beltbox_core::frames::{Input, Ring};
use beltbox_core::memory::admission::{Gate, Reservation};

use super::kserve::InputTensor;

/// Frames waiting for the writer; more are dropped.
const QUEUE: usize = 2;

/// A frame for the writer: the model's name, the inputs, the room they hold.
type Kept = (String, Vec<Input>, Option<Reservation>);

pub(crate) struct Recent {
    tx: SyncSender<Kept>,
    interval_ms: u64,
}

impl Recent {
    /// Starts the writer; `None` when frames are off (`ota.recent_frames = 0`) or its
    /// thread cannot start.
    pub fn start(cfg: &super::Config) -> Option<Recent> {
        if cfg.recent_frames == 0 {
            return None;
        }
        let (tx, rx) = sync_channel::<Kept>(QUEUE);
        let root = cfg.state_dir.join("ota").join("recent");
        let keep = cfg.recent_frames;
        let spawned = std::thread::Builder::new()
            .name("beltbox-recent".into())
            .spawn(move || {
                let mut warned = false;
                for (name, frame, held) in rx {
                    let ring = Ring::new(&root.join(&name), keep);
                    let pushed = ring.push(frame);
                    drop(held);
                    match pushed {
                        Ok(()) => warned = false,
                        // Once per run of failures (a full disk): the shadow run skips.
                        Err(e) if !warned => {
                            warned = true;
                            log::warn!(
                                "{name}: cannot keep a recent frame for OTA shadow runs: {e}"
                            );
                        }
                        Err(_) => {}
                    }
                }
            });
        match spawned {
            Ok(_) => Some(Recent {
                tx,
                interval_ms: cfg.recent_frame_interval_ms,
            }),
            Err(e) => {
                log::warn!("recent frames off: cannot start their thread: {e}");
                None
            }
        }
    }

    /// Whether this request's frame is to be kept: true for one caller per interval.
    /// `last_ms` is the model's (ms since the service started, +1 so 0 means never).
    pub fn claim(&self, last_ms: &AtomicU64, now_ms: u64) -> bool {
        let last = last_ms.load(Relaxed);
        let due = last == 0 || now_ms + 1 >= last + self.interval_ms;
        due && last_ms
            .compare_exchange(last, now_ms + 1, Relaxed, Relaxed)
            .is_ok()
    }

    /// A copy of a request's inputs with the room it holds at `gate` (module docs), to
    /// [`Recent::offer`] once it was answered; `None` when the gate has no room now.
    pub fn copy(
        inputs: &[InputTensor],
        gate: Option<&Arc<Gate>>,
    ) -> Option<(Vec<Input>, Option<Reservation>)> {
        let held = reserve_copy(inputs, gate)?;
        let frame = inputs
            .iter()
            .map(|t| (t.shape.clone(), t.data.clone()))
            .collect();
        Some((frame, held))
    }

    /// Hands a frame to the writer, or drops it when the writer is behind.
    pub fn offer(&self, model: &str, (frame, held): (Vec<Input>, Option<Reservation>)) {
        match self.tx.try_send((model.to_string(), frame, held)) {
            Ok(()) | Err(TrySendError::Full(_)) => {}
            Err(TrySendError::Disconnected(_)) => {
                log::debug!("recent frames: the writer has stopped");
            }
        }
    }
}

/// The room a copy of `inputs` holds at `gate` without waiting: twice their bytes (the
/// copy, and its encoding when written). `None`: no room now; `Some(None)`: no gate.
pub(crate) fn reserve_copy(
    inputs: &[InputTensor],
    gate: Option<&Arc<Gate>>,
) -> Option<Option<Reservation>> {
    let bytes: u64 = inputs.iter().map(|t| t.data.heap_bytes()).sum();
    match gate {
        Some(g) => Some(Some(g.try_reserve(2 * bytes)?)),
        None => Some(None),
    }
}
