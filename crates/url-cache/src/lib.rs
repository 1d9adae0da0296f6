//! A cache of presigned URLs: one trait, an in-memory and a Redis backend.
//!
//! [`UrlCache`] is a small object-safe async trait (`Arc<dyn UrlCache>`) with a written
//! contract; [`MemoryCache`] (LRU, LFU or FIFO, with a capacity) is the embedded default
//! and what tests use, [`RedisCache`] shares one cache between replicas — on a standalone
//! Redis, a Cluster or behind Sentinel, with one read per hit, sharded indexes and an
//! optional in-process L1 kept coherent over pub/sub (`docs/redis-layout.md`). Both take
//! "now" from an injected [`Clock`], so expiry is tested without sleeping.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::{sync::Arc, time::Duration};
//! use url_cache::{CacheEntry, Clock, EvictionPolicy, ManualClock, MemoryCache, UrlCache};
//!
//! let clock = Arc::new(ManualClock::from_unix_secs(1_700_000_000.0));
//! let now = clock.now();
//! let cache: Arc<dyn UrlCache> = Arc::new(
//!     MemoryCache::builder().capacity(10_000).policy(EvictionPolicy::lru()).clock(clock.clone()).build(),
//! );
//! let expires_at = now + Duration::from_secs(3600);
//! cache.put(CacheEntry::new("a.jpg", "https://h/a.jpg?q-signature=…", expires_at, now)).await?;
//! assert!(cache.get("a.jpg").await?.is_some());
//! clock.advance(Duration::from_secs(3600));
//! assert!(cache.get("a.jpg").await?.is_none()); // expired: never served
//! assert_eq!(cache.stats().expired, 1);
//! # Ok::<(), url_cache::CacheError>(())
//! # }).unwrap();
//! ```

use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;

pub mod by_text;
mod clock;
mod entry;
mod error;
mod memory;
mod policy;
mod redis;
pub mod sharded;
mod stats;
#[cfg(feature = "testing")]
pub mod testing;

pub use clock::{from_unix_secs, secs_duration, unix_secs, Clock, ManualClock, SystemClock};
pub use entry::CacheEntry;
pub use error::{CacheError, Result};
pub use memory::{MemoryCache, MemoryCacheBuilder, DEFAULT_CAPACITY};
pub use policy::EvictionPolicy;
pub use redis::{RedisCache, RedisConfig};
pub use stats::{CacheStats, StatsCounters};

/// Default number of entries removed per batch by [`UrlCache::remove_expired`].
pub const DEFAULT_CLEANUP_BATCH: usize = 100;

/// Longest cache key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 4096;

/// A cache of presigned URLs, keyed by a string (an object key, possibly with a variant).
///
/// Contract for every backend (checked by the conformance suite, exported as
/// `url_cache::testing` behind the `testing` feature, which any backend can run):
///
/// - **Expiry**: an entry is never returned at or after its `expires_at`, judged by the
///   backend's clock. A lookup that finds an expired entry drops it and counts `expired`.
/// - **Access**: a lookup that returns an entry has recorded the access first: the
///   returned `access_count` is one more than before and `last_accessed` is now. Under
///   concurrency "before" is as the calling thread sees it: a backend may count other
///   threads' (or replicas') accesses late, by a bound it documents (the memory cache:
///   at most 63 per thread, or one second).
/// - **Statistics**: each looked-up key counts exactly one of hit, miss or expired; each
///   failed operation counts one error; each entry dropped for capacity one eviction.
/// - **Capacity**: after `put` returns, the cache holds at most its capacity, evicting
///   by its [`EvictionPolicy`].
/// - **Errors**: backend trouble is a retryable [`CacheError`]; no method panics on bad
///   input; keys must be non-empty, at most [`MAX_KEY_LEN`] bytes, without control
///   characters.
/// - **Bad data is a miss**: an entry the backend cannot read (a value of the wrong
///   type, a malformed field) is dropped, counted as `corrupt` and as a miss, and never
///   fails the call or the rest of a batch: it says nothing about the backend's health.
#[async_trait]
pub trait UrlCache: Send + Sync + Debug {
    /// The live entry for `key`, recording the access; `None` if absent or expired.
    async fn get(&self, key: &str) -> Result<Option<CacheEntry>>;

    /// [`UrlCache::get`] answered at once, for backends that can without waiting (an
    /// entry held in this process): `Some` with exactly what `get` would have answered,
    /// the access and the lookup recorded; `None` when the answer needs a wait (a round
    /// trip), with nothing recorded, and the caller then calls `get`. A hot path tries
    /// it first and skips `get`'s boxed future. The default: always `None`.
    fn get_ready(&self, key: &str) -> Option<Result<Option<CacheEntry>>> {
        let _ = key;
        None
    }

    /// The live entry for `key` without recording an access or counting a lookup (for
    /// status pages and tools).
    async fn peek(&self, key: &str) -> Result<Option<CacheEntry>>;

    /// [`UrlCache::get`] for many keys, answered in order; one round trip for remote
    /// backends. The default calls `get` per key.
    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<CacheEntry>>> {
        let mut found = Vec::with_capacity(keys.len());
        for key in keys {
            found.push(self.get(key).await?);
        }
        Ok(found)
    }

    /// Stores `entry` under `entry.image_key`, replacing any previous one; it lives until
    /// `entry.expires_at`. Storing an already expired entry removes the key instead.
    async fn put(&self, entry: CacheEntry) -> Result<()>;

    /// Removes `key`; whether it was there.
    async fn delete(&self, key: &str) -> Result<bool>;

    /// [`UrlCache::put`] for many entries; one round trip for remote backends (the
    /// background refresher writes its batches with it). The default calls `put` per
    /// entry. A replaced entry keeps its place in the eviction order when the new one
    /// carries the same `created_at` and `last_accessed` (a refresh, not a new use).
    async fn put_many(&self, entries: Vec<CacheEntry>) -> Result<()> {
        for entry in entries {
            self.put(entry).await?;
        }
        Ok(())
    }

    /// [`UrlCache::delete`] for many keys; how many were there. One round trip for
    /// remote backends. The default calls `delete` per key.
    async fn delete_many(&self, keys: &[&str]) -> Result<usize> {
        let mut removed = 0;
        for key in keys {
            removed += usize::from(self.delete(key).await?);
        }
        Ok(removed)
    }

    /// Tries to take the lease `name` for `holder` for `ttl`, or to extend it if
    /// `holder` has it; whether `holder` holds it now. Replicas sharing a backend use it
    /// so that background work runs on one of them at a time; a crashed holder's lease
    /// runs out after `ttl`. The default (a cache private to this process) always grants.
    async fn try_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        let _ = (name, holder, ttl);
        Ok(true)
    }

    /// Gives the lease `name` back if `holder` holds it (never someone else's).
    async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        let _ = (name, holder);
        Ok(())
    }

    /// Who holds the lease `name` now, if anyone (for status pages).
    async fn lease_holder(&self, name: &str) -> Result<Option<String>> {
        let _ = name;
        Ok(None)
    }

    /// Live entries that expire within `within` from now, soonest first, at most `limit`
    /// (for pre-refresh and the background refresher). Does not count as access.
    async fn expiring_within(&self, within: Duration, limit: usize) -> Result<Vec<CacheEntry>>;

    /// Removes every expired entry, `batch_size` at a time (see
    /// [`DEFAULT_CLEANUP_BATCH`]); how many were removed.
    async fn remove_expired(&self, batch_size: usize) -> Result<usize>;

    /// Number of entries held, possibly including expired ones not yet removed.
    async fn len(&self) -> Result<usize>;

    /// Whether [`UrlCache::len`] is zero.
    async fn is_empty(&self) -> Result<bool> {
        Ok(self.len().await? == 0)
    }

    /// `Ok` when the backend answers now. The default asks for [`UrlCache::len`].
    async fn health_check(&self) -> Result<()> {
        self.len().await.map(|_| ())
    }

    /// Counters since creation. The default reports none: a backend that keeps them
    /// (see [`StatsCounters`]) should say so, the conformance suite checks them.
    fn stats(&self) -> CacheStats {
        CacheStats::default()
    }

    /// Writes out what the backend holds in this process and has not written yet (the
    /// Redis backend: access bookkeeping, otherwise written once a flush interval). Call
    /// it before the process exits. The default has nothing to write.
    async fn flush(&self) -> Result<()> {
        Ok(())
    }

    /// How many times the backend has (re)established its connection since it was
    /// created. A change tells a circuit breaker that the backend is back, so it can
    /// probe at once instead of waiting out its cool-down. Backends without connections
    /// keep the default, 0.
    fn reconnects(&self) -> u64 {
        0
    }

    /// A short backend name for logs and metrics (`"memory"`, `"redis"`; default
    /// `"custom"`).
    fn backend(&self) -> &'static str {
        "custom"
    }
}

/// Checks a cache key against the contract's rules.
pub fn validate_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(CacheError::InvalidInput("empty cache key".into()));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(CacheError::InvalidInput(format!(
            "cache key of {} bytes exceeds {MAX_KEY_LEN}",
            key.len()
        )));
    }
    if has_control_character(key) {
        return Err(CacheError::InvalidInput(
            "cache key contains a control character".into(),
        ));
    }
    Ok(())
}

/// Checks an entry before it is stored.
pub(crate) fn validate_entry(entry: &CacheEntry) -> Result<()> {
    validate_key(&entry.image_key)?;
    if entry.url.is_empty() {
        return Err(CacheError::InvalidInput("entry has an empty url".into()));
    }
    for (name, value) in [
        ("expires_at", entry.expires_at),
        ("created_at", entry.created_at),
        ("last_accessed", entry.last_accessed),
    ] {
        if value < std::time::UNIX_EPOCH {
            return Err(CacheError::InvalidInput(format!(
                "entry {name} is before the Unix epoch"
            )));
        }
    }
    Ok(())
}

/// `key.chars().any(char::is_control)` on bytes: C0 and DEL are single bytes, C1
/// (U+0080..=U+009F) is `0xC2 0x80..=0x9F` in UTF-8. This runs on every lookup.
fn has_control_character(key: &str) -> bool {
    let bytes = key.as_bytes();
    // A branch-free pass the compiler vectorises; the exact scan runs only for keys with
    // a suspect byte (a control byte, or the lead byte of U+0080..=U+00BF).
    let suspect = bytes.iter().fold(false, |found, &b| {
        found | (b < 0x20) | (b == 0x7f) | (b == 0xc2)
    });
    suspect
        && bytes.iter().enumerate().any(|(i, &b)| {
            b < 0x20
                || b == 0x7f
                || (b == 0xc2 && bytes.get(i + 1).is_some_and(|n| (0x80..=0x9f).contains(n)))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_character_scan_matches_char_is_control() {
        for c in (0u32..0x300).filter_map(char::from_u32) {
            let s = format!("a{c}b");
            assert_eq!(has_control_character(&s), c.is_control(), "{c:?}");
        }
        assert!(!has_control_character("é图😀 images/a.jpg"));
    }
}
