//! The optional in-process cache in front of Redis (L1), kept coherent across replicas.
//!
//! A hot key then costs no round trip. Every write a replica makes through the cache
//! (put, refresh, delete, eviction, cleanup) also publishes the keys on the namespace's
//! channel, `{index}:invalidate`, in the same pipeline; every replica subscribes and drops
//! those keys from its L1 when the message arrives, within milliseconds. When the
//! subscription's connection drops, messages may have been missed, so the whole L1 is
//! dropped on reconnection. Entries also leave after `l1_ttl` whatever happens, and an
//! entry past its URL's expiry is never served. With stable windows the replicas serve
//! byte-identical URLs anyway.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::CacheEntry;

/// The L1 of one replica.
pub(crate) struct L1 {
    entries: moka::sync::Cache<String, CacheEntry>,
    hits: AtomicU64,
    /// This replica's id in its messages (its own writes need no invalidation).
    id: String,
    /// Where invalidations are published.
    pub channel: String,
}

impl L1 {
    pub fn new(max_entries: usize, ttl: Duration, channel: String) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        L1 {
            entries: moka::sync::Cache::builder()
                .max_capacity(max_entries as u64)
                .time_to_live(ttl.max(Duration::from_millis(1)))
                .build(),
            hits: AtomicU64::new(0),
            id: format!(
                "{}-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed),
                super::fnv1a(&format!("{:?}", std::time::SystemTime::now()))
            ),
            channel,
        }
    }

    pub fn get(&self, key: &str) -> Option<CacheEntry> {
        self.entries.get(key)
    }

    pub fn insert(&self, entry: &CacheEntry) {
        self.entries.insert(entry.image_key.clone(), entry.clone());
    }

    pub fn invalidate<S: AsRef<str>>(&self, keys: &[S]) {
        for key in keys {
            self.entries.invalidate(key.as_ref());
        }
    }

    /// Drops everything (messages may have been missed).
    pub fn clear(&self) {
        self.entries.invalidate_all();
    }

    pub fn hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
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
            self.entries.invalidate(key);
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

    #[test]
    fn messages_from_others_invalidate_and_our_own_do_not() {
        let a = L1::new(10, Duration::from_secs(60), "c".into());
        let b = L1::new(10, Duration::from_secs(60), "c".into());
        for l1 in [&a, &b] {
            l1.insert(&entry("x"));
            l1.insert(&entry("y"));
        }
        let from_a = a.message(&["x"]);
        a.receive(&from_a);
        assert!(a.get("x").is_some(), "its own message");
        b.receive(&from_a);
        assert!(b.get("x").is_none());
        assert!(b.get("y").is_some());
        b.clear();
        assert!(b.get("y").is_none());
    }
}
