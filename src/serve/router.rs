//! The routes of the service: KServe v2 (server, health, model metadata and readiness,
//! inference), `/metrics`. A request's head arrives here from [`super::conn`]; inference
//! reserves its memory, reads and decodes the body, queues the job and encodes the answer.

use std::io::{BufReader, Write};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::TrySendError;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::conn::{DeadlineReader, Stream};
use super::http::{self, Framing, Head, HttpError, Response};
use super::kserve::{self, DecodeLimits, OutputTensor};
use super::metrics::{self, Gauges, ModelSample, Outcome};
use super::worker::{Done, Job};
use super::{ServedModel, Shared};

#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Server,
    Live,
    Ready,
    Metrics,
    Model(&'a str, Option<&'a str>),
    ModelReady(&'a str, Option<&'a str>),
    Infer(&'a str, Option<&'a str>),
    NotFound,
}

fn route(path: &str) -> Route<'_> {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    match segs.as_slice() {
        ["v2"] => Route::Server,
        ["v2", "health", "live"] => Route::Live,
        ["v2", "health", "ready"] => Route::Ready,
        ["metrics"] => Route::Metrics,
        ["v2", "models", name] => Route::Model(name, None),
        ["v2", "models", name, "ready"] => Route::ModelReady(name, None),
        ["v2", "models", name, "infer"] => Route::Infer(name, None),
        ["v2", "models", name, "versions", v] => Route::Model(name, Some(v)),
        ["v2", "models", name, "versions", v, "ready"] => Route::ModelReady(name, Some(v)),
        ["v2", "models", name, "versions", v, "infer"] => Route::Infer(name, Some(v)),
        _ => Route::NotFound,
    }
}

fn method_not_allowed(allow: &str) -> Response {
    Response::error(405, &format!("method not allowed; use {allow}")).with_header("Allow", allow)
}

/// Returns the response and whether the connection can carry another request (false
/// when the body was not consumed).
pub(super) fn handle(
    shared: &Shared,
    head: &Head,
    reader: &mut BufReader<DeadlineReader>,
    writer: &mut Stream,
    limits: &http::Limits,
) -> (Response, bool) {
    let get = head.method == "GET" || head.method == "HEAD";
    let has_body = !matches!(head.framing(), Ok(Framing::None));
    let r = route(&head.path);
    if let Route::Infer(name, version) = r {
        if head.method != "POST" {
            return (method_not_allowed("POST"), !has_body);
        }
        return infer(shared, name, version, head, reader, writer, limits);
    }
    let resp = match (r, get) {
        (Route::NotFound, _) => {
            shared.metrics.unrouted.fetch_add(1, Relaxed);
            Response::error(404, &format!("no such endpoint `{}`", head.path))
        }
        (_, false) => method_not_allowed("GET, HEAD"),
        (Route::Server, _) => Response::json(
            200,
            &json!({
                "name": "beltbox",
                "version": env!("CARGO_PKG_VERSION"),
                "extensions": ["binary_tensor_data", "classification"],
            }),
        ),
        (Route::Live, _) => Response::json(200, &json!({ "live": true })),
        (Route::Ready, _) => {
            let ready = shared.is_ready();
            Response::json(if ready { 200 } else { 503 }, &json!({ "ready": ready }))
        }
        (Route::Metrics, _) => Response::new(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            render_metrics(shared).into_bytes(),
        ),
        (Route::Model(name, v), _) => match lookup(shared, name, v) {
            Ok(m) => Response::json(
                200,
                &kserve::model_metadata(m.model.manifest(), platform(&m)),
            ),
            Err(resp) => resp,
        },
        (Route::ModelReady(name, v), _) => match lookup(shared, name, v) {
            Ok(_) => {
                let ready = shared.is_ready();
                Response::json(
                    if ready { 200 } else { 503 },
                    &json!({ "name": name, "ready": ready }),
                )
            }
            Err(resp) => resp,
        },
        (Route::Infer(..), _) => Response::error(500, "unreachable route"),
    };
    // A body we did not read makes the connection unusable for the next request.
    (resp, !has_body)
}

fn platform(m: &ServedModel) -> &'static str {
    match m.model.manifest().model.format {
        beltbox_core::manifest::Format::Onnx => "onnx_onnxv1",
        beltbox_core::manifest::Format::Tflite => "tensorflow_tflite",
    }
}

fn lookup(
    shared: &Shared,
    name: &str,
    version: Option<&str>,
) -> Result<Arc<ServedModel>, Response> {
    let Some(m) = shared.find(name) else {
        shared.metrics.unrouted.fetch_add(1, Relaxed);
        let names: Vec<String> = shared
            .models()
            .iter()
            .map(|m| m.name().to_string())
            .collect();
        let msg = if names.is_empty() {
            format!("unknown model `{name}` (models are still loading)")
        } else {
            format!("unknown model `{name}`; serving: {}", names.join(", "))
        };
        return Err(Response::error(404, &msg));
    };
    if let Some(v) = version {
        if v != m.version() {
            shared.metrics.unrouted.fetch_add(1, Relaxed);
            return Err(Response::error(
                404,
                &format!(
                    "model `{name}` has no version `{v}`; serving version {}",
                    m.version()
                ),
            ));
        }
    }
    Ok(m)
}

fn retry_503(message: &str) -> Response {
    Response::error(503, message).with_header("Retry-After", "1")
}

fn infer(
    shared: &Shared,
    name: &str,
    version: Option<&str>,
    head: &Head,
    reader: &mut BufReader<DeadlineReader>,
    writer: &mut Stream,
    limits: &http::Limits,
) -> (Response, bool) {
    let model = match lookup(shared, name, version) {
        Ok(m) => m,
        Err(resp) => return (resp, false),
    };
    let (resp, reusable) = infer_model(shared, &model, head, reader, writer, limits);
    model
        .metrics
        .record_outcome(Outcome::of_status(resp.status));
    (resp, reusable)
}

fn infer_model(
    shared: &Shared,
    model: &Arc<ServedModel>,
    head: &Head,
    reader: &mut BufReader<DeadlineReader>,
    writer: &mut Stream,
    limits: &http::Limits,
) -> (Response, bool) {
    if !shared.is_ready() {
        return (
            retry_503("not ready: models are loading or the service is stopping"),
            false,
        );
    }
    let framing = match head.framing() {
        Ok(f) => f,
        Err(e) => {
            return (
                Response::error(e.status().unwrap_or(400), &e.to_string()),
                false,
            )
        }
    };
    let announced = match framing {
        Framing::None => return (Response::error(400, "inference request has no body"), true),
        Framing::Length(n) if n > limits.max_body_bytes as u64 => {
            let e = HttpError::BodyTooLarge {
                limit: limits.max_body_bytes,
                got: n,
            };
            return (Response::error(413, &e.to_string()), false);
        }
        Framing::Length(n) => n,
        Framing::Chunked => limits.max_body_bytes as u64,
    };
    // Memory first: the body and everything decoded from it count against the budget.
    let Some(gate) = shared.gate.get() else {
        return (retry_503("not ready"), false);
    };
    let wait = Duration::from_millis(shared.cfg.queue_timeout_ms);
    let need = model.request_bytes(announced);
    let Some(reservation) = gate.reserve_until(need, Instant::now() + wait) else {
        return (
            retry_503(&format!(
                "RAM budget: {} bytes needed for this request do not fit beside the {} reserved by requests in flight (limit {})",
                need,
                gate.reserved(),
                gate.limit()
            )),
            false,
        );
    };
    if head.expects_continue() {
        let _ = writer
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .and_then(|_| writer.flush());
    }
    let body = match http::read_body(reader, head, limits) {
        Ok(b) => b,
        Err(e) => {
            let status = e.status().unwrap_or(400);
            return (Response::error(status, &e.to_string()), false);
        }
    };
    let resp = decode_and_run(shared, model, head, &body);
    drop(body);
    drop(reservation);
    (resp, true)
}

fn decode_and_run(shared: &Shared, model: &Arc<ServedModel>, head: &Head, body: &[u8]) -> Response {
    let bad = |e: kserve::KserveError| Response::error(400, &e.to_string());
    let (json_part, binary) = match kserve::split_body(body, head.header(kserve::HEADER_LENGTH)) {
        Ok(p) => p,
        Err(e) => return bad(e),
    };
    let limits = DecodeLimits {
        max_elements: shared.cfg.max_tensor_elements,
        max_json_depth: shared.cfg.max_json_depth,
    };
    let mut req = match kserve::decode_request(json_part, binary, &limits) {
        Ok(r) => r,
        Err(e) => return bad(e),
    };
    let manifest = model.model.manifest();
    let inputs = match kserve::order_inputs(std::mem::take(&mut req.inputs), manifest) {
        Ok(v) => v,
        Err(message) => return Response::error(400, &message),
    };
    if let Some(wanted) = &req.outputs {
        if let Some(w) = wanted
            .iter()
            .find(|w| !manifest.outputs.iter().any(|o| o.name == w.name))
        {
            let known: Vec<&str> = manifest.outputs.iter().map(|o| o.name.as_str()).collect();
            return bad(kserve::KserveError::UnknownOutput {
                model: manifest.name.clone(),
                name: w.name.clone(),
                known: known.join(", "),
            });
        }
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let job = Job {
        model: Arc::clone(model),
        inputs,
        enqueued: Instant::now(),
        reply: tx,
    };
    shared.metrics.queue_depth.fetch_add(1, Relaxed);
    match shared.queue.try_send(job) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            shared.metrics.queue_depth.fetch_sub(1, Relaxed);
            return retry_503(&format!(
                "queue full: {} request(s) waiting for {} worker(s) (server.queue_depth)",
                shared.cfg.queue_depth, shared.cfg.workers
            ));
        }
        Err(TrySendError::Disconnected(_)) => {
            shared.metrics.queue_depth.fetch_sub(1, Relaxed);
            return retry_503("stopping");
        }
    }
    match rx.recv() {
        Ok(Ok(done)) => respond(
            model,
            req.id.as_deref(),
            req.outputs.as_deref(),
            req.binary_data_output,
            &done,
        ),
        Ok(Err((status, msg))) => {
            let r = Response::error(status, &msg);
            if status == 503 {
                r.with_header("Retry-After", "1")
            } else {
                r
            }
        }
        Err(_) => Response::error(500, "the inference worker stopped before answering"),
    }
}

fn respond(
    model: &ServedModel,
    id: Option<&str>,
    wanted: Option<&[kserve::RequestedOutput]>,
    binary_data_output: bool,
    done: &Done,
) -> Response {
    let manifest = model.model.manifest();
    let outputs: Vec<OutputTensor> = manifest
        .outputs
        .iter()
        .zip(&done.outputs)
        .map(|(spec, t)| OutputTensor {
            name: &spec.name,
            tensor: t,
            labels: &model.model.labels,
        })
        .collect();
    let t = &done.stages;
    let mut params: kserve::ResponseParams = vec![
        ("queue_us", json!(t.queue_us)),
        ("preprocess_us", json!(t.preprocess_us)),
        ("inference_us", json!(t.inference_us)),
        ("postprocess_us", json!(t.postprocess_us)),
        ("total_us", json!(t.total_us())),
    ];
    if let Some(c) = &done.top1 {
        params.push(("top1_index", json!(c.index)));
        params.push(("top1_label", json!(c.label)));
        params.push(("top1_score", json!(c.score)));
    }
    if manifest.detection.is_some() {
        // KServe v2 parameters hold only strings, numbers and bools: the list travels as
        // one JSON string (docs/service.md, "Detections").
        params.push(("detection_count", json!(done.detections.len())));
        params.push((
            "detections",
            json!(serde_json::to_string(&done.detections).unwrap_or_else(|_| "[]".into())),
        ));
    }
    match kserve::encode_response(manifest, id, &outputs, wanted, binary_data_output, params) {
        Ok((text, bin)) if bin.is_empty() => Response::new(200, "application/json", text),
        Ok((text, bin)) => {
            let len = text.len();
            let mut body = text;
            body.extend_from_slice(&bin);
            Response::new(200, "application/octet-stream", body)
                .with_header("Inference-Header-Content-Length", &len.to_string())
        }
        Err(e) => Response::error(400, &e.to_string()),
    }
}

fn render_metrics(shared: &Shared) -> String {
    let models = shared.models();
    let versions: Vec<String> = models.iter().map(|m| m.version()).collect();
    let samples: Vec<ModelSample> = models
        .iter()
        .zip(&versions)
        .map(|(m, v)| ModelSample {
            name: m.name(),
            version: v,
            sha256: m.model.package.model_sha256(),
            metrics: &m.metrics,
        })
        .collect();
    let gate = shared.gate.get();
    let gauges = Gauges {
        queue_capacity: shared.cfg.queue_depth as u64,
        workers: shared.cfg.workers as u64,
        heap_bytes: beltbox_core::memory::alloc::snapshot().map(|(c, p)| (c as u64, p as u64)),
        budget_bytes: shared
            .budget
            .get()
            .and_then(|b| b.as_ref().map(|b| b.bytes)),
        reserved_bytes: gate.map(|g| g.reserved()).unwrap_or(0),
        admission_limit_bytes: gate.map(|g| g.limit()).filter(|&l| l != u64::MAX),
        rss_bytes: beltbox_core::procfs::rss_bytes(),
        uptime_s: shared.started.elapsed().as_secs_f64(),
        ready: shared.is_ready(),
    };
    let mut text = metrics::render(&shared.metrics, &samples, &gauges);
    // Thermal state and burst/sustained p95, computed at scrape time from the windows.
    let report = shared
        .windows
        .lock()
        .map(|w| w.report(shared.now_ms()))
        .ok();
    let throttle = shared.throttle.lock().ok().and_then(|t| t.clone());
    if let Some(r) = report {
        text.push_str(&beltbox_core::thermal::status::prometheus(
            &r,
            None,
            throttle.as_ref(),
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("/v2"), Route::Server);
        assert_eq!(route("/v2/"), Route::Server);
        assert_eq!(route("/v2/health/live"), Route::Live);
        assert_eq!(route("/v2/health/ready"), Route::Ready);
        assert_eq!(route("/metrics"), Route::Metrics);
        assert_eq!(route("/v2/models/m"), Route::Model("m", None));
        assert_eq!(
            route("/v2/models/m/versions/1.0.0"),
            Route::Model("m", Some("1.0.0"))
        );
        assert_eq!(route("/v2/models/m/ready"), Route::ModelReady("m", None));
        assert_eq!(
            route("/v2/models/m/versions/2/ready"),
            Route::ModelReady("m", Some("2"))
        );
        assert_eq!(route("/v2/models/m/infer"), Route::Infer("m", None));
        assert_eq!(
            route("/v2/models/m/versions/2/infer"),
            Route::Infer("m", Some("2"))
        );
        assert_eq!(route("/v2/models"), Route::NotFound);
        assert_eq!(route("/"), Route::NotFound);
        assert_eq!(route("/v2/models/m/infer/x"), Route::NotFound);
    }
}
