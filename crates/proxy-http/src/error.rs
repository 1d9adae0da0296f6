//! Every error response: RFC 9457 `application/problem+json` with a request id. HTTP
//! status codes are decided here and nowhere else.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use image_url_service::{LinkError, ServiceError};
use serde::Serialize;

/// An API error. `Display` is the `detail` shown to clients: it never contains a secret
/// or a signed URL.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The request is malformed (bad key, bad JSON, bad query).
    #[error("{0}")]
    BadRequest(String),
    /// Admin endpoint without a valid bearer token.
    #[error("a valid admin bearer token is required")]
    Unauthorized,
    /// Admin endpoint while no admin token is configured.
    #[error("admin endpoints are disabled: no admin token is configured")]
    AdminDisabled,
    /// No route for this path.
    #[error("no such endpoint")]
    NotFound,
    /// The object does not exist at the origin.
    #[error("the image does not exist")]
    ImageNotFound,
    /// The client is over its rate limit; it may retry after the duration.
    #[error("too many requests: retry in {} s", retry_after_secs(.0))]
    TooManyRequests(std::time::Duration),
    /// A request body over the limit.
    #[error("the request body exceeds {0} bytes")]
    PayloadTooLarge(usize),
    /// Route exists, method does not.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// COS credentials are not configured.
    #[error("{0}")]
    NotConfigured(String),
    /// The service could not produce a URL.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// The server requires signed links and this one is missing, wrong or expired.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The origin denies access to this object (proxy mode; COS `AccessDenied`).
    #[error("the image origin denies access to this object")]
    OriginForbidden,
    /// Proxy mode: the object is larger than the server streams.
    #[error("the object exceeds the proxy's limit of {0} bytes; use redirect mode")]
    ObjectTooLarge(u64),
    /// Proxy mode: every stream slot is taken; retry shortly.
    #[error("the proxy is at its limit of concurrent streams")]
    ProxyBusy,
    /// The origin failed or answered unexpectedly (proxy mode).
    #[error("the image origin failed: {0}")]
    BadGateway(String),
    /// The origin did not answer in time (proxy mode).
    #[error("the image origin timed out")]
    GatewayTimeout,
}

impl ApiError {
    /// Status, machine-readable problem type and title: one table, so the three can
    /// never disagree.
    fn classify(&self) -> (StatusCode, &'static str, &'static str) {
        use StatusCode as S;
        match self {
            ApiError::BadRequest(_) => (S::BAD_REQUEST, "bad-request", "Bad request"),
            ApiError::Unauthorized => (S::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            ApiError::AdminDisabled => (S::FORBIDDEN, "admin-disabled", "Forbidden"),
            ApiError::TooManyRequests(_) => (
                S::TOO_MANY_REQUESTS,
                "too-many-requests",
                "Too many requests",
            ),
            ApiError::PayloadTooLarge(_) => (
                S::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Payload too large",
            ),
            ApiError::NotFound => (S::NOT_FOUND, "not-found", "Not found"),
            ApiError::ImageNotFound => (S::NOT_FOUND, "image-not-found", "Image not found"),
            ApiError::MethodNotAllowed => (
                S::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            ApiError::NotConfigured(_) => (
                S::SERVICE_UNAVAILABLE,
                "not-configured",
                "Service not configured",
            ),
            ApiError::Service(ServiceError::InvalidKey(_)) => {
                (S::BAD_REQUEST, "invalid-key", "Invalid image key")
            }
            ApiError::Service(ServiceError::InvalidOptions(_)) => {
                (S::BAD_REQUEST, "invalid-options", "Invalid URL options")
            }
            ApiError::Service(ServiceError::Forbidden(_)) => {
                (S::FORBIDDEN, "forbidden-key", "Forbidden")
            }
            ApiError::Link(LinkError::Expired) => (S::GONE, "link-expired", "Link expired"),
            ApiError::Link(_) => (S::FORBIDDEN, "link-invalid", "Invalid link"),
            ApiError::Service(ServiceError::BatchTooLarge { .. }) => {
                (S::BAD_REQUEST, "batch-too-large", "Batch too large")
            }
            ApiError::Service(ServiceError::CredentialsExpired) => (
                S::SERVICE_UNAVAILABLE,
                "credentials-expired",
                "Credentials expired",
            ),
            ApiError::Service(ServiceError::CredentialsUnavailable(_)) => (
                S::SERVICE_UNAVAILABLE,
                "credentials-unavailable",
                "Credentials unavailable",
            ),
            ApiError::Service(ServiceError::CacheUnavailable(_)) => (
                S::SERVICE_UNAVAILABLE,
                "cache-unavailable",
                "Cache unavailable",
            ),
            ApiError::Service(_) => (S::INTERNAL_SERVER_ERROR, "signing-failed", "Signing failed"),
            ApiError::BadGateway(_) => (S::BAD_GATEWAY, "bad-gateway", "Bad gateway"),
            ApiError::OriginForbidden => (S::FORBIDDEN, "origin-forbidden", "Forbidden"),
            ApiError::ObjectTooLarge(_) => (
                S::UNPROCESSABLE_ENTITY,
                "object-too-large",
                "Object too large to proxy",
            ),
            ApiError::ProxyBusy => (S::SERVICE_UNAVAILABLE, "proxy-busy", "Proxy busy"),
            ApiError::GatewayTimeout => (S::GATEWAY_TIMEOUT, "gateway-timeout", "Gateway timeout"),
        }
    }

    /// The problem document for this error, for `request_id`.
    pub fn problem(&self, request_id: &str) -> Problem {
        Problem {
            kind: format!("https://image-url.dev/problems/{}", self.classify().1),
            title: self.classify().2,
            status: self.status_code().as_u16(),
            detail: match self {
                // The provider's failure names internal endpoints: it goes to the log and
                // to /readyz, not to every client.
                ApiError::Service(ServiceError::CredentialsUnavailable(_)) => {
                    "no COS credentials are loaded yet; the server keeps trying".to_owned()
                }
                other => other.to_string(),
            },
            request_id: request_id.to_owned(),
        }
    }
}

/// Whole seconds to wait, rounded up, at least one (`Retry-After` has no fractions).
fn retry_after_secs(wait: &std::time::Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// RFC 9457 problem details.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[non_exhaustive]
pub struct Problem {
    /// A URI naming the problem type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the problem type.
    pub title: &'static str,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
    /// The request id, also in the `X-Request-Id` header.
    pub request_id: String,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.classify().0
    }

    fn error_response(&self) -> HttpResponse {
        // The id of the request being handled (see `request_id`); without the middleware
        // a fresh one, sent in the header too.
        let (id, fresh) = crate::request_id::current_or_new();
        let problem = self.problem(id.to_str().unwrap_or(""));
        let mut response = HttpResponse::build(self.status_code());
        response.content_type("application/problem+json");
        if fresh {
            response.insert_header((crate::request_id::REQUEST_ID, id));
        }
        if matches!(self, ApiError::Unauthorized) {
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        if let ApiError::TooManyRequests(wait) = self {
            response.insert_header((header::RETRY_AFTER, retry_after_secs(wait)));
        }
        if matches!(self, ApiError::ProxyBusy) {
            response.insert_header((header::RETRY_AFTER, 1));
        }
        response.json(problem)
    }
}
