//! Nearest-neighbour upsampling of 8-bit tensors by copying rows.
//!
//! tract lowers a nearest `Resize` with integer scales to `NearestUpsample`, whose fast path is
//! f32 only: on 8-bit codes (what [`crate::qdq`] leaves once `DQ -> Resize -> Q` runs on the
//! integers, and what QOperator models feed Resize) it computes a source index per element,
//! which cost 22 ms of a 237 ms frame on the layout detector. [`replace_byte_upsamples`] swaps
//! those nodes, after tract's optimisation, for [`ByteUpsample`]: each element repeated along
//! the last axis, then each finished block repeated along every other axis. Same values; only
//! the copying changes. (Upstream, `NearestUpsample` could take this path for every type.)

use tract_core::internal::*;
use tract_core::ops::nn::NearestUpsample;

/// Replaces every `NearestUpsample` of a one-byte type in `model` by [`ByteUpsample`];
/// returns how many it replaced.
pub fn replace_byte_upsamples(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(up) = node.op_as::<NearestUpsample>() else {
            continue;
        };
        let Some(&input) = node.inputs.first() else {
            continue;
        };
        if model.outlet_fact(input)?.datum_type.size_of() != 1 {
            continue;
        }
        let op = ByteUpsample {
            scales: up.scales.clone(),
        };
        TypedModelPatch::replace_single_op(model, node, &[input], op)?.apply(model)?;
        replaced += 1;
    }
    if replaced > 0 {
        model.compact()?;
    }
    Ok(replaced)
}

/// `out[.., i, ..] = in[.., i / scales[a], ..]` on every axis `a`, for one-byte elements.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ByteUpsample {
    /// One integer scale per input axis.
    pub scales: TVec<usize>,
}

impl Op for ByteUpsample {
    fn name(&self) -> StaticName {
        "BeltboxByteUpsample".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("scales: {:?}", self.scales)])
    }

    op_as_typed_op!();
}

impl EvalOp for ByteUpsample {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        ensure!(
            input.rank() == self.scales.len() && input.datum_type().size_of() == 1,
            "BeltboxByteUpsample: a rank-{} one-byte tensor expected, got {:?} {:?}",
            self.scales.len(),
            input.datum_type(),
            input.shape()
        );
        let shape: TVec<usize> = input
            .shape()
            .iter()
            .zip(&self.scales)
            .map(|(d, s)| d * s)
            .collect();
        let mut out = Vec::with_capacity(shape.iter().product());
        expand(input.as_bytes(), input.shape(), &self.scales, &mut out);
        let mut t = Tensor::zero_dt(input.datum_type(), &shape)?;
        t.as_bytes_mut().copy_from_slice(&out);
        Ok(tvec!(t.into_tvalue()))
    }
}

/// Appends the upsampled `src` (shape `shape`) to `out`, axis by axis from the outermost.
fn expand(src: &[u8], shape: &[usize], scales: &[usize], out: &mut Vec<u8>) {
    match (shape, scales) {
        ([], _) | (_, []) => out.extend_from_slice(src),
        ([_], [s]) => {
            if *s == 1 {
                out.extend_from_slice(src);
            } else {
                out.extend(src.iter().flat_map(|&b| std::iter::repeat_n(b, *s)));
            }
        }
        ([len, inner @ ..], [s, inner_scales @ ..]) => {
            let block = src.len() / (*len).max(1);
            for i in 0..*len {
                let start = out.len();
                expand(&src[i * block..(i + 1) * block], inner, inner_scales, out);
                let end = out.len();
                for _ in 1..*s {
                    out.extend_from_within(start..end);
                }
            }
        }
    }
}

impl TypedOp for ByteUpsample {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape: TVec<TDim> = inputs[0]
            .shape
            .iter()
            .zip(&self.scales)
            .map(|(d, s)| d.clone() * *s)
            .collect();
        Ok(tvec!(inputs[0].datum_type.fact(shape)))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte path against tract's own `NearestUpsample` on the same codes.
    #[test]
    fn matches_tract_nearest_upsample() -> TractResult<()> {
        for (shape, scales) in [
            (vec![1usize, 3, 4, 5], vec![1usize, 1, 2, 2]),
            (vec![2, 2, 3], vec![3, 1, 2]),
            (vec![5], vec![4]),
            (vec![1, 2, 3, 1], vec![1, 2, 1, 3]),
        ] {
            let n: usize = shape.iter().product();
            let codes: Vec<u8> = (0..n).map(|i| (i * 37 % 256) as u8).collect();
            let x = tract_ndarray::ArrayD::from_shape_vec(shape.clone(), codes)?.into_tensor();
            let ours = ByteUpsample {
                scales: scales.iter().copied().collect(),
            }
            .eval(&EvalContext::out_of_plan(), tvec!(x.clone().into_tvalue()))?;
            let tract = NearestUpsample {
                scales: scales.iter().copied().collect(),
            }
            .eval(&EvalContext::out_of_plan(), tvec!(x.into_tvalue()))?;
            assert_eq!(ours[0], tract[0], "{shape:?} x {scales:?}");
        }
        Ok(())
    }
}
