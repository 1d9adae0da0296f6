//! Hit/miss/expiry/eviction/error counters.

use crate::sharded::ShardedCounter;

use serde::Serialize;

/// A snapshot of a cache's counters since it was created.
///
/// Every `get` (and every key of a `get_many`) counts exactly one of `hits`, `misses`
/// or `expired`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CacheStats {
    /// Lookups that returned a live entry.
    pub hits: u64,
    /// Lookups that found nothing.
    pub misses: u64,
    /// Lookups that found an entry past its expiry (and dropped it).
    pub expired: u64,
    /// Entries removed to respect the capacity.
    pub evictions: u64,
    /// Operations that failed.
    pub errors: u64,
    /// Entries found unreadable (a value of the wrong type, a malformed field) and
    /// dropped; each such lookup also counts as a miss.
    pub corrupt: u64,
    /// Of the `hits`, those served from an in-process L1 in front of the backend (no
    /// round trip); 0 for backends without one.
    pub l1_hits: u64,
}

impl CacheStats {
    /// All lookups.
    pub fn lookups(&self) -> u64 {
        self.hits + self.misses + self.expired
    }

    /// hits / lookups, 0 when there were none.
    pub fn hit_rate(&self) -> f64 {
        match self.lookups() {
            0 => 0.0,
            n => self.hits as f64 / n as f64,
        }
    }
}

/// Lock-free counters behind [`CacheStats`], for backends. Split per thread (see
/// [`ShardedCounter`]): counting a hit writes no cache line another worker writes.
#[derive(Debug, Default)]
pub struct StatsCounters {
    hits: ShardedCounter,
    misses: ShardedCounter,
    expired: ShardedCounter,
    evictions: ShardedCounter,
    errors: ShardedCounter,
    corrupt: ShardedCounter,
}

impl StatsCounters {
    /// Counts `n` hits.
    pub fn hit(&self, n: u64) {
        self.hits.add(n);
    }
    /// Counts `n` misses.
    pub fn miss(&self, n: u64) {
        self.misses.add(n);
    }
    /// Counts `n` expired lookups.
    pub fn expired(&self, n: u64) {
        self.expired.add(n);
    }
    /// Counts `n` evictions.
    pub fn evicted(&self, n: u64) {
        self.evictions.add(n);
    }
    /// Counts one error.
    pub fn error(&self) {
        self.errors.add(1);
    }
    /// Counts one corrupt entry.
    pub fn corrupt(&self) {
        self.corrupt.add(1);
    }
    /// The current values.
    pub fn snapshot(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(),
            misses: self.misses.load(),
            expired: self.expired.load(),
            evictions: self.evictions.load(),
            errors: self.errors.load(),
            corrupt: self.corrupt.load(),
            l1_hits: 0,
        }
    }
}
