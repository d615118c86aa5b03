//! On-device qualification of a candidate package: it must earn its place on *this* box
//! before it serves. The result is an evidence card (`qualification.json`, kept with the
//! version in the store) that says what was checked, what was measured and why it passed
//! or failed.
//!
//! Checks, in order (a failed check stops the ones after it that need its result):
//! 1. **ram**: the candidate's RAM plan (built from its own optimised graph) fits its
//!    manifest's `ram_mib`, and fits the service budget *alongside* the model serving now,
//!    because during a hot swap both are resident (`memory::fit::together_bytes`).
//! 2. **golden**: the golden self-check every load runs: the package's reference outputs
//!    reproduced within tolerance, every file's sha256 verified.
//! 3. **golden_top1**: top-1 on the golden samples that carry a label, against the
//!    manifest's `accuracy_floor` (the held-out set proper is the manifest's `[accuracy]`;
//!    a package that ships no labelled samples skips this check and the card says so).
//! 4. **p95**: p95 latency of the full pipeline (preprocess, run, postprocess) over the
//!    golden inputs on this board, against the manifest's `budgets.p95_ms`.
//! 5. **peak_memory**: the heap's high-water mark while the candidate was built,
//!    self-checked and run (the counting allocator, `memory::alloc`; less the golden input
//!    files read for the timed runs, which serving never holds), against its plan's
//!    peak heap: a plan that underestimates would let the service admit more than fits,
//!    so the candidate is refused. Measured only in the `beltbox` binary, which installs
//!    the allocator; elsewhere the card says it was not measured.
//! 6. **shadow**: the serving version and the candidate both run on the recent frames the
//!    service kept (`beltbox_core::frames`, `ota.recent_frames`), frame by frame; their
//!    top-1 labels must agree on at least `min_agreement` of them. A frame the serving
//!    version cannot take is skipped; one only the candidate cannot take counts against
//!    it. Without frames (a new box, frames off) the card says the check was skipped.

use std::path::Path;
use std::time::Instant;

use beltbox_core::frames;
use beltbox_core::memory::budget::human;
use beltbox_core::memory::{alloc, fit, Plan};
use beltbox_core::model::{self, LoadOptions, Model};
use beltbox_core::preprocess::{self, InputKind};
use serde::Serialize;

/// One line of the card.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub passed: bool,
    pub detail: String,
}

/// The evidence card.
#[derive(Debug, Clone, Serialize)]
pub struct Card {
    pub model: String,
    pub version: String,
    pub at_unix_ms: u64,
    pub passed: bool,
    pub checks: Vec<Check>,
    /// Measured: p95 of the full pipeline, ms.
    pub p95_ms: Option<f64>,
    /// The candidate's planned resident bytes.
    pub plan_bytes: Option<u64>,
    /// Measured: the heap's high-water mark while it was qualified, and the plan's peak
    /// heap it is held against.
    pub peak_heap_bytes: Option<u64>,
    pub plan_peak_heap_bytes: Option<u64>,
    /// Shadow run: frames compared and the share whose top-1 labels agreed.
    pub shadow_frames: Option<usize>,
    pub shadow_agreement: Option<f64>,
}

impl Card {
    /// The first failed check, as one sentence.
    pub fn why(&self) -> Option<String> {
        self.checks
            .iter()
            .find(|c| !c.passed)
            .map(|c| format!("qualification failed: {}: {}", c.name, c.detail))
    }

    fn push(&mut self, name: &'static str, passed: bool, detail: String) {
        self.passed &= passed;
        self.checks.push(Check {
            name,
            passed,
            detail,
        });
    }
}

/// What the candidate is qualified against.
#[derive(Debug, Clone)]
pub struct Context {
    pub load: LoadOptions,
    /// Bytes the box gives models (service budget); `None`: only the manifest's own.
    pub budget_bytes: Option<u64>,
    /// The RAM plan of the model serving now under the same name, if any: during the swap
    /// both are resident.
    pub alongside: Option<Plan>,
    /// Timed runs over the golden inputs for the p95.
    pub timing_runs: usize,
    /// The serving version and the recent frames for the shadow run, if any.
    pub shadow: Option<Shadow>,
    /// Least share of the shadow run's frames whose top-1 labels must agree
    /// (`ota.probation_min_agreement`, the same bar probation holds).
    pub min_agreement: f64,
}

/// What the shadow run compares.
#[derive(Debug, Clone)]
pub struct Shadow {
    /// The package serving now.
    pub serving: std::path::PathBuf,
    /// `state_dir/ota/recent/NAME`.
    pub frames: std::path::PathBuf,
}

/// Qualifies the package in `dir`. Returns the card and, when it passed, the loaded
/// model (so that an install can hand it on instead of loading it a second time).
pub fn qualify(dir: &Path, ctx: &Context, now_ms: u64) -> (Card, Option<Model>) {
    let mut card = Card {
        model: String::new(),
        version: String::new(),
        at_unix_ms: now_ms,
        passed: true,
        checks: Vec::new(),
        p95_ms: None,
        plan_bytes: None,
        peak_heap_bytes: None,
        plan_peak_heap_bytes: None,
        shadow_frames: None,
        shadow_agreement: None,
    };
    let heap_before = alloc::current_bytes();
    alloc::reset_peak();
    let built = match model::build(dir, &ctx.load, None) {
        Ok(b) => b,
        Err(e) => {
            card.push("load", false, e.to_string());
            return (card, None);
        }
    };
    card.model = built.package.manifest.name.clone();
    card.version = built.package.manifest.version.to_string();
    let need = built.plan.total_bytes();
    card.plan_bytes = Some(need);
    let plan_peak = built.plan.peak_heap_bytes();
    card.plan_peak_heap_bytes = Some(plan_peak);
    let manifest_budget = built
        .package
        .manifest
        .budgets
        .ram_mib
        .saturating_mul(1 << 20);
    let (together, alongside) = match &ctx.alongside {
        // Weights and graph of both, one runtime (memory::fit's rule).
        Some(live) => (fit::together_bytes(live, &built.plan), live.total_bytes()),
        None => (need, 0),
    };
    let (ok, detail) = match ctx.budget_bytes {
        Some(b) => (
            need <= manifest_budget && together <= b,
            format!(
                "plan {} (its manifest allows {}); with the serving model's {} that is {} of the box's {}",
                human(need),
                human(manifest_budget),
                human(alongside),
                human(together),
                human(b)
            ),
        ),
        None => (
            need <= manifest_budget,
            format!(
                "plan {} of its manifest's {} (no service budget set)",
                human(need),
                human(manifest_budget)
            ),
        ),
    };
    card.push("ram", ok, detail);
    if !ok {
        return (card, None);
    }
    let model = match built.self_check() {
        Ok(m) => {
            let g = &m.info.golden;
            card.push(
                "golden",
                true,
                format!(
                    "{} of {} samples reproduced (worst {:.2} of tolerance)",
                    g.passed, g.samples, g.worst_ratio
                ),
            );
            m
        }
        Err(e) => {
            card.push("golden", false, e.to_string());
            return (card, None);
        }
    };
    // Two windows: loading (build and self-check), then the timed runs, whose golden input
    // buffers are qualification's own (serving never holds them) and are taken off.
    let load_peak = alloc::peak_bytes().saturating_sub(heap_before) as u64;
    alloc::reset_peak();
    let (times, top1, held) = match run_golden(&model, ctx.timing_runs.max(1)) {
        Ok(r) => r,
        Err(e) => {
            card.push("p95", false, e);
            return (card, None);
        }
    };
    let m = model.manifest();
    match (top1, m.accuracy_floor) {
        (Some((right, n)), Some(floor)) => {
            let acc = right as f64 / n as f64;
            card.push(
                "golden_top1",
                acc >= floor,
                format!("{right} of {n} labelled golden samples right ({acc:.3}), floor {floor}"),
            );
        }
        (None, Some(floor)) => card.push(
            "golden_top1",
            true,
            format!("skipped: no labelled golden samples to hold against the floor {floor}"),
        ),
        (_, None) => {}
    }
    let mut sorted = times.clone();
    let p95 = beltbox_core::stats::nearest_rank(&mut sorted, 0.95).unwrap_or(f64::INFINITY);
    card.p95_ms = Some(p95);
    card.push(
        "p95",
        p95 <= m.budgets.p95_ms,
        format!(
            "{p95:.2} ms over {} runs on this board, SLO {} ms",
            times.len(),
            m.budgets.p95_ms
        ),
    );
    if alloc::installed() {
        let run_peak =
            (alloc::peak_bytes().saturating_sub(heap_before) as u64).saturating_sub(held);
        let peak = load_peak.max(run_peak);
        card.peak_heap_bytes = Some(peak);
        card.push(
            "peak_memory",
            peak <= plan_peak,
            format!(
                "heap peaked at {} while it loaded, self-checked and ran (the {} of golden inputs read for the timed runs not counted); its plan's peak heap is {}",
                human(peak),
                human(held),
                human(plan_peak)
            ),
        );
    } else {
        card.push(
            "peak_memory",
            true,
            "not measured: the counting allocator is not installed in this process".into(),
        );
    }
    if let Some(sh) = &ctx.shadow {
        shadow(&mut card, &model, sh, ctx);
    }
    let passed = card.passed;
    (card, passed.then_some(model))
}

/// The shadow run (module docs, check 6).
fn shadow(card: &mut Card, candidate: &Model, sh: &Shadow, ctx: &Context) {
    let frames = match frames::Ring::new(&sh.frames, usize::MAX).list() {
        Ok(f) => f,
        Err(e) => {
            card.push("shadow", true, format!("skipped: {e}"));
            return;
        }
    };
    if frames.is_empty() {
        card.push(
            "shadow",
            true,
            format!(
                "skipped: no recent frames in {} (the service keeps them while it serves; ota.recent_frames)",
                sh.frames.display()
            ),
        );
        return;
    }
    let serving = match model::build(&sh.serving, &ctx.load, None).and_then(|b| b.self_check()) {
        Ok(m) => m,
        Err(e) => {
            card.push(
                "shadow",
                true,
                format!("skipped: the serving version does not load here: {e}"),
            );
            return;
        }
    };
    /// Why a model could not answer a frame (a frame it cannot take, or a model error).
    struct NoAnswer;
    impl From<model::ModelError> for NoAnswer {
        fn from(_: model::ModelError) -> NoAnswer {
            NoAnswer
        }
    }
    let top1 = |m: &Model, frame: &[frames::Input]| -> Result<Option<String>, NoAnswer> {
        let inf = m.infer_with(
            |specs| -> Result<Vec<_>, NoAnswer> {
                if specs.len() != frame.len() {
                    return Err(NoAnswer);
                }
                frame
                    .iter()
                    .zip(specs)
                    .map(|((shape, data), spec)| {
                        preprocess::from_elements(shape, data.clone(), spec).map_err(|_| NoAnswer)
                    })
                    .collect()
            },
            1,
        )?;
        Ok(inf.classes.into_iter().next().map(|c| c.label))
    };
    let (mut compared, mut agreed, mut skipped, mut refused) = (0usize, 0usize, 0usize, 0usize);
    for f in &frames {
        let Ok(inputs) = frames::read(f) else {
            skipped += 1;
            continue;
        };
        let want = match top1(&serving, &inputs) {
            Ok(Some(l)) => l,
            // Not a classifier's answer, or a frame the serving version cannot take.
            Ok(None) | Err(_) => {
                skipped += 1;
                continue;
            }
        };
        compared += 1;
        match top1(candidate, &inputs) {
            Ok(Some(l)) if l == want => agreed += 1,
            Ok(_) => {}
            Err(_) => refused += 1,
        }
    }
    if compared == 0 {
        card.push(
            "shadow",
            true,
            format!("skipped: none of the {skipped} recent frames gave the serving version a top-1 class"),
        );
        return;
    }
    let a = agreed as f64 / compared as f64;
    card.shadow_frames = Some(compared);
    card.shadow_agreement = Some(a);
    card.push(
        "shadow",
        a >= ctx.min_agreement,
        format!(
            "top-1 agreed with the serving version on {agreed} of {compared} recent frames ({:.0} %, at least {:.0} % needed){}{}",
            a * 100.0,
            ctx.min_agreement * 100.0,
            if refused > 0 { format!("; it could not take {refused} of them") } else { String::new() },
            if skipped > 0 { format!("; {skipped} skipped") } else { String::new() },
        ),
    );
}

/// Pipeline times in ms, top-1 as (right, labelled) when some samples carry labels, and
/// the bytes of golden input files held while they ran (qualification's, not serving's).
type GoldenRuns = (Vec<f64>, Option<(usize, usize)>, u64);

/// Runs the golden samples `runs` times in all (round robin, each at least once); top-1 is
/// counted on the first pass.
fn run_golden(model: &Model, runs: usize) -> Result<GoldenRuns, String> {
    let m = model.manifest();
    let dir = &model.package.dir;
    let mut inputs = Vec::new();
    for s in &m.golden.samples {
        let mut files = Vec::new();
        for f in &s.inputs {
            let bytes = std::fs::read(dir.join(f)).map_err(|e| format!("{f}: {e}"))?;
            files.push((bytes, InputKind::from_file_name(f)));
        }
        inputs.push((files, s.label));
    }
    if inputs.is_empty() {
        return Err("the package has no golden samples to time".into());
    }
    let mut times = Vec::with_capacity(runs);
    let (mut right, mut labelled) = (0, 0);
    for i in 0..runs.max(inputs.len()) {
        let (files, label) = &inputs[i % inputs.len()];
        let refs: Vec<(&[u8], InputKind)> = files.iter().map(|(b, k)| (&b[..], *k)).collect();
        let t = Instant::now();
        let inf = model.infer(&refs, 1).map_err(|e| e.to_string())?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        if i < inputs.len() {
            if let (Some(l), Some(c)) = (label, inf.classes.first()) {
                labelled += 1;
                right += usize::from(c.index == *l);
            }
        }
    }
    let held = inputs
        .iter()
        .flat_map(|(files, _)| files.iter().map(|(b, _)| b.len() as u64))
        .sum();
    Ok((times, (labelled > 0).then_some((right, labelled)), held))
}
