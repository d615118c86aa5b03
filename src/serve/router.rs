//! The routes of the service: KServe v2 (server, health, model metadata and readiness,
//! inference), `/metrics`. A request arrives here from hyper ([`super::conn`]); inference
//! reads its body under the memory gate, decodes it, reserves exactly what its tensors
//! and their preprocessing take, queues the job for a worker and encodes the answer.

use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::TrySendError;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body as _, Incoming};
use hyper::http::request::Parts;
use hyper::Method;
use serde_json::json;

use super::http::{self, BodyError, BodyRules, Encoding, Response};
use super::kserve::{self, DecodeLimits, InferRequest, InputTensor, OutputTensor};
use super::metrics::{self, Gauges, ModelSample, Outcome};
use super::worker::{Done, Job};
use super::{lowconf, swap, ServedModel, Shared};
use beltbox_core::preprocess;

#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Server,
    Live,
    Ready,
    Metrics,
    Model(&'a str, Option<&'a str>),
    ModelReady(&'a str, Option<&'a str>),
    Infer(&'a str, Option<&'a str>),
    RepositoryIndex,
    Load(&'a str),
    Unload(&'a str),
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
        ["v2", "repository", "index"] => Route::RepositoryIndex,
        ["v2", "repository", "models", name, "load"] => Route::Load(name),
        ["v2", "repository", "models", name, "unload"] => Route::Unload(name),
        _ => Route::NotFound,
    }
}

fn method_not_allowed(allow: &str) -> Response {
    Response::error(405, &format!("method not allowed; use {allow}")).with_header("Allow", allow)
}

/// The response body: counts the status and, for inference, observes the end-to-end
/// latency (request head parsed -> response handed to the socket) when hyper is done
/// with it.
pub(super) struct Answer {
    body: Option<Bytes>,
    started: Instant,
    model: Option<Arc<ServedModel>>,
}

impl hyper::body::Body for Answer {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.body.take().map(|b| Ok(hyper::body::Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_none()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.body.as_ref().map_or(0, |b| b.len() as u64))
    }
}

impl From<Bytes> for Answer {
    fn from(b: Bytes) -> Answer {
        Answer {
            body: (!b.is_empty()).then_some(b),
            started: Instant::now(),
            model: None,
        }
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        if let Some(m) = &self.model {
            m.metrics
                .observe_e2e_us(beltbox_core::timing::us(self.started.elapsed()));
        }
    }
}

/// Serves one request.
pub(super) async fn handle(
    shared: Arc<Shared>,
    req: hyper::Request<Incoming>,
) -> hyper::Response<Answer> {
    let started = Instant::now();
    let (parts, mut body) = req.into_parts();
    let (resp, close, model) = dispatch(&shared, &parts, &mut body, started).await;
    shared.metrics.record_status(resp.status);
    // During the drain every answer closes its connection.
    let close = close || shared.stopping.load(Relaxed);
    let mut r: hyper::Response<Answer> = resp.into_hyper(close);
    r.body_mut().started = started;
    r.body_mut().model = model;
    r
}

/// The answer, whether to close the connection after it, and the model it was for.
async fn dispatch(
    shared: &Arc<Shared>,
    parts: &Parts,
    body: &mut Incoming,
    started: Instant,
) -> (Response, bool, Option<Arc<ServedModel>>) {
    let get = parts.method == Method::GET || parts.method == Method::HEAD;
    let path = parts.uri.path();
    let r = route(path);
    if let Route::Infer(name, version) = r {
        if parts.method != Method::POST {
            let (resp, close) = refuse(
                shared,
                parts,
                body,
                method_not_allowed("POST"),
                started,
                false,
            )
            .await;
            return (resp, close, None);
        }
        let model = match lookup(shared, name, version) {
            Ok(m) => m,
            Err(resp) => {
                let (resp, close) = refuse(shared, parts, body, resp, started, false).await;
                return (resp, close, None);
            }
        };
        let (resp, close) = infer_model(shared, &model, parts, body, started).await;
        model
            .metrics
            .record_outcome(Outcome::of_status(resp.status));
        return (resp, close, Some(model));
    }
    // The model-repository extension (Triton's and KServe's): loads run on the blocking
    // pool, never on the HTTP thread, so other requests are served during a swap.
    match r {
        Route::RepositoryIndex => {
            let resp = if get || parts.method == Method::POST {
                repository_index(shared)
            } else {
                method_not_allowed("GET, POST")
            };
            let (resp, close) = refuse(shared, parts, body, resp, started, false).await;
            return (resp, close, None);
        }
        Route::Load(name) | Route::Unload(name) => {
            let resp = if parts.method != Method::POST {
                method_not_allowed("POST")
            } else {
                let (s, n, load) = (
                    Arc::clone(shared),
                    name.to_string(),
                    matches!(r, Route::Load(_)),
                );
                let done = tokio::task::spawn_blocking(move || {
                    if load {
                        swap::load(&s, &n).map(|w| json!(w))
                    } else {
                        swap::unload(&s, &n).map(|()| json!({}))
                    }
                })
                .await;
                match done {
                    Ok(Ok(v)) => Response::json(200, &v),
                    Ok(Err(e)) => Response::error(400, &e.to_string()),
                    Err(e) => Response::error(500, &format!("model load task failed: {e}")),
                }
            };
            let (resp, close) = refuse(shared, parts, body, resp, started, false).await;
            return (resp, close, None);
        }
        _ => {}
    }
    let resp = match (r, get) {
        (Route::NotFound, _) => {
            shared.metrics.unrouted.fetch_add(1, Relaxed);
            Response::error(404, &format!("no such endpoint `{path}`"))
        }
        (_, false) => method_not_allowed("GET, HEAD"),
        (Route::Server, _) => Response::json(
            200,
            &json!({
                "name": "beltbox",
                "version": env!("CARGO_PKG_VERSION"),
                "extensions": ["binary_tensor_data", "classification", "model_repository"],
            }),
        ),
        (Route::Live, _) => Response::json(200, &json!({ "live": true })),
        (Route::Ready, _) => {
            let ready = shared.is_ready();
            let mut body = json!({ "ready": ready, "models": serving_state(shared) });
            if let Some(o) = &shared.outbox {
                body["spool"] = o.health();
            }
            Response::json(if ready { 200 } else { 503 }, &body)
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
        (Route::Infer(..) | Route::RepositoryIndex | Route::Load(_) | Route::Unload(_), _) => {
            Response::error(500, "unreachable route")
        }
    };
    let (resp, close) = refuse(shared, parts, body, resp, started, false).await;
    (resp, close, None)
}

fn body_rules(shared: &Shared, started: Instant) -> BodyRules {
    let cfg = &shared.cfg;
    BodyRules {
        max_body: cfg.max_body_bytes,
        idle: Duration::from_millis(cfg.body_idle_timeout_ms),
        deadline: started + Duration::from_millis(cfg.request_timeout_ms),
        request_timeout_ms: cfg.request_timeout_ms,
        memory_wait: Duration::from_millis(cfg.queue_timeout_ms),
    }
}

fn header<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts.headers.get(name).and_then(|v| v.to_str().ok())
}

/// Answers `resp` to a request whose body was not (fully) taken: a client that waits for
/// `100 Continue` has sent nothing and is answered at once (the connection then closes);
/// otherwise the rest of the body is read and discarded first, so a client that sends
/// its whole body before reading sees the status, not a reset. Returns whether to close.
async fn refuse(
    shared: &Shared,
    parts: &Parts,
    body: &mut Incoming,
    resp: Response,
    started: Instant,
    polled: bool,
) -> (Response, bool) {
    if body.is_end_stream() {
        return (resp, false);
    }
    let expects_continue =
        header(parts, "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if expects_continue && !polled {
        return (resp, true);
    }
    let complete = http::drain(body, &body_rules(shared, started)).await;
    (resp, !complete)
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

/// Inference: admission, body, decoding, the queue. Memory is reserved as it is taken:
/// the body's buffer as bytes arrive, then the decoder's bound, then exactly what the
/// decoded tensors and their preprocessing hold (plus the plan's per-request memory).
async fn infer_model(
    shared: &Shared,
    model: &Arc<ServedModel>,
    parts: &Parts,
    body: &mut Incoming,
    started: Instant,
) -> (Response, bool) {
    let rules = body_rules(shared, started);
    let gate = match (shared.is_ready(), shared.gate.get()) {
        (true, Some(g)) => Arc::clone(g),
        _ => {
            let resp = retry_503("not ready: models are loading or the service is stopping");
            return refuse(shared, parts, body, resp, started, false).await;
        }
    };
    let encoding = match Encoding::parse(header(parts, "content-encoding")) {
        Ok(e) => e,
        Err(e) => return refuse(shared, parts, body, e.response(), started, false).await,
    };
    let json_len = header(parts, kserve::HEADER_LENGTH).and_then(|v| v.trim().parse::<u64>().ok());
    let per_request = model.model.plan.per_request_bytes();
    // What a body of n bytes will need in all; unknown before decompression.
    let projected = |n: u64| match encoding {
        Encoding::Identity => n + kserve::decoded_bound(n, json_len) + per_request,
        _ => n,
    };
    let announced = body.size_hint().exact();
    if announced == Some(0) || (announced.is_none() && body.is_end_stream()) {
        return (Response::error(400, "inference request has no body"), false);
    }
    if let Some(n) = announced {
        let refusal = if n > rules.max_body as u64 {
            Some(BodyError::TooLarge {
                limit: rules.max_body,
                got: n,
            })
        } else {
            let need = projected(n);
            (need > gate.limit()).then_some(BodyError::NeverFits {
                need,
                limit: gate.limit(),
            })
        };
        if let Some(e) = refusal {
            return refuse(shared, parts, body, e.response(), started, false).await;
        }
    }
    let Some(mut res) = gate.try_reserve(0) else {
        return refuse(
            shared,
            parts,
            body,
            retry_503("RAM budget exhausted"),
            started,
            false,
        )
        .await;
    };
    let ticket = shared.admissions.enter();
    if let Some(n) = announced {
        if let Err(e) = http::await_room(&gate, projected(n), rules.memory_wait).await {
            return refuse(shared, parts, body, e.response(), started, false).await;
        }
    }
    let raw = match http::read_body(body, announced, &rules, &mut res, &ticket, projected).await {
        Ok(b) => b,
        // A stalled or broken body: nothing more will come worth waiting for.
        Err(e @ (BodyError::Idle(_) | BodyError::Deadline(_) | BodyError::Malformed(_))) => {
            return (e.response(), true)
        }
        Err(e) => return refuse(shared, parts, body, e.response(), started, true).await,
    };
    if raw.is_empty() {
        return (Response::error(400, "inference request has no body"), false);
    }
    let raw = match http::decode_content(raw, encoding, rules.max_body, &mut res) {
        Ok(b) => b,
        Err(e) => return (e.response(), false),
    };
    let n = raw.len() as u64;
    if let Err(e) = http::reserve(
        &mut res,
        n + kserve::decoded_bound(n, json_len) + per_request,
        rules.memory_wait,
        &ticket,
    )
    .await
    {
        return (e.response(), false);
    }
    let (req, inputs) = match decode(shared, model, parts, &raw) {
        Ok(d) => d,
        Err(resp) => return (resp, false),
    };
    drop(raw);
    let specs = &model.model.manifest().inputs;
    let exact = per_request
        + inputs
            .iter()
            .zip(specs)
            .map(|(t, spec)| {
                t.data.heap_bytes() + preprocess::working_bytes(&t.shape, &t.data, spec)
            })
            .sum::<u64>();
    if let Err(e) = http::reserve(&mut res, exact, rules.memory_wait, &ticket).await {
        return (e.response(), false);
    }
    // Admitted: what it holds now is all it will hold.
    drop(ticket);
    let resp = run(shared, model, req, inputs).await;
    drop(res);
    (resp, false)
}

/// The request's envelope and its tensors in the manifest's input order.
fn decode(
    shared: &Shared,
    model: &ServedModel,
    parts: &Parts,
    body: &[u8],
) -> Result<(InferRequest, Vec<InputTensor>), Response> {
    let bad = |e: kserve::KserveError| Response::error(400, &e.to_string());
    let (json_part, binary) =
        kserve::split_body(body, header(parts, kserve::HEADER_LENGTH)).map_err(bad)?;
    let limits = DecodeLimits {
        max_elements: shared.cfg.max_tensor_elements,
        max_json_depth: shared.cfg.max_json_depth,
    };
    let mut req = kserve::decode_request(json_part, binary, &limits).map_err(bad)?;
    let manifest = model.model.manifest();
    let inputs = kserve::order_inputs(std::mem::take(&mut req.inputs), manifest)
        .map_err(|message| Response::error(400, &message))?;
    if let Some(wanted) = &req.outputs {
        if let Some(w) = wanted
            .iter()
            .find(|w| !manifest.outputs.iter().any(|o| o.name == w.name))
        {
            let known: Vec<&str> = manifest.outputs.iter().map(|o| o.name.as_str()).collect();
            return Err(bad(kserve::KserveError::UnknownOutput {
                model: manifest.name.clone(),
                name: w.name.clone(),
                known: known.join(", "),
            }));
        }
    }
    Ok((req, inputs))
}

/// Queues the job (503 when the queue is full) and waits for its worker's answer.
async fn run(
    shared: &Shared,
    model: &Arc<ServedModel>,
    req: InferRequest,
    inputs: Vec<InputTensor>,
) -> Response {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job = Job {
        model: Arc::clone(model),
        inputs,
        enqueued: Instant::now(),
        request_id: req.id.clone(),
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
    match rx.await {
        Ok(Ok(done)) => {
            let spooled = acknowledge(shared, &done).await;
            respond(
                model,
                req.id.as_deref(),
                req.outputs.as_deref(),
                req.binary_data_output,
                &done,
                spooled,
            )
        }
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

/// The acknowledgement contract (`outbox`): waits until the result's record is durable.
/// `None` when the spool is off; `Some(Err)` when the answer goes out unspooled.
async fn acknowledge(shared: &Shared, done: &Done) -> Option<Result<u64, String>> {
    let outbox = shared.outbox.as_ref()?;
    let acked = match &done.spooled {
        Some(Ok(seq)) => outbox.acknowledge(*seq).await.map(|()| *seq),
        Some(Err(why)) => Err(why.clone()),
        None => Err("not recorded".into()),
    };
    if acked.is_err() {
        outbox.count_unspooled();
    }
    Some(acked)
}

fn respond(
    model: &ServedModel,
    id: Option<&str>,
    wanted: Option<&[kserve::RequestedOutput]>,
    binary_data_output: bool,
    done: &Done,
    spooled: Option<Result<u64, String>>,
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
    if let Some(low) = done.low_confidence {
        params.push(("low_confidence", json!(low)));
    }
    if let Some(sec) = &done.secondary {
        params.push(("secondary_model", json!(sec.model)));
        match (&sec.top1, &sec.error) {
            (Some(c), _) => {
                params.push(("secondary_top1_index", json!(c.index)));
                params.push(("secondary_top1_label", json!(c.label)));
                params.push(("secondary_top1_score", json!(c.score)));
            }
            (None, Some(e)) => params.push(("secondary_error", json!(e))),
            (None, None) => {}
        }
    }
    match spooled {
        Some(Ok(seq)) => {
            params.push(("spooled", json!(true)));
            params.push(("result_seq", json!(seq)));
        }
        Some(Err(why)) => {
            params.push(("spooled", json!(false)));
            params.push(("spool_error", json!(why)));
        }
        None => {}
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

/// What serves, for the health answer: each model's version and whether it is a
/// candidate on probation (OTA).
fn serving_state(shared: &Shared) -> serde_json::Value {
    let watched: Vec<String> = shared
        .watches
        .lock()
        .map(|w| w.iter().map(|x| x.model.name().to_string()).collect())
        .unwrap_or_default();
    let rows: Vec<_> = shared
        .models()
        .iter()
        .map(|m| {
            let passed: Vec<_> = m
                .origin
                .passed_over
                .iter()
                .map(|(link, why)| json!({"link": link, "why": why}))
                .collect();
            json!({
                "name": m.name(),
                "version": m.version(),
                "on_probation": watched.iter().any(|n| n == m.name()),
                // Which link of the fallback chain serves, and the links passed over.
                "source": m.origin.source.label(),
                "passed_over": passed,
            })
        })
        .collect();
    json!(rows)
}

/// `[{"name", "version", "state", "reason"}]` for every configured model (Triton's form).
fn repository_index(shared: &Shared) -> Response {
    let serving = shared.models();
    let configured = shared.configured.get().cloned().unwrap_or_default();
    let rows: Vec<_> = configured
        .iter()
        .map(
            |(name, _)| match serving.iter().find(|m| m.name() == name) {
                Some(m) => {
                    json!({"name": name, "version": m.version(), "state": "READY", "reason": ""})
                }
                None => json!({"name": name, "state": "UNAVAILABLE", "reason": "unloaded"}),
            },
        )
        .collect();
    Response::json(200, &json!(rows))
}

/// `beltbox_model_source` and `beltbox_model_fallbacks`: the fallback chain's state.
fn fallback_metrics(models: &[Arc<ServedModel>], out: &mut beltbox_core::prom::Exposition) {
    use beltbox_core::prom::{labels, Kind};
    out.family(
        "beltbox_model_source",
        Kind::Gauge,
        "1 for the link of the fallback chain each model serves from: candidate, active, previous, factory (OTA store) or bundled (the image).",
    );
    for m in models {
        let v = m.version();
        let l = labels(&[
            ("model", m.name()),
            ("version", &v),
            ("source", m.origin.source.label()),
        ]);
        out.sample("beltbox_model_source", &l, 1);
    }
    out.family(
        "beltbox_model_fallbacks",
        Kind::Gauge,
        "Links of the fallback chain passed over at load because they failed to load, verify, fit or self-check (0: the first choice serves).",
    );
    for m in models {
        let l = labels(&[("model", m.name())]);
        out.sample("beltbox_model_fallbacks", &l, m.origin.passed_over.len());
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
    let mut out = beltbox_core::prom::Exposition::new();
    fallback_metrics(&models, &mut out);
    lowconf::prometheus(&models, &mut out);
    if let Some(o) = &shared.outbox {
        o.prometheus(&mut out);
    }
    text.push_str(&out.finish());
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
