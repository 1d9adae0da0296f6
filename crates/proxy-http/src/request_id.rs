//! Request ids, access logs and HTTP metrics: one middleware around every request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use actix_web::middleware::Next;
use actix_web::HttpMessage;

use crate::metrics::Metrics;

/// The header carrying the request id, in and out.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Stands in for the request id in problem bodies until the middleware fills it in.
pub(crate) const PLACEHOLDER: &str = "\u{1}request-id\u{1}";

/// The id of the current request, stored in request extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

fn new_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static PREFIX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let prefix = PREFIX.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64 ^ u64::from(std::process::id()) << 32)
            .unwrap_or(0)
    });
    format!(
        "{:012x}-{:08x}",
        prefix & 0xffff_ffff_ffff,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Accepts a caller's id if it is short and plain, so it can be logged safely.
fn accepted(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Assigns the request id, echoes it, fills it into problem bodies, records metrics and
/// writes one access-log line (method, route pattern, status, latency — never the query,
/// never a `Location`).
pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let started = Instant::now();
    let id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| accepted(v))
        .map_or_else(new_id, str::to_owned);
    req.extensions_mut().insert(RequestId(id.clone()));
    let metrics = req.app_data::<actix_web::web::Data<Metrics>>().cloned();
    let method = req.method().clone();
    let response = next.call(req).await?;
    let route = match response
        .request()
        .extensions()
        .get::<crate::handlers::RouteLabel>()
    {
        Some(label) => label.0.to_owned(),
        None => response
            .request()
            .match_pattern()
            .unwrap_or_else(|| "unmatched".to_owned()),
    };
    let mut response = fill_problem(response, &id).await?;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(REQUEST_ID_HEADER), value);
    }
    let status = response.status();
    let elapsed = started.elapsed();
    if let Some(metrics) = metrics {
        metrics.observe_request(method.as_str(), &route, status.as_str(), elapsed);
    }
    tracing::info!(
        request_id = %id,
        method = %method,
        route = %route,
        status = status.as_u16(),
        latency_us = elapsed.as_micros() as u64,
        "request"
    );
    Ok(response)
}

/// Replaces the placeholder in problem+json bodies (small, buffered) with the id.
async fn fill_problem(
    response: ServiceResponse<impl MessageBody + 'static>,
    id: &str,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let is_problem = response
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if !is_problem {
        return Ok(response.map_into_boxed_body());
    }
    let (request, response) = response.into_parts();
    let (head, body) = response.into_parts();
    let bytes = actix_web::body::to_bytes(body).await.unwrap_or_default();
    // serde_json writes the placeholder's control characters as \u0001 escapes; the id
    // is plain ASCII (see `accepted`), so it needs no escaping in JSON.
    let text = String::from_utf8_lossy(&bytes).replace(r"\u0001request-id\u0001", id);
    let response = head.set_body(text).map_into_boxed_body();
    Ok(ServiceResponse::new(request, response))
}

/// The id of a request handled by this server.
pub fn of(req: &actix_web::HttpRequest) -> String {
    req.extensions()
        .get::<RequestId>()
        .map_or_else(String::new, |r| r.0.clone())
}
