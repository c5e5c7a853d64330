//! The plugins folder as the server sees it: the routing table in force, a status record for every
//! file seen (loaded, failed, removed), and the count of library images mapped for good.
//!
//! Changes are applied file by file: a new version is loaded beside the old one and swapped in
//! atomically only if it loaded and its names are free; otherwise the old version keeps serving.
//! Requests in flight hold their module and finish on the version they started with.

mod apply;
mod tenants;
pub(crate) use tenants::{refresh_tenants, tenant_infos, tenant_of_file, tenant_of_folder, TENANTS};

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime},
};

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::{loader::LoadedModule, registry::Registry};

/// The state of one plugin file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum FileState {
    Loaded,
    Failed,
    Removed,
    /// A tenant's module that loaded but lost its name to the admin's module: served again
    /// once the name is free.
    Unrouted,
}

/// What an operator needs to know about one file in the plugins folder.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PluginStatus {
    pub file: String,
    /// `loaded` while a version of the file is served, even if a newer one failed.
    pub state: FileState,
    pub module: Option<String>,
    pub version: Option<String>,
    pub sha256: Option<String>,
    pub size_bytes: Option<u64>,
    pub loaded_at: Option<String>,
    /// The last load failure; cleared when a version loads.
    pub error: Option<String>,
    pub failed_at: Option<String>,
    /// How many times a new version replaced a served one.
    pub reload_count: u32,
    /// The tenant whose folder holds the file; absent for the admin's plugins.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// For a module in the sandbox tier: its workers, limits and confinement layers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<serde_json::Value>,
    #[serde(skip)]
    collided: bool,
    #[serde(skip)]
    failed_sha256: Option<String>,
    /// Modification time and size of the file and its signature when last looked at, for cheap
    /// rescans.
    #[serde(skip)]
    fingerprint: Option<Fingerprint>,
}

/// Library images mapped into this process. abi_stable never unmaps one, so images no longer
/// served are leaked until the process is recycled.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct ImageStats {
    pub mapped: usize,
    pub mapped_bytes: u64,
    pub leaked: usize,
    pub leaked_bytes: u64,
}

/// What one round of changes did.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    /// Files whose new version is now served, with the module name.
    pub swapped: Vec<(PathBuf, String)>,
    pub removed: Vec<PathBuf>,
    pub failed: Vec<PathBuf>,
}

#[derive(Default, Clone)]
struct Inner {
    status: BTreeMap<PathBuf, PluginStatus>,
    /// sha256 → size of every image mapped, routed or not.
    images: HashMap<String, u64>,
}

/// How often a long round of loads publishes its progress to readers.
const PUBLISH_EVERY: Duration = Duration::from_millis(100);

/// The routing table (read lock-free on every request) and the bookkeeping behind it (changed by
/// one loader at a time).
pub(crate) struct Plugins {
    registry: ArcSwap<Registry>,
    /// Changed by one loader at a time, which holds this lock while plugins load (a constructor
    /// may be slow).
    inner: Mutex<Inner>,
    /// What `inner` said when last published: read by `/health` and the admin's status list
    /// without waiting for a loader.
    published: ArcSwap<Inner>,
    shadow_dir: PathBuf,
    /// How many rounds of changes were applied; shown to operators, and steady when idle.
    rounds: std::sync::atomic::AtomicU64,
    /// Where tenants' modules run; without it they are refused.
    sandbox: Option<Arc<plughost_sandbox::Sandbox>>,
    /// Whether the admin's own plugins run in the sandbox too.
    admin_isolation: bool,
    /// When set, only files with a valid signature by one of these keys are loaded.
    trusted_keys: Option<Arc<crate::signing::TrustedKeys>>,
}

impl Plugins {
    pub(crate) fn new(data_dir: &Path) -> Plugins {
        Plugins {
            registry: ArcSwap::from_pointee(Registry::default()),
            inner: Mutex::new(Inner::default()),
            published: ArcSwap::from_pointee(Inner::default()),
            shadow_dir: shadow_dir(data_dir),
            rounds: std::sync::atomic::AtomicU64::new(0),
            sandbox: None,
            admin_isolation: false,
            trusted_keys: None,
        }
    }

    /// Loads only files signed by one of `keys` (see [`crate::signing`]).
    pub(crate) fn with_trusted_keys(mut self, keys: Option<Arc<crate::signing::TrustedKeys>>) -> Plugins {
        self.trusted_keys = keys;
        self
    }

    /// Runs tenants' modules (and, with `admin_isolation`, the admin's) in `sandbox`.
    pub(crate) fn with_sandbox(mut self, sandbox: Arc<plughost_sandbox::Sandbox>, admin_isolation: bool) -> Plugins {
        self.sandbox = Some(sandbox);
        self.admin_isolation = admin_isolation;
        self
    }

    fn tenant_active(&self, uuid: &str) -> bool {
        self.sandbox
            .as_ref()
            .and_then(|sandbox| sandbox.tenant(uuid))
            .is_some_and(|tenant| tenant.active)
    }

    /// The sandbox, if tenants' modules can run.
    pub(crate) fn sandbox(&self) -> Option<&Arc<plughost_sandbox::Sandbox>> {
        self.sandbox.as_ref()
    }

    /// The routing table in force.
    pub(crate) fn registry(&self) -> arc_swap::Guard<Arc<Registry>> {
        self.registry.load()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every file seen, with its state (as last published: never waits for a loader).
    pub(crate) fn status(&self) -> Vec<PluginStatus> {
        let registry = self.registry.load();
        let inner = self.published.load();
        inner
            .status
            .iter()
            .map(|(path, status)| {
                let mut status = status.clone();
                status.tenant = tenant_of_file(path);
                let pool = registry
                    .modules()
                    .iter()
                    .find(|m| &m.file == path)
                    .and_then(|m| m.sandbox().cloned());
                status.sandbox = pool.and_then(|pool| serde_json::to_value(pool.status()).ok());
                status
            })
            .collect()
    }

    /// How many rounds of changes were applied since start-up.
    pub(crate) fn rounds(&self) -> u64 {
        self.rounds.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Images mapped, and how many of them are no longer served.
    pub(crate) fn images(&self) -> ImageStats {
        let inner = self.published.load();
        let registry = self.registry.load();
        let routed: Vec<&str> = registry.modules().iter().map(|m| m.sha256.as_str()).collect();
        let mut stats = ImageStats::default();
        for (sha, size) in &inner.images {
            stats.mapped += 1;
            stats.mapped_bytes += size;
            if !routed.contains(&sha.as_str()) {
                stats.leaked += 1;
                stats.leaked_bytes += size;
            }
        }
        stats
    }

    /// The plugin files directly in `dir`, oldest first (by modification time, then name), so
    /// that when two modules claim one name, the one that was there first keeps it across restarts;
    /// then those in tenants' folders `dir/tenants/<uuid>/`, likewise (the admin's names win).
    pub(crate) fn list_folder(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        let mut files = sorted_plugins(dir)?;
        if let Ok(entries) = std::fs::read_dir(dir.join(TENANTS)) {
            let mut tenant_files = Vec::new();
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() && tenant_of_folder(&path).is_some() {
                    tenant_files.extend(sorted_plugins(&path).unwrap_or_default());
                }
            }
            files.extend(tenant_files);
        }
        Ok(files)
    }

    /// Loads every plugin file in `dir` at start-up. Bad files are skipped with one log line each.
    pub(crate) fn load_folder(&self, dir: &Path) -> std::io::Result<()> {
        let started = Instant::now();
        let files = Self::list_folder(dir)?;
        let applied = self.apply(&files);
        tracing::info!(
            loaded = applied.swapped.len(),
            failed = applied.failed.len(),
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "plugins folder {} scanned",
            dir.display()
        );
        Ok(())
    }

    /// Brings the routing table in line with `dir`: loads files that are new or whose modification
    /// time or size changed, unroutes deleted ones. For rescans after missed events or a
    /// recreated folder; cheap when nothing changed (one `stat` per file).
    pub(crate) fn reconcile(&self, dir: &Path) -> Applied {
        let on_disk = Self::list_folder(dir).unwrap_or_default();
        let changed: Vec<PathBuf> = {
            let inner = self.lock();
            let mut changed: Vec<PathBuf> = on_disk
                .iter()
                .filter(|path| inner.status.get(*path).and_then(|s| s.fingerprint) != fingerprint(path))
                .cloned()
                .collect();
            changed.extend(
                inner
                    .status
                    .iter()
                    .filter(|(p, s)| s.state != FileState::Removed && !on_disk.contains(p))
                    .map(|(p, _)| p.clone()),
            );
            // Tenants enabled or disabled since: their modules come and go.
            changed.extend(inner.status.iter().filter_map(|(path, status)| {
                let active = self.tenant_active(&tenant_of_file(path)?);
                let loaded = status.state == FileState::Loaded;
                let waiting = status.state == FileState::Failed && status.failed_sha256.is_none();
                ((active && waiting) || (!active && loaded)).then(|| path.clone())
            }));
            changed.sort();
            changed.dedup();
            changed
        };
        if changed.is_empty() {
            return Applied::default();
        }
        self.apply(&changed)
    }

    /// Applies the current content of `files`: a file that exists is loaded if its content
    /// changed; a file that is gone is unrouted. Modules refused for a name collision are tried
    /// again when a removal may have freed their name.
    pub(crate) fn apply(&self, files: &[PathBuf]) -> Applied {
        self.rounds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut inner = self.lock();
        let mut modules: Vec<Arc<LoadedModule>> = self.registry.load().modules().to_vec();
        let mut applied = Applied::default();
        self.apply_files(&mut inner, &mut modules, files, &mut applied);
        if !applied.removed.is_empty() {
            let retry: Vec<PathBuf> = inner
                .status
                .iter()
                .filter(|(_, s)| s.collided && matches!(s.state, FileState::Failed | FileState::Unrouted))
                .map(|(p, _)| p.clone())
                .collect();
            if !retry.is_empty() {
                for path in &retry {
                    if let Some(status) = inner.status.get_mut(path) {
                        status.failed_sha256 = None;
                    }
                }
                self.apply_files(&mut inner, &mut modules, &retry, &mut applied);
            }
        }
        let (registry, refused) = Registry::build(modules);
        for (module, reason) in refused {
            tracing::error!(file = %module.file.display(), "unexpected name collision after checks: {reason}");
        }
        self.registry.store(Arc::new(registry));
        self.published.store(Arc::new(inner.clone()));
        applied
    }
}

/// The plugin files directly in `dir`, oldest first.
fn sorted_plugins(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<(SystemTime, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| is_plugin_path(path) && path.is_file())
        .map(|path| {
            (
                std::fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH),
                path,
            )
        })
        .collect();
    files.sort();
    Ok(files.into_iter().map(|(_, path)| path).collect())
}

/// This process's own shadow folder, `DATA_DIR/shadow/<pid>`. While a worker is recycled, two
/// processes load the same files at once; in one shared folder one of them could delete the
/// other's shadow copy between its write and its `dlopen`. Empty folders of processes gone are
/// removed here.
fn shadow_dir(data_dir: &Path) -> PathBuf {
    let root = data_dir.join("shadow");
    if let Ok(entries) = std::fs::read_dir(&root) {
        for entry in entries.flatten() {
            // Fails, harmlessly, for a folder in use (not empty) and for files.
            let _ = std::fs::remove_dir(entry.path());
        }
    }
    root.join(std::process::id().to_string())
}

/// Whether a plugin file name is one the server loads: `*.so`, not hidden (editors' and
/// deploy tools' temporary files start with a dot).
pub(crate) fn is_plugin_path(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    name.ends_with(".so") && !name.starts_with('.')
}

fn status_entry<'a>(inner: &'a mut Inner, file: &Path) -> &'a mut PluginStatus {
    inner.status.entry(file.to_path_buf()).or_insert_with(|| PluginStatus {
        file: file_name(file),
        state: FileState::Failed,
        module: None,
        version: None,
        sha256: None,
        size_bytes: None,
        loaded_at: None,
        error: None,
        failed_at: None,
        reload_count: 0,
        tenant: None,
        sandbox: None,
        collided: false,
        failed_sha256: None,
        fingerprint: None,
    })
}

type Fingerprint = ((SystemTime, u64), Option<(SystemTime, u64)>);

fn fingerprint(path: &Path) -> Option<Fingerprint> {
    let stamp = |path: &Path| {
        let meta = std::fs::metadata(path).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    };
    Some((stamp(path)?, stamp(&crate::signing::signature_path(path))))
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}
