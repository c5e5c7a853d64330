//! The MongoDB store (official `mongodb` driver). Collections: `admins`, `tenants`, `used_codes`
//! (unique on uuid+step, TTL on `expires_at`), `audit`, `plugins` and `plugin_chunks` (published
//! plugins: records, and their bytes in 4 MiB pieces keyed by sha256), `jobs` and `job_keys`
//! (asynchronous jobs, in [`crate::jobs`]), `schedules` ([`crate::schedules`]). Tokens are stateless (signed), so none are
//! stored. Indexes are created at start-up. Kept to plain
//! inserts, finds, replaces and deletes, so that it runs on a real mongod and on wire-compatible
//! servers alike.

use std::time::Duration;

mod jobs;
mod schedules;

use async_trait::async_trait;
use futures_util::TryStreamExt;
use mongodb::{
    bson::{doc, DateTime},
    error::{ErrorKind, WriteFailure},
    options::{ClientOptions, IndexOptions},
    Client, Collection, IndexModel,
};
use serde::{Deserialize, Serialize};

use crate::store::{AuditEntry, PrincipalRecord, PublishedPlugin, Store, StoreError};

pub struct MongoStore {
    client: Client,
    admins: Collection<PrincipalRecord>,
    tenants: Collection<PrincipalRecord>,
    codes: Collection<UsedCode>,
    audit: Collection<AuditEntry>,
    plugins: Collection<PublishedPlugin>,
    chunks: Collection<Chunk>,
    /// One document, `{_id: "published", version}`, counting publish and unpublish.
    versions: Collection<mongodb::bson::Document>,
    pub(crate) jobs: Collection<crate::jobs::JobRecord>,
    pub(crate) job_keys: Collection<jobs::JobKey>,
    pub(crate) schedules: Collection<crate::schedules::ScheduleRecord>,
}

/// A piece of a published plugin's bytes (documents are limited to 16 MiB).
#[derive(Debug, Serialize, Deserialize)]
struct Chunk {
    #[serde(rename = "_id")]
    id: String,
    sha256: String,
    n: i64,
    data: mongodb::bson::Binary,
}

const CHUNK_BYTES: usize = 4 << 20;

#[derive(Debug, Serialize, Deserialize)]
struct UsedCode {
    uuid: String,
    step: i64,
    expires_at: DateTime,
}

pub(crate) fn unavailable(err: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(err.to_string())
}

pub(crate) fn is_duplicate(err: &mongodb::error::Error) -> bool {
    match err.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(e)) => e.code == 11000,
        ErrorKind::InsertMany(e) => e.write_errors.as_ref().is_some_and(|errs| errs.iter().any(|e| e.code == 11000)),
        _ => err.to_string().contains("E11000") || err.to_string().contains("11000"),
    }
}

impl MongoStore {
    /// Connects (lazily: an unreachable server shows up as `Unavailable` on first use) and
    /// creates the indexes when the server is reachable.
    pub async fn connect(uri: &str, database: &str) -> Result<MongoStore, StoreError> {
        let mut options = ClientOptions::parse(uri)
            .await
            .map_err(|err| StoreError::Unavailable(format!("MONGODB_URI is not usable: {err}")))?;
        options.app_name = Some("plughost".to_owned());
        options.server_selection_timeout = Some(options.server_selection_timeout.unwrap_or(Duration::from_secs(2)));
        options.connect_timeout = Some(options.connect_timeout.unwrap_or(Duration::from_secs(2)));
        let client = Client::with_options(options).map_err(unavailable)?;
        let db = client.database(database);
        let store = MongoStore {
            admins: db.collection("admins"),
            tenants: db.collection("tenants"),
            codes: db.collection("used_codes"),
            audit: db.collection("audit"),
            plugins: db.collection("plugins"),
            chunks: db.collection("plugin_chunks"),
            versions: db.collection("plugin_versions"),
            jobs: db.collection("jobs"),
            job_keys: db.collection("job_keys"),
            schedules: db.collection("schedules"),
            client,
        };
        if let Err(err) = store.create_indexes().await {
            tracing::warn!("MongoDB indexes not created yet ({err}); retried at the next start-up");
        }
        Ok(store)
    }

    async fn create_indexes(&self) -> Result<(), StoreError> {
        let unique = IndexModel::builder()
            .keys(doc! {"uuid": 1, "step": 1})
            .options(IndexOptions::builder().unique(true).name("uuid_step_unique".to_owned()).build())
            .build();
        let ttl = IndexModel::builder()
            .keys(doc! {"expires_at": 1})
            .options(
                IndexOptions::builder()
                    .expire_after(Duration::from_secs(0))
                    .name("expires_at_ttl".to_owned())
                    .build(),
            )
            .build();
        self.codes.create_index(unique).await.map_err(unavailable)?;
        self.codes.create_index(ttl).await.map_err(unavailable)?;
        let created = IndexModel::builder().keys(doc! {"created_at": 1}).build();
        self.tenants.create_index(created).await.map_err(unavailable)?;
        self.create_job_indexes().await?;
        self.create_schedule_indexes().await
    }

    /// The collection a record of `kind` lives in.
    fn collection(&self, kind: &str) -> &Collection<PrincipalRecord> {
        if kind == "admin" {
            &self.admins
        } else {
            &self.tenants
        }
    }
}

#[async_trait]
impl Store for MongoStore {
    fn kind(&self) -> &'static str {
        "mongodb"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.client
            .database("admin")
            .run_command(doc! {"ping": 1})
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn put(&self, record: &PrincipalRecord) -> Result<(), StoreError> {
        let collection = self.collection(&record.kind);
        // A UUID lives in one collection: a record changing kind leaves the other one.
        let other = if record.kind == "admin" { &self.tenants } else { &self.admins };
        other.delete_one(doc! {"_id": &record.uuid}).await.map_err(unavailable)?;
        let replaced = collection
            .replace_one(doc! {"_id": &record.uuid}, record)
            .await
            .map_err(unavailable)?;
        if replaced.matched_count == 0 {
            match collection.insert_one(record).await {
                Ok(_) => {}
                // Another process inserted it in between: replace that one.
                Err(err) if is_duplicate(&err) => {
                    collection
                        .replace_one(doc! {"_id": &record.uuid}, record)
                        .await
                        .map_err(unavailable)?;
                }
                Err(err) => return Err(unavailable(err)),
            }
        }
        Ok(())
    }

    async fn insert(&self, record: &PrincipalRecord) -> Result<(), StoreError> {
        if self.get(&record.uuid).await?.is_some() {
            return Err(StoreError::Exists(record.uuid.clone()));
        }
        match self.collection(&record.kind).insert_one(record).await {
            Ok(_) => Ok(()),
            Err(err) if is_duplicate(&err) => Err(StoreError::Exists(record.uuid.clone())),
            Err(err) => Err(unavailable(err)),
        }
    }

    async fn get(&self, uuid: &str) -> Result<Option<PrincipalRecord>, StoreError> {
        match self.tenants.find_one(doc! {"_id": uuid}).await.map_err(unavailable)? {
            Some(record) => Ok(Some(record)),
            None => self.admins.find_one(doc! {"_id": uuid}).await.map_err(unavailable),
        }
    }

    async fn list(&self, kind: &str) -> Result<Vec<PrincipalRecord>, StoreError> {
        let cursor = self.collection(kind).find(doc! {}).await.map_err(unavailable)?;
        let mut records: Vec<PrincipalRecord> = cursor.try_collect().await.map_err(unavailable)?;
        records.sort_by_key(|r| r.created_at);
        Ok(records)
    }

    async fn replace(&self, record: &PrincipalRecord) -> Result<bool, StoreError> {
        let result = self
            .collection(&record.kind)
            .replace_one(doc! {"_id": &record.uuid}, record)
            .await
            .map_err(unavailable)?;
        Ok(result.matched_count > 0)
    }

    async fn remove(&self, uuid: &str) -> Result<bool, StoreError> {
        let tenants = self.tenants.delete_one(doc! {"_id": uuid}).await.map_err(unavailable)?;
        let admins = self.admins.delete_one(doc! {"_id": uuid}).await.map_err(unavailable)?;
        Ok(tenants.deleted_count + admins.deleted_count > 0)
    }

    async fn use_code(&self, uuid: &str, step: u64, expires_at: i64) -> Result<bool, StoreError> {
        let step = i64::try_from(step).map_err(|_| StoreError::Corrupt("time step out of range".to_owned()))?;
        let record = UsedCode {
            uuid: uuid.to_owned(),
            step,
            expires_at: DateTime::from_millis(expires_at.saturating_mul(1000)),
        };
        match self.codes.insert_one(&record).await {
            Ok(_) => Ok(true),
            Err(err) if is_duplicate(&err) => Ok(false),
            Err(err) => Err(unavailable(err)),
        }
    }

    async fn audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        self.audit.insert_one(entry).await.map(|_| ()).map_err(unavailable)
    }

    async fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let cursor = self
            .audit
            .find(doc! {})
            .sort(doc! {"at": -1})
            .limit(limit as i64)
            .await
            .map_err(unavailable)?;
        cursor.try_collect().await.map_err(unavailable)
    }

    async fn publish(&self, plugin: &PublishedPlugin, bytes: &[u8]) -> Result<(), StoreError> {
        let pieces = bytes.chunks(CHUNK_BYTES).count() as u64;
        let stored = self
            .chunks
            .count_documents(doc! {"sha256": &plugin.sha256})
            .await
            .map_err(unavailable)?;
        if stored != pieces {
            self.chunks
                .delete_many(doc! {"sha256": &plugin.sha256})
                .await
                .map_err(unavailable)?;
            for (n, piece) in bytes.chunks(CHUNK_BYTES).enumerate() {
                let chunk = Chunk {
                    id: format!("{}:{n}", plugin.sha256),
                    sha256: plugin.sha256.clone(),
                    n: n as i64,
                    data: mongodb::bson::Binary {
                        subtype: mongodb::bson::spec::BinarySubtype::Generic,
                        bytes: piece.to_vec(),
                    },
                };
                self.chunks.insert_one(&chunk).await.map_err(unavailable)?;
            }
        }
        let previous = self.plugins.find_one(doc! {"_id": &plugin.key}).await.map_err(unavailable)?;
        let replaced = self
            .plugins
            .replace_one(doc! {"_id": &plugin.key}, plugin)
            .await
            .map_err(unavailable)?;
        if replaced.matched_count == 0 {
            match self.plugins.insert_one(plugin).await {
                Ok(_) => {}
                Err(err) if is_duplicate(&err) => {
                    self.plugins
                        .replace_one(doc! {"_id": &plugin.key}, plugin)
                        .await
                        .map_err(unavailable)?;
                }
                Err(err) => return Err(unavailable(err)),
            }
        }
        if let Some(previous) = previous.filter(|p| p.sha256 != plugin.sha256) {
            self.drop_unreferenced(&previous.sha256).await?;
        }
        self.bump_version().await
    }

    async fn published(&self) -> Result<Vec<PublishedPlugin>, StoreError> {
        let cursor = self.plugins.find(doc! {}).sort(doc! {"_id": 1}).await.map_err(unavailable)?;
        cursor.try_collect().await.map_err(unavailable)
    }

    async fn plugin_bytes(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let cursor = self
            .chunks
            .find(doc! {"sha256": sha256})
            .sort(doc! {"n": 1})
            .await
            .map_err(unavailable)?;
        let chunks: Vec<Chunk> = cursor.try_collect().await.map_err(unavailable)?;
        if chunks.is_empty() {
            return Ok(None);
        }
        let bytes: Vec<u8> = chunks.into_iter().flat_map(|c| c.data.bytes).collect();
        use sha2::Digest;
        if hex::encode(sha2::Sha256::digest(&bytes)) != sha256 {
            return Err(StoreError::Corrupt(format!(
                "the stored bytes of plugin {sha256} do not match their sha256"
            )));
        }
        Ok(Some(bytes))
    }

    async fn unpublish(&self, key: &str) -> Result<bool, StoreError> {
        let Some(previous) = self.plugins.find_one(doc! {"_id": key}).await.map_err(unavailable)? else {
            return Ok(false);
        };
        let removed = self.plugins.delete_one(doc! {"_id": key}).await.map_err(unavailable)?;
        self.drop_unreferenced(&previous.sha256).await?;
        self.bump_version().await?;
        Ok(removed.deleted_count > 0)
    }

    async fn published_version(&self) -> Result<u64, StoreError> {
        let found = self.versions.find_one(doc! {"_id": "published"}).await.map_err(unavailable)?;
        let version = found.and_then(|doc| match doc.get("version") {
            Some(mongodb::bson::Bson::Int64(n)) => Some(*n),
            Some(mongodb::bson::Bson::Int32(n)) => Some(i64::from(*n)),
            _ => None,
        });
        Ok(version.unwrap_or(0).max(0) as u64)
    }
}

impl MongoStore {
    /// Counts one more change to the published plugins.
    async fn bump_version(&self) -> Result<(), StoreError> {
        self.versions
            .update_one(doc! {"_id": "published"}, doc! {"$inc": {"version": 1_i64}})
            .upsert(true)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Removes the bytes of `sha256` when no published plugin refers to them any more.
    async fn drop_unreferenced(&self, sha256: &str) -> Result<(), StoreError> {
        let users = self.plugins.count_documents(doc! {"sha256": sha256}).await.map_err(unavailable)?;
        if users == 0 {
            self.chunks.delete_many(doc! {"sha256": sha256}).await.map_err(unavailable)?;
        }
        Ok(())
    }
}
