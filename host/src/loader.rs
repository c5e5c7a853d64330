//! A loaded module as the host keeps it: its spec, where its code runs (mapped into this process,
//! or in a sandbox pool), its per-function counters. Reading, checking and mapping the file are
//! the runtime's ([`plughost_runtime::library`]).

use std::{
    fs,
    path::{Path, PathBuf},
    time::SystemTime,
};

use abi_stable::std_types::{RResult, RStr};
use plughost_runtime::{
    call::{invoke, CallInput, Target},
    library::{open_plugin, read, write_shadow, Candidate, LoadError},
    manifest::ModuleSpec,
};
use plugin_api::abi::{CallError, CallResponse, HostServices, HostServicesRef, LogLevel, PluginModRef};

/// A loaded plugin module: its validated manifest and its root module.
pub struct LoadedModule {
    pub spec: ModuleSpec,
    /// The file in the plugins folder it was loaded from.
    pub file: PathBuf,
    pub sha256: String,
    pub size: u64,
    pub loaded_at: SystemTime,
    /// Per function: how many of its latest calls in a row were quick (see `dispatch`).
    pub quick_streaks: Vec<std::sync::atomic::AtomicU32>,
    /// Per function: its metric series, resolved on first use.
    pub(crate) metrics: Vec<crate::metrics::FunctionMetrics>,
    /// The tenant whose folder it came from; `None` for the admin's plugins.
    pub owner: Option<String>,
    pub backend: Backend,
}

/// Where a module's code runs.
pub enum Backend {
    /// Mapped into this process and called directly.
    InProcess(PluginModRef),
    /// In confined worker processes; this process never maps it.
    Sandbox(std::sync::Arc<plughost_sandbox::Pool>),
    /// No code at all: the modules of the routing unit tests, which are never called.
    #[cfg(test)]
    Detached,
}

impl std::fmt::Debug for LoadedModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModule")
            .field("name", &self.spec.name)
            .field("file", &self.file)
            .finish()
    }
}

impl LoadedModule {
    /// Calls `target`, a function of the plugin's own list. Blocks; panics inside
    /// the plugin come back as errors.
    ///
    /// A sandboxed module is not called here: the caller asks its [`Backend::Sandbox`] pool.
    pub fn call(&self, target: Target<'_>, input: &CallInput) -> RResult<CallResponse, CallError> {
        match &self.backend {
            Backend::InProcess(root) => invoke(*root, target, input),
            #[cfg(test)]
            Backend::Detached => RResult::RErr(CallError {
                kind: plugin_api::ErrorKind::Internal,
                code: "DETACHED".into(),
                message: "a module of the unit tests has no code".into(),
            }),
            Backend::Sandbox(_) => RResult::RErr(CallError {
                kind: plugin_api::ErrorKind::Internal,
                code: "SANDBOXED".into(),
                message: "a sandboxed module is called through its worker pool".into(),
            }),
        }
    }

    /// The worker pool of a sandboxed module.
    pub fn sandbox(&self) -> Option<&std::sync::Arc<plughost_sandbox::Pool>> {
        match &self.backend {
            Backend::Sandbox(pool) => Some(pool),
            Backend::InProcess(_) => None,
            #[cfg(test)]
            Backend::Detached => None,
        }
    }

    /// Builds a module around a validated spec.
    pub fn new(spec: ModuleSpec, file: PathBuf, sha256: String, size: u64, owner: Option<String>, backend: Backend) -> LoadedModule {
        let quick_streaks = (0..spec.functions.len()).map(|_| Default::default()).collect();
        let metrics = (0..spec.functions.len()).map(|_| Default::default()).collect();
        LoadedModule {
            spec,
            file,
            sha256,
            size,
            loaded_at: SystemTime::now(),
            quick_streaks,
            metrics,
            owner,
            backend,
        }
    }
}

/// Reads and loads `file` (see [`read`] and [`load_candidate`]).
pub fn load(file: &Path, shadow_dir: &Path) -> Result<LoadedModule, LoadError> {
    load_candidate(read(file)?, shadow_dir)
}

/// Loads what [`read`] returned from a shadow copy under `shadow_dir`, kept only while it is
/// being mapped, then checks the ABI version and the manifest.
pub fn load_candidate(candidate: Candidate, shadow_dir: &Path) -> Result<LoadedModule, LoadError> {
    let Candidate { file, bytes, sha256 } = candidate;
    let shadow = write_shadow(&bytes, &sha256, &file, shadow_dir)?;
    let loaded = open_plugin(&shadow, host_services());
    // The mapped image outlives its directory entry; removing it keeps DATA_DIR from filling up.
    let _ = fs::remove_file(&shadow);
    let (root, manifest) = loaded?;
    let spec = ModuleSpec::from_abi(&manifest).map_err(LoadError::InvalidManifest)?;
    let size = bytes.len() as u64;
    Ok(LoadedModule::new(spec, file, sha256, size, None, Backend::InProcess(root)))
}

fn host_services() -> HostServicesRef {
    use abi_stable::prefix_type::PrefixTypeTrait;
    static SERVICES: std::sync::OnceLock<HostServicesRef> = std::sync::OnceLock::new();
    *SERVICES.get_or_init(|| HostServices { log: plugin_log }.leak_into_prefix())
}

/// A plugin's log line, written by the host's logger and tagged with the module.
extern "C" fn plugin_log(level: LogLevel, module: RStr<'_>, message: RStr<'_>) {
    let module = module.as_str();
    let message = message.as_str();
    let id = crate::access::current_request_id();
    let request_id = id.as_deref().unwrap_or("-");
    match level {
        LogLevel::Error => tracing::error!(target: "plugin", module, request_id, "{message}"),
        LogLevel::Warn => tracing::warn!(target: "plugin", module, request_id, "{message}"),
        LogLevel::Info => tracing::info!(target: "plugin", module, request_id, "{message}"),
        LogLevel::Debug => tracing::debug!(target: "plugin", module, request_id, "{message}"),
        LogLevel::Trace => tracing::trace!(target: "plugin", module, request_id, "{message}"),
    }
}
