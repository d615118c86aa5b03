//! LiteRT C API backend (`libLiteRt.so` from the `ai-edge-litert` 2.1.4 wheel).
//!
//! Declarations written from LiteRT 2.1.4's documented C API (`litert/c/litert_common.h`,
//! `litert_model.h`, `litert_model_types.h`, `litert_layout.h`, `litert_environment.h`,
//! `litert_options.h`, `litert_opaque_options.h`, `litert_compiled_model.h`,
//! `litert_tensor_buffer.h`). The LiteRT C ABI is not promised stable across releases: this module
//! targets the pinned 2.1.4 library that `cross/fetch-litert.sh` installs.
//!
//! Flow: environment -> model (from an aligned in-memory copy of the file, so that LiteRT runs its
//! FlatBuffer verifier: `LiteRtCreateModelFromFile` does not verify, and crashes on a corrupt
//! file that carries the `TFL3` identifier) -> signature 0 (LiteRT
//! synthesises one for models without signatures) -> options (CPU accelerator; thread count and
//! kernel mode as the "xnnpack" opaque option, a TOML payload `num_threads = N` /
//! `kernel_mode = "builtin"`) -> compiled model -> one managed
//! host-memory buffer per input/output, created once and reused by every run.

use std::ffi::{c_char, c_int, c_void, CString};
use std::path::Path;
use std::ptr;

use super::{
    c_str, element_count, quant_for, shape_from_dims, symbol, AlignedBytes, CpuKernels, Engine,
    IoSpec, Loaded, TfliteError,
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
opaque_handles!(
    EnvironmentT,
    ModelT,
    SignatureT,
    TensorT,
    OptionsT,
    OpaqueOptionsT,
    CompiledModelT,
    TensorBufferT,
    TensorBufferRequirementsT,
);
type Environment = *mut EnvironmentT;
type Model = *mut ModelT;
type Signature = *mut SignatureT;
type LrtTensor = *mut TensorT;
type Options = *mut OptionsT;
type OpaqueOptions = *mut OpaqueOptionsT;
type CompiledModel = *mut CompiledModelT;
type TensorBuffer = *mut TensorBufferT;
type TensorBufferRequirements = *mut TensorBufferRequirementsT;

/// `LITERT_TENSOR_MAX_RANK`.
const MAX_RANK: usize = 8;

/// `LiteRtLayout`: `unsigned rank:7; bool has_strides:1;` share the first 32-bit unit (rank in
/// the low 7 bits on the little-endian targets we run on), then dimensions and strides.
#[repr(C)]
#[derive(Clone, Copy)]
struct Layout {
    rank_bits: u32,
    dimensions: [i32; MAX_RANK],
    strides: [u32; MAX_RANK],
}

/// `LiteRtRankedTensorType`.
#[repr(C)]
#[derive(Clone, Copy)]
struct RankedTensorType {
    element_type: c_int,
    layout: Layout,
}

// The header's own static_asserts for 64-bit non-MSVC targets.
const _: () = assert!(std::mem::size_of::<Layout>() == 68);
const _: () = assert!(std::mem::size_of::<RankedTensorType>() == 72);

/// `LiteRtAny`: a type tag and an 8-byte union; only its `int64_t` member is used here.
#[repr(C)]
#[derive(Clone, Copy)]
struct Any {
    ty: c_int,
    int_value: i64,
}

/// `LiteRtEnvOption`.
#[repr(C)]
#[derive(Clone, Copy)]
struct EnvOption {
    tag: c_int,
    value: Any,
}

const _: () = assert!(std::mem::size_of::<EnvOption>() == 24);

// LiteRtAnyType.
const ANY_TYPE_INT: c_int = 2;
// LiteRtEnvOptionTag.
const ENV_OPTION_AUTO_REGISTER_ACCELERATORS: c_int = 24;
const ENV_OPTION_MIN_LOGGER_SEVERITY: c_int = 25;
// LiteRtLogSeverity: drop INFO chatter (environment creation, accelerator registration).
// The 2.1.4 wheel's library predates this option tag and ignores it (it still logs a few INFO
// lines per model to stderr); later LiteRT builds honour it.
const LOG_SEVERITY_WARNING: i64 = 2;

/// `LiteRtQuantizationPerTensor`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PerTensorQuant {
    scale: f32,
    zero_point: i64,
}

// LiteRtElementType values mirror TfLiteType: see `super::dtype_of`.
// LiteRtTensorTypeId.
const RANKED_TENSOR_TYPE: c_int = 0;
// LiteRtQuantizationTypeId.
const QUANTIZATION_PER_TENSOR: c_int = 1;
// LiteRtHwAccelerators.
const HW_ACCELERATOR_CPU: c_int = 1;
// LiteRtTensorBufferLockMode.
const LOCK_READ: c_int = 0;
const LOCK_WRITE: c_int = 1;
/// Identifier of the CPU (XNNPACK) opaque options (`LrtGetCpuOptionsIdentifier()`).
const CPU_OPTIONS_ID: &[u8] = b"xnnpack\0";

macro_rules! api {
    ($($field:ident: $sym:literal => fn($($arg:ty),* $(,)?) $(-> $ret:ty)?;)*) => {
        /// Entry points of the LiteRT C API, resolved once per library.
        #[derive(Clone, Copy)]
        pub(in crate::model::tflite) struct Api {
            $($field: unsafe extern "C" fn($($arg),*) $(-> $ret)?,)*
        }

        impl Api {
            pub(in crate::model::tflite) fn resolve(
                lib: &libloading::Library,
                path: &Path,
            ) -> Result<Api, TfliteError> {
                Ok(Api {
                    // SAFETY: every field's type is the C signature of the symbol it is
                    // resolved from (LiteRT 2.1.4 C API), and runtime libraries are never
                    // unloaded, so the pointers stay valid.
                    $($field: unsafe { symbol(lib, path, $sym)? },)*
                })
            }
        }
    };
}

api! {
    create_environment: "LiteRtCreateEnvironment" =>
        fn(c_int, *const EnvOption, *mut Environment) -> Status;
    destroy_environment: "LiteRtDestroyEnvironment" => fn(Environment);
    create_model_from_buffer: "LiteRtCreateModelFromBuffer" =>
        fn(*const c_void, usize, *mut Model) -> Status;
    destroy_model: "LiteRtDestroyModel" => fn(Model);
    get_num_model_signatures: "LiteRtGetNumModelSignatures" => fn(Model, *mut usize) -> Status;
    get_model_signature: "LiteRtGetModelSignature" => fn(Model, usize, *mut Signature) -> Status;
    get_num_signature_inputs: "LiteRtGetNumSignatureInputs" =>
        fn(Signature, *mut usize) -> Status;
    get_signature_input_name: "LiteRtGetSignatureInputName" =>
        fn(Signature, usize, *mut *const c_char) -> Status;
    get_signature_input_tensor: "LiteRtGetSignatureInputTensorByIndex" =>
        fn(Signature, usize, *mut LrtTensor) -> Status;
    get_num_signature_outputs: "LiteRtGetNumSignatureOutputs" =>
        fn(Signature, *mut usize) -> Status;
    get_signature_output_name: "LiteRtGetSignatureOutputName" =>
        fn(Signature, usize, *mut *const c_char) -> Status;
    get_signature_output_tensor: "LiteRtGetSignatureOutputTensorByIndex" =>
        fn(Signature, usize, *mut LrtTensor) -> Status;
    get_tensor_name: "LiteRtGetTensorName" => fn(LrtTensor, *mut *const c_char) -> Status;
    get_tensor_type_id: "LiteRtGetTensorTypeId" => fn(LrtTensor, *mut c_int) -> Status;
    get_ranked_tensor_type: "LiteRtGetRankedTensorType" =>
        fn(LrtTensor, *mut RankedTensorType) -> Status;
    get_quantization_type_id: "LiteRtGetQuantizationTypeId" =>
        fn(LrtTensor, *mut c_int) -> Status;
    get_per_tensor_quantization: "LiteRtGetPerTensorQuantization" =>
        fn(LrtTensor, *mut PerTensorQuant) -> Status;
    create_options: "LiteRtCreateOptions" => fn(*mut Options) -> Status;
    destroy_options: "LiteRtDestroyOptions" => fn(Options);
    set_options_hardware_accelerators: "LiteRtSetOptionsHardwareAccelerators" =>
        fn(Options, c_int) -> Status;
    create_opaque_options: "LiteRtCreateOpaqueOptions" =>
        fn(
            *const c_char,
            *mut c_void,
            Option<unsafe extern "C" fn(*mut c_void)>,
            *mut OpaqueOptions,
        ) -> Status;
    destroy_opaque_options: "LiteRtDestroyOpaqueOptions" => fn(OpaqueOptions);
    add_opaque_options: "LiteRtAddOpaqueOptions" => fn(Options, OpaqueOptions) -> Status;
    create_compiled_model: "LiteRtCreateCompiledModel" =>
        fn(Environment, Model, Options, *mut CompiledModel) -> Status;
    destroy_compiled_model: "LiteRtDestroyCompiledModel" => fn(CompiledModel);
    get_input_buffer_requirements: "LiteRtGetCompiledModelInputBufferRequirements" =>
        fn(CompiledModel, usize, usize, *mut TensorBufferRequirements) -> Status;
    get_output_buffer_requirements: "LiteRtGetCompiledModelOutputBufferRequirements" =>
        fn(CompiledModel, usize, usize, *mut TensorBufferRequirements) -> Status;
    create_managed_buffer: "LiteRtCreateManagedTensorBufferFromRequirements" =>
        fn(
            Environment,
            *const RankedTensorType,
            TensorBufferRequirements,
            *mut TensorBuffer,
        ) -> Status;
    get_tensor_buffer_size: "LiteRtGetTensorBufferSize" => fn(TensorBuffer, *mut usize) -> Status;
    lock_tensor_buffer: "LiteRtLockTensorBuffer" =>
        fn(TensorBuffer, *mut *mut c_void, c_int) -> Status;
    unlock_tensor_buffer: "LiteRtUnlockTensorBuffer" => fn(TensorBuffer) -> Status;
    destroy_tensor_buffer: "LiteRtDestroyTensorBuffer" => fn(TensorBuffer);
    run_compiled_model: "LiteRtRunCompiledModel" =>
        fn(CompiledModel, usize, usize, *mut TensorBuffer, usize, *mut TensorBuffer) -> Status;
}

/// `LiteRtStatus` name (values from `litert_common.h`).
fn status_name(s: Status) -> String {
    let name = match s {
        0 => "Ok",
        1 => "ErrorInvalidArgument",
        2 => "ErrorMemoryAllocationFailure",
        3 => "ErrorRuntimeFailure",
        4 => "ErrorMissingInputTensor",
        5 => "ErrorUnsupported",
        6 => "ErrorNotFound",
        7 => "ErrorTimeoutExpired",
        8 => "ErrorWrongVersion",
        9 => "ErrorUnknown",
        10 => "ErrorAlreadyExists",
        100 => "Cancelled",
        500 => "ErrorFileIO",
        501 => "ErrorInvalidFlatbuffer",
        502 => "ErrorDynamicLoading",
        503 => "ErrorSerialization",
        504 => "ErrorCompilation",
        1000 => "ErrorIndexOOB",
        _ => return format!("LiteRtStatus {s}"),
    };
    format!("kLiteRtStatus{name} ({s})")
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

fn non_null<T>(call: &'static str, p: *mut T) -> Result<*mut T, TfliteError> {
    if p.is_null() {
        Err(TfliteError::Runtime {
            call,
            detail: "returned a null handle".into(),
        })
    } else {
        Ok(p)
    }
}

/// Payload destructor handed to LiteRT with the CPU options TOML string.
///
/// # Safety
/// `p` is null or a pointer obtained from `CString::into_raw` that is not used afterwards.
unsafe extern "C" fn free_cstring_payload(p: *mut c_void) {
    if !p.is_null() {
        // SAFETY: per the contract, `p` came from `CString::into_raw` and LiteRT calls this
        // destructor exactly once, when it destroys the opaque options that own the payload.
        drop(unsafe { CString::from_raw(p.cast::<c_char>()) });
    }
}

/// The LiteRT objects behind one model. Null handles are "not created (yet)"; `Drop` releases
/// whatever exists, in reverse creation order, so a half-built engine cleans up after an error.
struct LiteRtEngine {
    api: Api,
    env: Environment,
    model: Model,
    options: Options,
    compiled: CompiledModel,
    inputs: Vec<TensorBuffer>,
    outputs: Vec<TensorBuffer>,
    input_sizes: Vec<usize>,
    output_sizes: Vec<usize>,
    /// The model FlatBuffer. LiteRT does not copy it: it must outlive `model` and `compiled`.
    /// Fields are dropped after `Drop::drop` has destroyed those, so it does.
    model_bytes: AlignedBytes,
}

// SAFETY: the engine exclusively owns its LiteRT handles. LiteRT objects are not tied to the
// thread that created them; they only must not be used concurrently, and `TfliteBackend` keeps the
// engine behind a `Mutex`, so at most one thread touches them at a time.
unsafe impl Send for LiteRtEngine {}

impl Drop for LiteRtEngine {
    fn drop(&mut self) {
        for &b in self.inputs.iter().chain(self.outputs.iter()) {
            if !b.is_null() {
                // SAFETY: `b` was created by LiteRtCreateManagedTensorBufferFromRequirements,
                // is owned by this engine only and is destroyed exactly once, here.
                unsafe { (self.api.destroy_tensor_buffer)(b) };
            }
        }
        if !self.compiled.is_null() {
            // SAFETY: created by LiteRtCreateCompiledModel, owned here, destroyed once; its
            // buffers are gone and the model, options and environment it uses still exist.
            unsafe { (self.api.destroy_compiled_model)(self.compiled) };
        }
        if !self.options.is_null() {
            // SAFETY: created by LiteRtCreateOptions, owned here (with the opaque options chain
            // added to it), destroyed once, after the compiled model that read it.
            unsafe { (self.api.destroy_options)(self.options) };
        }
        if !self.model.is_null() {
            // SAFETY: created by LiteRtCreateModelFromBuffer, owned here, destroyed once, after
            // the compiled model built from it (and before `model_bytes`, which it points into).
            unsafe { (self.api.destroy_model)(self.model) };
        }
        if !self.env.is_null() {
            // SAFETY: created by LiteRtCreateEnvironment, owned here, destroyed last.
            unsafe { (self.api.destroy_environment)(self.env) };
        }
    }
}

pub(super) fn load(
    api: &Api,
    model_path: &Path,
    model_bytes: AlignedBytes,
    threads: Option<i32>,
    kernels: Option<CpuKernels>,
) -> Result<Loaded, TfliteError> {
    let mut e = LiteRtEngine {
        api: *api,
        env: ptr::null_mut(),
        model: ptr::null_mut(),
        options: ptr::null_mut(),
        compiled: ptr::null_mut(),
        inputs: Vec::new(),
        outputs: Vec::new(),
        input_sizes: Vec::new(),
        output_sizes: Vec::new(),
        model_bytes,
    };

    // Register only the CPU accelerator: no probing (dlopen) for GPU/NPU accelerator libraries
    // along the library search path, and no log lines about their absence.
    let env_options = [
        EnvOption {
            tag: ENV_OPTION_AUTO_REGISTER_ACCELERATORS,
            value: Any {
                ty: ANY_TYPE_INT,
                int_value: i64::from(HW_ACCELERATOR_CPU),
            },
        },
        EnvOption {
            tag: ENV_OPTION_MIN_LOGGER_SEVERITY,
            value: Any {
                ty: ANY_TYPE_INT,
                int_value: LOG_SEVERITY_WARNING,
            },
        },
    ];
    let mut env = ptr::null_mut();
    // SAFETY: `env_options` is an array of 2 initialised LiteRtEnvOption values (integer
    // payloads only, nothing borrowed) that outlives the call; `env` is a valid out-pointer.
    check("LiteRtCreateEnvironment", unsafe {
        (api.create_environment)(env_options.len() as c_int, env_options.as_ptr(), &mut env)
    })?;
    e.env = non_null("LiteRtCreateEnvironment", env)?;

    let mut model = ptr::null_mut();
    // SAFETY: the pointer/length describe `e.model_bytes`, a 64-byte-aligned buffer that is
    // never mutated and outlives the model (see `LiteRtEngine`); LiteRT verifies the FlatBuffer
    // before using it. `model` is a valid out-pointer.
    let s = unsafe {
        (api.create_model_from_buffer)(
            e.model_bytes.as_ptr().cast(),
            e.model_bytes.len(),
            &mut model,
        )
    };
    if s != STATUS_OK || model.is_null() {
        return Err(TfliteError::ModelLoad {
            path: model_path.to_path_buf(),
            reason: format!(
                "LiteRtCreateModelFromBuffer: {} (corrupt or not a TFLite model?)",
                status_name(s)
            ),
        });
    }
    e.model = model;

    let (inputs, outputs, input_types, output_types) = describe(api, model, model_path)?;

    let mut options = ptr::null_mut();
    // SAFETY: `options` is a valid out-pointer.
    check("LiteRtCreateOptions", unsafe {
        (api.create_options)(&mut options)
    })?;
    e.options = non_null("LiteRtCreateOptions", options)?;
    // SAFETY: `e.options` is a live options handle.
    check("LiteRtSetOptionsHardwareAccelerators", unsafe {
        (api.set_options_hardware_accelerators)(e.options, HW_ACCELERATOR_CPU)
    })?;
    let mut cpu_toml = String::new();
    if let Some(n) = threads {
        cpu_toml.push_str(&format!("num_threads = {n}\n"));
    }
    if let Some(k) = kernels {
        // `as_str` values are fixed identifiers, nothing needs escaping.
        cpu_toml.push_str(&format!("kernel_mode = \"{}\"\n", k.as_str()));
    }
    if !cpu_toml.is_empty() {
        add_cpu_options(api, e.options, cpu_toml)?;
    }

    let mut compiled = ptr::null_mut();
    // SAFETY: environment, model and options are live handles owned by `e` (they outlive the
    // compiled model: see Drop); `compiled` is a valid out-pointer.
    let s = unsafe { (api.create_compiled_model)(e.env, e.model, e.options, &mut compiled) };
    if s != STATUS_OK || compiled.is_null() {
        return Err(TfliteError::ModelLoad {
            path: model_path.to_path_buf(),
            reason: format!(
                "LiteRtCreateCompiledModel (CPU): {} (unsupported op or invalid model?)",
                status_name(s)
            ),
        });
    }
    e.compiled = compiled;

    for (i, (spec, ty)) in inputs.iter().zip(&input_types).enumerate() {
        let b = create_buffer(api, &e, true, i, ty, spec.byte_size)?;
        e.inputs.push(b);
        e.input_sizes.push(spec.byte_size);
    }
    for (i, (spec, ty)) in outputs.iter().zip(&output_types).enumerate() {
        let b = create_buffer(api, &e, false, i, ty, spec.byte_size)?;
        e.outputs.push(b);
        e.output_sizes.push(spec.byte_size);
    }

    Ok(Loaded {
        engine: Box::new(e),
        inputs,
        outputs,
    })
}

/// Adds the CPU accelerator's options (`num_threads = n`) to `options`.
fn add_cpu_options(api: &Api, options: Options, toml: String) -> Result<(), TfliteError> {
    let toml = CString::new(toml).map_err(|_| TfliteError::Runtime {
        call: "CPU options",
        detail: "payload contains NUL".into(),
    })?;
    let payload = toml.into_raw();
    let mut opaque = ptr::null_mut();
    // SAFETY: identifier is a static NUL-terminated string (LiteRT copies it); `payload` is a
    // heap C string whose ownership passes to the opaque options on success, together with the
    // matching destructor; `opaque` is a valid out-pointer.
    let s = unsafe {
        (api.create_opaque_options)(
            CPU_OPTIONS_ID.as_ptr().cast(),
            payload.cast(),
            Some(free_cstring_payload),
            &mut opaque,
        )
    };
    if s != STATUS_OK || opaque.is_null() {
        // SAFETY: creation failed, so LiteRT did not take the payload; we still own it.
        unsafe { free_cstring_payload(payload.cast()) };
        return Err(TfliteError::Runtime {
            call: "LiteRtCreateOpaqueOptions",
            detail: status_name(s),
        });
    }
    // SAFETY: both handles are live; on success `options` owns `opaque` (destroyed with it).
    let s = unsafe { (api.add_opaque_options)(options, opaque) };
    if s != STATUS_OK {
        // SAFETY: not added, so we still own `opaque` (and through it the payload).
        unsafe { (api.destroy_opaque_options)(opaque) };
        return Err(TfliteError::Runtime {
            call: "LiteRtAddOpaqueOptions",
            detail: status_name(s),
        });
    }
    Ok(())
}

fn create_buffer(
    api: &Api,
    e: &LiteRtEngine,
    input: bool,
    index: usize,
    ty: &RankedTensorType,
    need: usize,
) -> Result<TensorBuffer, TfliteError> {
    let (call, get_req) = if input {
        (
            "LiteRtGetCompiledModelInputBufferRequirements",
            api.get_input_buffer_requirements,
        )
    } else {
        (
            "LiteRtGetCompiledModelOutputBufferRequirements",
            api.get_output_buffer_requirements,
        )
    };
    let mut req = ptr::null_mut();
    // SAFETY: `e.compiled` is live; signature 0 and `index` < its input/output count (from the
    // same model's signature); `req` is a valid out-pointer. The requirements stay owned by the
    // compiled model (we never destroy them).
    check(call, unsafe { get_req(e.compiled, 0, index, &mut req) })?;
    let req = non_null(call, req)?;
    let mut buf = ptr::null_mut();
    // SAFETY: live environment and requirements; `ty` is a tensor type LiteRT itself filled in;
    // `buf` is a valid out-pointer. We own the new buffer.
    check("LiteRtCreateManagedTensorBufferFromRequirements", unsafe {
        (api.create_managed_buffer)(e.env, ty, req, &mut buf)
    })?;
    let buf = non_null("LiteRtCreateManagedTensorBufferFromRequirements", buf)?;
    let mut size = 0usize;
    // SAFETY: `buf` is live; `size` is a valid out-pointer.
    let s = unsafe { (api.get_tensor_buffer_size)(buf, &mut size) };
    if s != STATUS_OK || size < need {
        // SAFETY: `buf` is ours and not stored anywhere else yet.
        unsafe { (api.destroy_tensor_buffer)(buf) };
        return Err(TfliteError::Runtime {
            call: "LiteRtGetTensorBufferSize",
            detail: format!(
                "{} (buffer {size} bytes, tensor needs {need})",
                status_name(s)
            ),
        });
    }
    Ok(buf)
}

type Described = (
    Vec<IoSpec>,
    Vec<IoSpec>,
    Vec<RankedTensorType>,
    Vec<RankedTensorType>,
);

/// Inputs and outputs of signature 0, with the LiteRT tensor types needed for the buffers.
fn describe(api: &Api, model: Model, model_path: &Path) -> Result<Described, TfliteError> {
    let mut n = 0usize;
    // SAFETY: `model` is live; `n` is a valid out-pointer.
    check("LiteRtGetNumModelSignatures", unsafe {
        (api.get_num_model_signatures)(model, &mut n)
    })?;
    if n == 0 {
        return Err(TfliteError::ModelLoad {
            path: model_path.to_path_buf(),
            reason: "model has no signature / subgraph".into(),
        });
    }
    let mut sig = ptr::null_mut();
    // SAFETY: `model` is live, 0 < n; `sig` is a valid out-pointer. The signature is owned by
    // the model and only used while it lives (inside this function).
    check("LiteRtGetModelSignature", unsafe {
        (api.get_model_signature)(model, 0, &mut sig)
    })?;
    let sig = non_null("LiteRtGetModelSignature", sig)?;

    let (inputs, input_types) = signature_side(api, sig, &INPUTS)?;
    let (outputs, output_types) = signature_side(api, sig, &OUTPUTS)?;
    Ok((inputs, outputs, input_types, output_types))
}

type CountFn = unsafe extern "C" fn(Signature, *mut usize) -> Status;
type NameFn = unsafe extern "C" fn(Signature, usize, *mut *const c_char) -> Status;
type TensorFn = unsafe extern "C" fn(Signature, usize, *mut LrtTensor) -> Status;

/// The entry points that walk one side (inputs or outputs) of a signature, with the symbol
/// names used in error messages: LiteRT mirrors the two sides function for function.
struct SignatureSide {
    role: &'static str,
    count: (&'static str, fn(&Api) -> CountFn),
    name: (&'static str, fn(&Api) -> NameFn),
    tensor: (&'static str, fn(&Api) -> TensorFn),
}

const INPUTS: SignatureSide = SignatureSide {
    role: "input",
    count: ("LiteRtGetNumSignatureInputs", |a| {
        a.get_num_signature_inputs
    }),
    name: ("LiteRtGetSignatureInputName", |a| {
        a.get_signature_input_name
    }),
    tensor: ("LiteRtGetSignatureInputTensorByIndex", |a| {
        a.get_signature_input_tensor
    }),
};

const OUTPUTS: SignatureSide = SignatureSide {
    role: "output",
    count: ("LiteRtGetNumSignatureOutputs", |a| {
        a.get_num_signature_outputs
    }),
    name: ("LiteRtGetSignatureOutputName", |a| {
        a.get_signature_output_name
    }),
    tensor: ("LiteRtGetSignatureOutputTensorByIndex", |a| {
        a.get_signature_output_tensor
    }),
};

/// Specs and LiteRT tensor types of one side of a live signature, in signature order.
fn signature_side(
    api: &Api,
    sig: Signature,
    side: &SignatureSide,
) -> Result<(Vec<IoSpec>, Vec<RankedTensorType>), TfliteError> {
    let mut specs = Vec::new();
    let mut types = Vec::new();
    let mut count = 0usize;
    // SAFETY: `sig` is live; `count` is a valid out-pointer.
    check(side.count.0, unsafe {
        (side.count.1)(api)(sig, &mut count)
    })?;
    for i in 0..count {
        let mut name = ptr::null();
        let mut t = ptr::null_mut();
        // SAFETY: `sig` is live, i < count; out-pointers are valid.
        check(side.name.0, unsafe {
            (side.name.1)(api)(sig, i, &mut name)
        })?;
        // SAFETY: as above.
        check(side.tensor.0, unsafe {
            (side.tensor.1)(api)(sig, i, &mut t)
        })?;
        // SAFETY: `name` is null or a NUL-terminated string owned by the live model.
        let name = unsafe { c_str(name) };
        let t = non_null(side.tensor.0, t)?;
        let (spec, ty) = tensor_spec(api, side.role, i, name, t)?;
        specs.push(spec);
        types.push(ty);
    }
    Ok((specs, types))
}

/// Name, type and quantisation of one signature input/output. The reported name is the graph
/// tensor name (e.g. `serving_default_input:0`), as the TfLite C API reports it, so manifests
/// read the same under both APIs; the signature's own name is the fallback.
fn tensor_spec(
    api: &Api,
    role: &'static str,
    index: usize,
    signature_name: String,
    t: LrtTensor,
) -> Result<(IoSpec, RankedTensorType), TfliteError> {
    let mut tensor_name = ptr::null();
    // SAFETY: `t` is a live tensor of the live model; `tensor_name` is a valid out-pointer.
    let s = unsafe { (api.get_tensor_name)(t, &mut tensor_name) };
    let name = if s == STATUS_OK {
        // SAFETY: null or a NUL-terminated string owned by the live model, copied at once.
        unsafe { c_str(tensor_name) }
    } else {
        String::new()
    };
    let name = if name.is_empty() {
        signature_name
    } else {
        name
    };
    let unsupported = |detail: String| TfliteError::UnsupportedTensor {
        role,
        index,
        name: name.clone(),
        detail,
    };
    let mut type_id: c_int = -1;
    // SAFETY: `t` is a live tensor of the live model; `type_id` is a valid out-pointer.
    check("LiteRtGetTensorTypeId", unsafe {
        (api.get_tensor_type_id)(t, &mut type_id)
    })?;
    if type_id != RANKED_TENSOR_TYPE {
        return Err(unsupported("unranked tensor".into()));
    }
    let mut ty = RankedTensorType {
        element_type: 0,
        layout: Layout {
            rank_bits: 0,
            dimensions: [0; MAX_RANK],
            strides: [0; MAX_RANK],
        },
    };
    // SAFETY: `t` is live; `ty` is a properly sized and aligned LiteRtRankedTensorType.
    check("LiteRtGetRankedTensorType", unsafe {
        (api.get_ranked_tensor_type)(t, &mut ty)
    })?;
    let rank = (ty.layout.rank_bits & 0x7f) as usize;
    if rank > MAX_RANK {
        return Err(unsupported(format!("rank {rank} > {MAX_RANK}")));
    }
    let dims: Vec<i64> = ty.layout.dimensions[..rank]
        .iter()
        .map(|&d| i64::from(d))
        .collect();
    let shape = shape_from_dims(role, index, &name, &dims)?;
    let dtype = super::dtype_of(ty.element_type).ok_or_else(|| {
        unsupported(format!(
            "element type {} (TfLiteType numbering); beltbox passes on numeric and bool tensors",
            ty.element_type
        ))
    })?;
    let mut q_type: c_int = 0;
    // SAFETY: `t` is live; `q_type` is a valid out-pointer.
    check("LiteRtGetQuantizationTypeId", unsafe {
        (api.get_quantization_type_id)(t, &mut q_type)
    })?;
    let quant = if q_type == QUANTIZATION_PER_TENSOR {
        let mut q = PerTensorQuant::default();
        // SAFETY: `t` is live and per-tensor quantised; `q` is a valid out-pointer.
        check("LiteRtGetPerTensorQuantization", unsafe {
            (api.get_per_tensor_quantization)(t, &mut q)
        })?;
        quant_for(dtype, q.scale, q.zero_point)
    } else {
        None
    };
    let byte_size = element_count(&shape)
        .and_then(|n| n.checked_mul(dtype.size_of()))
        .ok_or_else(|| unsupported(format!("shape {shape:?} too large")))?;
    Ok((
        IoSpec {
            name,
            shape,
            dtype,
            quant,
            byte_size,
        },
        ty,
    ))
}

impl Engine for LiteRtEngine {
    fn invoke(&mut self, inputs: &[&[u8]]) -> Result<Vec<Vec<u8>>, TfliteError> {
        if inputs.len() != self.inputs.len() {
            return Err(TfliteError::InputCount {
                expected: self.inputs.len(),
                got: inputs.len(),
            });
        }
        for ((&buf, &size), data) in self.inputs.iter().zip(&self.input_sizes).zip(inputs) {
            if data.len() != size {
                return Err(TfliteError::Runtime {
                    call: "write input",
                    detail: format!("{} bytes for a {size}-byte tensor", data.len()),
                });
            }
            let mut host = ptr::null_mut();
            // SAFETY: `buf` is a live host-memory buffer owned by this engine; `host` is a
            // valid out-pointer.
            check("LiteRtLockTensorBuffer", unsafe {
                (self.api.lock_tensor_buffer)(buf, &mut host, LOCK_WRITE)
            })?;
            if !host.is_null() {
                // SAFETY: the locked buffer is at least `size` bytes (checked when it was
                // created) and cannot overlap `data`, which Rust owns.
                unsafe { ptr::copy_nonoverlapping(data.as_ptr(), host.cast::<u8>(), size) };
            }
            // SAFETY: `buf` was locked just above.
            let s = unsafe { (self.api.unlock_tensor_buffer)(buf) };
            if host.is_null() {
                return Err(TfliteError::Runtime {
                    call: "LiteRtLockTensorBuffer",
                    detail: "returned a null host address".into(),
                });
            }
            check("LiteRtUnlockTensorBuffer", s)?;
        }

        // SAFETY: the compiled model and every buffer are live and owned by this engine; the
        // buffer arrays have exactly as many entries as the signature has inputs / outputs and
        // LiteRT only reads the handle arrays during the call.
        check("LiteRtRunCompiledModel", unsafe {
            (self.api.run_compiled_model)(
                self.compiled,
                0,
                self.inputs.len(),
                self.inputs.as_mut_ptr(),
                self.outputs.len(),
                self.outputs.as_mut_ptr(),
            )
        })?;

        let mut out = Vec::with_capacity(self.outputs.len());
        for (&buf, &size) in self.outputs.iter().zip(&self.output_sizes) {
            let mut host = ptr::null_mut();
            // SAFETY: live buffer owned by this engine; valid out-pointer.
            check("LiteRtLockTensorBuffer", unsafe {
                (self.api.lock_tensor_buffer)(buf, &mut host, LOCK_READ)
            })?;
            let mut bytes = vec![0u8; size];
            if !host.is_null() {
                // SAFETY: the locked buffer holds at least `size` bytes (checked at creation);
                // `bytes` is a fresh allocation of exactly `size` bytes.
                unsafe { ptr::copy_nonoverlapping(host.cast::<u8>(), bytes.as_mut_ptr(), size) };
            }
            // SAFETY: `buf` was locked just above.
            let s = unsafe { (self.api.unlock_tensor_buffer)(buf) };
            if host.is_null() {
                return Err(TfliteError::Runtime {
                    call: "LiteRtLockTensorBuffer",
                    detail: "returned a null host address".into(),
                });
            }
            check("LiteRtUnlockTensorBuffer", s)?;
            out.push(bytes);
        }
        Ok(out)
    }
}
