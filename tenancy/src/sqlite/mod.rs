//! The embedded store: one SQLite file under `DATA_DIR` (WAL, `synchronous=FULL`, so an
//! acknowledged write survives a crash). Several processes (the server, the CLI) may use it at once.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

mod jobs;
mod schedules;

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

use crate::store::{AuditEntry, PrincipalRecord, PublishedPlugin, Store, StoreError};

/// The store's file and its connection, opened on first use and again after a failure: a file
/// that cannot be opened (corrupt, unreadable) leaves the server running degraded, its
/// authenticated calls answered 503 and its public ones served, until the file is repaired or
/// replaced.
pub struct SqliteStore {
    path: PathBuf,
    conn: Arc<Mutex<Option<Connection>>>,
}

pub(crate) fn unavailable(err: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(err.to_string())
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path`, or says why it cannot.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        Ok(SqliteStore {
            path: path.to_owned(),
            conn: Arc::new(Mutex::new(Some(connect(path)?))),
        })
    }

    /// The store at `path` (created if needed). A file that cannot be opened now is reported
    /// and tried again at every use, so that the server starts degraded instead of not at all.
    pub fn open_lazily(path: &Path) -> SqliteStore {
        let conn = match connect(path) {
            Ok(conn) => Some(conn),
            Err(err) => {
                tracing::error!(
                    path = %path.display(),
                    "the embedded store cannot be opened ({err}); serving public functions only until it can (repair or move the file away)"
                );
                None
            }
        };
        SqliteStore {
            path: path.to_owned(),
            conn: Arc::new(Mutex::new(conn)),
        }
    }

    pub(crate) async fn with<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (conn, path) = (self.conn.clone(), self.path.clone());
        tokio::task::spawn_blocking(move || {
            let mut slot = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if slot.is_none() {
                *slot = Some(connect(&path)?);
            }
            let Some(conn) = slot.as_ref() else {
                return Err(StoreError::Unavailable("no connection".to_owned()));
            };
            let result = work(conn);
            // A failure of the file itself (not of this query): open it afresh next time.
            if result.is_err() && conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(())).is_err() {
                *slot = None;
            }
            result
        })
        .await
        .map_err(unavailable)?
    }
}

/// Opens (creating if needed) the database file and its tables.
fn connect(path: &Path) -> Result<Connection, StoreError> {
    {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(unavailable)?;
        }
        let conn = Connection::open(path).map_err(unavailable)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(unavailable)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS principals (uuid TEXT PRIMARY KEY, kind TEXT NOT NULL, doc TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS used_codes (uuid TEXT NOT NULL, step INTEGER NOT NULL, expires_at INTEGER NOT NULL, PRIMARY KEY (uuid, step));
             CREATE INDEX IF NOT EXISTS used_codes_expiry ON used_codes (expires_at);
             CREATE TABLE IF NOT EXISTS audit (id INTEGER PRIMARY KEY AUTOINCREMENT, doc TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS plugin_blobs (sha256 TEXT PRIMARY KEY, bytes BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS published (key TEXT PRIMARY KEY, sha256 TEXT NOT NULL, doc TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS published_version (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL);",
        )
        .map_err(unavailable)?;
        conn.execute_batch(jobs::SQLITE_TABLES).map_err(unavailable)?;
        jobs::migrate(&conn).map_err(unavailable)?;
        conn.execute_batch(schedules::SQLITE_TABLES).map_err(unavailable)?;
        Ok(conn)
    }
}

fn decode(doc: String) -> Result<PrincipalRecord, StoreError> {
    serde_json::from_str(&doc).map_err(|err| StoreError::Corrupt(err.to_string()))
}

fn encode<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|err| StoreError::Corrupt(err.to_string()))
}

#[async_trait]
impl Store for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.with(|conn| conn.query_row("SELECT 1", [], |_| Ok(())).map_err(unavailable))
            .await
    }

    async fn put(&self, record: &PrincipalRecord) -> Result<(), StoreError> {
        let (uuid, kind, doc) = (record.uuid.clone(), record.kind.clone(), encode(record)?);
        self.with(move |conn| {
            conn.execute(
                "INSERT INTO principals (uuid, kind, doc) VALUES (?1, ?2, ?3) ON CONFLICT (uuid) DO UPDATE SET kind = ?2, doc = ?3",
                params![uuid, kind, doc],
            )
            .map(|_| ())
            .map_err(unavailable)
        })
        .await
    }

    async fn insert(&self, record: &PrincipalRecord) -> Result<(), StoreError> {
        let (uuid, kind, doc) = (record.uuid.clone(), record.kind.clone(), encode(record)?);
        self.with(move |conn| {
            let inserted = conn
                .execute(
                    "INSERT INTO principals (uuid, kind, doc) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                    params![uuid, kind, doc],
                )
                .map_err(unavailable)?;
            if inserted == 0 {
                Err(StoreError::Exists(uuid))
            } else {
                Ok(())
            }
        })
        .await
    }

    async fn get(&self, uuid: &str) -> Result<Option<PrincipalRecord>, StoreError> {
        let uuid = uuid.to_owned();
        self.with(move |conn| {
            let doc: Option<String> = conn
                .query_row("SELECT doc FROM principals WHERE uuid = ?1", [uuid], |row| row.get(0))
                .optional()
                .map_err(unavailable)?;
            doc.map(decode).transpose()
        })
        .await
    }

    async fn list(&self, kind: &str) -> Result<Vec<PrincipalRecord>, StoreError> {
        let kind = kind.to_owned();
        self.with(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT doc FROM principals WHERE kind = ?1 ORDER BY rowid")
                .map_err(unavailable)?;
            let docs = stmt.query_map([kind], |row| row.get::<_, String>(0)).map_err(unavailable)?;
            let mut records = Vec::new();
            for doc in docs {
                records.push(decode(doc.map_err(unavailable)?)?);
            }
            records.sort_by_key(|r| r.created_at);
            Ok(records)
        })
        .await
    }

    async fn replace(&self, record: &PrincipalRecord) -> Result<bool, StoreError> {
        let (uuid, doc) = (record.uuid.clone(), encode(record)?);
        self.with(move |conn| {
            conn.execute("UPDATE principals SET doc = ?2 WHERE uuid = ?1", params![uuid, doc])
                .map(|n| n > 0)
                .map_err(unavailable)
        })
        .await
    }

    async fn remove(&self, uuid: &str) -> Result<bool, StoreError> {
        let uuid = uuid.to_owned();
        self.with(move |conn| {
            conn.execute("DELETE FROM principals WHERE uuid = ?1", [uuid])
                .map(|n| n > 0)
                .map_err(unavailable)
        })
        .await
    }

    async fn use_code(&self, uuid: &str, step: u64, expires_at: i64) -> Result<bool, StoreError> {
        let uuid = uuid.to_owned();
        let step = i64::try_from(step).map_err(|_| StoreError::Corrupt("time step out of range".to_owned()))?;
        self.with(move |conn| {
            let now = super::totp::now() as i64;
            conn.execute("DELETE FROM used_codes WHERE expires_at < ?1", [now])
                .map_err(unavailable)?;
            let inserted = conn
                .execute(
                    "INSERT INTO used_codes (uuid, step, expires_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                    params![uuid, step, expires_at],
                )
                .map_err(unavailable)?;
            Ok(inserted == 1)
        })
        .await
    }

    async fn audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let doc = encode(entry)?;
        self.with(move |conn| {
            conn.execute("INSERT INTO audit (doc) VALUES (?1)", [doc])
                .map(|_| ())
                .map_err(unavailable)
        })
        .await
    }

    async fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.with(move |conn| {
            let mut stmt = conn
                .prepare("SELECT doc FROM audit ORDER BY id DESC LIMIT ?1")
                .map_err(unavailable)?;
            let docs = stmt.query_map([limit as i64], |row| row.get::<_, String>(0)).map_err(unavailable)?;
            docs.map(|doc| serde_json::from_str(&doc.map_err(unavailable)?).map_err(|e| StoreError::Corrupt(e.to_string())))
                .collect()
        })
        .await
    }

    async fn publish(&self, plugin: &PublishedPlugin, bytes: &[u8]) -> Result<(), StoreError> {
        let doc = encode(plugin)?;
        let (key, sha, bytes) = (plugin.key.clone(), plugin.sha256.clone(), bytes.to_vec());
        self.with(move |conn| {
            conn.execute(
                "INSERT OR IGNORE INTO plugin_blobs (sha256, bytes) VALUES (?1, ?2)",
                params![sha, bytes],
            )
            .map_err(unavailable)?;
            conn.execute(
                "INSERT INTO published (key, sha256, doc) VALUES (?1, ?2, ?3)
                 ON CONFLICT(key) DO UPDATE SET sha256 = excluded.sha256, doc = excluded.doc",
                params![key, sha, doc],
            )
            .map_err(unavailable)?;
            conn.execute("DELETE FROM plugin_blobs WHERE sha256 NOT IN (SELECT sha256 FROM published)", [])
                .map_err(unavailable)?;
            bump_version(conn)
        })
        .await
    }

    async fn published(&self) -> Result<Vec<PublishedPlugin>, StoreError> {
        self.with(|conn| {
            let mut statement = conn.prepare("SELECT doc FROM published ORDER BY key").map_err(unavailable)?;
            let docs = statement
                .query_map([], |row| row.get::<_, String>(0))
                .map_err(unavailable)?
                .collect::<Result<Vec<String>, _>>()
                .map_err(unavailable)?;
            docs.into_iter()
                .map(|doc| serde_json::from_str(&doc).map_err(|err| StoreError::Corrupt(err.to_string())))
                .collect()
        })
        .await
    }

    async fn plugin_bytes(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let sha = sha256.to_owned();
        self.with(move |conn| {
            conn.query_row("SELECT bytes FROM plugin_blobs WHERE sha256 = ?1", params![sha], |row| row.get(0))
                .optional()
                .map_err(unavailable)
        })
        .await
    }

    async fn unpublish(&self, key: &str) -> Result<bool, StoreError> {
        let key = key.to_owned();
        self.with(move |conn| {
            let removed = conn
                .execute("DELETE FROM published WHERE key = ?1", params![key])
                .map_err(unavailable)?;
            conn.execute("DELETE FROM plugin_blobs WHERE sha256 NOT IN (SELECT sha256 FROM published)", [])
                .map_err(unavailable)?;
            if removed > 0 {
                bump_version(conn)?;
            }
            Ok(removed > 0)
        })
        .await
    }

    async fn published_version(&self) -> Result<u64, StoreError> {
        self.with(|conn| {
            conn.prepare_cached("SELECT version FROM published_version WHERE id = 1")
                .and_then(|mut statement| statement.query_row([], |row| row.get::<_, i64>(0)))
                .optional()
                .map(|version| version.unwrap_or(0).max(0) as u64)
                .map_err(unavailable)
        })
        .await
    }
}

/// Counts one more change to the published plugins.
fn bump_version(conn: &rusqlite::Connection) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO published_version (id, version) VALUES (1, 1) ON CONFLICT(id) DO UPDATE SET version = version + 1",
        [],
    )
    .map_err(unavailable)?;
    Ok(())
}
