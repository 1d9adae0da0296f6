//! Access bookkeeping of the Redis backend, kept in the process and written in batches.
//!
//! A cache hit on Redis is one read (`HMGET`). What LRU and LFU need from it — the
//! access count, the last access time and the entry's place in the policy index — is
//! added up here per key and written by [`mod@super::flush`] once per interval (default 1 s),
//! in pipelines of 256 keys. The eviction order is therefore exact to within one
//! interval across replicas, and exact within this process: a put that must evict flushes
//! first.
//!
//! The buffer is bounded: past `max_keys` distinct keys, the accesses of new keys are
//! dropped and counted rather than blocking a reader or growing without end.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use foldhash::fast::RandomState;

/// Accesses of one key not yet written.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Pending {
    /// How many.
    pub count: u64,
    /// The latest, unix seconds.
    pub last: f64,
}

/// Independent locks, so that readers of different keys rarely wait for each other.
const SHARDS: usize = 16;

/// Accesses of the keys of one shard. foldhash rather than SipHash: every lookup, L1 hits
/// included, records its access here, and the keys are not chosen by an attacker any more
/// than the memory cache's are (which hashes them with foldhash too).
type Shard = HashMap<Arc<str>, Pending, RandomState>;

/// Accesses per key since the last flush.
pub(crate) struct AccessBuffer {
    shards: [Mutex<Shard>; SHARDS],
    hasher: RandomState,
    keys: AtomicUsize,
    max_keys: usize,
    dropped: AtomicU64,
}

impl AccessBuffer {
    /// A buffer holding at most `max_keys` distinct keys.
    pub fn new(max_keys: usize) -> Self {
        let hasher = RandomState::default();
        AccessBuffer {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::with_hasher(hasher.clone()))),
            hasher,
            keys: AtomicUsize::new(0),
            max_keys: max_keys.max(1),
            dropped: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: &str) -> &Mutex<Shard> {
        // Middle bits of the hash: the map inside picks buckets by the low ones and
        // tags by the top seven.
        &self.shards[(self.hasher.hash_one(key) >> 32) as usize % SHARDS]
    }

    /// Records an access of `key` at `now`; the key's pending accesses afterwards (none
    /// when the buffer is full and the access was dropped). The key is shared, not
    /// copied: a busy second reads tens of thousands of distinct keys, and a copy of each
    /// (allocated, then freed all at once by the flush) made glibc's allocator a sixth of
    /// an L1 replica's user time.
    pub fn record(&self, key: &Arc<str>, now: f64) -> Option<Pending> {
        let mut shard = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pending) = shard.get_mut(&**key) {
            pending.count += 1;
            pending.last = pending.last.max(now);
            return Some(*pending);
        }
        if self.keys.fetch_add(1, Ordering::Relaxed) >= self.max_keys {
            self.keys.fetch_sub(1, Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let pending = Pending {
            count: 1,
            last: now,
        };
        shard.insert(key.clone(), pending);
        Some(pending)
    }

    /// The key's pending accesses, if any.
    pub fn pending(&self, key: &str) -> Option<Pending> {
        self.shard(key)
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied()
    }

    /// Forgets the key's pending accesses (it was written whole, or deleted).
    pub fn forget(&self, key: &str) {
        if self
            .shard(key)
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key)
            .is_some()
        {
            self.keys.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Takes everything pending, leaving the buffer empty.
    /// The maps keep their capacity: they fill again within the next interval, and
    /// growing them from empty every second was a percent of an L1 replica's CPU.
    pub fn take(&self) -> Vec<(Arc<str>, Pending)> {
        let mut all = Vec::with_capacity(self.keys.load(Ordering::Relaxed));
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            self.keys.fetch_sub(shard.len(), Ordering::Relaxed);
            all.extend(shard.drain());
        }
        all
    }

    /// Accesses dropped because the buffer was full, or because a flush failed.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Counts `n` accesses lost (a flush that failed).
    pub fn lost(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accesses_add_up_per_key_and_the_buffer_is_bounded() {
        let buffer = AccessBuffer::new(2);
        let [a, b, c, d] = ["a", "b", "c", "d"].map(Arc::<str>::from);
        assert_eq!(buffer.record(&a, 1.0).unwrap().count, 1);
        assert_eq!(
            buffer.record(&a, 3.0),
            Some(Pending {
                count: 2,
                last: 3.0
            })
        );
        // An older time never moves the last access back.
        assert_eq!(buffer.record(&a, 2.0).unwrap().last, 3.0);
        assert!(buffer.record(&b, 1.0).is_some());
        // Full: a third key is dropped and counted; known keys still add up.
        assert!(buffer.record(&c, 1.0).is_none());
        assert_eq!(buffer.dropped(), 1);
        assert_eq!(buffer.record(&b, 5.0).unwrap().count, 2);
        buffer.forget("a");
        assert!(buffer.pending("a").is_none());
        assert!(buffer.record(&c, 1.0).is_some());
        let mut taken = buffer.take();
        taken.sort_by(|x, y| x.0.cmp(&y.0));
        let keys: Vec<&str> = taken.iter().map(|(k, _)| &**k).collect();
        assert_eq!(keys, ["b", "c"]);
        assert!(buffer.take().is_empty());
        assert!(buffer.record(&d, 1.0).is_some());
    }
}
