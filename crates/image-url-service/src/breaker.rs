//! A circuit breaker in front of the cache.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use url_cache::Clock;

/// The breaker's state, as reported in statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CircuitState {
    /// The cache is used.
    Closed,
    /// The cache is skipped until the cool-down ends.
    Open,
    /// One probe call is allowed through to test the cache.
    HalfOpen,
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    Closed,
    /// Skipping the cache until `until`, or until the backend reports a reconnection
    /// beyond `reconnects` (whichever comes first).
    Open {
        until: f64,
        reconnects: u64,
    },
    HalfOpen {
        probing: bool,
    },
}

#[derive(Debug)]
struct State {
    mode: Mode,
    consecutive_failures: u32,
    /// The last `window` outcomes while closed, newest in bit 0; a set bit is a failure.
    outcomes: u64,
    /// How many of the bits in `outcomes` are real calls (at most `window`).
    calls: u32,
}

/// When the breaker opens and how long it stays open.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BreakerSettings {
    /// Consecutive failures that open the breaker.
    pub(crate) threshold: u32,
    /// Calls in the sliding window (1..=64).
    pub(crate) window: u32,
    /// Failures in a full window, in percent, that open the breaker.
    pub(crate) failure_percent: u8,
    /// How long an open breaker skips the cache.
    pub(crate) cool_down: Duration,
}

/// Opens after `threshold` consecutive failures, or when at least `failure_percent` of
/// the last `window` calls failed (intermittent failures that a success in between
/// would hide from a plain counter, as resilience4j's count-based window does). Stays
/// open for `cool_down`, or until the backend says it has reconnected, then lets one
/// probe through: its success closes the breaker, its failure opens it again.
///
/// A plain mutex: the critical sections are a few comparisons, never held across an
/// `.await`. While the cache is healthy (closed, and the last `window` calls all
/// succeeded) a success changes nothing, so calls take no lock and write nothing shared:
/// every worker only reads the `healthy` flag. The first failure takes the lock and
/// clears it.
#[derive(Debug)]
pub(crate) struct Breaker {
    state: Mutex<State>,
    /// Closed with a full window of successes: a success would leave `state` as it is.
    /// Written only under the lock.
    healthy: AtomicBool,
    /// Times the lock was taken (tests check that healthy calls take none).
    #[cfg(test)]
    locks: std::sync::atomic::AtomicU64,
    settings: BreakerSettings,
    clock: Arc<dyn Clock>,
}

/// Permission to call the cache. Settle it with [`Permit::succeeded`] or
/// [`Permit::failed`]; a permit dropped unsettled (its call was cancelled) records
/// nothing, and if it was the half-open probe it hands the probe back, so the next call
/// probes instead of the breaker waiting for an answer that will never come.
#[derive(Debug)]
pub(crate) struct Permit<'b> {
    breaker: &'b Breaker,
    probe: bool,
    settled: bool,
}

impl Permit<'_> {
    /// The call succeeded (or the backend answered, even with bad data).
    pub(crate) fn succeeded(mut self) {
        self.settled = true;
        // A success while healthy changes nothing (see `Breaker`); a failure that
        // raced ahead of it cleared the flag and is recorded as if it came after.
        if !self.probe && self.breaker.healthy.load(Ordering::Acquire) {
            return;
        }
        self.breaker.record(self.probe, None);
    }

    /// The call failed or timed out; `reconnects` is the backend's reconnection count
    /// now, so that only a later reconnection ends an open breaker's cool-down early.
    /// Returns true when this failure opened the breaker.
    pub(crate) fn failed(mut self, reconnects: u64) -> bool {
        self.settled = true;
        self.breaker.record(self.probe, Some(reconnects))
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.settled && self.probe {
            let mut state = self.breaker.lock();
            if let Mode::HalfOpen { probing: true } = state.mode {
                state.mode = Mode::HalfOpen { probing: false };
            }
        }
    }
}

impl Breaker {
    pub(crate) fn new(settings: BreakerSettings, clock: Arc<dyn Clock>) -> Self {
        Breaker {
            state: Mutex::new(State {
                mode: Mode::Closed,
                consecutive_failures: 0,
                outcomes: 0,
                calls: 0,
            }),
            healthy: AtomicBool::new(false),
            #[cfg(test)]
            locks: Default::default(),
            settings: BreakerSettings {
                threshold: settings.threshold.max(1),
                window: settings.window.clamp(1, 64),
                failure_percent: settings.failure_percent.clamp(1, 100),
                cool_down: settings.cool_down,
            },
            clock,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        #[cfg(test)]
        self.locks.fetch_add(1, Ordering::Relaxed);
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Some` if the cache may be called now. `reconnects` reads the backend's
    /// reconnection count (see `UrlCache::reconnects`); it is called only while open.
    pub(crate) fn try_acquire(&self, reconnects: impl FnOnce() -> u64) -> Option<Permit<'_>> {
        if self.healthy.load(Ordering::Acquire) {
            return Some(Permit {
                breaker: self,
                probe: false,
                settled: false,
            });
        }
        let mut state = self.lock();
        let probe = match state.mode {
            Mode::Closed => false,
            Mode::Open {
                until,
                reconnects: seen,
            } => {
                if self.clock.now_unix() < until && reconnects() <= seen {
                    return None;
                }
                true
            }
            Mode::HalfOpen { probing: true } => return None,
            Mode::HalfOpen { probing: false } => true,
        };
        if probe {
            state.mode = Mode::HalfOpen { probing: true };
        }
        Some(Permit {
            breaker: self,
            probe,
            settled: false,
        })
    }

    /// Records the outcome of a call; whether it opened the breaker. Outcomes of calls
    /// that started before the breaker opened are ignored: only the probe decides.
    fn record(&self, probe: bool, failure: Option<u64>) -> bool {
        let failed = failure.is_some();
        let reconnects = failure.unwrap_or_default();
        let mut state = self.lock();
        match state.mode {
            Mode::HalfOpen { .. } if probe => {
                if failed {
                    self.open(&mut state, reconnects);
                } else {
                    state.mode = Mode::Closed;
                    state.consecutive_failures = 0;
                    state.outcomes = 0;
                    state.calls = 0;
                }
                failed
            }
            Mode::Closed if !probe => {
                let window = self.settings.window;
                let mask = if window == 64 {
                    u64::MAX
                } else {
                    (1u64 << window) - 1
                };
                state.outcomes = ((state.outcomes << 1) | u64::from(failed)) & mask;
                state.calls = (state.calls + 1).min(window);
                self.healthy.store(
                    state.calls == window && state.outcomes == 0,
                    Ordering::Release,
                );
                if !failed {
                    state.consecutive_failures = 0;
                    return false;
                }
                state.consecutive_failures += 1;
                let failures = state.outcomes.count_ones();
                let ratio_reached = state.calls == window
                    && failures * 100 >= u32::from(self.settings.failure_percent) * window;
                if state.consecutive_failures >= self.settings.threshold || ratio_reached {
                    self.open(&mut state, reconnects);
                    return true;
                }
                false
            }
            _ => false,
        }
    }

    fn open(&self, state: &mut State, reconnects: u64) {
        self.healthy.store(false, Ordering::Release);
        state.mode = Mode::Open {
            until: self.clock.now_unix() + self.settings.cool_down.as_secs_f64(),
            reconnects,
        };
        state.consecutive_failures = 0;
        state.outcomes = 0;
        state.calls = 0;
    }

    pub(crate) fn state(&self) -> CircuitState {
        match self.lock().mode {
            Mode::Closed => CircuitState::Closed,
            Mode::Open { until, .. } if self.clock.now_unix() >= until => CircuitState::HalfOpen,
            Mode::Open { .. } => CircuitState::Open,
            Mode::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use url_cache::ManualClock;

    fn breaker(threshold: u32, window: u32, clock: Arc<ManualClock>) -> Breaker {
        Breaker::new(
            BreakerSettings {
                threshold,
                window,
                failure_percent: 50,
                cool_down: Duration::from_secs(10),
            },
            clock,
        )
    }

    fn no_reconnects() -> u64 {
        0
    }

    #[test]
    fn opens_after_threshold_then_probes_once() {
        let clock = Arc::new(ManualClock::from_unix_secs(1000.0));
        let breaker = breaker(3, 64, clock.clone());
        for _ in 0..2 {
            assert!(!breaker.try_acquire(no_reconnects).unwrap().failed(0));
        }
        assert!(breaker.try_acquire(no_reconnects).unwrap().failed(0));
        assert_eq!(breaker.state(), CircuitState::Open);
        assert!(breaker.try_acquire(no_reconnects).is_none());
        clock.advance(Duration::from_secs(10));
        let probe = breaker.try_acquire(no_reconnects).unwrap();
        assert!(probe.probe);
        assert!(
            breaker.try_acquire(no_reconnects).is_none(),
            "one probe at a time"
        );
        assert!(probe.failed(0));
        assert!(breaker.try_acquire(no_reconnects).is_none());
        clock.advance(Duration::from_secs(10));
        breaker.try_acquire(no_reconnects).unwrap().succeeded();
        assert_eq!(breaker.state(), CircuitState::Closed);
    }

    #[test]
    fn a_success_resets_the_consecutive_count() {
        let clock = Arc::new(ManualClock::from_unix_secs(0.0));
        let breaker = breaker(2, 64, clock);
        breaker.try_acquire(no_reconnects).unwrap().failed(0);
        breaker.try_acquire(no_reconnects).unwrap().succeeded();
        assert!(!breaker.try_acquire(no_reconnects).unwrap().failed(0));
        assert_eq!(breaker.state(), CircuitState::Closed);
    }

    /// Regression: every other call failing never reached three consecutive failures,
    /// so the breaker stayed closed while half the calls paid the deadline.
    #[test]
    fn intermittent_failures_open_it_by_ratio() {
        let clock = Arc::new(ManualClock::from_unix_secs(0.0));
        let breaker = breaker(3, 20, clock);
        let mut opened_at = None;
        for call in 1..=40 {
            let permit = breaker.try_acquire(no_reconnects).unwrap();
            if call % 2 == 0 {
                permit.succeeded();
            } else if permit.failed(0) {
                opened_at = Some(call);
                break;
            }
        }
        // The window is full after 20 calls; the first failure after that has 50 %.
        assert_eq!(opened_at, Some(21));
        assert_eq!(breaker.state(), CircuitState::Open);
    }

    #[test]
    fn a_few_failures_in_a_full_window_do_not_open_it() {
        let clock = Arc::new(ManualClock::from_unix_secs(0.0));
        let breaker = breaker(3, 20, clock);
        for call in 0..200 {
            let permit = breaker.try_acquire(no_reconnects).unwrap();
            if call % 3 == 0 {
                assert!(!permit.failed(0), "a third of the calls is below 50 %");
            } else {
                permit.succeeded();
            }
        }
        assert_eq!(breaker.state(), CircuitState::Closed);
    }

    /// Regression: a probe whose call was dropped left the breaker half-open with
    /// `probing: true` forever, and the cache was never used again.
    #[test]
    fn a_dropped_probe_hands_the_probe_back() {
        let clock = Arc::new(ManualClock::from_unix_secs(0.0));
        let breaker = breaker(1, 64, clock.clone());
        breaker.try_acquire(no_reconnects).unwrap().failed(0);
        clock.advance(Duration::from_secs(10));
        let probe = breaker.try_acquire(no_reconnects).unwrap();
        drop(probe);
        let probe = breaker
            .try_acquire(no_reconnects)
            .expect("the next call probes");
        probe.succeeded();
        assert_eq!(breaker.state(), CircuitState::Closed);
    }

    /// Every worker used to take the breaker's lock twice per cache call, writing one
    /// cache line that all of them share.
    #[test]
    fn healthy_calls_take_no_lock_and_a_failure_still_counts() {
        let clock = Arc::new(ManualClock::from_unix_secs(0.0));
        let breaker = breaker(3, 20, clock);
        for _ in 0..20 {
            breaker.try_acquire(no_reconnects).unwrap().succeeded();
        }
        let before = breaker.locks.load(Ordering::Relaxed);
        for _ in 0..1000 {
            breaker.try_acquire(no_reconnects).unwrap().succeeded();
        }
        assert_eq!(breaker.locks.load(Ordering::Relaxed), before);
        // The window is still exact: after a failure, every other call failing opens
        // it at the tenth failure (10 of the last 20).
        let mut failures = 0;
        for call in 0.. {
            let permit = breaker.try_acquire(no_reconnects).unwrap();
            if call % 2 == 1 {
                permit.succeeded();
                continue;
            }
            failures += 1;
            if permit.failed(0) {
                break;
            }
        }
        assert_eq!(failures, 10);
        assert_eq!(breaker.state(), CircuitState::Open);
        assert!(breaker.try_acquire(no_reconnects).is_none());
    }

    /// After a probe closes it, the breaker counts a whole window again before it
    /// trusts the cache without the lock.
    #[test]
    fn a_closed_breaker_is_healthy_only_after_a_full_window() {
        let clock = Arc::new(ManualClock::from_unix_secs(0.0));
        let breaker = breaker(1, 4, clock.clone());
        breaker.try_acquire(no_reconnects).unwrap().failed(0);
        clock.advance(Duration::from_secs(10));
        breaker.try_acquire(no_reconnects).unwrap().succeeded();
        for _ in 0..3 {
            breaker.try_acquire(no_reconnects).unwrap().succeeded();
            assert!(!breaker.healthy.load(Ordering::Relaxed));
        }
        breaker.try_acquire(no_reconnects).unwrap().succeeded();
        assert!(breaker.healthy.load(Ordering::Relaxed));
        assert!(breaker.try_acquire(no_reconnects).unwrap().failed(0));
        assert!(!breaker.healthy.load(Ordering::Relaxed));
    }

    #[test]
    fn a_reconnection_ends_the_cool_down() {
        let clock = Arc::new(ManualClock::from_unix_secs(0.0));
        let breaker = breaker(1, 64, clock);
        breaker.try_acquire(|| 3).unwrap().failed(3);
        assert!(breaker.try_acquire(|| 3).is_none(), "no new connection yet");
        let probe = breaker.try_acquire(|| 4).expect("reconnected: probe now");
        probe.succeeded();
        assert_eq!(breaker.state(), CircuitState::Closed);
    }
}
