//! What a plugin function returns: a JSON value or a full response.

use abi_stable::std_types::Tuple2;
use serde::Serialize;

use crate::{abi::CallResponse, Error};

/// A full HTTP response: status, content type, extra headers and body bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    status: u16,
    content_type: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Set when the response could not be built (a value that does not serialize); the call then
    /// fails with this error instead.
    failure: Option<Error>,
}

impl Response {
    /// 200 with `value` serialized as JSON.
    ///
    /// A value that cannot be serialized (a map with non-string keys, say) makes the call fail
    /// with an internal error that says so, rather than a panic.
    pub fn json(value: impl Serialize) -> Response {
        match serde_json::to_vec(&value) {
            Ok(body) => Response::bytes(body).with_content_type("application/json"),
            Err(err) => Response {
                failure: Some(Error::internal(format!("the response is not serializable as JSON: {err}"))),
                ..Response::empty(500)
            },
        }
    }

    /// 200 with a `text/plain; charset=utf-8` body.
    pub fn text(text: impl Into<String>) -> Response {
        Response::bytes(text.into().into_bytes()).with_content_type("text/plain; charset=utf-8")
    }

    /// 200 with an `application/octet-stream` body.
    pub fn bytes(body: impl Into<Vec<u8>>) -> Response {
        Response {
            status: 200,
            content_type: "application/octet-stream".to_owned(),
            headers: Vec::new(),
            body: body.into(),
            failure: None,
        }
    }

    /// An empty response with the given status (e.g. 204).
    pub fn empty(status: u16) -> Response {
        Response::bytes(Vec::new()).with_status(status)
    }

    /// Sets the status code (the host refuses codes outside 100–599).
    pub fn with_status(mut self, status: u16) -> Response {
        self.status = status;
        self
    }

    /// Sets the content type.
    pub fn with_content_type(mut self, content_type: impl Into<String>) -> Response {
        self.content_type = content_type.into();
        self
    }

    /// Adds a header. `Content-Length`, `Transfer-Encoding` and `Connection` are managed by the host
    /// and dropped.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The content type.
    pub fn content_type(&self) -> &str {
        &self.content_type
    }

    /// The extra headers.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The body bytes.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    pub(crate) fn failure(&self) -> Option<&Error> {
        self.failure.as_ref()
    }

    pub(crate) fn into_abi(self) -> Result<CallResponse, Error> {
        if let Some(failure) = self.failure {
            return Err(failure);
        }
        Ok(CallResponse {
            status: self.status,
            content_type: self.content_type.into(),
            headers: self
                .headers
                .into_iter()
                .map(|(name, value)| Tuple2(name.into(), value.into()))
                .collect(),
            body: self.body.into(),
        })
    }
}

/// Anything a plugin function may return in `Ok`.
pub trait IntoResponse {
    /// Converts `self` into a full response.
    fn into_response(self) -> Response;
}

impl IntoResponse for Response {
    fn into_response(self) -> Response {
        self
    }
}

/// A JSON value becomes a 200 `application/json` response.
impl IntoResponse for serde_json::Value {
    fn into_response(self) -> Response {
        Response::json(self)
    }
}

/// A string becomes a 200 `text/plain` response.
impl IntoResponse for String {
    fn into_response(self) -> Response {
        Response::text(self)
    }
}

/// A string becomes a 200 `text/plain` response.
impl IntoResponse for &'static str {
    fn into_response(self) -> Response {
        Response::text(self)
    }
}

/// Bytes become a 200 `application/octet-stream` response.
impl IntoResponse for Vec<u8> {
    fn into_response(self) -> Response {
        Response::bytes(self)
    }
}

/// Any serializable value wrapped in `Json` becomes a 200 `application/json` response.
#[derive(Debug, Clone)]
pub struct Json<T>(pub T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        Response::json(self.0)
    }
}
