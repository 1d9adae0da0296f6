//! Credentials from environment variables.

use async_trait::async_trait;
use cos_sign::Credentials;
use reqsign_core::ProvideCredential;

use crate::vars::{context, Vars};
use crate::{CredentialsError, ProvideCredentials, Result};

/// Credentials from environment variables: `COS_SECRET_ID`, `COS_SECRET_KEY` and
/// `COS_SECURITY_TOKEN` (this project's names), else the Tencent Cloud names as reqsign
/// reads them (`TENCENTCLOUD_SECRET_ID`/`TENCENTCLOUD_SECRET_KEY`/`TENCENTCLOUD_TOKEN`,
/// or their `TKE_` forms), read by reqsign's own loader.
///
/// ```
/// # tokio_test_block_on(async {
/// use cos_credentials::{EnvProvider, ProvideCredentials, Vars};
/// let env = EnvProvider::with_vars(Vars::fixed([
///     ("TENCENTCLOUD_SECRET_ID", "AKIDexample"),
///     ("TENCENTCLOUD_SECRET_KEY", "secret"),
/// ]));
/// assert_eq!(env.load().await?.secret_id(), "AKIDexample");
/// # Ok::<(), cos_credentials::CredentialsError>(()) });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct EnvProvider {
    vars: Vars,
}

impl EnvProvider {
    /// Reads the process's environment.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads `vars` instead of the process's environment.
    pub fn with_vars(vars: Vars) -> Self {
        EnvProvider { vars }
    }
}

#[async_trait]
impl ProvideCredentials for EnvProvider {
    fn name(&self) -> &'static str {
        "env"
    }

    async fn load(&self) -> Result<Credentials> {
        if let (Some(id), Some(key)) = (
            self.vars.get("COS_SECRET_ID"),
            self.vars.get("COS_SECRET_KEY"),
        ) {
            let credentials = Credentials::new(id, key);
            return Ok(match self.vars.get("COS_SECURITY_TOKEN") {
                Some(token) => credentials.with_session_token(token, None),
                None => credentials,
            });
        }
        // reqsign's loader makes no request; the context wants a client all the same.
        let ctx = context(&self.vars, crate::default_http_client(), None);
        let loaded = reqsign_tencent_cos::EnvCredentialProvider::new()
            .provide_credential(&ctx)
            .await
            .map_err(|e| CredentialsError::unavailable("env", e.to_string(), None))?;
        match loaded {
            Some(c) => Ok(crate::from_reqsign(c)),
            None => Err(CredentialsError::not_found(
                "env",
                "set COS_SECRET_ID and COS_SECRET_KEY (or TENCENTCLOUD_SECRET_ID and TENCENTCLOUD_SECRET_KEY)",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_both_sets_of_names_cos_first() {
        let cos = EnvProvider::with_vars(Vars::fixed([
            ("COS_SECRET_ID", "AKIDcos"),
            ("COS_SECRET_KEY", "k1"),
            ("COS_SECURITY_TOKEN", "t1"),
            ("TENCENTCLOUD_SECRET_ID", "AKIDtc"),
            ("TENCENTCLOUD_SECRET_KEY", "k2"),
        ]));
        let creds = cos.load().await.unwrap();
        assert_eq!(
            (creds.secret_id(), creds.session_token()),
            ("AKIDcos", Some("t1"))
        );

        let tc = EnvProvider::with_vars(Vars::fixed([
            ("TENCENTCLOUD_SECRET_ID", "AKIDtc"),
            ("TENCENTCLOUD_SECRET_KEY", "k2"),
            ("TENCENTCLOUD_TOKEN", "t2"),
        ]));
        let creds = tc.load().await.unwrap();
        assert_eq!(
            (creds.secret_id(), creds.secret_key(), creds.session_token()),
            ("AKIDtc", "k2", Some("t2"))
        );
    }

    #[tokio::test]
    async fn missing_or_partial_is_not_found() {
        for vars in [
            vec![],
            vec![("COS_SECRET_ID", "AKID")],
            vec![("TENCENTCLOUD_SECRET_KEY", "k")],
        ] {
            let err = EnvProvider::with_vars(Vars::fixed(vars))
                .load()
                .await
                .unwrap_err();
            assert!(err.is_not_found(), "{err}");
        }
    }
}
