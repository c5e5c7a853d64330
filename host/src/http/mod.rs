//! The URL space on one screen. Each route is a filter; one `recover` answers what matched none.

mod builtins;
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
        .map(|m| builtins::answer(&m, "/version", builtins::version));
    let health = warp::path!("health")
        .and(warp::method())
        .and(with(&state))
        .map(|m, s: Arc<AppState>| builtins::answer(&m, "/health", || builtins::health(&s)));
    // Open until authentication lands (issue 4); it shows file names and hashes, no secrets.
    let admin_plugins = warp::path!("rest" / "admin" / "plugins")
        .and(warp::method())
        .and(with(&state))
        .map(|m, s: Arc<AppState>| builtins::answer(&m, "/rest/admin/plugins", || builtins::admin_plugins(&s)));
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
        .or(admin_plugins)
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
