//! plughost's plugin runtime: a plugin `.so` loaded into this process and called, with nothing
//! of HTTP serving, async runtimes or configuration. The host uses it for the admin's trusted
//! plugins, and each sandbox worker for the one tenant plugin it runs.
//!
//! - [`elf`]: the file's ELF header, checked before the dynamic loader sees it.
//! - [`library`]: reading, hashing, shadow-copying and mapping a plugin; [`library::LoadError`].
//! - [`manifest`]: the plugin's manifest as the host trusts it ([`manifest::ModuleSpec`]).
//! - [`params`]: kwargs coerced to the parameter types a function declares.
//! - [`call`]: one call through the stable ABI and the plugin's reply.
//! - [`pace`]: the quick-call policy both tiers follow.

pub mod call;
pub mod elf;
pub mod library;
pub mod manifest;
pub mod pace;
pub mod params;
