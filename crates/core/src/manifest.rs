//! `manifest.toml`: the typed, strictly-validated description of a model package.
//!
//! Parsing is two-step on purpose: serde with `deny_unknown_fields` rejects unknown and
//! missing keys (its messages name the key), then `validate` checks the relations serde
//! cannot express (quantisation present iff the dtype is quantised, channel counts, safe
//! relative paths, every named file hashed). See docs/model-package.md for the format.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;

use crate::tensor::{DType, QuantParams};

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: field `{field}`: {message}")]
    Invalid {
        path: String,
        field: String,
        message: String,
    },
}

/// More inputs than this is not a vision model on a belt; a limit keeps request decoding
/// and planning bounded.
pub const MAX_INPUTS: usize = 16;

#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawManifest")]
pub struct Manifest {
    pub name: String,
    pub version: Version,
    pub description: String,
    /// Qualification refuses a model below this held-out top-1 (only with `[accuracy]`).
    pub accuracy_floor: Option<f64>,
    /// A top-1 score under this is a low-confidence answer (probation compares their
    /// share with the previous version's). Only for classifiers; optional.
    pub low_confidence: Option<f64>,
    pub model: ModelSection,
    /// The model's inputs in graph order, from `[[inputs]]` (or a lone `[input]`).
    pub inputs: Vec<InputSpec>,
    pub outputs: Vec<OutputSpec>,
    /// How `task = "detection"` outputs decode into boxes.
    pub detection: Option<DetectionSpec>,
    pub budgets: Budgets,
    pub accuracy: Option<Accuracy>,
    pub golden: Golden,
    /// sha256 (lowercase hex) of every file in the package except the manifest itself.
    pub files: BTreeMap<String, String>,
}

/// The manifest as written: `[input]` (format 1) or `[[inputs]]` (format 2), checked and
/// folded into [`Manifest`] by `TryFrom`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    version: Version,
    description: String,
    accuracy_floor: Option<f64>,
    low_confidence: Option<f64>,
    model: ModelSection,
    input: Option<InputSpec>,
    inputs: Option<Vec<InputSpec>>,
    outputs: Vec<OutputSpec>,
    detection: Option<DetectionSpec>,
    budgets: Budgets,
    accuracy: Option<Accuracy>,
    golden: Golden,
    files: BTreeMap<String, String>,
}

impl TryFrom<RawManifest> for Manifest {
    type Error = String;

    fn try_from(r: RawManifest) -> Result<Manifest, String> {
        let inputs = match (r.input, r.inputs) {
            (Some(i), None) => vec![i],
            (None, Some(v)) => v,
            (Some(_), Some(_)) => {
                return Err("give the inputs as `[input]` or as `[[inputs]]`, not both".into())
            }
            (None, None) => return Err("missing field `inputs` (or `input`)".into()),
        };
        Ok(Manifest {
            name: r.name,
            version: r.version,
            description: r.description,
            accuracy_floor: r.accuracy_floor,
            low_confidence: r.low_confidence,
            model: r.model,
            inputs,
            outputs: r.outputs,
            detection: r.detection,
            budgets: r.budgets,
            accuracy: r.accuracy,
            golden: r.golden,
            files: r.files,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Onnx,
    Tflite,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Onnx => "onnx",
            Format::Tflite => "tflite",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    Fp32,
    Int8Qdq,
    Int8Qoperator,
    Int8Tflite,
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::Fp32 => "fp32",
            Precision::Int8Qdq => "int8-qdq",
            Precision::Int8Qoperator => "int8-qoperator",
            Precision::Int8Tflite => "int8-tflite",
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    pub file: String,
    pub format: Format,
    pub precision: Precision,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    #[default]
    Nchw,
    Nhwc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    Gray,
    Rgb,
    /// Three channels in blue, green, red order (OpenCV-trained models).
    Bgr,
}

impl Color {
    pub fn channels(self) -> usize {
        match self {
            Color::Gray => 1,
            Color::Rgb | Color::Bgr => 3,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub name: String,
    /// The concrete shape the model runs at (a graph's dynamic dimensions are fixed here):
    /// images are resized to it and golden samples are checked at it.
    pub shape: Vec<usize>,
    /// With `max_shape`: the range a dynamic dimension may take in a request (ONNX only,
    /// tensor inputs only; TensorRT's min/opt/max profile, `shape` being opt). The RAM plan
    /// is made at `max_shape`. Absent: the dimension is fixed at `shape`.
    #[serde(default)]
    pub min_shape: Option<Vec<usize>>,
    #[serde(default)]
    pub max_shape: Option<Vec<usize>>,
    /// Per axis, what a dynamic dimension must be a multiple of (a YOLO's height and
    /// width: 32, its coarsest stride). Default 1.
    #[serde(default)]
    pub shape_step: Option<Vec<usize>>,
    pub dtype: DType,
    /// Only meaningful with `preprocess` (where the image's channels go); default `nchw`.
    #[serde(default)]
    pub layout: Layout,
    /// Image -> tensor. Absent: the input is a tensor (NPY or raw bytes), never an image.
    pub preprocess: Option<Preprocess>,
    pub quantization: Option<QuantParams>,
}

impl InputSpec {
    /// (height, width, channels) of an image input, from shape and layout. A tensor input
    /// (no `preprocess`, any rank) reads as one row of all its elements at its largest
    /// shape (what the RAM plan must hold).
    pub fn hwc(&self) -> (usize, usize, usize) {
        let s = &self.shape;
        match (self.layout, s.len(), &self.preprocess) {
            (Layout::Nchw, 4, Some(_)) => (s[2], s[3], s[1]),
            (Layout::Nhwc, 4, Some(_)) => (s[1], s[2], s[3]),
            _ => (1, self.max_volume(), 1),
        }
    }

    /// The smallest shape a request may have (`shape` unless a range is declared).
    pub fn min(&self) -> &[usize] {
        self.min_shape.as_deref().unwrap_or(&self.shape)
    }

    /// The largest shape a request may have: what the RAM plan is made for.
    pub fn max(&self) -> &[usize] {
        self.max_shape.as_deref().unwrap_or(&self.shape)
    }

    /// Elements at the largest shape.
    pub fn max_volume(&self) -> usize {
        self.max().iter().product()
    }

    /// Does any dimension take a range?
    pub fn is_dynamic(&self) -> bool {
        self.min() != self.max()
    }

    /// Axes whose size a request chooses (within `min..=max`).
    pub fn dynamic_axes(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.shape.len()).filter(|&a| self.min()[a] != self.max()[a])
    }

    /// What `axis` must be a multiple of (1 unless `shape_step` says otherwise).
    pub fn step(&self, axis: usize) -> usize {
        self.shape_step
            .as_ref()
            .and_then(|s| s.get(axis).copied())
            .unwrap_or(1)
            .max(1)
    }

    /// Is `shape` one this input accepts: same rank, every dimension within its range
    /// and a multiple of its step?
    pub fn accepts(&self, shape: &[usize]) -> bool {
        shape.len() == self.shape.len()
            && shape
                .iter()
                .enumerate()
                .all(|(a, &d)| self.min()[a] <= d && d <= self.max()[a] && d % self.step(a) == 0)
    }

    /// The accepted shapes for messages: `[1, 3, 320, 320]`, or
    /// `[1, 3, 160..=640 (step 32), 320]`.
    pub fn shape_range(&self) -> String {
        let dims: Vec<String> = (0..self.shape.len())
            .map(|a| match (self.min()[a], self.max()[a], self.step(a)) {
                (lo, hi, _) if lo == hi => lo.to_string(),
                (lo, hi, 1) => format!("{lo}..={hi}"),
                (lo, hi, step) => format!("{lo}..={hi} (step {step})"),
            })
            .collect();
        format!("[{}]", dims.join(", "))
    }
}

/// How an image is fitted to the tensor's height and width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResizeMode {
    /// Scale each axis independently to the tensor size (aspect ratio not kept).
    #[default]
    Stretch,
    /// Keep the aspect ratio: scale to fit inside, centre, fill the rest with `pad`
    /// (YOLO-style detectors, OCR).
    Letterbox,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LetterboxAnchor {
    #[default]
    Center,
    TopLeft,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    /// [height, width] the image is resized to (the tensor's height and width).
    pub resize: [usize; 2],
    #[serde(default)]
    pub resize_mode: ResizeMode,
    /// Where a letterboxed image sits: centred (default; Ultralytics, PaddleDetection) or
    /// in the top-left corner with all padding right and below (nudenet, some OCR).
    #[serde(default)]
    pub letterbox_anchor: LetterboxAnchor,
    /// Letterbox fill, in pixel units of an 8-bit image (0-255) before normalisation.
    #[serde(default)]
    pub pad: f32,
    pub color: Color,
    pub scale: f32,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Classification,
    /// Read by the package's `[detection]` head: boxes, scores and classes after NMS.
    Detection,
    Raw,
}

/// `[detection]`: how the `task = "detection"` outputs become boxes (docs/model-package.md,
/// "Detection"). Boxes are reported in the source image's pixels, the preprocessing's
/// resize or letterbox undone.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectionSpec {
    pub head: DetectionHead,
    /// The outputs the head reads, by name, in the order the head defines (see
    /// [`DetectionHead`]). Each must be an output with `task = "detection"`.
    pub outputs: Vec<String>,
    /// Number of object classes the head scores.
    pub classes: usize,
    /// One label per class (a package file), for the reported `label`.
    pub labels: Option<String>,
    /// How a box's four numbers are laid out (`yolo` and `boxes-scores`; PicoDet's
    /// distances decode to corners). Default `cxcywh` for `yolo`, `xyxy` otherwise.
    pub box_format: Option<BoxFormat>,
    /// `boxes-scores`: box coordinates are fractions of the tensor's width/height (SSD)
    /// rather than tensor pixels.
    #[serde(default)]
    pub normalized: bool,
    /// What the class scores are; `logits` go through a sigmoid. Default `probabilities`.
    #[serde(default)]
    pub score_activation: ScoreActivation,
    /// Detections scoring below this are dropped before NMS (default 0.25).
    #[serde(default = "default_score_threshold")]
    pub score_threshold: f32,
    /// NMS drops a box overlapping a better one of its class by more than this IoU
    /// (default 0.45).
    #[serde(default = "default_iou_threshold")]
    pub iou_threshold: f32,
    /// At most this many detections, best first (default 100).
    #[serde(default = "default_max_detections")]
    pub max_detections: usize,
    /// NMS across classes rather than per class (default false).
    #[serde(default)]
    pub class_agnostic: bool,
    /// `picodet`: the feature strides, one per (scores, distances) output pair.
    pub strides: Option<Vec<usize>>,
}

fn default_score_threshold() -> f32 {
    0.25
}
fn default_iou_threshold() -> f32 {
    0.45
}
fn default_max_detections() -> usize {
    100
}

/// Detection head layouts beltbox decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DetectionHead {
    /// One output of candidates, `[1, 4 + classes, N]` (YOLOv8 and later) or
    /// `[1, N, 4 + classes]`. Boxes in tensor pixels.
    Yolo,
    /// YOLOv5/v7: `[1, N, 5 + classes]` (or transposed), an objectness column after the
    /// box; a candidate's score is objectness x class score.
    YoloObjectness,
    /// Two outputs, decoded boxes `[1, N, 4]` then scores `[1, N, classes]` or
    /// `[1, classes, N]` (SSD / PicoDet exported with its decoder).
    BoxesScores,
    /// PicoDet / GFL without its decoder: for each stride a scores output
    /// `[1, H*W, classes]`, then for each stride a distance output `[1, H*W, 4*(reg_max+1)]`
    /// (all scores outputs first, strides in `strides` order).
    Picodet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BoxFormat {
    /// Centre x, centre y, width, height.
    Cxcywh,
    /// Left, top, right, bottom.
    Xyxy,
    /// Top, left, bottom, right (TensorFlow's order).
    Yxyx,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScoreActivation {
    #[default]
    Probabilities,
    Logits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scores {
    Logits,
    Probabilities,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub task: Task,
    pub labels: Option<String>,
    /// What the values are; required for `classification`, meaningless for `raw`.
    pub scores: Option<Scores>,
    pub quantization: Option<QuantParams>,
    /// Golden tolerance for this output (default: `[golden]`'s `atol` / `rtol`).
    pub atol: Option<f32>,
    pub rtol: Option<f32>,
    /// Fraction of elements that must be within tolerance (default 1: all of them). For
    /// maps where a reference tie amplified by a sigmoid may flip a few elements.
    pub within: Option<f32>,
}

impl OutputSpec {
    /// `scores`, which validation guarantees for classification outputs.
    pub fn scores(&self) -> Scores {
        self.scores.unwrap_or(Scores::Probabilities)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budgets {
    pub ram_mib: u64,
    pub p95_ms: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Accuracy {
    pub heldout_top1: f64,
    pub heldout_samples: u64,
    pub dataset: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Golden {
    /// Default tolerances for outputs without their own.
    #[serde(default)]
    pub atol: f32,
    #[serde(default)]
    pub rtol: f32,
    pub samples: Vec<GoldenSample>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawGoldenSample")]
pub struct GoldenSample {
    /// The input files (image or tensor), one per `[[inputs]]` entry, in that order.
    pub inputs: Vec<String>,
    /// Reference outputs, one per `[[outputs]]` entry, in that order.
    pub outputs: Vec<String>,
    /// Expected top-1 of `outputs[0]` (classification only).
    pub label: Option<usize>,
}

/// `input`/`output` (format 1) or `inputs`/`outputs` lists (format 2).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGoldenSample {
    input: Option<String>,
    inputs: Option<Vec<String>>,
    output: Option<String>,
    outputs: Option<Vec<String>>,
    label: Option<usize>,
}

impl TryFrom<RawGoldenSample> for GoldenSample {
    type Error = String;

    fn try_from(r: RawGoldenSample) -> Result<GoldenSample, String> {
        let inputs = match (r.input, r.inputs) {
            (Some(i), None) => vec![i],
            (None, Some(v)) if !v.is_empty() => v,
            _ => {
                return Err(
                    "a golden sample needs `inputs = [file, ...]` (or `input = file`)".into(),
                )
            }
        };
        let outputs = match (r.output, r.outputs) {
            (Some(o), None) => vec![o],
            (None, Some(v)) if !v.is_empty() => v,
            _ => {
                return Err(
                    "a golden sample needs `outputs = [file, ...]` (or `output = file`)".into(),
                )
            }
        };
        Ok(GoldenSample {
            inputs,
            outputs,
            label: r.label,
        })
    }
}

/// Semantic version MAJOR.MINOR.PATCH; ordered, so OTA can insist on monotonic versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

impl std::str::FromStr for Version {
    type Err = String;
    fn from_str(s: &str) -> Result<Version, String> {
        let parts: Vec<&str> = s.split('.').collect();
        let bad = || format!("`{s}` is not a MAJOR.MINOR.PATCH version");
        if parts.len() != 3 {
            return Err(bad());
        }
        let mut n = [0u64; 3];
        for (slot, part) in n.iter_mut().zip(&parts) {
            // No signs, no leading zeros (semver), digits only.
            if part.is_empty()
                || !part.bytes().all(|b| b.is_ascii_digit())
                || (part.len() > 1 && part.starts_with('0'))
            {
                return Err(bad());
            }
            *slot = part.parse().map_err(|_| bad())?;
        }
        Ok(Version {
            major: n[0],
            minor: n[1],
            patch: n[2],
        })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Version, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Manifest {
    /// Parses and validates manifest text; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Manifest, ManifestError> {
        let path = origin.display().to_string();
        let manifest: Manifest = toml::from_str(text).map_err(|e| ManifestError::Parse {
            path: path.clone(),
            // toml's message spans several lines with a source excerpt; keep one sentence.
            message: one_line(&e.to_string()),
        })?;
        manifest.validate(&path)?;
        Ok(manifest)
    }

    /// All files the manifest refers to (model, labels, golden inputs and outputs).
    pub fn referenced_files(&self) -> Vec<(&'static str, &str)> {
        let mut v = vec![("model.file", self.model.file.as_str())];
        for o in &self.outputs {
            if let Some(l) = &o.labels {
                v.push(("outputs.labels", l.as_str()));
            }
        }
        if let Some(l) = self.detection.as_ref().and_then(|d| d.labels.as_ref()) {
            v.push(("detection.labels", l.as_str()));
        }
        for s in &self.golden.samples {
            for i in &s.inputs {
                v.push(("golden.samples.inputs", i.as_str()));
            }
            for o in &s.outputs {
                v.push(("golden.samples.outputs", o.as_str()));
            }
        }
        v
    }

    fn validate(&self, path: &str) -> Result<(), ManifestError> {
        let invalid = |field: &str, message: String| ManifestError::Invalid {
            path: path.to_string(),
            field: field.to_string(),
            message,
        };
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !self.name.starts_with('-');
        if !name_ok {
            return Err(invalid(
                "name",
                format!(
                    "`{}` must be 1-64 chars of [a-z0-9-], not starting with `-`",
                    self.name
                ),
            ));
        }
        if let Some(floor) = self.accuracy_floor {
            if !(0.0..=1.0).contains(&floor) {
                return Err(invalid("accuracy_floor", "must be within 0..=1".into()));
            }
        }
        if let Some(t) = self.low_confidence {
            if !(0.0..=1.0).contains(&t) {
                return Err(invalid("low_confidence", "must be within 0..=1".into()));
            }
        }
        let expected_ext = match self.model.format {
            Format::Onnx => ".onnx",
            Format::Tflite => ".tflite",
        };
        if !self.model.file.ends_with(expected_ext) {
            return Err(invalid(
                "model.file",
                format!(
                    "`{}` does not end in {expected_ext} as format `{}` requires",
                    self.model.file, self.model.format
                ),
            ));
        }
        if self.inputs.is_empty() {
            return Err(invalid("inputs", "at least one input is required".into()));
        }
        if self.inputs.len() > MAX_INPUTS {
            return Err(invalid(
                "inputs",
                format!(
                    "{} inputs; at most {MAX_INPUTS} are supported",
                    self.inputs.len()
                ),
            ));
        }
        let mut total = 0usize;
        for (i, inp) in self.inputs.iter().enumerate() {
            if self.inputs[..i].iter().any(|o| o.name == inp.name) {
                return Err(invalid(
                    "inputs.name",
                    format!("`{}` names two inputs", inp.name),
                ));
            }
            if inp.shape.is_empty() || inp.shape.contains(&0) {
                return Err(invalid(
                    "input.shape",
                    format!(
                        "`{}`: {:?} must be non-empty with non-zero dimensions",
                        inp.name, inp.shape
                    ),
                ));
            }
            let volume = inp.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            if volume.is_none_or(|v| v > 1 << 30) {
                return Err(invalid(
                    "input.shape",
                    format!(
                        "`{}`: {:?} has more than 2^30 elements",
                        inp.name, inp.shape
                    ),
                ));
            }
            check_range(&invalid, inp)?;
            if inp.is_dynamic() && self.model.format == Format::Tflite {
                return Err(invalid(
                    "inputs.max_shape",
                    format!(
                        "`{}`: dynamic dimensions are supported for ONNX models; a TFLite \
                         model runs at `shape`",
                        inp.name
                    ),
                ));
            }
            if let Some(pre) = &inp.preprocess {
                if inp.is_dynamic() {
                    return Err(invalid(
                        "inputs.max_shape",
                        format!(
                            "`{}`: an image input is resized to `shape`, so it cannot take a \
                             range; drop `preprocess` to feed tensors of varying shape",
                            inp.name
                        ),
                    ));
                }
                if inp.shape.len() != 4 {
                    return Err(invalid(
                        "input.shape",
                        format!(
                            "{:?}: an image input (with `preprocess`) must be 4-D, batch first; \
                             drop `preprocess` to feed tensors of any rank",
                            inp.shape
                        ),
                    ));
                }
                if inp.shape[0] != 1 {
                    return Err(invalid("input.shape", "batch dimension must be 1".into()));
                }
                if !(inp.dtype.is_float() || inp.dtype.is_quantized()) {
                    return Err(invalid(
                        "input.preprocess",
                        format!(
                            "`{}` is {}: an image can only become a float, int8 or uint8 tensor",
                            inp.name, inp.dtype
                        ),
                    ));
                }
                check_preprocess(&invalid, inp, pre)?;
            }
            check_quant(&invalid, "input.quantization", inp.dtype, inp.quantization)?;
            total = total.saturating_add(inp.max_volume());
        }
        if total > 1 << 30 {
            return Err(invalid(
                "inputs.shape",
                "the inputs together have more than 2^30 elements".into(),
            ));
        }
        if self.outputs.is_empty() {
            return Err(invalid("outputs", "at least one output is required".into()));
        }
        for o in &self.outputs {
            if o.shape.is_empty() || o.shape.contains(&0) {
                return Err(invalid(
                    "outputs.shape",
                    format!("{:?} must be non-empty with non-zero dims", o.shape),
                ));
            }
            check_quant(&invalid, "outputs.quantization", o.dtype, o.quantization)?;
            if o.labels.is_some() && o.task != Task::Classification {
                return Err(invalid(
                    "outputs.labels",
                    "labels only make sense for task = \"classification\"".into(),
                ));
            }
            if o.task == Task::Classification && o.scores.is_none() {
                return Err(invalid(
                    "outputs.scores",
                    "is required for task = \"classification\" (\"logits\" or \"probabilities\")"
                        .into(),
                ));
            }
            let tol_ok = |t: Option<f32>| t.is_none_or(|t| t.is_finite() && t >= 0.0);
            if !tol_ok(o.atol) || !tol_ok(o.rtol) {
                return Err(invalid(
                    "outputs.atol",
                    format!("`{}`: atol and rtol must be finite and >= 0", o.name),
                ));
            }
            if o.within.is_some_and(|w| !(w > 0.0 && w <= 1.0)) {
                return Err(invalid(
                    "outputs.within",
                    format!("`{}`: must be a fraction in (0, 1]", o.name),
                ));
            }
        }
        check_detection(&invalid, self)?;
        if self.budgets.ram_mib == 0 {
            return Err(invalid("budgets.ram_mib", "must be positive".into()));
        }
        if !(self.budgets.p95_ms.is_finite() && self.budgets.p95_ms > 0.0) {
            return Err(invalid(
                "budgets.p95_ms",
                "must be a positive number of milliseconds".into(),
            ));
        }
        let g = &self.golden;
        if g.samples.is_empty() {
            return Err(invalid(
                "golden.samples",
                "at least one golden sample is required".into(),
            ));
        }
        if !(g.atol.is_finite() && g.atol >= 0.0 && g.rtol.is_finite() && g.rtol >= 0.0) {
            return Err(invalid(
                "golden",
                "atol and rtol must be finite and >= 0".into(),
            ));
        }
        let classes = self.outputs[0].shape.iter().product::<usize>();
        for s in &g.samples {
            let first = s.inputs.first().map(String::as_str).unwrap_or("");
            if s.inputs.len() != self.inputs.len() {
                let names: Vec<&str> = self.inputs.iter().map(|i| i.name.as_str()).collect();
                return Err(invalid(
                    "golden.samples.inputs",
                    format!(
                        "sample `{first}` has {} input file(s) but the model has {} input(s) \
                         ({}): list one file per input, in that order",
                        s.inputs.len(),
                        self.inputs.len(),
                        names.join(", ")
                    ),
                ));
            }
            if s.outputs.len() != self.outputs.len() {
                return Err(invalid(
                    "golden.samples.outputs",
                    format!(
                        "sample `{}` has {} reference file(s) but the model has {} output(s)",
                        first,
                        s.outputs.len(),
                        self.outputs.len()
                    ),
                ));
            }
            let Some(label) = s.label else { continue };
            if self.outputs[0].task != Task::Classification {
                return Err(invalid(
                    "golden.samples.label",
                    "a label is a top-1 class: only for a classification outputs[0]".into(),
                ));
            }
            if label >= classes {
                return Err(invalid(
                    "golden.samples.label",
                    format!("{label} is out of range for an output of {classes} values"),
                ));
            }
        }
        for (field, file) in self.referenced_files() {
            check_relative_path(file).map_err(|m| invalid(field, m))?;
            if !self.files.contains_key(file) {
                return Err(invalid(
                    "files",
                    format!("has no sha256 for `{file}` (named by {field})"),
                ));
            }
        }
        for (file, hash) in &self.files {
            check_relative_path(file).map_err(|m| invalid("files", m))?;
            if hash.len() != 64 || !hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                return Err(invalid(
                    "files",
                    format!("sha256 for `{file}` must be 64 lowercase hex digits"),
                ));
            }
        }
        Ok(())
    }
}

/// `[detection]` against the outputs: present iff some output has `task = "detection"`,
/// naming exactly those outputs, with what its head needs.
fn check_detection(
    invalid: &dyn Fn(&str, String) -> ManifestError,
    m: &Manifest,
) -> Result<(), ManifestError> {
    let detection_outputs: Vec<&OutputSpec> = m
        .outputs
        .iter()
        .filter(|o| o.task == Task::Detection)
        .collect();
    let Some(d) = &m.detection else {
        return match detection_outputs.first() {
            Some(o) => Err(invalid(
                "detection",
                format!(
                    "output `{}` has task = \"detection\" but there is no `[detection]` section \
                     saying how to decode it",
                    o.name
                ),
            )),
            None => Ok(()),
        };
    };
    for name in &d.outputs {
        match m.outputs.iter().find(|o| &o.name == name) {
            None => {
                return Err(invalid(
                    "detection.outputs",
                    format!("`{name}` is not one of the model's `[[outputs]]`"),
                ))
            }
            Some(o) if o.task != Task::Detection => {
                return Err(invalid(
                    "detection.outputs",
                    format!("output `{name}` must have task = \"detection\""),
                ))
            }
            Some(_) => {}
        }
    }
    if let Some(o) = detection_outputs
        .iter()
        .find(|o| !d.outputs.contains(&o.name))
    {
        return Err(invalid(
            "detection.outputs",
            format!("does not list `{}`, which has task = \"detection\"", o.name),
        ));
    }
    let want = match d.head {
        DetectionHead::Yolo | DetectionHead::YoloObjectness => Some(1),
        DetectionHead::BoxesScores => Some(2),
        DetectionHead::Picodet => None,
    };
    match (want, &d.strides) {
        (Some(n), _) if d.outputs.len() != n => {
            return Err(invalid(
                "detection.outputs",
                format!(
                    "head {:?} reads {n} output(s), {} are listed",
                    d.head,
                    d.outputs.len()
                ),
            ))
        }
        (Some(_), Some(_)) => {
            return Err(invalid(
                "detection.strides",
                "only the `picodet` head has strides".into(),
            ))
        }
        (None, None) => {
            return Err(invalid(
                "detection.strides",
                "the `picodet` head needs its feature strides, e.g. [8, 16, 32, 64]".into(),
            ))
        }
        (None, Some(s)) if s.is_empty() || d.outputs.len() != 2 * s.len() => {
            return Err(invalid(
                "detection.outputs",
                format!(
                    "the `picodet` head reads a scores and a distances output per stride: \
                     {} strides need {} outputs, {} are listed",
                    s.len(),
                    2 * s.len(),
                    d.outputs.len()
                ),
            ))
        }
        (None, Some(s)) if s.contains(&0) => {
            return Err(invalid(
                "detection.strides",
                "strides must be positive".into(),
            ))
        }
        _ => {}
    }
    if d.classes == 0 {
        return Err(invalid("detection.classes", "must be at least 1".into()));
    }
    if !(d.score_threshold.is_finite() && (0.0..=1.0).contains(&d.score_threshold)) {
        return Err(invalid(
            "detection.score_threshold",
            format!("{} must be within 0..=1", d.score_threshold),
        ));
    }
    if !(d.iou_threshold.is_finite() && (0.0..=1.0).contains(&d.iou_threshold)) {
        return Err(invalid(
            "detection.iou_threshold",
            format!("{} must be within 0..=1", d.iou_threshold),
        ));
    }
    if d.max_detections == 0 || d.max_detections > 10_000 {
        return Err(invalid(
            "detection.max_detections",
            format!("{} must be within 1..=10000", d.max_detections),
        ));
    }
    Ok(())
}

/// A declared range: both ends given, same rank as `shape`, `min <= shape <= max`, no
/// zero, and the largest shape within the element limit.
fn check_range(
    invalid: &dyn Fn(&str, String) -> ManifestError,
    inp: &InputSpec,
) -> Result<(), ManifestError> {
    let (lo, hi) = match (&inp.min_shape, &inp.max_shape) {
        (None, None) if inp.shape_step.is_some() => {
            return Err(invalid(
                "inputs.shape_step",
                format!(
                    "`{}`: a step needs a range (`min_shape` and `max_shape`)",
                    inp.name
                ),
            ))
        }
        (None, None) => return Ok(()),
        (Some(lo), Some(hi)) => (lo, hi),
        _ => {
            return Err(invalid(
                "inputs.min_shape",
                format!(
                    "`{}`: give both `min_shape` and `max_shape` (or neither)",
                    inp.name
                ),
            ))
        }
    };
    let rank = inp.shape.len();
    let step_rank = inp.shape_step.as_ref().map_or(rank, Vec::len);
    if lo.len() != rank || hi.len() != rank || step_rank != rank {
        return Err(invalid(
            "inputs.max_shape",
            format!(
                "`{}`: min_shape {lo:?}, max_shape {hi:?} and shape_step must have the rank \
                 of shape {:?}",
                inp.name, inp.shape
            ),
        ));
    }
    for a in 0..rank {
        if lo[a] == 0 || lo[a] > inp.shape[a] || inp.shape[a] > hi[a] {
            return Err(invalid(
                "inputs.max_shape",
                format!(
                    "`{}` axis {a}: need 1 <= min_shape ({}) <= shape ({}) <= max_shape ({})",
                    inp.name, lo[a], inp.shape[a], hi[a]
                ),
            ));
        }
        let step = inp.shape_step.as_ref().map_or(1, |s| s[a]);
        if step == 0 || [lo[a], inp.shape[a], hi[a]].iter().any(|d| d % step != 0) {
            return Err(invalid(
                "inputs.shape_step",
                format!(
                    "`{}` axis {a}: min_shape ({}), shape ({}) and max_shape ({}) must be \
                     multiples of the step ({step})",
                    inp.name, lo[a], inp.shape[a], hi[a]
                ),
            ));
        }
    }
    let volume = hi.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if volume.is_none_or(|v| v > 1 << 30) {
        return Err(invalid(
            "inputs.max_shape",
            format!("`{}`: {hi:?} has more than 2^30 elements", inp.name),
        ));
    }
    Ok(())
}

/// An image input's preprocessing against its tensor shape.
fn check_preprocess(
    invalid: &dyn Fn(&str, String) -> ManifestError,
    inp: &InputSpec,
    pre: &Preprocess,
) -> Result<(), ManifestError> {
    let (h, w, c) = inp.hwc();
    if pre.resize != [h, w] {
        return Err(invalid(
            "input.preprocess.resize",
            format!(
                "{:?} does not match the input shape's height/width [{h}, {w}]",
                pre.resize
            ),
        ));
    }
    if pre.color.channels() != c {
        return Err(invalid(
            "input.preprocess.color",
            format!(
                "has {} channel(s) but input.shape has {c}",
                pre.color.channels()
            ),
        ));
    }
    if pre.mean.len() != c {
        return Err(invalid(
            "input.preprocess.mean",
            format!("needs {c} value(s), has {}", pre.mean.len()),
        ));
    }
    if pre.std.len() != c {
        return Err(invalid(
            "input.preprocess.std",
            format!("needs {c} value(s), has {}", pre.std.len()),
        ));
    }
    if pre.std.iter().any(|s| !s.is_finite() || *s == 0.0) {
        return Err(invalid(
            "input.preprocess.std",
            "values must be finite and non-zero".into(),
        ));
    }
    if !pre.scale.is_finite() || pre.mean.iter().any(|m| !m.is_finite()) {
        return Err(invalid(
            "input.preprocess",
            "scale and mean must be finite".into(),
        ));
    }
    if !(pre.pad.is_finite() && (0.0..=255.0).contains(&pre.pad)) {
        return Err(invalid(
            "input.preprocess.pad",
            format!("{} must be a pixel value in 0..=255", pre.pad),
        ));
    }
    Ok(())
}

fn check_quant(
    invalid: &dyn Fn(&str, String) -> ManifestError,
    field: &str,
    dtype: DType,
    q: Option<QuantParams>,
) -> Result<(), ManifestError> {
    match (dtype.is_quantized(), q) {
        (true, None) => Err(invalid(field, format!("is required for dtype {dtype}"))),
        (false, Some(_)) => Err(invalid(field, format!("is not allowed for dtype {dtype}"))),
        (true, Some(q)) => {
            let range = match dtype {
                DType::Int8 => -128..=127,
                _ => 0..=255,
            };
            if !(q.scale.is_finite() && q.scale > 0.0) {
                Err(invalid(
                    field,
                    format!("scale {} must be finite and > 0", q.scale),
                ))
            } else if !range.contains(&q.zero_point) {
                Err(invalid(
                    field,
                    format!("zero_point {} is outside the {dtype} range", q.zero_point),
                ))
            } else {
                Ok(())
            }
        }
        (false, None) => Ok(()),
    }
}

/// Package-relative paths only: a manifest must not reach outside its directory.
fn check_relative_path(p: &str) -> Result<(), String> {
    let bad = p.is_empty()
        || p.starts_with('/')
        || p.contains('\\')
        || p.split('/').any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        Err(format!(
            "`{p}` must be a relative path inside the package (no `..`, no leading `/`)"
        ))
    } else {
        Ok(())
    }
}

fn one_line(s: &str) -> String {
    // toml errors look like "TOML parse error at line 3, column 1\n  |\n3 | x = 1\n  | ^\nunknown field `x`, expected ...".
    let lines: Vec<&str> = s.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let location = lines.first().copied().unwrap_or("");
    let message = lines.last().copied().unwrap_or("");
    if location == message {
        message.to_string()
    } else {
        format!(
            "{message} ({})",
            location.trim_start_matches("TOML parse error ").trim()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_parse_and_order() {
        let a: Version = "1.2.3".parse().unwrap();
        let b: Version = "1.10.0".parse().unwrap();
        assert!(a < b);
        assert_eq!(a.to_string(), "1.2.3");
        for bad in [
            "1.2", "1.2.3.4", "01.2.3", "1.-2.3", "a.b.c", "", "1..3", "+1.2.3",
        ] {
            assert!(bad.parse::<Version>().is_err(), "{bad} accepted");
        }
    }

    const REAL: &str = include_str!("../../../models/digits-int8-tflite/manifest.toml");

    #[test]
    fn real_manifest_parses() {
        let m = Manifest::parse(REAL, Path::new("manifest.toml")).unwrap();
        assert_eq!(m.name, "digits-int8-tflite");
        assert_eq!(m.inputs[0].hwc(), (8, 8, 1));
        assert_eq!(m.golden.samples.len(), 8);
    }

    #[test]
    fn cross_field_errors_name_the_field() {
        let cases = [
            (
                "zero_point = -128",
                "zero_point = 300",
                "input.quantization",
            ),
            ("mean = [0.0]", "mean = [0.0, 0.0]", "input.preprocess.mean"),
            (
                "file = \"model.tflite\"",
                "file = \"../model.tflite\"",
                "model.file",
            ),
            ("label = 7", "label = 10", "golden.samples.label"),
            ("version = \"1.0.0\"", "version = \"1.0\"", "version"),
            ("ram_mib = 64", "ram_mib = 0", "budgets.ram_mib"),
        ];
        for (from, to, field) in cases {
            assert!(REAL.contains(from), "{from}");
            let err =
                Manifest::parse(&REAL.replacen(from, to, 1), Path::new("m.toml")).unwrap_err();
            assert!(err.to_string().contains(field), "{to}: {err}");
        }
        let unlisted = REAL.replace("\"labels.txt\" = ", "\"other.txt\" = ");
        let err = Manifest::parse(&unlisted, Path::new("m.toml")).unwrap_err();
        assert!(err.to_string().contains("labels.txt"), "{err}");
    }

    /// An ONNX tensor-input manifest whose input block is `input`.
    fn with_input(input: &str) -> String {
        format!(
            "name = \"r\"\nversion = \"1.0.0\"\ndescription = \"d\"\n\
             [model]\nfile = \"m.onnx\"\nformat = \"onnx\"\nprecision = \"fp32\"\n\
             [[inputs]]\nname = \"x\"\ndtype = \"float32\"\n{input}\n\
             [[outputs]]\nname = \"y\"\nshape = [1, 4]\ndtype = \"float32\"\ntask = \"raw\"\n\
             [budgets]\nram_mib = 64\np95_ms = 50.0\n[golden]\natol = 0.0\n\
             [[golden.samples]]\ninputs = [\"x.npy\"]\noutputs = [\"y.npy\"]\n\
             [files]\n\"m.onnx\" = \"{h}\"\n\"x.npy\" = \"{h}\"\n\"y.npy\" = \"{h}\"\n",
            h = "0".repeat(64)
        )
    }

    #[test]
    fn a_range_accepts_shapes_within_it_and_its_steps() {
        let m = Manifest::parse(
            &with_input(
                "shape = [1, 3, 64, 96]\nmin_shape = [1, 3, 32, 32]\n\
                 max_shape = [4, 3, 640, 640]\nshape_step = [1, 1, 32, 32]",
            ),
            Path::new("m.toml"),
        )
        .unwrap();
        let x = &m.inputs[0];
        assert!(x.is_dynamic());
        assert_eq!(x.dynamic_axes().collect::<Vec<_>>(), vec![0, 2, 3]);
        assert_eq!(x.max(), &[4, 3, 640, 640]);
        assert_eq!(
            x.shape_range(),
            "[1..=4, 3, 32..=640 (step 32), 32..=640 (step 32)]"
        );
        for ok in [[1, 3, 64, 96], [4, 3, 32, 640], [2, 3, 640, 32]] {
            assert!(x.accepts(&ok), "{ok:?}");
        }
        for bad in [
            &[1, 3, 64, 100][..], // not a multiple of 32
            &[1, 3, 672, 64],     // over the maximum
            &[5, 3, 64, 64],      // batch over the maximum
            &[1, 1, 64, 64],      // a fixed axis changed
            &[1, 3, 64],          // rank
        ] {
            assert!(!x.accepts(bad), "{bad:?}");
        }
        // The plan's element count is the largest shape's.
        assert_eq!(x.max_volume(), 4 * 3 * 640 * 640);
        assert_eq!(x.hwc(), (1, 4 * 3 * 640 * 640, 1));
    }

    #[test]
    fn bad_ranges_are_refused_naming_the_field() {
        for (input, needle) in [
            ("shape = [1, 8]\nmin_shape = [1, 2]", "give both"),
            ("shape = [1, 8]\nmax_shape = [1, 9]", "give both"),
            (
                "shape = [1, 8]\nshape_step = [1, 2]",
                "a step needs a range",
            ),
            (
                "shape = [1, 8]\nmin_shape = [1, 2, 3]\nmax_shape = [1, 9]",
                "rank",
            ),
            (
                "shape = [1, 8]\nmin_shape = [1, 9]\nmax_shape = [1, 16]",
                "axis 1",
            ),
            (
                "shape = [1, 8]\nmin_shape = [1, 2]\nmax_shape = [1, 4]",
                "axis 1",
            ),
            (
                "shape = [1, 8]\nmin_shape = [0, 2]\nmax_shape = [1, 9]",
                "axis 0",
            ),
            (
                "shape = [1, 8]\nmin_shape = [1, 4]\nmax_shape = [1, 12]\nshape_step = [1, 8]",
                "multiples of the step",
            ),
            (
                "shape = [1, 8]\nmin_shape = [1, 8]\nmax_shape = [1, 16]\nshape_step = [1, 0]",
                "multiples of the step",
            ),
            (
                "shape = [1, 8]\nmin_shape = [1, 8]\nmax_shape = [1, 4294967296]",
                "2^30",
            ),
        ] {
            let err = Manifest::parse(&with_input(input), Path::new("m.toml")).unwrap_err();
            assert!(err.to_string().contains(needle), "{input}: {err}");
        }
        // A TFLite model runs at `shape`; an image input is resized to `shape`.
        let tflite = REAL.replacen(
            "shape = [1, 8, 8, 1]",
            "shape = [1, 8, 8, 1]\nmin_shape = [1, 4, 4, 1]\nmax_shape = [1, 8, 8, 1]",
            1,
        );
        let err = Manifest::parse(&tflite, Path::new("m.toml")).unwrap_err();
        assert!(err.to_string().contains("TFLite"), "{err}");
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics_on_arbitrary_text(text in ".{0,400}") {
            let _ = Manifest::parse(&text, Path::new("m.toml"));
        }

        #[test]
        fn parse_never_panics_on_mutated_manifest(at in 0usize..3000, len in 0usize..40, junk in ".{0,12}") {
            let at = at.min(REAL.len());
            let end = (at + len).min(REAL.len());
            if REAL.is_char_boundary(at) && REAL.is_char_boundary(end) {
                let text = format!("{}{}{}", &REAL[..at], junk, &REAL[end..]);
                let _ = Manifest::parse(&text, Path::new("m.toml"));
            }
        }
    }

    #[test]
    fn relative_paths() {
        assert!(check_relative_path("golden/000.pgm").is_ok());
        for bad in ["/etc/passwd", "../x", "a/../b", "a//b", "", "./a", "a\\b"] {
            assert!(check_relative_path(bad).is_err(), "{bad} accepted");
        }
    }
}
