//! `QLinearAdd`, `QLinearMul` (binary, numpy broadcasting) and `QLinearSigmoid`,
//! `QLinearLeakyRelu` (unary): dequantise, float op, requantise.
//!
//! ONNX Runtime computes these in float too, and each expansion follows the formula of ORT's
//! kernel (MLAS for Add/Mul; the unary ones build a 256-entry table by dequantise → f →
//! quantise), so results agree bit-exactly except on rare float near-ties.

use super::*;
use tract_core::broadcast::multi_broadcast;

/// The float operation between the two dequantised operands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum BinaryKind {
    Add,
    Mul,
}

/// Builds `QLinearAdd`: inputs `(A, A_scale, A_zp?, B, B_scale, B_zp?, C_scale, C_zp?)`.
pub(super) fn qlinear_add(_ctx: &ParsingContext, node: &NodeProto) -> BuilderResult {
    binary(node, BinaryKind::Add)
}

/// Builds `QLinearMul`: same inputs as `QLinearAdd`.
pub(super) fn qlinear_mul(_ctx: &ParsingContext, node: &NodeProto) -> BuilderResult {
    binary(node, BinaryKind::Mul)
}

fn binary(node: &NodeProto, kind: BinaryKind) -> BuilderResult {
    let slots = Slots::new(
        node,
        &[
            ("A", true),
            ("A_scale", true),
            ("A_zero_point", false),
            ("B", true),
            ("B_scale", true),
            ("B_zero_point", false),
            ("C_scale", true),
            ("C_zero_point", false),
        ],
    )?;
    let op = QLinearBinary {
        kind,
        arity: slots.actual,
        a: slots.req(0)?,
        a_q: slots.qparams(1)?,
        b: slots.req(3)?,
        b_q: slots.qparams(4)?,
        c_q: slots.qparams(6)?,
    };
    Ok((expand(op), vec![]))
}

/// Quantised binary element-wise op; fields are actual input positions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct QLinearBinary {
    kind: BinaryKind,
    arity: usize,
    a: usize,
    a_q: QParams,
    b: usize,
    b_q: QParams,
    c_q: QParams,
}

impl Expansion for QLinearBinary {
    fn name(&self) -> StaticName {
        match self.kind {
            BinaryKind::Add => "QLinearAdd".into(),
            BinaryKind::Mul => "QLinearMul".into(),
        }
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, self.arity)?;
        check_output_arity(outputs, 1)?;
        // ORT ties A, B, C and their zero points to one type T (uint8 or int8).
        s.equals(&inputs[self.b].datum_type, &inputs[self.a].datum_type)?;
        s.equals(&outputs[0].datum_type, &inputs[self.a].datum_type)?;
        self.a_q.rules(s, inputs, &inputs[self.a])?;
        self.b_q.rules(s, inputs, &inputs[self.b])?;
        self.c_q.rules(s, inputs, &outputs[0])?;
        s.given_2(
            &inputs[self.a].shape,
            &inputs[self.b].shape,
            move |s, a, b| {
                let c = multi_broadcast(&[a, b])?;
                s.equals(&outputs[0].shape, c)
            },
        )
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        if self.kind == BinaryKind::Add {
            if let Some(op) = FusedQAdd::build(self, model, inputs)? {
                return model.wire_node(prefix, op, &[inputs[self.a], inputs[self.b]]);
            }
        }
        let a_q = self.a_q.per_tensor(model, inputs, prefix, "a")?;
        let b_q = self.b_q.per_tensor(model, inputs, prefix, "b")?;
        let c_q = self.c_q.per_tensor(model, inputs, prefix, "c")?;
        let dt = output_type(model, inputs, self.c_q.zero_point, inputs[self.a])?;
        let (a, b) = (inputs[self.a], inputs[self.b]);
        let c = match self.kind {
            BinaryKind::Add => wire_add(model, prefix, (a, a_q), (b, b_q), c_q)?,
            BinaryKind::Mul => wire_mul(model, prefix, (a, a_q), (b, b_q), c_q)?,
        };
        // Both MLAS kernels add C's zero point as a float before rounding.
        let rounding = Rounding::AfterAddingZeroPoint;
        let c = wire_round_and_saturate(model, prefix, c, c_q.zero_point, dt, rounding)?;
        Ok(tvec!(c))
    }
}

/// QLinearAdd as one integer-in, integer-out op (same-shape operands, constant parameters):
/// MLAS's float formula per element, in one pass instead of a dozen tract element-wise
/// nodes with float tensors between them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FusedQAdd {
    /// f32 bits of a_scale, b_scale, c_scale (bits so the op can be `Eq`).
    scales: [u32; 3],
    /// a, b, c zero points.
    zps: [i32; 3],
    dt: DatumType,
}

impl FusedQAdd {
    fn build(
        q: &QLinearBinary,
        model: &TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<Option<FusedQAdd>> {
        let (a, b) = (
            model.outlet_fact(inputs[q.a])?,
            model.outlet_fact(inputs[q.b])?,
        );
        if a.shape != b.shape || a.datum_type.unquantized() != b.datum_type.unquantized() {
            return Ok(None);
        }
        let konst = |ix: Option<usize>| const_input(model, inputs, ix);
        let mut scales = [0u32; 3];
        let mut zps = [0i32; 3];
        for (i, p) in [q.a_q, q.b_q, q.c_q].iter().enumerate() {
            let (Some(s), Some(z)) = (konst(Some(p.scale))?, konst(p.zero_point)?) else {
                return Ok(None);
            };
            if s.len() != 1 || z.len() != 1 {
                return Ok(None);
            }
            scales[i] = s.cast_to_scalar::<f32>()?.to_bits();
            zps[i] = z.cast_to_scalar::<i32>()?;
        }
        let dt = output_type(model, inputs, q.c_q.zero_point, inputs[q.a])?.unquantized();
        if !matches!(dt, DatumType::U8 | DatumType::I8) || dt != a.datum_type.unquantized() {
            return Ok(None);
        }
        Ok(Some(FusedQAdd { scales, zps, dt }))
    }
}

impl Op for FusedQAdd {
    fn name(&self) -> StaticName {
        "BeltboxQAdd".into()
    }

    op_as_typed_op!();
}

impl EvalOp for FusedQAdd {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (a, b) = args_2!(inputs);
        ensure!(a.shape() == b.shape(), "BeltboxQAdd: operand shapes differ");
        let [sa, sb, sc] = self.scales.map(f32::from_bits);
        let [za, zb, zc] = self.zps.map(|z| z as f32);
        let (lo, hi) = q_range(self.dt)?;
        let signed = self.dt == DatumType::I8;
        let mut c = Tensor::zero_dt(self.dt, a.shape())?;
        let read = |v: u8| if signed { v as i8 as f32 } else { v as f32 };
        for ((o, &x), &y) in c
            .as_bytes_mut()
            .iter_mut()
            .zip(a.as_bytes())
            .zip(b.as_bytes())
        {
            // The wired path's exact float steps: dequantise both, add, divide, add the zero
            // point, clamp (integer bounds, so before rounding is the same), round half to
            // even (1.5 * 2^23 trick: exact below 2^22, and |v| <= 255 here).
            let v = ((read(x) - za) * sa + (read(y) - zb) * sb) / sc + zc;
            let v = v.max(lo).min(hi);
            *o = beltbox_kernels::requant::round_half_even(v) as u8;
        }
        Ok(tvec!(c.into_tvalue()))
    }
}

impl TypedOp for FusedQAdd {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(self.dt.fact(inputs[0].shape.clone())))
    }

    as_op!();
}

/// MLAS QLinearAdd: `(a_scale * (a - a_zp) + b_scale * (b - b_zp)) / c_scale`, unrounded.
fn wire_add(
    model: &mut TypedModel,
    prefix: &str,
    (a, a_q): (OutletId, Q),
    (b, b_q): (OutletId, Q),
    c_q: Q,
) -> TractResult<OutletId> {
    let a = wire_dequantize(model, &format!("{prefix}.a"), a, a_q)?;
    let b = wire_dequantize(model, &format!("{prefix}.b"), b, b_q)?;
    let sum = wire_with_rank_broadcast(format!("{prefix}.add"), model, add(), &[a, b])?[0];
    let name = format!("{prefix}.div_scale");
    Ok(wire_with_rank_broadcast(name, model, div(), &[sum, c_q.scale])?[0])
}

/// MLAS QLinearMul: the exact integer product `(a - a_zp) * (b - b_zp)` times the single ratio
/// `a_scale * b_scale / c_scale`, unrounded. Scaling each operand first would round differently
/// and land one step off on near-ties.
fn wire_mul(
    model: &mut TypedModel,
    prefix: &str,
    (a, a_q): (OutletId, Q),
    (b, b_q): (OutletId, Q),
    c_q: Q,
) -> TractResult<OutletId> {
    let a = wire_sub_zero_point(model, &format!("{prefix}.a"), a, a_q.zero_point)?;
    let b = wire_sub_zero_point(model, &format!("{prefix}.b"), b, b_q.zero_point)?;
    let ab = wire_with_rank_broadcast(format!("{prefix}.mul"), model, mul(), &[a, b])?[0];
    let scales = [a_q.scale, b_q.scale];
    let ab_scale = wire_with_rank_broadcast(format!("{prefix}.ab_scale"), model, mul(), &scales)?;
    let ratio = [ab_scale[0], c_q.scale];
    let ratio = wire_with_rank_broadcast(format!("{prefix}.ratio"), model, div(), &ratio)?;
    Ok(wire_with_rank_broadcast(format!("{prefix}.rescale"), model, mul(), &[ab, ratio[0]])?[0])
}

/// The float function applied to the dequantised input.
#[derive(Debug, Clone, Copy, PartialEq)]
enum UnaryKind {
    Sigmoid,
    LeakyRelu { alpha: f32 },
}

/// Builds `QLinearSigmoid`: inputs `(X, X_scale, X_zp?, Y_scale, Y_zp?)`.
pub(super) fn qlinear_sigmoid(_ctx: &ParsingContext, node: &NodeProto) -> BuilderResult {
    unary(node, UnaryKind::Sigmoid)
}

/// Builds `QLinearLeakyRelu`: inputs as `QLinearSigmoid`, attribute `alpha` (default 0.01).
pub(super) fn qlinear_leaky_relu(_ctx: &ParsingContext, node: &NodeProto) -> BuilderResult {
    let alpha = node.get_attr_opt::<f32>("alpha")?.unwrap_or(0.01);
    unary(node, UnaryKind::LeakyRelu { alpha })
}

fn unary(node: &NodeProto, kind: UnaryKind) -> BuilderResult {
    let slots = Slots::new(
        node,
        &[
            ("X", true),
            ("X_scale", true),
            ("X_zero_point", false),
            ("Y_scale", true),
            ("Y_zero_point", false),
        ],
    )?;
    let op = QLinearUnary {
        kind,
        arity: slots.actual,
        x_q: slots.qparams(1)?,
        y_q: slots.qparams(3)?,
    };
    Ok((expand(op), vec![]))
}

/// Quantised unary element-wise op; X is always input 0.
#[derive(Debug, Clone, PartialEq)]
struct QLinearUnary {
    kind: UnaryKind,
    arity: usize,
    x_q: QParams,
    y_q: QParams,
}

impl Expansion for QLinearUnary {
    fn name(&self) -> StaticName {
        match self.kind {
            UnaryKind::Sigmoid => "QLinearSigmoid".into(),
            UnaryKind::LeakyRelu { .. } => "QLinearLeakyRelu".into(),
        }
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(match self.kind {
            UnaryKind::LeakyRelu { alpha } => vec![format!("alpha: {alpha}")],
            UnaryKind::Sigmoid => vec![],
        })
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, self.arity)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, &inputs[0].datum_type)?;
        self.x_q.rules(s, inputs, &inputs[0])?;
        self.y_q.rules(s, inputs, &outputs[0])?;
        s.equals(&outputs[0].shape, &inputs[0].shape)
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let x_q = self.x_q.per_tensor(model, inputs, prefix, "x")?;
        let y_q = self.y_q.per_tensor(model, inputs, prefix, "y")?;
        let dt = output_type(model, inputs, self.y_q.zero_point, inputs[0])?;
        let x = wire_dequantize(model, &format!("{prefix}.x"), inputs[0], x_q)?;
        let op: Box<dyn TypedOp> = match self.kind {
            UnaryKind::Sigmoid => Box::new(tract_core::ops::nn::sigmoid()),
            UnaryKind::LeakyRelu { alpha } => Box::new(tract_core::ops::nn::leaky_relu(alpha)),
        };
        let y = model.wire_node(format!("{prefix}.float"), op, &[x])?[0];
        Ok(tvec!(wire_quantize(
            model,
            prefix,
            y,
            y_q,
            dt,
            Rounding::ThenAddZeroPoint
        )?))
    }
}
