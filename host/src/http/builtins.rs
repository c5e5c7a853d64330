//! `/ping`, `/version` and `/health`.

use http::{Method, StatusCode};
use serde_json::{json, Value};
use warp::reply::Response;

use super::error::{json_response, ApiError};
use crate::{plugins::FileState, AppState};

/// Answers a built-in for `GET` and `HEAD`; 405 otherwise.
pub fn answer(method: &Method, path: &str, body: impl FnOnce() -> Value) -> Response {
    if method == Method::GET || method == Method::HEAD {
        json_response(StatusCode::OK, &body())
    } else {
        ApiError::method_not_allowed(method, path, "GET, HEAD".to_owned()).into_response()
    }
}

pub fn ping() -> Value {
    json!({})
}

pub fn version() -> Value {
    json!({
        "name": "plughost",
        "version": env!("CARGO_PKG_VERSION"),
        "abi_version": plugin_api::ABI_VERSION,
        "plugin_api": crate::loader::plugin_api_version(),
    })
}

pub fn health(state: &AppState) -> Value {
    let files = state.plugins.status();
    let count = |wanted: FileState| files.iter().filter(|f| f.state == wanted).count();
    json!({
        "status": "ok",
        "plugins": {
            "loaded": count(FileState::Loaded),
            "failed": count(FileState::Failed),
            "removed": count(FileState::Removed),
            "files": files,
        },
    })
}
