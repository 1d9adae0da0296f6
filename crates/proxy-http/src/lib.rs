//! The actix-web HTTP API over `image-url-service`.
//!
//! Skeleton: nothing is implemented yet (see the proxy-http issue).
