//! Account credentials.

use std::fmt;

use time::OffsetDateTime;

/// A secret id and key, optionally with an STS session token and its expiry.
///
/// `Debug` and `Display` never print the secret key or the token.
///
/// ```
/// use cos_sign::Credentials;
/// let creds = Credentials::new("AKIDEXAMPLE", "secret-key").with_session_token("token", None);
/// let shown = format!("{creds:?} {creds}");
/// assert!(shown.contains("AKIDEXAMPLE"));
/// assert!(!shown.contains("secret-key") && !shown.contains("token\""));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    secret_id: String,
    secret_key: String,
    session_token: Option<String>,
    expires_at: Option<OffsetDateTime>,
}

impl Credentials {
    /// Long-lived credentials (a CAM API key).
    pub fn new(secret_id: impl Into<String>, secret_key: impl Into<String>) -> Self {
        Credentials {
            secret_id: secret_id.into(),
            secret_key: secret_key.into(),
            session_token: None,
            expires_at: None,
        }
    }

    /// Adds an STS session token; it is sent as `x-cos-security-token` and signed.
    /// `expires_at` is when the temporary credentials stop working, if known: URLs must
    /// not outlive it, and callers read it back with [`Credentials::expires_at`].
    pub fn with_session_token(
        mut self,
        token: impl Into<String>,
        expires_at: Option<OffsetDateTime>,
    ) -> Self {
        let token = token.into();
        self.session_token = (!token.is_empty()).then_some(token);
        self.expires_at = expires_at;
        self
    }

    /// The public secret id (`q-ak`).
    pub fn secret_id(&self) -> &str {
        &self.secret_id
    }

    /// The secret key. Handle with care: never log it.
    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// The STS session token, if any. Handle with care: never log it.
    pub fn session_token(&self) -> Option<&str> {
        self.session_token.as_deref()
    }

    /// When temporary credentials expire, if known.
    pub fn expires_at(&self) -> Option<OffsetDateTime> {
        self.expires_at
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("secret_id", &self.secret_id)
            .field("secret_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl fmt::Display for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.secret_id)?;
        if self.session_token.is_some() {
            f.write_str(" (temporary)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_redact_secrets() {
        let creds = Credentials::new("AKIDid", "sekrit-KEY").with_session_token("tok-SECRET", None);
        for shown in [
            format!("{creds:?}"),
            format!("{creds:#?}"),
            creds.to_string(),
        ] {
            assert!(shown.contains("AKIDid"), "{shown}");
            assert!(!shown.contains("sekrit-KEY"), "{shown}");
            assert!(!shown.contains("tok-SECRET"), "{shown}");
        }
    }

    #[test]
    fn empty_token_means_none() {
        let creds = Credentials::new("id", "key").with_session_token("", None);
        assert_eq!(creds.session_token(), None);
    }
}
