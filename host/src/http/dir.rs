//! `__dir__`: what the caller may call, described from the loaded manifests.

use serde_json::{json, Value};

use plughost_runtime::{
    manifest::{visibility_name, FunctionSpec},
    params::kind_name,
};

use crate::{
    loader::LoadedModule,
    registry::{Registry, Viewer},
};

/// Every module with a function the caller may call, with the URL parameter names in force.
pub(crate) fn all(
    registry: &Registry,
    url_params: &[String],
    visible: &dyn Fn(&LoadedModule, &FunctionSpec) -> bool,
    viewer: &dyn Viewer,
) -> Value {
    json!({
        "url_params": url_params,
        "modules": registry
            .modules()
            .iter()
            .filter(|m| m.spec.functions.iter().any(|f| visible(m, f)))
            .map(|m| module_entry(m, registry, visible, viewer))
            .collect::<Vec<_>>(),
    })
}

/// One module, with the functions the caller may call.
pub(crate) fn module(
    module: &LoadedModule,
    registry: &Registry,
    visible: &dyn Fn(&LoadedModule, &FunctionSpec) -> bool,
    viewer: &dyn Viewer,
) -> Value {
    module_entry(module, registry, visible, viewer)
}

fn module_entry(
    module: &LoadedModule,
    registry: &Registry,
    visible: &dyn Fn(&LoadedModule, &FunctionSpec) -> bool,
    viewer: &dyn Viewer,
) -> Value {
    let spec = &module.spec;
    let functions: Vec<Value> = spec
        .functions
        .iter()
        .filter(|f| visible(module, f))
        .map(|f| {
            let path = format!("/rest/services/{}/{}/", spec.route_name(), f.route_name());
            let unqualified = registry
                .is_unique(f.route_name(), viewer)
                .then(|| format!("/rest/services/{}/", f.route_name()));
            json!({
                "name": f.name,
                "api": f.api,
                "methods": f.methods.names(),
                "path": path,
                "unqualified_path": unqualified,
                "doc": f.doc,
                "visibility": visibility_name(f.visibility),
                "params": f.params.iter().map(|p| json!({
                    "name": p.name,
                    "type": kind_name(p.kind),
                    "required": p.required,
                    "default": p.default,
                    "doc": p.doc,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "name": spec.name,
        "alias": spec.alias,
        "version": spec.version,
        "description": spec.description,
        "owner": module.owner.as_deref().map_or("admin", |_| "tenant"),
        "tenant": module.owner,
        "isolation": if module.sandbox().is_some() { "sandbox" } else { "in-process" },
        "sha256": module.sha256,
        "loaded_at": plughost_tenancy::clock::timestamp(module.loaded_at),
        "functions": functions,
    })
}
