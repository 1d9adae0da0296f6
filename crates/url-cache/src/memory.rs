//! The in-memory backend.
//!
//! Hand-written, because no well-kept crate offers LRU, LFU and FIFO behind one type
//! with a per-entry expiry index: `moka` gives TinyLFU/LRU with its own expiry but no
//! FIFO or plain LFU and no "expiring within" query; `lru` gives LRU alone. The structure
//! is deliberately plain:
//!
//! - the key space is split over shards, each a `Mutex` around a `HashMap` plus two
//!   `BTreeMap` indexes (policy order, expiry order), so every operation is O(log n) and
//!   concurrent tasks only contend when their keys share a shard;
//! - a lock is never held across an `.await` (no operation awaits while holding one);
//! - the capacity is global and exact (an atomic count); the victim is the policy's
//!   first choice within the writer's shard. Small caches (< 4096 entries by default)
//!   use a single shard, so their policy is exact; larger ones follow it approximately,
//!   as every sharded cache does (moka, caffeine).

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use foldhash::fast::RandomState;
// hashbrown rather than std's map for `get_key_value_mut`: a hit hands out the map's own
// `Arc` of the key, in one lookup.
use hashbrown::hash_map::Entry as MapEntry;
use hashbrown::HashMap;

use crate::policy::Kind;
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
#[derive(Debug)]
pub struct MemoryCache {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    policy: EvictionPolicy,
    capacity: usize,
    /// Entries held across all shards: the capacity is global and exact, only the choice
    /// of victim is per shard.
    len: AtomicUsize,
    clock: Arc<dyn Clock>,
    stats: StatsCounters,
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
        let shards = (0..shard_count).map(|_| Mutex::new(Shard::new())).collect();
        MemoryCache {
            shards,
            hasher: RandomState::default(),
            policy: self.policy,
            capacity: self.capacity,
            len: AtomicUsize::new(0),
            clock: self.clock,
            stats: StatsCounters::default(),
        }
    }
}

/// Position in the policy order: the smallest goes first.
type OrderKey = (u64, u64);
/// Position in the expiry order: (expires_at in ms, tick).
type ExpiryKey = (u64, u64);

/// An entry as a shard keeps it, in 64 bytes plus its text: the key is stored once (as
/// the map's key), times are nanoseconds since the Unix epoch (`u64`: until 2554; later
/// times are kept as 2554). The text is shared with the entries handed out: a hit copies
/// no string, it bumps reference counts.
#[derive(Debug)]
struct Stored {
    url: Arc<str>,
    mime_type: Option<Arc<str>>,
    expires_at: u64,
    created_at: u64,
    last_accessed: u64,
    access_count: u64,
}

fn nanos(time: SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn from_nanos(nanos: u64) -> SystemTime {
    std::time::UNIX_EPOCH + Duration::from_nanos(nanos)
}

impl Stored {
    fn new(entry: CacheEntry) -> Self {
        Stored {
            url: entry.url,
            mime_type: entry.mime_type,
            expires_at: nanos(entry.expires_at),
            created_at: nanos(entry.created_at),
            last_accessed: nanos(entry.last_accessed),
            access_count: entry.access_count,
        }
    }

    /// As [`CacheEntry::is_expired`].
    fn is_expired(&self, now: SystemTime) -> bool {
        nanos(now) >= self.expires_at
    }

    fn to_entry(&self, key: &Arc<str>) -> CacheEntry {
        CacheEntry {
            url: self.url.clone(),
            expires_at: from_nanos(self.expires_at),
            access_count: self.access_count,
            created_at: from_nanos(self.created_at),
            last_accessed: from_nanos(self.last_accessed),
            image_key: key.clone(),
            mime_type: self.mime_type.clone(),
        }
    }
}

#[derive(Debug)]
struct Slot {
    stored: Stored,
    /// Where the entry sits in `Shard::order`.
    indexed: OrderKey,
    /// Where it should sit. Reads only raise this (no tree update on the hot path);
    /// eviction repairs the index lazily, see `Shard::evict_one`.
    current: OrderKey,
    /// The tick of its place in `Shard::expiry` (whose key is `(expires_at in ms, tick)`).
    expiry_tick: u64,
}

impl Slot {
    fn expiry(&self) -> ExpiryKey {
        (self.stored.expires_at / 1_000_000, self.expiry_tick)
    }
}

#[derive(Debug)]
struct Shard {
    map: HashMap<Arc<str>, Slot, RandomState>,
    order: BTreeMap<OrderKey, Arc<str>>,
    expiry: BTreeMap<ExpiryKey, Arc<str>>,
    /// Monotonic per-shard counter: recency and insertion order, and a tie-breaker.
    tick: u64,
    /// The MIME types stored, each kept once and shared by its entries (a handful of
    /// values across thousands of entries). Bounded: beyond [`MAX_INTERNED_MIME_TYPES`]
    /// distinct values, new ones are kept per entry, so odd input cannot grow it.
    mime_types: hashbrown::HashSet<Arc<str>, RandomState>,
}

/// Distinct MIME types a shard shares between its entries.
const MAX_INTERNED_MIME_TYPES: usize = 64;

fn millis(time: SystemTime) -> u64 {
    nanos(time) / 1_000_000
}

impl Shard {
    fn new() -> Self {
        Shard {
            map: HashMap::default(),
            order: BTreeMap::new(),
            expiry: BTreeMap::new(),
            tick: 0,
            mime_types: Default::default(),
        }
    }

    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    fn remove(&mut self, key: &str) -> Option<CacheEntry> {
        let (name, slot) = self.map.remove_entry(key)?;
        self.order.remove(&slot.indexed);
        self.expiry.remove(&slot.expiry());
        Some(slot.stored.to_entry(&name))
    }

    /// Looks `key` up at `now`, recording the access. `Err(())` means "was expired".
    fn get(&mut self, key: &str, now: SystemTime, policy: Kind) -> Result<Option<CacheEntry>, ()> {
        let tick = self.next_tick();
        let Some((name, slot)) = self.map.get_key_value_mut(key) else {
            return Ok(None);
        };
        let now = nanos(now);
        if now >= slot.stored.expires_at {
            self.remove(key);
            return Err(());
        }
        slot.stored.access_count += 1;
        slot.stored.last_accessed = now;
        match policy {
            Kind::Lru => slot.current = (0, tick),
            Kind::Lfu => slot.current = (slot.stored.access_count, tick),
            Kind::Fifo => {}
        }
        Ok(Some(slot.stored.to_entry(name)))
    }

    /// The shard's shared copy of `mime`, if it keeps one.
    fn intern(&mut self, mime: Arc<str>) -> Arc<str> {
        if let Some(shared) = self.mime_types.get(&*mime) {
            return shared.clone();
        }
        if self.mime_types.len() < MAX_INTERNED_MIME_TYPES {
            self.mime_types.insert(mime.clone());
        }
        mime
    }

    /// Inserts or replaces; whether the key is new.
    fn put(&mut self, mut entry: CacheEntry, policy: Kind) -> bool {
        entry.mime_type = entry.mime_type.map(|mime| self.intern(mime));
        let tick = self.next_tick();
        let order = match policy {
            Kind::Lru | Kind::Fifo => (0, tick),
            Kind::Lfu => (entry.access_count, tick),
        };
        let expiry = (millis(entry.expires_at), tick);
        let mut inserted = false;
        let key: Arc<str> = match self.map.entry(entry.image_key.clone()) {
            MapEntry::Occupied(mut occupied) => {
                let old = occupied.get_mut();
                let stored = Stored::new(entry);
                // The same lifetime and last use: a refresh of the URL, which keeps the
                // entry's place in the eviction order.
                let refresh = old.stored.created_at == stored.created_at
                    && old.stored.last_accessed == stored.last_accessed;
                let (old_order, old_expiry) = (old.indexed, old.expiry());
                let (indexed, current) = if refresh {
                    (old.indexed, old.current)
                } else {
                    (order, order)
                };
                *old = Slot {
                    stored,
                    indexed,
                    current,
                    expiry_tick: tick,
                };
                let name = occupied.key().clone();
                if !refresh {
                    self.order.remove(&old_order);
                    self.order.insert(order, name.clone());
                }
                self.expiry.remove(&old_expiry);
                name
            }
            MapEntry::Vacant(vacant) => {
                inserted = true;
                let name = vacant.key().clone();
                vacant.insert(Slot {
                    stored: Stored::new(entry),
                    indexed: order,
                    current: order,
                    expiry_tick: tick,
                });
                self.order.insert(order, name.clone());
                name
            }
        };
        self.expiry.insert(expiry, key);
        inserted
    }

    /// Evicts the policy's first victim other than `keep`; whether there was one.
    ///
    /// Reads only raise a slot's `current` position, so the index holds positions that
    /// are at most as high as the real ones. The smallest indexed entry whose position is
    /// up to date is therefore the true victim; stale ones met on the way are re-indexed
    /// at their real position (each read costs at most one such move, here, not on the
    /// read path).
    fn evict_one(&mut self, keep: &str) -> bool {
        let mut skipped = None;
        loop {
            let Some((order, name)) = self.order.pop_first() else {
                if let Some((order, name)) = skipped {
                    self.order.insert(order, name);
                }
                return false;
            };
            let Some(slot) = self.map.get_mut(&name) else {
                continue;
            };
            if slot.current != order {
                slot.indexed = slot.current;
                self.order.insert(slot.current, name);
                continue;
            }
            if &*name == keep {
                // The entry just written is never its own victim (under LFU it starts at
                // the bottom and would otherwise never get a chance to be read).
                skipped = Some((order, name));
                continue;
            }
            if let Some(slot) = self.map.remove(&name) {
                self.expiry.remove(&slot.expiry());
            }
            if let Some((order, name)) = skipped {
                self.order.insert(order, name);
            }
            return true;
        }
    }

    /// Removes up to `limit` expired entries; returns how many.
    fn remove_expired(&mut self, now: SystemTime, limit: usize) -> usize {
        let now_ms = millis(now);
        let mut removed = 0;
        while removed < limit {
            let Some((&(at, _), name)) = self.expiry.first_key_value() else {
                break;
            };
            if at > now_ms {
                break;
            }
            let name = name.clone();
            // The index is in whole milliseconds; the entry decides.
            if !self
                .map
                .get(&name)
                .is_some_and(|s| s.stored.is_expired(now))
            {
                break;
            }
            self.remove(&name);
            removed += 1;
        }
        removed
    }

    fn expiring_within(&self, now: SystemTime, until: SystemTime, limit: usize) -> Vec<CacheEntry> {
        self.expiry
            .range((millis(now), 0)..=(millis(until), u64::MAX))
            .filter_map(|(_, name)| self.map.get_key_value(name))
            .filter(|(_, slot)| {
                !slot.stored.is_expired(now) && slot.stored.expires_at <= nanos(until)
            })
            .take(limit)
            .map(|(name, slot)| slot.stored.to_entry(name))
            .collect()
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

    fn shard_index(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) as usize) % self.shards.len()
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, Shard> {
        lock(&self.shards[self.shard_index(key)])
    }

    fn removed(&self, n: usize) {
        if n > 0 {
            self.len.fetch_sub(n, Ordering::Relaxed);
        }
    }

    fn get_sync(&self, key: &str, now: SystemTime) -> Option<CacheEntry> {
        let result = self.shard(key).get(key, now, self.policy.kind());
        match result {
            Ok(Some(entry)) => {
                self.stats.hit(1);
                Some(entry)
            }
            Ok(None) => {
                self.stats.miss(1);
                None
            }
            Err(()) => {
                self.removed(1);
                self.stats.expired(1);
                None
            }
        }
    }
}

impl Default for MemoryCache {
    fn default() -> Self {
        Self::new()
    }
}

/// A poisoned shard only means another task panicked mid-operation; every operation
/// leaves the shard consistent before it can panic, so the data is still usable.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[async_trait]
impl UrlCache for MemoryCache {
    async fn get(&self, key: &str) -> Result<Option<CacheEntry>> {
        validate_key(key)?;
        Ok(self.get_sync(key, self.clock.now()))
    }

    async fn peek(&self, key: &str) -> Result<Option<CacheEntry>> {
        validate_key(key)?;
        let now = self.clock.now();
        let shard = self.shard(key);
        Ok(shard
            .map
            .get_key_value(key)
            .filter(|(_, slot)| !slot.stored.is_expired(now))
            .map(|(name, slot)| slot.stored.to_entry(name)))
    }

    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<CacheEntry>>> {
        for key in keys {
            validate_key(key)?;
        }
        let now = self.clock.now();
        Ok(keys.iter().map(|key| self.get_sync(key, now)).collect())
    }

    async fn put(&self, entry: CacheEntry) -> Result<()> {
        validate_entry(&entry)?;
        let now = self.clock.now();
        let key = entry.image_key.clone();
        let home = self.shard_index(&key);
        let mut shard = lock(&self.shards[home]);
        if entry.is_expired(now) {
            if shard.remove(&key).is_some() {
                self.len.fetch_sub(1, Ordering::Relaxed);
            }
            return Ok(());
        }
        if !shard.put(entry, self.policy.kind()) {
            return Ok(());
        }
        // Over capacity: evict from the writer's own shard first (its lock is held
        // already), then from the others, one lock at a time so no two are ever held.
        let mut held = self.len.fetch_add(1, Ordering::Relaxed) + 1;
        while held > self.capacity && shard.evict_one(&key) {
            held = self.len.fetch_sub(1, Ordering::Relaxed) - 1;
            self.stats.evicted(1);
        }
        drop(shard);
        let mut next = home;
        let mut empty_in_a_row = 0;
        while self.len.load(Ordering::Relaxed) > self.capacity && empty_in_a_row < self.shards.len()
        {
            next = (next + 1) % self.shards.len();
            if lock(&self.shards[next]).evict_one(&key) {
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
        let removed = self.shard(key).remove(key).is_some();
        self.removed(usize::from(removed));
        Ok(removed)
    }

    async fn expiring_within(&self, within: Duration, limit: usize) -> Result<Vec<CacheEntry>> {
        let now = self.clock.now();
        let until = now + within;
        let mut found: Vec<CacheEntry> = Vec::new();
        for shard in self.shards.iter() {
            found.extend(lock(shard).expiring_within(now, until, limit));
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
                let removed = lock(shard).remove_expired(now, batch_size);
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
    fn now<F: std::future::Future>(f: F) -> F::Output {
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
            lock(&cache.shards[0]).mime_types.len(),
            MAX_INTERNED_MIME_TYPES
        );
        assert_eq!(&*mime("odd199"), "image/x-199");
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
        let held: usize = cache.shards.iter().map(|s| lock(s).map.len()).sum();
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
        let held: usize = cache.shards.iter().map(|s| lock(s).map.len()).sum();
        assert_eq!(held, 4096);
        assert_eq!(now(cache.len()).unwrap(), 4096);
        assert_eq!(cache.stats().evictions, 20_000 - 4096);
    }
}
