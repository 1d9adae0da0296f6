//! Service statistics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use url_cache::CacheStats;

use crate::sharded::{ShardedCounter, ShardedHistogram};
use crate::CircuitState;

/// A snapshot of the service's counters since it started.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ServiceStats {
    /// URL requests (each key of a batch counts once).
    pub requests: u64,
    /// Answered from the cache.
    pub hits: u64,
    /// Not in the cache (or unreadable), signed.
    pub misses: u64,
    /// Cached but inside the pre-refresh threshold, re-signed.
    pub pre_refreshes: u64,
    /// `force_refresh` requests.
    pub forced_refreshes: u64,
    /// URLs signed.
    pub signings: u64,
    /// Cache calls that failed or timed out.
    pub cache_errors: u64,
    /// Answers marked degraded (cache failed or skipped by the breaker).
    pub degraded: u64,
    /// Cached URLs refused because they are not what this service signs for the key
    /// (another host or object, garbage); each was re-signed and replaced.
    pub corrupt_entries: u64,
    /// Signings in progress now (single-flight entries); 0 when idle.
    pub signings_in_flight: usize,
    /// What the maintenance task has done.
    pub maintenance: MaintenanceStats,
    /// What the background refresher has done.
    pub refresher: crate::RefresherStats,
    /// Cache calls on the request path that waited for a remote backend (calls answered
    /// at once, as the memory backend's are, are not timed), by duration, cumulative: how many took at most
    /// each of [`CACHE_CALL_BUCKETS`]; the last element counts them all.
    pub cache_call_buckets: [u64; CACHE_CALL_BUCKETS.len() + 1],
    /// Sum of their durations, seconds.
    pub cache_call_secs: f64,
    /// The breaker's state now.
    pub circuit: CircuitState,
    /// hits / requests.
    pub hit_rate: f64,
    /// 1 − signings / requests: the share of requests that did not need a signature.
    pub signings_saved: f64,
    /// Response time percentiles of `get_url`, microseconds. A request answered without
    /// waiting (a memory or L1 hit) counts as 1 µs, the lowest bucket, untimed; one that
    /// waits is timed from its first wait.
    pub latency_us: LatencyPercentiles,
    /// The cache backend's own counters.
    pub cache: CacheStats,
    /// The cache backend's name.
    pub cache_backend: &'static str,
    /// Where the signing credentials come from and how their refreshing goes (`None`
    /// for fixed credentials given to [`ImageUrlService::builder`](crate::ImageUrlService::builder)).
    pub credentials: Option<cos_credentials::CredentialsStatus>,
}

/// The maintenance task's runs (see `ImageUrlService::spawn_maintenance`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct MaintenanceStats {
    /// Scheduled cleanups run.
    pub cleanup_runs: u64,
    /// Of those, the ones that failed (the cache was unavailable).
    pub cleanup_failures: u64,
    /// Expired entries they removed.
    pub entries_removed: u64,
    /// When the last one ended, unix seconds.
    pub last_cleanup_at: Option<f64>,
}

/// Response-time percentiles, microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct LatencyPercentiles {
    /// Median.
    pub p50: u64,
    /// 95th percentile.
    pub p95: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Maximum.
    pub max: u64,
    /// Samples.
    pub count: u64,
}

#[derive(Debug)]
pub(crate) struct Counters {
    pub(crate) requests: ShardedCounter,
    pub(crate) hits: ShardedCounter,
    pub(crate) misses: ShardedCounter,
    pub(crate) pre_refreshes: ShardedCounter,
    pub(crate) forced_refreshes: ShardedCounter,
    pub(crate) signings: ShardedCounter,
    pub(crate) cache_errors: ShardedCounter,
    pub(crate) degraded: ShardedCounter,
    pub(crate) corrupt_entries: ShardedCounter,
    pub(crate) cleanup_runs: AtomicU64,
    pub(crate) cleanup_failures: AtomicU64,
    pub(crate) cleanup_removed: AtomicU64,
    /// `f64::to_bits` of the last cleanup's end; 0 before the first.
    pub(crate) last_cleanup_at: AtomicU64,
    /// Per-thread histograms, merged when read: no lock shared by all workers.
    latency: ShardedHistogram,
    /// Requests answered in their first poll, untimed: the histogram's lowest bucket
    /// (1 µs) when read. A counter, so that a hit takes no histogram lock.
    answered_at_once: ShardedCounter,
    /// Cache calls by duration: calls that took at most each of
    /// [`CACHE_CALL_BUCKETS`] (cumulative counts are made when read). Atomics, no lock.
    pub(crate) cache_calls: [AtomicU64; CACHE_CALL_BUCKETS.len() + 1],
    /// Sum of cache call durations, microseconds.
    pub(crate) cache_call_us: AtomicU64,
}

/// Upper bounds, seconds, of the cache call duration histogram.
pub const CACHE_CALL_BUCKETS: [f64; 9] =
    [0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1];

impl Counters {
    /// Counts a cache call that waited (a remote backend) and took `took`.
    pub(crate) fn cache_call(&self, took: std::time::Duration) {
        let secs = took.as_secs_f64();
        let slot = CACHE_CALL_BUCKETS
            .iter()
            .position(|&bound| secs <= bound)
            .unwrap_or(CACHE_CALL_BUCKETS.len());
        self.cache_calls[slot].fetch_add(1, Ordering::Relaxed);
        self.cache_call_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            cache_calls: Default::default(),
            cache_call_us: AtomicU64::new(0),
            requests: ShardedCounter::default(),
            hits: ShardedCounter::default(),
            misses: ShardedCounter::default(),
            pre_refreshes: ShardedCounter::default(),
            forced_refreshes: ShardedCounter::default(),
            signings: ShardedCounter::default(),
            cache_errors: ShardedCounter::default(),
            degraded: ShardedCounter::default(),
            corrupt_entries: ShardedCounter::default(),
            cleanup_runs: AtomicU64::new(0),
            cleanup_failures: AtomicU64::new(0),
            cleanup_removed: AtomicU64::new(0),
            last_cleanup_at: AtomicU64::new(0),
            latency: ShardedHistogram::default(),
            answered_at_once: ShardedCounter::default(),
        }
    }
}

pub(crate) fn bump(counter: &ShardedCounter) {
    counter.add(1);
}

impl Counters {
    pub(crate) fn record_latency(&self, elapsed: Duration) {
        self.latency.record(elapsed.as_micros() as u64);
    }

    /// Counts a request answered without waiting, at the histogram's lowest bucket.
    pub(crate) fn record_answered_at_once(&self) {
        self.answered_at_once.add(1);
    }

    pub(crate) fn snapshot(
        &self,
        circuit: CircuitState,
        signings_in_flight: usize,
        cache: CacheStats,
        cache_backend: &'static str,
    ) -> ServiceStats {
        let load = |c: &ShardedCounter| c.load();
        let load_plain = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let requests = load(&self.requests);
        let hits = load(&self.hits);
        let signings = load(&self.signings);
        let ratio = |n: u64| {
            if requests == 0 {
                0.0
            } else {
                n as f64 / requests as f64
            }
        };
        let latency = {
            let mut h = self.latency.merged();
            h.saturating_record_n(1, self.answered_at_once.load());
            LatencyPercentiles {
                p50: h.value_at_quantile(0.50),
                p95: h.value_at_quantile(0.95),
                p99: h.value_at_quantile(0.99),
                max: h.max(),
                count: h.len(),
            }
        };
        let mut cumulative = 0;
        let cache_call_buckets = std::array::from_fn(|i| {
            cumulative += self.cache_calls[i].load(Ordering::Relaxed);
            cumulative
        });
        ServiceStats {
            cache_call_buckets,
            cache_call_secs: self.cache_call_us.load(Ordering::Relaxed) as f64 / 1e6,
            credentials: None,
            refresher: crate::RefresherStats::default(),
            requests,
            hits,
            misses: load(&self.misses),
            pre_refreshes: load(&self.pre_refreshes),
            forced_refreshes: load(&self.forced_refreshes),
            signings,
            cache_errors: load(&self.cache_errors),
            degraded: load(&self.degraded),
            corrupt_entries: load(&self.corrupt_entries),
            signings_in_flight,
            maintenance: MaintenanceStats {
                cleanup_runs: load_plain(&self.cleanup_runs),
                cleanup_failures: load_plain(&self.cleanup_failures),
                entries_removed: load_plain(&self.cleanup_removed),
                last_cleanup_at: match load_plain(&self.last_cleanup_at) {
                    0 => None,
                    bits => Some(f64::from_bits(bits)),
                },
            },
            circuit,
            hit_rate: ratio(hits),
            signings_saved: if requests == 0 {
                0.0
            } else {
                1.0 - ratio(signings).min(1.0)
            },
            latency_us: latency,
            cache,
            cache_backend,
        }
    }
}
