//! The service's background work: refreshing URLs ahead of expiry (see
//! [`RefresherConfig`]) and removing expired cache entries, on a schedule. Whoever
//! embeds the service starts it with [`ImageUrlService::spawn_maintenance`] and stops
//! it with the handle.

use std::sync::Weak;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::refresher::REFRESH_LEASE;
use crate::service::Inner;
use crate::{ImageUrlService, RefresherConfig};

/// What the maintenance task does and how often.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MaintenanceConfig {
    /// How often expired entries are removed from the cache (default 300 s).
    pub cleanup_interval: Duration,
    /// The background refresher (on by default).
    pub refresher: RefresherConfig,
    /// Alert rules and sinks (default: none, no evaluation).
    pub alerts: Option<crate::AlertConfig>,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        MaintenanceConfig {
            cleanup_interval: Duration::from_secs(300),
            refresher: RefresherConfig::default(),
            alerts: None,
        }
    }
}

/// The running maintenance task. [`MaintenanceHandle::shutdown`] stops it and waits for
/// a run in progress to end; dropping the handle stops it too, without waiting.
#[derive(Debug)]
pub struct MaintenanceHandle {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl MaintenanceHandle {
    /// Stops the task and waits until it has ended.
    pub async fn shutdown(mut self) {
        // The task may have ended already (its service was dropped): nobody to tell.
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            if let Err(err) = task.await {
                tracing::warn!(error = %err, "the maintenance task ended abnormally");
            }
        }
    }
}

impl Drop for MaintenanceHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl ImageUrlService {
    /// Starts the service's background maintenance in the current tokio runtime: every
    /// `cleanup_interval`, expired cache entries are removed (counted in
    /// [`crate::ServiceStats::maintenance`]). The task holds no strong reference to the
    /// service: it ends by itself when the last handle of the service is dropped.
    pub fn spawn_maintenance(&self, config: MaintenanceConfig) -> MaintenanceHandle {
        let (stop, stopped) = watch::channel(false);
        let service = std::sync::Arc::downgrade(&self.inner);
        let task = tokio::spawn(run(service, config, stopped));
        MaintenanceHandle {
            stop,
            task: Some(task),
        }
    }
}

async fn run(service: Weak<Inner>, config: MaintenanceConfig, mut stopped: watch::Receiver<bool>) {
    use tokio::time::{sleep_until, Instant};
    let cleanup_every = config.cleanup_interval.max(Duration::from_millis(1));
    let refresher = &config.refresher;
    let refresh_every = refresher.interval.max(Duration::from_millis(1));
    // A holder that misses two runs in a row (crashed, partitioned) loses the lease.
    let lease_ttl = refresh_every.saturating_mul(3).max(Duration::from_secs(1));
    let mut next_cleanup = Instant::now() + cleanup_every;
    // The first refresh runs at once: after a restart there may be catching up to do.
    let mut next_refresh = refresher.enabled.then(Instant::now);
    let mut holding = false;
    let alert_every = config
        .alerts
        .as_ref()
        .map(|a| a.evaluate_every.max(Duration::from_millis(1)));
    let mut next_alerts = alert_every.map(|every| Instant::now() + every);
    loop {
        let wake = [Some(next_cleanup), next_refresh, next_alerts]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(next_cleanup);
        tokio::select! {
            _ = sleep_until(wake) => {}
            _ = stopped.changed() => break,
        }
        let Some(inner) = service.upgrade() else {
            return;
        };
        let service = ImageUrlService { inner };
        if Instant::now() >= next_cleanup {
            // A run may be long (a big index); a stop request ends it between batches of
            // the backend, not in the middle of one.
            tokio::select! {
                result = service.cleanup() => service.record_cleanup(result),
                _ = stopped.changed() => break,
            }
            next_cleanup = Instant::now() + cleanup_every;
        }
        if next_refresh.is_some_and(|at| Instant::now() >= at) {
            let lease = service
                .cache_call(service.inner.cache.try_lease(
                    REFRESH_LEASE,
                    &refresher.holder,
                    lease_ttl,
                ))
                .await;
            holding = matches!(lease, Some(Ok(true)));
            match lease {
                Some(Ok(true)) => {
                    // Runs one after another: one that overruns its interval delays the
                    // next instead of running beside it.
                    tokio::select! {
                        _ = service.refresh_expiring(refresher) => {}
                        _ = stopped.changed() => break,
                    }
                }
                Some(Ok(false)) => service.record_lease_skip(),
                _ => service.record_failed_refresh("the cache is unavailable: no lease".into()),
            }
            let delay = next_refresh_delay(&service, refresh_every);
            next_refresh = Some(Instant::now() + delay);
            service.set_next_refresh(delay);
            service.inner.refresh_cycles.send_modify(|n| *n += 1);
        }
        if let (Some(alerts), Some(every)) = (&config.alerts, alert_every) {
            if next_alerts.is_some_and(|at| Instant::now() >= at) {
                tokio::select! {
                    _ = service.evaluate_alerts(alerts) => {}
                    _ = stopped.changed() => break,
                }
                next_alerts = Some(Instant::now() + every);
            }
        }
    }
    // Stopped: hand the lease over at once rather than let it run out.
    if holding {
        if let Some(inner) = service.upgrade() {
            let release = inner.cache.release_lease(REFRESH_LEASE, &refresher.holder);
            if let Ok(Err(err)) = tokio::time::timeout(Duration::from_millis(500), release).await {
                tracing::debug!(error = %err, "releasing the refresh lease failed; it will run out");
            }
        }
    }
}

/// The interval with ±10 % jitter, so replicas started together spread out; with stable
/// windows, no later than just after the current window turns, when every URL of the
/// ending window goes stale at once and should be re-signed before readers ask.
fn next_refresh_delay(service: &ImageUrlService, every: Duration) -> Duration {
    let jittered = every.mul_f64(0.9 + fastrand::f64() * 0.2);
    let align = service.inner.config.effective_align().as_secs_f64();
    if align <= 0.0 {
        return jittered;
    }
    let now = service.inner.clock.now_unix();
    let to_turn = align - now.rem_euclid(align);
    // Just after the turn (up to 1 s, spread between replicas), never at it.
    let after_turn = Duration::from_secs_f64(to_turn + 0.05 + fastrand::f64());
    jittered.min(after_turn)
}
