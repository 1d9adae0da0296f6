//! The crate's error type.

/// Why the service could not produce a URL.
///
/// Cache trouble never appears here: the service signs directly instead (see
/// `ImageUrl::degraded`). What remains is the caller's input and the signing setup.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The object key is not valid (empty, too long, control characters, ...).
    #[error("invalid image key: {0}")]
    InvalidKey(#[source] cos_sign::Error),
    /// The URL options cannot be signed (e.g. a bad image-processing rule).
    #[error("invalid URL options: {0}")]
    InvalidOptions(String),
    /// The access policy does not serve this key (outside the allowed prefixes, or in a
    /// denied one).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// A batch larger than the configured maximum.
    #[error("batch of {size} keys exceeds the maximum of {max}")]
    BatchTooLarge {
        /// Keys requested.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The STS credentials have expired; no valid URL can be signed until they are
    /// replaced. Not retryable: the same request fails until an operator (or a
    /// recovering provider) supplies new credentials.
    #[error("the COS credentials have expired")]
    CredentialsExpired,
    /// No credentials have been loaded yet (the provider has not answered, or failed:
    /// the message says why, without secrets). Loading is retried in the background.
    #[error("no COS credentials loaded: {0}")]
    CredentialsUnavailable(String),
    /// The service configuration is inconsistent.
    #[error("invalid service configuration: {0}")]
    InvalidConfig(String),
    /// An administrative cache operation (cleanup) could not reach the cache. URL
    /// requests never fail this way.
    #[error("cache unavailable: {0}")]
    CacheUnavailable(String),
    /// Signing failed for another reason.
    #[error("signing failed: {0}")]
    Signing(#[source] cos_sign::Error),
    /// A bug or a runtime shutting down (e.g. a signing task that ended without an
    /// answer).
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServiceError {
    /// Whether the caller's input is at fault (an HTTP layer answers 4xx).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            ServiceError::InvalidKey(_)
                | ServiceError::InvalidOptions(_)
                | ServiceError::Forbidden(_)
                | ServiceError::BatchTooLarge { .. }
        )
    }

    /// Whether retrying later may succeed (never for input errors).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ServiceError::CredentialsUnavailable(_) | ServiceError::CacheUnavailable(_)
        )
    }
}

/// The crate's result type.
pub type Result<T, E = ServiceError> = std::result::Result<T, E>;
