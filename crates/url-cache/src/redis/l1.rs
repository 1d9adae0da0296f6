//! The optional in-process cache in front of Redis (L1), kept coherent across replicas.
//!
//! A hot key then costs no round trip. Every write a replica makes through the cache
//! (put, refresh, delete, eviction, cleanup) also publishes the keys on the namespace's
//! channel, `{index}:invalidate`, in the same pipeline; every replica subscribes and drops
//! those keys from its L1 when the message arrives, within milliseconds. The L1 is only
//! used while the subscription is up: when its connection drops, the L1 is emptied and
//! bypassed (lookups go to Redis) until the subscription is back, since invalidations
//! published meanwhile are lost. Entries also leave after `l1_ttl` by the cache's clock
//! whatever happens, and an entry past its URL's expiry is never served. With stable
//! windows the replicas serve byte-identical URLs anyway.
//!
//! The entries live in a `quick_cache` (S3-FIFO, sharded, a read lock and an atomic per
//! hit). moka came first: its hits (a read log replayed into a frequency sketch and
//! deques, SipHash) took about 8 % of an L1 replica's CPU in a profile on the Zipf trace
//! of `benches/load/redis.sh`. quick_cache has no time-to-live, so each entry carries its
//! own deadline, checked on every read.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::CacheEntry;

/// The L1 of one replica.
/// An entry as the L1 holds it: as it was last read from or written to Redis (its count
/// exact at that moment), and the accesses this process has served from the L1 since.
/// A hit's count is the two together: exact within the process however the access
/// flushes fall, without a round trip; other replicas' accesses show once the entry is
/// read from Redis again.
pub(crate) struct Held {
    entry: CacheEntry,
    served: AtomicU64,
    /// Unix seconds (the cache's clock) from which the entry is no longer served.
    stale_at: f64,
}

impl Held {
    /// The entry.
    pub fn entry(&self) -> &CacheEntry {
        &self.entry
    }

    /// Counts one more access served from the L1: the entry as that lookup answers it.
    pub fn serve(&self) -> CacheEntry {
        let served = self.served.fetch_add(1, Ordering::Relaxed) + 1;
        let mut entry = self.entry.clone();
        entry.access_count += served;
        entry
    }
}

pub(crate) struct L1 {
    entries: quick_cache::sync::Cache<Arc<str>, Arc<Held>>,
    /// How long an entry is served after it was read from or written to Redis.
    ttl: f64,
    /// Whether the subscription to invalidations is up: only then is the L1 used.
    live: AtomicBool,
    /// Wakes whoever waits for the subscription (see [`L1::wait_live`]).
    went_live: tokio::sync::Notify,
    hits: crate::sharded::ShardedCounter,
    /// This replica's id in its messages (its own writes need no invalidation).
    id: String,
    /// Where invalidations are published.
    pub channel: String,
}

impl L1 {
    pub fn new(max_entries: usize, ttl: Duration, channel: String) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        L1 {
            entries: quick_cache::sync::Cache::new(max_entries.max(1)),
            ttl: ttl.as_secs_f64(),
            live: AtomicBool::new(false),
            went_live: tokio::sync::Notify::new(),
            hits: Default::default(),
            id: format!(
                "{}-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed),
                super::fnv1a(&format!("{:?}", std::time::SystemTime::now()))
            ),
            channel,
        }
    }

    /// The entry, while the subscription is up and the entry within its `l1_ttl` at
    /// `now` (unix seconds); one past it is dropped.
    pub fn get(&self, key: &str, now: f64) -> Option<Arc<Held>> {
        if !self.live.load(Ordering::Acquire) {
            return None;
        }
        let held = self.entries.get(key)?;
        if now < held.stale_at {
            return Some(held);
        }
        self.drop_expired(key, &held);
        None
    }

    /// Removes `expired`, the entry found under `key`, unless another task replaced it
    /// since it was read (a fresh entry inserted in between stays).
    fn drop_expired(&self, key: &str, expired: &Arc<Held>) {
        self.entries
            .remove_if(key, |current| Arc::ptr_eq(current, expired));
    }

    /// Keeps `entry`, read from or written to Redis at `now`, while the subscription is
    /// up.
    pub fn insert(&self, entry: &CacheEntry, now: f64) {
        if self.live.load(Ordering::Acquire) {
            let held = Held {
                entry: entry.clone(),
                served: AtomicU64::new(0),
                stale_at: now + self.ttl,
            };
            self.entries.insert(entry.image_key.clone(), Arc::new(held));
        }
    }

    /// The subscription is up (again): the L1 starts empty, since messages may have been
    /// missed before.
    pub fn resume(&self) {
        self.entries.clear();
        self.live.store(true, Ordering::Release);
        self.went_live.notify_waiters();
    }

    /// The subscription dropped: nothing is served from the L1 or kept in it until
    /// [`L1::resume`].
    pub fn suspend(&self) {
        self.live.store(false, Ordering::Release);
        self.entries.clear();
    }

    /// Returns once the subscription is up.
    pub async fn wait_live(&self) {
        loop {
            let notified = self.went_live.notified();
            if self.live.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    pub fn invalidate<S: AsRef<str>>(&self, keys: &[S]) {
        for key in keys {
            self.entries.remove(key.as_ref());
        }
    }

    /// Drops everything (messages may have been missed).
    pub fn clear(&self) {
        self.entries.clear();
    }

    pub fn hit(&self) {
        self.hits.add(1);
    }

    pub fn hits(&self) -> u64 {
        self.hits.load()
    }

    /// The message that invalidates `keys` elsewhere: the sender's id, then one key per
    /// line (keys hold no control character).
    pub fn message<S: AsRef<str>>(&self, keys: &[S]) -> String {
        let mut message = self.id.clone();
        for key in keys {
            message.push('\n');
            message.push_str(key.as_ref());
        }
        message
    }

    /// Applies a message from the channel; one of our own changes nothing.
    pub fn receive(&self, message: &str) {
        let mut lines = message.split('\n');
        if lines.next() == Some(self.id.as_str()) {
            return;
        }
        for key in lines {
            self.entries.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str) -> CacheEntry {
        let now = std::time::SystemTime::now();
        CacheEntry::new(
            key,
            "https://b.example/x",
            now + Duration::from_secs(60),
            now,
        )
    }

    /// An expired entry read by one task while another stores a fresh one for the key:
    /// the first task's removal leaves the fresh entry in place.
    #[test]
    fn dropping_an_expired_entry_keeps_one_stored_since() {
        let l1 = L1::new(10, Duration::from_secs(60), "c".into());
        l1.resume();
        l1.insert(&entry("x"), 0.0);
        let expired = l1.entries.get("x").unwrap();
        l1.insert(&entry("x"), 100.0);
        l1.drop_expired("x", &expired);
        assert!(l1.get("x", 100.0).is_some(), "the fresh entry stays");
        l1.drop_expired("x", &l1.entries.get("x").unwrap());
        assert!(l1.get("x", 100.0).is_none(), "the entry read is removed");
    }

    #[test]
    fn messages_from_others_invalidate_and_our_own_do_not() {
        let a = L1::new(10, Duration::from_secs(60), "c".into());
        let b = L1::new(10, Duration::from_secs(60), "c".into());
        for l1 in [&a, &b] {
            l1.resume();
            l1.insert(&entry("x"), 0.0);
            l1.insert(&entry("y"), 0.0);
        }
        let from_a = a.message(&["x"]);
        a.receive(&from_a);
        assert!(a.get("x", 0.0).is_some(), "its own message");
        b.receive(&from_a);
        assert!(b.get("x", 0.0).is_none());
        assert!(b.get("y", 0.0).is_some());
        b.clear();
        assert!(b.get("y", 0.0).is_none());
    }

    #[test]
    fn a_suspended_l1_serves_and_keeps_nothing_and_resumes_empty() {
        let l1 = L1::new(10, Duration::from_secs(60), "c".into());
        l1.insert(&entry("x"), 0.0);
        assert!(
            l1.get("x", 0.0).is_none(),
            "not live before the first subscription"
        );
        l1.resume();
        l1.insert(&entry("x"), 0.0);
        assert!(l1.get("x", 0.0).is_some());
        // Each access served from the L1 counts on top of the count it was filled with.
        let held = l1.get("x", 0.0).unwrap();
        assert_eq!(held.serve().access_count, 1);
        assert_eq!(l1.get("x", 0.0).unwrap().serve().access_count, 2);
        assert_eq!(held.entry().access_count, 0);
        l1.suspend();
        assert!(l1.get("x", 0.0).is_none());
        l1.insert(&entry("y"), 0.0);
        l1.resume();
        assert!(
            l1.get("x", 0.0).is_none() && l1.get("y", 0.0).is_none(),
            "resumes empty"
        );
    }
}
