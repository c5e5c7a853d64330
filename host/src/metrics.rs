//! Prometheus metrics: one registry per process, recorded on the request path and by the loader,
//! the authenticator and the store, and rendered in the text format at `GET /metrics`.
//!
//! Labels stay bounded: routes are templates, modules and functions are the names of loaded
//! plugins (never raw paths), methods outside the standard ones become `OTHER`, and callers are
//! counted by kind, never by UUID.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        LazyLock,
    },
    time::Duration,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};

/// The metrics of this process.
pub(crate) static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Whether requests are measured (`METRICS=off` turns it off, e.g. to measure what it costs).
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns request measurement on or off for this process.
pub(crate) fn set_enabled(enabled: bool) {
    ENABLED.store(enabled, Ordering::Relaxed);
}

/// Whether request measurement is on.
pub(crate) fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub route: &'static str,
    pub module: String,
    pub function: String,
    pub method: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct LatencyLabels {
    pub route: &'static str,
    pub module: String,
    pub function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StateLabels {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StoreLabels {
    pub store: &'static str,
    pub operation: &'static str,
    pub outcome: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// One plugin function's series, resolved once and kept with the loaded module, so that the hot
/// path records a call without hashing label strings. The series themselves live in the
/// families: a reloaded module finds and continues the same ones.
#[derive(Default)]
pub(crate) struct FunctionMetrics {
    latency: std::sync::OnceLock<Histogram>,
    counters: std::sync::RwLock<Vec<(&'static str, u16, Counter)>>,
}

/// Every series plughost exports.
pub(crate) struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: HistogramFamily<LatencyLabels>,
    pub in_flight: Gauge,
    pub plugin_loads: Counter,
    pub plugin_reloads: Counter,
    pub plugin_load_failures: Counter,
    pub plugin_unloads: Counter,
    pub plugins_loaded: Gauge,
    pub images_mapped: Gauge,
    pub images_leaked: Gauge,
    pub images_leaked_bytes: Gauge,
    pub auth_failures: Family<ReasonLabels, Counter>,
    pub store_latency: HistogramFamily<StoreLabels>,
    pub sandbox_worker_starts: Counter,
    pub sandbox_worker_crashes: Counter,
    pub sandbox_call_timeouts: Counter,
    pub sandbox_quarantines: Counter,
    pub sandbox_workers: Gauge,
    pub sandbox_worker_start: Histogram,
    pub jobs: Family<StateLabels, Gauge>,
    pub jobs_oldest_due: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub jobs_running: Gauge,
    pub job_attempts: Family<OutcomeLabels, Counter>,
    pub callbacks: Family<OutcomeLabels, Counter>,
    pub schedule_lag: Gauge<f64, std::sync::atomic::AtomicU64>,
}

fn request_histogram() -> Histogram {
    // 50 µs … ~1.6 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

fn store_histogram() -> Histogram {
    // 100 µs … ~3.3 s.
    Histogram::new(exponential_buckets(0.000_1, 2.0, 16))
}

/// The labels of one call of a plugin function, borrowed: they are copied only the first time a
/// function sees a method and status.
pub(crate) struct CallLabels<'a> {
    pub route: &'static str,
    pub module: &'a str,
    pub function: &'a str,
    pub method: &'static str,
    pub status: u16,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("plughost");
        let metrics = Metrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(request_histogram as fn() -> Histogram),
            in_flight: Gauge::default(),
            plugin_loads: Counter::default(),
            plugin_reloads: Counter::default(),
            plugin_load_failures: Counter::default(),
            plugin_unloads: Counter::default(),
            plugins_loaded: Gauge::default(),
            images_mapped: Gauge::default(),
            images_leaked: Gauge::default(),
            images_leaked_bytes: Gauge::default(),
            auth_failures: Family::default(),
            store_latency: Family::new_with_constructor(store_histogram as fn() -> Histogram),
            sandbox_worker_starts: Counter::default(),
            sandbox_worker_crashes: Counter::default(),
            sandbox_call_timeouts: Counter::default(),
            sandbox_quarantines: Counter::default(),
            sandbox_workers: Gauge::default(),
            // 1 ms … ~8 s.
            sandbox_worker_start: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            jobs: Family::default(),
            jobs_oldest_due: Gauge::default(),
            jobs_running: Gauge::default(),
            job_attempts: Family::default(),
            callbacks: Family::default(),
            schedule_lag: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "http_requests",
            "HTTP requests answered, by route template, module, function, method and status",
            metrics.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from request to response head, by route template, module and function",
            metrics.latency.clone(),
        );
        registry.register("http_requests_in_flight", "Requests being answered now", metrics.in_flight.clone());
        registry.register(
            "plugin_loads",
            "Plugin files loaded and routed for the first time",
            metrics.plugin_loads.clone(),
        );
        registry.register(
            "plugin_reloads",
            "Plugin files whose new version replaced a served one",
            metrics.plugin_reloads.clone(),
        );
        registry.register(
            "plugin_load_failures",
            "Plugin files (or new versions) refused: incomplete, wrong ABI, bad manifest, name collision",
            metrics.plugin_load_failures.clone(),
        );
        registry.register(
            "plugin_unloads",
            "Plugin files removed and unrouted",
            metrics.plugin_unloads.clone(),
        );
        registry.register("plugins_loaded", "Modules routed now", metrics.plugins_loaded.clone());
        registry.register(
            "plugin_images_mapped",
            "Library images mapped into this process, routed or not",
            metrics.images_mapped.clone(),
        );
        registry.register(
            "plugin_images_leaked",
            "Library images mapped but no longer routed (freed when the process is recycled)",
            metrics.images_leaked.clone(),
        );
        registry.register(
            "plugin_images_leaked_bytes",
            "Size of the library images no longer routed",
            metrics.images_leaked_bytes.clone(),
        );
        registry.register(
            "auth_failures",
            "Requests whose credentials were refused, by reason",
            metrics.auth_failures.clone(),
        );
        registry.register(
            "store_operation_duration_seconds",
            "Identity store operations, by store, operation and outcome",
            metrics.store_latency.clone(),
        );
        registry.register(
            "sandbox_worker_starts",
            "Sandbox worker processes started",
            metrics.sandbox_worker_starts.clone(),
        );
        registry.register(
            "sandbox_worker_crashes",
            "Sandbox workers that died during a call (signal, abort, exit)",
            metrics.sandbox_worker_crashes.clone(),
        );
        registry.register(
            "sandbox_call_timeouts",
            "Sandboxed calls past their deadline (the worker is killed)",
            metrics.sandbox_call_timeouts.clone(),
        );
        registry.register(
            "sandbox_quarantines",
            "Sandboxed modules quarantined for crashing too often",
            metrics.sandbox_quarantines.clone(),
        );
        registry.register(
            "sandbox_workers",
            "Sandbox worker processes running now",
            metrics.sandbox_workers.clone(),
        );
        registry.register(
            "sandbox_worker_start_seconds",
            "Cold start of a sandbox worker: process start, confinement, library load, manifest",
            metrics.sandbox_worker_start.clone(),
        );
        registry.register("jobs", "Jobs in the store by state (all replicas)", metrics.jobs.clone());
        registry.register(
            "jobs_oldest_due_seconds",
            "How long the oldest due job has waited to start (the queue's lag)",
            metrics.jobs_oldest_due.clone(),
        );
        registry.register("jobs_running", "Jobs this replica runs now", metrics.jobs_running.clone());
        registry.register(
            "job_attempts",
            "Job attempts ended on this replica, by outcome: succeeded, failed, retried, dead",
            metrics.job_attempts.clone(),
        );
        registry.register(
            "callbacks",
            "Callback deliveries by outcome: delivered, retried, failed (the receiver kept failing), refused (CALLBACK_ALLOW after DNS)",
            metrics.callbacks.clone(),
        );
        registry.register(
            "schedule_lag_seconds",
            "How late the latest schedule tick fired by this replica was queued, after its time",
            metrics.schedule_lag.clone(),
        );
        Metrics { registry, ..metrics }
    }

    /// Records one answered request.
    pub(crate) fn observe_request(&self, labels: RequestLabels, elapsed: Duration) {
        let latency = LatencyLabels {
            route: labels.route,
            module: labels.module.clone(),
            function: labels.function.clone(),
        };
        self.requests.get_or_create(&labels).inc();
        self.latency.get_or_create(&latency).observe(elapsed.as_secs_f64());
    }

    /// Records one call of a plugin function, through its resolved series.
    pub(crate) fn observe_call(&self, resolved: &FunctionMetrics, call: CallLabels<'_>, elapsed: Duration) {
        let CallLabels {
            route,
            module,
            function,
            method,
            status,
        } = call;
        let found = resolved
            .counters
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(m, s, _)| *m == method && *s == status)
            .map(|(_, _, counter)| counter.inc())
            .is_some();
        if !found {
            let labels = RequestLabels {
                route,
                module: module.to_owned(),
                function: function.to_owned(),
                method,
                status,
            };
            let counter = self.requests.get_or_create_owned(&labels);
            counter.inc();
            let mut counters = resolved.counters.write().unwrap_or_else(|p| p.into_inner());
            if !counters.iter().any(|(m, s, _)| *m == method && *s == status) {
                counters.push((method, status, counter));
            }
        }
        resolved
            .latency
            .get_or_init(|| {
                self.latency.get_or_create_owned(&LatencyLabels {
                    route,
                    module: module.to_owned(),
                    function: function.to_owned(),
                })
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Records one refused credential.
    pub(crate) fn auth_failure(&self, reason: &'static str) {
        self.auth_failures.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Records one store operation.
    pub(crate) fn store_operation(&self, store: &'static str, operation: &'static str, ok: bool, elapsed: Duration) {
        let outcome = if ok { "ok" } else { "error" };
        self.store_latency
            .get_or_create(&StoreLabels { store, operation, outcome })
            .observe(elapsed.as_secs_f64());
    }

    /// The text exposition (OpenMetrics, which Prometheus scrapes).
    pub(crate) fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if let Err(err) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!("the metrics could not be rendered: {err}");
        }
        out
    }
}

/// The content type of [`Metrics::render`]'s output.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A method as a bounded label value.
pub(crate) fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// The identity store's operations, timed in [`METRICS`].
pub(crate) struct StoreMetrics;

impl plughost_tenancy::store::StoreObserver for StoreMetrics {
    fn operation(&self, store: &'static str, operation: &'static str, ok: bool, elapsed: Duration) {
        METRICS.store_operation(store, operation, ok, elapsed);
    }
}

/// The sandbox's worker events, counted in [`METRICS`].
pub(crate) struct SandboxMetrics;

impl plughost_sandbox::Observer for SandboxMetrics {
    fn worker_spawned(&self) {
        METRICS.sandbox_worker_starts.inc();
        METRICS.sandbox_workers.inc();
    }

    fn worker_loaded(&self, took: std::time::Duration) {
        METRICS.sandbox_worker_start.observe(took.as_secs_f64());
    }

    fn worker_gone(&self) {
        METRICS.sandbox_workers.dec();
    }

    fn worker_crashed(&self) {
        METRICS.sandbox_worker_crashes.inc();
    }

    fn module_quarantined(&self) {
        METRICS.sandbox_quarantines.inc();
    }

    fn call_timed_out(&self) {
        METRICS.sandbox_call_timeouts.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(method: &'static str, status: u16) -> CallLabels<'static> {
        CallLabels {
            route: "/rest/services/{module}/{function}/",
            module: "m",
            function: "f",
            method,
            status,
        }
    }

    #[test]
    fn renders_the_series_it_recorded() {
        let metrics = Metrics::new();
        metrics.observe_request(
            RequestLabels {
                route: "/rest/services/{module}/{function}/",
                module: "module1".to_owned(),
                function: "echo".to_owned(),
                method: "GET",
                status: 200,
            },
            Duration::from_micros(120),
        );
        metrics.auth_failure("totp_replayed");
        metrics.plugin_loads.inc();
        let text = metrics.render();
        assert!(text.contains(
            r#"plughost_http_requests_total{route="/rest/services/{module}/{function}/",module="module1",function="echo",method="GET",status="200"} 1"#
        ));
        assert!(text.contains(
            r#"plughost_http_request_duration_seconds_count{route="/rest/services/{module}/{function}/",module="module1",function="echo"} 1"#
        ));
        assert!(text.contains(r#"plughost_auth_failures_total{reason="totp_replayed"} 1"#));
        assert!(text.contains("plughost_plugin_loads_total 1"));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn resolved_function_series_are_the_family_series() {
        let metrics = Metrics::new();
        let first = FunctionMetrics::default();
        let after_reload = FunctionMetrics::default();
        metrics.observe_call(&first, call("GET", 200), Duration::from_micros(10));
        metrics.observe_call(&first, call("GET", 200), Duration::from_micros(10));
        metrics.observe_call(&after_reload, call("GET", 200), Duration::from_micros(10));
        metrics.observe_call(&after_reload, call("POST", 422), Duration::from_micros(10));
        let text = metrics.render();
        assert!(text.contains(r#"plughost_http_requests_total{route="/rest/services/{module}/{function}/",module="m",function="f",method="GET",status="200"} 3"#), "{text}");
        assert!(text.contains(r#"method="POST",status="422"} 1"#));
        assert!(text.contains(
            r#"plughost_http_request_duration_seconds_count{route="/rest/services/{module}/{function}/",module="m",function="f"} 4"#
        ));
    }

    #[test]
    fn unusual_methods_share_one_label() {
        assert_eq!(method_label(&http::Method::GET), "GET");
        assert_eq!(method_label(&http::Method::from_bytes(b"BREW").unwrap()), "OTHER");
    }
}
