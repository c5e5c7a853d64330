//! The operator commands that work on identities: `keygen`, `tenant …`, `totp`. They open the
//! same store as the server (SQLite: safely beside a running server; or MongoDB).

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::Subcommand;
use qrcode::{render::unicode, QrCode};

use crate::config::Config;
use plughost_tenancy::{
    secrets::SecretKey,
    tenants::{Enrolment, Tenancy},
    totp,
};

#[derive(Subcommand, Clone)]
pub enum TenantCommand {
    /// Add a tenant; prints its UUID, secret, otpauth:// URI and a QR code to enrol an authenticator.
    Add {
        /// A display name, 1 to 100 printable characters.
        name: String,
        /// Print `{"uuid", "name", "secret", "otpauth_uri"}` only, for scripts.
        #[arg(long)]
        json: bool,
        /// Also write the QR code as a PNG image.
        #[arg(long, value_name = "FILE")]
        png: Option<PathBuf>,
    },
    /// List tenants.
    List {
        /// Print JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Show one tenant.
    Show {
        /// The tenant's UUID.
        uuid: String,
    },
    /// Disable a tenant: its codes and tokens are refused at once.
    Disable {
        /// The tenant's UUID.
        uuid: String,
    },
    /// Enable a disabled tenant.
    Enable {
        /// The tenant's UUID.
        uuid: String,
    },
    /// Remove a tenant.
    Remove {
        /// The tenant's UUID.
        uuid: String,
    },
    /// Set a tenant's sandbox limits; the flags given change those limits, the others stay.
    #[command(after_help = "Examples:
  plughost tenant limits 5dc1bb6a-721b-40f8-8fbc-da6304ba3977 --memory-mb 256 --call-timeout-ms 5000
  plughost tenant limits 5dc1bb6a-721b-40f8-8fbc-da6304ba3977 --reset")]
    Limits {
        /// The tenant's UUID.
        uuid: String,
        /// Deadline of one call, in milliseconds (CALL_TIMEOUT_MS otherwise).
        #[arg(long, value_name = "MS")]
        call_timeout_ms: Option<u64>,
        /// Address space of one worker, in MiB (SANDBOX_MEMORY_MB otherwise).
        #[arg(long, value_name = "MIB")]
        memory_mb: Option<u64>,
        /// Calls at once per module (SANDBOX_MAX_CONCURRENCY otherwise).
        #[arg(long, value_name = "N")]
        max_concurrency: Option<u64>,
        /// Largest response body, in bytes (MAX_RESPONSE_BYTES otherwise).
        #[arg(long, value_name = "BYTES")]
        max_response_bytes: Option<u64>,
        /// Back to the defaults first.
        #[arg(long)]
        reset: bool,
    },
    /// Give a tenant a new TOTP secret; the old one and its tokens stop working.
    RotateTotp {
        /// The tenant's UUID.
        uuid: String,
        /// Print `{"uuid", "name", "secret", "otpauth_uri"}` only, for scripts.
        #[arg(long)]
        json: bool,
        /// Also write the new QR code as a PNG image.
        #[arg(long, value_name = "FILE")]
        png: Option<PathBuf>,
    },
}

/// `plughost publish FILE [--name NAME] [--tenant UUID]`.
pub fn publish(config: &Config, file: &std::path::Path, name: Option<&str>, tenant: Option<&str>) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(file).map_err(|err| anyhow::anyhow!("cannot read {}: {err}", file.display()))?;
    let signature = crate::signing::read_signature(&crate::signing::signature_path(file))?;
    let name = match name {
        Some(name) => name.to_owned(),
        None => {
            let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            stem.strip_prefix("lib").unwrap_or(&stem).to_owned()
        }
    };
    runtime()?.block_on(async {
        let tenancy = open(config).await?;
        let program = std::env::current_exe()?;
        let sandbox = plughost_sandbox::Sandbox::start(
            program,
            &config.server.data_dir,
            config.sandbox.clone(),
            config.sandbox_limits(),
            std::sync::Arc::new(plughost_sandbox::Unobserved),
        )?;
        sandbox.set_tenants(crate::plugins::tenant_infos(tenancy.store.list("tenant").await?));
        let uploader = format!("cli:{}", config.identity.admin_uuid);
        let upload = crate::publish::Upload {
            tenant,
            name: &name,
            bytes,
            signature,
            uploader: &uploader,
        };
        let policy = crate::publish::Policy {
            max_bytes: config.publishing.publish_max_bytes,
            trusted_keys: config.publishing.trusted_keys.as_deref(),
        };
        let plugin = crate::publish::publish(tenancy.store.as_ref(), &sandbox, upload, &policy).await?;
        println!("{}", serde_json::to_string_pretty(&plugin.view())?);
        Ok(ExitCode::SUCCESS)
    })
}

/// `plughost unpublish NAME [--tenant UUID]`.
pub fn unpublish(config: &Config, name: &str, tenant: Option<&str>) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let tenancy = open(config).await?;
        crate::publish::unpublish(tenancy.store.as_ref(), tenant, name).await?;
        println!("unpublished {}", plughost_tenancy::PublishedPlugin::key_of(tenant, name));
        Ok(ExitCode::SUCCESS)
    })
}

/// `plughost sign FILE --key KEY.pem`: writes `FILE.sig`.
pub fn sign(file: &std::path::Path, key: &std::path::Path) -> anyhow::Result<ExitCode> {
    let key = crate::signing::read_signing_key(key).map_err(anyhow::Error::msg)?;
    let bytes = std::fs::read(file).map_err(|err| anyhow::anyhow!("cannot read {}: {err}", file.display()))?;
    let target = crate::signing::signature_path(file);
    std::fs::write(&target, crate::signing::sign(&key, &bytes))
        .map_err(|err| anyhow::anyhow!("cannot write {}: {err}", target.display()))?;
    println!(
        "wrote {} (public key {}; it must be in PLUGIN_PUBKEYS)",
        target.display(),
        crate::signing::public_key_of(&key)
    );
    Ok(ExitCode::SUCCESS)
}

/// `plughost keygen --signing-key FILE`: a fresh ed25519 key in FILE (mode 0600, never
/// overwritten); prints the `PLUGIN_PUBKEYS` line.
pub fn signing_keygen(file: &std::path::Path) -> anyhow::Result<ExitCode> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let (pem, public) = crate::signing::new_signing_key().map_err(anyhow::Error::msg)?;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .map_err(|err| anyhow::anyhow!("cannot create {} ({err}); an existing key is never overwritten", file.display()))?;
    out.write_all(pem.as_bytes())?;
    eprintln!("wrote the private key to {}: keep it off the servers", file.display());
    println!("PLUGIN_PUBKEYS={public}");
    Ok(ExitCode::SUCCESS)
}

/// `plughost keygen`: a fresh SECRET_KEY, or with `--env` a whole admin identity for `.env`.
pub fn keygen(env: bool) -> ExitCode {
    if env {
        println!("ADMIN_UUID={}", uuid::Uuid::new_v4().hyphenated());
        println!("ADMIN_TOTP_SECRET={}", totp::new_secret());
        println!("SECRET_KEY={}", SecretKey::generate_hex());
    } else {
        println!("{}", SecretKey::generate_hex());
    }
    ExitCode::SUCCESS
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

async fn open(config: &Config) -> anyhow::Result<Tenancy> {
    let tenancy = config.open_tenancy().await.context("cannot open the identity store")?;
    tenancy
        .record_admin(&config.identity.admin_uuid, &config.identity.admin_totp_secret)
        .await
        .context("cannot record the admin in the store")?;
    Ok(tenancy)
}

/// `plughost tenant …`.
pub fn tenant(config: &Config, command: TenantCommand) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let tenancy = open(config).await?;
        let actor = format!("cli:{}", config.identity.admin_uuid);
        match command {
            TenantCommand::Add { name, json, png } => print_enrolment(&tenancy.add(&name, &actor).await?, json, png.as_deref())?,
            TenantCommand::RotateTotp { uuid, json, png } => print_enrolment(&tenancy.rotate(&uuid, &actor).await?, json, png.as_deref())?,
            TenantCommand::List { json } => {
                let tenants = tenancy.list().await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&tenants)?);
                } else {
                    println!("{:<36}  {:<8}  {:<20}  NAME", "UUID", "STATUS", "CREATED");
                    for t in tenants {
                        println!("{:<36}  {:<8}  {:<20}  {}", t.uuid, t.status, t.created_at, t.name);
                    }
                }
            }
            TenantCommand::Show { uuid } => println!("{}", serde_json::to_string_pretty(&tenancy.show(&uuid).await?)?),
            TenantCommand::Disable { uuid } => println!(
                "{}",
                serde_json::to_string_pretty(&tenancy.set_active(&uuid, false, &actor).await?)?
            ),
            TenantCommand::Enable { uuid } => {
                println!("{}", serde_json::to_string_pretty(&tenancy.set_active(&uuid, true, &actor).await?)?)
            }
            TenantCommand::Limits {
                uuid,
                call_timeout_ms,
                memory_mb,
                max_concurrency,
                max_response_bytes,
                reset,
            } => {
                let mut limits = if reset {
                    serde_json::json!({})
                } else {
                    tenancy.show(&uuid).await?.limits
                };
                for (key, value) in [
                    ("call_timeout_ms", call_timeout_ms),
                    ("memory_mb", memory_mb),
                    ("max_concurrency", max_concurrency),
                    ("max_response_bytes", max_response_bytes),
                ] {
                    if let (Some(value), Some(map)) = (value, limits.as_object_mut()) {
                        map.insert(key.to_owned(), value.into());
                    }
                }
                println!(
                    "{}",
                    serde_json::to_string_pretty(&tenancy.set_limits(&uuid, limits, &actor).await?)?
                );
            }
            TenantCommand::Remove { uuid } => {
                tenancy.remove(&uuid, &actor).await?;
                println!("removed tenant {uuid}");
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `plughost job …`: asynchronous jobs in the store, beside running servers.
#[derive(Subcommand, Clone)]
pub enum JobCommand {
    /// Show one job as `GET /rest/jobs/<id>` does.
    Show { id: String },
    /// List jobs, newest first.
    List {
        /// Only jobs in this state: queued, running, succeeded, failed, dead, cancelled.
        #[arg(long)]
        state: Option<String>,
        /// Only the jobs of this principal (UUID).
        #[arg(long)]
        owner: Option<String>,
        /// Only the jobs this schedule made.
        #[arg(long)]
        schedule: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// One JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a job that has not started.
    Cancel { id: String },
    /// Queue a failed, dead or cancelled job again, with fresh attempts.
    Requeue { id: String },
}

/// `plughost job …`.
pub fn job(config: &Config, command: JobCommand) -> anyhow::Result<ExitCode> {
    use plughost_tenancy::jobs::{Cancel, JobQuery, JobState};
    let job_id = |text: &str| {
        uuid::Uuid::parse_str(text)
            .map(|id| id.to_string())
            .map_err(|_| anyhow::anyhow!("'{text}' is not a job id: job ids are UUIDs"))
    };
    runtime()?.block_on(async {
        let tenancy = open(config).await?;
        let store = &tenancy.store;
        let now = crate::jobs::now_ms();
        match command {
            JobCommand::Show { id } => {
                let id = job_id(&id)?;
                let job = store.job(&id).await?.ok_or_else(|| anyhow::anyhow!("no job {id}"))?;
                println!("{}", serde_json::to_string_pretty(&crate::jobs::view(&job))?);
            }
            JobCommand::List {
                state,
                owner,
                schedule,
                limit,
                json,
            } => {
                let state = match state {
                    None => None,
                    Some(text) => Some(JobState::parse(&text).ok_or_else(|| {
                        anyhow::anyhow!("'{text}' is not a job state: use queued, running, succeeded, failed, dead or cancelled")
                    })?),
                };
                let query = JobQuery {
                    owner,
                    state,
                    schedule,
                    before: None,
                    limit: limit.clamp(1, 10_000),
                };
                let jobs = store.jobs(&query).await?;
                if json {
                    let views: Vec<serde_json::Value> = jobs.iter().map(crate::jobs::view).collect();
                    println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "jobs": views }))?);
                } else {
                    println!("{:<36}  {:<9}  {:>8}  {:<24}  FUNCTION", "ID", "STATE", "ATTEMPTS", "CREATED");
                    for job in jobs {
                        let attempts = format!("{}/{}", job.attempts, job.max_attempts);
                        let created = crate::jobs::timestamp(job.created_at);
                        println!(
                            "{:<36}  {:<9}  {attempts:>8}  {created:<24}  {}/{}",
                            job.id,
                            job.state.as_str(),
                            job.module,
                            job.function
                        );
                    }
                }
            }
            JobCommand::Cancel { id } => match store.cancel_job(&job_id(&id)?, now).await? {
                Cancel::Cancelled(job) => println!("cancelled job {}", job.id),
                Cancel::TooLate(job) => anyhow::bail!("job {} is {}: only a queued job can be cancelled", job.id, job.state.as_str()),
                Cancel::NotFound => anyhow::bail!("no job {id}"),
            },
            JobCommand::Requeue { id } => {
                let id = job_id(&id)?;
                let before = store.job(&id).await?.ok_or_else(|| anyhow::anyhow!("no job {id}"))?;
                if !matches!(before.state, JobState::Failed | JobState::Dead | JobState::Cancelled) {
                    anyhow::bail!(
                        "job {id} is {}: only failed, dead or cancelled jobs are requeued",
                        before.state.as_str()
                    );
                }
                store.requeue_job(&id, now).await?;
                println!("requeued job {id}");
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `plughost schedule …`: schedules in the store, beside running servers.
#[derive(Subcommand, Clone)]
pub enum ScheduleCommand {
    /// Add a schedule: the admin's, or a tenant's with --tenant. The expression, time zone and
    /// fields are checked here; the function it calls is checked by the servers at each tick
    /// (a missing one shows in the schedule's status).
    Add {
        /// 1 to 64 letters, digits, '-', '_' or '.'; unique per principal.
        name: String,
        /// 5 fields (minute hour day-of-month month day-of-week) or 6 (seconds first).
        #[arg(long)]
        cron: String,
        /// The function to call: /rest/services/<module>/<function>/…[?query].
        #[arg(long)]
        path: String,
        #[arg(long, default_value = "GET")]
        method: String,
        /// A JSON object sent as the body of each call.
        #[arg(long)]
        body: Option<String>,
        /// An IANA time zone (default UTC).
        #[arg(long)]
        timezone: Option<String>,
        /// Run the latest tick missed while no server ran, once, instead of skipping it.
        #[arg(long)]
        catch_up: bool,
        #[command(flatten)]
        owner: ScheduleOwner,
    },
    /// List schedules (everyone's, or one tenant's with --tenant).
    List {
        #[command(flatten)]
        owner: ScheduleOwner,
        /// One JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a schedule.
    Remove {
        name: String,
        #[command(flatten)]
        owner: ScheduleOwner,
    },
    /// Stop a schedule's ticks until it is resumed.
    Pause {
        name: String,
        #[command(flatten)]
        owner: ScheduleOwner,
    },
    /// Start a paused schedule again, from its next tick.
    Resume {
        name: String,
        #[command(flatten)]
        owner: ScheduleOwner,
    },
}

/// Whose schedule: the admin's unless a tenant is named.
#[derive(clap::Args, Clone, Debug)]
pub struct ScheduleOwner {
    /// The tenant (UUID) the schedule belongs to.
    #[arg(long, value_name = "UUID")]
    tenant: Option<String>,
}

/// `plughost schedule …`.
pub fn schedule(config: &Config, command: ScheduleCommand) -> anyhow::Result<ExitCode> {
    use crate::jobs::{draft::Draft, schedule::Spec};
    use plughost_tenancy::schedules::ScheduleRecord;
    runtime()?.block_on(async {
        let tenancy = open(config).await?;
        let store = &tenancy.store;
        let owner = |who: &ScheduleOwner| who.tenant.clone().unwrap_or_else(|| config.identity.admin_uuid.clone());
        let found = |owner: String, name: String| async move {
            let key = ScheduleRecord::key_of(&owner, &name);
            store
                .schedule(&key)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no schedule named '{name}' for {owner}"))
        };
        match command {
            ScheduleCommand::Add {
                name,
                cron,
                path,
                method,
                body,
                timezone,
                catch_up,
                owner: who,
            } => {
                let kind = match &who.tenant {
                    None => "admin",
                    Some(uuid) => match store.get(uuid).await? {
                        Some(record) if record.kind == "tenant" => "tenant",
                        _ => anyhow::bail!("no tenant {uuid}: see plughost tenant list"),
                    },
                };
                let body = match body {
                    None => None,
                    Some(text) => Some(serde_json::from_str(&text).context("--body is not JSON")?),
                };
                let draft = Draft {
                    name,
                    cron,
                    path,
                    method,
                    body,
                    timezone,
                    catch_up,
                };
                let record = draft
                    .into_record(&owner(&who), kind, crate::jobs::now_ms())
                    .map_err(|invalid| anyhow::anyhow!("{}", invalid.why))?;
                if !store.insert_schedule(&record).await? {
                    anyhow::bail!("a schedule named '{}' exists already: remove it first", record.name);
                }
                println!(
                    "added schedule {} ({}), next run {}",
                    record.name,
                    record.cron,
                    crate::jobs::timestamp(record.next_run)
                );
            }
            ScheduleCommand::List { owner: who, json } => {
                let listed = store.schedules(who.tenant.as_deref()).await?;
                if json {
                    let admin = plughost_tenancy::auth::Caller::Admin {
                        uuid: config.identity.admin_uuid.clone(),
                    };
                    let views: Vec<serde_json::Value> = listed.iter().map(|s| crate::http::schedules::view(s, &admin)).collect();
                    println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "schedules": views }))?);
                } else {
                    println!(
                        "{:<20}  {:<16}  {:<8}  {:<24}  {:<36}  PATH",
                        "NAME", "CRON", "STATE", "NEXT RUN", "OWNER"
                    );
                    for s in listed {
                        let state = if s.paused { "paused" } else { "running" };
                        let next = if s.paused || s.next_run == crate::jobs::schedule::NEVER {
                            "-".to_owned()
                        } else {
                            crate::jobs::timestamp(s.next_run)
                        };
                        println!(
                            "{:<20}  {:<16}  {state:<8}  {next:<24}  {:<36}  {} /rest/services/{}",
                            s.name, s.cron, s.owner, s.method, s.path
                        );
                    }
                }
            }
            ScheduleCommand::Remove { name, owner: who } => {
                let schedule = found(owner(&who), name).await?;
                store.remove_schedule(&schedule.key).await?;
                println!("removed schedule {}", schedule.name);
            }
            ScheduleCommand::Pause { name, owner: who } => {
                let schedule = found(owner(&who), name).await?;
                store.pause_schedule(&schedule.key, true, None).await?;
                println!("paused schedule {}", schedule.name);
            }
            ScheduleCommand::Resume { name, owner: who } => {
                let schedule = found(owner(&who), name).await?;
                let next = Spec::parse(&schedule.cron, schedule.timezone.as_deref())
                    .map_err(|why| anyhow::anyhow!(why))?
                    .after(crate::jobs::now_ms());
                store.pause_schedule(&schedule.key, false, Some(next)).await?;
                println!("resumed schedule {}, next run {}", schedule.name, crate::jobs::timestamp(next));
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `plughost totp UUID`: the current code of a principal.
pub fn current_code(config: &Config, uuid: &str) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let tenancy = open(config).await?;
        println!("{}", tenancy.current_code(uuid).await?);
        Ok(ExitCode::SUCCESS)
    })
}

fn print_enrolment(enrolment: &Enrolment, json: bool, png: Option<&std::path::Path>) -> anyhow::Result<()> {
    let code = QrCode::new(enrolment.otpauth_uri.as_bytes()).context("cannot draw the QR code")?;
    if let Some(path) = png {
        let image = code.render::<image::Luma<u8>>().min_dimensions(256, 256).build();
        image
            .save_with_format(path, image::ImageFormat::Png)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if json {
        println!("{}", serde_json::to_string(enrolment)?);
        return Ok(());
    }
    println!("tenant   {}", enrolment.name);
    println!("uuid     {}", enrolment.uuid);
    println!("secret   {}", enrolment.secret);
    println!("otpauth  {}", enrolment.otpauth_uri);
    println!("\nScan with an authenticator app (shown once; rotate-totp makes a new one):\n");
    println!("{}", code.render::<unicode::Dense1x2>().quiet_zone(true).build());
    if let Some(path) = png {
        println!("QR code written to {}", path.display());
    }
    Ok(())
}
