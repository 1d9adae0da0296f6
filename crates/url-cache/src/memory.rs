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
//! - eviction is exact within a shard; small caches (< 4096 entries by default) use a
//!   single shard, so their policy is exact globally, larger ones are approximately
//!   global, like every sharded cache (moka, caffeine).

use std::collections::hash_map::{Entry as MapEntry, RandomState};
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

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
/// cache.put(CacheEntry::new("a.jpg", "https://h/a.jpg?sig", now + 3600.0, now)).await?;
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
        // Split the capacity exactly: the first `rest` shards take one more.
        let (base, rest) = (self.capacity / shard_count, self.capacity % shard_count);
        let shards = (0..shard_count)
            .map(|i| Mutex::new(Shard::new(base + usize::from(i < rest))))
            .collect();
        MemoryCache {
            shards,
            hasher: RandomState::new(),
            policy: self.policy,
            capacity: self.capacity,
            clock: self.clock,
            stats: StatsCounters::default(),
        }
    }
}

/// Position in the policy order: the smallest goes first.
type OrderKey = (u64, u64);
/// Position in the expiry order: (expires_at in ms, tick).
type ExpiryKey = (u64, u64);

#[derive(Debug)]
struct Slot {
    entry: CacheEntry,
    order: OrderKey,
    expiry: ExpiryKey,
}

#[derive(Debug)]
struct Shard {
    capacity: usize,
    map: HashMap<Arc<str>, Slot>,
    order: BTreeMap<OrderKey, Arc<str>>,
    expiry: BTreeMap<ExpiryKey, Arc<str>>,
    /// Monotonic per-shard counter: recency and insertion order, and a tie-breaker.
    tick: u64,
}

fn millis(unix_secs: f64) -> u64 {
    (unix_secs.max(0.0) * 1000.0) as u64
}

impl Shard {
    fn new(capacity: usize) -> Self {
        Shard {
            capacity,
            map: HashMap::new(),
            order: BTreeMap::new(),
            expiry: BTreeMap::new(),
            tick: 0,
        }
    }

    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    fn remove(&mut self, key: &str) -> Option<CacheEntry> {
        let (_, slot) = self.map.remove_entry(key)?;
        self.order.remove(&slot.order);
        self.expiry.remove(&slot.expiry);
        Some(slot.entry)
    }

    /// Looks `key` up at `now`, recording the access. `Err(())` means "was expired".
    fn get(&mut self, key: &str, now: f64, policy: Kind) -> Result<Option<CacheEntry>, ()> {
        let tick = self.next_tick();
        let Some(slot) = self.map.get_mut(key) else {
            return Ok(None);
        };
        if slot.entry.is_expired(now) {
            self.remove(key);
            return Err(());
        }
        slot.entry.access_count += 1;
        slot.entry.last_accessed = now;
        let new_order = match policy {
            Kind::Lru => Some((0, tick)),
            Kind::Lfu => Some((slot.entry.access_count, tick)),
            Kind::Fifo => None,
        };
        let entry = slot.entry.clone();
        if let Some(new_order) = new_order {
            let old = std::mem::replace(&mut slot.order, new_order);
            if let Some(name) = self.order.remove(&old) {
                self.order.insert(new_order, name);
            }
        }
        Ok(Some(entry))
    }

    /// Inserts or replaces; returns how many entries were evicted.
    fn put(&mut self, entry: CacheEntry, policy: Kind) -> u64 {
        let tick = self.next_tick();
        let order = match policy {
            Kind::Lru | Kind::Fifo => (0, tick),
            Kind::Lfu => (entry.access_count, tick),
        };
        let expiry = (millis(entry.expires_at), tick);
        let key: Arc<str> = match self.map.entry(Arc::from(entry.image_key.as_str())) {
            MapEntry::Occupied(mut occupied) => {
                let old = occupied.get_mut();
                let (old_order, old_expiry) = (old.order, old.expiry);
                *old = Slot {
                    entry,
                    order,
                    expiry,
                };
                let name = occupied.key().clone();
                self.order.remove(&old_order);
                self.expiry.remove(&old_expiry);
                name
            }
            MapEntry::Vacant(vacant) => {
                let name = vacant.key().clone();
                vacant.insert(Slot {
                    entry,
                    order,
                    expiry,
                });
                name
            }
        };
        self.order.insert(order, key.clone());
        self.expiry.insert(expiry, key.clone());
        let mut evicted = 0;
        while self.map.len() > self.capacity {
            // The entry just written is never its own victim (under LFU it starts at the
            // bottom of the order and would otherwise never get a chance to be read).
            let Some((&order, victim)) = self.order.iter().find(|(_, name)| **name != key) else {
                break;
            };
            let victim = victim.clone();
            self.order.remove(&order);
            if let Some(slot) = self.map.remove(&victim) {
                self.expiry.remove(&slot.expiry);
                evicted += 1;
            }
        }
        evicted
    }

    /// Removes up to `limit` expired entries; returns how many.
    fn remove_expired(&mut self, now: f64, limit: usize) -> usize {
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
            if !self.map.get(&name).is_some_and(|s| s.entry.is_expired(now)) {
                break;
            }
            self.remove(&name);
            removed += 1;
        }
        removed
    }

    fn expiring_within(&self, now: f64, until: f64, limit: usize) -> Vec<CacheEntry> {
        self.expiry
            .range((millis(now), 0)..=(millis(until), u64::MAX))
            .filter_map(|(_, name)| self.map.get(name))
            .map(|slot| &slot.entry)
            .filter(|e| !e.is_expired(now) && e.expires_at <= until)
            .take(limit)
            .cloned()
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

    fn shard(&self, key: &str) -> MutexGuard<'_, Shard> {
        let index = (self.hasher.hash_one(key) as usize) % self.shards.len();
        lock(&self.shards[index])
    }

    fn get_sync(&self, key: &str, now: f64) -> Option<CacheEntry> {
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
        let mut shard = self.shard(&entry.image_key);
        if entry.is_expired(now) {
            shard.remove(&entry.image_key);
            return Ok(());
        }
        let evicted = shard.put(entry, self.policy.kind());
        drop(shard);
        self.stats.evicted(evicted);
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        validate_key(key)?;
        Ok(self.shard(key).remove(key).is_some())
    }

    async fn expiring_within(&self, within: Duration, limit: usize) -> Result<Vec<CacheEntry>> {
        let now = self.clock.now();
        let until = now + within.as_secs_f64();
        let mut found: Vec<CacheEntry> = Vec::new();
        for shard in self.shards.iter() {
            found.extend(lock(shard).expiring_within(now, until, limit));
        }
        found.sort_by(|a, b| a.expires_at.total_cmp(&b.expires_at));
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
        Ok(self.shards.iter().map(|s| lock(s).map.len()).sum())
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
