//! Plugins published through the store, so that every replica serves the same versions.
//!
//! A plugin is checked before anything is stored: its name, its size, a complete ELF shared object
//! for this machine, and its ABI and manifest, read by a sandbox worker (the publishing process
//! never maps it). Every replica then syncs the published plugins into its own plugins folder
//! (`<name>.so`, or `tenants/<uuid>/<name>.so`), writing a temporary file and renaming it into
//! place, and the folder watcher serves them like any dropped file. Every `PUBLISH_SYNC_MS` a
//! replica reads one number, the store's version of the published plugins, and only when it
//! changed the list of records (no bytes), so a new version reaches every replica within that
//! interval. Files dropped by hand stay as they are: sync only replaces or removes files it
//! wrote itself, which it remembers in `DATA_DIR/published.json`.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use sha2::{Digest, Sha256};

use plughost_sandbox::Sandbox;

use crate::signing::TrustedKeys;
use plughost_tenancy::{PublishedPlugin, Store, StoreError};

/// Why a plugin was not published.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PublishError {
    #[error("{0}")]
    Invalid(String),
    #[error("the plugin is {0} bytes, over the {1}-byte limit (PUBLISH_MAX_BYTES)")]
    TooLarge(usize, usize),
    #[error("the plugin was refused: {0}")]
    Refused(String),
    #[error("no published plugin is named '{0}'")]
    NotFound(String),
    #[error("tenant {0} would store {1} bytes of plugins, over its {2}-byte limit (TENANT_MAX_STORED_MB): unpublish some first")]
    TenantFull(String, u64, u64),
    #[error("tenant {0} has published {1} plugins, the most TENANT_MAX_MODULES allows: unpublish one first")]
    TooManyPlugins(String, usize),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Plugin names in the store: 1 to 64 of `a-z 0-9 _ -`, the file name without `.so`.
pub(crate) fn check_name(name: &str) -> Result<(), PublishError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(PublishError::Invalid(format!(
            "'{name}' is not a plugin name: use 1 to 64 lower-case letters, digits, '_' and '-' (the file name without .so)"
        )))
    }
}

/// What is published: the plugin's bytes and, optionally, its detached signature.
pub(crate) struct Upload<'a> {
    pub tenant: Option<&'a str>,
    pub name: &'a str,
    pub bytes: Vec<u8>,
    /// The text of its `.sig` (base64), when signed.
    pub signature: Option<String>,
    pub uploader: &'a str,
}

/// The limits an upload is checked against.
pub(crate) struct Policy<'a> {
    pub max_bytes: usize,
    /// When set, the upload needs a valid signature by one of these keys.
    pub trusted_keys: Option<&'a TrustedKeys>,
}

/// Checks `upload` and stores it as plugin `name` in `tenant`'s namespace (the admin's when
/// `None`). Nothing is stored unless every check passes.
pub(crate) async fn publish(
    store: &dyn Store,
    sandbox: &Arc<Sandbox>,
    upload: Upload<'_>,
    policy: &Policy<'_>,
) -> Result<PublishedPlugin, PublishError> {
    let Upload {
        tenant,
        name,
        bytes,
        signature,
        uploader,
    } = upload;
    check_name(name)?;
    if bytes.len() > policy.max_bytes {
        return Err(PublishError::TooLarge(bytes.len(), policy.max_bytes));
    }
    let signature = signature.map(|text| text.trim().to_owned()).filter(|text| !text.is_empty());
    if let Some(keys) = policy.trusted_keys {
        keys.verify(&bytes, signature.as_deref(), "send it in the Plugin-Signature header")
            .map_err(|err| PublishError::Refused(err.to_string()))?;
    }
    if let Some(uuid) = tenant {
        // This replica's view of the tenants is refreshed by polling: a tenant enrolled through
        // another replica moments ago is asked of the store rather than refused.
        let active = sandbox.tenant(uuid).is_some_and(|t| t.active)
            || store
                .get(uuid)
                .await?
                .is_some_and(|record| record.kind == "tenant" && record.is_active());
        if !active {
            return Err(PublishError::Invalid(format!("tenant {uuid} is unknown or disabled")));
        }
        // What the tenant stores already, less the version this upload replaces.
        let key = PublishedPlugin::key_of(tenant, name);
        let published = store.published().await?;
        let others: Vec<&PublishedPlugin> = published
            .iter()
            .filter(|p| p.tenant.as_deref() == Some(uuid) && p.key != key)
            .collect();
        if others.len() >= sandbox.settings().tenant_max_modules {
            return Err(PublishError::TooManyPlugins(uuid.to_owned(), others.len()));
        }
        let stored: u64 = others.iter().map(|p| p.size.max(0) as u64).sum();
        let total = stored + bytes.len() as u64;
        let limit = sandbox.settings().tenant_max_stored_bytes;
        if total > limit {
            return Err(PublishError::TenantFull(uuid.to_owned(), total, limit));
        }
    }
    plughost_runtime::elf::check(&bytes).map_err(|err| PublishError::Refused(err.to_string()))?;
    let inspector = sandbox.clone();
    let (spec, bytes) = tokio::task::spawn_blocking(move || inspector.inspect(&bytes).map(|spec| (spec, bytes)))
        .await
        .map_err(|err| PublishError::Refused(format!("the check failed: {err}")))?
        .map_err(|err| PublishError::Refused(err.to_string()))?;
    let plugin = PublishedPlugin {
        key: PublishedPlugin::key_of(tenant, name),
        name: name.to_owned(),
        tenant: tenant.map(str::to_owned),
        module: spec.name,
        version: spec.version,
        sha256: hex::encode(Sha256::digest(&bytes)),
        size: bytes.len() as i64,
        uploader: uploader.to_owned(),
        published_at: plughost_tenancy::totp::now() as i64,
        signature,
    };
    store.publish(&plugin, &bytes).await?;
    tracing::info!(key = %plugin.key, module = %plugin.module, version = %plugin.version, sha256 = %&plugin.sha256[..12], "plugin published");
    Ok(plugin)
}

/// Removes plugin `name` from `tenant`'s namespace (the admin's when `None`).
pub(crate) async fn unpublish(store: &dyn Store, tenant: Option<&str>, name: &str) -> Result<(), PublishError> {
    check_name(name)?;
    let key = PublishedPlugin::key_of(tenant, name);
    if store.unpublish(&key).await? {
        tracing::info!(%key, "plugin unpublished");
        Ok(())
    } else {
        Err(PublishError::NotFound(key))
    }
}

/// Where a published plugin lives in a plugins folder.
pub(crate) fn local_path(plugins_dir: &Path, plugin: &PublishedPlugin) -> PathBuf {
    let folder = match &plugin.tenant {
        Some(uuid) => plugins_dir.join(crate::plugins::TENANTS).join(uuid),
        None => plugins_dir.to_path_buf(),
    };
    folder.join(format!("{}.so", plugin.name))
}

/// Sync reads the records and checks the folder at least once in this many rounds, even when
/// the store's version did not change (a synced file deleted by hand comes back).
const FULL_SYNC_EVERY: u32 = 15;

/// Keeps `plugins_dir` in step with the store, for the life of the process: every `interval` it
/// reads the store's version of the published plugins (one small read), and syncs when it changed.
/// `now` wakes it early: after a publish through this replica, which then serves the new version
/// at once.
pub(crate) fn spawn_sync(store: Arc<dyn Store>, plugins_dir: PathBuf, data_dir: &Path, interval: Duration, now: Arc<tokio::sync::Notify>) {
    let state_file = data_dir.join("published.json");
    tokio::spawn(async move {
        let mut synced: HashMap<String, (PathBuf, String)> = std::fs::read(&state_file)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        let mut failing = false;
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The version last synced, and how many rounds ago the folder was last checked in full.
        let mut synced_version: Option<u64> = None;
        let mut rounds_since_full = 0u32;
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = now.notified() => {}
            }
            rounds_since_full += 1;
            let round = async {
                let version = store.published_version().await?;
                if synced_version == Some(version) && rounds_since_full < FULL_SYNC_EVERY {
                    return Ok(false);
                }
                let changed = sync_once(store.as_ref(), &plugins_dir, &mut synced).await?;
                synced_version = Some(version);
                rounds_since_full = 0;
                Ok::<bool, StoreError>(changed)
            };
            match round.await {
                Ok(changed) => {
                    if failing {
                        tracing::info!("the store answers again: published plugins are in sync");
                        failing = false;
                    }
                    if changed {
                        if let Ok(json) = serde_json::to_vec(&synced) {
                            let _ = write_atomically(&state_file, &json);
                        }
                    }
                }
                Err(err) if !failing => {
                    tracing::warn!("cannot sync published plugins ({err}); the local ones keep serving, retrying");
                    failing = true;
                }
                Err(_) => {}
            }
        }
    });
}

/// One round of sync; returns whether anything changed. `synced` maps keys to the file written
/// and the sha256 written there.
async fn sync_once(store: &dyn Store, plugins_dir: &Path, synced: &mut HashMap<String, (PathBuf, String)>) -> Result<bool, StoreError> {
    let published = store.published().await?;
    let mut changed = false;
    for plugin in &published {
        let path = local_path(plugins_dir, plugin);
        let current = synced.get(&plugin.key);
        if current.is_some_and(|(p, sha)| *p == path && *sha == plugin.sha256) && path.exists() {
            if let Err(err) = sync_signature(&path, plugin.signature.as_deref()) {
                tracing::warn!(file = %path.display(), "cannot write a published plugin's signature: {err}");
            }
            continue;
        }
        let Some(bytes) = store.plugin_bytes(&plugin.sha256).await? else {
            continue; // Replaced in between; the next round gets the new one.
        };
        let target = path.clone();
        let signature = plugin.signature.clone();
        let written = tokio::task::spawn_blocking(move || {
            if let Some(folder) = target.parent() {
                std::fs::create_dir_all(folder)?;
            }
            // The signature first, so that the file is valid the moment it appears.
            sync_signature(&target, signature.as_deref())?;
            write_atomically(&target, &bytes)
        })
        .await
        .map_err(|err| StoreError::Unavailable(err.to_string()))?;
        match written {
            Ok(()) => {
                tracing::info!(key = %plugin.key, file = %path.display(), "published plugin synced");
                synced.insert(plugin.key.clone(), (path, plugin.sha256.clone()));
                changed = true;
            }
            Err(err) => tracing::warn!(file = %path.display(), "cannot write a published plugin: {err}"),
        }
    }
    let gone: Vec<String> = synced
        .keys()
        .filter(|key| !published.iter().any(|p| &p.key == *key))
        .cloned()
        .collect();
    for key in gone {
        if let Some((path, sha)) = synced.remove(&key) {
            // Only a file this process wrote, unchanged since.
            let ours = std::fs::read(&path).is_ok_and(|bytes| hex::encode(Sha256::digest(&bytes)) == sha);
            if ours {
                let _ = std::fs::remove_file(&path);
                let _ = std::fs::remove_file(crate::signing::signature_path(&path));
                tracing::info!(%key, file = %path.display(), "unpublished plugin removed");
            }
            changed = true;
        }
    }
    Ok(changed)
}

/// Makes the signature file beside `plugin` hold `signature` (none: no file).
fn sync_signature(plugin: &Path, signature: Option<&str>) -> std::io::Result<()> {
    let path = crate::signing::signature_path(plugin);
    let current = std::fs::read_to_string(&path).ok();
    match signature {
        Some(text) if current.as_deref().map(str::trim) != Some(text) => write_atomically(&path, format!("{text}\n").as_bytes()),
        None if current.is_some() => std::fs::remove_file(&path),
        _ => Ok(()),
    }
}

/// Writes a file through a hidden temporary name and a rename, so that the watcher never sees a
/// half-written plugin.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&temp, bytes)?;
    std::fs::rename(&temp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&temp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_names_are_plain_file_stems() {
        for good in ["hello", "orders-v2", "a_1"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Hello", "../etc", "a.so", "a/b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn published_plugins_land_in_their_namespace() {
        let mut plugin = PublishedPlugin {
            key: "admin/orders".into(),
            name: "orders".into(),
            tenant: None,
            module: "orders".into(),
            version: "1".into(),
            sha256: "0".repeat(64),
            size: 1,
            uploader: "admin".into(),
            published_at: 0,
            signature: None,
        };
        assert_eq!(local_path(Path::new("/p"), &plugin), Path::new("/p/orders.so"));
        plugin.tenant = Some("5dc1bb6a-721b-40f8-8fbc-da6304ba3977".into());
        assert_eq!(
            local_path(Path::new("/p"), &plugin),
            Path::new("/p/tenants/5dc1bb6a-721b-40f8-8fbc-da6304ba3977/orders.so")
        );
    }
}
