//! The sandbox tier: tenants' modules (and the admin's with `ADMIN_ISOLATION=process`) run in
//! confined worker processes, `plughost worker`, never in the host's process.
//!
//! Each module version has a [`Pool`] of workers, each answering one call at a time over pipes,
//! awaited asynchronously. Quick functions' calls are batched: several are sent to one worker in
//! one write (see [`Pool::call`]). A call past its deadline kills its worker; a worker that dies
//! is replaced, with a growing delay when it keeps dying; a module whose workers crash too often
//! is quarantined until its file changes or the admin releases it. Workers are retired after many
//! calls or when they have grown, and idle ones beyond the warm count are stopped.
//!
//! The parts, from the host's side down to the worker's:
//! - `settings`: [`Settings`] and [`Limits`], with a tenant's overrides.
//! - `sandbox`: the [`Sandbox`] (folders, tenants, loading, probing, maintenance).
//! - `pool`: a module's [`Pool`]: a call's way through it, checkout, crashes, status.
//! - `batch`: the queue of quick calls, sent together, and requeue after a failure.
//! - `health`: crashes in a window, restart delays and quarantine.
//! - `buffers`: each tenant's budget of response bytes held for slow clients.
//! - `process`: one worker process and its channel, as the host drives it, and its retirement.
//! - `launcher`: where workers come from (spawner thread, folders, uids, cgroups).
//! - `job`: a call on its way through a worker, and how it can fail.
//! - `output`: a worker's log lines, stdout and stderr, and the headers a tenant may set.
//! - `observer`: what the sandbox reports to the host ([`Observer`]); [`SandboxError`].
//! - [`protocol`]: the frames between host and worker; [`confine`] and [`cgroup`]: the layers.
//! - [`worker`]: the worker process itself (`plughost worker`).

mod batch;
mod buffers;
pub mod cgroup;
pub mod confine;
mod error;
mod health;
mod job;
mod launcher;
mod observer;
mod output;
mod pool;
mod process;
pub mod protocol;
mod sandbox;
mod settings;
pub mod worker;

use std::sync::{Mutex, MutexGuard};

pub use self::{
    error::{LimitsError, SandboxError, SpawnError},
    observer::{Observer, Unobserved},
    output::escape_control,
    pool::{Pool, PoolStatus},
    sandbox::{make_private, Sandbox, SandboxedModule},
    settings::{check_overrides, Limits, Settings, TenantInfo},
};

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
