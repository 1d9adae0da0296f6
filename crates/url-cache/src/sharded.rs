//! Counters split per thread, summed when read: a lookup writes only its own thread's
//! cache line, never one that every worker writes. [`StatsCounters`](crate::StatsCounters)
//! is built on them; they are public for backends and services that keep counters of
//! their own.
//!
//! ```
//! let hits = url_cache::sharded::ShardedCounter::default();
//! hits.add(2);
//! assert_eq!(hits.load(), 2);
//! ```

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// A value alone on its cache lines (128 bytes covers adjacent-line prefetching).
#[repr(align(128))]
#[derive(Debug, Default)]
pub struct Padded<T>(pub T);

/// How many shards to make: a power of two, twice the CPUs (threads beyond that share), at most
/// 64.
pub fn shard_count() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cpus * 2).next_power_of_two().min(64)
}

/// This thread's shard number below `count` (a power of two), handed out round robin at
/// the thread's first use.
pub fn thread_shard(count: usize) -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    MINE.with(|mine| {
        let mut shard = mine.get();
        if shard == usize::MAX {
            shard = NEXT.fetch_add(1, Ordering::Relaxed);
            mine.set(shard);
        }
        shard & (count - 1)
    })
}

/// A counter whose increments touch only the current thread's shard.
#[derive(Debug)]
pub struct ShardedCounter {
    shards: Box<[Padded<AtomicU64>]>,
}

impl Default for ShardedCounter {
    fn default() -> Self {
        ShardedCounter {
            shards: (0..shard_count()).map(|_| Padded::default()).collect(),
        }
    }
}

impl ShardedCounter {
    /// Adds `n` to this thread's shard.
    pub fn add(&self, n: u64) {
        self.shards[thread_shard(self.shards.len())]
            .0
            .fetch_add(n, Ordering::Relaxed);
    }

    /// The sum over the shards.
    pub fn load(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum()
    }
}
