//! The crate's error type.

use std::time::Duration;

/// What can go wrong in a cache operation.
///
/// [`CacheError::is_retryable`] separates transient backend trouble (unavailable, timed
/// out) from errors that the same call would hit again (corrupt data, invalid input).
/// Messages never contain a URL's signature.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The backend cannot be reached or refused the command. Retryable.
    #[error("cache backend unavailable: {0}")]
    Unavailable(String),
    /// The backend did not answer within the deadline. Retryable.
    #[error("cache backend timed out after {0:?}")]
    Timeout(Duration),
    /// A stored entry could not be decoded. Overwriting it fixes it.
    #[error("corrupt cache entry for {key:?}: {reason}")]
    Corrupt {
        /// The cache key.
        key: String,
        /// What was wrong.
        reason: String,
    },
    /// The caller passed something the cache cannot store.
    #[error("invalid cache input: {0}")]
    InvalidInput(String),
}

impl CacheError {
    /// Whether retrying later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, CacheError::Unavailable(_) | CacheError::Timeout(_))
    }
}

/// The crate's result type.
pub type Result<T, E = CacheError> = std::result::Result<T, E>;
