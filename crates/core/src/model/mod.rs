//! Model packages: manifest, verification, backends, golden self-check.
//!
//! Loading is one pipeline with a fixed order, each step refusing bad input with a
//! typed error, and each step done once:
//!
//! 1. [`build`]: open the package (strict manifest), read and verify the model file in one
//!    streaming pass, build the backend once (tract for ONNX, LiteRT for TFLite), and plan
//!    its RAM from that built plan. The caller decides here, before anything runs, whether
//!    the model fits its budget (the service and `beltbox plan` do).
//! 2. [`Built::self_check`]: the golden self-check (the runtime must reproduce the
//!    reference outputs shipped in the package, or the model is refused: silently wrong
//!    numbers must be impossible, whatever the backend), then every package file the load
//!    did not read is verified. Only then is it a [`Model`].

pub mod backend;
pub mod golden;
pub mod package;
#[cfg(any(feature = "tflite", feature = "tflitec"))]
pub mod tflite;
pub mod tract_backend;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::detect::{self, DetectError, Detection};
use crate::manifest::{self, Format};
use crate::memory::{GraphFacts, Plan, PlanInputs, PreprocessFacts};
use crate::postprocess::{self, Class};
use crate::preprocess::{self, InputKind, Prepared, PreprocessError};
use crate::tensor::Tensor;
use crate::timing::{ms_f64 as ms, us, StageTimings};
use backend::{Backend, BackendError};
use package::{Package, PackageError};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Package(#[from] PackageError),
    #[error("{path}: {source}")]
    Backend { path: PathBuf, source: BackendError },
    #[error("{path}: format `{format}` needs beltbox built with the `{feature}` cargo feature")]
    FormatUnavailable {
        path: PathBuf,
        format: Format,
        feature: &'static str,
    },
    #[error("{0}")]
    Golden(#[from] golden::GoldenError),
    #[error("input: {0}")]
    Input(#[from] PreprocessError),
    #[error("model output has {got} tensors; the manifest describes {expected}")]
    OutputCount { expected: usize, got: usize },
    #[error("detection: {0}")]
    Detect(#[from] DetectError),
    #[error("model `{model}` takes {} inputs ({}); {got} given: give one per input, by name", .inputs.len(), .inputs.join(", "))]
    InputCount {
        model: String,
        inputs: Vec<String>,
        got: usize,
    },
}

impl ModelError {
    /// Whether the fault lies in what the caller handed us (a file, a package) rather
    /// than in the runtime: the CLI maps these to exit code 2, the others to 1 (a check
    /// failed: the backend failed at run time, or it did not reproduce the golden outputs).
    pub fn is_input_error(&self) -> bool {
        !matches!(
            self,
            ModelError::Backend {
                source: BackendError::Run(_),
                ..
            } | ModelError::Golden(
                golden::GoldenError::Mismatch { .. } | golden::GoldenError::Top1 { .. }
            ) | ModelError::Detect(_)
        )
    }
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Intra-op threads for the backend.
    pub threads: usize,
    /// TFLite runtime library to use instead of the default lookup
    /// (`$BELTBOX_LITERT_LIB`, next to the executable, /usr/lib/beltbox, system paths).
    pub tflite_library: Option<PathBuf>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            threads: 1,
            tflite_library: None,
        }
    }
}

/// Facts about a load, logged and reported by `bench`.
#[derive(Debug, Clone, Serialize)]
pub struct LoadInfo {
    /// Open + verify + build backend (what a swap costs before the self-check).
    pub load_ms: f64,
    /// Golden self-check duration.
    pub selfcheck_ms: f64,
    pub backend: &'static str,
    pub runtime: String,
    pub threads: usize,
    pub golden: golden::GoldenReport,
}

#[derive(Debug, Clone)]
pub struct Inference {
    pub classes: Vec<Class>,
    /// Boxes of a `[detection]` package, best first (empty otherwise).
    pub detections: Vec<Detection>,
    pub outputs: Vec<Tensor>,
    pub timings: StageTimings,
}

pub struct Model {
    pub package: Package,
    pub labels: Vec<String>,
    /// `[detection]` class labels.
    pub detection_labels: Vec<String>,
    pub info: LoadInfo,
    /// The RAM plan made from this model's built backend at load.
    pub plan: Plan,
    backend: Box<dyn Backend>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.package.manifest.name)
            .field("version", &self.package.manifest.version)
            .field("backend", &self.backend.name())
            .finish()
    }
}

/// A package whose files are verified and whose backend is built, with its RAM plan; not
/// yet self-checked, so not yet usable. See the module docs for the order.
pub struct Built {
    pub package: Package,
    /// The RAM plan from the built backend's own graph (or the file-size estimate for
    /// runtimes that keep their plan to themselves).
    pub plan: Plan,
    /// The graph facts the plan came from, for reports (`None` for TFLite).
    pub facts: Option<GraphFacts>,
    labels: Vec<String>,
    detection_labels: Vec<String>,
    backend: Box<dyn Backend>,
    load_ms: f64,
    threads: usize,
}

/// Step 1 of a load: open, verify and build once, then plan. `frame` is the camera frame
/// size (width, height) preprocessing is planned for; the model's own input size if `None`.
pub fn build(
    dir: &Path,
    opts: &LoadOptions,
    frame: Option<(u64, u64)>,
) -> Result<Built, ModelError> {
    let t0 = Instant::now();
    let package = Package::open(dir)?;
    let m = &package.manifest;
    let model_path = dir.join(&m.model.file);
    let backend_err = |source| ModelError::Backend {
        path: model_path.clone(),
        source,
    };
    let threads = opts.threads.max(1);
    let bytes = package.read(&m.model.file)?;
    let labels = package.labels()?;
    let detection_labels = package.detection_labels()?;
    let (backend, facts): (Box<dyn Backend>, Option<GraphFacts>) = match m.model.format {
        Format::Onnx => {
            let b = tract_backend::TractBackend::load(&bytes, m, threads).map_err(backend_err)?;
            let facts = crate::memory::graph::graph_facts(b.runnable(), b.planned_dims())
                .map_err(|e| backend_err(BackendError::Load(e.to_string())))?;
            (Box::new(b), Some(facts))
        }
        Format::Tflite => (tflite_backend(&model_path, &bytes, threads, opts)?, None),
    };
    let inputs = plan_inputs(m, threads, bytes.len() as u64, frame);
    drop(bytes);
    let plan = match &facts {
        Some(g) => Plan::from_graph(&inputs, g),
        None => Plan::tflite_estimate(&inputs),
    };
    Ok(Built {
        package,
        plan,
        facts,
        labels,
        detection_labels,
        backend,
        load_ms: ms(t0),
        threads,
    })
}

/// The RAM plan of a package without serving it (`beltbox plan`): for ONNX, the backend
/// is built once to plan from its optimised graph; runtimes that keep their plan to
/// themselves (TFLite) are estimated from the verified model file without loading them.
pub fn plan(
    dir: &Path,
    opts: &LoadOptions,
    frame: Option<(u64, u64)>,
) -> Result<(Package, Plan, Option<GraphFacts>), ModelError> {
    let package = Package::open(dir)?;
    if package.manifest.model.format == Format::Onnx {
        drop(package);
        let b = build(dir, opts, frame)?;
        return Ok((b.package, b.plan, b.facts));
    }
    let m = &package.manifest;
    let file_bytes = package.read(&m.model.file)?.len() as u64;
    let plan = Plan::tflite_estimate(&plan_inputs(m, opts.threads.max(1), file_bytes, frame));
    Ok((package, plan, None))
}

fn plan_inputs(
    m: &manifest::Manifest,
    threads: usize,
    model_file_bytes: u64,
    frame: Option<(u64, u64)>,
) -> PlanInputs {
    PlanInputs {
        model: m.name.clone(),
        version: m.version.to_string(),
        threads,
        model_file_bytes,
        preprocess: preprocess_facts(m, frame),
    }
}

impl Built {
    /// Step 2 of a load: the golden self-check, then verification of every package file
    /// the load has not read. A model that comes back from here has reproduced its golden
    /// references on this machine.
    pub fn self_check(self) -> Result<Model, ModelError> {
        let t1 = Instant::now();
        let mut model = Model {
            info: LoadInfo {
                load_ms: self.load_ms,
                selfcheck_ms: 0.0,
                backend: self.backend.name(),
                runtime: self.backend.runtime_version(),
                threads: self.threads,
                golden: golden::GoldenReport::default(),
            },
            package: self.package,
            labels: self.labels,
            detection_labels: self.detection_labels,
            plan: self.plan,
            backend: self.backend,
        };
        model.info.golden = golden::self_check(&model)?;
        model.package.verify_unread()?;
        model.info.selfcheck_ms = ms(t1);
        model.log_loaded();
        Ok(model)
    }
}

impl Model {
    /// Builds and self-checks a package ([`build`] then [`Built::self_check`]) with no
    /// budget decision in between.
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Model, ModelError> {
        build(dir, opts, None)?.self_check()
    }

    pub fn name(&self) -> &str {
        &self.package.manifest.name
    }

    pub fn manifest(&self) -> &manifest::Manifest {
        &self.package.manifest
    }

    /// Runs the backend on prepared tensors (one per manifest input, in manifest order)
    /// and checks the output count.
    pub fn run_tensors(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, ModelError> {
        let m = &self.package.manifest;
        self.check_input_count(inputs.len())?;
        let mut outputs = self
            .backend
            .run(inputs)
            .map_err(|source| ModelError::Backend {
                path: self.package.dir.join(&m.model.file),
                source,
            })?;
        if outputs.len() != m.outputs.len() {
            return Err(ModelError::OutputCount {
                expected: m.outputs.len(),
                got: outputs.len(),
            });
        }
        // Attach the manifest's quantisation so consumers can dequantise.
        for (t, spec) in outputs.iter_mut().zip(&m.outputs) {
            if t.quant.is_none() {
                t.quant = spec.quantization;
            }
        }
        Ok(outputs)
    }

    fn check_input_count(&self, got: usize) -> Result<(), ModelError> {
        let m = &self.package.manifest;
        if got == m.inputs.len() {
            return Ok(());
        }
        Err(ModelError::InputCount {
            model: m.name.clone(),
            inputs: m.inputs.iter().map(|i| i.name.clone()).collect(),
            got,
        })
    }

    /// Each input file's bytes, prepared for its manifest input (manifest order).
    pub fn prepare(&self, inputs: &[(&[u8], InputKind)]) -> Result<Vec<Prepared>, ModelError> {
        let m = &self.package.manifest;
        self.check_input_count(inputs.len())?;
        inputs
            .iter()
            .zip(&m.inputs)
            .map(|((bytes, kind), spec)| Ok(preprocess::prepare_sized(bytes, *kind, spec)?))
            .collect()
    }

    /// Integer vs float nodes of the loaded graph, when the backend can tell.
    pub fn op_counts(&self) -> Option<backend::OpCounts> {
        self.backend.op_counts()
    }

    /// Per-op-type time over `runs` inferences of `inputs` (one file's bytes per manifest
    /// input, before preprocessing).
    pub fn profile(
        &self,
        inputs: &[(&[u8], InputKind)],
        runs: usize,
    ) -> Result<Option<Vec<backend::OpTime>>, ModelError> {
        let m = &self.package.manifest;
        let tensors: Vec<Tensor> = self
            .prepare(inputs)?
            .into_iter()
            .map(|p| p.tensor)
            .collect();
        self.backend
            .profile(&tensors, runs)
            .map_err(|source| ModelError::Backend {
                path: self.package.dir.join(&m.model.file),
                source,
            })
    }

    /// Full pipeline on input files (one per manifest input, in manifest order):
    /// preprocess, run, top-k classes, stage timings.
    pub fn infer(
        &self,
        inputs: &[(&[u8], InputKind)],
        top_k: usize,
    ) -> Result<Inference, ModelError> {
        self.infer_with(|_| self.prepare(inputs), top_k)
    }

    /// The timed pipeline with the caller's preprocessing (`prepare` turns whatever the
    /// caller holds, e.g. decoded request tensors, into one tensor per manifest input):
    /// preprocess, run, postprocess (top-k classes, detections), each stage timed.
    /// `queue_us` is left 0 for the caller to fill.
    pub fn infer_with<E: From<ModelError>>(
        &self,
        prepare: impl FnOnce(&[manifest::InputSpec]) -> Result<Vec<Prepared>, E>,
        top_k: usize,
    ) -> Result<Inference, E> {
        let m = &self.package.manifest;
        let t0 = Instant::now();
        let prepared = prepare(&m.inputs)?;
        // Boxes map back onto the image fed to the first input that takes images.
        let image = m
            .inputs
            .iter()
            .zip(&prepared)
            .find(|(spec, _)| spec.preprocess.is_some())
            .and_then(|(_, p)| p.image);
        let inputs: Vec<Tensor> = prepared.into_iter().map(|p| p.tensor).collect();
        let t1 = Instant::now();
        let outputs = self.run_tensors(&inputs)?;
        let t2 = Instant::now();
        let classes = self.classes(&outputs, top_k);
        let detections = detect::detect_in(m, &outputs, &self.detection_labels, image, &inputs)
            .map_err(ModelError::from)?;
        let t3 = Instant::now();
        Ok(Inference {
            classes,
            detections,
            outputs,
            timings: StageTimings {
                queue_us: 0,
                preprocess_us: us(t1 - t0),
                inference_us: us(t2 - t1),
                postprocess_us: us(t3 - t2),
            },
        })
    }

    /// Top-k classes of the first output when the manifest calls it a classification
    /// output; empty otherwise.
    pub fn classes(&self, outputs: &[Tensor], top_k: usize) -> Vec<Class> {
        match (self.package.manifest.outputs.first(), outputs.first()) {
            (Some(spec), Some(out)) if spec.task == manifest::Task::Classification => {
                postprocess::classify(out, spec, &self.labels, top_k)
            }
            _ => Vec::new(),
        }
    }

    fn log_loaded(&self) {
        let m = &self.package.manifest;
        log::info!(
            "loaded model {} {} ({} {}, sha256 {}) on board {}: backend {}, {} thread(s), cpu [{}], load {:.1} ms, golden self-check {}/{} in {:.1} ms",
            m.name,
            m.version,
            m.model.format,
            m.model.precision,
            self.package.model_sha256(),
            crate::board::detect(),
            self.info.runtime,
            self.info.threads,
            crate::cpu::features().join(" "),
            self.info.load_ms,
            self.info.golden.passed,
            self.info.golden.samples,
            self.info.selfcheck_ms,
        );
    }
}

/// What preprocessing allocates for one frame of `frame` (width, height) pixels — the
/// model's own input size when `None` (frames arrive at model resolution). A tensor input
/// (no `preprocess`) is planned as one row of its elements: the encoded NPY, its decoded
/// copy and the conversions, an over-estimate of a few tensor copies. A model with several
/// tensor inputs is planned as one row of all their elements at the widest element size;
/// with an image input among them, as that image input.
pub fn preprocess_facts(m: &manifest::Manifest, frame: Option<(u64, u64)>) -> PreprocessFacts {
    let widest = m
        .inputs
        .iter()
        .map(|i| i.dtype.size_of() as u64)
        .max()
        .unwrap_or(4);
    // One input, or the one that takes images (camera frames dominate; side tensors such
    // as a scale factor are a few bytes and are not counted).
    let planned = match m.inputs.as_slice() {
        [one] => Some(one),
        many => many.iter().find(|i| i.preprocess.is_some()),
    };
    let Some(input) = planned else {
        let total: u64 = m.inputs.iter().map(|i| i.max_volume() as u64).sum();
        return PreprocessFacts {
            frame_width: total,
            frame_height: 1,
            frame_channels: 1,
            tensor_height: 1,
            tensor_width: total,
            tensor_channels: 1,
            tensor_elem_bytes: widest,
        };
    };
    let (h, w, c) = input.hwc();
    let (resize, channels) = match &input.preprocess {
        Some(p) => (p.resize, p.color.channels() as u64),
        None => ([h, w], 1),
    };
    let [rh, rw] = resize;
    let (fw, fh) = frame.unwrap_or((rw as u64, rh as u64));
    PreprocessFacts {
        frame_width: fw,
        frame_height: fh,
        frame_channels: channels,
        tensor_height: h as u64,
        tensor_width: w as u64,
        tensor_channels: c as u64,
        tensor_elem_bytes: widest,
    }
}

#[cfg(any(feature = "tflite", feature = "tflitec"))]
fn tflite_backend(
    path: &Path,
    bytes: &[u8],
    threads: usize,
    opts: &LoadOptions,
) -> Result<Box<dyn Backend>, ModelError> {
    let options = tflite::LoadOptions {
        threads,
        library: opts.tflite_library.clone(),
        kernels: None,
    };
    tflite::TfliteBackend::load_bytes(path, bytes, &options)
        .map(|m| Box::new(m) as Box<dyn Backend>)
        .map_err(|e| ModelError::Backend {
            path: path.to_path_buf(),
            source: BackendError::Load(e.to_string()),
        })
}

#[cfg(not(any(feature = "tflite", feature = "tflitec")))]
fn tflite_backend(
    path: &Path,
    _bytes: &[u8],
    _threads: usize,
    _opts: &LoadOptions,
) -> Result<Box<dyn Backend>, ModelError> {
    Err(ModelError::FormatUnavailable {
        path: path.to_path_buf(),
        format: Format::Tflite,
        feature: "tflite",
    })
}
