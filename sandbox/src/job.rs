//! A call on its way through a worker: the job a pool queues (its frame, deadline and where its
//! answer goes), and how it can fail before it becomes a [`crate::SandboxError`].

use std::time::Instant;

use tokio::sync::oneshot;

use crate::protocol::Outcome;

/// Why a call through a worker failed, before it becomes a [`SandboxError`].
pub(crate) enum Failure {
    TimedOut,
    Crashed { status: String, out_of_memory: bool },
    TooLarge(u64),
    Broken(String),
}

/// What a worker answered to one call: the outcome, the body, and how long the plugin took (µs).
pub(crate) type Answered = Result<(Outcome, Vec<u8>, u64), Failure>;

/// A quick call waiting in its pool's queue for a worker.
pub(crate) struct Job {
    pub(crate) id: u64,
    /// The host's request id, which the plugin's log lines for this call carry.
    pub(crate) request_id: String,
    pub(crate) frame: Vec<u8>,
    pub(crate) deadline: Instant,
    pub(crate) answer: oneshot::Sender<Answered>,
}

/// The answer a runner sends back for a job.
pub(crate) async fn answer_of(answered: oneshot::Receiver<Answered>) -> Answered {
    answered
        .await
        .unwrap_or_else(|_| Err(Failure::Broken("the worker's runner ended without an answer".to_owned())))
}
