//! Request ids, access logs and HTTP metrics: one middleware around every request.
//!
//! [`RequestContext`] is written as a plain `Transform` rather than with
//! `middleware::from_fn`: on the redirect endpoint the whole request costs a few
//! microseconds, and `from_fn` boxes two futures and the response body per request. Here
//! the future is a small pinned wrapper, the body is passed through untouched, and
//! nothing is allocated per request. The id itself stays small (`RequestId`): a fresh
//! one is its number, rendered only where its text is read (a log line, a problem
//! body), and its header value is a slice of a buffer the thread shares between ids; a
//! caller's id is the request's own header value, shared.
//!
//! Problem bodies carry the id because the middleware makes it the thread's current
//! request id while the handler runs (a guard around each poll), and [`crate::ApiError`]
//! reads it where it renders the body. Mounted without this middleware, the routes still
//! answer with a fresh id in the body and in `X-Request-Id`.

use std::borrow::Cow;
use std::cell::Cell;
use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::header::{HeaderName, HeaderValue};
use tracing::instrument::Instrumented;
use tracing::Instrument;

// Request times are read from the CPU's time-stamp counter where it is reliable (as the
// service's own stopwatch is): a start and its `elapsed` take about 23 ns here against
// 38 ns with `std::time::Instant` (the vDSO's `clock_gettime`). Callgrind counts nearly
// the same instructions for both; the difference is `rdtsc` against the vDSO's clock.
use quanta::Instant;

use crate::access_log::{AccessLines, LoggedId, WorkerAccessLog};
use crate::metrics::{Metrics, WorkerMetrics};

/// The header carrying the request id, in and out.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static(REQUEST_ID_HEADER);

/// The longest caller-supplied id kept (longer ones are replaced by a fresh id).
const MAX_ID_LEN: usize = 64;

/// A request id. Small, and rendered only where it is read: most requests only need it
/// as the `X-Request-Id` header value.
#[derive(Clone)]
enum RequestId {
    /// A fresh id: this process's prefix (see [`fresh_id_text`]) and this number.
    Fresh(u32),
    /// A caller's id that [`accepted`] keeps: its header value, shared with the request.
    Given(HeaderValue),
}

/// A fresh id's text: 12 hex digits fixed per process, a dash, 8 hex digits.
const FRESH_ID_LEN: usize = 21;

impl RequestId {
    /// `id` if it is one [`accepted`] keeps.
    fn given(id: &HeaderValue) -> Option<Self> {
        accepted(id.as_bytes()).then(|| RequestId::Given(id.clone()))
    }

    /// A fresh id, unique in the process (until its counter wraps at 2^32).
    fn fresh() -> Self {
        RequestId::Fresh(next_id_number() as u32)
    }

    /// Calls `f` with the id's text (rendered on the stack for a fresh id).
    fn with_text<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        match self {
            RequestId::Fresh(number) => {
                let text = fresh_id_text(*number);
                // Hex digits and a dash (`fresh_id_text`): always UTF-8.
                f(std::str::from_utf8(&text).unwrap_or(""))
            }
            // Only `accepted` ids get in: ASCII letters, digits and `-_.`.
            RequestId::Given(value) => f(value.to_str().unwrap_or("")),
        }
    }

    /// The id as the `X-Request-Id` value: a caller's shares its bytes with the request;
    /// a fresh one is written into this thread's id buffer (no allocation of its own).
    fn header_value(&self) -> HeaderValue {
        match self {
            RequestId::Fresh(number) => fresh_header_value(&fresh_id_text(*number)),
            RequestId::Given(value) => value.clone(),
        }
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.with_text(|text| f.debug_tuple("RequestId").field(&text).finish())
    }
}

/// How many bytes of fresh ids a thread writes into one shared buffer: the ids are
/// slices of it, so a fresh id's header value costs a reference count, not an
/// allocation (about 190 ids a buffer).
const ID_BUFFER: usize = 4096;

/// `text` as a header value, sharing this thread's id buffer.
fn fresh_header_value(text: &[u8; FRESH_ID_LEN]) -> HeaderValue {
    thread_local! {
        static BUFFER: std::cell::RefCell<bytes::BytesMut> =
            std::cell::RefCell::new(bytes::BytesMut::new());
    }
    let bytes = BUFFER.with(|buffer| {
        let mut buffer = buffer.borrow_mut();
        // A new buffer of the full size when this one is full; the old one is freed
        // with the last id that shares it.
        if buffer.capacity() - buffer.len() < FRESH_ID_LEN {
            *buffer = bytes::BytesMut::with_capacity(ID_BUFFER);
        }
        buffer.extend_from_slice(text);
        buffer.split().freeze()
    });
    // SAFETY: a fresh id is hex digits and a dash (`fresh_id_text`), all visible ASCII:
    // a value `HeaderValue::from_maybe_shared` accepts.
    #[allow(unsafe_code)]
    unsafe {
        HeaderValue::from_maybe_shared_unchecked(bytes)
    }
}

/// Which id [`CURRENT`] holds: a fresh id is its number; a caller's is in
/// [`CURRENT_GIVEN`]. Plain data, so that entering and leaving a fresh id (nearly every
/// request) copies a word each way and drops nothing.
#[derive(Clone, Copy)]
enum Slot {
    None,
    Fresh(u32),
    Given,
}

thread_local! {
    /// The id of the request whose handler this thread is polling now (actix runs a
    /// request on one worker thread), set by the middleware around each poll.
    static CURRENT: Cell<Slot> = const { Cell::new(Slot::None) };
    /// The caller's id when [`CURRENT`] is [`Slot::Given`].
    static CURRENT_GIVEN: std::cell::RefCell<Option<HeaderValue>> =
        const { std::cell::RefCell::new(None) };
}

/// The id of the request being handled on this thread.
fn current() -> Option<RequestId> {
    match CURRENT.get() {
        Slot::None => None,
        Slot::Fresh(number) => Some(RequestId::Fresh(number)),
        Slot::Given => CURRENT_GIVEN.with_borrow(|given| given.clone().map(RequestId::Given)),
    }
}

/// The id of the request being handled on this thread, and whether it is a fresh one
/// (no middleware around the handler: the caller must send it in `X-Request-Id`).
pub(crate) fn current_or_new() -> (HeaderValue, bool) {
    match current() {
        Some(id) => (id.header_value(), false),
        None => (RequestId::fresh().header_value(), true),
    }
}

/// Calls `f` with the id of the request whose handler this thread is running now, if
/// any: for a log formatter that puts the id on every line of a request without the
/// `request` span (see [`RequestContext::with_request_spans`]).
pub fn with_current_request_id<R>(f: impl FnOnce(Option<&str>) -> R) -> R {
    match current() {
        Some(id) => id.with_text(|text| f(Some(text))),
        None => f(None),
    }
}

/// Makes `id` the thread's current request id until dropped, then restores the one
/// before (so nested or interleaved requests never see each other's).
struct Current {
    previous: Slot,
    /// The caller's id before, when this guard entered a caller's id (`None` inside
    /// when there was none); `None` when it entered a fresh one.
    previous_given: Option<Option<HeaderValue>>,
}

impl Current {
    fn enter(id: &RequestId) -> Self {
        match id {
            RequestId::Fresh(number) => Current {
                previous: CURRENT.replace(Slot::Fresh(*number)),
                previous_given: None,
            },
            RequestId::Given(value) => Current {
                previous: CURRENT.replace(Slot::Given),
                previous_given: Some(CURRENT_GIVEN.replace(Some(value.clone()))),
            },
        }
    }
}

impl Drop for Current {
    fn drop(&mut self) {
        CURRENT.set(self.previous);
        if let Some(previous_given) = self.previous_given.take() {
            CURRENT_GIVEN.set(previous_given);
        }
    }
}

/// Ids a thread takes from the process-wide counter at a time: each worker then counts
/// on its own, and the shared counter is written once per block, not once per request.
const ID_BLOCK: u64 = 1 << 16;

/// The next number of this thread's block, taking a new block when it runs out. Numbers
/// are unique in the process; across threads they are not in order.
fn next_id_number() -> u64 {
    static NEXT_BLOCK: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        /// (next number, end of this thread's block).
        static BLOCK: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
    }
    BLOCK.with(|block| {
        let (mut next, mut end) = block.get();
        if next == end {
            next = NEXT_BLOCK.fetch_add(ID_BLOCK, Ordering::Relaxed);
            end = next + ID_BLOCK;
        }
        block.set((next + 1, end));
        next
    })
}

/// The text of fresh id `number`: 12 hex digits fixed per process, a dash, and the
/// number's 8 hex digits.
pub(crate) fn fresh_id_text(number: u32) -> [u8; FRESH_ID_LEN] {
    /// The first 13 bytes, written once.
    static PREFIX: std::sync::OnceLock<[u8; 13]> = std::sync::OnceLock::new();
    let prefix = PREFIX.get_or_init(|| {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64 ^ u64::from(std::process::id()) << 32)
            .unwrap_or(0);
        let mut prefix = [b'-'; 13];
        write_hex(&mut prefix[..12], seed);
        prefix
    });
    let mut text = [0; FRESH_ID_LEN];
    text[..13].copy_from_slice(prefix);
    text[13..].copy_from_slice(&hex8(number));
    text
}

/// `value` as 8 lower-case hex digits, all at once: each nibble is spread into a byte
/// of its own, then every byte is turned into its digit in the same word.
fn hex8(value: u32) -> [u8; 8] {
    let mut x = u64::from(value);
    x = (x | x << 16) & 0x0000_FFFF_0000_FFFF;
    x = (x | x << 8) & 0x00FF_00FF_00FF_00FF;
    // Byte k holds nibble k.
    x = (x | x << 4) & 0x0F0F_0F0F_0F0F_0F0F;
    // 1 in each byte whose nibble is 10 or more (adding 6 carries into bit 4).
    let letters = ((x + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    let digits = x + 0x3030_3030_3030_3030 + letters * u64::from(b'a' - b'0' - 10);
    // The most significant nibble first.
    digits.to_be_bytes()
}

/// Writes the low `4 * out.len()` bits of `value` as lower-case hex.
fn write_hex(out: &mut [u8], mut value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in out.iter_mut().rev() {
        *byte = DIGITS[(value & 0xf) as usize];
        value >>= 4;
    }
}

/// Accepts a caller's id if it is short and plain, so it can be logged safely.
fn accepted(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// The middleware: assigns the request id (or keeps a plain one the caller sent), echoes
/// it in `X-Request-Id`, fills it into problem bodies, records the request's metrics and
/// writes one access-log line (method, route pattern, status, latency — never the query,
/// never a `Location`). Log lines written while the request runs carry the id too (the
/// handler runs inside a `request` span).
///
/// The access line goes where [`RequestContext::with_access_log`] says: by default it
/// is a `tracing` event at `info` with the target `image_url::access` (formatted on the
/// worker: slower than an [`crate::AccessLog`]).
#[derive(Debug, Clone)]
pub struct RequestContext {
    metrics: Metrics,
    access_lines: AccessLines,
    request_spans: bool,
}

impl RequestContext {
    /// Records into `metrics`; access lines as `tracing` events.
    pub fn new(metrics: Metrics) -> Self {
        RequestContext {
            metrics,
            access_lines: AccessLines::Tracing,
            request_spans: true,
        }
    }

    /// Whether each request runs inside a `request` span carrying its id (default: yes),
    /// which puts the id on every log line written while it runs. The span costs a few
    /// thousand instructions a request; a server whose log formatter adds the id itself
    /// (from [`with_current_request_id`]) turns it off.
    pub fn with_request_spans(mut self, on: bool) -> Self {
        self.request_spans = on;
        self
    }

    /// Access lines where `lines` says.
    pub fn with_access_log(mut self, lines: AccessLines) -> Self {
        self.access_lines = lines;
        self
    }
}

/// What one worker's middleware keeps: its metrics and its access-log buffer.
#[derive(Debug)]
struct PerWorker {
    request_spans: bool,
    metrics: WorkerMetrics,
    access_log: WorkerAccessLines,
}

/// [`AccessLines`] as one worker holds them.
#[derive(Debug)]
enum WorkerAccessLines {
    Tracing,
    Off,
    To(WorkerAccessLog),
}

impl<S, B> Transform<S, ServiceRequest> for RequestContext
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Transform = RequestContextService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(RequestContextService {
            service,
            worker: Rc::new(PerWorker {
                request_spans: self.request_spans,
                metrics: WorkerMetrics::new(self.metrics.clone()),
                access_log: match &self.access_lines {
                    AccessLines::To(log) => WorkerAccessLines::To(log.worker()),
                    AccessLines::Off => WorkerAccessLines::Off,
                    _ => WorkerAccessLines::Tracing,
                },
            }),
        }))
    }
}

/// [`RequestContext`] wrapped around a service.
#[derive(Debug)]
pub struct RequestContextService<S> {
    service: S,
    // An `Rc`: each worker builds its own app (so its own `PerWorker`), and the future
    // needs it after the inner service has answered.
    worker: Rc<PerWorker>,
}

impl<S, B> Service<ServiceRequest> for RequestContextService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Future = RequestContextFuture<S::Future>;

    actix_web::dev::forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let started = Instant::now();
        let id = req
            .headers()
            .get(&REQUEST_ID)
            .and_then(RequestId::given)
            .unwrap_or_else(RequestId::fresh);
        let span = if self.worker.request_spans {
            id.with_text(|id| tracing::info_span!("request", request_id = id))
        } else {
            tracing::Span::none()
        };
        // The inner service may answer (or fail) right inside `call`.
        let inner = {
            let _current = Current::enter(&id);
            self.service.call(req)
        };
        // Without a span (the server's case, or a span its subscriber does not want),
        // the future is not wrapped: entering and leaving no span on every poll and on
        // drop still cost about 200 instructions a request.
        let inner = if span.is_disabled() {
            Inner::Plain { future: inner }
        } else {
            Inner::Spanned {
                future: Box::pin(inner.instrument(span)),
            }
        };
        RequestContextFuture {
            inner,
            started,
            id: Some(id),
            worker: Rc::clone(&self.worker),
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner service's future, inside the request's span when there is one. The
    /// span's future is boxed: a span is five words, and every layer above moves this
    /// future by value, a `memcpy` call each once it passes 128 bytes (a span costs
    /// thousands of instructions; its box, tens).
    #[derive(Debug)]
    #[project = InnerProjection]
    enum Inner<F> {
        Plain { #[pin] future: F },
        Spanned { future: Pin<Box<Instrumented<F>>> },
    }
}

impl<F: Future> Future for Inner<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match self.project() {
            InnerProjection::Plain { future } => future.poll(cx),
            InnerProjection::Spanned { future } => future.as_mut().poll(cx),
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of a request running inside [`RequestContext`].
    #[derive(Debug)]
    pub struct RequestContextFuture<F> {
        #[pin]
        inner: Inner<F>,
        started: Instant,
        id: Option<RequestId>,
        worker: Rc<PerWorker>,
    }
}

impl<F, B> Future for RequestContextFuture<F>
where
    F: Future<Output = Result<ServiceResponse<B>, actix_web::Error>>,
    B: MessageBody,
{
    type Output = Result<ServiceResponse<B>, actix_web::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let polled = {
            let _current = this.id.as_ref().map(Current::enter);
            this.inner.poll(cx)
        };
        let mut response = match polled {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(response) => response?,
        };
        let id = this.id.take().unwrap_or_else(RequestId::fresh);
        // In place: a response is moved (copied) once fewer.
        finish(&mut response, id, *this.started, this.worker);
        Poll::Ready(Ok(response))
    }
}

/// Everything done once the handler has answered.
fn finish<B: MessageBody>(
    response: &mut ServiceResponse<B>,
    id: RequestId,
    started: Instant,
    worker: &PerWorker,
) {
    let request = response.request();
    // Key routes are matched by hand and named here the same way; the others ask the
    // router (a small allocation, off the hot path).
    let route: Cow<'static, str> = match crate::handlers::key_route(request.path()) {
        Some((_, pattern)) => Cow::Borrowed(pattern),
        // The key routes' catch-all prefix is the empty pattern: every path "matches"
        // it in the resource map, so an empty pattern means no route.
        None => request
            .match_pattern()
            .filter(|pattern| !pattern.is_empty())
            .map_or(Cow::Borrowed("unmatched"), Cow::Owned),
    };
    let status = response.status();
    let elapsed = started.elapsed();
    let method = crate::metrics::method_label(request.method());
    worker
        .metrics
        .observe_request(request.method(), &route, status, elapsed);
    match &worker.access_log {
        WorkerAccessLines::To(log) => log.record(
            started,
            elapsed,
            method,
            route,
            status.as_u16(),
            match &id {
                // Its text is made on the writer thread.
                RequestId::Fresh(number) => LoggedId::Fresh(*number),
                RequestId::Given(value) => LoggedId::given(value.as_bytes()),
            },
        ),
        WorkerAccessLines::Off => {}
        WorkerAccessLines::Tracing => id.with_text(|id| {
            tracing::info!(
                target: "image_url::access",
                request_id = id,
                method,
                route = route.as_ref(),
                status = status.as_u16(),
                latency_us = elapsed.as_micros() as u64,
                "request"
            )
        }),
    }
    response.headers_mut().insert(REQUEST_ID, id.header_value());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each thread counts in blocks of its own: ids stay unique across threads and
    /// across the end of a block.
    #[test]
    fn ids_from_many_threads_never_repeat() {
        let per_thread = ID_BLOCK as usize + 10;
        let threads: Vec<_> = (0..3)
            .map(|_| {
                std::thread::spawn(move || {
                    (0..per_thread)
                        .map(|_| next_id_number())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        let count = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), count);
    }

    #[test]
    fn fresh_ids_are_distinct_and_well_formed() {
        let a = RequestId::fresh();
        let b = RequestId::fresh();
        assert_ne!(a.with_text(str::to_owned), b.with_text(str::to_owned));
        for id in [&a, &b] {
            let text = id.with_text(str::to_owned);
            let text = text.as_str();
            assert_eq!(text.len(), 21, "{text}");
            assert_eq!(&text[12..13], "-");
            assert!(text
                .bytes()
                .all(|c| c == b'-' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
            assert!(accepted(text.as_bytes()));
            assert_eq!(id.header_value(), text);
        }
    }

    /// Fresh ids' header values share a buffer per thread: ids still held keep their
    /// text while later ones fill that buffer and the next.
    #[test]
    fn fresh_header_values_keep_their_text_across_buffers() {
        let ids: Vec<RequestId> = (0..3 * ID_BUFFER / FRESH_ID_LEN)
            .map(|_| RequestId::fresh())
            .collect();
        let values: Vec<HeaderValue> = ids.iter().map(RequestId::header_value).collect();
        for (id, value) in ids.iter().zip(&values) {
            id.with_text(|text| assert_eq!(value, text));
        }
        let texts: std::collections::HashSet<&[u8]> =
            values.iter().map(HeaderValue::as_bytes).collect();
        assert_eq!(texts.len(), ids.len());
    }

    #[test]
    fn eight_hex_digits_at_once_match_one_at_a_time() {
        let mut values: Vec<u32> = (0..=0xffff).collect();
        values.extend([u32::MAX, 0x8000_0000, 0x0123_4567, 0x89ab_cdef, 0xa0a0_a0a0]);
        values.extend((0..32).map(|bit| 1 << bit));
        for value in values {
            let mut expected = [0u8; 8];
            write_hex(&mut expected, u64::from(value));
            assert_eq!(hex8(value), expected, "{value:#x}");
        }
    }

    #[test]
    fn hex_is_written_right_aligned() {
        let mut out = [0u8; 8];
        write_hex(&mut out, 0xab_cdef);
        assert_eq!(&out, b"00abcdef");
    }

    #[actix_web::test]
    async fn ids_are_echoed_and_carried_by_every_log_line_of_the_request() {
        use crate::test_support::Captured;
        use actix_web::{test, web, App, HttpResponse};
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        // The actix test runtime runs on this thread, so a thread-local default will do.
        let _guard = tracing::subscriber::set_default(subscriber);
        let metrics = Metrics::new();
        let app = test::init_service(
            App::new()
                .wrap(RequestContext::new(metrics.clone()))
                .default_service(web::to(|| async {
                    tracing::info!("inside the handler");
                    HttpResponse::Ok().finish()
                })),
        )
        .await;

        let req = test::TestRequest::get()
            .uri("/somewhere?secret=1")
            .insert_header((REQUEST_ID_HEADER, "trace-me-1"))
            .to_request();
        let res = test::call_service(&app, req).await;
        assert_eq!(res.headers().get(REQUEST_ID_HEADER).unwrap(), "trace-me-1");
        let res = test::call_service(&app, test::TestRequest::get().to_request()).await;
        let fresh = res
            .headers()
            .get(REQUEST_ID_HEADER)
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(fresh.len(), 21, "{fresh}");

        let log = captured.text();
        for id in ["trace-me-1", fresh.as_str()] {
            assert!(
                log.lines()
                    .any(|l| l.contains("inside the handler") && l.contains(id)),
                "the handler's line carries {id}:\n{log}"
            );
            assert!(
                log.lines().any(
                    |l| l.contains("status=200") && l.contains(&format!("request_id=\"{id}\""))
                ),
                "one access line for {id}:\n{log}"
            );
        }
        assert!(!log.contains("secret"), "no query in the logs:\n{log}");
        assert!(metrics.render(None).contains(
            r#"image_url_http_requests_total{method="GET",route="unmatched",status="200"} 2"#
        ));
    }

    /// Guards nest: each sees its own id, and leaving restores the one before, caller's
    /// or fresh, whatever was entered inside.
    #[test]
    fn the_current_id_is_restored_when_its_guard_is_dropped() {
        let text = |id: Option<RequestId>| id.map(|id| id.with_text(str::to_owned));
        let given = |t: &'static str| RequestId::Given(HeaderValue::from_static(t));
        assert_eq!(text(current()), None);
        {
            let _outer = Current::enter(&given("outer"));
            assert_eq!(text(current()).as_deref(), Some("outer"));
            {
                let _fresh = Current::enter(&RequestId::Fresh(7));
                assert_eq!(
                    text(current()),
                    Some(RequestId::Fresh(7)).map(|id| id.with_text(str::to_owned))
                );
                {
                    let _inner = Current::enter(&given("inner"));
                    assert_eq!(text(current()).as_deref(), Some("inner"));
                }
                assert_eq!(
                    text(current()),
                    Some(RequestId::Fresh(7)).map(|id| id.with_text(str::to_owned))
                );
            }
            assert_eq!(text(current()).as_deref(), Some("outer"));
        }
        assert_eq!(text(current()), None);
        let _given = Current::enter(&given("again"));
        assert_eq!(text(current()).as_deref(), Some("again"));
    }

    #[test]
    fn only_plain_caller_ids_are_kept() {
        for good in ["abc", "req-1_2.3", &"a".repeat(64)] {
            assert!(accepted(good.as_bytes()), "{good}");
            let kept = RequestId::given(&HeaderValue::from_str(good).unwrap()).unwrap();
            assert_eq!(kept.with_text(str::to_owned), good);
        }
        for bad in ["", "has space", "semi;colon", &"a".repeat(65), "quote\""] {
            assert!(!accepted(bad.as_bytes()), "{bad}");
            assert!(RequestId::given(&HeaderValue::from_str(bad).unwrap()).is_none());
        }
    }
}
