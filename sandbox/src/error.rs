//! Why a sandboxed call produced no reply: one typed error, which the host turns into HTTP.

use std::time::Duration;

use plugin_api::ErrorKind;

/// Why a call through a worker pool produced no reply.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("the function returned an error: {message}")]
    Plugin { kind: ErrorKind, code: String, message: String },
    #[error("the function panicked: {0}")]
    Panicked(String),
    #[error("the function did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the sandbox worker died: {0}")]
    Crashed(String),
    #[error("the sandbox worker ran out of its {0} MiB of memory")]
    OutOfMemory(u64),
    #[error("the module is quarantined: {0}")]
    Quarantined(String),
    #[error("the module already runs {0} calls at once")]
    Busy(u32),
    #[error("the response of {0} bytes is over the limit")]
    ResponseTooLarge(u64),
    #[error("the sandbox worker failed: {0}")]
    WorkerFailed(String),
}
