//! `QLinearConcat`: inputs `(Y_scale, Y_zp?, X1, X1_scale, X1_zp?, X2, ...)`, attribute `axis`.

use super::*;

/// Builds `QLinearConcat`.
pub(super) fn qlinear_concat(_ctx: &ParsingContext, node: &NodeProto) -> BuilderResult {
    let n = node.input.len();
    ensure!(
        n >= 5 && (n - 2).is_multiple_of(3),
        "QLinearConcat node {:?}: expected Y_scale, Y_zero_point and (X, X_scale, X_zero_point) \
         triples, got {n} inputs",
        node.name
    );
    let spec: Vec<(String, bool)> = [
        ("Y_scale".to_string(), true),
        ("Y_zero_point".into(), false),
    ]
    .into_iter()
    .chain((0..(n - 2) / 3).flat_map(|i| {
        [
            (format!("X{i}"), true),
            (format!("X{i}_scale"), true),
            (format!("X{i}_zero_point"), false),
        ]
    }))
    .collect();
    let spec: Vec<(&str, bool)> = spec.iter().map(|(s, r)| (s.as_str(), *r)).collect();
    let slots = Slots::new(node, &spec)?;
    let axis = node.get_attr::<i64>("axis")?;
    let xs = (0..(n - 2) / 3)
        .map(|i| Ok((slots.req(2 + 3 * i)?, slots.qparams(3 + 3 * i)?)))
        .collect::<TractResult<Vec<_>>>()?;
    let op = QLinearConcat {
        axis,
        arity: slots.actual,
        y_q: slots.qparams(0)?,
        xs,
    };
    Ok((expand(op), vec![]))
}

/// Concatenation of quantised tensors into the output's quantisation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct QLinearConcat {
    axis: i64,
    arity: usize,
    y_q: QParams,
    /// Actual positions of each X and its quantisation parameters.
    xs: Vec<(usize, QParams)>,
}

/// Normalises a possibly negative ONNX axis for a tensor of rank `rank`.
fn resolve_axis(axis: i64, rank: usize) -> TractResult<usize> {
    let resolved = if axis < 0 { axis + rank as i64 } else { axis };
    ensure!(
        (0..rank as i64).contains(&resolved),
        "QLinearConcat: axis {axis} out of range for rank {rank}"
    );
    Ok(resolved as usize)
}

/// Constant (scale, zero point) of one tensor, if both are known and per-tensor.
fn const_params(model: &TypedModel, q: Q) -> TractResult<Option<(f32, i32)>> {
    let Some(scale) = model.outlet_fact(q.scale)?.konst.clone() else {
        return Ok(None);
    };
    let zp = match q.zero_point {
        Some(zp) => match model.outlet_fact(zp)?.konst.clone() {
            Some(zp) => zp.cast_to_scalar::<i32>()?,
            None => return Ok(None),
        },
        None => 0,
    };
    Ok(Some((scale.cast_to_scalar::<f32>()?, zp)))
}

impl Expansion for QLinearConcat {
    fn name(&self) -> StaticName {
        "QLinearConcat".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("axis: {}", self.axis)])
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, self.arity)?;
        check_output_arity(outputs, 1)?;
        let first = self.xs[0].0;
        s.equals(&outputs[0].datum_type, &inputs[first].datum_type)?;
        s.equals(&outputs[0].rank, &inputs[first].rank)?;
        self.y_q.rules(s, inputs, &outputs[0])?;
        for (x, q) in &self.xs {
            s.equals(&inputs[*x].datum_type, &outputs[0].datum_type)?;
            s.equals(&inputs[*x].rank, &outputs[0].rank)?;
            q.rules(s, inputs, &inputs[*x])?;
        }
        s.given_all(
            self.xs.iter().map(|(x, _)| &inputs[*x].shape),
            move |s, shapes| {
                let rank = shapes[0].len();
                ensure!(
                    shapes.iter().all(|shape| shape.len() == rank),
                    "QLinearConcat: inputs have different ranks: {shapes:?}"
                );
                let axis = resolve_axis(self.axis, rank)?;
                let mut out = shapes[0].clone();
                out[axis] = shapes.iter().map(|shape| shape[axis].clone()).sum();
                s.equals(&outputs[0].shape, out)
            },
        )
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let y_q = self.y_q.per_tensor(model, inputs, prefix, "y")?;
        let dt = output_type(model, inputs, self.y_q.zero_point, inputs[self.xs[0].0])?;
        let y_params = const_params(model, y_q)?;
        let rank = model.outlet_fact(inputs[self.xs[0].0])?.rank();
        let axis = resolve_axis(self.axis, rank)?;
        let mut parts = tvec!();
        for (ix, (x, q)) in self.xs.iter().enumerate() {
            let x_q = q.per_tensor(model, inputs, prefix, &format!("x{ix}"))?;
            ensure!(
                model.outlet_fact(inputs[*x])?.datum_type.unquantized() == dt,
                "QLinearConcat: all inputs must have the output's type {dt:?}"
            );
            // ORT copies inputs already in the output quantisation and requantises the others;
            // doing the same keeps those inputs bit-exact and skips needless float work.
            let x_params = const_params(model, x_q)?;
            let name = format!("{prefix}.x{ix}");
            // ORT requantises through a table built with MlasQuantizeLinear (round first).
            let requant = |model: &mut TypedModel, x: OutletId, x_q: Q, y_q: Q| {
                let f = wire_dequantize(model, &format!("{name}.dequant"), x, x_q)?;
                let rounding = Rounding::ThenAddZeroPoint;
                wire_quantize(model, &format!("{name}.requant"), f, y_q, dt, rounding)
            };
            match (x_params, y_params) {
                (Some(xp), Some(yp)) if xp == yp => parts.push(inputs[*x]),
                // Constant parameters: the requantisation is a function of one code, so run
                // it once per code at load and look it up (as ORT's table does).
                (Some((xs, xz)), Some((ys, yz))) => {
                    let table = elementwise::code_table(dt, |lut, codes| {
                        let mut k = |n: &str, t: Tensor| lut.add_const(format!("{name}.{n}"), t);
                        let x_q = Q {
                            scale: k("x_scale", tensor0(xs))?,
                            zero_point: Some(k("x_zero_point", tensor0(xz))?),
                        };
                        let y_q = Q {
                            scale: k("y_scale", tensor0(ys))?,
                            zero_point: Some(k("y_zero_point", tensor0(yz))?),
                        };
                        requant(lut, codes, x_q, y_q)
                    })?;
                    let op = elementwise::QLut { table };
                    parts.push(model.wire_node(format!("{name}.requant"), op, &[inputs[*x]])?[0]);
                }
                _ => parts.push(requant(model, inputs[*x], x_q, y_q)?),
            }
        }
        model.wire_node(
            prefix,
            tract_core::ops::array::TypedConcat::new(axis),
            &parts,
        )
    }
}
