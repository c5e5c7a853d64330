//! Jobs over HTTP: a services call queued with `Prefer: respond-async`, `/rest/jobs/…` for the
//! caller's jobs, `/rest/admin/jobs…` for the admin, and the executor that makes a job's call as
//! a synchronous one would have been made.

use std::{
    sync::{Arc, Weak},
    time::{Duration, Instant},
};

use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use plughost_tenancy::{
    auth::Caller,
    jobs::{Cancel, JobQuery, JobRecord, JobState},
};
use serde_json::json;
use warp::reply::Response;

use super::{
    auth,
    error::{json_response, ApiError},
    path,
};
use crate::{
    dispatch,
    jobs::{self, Answer, NewJob, StoredCall},
    registry::{Endpoint, Resolution},
    AppState,
};

/// Largest page of a job listing.
const MAX_PAGE: usize = 100;

/// Whether the request asks to be answered asynchronously (RFC 7240 `Prefer: respond-async`).
pub(crate) fn wants_async(headers: &HeaderMap) -> bool {
    headers.get_all(&super::names::PREFER).iter().any(|value| {
        value.to_str().is_ok_and(|text| {
            text.split(',').any(|pref| {
                pref.split([';', '='])
                    .next()
                    .is_some_and(|name| name.trim().eq_ignore_ascii_case("respond-async"))
            })
        })
    })
}

/// Queues a call that passed every check a synchronous call passes: 202 with the job.
pub(crate) async fn queue(
    state: &AppState,
    endpoint: &Endpoint,
    caller: Option<&Caller>,
    input: &plughost_runtime::call::CallInput,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let callback_url = match headers.get(&super::names::X_CALLBACK_URL) {
        None => None,
        Some(value) => {
            let text = value.to_str().unwrap_or("").trim();
            let url = state
                .jobs
                .settings
                .callbacks
                .check_url(text)
                .map_err(|why| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "CALLBACK_REFUSED", why))?;
            Some(url.to_string())
        }
    };
    let delay = delay(state, headers)?;
    let idempotency_key = idempotency_key(headers)?;
    let job = state
        .jobs
        .queue(NewJob {
            owner: caller.map(|c| (c.uuid().to_owned(), c.kind())),
            module: endpoint.module.spec.route_name().to_owned(),
            function: endpoint.function().route_name().to_owned(),
            call: StoredCall::of(input),
            delay,
            idempotency_key,
            callback_url,
        })
        .await?;
    let mut response = json_response(StatusCode::ACCEPTED, &jobs::view(&job));
    if let Ok(location) = HeaderValue::from_str(&format!("/rest/jobs/{}", job.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
        .headers_mut()
        .insert(super::names::PREFERENCE_APPLIED.clone(), HeaderValue::from_static("respond-async"));
    Ok(response)
}

/// `X-Plughost-Delay-Secs`: whole seconds, at most `JOB_MAX_DELAY_SECS`.
fn delay(state: &AppState, headers: &HeaderMap) -> Result<Duration, ApiError> {
    let Some(value) = headers.get(&super::names::X_PLUGHOST_DELAY_SECS) else {
        return Ok(Duration::ZERO);
    };
    let max = state.jobs.settings.max_delay.as_secs();
    value
        .to_str()
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .filter(|secs| *secs <= max)
        .map(Duration::from_secs)
        .ok_or_else(|| {
            ApiError::bad_request(
                "BAD_DELAY",
                format!("X-Plughost-Delay-Secs must be a whole number of seconds from 0 to {max} (JOB_MAX_DELAY_SECS)"),
            )
        })
}

/// `Idempotency-Key`: 1 to 255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(&super::names::IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = value.to_str().unwrap_or("").trim();
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::bad_request(
            "BAD_IDEMPOTENCY_KEY",
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        ));
    }
    Ok(Some(key.to_owned()))
}

/// `/rest/jobs/…`: the caller's jobs.
pub(crate) async fn serve(state: &AppState, tail: &str, method: &Method, query: &str, headers: &HeaderMap) -> Result<Response, ApiError> {
    let caller = auth::caller(state, headers).await?;
    let segments = path::segments(tail)?;
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let get = method == Method::GET || method == Method::HEAD;
    match segments.as_slice() {
        [] if get => {
            auth::require(plugin_api::Visibility::Tenant, caller.as_ref(), "listing jobs")?;
            list(state, query, caller.as_ref().map(|c| c.uuid().to_owned()))
                .await
                .map(|v| json_response(StatusCode::OK, &v))
        }
        [] => Err(ApiError::method_not_allowed(method, "/rest/jobs", "GET, HEAD".to_owned())),
        [id] if get => Ok(json_response(
            StatusCode::OK,
            &jobs::view(&visible(state, id, caller.as_ref()).await?),
        )),
        [id] if method == Method::DELETE => cancel(state, id, caller.as_ref()).await,
        [_] => Err(ApiError::method_not_allowed(method, "a job", "GET, HEAD, DELETE".to_owned())),
        [id, "result"] if get => result(&visible(state, id, caller.as_ref()).await?),
        [_, "result"] => Err(ApiError::method_not_allowed(method, "a job's result", "GET, HEAD".to_owned())),
        _ => Err(ApiError::not_found(
            "ROUTE_NOT_FOUND",
            "jobs live at /rest/jobs/<id> and /rest/jobs/<id>/result; /rest/jobs lists yours",
        )),
    }
}

/// `/rest/admin/jobs…` (the caller is the admin): every job, and requeueing.
pub(crate) async fn admin(state: &AppState, segments: &[&str], method: &Method, query: &str) -> Result<Response, ApiError> {
    match (method, segments) {
        (&Method::GET, ["jobs"]) => {
            let owner = query_value(query, "owner");
            list(state, query, owner).await.map(|v| json_response(StatusCode::OK, &v))
        }
        (&Method::GET, ["jobs", id]) => Ok(json_response(StatusCode::OK, &jobs::view(&found(state, id).await?))),
        (&Method::POST, ["jobs", id, "requeue"]) => {
            let id = job_id(id)?;
            let before = found(state, &id).await?;
            let requeued = if matches!(before.state, JobState::Failed | JobState::Dead | JobState::Cancelled) {
                state.jobs.store().requeue_job(&id, jobs::now_ms()).await?
            } else {
                None
            };
            let Some(job) = requeued.filter(|job| job.state == JobState::Queued) else {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "JOB_NOT_ENDED",
                    format!("job {id} is {}: only failed, dead or cancelled jobs are requeued", before.state.as_str()),
                ));
            };
            tracing::info!(job = %id, "job requeued by the admin");
            Ok(json_response(StatusCode::OK, &jobs::view(&job)))
        }
        _ => Err(ApiError::not_found(
            "ROUTE_NOT_FOUND",
            "admin job routes: GET /rest/admin/jobs[?state=&owner=&schedule=], GET /rest/admin/jobs/<id>, POST /rest/admin/jobs/<id>/requeue",
        )),
    }
}

async fn list(state: &AppState, query: &str, owner: Option<String>) -> Result<serde_json::Value, ApiError> {
    let job_state = match query_value(query, "state") {
        None => None,
        Some(text) => Some(JobState::parse(&text).ok_or_else(|| {
            let states: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::bad_request(
                "BAD_STATE",
                format!("state={text} is not a job state: use one of {}", states.join(", ")),
            )
        })?),
    };
    let limit = match query_value(query, "limit") {
        None => 50,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| ApiError::bad_request("BAD_LIMIT", format!("limit={text} is not a page size: use 1 to {MAX_PAGE}")))?,
    };
    let before = match query_value(query, "before") {
        None => None,
        Some(cursor) => Some(
            parse_cursor(&cursor)
                .ok_or_else(|| ApiError::bad_request("BAD_CURSOR", "before= takes the `next` value of the previous page"))?,
        ),
    };
    let found = state
        .jobs
        .store()
        .jobs(&JobQuery {
            owner,
            state: job_state,
            schedule: query_value(query, "schedule"),
            before,
            limit: limit + 1,
        })
        .await?;
    let more = found.len() > limit;
    let page = &found[..found.len().min(limit)];
    let next = more
        .then(|| page.last().map(|job| format!("{}.{}", job.created_at, job.id)))
        .flatten();
    Ok(json!({ "jobs": page.iter().map(jobs::view).collect::<Vec<_>>(), "next": next }))
}

fn parse_cursor(cursor: &str) -> Option<(i64, String)> {
    let (at, id) = cursor.split_once('.')?;
    Some((at.parse().ok()?, job_id(id).ok()?))
}

fn query_value(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

fn job_id(text: &str) -> Result<String, ApiError> {
    uuid::Uuid::parse_str(text)
        .map(|id| id.to_string())
        .map_err(|_| ApiError::bad_request("BAD_JOB_ID", format!("'{text}' is not a job id: job ids are UUIDs")))
}

fn no_such_job(id: &str) -> ApiError {
    ApiError::not_found("JOB_NOT_FOUND", format!("no job {id} (ended jobs are kept JOB_RETENTION_SECS)"))
}

async fn found(state: &AppState, id: &str) -> Result<JobRecord, ApiError> {
    let id = job_id(id)?;
    state.jobs.store().job(&id).await?.ok_or_else(|| no_such_job(&id))
}

/// The job, if this caller may see it: its owner and the admin; anyone for a job queued
/// without credentials. Others are told it does not exist.
async fn visible(state: &AppState, id: &str, caller: Option<&Caller>) -> Result<JobRecord, ApiError> {
    let job = found(state, id).await?;
    let allowed = match (&job.owner, caller) {
        (None, _) => true,
        (Some(_), Some(Caller::Admin { .. })) => true,
        (Some(owner), Some(caller)) => owner == caller.uuid(),
        (Some(_), None) => false,
    };
    if allowed {
        Ok(job)
    } else {
        Err(no_such_job(&job.id))
    }
}

async fn cancel(state: &AppState, id: &str, caller: Option<&Caller>) -> Result<Response, ApiError> {
    let job = visible(state, id, caller).await?;
    match state.jobs.store().cancel_job(&job.id, jobs::now_ms()).await? {
        Cancel::Cancelled(job) => Ok(json_response(StatusCode::OK, &jobs::view(&job))),
        Cancel::TooLate(job) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "JOB_STARTED",
            format!("job {} is {}: only a queued job can be cancelled", job.id, job.state.as_str()),
        )),
        Cancel::NotFound => Err(no_such_job(&job.id)),
    }
}

/// The function's own answer, as the synchronous call would have sent it.
fn result(job: &JobRecord) -> Result<Response, ApiError> {
    let answer = match (job.state.is_final(), job.result.as_deref().and_then(Answer::from_json)) {
        (true, Some(answer)) => answer,
        _ => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "JOB_NOT_FINISHED",
                format!(
                    "job {} is {} and has no result; its status URL says when it ends",
                    job.id,
                    job.state.as_str()
                ),
            ))
        }
    };
    let mut response = Response::new(bytes::Bytes::from(answer.body()).into());
    *response.status_mut() = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let out = response.headers_mut();
    for (name, value) in &answer.headers {
        if let (Ok(name), Ok(value)) = (header::HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
            out.append(name, value);
        }
    }
    if let Ok(content_type) = HeaderValue::from_str(&answer.content_type) {
        out.insert(header::CONTENT_TYPE, content_type);
    }
    Ok(response)
}

/// Makes jobs' calls for the runner, through the same checks and dispatch as a synchronous call.
pub(crate) struct CallExecutor(pub Weak<AppState>);

#[async_trait::async_trait]
impl jobs::Executor for CallExecutor {
    async fn execute(&self, job: &JobRecord, input: plughost_runtime::call::CallInput, deadline: Duration) -> Answer {
        let started = Instant::now();
        let Some(state) = self.0.upgrade() else {
            return Answer::new(503, "application/json".to_owned(), Vec::new(), br#"{"error":"SHUTTING_DOWN"}"#);
        };
        let response = match call(&state, job, input, deadline).await {
            Ok(response) => response,
            Err(err) => err.into_response(),
        };
        let answer = answer_of(response).await;
        log_execution(&state, job, answer.status, started.elapsed());
        answer
    }
}

async fn call(
    state: &Arc<AppState>,
    job: &JobRecord,
    input: plughost_runtime::call::CallInput,
    deadline: Duration,
) -> Result<Response, ApiError> {
    let caller = match (job.owner_kind.as_str(), &job.owner) {
        ("admin", Some(uuid)) => Some(Caller::Admin { uuid: uuid.clone() }),
        (_, Some(uuid)) => Some(Caller::Tenant { uuid: uuid.clone() }),
        _ => None,
    };
    let segments = [job.module.clone(), job.function.clone()];
    let endpoint = {
        let registry = state.plugins.registry();
        match registry.resolve(&segments, &|m: &crate::loader::LoadedModule| auth::may_use(m, caller.as_ref())) {
            Resolution::Call { endpoint, .. } => endpoint,
            _ => {
                return Err(ApiError::not_found(
                    "FUNCTION_NOT_FOUND",
                    format!(
                        "module '{}' has no function '{}' this job may call any more",
                        job.module, job.function
                    ),
                ))
            }
        }
    };
    let function = endpoint.function();
    auth::require(
        function.visibility,
        caller.as_ref(),
        &format!("function '{}'", function.route_name()),
    )?;
    let method = Method::from_bytes(job.method.as_bytes()).unwrap_or(Method::GET);
    if !function.methods.allows(&method) {
        let what = format!("function '{}'", function.route_name());
        return Err(ApiError::method_not_allowed(&method, &what, function.methods.allow_header()));
    }
    let limits = &state.http.limits;
    match dispatch::call(endpoint.clone(), input, deadline, None).await {
        Ok(reply) => super::reply::to_response(reply, &endpoint, limits.max_response_bytes),
        Err(err) => Err(ApiError::of_call(err, function.route_name(), endpoint.module.spec.route_name())),
    }
}

async fn answer_of(response: Response) -> Answer {
    use http_body_util::BodyExt;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    let headers = parts
        .headers
        .iter()
        .filter(|(name, _)| *name != header::CONTENT_TYPE && *name != header::CONTENT_LENGTH)
        .filter_map(|(name, value)| Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned())))
        .collect();
    Answer::new(parts.status.as_u16(), content_type, headers, &body)
}

/// One access-log line per job execution, carrying the job id.
fn log_execution(state: &AppState, job: &JobRecord, status: u16, elapsed: Duration) {
    if crate::access::enabled() {
        crate::access::log(
            state.http.log_format,
            &crate::access::Entry {
                request_id: &job.id,
                method: &job.method,
                route: "/rest/jobs/{id}",
                module: &job.module,
                function: &job.function,
                caller: if job.owner.is_some() { &job.owner_kind } else { "none" },
                status,
                duration: elapsed,
                peer: "job",
            },
        );
    }
}
