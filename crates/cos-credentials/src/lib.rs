//! COS credentials that load and rotate: the async edge of [`cos_sign`].
//!
//! Production COS access uses temporary (STS) credentials that expire after an hour or
//! two. A [`ProvideCredentials`] source loads them — fixed ([`StaticProvider`]),
//! environment variables ([`EnvProvider`]), the Tencent Cloud profile file
//! ([`ProfileProvider`]), a CVM instance's CAM role ([`CvmRoleProvider`]), a TKE pod's
//! OIDC web identity ([`WebIdentityProvider`]), an external program
//! ([`CommandProvider`]), or the first of several ([`ChainProvider`], [`default_chain`]);
//! a [`CredentialsCache`] holds the current ones and refreshes them in the background
//! ahead of their expiry, so signing never waits for a load. `image-url-service` signs
//! with whatever the cache holds now and caps every URL at its expiry.
//!
//! ```no_run
//! # async fn run() -> Result<(), cos_credentials::CredentialsError> {
//! use cos_credentials::{CredentialsCache, CvmRoleProvider, RefreshConfig};
//!
//! let credentials = CredentialsCache::spawn(CvmRoleProvider::new(), RefreshConfig::default());
//! let now = credentials.ready().await?; // the first load; later ones happen in the background
//! println!("signing as {now}"); // Display shows the secret id only
//! # Ok(()) }
//! ```
//!
//! Secrets never appear in `Debug`, `Display`, errors or logs. reqsign-tencent-cos's own
//! loaders read the `TENCENTCLOUD_*` variables and run the web identity exchange; what
//! it lacks (the `COS_*` names, the profile file, the CVM metadata service, a command,
//! the refreshing cache) is written here.

mod cache;
mod command;
mod cvm;
mod env;
mod error;
mod profile;
mod provider;
mod vars;
mod web_identity;

pub use cache::{CredentialsCache, CredentialsStatus, RefreshConfig};
pub use command::CommandProvider;
pub use cvm::{CvmRoleProvider, DEFAULT_METADATA_URL};
pub use env::EnvProvider;
pub use error::{CredentialsError, Result};
pub use profile::ProfileProvider;
pub use provider::{ChainProvider, ProvideCredentials, StaticProvider};
pub use vars::{default_http_client, rustls_config, Vars};
pub use web_identity::WebIdentityProvider;

/// The chain Tencent's SDKs use: environment, profile file, TKE web identity, CVM role.
pub fn default_chain() -> ChainProvider {
    ChainProvider::new()
        .push(EnvProvider::new())
        .push(ProfileProvider::new())
        .push(WebIdentityProvider::new())
        .push(CvmRoleProvider::new())
}

/// reqsign's credential as ours.
fn from_reqsign(c: reqsign_tencent_cos::Credential) -> cos_sign::Credentials {
    let expires_at = c
        .expires_in
        .and_then(|at| time::OffsetDateTime::from_unix_timestamp(at.as_second()).ok());
    let credentials = cos_sign::Credentials::new(c.secret_id, c.secret_key);
    match (c.security_token, expires_at) {
        (None, None) => credentials,
        (token, expires_at) => {
            credentials.with_session_token(token.unwrap_or_default(), expires_at)
        }
    }
}
