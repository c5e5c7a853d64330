//! Jobs in the embedded store: one row per job, claimed with one `UPDATE … RETURNING` (SQLite
//! serialises writers, so two processes on one file never claim the same job).

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::jobs::{reservation, Cancel, Claim, JobCounts, JobEnd, JobQuery, JobRecord, JobState, JobStore};
use crate::{
    error::StoreError,
    sqlite::{unavailable, SqliteStore},
};

/// The tables, created with the store's others.
pub(crate) const SQLITE_TABLES: &str = "
    CREATE TABLE IF NOT EXISTS jobs (
        id TEXT PRIMARY KEY, owner TEXT, owner_kind TEXT NOT NULL, module TEXT NOT NULL,
        function TEXT NOT NULL, method TEXT NOT NULL, state TEXT NOT NULL,
        attempts INTEGER NOT NULL, max_attempts INTEGER NOT NULL, created_at INTEGER NOT NULL,
        run_after INTEGER NOT NULL, started_at INTEGER, ended_at INTEGER, lease_owner TEXT,
        lease_until INTEGER NOT NULL, request TEXT NOT NULL, result TEXT, error TEXT,
        callback_url TEXT, schedule TEXT, idempotency_key TEXT, scheduled_for INTEGER);
    CREATE INDEX IF NOT EXISTS jobs_due ON jobs (state, run_after);
    CREATE INDEX IF NOT EXISTS jobs_lease ON jobs (state, lease_until);
    CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, created_at);
    CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at);
    CREATE INDEX IF NOT EXISTS jobs_ended ON jobs (ended_at);
    CREATE TABLE IF NOT EXISTS job_keys (key TEXT PRIMARY KEY, job_id TEXT NOT NULL, expires_at INTEGER NOT NULL);";

/// Adds the columns a store made by an earlier version lacks.
pub(crate) fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let has = conn
        .prepare("SELECT 1 FROM pragma_table_info('jobs') WHERE name = 'scheduled_for'")?
        .exists([])?;
    if !has {
        conn.execute_batch("ALTER TABLE jobs ADD COLUMN scheduled_for INTEGER")?;
    }
    Ok(())
}

const COLUMNS: &str = "id, owner, owner_kind, module, function, method, state, attempts, max_attempts, created_at, run_after, \
     started_at, ended_at, lease_owner, lease_until, request, result, error, callback_url, schedule, idempotency_key, scheduled_for";

fn read(row: &Row<'_>) -> rusqlite::Result<JobRecord> {
    let state: String = row.get(6)?;
    Ok(JobRecord {
        id: row.get(0)?,
        owner: row.get(1)?,
        owner_kind: row.get(2)?,
        module: row.get(3)?,
        function: row.get(4)?,
        method: row.get(5)?,
        // An unknown state reads as failed rather than hiding the row.
        state: JobState::parse(&state).unwrap_or(JobState::Failed),
        attempts: row.get(7)?,
        max_attempts: row.get(8)?,
        created_at: row.get(9)?,
        run_after: row.get(10)?,
        started_at: row.get(11)?,
        ended_at: row.get(12)?,
        lease_owner: row.get(13)?,
        lease_until: row.get(14)?,
        request: row.get(15)?,
        result: row.get(16)?,
        error: row.get(17)?,
        callback_url: row.get(18)?,
        schedule: row.get(19)?,
        idempotency_key: row.get(20)?,
        scheduled_for: row.get(21)?,
    })
}

fn get(conn: &Connection, id: &str) -> Result<Option<JobRecord>, StoreError> {
    conn.query_row(&format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"), [id], read)
        .optional()
        .map_err(unavailable)
}

pub(crate) fn insert(conn: &Connection, job: &JobRecord) -> rusqlite::Result<usize> {
    conn.execute(
        &format!("INSERT INTO jobs ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22)"),
        params![
            job.id,
            job.owner,
            job.owner_kind,
            job.module,
            job.function,
            job.method,
            job.state.as_str(),
            job.attempts,
            job.max_attempts,
            job.created_at,
            job.run_after,
            job.started_at,
            job.ended_at,
            job.lease_owner,
            job.lease_until,
            job.request,
            job.result,
            job.error,
            job.callback_url,
            job.schedule,
            job.idempotency_key,
            job.scheduled_for,
        ],
    )
}

#[async_trait]
impl JobStore for SqliteStore {
    async fn queue_job(&self, job: &JobRecord, key_expires_at: i64) -> Result<JobRecord, StoreError> {
        let job = job.clone();
        self.with(move |conn| {
            let tx = conn.unchecked_transaction().map_err(unavailable)?;
            if let Some(key) = &job.idempotency_key {
                let key = reservation(job.owner.as_deref(), key);
                tx.execute("DELETE FROM job_keys WHERE key = ?1 AND expires_at <= ?2", params![key, job.created_at])
                    .map_err(unavailable)?;
                let existing: Option<String> = tx
                    .query_row("SELECT job_id FROM job_keys WHERE key = ?1", [&key], |row| row.get(0))
                    .optional()
                    .map_err(unavailable)?;
                if let Some(found) = existing.and_then(|id| get(&tx, &id).transpose()) {
                    return found;
                }
                tx.execute(
                    "INSERT INTO job_keys (key, job_id, expires_at) VALUES (?1, ?2, ?3) ON CONFLICT (key) DO UPDATE SET job_id = ?2, expires_at = ?3",
                    params![key, job.id, key_expires_at],
                )
                .map_err(unavailable)?;
            }
            insert(&tx, &job).map_err(unavailable)?;
            tx.commit().map_err(unavailable)?;
            Ok(job)
        })
        .await
    }

    async fn job(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        let id = id.to_owned();
        self.with(move |conn| get(conn, &id)).await
    }

    async fn jobs(&self, query: &JobQuery) -> Result<Vec<JobRecord>, StoreError> {
        let query = query.clone();
        self.with(move |conn| {
            let (before_at, before_id) = query.before.clone().unwrap_or((i64::MAX, String::new()));
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT {COLUMNS} FROM jobs
                     WHERE (?1 IS NULL OR owner = ?1) AND (?2 IS NULL OR state = ?2) AND (?3 IS NULL OR schedule = ?3)
                       AND (created_at < ?4 OR (created_at = ?4 AND ?5 != '' AND id < ?5))
                     ORDER BY created_at DESC, id DESC LIMIT ?6"
                ))
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(
                    params![
                        query.owner,
                        query.state.map(JobState::as_str),
                        query.schedule,
                        before_at,
                        before_id,
                        query.limit as i64
                    ],
                    read,
                )
                .map_err(unavailable)?;
            rows.map(|row| row.map_err(unavailable)).collect()
        })
        .await
    }

    async fn claim_job(&self, claim: &Claim) -> Result<Option<JobRecord>, StoreError> {
        let claim = claim.clone();
        let skip = serde_json::to_string(&claim.skip_owners.iter().map(|o| o.as_deref().unwrap_or("")).collect::<Vec<_>>())
            .map_err(|err| StoreError::Corrupt(err.to_string()))?;
        // Cached: an idle replica runs this once per JOBS_POLL_MS; parsing it each time was
        // most of the cost.
        self.with(move |conn| {
            conn.prepare_cached(&format!(
                "UPDATE jobs SET state = 'running', lease_owner = ?1, lease_until = ?2, attempts = attempts + 1, started_at = ?3
                     WHERE id = (
                        SELECT id FROM jobs
                        WHERE ((state = 'queued' AND run_after <= ?3) OR (state = 'running' AND lease_until < ?3))
                          AND coalesce(owner, '') NOT IN (SELECT value FROM json_each(?4))
                        ORDER BY run_after, created_at LIMIT 1)
                     RETURNING {COLUMNS}"
            ))
            .and_then(|mut statement| statement.query_row(params![claim.replica, claim.lease_until, claim.now, skip], read))
            .optional()
            .map_err(unavailable)
        })
        .await
    }

    async fn renew_job(&self, id: &str, replica: &str, lease_until: i64) -> Result<bool, StoreError> {
        let (id, replica) = (id.to_owned(), replica.to_owned());
        self.with(move |conn| {
            conn.execute(
                "UPDATE jobs SET lease_until = ?3 WHERE id = ?1 AND state = 'running' AND lease_owner = ?2",
                params![id, replica, lease_until],
            )
            .map(|n| n > 0)
            .map_err(unavailable)
        })
        .await
    }

    async fn end_job(&self, id: &str, replica: &str, end: &JobEnd) -> Result<bool, StoreError> {
        let (id, replica, end) = (id.to_owned(), replica.to_owned(), end.clone());
        self.with(move |conn| {
            let ended_at = end.state.is_final().then_some(end.now);
            conn.execute(
                "UPDATE jobs SET state = ?3, run_after = ?4, ended_at = ?5, result = coalesce(?6, result), error = ?7,
                        lease_owner = NULL, lease_until = 0
                 WHERE id = ?1 AND state = 'running' AND lease_owner = ?2",
                params![id, replica, end.state.as_str(), end.run_after, ended_at, end.result, end.error],
            )
            .map(|n| n > 0)
            .map_err(unavailable)
        })
        .await
    }

    async fn release_job(&self, id: &str, replica: &str) -> Result<bool, StoreError> {
        let (id, replica) = (id.to_owned(), replica.to_owned());
        self.with(move |conn| {
            conn.execute(
                "UPDATE jobs SET state = 'queued', attempts = max(attempts - 1, 0), lease_owner = NULL, lease_until = 0
                 WHERE id = ?1 AND state = 'running' AND lease_owner = ?2",
                params![id, replica],
            )
            .map(|n| n > 0)
            .map_err(unavailable)
        })
        .await
    }

    async fn cancel_job(&self, id: &str, now: i64) -> Result<Cancel, StoreError> {
        let id = id.to_owned();
        self.with(move |conn| {
            let changed = conn
                .execute(
                    "UPDATE jobs SET state = 'cancelled', ended_at = ?2 WHERE id = ?1 AND state = 'queued'",
                    params![id, now],
                )
                .map_err(unavailable)?;
            Ok(match get(conn, &id)? {
                Some(job) if changed > 0 => Cancel::Cancelled(Box::new(job)),
                Some(job) => Cancel::TooLate(Box::new(job)),
                None => Cancel::NotFound,
            })
        })
        .await
    }

    async fn requeue_job(&self, id: &str, now: i64) -> Result<Option<JobRecord>, StoreError> {
        let id = id.to_owned();
        self.with(move |conn| {
            conn.execute(
                "UPDATE jobs SET state = 'queued', attempts = 0, run_after = ?2, ended_at = NULL, error = NULL
                 WHERE id = ?1 AND state IN ('failed', 'dead', 'cancelled')",
                params![id, now],
            )
            .map_err(unavailable)?;
            get(conn, &id)
        })
        .await
    }

    async fn purge_jobs(&self, ended_before: i64, now: i64) -> Result<u64, StoreError> {
        self.with(move |conn| {
            let purged = conn
                .execute("DELETE FROM jobs WHERE ended_at IS NOT NULL AND ended_at < ?1", [ended_before])
                .map_err(unavailable)?;
            conn.execute("DELETE FROM job_keys WHERE expires_at <= ?1", [now])
                .map_err(unavailable)?;
            Ok(purged as u64)
        })
        .await
    }

    async fn job_counts(&self, now: i64) -> Result<JobCounts, StoreError> {
        self.with(move |conn| {
            let mut stmt = conn
                .prepare("SELECT state, count(*) FROM jobs GROUP BY state")
                .map_err(unavailable)?;
            let rows = stmt
                .query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?)))
                .map_err(unavailable)?;
            let mut by_state = Vec::new();
            for row in rows {
                let (state, count) = row.map_err(unavailable)?;
                if let Some(state) = JobState::parse(&state) {
                    by_state.push((state, count.max(0) as u64));
                }
            }
            let oldest: Option<i64> = conn
                .query_row(
                    "SELECT min(run_after) FROM jobs WHERE state = 'queued' AND run_after <= ?1",
                    [now],
                    |row| row.get(0),
                )
                .map_err(unavailable)?;
            Ok(JobCounts {
                by_state,
                oldest_due_ms: oldest.map_or(0, |due| (now - due).max(0)),
            })
        })
        .await
    }
}
