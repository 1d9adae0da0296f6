//! The service's background work: removing expired cache entries on a schedule (and,
//! later, refreshing URLs ahead of expiry). Whoever embeds the service starts it with
//! [`ImageUrlService::spawn_maintenance`] and stops it with the handle.

use std::sync::Weak;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::service::Inner;
use crate::ImageUrlService;

/// What the maintenance task does and how often.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MaintenanceConfig {
    /// How often expired entries are removed from the cache (default 300 s).
    pub cleanup_interval: Duration,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        MaintenanceConfig {
            cleanup_interval: Duration::from_secs(300),
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
    let every = config.cleanup_interval.max(Duration::from_millis(1));
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate: the first cleanup runs one interval after the start.
    interval.tick().await;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stopped.changed() => return,
        }
        let Some(inner) = service.upgrade() else {
            return;
        };
        let service = ImageUrlService { inner };
        // A run may be long (a big index); a stop request ends it between batches of the
        // backend, not in the middle of one.
        tokio::select! {
            result = service.cleanup() => service.record_cleanup(result),
            _ = stopped.changed() => return,
        }
    }
}
