//! The clock identities are checked against: Unix seconds, and the RFC 3339 text records show.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `time` as RFC 3339 text, to the second (`2026-12-02T18:30:00Z`).
pub fn timestamp(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}
