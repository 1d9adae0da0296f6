//! `serve` configuration: the embedded default, then a TOML file, then the environment.

use std::net::SocketAddr;
use std::path::Path;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::Deserialize;

/// The embedded default, documented key by key.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// The whole configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[server]`.
    pub server: Server,
    /// `[cos]`.
    pub cos: Cos,
    /// `[signing]`.
    pub signing: Signing,
    /// `[cache]`.
    pub cache: Cache,
    /// `[proxy]`.
    pub proxy: Proxy,
    /// `[access]`.
    pub access: Access,
    /// `[limits]`.
    pub limits: Limits,
    /// `[refresher]`.
    pub refresher: Refresher,
    /// `[alerts]`.
    pub alerts: Alerts,
}

/// `[alerts]`: rules over the server's own figures, and where alerts go.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alerts {
    pub enabled: bool,
    pub webhook_urls: Vec<String>,
    pub evaluate_every_secs: u64,
    pub refresh_failure_ratio: f64,
    pub refresh_failure_runs: usize,
    pub degraded_after_secs: u64,
    pub max_refresh_lag_secs: u64,
    pub credentials_expire_within_secs: u64,
    pub min_hit_rate: f64,
    pub min_requests: u64,
    pub hold_for_secs: u64,
    pub instance: String,
}

/// Webhook URLs often carry a token: shown as a count.
impl std::fmt::Debug for Alerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alerts")
            .field("enabled", &self.enabled)
            .field(
                "webhook_urls",
                &format_args!("<{} redacted>", self.webhook_urls.len()),
            )
            .field("evaluate_every_secs", &self.evaluate_every_secs)
            .field("degraded_after_secs", &self.degraded_after_secs)
            .finish_non_exhaustive()
    }
}

/// `[refresher]`: the background refresh of URLs about to expire.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refresher {
    pub enabled: bool,
    pub interval_secs: u64,
    /// 0: the pre-refresh threshold plus one interval.
    pub threshold_secs: u64,
    pub batch_size: usize,
    pub max_concurrent: usize,
    pub max_per_run: usize,
    pub idle_drop_secs: u64,
}

/// `[limits]`: what one client or one request may cost.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub requests_per_second: u32,
    pub burst: u32,
    pub trusted_proxies: Vec<String>,
    pub max_body_bytes: usize,
    pub max_preload_keys: usize,
}

/// `[server]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    pub listen: SocketAddr,
    pub admin_listen: String,
    pub admin_token: String,
    pub admin_tokens: Vec<String>,
    pub workers: usize,
    pub json_logs: bool,
    pub access_log: String,
    pub access_log_sample_rate: f64,
    pub header_timeout_ms: u64,
    pub cors_origins: Vec<String>,
}

/// The admin token is never shown.
impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listen", &self.listen)
            .field("admin_listen", &self.admin_listen)
            .field("admin_token", &"<redacted>")
            .field(
                "admin_tokens",
                &format_args!("<{} redacted>", self.admin_tokens.len()),
            )
            .field("workers", &self.workers)
            .field("json_logs", &self.json_logs)
            .field("access_log", &self.access_log)
            .field("access_log_sample_rate", &self.access_log_sample_rate)
            .field("header_timeout_ms", &self.header_timeout_ms)
            .field("cors_origins", &self.cors_origins)
            .finish()
    }
}

/// `[cos]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cos {
    pub secret_id: String,
    pub secret_key: String,
    pub security_token: String,
    pub bucket: String,
    pub region: String,
    pub domain: String,
    pub scheme: String,
    pub credentials: String,
    pub role: String,
    pub metadata_url: String,
    pub sts_endpoint: String,
    pub command: Vec<String>,
    pub profile: String,
    pub profile_file: String,
}

impl std::fmt::Debug for Cos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cos")
            .field("secret_id", &self.secret_id)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("domain", &self.domain)
            .field("scheme", &self.scheme)
            .field("credentials", &self.credentials)
            .field("role", &self.role)
            .field("metadata_url", &self.metadata_url)
            .field("sts_endpoint", &self.sts_endpoint)
            .field("command", &self.command.first())
            .field("profile", &self.profile)
            .field("profile_file", &self.profile_file)
            .finish_non_exhaustive()
    }
}

/// `[signing]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signing {
    pub ttl_secs: u64,
    pub pre_refresh_secs: u64,
    /// Absent: `ttl_secs - pre_refresh_secs`; 0: off.
    pub align_secs: Option<u64>,
}

/// `[cache]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cache {
    pub backend: String,
    pub redis_url: String,
    pub policy: String,
    pub max_entries: usize,
    pub pool_size: usize,
    pub timeout_ms: u64,
    pub cleanup_interval_secs: u64,
    pub namespace: String,
    pub migrate_unnamespaced: bool,
    pub index_shards: usize,
    pub access_flush_ms: u64,
    pub l1_max_entries: usize,
    pub l1_ttl_secs: u64,
}

/// `[proxy]`: fetching objects from COS in `?mode=proxy`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proxy {
    pub connect_timeout_secs: u64,
    pub read_timeout_secs: u64,
    pub timeout_secs: u64,
    pub max_object_bytes: u64,
    pub max_concurrent: usize,
}

/// `[access]`: which keys and options are served, and whether links must be signed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Access {
    pub allowed_prefixes: Vec<String>,
    pub denied_prefixes: Vec<String>,
    pub link_secrets: Vec<String>,
    pub allowed_content_types: Vec<String>,
    pub allow_processing: bool,
    pub allowed_processing_prefixes: Vec<String>,
}

/// The link secrets are shown as a count only.
impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("allowed_prefixes", &self.allowed_prefixes)
            .field("denied_prefixes", &self.denied_prefixes)
            .field(
                "link_secrets",
                &format_args!("<{} redacted>", self.link_secrets.len()),
            )
            .field("allowed_content_types", &self.allowed_content_types)
            .field("allow_processing", &self.allow_processing)
            .field(
                "allowed_processing_prefixes",
                &self.allowed_processing_prefixes,
            )
            .finish()
    }
}

/// Loads the configuration; an error is one line naming the key and where it came from.
pub fn load(file: Option<&Path>) -> Result<(Config, Figment), String> {
    load_with(file, |f| f, |f| f)
}

/// [`load`] with `defaults` merged over the embedded default (before the file and the
/// environment) and `forced` merged last (over everything).
pub fn load_with(
    file: Option<&Path>,
    defaults: impl FnOnce(Figment) -> Figment,
    forced: impl FnOnce(Figment) -> Figment,
) -> Result<(Config, Figment), String> {
    let mut figment = defaults(Figment::from(Toml::string(DEFAULT_TOML)));
    if let Some(file) = file {
        if !file.is_file() {
            return Err(format!("--config {}: no such file", file.display()));
        }
        figment = figment.merge(Toml::file(file));
    }
    figment = figment
        .merge(Env::prefixed("IMAGE_URL_").split("__"))
        .merge(
            Env::raw()
                .only(&["COS_SECRET_ID", "COS_SECRET_KEY", "COS_SECURITY_TOKEN"])
                .map(|k| {
                    format!(
                        "cos.{}",
                        k.as_str().to_ascii_lowercase().trim_start_matches("cos_")
                    )
                    .into()
                }),
        );
    let figment = forced(figment);
    let config: Config = figment.extract().map_err(|e| {
        let e = e
            .into_iter()
            .next()
            .map(|e| e.to_string())
            .unwrap_or_default();
        format!("invalid configuration: {e}")
    })?;
    Ok((config, figment))
}

/// Where a key's value came from, for error messages.
pub fn source_of(figment: &Figment, key: &str) -> String {
    figment
        .find_metadata(key)
        .map(|m| match &m.source {
            Some(source) => format!("{} ({source})", m.name),
            None => m.name.to_string(),
        })
        .unwrap_or_else(|| "the default".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_tokens_or_link_secrets() {
        let (mut config, _) = load(None).expect("the embedded default loads");
        config.server.admin_token = "admin-token-that-is-secret".into();
        config.server.admin_tokens = vec!["another-admin-token-secret".into()];
        config.access.link_secrets = vec!["a-link-secret-that-is-secret".into()];
        config.cos.secret_key = "cos-secret-key-value".into();
        let shown = format!("{config:?}");
        for secret in [
            "admin-token-that",
            "another-admin",
            "a-link-secret",
            "cos-secret-key",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }
}
