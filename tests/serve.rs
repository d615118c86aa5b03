//! The service end to end: the real binary, real sockets, the systemd notify protocol on a
//! real datagram socket, SIGTERM. Every bad input from the issue gets its own request and
//! a check that the error names the problem; the server must keep serving afterwards.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use beltbox_tools::client::{Client, ClientResponse};
use serde_json::{json, Value};

use common::server::*;

#[test]
fn serves_kserve_v2_reports_metrics_refuses_bad_input_and_stops_on_sigterm() {
    let server = Server::start(
        &[],
        Some("[memory]\nbudget = \"256MiB\"\n[limits]\nmax_body = \"64KiB\"\nmax_tensor_elements = 100000\nmax_json_depth = 16\n"),
        &[("WATCHDOG_USEC", "1000000")],
    );
    let mut c = server.client();

    // Health and metadata.
    assert_eq!(c.get("/v2/health/live").unwrap().status, 200);
    let ready = c.get("/v2/health/ready").unwrap();
    assert_eq!(
        (ready.status, ready.json().unwrap()["ready"].clone()),
        (200, json!(true))
    );
    let meta = c.get("/v2/models/digits-int8-qdq").unwrap().json().unwrap();
    assert_eq!(meta["name"], MODEL);
    assert_eq!(meta["versions"], json!(["1.0.0"]));
    assert_eq!(meta["inputs"][0]["shape"], json!([1, 1, 8, 8]));
    assert_eq!(meta["inputs"][0]["datatype"], "FP32");
    assert_eq!(meta["outputs"][0]["name"], "logits");
    assert_eq!(
        c.get("/v2/models/digits-int8-qdq/versions/1.0.0")
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        c.get("/v2/models/digits-int8-qdq/ready").unwrap().status,
        200
    );
    assert_eq!(c.get("/v2").unwrap().json().unwrap()["name"], "beltbox");

    // Every golden image through the binary extension: the label must come back, in
    // the top-1 parameters and through the classification extension.
    let samples = golden();
    for (path, label) in &samples {
        let file = std::fs::read(path).unwrap();
        let (body, hl) = bytes_request(
            &file,
            json!([{ "name": "logits", "parameters": { "classification": 2 } }]),
        );
        let r = post_binary(&mut c, INFER, &body, &hl);
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json().unwrap();
        assert_eq!(v["model_name"], MODEL);
        assert_eq!(v["model_version"], "1.0.0");
        assert_eq!(v["parameters"]["top1_index"], json!(label), "{path:?}");
        let top: &str = v["outputs"][0]["data"][0].as_str().unwrap();
        assert_eq!(top.split(':').nth(1).unwrap(), label.to_string(), "{top}");
        assert_eq!(v["outputs"][0]["datatype"], "BYTES");
        for k in [
            "queue_us",
            "preprocess_us",
            "inference_us",
            "postprocess_us",
            "total_us",
        ] {
            assert!(v["parameters"][k].is_u64(), "{k} missing: {v}");
        }
    }

    // The same frame as a JSON FP32 tensor and as a UINT8 image: identical logits.
    let pgm = std::fs::read(&samples[3].0).unwrap();
    let img = beltbox_core::image::decode_pgm(&pgm).unwrap();
    let scaled: Vec<f32> = img
        .samples
        .iter()
        .map(|&s| s as f32 / img.maxval as f32)
        .collect();
    let fp32 = c
        .post_json(
            INFER,
            &tensor_request(json!([1, 1, 8, 8]), "FP32", json!(scaled)),
        )
        .unwrap();
    assert_eq!(fp32.status, 200, "{}", fp32.text());
    let (body, hl) = bytes_request(&pgm, Value::Null);
    let via_file = post_binary(&mut c, INFER, &body, &hl);
    let logits = |r: &ClientResponse| r.json().unwrap()["outputs"][0]["data"].clone();
    assert_eq!(logits(&fp32), logits(&via_file));
    assert_eq!(fp32.json().unwrap()["outputs"][0]["shape"], json!([1, 10]));
    // Binary output on request.
    let req = json!({ "inputs": [{ "name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": scaled }],
                      "outputs": [{ "name": "logits", "parameters": { "binary_data": true } }] });
    let r = c
        .post_json(INFER, &serde_json::to_vec(&req).unwrap())
        .unwrap();
    let n: usize = r
        .header("inference-header-content-length")
        .unwrap()
        .parse()
        .unwrap();
    let head: Value = serde_json::from_slice(&r.body[..n]).unwrap();
    assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 40);
    let floats: Vec<f32> = r.body[n..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    // JSON carries the shortest decimal that round-trips the f32.
    let expected: Vec<f32> = logits(&fp32)
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(floats, expected);

    // Bad input: status, and an error naming the problem.
    let mut nan = serde_json::to_vec(
        &json!({ "inputs": [{ "name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32",
        "parameters": { "binary_data_size": 256 } }] }),
    )
    .unwrap();
    let nan_hl = nan.len().to_string();
    for i in 0..64 {
        nan.extend_from_slice(&(if i == 9 { f32::NAN } else { 0.5f32 }).to_le_bytes());
    }
    let truncated = {
        let (body, hl) = bytes_request(&pgm, Value::Null);
        (body[..body.len() - 10].to_vec(), hl)
    };
    let deep = format!(
        "{{\"inputs\":[{{\"name\":\"input\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":{}1{}}}]}}",
        "[".repeat(40),
        "]".repeat(40)
    );
    let zeros = |n: usize| json!(vec![0.0; n]);
    // (what, status, error must contain, body, Inference-Header-Content-Length)
    let cases: Vec<BadCase> = vec![
        ("malformed JSON", 400, "malformed JSON", b"{\"inputs\": [".to_vec(), None),
        ("wrong datatype", 400, "INT64 [1, 1, 8, 8] does not match the model input; accepted: FP32", tensor_request(json!([1, 1, 8, 8]), "INT64", zeros(64)), None),
        ("wrong shape", 400, "does not match the model input", tensor_request(json!([1, 8, 8]), "FP32", zeros(64)), None),
        ("wrong element count", 400, "needs 64 elements but 63 were sent", tensor_request(json!([1, 1, 8, 8]), "FP32", zeros(63)), None),
        ("wrong input name", 400, "takes one input named `input`", serde_json::to_vec(&json!({ "inputs": [{ "name": "x", "shape": [1,1,8,8], "datatype": "FP32", "data": zeros(64) }] })).unwrap(), None),
        ("NaN in FP32", 400, "element 9 is NaN or infinite", nan, Some(nan_hl)),
        ("truncated binary payload", 400, "truncated", truncated.0, Some(truncated.1)),
        ("JSON too deep", 400, "nesting is deeper than 16", deep.into_bytes(), None),
        ("too many elements", 400, "over the 100000-element limit", tensor_request(json!([1000, 1000]), "FP32", zeros(1)), None),
        ("unknown output", 400, "unknown output `probs`", serde_json::to_vec(&json!({ "inputs": [{ "name": "input", "shape": [1,1,8,8], "datatype": "FP32", "data": zeros(64) }], "outputs": [{ "name": "probs" }] })).unwrap(), None),
        ("oversized body", 413, "exceeds the 65536-byte limit", vec![b' '; 70_000], None),
    ];
    for (what, status, needle, body, hl) in cases {
        let mut c = server.client();
        let r = match &hl {
            Some(h) => post_binary(&mut c, INFER, &body, h),
            None => c.post_json(INFER, &body).unwrap(),
        };
        assert_eq!(r.status, status, "{what}: {}", r.text());
        let err = r
            .json()
            .unwrap_or_else(|| panic!("{what}: not JSON: {}", r.text()))["error"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            err.contains(needle),
            "{what}: `{err}` does not contain `{needle}`"
        );
    }
    let unknown = c.post_json("/v2/models/nope/infer", b"{}").unwrap();
    assert_eq!(unknown.status, 404);
    assert!(unknown.json().unwrap()["error"]
        .as_str()
        .unwrap()
        .contains("unknown model `nope`; serving: digits-int8-qdq"));
    let mut c = server.client();
    let version = c
        .post_json("/v2/models/digits-int8-qdq/versions/9.9.9/infer", b"{}")
        .unwrap();
    assert_eq!(version.status, 404);
    assert!(
        version.text().contains("has no version `9.9.9`"),
        "{}",
        version.text()
    );
    let mut c = server.client();
    assert_eq!(c.get(INFER).unwrap().status, 405);
    assert_eq!(c.get("/v3/anything").unwrap().status, 404);

    // Raw garbage on a socket: a 400 and a closed connection, nothing else.
    let mut raw = TcpStream::connect(server.addr).unwrap();
    raw.write_all(b"\x16\x03\x01 garbage\r\n\r\n").unwrap();
    let mut answer = String::new();
    raw.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");

    // Still serving after all that.
    let (body, hl) = bytes_request(&pgm, Value::Null);
    let mut c = server.client();
    assert_eq!(post_binary(&mut c, INFER, &body, &hl).status, 200);

    // Metrics agree with what happened.
    let m = server.metrics();
    let ok = samples.len() as f64 + 4.0;
    assert_eq!(
        metric(
            &m,
            "beltbox_requests_total{model=\"digits-int8-qdq\",outcome=\"ok\"}"
        ),
        ok
    );
    assert_eq!(
        metric(
            &m,
            "beltbox_requests_total{model=\"digits-int8-qdq\",outcome=\"bad_request\"}"
        ),
        11.0
    );
    assert_eq!(
        metric(
            &m,
            "beltbox_request_duration_seconds_count{model=\"digits-int8-qdq\",stage=\"inference\"}"
        ),
        ok
    );
    assert_eq!(metric(&m, "beltbox_request_duration_seconds_bucket{model=\"digits-int8-qdq\",stage=\"total\",le=\"+Inf\"}"), ok);
    assert_eq!(metric(&m, "beltbox_up"), 1.0);
    // The service's budget (memory.budget), not the model's manifest ram_mib (64 MiB).
    assert_eq!(
        metric(&m, "beltbox_memory_budget_bytes"),
        256.0 * 1024.0 * 1024.0
    );
    // Every inference answer for the model, good or bad, end to end; statuses by code.
    assert_eq!(
        metric(
            &m,
            "beltbox_request_e2e_seconds_count{model=\"digits-int8-qdq\"}"
        ),
        ok + 11.0
    );
    assert_eq!(
        metric(&m, "beltbox_http_responses_total{code=\"413\"}"),
        1.0
    );
    assert_eq!(
        metric(&m, "beltbox_http_responses_total{code=\"400\"}"),
        10.0
    );
    assert_eq!(
        metric(&m, "beltbox_http_responses_total{code=\"404\"}"),
        3.0
    );
    assert!(metric(&m, "beltbox_memory_heap_peak_bytes") > 0.0);
    assert!(m.contains("beltbox_model_info{model=\"digits-int8-qdq\",version=\"1.0.0\",sha256=\""));
    assert!(
        m.contains("beltbox_latency_p95_seconds{stage=\"total\",window=\"sustained\"}"),
        "{m}"
    );

    let log = server.stop();
    assert!(log.iter().any(|l| l.contains("stopped after")), "{log:?}");
}

#[test]
fn watchdog_pings_while_serving() {
    let mut server = Server::start(&[], None, &[("WATCHDOG_USEC", "400000")]);
    let start = Instant::now();
    let mut pings = 0;
    while start.elapsed() < Duration::from_millis(1500) {
        if server.next_notification() == "WATCHDOG=1" {
            pings += 1;
        }
    }
    // Pings at half the interval: ~7 in 1.5 s; allow for a loaded machine.
    assert!(
        pings >= 3,
        "only {pings} watchdog pings in 1.5 s with WATCHDOG_USEC=400000"
    );
    server.stop();
}

#[test]
fn many_clients_get_answers_or_explicit_503s_never_anything_else() {
    let server = Server::start(
        &["--workers", "2"],
        Some("[server]\nqueue_depth = 2\n"),
        &[],
    );
    let pgm = std::fs::read(&golden()[5].0).unwrap();
    let (body, hl) = bytes_request(&pgm, Value::Null);
    let (body, hl) = (Arc::new(body), Arc::new(hl));
    let threads: Vec<_> = (0..24)
        .map(|_| {
            let (body, hl, addr) = (Arc::clone(&body), Arc::clone(&hl), server.addr);
            std::thread::spawn(move || {
                let mut c = Client::new(addr, Duration::from_secs(60));
                (0..20)
                    .map(|_| {
                        let r = post_binary(&mut c, INFER, &body, &hl);
                        if r.status == 503 {
                            assert_eq!(r.header("retry-after"), Some("1"));
                            assert!(r.text().contains("queue full"), "{}", r.text());
                        } else {
                            assert_eq!(r.status, 200, "{}", r.text());
                            assert_eq!(r.json().unwrap()["parameters"]["top1_index"], 5);
                        }
                        r.status
                    })
                    .collect::<Vec<u16>>()
            })
        })
        .collect();
    let statuses: Vec<u16> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    let rejected = statuses.len() - ok;
    assert!(ok > 0);
    let m = server.metrics();
    assert_eq!(
        metric(
            &m,
            "beltbox_requests_total{model=\"digits-int8-qdq\",outcome=\"ok\"}"
        ),
        ok as f64
    );
    assert_eq!(
        metric(
            &m,
            "beltbox_requests_total{model=\"digits-int8-qdq\",outcome=\"rejected\"}"
        ),
        rejected as f64
    );
    assert_eq!(metric(&m, "beltbox_queue_depth"), 0.0);
    server.stop();
}

#[test]
fn heap_stays_under_the_budget_when_requests_compete_for_memory() {
    const MAX_CONNECTIONS: u64 = 16;
    // Plan total of the model, then a budget a little above it: the admission limit is
    // what is left after loading (and after what 16 connections may hold), and big
    // camera frames (UINT8 images as JSON, resized by the server) each reserve a large
    // share of it while they are decoded.
    let plan = common::json(&common::beltbox(&["plan", "--model", MODEL, "--json"]));
    let total = plan["total_bytes"].as_u64().unwrap();
    let runtime = plan["runtime_bytes"].as_u64().unwrap();
    let budget = total + 9 * 1024 * 1024;
    let server = Server::start(
        &["--workers", "2", "--budget", &budget.to_string()],
        // Requests that find no memory are refused at once (1 ms wait), so the gate shows.
        Some(&format!("[server]\nqueue_depth = 64\nmax_connections = {MAX_CONNECTIONS}\n[limits]\nmax_body = \"4MiB\"\nqueue_timeout_ms = 1\n")),
        &[],
    );
    let m = server.metrics();
    let limit = metric(&m, "beltbox_memory_admission_limit_bytes");
    let baseline = metric(&m, "beltbox_memory_heap_bytes");
    // A gray camera frame (UINT8 through the binary extension) whose reservation once
    // decoded is about 40% of the limit: the frame (1 byte a pixel) plus its
    // preprocessing (the u16 samples: 2 bytes a pixel; colour conversion is read through,
    // so there is no full-size f32 plane). Two fit, a third does not. (Sized for 7 bytes a
    // pixel while the plane existed, the frame became small enough for five to fit, and
    // on a fast machine the gate never engaged.)
    let side = ((limit * 0.4) / 3.0).sqrt() as usize;
    let frame: Vec<u8> = (0..side * side).map(|i| (i % 251) as u8).collect();
    let header = serde_json::to_vec(
        &json!({ "inputs": [{ "name": "input", "shape": [side, side],
        "datatype": "UINT8", "parameters": { "binary_data_size": frame.len() } }] }),
    )
    .unwrap();
    let hl = Arc::new(header.len().to_string());
    let mut body = header;
    body.extend_from_slice(&frame);
    let body = Arc::new(body);
    eprintln!("admission limit {limit}, baseline heap {baseline}, frame {side}x{side}");
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (body, hl, addr) = (Arc::clone(&body), Arc::clone(&hl), server.addr);
            std::thread::spawn(move || {
                let mut c = Client::new(addr, Duration::from_secs(60));
                (0..6)
                    .map(|_| {
                        let r = post_binary(&mut c, INFER, &body, &hl);
                        // 503s come from the memory gate or (1 ms queue limit) the queue.
                        assert!(
                            r.status == 200 || r.status == 503,
                            "{} {}",
                            r.status,
                            r.text()
                        );
                        (r.status, r.text().contains("RAM budget"))
                    })
                    .collect::<Vec<(u16, bool)>>()
            })
        })
        .collect();
    let statuses: Vec<(u16, bool)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let m = server.metrics();
    let peak = metric(&m, "beltbox_memory_heap_peak_bytes");
    assert!(statuses.iter().any(|s| s.0 == 200));
    assert!(
        statuses.iter().any(|s| s.1),
        "the memory gate never engaged: {statuses:?}"
    );
    assert!(
        peak <= (budget - runtime) as f64,
        "heap high-water mark {peak} exceeds the heap budget {} (baseline {baseline}, limit {limit})",
        budget - runtime
    );
    // Beside the requests' reservations, each allowed connection may hold its own buffers
    // (hyper's read buffer, its task): `server.max_connections` x `CONNECTION_BYTES` is
    // set aside outside the limit, as the gate does.
    let connections = (MAX_CONNECTIONS * beltbox::serve::CONNECTION_BYTES) as f64;
    assert!(
        peak - baseline <= limit + connections,
        "requests and connections used {} over a limit of {limit} + {connections} for connections",
        peak - baseline
    );
    assert_eq!(common::server::settled_reserved_bytes(&server), 0.0);
    server.stop();
}

#[test]
fn startup_refuses_an_over_budget_model_with_exit_3() {
    let o = common::beltbox(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--model",
        "mobilenetv2-bench-int8-qdq",
        "--budget",
        "8MiB",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", common::stderr(&o));
    let err = common::stderr(&o);
    assert!(
        err.contains("needs")
            && err.contains("but the budget is 8.0 MiB (from config memory.budget 8MiB)"),
        "{err}"
    );
}

#[test]
fn config_errors_name_the_key_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.toml");
    std::fs::write(&path, "[server]\nworkers = 0\n").unwrap();
    let o = common::beltbox(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        common::stderr(&o).contains("`server.workers`: 0 is out of range"),
        "{}",
        common::stderr(&o)
    );
    let o = common::beltbox(&["run", "--listen", "127.0.0.1:0", "--model", "no-such-model"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(common::stderr(&o).contains("model package `no-such-model` not found"));
    let o = common::beltbox(&["run", "--budget", "12XB"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn serves_on_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("b.sock");
    let listen = format!("unix:{}", sock.display());
    let server = Server::start(&["--listen", &listen], None, &[]);
    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    s.write_all(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.contains("\"ready\":true"), "{answer}");
    server.stop();
    assert!(!sock.exists(), "socket file left behind");
}
