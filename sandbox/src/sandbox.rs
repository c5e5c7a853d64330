//! The sandbox: where workers come from (the spawner thread, their folders, uids and cgroups),
//! the tenants they run for, loading a library into a first worker, and the thread that keeps
//! every pool maintained.

use std::{
    collections::{HashMap, VecDeque},
    fs,
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        Arc, Mutex, RwLock, Weak,
    },
    thread,
    time::{Duration, Instant},
};

use plughost_runtime::{
    library::{Candidate, LoadError},
    manifest::ModuleSpec,
};

use crate::{
    cgroup,
    health::Health,
    lock,
    observer::Observer,
    pool::Pool,
    process::Worker,
    protocol::Layer,
    settings::{Limits, Settings, TenantInfo},
};

/// How long a worker told goodbye may take to exit before it is killed.
pub(crate) const GOODBYE_GRACE: Duration = Duration::from_secs(1);

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

/// What is shared by every pool: where workers come from and the tenants they run for.
pub struct Sandbox {
    pub(crate) program: PathBuf,
    pub(crate) lib_dir: PathBuf,
    pub(crate) run_dir: PathBuf,
    pub settings: Settings,
    pub(crate) default_limits: Limits,
    pub(crate) tenants: RwLock<HashMap<String, TenantInfo>>,
    pub(crate) pools: Mutex<Vec<Weak<Pool>>>,
    pub(crate) probe: Mutex<Option<Vec<Layer>>>,
    pub(crate) sequence: AtomicU64,
    /// The CPUs this process may run on: how many runners feed a pool's quick calls to workers.
    pub(crate) cpus: u32,
    /// Where workers' memory cgroups go, or why there are none.
    pub(crate) cgroups: Result<cgroup::MemoryCgroups, String>,
    /// Workers told goodbye, and when: reaped once they exit, killed after [`GOODBYE_GRACE`].
    pub(crate) retiring: Mutex<Vec<(Worker, Instant)>>,
    pub(crate) spawner: Spawner,
    /// The uids of this process's live workers, when the host is root and gives each its own.
    pub(crate) uids: Arc<Mutex<std::collections::HashSet<u32>>>,
    /// Bytes of each tenant's responses not yet sent, by tenant.
    pub(crate) buffered: Mutex<HashMap<String, Arc<AtomicU64>>>,
    pub(crate) observer: Arc<dyn Observer>,
}

pub(crate) fn random_u32() -> u32 {
    let mut bytes = [0u8; 4];
    // The kernel's generator does not fail once the system has booted; zero would only make the
    // draw less random, never unsafe (uids in use are skipped).
    let _ = getrandom::fill(&mut bytes);
    u32::from_le_bytes(bytes)
}

/// The range of uids workers get when the host runs as root: above every ordinary and system
/// account, below the 32-bit values that mean "no uid".
pub(crate) const WORKER_UIDS: std::ops::Range<u32> = 0x4000_0000..0x7fff_0000;

/// Starts worker processes from one long-lived thread. A worker asks to die with its parent, and
/// Linux sends that signal when the *thread* that forked it ends: a blocking-pool thread retired
/// after idling would take its workers with it.
pub(crate) struct Spawner {
    pub(crate) requests: Mutex<std::sync::mpsc::Sender<(Command, std::sync::mpsc::Sender<std::io::Result<Child>>)>>,
}

impl Spawner {
    pub(crate) fn start() -> std::io::Result<Spawner> {
        let (tx, rx) = std::sync::mpsc::channel::<(Command, std::sync::mpsc::Sender<std::io::Result<Child>>)>();
        thread::Builder::new().name("sandbox-spawner".into()).spawn(move || {
            for (mut command, reply) in rx {
                let _ = reply.send(command.spawn());
            }
        })?;
        Ok(Spawner { requests: Mutex::new(tx) })
    }

    pub(crate) fn spawn(&self, command: Command) -> std::io::Result<Child> {
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
    pub(crate) fn allocate_uid(&self) -> Option<UidLease> {
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
    pub(crate) fn retire(&self, mut worker: Worker) {
        worker.goodbye();
        lock(&self.retiring).push((worker, Instant::now()));
    }

    /// Reaps retired workers that have exited; kills those that outstay [`GOODBYE_GRACE`].
    pub(crate) fn reap(&self) {
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

/// Writes a file readable by its owner only, through a temporary name and a rename (a worker
/// reads it before it drops its privileges).
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
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
pub(crate) struct Held {
    pub(crate) body: Vec<u8>,
    pub(crate) counter: Arc<AtomicU64>,
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
pub(crate) struct UidLease {
    pub(crate) uid: u32,
    pub(crate) taken: Arc<Mutex<std::collections::HashSet<u32>>>,
}

impl Drop for UidLease {
    fn drop(&mut self) {
        lock(&self.taken).remove(&self.uid);
    }
}

pub(crate) fn maintain(sandbox: Weak<Sandbox>) {
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
