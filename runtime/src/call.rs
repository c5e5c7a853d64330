//! A call through the stable ABI: the request's parts, borrowed, laid out as the plugin's
//! `CallRequest`, and the plugin's answer taken back into owned Rust types.

use abi_stable::std_types::{RResult, RSlice, RStr, Tuple2};
use plugin_api::abi::{CallError, CallRequest, CallResponse, PluginModRef};

/// What a call hands a plugin, borrowed from the request (in this process) or from the frame
/// that carried it (in a sandbox worker).
pub struct CallParts<'a> {
    pub method: &'a str,
    pub module: &'a str,
    pub function: &'a str,
    pub kwargs_json: &'a str,
    pub query: &'a str,
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
    pub content_type: &'a str,
    pub request_id: &'a str,
}

/// Calls function `index` of a plugin's root module through the stable ABI. Blocks; a panic
/// inside the plugin comes back as its error.
pub fn invoke(root: PluginModRef, index: u32, parts: &CallParts<'_>) -> RResult<CallResponse, CallError> {
    let headers: Vec<Tuple2<RStr<'_>, RStr<'_>>> = parts
        .headers
        .iter()
        .map(|(name, value)| Tuple2(RStr::from_str(name), RStr::from_str(value)))
        .collect();
    let request = CallRequest {
        method: RStr::from_str(parts.method),
        module: RStr::from_str(parts.module),
        function: RStr::from_str(parts.function),
        kwargs_json: RStr::from_str(parts.kwargs_json),
        query: RStr::from_str(parts.query),
        headers: RSlice::from_slice(&headers),
        body: RSlice::from_slice(parts.body),
        content_type: RStr::from_str(parts.content_type),
        request_id: RStr::from_str(parts.request_id),
    };
    (root.call())(index, &request)
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
