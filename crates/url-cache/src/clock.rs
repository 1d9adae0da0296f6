//! Injected time, so TTL and expiry tests never sleep.

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of "now" as unix seconds (fractional). Every component takes its time from
/// one of these; production uses [`SystemClock`], tests a [`ManualClock`].
pub trait Clock: Send + Sync + Debug {
    /// The current time, unix seconds.
    fn now(&self) -> f64;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> f64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    }
}

/// A clock that moves only when told to (millisecond resolution). Share it as
/// `Arc<ManualClock>` between the test and the components under test.
///
/// ```
/// use std::time::Duration;
/// use url_cache::{Clock, ManualClock};
/// let clock = ManualClock::new(1_700_000_000.0);
/// clock.advance(Duration::from_millis(1500));
/// assert_eq!(clock.now(), 1_700_000_001.5);
/// ```
#[derive(Debug, Default)]
pub struct ManualClock {
    millis: AtomicU64,
}

impl ManualClock {
    /// A clock stopped at `unix_secs`.
    pub fn new(unix_secs: f64) -> Self {
        ManualClock {
            millis: AtomicU64::new((unix_secs * 1000.0) as u64),
        }
    }

    /// Sets the time.
    pub fn set(&self, unix_secs: f64) {
        self.millis
            .store((unix_secs * 1000.0) as u64, Ordering::SeqCst);
    }

    /// Moves the time forward.
    pub fn advance(&self, by: Duration) {
        self.millis
            .fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> f64 {
        self.millis.load(Ordering::SeqCst) as f64 / 1000.0
    }
}
