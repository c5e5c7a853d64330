//! Identity and tenancy: who a caller is (a UUID), how it proves it (a single-use TOTP code or a
//! bearer token obtained with one), and the records behind it. It depends on no other crate of
//! plughost: the host parses credentials from HTTP and hands them over, and observes the store.
//!
//! - [`store`]: the [`Store`] trait every backend implements, with [`sqlite`] (embedded) and
//!   [`mongo`] (shared by replicas).
//! - [`secrets`]: the server key, secrets sealed at rest, random bytes.
//! - [`totp`] and [`clock`]: codes and the time they are checked against.
//! - [`auth`]: authentication of parsed [`auth::Credentials`], tokens, the principal cache;
//!   [`throttle`]: the failure budget against guessing.
//! - [`tenants`]: tenant operations (add, rotate, enable, limits) with their audit trail.
//! - [`jobs`]: asynchronous jobs as the store keeps them, claimed under leases; [`schedules`]:
//!   cron schedules whose ticks queue jobs.

pub mod auth;
pub mod clock;
pub mod error;
pub mod jobs;
pub mod mongo;
pub mod schedules;
pub mod secrets;
pub mod sqlite;
pub mod store;
pub mod tenants;
pub mod throttle;
pub mod totp;

pub use store::{AuditEntry, PrincipalRecord, PublishedPlugin, Store, StoreError};
