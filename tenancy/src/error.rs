//! Why the store could not answer: one error for every backend.

/// Why the store could not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    #[error("a principal with UUID {0} already exists")]
    Exists(String),
    #[error("a stored record is unreadable: {0}")]
    Corrupt(String),
}
