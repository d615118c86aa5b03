//! Turns input bytes (PNG, PGM, NPY, raw) into the tensor the model expects.
//!
//! Images go through: colour conversion -> bilinear resize -> normalise -> layout ->
//! quantise (int8/uint8 inputs). The normalisation order is fixed and documented in
//! docs/model-package.md because golden references are computed with exactly it:
//! `x = (sample / maxval * scale - mean[c]) / std[c]`, in f32.
//! NPY and raw inputs are tensors already and skip image preprocessing.
//!
//! A client of the service hands over [`Elements`] (a decoded request tensor) instead of a
//! file: [`from_elements`] takes the model tensor as it is, quantises float32 for an integer
//! model, preprocesses a UINT8 image like a decoded file, or decodes one encoded file.

use crate::image::{self, Image, ImageError};
use crate::manifest::{Color, InputSpec, Layout, LetterboxAnchor, Preprocess, ResizeMode};
use crate::npy::{self, NpyError};
use crate::tensor::{DType, QuantParams, Tensor, TensorData};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PreprocessError {
    #[error("unrecognised input format: expected PNG, PGM (P5/P2), NPY, or raw {dtype} bytes (.raw/.bin)")]
    UnknownFormat { dtype: DType },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Npy(#[from] NpyError),
    #[error("NPY input has shape {got:?} but the model input takes {expected}")]
    Shape {
        /// The accepted shapes, as [`InputSpec::shape_range`] writes them.
        expected: String,
        got: Vec<usize>,
    },
    #[error(
        "NPY input is {got}; the model input takes {expected} (or float32, which is quantised)"
    )]
    Dtype { expected: DType, got: DType },
    #[error(
        "raw input has {got} bytes; the model input {shape:?} of {dtype} needs exactly {expected}"
    )]
    RawSize {
        shape: Vec<usize>,
        dtype: DType,
        expected: usize,
        got: usize,
    },
    #[error("input contains NaN or infinite values")]
    NotFinite,
    #[error("raw input is not valid {dtype} data (a bool byte must be 0 or 1)")]
    Invalid { dtype: DType },
    #[error("the model input `{name}` takes tensors (NPY or raw bytes), not images: its manifest has no [input.preprocess]")]
    TensorOnly { name: String },
}

/// How the input bytes should be read; `Auto` sniffs magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    Auto,
    Raw,
}

impl InputKind {
    /// Raw only when the file name says so: raw bytes have no magic to sniff.
    pub fn from_file_name(name: &str) -> InputKind {
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".raw") || lower.ends_with(".bin") {
            InputKind::Raw
        } else {
            InputKind::Auto
        }
    }
}

/// Tensor data as a client supplied it, in the element type it was sent as.
#[derive(Debug, Clone, PartialEq)]
pub enum Elements {
    F32(Vec<f32>),
    I8(Vec<i8>),
    U8(Vec<u8>),
    /// Encoded files (PNG, PGM, NPY), one per element.
    Bytes(Vec<Vec<u8>>),
    /// Any other element type, taken only as the model tensor itself (same dtype, same
    /// shape): int64 ids, bool masks, float16 tensors...
    Typed(TensorData),
}

impl Elements {
    pub fn len(&self) -> usize {
        match self {
            Elements::F32(v) => v.len(),
            Elements::I8(v) => v.len(),
            Elements::U8(v) => v.len(),
            Elements::Bytes(v) => v.len(),
            Elements::Typed(d) => d.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap bytes the elements hold (what the service accounts for a decoded request).
    pub fn heap_bytes(&self) -> u64 {
        let vec_header = std::mem::size_of::<Vec<u8>>() as u64;
        match self {
            Elements::F32(v) => 4 * v.len() as u64,
            Elements::I8(v) => v.len() as u64,
            Elements::U8(v) => v.len() as u64,
            Elements::Bytes(v) => v.iter().map(|f| f.len() as u64 + vec_header).sum(),
            Elements::Typed(d) => (d.len() * d.dtype().size_of()) as u64,
        }
    }
}

/// Why supplied elements cannot become the model input. The messages complete a sentence
/// whose subject (the tensor's type and shape) the caller names.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ElementsError {
    #[error("does not match the model input")]
    Mismatch,
    #[error("is neither the model tensor nor an image")]
    NotAnImage,
    #[error("is an image with neither 1 nor 3 channels, or of zero size")]
    ImageShape,
    #[error("is an image of {width}x{height}, over the {limit}-pixel limit")]
    TooLarge {
        width: usize,
        height: usize,
        limit: usize,
    },
    #[error("must hold exactly one encoded file; got {0} elements")]
    FileCount(usize),
    #[error("holds a file that cannot be used: {0}")]
    File(#[from] PreprocessError),
}

/// A model input tensor and, when it came from an image, that image's (width, height):
/// detection maps boxes back onto it.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    pub tensor: Tensor,
    pub image: Option<(usize, usize)>,
}

impl Prepared {
    fn tensor(tensor: Tensor) -> Prepared {
        Prepared {
            tensor,
            image: None,
        }
    }
}

/// The model input from a client's tensor of `shape`: the model tensor itself (float32 is
/// quantised for an integer model), a UINT8 image `[H, W]`, `[H, W, C]` or `[1, H, W, C]`
/// (preprocessed as a decoded file would be, its size kept for detection), or one encoded
/// file.
pub fn from_elements(
    shape: &[usize],
    data: Elements,
    spec: &InputSpec,
) -> Result<Prepared, ElementsError> {
    // The model tensor itself: `shape`, or any shape within a declared range.
    let exact_shape = spec.accepts(shape);
    let tensor = |data: TensorData| {
        let mut t = Tensor::new(shape.to_vec(), data);
        t.quant = spec.quantization;
        Prepared::tensor(t)
    };
    match data {
        Elements::F32(v) if exact_shape && takes_reals(spec.dtype) => match spec.dtype {
            DType::Float32 => Ok(tensor(TensorData::F32(v))),
            q => Ok(tensor(quantize(&v, q, spec.quantization))),
        },
        Elements::I8(v) if exact_shape && spec.dtype == DType::Int8 => {
            Ok(tensor(TensorData::I8(v)))
        }
        Elements::U8(v) if exact_shape && spec.dtype == DType::Uint8 => {
            Ok(tensor(TensorData::U8(v)))
        }
        Elements::U8(v) => {
            let (height, width, channels) = match shape {
                [h, w] => (*h, *w, 1),
                [h, w, c] | [1, h, w, c] => (*h, *w, *c),
                _ => return Err(ElementsError::NotAnImage),
            };
            if !(channels == 1 || channels == 3) || height == 0 || width == 0 {
                return Err(ElementsError::ImageShape);
            }
            if height.saturating_mul(width) > image::MAX_PIXELS {
                return Err(ElementsError::TooLarge {
                    width,
                    height,
                    limit: image::MAX_PIXELS,
                });
            }
            let img = Image {
                width,
                height,
                channels,
                maxval: 255,
                samples: v.into_iter().map(u16::from).collect(),
            };
            Ok(Prepared {
                tensor: from_image(&img, spec)?,
                image: Some((width, height)),
            })
        }
        Elements::Bytes(v) => match v.as_slice() {
            [file] => Ok(prepare_sized(file, InputKind::Auto, spec)?),
            _ => Err(ElementsError::FileCount(v.len())),
        },
        Elements::Typed(d) if exact_shape && d.dtype() == spec.dtype => Ok(tensor(d)),
        _ => Err(ElementsError::Mismatch),
    }
}

/// An upper bound, in bytes, of the heap [`from_elements`] allocates beyond `data` itself
/// for a request tensor of `shape`: a decoded file, image samples widened to u16, the
/// resized f32 plane (colour conversion is read through, never built), the normalised and
/// the quantised model tensor. The service reserves it against its memory budget before
/// preprocessing runs (docs/memory.md, "Request memory"), so a frame of any size is
/// accounted, not only the model's own.
pub fn working_bytes(shape: &[usize], data: &Elements, spec: &InputSpec) -> u64 {
    let (h, w, c) = spec.hwc();
    let out = (h * w * c) as u64;
    // Live together at the peak of `from_image` for a `src_px`-pixel source of `src_c`
    // channels: the u16 samples, the resized plane (a letterbox also its unpadded inner
    // plane), the normalised tensor and its quantised copy.
    let resized = match spec.preprocess.as_ref().map(|p| p.resize_mode) {
        Some(ResizeMode::Letterbox) => 8 * out,
        _ => 4 * out,
    };
    let quantised = match spec.dtype {
        DType::Float32 => 0,
        d => out * d.size_of() as u64,
    };
    let image = |src_px: u64, src_c: u64| 2 * src_px * src_c + resized + 4 * out + quantised;
    match data {
        Elements::U8(_) if !spec.accepts(shape) => match shape {
            [h, w] => image((h * w) as u64, 1),
            [h, w, ch] | [1, h, w, ch] => image((h * w) as u64, *ch as u64),
            _ => 0,
        },
        Elements::Bytes(files) => files
            .iter()
            .map(|f| match image::peek(f) {
                // Decoding refuses what is over the pixel limit before allocating. The
                // decoder's buffers are gone when preprocessing starts; its samples are
                // `image`'s u16 samples.
                Some(p) if p.width.saturating_mul(p.height) <= image::MAX_PIXELS => {
                    let px = (p.width * p.height) as u64;
                    image::DECODE_FIXED_BYTES + p.decode_bytes.max(image(px, p.channels as u64))
                }
                Some(_) => 0,
                // NPY: the parsed tensor and its quantised copy.
                None => 2 * f.len() as u64 + 4 * spec.max_volume() as u64,
            })
            .max()
            .unwrap_or(0),
        // Float32 quantised for an integer model: one more tensor of at most the same size.
        Elements::F32(v) => 4 * v.len() as u64,
        _ => 0,
    }
}

pub fn prepare(bytes: &[u8], kind: InputKind, spec: &InputSpec) -> Result<Tensor, PreprocessError> {
    prepare_sized(bytes, kind, spec).map(|p| p.tensor)
}

/// [`prepare`], also telling the source image's size (for an image file).
pub fn prepare_sized(
    bytes: &[u8],
    kind: InputKind,
    spec: &InputSpec,
) -> Result<Prepared, PreprocessError> {
    if kind == InputKind::Raw {
        return from_raw(bytes, spec).map(Prepared::tensor);
    }
    if npy::is_npy(bytes) {
        return from_npy(npy::parse(bytes)?, spec).map(Prepared::tensor);
    }
    let img = if image::is_png(bytes) {
        image::decode_png(bytes)?
    } else if image::is_pgm(bytes) {
        image::decode_pgm(bytes)?
    } else {
        return Err(PreprocessError::UnknownFormat { dtype: spec.dtype });
    };
    Ok(Prepared {
        tensor: from_image(&img, spec)?,
        image: Some((img.width, img.height)),
    })
}

fn from_raw(bytes: &[u8], spec: &InputSpec) -> Result<Tensor, PreprocessError> {
    let count: usize = spec.shape.iter().product();
    let expected = count * spec.dtype.size_of();
    if bytes.len() != expected {
        return Err(PreprocessError::RawSize {
            shape: spec.shape.clone(),
            dtype: spec.dtype,
            expected,
            got: bytes.len(),
        });
    }
    let data = TensorData::from_le_bytes(spec.dtype, bytes)
        .ok_or(PreprocessError::Invalid { dtype: spec.dtype })?;
    if !data.all_finite() {
        return Err(PreprocessError::NotFinite);
    }
    Ok(with_quant(Tensor::new(spec.shape.clone(), data), spec))
}

fn from_npy(t: Tensor, spec: &InputSpec) -> Result<Tensor, PreprocessError> {
    if !spec.accepts(&t.shape) {
        return Err(PreprocessError::Shape {
            expected: spec.shape_range(),
            got: t.shape,
        });
    }
    match (&t.data, spec.dtype) {
        (d, _) if !d.all_finite() => Err(PreprocessError::NotFinite),
        (TensorData::F32(v), DType::Int8 | DType::Uint8 | DType::Float16 | DType::Float64) => {
            let q = quantize(v, spec.dtype, spec.quantization);
            Ok(with_quant(Tensor::new(t.shape, q), spec))
        }
        (_, want) if want == t.dtype() => Ok(with_quant(t, spec)),
        _ => Err(PreprocessError::Dtype {
            expected: spec.dtype,
            got: t.dtype(),
        }),
    }
}

fn with_quant(mut t: Tensor, spec: &InputSpec) -> Tensor {
    t.quant = spec.quantization;
    t
}

/// Image -> model tensor: colour conversion, resize (stretch or letterbox), normalise,
/// layout, quantise. Fails only for a model that takes no images (no `preprocess`).
pub fn from_image(img: &Image, spec: &InputSpec) -> Result<Tensor, PreprocessError> {
    let Some(pre) = &spec.preprocess else {
        return Err(PreprocessError::TensorOnly {
            name: spec.name.clone(),
        });
    };
    let (h, w, c) = spec.hwc();
    let converted = convert_color(img, pre.color);
    let maxval = img.maxval as f32;
    let resized = fit(
        |k| converted.at(k),
        img.width,
        img.height,
        c,
        w,
        h,
        pre,
        maxval,
    );
    // Normalise in HWC order, then lay out; keep the op order of the reference pipeline.
    // BGR models get the channels reversed; mean/std are in the tensor's channel order.
    let mut out = vec![0f32; h * w * c];
    for y in 0..h {
        for x in 0..w {
            for ch in 0..c {
                let from = if pre.color == Color::Bgr {
                    c - 1 - ch
                } else {
                    ch
                };
                let v = resized[(y * w + x) * c + from];
                let norm = (v / maxval * pre.scale - pre.mean[ch]) / pre.std[ch];
                let idx = match spec.layout {
                    Layout::Nchw => (ch * h + y) * w + x,
                    Layout::Nhwc => (y * w + x) * c + ch,
                };
                out[idx] = norm;
            }
        }
    }
    let data = match spec.dtype {
        DType::Float32 => TensorData::F32(out),
        q => quantize(&out, q, spec.quantization),
    };
    Ok(with_quant(Tensor::new(spec.shape.clone(), data), spec))
}

/// Where a source image of `src_w` x `src_h` lands in a tensor of `dst_w` x `dst_h`: the
/// one description of the resize/letterbox geometry, shared by [`from_image`] (which draws
/// it) and `detect` (which undoes it to report boxes in source pixels). A source point
/// `(x, y)` lands at `(left + x * scale_x, top + y * scale_y)` in the tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    /// Tensor columns of padding left of the image (0 when stretched).
    pub left: f64,
    /// Tensor rows of padding above the image (0 when stretched).
    pub top: f64,
    /// Tensor pixels per source pixel, horizontally: the placed width over the source width.
    pub scale_x: f64,
    /// Tensor pixels per source pixel, vertically.
    pub scale_y: f64,
    /// Size of the placed image in tensor pixels (the whole tensor when stretched).
    pub width: usize,
    pub height: usize,
}

/// The [`Placement`] of a `src_w` x `src_h` image in a `dst_w` x `dst_h` tensor under
/// `pre.resize_mode`. Stretch fills the tensor. Letterbox scales by
/// `min(dst_w / src_w, dst_h / src_h)`, rounds each side to the nearest pixel (at least 1,
/// at most the tensor's), and centres the result with the top/left padding rounded down (or,
/// with `letterbox_anchor = "top-left"`, puts it in the corner).
/// Sizes are expected to be positive (decoded images and validated manifests are); zeros
/// give infinite scales, never a panic.
pub fn placement(
    pre: &Preprocess,
    src_w: usize,
    src_h: usize,
    dst_w: usize,
    dst_h: usize,
) -> Placement {
    let (width, height) = match pre.resize_mode {
        ResizeMode::Stretch => (dst_w, dst_h),
        ResizeMode::Letterbox => {
            let scale = (dst_w as f64 / src_w as f64).min(dst_h as f64 / src_h as f64);
            let side =
                |s: usize, d: usize| ((s as f64 * scale).round() as usize).clamp(1, d.max(1));
            (side(src_w, dst_w), side(src_h, dst_h))
        }
    };
    let (left, top) = match (pre.resize_mode, pre.letterbox_anchor) {
        (ResizeMode::Letterbox, LetterboxAnchor::TopLeft) => (0, 0),
        _ => (
            dst_w.saturating_sub(width) / 2,
            dst_h.saturating_sub(height) / 2,
        ),
    };
    Placement {
        left: left as f64,
        top: top as f64,
        scale_x: width as f64 / src_w as f64,
        scale_y: height as f64 / src_h as f64,
        width,
        height,
    }
}

/// Resizes `src` (`sw` x `sh`, `c` channels, read by flat index) to the tensor's `dw` x
/// `dh` as [`placement`] says: stretched, or letterboxed on a canvas of `pre.pad`.
#[allow(clippy::too_many_arguments)]
fn fit(
    src: impl Fn(usize) -> f32,
    sw: usize,
    sh: usize,
    c: usize,
    dw: usize,
    dh: usize,
    pre: &Preprocess,
    maxval: f32,
) -> Vec<f32> {
    if pre.resize_mode == ResizeMode::Stretch {
        return resize_bilinear(&src, sw, sh, c, dw, dh);
    }
    let p = placement(pre, sw, sh, dw, dh);
    let (nw, nh) = (p.width, p.height);
    let inner = resize_bilinear(&src, sw, sh, c, nw, nh);
    let pad = pre.pad / 255.0 * maxval;
    let mut out = vec![pad; dw * dh * c];
    // Whole numbers by construction (integer halves of the padding).
    let (top, left) = (p.top as usize, p.left as usize);
    for y in 0..nh {
        let row = &inner[y * nw * c..(y + 1) * nw * c];
        let at = ((top + y) * dw + left) * c;
        out[at..at + nw * c].copy_from_slice(row);
    }
    out
}

/// The colour-converted frame in f32 sample units, read a sample at a time rather than
/// built: a 1080p RGB frame would be a 25 MB f32 copy (on top of its 12 MB of u16 samples)
/// only to be resized to a 224x224 tensor, and every request would allocate it again.
struct Converted<'a> {
    samples: &'a [u16],
    kind: Conversion,
}

#[derive(Clone, Copy)]
enum Conversion {
    Same,
    GrayToRgb,
    /// BT.601 luma.
    RgbToGray,
}

impl Converted<'_> {
    /// Sample `k` of the converted frame, `k = (y * width + x) * channels + ch`: the value
    /// the materialised plane held, computed by the same expression.
    #[inline]
    fn at(&self, k: usize) -> f32 {
        match self.kind {
            Conversion::Same => self.samples[k] as f32,
            Conversion::GrayToRgb => self.samples[k / 3] as f32,
            Conversion::RgbToGray => {
                let p = &self.samples[k * 3..k * 3 + 3];
                0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32
            }
        }
    }
}

/// Gray<->RGB conversion of `img` into `want`'s channels.
fn convert_color(img: &Image, want: Color) -> Converted<'_> {
    let kind = match (img.channels, want) {
        (1, Color::Gray) => Conversion::Same,
        (1, Color::Rgb | Color::Bgr) => Conversion::GrayToRgb,
        (_, Color::Gray) => Conversion::RgbToGray,
        (_, Color::Rgb | Color::Bgr) => Conversion::Same,
    };
    Converted {
        samples: &img.samples,
        kind,
    }
}

/// Bilinear resize with half-pixel centres (what OpenCV/PIL/TF2 `resize` do) of a frame
/// read by flat index. Same-size input is copied untouched so exact golden inputs stay
/// exact.
fn resize_bilinear(
    src: &impl Fn(usize) -> f32,
    sw: usize,
    sh: usize,
    c: usize,
    dw: usize,
    dh: usize,
) -> Vec<f32> {
    if sw == dw && sh == dh {
        return (0..sw * sh * c).map(src).collect();
    }
    let mut out = vec![0f32; dw * dh * c];
    let sx = sw as f32 / dw as f32;
    let sy = sh as f32 / dh as f32;
    for y in 0..dh {
        let fy = ((y as f32 + 0.5) * sy - 0.5).max(0.0);
        let y0 = (fy as usize).min(sh - 1);
        let y1 = (y0 + 1).min(sh - 1);
        let wy = fy - y0 as f32;
        for x in 0..dw {
            let fx = ((x as f32 + 0.5) * sx - 0.5).max(0.0);
            let x0 = (fx as usize).min(sw - 1);
            let x1 = (x0 + 1).min(sw - 1);
            let wx = fx - x0 as f32;
            for ch in 0..c {
                let p = |yy: usize, xx: usize| src((yy * sw + xx) * c + ch);
                let top = p(y0, x0) + (p(y0, x1) - p(y0, x0)) * wx;
                let bottom = p(y1, x0) + (p(y1, x1) - p(y1, x0)) * wx;
                out[(y * dw + x) * c + ch] = top + (bottom - top) * wy;
            }
        }
    }
    out
}

/// q = clamp(round_half_even(x / scale) + zero_point): ONNX QuantizeLinear / numpy semantics.
pub fn quantize(x: &[f32], dtype: DType, q: Option<QuantParams>) -> TensorData {
    let q = q.unwrap_or(QuantParams {
        scale: 1.0,
        zero_point: 0,
    });
    let (lo, hi) = match dtype {
        DType::Int8 => (-128.0, 127.0),
        _ => (0.0, 255.0),
    };
    let qf = |v: f32| ((v / q.scale).round_ties_even() + q.zero_point as f32).clamp(lo, hi);
    match dtype {
        DType::Int8 => TensorData::I8(x.iter().map(|&v| qf(v) as i8).collect()),
        DType::Uint8 => TensorData::U8(x.iter().map(|&v| qf(v) as u8).collect()),
        DType::Float16 => TensorData::F16(x.iter().map(|&v| half::f16::from_f32(v)).collect()),
        DType::Float64 => TensorData::F64(x.iter().map(|&v| f64::from(v)).collect()),
        // Float32, and the plain integer types no caller sends here: `takes_reals` keeps
        // real-valued data away from them (an int64 id is never a rounded float).
        _ => TensorData::F32(x.to_vec()),
    }
}

/// Whether real values (images, FP32 tensors) can become this input: float inputs, and
/// int8/uint8 inputs through their quantisation. Plain integer and bool inputs take their
/// own dtype only.
pub fn takes_reals(dtype: DType) -> bool {
    dtype.is_float() || dtype.is_quantized()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(shape: Vec<usize>, layout: Layout, color: Color, dtype: DType) -> InputSpec {
        let c = color.channels();
        InputSpec {
            name: "input".into(),
            min_shape: None,
            max_shape: None,
            shape_step: None,
            shape: shape.clone(),
            dtype,
            layout,
            preprocess: Some(Preprocess {
                resize_mode: ResizeMode::Stretch,
                letterbox_anchor: LetterboxAnchor::Center,
                pad: 0.0,
                resize: match layout {
                    Layout::Nchw => [shape[2], shape[3]],
                    Layout::Nhwc => [shape[1], shape[2]],
                },
                color,
                scale: 1.0,
                mean: vec![0.5; c],
                std: vec![0.25; c],
            }),
            quantization: dtype.is_quantized().then_some(QuantParams {
                scale: 1.0 / 64.0,
                zero_point: -10,
            }),
        }
    }

    #[test]
    fn normalise_and_layout() {
        // 2x1 RGB image, NCHW: channel planes.
        let img = Image {
            width: 2,
            height: 1,
            channels: 3,
            maxval: 255,
            samples: vec![255, 0, 51, 0, 255, 102],
        };
        let t = from_image(
            &img,
            &spec(vec![1, 3, 1, 2], Layout::Nchw, Color::Rgb, DType::Float32),
        )
        .unwrap();
        let TensorData::F32(v) = t.data else { panic!() };
        let n = |s: f32| (s / 255.0 - 0.5) / 0.25;
        assert_eq!(
            v,
            vec![n(255.0), n(0.0), n(0.0), n(255.0), n(51.0), n(102.0)]
        );
    }

    #[test]
    fn bgr_reverses_channels_and_letterbox_pads_centred() {
        // 2x1 RGB image into a 2x2 BGR tensor, letterboxed: scale 1, one pad row below.
        let img = Image {
            width: 2,
            height: 1,
            channels: 3,
            maxval: 255,
            samples: vec![255, 0, 51, 0, 255, 102],
        };
        let mut s = spec(vec![1, 2, 2, 3], Layout::Nhwc, Color::Bgr, DType::Float32);
        if let Some(p) = s.preprocess.as_mut() {
            p.resize_mode = ResizeMode::Letterbox;
            p.pad = 127.5;
            p.mean = vec![0.0; 3];
            p.std = vec![1.0; 3];
        }
        let TensorData::F32(v) = from_image(&img, &s).unwrap().data else {
            panic!()
        };
        let px = |r: f32, g: f32, b: f32| [b / 255.0, g / 255.0, r / 255.0];
        let mut want = Vec::new();
        want.extend(px(255.0, 0.0, 51.0));
        want.extend(px(0.0, 255.0, 102.0));
        want.extend([0.5; 6]);
        assert_eq!(v, want);
        // A tall image in a square tensor: pillars left and right, centred.
        let tall = Image {
            width: 1,
            height: 2,
            channels: 1,
            maxval: 255,
            samples: vec![255, 255],
        };
        let mut g = spec(vec![1, 1, 2, 4], Layout::Nchw, Color::Gray, DType::Float32);
        if let Some(p) = g.preprocess.as_mut() {
            p.resize_mode = ResizeMode::Letterbox;
            p.mean = vec![0.0];
            p.std = vec![1.0];
        }
        let TensorData::F32(v) = from_image(&tall, &g).unwrap().data else {
            panic!()
        };
        // 1x2 scaled by min(4/1, 2/2) = 1 -> 1 pixel wide, left pad (4 - 1) / 2 = 1.
        assert_eq!(v, vec![0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]);
        // Anchored top-left, all the padding goes right.
        if let Some(p) = g.preprocess.as_mut() {
            p.letterbox_anchor = LetterboxAnchor::TopLeft;
        }
        let TensorData::F32(v) = from_image(&tall, &g).unwrap().data else {
            panic!()
        };
        assert_eq!(v, vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]);
        let p = g.preprocess.as_ref().map(|p| placement(p, 1, 2, 4, 2));
        assert_eq!(p.map(|p| (p.left, p.top)), Some((0.0, 0.0)));
    }

    #[test]
    fn a_tensor_only_input_refuses_images_by_name() {
        let mut s = spec(vec![1, 1, 2, 2], Layout::Nchw, Color::Gray, DType::Float32);
        s.preprocess = None;
        let img = Image {
            width: 2,
            height: 2,
            channels: 1,
            maxval: 255,
            samples: vec![0; 4],
        };
        let err = from_image(&img, &s).unwrap_err();
        assert!(err.to_string().contains("takes tensors"), "{err}");
    }

    #[test]
    fn quantise_half_even_and_clamp() {
        let q = Some(QuantParams {
            scale: 0.5,
            zero_point: 1,
        });
        // 0.25/0.5 = 0.5 -> 0 (even), 0.75/0.5 = 1.5 -> 2, big values clamp.
        assert_eq!(
            quantize(&[0.25, 0.75, 1000.0, -1000.0], DType::Int8, q),
            TensorData::I8(vec![1, 3, 127, -128])
        );
        assert_eq!(
            quantize(&[-5.0, 1000.0], DType::Uint8, q),
            TensorData::U8(vec![0, 255])
        );
    }

    #[test]
    fn resize_identity_and_constant() {
        let src: Vec<f32> = (0..12).map(|i| i as f32).collect();
        assert_eq!(resize_bilinear(&|k| src[k], 4, 3, 1, 4, 3), src);
        let flat = [7.0; 5 * 3 * 3];
        assert!(resize_bilinear(&|k| flat[k], 5, 3, 3, 11, 7)
            .iter()
            .all(|&v| (v - 7.0).abs() < 1e-6));
        // Downscale 2x2 -> 1x1 averages the four corners.
        assert_eq!(
            resize_bilinear(&|k| [0.0, 2.0, 4.0, 6.0][k], 2, 2, 1, 1, 1),
            vec![3.0]
        );
    }

    #[test]
    fn read_through_conversion_is_the_materialised_plane_bit_for_bit() {
        // The plane `convert_color` used to build, written out here; every sample read
        // through must be the same f32, so goldens and references are unchanged.
        let samples: Vec<u16> = (0..5 * 4 * 3).map(|i| (i * 37 % 65_536) as u16).collect();
        for (channels, want) in [
            (1, Color::Gray),
            (1, Color::Rgb),
            (1, Color::Bgr),
            (3, Color::Gray),
            (3, Color::Rgb),
            (3, Color::Bgr),
        ] {
            let img = Image {
                width: 5,
                height: 4,
                channels,
                maxval: 65_535,
                samples: samples[..5 * 4 * channels].to_vec(),
            };
            let plane: Vec<f32> = match (channels, want) {
                (1, Color::Gray) | (3, Color::Rgb | Color::Bgr) => {
                    img.samples.iter().map(|&s| s as f32).collect()
                }
                (1, _) => img.samples.iter().flat_map(|&s| [s as f32; 3]).collect(),
                _ => img
                    .samples
                    .chunks(3)
                    .map(|p| 0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32)
                    .collect(),
            };
            let conv = convert_color(&img, want);
            for (k, v) in plane.iter().enumerate() {
                assert_eq!(
                    conv.at(k).to_bits(),
                    v.to_bits(),
                    "{channels} -> {want:?}, {k}"
                );
            }
        }
    }

    #[test]
    fn raw_and_npy_checked() {
        let s = spec(vec![1, 2, 2, 1], Layout::Nhwc, Color::Gray, DType::Int8);
        assert!(matches!(
            prepare(&[1, 2, 3], InputKind::Raw, &s),
            Err(PreprocessError::RawSize {
                expected: 4,
                got: 3,
                ..
            })
        ));
        let t = prepare(&[1, 2, 3, 255], InputKind::Raw, &s).unwrap();
        assert_eq!(t.data, TensorData::I8(vec![1, 2, 3, -1]));
        let wrong = npy::to_bytes(&Tensor::new(vec![1, 4], TensorData::I8(vec![0; 4])));
        assert!(matches!(
            prepare(&wrong, InputKind::Auto, &s),
            Err(PreprocessError::Shape { .. })
        ));
        let nan = npy::to_bytes(&Tensor::new(
            vec![1, 2, 2, 1],
            TensorData::F32(vec![0.0, f32::NAN, 0.0, 0.0]),
        ));
        assert_eq!(
            prepare(&nan, InputKind::Auto, &s),
            Err(PreprocessError::NotFinite)
        );
        assert!(matches!(
            prepare(b"GIF89a", InputKind::Auto, &s),
            Err(PreprocessError::UnknownFormat { .. })
        ));
    }
}
