//! Golden self-check: every package ships inputs and the reference runtime's outputs
//! (ONNX Runtime or the TFLite interpreter). Every output of every sample is compared,
//! each with its own tolerance (`outputs.atol`/`rtol`, defaulting to `[golden]`'s), and for
//! maps a stated fraction (`outputs.within`) may be enough. A sample with a `label` must
//! also keep its top-1 class. A backend that cannot reproduce them is refused.

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
    #[error("{model}: golden self-check failed on {file}, output `{output}`: {outside} of {total} values differ from the reference by more than {tolerance:.6} (worst {max_diff:.6}; the package allows {allowed}); this runtime computes the model wrongly, refusing it")]
    Mismatch {
        model: String,
        file: String,
        output: String,
        max_diff: f32,
        tolerance: f32,
        outside: usize,
        total: usize,
        allowed: usize,
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
    /// Worst |ours - reference| over all samples and outputs, dequantised.
    pub max_abs_diff: f32,
    /// Worst diff as a fraction of the allowed tolerance (<= 1 passes; with `within`, the
    /// elements allowed outside are not counted).
    pub worst_ratio: f32,
}

/// How one output of one sample compares with its reference.
struct Comparison {
    max_diff: f32,
    tolerance: f32,
    /// Elements beyond the tolerance (a non-finite value of ours always is).
    outside: usize,
    /// The worst diff among the elements the `within` rule requires to match.
    required_max: f32,
}

/// `|ours - reference| <= atol + rtol * max|reference|` element by element, with a tiny
/// slack for float rounding in the comparison itself.
fn compare(ours: &[f32], reference: &[f32], atol: f32, rtol: f32, allowed: usize) -> Comparison {
    let peak = reference.iter().fold(0f32, |a, v| a.max(v.abs()));
    let tolerance = atol + rtol * peak;
    let limit = tolerance * (1.0 + 1e-5) + 1e-7;
    let mut diffs: Vec<f32> = ours
        .iter()
        .zip(reference)
        .map(|(a, b)| {
            if a.is_finite() {
                (a - b).abs()
            } else {
                f32::INFINITY
            }
        })
        .collect();
    let outside = diffs.iter().filter(|d| d.is_nan() || **d > limit).count();
    let max_diff = diffs.iter().copied().fold(0f32, f32::max);
    // In descending order the first `allowed` may be off and the next is the worst that
    // counts: a selection, not a sort (outputs can hold hundreds of thousands of values,
    // and this runs on every load).
    let required_max = if allowed == 0 {
        max_diff
    } else if allowed < diffs.len() {
        *diffs
            .select_nth_unstable_by(allowed, |a, b| b.total_cmp(a))
            .1
    } else {
        0.0
    };
    Comparison {
        max_diff,
        tolerance,
        outside,
        required_max,
    }
}

pub fn self_check(model: &Model) -> Result<GoldenReport, super::ModelError> {
    let m = model.manifest();
    let mut report = GoldenReport {
        samples: m.golden.samples.len(),
        ..Default::default()
    };
    for s in &m.golden.samples {
        let sample_err = |message: String| GoldenError::Sample {
            model: m.name.clone(),
            file: s.inputs.join(", "),
            message,
        };
        let mut inputs = Vec::with_capacity(m.inputs.len());
        for (file, spec) in s.inputs.iter().zip(&m.inputs) {
            let bytes = model.package.read(file)?;
            let t = preprocess::prepare(&bytes, InputKind::from_file_name(file), spec)
                .map_err(|e| sample_err(format!("{file}: {e}")))?;
            inputs.push(t);
        }
        let outputs = model.run_tensors(&inputs)?;
        if outputs.len() != m.outputs.len() {
            return Err(sample_err(format!(
                "the model produced {} outputs, the manifest lists {}",
                outputs.len(),
                m.outputs.len()
            ))
            .into());
        }
        for ((spec, ours), file) in m.outputs.iter().zip(&outputs).zip(&s.outputs) {
            let ours = ours.to_f32();
            let mut reference = npy::parse(&model.package.read(file)?)
                .map_err(|e| sample_err(format!("{file}: {e}")))?;
            if reference.dtype() != spec.dtype || reference.len() != ours.len() {
                return Err(sample_err(format!(
                    "{file} holds {} {:?} but output `{}` is {} {:?}",
                    reference.dtype(),
                    reference.shape,
                    spec.name,
                    spec.dtype,
                    spec.shape
                ))
                .into());
            }
            reference.quant = spec.quantization;
            let reference = reference.to_f32();
            let atol = spec.atol.unwrap_or(m.golden.atol);
            let rtol = spec.rtol.unwrap_or(m.golden.rtol);
            let within = spec.within.unwrap_or(1.0);
            let allowed = ((1.0 - within as f64) * ours.len() as f64).floor() as usize;
            let c = compare(&ours, &reference, atol, rtol, allowed);
            if c.outside > allowed {
                return Err(GoldenError::Mismatch {
                    model: m.name.clone(),
                    file: s.inputs.join(", "),
                    output: spec.name.clone(),
                    max_diff: c.max_diff,
                    tolerance: c.tolerance,
                    outside: c.outside,
                    total: ours.len(),
                    allowed,
                }
                .into());
            }
            report.max_abs_diff = report.max_abs_diff.max(c.max_diff);
            if c.tolerance > 0.0 {
                report.worst_ratio = report.worst_ratio.max(c.required_max / c.tolerance);
            }
        }
        // A top-1 class only means something for a classification output with a label.
        if let (Some(label), Some(first)) = (s.label, outputs.first()) {
            let top1 = argmax(&first.to_f32());
            if top1 != label {
                return Err(GoldenError::Top1 {
                    model: m.name.clone(),
                    file: s.inputs.join(", "),
                    top1,
                    label,
                }
                .into());
            }
        }
        report.passed += 1;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::compare;

    #[test]
    fn within_allows_exactly_the_stated_number_of_outliers() {
        let reference = [0.0f32; 10];
        let mut ours = [0.0f32; 10];
        ours[3] = 0.9;
        ours[7] = f32::NAN;
        let strict = compare(&ours, &reference, 0.1, 0.0, 0);
        assert_eq!(strict.outside, 2);
        assert_eq!(strict.max_diff, f32::INFINITY);
        let lenient = compare(&ours, &reference, 0.1, 0.0, 2);
        assert_eq!(lenient.required_max, 0.0);
        let one = compare(&ours, &reference, 0.1, 0.0, 1);
        assert!((one.required_max - 0.9).abs() < 1e-6);
    }

    #[test]
    fn rtol_scales_with_the_reference_peak() {
        let c = compare(&[10.5], &[10.0], 0.0, 0.1, 0);
        assert_eq!(c.outside, 0);
        assert!((c.tolerance - 1.0).abs() < 1e-6);
    }
}
