//! Loading one plugin file: check it is a shared library, shadow-copy it to a content-hashed path,
//! load the copy through abi_stable, check the ABI and the manifest.
//!
//! The watched file itself is never mapped: `dlopen` caches images by path, and overwriting a
//! mapped library crashes the process (DESIGN §7). abi_stable never unloads a library, so every
//! image loaded stays mapped for the life of the process.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    time::SystemTime,
};

use abi_stable::{
    library::{lib_header_from_path, LibraryError, RootModule},
    std_types::{RResult, RSlice, RStr, Tuple2},
};
use plugin_api::abi::{CallError, CallRequest, CallResponse, HostServices, HostServicesRef, LogLevel, PluginModRef, ABI_VERSION};
use sha2::{Digest, Sha256};

use crate::manifest::ModuleSpec;

/// Largest plugin file accepted.
const MAX_PLUGIN_BYTES: u64 = 512 * 1024 * 1024;

/// Why a file could not be loaded as a plugin. Each message is one short line.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read the file: {0}")]
    Read(#[source] std::io::Error),
    #[error("the file is {0} bytes, over the {MAX_PLUGIN_BYTES}-byte limit for a plugin")]
    TooLarge(u64),
    #[error(transparent)]
    Elf(#[from] crate::elf::ElfError),
    #[error("cannot write the shadow copy under {0}: {1}")]
    Shadow(PathBuf, #[source] std::io::Error),
    #[error("the dynamic loader refused it: {0}")]
    Open(String),
    #[error("not a plughost plugin: it exports no plugin root module (use plugin_api::export_plugin!)")]
    NotAPlugin,
    #[error("built against an incompatible plugin-api: {0}; rebuild it against plugin-api {host}", host = plugin_api_version())]
    Incompatible(String),
    #[error("built for plugin ABI version {found}, this host speaks version {ABI_VERSION}: rebuild it against this plugin-api")]
    AbiVersion { found: u32 },
    #[error("its manifest could not be read: {0}")]
    Manifest(String),
    #[error("its manifest is invalid: {0}")]
    InvalidManifest(String),
    #[error("the sandbox could not load it: {0}")]
    Sandbox(String),
}

impl LoadError {
    /// Whether the library was mapped before the error: abi_stable never unmaps it, so it counts
    /// against the reload leak budget.
    pub fn left_mapped(&self) -> bool {
        !matches!(
            self,
            LoadError::Read(_)
                | LoadError::TooLarge(_)
                | LoadError::Elf(_)
                | LoadError::Shadow(..)
                | LoadError::Open(_)
                | LoadError::Sandbox(_)
        )
    }
}

/// The plugin-api version this host was built with.
pub fn plugin_api_version() -> String {
    PluginModRef::VERSION_STRINGS.version.to_string()
}

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
    pub metrics: Vec<crate::metrics::FunctionMetrics>,
    /// The tenant whose folder it came from; `None` for the admin's plugins.
    pub owner: Option<String>,
    pub backend: Backend,
}

/// Where a module's code runs.
pub enum Backend {
    /// Mapped into this process and called directly.
    InProcess(PluginModRef),
    /// In confined worker processes; this process never maps it.
    Sandbox(std::sync::Arc<crate::sandbox::Pool>),
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
    /// Calls the function at `index` of the plugin's own function list. Blocks; panics inside
    /// the plugin come back as errors.
    ///
    /// A sandboxed module is not called here: the caller asks its [`Backend::Sandbox`] pool.
    pub fn call(&self, index: u32, parts: &CallParts<'_>) -> RResult<CallResponse, CallError> {
        match &self.backend {
            Backend::InProcess(root) => invoke(*root, index, parts),
            Backend::Sandbox(_) => RResult::RErr(CallError {
                kind: plugin_api::ErrorKind::Internal,
                code: "SANDBOXED".into(),
                message: "a sandboxed module is called through its worker pool".into(),
            }),
        }
    }

    /// The worker pool of a sandboxed module.
    pub fn sandbox(&self) -> Option<&std::sync::Arc<crate::sandbox::Pool>> {
        match &self.backend {
            Backend::Sandbox(pool) => Some(pool),
            Backend::InProcess(_) => None,
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

/// What a call hands a plugin, borrowed from the request (in this process) or from the frame
/// that carried it (in a sandbox worker).
pub struct CallParts<'a> {
    pub method: &'a str,
    pub module: &'a str,
    pub function: &'a str,
    pub kwargs_json: &'a str,
    pub query: &'a str,
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
    pub content_type: &'a str,
    pub request_id: &'a str,
}

/// Calls function `index` of a plugin's root module through the stable ABI.
pub fn invoke(root: PluginModRef, index: u32, parts: &CallParts<'_>) -> RResult<CallResponse, CallError> {
    let headers: Vec<Tuple2<RStr<'_>, RStr<'_>>> = parts
        .headers
        .iter()
        .map(|(name, value)| Tuple2(RStr::from_str(name), RStr::from_str(value)))
        .collect();
    let request = CallRequest {
        method: RStr::from_str(parts.method),
        module: RStr::from_str(parts.module),
        function: RStr::from_str(parts.function),
        kwargs_json: RStr::from_str(parts.kwargs_json),
        query: RStr::from_str(parts.query),
        headers: RSlice::from_slice(&headers),
        body: RSlice::from_slice(parts.body),
        content_type: RStr::from_str(parts.content_type),
        request_id: RStr::from_str(parts.request_id),
    };
    (root.call())(index, &request)
}

/// A plugin file read into memory: the exact bytes that will be loaded, and their hash.
pub struct Candidate {
    pub file: PathBuf,
    pub bytes: Vec<u8>,
    pub sha256: String,
}

/// Reads `file` and checks that it is a complete shared object for this machine.
pub fn read(file: &Path) -> Result<Candidate, LoadError> {
    let size = fs::metadata(file).map_err(LoadError::Read)?.len();
    if size > MAX_PLUGIN_BYTES {
        return Err(LoadError::TooLarge(size));
    }
    let bytes = fs::read(file).map_err(LoadError::Read)?;
    crate::elf::check(&bytes)?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    Ok(Candidate {
        file: file.to_path_buf(),
        bytes,
        sha256,
    })
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

/// Maps the library at `path`, checks its ABI version, hands it `services` and reads its
/// manifest. Used in this process for the admin's plugins and in sandbox workers for tenants'.
pub fn open_plugin(path: &Path, services: HostServicesRef) -> Result<(PluginModRef, plugin_api::abi::Manifest), LoadError> {
    let root = open(path)?;
    let found = (root.abi_version())();
    if found != ABI_VERSION {
        return Err(LoadError::AbiVersion { found });
    }
    (root.init())(services);
    match (root.manifest())() {
        RResult::ROk(manifest) => Ok((root, manifest)),
        RResult::RErr(err) => Err(LoadError::Manifest(err.into_string())),
    }
}

/// Writes the bytes to `<shadow_dir>/<sha256>-<file name>` through a temporary file and a rename,
/// so that a path that might still be mapped is never written in place.
pub(crate) fn write_shadow(bytes: &[u8], sha256: &str, file: &Path, shadow_dir: &Path) -> Result<PathBuf, LoadError> {
    let fail = |err| LoadError::Shadow(shadow_dir.to_path_buf(), err);
    fs::create_dir_all(shadow_dir).map_err(fail)?;
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plugin.so".to_owned());
    let shadow = shadow_dir.join(format!("{}-{name}", &sha256[..16]));
    let temp = shadow_dir.join(format!(".{}-{}.tmp", &sha256[..16], uuid::Uuid::new_v4().simple()));
    let mut out = fs::File::create(&temp).map_err(fail)?;
    out.write_all(bytes).and_then(|()| out.sync_all()).map_err(fail)?;
    fs::rename(&temp, &shadow).map_err(|err| {
        let _ = fs::remove_file(&temp);
        fail(err)
    })?;
    Ok(shadow)
}

fn open(shadow: &Path) -> Result<PluginModRef, LoadError> {
    let header = lib_header_from_path(shadow).map_err(summarize)?;
    header.init_root_module::<PluginModRef>().map_err(summarize)
}

/// One short line per abi_stable error (its layout mismatch report runs to ~185 lines).
fn summarize(err: LibraryError) -> LoadError {
    match err {
        LibraryError::OpenError { err, .. } => LoadError::Open(first_line(&err.to_string())),
        LibraryError::GetSymbolError { .. } => LoadError::NotAPlugin,
        LibraryError::IncompatibleVersionNumber {
            expected_version,
            actual_version,
            ..
        } => LoadError::Incompatible(format!(
            "it was built with plugin-api {actual_version}, expected one compatible with {expected_version}"
        )),
        LibraryError::AbiInstability(_) => {
            LoadError::Incompatible("the layout of its plugin-api types differs from this host's".to_owned())
        }
        LibraryError::InvalidAbiHeader(_) | LibraryError::InvalidCAbi { .. } => {
            LoadError::Incompatible("it was built with an incompatible abi_stable or Rust C ABI".to_owned())
        }
        LibraryError::ParseVersionError(err) => LoadError::Incompatible(format!("its version string is malformed ({err})")),
        LibraryError::RootModule { err, .. } => LoadError::Manifest(first_line(&err.to_string())),
        LibraryError::Many(errors) => match errors.into_iter().next() {
            Some(first) => summarize(first),
            None => LoadError::Incompatible("abi_stable reported an empty list of errors".to_owned()),
        },
    }
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or("").trim();
    if line.chars().count() > 300 {
        format!("{}…", line.chars().take(300).collect::<String>())
    } else {
        line.to_owned()
    }
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
