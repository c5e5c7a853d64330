//! Schedules as the store keeps them: one record per schedule, and the tick they fire next.
//!
//! A tick is fired by queueing its job, whose id the host derives from the schedule and the
//! tick time: the job record is the one record per schedule and tick, so two replicas that both
//! see a tick due cannot both queue it. Then the schedule is advanced with a compare-and-set on
//! the tick it was due at, so that one of them moves it on.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{error::StoreError, jobs::JobRecord};

/// One schedule. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleRecord {
    /// `<owner uuid>/<name>`: names are unique per principal.
    #[serde(rename = "_id")]
    pub key: String,
    /// A random UUID made when the schedule was created: the namespace of its ticks' job ids,
    /// so that a schedule removed and made again under the same name starts afresh.
    pub id: String,
    pub name: String,
    pub owner: String,
    /// `admin` or `tenant`.
    pub owner_kind: String,
    pub cron: String,
    /// An IANA time zone name; `None`: UTC.
    pub timezone: Option<String>,
    /// The path called, from `/rest/services/`, with its query.
    pub path: String,
    pub method: String,
    /// The JSON body sent with each call, as text.
    pub body: Option<String>,
    /// Whether a tick missed while no replica ran is run late (the latest one, once).
    pub catch_up: bool,
    pub paused: bool,
    pub created_at: i64,
    /// The tick to fire next.
    pub next_run: i64,
    /// The last tick handled (fired, or found unable to run).
    pub last_run: Option<i64>,
    /// The job the last fired tick queued.
    pub last_job: Option<String>,
    /// `ok`, or why the last tick queued no job, in words.
    pub status: String,
}

/// How a tick moved a schedule on.
#[derive(Debug, Clone, PartialEq)]
pub struct Advance {
    pub last_run: Option<i64>,
    pub next_run: i64,
    pub last_job: Option<String>,
    pub status: String,
}

impl ScheduleRecord {
    pub fn key_of(owner: &str, name: &str) -> String {
        format!("{owner}/{name}")
    }

    /// The record after `advance`.
    pub fn advanced(&self, advance: &Advance) -> ScheduleRecord {
        ScheduleRecord {
            last_run: advance.last_run.or(self.last_run),
            next_run: advance.next_run,
            last_job: advance.last_job.clone().or_else(|| self.last_job.clone()),
            status: advance.status.clone(),
            ..self.clone()
        }
    }
}

/// What every store offers for schedules.
#[async_trait]
pub trait ScheduleStore: Send + Sync {
    /// Stores a new schedule; `false` (and nothing written) if its key is taken.
    async fn insert_schedule(&self, schedule: &ScheduleRecord) -> Result<bool, StoreError>;
    async fn schedule(&self, key: &str) -> Result<Option<ScheduleRecord>, StoreError>;
    /// The schedules of `owner` (everyone's with `None`), by key.
    async fn schedules(&self, owner: Option<&str>) -> Result<Vec<ScheduleRecord>, StoreError>;
    async fn remove_schedule(&self, key: &str) -> Result<bool, StoreError>;
    /// Pauses or resumes; resuming sets the next tick. `None` if there is no such schedule.
    async fn pause_schedule(&self, key: &str, paused: bool, next_run: Option<i64>) -> Result<Option<ScheduleRecord>, StoreError>;
    /// The running schedules whose next tick comes first, earliest first (one indexed query):
    /// those due, and after them the one that is due next, so a poller knows when to look again.
    async fn upcoming_schedules(&self, limit: usize) -> Result<Vec<ScheduleRecord>, StoreError>;
    /// Fires the tick `due` of the schedule `key`: queues `job` unless a job with its id is
    /// there already, then applies `advance` if the schedule is still due at `due`. Returns
    /// whether the job was queued by this call (`false`: another replica queued it, or none).
    async fn fire_schedule(&self, key: &str, due: i64, advance: &Advance, job: Option<&JobRecord>) -> Result<bool, StoreError>;
}
