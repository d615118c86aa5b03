//! The service as an attacker and a camera would use it (issue #14): each test is named
//! after what it proves and failed on the hand-written HTTP/1.1 server this replaced.
//! Real sockets, the real binary; Python's stock `http.client` where a stock client's
//! behaviour is the point.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::server::*;

/// Reads one HTTP/1.1 response (head, then Content-Length bytes): status, body.
fn read_response(s: &mut TcpStream) -> std::io::Result<(u16, String)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    Ok((status, String::from_utf8_lossy(&body).to_string()))
}

/// A digits request as JSON (the golden sample 5, as FP32), and its expected label.
fn digits_json() -> (Vec<u8>, usize) {
    let (path, label) = golden()[5].clone();
    let img = beltbox_core::image::decode_pgm(&std::fs::read(path).unwrap()).unwrap();
    let x: Vec<f32> = img
        .samples
        .iter()
        .map(|&s| s as f32 / img.maxval as f32)
        .collect();
    (tensor_request(json!([1, 1, 8, 8]), "FP32", json!(x)), label)
}

/// Client faults (stalls, bad encodings, bad framing) are never counted as model errors.
fn assert_no_model_errors(metrics: &str) {
    assert_eq!(
        metric(
            metrics,
            "beltbox_requests_total{model=\"digits-int8-qdq\",outcome=\"error\"}"
        ),
        0.0
    );
}

fn top1(text: &str) -> Value {
    serde_json::from_str::<Value>(text).unwrap()["parameters"]["top1_index"].clone()
}

/// A binary-extension request with one UINT8 tensor of `shape`.
fn binary_tensor(shape: &[usize], data: &[u8]) -> (Vec<u8>, String) {
    let req = json!({ "inputs": [{ "name": "input", "shape": shape, "datatype": "UINT8",
        "parameters": { "binary_data_size": data.len() } }] });
    let mut body = serde_json::to_vec(&req).unwrap();
    let hl = body.len().to_string();
    body.extend_from_slice(data);
    (body, hl)
}

/// A deterministic camera-like RGB frame (gradients plus a bright square).
fn frame(h: usize, w: usize) -> Vec<u8> {
    let mut f = vec![0u8; h * w * 3];
    for y in 0..h {
        for x in 0..w {
            let i = (y * w + x) * 3;
            let inside = (h / 3..2 * h / 3).contains(&y) && (w / 3..w / 2).contains(&x);
            f[i] = if inside { 250 } else { (x * 255 / w) as u8 };
            f[i + 1] = if inside { 250 } else { (y * 255 / h) as u8 };
            f[i + 2] = ((x + y) % 256) as u8;
        }
    }
    f
}

fn png_rgb(h: usize, w: usize, pixels: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut e = png::Encoder::new(&mut out, w as u32, h as u32);
    e.set_color(png::ColorType::Rgb);
    e.set_depth(png::BitDepth::Eight);
    let mut wr = e.write_header().unwrap();
    wr.write_image_data(pixels).unwrap();
    drop(wr);
    out
}

fn logits(text: &str) -> Value {
    serde_json::from_str::<Value>(text).unwrap()["outputs"][0]["data"].clone()
}

fn camera_frame_is_served(h: usize, w: usize, config: &str) {
    let server = Server::start(&[], Some(config), &[]);
    let pixels = frame(h, w);
    let (body, hl) = binary_tensor(&[h, w, 3], &pixels);
    let mut c = server.client();
    let r = post_binary(&mut c, INFER, &body, &hl);
    assert_eq!(r.status, 200, "{w}x{h} UINT8 frame: {}", r.text());
    // The same frame as a PNG file (BYTES): the same preprocessing, the same logits.
    let (png_body, png_hl) = bytes_request(&png_rgb(h, w, &pixels), Value::Null);
    let p = post_binary(&mut c, INFER, &png_body, &png_hl);
    assert_eq!(p.status, 200, "{w}x{h} PNG frame: {}", p.text());
    assert_eq!(logits(&r.text()), logits(&p.text()));
    assert_eq!(common::server::settled_reserved_bytes(&server), 0.0);
    server.stop();
}

#[test]
fn camera_frame_720p_binary_is_served() {
    // A 64 MiB service budget: the digits model's own manifest ram_mib, which used to
    // bound the requests (and refused this frame with a 503 that could never succeed).
    camera_frame_is_served(720, 1280, "[memory]\nbudget = \"64MiB\"\n");
}

#[test]
fn camera_frame_1080p_binary_is_served_with_the_shipped_limits() {
    // The shipped cross/beltbox.toml budget and limits.
    let shipped = std::fs::read_to_string(common::repo().join("cross/beltbox.toml")).unwrap();
    let pick = |key: &str| {
        shipped
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("no {key} in cross/beltbox.toml"))
            .to_string()
    };
    let config = format!(
        "[memory]\n{}\n[limits]\n{}\n",
        pick("budget ="),
        pick("max_body =")
    );
    camera_frame_is_served(1080, 1920, &config);
}

#[test]
fn chunked_body_is_admitted() {
    let server = Server::start(&[], Some("[memory]\nbudget = \"64MiB\"\n"), &[]);
    let (body, label) = digits_json();
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!(
        "POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for part in body.chunks(100) {
        req.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        req.extend_from_slice(part);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    s.write_all(&req).unwrap();
    let (status, text) = read_response(&mut s).unwrap();
    assert_eq!(status, 200, "{text}");
    assert_eq!(top1(&text), json!(label));
    server.stop();
}

#[test]
fn announced_length_cannot_starve_others() {
    let server = Server::start(
        &[],
        Some("[memory]\nbudget = \"64MiB\"\n[limits]\nbody_idle_timeout_ms = 1500\n"),
        &[],
    );
    // Three sockets announce a 2.65 MB body and send one byte of it.
    let mut stalled: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(server.addr).unwrap();
            s.write_all(
                format!("POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2650000\r\n\r\n{{").as_bytes(),
            )
            .unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let (body, label) = digits_json();
    let mut c = server.client();
    let start = Instant::now();
    for i in 0..16 {
        let r = c.post_json(INFER, &body).unwrap();
        assert_eq!(r.status, 200, "good request {i}: {}", r.text());
        assert_eq!(top1(&r.text()), json!(label));
    }
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "16 good requests took {:?} beside the stalled bodies",
        start.elapsed()
    );
    // The stalled bodies are answered 408 once they make no progress.
    for s in &mut stalled {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let (status, text) = read_response(s).unwrap();
        assert_eq!(status, 408, "{text}");
        assert!(text.contains("body_idle_timeout_ms"), "{text}");
    }
    let m = server.metrics();
    assert_eq!(
        metric(&m, "beltbox_http_responses_total{code=\"408\"}"),
        3.0
    );
    // A stalled client is a client fault, never a model error.
    assert_no_model_errors(&m);
    server.stop();
}

#[test]
fn slow_clients_hold_only_their_slot() {
    let server = Arc::new(Server::start(
        &[],
        Some("[limits]\nheader_timeout_ms = 3000\n"),
        &[],
    ));
    // 100 connections trickle a request head one byte every 50 ms (slowloris).
    let addr = server.addr;
    let slow = std::thread::spawn(move || {
        let mut socks: Vec<TcpStream> = (0..100)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        let head = b"POST /v2/models/digits-int8-qdq/infer HTTP/1.1\r\nHost: x\r\nX-Slow: ";
        let mut closed = 0;
        for i in 0..120 {
            for s in &mut socks {
                if s.write_all(&[head[i % head.len()]]).is_err() {
                    closed += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        closed
    });
    std::thread::sleep(Duration::from_millis(300));
    let (body, label) = digits_json();
    let mut served = 0;
    for _ in 0..30 {
        let mut c = server.client();
        let r = c.post_json(INFER, &body).unwrap();
        if r.status == 200 && top1(&r.text()) == json!(label) {
            served += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(served, 30, "good requests served beside 100 slow sockets");
    // The header timeout closed the slow heads (their writes then fail).
    let closed = slow.join().unwrap();
    assert!(closed >= 100, "only {closed} failed writes to slow sockets");
    let m = server.metrics();
    assert_eq!(metric(&m, "beltbox_connections_refused_total"), 0.0);
    Arc::try_unwrap(server).ok().unwrap().stop();
}

#[test]
fn a_peer_over_its_connection_cap_gets_503_and_others_are_served() {
    let server = Server::start(&[], Some("[server]\nmax_connections_per_peer = 4\n"), &[]);
    let held: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(server.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut fifth = TcpStream::connect(server.addr).unwrap();
    fifth
        .write_all(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (status, text) = read_response(&mut fifth).unwrap();
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("max_connections_per_peer = 4"), "{text}");
    drop(held);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(server.client().get("/v2/health/ready").unwrap().status, 200);
    server.stop();
}

/// Python's stock `http.client`: sends the whole body, then reads the status.
fn python_post(addr: SocketAddr, body_bytes: usize) -> (u16, String) {
    let script = format!(
        r#"
import http.client, json, sys
c = http.client.HTTPConnection("{ip}", {port}, timeout=60)
body = b'{{"inputs": [{{"name": "input", "shape": [1], "datatype": "FP32", "data": [' + b'0,' * ({n} // 2 - 60) + b'0]}}]}}'
c.request("POST", "{INFER}", body=body, headers={{"Content-Type": "application/json"}})
r = c.getresponse()
print(r.status)
print(r.read().decode())
"#,
        ip = addr.ip(),
        port = addr.port(),
        n = body_bytes
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "python http.client failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, body) = stdout.split_once('\n').unwrap();
    (status.trim().parse().unwrap(), body.to_string())
}

#[test]
fn refused_body_status_reaches_python_client() {
    let server = Server::start(
        &[],
        Some("[memory]\nbudget = \"64MiB\"\n[limits]\nmax_body = \"1MiB\"\n"),
        &[],
    );
    // Over limits.max_body: 413, read by a client that sent all 3 MB first.
    let (status, text) = python_post(server.addr, 3_000_000);
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("exceeds the 1048576-byte limit"), "{text}");
    // Under max_body but more than the service's budget can ever hold for a request.
    drop(server);
    let server = Server::start(
        &[],
        Some("[memory]\nbudget = \"40MiB\"\n[limits]\nmax_body = \"8MiB\"\n"),
        &[],
    );
    let (status, text) = python_post(server.addr, 6_000_000);
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("can never be admitted"), "{text}");
    // The server is still serving.
    let (body, _) = digits_json();
    assert_eq!(server.client().post_json(INFER, &body).unwrap().status, 200);
    server.stop();
}

#[test]
fn sigterm_closes_listener_first() {
    let server = Server::start(&[], None, &[]);
    let addr = server.addr;
    // A request in flight: its head and half its body are sent.
    let (body, label) = digits_json();
    let mut inflight = TcpStream::connect(addr).unwrap();
    let half = body.len() / 2;
    inflight
        .write_all(
            format!(
                "POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .unwrap();
    inflight.write_all(&body[..half]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    server.sigterm();
    // The listener closes at once: a new connection is refused by the kernel.
    let start = Instant::now();
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            _ => {}
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "the listener still accepts {:?} after SIGTERM",
            start.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The request in flight still completes, and its connection then closes.
    inflight.write_all(&body[half..]).unwrap();
    inflight
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (status, text) = read_response(&mut inflight).unwrap();
    assert_eq!(status, 200, "{text}");
    assert_eq!(top1(&text), json!(label));
    let mut rest = Vec::new();
    assert_eq!(inflight.read_to_end(&mut rest).unwrap_or(0), 0);
    let log = server.wait_stopped();
    assert!(
        log.iter().any(|l| l.contains("stopped after 1 successful")),
        "{log:?}"
    );
}

#[test]
fn stalled_chunked_body_is_408_and_unsupported_encodings_are_client_faults() {
    let server = Server::start(&[], Some("[limits]\nbody_idle_timeout_ms = 500\n"), &[]);
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        format!(
            "POST {INFER} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{{\"in\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let (status, text) = read_response(&mut s).unwrap();
    assert_eq!(status, 408, "{text}");
    // Content-Encoding br: 415 naming the encoding; a body in a transfer coding other
    // than chunked is refused by HTTP itself (hyper); neither is a model error.
    let mut c = server.client();
    let r = c
        .request(
            "POST",
            INFER,
            &[
                ("Content-Encoding", "br"),
                ("Content-Type", "application/json"),
            ],
            b"{}",
        )
        .unwrap();
    assert_eq!(r.status, 415, "{}", r.text());
    assert!(r.text().contains("`br` is not supported"), "{}", r.text());
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        format!("POST {INFER} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nxx").as_bytes(),
    )
    .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 4") || answer.starts_with("HTTP/1.1 5") || answer.is_empty(),
        "{answer}"
    );
    let m = server.metrics();
    assert_no_model_errors(&m);
    server.stop();
}

#[test]
fn gzip_and_deflate_bodies_are_decoded() {
    let server = Server::start(&[], None, &[]);
    let (body, label) = digits_json();
    let mut c = server.client();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&body).unwrap();
    let mut zl = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    zl.write_all(&body).unwrap();
    for (enc, data) in [
        ("gzip", gz.finish().unwrap()),
        ("deflate", zl.finish().unwrap()),
    ] {
        let r = c
            .request(
                "POST",
                INFER,
                &[
                    ("Content-Encoding", enc),
                    ("Content-Type", "application/json"),
                ],
                &data,
            )
            .unwrap();
        assert_eq!(r.status, 200, "{enc}: {}", r.text());
        assert_eq!(top1(&r.text()), json!(label), "{enc}");
    }
    // A bomb: 64 MiB of zeros in ~64 KiB stops at limits.max_body (8 MiB).
    let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    bomb.write_all(&vec![b' '; 64 << 20]).unwrap();
    let r = c
        .request(
            "POST",
            INFER,
            &[("Content-Encoding", "gzip")],
            &bomb.finish().unwrap(),
        )
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("inflates past the 8388608-byte limit"),
        "{}",
        r.text()
    );
    server.stop();
}

/// Peak resident set size of a process, from /proc.
fn vm_hwm(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024
}

#[test]
// Under qemu-user a process's VmHWM is QEMU's own (translator and code cache included).
#[cfg_attr(
    not(target_arch = "x86_64"),
    ignore = "VmHWM under qemu-user measures QEMU; run on the board"
)]
fn rss_stays_under_budget_with_large_bodies() {
    // The digits model in a 64 MiB service budget, 60 clients at once, each sending a
    // ~2 MB JSON camera frame (UINT8 [760, 760], resized by the server) until it is
    // served, three rounds: with memory.strict_rss the service's peak RSS (VmHWM),
    // allocator retention included, stays within its budget.
    let budget: u64 = 64 << 20;
    let server = Server::start(
        &["--budget", "64MiB"],
        Some("[memory]\nstrict_rss = true\n[limits]\nqueue_timeout_ms = 5000\n"),
        &[],
    );
    let side = 760;
    let pixels: Vec<u8> = (0..side * side).map(|i| (i * 7 % 256) as u8).collect();
    let body = Arc::new(tensor_request(json!([side, side]), "UINT8", json!(pixels)));
    assert!(body.len() > 1_900_000, "{}", body.len());
    let addr = server.addr;
    let started = Instant::now();
    let mut refused = 0;
    for _ in 0..3 {
        // Each client retries a 503 after its Retry-After (with jitter), as a well-behaved
        // client does, until served.
        let clients: Vec<_> = (0..60u64)
            .map(|i| {
                let body = Arc::clone(&body);
                std::thread::spawn(move || {
                    let mut c = beltbox_tools::client::Client::new(addr, Duration::from_secs(120));
                    let mut refused = 0;
                    loop {
                        let r = c.post_json(INFER, &body).unwrap();
                        match r.status {
                            200 => return refused,
                            503 => refused += 1,
                            s => panic!("{s} {}", r.text()),
                        }
                        assert!(refused < 1000, "never served");
                        std::thread::sleep(Duration::from_millis(
                            50 + (i * 37 + refused * 11) % 100,
                        ));
                    }
                })
            })
            .collect();
        refused += clients.into_iter().map(|t| t.join().unwrap()).sum::<u64>();
    }
    let peak = vm_hwm(server.child.id());
    let m = server.metrics();
    eprintln!(
        "180 served in {:.1} s after {refused} 503s; VmHWM {:.1} MiB, heap peak {:.1} MiB, budget {:.0} MiB",
        started.elapsed().as_secs_f64(),
        peak as f64 / 1048576.0,
        metric(&m, "beltbox_memory_heap_peak_bytes") / 1048576.0,
        budget as f64 / 1048576.0
    );
    assert!(
        peak <= budget,
        "VmHWM {peak} is over the {budget}-byte service budget"
    );
    server.stop();
}
