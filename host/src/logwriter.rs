//! Where log lines go: stderr, in batches. A request thread appends its formatted line to a
//! shared buffer (one short lock, no system call, no thread wake-up); a writer thread flushes the
//! buffer every `INTERVAL`, and at once when it passes `HIGH_WATER`. Warnings and errors are
//! written through at once, after what was queued before them, so that they survive a crash.
//!
//! Measured with `bench/throughput`: a plain stderr writer costs one `write` per line, and a
//! channel to a writer thread one thread wake-up per line; both cost more than the request.

use std::{
    io::Write,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Condvar, Mutex, MutexGuard,
    },
    time::Duration,
};

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

const INTERVAL: Duration = Duration::from_millis(20);
const HIGH_WATER: usize = 256 * 1024;

#[derive(Default)]
struct Shared {
    buffer: Mutex<Vec<u8>>,
    /// Set, then signalled, to stop the writer thread.
    stopping: AtomicBool,
    stop: Condvar,
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
            let mut buffer = lock(&writer.shared.buffer);
            buffer.extend_from_slice(line);
            if buffer.len() >= HIGH_WATER {
                write_out(&mut buffer);
            }
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
                let (mut buffer, _) = shared
                    .stop
                    .wait_timeout(buffer, INTERVAL)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                write_out(&mut buffer);
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

fn write_out(buffer: &mut Vec<u8>) {
    if !buffer.is_empty() {
        let _ = std::io::stderr().lock().write_all(buffer);
        buffer.clear();
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.stop.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        write_out(&mut lock(&self.shared.buffer));
    }
}

/// One line's writer.
pub struct LineWriter<'a> {
    shared: &'a Shared,
    urgent: bool,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut buffer = lock(&self.shared.buffer);
        buffer.extend_from_slice(bytes);
        if self.urgent || buffer.len() >= HIGH_WATER {
            write_out(&mut buffer);
        }
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
        assert!(lock(&writer.shared.buffer).is_empty(), "written through, with what was queued");
        writer.make_writer_for(&info).write_all(b"last\n").unwrap();
        drop(guard);
        assert!(lock(&writer.shared.buffer).is_empty(), "flushed at exit");
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
