//! The background refresher: URLs about to expire are re-signed in batches before a
//! reader would have to wait for it, idle entries are dropped, expired ones removed.

use std::time::{Duration, Instant, SystemTime};

use futures::stream::{self, StreamExt};
use serde::Serialize;
use url_cache::{from_unix_secs, CacheEntry, DEFAULT_CLEANUP_BATCH};

use crate::options::parse_cache_key;
use crate::service::Verdict;
use crate::{ImageUrlService, Result, ServiceError};

/// The lease replicas sharing a cache take before a refresh run.
pub const REFRESH_LEASE: &str = "refresher";

/// How the refresher runs (part of [`crate::MaintenanceConfig`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RefresherConfig {
    /// Whether it runs at all (default true).
    pub enabled: bool,
    /// Time between runs (default 60 s), with ±10 % jitter. With stable windows a run
    /// also starts just after each window turns, when the previous window's URLs go
    /// stale.
    pub interval: Duration,
    /// Entries expiring within this are refreshed (default: the pre-refresh threshold
    /// plus one interval, so an entry is refreshed before a reader would re-sign it).
    pub threshold: Option<Duration>,
    /// Entries written (and idle ones dropped) per cache round trip (default 100).
    pub batch_size: usize,
    /// Batches in flight at once (default 4).
    pub max_concurrent: usize,
    /// Entries looked at per run (default 10 000); the rest wait for the next run.
    pub max_per_run: usize,
    /// Entries nobody has read for this long are dropped, not refreshed (default 24 h).
    pub idle_drop: Duration,
    /// This replica's name in the lease (default: pid and a random suffix).
    pub holder: String,
}

impl Default for RefresherConfig {
    fn default() -> Self {
        RefresherConfig {
            enabled: true,
            interval: Duration::from_secs(60),
            threshold: None,
            batch_size: 100,
            max_concurrent: 4,
            max_per_run: 10_000,
            idle_drop: Duration::from_secs(24 * 3600),
            holder: format!("{}-{:08x}", std::process::id(), fastrand::u32(..)),
        }
    }
}

/// What one refresh run did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct RefreshRun {
    /// When it started.
    #[serde(serialize_with = "crate::unix_time::serialize_time")]
    pub started_at: SystemTime,
    /// How long it took.
    #[serde(serialize_with = "crate::unix_time::serialize_secs")]
    pub duration: Duration,
    /// Entries re-signed and written back.
    pub refreshed: u64,
    /// Entries that could not be re-signed or written.
    pub failed: u64,
    /// Expired entries removed.
    pub removed: u64,
    /// Idle entries dropped instead of refreshed.
    pub dropped_idle: u64,
    /// Entries looked at and left alone: not due yet (their stable window is still the
    /// current one), or not a key this service made.
    pub skipped: u64,
    /// How overdue the most overdue entry was: how long after it should have been
    /// re-signed (its expiry less the pre-refresh threshold). Zero when none was late.
    #[serde(serialize_with = "crate::unix_time::serialize_secs")]
    pub lag: Duration,
    /// Why the run failed, if it did (the cache or the signer).
    pub error: Option<String>,
}

impl Default for RefreshRun {
    fn default() -> Self {
        RefreshRun {
            started_at: std::time::UNIX_EPOCH,
            duration: Duration::ZERO,
            refreshed: 0,
            failed: 0,
            removed: 0,
            dropped_idle: 0,
            skipped: 0,
            lag: Duration::ZERO,
            error: None,
        }
    }
}

/// The refresher's history, kept by the service for stats and status pages.
#[derive(Debug, Default)]
pub(crate) struct RefresherState {
    pub(crate) totals: RefresherStats,
    pub(crate) last_runs: std::collections::VecDeque<RefreshRun>,
    pub(crate) next_run_at: Option<SystemTime>,
}

/// How many runs are kept for `/api/v1/tasks`.
const KEPT_RUNS: usize = 10;

/// The refresher's totals since the service started.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct RefresherStats {
    /// Runs made (this replica held the lease).
    pub runs: u64,
    /// Of those, runs that failed (cache or signer unavailable).
    pub failed_runs: u64,
    /// Runs not made because another replica held the lease.
    pub lease_skips: u64,
    /// Entries refreshed.
    pub refreshed: u64,
    /// Entries that failed.
    pub failed: u64,
    /// Expired entries removed.
    pub removed: u64,
    /// Idle entries dropped.
    pub dropped_idle: u64,
    /// Entries skipped.
    pub skipped: u64,
    /// The last run's lag.
    #[serde(serialize_with = "crate::unix_time::serialize_secs")]
    pub last_lag: Duration,
    /// The last run's duration.
    #[serde(serialize_with = "crate::unix_time::serialize_secs")]
    pub last_duration: Duration,
    /// Run durations as a histogram: runs that took at most each of
    /// [`RUN_DURATION_BUCKETS`] seconds (cumulative), for Prometheus.
    pub duration_buckets: [u64; RUN_DURATION_BUCKETS.len()],
    /// The sum of all run durations, seconds.
    pub duration_sum_secs: f64,
}

/// The upper bounds, seconds, of [`RefresherStats::duration_buckets`].
pub const RUN_DURATION_BUCKETS: [f64; 10] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

impl RefresherState {
    pub(crate) fn record(&mut self, run: &RefreshRun) {
        let t = &mut self.totals;
        t.runs += 1;
        t.failed_runs += u64::from(run.error.is_some());
        t.refreshed += run.refreshed;
        t.failed += run.failed;
        t.removed += run.removed;
        t.dropped_idle += run.dropped_idle;
        t.skipped += run.skipped;
        t.last_lag = run.lag;
        t.last_duration = run.duration;
        let secs = run.duration.as_secs_f64();
        t.duration_sum_secs += secs;
        for (bucket, bound) in t.duration_buckets.iter_mut().zip(RUN_DURATION_BUCKETS) {
            *bucket += u64::from(secs <= bound);
        }
        if self.last_runs.len() == KEPT_RUNS {
            self.last_runs.pop_front();
        }
        self.last_runs.push_back(run.clone());
    }
}

/// One batch's outcome.
#[derive(Default)]
struct BatchOutcome {
    refreshed: u64,
    failed: u64,
    dropped_idle: u64,
    skipped: u64,
    error: Option<String>,
}

impl ImageUrlService {
    /// Runs the refresher once, now, on this replica (no lease: the maintenance task
    /// takes it): re-signs the entries expiring within the threshold, in batches of
    /// `batch_size` written in one round trip each, drops the idle ones and removes the
    /// expired ones. A refreshed entry keeps its access statistics. A failing cache or
    /// signer ends the run at once; the run is returned with its `error` set, and
    /// counted.
    pub async fn refresh_expiring(&self, config: &RefresherConfig) -> RefreshRun {
        let started = Instant::now();
        let mut run = RefreshRun {
            started_at: self.inner.clock.now(),
            ..RefreshRun::default()
        };
        if let Err(err) = self.refresh_into(config, &mut run).await {
            run.error = Some(err.to_string());
        }
        run.duration = started.elapsed();
        self.inner
            .refresher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(&run);
        match &run.error {
            Some(error) => tracing::warn!(error, refreshed = run.refreshed, "refresh run failed"),
            None => tracing::debug!(
                refreshed = run.refreshed,
                dropped_idle = run.dropped_idle,
                removed = run.removed,
                skipped = run.skipped,
                lag_ms = run.lag.as_millis() as u64,
                "refresh run"
            ),
        }
        run
    }

    async fn refresh_into(&self, config: &RefresherConfig, run: &mut RefreshRun) -> Result<()> {
        let pre_refresh = self.inner.config.pre_refresh;
        let threshold = config.threshold.unwrap_or(pre_refresh + config.interval);
        let entries = self
            .bulk_call(
                self.inner
                    .cache
                    .expiring_within(threshold, config.max_per_run.max(1)),
            )
            .await?;
        let now = self.inner.clock.now_unix();
        let most_overdue = entries
            .iter()
            .map(|e| now - (e.expires_at_unix() - pre_refresh.as_secs_f64()))
            .fold(0.0f64, f64::max);
        run.lag = Duration::try_from_secs_f64(most_overdue).unwrap_or_default();

        // Collected first: a lazy `map` over borrowed chunks trips the compiler's `Send`
        // inference for the spawned maintenance task.
        let batches: Vec<_> = entries
            .chunks(config.batch_size.max(1))
            .map(|batch| self.refresh_batch(batch, config, now))
            .collect();
        let mut outcomes = stream::iter(batches).buffer_unordered(config.max_concurrent.max(1));
        let mut failure = None;
        while let Some(outcome) = outcomes.next().await {
            run.refreshed += outcome.refreshed;
            run.failed += outcome.failed;
            run.dropped_idle += outcome.dropped_idle;
            run.skipped += outcome.skipped;
            if let Some(error) = outcome.error {
                // Fail fast: the batches not started yet are not started.
                failure = Some(error);
                break;
            }
        }
        drop(outcomes);
        if let Some(error) = failure {
            return Err(ServiceError::CacheUnavailable(error));
        }
        let removed = self
            .bulk_call(self.inner.cache.remove_expired(DEFAULT_CLEANUP_BATCH))
            .await?;
        run.removed = removed as u64;
        Ok(())
    }

    async fn refresh_batch(
        &self,
        batch: &[CacheEntry],
        config: &RefresherConfig,
        now: f64,
    ) -> BatchOutcome {
        let mut outcome = BatchOutcome::default();
        let mut writes = Vec::with_capacity(batch.len());
        let mut idle = Vec::new();
        let align = self.inner.config.effective_align();
        for entry in batch {
            if now - entry.last_accessed_unix() > config.idle_drop.as_secs_f64() {
                idle.push(&*entry.image_key);
                continue;
            }
            let Some((key, options)) = parse_cache_key(&entry.image_key) else {
                outcome.skipped += 1;
                continue;
            };
            // A stable URL whose window is still the current one would be signed again
            // byte for byte: it is due when the window turns, not before.
            if !align.is_zero() && matches!(self.judge(&key, entry, now), Verdict::Fresh { .. }) {
                outcome.skipped += 1;
                continue;
            }
            match self.sign(&key, &options) {
                Ok((url, expires_at)) => {
                    let mut refreshed = entry.clone();
                    refreshed.url = url;
                    refreshed.expires_at = from_unix_secs(expires_at);
                    writes.push(refreshed);
                }
                Err(
                    err @ (ServiceError::CredentialsExpired
                    | ServiceError::CredentialsUnavailable(_)),
                ) => {
                    outcome.failed += (batch.len() - writes.len() - idle.len()) as u64;
                    outcome.error = Some(err.to_string());
                    return outcome;
                }
                Err(_) => outcome.failed += 1,
            }
        }
        if !idle.is_empty() {
            match self.bulk_call(self.inner.cache.delete_many(&idle)).await {
                Ok(_) => outcome.dropped_idle = idle.len() as u64,
                Err(err) => outcome.error = Some(err.to_string()),
            }
        }
        if !writes.is_empty() {
            let count = writes.len() as u64;
            match self.bulk_call(self.inner.cache.put_many(writes)).await {
                Ok(()) => outcome.refreshed = count,
                Err(err) => {
                    outcome.failed += count;
                    outcome.error = Some(err.to_string());
                }
            }
        }
        outcome
    }

    /// A cache call of the refresher: whole batches, so a deadline of its own (the
    /// request path's, at least 10 s) instead of a lookup's; skipped at once while the
    /// breaker is open (the cache is known to be down: fail fast), and not counted by
    /// the breaker (a bulk call says little about a lookup's latency).
    async fn bulk_call<T>(
        &self,
        call: impl std::future::Future<Output = url_cache::Result<T>>,
    ) -> Result<T> {
        if self.inner.breaker.state() == crate::CircuitState::Open {
            return Err(ServiceError::CacheUnavailable(
                "the cache circuit is open".into(),
            ));
        }
        let deadline = self.inner.config.cache_timeout.max(Duration::from_secs(10));
        match tokio::time::timeout(deadline, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(ServiceError::CacheUnavailable(err.to_string())),
            Err(_) => Err(ServiceError::CacheUnavailable(format!(
                "the cache did not answer within {deadline:?}"
            ))),
        }
    }

    pub(crate) fn record_lease_skip(&self) {
        let mut state = self
            .inner
            .refresher
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        state.totals.lease_skips += 1;
    }

    pub(crate) fn record_failed_refresh(&self, error: String) {
        tracing::warn!(error, "refresh run failed");
        let run = RefreshRun {
            started_at: self.inner.clock.now(),
            error: Some(error),
            ..RefreshRun::default()
        };
        self.inner
            .refresher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(&run);
    }

    pub(crate) fn set_next_refresh(&self, delay: Duration) {
        let at = self.inner.clock.now() + delay;
        self.inner
            .refresher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .next_run_at = Some(at);
    }

    /// Waits until the maintenance task finishes its next refresh cycle (a run, or a
    /// cycle left to the replica holding the lease). For tests and tools that follow the
    /// refresher; returns at once if no maintenance task will ever run one again.
    pub async fn next_refresh_cycle(&self) {
        let mut cycles = self.inner.refresh_cycles.subscribe();
        cycles.borrow_and_update();
        // The sender lives as long as the service: this ends with a cycle.
        let _ = cycles.changed().await;
    }

    /// Who holds the refresh lease now (a replica's holder name), if the cache says.
    pub async fn refresh_lease_holder(&self) -> Option<String> {
        match self
            .cache_call(self.inner.cache.lease_holder(REFRESH_LEASE))
            .await
        {
            Some(Ok(holder)) => holder,
            _ => None,
        }
    }

    /// The refresher's totals, its last runs (oldest first) and when the next is due.
    pub fn refresher_status(&self) -> (RefresherStats, Vec<RefreshRun>, Option<SystemTime>) {
        let state = self
            .inner
            .refresher
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        (
            state.totals.clone(),
            state.last_runs.iter().cloned().collect(),
            state.next_run_at,
        )
    }
}
