//! Service metrics: lock-free counters and fixed-bucket histograms, rendered in the
//! Prometheus text exposition format (version 0.0.4) for `GET /metrics`.
//!
//! Recording is a handful of relaxed atomic adds on the request path; rendering walks
//! the counters on the scrape thread. Latency buckets are in seconds, from 0.25 ms (a
//! digits frame) to 10 s (a MobileNet under emulation).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use beltbox_core::prom::{self, Exposition, Kind};
use beltbox_core::timing::{Stage, StageTimings};

use super::probation::Reason;

/// Histogram bucket upper bounds, seconds.
pub const BUCKETS_S: [f64; 14] = [
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Debug, Default)]
pub struct Histogram {
    /// Non-cumulative counts per bucket; the last slot is +Inf.
    buckets: [AtomicU64; BUCKETS_S.len() + 1],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn observe_us(&self, us: u64) {
        let s = us as f64 / 1e6;
        let i = BUCKETS_S
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(BUCKETS_S.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    fn render(&self, out: &mut Exposition, name: &str, labels: &str) {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let sum_s = self.sum_us.load(Relaxed) as f64 / 1e6;
        out.histogram(name, labels, &BUCKETS_S, &counts, sum_s);
    }
}

/// Request outcomes, one counter each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// 4xx: the client sent something wrong.
    BadRequest,
    /// 503: queue full, waited too long, or no memory headroom.
    Rejected,
    /// 5xx other than 503: the model failed.
    Error,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::Ok,
        Outcome::BadRequest,
        Outcome::Rejected,
        Outcome::Error,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::BadRequest => "bad_request",
            Outcome::Rejected => "rejected",
            Outcome::Error => "error",
        }
    }

    pub fn of_status(status: u16) -> Outcome {
        match status {
            200..=299 => Outcome::Ok,
            503 => Outcome::Rejected,
            400..=499 => Outcome::BadRequest,
            _ => Outcome::Error,
        }
    }
}

/// Per-model counters.
#[derive(Debug, Default)]
pub struct ModelMetrics {
    outcomes: [AtomicU64; 4],
    /// One histogram per [`Stage::ALL`] entry, in that order.
    stages: [Histogram; 5],
    /// End to end, every answered inference request: request head parsed -> response
    /// handed to the socket (HTTP, body, decoding, queue, run, encoding).
    e2e: Histogram,
}

impl ModelMetrics {
    pub fn count(&self, o: Outcome) -> u64 {
        self.outcomes[o as usize].load(Relaxed)
    }

    pub fn record_outcome(&self, o: Outcome) {
        self.outcomes[o as usize].fetch_add(1, Relaxed);
    }

    pub fn observe_e2e_us(&self, us: u64) {
        self.e2e.observe_us(us);
    }

    pub fn record_stages(&self, t: &StageTimings) {
        for (h, s) in self.stages.iter().zip(Stage::ALL) {
            h.observe_us(t.get(s));
        }
    }
}

/// The statuses the service answers with, counted one by one; anything else is `other`.
pub const STATUSES: [u16; 14] = [
    200, 400, 404, 405, 408, 411, 413, 415, 431, 500, 501, 503, 505, 0,
];

/// Server-wide counters that belong to no model.
#[derive(Debug, Default)]
pub struct ServerMetrics {
    /// Responses per [`STATUSES`] entry (hyper's own answers to malformed HTTP are
    /// counted in `unrouted`, not here).
    statuses: [AtomicU64; STATUSES.len()],
    /// Requests for unknown routes or models, malformed HTTP.
    pub unrouted: AtomicU64,
    /// Connections refused because `max_connections` were open.
    pub connections_refused: AtomicU64,
    pub connections_open: AtomicU64,
    pub queue_depth: AtomicU64,
    pub in_flight: AtomicU64,
    /// Live model swaps done, and refused or failed (`serve::swap`).
    pub swaps: AtomicU64,
    pub swap_failures: AtomicU64,
    /// Probation verdicts carried out (`serve::probation`).
    pub ota_commits: AtomicU64,
    /// Automatic rollbacks, by [`Reason`] (same order as `Reason::ALL`).
    ota_rollbacks: [AtomicU64; Reason::ALL.len()],
    /// Channel polls by the service (`serve::poll`), those that failed, versions installed.
    pub ota_polls: AtomicU64,
    pub ota_poll_failures: AtomicU64,
    pub ota_installs: AtomicU64,
}

impl ServerMetrics {
    pub fn record_status(&self, status: u16) {
        let i = STATUSES
            .iter()
            .position(|&s| s == status)
            .unwrap_or(STATUSES.len() - 1);
        self.statuses[i].fetch_add(1, Relaxed);
    }

    /// Counts an automatic rollback.
    pub fn rolled_back(&self, reason: Reason) {
        if let Some(i) = Reason::ALL.iter().position(|&r| r == reason) {
            self.ota_rollbacks[i].fetch_add(1, Relaxed);
        }
    }
}

/// A sample for [`render`]: one labelled model.
pub struct ModelSample<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub sha256: &'a str,
    pub metrics: &'a ModelMetrics,
}

/// Gauges read at scrape time.
pub struct Gauges {
    pub queue_capacity: u64,
    pub workers: u64,
    pub heap_bytes: Option<(u64, u64)>,
    pub budget_bytes: Option<u64>,
    pub reserved_bytes: u64,
    /// What requests may reserve in total (budget - runtime - heap at ready).
    pub admission_limit_bytes: Option<u64>,
    pub rss_bytes: Option<u64>,
    pub uptime_s: f64,
    pub ready: bool,
}

pub fn render(server: &ServerMetrics, models: &[ModelSample<'_>], g: &Gauges) -> String {
    let mut out = Exposition::new();
    out.single(
        "beltbox_up",
        Kind::Gauge,
        "1 when all models are loaded and serving.",
        u8::from(g.ready),
    );
    out.single(
        "beltbox_uptime_seconds",
        Kind::Gauge,
        "Seconds since the service started.",
        format!("{:.3}", g.uptime_s),
    );
    out.family(
        "beltbox_model_info",
        Kind::Gauge,
        "Active model versions (value 1).",
    );
    for m in models {
        let l = prom::labels(&[
            ("model", m.name),
            ("version", m.version),
            ("sha256", m.sha256),
        ]);
        out.sample("beltbox_model_info", &l, 1);
    }
    out.family(
        "beltbox_requests_total",
        Kind::Counter,
        "Inference requests by model and outcome (ok, bad_request, rejected = 503, error).",
    );
    for m in models {
        for o in Outcome::ALL {
            let l = prom::labels(&[("model", m.name), ("outcome", o.name())]);
            out.sample("beltbox_requests_total", &l, m.metrics.count(o));
        }
    }
    out.single(
        "beltbox_unrouted_requests_total",
        Kind::Counter,
        "Requests for unknown paths or models, and malformed HTTP.",
        server.unrouted.load(Relaxed),
    );
    out.family(
        "beltbox_request_duration_seconds",
        Kind::Histogram,
        "Latency per stage of successful inferences (queue = waiting for a worker).",
    );
    for m in models {
        for (stage, h) in Stage::ALL.iter().zip(&m.metrics.stages) {
            let l = prom::labels(&[("model", m.name), ("stage", stage.name())]);
            h.render(&mut out, "beltbox_request_duration_seconds", &l);
        }
    }
    out.family(
        "beltbox_request_e2e_seconds",
        Kind::Histogram,
        "Inference requests end to end, every status: request head parsed -> response handed to the socket.",
    );
    for m in models {
        let l = prom::labels(&[("model", m.name)]);
        m.metrics
            .e2e
            .render(&mut out, "beltbox_request_e2e_seconds", &l);
    }
    out.family(
        "beltbox_http_responses_total",
        Kind::Counter,
        "HTTP responses by status code, every route (code=\"other\" for the rest).",
    );
    for (code, n) in STATUSES.iter().zip(&server.statuses) {
        let code = if *code == 0 {
            "other".to_string()
        } else {
            code.to_string()
        };
        let l = prom::labels(&[("code", code.as_str())]);
        out.sample("beltbox_http_responses_total", &l, n.load(Relaxed));
    }
    out.single(
        "beltbox_queue_depth",
        Kind::Gauge,
        "Requests waiting for a worker.",
        server.queue_depth.load(Relaxed),
    );
    out.single(
        "beltbox_queue_capacity",
        Kind::Gauge,
        "Queue slots; a full queue answers 503.",
        g.queue_capacity,
    );
    out.single(
        "beltbox_in_flight",
        Kind::Gauge,
        "Requests being run by a worker.",
        server.in_flight.load(Relaxed),
    );
    out.single(
        "beltbox_model_swaps_total",
        Kind::Counter,
        "Live model swaps done (model-repository load).",
        server.swaps.load(Relaxed),
    );
    out.single(
        "beltbox_model_swap_failures_total",
        Kind::Counter,
        "Model loads refused or failed; the serving version was kept.",
        server.swap_failures.load(Relaxed),
    );
    out.single(
        "beltbox_ota_commits_total",
        Kind::Counter,
        "Candidates committed after probation.",
        server.ota_commits.load(Relaxed),
    );
    out.single(
        "beltbox_ota_polls_total",
        Kind::Counter,
        "Polls of the OTA channel by the service.",
        server.ota_polls.load(Relaxed),
    );
    out.single(
        "beltbox_ota_poll_failures_total",
        Kind::Counter,
        "OTA polls that failed (channel refused, unreachable, an install refused).",
        server.ota_poll_failures.load(Relaxed),
    );
    out.single(
        "beltbox_ota_installs_total",
        Kind::Counter,
        "Versions the service's polls installed.",
        server.ota_installs.load(Relaxed),
    );
    out.family(
        "beltbox_ota_rollbacks_total",
        Kind::Counter,
        "Candidates rolled back automatically, by reason: failed probation (error_rate, p95, agreement, low_confidence) or a crash loop at start (crash_loop).",
    );
    for (r, n) in Reason::ALL.iter().zip(&server.ota_rollbacks) {
        let l = prom::labels(&[("reason", r.label())]);
        out.sample("beltbox_ota_rollbacks_total", &l, n.load(Relaxed));
    }
    out.single(
        "beltbox_workers",
        Kind::Gauge,
        "Inference worker threads.",
        g.workers,
    );
    out.single(
        "beltbox_connections_open",
        Kind::Gauge,
        "Open client connections.",
        server.connections_open.load(Relaxed),
    );
    out.single(
        "beltbox_connections_refused_total",
        Kind::Counter,
        "Connections answered 503 because server.max_connections (or max_connections_per_peer) were open.",
        server.connections_refused.load(Relaxed),
    );
    if let Some((cur, peak)) = g.heap_bytes {
        out.single(
            "beltbox_memory_heap_bytes",
            Kind::Gauge,
            "Live heap bytes (counting allocator).",
            cur,
        );
        out.single(
            "beltbox_memory_heap_peak_bytes",
            Kind::Gauge,
            "Heap high-water mark since the service became ready (serving, not loading).",
            peak,
        );
    }
    if let Some(b) = g.budget_bytes {
        out.single(
            "beltbox_memory_budget_bytes",
            Kind::Gauge,
            "RAM budget of the whole service (memory.budget or the board's share): bounds the models and every request buffer.",
            b,
        );
    }
    out.single(
        "beltbox_memory_reserved_bytes",
        Kind::Gauge,
        "Heap reserved by admitted requests (planned per-request bytes).",
        g.reserved_bytes,
    );
    if let Some(l) = g.admission_limit_bytes {
        out.single(
            "beltbox_memory_admission_limit_bytes",
            Kind::Gauge,
            "Heap requests may reserve in total: budget - runtime overhead - heap when ready.",
            l,
        );
    }
    if let Some(rss) = g.rss_bytes {
        out.single(
            "beltbox_memory_rss_bytes",
            Kind::Gauge,
            "Resident set size.",
            rss,
        );
    }
    out.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_sum_in_seconds() {
        let h = Histogram::default();
        h.observe_us(100); // 0.1 ms -> first bucket
        h.observe_us(3_000); // 3 ms -> le 0.005
        h.observe_us(20_000_000); // 20 s -> +Inf
        let mut e = Exposition::new();
        h.render(&mut e, "x", "m=\"a\"");
        let out = e.finish();
        assert!(
            out.contains("x_bucket{m=\"a\",le=\"0.00025\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("x_bucket{m=\"a\",le=\"0.0025\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{m=\"a\",le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{m=\"a\",le=\"10\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{m=\"a\",le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_sum{m=\"a\"} 20.0031\n"), "{out}");
        assert!(out.contains("x_count{m=\"a\"} 3\n"), "{out}");
    }

    #[test]
    fn outcomes_from_status() {
        assert_eq!(Outcome::of_status(200), Outcome::Ok);
        assert_eq!(Outcome::of_status(503), Outcome::Rejected);
        assert_eq!(Outcome::of_status(413), Outcome::BadRequest);
        assert_eq!(Outcome::of_status(500), Outcome::Error);
    }
}
