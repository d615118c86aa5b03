//! Probation: a version installed over the air serves as the *candidate* until it has
//! proved itself on real traffic; then it is committed, or rolled back automatically.
//!
//! Each served model keeps a [`Tally`] of its recent requests (top-1 class, pipeline time,
//! model failures). When the store's candidate starts serving (a live swap, or a service
//! start while a candidate is pending), a [`Watch`] begins, holding the previous version's
//! top-1 class distribution as the baseline. The supervisor asks [`judge`] once a second:
//!
//! - **error rate**: model failures (not clients' bad requests) over
//!   `ota.probation_max_error_rate`, judged from 20 requests on: fail at once;
//! - after `ota.probation_requests` requests (or `ota.probation_max_s` seconds, with at
//!   least 20 requests; with fewer the candidate is committed for lack of evidence against
//!   it, and the history says so):
//!   - **p95** of the full pipeline over the manifest's `budgets.p95_ms`: fail;
//!   - **agreement**: the overlap of the candidate's top-1 class distribution with the
//!     previous version's (histogram intersection, by label) under
//!     `ota.probation_min_agreement`: fail. On a belt the traffic before and after a swap
//!     is the same kind of parcel, so a version that answers differently on it is suspect
//!     (a relabelled class list, a broken preprocessing). This is a distribution check, not
//!     a per-frame shadow run: the previous version is not kept resident to rerun frames.
//!
//! Fail: the store rolls the candidate back (marked bad, never installed again), the
//! service swaps live to the previous version. Pass: the store commits.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::ServedModel;

/// Requests a tally remembers.
pub const RING: usize = 2000;
/// Requests before any verdict on rates.
pub const MIN_REQUESTS: u64 = 20;

/// A model's recent requests.
#[derive(Debug, Default)]
pub struct Tally {
    top1: VecDeque<usize>,
    total_us: VecDeque<u64>,
    pub ok: u64,
    pub errors: u64,
}

impl Tally {
    pub fn record_ok(&mut self, top1: Option<usize>, total_us: u64) {
        self.ok += 1;
        push(&mut self.total_us, total_us);
        if let Some(c) = top1 {
            push(&mut self.top1, c);
        }
    }

    pub fn record_error(&mut self) {
        self.errors += 1;
    }

    /// Share of each label among the remembered top-1 answers.
    pub fn distribution(&self, labels: &[String]) -> BTreeMap<String, f64> {
        let mut d = BTreeMap::new();
        let n = self.top1.len().max(1) as f64;
        for &c in &self.top1 {
            let l = labels.get(c).cloned().unwrap_or_else(|| format!("#{c}"));
            *d.entry(l).or_insert(0.0) += 1.0 / n;
        }
        d
    }

    fn p95_ms(&self) -> Option<f64> {
        let mut v: Vec<f64> = self.total_us.iter().map(|&u| u as f64 / 1e3).collect();
        beltbox_core::stats::nearest_rank(&mut v, 0.95)
    }
}

fn push<T>(q: &mut VecDeque<T>, v: T) {
    if q.len() == RING {
        q.pop_front();
    }
    q.push_back(v);
}

/// The probation rules (`[ota]` in the config).
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    pub requests: u64,
    pub max_s: u64,
    pub max_error_rate: f64,
    pub min_agreement: f64,
}

/// A candidate on probation.
pub struct Watch {
    pub model: Arc<ServedModel>,
    /// The previous version's top-1 distribution; `None` when nothing served before it
    /// in this process (a restart with a pending candidate): agreement is not judged.
    pub baseline: Option<BTreeMap<String, f64>>,
    pub since: Instant,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Continue,
    Pass(String),
    Fail(String),
}

/// Histogram intersection of two distributions: 1 for the same, 0 for disjoint.
pub fn agreement(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>) -> f64 {
    a.iter()
        .map(|(k, &p)| p.min(b.get(k).copied().unwrap_or(0.0)))
        .sum()
}

/// The verdict on `w` now (module docs). Pure but for reading the tally.
pub fn judge(w: &Watch, rules: &Rules, elapsed: Duration) -> Verdict {
    let t = w.model.tally.lock().unwrap_or_else(|p| p.into_inner());
    let n = t.ok + t.errors;
    if n >= MIN_REQUESTS {
        let rate = t.errors as f64 / n as f64;
        if rate > rules.max_error_rate {
            return Verdict::Fail(format!(
                "error rate {:.1} % over {n} requests, over {:.1} %",
                rate * 100.0,
                rules.max_error_rate * 100.0
            ));
        }
    }
    let timed_out = elapsed >= Duration::from_secs(rules.max_s);
    if n < rules.requests && !timed_out {
        return Verdict::Continue;
    }
    if n < MIN_REQUESTS {
        return Verdict::Pass(format!(
            "committed after {} s with only {n} requests (too few to judge)",
            elapsed.as_secs()
        ));
    }
    let slo = w.model.model.manifest().budgets.p95_ms;
    if let Some(p95) = t.p95_ms() {
        if p95 > slo {
            return Verdict::Fail(format!(
                "p95 {p95:.2} ms over {n} requests, over the SLO {slo} ms"
            ));
        }
    }
    if let Some(base) = &w.baseline {
        if !base.is_empty() {
            let now = t.distribution(&w.model.model.labels);
            let a = agreement(base, &now);
            if a < rules.min_agreement {
                return Verdict::Fail(format!(
                    "top-1 answers agree {:.0} % with the previous version's, under {:.0} %",
                    a * 100.0,
                    rules.min_agreement * 100.0
                ));
            }
        }
    }
    Verdict::Pass(format!("passed probation over {n} requests"))
}

/// Where the service keeps its watches.
pub type Watches = Mutex<Vec<Watch>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn dist(p: &[(&str, f64)]) -> BTreeMap<String, f64> {
        p.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn agreement_is_the_overlap() {
        let a = dist(&[("3", 0.5), ("4", 0.5)]);
        assert!((agreement(&a, &a) - 1.0).abs() < 1e-9);
        assert!((agreement(&a, &dist(&[("3", 1.0)])) - 0.5).abs() < 1e-9);
        assert_eq!(agreement(&a, &dist(&[("7", 1.0)])), 0.0);
    }

    #[test]
    fn the_tally_forgets_the_oldest() {
        let mut t = Tally::default();
        for i in 0..(RING + 10) {
            t.record_ok(Some(i % 2), 1000);
        }
        assert_eq!(t.top1.len(), RING);
        let d = t.distribution(&["a".into(), "b".into()]);
        assert!((d["a"] - 0.5).abs() < 1e-9);
    }
}
