//! Authentication: a bearer token (HMAC-signed, stateless) or a one-shot UUID + TOTP code, checked
//! against the store through a cache that is at most `CACHE_TTL` old, so that a tenant disabled on
//! one process is refused on every process within about a second.

use super::throttle::{Source, Throttle};
use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use base64ct::{Base64UrlUnpadded, Encoding};

use super::{tenants::Tenancy, totp, PrincipalRecord, StoreError};

/// How stale a cached principal may be.
const CACHE_TTL: Duration = Duration::from_secs(1);

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Admin { uuid: String },
    Tenant { uuid: String },
}

impl Caller {
    pub fn kind(&self) -> &'static str {
        match self {
            Caller::Admin { .. } => "admin",
            Caller::Tenant { .. } => "tenant",
        }
    }

    pub fn uuid(&self) -> &str {
        match self {
            Caller::Admin { uuid } | Caller::Tenant { uuid } => uuid,
        }
    }

    pub fn is_admin(&self) -> bool {
        matches!(self, Caller::Admin { .. })
    }
}

/// What a request presented to prove who it is, as the host parsed it from its headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credentials<'a> {
    /// Nothing: an anonymous call.
    None,
    /// `Authorization: Bearer <token>`.
    Bearer(&'a str),
    /// A UUID and one of its single-use TOTP codes.
    Code { uuid: &'a str, code: &'a str },
}

/// Why a caller was not authenticated; each maps to one HTTP error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    Missing(String),
    #[error("{0}")]
    TokenInvalid(String),
    #[error("the token expired; get a new one at POST /rest/auth/token")]
    TokenExpired,
    #[error("{0}")]
    TotpInvalid(String),
    #[error("this code was already used; wait for the next one (codes are single-use)")]
    TotpReplayed,
    #[error("{0}")]
    Forbidden(String),
    #[error("too many failed attempts for this UUID; retry in {0} s")]
    TooManyAttempts(u64),
    #[error("the identity store is unavailable; authentication is refused until it is back")]
    StoreUnavailable(String),
}

impl AuthError {
    /// A short, bounded name for the metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing(_) => "missing",
            AuthError::TokenInvalid(_) => "token_invalid",
            AuthError::TokenExpired => "token_expired",
            AuthError::TotpInvalid(_) => "totp_invalid",
            AuthError::TotpReplayed => "totp_replayed",
            AuthError::Forbidden(_) => "forbidden",
            AuthError::TooManyAttempts(_) => "too_many_attempts",
            AuthError::StoreUnavailable(_) => "store_unavailable",
        }
    }
}

impl From<StoreError> for AuthError {
    fn from(err: StoreError) -> Self {
        AuthError::StoreUnavailable(err.to_string())
    }
}

struct Cached {
    record: Option<Arc<PrincipalRecord>>,
    fetched: Instant,
}

/// Checks credentials and issues tokens.
pub struct Authenticator {
    tenancy: Arc<Tenancy>,
    admin_uuid: String,
    token_ttl: Duration,
    cache: RwLock<HashMap<String, Cached>>,
    throttle: Throttle,
    /// Tokens whose signature this server has checked, with what they say: a token seen again
    /// costs a map lookup instead of two base64 decodings and an HMAC (11,000 instructions).
    verified: RwLock<HashMap<TokenText, Verified>>,
}

/// Most tokens remembered as verified; past it the expired ones go, then all.
const MAX_VERIFIED: usize = 100_000;

/// A token's text as a map key, compared in constant time (for its length): a lookup must not
/// tell, by how long it took, how much of a valid token a guess got right.
struct TokenText(Box<str>);

impl std::hash::Hash for TokenText {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // As `str` hashes, so that lookups by `&str` (through `Borrow`) find it.
        self.0.hash(state);
    }
}

/// Whether `a` and `b` hold the same bytes, in a time that depends on their length only (which
/// is not secret: a token's length is public). Compared 8 bytes at a time through `subtle`, whose
/// byte-by-byte comparison costs ten times more on a 100-byte token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    if a.len() != b.len() {
        return false;
    }
    let word = |chunk: &[u8]| {
        let mut bytes = [0u8; 8];
        bytes[..chunk.len()].copy_from_slice(chunk);
        u64::from_le_bytes(bytes)
    };
    a.chunks(8)
        .zip(b.chunks(8))
        .fold(subtle::Choice::from(1), |same, (x, y)| same & word(x).ct_eq(&word(y)))
        .into()
}

impl PartialEq for TokenText {
    fn eq(&self, other: &Self) -> bool {
        constant_time_eq(self.0.as_bytes(), other.0.as_bytes())
    }
}

impl Eq for TokenText {}

impl std::borrow::Borrow<str> for TokenText {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// What a verified token says.
#[derive(Clone)]
struct Verified {
    uuid: Arc<str>,
    generation: i64,
    expires: u64,
}

const INVALID_CODE: &str = "the UUID and TOTP code do not match an active principal";

impl Authenticator {
    pub fn new(tenancy: Arc<Tenancy>, admin_uuid: String, token_ttl: Duration, max_failures: u32, lockout: Duration) -> Authenticator {
        Authenticator {
            tenancy,
            admin_uuid,
            token_ttl,
            cache: RwLock::new(HashMap::new()),
            throttle: Throttle::new(max_failures, lockout),
            verified: RwLock::new(HashMap::new()),
        }
    }

    pub fn tenancy(&self) -> &Arc<Tenancy> {
        &self.tenancy
    }

    /// The caller `credentials` prove (`None` for none); `source` is the client address they
    /// come from, for the failure budget (see [`Throttle`]).
    pub async fn authenticate(&self, credentials: Credentials<'_>, source: Source) -> Result<Option<Caller>, AuthError> {
        match credentials {
            Credentials::None => Ok(None),
            Credentials::Bearer(token) => self.check_token(token).await.map(Some),
            Credentials::Code { uuid, code } => self.check_code(uuid, code, source).await.map(Some),
        }
    }

    /// `POST /rest/auth/token`: a code for a token.
    pub async fn exchange(&self, uuid: &str, code: &str, source: Source) -> Result<(String, Duration, Caller), AuthError> {
        let caller = self.check_code(uuid, code, source).await?;
        let record = self
            .principal(caller.uuid(), true)
            .await?
            .ok_or_else(|| AuthError::TotpInvalid(INVALID_CODE.to_owned()))?;
        // The clock reads whole seconds: one more second makes every token live at least its
        // TTL (at most one second longer), even when issued at the end of a second.
        let expires = totp::now() + self.token_ttl.as_secs() + 1;
        let payload = format!("{}.{}.{}", record.uuid, record.generation, expires);
        let tag = self.tenancy.key.sign(payload.as_bytes());
        let token = format!(
            "{}.{}",
            Base64UrlUnpadded::encode_string(payload.as_bytes()),
            Base64UrlUnpadded::encode_string(&tag)
        );
        Ok((token, self.token_ttl, caller))
    }

    /// Checks a token: its signature (once per token, then remembered), its expiry, then the
    /// (cached) principal's status and generation, so that revoking still takes effect at once.
    async fn check_token(&self, token: &str) -> Result<Caller, AuthError> {
        let invalid = || AuthError::TokenInvalid("the token is not one this server issued, or it was revoked".to_owned());
        let known = self.verified.read().ok().and_then(|verified| verified.get(token).cloned());
        let Verified { uuid, generation, expires } = match known {
            Some(verified) => verified,
            None => {
                let verified = self.verify_token(token).ok_or_else(invalid)?;
                self.remember(token, &verified);
                verified
            }
        };
        if totp::now() >= expires {
            return Err(AuthError::TokenExpired);
        }
        let record = self.principal(&uuid, false).await?.ok_or_else(invalid)?;
        if generation != record.generation {
            return Err(invalid());
        }
        self.caller_of(&record)
    }

    /// A token's signature and fields, checked without allocating: base64 into stack buffers,
    /// HMAC in constant time. `None` if it is not one this server signed.
    fn verify_token(&self, token: &str) -> Option<Verified> {
        let (payload, tag) = token.split_once('.')?;
        let mut payload_buf = [0u8; 128];
        let mut tag_buf = [0u8; 32];
        let payload = Base64UrlUnpadded::decode(payload, &mut payload_buf).ok()?;
        let tag = Base64UrlUnpadded::decode(tag, &mut tag_buf).ok()?;
        if !self.tenancy.key.verify(payload, tag) {
            return None;
        }
        let payload = std::str::from_utf8(payload).ok()?;
        let mut parts = payload.split('.');
        let (Some(uuid), Some(generation), Some(expires), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return None;
        };
        Some(Verified {
            uuid: uuid.into(),
            generation: generation.parse().ok()?,
            expires: expires.parse().ok()?,
        })
    }

    fn remember(&self, token: &str, verified: &Verified) {
        let Ok(mut remembered) = self.verified.write() else { return };
        if remembered.len() >= MAX_VERIFIED {
            let now = totp::now();
            remembered.retain(|_, v| v.expires > now);
            if remembered.len() >= MAX_VERIFIED {
                remembered.clear();
            }
        }
        remembered.insert(TokenText(token.into()), verified.clone());
    }

    async fn check_code(&self, uuid: &str, code: &str, source: Source) -> Result<Caller, AuthError> {
        let uuid = match uuid::Uuid::parse_str(uuid) {
            Ok(uuid) => uuid.hyphenated().to_string(),
            Err(_) => return Err(AuthError::TotpInvalid("X-Plughost-UUID is not a UUID".to_owned())),
        };
        self.throttle.admit(&uuid, source).map_err(AuthError::TooManyAttempts)?;
        if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
            self.fail(&uuid, source).await?;
            return Err(AuthError::TotpInvalid("a TOTP code is exactly 6 digits".to_owned()));
        }
        let record = self.principal(&uuid, true).await?;
        let secret = record.as_ref().and_then(|r| self.tenancy.key.decrypt(&uuid, &r.secret).ok());
        // An unknown UUID costs the same work as a wrong code, and answers the same.
        let step = totp::verify(secret.as_deref().unwrap_or("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"), code, totp::now());
        let (Some(record), Some(step), Some(_)) = (record, step, secret) else {
            self.fail(&uuid, source).await?;
            return Err(AuthError::TotpInvalid(INVALID_CODE.to_owned()));
        };
        let caller = self.caller_of(&record)?;
        let expires_at = ((step + totp::SKEW_STEPS + 2) * totp::STEP_SECS) as i64;
        if !self.tenancy.store.use_code(&uuid, step, expires_at).await? {
            self.fail(&uuid, source).await?;
            return Err(AuthError::TotpReplayed);
        }
        self.throttle.succeeded(&uuid, source);
        Ok(caller)
    }

    fn caller_of(&self, record: &PrincipalRecord) -> Result<Caller, AuthError> {
        if !record.is_active() {
            return Err(AuthError::Forbidden(format!("{} {} is disabled", record.kind, record.uuid)));
        }
        if record.kind == "admin" && record.uuid == self.admin_uuid {
            Ok(Caller::Admin { uuid: record.uuid.clone() })
        } else if record.kind == "tenant" {
            Ok(Caller::Tenant { uuid: record.uuid.clone() })
        } else {
            // A former admin UUID, no longer the configured one.
            Err(AuthError::Forbidden(format!("{} is no longer the admin", record.uuid)))
        }
    }

    /// The principal, from the cache when it is fresh enough (or always from the store).
    async fn principal(&self, uuid: &str, fresh: bool) -> Result<Option<Arc<PrincipalRecord>>, AuthError> {
        if !fresh {
            if let Ok(cache) = self.cache.read() {
                if let Some(cached) = cache.get(uuid).filter(|c| c.fetched.elapsed() < CACHE_TTL) {
                    return Ok(cached.record.clone());
                }
            }
        }
        let record = self.tenancy.store.get(uuid).await?.map(Arc::new);
        if let Ok(mut cache) = self.cache.write() {
            if cache.len() > 100_000 {
                cache.retain(|_, c| c.fetched.elapsed() < CACHE_TTL);
            }
            cache.insert(
                uuid.to_owned(),
                Cached {
                    record: record.clone(),
                    fetched: Instant::now(),
                },
            );
        }
        Ok(record)
    }

    /// Counts a failure; past the client's budget for the UUID, answers 429 instead. A client that
    /// sprays wrong codes gets its answer late.
    async fn fail(&self, uuid: &str, source: Source) -> Result<(), AuthError> {
        let delay = self.throttle.failed(uuid, source).map_err(AuthError::TooManyAttempts)?;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod constant_time_tests {
    #[test]
    fn tokens_compare_equal_only_when_every_byte_is() {
        use super::constant_time_eq;
        assert!(constant_time_eq(b"abcdefghij", b"abcdefghij"));
        assert!(!constant_time_eq(b"abcdefghij", b"abcdefghiJ"));
        assert!(!constant_time_eq(b"Abcdefghij", b"abcdefghij"));
        assert!(!constant_time_eq(b"abcdefghij", b"abcdefghi"));
        assert!(constant_time_eq(b"", b""));
    }
}
