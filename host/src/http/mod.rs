//! The URL space on one screen. Each route is a filter; one `recover` answers what matched none.

mod admin;
mod auth;
mod builtins;
pub mod cors;
mod dir;
pub mod error;
mod path;
mod services;

use std::{convert::Infallible, sync::Arc};

use warp::{filters::BoxedFilter, reply::Response, Filter};

use crate::AppState;

/// All routes.
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
        .and(with(&state))
        .then(|m: http::Method, s: Arc<AppState>| async move {
            if m != http::Method::GET && m != http::Method::HEAD {
                return error::ApiError::method_not_allowed(&m, "/health", "GET, HEAD".to_owned()).into_response();
            }
            builtins::health(&s).await
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
                    let body = services::read_body(&headers, body, 64 * 1024).await?;
                    auth::token(&state, &body).await
                };
                result.await.unwrap_or_else(error::ApiError::into_response)
            },
        );
    let admin = warp::path("rest")
        .and(warp::path("admin"))
        .and(warp::path::tail())
        .and(warp::method())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .and(with(&state))
        .then(
            |tail: warp::path::Tail, method: http::Method, headers: http::HeaderMap, body, state: Arc<AppState>| async move {
                let result = async {
                    let body = if method == http::Method::POST {
                        services::read_body(&headers, body, 64 * 1024).await?
                    } else {
                        bytes::Bytes::new()
                    };
                    admin::handle(&state, tail.as_str(), &method, &headers, body).await
                };
                result.await.unwrap_or_else(error::ApiError::into_response)
            },
        );
    let services = warp::path("rest")
        .and(warp::path("services"))
        .and(warp::path::tail())
        .and(warp::method())
        .and(raw_query())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .and(with(&state))
        .then(|tail: warp::path::Tail, method, query, headers, body, state| {
            services::handle(state, tail.as_str().to_owned(), method, query, headers, body)
        });
    ping.or(version)
        .unify()
        .or(health)
        .unify()
        .or(token)
        .unify()
        .or(admin)
        .unify()
        .or(services)
        .unify()
        .recover(error::recover)
        .unify()
        .boxed()
}

fn with(state: &Arc<AppState>) -> impl Filter<Extract = (Arc<AppState>,), Error = Infallible> + Clone {
    let state = state.clone();
    warp::any().map(move || state.clone())
}

/// The raw query string, or an empty one (`query::raw` rejects requests without a query).
fn raw_query() -> impl Filter<Extract = (String,), Error = Infallible> + Clone {
    warp::query::raw().or(warp::any().map(String::new)).unify()
}
