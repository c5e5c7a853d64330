//! A call through the stable ABI: the one request type ([`CallInput`]) laid out as the plugin's
//! `CallRequest`, and the plugin's answer taken back into owned Rust types.

use std::sync::Arc;

use abi_stable::std_types::{RResult, RSlice, RStr, Tuple2};
use bytes::Bytes;
use plugin_api::abi::{CallError, CallRequest, CallResponse, PluginModRef};

/// One call of a plugin function, from the HTTP edge to the ABI: built once from the request
/// (or, in a sandbox worker, from the frame that carried it), owned so that it can move to the
/// blocking pool, and borrowed by [`invoke`] to lay out the plugin's `CallRequest`.
#[derive(Debug, Clone)]
pub struct CallInput {
    pub method: String,
    pub kwargs_json: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub content_type: String,
    pub request_id: Arc<str>,
}

/// The function a call is for: its index in the plugin's own list, and the names the plugin
/// is told.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub index: u32,
    pub module: &'a str,
    pub function: &'a str,
}

/// Calls `target` of a plugin's root module through the stable ABI. Blocks; a panic inside the
/// plugin comes back as its error.
pub fn invoke(root: PluginModRef, target: Target<'_>, input: &CallInput) -> RResult<CallResponse, CallError> {
    let headers: Vec<Tuple2<RStr<'_>, RStr<'_>>> = input
        .headers
        .iter()
        .map(|(name, value)| Tuple2(RStr::from_str(name), RStr::from_str(value)))
        .collect();
    let request = CallRequest {
        method: RStr::from_str(&input.method),
        module: RStr::from_str(target.module),
        function: RStr::from_str(target.function),
        kwargs_json: RStr::from_str(&input.kwargs_json),
        query: RStr::from_str(&input.query),
        headers: RSlice::from_slice(&headers),
        body: RSlice::from_slice(&input.body),
        content_type: RStr::from_str(&input.content_type),
        request_id: RStr::from_str(&input.request_id),
    };
    (root.call())(target.index, &request)
}

/// A plugin's successful answer.
#[derive(Debug)]
pub struct PluginReply {
    pub status: u16,
    pub content_type: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl From<CallResponse> for PluginReply {
    fn from(response: CallResponse) -> PluginReply {
        PluginReply {
            status: response.status,
            content_type: response.content_type.into_string(),
            headers: response
                .headers
                .into_iter()
                .map(|Tuple2(name, value)| (name.into_string(), value.into_string()))
                .collect(),
            body: response.body.into_vec(),
        }
    }
}
