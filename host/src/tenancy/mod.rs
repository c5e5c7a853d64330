//! Identity and tenancy: who a caller is (a UUID), how it proves it (a single-use TOTP code or a
//! bearer token obtained with one), and what it may call.

pub mod auth;
pub mod mongo;
pub mod secrets;
pub mod sqlite;
pub mod store;
pub mod tenants;
pub mod throttle;
pub mod totp;

pub use store::{AuditEntry, PrincipalRecord, PublishedPlugin, Store, StoreError};
