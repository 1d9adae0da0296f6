//! The policy layer: cache-first presigned COS URLs.
//!
//! [`ImageUrlService`] hands out presigned URLs from a [`url_cache::UrlCache`], signing
//! with a [`cos_sign::CosSigner`] only when needed:
//!
//! - **cache first**: a cached URL is served while it has more than `pre_refresh`
//!   left (default 900 s of 3600 s); inside that threshold it is re-signed, so a client
//!   never gets a URL about to expire. A cached URL is served only if it is one this
//!   service signs for the key (scheme, host, path): anything else in the cache is a
//!   corrupt entry, replaced, never redirected to;
//! - **stable URLs**, on by default: signing windows start at multiples of `align`
//!   (default `ttl − pre_refresh`) and only the current window's URL is served, so
//!   replicas, restarts and a dead cache all hand out byte-identical URLs within a window
//!   and switch at the same instant; browsers and CDNs can cache the image;
//! - **single-flight**: concurrent requests for the same missing or stale key cause one
//!   signing and one cache write, run in a task of its own, so a caller that goes away
//!   (a dropped future) never leaves work half done; errors are shared, never cached;
//! - **degradation**: a cache error or timeout (default deadline 50 ms) never fails a
//!   request, and costs it one deadline at most: the URL is signed directly and marked
//!   `degraded`, and a circuit breaker (consecutive failures, or a failure ratio over a
//!   sliding window) stops calling a failing cache for a cool-down, or until the backend
//!   reports a reconnection, then probes;
//! - **batches** with bounded concurrency and one cache round trip, **statistics** with
//!   latency percentiles (per-thread shards, merged when read);
//! - **rotating credentials**: with [`ImageUrlService::builder_with_credentials`] it signs
//!   with whatever a [`CredentialsCache`] holds now (refreshed in the background by a
//!   `cos_credentials` provider), and no URL outlives the credentials that signed it;
//! - **maintenance** ([`ImageUrlService::spawn_maintenance`]): the background refresher
//!   re-signs URLs about to expire in batches before a reader would (one replica at a
//!   time, through a lease in the cache), drops idle entries, removes expired ones, and
//!   evaluates the [`AlertConfig`] rules, handing alerts to [`AlertSink`]s.
//!
//! Every future it returns may be dropped at any await (a client reset, a timeout,
//! `select!`): state that must be released lives in guards.
//!
//! It knows neither HTTP nor Redis: it sees `Arc<dyn UrlCache>`.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use cos_sign::{CosSigner, Credentials, Endpoint, ObjectKey};
//! use image_url_service::{ImageUrlService, ServiceConfig, UrlOptions};
//! use url_cache::MemoryCache;
//!
//! let signer = CosSigner::new(
//!     Credentials::new("AKIDexample", "secret"),
//!     Endpoint::bucket("examplebucket-1250000000", "ap-guangzhou")?,
//! );
//! let service = ImageUrlService::builder(signer, Arc::new(MemoryCache::new()))
//!     .config(ServiceConfig::default())
//!     .build()?;
//! let key = ObjectKey::new("images/a.jpg")?;
//! let first = service.get_url(&key, &UrlOptions::new()).await?;
//! let again = service.get_url(&key, &UrlOptions::new()).await?;
//! assert!(!first.from_cache && again.from_cache);
//! assert_eq!(first.url, again.url); // stable while valid
//! assert_eq!(again.mime_type.as_deref(), Some("image/jpeg"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

mod access;
mod alerts;
mod breaker;
mod config;
mod error;
mod maintenance;
mod options;
mod refresher;
mod service;
mod sharded;
mod signers;
mod stats;
mod unix_time;
mod windows;

pub use access::{AccessPolicy, AccessPolicyBuilder, LinkError, LinkSigner, MIN_SECRET_LEN};
pub use alerts::{Alert, AlertConfig, AlertSink, AlertState};
pub use breaker::CircuitState;
pub use config::ServiceConfig;
pub use cos_credentials::{CredentialsCache, CredentialsStatus};
pub use error::{Result, ServiceError};
pub use maintenance::{MaintenanceConfig, MaintenanceHandle};
pub use options::{ImageUrl, UrlOptions, UrlStatus};
pub use refresher::{
    RefreshRun, RefresherConfig, RefresherStats, REFRESH_LEASE, RUN_DURATION_BUCKETS,
};
pub use service::{
    BatchItem, ImageUrlService, ImageUrlServiceBuilder, PendingUrl, PreloadReport, UrlNow,
};
pub use stats::{LatencyPercentiles, MaintenanceStats, ServiceStats, CACHE_CALL_BUCKETS};
