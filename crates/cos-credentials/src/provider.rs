//! The provider trait, fixed credentials, a chain, and the JSON document that the
//! metadata service and credential commands print.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use cos_sign::Credentials;
use serde::Deserialize;
use time::OffsetDateTime;

use crate::{CredentialsError, Result};

/// A source of COS credentials.
///
/// Contract: `load` returns the credentials the source holds *now* (with their expiry
/// when they are temporary), or an error. It may do I/O and may be slow; callers do not
/// call it on a request path: [`CredentialsCache`](crate::CredentialsCache) calls it in
/// the background, ahead of expiry, and serves its last answer in between.
/// [`CredentialsError::NotFound`] means "not configured here", which makes a
/// [`ChainProvider`] move on; any other error stops the chain. Implementations must
/// never put a secret in an error or a log line.
#[async_trait]
pub trait ProvideCredentials: Send + Sync + fmt::Debug {
    /// A short name for logs, stats and errors (`"env"`, `"cvm-role"`, ...).
    fn name(&self) -> &'static str;

    /// Loads the current credentials.
    async fn load(&self) -> Result<Credentials>;
}

macro_rules! forward_provider {
    ($($pointer:ident),*) => {$(
        #[async_trait]
        impl<T: ProvideCredentials + ?Sized> ProvideCredentials for $pointer<T> {
            fn name(&self) -> &'static str {
                (**self).name()
            }

            async fn load(&self) -> Result<Credentials> {
                (**self).load().await
            }
        }
    )*};
}

forward_provider!(Arc, Box);

/// Fixed credentials (a CAM API key, or a token somebody else renews).
#[derive(Debug, Clone)]
pub struct StaticProvider {
    credentials: Credentials,
}

impl StaticProvider {
    /// Always answers `credentials`.
    pub fn new(credentials: Credentials) -> Self {
        StaticProvider { credentials }
    }
}

#[async_trait]
impl ProvideCredentials for StaticProvider {
    fn name(&self) -> &'static str {
        "static"
    }

    async fn load(&self) -> Result<Credentials> {
        Ok(self.credentials.clone())
    }
}

/// Tries each provider in turn and answers the first that holds credentials, as
/// Tencent's SDKs do (environment, profile file, CVM role, TKE web identity).
/// A provider that fails for another reason than "not configured" ends the search with
/// its error, so a broken source is reported rather than skipped.
#[derive(Debug, Clone, Default)]
pub struct ChainProvider {
    providers: Vec<Arc<dyn ProvideCredentials>>,
}

impl ChainProvider {
    /// An empty chain; add sources with [`ChainProvider::push`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `provider`.
    pub fn push(mut self, provider: impl ProvideCredentials + 'static) -> Self {
        self.providers.push(Arc::new(provider));
        self
    }
}

#[async_trait]
impl ProvideCredentials for ChainProvider {
    fn name(&self) -> &'static str {
        "chain"
    }

    async fn load(&self) -> Result<Credentials> {
        let mut missing = Vec::new();
        for provider in &self.providers {
            match provider.load().await {
                Err(err) if err.is_not_found() => missing.push(err.to_string()),
                other => return other,
            }
        }
        Err(CredentialsError::not_found("chain", missing.join("; ")))
    }
}

/// Temporary credentials as JSON: what the CVM metadata service answers
/// (`TmpSecretId`, `TmpSecretKey`, `Token`, `ExpiredTime`) and what a credential command
/// prints (the same names, or `SecretId`/`SecretKey`/`SessionToken`, with the expiry as
/// `ExpiredTime` in Unix seconds or `Expiration` in RFC 3339).
#[derive(Deserialize)]
pub(crate) struct CredentialDocument {
    #[serde(alias = "TmpSecretId", alias = "SecretId")]
    secret_id: Option<String>,
    #[serde(alias = "TmpSecretKey", alias = "SecretKey")]
    secret_key: Option<String>,
    #[serde(alias = "Token", alias = "SessionToken", alias = "SecurityToken")]
    token: Option<String>,
    #[serde(rename = "ExpiredTime")]
    expired_time: Option<i64>,
    #[serde(rename = "Expiration")]
    expiration: Option<String>,
    #[serde(rename = "Code")]
    code: Option<String>,
}

impl CredentialDocument {
    /// Parses `body` from `source_name` into credentials.
    pub(crate) fn parse(source_name: &'static str, body: &[u8]) -> Result<Credentials> {
        let doc: CredentialDocument = serde_json::from_slice(body).map_err(|e| {
            // serde_json's message names a line and column, never the value.
            CredentialsError::invalid(source_name, format!("not a credential document: {e}"))
        })?;
        if let Some(code) = doc.code.as_deref() {
            if code != "Success" {
                return Err(CredentialsError::invalid(
                    source_name,
                    format!("the answer's Code is {code:?}"),
                ));
            }
        }
        let (Some(id), Some(key)) = (doc.secret_id, doc.secret_key) else {
            return Err(CredentialsError::invalid(
                source_name,
                "the secret id or key is missing",
            ));
        };
        if id.is_empty() || key.is_empty() {
            return Err(CredentialsError::invalid(
                source_name,
                "the secret id or key is empty",
            ));
        }
        let expires_at = match (doc.expired_time, doc.expiration.as_deref()) {
            (Some(secs), _) => Some(OffsetDateTime::from_unix_timestamp(secs).map_err(|_| {
                CredentialsError::invalid(
                    source_name,
                    format!("ExpiredTime {secs} is out of range"),
                )
            })?),
            (None, Some(text)) => Some(
                OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                    .map_err(|e| {
                        CredentialsError::invalid(
                            source_name,
                            format!("Expiration {text:?} is not RFC 3339: {e}"),
                        )
                    })?,
            ),
            (None, None) => None,
        };
        let credentials = Credentials::new(id, key);
        Ok(match doc.token {
            Some(token) if !token.is_empty() => credentials.with_session_token(token, expires_at),
            _ => match expires_at {
                // Temporary credentials without a token are unusual, but keep the expiry.
                Some(at) => credentials.with_session_token("", Some(at)),
                None => credentials,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_metadata_service_answer() {
        let body = br#"{"TmpSecretId":"AKIDtmp","TmpSecretKey":"sk","ExpiredTime":1700000000,
            "Expiration":"2023-11-14T22:13:20Z","Token":"tok","Code":"Success"}"#;
        let creds = CredentialDocument::parse("cvm-role", body).unwrap();
        assert_eq!(creds.secret_id(), "AKIDtmp");
        assert_eq!(creds.secret_key(), "sk");
        assert_eq!(creds.session_token(), Some("tok"));
        assert_eq!(creds.expires_at().unwrap().unix_timestamp(), 1_700_000_000);
    }

    #[test]
    fn parses_a_command_answer_with_rfc3339_expiry() {
        let body = br#"{"SecretId":"AKID","SecretKey":"sk","SessionToken":"t","Expiration":"2023-11-14T22:13:20Z"}"#;
        let creds = CredentialDocument::parse("command", body).unwrap();
        assert_eq!(creds.expires_at().unwrap().unix_timestamp(), 1_700_000_000);
        let long_lived =
            CredentialDocument::parse("command", br#"{"SecretId":"AKID","SecretKey":"sk"}"#)
                .unwrap();
        assert_eq!(long_lived.expires_at(), None);
        assert_eq!(long_lived.session_token(), None);
    }

    #[test]
    fn bad_documents_are_typed_errors_without_secrets() {
        for body in [
            &br#"{"TmpSecretId":"AKID","Code":"Success"}"#[..],
            br#"{"TmpSecretId":"AKID","TmpSecretKey":"","Token":"t"}"#,
            br#"{"TmpSecretId":"AKID","TmpSecretKey":"sk-SECRET","Code":"Fail"}"#,
            br#"{"TmpSecretId":"AKID","TmpSecretKey":"sk-SECRET","Expiration":"tomorrow"}"#,
            br#"not json sk-SECRET"#,
        ] {
            let err = CredentialDocument::parse("cvm-role", body).unwrap_err();
            assert!(matches!(err, CredentialsError::Invalid { .. }), "{err}");
            assert!(!err.to_string().contains("sk-SECRET"), "{err}");
        }
    }
}
