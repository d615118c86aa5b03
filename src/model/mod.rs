//! Model packages: manifest, verification, backends, golden self-check.
//!
//! Loading is one pipeline with a fixed order, each step refusing bad input with a
//! typed error: open package (strict manifest, every sha256) -> build backend (tract for
//! ONNX, LiteRT for TFLite) -> golden self-check (the runtime must reproduce the
//! reference outputs shipped in the package, or the model is refused: silently wrong
//! numbers must be impossible, whatever the backend).

pub mod backend;
pub mod golden;
pub mod manifest;
pub mod onnx_ops;
pub mod package;
pub mod qconv;
pub mod qdq;
#[cfg(any(feature = "tflite", feature = "tflitec"))]
pub mod tflite;
pub mod tract_backend;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::memory::{GraphFacts, Plan, PlanInputs, PreprocessFacts};
use crate::postprocess::{self, Class};
use crate::preprocess::{self, InputKind, PreprocessError};
use crate::tensor::Tensor;
use backend::{Backend, BackendError};
use manifest::Format;
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
            )
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

/// Per-stage wall-clock durations of one inference, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct StageTimings {
    pub preprocess_us: u64,
    pub inference_us: u64,
    pub postprocess_us: u64,
}

impl StageTimings {
    pub fn total_us(&self) -> u64 {
        self.preprocess_us + self.inference_us + self.postprocess_us
    }
}

#[derive(Debug, Clone)]
pub struct Inference {
    pub classes: Vec<Class>,
    pub outputs: Vec<Tensor>,
    pub timings: StageTimings,
}

pub struct Model {
    pub package: Package,
    pub labels: Vec<String>,
    pub info: LoadInfo,
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

impl Model {
    /// Opens, verifies, builds and self-checks a package. A model that comes back from
    /// here has reproduced its golden references on this machine.
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Model, ModelError> {
        let t0 = Instant::now();
        let package = Package::open(dir)?;
        let labels = package.labels()?;
        let m = &package.manifest;
        let model_path = dir.join(&m.model.file);
        let backend_err = |source| ModelError::Backend {
            path: model_path.clone(),
            source,
        };
        let threads = opts.threads.max(1);
        let backend: Box<dyn Backend> = match m.model.format {
            Format::Onnx => {
                let bytes = package.read(&m.model.file)?;
                Box::new(
                    tract_backend::TractBackend::load(&bytes, m, threads).map_err(backend_err)?,
                )
            }
            Format::Tflite => {
                let bytes = package.read(&m.model.file)?;
                tflite_backend(&model_path, &bytes, threads, opts)?
            }
        };
        let load_ms = ms(t0);
        let t1 = Instant::now();
        let mut model = Model {
            package,
            labels,
            info: LoadInfo {
                load_ms,
                selfcheck_ms: 0.0,
                backend: backend.name(),
                runtime: backend.runtime_version(),
                threads,
                golden: golden::GoldenReport::default(),
            },
            backend,
        };
        model.info.golden = golden::self_check(&model)?;
        model.info.selfcheck_ms = ms(t1);
        model.log_loaded();
        Ok(model)
    }

    pub fn name(&self) -> &str {
        &self.package.manifest.name
    }

    pub fn manifest(&self) -> &manifest::Manifest {
        &self.package.manifest
    }

    /// Runs the backend on a prepared tensor and checks the output count.
    pub fn run_tensor(&self, input: &Tensor) -> Result<Vec<Tensor>, ModelError> {
        let m = &self.package.manifest;
        let mut outputs = self
            .backend
            .run(input)
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

    /// Integer vs float nodes of the loaded graph, when the backend can tell.
    pub fn op_counts(&self) -> Option<backend::OpCounts> {
        self.backend.op_counts()
    }

    /// Per-op-type time over `runs` inferences of `bytes` (after preprocessing).
    pub fn profile(
        &self,
        bytes: &[u8],
        kind: InputKind,
        runs: usize,
    ) -> Result<Option<Vec<backend::OpTime>>, ModelError> {
        let m = &self.package.manifest;
        let input = preprocess::prepare(bytes, kind, &m.input)?;
        self.backend
            .profile(&input, runs)
            .map_err(|source| ModelError::Backend {
                path: self.package.dir.join(&m.model.file),
                source,
            })
    }

    /// Full pipeline on input bytes: preprocess, run, top-k classes, stage timings.
    pub fn infer(
        &self,
        bytes: &[u8],
        kind: InputKind,
        top_k: usize,
    ) -> Result<Inference, ModelError> {
        let m = &self.package.manifest;
        let t0 = Instant::now();
        let input = preprocess::prepare(bytes, kind, &m.input)?;
        let t1 = Instant::now();
        let outputs = self.run_tensor(&input)?;
        let t2 = Instant::now();
        let classes = self.classes(&outputs, top_k);
        let t3 = Instant::now();
        Ok(Inference {
            classes,
            outputs,
            timings: StageTimings {
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

/// Facts for the RAM plan (`memory::plan`) of an opened package: builds the optimised
/// tract plan (no golden self-check, nothing is served) and walks it. `None` for formats
/// whose runtime does not expose its plan (TFLite: the caller estimates).
pub fn backend_plan_facts(
    package: &Package,
    threads: usize,
) -> Result<Option<crate::memory::GraphFacts>, ModelError> {
    let m = &package.manifest;
    let path = package.dir.join(&m.model.file);
    let backend_err = |source| ModelError::Backend {
        path: path.clone(),
        source,
    };
    match m.model.format {
        Format::Onnx => {
            let bytes = package.read(&m.model.file)?;
            let backend = tract_backend::TractBackend::load(&bytes, m, threads.max(1))
                .map_err(backend_err)?;
            drop(bytes);
            crate::memory::tract::graph_facts(backend.runnable())
                .map(Some)
                .map_err(|e| backend_err(BackendError::Load(e.to_string())))
        }
        Format::Tflite => Ok(None),
    }
}

/// What preprocessing allocates for one frame of `frame` (width, height) pixels — the
/// model's own input size when `None` (frames arrive at model resolution).
pub fn preprocess_facts(m: &manifest::Manifest, frame: Option<(u64, u64)>) -> PreprocessFacts {
    let (h, w, c) = m.input.hwc();
    let [rh, rw] = m.input.preprocess.resize;
    let (fw, fh) = frame.unwrap_or((rw as u64, rh as u64));
    PreprocessFacts {
        frame_width: fw,
        frame_height: fh,
        frame_channels: m.input.preprocess.color.channels() as u64,
        tensor_height: h as u64,
        tensor_width: w as u64,
        tensor_channels: c as u64,
        tensor_elem_bytes: m.input.dtype.size_of() as u64,
    }
}

/// The RAM plan of an opened package (no golden self-check, nothing served): liveness
/// over the optimised graph, or the file-size estimate for runtimes that keep their
/// plan to themselves (TFLite). Returns the graph facts too, for reports.
pub fn plan_package(
    package: &Package,
    threads: usize,
    frame: Option<(u64, u64)>,
) -> Result<(Plan, Option<GraphFacts>), ModelError> {
    let m = &package.manifest;
    // `Package::open` has just hashed this file, so it exists; if it vanished since, the
    // backend build below reports it properly.
    let file_bytes = std::fs::metadata(package.dir.join(&m.model.file))
        .map(|md| md.len())
        .unwrap_or(0);
    let inputs = PlanInputs {
        model: m.name.clone(),
        version: m.version.to_string(),
        threads,
        model_file_bytes: file_bytes,
        preprocess: preprocess_facts(m, frame),
    };
    let facts = backend_plan_facts(package, threads)?;
    let plan = match &facts {
        Some(g) => Plan::from_graph(&inputs, g),
        None => Plan::tflite_estimate(&inputs),
    };
    Ok((plan, facts))
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
    tflite::TfliteModel::load_bytes(path, bytes, &options)
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

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

/// Whole microseconds of a duration, saturating.
pub(crate) fn us(d: std::time::Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}
