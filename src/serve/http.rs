//! HTTP/1.1 framing: just enough of RFC 9112 for a localhost inference API, written for
//! hostile input. Every read is bounded (head size, header count, body size) and every
//! malformed message maps to a 4xx/5xx status with a reason; nothing here panics.
//!
//! Why our own and not a framework: the service is a fixed pool of blocking workers on a
//! small box; what matters is control over limits, timeouts and what happens when a
//! client is slow or lies about lengths — a few hundred lines we can test exhaustively,
//! no async runtime, no extra threads we do not account for.

use std::io::{self, BufRead, Read, Write};

/// Limits on what a client may send.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Request line + headers.
    pub max_head_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 16 * 1024,
            max_headers: 64,
            max_body_bytes: 8 * 1024 * 1024,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The peer closed the connection before sending a byte of a new request (normal end
    /// of a keep-alive connection).
    #[error("connection closed")]
    Closed,
    #[error("timed out waiting for the request")]
    Timeout,
    #[error("i/o: {0}")]
    Io(io::Error),
    #[error("{0}")]
    Bad(String),
    #[error("request head (line + headers) exceeds {0} bytes")]
    HeadTooLarge(usize),
    #[error("more than {0} header fields")]
    TooManyHeaders(usize),
    #[error("request body of {got} bytes exceeds the {limit}-byte limit")]
    BodyTooLarge { limit: usize, got: u64 },
    #[error("a request with a body needs Content-Length or chunked Transfer-Encoding")]
    LengthRequired,
    #[error("Transfer-Encoding `{0}` is not supported (only chunked)")]
    UnsupportedEncoding(String),
    #[error("HTTP version `{0}` is not supported (HTTP/1.0 and HTTP/1.1 are)")]
    Version(String),
}

impl HttpError {
    /// The status to answer with, or `None` when the connection should just be closed.
    pub fn status(&self) -> Option<u16> {
        match self {
            HttpError::Closed | HttpError::Io(_) => None,
            HttpError::Timeout => Some(408),
            HttpError::Bad(_) => Some(400),
            HttpError::HeadTooLarge(_) | HttpError::TooManyHeaders(_) => Some(431),
            HttpError::BodyTooLarge { .. } => Some(413),
            HttpError::LengthRequired => Some(411),
            HttpError::UnsupportedEncoding(_) => Some(501),
            HttpError::Version(_) => Some(505),
        }
    }

    fn from_io(e: io::Error) -> HttpError {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => HttpError::Timeout,
            io::ErrorKind::UnexpectedEof => HttpError::Bad("request is truncated".into()),
            _ => HttpError::Io(e),
        }
    }
}

/// A request line and its headers; the body is read separately (after the caller has
/// decided whether it wants it, e.g. to answer `Expect: 100-continue`).
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    pub method: String,
    /// Path without the query string, percent-decoding not applied.
    pub path: String,
    pub query: Option<String>,
    /// HTTP/1.1 (true) or HTTP/1.0.
    pub http11: bool,
    /// Names lower-cased, values trimmed, in arrival order.
    pub headers: Vec<(String, String)>,
}

/// How the body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the client wants the connection kept open after the response.
    pub fn keep_alive(&self) -> bool {
        let conn = self.header("connection").map(str::to_ascii_lowercase);
        match conn.as_deref() {
            Some(c) if c.split(',').any(|t| t.trim() == "close") => false,
            Some(c) if c.split(',').any(|t| t.trim() == "keep-alive") => true,
            _ => self.http11,
        }
    }

    pub fn expects_continue(&self) -> bool {
        self.header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    }

    /// Body framing per RFC 9112 §6.3, refusing the ambiguous combinations request
    /// smuggling relies on (both headers, differing duplicate lengths).
    pub fn framing(&self) -> Result<Framing, HttpError> {
        let te: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n == "transfer-encoding")
            .map(|(_, v)| v.as_str())
            .collect();
        let cl: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n == "content-length")
            .map(|(_, v)| v.as_str())
            .collect();
        if !te.is_empty() {
            if !cl.is_empty() {
                return Err(HttpError::Bad(
                    "both Transfer-Encoding and Content-Length are present".into(),
                ));
            }
            let joined = te.join(",");
            let codings: Vec<String> = joined
                .split(',')
                .map(|c| c.trim().to_ascii_lowercase())
                .filter(|c| !c.is_empty())
                .collect();
            return match codings.as_slice() {
                [only] if only == "chunked" => Ok(Framing::Chunked),
                _ => Err(HttpError::UnsupportedEncoding(joined)),
            };
        }
        let mut length: Option<u64> = None;
        for v in cl {
            for part in v.split(',') {
                let part = part.trim();
                if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) || part.len() > 19 {
                    return Err(HttpError::Bad(format!("invalid Content-Length `{v}`")));
                }
                let n: u64 = part
                    .parse()
                    .map_err(|_| HttpError::Bad(format!("invalid Content-Length `{v}`")))?;
                if length.is_some_and(|l| l != n) {
                    return Err(HttpError::Bad("conflicting Content-Length values".into()));
                }
                length = Some(n);
            }
        }
        Ok(match length {
            Some(0) | None => Framing::None,
            Some(n) => Framing::Length(n),
        })
    }
}

/// Reads one line (up to LF) into `buf`, counting against `budget`.
fn read_line<R: BufRead>(
    r: &mut R,
    buf: &mut Vec<u8>,
    budget: &mut usize,
) -> Result<(), HttpError> {
    buf.clear();
    let limit = *budget as u64 + 1;
    let n = r
        .by_ref()
        .take(limit)
        .read_until(b'\n', buf)
        .map_err(HttpError::from_io)?;
    if n as u64 >= limit && buf.last() != Some(&b'\n') {
        return Err(HttpError::HeadTooLarge(0));
    }
    *budget = budget.saturating_sub(n);
    Ok(())
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Reads a request line and headers. `Closed` when the peer hangs up before the first
/// byte (the normal end of a keep-alive connection).
pub fn read_head<R: BufRead>(r: &mut R, limits: &Limits) -> Result<Head, HttpError> {
    let too_large = |_| HttpError::HeadTooLarge(limits.max_head_bytes);
    let mut budget = limits.max_head_bytes;
    let mut line = Vec::with_capacity(256);
    // RFC 9112 §2.2: ignore at least one empty line before the request line.
    let mut first = true;
    loop {
        read_line(r, &mut line, &mut budget).map_err(|e| match e {
            HttpError::HeadTooLarge(_) => too_large(()),
            other => other,
        })?;
        if line.is_empty() {
            return Err(if first {
                HttpError::Closed
            } else {
                HttpError::Bad("request is truncated".into())
            });
        }
        first = false;
        if !trim_eol(&line).is_empty() {
            break;
        }
    }
    let request_line = std::str::from_utf8(trim_eol(&line))
        .map_err(|_| HttpError::Bad("request line is not ASCII".into()))?
        .to_string();
    let mut parts = request_line.split(' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) => (m, t, v),
        _ => {
            return Err(HttpError::Bad(format!(
                "malformed request line `{}`",
                request_line.escape_debug()
            )))
        }
    };
    if !is_token(method) {
        return Err(HttpError::Bad(format!(
            "invalid method `{}`",
            method.escape_debug()
        )));
    }
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        v if v.starts_with("HTTP/") => return Err(HttpError::Version(v.to_string())),
        _ => {
            return Err(HttpError::Bad(format!(
                "malformed request line `{}`",
                request_line.escape_debug()
            )))
        }
    };
    if !target.starts_with('/') || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(HttpError::Bad(format!(
            "request target `{}` is not an absolute path",
            target.escape_debug()
        )));
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    };
    let mut headers = Vec::new();
    loop {
        read_line(r, &mut line, &mut budget).map_err(|e| match e {
            HttpError::HeadTooLarge(_) => too_large(()),
            other => other,
        })?;
        if line.is_empty() {
            return Err(HttpError::Bad("request headers are truncated".into()));
        }
        let l = trim_eol(&line);
        if l.is_empty() {
            break;
        }
        if l[0] == b' ' || l[0] == b'\t' {
            return Err(HttpError::Bad("obsolete header line folding".into()));
        }
        let text = std::str::from_utf8(l)
            .map_err(|_| HttpError::Bad("header is not valid UTF-8".into()))?;
        let (name, value) = text.split_once(':').ok_or_else(|| {
            HttpError::Bad(format!(
                "header line without `:`: `{}`",
                text.escape_debug()
            ))
        })?;
        if !is_token(name) {
            return Err(HttpError::Bad(format!(
                "invalid header name `{}`",
                name.escape_debug()
            )));
        }
        if headers.len() == limits.max_headers {
            return Err(HttpError::TooManyHeaders(limits.max_headers));
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    let head = Head {
        method: method.to_string(),
        path,
        query,
        http11,
        headers,
    };
    if head.http11 && head.header("host").is_none() {
        return Err(HttpError::Bad(
            "HTTP/1.1 request without a Host header".into(),
        ));
    }
    Ok(head)
}

/// Reads the body the head announces, refusing more than `limits.max_body_bytes`.
pub fn read_body<R: BufRead>(
    r: &mut R,
    head: &Head,
    limits: &Limits,
) -> Result<Vec<u8>, HttpError> {
    let max = limits.max_body_bytes;
    match head.framing()? {
        Framing::None => Ok(Vec::new()),
        Framing::Length(n) => {
            if n > max as u64 {
                return Err(HttpError::BodyTooLarge { limit: max, got: n });
            }
            let n = n as usize;
            let mut body = vec![0u8; n];
            r.read_exact(&mut body).map_err(HttpError::from_io)?;
            Ok(body)
        }
        Framing::Chunked => read_chunked(r, max),
    }
}

fn read_chunked<R: BufRead>(r: &mut R, max: usize) -> Result<Vec<u8>, HttpError> {
    let mut body = Vec::new();
    let mut line = Vec::new();
    loop {
        let mut budget = 1024;
        read_line(r, &mut line, &mut budget)
            .map_err(|_| HttpError::Bad("chunk size line too long".into()))?;
        let l = trim_eol(&line);
        let size_text = std::str::from_utf8(l)
            .ok()
            .map(|s| s.split(';').next().unwrap_or("").trim())
            .filter(|s| !s.is_empty() && s.len() <= 15 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| HttpError::Bad("malformed chunk size".into()))?;
        let size = u64::from_str_radix(size_text, 16)
            .map_err(|_| HttpError::Bad("malformed chunk size".into()))?;
        if size == 0 {
            // Trailer fields, then an empty line.
            let mut trailer_budget = 8 * 1024;
            loop {
                read_line(r, &mut line, &mut trailer_budget)
                    .map_err(|_| HttpError::Bad("chunked trailer too long".into()))?;
                if line.is_empty() {
                    return Err(HttpError::Bad("chunked body is truncated".into()));
                }
                if trim_eol(&line).is_empty() {
                    return Ok(body);
                }
            }
        }
        let total = body.len() as u64 + size;
        if total > max as u64 {
            return Err(HttpError::BodyTooLarge {
                limit: max,
                got: total,
            });
        }
        let start = body.len();
        body.resize(start + size as usize, 0);
        r.read_exact(&mut body[start..])
            .map_err(HttpError::from_io)?;
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf).map_err(HttpError::from_io)?;
        if &crlf != b"\r\n" {
            return Err(HttpError::Bad("chunk data not followed by CRLF".into()));
        }
    }
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

    pub fn empty(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
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

    /// Serialises status line, headers (plus Content-Length and Connection) and body.
    /// `head_only` for HEAD requests.
    pub fn write_to<W: Write>(
        &self,
        w: &mut W,
        keep_alive: bool,
        head_only: bool,
    ) -> io::Result<()> {
        let mut out = Vec::with_capacity(256 + self.body.len());
        write!(out, "HTTP/1.1 {} {}\r\n", self.status, reason(self.status))?;
        for (n, v) in &self.headers {
            write!(out, "{n}: {v}\r\n")?;
        }
        write!(out, "Content-Length: {}\r\n", self.body.len())?;
        write!(
            out,
            "Connection: {}\r\n\r\n",
            if keep_alive { "keep-alive" } else { "close" }
        )?;
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        w.write_all(&out)?;
        w.flush()
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn head(text: &str) -> Result<Head, HttpError> {
        read_head(
            &mut io::Cursor::new(text.as_bytes().to_vec()),
            &Limits::default(),
        )
    }

    fn full(text: &[u8], limits: &Limits) -> Result<(Head, Vec<u8>), HttpError> {
        let mut c = io::Cursor::new(text.to_vec());
        let h = read_head(&mut c, limits)?;
        let b = read_body(&mut c, &h, limits)?;
        Ok((h, b))
    }

    #[test]
    fn parses_request_line_headers_and_query() {
        let h = head("GET /v2/models/x?verbose=1 HTTP/1.1\r\nHost: a\r\nX-Thing:  v  \r\n\r\n")
            .unwrap();
        assert_eq!(h.method, "GET");
        assert_eq!(h.path, "/v2/models/x");
        assert_eq!(h.query.as_deref(), Some("verbose=1"));
        assert_eq!(h.header("x-thing"), Some("v"));
        assert!(h.keep_alive());
    }

    #[test]
    fn keep_alive_rules() {
        assert!(!head("GET / HTTP/1.0\r\n\r\n").unwrap().keep_alive());
        assert!(head("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .keep_alive());
        assert!(
            !head("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                .unwrap()
                .keep_alive()
        );
    }

    #[test]
    fn content_length_body() {
        let (_, b) = full(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(b, b"hello");
    }

    #[test]
    fn chunked_body_with_extension_and_trailer() {
        let (_, b) = full(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nT: v\r\n\r\n",
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(b, b"hello world");
    }

    #[test]
    fn refuses_smuggling_shapes() {
        let l = Limits::default();
        let both = full(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", &l);
        assert!(matches!(both, Err(HttpError::Bad(_))));
        let two = full(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            &l,
        );
        assert!(matches!(two, Err(HttpError::Bad(_))));
        let neg = full(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            &l,
        );
        assert!(matches!(neg, Err(HttpError::Bad(_))));
        let gzip = full(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            &l,
        );
        assert_eq!(gzip.err().and_then(|e| e.status()), Some(501));
    }

    #[test]
    fn limits_are_enforced_with_the_right_status() {
        let l = Limits {
            max_head_bytes: 64,
            max_headers: 2,
            max_body_bytes: 4,
        };
        let big_head = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(100));
        assert_eq!(
            full(big_head.as_bytes(), &l).err().and_then(|e| e.status()),
            Some(431)
        );
        let many = b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n";
        assert_eq!(full(many, &l).err().and_then(|e| e.status()), Some(431));
        let body = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(full(body, &l).err().and_then(|e| e.status()), Some(413));
        let chunked = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n";
        assert_eq!(full(chunked, &l).err().and_then(|e| e.status()), Some(413));
    }

    #[test]
    fn truncated_body_is_a_bad_request_not_a_hang() {
        let r = full(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc",
            &Limits::default(),
        );
        assert_eq!(r.err().and_then(|e| e.status()), Some(400));
    }

    #[test]
    fn clean_close_and_garbage() {
        assert!(matches!(head(""), Err(HttpError::Closed)));
        assert!(matches!(head("\r\n\r\n"), Err(HttpError::Bad(_))));
        assert!(matches!(head("GET /\r\n\r\n"), Err(HttpError::Bad(_))));
        assert!(matches!(
            head("GET / HTTP/2.0\r\n\r\n"),
            Err(HttpError::Version(_))
        ));
        assert!(matches!(
            head("GET http://x/ HTTP/1.1\r\nHost: a\r\n\r\n"),
            Err(HttpError::Bad(_))
        ));
        assert!(matches!(
            head("GET / HTTP/1.1\r\n\r\n"),
            Err(HttpError::Bad(_))
        ));
        assert!(matches!(
            head("GET / HTTP/1.1\r\nHost: a\r\n x\r\n\r\n"),
            Err(HttpError::Bad(_))
        ));
    }

    #[test]
    fn response_bytes() {
        let mut out = Vec::new();
        Response::error(503, "queue full")
            .with_header("Retry-After", "1")
            .write_to(&mut out, false, false)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(text.contains("Retry-After: 1\r\n"));
        assert!(text.contains("Content-Length: 22\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\n{\"error\":\"queue full\"}"));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let l = Limits { max_head_bytes: 256, max_headers: 8, max_body_bytes: 64 };
            let _ = full(&bytes, &l);
        }

        #[test]
        fn arbitrary_heads_after_a_valid_line_never_panic(rest in "[ -~\r\n]{0,300}") {
            let text = format!("POST /v2 HTTP/1.1\r\nHost: a\r\n{rest}");
            let _ = full(text.as_bytes(), &Limits::default());
        }
    }
}
