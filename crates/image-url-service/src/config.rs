//! Service configuration.

use std::time::Duration;

use crate::{Result, ServiceError};

/// How the service signs, caches and degrades. Build with `ServiceConfig::default()` and
/// change fields; [`ServiceConfig::validate`] runs when the service is built.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServiceConfig {
    /// Lifetime of a signed URL (default 3600 s).
    pub ttl: Duration,
    /// A cached URL with this much or less left is re-signed, never served (default 900 s).
    pub pre_refresh: Duration,
    /// Stable-URL window W: signing windows start at multiples of W, so every replica signs
    /// byte-identical URLs for a key within one window, and only the current window's
    /// URL is served (a cached URL from an earlier window is stale), so replicas, restarts
    /// and a dead cache all switch at the same instant. `None` (default): `ttl −
    /// pre_refresh`, which changes URLs exactly as often as pre-refresh alone would.
    /// `Some(ZERO)` turns it off. Needs `ttl >= align + pre_refresh`.
    pub align: Option<Duration>,
    /// Deadline of every cache call; past it the service signs directly (default 50 ms).
    pub cache_timeout: Duration,
    /// Consecutive cache failures that open the circuit breaker (default 5).
    pub breaker_threshold: u32,
    /// Cache calls in the breaker's sliding window (default 20, at most 64).
    pub breaker_window: u32,
    /// Share of failed calls in a full window, in percent, that opens the breaker even
    /// when failures alternate with successes (default 50).
    pub breaker_failure_percent: u8,
    /// How long an open breaker skips the cache before one probe (default 10 s); a
    /// reconnection reported by the cache (`UrlCache::reconnects`) ends it early.
    pub breaker_cool_down: Duration,
    /// Largest batch accepted by `get_many` (default 100).
    pub max_batch: usize,
    /// Signings in flight at once within one batch, when the caller does not say
    /// (default 16).
    pub batch_concurrency: usize,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            ttl: Duration::from_secs(3600),
            pre_refresh: Duration::from_secs(900),
            align: None,
            cache_timeout: Duration::from_millis(50),
            breaker_threshold: 5,
            breaker_window: 20,
            breaker_failure_percent: 50,
            breaker_cool_down: Duration::from_secs(10),
            max_batch: 100,
            batch_concurrency: 16,
        }
    }
}

impl ServiceConfig {
    /// The stable-URL window in effect: `align`, or `ttl − pre_refresh` when unset; zero
    /// when off.
    pub fn effective_align(&self) -> Duration {
        self.align
            .unwrap_or_else(|| self.ttl.saturating_sub(self.pre_refresh))
    }

    /// Checks that the settings are consistent.
    pub fn validate(&self) -> Result<()> {
        let invalid = |m: String| Err(ServiceError::InvalidConfig(m));
        let align = self.effective_align();
        if self.ttl.as_secs() < 1 {
            return invalid("ttl must be at least 1 s".into());
        }
        if self.pre_refresh >= self.ttl {
            return invalid(format!(
                "pre_refresh ({:?}) must be shorter than ttl ({:?})",
                self.pre_refresh, self.ttl
            ));
        }
        if !align.is_zero() && self.ttl < align + self.pre_refresh {
            return invalid(format!(
                "ttl ({:?}) must be at least align ({:?}) + pre_refresh ({:?}), or URLs would be handed out with less than pre_refresh left",
                self.ttl, align, self.pre_refresh
            ));
        }
        if align.subsec_nanos() != 0 || self.ttl.subsec_nanos() != 0 {
            return invalid("ttl and align are whole seconds".into());
        }
        if self.cache_timeout.is_zero() {
            return invalid("cache_timeout must be positive".into());
        }
        if !(1..=64).contains(&self.breaker_window)
            || !(1..=100).contains(&self.breaker_failure_percent)
        {
            return invalid(
                "breaker_window must be 1..=64 calls and breaker_failure_percent 1..=100".into(),
            );
        }
        if self.max_batch == 0 || self.batch_concurrency == 0 {
            return invalid("max_batch and batch_concurrency must be positive".into());
        }
        Ok(())
    }
}
