//! The request a plugin function receives: kwargs with typed accessors, and the raw HTTP parts.

use std::{cell::OnceCell, sync::OnceLock};

use serde::de::DeserializeOwned;
use serde_json::{value::RawValue, Map, Value};

use crate::{abi::CallRequest, Error, Result};

/// One call of a plugin function.
///
/// `kwargs` are built by the host from the JSON body, the query string and the positional URL
/// segments (URL over query over body), already coerced to the types the function declared.
///
/// The kwargs arrive as JSON text and are decoded at the first accessor that needs them, so a
/// function that never reads them, or passes them on whole with [`Request::kwargs_raw`], does not
/// pay for decoding them.
pub struct Request<'a> {
    raw: &'a CallRequest<'a>,
    kwargs: OnceCell<Map<String, Value>>,
}

impl<'a> Request<'a> {
    pub(crate) fn from_abi(raw: &'a CallRequest<'a>) -> Result<Self> {
        Ok(Request {
            raw,
            kwargs: OnceCell::new(),
        })
    }

    fn decoded(&self) -> &Map<String, Value> {
        // The host always sends an object (`null` from hosts before 0.1); anything else would be
        // a host bug, and reads as no kwargs.
        self.kwargs
            .get_or_init(|| match serde_json::from_str::<Value>(self.raw.kwargs_json.as_str()) {
                Ok(Value::Object(map)) => map,
                _ => Map::new(),
            })
    }

    /// The HTTP method, upper case (`GET`, `POST`, …).
    pub fn method(&self) -> &str {
        self.raw.method.as_str()
    }

    /// The module's name.
    pub fn module(&self) -> &str {
        self.raw.module.as_str()
    }

    /// The function's name (not its API alias).
    pub fn function(&self) -> &str {
        self.raw.function.as_str()
    }

    /// All kwargs.
    pub fn kwargs(&self) -> &Map<String, Value> {
        self.decoded()
    }

    /// All kwargs as the JSON object text the host sent, not decoded. Embed it in a response
    /// (a `&RawValue` field serializes as the text itself) to pass the kwargs on without decoding
    /// and re-encoding them.
    pub fn kwargs_raw(&self) -> &RawValue {
        let text = self.raw.kwargs_json.as_str();
        match serde_json::from_str::<&RawValue>(text) {
            Ok(raw) if text.starts_with('{') => raw,
            // Not an object (a host bug): an empty one, as `kwargs` reads it.
            _ => empty_object(),
        }
    }

    /// One kwarg, if present.
    pub fn kwarg(&self, name: &str) -> Option<&Value> {
        self.decoded().get(name)
    }

    /// A required string kwarg. Numbers and booleans are not converted: declare the parameter
    /// as a string to have the host coerce them.
    pub fn str(&self, name: &str) -> Result<&str> {
        self.opt_str(name)?.ok_or_else(|| missing(name))
    }

    /// An optional string kwarg; an error if present with another type.
    pub fn opt_str(&self, name: &str) -> Result<Option<&str>> {
        match self.decoded().get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(wrong_type(name, "a string", other)),
        }
    }

    /// A required integer kwarg; strings holding an integer are accepted.
    pub fn i64(&self, name: &str) -> Result<i64> {
        self.opt_i64(name)?.ok_or_else(|| missing(name))
    }

    /// An optional integer kwarg.
    pub fn opt_i64(&self, name: &str) -> Result<Option<i64>> {
        match self.decoded().get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| wrong_type(name, "an integer", &Value::Number(n.clone()))),
            Some(Value::String(s)) => s
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| wrong_type(name, "an integer", &Value::String(s.clone()))),
            Some(other) => Err(wrong_type(name, "an integer", other)),
        }
    }

    /// A required number kwarg; strings holding a number are accepted.
    pub fn f64(&self, name: &str) -> Result<f64> {
        self.opt_f64(name)?.ok_or_else(|| missing(name))
    }

    /// An optional number kwarg.
    pub fn opt_f64(&self, name: &str) -> Result<Option<f64>> {
        match self.decoded().get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64()),
            Some(Value::String(s)) => s
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(Some)
                .ok_or_else(|| wrong_type(name, "a number", &Value::String(s.clone()))),
            Some(other) => Err(wrong_type(name, "a number", other)),
        }
    }

    /// A required boolean kwarg; `"true"`, `"false"`, `"1"` and `"0"` are accepted.
    pub fn bool(&self, name: &str) -> Result<bool> {
        self.opt_bool(name)?.ok_or_else(|| missing(name))
    }

    /// An optional boolean kwarg.
    pub fn opt_bool(&self, name: &str) -> Result<Option<bool>> {
        match self.decoded().get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(s)) => match s.as_str() {
                "true" | "1" => Ok(Some(true)),
                "false" | "0" => Ok(Some(false)),
                _ => Err(wrong_type(name, "a boolean", &Value::String(s.clone()))),
            },
            Some(other) => Err(wrong_type(name, "a boolean", other)),
        }
    }

    /// Deserializes all kwargs into `T` (a struct with named fields, typically).
    pub fn kwargs_as<T: DeserializeOwned>(&self) -> Result<T> {
        // Straight from the text: no map to build and clone first.
        serde_json::from_str(self.kwargs_raw().get()).map_err(|err| Error::unprocessable(format!("kwargs do not fit: {err}")))
    }

    /// The raw query string, without `?`.
    pub fn query(&self) -> &str {
        self.raw.query.as_str()
    }

    /// A header's value; `name` is matched without regard to case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.raw
            .headers
            .iter()
            .find(|pair| pair.0.as_str().eq_ignore_ascii_case(name))
            .map(|pair| pair.1.as_str())
    }

    /// The raw body (empty for `GET` and `HEAD`).
    pub fn body(&self) -> &[u8] {
        self.raw.body.as_slice()
    }

    /// The body's content type, or an empty string.
    pub fn content_type(&self) -> &str {
        self.raw.content_type.as_str()
    }

    /// Deserializes the raw body as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        Ok(serde_json::from_slice(self.body())?)
    }

    /// The asynchronous job this call runs for, and which attempt it is (from 1): `None` for a
    /// synchronous call. A job may run more than once (after a failure, or when its replica was
    /// lost), so a function with effects can use the id to do them once.
    pub fn job(&self) -> Option<Job<'_>> {
        Some(Job {
            id: self.header("x-plughost-job-id")?,
            attempt: self.header("x-plughost-attempt")?.parse().ok()?,
        })
    }

    /// Who is calling, as the host authenticated them: `None` for a public call without
    /// credentials. (The host removes credentials from the headers a plugin sees.)
    pub fn caller(&self) -> Option<Caller<'_>> {
        let kind = match self.header("x-plughost-caller-kind")? {
            "admin" => CallerKind::Admin,
            "tenant" => CallerKind::Tenant,
            _ => return None,
        };
        Some(Caller {
            kind,
            uuid: self.header("x-plughost-caller-uuid")?,
        })
    }

    /// The request id, also sent back to the client in `X-Request-Id`.
    pub fn request_id(&self) -> &str {
        self.raw.request_id.as_str()
    }
}

/// Whether the caller is the admin or a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerKind {
    Admin,
    Tenant,
}

/// An authenticated caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller<'a> {
    pub kind: CallerKind,
    pub uuid: &'a str,
}

fn empty_object() -> &'static RawValue {
    static EMPTY: OnceLock<Box<RawValue>> = OnceLock::new();
    EMPTY.get_or_init(|| RawValue::from_string("{}".to_owned()).unwrap_or_else(|_| unreachable!("{{}} is JSON")))
}

fn missing(name: &str) -> Error {
    Error::unprocessable(format!("missing required parameter '{name}'")).with_code("MISSING_PARAMETER")
}

fn wrong_type(name: &str, expected: &str, got: &Value) -> Error {
    let mut shown = got.to_string();
    if shown.len() > 60 {
        let cut = (0..=60).rev().find(|i| shown.is_char_boundary(*i)).unwrap_or(0);
        shown.truncate(cut);
        shown.push('…');
    }
    Error::unprocessable(format!("parameter '{name}' must be {expected}, got {shown}")).with_code("INVALID_PARAMETER")
}

/// An asynchronous job's id and the attempt of this call, from [`Request::job`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job<'a> {
    pub id: &'a str,
    pub attempt: u32,
}
