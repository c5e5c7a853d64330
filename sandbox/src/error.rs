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

/// Why a worker could not be started, or did not load its plugin: said in words, for the log,
/// the `/health` layers and the load error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpawnError(pub String);

impl From<String> for SpawnError {
    fn from(why: String) -> SpawnError {
        SpawnError(why)
    }
}

impl From<&str> for SpawnError {
    fn from(why: &str) -> SpawnError {
        SpawnError(why.to_owned())
    }
}

impl From<SpawnError> for SandboxError {
    fn from(err: SpawnError) -> SandboxError {
        SandboxError::WorkerFailed(err.0)
    }
}

/// Why a tenant's limit overrides are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LimitsError(pub String);
