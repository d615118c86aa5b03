//! The load generator (`beltbox loadgen`): open-loop load against a running service on
//! loopback, one step per offered rate, reporting throughput, latency percentiles and the
//! rejection rate.
//!
//! Open loop: request i is due at `start + i / rate` whatever happened to earlier ones,
//! and its latency is measured from when it was *due*, not when a connection was free to
//! send it. A closed-loop generator (send, wait, send) slows down with the server and
//! hides queueing ("coordinated omission"); this one does not.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use crate::client::{Client, ClientError};
use beltbox_core::stats::Percentiles;

#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error("--url `{0}` must be http://HOST:PORT on a loopback address (127.0.0.0/8 or ::1); the load generator never targets other hosts")]
    NotLoopback(String),
    #[error("{0}")]
    Client(#[from] ClientError),
    #[error("model `{model}`: {message}")]
    Metadata { model: String, message: String },
    #[error("--rates: {0}")]
    Rates(String),
}

#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub addr: SocketAddr,
    pub model: String,
    /// Request body and extra headers (built by [`request_for`]).
    pub body: Vec<u8>,
    pub header_length: Option<usize>,
    pub rates: Vec<f64>,
    pub duration: Duration,
    pub connections: usize,
    pub timeout: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub offered_rps: f64,
    pub sent: u64,
    pub ok: u64,
    pub rejected: u64,
    pub errors: u64,
    pub throughput_rps: f64,
    pub rejection_rate: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// `http://127.0.0.1:8080` -> a loopback socket address.
pub fn parse_url(url: &str) -> Result<SocketAddr, LoadgenError> {
    let bad = || LoadgenError::NotLoopback(url.to_string());
    let rest = url.strip_prefix("http://").ok_or_else(bad)?;
    let hostport = rest.trim_end_matches('/');
    let hostport = if let Some(port) = hostport.strip_prefix("localhost:") {
        format!("127.0.0.1:{port}")
    } else {
        hostport.to_string()
    };
    let addr: SocketAddr = hostport.parse().map_err(|_| bad())?;
    if !addr.ip().is_loopback() {
        return Err(bad());
    }
    Ok(addr)
}

/// `100,500,1000` -> rates (requests per second), each in (0, 100000].
pub fn parse_rates(text: &str) -> Result<Vec<f64>, LoadgenError> {
    text.split(',')
        .map(|t| {
            let r: f64 = t
                .trim()
                .parse()
                .map_err(|_| LoadgenError::Rates(format!("`{t}` is not a number")))?;
            if !(r > 0.0 && r <= 100_000.0) {
                return Err(LoadgenError::Rates(format!(
                    "{r} is not in (0, 100000] requests/s"
                )));
            }
            Ok(r)
        })
        .collect()
}

/// A request body for `model`: `file` sent as one BYTES element through the binary
/// extension, or (no file) a synthetic tensor of the model's input shape and datatype
/// from its metadata, deterministic. Returns (body, JSON header length for binary).
pub fn request_for(
    addr: SocketAddr,
    model: &str,
    file: Option<&[u8]>,
) -> Result<(Vec<u8>, Option<usize>), LoadgenError> {
    let mut c = Client::new(addr, Duration::from_secs(10));
    let meta = c.get(&format!("/v2/models/{model}"))?;
    let bad = |message: String| LoadgenError::Metadata {
        model: model.to_string(),
        message,
    };
    if meta.status != 200 {
        return Err(bad(format!(
            "metadata answered {}: {}",
            meta.status,
            meta.text()
        )));
    }
    let v = meta
        .json()
        .ok_or_else(|| bad("metadata is not JSON".into()))?;
    let input = &v["inputs"][0];
    let name = input["name"]
        .as_str()
        .ok_or_else(|| bad("metadata has no input name".into()))?;
    if let Some(bytes) = file {
        let header = serde_json::to_vec(&json!({
            "inputs": [{ "name": name, "shape": [1], "datatype": "BYTES",
                         "parameters": { "binary_data_size": bytes.len() + 4 } }]
        }))
        .unwrap_or_default();
        let mut body = header.clone();
        body.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        body.extend_from_slice(bytes);
        return Ok((body, Some(header.len())));
    }
    let shape: Vec<u64> = input["shape"]
        .as_array()
        .map(|a| a.iter().filter_map(|d| d.as_u64()).collect())
        .ok_or_else(|| bad("metadata has no input shape".into()))?;
    let count: u64 = shape.iter().product();
    let dt = input["datatype"].as_str().unwrap_or("FP32");
    // A fixed LCG: the same bytes every run, no rand dependency.
    let mut state: u32 = 0x2545_f491;
    let mut next = || {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        state >> 24
    };
    let data: Vec<serde_json::Value> = (0..count)
        .map(|_| {
            let b = next();
            match dt {
                "INT8" => json!(b as i32 - 128),
                "UINT8" => json!(b),
                _ => json!((b as f32 / 127.5) - 1.0),
            }
        })
        .collect();
    let body = serde_json::to_vec(&json!({
        "inputs": [{ "name": name, "shape": shape, "datatype": dt, "data": data }]
    }))
    .unwrap_or_default();
    Ok((body, None))
}

/// Runs every step; `progress` is called after each.
pub fn run(cfg: &LoadConfig, progress: &dyn Fn(&StepReport)) -> Vec<StepReport> {
    cfg.rates
        .iter()
        .map(|&rate| {
            let r = step(cfg, rate);
            progress(&r);
            r
        })
        .collect()
}

fn step(cfg: &LoadConfig, rate: f64) -> StepReport {
    let total = (rate * cfg.duration.as_secs_f64()).round().max(1.0) as u64;
    let next = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(total as usize)));
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let path = format!("/v2/models/{}/infer", cfg.model);
    let len_header = cfg.header_length.map(|n| n.to_string());
    let start = Instant::now() + Duration::from_millis(50);
    let threads: Vec<_> = (0..cfg.connections.max(1))
        .map(|_| {
            let (next, latencies, counts) = (
                Arc::clone(&next),
                Arc::clone(&latencies),
                Arc::clone(&counts),
            );
            let (cfg, path, len_header) = (cfg.clone(), path.clone(), len_header.clone());
            std::thread::spawn(move || {
                let mut client = Client::new(cfg.addr, cfg.timeout);
                let mut mine = Vec::new();
                loop {
                    let i = next.fetch_add(1, Relaxed);
                    if i >= total {
                        break;
                    }
                    let due = start + Duration::from_secs_f64(i as f64 / rate);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let mut headers = vec![("Content-Type", "application/json")];
                    if let Some(h) = &len_header {
                        headers[0] = ("Content-Type", "application/octet-stream");
                        headers.push(("Inference-Header-Content-Length", h.as_str()));
                    }
                    let outcome = client.request("POST", &path, &headers, &cfg.body);
                    let us = u64::try_from(due.elapsed().as_micros()).unwrap_or(u64::MAX);
                    match outcome {
                        Ok(r) if r.status == 200 => {
                            counts[0].fetch_add(1, Relaxed);
                            mine.push(us);
                        }
                        Ok(r) if r.status == 503 => {
                            counts[1].fetch_add(1, Relaxed);
                        }
                        _ => {
                            counts[2].fetch_add(1, Relaxed);
                        }
                    }
                }
                if let Ok(mut l) = latencies.lock() {
                    l.extend(mine);
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let wall = start.elapsed().as_secs_f64().max(1e-9);
    let lat = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    let p = Percentiles::from_us(&lat);
    let (ok, rejected, errors) = (
        counts[0].load(Relaxed),
        counts[1].load(Relaxed),
        counts[2].load(Relaxed),
    );
    StepReport {
        offered_rps: rate,
        sent: total,
        ok,
        rejected,
        errors,
        throughput_rps: ok as f64 / wall,
        rejection_rate: rejected as f64 / total as f64,
        p50_ms: p.p50_ms,
        p95_ms: p.p95_ms,
        p99_ms: p.p99_ms,
        max_ms: p.max_ms,
    }
}

/// The Markdown table the docs carry.
pub fn table(steps: &[StepReport]) -> String {
    let mut s = String::from(
        "| offered req/s | sent | ok | 503 | errors | throughput req/s | rejected | p50 ms | p95 ms | p99 ms |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in steps {
        s.push_str(&format!(
            "| {:.0} | {} | {} | {} | {} | {:.1} | {:.1}% | {:.2} | {:.2} | {:.2} |\n",
            r.offered_rps,
            r.sent,
            r.ok,
            r.rejected,
            r.errors,
            r.throughput_rps,
            r.rejection_rate * 100.0,
            r.p50_ms,
            r.p95_ms,
            r.p99_ms
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_urls() {
        assert_eq!(parse_url("http://127.0.0.1:8080").unwrap().port(), 8080);
        assert!(parse_url("http://localhost:9000/").is_ok());
        assert!(parse_url("http://[::1]:80").is_ok());
        assert!(parse_url("http://10.0.0.1:8080").is_err());
        assert!(parse_url("https://127.0.0.1:8080").is_err());
        assert!(parse_url("127.0.0.1:8080").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rates("10, 100").unwrap(), vec![10.0, 100.0]);
        assert!(parse_rates("0").is_err());
        assert!(parse_rates("x").is_err());
        assert!(parse_rates("1e9").is_err());
    }
}
