//! plughost serves the functions of compiled plugins as REST endpoints.
//!
//! A request flows top-down: [`server`] accepts it and wraps it (request id, header limit, CORS,
//! access log, metrics); `http::route` names its route and `http::serve` answers it. A
//! `/rest/services/…` path is resolved against the `registry` (built by `plugins` from files the
//! [`loader`] loaded, swapped atomically, read without locks); `kwargs` and
//! `plughost_runtime::params` turn the body, query and URL into typed kwargs; `dispatch` calls
//! the plugin in this process or through its sandbox pool under a deadline; every layer's typed
//! error becomes one JSON shape in `http::error`. [`config`] turns `.env` into a validated
//! [`config::Config`] first and hands each part its own section. `reload` watches the plugins
//! folder; [`supervisor`] keeps a worker process serving and replaces it, without downtime, when
//! old plugin images have leaked too much memory.

pub(crate) mod access;
pub mod cli;
pub mod config;
pub(crate) mod dispatch;
pub(crate) mod http;
pub mod jobs;
pub(crate) mod kwargs;
pub mod loader;
pub mod logwriter;
pub(crate) mod metrics;
pub(crate) mod plugins;
pub(crate) mod publish;
pub(crate) mod registry;
pub(crate) mod reload;
pub mod scaffold;
pub mod server;
pub mod signing;
pub mod supervisor;

use std::sync::{atomic::AtomicBool, Arc};

/// Whether this process serves alone or as a worker under `plughost serve`'s supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Standalone,
    Worker,
}

/// What every request handler shares.
pub(crate) struct AppState {
    /// The HTTP front's settings (the app keeps the rest of the configuration).
    pub http: config::HttpSettings,
    pub plugins: Arc<plugins::Plugins>,
    pub auth: Arc<plughost_tenancy::auth::Authenticator>,
    pub role: Role,
    pub started_at: std::time::SystemTime,
    /// Set while shutting down: responses then carry `Connection: close`.
    pub draining: AtomicBool,
    /// Wakes this replica's sync of published plugins at once after a publish through it.
    pub sync_now: Arc<tokio::sync::Notify>,
    /// Asynchronous jobs: queued here, run by any replica.
    pub jobs: Arc<jobs::Jobs>,
}

impl AppState {
    pub(crate) fn new(
        http: config::HttpSettings,
        plugins: Arc<plugins::Plugins>,
        auth: Arc<plughost_tenancy::auth::Authenticator>,
        jobs: Arc<jobs::Jobs>,
        role: Role,
    ) -> AppState {
        AppState {
            jobs,
            sync_now: Arc::new(tokio::sync::Notify::new()),
            http,
            plugins,
            auth,
            role,
            started_at: std::time::SystemTime::now(),
            draining: AtomicBool::new(false),
        }
    }
}
