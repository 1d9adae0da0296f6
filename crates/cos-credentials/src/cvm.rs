//! Credentials of a CVM instance's CAM role, from the metadata service.

use async_trait::async_trait;
use cos_sign::Credentials;

use crate::provider::CredentialDocument;
use crate::{CredentialsError, ProvideCredentials, Result};

/// The metadata service every CVM instance reaches.
pub const DEFAULT_METADATA_URL: &str = "http://metadata.tencentyun.com";

const ROLES_PATH: &str = "/latest/meta-data/cam/security-credentials/";

/// The temporary credentials of the CAM role bound to this CVM instance, from the
/// metadata service: `GET <metadata_url>/latest/meta-data/cam/security-credentials/<role>`
/// answers `TmpSecretId`, `TmpSecretKey`, `Token` and `ExpiredTime`. Without a role name
/// the provider asks the same path without one, which lists the bound roles, and uses the
/// only one (more than one is an error: name it).
#[derive(Debug, Clone)]
pub struct CvmRoleProvider {
    metadata_url: String,
    role: Option<String>,
    client: reqwest::Client,
}

impl Default for CvmRoleProvider {
    fn default() -> Self {
        CvmRoleProvider {
            metadata_url: DEFAULT_METADATA_URL.to_owned(),
            role: None,
            client: crate::default_http_client(),
        }
    }
}

impl CvmRoleProvider {
    /// The instance's only role, from the default metadata service.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks `url` (scheme and host, e.g. a local fake) instead of
    /// [`DEFAULT_METADATA_URL`].
    pub fn metadata_url(mut self, url: impl Into<String>) -> Self {
        self.metadata_url = url.into().trim_end_matches('/').to_owned();
        self
    }

    /// Loads this role's credentials (default: the one role bound to the instance).
    pub fn role(mut self, role: impl Into<String>) -> Self {
        let role = role.into();
        self.role = (!role.is_empty()).then_some(role);
        self
    }

    /// Sends requests with `client`.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.client = client;
        self
    }

    async fn get(&self, path: &str) -> Result<Option<bytes::Bytes>> {
        let url = format!("{}{path}", self.metadata_url);
        let response = self.client.get(&url).send().await.map_err(|e| {
            CredentialsError::unavailable(
                "cvm-role",
                format!(
                    "the metadata service at {} did not answer",
                    self.metadata_url
                ),
                Some(Box::new(e) as _),
            )
        })?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(CredentialsError::unavailable(
                "cvm-role",
                format!("the metadata service answered {status}"),
                None,
            ));
        }
        let body = response.bytes().await.map_err(|e| {
            CredentialsError::unavailable(
                "cvm-role",
                "reading the metadata answer",
                Some(Box::new(e) as _),
            )
        })?;
        Ok(Some(body))
    }

    async fn the_role(&self) -> Result<String> {
        if let Some(role) = &self.role {
            return Ok(role.clone());
        }
        let listing = self.get(ROLES_PATH).await?.ok_or_else(|| {
            CredentialsError::not_found("cvm-role", "no CAM role is bound to this instance")
        })?;
        let listing = String::from_utf8_lossy(&listing);
        let roles: Vec<&str> = listing
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        match roles.as_slice() {
            [] => Err(CredentialsError::not_found(
                "cvm-role",
                "no CAM role is bound to this instance",
            )),
            [one] => Ok((*one).to_owned()),
            many => Err(CredentialsError::invalid(
                "cvm-role",
                format!(
                    "{} roles are bound ({}): set the role to use",
                    many.len(),
                    many.join(", ")
                ),
            )),
        }
    }
}

#[async_trait]
impl ProvideCredentials for CvmRoleProvider {
    fn name(&self) -> &'static str {
        "cvm-role"
    }

    async fn load(&self) -> Result<Credentials> {
        let role = self.the_role().await?;
        if role.contains('/') || role.contains("..") {
            return Err(CredentialsError::invalid(
                "cvm-role",
                format!("{role:?} is not a role name"),
            ));
        }
        let body = self
            .get(&format!("{ROLES_PATH}{role}"))
            .await?
            .ok_or_else(|| {
                CredentialsError::invalid(
                    "cvm-role",
                    format!("the role {role:?} is not bound to this instance"),
                )
            })?;
        CredentialDocument::parse("cvm-role", &body)
    }
}
