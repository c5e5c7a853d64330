//! Asynchronous jobs as the store keeps them: one record per job, claimed by one replica at a
//! time under a lease, with the same behaviour on SQLite and MongoDB.
//!
//! The store does not know what a job calls: the host keeps the request and the result as
//! opaque JSON text. What the store knows is the job's life: queued (from `run_after` on),
//! running under a lease that its replica renews, then ended, or queued again for a retry.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::StoreError;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    /// Ended with an answer that retrying cannot change (a 4xx).
    Failed,
    /// Used its attempts.
    Dead,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Dead,
        JobState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|state| state.as_str() == text)
    }

    /// Whether the job is over (kept until the retention window passes).
    pub fn is_final(self) -> bool {
        !matches!(self, JobState::Queued | JobState::Running)
    }
}

/// One job. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// A random UUID (v4): whoever holds it may read a job queued without credentials.
    #[serde(rename = "_id")]
    pub id: String,
    /// The UUID of the principal that queued it; `None` when it was queued without credentials.
    pub owner: Option<String>,
    /// `admin`, `tenant` or `none`.
    pub owner_kind: String,
    pub module: String,
    pub function: String,
    pub method: String,
    pub state: JobState,
    /// Attempts started (a claim starts one).
    pub attempts: i64,
    pub max_attempts: i64,
    pub created_at: i64,
    /// Not claimed before this time (a delay, or the back-off before a retry).
    pub run_after: i64,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
    /// The replica holding the lease while the job runs.
    pub lease_owner: Option<String>,
    /// While running: another replica may claim the job after this time (its replica is gone).
    pub lease_until: i64,
    /// The call, as the host wrote it (JSON text).
    pub request: String,
    /// The function's answer when the job ended (JSON text, the host's).
    pub result: Option<String>,
    /// Why the last attempt failed, in words.
    pub error: Option<String>,
    pub callback_url: Option<String>,
    /// The schedule whose tick made the job.
    pub schedule: Option<String>,
    pub idempotency_key: Option<String>,
    /// For a schedule's job: the tick it is for.
    #[serde(default)]
    pub scheduled_for: Option<i64>,
}

/// Which jobs a listing returns, newest first.
#[derive(Debug, Clone, Default)]
pub struct JobQuery {
    /// Only the jobs of this principal (`None`: everyone's, for the admin).
    pub owner: Option<String>,
    pub state: Option<JobState>,
    pub schedule: Option<String>,
    /// Only jobs older than this one (`created_at`, `id`): the cursor of the next page.
    pub before: Option<(i64, String)>,
    pub limit: usize,
}

/// A replica asking for the next job to run.
#[derive(Debug, Clone)]
pub struct Claim {
    pub replica: String,
    pub now: i64,
    pub lease_until: i64,
    /// Principals not to take a job from this time (they already hold their share of this
    /// replica's workers); `None` stands for jobs queued without credentials.
    pub skip_owners: Vec<Option<String>>,
}

/// How an attempt ended: the job's new state (`Queued` for a retry, from `run_after` on).
#[derive(Debug, Clone)]
pub struct JobEnd {
    pub state: JobState,
    pub now: i64,
    pub run_after: i64,
    pub result: Option<String>,
    pub error: Option<String>,
}

/// What asking to cancel a job found.
#[derive(Debug, Clone, PartialEq)]
pub enum Cancel {
    Cancelled(Box<JobRecord>),
    /// It has started or ended: nothing was changed.
    TooLate(Box<JobRecord>),
    NotFound,
}

/// What every store offers for jobs.
#[async_trait]
pub trait JobStore: Send + Sync {
    /// Queues `job`. With an idempotency key, the key is reserved for its owner until
    /// `key_expires_at`; if the owner already used it, the job queued then is returned instead
    /// and nothing is written.
    async fn queue_job(&self, job: &JobRecord, key_expires_at: i64) -> Result<JobRecord, StoreError>;
    async fn job(&self, id: &str) -> Result<Option<JobRecord>, StoreError>;
    async fn jobs(&self, query: &JobQuery) -> Result<Vec<JobRecord>, StoreError>;
    /// Takes the job that has waited longest among those ready (queued and due, or running on a
    /// lease that expired), atomically: it is `running` under `claim.replica`'s lease, with one
    /// more attempt. `None` when nothing is ready.
    async fn claim_job(&self, claim: &Claim) -> Result<Option<JobRecord>, StoreError>;
    /// Extends the lease; `false` if this replica no longer holds it.
    async fn renew_job(&self, id: &str, replica: &str, lease_until: i64) -> Result<bool, StoreError>;
    /// Records how an attempt ended, if this replica still holds the lease.
    async fn end_job(&self, id: &str, replica: &str, end: &JobEnd) -> Result<bool, StoreError>;
    /// Gives a running job back to the queue, unstarted attempts aside (a replica that stops).
    async fn release_job(&self, id: &str, replica: &str) -> Result<bool, StoreError>;
    /// Cancels a job that has not started.
    async fn cancel_job(&self, id: &str, now: i64) -> Result<Cancel, StoreError>;
    /// Queues an ended job again with fresh attempts; `None` if there is no such job, the
    /// unchanged record if it has not ended.
    async fn requeue_job(&self, id: &str, now: i64) -> Result<Option<JobRecord>, StoreError>;
    /// Deletes the jobs that ended before `ended_before`, and expired idempotency keys.
    async fn purge_jobs(&self, ended_before: i64, now: i64) -> Result<u64, StoreError>;
    /// How many jobs are in each state, and when the oldest queued one was due.
    async fn job_counts(&self, now: i64) -> Result<JobCounts, StoreError>;
}

/// Jobs by state, for metrics and `/health`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct JobCounts {
    pub by_state: Vec<(JobState, u64)>,
    /// How long the oldest due job has waited, in milliseconds (0 with none).
    pub oldest_due_ms: i64,
}

/// The key an idempotency key is reserved under: the same key from two callers is two keys.
pub(crate) fn reservation(owner: Option<&str>, key: &str) -> String {
    format!("{}|{key}", owner.unwrap_or("none"))
}
