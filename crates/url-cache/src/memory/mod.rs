//! The in-memory backend.
//!
//! Hand-written, because no well-kept crate offers LRU, LFU and FIFO behind one type
//! with a per-entry expiry index: `moka` gives TinyLFU/LRU with its own expiry but no
//! FIFO or plain LFU and no "expiring within" query; `lru` gives LRU alone. The structure
//! is deliberately plain:
//!
//! - the key space is split over shards, each a reader-writer lock around the entries
//!   (kept in chunks, see `slots`), a hash table of their places and two ordered indexes
//!   (policy order, expiry order) that name entries by place, so every operation is
//!   O(log n) and concurrent writers only contend when their keys share a shard;
//! - a hit takes its shard only to read, and records itself in the entry's atomics
//!   (its count, last access and tick; ticks are each thread's own, see
//!   `shard::next_tick`). The lock is `crossbeam_utils`' `ShardedLock`: a reader locks
//!   the part of it that belongs to its thread, so hits from two workers write no lock
//!   word in common (a writer takes every part, which makes writes dearer: a hit is
//!   what a cache of presigned URLs does most);
//! - a thread that hits an entry again and again keeps a copy of its own and serves
//!   those hits from it (see `hot`), so two workers on one popular key write no cache
//!   line in common; the copies stop being served at any change to their shard, and the
//!   accesses they serve reach the shared entry in batches (at most 63 per thread late,
//!   or a second);
//! - a shard whose entries fall below a quarter of its places (mass expiry, mass
//!   deletes) moves them to dense places and rebuilds its table and indexes, so the room
//!   of a past peak is given back;
//! - a lock is never held across an `.await` (no operation awaits while holding one);
//! - the capacity is global and exact (an atomic count); the victim is the policy's
//!   first choice within the writer's shard. Small caches (< 4096 entries by default)
//!   use a single shard, so their policy is exact; larger ones follow it approximately,
//!   as every sharded cache does (moka, caffeine).

mod hot;
mod shard;
mod slots;

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use crossbeam_utils::sync::{ShardedLock, ShardedLockReadGuard, ShardedLockWriteGuard};
use foldhash::fast::RandomState;

use self::hot::{HotCopies, Served};
use self::shard::{Lookup, Shard};
use crate::sharded::Padded;
use crate::{
    validate_entry, validate_key, CacheEntry, CacheStats, Clock, EvictionPolicy, Result,
    StatsCounters, SystemClock, UrlCache,
};

/// Default capacity, in entries.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// Capacity below which one shard is used (so the policy is exact globally).
const SINGLE_SHARD_BELOW: usize = 4096;
const DEFAULT_SHARDS: usize = 16;

/// An in-memory [`UrlCache`] with a capacity and an eviction policy.
///
/// ```
/// # tokio_test_block_on(async {
/// use url_cache::{CacheEntry, Clock, EvictionPolicy, MemoryCache, SystemClock, UrlCache};
/// let cache = MemoryCache::builder().capacity(1000).policy(EvictionPolicy::lfu()).build();
/// let now = SystemClock.now();
/// let expires_at = now + std::time::Duration::from_secs(3600);
/// cache.put(CacheEntry::new("a.jpg", "https://h/a.jpg?sig", expires_at, now)).await?;
/// assert_eq!(cache.get("a.jpg").await?.map(|e| e.access_count), Some(1));
/// # Ok::<(), url_cache::CacheError>(())
/// # }).unwrap();
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
pub struct MemoryCache {
    shards: Box<[Guarded]>,
    hasher: RandomState,
    policy: EvictionPolicy,
    capacity: usize,
    /// Entries held across all shards: the capacity is global and exact, only the choice
    /// of victim is per shard.
    len: AtomicUsize,
    clock: Arc<dyn Clock>,
    stats: StatsCounters,
    /// Each thread's copies of the entries it hits most (see `hot`).
    hot: HotCopies,
}

impl std::fmt::Debug for MemoryCache {
    // Not the entries: their URLs are signed, and signed URLs never reach logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryCache")
            .field("policy", &self.policy)
            .field("capacity", &self.capacity)
            .field("len", &self.len)
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

/// A shard behind its lock, and the version that the threads' copies check without
/// taking the lock. Each on cache lines of its own: a write writes the lock's lines and
/// the shard's, while the version's is read on every hit served from a copy.
#[derive(Debug)]
struct Guarded {
    shard: Padded<ShardedLock<Shard>>,
    /// Raised, under the lock, by every change to the shard's entries.
    version: Padded<AtomicU64>,
}

impl Guarded {
    fn new(shard: Shard) -> Self {
        Guarded {
            shard: Padded(ShardedLock::new(shard)),
            version: Padded(AtomicU64::new(0)),
        }
    }

    /// The shard, to read or to record accesses (shared with other readers).
    fn read(&self) -> ShardedLockReadGuard<'_, Shard> {
        // A poisoned lock only means another thread panicked mid-operation; every
        // operation leaves the shard consistent before it can panic.
        self.shard
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The shard to itself, to change its entries; the caller raises the version (see
    /// [`Guarded::bump`]) if it does.
    fn exclusive(&self) -> ShardedLockWriteGuard<'_, Shard> {
        self.shard
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The shard to itself, to change its entries: the threads' copies of them stop
    /// being served.
    fn write(&self) -> ShardedLockWriteGuard<'_, Shard> {
        let shard = self.exclusive();
        self.bump();
        shard
    }

    /// Marks the copies stale; only called with the lock held, so a load and a store
    /// cannot lose a raise.
    fn bump(&self) {
        let version = &self.version.0;
        version.store(version.load(Ordering::Relaxed) + 1, Ordering::Release);
    }

    /// Runs `change` with the shard to itself and, if `changed` says of its answer that
    /// it changed the entries, raises the version before the lock is let go.
    fn change<R>(
        &self,
        change: impl FnOnce(&mut Shard) -> R,
        changed: impl FnOnce(&R) -> bool,
    ) -> R {
        let mut shard = self.exclusive();
        let answer = change(&mut shard);
        if changed(&answer) {
            self.bump();
        }
        drop(shard);
        answer
    }

    /// [`Shard::remove`], raising the version if it removed; whether it did.
    fn remove(&self, key: &str, hash: u64) -> bool {
        self.change(
            |shard| shard.remove(key, hash).is_some(),
            |&removed| removed,
        )
    }

    /// [`Shard::remove_if_expired`], raising the version if it removed; whether it did.
    /// Checked with the shard to itself: since a reader saw the entry expired, a put may
    /// have replaced it and another reader may have removed it.
    fn remove_if_expired(&self, key: &str, hash: u64, now: SystemTime) -> bool {
        self.change(
            |shard| shard.remove_if_expired(key, hash, now),
            |&removed| removed,
        )
    }

    /// [`Shard::evict_one`], raising the version if it evicted.
    fn evict_one(&self, keep: &str, policy: crate::policy::Kind) -> bool {
        self.change(|shard| shard.evict_one(keep, policy), |&evicted| evicted)
    }

    /// [`Shard::remove_expired`], raising the version if it removed any.
    fn remove_expired(&self, now: SystemTime, limit: usize) -> usize {
        self.change(
            |shard| shard.remove_expired(now, limit),
            |&removed| removed > 0,
        )
    }

    fn version(&self) -> u64 {
        self.version.0.load(Ordering::Acquire)
    }
}

/// Builds a [`MemoryCache`].
#[derive(Debug, Clone)]
pub struct MemoryCacheBuilder {
    capacity: usize,
    policy: EvictionPolicy,
    shards: Option<usize>,
    clock: Arc<dyn Clock>,
}

impl Default for MemoryCacheBuilder {
    fn default() -> Self {
        MemoryCacheBuilder {
            capacity: DEFAULT_CAPACITY,
            policy: EvictionPolicy::default(),
            shards: None,
            clock: Arc::new(SystemClock),
        }
    }
}

impl MemoryCacheBuilder {
    /// Maximum number of entries (default 10 000; at least 1).
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    /// Eviction policy (default LRU).
    pub fn policy(mut self, policy: EvictionPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Number of shards (default: 1 below 4096 entries, else 16). More shards, less
    /// contention; fewer shards, more exact eviction order.
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = Some(shards.max(1));
        self
    }

    /// The clock that decides expiry (default the system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The cache.
    pub fn build(self) -> MemoryCache {
        let shard_count = self
            .shards
            .unwrap_or(if self.capacity < SINGLE_SHARD_BELOW {
                1
            } else {
                DEFAULT_SHARDS
            })
            .min(self.capacity);
        let hasher = RandomState::default();
        let shards = (0..shard_count)
            .map(|_| Guarded::new(Shard::new(hasher.clone())))
            .collect();
        MemoryCache {
            shards,
            hasher,
            policy: self.policy,
            capacity: self.capacity,
            len: AtomicUsize::new(0),
            clock: self.clock,
            stats: StatsCounters::default(),
            hot: HotCopies::default(),
        }
    }
}

impl MemoryCache {
    /// A builder with the defaults: 10 000 entries, LRU, system clock.
    pub fn builder() -> MemoryCacheBuilder {
        MemoryCacheBuilder::default()
    }

    /// A cache with the defaults.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// The configured capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The eviction policy.
    pub fn policy(&self) -> EvictionPolicy {
        self.policy
    }

    /// The key's hash and its shard's index. The shard comes from the hash's upper
    /// half: a shard's table picks buckets by the low bits and tags by the top seven, so
    /// neither is the same for every key of a shard.
    fn locate(&self, key: &str) -> (u64, usize) {
        let hash = self.hasher.hash_one(key);
        (hash, self.shard_of(hash))
    }

    fn shard_of(&self, hash: u64) -> usize {
        ((hash >> 32) as usize) % self.shards.len()
    }

    /// Hands a displaced copy's accesses, at `now`, to its entry's shard.
    fn record_elsewhere(&self, key: &str, hash: u64, accesses: hot::Unflushed, now: SystemTime) {
        self.shards[self.shard_of(hash)]
            .read()
            .record(key, hash, accesses, now);
    }

    fn removed(&self, n: usize) {
        if n > 0 {
            self.len.fetch_sub(n, Ordering::Relaxed);
        }
    }

    /// Looks `key` up: this thread's copy first, then the shard. With `check`, the key
    /// is validated between the two: a key a copy holds is the key of an entry that was
    /// checked when stored, so a hit there needs no check of its own.
    fn get_sync(&self, key: &str, now: SystemTime, check: bool) -> Result<Option<CacheEntry>> {
        let (hash, index) = self.locate(key);
        let guarded = &self.shards[index];
        // Read before the shard: whatever the shard answers below is at least this
        // recent, so a copy made from it at this version is never served past a change
        // (at worst it asks the shard once more).
        let version = guarded.version();
        let flush = |accesses| guarded.read().record(key, hash, accesses, now);
        let mut lane = self.hot.lane();
        let earlier = match lane.serve(key, hash, version, now, flush) {
            Served::Hit(entry) => {
                self.stats.hit(1);
                return Ok(Some(entry));
            }
            Served::Ask(earlier) => earlier,
        };
        if check {
            // A key that fails had no copy, so no accesses (`earlier`) are dropped here.
            validate_key(key)?;
        }
        // The read guard is a temporary: it is gone before an expired entry is removed.
        let found = guarded.read().get(key, hash, now, earlier);
        match found {
            Lookup::Hit(entry) => {
                self.stats.hit(1);
                lane.offer(&entry, hash, version, now, |key, hash, accesses| {
                    self.record_elsewhere(key, hash, accesses, now)
                });
                Ok(Some(entry))
            }
            Lookup::Missing => {
                self.stats.miss(1);
                Ok(None)
            }
            Lookup::Expired => {
                self.removed(usize::from(guarded.remove_if_expired(key, hash, now)));
                self.stats.expired(1);
                Ok(None)
            }
        }
    }
}

impl Default for MemoryCache {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl UrlCache for MemoryCache {
    async fn get(&self, key: &str) -> Result<Option<CacheEntry>> {
        self.get_sync(key, self.clock.now(), true)
    }

    fn get_ready(&self, key: &str) -> Option<Result<Option<CacheEntry>>> {
        Some(self.get_sync(key, self.clock.now(), true))
    }

    async fn peek(&self, key: &str) -> Result<Option<CacheEntry>> {
        validate_key(key)?;
        let now = self.clock.now();
        let (hash, index) = self.locate(key);
        Ok(self.shards[index].read().peek(key, hash, now))
    }

    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<CacheEntry>>> {
        for key in keys {
            validate_key(key)?;
        }
        let now = self.clock.now();
        keys.iter()
            .map(|key| self.get_sync(key, now, false))
            .collect()
    }

    async fn put(&self, entry: CacheEntry) -> Result<()> {
        validate_entry(&entry)?;
        let now = self.clock.now();
        let key = entry.image_key.clone();
        let (hash, home) = self.locate(&key);
        let mut shard = self.shards[home].write();
        if entry.is_expired(now) {
            if shard.remove(&key, hash).is_some() {
                self.len.fetch_sub(1, Ordering::Relaxed);
            }
            return Ok(());
        }
        let policy = self.policy.kind();
        if !shard.put(entry, hash, policy, now) {
            return Ok(());
        }
        // Over capacity: evict from the writer's own shard first (its lock is held
        // already), then from the others, one lock at a time so no two are ever held.
        let mut held = self.len.fetch_add(1, Ordering::Relaxed) + 1;
        while held > self.capacity && shard.evict_one(&key, policy) {
            held = self.len.fetch_sub(1, Ordering::Relaxed) - 1;
            self.stats.evicted(1);
        }
        drop(shard);
        let mut next = home;
        let mut empty_in_a_row = 0;
        while self.len.load(Ordering::Relaxed) > self.capacity && empty_in_a_row < self.shards.len()
        {
            next = (next + 1) % self.shards.len();
            if self.shards[next].evict_one(&key, policy) {
                self.len.fetch_sub(1, Ordering::Relaxed);
                self.stats.evicted(1);
                empty_in_a_row = 0;
            } else {
                empty_in_a_row += 1;
            }
        }
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        validate_key(key)?;
        let (hash, index) = self.locate(key);
        let removed = self.shards[index].remove(key, hash);
        self.removed(usize::from(removed));
        Ok(removed)
    }

    async fn expiring_within(&self, within: Duration, limit: usize) -> Result<Vec<CacheEntry>> {
        let now = self.clock.now();
        let until = now + within;
        let mut found: Vec<CacheEntry> = Vec::new();
        for shard in self.shards.iter() {
            found.extend(shard.read().expiring_within(now, until, limit));
        }
        found.sort_by_key(|e| e.expires_at);
        found.truncate(limit);
        Ok(found)
    }

    async fn remove_expired(&self, batch_size: usize) -> Result<usize> {
        let batch_size = batch_size.max(1);
        let mut total = 0;
        for shard in self.shards.iter() {
            // One batch per lock hold, so readers of this shard wait at most one batch.
            loop {
                let now = self.clock.now();
                let removed = shard.remove_expired(now, batch_size);
                self.removed(removed);
                total += removed;
                if removed < batch_size {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        Ok(total)
    }

    async fn len(&self) -> Result<usize> {
        Ok(self.len.load(Ordering::Relaxed))
    }

    async fn health_check(&self) -> Result<()> {
        Ok(())
    }

    fn stats(&self) -> CacheStats {
        self.stats.snapshot()
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Memory operations never await, so polling once completes them.
    pub(super) fn now<F: std::future::Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let waker = std::task::Waker::noop();
        match f.as_mut().poll(&mut std::task::Context::from_waker(waker)) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("memory cache awaited"),
        }
    }

    fn entry(key: &str) -> CacheEntry {
        CacheEntry::new(
            key,
            "https://h/x?sig",
            crate::from_unix_secs(4e9),
            crate::from_unix_secs(1.7e9),
        )
    }

    /// Entries are kept compactly (one copy of the key, times in nanoseconds) and come
    /// back exactly as they went in.
    #[test]
    fn entries_come_back_exactly_as_stored() {
        let cache = MemoryCache::builder()
            .clock(Arc::new(crate::ManualClock::from_unix_secs(1.7e9 + 1.0)))
            .build();
        let created = std::time::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        let stored = CacheEntry::new(
            "a/b.jpg",
            "https://h/a/b.jpg?sig",
            std::time::UNIX_EPOCH + Duration::new(4_000_000_000, 987_654_321),
            created,
        )
        .with_mime_type("image/jpeg");
        now(cache.put(stored.clone())).unwrap();
        assert_eq!(now(cache.peek("a/b.jpg")).unwrap().as_ref(), Some(&stored));
        let read = now(cache.get("a/b.jpg")).unwrap().unwrap();
        assert_eq!(read.access_count, 1);
        assert_eq!(
            CacheEntry {
                access_count: 0,
                last_accessed: created,
                ..read.clone()
            },
            stored
        );
        assert_eq!(read.last_accessed, crate::from_unix_secs(1.7e9 + 1.0));
    }

    #[test]
    fn mime_types_are_kept_once_per_shard_and_the_set_is_bounded() {
        let cache = MemoryCache::builder().shards(1).build();
        let at = SystemTime::now();
        let put = |key: &str, mime: &str| {
            let entry = CacheEntry::new(key, "https://h/x?sig", at + Duration::from_secs(60), at)
                .with_mime_type(mime);
            now(cache.put(entry)).unwrap();
        };
        put("a.jpg", "image/jpeg");
        put("b.jpg", "image/jpeg");
        let mime = |key: &str| now(cache.peek(key)).unwrap().unwrap().mime_type.unwrap();
        assert!(Arc::ptr_eq(&mime("a.jpg"), &mime("b.jpg")));
        for i in 0..200 {
            put(&format!("odd{i}"), &format!("image/x-{i}"));
        }
        assert_eq!(
            cache.shards[0].read().mime_types.len(),
            shard::MAX_INTERNED_MIME_TYPES
        );
        assert_eq!(&*mime("odd199"), "image/x-199");
    }

    /// A shard that lost most of its entries, by expiry or by deletes, gives their room
    /// back, and keeps the rest of its entries and their eviction order.
    #[test]
    fn a_shard_gives_back_the_room_of_removed_entries() {
        let clock = Arc::new(crate::ManualClock::from_unix_secs(1.7e9));
        let cache = MemoryCache::builder()
            .capacity(5000)
            .shards(1)
            .clock(clock.clone())
            .build();
        let put = |key: &str, lives: u64| {
            let at = clock.now();
            let entry =
                CacheEntry::new(key, "https://h/x?sig", at + Duration::from_secs(lives), at);
            now(cache.put(entry)).unwrap();
        };
        for i in 0..4900 {
            put(&format!("gone{i}"), 10);
        }
        for i in 0..100 {
            put(&format!("kept{i}"), 1000);
        }
        // Read in reverse: "kept99" becomes the least recently used.
        for i in (0..100).rev() {
            assert!(now(cache.get(&format!("kept{i}"))).unwrap().is_some());
        }
        clock.advance(Duration::from_secs(20));
        assert_eq!(now(cache.remove_expired(10_000)).unwrap(), 4900);
        assert_eq!(
            cache.shards[0].read().places(),
            100,
            "the room of 4900 is given back"
        );
        for i in 0..100 {
            let entry = now(cache.peek(&format!("kept{i}"))).unwrap().unwrap();
            assert_eq!(
                (&*entry.image_key, entry.access_count),
                (&*format!("kept{i}"), 1)
            );
        }

        // Fill up again: the next entry evicts the least recently used, as before.
        for i in 0..4900 {
            put(&format!("new{i}"), 1000);
        }
        put("one-more", 1000);
        assert_eq!(now(cache.len()).unwrap(), 5000);
        assert!(
            now(cache.peek("kept99")).unwrap().is_none(),
            "the LRU victim"
        );
        assert!(now(cache.peek("kept98")).unwrap().is_some());

        // Deletes give room back too.
        for i in 0..4900 {
            assert!(now(cache.delete(&format!("new{i}"))).unwrap());
        }
        let places = cache.shards[0].read().places();
        assert!(places < 1024, "{places} places for 100 entries");
        assert!(now(cache.get("one-more")).unwrap().is_some());
        assert_eq!(now(cache.len()).unwrap(), 100);
    }

    /// A MIME type is kept once per shard, but each thread hands out its own copy of it:
    /// every entry of a shard shares the one text, so cloning that text on every hit
    /// would write one reference count from every worker, a cache line two cores pass
    /// back and forth on every request.
    #[test]
    fn each_thread_hands_out_mime_types_of_its_own() {
        let cache = MemoryCache::builder().shards(1).build();
        let at = SystemTime::now();
        for key in ["a.jpg", "b.jpg"] {
            let entry = CacheEntry::new(key, "https://h/x?sig", at + Duration::from_secs(60), at)
                .with_mime_type("image/jpeg");
            now(cache.put(entry)).unwrap();
        }
        // Each key once per thread, so every read goes to the shard (a key read again and
        // again is served from the thread's own copy of its entry).
        let read = |key: &str| now(cache.get(key)).unwrap().unwrap().mime_type.unwrap();
        let (here_a, here_b) = (read("a.jpg"), read("b.jpg"));
        assert!(Arc::ptr_eq(&here_a, &here_b), "one copy per thread");
        let there = std::thread::scope(|scope| scope.spawn(|| read("a.jpg")).join().unwrap());
        assert_eq!(*there, *here_a);
        assert!(
            !Arc::ptr_eq(&there, &here_a),
            "another thread's copy is its own"
        );
        let shared = cache.shards[0]
            .read()
            .mime_types
            .iter()
            .next()
            .unwrap()
            .clone();
        assert!(!Arc::ptr_eq(&here_a, &shared), "not the shard's copy");
    }

    /// Each shard keeps its own shared MIME texts, so a thread meets as many shared
    /// values as shards times types; its copies go by the text, one per type, so a few
    /// types over many shards never push each other out.
    #[test]
    fn a_thread_keeps_one_copy_per_mime_type_across_shards() {
        let cache = MemoryCache::builder().shards(16).build();
        let at = SystemTime::now();
        let types = ["image/jpeg", "image/png", "image/webp", "image/gif"];
        for i in 0..256 {
            let entry = CacheEntry::new(
                format!("k{i}"),
                "https://h/x?sig",
                at + Duration::from_secs(60),
                at,
            )
            .with_mime_type(types[i % types.len()]);
            now(cache.put(entry)).unwrap();
        }
        let read = |i: usize| {
            now(cache.get(&format!("k{i}")))
                .unwrap()
                .unwrap()
                .mime_type
                .unwrap()
        };
        // Every key once, twice over: each read goes to its shard.
        let first: Vec<Arc<str>> = (0..types.len()).map(read).collect();
        for round in 0..2 {
            for i in 0..256 {
                let mime = read(i);
                let ty = i % types.len();
                assert_eq!(&*mime, types[ty]);
                assert!(
                    Arc::ptr_eq(&mime, &first[ty]),
                    "round {round}, key {i}: a second copy of {}",
                    types[ty]
                );
            }
        }
    }

    /// A refresh keeps the entry's place, but under LFU its place follows the count it
    /// carries: a refresh with a lower count moves it down at once.
    #[test]
    fn an_lfu_refresh_with_a_lower_count_is_evicted_by_that_count() {
        let cache = MemoryCache::builder()
            .capacity(2)
            .policy(EvictionPolicy::lfu())
            .build();
        let counted = |key: &str, count: u64| CacheEntry {
            access_count: count,
            ..entry(key)
        };
        now(cache.put(counted("a", 10))).unwrap();
        now(cache.put(counted("b", 5))).unwrap();
        // The same creation and last use: a refresh of "a", now counting 1.
        now(cache.put(counted("a", 1))).unwrap();
        now(cache.put(counted("c", 7))).unwrap();
        assert!(
            now(cache.peek("a")).unwrap().is_none(),
            "a (1) is the victim"
        );
        assert!(now(cache.peek("b")).unwrap().is_some());
        assert!(now(cache.peek("c")).unwrap().is_some());
        let shard = cache.shards[0].read();
        assert_eq!(shard.order.len(), shard.table.len());
        assert_eq!(shard.expiry.len(), shard.table.len());
    }

    /// The indexes hold exactly one element per entry through reads, refreshes,
    /// replacements, deletions, expiry and eviction.
    #[test]
    fn indexes_hold_one_element_per_entry() {
        let clock = Arc::new(crate::ManualClock::from_unix_secs(1.7e9));
        for policy in [
            EvictionPolicy::lru(),
            EvictionPolicy::lfu(),
            EvictionPolicy::fifo(),
        ] {
            let cache = MemoryCache::builder()
                .capacity(50)
                .shards(1)
                .policy(policy)
                .clock(clock.clone())
                .build();
            for i in 0..200u64 {
                let key = format!("k{}", i % 70);
                let at = crate::from_unix_secs(1.7e9);
                let expires = crate::from_unix_secs(1.7e9 + 1.0 + (i % 3) as f64);
                now(cache.put(CacheEntry::new(
                    key.as_str(),
                    "https://h/x?sig",
                    expires,
                    at,
                )))
                .unwrap();
                now(cache.get(&format!("k{}", (i * 7) % 70))).unwrap();
                if i % 11 == 0 {
                    now(cache.delete(&format!("k{}", (i * 3) % 70))).unwrap();
                }
            }
            clock.advance(Duration::from_millis(2500));
            now(cache.remove_expired(1000)).unwrap();
            let shard = cache.shards[0].read();
            assert_eq!(shard.order.len(), shard.table.len(), "{policy}");
            assert_eq!(shard.expiry.len(), shard.table.len(), "{policy}");
            assert_eq!(shard.table.len(), now(cache.len()).unwrap(), "{policy}");
        }
    }

    /// The expiry index orders entries by the second only; within a second the entries'
    /// own times decide, also past the index's last second (2106).
    #[test]
    fn expiry_within_one_second_is_exact() {
        let second = 1_800_000_000;
        let clock = Arc::new(crate::ManualClock::from_unix_secs(1.7e9));
        let cache = MemoryCache::builder()
            .shards(1)
            .clock(clock.clone())
            .build();
        // Milliseconds: the manual clock's resolution.
        let at = |secs: u64, millis: u64| {
            std::time::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis)
        };
        // Places (insertion order) opposite to expiry order within each second.
        let late = 5_000_000_000; // after 2106
        for (key, secs, millis) in [
            ("c", second, 900),
            ("b", second, 500),
            ("a", second, 100),
            ("z", late, 2),
            ("y", late, 1),
            ("next", second + 1, 0),
        ] {
            let entry = CacheEntry::new(key, "https://h/x?sig", at(secs, millis), at(1, 0));
            now(cache.put(entry)).unwrap();
        }
        let keys = |entries: Vec<CacheEntry>| -> Vec<String> {
            entries.iter().map(|e| e.image_key.to_string()).collect()
        };
        let soonest = now(cache.expiring_within(Duration::from_secs(200_000_000), 2)).unwrap();
        assert_eq!(keys(soonest), ["a", "b"]);
        let all = now(cache.expiring_within(Duration::from_secs(4_000_000_000), 10)).unwrap();
        assert_eq!(keys(all), ["a", "b", "c", "next", "y", "z"]);

        // Halfway through the second: only what expired by now goes.
        clock.set(at(second, 500));
        assert_eq!(now(cache.remove_expired(10)).unwrap(), 2);
        assert!(now(cache.peek("c")).unwrap().is_some());
        let left = now(cache.expiring_within(Duration::from_secs(4_000_000_000), 10)).unwrap();
        assert_eq!(keys(left), ["c", "next", "y", "z"]);
        clock.set(at(late, 1));
        assert_eq!(now(cache.remove_expired(10)).unwrap(), 3);
        assert_eq!(
            keys(now(cache.expiring_within(Duration::from_secs(60), 10)).unwrap()),
            ["z"]
        );
        let shard = cache.shards[0].read();
        assert_eq!((shard.order.len(), shard.expiry.len()), (1, 1));
    }

    #[test]
    fn sharded_capacity_is_exact_and_global() {
        let cache = MemoryCache::builder().capacity(5000).build();
        assert_eq!(cache.shards.len(), DEFAULT_SHARDS);
        for i in 0..6000 {
            now(cache.put(entry(&format!("k{i}")))).unwrap();
            assert!(now(cache.len()).unwrap() <= 5000);
        }
        assert_eq!(now(cache.len()).unwrap(), 5000);
        assert_eq!(cache.stats().evictions, 1000);
        let held: usize = cache.shards.iter().map(|s| s.read().len()).sum();
        assert_eq!(held, 5000, "the atomic count matches the shards");
        assert!(now(cache.get("k5999")).unwrap().is_some());
    }

    #[test]
    fn capacity_holds_under_concurrent_writers() {
        let cache = Arc::new(MemoryCache::builder().capacity(4096).shards(8).build());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let cache = cache.clone();
                std::thread::spawn(move || {
                    for i in 0..5000 {
                        now(cache.put(entry(&format!("t{t}/{i}")))).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let held: usize = cache.shards.iter().map(|s| s.read().len()).sum();
        assert_eq!(held, 4096);
        assert_eq!(now(cache.len()).unwrap(), 4096);
        assert_eq!(cache.stats().evictions, 20_000 - 4096);
    }

    /// A hit takes its shard only to read: hits on one shard never wait for each other,
    /// so a shard served to several workers has no lock word that every hit writes.
    #[test]
    fn hits_on_one_shard_do_not_wait_for_each_other() {
        let cache = MemoryCache::builder().shards(1).build();
        now(cache.put(entry("a.jpg"))).unwrap();
        // Another reader is inside the shard for as long as this guard lives.
        let reading = cache.shards[0].read();
        let (answer, answered) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let found = now(cache.get("a.jpg")).unwrap();
                answer.send(found.map(|e| e.access_count)).unwrap();
            });
            // A bound for the failure case only: the hit answers at once.
            let got = answered.recv_timeout(Duration::from_secs(10));
            drop(reading);
            assert_eq!(got, Ok(Some(1)), "the hit waited for the other reader");
        });
    }

    /// Ticks are each thread's own but follow the clock: an entry another thread read
    /// later by the clock is evicted later, however many ticks this thread drew before.
    #[test]
    fn recency_follows_the_clock_across_threads() {
        let clock = Arc::new(crate::ManualClock::from_unix_secs(1.7e9));
        let cache = MemoryCache::builder()
            .capacity(2)
            .clock(clock.clone())
            .build();
        now(cache.put(entry("a.jpg"))).unwrap();
        now(cache.put(entry("b.jpg"))).unwrap();
        // Many uses of b while the clock stands still: this thread's ticks run ahead.
        for _ in 0..1000 {
            now(cache.get("b.jpg")).unwrap().unwrap();
        }
        clock.advance(Duration::from_secs(1));
        std::thread::scope(|scope| {
            scope.spawn(|| now(cache.get("a.jpg")).unwrap().unwrap());
        });
        now(cache.put(entry("c.jpg"))).unwrap();
        assert!(
            now(cache.peek("a.jpg")).unwrap().is_some(),
            "a was read last"
        );
        assert!(
            now(cache.peek("b.jpg")).unwrap().is_none(),
            "b was read first"
        );
    }

    /// Shards compact while other threads read: entries that stay are found with their
    /// own URL throughout, from the shard and from the readers' copies alike.
    #[test]
    fn readers_keep_their_entries_while_shards_compact() {
        let cache = Arc::new(MemoryCache::builder().capacity(100_000).shards(2).build());
        let at = SystemTime::now();
        let kept = |i: usize| {
            CacheEntry::new(
                format!("kept{i}"),
                format!("https://h/kept{i}?sig"),
                at + Duration::from_secs(600),
                at,
            )
        };
        for i in 0..50 {
            now(cache.put(kept(i))).unwrap();
        }
        let churning = std::sync::atomic::AtomicUsize::new(2);
        /// Counts its churning thread out however the thread ends, so that a failing
        /// churner fails the test instead of leaving the readers waiting.
        struct Done<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Release);
            }
        }
        std::thread::scope(|scope| {
            for t in 0..2 {
                let (cache, churning) = (&cache, &churning);
                scope.spawn(move || {
                    let _done = Done(churning);
                    for round in 0..10 {
                        let keys: Vec<String> =
                            (0..3000).map(|i| format!("c{t}/{round}/{i}")).collect();
                        for key in &keys {
                            now(cache.put(entry(key))).unwrap();
                        }
                        for key in &keys {
                            assert!(now(cache.delete(key)).unwrap());
                        }
                    }
                });
            }
            for _ in 0..2 {
                let (cache, churning) = (&cache, &churning);
                scope.spawn(move || {
                    let mut reads = 0u64;
                    // Hot keys (served from copies) and the rest in turn (from the shard).
                    while churning.load(Ordering::Acquire) > 0 || reads < 10_000 {
                        let i = if reads % 2 == 0 {
                            reads as usize % 5
                        } else {
                            reads as usize % 50
                        };
                        let found = now(cache.get(&format!("kept{i}"))).unwrap().unwrap();
                        assert_eq!(*found.url, *format!("https://h/kept{i}?sig"));
                        reads += 1;
                    }
                });
            }
        });
        assert_eq!(now(cache.len()).unwrap(), 50);
        let places: usize = cache.shards.iter().map(|s| s.read().places()).sum();
        assert!(places < 2 * 1024, "{places} places for 50 entries");
    }
}
