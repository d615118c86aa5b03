//! A minimal blocking HTTP/1.1 client for loopback use: the load generator and the
//! integration tests talk to the service through it (keep-alive, Content-Length bodies —
//! what the service sends). Stock clients (curl, tritonclient) are tested separately.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{addr}: {source}")]
    Io { addr: SocketAddr, source: io::Error },
    #[error("{addr}: malformed response: {message}")]
    Malformed { addr: SocketAddr, message: String },
}

#[derive(Debug, Clone)]
pub struct ClientResponse {
    pub status: u16,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl ClientResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// One keep-alive connection.
pub struct Client {
    addr: SocketAddr,
    conn: Option<(BufReader<TcpStream>, TcpStream)>,
    timeout: Duration,
}

impl Client {
    pub fn new(addr: SocketAddr, timeout: Duration) -> Client {
        Client {
            addr,
            conn: None,
            timeout,
        }
    }

    fn io(&self, source: io::Error) -> ClientError {
        ClientError::Io {
            addr: self.addr,
            source,
        }
    }

    fn connect(&mut self) -> Result<(), ClientError> {
        if self.conn.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, self.timeout).map_err(|e| self.io(e))?;
            let _ = s.set_nodelay(true);
            s.set_read_timeout(Some(self.timeout))
                .map_err(|e| self.io(e))?;
            s.set_write_timeout(Some(self.timeout))
                .map_err(|e| self.io(e))?;
            let r = s.try_clone().map_err(|e| self.io(e))?;
            self.conn = Some((BufReader::new(r), s));
        }
        Ok(())
    }

    /// Sends a request; reconnects once if a kept-alive connection was closed by the
    /// server in the meantime.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<ClientResponse, ClientError> {
        let reused = self.conn.is_some();
        match self.try_request(method, path, headers, body) {
            Err(ClientError::Io { .. }) if reused => {
                self.conn = None;
                self.try_request(method, path, headers, body)
            }
            other => other,
        }
    }

    pub fn get(&mut self, path: &str) -> Result<ClientResponse, ClientError> {
        self.request("GET", path, &[], &[])
    }

    pub fn post_json(&mut self, path: &str, body: &[u8]) -> Result<ClientResponse, ClientError> {
        self.request("POST", path, &[("Content-Type", "application/json")], body)
    }

    fn try_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<ClientResponse, ClientError> {
        self.connect()?;
        let addr = self.addr;
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
        for (n, v) in headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let result = match self.conn.as_mut() {
            Some((reader, writer)) => {
                let sent = writer
                    .write_all(head.as_bytes())
                    .and_then(|_| writer.write_all(body))
                    .and_then(|_| writer.flush());
                match sent {
                    Ok(()) => read_response(reader, addr),
                    Err(e) => Err(ClientError::Io { addr, source: e }),
                }
            }
            None => Err(self.io(io::ErrorKind::NotConnected.into())),
        };
        match &result {
            Ok(r)
                if r.header("connection")
                    .is_some_and(|c| c.eq_ignore_ascii_case("close")) =>
            {
                self.conn = None
            }
            Err(_) => self.conn = None,
            _ => {}
        }
        result
    }
}

fn read_response<R: BufRead>(r: &mut R, addr: SocketAddr) -> Result<ClientResponse, ClientError> {
    let io = |source| ClientError::Io { addr, source };
    let bad = |message: String| ClientError::Malformed { addr, message };
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).map_err(io)? == 0 {
            return Err(io(io::ErrorKind::UnexpectedEof.into()));
        }
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("status line `{}`", line.trim_end())))?;
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).map_err(io)? == 0 {
                return Err(bad("headers are truncated".into()));
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((n, v)) = h.split_once(':') {
                headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        // 1xx: an interim response; the real one follows.
        if (100..200).contains(&status) {
            continue;
        }
        let len: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .ok_or_else(|| bad("no Content-Length".into()))?;
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).map_err(io)?;
        return Ok(ClientResponse {
            status,
            headers,
            body,
        });
    }
}
