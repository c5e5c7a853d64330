//! The route templates the access log and the metrics label requests with: bounded labels, never
//! the raw path. The router (`http`) says which one a request took.

/// A call of a plugin function.
pub const SERVICES: &str = "/rest/services/{module}/{function}/";
/// A module's or the server's function listing.
pub const DIR: &str = "/rest/services/__dir__/";
/// A `/rest/services/…` path that resolved to no function.
pub const UNRESOLVED: &str = "/rest/services/…";
