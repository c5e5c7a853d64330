//! Schedules in the embedded store: one row per schedule (the record as JSON, with the columns
//! polling needs indexed); a tick is fired in one transaction with the job it queues.

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use crate::{
    error::StoreError,
    jobs::JobRecord,
    schedules::{Advance, ScheduleRecord, ScheduleStore},
    sqlite::{jobs, unavailable, SqliteStore},
};

/// The table, created with the store's others.
pub(crate) const SQLITE_TABLES: &str = "
    CREATE TABLE IF NOT EXISTS schedules (
        key TEXT PRIMARY KEY, owner TEXT NOT NULL, paused INTEGER NOT NULL, next_run INTEGER NOT NULL,
        doc TEXT NOT NULL);
    CREATE INDEX IF NOT EXISTS schedules_due ON schedules (paused, next_run);";

fn decode(doc: String) -> Result<ScheduleRecord, StoreError> {
    serde_json::from_str(&doc).map_err(|err| StoreError::Corrupt(err.to_string()))
}

fn encode(schedule: &ScheduleRecord) -> Result<String, StoreError> {
    serde_json::to_string(schedule).map_err(|err| StoreError::Corrupt(err.to_string()))
}

fn get(conn: &Connection, key: &str) -> Result<Option<ScheduleRecord>, StoreError> {
    conn.query_row("SELECT doc FROM schedules WHERE key = ?1", [key], |row| row.get(0))
        .optional()
        .map_err(unavailable)?
        .map(decode)
        .transpose()
}

/// A transaction that takes the write lock at once: a read-then-write one could not upgrade
/// its lock while another process writes.
fn writing(conn: &Connection) -> Result<Transaction<'_>, StoreError> {
    Transaction::new_unchecked(conn, TransactionBehavior::Immediate).map_err(unavailable)
}

/// Writes `schedule` over its row if the row is still due at `due`; `false` otherwise.
fn replace_if_due(conn: &Connection, schedule: &ScheduleRecord, due: Option<i64>) -> Result<bool, StoreError> {
    let changed = conn
        .execute(
            "UPDATE schedules SET paused = ?2, next_run = ?3, doc = ?4 WHERE key = ?1 AND (?5 IS NULL OR next_run = ?5)",
            params![schedule.key, schedule.paused, schedule.next_run, encode(schedule)?, due],
        )
        .map_err(unavailable)?;
    Ok(changed == 1)
}

#[async_trait]
impl ScheduleStore for SqliteStore {
    async fn insert_schedule(&self, schedule: &ScheduleRecord) -> Result<bool, StoreError> {
        let schedule = schedule.clone();
        self.with(move |conn| {
            let inserted = conn
                .execute(
                    "INSERT INTO schedules (key, owner, paused, next_run, doc) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (key) DO NOTHING",
                    params![schedule.key, schedule.owner, schedule.paused, schedule.next_run, encode(&schedule)?],
                )
                .map_err(unavailable)?;
            Ok(inserted == 1)
        })
        .await
    }

    async fn schedule(&self, key: &str) -> Result<Option<ScheduleRecord>, StoreError> {
        let key = key.to_owned();
        self.with(move |conn| get(conn, &key)).await
    }

    async fn schedules(&self, owner: Option<&str>) -> Result<Vec<ScheduleRecord>, StoreError> {
        let owner = owner.map(str::to_owned);
        self.with(move |conn| {
            let mut stmt = conn
                .prepare("SELECT doc FROM schedules WHERE ?1 IS NULL OR owner = ?1 ORDER BY key")
                .map_err(unavailable)?;
            let docs: Vec<String> = stmt
                .query_map([owner], |row| row.get(0))
                .map_err(unavailable)?
                .collect::<Result<_, _>>()
                .map_err(unavailable)?;
            docs.into_iter().map(decode).collect()
        })
        .await
    }

    async fn remove_schedule(&self, key: &str) -> Result<bool, StoreError> {
        let key = key.to_owned();
        self.with(move |conn| {
            let removed = conn.execute("DELETE FROM schedules WHERE key = ?1", [key]).map_err(unavailable)?;
            Ok(removed == 1)
        })
        .await
    }

    async fn pause_schedule(&self, key: &str, paused: bool, next_run: Option<i64>) -> Result<Option<ScheduleRecord>, StoreError> {
        let key = key.to_owned();
        self.with(move |conn| {
            let tx = writing(conn)?;
            let Some(mut schedule) = get(&tx, &key)? else { return Ok(None) };
            schedule.paused = paused;
            if let Some(next) = next_run {
                schedule.next_run = next;
            }
            replace_if_due(&tx, &schedule, None)?;
            tx.commit().map_err(unavailable)?;
            Ok(Some(schedule))
        })
        .await
    }

    async fn upcoming_schedules(&self, limit: usize) -> Result<Vec<ScheduleRecord>, StoreError> {
        self.with(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT doc FROM schedules WHERE paused = 0 ORDER BY next_run LIMIT ?1")
                .map_err(unavailable)?;
            let docs: Vec<String> = stmt
                .query_map([limit as i64], |row| row.get(0))
                .map_err(unavailable)?
                .collect::<Result<_, _>>()
                .map_err(unavailable)?;
            docs.into_iter().map(decode).collect()
        })
        .await
    }

    async fn fire_schedule(&self, key: &str, due: i64, advance: &Advance, job: Option<&JobRecord>) -> Result<bool, StoreError> {
        let (key, advance, job) = (key.to_owned(), advance.clone(), job.cloned());
        self.with(move |conn| {
            let tx = writing(conn)?;
            let queued = match &job {
                Some(job) => {
                    let exists: Option<i64> = tx
                        .query_row("SELECT 1 FROM jobs WHERE id = ?1", [&job.id], |row| row.get(0))
                        .optional()
                        .map_err(unavailable)?;
                    if exists.is_none() {
                        jobs::insert(&tx, job).map_err(unavailable)?;
                    }
                    exists.is_none()
                }
                None => false,
            };
            if let Some(schedule) = get(&tx, &key)?.filter(|s| s.next_run == due) {
                replace_if_due(&tx, &schedule.advanced(&advance), Some(due))?;
            }
            tx.commit().map_err(unavailable)?;
            Ok(queued)
        })
        .await
    }
}
