//! What the sandbox reports to its host as workers come and go (the host counts it in metrics).

use std::time::Duration;

/// What the sandbox tells its host about workers as they come and go, for its metrics. Every
/// method has an empty default.
pub trait Observer: Send + Sync {
    /// A worker process was started.
    fn worker_spawned(&self) {}
    /// A worker confined itself and loaded its library, `took` after it was started.
    fn worker_loaded(&self, took: Duration) {
        let _ = took;
    }
    /// A worker process ended and was reaped.
    fn worker_gone(&self) {}
    /// A worker died while it had calls (or while loading).
    fn worker_crashed(&self) {}
    /// A module's workers crashed too often: it is quarantined.
    fn module_quarantined(&self) {}
    /// A call ran past its deadline and its worker was killed.
    fn call_timed_out(&self) {}
}

/// An observer that ignores everything (`plughost check`, tests).
pub struct Unobserved;

impl Observer for Unobserved {}
