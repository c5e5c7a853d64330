//! One connection's life: what it is doing (for the idle watchdog), the stream wrapper that
//! counts its writes, and how many connections the file limit allows.

use std::sync::{atomic::Ordering, Arc};

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
