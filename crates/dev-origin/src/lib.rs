//! A local COS-compatible origin, like MinIO, Azurite or fake-gcs-server for their clouds.
//!
//! It serves the files under a directory as the objects of one bucket and behaves like COS
//! for the requests image-url makes: every request's signature is verified with
//! [`cos_sign::verify`] (presigned URL or `Authorization` header); GET and HEAD answer with
//! `Content-Type`, `Content-Length`, a strong `ETag`, `Last-Modified`, `Accept-Ranges`,
//! single ranges (206/416) and conditional requests (304), honouring the signed
//! `response-content-type`, `response-content-disposition` and `response-cache-control`;
//! PUT stores an object. Errors are COS-style XML. Files are streamed from disk, so memory
//! stays flat for large objects, and keys cannot escape the directory.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use cos_sign::Credentials;
//! use dev_origin::{DevOrigin, OriginConfig};
//! let origin = DevOrigin::start(
//!     OriginConfig::new("./images", Credentials::new("AKIDlocal", "local-secret")),
//!     "127.0.0.1:0".parse().unwrap(),
//! )
//! .await?;
//! println!("serving on http://{}", origin.addr());
//! origin.stop().await;
//! # Ok(()) }
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, RwLock};

use actix_files::NamedFile;
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use cos_sign::{Credentials, Rejection, VerifyRequest};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

/// Where the origin reads objects from and whose signatures it accepts.
#[derive(Clone)]
#[non_exhaustive]
pub struct OriginConfig {
    /// The directory served as the bucket.
    pub dir: PathBuf,
    /// Credentials whose signatures are accepted (with their STS token, if any).
    pub credentials: Credentials,
    /// More credentials accepted beside `credentials`, and changeable while the origin
    /// runs: a test that rotates temporary credentials adds each new set here. As at
    /// COS, a request made with credentials past their expiry is refused.
    pub more_credentials: CredentialSet,
    /// The bucket name reported in error bodies.
    pub bucket: String,
    /// "Now" in unix seconds, for signature windows (default: the system clock).
    pub clock: Arc<dyn Fn() -> i64 + Send + Sync>,
    /// Largest object a PUT may store, bytes (default 5 GiB, COS's limit for one PUT);
    /// beyond: 400 `EntityTooLarge`, and nothing is stored.
    pub max_put_bytes: u64,
    /// Faults switched on and off while the origin runs (demos and tests).
    pub faults: OriginFaults,
}

impl OriginConfig {
    /// Serve `dir`, accepting signatures made with `credentials`.
    pub fn new(dir: impl Into<PathBuf>, credentials: Credentials) -> Self {
        OriginConfig {
            dir: dir.into(),
            credentials,
            more_credentials: CredentialSet::default(),
            bucket: "local-1250000000".into(),
            clock: Arc::new(cos_sign::unix_now),
            max_put_bytes: 5 << 30,
            faults: OriginFaults::default(),
        }
    }
}

impl fmt::Debug for OriginConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OriginConfig")
            .field("dir", &self.dir)
            .field("credentials", &self.credentials)
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

/// Credentials an origin accepts, shared with whoever issues them (a fake metadata or
/// STS server in tests). Cheap to clone: clones share one set.
#[derive(Clone, Default)]
pub struct CredentialSet(Arc<RwLock<Vec<Credentials>>>);

impl CredentialSet {
    /// Accepts `credentials` from now on.
    pub fn add(&self, credentials: Credentials) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(credentials);
    }

    /// The credentials with `secret_id`, if accepted.
    pub fn find(&self, secret_id: &str) -> Option<Credentials> {
        let set = self.0.read().unwrap_or_else(|p| p.into_inner());
        set.iter()
            .rev()
            .find(|c| c.secret_id() == secret_id)
            .cloned()
    }

    /// How many are accepted.
    pub fn len(&self) -> usize {
        self.0.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for CredentialSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CredentialSet({} credentials)", self.len())
    }
}

/// Faults of a running origin, shared with whoever switches them (cheap to clone: clones
/// share the switches).
#[derive(Debug, Clone, Default)]
pub struct OriginFaults {
    refuse_browsers: Arc<std::sync::atomic::AtomicBool>,
}

impl OriginFaults {
    /// Refuses every request that carries a `Referer` with 403 `AccessDenied`, as COS's
    /// hotlink protection does for a referer not on its allow-list: a browser loading a
    /// presigned URL from a page is refused, while a server fetching the same URL (proxy
    /// mode, no referer) is served.
    pub fn refuse_browsers(&self, on: bool) {
        self.refuse_browsers
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether browsers are refused.
    pub fn refusing_browsers(&self) -> bool {
        self.refuse_browsers
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The `q-ak` a request is signed with, from its query or its `Authorization` header.
fn access_key<'a>(query: &'a str, authorization: Option<&'a str>) -> Option<&'a str> {
    [Some(query), authorization]
        .into_iter()
        .flatten()
        .flat_map(|fields| fields.split('&'))
        .find_map(|field| field.strip_prefix("q-ak="))
}

/// A running origin. Dropping it does not stop the server; call [`DevOrigin::stop`].
#[derive(Debug)]
pub struct DevOrigin {
    addr: SocketAddr,
    handle: actix_web::dev::ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

struct State {
    root: PathBuf,
    credentials: Credentials,
    more_credentials: CredentialSet,
    faults: OriginFaults,
    bucket: String,
    clock: Arc<dyn Fn() -> i64 + Send + Sync>,
    max_put_bytes: u64,
}

impl DevOrigin {
    /// Binds `listen` (use port 0 for any free port) and serves until stopped. Must be
    /// called inside a tokio runtime.
    pub async fn start(config: OriginConfig, listen: SocketAddr) -> std::io::Result<Self> {
        let server = Self::server(config, listen)?;
        let addr = server.0;
        let server = server.1;
        let handle = server.handle();
        let task = tokio::spawn(server);
        Ok(DevOrigin { addr, handle, task })
    }

    /// Builds the server without spawning it (the binary awaits it directly, so that it
    /// handles Ctrl-C and SIGTERM itself).
    pub fn server(
        config: OriginConfig,
        listen: SocketAddr,
    ) -> std::io::Result<(SocketAddr, actix_web::dev::Server)> {
        let root = std::fs::canonicalize(&config.dir).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot serve {}: {e}", config.dir.display()),
            )
        })?;
        if !root.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} is not a directory", root.display()),
            ));
        }
        let state = web::Data::new(State {
            root,
            credentials: config.credentials,
            more_credentials: config.more_credentials,
            faults: config.faults,
            bucket: config.bucket,
            clock: config.clock,
            max_put_bytes: config.max_put_bytes,
        });
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(web::PayloadConfig::new(usize::MAX))
                .default_service(web::to(handle))
        })
        .workers(2)
        .disable_signals()
        .bind(listen)?;
        let addr = server.addrs()[0];
        Ok((addr, server.run()))
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets in-flight requests finish, and waits for the server.
    pub async fn stop(self) {
        self.handle.stop(true).await;
        let _ = self.task.await;
    }
}

/// A COS-style XML error.
fn cos_error(
    status: StatusCode,
    code: &str,
    message: &str,
    resource: &str,
    bucket: &str,
) -> HttpResponse {
    let body = format!(
        "<?xml version='1.0' encoding='utf-8' ?>\n<Error>\n\t<Code>{code}</Code>\n\t<Message>{}</Message>\n\t<Resource>{bucket}{}</Resource>\n\t<RequestId>{}</RequestId>\n</Error>",
        xml_escape(message),
        xml_escape(resource),
        request_id(),
    );
    HttpResponse::build(status)
        .content_type("application/xml")
        .body(body)
}

fn request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("dev-origin-{:016x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

async fn handle(req: HttpRequest, payload: web::Payload, state: web::Data<State>) -> HttpResponse {
    let path = req.uri().path().to_owned();
    let query = req.query_string().to_owned();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let header_refs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let request = VerifyRequest {
        method: req.method().as_str(),
        path: &path,
        query: &query,
        headers: &header_refs,
    };
    if state.faults.refusing_browsers() && req.headers().contains_key(header::REFERER) {
        return cos_error(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "Access Denied. (hotlink protection: this referer is not allowed)",
            &path,
            &state.bucket,
        );
    }
    let now = (state.clock)();
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let credentials = match access_key(&query, authorization) {
        Some(ak) if ak != state.credentials.secret_id() => state
            .more_credentials
            .find(ak)
            .unwrap_or_else(|| state.credentials.clone()),
        _ => state.credentials.clone(),
    };
    if credentials
        .expires_at()
        .is_some_and(|at| at.unix_timestamp() <= now)
    {
        return cos_error(
            StatusCode::FORBIDDEN,
            "ExpiredToken",
            "The provided token has expired.",
            &path,
            &state.bucket,
        );
    }
    let verified = match cos_sign::verify(&credentials, &request, now) {
        Ok(verified) => verified,
        Err(rejection) => {
            let message = match &rejection {
                Rejection::Expired => "Request has expired".to_owned(),
                Rejection::MissingSignature => "Access Denied.".to_owned(),
                other => other.to_string(),
            };
            return cos_error(
                StatusCode::FORBIDDEN,
                rejection.cos_code(),
                &message,
                &path,
                &state.bucket,
            );
        }
    };
    let Some(file_path) = object_path(&state.root, &verified.key) else {
        return cos_error(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "Access Denied: the key leaves the bucket.",
            &path,
            &state.bucket,
        );
    };
    match *req.method() {
        Method::GET | Method::HEAD => {
            serve(
                &req,
                &state,
                &file_path,
                &query,
                &verified.signed_params,
                &path,
            )
            .await
        }
        Method::PUT => store(payload, &state, &file_path, &path).await,
        _ => cos_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "The specified method is not allowed.",
            &path,
            &state.bucket,
        ),
    }
}

/// Maps a key to a path under `root`, refusing `..`, absolute paths, and (once the file
/// exists) anything whose real path, symlinks resolved, lies outside `root`.
fn object_path(root: &Path, key: &str) -> Option<PathBuf> {
    if key.is_empty() || key.contains('\0') || key.contains('\\') {
        return None;
    }
    let relative = Path::new(key);
    if relative
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return None;
    }
    let joined = root.join(relative);
    // Resolve symlinks of the deepest existing ancestor and check it stays inside.
    let mut existing = joined.as_path();
    while !existing.exists() {
        existing = existing.parent()?;
    }
    let real = std::fs::canonicalize(existing).ok()?;
    real.starts_with(root).then_some(joined)
}

async fn serve(
    req: &HttpRequest,
    state: &State,
    file_path: &Path,
    query: &str,
    signed_params: &[String],
    resource: &str,
) -> HttpResponse {
    let file = match NamedFile::open(file_path) {
        Ok(file) if file.metadata().is_file() => file,
        _ => {
            return cos_error(
                StatusCode::NOT_FOUND,
                "NoSuchKey",
                "The specified key does not exist.",
                resource,
                &state.bucket,
            )
        }
    };
    let overrides: Vec<(String, String)> =
        actix_web::web::Query::<Vec<(String, String)>>::from_query(query)
            .map(|q| q.into_inner())
            .unwrap_or_default();
    // Only overrides the signature covers count, as at COS: an unsigned
    // `response-content-type=text/html` appended to a URL changes nothing.
    let param = |name: &str| {
        if !signed_params.iter().any(|signed| signed == name) {
            return None;
        }
        overrides
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let mut file = file.disable_content_disposition();
    if let Some(content_type) = param("response-content-type").and_then(|v| v.parse().ok()) {
        file = file.set_content_type(content_type);
    }
    let mut response = file.into_response(req);
    let headers = response.headers_mut();
    if let Some(value) =
        param("response-content-disposition").and_then(|v| HeaderValue::from_str(&v).ok())
    {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    if let Some(value) =
        param("response-cache-control").and_then(|v| HeaderValue::from_str(&v).ok())
    {
        headers.insert(header::CACHE_CONTROL, value);
    }
    headers.insert(
        header::SERVER,
        HeaderValue::from_static("tencent-cos (image-url dev-origin)"),
    );
    response
}

async fn store(
    mut payload: web::Payload,
    state: &State,
    file_path: &Path,
    resource: &str,
) -> HttpResponse {
    let internal = |e: std::io::Error| {
        tracing::warn!(error = %e, "dev-origin: storing an object failed");
        cos_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "We encountered an internal error.",
            resource,
            &state.bucket,
        )
    };
    if file_path.is_dir() {
        return cos_error(
            StatusCode::CONFLICT,
            "InvalidObjectName",
            "The key names a directory.",
            resource,
            &state.bucket,
        );
    }
    let Some(parent) = file_path.parent() else {
        return cos_error(
            StatusCode::BAD_REQUEST,
            "InvalidObjectName",
            "Invalid key.",
            resource,
            &state.bucket,
        );
    };
    if let Err(e) = tokio::fs::create_dir_all(parent).await {
        return internal(e);
    }
    // Write to a temporary file beside the target, then rename: readers never see half
    // an object.
    let temp = parent.join(format!(".dev-origin-upload-{}", request_id()));
    let mut too_large = false;
    let result = async {
        let mut out = tokio::fs::File::create(&temp).await?;
        let mut written: u64 = 0;
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| std::io::Error::other(e.to_string()))?;
            written += chunk.len() as u64;
            if written > state.max_put_bytes {
                too_large = true;
                return Err(std::io::Error::other("the object is too large"));
            }
            out.write_all(&chunk).await?;
        }
        out.flush().await?;
        out.sync_all().await?;
        tokio::fs::rename(&temp, file_path).await
    }
    .await;
    if let Err(e) = result {
        if let Err(cleanup) = tokio::fs::remove_file(&temp).await {
            tracing::debug!(error = %cleanup, "dev-origin: removing a partial upload failed");
        }
        if too_large {
            return cos_error(
                StatusCode::BAD_REQUEST,
                "EntityTooLarge",
                "Your proposed upload exceeds the maximum allowed object size.",
                resource,
                &state.bucket,
            );
        }
        return internal(e);
    }
    HttpResponse::Ok().finish()
}
