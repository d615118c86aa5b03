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
        if let Some(op) = FusedQAdd::build(self, model, inputs)? {
            return model.wire_node(prefix, op, &[inputs[self.a], inputs[self.b]]);
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

/// QLinearAdd / QLinearMul as one integer-in, integer-out op (constant parameters, numpy
/// broadcasting): MLAS's float steps per element for Add ([`beltbox_kernels::qadd`]), the
/// wired path's exact steps for Mul, in one pass instead of a dozen tract element-wise nodes
/// with float tensors between them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FusedQAdd {
    /// Add (MLAS QLinearAdd's steps) or Mul (the wired path's steps, fused).
    kind: BinaryKind,
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
        if a.datum_type.unquantized() != b.datum_type.unquantized()
            || multi_broadcast(&[a.shape.to_tvec(), b.shape.to_tvec()]).is_err()
        {
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
        Ok(Some(FusedQAdd {
            kind: q.kind,
            scales,
            zps,
            dt,
        }))
    }

    /// Replaces `node` by the table of this op's results on `operands` (two 256-element
    /// operands, or one and a scalar), applied to `x`.
    fn lut_patch(
        &self,
        model: &TypedModel,
        node: &TypedNode,
        x: OutletId,
        operands: TVec<Tensor>,
    ) -> TractResult<Option<TypedModelPatch>> {
        let inputs = operands.into_iter().map(|t| t.into_tvalue()).collect();
        let table = table_from(EvalOp::eval(self, &EvalContext::out_of_plan(), inputs)?)?;
        let patch = TypedModelPatch::replace_single_op(model, node, &[x], QLut { table })?;
        Ok(Some(patch))
    }
}

/// The single output of a run over the 256 codes, as a table.
fn table_from(outputs: TVec<TValue>) -> TractResult<Arc<[u8; 256]>> {
    let out = outputs.first().context("lookup table: no output")?;
    let table: [u8; 256] = out
        .as_bytes()
        .try_into()
        .map_err(|_| format_err!("lookup table: {} bytes, expected 256", out.len()))?;
    Ok(Arc::new(table))
}

/// The 256 codes (or their images under a table) as a 1-D tensor of `dt` (u8 or i8).
fn code_tensor(dt: DatumType, bytes: Vec<u8>) -> TractResult<Tensor> {
    Ok(match dt.unquantized() {
        DatumType::I8 => {
            tract_ndarray::Array1::from_iter(bytes.into_iter().map(|b| b as i8)).into_tensor()
        }
        DatumType::U8 => tract_ndarray::Array1::from_vec(bytes).into_tensor(),
        other => bail!("lookup table: {other:?} is not an 8-bit type"),
    })
}

/// How MLAS sees one run of the innermost output axis: both operands vary along it, or one
/// of them is a single value for the whole run (folded into the constant first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Span {
    Both,
    ScalarA,
    ScalarB,
}

/// QLinearMul's steps for one operand pair, kept in one place so both the per-element and the
/// broadcast loops round identically. `SIGNED` is a type parameter so the loops carry no
/// per-element branch and vectorise.
struct MulSteps {
    ratio: f32,
    zps: [f32; 3],
}

impl MulSteps {
    #[inline(always)]
    fn value<const SIGNED: bool>(q: u8) -> f32 {
        if SIGNED {
            q as i8 as f32
        } else {
            q as f32
        }
    }

    #[inline(always)]
    fn store<const SIGNED: bool>(&self, product: f32) -> u8 {
        let (lo, hi) = if SIGNED {
            (-128.0, 127.0)
        } else {
            (0.0, 255.0)
        };
        let v = product * self.ratio + self.zps[2];
        beltbox_kernels::requant::round_half_even(v.clamp(lo, hi)) as u8
    }

    fn run<const SIGNED: bool>(&self, a: &[u8], b: &[u8], out: &mut [u8]) {
        let [za, zb, _] = self.zps;
        for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
            let product = (Self::value::<SIGNED>(x) - za) * (Self::value::<SIGNED>(y) - zb);
            *o = self.store::<SIGNED>(product);
        }
    }

    /// One operand fixed at `fixed` (already minus its zero point); `varying` has zero
    /// point `zp`. IEEE multiplication commutes exactly, so operand order does not matter.
    fn run_scalar<const SIGNED: bool>(&self, fixed: f32, varying: &[u8], zp: f32, out: &mut [u8]) {
        for (o, &v) in out.iter_mut().zip(varying) {
            *o = self.store::<SIGNED>((Self::value::<SIGNED>(v) - zp) * fixed);
        }
    }

    /// Dispatches one run on the operand type and the broadcast shape.
    fn dispatch(&self, signed: bool, span: Span, a: &[u8], b: &[u8], out: &mut [u8]) {
        let [za, zb, _] = self.zps;
        match (signed, span) {
            (false, Span::Both) => self.run::<false>(a, b, out),
            (true, Span::Both) => self.run::<true>(a, b, out),
            (false, Span::ScalarA) => {
                self.run_scalar::<false>(Self::value::<false>(a[0]) - za, b, zb, out)
            }
            (true, Span::ScalarA) => {
                self.run_scalar::<true>(Self::value::<true>(a[0]) - za, b, zb, out)
            }
            (false, Span::ScalarB) => {
                self.run_scalar::<false>(Self::value::<false>(b[0]) - zb, a, za, out)
            }
            (true, Span::ScalarB) => {
                self.run_scalar::<true>(Self::value::<true>(b[0]) - zb, a, za, out)
            }
        }
    }
}

impl Op for FusedQAdd {
    fn name(&self) -> StaticName {
        match self.kind {
            BinaryKind::Add => "BeltboxQAdd".into(),
            BinaryKind::Mul => "BeltboxQMul".into(),
        }
    }

    op_as_typed_op!();
}

impl EvalOp for FusedQAdd {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (a, b) = args_2!(inputs);
        let shape = multi_broadcast(&[a.shape(), b.shape()])?;
        let p = beltbox_kernels::qadd::AddParams::new(
            self.scales.map(f32::from_bits),
            self.zps,
            self.dt == DatumType::I8,
        );
        let mut c = Tensor::zero_dt(self.dt, &shape)?;
        let (ab, bb) = (a.as_bytes(), b.as_bytes());
        let out = c.as_bytes_mut();
        if out.is_empty() {
            return Ok(tvec!(c.into_tvalue()));
        }
        // ORT calls its kernel once per run of the innermost axis (after dropping trailing
        // size-1 output axes); an operand that is one value for the run takes the scalar path.
        let rank = shape.len();
        let inner_axis = (0..rank).rev().find(|&i| shape[i] > 1);
        let dim = |t: &[usize], axis: usize| {
            let offset = rank - t.len();
            if axis < offset {
                1
            } else {
                t[axis - offset]
            }
        };
        let (span, run) = match inner_axis {
            _ if ab.len() == 1 => (Span::ScalarA, out.len()),
            _ if bb.len() == 1 => (Span::ScalarB, out.len()),
            None => (Span::Both, 1),
            Some(ax) => {
                // The run: trailing axes over which both operands advance together (or the
                // one that varies does, while the other stays put).
                let mode = match (dim(a.shape(), ax) == 1, dim(b.shape(), ax) == 1) {
                    (true, _) => Span::ScalarA,
                    (_, true) => Span::ScalarB,
                    _ => Span::Both,
                };
                let mut run = 1;
                for axis in (0..rank).rev() {
                    let (da, db) = (dim(a.shape(), axis), dim(b.shape(), axis));
                    let fits = match mode {
                        Span::Both => da == shape[axis] && db == shape[axis],
                        Span::ScalarA => da == 1 && db == shape[axis],
                        Span::ScalarB => db == 1 && da == shape[axis],
                    };
                    if !fits {
                        break;
                    }
                    run *= shape[axis];
                }
                (mode, run.max(1))
            }
        };
        // Element offsets of each run's start in a and b: walk the output in runs and map
        // each run's first index back through the broadcast strides.
        let strides = |t: &[usize]| -> Vec<usize> {
            let mut s = vec![0; rank];
            let mut acc = 1;
            for axis in (0..rank).rev() {
                let d = dim(t, axis);
                s[axis] = if d == 1 { 0 } else { acc };
                acc *= d;
            }
            s
        };
        let (sa, sb) = (strides(a.shape()), strides(b.shape()));
        let offset = |strides: &[usize], mut flat: usize| -> usize {
            let mut off = 0;
            for axis in (0..rank).rev() {
                off += (flat % shape[axis]) * strides[axis];
                flat /= shape[axis];
            }
            off
        };
        // QLinearMul: the wired path's float steps, `(a - a_zp) * (b - b_zp)` (exact in f32)
        // times `a_scale * b_scale / c_scale`, plus the zero point, rounded half to even.
        let [fa, fb, fc] = self.scales.map(f32::from_bits);
        let mul = MulSteps {
            ratio: (fa * fb) / fc,
            zps: self.zps.map(|z| z as f32),
        };
        let signed = self.dt == DatumType::I8;
        for (k, chunk) in out.chunks_mut(run).enumerate() {
            let start = k * run;
            let (oa, ob) = (offset(&sa, start), offset(&sb, start));
            let n = chunk.len();
            if self.kind == BinaryKind::Mul {
                let a = if span == Span::ScalarA {
                    &ab[oa..=oa]
                } else {
                    &ab[oa..oa + n]
                };
                let b = if span == Span::ScalarB {
                    &bb[ob..=ob]
                } else {
                    &bb[ob..ob + n]
                };
                mul.dispatch(signed, span, a, b, chunk);
                continue;
            }
            match span {
                Span::Both => {
                    beltbox_kernels::qadd::add(&p, &ab[oa..oa + n], &bb[ob..ob + n], chunk)
                }
                Span::ScalarA => {
                    let fixed = p.fixed_with_a(ab[oa]);
                    beltbox_kernels::qadd::add_one(&p, &bb[ob..ob + n], p.ratio_b, fixed, chunk)
                }
                Span::ScalarB => {
                    let fixed = p.fixed_with_b(bb[ob]);
                    beltbox_kernels::qadd::add_one(&p, &ab[oa..oa + n], p.ratio_a, fixed, chunk)
                }
            }
        }
        Ok(tvec!(c.into_tvalue()))
    }
}

impl TypedOp for FusedQAdd {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = multi_broadcast(&[inputs[0].shape.to_tvec(), inputs[1].shape.to_tvec()])?;
        Ok(tvec!(self.dt.fact(shape)))
    }

    /// Folds the op into a 256-entry [`QLut`] when its result is a function of one 8-bit
    /// tensor: one operand is a one-element constant (`x + 3` in a HardSwish), or both
    /// operands derive from the same tensor (`x * table(x)`: SiLU, HardSwish, `x * x`).
    ///
    /// The table is this op's own `eval` on the 256 codes, and it takes the same per-element
    /// path as the graph would (the scalar path when one operand is one element, the
    /// two-operand path when both vary), so the lookup is exact by construction. Outputs of a
    /// single element are left alone: there the graph's broadcast path would differ.
    fn declutter(
        &self,
        model: &TypedModel,
        node: &TypedNode,
    ) -> TractResult<Option<TypedModelPatch>> {
        let facts = model.node_input_facts(node.id)?;
        let out = model.outlet_fact(OutletId::new(node.id, 0))?;
        // At least this many elements: a symbolic (dynamic) dimension counts as 1, so a
        // [1, 64, h, w] map of a dynamic model still folds.
        let at_least: usize = out.shape.iter().filter_map(|d| d.to_usize().ok()).product();
        if at_least < 2 {
            return Ok(None);
        }
        let codes = |map: Option<&[u8; 256]>| -> TractResult<Tensor> {
            let bytes: Vec<u8> = (0..=255u8)
                .map(|c| map.map_or(c, |t| t[c as usize]))
                .collect();
            code_tensor(self.dt, bytes)
        };
        let (a, b) = (node.inputs[0], node.inputs[1]);
        // One operand a one-element constant, the other as large as the output.
        for (var, fixed) in [(0, 1), (1, 0)] {
            let Some(k) = &facts[fixed].konst else {
                continue;
            };
            if k.len() != 1 || facts[var].shape != out.shape {
                continue;
            }
            let k = k.clone().into_tensor().into_shape(&[])?;
            let operands = if var == 0 {
                tvec!(codes(None)?, k)
            } else {
                tvec!(k, codes(None)?)
            };
            return self.lut_patch(model, node, node.inputs[var], operands);
        }
        // Both operands functions of one tensor x: (x, x), (x, lut(x)) or (lut(x), x).
        let lut_of = |side: OutletId, of: OutletId| -> Option<Arc<[u8; 256]>> {
            let n = model.node(side.node);
            n.op_as::<QLut>()
                .filter(|_| n.inputs.first() == Some(&of))
                .map(|l| l.table.clone())
        };
        if facts[0].shape != out.shape || facts[1].shape != out.shape {
            return Ok(None);
        }
        let (x, operands) = if a == b {
            (a, tvec!(codes(None)?, codes(None)?))
        } else if let Some(t) = lut_of(b, a) {
            (a, tvec!(codes(None)?, codes(Some(&t))?))
        } else if let Some(t) = lut_of(a, b) {
            (b, tvec!(codes(Some(&t))?, codes(None)?))
        } else {
            return Ok(None);
        };
        self.lut_patch(model, node, x, operands)
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
    LeakyRelu {
        alpha: f32,
    },
    /// `max(0, min(1, alpha * x + beta))` (ONNX HardSigmoid).
    HardSigmoid {
        alpha: f32,
        beta: f32,
    },
    /// `x * max(0, min(1, x / 6 + 1 / 2))` (ONNX HardSwish).
    HardSwish,
    /// `x <op> value`, or `value <op> x` when `constant_first` (a float op with a scalar
    /// constant between a DequantizeLinear and a QuantizeLinear).
    Scalar {
        op: ScalarOp,
        value: f32,
        constant_first: bool,
    },
}

/// The float op of [`UnaryKind::Scalar`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScalarOp {
    Add,
    Sub,
    Mul,
    Div,
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

/// Builds `BeltboxQHardSigmoid` (`crate::qdq`'s fusion of `DQ -> HardSigmoid -> Q`; no ORT
/// contrib op exists): inputs as `QLinearSigmoid`, attributes `alpha` (0.2), `beta` (0.5).
pub(super) fn q_hard_sigmoid(_ctx: &ParsingContext, node: &NodeProto) -> BuilderResult {
    let alpha = node.get_attr_opt::<f32>("alpha")?.unwrap_or(0.2);
    let beta = node.get_attr_opt::<f32>("beta")?.unwrap_or(0.5);
    unary(node, UnaryKind::HardSigmoid { alpha, beta })
}

/// Builds `BeltboxQHardSwish` (`crate::qdq`'s fusion of `DQ -> HardSwish -> Q`).
pub(super) fn q_hard_swish(_ctx: &ParsingContext, node: &NodeProto) -> BuilderResult {
    unary(node, UnaryKind::HardSwish)
}

/// Builds `BeltboxQScalarArith` (`crate::qdq`'s fusion of `DQ -> Add/Sub/Mul/Div with a
/// float scalar constant -> Q`, which ORT runs in float): inputs as `QLinearSigmoid`,
/// attributes `op` (`Add`, `Sub`, `Mul` or `Div`), `value` and `constant_first` (0 or 1).
pub(super) fn q_scalar_arith(_ctx: &ParsingContext, node: &NodeProto) -> BuilderResult {
    let op = match node.get_attr::<String>("op")?.as_str() {
        "Add" => ScalarOp::Add,
        "Sub" => ScalarOp::Sub,
        "Mul" => ScalarOp::Mul,
        "Div" => ScalarOp::Div,
        other => bail!("BeltboxQScalarArith: op `{other}` is not one of Add, Sub, Mul, Div"),
    };
    let value = node.get_attr::<f32>("value")?;
    let constant_first = node.get_attr_opt::<i64>("constant_first")?.unwrap_or(0) != 0;
    unary(
        node,
        UnaryKind::Scalar {
            op,
            value,
            constant_first,
        },
    )
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
            UnaryKind::HardSigmoid { .. } => "BeltboxQHardSigmoid".into(),
            UnaryKind::HardSwish => "BeltboxQHardSwish".into(),
            UnaryKind::Scalar { .. } => "BeltboxQScalarArith".into(),
        }
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(match self.kind {
            UnaryKind::LeakyRelu { alpha } => vec![format!("alpha: {alpha}")],
            UnaryKind::HardSigmoid { alpha, beta } => vec![format!("alpha: {alpha}, beta: {beta}")],
            UnaryKind::Scalar {
                op,
                value,
                constant_first,
            } => vec![format!("{op:?} {value} (constant first: {constant_first})")],
            UnaryKind::Sigmoid | UnaryKind::HardSwish => vec![],
        })
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        unary_q_rules(s, inputs, outputs, self.arity, &self.x_q, &self.y_q)?;
        s.equals(&outputs[0].shape, &inputs[0].shape)
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let dt = output_type(model, inputs, self.y_q.zero_point, inputs[0])?;
        // Constant parameters (what a quantiser writes): the whole op is a function of one
        // 8-bit code, so evaluate the float path once per code at load and look it up.
        if let Some(table) = self.table(model, inputs, dt)? {
            return model.wire_node(prefix, QLut { table }, &[inputs[0]]);
        }
        let x_q = self.x_q.per_tensor(model, inputs, prefix, "x")?;
        let y_q = self.y_q.per_tensor(model, inputs, prefix, "y")?;
        Ok(tvec!(
            self.wire_float(model, prefix, inputs[0], x_q, y_q, dt)?
        ))
    }
}

impl QLinearUnary {
    /// Dequantise, the float function, quantise (ONNX QuantizeLinear rounding): ORT's
    /// formula for the table it builds for these ops.
    fn wire_float(
        &self,
        model: &mut TypedModel,
        prefix: &str,
        x: OutletId,
        x_q: Q,
        y_q: Q,
        dt: DatumType,
    ) -> TractResult<OutletId> {
        let x = wire_dequantize(model, &format!("{prefix}.x"), x, x_q)?;
        let float = |name: &str| format!("{prefix}.{name}");
        let y = match self.kind {
            UnaryKind::Sigmoid => {
                model.wire_node(float("float"), tract_core::ops::nn::sigmoid(), &[x])?[0]
            }
            UnaryKind::LeakyRelu { alpha } => {
                model.wire_node(float("float"), tract_core::ops::nn::leaky_relu(alpha), &[x])?[0]
            }
            UnaryKind::HardSwish => {
                model.wire_node(float("float"), tract_core::ops::nn::hard_swish(), &[x])?[0]
            }
            UnaryKind::HardSigmoid { alpha, beta } => {
                let k =
                    |model: &mut TypedModel, n: &str, v: f32| model.add_const(float(n), tensor0(v));
                let (a, b) = (k(model, "alpha", alpha)?, k(model, "beta", beta)?);
                let (zero, one) = (k(model, "zero", 0.0)?, k(model, "one", 1.0)?);
                let y = wire_with_rank_broadcast(float("mul_alpha"), model, mul(), &[x, a])?;
                let y = wire_with_rank_broadcast(float("add_beta"), model, add(), &[y[0], b])?;
                let y = wire_with_rank_broadcast(float("min_one"), model, min(), &[y[0], one])?;
                wire_with_rank_broadcast(float("max_zero"), model, max(), &[y[0], zero])?[0]
            }
            UnaryKind::Scalar {
                op,
                value,
                constant_first,
            } => {
                let k = model.add_const(float("value"), tensor0(value))?;
                let operands = if constant_first { [k, x] } else { [x, k] };
                let op = match op {
                    ScalarOp::Add => add(),
                    ScalarOp::Sub => sub(),
                    ScalarOp::Mul => mul(),
                    ScalarOp::Div => div(),
                };
                wire_with_rank_broadcast(float("float"), model, op, &operands)?[0]
            }
        };
        wire_quantize(model, prefix, y, y_q, dt, Rounding::ThenAddZeroPoint)
    }

    /// The 256-entry table `out[code]` (codes in byte order), computed by running
    /// [`QLinearUnary::wire_float`] on every code, when the parameters are constants.
    fn table(
        &self,
        model: &TypedModel,
        inputs: &[OutletId],
        dt: DatumType,
    ) -> TractResult<Option<Arc<[u8; 256]>>> {
        let x_dt = model.outlet_fact(inputs[0])?.datum_type.unquantized();
        if !matches!(x_dt, DatumType::U8 | DatumType::I8) {
            return Ok(None);
        }
        let mut params = Vec::new();
        for ix in [
            Some(self.x_q.scale),
            self.x_q.zero_point,
            Some(self.y_q.scale),
            self.y_q.zero_point,
        ] {
            match (ix, const_input(model, inputs, ix)?) {
                (None, _) => params.push(None),
                (Some(_), Some(t)) if t.len() == 1 => params.push(Some(t)),
                _ => return Ok(None),
            }
        }
        let table = code_table(x_dt, |lut, codes| {
            let mut konst = |i: usize, name: &str| -> TractResult<Option<OutletId>> {
                params[i]
                    .as_ref()
                    .map(|t| lut.add_const(name, t.clone().into_tensor().into_shape(&[])?))
                    .transpose()
            };
            let x_q = Q {
                scale: konst(0, "x_scale")?.context("x_scale")?,
                zero_point: konst(1, "x_zero_point")?,
            };
            let y_q = Q {
                scale: konst(2, "y_scale")?.context("y_scale")?,
                zero_point: konst(3, "y_zero_point")?,
            };
            self.wire_float(lut, "lut", codes, x_q, y_q, dt)
        })?;
        Ok(Some(table))
    }
}

/// The 256-entry table of a float chain on 8-bit codes of type `x_dt` (codes in byte order):
/// `build` wires the chain on a source of all 256 codes in a scratch model, which is run
/// once. The table holds exactly what the chain computes, whatever its rounding.
pub(super) fn code_table(
    x_dt: DatumType,
    build: impl FnOnce(&mut TypedModel, OutletId) -> TractResult<OutletId>,
) -> TractResult<Arc<[u8; 256]>> {
    let mut lut = TypedModel::default();
    let codes = lut.add_source("codes", x_dt.unquantized().fact([256usize]))?;
    let y = build(&mut lut, codes)?;
    lut.select_output_outlets(&[y])?;
    let input = code_tensor(x_dt, (0..=255u8).collect())?;
    table_from(lut.into_runnable()?.run(tvec!(input.into_tvalue()))?)
}

/// An 8-bit to 8-bit op that is a function of the input code alone: one table lookup per
/// element (ORT evaluates its QLinear unary ops the same way).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct QLut {
    pub(super) table: Arc<[u8; 256]>,
}

impl Op for QLut {
    fn name(&self) -> StaticName {
        "BeltboxQLut".into()
    }

    op_as_typed_op!();
}

impl EvalOp for QLut {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let mut y = x.into_tensor();
        for b in y.as_bytes_mut() {
            *b = self.table[*b as usize];
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for QLut {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(inputs[0]
            .datum_type
            .unquantized()
            .fact(inputs[0].shape.clone())))
    }

    /// A table of a table is one table: `outer[inner[code]]` (a HardSwish written as
    /// `Add -> Mul -> Div` ends as one lookup per element).
    fn declutter(
        &self,
        model: &TypedModel,
        node: &TypedNode,
    ) -> TractResult<Option<TypedModelPatch>> {
        let prev = model.node(node.inputs[0].node);
        let Some(inner) = prev.op_as::<QLut>() else {
            return Ok(None);
        };
        let mut table = [0u8; 256];
        for (code, out) in table.iter_mut().enumerate() {
            *out = self.table[inner.table[code] as usize];
        }
        let op = QLut {
            table: Arc::new(table),
        };
        Ok(Some(TypedModelPatch::replace_single_op(
            model,
            node,
            &[prev.inputs[0]],
            op,
        )?))
    }

    as_op!();
}
