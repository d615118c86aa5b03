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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub version: Version,
    pub description: String,
    pub accuracy_floor: f64,
    pub model: ModelSection,
    pub input: InputSpec,
    pub outputs: Vec<OutputSpec>,
    pub budgets: Budgets,
    pub accuracy: Accuracy,
    pub golden: Golden,
    /// sha256 (lowercase hex) of every file in the package except the manifest itself.
    pub files: BTreeMap<String, String>,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Nchw,
    Nhwc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    Gray,
    Rgb,
}

impl Color {
    pub fn channels(self) -> usize {
        match self {
            Color::Gray => 1,
            Color::Rgb => 3,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub layout: Layout,
    pub preprocess: Preprocess,
    pub quantization: Option<QuantParams>,
}

impl InputSpec {
    /// (height, width, channels) of the tensor, from shape and layout.
    pub fn hwc(&self) -> (usize, usize, usize) {
        let s = &self.shape;
        match self.layout {
            Layout::Nchw => (s[2], s[3], s[1]),
            Layout::Nhwc => (s[1], s[2], s[3]),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    /// [height, width] the image is resized to.
    pub resize: [usize; 2],
    pub color: Color,
    pub scale: f32,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Classification,
    Raw,
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
    pub scores: Scores,
    pub quantization: Option<QuantParams>,
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
    pub atol: f32,
    pub rtol: f32,
    pub samples: Vec<GoldenSample>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenSample {
    pub input: String,
    pub output: String,
    pub label: usize,
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
        for s in &self.golden.samples {
            v.push(("golden.samples.input", s.input.as_str()));
            v.push(("golden.samples.output", s.output.as_str()));
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
        if !(0.0..=1.0).contains(&self.accuracy_floor) {
            return Err(invalid("accuracy_floor", "must be within 0..=1".into()));
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
        let inp = &self.input;
        if inp.shape.len() != 4 || inp.shape.contains(&0) {
            return Err(invalid(
                "input.shape",
                format!(
                    "{:?} must be 4 non-zero dimensions (batch, and image dims per layout)",
                    inp.shape
                ),
            ));
        }
        if inp.shape[0] != 1 {
            return Err(invalid("input.shape", "batch dimension must be 1".into()));
        }
        let (h, w, c) = inp.hwc();
        let pre = &inp.preprocess;
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
        check_quant(&invalid, "input.quantization", inp.dtype, inp.quantization)?;
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
        }
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
            if s.label >= classes {
                return Err(invalid(
                    "golden.samples.label",
                    format!(
                        "{} is out of range for an output of {classes} values",
                        s.label
                    ),
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
        assert_eq!(m.input.hwc(), (8, 8, 1));
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
