//! Operations on principals, shared by the CLI and the admin REST API; every change is audited.

use std::sync::Arc;

use serde::Serialize;
use serde_json::json;

use super::{
    secrets::SecretKey,
    store::{StoreObserver, Timed},
    totp, AuditEntry, PrincipalRecord, Store, StoreError,
};

/// What enrolling an authenticator app needs; shown once, when a tenant is added or rotated.
#[derive(Debug, Clone, Serialize)]
pub struct Enrolment {
    pub uuid: String,
    pub name: String,
    pub secret: String,
    pub otpauth_uri: String,
}

/// A principal as listed: never its secret.
#[derive(Debug, Clone, Serialize)]
pub struct PrincipalView {
    pub uuid: String,
    pub kind: String,
    pub name: String,
    pub status: String,
    pub created_at: String,
    pub updated_at: String,
    /// Overrides of the sandbox limits (`{}`: the defaults).
    pub limits: serde_json::Value,
}

impl From<&PrincipalRecord> for PrincipalView {
    fn from(r: &PrincipalRecord) -> Self {
        let at = |secs: i64| crate::clock::timestamp(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64));
        PrincipalView {
            uuid: r.uuid.clone(),
            kind: r.kind.clone(),
            name: r.name.clone(),
            status: r.status.clone(),
            created_at: at(r.created_at),
            updated_at: at(r.updated_at),
            limits: if r.limits.is_object() { r.limits.clone() } else { json!({}) },
        }
    }
}

/// Why an operation on a tenant failed.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error("no tenant has UUID {0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The store with the key that protects its secrets.
pub struct Tenancy {
    pub store: Arc<dyn Store>,
    pub key: SecretKey,
    /// Checks a tenant's sandbox limits before they are stored (the sandbox knows which fit).
    check_limits: LimitsCheck,
}

/// A check of a tenant's limits object: `Err` says what is wrong with it.
pub type LimitsCheck = fn(&serde_json::Value) -> Result<(), LimitsRefused>;

/// What a [`LimitsCheck`] found wrong, in words (the tenant's admin reads it).
pub type LimitsRefused = Box<dyn std::error::Error + Send + Sync>;

/// Which store holds the identities.
#[derive(Debug, Clone)]
pub enum StorePlace {
    /// The embedded SQLite file.
    Embedded(std::path::PathBuf),
    /// A MongoDB database shared by every replica.
    Mongo { uri: String, database: String },
}

impl Tenancy {
    /// Opens the store at `place`, with `key` for its secrets.
    pub async fn open(
        place: &StorePlace,
        key: SecretKey,
        observer: Arc<dyn StoreObserver>,
        check_limits: LimitsCheck,
    ) -> Result<Tenancy, StoreError> {
        let store: Arc<dyn Store> = match place {
            StorePlace::Mongo { uri, database } => Arc::new(Timed(super::mongo::MongoStore::connect(uri, database).await?, observer)),
            StorePlace::Embedded(path) => Arc::new(Timed(super::sqlite::SqliteStore::open_lazily(path), observer)),
        };
        Ok(Tenancy { store, key, check_limits })
    }

    /// Records the admin from the configuration, touching no other record. A changed secret
    /// ends the admin's earlier tokens.
    pub async fn record_admin(&self, uuid: &str, secret: &str) -> Result<(), StoreError> {
        let now = totp::now() as i64;
        let existing = self.store.get(uuid).await?;
        let same_secret = existing
            .as_ref()
            .is_some_and(|r| self.key.decrypt(uuid, &r.secret).ok().as_deref() == Some(secret));
        let record = match existing {
            Some(mut record) if same_secret && record.kind == "admin" && record.is_active() => {
                record.name = "admin".to_owned();
                record
            }
            Some(mut record) => {
                record.kind = "admin".to_owned();
                record.status = "active".to_owned();
                record.secret = self.key.encrypt(uuid, secret);
                record.generation += 1;
                record.updated_at = now;
                record
            }
            None => PrincipalRecord {
                uuid: uuid.to_owned(),
                kind: "admin".to_owned(),
                name: "admin".to_owned(),
                status: "active".to_owned(),
                secret: self.key.encrypt(uuid, secret),
                generation: 1,
                created_at: now,
                updated_at: now,
                limits: json!({}),
            },
        };
        self.store.put(&record).await
    }

    fn enrolment(&self, record: &PrincipalRecord, secret: String) -> Result<Enrolment, TenantError> {
        let otpauth_uri = totp::otpauth_uri(&secret, &format!("{} ({})", record.name, &record.uuid[..8]))
            .map_err(|err| TenantError::Invalid(err.to_string()))?;
        Ok(Enrolment {
            uuid: record.uuid.clone(),
            name: record.name.clone(),
            secret,
            otpauth_uri,
        })
    }

    async fn audit(&self, actor: &str, action: &str, target: &str, detail: String) {
        let entry = AuditEntry {
            at: totp::now() as i64,
            actor: actor.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            detail,
        };
        if let Err(err) = self.store.audit(&entry).await {
            tracing::warn!("audit entry not written ({err}): {actor} {action} {target}");
        }
    }

    /// Adds an active tenant with a fresh UUID and secret.
    pub async fn add(&self, name: &str, actor: &str) -> Result<Enrolment, TenantError> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
            return Err(TenantError::Invalid("a tenant name is 1 to 100 printable characters".to_owned()));
        }
        let uuid = uuid::Uuid::new_v4().hyphenated().to_string();
        let secret = totp::new_secret();
        let now = totp::now() as i64;
        let record = PrincipalRecord {
            uuid: uuid.clone(),
            kind: "tenant".to_owned(),
            name: name.to_owned(),
            status: "active".to_owned(),
            secret: self.key.encrypt(&uuid, &secret),
            generation: 1,
            created_at: now,
            updated_at: now,
            limits: json!({}),
        };
        self.store.insert(&record).await?;
        self.audit(actor, "tenant.add", &uuid, format!("name={name}")).await;
        self.enrolment(&record, secret)
    }

    pub async fn list(&self) -> Result<Vec<PrincipalView>, TenantError> {
        Ok(self.store.list("tenant").await?.iter().map(PrincipalView::from).collect())
    }

    async fn tenant(&self, uuid: &str) -> Result<PrincipalRecord, TenantError> {
        match self.store.get(uuid).await? {
            Some(record) if record.kind == "tenant" => Ok(record),
            _ => Err(TenantError::NotFound(uuid.to_owned())),
        }
    }

    pub async fn show(&self, uuid: &str) -> Result<PrincipalView, TenantError> {
        Ok(PrincipalView::from(&self.tenant(uuid).await?))
    }

    /// Enables or disables a tenant; disabling ends its tokens at once.
    pub async fn set_active(&self, uuid: &str, active: bool, actor: &str) -> Result<PrincipalView, TenantError> {
        let mut record = self.tenant(uuid).await?;
        record.status = if active { "active" } else { "disabled" }.to_owned();
        record.generation += 1;
        record.updated_at = totp::now() as i64;
        if !self.store.replace(&record).await? {
            return Err(TenantError::NotFound(uuid.to_owned()));
        }
        self.audit(actor, if active { "tenant.enable" } else { "tenant.disable" }, uuid, String::new())
            .await;
        Ok(PrincipalView::from(&record))
    }

    /// Replaces a tenant's sandbox limits: a JSON object with any of `call_timeout_ms`,
    /// `memory_mb`, `max_concurrency`, `max_response_bytes` (`{}`: the defaults).
    pub async fn set_limits(&self, uuid: &str, limits: serde_json::Value, actor: &str) -> Result<PrincipalView, TenantError> {
        (self.check_limits)(&limits).map_err(|why| TenantError::Invalid(why.to_string()))?;
        let mut record = self.tenant(uuid).await?;
        record.limits = limits;
        record.updated_at = totp::now() as i64;
        if !self.store.replace(&record).await? {
            return Err(TenantError::NotFound(uuid.to_owned()));
        }
        self.audit(actor, "tenant.limits", uuid, record.limits.to_string()).await;
        Ok(PrincipalView::from(&record))
    }

    pub async fn remove(&self, uuid: &str, actor: &str) -> Result<(), TenantError> {
        self.tenant(uuid).await?;
        if !self.store.remove(uuid).await? {
            return Err(TenantError::NotFound(uuid.to_owned()));
        }
        self.audit(actor, "tenant.remove", uuid, String::new()).await;
        Ok(())
    }

    /// A new secret for a tenant; its earlier codes and tokens stop working.
    pub async fn rotate(&self, uuid: &str, actor: &str) -> Result<Enrolment, TenantError> {
        let mut record = self.tenant(uuid).await?;
        let secret = totp::new_secret();
        record.secret = self.key.encrypt(uuid, &secret);
        record.generation += 1;
        record.updated_at = totp::now() as i64;
        if !self.store.replace(&record).await? {
            return Err(TenantError::NotFound(uuid.to_owned()));
        }
        self.audit(actor, "tenant.rotate-totp", uuid, String::new()).await;
        self.enrolment(&record, secret)
    }

    /// The current code of any principal (`plughost totp`).
    pub async fn current_code(&self, uuid: &str) -> Result<String, TenantError> {
        let record = self.store.get(uuid).await?.ok_or_else(|| TenantError::NotFound(uuid.to_owned()))?;
        let secret = self
            .key
            .decrypt(uuid, &record.secret)
            .map_err(|e| TenantError::Invalid(e.to_string()))?;
        totp::code_at(&secret, totp::now()).map_err(|err| TenantError::Invalid(err.to_string()))
    }
}
