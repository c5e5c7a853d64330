//! The configuration read section by section, in the order problems are reported. Each
//! section reads its variables through [`Vars`], which knows their defaults (from
//! [`super::KNOWN_VARS`]) and collects every problem.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use super::{cors, vars::Vars, LogFormat};

/// Where plughost finds its plugins and keeps its state, where it listens, and its metrics.
#[derive(Debug, Clone)]
pub struct Server {
    pub plugins_dir: PathBuf,
    pub bind: SocketAddr,
    pub data_dir: PathBuf,
    pub metrics: bool,
    pub metrics_bind: Option<SocketAddr>,
}

/// `PLUGINS_DIR`, `BIND`, `DATA_DIR`, `METRICS`, `METRICS_BIND`.
pub(super) fn server(v: &mut Vars<'_>) -> Server {
    let plugins_dir = PathBuf::from(v.text("PLUGINS_DIR"));
    // Absolute, so that paths from the watcher and from directory listings compare equal.
    let plugins_dir = match std::fs::canonicalize(&plugins_dir) {
        Ok(path) if path.is_dir() => path,
        _ => {
            v.error(format!(
                "PLUGINS_DIR={} is not a folder: create it, or point PLUGINS_DIR at the folder holding your plugin .so files",
                plugins_dir.display()
            ));
            plugins_dir
        }
    };
    let bind_text = v.text("BIND");
    let bind = bind_text.parse::<SocketAddr>().unwrap_or_else(|_| {
        v.error(format!(
            "BIND={bind_text} is not an address and port such as 127.0.0.1:8080 or 0.0.0.0:80"
        ));
        SocketAddr::from(([127, 0, 0, 1], 8080))
    });
    let data_dir = PathBuf::from(v.text("DATA_DIR"));
    let metrics = match v.text("METRICS").to_ascii_lowercase().as_str() {
        "admin" | "on" => true,
        "off" => false,
        other => {
            v.error(format!("METRICS={other} is not a metrics mode: use admin or off"));
            true
        }
    };
    let metrics_text = v.text("METRICS_BIND");
    let metrics_bind = match metrics_text.trim() {
        "" => None,
        text => match text.parse::<SocketAddr>() {
            Ok(addr) if !metrics => {
                v.error(format!("METRICS_BIND={addr} is set but METRICS=off: unset one of them"));
                None
            }
            Ok(addr) if addr == bind && addr.port() != 0 => {
                v.error(format!(
                    "METRICS_BIND={addr} is the same address as BIND: give metrics their own port"
                ));
                None
            }
            Ok(addr) => Some(addr),
            Err(_) => {
                v.error(format!("METRICS_BIND={text} is not an address and port such as 127.0.0.1:9100"));
                None
            }
        },
    };
    Server {
        plugins_dir,
        bind,
        data_dir,
        metrics,
        metrics_bind,
    }
}

/// `NUM_URL_PARMS` and the `URL_PARM<n>` names.
pub(super) fn url_params(v: &mut Vars<'_>) -> Vec<String> {
    let num_url_parms = v.number("NUM_URL_PARMS", 0, super::MAX_URL_PARMS as u64) as usize;
    let mut url_params: Vec<String> = Vec::with_capacity(num_url_parms);
    for i in 1..=num_url_parms {
        let key = format!("URL_PARM{i}");
        let name = v.text(&key);
        if !plughost_runtime::manifest::is_identifier(&name) {
            v.error(format!(
                "{key}={name} is not a valid parameter name: use letters, digits and '_' (no dashes), not starting with a digit"
            ));
        } else if name == "__map__" {
            v.error(format!(
                "{key}=__map__ is reserved for renaming URL parameters: choose another name"
            ));
        } else if let Some(first) = url_params.iter().position(|n| *n == name) {
            v.error(format!(
                "{key}={name} repeats URL_PARM{}: every URL parameter needs its own name",
                first + 1
            ));
        }
        url_params.push(name);
    }
    for i in (num_url_parms + 1)..=(num_url_parms + 20) {
        if v.is_set(&format!("URL_PARM{i}")) {
            v.error(format!(
                "URL_PARM{i} is set but NUM_URL_PARMS={num_url_parms}: raise NUM_URL_PARMS to at least {i} or remove URL_PARM{i}"
            ));
        }
    }
    url_params
}

/// The bounds of one request and one call.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_response_bytes: usize,
    pub max_header_bytes: usize,
    pub call_timeout: Duration,
    pub inline_call_max: Option<Duration>,
    pub shutdown_grace: Duration,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub max_connections: Option<usize>,
}

/// `MAX_*_BYTES`, the timeouts, `INLINE_CALL_MAX_US`, `MAX_CONNECTIONS`.
pub(super) fn limits(v: &mut Vars<'_>) -> Limits {
    let max_body_bytes = v.number("MAX_BODY_BYTES", 0, 1 << 34) as usize;
    let max_response_bytes = v.number("MAX_RESPONSE_BYTES", 1, 1 << 34) as usize;
    let max_header_bytes = v.number("MAX_HEADER_BYTES", 1024, 1 << 20) as usize;
    let call_timeout = v.millis("CALL_TIMEOUT_MS", 1, 3_600_000);
    let inline_us = v.number("INLINE_CALL_MAX_US", 0, 100_000);
    let inline_call_max = (inline_us > 0).then(|| Duration::from_micros(inline_us));
    let shutdown_grace = v.millis("SHUTDOWN_GRACE_MS", 0, 3_600_000);
    let header_read_timeout = v.millis("HEADER_READ_TIMEOUT_MS", 100, 3_600_000);
    let body_read_timeout = v.millis("BODY_READ_TIMEOUT_MS", 100, 3_600_000);
    let max_connections = v.number("MAX_CONNECTIONS", 0, 1_000_000);
    let max_connections = (max_connections > 0).then_some(max_connections as usize);
    Limits {
        max_body_bytes,
        max_response_bytes,
        max_header_bytes,
        call_timeout,
        inline_call_max,
        shutdown_grace,
        header_read_timeout,
        body_read_timeout,
        max_connections,
    }
}

/// How changes in the plugins folder are picked up.
#[derive(Debug, Clone)]
pub struct Reload {
    pub reload_debounce: Duration,
    pub rescan_interval: Duration,
    pub leak_budget_bytes: Option<u64>,
}

/// `RELOAD_DEBOUNCE_MS`, `RESCAN_INTERVAL_MS`, `RELOAD_LEAK_BUDGET_MB`.
pub(super) fn reload(v: &mut Vars<'_>) -> Reload {
    let reload_debounce = v.millis("RELOAD_DEBOUNCE_MS", 0, 60_000);
    let rescan_interval = v.millis("RESCAN_INTERVAL_MS", 100, 3_600_000);
    let budget_mb = v.number("RELOAD_LEAK_BUDGET_MB", 0, 1 << 20);
    let leak_budget_bytes = (budget_mb > 0).then_some(budget_mb * 1024 * 1024);
    Reload {
        reload_debounce,
        rescan_interval,
        leak_budget_bytes,
    }
}

/// `LOG_FORMAT`.
pub(super) fn log_format(v: &mut Vars<'_>) -> LogFormat {
    match v.text("LOG_FORMAT").to_ascii_lowercase().as_str() {
        "pretty" => LogFormat::Pretty,
        "json" => LogFormat::Json,
        other => {
            v.error(format!("LOG_FORMAT={other} is not a log format: use pretty or json"));
            LogFormat::Pretty
        }
    }
}

/// The admin's identity, the server key, tokens, the failure budget, and the store.
#[derive(Debug, Clone)]
pub struct Identity {
    pub admin_uuid: String,
    pub admin_totp_secret: String,
    pub token_ttl: Duration,
    pub auth_max_failures: u32,
    pub auth_lockout: Duration,
    pub mongodb: Option<(String, String)>,
}

/// `ADMIN_UUID`, `ADMIN_TOTP_SECRET`, `SECRET_KEY`, `TOKEN_TTL_SECS`, `AUTH_*`, `MONGODB_*`.
/// The secret key comes apart: `None` when it is missing or bad (the problem is recorded).
pub(super) fn identity(v: &mut Vars<'_>) -> (Identity, Option<plughost_tenancy::secrets::SecretKey>) {
    let admin_uuid = v.text("ADMIN_UUID");
    let admin_uuid = match uuid::Uuid::parse_str(&admin_uuid) {
        Ok(uuid) => uuid.hyphenated().to_string(),
        Err(_) if admin_uuid.is_empty() => {
            v.error("ADMIN_UUID is missing: set it to a UUID (`plughost keygen --env` prints a fresh admin identity)".to_owned());
            admin_uuid
        }
        Err(_) => {
            v.error(format!(
                "ADMIN_UUID={admin_uuid} is not a UUID such as 0b6f6b8e-4b3a-4f8e-9a57-3f1a2c9d7e10"
            ));
            admin_uuid
        }
    };
    let admin_totp_secret = v.text("ADMIN_TOTP_SECRET");
    if admin_totp_secret.is_empty() {
        v.error("ADMIN_TOTP_SECRET is missing: set it to a base32 TOTP secret (`plughost keygen --env` prints one)".to_owned());
    } else if let Err(why) = plughost_tenancy::totp::check_secret(&admin_totp_secret) {
        v.error(format!("ADMIN_TOTP_SECRET {why}"));
    }
    let secret_key_text = v.text("SECRET_KEY");
    let secret_key = match plughost_tenancy::secrets::SecretKey::from_hex(&secret_key_text) {
        Ok(key) => Some(key),
        Err(_) if secret_key_text.is_empty() => {
            v.error("SECRET_KEY is missing: set it to 64 hexadecimal characters (`plughost keygen` prints a fresh one)".to_owned());
            None
        }
        Err(why) => {
            v.error(format!("SECRET_KEY {why}: `plughost keygen` prints a fresh one"));
            None
        }
    };
    let token_ttl = v.secs("TOKEN_TTL_SECS", 1, 86_400 * 30);
    let auth_max_failures = v.number("AUTH_MAX_FAILURES", 1, 1_000_000) as u32;
    let auth_lockout = v.secs("AUTH_LOCKOUT_SECS", 1, 86_400);
    let mongodb_uri = v.text("MONGODB_URI");
    let mongodb = if mongodb_uri.is_empty() {
        None
    } else if !(mongodb_uri.starts_with("mongodb://") || mongodb_uri.starts_with("mongodb+srv://")) {
        v.error(format!(
            "MONGODB_URI={mongodb_uri} is not a MongoDB URI: it starts with mongodb:// or mongodb+srv://"
        ));
        None
    } else {
        let database = v.text("MONGODB_DATABASE");
        if database.is_empty() || database.contains(['/', '.', ' ', '$', '\\', '"']) {
            v.error(format!("MONGODB_DATABASE={database} is not a valid database name"));
        }
        Some((mongodb_uri, database))
    };
    let identity = Identity {
        admin_uuid,
        admin_totp_secret,
        token_ttl,
        auth_max_failures,
        auth_lockout,
        mongodb,
    };
    (identity, secret_key)
}

/// `CORS_*`: the policy, or `None` when `CORS_ALLOW_ORIGIN` is empty.
pub(super) fn cors(v: &mut Vars<'_>) -> Option<cors::Cors> {
    let credentials = match v.text("CORS_ALLOW_CREDENTIALS").to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => true,
        "false" | "0" | "no" => false,
        other => {
            v.error(format!("CORS_ALLOW_CREDENTIALS={other} is not true or false"));
            false
        }
    };
    let cors_max_age = v.number("CORS_MAX_AGE", 0, 86_400);
    cors::Cors::parse(
        &v.text("CORS_ALLOW_ORIGIN"),
        &v.text("CORS_ALLOW_HEADERS"),
        &v.text("CORS_EXPOSE_HEADERS"),
        cors_max_age,
        credentials,
    )
    .unwrap_or_else(|problems| {
        v.errors.extend(problems);
        None
    })
}

/// `ADMIN_ISOLATION`: whether the admin's plugins run in the sandbox too.
pub(super) fn admin_isolation(v: &mut Vars<'_>) -> bool {
    let admin_isolation = match v.text("ADMIN_ISOLATION").to_ascii_lowercase().as_str() {
        "inprocess" | "in-process" => false,
        "process" => true,
        other => {
            v.error(format!("ADMIN_ISOLATION={other} is not an isolation: use inprocess or process"));
            false
        }
    };
    admin_isolation
}

/// `WATCH_MODE`: whether the plugins folder is polled instead of watched.
pub(super) fn watch_poll(v: &mut Vars<'_>) -> bool {
    let watch_poll = match v.text("WATCH_MODE").to_ascii_lowercase().as_str() {
        "inotify" | "events" => false,
        "poll" => true,
        other => {
            v.error(format!("WATCH_MODE={other} is not a watch mode: use inotify or poll"));
            false
        }
    };
    watch_poll
}

/// Publishing through the store.
#[derive(Debug, Clone)]
pub struct Publishing {
    pub publish_max_bytes: usize,
    pub publish_sync: Option<Duration>,
    pub trusted_keys: Option<std::sync::Arc<crate::signing::TrustedKeys>>,
}

/// `PUBLISH_MAX_BYTES`, `PUBLISH_SYNC_MS`, `PLUGIN_PUBKEYS`.
pub(super) fn publishing(v: &mut Vars<'_>) -> Publishing {
    let publish_max_bytes = v.number("PUBLISH_MAX_BYTES", 1024, 512 << 20) as usize;
    let sync_ms = v.number("PUBLISH_SYNC_MS", 0, 3_600_000);
    let publish_sync = (sync_ms > 0).then(|| Duration::from_millis(sync_ms.max(100)));
    let trusted_keys = match crate::signing::TrustedKeys::parse(&v.text("PLUGIN_PUBKEYS")) {
        Ok(keys) => keys.map(std::sync::Arc::new),
        Err(why) => {
            v.error(format!(
                "PLUGIN_PUBKEYS has a bad {why}: list base64 ed25519 public keys, comma-separated"
            ));
            None
        }
    };
    Publishing {
        publish_max_bytes,
        publish_sync,
        trusted_keys,
    }
}

/// `PLUGHOST_STAGE`.
pub(super) fn stage(v: &mut Vars<'_>) -> Option<String> {
    Some(v.text("PLUGHOST_STAGE")).filter(|s| !s.is_empty())
}

/// `RUST_LOG`, checked.
pub(super) fn log_filter(v: &mut Vars<'_>) -> String {
    let log_filter = v.text("RUST_LOG");
    if let Err(err) = tracing_subscriber::EnvFilter::try_new(&log_filter) {
        v.error(format!(
            "RUST_LOG={log_filter} is not a log filter ({err}): try info or info,plughost=debug"
        ));
    }
    log_filter
}

/// `JOBS_*` and `JOB_*`.
pub(super) fn jobs(v: &mut Vars<'_>) -> crate::jobs::JobSettings {
    let concurrency = v.number("JOBS_CONCURRENCY", 0, 4096) as usize;
    let concurrency = if concurrency == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        concurrency
    };
    crate::jobs::JobSettings {
        concurrency,
        poll: v.millis("JOBS_POLL_MS", 10, 60_000),
        timeout: v.millis("JOB_TIMEOUT_MS", 1, 24 * 3_600_000),
        max_attempts: v.number("JOB_MAX_ATTEMPTS", 1, 100) as i64,
        backoff: v.millis("JOB_BACKOFF_MS", 1, 3_600_000),
        lease: v.millis("JOB_LEASE_MS", 300, 3_600_000),
        retention: Duration::from_secs(v.number("JOB_RETENTION_SECS", 1, 366 * 86_400)),
        max_delay: Duration::from_secs(v.number("JOB_MAX_DELAY_SECS", 0, 366 * 86_400)),
        callbacks: match crate::jobs::CallbackPolicy::parse(&v.text("CALLBACK_ALLOW")) {
            Ok(policy) => policy,
            Err(why) => {
                v.error(format!("CALLBACK_ALLOW: {why}"));
                crate::jobs::CallbackPolicy::default()
            }
        },
        callback_attempts: v.number("CALLBACK_MAX_ATTEMPTS", 1, 100) as u32,
        // Derived from SECRET_KEY once it is read.
        callback_key: crate::jobs::CallbackKey::default(),
    }
}
