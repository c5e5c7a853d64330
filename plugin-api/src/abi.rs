//! The raw, FFI-safe types that cross the boundary between `plughost` and a plugin.
//!
//! Plugin authors never touch these: the SDK in the crate root builds them. The host checks the
//! layout of [`PluginModRef`] (and everything it references) when it loads a library, together with
//! this crate's name and version, and then [`ABI_VERSION`].

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings,
    sabi_types::VersionStrings,
    std_types::{RResult, RSlice, RStr, RString, RVec, Tuple2},
    StableAbi,
};

/// Bumped whenever the meaning (not only the layout) of the contract changes.
pub const ABI_VERSION: u32 = 1;

/// The root module every plugin exports. A prefix type: later versions may append fields after
/// `call` without breaking plugins built against this one.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
#[sabi(missing_field(panic))]
pub struct PluginMod {
    /// The [`ABI_VERSION`] the plugin was built with.
    pub abi_version: extern "C" fn() -> u32,
    /// Hands the host's services to the plugin. Called once, before anything else.
    pub init: extern "C" fn(HostServicesRef),
    /// Describes the module and its functions.
    pub manifest: extern "C" fn() -> RResult<Manifest, RString>,
    /// Calls the function at `index` in the manifest's function list.
    #[sabi(last_prefix_field)]
    pub call: for<'a> extern "C" fn(u32, &'a CallRequest<'a>) -> RResult<CallResponse, CallError>,
}

impl RootModule for PluginModRef {
    declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "plughost_plugin";
    const NAME: &'static str = "plughost_plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// Services the host offers to every plugin. A prefix type, so the host can grow it.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = HostServicesRef)))]
#[sabi(missing_field(panic))]
pub struct HostServices {
    /// Writes one log line through the host's logger: level, module name, message.
    #[sabi(last_prefix_field)]
    pub log: extern "C" fn(LogLevel, RStr<'_>, RStr<'_>),
}

/// Severity of a plugin's log line.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

/// What a module says about itself.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub name: RString,
    pub alias: RString,
    pub version: RString,
    pub description: RString,
    pub functions: RVec<FunctionDecl>,
}

/// One exported function. `api` is empty when the function has no API alias.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FunctionDecl {
    pub name: RString,
    pub api: RString,
    /// Method names as the author wrote them; the host validates them.
    pub methods: RVec<RString>,
    pub doc: RString,
    pub params: RVec<ParamDecl>,
    pub visibility: Visibility,
}

/// A declared parameter. `default_json` is JSON text, empty when there is no default.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ParamDecl {
    pub name: RString,
    pub kind: ParamKind,
    pub required: bool,
    pub default_json: RString,
    pub doc: RString,
}

/// The type a declared parameter is coerced to by the host.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ParamKind {
    String,
    Integer,
    Number,
    Boolean,
    Json,
}

/// Who may call a function.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Visibility {
    /// Anyone, without credentials.
    Public,
    /// Any authenticated principal (the default).
    Tenant,
    /// The admin only.
    Admin,
}

/// One call, borrowed from the host for its duration.
#[repr(C)]
#[derive(StableAbi)]
pub struct CallRequest<'a> {
    pub method: RStr<'a>,
    pub module: RStr<'a>,
    pub function: RStr<'a>,
    /// The kwargs, as the JSON text of an object.
    pub kwargs_json: RStr<'a>,
    /// The raw query string, without `?`.
    pub query: RStr<'a>,
    /// Header names are lower case.
    pub headers: RSlice<'a, Tuple2<RStr<'a>, RStr<'a>>>,
    pub body: RSlice<'a, u8>,
    pub content_type: RStr<'a>,
    pub request_id: RStr<'a>,
}

/// A complete response produced by a plugin.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct CallResponse {
    pub status: u16,
    pub content_type: RString,
    pub headers: RVec<Tuple2<RString, RString>>,
    pub body: RVec<u8>,
}

/// An error produced by a plugin (or by the SDK on its behalf, for a panic).
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct CallError {
    pub kind: ErrorKind,
    /// A machine-readable code such as `ITEM_MISSING`; empty for the kind's default.
    pub code: RString,
    pub message: RString,
}

/// The class of a plugin error; the host maps each to an HTTP status.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ErrorKind {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    Unprocessable,
    TooManyRequests,
    Internal,
    Unavailable,
    /// The function panicked; the message is for the host's log only.
    Panicked,
}
