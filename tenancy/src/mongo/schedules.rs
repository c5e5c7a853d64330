//! Schedules on MongoDB: collection `schedules`, indexed on (paused, next_run) for polling. A
//! tick queues its job by inserting it (a duplicate id means another replica did), then moves
//! the schedule on with an update conditioned on the tick it was due at.

use async_trait::async_trait;
use futures_util::TryStreamExt;
use mongodb::{bson::doc, IndexModel};

use crate::{
    error::StoreError,
    jobs::JobRecord,
    mongo::{is_duplicate, unavailable, MongoStore},
    schedules::{Advance, ScheduleRecord, ScheduleStore},
};

impl MongoStore {
    pub(crate) async fn create_schedule_indexes(&self) -> Result<(), StoreError> {
        for keys in [doc! {"paused": 1, "next_run": 1}, doc! {"owner": 1}] {
            self.schedules
                .create_index(IndexModel::builder().keys(keys).build())
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }
}

#[async_trait]
impl ScheduleStore for MongoStore {
    async fn insert_schedule(&self, schedule: &ScheduleRecord) -> Result<bool, StoreError> {
        match self.schedules.insert_one(schedule).await {
            Ok(_) => Ok(true),
            Err(err) if is_duplicate(&err) => Ok(false),
            Err(err) => Err(unavailable(err)),
        }
    }

    async fn schedule(&self, key: &str) -> Result<Option<ScheduleRecord>, StoreError> {
        self.schedules.find_one(doc! {"_id": key}).await.map_err(unavailable)
    }

    async fn schedules(&self, owner: Option<&str>) -> Result<Vec<ScheduleRecord>, StoreError> {
        let filter = owner.map_or_else(|| doc! {}, |owner| doc! {"owner": owner});
        let cursor = self.schedules.find(filter).sort(doc! {"_id": 1}).await.map_err(unavailable)?;
        cursor.try_collect().await.map_err(unavailable)
    }

    async fn remove_schedule(&self, key: &str) -> Result<bool, StoreError> {
        let removed = self.schedules.delete_one(doc! {"_id": key}).await.map_err(unavailable)?;
        Ok(removed.deleted_count == 1)
    }

    async fn pause_schedule(&self, key: &str, paused: bool, next_run: Option<i64>) -> Result<Option<ScheduleRecord>, StoreError> {
        // The whole record is replaced, not `$set`: a boolean must stay a boolean on every
        // wire-compatible server. Conditioned on the tick it read, so a tick fired meanwhile is
        // not undone; tried again then.
        for _ in 0..5 {
            let Some(mut schedule) = self.schedule(key).await? else {
                return Ok(None);
            };
            let due = schedule.next_run;
            schedule.paused = paused;
            if let Some(next) = next_run {
                schedule.next_run = next;
            }
            let replaced = self
                .schedules
                .replace_one(doc! {"_id": key, "next_run": due}, &schedule)
                .await
                .map_err(unavailable)?;
            if replaced.matched_count == 1 {
                return Ok(Some(schedule));
            }
        }
        Err(StoreError::Unavailable(format!(
            "the schedule {key} kept changing while it was paused or resumed"
        )))
    }

    async fn upcoming_schedules(&self, limit: usize) -> Result<Vec<ScheduleRecord>, StoreError> {
        let cursor = self
            .schedules
            .find(doc! {"paused": false})
            .sort(doc! {"next_run": 1})
            .limit(limit as i64)
            .await
            .map_err(unavailable)?;
        cursor.try_collect().await.map_err(unavailable)
    }

    async fn fire_schedule(&self, key: &str, due: i64, advance: &Advance, job: Option<&JobRecord>) -> Result<bool, StoreError> {
        let queued = match job {
            Some(job) => match self.jobs.insert_one(job).await {
                Ok(_) => true,
                Err(err) if is_duplicate(&err) => false,
                Err(err) => return Err(unavailable(err)),
            },
            None => false,
        };
        let mut set = doc! {"next_run": advance.next_run, "status": &advance.status};
        if let Some(last_run) = advance.last_run {
            set.insert("last_run", last_run);
        }
        if let Some(last_job) = &advance.last_job {
            set.insert("last_job", last_job);
        }
        self.schedules
            .update_one(doc! {"_id": key, "next_run": due}, doc! {"$set": set})
            .await
            .map_err(unavailable)?;
        Ok(queued)
    }
}
