//! CORS, configured in `.env` rather than coded: which origins may call from a browser, with which
//! headers, for how long a preflight is cached, and whether credentials are allowed.

use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use warp::reply::Response;

pub(crate) use crate::config::cors::{Cors, Origins};

/// The methods a preflight may be answered for when the route's own are not known (or not the
/// asker's to know).
const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];

impl Cors {
    /// The `Access-Control-Allow-Origin` value for `origin`, if it is allowed.
    fn allow(&self, origin: &str) -> Option<HeaderValue> {
        match &self.origins {
            Origins::Any => Some(HeaderValue::from_static("*")),
            Origins::List(list) => list
                .iter()
                .any(|o| o.eq_ignore_ascii_case(origin))
                .then(|| HeaderValue::from_str(origin).ok())
                .flatten(),
        }
    }

    /// Answers a preflight (`OPTIONS` with `Access-Control-Request-Method`), or `None` for other
    /// requests, which go on to the routes, as the Fetch standard's CORS check expects:
    /// `Access-Control-Allow-Methods` names the methods of the route (`route_methods`, such as
    /// `"GET, HEAD, POST, OPTIONS"`, or `None` when they are not known to anonymous callers:
    /// then only the requested method, if it is a standard one), and
    /// `Access-Control-Allow-Headers` the requested headers that `CORS_ALLOW_HEADERS` allows. A
    /// method or header not named there makes the browser refuse the call.
    pub(crate) fn preflight(
        &self,
        method: &Method,
        headers: &HeaderMap,
        route_methods: impl FnOnce() -> Option<String>,
    ) -> Option<Response> {
        if method != Method::OPTIONS {
            return None;
        }
        let requested = headers
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)?
            .to_str()
            .unwrap_or("")
            .trim()
            .to_owned();
        let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()).unwrap_or("");
        let Some(allowed) = self.allow(origin) else {
            let mut refused = super::error::ApiError::new(
                StatusCode::FORBIDDEN,
                "CORS_ORIGIN_REFUSED",
                format!("origin '{origin}' may not call this server from a browser (CORS_ALLOW_ORIGIN)"),
            )
            .into_response();
            refused.headers_mut().insert(header::VARY, HeaderValue::from_static("Origin"));
            return Some(refused);
        };
        let methods = route_methods().unwrap_or_else(|| {
            METHODS
                .iter()
                .find(|m| m.eq_ignore_ascii_case(&requested))
                .map(|m| (*m).to_owned())
                .unwrap_or_default()
        });
        let mut response = Response::new(bytes::Bytes::new().into());
        *response.status_mut() = StatusCode::NO_CONTENT;
        let out = response.headers_mut();
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
        if let Ok(value) = HeaderValue::from_str(&methods) {
            if !methods.is_empty() {
                out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, value);
            }
        }
        let asked = headers
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let granted: Vec<&str> = asked
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .filter(|h| self.allow_headers.split(", ").any(|allowed| allowed.eq_ignore_ascii_case(h)))
            .collect();
        if let (false, Ok(value)) = (granted.is_empty(), HeaderValue::from_str(&granted.join(", ").to_ascii_lowercase())) {
            out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, value);
        }
        out.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(self.max_age));
        if self.credentials {
            out.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
        out.insert(
            header::VARY,
            HeaderValue::from_static("Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
        );
        Some(response)
    }

    /// Adds the CORS headers to an actual response for an allowed `Origin`.
    pub(crate) fn decorate(&self, request_origin: Option<&HeaderValue>, response: &mut Response) {
        let out = response.headers_mut();
        if matches!(self.origins, Origins::List(_)) {
            out.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        let Some(allowed) = request_origin.and_then(|o| o.to_str().ok()).and_then(|o| self.allow(o)) else {
            return;
        };
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
        if !self.expose_headers.is_empty() {
            if let Ok(value) = HeaderValue::from_str(&self.expose_headers) {
                out.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, value);
            }
        }
        if self.credentials {
            out.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origin: &str, credentials: bool) -> Result<Option<Cors>, Vec<String>> {
        Cors::parse(origin, "authorization, content-type", "x-request-id", 600, credentials)
    }

    #[test]
    fn settings() {
        assert_eq!(cors("", false), Ok(None));
        assert_eq!(cors("*", false).unwrap().unwrap().origins, Origins::Any);
        assert!(cors("*", true).unwrap_err()[0].contains("list the origins"));
        let list = cors("https://a.example, http://localhost:3000/", true).unwrap().unwrap();
        assert_eq!(
            list.origins,
            Origins::List(vec!["https://a.example".into(), "http://localhost:3000".into()])
        );
        assert!(cors("a.example", false).is_err());
        assert!(cors("https://a.example/path", false).is_err());
        assert!(Cors::parse("*", "bad header", "", 1, false).is_err());
    }

    #[test]
    fn preflights_and_decoration() {
        let policy = cors("https://a.example", true).unwrap().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::ORIGIN, HeaderValue::from_static("https://a.example"));
        headers.insert(header::ACCESS_CONTROL_REQUEST_METHOD, HeaderValue::from_static("POST"));
        let ok = policy
            .preflight(&Method::OPTIONS, &headers, || Some("GET, HEAD, OPTIONS".to_owned()))
            .unwrap();
        assert_eq!(ok.status(), StatusCode::NO_CONTENT);
        assert_eq!(ok.headers()[header::ACCESS_CONTROL_ALLOW_METHODS], "GET, HEAD, OPTIONS");
        assert_eq!(ok.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://a.example");
        assert_eq!(ok.headers()[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert!(policy.preflight(&Method::GET, &headers, || None).is_none());
        let unknown = policy.preflight(&Method::OPTIONS, &headers, || None).unwrap();
        assert_eq!(unknown.headers()[header::ACCESS_CONTROL_ALLOW_METHODS], "POST");
        headers.insert(header::ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert_eq!(
            policy.preflight(&Method::OPTIONS, &headers, || None).unwrap().status(),
            StatusCode::FORBIDDEN
        );

        let mut response = Response::new(bytes::Bytes::new().into());
        policy.decorate(Some(&HeaderValue::from_static("https://evil.example")), &mut response);
        assert!(!response.headers().contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
        assert_eq!(response.headers()[header::VARY], "Origin");
        policy.decorate(Some(&HeaderValue::from_static("https://a.example")), &mut response);
        assert_eq!(response.headers()[header::ACCESS_CONTROL_EXPOSE_HEADERS], "x-request-id");
    }
}
