//! Golden self-check: every package ships inputs and the reference runtime's outputs
//! (ONNX Runtime or the TFLite interpreter). A backend that cannot reproduce them within
//! the manifest's tolerance, or that changes any top-1, is refused.

use serde::Serialize;

use super::Model;
use crate::npy;
use crate::postprocess::argmax;
use crate::preprocess::{self, InputKind};

#[derive(Debug, thiserror::Error)]
pub enum GoldenError {
    #[error("{model}: golden sample {file}: {message}")]
    Sample {
        model: String,
        file: String,
        message: String,
    },
    #[error("{model}: golden self-check failed on {file}: max |diff| {max_diff:.6} exceeds tolerance {tolerance:.6} (top-1 {top1}, expected {label}); this runtime computes the model wrongly, refusing it")]
    Mismatch {
        model: String,
        file: String,
        max_diff: f32,
        tolerance: f32,
        top1: usize,
        label: usize,
    },
    #[error("{model}: golden self-check failed on {file}: top-1 is {top1} but the reference says {label}; refusing the model")]
    Top1 {
        model: String,
        file: String,
        top1: usize,
        label: usize,
    },
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct GoldenReport {
    pub samples: usize,
    pub passed: usize,
    /// Worst |ours - reference| over all samples, dequantised.
    pub max_abs_diff: f32,
    /// Worst diff as a fraction of the allowed tolerance (<= 1 passes).
    pub worst_ratio: f32,
}

pub fn self_check(model: &Model) -> Result<GoldenReport, super::ModelError> {
    let m = model.manifest();
    let out_spec = &m.outputs[0];
    let mut report = GoldenReport {
        samples: m.golden.samples.len(),
        ..Default::default()
    };
    for s in &m.golden.samples {
        let sample_err = |message: String| GoldenError::Sample {
            model: m.name.clone(),
            file: s.input.clone(),
            message,
        };
        let input_bytes = model.package.read(&s.input)?;
        let input =
            preprocess::prepare(&input_bytes, InputKind::from_file_name(&s.input), &m.input)
                .map_err(|e| sample_err(e.to_string()))?;
        let outputs = model.run_tensor(&input)?;
        let ours = outputs[0].to_f32();
        let mut reference = npy::parse(&model.package.read(&s.output)?)
            .map_err(|e| sample_err(format!("{}: {e}", s.output)))?;
        if reference.dtype() != out_spec.dtype || reference.len() != ours.len() {
            return Err(sample_err(format!(
                "{} holds {} {:?} but outputs[0] is {} {:?}",
                s.output,
                reference.dtype(),
                reference.shape,
                out_spec.dtype,
                out_spec.shape
            ))
            .into());
        }
        reference.quant = out_spec.quantization;
        let reference = reference.to_f32();
        let peak = reference.iter().fold(0f32, |a, v| a.max(v.abs()));
        let tolerance = m.golden.atol + m.golden.rtol * peak;
        let max_diff = ours
            .iter()
            .zip(&reference)
            .map(|(a, b)| {
                if a.is_finite() {
                    (a - b).abs()
                } else {
                    f32::INFINITY
                }
            })
            .fold(0f32, f32::max);
        let top1 = argmax(&ours);
        // A tiny slack absorbs float rounding in the comparison itself.
        if max_diff > tolerance * (1.0 + 1e-5) + 1e-7 {
            return Err(GoldenError::Mismatch {
                model: m.name.clone(),
                file: s.input.clone(),
                max_diff,
                tolerance,
                top1,
                label: s.label,
            }
            .into());
        }
        if top1 != s.label {
            return Err(GoldenError::Top1 {
                model: m.name.clone(),
                file: s.input.clone(),
                top1,
                label: s.label,
            }
            .into());
        }
        report.max_abs_diff = report.max_abs_diff.max(max_diff);
        if tolerance > 0.0 {
            report.worst_ratio = report.worst_ratio.max(max_diff / tolerance);
        }
        report.passed += 1;
    }
    Ok(report)
}
