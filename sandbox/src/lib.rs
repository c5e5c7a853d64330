//! The sandbox tier: tenants' modules (and the admin's with `ADMIN_ISOLATION=process`) run in
//! confined worker processes, `plughost worker`, never in this process.
//!
//! Each module version has a [`Pool`] of workers, each answering one call at a time over pipes
//! ([`protocol`]), awaited asynchronously. Quick functions' calls are batched: several are sent to
//! one worker in one write (see [`Pool::call`]). A call past its deadline kills its worker; a worker that dies is replaced, with
//! a growing delay when it keeps dying; a module whose workers crash too often is quarantined
//! until its file changes or the admin releases it. Workers are retired after many calls or when
//! they have grown, and idle ones beyond the warm count are stopped.

pub mod cgroup;
pub mod confine;
mod error;
pub mod protocol;
pub mod worker;

use std::{
    collections::{HashMap, VecDeque},
    fs,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, RwLock, Weak,
    },
    thread,
    time::{Duration, Instant},
};

use plugin_api::ErrorKind;
use serde::Serialize;
use tokio::sync::oneshot;

use self::protocol::{
    encode_frame, read_frame, read_frame_async, write_frame, CallHead, FrameError, HostMsg, Layer, Outcome, Rlimits, WorkerMsg,
    PROTOCOL_VERSION,
};
use plughost_runtime::{
    call::PluginReply,
    library::{Candidate, LoadError},
    manifest::ModuleSpec,
};

pub use self::error::SandboxError;

/// How long a worker may take to confine itself, load its library and answer.
const LOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a worker told goodbye may take to exit before it is killed.
const GOODBYE_GRACE: Duration = Duration::from_secs(1);
/// Room for headers beyond a response body in a reply frame.
const FRAME_OVERHEAD: u64 = 1 << 20;
/// Plugin output logged per worker before the rest is dropped (counted).
const OUTPUT_BUDGET: usize = 64 * 1024;

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

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
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
pub fn check_overrides(overrides: &serde_json::Value) -> Result<(), String> {
    if !overrides.is_object() {
        return Err("limits are a JSON object such as {\"memory_mb\": 256, \"call_timeout_ms\": 5000}".to_owned());
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
        Err(format!(
            "{}; known limits: call_timeout_ms (1–3600000), memory_mb (16–1048576), max_concurrency (1–1024), max_response_bytes (1–17179869184)",
            problems.join("; ")
        ))
    }
}

/// A module loaded in a sandbox worker: its manifest, read there, and the pool that runs it.
pub struct SandboxedModule {
    pub spec: ModuleSpec,
    /// The file in the plugins folder it came from.
    pub file: PathBuf,
    pub sha256: String,
    pub size: u64,
    pub owner: Option<String>,
    pub pool: Arc<Pool>,
}

/// A tenant as the loader needs it.
#[derive(Debug, Clone)]
pub struct TenantInfo {
    pub active: bool,
    pub limits: serde_json::Value,
}

/// What is shared by every pool: where workers come from and the tenants they run for.
pub struct Sandbox {
    program: PathBuf,
    lib_dir: PathBuf,
    run_dir: PathBuf,
    pub settings: Settings,
    default_limits: Limits,
    tenants: RwLock<HashMap<String, TenantInfo>>,
    pools: Mutex<Vec<Weak<Pool>>>,
    probe: Mutex<Option<Vec<Layer>>>,
    sequence: AtomicU64,
    /// The CPUs this process may run on: how many runners feed a pool's quick calls to workers.
    cpus: u32,
    /// Where workers' memory cgroups go, or why there are none.
    cgroups: Result<cgroup::MemoryCgroups, String>,
    /// Workers told goodbye, and when: reaped once they exit, killed after [`GOODBYE_GRACE`].
    retiring: Mutex<Vec<(Worker, Instant)>>,
    spawner: Spawner,
    /// The uids of this process's live workers, when the host is root and gives each its own.
    uids: Arc<Mutex<std::collections::HashSet<u32>>>,
    /// Bytes of each tenant's responses not yet sent, by tenant.
    buffered: Mutex<HashMap<String, Arc<AtomicU64>>>,
    observer: Arc<dyn Observer>,
}

/// What the sandbox tells its host about workers as they come and go, for its metrics. Every
/// method has an empty default.
pub trait Observer: Send + Sync {
    /// A worker process was started.
    fn worker_spawned(&self) {}
    /// A worker confined itself and loaded its library, `took` after it was started.
    fn worker_loaded(&self, took: Duration) {
        let _ = took;
    }
    /// A worker process ended and was reaped.
    fn worker_gone(&self) {}
    /// A worker died while it had calls (or while loading).
    fn worker_crashed(&self) {}
    /// A module's workers crashed too often: it is quarantined.
    fn module_quarantined(&self) {}
    /// A call ran past its deadline and its worker was killed.
    fn call_timed_out(&self) {}
}

/// An observer that ignores everything (`plughost check`, tests).
pub struct Unobserved;

impl Observer for Unobserved {}

fn random_u32() -> u32 {
    let mut bytes = [0u8; 4];
    // The kernel's generator does not fail once the system has booted; zero would only make the
    // draw less random, never unsafe (uids in use are skipped).
    let _ = getrandom::fill(&mut bytes);
    u32::from_le_bytes(bytes)
}

/// The range of uids workers get when the host runs as root: above every ordinary and system
/// account, below the 32-bit values that mean "no uid".
const WORKER_UIDS: std::ops::Range<u32> = 0x4000_0000..0x7fff_0000;

/// Starts worker processes from one long-lived thread. A worker asks to die with its parent, and
/// Linux sends that signal when the *thread* that forked it ends: a blocking-pool thread retired
/// after idling would take its workers with it.
struct Spawner {
    requests: Mutex<std::sync::mpsc::Sender<(Command, std::sync::mpsc::Sender<std::io::Result<Child>>)>>,
}

impl Spawner {
    fn start() -> std::io::Result<Spawner> {
        let (tx, rx) = std::sync::mpsc::channel::<(Command, std::sync::mpsc::Sender<std::io::Result<Child>>)>();
        thread::Builder::new().name("sandbox-spawner".into()).spawn(move || {
            for (mut command, reply) in rx {
                let _ = reply.send(command.spawn());
            }
        })?;
        Ok(Spawner { requests: Mutex::new(tx) })
    }

    fn spawn(&self, command: Command) -> std::io::Result<Child> {
        let (tx, rx) = std::sync::mpsc::channel();
        lock(&self.requests)
            .send((command, tx))
            .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
        rx.recv().map_err(|_| std::io::Error::other("the spawner thread is gone"))?
    }
}

impl Sandbox {
    /// A sandbox whose workers run `program worker` (this binary) with files under
    /// `DATA_DIR/sandbox/<pid>`; starts the thread that keeps pools warm and trims idle workers.
    pub fn start(
        program: PathBuf,
        data_dir: &Path,
        settings: Settings,
        default_limits: Limits,
        observer: Arc<dyn Observer>,
    ) -> std::io::Result<Arc<Sandbox>> {
        let root = data_dir.join("sandbox");
        // Folders left by processes that are gone.
        if let Ok(entries) = fs::read_dir(&root) {
            for entry in entries.flatten() {
                let pid = entry.file_name().to_string_lossy().parse::<i32>().ok();
                if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
        let mine = root.join(std::process::id().to_string());
        fs::create_dir_all(&mine)?;
        // Absolute: workers change into a private folder before they open the library, so a
        // relative DATA_DIR (the default, ./data) would point nowhere.
        let mine = fs::canonicalize(&mine)?;
        let lib_dir = mine.join("lib");
        let run_dir = mine.join("run");
        fs::create_dir_all(&lib_dir)?;
        fs::create_dir_all(&run_dir)?;
        let sandbox = Arc::new(Sandbox {
            program,
            lib_dir,
            run_dir,
            settings,
            default_limits,
            tenants: RwLock::new(HashMap::new()),
            pools: Mutex::new(Vec::new()),
            probe: Mutex::new(None),
            sequence: AtomicU64::new(0),
            cpus: thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX)),
            cgroups: cgroup::MemoryCgroups::detect(),
            retiring: Mutex::new(Vec::new()),
            spawner: Spawner::start()?,
            uids: Arc::default(),
            buffered: Mutex::new(HashMap::new()),
            observer,
        });
        let weak = Arc::downgrade(&sandbox);
        thread::Builder::new().name("sandbox-pools".into()).spawn(move || maintain(weak))?;
        Ok(sandbox)
    }

    /// Replaces the tenants known to the loader (refreshed from the store); loaded modules take
    /// their tenant's new limits at once.
    pub fn set_tenants(&self, tenants: HashMap<String, TenantInfo>) {
        let pools: Vec<Arc<Pool>> = lock(&self.pools).iter().filter_map(Weak::upgrade).collect();
        for pool in pools {
            if let Some(tenant) = pool.owner.as_deref().and_then(|uuid| tenants.get(uuid)) {
                let (limits, _) = self.default_limits.clone().with_overrides(&tenant.limits);
                pool.set_limits(limits);
            }
        }
        *self.tenants.write().unwrap_or_else(|p| p.into_inner()) = tenants;
    }

    /// A tenant by UUID, if known.
    pub fn tenant(&self, uuid: &str) -> Option<TenantInfo> {
        self.tenants.read().unwrap_or_else(|p| p.into_inner()).get(uuid).cloned()
    }

    /// A uid no live worker of this process has, when the host is root (`None` otherwise). Drawn
    /// at random from [`WORKER_UIDS`], so that another server process on this machine (a
    /// recycled one draining) is as unlikely to hold it: about one in a billion per pair.
    fn allocate_uid(&self) -> Option<UidLease> {
        if !rustix::process::geteuid().is_root() {
            return None;
        }
        let mut uids = lock(&self.uids);
        let span = WORKER_UIDS.end - WORKER_UIDS.start;
        loop {
            let uid = WORKER_UIDS.start + random_u32() % span;
            if uids.insert(uid) {
                return Some(UidLease {
                    uid,
                    taken: Arc::clone(&self.uids),
                });
            }
        }
    }

    /// Charges `body` to its tenant's budget of responses held for slow clients: the body comes
    /// back as one that gives its bytes back when the server has sent (or dropped) it; past the
    /// budget, an error that says so.
    pub fn hold_response(&self, tenant: &str, body: Vec<u8>) -> Result<bytes::Bytes, u64> {
        let counter = lock(&self.buffered).entry(tenant.to_owned()).or_default().clone();
        let len = body.len() as u64;
        let budget = self.settings.tenant_max_buffered_bytes;
        let held = counter.fetch_add(len, Ordering::AcqRel) + len;
        if held > budget && held > len {
            counter.fetch_sub(len, Ordering::AcqRel);
            return Err(budget);
        }
        Ok(bytes::Bytes::from_owner(Held { body, counter }))
    }

    /// Says goodbye to a healthy worker; the maintenance thread reaps it.
    fn retire(&self, mut worker: Worker) {
        worker.goodbye();
        lock(&self.retiring).push((worker, Instant::now()));
    }

    /// Reaps retired workers that have exited; kills those that outstay [`GOODBYE_GRACE`].
    fn reap(&self) {
        let mut retiring = lock(&self.retiring);
        retiring.retain_mut(|(worker, since)| !matches!(worker.child.try_wait(), Ok(Some(_))) && since.elapsed() < GOODBYE_GRACE);
    }

    /// Starts a worker that only confines itself and reports its layers, to show operators what
    /// this machine enforces before any tenant module is loaded.
    pub fn probe(self: &Arc<Self>) -> Vec<Layer> {
        let layers = match Worker::spawn(self, None, &self.default_limits, None, "probe") {
            Ok((_, layers, _)) => layers,
            Err(err) => vec![Layer {
                name: "worker".into(),
                active: false,
                detail: format!("no sandbox worker could start: {err}"),
            }],
        };
        *lock(&self.probe) = Some(layers.clone());
        layers
    }

    /// Reads the manifest of the library `bytes` in a worker, without loading it in this process;
    /// for checking a plugin before it is published.
    pub fn inspect(&self, bytes: &[u8]) -> Result<ModuleSpec, String> {
        let seq = self.sequence.fetch_add(1, Ordering::Relaxed);
        let library = self.lib_dir.join(format!("inspect-{seq}.so"));
        write_private(&library, bytes).map_err(|e| format!("cannot write {}: {e}", library.display()))?;
        let spawned = Worker::spawn(self, Some(&library), &self.default_limits, None, "inspect");
        let _ = fs::remove_file(&library);
        let (_, _, manifest) = spawned?;
        let manifest = manifest.ok_or_else(|| "the worker sent no manifest".to_owned())?;
        ModuleSpec::from_abi(&manifest).map_err(|why| format!("its manifest is invalid: {why}"))
    }

    /// The layers the last probe reported.
    pub fn layers(&self) -> Option<Vec<Layer>> {
        lock(&self.probe).clone()
    }

    /// Loads `candidate` in a fresh worker: its manifest is read there, never in this process.
    /// `owner` is the tenant whose folder holds it (`None`: the admin's, isolated by choice).
    pub fn load(self: &Arc<Self>, candidate: Candidate, owner: Option<String>) -> Result<SandboxedModule, LoadError> {
        let Candidate { file, bytes, sha256 } = candidate;
        if let Some(tenants) = owner.as_ref().and_then(|_| file.parent()?.parent()) {
            make_private(tenants);
        }
        let (limits, problems) = match &owner {
            Some(uuid) => match self.tenant(uuid) {
                Some(tenant) if tenant.active => self.default_limits.clone().with_overrides(&tenant.limits),
                Some(_) => return Err(LoadError::Sandbox(format!("tenant {uuid} is disabled: its modules are not loaded"))),
                None => {
                    return Err(LoadError::Sandbox(format!(
                        "no tenant has UUID {uuid}: add it (plughost tenant add) or move the file out of tenants/{uuid}/"
                    )))
                }
            },
            None => (self.default_limits.clone(), Vec::new()),
        };
        for problem in problems {
            tracing::warn!(file = %file.display(), "{problem}");
        }
        let seq = self.sequence.fetch_add(1, Ordering::Relaxed);
        let library = self.lib_dir.join(format!("{}-{seq}.so", &sha256[..16]));
        write_private(&library, &bytes).map_err(|e| LoadError::Shadow(self.lib_dir.clone(), e))?;
        let label = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let spawned = Worker::spawn(self, Some(&library), &limits, owner.as_deref(), &label);
        let (worker, layers, manifest) = match spawned {
            Ok(spawned) => spawned,
            Err(err) => {
                let _ = fs::remove_file(&library);
                return Err(LoadError::Sandbox(err));
            }
        };
        let spec = match manifest.map(|m| ModuleSpec::from_abi(&m)) {
            Some(Ok(spec)) => spec,
            Some(Err(why)) => {
                let _ = fs::remove_file(&library);
                return Err(LoadError::InvalidManifest(why));
            }
            None => {
                let _ = fs::remove_file(&library);
                return Err(LoadError::Sandbox("the worker sent no manifest".into()));
            }
        };
        let pool = Arc::new(Pool {
            sandbox: self.clone(),
            owner: owner.clone(),
            module: spec.name.clone(),
            library,
            in_flight: AtomicU32::new(0),
            limits: Mutex::new(limits),
            idle: Mutex::new(vec![worker]),
            health: Mutex::new(Health::default()),
            troubled: std::sync::atomic::AtomicBool::new(false),
            layers: Mutex::new(layers),
            calls: AtomicU64::new(0),
            crashes: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            started: AtomicU64::new(1),
            queue: Mutex::new(VecDeque::new()),
            runners: AtomicU32::new(0),
            batched: AtomicU64::new(0),
            requeued: AtomicU64::new(0),
        });
        lock(&self.pools).push(Arc::downgrade(&pool));
        Ok(SandboxedModule {
            spec,
            file,
            sha256,
            size: bytes.len() as u64,
            owner,
            pool,
        })
    }
}

/// When the host is root, makes `folder` (if it exists) searchable by plughost's user only, so
/// that workers, under uids of their own, cannot even `stat` what is inside.
pub fn make_private(folder: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if !rustix::process::geteuid().is_root() {
        return;
    }
    let Ok(meta) = fs::metadata(folder) else { return };
    if meta.is_dir() && meta.permissions().mode() & 0o077 != 0 {
        if let Err(err) = fs::set_permissions(folder, fs::Permissions::from_mode(0o700)) {
            tracing::warn!("cannot make {} private to plughost's user ({err})", folder.display());
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Writes a file readable by its owner only, through a temporary name and a rename (a worker
/// reads it before it drops its privileges).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let temp = path.with_extension("tmp");
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)?;
    out.write_all(bytes)?;
    out.sync_all()?;
    fs::rename(&temp, path)
}

/// A response body charged to its tenant; the charge ends when the last reference to it does.
struct Held {
    body: Vec<u8>,
    counter: Arc<AtomicU64>,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.body
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.body.len() as u64, Ordering::AcqRel);
    }
}

/// A worker's own uid, given back when the worker is dropped (after it was reaped).
#[derive(Debug)]
struct UidLease {
    uid: u32,
    taken: Arc<Mutex<std::collections::HashSet<u32>>>,
}

impl Drop for UidLease {
    fn drop(&mut self) {
        lock(&self.taken).remove(&self.uid);
    }
}

/// Crashes and the state they led to.
#[derive(Debug, Default)]
struct Health {
    crashes: VecDeque<Instant>,
    consecutive: u32,
    backoff_until: Option<Instant>,
    quarantined: Option<String>,
}

/// The workers of one module version.
pub struct Pool {
    sandbox: Arc<Sandbox>,
    pub owner: Option<String>,
    pub module: String,
    library: PathBuf,
    limits: Mutex<Limits>,
    in_flight: AtomicU32,
    idle: Mutex<Vec<Worker>>,
    health: Mutex<Health>,
    /// Set while `health` has something to say (crashes, backoff, quarantine): calls skip its
    /// lock otherwise.
    troubled: std::sync::atomic::AtomicBool,
    layers: Mutex<Vec<Layer>>,
    calls: AtomicU64,
    crashes: AtomicU64,
    timeouts: AtomicU64,
    started: AtomicU64,
    /// Quick calls waiting for a runner, and the runners feeding them to workers.
    queue: Mutex<VecDeque<Job>>,
    runners: AtomicU32,
    batched: AtomicU64,
    requeued: AtomicU64,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("module", &self.module)
            .field("owner", &self.owner)
            .finish()
    }
}

/// What operators see of a pool.
#[derive(Debug, Serialize)]
pub struct PoolStatus {
    pub tenant: Option<String>,
    pub workers_idle: usize,
    pub workers_busy: usize,
    pub workers_started: u64,
    pub calls: u64,
    /// Calls of quick functions, sent to workers in batches.
    pub calls_batched: u64,
    /// Batched calls sent again to another worker because one before them failed.
    pub calls_requeued: u64,
    pub crashes: u64,
    pub timeouts: u64,
    pub quarantined: Option<String>,
    pub limits: Limits,
    pub layers: Vec<Layer>,
}

/// A call counted in flight until it ends.
struct InFlight<'a>(&'a AtomicU32);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why a call through a worker failed, before it becomes a [`SandboxError`].
enum Failure {
    TimedOut,
    Crashed { status: String, out_of_memory: bool },
    TooLarge(u64),
    Broken(String),
}

/// How quick a function has been, which decides how it is called: a function whose latest
/// calls each ran within `quick_max` (as its worker measured them) may share a worker with other
/// quick calls.
pub struct Pace<'a> {
    pub streak: &'a AtomicU32,
    pub quick_max: Option<Duration>,
}

/// Quick calls in a row before a function's calls are batched.
const QUICK_STREAK: u32 = 32;
/// Most calls sent to a worker in one write.
const MAX_BATCH: usize = 64;
/// Most request bytes sent to a worker in one write (a call larger than this goes alone). Below
/// a pipe's 64 KiB, so that the write never waits for the worker, which may be waiting for its
/// replies to be read.
const MAX_BATCH_BYTES: usize = 60 * 1024;

/// What a worker answered to one call: the outcome, the body, and how long the plugin took (µs).
type Answered = Result<(Outcome, Vec<u8>, u64), Failure>;

/// A quick call waiting in its pool's queue for a worker.
struct Job {
    id: u64,
    /// The host's request id, which the plugin's log lines for this call carry.
    request_id: String,
    frame: Vec<u8>,
    deadline: Instant,
    answer: oneshot::Sender<Answered>,
}

/// The answer a runner sends back for a job.
async fn answer_of(answered: oneshot::Receiver<Answered>) -> Answered {
    answered
        .await
        .unwrap_or_else(|_| Err(Failure::Broken("the worker's runner ended without an answer".to_owned())))
}

impl Pool {
    /// Calls a function in a worker and waits for its reply or the module's deadline, which this
    /// call enforces itself: past it the worker is killed.
    ///
    /// A function that has proven quick is not given a worker of its own: its calls queue, and
    /// a runner task (one per CPU) sends everything queued to one worker in one write and reads
    /// the replies together. Under load a worker then answers many calls per pair of context
    /// switches instead of one. A worker answers in order, so when one call of a batch fails
    /// (deadline, crash), the calls after it have not started: they go back to the queue. Any
    /// other call takes a worker of its own and is sent as a batch of one, the same way; its
    /// deadline counts from when it is sent.
    pub async fn call(self: &Arc<Self>, head: CallHead<'_>, body: &[u8], pace: Pace<'_>) -> Result<PluginReply, SandboxError> {
        let started = Instant::now();
        if self.troubled.load(Ordering::Acquire) {
            if let Some(why) = lock(&self.health).quarantined.clone() {
                return Err(SandboxError::Quarantined(why));
            }
        }
        let limits = self.limits();
        if self.in_flight.fetch_add(1, Ordering::SeqCst) >= limits.max_concurrency {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            return Err(SandboxError::Busy(limits.max_concurrency));
        }
        let _in_flight = InFlight(&self.in_flight);
        let deadline = started + limits.call_timeout;
        let quick = pace.quick_max.is_some() && pace.streak.load(Ordering::Relaxed) >= QUICK_STREAK;
        let result = match self.job(head, body, deadline) {
            Err(failure) => Err(failure),
            Ok((job, answered)) if quick => self.queued(job, answered, &limits).await,
            Ok((job, answered)) => {
                // A worker of its own: a batch of one.
                let mut worker = self.checkout(deadline).await.map_err(SandboxError::WorkerFailed)?;
                let mut batch = VecDeque::from([job]);
                match worker.run_batch(&mut batch, &limits, self).await {
                    Ok(()) => {
                        self.checkin(worker);
                        answer_of(answered).await
                    }
                    Err((_, failure)) => Err(failure),
                }
            }
        };
        if let (Ok((_, _, micros)), Some(max)) = (&result, pace.quick_max) {
            if Duration::from_micros(*micros) <= max {
                let _ = pace
                    .streak
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_add(1)));
            } else {
                pace.streak.store(0, Ordering::Relaxed);
            }
        } else {
            pace.streak.store(0, Ordering::Relaxed);
        }
        self.settle(result, &limits)
    }

    /// A call as a job: its frame, under an id unique in this host, and where its answer goes.
    fn job(&self, mut head: CallHead<'_>, body: &[u8], deadline: Instant) -> Result<(Job, oneshot::Receiver<Answered>), Failure> {
        let id = self.sandbox.sequence.fetch_add(1, Ordering::Relaxed);
        head.id = id;
        let request_id = head.request_id.clone().into_owned();
        let frame =
            encode_frame(&HostMsg::Call(head), body).map_err(|err| Failure::Broken(format!("the request could not be encoded: {err}")))?;
        let (answer, answered) = oneshot::channel();
        Ok((
            Job {
                id,
                request_id,
                frame,
                deadline,
                answer,
            },
            answered,
        ))
    }

    /// Queues a quick call and waits for a runner to answer it.
    async fn queued(self: &Arc<Self>, job: Job, answered: oneshot::Receiver<Answered>, limits: &Limits) -> Answered {
        self.batched.fetch_add(1, Ordering::Relaxed);
        lock(&self.queue).push_back(job);
        if self.claim_runner(limits) {
            tokio::spawn(Arc::clone(self).run_queue());
        }
        answer_of(answered).await
    }

    /// Counts one more runner if there are fewer than the CPUs this process may use.
    fn claim_runner(&self, limits: &Limits) -> bool {
        let most = self.sandbox.cpus.min(limits.max_concurrency.max(1));
        self.runners
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < most).then_some(n + 1))
            .is_ok()
    }

    /// Takes queued calls for one write; answers those whose deadline passed while they waited.
    fn take_batch(&self) -> VecDeque<Job> {
        let mut queue = lock(&self.queue);
        let mut batch = VecDeque::new();
        let mut bytes = 0;
        let now = Instant::now();
        while batch.len() < MAX_BATCH {
            let Some(next) = queue.front() else { break };
            if !batch.is_empty() && bytes + next.frame.len() > MAX_BATCH_BYTES {
                break;
            }
            let Some(job) = queue.pop_front() else { break };
            if job.deadline <= now {
                let _ = job.answer.send(Err(Failure::TimedOut));
                continue;
            }
            bytes += job.frame.len();
            batch.push_back(job);
        }
        batch
    }

    /// A runner: takes a worker and feeds it batches until the queue is empty.
    async fn run_queue(self: Arc<Self>) {
        loop {
            let mut batch = self.take_batch();
            if batch.is_empty() {
                self.runners.fetch_sub(1, Ordering::AcqRel);
                // A call queued after the batch was taken but before the count dropped would
                // otherwise wait for the next call to start a runner.
                if lock(&self.queue).is_empty() || !self.claim_runner(&self.limits()) {
                    return;
                }
                continue;
            }
            let deadline = batch.front().map_or_else(Instant::now, |job| job.deadline);
            let mut worker = match self.checkout(deadline).await {
                Ok(worker) => worker,
                Err(why) => {
                    for job in batch {
                        let _ = job.answer.send(Err(Failure::Broken(format!("no worker could start: {why}"))));
                    }
                    continue;
                }
            };
            let limits = self.limits();
            match worker.run_batch(&mut batch, &limits, &self).await {
                // Checked in after every batch, so that the call budget and the growth check
                // apply; the next batch takes the same (last idle) worker back.
                Ok(()) => self.checkin(worker),
                Err((job, failure)) => {
                    // The worker answers in order: the calls after the failed one never started
                    // when it hung, died, or is stuck writing a reply too large to be read (over
                    // a pipe's size, so it cannot have moved on); after a protocol error nothing
                    // is known.
                    let requeue = matches!(failure, Failure::TimedOut | Failure::Crashed { .. } | Failure::TooLarge(_));
                    let _ = job.answer.send(Err(failure));
                    if requeue {
                        self.requeued.fetch_add(batch.len() as u64, Ordering::Relaxed);
                        // They have not started: a full deadline from now, as anywhere else.
                        let fresh = Instant::now() + limits.call_timeout;
                        let mut queue = lock(&self.queue);
                        while let Some(mut job) = batch.pop_back() {
                            job.deadline = job.deadline.max(fresh);
                            queue.push_front(job);
                        }
                    } else {
                        for job in batch.drain(..) {
                            let _ = job.answer.send(Err(Failure::Broken(
                                "the worker failed on an earlier call of the same batch".to_owned(),
                            )));
                        }
                    }
                    drop(worker);
                }
            }
        }
    }

    /// A call's result, as the caller sees it; crashes and timeouts are counted.
    fn settle(&self, result: Answered, limits: &Limits) -> Result<PluginReply, SandboxError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok((outcome, body, _)) => {
                if self.troubled.load(Ordering::Acquire) {
                    let mut health = lock(&self.health);
                    health.consecutive = 0;
                    if health.quarantined.is_none() {
                        self.troubled.store(false, Ordering::Release);
                    }
                }
                match outcome {
                    Outcome::Ok {
                        status,
                        content_type,
                        headers,
                    } => Ok(PluginReply {
                        status,
                        content_type,
                        // A tenant's code answers on the host's origin: only headers that concern
                        // its own response pass.
                        headers: if self.owner.is_some() {
                            response_headers(headers, &self.module)
                        } else {
                            headers
                        },
                        body,
                    }),
                    Outcome::Err {
                        kind: ErrorKind::Panicked,
                        message,
                        ..
                    } => Err(SandboxError::Panicked(message)),
                    Outcome::Err { kind, code, message } => Err(SandboxError::Plugin { kind, code, message }),
                }
            }
            Err(Failure::TimedOut) => {
                self.timeouts.fetch_add(1, Ordering::Relaxed);
                self.sandbox.observer.call_timed_out();
                tracing::warn!(module = %self.module, tenant = self.owner.as_deref().unwrap_or("-"), "a sandboxed call passed its deadline; its worker was killed");
                Err(SandboxError::Timeout(limits.call_timeout))
            }
            Err(Failure::TooLarge(size)) => Err(SandboxError::ResponseTooLarge(size)),
            Err(Failure::Broken(why)) => {
                self.record_crash(&why);
                Err(SandboxError::WorkerFailed(why))
            }
            Err(Failure::Crashed { status, out_of_memory }) => {
                self.record_crash(&status);
                if out_of_memory {
                    Err(SandboxError::OutOfMemory(limits.memory_bytes >> 20))
                } else {
                    Err(SandboxError::Crashed(status))
                }
            }
        }
    }

    /// The limits in force (a tenant's overrides can change while the module is loaded).
    pub fn limits(&self) -> Limits {
        lock(&self.limits).clone()
    }

    fn set_limits(&self, limits: Limits) {
        *lock(&self.limits) = limits;
    }

    /// An idle worker, or a new one once the crash backoff has passed (waiting at most until
    /// `deadline`).
    async fn checkout(self: &Arc<Self>, deadline: Instant) -> Result<Worker, String> {
        let idle = lock(&self.idle).pop();
        if let Some(worker) = idle {
            return Ok(worker);
        }
        let wait = lock(&self.health)
            .backoff_until
            .map(|until| until.saturating_duration_since(Instant::now()));
        if let Some(wait) = wait.filter(|w| !w.is_zero()) {
            tokio::time::sleep(wait.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
        // Starting a process and loading the library blocks for milliseconds: not on this thread.
        let pool = Arc::clone(self);
        tokio::task::spawn_blocking(move || pool.spawn_worker())
            .await
            .map_err(|err| format!("the worker could not be started: {err}"))?
    }

    fn spawn_worker(&self) -> Result<Worker, String> {
        let (worker, layers, _) = Worker::spawn(
            &self.sandbox,
            Some(&self.library),
            &self.limits(),
            self.owner.as_deref(),
            &self.module,
        )?;
        self.started.fetch_add(1, Ordering::Relaxed);
        *lock(&self.layers) = layers;
        Ok(worker)
    }

    /// Returns a worker after a call, or retires it when it has served enough or grown too much.
    fn checkin(&self, mut worker: Worker) {
        let settings = &self.sandbox.settings;
        if worker.calls >= settings.max_calls {
            tracing::debug!(module = %self.module, calls = worker.calls, "worker retired after its call budget");
            return self.sandbox.retire(worker);
        }
        if worker.calls >= worker.rss_checked + 16 {
            worker.rss_checked = worker.calls;
            if let (Some(base), Some(now)) = (worker.rss_base, worker.rss()) {
                if now.saturating_sub(base) > settings.max_growth_bytes {
                    tracing::info!(module = %self.module, grown_mb = (now - base) >> 20, "worker retired: it grew past SANDBOX_MAX_GROWTH_MB");
                    return self.sandbox.retire(worker);
                }
            } else if worker.rss_base.is_none() {
                worker.rss_base = worker.rss();
            }
        }
        worker.last_used = Instant::now();
        lock(&self.idle).push(worker);
    }

    fn record_crash(&self, why: &str) {
        self.crashes.fetch_add(1, Ordering::Relaxed);
        self.sandbox.observer.worker_crashed();
        let settings = &self.sandbox.settings;
        let now = Instant::now();
        let mut health = lock(&self.health);
        self.troubled.store(true, Ordering::Release);
        health.crashes.push_back(now);
        while health
            .crashes
            .front()
            .is_some_and(|t| now.duration_since(*t) > settings.quarantine_window)
        {
            health.crashes.pop_front();
        }
        health.consecutive += 1;
        // Straight back after one crash; then 100 ms, 200 ms, … up to 5 s.
        let delay = match health.consecutive {
            0 | 1 => Duration::ZERO,
            n => Duration::from_millis(100u64.saturating_mul(1 << (n - 2).min(6))).min(Duration::from_secs(5)),
        };
        health.backoff_until = Some(now + delay);
        tracing::warn!(module = %self.module, tenant = self.owner.as_deref().unwrap_or("-"), "sandbox worker failed: {why}");
        if health.quarantined.is_none() && health.crashes.len() >= settings.quarantine_crashes as usize {
            let reason = format!(
                "its workers crashed {} times within {} s (last: {why})",
                health.crashes.len(),
                settings.quarantine_window.as_secs()
            );
            tracing::error!(module = %self.module, tenant = self.owner.as_deref().unwrap_or("-"), "module quarantined: {reason}");
            self.sandbox.observer.module_quarantined();
            health.quarantined = Some(reason);
            drop(health);
            let idle = std::mem::take(&mut *lock(&self.idle));
            idle.into_iter().for_each(|w| self.sandbox.retire(w));
        }
    }

    /// The sandbox this pool's workers come from.
    pub fn sandbox(&self) -> &Arc<Sandbox> {
        &self.sandbox
    }

    /// Lifts a quarantine; returns whether there was one.
    pub fn release(&self) -> bool {
        let mut health = lock(&self.health);
        let was = health.quarantined.take().is_some();
        health.crashes.clear();
        health.consecutive = 0;
        health.backoff_until = None;
        self.troubled.store(false, Ordering::Release);
        was
    }

    /// Why the module is quarantined, if it is.
    pub fn quarantined(&self) -> Option<String> {
        lock(&self.health).quarantined.clone()
    }

    pub fn status(&self) -> PoolStatus {
        let idle = lock(&self.idle).len();
        PoolStatus {
            tenant: self.owner.clone(),
            workers_idle: idle,
            workers_busy: self.in_flight.load(Ordering::Relaxed) as usize,
            workers_started: self.started.load(Ordering::Relaxed),
            calls: self.calls.load(Ordering::Relaxed),
            calls_batched: self.batched.load(Ordering::Relaxed),
            calls_requeued: self.requeued.load(Ordering::Relaxed),
            crashes: self.crashes.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            quarantined: self.quarantined(),
            limits: self.limits(),
            layers: lock(&self.layers).clone(),
        }
    }

    /// Keeps `SANDBOX_WARM_WORKERS` ready and stops workers idle for longer than
    /// `SANDBOX_IDLE_SECS` beyond them.
    fn maintain(&self) {
        let health = lock(&self.health);
        if health.quarantined.is_some() || health.backoff_until.is_some_and(|t| t > Instant::now()) {
            return;
        }
        drop(health);
        let settings = &self.sandbox.settings;
        let busy = self.in_flight.load(Ordering::Relaxed) as usize;
        let idle_count = {
            let mut idle = lock(&self.idle);
            let keep = (settings.warm_workers as usize).saturating_sub(busy);
            let now = Instant::now();
            let mut i = 0;
            while idle.len() > keep && i < idle.len() {
                if now.duration_since(idle[i].last_used) > settings.idle_timeout {
                    self.sandbox.retire(idle.remove(i));
                } else {
                    i += 1;
                }
            }
            idle.len()
        };
        if idle_count + busy < settings.warm_workers as usize {
            match self.spawn_worker() {
                Ok(worker) => lock(&self.idle).push(worker),
                Err(err) => self.record_crash(&format!("a warm worker could not start: {err}")),
            }
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let idle = std::mem::take(&mut *lock(&self.idle));
        idle.into_iter().for_each(|w| self.sandbox.retire(w));
        let _ = fs::remove_file(&self.library);
    }
}

fn maintain(sandbox: Weak<Sandbox>) {
    loop {
        thread::sleep(Duration::from_millis(250));
        let Some(sandbox) = sandbox.upgrade() else { return };
        sandbox.reap();
        let pools: Vec<Arc<Pool>> = {
            let mut pools = lock(&sandbox.pools);
            pools.retain(|p| p.strong_count() > 0);
            pools.iter().filter_map(Weak::upgrade).collect()
        };
        drop(sandbox);
        for pool in pools {
            pool.maintain();
        }
    }
}

/// A worker's two pipes: blocking while it loads (on a thread of its own), then driven by tokio
/// for calls.
enum Channel {
    Blocking {
        input: ChildStdin,
        output: BufReader<DeadlineReader>,
    },
    Async {
        input: tokio::net::unix::pipe::Sender,
        output: tokio::net::unix::pipe::Receiver,
        /// Bytes read past the last frame.
        buffer: Vec<u8>,
    },
    /// Lost in a failed conversion; the worker is then treated as crashed.
    Gone,
}

/// How an asynchronous call ended before it became a [`Failure`].
enum CallEnd {
    Closed,
    SendFailed(std::io::Error),
    Failed(Failure),
}

/// One worker process and its channels.
struct Worker {
    child: Child,
    channel: Channel,
    pid: u32,
    calls: u64,
    rss_base: Option<u64>,
    /// `calls` when the growth was last checked.
    rss_checked: u64,
    last_used: Instant,
    output_log: Option<thread::JoinHandle<bool>>,
    dir: PathBuf,
    /// Dropped after the process has been reaped (fields drop after `Drop::drop`).
    cgroup: Option<cgroup::WorkerCgroup>,
    uid: Option<UidLease>,
    log_budget: LogBudget,
    observer: Arc<dyn Observer>,
}

impl Worker {
    /// Starts a worker, has it confine itself and load `library`; returns it with the layers it
    /// reported and the plugin's manifest.
    fn spawn(
        sandbox: &Sandbox,
        library: Option<&Path>,
        limits: &Limits,
        tenant: Option<&str>,
        module: &str,
    ) -> Result<(Worker, Vec<Layer>, Option<plugin_api::abi::Manifest>), String> {
        let started = Instant::now();
        let id = sandbox.sequence.fetch_add(1, Ordering::Relaxed);
        let dir = sandbox.run_dir.join(format!("w{id}"));
        fs::create_dir_all(&dir).map_err(|e| format!("cannot create its working folder {}: {e}", dir.display()))?;
        let mut command = Command::new(&sandbox.program);
        command
            .arg("worker")
            .env_clear()
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = sandbox.spawner.spawn(command).map_err(|e| {
            let _ = fs::remove_dir(&dir);
            format!("cannot start {} worker: {e}", sandbox.program.display())
        })?;
        let pid = child.id();
        // Into its memory cgroup before it is told what to load.
        let (cgroup, cgroup_layer) = match &sandbox.cgroups {
            Ok(cgroups) => match cgroups.place(id, pid, limits.memory_bytes) {
                Ok(cgroup) => (
                    Some(cgroup),
                    Layer {
                        name: "memory_cgroup".into(),
                        active: true,
                        detail: format!(
                            "memory (resident and cache) limited to {} MiB by its own cgroup",
                            limits.memory_bytes >> 20
                        ),
                    },
                ),
                Err(why) => (None, unavailable_cgroup(why)),
            },
            Err(why) => (None, unavailable_cgroup(why.clone())),
        };
        let (Some(input), Some(output), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err("the worker's pipes were not set up".into());
        };
        let label = (tenant.unwrap_or("admin").to_owned(), module.to_owned());
        let output_log = thread::Builder::new()
            .name("sandbox-output".into())
            .spawn(move || log_output(stderr, &label.0, &label.1))
            .ok();
        sandbox.observer.worker_spawned();
        let mut worker = Worker {
            child,
            channel: Channel::Blocking {
                input,
                output: BufReader::new(DeadlineReader {
                    pipe: output,
                    deadline: None,
                }),
            },
            pid,
            calls: 0,
            rss_base: None,
            rss_checked: 0,
            last_used: Instant::now(),
            output_log,
            dir,
            cgroup,
            uid: sandbox.allocate_uid(),
            log_budget: LogBudget::default(),
            observer: Arc::clone(&sandbox.observer),
        };
        let load = HostMsg::Load {
            protocol: PROTOCOL_VERSION,
            library: library.map(|p| p.to_string_lossy().into_owned()),
            module: module.to_owned(),
            rlimits: Rlimits {
                address_space_bytes: limits.memory_bytes,
                cpu_seconds: sandbox.settings.cpu_seconds,
                open_files: sandbox.settings.open_files,
                uid: worker.uid.as_ref().map(|lease| lease.uid),
            },
        };
        let Channel::Blocking { input, output } = &mut worker.channel else {
            return Err("a new worker's channel is not blocking".into());
        };
        write_frame(input, &load, &[]).map_err(|e| format!("the worker did not take its load message: {e}"))?;
        output.get_mut().deadline = Some(started + LOAD_TIMEOUT);
        let loaded = read_frame::<WorkerMsg>(output, 64 << 20);
        output.get_mut().deadline = None;
        match loaded {
            Ok((WorkerMsg::Loaded { protocol, .. }, _)) if protocol != PROTOCOL_VERSION => {
                Err(format!("the worker speaks protocol {protocol}, the host {PROTOCOL_VERSION}"))
            }
            Ok((
                WorkerMsg::Loaded {
                    layers,
                    error: Some(error),
                    ..
                },
                _,
            )) => {
                let _ = layers;
                Err(error)
            }
            Ok((WorkerMsg::Loaded { mut layers, manifest, .. }, _)) => {
                layers.push(cgroup_layer);
                let took = started.elapsed();
                sandbox.observer.worker_loaded(took);
                tracing::debug!(module, pid, elapsed_ms = took.as_secs_f64() * 1000.0, "sandbox worker ready");
                Ok((worker, layers, manifest))
            }
            Ok((other, _)) => Err(format!("the worker answered its load message with {other:?}")),
            Err(FrameError::Closed) => Err(format!("the worker died while loading: {}", worker.exit_status())),
            Err(FrameError::Io(err)) if err.kind() == std::io::ErrorKind::TimedOut => {
                Err(format!("the worker did not answer within {} s", LOAD_TIMEOUT.as_secs()))
            }
            Err(err) => Err(format!("the worker's answer was unreadable: {err}")),
        }
    }

    /// Sends `batch` in one write and answers its calls as their replies come, in order. On a
    /// failure, returns the call it struck; the calls after it stay in `batch`.
    ///
    /// A call's deadline counts from when the worker could start it (the reply before it), not
    /// from when it was queued: a call queued behind one that turned slow is delayed, not failed.
    async fn run_batch(&mut self, batch: &mut VecDeque<Job>, limits: &Limits, pool: &Pool) -> Result<(), (Job, Failure)> {
        let (limit, timeout) = (limits.max_response_bytes as u64 + FRAME_OVERHEAD, limits.call_timeout);
        let Some(first_deadline) = batch.front().map(|job| job.deadline) else {
            return Ok(());
        };
        let fail = |batch: &mut VecDeque<Job>, failure: Failure| match batch.pop_front() {
            Some(job) => Err((job, failure)),
            None => Ok(()),
        };
        if let Err(err) = self.make_async() {
            let failure = self.crashed(format!("its channel could not be handed to the async runtime ({err})"));
            return fail(batch, failure);
        }
        let Channel::Async { input, output, buffer } = &mut self.channel else {
            let failure = self.crashed("its channel was lost".to_owned());
            return fail(batch, failure);
        };
        self.calls += batch.len() as u64;
        let mut frames = Vec::with_capacity(batch.iter().map(|job| job.frame.len()).sum());
        for job in batch.iter() {
            frames.extend_from_slice(&job.frame);
        }
        let sent = tokio::time::timeout_at(first_deadline.into(), tokio::io::AsyncWriteExt::write_all(input, &frames)).await;
        let mut startable = Instant::now();
        let end = match sent {
            Err(_) => Some(CallEnd::Failed(Failure::TimedOut)),
            Ok(Err(err)) => Some(CallEnd::SendFailed(err)),
            Ok(Ok(())) => loop {
                let Some(job) = batch.front() else { break None };
                let deadline = job.deadline.max(startable + timeout);
                let read = tokio::time::timeout_at(deadline.into(), read_frame_async::<WorkerMsg, _>(output, buffer, limit)).await;
                match read {
                    Err(_) => break Some(CallEnd::Failed(Failure::TimedOut)),
                    // The worker's word on which call a line belongs to is not taken: the line is
                    // the call's in progress, the first unanswered one.
                    Ok(Ok((WorkerMsg::Log { level, message, .. }, _))) => self
                        .log_budget
                        .spend(message.len(), || log_line(level, &message, &job.request_id, pool)),
                    Ok(Ok((
                        WorkerMsg::Reply {
                            id: answered,
                            outcome,
                            micros,
                        },
                        raw,
                    ))) if answered == job.id => {
                        startable = Instant::now();
                        self.log_budget.end_call(pool, &job.request_id);
                        if let Some(job) = batch.pop_front() {
                            let _ = job.answer.send(Ok((outcome, raw, micros)));
                        }
                    }
                    Ok(Ok((other, _))) => {
                        break Some(CallEnd::Failed(Failure::Broken(format!(
                            "the worker broke the protocol: {other:?}"
                        ))))
                    }
                    Ok(Err(FrameError::Closed)) => break Some(CallEnd::Closed),
                    Ok(Err(FrameError::TooLarge(size, _))) => {
                        break Some(CallEnd::Failed(Failure::TooLarge(size.saturating_sub(FRAME_OVERHEAD))))
                    }
                    Ok(Err(err)) => break Some(CallEnd::Failed(Failure::Broken(format!("the worker broke the protocol: {err}")))),
                }
            },
        };
        match end {
            None => Ok(()),
            Some(CallEnd::Closed) => {
                let failure = self.crashed(String::new());
                fail(batch, failure)
            }
            Some(CallEnd::SendFailed(err)) => {
                let failure = self.crashed(format!("the request could not be sent ({err})"));
                fail(batch, failure)
            }
            Some(CallEnd::Failed(failure)) => fail(batch, failure),
        }
    }

    /// Hands the pipes to tokio (once, at the first call), keeping what was read ahead.
    fn make_async(&mut self) -> std::io::Result<()> {
        if !matches!(self.channel, Channel::Blocking { .. }) {
            return Ok(());
        }
        let Channel::Blocking { input, output } = std::mem::replace(&mut self.channel, Channel::Gone) else {
            return Ok(());
        };
        let buffer = output.buffer().to_vec();
        let output = output.into_inner().pipe;
        let input = tokio::net::unix::pipe::Sender::from_owned_fd(std::os::fd::OwnedFd::from(input))?;
        let output = tokio::net::unix::pipe::Receiver::from_owned_fd(std::os::fd::OwnedFd::from(output))?;
        self.channel = Channel::Async { input, output, buffer };
        Ok(())
    }

    /// Tells the worker to exit (it is idle: the pipe has room for this small frame).
    fn goodbye(&mut self) {
        match &mut self.channel {
            Channel::Blocking { input, .. } => {
                let _ = write_frame(input, &HostMsg::Goodbye, &[]);
            }
            Channel::Async { input, .. } => {
                if let Ok(frame) = encode_frame(&HostMsg::Goodbye, &[]) {
                    let _ = input.try_write(&frame);
                }
            }
            Channel::Gone => {}
        }
    }

    /// The worker died: how, and whether it ran out of memory.
    fn crashed(&mut self, context: String) -> Failure {
        // The host's child outlives the worker in its PID namespace by the moment it takes to
        // pass on how the worker ended; a worker that closed its channel but runs on is ended
        // after that moment, so that waiting for its status cannot hang.
        let ending = Instant::now();
        while matches!(self.child.try_wait(), Ok(None)) && ending.elapsed() < Duration::from_millis(100) {
            thread::sleep(Duration::from_micros(200));
        }
        let _ = self.child.kill();
        let status = self.exit_status();
        let reported = self.output_log.take().and_then(|h| h.join().ok()).unwrap_or(false);
        let out_of_memory = reported || self.cgroup.as_ref().is_some_and(cgroup::WorkerCgroup::oom_killed);
        let status = if context.is_empty() {
            status
        } else {
            format!("{status}; {context}")
        };
        Failure::Crashed { status, out_of_memory }
    }

    fn exit_status(&mut self) -> String {
        use std::os::unix::process::ExitStatusExt;
        match self.child.wait() {
            Ok(status) => match (status.code(), status.signal()) {
                (Some(code), _) => format!("the worker exited with status {code}"),
                (None, Some(signal)) => format!("the worker was killed by signal {signal} ({})", signal_name(signal)),
                _ => format!("the worker ended ({status})"),
            },
            Err(err) => format!("the worker's end could not be read: {err}"),
        }
    }

    /// Resident memory, from `/proc`.
    /// The resident memory of the process that runs the plugin: in a PID namespace, the host's
    /// child waits outside it while its two children (the namespace's init and the worker) run
    /// inside; the init's few pages count too, which does not change the growth measured.
    fn rss(&self) -> Option<u64> {
        let statm = |pid: &str| -> Option<u64> {
            let statm = fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
            let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
            Some(pages * 4096)
        };
        let children = fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.pid)).unwrap_or_default();
        if children.trim().is_empty() {
            return statm(&self.pid.to_string());
        }
        children.split_whitespace().map(statm).sum()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(handle) = self.output_log.take() {
            let _ = handle.join();
        }
        let _ = fs::remove_dir_all(&self.dir);
        self.observer.worker_gone();
    }
}

fn unavailable_cgroup(why: String) -> Layer {
    Layer {
        name: "memory_cgroup".into(),
        active: false,
        detail: format!("{why}; memory is bounded by RLIMIT_AS alone"),
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGSEGV => "SIGSEGV, a memory fault",
        libc::SIGABRT => "SIGABRT, an abort",
        libc::SIGKILL => "SIGKILL",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGSYS => "SIGSYS, a forbidden system call",
        libc::SIGXCPU => "SIGXCPU, CPU time limit",
        libc::SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

/// A worker's reply pipe whose reads fail with `TimedOut` once `deadline` has passed, so that a
/// worker that stalls, even in the middle of a frame, cannot hold its caller.
struct DeadlineReader {
    pipe: ChildStdout,
    deadline: Option<Instant>,
}

impl Read for DeadlineReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        if let Some(deadline) = self.deadline {
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the worker's deadline passed"));
                }
                let mut fds = [PollFd::new(&self.pipe, PollFlags::IN)];
                let wait = Timespec {
                    tv_sec: left.as_secs() as i64,
                    tv_nsec: i64::from(left.subsec_nanos()),
                };
                match poll(&mut fds, Some(&wait)) {
                    Ok(0) => continue,
                    Ok(_) => break,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(err) => return Err(err.into()),
                }
            }
        }
        self.pipe.read(buf)
    }
}

/// Most response headers a tenant's function may set, and their total size.
const MAX_RESPONSE_HEADERS: usize = 64;
const MAX_RESPONSE_HEADER_BYTES: usize = 16 * 1024;

/// Whether a tenant's function may set a response header: those describing its own response, and
/// its own `x-` headers. Not cookies, HSTS, authentication challenges, CORS (the host's), or
/// anything about the connection or the host.
fn tenant_may_set(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    matches!(
        name.as_str(),
        "cache-control"
            | "content-disposition"
            | "content-encoding"
            | "content-language"
            | "content-location"
            | "etag"
            | "expires"
            | "last-modified"
            | "link"
            | "location"
            | "pragma"
            | "retry-after"
            | "vary"
    ) || (name.starts_with("x-") && !name.starts_with("x-plughost-") && name != "x-request-id")
}

/// A tenant's response headers through [`tenant_may_set`] and the bounds; what is dropped is logged.
fn response_headers(headers: Vec<(String, String)>, module: &str) -> Vec<(String, String)> {
    let offered = headers.len();
    let mut bytes = 0;
    let kept: Vec<(String, String)> = headers
        .into_iter()
        .filter(|(name, _)| tenant_may_set(name))
        .take(MAX_RESPONSE_HEADERS)
        .take_while(|(name, value)| {
            bytes += name.len() + value.len();
            bytes <= MAX_RESPONSE_HEADER_BYTES
        })
        .collect();
    if kept.len() < offered {
        tracing::warn!(
            module,
            offered,
            kept = kept.len(),
            "a tenant's function set response headers that are not its to set, or too many: the rest were dropped"
        );
    }
    kept
}

/// Log bytes a plugin may send through the protocol in one call, and in one worker's life.
const LOG_BUDGET_PER_CALL: usize = 16 * 1024;
const LOG_BUDGET_PER_WORKER: usize = 1 << 20;

/// What a worker's plugin has logged: lines past either budget are dropped and counted.
#[derive(Debug, Default)]
struct LogBudget {
    worker: usize,
    call: usize,
    dropped: u64,
}

impl LogBudget {
    /// Logs with `write` if the line fits in both budgets.
    fn spend(&mut self, len: usize, write: impl FnOnce()) {
        if self.call + len <= LOG_BUDGET_PER_CALL && self.worker + len <= LOG_BUDGET_PER_WORKER {
            self.call += len;
            self.worker += len;
            write();
        } else {
            self.dropped += 1;
        }
    }

    /// A call was answered: says how many of its lines were dropped, and starts the next call's budget.
    fn end_call(&mut self, pool: &Pool, request_id: &str) {
        if self.dropped > 0 {
            let tenant = pool.owner.as_deref().unwrap_or("admin");
            tracing::warn!(
                target: "plugin",
                tenant,
                module = pool.module.as_str(),
                request_id,
                dropped_lines = self.dropped,
                "the plugin logged more than {LOG_BUDGET_PER_CALL} bytes in one call or {LOG_BUDGET_PER_WORKER} bytes in its worker's life; the rest was dropped"
            );
        }
        self.call = 0;
        self.dropped = 0;
    }
}

/// A plugin's text with control characters escaped (`\n`, `\u{1b}`…), so that it cannot end a
/// log line and forge one that looks like the host's, nor drive a terminal.
pub fn escape_control(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if c.is_control() {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    std::borrow::Cow::Owned(escaped)
}

/// Writes a plugin's log line, tagged with its tenant and module.
fn log_line(level: u8, message: &str, request_id: &str, pool: &Pool) {
    use plugin_api::abi::LogLevel;
    let tenant = pool.owner.as_deref().unwrap_or("admin");
    let module = pool.module.as_str();
    let request_id = if request_id.is_empty() { "-" } else { request_id };
    let message = escape_control(message);
    match worker::level_from_wire(level) {
        LogLevel::Error => tracing::error!(target: "plugin", tenant, module, request_id, "{message}"),
        LogLevel::Warn => tracing::warn!(target: "plugin", tenant, module, request_id, "{message}"),
        LogLevel::Info => tracing::info!(target: "plugin", tenant, module, request_id, "{message}"),
        LogLevel::Debug => tracing::debug!(target: "plugin", tenant, module, request_id, "{message}"),
        LogLevel::Trace => tracing::trace!(target: "plugin", tenant, module, request_id, "{message}"),
    }
}

/// Logs what a worker prints (its stdout and stderr), line by line, up to [`OUTPUT_BUDGET`]
/// bytes; the rest is counted and dropped. Returns whether the worker reported an allocation
/// failure (the memory limit).
fn log_output(stderr: std::process::ChildStderr, tenant: &str, module: &str) -> bool {
    let mut reader = BufReader::new(stderr);
    let mut logged = 0usize;
    let mut dropped = 0u64;
    let mut out_of_memory = false;
    let mut line = Vec::new();
    loop {
        line.clear();
        // Lines are cut at 4 KiB so that one endless line cannot grow this buffer.
        match reader.by_ref().take(4096).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let text = String::from_utf8_lossy(&line);
                let text = escape_control(text.trim_end());
                let text = text.as_ref();
                if text.starts_with("memory allocation of") && text.ends_with("failed") {
                    out_of_memory = true;
                }
                if logged < OUTPUT_BUDGET {
                    logged += n;
                    tracing::info!(target: "plugin", tenant, module, stream = "output", "{text}");
                } else {
                    dropped += n as u64;
                }
            }
        }
    }
    if dropped > 0 {
        tracing::warn!(target: "plugin", tenant, module, dropped_bytes = dropped, "the worker printed more than {OUTPUT_BUDGET} bytes; the rest was dropped");
    }
    out_of_memory
}
