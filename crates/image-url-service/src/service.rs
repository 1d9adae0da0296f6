//! `ImageUrlService`: the request path.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

// Response times are taken from the CPU's time-stamp counter where it is reliable:
// two reads per request, each far cheaper than a clock syscall (or its vDSO).
use quanta::Instant as Stopwatch;

use cos_credentials::CredentialsCache;
use cos_sign::{CosSigner, Endpoint, ObjectKey, SigningWindow};
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::stream::{self, StreamExt};
use serde::Serialize;
use url_cache::{CacheEntry, CacheError, Clock, SystemClock, UrlCache, DEFAULT_CLEANUP_BATCH};

use crate::breaker::{Breaker, BreakerSettings, Permit};
use crate::signers::Signers;
use crate::stats::{bump, Counters};
use crate::{
    AccessPolicy, ImageUrl, Result, ServiceConfig, ServiceError, ServiceStats, UrlOptions,
    UrlStatus,
};
use url_cache::{from_unix_secs, secs_duration};

/// Cache-first presigned URLs. Cheap to clone (an `Arc`); share one per process.
#[derive(Clone)]
pub struct ImageUrlService {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// This service's number among the process's (see `crate::windows`).
    id: u64,
    signers: Signers,
    pub(crate) cache: Arc<dyn UrlCache>,
    pub(crate) config: ServiceConfig,
    pub(crate) clock: Arc<dyn Clock>,
    access: AccessPolicy,
    pub(crate) breaker: Breaker,
    counters: Counters,
    /// Signings in progress, by cache key. A std mutex: held only to look up, insert or
    /// remove a flight, never across an `.await`. Holds no reference back to `Inner`
    /// (the flight's task does, until it ends), so there is no cycle.
    flights: Mutex<HashMap<String, Flight>>,
    next_flight: AtomicU64,
    /// The background refresher's history (not on the request path).
    pub(crate) refresher: Mutex<crate::refresher::RefresherState>,
    /// The alert rules' state between evaluations.
    pub(crate) alerts: Mutex<crate::alerts::AlertBook>,
    /// Refresh cycles the maintenance task has finished (a run, or a cycle left to the
    /// lease holder), for whoever waits on its progress.
    pub(crate) refresh_cycles: tokio::sync::watch::Sender<u64>,
}

/// One signing shared by every request for the same cache key while it runs. The work
/// runs in its own task, detached from the callers: it always completes (signing, then
/// storing the URL) and removes itself, whether or not anyone still waits.
struct Flight {
    id: u64,
    answer: Shared<BoxFuture<'static, Result<Signed>>>,
}

#[derive(Debug, Clone)]
struct Signed {
    url: Arc<str>,
    expires_at: f64,
    /// When the flight signed it (the service clock).
    signed_at: f64,
}

/// Owned by a flight's task: removes the flight from the map however the task ends
/// (finished, or cancelled with its runtime).
struct FlightGuard {
    service: ImageUrlService,
    cache_key: String,
    id: u64,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        let mut flights = self
            .service
            .inner
            .flights
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if flights
            .get(&self.cache_key)
            .is_some_and(|f| f.id == self.id)
        {
            flights.remove(&self.cache_key);
        }
    }
}

impl std::fmt::Debug for ImageUrlService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageUrlService")
            .field("signers", &self.inner.signers)
            .field("cache", &self.inner.cache)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// Builds an [`ImageUrlService`].
#[derive(Debug)]
pub struct ImageUrlServiceBuilder {
    signers: Signers,
    cache: Arc<dyn UrlCache>,
    config: ServiceConfig,
    clock: Arc<dyn Clock>,
    access: AccessPolicy,
}

impl ImageUrlServiceBuilder {
    /// Replaces the configuration (default [`ServiceConfig::default`]).
    pub fn config(mut self, config: ServiceConfig) -> Self {
        self.config = config;
        self
    }

    /// The clock for expiry decisions and signing windows (default the system clock).
    /// Give the cache the same clock.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The access rules every request is checked against (default
    /// [`AccessPolicy::default`]: every key, image content types only, no links).
    pub fn access(mut self, access: AccessPolicy) -> Self {
        self.access = access;
        self
    }

    /// Validates the configuration and builds the service.
    pub fn build(self) -> Result<ImageUrlService> {
        self.config.validate()?;
        let breaker = Breaker::new(
            BreakerSettings {
                threshold: self.config.breaker_threshold,
                window: self.config.breaker_window,
                failure_percent: self.config.breaker_failure_percent,
                cool_down: self.config.breaker_cool_down,
            },
            self.clock.clone(),
        );
        Ok(ImageUrlService {
            inner: Arc::new(Inner {
                id: crate::windows::next_service_id(),
                signers: self.signers,
                cache: self.cache,
                config: self.config,
                clock: self.clock,
                access: self.access,
                breaker,
                counters: Counters::default(),
                flights: Mutex::new(HashMap::new()),
                next_flight: AtomicU64::new(0),
                refresher: Mutex::default(),
                alerts: Mutex::default(),
                refresh_cycles: tokio::sync::watch::Sender::new(0),
            }),
        })
    }
}

/// What the policy makes of a cached entry.
pub(crate) enum Verdict {
    /// Serve it: its URL ends at `ends_at` (whole Unix seconds).
    Fresh { ends_at: i64 },
    /// A good URL, but inside the pre-refresh threshold or from an earlier window.
    Stale,
    /// Not a URL this service would sign for the key (another host, another object,
    /// garbage): never served.
    Corrupt,
}

/// The outcome of a cache read, as the policy sees it.
enum Lookup {
    Found(CacheEntry),
    Missing,
    /// The cache failed, timed out or is skipped by the breaker.
    Unavailable,
}

impl Lookup {
    /// A settled cache read (`None`: the cache failed or was skipped).
    fn from_answer(answer: Option<url_cache::Result<Option<CacheEntry>>>) -> Self {
        match answer {
            Some(Ok(Some(entry))) => Lookup::Found(entry),
            // Corrupt entries are overwritten by the signing that follows.
            Some(Ok(None)) | Some(Err(_)) => Lookup::Missing,
            None => Lookup::Unavailable,
        }
    }
}

/// A cache read answered at once, or the permit to wait for it with.
enum CacheRead<'s> {
    Ready(Lookup),
    Wait(Permit<'s>),
}

/// How far [`ImageUrlService::get_url`] got without waiting.
enum Now<'s> {
    Answered(Result<ImageUrl>),
    Wait(Wait<'s>),
}

/// What [`ImageUrlService::get_url_now`] could do without waiting.
#[derive(Debug)]
pub enum UrlNow {
    /// The answer: a fresh cached URL, or a refusal.
    Ready(Result<ImageUrl>),
    /// The rest waits (a cache call, a signing): [`ImageUrlService::finish_url`].
    Later(PendingUrl),
}

/// What is left of a [`ImageUrlService::get_url_now`] that could not answer at once.
/// Owned (it borrows nothing), so that it can move into a future of its own.
pub struct PendingUrl {
    step: Pending,
}

impl std::fmt::Debug for PendingUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // What a lookup found holds a signed URL, a bearer credential: not printed.
        let step = match self.step {
            Pending::Lookup => "lookup",
            Pending::Resolve(_) => "resolve",
        };
        f.debug_struct("PendingUrl").field("step", &step).finish()
    }
}

/// [`PendingUrl`]'s step.
enum Pending {
    /// Ask the cache (its `get`), then resolve.
    Lookup,
    /// Resolve from this lookup (`None`: without the cache).
    Resolve(Option<Lookup>),
}

/// What is left to do once [`ImageUrlService::get_url`] has to wait.
enum Wait<'s> {
    /// The cache answers later: wait for it (with the breaker's permit), then resolve.
    Lookup(Permit<'s>),
    /// Resolve from this lookup (`None`: without the cache).
    Resolve(Option<Lookup>),
}

/// One key's answer in a batch.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BatchItem {
    /// The key as given.
    pub key: String,
    /// Its URL, or why there is none.
    pub result: Result<ImageUrl>,
}

/// What `preload` did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct PreloadReport {
    /// Distinct keys asked for.
    pub requested: usize,
    /// Keys signed and stored now.
    pub loaded: usize,
    /// Keys already cached with enough time left.
    pub already_cached: usize,
    /// Keys that failed, with the reason.
    pub failed: Vec<(String, String)>,
}

impl ImageUrlService {
    /// A builder for a service signing with `signer` and caching in `cache`.
    pub fn builder(signer: CosSigner, cache: Arc<dyn UrlCache>) -> ImageUrlServiceBuilder {
        Self::builder_with(Signers::fixed(signer), cache)
    }

    /// A builder for a service signing for `endpoint` with whatever `credentials` holds
    /// at each moment: rotations take effect on the next signature, without a restart
    /// and without blocking readers, and every URL ends before the credentials that
    /// signed it expire. Until the first credentials load, URL requests fail with
    /// [`ServiceError::CredentialsUnavailable`]; once they have expired without
    /// replacement, with [`ServiceError::CredentialsExpired`].
    pub fn builder_with_credentials(
        endpoint: Endpoint,
        credentials: CredentialsCache,
        cache: Arc<dyn UrlCache>,
    ) -> ImageUrlServiceBuilder {
        Self::builder_with(Signers::rotating(endpoint, credentials), cache)
    }

    fn builder_with(signers: Signers, cache: Arc<dyn UrlCache>) -> ImageUrlServiceBuilder {
        ImageUrlServiceBuilder {
            signers,
            cache,
            config: ServiceConfig::default(),
            clock: Arc::new(SystemClock),
            access: AccessPolicy::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ServiceConfig {
        &self.inner.config
    }

    /// The cache.
    pub fn cache(&self) -> &Arc<dyn UrlCache> {
        &self.inner.cache
    }

    /// The access rules.
    pub fn access(&self) -> &AccessPolicy {
        &self.inner.access
    }

    /// A presigned URL for `key`: from the cache while it has more than `pre_refresh`
    /// left, else freshly signed (once, however many ask at the same time) and cached.
    /// Never fails because of the cache.
    pub async fn get_url(&self, key: &ObjectKey, options: &UrlOptions) -> Result<ImageUrl> {
        match self.get_url_now(key, options) {
            UrlNow::Ready(result) => result,
            UrlNow::Later(pending) => self.finish_url(pending, key, options).await,
        }
    }

    /// [`ImageUrlService::get_url`] in two steps, for a caller that answers at once
    /// when it can (the HTTP layer's redirect): this first step never waits. It answers
    /// a fresh cache hit (memory, or an L1 copy) or a refusal, or hands back what is
    /// left, owned, for [`ImageUrlService::finish_url`] with the same key and options.
    /// Counted once, as one `get_url`, whichever way it ends.
    pub fn get_url_now(&self, key: &ObjectKey, options: &UrlOptions) -> UrlNow {
        bump(&self.inner.counters.requests);
        // Most requests (a memory or L1 hit, a rejected key) are answered by plain calls,
        // without building a future of their own, and are counted in the histogram's
        // lowest bucket (well under its 1 µs resolution) without reading a clock.
        match self.answer_now(key, options) {
            Now::Answered(result) => {
                self.inner.counters.record_answered_at_once();
                UrlNow::Ready(result)
            }
            Now::Wait(Wait::Resolve(prefetched)) => UrlNow::Later(PendingUrl {
                step: Pending::Resolve(prefetched),
            }),
            // The cache answers later. Its `get_ready` recorded nothing, and the
            // breaker's permit borrows the service: it is given back unused (as by a
            // request dropped while waiting) and asked for again by `finish_url`.
            Now::Wait(Wait::Lookup(permit)) => {
                drop(permit);
                UrlNow::Later(PendingUrl {
                    step: Pending::Lookup,
                })
            }
        }
    }

    /// The rest of a [`ImageUrlService::get_url_now`] that could not answer at once,
    /// for the same `key` and `options`: a cache call, a signing.
    pub async fn finish_url(
        &self,
        pending: PendingUrl,
        key: &ObjectKey,
        options: &UrlOptions,
    ) -> Result<ImageUrl> {
        let wait = match pending.step {
            Pending::Resolve(prefetched) => Wait::Resolve(prefetched),
            Pending::Lookup => {
                let cache = &self.inner.cache;
                match self.inner.breaker.try_acquire(|| cache.reconnects()) {
                    Some(permit) => Wait::Lookup(permit),
                    None => Wait::Resolve(Some(Lookup::Unavailable)),
                }
            }
        };
        // The rest (a cache call, a signing) is boxed, so that this future stays small
        // for a hit: the HTTP layer allocates and moves it whole per request.
        let mut rest = Box::pin(async move {
            let prefetched = match wait {
                Wait::Resolve(prefetched) => prefetched,
                Wait::Lookup(permit) => {
                    Some(self.cache_get_later(permit, &options.cache_key(key)?).await)
                }
            };
            self.resolve(key, options, prefetched).await
        });
        // It may still answer at once (a cache whose `get` is ready when first polled);
        // otherwise it is timed from its first wait. The first poll before that is CPU
        // time of the order of a hit, negligible beside the wait.
        match futures::poll!(rest.as_mut()) {
            std::task::Poll::Ready(result) => {
                self.inner.counters.record_answered_at_once();
                result
            }
            std::task::Poll::Pending => {
                let started = Stopwatch::now();
                let result = rest.await;
                self.inner.counters.record_latency(started.elapsed());
                result
            }
        }
    }

    /// [`ImageUrlService::get_url`] as far as it goes without waiting: the answer to a
    /// rejected key or a fresh cached URL, or what the rest needs.
    fn answer_now<'s>(&'s self, key: &ObjectKey, options: &UrlOptions) -> Now<'s> {
        if let Err(err) = self.inner.access.check(key, options) {
            return Now::Answered(Err(err));
        }
        if !options.use_cache || options.force_refresh {
            return Now::Wait(Wait::Resolve(None));
        }
        let cache_key = match options.cache_key(key) {
            Ok(cache_key) => cache_key,
            Err(err) => return Now::Answered(Err(err)),
        };
        let lookup = match self.cache_get_now(&cache_key) {
            CacheRead::Ready(lookup) => lookup,
            CacheRead::Wait(permit) => return Now::Wait(Wait::Lookup(permit)),
        };
        let lookup = match lookup {
            Lookup::Found(entry) => {
                let now = self.inner.clock.now_unix();
                match self.judge(key, &entry, now) {
                    Verdict::Fresh { ends_at } => {
                        return Now::Answered(Ok(self.hit(key, entry, ends_at, now)));
                    }
                    Verdict::Stale | Verdict::Corrupt => Lookup::Found(entry),
                }
            }
            other => other,
        };
        // Stale, corrupt, missing or unavailable: `resolve` counts it and signs.
        Now::Wait(Wait::Resolve(Some(lookup)))
    }

    /// The answer for a fresh cached entry.
    fn hit(&self, key: &ObjectKey, entry: CacheEntry, ends_at: i64, now: f64) -> ImageUrl {
        bump(&self.inner.counters.hits);
        // The entry carries the MIME type guessed when it was stored.
        let mime = entry.mime_type.or_else(|| mime_type(key));
        // The entry's key is the object key unless options made the cache key longer:
        // then share it rather than copy the key.
        let key = if *entry.image_key == *key.as_str() {
            entry.image_key
        } else {
            key.as_str().into()
        };
        // Whole seconds: the time is built without a float conversion.
        let expires_at = u64::try_from(ends_at)
            .ok()
            .and_then(|secs| UNIX_EPOCH.checked_add(Duration::from_secs(secs)))
            .unwrap_or(UNIX_EPOCH);
        ImageUrl {
            from_cache: true,
            ..answer_at(
                key,
                entry.url,
                expires_at,
                secs_duration(ends_at as f64 - now),
                mime,
            )
        }
    }

    /// [`ImageUrlService::get_url`] for a key given as a string.
    pub async fn get_url_for(&self, key: &str, options: &UrlOptions) -> Result<ImageUrl> {
        let key = ObjectKey::new(key).map_err(ServiceError::InvalidKey)?;
        self.get_url(&key, options).await
    }

    /// [`ImageUrlService::get_url`] with `force_refresh`: always signs a new URL.
    pub async fn refresh(&self, key: &ObjectKey, options: &UrlOptions) -> Result<ImageUrl> {
        self.get_url(key, &options.clone().force_refresh(true))
            .await
    }

    /// URLs for many keys: one cache round trip for the cached part, at most
    /// `max_concurrent` signings at once (`None`: the configured default), one result per
    /// distinct key in the order first given. A bad key fails alone; only a batch larger
    /// than `max_batch` fails as a whole.
    pub async fn get_many(
        &self,
        keys: &[&str],
        options: &UrlOptions,
        max_concurrent: Option<usize>,
    ) -> Result<Vec<BatchItem>> {
        let started = Stopwatch::now();
        let max = self.inner.config.max_batch;
        if keys.len() > max {
            return Err(ServiceError::BatchTooLarge {
                size: keys.len(),
                max,
            });
        }
        self.inner.access.check_options(options)?;
        let mut unique: Vec<&str> = Vec::with_capacity(keys.len());
        for key in keys {
            if !unique.contains(key) {
                unique.push(key);
            }
        }
        let parsed: Vec<Result<(ObjectKey, String)>> = unique
            .iter()
            .map(|raw| {
                let key = ObjectKey::new(raw).map_err(ServiceError::InvalidKey)?;
                self.inner.access.check_key(&key)?;
                let cache_key = options.cache_key(&key)?.into_owned();
                Ok((key, cache_key))
            })
            .collect();
        let cache_keys: Vec<&str> = parsed
            .iter()
            .filter_map(|p| p.as_ref().ok().map(|(_, c)| c.as_str()))
            .collect();
        let mut lookups =
            if options.use_cache && !options.force_refresh && !cache_keys.is_empty() {
                self.cache_get_many(&cache_keys).await
            } else {
                Vec::new()
            }
            .into_iter();

        let mut items: Vec<BatchItem> = Vec::with_capacity(unique.len());
        let mut pending = Vec::new();
        for (index, (raw, parsed)) in unique.iter().zip(parsed).enumerate() {
            bump(&self.inner.counters.requests);
            items.push(BatchItem {
                key: (*raw).to_owned(),
                result: Err(ServiceError::InvalidOptions("not resolved".into())),
            });
            match parsed {
                Err(err) => items[index].result = Err(err),
                Ok((key, _)) => pending.push((index, key, lookups.next())),
            }
        }
        let concurrency = max_concurrent
            .unwrap_or(self.inner.config.batch_concurrency)
            .max(1);
        let resolved: Vec<(usize, Result<ImageUrl>)> = stream::iter(pending)
            .map(|(index, key, lookup)| async move {
                (index, self.resolve(&key, options, lookup).await)
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        for (index, result) in resolved {
            items[index].result = result;
        }
        self.inner.counters.record_latency(started.elapsed());
        Ok(items)
    }

    /// What the cache holds for `key` (without counting an access). Never fails because
    /// of the cache: `cache_available` says whether it answered.
    pub async fn status(&self, key: &ObjectKey, options: &UrlOptions) -> Result<UrlStatus> {
        self.inner.access.check(key, options)?;
        let cache_key = options.cache_key(key)?;
        let now = self.inner.clock.now_unix();
        let (entry, available) = match self.cache_call(self.inner.cache.peek(&cache_key)).await {
            Some(Ok(entry)) => (entry, true),
            Some(Err(_)) | None => (None, false),
        };
        let entry = entry.filter(|e| !matches!(self.judge(key, e, now), Verdict::Corrupt));
        let threshold = self.inner.config.pre_refresh;
        Ok(UrlStatus {
            key: key.as_str().to_owned(),
            cached: entry.is_some(),
            expires_at: entry.as_ref().map(|e| e.expires_at),
            ttl_remaining: entry.as_ref().map(|e| e.remaining(from_unix_secs(now))),
            access_count: entry.as_ref().map(|e| e.access_count),
            created_at: entry.as_ref().map(|e| e.created_at),
            last_accessed: entry.as_ref().map(|e| e.last_accessed),
            needs_refresh: entry
                .as_ref()
                .is_none_or(|e| e.needs_refresh(from_unix_secs(now), threshold)),
            cache_available: available,
        })
    }

    /// Signs and caches every key that is not already cached with enough time left,
    /// in batches of `max_batch`.
    pub async fn preload(&self, keys: &[&str], options: &UrlOptions) -> PreloadReport {
        let mut report = PreloadReport::default();
        let mut seen = std::collections::HashSet::new();
        let keys: Vec<&str> = keys.iter().copied().filter(|k| seen.insert(*k)).collect();
        report.requested = keys.len();
        for chunk in keys.chunks(self.inner.config.max_batch) {
            match self.get_many(chunk, options, None).await {
                Ok(items) => {
                    for item in items {
                        match item.result {
                            Ok(url) if url.from_cache => report.already_cached += 1,
                            Ok(_) => report.loaded += 1,
                            Err(err) => report.failed.push((item.key, err.to_string())),
                        }
                    }
                }
                Err(err) => {
                    for key in chunk {
                        report.failed.push(((*key).to_owned(), err.to_string()));
                    }
                }
            }
        }
        report
    }

    /// Removes expired entries from the cache, in batches; how many.
    pub async fn cleanup(&self) -> Result<usize> {
        // Cleanup walks the whole index: it gets a generous deadline of its own.
        let deadline = self.inner.config.cache_timeout.max(Duration::from_secs(30));
        match tokio::time::timeout(
            deadline,
            self.inner.cache.remove_expired(DEFAULT_CLEANUP_BATCH),
        )
        .await
        {
            Ok(Ok(removed)) => Ok(removed),
            Ok(Err(err)) => Err(ServiceError::CacheUnavailable(err.to_string())),
            Err(_) => Err(ServiceError::CacheUnavailable(format!(
                "cleanup timed out after {deadline:?}"
            ))),
        }
    }

    /// Counts a scheduled cleanup's outcome (the maintenance task's).
    pub(crate) fn record_cleanup(&self, result: Result<usize>) {
        let counters = &self.inner.counters;
        counters.cleanup_runs.fetch_add(1, Ordering::Relaxed);
        counters
            .last_cleanup_at
            .store(self.inner.clock.now_unix().to_bits(), Ordering::Relaxed);
        match result {
            Ok(removed) => {
                counters
                    .cleanup_removed
                    .fetch_add(removed as u64, Ordering::Relaxed);
                tracing::debug!(removed, "expired cache entries removed");
            }
            Err(err) => {
                counters.cleanup_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %err, "cache cleanup failed");
            }
        }
    }

    /// Counters, hit rate, signings saved, breaker state and latency percentiles.
    pub fn stats(&self) -> ServiceStats {
        let flights = self
            .inner
            .flights
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len();
        ServiceStats {
            credentials: self.inner.signers.status(),
            refresher: self
                .inner
                .refresher
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .totals
                .clone(),
            ..self.inner.counters.snapshot(
                self.inner.breaker.state(),
                flights,
                self.inner.cache.stats(),
                self.inner.cache.backend(),
            )
        }
    }

    /// Whether the cache answers now (bypassing the breaker), for readiness probes.
    pub async fn cache_healthy(&self) -> bool {
        matches!(
            tokio::time::timeout(
                self.inner
                    .config
                    .cache_timeout
                    .max(Duration::from_millis(500)),
                self.inner.cache.health_check()
            )
            .await,
            Ok(Ok(()))
        )
    }

    async fn resolve(
        &self,
        key: &ObjectKey,
        options: &UrlOptions,
        prefetched: Option<Lookup>,
    ) -> Result<ImageUrl> {
        let counters = &self.inner.counters;
        let cache_key = options.cache_key(key)?;
        let mut degraded = false;
        let mut refreshed = false;
        if options.force_refresh {
            bump(&counters.forced_refreshes);
            refreshed = true;
        } else if options.use_cache {
            let lookup = match prefetched {
                Some(lookup) => lookup,
                None => self.cache_get(&cache_key).await,
            };
            match lookup {
                Lookup::Found(entry) => {
                    let now = self.inner.clock.now_unix();
                    match self.judge(key, &entry, now) {
                        Verdict::Fresh { ends_at } => {
                            return Ok(self.hit(key, entry, ends_at, now));
                        }
                        Verdict::Stale => {
                            bump(&counters.pre_refreshes);
                            refreshed = true;
                        }
                        Verdict::Corrupt => {
                            // Re-signed below; the flight's write replaces the entry.
                            bump(&counters.corrupt_entries);
                            bump(&counters.misses);
                            tracing::warn!(
                                key = key.as_str(),
                                "cached URL is not one this service signs for the key: replaced"
                            );
                        }
                    }
                }
                Lookup::Missing => bump(&counters.misses),
                Lookup::Unavailable => {
                    bump(&counters.misses);
                    degraded = true;
                }
            }
        }
        let signed = if options.use_cache {
            // Boxed for the same reason as a remote lookup: a hit never comes here.
            Box::pin(self.sign_once(key, cache_key.into_owned(), options)).await?
        } else {
            self.sign_now(key, options)?
        };
        if degraded {
            bump(&counters.degraded);
        }
        let now = self.inner.clock.now_unix();
        Ok(ImageUrl {
            degraded,
            refreshed,
            ..answer(
                key.as_str().into(),
                signed.url,
                signed.expires_at,
                now,
                mime_type(key),
            )
        })
    }

    /// Whether a cached entry may be served for `key` at `now`. Its URL must be one this
    /// service signs for the key (scheme, host, path), its own signing window (not the
    /// entry's bookkeeping) must have more than the pre-refresh threshold left, and with
    /// stable windows it must be the current window's.
    pub(crate) fn judge(&self, key: &ObjectKey, entry: &CacheEntry, now: f64) -> Verdict {
        let endpoint = self.inner.signers.endpoint();
        let window = crate::windows::window_of(self.inner.id, key, &entry.url, || {
            endpoint.presigned_window(key, &entry.url)
        });
        let Some(window) = window else {
            return Verdict::Corrupt;
        };
        let ends_at = window.end();
        if ends_at as f64 - now <= self.inner.config.pre_refresh.as_secs_f64() {
            return Verdict::Stale;
        }
        let align = self.inner.config.effective_align().as_secs() as i64;
        if align > 0 {
            // Truncation is the floor from the epoch on, without libm's `floor` call.
            let whole_secs = if now >= 0.0 {
                now as i64
            } else {
                now.floor() as i64
            };
            let current_start = whole_secs.div_euclid(align) * align;
            if window.start() != current_start {
                return Verdict::Stale;
            }
        }
        Verdict::Fresh { ends_at }
    }

    /// Joins the signing in flight for `cache_key`, or starts one. The caller waits for
    /// the signature only; the flight stores it in the cache afterwards, on its own, so a
    /// request pays at most one cache deadline (its lookup).
    async fn sign_once(
        &self,
        key: &ObjectKey,
        cache_key: String,
        options: &UrlOptions,
    ) -> Result<Signed> {
        let joined_at = self.inner.clock.now_unix();
        let (answer, started) = {
            let mut flights = self.inner.flights.lock().unwrap_or_else(|p| p.into_inner());
            match flights.get(&cache_key) {
                Some(flight) => (flight.answer.clone(), None),
                None => {
                    let id = self.inner.next_flight.fetch_add(1, Ordering::Relaxed);
                    let (publish, published) = tokio::sync::oneshot::channel();
                    let answer = published
                        .map(|sent| {
                            sent.unwrap_or_else(|_| {
                                Err(ServiceError::Internal(
                                    "the signing task ended without an answer".into(),
                                ))
                            })
                        })
                        .boxed()
                        .shared();
                    flights.insert(
                        cache_key.clone(),
                        Flight {
                            id,
                            answer: answer.clone(),
                        },
                    );
                    (answer, Some((id, publish)))
                }
            }
        };
        if let Some((id, publish)) = started {
            // Spawned outside the lock: the guard's `Drop` takes it.
            let guard = FlightGuard {
                service: self.clone(),
                cache_key,
                id,
            };
            tokio::spawn(fly(guard, key.clone(), options.clone(), publish));
        }
        let signed = answer.await?;
        // A flight lives for one signing and one cache write, so its answer is fresh; but
        // if it was signed before we asked and is already inside the threshold (a stalled
        // runtime, a jump of the clock), sign anew rather than hand it out.
        let now = self.inner.clock.now_unix();
        if signed.signed_at < joined_at
            && signed.expires_at - now <= self.inner.config.pre_refresh.as_secs_f64()
        {
            return self.sign_now(key, options);
        }
        Ok(signed)
    }

    /// Signs without the cache or a flight.
    fn sign_now(&self, key: &ObjectKey, options: &UrlOptions) -> Result<Signed> {
        let (url, expires_at) = self.sign(key, options)?;
        Ok(Signed {
            url,
            expires_at,
            signed_at: self.inner.clock.now_unix(),
        })
    }

    /// Signs `key` for the configured window, clamped to the credentials' lifetime.
    pub(crate) fn sign(&self, key: &ObjectKey, options: &UrlOptions) -> Result<(Arc<str>, f64)> {
        let config = &self.inner.config;
        let now = self.inner.clock.now_unix().floor() as i64;
        let ttl = config.ttl.as_secs() as i64;
        let align = config.effective_align();
        let window = if align.is_zero() {
            SigningWindow::from_now_with_skew(now, ttl)
        } else {
            SigningWindow::aligned(now, align.as_secs() as i64, ttl)
        }
        .map_err(ServiceError::Signing)?;
        let current = self.inner.signers.current();
        let signer = current.signer(self.inner.signers.source())?;
        let window = match signer.credentials().expires_at() {
            Some(expiry) => {
                let expiry = expiry.unix_timestamp();
                if expiry <= now {
                    return Err(ServiceError::CredentialsExpired);
                }
                if window.end() > expiry {
                    SigningWindow::new(window.start(), expiry).map_err(ServiceError::Signing)?
                } else {
                    window
                }
            }
            None => window,
        };
        let url = signer
            .presign_url(key, window, &options.presign_options()?)
            .map_err(|err| match err {
                cos_sign::Error::InvalidParameter { .. }
                | cos_sign::Error::InvalidHeader { .. } => {
                    ServiceError::InvalidOptions(err.to_string())
                }
                other => ServiceError::Signing(other),
            })?;
        bump(&self.inner.counters.signings);
        Ok((url.into(), window.end() as f64))
    }

    /// Runs a cache call through the breaker and the deadline. `None`: skipped or failed
    /// (already counted); `Some(Err)` only for errors that say nothing about the cache's
    /// health (invalid input, a corrupt entry).
    pub(crate) async fn cache_call<T>(
        &self,
        call: impl std::future::Future<Output = url_cache::Result<T>>,
    ) -> Option<url_cache::Result<T>> {
        // A guard: if this future is dropped at the await below, the permit's `Drop`
        // hands a half-open probe back instead of leaving the breaker waiting forever.
        let permit = self
            .inner
            .breaker
            .try_acquire(|| self.inner.cache.reconnects())?;
        self.settle(permit, call).await
    }

    /// [`ImageUrlService::cache_call`] once the breaker let the call through.
    async fn settle<T>(
        &self,
        permit: Permit<'_>,
        call: impl std::future::Future<Output = url_cache::Result<T>>,
    ) -> Option<url_cache::Result<T>> {
        // A backend that answers at once (the memory cache always does) needs no deadline:
        // poll once before arming the timer, which saves a clock read and a timer entry
        // on every hit.
        let mut call = std::pin::pin!(call);
        let answered = match futures::poll!(call.as_mut()) {
            // Answered at once (the memory backend): not timed, nothing to see.
            std::task::Poll::Ready(answer) => Ok(answer),
            std::task::Poll::Pending => {
                // A remote backend: a round trip. One clock read starts both the deadline
                // and the latency measurement (`timeout` would read the clock again).
                let started = tokio::time::Instant::now();
                let deadline = started + self.inner.config.cache_timeout;
                let answer = tokio::time::timeout_at(deadline, call).await;
                self.inner.counters.cache_call(started.elapsed());
                answer
            }
        };
        self.settled(permit, answered)
    }

    /// Counts a cache call's outcome (`Err`: it timed out) with the breaker.
    fn settled<T>(
        &self,
        permit: Permit<'_>,
        answered: std::result::Result<url_cache::Result<T>, tokio::time::error::Elapsed>,
    ) -> Option<url_cache::Result<T>> {
        match answered {
            Ok(Ok(value)) => {
                permit.succeeded();
                Some(Ok(value))
            }
            Ok(Err(err)) if !err.is_retryable() => {
                // The backend answered; the data or the input was bad.
                permit.succeeded();
                Some(Err(err))
            }
            Ok(Err(err)) => {
                self.cache_failed(permit, &err.to_string());
                None
            }
            Err(_) => {
                let err = CacheError::Timeout(self.inner.config.cache_timeout);
                self.cache_failed(permit, &err.to_string());
                None
            }
        }
    }

    fn cache_failed(&self, permit: Permit<'_>, reason: &str) {
        bump(&self.inner.counters.cache_errors);
        if permit.failed(self.inner.cache.reconnects()) {
            tracing::warn!(
                reason,
                cool_down = ?self.inner.config.breaker_cool_down,
                "cache circuit opened: signing directly until the cool-down ends or the cache reconnects"
            );
        } else {
            tracing::debug!(reason, "cache call failed: signing directly");
        }
    }

    async fn cache_get(&self, cache_key: &str) -> Lookup {
        match self.cache_get_now(cache_key) {
            CacheRead::Ready(lookup) => lookup,
            // Boxed: waiting on a remote cache holds a deadline timer, and inline it
            // would make every hit's future (allocated and copied per request by the
            // HTTP layer) that much larger. A round trip dwarfs the allocation.
            CacheRead::Wait(permit) => Box::pin(self.cache_get_later(permit, cache_key)).await,
        }
    }

    /// A cache read as far as it goes without waiting: answered at once (the memory
    /// backend, an L1 hit, or skipped by the open breaker), or the breaker's permit to
    /// wait for the backend with.
    fn cache_get_now(&self, cache_key: &str) -> CacheRead<'_> {
        let cache = &self.inner.cache;
        match self.inner.breaker.try_acquire(|| cache.reconnects()) {
            None => CacheRead::Ready(Lookup::Unavailable),
            Some(permit) => match cache.get_ready(cache_key) {
                Some(answer) => {
                    CacheRead::Ready(Lookup::from_answer(self.settled(permit, Ok(answer))))
                }
                None => CacheRead::Wait(permit),
            },
        }
    }

    /// The rest of a cache read that has to wait: the backend's `get`, under the
    /// deadline and counted by the breaker.
    async fn cache_get_later(&self, permit: Permit<'_>, cache_key: &str) -> Lookup {
        Lookup::from_answer(self.settle(permit, self.inner.cache.get(cache_key)).await)
    }

    async fn cache_get_many(&self, cache_keys: &[&str]) -> Vec<Lookup> {
        match self.cache_call(self.inner.cache.get_many(cache_keys)).await {
            Some(Ok(found)) => found
                .into_iter()
                .map(|e| e.map_or(Lookup::Missing, Lookup::Found))
                .collect(),
            Some(Err(_)) => cache_keys.iter().map(|_| Lookup::Missing).collect(),
            None => cache_keys.iter().map(|_| Lookup::Unavailable).collect(),
        }
    }

    /// Stores an entry; whether the cache took it.
    async fn cache_put(&self, entry: CacheEntry) -> bool {
        matches!(
            self.cache_call(self.inner.cache.put(entry)).await,
            Some(Ok(()))
        )
    }
}

/// The body of a flight, in its own task: sign, publish the answer to every waiter,
/// then store it. The guard leaves the flight map when the task ends.
async fn fly(
    guard: FlightGuard,
    key: ObjectKey,
    options: UrlOptions,
    publish: tokio::sync::oneshot::Sender<Result<Signed>>,
) {
    let service = &guard.service;
    let signed = service.sign_now(&key, &options);
    let entry = match &signed {
        // A URL already inside the threshold (credentials about to expire) would be
        // re-signed on every read anyway: not worth storing.
        Ok(signed)
            if signed.expires_at - signed.signed_at
                > service.inner.config.pre_refresh.as_secs_f64() =>
        {
            let mut entry = CacheEntry::new(
                guard.cache_key.clone(),
                signed.url.clone(),
                from_unix_secs(signed.expires_at),
                from_unix_secs(signed.signed_at),
            );
            entry.mime_type = mime_type(&key);
            Some(entry)
        }
        _ => None,
    };
    // Nobody waiting any more is fine: the URL is still worth caching.
    let _ = publish.send(signed);
    if let Some(entry) = entry {
        // A failed write is counted by `cache_call` (and may open the breaker); the
        // answer has already gone out.
        service.cache_put(entry).await;
    }
    drop(guard);
}

/// An answer with every flag off; callers set the ones that apply.
fn answer(
    key: Arc<str>,
    url: Arc<str>,
    expires_at: f64,
    now: f64,
    mime_type: Option<Arc<str>>,
) -> ImageUrl {
    answer_at(
        key,
        url,
        from_unix_secs(expires_at),
        secs_duration(expires_at - now),
        mime_type,
    )
}

/// [`answer`] with the end and the time left already worked out.
fn answer_at(
    key: Arc<str>,
    url: Arc<str>,
    expires_at: SystemTime,
    ttl_remaining: Duration,
    mime_type: Option<Arc<str>>,
) -> ImageUrl {
    ImageUrl {
        key,
        url,
        expires_at,
        ttl_remaining,
        from_cache: false,
        degraded: false,
        refreshed: false,
        mime_type,
    }
}

fn mime_type(key: &ObjectKey) -> Option<Arc<str>> {
    mime_guess::from_path(key.as_str())
        .first_raw()
        .map(Arc::from)
}
