//! `QLinearSoftmax`: softmax on quantised tensors, with ONNX Runtime's exact arithmetic.
//!
//! ONNX Runtime's quantiser emits it in QOperator format, and ORT's QDQ fusion turns every
//! `DequantizeLinear -> Softmax -> QuantizeLinear` group into it (measured on ORT 1.32: at
//! `ORT_ENABLE_EXTENDED` and above the QDQ group and this op give the same bytes, while a
//! float softmax between the Q/DQ pair lands one step away on ~3 % of elements). So this one
//! implementation serves both formats, and `crate::qdq` rewrites the QDQ group into it.
//!
//! The arithmetic, per row of `D` elements along the softmax axis (ORT's CPU kernel):
//!
//! * a 256-entry f32 table `t[d] = exp((bias - d) * x_scale)` for `d = max(x) - x`, with
//!   `bias = max(0, ln(f32::MAX / D) - 5) / x_scale`, evaluated in f64 and rounded to f32
//!   (the shift keeps the sum of `D` entries finite while using the float range);
//! * `sum` = the entries of the row added in f32, in element order;
//! * `y = round_half_even((t[d] * floor(1 / y_scale)) / sum) + y_zero_point`, saturated.
//!
//! The input zero point does not matter (softmax is shift-invariant), and ORT ignores it too.
//! One deliberate difference: ORT's int8 kernel wraps a result of 128 (a row whose mass is
//! all on one element, with ORT's default `y_zero_point = -128`) to -128, i.e. probability
//! 0; beltbox saturates to 127 as the ONNX quantisation formula says.

use super::*;

/// Inputs: `(X, X_scale, X_zero_point?, Y_scale, Y_zero_point?)`.
const SOFTMAX_INPUTS: &[(&str, bool)] = &[
    ("X", true),
    ("X_scale", true),
    ("X_zero_point", false),
    ("Y_scale", true),
    ("Y_zero_point", false),
];

/// Builds `QLinearSoftmax` (attributes `opset`, required as in ORT, and `axis`).
pub(super) fn qlinear_softmax(_ctx: &ParsingContext, node: &NodeProto) -> BuilderResult {
    let slots = Slots::new(node, SOFTMAX_INPUTS)?;
    let opset = node.get_attr_opt::<i64>("opset")?.with_context(|| {
        format!(
            "QLinearSoftmax node {:?}: attribute `opset` (the opset of the Softmax it replaces) is required",
            node.name
        )
    })?;
    // Before opset 13, Softmax flattened the input into 2-D at `axis` (default 1); from 13
    // on it normalises along the one axis `axis` (default -1).
    let flatten = opset < 13;
    let axis = node
        .get_attr_opt::<i64>("axis")?
        .unwrap_or(if flatten { 1 } else { -1 });
    let op = QLinearSoftmax {
        arity: slots.actual,
        flatten,
        axis,
        x_q: slots.qparams(1)?,
        y_q: slots.qparams(3)?,
    };
    Ok((expand(op), vec![]))
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct QLinearSoftmax {
    arity: usize,
    flatten: bool,
    axis: i64,
    x_q: QParams,
    y_q: QParams,
}

impl Expansion for QLinearSoftmax {
    fn name(&self) -> StaticName {
        "QLinearSoftmax".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "axis: {}, flatten: {}",
            self.axis, self.flatten
        )])
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
        let x = model.outlet_fact(inputs[0])?.clone();
        let rank = x.rank() as i64;
        let axis = if self.axis < 0 {
            self.axis + rank
        } else {
            self.axis
        };
        ensure!(
            (0..rank.max(1)).contains(&axis),
            "{prefix}: QLinearSoftmax axis {} is out of range for a rank {rank} input",
            self.axis
        );
        let scalar = |ix: Option<usize>, what: &str| -> TractResult<Arc<Tensor>> {
            let t = const_input(model, inputs, ix)?.with_context(|| {
                format!(
                    "{prefix}: QLinearSoftmax needs a constant {what} (computed at run time here)"
                )
            })?;
            ensure!(
                t.len() == 1,
                "{prefix}: QLinearSoftmax {what} must be a scalar or 1-element tensor, got shape {:?}",
                t.shape()
            );
            Ok(t)
        };
        let x_scale = scalar(Some(self.x_q.scale), "x_scale")?.cast_to_scalar::<f32>()?;
        let y_scale = scalar(Some(self.y_q.scale), "y_scale")?.cast_to_scalar::<f32>()?;
        let y_zp = scalar(self.y_q.zero_point, "y_zero_point")?.cast_to_scalar::<i32>()?;
        ensure!(
            x_scale.is_finite() && x_scale > 0.0 && y_scale.is_finite() && y_scale > 0.0,
            "{prefix}: QLinearSoftmax scales must be finite and positive (x_scale {x_scale}, y_scale {y_scale})"
        );
        let dt = output_type(model, inputs, self.y_q.zero_point, inputs[0])?;
        let op = QSoftmax {
            axis: axis as usize,
            flatten: self.flatten,
            x_scale: x_scale.to_bits(),
            y_scale: y_scale.to_bits(),
            y_zp,
            dt,
        };
        model.wire_node(prefix, op, &[inputs[0]])
    }
}

/// The typed op: integer in, integer out, one pass per row.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct QSoftmax {
    axis: usize,
    flatten: bool,
    /// f32 bits (so the op can be `Eq`/`Hash`).
    x_scale: u32,
    y_scale: u32,
    y_zp: i32,
    dt: DatumType,
}

/// `t[d] = exp((bias - d) * x_scale)` for a row of `len` elements, `d` = distance from the
/// row's maximum (see the module comment for why the bias).
fn exp_table(x_scale: f32, len: usize) -> [f32; 256] {
    let s = x_scale as f64;
    let bias = ((f32::MAX as f64 / len.max(1) as f64).ln() - 5.0).max(0.0) / s;
    std::array::from_fn(|d| ((bias - d as f64) * s).exp() as f32)
}

impl QSoftmax {
    /// Normalises one row: `read(i)` gives the i-th element as an integer, `write(i, q)`
    /// stores the i-th result.
    fn row(
        &self,
        table: &[f32; 256],
        len: usize,
        read: impl Fn(usize) -> i32,
        mut write: impl FnMut(usize, i32),
    ) {
        let (lo, hi) = match self.dt {
            DatumType::I8 => (-128, 127),
            _ => (0, 255),
        };
        let max = (0..len).map(&read).max().unwrap_or(0);
        // ORT accumulates in element order, in f32; the order is part of the result.
        let sum = (0..len).fold(0f32, |acc, i| acc + table[(max - read(i)) as usize]);
        let y_scale = (1.0f32 / f32::from_bits(self.y_scale)).floor();
        for i in 0..len {
            let q = if sum > 0.0 {
                let t = table[(max - read(i)) as usize];
                beltbox_kernels::requant::round_half_even((t * y_scale) / sum)
            } else {
                0
            };
            write(i, (q + self.y_zp).clamp(lo, hi));
        }
    }
}

impl Op for QSoftmax {
    fn name(&self) -> StaticName {
        "BeltboxQSoftmax".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "axis: {}, flatten: {}, x_scale: {}, y_scale: {}, y_zero_point: {}",
            self.axis,
            self.flatten,
            f32::from_bits(self.x_scale),
            f32::from_bits(self.y_scale),
            self.y_zp
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for QSoftmax {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let shape = x.shape().to_vec();
        ensure!(
            self.axis < shape.len().max(1),
            "BeltboxQSoftmax: axis {} out of range for shape {shape:?}",
            self.axis
        );
        let total: usize = shape.iter().product();
        let mut y = Tensor::zero_dt(self.dt, &shape)?;
        if total == 0 {
            return Ok(tvec!(y.into_tvalue()));
        }
        // Row length and the stride between a row's elements: with `flatten` (opset < 13)
        // a row is everything from `axis` on, contiguous; otherwise the elements along `axis`.
        let (len, inner) = if shape.is_empty() {
            (1, 1)
        } else if self.flatten {
            (shape[self.axis..].iter().product::<usize>(), 1)
        } else {
            (shape[self.axis], shape[self.axis + 1..].iter().product())
        };
        ensure!(
            len <= 1 << 24,
            "BeltboxQSoftmax: a softmax over {len} elements is beyond ORT's float-sum contract"
        );
        let table = exp_table(f32::from_bits(self.x_scale), len);
        let signed = self.dt == DatumType::I8;
        let src = x.as_bytes();
        let dst = y.as_bytes_mut();
        let value = |b: u8| if signed { b as i8 as i32 } else { b as i32 };
        let outer = total / (len * inner);
        for o in 0..outer {
            for i in 0..inner {
                let base = o * len * inner + i;
                self.row(
                    &table,
                    len,
                    |k| value(src[base + k * inner]),
                    |k, q| dst[base + k * inner] = q as u8,
                );
            }
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for QSoftmax {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(self.dt.fact(inputs[0].shape.clone())))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain f64 softmax, quantised: the exact result ORT's table approximates.
    fn reference(x: &[i32], x_scale: f32, y_scale: f32, y_zp: i32) -> Vec<i32> {
        let max = *x.iter().max().unwrap_or(&0) as f64;
        let e: Vec<f64> = x
            .iter()
            .map(|&v| ((v as f64 - max) * x_scale as f64).exp())
            .collect();
        let s: f64 = e.iter().sum();
        e.iter()
            .map(|v| (v / s / y_scale as f64).round() as i32 + y_zp)
            .collect()
    }

    fn run(op: &QSoftmax, x: &[i32]) -> Vec<i32> {
        let table = exp_table(f32::from_bits(op.x_scale), x.len());
        let mut out = vec![0; x.len()];
        op.row(&table, x.len(), |i| x[i], |i, q| out[i] = q);
        out
    }

    fn op(dt: DatumType, y_scale: f32, y_zp: i32) -> QSoftmax {
        QSoftmax {
            axis: 1,
            flatten: false,
            x_scale: 0.0731f32.to_bits(),
            y_scale: y_scale.to_bits(),
            y_zp,
            dt,
        }
    }

    #[test]
    fn row_is_within_one_step_of_exact_softmax() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        for dt in [DatumType::U8, DatumType::I8] {
            let (y_scale, y_zp, lo) = match dt {
                DatumType::I8 => (1.0 / 256.0, -128, -128),
                _ => (1.0 / 255.0, 0, 0),
            };
            let op = op(dt, y_scale, y_zp);
            for len in [1usize, 2, 7, 64, 1000] {
                let x: Vec<i32> = (0..len)
                    .map(|_| {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        lo + (rng % 256) as i32
                    })
                    .collect();
                let ours = run(&op, &x);
                let exact = reference(&x, 0.0731, y_scale, y_zp);
                for (a, b) in ours.iter().zip(&exact) {
                    assert!(
                        (a - (*b).min(lo + 255)).abs() <= 1,
                        "{dt:?} len {len}: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_certain_row_saturates_instead_of_wrapping() {
        // One element far above the rest: all the mass on it. ORT's int8 kernel wraps 128
        // to -128 here; the ONNX formula saturates.
        let op = op(DatumType::I8, 1.0 / 256.0, -128);
        let out = run(&op, &[127, -128, -128, -128]);
        assert_eq!(out, vec![127, -128, -128, -128]);
    }
}
