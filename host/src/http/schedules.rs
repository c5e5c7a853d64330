//! Schedules over HTTP: `/rest/admin/schedules…` (the admin's, and every schedule listed) and
//! `/rest/tenant/schedules…` (a tenant's own), and the [`Ticker`] that makes a tick's call as
//! its owner's asynchronous call would be made.

use std::sync::Weak;

use bytes::Bytes;
use http::{Method, StatusCode};
use plughost_tenancy::{auth::Caller, schedules::ScheduleRecord};
use serde_json::{json, Value};
use warp::reply::Response;

use super::error::{json_response, ApiError};
use crate::{
    jobs::{
        self,
        draft::Draft,
        schedule::{Spec, NEVER},
        StoredCall, Ticker,
    },
    AppState,
};

/// Whether a path under `/rest/tenant/` is the tenant's schedules.
pub(crate) fn is_schedules(tail: &str) -> bool {
    tail.trim_start_matches('/').split('/').next() == Some("schedules")
}

/// `/rest/tenant/schedules…`: a tenant's own schedules.
pub(crate) async fn tenant(
    state: &AppState,
    tail: &str,
    method: &Method,
    headers: &http::HeaderMap,
    body: super::Body,
) -> Result<Response, ApiError> {
    let caller = super::auth::caller(state, headers).await?;
    super::auth::require(plugin_api::Visibility::Tenant, caller.as_ref(), "/rest/tenant/")?;
    let Some(tenant @ Caller::Tenant { .. }) = caller else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            "/rest/tenant/ is a tenant's own namespace; the admin's schedules are under /rest/admin/schedules",
        ));
    };
    let body = if method == Method::POST {
        super::small_body(state, headers, body).await?
    } else {
        Bytes::new()
    };
    let segments = super::path::segments(tail)?;
    let segments: Vec<&str> = segments.iter().skip(1).map(String::as_str).collect();
    serve(state, &tenant, "/rest/tenant/schedules", &segments, method, body).await
}

/// Serves `…/schedules/<segments>` for `caller`; `base` is the route's own path, for messages.
pub(crate) async fn serve(
    state: &AppState,
    caller: &Caller,
    base: &str,
    segments: &[&str],
    method: &Method,
    body: Bytes,
) -> Result<Response, ApiError> {
    let store = state.jobs.store();
    let get = method == Method::GET || method == Method::HEAD;
    let key = |name: &str| ScheduleRecord::key_of(caller.uuid(), name);
    match segments {
        [] if get => {
            // The admin sees every schedule; a tenant its own.
            let owner = (!caller.is_admin()).then(|| caller.uuid());
            let listed: Vec<Value> = store.schedules(owner).await?.iter().map(|s| view(s, caller)).collect();
            Ok(json_response(StatusCode::OK, &json!({ "schedules": listed })))
        }
        [] if method == Method::POST => create(state, caller, &body).await,
        [] => Err(ApiError::method_not_allowed(method, base, "GET, HEAD, POST".to_owned())),
        [name] if get => Ok(json_response(StatusCode::OK, &view(&found(state, &key(name)).await?, caller))),
        [name] if method == Method::DELETE => {
            let schedule = found(state, &key(name)).await?;
            store.remove_schedule(&schedule.key).await?;
            tracing::info!(schedule = %schedule.key, "schedule removed");
            Ok(json_response(StatusCode::OK, &view(&schedule, caller)))
        }
        [_] => Err(ApiError::method_not_allowed(
            method,
            &format!("{base}/<name>"),
            "GET, HEAD, DELETE".to_owned(),
        )),
        [name, action @ ("pause" | "resume")] if method == Method::POST => {
            let schedule = found(state, &key(name)).await?;
            let pause = *action == "pause";
            // Resumed from the next tick on: the ticks of the pause are not run.
            let next = (!pause)
                .then(|| Spec::parse(&schedule.cron, schedule.timezone.as_deref()).map_or(NEVER, |spec| spec.after(jobs::now_ms())));
            let Some(changed) = store.pause_schedule(&schedule.key, pause, next).await? else {
                return Err(not_found(name));
            };
            if !pause {
                state.jobs.schedules_changed();
            }
            tracing::info!(schedule = %schedule.key, "schedule {action}d");
            Ok(json_response(StatusCode::OK, &view(&changed, caller)))
        }
        [_, "pause" | "resume"] => Err(ApiError::method_not_allowed(
            method,
            &format!("{base}/<name>/{}", segments[1]),
            "POST".to_owned(),
        )),
        _ => Err(ApiError::not_found(
            "ROUTE_NOT_FOUND",
            format!("schedule routes: GET|POST {base}, GET|DELETE {base}/<name>, POST {base}/<name>/pause|resume"),
        )),
    }
}

async fn found(state: &AppState, key: &str) -> Result<ScheduleRecord, ApiError> {
    let name = key.split_once('/').map_or(key, |(_, name)| name);
    state.jobs.store().schedule(key).await?.ok_or_else(|| not_found(name))
}

fn not_found(name: &str) -> ApiError {
    ApiError::not_found("SCHEDULE_NOT_FOUND", format!("you have no schedule named '{name}'"))
}

async fn create(state: &AppState, caller: &Caller, body: &[u8]) -> Result<Response, ApiError> {
    let draft: Draft = serde_json::from_slice(body).map_err(|err| {
        ApiError::bad_request(
            "INVALID_JSON",
            format!("send {{\"name\", \"cron\", \"path\", \"method\", \"body\"?, \"timezone\"?, \"catch_up\"?}}: {err}"),
        )
    })?;
    let record = draft
        .into_record(caller.uuid(), caller.kind(), jobs::now_ms())
        .map_err(|invalid| ApiError::bad_request(invalid.code, invalid.why))?;
    // Checked now as the call will be made at each tick: a function the caller may not call,
    // a method it does not answer, a missing parameter are refused here.
    let method = Method::from_bytes(record.method.as_bytes()).unwrap_or(Method::GET);
    super::services::prepare(state, caller, &method, &record.path, record.body.as_deref().map(str::as_bytes)).await?;
    if !state.jobs.store().insert_schedule(&record).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "SCHEDULE_EXISTS",
            format!(
                "you have a schedule named '{}' already: remove it first, or choose another name",
                record.name
            ),
        ));
    }
    state.jobs.schedules_changed();
    tracing::info!(schedule = %record.key, cron = %record.cron, "schedule created");
    Ok(json_response(StatusCode::CREATED, &view(&record, caller)))
}

/// A schedule as the API shows it.
pub(crate) fn view(schedule: &ScheduleRecord, viewer: &Caller) -> Value {
    let at = |ms: Option<i64>| ms.filter(|ms| *ms != NEVER).map(jobs::timestamp);
    let jobs_url = if viewer.is_admin() {
        format!("/rest/admin/jobs?schedule={}&owner={}", schedule.name, schedule.owner)
    } else {
        format!("/rest/jobs?schedule={}", schedule.name)
    };
    json!({
        "name": schedule.name,
        "owner": schedule.owner,
        "owner_kind": schedule.owner_kind,
        "cron": schedule.cron,
        "timezone": schedule.timezone.as_deref().unwrap_or("UTC"),
        "path": format!("/rest/services/{}", schedule.path),
        "method": schedule.method,
        "body": schedule.body.as_deref().and_then(|b| serde_json::from_str::<Value>(b).ok()),
        "catch_up": schedule.catch_up,
        "paused": schedule.paused,
        "created_at": jobs::timestamp(schedule.created_at),
        "next_run": if schedule.paused { None } else { at(Some(schedule.next_run)) },
        "last_run": at(schedule.last_run),
        "last_job": schedule.last_job,
        "status": schedule.status,
        "jobs_url": jobs_url,
    })
}

/// Makes a tick's call for the scheduler.
pub(crate) struct ScheduleTicker(pub Weak<AppState>);

#[async_trait::async_trait]
impl Ticker for ScheduleTicker {
    async fn prepare(&self, schedule: &ScheduleRecord) -> Result<(String, String, StoredCall), String> {
        let Some(state) = self.0.upgrade() else {
            return Err("the server is stopping".to_owned());
        };
        let caller = if schedule.owner_kind == "admin" {
            Caller::Admin {
                uuid: schedule.owner.clone(),
            }
        } else {
            match state.auth.tenancy().store.get(&schedule.owner).await {
                Ok(Some(record)) if record.status == "active" => Caller::Tenant {
                    uuid: schedule.owner.clone(),
                },
                Ok(Some(_)) => return Err(format!("its owner, tenant {}, is disabled", schedule.owner)),
                Ok(None) => return Err(format!("its owner, tenant {}, no longer exists", schedule.owner)),
                Err(err) => return Err(format!("its owner could not be read: {err}")),
            }
        };
        let method = Method::from_bytes(schedule.method.as_bytes()).map_err(|_| format!("'{}' is not a method", schedule.method))?;
        let body = schedule.body.as_deref().map(str::as_bytes);
        let (endpoint, input) = super::services::prepare(&state, &caller, &method, &schedule.path, body)
            .await
            .map_err(|err| format!("{}: {}", err.code, err.description))?;
        Ok((
            endpoint.module.spec.route_name().to_owned(),
            endpoint.function().route_name().to_owned(),
            StoredCall::of(&input),
        ))
    }
}
