//! The low-confidence path (issue #16, docs/offline.md, "Low confidence"): when a model's
//! manifest sets `low_confidence` and an answer's top score is under it,
//!
//! 1. the answer is **flagged** (`"low_confidence": true` in its parameters and its
//!    record);
//! 2. when `[low_confidence] secondary` names a second served model for it, the same
//!    input is **re-run** there, and the second opinion travels with the answer
//!    (`secondary_*` parameters) and its record;
//! 3. the **input is kept** for later upload and review: a record in the `inputs` spool
//!    (`state_dir/spool/inputs`, bounded by `keep_max_size` and `keep_max_count`, oldest
//!    dropped first), uploaded like results on the `inputs` stream, naming its result's
//!    `result_seq`.
//!
//! A copy of the request's inputs is needed for 2 and 3 before the model runs (it consumes
//! them). It is heap the RAM budget must see: reserved at the admission gate without
//! waiting, and when there is no room the answer is still flagged, its input simply not
//! kept (`beltbox_low_confidence_total{outcome="not_kept"}`). Each outcome is counted.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use serde_json::json;

use beltbox_core::memory::admission::{Gate, Reservation};
use beltbox_core::postprocess::Class;

use super::kserve::InputTensor;
use super::{ServedModel, Shared};

/// Per model: answers flagged, re-run on the secondary, inputs kept, inputs not kept.
#[derive(Debug, Default)]
pub struct Counters {
    pub flagged: AtomicU64,
    pub rerun: AtomicU64,
    pub kept: AtomicU64,
    pub not_kept: AtomicU64,
}

impl Counters {
    pub fn rows(&self) -> [(&'static str, u64); 4] {
        [
            ("flagged", self.flagged.load(Relaxed)),
            ("rerun", self.rerun.load(Relaxed)),
            ("kept", self.kept.load(Relaxed)),
            ("not_kept", self.not_kept.load(Relaxed)),
        ]
    }
}

/// The secondary model's opinion on a low-confidence input.
#[derive(Debug, Clone)]
pub(crate) struct Secondary {
    pub model: String,
    pub version: Option<String>,
    pub top1: Option<Class>,
    pub error: Option<String>,
}

impl Secondary {
    pub fn json(&self) -> serde_json::Value {
        json!({
            "model": self.model,
            "version": self.version,
            "top1": self.top1.as_ref().map(|c| json!({"index": c.index, "label": c.label, "score": c.score})),
            "error": self.error,
        })
    }
}

/// A copy of a request's inputs and the room it holds.
pub(crate) type Copy = (Vec<InputTensor>, Option<Reservation>);

/// Whether answers of `model` need a copy of their inputs: it has a threshold, and a low
/// answer is re-run or kept.
pub(crate) fn wants_copy(shared: &Shared, model: &ServedModel) -> bool {
    model.model.manifest().low_confidence.is_some()
        && (shared
            .cfg
            .low_confidence
            .secondary
            .contains_key(model.name())
            || shared.outbox.as_ref().is_some_and(|o| o.keeps_inputs()))
}

/// The copy, with twice its bytes reserved (the copy, and its encoding when kept); `None`
/// when the gate has no room now.
pub(crate) fn copy(inputs: &[InputTensor], gate: Option<&Arc<Gate>>) -> Option<Copy> {
    let held = super::recent::reserve_copy(inputs, gate)?;
    Some((inputs.to_vec(), held))
}

/// Whether `top1` is under the model's threshold; `None` when it sets none.
pub(crate) fn is_low(model: &ServedModel, top1: Option<&Class>) -> Option<bool> {
    let t = model.model.manifest().low_confidence?;
    Some(top1.is_none_or(|c| f64::from(c.score) < t))
}

/// Re-runs `inputs` on the secondary model configured for `model`, if any.
pub(crate) fn rerun(
    shared: &Shared,
    model: &ServedModel,
    inputs: Vec<InputTensor>,
    infer: impl FnOnce(&ServedModel, Vec<InputTensor>) -> Result<Option<Class>, String>,
) -> Option<Secondary> {
    let name = shared.cfg.low_confidence.secondary.get(model.name())?;
    model.low_confidence.rerun.fetch_add(1, Relaxed);
    let Some(sec) = shared.find(name) else {
        return Some(Secondary {
            model: name.clone(),
            version: None,
            top1: None,
            error: Some(format!("secondary model `{name}` is not loaded")),
        });
    };
    let (top1, error) = match infer(&sec, inputs) {
        Ok(top1) => (top1, None),
        Err(e) => (None, Some(e)),
    };
    Some(Secondary {
        model: name.clone(),
        version: Some(sec.version()),
        top1,
        error,
    })
}

/// `beltbox_low_confidence_total{model, outcome}`.
pub(crate) fn prometheus(models: &[Arc<ServedModel>], out: &mut beltbox_core::prom::Exposition) {
    use beltbox_core::prom::{labels, Kind};
    out.family(
        "beltbox_low_confidence_total",
        Kind::Counter,
        "Answers under the model's low_confidence threshold (flagged), re-run on the secondary model (rerun), whose input was kept for review (kept) or could not be (not_kept: no room or spool failing).",
    );
    for m in models {
        for (outcome, n) in m.low_confidence.rows() {
            let l = labels(&[("model", m.name()), ("outcome", outcome)]);
            out.sample("beltbox_low_confidence_total", &l, n);
        }
    }
}
