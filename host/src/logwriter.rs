//! Where log lines go: stderr, in batches. A request thread appends its formatted line to a
//! shared buffer (one short lock, no system call, no thread wake-up); a writer thread takes the
//! buffer every `INTERVAL`, at once when it passes `HIGH_WATER` or a warning or error is queued,
//! and writes it outside the lock. Only that thread ever waits on stderr: when nobody reads the
//! log (a stalled collector), the buffer fills to `CAP`, and further lines are dropped and
//! counted, never waited for.
//!
//! Measured with `bench/throughput`: a plain stderr writer costs one `write` per line, and a
//! channel to a writer thread one thread wake-up per line; both cost more than the request.

use std::{
    io::Write,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Condvar, Mutex, MutexGuard,
    },
    time::Duration,
};

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

const INTERVAL: Duration = Duration::from_millis(20);
const HIGH_WATER: usize = 256 * 1024;
/// Most bytes queued while stderr is not taking them; lines beyond are dropped.
const CAP: usize = 8 << 20;

#[derive(Default)]
struct Shared {
    buffer: Mutex<Vec<u8>>,
    /// Lines dropped because the buffer was full, reported by the writer thread.
    dropped: AtomicU64,
    /// Set, then signalled, to stop the writer thread; also signalled to write at once.
    stopping: AtomicBool,
    wake: Condvar,
}

impl Shared {
    /// Queues `bytes` unless the buffer is full; wakes the writer when `urgent` or past
    /// [`HIGH_WATER`].
    fn queue(&self, bytes: &[u8], urgent: bool) {
        let mut buffer = lock(&self.buffer);
        if buffer.len() + bytes.len() > CAP {
            drop(buffer);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        buffer.extend_from_slice(bytes);
        let wake = urgent || buffer.len() >= HIGH_WATER;
        drop(buffer);
        if wake {
            self.wake.notify_one();
        }
    }

    /// Takes what is queued and writes it, outside the lock.
    fn write_out(&self) {
        let taken = std::mem::take(&mut *lock(&self.buffer));
        let mut out = std::io::stderr().lock();
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let _ = writeln!(
                out,
                "plughost: {dropped} log lines were dropped: the log output was not read fast enough"
            );
        }
        if !taken.is_empty() {
            let _ = out.write_all(&taken);
        }
    }
}

/// The `MakeWriter` for the fmt layer.
#[derive(Clone)]
pub struct BatchedStderr {
    shared: Arc<Shared>,
}

/// Flushes what is queued when dropped (keep it alive until the process ends).
pub struct FlushGuard {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The writer installed for this process, for lines written without `tracing` (the access log).
static INSTALLED: std::sync::OnceLock<BatchedStderr> = std::sync::OnceLock::new();

/// Queues one finished line (with its newline) behind the log lines before it; `false` when no
/// batched writer is installed.
pub fn write_line(line: &[u8]) -> bool {
    match INSTALLED.get() {
        Some(writer) => {
            writer.shared.queue(line, false);
            true
        }
        None => false,
    }
}

/// A batched stderr writer and the guard that flushes it at exit. The first one made is also
/// the one [`write_line`] writes to.
pub fn stderr() -> (BatchedStderr, FlushGuard) {
    let shared = Arc::new(Shared::default());
    let _ = INSTALLED.set(BatchedStderr { shared: shared.clone() });
    let thread = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("plughost-log".into())
            .spawn(move || loop {
                let buffer = lock(&shared.buffer);
                if buffer.is_empty() && !shared.stopping.load(Ordering::Acquire) {
                    let _ = shared.wake.wait_timeout(buffer, INTERVAL);
                } else {
                    drop(buffer);
                }
                shared.write_out();
                if shared.stopping.load(Ordering::Acquire) {
                    break;
                }
            })
            .ok()
    };
    (BatchedStderr { shared: shared.clone() }, FlushGuard { shared, thread })
}

fn lock(buffer: &Mutex<Vec<u8>>) -> MutexGuard<'_, Vec<u8>> {
    buffer.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Drop for FlushGuard {
    /// Writes what is left, unless stderr has stopped taking lines (then exit does not wait).
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let deadline = std::time::Instant::now() + Duration::from_secs(2);
            while !thread.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if thread.is_finished() {
                let _ = thread.join();
                self.shared.write_out();
            }
        }
    }
}

/// One line's writer.
pub struct LineWriter<'a> {
    shared: &'a Shared,
    urgent: bool,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.shared.queue(bytes, self.urgent);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchedStderr {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
            urgent: true,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
            urgent: *meta.level() <= Level::WARN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_queue_until_flushed_and_warnings_go_through() {
        let (writer, guard) = stderr();
        let info = tracing::Metadata::new(
            "info",
            "t",
            Level::INFO,
            None,
            None,
            None,
            tracing::field::FieldSet::new(&[], tracing::callsite::Identifier(&CALLSITE)),
            tracing::metadata::Kind::EVENT,
        );
        writer.make_writer_for(&info).write_all(b"queued\n").unwrap();
        assert_eq!(lock(&writer.shared.buffer).as_slice(), b"queued\n");
        writer.make_writer().write_all(b"urgent\n").unwrap();
        let written = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(5));
            lock(&writer.shared.buffer).is_empty()
        });
        assert!(written, "an urgent line wakes the writer, which takes what was queued with it");
        writer.make_writer_for(&info).write_all(b"last\n").unwrap();
        drop(guard);
        assert!(lock(&writer.shared.buffer).is_empty(), "flushed at exit");
    }

    #[test]
    fn a_full_buffer_drops_and_counts_instead_of_waiting() {
        let shared = Shared::default();
        let line = vec![b'x'; 1 << 20];
        for _ in 0..12 {
            shared.queue(&line, false);
        }
        assert!(lock(&shared.buffer).len() <= CAP);
        assert_eq!(shared.dropped.load(Ordering::Relaxed), 4);
    }

    struct Callsite;
    impl tracing::callsite::Callsite for Callsite {
        fn set_interest(&self, _: tracing::subscriber::Interest) {}
        fn metadata(&self) -> &tracing::Metadata<'_> {
            unimplemented!()
        }
    }
    static CALLSITE: Callsite = Callsite;
}
