//! A circuit breaker in front of the cache.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use url_cache::Clock;

/// The breaker's state, as reported in statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    /// The cache is used.
    Closed,
    /// The cache is skipped until the cool-down ends.
    Open,
    /// One probe call is allowed through to test the cache.
    HalfOpen,
}

#[derive(Debug)]
enum State {
    Closed { consecutive_failures: u32 },
    Open { until: f64 },
    HalfOpen { probing: bool },
}

/// Opens after `threshold` consecutive failures, stays open for `cool_down`, then lets one
/// probe through: its success closes the breaker, its failure opens it again.
///
/// A plain mutex: the critical sections are a few comparisons, never held across an
/// `.await`, and the breaker is consulted once per cache call.
#[derive(Debug)]
pub(crate) struct Breaker {
    state: Mutex<State>,
    threshold: u32,
    cool_down: Duration,
    clock: Arc<dyn Clock>,
}

/// Permission to call the cache; tells whether this call is the half-open probe.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Permit {
    pub(crate) probe: bool,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cool_down: Duration, clock: Arc<dyn Clock>) -> Self {
        Breaker {
            state: Mutex::new(State::Closed {
                consecutive_failures: 0,
            }),
            threshold: threshold.max(1),
            cool_down,
            clock,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Some` if the cache may be called now.
    pub(crate) fn try_acquire(&self) -> Option<Permit> {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => Some(Permit { probe: false }),
            State::Open { until } if self.clock.now() >= until => {
                *state = State::HalfOpen { probing: true };
                Some(Permit { probe: true })
            }
            State::Open { .. } => None,
            State::HalfOpen { probing: true } => None,
            State::HalfOpen { probing: false } => {
                *state = State::HalfOpen { probing: true };
                Some(Permit { probe: true })
            }
        }
    }

    pub(crate) fn record_success(&self, _permit: Permit) {
        *self.lock() = State::Closed {
            consecutive_failures: 0,
        };
    }

    /// Returns true when this failure opened the breaker.
    pub(crate) fn record_failure(&self, permit: Permit) -> bool {
        let mut state = self.lock();
        let open = State::Open {
            until: self.clock.now() + self.cool_down.as_secs_f64(),
        };
        match &mut *state {
            State::Closed {
                consecutive_failures,
            } => {
                *consecutive_failures += 1;
                if *consecutive_failures >= self.threshold {
                    *state = open;
                    return true;
                }
                false
            }
            State::HalfOpen { .. } if permit.probe => {
                *state = open;
                true
            }
            _ => false,
        }
    }

    pub(crate) fn state(&self) -> CircuitState {
        match *self.lock() {
            State::Closed { .. } => CircuitState::Closed,
            State::Open { until } if self.clock.now() >= until => CircuitState::HalfOpen,
            State::Open { .. } => CircuitState::Open,
            State::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use url_cache::ManualClock;

    #[test]
    fn opens_after_threshold_then_probes_once() {
        let clock = Arc::new(ManualClock::new(1000.0));
        let breaker = Breaker::new(3, Duration::from_secs(10), clock.clone());
        for _ in 0..2 {
            let p = breaker.try_acquire().unwrap();
            assert!(!breaker.record_failure(p));
        }
        let p = breaker.try_acquire().unwrap();
        assert!(breaker.record_failure(p));
        assert_eq!(breaker.state(), CircuitState::Open);
        assert!(breaker.try_acquire().is_none());
        clock.advance(Duration::from_secs(10));
        let probe = breaker.try_acquire().unwrap();
        assert!(probe.probe);
        assert!(breaker.try_acquire().is_none(), "one probe at a time");
        assert!(breaker.record_failure(probe));
        assert!(breaker.try_acquire().is_none());
        clock.advance(Duration::from_secs(10));
        let probe = breaker.try_acquire().unwrap();
        breaker.record_success(probe);
        assert_eq!(breaker.state(), CircuitState::Closed);
    }

    #[test]
    fn a_success_resets_the_count() {
        let clock = Arc::new(ManualClock::new(0.0));
        let breaker = Breaker::new(2, Duration::from_secs(1), clock);
        let p = breaker.try_acquire().unwrap();
        breaker.record_failure(p);
        let p = breaker.try_acquire().unwrap();
        breaker.record_success(p);
        let p = breaker.try_acquire().unwrap();
        assert!(!breaker.record_failure(p));
        assert_eq!(breaker.state(), CircuitState::Closed);
    }
}
