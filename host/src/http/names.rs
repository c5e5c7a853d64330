//! Header names the host reads or writes on every request, parsed once: looking a header up by
//! `&str` parses the name again on each call.

use http::HeaderName;

pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) static X_PLUGHOST_UUID: HeaderName = HeaderName::from_static("x-plughost-uuid");
pub(crate) static X_PLUGHOST_TOTP: HeaderName = HeaderName::from_static("x-plughost-totp");
pub(crate) static PREFER: HeaderName = HeaderName::from_static("prefer");
pub(crate) static PREFERENCE_APPLIED: HeaderName = HeaderName::from_static("preference-applied");
pub(crate) static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
pub(crate) static X_CALLBACK_URL: HeaderName = HeaderName::from_static("x-callback-url");
pub(crate) static X_PLUGHOST_DELAY_SECS: HeaderName = HeaderName::from_static("x-plughost-delay-secs");
