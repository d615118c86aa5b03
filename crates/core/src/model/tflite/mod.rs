//! TFLite backend: runs `.tflite` models through a TFLite runtime C library loaded at run time.
//!
//! Nothing is linked at build time: the library is opened with `libloading` when the first model
//! is loaded, so neither the default build nor the `tflite`/`tflitec` feature builds need a native
//! library to compile. Two C APIs are understood, chosen by what the library exports:
//!
//! * the **LiteRT C API** (`LiteRtCreateCompiledModel`, ...), exported by `libLiteRt.so` from the
//!   `ai-edge-litert` 2.1.4 wheel (fetched by `cross/fetch-litert.sh`). That library does *not*
//!   export the classic `TfLite*` C API; it runs the model with the TFLite interpreter and its
//!   XNNPACK CPU delegate behind the `LiteRtCompiledModel` API. Feature `tflite`.
//! * the classic **TfLite C API** (`TfLiteInterpreterCreate`, ...), exported by
//!   `libtensorflowlite_c.so` (shipped by some board vendors). Feature `tflitec`.
//!
//! The declarations in the submodules are written from the documented C APIs (LiteRT 2.1.4's
//! `litert/c/*.h`, TensorFlow Lite's `c_api.h`); no header is vendored.
//!
//! Library lookup (first hit wins, see [`library_candidates`]):
//! 1. `$BELTBOX_LITERT_LIB` (full path to the library). When set it is authoritative: if it does
//!    not exist the load fails instead of silently falling back to another runtime.
//! 2. the default library name(s) next to the running executable;
//! 3. `/usr/lib/beltbox/<name>`;
//! 4. the plain name through the system search path (`LD_LIBRARY_PATH`, ld.so cache).
//!
//! Default names: `libLiteRt.so` (feature `tflite`), `libtensorflowlite_c.so` (feature
//! `tflitec`); both, in that order, when both features are on.
//!
//! Model bytes: the package loader hands over the bytes whose sha256 it checked
//! (`TfliteBackend::load_bytes`); `check_model_header` rejects anything without the `TFL3`
//! FlatBuffer identifier, and both engines get one aligned in-memory copy that lives as long
//! as the model. LiteRT then verifies the whole FlatBuffer (2.1.4 only verifies buffers, not
//! files). The classic TfLite C API does not verify FlatBuffers: under it crafted bytes with a
//! valid identifier can crash the process, so it must only see sha256-checked packages.
//!
//! A loaded library is never unloaded (C++ runtimes with worker threads do not survive
//! `dlclose` reliably); every model keeps an `Arc` to it in any case.

mod litert_api;
mod tflite_c_api;

use std::ffi::{c_char, CStr};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use crate::tensor::{DType, QuantParams, Tensor, TensorData};

/// Environment variable naming the runtime library to load (full path).
pub const LIBRARY_ENV: &str = "BELTBOX_LITERT_LIB";
/// System directory searched after the executable's own directory.
pub const SYSTEM_LIBRARY_DIR: &str = "/usr/lib/beltbox";

/// Library file names tried, in order, for the enabled features.
pub fn default_library_names() -> &'static [&'static str] {
    #[cfg(all(feature = "tflite", feature = "tflitec"))]
    {
        &["libLiteRt.so", "libtensorflowlite_c.so"]
    }
    #[cfg(all(feature = "tflite", not(feature = "tflitec")))]
    {
        &["libLiteRt.so"]
    }
    #[cfg(all(feature = "tflitec", not(feature = "tflite")))]
    {
        &["libtensorflowlite_c.so"]
    }
}

/// Errors of the TFLite backend. None of them is fatal to the process.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TfliteError {
    #[error(
        "TFLite runtime library not found; searched: {}. Run cross/fetch-litert.sh, install the \
         library into {SYSTEM_LIBRARY_DIR}/ or set {LIBRARY_ENV} to its full path{}",
        PathList(searched),
        if details.is_empty() { String::new() } else { format!(" ({details})") }
    )]
    LibraryNotFound {
        searched: Vec<PathBuf>,
        /// Loader messages for candidates that were tried by name only.
        details: String,
    },
    #[error("cannot load TFLite runtime library {}: {reason}", path.display())]
    LibraryLoad { path: PathBuf, reason: String },
    #[error(
        "{}: exports neither the LiteRT C API (LiteRtCreateCompiledModel) nor the TfLite C API \
         (TfLiteInterpreterCreate); is this a TFLite runtime library?",
        library.display()
    )]
    UnsupportedLibrary { library: PathBuf },
    #[error("{}: missing symbol {symbol}: {reason}", library.display())]
    MissingSymbol {
        library: PathBuf,
        symbol: &'static str,
        reason: String,
    },
    #[error("cannot load model {}: {reason}", path.display())]
    ModelLoad { path: PathBuf, reason: String },
    #[error("TFLite runtime: {call} failed: {detail}")]
    Runtime { call: &'static str, detail: String },
    #[error("unsupported model {role} {index} ({name}): {detail}")]
    UnsupportedTensor {
        role: &'static str,
        index: usize,
        name: String,
        detail: String,
    },
    #[error("model has {expected} input tensor(s), got {got}")]
    InputCount { expected: usize, got: usize },
    #[error("input {index} ({name}): {what} mismatch: model expects {expected}, got {got}")]
    InputMismatch {
        index: usize,
        name: String,
        what: &'static str,
        expected: String,
        got: String,
    },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("TFLite interpreter lock poisoned by an earlier panic")]
    Poisoned,
}

struct PathList<'a>(&'a [PathBuf]);

impl fmt::Display for PathList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(nothing)");
        }
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}", p.display())?;
        }
        Ok(())
    }
}

/// Name, shape, element type and (per-tensor) quantisation of a model input or output.
pub type TensorInfo = (String, Vec<usize>, DType, Option<QuantParams>);

/// Metadata of one model input/output, as the backend engines report it.
#[derive(Debug, Clone)]
struct IoSpec {
    name: String,
    shape: Vec<usize>,
    dtype: DType,
    quant: Option<QuantParams>,
    /// Bytes the runtime expects for this tensor.
    byte_size: usize,
}

impl IoSpec {
    fn info(&self) -> TensorInfo {
        (
            self.name.clone(),
            self.shape.clone(),
            self.dtype,
            self.quant,
        )
    }
}

/// Which C API a loaded library speaks, with its resolved entry points.
enum Api {
    LiteRt(litert_api::Api),
    TfLiteC(tflite_c_api::Api),
}

/// A runtime library, loaded once per process and never unloaded.
struct RuntimeLibrary {
    path: PathBuf,
    api: Api,
    /// Provenance note (`<library>.version`, written by cross/fetch-litert.sh), if any.
    note: Option<String>,
    /// Keeps the code behind `api`'s function pointers mapped.
    _lib: libloading::Library,
}

/// One backend instance: the runtime objects behind a loaded model.
trait Engine: Send {
    /// Copies `inputs` (one byte slice per input, already validated against the specs) in,
    /// runs the model and returns the raw bytes of every output.
    fn invoke(&mut self, inputs: &[&[u8]]) -> Result<Vec<Vec<u8>>, TfliteError>;
}

/// CPU kernels LiteRT runs a model with (LiteRT's `kernel_mode` CPU option).
///
/// INT8 results differ between them by at most one output quantisation step: `Reference`
/// (TFLite's reference kernels) reproduces goldens made with `OpResolverType.BUILTIN_REF`
/// bit for bit, `Xnnpack` is the fast default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuKernels {
    /// XNNPACK delegate (LiteRT's default).
    Xnnpack,
    /// TFLite's optimised builtin kernels, no XNNPACK.
    Builtin,
    /// TFLite's reference kernels: slow, bit-exact with reference goldens.
    Reference,
}

impl CpuKernels {
    pub fn as_str(self) -> &'static str {
        match self {
            CpuKernels::Xnnpack => "xnnpack",
            CpuKernels::Builtin => "builtin",
            CpuKernels::Reference => "reference",
        }
    }

    /// `$BELTBOX_LITERT_KERNELS`, if set (an invalid value is an error, not ignored).
    pub fn from_env() -> Result<Option<CpuKernels>, TfliteError> {
        match std::env::var(KERNELS_ENV) {
            Ok(v) if !v.is_empty() => v.parse().map(Some),
            Ok(_) | Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(TfliteError::InvalidArgument(format!(
                "{KERNELS_ENV} is not UTF-8"
            ))),
        }
    }
}

impl std::str::FromStr for CpuKernels {
    type Err = TfliteError;

    fn from_str(s: &str) -> Result<CpuKernels, TfliteError> {
        match s {
            "xnnpack" => Ok(CpuKernels::Xnnpack),
            "builtin" => Ok(CpuKernels::Builtin),
            "reference" => Ok(CpuKernels::Reference),
            other => Err(TfliteError::InvalidArgument(format!(
                "CPU kernels {other:?}: expected xnnpack, builtin or reference"
            ))),
        }
    }
}

impl fmt::Display for CpuKernels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Environment variable choosing LiteRT's CPU kernels (`xnnpack` | `builtin` | `reference`)
/// when [`LoadOptions::kernels`] is `None`.
pub const KERNELS_ENV: &str = "BELTBOX_LITERT_KERNELS";

/// How to load a model; `LoadOptions::default()` is "default lookup, runtime's thread default".
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// CPU threads; 0 lets the runtime choose (LiteRT: 1, TfLite C: its own default).
    pub threads: usize,
    /// Runtime library to use instead of the default lookup.
    pub library: Option<PathBuf>,
    /// CPU kernels (LiteRT only); `None`: `$BELTBOX_LITERT_KERNELS`, else LiteRT's default
    /// (XNNPACK). Asking for specific kernels from a TfLite C library is an error.
    pub kernels: Option<CpuKernels>,
}

/// A `.tflite` model ready to run. `Send + Sync`: runs are serialised by an internal mutex.
pub struct TfliteBackend {
    engine: Mutex<Box<dyn Engine>>,
    inputs: Vec<IoSpec>,
    outputs: Vec<IoSpec>,
    library: Arc<RuntimeLibrary>,
    threads: usize,
    kernels: Option<CpuKernels>,
}

// `TfliteBackend` must stay shareable across threads (the loader hands it out as a `Backend`).
const _: fn() = || {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<TfliteBackend>();
};

impl fmt::Debug for TfliteBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TfliteBackend")
            .field("library", &self.library.path)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .field("threads", &self.threads)
            .field("kernels", &self.kernels)
            .finish_non_exhaustive()
    }
}

impl TfliteBackend {
    /// Loads `model_path` with the runtime library found by the default lookup.
    ///
    /// `threads`: CPU threads for the interpreter; 0 lets the runtime choose (LiteRT: 1).
    pub fn load(model_path: &Path, threads: usize) -> Result<TfliteBackend, TfliteError> {
        Self::load_with_options(
            model_path,
            &LoadOptions {
                threads,
                ..LoadOptions::default()
            },
        )
    }

    /// Loads `model_path` with the runtime library at `library` (no lookup, env ignored).
    pub fn load_with_library(
        library: &Path,
        model_path: &Path,
        threads: usize,
    ) -> Result<TfliteBackend, TfliteError> {
        Self::load_with_options(
            model_path,
            &LoadOptions {
                threads,
                library: Some(library.to_path_buf()),
                kernels: None,
            },
        )
    }

    /// Loads `model_path` as `options` say.
    pub fn load_with_options(
        model_path: &Path,
        options: &LoadOptions,
    ) -> Result<TfliteBackend, TfliteError> {
        let library = resolve_library(options)?;
        let bytes = read_model_file(model_path)?;
        Self::load_bytes_with_library(library, model_path, &bytes, options)
    }

    /// Loads a model from bytes the caller already holds (and has verified: the package
    /// loader hands over exactly the bytes whose sha256 it checked, so nothing is re-read
    /// from disk). `origin` only names the model in errors.
    pub fn load_bytes(
        origin: &Path,
        bytes: &[u8],
        options: &LoadOptions,
    ) -> Result<TfliteBackend, TfliteError> {
        Self::load_bytes_with_library(resolve_library(options)?, origin, bytes, options)
    }

    fn load_bytes_with_library(
        library: Arc<RuntimeLibrary>,
        model_path: &Path,
        bytes: &[u8],
        options: &LoadOptions,
    ) -> Result<TfliteBackend, TfliteError> {
        check_model_header(model_path, bytes)?;
        // One aligned copy, owned by the engine for the model's whole life: TfLite reads the
        // FlatBuffer in place.
        let model_bytes = AlignedBytes::from_slice(bytes);
        let threads = options.threads;
        let threads_c = if threads == 0 {
            None
        } else {
            Some(i32::try_from(threads).map_err(|_| {
                TfliteError::InvalidArgument(format!("threads = {threads} is too large"))
            })?)
        };
        let (loaded, kernels) = match &library.api {
            Api::LiteRt(api) => {
                let kernels = match options.kernels {
                    Some(k) => Some(k),
                    None => CpuKernels::from_env()?,
                };
                (
                    litert_api::load(api, model_path, model_bytes, threads_c, kernels)?,
                    kernels,
                )
            }
            Api::TfLiteC(api) => {
                if let Some(k) = options.kernels {
                    return Err(TfliteError::InvalidArgument(format!(
                        "CPU kernels {k} requested, but {} speaks the TfLite C API, which \
                         cannot choose kernels",
                        library.path.display()
                    )));
                }
                (
                    tflite_c_api::load(api, model_path, model_bytes, threads_c)?,
                    None,
                )
            }
        };
        Ok(TfliteBackend {
            engine: Mutex::new(loaded.engine),
            inputs: loaded.inputs,
            outputs: loaded.outputs,
            library,
            threads,
            kernels,
        })
    }

    /// Runs a single-input model.
    pub fn run(&self, input: &Tensor) -> Result<Vec<Tensor>, TfliteError> {
        self.run_inputs(std::slice::from_ref(input))
    }

    /// Runs the model on one tensor per model input (in model input order).
    ///
    /// Every input is checked against the model (dtype, shape, element count, byte size, and
    /// quantisation parameters when the caller states them) before anything reaches the runtime.
    pub fn run_inputs(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, TfliteError> {
        if inputs.len() != self.inputs.len() {
            return Err(TfliteError::InputCount {
                expected: self.inputs.len(),
                got: inputs.len(),
            });
        }
        let mut bytes = Vec::with_capacity(inputs.len());
        for (index, (spec, tensor)) in self.inputs.iter().zip(inputs).enumerate() {
            bytes.push(check_input(index, spec, tensor)?);
        }
        let slices: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
        let raw = {
            let mut engine = self.engine.lock().map_err(|_| TfliteError::Poisoned)?;
            engine.invoke(&slices)?
        };
        if raw.len() != self.outputs.len() {
            return Err(TfliteError::Runtime {
                call: "invoke",
                detail: format!(
                    "runtime returned {} outputs, model declares {}",
                    raw.len(),
                    self.outputs.len()
                ),
            });
        }
        self.outputs
            .iter()
            .zip(raw)
            .map(|(spec, data)| output_tensor(spec, data))
            .collect()
    }

    /// Runtime description: API, version (when the library reports one) and library path.
    pub fn runtime_version(&self) -> String {
        let lib = &self.library;
        let what = match &lib.api {
            Api::LiteRt(_) => {
                let threads = if self.threads == 0 {
                    "default threads".to_string()
                } else {
                    format!("{} thread(s)", self.threads)
                };
                let kernels = match self.kernels {
                    Some(k) => k.as_str(),
                    None => "xnnpack (default)",
                };
                format!("LiteRT C API (CompiledModel, CPU kernels {kernels}, {threads})")
            }
            Api::TfLiteC(api) => format!("TensorFlow Lite {} (TfLite C API)", api.version()),
        };
        match &lib.note {
            Some(note) => format!("{what}, {}: {note}", lib.path.display()),
            None => format!("{what}, {}", lib.path.display()),
        }
    }

    /// Path of the runtime library this model runs on.
    pub fn library_path(&self) -> &Path {
        &self.library.path
    }

    /// Model inputs: (name, shape, dtype, per-tensor quantisation).
    pub fn input_info(&self) -> Vec<TensorInfo> {
        self.inputs.iter().map(IoSpec::info).collect()
    }

    /// Model outputs: (name, shape, dtype, per-tensor quantisation).
    pub fn output_info(&self) -> Vec<TensorInfo> {
        self.outputs.iter().map(IoSpec::info).collect()
    }
}

impl crate::model::backend::Backend for TfliteBackend {
    /// TFLite inputs are positional: the manifest lists them in the interpreter's order
    /// (docs/model-package.md).
    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, crate::model::backend::BackendError> {
        use crate::model::backend::BackendError;
        TfliteBackend::run_inputs(self, inputs).map_err(|e| match e {
            TfliteError::InputCount { .. } | TfliteError::InputMismatch { .. } => {
                BackendError::Mismatch(e.to_string())
            }
            _ => BackendError::Run(e.to_string()),
        })
    }

    fn name(&self) -> &'static str {
        match self.library.api {
            Api::LiteRt(_) => "litert",
            Api::TfLiteC(_) => "tflite-c",
        }
    }

    fn runtime_version(&self) -> String {
        TfliteBackend::runtime_version(self)
    }
}

/// Where the default lookup looks, in order: `(path, is_bare_name)`.
///
/// A bare name is handed to the dynamic loader's own search (it is not a file path).
pub fn library_candidates() -> Vec<(PathBuf, bool)> {
    if let Some(p) = std::env::var_os(LIBRARY_ENV).filter(|v| !v.is_empty()) {
        return vec![(PathBuf::from(p), false)];
    }
    let names = default_library_names();
    let mut out = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        out.extend(names.iter().map(|n| (dir.join(n), false)));
    }
    out.extend(
        names
            .iter()
            .map(|n| (Path::new(SYSTEM_LIBRARY_DIR).join(n), false)),
    );
    out.extend(names.iter().map(|n| (PathBuf::from(n), true)));
    out
}

fn find_library() -> Result<Arc<RuntimeLibrary>, TfliteError> {
    let mut searched = Vec::new();
    let mut details = Vec::new();
    for (path, bare) in library_candidates() {
        if bare {
            match open_library(&path) {
                Ok(lib) => return Ok(lib),
                // A bare name that the loader cannot find is just a miss; anything else (found
                // but wrong glibc, not a TFLite library, ...) is reported as is.
                Err(TfliteError::LibraryLoad { reason, .. })
                    if reason.contains("No such file") || reason.contains("cannot open") =>
                {
                    details.push(format!("{}: {reason}", path.display()));
                }
                Err(e) => return Err(e),
            }
        } else if path.exists() {
            return open_library(&path);
        }
        searched.push(path);
    }
    Err(TfliteError::LibraryNotFound {
        searched,
        details: details.join("; "),
    })
}

/// Opens (or returns the already opened) runtime library at `path`.
fn open_library(path: &Path) -> Result<Arc<RuntimeLibrary>, TfliteError> {
    static LOADED: OnceLock<Mutex<Vec<Arc<RuntimeLibrary>>>> = OnceLock::new();
    let key = if path.components().count() > 1 {
        std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
    } else {
        path.to_path_buf()
    };
    let cache = LOADED.get_or_init(|| Mutex::new(Vec::new()));
    let mut cache = cache.lock().map_err(|_| TfliteError::Poisoned)?;
    if let Some(lib) = cache.iter().find(|l| l.path == key) {
        return Ok(Arc::clone(lib));
    }
    let lib = dlopen(&key)?;
    let api = resolve_api(&lib, &key)?;
    let note = read_note(&key);
    let lib = Arc::new(RuntimeLibrary {
        path: key,
        api,
        note,
        _lib: lib,
    });
    cache.push(Arc::clone(&lib));
    Ok(lib)
}

fn dlopen(path: &Path) -> Result<libloading::Library, TfliteError> {
    #[cfg(unix)]
    {
        use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
        // SAFETY: loading a shared library runs its initialisers; we only ever load the TFLite
        // runtime the operator configured (env var, install dir or fetch script). RTLD_NOW makes
        // unresolved dependencies fail here, as an error, instead of at the first call.
        let lib = unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL) };
        lib.map(libloading::Library::from)
            .map_err(|e| TfliteError::LibraryLoad {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
    }
    #[cfg(not(unix))]
    {
        // SAFETY: as above: loading runs the library's initialisers; only the configured
        // runtime library is ever loaded.
        let lib = unsafe { libloading::Library::new(path) };
        lib.map_err(|e| TfliteError::LibraryLoad {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }
}

/// Resolves `symbol` in `lib` as a value of the function-pointer type `T`.
///
/// # Safety
/// `T` must be the exact C function-pointer type of `symbol`, and the returned value must not be
/// used after `lib` is unloaded (runtime libraries never are, see [`open_library`]).
unsafe fn symbol<T: Copy>(
    lib: &libloading::Library,
    path: &Path,
    symbol: &'static str,
) -> Result<T, TfliteError> {
    let mut name = Vec::with_capacity(symbol.len() + 1);
    name.extend_from_slice(symbol.as_bytes());
    name.push(0);
    // SAFETY: forwarded to the caller: `T` matches the symbol's C type.
    let sym = unsafe { lib.get::<T>(&name) };
    sym.map(|s| *s).map_err(|e| TfliteError::MissingSymbol {
        library: path.to_path_buf(),
        symbol,
        reason: e.to_string(),
    })
}

fn has_symbol(lib: &libloading::Library, symbol: &[u8]) -> bool {
    // SAFETY: the symbol is only looked up, as an untyped address, and never called or read.
    unsafe { lib.get::<*const std::ffi::c_void>(symbol) }.is_ok()
}

fn resolve_api(lib: &libloading::Library, path: &Path) -> Result<Api, TfliteError> {
    if has_symbol(lib, b"LiteRtCreateCompiledModel\0") {
        return litert_api::Api::resolve(lib, path).map(Api::LiteRt);
    }
    if has_symbol(lib, b"TfLiteInterpreterCreate\0") {
        return tflite_c_api::Api::resolve(lib, path).map(Api::TfLiteC);
    }
    Err(TfliteError::UnsupportedLibrary {
        library: path.to_path_buf(),
    })
}

/// First line of `<library>.version`, if present and small.
fn read_note(lib: &Path) -> Option<String> {
    let mut name = lib.as_os_str().to_owned();
    name.push(".version");
    let meta = std::fs::metadata(&name).ok()?;
    if meta.len() > 4096 {
        return None;
    }
    let text = std::fs::read_to_string(&name).ok()?;
    let line = text.lines().next()?.trim();
    (!line.is_empty()).then(|| line.to_string())
}

/// Cheap sanity check before handing the file to the runtime: it exists, is a regular file and
/// carries the TFLite FlatBuffer identifier `TFL3`. (Older TfLite C runtimes do not verify the
/// FlatBuffer before using it; LiteRT does.)
/// The library `options` name, or the default lookup. A named library that does not exist is
/// an error, never a silent fallback to another runtime.
fn resolve_library(options: &LoadOptions) -> Result<Arc<RuntimeLibrary>, TfliteError> {
    match &options.library {
        Some(lib) if !lib.exists() => Err(TfliteError::LibraryNotFound {
            searched: vec![lib.clone()],
            details: String::new(),
        }),
        Some(lib) => open_library(lib),
        None => find_library(),
    }
}

/// Reads a model file for the path-based entry points (bounded: a model is never huge).
fn read_model_file(path: &Path) -> Result<Vec<u8>, TfliteError> {
    let err = |reason: String| TfliteError::ModelLoad {
        path: path.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if !meta.is_file() {
        return Err(err("not a regular file".into()));
    }
    std::fs::read(path).map_err(|e| err(e.to_string()))
}

/// The FlatBuffer file identifier: refuse anything that is not a TFLite model before any
/// runtime parses it.
fn check_model_header(path: &Path, bytes: &[u8]) -> Result<(), TfliteError> {
    if bytes.get(4..8) != Some(b"TFL3".as_slice()) {
        return Err(TfliteError::ModelLoad {
            path: path.to_path_buf(),
            reason: "not a TFLite model (FlatBuffer identifier \"TFL3\" missing)".into(),
        });
    }
    Ok(())
}

/// Copies a C string owned by the runtime, `""` for null.
///
/// # Safety
/// `p` is null or points to a NUL-terminated string valid for the duration of the call.
unsafe fn c_str(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: non-null and NUL-terminated per the caller's contract.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Per-tensor quantisation as beltbox uses it: only for 8-bit tensors with a usable scale.
fn quant_for(dtype: DType, scale: f32, zero_point: i64) -> Option<QuantParams> {
    if !(dtype.is_quantized() && scale.is_finite() && scale > 0.0) {
        return None;
    }
    let zero_point = i32::try_from(zero_point).ok()?;
    Some(QuantParams { scale, zero_point })
}

/// Shape from runtime dims; errors on dynamic (-1) or otherwise negative dimensions.
fn shape_from_dims(
    role: &'static str,
    index: usize,
    name: &str,
    dims: &[i64],
) -> Result<Vec<usize>, TfliteError> {
    dims.iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| TfliteError::UnsupportedTensor {
                role,
                index,
                name: name.to_string(),
                detail: format!("dynamic or invalid dimension {d} in {dims:?}"),
            })
        })
        .collect()
}

fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

fn check_input(index: usize, spec: &IoSpec, tensor: &Tensor) -> Result<Vec<u8>, TfliteError> {
    let mismatch = |what: &'static str, expected: String, got: String| TfliteError::InputMismatch {
        index,
        name: spec.name.clone(),
        what,
        expected,
        got,
    };
    if tensor.dtype() != spec.dtype {
        return Err(mismatch(
            "dtype",
            spec.dtype.to_string(),
            tensor.dtype().to_string(),
        ));
    }
    if tensor.shape != spec.shape {
        return Err(mismatch(
            "shape",
            format!("{:?}", spec.shape),
            format!("{:?}", tensor.shape),
        ));
    }
    let elements = element_count(&tensor.shape);
    if elements != Some(tensor.len()) {
        return Err(mismatch(
            "element count",
            format!("{} (from shape {:?})", elements.unwrap_or(0), tensor.shape),
            tensor.len().to_string(),
        ));
    }
    if let (Some(want), Some(got)) = (spec.quant, tensor.quant) {
        let rel = ((want.scale - got.scale) / want.scale).abs();
        let close = rel.is_finite() && rel <= 1e-4;
        if want.zero_point != got.zero_point || !close {
            return Err(mismatch(
                "quantization",
                format!("scale {} zero_point {}", want.scale, want.zero_point),
                format!("scale {} zero_point {}", got.scale, got.zero_point),
            ));
        }
    }
    let bytes = tensor.as_bytes();
    if bytes.len() != spec.byte_size {
        return Err(mismatch(
            "byte size",
            spec.byte_size.to_string(),
            bytes.len().to_string(),
        ));
    }
    Ok(bytes)
}

fn output_tensor(spec: &IoSpec, data: Vec<u8>) -> Result<Tensor, TfliteError> {
    let want = element_count(&spec.shape)
        .and_then(|n| n.checked_mul(spec.dtype.size_of()))
        .unwrap_or(usize::MAX);
    if data.len() != want {
        return Err(TfliteError::Runtime {
            call: "read output",
            detail: format!(
                "output {}: got {} bytes, shape {:?} {} needs {want}",
                spec.name,
                data.len(),
                spec.shape,
                spec.dtype
            ),
        });
    }
    let data =
        TensorData::from_le_bytes(spec.dtype, &data).ok_or_else(|| TfliteError::Runtime {
            call: "read output",
            detail: format!("output {}: not valid {} data", spec.name, spec.dtype),
        })?;
    Ok(Tensor {
        shape: spec.shape.clone(),
        data,
        quant: spec.quant,
    })
}

/// The dtype of a `TfLiteType` (LiteRT's element types use the same numbering); `None`
/// for strings, complex, resources and sub-byte types.
pub(crate) fn dtype_of(ty: std::os::raw::c_int) -> Option<DType> {
    Some(match ty {
        1 => DType::Float32,
        2 => DType::Int32,
        3 => DType::Uint8,
        4 => DType::Int64,
        6 => DType::Bool,
        7 => DType::Int16,
        9 => DType::Int8,
        10 => DType::Float16,
        11 => DType::Float64,
        13 => DType::Uint64,
        16 => DType::Uint32,
        17 => DType::Uint16,
        _ => return None,
    })
}

/// A file's bytes in 64-byte-aligned storage (TFLite reads FlatBuffer tables and weights in
/// place and wants aligned buffers). Filled through safe copies only.
struct AlignedBytes {
    chunks: Vec<AlignedChunk>,
    len: usize,
}

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct AlignedChunk([u8; 64]);

impl AlignedBytes {
    fn from_slice(data: &[u8]) -> AlignedBytes {
        let mut chunks = vec![AlignedChunk([0; 64]); data.len().div_ceil(64)];
        for (chunk, src) in chunks.iter_mut().zip(data.chunks(64)) {
            chunk.0[..src.len()].copy_from_slice(src);
        }
        AlignedBytes {
            chunks,
            len: data.len(),
        }
    }

    fn as_ptr(&self) -> *const u8 {
        self.chunks.as_ptr().cast()
    }

    fn len(&self) -> usize {
        self.len
    }
}

/// What a backend's `load` hands back.
struct Loaded {
    engine: Box<dyn Engine>,
    inputs: Vec<IoSpec>,
    outputs: Vec<IoSpec>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> IoSpec {
        IoSpec {
            name: "x".into(),
            shape: vec![1, 2],
            dtype: DType::Int8,
            quant: Some(QuantParams {
                scale: 0.5,
                zero_point: -3,
            }),
            byte_size: 2,
        }
    }

    #[test]
    fn input_checks_name_expected_and_got() {
        let s = spec();
        let ok = Tensor::new(vec![1, 2], TensorData::I8(vec![1, 2]));
        assert_eq!(check_input(0, &s, &ok).ok(), Some(vec![1, 2]));

        let wrong_shape = Tensor::new(vec![2, 1], TensorData::I8(vec![1, 2]));
        let e = check_input(0, &s, &wrong_shape).unwrap_err().to_string();
        assert!(
            e.contains("shape") && e.contains("[1, 2]") && e.contains("[2, 1]"),
            "{e}"
        );

        let wrong_type = Tensor::new(vec![1, 2], TensorData::F32(vec![1.0, 2.0]));
        let e = check_input(0, &s, &wrong_type).unwrap_err().to_string();
        assert!(e.contains("int8") && e.contains("float32"), "{e}");

        let short = Tensor::new(vec![1, 2], TensorData::I8(vec![1]));
        assert!(matches!(
            check_input(0, &s, &short),
            Err(TfliteError::InputMismatch {
                what: "element count",
                ..
            })
        ));

        let mut bad_q = ok.clone();
        bad_q.quant = Some(QuantParams {
            scale: 0.25,
            zero_point: -3,
        });
        assert!(matches!(
            check_input(0, &s, &bad_q),
            Err(TfliteError::InputMismatch {
                what: "quantization",
                ..
            })
        ));
    }

    #[test]
    fn outputs_decode_and_carry_quant() {
        let t = output_tensor(&spec(), vec![0xff, 0x02]).unwrap();
        assert_eq!(t.data, TensorData::I8(vec![-1, 2]));
        assert_eq!(t.quant, spec().quant);
        assert!(output_tensor(&spec(), vec![1]).is_err());
    }

    #[test]
    fn quant_only_for_8bit_with_scale() {
        assert!(quant_for(DType::Float32, 0.1, 0).is_none());
        assert!(quant_for(DType::Int8, 0.0, 0).is_none());
        assert!(quant_for(DType::Int8, f32::NAN, 0).is_none());
        assert!(quant_for(DType::Uint8, 0.1, 1 << 40).is_none());
        assert_eq!(
            quant_for(DType::Uint8, 0.1, 7),
            Some(QuantParams {
                scale: 0.1,
                zero_point: 7
            })
        );
    }

    #[test]
    fn dynamic_dims_are_errors() {
        assert_eq!(
            shape_from_dims("input", 0, "x", &[1, 8]).unwrap(),
            vec![1, 8]
        );
        assert!(shape_from_dims("input", 0, "x", &[-1, 8]).is_err());
    }
}
