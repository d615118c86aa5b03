//! What the service adds to hyper's HTTP/1.1 (hyper does the framing: request line,
//! headers, Content-Length and chunked bodies, keep-alive, the header-read timeout):
//!
//! - request bodies read under the memory gate **as their bytes arrive**, with a size
//!   limit, a progress (idle) timeout and the request's deadline ([`read_body`]): an
//!   announced length reserves nothing, so a client that announces 2.6 MB and sends one
//!   byte holds one byte;
//! - `Content-Encoding` gzip and deflate, decompressed with a size limit against bombs
//!   ([`decode_content`]);
//! - draining a refused body ([`drain`]) so a client that sends its whole body before
//!   reading (Python's `http.client`, `requests`) reads the status instead of a reset;
//! - the response type and the KServe v2 error object ([`Response`]).
//!
//! Nothing here panics on input; every refusal is a [`BodyError`] with its status.

use std::collections::BTreeSet;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use beltbox_core::memory::admission::{Gate, Reservation};

/// A body larger than this is not drained after a refusal: the connection is closed
/// (the client may then see a reset instead of the status; it sent more than any
/// request may be).
pub const DRAIN_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// How often a body waiting for memory looks again.
const MEMORY_POLL: Duration = Duration::from_millis(2);

/// Why a request body was not taken. Each maps to one status ([`BodyError::status`]).
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body of {got} bytes exceeds the {limit}-byte limit (limits.max_body)")]
    TooLarge { limit: usize, got: u64 },
    #[error("this request needs {need} bytes of request memory, more than the {limit} bytes the service's RAM budget leaves for all requests together; it can never be admitted (memory.budget)")]
    NeverFits { need: u64, limit: u64 },
    #[error("RAM budget: {need} bytes needed for this request do not fit beside the {reserved} reserved by requests in flight (limit {limit})")]
    Busy {
        need: u64,
        reserved: u64,
        limit: u64,
    },
    #[error("no body bytes arrived for {0} ms (limits.body_idle_timeout_ms)")]
    Idle(u64),
    #[error("the request did not arrive within {0} ms (limits.request_timeout_ms)")]
    Deadline(u64),
    #[error("the request body is malformed: {0}")]
    Malformed(String),
    #[error("Content-Encoding `{0}` is not supported (gzip, deflate and identity are)")]
    Encoding(String),
    #[error("the {encoding} body does not decompress: {message}")]
    Corrupt {
        encoding: &'static str,
        message: String,
    },
}

impl BodyError {
    pub fn status(&self) -> u16 {
        match self {
            BodyError::TooLarge { .. } | BodyError::NeverFits { .. } => 413,
            BodyError::Busy { .. } => 503,
            BodyError::Idle(_) | BodyError::Deadline(_) => 408,
            BodyError::Malformed(_) | BodyError::Corrupt { .. } => 400,
            BodyError::Encoding(_) => 415,
        }
    }

    pub fn response(&self) -> Response {
        let r = Response::error(self.status(), &self.to_string());
        match self {
            BodyError::Busy { .. } => r.with_header("Retry-After", "1"),
            BodyError::Encoding(_) => r.with_header("Accept-Encoding", "gzip, deflate"),
            _ => r,
        }
    }
}

/// Requests in admission — receiving their body or reserving memory for it — by arrival.
/// Under memory pressure only the oldest of them waits for memory; the others are refused
/// at once (503 + Retry-After) and release what they hold (the wait-die rule). Without it,
/// 60 clients each halfway through a 2 MB body can hold the whole limit between them while
/// each waits for more, and none completes; with it the oldest always completes.
#[derive(Debug, Default)]
pub struct Admissions {
    next: AtomicU64,
    open: Mutex<BTreeSet<u64>>,
}

/// One request's place in [`Admissions`]; it leaves on drop.
#[derive(Debug)]
pub struct Ticket<'a> {
    admissions: &'a Admissions,
    id: u64,
}

impl Admissions {
    pub fn enter(&self) -> Ticket<'_> {
        let id = self.next.fetch_add(1, Relaxed);
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
        Ticket {
            admissions: self,
            id,
        }
    }
}

impl Ticket<'_> {
    /// Whether no request that arrived earlier is still in admission.
    pub fn is_oldest(&self) -> bool {
        let open = self
            .admissions
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        open.first() == Some(&self.id)
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.admissions
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// How a body may arrive.
#[derive(Debug, Clone, Copy)]
pub struct BodyRules {
    pub max_body: usize,
    /// Longest wait for the next bytes.
    pub idle: Duration,
    /// When the whole request must have arrived.
    pub deadline: Instant,
    pub request_timeout_ms: u64,
    /// Longest wait for memory before a 503.
    pub memory_wait: Duration,
}

/// Grows `res` to `total` bytes. When that does not fit now, a request that holds nothing
/// yet, or the oldest in admission, waits up to `wait` for others to release memory; any
/// other is refused at once ([`Admissions`]: no request waits while holding memory another
/// waits for, except the oldest, which every other gives way to).
pub async fn reserve(
    res: &mut Reservation,
    total: u64,
    wait: Duration,
    ticket: &Ticket<'_>,
) -> Result<(), BodyError> {
    let until = Instant::now() + wait;
    loop {
        if res.try_resize_to(total) {
            return Ok(());
        }
        let gate = res.gate();
        if total > gate.limit() {
            return Err(BodyError::NeverFits {
                need: total,
                limit: gate.limit(),
            });
        }
        let may_wait = res.bytes() == 0 || ticket.is_oldest();
        if Instant::now() >= until || !may_wait {
            return Err(BodyError::Busy {
                need: total,
                reserved: gate.reserved(),
                limit: gate.limit(),
            });
        }
        tokio::time::sleep(MEMORY_POLL).await;
    }
}

/// Waits (holding nothing) until `need` bytes are free at the gate, at most `wait`: a body
/// that cannot complete now is not started, so it does not take memory from those that
/// can. A check, not a reservation — the body then reserves its bytes as they arrive.
pub async fn await_room(gate: &Gate, need: u64, wait: Duration) -> Result<(), BodyError> {
    let until = Instant::now() + wait;
    loop {
        let reserved = gate.reserved();
        if gate.limit().saturating_sub(reserved) >= need {
            return Ok(());
        }
        if Instant::now() >= until {
            return Err(BodyError::Busy {
                need,
                reserved,
                limit: gate.limit(),
            });
        }
        tokio::time::sleep(MEMORY_POLL).await;
    }
}

/// Reads the body, reserving its buffer as it grows (never past `announced`).
/// `projected(n)` is what a request with an `n`-byte body will need in all (body,
/// decoding, the model's per-request memory): a chunked body whose projection passes the
/// gate's whole limit can never fit and is refused as it grows. An announced length is
/// checked by the caller before the body is polled (so a client waiting for
/// `100 Continue` sends nothing).
pub async fn read_body(
    body: &mut Incoming,
    announced: Option<u64>,
    rules: &BodyRules,
    res: &mut Reservation,
    ticket: &Ticket<'_>,
    projected: impl Fn(u64) -> u64,
) -> Result<Vec<u8>, BodyError> {
    let limit = res.gate().limit();
    let mut buf: Vec<u8> = Vec::new();
    let base = res.bytes();
    loop {
        let now = Instant::now();
        if now >= rules.deadline {
            return Err(BodyError::Deadline(rules.request_timeout_ms));
        }
        let wait = rules.idle.min(rules.deadline - now);
        let frame = match tokio::time::timeout(wait, body.frame()).await {
            Err(_) if Instant::now() >= rules.deadline => {
                return Err(BodyError::Deadline(rules.request_timeout_ms))
            }
            Err(_) => return Err(BodyError::Idle(rules.idle.as_millis() as u64)),
            Ok(None) => return Ok(buf),
            Ok(Some(Err(e))) => return Err(BodyError::Malformed(e.to_string())),
            Ok(Some(Ok(f))) => f,
        };
        // Trailers carry nothing the protocol uses.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let got = (buf.len() + data.len()) as u64;
        if got > rules.max_body as u64 {
            return Err(BodyError::TooLarge {
                limit: rules.max_body,
                got,
            });
        }
        if announced.is_none() {
            let need = projected(got);
            if need > limit {
                return Err(BodyError::NeverFits { need, limit });
            }
        }
        if got as usize > buf.capacity() {
            // Doubling keeps appends amortised; the reservation covers the capacity.
            // Never past the announced length: a body of known size ends in one buffer.
            let cap = (got as usize)
                .max(buf.capacity().saturating_mul(2))
                .min(rules.max_body)
                .min(announced.map_or(usize::MAX, |n| n as usize))
                .max(got as usize);
            reserve(res, base + cap as u64, rules.memory_wait, ticket).await?;
            buf.reserve_exact(cap - buf.len());
        }
        buf.extend_from_slice(&data);
    }
}

/// Reads and discards what is left of a refused body (bounded by [`DRAIN_MAX_BYTES`] and
/// `rules`), so the client finishes sending and reads the status. Returns whether the
/// body was read to its end (the connection can then be kept).
pub async fn drain(body: &mut Incoming, rules: &BodyRules) -> bool {
    let mut seen = 0u64;
    let deadline = rules.deadline.max(Instant::now() + rules.idle);
    loop {
        let now = Instant::now();
        if now >= deadline || seen > DRAIN_MAX_BYTES {
            return false;
        }
        match tokio::time::timeout(rules.idle.min(deadline - now), body.frame()).await {
            Ok(None) => return true,
            Ok(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    seen += d.len() as u64;
                }
            }
            Ok(Some(Err(_))) | Err(_) => return false,
        }
    }
}

/// Supported `Content-Encoding`s of request bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Deflate,
}

impl Encoding {
    /// From the header value (one coding; `identity` or absent is none).
    pub fn parse(header: Option<&str>) -> Result<Encoding, BodyError> {
        let Some(v) = header.map(str::trim).filter(|v| !v.is_empty()) else {
            return Ok(Encoding::Identity);
        };
        match v.to_ascii_lowercase().as_str() {
            "identity" => Ok(Encoding::Identity),
            "gzip" | "x-gzip" => Ok(Encoding::Gzip),
            "deflate" => Ok(Encoding::Deflate),
            _ => Err(BodyError::Encoding(v.to_string())),
        }
    }
}

/// The body with its `Content-Encoding` undone. The decompressed size counts against the
/// same `max_body` limit as a plain body (a 1 KB gzip bomb stops at the limit, never at
/// its claimed size), and its buffer against the reservation as it grows.
pub fn decode_content(
    body: Vec<u8>,
    encoding: Encoding,
    max_body: usize,
    res: &mut Reservation,
) -> Result<Vec<u8>, BodyError> {
    let (name, mut reader): (&'static str, Box<dyn Read + '_>) = match encoding {
        Encoding::Identity => return Ok(body),
        Encoding::Gzip => (
            "gzip",
            Box::new(flate2::read::MultiGzDecoder::new(&body[..])),
        ),
        // RFC 9110 "deflate" is the zlib format; some clients send raw deflate instead.
        Encoding::Deflate if body.first().is_some_and(|b| b & 0x0f == 8) => (
            "deflate",
            Box::new(flate2::read::ZlibDecoder::new(&body[..])),
        ),
        Encoding::Deflate => (
            "deflate",
            Box::new(flate2::read::DeflateDecoder::new(&body[..])),
        ),
    };
    let base = res.bytes();
    let mut out: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = reader.read(&mut chunk).map_err(|e| BodyError::Corrupt {
            encoding: name,
            message: e.to_string(),
        })?;
        if n == 0 {
            break;
        }
        let got = out.len() + n;
        if got > max_body {
            return Err(BodyError::Corrupt {
                encoding: name,
                message: format!("it inflates past the {max_body}-byte limit (limits.max_body)"),
            });
        }
        if got > out.capacity() {
            let cap = got.max(out.capacity() * 2).min(max_body).max(got);
            let gate = res.gate();
            if !res.try_resize_to(base + cap as u64) {
                return Err(BodyError::Busy {
                    need: base + cap as u64,
                    reserved: gate.reserved(),
                    limit: gate.limit(),
                });
            }
            out.reserve_exact(cap - out.len());
        }
        out.extend_from_slice(&chunk[..n]);
    }
    Ok(out)
}

/// A response to write.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &str, body: Vec<u8>) -> Response {
        Response {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body,
        }
    }

    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
        Response::new(status, "application/json", body)
    }

    /// The KServe v2 error object: `{"error": "..."}`.
    pub fn error(status: u16, message: &str) -> Response {
        Response::json(status, &serde_json::json!({ "error": message }))
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// As hyper's response; `close` asks hyper to close the connection after it.
    pub fn into_hyper<B: From<Bytes>>(self, close: bool) -> hyper::Response<B> {
        let mut r = hyper::Response::new(B::from(Bytes::from(self.body)));
        *r.status_mut() = hyper::StatusCode::from_u16(self.status)
            .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
        let h = r.headers_mut();
        for (n, v) in &self.headers {
            if let (Ok(n), Ok(v)) = (
                hyper::header::HeaderName::from_bytes(n.as_bytes()),
                hyper::header::HeaderValue::from_str(v),
            ) {
                h.append(n, v);
            }
        }
        if close {
            h.insert(
                hyper::header::CONNECTION,
                hyper::header::HeaderValue::from_static("close"),
            );
        }
        r
    }
}

/// The body type the service answers with.
pub type Body = Full<Bytes>;

#[cfg(test)]
mod tests {
    use super::*;
    use beltbox_core::memory::admission::Gate;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn only_the_oldest_ticket_may_wait() {
        let a = Admissions::default();
        let first = a.enter();
        let second = a.enter();
        assert!(first.is_oldest() && !second.is_oldest());
        drop(first);
        assert!(second.is_oldest());
        let third = a.enter();
        assert!(!third.is_oldest());
    }

    #[test]
    fn encodings_parse_and_unknown_ones_are_415() {
        assert_eq!(Encoding::parse(None).unwrap(), Encoding::Identity);
        assert_eq!(Encoding::parse(Some(" GZIP ")).unwrap(), Encoding::Gzip);
        assert_eq!(Encoding::parse(Some("deflate")).unwrap(), Encoding::Deflate);
        let e = Encoding::parse(Some("br")).unwrap_err();
        assert_eq!(e.status(), 415);
        assert!(e.to_string().contains("`br` is not supported"), "{e}");
    }

    #[test]
    fn gzip_and_both_deflates_decompress_under_the_reservation() {
        let g = Gate::new(1 << 20);
        let data: Vec<u8> = (0..50_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let mut res = g.try_reserve(0).unwrap();
        let out = decode_content(gz(&data), Encoding::Gzip, 1 << 20, &mut res).unwrap();
        assert_eq!(out, data);
        assert!(res.bytes() >= data.len() as u64);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(&data).unwrap();
        let mut res = g.try_reserve(0).unwrap();
        let out = decode_content(z.finish().unwrap(), Encoding::Deflate, 1 << 20, &mut res);
        assert_eq!(out.unwrap(), data);
        let mut d = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        d.write_all(&data).unwrap();
        let mut res = g.try_reserve(0).unwrap();
        let out = decode_content(d.finish().unwrap(), Encoding::Deflate, 1 << 20, &mut res);
        assert_eq!(out.unwrap(), data);
    }

    #[test]
    fn gzip_bomb_stops_at_the_body_limit() {
        // 64 MiB of zeros compress to ~64 KiB.
        let bomb = gz(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 100_000);
        let g = Gate::new(u64::MAX);
        let mut res = g.try_reserve(0).unwrap();
        let e = decode_content(bomb, Encoding::Gzip, 1 << 20, &mut res).unwrap_err();
        assert_eq!(e.status(), 400);
        assert!(
            e.to_string()
                .contains("inflates past the 1048576-byte limit"),
            "{e}"
        );
        assert!(res.bytes() <= 1 << 20);
    }

    #[test]
    fn corrupt_gzip_is_a_bad_request() {
        let g = Gate::new(u64::MAX);
        let mut res = g.try_reserve(0).unwrap();
        let mut bad = gz(b"hello");
        bad.truncate(bad.len() - 6);
        let e = decode_content(bad, Encoding::Gzip, 1 << 20, &mut res).unwrap_err();
        assert_eq!(e.status(), 400);
        assert!(
            e.to_string()
                .starts_with("the gzip body does not decompress"),
            "{e}"
        );
    }

    #[test]
    fn decompression_refuses_when_memory_is_short() {
        let g = Gate::new(10_000);
        let mut res = g.try_reserve(0).unwrap();
        let e = decode_content(gz(&[1u8; 50_000]), Encoding::Gzip, 1 << 20, &mut res).unwrap_err();
        assert_eq!(e.status(), 503);
        assert!(g.reserved() <= 10_000);
    }

    #[test]
    fn response_converts_with_headers_and_close() {
        let r: hyper::Response<Body> = Response::error(503, "busy")
            .with_header("Retry-After", "1")
            .into_hyper(true);
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "1");
        assert_eq!(r.headers()["connection"], "close");
        assert_eq!(r.headers()["content-type"], "application/json");
    }
}
