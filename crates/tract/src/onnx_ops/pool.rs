//! `QLinearGlobalAveragePool` and `QLinearAveragePool`.

use super::*;
use tract_core::ops::cnn::{PaddingSpec, PoolSpec, SumPool};
use tract_core::ops::nn::{DataFormat, Reduce, Reducer};

/// Inputs shared by both pooling ops: `(X, x_scale, x_zp?, y_scale, y_zp?)`.
const POOL_INPUTS: &[(&str, bool)] = &[
    ("X", true),
    ("x_scale", true),
    ("x_zero_point", false),
    ("y_scale", true),
    ("y_zero_point", false),
];

/// Reads `channels_last` (0 or 1, default 0) into a tract data format.
fn data_format(node: &NodeProto) -> TractResult<DataFormat> {
    match node.get_attr_opt::<i64>("channels_last")?.unwrap_or(0) {
        0 => Ok(DataFormat::NCHW),
        1 => Ok(DataFormat::NHWC),
        v => bail!(
            "{} node {:?}: channels_last must be 0 or 1, got {v}",
            node.op_type,
            node.name
        ),
    }
}

/// Builds `QLinearGlobalAveragePool` (attribute `channels_last`).
pub(super) fn qlinear_global_average_pool(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> BuilderResult {
    let slots = Slots::new(node, POOL_INPUTS)?;
    let op = QLinearGlobalAveragePool {
        format: data_format(node)?,
        arity: slots.actual,
        x_q: slots.qparams(1)?,
        y_q: slots.qparams(3)?,
    };
    Ok((expand(op), vec![]))
}

/// Mean over all spatial axes, keeping them as size 1.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct QLinearGlobalAveragePool {
    format: DataFormat,
    arity: usize,
    x_q: QParams,
    y_q: QParams,
}

impl QLinearGlobalAveragePool {
    /// Spatial axes of a rank `rank` input (everything but N and C).
    fn spatial_axes(&self, rank: usize) -> std::ops::Range<usize> {
        match self.format {
            DataFormat::NHWC => 1..rank.saturating_sub(1),
            _ => 2..rank,
        }
    }
}

impl Expansion for QLinearGlobalAveragePool {
    fn name(&self) -> StaticName {
        "QLinearGlobalAveragePool".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("data format: {:?}", self.format)])
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        unary_q_rules(s, inputs, outputs, self.arity, &self.x_q, &self.y_q)?;
        s.equals(&outputs[0].rank, &inputs[0].rank)?;
        s.given(&inputs[0].shape, move |s, shape| {
            ensure!(
                shape.len() >= 3,
                "QLinearGlobalAveragePool: input rank must be >= 3"
            );
            let mut out = shape.clone();
            for ax in self.spatial_axes(shape.len()) {
                out[ax] = 1.to_dim();
            }
            s.equals(&outputs[0].shape, out)
        })
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        if let Some(op) = FusedQGap::build(self, model, inputs)? {
            return model.wire_node(prefix, op, &inputs[..1]);
        }
        let x_q = self.x_q.per_tensor(model, inputs, prefix, "x")?;
        let y_q = self.y_q.per_tensor(model, inputs, prefix, "y")?;
        let dt = output_type(model, inputs, self.y_q.zero_point, inputs[0])?;
        let shape = model.outlet_fact(inputs[0])?.shape.to_tvec();
        ensure!(
            shape.len() >= 3,
            "QLinearGlobalAveragePool: input rank must be >= 3"
        );
        let axes: TVec<usize> = self.spatial_axes(shape.len()).collect();
        let count = axes
            .iter()
            .map(|&ax| Ok(shape[ax].to_usize()?))
            .product::<TractResult<usize>>()
            .context("QLinearGlobalAveragePool: spatial dimensions must be known")?;
        // Like MLAS: sum the zero-point-free integers (exact in f32 for any realistic image),
        // then apply the single multiplier x_scale / (y_scale * count) before rounding.
        let x = wire_sub_zero_point(model, &format!("{prefix}.x"), inputs[0], x_q.zero_point)?;
        let sum = model.wire_node(
            format!("{prefix}.sum"),
            Reduce::new(axes, Reducer::Sum),
            &[x],
        )?[0];
        let count = model.add_const(format!("{prefix}.count"), tensor0(count as f32))?;
        let denom = wire_with_rank_broadcast(
            format!("{prefix}.y_scale_times_count"),
            model,
            mul(),
            &[y_q.scale, count],
        )?[0];
        let factor = wire_with_rank_broadcast(
            format!("{prefix}.multiplier"),
            model,
            div(),
            &[x_q.scale, denom],
        )?[0];
        let y =
            wire_with_rank_broadcast(format!("{prefix}.rescale"), model, mul(), &[sum, factor])?[0];
        // MLAS requantisation rounds, then adds the zero point.
        let rounding = Rounding::ThenAddZeroPoint;
        Ok(tvec!(wire_round_and_saturate(
            model,
            prefix,
            y,
            y_q.zero_point,
            dt,
            rounding
        )?))
    }
}

/// NCHW QLinearGlobalAveragePool with constant parameters as one integer op: per channel,
/// the exact `i32` sum of `x - x_zp`, times `x_scale / (y_scale * count)`, rounded half to
/// even, plus `y_zp` — the wired path's steps, in one pass with no float tensors.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FusedQGap {
    x_zp: i32,
    /// f32 bits of the multiplier.
    multiplier: u32,
    y_zp: i32,
    dt: DatumType,
}

impl FusedQGap {
    fn build(
        op: &QLinearGlobalAveragePool,
        model: &TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<Option<FusedQGap>> {
        let x = model.outlet_fact(inputs[0])?;
        let dt = x.datum_type.unquantized();
        if op.format != DataFormat::NCHW
            || x.rank() < 3
            || !matches!(dt, DatumType::U8 | DatumType::I8)
        {
            return Ok(None);
        }
        let Some(count) = x
            .shape
            .iter()
            .skip(2)
            .map(|d| d.to_usize().ok())
            .product::<Option<usize>>()
        else {
            return Ok(None);
        };
        let konst = |ix: Option<usize>| const_input(model, inputs, ix);
        let (Some(xs), Some(xz), Some(ys), Some(yz)) = (
            konst(Some(op.x_q.scale))?,
            konst(op.x_q.zero_point)?,
            konst(Some(op.y_q.scale))?,
            konst(op.y_q.zero_point)?,
        ) else {
            return Ok(None);
        };
        if [&xs, &xz, &ys, &yz].iter().any(|t| t.len() != 1) {
            return Ok(None);
        }
        let out = output_type(model, inputs, op.y_q.zero_point, inputs[0])?.unquantized();
        if out != dt || count == 0 {
            return Ok(None);
        }
        let denom = ys.cast_to_scalar::<f32>()? * count as f32;
        Ok(Some(FusedQGap {
            x_zp: xz.cast_to_scalar::<i32>()?,
            multiplier: (xs.cast_to_scalar::<f32>()? / denom).to_bits(),
            y_zp: yz.cast_to_scalar::<i32>()?,
            dt,
        }))
    }
}

impl Op for FusedQGap {
    fn name(&self) -> StaticName {
        "BeltboxQGlobalAveragePool".into()
    }

    op_as_typed_op!();
}

impl EvalOp for FusedQGap {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let shape = x.shape();
        ensure!(
            shape.len() >= 3,
            "BeltboxQGlobalAveragePool: rank {} input",
            shape.len()
        );
        let planes = shape[0] * shape[1];
        let count: usize = shape[2..].iter().product();
        let mut out_shape: TVec<usize> = shape.into();
        out_shape[2..].iter_mut().for_each(|d| *d = 1);
        let mut y = Tensor::zero_dt(self.dt, &out_shape)?;
        let signed = self.dt == DatumType::I8;
        let (lo, hi) = q_range(self.dt)?;
        let range = beltbox_kernels::requant::OutRange::new(lo as i32, hi as i32, self.y_zp);
        let m = f32::from_bits(self.multiplier);
        let xb = x.as_bytes();
        for (p, o) in y.as_bytes_mut().iter_mut().enumerate().take(planes) {
            let plane = &xb[p * count..][..count];
            let sum: i32 = if signed {
                plane.iter().map(|&v| v as i8 as i32).sum()
            } else {
                plane.iter().map(|&v| v as i32).sum()
            };
            *o = range.apply(sum - self.x_zp * count as i32, m) as u8;
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for FusedQGap {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape = inputs[0].shape.to_tvec();
        shape[2..].iter_mut().for_each(|d| *d = 1.to_dim());
        Ok(tvec!(self.dt.fact(shape)))
    }

    as_op!();
}

/// Builds `QLinearAveragePool`: ONNX AveragePool attributes (`kernel_shape`, `strides`, `pads`,
/// `auto_pad`, `ceil_mode`, `count_include_pad`) plus `channels_last`.
pub(super) fn qlinear_average_pool(_ctx: &ParsingContext, node: &NodeProto) -> BuilderResult {
    let slots = Slots::new(node, POOL_INPUTS)?;
    let kernel_shape: TVec<usize> = node.get_attr_tvec("kernel_shape")?;
    let rank = kernel_shape.len();
    ensure!(
        rank > 0,
        "QLinearAveragePool node {:?}: kernel_shape is empty",
        node.name
    );
    let strides: Option<TVec<usize>> = node.get_attr_opt_tvec("strides")?;
    if let Some(strides) = &strides {
        ensure!(
            strides.len() == rank,
            "QLinearAveragePool node {:?}: strides {strides:?} do not match kernel_shape {kernel_shape:?}",
            node.name
        );
    }
    if let Some(dilations) = node.get_attr_opt_tvec::<usize>("dilations")? {
        // Not part of ORT's QLinearAveragePool schema; refuse rather than silently ignore.
        ensure!(
            dilations.iter().all(|&d| d == 1),
            "QLinearAveragePool node {:?}: dilations {dilations:?} are not supported",
            node.name
        );
    }
    let ceil_mode = node.get_attr_opt::<i64>("ceil_mode")?.unwrap_or(0) != 0;
    let padding = match node.get_attr_opt::<&str>("auto_pad")?.unwrap_or("NOTSET") {
        "NOTSET" => {
            let pads: TVec<usize> = node
                .get_attr_opt_tvec("pads")?
                .unwrap_or_else(|| tvec!(0; 2 * rank));
            ensure!(
                pads.len() == 2 * rank,
                "QLinearAveragePool node {:?}: pads {pads:?} do not match kernel_shape {kernel_shape:?}",
                node.name
            );
            // ONNX pads are [x1_begin, x2_begin, ..., x1_end, x2_end, ...].
            PaddingSpec::ExplicitOnnxPool(pads[..rank].into(), pads[rank..].into(), ceil_mode)
        }
        "VALID" => PaddingSpec::Valid,
        "SAME_UPPER" => PaddingSpec::SameUpper,
        "SAME_LOWER" => PaddingSpec::SameLower,
        other => bail!(
            "QLinearAveragePool node {:?}: unknown auto_pad {other:?}",
            node.name
        ),
    };
    let count_include_pad = node.get_attr_opt::<i64>("count_include_pad")?.unwrap_or(0) != 0;
    let pool_spec = PoolSpec {
        data_format: data_format(node)?,
        kernel_shape,
        padding,
        dilations: None,
        strides,
        // Filled in from the input shape when wiring, as tract's own AveragePool does.
        input_channels: 0,
        output_channels: 0,
    };
    let op = QLinearAveragePool {
        pool_spec,
        count_include_pad,
        arity: slots.actual,
        x_q: slots.qparams(1)?,
        y_q: slots.qparams(3)?,
    };
    Ok((expand(op), vec![]))
}

/// Windowed average: dequantise, tract's `SumPool`, requantise (as ORT, which pools a
/// dequantised float copy of X).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct QLinearAveragePool {
    pool_spec: PoolSpec,
    count_include_pad: bool,
    arity: usize,
    x_q: QParams,
    y_q: QParams,
}

impl Expansion for QLinearAveragePool {
    fn name(&self) -> StaticName {
        "QLinearAveragePool".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let mut info = self.pool_spec.info();
        info.push(format!("count_include_pad: {}", self.count_include_pad));
        Ok(info)
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        unary_q_rules(s, inputs, outputs, self.arity, &self.x_q, &self.y_q)?;
        s.equals(&outputs[0].rank, &inputs[0].rank)?;
        s.given(&inputs[0].shape, move |s, shape| {
            let spec = &self.pool_spec;
            ensure!(
                shape.len() == spec.kernel_shape.len() + 2,
                "QLinearAveragePool: input rank {} does not match a {}-D kernel",
                shape.len(),
                spec.kernel_shape.len()
            );
            let ishape = spec.data_format.shape(&shape)?;
            let computed = spec.padding.compute(
                ishape.hw_dims(),
                &spec.kernel_shape,
                &spec.dilations(),
                &spec.strides(),
            );
            let mut out = shape.clone();
            for (ix, d) in computed.into_iter().enumerate() {
                out[ix + ishape.h_axis()] = d.convoluted;
            }
            s.equals(&outputs[0].shape, out)
        })
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
        let fact = model.outlet_fact(inputs[0])?.clone();
        ensure!(
            fact.rank() == self.pool_spec.kernel_shape.len() + 2,
            "QLinearAveragePool: input rank {} does not match a {}-D kernel",
            fact.rank(),
            self.pool_spec.kernel_shape.len()
        );
        let channels = self
            .pool_spec
            .data_format
            .shape(&fact.shape)?
            .c()
            .to_usize()
            .context("QLinearAveragePool: channel count must be known")?;
        let pool_spec = PoolSpec {
            input_channels: channels,
            output_channels: channels,
            ..self.pool_spec.clone()
        };
        let x = wire_dequantize(model, &format!("{prefix}.x"), inputs[0], x_q)?;
        let kernel_size = pool_spec.kernel_shape.iter().product::<usize>() as f32;
        // With count_include_pad, ORT divides every window by the full kernel size, even a
        // ceil_mode window hanging past the padding, where ONNX's reference (and tract's
        // normalising SumPool) count only the padded extent. So sum, then divide ourselves.
        let pool = SumPool {
            pool_spec,
            count_include_pad: self.count_include_pad,
            normalize: !self.count_include_pad,
        };
        let mut y = model.wire_node(format!("{prefix}.pool"), pool, &[x])?[0];
        if self.count_include_pad {
            let size = model.add_const(format!("{prefix}.kernel_size"), tensor0(kernel_size))?;
            let name = format!("{prefix}.average");
            y = wire_with_rank_broadcast(name, model, div(), &[y, size])?[0];
        }
        // ORT quantises the pooled floats with MlasQuantizeLinear (round first).
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
