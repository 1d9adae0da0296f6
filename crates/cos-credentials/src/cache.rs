//! Credentials held in memory and refreshed ahead of expiry by a background task.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use cos_sign::Credentials;
use serde::Serialize;
use time::OffsetDateTime;

use crate::{CredentialsError, ProvideCredentials};

/// When a [`CredentialsCache`] asks its provider again.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RefreshConfig {
    /// Refresh temporary credentials this long before they expire, or at half their
    /// lifetime if that is shorter (default 15 minutes). Keep it above the service's
    /// pre-refresh threshold, so URLs are rarely cut short by an expiry.
    pub refresh_before: Duration,
    /// Reload credentials without an expiry this often, to pick up an edited profile
    /// file or a rotated key (default 10 minutes; zero: never).
    pub reload_interval: Duration,
    /// First retry delay after a failure, doubled per failure (default 1 s).
    pub retry_min: Duration,
    /// Longest retry delay (default 60 s).
    pub retry_max: Duration,
    /// A load that takes longer fails (default 10 s).
    pub load_timeout: Duration,
}

impl Default for RefreshConfig {
    fn default() -> Self {
        RefreshConfig {
            refresh_before: Duration::from_secs(15 * 60),
            reload_interval: Duration::from_secs(10 * 60),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            load_timeout: Duration::from_secs(10),
        }
    }
}

/// What a [`CredentialsCache`] holds and how its refreshing goes, for stats and health
/// checks. Holds no secret.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct CredentialsStatus {
    /// The provider's name.
    pub source: &'static str,
    /// The public secret id in use, if any.
    pub secret_id: Option<String>,
    /// When the credentials in use expire (Unix seconds), if they do.
    pub expires_at: Option<i64>,
    /// When they were loaded (Unix seconds).
    pub loaded_at: Option<i64>,
    /// Times new credentials replaced the previous ones.
    pub rotations: u64,
    /// Failed loads since the last success.
    pub consecutive_failures: u64,
    /// The last failure's message, until a load succeeds.
    pub last_error: Option<String>,
}

impl CredentialsStatus {
    /// Whether credentials are held and have not expired at `now` (Unix seconds).
    pub fn valid_at(&self, now: i64) -> bool {
        self.secret_id.is_some() && self.expires_at.is_none_or(|at| at > now)
    }
}

/// The credentials a provider last gave, refreshed in the background ahead of their
/// expiry (never on the caller's path), with retries and backoff when the provider
/// fails; the last good credentials are kept meanwhile. Reading is lock-free.
///
/// Cheap to clone; the refresh task stops when the last clone is dropped.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use cos_credentials::{CredentialsCache, RefreshConfig, StaticProvider};
/// use cos_sign::Credentials;
/// let cache = CredentialsCache::spawn(
///     StaticProvider::new(Credentials::new("AKIDexample", "secret")),
///     RefreshConfig::default(),
/// );
/// let credentials = cache.ready().await?;
/// assert_eq!(credentials.secret_id(), "AKIDexample");
/// # Ok::<(), cos_credentials::CredentialsError>(()) }).unwrap();
/// ```
#[derive(Clone)]
pub struct CredentialsCache {
    shared: Arc<Shared>,
    /// `None` for fixed credentials.
    _task: Option<Arc<TaskGuard>>,
}

struct Shared {
    provider: Arc<dyn ProvideCredentials>,
    config: RefreshConfig,
    current: ArcSwapOption<Credentials>,
    /// Bumped after every new `current`: readers compare it to rebuild derived state
    /// (a signer) only on a change.
    generation: AtomicU64,
    status: Mutex<CredentialsStatus>,
    /// Bumped after every load attempt, for whoever waits on progress.
    attempts: tokio::sync::watch::Sender<u64>,
}

struct TaskGuard(tokio::task::AbortHandle);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl std::fmt::Debug for CredentialsCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialsCache")
            .field("provider", &self.shared.provider)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl CredentialsCache {
    /// Starts loading from `provider` at once and refreshing in the background. Must be
    /// called inside a tokio runtime. Until the first load succeeds, [`current`] is
    /// `None`; [`ready`] waits for it.
    ///
    /// [`current`]: CredentialsCache::current
    /// [`ready`]: CredentialsCache::ready
    pub fn spawn(provider: impl ProvideCredentials + 'static, config: RefreshConfig) -> Self {
        let shared = Arc::new(Shared::new(Arc::new(provider), config));
        let task = tokio::spawn(refresh_loop(shared.clone()));
        CredentialsCache {
            shared,
            _task: Some(Arc::new(TaskGuard(task.abort_handle()))),
        }
    }

    /// Fixed credentials, never refreshed (no task).
    pub fn fixed(credentials: Credentials) -> Self {
        let cache = CredentialsCache {
            shared: Arc::new(Shared::new(
                Arc::new(crate::StaticProvider::new(credentials.clone())),
                RefreshConfig::default(),
            )),
            _task: None,
        };
        cache.shared.store(credentials, now_unix());
        cache
    }

    /// The credentials held now (possibly expired: check
    /// [`Credentials::expires_at`]), or `None` before the first successful load.
    pub fn current(&self) -> Option<Arc<Credentials>> {
        self.shared.current.load_full()
    }

    /// Changes whenever [`current`](CredentialsCache::current) does. One atomic read.
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    /// The provider's name, what is held, and how refreshing goes.
    pub fn status(&self) -> CredentialsStatus {
        self.shared
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits until credentials are held, or the first load fails (its error).
    pub async fn ready(&self) -> Result<Arc<Credentials>, CredentialsError> {
        let mut attempts = self.shared.attempts.subscribe();
        loop {
            if let Some(current) = self.current() {
                return Ok(current);
            }
            if *attempts.borrow_and_update() > 0 {
                let why = self.status().last_error.unwrap_or_default();
                return Err(CredentialsError::NoneValid(why));
            }
            if attempts.changed().await.is_err() {
                return Err(CredentialsError::NoneValid(
                    "the refresh task stopped".into(),
                ));
            }
        }
    }

    /// Waits for the next load attempt to finish (success or failure). For tests and
    /// tools that follow the refresher.
    pub async fn next_attempt(&self) {
        let mut attempts = self.shared.attempts.subscribe();
        attempts.borrow_and_update();
        // An error means the task is gone: nothing more will happen.
        let _ = attempts.changed().await;
    }
}

impl Shared {
    fn new(provider: Arc<dyn ProvideCredentials>, config: RefreshConfig) -> Self {
        Shared {
            status: Mutex::new(CredentialsStatus {
                source: provider.name(),
                secret_id: None,
                expires_at: None,
                loaded_at: None,
                rotations: 0,
                consecutive_failures: 0,
                last_error: None,
            }),
            provider,
            config,
            current: ArcSwapOption::empty(),
            generation: AtomicU64::new(0),
            attempts: tokio::sync::watch::Sender::new(0),
        }
    }

    fn store(&self, credentials: Credentials, now: i64) {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if self.current.load().is_some() {
            status.rotations += 1;
        }
        status.secret_id = Some(credentials.secret_id().to_owned());
        status.expires_at = credentials.expires_at().map(OffsetDateTime::unix_timestamp);
        status.loaded_at = Some(now);
        status.consecutive_failures = 0;
        status.last_error = None;
        self.current.store(Some(Arc::new(credentials)));
        self.generation.fetch_add(1, Ordering::Release);
    }
}

fn now_unix() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

async fn refresh_loop(shared: Arc<Shared>) {
    let config = shared.config.clone();
    let mut lifetime: Option<Duration> = None;
    loop {
        let loaded_at = OffsetDateTime::now_utc();
        let outcome = match tokio::time::timeout(config.load_timeout, shared.provider.load()).await
        {
            Ok(outcome) => outcome,
            Err(_) => Err(CredentialsError::Timeout {
                source_name: shared.provider.name(),
                timeout: config.load_timeout,
            }),
        };
        let delay = match outcome {
            Ok(credentials) => {
                let unchanged = shared.current.load().as_deref() == Some(&credentials);
                if !unchanged {
                    lifetime = credentials
                        .expires_at()
                        .map(|at| Duration::try_from(at - loaded_at).unwrap_or_default());
                    tracing::info!(
                        source = shared.provider.name(),
                        secret_id = credentials.secret_id(),
                        expires_at = ?credentials.expires_at(),
                        "COS credentials loaded"
                    );
                    shared.store(credentials.clone(), loaded_at.unix_timestamp());
                } else {
                    let mut status = shared.status.lock().unwrap_or_else(|p| p.into_inner());
                    status.consecutive_failures = 0;
                    status.last_error = None;
                }
                next_delay(&config, &credentials, lifetime, OffsetDateTime::now_utc())
            }
            Err(err) => {
                let failures = {
                    let mut status = shared.status.lock().unwrap_or_else(|p| p.into_inner());
                    status.consecutive_failures += 1;
                    status.last_error = Some(err.to_string());
                    status.consecutive_failures
                };
                let held = shared.current.load_full();
                let remaining = held
                    .as_ref()
                    .and_then(|c| c.expires_at())
                    .map(|at| at - OffsetDateTime::now_utc());
                match (&held, remaining) {
                    (Some(_), Some(left)) if left.is_negative() => tracing::error!(
                        source = shared.provider.name(), error = %err, failures,
                        "COS credentials have expired and cannot be refreshed: signing fails until they are"
                    ),
                    (Some(_), _) => tracing::warn!(
                        source = shared.provider.name(), error = %err, failures,
                        "refreshing COS credentials failed; still signing with the current ones"
                    ),
                    (None, _) => tracing::warn!(
                        source = shared.provider.name(), error = %err, failures,
                        "loading COS credentials failed; URL requests fail until they load"
                    ),
                }
                let backoff = config
                    .retry_min
                    .saturating_mul(1 << failures.saturating_sub(1).min(16))
                    .min(config.retry_max);
                // Never wait past the point where the held credentials run out.
                Some(
                    match remaining.and_then(|left| Duration::try_from(left / 2).ok()) {
                        Some(half) => backoff.min(half.max(config.retry_min)),
                        None => backoff,
                    },
                )
            }
        };
        shared.attempts.send_modify(|n| *n += 1);
        match delay {
            Some(delay) => tokio::time::sleep(jitter(delay)).await,
            None => return,
        }
    }
}

/// When to ask again after a successful load. `None`: never (credentials without an
/// expiry and reloading off).
fn next_delay(
    config: &RefreshConfig,
    credentials: &Credentials,
    lifetime: Option<Duration>,
    now: OffsetDateTime,
) -> Option<Duration> {
    let Some(expires_at) = credentials.expires_at() else {
        return (!config.reload_interval.is_zero()).then_some(config.reload_interval);
    };
    let remaining = Duration::try_from(expires_at - now).unwrap_or_default();
    let ahead = lifetime.map_or(config.refresh_before, |l| config.refresh_before.min(l / 2));
    match remaining.checked_sub(ahead) {
        Some(wait) if !wait.is_zero() => Some(wait),
        // Already inside the refresh window: the source handed back credentials that
        // have not been rotated yet (a metadata service rotates on its own schedule).
        // Ask again soon, but not in a tight loop.
        _ => Some((remaining / 4).clamp(config.retry_min, config.retry_max)),
    }
}

/// ±10 %, so replicas started together do not ask their source in step.
fn jitter(delay: Duration) -> Duration {
    delay.mul_f64(0.9 + fastrand::f64() * 0.2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Result;
    use async_trait::async_trait;
    use std::collections::VecDeque;

    /// Answers from a script, then fails.
    #[derive(Debug)]
    struct Scripted(Mutex<VecDeque<Result<Credentials>>>);

    #[async_trait]
    impl ProvideCredentials for Scripted {
        fn name(&self) -> &'static str {
            "scripted"
        }
        async fn load(&self) -> Result<Credentials> {
            self.0.lock().unwrap().pop_front().unwrap_or_else(|| {
                Err(CredentialsError::unavailable(
                    "scripted",
                    "script over",
                    None,
                ))
            })
        }
    }

    fn temporary(id: &str, lifetime: Duration) -> Credentials {
        Credentials::new(id, "key")
            .with_session_token("token", Some(OffsetDateTime::now_utc() + lifetime))
    }

    fn fast() -> RefreshConfig {
        RefreshConfig {
            retry_min: Duration::from_millis(20),
            retry_max: Duration::from_millis(50),
            ..RefreshConfig::default()
        }
    }

    #[tokio::test]
    async fn rotates_ahead_of_expiry_without_readers_waiting() {
        let script = Scripted(Mutex::new(VecDeque::from([
            Ok(temporary("AKID1", Duration::from_millis(600))),
            Ok(temporary("AKID2", Duration::from_secs(3600))),
        ])));
        let cache = CredentialsCache::spawn(script, fast());
        let first = cache.ready().await.unwrap();
        assert_eq!(first.secret_id(), "AKID1");
        let generation = cache.generation();
        // Refreshed at half the 600 ms lifetime, before the first ones expire.
        tokio::time::timeout(Duration::from_secs(5), cache.next_attempt())
            .await
            .unwrap();
        let second = cache.current().unwrap();
        assert_eq!(second.secret_id(), "AKID2");
        assert!(
            OffsetDateTime::now_utc() < first.expires_at().unwrap(),
            "refreshed only after expiry"
        );
        assert_ne!(cache.generation(), generation);
        let status = cache.status();
        assert_eq!((status.rotations, status.consecutive_failures), (1, 0));
    }

    #[tokio::test]
    async fn a_failing_provider_keeps_the_valid_credentials_and_reports() {
        let script = Scripted(Mutex::new(VecDeque::from([Ok(temporary(
            "AKID1",
            Duration::from_millis(400),
        ))])));
        let cache = CredentialsCache::spawn(script, fast());
        cache.ready().await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), cache.next_attempt())
            .await
            .unwrap();
        assert_eq!(cache.current().unwrap().secret_id(), "AKID1");
        let status = cache.status();
        assert!(status.consecutive_failures >= 1, "{status:?}");
        assert!(
            status
                .last_error
                .as_deref()
                .unwrap()
                .contains("script over"),
            "{status:?}"
        );
        // And it keeps trying, with backoff, rather than giving up.
        tokio::time::timeout(Duration::from_secs(5), cache.next_attempt())
            .await
            .unwrap();
        assert!(cache.status().consecutive_failures >= 2);
    }

    #[tokio::test]
    async fn ready_reports_the_first_failure_and_recovers_later() {
        let script = Scripted(Mutex::new(VecDeque::from([
            Err(CredentialsError::unavailable(
                "scripted",
                "metadata down",
                None,
            )),
            Ok(Credentials::new("AKIDlater", "k")),
        ])));
        let cache = CredentialsCache::spawn(script, fast());
        let err = cache.ready().await.unwrap_err();
        assert!(err.to_string().contains("metadata down"), "{err}");
        tokio::time::timeout(Duration::from_secs(5), cache.next_attempt())
            .await
            .unwrap();
        assert_eq!(cache.current().unwrap().secret_id(), "AKIDlater");
    }

    #[tokio::test]
    async fn dropping_the_last_handle_stops_the_task() {
        let provider = Arc::new(Scripted(Mutex::new(VecDeque::from([Ok(
            Credentials::new("A", "k"),
        )]))));
        let cache = CredentialsCache::spawn(provider.clone(), fast());
        cache.ready().await.unwrap();
        let weak = Arc::downgrade(&cache.shared);
        drop(cache);
        // The aborted task releases its `Arc<Shared>` (and with it the provider) once
        // the runtime has run the cancellation.
        for _ in 0..100 {
            if weak.upgrade().is_none() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(
            weak.upgrade().is_none(),
            "the refresh task outlived its handles"
        );
        assert_eq!(Arc::strong_count(&provider), 1);
    }

    #[test]
    fn delays() {
        let config = RefreshConfig::default();
        let now = OffsetDateTime::now_utc();
        let two_hours = Credentials::new("a", "k")
            .with_session_token("t", Some(now + Duration::from_secs(7200)));
        let d = next_delay(&config, &two_hours, Some(Duration::from_secs(7200)), now).unwrap();
        assert_eq!(d.as_secs(), 7200 - 900);
        let short =
            Credentials::new("a", "k").with_session_token("t", Some(now + Duration::from_secs(6)));
        assert_eq!(
            next_delay(&config, &short, Some(Duration::from_secs(6)), now)
                .unwrap()
                .as_secs(),
            3
        );
        // Inside the window and not rotated yet: soon, bounded.
        let d = next_delay(
            &config,
            &two_hours,
            Some(Duration::from_secs(7200)),
            now + Duration::from_secs(7000),
        )
        .unwrap();
        assert_eq!(d, Duration::from_secs(50));
        let fixed = Credentials::new("a", "k");
        assert_eq!(
            next_delay(&config, &fixed, None, now),
            Some(config.reload_interval)
        );
    }
}
