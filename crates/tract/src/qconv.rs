//! `QLinearConv` executed by beltbox's integer kernels (`beltbox_kernels`).
//!
//! [`register`] replaces tract's `QLinearConv` builder with one that keeps tract's op for
//! shape inference and as the fallback, and at typing time wires [`QConv`] instead whenever
//! the convolution is one the kernels cover: 1-D or 2-D, weights, bias and every
//! quantisation parameter constant, 8-bit tensors, explicit or `SAME`/`VALID` padding. QDQ
//! models reach this path too: `model::qdq` rewrites their `DequantizeLinear -> Conv ->
//! QuantizeLinear` groups into `QLinearConv` before tract sees the graph.
//!
//! What the op does per image:
//! * depthwise (`group == C_in == C_out`): [`kernels::depthwise`], direct, no im2col;
//! * pointwise (1x1, stride 1, no padding): the NCHW input already is the `K x N` matrix, so
//!   it goes straight to [`kernels::gemm`];
//! * anything else: im2col per group, then [`kernels::gemm`].
//!
//! Weights are packed, zero points folded into per-channel offsets and the requantisation
//! multipliers computed once, when the model is loaded. The arithmetic is ONNX Runtime's
//! (`x_scale * w_scale / y_scale` in f32, exact `i32` sums, round half to even), so outputs
//! match ORT's bytes.

use std::sync::{Arc, OnceLock};

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use beltbox_kernels::depthwise::{self, Geometry};
use beltbox_kernels::gemm::{self, Epilogue, PackedA};
use beltbox_kernels::requant::OutRange;
use beltbox_kernels::Isa;

use crate::replace::{self, OpBuilder};

/// tract's own `QLinearConv` builder, kept for shape inference and for the cases the kernels
/// do not cover.
static TRACT_QLINEARCONV: OnceLock<OpBuilder> = OnceLock::new();

/// Replaces the `QLinearConv` builder of `onnx` with beltbox's (see the module docs).
pub fn register(onnx: &mut tract_onnx::Onnx) {
    replace::replace(onnx, "QLinearConv", qlinear_conv, &TRACT_QLINEARCONV);
}

fn qlinear_conv(
    ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let (fallback, extra) = match replace::tract_expansion(&TRACT_QLINEARCONV, ctx, node)? {
        (Ok(fallback), extra) => (fallback, extra),
        (Err(op), extra) => return Ok((op, extra)),
    };
    let attrs = Attrs::parse(node)?;
    Ok((
        expand(IntegerConv {
            fallback,
            attrs,
            has_bias: node.input.len() >= 9 && !node.input[8].is_empty(),
        }),
        extra,
    ))
}

/// The attributes of a QLinearConv node that [`QConv`] needs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Attrs {
    group: usize,
    strides: Vec<usize>,
    dilations: Vec<usize>,
    /// Explicit pads (begin..., end...), or an `auto_pad` mode.
    pads: Padding,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Padding {
    Explicit(Vec<usize>),
    SameUpper,
    SameLower,
    Valid,
}

impl Attrs {
    fn parse(node: &NodeProto) -> TractResult<Attrs> {
        let ints = |name: &str| -> TractResult<Option<Vec<usize>>> {
            Ok(node
                .get_attr_opt_vec::<i64>(name)?
                .map(|v| v.iter().map(|&x| x.max(0) as usize).collect()))
        };
        let pads = match node.get_attr_opt::<&str>("auto_pad")?.unwrap_or("NOTSET") {
            "SAME_UPPER" => Padding::SameUpper,
            "SAME_LOWER" => Padding::SameLower,
            "VALID" => Padding::Valid,
            _ => Padding::Explicit(ints("pads")?.unwrap_or_default()),
        };
        Ok(Attrs {
            group: node.get_attr_opt::<i64>("group")?.unwrap_or(1).max(1) as usize,
            strides: ints("strides")?.unwrap_or_default(),
            dilations: ints("dilations")?.unwrap_or_default(),
            pads,
        })
    }

    /// Pads (top, left, bottom, right) for a 2-D input of `h x w` with kernel `kh x kw`.
    fn pads_2d(
        &self,
        spatial: usize,
        hw: (usize, usize),
        k: (usize, usize),
        s: (usize, usize),
        d: (usize, usize),
    ) -> TractResult<[usize; 4]> {
        let same = |n: usize, k: usize, s: usize, d: usize, upper: bool| {
            let out = n.div_ceil(s);
            let need = ((out - 1) * s + d * (k - 1) + 1).saturating_sub(n);
            if upper {
                (need / 2, need - need / 2)
            } else {
                (need - need / 2, need / 2)
            }
        };
        Ok(match &self.pads {
            Padding::Valid => [0; 4],
            Padding::SameUpper | Padding::SameLower => {
                let upper = self.pads == Padding::SameUpper;
                let (t, b) = if spatial == 2 {
                    same(hw.0, k.0, s.0, d.0, upper)
                } else {
                    (0, 0)
                };
                let (l, r) = same(hw.1, k.1, s.1, d.1, upper);
                [t, l, b, r]
            }
            Padding::Explicit(p) if p.is_empty() => [0; 4],
            Padding::Explicit(p) if spatial == 2 && p.len() == 4 => [p[0], p[1], p[2], p[3]],
            Padding::Explicit(p) if spatial == 1 && p.len() == 2 => [0, p[0], 0, p[1]],
            Padding::Explicit(p) => {
                bail!("QLinearConv: {} pads for {spatial} spatial axes", p.len())
            }
        })
    }
}

/// Inference-time op: tract's rules, our typed op when it applies. tract's conv expansion
/// wires through `Expansion::wire` only, so that is the one method to override.
#[derive(Debug, Clone)]
struct IntegerConv {
    fallback: Box<dyn Expansion>,
    attrs: Attrs,
    has_bias: bool,
}

impl Expansion for IntegerConv {
    fn name(&self) -> StaticName {
        "QLinearConv".into()
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
            Ok(op) => model.wire_node(prefix, op, &inputs[..1]),
            Err(why) => {
                log::debug!("QLinearConv {prefix}: tract's implementation ({why})");
                self.fallback.wire(prefix, model, inputs)
            }
        }
    }
}

impl IntegerConv {
    /// Our op for this node, or why not (something not constant or not covered).
    fn build(&self, model: &TypedModel, inputs: &[OutletId]) -> TractResult<Result<QConv, String>> {
        let fact = |i: usize| model.outlet_fact(inputs[i]);
        let konst = |i: usize| -> TractResult<Option<Arc<Tensor>>> { Ok(fact(i)?.konst.clone()) };
        let x = fact(0)?.clone();
        let x_dt = x.datum_type.unquantized();
        if !matches!(x_dt, DatumType::U8 | DatumType::I8) || !(3..=4).contains(&x.rank()) {
            return Ok(Err(format!(
                "input is {:?} of rank {}",
                x.datum_type,
                x.rank()
            )));
        }
        let spatial = x.rank() - 2;
        // Channels must be known; batch, height and width may be symbols (a dynamic model:
        // the geometry is then worked out per request from the input's shape).
        let Ok(c_in) = x.shape[1].to_usize() else {
            return Ok(Err(format!("input channels {} are not known", x.shape[1])));
        };
        let (h_dim, w_dim) = if spatial == 2 {
            (x.shape[2].clone(), x.shape[3].clone())
        } else {
            (1.to_dim(), x.shape[2].clone())
        };
        let mut params = Vec::new();
        for i in 1..8 {
            match konst(i)? {
                Some(t) => params.push(t),
                None => return Ok(Err(format!("input #{i} is not a constant"))),
            }
        }
        let bias = if self.has_bias {
            match inputs.get(8).map(|_| konst(8)).transpose()?.flatten() {
                Some(b) => Some(b),
                None => return Ok(Err("the bias is not a constant".into())),
            }
        } else {
            None
        };
        let (x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp) = (
            &params[0], &params[1], &params[2], &params[3], &params[4], &params[5], &params[6],
        );
        let w_dt = w.datum_type().unquantized();
        let y_dt = y_zp.datum_type().unquantized();
        if !matches!(w_dt, DatumType::U8 | DatumType::I8)
            || !matches!(y_dt, DatumType::U8 | DatumType::I8)
            || w.rank() != x.rank()
        {
            return Ok(Err(format!(
                "weights {w_dt:?} of rank {}, output {y_dt:?}",
                w.rank()
            )));
        }
        let ws = w.shape();
        let (m, cg) = (ws[0], ws[1]);
        let (kh, kw) = if spatial == 2 {
            (ws[2], ws[3])
        } else {
            (1, ws[2])
        };
        let group = self.attrs.group;
        if cg * group != c_in || m % group != 0 || kh == 0 || kw == 0 {
            return Ok(Err(format!(
                "weights {ws:?} do not fit {c_in} input channels in {group} groups"
            )));
        }
        let pick = |v: &[usize], i: usize| -> usize {
            // 1-D convolutions use the last entry for the width and 1 for the height.
            if spatial == 2 {
                v.get(i).copied().unwrap_or(1)
            } else if i == 0 {
                1
            } else {
                v.first().copied().unwrap_or(1)
            }
        };
        let stride = (
            pick(&self.attrs.strides, 0).max(1),
            pick(&self.attrs.strides, 1).max(1),
        );
        let dilation = (
            pick(&self.attrs.dilations, 0).max(1),
            pick(&self.attrs.dilations, 1).max(1),
        );
        let window = Window {
            spatial,
            kh,
            kw,
            stride,
            dilation,
            attrs: self.attrs.clone(),
        };
        // The geometry at the build-time size (1 x 1 stands in for a symbol): it tells
        // whether the convolution is pointwise, which no input size changes.
        let probe =
            window.geometry(h_dim.to_usize().unwrap_or(1), w_dim.to_usize().unwrap_or(1))?;
        let scalar_f32 = |t: &Tensor| -> TractResult<f32> {
            ensure!(t.len() == 1, "per-tensor quantisation parameter expected");
            t.cast_to_scalar::<f32>()
        };
        let scalar_i32 = |t: &Tensor| -> TractResult<i32> {
            ensure!(t.len() == 1, "per-tensor quantisation parameter expected");
            t.cast_to_scalar::<i32>()
        };
        let per_channel = |t: &Tensor, what: &str| -> TractResult<Vec<f32>> {
            let v: Vec<f32> = t
                .cast_to::<f32>()?
                .to_plain_array_view::<f32>()?
                .iter()
                .copied()
                .collect();
            match v.len() {
                1 => Ok(vec![v[0]; m]),
                n if n == m => Ok(v),
                n => bail!("QLinearConv: {what} has {n} values for {m} output channels"),
            }
        };
        let (xs, ys) = (scalar_f32(x_scale)?, scalar_f32(y_scale)?);
        let x_zp = scalar_i32(x_zp)?;
        let y_zp = scalar_i32(y_zp)?;
        let w_scales = per_channel(w_scale, "w_scale")?;
        let w_zps: Vec<i32> = per_channel(w_zp, "w_zero_point")?
            .iter()
            .map(|&v| v as i32)
            .collect();
        let bias: Vec<i32> = match &bias {
            Some(b) => {
                let b: Vec<i32> = b
                    .cast_to::<i32>()?
                    .to_plain_array_view::<i32>()?
                    .iter()
                    .copied()
                    .collect();
                ensure!(
                    b.len() == m,
                    "QLinearConv: bias has {} values for {m} output channels",
                    b.len()
                );
                b
            }
            None => vec![0; m],
        };
        // ORT: output_scale[i] = x_scale * w_scale[i] / y_scale, in f32, in that order.
        let scale: Vec<f32> = w_scales.iter().map(|&s| xs * s / ys).collect();
        let range = if y_dt == DatumType::U8 {
            OutRange::new(0, 255, y_zp)
        } else {
            OutRange::new(-128, 127, y_zp)
        };

        let w_signed = w_dt == DatumType::I8;
        let w_bytes = w.as_bytes();
        let w_val = |i: usize| -> i32 {
            if w_signed {
                w_bytes[i] as i8 as i32
            } else {
                w_bytes[i] as i32
            }
        };
        let taps_per_filter = cg * kh * kw;
        let x_signed = x_dt == DatumType::I8;

        // One ISA for the weights' form and the kernels that read them.
        let isa = Isa::detect();
        let kind = if group == c_in && m == c_in && cg == 1 {
            let taps = (0..m)
                .map(|c| {
                    (0..kh * kw)
                        .map(|t| (w_val(c * kh * kw + t) - w_zps[c]) as i16)
                        .collect()
                })
                .collect();
            Kind::Depthwise { taps }
        } else {
            // The kernels take u8 activations and i8 weights: i8 activations are stored as
            // x + 128 (zero point + 128), u8 weights as w - 128 (zero point - 128).
            let x_zp_k = if x_signed { x_zp + 128 } else { x_zp };
            let w_shift = if w_signed { 0 } else { 128 };
            let mg = m / group;
            let mut packed = Vec::with_capacity(group);
            let mut offset = vec![0i32; m];
            let mut w_zp_k = vec![0i32; m];
            for g in 0..group {
                let a = PackedA::new(isa, mg, taps_per_filter, |r, c| {
                    (w_val((g * mg + r) * taps_per_filter + c) - w_shift) as i8
                });
                for r in 0..mg {
                    let oc = g * mg + r;
                    w_zp_k[oc] = w_zps[oc] - w_shift;
                    offset[oc] = bias[oc] - x_zp_k * a.row_sum(r)
                        + taps_per_filter as i32 * x_zp_k * w_zp_k[oc];
                }
                packed.push(a);
            }
            let any_w_zp = w_zp_k.iter().any(|&z| z != 0);
            let pointwise = kh == 1 && kw == 1 && stride == (1, 1) && probe.pads == [0; 4];
            Kind::Gemm {
                packed,
                offset,
                w_zp: w_zp_k,
                any_w_zp,
                pointwise,
            }
        };
        let (oh, ow) = window.output_dims(&h_dim, &w_dim)?;
        let mut out_shape: TVec<TDim> = x.shape.to_tvec();
        out_shape[1] = m.to_dim();
        if spatial == 2 {
            out_shape[2] = oh;
            out_shape[3] = ow;
        } else {
            out_shape[2] = ow;
        }
        Ok(Ok(QConv {
            p: Arc::new(Params {
                window,
                c_in,
                m,
                group,
                x_signed,
                x_zp,
                bias,
                scale,
                range,
                kind,
                y_dt,
                out_shape,
                isa,
            }),
        }))
    }
}

/// How the convolution is computed.
#[derive(Debug)]
enum Kind {
    /// One plane per channel, `taps[c]` = weights minus zero point.
    Depthwise { taps: Vec<Vec<i16>> },
    /// One packed weight matrix per group.
    Gemm {
        packed: Vec<PackedA>,
        /// Per output channel: bias and zero-point terms (kernel domain).
        offset: Vec<i32>,
        /// Per output channel weight zero point (kernel domain).
        w_zp: Vec<i32>,
        any_w_zp: bool,
        /// 1x1, stride 1, unpadded: the input is the matrix, no im2col.
        pointwise: bool,
    },
}

/// The kernel window: the geometry but for the input's height and width, which a model
/// with dynamic dimensions only knows per request.
#[derive(Debug)]
struct Window {
    spatial: usize,
    kh: usize,
    kw: usize,
    stride: (usize, usize),
    dilation: (usize, usize),
    attrs: Attrs,
}

impl Window {
    /// The geometry for an `h x w` input (pads depend on the size under `auto_pad`).
    fn geometry(&self, h: usize, w: usize) -> TractResult<Geometry> {
        let (k, s, d) = ((self.kh, self.kw), self.stride, self.dilation);
        Ok(Geometry {
            h,
            w,
            kh: self.kh,
            kw: self.kw,
            stride: s,
            dilation: d,
            pads: self.attrs.pads_2d(self.spatial, (h, w), k, s, d)?,
        })
    }

    /// Output height and width for input dimensions that may be symbols: ONNX's formulas
    /// (`ceil(n / s)` under `SAME_*`, `(n + pads - extent) / s + 1` otherwise), which
    /// agree with [`Geometry::output`] at every concrete size.
    fn output_dims(&self, h: &TDim, w: &TDim) -> TractResult<(TDim, TDim)> {
        if let (Ok(h), Ok(w)) = (h.to_usize(), w.to_usize()) {
            let (oh, ow) = self.geometry(h, w)?.output();
            return Ok((oh.to_dim(), ow.to_dim()));
        }
        // Explicit and VALID pads do not depend on the size; SAME's are not used here.
        let pads = self.attrs.pads_2d(
            self.spatial,
            (1, 1),
            (self.kh, self.kw),
            self.stride,
            self.dilation,
        )?;
        let same = matches!(self.attrs.pads, Padding::SameUpper | Padding::SameLower);
        let out = |n: &TDim, k: usize, s: usize, d: usize, pad: usize| -> TDim {
            if same {
                n.clone().div_ceil(s as u64)
            } else {
                let extent = (d * (k - 1) + 1) as i64;
                (n.clone() + pad as i64 - extent) / s as u64 + 1
            }
        };
        let oh = match self.spatial {
            2 => out(
                h,
                self.kh,
                self.stride.0,
                self.dilation.0,
                pads[0] + pads[2],
            ),
            _ => 1.to_dim(),
        };
        let ow = out(
            w,
            self.kw,
            self.stride.1,
            self.dilation.1,
            pads[1] + pads[3],
        );
        Ok((oh, ow))
    }
}

#[derive(Debug)]
struct Params {
    window: Window,
    c_in: usize,
    m: usize,
    group: usize,
    x_signed: bool,
    x_zp: i32,
    bias: Vec<i32>,
    scale: Vec<f32>,
    range: OutRange,
    kind: Kind,
    y_dt: DatumType,
    out_shape: TVec<TDim>,
    isa: Isa,
}

/// The typed op: one data input, everything else baked in at load.
#[derive(Debug, Clone)]
pub struct QConv {
    p: Arc<Params>,
}

impl PartialEq for QConv {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.p, &other.p)
    }
}
impl Eq for QConv {}

impl QConv {
    /// Scratch bytes one evaluation of an input of `shape` allocates (im2col, packed
    /// activations, planes).
    pub fn scratch_bytes(&self, shape: &[usize]) -> usize {
        let p = &self.p;
        let Ok(g) = self.geometry_for(shape) else {
            return 0;
        };
        let (oh, ow) = g.output();
        match &p.kind {
            Kind::Depthwise { .. } => depthwise::Scratch::bytes(&g),
            Kind::Gemm { pointwise, .. } => {
                let k = p.c_in / p.group * g.kh * g.kw;
                let im2col = if *pointwise { 0 } else { k * oh * ow };
                im2col + gemm::packed_b_len(k, oh * ow)
            }
        }
    }

    /// The geometry for an input of `shape` (N, C, [H,] W).
    fn geometry_for(&self, shape: &[usize]) -> TractResult<Geometry> {
        let p = &self.p;
        let (h, w) = match *shape {
            [_, c, h, w] if p.window.spatial == 2 && c == p.c_in => (h, w),
            [_, c, w] if p.window.spatial == 1 && c == p.c_in => (1, w),
            _ => bail!(
                "QConv: input shape {shape:?} does not match the model ({} channels, {} spatial axes)",
                p.c_in,
                p.window.spatial
            ),
        };
        p.window.geometry(h, w)
    }

    /// Bytes of the 8-bit weights the packing was made from: the parsed model holds them
    /// until the load finishes, so they are the load's transient, whatever the packed
    /// form costs.
    pub fn source_weight_bytes(&self) -> usize {
        match &self.p.kind {
            Kind::Depthwise { taps } => taps.iter().map(Vec::len).sum(),
            Kind::Gemm { packed, .. } => packed.iter().map(|a| a.rows() * a.depth()).sum(),
        }
    }

    /// Heap bytes of the packed weights (they replace the ONNX initializers).
    pub fn weight_bytes(&self) -> usize {
        match &self.p.kind {
            Kind::Depthwise { taps } => taps.iter().map(|t| t.len() * 2).sum(),
            Kind::Gemm { packed, .. } => packed.iter().map(PackedA::bytes).sum(),
        }
    }

    fn run(&self, x: &Tensor) -> TractResult<Tensor> {
        let p = &*self.p;
        let shape = x.shape();
        let geometry = self.geometry_for(shape)?;
        let g = &geometry;
        let (oh, ow) = g.output();
        let batch = shape[0];
        let plane = g.h * g.w;
        let out_plane = oh * ow;
        let in_len = p.c_in * plane;
        ensure!(
            x.len() == batch * in_len,
            "QConv: input shape {shape:?} does not match the model"
        );
        let mut out_shape: TVec<usize> = shape.into();
        out_shape[1] = p.m;
        if shape.len() == 4 {
            out_shape[2] = oh;
            out_shape[3] = ow;
        } else {
            out_shape[2] = ow;
        }
        let mut y = Tensor::zero_dt(p.y_dt, &out_shape)?;
        let xb = x.as_bytes();
        let yb = y.as_bytes_mut();
        match &p.kind {
            Kind::Depthwise { taps } => {
                let mut scratch = depthwise::Scratch::default();
                for n in 0..batch {
                    for c in 0..p.c_in {
                        let src = &xb[n * in_len + c * plane..][..plane];
                        let dst = &mut yb[(n * p.m + c) * out_plane..][..out_plane];
                        let ch = depthwise::Channel {
                            geometry: g,
                            x: src,
                            signed: p.x_signed,
                            x_zp: p.x_zp,
                            taps: &taps[c],
                            offset: p.bias[c],
                            scale: p.scale[c],
                            range: &p.range,
                        };
                        depthwise::channel(p.isa, &ch, &mut scratch, dst);
                    }
                }
            }
            Kind::Gemm {
                packed,
                offset,
                w_zp,
                any_w_zp,
                pointwise,
            } => {
                let cg = p.c_in / p.group;
                let mg = p.m / p.group;
                let k = cg * g.kh * g.kw;
                let mut cols = Vec::new();
                let mut b = Vec::new();
                for n in 0..batch {
                    for (gi, a) in packed.iter().enumerate() {
                        let src = &xb[n * in_len + gi * cg * plane..][..cg * plane];
                        let matrix: &[u8] = if *pointwise {
                            src
                        } else {
                            im2col(g, src, cg, p.x_zp as u8, &mut cols);
                            &cols
                        };
                        gemm::pack_b(matrix, k, out_plane, out_plane, p.x_signed, &mut b);
                        let sums = any_w_zp
                            .then(|| gemm::col_sums(matrix, k, out_plane, out_plane, p.x_signed));
                        let rows = gi * mg..(gi + 1) * mg;
                        let mut ep = Epilogue {
                            offset: &offset[rows.clone()],
                            scale: &p.scale[rows.clone()],
                            col_sums: sums.as_deref().map(|s| (s, &w_zp[rows.clone()])),
                            range: p.range,
                            out: &mut yb[(n * p.m + gi * mg) * out_plane..][..mg * out_plane],
                            ldo: out_plane,
                        };
                        gemm::gemm(p.isa, a, &b, out_plane, &mut ep);
                    }
                }
            }
        }
        Ok(y)
    }
}

/// `[cg * kh * kw][oh * ow]` patches of `src` (`cg` planes), `pad` where outside the input
/// (the zero point's byte, so padding contributes nothing).
fn im2col(g: &Geometry, src: &[u8], cg: usize, pad: u8, out: &mut Vec<u8>) {
    let (oh, ow) = g.output();
    out.clear();
    out.resize(cg * g.kh * g.kw * oh * ow, pad);
    let mut row = 0;
    for c in 0..cg {
        let plane = &src[c * g.h * g.w..][..g.h * g.w];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let dst = &mut out[row * oh * ow..][..oh * ow];
                for oy in 0..oh {
                    let iy = (oy * g.stride.0 + ky * g.dilation.0) as isize - g.pads[0] as isize;
                    if iy < 0 || iy as usize >= g.h {
                        continue;
                    }
                    let line = &plane[iy as usize * g.w..][..g.w];
                    // The columns whose tap lands inside the row, computed once instead of a
                    // branch per byte (this loop was ~40 % of a YOLOv8n INT8 frame): the
                    // first `ox` with `ox * s + shift >= 0`, the last with `< w`.
                    let (s, shift) = (
                        g.stride.1,
                        (kx * g.dilation.1) as isize - g.pads[1] as isize,
                    );
                    let before = if shift >= 0 { 0 } else { (-shift) as usize };
                    let first = before.div_ceil(s);
                    let last = g.w as isize - 1 - shift;
                    let end = if last < 0 {
                        0
                    } else {
                        (last as usize / s + 1).min(ow)
                    };
                    if first >= end {
                        continue;
                    }
                    let start = (first * s) as isize + shift;
                    let dst = &mut dst[oy * ow + first..oy * ow + end];
                    let from = &line[start as usize..];
                    if s == 1 {
                        dst.copy_from_slice(&from[..dst.len()]);
                    } else {
                        for (d, v) in dst.iter_mut().zip(from.iter().step_by(s)) {
                            *d = *v;
                        }
                    }
                }
                row += 1;
            }
        }
    }
}

impl Op for QConv {
    fn name(&self) -> StaticName {
        "BeltboxQConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let p = &self.p;
        let kind = match &p.kind {
            Kind::Depthwise { .. } => "depthwise",
            Kind::Gemm {
                pointwise: true, ..
            } => "pointwise gemm",
            Kind::Gemm { .. } => "im2col gemm",
        };
        Ok(vec![format!(
            "{kind} {:?} group {} isa {}",
            p.window,
            p.group,
            p.isa.name()
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for QConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        Ok(tvec!(self.run(&x)?.into_tvalue()))
    }
}

impl TypedOp for QConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape = self.p.out_shape.clone();
        shape[0] = inputs[0].shape[0].clone();
        Ok(tvec!(self.p.y_dt.fact(shape)))
    }

    as_op!();
}
