//! Jobs on MongoDB: collection `jobs` (indexed on state and due time, lease, owner and creation),
//! claimed with one `findOneAndUpdate`, and `job_keys` (idempotency keys, unique on `_id`).

use async_trait::async_trait;
use futures_util::TryStreamExt;
use mongodb::{
    bson::{doc, Bson, Document},
    options::ReturnDocument,
    IndexModel,
};
use serde::{Deserialize, Serialize};

use crate::jobs::{reservation, Cancel, Claim, JobCounts, JobEnd, JobQuery, JobRecord, JobState, JobStore};
use crate::{
    error::StoreError,
    mongo::{is_duplicate, unavailable, MongoStore},
};

/// An idempotency key reserved for a job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct JobKey {
    #[serde(rename = "_id")]
    key: String,
    job_id: String,
    expires_at: i64,
}

impl MongoStore {
    pub(crate) async fn create_job_indexes(&self) -> Result<(), StoreError> {
        for keys in [
            doc! {"state": 1, "run_after": 1},
            doc! {"state": 1, "lease_until": 1},
            doc! {"owner": 1, "created_at": -1},
            doc! {"created_at": -1},
            doc! {"ended_at": 1},
        ] {
            self.jobs
                .create_index(IndexModel::builder().keys(keys).build())
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    /// The job an unexpired key was reserved for, if it is still there.
    async fn keyed_job(&self, key: &str, now: i64) -> Result<Option<JobRecord>, StoreError> {
        let Some(found) = self.job_keys.find_one(doc! {"_id": key}).await.map_err(unavailable)? else {
            return Ok(None);
        };
        if found.expires_at <= now {
            return Ok(None);
        }
        self.job(&found.job_id).await
    }
}

fn owner_value(owner: &Option<String>) -> Bson {
    owner.as_ref().map_or(Bson::Null, |o| Bson::String(o.clone()))
}

#[async_trait]
impl JobStore for MongoStore {
    async fn queue_job(&self, job: &JobRecord, key_expires_at: i64) -> Result<JobRecord, StoreError> {
        if let Some(key) = &job.idempotency_key {
            let key = reservation(job.owner.as_deref(), key);
            if let Some(existing) = self.keyed_job(&key, job.created_at).await? {
                return Ok(existing);
            }
            // An expired or dangling reservation gives way; a live one taken meanwhile wins.
            self.job_keys
                .delete_one(doc! {"_id": &key, "expires_at": {"$lte": job.created_at}})
                .await
                .map_err(unavailable)?;
            let reserved = JobKey {
                key: key.clone(),
                job_id: job.id.clone(),
                expires_at: key_expires_at,
            };
            if let Err(err) = self.job_keys.insert_one(&reserved).await {
                if !is_duplicate(&err) {
                    return Err(unavailable(err));
                }
                match self.keyed_job(&key, job.created_at).await? {
                    Some(existing) => return Ok(existing),
                    None => {
                        // Reserved for a job that is gone (purged): take the key over.
                        self.job_keys
                            .replace_one(doc! {"_id": &key}, &reserved)
                            .await
                            .map_err(unavailable)?;
                    }
                }
            }
        }
        self.jobs.insert_one(job).await.map_err(unavailable)?;
        Ok(job.clone())
    }

    async fn job(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        self.jobs.find_one(doc! {"_id": id}).await.map_err(unavailable)
    }

    async fn jobs(&self, query: &JobQuery) -> Result<Vec<JobRecord>, StoreError> {
        let mut filter = Document::new();
        if let Some(owner) = &query.owner {
            filter.insert("owner", owner);
        }
        if let Some(state) = query.state {
            filter.insert("state", state.as_str());
        }
        if let Some(schedule) = &query.schedule {
            filter.insert("schedule", schedule);
        }
        if let Some((at, id)) = &query.before {
            filter.insert(
                "$or",
                vec![doc! {"created_at": {"$lt": at}}, doc! {"created_at": at, "_id": {"$lt": id}}],
            );
        }
        let cursor = self
            .jobs
            .find(filter)
            .sort(doc! {"created_at": -1, "_id": -1})
            .limit(query.limit as i64)
            .await
            .map_err(unavailable)?;
        cursor.try_collect().await.map_err(unavailable)
    }

    async fn claim_job(&self, claim: &Claim) -> Result<Option<JobRecord>, StoreError> {
        let skip: Vec<Bson> = claim.skip_owners.iter().map(owner_value).collect();
        let filter = doc! {
            "$or": [
                {"state": "queued", "run_after": {"$lte": claim.now}},
                {"state": "running", "lease_until": {"$lt": claim.now}},
            ],
            "owner": {"$nin": skip},
        };
        let update = doc! {
            "$set": {"state": "running", "lease_owner": &claim.replica, "lease_until": claim.lease_until, "started_at": claim.now},
            "$inc": {"attempts": 1_i64},
        };
        self.jobs
            .find_one_and_update(filter, update)
            .sort(doc! {"run_after": 1, "created_at": 1})
            .return_document(ReturnDocument::After)
            .await
            .map_err(unavailable)
    }

    async fn renew_job(&self, id: &str, replica: &str, lease_until: i64) -> Result<bool, StoreError> {
        let done = self
            .jobs
            .update_one(
                doc! {"_id": id, "state": "running", "lease_owner": replica},
                doc! {"$set": {"lease_until": lease_until}},
            )
            .await
            .map_err(unavailable)?;
        Ok(done.matched_count > 0)
    }

    async fn end_job(&self, id: &str, replica: &str, end: &JobEnd) -> Result<bool, StoreError> {
        let mut set = doc! {
            "state": end.state.as_str(),
            "run_after": end.run_after,
            "ended_at": if end.state.is_final() { Bson::Int64(end.now) } else { Bson::Null },
            "error": end.error.as_ref().map_or(Bson::Null, |e| Bson::String(e.clone())),
            "lease_owner": Bson::Null,
            "lease_until": 0_i64,
        };
        if let Some(result) = &end.result {
            set.insert("result", result);
        }
        let done = self
            .jobs
            .update_one(doc! {"_id": id, "state": "running", "lease_owner": replica}, doc! {"$set": set})
            .await
            .map_err(unavailable)?;
        Ok(done.matched_count > 0)
    }

    async fn release_job(&self, id: &str, replica: &str) -> Result<bool, StoreError> {
        let done = self
            .jobs
            .update_one(
                doc! {"_id": id, "state": "running", "lease_owner": replica},
                doc! {"$set": {"state": "queued", "lease_owner": Bson::Null, "lease_until": 0_i64}, "$inc": {"attempts": -1_i64}},
            )
            .await
            .map_err(unavailable)?;
        Ok(done.matched_count > 0)
    }

    async fn cancel_job(&self, id: &str, now: i64) -> Result<Cancel, StoreError> {
        let cancelled = self
            .jobs
            .find_one_and_update(
                doc! {"_id": id, "state": "queued"},
                doc! {"$set": {"state": "cancelled", "ended_at": now}},
            )
            .return_document(ReturnDocument::After)
            .await
            .map_err(unavailable)?;
        Ok(match cancelled {
            Some(job) => Cancel::Cancelled(Box::new(job)),
            None => match self.job(id).await? {
                Some(job) => Cancel::TooLate(Box::new(job)),
                None => Cancel::NotFound,
            },
        })
    }

    async fn requeue_job(&self, id: &str, now: i64) -> Result<Option<JobRecord>, StoreError> {
        self.jobs
            .update_one(
                doc! {"_id": id, "state": {"$in": ["failed", "dead", "cancelled"]}},
                doc! {"$set": {"state": "queued", "attempts": 0_i64, "run_after": now, "ended_at": Bson::Null, "error": Bson::Null}},
            )
            .await
            .map_err(unavailable)?;
        self.job(id).await
    }

    async fn purge_jobs(&self, ended_before: i64, now: i64) -> Result<u64, StoreError> {
        let purged = self
            .jobs
            .delete_many(doc! {"ended_at": {"$ne": Bson::Null, "$lt": ended_before}})
            .await
            .map_err(unavailable)?;
        self.job_keys
            .delete_many(doc! {"expires_at": {"$lte": now}})
            .await
            .map_err(unavailable)?;
        Ok(purged.deleted_count)
    }

    async fn job_counts(&self, now: i64) -> Result<JobCounts, StoreError> {
        // One count per state: plain commands, portable to wire-compatible servers.
        let mut by_state = Vec::new();
        for state in JobState::ALL {
            let count = self
                .jobs
                .count_documents(doc! {"state": state.as_str()})
                .await
                .map_err(unavailable)?;
            by_state.push((state, count));
        }
        let oldest = self
            .jobs
            .find_one(doc! {"state": "queued", "run_after": {"$lte": now}})
            .sort(doc! {"run_after": 1})
            .await
            .map_err(unavailable)?;
        Ok(JobCounts {
            by_state,
            oldest_due_ms: oldest.map_or(0, |job| (now - job.run_after).max(0)),
        })
    }
}
