//! Histograms split per thread, merged when read: the request path writes only its own
//! thread's cache line, never one that every worker writes.

use std::sync::Mutex;

use hdrhistogram::Histogram;
pub(crate) use url_cache::sharded::ShardedCounter;
use url_cache::sharded::{shard_count, thread_shard, Padded};

/// A latency histogram per shard (microseconds, 1 µs to 60 s, 2 significant digits),
/// merged when read. Each lock is taken by one thread at a time in practice, so it is
/// uncontended.
#[derive(Debug)]
pub(crate) struct ShardedHistogram {
    shards: Box<[Padded<Mutex<Histogram<u64>>>]>,
}

impl Default for ShardedHistogram {
    fn default() -> Self {
        ShardedHistogram {
            shards: (0..shard_count())
                .map(|_| {
                    Padded(Mutex::new(
                        Histogram::new_with_bounds(1, 60_000_000, 2)
                            .unwrap_or_else(|_| unreachable!("static histogram bounds are valid")),
                    ))
                })
                .collect(),
        }
    }
}

impl ShardedHistogram {
    pub(crate) fn record(&self, micros: u64) {
        let shard = &self.shards[thread_shard(self.shards.len())].0;
        shard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .saturating_record(micros.clamp(1, 60_000_000));
    }

    /// All shards in one histogram.
    pub(crate) fn merged(&self) -> Histogram<u64> {
        let mut all = Histogram::new_with_bounds(1, 60_000_000, 2)
            .unwrap_or_else(|_| unreachable!("static histogram bounds are valid"));
        for shard in self.shards.iter() {
            let shard = shard.0.lock().unwrap_or_else(|p| p.into_inner());
            // Same bounds and precision: adding cannot fail.
            let _ = all.add(&*shard);
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_many_threads_add_up() {
        let counter = std::sync::Arc::new(ShardedCounter::default());
        let histogram = std::sync::Arc::new(ShardedHistogram::default());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (counter, histogram) = (counter.clone(), histogram.clone());
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        counter.add(1);
                        histogram.record(i + 1);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(counter.load(), 8000);
        let merged = histogram.merged();
        assert_eq!(merged.len(), 8000);
        assert!((490..=510).contains(&merged.value_at_quantile(0.5)));
    }
}
