//! The server: binds its listener (port 0 in tests), serves connections with hyper, gives every
//! request an id and an access-log line, and shuts down gracefully.

mod connection;
pub use connection::raise_file_limit;
mod request;

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use ::http::Request;
use anyhow::Context;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tokio::net::TcpListener;

use crate::{
    config::Config,
    http::{self},
    plugins::Plugins,
    reload::{self, ReloadSettings},
    AppState, Role,
};

/// How long a stopping server keeps answering on open connections (with `Connection: close`)
/// before it closes idle ones, so that keep-alive clients move to the next process calmly.
const DRAIN: Duration = Duration::from_millis(300);

/// How often the sandbox's view of tenants (active or not, limits) is refreshed from the store.
const TENANT_REFRESH: Duration = Duration::from_secs(1);

/// Starts the sandbox: learns the tenants, probes what confinement this machine enforces, and
/// keeps the tenants up to date.
async fn start_sandbox(
    config: &Config,
    tenancy: &Arc<plughost_tenancy::tenants::Tenancy>,
) -> anyhow::Result<Arc<plughost_sandbox::Sandbox>> {
    let program = std::env::current_exe().context("cannot find the plughost executable for sandbox workers")?;
    let sandbox = plughost_sandbox::Sandbox::start(
        program,
        &config.server.data_dir,
        config.sandbox.clone(),
        config.sandbox_limits(),
        Arc::new(crate::metrics::SandboxMetrics),
    )
    .with_context(|| {
        format!(
            "cannot set up the sandbox under {}",
            config.server.data_dir.join("sandbox").display()
        )
    })?;
    crate::plugins::refresh_tenants(&sandbox, tenancy, true).await;
    let probing = sandbox.clone();
    let layers = tokio::task::spawn_blocking(move || probing.probe()).await.unwrap_or_default();
    for layer in &layers {
        if layer.active {
            tracing::info!(layer = %layer.name, "sandbox layer active: {}", layer.detail);
        } else {
            tracing::warn!(layer = %layer.name, "sandbox layer unavailable: {}", layer.detail);
        }
    }
    let (weak, tenancy) = (Arc::downgrade(&sandbox), tenancy.clone());
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(TENANT_REFRESH);
        loop {
            ticks.tick().await;
            let Some(sandbox) = weak.upgrade() else { return };
            crate::plugins::refresh_tenants(&sandbox, &tenancy, false).await;
        }
    });
    Ok(sandbox)
}

/// Keeps the store, the shadow copies and the tenants' folders out of reach of sandbox workers,
/// which run under uids of their own when the host is root: Landlock governs opens, not `stat`,
/// so a folder a worker may not search is what keeps it from probing file names. (When the host
/// is not root, workers share its uid and only seccomp and Landlock stand between them.) A
/// tenants' folder made later is made private when its first module loads.
fn keep_private(data_dir: &std::path::Path, plugins_dir: &std::path::Path) {
    plughost_sandbox::make_private(data_dir);
    plughost_sandbox::make_private(&plugins_dir.join(crate::plugins::TENANTS));
}

/// The plugins folder loaded (tenants' modules into the sandbox) and watched from then on; a
/// leak past RELOAD_LEAK_BUDGET_MB recycles the process when a supervisor can.
async fn load_plugins(config: &Config, sandbox: Arc<plughost_sandbox::Sandbox>, role: Role) -> anyhow::Result<Arc<Plugins>> {
    let plugins = Arc::new(
        Plugins::new(&config.server.data_dir)
            .with_sandbox(sandbox, config.admin_isolation)
            .with_trusted_keys(config.publishing.trusted_keys.clone()),
    );
    if let Some(keys) = &config.publishing.trusted_keys {
        tracing::info!(
            keys = keys.len(),
            "signed plugins required: only files with a valid .sig by a key in PLUGIN_PUBKEYS load"
        );
    }
    let folder = config.server.plugins_dir.clone();
    let loading = plugins.clone();
    tokio::task::spawn_blocking(move || loading.load_folder(&folder))
        .await
        .context("the plugin loader failed")?
        .with_context(|| format!("cannot read PLUGINS_DIR {}", config.server.plugins_dir.display()))?;
    let settings = ReloadSettings {
        dir: config.server.plugins_dir.clone(),
        debounce: config.reload.reload_debounce,
        rescan_every: config.reload.rescan_interval,
        leak_budget_bytes: config.reload.leak_budget_bytes,
        poll_only: config.watch_poll,
    };
    let on_budget: Box<dyn Fn(u64) + Send> = match role {
        Role::Worker => Box::new(|_| crate::supervisor::request_recycle()),
        Role::Standalone => Box::new(|_| {
            tracing::warn!(
                "plughost runs without its supervisor (--no-supervisor), so it cannot recycle itself: restart it to free memory"
            );
        }),
    };
    reload::spawn(plugins.clone(), settings, on_budget)
        .with_context(|| format!("cannot watch PLUGINS_DIR {}", config.server.plugins_dir.display()))?;
    Ok(plugins)
}

/// The listener (the supervisor's socket, or BIND) and the METRICS_BIND one.
async fn bind(config: &Config, listener: Option<std::net::TcpListener>) -> anyhow::Result<(TcpListener, Option<TcpListener>)> {
    let listener = match listener {
        Some(listener) => {
            listener
                .set_nonblocking(true)
                .context("cannot use the inherited listening socket")?;
            TcpListener::from_std(listener).context("cannot use the inherited listening socket")?
        }
        None => TcpListener::bind(config.server.bind)
            .await
            .with_context(|| format!("cannot listen on {} (BIND): is another process using it?", config.server.bind))?,
    };
    let metrics_listener = match config.server.metrics_bind {
        Some(addr) => {
            Some(bind_shared(addr).with_context(|| format!("cannot listen on {addr} (METRICS_BIND): is another program using it?"))?)
        }
        None => None,
    };
    Ok((listener, metrics_listener))
}

/// A bound, loaded server, ready to run.
pub struct App {
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    limits: crate::config::Limits,
    state: Arc<AppState>,
}

impl App {
    /// Loads the plugins folder, starts watching it, and binds the listener (or takes over
    /// `listener`, the supervisor's socket).
    pub async fn build(config: Config, listener: Option<std::net::TcpListener>, role: Role) -> anyhow::Result<App> {
        std::fs::create_dir_all(&config.server.data_dir)
            .with_context(|| format!("cannot create DATA_DIR {}", config.server.data_dir.display()))?;
        keep_private(&config.server.data_dir, &config.server.plugins_dir);
        connection::raise_file_limit();
        crate::metrics::set_enabled(config.server.metrics);
        let tenancy = Arc::new(config.open_tenancy().await.context("cannot open the identity store")?);
        record_admin(
            tenancy.clone(),
            config.identity.admin_uuid.clone(),
            config.identity.admin_totp_secret.clone(),
        )
        .await;
        let sandbox = start_sandbox(&config, &tenancy).await?;
        let plugins = load_plugins(&config, sandbox, role).await?;
        let (listener, metrics_listener) = bind(&config, listener).await?;
        let auth = Arc::new(plughost_tenancy::auth::Authenticator::new(
            tenancy.clone(),
            config.identity.admin_uuid.clone(),
            config.identity.token_ttl,
            config.identity.auth_max_failures,
            config.identity.auth_lockout,
        ));
        let jobs = crate::jobs::Jobs::new(tenancy.store.clone(), config.jobs.clone());
        let state = Arc::new(AppState::new(config.http_settings(), plugins, auth, jobs, role));
        state.jobs.start(Arc::new(http::jobs::CallExecutor(Arc::downgrade(&state))));
        state
            .jobs
            .start_scheduler(Arc::new(http::schedules::ScheduleTicker(Arc::downgrade(&state))));
        if let Some(every) = config.publishing.publish_sync {
            crate::publish::spawn_sync(
                tenancy.store.clone(),
                config.server.plugins_dir.clone(),
                &config.server.data_dir,
                every,
                state.sync_now.clone(),
            );
        }
        Ok(App {
            listener,
            metrics_listener,
            limits: config.limits,
            state,
        })
    }

    /// The address actually bound (the real port when `BIND` asked for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The address of the `METRICS_BIND` listener, if there is one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` completes, then stops accepting and lets in-flight requests finish
    /// (for at most `SHUTDOWN_GRACE_MS`).
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        if let Some(listener) = self.metrics_listener {
            tokio::spawn(serve_metrics(listener, self.state.clone()));
        }
        let graceful = GracefulShutdown::new();
        let mut shutdown = std::pin::pin!(shutdown);
        let header_read_timeout = self.limits.header_read_timeout;
        let max_connections = self.limits.max_connections.unwrap_or_else(connection::connections_for_file_limit);
        tracing::info!(
            max_connections,
            header_read_timeout_ms = header_read_timeout.as_millis() as u64,
            body_read_timeout_ms = self.limits.body_read_timeout.as_millis() as u64,
            "connection limits"
        );
        // A permit per connection: past the cap, connections wait in the listen backlog instead
        // of taking the descriptors the server needs for its store, plugins and workers.
        let permits = Arc::new(tokio::sync::Semaphore::new(max_connections));
        loop {
            let permit = tokio::select! {
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                () = &mut shutdown => break,
            };
            let (stream, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(err) => {
                        // Out of file descriptors and the like: wait a little rather than spin.
                        tracing::warn!("accept failed: {err}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            connection::spawn(stream, peer, permit, &self.state, &self.limits, graceful.watcher());
        }
        drop(self.listener);
        drain(&self.state, self.limits.shutdown_grace, graceful).await;
        Ok(())
    }
}

/// Stops gracefully: answers on open connections with `Connection: close` for a moment, then
/// waits up to `grace` (SHUTDOWN_GRACE_MS) for the requests in flight.
async fn drain(state: &AppState, grace: Duration, graceful: GracefulShutdown) {
    tracing::info!("shutting down: no new connections; waiting up to {grace:?} for requests in flight");
    state.draining.store(true, Ordering::Relaxed);
    // Jobs stop being claimed at once; those running get the same grace as requests.
    let jobs = state.jobs.clone();
    let stopping_jobs = tokio::spawn(async move { jobs.stop(grace).await });
    tokio::time::sleep(DRAIN.min(grace)).await;
    if tokio::time::timeout(grace.saturating_sub(DRAIN), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after {grace:?}; exiting anyway");
    }
    let _ = stopping_jobs.await;
}

/// Binds `addr` so that the next worker can bind it too while this one drains (`SO_REUSEPORT`).
fn bind_shared(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(128)
}

/// `METRICS_BIND`: `GET /metrics` without credentials, nothing else.
async fn serve_metrics(listener: TcpListener, state: Arc<AppState>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::warn!("metrics listener: accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let state = state.clone();
            async move {
                let response = match (request.method(), http::route(request.uri().path())) {
                    (&::http::Method::GET | &::http::Method::HEAD, http::Route::Metrics) => http::builtins::metrics_response(&state).await,
                    (_, http::Route::Metrics) => {
                        http::error::ApiError::method_not_allowed(request.method(), "/metrics", "GET, HEAD".to_owned()).into_response()
                    }
                    _ => http::error::ApiError::not_found("ROUTE_NOT_FOUND", "this address serves only GET /metrics (METRICS_BIND)")
                        .into_response(),
                };
                Ok::<_, Infallible>(response)
            }
        });
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Records the configured admin in the store; if the store is unreachable, keeps trying in the
/// background (authentication fails closed meanwhile, public functions are served).
async fn record_admin(tenancy: Arc<plughost_tenancy::tenants::Tenancy>, uuid: String, secret: String) {
    if let Err(err) = tenancy.record_admin(&uuid, &secret).await {
        tracing::warn!("the admin could not be recorded in the store yet ({err}); retrying in the background");
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                match tenancy.record_admin(&uuid, &secret).await {
                    Ok(()) => {
                        tracing::info!("the admin is recorded in the store");
                        break;
                    }
                    Err(err) => tracing::debug!("the admin is not recorded yet: {err}"),
                }
            }
        });
    }
}
