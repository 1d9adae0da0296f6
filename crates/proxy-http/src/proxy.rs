//! Proxy mode: fetch the object from COS with the presigned URL and stream it through.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpRequest, HttpResponse};
use cos_sign::ObjectKey;
use futures::StreamExt;
use image_url_service::{ImageUrlService, UrlOptions};

use crate::{ApiConfig, ApiError, AppState};

/// Request headers passed to the origin.
const FORWARDED: [header::HeaderName; 4] = [
    header::RANGE,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_RANGE,
];

/// Response headers passed back to the client.
const PASSED_BACK: [header::HeaderName; 7] = [
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::CONTENT_RANGE,
    header::ETAG,
    header::LAST_MODIFIED,
    header::ACCEPT_RANGES,
    header::CONTENT_DISPOSITION,
];

/// On every proxied response, as camo does: no MIME sniffing, and a policy under which a
/// document (were one to slip through) can load nothing and run nothing.
const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; sandbox";

/// The origin client: no redirects followed, connect and read timeouts (the total one is
/// set per request), TLS by rustls with ring and the platform's roots, configured here
/// rather than by installing a process-wide default provider (a library must not).
pub(crate) fn client(config: &ApiConfig) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(config.proxy_connect_timeout)
        .read_timeout(config.proxy_read_timeout)
        .pool_max_idle_per_host(64)
        .tls_backend_preconfigured(cos_credentials::rustls_config())
        .build()
        .expect("a client with a preconfigured rustls backend builds")
}

pub(crate) async fn stream(
    req: &HttpRequest,
    state: &AppState,
    service: &ImageUrlService,
    key: &ObjectKey,
    options: &UrlOptions,
) -> Result<HttpResponse, ApiError> {
    // A slot for the whole stream, given back when the body is done or dropped.
    let slot = state
        .proxy_slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::ProxyBusy)?;
    let mut answer = service.get_url(key, options).await?;
    for attempt in 0..2 {
        let mut upstream = state
            .upstream
            .get(&*answer.url)
            .timeout(state.config.proxy_timeout);
        for name in &FORWARDED {
            if let Some(value) = req.headers().get(name) {
                upstream = upstream.header(name.as_str(), value.as_bytes());
            }
        }
        let response = upstream.send().await.map_err(describe)?;
        let status = response.status().as_u16();
        match status {
            // COS answers 403 when a cached URL went bad (revoked credentials, a damaged
            // entry): re-sign once and retry. Never right after a fresh signing (that
            // would not help), and at most once per key per minute, so that clients
            // cannot make every request re-sign and rewrite the cache.
            403 if attempt == 0
                && answer.from_cache
                && state.resigns.check(&key.as_str().to_owned()).is_ok() =>
            {
                tracing::info!(key = %key, "origin refused the cached URL; re-signing once");
                answer = service.refresh(key, options).await?;
            }
            // COS's own verdict that these credentials may not read this object is the
            // client's problem (403); any other refusal (a signature COS rejects) is
            // ours (502).
            403 => {
                if origin_denies_access(response).await {
                    return Err(ApiError::OriginForbidden);
                }
                break;
            }
            404 => return Err(ApiError::ImageNotFound),
            200 | 206 | 304 | 416 => return render(response, &answer, service, state, slot),
            other => return Err(ApiError::BadGateway(format!("the origin answered {other}"))),
        }
    }
    Err(ApiError::BadGateway(
        "the origin refused the signed URL (403)".into(),
    ))
}

/// Whether a 403 from the origin carries COS's `AccessDenied` code (read from at most
/// the first 4 KiB of its body).
async fn origin_denies_access(response: reqwest::Response) -> bool {
    use futures::StreamExt;
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        body.extend_from_slice(&chunk);
        if body.len() >= 4096 {
            break;
        }
    }
    body.windows(b"<Code>AccessDenied</Code>".len())
        .any(|w| w == b"<Code>AccessDenied</Code>")
}

/// At most one re-sign per object key per minute after an origin 403.
pub(crate) fn resign_limiter() -> crate::rate_limit::KeyedLimiter<String> {
    crate::rate_limit::KeyedLimiter::new(governor::Quota::per_minute(std::num::NonZeroU32::MIN))
}

fn render(
    response: reqwest::Response,
    answer: &image_url_service::ImageUrl,
    service: &ImageUrlService,
    state: &AppState,
    slot: tokio::sync::OwnedSemaphorePermit,
) -> Result<HttpResponse, ApiError> {
    let max_bytes = state.config.proxy_max_object_bytes;
    let length = response.content_length();
    if length.is_some_and(|length| length > max_bytes) {
        return Err(ApiError::ObjectTooLarge(max_bytes));
    }
    let status =
        StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut builder = HttpResponse::build(status);
    for name in &PASSED_BACK {
        if let Some(value) = response.headers().get(name.as_str()) {
            if let Ok(value) = header::HeaderValue::from_bytes(value.as_bytes()) {
                builder.insert_header((name.clone(), value));
            }
        }
    }
    builder.insert_header((
        header::CACHE_CONTROL,
        crate::handlers::redirect_cache_control(
            answer.ttl_remaining,
            service.config().pre_refresh,
            state.config.max_redirect_age,
        ),
    ));
    builder.insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"));
    builder.insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY));
    if status == StatusCode::NOT_MODIFIED || status == StatusCode::RANGE_NOT_SATISFIABLE {
        return Ok(builder.finish());
    }
    // Active content (HTML, SVG, scripts) or no type at all is never shown from this
    // origin: it goes out as an opaque download.
    let inline = response
        .headers()
        .get(header::CONTENT_TYPE.as_str())
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| service.access().serves_inline(t));
    if !inline {
        builder.insert_header((header::CONTENT_TYPE, "application/octet-stream"));
        builder.insert_header((header::CONTENT_DISPOSITION, "attachment"));
    }
    // The limit is enforced on the stream too: an origin that sends no length, or more
    // than it announced, is cut off at the limit (the client sees a short body).
    let mut sent: u64 = 0;
    let body = response.bytes_stream().map(move |chunk| {
        let _slot = &slot;
        let chunk = chunk.map_err(|e| actix_web::error::ErrorBadGateway(describe(e)))?;
        sent += chunk.len() as u64;
        if sent > max_bytes {
            return Err(actix_web::error::ErrorBadGateway(ApiError::ObjectTooLarge(
                max_bytes,
            )));
        }
        Ok(chunk)
    });
    if let Some(length) = length {
        // Keep the origin's Content-Length instead of switching to chunked encoding.
        builder.no_chunking(length);
    }
    Ok(builder.streaming(body))
}

/// A reqwest error without its URL (which carries the signature).
fn describe(err: reqwest::Error) -> ApiError {
    if err.is_timeout() {
        return ApiError::GatewayTimeout;
    }
    let err = err.without_url();
    ApiError::BadGateway(if err.is_connect() {
        "cannot connect to the origin".to_owned()
    } else {
        format!("{err}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A library must not change process-wide state: building the origin client
    /// installs no default crypto provider (each test runs in a process of its own
    /// under nextest; under `cargo test` another test may have installed one).
    #[test]
    fn the_origin_client_installs_no_global_crypto_provider() {
        let before = rustls::crypto::CryptoProvider::get_default().is_some();
        let _client = client(&ApiConfig::default());
        assert_eq!(
            rustls::crypto::CryptoProvider::get_default().is_some(),
            before
        );
    }
}
