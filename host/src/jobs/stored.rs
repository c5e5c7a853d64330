//! What a job keeps in the store: the call it makes (the input a synchronous call would have
//! handed the plugin) and the answer it got, both as JSON text, bodies in base64.

use std::sync::Arc;

use base64ct::{Base64, Encoding};
use bytes::Bytes;
use plughost_runtime::call::CallInput;
use serde::{Deserialize, Serialize};

/// A call, as queued.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredCall {
    pub method: String,
    pub kwargs_json: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body_base64: String,
    pub content_type: String,
    pub request_id: String,
}

impl StoredCall {
    pub(crate) fn of(input: &CallInput) -> StoredCall {
        StoredCall {
            method: input.method.clone(),
            kwargs_json: input.kwargs_json.clone(),
            query: input.query.clone(),
            headers: input.headers.clone(),
            body_base64: Base64::encode_string(&input.body),
            content_type: input.content_type.clone(),
            request_id: input.request_id.to_string(),
        }
    }

    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub(crate) fn from_json(text: &str) -> Result<StoredCall, String> {
        serde_json::from_str(text).map_err(|err| format!("the stored call is unreadable: {err}"))
    }

    /// The plugin's input for one attempt: the headers say which job and attempt it is.
    pub(crate) fn input(&self, job_id: &str, attempt: i64) -> Result<CallInput, String> {
        let body = Base64::decode_vec(&self.body_base64).map_err(|err| format!("the stored body is unreadable: {err}"))?;
        let mut headers = self.headers.clone();
        headers.retain(|(name, _)| !name.eq_ignore_ascii_case("x-plughost-job-id") && !name.eq_ignore_ascii_case("x-plughost-attempt"));
        headers.push(("x-plughost-job-id".to_owned(), job_id.to_owned()));
        headers.push(("x-plughost-attempt".to_owned(), attempt.to_string()));
        Ok(CallInput {
            method: self.method.clone(),
            kwargs_json: self.kwargs_json.clone(),
            query: self.query.clone(),
            headers,
            body: Bytes::from(body),
            content_type: self.content_type.clone(),
            request_id: Arc::from(job_id),
        })
    }
}

/// What a job's call answered: the status, content type, headers and body a synchronous call
/// would have sent (an error answer included).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Answer {
    pub status: u16,
    pub content_type: String,
    pub headers: Vec<(String, String)>,
    pub body_base64: String,
}

impl Answer {
    pub(crate) fn new(status: u16, content_type: String, headers: Vec<(String, String)>, body: &[u8]) -> Answer {
        Answer {
            status,
            content_type,
            headers,
            body_base64: Base64::encode_string(body),
        }
    }

    pub(crate) fn body(&self) -> Vec<u8> {
        Base64::decode_vec(&self.body_base64).unwrap_or_default()
    }

    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub(crate) fn from_json(text: &str) -> Option<Answer> {
        serde_json::from_str(text).ok()
    }

    /// The answer in a job record: a JSON body as JSON, other text as a string, bytes in base64.
    pub(crate) fn view(&self) -> serde_json::Value {
        let body = self.body();
        let mut view = serde_json::json!({
            "status": self.status,
            "content_type": self.content_type,
            "headers": self.headers.iter().map(|(n, v)| (n.clone(), serde_json::Value::String(v.clone()))).collect::<serde_json::Map<_, _>>(),
        });
        let json = self.content_type.starts_with("application/json") || self.content_type.contains("+json");
        match (
            json.then(|| serde_json::from_slice::<serde_json::Value>(&body).ok()).flatten(),
            String::from_utf8(body),
        ) {
            (Some(value), _) => view["body"] = value,
            (None, Ok(text)) => view["body"] = text.into(),
            (None, Err(_)) => view["body_base64"] = self.body_base64.clone().into(),
        }
        view
    }

    /// Whether a retry may change the answer: a server error, 408 or 429.
    pub(crate) fn retryable(&self) -> bool {
        self.status >= 500 || self.status == 408 || self.status == 429
    }
}
