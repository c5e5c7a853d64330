//! Asynchronous jobs: a call queued in the store (`Prefer: respond-async`), run later by any
//! replica through the same dispatch as a synchronous call, retried with back-off when it fails
//! for reasons a retry can change, and kept with its answer for `JOB_RETENTION_SECS`.
//!
//! This module knows the store and the policy (claims, leases, retries, fairness, draining); how
//! a job's call is made and turned into an answer is the HTTP front's, handed in as an
//! [`Executor`].

mod callback;
pub(crate) mod draft;
mod runner;
pub(crate) mod schedule;
mod stored;

use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize},
        Arc, Mutex,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

pub use callback::{CallbackKey, CallbackPolicy};
use plughost_tenancy::{
    jobs::{JobRecord, JobState},
    Store, StoreError,
};
pub(crate) use runner::Executor;
pub(crate) use schedule::Ticker;
pub(crate) use stored::{Answer, StoredCall};

/// `JOBS_*` and `JOB_*`.
#[derive(Debug, Clone)]
pub struct JobSettings {
    /// Calls at once on this replica.
    pub concurrency: usize,
    /// How often an idle replica looks for jobs queued through others.
    pub poll: Duration,
    /// Deadline of one attempt.
    pub timeout: Duration,
    pub max_attempts: i64,
    /// Wait before the first retry, doubled for each next one.
    pub backoff: Duration,
    /// How long a job stays with a replica that stopped renewing its lease.
    pub lease: Duration,
    /// How long ended jobs and idempotency keys are kept.
    pub retention: Duration,
    /// The longest delay a caller may ask for.
    pub max_delay: Duration,
    /// Where callbacks may go (`CALLBACK_ALLOW`; empty: callbacks off).
    pub callbacks: CallbackPolicy,
    /// Deliveries tried before a callback is given up.
    pub callback_attempts: u32,
    pub callback_key: CallbackKey,
}

/// What a caller asks to queue.
pub(crate) struct NewJob {
    pub owner: Option<(String, &'static str)>,
    pub module: String,
    pub function: String,
    pub call: StoredCall,
    pub delay: Duration,
    pub idempotency_key: Option<String>,
    /// Checked against `CALLBACK_ALLOW` already.
    pub callback_url: Option<String>,
}

/// The jobs of this replica: the store, the settings, and the runner's state.
pub(crate) struct Jobs {
    store: Arc<dyn Store>,
    pub settings: JobSettings,
    /// This replica's name in leases.
    replica: String,
    /// Woken when a job is queued through this replica, or a worker frees up.
    wake: tokio::sync::Notify,
    /// Woken when a schedule is created or resumed through this replica.
    schedules_changed: tokio::sync::Notify,
    /// Calls running on this replica, by owner (for fair claims).
    running: Mutex<std::collections::HashMap<Option<String>, usize>>,
    active: AtomicUsize,
    stopping: AtomicBool,
    /// Ids of the jobs running here, released to the queue if the replica stops before they end.
    in_flight: Mutex<std::collections::HashSet<String>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Unix milliseconds now.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A Unix-milliseconds time as RFC 3339, to the millisecond (`2026-12-04T01:02:03.456Z`).
pub(crate) fn timestamp(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms.max(0))
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Jobs {
    pub(crate) fn new(store: Arc<dyn Store>, settings: JobSettings) -> Arc<Jobs> {
        Arc::new(Jobs {
            store,
            settings,
            replica: uuid::Uuid::new_v4().to_string(),
            wake: tokio::sync::Notify::new(),
            schedules_changed: tokio::sync::Notify::new(),
            running: Mutex::default(),
            active: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            in_flight: Mutex::default(),
        })
    }

    /// The runner as `/health` shows it to the admin.
    pub(crate) fn status(&self) -> serde_json::Value {
        use std::sync::atomic::Ordering;
        serde_json::json!({
            "replica": self.replica,
            "concurrency": self.settings.concurrency,
            "running": self.active.load(Ordering::Relaxed),
            "claiming": !self.stopping.load(Ordering::Relaxed),
            "poll_ms": self.settings.poll.as_millis() as u64,
        })
    }

    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Queues a job (or, for a repeated idempotency key, returns the job queued the first time)
    /// and wakes this replica's runner.
    pub(crate) async fn queue(&self, new: NewJob) -> Result<JobRecord, StoreError> {
        let now = now_ms();
        let record = self.record(new, now);
        let key_expires_at = now + self.settings.retention.as_millis() as i64;
        let queued = self.store.queue_job(&record, key_expires_at).await?;
        self.wake.notify_one();
        Ok(queued)
    }

    /// The record of a new job, queued from `now` on (after its delay), with a random id.
    fn record(&self, new: NewJob, now: i64) -> JobRecord {
        let (owner, owner_kind) = match new.owner {
            Some((uuid, kind)) => (Some(uuid), kind),
            None => (None, "none"),
        };
        JobRecord {
            id: uuid::Uuid::new_v4().to_string(),
            owner,
            owner_kind: owner_kind.to_owned(),
            module: new.module,
            function: new.function,
            method: new.call.method.clone(),
            state: JobState::Queued,
            attempts: 0,
            max_attempts: self.settings.max_attempts,
            created_at: now,
            run_after: now + new.delay.as_millis() as i64,
            started_at: None,
            ended_at: None,
            lease_owner: None,
            lease_until: 0,
            request: new.call.to_json(),
            result: None,
            error: None,
            callback_url: new.callback_url,
            schedule: None,
            idempotency_key: new.idempotency_key,
            scheduled_for: None,
        }
    }
}

/// A job as the API shows it.
pub(crate) fn view(job: &JobRecord) -> serde_json::Value {
    let at = |ms: Option<i64>| ms.map(timestamp);
    let mut view = serde_json::json!({
        "id": job.id,
        "state": job.state.as_str(),
        "module": job.module,
        "function": job.function,
        "method": job.method,
        "caller": job.owner_kind,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "created_at": timestamp(job.created_at),
        "run_after": timestamp(job.run_after),
        "started_at": at(job.started_at),
        "ended_at": at(job.ended_at),
        "error": job.error,
        "status_url": format!("/rest/jobs/{}", job.id),
        "result_url": format!("/rest/jobs/{}/result", job.id),
    });
    if let Some(schedule) = &job.schedule {
        view["schedule"] = schedule.clone().into();
        view["scheduled_for"] = job.scheduled_for.map(timestamp).into();
    }
    if let Some(answer) = job.result.as_deref().and_then(Answer::from_json) {
        view["result"] = answer.view();
    }
    view
}
