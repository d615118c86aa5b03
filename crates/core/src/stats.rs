//! Latency percentiles over recorded samples, one definition for every report (bench, soak,
//! loadgen).
//!
//! Nearest rank, no interpolation: the reported p95 is a latency that actually happened,
//! and the same samples always give the same number.

use serde::Serialize;

/// The nearest-rank `q`-quantile (0 < q <= 1) of `v`, which this sorts; `None` when empty.
pub fn nearest_rank(v: &mut [f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[rank_index(v.len(), q)])
}

/// Index of the nearest-rank `q`-quantile in a sorted slice of `n > 0` elements.
fn rank_index(n: usize, q: f64) -> usize {
    ((q * n as f64).ceil() as usize).clamp(1, n) - 1
}

/// The summary every latency report prints.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Percentiles {
    /// From samples in microseconds; all zeros for no samples.
    pub fn from_us(samples: &[u64]) -> Percentiles {
        let mut v: Vec<f64> = samples.iter().map(|&u| u as f64 / 1e3).collect();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| {
            if v.is_empty() {
                0.0
            } else {
                v[rank_index(v.len(), q)]
            }
        };
        Percentiles {
            p50_ms: at(0.50),
            p95_ms: at(0.95),
            p99_ms: at(0.99),
            min_ms: v.first().copied().unwrap_or(0.0),
            max_ms: v.last().copied().unwrap_or(0.0),
            mean_ms: if v.is_empty() {
                0.0
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_picks_a_sample() {
        let mut v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(nearest_rank(&mut v, 0.95), Some(95.0));
        assert_eq!(nearest_rank(&mut v, 0.5), Some(50.0));
        assert_eq!(nearest_rank(&mut v, 1.0), Some(100.0));
        assert_eq!(nearest_rank(&mut [], 0.5), None);
        assert_eq!(nearest_rank(&mut [7.0], 0.01), Some(7.0));
    }

    #[test]
    fn percentiles_from_us() {
        let p = Percentiles::from_us(&[1000, 3000, 2000]);
        assert_eq!((p.p50_ms, p.max_ms, p.min_ms), (2.0, 3.0, 1.0));
        assert_eq!(p.mean_ms, 2.0);
        assert_eq!(Percentiles::from_us(&[]).p99_ms, 0.0);
    }

    #[test]
    fn percentiles_of_1_to_100_ms() {
        let us: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        let p = Percentiles::from_us(&us);
        assert_eq!((p.p50_ms, p.p95_ms, p.p99_ms), (50.0, 95.0, 99.0));
        assert_eq!((p.min_ms, p.max_ms), (1.0, 100.0));
        assert_eq!(Percentiles::from_us(&[7000]).p99_ms, 7.0);
    }
}
