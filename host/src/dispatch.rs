//! Running a plugin function: on the blocking pool (never on the async runtime's threads), under
//! a deadline. An in-process call cannot be killed; past the deadline the caller gets its answer
//! and the call runs on to its end in the background.

use std::time::Duration;

use abi_stable::std_types::{RResult, RSlice, RStr, Tuple2};
use bytes::Bytes;
use plugin_api::{abi::CallRequest, ErrorKind};
use tracing::Instrument;

use crate::registry::Endpoint;

/// Everything a call carries, owned, so that it can move to the blocking pool.
#[derive(Debug)]
pub struct CallInput {
    pub method: String,
    pub kwargs_json: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub content_type: String,
    pub request_id: String,
}

/// A plugin's successful answer.
#[derive(Debug)]
pub struct PluginReply {
    pub status: u16,
    pub content_type: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Why a call produced no reply.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("the function returned an error: {message}")]
    Plugin { kind: ErrorKind, code: String, message: String },
    #[error("the function panicked: {0}")]
    Panicked(String),
    #[error("the function did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the blocking pool failed the call: {0}")]
    Pool(String),
}

/// Calls `endpoint` with `input` on the blocking pool, waiting at most `deadline`.
pub async fn call(endpoint: Endpoint, input: CallInput, deadline: Duration) -> Result<PluginReply, CallError> {
    let span = tracing::Span::current();
    let task = tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        call_blocking(&endpoint, &input)
    });
    match tokio::time::timeout(deadline, task).in_current_span().await {
        Ok(Ok(result)) => result,
        Ok(Err(join_error)) => Err(CallError::Pool(join_error.to_string())),
        Err(_) => Err(CallError::Timeout(deadline)),
    }
}

fn call_blocking(endpoint: &Endpoint, input: &CallInput) -> Result<PluginReply, CallError> {
    let module = &endpoint.module;
    let function = endpoint.function();
    let headers: Vec<Tuple2<RStr<'_>, RStr<'_>>> = input
        .headers
        .iter()
        .map(|(name, value)| Tuple2(RStr::from_str(name), RStr::from_str(value)))
        .collect();
    let request = CallRequest {
        method: RStr::from_str(&input.method),
        module: RStr::from_str(&module.spec.name),
        function: RStr::from_str(&function.name),
        kwargs_json: RStr::from_str(&input.kwargs_json),
        query: RStr::from_str(&input.query),
        headers: RSlice::from_slice(&headers),
        body: RSlice::from_slice(&input.body),
        content_type: RStr::from_str(&input.content_type),
        request_id: RStr::from_str(&input.request_id),
    };
    match module.call(function.index, &request) {
        RResult::ROk(response) => Ok(PluginReply {
            status: response.status,
            content_type: response.content_type.into_string(),
            headers: response
                .headers
                .into_iter()
                .map(|Tuple2(name, value)| (name.into_string(), value.into_string()))
                .collect(),
            body: response.body.into_vec(),
        }),
        RResult::RErr(err) if err.kind == ErrorKind::Panicked => Err(CallError::Panicked(err.message.into_string())),
        RResult::RErr(err) => Err(CallError::Plugin {
            kind: err.kind,
            code: err.code.into_string(),
            message: err.message.into_string(),
        }),
    }
}
