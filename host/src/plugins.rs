//! The plugins folder as the server sees it: the routing table in force, and a status record for
//! every file seen (loaded, failed, removed) for operators.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Instant, SystemTime},
};

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::{
    loader::{self, LoadedModule},
    registry::Registry,
};

/// The state of one plugin file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileState {
    Loaded,
    Failed,
    Removed,
}

/// What an operator needs to know about one file in the plugins folder.
#[derive(Debug, Clone, Serialize)]
pub struct PluginStatus {
    pub file: String,
    pub state: FileState,
    pub module: Option<String>,
    pub version: Option<String>,
    pub sha256: Option<String>,
    pub loaded_at: Option<String>,
    pub error: Option<String>,
    pub reload_count: u32,
}

/// The routing table (read lock-free on every request) and the status list (read by operators).
pub struct Plugins {
    registry: ArcSwap<Registry>,
    status: Mutex<BTreeMap<PathBuf, PluginStatus>>,
    shadow_dir: PathBuf,
}

impl Plugins {
    pub fn new(data_dir: &Path) -> Plugins {
        Plugins {
            registry: ArcSwap::from_pointee(Registry::default()),
            status: Mutex::new(BTreeMap::new()),
            shadow_dir: data_dir.join("shadow"),
        }
    }

    /// The routing table in force.
    pub fn registry(&self) -> arc_swap::Guard<Arc<Registry>> {
        self.registry.load()
    }

    /// Every file seen, with its state.
    pub fn status(&self) -> Vec<PluginStatus> {
        self.status.lock().map(|s| s.values().cloned().collect()).unwrap_or_default()
    }

    /// Loads every `.so` file directly in `dir` and routes what loaded. Bad files are skipped with
    /// one log line each and recorded as failed.
    ///
    /// Files load oldest first (by modification time, then name), so that when two modules claim
    /// the same name or alias, the one that was there first keeps it across restarts.
    pub fn load_folder(&self, dir: &Path) -> std::io::Result<()> {
        let started = Instant::now();
        let mut files: Vec<(SystemTime, PathBuf)> = std::fs::read_dir(dir)?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| path.is_file() && path.extension().is_some_and(|ext| ext == "so"))
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
        let files: Vec<PathBuf> = files.into_iter().map(|(_, path)| path).collect();
        let mut loaded = Vec::new();
        for file in &files {
            match loader::load(file, &self.shadow_dir) {
                Ok(module) => loaded.push(Arc::new(module)),
                Err(err) => {
                    tracing::warn!(file = %file.display(), "plugin not loaded: {err}");
                    self.record_failure(file, err.to_string());
                }
            }
        }
        let (registry, refused) = Registry::build(loaded);
        for (module, reason) in refused {
            tracing::warn!(file = %module.file.display(), "plugin not loaded: {reason}");
            self.record_failure(&module.file, reason);
        }
        for module in registry.modules() {
            self.record_loaded(module);
            tracing::info!(
                file = %module.file.display(),
                module = %module.spec.name,
                version = %module.spec.version,
                functions = module.spec.functions.len(),
                "plugin loaded"
            );
        }
        tracing::info!(
            loaded = registry.modules().len(),
            failed = files.len() - registry.modules().len(),
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "plugins folder {} scanned",
            dir.display()
        );
        self.registry.store(Arc::new(registry));
        Ok(())
    }

    fn record_loaded(&self, module: &LoadedModule) {
        self.update(&module.file, |status| {
            status.state = FileState::Loaded;
            status.module = Some(module.spec.name.clone());
            status.version = Some(module.spec.version.clone());
            status.sha256 = Some(module.sha256.clone());
            status.loaded_at = Some(timestamp(module.loaded_at));
            status.error = None;
        });
    }

    fn record_failure(&self, file: &Path, error: String) {
        self.update(file, |status| {
            status.state = FileState::Failed;
            status.error = Some(error);
        });
    }

    fn update(&self, file: &Path, change: impl FnOnce(&mut PluginStatus)) {
        if let Ok(mut all) = self.status.lock() {
            let status = all.entry(file.to_path_buf()).or_insert_with(|| PluginStatus {
                file: file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                state: FileState::Failed,
                module: None,
                version: None,
                sha256: None,
                loaded_at: None,
                error: None,
                reload_count: 0,
            });
            change(status);
        }
    }
}

/// RFC 3339, to the second, in UTC.
pub fn timestamp(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}
