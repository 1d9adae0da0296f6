//! Credentials from the Tencent Cloud profile file.

use std::path::PathBuf;

use async_trait::async_trait;
use cos_sign::Credentials;

use crate::vars::Vars;
use crate::{CredentialsError, ProvideCredentials, Result};

/// Credentials from the profile file Tencent's SDKs and CLI read:
/// `~/.tencentcloud/credentials`, else `/etc/tencentcloud/credentials`, an INI file whose
/// section (default `[default]`) holds `secret_id`, `secret_key` and optionally `token`.
/// The file is read again on every load, so an edited file is picked up by the next
/// refresh.
#[derive(Debug, Clone, Default)]
pub struct ProfileProvider {
    path: Option<PathBuf>,
    profile: Option<String>,
    vars: Vars,
}

impl ProfileProvider {
    /// The default file and profile.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads `path` instead of the default locations.
    pub fn path(mut self, path: impl Into<PathBuf>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// Reads section `profile` instead of `default`.
    pub fn profile(mut self, profile: impl Into<String>) -> Self {
        self.profile = Some(profile.into());
        self
    }

    /// Finds `~` through `vars` (default: the process's home directory).
    pub fn with_vars(mut self, vars: Vars) -> Self {
        self.vars = vars;
        self
    }

    fn candidates(&self) -> Vec<PathBuf> {
        match &self.path {
            Some(path) => vec![path.clone()],
            None => self
                .vars
                .home()
                .map(|home| home.join(".tencentcloud/credentials"))
                .into_iter()
                .chain([PathBuf::from("/etc/tencentcloud/credentials")])
                .collect(),
        }
    }
}

#[async_trait]
impl ProvideCredentials for ProfileProvider {
    fn name(&self) -> &'static str {
        "profile"
    }

    async fn load(&self) -> Result<Credentials> {
        let candidates = self.candidates();
        let mut found = None;
        for path in &candidates {
            match tokio::fs::read_to_string(path).await {
                Ok(text) => {
                    found = Some((path, text));
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(CredentialsError::unavailable(
                        "profile",
                        format!("reading {}", path.display()),
                        Some(Box::new(e) as _),
                    ))
                }
            }
        }
        let Some((path, text)) = found else {
            let tried: Vec<_> = candidates.iter().map(|p| p.display().to_string()).collect();
            return Err(CredentialsError::not_found(
                "profile",
                format!("no file at {}", tried.join(" or ")),
            ));
        };
        let ini = ini::Ini::load_from_str(&text).map_err(|e| {
            CredentialsError::invalid(
                "profile",
                format!("{} is not an INI file: {e}", path.display()),
            )
        })?;
        let profile = self.profile.as_deref().unwrap_or("default");
        let section = ini.section(Some(profile)).ok_or_else(|| {
            CredentialsError::invalid(
                "profile",
                format!("{} has no [{profile}] section", path.display()),
            )
        })?;
        let field = |name: &str| section.get(name).map(str::trim).filter(|v| !v.is_empty());
        let (Some(id), Some(key)) = (field("secret_id"), field("secret_key")) else {
            return Err(CredentialsError::invalid(
                "profile",
                format!(
                    "[{profile}] in {} lacks secret_id or secret_key",
                    path.display()
                ),
            ));
        };
        let credentials = Credentials::new(id, key);
        Ok(match field("token") {
            Some(token) => credentials.with_session_token(token, None),
            None => credentials,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_the_home_file_and_a_named_profile() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join(".tencentcloud")).unwrap();
        std::fs::write(
            home.path().join(".tencentcloud/credentials"),
            "[default]\nsecret_id = AKIDdefault\nsecret_key = k1\n\n[prod]\nsecret_id=AKIDprod\nsecret_key=k2\ntoken=t2\n",
        )
        .unwrap();
        let vars = Vars::Fixed {
            vars: Default::default(),
            home: Some(home.path().into()),
        };
        let default = ProfileProvider::new()
            .with_vars(vars.clone())
            .load()
            .await
            .unwrap();
        assert_eq!(
            (default.secret_id(), default.secret_key()),
            ("AKIDdefault", "k1")
        );
        let prod = ProfileProvider::new()
            .with_vars(vars)
            .profile("prod")
            .load()
            .await
            .unwrap();
        assert_eq!(
            (prod.secret_id(), prod.session_token()),
            ("AKIDprod", Some("t2"))
        );
    }

    #[tokio::test]
    async fn a_missing_file_is_not_found_and_a_broken_one_is_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let err = ProfileProvider::new()
            .path(dir.path().join("nope"))
            .load()
            .await
            .unwrap_err();
        assert!(err.is_not_found(), "{err}");
        let broken = dir.path().join("credentials");
        std::fs::write(&broken, "[default]\nsecret_id = AKID\n").unwrap();
        let err = ProfileProvider::new()
            .path(&broken)
            .load()
            .await
            .unwrap_err();
        assert!(matches!(err, CredentialsError::Invalid { .. }), "{err}");
    }
}
