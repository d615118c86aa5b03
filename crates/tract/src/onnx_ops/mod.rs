//! ONNX Runtime contrib ops (domain `com.microsoft`) for tract.
//!
//! ONNX Runtime's static quantiser, in QOperator format, emits `QLinearAdd`, `QLinearMul`,
//! `QLinearGlobalAveragePool`, `QLinearAveragePool`, `QLinearConcat`, `QLinearSigmoid`,
//! `QLinearLeakyRelu`, `QLinearSoftmax` and `QGemm`. tract-onnx 0.23.9 does not know them, so [`register`] adds
//! implementations to a tract ONNX framework before a model is loaded:
//!
//! ```no_run
//! use tract_onnx::prelude::*;
//! let mut onnx = tract_onnx::onnx();
//! beltbox_tract::onnx_ops::register(&mut onnx);
//! let model = onnx.model_for_path("model.onnx")?.into_optimized()?.into_runnable()?;
//! # Ok::<(), TractError>(())
//! ```
//!
//! Every op is an inference-time [`Expansion`] that wires plain tract-core ops when the model is
//! typed, so shape/type inference, `into_optimized()` and every tract backend work unchanged:
//!
//! * element-wise, pooling and concat ops are "dequantise, float op, requantise", following the
//!   float formula of ONNX Runtime's own CPU kernel for each op (MLAS), including where the zero
//!   point is added relative to rounding (see [`Rounding`]). On the test data they are bit-exact
//!   with ORT; a float near-tie could still land one quantisation step away.
//! * `QGemm` with a quantised output is lowered onto tract's own quantised `EinSum` (the integer
//!   machinery behind tract's `QLinearMatMul`) whenever its quantisation parameters are
//!   constants; other cases (float output, `(M, N)` or `(M, 1)` bias, `alpha <= 0`, non-constant
//!   parameters) use an exact integer-valued f32 matmul followed by ORT's requantisation formula.
//!
//! One tract op is overridden: `QuantizeLinear` (see `quantize`: tract multiplies by the
//! reciprocal of the scale where ONNX Runtime divides, which misses ties), falling back to
//! tract's for what it does not cover. tract 0.23.9's per-axis `DequantizeLinear` applies
//! each channel's own scale and zero point (upstream issue #2849 does not affect it; see
//! `tests/onnx_ops.rs`).

use tract_core::ops::cast::cast;
use tract_core::ops::change_axes::wire_with_rank_broadcast;
use tract_core::ops::math::{add, div, max, min, mul, round_half_to_even, sub};
use tract_onnx::model::{optional_inputs, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

mod concat;
mod elementwise;
mod gemm;
mod pool;
mod quantize;
mod softmax;

/// Registers beltbox's implementations of ONNX Runtime contrib ops (and fixes) on a tract ONNX framework.
///
/// Adds `QLinearAdd`, `QLinearMul`, `QLinearSigmoid`, `QLinearLeakyRelu`,
/// `QLinearGlobalAveragePool`, `QLinearAveragePool`, `QLinearConcat`, `QLinearSoftmax` and `QGemm`,
/// and replaces `QuantizeLinear` with an exact division (`quantize`).
/// Registration is by op type only (tract's registry ignores the node's domain), so this
/// replaces any previous builder registered under the same names. Call it once, before
/// `model_for_path`/`model_for_read`.
pub fn register(onnx: &mut tract_onnx::Onnx) {
    quantize::register(onnx);
    let reg = &mut onnx.op_register;
    reg.insert("QLinearAdd", elementwise::qlinear_add);
    reg.insert("QLinearMul", elementwise::qlinear_mul);
    reg.insert("QLinearSigmoid", elementwise::qlinear_sigmoid);
    reg.insert("QLinearLeakyRelu", elementwise::qlinear_leaky_relu);
    reg.insert(
        "QLinearGlobalAveragePool",
        pool::qlinear_global_average_pool,
    );
    reg.insert("QLinearAveragePool", pool::qlinear_average_pool);
    reg.insert("QLinearConcat", concat::qlinear_concat);
    reg.insert("QGemm", gemm::qgemm);
    reg.insert("QLinearSoftmax", softmax::qlinear_softmax);
    reg.insert("BeltboxQHardSigmoid", elementwise::q_hard_sigmoid);
    reg.insert("BeltboxQHardSwish", elementwise::q_hard_swish);
    reg.insert("BeltboxQScalarArith", elementwise::q_scalar_arith);
}

/// Signature shared by all op builders (the type tract-onnx's registry stores).
type BuilderResult = TractResult<(Box<dyn InferenceOp>, Vec<String>)>;

/// Where a node's logical inputs ended up among its actual inputs.
///
/// ONNX marks an absent optional input either with an empty name or by leaving trailing inputs
/// out; tract drops empty names when it wires the node, so every logical input has to be mapped
/// to its actual position before the op can find it.
#[derive(Debug, Clone)]
struct Slots {
    slots: Vec<Option<usize>>,
    actual: usize,
}

impl Slots {
    /// Maps the node's inputs onto `spec` (one `(name, required)` per logical input), failing
    /// with a readable error when there are too many inputs or a required one is missing.
    fn new(node: &NodeProto, spec: &[(&str, bool)]) -> TractResult<Slots> {
        ensure!(
            node.input.len() <= spec.len(),
            "{} node {:?}: expected at most {} inputs, got {}",
            node.op_type,
            node.name,
            spec.len(),
            node.input.len()
        );
        let slots: Vec<Option<usize>> = optional_inputs(node).take(spec.len()).collect();
        for ((name, required), slot) in spec.iter().zip(&slots) {
            ensure!(
                !required || slot.is_some(),
                "{} node {:?}: required input {name} is missing",
                node.op_type,
                node.name
            );
        }
        let actual = slots.iter().flatten().count();
        Ok(Slots { slots, actual })
    }

    /// Actual position of a required logical input (checked present by [`Slots::new`]).
    fn req(&self, logical: usize) -> TractResult<usize> {
        self.slots
            .get(logical)
            .copied()
            .flatten()
            .with_context(|| format!("required input #{logical} is missing"))
    }

    /// Actual position of an optional logical input, if the node has it.
    fn opt(&self, logical: usize) -> Option<usize> {
        self.slots.get(logical).copied().flatten()
    }

    /// Scale and optional zero point found at logical positions `scale` and `scale + 1`.
    fn qparams(&self, scale: usize) -> TractResult<QParams> {
        Ok(QParams {
            scale: self.req(scale)?,
            zero_point: self.opt(scale + 1),
        })
    }
}

/// Actual input positions of one tensor's quantisation parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct QParams {
    scale: usize,
    /// Absent means zero (of the quantised tensor's type).
    zero_point: Option<usize>,
}

impl QParams {
    /// Inference rules every quantisation parameter pair obeys: f32 scale, zero point typed
    /// like the quantised tensor it describes.
    fn rules<'r, 'p: 'r>(
        &self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        quantized: &'p TensorProxy,
    ) -> InferenceResult {
        s.equals(&inputs[self.scale].datum_type, f32::datum_type())?;
        if let Some(zp) = self.zero_point {
            s.equals(&inputs[zp].datum_type, &quantized.datum_type)?;
        }
        Ok(())
    }

    /// Wires of the scale and zero point, after checking they are per-tensor (ORT requires it
    /// for activations; broadcasting a longer vector would silently apply it to the last axis).
    fn check_per_tensor(
        &self,
        model: &TypedModel,
        inputs: &[OutletId],
        what: &str,
    ) -> TractResult<Q> {
        let q = Q {
            scale: inputs[self.scale],
            zero_point: self.zero_point.map(|z| inputs[z]),
        };
        for wire in [Some(q.scale), q.zero_point].into_iter().flatten() {
            let fact = model.outlet_fact(wire)?;
            ensure!(
                fact.shape.volume().is_one(),
                "{what}_scale and {what}_zero_point must be scalars or 1-element tensors, got shape {:?}",
                fact.shape
            );
        }
        Ok(q)
    }

    /// As [`QParams::check_per_tensor`], with `[1]`-shaped parameters reshaped to scalars so
    /// that broadcasting them can never raise the rank of a lower-rank activation.
    fn per_tensor(
        &self,
        model: &mut TypedModel,
        inputs: &[OutletId],
        prefix: &str,
        what: &str,
    ) -> TractResult<Q> {
        let q = self.check_per_tensor(model, inputs, what)?;
        let mut scalar = |wire: OutletId, name: &str| -> TractResult<OutletId> {
            let mut wire = wire;
            for ix in 0..model.outlet_fact(wire)?.rank() {
                let name = format!("{prefix}.{name}_as_scalar.{ix}");
                wire = model.wire_node(name, AxisOp::Rm(0), &[wire])?[0];
            }
            Ok(wire)
        };
        Ok(Q {
            scale: scalar(q.scale, &format!("{what}_scale"))?,
            zero_point: q
                .zero_point
                .map(|zp| scalar(zp, &format!("{what}_zero_point")))
                .transpose()?,
        })
    }
}

/// Inference rules of a one-input, one-output quantised op whose output has the input's type
/// (`X, x_scale, x_zp?, y_scale, y_zp?`): unary element-wise ops, pooling, softmax. The caller
/// adds its shape rule.
fn unary_q_rules<'r, 'p: 'r>(
    s: &mut Solver<'r>,
    inputs: &'p [TensorProxy],
    outputs: &'p [TensorProxy],
    arity: usize,
    x_q: &QParams,
    y_q: &QParams,
) -> InferenceResult {
    check_input_arity(inputs, arity)?;
    check_output_arity(outputs, 1)?;
    s.equals(&outputs[0].datum_type, &inputs[0].datum_type)?;
    x_q.rules(s, inputs, &inputs[0])?;
    y_q.rules(s, inputs, &outputs[0])
}

/// Typed-model wires of a scale and optional zero point.
#[derive(Debug, Clone, Copy)]
struct Q {
    scale: OutletId,
    zero_point: Option<OutletId>,
}

/// Representable range of a quantised type, as floats for saturation.
fn q_range(dt: DatumType) -> TractResult<(f32, f32)> {
    match dt.unquantized() {
        DatumType::U8 => Ok((u8::MIN as f32, u8::MAX as f32)),
        DatumType::I8 => Ok((i8::MIN as f32, i8::MAX as f32)),
        dt => bail!("quantised tensors must be uint8 or int8, got {dt:?}"),
    }
}

/// `(cast_f32(x) - zero_point) * scale`, numpy-broadcasting the parameters against `x`.
fn wire_dequantize(
    model: &mut TypedModel,
    prefix: &str,
    x: OutletId,
    q: Q,
) -> TractResult<OutletId> {
    let x = wire_sub_zero_point(model, prefix, x, q.zero_point)?;
    Ok(wire_with_rank_broadcast(format!("{prefix}.scale"), model, mul(), &[x, q.scale])?[0])
}

/// The constant value of parameter input `ix` (an absent one — a zero point left out — is the
/// scalar 0), or `None` when it is computed at run time.
fn const_input(
    model: &TypedModel,
    inputs: &[OutletId],
    ix: Option<usize>,
) -> TractResult<Option<Arc<Tensor>>> {
    match ix {
        Some(i) => Ok(model.outlet_fact(inputs[i])?.konst.clone()),
        None => Ok(Some(Arc::new(tensor0(0i32)))),
    }
}

/// `cast_f32(x) - zero_point` (just the cast when there is no zero point).
fn wire_sub_zero_point(
    model: &mut TypedModel,
    prefix: &str,
    x: OutletId,
    zero_point: Option<OutletId>,
) -> TractResult<OutletId> {
    let mut x = model.wire_node(format!("{prefix}.to_f32"), cast(f32::datum_type()), &[x])?[0];
    if let Some(zp) = zero_point {
        let zp = model.wire_node(format!("{prefix}.zp_f32"), cast(f32::datum_type()), &[zp])?[0];
        x = wire_with_rank_broadcast(format!("{prefix}.sub_zp"), model, sub(), &[x, zp])?[0];
    }
    Ok(x)
}

/// Whether the zero point is added before or after rounding to the nearest even integer.
///
/// The two differ on exact ties when the zero point is odd (x = 0.5, zero point 127:
/// round(0.5) + 127 = 127 but round(127.5) = 128), and ONNX Runtime is not consistent. Per its
/// source, `QuantizeLinear` and the MLAS requantisation behind QGemm, pooling and the lookup
/// tables round first (the ONNX formula), while the MLAS QLinearAdd/QLinearMul kernels add the
/// zero point as a float and round the sum (the QLinearMul test data pins this). Each op picks
/// what ORT does so ties land on the same side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rounding {
    /// `round_half_to_even(x) + zero_point` (ONNX QuantizeLinear).
    ThenAddZeroPoint,
    /// `round_half_to_even(x + zero_point)` (MLAS QLinearAdd/QLinearMul).
    AfterAddingZeroPoint,
}

/// `saturate(round_half_to_even(x / scale) + zero_point)` cast to `dt`: ONNX QuantizeLinear,
/// which is what ONNX Runtime's QLinear kernels do to their float intermediate (see
/// [`Rounding`] for where the zero point goes).
fn wire_quantize(
    model: &mut TypedModel,
    prefix: &str,
    x: OutletId,
    q: Q,
    dt: DatumType,
    rounding: Rounding,
) -> TractResult<OutletId> {
    // Constant per-tensor parameters: one exact division (a wired `div()` becomes a
    // multiplication by the reciprocal when tract optimises, see `quantize`).
    if rounding == Rounding::ThenAddZeroPoint {
        if let Some(op) = quantize::exact(model, x, q.scale, q.zero_point, Some(dt), None)? {
            return Ok(model.wire_node(prefix, op, &[x])?[0]);
        }
    }
    let x =
        wire_with_rank_broadcast(format!("{prefix}.div_scale"), model, div(), &[x, q.scale])?[0];
    wire_round_and_saturate(model, prefix, x, q.zero_point, dt, rounding)
}

/// `saturate(round_half_to_even(x) + zero_point)` cast to `dt`, for an already scaled `x`.
fn wire_round_and_saturate(
    model: &mut TypedModel,
    prefix: &str,
    x: OutletId,
    zero_point: Option<OutletId>,
    dt: DatumType,
    rounding: Rounding,
) -> TractResult<OutletId> {
    let (lo, hi) = q_range(dt)?;
    let mut x = x;
    if rounding == Rounding::ThenAddZeroPoint {
        x = model.wire_node(format!("{prefix}.round"), round_half_to_even(), &[x])?[0];
    }
    if let Some(zp) = zero_point {
        let zp = model.wire_node(format!("{prefix}.y_zp_f32"), cast(f32::datum_type()), &[zp])?[0];
        x = wire_with_rank_broadcast(format!("{prefix}.add_zp"), model, add(), &[x, zp])?[0];
    }
    if rounding == Rounding::AfterAddingZeroPoint {
        x = model.wire_node(format!("{prefix}.round"), round_half_to_even(), &[x])?[0];
    }
    // Saturating after rounding equals ORT's clamp-then-round: the bounds are integers.
    let lo = model.add_const(format!("{prefix}.min_value"), tensor0(lo))?;
    let hi = model.add_const(format!("{prefix}.max_value"), tensor0(hi))?;
    x = wire_with_rank_broadcast(format!("{prefix}.saturate_low"), model, max(), &[x, lo])?[0];
    x = wire_with_rank_broadcast(format!("{prefix}.saturate_high"), model, min(), &[x, hi])?[0];
    Ok(model.wire_node(prefix, cast(dt.unquantized()), &[x])?[0])
}

/// The quantised output type of a node: its explicit zero point's type, else `default`
/// (the type of the quantised input, as ORT's type constraints tie them together).
fn output_type(
    model: &TypedModel,
    inputs: &[OutletId],
    zero_point: Option<usize>,
    default: OutletId,
) -> TractResult<DatumType> {
    let from = zero_point.map(|z| inputs[z]).unwrap_or(default);
    let dt = model.outlet_fact(from)?.datum_type;
    q_range(dt)?;
    Ok(dt.unquantized())
}
