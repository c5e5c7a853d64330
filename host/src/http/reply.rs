//! A plugin's reply turned into the response sent for it, for synchronous calls and jobs alike.

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, StatusCode};
use warp::reply::Response;

use super::error::ApiError;
use crate::registry::Endpoint;

/// Headers the host manages itself; a plugin's values for them are dropped.
const MANAGED_HEADERS: [&str; 7] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "x-request-id",
    "content-type",
];

/// A plugin's reply as the HTTP response sent for it: the status and content type checked,
/// the size bounded, a tenant's held bytes counted, and the headers it may set.
pub(super) fn to_response(reply: plughost_runtime::call::PluginReply, endpoint: &Endpoint, max_bytes: usize) -> Result<Response, ApiError> {
    let bad = |what: String| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "PLUGIN_BAD_RESPONSE",
            format!("function '{}' returned {what}", endpoint.function().route_name()),
        )
    };
    let status = StatusCode::from_u16(reply.status)
        .ok()
        .filter(|s| (200..=599).contains(&s.as_u16()))
        .ok_or_else(|| bad(format!("the invalid status {}", reply.status)))?;
    if reply.body.len() > max_bytes {
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "RESPONSE_TOO_LARGE",
            format!(
                "function '{}' returned {} bytes, over the {max_bytes}-byte limit (MAX_RESPONSE_BYTES)",
                endpoint.function().route_name(),
                reply.body.len()
            ),
        ));
    }
    let content_type = HeaderValue::from_str(&reply.content_type).map_err(|_| bad("an invalid Content-Type".to_owned()))?;
    // A tenant's responses held for slow clients are bounded per tenant.
    let body: Bytes = match (&endpoint.module.owner, endpoint.module.sandbox()) {
        (Some(tenant), Some(pool)) => pool.hold_response(tenant, reply.body).map_err(|budget| {
            let mut err = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "TENANT_BUFFER_FULL",
                format!("this tenant's responses waiting for their clients already take {budget} bytes (TENANT_MAX_BUFFERED_MB); try again shortly"),
            );
            err.retry_after = Some(1);
            err
        })?,
        _ => reply.body.into(),
    };
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    let out = response.headers_mut();
    out.insert(header::CONTENT_TYPE, content_type);
    for (name, value) in reply.headers {
        let lower = name.to_ascii_lowercase();
        match (HeaderName::from_bytes(lower.as_bytes()), HeaderValue::from_str(&value)) {
            (Ok(name), Ok(value)) if !MANAGED_HEADERS.contains(&lower.as_str()) => {
                out.append(name, value);
            }
            _ => {
                tracing::warn!(module = %endpoint.module.spec.name, header = %name, "dropped a response header the plugin may not set or that is malformed")
            }
        }
    }
    Ok(response)
}
