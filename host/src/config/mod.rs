//! Configuration: `.env` (dotenvy) under the process environment, parsed and validated into
//! [`Config`], whose fields cannot hold invalid values. Every problem is reported at once.

pub mod cors;
mod sections;
mod vars;

pub use self::sections::{Identity, Limits, Publishing, Reload, Server};
use self::vars::Vars;
use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
};

/// Every variable plughost reads, with its default (empty: none) and what it is for.
/// `.env.example` documents exactly these; a unit test keeps the two in step.
pub const KNOWN_VARS: &[(&str, &str, &str)] = &[
    ("PLUGINS_DIR", "./plugins", "folder scanned for plugin .so files"),
    ("BIND", "127.0.0.1:8080", "address and port to listen on (port 0 picks a free one)"),
    ("DATA_DIR", "./data", "folder for shadow copies of loaded plugins and state"),
    ("NUM_URL_PARMS", "10", "how many positional URL segments a call may carry"),
    ("URL_PARM<n>", "parm_<n>", "kwarg name of the n-th positional URL segment"),
    ("MAX_BODY_BYTES", "1048576", "largest request body accepted (413 beyond)"),
    (
        "MAX_RESPONSE_BYTES",
        "67108864",
        "largest response body a plugin may return (502 beyond)",
    ),
    ("MAX_HEADER_BYTES", "65536", "largest total size of request headers (431 beyond)"),
    ("CALL_TIMEOUT_MS", "30000", "deadline of one plugin call (504 beyond)"),
    (
        "SHUTDOWN_GRACE_MS",
        "30000",
        "how long in-flight requests may take to finish on shutdown",
    ),
    (
        "HEADER_READ_TIMEOUT_MS",
        "15000",
        "a connection must send a request's headers within this long, also while idle between requests",
    ),
    (
        "BODY_READ_TIMEOUT_MS",
        "30000",
        "a request's body must arrive within this long of its headers (408 beyond)",
    ),
    (
        "MAX_CONNECTIONS",
        "0",
        "connections served at once (0: three quarters of the file limit, at most 65536); more wait in the backlog",
    ),
    (
        "TENANT_MAX_MODULES",
        "16",
        "modules one tenant may have served at once (each keeps a warm worker)",
    ),
    (
        "TENANT_MAX_STORED_MB",
        "256",
        "bytes of plugins one tenant may publish, in MiB (413 beyond)",
    ),
    (
        "TENANT_MAX_BUFFERED_MB",
        "256",
        "bytes of one tenant's responses held for clients that have not read them yet, in MiB (503 beyond)",
    ),
    (
        "INLINE_CALL_MAX_US",
        "200",
        "a function whose last 32 calls each took at most this long is called on the async thread (0: never)",
    ),
    (
        "RELOAD_DEBOUNCE_MS",
        "50",
        "quiet time after a write before a changed plugin file is loaded",
    ),
    (
        "RESCAN_INTERVAL_MS",
        "2000",
        "how often the plugins folder is rescanned for missed changes",
    ),
    (
        "WATCH_MODE",
        "inotify",
        "inotify: react to file events at once; poll: rescan every RESCAN_INTERVAL_MS only (network file systems)",
    ),
    (
        "RELOAD_LEAK_BUDGET_MB",
        "256",
        "recycle the process when unloadable old plugin images exceed this (0: never)",
    ),
    (
        "ADMIN_ISOLATION",
        "inprocess",
        "inprocess: the admin's plugins run in the server process; process: in sandbox workers too",
    ),
    (
        "SANDBOX_MEMORY_MB",
        "512",
        "address space a plugin may add to its sandbox worker's own (the call fails beyond it)",
    ),
    ("SANDBOX_CPU_SECS", "300", "CPU seconds one sandbox worker may use in its life"),
    ("SANDBOX_OPEN_FILES", "64", "open files one sandbox worker may hold"),
    ("SANDBOX_MAX_CONCURRENCY", "4", "calls at once per sandboxed module (429 beyond)"),
    ("SANDBOX_WARM_WORKERS", "1", "workers kept ready per sandboxed module"),
    ("SANDBOX_IDLE_SECS", "60", "idle workers beyond the warm ones stop after this long"),
    ("SANDBOX_MAX_CALLS", "10000", "a worker is retired after this many calls"),
    (
        "SANDBOX_MAX_GROWTH_MB",
        "64",
        "a worker is retired when its memory grew by this much",
    ),
    (
        "SANDBOX_QUARANTINE_CRASHES",
        "5",
        "a module whose workers crash this often within the window is quarantined",
    ),
    ("SANDBOX_QUARANTINE_WINDOW_SECS", "60", "the window of SANDBOX_QUARANTINE_CRASHES"),
    (
        "PUBLISH_MAX_BYTES",
        "67108864",
        "largest plugin accepted by PUT /rest/admin/plugins/<name> (413 beyond)",
    ),
    (
        "PUBLISH_SYNC_MS",
        "2000",
        "how often plugins published through the store are synced into PLUGINS_DIR (0: never)",
    ),
    (
        "PLUGIN_PUBKEYS",
        "",
        "ed25519 public keys, base64, comma-separated: only plugins signed by one of them load or publish (empty: unsigned allowed)",
    ),
    ("ADMIN_UUID", "", "the admin's UUID (required)"),
    ("ADMIN_TOTP_SECRET", "", "the admin's TOTP secret, base32 (required)"),
    (
        "SECRET_KEY",
        "",
        "64 hex characters: encrypts secrets at rest, signs tokens (required; plughost keygen)",
    ),
    ("TOKEN_TTL_SECS", "900", "lifetime of a bearer token from POST /rest/auth/token"),
    ("AUTH_MAX_FAILURES", "5", "failed proofs per UUID before 429"),
    (
        "AUTH_LOCKOUT_SECS",
        "60",
        "window of AUTH_MAX_FAILURES, and how long the lockout lasts",
    ),
    (
        "MONGODB_URI",
        "",
        "use MongoDB instead of the embedded store (e.g. mongodb://127.0.0.1:27017)",
    ),
    ("MONGODB_DATABASE", "plughost", "database name on MongoDB"),
    (
        "CORS_ALLOW_ORIGIN",
        "",
        "browser origins allowed to call: *, or a comma-separated list (empty: CORS off)",
    ),
    (
        "CORS_ALLOW_HEADERS",
        "authorization,content-type,x-plughost-uuid,x-plughost-totp,x-request-id",
        "request headers a browser may send",
    ),
    ("CORS_EXPOSE_HEADERS", "x-request-id", "response headers a browser script may read"),
    ("CORS_MAX_AGE", "600", "seconds a browser may cache a preflight answer"),
    (
        "CORS_ALLOW_CREDENTIALS",
        "false",
        "whether browsers may send cookies and credentials (never with *)",
    ),
    ("PLUGHOST_STAGE", "", "stage name (dev, prod…): .env.<stage> is read over .env"),
    (
        "JOBS_CONCURRENCY",
        "0",
        "asynchronous jobs run at once by this replica (0: one per CPU)",
    ),
    (
        "JOBS_POLL_MS",
        "500",
        "how often an idle replica looks for jobs queued through others",
    ),
    ("JOB_TIMEOUT_MS", "900000", "deadline of one attempt of an asynchronous job"),
    (
        "JOB_MAX_ATTEMPTS",
        "3",
        "attempts of a job whose call fails with a 5xx, 429 or timeout",
    ),
    (
        "JOB_BACKOFF_MS",
        "1000",
        "wait before a job's first retry; doubled for each next one, with jitter",
    ),
    (
        "JOB_LEASE_MS",
        "15000",
        "how long a replica that stopped renewing keeps its job before another takes it",
    ),
    ("JOB_RETENTION_SECS", "86400", "how long ended jobs and idempotency keys are kept"),
    ("JOB_MAX_DELAY_SECS", "86400", "the longest X-Plughost-Delay-Secs accepted"),
    (
        "CALLBACK_ALLOW",
        "",
        "hosts X-Callback-Url may name: names, *.suffix, *, addresses, networks (empty: callbacks off)",
    ),
    (
        "CALLBACK_MAX_ATTEMPTS",
        "5",
        "deliveries of a callback tried before it is given up (back-off as for jobs)",
    ),
    (
        "METRICS",
        "admin",
        "admin: GET /metrics for the admin (and on METRICS_BIND); off: no request metrics",
    ),
    (
        "METRICS_BIND",
        "",
        "also serve /metrics without credentials on this address, e.g. 127.0.0.1:9100 (empty: no)",
    ),
    ("LOG_FORMAT", "pretty", "pretty (for a terminal) or json (for machines)"),
    ("RUST_LOG", "info", "log filter, e.g. info,plughost=debug"),
];

const MAX_URL_PARMS: usize = 64;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// The validated configuration, section by section. The app hands each part its own section
/// (or, for the HTTP front, [`HttpSettings`]); nothing below the app reads all of it.
#[derive(Debug, Clone)]
pub struct Config {
    /// Folders, addresses and metrics.
    pub server: Server,
    /// Kwarg names of the positional URL segments, in order (`NUM_URL_PARMS` of them).
    pub url_params: Vec<String>,
    /// The bounds of a connection, a request and a call.
    pub limits: Limits,
    /// How the plugins folder is watched, and the leak budget.
    pub reload: Reload,
    pub log_format: LogFormat,
    pub log_filter: String,
    /// The admin, tokens, the failure budget and the store.
    pub identity: Identity,
    pub secret_key: plughost_tenancy::secrets::SecretKey,
    pub cors: Option<cors::Cors>,
    /// `PLUGHOST_STAGE`, when set.
    pub stage: Option<String>,
    /// Whether the admin's own plugins run in sandbox workers too (`ADMIN_ISOLATION=process`).
    pub admin_isolation: bool,
    /// `SANDBOX_*`.
    pub sandbox: plughost_sandbox::Settings,
    /// `WATCH_MODE=poll`: rescans only, no inotify.
    pub watch_poll: bool,
    /// Publishing through the store, and signatures.
    pub publishing: Publishing,
    /// Asynchronous jobs: workers, deadlines, retries, retention.
    pub jobs: crate::jobs::JobSettings,
}

/// What the HTTP front needs: the request and call bounds, the URL parameters, publishing,
/// and what the built-ins report.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub limits: Limits,
    pub url_params: Vec<String>,
    pub publishing: Publishing,
    pub cors: Option<cors::Cors>,
    pub log_format: LogFormat,
    pub stage: Option<String>,
    /// Whether `/metrics` answers (`METRICS`).
    pub metrics: bool,
    pub admin_isolation: bool,
    /// `None` when recycling for leaks is off.
    pub leak_budget_bytes: Option<u64>,
}

/// `SANDBOX_*`, from `var` (key, default → value).
fn sandbox_settings(v: &mut Vars<'_>) -> plughost_sandbox::Settings {
    plughost_sandbox::Settings {
        memory_bytes: v.number("SANDBOX_MEMORY_MB", 32, 1 << 20) << 20,
        cpu_seconds: v.number("SANDBOX_CPU_SECS", 1, 86_400 * 365),
        open_files: v.number("SANDBOX_OPEN_FILES", 16, 1 << 20),
        max_concurrency: v.number("SANDBOX_MAX_CONCURRENCY", 1, 1024) as u32,
        warm_workers: v.number("SANDBOX_WARM_WORKERS", 0, 1024) as u32,
        idle_timeout: v.secs("SANDBOX_IDLE_SECS", 1, 86_400),
        max_calls: v.number("SANDBOX_MAX_CALLS", 1, u64::from(u32::MAX)),
        max_growth_bytes: v.number("SANDBOX_MAX_GROWTH_MB", 1, 1 << 20) << 20,
        quarantine_crashes: v.number("SANDBOX_QUARANTINE_CRASHES", 1, 1_000_000) as u32,
        quarantine_window: v.secs("SANDBOX_QUARANTINE_WINDOW_SECS", 1, 86_400),
        tenant_max_modules: v.number("TENANT_MAX_MODULES", 1, 100_000) as usize,
        tenant_max_stored_bytes: v.number("TENANT_MAX_STORED_MB", 1, 1 << 20) << 20,
        tenant_max_buffered_bytes: v.number("TENANT_MAX_BUFFERED_MB", 1, 1 << 20) << 20,
    }
}

impl Config {
    /// Where the identities are stored: MongoDB when `MONGODB_URI` is set, else the embedded file.
    pub fn store_place(&self) -> plughost_tenancy::tenants::StorePlace {
        match &self.identity.mongodb {
            Some((uri, database)) => plughost_tenancy::tenants::StorePlace::Mongo {
                uri: uri.clone(),
                database: database.clone(),
            },
            None => plughost_tenancy::tenants::StorePlace::Embedded(self.server.data_dir.join("plughost.sqlite3")),
        }
    }

    /// The identity store, opened, with its timings in the metrics and tenants' limits checked
    /// by the sandbox's rules.
    pub async fn open_tenancy(&self) -> Result<plughost_tenancy::tenants::Tenancy, plughost_tenancy::StoreError> {
        plughost_tenancy::tenants::Tenancy::open(
            &self.store_place(),
            self.secret_key.clone(),
            std::sync::Arc::new(crate::metrics::StoreMetrics),
            |limits| Ok(plughost_sandbox::check_overrides(limits)?),
        )
        .await
    }

    /// The limits a sandboxed module runs under when its tenant overrides none.
    pub fn sandbox_limits(&self) -> plughost_sandbox::Limits {
        plughost_sandbox::Limits {
            call_timeout: self.limits.call_timeout,
            memory_bytes: self.sandbox.memory_bytes,
            max_concurrency: self.sandbox.max_concurrency,
            max_response_bytes: self.limits.max_response_bytes,
        }
    }
}

/// The sandbox settings of a process with no `.env` (`plughost check`): the defaults, or the
/// `SANDBOX_*` of the environment when they are all valid.
pub fn sandbox_defaults() -> plughost_sandbox::Settings {
    let from_env = |key: &str| std::env::var(key).ok();
    let mut vars = Vars::new(&from_env);
    let settings = sandbox_settings(&mut vars);
    if vars.errors.is_empty() {
        settings
    } else {
        sandbox_settings(&mut Vars::new(&|_| None))
    }
}

/// Every problem found in the configuration, one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "the configuration has {} problem(s):", self.0.len())?;
        for problem in &self.0 {
            writeln!(f, "  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Reads `env_file` (when given it must exist; otherwise `./.env` is read if present),
    /// then the process environment over it, then `overrides` (command-line flags) over both.
    pub fn load(env_file: Option<&Path>, overrides: &[(&str, String)]) -> Result<Config, ConfigErrors> {
        let mut vars = HashMap::new();
        let file = env_file.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(".env"));
        read_env_file(&file, env_file.is_some(), &mut vars)?;
        // A stage layers `.env.<stage>` (beside the env file) over it; the environment wins over both.
        let stage = std::env::var("PLUGHOST_STAGE")
            .ok()
            .or_else(|| vars.get("PLUGHOST_STAGE").cloned())
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty());
        if let Some(stage) = stage {
            if !stage.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return Err(ConfigErrors(vec![format!(
                    "PLUGHOST_STAGE={stage} is not a stage name: use letters, digits, '-' and '_' (e.g. dev, prod)"
                )]));
            }
            let name = format!(
                "{}.{stage}",
                file.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| ".env".to_owned())
            );
            let stage_file = file.with_file_name(name);
            if !stage_file.is_file() {
                return Err(ConfigErrors(vec![format!(
                    "PLUGHOST_STAGE={stage} but {} does not exist: create it or unset PLUGHOST_STAGE",
                    stage_file.display()
                )]));
            }
            read_env_file(&stage_file, true, &mut vars)?;
            vars.insert("PLUGHOST_STAGE".to_owned(), stage);
        }
        for (key, value) in std::env::vars() {
            vars.insert(key, value);
        }
        for (key, value) in overrides {
            vars.insert((*key).to_owned(), value.clone());
        }
        Config::from_vars(&|key| vars.get(key).cloned())
    }

    /// Builds a configuration from a variable lookup; pure, so that it can be unit tested.
    pub fn from_vars(get: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
        let mut v = Vars::new(get);
        let server = sections::server(&mut v);
        let url_params = sections::url_params(&mut v);
        let limits = sections::limits(&mut v);
        let reload = sections::reload(&mut v);
        let log_format = sections::log_format(&mut v);
        let (identity, secret_key) = sections::identity(&mut v);
        let cors = sections::cors(&mut v);
        let admin_isolation = sections::admin_isolation(&mut v);
        let sandbox = sandbox_settings(&mut v);
        let watch_poll = sections::watch_poll(&mut v);
        let publishing = sections::publishing(&mut v);
        let stage = sections::stage(&mut v);
        let log_filter = sections::log_filter(&mut v);
        let mut jobs = sections::jobs(&mut v);
        let Some(secret_key) = secret_key.filter(|_| v.errors.is_empty()) else {
            return Err(ConfigErrors(v.errors));
        };
        jobs.callback_key = crate::jobs::CallbackKey(secret_key.callback_key());
        Ok(Config {
            server,
            url_params,
            limits,
            reload,
            log_format,
            log_filter,
            identity,
            secret_key,
            cors,
            stage,
            admin_isolation,
            sandbox,
            watch_poll,
            publishing,
            jobs,
        })
    }

    /// The HTTP front's part.
    pub fn http_settings(&self) -> HttpSettings {
        HttpSettings {
            limits: self.limits.clone(),
            url_params: self.url_params.clone(),
            publishing: self.publishing.clone(),
            cors: self.cors.clone(),
            log_format: self.log_format,
            stage: self.stage.clone(),
            metrics: self.server.metrics,
            admin_isolation: self.admin_isolation,
            leak_budget_bytes: self.reload.leak_budget_bytes,
        }
    }
}

/// Reads one env file into `vars`; a missing file is an error only when `required`.
fn read_env_file(file: &Path, required: bool, vars: &mut HashMap<String, String>) -> Result<(), ConfigErrors> {
    match dotenvy::from_path_iter(file) {
        Ok(iter) => {
            for item in iter {
                match item {
                    Ok((key, value)) => {
                        vars.insert(key, value);
                    }
                    Err(err) => return Err(ConfigErrors(vec![format!("{} is not a valid env file: {err}", file.display())])),
                }
            }
            Ok(())
        }
        Err(err) if required || !err.not_found() => Err(ConfigErrors(vec![format!("cannot read env file {}: {err}", file.display())])),
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
        let dir = std::env::temp_dir();
        let mut vars: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        vars.entry("PLUGINS_DIR".into()).or_insert_with(|| dir.display().to_string());
        vars.entry("ADMIN_UUID".into())
            .or_insert_with(|| "0b6f6b8e-4b3a-4f8e-9a57-3f1a2c9d7e10".into());
        vars.entry("ADMIN_TOTP_SECRET".into())
            .or_insert_with(|| "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP".into());
        vars.entry("SECRET_KEY".into()).or_insert_with(|| "ab".repeat(32));
        Config::from_vars(&|key| vars.get(key).cloned())
    }

    #[test]
    fn defaults_name_ten_url_params() {
        let config = config(&[]).unwrap();
        assert_eq!(config.url_params.len(), 10);
        assert_eq!(config.url_params[0], "parm_1");
        assert_eq!(config.url_params[9], "parm_10");
        assert_eq!(config.server.bind, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(config.limits.call_timeout, Duration::from_secs(30));
    }

    #[test]
    fn url_param_names_are_configurable() {
        let config = config(&[("NUM_URL_PARMS", "2"), ("URL_PARM1", "id"), ("URL_PARM2", " slug ")]).unwrap();
        assert_eq!(config.url_params, vec!["id", "slug"]);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let errors = config(&[
            ("NUM_URL_PARMS", "3"),
            ("URL_PARM1", "my-param"),
            ("URL_PARM3", "parm_2"),
            ("URL_PARM5", "x"),
            ("BIND", "localhost"),
            ("CALL_TIMEOUT_MS", "soon"),
            ("LOG_FORMAT", "xml"),
            ("PLUGINS_DIR", "/does/not/exist"),
        ])
        .unwrap_err();
        let text = errors.to_string();
        for needle in [
            "URL_PARM1=my-param",
            "URL_PARM3=parm_2 repeats URL_PARM2",
            "URL_PARM5 is set but NUM_URL_PARMS=3",
            "BIND=localhost",
            "CALL_TIMEOUT_MS=soon",
            "LOG_FORMAT=xml",
            "PLUGINS_DIR=/does/not/exist",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
        assert_eq!(errors.0.len(), 7);
    }

    #[test]
    fn identity_settings_are_required_and_checked() {
        let errors = config(&[
            ("ADMIN_UUID", "admin"),
            ("ADMIN_TOTP_SECRET", "short"),
            ("SECRET_KEY", "00"),
            ("MONGODB_URI", "localhost"),
        ])
        .unwrap_err();
        let text = errors.to_string();
        for needle in [
            "ADMIN_UUID=admin is not a UUID",
            "ADMIN_TOTP_SECRET",
            "SECRET_KEY must be 32 bytes",
            "MONGODB_URI=localhost",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
        let mongo = config(&[("MONGODB_URI", "mongodb://127.0.0.1:27017")]).unwrap();
        assert_eq!(
            mongo.identity.mongodb,
            Some(("mongodb://127.0.0.1:27017".to_owned(), "plughost".to_owned()))
        );
    }

    #[test]
    fn num_url_parms_is_bounded() {
        assert!(config(&[("NUM_URL_PARMS", "65")]).is_err());
        assert_eq!(config(&[("NUM_URL_PARMS", "0")]).unwrap().url_params.len(), 0);
    }

    #[test]
    fn env_example_documents_every_variable() {
        let example = include_str!("../../../.env.example");
        for (key, _, _) in KNOWN_VARS {
            let key = key.replace("<n>", "1");
            assert!(example.contains(&format!("{key}=")), ".env.example lacks {key}");
        }
    }
}
