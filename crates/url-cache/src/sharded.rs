//! Counters split per thread, summed when read: a lookup writes only its own thread's
//! cache line, never one that every worker writes, and without an atomic
//! read-modify-write. [`StatsCounters`](crate::StatsCounters)
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

use thread_local::ThreadLocal;

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

/// A counter with one slot per thread, summed when read: an increment writes only its
/// own thread's slot, with a plain load and store (one writer per slot, so no atomic
/// read-modify-write, which costs about as much as the rest of a cache hit's
/// bookkeeping). A thread that exits leaves its count to the next thread given its slot.
#[derive(Debug, Default)]
pub struct ShardedCounter {
    per_thread: ThreadLocal<Padded<AtomicU64>>,
}

impl ShardedCounter {
    /// Adds `n` to this thread's slot.
    pub fn add(&self, n: u64) {
        let mine = &self.per_thread.get_or_default().0;
        // Only this thread writes this slot: a load and a store cannot lose an update.
        mine.store(
            mine.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// The sum over the threads' slots.
    pub fn load(&self) -> u64 {
        self.per_thread.iter().fold(0u64, |sum, slot| {
            sum.wrapping_add(slot.0.load(Ordering::Relaxed))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Threads that exit hand their slots to later ones: every increment is still counted,
    /// with readers summing while writers run.
    #[test]
    fn increments_from_threads_that_come_and_go_all_count() {
        let counter = std::sync::Arc::new(ShardedCounter::default());
        for _round in 0..4 {
            let threads: Vec<_> = (0..6)
                .map(|_| {
                    let counter = counter.clone();
                    std::thread::spawn(move || {
                        for _ in 0..10_000 {
                            counter.add(1);
                        }
                        // A reader beside the writers sees a sum no larger than the total.
                        assert!(counter.load() <= 240_000);
                    })
                })
                .collect();
            for thread in threads {
                thread.join().unwrap();
            }
        }
        assert_eq!(counter.load(), 240_000);
    }
}
