//! Tenants as the catalogue sees them: their folders under `PLUGINS_DIR/tenants/<uuid>/`, and
//! what the sandbox must know of each (active or not, its limits), refreshed from the store.

use std::path::Path;

/// The sub-folder of the plugins folder that holds tenants' folders.
pub(crate) const TENANTS: &str = "tenants";

/// The tenant a folder `…/tenants/<uuid>` belongs to.
pub(crate) fn tenant_of_folder(folder: &Path) -> Option<String> {
    let parent = folder.parent()?;
    if parent.file_name()? != TENANTS {
        return None;
    }
    let name = folder.file_name()?.to_str()?;
    uuid::Uuid::parse_str(name).ok().map(|u| u.hyphenated().to_string())
}

/// The tenant a plugin file belongs to, when it sits in a tenant's folder.
pub(crate) fn tenant_of_file(file: &Path) -> Option<String> {
    tenant_of_folder(file.parent()?)
}

/// The tenants as the sandbox needs them, from their store records.
pub(crate) fn tenant_infos(
    records: Vec<plughost_tenancy::PrincipalRecord>,
) -> std::collections::HashMap<String, plughost_sandbox::TenantInfo> {
    records
        .into_iter()
        .map(|r| {
            let info = plughost_sandbox::TenantInfo {
                active: r.is_active(),
                limits: r.limits,
            };
            (r.uuid, info)
        })
        .collect()
}

/// Refreshes the sandbox's view of tenants from the store.
pub(crate) async fn refresh_tenants(sandbox: &plughost_sandbox::Sandbox, tenancy: &plughost_tenancy::tenants::Tenancy, first: bool) {
    match tenancy.store.list("tenant").await {
        Ok(records) => sandbox.set_tenants(tenant_infos(records)),
        Err(err) if first => tracing::warn!("cannot list tenants ({err}); their modules load once the store answers"),
        Err(err) => tracing::debug!("cannot refresh tenants ({err}); keeping the last known"),
    }
}
