//! The image-url HTTP API, on actix-web.
//!
//! `proxy-http` holds no policy: it parses and authorises requests, calls
//! [`image_url_service::ImageUrlService`], and renders the answer. Endpoints (keys may
//! contain `/` and any UTF-8, percent-encoded in the path):
//!
//! | endpoint | what |
//! |---|---|
//! | `GET /api/v1/images/{key}/proxy?mode=redirect\|proxy` | 302 to the presigned URL, or the object streamed through |
//! | `GET /api/v1/images/{key}/status` | what the cache knows about the key |
//! | `POST /api/v1/images/{key}/refresh` | admin: sign a new URL now |
//! | `GET\|POST /api/v1/images/batch/urls` | URLs for many keys |
//! | `GET /api/v1/images/stats` | admin: service statistics |
//! | `POST /api/v1/images/cleanup` | admin: remove expired entries |
//! | `POST /api/v1/images/preload` | admin: sign and cache keys ahead of use |
//! | `GET /livez`, `/readyz`, `/metrics`, `/api/v1/openapi.json` | operations |
//! | `GET /static/smart-image.js` | the `<smart-image>` front-end component |
//!
//! Errors are RFC 9457 `application/problem+json` with a request id (also echoed in
//! `X-Request-Id`); no body or log line carries a secret or a signed URL.
//!
//! ```no_run
//! # async fn run(service: image_url_service::ImageUrlService) -> std::io::Result<()> {
//! use proxy_http::{ApiConfig, AppState, HttpServerHandle};
//! let state = AppState::new(service, ApiConfig::default());
//! let server = HttpServerHandle::start(state, "127.0.0.1:0".parse().unwrap(), 1)?;
//! println!("listening on {}", server.addr());
//! server.stop(true).await;
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use actix_web::{web, App, HttpServer};
use image_url_service::ImageUrlService;

mod access_log;
mod assets;
mod cors;
mod error;
mod front;
mod handlers;
mod metrics;
mod openapi;
mod proxy;
mod rate_limit;
pub mod request_id;
#[cfg(test)]
mod test_support;
mod webhook;

pub use access_log::{
    AccessLines, AccessLog, AccessLogError, AccessLogFormat, AccessLogOptions, AccessLogWriter,
};
pub use assets::smart_image_path;
pub use cors::InvalidOrigin;
pub use error::{ApiError, Problem};
pub use metrics::Metrics;
pub use openapi::openapi_json;
pub use rate_limit::RateLimitConfig;
pub use webhook::{webhook_payload, WebhookSink};

/// HTTP-level settings.
#[derive(Clone)]
#[non_exhaustive]
pub struct ApiConfig {
    /// Bearer tokens of the admin endpoints, any of which is accepted (several, for
    /// rotation); none disables the admin endpoints (403). The binary refuses tokens
    /// shorter than 16 bytes.
    pub admin_tokens: Vec<String>,
    /// Largest JSON body accepted (batch, preload), bytes (default 256 KiB); beyond: 413.
    pub max_body_bytes: usize,
    /// Most keys one preload may ask for (default 1000).
    pub max_preload_keys: usize,
    /// Time a client has to send a request's head (default 5 s); a slower one (slowloris)
    /// gets 408 and is disconnected. Also the idle time allowed on a kept-alive
    /// connection.
    pub header_timeout: Duration,
    /// Per-client rate limit of the public endpoints (default off).
    pub rate_limit: RateLimitConfig,
    /// Proxy mode: time to connect to the origin (default 5 s).
    pub proxy_connect_timeout: Duration,
    /// Proxy mode: longest silence while reading from the origin (default 30 s).
    pub proxy_read_timeout: Duration,
    /// Proxy mode: longest time one origin fetch may take, from connecting to the last
    /// byte of the body (default 300 s). Past it a fetch that has not answered yet is a
    /// 504; one that is streaming is cut off (the client sees a short body).
    pub proxy_timeout: Duration,
    /// Proxy mode: largest object streamed, bytes (default 256 MiB); checked on the
    /// origin's `Content-Length` (422 before streaming) and enforced on the stream.
    pub proxy_max_object_bytes: u64,
    /// Proxy mode: streams at once (default 256); beyond, 503 with `Retry-After`.
    pub proxy_max_concurrent: usize,
    /// Longest `max-age` of a redirect (default 3600 s).
    pub max_redirect_age: Duration,
    /// Origins whose pages may call the API (CORS), e.g. `https://app.example.com`;
    /// `"*"` for any (never with credentials). Default: none. Set with
    /// [`ApiConfig::cors_origins`], which checks them.
    pub cors_origins: Vec<String>,
    /// Where access lines go: by default `tracing` events at `info` with the target
    /// `image_url::access`; [`ApiConfig::access_log`] sends them to an [`AccessLog`]
    /// (formatted and written off the workers).
    pub access_log: AccessLines,
    /// Whether each request runs in a `request` span carrying its id (default true); see
    /// [`request_id::RequestContext::with_request_spans`].
    pub request_spans: bool,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            admin_tokens: Vec::new(),
            max_body_bytes: 256 * 1024,
            max_preload_keys: 1000,
            rate_limit: RateLimitConfig::default(),
            header_timeout: Duration::from_secs(5),
            proxy_connect_timeout: Duration::from_secs(5),
            proxy_read_timeout: Duration::from_secs(30),
            proxy_timeout: Duration::from_secs(300),
            max_redirect_age: Duration::from_secs(3600),
            proxy_max_object_bytes: 256 * 1024 * 1024,
            proxy_max_concurrent: 256,
            cors_origins: Vec::new(),
            access_log: AccessLines::Tracing,
            request_spans: true,
        }
    }
}

/// The admin tokens are shown as a count only.
impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field(
                "admin_tokens",
                &format_args!("<{} redacted>", self.admin_tokens.len()),
            )
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_preload_keys", &self.max_preload_keys)
            .field("rate_limit", &self.rate_limit)
            .field("header_timeout", &self.header_timeout)
            .field("proxy_connect_timeout", &self.proxy_connect_timeout)
            .field("proxy_read_timeout", &self.proxy_read_timeout)
            .field("proxy_timeout", &self.proxy_timeout)
            .field("proxy_max_object_bytes", &self.proxy_max_object_bytes)
            .field("proxy_max_concurrent", &self.proxy_max_concurrent)
            .field("max_redirect_age", &self.max_redirect_age)
            .field("cors_origins", &self.cors_origins)
            .field("access_log", &self.access_log)
            .field("request_spans", &self.request_spans)
            .finish()
    }
}

impl ApiConfig {
    /// Adds an admin token (`None` or an empty token adds nothing).
    pub fn admin_token(mut self, token: Option<String>) -> Self {
        self.admin_tokens.extend(token.filter(|t| !t.is_empty()));
        self
    }

    /// Replaces the CORS origins: each `scheme://host[:port]` (a trailing `/` is dropped),
    /// or `"*"`.
    pub fn cors_origins<S: AsRef<str>>(
        mut self,
        origins: impl IntoIterator<Item = S>,
    ) -> Result<Self, InvalidOrigin> {
        self.cors_origins = origins
            .into_iter()
            .map(|o| cors::check_origin(o.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(self)
    }

    /// Sends access lines to `log` instead of `tracing`.
    pub fn access_log(mut self, log: AccessLog) -> Self {
        self.access_log = AccessLines::To(log);
        self
    }

    /// Replaces the admin tokens (empty ones are ignored).
    pub fn admin_tokens<S: Into<String>>(mut self, tokens: impl IntoIterator<Item = S>) -> Self {
        self.admin_tokens = tokens
            .into_iter()
            .map(Into::into)
            .filter(|t: &String| !t.is_empty())
            .collect();
        self
    }
}

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    service: Result<ImageUrlService, String>,
    config: ApiConfig,
    upstream: reqwest::Client,
    metrics: Metrics,
    resigns: rate_limit::KeyedLimiter<String>,
    limiter: rate_limit::ClientLimiter,
    proxy_slots: std::sync::Arc<tokio::sync::Semaphore>,
}

impl AppState {
    /// The state of a server in front of `service`.
    pub fn new(service: ImageUrlService, config: ApiConfig) -> Self {
        Self::build(Ok(service), config)
    }

    /// The state of a server that cannot sign yet (e.g. no COS credentials): URL
    /// endpoints answer 503 with `why`; health, metrics and the OpenAPI document work.
    pub fn unconfigured(why: impl Into<String>, config: ApiConfig) -> Self {
        Self::build(Err(why.into()), config)
    }

    fn build(service: Result<ImageUrlService, String>, config: ApiConfig) -> Self {
        let upstream = proxy::client(&config);
        let limiter = rate_limit::ClientLimiter::new(&config.rate_limit);
        let proxy_slots = std::sync::Arc::new(tokio::sync::Semaphore::new(
            config.proxy_max_concurrent.max(1),
        ));
        AppState {
            limiter,
            proxy_slots,
            service,
            config,
            upstream,
            metrics: Metrics::new(),
            resigns: proxy::resign_limiter(),
        }
    }

    pub(crate) fn service(&self) -> Result<&ImageUrlService, ApiError> {
        self.service
            .as_ref()
            .map_err(|why| ApiError::NotConfigured(why.clone()))
    }

    /// Counts a public request against its client's rate; 429 when over it.
    pub(crate) fn limit(&self, req: &actix_web::HttpRequest) -> Result<(), ApiError> {
        if !self.limiter.enabled() {
            return Ok(());
        }
        match self.limiter.client_of(req) {
            Some(client) => self
                .limiter
                .check(client)
                .map_err(ApiError::TooManyRequests),
            None => Ok(()),
        }
    }

    /// The metrics of this state's server.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

pub use handlers::json_config;

/// Registers every route on an actix `App`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    handlers::routes(cfg, handlers::Surface::All);
}

/// More routes for the public listener of an [`HttpServerHandle`] (the binary's demo
/// page), registered before the API's own.
pub type ExtraRoutes = std::sync::Arc<dyn Fn(&mut web::ServiceConfig) + Send + Sync>;

/// A running HTTP server.
#[derive(Debug)]
pub struct HttpServerHandle {
    addr: SocketAddr,
    handle: actix_web::dev::ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    /// The private admin listener, when there is one.
    admin: Option<Box<HttpServerHandle>>,
}

impl HttpServerHandle {
    /// Binds `listen` (port 0: any free port) with `workers` threads and starts serving.
    /// Signals are not handled here: whoever owns the handle stops it.
    pub fn start(state: AppState, listen: SocketAddr, workers: usize) -> std::io::Result<Self> {
        Self::start_split(state, listen, None, workers)
    }

    /// [`HttpServerHandle::start`], with the admin endpoints, `/metrics` and the OpenAPI
    /// document on `admin_listen` only (a private address) when it is given; the public
    /// address then serves the URL endpoints and health checks only.
    pub fn start_split(
        state: AppState,
        listen: SocketAddr,
        admin_listen: Option<SocketAddr>,
        workers: usize,
    ) -> std::io::Result<Self> {
        Self::start_with(state, listen, admin_listen, workers, None)
    }

    /// [`HttpServerHandle::start_split`] with `extra` routes on the public listener.
    pub fn start_with(
        state: AppState,
        listen: SocketAddr,
        admin_listen: Option<SocketAddr>,
        workers: usize,
        extra: Option<ExtraRoutes>,
    ) -> std::io::Result<Self> {
        let state = web::Data::new(state);
        let (public, admin) = match admin_listen {
            Some(admin_listen) => (
                handlers::Surface::Public,
                Some(Box::new(Self::serve(
                    state.clone(),
                    admin_listen,
                    1,
                    handlers::Surface::Admin,
                    None,
                )?)),
            ),
            None => (handlers::Surface::All, None),
        };
        let mut server = Self::serve(state, listen, workers, public, extra)?;
        server.admin = admin;
        Ok(server)
    }

    /// The admin listener's address, when the admin endpoints have their own.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|admin| admin.addr)
    }

    fn serve(
        state: web::Data<AppState>,
        listen: SocketAddr,
        workers: usize,
        surface: handlers::Surface,
        extra: Option<ExtraRoutes>,
    ) -> std::io::Result<Self> {
        let metrics = state.metrics.clone();
        let header_timeout = state.config.header_timeout;
        let server = HttpServer::new(move || {
            let origins = &state.config.cors_origins;
            App::new()
                .app_data(state.clone())
                .app_data(handlers::json_config(state.config.max_body_bytes))
                // Innermost: the key routes skip the router, inside the request's id,
                // metrics and log like every other route.
                .wrap(front::KeyRouteFront::new(handlers::KeyRoutes::on(surface)))
                .wrap(
                    request_id::RequestContext::new(metrics.clone())
                        .with_access_log(state.config.access_log.clone())
                        .with_request_spans(state.config.request_spans),
                )
                // Outermost, so that preflights are answered before anything else; off
                // (no per-request cost) unless origins are configured.
                .wrap(actix_web::middleware::Condition::new(
                    !origins.is_empty(),
                    cors::middleware(origins),
                ))
                .configure(|cfg| {
                    if let Some(extra) = &extra {
                        extra(cfg);
                    }
                    handlers::routes(cfg, surface)
                })
        })
        .workers(workers.max(1))
        .client_request_timeout(header_timeout)
        .keep_alive(header_timeout)
        .disable_signals()
        .shutdown_timeout(30)
        .bind(listen)?;
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        let task = tokio::spawn(server);
        Ok(HttpServerHandle {
            addr,
            handle,
            task,
            admin: None,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the server: with `graceful`, stops accepting and lets in-flight requests
    /// finish (up to 30 s) before returning.
    pub async fn stop(self, graceful: bool) {
        if let Some(admin) = self.admin {
            Box::pin(admin.stop(graceful)).await;
        }
        self.handle.stop(graceful).await;
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mounted in an application's own `App`, without [`request_id::RequestContext`],
    /// the routes still answer problems whose body carries the id of the header.
    #[actix_web::test]
    async fn problems_carry_a_request_id_without_the_middleware() {
        use actix_web::test;
        let state = AppState::unconfigured("COS credentials missing", ApiConfig::default());
        let app = test::init_service(
            App::new()
                .app_data(web::Data::new(state))
                .app_data(json_config(1024))
                .configure(configure),
        )
        .await;
        for request in [
            test::TestRequest::get().uri("/api/v1/images/a.jpg/proxy"),
            test::TestRequest::get().uri("/nowhere"),
            test::TestRequest::post()
                .uri("/api/v1/images/batch/urls")
                .insert_header(("content-type", "application/json"))
                .set_payload("{"),
        ] {
            let response = test::call_service(&app, request.to_request()).await;
            assert!(response.status().is_client_error() || response.status().is_server_error());
            let header = response
                .headers()
                .get(request_id::REQUEST_ID_HEADER)
                .expect("an X-Request-Id header")
                .to_str()
                .unwrap()
                .to_owned();
            let body: serde_json::Value = test::read_body_json(response).await;
            assert_eq!(body["request_id"], header.as_str(), "{body}");
            assert!(!header.is_empty());
        }
    }

    #[test]
    fn debug_never_shows_admin_tokens() {
        let config = ApiConfig::default().admin_tokens(["secret-admin-token-0123"]);
        let shown = format!("{config:?}");
        assert!(!shown.contains("secret-admin-token"), "{shown}");
        assert!(shown.contains("<1 redacted>"), "{shown}");
    }
}
