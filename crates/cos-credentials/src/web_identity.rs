//! TKE OIDC web identity: `AssumeRoleWithWebIdentity` against STS, by reqsign's loader.

use async_trait::async_trait;
use cos_sign::Credentials;
use reqsign_core::ProvideCredential;

use crate::vars::{context, Vars};
use crate::{CredentialsError, ProvideCredentials, Result};

/// Credentials for a TKE pod's role: the pod's OIDC token (`TKE_WEB_IDENTITY_TOKEN_FILE`,
/// read again on every load since the kubelet rotates it) exchanged at STS with
/// `AssumeRoleWithWebIdentity` for `TKE_ROLE_ARN` through `TKE_PROVIDER_ID` in
/// `TKE_REGION` (or the `TENCENTCLOUD_` forms). The exchange is reqsign-tencent-cos's own
/// loader; this type runs it on this crate's HTTP client, with the STS endpoint
/// overridable (default `https://sts.tencentcloudapi.com`).
#[derive(Debug, Clone)]
pub struct WebIdentityProvider {
    vars: Vars,
    sts_endpoint: Option<url::Url>,
    client: reqwest::Client,
}

impl Default for WebIdentityProvider {
    fn default() -> Self {
        WebIdentityProvider {
            vars: Vars::Process,
            sts_endpoint: None,
            client: crate::default_http_client(),
        }
    }
}

impl WebIdentityProvider {
    /// Reads its settings from the process's environment.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads its settings from `vars`.
    pub fn with_vars(mut self, vars: Vars) -> Self {
        self.vars = vars;
        self
    }

    /// Sends the exchange to `endpoint` (scheme, host and port are used).
    pub fn sts_endpoint(mut self, endpoint: &str) -> Result<Self> {
        let url = url::Url::parse(endpoint).map_err(|e| {
            CredentialsError::invalid("web-identity", format!("sts endpoint {endpoint:?}: {e}"))
        })?;
        self.sts_endpoint = Some(url);
        Ok(self)
    }

    /// Sends requests with `client`.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.client = client;
        self
    }
}

#[async_trait]
impl ProvideCredentials for WebIdentityProvider {
    fn name(&self) -> &'static str {
        "web-identity"
    }

    async fn load(&self) -> Result<Credentials> {
        // TKE's pod identity webhook and Tencent's SDKs name the token file
        // `TKE_WEB_IDENTITY_TOKEN_FILE`; reqsign reads `TKE_IDENTITY_TOKEN_FILE` or the
        // `TENCENTCLOUD_` form. Hand the SDK name over under the latter.
        let mut vars = self.vars.clone();
        if let Some(file) = vars.get("TKE_WEB_IDENTITY_TOKEN_FILE") {
            if vars.get("TENCENTCLOUD_WEB_IDENTITY_TOKEN_FILE").is_none() {
                let mut all = reqsign_core::Env::vars(&vars);
                all.insert("TENCENTCLOUD_WEB_IDENTITY_TOKEN_FILE".into(), file);
                vars = Vars::Fixed {
                    vars: all,
                    home: vars.home(),
                };
            }
        }
        let ctx = context(&vars, self.client.clone(), self.sts_endpoint.clone());
        let loaded = reqsign_tencent_cos::AssumeRoleWithWebIdentityCredentialProvider::new()
            .provide_credential(&ctx)
            .await
            .map_err(|e| CredentialsError::unavailable("web-identity", e.to_string(), None))?;
        match loaded {
            Some(c) => Ok(crate::from_reqsign(c)),
            None => Err(CredentialsError::not_found(
                "web-identity",
                "set TKE_ROLE_ARN, TKE_PROVIDER_ID, TKE_WEB_IDENTITY_TOKEN_FILE and TKE_REGION",
            )),
        }
    }
}
