//! Credentials printed by an external command.

use std::time::Duration;

use async_trait::async_trait;
use cos_sign::Credentials;

use crate::provider::CredentialDocument;
use crate::{CredentialsError, ProvideCredentials, Result};

/// Credentials printed as JSON on standard output by a program, as AWS's
/// `credential_process` works: `{"SecretId", "SecretKey", "Token", "ExpiredTime"}` (or the
/// metadata service's `Tmp` names, `SessionToken`, `Expiration` in RFC 3339). The program
/// runs without a shell, on every load, and is killed after the timeout (default 30 s).
/// Its standard error is not captured into errors or logs (it may hold secrets).
#[derive(Debug, Clone)]
pub struct CommandProvider {
    program: String,
    args: Vec<String>,
    timeout: Duration,
}

impl CommandProvider {
    /// Runs `argv[0]` with the rest as arguments.
    pub fn new<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Result<Self> {
        let mut argv = argv.into_iter().map(Into::into);
        let program = argv
            .next()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| CredentialsError::invalid("command", "the command is empty"))?;
        Ok(CommandProvider {
            program,
            args: argv.collect(),
            timeout: Duration::from_secs(30),
        })
    }

    /// Kills the program after `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

#[async_trait]
impl ProvideCredentials for CommandProvider {
    fn name(&self) -> &'static str {
        "command"
    }

    async fn load(&self) -> Result<Credentials> {
        let child = tokio::process::Command::new(&self.program)
            .args(&self.args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            // Dropped (timeout, cancellation): the child dies with the future.
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                CredentialsError::unavailable(
                    "command",
                    format!("cannot run {}", self.program),
                    Some(Box::new(e) as _),
                )
            })?;
        let output = tokio::time::timeout(self.timeout, child.wait_with_output())
            .await
            .map_err(|_| CredentialsError::Timeout {
                source_name: "command",
                timeout: self.timeout,
            })?
            .map_err(|e| {
                CredentialsError::unavailable(
                    "command",
                    format!("waiting for {}", self.program),
                    Some(Box::new(e) as _),
                )
            })?;
        if !output.status.success() {
            return Err(CredentialsError::unavailable(
                "command",
                format!("{} exited with {}", self.program, output.status),
                None,
            ));
        }
        CredentialDocument::parse("command", &output.stdout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_the_program_and_parses_its_json() {
        let provider = CommandProvider::new([
            "sh",
            "-c",
            r#"echo '{"SecretId":"AKIDcmd","SecretKey":"k","Token":"t","ExpiredTime":4102444800}'"#,
        ])
        .unwrap();
        let creds = provider.load().await.unwrap();
        assert_eq!(
            (creds.secret_id(), creds.session_token()),
            ("AKIDcmd", Some("t"))
        );
        assert_eq!(creds.expires_at().unwrap().unix_timestamp(), 4_102_444_800);
    }

    #[tokio::test]
    async fn failures_are_typed() {
        let exit = CommandProvider::new(["sh", "-c", "echo secret-on-stdout; exit 3"]).unwrap();
        let err = exit.load().await.unwrap_err();
        assert!(
            err.is_retryable() && !err.to_string().contains("secret-on-stdout"),
            "{err}"
        );
        let missing = CommandProvider::new(["/nonexistent/credential-helper"]).unwrap();
        assert!(missing.load().await.unwrap_err().is_retryable());
        let slow = CommandProvider::new(["sleep", "30"])
            .unwrap()
            .timeout(Duration::from_millis(50));
        assert!(matches!(
            slow.load().await.unwrap_err(),
            CredentialsError::Timeout { .. }
        ));
        assert!(CommandProvider::new(Vec::<String>::new()).is_err());
    }
}
