//! Publishing plugins through the store. The admin: `PUT|DELETE /rest/admin/plugins/<name>` (the
//! admin's namespace) and `PUT|DELETE /rest/admin/tenants/<uuid>/plugins/<name>` (a tenant's);
//! `GET /rest/admin/published` lists everything. A tenant: `PUT|DELETE /rest/tenant/plugins/<name>`
//! and `GET /rest/tenant/plugins`, in its own namespace only. The body of a `PUT` is the `.so`.
//! Credentials are checked before the body is read.

use bytes::Buf;
use futures_util::Stream;
use http::{HeaderMap, Method, StatusCode};
use plugin_api::Visibility;
use serde_json::json;
use warp::reply::Response;

use super::{
    auth,
    error::{json_response, ApiError},
    services::read_body,
};
use crate::{publish, AppState};
use plughost_tenancy::auth::Caller;

/// The namespace and name an admin publishing route names, if `segments` is one.
pub(crate) fn admin_target<'a>(method: &Method, segments: &'a [String]) -> Option<(Option<&'a str>, &'a str)> {
    if method != Method::PUT && method != Method::DELETE {
        return None;
    }
    match segments {
        [plugins, name] if plugins == "plugins" => Some((None, name.as_str())),
        [tenants, uuid, plugins, name] if tenants == "tenants" && plugins == "plugins" => Some((Some(uuid.as_str()), name.as_str())),
        _ => None,
    }
}

/// `PUT` or `DELETE` of a plugin by the admin, in `tenant`'s namespace or the admin's.
pub(crate) async fn admin<S, B, E>(
    state: &AppState,
    tenant: Option<&str>,
    name: &str,
    method: &Method,
    headers: &HeaderMap,
    body: S,
) -> Result<Response, ApiError>
where
    S: Stream<Item = Result<B, E>>,
    B: Buf,
    E: std::fmt::Display,
{
    let caller = auth::caller(state, headers).await?;
    auth::require(Visibility::Admin, caller.as_ref(), "publishing into any namespace")?;
    let tenant = match tenant {
        Some(uuid) => Some(
            uuid::Uuid::parse_str(uuid)
                .map_err(|_| ApiError::bad_request("INVALID_TENANT", format!("'{uuid}' is not a tenant UUID")))?
                .hyphenated()
                .to_string(),
        ),
        None => None,
    };
    let uploader = caller.as_ref().map(|c| c.uuid().to_owned()).unwrap_or_default();
    change(state, tenant.as_deref(), name, method, headers, body, &uploader).await
}

/// `/rest/tenant/…`: a tenant's own published plugins.
pub(crate) async fn tenant<S, B, E>(
    state: &AppState,
    tail: &str,
    method: &Method,
    headers: &HeaderMap,
    body: S,
) -> Result<Response, ApiError>
where
    S: Stream<Item = Result<B, E>>,
    B: Buf,
    E: std::fmt::Display,
{
    let caller = auth::caller(state, headers).await?;
    auth::require(Visibility::Tenant, caller.as_ref(), "/rest/tenant/")?;
    let Some(Caller::Tenant { uuid }) = caller else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            "/rest/tenant/ is a tenant's own namespace; the admin publishes with PUT /rest/admin/plugins/<name> or /rest/admin/tenants/<uuid>/plugins/<name>",
        ));
    };
    let segments = super::path::segments(tail)?;
    match (method, segments.as_slice()) {
        (&Method::GET | &Method::HEAD, [plugins]) if plugins == "plugins" => {
            let mine: Vec<_> = state
                .auth
                .tenancy()
                .store
                .published()
                .await?
                .into_iter()
                .filter(|p| p.tenant.as_deref() == Some(uuid.as_str()))
                .map(|p| p.view())
                .collect();
            Ok(json_response(StatusCode::OK, &json!({ "plugins": mine })))
        }
        (&Method::PUT | &Method::DELETE, [plugins, name]) if plugins == "plugins" => {
            change(state, Some(&uuid), name, method, headers, body, &uuid).await
        }
        (_, [plugins]) if plugins == "plugins" => Err(ApiError::method_not_allowed(method, "/rest/tenant/plugins", "GET, HEAD".to_owned())),
        (_, [plugins, _]) if plugins == "plugins" => Err(ApiError::method_not_allowed(
            method,
            &format!("/rest/tenant/{tail}"),
            "PUT, DELETE".to_owned(),
        )),
        _ => Err(ApiError::not_found(
            "ROUTE_NOT_FOUND",
            format!("no tenant route {method} /rest/tenant/{tail}: use GET plugins, PUT|DELETE plugins/<name>"),
        )),
    }
}

/// The request header that carries a plugin's detached signature (the `.sig` file's text).
pub(crate) const SIGNATURE_HEADER: &str = "plugin-signature";

async fn change<S, B, E>(
    state: &AppState,
    tenant: Option<&str>,
    name: &str,
    method: &Method,
    headers: &HeaderMap,
    body: S,
    uploader: &str,
) -> Result<Response, ApiError>
where
    S: Stream<Item = Result<B, E>>,
    B: Buf,
    E: std::fmt::Display,
{
    let store = state.auth.tenancy().store.clone();
    publish::check_name(name)?;
    if method == Method::DELETE {
        publish::unpublish(store.as_ref(), tenant, name).await?;
        state.sync_now.notify_one();
        return Ok(json_response(StatusCode::OK, &json!({ "unpublished": name, "tenant": tenant })));
    }
    let Some(sandbox) = state.plugins.sandbox() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "SANDBOX_UNAVAILABLE",
            "plugins are checked in a sandbox worker before they are published, and this server has none",
        ));
    };
    let signature = match headers.get(SIGNATURE_HEADER).map(|value| value.to_str()) {
        None => None,
        Some(Ok(text)) => Some(text.to_owned()),
        Some(Err(_)) => {
            return Err(ApiError::bad_request(
                "INVALID_SIGNATURE_HEADER",
                format!("the {SIGNATURE_HEADER} header is not text: send the base64 content of the .sig file"),
            ))
        }
    };
    let bytes = read_body(
        headers,
        body,
        state.http.publishing.publish_max_bytes,
        "PUBLISH_MAX_BYTES",
        // A plugin of tens of MiB over a slow link takes longer than a call's body.
        state.http.limits.body_read_timeout * 10,
    )
    .await?;
    let upload = publish::Upload {
        tenant,
        name,
        bytes: bytes.to_vec(),
        signature,
        uploader,
    };
    let policy = publish::Policy {
        max_bytes: state.http.publishing.publish_max_bytes,
        trusted_keys: state.http.publishing.trusted_keys.as_deref(),
    };
    let plugin = publish::publish(store.as_ref(), sandbox, upload, &policy).await?;
    state.sync_now.notify_one();
    Ok(json_response(StatusCode::CREATED, &plugin.view()))
}
