//! The Prometheus text exposition format (version 0.0.4): one writer for every family the
//! service exposes (`/metrics`: request counters and histograms, memory, thermal state).
//!
//! Families are written whole (HELP, TYPE, then samples) so a scrape never sees a sample
//! without its type; label values are escaped here, so a model name with a quote in it
//! cannot break the exposition.

use std::fmt::{Display, Write};

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A text exposition being written.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn new() -> Exposition {
        Exposition {
            out: String::with_capacity(8192),
        }
    }

    /// Starts a family: its `# HELP` and `# TYPE` lines.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let _ = writeln!(
            self.out,
            "# HELP {name} {help}\n# TYPE {name} {}",
            kind.name()
        );
    }

    /// One sample; `labels` is a rendered label set (see [`labels`]), empty for none.
    pub fn sample(&mut self, name: &str, labels: &str, value: impl Display) {
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {value}");
        } else {
            let _ = writeln!(self.out, "{name}{{{labels}}} {value}");
        }
    }

    /// A family with a single unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: impl Display) {
        self.family(name, kind, help);
        self.sample(name, "", value);
    }

    /// The cumulative buckets, `_sum` and `_count` of one histogram series. `counts` are
    /// per-bucket (not cumulative) for the upper bounds `bounds`, plus one for `+Inf`.
    pub fn histogram(
        &mut self,
        name: &str,
        labels: &str,
        bounds: &[f64],
        counts: &[u64],
        sum: f64,
    ) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cum = 0u64;
        for (i, c) in counts.iter().enumerate() {
            cum += c;
            let le = bounds
                .get(i)
                .map(|v| v.to_string())
                .unwrap_or_else(|| "+Inf".into());
            let _ = writeln!(self.out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cum}");
        }
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, cum);
    }

    /// Appends text that is already in the exposition format (another writer's families).
    pub fn append(&mut self, text: &str) {
        self.out.push_str(text);
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// Escapes a label value (backslash, quote, newline).
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders a label set: `k1="v1",k2="v2"`, values escaped.
pub fn labels(pairs: &[(&str, &str)]) -> String {
    let mut s = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{k}=\"{}\"", escape(v));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_escaping() {
        let mut e = Exposition::new();
        e.family("x_total", Kind::Counter, "Things.");
        e.sample(
            "x_total",
            &labels(&[("model", "a\"b\\c\nd"), ("k", "v")]),
            3,
        );
        e.single("up", Kind::Gauge, "Up.", 1);
        let t = e.finish();
        assert!(t.contains("# HELP x_total Things.\n# TYPE x_total counter\n"));
        assert!(
            t.contains("x_total{model=\"a\\\"b\\\\c\\nd\",k=\"v\"} 3\n"),
            "{t}"
        );
        assert!(t.contains("up 1\n"));
    }

    #[test]
    fn histogram_is_cumulative() {
        let mut e = Exposition::new();
        e.histogram("h", "m=\"a\"", &[0.1, 1.0], &[2, 0, 1], 1.5);
        let t = e.finish();
        assert!(t.contains("h_bucket{m=\"a\",le=\"0.1\"} 2\n"));
        assert!(t.contains("h_bucket{m=\"a\",le=\"1\"} 2\n"));
        assert!(t.contains("h_bucket{m=\"a\",le=\"+Inf\"} 3\n"));
        assert!(t.contains("h_sum{m=\"a\"} 1.5\nh_count{m=\"a\"} 3\n"));
    }
}
