//! Connections: one current-thread tokio runtime (the `beltbox-http` thread) accepts on
//! every listener and serves each connection as a task with hyper's HTTP/1.1; the caps
//! on open connections, in total and per peer; the graceful drain on SIGTERM.
//!
//! Why one thread: a connection is a task of a few KiB, not a thread, so slow or idle
//! clients hold only their own slot, never a worker or a thread; the work that costs CPU
//! (inference) runs on the worker pool behind the bounded queue. Request decoding runs on
//! this thread (it is bounded by `limits.max_body` and the JSON limits).
//!
//! Slow clients: the head must arrive within `limits.header_timeout_ms` (hyper's header
//! timer, also the keep-alive idle limit), a body may pause at most
//! `limits.body_idle_timeout_ms` and must be complete within `limits.request_timeout_ms`
//! (`http::read_body`). A peer (TCP address, or the uid of a unix-socket client) holds at
//! most `server.max_connections_per_peer` connections and all peers together
//! `server.max_connections`; a connection over a cap gets a 503 and is closed.
//!
//! Shutdown: the stop signal closes every listener at once (new connections are refused
//! by the kernel, a unix socket's file is removed), idle connections close, requests in
//! flight finish and their connections then close (hyper's graceful shutdown).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use super::{router, Shared};

/// Largest request head (line + headers); a larger one gets 431 from hyper.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// hyper's read buffer: bodies stream through it in pieces of at most this size.
pub const READ_BUFFER_BYTES: usize = 16 * 1024;
/// Heap one open connection may hold outside its request's reservation: hyper's read
/// buffer, its write queue and state, the task. Set aside from the request memory for
/// every connection `server.max_connections` allows (`super::gate_limit`). Measured with
/// the counting allocator over 200 connections: 28 KB each while a head trickles in,
/// ~40 KB while a body streams (beside the body's own reserved buffer).
pub const CONNECTION_BYTES: u64 = 40 * 1024;

/// A bound listener, before the runtime takes it.
pub(crate) enum Listener {
    Tcp(std::net::TcpListener),
    Unix(StdUnixListener, PathBuf),
}

/// Who a connection belongs to, for the per-peer cap.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Peer {
    Ip(IpAddr),
    Uid(u32),
    Unknown,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Ip(ip) => write!(f, "address {ip}"),
            Peer::Uid(uid) => write!(f, "uid {uid}"),
            Peer::Unknown => write!(f, "an unidentified peer"),
        }
    }
}

/// Open connections per peer.
#[derive(Default)]
pub(crate) struct Peers(Mutex<HashMap<Peer, usize>>);

/// One open connection's place in the caps; released on drop.
struct Slot {
    shared: Arc<Shared>,
    peer: Peer,
}

impl Slot {
    fn take(shared: &Arc<Shared>, peer: Peer) -> Result<Slot, String> {
        let cfg = &shared.cfg;
        let mut peers = shared.peers.0.lock().unwrap_or_else(|p| p.into_inner());
        let open = shared.metrics.connections_open.load(Relaxed);
        if open >= cfg.max_connections as u64 {
            return Err(format!(
                "too many connections: {open} open (server.max_connections = {})",
                cfg.max_connections
            ));
        }
        let mine = peers.entry(peer.clone()).or_insert(0);
        if *mine >= cfg.max_connections_per_peer {
            return Err(format!(
                "too many connections from {peer}: {mine} open (server.max_connections_per_peer = {})",
                cfg.max_connections_per_peer
            ));
        }
        *mine += 1;
        shared.metrics.connections_open.fetch_add(1, Relaxed);
        Ok(Slot {
            shared: Arc::clone(shared),
            peer,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut peers = self
            .shared
            .peers
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = peers.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                peers.remove(&self.peer);
            }
        }
        self.shared.metrics.connections_open.fetch_sub(1, Relaxed);
    }
}

/// Runs the HTTP side until `stop` turns true and the open connections have drained (or
/// `drain` has passed). Blocks the calling thread.
pub(crate) fn run(
    shared: Arc<Shared>,
    listeners: Vec<Listener>,
    stop: watch::Receiver<bool>,
    drain: Duration,
) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    rt.block_on(async move {
        let mut accepting = tokio::task::JoinSet::new();
        for l in listeners {
            accepting.spawn(accept_loop(Arc::clone(&shared), l, stop.clone()));
        }
        while accepting.join_next().await.is_some() {}
        // Listeners are closed; connections finish what is in flight.
        let until = Instant::now() + drain;
        while shared.metrics.connections_open.load(Relaxed) > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left = shared.metrics.connections_open.load(Relaxed);
        if left > 0 {
            log::warn!("{left} connection(s) still open after the drain period; closing them");
        }
    });
    Ok(())
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the sender is gone: the service is ending either way.
    let _ = stop.wait_for(|s| *s).await;
}

async fn accept_loop(shared: Arc<Shared>, listener: Listener, mut stop: watch::Receiver<bool>) {
    match listener {
        Listener::Tcp(std) => {
            let l = match std
                .set_nonblocking(true)
                .and_then(|()| tokio::net::TcpListener::from_std(std))
            {
                Ok(l) => l,
                Err(e) => return log::error!("cannot use the TCP listener: {e}"),
            };
            loop {
                tokio::select! {
                    r = l.accept() => match r {
                        Ok((s, addr)) => {
                            let _ = s.set_nodelay(true);
                            admit(&shared, Peer::Ip(addr.ip()), s, &stop);
                        }
                        Err(e) => backoff(e).await,
                    },
                    () = stopped(&mut stop) => break,
                }
            }
            // Dropping the listener closes it: new connections are refused from here.
        }
        Listener::Unix(std, path) => {
            let l = match std
                .set_nonblocking(true)
                .and_then(|()| tokio::net::UnixListener::from_std(std))
            {
                Ok(l) => l,
                Err(e) => return log::error!("cannot use the unix listener: {e}"),
            };
            loop {
                tokio::select! {
                    r = l.accept() => match r {
                        Ok((s, _)) => {
                            let peer = s.peer_cred().map(|c| Peer::Uid(c.uid())).unwrap_or(Peer::Unknown);
                            admit(&shared, peer, s, &stop);
                        }
                        Err(e) => backoff(e).await,
                    },
                    () = stopped(&mut stop) => break,
                }
            }
            drop(l);
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// EMFILE and friends: back off instead of spinning.
async fn backoff(e: std::io::Error) {
    log::warn!("accept failed: {e}");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

fn admit<S>(shared: &Arc<Shared>, peer: Peer, stream: S, stop: &watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match Slot::take(shared, peer) {
        Ok(slot) => {
            tokio::spawn(serve(Arc::clone(shared), stream, slot, stop.clone()));
        }
        Err(reason) => {
            shared.metrics.connections_refused.fetch_add(1, Relaxed);
            shared.metrics.record_status(503);
            tokio::spawn(refuse(stream, reason));
        }
    }
}

/// Answers a connection over a cap with 503, then lingers briefly reading what the
/// client sends, so it reads the status instead of a reset.
async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, reason: String) {
    let body = serde_json::json!({ "error": reason }).to_string();
    let text = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let linger = async {
        stream.write_all(text.as_bytes()).await?;
        stream.shutdown().await?;
        let mut buf = [0u8; 4096];
        while stream.read(&mut buf).await? > 0 {}
        Ok::<(), std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_millis(500), linger).await;
}

async fn serve<S>(shared: Arc<Shared>, stream: S, slot: Slot, mut stop: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = {
        let shared = Arc::clone(&shared);
        hyper::service::service_fn(move |req| {
            let shared = Arc::clone(&shared);
            async move { Ok::<_, Infallible>(router::handle(shared, req).await) }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(shared.cfg.header_timeout_ms))
        .max_header_size(MAX_HEAD_BYTES)
        .max_buf_size(READ_BUFFER_BYTES)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        // Malformed requests hyper answered itself (400, 431...), resets, timeouts.
        if e.is_parse() || e.is_parse_status() {
            shared.metrics.unrouted.fetch_add(1, Relaxed);
        }
        log::debug!("connection ended: {e}");
    }
    drop(slot);
}
