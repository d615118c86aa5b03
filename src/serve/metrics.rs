//! Service metrics: lock-free counters and fixed-bucket histograms, rendered in the
//! Prometheus text exposition format (version 0.0.4) for `GET /metrics`.
//!
//! Recording is a handful of relaxed atomic adds on the request path; rendering walks
//! the counters on the scrape thread. Latency buckets are in seconds, from 0.25 ms (a
//! digits frame) to 10 s (a MobileNet under emulation).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

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

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cum = 0u64;
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in self.buckets.iter().enumerate() {
            cum += b.load(Relaxed);
            let le = BUCKETS_S
                .get(i)
                .map(|v| v.to_string())
                .unwrap_or_else(|| "+Inf".into());
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cum}");
        }
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(
            out,
            "{name}_sum{braces} {}",
            self.sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{braces} {}", self.count.load(Relaxed));
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

/// Stages timed per request.
pub const STAGES: [&str; 5] = ["queue", "preprocess", "inference", "postprocess", "total"];

/// Per-model counters.
#[derive(Debug, Default)]
pub struct ModelMetrics {
    outcomes: [AtomicU64; 4],
    stages: [Histogram; 5],
}

/// Microseconds per stage, in [`STAGES`] order.
pub type StageUs = [u64; 5];

impl ModelMetrics {
    pub fn count(&self, o: Outcome) -> u64 {
        self.outcomes[o as usize].load(Relaxed)
    }

    pub fn record_outcome(&self, o: Outcome) {
        self.outcomes[o as usize].fetch_add(1, Relaxed);
    }

    pub fn record_stages(&self, us: &StageUs) {
        for (h, &v) in self.stages.iter().zip(us) {
            h.observe_us(v);
        }
    }
}

/// Server-wide counters that belong to no model.
#[derive(Debug, Default)]
pub struct ServerMetrics {
    /// Requests for unknown routes or models, malformed HTTP.
    pub unrouted: AtomicU64,
    /// Connections refused because `max_connections` were open.
    pub connections_refused: AtomicU64,
    pub connections_open: AtomicU64,
    pub queue_depth: AtomicU64,
    pub in_flight: AtomicU64,
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

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Escapes a label value (backslash, quote, newline).
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub fn render(server: &ServerMetrics, models: &[ModelSample<'_>], g: &Gauges) -> String {
    let mut out = String::with_capacity(8192);
    header(
        &mut out,
        "beltbox_up",
        "gauge",
        "1 when all models are loaded and serving.",
    );
    let _ = writeln!(out, "beltbox_up {}", u8::from(g.ready));
    header(
        &mut out,
        "beltbox_uptime_seconds",
        "gauge",
        "Seconds since the service started.",
    );
    let _ = writeln!(out, "beltbox_uptime_seconds {:.3}", g.uptime_s);
    header(
        &mut out,
        "beltbox_model_info",
        "gauge",
        "Active model versions (value 1).",
    );
    for m in models {
        let _ = writeln!(
            out,
            "beltbox_model_info{{model=\"{}\",version=\"{}\",sha256=\"{}\"}} 1",
            label(m.name),
            label(m.version),
            label(m.sha256)
        );
    }
    header(
        &mut out,
        "beltbox_requests_total",
        "counter",
        "Inference requests by model and outcome (ok, bad_request, rejected = 503, error).",
    );
    for m in models {
        for o in Outcome::ALL {
            let _ = writeln!(
                out,
                "beltbox_requests_total{{model=\"{}\",outcome=\"{}\"}} {}",
                label(m.name),
                o.name(),
                m.metrics.count(o)
            );
        }
    }
    header(
        &mut out,
        "beltbox_unrouted_requests_total",
        "counter",
        "Requests for unknown paths or models, and malformed HTTP.",
    );
    let _ = writeln!(
        out,
        "beltbox_unrouted_requests_total {}",
        server.unrouted.load(Relaxed)
    );
    header(
        &mut out,
        "beltbox_request_duration_seconds",
        "histogram",
        "Latency per stage of successful inferences (queue = waiting for a worker).",
    );
    for m in models {
        for (stage, h) in STAGES.iter().zip(&m.metrics.stages) {
            h.render(
                &mut out,
                "beltbox_request_duration_seconds",
                &format!("model=\"{}\",stage=\"{stage}\"", label(m.name)),
            );
        }
    }
    header(
        &mut out,
        "beltbox_queue_depth",
        "gauge",
        "Requests waiting for a worker.",
    );
    let _ = writeln!(
        out,
        "beltbox_queue_depth {}",
        server.queue_depth.load(Relaxed)
    );
    header(
        &mut out,
        "beltbox_queue_capacity",
        "gauge",
        "Queue slots; a full queue answers 503.",
    );
    let _ = writeln!(out, "beltbox_queue_capacity {}", g.queue_capacity);
    header(
        &mut out,
        "beltbox_in_flight",
        "gauge",
        "Requests being run by a worker.",
    );
    let _ = writeln!(out, "beltbox_in_flight {}", server.in_flight.load(Relaxed));
    header(
        &mut out,
        "beltbox_workers",
        "gauge",
        "Inference worker threads.",
    );
    let _ = writeln!(out, "beltbox_workers {}", g.workers);
    header(
        &mut out,
        "beltbox_connections_open",
        "gauge",
        "Open client connections.",
    );
    let _ = writeln!(
        out,
        "beltbox_connections_open {}",
        server.connections_open.load(Relaxed)
    );
    header(
        &mut out,
        "beltbox_connections_refused_total",
        "counter",
        "Connections answered 503 because max_connections were open.",
    );
    let _ = writeln!(
        out,
        "beltbox_connections_refused_total {}",
        server.connections_refused.load(Relaxed)
    );
    if let Some((cur, peak)) = g.heap_bytes {
        header(
            &mut out,
            "beltbox_memory_heap_bytes",
            "gauge",
            "Live heap bytes (counting allocator).",
        );
        let _ = writeln!(out, "beltbox_memory_heap_bytes {cur}");
        header(
            &mut out,
            "beltbox_memory_heap_peak_bytes",
            "gauge",
            "Heap high-water mark since the service became ready (serving, not loading).",
        );
        let _ = writeln!(out, "beltbox_memory_heap_peak_bytes {peak}");
    }
    if let Some(b) = g.budget_bytes {
        header(
            &mut out,
            "beltbox_memory_budget_bytes",
            "gauge",
            "RAM budget the service enforces (strictest of config, board and manifests).",
        );
        let _ = writeln!(out, "beltbox_memory_budget_bytes {b}");
    }
    header(
        &mut out,
        "beltbox_memory_reserved_bytes",
        "gauge",
        "Heap reserved by admitted requests (planned per-request bytes).",
    );
    let _ = writeln!(out, "beltbox_memory_reserved_bytes {}", g.reserved_bytes);
    if let Some(l) = g.admission_limit_bytes {
        header(
            &mut out,
            "beltbox_memory_admission_limit_bytes",
            "gauge",
            "Heap requests may reserve in total: budget - runtime overhead - heap when ready.",
        );
        let _ = writeln!(out, "beltbox_memory_admission_limit_bytes {l}");
    }
    if let Some(rss) = g.rss_bytes {
        header(
            &mut out,
            "beltbox_memory_rss_bytes",
            "gauge",
            "Resident set size.",
        );
        let _ = writeln!(out, "beltbox_memory_rss_bytes {rss}");
    }
    out
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
        let mut out = String::new();
        h.render(&mut out, "x", "m=\"a\"");
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

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
