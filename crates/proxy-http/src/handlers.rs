//! Route table and handlers. Each handler parses, authorises, calls the service, renders.

use std::borrow::Cow;
use std::collections::BTreeMap;

use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use cos_sign::unix_now;
use cos_sign::ObjectKey;
use image_url_service::{ImageUrl, ImageUrlService, ServiceError, UrlNow, UrlOptions};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::{proxy, ApiError, AppState};

const PREFIX: &str = "/api/v1/images/";

/// The key routes are matched by hand ([`key_route`]) rather than with `{key:.+}`
/// patterns: actix-router evaluates those with a regex VM, which cost a tenth of the
/// redirect endpoint's throughput. They are registered first, behind a guard, so that the
/// hot redirect path is not compared with every other route before it is found.
pub(crate) fn routes(cfg: &mut web::ServiceConfig, surface: Surface) {
    let not_allowed = || web::to(|| async { Err::<HttpResponse, _>(ApiError::MethodNotAllowed) });
    let key_routes = KeyRoutes::on(surface);
    let KeyRoutes { public, admin } = key_routes;
    cfg.service(key_routes);
    if public {
        cfg.service(
            web::resource("/api/v1/images/batch/urls")
                .route(web::get().to(batch_get))
                .route(web::post().to(batch_post))
                .default_service(not_allowed()),
        );
    }
    if admin {
        cfg.service(
            web::resource("/api/v1/images/stats")
                .route(web::get().to(stats))
                .default_service(not_allowed()),
        )
        .service(
            web::resource("/api/v1/alerts")
                .route(web::get().to(alerts))
                .default_service(not_allowed()),
        )
        .service(
            web::resource("/api/v1/tasks")
                .route(web::get().to(tasks))
                .default_service(not_allowed()),
        )
        .service(
            web::resource("/api/v1/images/cleanup")
                .route(web::post().to(cleanup))
                .default_service(not_allowed()),
        )
        .service(
            web::resource("/api/v1/images/preload")
                .route(web::post().to(preload))
                .default_service(not_allowed()),
        )
        .service(web::resource("/metrics").route(web::get().to(metrics)))
        .service(web::resource("/api/v1/openapi.json").route(web::get().to(openapi)));
    }
    if public {
        crate::assets::routes(cfg);
    }
    cfg.service(web::resource("/livez").route(web::get().to(livez)))
        .service(web::resource("/readyz").route(web::get().to(readyz)))
        .default_service(web::to(|| async {
            Err::<HttpResponse, _>(ApiError::NotFound)
        }));
}

/// The key routes, registered as one service behind a guard on the path: a prefix
/// `ResourceDef` (compared without a regex) and the handler as the endpoint. Not a
/// `web::scope("")`, which would wrap the endpoint in a second routing table and a
/// second boxed future on every redirect. The bundled server also puts them ahead of
/// the router ([`crate::front::KeyRouteFront`]), with the same [`KeyRoutes::serves`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyRoutes {
    public: bool,
    admin: bool,
}

impl KeyRoutes {
    /// The key routes a listener serving `surface` answers.
    pub(crate) fn on(surface: Surface) -> Self {
        KeyRoutes {
            public: surface != Surface::Admin,
            admin: surface != Surface::Public,
        }
    }

    /// Whether `path` is a key route this listener answers: `…/refresh` on the admin
    /// surface, `…/proxy` and `…/status` on the public one.
    pub(crate) fn serves(self, path: &str) -> bool {
        key_route(path).is_some_and(|(suffix, _)| {
            if suffix == "/refresh" {
                self.admin
            } else {
                self.public
            }
        })
    }
}

impl actix_web::dev::HttpServiceFactory for KeyRoutes {
    fn register(self, config: &mut actix_web::dev::AppService) {
        let guard = actix_web::guard::fn_guard(move |ctx| self.serves(ctx.head().uri.path()));
        // A plain service rather than `web::to`: the handler machinery (extracting the
        // request again, the responder, a second response wrapper) cost about 200
        // instructions a redirect, and this endpoint needs none of it.
        config.register_service(
            actix_web::dev::ResourceDef::root_prefix(""),
            Some(vec![Box::new(guard)]),
            actix_web::dev::fn_service(serve_key_route),
            None,
        );
    }
}

/// Which endpoints a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Surface {
    /// Everything (one listener).
    All,
    /// The URL endpoints (`/proxy`, `/status`, batch) and health.
    Public,
    /// Admin endpoints, `/metrics`, the OpenAPI document, and health.
    Admin,
}

/// Which key route `path` is — `/api/v1/images/{key}/proxy`, `/status` or `/refresh` with
/// a non-empty key — as (suffix, route pattern for metrics and logs).
///
/// This runs three times per request (the guard, the dispatch, the route label), so it
/// compares fixed-size arrays, which compile to a few word comparisons, where
/// `strip_prefix` and `ends_with` would each call `memcmp`.
pub(crate) fn key_route(path: &str) -> Option<(&'static str, &'static str)> {
    const PREFIX_BYTES: &[u8; PREFIX.len()] = match PREFIX.as_bytes().first_chunk() {
        Some(bytes) => bytes,
        None => panic!("PREFIX has a fixed length"),
    };
    let rest = path.as_bytes().split_first_chunk::<{ PREFIX.len() }>();
    let rest = match rest {
        Some((prefix, rest)) if prefix == PREFIX_BYTES => rest,
        _ => return None,
    };
    // The key before the suffix is not empty: `rest` is longer than the suffix.
    if rest.len() > 6 && rest.last_chunk::<6>() == Some(b"/proxy") {
        Some(("/proxy", "/api/v1/images/{key}/proxy"))
    } else if rest.len() > 7 && rest.last_chunk::<7>() == Some(b"/status") {
        Some(("/status", "/api/v1/images/{key}/status"))
    } else if rest.len() > 8 && rest.last_chunk::<8>() == Some(b"/refresh") {
        Some(("/refresh", "/api/v1/images/{key}/refresh"))
    } else {
        None
    }
}

/// The key routes' endpoint, errors rendered as problems: a future that does its work
/// when first polled. A `GET …/proxy` the service answers at once (a cached redirect, a
/// refusal) is answered by plain calls in that poll; the rest waits, boxed, in
/// [`PendingProxy::finish`] or, for the other routes, [`dispatch_key_route`].
///
/// Holding only the request until then keeps it a few words: every layer above moves
/// the future by value, and a future holding a ready response was large enough that
/// each of those moves was a `memcpy` (about 90 instructions a redirect).
pub(crate) fn serve_key_route(req: ServiceRequest) -> KeyRouteFuture {
    KeyRouteFuture::Start(req)
}

/// The future of [`serve_key_route`].
pub(crate) enum KeyRouteFuture {
    /// Not polled yet.
    Start(ServiceRequest),
    /// Waiting for the service, the origin or another route's handler.
    Rest(futures::future::LocalBoxFuture<'static, Result<ServiceResponse, actix_web::Error>>),
    /// Answered: polled again, it answers an error rather than panicking.
    Done,
}

impl std::future::Future for KeyRouteFuture {
    type Output = Result<ServiceResponse, actix_web::Error>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        use std::task::Poll;
        let this = self.get_mut();
        if let KeyRouteFuture::Rest(rest) = this {
            let polled = rest.as_mut().poll(cx);
            if polled.is_ready() {
                *this = KeyRouteFuture::Done;
            }
            return polled;
        }
        let KeyRouteFuture::Start(req) = std::mem::replace(this, KeyRouteFuture::Done) else {
            return Poll::Ready(Err(actix_web::error::ErrorInternalServerError(
                "the key route's future was polled after it answered",
            )));
        };
        let (req, _payload) = req.into_parts();
        let now = proxy_route_state(&req).map(|state| proxy_now(&req, state));
        let rest: futures::future::LocalBoxFuture<'static, _> = match now {
            Some(ProxyNow::Answered(result)) => return Poll::Ready(respond(req, result)),
            Some(ProxyNow::Later(pending)) => Box::pin(async move {
                let result = pending.finish(&req).await;
                respond(req, result)
            }),
            None => Box::pin(async move {
                let result = dispatch_key_route(&req).await;
                respond(req, result)
            }),
        };
        *this = KeyRouteFuture::Rest(rest);
        // Polled at once: the wait may already be over, and its waker is set here.
        std::pin::Pin::new(this).poll(cx)
    }
}

/// The state, when `req` is a `GET …/proxy` and the state is registered; `None` leaves
/// the request to [`dispatch_key_route`] (another route or method, or the missing
/// state's problem).
fn proxy_route_state(req: &HttpRequest) -> Option<&web::Data<AppState>> {
    let proxy_get = matches!(key_route(req.uri().path()), Some(("/proxy", _)))
        && req.method() == actix_web::http::Method::GET;
    proxy_get
        .then(|| req.app_data::<web::Data<AppState>>())
        .flatten()
}

fn respond(
    req: HttpRequest,
    result: Result<HttpResponse, ApiError>,
) -> Result<ServiceResponse, actix_web::Error> {
    Ok(ServiceResponse::new(
        req,
        result.unwrap_or_else(HttpResponse::from_error),
    ))
}

/// How far `GET …/proxy` got without waiting.
enum ProxyNow {
    /// The response (or its problem).
    Answered(Result<HttpResponse, ApiError>),
    /// A redirect whose URL needs a wait, or a stream.
    Later(PendingProxy),
}

/// A `GET …/proxy` that waits, owning what it needs (checked, counted and parsed once,
/// by [`proxy_now`]).
struct PendingProxy {
    state: web::Data<AppState>,
    key: ObjectKey,
    options: Cow<'static, UrlOptions>,
    wait: Waiting,
}

/// What a [`PendingProxy`] waits for.
enum Waiting {
    /// The URL to redirect to.
    Url(image_url_service::PendingUrl),
    /// The object, streamed through (`mode=proxy`).
    Stream,
}

impl PendingProxy {
    async fn finish(self, req: &HttpRequest) -> Result<HttpResponse, ApiError> {
        let service = self.state.service()?;
        match self.wait {
            Waiting::Url(url) => {
                let answer = service.finish_url(url, &self.key, &self.options).await?;
                redirect_response(answer, service, &self.state)
            }
            // Boxed: streaming from COS holds a larger future than a redirect needs.
            Waiting::Stream => {
                Box::pin(proxy::stream(
                    req,
                    &self.state,
                    service,
                    &self.key,
                    &self.options,
                ))
                .await
            }
        }
    }
}

/// `GET /api/v1/images/{key}/proxy` as far as it goes without waiting: the rate limit,
/// the key, the options and the mode, in that order, then the URL if the service has it
/// at once.
fn proxy_now(req: &HttpRequest, state: &web::Data<AppState>) -> ProxyNow {
    let prepared = (|| {
        state.limit(req)?;
        let key = key_from_path(req, "/proxy")?;
        let query = query_pairs(req);
        let service = state.service()?;
        let options = public_options(service, &key, &query)?;
        let stream = match mode_param(&query) {
            None | Some("redirect") => false,
            Some("proxy") => true,
            Some(other) => {
                return Err(ApiError::BadRequest(format!(
                    "mode must be redirect or proxy, not {other:?}"
                )))
            }
        };
        Ok::<_, ApiError>((key, service, options, stream))
    })();
    let (key, service, options, stream) = match prepared {
        Ok(prepared) => prepared,
        Err(err) => return ProxyNow::Answered(Err(err)),
    };
    let wait = if stream {
        Waiting::Stream
    } else {
        match service.get_url_now(&key, &options) {
            UrlNow::Ready(Ok(answer)) => {
                return ProxyNow::Answered(redirect_response(answer, service, state))
            }
            UrlNow::Ready(Err(err)) => return ProxyNow::Answered(Err(err.into())),
            UrlNow::Later(url) => Waiting::Url(url),
        }
    };
    ProxyNow::Later(PendingProxy {
        state: state.clone(),
        key,
        options,
        wait,
    })
}

/// The `mode` query parameter.
fn mode_param(query: &[(String, String)]) -> Option<&str> {
    query
        .iter()
        .find(|(k, _)| k == "mode")
        .map(|(_, v)| v.as_str())
}

/// The 302 to `answer`'s URL, cacheable until the server would re-sign it.
fn redirect_response(
    answer: ImageUrl,
    service: &ImageUrlService,
    state: &AppState,
) -> Result<HttpResponse, ApiError> {
    let cache_control = redirect_cache_control(
        answer.ttl_remaining,
        service.config().pre_refresh,
        state.config.max_redirect_age,
    );
    // Built directly rather than through `HttpResponse::Found()`'s builder: this is the
    // hot path, and the builder converts each header pair generically.
    let location = shared_location(answer.url).map_err(|_| {
        ApiError::Service(ServiceError::InvalidConfig(
            "the signed URL is not a valid Location header (check cos.domain)".into(),
        ))
    })?;
    let mut response = HttpResponse::new(actix_web::http::StatusCode::FOUND);
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, location);
    headers.insert(header::CACHE_CONTROL, cache_control);
    Ok(response)
}

/// `/api/v1/images/{key}/proxy|status|refresh`, or 404.
async fn dispatch_key_route(req: &HttpRequest) -> Result<HttpResponse, ApiError> {
    let Some((suffix, _)) = key_route(req.uri().path()) else {
        return Err(ApiError::NotFound);
    };
    // Taken from the request rather than as a second extractor: one extractor future
    // fewer on every redirect. Borrowed, not cloned: every worker shares the state's
    // reference count, and a clone would write it twice per request from each of them.
    let state = req.app_data::<web::Data<AppState>>().ok_or_else(|| {
        ApiError::Service(ServiceError::Internal(
            "the application state is not registered".into(),
        ))
    })?;
    let method = req.method();
    match suffix {
        // The endpoint answers these itself (`proxy_now`); here only when it could not.
        "/proxy" if method == actix_web::http::Method::GET => proxy_or_redirect(req, state).await,
        // The other routes' futures are boxed: actix allocates and copies this future
        // whole for every request, so its size is that of its largest branch.
        "/status" if method == actix_web::http::Method::GET => {
            state.limit(req)?;
            Box::pin(status(req, state)).await
        }
        "/refresh" if method == actix_web::http::Method::POST => {
            Box::pin(refresh(req, state)).await
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

/// The JSON extractor settings the routes expect: bodies of at most `limit` bytes (413
/// beyond) and errors rendered as problems. Give it to the `App` the routes are mounted
/// on (`App::new().app_data(json_config(limit)).configure(proxy_http::configure)`).
pub fn json_config(limit: usize) -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(limit)
        .error_handler(move |err, _req| match err {
            actix_web::error::JsonPayloadError::Overflow { .. }
            | actix_web::error::JsonPayloadError::OverflowKnownLength { .. } => {
                ApiError::PayloadTooLarge(limit).into()
            }
            err => ApiError::BadRequest(format!("invalid JSON body: {err}")).into(),
        })
}

/// Reads a JSON body of at most `limit` bytes (413 beyond) and parses it. For admin
/// endpoints, which read their body only once the token is checked.
async fn read_json<T: serde::de::DeserializeOwned>(
    mut payload: web::Payload,
    limit: usize,
) -> Result<T, ApiError> {
    use futures::StreamExt;
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("reading the body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

/// The object key between the prefix and `suffix`, percent-decoded from the raw path.
fn key_from_path(req: &HttpRequest, suffix: &str) -> Result<ObjectKey, ApiError> {
    let raw = req
        .uri()
        .path()
        .strip_prefix(PREFIX)
        .and_then(|p| p.strip_suffix(suffix))
        .ok_or(ApiError::NotFound)?;
    // Without a `%` there is nothing to decode, and the path is already a `str`: no
    // second UTF-8 check.
    let decoded = if raw.as_bytes().contains(&b'%') {
        percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| {
                ApiError::BadRequest("the image key is not UTF-8 once percent-decoded".into())
            })?
    } else {
        std::borrow::Cow::Borrowed(raw)
    };
    ObjectKey::new(&decoded).map_err(|e| ApiError::Service(ServiceError::InvalidKey(e)))
}

/// Query parameters shared by the URL endpoints.
fn url_options(query: &[(String, String)]) -> Result<UrlOptions, ApiError> {
    let mut options = UrlOptions::new();
    for (name, value) in query {
        options = match name.as_str() {
            "process" => options.process(value),
            "content_type" | "response-content-type" => options.content_type(value),
            "content_disposition" | "response-content-disposition" => {
                options.content_disposition(value)
            }
            // `exp` and `sig` are a signed link's, checked by `public_options`; `force`
            // is the batch endpoint's (`force_param`).
            "mode" | "key" | "exp" | "sig" | "force" => options,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {other:?}"
                )))
            }
        };
    }
    Ok(options)
}

/// The URL options of a public request, with its signed link checked when the server
/// requires links (over the options as the client gave them), then normalised.
fn public_options(
    service: &ImageUrlService,
    key: &ObjectKey,
    query: &[(String, String)],
) -> Result<Cow<'static, UrlOptions>, ApiError> {
    /// What a request without parameters gets: nothing to parse or normalise (the
    /// defaults are normal), and nothing to build, move or drop per request.
    static DEFAULTS: UrlOptions = UrlOptions::DEFAULT;
    let access = service.access();
    if query.is_empty() && !access.requires_links() {
        return Ok(Cow::Borrowed(&DEFAULTS));
    }
    let options = url_options(query)?;
    if access.requires_links() {
        let param = |name: &str| {
            query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        access.verify_link(key, &options, param("exp"), param("sig"), unix_now())?;
    }
    Ok(Cow::Owned(access.normalize_options(options)?))
}

/// The URL options of an admin request (no link needed), normalised.
fn admin_options(service: &ImageUrlService, req: &HttpRequest) -> Result<UrlOptions, ApiError> {
    Ok(service
        .access()
        .normalize_options(url_options(&query_pairs(req))?)?)
}

/// The batch endpoint's `force`: sign new URLs rather than hand out cached ones (after a
/// URL failed to load in a browser).
fn force_param(query: &[(String, String)]) -> Result<bool, ApiError> {
    match query.iter().rev().find(|(k, _)| k == "force") {
        None => Ok(false),
        Some((_, v)) => match v.as_str() {
            "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            other => Err(ApiError::BadRequest(format!(
                "force must be true or false, not {other:?}"
            ))),
        },
    }
}

fn query_pairs(req: &HttpRequest) -> Vec<(String, String)> {
    let query = req.query_string();
    // Most redirects have no query: skip the parser's set-up (about 150 instructions).
    if query.is_empty() {
        return Vec::new();
    }
    url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

fn require_admin(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    let tokens = &state.config.admin_tokens;
    if tokens.is_empty() {
        return Err(ApiError::AdminDisabled);
    }
    // `Authorization: Bearer <token>`, the scheme in any case (RFC 9110).
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .ok_or(ApiError::Unauthorized)?;
    // Every configured token is compared, each in constant time over SHA-256 digests, so
    // neither the position of a difference nor a token's length shows in the timing.
    let given = Sha256::digest(given.as_bytes());
    let matches = tokens.iter().fold(false, |found, token| {
        found | constant_time_eq(&given, &Sha256::digest(token.as_bytes()))
    });
    if matches {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// Compares two digests without revealing where the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `GET /api/v1/images/{key}/proxy`: a 302 to the presigned URL (default), or with
/// `mode=proxy` the object streamed through.
#[utoipa::path(get, path = "/api/v1/images/{key}/proxy",
    params(("key" = String, Path, description = "Object key, percent-encoded"),
           ("mode" = Option<String>, Query, description = "redirect (default) or proxy")),
    responses((status = 302, description = "Redirect to the presigned URL"),
              (status = 200, description = "The object (proxy mode)"),
              (status = 206, description = "Partial content (proxy mode, Range)"),
              (status = 304, description = "Not modified (proxy mode)"),
              (status = 400, description = "Invalid key", body = crate::Problem),
              (status = 404, description = "No such image (proxy mode)", body = crate::Problem)))]
pub(crate) async fn proxy_or_redirect(
    req: &HttpRequest,
    state: &web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    match proxy_now(req, state) {
        ProxyNow::Answered(result) => result,
        ProxyNow::Later(pending) => pending.finish(req).await,
    }
}

/// The `Location` value for a signed URL, as [`location`] makes it, from the value this
/// thread made last for the same URL text when there is one.
///
/// A hot entry hands out the same `Arc<str>` hit after hit: sharing the value made for
/// it costs a reference count, where making it again allocates its owner and checks
/// every byte (about 200 instructions, 1 % of a redirect). Each thread keeps a few
/// values in a [`url_cache::by_text::TextTable`]: found by the URL's address, taken the
/// second time in a row a URL is seen, so URLs met once cost no more than before.
fn shared_location(
    url: std::sync::Arc<str>,
) -> Result<header::HeaderValue, header::InvalidHeaderValue> {
    type Locations = url_cache::by_text::TextTable<(), header::HeaderValue, 8>;
    thread_local! {
        static KEPT: std::cell::RefCell<Locations> = std::cell::RefCell::new(Locations::new());
    }
    let kept = KEPT.try_with(|kept| kept.try_borrow().ok()?.get(&url, |_| true));
    if let Ok(Some(value)) = kept {
        return Ok(value);
    }
    let value = location(std::sync::Arc::clone(&url))?;
    // Not kept while the thread ends or the table is borrowed (it never is here).
    let _ = KEPT.try_with(|kept| {
        if let Ok(mut kept) = kept.try_borrow_mut() {
            kept.seen(&url, || (), &value);
        }
    });
    Ok(value)
}

/// The `Location` value for a signed URL, sharing its bytes with the cache entry (no
/// copy of the URL per redirect); an error if it is not a valid header value.
fn location(url: std::sync::Arc<str>) -> Result<header::HeaderValue, header::InvalidHeaderValue> {
    /// `Arc<str>` as the byte owner `Bytes::from_owner` takes.
    struct SharedUrl(std::sync::Arc<str>);
    impl AsRef<[u8]> for SharedUrl {
        fn as_ref(&self) -> &[u8] {
            self.0.as_bytes()
        }
    }
    header_value(bytes::Bytes::from_owner(SharedUrl(url)))
}

/// `bytes` as a header value, or an error if it is not a valid one. `http` checks a
/// header value byte by byte (about 1 800 instructions for a signed URL, 6 % of a
/// redirect; 100 for a request id); [`is_printable_ascii`] does the same 32 bytes a step,
/// and `http`'s own check runs only on what it refuses.
pub(crate) fn header_value(
    bytes: bytes::Bytes,
) -> Result<header::HeaderValue, header::InvalidHeaderValue> {
    if is_printable_ascii(&bytes) {
        // SAFETY: every byte is visible ASCII or a space (checked above), so the value
        // is one `from_maybe_shared` would have accepted (and valid UTF-8).
        #[allow(unsafe_code)]
        return Ok(unsafe { header::HeaderValue::from_maybe_shared_unchecked(bytes) });
    }
    header::HeaderValue::from_maybe_shared(bytes)
}

/// Whether every byte of `s` is visible ASCII or a space: a subset of what a header value
/// may hold. A fold without an early exit, so that the compiler checks many bytes a step.
fn is_printable_ascii(s: &[u8]) -> bool {
    s.iter().fold(true, |printable, &b| {
        printable & (b.wrapping_sub(0x20) < 0x5f)
    })
}

/// `private, max-age=N` with N ending when the server would re-sign (so a browser never
/// follows a cached redirect to a URL that is about to expire); `no-store` when less than
/// a minute would be left.
pub(crate) fn redirect_cache_control(
    ttl_remaining: std::time::Duration,
    pre_refresh: std::time::Duration,
    max: std::time::Duration,
) -> header::HeaderValue {
    let usable = ttl_remaining.saturating_sub(pre_refresh).min(max).as_secs();
    if usable < 60 {
        return header::HeaderValue::from_static("no-store");
    }
    thread_local! {
        /// The value this thread built last, with its max-age. With stable windows every
        /// redirect in the same second has the same max-age: it shares the value (a
        /// reference count) instead of formatting, checking and copying it again.
        static LAST: std::cell::RefCell<Option<(u64, header::HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        match &*last {
            Some((max_age, value)) if *max_age == usable => value.clone(),
            _ => {
                let value = private_max_age(usable);
                *last = Some((usable, value.clone()));
                value
            }
        }
    })
}

/// `private, max-age=N`.
fn private_max_age(usable: u64) -> header::HeaderValue {
    // Written into a stack buffer with itoa, then copied once into the header value (no
    // `format!`, no intermediate `String`).
    const PREFIX: &[u8] = b"private, max-age=";
    let mut value = [0u8; PREFIX.len() + 20];
    value[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut number = itoa::Buffer::new();
    let digits = number.format(usable).as_bytes();
    let len = PREFIX.len() + digits.len();
    value[PREFIX.len()..len].copy_from_slice(digits);
    // ASCII letters, digits, a comma, a space and `=`: always a valid header value.
    header::HeaderValue::from_bytes(&value[..len])
        .unwrap_or_else(|_| header::HeaderValue::from_static("no-store"))
}

/// `GET /api/v1/images/{key}/status`.
#[utoipa::path(get, path = "/api/v1/images/{key}/status",
    params(("key" = String, Path, description = "Object key, percent-encoded")),
    responses((status = 200, description = "Cache status (no URL)"), (status = 400, description = "Invalid key", body = crate::Problem)))]
pub(crate) async fn status(req: &HttpRequest, state: &AppState) -> Result<HttpResponse, ApiError> {
    let key = key_from_path(req, "/status")?;
    let service = state.service()?;
    let options = public_options(service, &key, &query_pairs(req))?;
    let status = service.status(&key, &options).await?;
    Ok(HttpResponse::Ok().json(status))
}

/// `POST /api/v1/images/{key}/refresh` (admin).
#[utoipa::path(post, path = "/api/v1/images/{key}/refresh",
    params(("key" = String, Path, description = "Object key, percent-encoded")),
    responses((status = 200, description = "A freshly signed URL"), (status = 401, description = "Missing or wrong admin token", body = crate::Problem)),
    security(("bearer" = [])))]
pub(crate) async fn refresh(req: &HttpRequest, state: &AppState) -> Result<HttpResponse, ApiError> {
    require_admin(req, state)?;
    let key = key_from_path(req, "/refresh")?;
    let service = state.service()?;
    let options = admin_options(service, req)?;
    let answer = service.refresh(&key, &options).await?;
    Ok(HttpResponse::Ok().json(answer))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct KeysBody {
    /// Object keys.
    keys: Vec<String>,
}

/// The body of `POST /batch/urls`: plain keys, or keys with their signed links (required
/// when the server requires links).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchBody {
    /// Object keys.
    #[serde(default)]
    keys: Vec<String>,
    /// Object keys with their signed links.
    #[serde(default)]
    items: Vec<LinkedKey>,
}

/// One key of a batch with its signed link.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LinkedKey {
    /// The object key.
    key: String,
    /// The link's expiry, unix seconds.
    exp: u64,
    /// The link's signature, hex.
    sig: String,
}

/// One key asked for in a batch: the key, and its link's `exp` and `sig` if it came
/// with one.
type BatchRequest = (String, Option<String>, Option<String>);

/// `GET /api/v1/images/batch/urls?key=a&key=b`.
#[utoipa::path(get, path = "/api/v1/images/batch/urls",
    params(("key" = Vec<String>, Query, description = "Object keys (repeat the parameter)"),
        ("force" = Option<bool>, Query, description = "Sign new URLs (after one failed to load); at most once per key per minute, else the cached URL")),
    responses((status = 200, description = "A result per key"), (status = 400, description = "No keys, or too many", body = crate::Problem)))]
pub(crate) async fn batch_get(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state.limit(&req)?;
    let query = query_pairs(&req);
    let keys: Vec<BatchRequest> = query
        .iter()
        .filter(|(k, _)| k == "key")
        .map(|(_, v)| (v.clone(), None, None))
        .collect();
    batch(&state, keys, url_options(&query)?, force_param(&query)?).await
}

/// `POST /api/v1/images/batch/urls` with `{"keys": [...]}` or, with signed links,
/// `{"items": [{"key": "...", "exp": N, "sig": "..."}]}`.
#[utoipa::path(post, path = "/api/v1/images/batch/urls", request_body = BatchBody,
    params(("force" = Option<bool>, Query, description = "Sign new URLs (after one failed to load); at most once per key per minute, else the cached URL")),
    responses((status = 200, description = "A result per key"), (status = 400, description = "No keys, or too many", body = crate::Problem)))]
pub(crate) async fn batch_post(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<BatchBody>,
) -> Result<HttpResponse, ApiError> {
    state.limit(&req)?;
    let query = query_pairs(&req);
    let options = url_options(&query)?;
    let force = force_param(&query)?;
    let BatchBody { keys, items } = body.into_inner();
    let requests = keys
        .into_iter()
        .map(|key| (key, None, None))
        .chain(
            items
                .into_iter()
                .map(|item| (item.key, Some(item.exp.to_string()), Some(item.sig))),
        )
        .collect();
    batch(&state, requests, options, force).await
}

/// The batch endpoints' work. With `force`, each key is signed anew, but at most once per
/// key per minute (shared with proxy mode's re-sign after an origin 403): past that the
/// cached URL is handed out, so that no client can make every request re-sign and
/// rewrite the cache.
async fn batch(
    state: &AppState,
    requests: Vec<BatchRequest>,
    options: UrlOptions,
    force: bool,
) -> Result<HttpResponse, ApiError> {
    if requests.is_empty() {
        return Err(ApiError::BadRequest("give at least one key".into()));
    }
    let service = state.service()?;
    let max = service.config().max_batch;
    if requests.len() > max {
        // Before any link is verified: a huge batch costs nothing but this check.
        return Err(ServiceError::BatchTooLarge {
            size: requests.len(),
            max,
        }
        .into());
    }
    let access = service.access();
    let mut results = BTreeMap::new();
    let mut admitted: Vec<String> = Vec::with_capacity(requests.len());
    let now = unix_now();
    for (key, exp, sig) in requests {
        if access.requires_links() {
            let checked = ObjectKey::new(&key)
                .map_err(|e| ApiError::Service(ServiceError::InvalidKey(e)))
                .and_then(|object| {
                    access
                        .verify_link(&object, &options, exp.as_deref(), sig.as_deref(), now)
                        .map_err(ApiError::Link)
                });
            if let Err(err) = checked {
                results.insert(key, error_json(err));
                continue;
            }
        }
        admitted.push(key);
    }
    if !admitted.is_empty() {
        let options = access.normalize_options(options)?;
        let (forced, cached): (Vec<&str>, Vec<&str>) = admitted
            .iter()
            .map(String::as_str)
            .partition(|key| force && state.resigns.check(&(*key).to_owned()).is_ok());
        let mut items = Vec::with_capacity(admitted.len());
        if !forced.is_empty() {
            let options = options.clone().force_refresh(true);
            items.extend(service.get_many(&forced, &options, None).await?);
        }
        if !cached.is_empty() {
            items.extend(service.get_many(&cached, &options, None).await?);
        }
        for item in items {
            let value = match item.result {
                Ok(url) => serde_json::json!({
                    "url": url.url,
                    "expires_at": url
                        .expires_at
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0.0, |d| d.as_secs_f64()),
                    "ttl_remaining": url.ttl_remaining.as_secs_f64(),
                    "from_cache": url.from_cache,
                    "degraded": url.degraded,
                }),
                Err(err) => error_json(ApiError::Service(err)),
            };
            results.insert(item.key, value);
        }
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({ "results": results })))
}

/// One key's error inside a batch answer.
fn error_json(err: ApiError) -> serde_json::Value {
    let problem = err.problem("");
    serde_json::json!({ "error": { "type": problem.kind, "title": problem.title, "status": problem.status, "detail": problem.detail } })
}

/// `GET /api/v1/images/stats` (admin).
#[utoipa::path(get, path = "/api/v1/images/stats", responses((status = 200, description = "Service statistics")), security(("bearer" = [])))]
pub(crate) async fn stats(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &state)?;
    Ok(HttpResponse::Ok().json(state.service()?.stats()))
}

/// `GET /api/v1/tasks` (admin): the background tasks — the refresher's last runs, its
/// next run, the lease holder and its totals, and the cleanup's figures.
#[utoipa::path(get, path = "/api/v1/tasks", responses((status = 200, description = "Background tasks")), security(("bearer" = [])))]
pub(crate) async fn tasks(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &state)?;
    let service = state.service()?;
    let (totals, last_runs, next_run_at) = service.refresher_status();
    let lease_holder = service.refresh_lease_holder().await;
    let unix = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    };
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "refresher": {
            "totals": totals,
            "last_runs": last_runs,
            "next_run_at": next_run_at.map(unix),
            "lease_holder": lease_holder,
        },
        "cleanup": service.stats().maintenance,
    })))
}

/// `GET /api/v1/alerts` (admin): the alerts firing now, with since when.
#[utoipa::path(get, path = "/api/v1/alerts", responses((status = 200, description = "Active alerts")), security(("bearer" = [])))]
pub(crate) async fn alerts(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &state)?;
    let service = state.service()?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "alerts": service.active_alerts() })))
}

/// `POST /api/v1/images/cleanup` (admin).
#[utoipa::path(post, path = "/api/v1/images/cleanup", responses((status = 200, description = "{\"removed\": n}")), security(("bearer" = [])))]
pub(crate) async fn cleanup(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &state)?;
    let removed = state.service()?.cleanup().await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "removed": removed })))
}

/// `POST /api/v1/images/preload` (admin) with `{"keys": [...]}`.
#[utoipa::path(post, path = "/api/v1/images/preload", request_body = KeysBody,
    responses((status = 200, description = "Counts and per-key failures")), security(("bearer" = [])))]
pub(crate) async fn preload(
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &state)?;
    let service = state.service()?;
    let options = admin_options(service, &req)?;
    let body: KeysBody = read_json(payload, state.config.max_body_bytes).await?;
    let keys = body.keys;
    let max = state.config.max_preload_keys;
    if keys.len() > max {
        return Err(ApiError::BadRequest(format!(
            "a preload of {} keys exceeds the maximum of {max}",
            keys.len()
        )));
    }
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let report = service.preload(&refs, &options).await;
    let failed: BTreeMap<String, String> = report.failed.into_iter().collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "requested": report.requested,
        "loaded": report.loaded,
        "already_cached": report.already_cached,
        "failed": failed,
    })))
}

/// `GET /livez`: the process is up.
#[utoipa::path(get, path = "/livez", responses((status = 200, description = "Alive")))]
pub(crate) async fn livez() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// `GET /readyz`: ready to serve URLs; says whether the cache answers or the server is
/// degraded-but-serving.
#[utoipa::path(get, path = "/readyz", responses((status = 200, description = "Ready (maybe degraded)"), (status = 503, description = "Not configured", body = crate::Problem)))]
pub(crate) async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let service = state.service()?;
    let cache_ok = service.cache_healthy().await;
    let stats = service.stats();
    // Credentials from a provider: ready while valid ones are held (a failing refresh
    // with valid credentials is degraded, not down); not ready before the first load
    // and after expiry, since every URL request would fail.
    let now = cos_sign::unix_now();
    let credentials_valid = stats.credentials.as_ref().is_none_or(|c| c.valid_at(now));
    let refresh_failing = stats
        .credentials
        .as_ref()
        .is_some_and(|c| c.consecutive_failures > 0);
    let status = if !credentials_valid {
        "unavailable"
    } else if !cache_ok || refresh_failing {
        "degraded"
    } else {
        "ready"
    };
    let body = serde_json::json!({
        "status": status,
        "cache": { "backend": stats.cache_backend, "reachable": cache_ok, "circuit": stats.circuit },
        "credentials": stats.credentials,
    });
    Ok(if credentials_valid {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    })
}

/// `GET /metrics`: Prometheus text.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text exposition")))]
pub(crate) async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let stats = state.service.as_ref().ok().map(|s| s.stats());
    let mut text = state.metrics.render(stats.as_ref());
    if let crate::AccessLines::To(log) = &state.config.access_log {
        crate::metrics::render_access_log(&mut text, log);
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(text)
}

async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(crate::openapi_json())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn with_ttl(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    /// Every layer above moves the key route's future by value, on every request: a
    /// `memcpy` call each once it passes 128 bytes. It holds the request alone until
    /// polled (the rare branches, a remote cache's wait, a signing, the proxy stream,
    /// status, refresh, are boxed then): 32 bytes, where it was 136 holding a ready
    /// answer, 392 with the route as an `async fn` and 1 208 before either. This fails
    /// when an unboxed slow path or an eager answer makes it large again.
    #[test]
    fn the_redirect_future_stays_small() {
        let request = actix_web::test::TestRequest::default().to_srv_request();
        let future = serve_key_route(request);
        let size = std::mem::size_of_val(&future);
        assert!(size <= 64, "the key route's future is {size} bytes");
    }

    /// The word-wise matcher names the same routes as the plain definition: the prefix,
    /// then a non-empty key, then one of the three suffixes.
    #[test]
    fn key_routes_match_as_their_definition_says() {
        let plain = |path: &str| {
            let rest = path.strip_prefix(PREFIX)?;
            ["/proxy", "/status", "/refresh"]
                .into_iter()
                .find(|suffix| rest.len() > suffix.len() && rest.ends_with(suffix))
        };
        let keys = ["", "a", "a.jpg", "x/proxy", "/", "%2F", "\u{e9}"];
        let tails = [
            "",
            "/proxy",
            "/status",
            "/refresh",
            "proxy",
            "/proxyx",
            "/Proxy",
            "/refresh/",
        ];
        let heads = [
            PREFIX,
            "/api/v1/images",
            "/api/v1/imageS/",
            "/api/v2/images/",
            "",
        ];
        let mut matched = 0;
        for head in heads {
            for key in keys {
                for tail in tails {
                    let path = format!("{head}{key}{tail}");
                    let route = key_route(&path);
                    assert_eq!(route.map(|(suffix, _)| suffix), plain(&path), "{path:?}");
                    if let Some((suffix, pattern)) = route {
                        assert_eq!(pattern, format!("/api/v1/images/{{key}}{suffix}"));
                        matched += 1;
                    }
                }
            }
        }
        // Six keys by three suffixes, and `x/proxy` with no suffix of its own.
        assert_eq!(matched, 19);
    }

    /// The fast path takes exactly the printable ASCII; anything else goes through
    /// `http`'s own check, which refuses control characters.
    #[test]
    fn location_values_are_checked_on_either_path() {
        for b in 0u8..=127 {
            let text = format!("https://b.example/a?x={}", b as char);
            assert_eq!(
                is_printable_ascii(text.as_bytes()),
                (0x20..0x7f).contains(&b),
                "byte {b:#x}"
            );
            let value = location(text.as_str().into());
            let valid = header::HeaderValue::from_str(&text).is_ok();
            assert_eq!(value.is_ok(), valid, "byte {b:#x}");
            if let Ok(value) = value {
                assert_eq!(value.as_bytes(), text.as_bytes());
            }
        }
        assert!(location("https://b.example/\u{e9}".into()).is_ok());
        assert!(location("https://b.example/a\r\nSet-Cookie: x".into()).is_err());
        let long = format!("https://b.example/{}", "a".repeat(1000));
        assert!(is_printable_ascii(long.as_bytes()));
        assert!(!is_printable_ascii(format!("{long}\n").as_bytes()));
    }

    /// A URL seen twice in a row gets its value kept; values are only ever shared with
    /// the same text, and invalid text is refused however often it comes.
    #[test]
    fn location_values_are_shared_only_for_the_same_text() {
        let url: std::sync::Arc<str> = "https://b.example/a.jpg?sig=1".into();
        // Each value made holds the URL's `Arc` (its bytes' owner); a kept value
        // shared again does not.
        let owners = || std::sync::Arc::strong_count(&url);
        let first = shared_location(url.clone()).unwrap();
        let made_once = owners();
        let second = shared_location(url.clone()).unwrap();
        assert!(owners() > made_once, "the second is made, and kept");
        let kept = owners();
        let third = shared_location(url.clone()).unwrap();
        assert_eq!(owners(), kept, "the third shares the kept value");
        for value in [&first, &second, &third] {
            assert_eq!(value, &*url);
        }
        // The same text in another `Arc` gets a value of its own.
        let copy: std::sync::Arc<str> = std::sync::Arc::from(&*url);
        let other = shared_location(copy.clone()).unwrap();
        assert_eq!(other, *copy);
        assert_eq!(std::sync::Arc::strong_count(&copy), 2, "made, not shared");
        assert_eq!(owners(), kept);
        let bad: std::sync::Arc<str> = "https://b.example/a\r\nSet-Cookie: x".into();
        for _ in 0..3 {
            assert!(shared_location(bad.clone()).is_err());
        }
    }

    #[test]
    fn redirects_are_cached_until_the_pre_refresh_point_and_never_long_or_short() {
        let pre_refresh = Duration::from_secs(900);
        let max = Duration::from_secs(3600);
        let cases = [
            (3600, "private, max-age=2700"),
            // The same value again (from the thread's last), then others.
            (3600, "private, max-age=2700"),
            (3601, "private, max-age=2701"),
            (3600, "private, max-age=2700"),
            (960, "private, max-age=60"),
            (959, "no-store"),
            (0, "no-store"),
            (100_000, "private, max-age=3600"),
        ];
        for (ttl, expected) in cases {
            assert_eq!(
                redirect_cache_control(with_ttl(ttl), pre_refresh, max),
                expected,
                "ttl {ttl}"
            );
        }
        let unbounded = redirect_cache_control(with_ttl(u64::MAX), Duration::ZERO, Duration::MAX);
        assert_eq!(unbounded, format!("private, max-age={}", u64::MAX).as_str());
    }
}
