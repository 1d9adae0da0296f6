//! Where providers read environment variables and the home directory: the process, or a
//! fixed map (tests, embedders that pass configuration explicitly). Also the adapters
//! that let reqsign's loaders run on this crate's HTTP client, files and variables.

use std::collections::HashMap;
use std::path::PathBuf;

use bytes::Bytes;

/// Environment variables and home directory, from the process or given. `Debug` shows
/// the variables' names, never their values (they hold secrets).
#[derive(Clone, Default)]
pub enum Vars {
    /// The process's environment (`std::env`).
    #[default]
    Process,
    /// A fixed map and home directory.
    Fixed {
        /// The variables.
        vars: HashMap<String, String>,
        /// The home directory (`~`).
        home: Option<PathBuf>,
    },
}

impl Vars {
    /// A fixed set of variables, with no home directory.
    pub fn fixed<K: Into<String>, V: Into<String>>(vars: impl IntoIterator<Item = (K, V)>) -> Self {
        Vars::Fixed {
            vars: vars
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            home: None,
        }
    }

    /// One variable, if set and not empty.
    pub fn get(&self, name: &str) -> Option<String> {
        let value = match self {
            Vars::Process => std::env::var(name).ok(),
            Vars::Fixed { vars, .. } => vars.get(name).cloned(),
        };
        value.filter(|v| !v.is_empty())
    }

    /// The home directory.
    pub fn home(&self) -> Option<PathBuf> {
        match self {
            #[allow(deprecated)] // correct on Unix, which is where this runs
            Vars::Process => std::env::home_dir(),
            Vars::Fixed { home, .. } => home.clone(),
        }
    }
}

impl std::fmt::Debug for Vars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Vars::Process => f.write_str("Vars::Process"),
            Vars::Fixed { vars, home } => {
                let mut names: Vec<&String> = vars.keys().collect();
                names.sort();
                f.debug_struct("Vars::Fixed")
                    .field("names", &names)
                    .field("home", home)
                    .finish()
            }
        }
    }
}

impl reqsign_core::Env for Vars {
    fn var(&self, key: &str) -> Option<String> {
        self.get(key)
    }

    fn vars(&self) -> HashMap<String, String> {
        match self {
            Vars::Process => std::env::vars().collect(),
            Vars::Fixed { vars, .. } => vars.clone(),
        }
    }

    fn home_dir(&self) -> Option<PathBuf> {
        self.home()
    }
}

/// reqsign's HTTP seam on this crate's client. `endpoint_override` replaces the scheme
/// and authority of every request (reqsign's STS loader has its endpoint built in), so
/// tests and private deployments can point it elsewhere.
#[derive(Debug, Clone)]
pub(crate) struct HttpSend {
    pub(crate) client: reqwest::Client,
    pub(crate) endpoint_override: Option<url::Url>,
}

impl reqsign_core::HttpSend for HttpSend {
    async fn http_send(
        &self,
        req: http::Request<Bytes>,
    ) -> reqsign_core::Result<http::Response<Bytes>> {
        let (parts, body) = req.into_parts();
        let mut url = url::Url::parse(&parts.uri.to_string())
            .map_err(|e| reqsign_core::Error::unexpected(format!("bad request URL: {e}")))?;
        if let Some(base) = &self.endpoint_override {
            url.set_scheme(base.scheme())
                .and_then(|()| url.set_host(base.host_str()).map_err(|_| ()))
                .and_then(|()| url.set_port(base.port()))
                .map_err(|()| reqsign_core::Error::unexpected("bad endpoint override"))?;
        }
        let mut request = self.client.request(parts.method, url).body(body);
        for (name, value) in &parts.headers {
            request = request.header(name, value);
        }
        let response = request
            .send()
            .await
            .map_err(|e| reqsign_core::Error::unexpected(format!("request failed: {e}")))?;
        let mut out = http::Response::builder().status(response.status());
        for (name, value) in response.headers() {
            out = out.header(name, value);
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| reqsign_core::Error::unexpected(format!("reading the answer: {e}")))?;
        out.body(body)
            .map_err(|e| reqsign_core::Error::unexpected(format!("bad response: {e}")))
    }
}

/// reqsign's file seam on tokio.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FileRead;

impl reqsign_core::FileRead for FileRead {
    async fn file_read(&self, path: &str) -> reqsign_core::Result<Vec<u8>> {
        tokio::fs::read(path)
            .await
            .map_err(|e| reqsign_core::Error::unexpected(format!("reading {path}: {e}")))
    }
}

/// A reqsign context over `vars`, `client` and tokio's files.
pub(crate) fn context(
    vars: &Vars,
    client: reqwest::Client,
    endpoint_override: Option<url::Url>,
) -> reqsign_core::Context {
    reqsign_core::Context::new()
        .with_env(vars.clone())
        .with_file_read(FileRead)
        .with_http_send(HttpSend {
            client,
            endpoint_override,
        })
}

/// rustls with ring and the platform verifier (the system's roots), configured for one
/// client rather than installed as a process-wide default (a library must not). Without
/// usable roots, a configuration that trusts nothing: HTTPS then fails to verify,
/// visibly, and plain HTTP still works. Shared with `proxy-http`'s origin client.
pub fn rustls_config() -> rustls::ClientConfig {
    use rustls_platform_verifier::BuilderVerifierExt;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions");
    match builder.clone().with_platform_verifier() {
        Ok(builder) => builder.with_no_client_auth(),
        Err(err) => {
            tracing::error!(error = %err, "no usable certificate roots: HTTPS will fail");
            builder
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        }
    }
}

/// The HTTP client the providers use by default: short timeouts (a metadata service
/// answers in milliseconds or not at all), no redirects, TLS by [`rustls_config`]. Built
/// once per process and shared (a clone is a handle to the same pool).
pub fn default_http_client() -> reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(build_default_client).clone()
}

fn build_default_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(std::time::Duration::from_secs(2))
        .timeout(std::time::Duration::from_secs(10))
        .tls_backend_preconfigured(rustls_config())
        .build()
        .expect("a client with a preconfigured rustls backend builds")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_names_not_values() {
        let vars = Vars::fixed([("TENCENTCLOUD_SECRET_KEY", "sekrit-value")]);
        let shown = format!("{vars:?} {:?}", crate::EnvProvider::with_vars(vars.clone()));
        assert!(shown.contains("TENCENTCLOUD_SECRET_KEY"), "{shown}");
        assert!(!shown.contains("sekrit-value"), "{shown}");
    }
}
