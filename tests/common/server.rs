//! The service harness shared by the service tests: start the real binary on a free
//! port with the systemd notify protocol on a real datagram socket, talk to it, stop it
//! with SIGTERM.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use beltbox_tools::client::{Client, ClientResponse};
use serde_json::{json, Value};

pub const MODEL: &str = "digits-int8-qdq";

pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub notify: UnixDatagram,
    pub log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts `beltbox run` with `args` (plus a config file when given), waits for READY=1.
    pub fn start(args: &[&str], config: Option<&str>, env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&sock).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_beltbox"));
        cmd.arg("run").args(["--listen", "127.0.0.1:0"]).args(args);
        if let Some(text) = config {
            let path = dir.path().join("beltbox.toml");
            std::fs::write(&path, text).unwrap();
            cmd.arg("--config").arg(path);
        }
        cmd.current_dir(super::repo())
            .env("RUST_LOG", "info")
            .env("NOTIFY_SOCKET", &sock)
            .env("BELTBOX_RUNTIME_DIR", dir.path())
            // What systemd's StateDirectory= sets: the spool, OTA store and kept frames of
            // a config without `state_dir` go here, not to /var/lib/beltbox.
            .env("STATE_DIRECTORY", dir.path().join("state"))
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(rest.trim().to_string());
                }
                log2.lock().unwrap().push(line);
            }
        });
        let addr: SocketAddr = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no listen line; log: {:?}", log.lock().unwrap()))
            .parse()
            .unwrap();
        let mut s = Server {
            child,
            addr,
            notify,
            log,
            _dir: dir,
        };
        let msg = s.next_notification();
        assert!(msg.starts_with("STATUS="), "first notification: {msg}");
        loop {
            let m = s.next_notification();
            if m.starts_with("READY=1") {
                assert!(m.contains("STATUS=serving"), "{m}");
                break;
            }
        }
        s
    }

    pub fn next_notification(&mut self) -> String {
        let mut buf = [0u8; 4096];
        let n = self.notify.recv(&mut buf).unwrap_or_else(|e| {
            panic!("no notification ({e}); log: {:?}", self.log.lock().unwrap())
        });
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    pub fn client(&self) -> Client {
        Client::new(self.addr, Duration::from_secs(60))
    }

    pub fn metrics(&self) -> String {
        let r = self.client().get("/metrics").unwrap();
        assert_eq!(r.status, 200);
        assert!(r
            .header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4"));
        r.text()
    }

    /// SIGTERM; the process must drain and exit 0 within 15 s.
    pub fn stop(self) -> Vec<String> {
        self.sigterm();
        self.wait_stopped()
    }

    /// Sends SIGTERM and returns at once (the test goes on during the drain).
    pub fn sigterm(&self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
    }

    /// After [`Server::sigterm`]: the process exits 0 within 15 s, having sent
    /// STOPPING=1; returns its log.
    pub fn wait_stopped(mut self) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "exit status {status}; log: {:?}",
                    self.log.lock().unwrap()
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "did not stop within 15 s after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Let the stderr reader drain.
        std::thread::sleep(Duration::from_millis(100));
        let mut seen = Vec::new();
        self.notify
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.notify.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        assert!(
            seen.iter().any(|m| m.starts_with("STOPPING=1")),
            "no STOPPING=1 in {seen:?}"
        );
        let log = self.log.lock().unwrap().clone();
        log
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `beltbox_memory_reserved_bytes` once it reads 0, else its value after 5 s. Nothing stays
/// reserved once answered, but a frame kept for OTA shadow runs holds its room until its
/// writer has it on disk (src/serve/recent.rs), a moment after the response.
pub fn settled_reserved_bytes(s: &Server) -> f64 {
    let t = Instant::now();
    loop {
        let reserved = metric(&s.metrics(), "beltbox_memory_reserved_bytes");
        if reserved == 0.0 || t.elapsed() > Duration::from_secs(5) {
            return reserved;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Value of an unlabelled or labelled sample line in Prometheus text.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no `{series}` in metrics:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

pub fn golden() -> Vec<(PathBuf, usize)> {
    let dir = super::models().join(MODEL);
    super::golden_samples(MODEL)
        .into_iter()
        .map(|(input, label)| (dir.join(input), label as usize))
        .collect()
}

/// A binary-extension request carrying one BYTES element (an encoded image).
pub fn bytes_request(file: &[u8], extra_outputs: Value) -> (Vec<u8>, String) {
    let mut req = json!({ "inputs": [{ "name": "input", "shape": [1], "datatype": "BYTES",
        "parameters": { "binary_data_size": file.len() + 4 } }] });
    if !extra_outputs.is_null() {
        req["outputs"] = extra_outputs;
    }
    let header = serde_json::to_vec(&req).unwrap();
    let mut body = header.clone();
    body.extend_from_slice(&(file.len() as u32).to_le_bytes());
    body.extend_from_slice(file);
    (body, header.len().to_string())
}

pub fn post_binary(c: &mut Client, path: &str, body: &[u8], header_len: &str) -> ClientResponse {
    c.request(
        "POST",
        path,
        &[
            ("Content-Type", "application/octet-stream"),
            ("Inference-Header-Content-Length", header_len),
        ],
        body,
    )
    .unwrap()
}

pub type BadCase = (&'static str, u16, &'static str, Vec<u8>, Option<String>);

pub const INFER: &str = "/v2/models/digits-int8-qdq/infer";

pub fn tensor_request(shape: Value, datatype: &str, data: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({ "inputs": [{ "name": "input", "shape": shape, "datatype": datatype, "data": data }] })).unwrap()
}
