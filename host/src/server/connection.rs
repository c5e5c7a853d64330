//! One connection's life: served by hyper on a task of its own, what it is doing (for the idle
//! watchdog), the stream wrapper that counts its writes, and how many connections the file limit
//! allows.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{atomic::Ordering, Arc},
};

use ::http::{HeaderValue, Request};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::Watcher},
};
use tokio::{net::TcpStream, sync::OwnedSemaphorePermit};

use super::request;
use crate::{config::Limits, AppState};

/// Serves one accepted connection (HTTP/1 or 2) on a task of its own, holding its `permit`, and
/// starts its idle watchdog. While the server drains, every response says `Connection: close`.
pub(crate) fn spawn(
    stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    state: &Arc<AppState>,
    limits: &Limits,
    watcher: Watcher,
) {
    let _ = stream.set_nodelay(true);
    let header_read_timeout = limits.header_read_timeout;
    let state = state.clone();
    // Written once per connection, not once per request.
    let peer_text: Arc<str> = peer.to_string().into();
    let peer_ip = peer.ip();
    let activity = Arc::new(Activity::default());
    let seen = activity.clone();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let state = state.clone();
        let peer_text = peer_text.clone();
        let busy = seen.begin();
        async move {
            let mut response = request::handle(request, &peer_text, peer_ip, &state).await;
            if state.draining.load(Ordering::Relaxed) {
                response
                    .headers_mut()
                    .insert(::http::header::CONNECTION, HeaderValue::from_static("close"));
            }
            drop(busy);
            Ok::<_, Infallible>(response)
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().max_buf_size(limits.max_header_bytes.max(8192) * 4 + 16 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(header_read_timeout))
        .keep_alive_timeout(header_read_timeout);
    let watched = activity.clone();
    let served = tokio::spawn(async move {
        let _permit = permit;
        // Before its first byte the connection is in the hands of the protocol detection:
        // a client that sends nothing is dropped here.
        let mut first = [0u8; 1];
        if !matches!(
            tokio::time::timeout(header_read_timeout, stream.peek(&mut first)).await,
            Ok(Ok(1..))
        ) {
            tracing::debug!(%peer, "connection sent nothing within HEADER_READ_TIMEOUT_MS; closed");
            return;
        }
        let stream = Watched { stream, activity };
        let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
        if let Err(err) = watcher.watch(connection).await {
            tracing::debug!(%peer, "connection ended with an error: {err}");
        }
    });
    // A watchdog instead of hyper's header timer, which costs a timer per request (about
    // 1,400 instructions, 5% of an echo): every HEADER_READ_TIMEOUT_MS, a connection that
    // started no request and wrote nothing since the last look, and has no request in
    // flight (idle between requests, or trickling its headers), is closed.
    tokio::spawn(async move {
        let mut last = watched.progress();
        loop {
            tokio::time::sleep(header_read_timeout).await;
            if served.is_finished() {
                return;
            }
            let now = watched.progress();
            if now == last && watched.in_flight.load(Ordering::Relaxed) == 0 {
                tracing::debug!(%peer, "connection idle for HEADER_READ_TIMEOUT_MS; closed");
                served.abort();
                return;
            }
            last = now;
        }
    });
}

/// What a connection is doing, for its idle watchdog: requests started, those not answered, and
/// writes (a long response to a slow reader is not idleness).
#[derive(Default)]
pub(crate) struct Activity {
    pub(crate) requests: std::sync::atomic::AtomicU64,
    pub(crate) in_flight: std::sync::atomic::AtomicU32,
    pub(crate) writes: std::sync::atomic::AtomicU64,
}

/// A connection's socket, counting its writes for the watchdog.
pub(crate) struct Watched {
    pub(crate) stream: tokio::net::TcpStream,
    pub(crate) activity: Arc<Activity>,
}

impl tokio::io::AsyncRead for Watched {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Watched {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let written = std::pin::Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(written, std::task::Poll::Ready(Ok(_))) {
            self.activity.writes.fetch_add(1, Ordering::Relaxed);
        }
        written
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let written = std::pin::Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(written, std::task::Poll::Ready(Ok(_))) {
            self.activity.writes.fetch_add(1, Ordering::Relaxed);
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A request in progress on its connection; counted out when dropped.
pub(crate) struct Busy(Arc<Activity>);

impl Activity {
    /// Requests started and writes made: what changes while a connection is in use.
    pub(crate) fn progress(&self) -> u64 {
        self.requests.load(Ordering::Relaxed) + self.writes.load(Ordering::Relaxed)
    }

    pub(crate) fn begin(self: &Arc<Self>) -> Busy {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Raises this process's soft limit on open files to its hard limit, so that a default soft limit
/// (1024, or 256 on some systems) does not cap connections; returns the limit in force.
pub fn raise_file_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    let (Some(soft), hard) = (limit.current, limit.maximum) else {
        return u64::MAX;
    };
    let target = hard.unwrap_or(u64::MAX).min(1 << 20);
    if target > soft
        && setrlimit(
            Resource::Nofile,
            rustix::process::Rlimit {
                current: Some(target),
                maximum: hard,
            },
        )
        .is_ok()
    {
        return target;
    }
    soft
}

/// Connections to serve at once when MAX_CONNECTIONS is 0: three quarters of the file limit
/// (the rest is for the store, plugins, sandbox workers' pipes), at most 65,536.
pub(crate) fn connections_for_file_limit() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(1 << 16);
    ((limit / 4 * 3).clamp(16, 1 << 16)) as usize
}
