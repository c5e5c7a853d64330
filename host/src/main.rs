//! The `plughost` command: `serve` (the default) and `check`.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};
use plughost::{
    config::{Config, LogFormat},
    loader,
    server::App,
    supervisor::{self, WorkerCommand},
    Role,
};
use plughost_runtime::manifest::visibility_name;

#[derive(Parser)]
#[command(
    name = "plughost",
    version,
    about = "Serves the functions of compiled Rust plugins as REST endpoints",
    after_help = "Examples:
  plughost                                   serve ./plugins with ./.env (same as `plughost serve`)
  plughost serve --bind 0.0.0.0:8080 --plugins-dir /srv/plugins
  plughost check target/release/libhello.so
  plughost keygen --env >> .env              a fresh admin identity
  plughost tenant add \"Acme Corp\"
  plughost new orders

Exit codes: 0 success; 1 failure (a plugin refused by `check`, an unknown tenant, a store or
I/O error); 2 bad configuration or arguments (every problem is listed)."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the plugins folder (what a bare `plughost` does).
    #[command(after_help = "Examples:
  plughost serve                                  ./.env, ./plugins, 127.0.0.1:8080
  plughost serve --env-file /etc/plughost/.env --bind 0.0.0.0:80
  PLUGHOST_STAGE=prod plughost serve              .env.prod over .env
  plughost serve --no-supervisor                  one process (no recycling)

Every setting is listed, with its default, in .env.example.")]
    Serve(ServeArgs),
    /// Load a plugin file offline, check its ABI and manifest, and print its endpoints.
    #[command(after_help = "Example:
  plughost check target/release/libhello.so

Exit code 1, with the reason on one line, when the file would be refused by a server.")]
    Check {
        /// The plugin's .so file.
        file: PathBuf,
        /// Also require a valid FILE.sig by one of these base64 ed25519 public keys.
        #[arg(long, value_name = "KEYS", env = "PLUGIN_PUBKEYS")]
        pubkeys: Option<String>,
        /// Map the plugin in this process instead of a confined sandbox worker: its constructors
        /// then run unconfined, as whoever runs this command. Only for plugins you trust.
        #[arg(long)]
        in_process: bool,
    },
    /// Ask the running server (found through DATA_DIR/plughost.pid) to replace its worker process
    /// with a fresh one, without downtime.
    #[command(after_help = "Example:
  plughost recycle --env-file /etc/plughost/.env")]
    Recycle {
        /// Env file to read for DATA_DIR (default: ./.env when present).
        #[arg(long, value_name = "PATH")]
        env_file: Option<PathBuf>,
    },
    /// Print a fresh SECRET_KEY; with --env, a whole admin identity (ADMIN_UUID, ADMIN_TOTP_SECRET,
    /// SECRET_KEY) to append to .env; with --signing-key, a key to sign plugins with.
    #[command(after_help = "Examples:
  plughost keygen --env >> .env                   first set-up
  plughost keygen                                 a new SECRET_KEY only (existing tokens and stored secrets then stop working)
  plughost keygen --signing-key release.pem >> .env   a plugin signing key; appends its PLUGIN_PUBKEYS line")]
    Keygen {
        /// Print ADMIN_UUID, ADMIN_TOTP_SECRET and SECRET_KEY as .env lines.
        #[arg(long, conflicts_with = "signing_key")]
        env: bool,
        /// Write a new ed25519 private key (PKCS#8 PEM) to this file and print its PLUGIN_PUBKEYS line.
        #[arg(long, value_name = "FILE")]
        signing_key: Option<PathBuf>,
    },
    /// Sign a plugin: writes FILE.sig, the detached ed25519 signature servers with PLUGIN_PUBKEYS
    /// require. `plughost publish` sends it along.
    #[command(after_help = "Example:
  plughost sign target/release/liborders.so --key release.pem

The key is a PKCS#8 PEM file from plughost keygen --signing-key or openssl genpkey -algorithm ed25519.")]
    Sign {
        /// The plugin file.
        file: PathBuf,
        /// The private key file.
        #[arg(long, value_name = "FILE", env = "PLUGHOST_SIGNING_KEY")]
        key: PathBuf,
    },
    /// Manage tenants (works beside a running server).
    #[command(after_help = "Examples:
  plughost tenant add \"Acme Corp\" --png acme.png
  plughost tenant list --json
  plughost tenant disable 3f2a9c1e-0000-4000-8000-000000000000")]
    Tenant {
        /// Env file to read for the store settings (default: ./.env when present).
        #[arg(long, value_name = "PATH", global = true)]
        env_file: Option<PathBuf>,
        #[command(subcommand)]
        command: plughost::cli::TenantCommand,
    },
    /// Asynchronous jobs in the store (works beside running servers).
    #[command(after_help = "Examples:
  plughost job list --state dead
  plughost job show 0b6f3a2e-5d1c-4f7e-9a41-6c2d8e9f1a3b
  plughost job requeue 0b6f3a2e-5d1c-4f7e-9a41-6c2d8e9f1a3b")]
    Job {
        /// Env file to read for the store settings (default: ./.env when present).
        #[arg(long, value_name = "PATH", global = true)]
        env_file: Option<PathBuf>,
        #[command(subcommand)]
        command: plughost::cli::JobCommand,
    },
    /// Cron schedules in the store (works beside running servers).
    #[command(after_help = "Examples:
  plughost schedule add nightly --cron '0 3 * * *' --timezone Europe/Paris --path /rest/services/reports/build/ --method POST --body '{\"full\": true}'
  plughost schedule list
  plughost schedule pause nightly")]
    Schedule {
        /// Env file to read for the store settings (default: ./.env when present).
        #[arg(long, value_name = "PATH", global = true)]
        env_file: Option<PathBuf>,
        #[command(subcommand)]
        command: plughost::cli::ScheduleCommand,
    },
    /// Print the key callbacks are signed with (hex; derived from SECRET_KEY), for the receivers
    /// that verify X-Plughost-Signature.
    #[command(
        name = "callback-key",
        after_help = "Example:
  plughost callback-key --env-file /etc/plughost/.env > callback.key"
    )]
    CallbackKey {
        /// Env file to read for SECRET_KEY (default: ./.env when present).
        #[arg(long, value_name = "PATH")]
        env_file: Option<PathBuf>,
    },
    /// Print the current TOTP code of a principal (the admin or a tenant), read from the store.
    #[command(after_help = "Example:
  curl -X POST localhost:8080/rest/auth/token -H 'content-type: application/json' \\
    -d \"{\\\"uuid\\\": \\\"$ADMIN_UUID\\\", \\\"totp\\\": \\\"$(plughost totp $ADMIN_UUID)\\\"}\"")]
    Totp {
        /// The admin's or a tenant's UUID.
        uuid: String,
        /// Env file to read for the store settings (default: ./.env when present).
        #[arg(long, value_name = "PATH")]
        env_file: Option<PathBuf>,
    },
    /// Publish a plugin through the store: every replica syncs it into its plugins folder and
    /// serves it within PUBLISH_SYNC_MS. It is checked (ELF, ABI, manifest, in a sandbox worker)
    /// before anything is stored.
    #[command(after_help = "Examples:
  plughost publish target/release/liborders.so
  plughost publish liborders.so --name orders --tenant 5dc1bb6a-721b-40f8-8fbc-da6304ba3977")]
    Publish {
        /// The plugin file.
        file: PathBuf,
        /// The name it is published under (default: the file name without `lib` and `.so`).
        #[arg(long)]
        name: Option<String>,
        /// Publish into this tenant's namespace (its modules run sandboxed).
        #[arg(long, value_name = "UUID")]
        tenant: Option<String>,
        /// Env file to read for the store settings (default: ./.env when present).
        #[arg(long, value_name = "PATH")]
        env_file: Option<PathBuf>,
    },
    /// Remove a published plugin; every replica removes the file it synced.
    Unpublish {
        /// The name it was published under.
        name: String,
        /// The tenant's namespace it is in (default: the admin's).
        #[arg(long, value_name = "UUID")]
        tenant: Option<String>,
        /// Env file to read for the store settings (default: ./.env when present).
        #[arg(long, value_name = "PATH")]
        env_file: Option<PathBuf>,
    },
    /// Create a plugin crate that builds and passes `plughost check` at once.
    ///
    /// Example: `plughost new orders && cd orders && cargo build --release`
    #[command(after_help = "Examples:
  plughost new orders
  plughost new orders --path plugins/orders --plugin-api ../plughost/plugin-api")]
    New {
        /// The module and crate name (lower-case letters, digits and '_').
        name: String,
        /// Folder to create (default: ./NAME).
        #[arg(long, value_name = "DIR")]
        path: Option<PathBuf>,
        /// The plugin-api sources to depend on (default: those this plughost was built from).
        #[arg(long, value_name = "DIR")]
        plugin_api: Option<PathBuf>,
    },
    /// A worker process under the supervisor (started by `serve`, not by hand).
    #[command(name = "__worker", hide = true)]
    Worker(ServeArgs),
    /// A sandbox worker that runs one tenant module (started by the server, not by hand).
    #[command(name = "worker", hide = true)]
    Sandbox,
}

#[derive(clap::Args, Clone, Default)]
struct ServeArgs {
    /// Env file to read (default: ./.env when present). The process environment wins over it.
    #[arg(long, value_name = "PATH")]
    env_file: Option<PathBuf>,
    /// Overrides BIND.
    #[arg(long, value_name = "ADDR")]
    bind: Option<String>,
    /// Overrides PLUGINS_DIR.
    #[arg(long, value_name = "DIR")]
    plugins_dir: Option<PathBuf>,
    /// Serve from this one process, without the supervisor that recycles worker processes.
    #[arg(long)]
    no_supervisor: bool,
}

/// The host allocates and frees many small buffers on every request; mimalloc's thread-local free
/// lists serve them with fewer instructions than glibc's malloc (see bench/instructions.py).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Plugins built with `export_plugin!` find this table with `dlsym` at their first allocation and
/// allocate through mimalloc too (plugin_api::alloc). `build.rs` puts it in the dynamic symbol
/// table; the name is `plugin_api::alloc::SYMBOL`.
#[allow(unsafe_code, non_upper_case_globals)]
#[no_mangle]
pub static plughost_allocator_v1: plugin_api::alloc::HostAllocator = plugin_api::alloc::HostAllocator::GLOBAL;

fn main() -> ExitCode {
    // A sandbox worker must not parse arguments or read .env: it has a clean environment and
    // takes everything from its channel.
    if std::env::args_os().nth(1).is_some_and(|arg| arg == "worker") {
        return plughost_sandbox::worker::main();
    }
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Some(Command::Check { .. } | Command::Keygen { .. } | Command::Sign { .. } | Command::New { .. })
    ) {
        end_quietly_on_closed_output();
    }
    let result = match cli.command {
        Some(Command::Check { file, pubkeys, in_process }) => check(&file, pubkeys.as_deref(), in_process),
        Some(Command::Recycle { env_file }) => recycle(env_file),
        Some(Command::Worker(args)) => worker(args),
        Some(Command::Sandbox) => Ok(plughost_sandbox::worker::main()),
        Some(Command::Keygen {
            signing_key: Some(file), ..
        }) => plughost::cli::signing_keygen(&file),
        Some(Command::Keygen { env, signing_key: None }) => Ok(plughost::cli::keygen(env)),
        Some(Command::Sign { file, key }) => plughost::cli::sign(&file, &key),
        Some(Command::New { name, path, plugin_api }) => {
            plughost::scaffold::new_plugin(&name, path.as_deref(), plugin_api.as_deref()).map(|dir| {
                println!(
                    "created {} — next: cd {} && cargo build --release && plughost check target/release/lib{name}.so",
                    dir.display(),
                    dir.display()
                );
                ExitCode::SUCCESS
            })
        }
        Some(Command::Tenant { env_file, command }) => with_config(env_file, |config| plughost::cli::tenant(config, command)),
        Some(Command::Job { env_file, command }) => with_config(env_file, |config| plughost::cli::job(config, command)),
        Some(Command::Schedule { env_file, command }) => with_config(env_file, |config| plughost::cli::schedule(config, command)),
        Some(Command::CallbackKey { env_file }) => with_config(env_file, |config| {
            println!("{}", hex::encode(config.jobs.callback_key.0));
            Ok(ExitCode::SUCCESS)
        }),
        Some(Command::Totp { uuid, env_file }) => with_config(env_file, |config| plughost::cli::current_code(config, &uuid)),
        Some(Command::Publish {
            file,
            name,
            tenant,
            env_file,
        }) => with_config(env_file, |config| {
            plughost::cli::publish(config, &file, name.as_deref(), tenant.as_deref())
        }),
        Some(Command::Unpublish { name, tenant, env_file }) => {
            with_config(env_file, |config| plughost::cli::unpublish(config, &name, tenant.as_deref()))
        }
        Some(Command::Serve(args)) => serve(args),
        None => serve(cli.serve),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("plughost: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// A local one-shot command whose output is cut short (`plughost check … | head -1`) ends
/// quietly, as other command-line tools do, instead of panicking on the broken pipe. Only there:
/// the server, and commands that talk to a server or a store, must outlive a closed socket.
fn end_quietly_on_closed_output() {
    // SAFETY: restoring the default disposition of SIGPIPE before any thread is started.
    #[allow(unsafe_code)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn overrides(args: &ServeArgs) -> Vec<(&'static str, String)> {
    let mut overrides = Vec::new();
    if let Some(bind) = &args.bind {
        overrides.push(("BIND", bind.clone()));
    }
    if let Some(dir) = &args.plugins_dir {
        overrides.push(("PLUGINS_DIR", dir.display().to_string()));
    }
    overrides
}

fn load_config(args: &ServeArgs) -> Result<Config, ExitCode> {
    Config::load(args.env_file.as_deref(), &overrides(args)).map_err(|errors| {
        eprint!("plughost: {errors}");
        ExitCode::from(2)
    })
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = match load_config(&args) {
        Ok(config) => config,
        Err(code) => return Ok(code),
    };
    let _flush_logs_on_exit = init_logging(config.log_format, &config.log_filter);
    // Before anything opens a descriptor; the server process inherits the raised limit.
    let files = plughost::server::raise_file_limit();
    tracing::debug!(open_files = files, "file limit");
    if args.no_supervisor {
        return run_server(config, None, Role::Standalone);
    }
    // Workers re-read the env file and get the command-line overrides as variables, so that a
    // recycled worker picks up an edited .env.
    let mut worker_args: Vec<std::ffi::OsString> = vec!["__worker".into()];
    if let Some(file) = &args.env_file {
        worker_args.push("--env-file".into());
        worker_args.push(file.clone().into_os_string());
    }
    let mut env: Vec<(String, String)> = overrides(&args).into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    env.push(("PLUGINS_DIR".to_owned(), config.server.plugins_dir.display().to_string()));
    let command = WorkerCommand {
        program: std::env::current_exe().context("cannot find the plughost executable")?,
        args: worker_args,
        env,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(supervisor::run(
        config.server.bind,
        &config.server.data_dir,
        config.limits.shutdown_grace,
        command,
    ))?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

fn worker(args: ServeArgs) -> anyhow::Result<ExitCode> {
    supervisor::die_with_parent();
    let listener = supervisor::inherited_listener()?;
    let config = match load_config(&args) {
        Ok(config) => config,
        Err(code) => return Ok(code),
    };
    let _flush_logs_on_exit = init_logging(config.log_format, &config.log_filter);
    let role = if listener.is_some() { Role::Worker } else { Role::Standalone };
    run_server(config, listener, role)
}

fn run_server(config: Config, listener: Option<std::net::TcpListener>, role: Role) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let app = App::build(config, listener, role).await?;
        let addr = app.local_addr()?;
        match role {
            Role::Worker => supervisor::signal_ready(),
            // The one line on stdout, for people and for scripts that bound port 0.
            Role::Standalone => println!("plughost listening on http://{addr}"),
        }
        if let (Role::Standalone, Some(metrics)) = (role, app.metrics_addr()) {
            println!("plughost metrics on http://{metrics}/metrics");
        }
        tracing::info!(%addr, pid = std::process::id(), "listening");
        app.run_until_stopped(shutdown_signal()).await
    })?;
    tracing::info!(pid = std::process::id(), "stopped");
    Ok(ExitCode::SUCCESS)
}

fn with_config(env_file: Option<PathBuf>, run: impl FnOnce(&Config) -> anyhow::Result<ExitCode>) -> anyhow::Result<ExitCode> {
    let args = ServeArgs {
        env_file,
        ..ServeArgs::default()
    };
    match load_config(&args) {
        Ok(config) => run(&config),
        Err(code) => Ok(code),
    }
}

fn recycle(env_file: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let args = ServeArgs {
        env_file,
        ..ServeArgs::default()
    };
    let config = match load_config(&args) {
        Ok(config) => config,
        Err(code) => return Ok(code),
    };
    let pid = supervisor::send_recycle(&config.server.data_dir)?;
    println!("asked plughost (pid {pid}) to recycle its worker");
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
            }
        }
        Err(err) => {
            tracing::warn!("cannot listen for SIGTERM ({err}); only SIGINT stops the server");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Logs to stderr in batches (see `logwriter`); the guard returned flushes what is queued when it
/// is dropped.
fn init_logging(format: LogFormat, filter: &str) -> plughost::logwriter::FlushGuard {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = plughost::logwriter::stderr();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        LogFormat::Pretty => builder.init(),
    }
    guard
}

/// A plugin's manifest and sha256, read in a sandbox worker (or in this process).
fn inspect(
    file: &std::path::Path,
    scratch: &std::path::Path,
    in_process: bool,
) -> Result<(plughost_runtime::manifest::ModuleSpec, String), String> {
    if in_process {
        let module = loader::load(file, scratch).map_err(|e| e.to_string())?;
        return Ok((module.spec.clone(), module.sha256.clone()));
    }
    let candidate = plughost_runtime::library::read(file).map_err(|e| e.to_string())?;
    let program = std::env::current_exe().map_err(|e| format!("cannot find the plughost executable: {e}"))?;
    let settings = plughost::config::sandbox_defaults();
    let limits = plughost_sandbox::Limits {
        call_timeout: std::time::Duration::from_secs(30),
        memory_bytes: settings.memory_bytes,
        max_concurrency: 1,
        max_response_bytes: 1 << 20,
    };
    let sandbox = plughost_sandbox::Sandbox::start(
        program,
        scratch,
        settings,
        limits,
        std::sync::Arc::new(plughost_sandbox::Unobserved),
    )
    .map_err(|e| format!("cannot start a sandbox worker under {}: {e}", scratch.display()))?;
    let spec = sandbox.inspect(&candidate.bytes).map_err(|err| err.to_string())?;
    Ok((spec, candidate.sha256))
}

/// `text` with control characters escaped.
fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    plughost_sandbox::escape_control(text)
}

fn check(file: &std::path::Path, pubkeys: Option<&str>, in_process: bool) -> anyhow::Result<ExitCode> {
    if let Some(keys) =
        plughost::signing::TrustedKeys::parse(pubkeys.unwrap_or_default()).map_err(|why| anyhow::anyhow!("--pubkeys has a bad {why}"))?
    {
        let bytes = std::fs::read(file).map_err(|err| anyhow::anyhow!("cannot read {}: {err}", file.display()))?;
        match keys.verify_file(file, &bytes) {
            Ok(index) => println!("signature: valid, by key {} of PLUGIN_PUBKEYS", index + 1),
            Err(err) => {
                println!("FAIL {}: {err}", file.display());
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    let scratch = std::env::temp_dir().join(format!("plughost-check-{}", std::process::id()));
    let inspected = inspect(file, &scratch, in_process);
    let _ = std::fs::remove_dir_all(&scratch);
    let (spec, sha256) = match inspected {
        Ok(inspected) => inspected,
        Err(err) => {
            println!("FAIL {}: {}", file.display(), printable(&err));
            return Ok(ExitCode::FAILURE);
        }
    };
    // The manifest is the plugin's text: no control character of it reaches the terminal.
    println!(
        "OK {}: module {} {} (sha256 {})",
        file.display(),
        spec.name,
        printable(&spec.version),
        sha256
    );
    if let Some(alias) = &spec.alias {
        println!("alias: {alias}");
    }
    if !spec.description.is_empty() {
        println!("description: {}", printable(&spec.description));
    }
    println!("{:<24} {:<22} {:<10} PATH", "FUNCTION", "METHODS", "VISIBILITY");
    for f in &spec.functions {
        println!(
            "{:<24} {:<22} {:<10} /rest/services/{}/{}/",
            f.name,
            f.methods.names().join("|"),
            visibility_name(f.visibility),
            spec.route_name(),
            f.route_name()
        );
    }
    Ok(ExitCode::SUCCESS)
}
