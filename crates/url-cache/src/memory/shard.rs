//! One shard of the memory cache: its entries and the two orders kept over them.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use foldhash::fast::RandomState;
use hashbrown::hash_table::Entry as TableEntry;
use hashbrown::HashTable;

use super::hot::Unflushed;
use super::slots::{Slots, CHUNK};
use crate::policy::Kind;
use crate::CacheEntry;

/// Position in the policy order: the smallest goes first. `(0, tick)` for LRU and FIFO,
/// `(access count, tick)` for LFU; see [`next_tick`].
type OrderKey = (u64, u64);

thread_local! {
    /// The calling thread's last tick (see [`next_tick`]).
    static LAST_TICK: Cell<u64> = const { Cell::new(0) };
}

/// A tick for a use of an entry at `now` (nanoseconds since the Unix epoch, as the
/// caller already has them): the later of `now` and one past the calling thread's last
/// tick.
///
/// Ticks order uses (recency for LRU, insertion for FIFO, ties for LFU). A counter per
/// shard would be a word that every hit on the shard writes, from every thread; these
/// are the thread's own. They follow the cache's clock across threads, and within a
/// thread they follow the order of its calls even when the clock stands still (a test's
/// manual clock, or the coarse clock between its steps). Two threads may draw the same
/// tick: order elements stay apart by the entry's place.
pub(super) fn next_tick(now: u64) -> u64 {
    LAST_TICK
        .try_with(|last| {
            let tick = now.max(last.get().saturating_add(1));
            last.set(tick);
            tick
        })
        // The thread is exiting: the clock alone.
        .unwrap_or(now)
}

/// A MIME type as an entry keeps it: one pointer, to text usually shared by all the
/// shard's entries of that type (see [`Shard::intern`]).
type SharedMime = Arc<Arc<str>>;

/// An entry's fields as a shard keeps them: times are nanoseconds since the Unix epoch
/// (`u64`: until 2554; later times are kept as 2554). The text is shared with the
/// entries handed out: a hit copies no string, it bumps reference counts. Hits change
/// the last two fields while other threads read the shard too, hence atomics.
#[derive(Debug)]
struct Stored {
    url: Arc<str>,
    mime_type: Option<SharedMime>,
    expires_at: u64,
    created_at: u64,
    last_accessed: AtomicU64,
    access_count: AtomicU64,
}

pub(super) fn nanos(time: SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn from_nanos(nanos: u64) -> SystemTime {
    std::time::UNIX_EPOCH + Duration::from_nanos(nanos)
}

impl Stored {
    /// Adds `n` accesses to the count; the count after them, as this caller made it.
    fn count_accesses(&self, n: u64) -> u64 {
        self.access_count
            .fetch_add(n, Ordering::Relaxed)
            .wrapping_add(n)
    }

    fn to_entry(&self, key: &Arc<str>) -> CacheEntry {
        CacheEntry {
            url: self.url.clone(),
            expires_at: from_nanos(self.expires_at),
            access_count: self.access_count.load(Ordering::Relaxed),
            created_at: from_nanos(self.created_at),
            last_accessed: from_nanos(self.last_accessed.load(Ordering::Relaxed)),
            image_key: key.clone(),
            mime_type: self.mime_type.as_ref().map(thread_copy),
        }
    }
}

/// What [`Shard::get`] found.
pub(super) enum Lookup {
    /// A live entry, its access recorded.
    Hit(CacheEntry),
    /// No entry.
    Missing,
    /// An expired entry, left for the caller to remove.
    Expired,
}

/// MIME types each thread keeps a copy of (see [`thread_copy`]); a handful are in use.
const THREAD_MIME_COPIES: usize = 16;

thread_local! {
    /// This thread's copies of the MIME types it handed out, one per text: every shard
    /// keeps its own shared value of a type, and they all map to the one copy.
    static MIME_COPIES: RefCell<Vec<Arc<str>>> = const { RefCell::new(Vec::new()) };
}

/// The calling thread's own copy of `shared`.
///
/// Every entry of a shard shares its MIME type's text, so a hit that cloned it would
/// write that text's reference count, one cache line written by every worker on every
/// hit in the shard; two cores would pass it back and forth. A copy per thread has a
/// count only its thread writes (until an entry is dropped on another thread).
fn thread_copy(shared: &SharedMime) -> Arc<str> {
    let text: &str = shared;
    MIME_COPIES
        .try_with(|copies| {
            let mut copies = copies.borrow_mut();
            if let Some(copy) = copies.iter().find(|copy| ***copy == *text) {
                return copy.clone();
            }
            let copy: Arc<str> = Arc::from(text);
            if copies.len() == THREAD_MIME_COPIES {
                // More types in use than the list holds (odd input): the oldest goes.
                copies.remove(0);
            }
            copies.push(copy.clone());
            copy
        })
        // The thread is exiting and its copies are gone: share the shard's.
        .unwrap_or_else(|_| Arc::clone(shared))
}

/// One entry: 96 bytes plus its text (the key is stored once).
#[derive(Debug)]
struct Slot {
    key: Arc<str>,
    stored: Stored,
    /// Where the entry sits in `Shard::order`.
    indexed: OrderKey,
    /// The tick of its latest use. With the access count it says where the entry should
    /// sit (see [`Slot::position`]); reads only move this forward, never the index.
    last_tick: AtomicU64,
}

impl Slot {
    /// Raises the last use's tick to `tick` (never lowers it).
    ///
    /// A load and a store, not a `fetch_max`: a locked compare-and-swap loop on every hit
    /// cost about 3 % of a hit. Two threads hitting the entry at once may leave the lower
    /// of their two ticks; the order index then holds a position above the real one,
    /// which eviction repairs as it meets it (see [`Shard::evict_one`]). A key hit that
    /// often is served from each thread's copies, not from here.
    fn raise_tick(&self, tick: u64) {
        if tick > self.last_tick.load(Ordering::Relaxed) {
            self.last_tick.store(tick, Ordering::Relaxed);
        }
    }

    /// Where the entry should sit in the policy order. Never below `indexed`: reads only
    /// raise it, and a write that would lower it re-indexes at once.
    fn position(&self, policy: Kind) -> OrderKey {
        match policy {
            Kind::Lru => (0, self.last_tick.load(Ordering::Relaxed)),
            Kind::Lfu => (
                self.stored.access_count.load(Ordering::Relaxed),
                self.last_tick.load(Ordering::Relaxed),
            ),
            Kind::Fifo => self.indexed,
        }
    }
}

/// A shard: its entries, a hash table of their places, and two ordered indexes.
///
/// Entries live in [`Slots`], named by a `u32` that stays theirs while they live; the
/// table and both indexes hold that number, not the key. The expiry index packs the
/// expiry's second and the number into one `u64` (8 bytes an element, where a
/// `(nanoseconds, hash)` pair took 16), and checks the entry's own time to the
/// nanosecond. Ticks only grow, so inserts split the order index's rightmost B-tree node
/// and leave nodes about half full: its elements are the larger share of the indexes.
#[derive(Debug)]
pub(super) struct Shard {
    /// Places in `slots`, found by the key's hash and compared by the key.
    pub(super) table: HashTable<u32>,
    slots: Slots<Slot>,
    /// `(position, tick, place)`, see [`OrderKey`].
    pub(super) order: BTreeSet<(u64, u64, u32)>,
    /// `expiry second << 32 | place`, see [`expiry_element`].
    pub(super) expiry: BTreeSet<u64>,
    /// The MIME types stored, each kept once and shared by its entries (a handful of
    /// values across thousands of entries). Bounded: beyond [`MAX_INTERNED_MIME_TYPES`]
    /// distinct values, new ones are kept per entry, so odd input cannot grow it.
    pub(super) mime_types: HashTable<SharedMime>,
    /// The cache's hasher: to find an entry's table bucket from its place.
    hasher: RandomState,
}

/// Places below which a shard is never compacted (see [`Shard::compact_if_sparse`]).
const COMPACT_FROM: usize = 4 * CHUNK;

/// Distinct MIME types a shard shares between its entries.
pub(super) const MAX_INTERNED_MIME_TYPES: usize = 64;

fn order_element((position, tick): OrderKey, place: u32) -> (u64, u64, u32) {
    (position, tick, place)
}

/// The expiry's whole second, up to `u32::MAX` (the year 2106; later expiries share
/// that last second and are told apart by the entry's own time).
fn expiry_second(nanos: u64) -> u64 {
    (nanos / 1_000_000_000).min(u64::from(u32::MAX))
}

fn expiry_element(expires_at: u64, place: u32) -> u64 {
    expiry_second(expires_at) << 32 | u64::from(place)
}

fn element_place(element: u64) -> u32 {
    // The low half is the place, by construction.
    (element & u64::from(u32::MAX)) as u32
}

impl Shard {
    pub(super) fn new(hasher: RandomState) -> Self {
        Shard {
            table: HashTable::new(),
            slots: Slots::new(),
            order: BTreeSet::new(),
            expiry: BTreeSet::new(),
            mime_types: HashTable::new(),
            hasher,
        }
    }

    /// Entries held.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    fn place_of(&self, key: &str, hash: u64) -> Option<u32> {
        let slots = &self.slots;
        self.table
            .find(hash, |&place| *slots.get(place).key == *key)
            .copied()
    }

    /// Removes the entry at `place` from the table, the indexes and the slots.
    fn remove_at(&mut self, place: u32, hash: u64) -> Slot {
        if let Ok(found) = self.table.find_entry(hash, |&p| p == place) {
            found.remove();
        }
        let slot = self.slots.remove(place);
        self.order.remove(&order_element(slot.indexed, place));
        self.expiry
            .remove(&expiry_element(slot.stored.expires_at, place));
        slot
    }

    /// [`Shard::remove_at`] for a place found by an index (its hash is not at hand).
    fn remove_indexed(&mut self, place: u32) -> Slot {
        let hash = self.hasher.hash_one(&*self.slots.get(place).key);
        self.remove_at(place, hash)
    }

    pub(super) fn remove(&mut self, key: &str, hash: u64) -> Option<CacheEntry> {
        let place = self.place_of(key, hash)?;
        let slot = self.remove_at(place, hash);
        self.compact_if_sparse();
        Some(slot.stored.to_entry(&slot.key))
    }

    /// Places handed out, held or free.
    #[cfg(test)]
    pub(super) fn places(&self) -> usize {
        self.slots.places()
    }

    /// Gives back the room of removed entries once they take most of it: when fewer than
    /// a quarter of the shard's places hold an entry, the entries move to new, dense
    /// places and the table and indexes are rebuilt at their size.
    ///
    /// Slots, the hash table and the free list never shrink by themselves, so a cache
    /// that once held a million entries would keep their room after the entries expire
    /// or are deleted. A rebuild costs O(n log n) for the n entries left, and at least 3n
    /// removals come between two rebuilds, so its cost per removal is bounded. The
    /// policy order is kept: entries keep their order keys, only their places change.
    fn compact_if_sparse(&mut self) {
        let places = self.slots.places();
        let held = self.table.len();
        if places < COMPACT_FROM || held >= places / 4 {
            return;
        }
        let mut old = std::mem::replace(&mut self.slots, Slots::new());
        let order = std::mem::take(&mut self.order);
        let mut hashes = Vec::with_capacity(held);
        let mut new_order = Vec::with_capacity(held);
        let mut new_expiry = Vec::with_capacity(held);
        // The order index names every entry once.
        for (position, tick, place) in order {
            let slot = old.remove(place);
            let hash = self.hasher.hash_one(&*slot.key);
            let expires_at = slot.stored.expires_at;
            let place = self.slots.insert(slot);
            hashes.push((hash, place));
            new_order.push((position, tick, place));
            new_expiry.push(expiry_element(expires_at, place));
        }
        debug_assert_eq!(hashes.len(), held, "the order index names every entry");
        new_expiry.sort_unstable();
        // Built from sorted elements, the B-trees come out with full nodes.
        self.order = new_order.into_iter().collect();
        self.expiry = new_expiry.into_iter().collect();
        let (slots, hasher) = (&self.slots, &self.hasher);
        let mut table = HashTable::with_capacity(held);
        for (hash, place) in hashes {
            table.insert_unique(hash, place, |&p| hasher.hash_one(&*slots.get(p).key));
        }
        self.table = table;
    }

    /// The live entry for `key` at `now`, without recording an access.
    pub(super) fn peek(&self, key: &str, hash: u64, now: SystemTime) -> Option<CacheEntry> {
        let slot = self.slots.get(self.place_of(key, hash)?);
        (nanos(now) < slot.stored.expires_at).then(|| slot.stored.to_entry(&slot.key))
    }

    /// Looks `key` up at `now`, recording the access, and the accesses a thread's copy
    /// served before it (`earlier`). Takes the shard only to read: an expired entry is
    /// reported, for the caller to remove with the shard to itself.
    pub(super) fn get(
        &self,
        key: &str,
        hash: u64,
        now: SystemTime,
        earlier: Option<Unflushed>,
    ) -> Lookup {
        let Some(place) = self.place_of(key, hash) else {
            return Lookup::Missing;
        };
        let slot = self.slots.get(place);
        let at = nanos(now);
        if at >= slot.stored.expires_at {
            return Lookup::Expired;
        }
        let count = slot
            .stored
            .count_accesses(1 + earlier.map_or(0, |e| e.count));
        slot.stored.last_accessed.store(at, Ordering::Relaxed);
        slot.raise_tick(next_tick(at));
        let mut entry = slot.stored.to_entry(&slot.key);
        // This hit's own view, whatever other threads' hits wrote meanwhile.
        entry.access_count = count;
        entry.last_accessed = now;
        Lookup::Hit(entry)
    }

    /// Removes `key`'s entry if it has expired at `now`; whether it did.
    pub(super) fn remove_if_expired(&mut self, key: &str, hash: u64, now: SystemTime) -> bool {
        let Some(place) = self.place_of(key, hash) else {
            return false;
        };
        if nanos(now) < self.slots.get(place).stored.expires_at {
            return false;
        }
        self.remove_at(place, hash);
        self.compact_if_sparse();
        true
    }

    /// Records, at `now`, the accesses a thread's copy of `key` served; the entry's count
    /// after them, if it is still here.
    pub(super) fn record(
        &self,
        key: &str,
        hash: u64,
        accesses: Unflushed,
        now: SystemTime,
    ) -> Option<u64> {
        let slot = self.slots.get(self.place_of(key, hash)?);
        let count = slot.stored.count_accesses(accesses.count);
        slot.stored
            .last_accessed
            .fetch_max(accesses.last, Ordering::Relaxed);
        slot.raise_tick(next_tick(nanos(now)));
        Some(count)
    }

    /// The shard's shared copy of `mime`, or a copy of its own once the shard shares
    /// [`MAX_INTERNED_MIME_TYPES`] values.
    fn intern(&mut self, mime: Arc<str>) -> SharedMime {
        let hash = self.hasher.hash_one(&*mime);
        if let Some(shared) = self.mime_types.find(hash, |m| ***m == *mime) {
            return shared.clone();
        }
        let shared = Arc::new(mime);
        if self.mime_types.len() < MAX_INTERNED_MIME_TYPES {
            let hasher = &self.hasher;
            self.mime_types
                .insert_unique(hash, shared.clone(), |m| hasher.hash_one(&***m));
        }
        shared
    }

    /// Inserts or replaces at `now`; whether the key is new.
    pub(super) fn put(
        &mut self,
        entry: CacheEntry,
        hash: u64,
        policy: Kind,
        now: SystemTime,
    ) -> bool {
        let mime_type = entry.mime_type.map(|mime| self.intern(mime));
        let tick = next_tick(nanos(now));
        let order = match policy {
            Kind::Lru | Kind::Fifo => (0, tick),
            Kind::Lfu => (entry.access_count, tick),
        };
        let key = entry.image_key;
        let stored = Stored {
            url: entry.url,
            mime_type,
            expires_at: nanos(entry.expires_at),
            created_at: nanos(entry.created_at),
            last_accessed: AtomicU64::new(nanos(entry.last_accessed)),
            access_count: AtomicU64::new(entry.access_count),
        };
        let expiry = stored.expires_at;
        let (slots, hasher) = (&self.slots, &self.hasher);
        match self.table.entry(
            hash,
            |&place| *slots.get(place).key == *key,
            |&place| hasher.hash_one(&*slots.get(place).key),
        ) {
            TableEntry::Occupied(occupied) => {
                let place = *occupied.get();
                let old = self.slots.get_mut(place);
                // The same lifetime and last use: a refresh of the URL, which keeps the
                // entry's place in the eviction order.
                let refresh = old.stored.created_at == stored.created_at
                    && old.stored.last_accessed.load(Ordering::Relaxed)
                        == stored.last_accessed.load(Ordering::Relaxed);
                self.expiry
                    .remove(&expiry_element(old.stored.expires_at, place));
                let old_indexed = old.indexed;
                old.stored = stored;
                if !refresh {
                    old.indexed = order;
                    *old.last_tick.get_mut() = tick;
                }
                // A refresh under LFU may carry a lower count than the index holds:
                // the index must never be above the real position.
                let position = old.position(policy);
                if position < old.indexed {
                    old.indexed = position;
                }
                if old.indexed != old_indexed {
                    let indexed = old.indexed;
                    self.order.remove(&order_element(old_indexed, place));
                    self.order.insert(order_element(indexed, place));
                }
                self.expiry.insert(expiry_element(expiry, place));
                false
            }
            TableEntry::Vacant(vacant) => {
                let place = self.slots.insert(Slot {
                    key,
                    stored,
                    indexed: order,
                    last_tick: AtomicU64::new(tick),
                });
                vacant.insert(place);
                self.order.insert(order_element(order, place));
                self.expiry.insert(expiry_element(expiry, place));
                true
            }
        }
    }

    /// Evicts the policy's first victim other than `keep`; whether there was one.
    ///
    /// Reads only raise a slot's real position, so the index holds positions that are
    /// at most as high as the real ones. The smallest indexed entry whose position is up
    /// to date is therefore the true victim; stale ones met on the way are re-indexed at
    /// their real position (each read costs at most one such move, here, not on the read
    /// path). Two hits racing on one entry may leave its position below its index (see
    /// [`Slot::raise_tick`]): it is re-indexed lower when met, and goes then.
    pub(super) fn evict_one(&mut self, keep: &str, policy: Kind) -> bool {
        let mut skipped = None;
        let evicted = loop {
            let Some((position, tick, place)) = self.order.pop_first() else {
                break false;
            };
            let slot = self.slots.get_mut(place);
            let real = slot.position(policy);
            if real != (position, tick) {
                slot.indexed = real;
                self.order.insert(order_element(real, place));
                continue;
            }
            if *slot.key == *keep {
                // The entry just written is never its own victim (under LFU it starts at
                // the bottom and would otherwise never get a chance to be read).
                skipped = Some((position, tick, place));
                continue;
            }
            self.remove_indexed(place);
            break true;
        };
        if let Some(element) = skipped {
            self.order.insert(element);
        }
        evicted
    }

    /// Removes up to `limit` expired entries; returns how many.
    pub(super) fn remove_expired(&mut self, now: SystemTime, limit: usize) -> usize {
        let now = nanos(now);
        // Every element up to the current second: the earlier seconds' entries have all
        // expired, the current second's only partly.
        let due: Vec<u32> = self
            .expiry
            .range(..=expiry_element(now, u32::MAX))
            .map(|&element| element_place(element))
            .filter(|&place| self.slots.get(place).stored.expires_at <= now)
            .take(limit)
            .collect();
        for &place in &due {
            self.remove_indexed(place);
        }
        self.compact_if_sparse();
        due.len()
    }

    /// Up to `limit` live entries expiring within `(now, until]`, soonest first.
    pub(super) fn expiring_within(
        &self,
        now: SystemTime,
        until: SystemTime,
        limit: usize,
    ) -> Vec<CacheEntry> {
        // Live: expiring after `now` (the end instant counts as expired).
        let from = nanos(now).saturating_add(1);
        let until = nanos(until);
        if from > until || limit == 0 {
            return Vec::new();
        }
        // The index orders by second only: once `limit` entries are found, the rest of
        // that second is read too, so that the soonest `limit` are among those found.
        let mut found: Vec<(u64, u32)> = Vec::new();
        let mut last_second = None;
        for &element in self
            .expiry
            .range(expiry_element(from, 0)..=expiry_element(until, u32::MAX))
        {
            let second = element >> 32;
            if last_second.is_some_and(|last| last != second) {
                break;
            }
            let place = element_place(element);
            let at = self.slots.get(place).stored.expires_at;
            if (from..=until).contains(&at) {
                found.push((at, place));
                if found.len() == limit {
                    last_second = Some(second);
                }
            }
        }
        found.sort_unstable();
        found.truncate(limit);
        found
            .into_iter()
            .map(|(_, place)| {
                let slot = self.slots.get(place);
                slot.stored.to_entry(&slot.key)
            })
            .collect()
    }
}
