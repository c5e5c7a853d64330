//! One round of changes, file by file: each file is looked at again and ends removed, refused
//! (with the reason in its status), unchanged, or served in its new version.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Instant, SystemTime},
};

use plughost_runtime::library::{Candidate, LoadError};

use super::{file_name, fingerprint, status_entry, tenant_of_file, Applied, FileState, Inner, Plugins, PUBLISH_EVERY};
use crate::{
    loader::{self, LoadedModule},
    registry::conflict,
};

/// What became of one file.
enum Outcome {
    /// Nothing to do, or nothing changed.
    Kept,
    /// It was served and is gone.
    Removed,
    /// Refused, or unrouted; its status says why.
    Failed,
    /// Its new version is served, under this module name.
    Served(String),
}

impl Plugins {
    pub(super) fn apply_files(&self, inner: &mut Inner, modules: &mut Vec<Arc<LoadedModule>>, files: &[PathBuf], applied: &mut Applied) {
        let mut published = Instant::now();
        for file in files {
            if published.elapsed() >= PUBLISH_EVERY {
                self.published.store(Arc::new(inner.clone()));
                published = Instant::now();
            }
            match self.apply_file(inner, modules, file) {
                Outcome::Kept => {}
                Outcome::Removed => applied.removed.push(file.clone()),
                Outcome::Failed => applied.failed.push(file.clone()),
                Outcome::Served(module) => applied.swapped.push((file.clone(), module)),
            }
        }
    }

    fn apply_file(&self, inner: &mut Inner, modules: &mut Vec<Arc<LoadedModule>>, file: &Path) -> Outcome {
        let served = modules.iter().position(|m| m.file == file);
        if !file.is_file() {
            return forget(inner, modules, file, served);
        }
        status_entry(inner, file).fingerprint = fingerprint(file);
        if let Some(owner) = tenant_of_file(file).filter(|owner| !self.tenant_active(owner)) {
            unroute_inactive(inner, modules, file, served, &owner);
            return Outcome::Failed;
        }
        let candidate = match self.admit(inner, modules, file, served) {
            Ok(candidate) => candidate,
            Err(outcome) => return outcome,
        };
        let module = match self.load(inner, file, served, candidate) {
            Ok(module) => module,
            Err(outcome) => return outcome,
        };
        route(inner, modules, file, served, module)
    }

    /// The file's bytes, if they are worth loading: changed since the version served or the one
    /// that last failed, signed when signatures are required, and within the tenant's module cap.
    fn admit(&self, inner: &mut Inner, modules: &[Arc<LoadedModule>], file: &Path, served: Option<usize>) -> Result<Candidate, Outcome> {
        let candidate = plughost_runtime::library::read(file).map_err(|err| {
            fail(inner, file, served.is_some(), None, err.to_string(), false);
            Outcome::Failed
        })?;
        if served.is_some_and(|i| modules[i].sha256 == candidate.sha256) {
            tracing::debug!(file = %file.display(), "content unchanged; not reloaded");
            if let Some(status) = inner.status.get_mut(file) {
                status.error = None;
                status.failed_sha256 = None;
            }
            return Err(Outcome::Kept);
        }
        let status_sha = inner.status.get(file).and_then(|s| s.failed_sha256.as_deref());
        if status_sha == Some(candidate.sha256.as_str()) {
            tracing::debug!(file = %file.display(), "content unchanged since it failed; not retried");
            return Err(Outcome::Kept);
        }
        if let Some(keys) = &self.trusted_keys {
            if let Err(err) = keys.verify_file(file, &candidate.bytes) {
                // No sha recorded: the file is tried again when its signature changes.
                fail(inner, file, served.is_some(), None, err.to_string(), false);
                return Err(Outcome::Failed);
            }
        }
        if let (Some(uuid), None, Some(sandbox)) = (tenant_of_file(file), served, &self.sandbox) {
            let cap = sandbox.settings().tenant_max_modules;
            let count = modules.iter().filter(|m| m.owner.as_ref() == Some(&uuid)).count();
            if count >= cap {
                let reason = format!(
                    "tenant {uuid} already has {count} modules served, the most TENANT_MAX_MODULES ({cap}) allows: remove one first"
                );
                // No sha recorded: tried again when a module of the tenant goes.
                fail(inner, file, false, None, reason, true);
                return Err(Outcome::Failed);
            }
        }
        Ok(candidate)
    }

    /// Loads the candidate where it runs: in this process, or in the sandbox for tenants' modules
    /// (and the admin's, with isolation on). Counts the library images this process maps.
    fn load(&self, inner: &mut Inner, file: &Path, served: Option<usize>, candidate: Candidate) -> Result<Arc<LoadedModule>, Outcome> {
        let sha = candidate.sha256.clone();
        let size = candidate.bytes.len() as u64;
        let owner = tenant_of_file(file);
        let isolate = owner.is_some() || self.admin_isolation;
        let loaded = match (&self.sandbox, isolate) {
            (_, false) => loader::load_candidate(candidate, &self.shadow_dir),
            (Some(sandbox), true) => sandbox
                .load(candidate, owner)
                .map(|m| LoadedModule::new(m.spec, m.file, m.sha256, m.size, m.owner, loader::Backend::Sandbox(m.pool))),
            (None, true) => Err(LoadError::Sandbox("this server runs without a sandbox".to_owned())),
        };
        match loaded {
            Ok(module) => {
                if !isolate {
                    inner.images.insert(sha, size);
                }
                Ok(Arc::new(module))
            }
            Err(err) => {
                if !isolate && err.left_mapped() {
                    inner.images.insert(sha.clone(), size);
                }
                fail(inner, file, served.is_some(), Some(sha), err.to_string(), false);
                Err(Outcome::Failed)
            }
        }
    }
}

/// A file that is gone: its module (if served) leaves the table, and whatever comes back under
/// its name is looked at afresh.
fn forget(inner: &mut Inner, modules: &mut Vec<Arc<LoadedModule>>, file: &Path, served: Option<usize>) -> Outcome {
    let outcome = match served {
        Some(i) => {
            let module = modules.remove(i);
            tracing::info!(file = %file.display(), module = %module.spec.name, "plugin removed: its routes are gone");
            crate::metrics::METRICS.plugin_unloads.inc();
            Outcome::Removed
        }
        None => Outcome::Kept,
    };
    if let Some(status) = inner.status.get_mut(file) {
        status.state = FileState::Removed;
        // A folder moved back, a restore with `cp -a`, the same bytes: all looked at again.
        status.fingerprint = None;
        status.failed_sha256 = None;
    }
    outcome
}

/// A file in the folder of a tenant that is unknown or disabled: not served until it is active.
fn unroute_inactive(inner: &mut Inner, modules: &mut Vec<Arc<LoadedModule>>, file: &Path, served: Option<usize>, owner: &str) {
    if let Some(i) = served {
        let module = modules.remove(i);
        tracing::info!(file = %file.display(), module = %module.spec.name, tenant = %owner, "tenant not active: its module is unrouted");
        crate::metrics::METRICS.plugin_unloads.inc();
    }
    let status = status_entry(inner, file);
    status.state = FileState::Failed;
    status.error = Some(format!(
        "tenant {owner} is unknown or disabled: its modules are served once it is active"
    ));
    status.failed_at = Some(plughost_tenancy::clock::timestamp(SystemTime::now()));
    status.failed_sha256 = None;
}

/// Routes a loaded module if its names are free (the naming rule, registry::conflict): the
/// admin's files win, and a tenant's module in the way of one is unrouted until the name is free.
fn route(
    inner: &mut Inner,
    modules: &mut Vec<Arc<LoadedModule>>,
    file: &Path,
    served: Option<usize>,
    module: Arc<LoadedModule>,
) -> Outcome {
    while let Some((i, reason)) = conflict(modules, &module) {
        if module.owner.is_none() && modules[i].owner.is_some() {
            let lost = modules.remove(i);
            unroute(inner, &lost, &module);
        } else {
            fail(inner, file, served.is_some(), Some(module.sha256.clone()), reason, true);
            return Outcome::Failed;
        }
    }
    let replaced = match served {
        Some(i) => Some(std::mem::replace(&mut modules[i], module.clone())),
        None => {
            modules.push(module.clone());
            None
        }
    };
    record_loaded(inner, &module, replaced.is_some());
    match &replaced {
        Some(old) => tracing::info!(
            file = %file.display(),
            module = %module.spec.name,
            from = %old.spec.version,
            to = %module.spec.version,
            sha256 = %&module.sha256[..12],
            "plugin replaced: new requests go to the new version"
        ),
        None => tracing::info!(
            file = %file.display(),
            module = %module.spec.name,
            version = %module.spec.version,
            functions = module.spec.functions.len(),
            "plugin loaded"
        ),
    }
    Outcome::Served(module.spec.name.clone())
}

/// A tenant's module loses its name to the admin's `winner`: it stops being routed, and says why.
fn unroute(inner: &mut Inner, lost: &LoadedModule, winner: &LoadedModule) {
    let reason = format!(
        "unrouted: the admin's module '{}' ({}) takes the name; this module is served again once the name is free",
        winner.spec.name,
        file_name(&winner.file)
    );
    tracing::warn!(file = %lost.file.display(), module = %lost.spec.name, "{reason}");
    crate::metrics::METRICS.plugin_unloads.inc();
    let status = status_entry(inner, &lost.file);
    status.state = FileState::Unrouted;
    status.error = Some(reason);
    status.failed_at = Some(plughost_tenancy::clock::timestamp(SystemTime::now()));
    status.collided = true;
    status.failed_sha256 = None;
}

fn fail(inner: &mut Inner, file: &Path, still_served: bool, sha: Option<String>, error: String, collided: bool) {
    // The reason may quote the plugin's own text (its names, a loader message).
    let error = plughost_sandbox::escape_control(&error).into_owned();
    if still_served {
        tracing::warn!(file = %file.display(), "new version not loaded, the previous one keeps serving: {error}");
    } else {
        tracing::warn!(file = %file.display(), "plugin not loaded: {error}");
    }
    crate::metrics::METRICS.plugin_load_failures.inc();
    let status = status_entry(inner, file);
    status.state = if still_served { FileState::Loaded } else { FileState::Failed };
    status.error = Some(error);
    status.failed_at = Some(plughost_tenancy::clock::timestamp(SystemTime::now()));
    status.collided = collided;
    status.failed_sha256 = sha;
}

fn record_loaded(inner: &mut Inner, module: &LoadedModule, replaced: bool) {
    let status = status_entry(inner, &module.file);
    status.state = FileState::Loaded;
    status.module = Some(module.spec.name.clone());
    status.version = Some(module.spec.version.clone());
    status.sha256 = Some(module.sha256.clone());
    status.size_bytes = Some(module.size);
    status.loaded_at = Some(plughost_tenancy::clock::timestamp(module.loaded_at));
    status.error = None;
    status.collided = false;
    status.failed_sha256 = None;
    if replaced {
        status.reload_count += 1;
        crate::metrics::METRICS.plugin_reloads.inc();
    } else {
        crate::metrics::METRICS.plugin_loads.inc();
    }
}
