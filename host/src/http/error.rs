//! The one place errors become HTTP: a JSON body with the status repeated inside, an `error_id`
//! that also appears in the log line, and internal causes kept out of the response.

use std::borrow::Cow;

use http::{header, HeaderValue, StatusCode};
use serde_json::json;
use warp::reply::Response;

/// An error answered to the client.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: Cow<'static, str>,
    pub description: String,
    /// Logged with the error id, never sent.
    pub internal: Option<String>,
    /// The `Allow` header, for 405.
    pub allow: Option<String>,
    /// The `Retry-After` header, in seconds, for 429.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: impl Into<Cow<'static, str>>, description: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code: code.into(),
            description: description.into(),
            internal: None,
            allow: None,
            retry_after: None,
        }
    }

    pub fn bad_request(code: &'static str, description: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, description)
    }

    pub fn not_found(code: &'static str, description: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, code, description)
    }

    /// 405 naming the methods that are allowed.
    pub fn method_not_allowed(method: &http::Method, what: &str, allow: String) -> ApiError {
        let mut err = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            format!("{what} does not answer {method}; it answers {allow}"),
        );
        err.allow = Some(allow);
        err
    }

    /// Adds a cause for the log only.
    pub fn with_internal(mut self, internal: impl Into<String>) -> ApiError {
        self.internal = Some(internal.into());
        self
    }

    /// Renders the JSON body, and logs the error under a fresh error id.
    pub fn into_response(self) -> Response {
        let error_id = uuid::Uuid::new_v4().to_string();
        let internal = self.internal.as_deref().unwrap_or("");
        let id = crate::access::current_request_id();
        let request_id = id.as_deref().unwrap_or("-");
        // Descriptions carry what clients and plugins wrote (names, a plugin's own message):
        // escaped, they cannot end the log line and forge another.
        let (logged, internal) = (
            plughost_sandbox::escape_control(&self.description),
            plughost_sandbox::escape_control(internal),
        );
        if self.status.is_server_error() {
            tracing::error!(request_id, error_id, status = self.status.as_u16(), error = %self.code, internal = %internal, "{logged}");
        } else {
            tracing::info!(request_id, error_id, status = self.status.as_u16(), error = %self.code, "{logged}");
        }
        let body = json!({
            "status": self.status.as_u16(),
            "error": self.code,
            "error_description": self.description,
            "error_id": error_id,
        });
        let mut response = json_response(self.status, &body);
        if let Some(allow) = self.allow.and_then(|a| HeaderValue::from_str(&a).ok()) {
            response.headers_mut().insert(header::ALLOW, allow);
        }
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"plughost\""));
        }
        response
    }
}

/// A JSON response with the given status.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut response = Response::new(body.to_string().into());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
