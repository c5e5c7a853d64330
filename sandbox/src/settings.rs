//! Settings and limits: the `SANDBOX_*` settings, the limits one module runs under, and a
//! tenant's overrides of them.

use std::time::Duration;

use serde::Serialize;

use crate::error::LimitsError;

/// The sandbox settings from `.env` (`SANDBOX_*`).
#[derive(Debug, Clone)]
pub struct Settings {
    pub memory_bytes: u64,
    pub cpu_seconds: u64,
    pub open_files: u64,
    pub max_concurrency: u32,
    pub warm_workers: u32,
    pub idle_timeout: Duration,
    pub max_calls: u64,
    pub max_growth_bytes: u64,
    pub quarantine_crashes: u32,
    pub quarantine_window: Duration,
    /// Per tenant: modules served at once (each has a warm worker), bytes published, and bytes
    /// of responses held for clients that have not read them yet.
    pub tenant_max_modules: usize,
    pub tenant_max_stored_bytes: u64,
    pub tenant_max_buffered_bytes: u64,
}

/// The limits one module runs under: the settings, with its tenant's overrides.
#[derive(Debug, Clone, Serialize)]
pub struct Limits {
    #[serde(rename = "call_timeout_ms", serialize_with = "as_millis")]
    pub call_timeout: Duration,
    pub memory_bytes: u64,
    pub max_concurrency: u32,
    pub max_response_bytes: usize,
}

pub(crate) fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

impl Limits {
    /// The defaults, with the overrides a tenant record carries (`call_timeout_ms`, `memory_mb`,
    /// `max_concurrency`, `max_response_bytes`); an unusable override is reported and ignored.
    pub fn with_overrides(mut self, overrides: &serde_json::Value) -> (Limits, Vec<String>) {
        let mut problems = Vec::new();
        let Some(map) = overrides.as_object() else {
            return (self, problems);
        };
        for (key, value) in map {
            let number = value.as_u64().filter(|n| *n > 0);
            match (key.as_str(), number) {
                ("call_timeout_ms", Some(n)) if n <= 3_600_000 => self.call_timeout = Duration::from_millis(n),
                ("memory_mb", Some(n)) if (16..=1 << 20).contains(&n) => self.memory_bytes = n << 20,
                ("max_concurrency", Some(n)) if n <= 1024 => self.max_concurrency = n as u32,
                ("max_response_bytes", Some(n)) if n <= 1 << 34 => self.max_response_bytes = n as usize,
                _ => problems.push(format!("the limit {key}={value} is not usable")),
            }
        }
        (self, problems)
    }
}

/// Checks a tenant's limit overrides: a JSON object whose keys are known and whose values fit.
pub fn check_overrides(overrides: &serde_json::Value) -> Result<(), LimitsError> {
    if !overrides.is_object() {
        return Err(LimitsError(
            "limits are a JSON object such as {\"memory_mb\": 256, \"call_timeout_ms\": 5000}".to_owned(),
        ));
    }
    let defaults = Limits {
        call_timeout: Duration::from_secs(1),
        memory_bytes: 1 << 30,
        max_concurrency: 1,
        max_response_bytes: 1,
    };
    let (_, problems) = defaults.with_overrides(overrides);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(LimitsError(format!(
            "{}; known limits: call_timeout_ms (1–3600000), memory_mb (16–1048576), max_concurrency (1–1024), max_response_bytes (1–17179869184)",
            problems.join("; ")
        )))
    }
}

/// A tenant as the loader needs it.
#[derive(Debug, Clone)]
pub struct TenantInfo {
    pub active: bool,
    pub limits: serde_json::Value,
}
