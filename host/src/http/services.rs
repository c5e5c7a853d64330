//! `/rest/services/…`: path → resolution → method → body → kwargs → typed params → call → reply.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use warp::reply::Response;

use super::{auth, dir, error::ApiError, path, RouteInfo};
use crate::{
    dispatch,
    kwargs::{self, BodyKind},
    loader::LoadedModule,
    registry::{Endpoint, Everything, Registry, Resolution},
    AppState,
};
use plughost_runtime::call::CallInput;
use plughost_tenancy::auth::Caller;

/// Serves one request under `/rest/services/`.
pub(crate) async fn handle<S, B, E>(state: &AppState, tail: &str, method: &Method, query: &str, headers: &HeaderMap, body: S) -> Response
where
    S: Stream<Item = Result<B, E>>,
    B: Buf,
    E: std::fmt::Display,
{
    let mut info = RouteInfo {
        route: super::Route::Services { tail }.template(),
        endpoint: None,
        caller: "none",
    };
    let mut response = match serve(state, tail, method, query, headers, body, &mut info).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    };
    response.extensions_mut().insert(info);
    response
}

async fn serve<S, B, E>(
    state: &AppState,
    tail: &str,
    method: &Method,
    query: &str,
    headers: &HeaderMap,
    body: S,
    info: &mut RouteInfo,
) -> Result<Response, ApiError>
where
    S: Stream<Item = Result<B, E>>,
    B: Buf,
    E: std::fmt::Display,
{
    let segments = path::segments(tail)?;
    if segments.is_empty() {
        return Err(ApiError::not_found(
            "FUNCTION_NOT_FOUND",
            "name a function: /rest/services/<module>/<function>/… or /rest/services/<function>/…; list them at /rest/services/__dir__/",
        ));
    }
    let (endpoint, rest, caller) = match resolve(state, &segments, method, headers, info).await? {
        Resolved::Call { endpoint, rest, caller } => (endpoint, rest, caller),
        Resolved::Answered(response) => return Ok(response),
    };
    info.route = super::CALL_TEMPLATE;
    info.endpoint = Some(endpoint.clone());
    let function = endpoint.function();
    // Public functions of the admin's modules never touch the identity store, unless the call is
    // to be a job: a job belongs to whoever queued it.
    let asynchronous = super::jobs::wants_async(headers);
    let caller = match caller {
        Some(known) => known,
        None if function.visibility == plugin_api::Visibility::Public && endpoint.module.owner.is_none() && !asynchronous => None,
        None => auth::caller(state, headers).await?,
    };
    info.caller = caller.as_ref().map_or("none", |c| c.kind());
    // Credentials before methods: the methods of a function are told only to who may call it.
    auth::require(
        function.visibility,
        caller.as_ref(),
        &format!("function '{}'", function.route_name()),
    )?;
    if method == Method::OPTIONS {
        return Ok(options(function));
    }
    if !function.methods.allows(method) {
        let what = format!("function '{}'", function.route_name());
        return Err(ApiError::method_not_allowed(method, &what, function.methods.allow_header()));
    }
    let input = call_input(state, &endpoint, method, query, headers, body, &rest, caller.as_ref()).await?;
    if asynchronous {
        // Boxed: the queueing future stays out of every synchronous call's own.
        return Box::pin(super::jobs::queue(state, &endpoint, caller.as_ref(), &input, headers)).await;
    }
    let limits = &state.http.limits;
    match dispatch::call(endpoint.clone(), input, limits.call_timeout, limits.inline_call_max).await {
        Ok(reply) => super::reply::to_response(reply, &endpoint, limits.max_response_bytes),
        Err(err) => Err(ApiError::of_call(
            err,
            endpoint.function().route_name(),
            endpoint.module.spec.route_name(),
        )),
    }
}

/// What the path resolved to: a function to call (with the caller, when finding it needed
/// one), or an answer already made (a listing; the refusals are errors).
enum Resolved {
    Call {
        endpoint: Endpoint,
        rest: Vec<String>,
        /// `None` when the caller was not needed to resolve the path and has not been read.
        caller: Option<Option<Caller>>,
    },
    Answered(Response),
}

async fn resolve(
    state: &AppState,
    segments: &[String],
    method: &Method,
    headers: &HeaderMap,
    info: &mut RouteInfo,
) -> Result<Resolved, ApiError> {
    let registry = state.plugins.registry();
    // Resolved first over every module: when the answer involves only the admin's modules it is
    // the same for every caller, and a public call never needs its credentials read. Otherwise
    // it is resolved again over the modules this caller may call, and only those.
    let mut caller: Option<Option<Caller>> = None;
    let mut resolution = registry.resolve(segments, &Everything);
    if !resolution.same_for_every_caller() {
        let known = auth::caller(state, headers).await?;
        resolution = registry.resolve(segments, &|m: &LoadedModule| auth::may_use(m, known.as_ref()));
        caller = Some(known);
    }
    match resolution {
        Resolution::Call { endpoint, rest } => Ok(Resolved::Call {
            endpoint,
            rest: rest.to_vec(),
            caller,
        }),
        Resolution::Dir(module) => {
            info.route = super::DIR_TEMPLATE;
            if method != Method::GET && method != Method::HEAD {
                return Err(ApiError::method_not_allowed(method, "__dir__", "GET, HEAD".to_owned()));
            }
            let caller = read_once(state, headers, caller).await?;
            info.caller = caller.as_ref().map_or("none", |c| c.kind());
            let listing = listing(state, &registry, module.as_deref(), caller.as_ref());
            Ok(Resolved::Answered(super::error::json_response(StatusCode::OK, &listing)))
        }
        Resolution::NoSuchFunction { module, function } => {
            let caller = read_once(state, headers, caller).await?;
            Err(no_such_function(&module, function.as_deref(), caller.as_ref()))
        }
        Resolution::Ambiguous { name, paths } => Err(ambiguous(&name, &paths)),
        Resolution::NotFound { name } => Err(ApiError::not_found(
            "FUNCTION_NOT_FOUND",
            format!("no module or function is named '{name}'; list them at /rest/services/__dir__/"),
        )),
    }
}

/// The caller, read from the headers unless resolution already did.
async fn read_once(state: &AppState, headers: &HeaderMap, caller: Option<Option<Caller>>) -> Result<Option<Caller>, ApiError> {
    match caller {
        Some(known) => Ok(known),
        None => auth::caller(state, headers).await,
    }
}

/// `__dir__` of everything or of one module, as this caller sees it.
fn listing(state: &AppState, registry: &Registry, module: Option<&LoadedModule>, caller: Option<&Caller>) -> serde_json::Value {
    let visible =
        |m: &LoadedModule, f: &plughost_runtime::manifest::FunctionSpec| auth::may_use(m, caller) && auth::may_call(f.visibility, caller);
    let viewer = |m: &LoadedModule| auth::may_use(m, caller);
    match module {
        Some(module) => dir::module(module, registry, &visible, &viewer),
        None => dir::all(registry, &state.http.url_params, &visible, &viewer),
    }
}

fn ambiguous(name: &str, paths: &[String]) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "AMBIGUOUS_FUNCTION",
        format!(
            "'{name}' is exported by several modules; call it through one of them: {}",
            paths.join(", ")
        ),
    )
}

/// A module named without a function it has; only the functions this caller may call are named.
fn no_such_function(module: &LoadedModule, function: Option<&str>, caller: Option<&Caller>) -> ApiError {
    let known: Vec<&str> = module
        .spec
        .functions
        .iter()
        .filter(|f| auth::may_call(f.visibility, caller))
        .map(|f| f.route_name())
        .collect();
    let known = if known.is_empty() {
        "none you may call".to_owned()
    } else {
        known.join(", ")
    };
    let description = match function {
        Some(function) => format!(
            "module '{}' has no function '{function}'; its functions: {known}",
            module.spec.route_name()
        ),
        None => format!(
            "'{}' is a module: name one of its functions after it ({known})",
            module.spec.route_name()
        ),
    };
    ApiError::not_found("FUNCTION_NOT_FOUND", description)
}

/// `OPTIONS` on a function: 204 with the methods it allows.
fn options(function: &plughost_runtime::manifest::FunctionSpec) -> Response {
    let mut response = Response::new(Bytes::new().into());
    *response.status_mut() = StatusCode::NO_CONTENT;
    if let Ok(allow) = HeaderValue::from_str(&function.methods.allow_header()) {
        response.headers_mut().insert(header::ALLOW, allow);
    }
    response
}

/// The call a principal would make with `method` on `target` (a path under `/rest/services/`
/// with its query) and a JSON `body`, checked as a request would be: the function resolved
/// among those the principal may call, its visibility, its methods, the kwargs and typed
/// parameters. Schedules make their calls this way.
pub(crate) async fn prepare(
    state: &AppState,
    caller: &Caller,
    method: &Method,
    target: &str,
    body: Option<&[u8]>,
) -> Result<(Endpoint, CallInput), ApiError> {
    let (tail, query) = target.split_once('?').unwrap_or((target, ""));
    let segments = path::segments(tail)?;
    let resolution = {
        let registry = state.plugins.registry();
        registry.resolve(&segments, &|m: &LoadedModule| auth::may_use(m, Some(caller)))
    };
    let (endpoint, rest) = match resolution {
        Resolution::Call { endpoint, rest } => (endpoint, rest.to_vec()),
        Resolution::Dir(_) => {
            return Err(ApiError::not_found(
                "FUNCTION_NOT_FOUND",
                "the path names a listing (__dir__), not a function",
            ))
        }
        Resolution::NoSuchFunction { module, function } => return Err(no_such_function(&module, function.as_deref(), Some(caller))),
        Resolution::Ambiguous { name, paths } => return Err(ambiguous(&name, &paths)),
        Resolution::NotFound { name } => {
            return Err(ApiError::not_found(
                "FUNCTION_NOT_FOUND",
                format!("no module or function is named '{name}'"),
            ))
        }
    };
    let function = endpoint.function();
    auth::require(function.visibility, Some(caller), &format!("function '{}'", function.route_name()))?;
    if !function.methods.allows(method) {
        let what = format!("function '{}'", function.route_name());
        return Err(ApiError::method_not_allowed(method, &what, function.methods.allow_header()));
    }
    let mut headers = HeaderMap::new();
    if body.is_some() {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    let bytes = Bytes::copy_from_slice(body.unwrap_or_default());
    let stream = futures_util::stream::iter([Ok::<Bytes, std::convert::Infallible>(bytes)]);
    let input = call_input(state, &endpoint, method, query, &headers, stream, &rest, Some(caller)).await?;
    Ok((endpoint, input))
}

/// The call's one input: the body read within its limits, the kwargs merged from body, query
/// and positional segments and checked against the function's typed parameters, and the headers
/// the plugin may see.
#[allow(clippy::too_many_arguments)]
async fn call_input<S, B, E>(
    state: &AppState,
    endpoint: &Endpoint,
    method: &Method,
    query: &str,
    headers: &HeaderMap,
    body: S,
    rest: &[String],
    caller: Option<&Caller>,
) -> Result<CallInput, ApiError>
where
    S: Stream<Item = Result<B, E>>,
    B: Buf,
    E: std::fmt::Display,
{
    let has_body = method != Method::GET && method != Method::HEAD;
    let body = if has_body {
        let limits = &state.http.limits;
        read_body(headers, body, limits.max_body_bytes, "MAX_BODY_BYTES", limits.body_read_timeout).await?
    } else {
        Bytes::new()
    };
    let content_type = if has_body {
        header_text(headers, &header::CONTENT_TYPE)
    } else {
        String::new()
    };
    let from_body = kwargs::from_body(BodyKind::of(&content_type), &body)?;
    let mut kwargs = kwargs::merge(
        from_body.kwargs,
        kwargs::from_query(query),
        rest,
        &state.http.url_params,
        &from_body.rename,
    )?;
    plughost_runtime::params::apply(&endpoint.function().params, &mut kwargs)?;
    Ok(CallInput {
        method: method.as_str().to_owned(),
        // Straight into a buffer: `Value`'s `Display` goes through the formatter for every token.
        kwargs_json: serde_json::to_string(&kwargs).map_err(|err| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL_ERROR",
                "the kwargs could not be encoded",
            )
            .with_internal(err.to_string())
        })?,
        query: query.to_owned(),
        headers: auth::plugin_headers(headers, caller, endpoint.module.owner.is_some()),
        body,
        content_type,
        request_id: crate::access::current_request_id().unwrap_or_else(|| header_text(headers, &super::names::X_REQUEST_ID).into()),
    })
}

/// Reads the body up to `limit` bytes: 413 as soon as `Content-Length` or the bytes received
/// pass it. Works for chunked bodies and for requests without `Content-Length`. `setting` names
/// the limit in the error.
/// Reads a request body of at most `limit` bytes within `deadline` (408 beyond).
///
/// A body that is too large is answered 413 after reading and dropping up to [`DRAIN_LIMIT`]
/// more bytes of it: clients that write their whole body before they read (Python's
/// http.client, requests) would otherwise see the connection reset instead of the answer.
pub(super) async fn read_body<S, B, E>(
    headers: &HeaderMap,
    body: S,
    limit: usize,
    setting: &str,
    deadline: Duration,
) -> Result<Bytes, ApiError>
where
    S: Stream<Item = Result<B, E>>,
    B: Buf,
    E: std::fmt::Display,
{
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            format!("the request body is larger than {limit} bytes ({setting})"),
        )
    };
    let declared = header_text(headers, &header::CONTENT_LENGTH).parse::<u64>().ok();
    let mut body = std::pin::pin!(body);
    if declared.is_some_and(|n| n > limit as u64) {
        drain(&mut body, declared.unwrap_or(0)).await;
        return Err(too_large());
    }
    let reading = async {
        let mut buffer = BytesMut::with_capacity(declared.map_or(0, |n| n as usize));
        while let Some(chunk) = body.next().await {
            let mut chunk = chunk.map_err(|err| {
                ApiError::bad_request("BODY_READ_FAILED", "the request body could not be read to its end").with_internal(err.to_string())
            })?;
            if buffer.len() + chunk.remaining() > limit {
                drain(&mut body, u64::MAX).await;
                return Err(too_large());
            }
            while chunk.has_remaining() {
                let part = chunk.chunk();
                buffer.extend_from_slice(part);
                let n = part.len();
                chunk.advance(n);
            }
        }
        Ok(buffer.freeze())
    };
    match tokio::time::timeout(deadline, reading).await {
        Ok(read) => read,
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "BODY_TIMEOUT",
            format!(
                "the request body did not arrive within {} ms (BODY_READ_TIMEOUT_MS)",
                deadline.as_millis()
            ),
        )),
    }
}

/// Most bytes of a refused body read and dropped so that its client gets the answer.
const DRAIN_LIMIT: u64 = 16 << 20;
/// How long that may take.
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// Reads and drops the rest of a refused body when it is not too much more (`declared` bytes,
/// if known), so that the answer reaches a client that writes before it reads.
async fn drain<S, B, E>(body: &mut std::pin::Pin<&mut S>, declared: u64)
where
    S: Stream<Item = Result<B, E>>,
    B: Buf,
{
    if declared > DRAIN_LIMIT && declared != u64::MAX {
        return;
    }
    let dropping = async {
        let mut dropped = 0u64;
        while let Some(Ok(chunk)) = body.next().await {
            dropped += chunk.remaining() as u64;
            if dropped > DRAIN_LIMIT {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, dropping).await;
}

fn header_text(headers: &HeaderMap, name: &http::HeaderName) -> String {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
}
