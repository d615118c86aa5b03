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
//!     (a relabelled class list, a broken preprocessing). This is a distribution check:
//!     the previous version is not kept resident to rerun frames. The per-frame check is
//!     qualification's shadow run on the recent frames (`beltbox_ota::qualify`);
//!   - **low confidence**: when the candidate's manifest sets `low_confidence`, the share
//!     of its answers whose top-1 score is under it, against the previous version's share
//!     under the same threshold: more than `ota.probation_max_low_confidence_rise` above
//!     it (absolute), fail. A model that still picks the same classes but has grown unsure
//!     of them (a calibration lost in requantisation) sends more frames to review.
//!
//! The baseline (the previous version's distribution and scores) is taken at the swap and
//! kept on disk until the verdict, so a service restarted mid-probation judges against it.
//!
//! Fail: the store rolls the candidate back (marked bad, never installed again), the
//! service swaps live to the previous version, and `/metrics` counts the rollback by its
//! [`Reason`]. Pass: the store commits.

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
    /// The top-1 scores, beside `top1`.
    scores: VecDeque<f32>,
    total_us: VecDeque<u64>,
    pub ok: u64,
    pub errors: u64,
}

impl Tally {
    /// A request answered: its top-1 class and score (a classifier's), pipeline time.
    pub fn record_ok(&mut self, top1: Option<(usize, f32)>, total_us: u64) {
        self.ok += 1;
        push(&mut self.total_us, total_us);
        if let Some((c, score)) = top1 {
            push(&mut self.top1, c);
            push(&mut self.scores, score);
        }
    }

    /// Share of the remembered answers whose top-1 score is under `threshold`; `None`
    /// without answers.
    pub fn low_confidence_rate(&self, threshold: f64) -> Option<f64> {
        if self.scores.is_empty() {
            return None;
        }
        let low = self
            .scores
            .iter()
            .filter(|&&s| f64::from(s) < threshold)
            .count();
        Some(low as f64 / self.scores.len() as f64)
    }

    /// What the candidate `next` is held against (module docs).
    pub fn baseline(&self, labels: &[String], next: &beltbox_core::model::Model) -> Baseline {
        Baseline {
            top1: self.distribution(labels),
            low_confidence_rate: next
                .manifest()
                .low_confidence
                .and_then(|t| self.low_confidence_rate(t)),
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
    pub max_low_confidence_rise: f64,
}

/// What served before the candidate, as its tally saw it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Baseline {
    pub top1: BTreeMap<String, f64>,
    /// Under the candidate's `low_confidence` threshold; `None` when it sets none.
    pub low_confidence_rate: Option<f64>,
}

/// Why a candidate failed probation (or was rolled back at start): the `reason` label of
/// `beltbox_ota_rollbacks_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    ErrorRate,
    P95,
    Agreement,
    LowConfidence,
    /// The service kept starting with the candidate on probation (the loop breaker).
    CrashLoop,
}

impl Reason {
    pub const ALL: [Reason; 5] = [
        Reason::ErrorRate,
        Reason::P95,
        Reason::Agreement,
        Reason::LowConfidence,
        Reason::CrashLoop,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Reason::ErrorRate => "error_rate",
            Reason::P95 => "p95",
            Reason::Agreement => "agreement",
            Reason::LowConfidence => "low_confidence",
            Reason::CrashLoop => "crash_loop",
        }
    }
}

/// A failed probation: the reason and the sentence for the log and the history.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub reason: Reason,
    pub why: String,
}

fn fail(reason: Reason, why: String) -> Verdict {
    Verdict::Fail(Failure { reason, why })
}

/// A candidate on probation.
pub struct Watch {
    pub model: Arc<ServedModel>,
    /// What served before it; `None` when nothing did (the first version after the
    /// bundled package was unloaded) or nothing was kept: agreement and low confidence are
    /// not judged.
    pub baseline: Option<Baseline>,
    pub since: Instant,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Continue,
    Pass(String),
    Fail(Failure),
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
            return fail(
                Reason::ErrorRate,
                format!(
                    "error rate {:.1} % over {n} requests, over {:.1} %",
                    rate * 100.0,
                    rules.max_error_rate * 100.0
                ),
            );
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
            return fail(
                Reason::P95,
                format!("p95 {p95:.2} ms over {n} requests, over the SLO {slo} ms"),
            );
        }
    }
    if let Some(base) = &w.baseline {
        if !base.top1.is_empty() {
            let now = t.distribution(&w.model.model.labels);
            let a = agreement(&base.top1, &now);
            if a < rules.min_agreement {
                return fail(
                    Reason::Agreement,
                    format!(
                        "top-1 answers agree {:.0} % with the previous version's, under {:.0} %",
                        a * 100.0,
                        rules.min_agreement * 100.0
                    ),
                );
            }
        }
        if let Some(th) = w.model.model.manifest().low_confidence {
            let now = t.low_confidence_rate(th);
            if let Some(why) = low_confidence_rise(th, now, base.low_confidence_rate, rules) {
                return fail(Reason::LowConfidence, why);
            }
        }
    }
    Verdict::Pass(format!("passed probation over {n} requests"))
}

/// The low-confidence rule: the candidate's share of answers scoring under `threshold`
/// (`now`) more than `ota.probation_max_low_confidence_rise` above the previous version's
/// share under the same threshold (`before`) fails it. Nothing to judge without both.
pub fn low_confidence_rise(
    threshold: f64,
    now: Option<f64>,
    before: Option<f64>,
    rules: &Rules,
) -> Option<String> {
    let (now, before) = (now?, before?);
    (now > before + rules.max_low_confidence_rise).then(|| {
        format!(
            "{:.0} % of its answers score under {threshold}, against {:.0} % of the previous version's (more than {:.0} points above)",
            now * 100.0,
            before * 100.0,
            rules.max_low_confidence_rise * 100.0
        )
    })
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
            t.record_ok(Some((i % 2, 0.9)), 1000);
        }
        assert_eq!(t.top1.len(), RING);
        let d = t.distribution(&["a".into(), "b".into()]);
        assert!((d["a"] - 0.5).abs() < 1e-9);
        assert_eq!(t.scores.len(), RING);
    }

    #[test]
    fn low_confidence_rate_counts_scores_under_the_threshold() {
        let mut t = Tally::default();
        assert_eq!(t.low_confidence_rate(0.5), None);
        for s in [0.1, 0.4, 0.5, 0.9] {
            t.record_ok(Some((0, s)), 1000);
        }
        assert_eq!(t.low_confidence_rate(0.5), Some(0.5));
        assert_eq!(t.low_confidence_rate(0.05), Some(0.0));
    }

    #[test]
    fn a_rise_in_low_confidence_answers_beyond_the_allowed_fails() {
        let rules = Rules {
            requests: 100,
            max_s: 60,
            max_error_rate: 0.01,
            min_agreement: 0.8,
            max_low_confidence_rise: 0.1,
        };
        // A version that has grown unsure: 40 % low against 5 % before.
        let why = low_confidence_rise(0.5, Some(0.4), Some(0.05), &rules).unwrap();
        assert!(why.contains("40 %") && why.contains("5 %"), "{why}");
        // Within the allowed rise, or better: no verdict from this rule.
        assert_eq!(
            low_confidence_rise(0.5, Some(0.14), Some(0.05), &rules),
            None
        );
        assert_eq!(low_confidence_rise(0.5, Some(0.0), Some(0.3), &rules), None);
        // Nothing to compare.
        assert_eq!(low_confidence_rise(0.5, None, Some(0.0), &rules), None);
        assert_eq!(low_confidence_rise(0.5, Some(1.0), None, &rules), None);
    }

    #[test]
    fn every_reason_has_its_own_label() {
        let mut l: Vec<_> = Reason::ALL.iter().map(|r| r.label()).collect();
        l.dedup();
        assert_eq!(l.len(), Reason::ALL.len());
    }
}
