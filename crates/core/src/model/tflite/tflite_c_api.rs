//! Classic TensorFlow Lite C API backend (`libtensorflowlite_c.so`).
//!
//! Declarations written from TensorFlow Lite's documented C API (`tensorflow/lite/c/c_api.h`,
//! `c_api_types.h`): opaque `TfLiteModel`, `TfLiteInterpreterOptions`, `TfLiteInterpreter`,
//! `TfLiteTensor`; `TfLiteStatus`/`TfLiteType` are C enums (int); `TfLiteQuantizationParams` is
//! `{ float scale; int32_t zero_point; }`, returned by value.

use std::ffi::{c_char, c_int, c_void};
use std::path::Path;
use std::ptr;

use super::{
    c_str, element_count, quant_for, shape_from_dims, symbol, AlignedBytes, Engine, IoSpec, Loaded,
    TfliteError,
};

type Status = c_int;
const STATUS_OK: Status = 0;

macro_rules! opaque_handles {
    ($($t:ident),* $(,)?) => {
        $(
            #[repr(C)]
            pub(super) struct $t {
                _private: [u8; 0],
            }
        )*
    };
}
opaque_handles!(ModelT, OptionsT, InterpreterT, TensorT);

/// `TfLiteQuantizationParams`.
#[repr(C)]
#[derive(Clone, Copy)]
struct QuantizationParams {
    scale: f32,
    zero_point: i32,
}

// TfLiteType values: see `super::dtype_of`.

macro_rules! api {
    ($($field:ident: $sym:literal => fn($($arg:ty),* $(,)?) $(-> $ret:ty)?;)*) => {
        /// Entry points of the TfLite C API, resolved once per library.
        #[derive(Clone, Copy)]
        struct Fns {
            $($field: unsafe extern "C" fn($($arg),*) $(-> $ret)?,)*
        }

        impl Fns {
            fn resolve(lib: &libloading::Library, path: &Path) -> Result<Fns, TfliteError> {
                Ok(Fns {
                    // SAFETY: every field's type is the C signature of the symbol it is
                    // resolved from (TfLite C API), and runtime libraries are never unloaded.
                    $($field: unsafe { symbol(lib, path, $sym)? },)*
                })
            }
        }
    };
}

api! {
    version: "TfLiteVersion" => fn() -> *const c_char;
    model_create: "TfLiteModelCreate" => fn(*const c_void, usize) -> *mut ModelT;
    model_delete: "TfLiteModelDelete" => fn(*mut ModelT);
    options_create: "TfLiteInterpreterOptionsCreate" => fn() -> *mut OptionsT;
    options_delete: "TfLiteInterpreterOptionsDelete" => fn(*mut OptionsT);
    options_set_num_threads: "TfLiteInterpreterOptionsSetNumThreads" => fn(*mut OptionsT, i32);
    interpreter_create: "TfLiteInterpreterCreate" =>
        fn(*const ModelT, *const OptionsT) -> *mut InterpreterT;
    interpreter_delete: "TfLiteInterpreterDelete" => fn(*mut InterpreterT);
    allocate_tensors: "TfLiteInterpreterAllocateTensors" => fn(*mut InterpreterT) -> Status;
    input_count: "TfLiteInterpreterGetInputTensorCount" => fn(*const InterpreterT) -> i32;
    input_tensor: "TfLiteInterpreterGetInputTensor" =>
        fn(*const InterpreterT, i32) -> *mut TensorT;
    output_count: "TfLiteInterpreterGetOutputTensorCount" => fn(*const InterpreterT) -> i32;
    output_tensor: "TfLiteInterpreterGetOutputTensor" =>
        fn(*const InterpreterT, i32) -> *const TensorT;
    invoke: "TfLiteInterpreterInvoke" => fn(*mut InterpreterT) -> Status;
    tensor_type: "TfLiteTensorType" => fn(*const TensorT) -> c_int;
    tensor_num_dims: "TfLiteTensorNumDims" => fn(*const TensorT) -> i32;
    tensor_dim: "TfLiteTensorDim" => fn(*const TensorT, i32) -> i32;
    tensor_byte_size: "TfLiteTensorByteSize" => fn(*const TensorT) -> usize;
    tensor_name: "TfLiteTensorName" => fn(*const TensorT) -> *const c_char;
    tensor_quantization_params: "TfLiteTensorQuantizationParams" =>
        fn(*const TensorT) -> QuantizationParams;
    tensor_copy_from_buffer: "TfLiteTensorCopyFromBuffer" =>
        fn(*mut TensorT, *const c_void, usize) -> Status;
    tensor_copy_to_buffer: "TfLiteTensorCopyToBuffer" =>
        fn(*const TensorT, *mut c_void, usize) -> Status;
}

/// The TfLite C API of one library, plus the version string it reports.
pub(in crate::model::tflite) struct Api {
    fns: Fns,
    version: String,
}

impl Api {
    pub(in crate::model::tflite) fn resolve(
        lib: &libloading::Library,
        path: &Path,
    ) -> Result<Api, TfliteError> {
        let fns = Fns::resolve(lib, path)?;
        // SAFETY: TfLiteVersion takes no arguments and returns a static NUL-terminated string
        // (or null, which c_str maps to "").
        let version = unsafe { c_str((fns.version)()) };
        Ok(Api { fns, version })
    }

    /// `TfLiteVersion()` of the library.
    pub(in crate::model::tflite) fn version(&self) -> &str {
        &self.version
    }
}

fn status_name(s: Status) -> String {
    let name = match s {
        0 => "kTfLiteOk",
        1 => "kTfLiteError",
        2 => "kTfLiteDelegateError",
        3 => "kTfLiteApplicationError",
        4 => "kTfLiteDelegateDataNotFound",
        5 => "kTfLiteDelegateDataWriteError",
        6 => "kTfLiteDelegateDataReadError",
        7 => "kTfLiteUnresolvedOps",
        8 => "kTfLiteCancelled",
        _ => return format!("TfLiteStatus {s}"),
    };
    format!("{name} ({s})")
}

fn check(call: &'static str, s: Status) -> Result<(), TfliteError> {
    if s == STATUS_OK {
        Ok(())
    } else {
        Err(TfliteError::Runtime {
            call,
            detail: status_name(s),
        })
    }
}

/// The TfLite objects behind one model; `Drop` releases whatever exists (null = not created).
struct TfLiteCEngine {
    fns: Fns,
    model: *mut ModelT,
    options: *mut OptionsT,
    interpreter: *mut InterpreterT,
    input_sizes: Vec<usize>,
    output_sizes: Vec<usize>,
    /// The model's FlatBuffer: TfLiteModelCreate does not copy it, so it must outlive
    /// `model`. Fields drop after `Drop::drop` has deleted the model.
    model_bytes: AlignedBytes,
}

// SAFETY: the engine exclusively owns its TfLite objects. A TfLite interpreter is not bound to
// the thread that created it; it must only not be used concurrently, and `TfliteBackend` keeps the
// engine behind a `Mutex`.
unsafe impl Send for TfLiteCEngine {}

impl Drop for TfLiteCEngine {
    fn drop(&mut self) {
        if !self.interpreter.is_null() {
            // SAFETY: created by TfLiteInterpreterCreate, owned here, deleted once, first.
            unsafe { (self.fns.interpreter_delete)(self.interpreter) };
        }
        if !self.options.is_null() {
            // SAFETY: created by TfLiteInterpreterOptionsCreate, owned here, deleted once.
            unsafe { (self.fns.options_delete)(self.options) };
        }
        if !self.model.is_null() {
            // SAFETY: created by TfLiteModelCreate, owned here, deleted once, after the
            // interpreter built from it.
            unsafe { (self.fns.model_delete)(self.model) };
        }
    }
}

pub(super) fn load(
    api: &Api,
    model_path: &Path,
    model_bytes: AlignedBytes,
    threads: Option<i32>,
) -> Result<Loaded, TfliteError> {
    let f = api.fns;
    let mut e = TfLiteCEngine {
        fns: f,
        model: ptr::null_mut(),
        options: ptr::null_mut(),
        interpreter: ptr::null_mut(),
        input_sizes: Vec::new(),
        output_sizes: Vec::new(),
        model_bytes,
    };
    let model_err = |reason: String| TfliteError::ModelLoad {
        path: model_path.to_path_buf(),
        reason,
    };

    // SAFETY: the buffer is `len` readable bytes owned by the engine, which deletes the model
    // before the buffer is freed (see `Drop`).
    e.model = unsafe { (f.model_create)(e.model_bytes.as_ptr().cast(), e.model_bytes.len()) };
    if e.model.is_null() {
        return Err(model_err(
            "TfLiteModelCreate returned null (not a valid TFLite model?)".into(),
        ));
    }
    // SAFETY: no arguments; returns an owned options object or null.
    e.options = unsafe { (f.options_create)() };
    if e.options.is_null() {
        return Err(TfliteError::Runtime {
            call: "TfLiteInterpreterOptionsCreate",
            detail: "returned null".into(),
        });
    }
    if let Some(n) = threads {
        // SAFETY: `e.options` is live.
        unsafe { (f.options_set_num_threads)(e.options, n) };
    }
    // SAFETY: model and options are live and owned by `e`, which keeps both alive at least as
    // long as the interpreter.
    e.interpreter = unsafe { (f.interpreter_create)(e.model, e.options) };
    if e.interpreter.is_null() {
        return Err(model_err(
            "TfLiteInterpreterCreate returned null (unsupported op or invalid model?)".into(),
        ));
    }
    // SAFETY: `e.interpreter` is live.
    let s = unsafe { (f.allocate_tensors)(e.interpreter) };
    if s != STATUS_OK {
        return Err(model_err(format!(
            "TfLiteInterpreterAllocateTensors: {}",
            status_name(s)
        )));
    }

    // SAFETY: `e.interpreter` is live.
    let n_in = unsafe { (f.input_count)(e.interpreter) };
    // SAFETY: as above.
    let n_out = unsafe { (f.output_count)(e.interpreter) };
    let mut inputs = Vec::new();
    for i in 0..n_in.max(0) {
        // SAFETY: live interpreter, 0 <= i < input count.
        let t = unsafe { (f.input_tensor)(e.interpreter, i) };
        inputs.push(tensor_spec(&f, "input", i, t)?);
    }
    let mut outputs = Vec::new();
    for i in 0..n_out.max(0) {
        // SAFETY: live interpreter, 0 <= i < output count.
        let t = unsafe { (f.output_tensor)(e.interpreter, i) };
        outputs.push(tensor_spec(&f, "output", i, t)?);
    }
    e.input_sizes = inputs.iter().map(|s| s.byte_size).collect();
    e.output_sizes = outputs.iter().map(|s| s.byte_size).collect();
    Ok(Loaded {
        engine: Box::new(e),
        inputs,
        outputs,
    })
}

fn tensor_spec(
    f: &Fns,
    role: &'static str,
    i: i32,
    t: *const TensorT,
) -> Result<IoSpec, TfliteError> {
    let index = usize::try_from(i).unwrap_or(0);
    if t.is_null() {
        return Err(TfliteError::Runtime {
            call: if role == "input" {
                "TfLiteInterpreterGetInputTensor"
            } else {
                "TfLiteInterpreterGetOutputTensor"
            },
            detail: format!("{role} {index}: returned null"),
        });
    }
    // SAFETY: `t` is a non-null tensor of a live interpreter; TfLiteTensorName returns null or
    // a NUL-terminated string owned by the interpreter, copied at once.
    let name = unsafe { c_str((f.tensor_name)(t)) };
    let unsupported = |detail: String| TfliteError::UnsupportedTensor {
        role,
        index,
        name: name.clone(),
        detail,
    };
    // SAFETY: live tensor (as above) for this and the following accessor calls.
    let n_dims = unsafe { (f.tensor_num_dims)(t) };
    if n_dims < 0 {
        return Err(unsupported(format!("no shape (num_dims {n_dims})")));
    }
    let dims: Vec<i64> = (0..n_dims)
        // SAFETY: live tensor, 0 <= d < num_dims.
        .map(|d| i64::from(unsafe { (f.tensor_dim)(t, d) }))
        .collect();
    let shape = shape_from_dims(role, index, &name, &dims)?;
    // SAFETY: live tensor.
    let ty = unsafe { (f.tensor_type)(t) };
    let dtype = super::dtype_of(ty).ok_or_else(|| {
        unsupported(format!(
            "TfLiteType {ty}; beltbox passes on numeric and bool tensors"
        ))
    })?;
    // SAFETY: live tensor; the struct is returned by value.
    let q = unsafe { (f.tensor_quantization_params)(t) };
    let quant = quant_for(dtype, q.scale, i64::from(q.zero_point));
    // SAFETY: live tensor.
    let byte_size = unsafe { (f.tensor_byte_size)(t) };
    let want = element_count(&shape).and_then(|n| n.checked_mul(dtype.size_of()));
    if want != Some(byte_size) {
        return Err(unsupported(format!(
            "runtime reports {byte_size} bytes for shape {shape:?} {dtype}"
        )));
    }
    Ok(IoSpec {
        name,
        shape,
        dtype,
        quant,
        byte_size,
    })
}

impl Engine for TfLiteCEngine {
    fn invoke(&mut self, inputs: &[&[u8]]) -> Result<Vec<Vec<u8>>, TfliteError> {
        let f = self.fns;
        if inputs.len() != self.input_sizes.len() {
            return Err(TfliteError::InputCount {
                expected: self.input_sizes.len(),
                got: inputs.len(),
            });
        }
        for (i, (data, &size)) in inputs.iter().zip(&self.input_sizes).enumerate() {
            if data.len() != size {
                return Err(TfliteError::Runtime {
                    call: "write input",
                    detail: format!("{} bytes for a {size}-byte tensor", data.len()),
                });
            }
            let i = i32::try_from(i).map_err(|_| TfliteError::InputCount {
                expected: self.input_sizes.len(),
                got: inputs.len(),
            })?;
            // SAFETY: live interpreter, i < input count (same count as at load).
            let t = unsafe { (f.input_tensor)(self.interpreter, i) };
            if t.is_null() {
                return Err(TfliteError::Runtime {
                    call: "TfLiteInterpreterGetInputTensor",
                    detail: "returned null".into(),
                });
            }
            // SAFETY: live tensor; `data` is readable for `data.len()` bytes, which equals the
            // tensor's byte size (the C API also checks the size and fails otherwise).
            check("TfLiteTensorCopyFromBuffer", unsafe {
                (f.tensor_copy_from_buffer)(t, data.as_ptr().cast(), data.len())
            })?;
        }
        // SAFETY: live interpreter with allocated tensors and all inputs written.
        check("TfLiteInterpreterInvoke", unsafe {
            (f.invoke)(self.interpreter)
        })?;
        let mut out = Vec::with_capacity(self.output_sizes.len());
        for (i, &size) in self.output_sizes.iter().enumerate() {
            let i = i32::try_from(i).map_err(|_| TfliteError::Runtime {
                call: "read output",
                detail: "output index overflow".into(),
            })?;
            // SAFETY: live interpreter, i < output count.
            let t = unsafe { (f.output_tensor)(self.interpreter, i) };
            if t.is_null() {
                return Err(TfliteError::Runtime {
                    call: "TfLiteInterpreterGetOutputTensor",
                    detail: "returned null".into(),
                });
            }
            let mut bytes = vec![0u8; size];
            // SAFETY: live tensor; `bytes` is writable for exactly `size` bytes, the tensor's
            // byte size (the C API checks the size and fails otherwise).
            check("TfLiteTensorCopyToBuffer", unsafe {
                (f.tensor_copy_to_buffer)(t, bytes.as_mut_ptr().cast(), size)
            })?;
            out.push(bytes);
        }
        Ok(out)
    }
}
