//! The sandbox: its folders, the tenants its pools run for, loading a library into a first
//! worker (or only probing, or inspecting), and the thread that keeps every pool maintained.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        Arc, Mutex, RwLock, Weak,
    },
    thread,
    time::Duration,
};

use plughost_runtime::{
    library::{Candidate, LoadError},
    manifest::ModuleSpec,
};

use crate::{
    batch::Queue,
    buffers::TenantBuffers,
    error::SpawnError,
    health::Health,
    launcher::Launcher,
    lock,
    observer::Observer,
    pool::Pool,
    process::{Retiring, Worker},
    protocol::Layer,
    settings::{Limits, Settings, TenantInfo},
};

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
    pub(crate) launcher: Arc<Launcher>,
    pub(crate) retiring: Arc<Retiring>,
    pub(crate) buffers: Arc<TenantBuffers>,
    pub(crate) lib_dir: PathBuf,
    pub(crate) default_limits: Limits,
    pub(crate) tenants: RwLock<HashMap<String, TenantInfo>>,
    pub(crate) pools: Mutex<Vec<Weak<Pool>>>,
    pub(crate) probe: Mutex<Option<Vec<Layer>>>,
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
            buffers: Arc::new(TenantBuffers::new(settings.tenant_max_buffered_bytes)),
            launcher: Arc::new(Launcher::new(program, run_dir, settings, observer)?),
            retiring: Arc::default(),
            lib_dir,
            default_limits,
            tenants: RwLock::new(HashMap::new()),
            pools: Mutex::new(Vec::new()),
            probe: Mutex::new(None),
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

    /// The settings its workers run under.
    pub fn settings(&self) -> &Settings {
        &self.launcher.settings
    }

    /// A tenant by UUID, if known.
    pub fn tenant(&self, uuid: &str) -> Option<TenantInfo> {
        self.tenants.read().unwrap_or_else(|p| p.into_inner()).get(uuid).cloned()
    }

    /// Starts a worker that only confines itself and reports its layers, to show operators what
    /// this machine enforces before any tenant module is loaded.
    pub fn probe(self: &Arc<Self>) -> Vec<Layer> {
        let layers = match Worker::spawn(&self.launcher, None, &self.default_limits, None, "probe") {
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
    pub fn inspect(&self, bytes: &[u8]) -> Result<ModuleSpec, SpawnError> {
        let seq = self.launcher.sequence.fetch_add(1, Ordering::Relaxed);
        let library = self.lib_dir.join(format!("inspect-{seq}.so"));
        write_private(&library, bytes).map_err(|e| format!("cannot write {}: {e}", library.display()))?;
        let spawned = Worker::spawn(&self.launcher, Some(&library), &self.default_limits, None, "inspect");
        let _ = fs::remove_file(&library);
        let (_, _, manifest) = spawned?;
        let manifest = manifest.ok_or_else(|| "the worker sent no manifest".to_owned())?;
        ModuleSpec::from_abi(&manifest).map_err(|why| SpawnError(format!("its manifest is invalid: {why}")))
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
        let seq = self.launcher.sequence.fetch_add(1, Ordering::Relaxed);
        let library = self.lib_dir.join(format!("{}-{seq}.so", &sha256[..16]));
        write_private(&library, &bytes).map_err(|e| LoadError::Shadow(self.lib_dir.clone(), e))?;
        let label = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let spawned = Worker::spawn(&self.launcher, Some(&library), &limits, owner.as_deref(), &label);
        let (worker, layers, manifest) = match spawned {
            Ok(spawned) => spawned,
            Err(err) => {
                let _ = fs::remove_file(&library);
                return Err(LoadError::Sandbox(err.to_string()));
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
            launcher: Arc::clone(&self.launcher),
            retiring: Arc::clone(&self.retiring),
            buffers: Arc::clone(&self.buffers),
            owner: owner.clone(),
            module: spec.name.clone(),
            file_label: label,
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
            queue: Queue::default(),
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

pub(crate) fn maintain(sandbox: Weak<Sandbox>) {
    loop {
        thread::sleep(Duration::from_millis(250));
        let Some(sandbox) = sandbox.upgrade() else { return };
        sandbox.retiring.reap();
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
