//! A plugin file on its way into a process: read and checked (size, ELF header), hashed,
//! shadow-copied to a content-hashed path, mapped through abi_stable, its ABI version checked and
//! its manifest read. What can go wrong is one [`LoadError`] of one short line.
//!
//! The watched file itself is never mapped: `dlopen` caches images by path, and overwriting a
//! mapped library crashes the process (DESIGN §7). abi_stable never unloads a library, so every
//! image loaded stays mapped for the life of the process.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use abi_stable::{
    library::{lib_header_from_path, LibraryError, RootModule},
    std_types::RResult,
};
use plugin_api::abi::{HostServicesRef, PluginModRef, ABI_VERSION};
use sha2::{Digest, Sha256};

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
    InvalidManifest(crate::manifest::ManifestError),
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
pub fn write_shadow(bytes: &[u8], sha256: &str, file: &Path, shadow_dir: &Path) -> Result<PathBuf, LoadError> {
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
