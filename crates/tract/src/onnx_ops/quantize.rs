//! `QuantizeLinear` as ONNX and ONNX Runtime define it: `saturate(round_half_to_even(x /
//! scale) + zero_point)`, with a true f32 division.
//!
//! tract 0.23.9 computes `x * (1 / scale)`: its `QuantizeLinear` passes `scale.recip()` to its
//! quantiser, and its optimiser rewrites every float `Div` into a multiplication by the
//! reciprocal (`declutter_div`), so a wired `div()` ends the same way. The two disagree where
//! `x / scale` is an exact tie: with scale 1/255, x = 0.005882353 gives 1.5 (rounds to 2,
//! ORT) against 1.4999999 (rounds to 1). A YOLOv8n's input quantiser met such values in
//! 480x640 and 640x640 frames of random floats, and the step grew to 15 pixels in the boxes. ORT's MLAS kernel divides (`MlasQuantizeLinear`), so [`QuantizeDiv`] divides,
//! inside its own `eval` where no rewrite can reach it.

use std::sync::OnceLock;

use super::*;
use crate::replace::{self, OpBuilder};

/// tract's own builder: the fallback for what [`QuantizeDiv`] does not cover (non-constant
/// parameters, inputs other than f32, opset 21's blocked quantisation and output types).
static TRACT_QUANTIZE_LINEAR: OnceLock<OpBuilder> = OnceLock::new();

/// Replaces tract's `QuantizeLinear` builder, keeping it as the fallback.
pub(super) fn register(onnx: &mut tract_onnx::Onnx) {
    replace::replace(
        onnx,
        "QuantizeLinear",
        quantize_linear,
        &TRACT_QUANTIZE_LINEAR,
    );
}

fn quantize_linear(ctx: &ParsingContext, node: &NodeProto) -> BuilderResult {
    let (fallback, extra) = match replace::tract_expansion(&TRACT_QUANTIZE_LINEAR, ctx, node)? {
        (Ok(fallback), extra) => (fallback, extra),
        (Err(op), extra) => return Ok((op, extra)),
    };
    // Opset 21's block quantisation and explicit output types stay with tract's op.
    let plain = node.get_attr_opt::<i64>("block_size")?.unwrap_or(0) == 0
        && node.get_attr_opt::<i64>("output_dtype")?.unwrap_or(0) == 0;
    Ok((
        expand(ExactQuantize {
            fallback,
            plain,
            axis: node.get_attr_opt::<i64>("axis")?.unwrap_or(1),
        }),
        extra,
    ))
}

/// Inference-time op: tract's rules, [`QuantizeDiv`] when the parameters allow it.
#[derive(Debug, Clone)]
struct ExactQuantize {
    fallback: Box<dyn Expansion>,
    /// No opset 21 `block_size` or `output_dtype`.
    plain: bool,
    axis: i64,
}

impl Expansion for ExactQuantize {
    fn name(&self) -> StaticName {
        "QuantizeLinear".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        self.fallback.rules(s, inputs, outputs)
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        match self.build(model, inputs)? {
            Some(op) => model.wire_node(prefix, op, &inputs[..1]),
            None => self.fallback.wire(prefix, model, inputs),
        }
    }
}

impl ExactQuantize {
    fn build(&self, model: &TypedModel, inputs: &[OutletId]) -> TractResult<Option<QuantizeDiv>> {
        if !self.plain {
            return Ok(None);
        }
        exact(
            model,
            inputs[0],
            inputs[1],
            inputs.get(2).copied(),
            None,
            Some(self.axis),
        )
    }
}

/// [`QuantizeDiv`] for quantising `x` by `scale` and `zero_point` when it applies: `x` is
/// f32, the parameters are constants, f32 scales, a u8/i8 output (`dt`, else the zero
/// point's type, else u8). `axis`: ONNX's per-axis quantisation (one scale per index along
/// it); `None` accepts one scale only. Otherwise `None`, and the caller wires its own.
pub(super) fn exact(
    model: &TypedModel,
    x: OutletId,
    scale: OutletId,
    zero_point: Option<OutletId>,
    dt: Option<DatumType>,
    axis: Option<i64>,
) -> TractResult<Option<QuantizeDiv>> {
    let x = model.outlet_fact(x)?;
    let Some(scale) = model.outlet_fact(scale)?.konst.clone() else {
        return Ok(None);
    };
    let zp = match zero_point {
        Some(z) => match model.outlet_fact(z)?.konst.clone() {
            Some(z) => Some(z),
            None => return Ok(None),
        },
        None => None,
    };
    let dt = dt.unwrap_or_else(|| {
        zp.as_ref()
            .map_or(DatumType::U8, |z| z.datum_type().unquantized())
    });
    if x.datum_type != f32::datum_type()
        || scale.datum_type() != f32::datum_type()
        || !matches!(dt.unquantized(), DatumType::U8 | DatumType::I8)
    {
        return Ok(None);
    }
    let axis = match (scale.len(), scale.rank(), axis) {
        (1, _, _) => 0,
        (_, 1, Some(axis)) => {
            let rank = x.rank() as i64;
            let axis = if axis < 0 { axis + rank } else { axis };
            let channels = usize::try_from(axis)
                .ok()
                .and_then(|a| x.shape.get(a))
                .and_then(|d| d.to_usize().ok());
            if channels != Some(scale.len()) {
                return Ok(None);
            }
            axis as usize
        }
        _ => return Ok(None),
    };
    QuantizeDiv::new(&scale, zp.as_deref(), dt, axis).map(Some)
}

/// `saturate(round_half_to_even(x / scale[c]) + zero_point[c])` for f32 `x`, `c` the index
/// along `axis` (a single scale: per tensor). Output `dt`, u8 or i8.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct QuantizeDiv {
    scales: Vec<f32>,
    zero_points: Vec<f32>,
    axis: usize,
    dt: DatumType,
}

impl Eq for QuantizeDiv {}

impl QuantizeDiv {
    pub(super) fn new(
        scale: &Tensor,
        zero_point: Option<&Tensor>,
        dt: DatumType,
        axis: usize,
    ) -> TractResult<QuantizeDiv> {
        q_range(dt)?;
        let scales: Vec<f32> = scale
            .cast_to::<f32>()?
            .try_as_plain_ram()?
            .as_slice::<f32>()?
            .to_vec();
        let zero_points: Vec<f32> = match zero_point {
            Some(z) => z
                .cast_to::<f32>()?
                .try_as_plain_ram()?
                .as_slice::<f32>()?
                .to_vec(),
            None => vec![0.0; scales.len()],
        };
        ensure!(
            !scales.is_empty() && zero_points.len() == scales.len(),
            "QuantizeLinear: {} scales and {} zero points",
            scales.len(),
            zero_points.len()
        );
        Ok(QuantizeDiv {
            scales,
            zero_points,
            axis,
            dt: dt.unquantized(),
        })
    }

    /// `cast` is a closure type, not a `fn` pointer: inlined, so the loop vectorises.
    fn quantize<T: Datum, C: Fn(f32) -> T>(&self, x: &[f32], shape: &[usize], cast: C) -> Vec<T> {
        let (lo, hi) = match self.dt {
            DatumType::I8 => (i8::MIN as f32, i8::MAX as f32),
            _ => (u8::MIN as f32, u8::MAX as f32),
        };
        // Saturate first (the bounds are integers, so this commutes with rounding), then
        // round half to even by adding and removing 1.5 * 2^23: exact for |y| < 2^22 and
        // free of a libm call, so the loop vectorises on baseline x86-64.
        const ROUND: f32 = 12_582_912.0;
        let q =
            |v: f32, s: f32, zp: f32| cast((v / s).clamp(lo - zp, hi - zp) + ROUND - ROUND + zp);
        if self.scales.len() == 1 {
            let (s, zp) = (self.scales[0], self.zero_points[0]);
            return x.iter().map(|&v| q(v, s, zp)).collect();
        }
        // Per axis: runs of `inner` elements share a channel.
        let inner: usize = shape[self.axis + 1..].iter().product::<usize>().max(1);
        let c = self.scales.len();
        x.chunks(inner)
            .enumerate()
            .flat_map(|(i, run)| {
                let (s, zp) = (self.scales[i % c], self.zero_points[i % c]);
                run.iter().map(move |&v| q(v, s, zp))
            })
            .collect()
    }
}

impl Op for QuantizeDiv {
    fn name(&self) -> StaticName {
        "BeltboxQuantizeDiv".into()
    }

    op_as_typed_op!();
}

impl EvalOp for QuantizeDiv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let shape = x.shape().to_vec();
        let plain = x.try_as_plain_ram()?;
        let xs = plain.as_slice::<f32>()?;
        let y = match self.dt {
            // The vector becomes the tensor's storage (no copy).
            DatumType::I8 => {
                tract_ndarray::Array1::from_vec(self.quantize(xs, &shape, |v| v as i8))
                    .into_tensor()
                    .into_shape(&shape)?
            }
            _ => tract_ndarray::Array1::from_vec(self.quantize(xs, &shape, |v| v as u8))
                .into_tensor()
                .into_shape(&shape)?,
        };
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for QuantizeDiv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(self.dt.fact(inputs[0].shape.clone())))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes<T: Datum + Copy>(t: &Tensor) -> Vec<T> {
        t.to_plain_array_view::<T>()
            .map(|v| v.iter().copied().collect())
            .unwrap_or_default()
    }

    fn run(op: &QuantizeDiv, x: Tensor) -> Tensor {
        let out = op.eval(&EvalContext::out_of_plan(), tvec!(x.into_tvalue()));
        out.map(|mut o| o.remove(0).into_tensor())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn ties_of_the_division_round_to_even_as_ort_does() {
        let scale = 1.0f32 / 255.0;
        // x / scale is exactly 1.5 in f32 (rounds to 2); x * (1 / scale) is 1.4999999 (1).
        let x = f32::from_bits(1_002_488_001);
        assert_eq!(x / scale, 1.5);
        assert!(x * scale.recip() < 1.5);
        let op = QuantizeDiv::new(&tensor0(scale), Some(&tensor0(0u8)), DatumType::U8, 0)
            .unwrap_or_else(|e| panic!("{e}"));
        let y = run(&op, tensor1(&[x]));
        assert_eq!(bytes::<u8>(&y), vec![2u8]);
        // Every f32 in [0, 1] on a 1/4096 grid: the exact formula, evaluated here.
        let xs: Vec<f32> = (0..=4096).map(|i| i as f32 / 4096.0).collect();
        let y = run(&op, tensor1(&xs));
        let want: Vec<u8> = xs
            .iter()
            .map(|&v| (v / scale).round_ties_even().clamp(0.0, 255.0) as u8)
            .collect();
        assert_eq!(bytes::<u8>(&y), want);
    }

    #[test]
    fn per_axis_scales_and_saturation() {
        let scales = tensor1(&[0.5f32, 2.0]);
        let zps = tensor1(&[-3i8, 5]);
        let op = QuantizeDiv::new(&scales, Some(&zps), DatumType::I8, 1)
            .unwrap_or_else(|e| panic!("{e}"));
        // [1, 2, 3]: channel 0 divides by 0.5, channel 1 by 2.
        let x = Tensor::from_shape(&[1, 2, 3], &[0.25f32, 1000.0, -1000.0, 3.0, 5.0, -7.0])
            .unwrap_or_else(|e| panic!("{e}"));
        let y = run(&op, x);
        // 0.5 -> 0 (tie to even) - 3; saturates both ways; 1.5 -> 2 + 5; 2.5 -> 2 + 5; -3.5 -> -4 + 5.
        assert_eq!(bytes::<i8>(&y), vec![-3i8, 127, -128, 7, 7, 1]);
    }

    proptest::proptest! {
        /// The vectorisable rounding equals the plain formula on any finite input, scale
        /// and zero point, ties and saturation included.
        #[test]
        fn fast_rounding_is_the_plain_formula(
            xs in proptest::collection::vec(-1.0e6f32..1.0e6, 1..64),
            scale in 1.0e-4f32..10.0,
            zp in 0u8..=255,
            halves in proptest::collection::vec(-600i32..600, 0..16),
        ) {
            // Exact ties: k/2 * scale, divided back, is often exactly k/2.
            let mut xs = xs;
            xs.extend(halves.iter().map(|&k| k as f32 * 0.5 * scale));
            let op = QuantizeDiv::new(&tensor0(scale), Some(&tensor0(zp)), DatumType::U8, 0)
                .unwrap_or_else(|e| panic!("{e}"));
            let y = run(&op, tensor1(&xs));
            let want: Vec<u8> = xs
                .iter()
                .map(|&v| ((v / scale).round_ties_even() + zp as f32).clamp(0.0, 255.0) as u8)
                .collect();
            proptest::prop_assert_eq!(bytes::<u8>(&y), want);
        }
    }
}
