//! `/rest/admin/…`: for the admin only. Plugin status, tenants, and the audit log.

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use plugin_api::Visibility;
use serde_json::{json, Value};
use warp::reply::Response;

use super::{
    auth, builtins,
    error::{json_response, ApiError},
    path,
};
use crate::AppState;

/// Serves one admin request; `tail` is the path after `/rest/admin/`. Publishing takes large
/// bodies: its credentials are checked before its body is read.
pub(super) async fn serve(
    state: &AppState,
    tail: &str,
    method: &Method,
    query: &str,
    headers: &HeaderMap,
    body: super::Body,
) -> Result<Response, ApiError> {
    let segments = path::segments(tail).unwrap_or_default();
    if let Some((tenant, name)) = super::publish::admin_target(method, &segments) {
        return super::publish::admin(state, tenant, name, method, headers, body).await;
    }
    let body = if method == Method::POST || method == Method::PUT {
        super::small_body(state, headers, body).await?
    } else {
        Bytes::new()
    };
    handle(state, tail, method, query, headers, body).await
}

async fn handle(
    state: &AppState,
    tail: &str,
    method: &Method,
    query: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let caller = auth::caller(state, headers).await?;
    auth::require(Visibility::Admin, caller.as_ref(), "/rest/admin/")?;
    let actor = caller.as_ref().map(|c| c.uuid().to_owned()).unwrap_or_default();
    let segments = path::segments(tail)?;
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let tenancy = state.auth.tenancy();
    let method = if method == Method::HEAD { &Method::GET } else { method };
    let changes_tenants = method == Method::POST || method == Method::DELETE || method == Method::PUT;
    if segments.first() == Some(&"jobs") {
        return super::jobs::admin(state, &segments, method, query).await;
    }
    if let (Some(&"schedules"), Some(admin)) = (segments.first(), caller.as_ref()) {
        return super::schedules::serve(state, admin, "/rest/admin/schedules", &segments[1..], method, body).await;
    }
    let result = route(state, tail, method, &segments, &actor, body).await;
    if changes_tenants && segments.first() == Some(&"tenants") && result.is_ok() {
        // The sandbox learns at once, so that a tenant's modules load or unload on the next rescan.
        if let Some(sandbox) = state.plugins.sandbox() {
            crate::plugins::refresh_tenants(sandbox, tenancy, false).await;
        }
    }
    result
}

async fn route(state: &AppState, tail: &str, method: &Method, segments: &[&str], actor: &str, body: Bytes) -> Result<Response, ApiError> {
    let tenancy = state.auth.tenancy();
    let ok = |value: Value| Ok(json_response(StatusCode::OK, &value));
    match (method, segments) {
        (&Method::GET, ["plugins"]) => ok(builtins::admin_plugins(state)),
        (&Method::GET, ["published"]) => {
            let plugins: Vec<Value> = tenancy.store.published().await?.iter().map(|p| p.view()).collect();
            ok(json!({ "plugins": plugins }))
        }
        (&Method::POST, ["plugins", module, "release"]) => {
            let registry = state.plugins.registry();
            let found = registry.module(module).ok_or_else(|| {
                ApiError::not_found("MODULE_NOT_FOUND", format!("no loaded module is named '{module}'; GET /rest/admin/plugins lists them"))
            })?;
            let pool = found.sandbox().ok_or_else(|| {
                ApiError::new(
                    StatusCode::CONFLICT,
                    "NOT_SANDBOXED",
                    format!("module '{module}' runs in-process: only sandboxed modules are quarantined"),
                )
            })?;
            let released = pool.release();
            tracing::info!(module = %found.spec.name, released, "quarantine released by the admin");
            ok(json!({ "module": found.spec.name, "was_quarantined": released }))
        }
        (&Method::GET, ["audit"]) => {
            let entries = tenancy.store.audit_log(200).await?;
            ok(json!({ "entries": entries }))
        }
        (&Method::GET, ["tenants"]) => ok(json!({ "tenants": tenancy.list().await? })),
        (&Method::POST, ["tenants"]) => {
            let parsed: Value = serde_json::from_slice(&body).map_err(|err| ApiError::bad_request("INVALID_JSON", format!("send {{\"name\": \"…\"}} ({err})")))?;
            let name = parsed["name"].as_str().ok_or_else(|| ApiError::bad_request("INVALID_REQUEST", "send {\"name\": \"…\"}"))?;
            let enrolment = tenancy.add(name, actor).await?;
            Ok(json_response(StatusCode::CREATED, &json!(enrolment)))
        }
        (&Method::GET, ["tenants", uuid]) => ok(json!(tenancy.show(uuid).await?)),
        (&Method::DELETE, ["tenants", uuid]) => {
            tenancy.remove(uuid, actor).await?;
            ok(json!({ "removed": uuid }))
        }
        (&Method::POST, ["tenants", uuid, "disable"]) => ok(json!(tenancy.set_active(uuid, false, actor).await?)),
        (&Method::POST, ["tenants", uuid, "enable"]) => ok(json!(tenancy.set_active(uuid, true, actor).await?)),
        (&Method::PUT, ["tenants", uuid, "limits"]) => {
            let limits: Value = serde_json::from_slice(&body).map_err(|err| {
                ApiError::bad_request("INVALID_JSON", format!("send a JSON object such as {{\"memory_mb\": 256}} ({err})"))
            })?;
            ok(json!(tenancy.set_limits(uuid, limits, actor).await?))
        }
        (&Method::POST, ["tenants", uuid, "rotate-totp"]) => ok(json!(tenancy.rotate(uuid, actor).await?)),
        (_, ["plugins"] | ["audit"] | ["published"]) => Err(ApiError::method_not_allowed(method, &format!("/rest/admin/{tail}"), "GET, HEAD".to_owned())),
        (_, ["tenants"]) => Err(ApiError::method_not_allowed(method, "/rest/admin/tenants", "GET, HEAD, POST".to_owned())),
        (_, ["tenants", _]) => Err(ApiError::method_not_allowed(method, &format!("/rest/admin/{tail}"), "GET, HEAD, DELETE".to_owned())),
        (_, ["plugins", _, "release"]) => Err(ApiError::method_not_allowed(method, &format!("/rest/admin/{tail}"), "POST".to_owned())),
        (_, ["tenants", _, "limits"]) => Err(ApiError::method_not_allowed(method, &format!("/rest/admin/{tail}"), "PUT".to_owned())),
        (_, ["tenants", _, "disable" | "enable" | "rotate-totp"]) => {
            Err(ApiError::method_not_allowed(method, &format!("/rest/admin/{tail}"), "POST".to_owned()))
        }
        _ => Err(ApiError::not_found(
            "ROUTE_NOT_FOUND",
            format!(
                "no admin route {method} /rest/admin/{tail}: use GET plugins, PUT|DELETE plugins/<name>, POST plugins/<module>/release, GET published, GET audit, GET|POST tenants, GET|DELETE tenants/<uuid>, POST tenants/<uuid>/disable|enable|rotate-totp, PUT tenants/<uuid>/limits"
            ),
        )),
    }
}
