//! The store behind identities: one trait, an embedded SQLite implementation (the default) and a
//! MongoDB one (`MONGODB_URI`), with the same behaviour, checked by one contract test suite.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use crate::error::StoreError;
use crate::jobs::{Cancel, Claim, JobCounts, JobEnd, JobQuery, JobRecord, JobStore};
use crate::schedules::{Advance, ScheduleRecord, ScheduleStore};

/// A principal as stored: the admin or a tenant. The TOTP secret is encrypted with `SECRET_KEY`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrincipalRecord {
    #[serde(rename = "_id")]
    pub uuid: String,
    /// `admin` or `tenant`.
    pub kind: String,
    pub name: String,
    /// `active` or `disabled`. (A string: some MongoDB-compatible servers store booleans as integers.)
    pub status: String,
    pub secret: String,
    /// Bumped whenever tokens issued before must stop working (disable, rotate).
    pub generation: i64,
    pub created_at: i64,
    pub updated_at: i64,
    /// Per-tenant overrides of sandbox limits; empty for now.
    pub limits: serde_json::Value,
}

impl PrincipalRecord {
    pub fn is_active(&self) -> bool {
        self.status == "active"
    }
}

/// A plugin version published through the store, without its bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishedPlugin {
    /// `admin/<name>` or `<tenant-uuid>/<name>`.
    #[serde(rename = "_id")]
    pub key: String,
    /// The file name without `.so`.
    pub name: String,
    /// The tenant whose namespace holds it; `None` for the admin's.
    pub tenant: Option<String>,
    pub module: String,
    pub version: String,
    pub sha256: String,
    pub size: i64,
    pub uploader: String,
    pub published_at: i64,
    /// The detached ed25519 signature sent with it (base64), written beside the synced file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

impl PublishedPlugin {
    /// The key of `name` in `tenant`'s namespace (or the admin's).
    pub fn key_of(tenant: Option<&str>, name: &str) -> String {
        format!("{}/{name}", tenant.unwrap_or("admin"))
    }

    /// The record as the REST API shows it (`key`, not the store's `_id`).
    pub fn view(&self) -> serde_json::Value {
        serde_json::json!({
            "key": self.key,
            "name": self.name,
            "tenant": self.tenant,
            "module": self.module,
            "version": self.version,
            "sha256": self.sha256,
            "size_bytes": self.size,
            "uploader": self.uploader,
            "signed": self.signature.is_some(),
            "published_at": crate::clock::timestamp(std::time::UNIX_EPOCH + std::time::Duration::from_secs(self.published_at.max(0) as u64)),
        })
    }
}

/// One admin action, kept for the record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: String,
}

/// What every store offers (jobs included).
#[async_trait]
pub trait Store: JobStore + ScheduleStore + Send + Sync {
    /// A short name for logs and `/health`: `sqlite` or `mongodb`.
    fn kind(&self) -> &'static str;
    /// Answers when the store is reachable.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Inserts or replaces this one record (the admin's, at start-up).
    async fn put(&self, record: &PrincipalRecord) -> Result<(), StoreError>;
    /// Inserts a new record; `Exists` if the UUID is taken.
    async fn insert(&self, record: &PrincipalRecord) -> Result<(), StoreError>;
    async fn get(&self, uuid: &str) -> Result<Option<PrincipalRecord>, StoreError>;
    /// Every record of `kind`, oldest first.
    async fn list(&self, kind: &str) -> Result<Vec<PrincipalRecord>, StoreError>;
    /// Replaces an existing record; `false` if there is none.
    async fn replace(&self, record: &PrincipalRecord) -> Result<bool, StoreError>;
    async fn remove(&self, uuid: &str) -> Result<bool, StoreError>;
    /// Records that `uuid` used the code of time step `step`; `false` if it was used before.
    /// Records expire by themselves after `expires_at` (Unix seconds).
    async fn use_code(&self, uuid: &str, step: u64, expires_at: i64) -> Result<bool, StoreError>;
    async fn audit(&self, entry: &AuditEntry) -> Result<(), StoreError>;
    /// The most recent entries, newest first.
    async fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError>;
    /// Stores a plugin version (replacing the one under the same key): bytes first, then the
    /// record, so that a replica never sees a record whose bytes are missing.
    async fn publish(&self, plugin: &PublishedPlugin, bytes: &[u8]) -> Result<(), StoreError>;
    /// Every published plugin, without bytes: cheap enough to poll.
    async fn published(&self) -> Result<Vec<PublishedPlugin>, StoreError>;
    /// The bytes of a published version, if they are still there.
    async fn plugin_bytes(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Removes a published plugin; `false` if there was none.
    async fn unpublish(&self, key: &str) -> Result<bool, StoreError>;
    /// A number that changes with every publish and unpublish: one read tells a replica whether
    /// anything is new (0 before the first change).
    async fn published_version(&self) -> Result<u64, StoreError>;
}

/// Told how long each store operation took, and whether it succeeded (the host's metrics).
pub trait StoreObserver: Send + Sync {
    fn operation(&self, store: &'static str, operation: &'static str, ok: bool, elapsed: std::time::Duration);
}

/// Wraps a store and reports how long each operation takes to an observer.
pub struct Timed<S>(pub S, pub std::sync::Arc<dyn StoreObserver>);

impl<S: Store> Timed<S> {
    pub(crate) async fn time<T>(
        &self,
        operation: &'static str,
        work: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = std::time::Instant::now();
        let result = work.await;
        self.1.operation(self.0.kind(), operation, result.is_ok(), started.elapsed());
        result
    }
}

#[async_trait]
impl<S: Store> Store for Timed<S> {
    fn kind(&self) -> &'static str {
        self.0.kind()
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.time("ping", self.0.ping()).await
    }
    async fn put(&self, record: &PrincipalRecord) -> Result<(), StoreError> {
        self.time("put", self.0.put(record)).await
    }
    async fn insert(&self, record: &PrincipalRecord) -> Result<(), StoreError> {
        self.time("insert", self.0.insert(record)).await
    }
    async fn get(&self, uuid: &str) -> Result<Option<PrincipalRecord>, StoreError> {
        self.time("get", self.0.get(uuid)).await
    }
    async fn list(&self, kind: &str) -> Result<Vec<PrincipalRecord>, StoreError> {
        self.time("list", self.0.list(kind)).await
    }
    async fn replace(&self, record: &PrincipalRecord) -> Result<bool, StoreError> {
        self.time("replace", self.0.replace(record)).await
    }
    async fn remove(&self, uuid: &str) -> Result<bool, StoreError> {
        self.time("remove", self.0.remove(uuid)).await
    }
    async fn use_code(&self, uuid: &str, step: u64, expires_at: i64) -> Result<bool, StoreError> {
        self.time("use_code", self.0.use_code(uuid, step, expires_at)).await
    }
    async fn audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        self.time("audit", self.0.audit(entry)).await
    }
    async fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.time("audit_log", self.0.audit_log(limit)).await
    }
    async fn publish(&self, plugin: &PublishedPlugin, bytes: &[u8]) -> Result<(), StoreError> {
        self.time("publish", self.0.publish(plugin, bytes)).await
    }
    async fn published(&self) -> Result<Vec<PublishedPlugin>, StoreError> {
        self.time("published", self.0.published()).await
    }
    async fn plugin_bytes(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.time("plugin_bytes", self.0.plugin_bytes(sha256)).await
    }
    async fn unpublish(&self, key: &str) -> Result<bool, StoreError> {
        self.time("unpublish", self.0.unpublish(key)).await
    }
    async fn published_version(&self) -> Result<u64, StoreError> {
        self.time("published_version", self.0.published_version()).await
    }
}

#[async_trait]
impl<S: Store> JobStore for Timed<S> {
    async fn queue_job(&self, job: &JobRecord, key_expires_at: i64) -> Result<JobRecord, StoreError> {
        self.time("queue_job", self.0.queue_job(job, key_expires_at)).await
    }
    async fn job(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        self.time("job", self.0.job(id)).await
    }
    async fn jobs(&self, query: &JobQuery) -> Result<Vec<JobRecord>, StoreError> {
        self.time("jobs", self.0.jobs(query)).await
    }
    async fn claim_job(&self, claim: &Claim) -> Result<Option<JobRecord>, StoreError> {
        self.time("claim_job", self.0.claim_job(claim)).await
    }
    async fn renew_job(&self, id: &str, replica: &str, lease_until: i64) -> Result<bool, StoreError> {
        self.time("renew_job", self.0.renew_job(id, replica, lease_until)).await
    }
    async fn end_job(&self, id: &str, replica: &str, end: &JobEnd) -> Result<bool, StoreError> {
        self.time("end_job", self.0.end_job(id, replica, end)).await
    }
    async fn release_job(&self, id: &str, replica: &str) -> Result<bool, StoreError> {
        self.time("release_job", self.0.release_job(id, replica)).await
    }
    async fn cancel_job(&self, id: &str, now: i64) -> Result<Cancel, StoreError> {
        self.time("cancel_job", self.0.cancel_job(id, now)).await
    }
    async fn requeue_job(&self, id: &str, now: i64) -> Result<Option<JobRecord>, StoreError> {
        self.time("requeue_job", self.0.requeue_job(id, now)).await
    }
    async fn purge_jobs(&self, ended_before: i64, now: i64) -> Result<u64, StoreError> {
        self.time("purge_jobs", self.0.purge_jobs(ended_before, now)).await
    }
    async fn job_counts(&self, now: i64) -> Result<JobCounts, StoreError> {
        self.time("job_counts", self.0.job_counts(now)).await
    }
}

#[async_trait]
impl<S: Store> ScheduleStore for Timed<S> {
    async fn insert_schedule(&self, schedule: &ScheduleRecord) -> Result<bool, StoreError> {
        self.time("insert_schedule", self.0.insert_schedule(schedule)).await
    }
    async fn schedule(&self, key: &str) -> Result<Option<ScheduleRecord>, StoreError> {
        self.time("schedule", self.0.schedule(key)).await
    }
    async fn schedules(&self, owner: Option<&str>) -> Result<Vec<ScheduleRecord>, StoreError> {
        self.time("schedules", self.0.schedules(owner)).await
    }
    async fn remove_schedule(&self, key: &str) -> Result<bool, StoreError> {
        self.time("remove_schedule", self.0.remove_schedule(key)).await
    }
    async fn pause_schedule(&self, key: &str, paused: bool, next_run: Option<i64>) -> Result<Option<ScheduleRecord>, StoreError> {
        self.time("pause_schedule", self.0.pause_schedule(key, paused, next_run)).await
    }
    async fn upcoming_schedules(&self, limit: usize) -> Result<Vec<ScheduleRecord>, StoreError> {
        self.time("upcoming_schedules", self.0.upcoming_schedules(limit)).await
    }
    async fn fire_schedule(&self, key: &str, due: i64, advance: &Advance, job: Option<&JobRecord>) -> Result<bool, StoreError> {
        self.time("fire_schedule", self.0.fire_schedule(key, due, advance, job)).await
    }
}
