//! Calling plugin functions in an author's own unit tests, without the host.

use abi_stable::std_types::{RSlice, RStr, Tuple2};
use serde_json::{Map, Value};

use crate::{abi::CallRequest, IntoResponse, Request, Response, Result};

/// A request built by hand, as the host would build it.
///
/// ```
/// use plugin_api::{prelude::*, testing::TestRequest};
///
/// fn double(req: &Request) -> Result<Value> {
///     Ok(json!({"twice": req.i64("n")? * 2}))
/// }
///
/// let response = TestRequest::get().kwarg("n", 21).call(double).unwrap();
/// assert_eq!(response.body(), br#"{"twice":42}"#);
/// ```
#[derive(Debug, Clone, Default)]
pub struct TestRequest {
    method: String,
    kwargs: Map<String, Value>,
    query: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    content_type: String,
}

impl TestRequest {
    /// A request with the given method.
    pub fn new(method: &str) -> Self {
        TestRequest {
            method: method.to_owned(),
            ..Self::default()
        }
    }

    /// A `GET` request.
    pub fn get() -> Self {
        Self::new("GET")
    }

    /// Adds a kwarg.
    pub fn kwarg(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.kwargs.insert(name.to_owned(), value.into());
        self
    }

    /// Sets the raw query string.
    pub fn query(mut self, query: &str) -> Self {
        self.query = query.to_owned();
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.to_owned()));
        self
    }

    /// Sets the raw body and its content type.
    pub fn body(mut self, body: impl Into<Vec<u8>>, content_type: &str) -> Self {
        self.body = body.into();
        self.content_type = content_type.to_owned();
        self
    }

    /// Calls `function` with this request, as the host would (without panic catching).
    pub fn call<F, R>(&self, function: F) -> Result<Response>
    where
        F: Fn(&Request<'_>) -> Result<R>,
        R: IntoResponse,
    {
        let kwargs_json = Value::Object(self.kwargs.clone()).to_string();
        let headers: Vec<Tuple2<RStr<'_>, RStr<'_>>> = self
            .headers
            .iter()
            .map(|(n, v)| Tuple2(RStr::from_str(n), RStr::from_str(v)))
            .collect();
        let raw = CallRequest {
            method: RStr::from_str(&self.method),
            module: RStr::from_str("test"),
            function: RStr::from_str("test"),
            kwargs_json: RStr::from_str(&kwargs_json),
            query: RStr::from_str(&self.query),
            headers: RSlice::from_slice(&headers),
            body: RSlice::from_slice(&self.body),
            content_type: RStr::from_str(&self.content_type),
            request_id: RStr::from_str("test-request"),
        };
        let request = Request::from_abi(&raw)?;
        let response = function(&request)?.into_response();
        match response.failure() {
            Some(failure) => Err(failure.clone()),
            None => Ok(response),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ErrorKind, Json};
    use std::collections::HashMap;

    #[test]
    fn an_unserializable_response_is_an_internal_error() {
        let err = TestRequest::get()
            .call(|_req| Ok(Json(HashMap::from([((1, 2), "tuple keys are not JSON")]))))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Internal);
        assert!(err.message().contains("not serializable"), "{}", err.message());
    }

    #[test]
    fn raw_kwargs_pass_on_the_same_bytes_as_decoded_ones() {
        #[derive(serde::Serialize)]
        struct Echo<'a> {
            kwargs: &'a serde_json::value::RawValue,
        }
        let request = TestRequest::get()
            .kwarg("name", "Ada \"A\" é")
            .kwarg("n", 3)
            .kwarg("list", serde_json::json!([1, {"a": null}]));
        let raw = request.call(|req| Ok(Response::json(Echo { kwargs: req.kwargs_raw() }))).unwrap();
        let decoded = request.call(|req| Ok(serde_json::json!({ "kwargs": req.kwargs() }))).unwrap();
        assert_eq!(raw.body(), decoded.body());
    }

    #[test]
    fn kwargs_decode_once_and_into_structs() {
        #[derive(serde::Deserialize)]
        struct Args {
            name: String,
            n: i64,
        }
        let request = TestRequest::get().kwarg("name", "Ada").kwarg("n", 3);
        let response = request
            .call(|req| {
                let args: Args = req.kwargs_as()?;
                let first = req.kwargs() as *const _;
                assert_eq!(first, req.kwargs() as *const _, "decoded once and kept");
                Ok(format!("{} {} {}", args.name, args.n, req.i64("n")?))
            })
            .unwrap();
        assert_eq!(response.body(), b"Ada 3 3");
        let err = request.call(|req| Ok(req.kwargs_as::<Vec<i64>>()?.len().to_string())).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unprocessable);
    }
}
