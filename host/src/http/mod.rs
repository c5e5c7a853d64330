//! The URL space on one screen. Each route is a filter; one `recover` answers what matched none.

mod admin;
mod auth;
pub mod builtins;
pub mod cors;
mod dir;
pub mod error;
pub mod names;
mod openapi;
pub(crate) mod path;
mod publish;
pub mod services;

use std::{convert::Infallible, sync::Arc};

use warp::{filters::BoxedFilter, reply::Response, Filter};

use crate::{registry::Endpoint, AppState};

/// What the router learned about a request, for the access log and the metrics; carried in the
/// response's extensions and taken out before the response is sent.
#[derive(Clone)]
pub struct RouteInfo {
    /// The route template (a bounded label, never the raw path).
    pub route: &'static str,
    /// The function called, once the path resolved to one.
    pub endpoint: Option<Endpoint>,
    /// `admin`, `tenant`, or `none` when no credentials were checked.
    pub caller: &'static str,
}

/// All routes but `/rest/services/…`, which the server hands to [`services::handle`] directly
/// (the hot path skips the walk down these filters).
pub fn routes(state: Arc<AppState>) -> BoxedFilter<(Response,)> {
    let ping = warp::path!("ping")
        .and(warp::method())
        .map(|m| builtins::answer(&m, "/ping", builtins::ping));
    let version = warp::path!("version")
        .and(warp::method())
        .and(with(&state))
        .map(|m, s: Arc<AppState>| builtins::answer(&m, "/version", || builtins::version(s.config.stage.as_deref())));
    let health = warp::path!("health")
        .and(warp::method())
        .and(warp::header::headers_cloned())
        .and(with(&state))
        .then(|m: http::Method, headers: http::HeaderMap, s: Arc<AppState>| async move {
            if m != http::Method::GET && m != http::Method::HEAD {
                return error::ApiError::method_not_allowed(&m, "/health", "GET, HEAD".to_owned()).into_response();
            }
            builtins::health(&s, &headers).await
        });
    let metrics = warp::path!("metrics")
        .and(warp::method())
        .and(warp::header::headers_cloned())
        .and(with(&state))
        .then(|m: http::Method, headers: http::HeaderMap, s: Arc<AppState>| async move {
            let response = builtins::metrics(&s, &m, &headers).await;
            as_admin(response, "/metrics")
        });
    let openapi = warp::path!("openapi.json")
        .and(warp::method())
        .and(warp::header::headers_cloned())
        .and(with(&state))
        .then(|m: http::Method, headers: http::HeaderMap, s: Arc<AppState>| async move {
            builtins::openapi(&s, &m, &headers)
                .await
                .unwrap_or_else(error::ApiError::into_response)
        });
    let token = warp::path!("rest" / "auth" / "token")
        .and(warp::method())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .and(with(&state))
        .then(
            |method: http::Method, headers: http::HeaderMap, body, state: Arc<AppState>| async move {
                if method != http::Method::POST {
                    return error::ApiError::method_not_allowed(&method, "/rest/auth/token", "POST".to_owned()).into_response();
                }
                let result = async {
                    let body =
                        services::read_body(&headers, body, 64 * 1024, "64 KiB for this route", state.config.body_read_timeout).await?;
                    auth::token(&state, &body).await
                };
                result.await.unwrap_or_else(error::ApiError::into_response)
            },
        );
    let admin = streamed("admin", &state).then(
        |tail: warp::path::Tail, method: http::Method, headers: http::HeaderMap, body, state: Arc<AppState>| async move {
            // Publishing takes large bodies: credentials first, then the body.
            let segments = path::segments(tail.as_str()).unwrap_or_default();
            if let Some((tenant, name)) = publish::admin_target(&method, &segments) {
                let result = publish::admin(&state, tenant, name, &method, &headers, body).await;
                return as_admin(result, "/rest/admin/…");
            }
            let result = async {
                let body = if method == http::Method::POST || method == http::Method::PUT {
                    services::read_body(&headers, body, 64 * 1024, "64 KiB for this route", state.config.body_read_timeout).await?
                } else {
                    bytes::Bytes::new()
                };
                admin::handle(&state, tail.as_str(), &method, &headers, body).await
            };
            as_admin(result.await, "/rest/admin/…")
        },
    );
    let tenant = streamed("tenant", &state).then(
        |tail: warp::path::Tail, method: http::Method, headers: http::HeaderMap, body, state: Arc<AppState>| async move {
            let result = publish::tenant(&state, tail.as_str(), &method, &headers, body).await;
            as_caller(result, "/rest/tenant/…", "tenant")
        },
    );
    ping.or(version)
        .unify()
        .or(health)
        .unify()
        .or(metrics)
        .unify()
        .or(openapi)
        .unify()
        .or(token)
        .unify()
        .or(admin)
        .unify()
        .or(tenant)
        .unify()
        .recover(error::recover)
        .unify()
        .boxed()
}

/// A response of an admin-only route: a success means the admin called.
fn as_admin(result: Result<Response, error::ApiError>, route: &'static str) -> Response {
    as_caller(result, route, "admin")
}

/// A response of a route only `caller` (a kind of caller) may use: a success means it called.
fn as_caller(result: Result<Response, error::ApiError>, route: &'static str, caller: &'static str) -> Response {
    match result {
        Ok(mut response) => {
            response.extensions_mut().insert(RouteInfo {
                route,
                endpoint: None,
                caller,
            });
            response
        }
        Err(err) => err.into_response(),
    }
}

/// `/rest/<segment>/…` with everything a handler that reads its body late needs: the tail, the
/// method, the headers, the body as a stream, and the state.
fn streamed(
    segment: &'static str,
    state: &Arc<AppState>,
) -> impl Filter<
    Extract = (
        warp::path::Tail,
        http::Method,
        http::HeaderMap,
        impl futures_util::Stream<Item = Result<impl bytes::Buf, warp::Error>>,
        Arc<AppState>,
    ),
    Error = warp::Rejection,
> + Clone {
    warp::path("rest")
        .and(warp::path(segment))
        .and(warp::path::tail())
        .and(warp::method())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .and(with(state))
}

fn with(state: &Arc<AppState>) -> impl Filter<Extract = (Arc<AppState>,), Error = Infallible> + Clone {
    let state = state.clone();
    warp::any().map(move || state.clone())
}
