//! Running a plugin function under a deadline. An in-process call cannot be killed; past the
//! deadline the caller gets its answer and the call runs on to its end in the background.
//!
//! Calls run on the blocking pool, never on the async runtime's threads, with one exception that
//! saves two thread hand-offs per request: a function whose latest `QUICK_STREAK` calls each
//! (the one rule of [`plughost_runtime::pace`], which the sandbox also batches by)
//! returned within `INLINE_CALL_MAX_US` is called directly on the async thread. The first call
//! that takes longer sends the function back to the pool until it has proven quick again, so a
//! function that turns slow costs at most one late answer.
//!
//! A sandboxed module is called asynchronously, through its worker pool: a task writes the
//! request to a worker's pipe and awaits the reply, and kills the worker at the deadline. The
//! async thread meanwhile serves other requests, so under load several workers run in turn
//! before the host is woken again.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use abi_stable::std_types::RResult;
use plugin_api::ErrorKind;

use plughost_runtime::{
    call::{CallInput, PluginReply},
    pace::Pace,
};

use crate::registry::Endpoint;

/// Why a call produced no reply.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    #[error("the function returned an error: {message}")]
    Plugin { kind: ErrorKind, code: String, message: String },
    #[error("the function panicked: {0}")]
    Panicked(String),
    #[error("the function did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the blocking pool failed the call: {0}")]
    Pool(String),
    /// What only a sandboxed call fails with (a crashed worker, quarantine, …).
    #[error(transparent)]
    Sandbox(plughost_sandbox::SandboxError),
}

impl From<plughost_sandbox::SandboxError> for CallError {
    fn from(err: plughost_sandbox::SandboxError) -> CallError {
        CallError::Sandbox(err)
    }
}

/// Calls `endpoint` with `input`, waiting at most `deadline`; inline when the function has been
/// quick (`inline_max`, `None`: never inline).
pub(crate) async fn call(
    endpoint: Endpoint,
    input: CallInput,
    deadline: Duration,
    inline_max: Option<Duration>,
) -> Result<PluginReply, CallError> {
    if let Some(pool) = endpoint.module.sandbox() {
        return call_sandboxed(Arc::clone(pool), endpoint, input, inline_max).await;
    }
    let pace = Pace {
        streak: endpoint.quick_streak(),
        quick_max: inline_max,
    };
    if pace.is_quick() {
        let started = Instant::now();
        let result = run(&endpoint, &input);
        let took = started.elapsed();
        pace.record(Some(took));
        if !pace.is_quick() {
            tracing::debug!(function = %endpoint.function().name, ?took, "an inline call was slow; back to the blocking pool");
        }
        return if took > deadline {
            Err(CallError::Timeout(deadline))
        } else {
            result
        };
    }
    let task = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let result = crate::access::on_thread(&input.request_id, || run(&endpoint, &input));
        let pace = Pace {
            streak: endpoint.quick_streak(),
            quick_max: inline_max,
        };
        // A plugin's error answer was quick too: only the time counts here.
        pace.record(Some(started.elapsed()));
        result
    });
    match tokio::time::timeout(deadline, task).await {
        Ok(Ok(result)) => result,
        Ok(Err(join_error)) => Err(CallError::Pool(join_error.to_string())),
        Err(_) => Err(CallError::Timeout(deadline)),
    }
}

/// How long past a sandboxed module's own deadline the safety-net timer waits.
const SANDBOX_GRACE: Duration = Duration::from_secs(2);

/// A call through the module's worker pool. It runs as a task of its own, so that a client that
/// goes away does not cut a call short: its worker finishes it and goes back to the pool.
async fn call_sandboxed(
    pool: Arc<plughost_sandbox::Pool>,
    endpoint: Endpoint,
    input: CallInput,
    quick_max: Option<Duration>,
) -> Result<PluginReply, CallError> {
    // The pool enforces the module's deadline itself (it kills the worker); this timer is only a
    // safety net. A batched call queued behind one that turned slow may wait for that one's
    // deadline before its own starts: hence twice the deadline.
    let deadline = pool.limits().call_timeout * 2 + SANDBOX_GRACE;
    let task = tokio::spawn(async move {
        let pace = Pace {
            streak: endpoint.quick_streak(),
            quick_max,
        };
        pool.call(endpoint.target(), &input, pace).await.map_err(CallError::from)
    });
    match tokio::time::timeout(deadline, task).await {
        Ok(Ok(result)) => result,
        Ok(Err(join_error)) => Err(CallError::Pool(join_error.to_string())),
        Err(_) => Err(CallError::Timeout(deadline)),
    }
}

/// Calls the function in this process; blocks until it answers.
fn run(endpoint: &Endpoint, input: &CallInput) -> Result<PluginReply, CallError> {
    let module = &endpoint.module;
    match module.call(endpoint.target(), input) {
        RResult::ROk(response) => Ok(PluginReply::from(response)),
        RResult::RErr(err) if err.kind == ErrorKind::Panicked => Err(CallError::Panicked(err.message.into_string())),
        RResult::RErr(err) => Err(CallError::Plugin {
            kind: err.kind,
            code: err.code.into_string(),
            message: err.message.into_string(),
        }),
    }
}
