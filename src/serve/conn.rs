//! One client connection: read requests (with deadlines), hand each to the router
//! ([`super::router`]), write the answer. Runs on its own thread; at most
//! `server.max_connections` of these exist.
//!
//! Slow clients: every request must arrive completely within `limits.request_timeout_ms`
//! of its first byte (a deadline, not a per-read timeout, so trickling bytes does not
//! extend it), and its memory is reserved before its body is read. Workers never wait
//! on a client: a job reaches the queue only once its request is fully decoded.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::http::{self, HttpError, Response};
use super::router::handle;
use super::Shared;

/// How often a connection waiting for its next request checks for shutdown.
const POLL: Duration = Duration::from_millis(200);

pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }

    fn set_read_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(d),
            Stream::Unix(s) => s.set_read_timeout(d),
        }
    }

    fn set_write_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_write_timeout(d),
            Stream::Unix(s) => s.set_write_timeout(d),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

/// Reads with an absolute deadline (or short polls between requests).
pub(super) struct DeadlineReader {
    inner: Stream,
    deadline: Option<Instant>,
}

impl Read for DeadlineReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let wait = match self.deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                left
            }
            None => POLL,
        };
        self.inner.set_read_timeout(Some(wait))?;
        self.inner.read(buf)
    }
}

/// Counts the connection as open for as long as it lives.
struct OpenGuard<'a>(&'a Shared);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.metrics.connections_open.fetch_sub(1, Relaxed);
    }
}

pub(crate) fn spawn(shared: &Arc<Shared>, mut stream: Stream) {
    let open = shared.metrics.connections_open.fetch_add(1, Relaxed);
    if open >= shared.cfg.max_connections as u64 {
        shared.metrics.connections_open.fetch_sub(1, Relaxed);
        shared.metrics.connections_refused.fetch_add(1, Relaxed);
        let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
        let _ = Response::error(
            503,
            &format!(
                "too many connections (server.max_connections = {})",
                shared.cfg.max_connections
            ),
        )
        .with_header("Retry-After", "1")
        .write_to(&mut stream, false, false);
        return;
    }
    let s = Arc::clone(shared);
    let spawned = std::thread::Builder::new()
        .name("beltbox-conn".into())
        .spawn(move || {
            let _guard = OpenGuard(&s);
            if let Err(e) = serve(&s, stream) {
                log::debug!("connection ended: {e}");
            }
        });
    if let Err(e) = spawned {
        shared.metrics.connections_open.fetch_sub(1, Relaxed);
        log::warn!("cannot start a connection thread: {e}");
    }
}

fn serve(shared: &Shared, stream: Stream) -> io::Result<()> {
    let timeout = Duration::from_millis(shared.cfg.request_timeout_ms);
    stream.set_write_timeout(Some(timeout))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::with_capacity(
        16 * 1024,
        DeadlineReader {
            inner: stream,
            deadline: None,
        },
    );
    let limits = http::Limits {
        max_body_bytes: shared.cfg.max_body_bytes,
        ..http::Limits::default()
    };
    loop {
        // Idle between requests: poll so shutdown and the idle limit are noticed.
        reader.get_mut().deadline = None;
        let idle_until = Instant::now() + timeout;
        loop {
            match reader.fill_buf() {
                Ok([]) => return Ok(()),
                Ok(_) => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if shared.stopping.load(Relaxed) || Instant::now() >= idle_until {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        reader.get_mut().deadline = Some(Instant::now() + timeout);
        let head = match http::read_head(&mut reader, &limits) {
            Ok(h) => h,
            Err(e) => return answer_http_error(shared, &mut writer, &e),
        };
        let (resp, reusable) = handle(shared, &head, &mut reader, &mut writer, &limits);
        let keep = reusable && head.keep_alive() && !shared.stopping.load(Relaxed);
        resp.write_to(&mut writer, keep, head.method == "HEAD")?;
        if !keep {
            return Ok(());
        }
    }
}

fn answer_http_error(shared: &Shared, w: &mut Stream, e: &HttpError) -> io::Result<()> {
    if let Some(status) = e.status() {
        shared.metrics.unrouted.fetch_add(1, Relaxed);
        Response::error(status, &e.to_string()).write_to(w, false, false)?;
    }
    Ok(())
}
