//! The policy layer: cache-first presigned URLs with pre-refresh, single-flight and
//! degradation.
//!
//! Skeleton: nothing is implemented yet (see the image-url-service issue).
