//! The one place errors become HTTP: a JSON body with the status repeated inside, an `error_id`
//! that also appears in the log line, and internal causes kept out of the response. Each layer's
//! typed error becomes an [`ApiError`] here, by `From` (or, for a call, with the function's
//! names: [`ApiError::of_call`]).

use std::borrow::Cow;

use http::{header, HeaderValue, StatusCode};
use plughost_sandbox::SandboxError;
use plughost_tenancy::{auth::AuthError, tenants::TenantError, StoreError};
use plugin_api::ErrorKind;
use serde_json::json;
use warp::reply::Response;

use crate::{dispatch::CallError, kwargs::KwargsError, publish::PublishError};

/// An error answered to the client.
#[derive(Debug)]
pub(crate) struct ApiError {
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
    pub(crate) fn new(status: StatusCode, code: impl Into<Cow<'static, str>>, description: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code: code.into(),
            description: description.into(),
            internal: None,
            allow: None,
            retry_after: None,
        }
    }

    pub(crate) fn bad_request(code: &'static str, description: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, description)
    }

    pub(crate) fn not_found(code: &'static str, description: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, code, description)
    }

    /// 405 naming the methods that are allowed.
    pub(crate) fn method_not_allowed(method: &http::Method, what: &str, allow: String) -> ApiError {
        let mut err = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            format!("{what} does not answer {method}; it answers {allow}"),
        );
        err.allow = Some(allow);
        err
    }

    /// Adds a cause for the log only.
    pub(crate) fn with_internal(mut self, internal: impl Into<String>) -> ApiError {
        self.internal = Some(internal.into());
        self
    }

    /// Renders the JSON body, and logs the error under a fresh error id.
    pub(crate) fn into_response(self) -> Response {
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
pub(crate) fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut response = Response::new(body.to_string().into());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> ApiError {
        let message = err.to_string();
        match err {
            AuthError::Missing(_) => ApiError::new(StatusCode::UNAUTHORIZED, "AUTHORIZATION_HEADER_MISSING", message),
            AuthError::TokenInvalid(_) => ApiError::new(StatusCode::UNAUTHORIZED, "TOKEN_INVALID", message),
            AuthError::TokenExpired => ApiError::new(StatusCode::UNAUTHORIZED, "TOKEN_EXPIRED", message),
            AuthError::TotpInvalid(_) => ApiError::new(StatusCode::UNAUTHORIZED, "TOTP_INVALID", message),
            AuthError::TotpReplayed => ApiError::new(StatusCode::UNAUTHORIZED, "TOTP_REPLAYED", message),
            AuthError::Forbidden(_) => ApiError::new(StatusCode::FORBIDDEN, "FORBIDDEN", message),
            AuthError::TooManyAttempts(secs) => {
                let mut err = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_ATTEMPTS", message);
                err.retry_after = Some(secs);
                err
            }
            AuthError::StoreUnavailable(cause) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "STORE_UNAVAILABLE",
                "the identity store is unavailable; authentication is refused until it is back",
            )
            .with_internal(cause),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> ApiError {
        AuthError::StoreUnavailable(err.to_string()).into()
    }
}

impl From<TenantError> for ApiError {
    fn from(err: TenantError) -> ApiError {
        match err {
            TenantError::NotFound(uuid) => ApiError::not_found("TENANT_NOT_FOUND", format!("no tenant has UUID {uuid}")),
            TenantError::Invalid(why) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "INVALID_TENANT", why),
            TenantError::Store(err) => err.into(),
        }
    }
}

impl From<PublishError> for ApiError {
    fn from(err: PublishError) -> ApiError {
        let message = err.to_string();
        match err {
            PublishError::Invalid(_) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "INVALID_PLUGIN", message),
            PublishError::TooLarge(..) => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE", message),
            PublishError::TenantFull(..) => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "TENANT_STORAGE_FULL", message),
            PublishError::TooManyPlugins(..) => ApiError::new(StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_PLUGINS", message),
            PublishError::Refused(_) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "PLUGIN_REFUSED", message),
            PublishError::NotFound(_) => ApiError::not_found("PLUGIN_NOT_FOUND", message),
            PublishError::Store(err) => err.into(),
        }
    }
}

/// Kwargs that cannot be read from the body, query or path: 400.
impl From<KwargsError> for ApiError {
    fn from(err: KwargsError) -> ApiError {
        ApiError::bad_request(err.code, err.message)
    }
}

/// Kwargs that do not fit the function's declared parameters: 422.
impl From<plughost_runtime::params::ParamError> for ApiError {
    fn from(err: plughost_runtime::params::ParamError) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, err.code, err.message)
    }
}

impl ApiError {
    /// A call of `function` of `module` that produced no reply.
    pub(crate) fn of_call(err: CallError, function: &str, module: &str) -> ApiError {
        match err {
            CallError::Plugin { kind, code, message } => plugin_error(kind, code, message),
            CallError::Panicked(message) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "PLUGIN_PANICKED",
                format!("function '{function}' of module '{module}' panicked; the server log has the details under this error_id"),
            )
            .with_internal(message),
            CallError::Timeout(after) => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "CALL_TIMEOUT",
                format!(
                    "function '{function}' of module '{module}' did not answer within {} ms (CALL_TIMEOUT_MS)",
                    after.as_millis()
                ),
            ),
            CallError::Sandbox(err) => sandbox_error(err, function, module),
            CallError::Pool(cause) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL_ERROR",
                "the call could not be run; see the server log under this error_id",
            )
            .with_internal(cause),
        }
    }
}

/// A plugin's own error answer: its kind chooses the status, and its code is kept when it is a
/// sane one.
fn plugin_error(kind: ErrorKind, code: String, message: String) -> ApiError {
    let (status, default_code) = match kind {
        ErrorKind::BadRequest => (StatusCode::BAD_REQUEST, "BAD_REQUEST"),
        ErrorKind::Unauthorized => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
        ErrorKind::Forbidden => (StatusCode::FORBIDDEN, "FORBIDDEN"),
        ErrorKind::NotFound => (StatusCode::NOT_FOUND, "NOT_FOUND"),
        ErrorKind::Conflict => (StatusCode::CONFLICT, "CONFLICT"),
        ErrorKind::Unprocessable => (StatusCode::UNPROCESSABLE_ENTITY, "UNPROCESSABLE_ENTITY"),
        ErrorKind::TooManyRequests => (StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_REQUESTS"),
        ErrorKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE"),
        ErrorKind::Internal | ErrorKind::Panicked => (StatusCode::INTERNAL_SERVER_ERROR, "PLUGIN_ERROR"),
    };
    let code_ok = !code.is_empty() && code.len() <= 64 && code.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    let code = if code_ok { code } else { default_code.to_owned() };
    let message: String = message.chars().take(2000).collect();
    ApiError::new(status, code, message)
}

/// What the sandbox tier alone can fail with.
fn sandbox_error(err: SandboxError, function: &str, module: &str) -> ApiError {
    match err {
        SandboxError::Plugin { kind, code, message } => plugin_error(kind, code, message),
        SandboxError::Panicked(message) => ApiError::of_call(CallError::Panicked(message), function, module),
        SandboxError::Timeout(after) => ApiError::of_call(CallError::Timeout(after), function, module),
        SandboxError::Crashed(status) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "WORKER_CRASHED",
            format!("function '{function}' of module '{module}' crashed its sandbox worker ({status}); a new worker takes the next call"),
        ),
        SandboxError::OutOfMemory(mb) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "MEMORY_LIMIT_EXCEEDED",
            format!("function '{function}' of module '{module}' ran out of its {mb} MiB memory limit; its worker was replaced"),
        ),
        SandboxError::Quarantined(why) => {
            let mut err = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "MODULE_QUARANTINED",
                format!(
                    "module '{module}' is quarantined: {why}. It is released when its file changes, or by the admin: POST /rest/admin/plugins/{module}/release"
                ),
            );
            err.retry_after = Some(60);
            err
        }
        SandboxError::Busy(max) => {
            let mut err = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TOO_MANY_REQUESTS",
                format!("module '{module}' already runs {max} calls at once, its limit; retry shortly"),
            );
            err.retry_after = Some(1);
            err
        }
        SandboxError::ResponseTooLarge(size) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "RESPONSE_TOO_LARGE",
            format!(
                "function '{function}' of module '{module}' returned a response of about {size} bytes, over its limit (MAX_RESPONSE_BYTES)"
            ),
        ),
        SandboxError::WorkerFailed(cause) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "WORKER_FAILED",
            format!("the sandbox worker of module '{module}' failed; see the server log under this error_id"),
        )
        .with_internal(cause),
    }
}
