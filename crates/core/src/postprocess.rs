//! Model output -> answer: dequantise, softmax where the model emits logits, top-k with labels.

use serde::Serialize;

use crate::manifest::{OutputSpec, Scores};
use crate::tensor::Tensor;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Class {
    pub index: usize,
    pub label: String,
    pub score: f32,
}

/// Top-k classes of a classification output, best first. Ties keep the lower index first
/// (the same rule as numpy's argmax, so golden labels compare stably).
pub fn classify(out: &Tensor, spec: &OutputSpec, labels: &[String], k: usize) -> Vec<Class> {
    let values = out.to_f32();
    let scores = match spec.scores() {
        Scores::Logits => softmax(&values),
        Scores::Probabilities => values,
    };
    top_k(&scores, k)
        .into_iter()
        .map(|(index, score)| Class {
            index,
            label: labels
                .get(index)
                .cloned()
                .unwrap_or_else(|| index.to_string()),
            score,
        })
        .collect()
}

pub fn softmax(x: &[f32]) -> Vec<f32> {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = x.iter().map(|&v| (v - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|&e| e / sum).collect()
}

/// Indices of the k largest values; NaN sorts last.
pub fn top_k(x: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| {
        x[b].partial_cmp(&x[a])
            .unwrap_or_else(|| x[a].is_nan().cmp(&x[b].is_nan()))
            .then(a.cmp(&b))
    });
    idx.truncate(k);
    idx.into_iter().map(|i| (i, x[i])).collect()
}

pub fn argmax(x: &[f32]) -> usize {
    top_k(x, 1).first().map(|p| p.0).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_is_stable() {
        let p = softmax(&[1000.0, 1000.0, 998.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((p[0] - p[1]).abs() < 1e-7 && p[0] > p[2]);
    }

    #[test]
    fn top_k_orders_and_breaks_ties_by_index() {
        assert_eq!(
            top_k(&[0.1, 0.7, 0.7, f32::NAN, 0.2], 3),
            vec![(1, 0.7), (2, 0.7), (4, 0.2)]
        );
        assert_eq!(argmax(&[3.0, 1.0, 3.0]), 0);
    }
}
