//! Detection heads -> boxes: decode the `[detection]` outputs, threshold, NMS, and map the
//! boxes back to the source image through the preprocessing's resize or letterbox.
//!
//! The steps, in this order (the order Ultralytics' and PaddleDetection's postprocessing
//! use: NMS in tensor pixels, then the mapping, so the same outputs keep the same boxes):
//!
//! 1. **Decode** each head's outputs into candidates: a box `[x1, y1, x2, y2]` in tensor
//!    pixels (coordinates in the model input tensor's width and height), a class and a
//!    score. `yolo` heads give one candidate per row, for its best class; `boxes-scores`
//!    and `picodet` give one per (row, class) pair that passes the threshold, as SSD- and
//!    PaddleDetection-style multiclass NMS does.
//! 2. **Threshold**: a candidate is kept when `score >= score_threshold` (inclusive, so a
//!    threshold of 0 keeps everything and a score exactly at the threshold counts).
//! 3. **NMS** in tensor pixels, greedy and hard: best score first (ties: lower candidate
//!    index, then lower class), a box is dropped when its IoU with an already kept box of
//!    the same class (any class with `class_agnostic`) is above `iou_threshold`; stop at
//!    `max_detections`.
//! 4. **Map** each kept box to the source image by undoing [`preprocess::placement`] and
//!    clip it to the image.
//!
//! Output shapes come from model files and backends, so nothing here trusts them: every
//! shape is checked against the head before any value is read, a mismatch is a
//! [`DetectError`] naming the output, and a candidate with a non-finite number (or an
//! inside-out box) is skipped rather than reported.

use std::cmp::Ordering;

use serde::Serialize;

use crate::manifest::{
    BoxFormat, DetectionHead, DetectionSpec, InputSpec, Layout, Manifest, ScoreActivation,
};
use crate::preprocess::{self, Placement};
use crate::tensor::Tensor;

/// One detected object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detection {
    pub class: usize,
    /// `labels[class]`, or the class index as text when there is no such label.
    pub label: String,
    pub score: f32,
    /// [x1, y1, x2, y2] in source-image pixels, clipped to the image
    pub bbox: [f32; 4],
}

/// Why a model's outputs cannot be decoded as its `[detection]` head says. Each variant
/// names the output (or manifest field) at fault so a package author can fix it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DetectError {
    #[error("[detection] reads output `{name}`, which is not one of the model's [[outputs]]")]
    UnknownOutput { name: String },
    #[error(
        "detection output `{name}` is output {index} of the manifest but the model returned \
         only {returned} output(s)"
    )]
    MissingOutput {
        name: String,
        index: usize,
        returned: usize,
    },
    #[error("detection output `{name}` has shape {shape:?} but holds {len} values")]
    Truncated {
        name: String,
        shape: Vec<usize>,
        len: usize,
    },
    #[error("detection output `{name}` has shape {shape:?}; the `{head}` head needs {expected}")]
    Shape {
        name: String,
        shape: Vec<usize>,
        head: &'static str,
        expected: String,
    },
    #[error("the `{head}` head reads {expected} output(s) but [detection] lists {listed}")]
    OutputCount {
        head: &'static str,
        expected: String,
        listed: usize,
    },
    #[error(
        "the `picodet` head needs `strides`, one positive stride per (scores, distances) \
         output pair; [detection] has {strides:?}"
    )]
    Strides { strides: Option<Vec<usize>> },
    #[error(
        "cannot tell the input tensor's height and width from its shape {shape:?}: detection \
         needs [input.preprocess] or a 4-D input (nchw or nhwc) with non-zero sides"
    )]
    InputGeometry { shape: Vec<usize> },
    #[error("the source image is {width}x{height}; boxes need a positive width and height")]
    EmptyImage { width: usize, height: usize },
}

/// NMS looks at no more than this many candidates (the best ones). Greedy NMS stops at
/// `max_detections` kept boxes anyway; the cap bounds the sort and the pairwise IoU work
/// when a threshold of 0 lets every (cell, class) pair of a dense head through. 30 000 is
/// far above what a real frame produces at sane thresholds.
pub const MAX_NMS_CANDIDATES: usize = 30_000;

/// Decodes the `[detection]` head of `m` into detections, best first.
///
/// `outputs` are ALL model outputs in manifest order (the head finds its own by name).
/// `image` is the source frame's (width, height) when known; `None` takes the source to be
/// the tensor itself, so boxes stay in tensor pixels. Tensor pixels are those of the first
/// input with `preprocess` (the image), else of the first input, which must then be 4-D
/// (`layout` says where height and width are). An input without `preprocess` takes
/// tensors, not images, so `image` is ignored for it and boxes are in tensor pixels,
/// clipped to the tensor. Returns `Ok(vec![])` when the manifest has no `[detection]`.
pub fn detect(
    m: &Manifest,
    outputs: &[Tensor],
    labels: &[String],
    image: Option<(usize, usize)>,
) -> Result<Vec<Detection>, DetectError> {
    detect_in(m, outputs, labels, image, &[])
}

/// [`detect`] for a request whose input tensors were `inputs` (manifest order): a tensor
/// input with a declared range is measured on the request's own tensor, not on `shape`.
pub fn detect_in(
    m: &Manifest,
    outputs: &[Tensor],
    labels: &[String],
    image: Option<(usize, usize)>,
    inputs: &[Tensor],
) -> Result<Vec<Detection>, DetectError> {
    let Some(spec) = &m.detection else {
        return Ok(Vec::new());
    };
    let at = geometry_input(m);
    let shape = at.and_then(|at| inputs.get(at)).map(|t| t.shape.as_slice());
    let geo = Geometry::new(at.map(|at| &m.inputs[at]), shape, image)?;
    let candidates = decode(m, spec, outputs, &geo)?;
    let kept = nms(candidates, spec);
    Ok(kept
        .into_iter()
        .map(|c| Detection {
            class: c.class,
            label: labels
                .get(c.class)
                .cloned()
                .unwrap_or_else(|| c.class.to_string()),
            score: c.score,
            bbox: geo.source_box(c.bbox),
        })
        .collect())
}

/// A scored box before NMS. `index` is the row (cell) it came from, across all of a head's
/// outputs, so ties sort the same way every run.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Candidate {
    index: usize,
    class: usize,
    score: f32,
    /// [x1, y1, x2, y2] in tensor pixels, finite, x1 <= x2 and y1 <= y2.
    bbox: [f32; 4],
}

/// The input whose tensor the boxes are measured in: the first image input (one with
/// `preprocess`), else the first input. A detector has one image; any other inputs are
/// side tensors (sizes, scale factors) that carry no geometry.
/// Its index in `m.inputs`.
fn geometry_input(m: &Manifest) -> Option<usize> {
    m.inputs
        .iter()
        .position(|i| i.preprocess.is_some())
        .or_else(|| (!m.inputs.is_empty()).then_some(0))
}

/// The input tensor's size and how the source image sits in it.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    tensor_w: usize,
    tensor_h: usize,
    placement: Placement,
    image_w: f64,
    image_h: f64,
}

impl Geometry {
    /// `shape`: the request's tensor for `input`, when known (else the manifest's shape).
    fn new(
        input: Option<&InputSpec>,
        shape: Option<&[usize]>,
        image: Option<(usize, usize)>,
    ) -> Result<Geometry, DetectError> {
        let bad = || DetectError::InputGeometry {
            shape: input.map(|i| i.shape.clone()).unwrap_or_default(),
        };
        let Some(input) = input else {
            return Err(bad());
        };
        let shape = shape.unwrap_or(&input.shape);
        let (tensor_w, tensor_h) = match (&input.preprocess, input.layout, shape) {
            (Some(pre), _, _) => (pre.resize[1], pre.resize[0]),
            (None, Layout::Nchw, [_, _, h, w]) | (None, Layout::Nhwc, [_, h, w, _]) => (*w, *h),
            _ => return Err(bad()),
        };
        if tensor_w == 0 || tensor_h == 0 {
            return Err(bad());
        }
        let identity = Placement {
            left: 0.0,
            top: 0.0,
            scale_x: 1.0,
            scale_y: 1.0,
            width: tensor_w,
            height: tensor_h,
        };
        let (placement, (image_w, image_h)) = match (&input.preprocess, image) {
            (Some(_), Some((width, height))) if width == 0 || height == 0 => {
                return Err(DetectError::EmptyImage { width, height })
            }
            (Some(pre), Some((w, h))) => {
                (preprocess::placement(pre, w, h, tensor_w, tensor_h), (w, h))
            }
            _ => (identity, (tensor_w, tensor_h)),
        };
        Ok(Geometry {
            tensor_w,
            tensor_h,
            placement,
            image_w: image_w as f64,
            image_h: image_h as f64,
        })
    }

    /// Tensor pixels -> source pixels, clipped to the image. `max`/`min` rather than
    /// `clamp`: they cannot panic and send a NaN to 0.
    fn source_box(&self, b: [f32; 4]) -> [f32; 4] {
        let p = &self.placement;
        let x = |v: f32| {
            ((f64::from(v) - p.left) / p.scale_x)
                .max(0.0)
                .min(self.image_w) as f32
        };
        let y = |v: f32| {
            ((f64::from(v) - p.top) / p.scale_y)
                .max(0.0)
                .min(self.image_h) as f32
        };
        [x(b[0]), y(b[1]), x(b[2]), y(b[3])]
    }
}

/// The manifest's name for a head, for messages.
fn head_name(head: DetectionHead) -> &'static str {
    match head {
        DetectionHead::Yolo => "yolo",
        DetectionHead::YoloObjectness => "yolo-objectness",
        DetectionHead::BoxesScores => "boxes-scores",
        DetectionHead::Picodet => "picodet",
    }
}

/// One output the head reads: its name, shape and real values (dequantised).
struct Output<'a> {
    name: &'a str,
    shape: &'a [usize],
    values: Vec<f32>,
}

impl Output<'_> {
    fn shape_error(&self, head: DetectionHead, expected: String) -> DetectError {
        DetectError::Shape {
            name: self.name.to_string(),
            shape: self.shape.to_vec(),
            head: head_name(head),
            expected,
        }
    }
}

/// The head's outputs, in `spec.outputs` order, each checked to hold as many values as its
/// shape says (a truncated buffer must not be read as a smaller tensor).
fn head_outputs<'a>(
    m: &Manifest,
    spec: &'a DetectionSpec,
    outputs: &'a [Tensor],
) -> Result<Vec<Output<'a>>, DetectError> {
    spec.outputs
        .iter()
        .map(|name| {
            let index = m
                .outputs
                .iter()
                .position(|o| &o.name == name)
                .ok_or_else(|| DetectError::UnknownOutput { name: name.clone() })?;
            let t = outputs
                .get(index)
                .ok_or_else(|| DetectError::MissingOutput {
                    name: name.clone(),
                    index,
                    returned: outputs.len(),
                })?;
            let volume = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            if volume != Some(t.len()) {
                return Err(DetectError::Truncated {
                    name: name.clone(),
                    shape: t.shape.clone(),
                    len: t.len(),
                });
            }
            Ok(Output {
                name,
                shape: &t.shape,
                values: t.to_f32(),
            })
        })
        .collect()
}

/// `[1, a, b]` or `[a, b]`: the two axes of a batch-of-one output.
fn dims2(shape: &[usize]) -> Option<(usize, usize)> {
    match shape {
        [1, a, b] | [a, b] => Some((*a, *b)),
        _ => None,
    }
}

/// A 2-D view of an output as `rows` candidates of `cols` values, stored row-major
/// (`[N, cols]`) or channels first (`[cols, N]`). Out-of-range reads give NaN, which every
/// caller treats as "skip this candidate", so a view can never index out of bounds.
struct Table<'a> {
    values: &'a [f32],
    rows: usize,
    cols: usize,
    channels_first: bool,
}

impl Table<'_> {
    fn get(&self, row: usize, col: usize) -> f32 {
        let i = if self.channels_first {
            col.checked_mul(self.rows).and_then(|i| i.checked_add(row))
        } else {
            row.checked_mul(self.cols).and_then(|i| i.checked_add(col))
        };
        i.and_then(|i| self.values.get(i))
            .copied()
            .unwrap_or(f32::NAN)
    }

    /// Columns 0..4 of `row`: a box as the head laid it out.
    fn raw_box(&self, row: usize) -> [f32; 4] {
        [0, 1, 2, 3].map(|col| self.get(row, col))
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// The threshold rule: `score >= score_threshold`, inclusive (a score exactly at the
/// threshold is kept; a threshold of 0 keeps every finite score).
/// A finite score at or above the threshold. Finite matters: objectness x class score of
/// two huge raw values overflows to infinity, which would sort first and be reported.
fn passes(spec: &DetectionSpec, score: f32) -> bool {
    score.is_finite() && score >= spec.score_threshold
}

/// The score of class `class` of candidate `row`, activated, when it is finite and passes
/// the threshold (the per-class rule of `boxes-scores` and `picodet`).
fn passing_score(spec: &DetectionSpec, t: &Table<'_>, row: usize, class: usize) -> Option<f32> {
    let v = t.get(row, class);
    if !v.is_finite() {
        return None;
    }
    let score = activate(spec, v);
    passes(spec, score).then_some(score)
}

fn activate(spec: &DetectionSpec, x: f32) -> f32 {
    match spec.score_activation {
        ScoreActivation::Probabilities => x,
        ScoreActivation::Logits => sigmoid(x),
    }
}

/// Four raw box numbers -> `[x1, y1, x2, y2]` in tensor pixels, or `None` for a box that
/// cannot be reported: a non-finite number (also after scaling) or an inside-out box
/// (negative width or height), which no real detection has.
fn to_xyxy(raw: [f32; 4], format: BoxFormat, scale: (f32, f32)) -> Option<[f32; 4]> {
    let [a, b, c, d] = raw;
    let [x1, y1, x2, y2] = match format {
        BoxFormat::Xyxy => [a, b, c, d],
        BoxFormat::Yxyx => [b, a, d, c],
        BoxFormat::Cxcywh => [a - c / 2.0, b - d / 2.0, a + c / 2.0, b + d / 2.0],
    };
    let out = [x1 * scale.0, y1 * scale.1, x2 * scale.0, y2 * scale.1];
    let ok = raw.iter().chain(&out).all(|v| v.is_finite()) && out[2] >= out[0] && out[3] >= out[1];
    ok.then_some(out)
}

/// Candidates of every head, thresholded, in tensor pixels.
fn decode(
    m: &Manifest,
    spec: &DetectionSpec,
    outputs: &[Tensor],
    geo: &Geometry,
) -> Result<Vec<Candidate>, DetectError> {
    let head = spec.head;
    let count = |expected: usize| -> Result<(), DetectError> {
        if spec.outputs.len() == expected {
            Ok(())
        } else {
            Err(DetectError::OutputCount {
                head: head_name(head),
                expected: expected.to_string(),
                listed: spec.outputs.len(),
            })
        }
    };
    let normalized = if spec.normalized {
        (geo.tensor_w as f32, geo.tensor_h as f32)
    } else {
        (1.0, 1.0)
    };
    match head {
        DetectionHead::Yolo | DetectionHead::YoloObjectness => {
            count(1)?;
            let outs = head_outputs(m, spec, outputs)?;
            match outs.first() {
                Some(out) => decode_yolo(spec, out, normalized),
                None => Ok(Vec::new()),
            }
        }
        DetectionHead::BoxesScores => {
            count(2)?;
            match head_outputs(m, spec, outputs)?.as_slice() {
                [boxes, scores] => decode_boxes_scores(spec, boxes, scores, normalized),
                _ => Ok(Vec::new()),
            }
        }
        DetectionHead::Picodet => {
            let strides = match spec.strides.as_deref() {
                Some(s) if !s.is_empty() && !s.contains(&0) => s,
                _ => {
                    return Err(DetectError::Strides {
                        strides: spec.strides.clone(),
                    })
                }
            };
            if spec.outputs.len() != 2 * strides.len() {
                return Err(DetectError::OutputCount {
                    head: head_name(head),
                    expected: format!(
                        "2 x {} strides = {} (scores outputs, then distances outputs)",
                        strides.len(),
                        2 * strides.len()
                    ),
                    listed: spec.outputs.len(),
                });
            }
            let outs = head_outputs(m, spec, outputs)?;
            let (scores, dists) = outs.split_at(strides.len());
            decode_picodet(spec, strides, scores, dists, geo)
        }
    }
}

/// `yolo` (`[1, 4+C, N]` or `[1, N, 4+C]`) and `yolo-objectness` (`[1, N, 5+C]` or
/// `[1, 5+C, N]`): one candidate per row, for its best class (ties: the lower class). When
/// both axes fit, each head's native export wins: channels first for YOLOv8, rows of
/// candidates for YOLOv5/v7.
fn decode_yolo(
    spec: &DetectionSpec,
    out: &Output<'_>,
    normalized: (f32, f32),
) -> Result<Vec<Candidate>, DetectError> {
    let objectness = spec.head == DetectionHead::YoloObjectness;
    let lead = if objectness { 5 } else { 4 };
    let width = spec.classes.saturating_add(lead);
    let expected = || {
        let w = format!("{lead}+{}={width}", spec.classes);
        if objectness {
            format!("[1, N, {w}] or [1, {w}, N]")
        } else {
            format!("[1, {w}, N] or [1, N, {w}]")
        }
    };
    let (a, b) = dims2(out.shape).ok_or_else(|| out.shape_error(spec.head, expected()))?;
    let channels_first = match (a == width, b == width) {
        (true, true) => !objectness,
        (true, false) => true,
        (false, true) => false,
        (false, false) => return Err(out.shape_error(spec.head, expected())),
    };
    let t = Table {
        values: &out.values,
        rows: if channels_first { b } else { a },
        cols: width,
        channels_first,
    };
    let format = spec.box_format.unwrap_or(BoxFormat::Cxcywh);
    let mut found = Vec::new();
    'rows: for row in 0..t.rows {
        // Argmax on the raw values: the sigmoid is monotonic, so it picks the same class.
        let mut best: Option<(usize, f32)> = None;
        for class in 0..spec.classes {
            let v = t.get(row, lead + class);
            if !v.is_finite() {
                continue 'rows;
            }
            if best.is_none_or(|(_, b)| v > b) {
                best = Some((class, v));
            }
        }
        let Some((class, raw)) = best else { continue };
        let mut score = activate(spec, raw);
        if objectness {
            let obj = t.get(row, 4);
            if !obj.is_finite() {
                continue;
            }
            score *= activate(spec, obj);
        }
        if !passes(spec, score) {
            continue;
        }
        if let Some(bbox) = to_xyxy(t.raw_box(row), format, normalized) {
            found.push(Candidate {
                index: row,
                class,
                score,
                bbox,
            });
        }
    }
    Ok(found)
}

/// `boxes-scores`: boxes `[1, N, 4]` (or `[N, 4]`) and scores `[1, N, C]` or `[1, C, N]`
/// (rows of candidates win when both fit). Every (row, class) pair that passes the
/// threshold is a candidate.
fn decode_boxes_scores(
    spec: &DetectionSpec,
    boxes: &Output<'_>,
    scores: &Output<'_>,
    normalized: (f32, f32),
) -> Result<Vec<Candidate>, DetectError> {
    let n = match dims2(boxes.shape) {
        Some((n, 4)) => n,
        _ => return Err(boxes.shape_error(spec.head, "[1, N, 4] or [N, 4]".into())),
    };
    let c = spec.classes;
    let channels_first = match dims2(scores.shape) {
        Some(s) if s == (n, c) => false,
        Some(s) if s == (c, n) => true,
        _ => {
            return Err(scores.shape_error(
                spec.head,
                format!("[1, {n}, {c}] or [1, {c}, {n}] ({n} boxes, {c} classes)"),
            ))
        }
    };
    let b = Table {
        values: &boxes.values,
        rows: n,
        cols: 4,
        channels_first: false,
    };
    let s = Table {
        values: &scores.values,
        rows: n,
        cols: c,
        channels_first,
    };
    let format = spec.box_format.unwrap_or(BoxFormat::Xyxy);
    let mut found = Vec::new();
    for row in 0..n {
        let Some(bbox) = to_xyxy(b.raw_box(row), format, normalized) else {
            continue;
        };
        for class in 0..c {
            if let Some(score) = passing_score(spec, &s, row, class) {
                found.push(Candidate {
                    index: row,
                    class,
                    score,
                    bbox,
                });
            }
        }
    }
    Ok(found)
}

/// `picodet` (GFL without its decoder). Stride `s` covers `ceil(h/s) x ceil(w/s)` cells,
/// row-major; cell `(row, col)` is centred at `((col + 0.5) s, (row + 0.5) s)`. Each of its
/// four distances (left, top, right, bottom) is a distribution over `reg_max + 1` bins whose
/// expectation `sum_j softmax(bins)_j * j`, times `s`, is the distance in tensor pixels.
/// Candidate indices run over the strides in order, so ties favour the stride listed first.
fn decode_picodet(
    spec: &DetectionSpec,
    strides: &[usize],
    scores: &[Output<'_>],
    dists: &[Output<'_>],
    geo: &Geometry,
) -> Result<Vec<Candidate>, DetectError> {
    let c = spec.classes;
    let mut found = Vec::new();
    let mut base = 0usize;
    for ((&stride, sc), di) in strides.iter().zip(scores).zip(dists) {
        let (rows, cols) = (geo.tensor_h.div_ceil(stride), geo.tensor_w.div_ceil(stride));
        let cells = rows.saturating_mul(cols);
        let grid = format!(
            "ceil({}/{stride}) x ceil({}/{stride}) = {cells} cells for stride {stride}",
            geo.tensor_h, geo.tensor_w
        );
        if dims2(sc.shape) != Some((cells, c)) {
            return Err(sc.shape_error(spec.head, format!("[1, {cells}, {c}] ({grid})")));
        }
        let bins = match dims2(di.shape) {
            Some((n, d)) if n == cells && d > 0 && d % 4 == 0 => d / 4,
            _ => {
                return Err(
                    di.shape_error(spec.head, format!("[1, {cells}, 4*(reg_max+1)] ({grid})"))
                )
            }
        };
        let s = Table {
            values: &sc.values,
            rows: cells,
            cols: c,
            channels_first: false,
        };
        let step = stride as f32;
        for cell in 0..cells {
            let mut bbox: Option<Option<[f32; 4]>> = None;
            for class in 0..c {
                let Some(score) = passing_score(spec, &s, cell, class) else {
                    continue;
                };
                // Decoded once per cell, and only for cells with a passing class.
                let decoded = *bbox.get_or_insert_with(|| {
                    let (row, col) = (cell / cols.max(1), cell % cols.max(1));
                    let cx = (col as f32 + 0.5) * step;
                    let cy = (row as f32 + 0.5) * step;
                    let at = cell.saturating_mul(4 * bins);
                    let side = |k: usize| {
                        let from = at.saturating_add(k * bins);
                        di.values
                            .get(from..from.saturating_add(bins))
                            .and_then(expectation)
                            .map(|e| e * step)
                    };
                    let (l, t, r, b) = (side(0)?, side(1)?, side(2)?, side(3)?);
                    to_xyxy(
                        [cx - l, cy - t, cx + r, cy + b],
                        BoxFormat::Xyxy,
                        (1.0, 1.0),
                    )
                });
                let Some(bbox) = decoded else { break };
                found.push(Candidate {
                    index: base.saturating_add(cell),
                    class,
                    score,
                    bbox,
                });
            }
        }
        base = base.saturating_add(cells);
    }
    Ok(found)
}

/// `sum_j softmax(bins)_j * j`, the expected bin of a GFL distance distribution; `None`
/// when a bin is not finite.
fn expectation(bins: &[f32]) -> Option<f32> {
    if bins.is_empty() || !bins.iter().all(|v| v.is_finite()) {
        return None;
    }
    let max = bins.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let (mut sum, mut weighted) = (0f32, 0f32);
    for (j, &v) in bins.iter().enumerate() {
        let e = (v - max).exp();
        sum += e;
        weighted += e * j as f32;
    }
    let e = weighted / sum;
    e.is_finite().then_some(e)
}

/// Intersection over union of two `[x1, y1, x2, y2]` boxes, in f64 so huge finite boxes
/// cannot overflow; 0 when the union is empty (two points or lines never suppress).
fn iou(a: &[f32; 4], b: &[f32; 4]) -> f64 {
    let [ax1, ay1, ax2, ay2] = a.map(f64::from);
    let [bx1, by1, bx2, by2] = b.map(f64::from);
    let w = (ax2.min(bx2) - ax1.max(bx1)).max(0.0);
    let h = (ay2.min(by2) - ay1.max(by1)).max(0.0);
    let inter = w * h;
    let union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// Best first: score descending, then lower candidate index, then lower class. Scores are
/// finite here; `-0.0` and `0.0` compare equal so the tie rule decides.
fn rank(a: &Candidate, b: &Candidate) -> Ordering {
    b.score
        .partial_cmp(&a.score)
        .unwrap_or(Ordering::Equal)
        .then(a.index.cmp(&b.index))
        .then(a.class.cmp(&b.class))
}

/// Greedy hard NMS (see the module docs), at most `max_detections`, best first.
fn nms(mut candidates: Vec<Candidate>, spec: &DetectionSpec) -> Vec<Candidate> {
    if candidates.len() > MAX_NMS_CANDIDATES {
        candidates.select_nth_unstable_by(MAX_NMS_CANDIDATES, rank);
        candidates.truncate(MAX_NMS_CANDIDATES);
    }
    candidates.sort_by(rank);
    let limit = f64::from(spec.iou_threshold);
    let mut kept: Vec<Candidate> = Vec::new();
    for c in candidates {
        if kept.len() >= spec.max_detections {
            break;
        }
        let suppressed = kept
            .iter()
            .any(|k| (spec.class_agnostic || k.class == c.class) && iou(&k.bbox, &c.bbox) > limit);
        if !suppressed {
            kept.push(c);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use proptest::prelude::*;

    use super::*;
    use crate::image::Image;
    use crate::manifest::{Color, Preprocess, ResizeMode};
    use crate::tensor::{QuantParams, TensorData};

    const HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    /// An image input of `h` x `w` (nchw, rgb), resized with `mode`.
    fn image_input(h: usize, w: usize, mode: &str) -> String {
        format!(
            "[input]\nname = \"images\"\nshape = [1, 3, {h}, {w}]\ndtype = \"float32\"\n\n\
             [input.preprocess]\nresize = [{h}, {w}]\nresize_mode = \"{mode}\"\ncolor = \"rgb\"\n\
             scale = 1.0\nmean = [0.0, 0.0, 0.0]\nstd = [1.0, 1.0, 1.0]\n"
        )
    }

    /// A tensor input (no preprocess) of `shape` in `layout`.
    fn tensor_input(shape: &[usize], layout: &str) -> String {
        format!(
            "[input]\nname = \"x\"\nshape = {shape:?}\ndtype = \"float32\"\nlayout = \"{layout}\"\n"
        )
    }

    /// A valid manifest (parsed and validated as a package's would be) whose outputs are
    /// all detection outputs read by `[detection]` in this order; `detection` is the rest
    /// of that section.
    fn manifest(input: &str, outputs: &[&str], detection: &str) -> Manifest {
        let mut text = String::from(
            "name = \"det\"\nversion = \"1.0.0\"\ndescription = \"test\"\n\n[model]\n\
             file = \"model.onnx\"\nformat = \"onnx\"\nprecision = \"fp32\"\n\n",
        );
        text += input;
        for o in outputs {
            text += &format!(
                "\n[[outputs]]\nname = \"{o}\"\nshape = [1]\ndtype = \"float32\"\n\
                 task = \"detection\"\n"
            );
        }
        let quoted = |v: Vec<String>| v.join(", ");
        let names = quoted(outputs.iter().map(|o| format!("\"{o}\"")).collect());
        let goldens: Vec<String> = (0..outputs.len()).map(|i| format!("o{i}.npy")).collect();
        text += &format!(
            "\n[detection]\noutputs = [{names}]\n{detection}\n\n[budgets]\nram_mib = 64\n\
             p95_ms = 5.0\n\n[golden]\n[[golden.samples]]\ninputs = [{}]\noutputs = [{}]\n\n\
             [files]\n\"model.onnx\" = \"{HASH}\"\n\"in.npy\" = \"{HASH}\"\n",
            quoted(vec![
                "\"in.npy\"".to_string();
                input.matches("[[inputs]]").count().max(1)
            ]),
            quoted(goldens.iter().map(|g| format!("\"{g}\"")).collect())
        );
        for g in &goldens {
            text += &format!("\"{g}\" = \"{HASH}\"\n");
        }
        match Manifest::parse(&text, Path::new("m.toml")) {
            Ok(m) => m,
            Err(e) => panic!("{e}\n{text}"),
        }
    }

    fn f32s(shape: &[usize], v: &[f32]) -> Tensor {
        Tensor::new(shape.to_vec(), TensorData::F32(v.to_vec()))
    }

    fn spec_mut(m: &mut Manifest) -> &mut DetectionSpec {
        m.detection.as_mut().expect("test manifest has [detection]")
    }

    /// (class, score, bbox) of each detection, compared to `want` within 1e-4.
    #[track_caller]
    fn assert_dets(got: &[Detection], want: &[(usize, f32, [f32; 4])]) {
        let close = |a: f32, b: f32| (a - b).abs() <= 1e-4 * (1.0 + b.abs());
        let same = got.len() == want.len()
            && got.iter().zip(want).all(|(g, (c, s, b))| {
                g.class == *c
                    && close(g.score, *s)
                    && g.bbox.iter().zip(b).all(|(x, y)| close(*x, *y))
            });
        let got: Vec<_> = got.iter().map(|d| (d.class, d.score, d.bbox)).collect();
        assert!(same, "got  {got:?}\nwant {want:?}");
    }

    fn labels(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    // ---- yolo -----------------------------------------------------------------------

    /// Three candidates, C = 2, as YOLOv8 exports them: `[1, 4+C, N]`, one row per
    /// attribute (cx, cy, w, h, class 0, class 1).
    const YOLO_CHANNELS_FIRST: [f32; 18] = [
        10.0, 40.0, 5.0, // cx
        10.0, 30.0, 5.0, // cy
        4.0, 10.0, 2.0, // w
        6.0, 10.0, 2.0, // h
        0.2, 0.6, 0.1, // class 0
        0.9, 0.1, 0.2, // class 1
    ];

    fn yolo_manifest() -> Manifest {
        manifest(
            &image_input(64, 64, "stretch"),
            &["out"],
            "head = \"yolo\"\nclasses = 2",
        )
    }

    /// Candidate 0: box (10, 10, 4, 6) -> [8, 7, 12, 13], best class 1 at 0.9.
    /// Candidate 1: box (40, 30, 10, 10) -> [35, 25, 45, 35], class 0 at 0.6.
    /// Candidate 2: best 0.2 < 0.25, dropped.
    const YOLO_WANT: [(usize, f32, [f32; 4]); 2] = [
        (1, 0.9, [8.0, 7.0, 12.0, 13.0]),
        (0, 0.6, [35.0, 25.0, 45.0, 35.0]),
    ];

    #[test]
    fn yolo_channels_first_decodes_cxcywh_with_argmax_class_and_labels() {
        let m = yolo_manifest();
        let out = [f32s(&[1, 6, 3], &YOLO_CHANNELS_FIRST)];
        let d = detect(&m, &out, &labels(&["cat", "dog"]), None).unwrap();
        assert_dets(&d, &YOLO_WANT);
        assert_eq!((d[0].label.as_str(), d[1].label.as_str()), ("dog", "cat"));
        // Without labels the class index stands in.
        let d = detect(&m, &out, &labels(&["cat"]), None).unwrap();
        assert_eq!((d[0].label.as_str(), d[1].label.as_str()), ("1", "cat"));
    }

    #[test]
    fn yolo_transposed_rows_layout_decodes_the_same() {
        let mut rows = vec![0f32; 18];
        for attr in 0..6 {
            for n in 0..3 {
                rows[n * 6 + attr] = YOLO_CHANNELS_FIRST[attr * 3 + n];
            }
        }
        let d = detect(&yolo_manifest(), &[f32s(&[1, 3, 6], &rows)], &[], None).unwrap();
        assert_dets(&d, &YOLO_WANT);
        // Batchless [N, 4+C] is the same table.
        let d = detect(&yolo_manifest(), &[f32s(&[3, 6], &rows)], &[], None).unwrap();
        assert_dets(&d, &YOLO_WANT);
    }

    #[test]
    fn square_yolo_output_reads_channels_first() {
        // N = 4 + C = 6: both axes fit; the YOLOv8 layout [1, 4+C, N] wins. Channels-first,
        // candidate 0 is column 0: (8, 8, 4, 4) with class scores (0.1, 0.7).
        let mut v = vec![0f32; 36];
        for (attr, x) in [8.0, 8.0, 4.0, 4.0, 0.1, 0.7].into_iter().enumerate() {
            v[attr * 6] = x;
        }
        let d = detect(&yolo_manifest(), &[f32s(&[1, 6, 6], &v)], &[], None).unwrap();
        assert_dets(&d, &[(1, 0.7, [6.0, 6.0, 10.0, 10.0])]);
    }

    #[test]
    fn yolo_xyxy_box_format_and_logits() {
        let mut m = yolo_manifest();
        spec_mut(&mut m).box_format = Some(BoxFormat::Xyxy);
        spec_mut(&mut m).score_activation = ScoreActivation::Logits;
        // Rows layout, one candidate: xyxy [1, 2, 3, 4]; logits (0, -5) -> sigmoid 0.5.
        let d = detect(
            &m,
            &[f32s(&[1, 1, 6], &[1.0, 2.0, 3.0, 4.0, 0.0, -5.0])],
            &[],
            None,
        );
        assert_dets(&d.unwrap(), &[(0, 0.5, [1.0, 2.0, 3.0, 4.0])]);
    }

    #[test]
    fn yolo_objectness_multiplies_sigmoid_objectness_and_class() {
        let mut m = manifest(
            &image_input(64, 64, "stretch"),
            &["out"],
            "head = \"yolo-objectness\"\nclasses = 2\nscore_activation = \"logits\"",
        );
        let ln4 = 4f32.ln(); // sigmoid(ln 4) = 0.8
        #[rustfmt::skip]
        let rows = [
            // cx, cy, w, h, obj, class 0, class 1
            20.0, 20.0, 10.0, 10.0, 0.0, -3.0, ln4,   // 0.5 * 0.8 = 0.4, class 1
            50.0, 50.0, 20.0, 20.0, ln4, ln4, 0.0,    // 0.8 * 0.8 = 0.64, class 0
            30.0, 30.0, 4.0, 4.0, -10.0, 10.0, 0.0,   // objectness ~0: dropped
        ];
        let want = [
            (0, 0.64, [40.0, 40.0, 60.0, 60.0]),
            (1, 0.4, [15.0, 15.0, 25.0, 25.0]),
        ];
        let d = detect(&m, &[f32s(&[1, 3, 7], &rows)], &[], None).unwrap();
        assert_dets(&d, &want);
        // Transposed [1, 5+C, N].
        let mut cols = [0f32; 21];
        for n in 0..3 {
            for a in 0..7 {
                cols[a * 3 + n] = rows[n * 7 + a];
            }
        }
        let d = detect(&m, &[f32s(&[1, 7, 3], &cols)], &[], None).unwrap();
        assert_dets(&d, &want);
        // Probabilities are multiplied as they are.
        spec_mut(&mut m).score_activation = ScoreActivation::Probabilities;
        let d = detect(
            &m,
            &[f32s(&[1, 1, 7], &[8.0, 8.0, 2.0, 2.0, 0.5, 0.6, 0.9])],
            &[],
            None,
        );
        assert_dets(&d.unwrap(), &[(1, 0.45, [7.0, 7.0, 9.0, 9.0])]);
    }

    // ---- boxes-scores ---------------------------------------------------------------

    /// Tensor 100 wide, 50 high. Box 0: yxyx fractions (0.1, 0.2, 0.5, 0.6) ->
    /// [20, 5, 60, 25]; box 1: (0, 0, 1, 1) -> [0, 0, 100, 50]. Their IoU is
    /// 800 / 5000 = 0.16. Scores `[1, C, N]`, C = 3.
    fn ssd(agnostic: bool) -> Vec<Detection> {
        let m = manifest(
            &image_input(50, 100, "stretch"),
            &["boxes", "scores"],
            &format!(
                "head = \"boxes-scores\"\nclasses = 3\nbox_format = \"yxyx\"\nnormalized = true\n\
                 class_agnostic = {agnostic}"
            ),
        );
        let boxes = f32s(&[1, 2, 4], &[0.1, 0.2, 0.5, 0.6, 0.0, 0.0, 1.0, 1.0]);
        #[rustfmt::skip]
        let scores = f32s(&[1, 3, 2], &[
            0.3, 0.9,  // class 0: box 0, box 1
            0.7, 0.1,  // class 1
            0.26, 0.0, // class 2
        ]);
        detect(&m, &[boxes, scores], &[], None).unwrap()
    }

    #[test]
    fn normalized_boxes_of_a_dynamic_input_scale_to_the_request_tensor() {
        // Manifest shape 50x100, range up to 80x200: a request of 80x200 scales the
        // fractions by its own size, not by `shape`'s.
        let input = "[[inputs]]\nname = \"x\"\nshape = [1, 3, 50, 100]\n\
                     min_shape = [1, 3, 10, 10]\nmax_shape = [1, 3, 80, 200]\ndtype = \"float32\"\n";
        let m = manifest(
            input,
            &["boxes", "scores"],
            "head = \"boxes-scores\"\nclasses = 1\nbox_format = \"xyxy\"\nnormalized = true",
        );
        let boxes = f32s(&[1, 1, 4], &[0.1, 0.25, 0.5, 0.75]);
        let scores = f32s(&[1, 1, 1], &[0.9]);
        let request = f32s(&[1, 3, 80, 200], &[0.0; 3 * 80 * 200]);
        let outputs = [boxes, scores];
        let d = detect_in(&m, &outputs, &[], None, std::slice::from_ref(&request));
        assert_dets(&d.unwrap(), &[(0, 0.9, [20.0, 20.0, 100.0, 60.0])]);
        // Without the request's tensor: the manifest's shape.
        let d = detect(&m, &outputs, &[], None);
        assert_dets(&d.unwrap(), &[(0, 0.9, [10.0, 12.5, 50.0, 37.5])]);
    }

    #[test]
    fn boxes_scores_normalized_yxyx_keeps_every_class_that_passes() {
        // Box 0 passes for classes 0, 1 and 2: each pair is its own candidate.
        assert_dets(
            &ssd(false),
            &[
                (0, 0.9, [0.0, 0.0, 100.0, 50.0]),
                (1, 0.7, [20.0, 5.0, 60.0, 25.0]),
                (0, 0.3, [20.0, 5.0, 60.0, 25.0]),
                (2, 0.26, [20.0, 5.0, 60.0, 25.0]),
            ],
        );
    }

    #[test]
    fn class_agnostic_nms_suppresses_across_classes() {
        // Box 0 as class 0 and 2 has IoU 1 with itself kept as class 1.
        assert_dets(
            &ssd(true),
            &[
                (0, 0.9, [0.0, 0.0, 100.0, 50.0]),
                (1, 0.7, [20.0, 5.0, 60.0, 25.0]),
            ],
        );
    }

    /// A `boxes-scores` model over a 64x64 tensor with xyxy pixel boxes; `scores[i]` are
    /// box i's class scores.
    fn run_boxes(extra: &str, boxes: &[[f32; 4]], scores: &[&[f32]]) -> Vec<Detection> {
        let classes = scores.first().map_or(1, |s| s.len());
        let m = manifest(
            &image_input(64, 64, "stretch"),
            &["boxes", "scores"],
            &format!("head = \"boxes-scores\"\nclasses = {classes}\n{extra}"),
        );
        let b: Vec<f32> = boxes.iter().flatten().copied().collect();
        let s: Vec<f32> = scores.iter().flat_map(|s| s.iter().copied()).collect();
        let out = [
            f32s(&[1, boxes.len(), 4], &b),
            f32s(&[1, scores.len(), classes], &s),
        ];
        detect(&m, &out, &[], None).unwrap()
    }

    // ---- NMS ------------------------------------------------------------------------

    #[test]
    fn nms_suppresses_an_overlapping_box_of_the_same_class() {
        // IoU([0,0,10,10], [1,0,11,10]) = 90 / 110 = 0.82 > 0.45.
        let d = run_boxes(
            "",
            &[
                [0.0, 0.0, 10.0, 10.0],
                [1.0, 0.0, 11.0, 10.0],
                [20.0, 20.0, 30.0, 30.0],
            ],
            &[&[0.9], &[0.8], &[0.7]],
        );
        assert_dets(
            &d,
            &[
                (0, 0.9, [0.0, 0.0, 10.0, 10.0]),
                (0, 0.7, [20.0, 20.0, 30.0, 30.0]),
            ],
        );
    }

    #[test]
    fn per_class_nms_keeps_overlapping_boxes_of_other_classes() {
        let boxes = [[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0]];
        let scores: [&[f32]; 2] = [&[0.9, 0.0], &[0.0, 0.8]];
        assert_dets(
            &run_boxes("", &boxes, &scores),
            &[(0, 0.9, boxes[0]), (1, 0.8, boxes[1])],
        );
        assert_dets(
            &run_boxes("class_agnostic = true", &boxes, &scores),
            &[(0, 0.9, boxes[0])],
        );
    }

    #[test]
    fn iou_equal_to_the_threshold_is_kept_and_above_is_suppressed() {
        // IoU([0,0,10,10], [0,0,10,5]) = 50 / 100 = 0.5 exactly.
        let boxes = [[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0]];
        let scores: [&[f32]; 2] = [&[0.9], &[0.8]];
        assert_eq!(run_boxes("iou_threshold = 0.5", &boxes, &scores).len(), 2);
        assert_eq!(run_boxes("iou_threshold = 0.49", &boxes, &scores).len(), 1);
        // Zero-area boxes have a zero union with each other: never suppressed.
        let points = [[5.0, 5.0, 5.0, 5.0], [5.0, 5.0, 5.0, 5.0]];
        assert_eq!(run_boxes("iou_threshold = 0.0", &points, &scores).len(), 2);
    }

    #[test]
    fn ties_keep_the_lower_candidate_then_the_lower_class() {
        let same = [5.0, 5.0, 15.0, 15.0];
        // Identical boxes, equal scores: candidate 0 wins, 1 is suppressed.
        let d = run_boxes("", &[same, same], &[&[0.5], &[0.5]]);
        assert_eq!(d.len(), 1);
        // Non-overlapping equal scores come out in candidate order...
        let d = run_boxes(
            "",
            &[[40.0, 40.0, 50.0, 50.0], [0.0, 0.0, 10.0, 10.0]],
            &[&[0.5], &[0.5]],
        );
        assert_eq!(d[0].bbox, [40.0, 40.0, 50.0, 50.0]);
        // ...and one box scoring two classes equally lists the lower class first.
        let d = run_boxes("", &[same], &[&[0.0, 0.5, 0.5]]);
        assert_eq!(d.iter().map(|d| d.class).collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn max_detections_keeps_the_best() {
        let boxes: Vec<[f32; 4]> = (0..5)
            .map(|i| {
                let x = i as f32 * 12.0;
                [x, 0.0, x + 10.0, 10.0]
            })
            .collect();
        let scores: [&[f32]; 5] = [&[0.3], &[0.9], &[0.5], &[0.8], &[0.4]];
        let d = run_boxes("max_detections = 3", &boxes, &scores);
        let got: Vec<f32> = d.iter().map(|d| d.score).collect();
        assert_eq!(got, [0.9, 0.8, 0.5]);
    }

    #[test]
    fn score_threshold_is_inclusive() {
        let boxes = [[0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 30.0, 10.0]];
        let d = run_boxes("score_threshold = 0.5", &boxes, &[&[0.5], &[0.4999]]);
        assert_dets(&d, &[(0, 0.5, boxes[0])]);
    }

    #[test]
    fn nms_caps_the_candidates_it_sorts() {
        let spec = yolo_manifest().detection.unwrap();
        let many: Vec<Candidate> = (0..MAX_NMS_CANDIDATES + 10)
            .map(|i| Candidate {
                index: i,
                class: 0,
                score: (i % 97) as f32 / 97.0,
                bbox: [0.0, 0.0, 1.0, 1.0],
            })
            .collect();
        // All the same box: only the best survives, whatever the cap dropped.
        let kept = nms(many, &spec);
        assert_eq!(kept.len(), 1);
        assert_eq!((kept[0].index, kept[0].score), (96, 96.0 / 97.0));
    }

    // ---- picodet --------------------------------------------------------------------

    /// An 8x8 tensor, strides [4, 8], C = 2, reg_max = 1 (two bins per side). A side's
    /// expectation with bins (a, b) is softmax's second probability, e^b / (e^a + e^b):
    /// (0, 0) -> 0.5, (0, ln 3) -> 0.75, (ln 3, 0) -> 0.25.
    ///
    /// Stride 4 (2x2 cells): cell 3 = row 1, col 1, centre (6, 6); distances
    /// l = 0.5*4 = 2, t = 0.75*4 = 3, r = 0.25*4 = 1, b = 0.5*4 = 2 -> [4, 3, 7, 8];
    /// class 0 at 0.8. Stride 8 (1 cell): centre (4, 4), all sides 0.5*8 = 4 ->
    /// [0, 0, 8, 8], class 0 at 0.5 and class 1 at 0.6 (both kept: each pair is a
    /// candidate; IoU with the class-0 box of stride 4 is 15/64 = 0.23).
    fn picodet_outputs() -> Vec<Tensor> {
        let ln3 = 3f32.ln();
        let mut d4 = vec![0f32; 4 * 8];
        d4[3 * 8..4 * 8].copy_from_slice(&[0.0, 0.0, 0.0, ln3, ln3, 0.0, 0.0, 0.0]);
        vec![
            f32s(&[1, 4, 2], &[0.0, 0.0, 0.1, 0.0, 0.0, 0.2, 0.8, 0.1]),
            f32s(&[1, 1, 2], &[0.5, 0.6]),
            f32s(&[1, 4, 8], &d4),
            f32s(&[1, 1, 8], &[0.0; 8]),
        ]
    }

    fn picodet_manifest() -> Manifest {
        manifest(
            &image_input(8, 8, "stretch"),
            &["s4", "s8", "d4", "d8"],
            "head = \"picodet\"\nclasses = 2\nstrides = [4, 8]",
        )
    }

    #[test]
    fn picodet_two_strides_decode_the_expected_distances() {
        let d = detect(&picodet_manifest(), &picodet_outputs(), &[], None).unwrap();
        assert_dets(
            &d,
            &[
                (0, 0.8, [4.0, 3.0, 7.0, 8.0]),
                (1, 0.6, [0.0, 0.0, 8.0, 8.0]),
                (0, 0.5, [0.0, 0.0, 8.0, 8.0]),
            ],
        );
    }

    #[test]
    fn picodet_grid_uses_ceil_of_the_tensor_over_the_stride() {
        // A 10 wide, 6 high tensor at stride 4: ceil(6/4) x ceil(10/4) = 2 x 3 cells.
        // Cell 5 = row 1, col 2: centre (10, 6); all sides 0.5 * 4 = 2 -> [8, 4, 12, 8],
        // clipped to the 10 x 6 tensor: [8, 4, 10, 6].
        let m = manifest(
            &image_input(6, 10, "stretch"),
            &["s", "d"],
            "head = \"picodet\"\nclasses = 1\nstrides = [4]",
        );
        let mut s = vec![0f32; 6];
        s[5] = 0.9;
        let out = [f32s(&[1, 6, 1], &s), f32s(&[1, 6, 8], &[0.0; 48])];
        let d = detect(&m, &out, &[], None).unwrap();
        assert_dets(&d, &[(0, 0.9, [8.0, 4.0, 10.0, 6.0])]);
        // A grid that is not ceil x ceil is named in the error.
        let out = [f32s(&[1, 4, 1], &[0.0; 4]), f32s(&[1, 4, 8], &[0.0; 32])];
        let err = detect(&m, &out, &[], None).unwrap_err();
        assert!(
            matches!(&err, DetectError::Shape { name, .. } if name == "s"),
            "{err}"
        );
        assert!(err.to_string().contains("6 cells"), "{err}");
    }

    #[test]
    fn picodet_logits_and_bad_distances_are_errors_or_skips() {
        let mut m = picodet_manifest();
        spec_mut(&mut m).score_activation = ScoreActivation::Logits;
        // Logit 0 -> 0.5 everywhere: every cell and class passes 0.25.
        let mut out = picodet_outputs();
        out[0] = f32s(&[1, 4, 2], &[0.0; 8]);
        out[1] = f32s(&[1, 1, 2], &[0.0; 2]);
        let d = detect(&m, &out, &[], None).unwrap();
        assert!(d.iter().all(|d| (d.score - 0.5).abs() < 1e-6));
        // A distance bin that is infinite drops that cell only.
        out[3] = f32s(&[1, 1, 8], &[f32::INFINITY; 8]);
        let d = detect(&m, &out, &[], None).unwrap();
        assert!(d.iter().all(|d| d.bbox != [0.0, 0.0, 8.0, 8.0]), "{d:?}");
        // Distances not a multiple of 4.
        out[3] = f32s(&[1, 1, 6], &[0.0; 6]);
        let err = detect(&m, &out, &[], None).unwrap_err();
        assert!(
            matches!(&err, DetectError::Shape { name, .. } if name == "d8"),
            "{err}"
        );
    }

    #[test]
    fn picodet_without_strides_is_an_error() {
        let mut m = picodet_manifest();
        spec_mut(&mut m).strides = None;
        let err = detect(&m, &picodet_outputs(), &[], None).unwrap_err();
        assert!(matches!(err, DetectError::Strides { .. }), "{err}");
        spec_mut(&mut m).strides = Some(vec![4, 0]);
        let err = detect(&m, &picodet_outputs(), &[], None).unwrap_err();
        assert!(matches!(err, DetectError::Strides { .. }), "{err}");
        spec_mut(&mut m).strides = Some(vec![4]);
        let err = detect(&m, &picodet_outputs(), &[], None).unwrap_err();
        assert!(
            matches!(err, DetectError::OutputCount { listed: 4, .. }),
            "{err}"
        );
    }

    #[test]
    fn expectation_of_two_bins_is_the_second_probability() {
        let e = expectation(&[0.0, 3f32.ln()]).unwrap();
        assert!((e - 0.75).abs() < 1e-6, "{e}");
        // Large logits do not overflow (softmax is shifted by the max).
        let e = expectation(&[1000.0, 1000.0, 1000.0]).unwrap();
        assert!((e - 1.0).abs() < 1e-6, "{e}");
        assert_eq!(expectation(&[]), None);
        assert_eq!(expectation(&[0.0, f32::NAN]), None);
    }

    // ---- mapping to the source image ------------------------------------------------

    /// One xyxy box in tensor pixels through a `boxes-scores` head on `input`.
    fn map_one(input: &str, bbox: [f32; 4], image: Option<(usize, usize)>) -> [f32; 4] {
        let m = manifest(input, &["b", "s"], "head = \"boxes-scores\"\nclasses = 1");
        let out = [f32s(&[1, 1, 4], &bbox), f32s(&[1, 1, 1], &[0.9])];
        let d = detect(&m, &out, &[], image).unwrap();
        assert_eq!(d.len(), 1, "{d:?}");
        d[0].bbox
    }

    #[track_caller]
    fn assert_box(got: [f32; 4], want: [f32; 4]) {
        assert!(
            got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-4),
            "got {got:?}, want {want:?}"
        );
    }

    #[test]
    fn letterbox_is_undone_and_padding_clipped() {
        // 128x64 into 64x64: scale min(0.5, 1) = 0.5 -> 64x32 placed at top (64-32)/2 = 16.
        let input = image_input(64, 64, "letterbox");
        let img = Some((128, 64));
        assert_box(
            map_one(&input, [8.0, 24.0, 40.0, 40.0], img),
            [16.0, 16.0, 80.0, 48.0],
        );
        // A box reaching into the padding bars is clipped to the image.
        assert_box(
            map_one(&input, [0.0, 0.0, 64.0, 64.0], img),
            [0.0, 0.0, 128.0, 64.0],
        );
        // Rounding: 100x30 into 64x64 -> scale 0.64, 64 x round(19.2) = 19 rows at top
        // (64-19)/2 = 22, so 19 tensor rows cover the 30 image rows.
        let img = Some((100, 30));
        assert_box(
            map_one(&input, [32.0, 22.0, 64.0, 41.0], img),
            [50.0, 0.0, 100.0, 30.0],
        );
        // Without the image size the boxes stay in tensor pixels.
        assert_box(
            map_one(&input, [8.0, 24.0, 40.0, 40.0], None),
            [8.0, 24.0, 40.0, 40.0],
        );
    }

    #[test]
    fn stretch_is_undone_per_axis() {
        // 128x128 into 64 wide, 32 high: x / 0.5, y / 0.25.
        let input = image_input(32, 64, "stretch");
        assert_box(
            map_one(&input, [10.0, 4.0, 20.0, 8.0], Some((128, 128))),
            [20.0, 16.0, 40.0, 32.0],
        );
    }

    #[test]
    fn tensor_inputs_keep_tensor_pixels_clipped_to_the_tensor() {
        // nchw [1, 3, 32, 48]: 48 wide, 32 high; the image size is not used.
        let nchw = tensor_input(&[1, 3, 32, 48], "nchw");
        assert_box(
            map_one(&nchw, [-5.0, 10.0, 60.0, 40.0], Some((1000, 1000))),
            [0.0, 10.0, 48.0, 32.0],
        );
        let nhwc = tensor_input(&[1, 32, 48, 3], "nhwc");
        assert_box(
            map_one(&nhwc, [-5.0, 10.0, 60.0, 40.0], None),
            [0.0, 10.0, 48.0, 32.0],
        );
    }

    #[test]
    fn the_image_input_sets_the_geometry_among_several_inputs() {
        // A side tensor first, then the 64x64 letterboxed image: boxes are undone through
        // the image input, as in `letterbox_is_undone_and_padding_clipped`.
        let inputs = format!(
            "[[inputs]]\nname = \"scale_factor\"\nshape = [1, 2]\ndtype = \"float32\"\n\n{}",
            image_input(64, 64, "letterbox")
                .replace("[input]", "[[inputs]]")
                .replace("[input.", "[inputs.")
        );
        assert_box(
            map_one(&inputs, [8.0, 24.0, 40.0, 40.0], Some((128, 64))),
            [16.0, 16.0, 80.0, 48.0],
        );
        // Tensor inputs only: the first one, which here has no height and width.
        let tensors = "[[inputs]]\nname = \"a\"\nshape = [1, 2]\ndtype = \"float32\"\n\n\
             [[inputs]]\nname = \"b\"\nshape = [1, 3, 8, 8]\ndtype = \"float32\"\n";
        let m = manifest(tensors, &["b", "s"], "head = \"boxes-scores\"\nclasses = 1");
        let out = [f32s(&[1, 1, 4], &[0.0; 4]), f32s(&[1, 1, 1], &[0.9])];
        let err = detect(&m, &out, &[], None).unwrap_err();
        assert_eq!(err, DetectError::InputGeometry { shape: vec![1, 2] });
        let mut m = m;
        m.inputs.clear();
        let err = detect(&m, &out, &[], None).unwrap_err();
        assert_eq!(err, DetectError::InputGeometry { shape: vec![] });
    }

    #[test]
    fn placement_is_where_from_image_draws_the_image() {
        // A white 5x3 image letterboxed into 8x8 (pad 0): 8 x round(4.8) = 5 rows at top 1.
        let input = InputSpec {
            name: "x".into(),
            min_shape: None,
            max_shape: None,
            shape_step: None,
            shape: vec![1, 1, 8, 8],
            dtype: crate::tensor::DType::Float32,
            layout: Layout::Nchw,
            preprocess: Some(Preprocess {
                resize: [8, 8],
                resize_mode: ResizeMode::Letterbox,
                letterbox_anchor: Default::default(),
                pad: 0.0,
                color: Color::Gray,
                scale: 1.0,
                mean: vec![0.0],
                std: vec![1.0],
            }),
            quantization: None,
        };
        let img = Image {
            width: 5,
            height: 3,
            channels: 1,
            maxval: 255,
            samples: vec![255; 15],
        };
        let TensorData::F32(v) = preprocess::from_image(&img, &input).unwrap().data else {
            panic!("float input gives float data")
        };
        let Some(pre) = &input.preprocess else {
            unreachable!()
        };
        let p = preprocess::placement(pre, 5, 3, 8, 8);
        assert_eq!((p.left, p.top, p.width, p.height), (0.0, 1.0, 8, 5));
        assert!((p.scale_x - 8.0 / 5.0).abs() < 1e-12 && (p.scale_y - 5.0 / 3.0).abs() < 1e-12);
        for (i, &x) in v.iter().enumerate() {
            let (row, col) = (i / 8, i % 8);
            let inside = row as f64 >= p.top
                && row < p.top as usize + p.height
                && col as f64 >= p.left
                && col < p.left as usize + p.width;
            assert_eq!(x, if inside { 1.0 } else { 0.0 }, "pixel ({col}, {row})");
        }
        // Degenerate sizes do not panic.
        let _ = preprocess::placement(pre, 0, 0, 8, 8);
        let _ = preprocess::placement(pre, 5, 3, 0, 0);
    }

    // ---- quantised outputs ----------------------------------------------------------

    #[test]
    fn int8_and_uint8_outputs_are_dequantised() {
        // yolo int8, scale 0.25, zero point -128: q = v / 0.25 - 128.
        let mut t = Tensor::new(
            vec![1, 6, 1],
            // cx 10, cy 12, w 4, h 8, class scores 0.75, 0.25
            TensorData::I8(vec![-88, -80, -112, -96, -125, -127]),
        );
        t.quant = Some(QuantParams {
            scale: 0.25,
            zero_point: -128,
        });
        let d = detect(&yolo_manifest(), &[t], &[], None).unwrap();
        assert_dets(&d, &[(0, 0.75, [8.0, 8.0, 12.0, 16.0])]);
        // boxes-scores: int8 boxes (scale 0.5), uint8 scores (scale 1/256).
        let m = manifest(
            &image_input(64, 64, "stretch"),
            &["b", "s"],
            "head = \"boxes-scores\"\nclasses = 2",
        );
        let mut b = Tensor::new(vec![1, 1, 4], TensorData::I8(vec![4, 8, 40, 60]));
        b.quant = Some(QuantParams {
            scale: 0.5,
            zero_point: 0,
        });
        let mut s = Tensor::new(vec![1, 1, 2], TensorData::U8(vec![192, 32]));
        s.quant = Some(QuantParams {
            scale: 1.0 / 256.0,
            zero_point: 0,
        });
        let d = detect(&m, &[b, s], &[], None).unwrap();
        assert_dets(&d, &[(0, 0.75, [2.0, 4.0, 20.0, 30.0])]);
    }

    // ---- hostile outputs ------------------------------------------------------------

    #[test]
    fn no_detection_section_gives_no_boxes() {
        let mut m = yolo_manifest();
        m.detection = None;
        assert_eq!(detect(&m, &[], &[], None).unwrap(), vec![]);
    }

    #[test]
    fn truncated_output_is_an_error_not_a_panic() {
        let out = [f32s(&[1, 6, 3], &YOLO_CHANNELS_FIRST[..17])];
        let err = detect(&yolo_manifest(), &out, &[], None).unwrap_err();
        assert_eq!(
            err,
            DetectError::Truncated {
                name: "out".into(),
                shape: vec![1, 6, 3],
                len: 17
            }
        );
        // A shape whose volume overflows usize is not a truncation that wraps around.
        let out = [f32s(&[usize::MAX, 2, 6], &[])];
        let err = detect(&yolo_manifest(), &out, &[], None).unwrap_err();
        assert!(matches!(err, DetectError::Truncated { .. }), "{err}");
    }

    #[test]
    fn wrong_rank_or_width_names_the_output_and_the_head() {
        for shape in [vec![6, 3, 1, 1], vec![18], vec![2, 6, 3]] {
            let err = detect(
                &yolo_manifest(),
                &[f32s(&shape, &[0.0; 36][..shape.iter().product()])],
                &[],
                None,
            )
            .unwrap_err();
            assert!(
                matches!(&err, DetectError::Shape { name, .. } if name == "out"),
                "{err}"
            );
        }
        let err = detect(&yolo_manifest(), &[f32s(&[1, 7, 3], &[0.0; 21])], &[], None).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("`out`") && msg.contains("`yolo`") && msg.contains("4+2=6"),
            "{msg}"
        );
    }

    #[test]
    fn boxes_and_scores_must_agree_on_the_count() {
        let m = manifest(
            &image_input(64, 64, "stretch"),
            &["b", "s"],
            "head = \"boxes-scores\"\nclasses = 2",
        );
        let out = [f32s(&[1, 3, 4], &[0.0; 12]), f32s(&[1, 2, 2], &[0.0; 4])];
        let err = detect(&m, &out, &[], None).unwrap_err();
        assert!(
            matches!(&err, DetectError::Shape { name, .. } if name == "s"),
            "{err}"
        );
        let out = [f32s(&[1, 3, 5], &[0.0; 15]), f32s(&[1, 3, 2], &[0.0; 6])];
        let err = detect(&m, &out, &[], None).unwrap_err();
        assert!(
            matches!(&err, DetectError::Shape { name, .. } if name == "b"),
            "{err}"
        );
    }

    #[test]
    fn missing_or_unknown_outputs_are_errors() {
        let err = detect(&yolo_manifest(), &[], &[], None).unwrap_err();
        assert_eq!(
            err,
            DetectError::MissingOutput {
                name: "out".into(),
                index: 0,
                returned: 0
            }
        );
        let mut m = yolo_manifest();
        spec_mut(&mut m).outputs = vec!["nope".into()];
        let err = detect(&m, &[f32s(&[1, 6, 3], &YOLO_CHANNELS_FIRST)], &[], None).unwrap_err();
        assert_eq!(
            err,
            DetectError::UnknownOutput {
                name: "nope".into()
            }
        );
        spec_mut(&mut m).outputs = vec![];
        let err = detect(&m, &[], &[], None).unwrap_err();
        assert!(
            matches!(err, DetectError::OutputCount { listed: 0, .. }),
            "{err}"
        );
    }

    #[test]
    fn an_input_without_height_and_width_or_an_empty_image_is_an_error() {
        let m = manifest(
            &tensor_input(&[1, 100], "nchw"),
            &["out"],
            "head = \"yolo\"\nclasses = 2",
        );
        let err = detect(&m, &[f32s(&[1, 6, 3], &YOLO_CHANNELS_FIRST)], &[], None).unwrap_err();
        assert!(matches!(err, DetectError::InputGeometry { .. }), "{err}");
        let out = [f32s(&[1, 6, 3], &YOLO_CHANNELS_FIRST)];
        let err = detect(&yolo_manifest(), &out, &[], Some((0, 10))).unwrap_err();
        assert_eq!(
            err,
            DetectError::EmptyImage {
                width: 0,
                height: 10
            }
        );
    }

    #[test]
    fn nan_scores_are_skipped() {
        let mut v = YOLO_CHANNELS_FIRST;
        v[4 * 3] = f32::NAN; // candidate 0, class 0: the whole candidate is unusable
        let d = detect(&yolo_manifest(), &[f32s(&[1, 6, 3], &v)], &[], None).unwrap();
        assert_dets(&d, &YOLO_WANT[1..]);
        // boxes-scores: the NaN pair is skipped, the other class of that box stays.
        let boxes = [[0.0, 0.0, 10.0, 10.0]];
        let d = run_boxes("", &boxes, &[&[f32::NAN, 0.5]]);
        assert_dets(&d, &[(1, 0.5, boxes[0])]);
    }

    #[test]
    fn overflowing_objectness_product_is_skipped() {
        // Found by the proptest under QEMU (cortex-a76): objectness f32::MAX x class 72.4
        // is infinite; it must be dropped, not reported with score inf.
        let m = manifest(
            &image_input(64, 64, "stretch"),
            &["out"],
            "head = \"yolo-objectness\"\nclasses = 1\nscore_threshold = 0.0",
        );
        #[rustfmt::skip]
        let rows = [
            // cx, cy, w, h, obj, class 0
            1.0, 1.0, 2.0, 2.0, f32::MAX, 72.4,
            20.0, 20.0, 10.0, 10.0, 0.5, 0.5,
        ];
        let d = detect(&m, &[f32s(&[1, 2, 6], &rows)], &[], None).unwrap();
        assert_dets(&d, &[(0, 0.25, [15.0, 15.0, 25.0, 25.0])]);
    }

    #[test]
    fn non_finite_huge_or_inside_out_boxes_are_skipped() {
        let ok = [0.0, 0.0, 10.0, 10.0];
        for bad in [
            [f32::NAN, 0.0, 10.0, 10.0],
            [0.0, f32::NEG_INFINITY, 10.0, 10.0],
            [0.0, 0.0, f32::MAX, f32::INFINITY],
            [10.0, 0.0, 0.0, 10.0], // x2 < x1
        ] {
            let d = run_boxes("", &[bad, ok], &[&[0.9], &[0.5]]);
            assert_dets(&d, &[(0, 0.5, ok)]);
        }
        // cx + w/2 overflows f32: skipped, not reported as infinite.
        let mut v = YOLO_CHANNELS_FIRST;
        v[0] = f32::MAX; // cx of candidate 0
        v[2 * 3] = f32::MAX; // w of candidate 0
        let d = detect(&yolo_manifest(), &[f32s(&[1, 6, 3], &v)], &[], None).unwrap();
        assert_dets(&d, &YOLO_WANT[1..]);
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let e = DetectError::MissingOutput {
            name: "scores".into(),
            index: 3,
            returned: 2,
        };
        assert_eq!(
            e.to_string(),
            "detection output `scores` is output 3 of the manifest but the model returned only \
             2 output(s)"
        );
    }

    // ---- property -------------------------------------------------------------------

    fn value() -> impl Strategy<Value = f32> {
        prop_oneof![
            10 => -2f32..2f32,
            10 => -80f32..80f32,
            1 => Just(f32::NAN),
            1 => Just(f32::INFINITY),
            1 => Just(f32::NEG_INFINITY),
            1 => Just(f32::MAX),
            1 => Just(0.0f32),
        ]
    }

    /// Shapes for the head's outputs: plausible ones (the right layout for the head,
    /// sometimes transposed) or random ones.
    fn shapes(
        head: DetectionHead,
        classes: usize,
        n: usize,
        strides: &[usize],
        (tw, th): (usize, usize),
        flip: bool,
    ) -> Vec<Vec<usize>> {
        let either = |a: usize, b: usize| if flip { vec![1, b, a] } else { vec![1, a, b] };
        match head {
            DetectionHead::Yolo => vec![either(4 + classes, n)],
            DetectionHead::YoloObjectness => vec![either(n, 5 + classes)],
            DetectionHead::BoxesScores => vec![vec![1, n, 4], either(n, classes)],
            DetectionHead::Picodet => {
                let cells: Vec<usize> = strides
                    .iter()
                    .map(|&s| tw.div_ceil(s) * th.div_ceil(s))
                    .collect();
                let reg = if flip { 8 } else { 4 * (1 + n % 4) };
                cells
                    .iter()
                    .map(|&c| vec![1, c, classes])
                    .chain(cells.iter().map(|&c| vec![1, c, reg]))
                    .collect()
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn random_outputs_never_panic_and_boxes_stay_in_the_image(
            head in 0usize..4,
            classes in 1usize..4,
            n in 0usize..12,
            strides in proptest::collection::vec(1usize..10, 1..3),
            tensor in (1usize..24, 1usize..24),
            flip in any::<bool>(),
            random_shapes in proptest::option::weighted(0.3, proptest::collection::vec(
                proptest::collection::vec(0usize..8, 0..5), 1..5)),
            trim in prop_oneof![8 => Just(0usize), 1 => 1usize..3],
            pool in proptest::collection::vec(value(), 1..64),
            quant in any::<bool>(),
            image in proptest::option::of((1usize..300, 1usize..300)),
            mode in prop_oneof![Just("stretch"), Just("letterbox"), Just("tensor")],
            logits in any::<bool>(),
            normalized in any::<bool>(),
            agnostic in any::<bool>(),
            score_threshold in 0f32..=1.0,
            iou_threshold in 0f32..=1.0,
            max_detections in 1usize..20,
        ) {
            let head = [
                DetectionHead::Yolo,
                DetectionHead::YoloObjectness,
                DetectionHead::BoxesScores,
                DetectionHead::Picodet,
            ][head];
            let (tw, th) = tensor;
            let mut shapes = shapes(head, classes, n, &strides, tensor, flip);
            if let Some(random) = random_shapes {
                for (s, r) in shapes.iter_mut().zip(random) {
                    *s = r;
                }
            }
            let names: Vec<String> = (0..shapes.len()).map(|i| format!("o{i}")).collect();
            let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let input = match mode {
                "tensor" => tensor_input(&[1, 3, th, tw], "nchw"),
                m => image_input(th, tw, m),
            };
            let strides_line = match head {
                DetectionHead::Picodet => format!("strides = {strides:?}"),
                _ => String::new(),
            };
            let m = manifest(&input, &name_refs, &format!(
                "head = \"{}\"\n{strides_line}\nclasses = {classes}\nnormalized = {normalized}\n\
                 class_agnostic = {agnostic}\nscore_threshold = {score_threshold:?}\n\
                 iou_threshold = {iou_threshold:?}\nmax_detections = {max_detections}\n\
                 score_activation = \"{}\"",
                head_name(head),
                if logits { "logits" } else { "probabilities" },
            ));
            let mut k = 0usize;
            let outputs: Vec<Tensor> = shapes
                .iter()
                .map(|shape| {
                    let len = shape.iter().product::<usize>().min(4096).saturating_sub(trim);
                    let v: Vec<f32> = (0..len).map(|_| { k += 1; pool[k % pool.len()] }).collect();
                    if quant {
                        let mut t = Tensor::new(
                            shape.clone(),
                            TensorData::I8(v.iter().map(|&x| x as i8).collect()),
                        );
                        t.quant = Some(QuantParams { scale: 0.1, zero_point: 3 });
                        t
                    } else {
                        f32s(shape, &v)
                    }
                })
                .collect();
            let Ok(dets) = detect(&m, &outputs, &[], image) else {
                return Ok(());
            };
            let (w, h) = match (mode, image) {
                ("tensor", _) | (_, None) => (tw as f32, th as f32),
                (_, Some((w, h))) => (w as f32, h as f32),
            };
            prop_assert!(dets.len() <= max_detections);
            for pair in dets.windows(2) {
                prop_assert!(pair[0].score >= pair[1].score, "not sorted: {dets:?}");
            }
            for d in &dets {
                let [x1, y1, x2, y2] = d.bbox;
                prop_assert!(d.score.is_finite() && d.score >= score_threshold, "{d:?}");
                prop_assert!(d.class < classes, "{d:?}");
                prop_assert!(
                    0.0 <= x1 && x1 <= x2 && x2 <= w && 0.0 <= y1 && y1 <= y2 && y2 <= h,
                    "{d:?} outside {w}x{h}"
                );
            }
        }
    }
}
