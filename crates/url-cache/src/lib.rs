//! Presigned-URL cache: one `UrlCache` trait, in-memory and Redis backends.
//!
//! Skeleton: nothing is implemented yet (see the url-cache issue). This crate exports no
//! items so that nobody can mistake it for a working cache.
