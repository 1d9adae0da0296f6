//! Injected time, so TTL and expiry tests never sleep.

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of "now". Every component takes its time from one of these; production uses
/// [`SystemClock`], tests a [`ManualClock`].
pub trait Clock: Send + Sync + Debug {
    /// The current time.
    fn now(&self) -> SystemTime;

    /// The current time as fractional Unix seconds, the unit of the stored records and
    /// of Redis scores.
    fn now_unix(&self) -> f64 {
        unix_secs(self.now())
    }
}

/// `time` as fractional Unix seconds (before the epoch: 0).
pub fn unix_secs(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Fractional Unix seconds as a `SystemTime`, to the microsecond (so that a time written
/// as a float and read back is the same time); negative, NaN or out of range: the epoch.
pub fn from_unix_secs(secs: f64) -> SystemTime {
    let micros = secs * 1e6;
    if !(0.0..u64::MAX as f64).contains(&micros) {
        return UNIX_EPOCH;
    }
    // Half up, then truncated: `f64::round` is a libm call on the baseline x86-64
    // target, and every cache hit answers a time; for non-negative values it rounds the
    // same.
    UNIX_EPOCH
        .checked_add(Duration::from_micros((micros + 0.5) as u64))
        .unwrap_or(UNIX_EPOCH)
}

/// Fractional seconds as a `Duration`, to the nanosecond; negative or NaN: zero. What
/// `Duration::try_from_secs_f64(secs).unwrap_or_default()` answers, at a multiplication's
/// cost for spans below 500 years (its bit-by-bit conversion is the general case).
pub fn secs_duration(secs: f64) -> Duration {
    if (0.0..1.5e10).contains(&secs) {
        // The whole seconds apart, so that the fraction is exact and the rounding to
        // the nanosecond is of the fraction only, as in the general conversion.
        let whole = secs as u64;
        // Adding and taking away 2^52 rounds to the nearest integer, ties to even (as
        // the general conversion does) without a libm call.
        const ROUNDER: f64 = (1u64 << 52) as f64;
        // At most 10^9 (a fraction rounded up to the next second), which `new` carries.
        let nanos = ((secs - whole as f64) * 1e9 + ROUNDER - ROUNDER) as u32;
        Duration::new(whole, nanos)
    } else {
        Duration::try_from_secs_f64(secs).unwrap_or_default()
    }
}

/// The system's wall clock, as of the kernel's last timer tick.
///
/// On Linux and FreeBSD it reads `CLOCK_REALTIME_COARSE`: the time the kernel stored at
/// its last tick (1 to 4 ms ago, by the kernel's `HZ`), read from shared memory in a
/// few nanoseconds, where the precise clock costs about 20 ns in the vDSO. A cache hit
/// reads the clock twice (the backend's expiry and access time, the service's verdict),
/// which made the precise clock a tenth of a memory hit. Presigned URLs live for minutes
/// to hours and are judged to the second, so a tick's resolution changes no decision.
/// Elsewhere it is [`SystemTime::now`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        coarse::now()
    }

    fn now_unix(&self) -> f64 {
        coarse::now_unix()
    }
}

#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
mod coarse {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use rustix::time::{clock_gettime, ClockId, Timespec};

    fn read() -> Timespec {
        clock_gettime(ClockId::RealtimeCoarse)
    }

    pub(super) fn now() -> SystemTime {
        let now = read();
        match (u64::try_from(now.tv_sec), u32::try_from(now.tv_nsec)) {
            (Ok(secs), Ok(nanos)) if nanos < 1_000_000_000 => {
                UNIX_EPOCH + Duration::new(secs, nanos)
            }
            // Before the epoch: as the precise clock would say.
            _ => SystemTime::now(),
        }
    }

    pub(super) fn now_unix() -> f64 {
        let now = read();
        if now.tv_sec < 0 {
            return 0.0;
        }
        now.tv_sec as f64 + now.tv_nsec as f64 * 1e-9
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
mod coarse {
    use std::time::SystemTime;

    pub(super) fn now() -> SystemTime {
        SystemTime::now()
    }

    pub(super) fn now_unix() -> f64 {
        super::unix_secs(now())
    }
}

/// A clock that moves only when told to (millisecond resolution). Share it as
/// `Arc<ManualClock>` between the test and the components under test.
///
/// ```
/// use std::time::Duration;
/// use url_cache::{Clock, ManualClock};
/// let clock = ManualClock::from_unix_secs(1_700_000_000.0);
/// clock.advance(Duration::from_millis(1500));
/// assert_eq!(clock.now_unix(), 1_700_000_001.5);
/// ```
#[derive(Debug, Default)]
pub struct ManualClock {
    millis: AtomicU64,
}

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: SystemTime) -> Self {
        Self::from_unix_secs(unix_secs(start))
    }

    /// A clock stopped at `unix_secs`.
    pub fn from_unix_secs(unix_secs: f64) -> Self {
        ManualClock {
            millis: AtomicU64::new((unix_secs * 1000.0) as u64),
        }
    }

    /// Sets the time.
    pub fn set(&self, time: SystemTime) {
        self.set_unix_secs(unix_secs(time));
    }

    /// Sets the time, in Unix seconds.
    pub fn set_unix_secs(&self, unix_secs: f64) {
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
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.millis.load(Ordering::SeqCst))
    }

    fn now_unix(&self) -> f64 {
        self.millis.load(Ordering::SeqCst) as f64 / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_clock_is_the_wall_clock_to_within_a_tick() {
        let before = SystemTime::now();
        let coarse = SystemClock.now();
        let coarse_unix = SystemClock.now_unix();
        let after = SystemTime::now();
        // The last tick's time: not after the precise clock, and not far behind it.
        assert!(coarse <= after, "{coarse:?} is after {after:?}");
        let behind = before.duration_since(coarse).unwrap_or(Duration::ZERO);
        assert!(behind < Duration::from_millis(100), "{behind:?} behind");
        assert!((coarse_unix - unix_secs(coarse)).abs() < 0.1);
        assert!(coarse_unix <= unix_secs(after));
    }

    /// The spans and times of many values, small, fractional, typical and edge: as the
    /// general conversions (`try_from_secs_f64`; `round` for times) answer them.
    #[test]
    fn the_quick_conversions_answer_as_the_general_ones() {
        let mut values = vec![
            0.0,
            -0.0,
            -1.0,
            -0.4,
            0.4,
            0.5,
            1.5,
            2.5,
            1e-9,
            4e-10,
            6e-10,
            3_599.999_999_999_5,
            1_700_000_000.123_456,
            1.4e10,
            1.6e10,
            1e300,
            f64::NAN,
            f64::INFINITY,
        ];
        // A fixed walk through the ranges a cache meets: spans up to days, times
        // around now, at every fraction.
        let mut x = 0x9E37_79B9_7F4A_7C15_u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let unit = (x >> 11) as f64 / (1u64 << 53) as f64;
            values.push(unit * 86_400.0 * 30.0);
            values.push(1_700_000_000.0 + unit * 1e8);
            values.push(unit * 2.0 - 1.0);
        }
        for secs in values {
            let general = Duration::try_from_secs_f64(secs).unwrap_or_default();
            assert_eq!(secs_duration(secs), general, "{secs:e} s");
            let micros = (secs * 1e6).round();
            let rounded = if (0.0..=u64::MAX as f64).contains(&micros) {
                UNIX_EPOCH
                    .checked_add(Duration::from_micros(micros as u64))
                    .unwrap_or(UNIX_EPOCH)
            } else {
                UNIX_EPOCH
            };
            assert_eq!(from_unix_secs(secs), rounded, "{secs:e} s");
        }
    }
}
