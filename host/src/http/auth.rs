//! Credentials and policy at the HTTP edge: who calls, whether they may, and the token exchange.

use http::{header, HeaderMap, HeaderValue, StatusCode};
use plugin_api::Visibility;
use serde_json::json;
use warp::reply::Response;

use super::error::{json_response, ApiError};
use crate::AppState;
use plughost_tenancy::{
    auth::{AuthError, Caller, Credentials},
    throttle::Source,
};

/// The caller the request proves, if it carries credentials.
pub(crate) async fn caller(state: &AppState, headers: &HeaderMap) -> Result<Option<Caller>, ApiError> {
    let credentials = credentials(headers).map_err(refused)?;
    state.auth.authenticate(credentials, source()).await.map_err(refused)
}

/// What the request presents: a bearer token, or a UUID and a TOTP code, or nothing.
fn credentials(headers: &HeaderMap) -> Result<Credentials<'_>, AuthError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let text = value.to_str().unwrap_or("").trim();
        if text.is_empty() {
            return Err(AuthError::Missing(
                "the Authorization header is empty; send `Authorization: Bearer <token>`".to_owned(),
            ));
        }
        let mut words = text.split_ascii_whitespace();
        return match (words.next(), words.next(), words.next()) {
            (Some(scheme), Some(token), None) if scheme.eq_ignore_ascii_case("bearer") => Ok(Credentials::Bearer(token)),
            (Some(scheme), None, None) if scheme.eq_ignore_ascii_case("bearer") => {
                Err(AuthError::TokenInvalid("`Bearer` is not followed by a token".to_owned()))
            }
            _ => Err(AuthError::TokenInvalid(
                "the Authorization header must be `Bearer <token>`".to_owned(),
            )),
        };
    }
    fn text(value: &HeaderValue) -> &str {
        value.to_str().unwrap_or("").trim()
    }
    let uuid = headers.get(&super::names::X_PLUGHOST_UUID).map(text);
    let code = headers.get(&super::names::X_PLUGHOST_TOTP).map(text);
    match (uuid, code) {
        (None, None) => Ok(Credentials::None),
        (Some(uuid), Some(code)) => Ok(Credentials::Code { uuid, code }),
        _ => Err(AuthError::Missing(
            "send both X-Plughost-UUID and X-Plughost-TOTP, or `Authorization: Bearer <token>`".to_owned(),
        )),
    }
}

/// The client the request in progress comes from, for the credentials' failure budget.
fn source() -> Source {
    crate::access::current_peer().map_or(Source::LOCAL, Source::of)
}

/// Counts a refused credential, then answers it.
fn refused(err: AuthError) -> ApiError {
    crate::metrics::METRICS.auth_failure(err.reason());
    err.into()
}

/// Whether `caller` may call a function of this visibility.
pub(crate) fn may_call(visibility: Visibility, caller: Option<&Caller>) -> bool {
    match visibility {
        Visibility::Public => true,
        Visibility::Tenant => caller.is_some(),
        Visibility::Admin => caller.is_some_and(Caller::is_admin),
    }
}

/// Whether `caller` may use `module` at all: a tenant's module belongs to that tenant and to the
/// admin; the admin's modules are everyone's (each function's visibility still applies).
pub(crate) fn may_use(module: &crate::loader::LoadedModule, caller: Option<&Caller>) -> bool {
    owner_admits(module.owner.as_deref(), caller)
}

/// Whether a module of `owner` (a tenant's UUID; `None`: the admin's) admits `caller`.
fn owner_admits(owner: Option<&str>, caller: Option<&Caller>) -> bool {
    match (owner, caller) {
        (None, _) => true,
        (Some(_), Some(Caller::Admin { .. })) => true,
        (Some(owner), Some(Caller::Tenant { uuid })) => uuid == owner,
        (Some(_), None) => false,
    }
}

/// `Ok` if `caller` may call; the right 401 or 403 otherwise.
pub(crate) fn require(visibility: Visibility, caller: Option<&Caller>, what: &str) -> Result<(), ApiError> {
    match (may_call(visibility, caller), caller) {
        (true, _) => Ok(()),
        (false, None) => Err({
            crate::metrics::METRICS.auth_failure("missing");
            ApiError::new(
            StatusCode::UNAUTHORIZED,
            "AUTHORIZATION_HEADER_MISSING",
            format!("{what} needs credentials: `Authorization: Bearer <token>` (from POST /rest/auth/token), or X-Plughost-UUID and X-Plughost-TOTP"),
            )
        }),
        (false, Some(_)) => {
            crate::metrics::METRICS.auth_failure("not_admin");
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "FORBIDDEN",
                format!("{what} is for the admin only"),
            ))
        }
    }
}

/// Removes credentials before headers reach a plugin, and tells it who calls. A tenant's module
/// (`untrusted`) gets no cookies or proxy credentials either, and when the admin calls it, only
/// the caller's kind: the admin's UUID is not the tenant's to know.
pub(crate) fn plugin_headers(headers: &HeaderMap, caller: Option<&Caller>, untrusted: bool) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = headers
        .iter()
        .filter(|(name, _)| {
            // Credentials, and what only the host says (who calls, which job and attempt).
            let credential = matches!(
                name.as_str(),
                "authorization"
                    | "x-plughost-totp"
                    | "x-plughost-uuid"
                    | "x-plughost-caller-kind"
                    | "x-plughost-caller-uuid"
                    | "x-plughost-job-id"
                    | "x-plughost-attempt"
            );
            let private = matches!(name.as_str(), "cookie" | "proxy-authorization");
            let withheld = credential || (untrusted && private);
            !withheld
        })
        .filter_map(|(name, value)| Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned())))
        .collect();
    if let Some(caller) = caller {
        let uuid = match caller {
            Caller::Admin { .. } if untrusted => "",
            _ => caller.uuid(),
        };
        out.push(("x-plughost-caller-kind".to_owned(), caller.kind().to_owned()));
        out.push(("x-plughost-caller-uuid".to_owned(), uuid.to_owned()));
    }
    out
}

/// `POST /rest/auth/token` with `{"uuid": …, "totp": …}`.
pub(crate) async fn token(state: &AppState, body: &[u8]) -> Result<Response, ApiError> {
    let parsed: serde_json::Value = serde_json::from_slice(body).map_err(|err| {
        ApiError::bad_request(
            "INVALID_JSON",
            format!("send a JSON object {{\"uuid\": \"…\", \"totp\": \"123456\"}} ({err})"),
        )
    })?;
    let (Some(uuid), Some(code)) = (
        parsed["uuid"].as_str(),
        parsed["totp"]
            .as_str()
            .map(str::to_owned)
            .or_else(|| parsed["totp"].as_u64().map(|n| format!("{n:06}"))),
    ) else {
        return Err(ApiError::bad_request(
            "INVALID_REQUEST",
            "send a JSON object {\"uuid\": \"…\", \"totp\": \"123456\"}",
        ));
    };
    let (token, ttl, caller) = state.auth.exchange(uuid, &code, source()).await.map_err(refused)?;
    let mut response = json_response(
        StatusCode::OK,
        &json!({"token": token, "token_type": "Bearer", "expires_in": ttl.as_secs(), "kind": caller.kind(), "uuid": caller.uuid()}),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| (http::HeaderName::from_static(name), HeaderValue::from_static(value)))
            .collect()
    }

    fn admin() -> Caller {
        Caller::Admin { uuid: "a-1".to_owned() }
    }

    fn tenant(uuid: &str) -> Caller {
        Caller::Tenant { uuid: uuid.to_owned() }
    }

    #[test]
    fn credentials_are_read_from_one_scheme_or_refused() {
        assert_eq!(credentials(&headers(&[])).unwrap(), Credentials::None);
        assert_eq!(
            credentials(&headers(&[("authorization", "Bearer abc")])).unwrap(),
            Credentials::Bearer("abc")
        );
        assert_eq!(
            credentials(&headers(&[("authorization", "bearer  abc ")])).unwrap(),
            Credentials::Bearer("abc")
        );
        assert_eq!(
            credentials(&headers(&[("x-plughost-uuid", " u-1 "), ("x-plughost-totp", "123456")])).unwrap(),
            Credentials::Code {
                uuid: "u-1",
                code: "123456"
            }
        );
        // The Authorization header wins over the code headers.
        assert_eq!(
            credentials(&headers(&[("authorization", "Bearer t"), ("x-plughost-uuid", "u")])).unwrap(),
            Credentials::Bearer("t")
        );
        for (refused, expected) in [
            (headers(&[("authorization", "")]), "AUTHORIZATION_HEADER_MISSING"),
            (headers(&[("authorization", "Bearer")]), "TOKEN_INVALID"),
            (headers(&[("authorization", "Basic dTpw")]), "TOKEN_INVALID"),
            (headers(&[("authorization", "Bearer a b")]), "TOKEN_INVALID"),
            (headers(&[("x-plughost-uuid", "u-1")]), "AUTHORIZATION_HEADER_MISSING"),
            (headers(&[("x-plughost-totp", "123456")]), "AUTHORIZATION_HEADER_MISSING"),
        ] {
            let err = ApiError::from(credentials(&refused).unwrap_err());
            assert_eq!(err.status, StatusCode::UNAUTHORIZED);
            assert_eq!(err.code, expected, "{refused:?}");
        }
    }

    #[test]
    fn visibility_decides_who_may_call() {
        let (admin, tenant) = (admin(), tenant("t-1"));
        for caller in [None, Some(&tenant), Some(&admin)] {
            assert!(may_call(Visibility::Public, caller));
        }
        assert!(!may_call(Visibility::Tenant, None));
        assert!(may_call(Visibility::Tenant, Some(&tenant)));
        assert!(may_call(Visibility::Tenant, Some(&admin)));
        assert!(!may_call(Visibility::Admin, None));
        assert!(!may_call(Visibility::Admin, Some(&tenant)));
        assert!(may_call(Visibility::Admin, Some(&admin)));
    }

    #[test]
    fn a_tenants_module_admits_its_tenant_and_the_admin_only() {
        let (admin, owner, other) = (admin(), tenant("t-1"), tenant("t-2"));
        for caller in [None, Some(&owner), Some(&other), Some(&admin)] {
            assert!(owner_admits(None, caller), "the admin's modules are everyone's");
        }
        assert!(owner_admits(Some("t-1"), Some(&owner)));
        assert!(owner_admits(Some("t-1"), Some(&admin)));
        assert!(!owner_admits(Some("t-1"), Some(&other)));
        assert!(!owner_admits(Some("t-1"), None));
    }

    #[test]
    fn refusals_are_401_without_credentials_and_403_with_the_wrong_ones() {
        assert!(require(Visibility::Public, None, "f").is_ok());
        let missing = require(Visibility::Tenant, None, "function 'f'").unwrap_err();
        assert_eq!(
            (missing.status, missing.code.as_ref()),
            (StatusCode::UNAUTHORIZED, "AUTHORIZATION_HEADER_MISSING")
        );
        assert!(missing.description.starts_with("function 'f' needs credentials"));
        let forbidden = require(Visibility::Admin, Some(&tenant("t-1")), "/metrics").unwrap_err();
        assert_eq!((forbidden.status, forbidden.code.as_ref()), (StatusCode::FORBIDDEN, "FORBIDDEN"));
        assert!(require(Visibility::Admin, Some(&admin()), "/metrics").is_ok());
    }

    #[test]
    fn plugins_never_see_credentials_and_tenants_never_see_the_admin() {
        let sent = headers(&[
            ("authorization", "Bearer secret"),
            ("x-plughost-totp", "123456"),
            ("x-plughost-caller-kind", "admin"),
            ("cookie", "session=1"),
            ("accept", "application/json"),
        ]);
        let names = |out: &[(String, String)]| out.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>();
        let trusted = plugin_headers(&sent, Some(&admin()), false);
        assert_eq!(
            names(&trusted),
            [
                "cookie=session=1",
                "accept=application/json",
                "x-plughost-caller-kind=admin",
                "x-plughost-caller-uuid=a-1"
            ]
        );
        let untrusted = plugin_headers(&sent, Some(&admin()), true);
        assert_eq!(
            names(&untrusted),
            ["accept=application/json", "x-plughost-caller-kind=admin", "x-plughost-caller-uuid="]
        );
        let anonymous = plugin_headers(&sent, None, true);
        assert_eq!(names(&anonymous), ["accept=application/json"]);
    }
}
