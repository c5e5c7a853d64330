//! The plugin side of the ABI: the functions behind the root module that `export_plugin!` exports.
//!
//! Every plugin links its own copy of this crate, so these statics are per plugin.

use std::{
    any::Any,
    cell::RefCell,
    panic::{self, AssertUnwindSafe},
    sync::OnceLock,
};

use abi_stable::{
    prefix_type::PrefixTypeTrait,
    std_types::{RResult, RString},
};

use crate::{
    abi::{
        CallError, CallRequest, CallResponse, ErrorKind, FunctionDecl, HostServicesRef, Manifest, ParamDecl, PluginMod, PluginModRef,
        ABI_VERSION,
    },
    spec::Handler,
    Plugin, Request,
};

struct Built {
    manifest: Manifest,
    handlers: Vec<Handler>,
}

static BUILDER: OnceLock<fn() -> Plugin> = OnceLock::new();
static BUILT: OnceLock<Result<Built, String>> = OnceLock::new();

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

pub use abi_stable::library::{LibHeader, RootModuleResult};

/// The symbol name `export_plugin!` exports the library header under.
pub const ROOT_SYMBOL: &str = "_1as_0lib_1header_0root_bmodule_bloader";

/// The library header of a plugin whose root module is built by `constructor`.
pub const fn lib_header(constructor: extern "C" fn() -> RootModuleResult) -> LibHeader {
    // SAFETY: `constructor` comes from `export_plugin!`, which always builds it with
    // `load_root_module`, so the erased prefix it returns is a `PluginModRef`.
    #[allow(unsafe_code)]
    unsafe {
        LibHeader::from_constructor::<PluginModRef>(constructor, abi_stable::library::CheckTypeLayout::Yes)
    }
}

/// Builds the root module around the author's `Plugin` constructor. Called by `export_plugin!`.
pub fn load_root_module(builder: fn() -> Plugin) -> RootModuleResult {
    let _ = BUILDER.set(builder);
    abi_stable::library::__call_root_module_loader(|| -> PluginModRef {
        PluginMod {
            abi_version,
            init,
            manifest,
            call,
        }
        .leak_into_prefix()
    })
}

extern "C" fn abi_version() -> u32 {
    ABI_VERSION
}

extern "C" fn init(host: HostServicesRef) {
    crate::log::set_host(host);
    // Panics are caught around every call; the hook only records the message (with its location)
    // so that the host can log it, instead of printing to the host's stderr.
    panic::set_hook(Box::new(|info| {
        let text = info.to_string();
        LAST_PANIC.with(|last| *last.borrow_mut() = Some(text));
    }));
}

fn built() -> &'static Result<Built, String> {
    BUILT.get_or_init(|| {
        let builder = BUILDER.get().ok_or_else(|| "the plugin exported no constructor".to_owned())?;
        let plugin =
            panic::catch_unwind(builder).map_err(|payload| format!("the plugin's constructor panicked: {}", panic_text(payload)))?;
        Ok(build(plugin))
    })
}

fn build(plugin: Plugin) -> Built {
    let mut handlers = Vec::with_capacity(plugin.functions.len());
    let mut functions = Vec::with_capacity(plugin.functions.len());
    for function in plugin.functions {
        functions.push(FunctionDecl {
            name: function.name.into(),
            api: function.api.unwrap_or_default().into(),
            methods: function.methods.into_iter().map(RString::from).collect(),
            doc: function.doc.into(),
            params: function
                .params
                .into_iter()
                .map(|p| ParamDecl {
                    name: p.name.into(),
                    kind: p.kind,
                    required: p.required,
                    default_json: p.default.map(|v| v.to_string()).unwrap_or_default().into(),
                    doc: p.doc.into(),
                })
                .collect(),
            visibility: function.visibility,
        });
        handlers.push(function.handler);
    }
    crate::log::set_module(&plugin.name);
    Built {
        manifest: Manifest {
            name: plugin.name.into(),
            alias: plugin.alias.unwrap_or_default().into(),
            version: plugin.version.unwrap_or_default().into(),
            description: plugin.description.into(),
            functions: functions.into(),
        },
        handlers,
    }
}

extern "C" fn manifest() -> RResult<Manifest, RString> {
    let result = panic::catch_unwind(|| match built() {
        Ok(built) => Ok(built.manifest.clone()),
        Err(err) => Err(err.clone()),
    });
    match result {
        Ok(Ok(manifest)) => RResult::ROk(manifest),
        Ok(Err(err)) => RResult::RErr(err.into()),
        Err(payload) => RResult::RErr(format!("manifest panicked: {}", panic_text(payload)).into()),
    }
}

extern "C" fn call<'a>(index: u32, raw: &'a CallRequest<'a>) -> RResult<CallResponse, CallError> {
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        let built = built().as_ref().map_err(|err| crate::Error::internal(err.clone()))?;
        let handler = usize::try_from(index)
            .ok()
            .and_then(|i| built.handlers.get(i))
            .ok_or_else(|| crate::Error::internal(format!("no function at index {index}")))?;
        let request = Request::from_abi(raw)?;
        handler(&request)?.into_abi()
    }));
    match outcome {
        Ok(Ok(response)) => RResult::ROk(response),
        Ok(Err(err)) => RResult::RErr(err.into_abi()),
        Err(payload) => {
            let recorded = LAST_PANIC.with(|last| last.borrow_mut().take());
            let message = recorded.unwrap_or_else(|| panic_text(payload));
            RResult::RErr(CallError {
                kind: ErrorKind::Panicked,
                code: RString::new(),
                message: message.into(),
            })
        }
    }
}

fn panic_text(payload: Box<dyn Any + Send>) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "panic with a non-text payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn exported_symbol_is_the_one_abi_stable_looks_up() {
        assert_eq!(super::ROOT_SYMBOL, abi_stable::library::ROOT_MODULE_LOADER_NAME);
    }
}
