//! Every error response: RFC 9457 `application/problem+json` with a request id. HTTP
//! status codes are decided here and nowhere else.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use image_url_service::ServiceError;
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
    /// Route exists, method does not.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// COS credentials are not configured.
    #[error("{0}")]
    NotConfigured(String),
    /// The service could not produce a URL.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// The origin failed or answered unexpectedly (proxy mode).
    #[error("the image origin failed: {0}")]
    BadGateway(String),
    /// The origin did not answer in time (proxy mode).
    #[error("the image origin timed out")]
    GatewayTimeout,
}

impl ApiError {
    fn title(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "Bad request",
            ApiError::Unauthorized => "Unauthorized",
            ApiError::AdminDisabled => "Forbidden",
            ApiError::NotFound => "Not found",
            ApiError::ImageNotFound => "Image not found",
            ApiError::MethodNotAllowed => "Method not allowed",
            ApiError::NotConfigured(_) => "Service not configured",
            ApiError::Service(ServiceError::InvalidKey(_)) => "Invalid image key",
            ApiError::Service(ServiceError::InvalidOptions(_)) => "Invalid URL options",
            ApiError::Service(ServiceError::BatchTooLarge { .. }) => "Batch too large",
            ApiError::Service(ServiceError::CredentialsExpired) => "Credentials expired",
            ApiError::Service(ServiceError::CacheUnavailable(_)) => "Cache unavailable",
            ApiError::Service(_) => "Signing failed",
            ApiError::BadGateway(_) => "Bad gateway",
            ApiError::GatewayTimeout => "Gateway timeout",
        }
    }

    /// A stable, machine-readable problem type.
    fn kind(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad-request",
            ApiError::Unauthorized => "unauthorized",
            ApiError::AdminDisabled => "admin-disabled",
            ApiError::NotFound => "not-found",
            ApiError::ImageNotFound => "image-not-found",
            ApiError::MethodNotAllowed => "method-not-allowed",
            ApiError::NotConfigured(_) => "not-configured",
            ApiError::Service(ServiceError::InvalidKey(_)) => "invalid-key",
            ApiError::Service(ServiceError::InvalidOptions(_)) => "invalid-options",
            ApiError::Service(ServiceError::BatchTooLarge { .. }) => "batch-too-large",
            ApiError::Service(ServiceError::CredentialsExpired) => "credentials-expired",
            ApiError::Service(ServiceError::CacheUnavailable(_)) => "cache-unavailable",
            ApiError::Service(_) => "signing-failed",
            ApiError::BadGateway(_) => "bad-gateway",
            ApiError::GatewayTimeout => "gateway-timeout",
        }
    }

    /// The problem document for this error, for `request_id`.
    pub fn problem(&self, request_id: &str) -> Problem {
        Problem {
            kind: format!("https://image-url.dev/problems/{}", self.kind()),
            title: self.title(),
            status: self.status_code().as_u16(),
            detail: self.to_string(),
            request_id: request_id.to_owned(),
        }
    }
}

/// RFC 9457 problem details.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::AdminDisabled => StatusCode::FORBIDDEN,
            ApiError::NotFound | ApiError::ImageNotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NotConfigured(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Service(e) if e.is_client_error() => StatusCode::BAD_REQUEST,
            ApiError::Service(
                ServiceError::CredentialsExpired | ServiceError::CacheUnavailable(_),
            ) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Service(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    fn error_response(&self) -> HttpResponse {
        // The request id is filled in by the request-id middleware, which rewrites every
        // problem body on its way out (an error has no access to the request here).
        let problem = self.problem(crate::request_id::PLACEHOLDER);
        let mut response = HttpResponse::build(self.status_code());
        response.content_type("application/problem+json");
        if matches!(self, ApiError::Unauthorized) {
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        response.json(problem)
    }
}
