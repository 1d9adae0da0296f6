//! How many entries the cache holds, as far as a put needs to know it.
//!
//! Counting exactly is a `ZCARD` of every policy shard (16 by default, on every node of a
//! Cluster): sixteen of the twenty-odd commands of a put. A put only needs the count when
//! it may take the cache past its capacity, so the count is kept here as an estimate (the
//! last exact count plus this process's puts since) and taken again only when the estimate
//! nears the capacity or is older than [`RECOUNT_AFTER`]. Other replicas' puts are what
//! the estimate misses: the cache can go past its capacity by what they add in one
//! [`RECOUNT_AFTER`] while this process's estimate is below [`COUNT_FROM_PERCENT`] of it,
//! and the next counted put evicts the surplus.

use std::sync::atomic::{AtomicU64, Ordering};

/// How old an exact count may be before a put counts again, seconds.
const RECOUNT_AFTER: f64 = 1.0;

/// From which share of the capacity (by the estimate after the put) every put counts.
const COUNT_FROM_PERCENT: u64 = 90;

/// The estimate of the entries held.
pub(crate) struct HeldCount {
    /// The last exact count plus this process's puts since; `u64::MAX` before the first.
    estimate: AtomicU64,
    /// When the last exact count was taken: unix seconds, as `f64` bits.
    counted_at: AtomicU64,
    max_entries: u64,
}

impl HeldCount {
    pub fn new(max_entries: usize) -> Self {
        HeldCount {
            estimate: AtomicU64::new(u64::MAX),
            counted_at: AtomicU64::new(0f64.to_bits()),
            max_entries: max_entries as u64,
        }
    }

    /// Whether a put of `new` entries at `now` must count exactly: never counted yet, the
    /// count older than [`RECOUNT_AFTER`], or the estimate after the put at or past
    /// [`COUNT_FROM_PERCENT`] of the capacity.
    pub fn must_count(&self, new: usize, now: f64) -> bool {
        let estimate = self.estimate.load(Ordering::Relaxed);
        if estimate == u64::MAX {
            return true;
        }
        // Fresh only within RECOUNT_AFTER after the count: a clock that stepped back
        // (or NaN) counts again rather than trusting the estimate for as long.
        let age = now - f64::from_bits(self.counted_at.load(Ordering::Relaxed));
        if !(0.0..RECOUNT_AFTER).contains(&age) {
            return true;
        }
        let after = estimate.saturating_add(new as u64);
        after.saturating_mul(100) >= self.max_entries.saturating_mul(COUNT_FROM_PERCENT)
    }

    /// An exact count, `held` entries, taken at `now`.
    pub fn counted(&self, held: u64, now: f64) {
        self.estimate.store(held, Ordering::Relaxed);
        self.counted_at.store(now.to_bits(), Ordering::Relaxed);
    }

    /// `new` entries put without counting. (An entry that replaced one under its key
    /// counts too: the estimate errs high, towards counting.)
    pub fn added(&self, new: usize) {
        self.estimate.fetch_add(new as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_first_when_stale_and_near_the_capacity() {
        let held = HeldCount::new(100);
        assert!(held.must_count(1, 10.0), "never counted");
        held.counted(50, 10.0);
        assert!(!held.must_count(1, 10.5));
        held.added(38);
        assert!(!held.must_count(1, 10.5), "88 + 1 of 100");
        held.added(1);
        assert!(held.must_count(1, 10.5), "89 + 1 of 100");
        assert!(held.must_count(1, 11.0), "a second old");
        // 88 + 1 is below 90 %; 88 + 2 reaches it.
        held.counted(88, 20.0);
        assert!(!held.must_count(1, 20.0));
        assert!(held.must_count(2, 20.0));
        // Past the capacity, every put counts.
        held.counted(100, 30.0);
        assert!(held.must_count(1, 30.0));
    }

    #[test]
    fn a_clock_that_went_back_counts_again() {
        let held = HeldCount::new(1_000_000);
        held.counted(1, 100.0);
        assert!(!held.must_count(1, 100.2));
        assert!(held.must_count(1, f64::NAN));
        assert!(held.must_count(1, 99.0), "the clock stepped back");
    }
}
