//! The URL space on one screen. [`route`] says which route a path is, [`serve`] answers it: the
//! services fast path is its first arm, and the route's [`Route::template`] labels the access log
//! and the metrics.

mod admin;
mod auth;
pub(crate) mod builtins;
pub(crate) mod cors;
mod dir;
pub(crate) mod error;
pub(crate) mod jobs;
pub(crate) mod names;
mod openapi;
pub(crate) mod path;
mod publish;
mod reply;
pub(crate) mod schedules;
pub(crate) mod services;

use std::sync::Arc;

use ::http::{request::Parts, Method, StatusCode};
use warp::reply::Response;

use crate::{registry::Endpoint, AppState};
use error::ApiError;

/// A request body as the connection delivers it.
pub(crate) type Body = http_body_util::BodyDataStream<hyper::body::Incoming>;

/// Every route the server answers. A `tail` is the raw path after the route's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route<'a> {
    /// `/rest/services/…`: a plugin function, or a `__dir__` listing.
    Services {
        tail: &'a str,
    },
    /// `/rest/admin/…`: plugins, publishing, tenants and the audit log, for the admin.
    Admin {
        tail: &'a str,
    },
    /// `/rest/tenant/…`: a tenant's own published plugins.
    Tenant {
        tail: &'a str,
    },
    /// `/rest/jobs/…`: asynchronous jobs, their state and results.
    Jobs {
        tail: &'a str,
    },
    /// `POST /rest/auth/token`: a UUID and a TOTP code exchanged for a token.
    Token,
    /// `/ping`, `/version`, `/health`: anyone's.
    Ping,
    Version,
    Health,
    /// `/metrics`: the admin's (or anyone's on `METRICS_BIND`).
    Metrics,
    /// `/openapi.json`: what the caller may call.
    OpenApi,
    /// Anything else.
    Unmatched,
}

/// The template of a call of a plugin function, once the services path resolved to one.
pub(crate) const CALL_TEMPLATE: &str = "/rest/services/{module}/{function}/";
/// The template of a module's or the server's function listing.
pub(crate) const DIR_TEMPLATE: &str = "/rest/services/__dir__/";

/// Which route `path` is. Segments match whole and raw (not percent-decoded); a built-in may end
/// in one `/`; a prefix route takes what follows it as its tail.
pub(crate) fn route(path: &str) -> Route<'_> {
    let rest = path.strip_prefix('/').unwrap_or(path);
    if let Some(tail) = under(rest, "rest/services") {
        // Leading slashes are dropped, as `/rest/services//v1/…` always was.
        return Route::Services {
            tail: tail.trim_start_matches('/'),
        };
    }
    if let Some(tail) = under(rest, "rest/admin") {
        return Route::Admin { tail };
    }
    if let Some(tail) = under(rest, "rest/tenant") {
        return Route::Tenant { tail };
    }
    if let Some(tail) = under(rest, "rest/jobs") {
        return Route::Jobs { tail };
    }
    match rest.strip_suffix('/').unwrap_or(rest) {
        "rest/auth/token" => Route::Token,
        "ping" => Route::Ping,
        "version" => Route::Version,
        "health" => Route::Health,
        "metrics" => Route::Metrics,
        "openapi.json" => Route::OpenApi,
        _ => Route::Unmatched,
    }
}

/// What follows `prefix` in `rest` when `prefix` ends at a segment's end.
fn under<'a>(rest: &'a str, prefix: &str) -> Option<&'a str> {
    match rest.strip_prefix(prefix)? {
        "" => Some(""),
        after => after.strip_prefix('/'),
    }
}

impl Route<'_> {
    /// The label of the access log and the metrics: bounded, never the raw path. A services
    /// call that resolves is labelled [`CALL_TEMPLATE`] or [`DIR_TEMPLATE`] instead.
    pub(crate) fn template(&self) -> &'static str {
        match self {
            Route::Services { .. } => "/rest/services/…",
            Route::Admin { .. } => "/rest/admin/…",
            Route::Tenant { .. } => "/rest/tenant/…",
            Route::Jobs { .. } => "/rest/jobs/…",
            Route::Token => "/rest/auth/token",
            Route::Ping => "/ping",
            Route::Version => "/version",
            Route::Health => "/health",
            Route::Metrics => "/metrics",
            Route::OpenApi => "/openapi.json",
            Route::Unmatched => "unmatched",
        }
    }

    /// The methods of a route that answers the same ones to everybody (the built-ins and the
    /// token exchange), for a CORS preflight and the `Allow` of a 405.
    pub(crate) fn fixed_methods(&self) -> Option<&'static str> {
        match self {
            Route::Ping | Route::Version | Route::Health | Route::Metrics | Route::OpenApi => Some("GET, HEAD"),
            Route::Token => Some("POST"),
            _ => None,
        }
    }
}

/// What the router learned about a request, for the access log and the metrics; carried in the
/// response's extensions and taken out before the response is sent.
#[derive(Clone)]
pub(crate) struct RouteInfo {
    /// The route template (a bounded label, never the raw path).
    pub route: &'static str,
    /// The function called, once the path resolved to one.
    pub endpoint: Option<Endpoint>,
    /// `admin`, `tenant`, or `none` when no credentials were checked.
    pub caller: &'static str,
}

/// Answers one request on `route`.
pub(crate) async fn serve(state: &Arc<AppState>, route: Route<'_>, parts: &Parts, body: Body) -> Response {
    match route {
        Route::Services { tail } => {
            let query = parts.uri.query().unwrap_or("");
            services::handle(state, tail, &parts.method, query, &parts.headers, body).await
        }
        // Off the hot path, and kept out of its future's size.
        route => Box::pin(serve_other(state, route, parts, body)).await,
    }
}

async fn serve_other(state: &AppState, route: Route<'_>, parts: &Parts, body: Body) -> Response {
    let (method, headers) = (&parts.method, &parts.headers);
    if let Some(allow) = route.fixed_methods() {
        let asked = if method == Method::HEAD { &Method::GET } else { method };
        if !allow.split(", ").any(|m| m == asked.as_str()) {
            return ApiError::method_not_allowed(method, route.template(), allow.to_owned()).into_response();
        }
    }
    let answer = match route {
        Route::Ping => Ok(error::json_response(StatusCode::OK, &builtins::ping())),
        Route::Version => Ok(error::json_response(StatusCode::OK, &builtins::version(state.http.stage.as_deref()))),
        Route::Health => Ok(builtins::health(state, headers).await),
        Route::Metrics => builtins::metrics(state, headers).await.map(|r| as_caller(r, route, "admin")),
        Route::OpenApi => builtins::openapi(state, headers).await,
        Route::Token => match small_body(state, headers, body).await {
            Ok(body) => auth::token(state, &body).await,
            Err(err) => Err(err),
        },
        Route::Admin { tail } => admin::serve(state, tail, method, parts.uri.query().unwrap_or(""), headers, body)
            .await
            .map(|r| as_caller(r, route, "admin")),
        Route::Jobs { tail } => jobs::serve(state, tail, method, parts.uri.query().unwrap_or(""), headers).await,
        Route::Tenant { tail } if schedules::is_schedules(tail) => schedules::tenant(state, tail, method, headers, body)
            .await
            .map(|r| as_caller(r, route, "tenant")),
        Route::Tenant { tail } => publish::tenant(state, tail, method, headers, body).await.map(|r| as_caller(r, route, "tenant")),
        Route::Services { .. } => unreachable!("served by `serve`"),
        Route::Unmatched => Err(ApiError::not_found(
            "ROUTE_NOT_FOUND",
            "no such route: functions live under /rest/services/ (list them at /rest/services/__dir__/); built-ins are /ping, /version and /health",
        )),
    };
    answer.unwrap_or_else(ApiError::into_response)
}

/// The body of a route that takes small JSON documents: 64 KiB at most.
pub(crate) async fn small_body(state: &AppState, headers: &::http::HeaderMap, body: Body) -> Result<bytes::Bytes, ApiError> {
    services::read_body(
        headers,
        body,
        64 * 1024,
        "64 KiB for this route",
        state.http.limits.body_read_timeout,
    )
    .await
}

/// Marks a response of a route only `caller` (a kind of caller) may use: it succeeded, so that
/// caller called.
fn as_caller(mut response: Response, route: Route<'_>, caller: &'static str) -> Response {
    response.extensions_mut().insert(RouteInfo {
        route: route.template(),
        endpoint: None,
        caller,
    });
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_paths_take_their_tail() {
        assert_eq!(route("/rest/services/v1/echo/a/"), Route::Services { tail: "v1/echo/a/" });
        assert_eq!(route("/rest/services/"), Route::Services { tail: "" });
        assert_eq!(route("/rest/services"), Route::Services { tail: "" });
        assert_eq!(route("/rest/services//v1/echo"), Route::Services { tail: "v1/echo" });
        assert_eq!(route("/rest/servicesX/a"), Route::Unmatched);
        assert_eq!(route("/rest/services/__dir__/").template(), "/rest/services/…");
    }

    #[test]
    fn prefix_routes_keep_their_raw_tail() {
        assert_eq!(route("/rest/admin/plugins"), Route::Admin { tail: "plugins" });
        assert_eq!(route("/rest/admin"), Route::Admin { tail: "" });
        assert_eq!(route("/rest/admin/"), Route::Admin { tail: "" });
        assert_eq!(route("/rest/admin//plugins"), Route::Admin { tail: "/plugins" });
        assert_eq!(route("/rest/tenant/plugins/a%20b"), Route::Tenant { tail: "plugins/a%20b" });
        assert_eq!(route("/rest/adminx"), Route::Unmatched);
        assert_eq!(route("/rest"), Route::Unmatched);
    }

    #[test]
    fn built_ins_match_whole_with_one_optional_slash() {
        for (path, expected) in [
            ("/ping", Route::Ping),
            ("/ping/", Route::Ping),
            ("/version", Route::Version),
            ("/health/", Route::Health),
            ("/metrics", Route::Metrics),
            ("/openapi.json", Route::OpenApi),
            ("/rest/auth/token", Route::Token),
            ("/rest/auth/token/", Route::Token),
        ] {
            assert_eq!(route(path), expected, "{path}");
            assert_eq!(route(path).template(), path.trim_end_matches('/'), "{path}");
        }
        for path in [
            "/",
            "",
            "/ping//",
            "//ping",
            "/p%69ng",
            "/pingx",
            "/rest/auth",
            "/rest/auth/token/x",
            "*",
        ] {
            assert_eq!(route(path), Route::Unmatched, "{path}");
            assert_eq!(route(path).template(), "unmatched");
        }
    }

    #[test]
    fn fixed_methods_are_those_of_the_built_ins() {
        assert_eq!(Route::Ping.fixed_methods(), Some("GET, HEAD"));
        assert_eq!(Route::Token.fixed_methods(), Some("POST"));
        assert_eq!(Route::Admin { tail: "" }.fixed_methods(), None);
        assert_eq!(Route::Services { tail: "" }.fixed_methods(), None);
    }
}
