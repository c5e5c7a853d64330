//! `/ping`, `/version` and `/health`.

use http::StatusCode;
use serde_json::{json, Value};
use warp::reply::Response;

use super::error::{json_response, ApiError};
use crate::{plugins::FileState, AppState, Role};

pub(crate) fn ping() -> Value {
    json!({})
}

pub(crate) fn version(stage: Option<&str>) -> Value {
    json!({
        "name": "plughost",
        "stage": stage,
        "version": env!("CARGO_PKG_VERSION"),
        "abi_version": plugin_api::ABI_VERSION,
        "plugin_api": plughost_runtime::library::plugin_api_version(),
    })
}

/// `/health`: 503 when the identity store is unreachable. Anyone learns the status and the
/// version; the detail (files, tenants, limits, PIDs, layers) is the admin's.
pub(crate) async fn health(state: &AppState, headers: &http::HeaderMap) -> Response {
    let store = state.auth.tenancy().store.clone();
    let reachable = tokio::time::timeout(std::time::Duration::from_secs(3), store.ping()).await;
    let (status, store_json) = match reachable {
        Ok(Ok(())) => (StatusCode::OK, json!({"kind": store.kind(), "reachable": true})),
        Ok(Err(err)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"kind": store.kind(), "reachable": false, "error": err.to_string()}),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"kind": store.kind(), "reachable": false, "error": "no answer within 3 s"}),
        ),
    };
    let verdict = if status == StatusCode::OK { "ok" } else { "degraded" };
    // Credentials that do not check out are an anonymous look, not an error: probes send none.
    let admin = matches!(
        super::auth::caller(state, headers).await,
        Ok(Some(plughost_tenancy::auth::Caller::Admin { .. }))
    );
    if !admin {
        return json_response(status, &json!({"status": verdict, "version": env!("CARGO_PKG_VERSION")}));
    }
    let mut body = health_body(state);
    body["status"] = json!(verdict);
    body["version"] = json!(env!("CARGO_PKG_VERSION"));
    body["store"] = store_json;
    json_response(status, &body)
}

fn health_body(state: &AppState) -> Value {
    let files = state.plugins.status();
    let count = |wanted: FileState| files.iter().filter(|f| f.state == wanted).count();
    json!({
        "status": "ok",
        "process": process(state),
        "plugins": {
            "loaded": count(FileState::Loaded),
            "failed": count(FileState::Failed),
            "removed": count(FileState::Removed),
            "unrouted": count(FileState::Unrouted),
            "images": images(state),
            "files": files,
        },
        "sandbox": {
            "admin_isolation": if state.http.admin_isolation { "process" } else { "inprocess" },
            "layers": state.plugins.sandbox().and_then(|sandbox| sandbox.layers()),
        },
        "jobs": state.jobs.status(),
    })
}

/// `GET /metrics`, for the admin.
pub(crate) async fn metrics(state: &AppState, headers: &http::HeaderMap) -> Result<Response, ApiError> {
    if !state.http.metrics {
        return Err(ApiError::not_found("METRICS_OFF", "metrics are off on this server (METRICS=off)"));
    }
    let caller = super::auth::caller(state, headers).await?;
    super::auth::require(plugin_api::Visibility::Admin, caller.as_ref(), "/metrics")?;
    Ok(metrics_response(state).await)
}

/// The metrics of this process, with the plugin and job gauges read now.
pub(crate) async fn metrics_response(state: &AppState) -> Response {
    let metrics = &crate::metrics::METRICS;
    // The store's job counts, if it answers soon; the last ones otherwise.
    let now = crate::jobs::now_ms();
    if let Ok(Ok(counts)) = tokio::time::timeout(std::time::Duration::from_secs(2), state.jobs.store().job_counts(now)).await {
        for (job_state, count) in counts.by_state {
            let labels = crate::metrics::StateLabels { state: job_state.as_str() };
            metrics.jobs.get_or_create(&labels).set(count as i64);
        }
        metrics.jobs_oldest_due.set(counts.oldest_due_ms as f64 / 1000.0);
    }
    let stats = state.plugins.images();
    metrics.plugins_loaded.set(state.plugins.registry().modules().len() as i64);
    metrics.images_mapped.set(stats.mapped as i64);
    metrics.images_leaked.set(stats.leaked as i64);
    metrics.images_leaked_bytes.set(stats.leaked_bytes as i64);
    let mut response = Response::new(metrics.render().into());
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    response
}

/// `GET /openapi.json`: what this caller may call.
pub(crate) async fn openapi(state: &AppState, headers: &http::HeaderMap) -> Result<Response, ApiError> {
    let caller = super::auth::caller(state, headers).await?;
    let context = super::openapi::Context {
        caller: caller.as_ref(),
        url_params: &state.http.url_params,
        metrics: state.http.metrics,
        stage: state.http.stage.as_deref(),
    };
    let document = super::openapi::document(&state.plugins.registry(), &context);
    let mut response = json_response(StatusCode::OK, &document);
    response.extensions_mut().insert(super::RouteInfo {
        route: super::Route::OpenApi.template(),
        endpoint: None,
        caller: caller.as_ref().map_or("none", |c| c.kind()),
    });
    Ok(response)
}

/// `GET /rest/admin/plugins`: every file seen and the leak accounting.
pub(crate) fn admin_plugins(state: &AppState) -> Value {
    json!({
        "plugins": state.plugins.status(),
        "images": images(state),
        "load_rounds": state.plugins.rounds(),
    })
}

fn images(state: &AppState) -> Value {
    let stats = state.plugins.images();
    json!({
        "mapped": stats.mapped,
        "mapped_bytes": stats.mapped_bytes,
        "leaked": stats.leaked,
        "leaked_bytes": stats.leaked_bytes,
        "leak_budget_bytes": state.http.leak_budget_bytes,
    })
}

fn process(state: &AppState) -> Value {
    json!({
        "pid": std::process::id(),
        "supervisor_pid": match state.role {
            Role::Worker => rustix::process::getppid().map(|p| p.as_raw_nonzero().get()),
            Role::Standalone => None,
        },
        "started_at": plughost_tenancy::clock::timestamp(state.started_at),
    })
}
