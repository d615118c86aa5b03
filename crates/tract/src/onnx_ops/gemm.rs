//! `QGemm`: `Y = alpha * (A - a_zp) x (B - b_zp) * a_scale * b_scale + C`, requantised.
//!
//! Inputs `(A, a_scale, a_zp?, B, b_scale, b_zp?, C?, y_scale?, y_zp?)`, attributes `alpha`
//! (default 1), `transA`, `transB` (default 0). A and B are 2-D; `b_scale`/`b_zp` may be
//! per-column (length N); C is an int32 bias in the accumulator domain (scale
//! `a_scale * b_scale`, zero point 0) broadcastable to `(M, N)`. As in ONNX Runtime's kernel, the
//! output is quantised to `y_zp`'s type when `y_zp` is present and is f32 otherwise; `y_scale`,
//! when present, divides the output multiplier.

use super::*;
use tract_core::ops::einsum::EinSum;

/// Builds `QGemm`.
pub(super) fn qgemm(_ctx: &ParsingContext, node: &NodeProto) -> BuilderResult {
    let slots = Slots::new(
        node,
        &[
            ("A", true),
            ("a_scale", true),
            ("a_zero_point", false),
            ("B", true),
            ("b_scale", true),
            ("b_zero_point", false),
            ("C", false),
            ("y_scale", false),
            ("y_zero_point", false),
        ],
    )?;
    let flag = |name: &str| -> TractResult<bool> {
        match node.get_attr_opt::<i64>(name)?.unwrap_or(0) {
            0 => Ok(false),
            1 => Ok(true),
            v => bail!("QGemm node {:?}: {name} must be 0 or 1, got {v}", node.name),
        }
    };
    let alpha = node.get_attr_opt::<f32>("alpha")?.unwrap_or(1.0);
    ensure!(
        alpha.is_finite(),
        "QGemm node {:?}: alpha must be finite, got {alpha}",
        node.name
    );
    let op = QGemm {
        alpha,
        trans_a: flag("transA")?,
        trans_b: flag("transB")?,
        arity: slots.actual,
        a: slots.req(0)?,
        a_q: slots.qparams(1)?,
        b: slots.req(3)?,
        b_q: slots.qparams(4)?,
        c: slots.opt(6),
        y_scale: slots.opt(7),
        y_zero_point: slots.opt(8),
    };
    Ok((expand(op), vec![]))
}

/// Quantised GEMM; fields hold actual input positions.
#[derive(Debug, Clone, PartialEq)]
struct QGemm {
    alpha: f32,
    trans_a: bool,
    trans_b: bool,
    arity: usize,
    a: usize,
    a_q: QParams,
    b: usize,
    b_q: QParams,
    c: Option<usize>,
    y_scale: Option<usize>,
    y_zero_point: Option<usize>,
}

/// All wires the lowering needs, resolved from the node inputs.
struct Wires {
    a: OutletId,
    a_q: Q,
    b: OutletId,
    b_scale: OutletId,
    b_zero_point: Option<OutletId>,
    c: Option<OutletId>,
    y_scale: Option<OutletId>,
    y_zero_point: Option<OutletId>,
    n: TDim,
}

impl QGemm {
    /// EinSum axes of A and B in tract's notation (m, k, n).
    fn a_axes(&self) -> &'static str {
        if self.trans_a {
            "km"
        } else {
            "mk"
        }
    }

    fn b_axes(&self) -> &'static str {
        if self.trans_b {
            "nk"
        } else {
            "kn"
        }
    }

    /// Lowering onto tract's quantised EinSum (the integer kernels behind its QLinearMatMul).
    /// Returns `None` when the node falls outside what that op expresses: quantisation
    /// parameters that are not constants, a bias that is not per-column, `alpha <= 0` (folded
    /// into the output scale, which must stay positive) or a float output.
    fn wire_quantized_einsum(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        w: &Wires,
        dt: DatumType,
    ) -> TractResult<Option<TVec<OutletId>>> {
        let Some(y_zp) = w.y_zero_point else {
            return Ok(None);
        };
        if self.alpha <= 0.0 {
            return Ok(None);
        }
        let konst = |o: OutletId| -> TractResult<Option<Arc<Tensor>>> {
            Ok(model.outlet_fact(o)?.konst.clone())
        };
        let a_dt = model.outlet_fact(w.a)?.datum_type.unquantized();
        let b_dt = model.outlet_fact(w.b)?.datum_type.unquantized();
        let zero = |dt: DatumType| Tensor::zero_scalar_dt(dt);
        let (Some(a_scale), Some(b_scale), Some(y_zp)) =
            (konst(w.a_q.scale)?, konst(w.b_scale)?, konst(y_zp)?)
        else {
            return Ok(None);
        };
        let a_zp = match w.a_q.zero_point {
            Some(zp) => match konst(zp)? {
                Some(zp) => zp.into_tensor(),
                None => return Ok(None),
            },
            None => zero(a_dt)?,
        };
        let b_zp = match w.b_zero_point {
            Some(zp) => match konst(zp)? {
                Some(zp) => zp.into_tensor(),
                None => return Ok(None),
            },
            None => zero(b_dt)?,
        };
        let y_scale = match w.y_scale {
            Some(s) => match konst(s)? {
                Some(s) => scalar::<f32>(&s)?,
                None => return Ok(None),
            },
            None => 1.0,
        };
        // The bias must be a scalar or one value per column to be expressible.
        let bias = match w.c {
            Some(c) => {
                let Some(c) = konst(c)? else { return Ok(None) };
                if c.len() == 1 {
                    tensor0(scalar::<i32>(&c)?)
                } else if w.n.to_usize().ok() == Some(c.len())
                    && (c.rank() == 1 || (c.rank() == 2 && c.shape()[0] == 1))
                {
                    c.cast_to::<i32>()?.into_owned().into_shape(&[c.len()])?
                } else {
                    return Ok(None);
                }
            }
            None => tensor0(0i32),
        };
        let c_scale = y_scale / self.alpha;
        if !c_scale.is_normal() {
            return Ok(None);
        }
        // Per-tensor values become scalars; per-column ones stay vectors linked to `n`.
        let per_column = |t: Tensor| -> TractResult<(Tensor, &'static str)> {
            if t.len() == 1 {
                let t = t.into_shape(&[])?;
                Ok((t, ""))
            } else {
                let len = t.len();
                Ok((t.into_shape(&[len])?, "n"))
            }
        };
        let (b_scale, b_scale_axes) = per_column(b_scale.into_tensor())?;
        let (b_zp, b_zp_axes) = per_column(b_zp)?;
        let bias_axes = if bias.rank() == 1 { "n" } else { "" };
        let consts: [(&str, Tensor); 7] = [
            ("bias", bias),
            ("a_zp", a_zp.into_shape(&[])?),
            ("a_scale", tensor0(scalar::<f32>(&a_scale)?)),
            ("b_zp", b_zp),
            ("b_scale", b_scale),
            ("y_zp", y_zp.into_tensor().into_shape(&[])?),
            ("c_scale", tensor0(c_scale)),
        ];
        let mut inputs = tvec![w.a, w.b];
        for (name, t) in consts {
            inputs.push(model.add_const(format!("{prefix}.{name}"), t)?);
        }
        let expr = format!(
            "{},{},{bias_axes},,,{b_zp_axes},{b_scale_axes},,->mn",
            self.a_axes(),
            self.b_axes()
        );
        let op = EinSum::newq(expr.parse()?, i32::datum_type(), dt);
        Ok(Some(model.wire_node(prefix, op, &inputs)?))
    }

    /// General lowering: integer-valued f32 matmul of the zero-point-free operands, bias added
    /// in the accumulator domain, then ORT's multiplier `alpha * a_scale * b_scale[n] / y_scale`
    /// (same float operation order) and, for a quantised output, round half to even + y_zp and
    /// saturation.
    fn wire_float(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        w: &Wires,
        dt: DatumType,
    ) -> TractResult<TVec<OutletId>> {
        let a = wire_sub_zero_point(model, &format!("{prefix}.a"), w.a, w.a_q.zero_point)?;
        let mut b_zp = w.b_zero_point;
        if let (Some(zp), true) = (b_zp, self.trans_b) {
            // B is (N, K): a per-column zero point must broadcast along axis 0.
            if model.outlet_fact(zp)?.rank() == 1 {
                b_zp = Some(
                    model.wire_node(format!("{prefix}.b_zp_as_column"), AxisOp::Add(1), &[zp])?[0],
                );
            }
        }
        let b = wire_sub_zero_point(model, &format!("{prefix}.b"), w.b, b_zp)?;
        let expr = format!("{},{}->mn", self.a_axes(), self.b_axes());
        let mut acc = model.wire_node(
            format!("{prefix}.matmul"),
            EinSum::new(expr.parse()?, f32::datum_type()),
            &[a, b],
        )?[0];
        if let Some(c) = w.c {
            let c =
                model.wire_node(format!("{prefix}.bias_f32"), cast(f32::datum_type()), &[c])?[0];
            acc =
                wire_with_rank_broadcast(format!("{prefix}.add_bias"), model, add(), &[acc, c])?[0];
        }
        let alpha = model.add_const(format!("{prefix}.alpha"), tensor0(self.alpha))?;
        let mut multiplier = wire_with_rank_broadcast(
            format!("{prefix}.alpha_a_scale"),
            model,
            mul(),
            &[alpha, w.a_q.scale],
        )?[0];
        multiplier = wire_with_rank_broadcast(
            format!("{prefix}.times_b_scale"),
            model,
            mul(),
            &[multiplier, w.b_scale],
        )?[0];
        if let Some(y_scale) = w.y_scale {
            multiplier = wire_with_rank_broadcast(
                format!("{prefix}.over_y_scale"),
                model,
                div(),
                &[multiplier, y_scale],
            )?[0];
        }
        if w.y_zero_point.is_none() {
            return wire_with_rank_broadcast(prefix, model, mul(), &[acc, multiplier]);
        }
        let y = wire_with_rank_broadcast(
            format!("{prefix}.rescale"),
            model,
            mul(),
            &[acc, multiplier],
        )?[0];
        // MLAS requantisation rounds, then adds the zero point.
        let rounding = Rounding::ThenAddZeroPoint;
        Ok(tvec!(wire_round_and_saturate(
            model,
            prefix,
            y,
            w.y_zero_point,
            dt,
            rounding
        )?))
    }
}

/// The single value of a one-element tensor, cast to `T`.
fn scalar<T: Datum + Copy>(t: &Tensor) -> TractResult<T> {
    ensure!(
        t.len() == 1,
        "expected a single value, got shape {:?}",
        t.shape()
    );
    t.cast_to_scalar::<T>()
}

impl Expansion for QGemm {
    fn name(&self) -> StaticName {
        "QGemm".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "alpha: {} transA: {} transB: {}",
            self.alpha, self.trans_a, self.trans_b
        )])
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, self.arity)?;
        check_output_arity(outputs, 1)?;
        s.equals(&inputs[self.a].rank, 2)?;
        s.equals(&inputs[self.b].rank, 2)?;
        s.equals(&outputs[0].rank, 2)?;
        self.a_q.rules(s, inputs, &inputs[self.a])?;
        self.b_q.rules(s, inputs, &inputs[self.b])?;
        if let Some(c) = self.c {
            s.equals(&inputs[c].datum_type, i32::datum_type())?;
        }
        if let Some(y_scale) = self.y_scale {
            s.equals(&inputs[y_scale].datum_type, f32::datum_type())?;
        }
        match self.y_zero_point {
            Some(zp) => s.equals(&outputs[0].datum_type, &inputs[zp].datum_type)?,
            None => s.equals(&outputs[0].datum_type, f32::datum_type())?,
        }
        let (m, k_a) = if self.trans_a { (1, 0) } else { (0, 1) };
        let (k_b, n) = if self.trans_b { (1, 0) } else { (0, 1) };
        s.equals(&inputs[self.a].shape[k_a], &inputs[self.b].shape[k_b])?;
        s.equals(&outputs[0].shape[0], &inputs[self.a].shape[m])?;
        s.equals(&outputs[0].shape[1], &inputs[self.b].shape[n])
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let a_q = self.a_q.check_per_tensor(model, inputs, "a")?;
        let b_fact = model.outlet_fact(inputs[self.b])?.clone();
        ensure!(
            b_fact.rank() == 2,
            "QGemm: B must be 2-D, got {:?}",
            b_fact.shape
        );
        let a_rank = model.outlet_fact(inputs[self.a])?.rank();
        ensure!(a_rank == 2, "QGemm: A must be 2-D, got rank {a_rank}");
        let n = b_fact.shape[if self.trans_b { 0 } else { 1 }].clone();
        let b_scale = inputs[self.b_q.scale];
        let b_zero_point = self.b_q.zero_point.map(|z| inputs[z]);
        for wire in [Some(b_scale), b_zero_point].into_iter().flatten() {
            let shape = &model.outlet_fact(wire)?.shape;
            ensure!(
                shape.volume().is_one() || (shape.rank() == 1 && shape[0] == n),
                "QGemm: b_scale and b_zero_point must be scalars or have N = {n} elements, got {shape:?}"
            );
        }
        let y_scale = self.y_scale.map(|s| inputs[s]);
        let y_zero_point = self.y_zero_point.map(|z| inputs[z]);
        for wire in [y_scale, y_zero_point].into_iter().flatten() {
            let shape = &model.outlet_fact(wire)?.shape;
            ensure!(
                shape.volume().is_one(),
                "QGemm: y_scale and y_zero_point must be scalars, got {shape:?}"
            );
        }
        let c = self.c.map(|c| inputs[c]);
        if let Some(c) = c {
            let rank = model.outlet_fact(c)?.rank();
            ensure!(rank <= 2, "QGemm: C must have rank <= 2, got {rank}");
        }
        let dt = match y_zero_point {
            Some(zp) => {
                let dt = model.outlet_fact(zp)?.datum_type.unquantized();
                q_range(dt)?;
                dt
            }
            None => f32::datum_type(),
        };
        let w = Wires {
            a: inputs[self.a],
            a_q,
            b: inputs[self.b],
            b_scale,
            b_zero_point,
            c,
            y_scale,
            y_zero_point,
            n,
        };
        if let Some(wires) = self.wire_quantized_einsum(prefix, model, &w, dt)? {
            return Ok(wires);
        }
        self.wire_float(prefix, model, &w, dt)
    }
}
