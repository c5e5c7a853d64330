//! Logging through the host: lines come out of `plughost`'s logger, tagged with the module.
//!
//! ```
//! plugin_api::log::info!("cache warmed with {} entries", 42);
//! ```
//! Before the host has initialised the plugin (in unit tests, say), lines go to stderr.

use std::{fmt, sync::OnceLock};

use abi_stable::std_types::RStr;

use crate::abi::HostServicesRef;
pub use crate::abi::LogLevel;

static HOST: OnceLock<HostServicesRef> = OnceLock::new();
static MODULE: OnceLock<String> = OnceLock::new();

pub(crate) fn set_host(host: HostServicesRef) {
    let _ = HOST.set(host);
}

pub(crate) fn set_module(name: &str) {
    let _ = MODULE.set(name.to_owned());
}

/// Writes one log line at `level`. The macros below are the usual way in.
pub fn write(level: LogLevel, args: fmt::Arguments<'_>) {
    let module = MODULE.get().map(String::as_str).unwrap_or("plugin");
    let message = args.to_string();
    match HOST.get() {
        Some(host) => (host.log())(level, RStr::from_str(module), RStr::from_str(&message)),
        None => eprintln!("[{level:?} {module}] {message}"),
    }
}

#[doc(hidden)]
#[macro_export]
macro_rules! __log_at {
    ($level:ident, $($arg:tt)+) => {
        $crate::log::write($crate::log::LogLevel::$level, ::std::format_args!($($arg)+))
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __log_error { ($($arg:tt)+) => { $crate::__log_at!(Error, $($arg)+) }; }
#[doc(hidden)]
#[macro_export]
macro_rules! __log_warn { ($($arg:tt)+) => { $crate::__log_at!(Warn, $($arg)+) }; }
#[doc(hidden)]
#[macro_export]
macro_rules! __log_info { ($($arg:tt)+) => { $crate::__log_at!(Info, $($arg)+) }; }
#[doc(hidden)]
#[macro_export]
macro_rules! __log_debug { ($($arg:tt)+) => { $crate::__log_at!(Debug, $($arg)+) }; }

/// Logs at debug level, like `format!`.
pub use crate::__log_debug as debug;
/// Logs at error level, like `format!`.
pub use crate::__log_error as error;
/// Logs at info level, like `format!`.
pub use crate::__log_info as info;
/// Logs at warn level, like `format!`.
pub use crate::__log_warn as warn;
