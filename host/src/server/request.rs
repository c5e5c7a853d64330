//! One request's wrapping: its id (the client's, if sane, or a fresh one), the header-size check,
//! CORS, the routes (the services fast path first), `X-Request-Id` on the response, the metrics
//! and one access-log line.

use std::{
    sync::{atomic::Ordering, Arc},
    time::Instant,
};

use ::http::{HeaderValue, Request, StatusCode};
use hyper::body::Incoming;

use crate::{
    http::{self, RouteInfo},
    AppState,
};

/// The methods `route` answers, for a CORS preflight (which carries no credentials): a function
/// of the admin's modules, or a built-in; `None` for anything else, whose methods an anonymous
/// caller is not told.
pub(crate) fn route_methods(state: &AppState, route: http::Route<'_>) -> Option<String> {
    if let http::Route::Services { tail } = route {
        let segments = http::path::segments(tail).ok()?;
        let registry = state.plugins.registry();
        return match registry.resolve(&segments, &crate::registry::Everything) {
            crate::registry::Resolution::Call { endpoint, .. } if endpoint.module.owner.is_none() => {
                Some(endpoint.function().methods.allow_header())
            }
            _ => None,
        };
    }
    route.fixed_methods().map(|methods| format!("{methods}, OPTIONS"))
}

/// Wraps every request: a sane request id (the client's, or a new one), a header-size check,
/// the routes, `X-Request-Id` on the response, and one access-log line.
pub(crate) async fn handle(
    request: Request<Incoming>,
    peer: &str,
    peer_ip: std::net::IpAddr,
    state: &Arc<AppState>,
) -> warp::reply::Response {
    let started = Instant::now();
    let request_id = request_id(request.headers());
    let id_value = HeaderValue::from_str(&request_id).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
    let (mut parts, body) = request.into_parts();
    parts.headers.insert(crate::http::names::X_REQUEST_ID.clone(), id_value.clone());
    let route = http::route(parts.uri.path());
    let method = parts.method.clone();
    let measure = crate::metrics::enabled();
    let _in_flight = measure.then(InFlight::enter);

    let cors = state.http.cors.as_ref();
    let origin = parts.headers.get(::http::header::ORIGIN).cloned();
    let preflight = cors.and_then(|c| c.preflight(&parts.method, &parts.headers, || route_methods(state, route)));
    let answered_preflight = preflight.is_some();
    let mut response = match preflight {
        Some(answer) => answer,
        None => match headers_too_large(&parts.headers, state.http.limits.max_header_bytes) {
            Some(refusal) => refusal,
            None => {
                let body = http_body_util::BodyDataStream::new(body);
                let scoped_id: Arc<str> = Arc::from(request_id.as_str());
                crate::access::scope(scoped_id, peer_ip, http::serve(state, route, &parts, body)).await
            }
        },
    };
    if let Some(cors) = cors.filter(|_| !answered_preflight) {
        cors.decorate(origin.as_ref(), &mut response);
    }
    response.headers_mut().insert(crate::http::names::X_REQUEST_ID.clone(), id_value);
    let seen = Seen {
        request_id: &request_id,
        method: &method,
        route,
        peer,
        elapsed: started.elapsed(),
        measure,
    };
    record(state.http.log_format, &mut response, &seen);
    response
}

/// The client's request id if it is sane, else a fresh one.
fn request_id(headers: &::http::HeaderMap) -> String {
    headers
        .get(&crate::http::names::X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| is_sane_request_id(id))
        .map(str::to_owned)
        .unwrap_or_else(new_request_id)
}

/// 431 when the request's headers take more than `max` bytes (MAX_HEADER_BYTES).
fn headers_too_large(headers: &::http::HeaderMap, max: usize) -> Option<warp::reply::Response> {
    let bytes: usize = headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
    (bytes > max).then(|| {
        http::error::ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "HEADERS_TOO_LARGE",
            format!("the request headers take {bytes} bytes; the limit is {max} (MAX_HEADER_BYTES)"),
        )
        .into_response()
    })
}

/// What the wrapper saw of a request, for its metrics and its access-log line.
struct Seen<'a> {
    request_id: &'a str,
    method: &'a ::http::Method,
    route: http::Route<'a>,
    peer: &'a str,
    elapsed: std::time::Duration,
    /// Whether metrics were on when the request came in.
    measure: bool,
}

/// Counts the request in the metrics and writes its access-log line, labelled with what the
/// routes said they served (the `RouteInfo` they left on the response).
fn record(log_format: crate::config::LogFormat, response: &mut warp::reply::Response, seen: &Seen<'_>) {
    let status = response.status().as_u16();
    let info = response.extensions_mut().remove::<RouteInfo>();
    let (route, module, function, caller) = match &info {
        Some(info) => (
            info.route,
            info.endpoint.as_ref().map_or("", |e| e.module.spec.route_name()),
            info.endpoint.as_ref().map_or("", |e| e.function().route_name()),
            info.caller,
        ),
        None => (seen.route.template(), "", "", "none"),
    };
    if seen.measure {
        let method = crate::metrics::method_label(seen.method);
        match info.as_ref().and_then(|i| i.endpoint.as_ref()) {
            Some(endpoint) => crate::metrics::METRICS.observe_call(
                endpoint.metrics(),
                crate::metrics::CallLabels {
                    route,
                    module,
                    function,
                    method,
                    status,
                },
                seen.elapsed,
            ),
            None => crate::metrics::METRICS.observe_request(
                crate::metrics::RequestLabels {
                    route,
                    module: module.to_owned(),
                    function: function.to_owned(),
                    method,
                    status,
                },
                seen.elapsed,
            ),
        }
    }
    if crate::access::enabled() {
        crate::access::log(
            log_format,
            &crate::access::Entry {
                request_id: seen.request_id,
                method: seen.method.as_str(),
                route,
                module,
                function,
                caller,
                status,
                duration: seen.elapsed,
                peer: seen.peer,
            },
        );
    }
}

/// Counts a request in flight for as long as it lives (also when its client goes away).
pub(crate) struct InFlight;

impl InFlight {
    fn enter() -> InFlight {
        crate::metrics::METRICS.in_flight.inc();
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        crate::metrics::METRICS.in_flight.dec();
    }
}

/// A fresh request id shaped like a random UUID: a random 128-bit base drawn once per process,
/// plus a counter. Unique within the process, unpredictable across processes, and free of the
/// `getrandom` system call that `Uuid::new_v4` makes for every request.
pub(crate) fn new_request_id() -> String {
    static BASE: std::sync::LazyLock<u128> = std::sync::LazyLock::new(|| uuid::Uuid::new_v4().as_u128());
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // splitmix64 spreads consecutive counters over all the bits (a bijection: no repeats).
    let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let mixed = (u128::from(z) << 64) | u128::from(z.rotate_left(32) ^ n);
    let bytes = (*BASE ^ mixed).to_be_bytes();
    uuid::Builder::from_random_bytes(bytes).into_uuid().to_string()
}

/// 1–128 characters of letters, digits and `-_.:/+=@`.
pub(crate) fn is_sane_request_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_request_ids_are_distinct_uuids() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| new_request_id()).collect();
        assert_eq!(ids.len(), 1000);
        for id in ids.iter().take(5) {
            let parsed = uuid::Uuid::parse_str(id).unwrap();
            assert_eq!(parsed.get_version_num(), 4);
            assert!(is_sane_request_id(id));
        }
    }

    #[test]
    fn request_ids() {
        assert!(is_sane_request_id("abc-123_x.y"));
        assert!(is_sane_request_id("3f2a9c1e-0000-4000-8000-000000000000"));
        assert!(!is_sane_request_id(""));
        assert!(!is_sane_request_id("has space"));
        assert!(!is_sane_request_id("<script>"));
        assert!(!is_sane_request_id(&"x".repeat(129)));
    }
}
