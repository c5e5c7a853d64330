//! The SDK for [plughost](https://example.invalid/plughost) plugins, and the stable ABI behind it.
//!
//! A plugin is a Rust crate built as a `cdylib`. It writes plain functions that take a [`Request`]
//! and return a JSON value or a [`Response`], describes them in a [`Plugin`], and exports it with
//! [`export_plugin!`]. Dropped into plughost's plugins folder, every function is served at
//! `/rest/services/<module>/<function>/<p1>/…/`, with URL segments, query and JSON body merged into
//! the kwargs the function reads.
//!
//! # Quickstart
//!
//! `Cargo.toml`:
//! ```toml
//! [lib]
//! crate-type = ["cdylib", "rlib"]
//!
//! [dependencies]
//! plugin-api = { path = "../plugin-api" }
//! ```
//!
//! `src/lib.rs`:
//! ```
//! use plugin_api::prelude::*;
//!
//! /// `GET /rest/services/hello/greet/?name=Ada` → `{"greeting": "Hello, Ada!"}`
//! fn greet(req: &Request) -> Result<Value> {
//!     let name = req.str("name")?;
//!     log::info!("greeting {name}");
//!     Ok(json!({ "greeting": format!("Hello, {name}!") }))
//! }
//!
//! fn plugin() -> Plugin {
//!     Plugin::new("hello").description("Says hello").function(
//!         Function::new("greet", greet)
//!             .methods("GET|POST")
//!             .doc("Greets someone by name")
//!             .param(Param::string("name").default("world"))
//!             .public(),
//!     )
//! }
//!
//! export_plugin!(plugin);
//!
//! # use plugin_api::testing::TestRequest;
//! # let response = TestRequest::get().kwarg("name", "Ada").call(greet).unwrap();
//! # assert_eq!(response.body(), br#"{"greeting":"Hello, Ada!"}"#);
//! ```
//!
//! Build it with `cargo build --release`, copy `target/release/libhello.so` into the plugins
//! folder, and `curl localhost:8080/rest/services/hello/greet/?name=Ada`.
//!
//! # What crosses the boundary
//! The host and each plugin link their own copies of Rust's standard library, so nothing but the
//! FFI-safe types of [`abi`] crosses between them. A plugin allocates through the host's
//! allocator all the same ([`alloc`]), so its allocations are as cheap as the host's. A panic inside a function is caught and becomes
//! a 500 for that call; the plugin's log lines go through the host's logger ([`log`]).

pub mod alloc;
mod error;
pub mod log;
mod request;
mod response;
#[doc(hidden)]
pub mod runtime;
mod spec;
pub mod testing;

#[doc(hidden)]
pub mod abi;

pub use abi::{ParamKind, Visibility, ABI_VERSION};
pub use error::{Error, ErrorKind, Result};
pub use request::{Caller, CallerKind, Job, Request};
pub use response::{IntoResponse, Json, Response};
pub use spec::{Function, Methods, Param, Plugin};

/// Everything a plugin usually needs, with `serde_json`'s `json!` and `Value`.
pub mod prelude {
    pub use crate::{export_plugin, log, Error, Function, IntoResponse, Json, Param, Plugin, Request, Response, Result};
    pub use serde_json::{json, Value};
}

/// Exports a plugin: pass the path of a `fn() -> Plugin`.
///
/// The module's version defaults to the plugin crate's `CARGO_PKG_VERSION`. This emits the same
/// library header as abi_stable's `#[export_root_module]`, without requiring plugin crates to
/// depend on `abi_stable` themselves.
///
/// It also makes the plugin allocate through the host's allocator ([`alloc`]). A plugin that
/// declares its own `#[global_allocator]` exports itself with
/// `export_plugin!(plugin, own_allocator)` instead.
#[macro_export]
macro_rules! export_plugin {
    ($constructor:path) => {
        #[global_allocator]
        static __PLUGHOST_ALLOCATOR: $crate::alloc::PluginAllocator = $crate::alloc::PluginAllocator;

        $crate::export_plugin!($constructor, own_allocator);
    };
    ($constructor:path, own_allocator) => {
        extern "C" fn __plughost_root_module() -> $crate::runtime::RootModuleResult {
            $crate::runtime::load_root_module(|| $constructor().default_version(::std::env!("CARGO_PKG_VERSION")))
        }

        // The one symbol the host looks up; its name is abi_stable's `ROOT_MODULE_LOADER_NAME`
        // (checked by a test in plugin-api). Exporting a symbol is what the lint calls unsafe.
        #[allow(unsafe_code)]
        #[export_name = "_1as_0lib_1header_0root_bmodule_bloader"]
        pub static __PLUGHOST_LIB_HEADER: $crate::runtime::LibHeader = $crate::runtime::lib_header(__plughost_root_module);
    };
}
