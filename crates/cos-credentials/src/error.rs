//! The crate's error type.

/// Why credentials could not be loaded. Messages never carry a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialsError {
    /// The source holds no credentials here (variables unset, no profile file, no role):
    /// a chain moves on to its next source.
    #[error("no credentials from {source_name}: {reason}")]
    NotFound {
        /// The source asked.
        source_name: &'static str,
        /// What was missing.
        reason: String,
    },
    /// The source answered with something that is not credentials.
    #[error("invalid credentials from {source_name}: {reason}")]
    Invalid {
        /// The source asked.
        source_name: &'static str,
        /// What was wrong (never the secret itself).
        reason: String,
    },
    /// The source could not be reached or failed (network, HTTP status, process exit).
    #[error("{source_name} failed: {reason}")]
    Unavailable {
        /// The source asked.
        source_name: &'static str,
        /// What failed.
        reason: String,
        /// The underlying error, if any.
        #[source]
        cause: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The source took longer than allowed.
    #[error("{source_name} did not answer within {timeout:?}")]
    Timeout {
        /// The source asked.
        source_name: &'static str,
        /// The limit.
        timeout: std::time::Duration,
    },
    /// No credentials have been loaded yet, or the last ones have expired.
    #[error("no valid COS credentials: {0}")]
    NoneValid(String),
}

impl CredentialsError {
    /// Whether a chain should try its next source (this one is simply not configured).
    pub fn is_not_found(&self) -> bool {
        matches!(self, CredentialsError::NotFound { .. })
    }

    /// Whether asking again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            CredentialsError::Unavailable { .. } | CredentialsError::Timeout { .. }
        )
    }

    pub(crate) fn not_found(source_name: &'static str, reason: impl Into<String>) -> Self {
        CredentialsError::NotFound {
            source_name,
            reason: reason.into(),
        }
    }

    pub(crate) fn invalid(source_name: &'static str, reason: impl Into<String>) -> Self {
        CredentialsError::Invalid {
            source_name,
            reason: reason.into(),
        }
    }

    pub(crate) fn unavailable(
        source_name: &'static str,
        reason: impl Into<String>,
        cause: impl Into<Option<Box<dyn std::error::Error + Send + Sync>>>,
    ) -> Self {
        CredentialsError::Unavailable {
            source_name,
            reason: reason.into(),
            cause: cause.into(),
        }
    }
}

/// The crate's result type.
pub type Result<T, E = CredentialsError> = std::result::Result<T, E>;
