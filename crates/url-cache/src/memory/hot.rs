//! Each thread's own copies of the entries it hits again and again.
//!
//! A hit on a shard writes the entry it reads: its count and times, and the reference
//! counts of its text, which every thread's hits on that entry bump (the shard's lock
//! is read-locked in a part of its thread's own). When two workers serve one popular
//! image, each hit moves those cache lines from one core to the other, and two workers
//! serve less than one did. So a thread keeps, in a small table only it touches, copies
//! of the entries it met twice in a row at one place of that table, with text of its
//! own, and serves later hits from them: such a hit reads one shared word (the shard's
//! version) and writes nothing another thread writes.
//!
//! - **Coherence.** Every change to a shard's entries (put, delete, eviction, expiry)
//!   raises the shard's version under its lock; a copy is served only while the version
//!   is the one it was made or confirmed at, and before its expiry by the cache's clock.
//!   A stale copy goes back to the shard, which confirms it (same text: no new copy) or
//!   replaces it.
//! - **Accesses.** A hit served from a copy counts in the copy at once (the entry it
//!   returns has the count one higher and `last_accessed` now, as the thread sees it) and
//!   reaches the shard, which orders evictions by it, in batches: after [`FLUSH_EVERY`]
//!   hits, or at the first hit [`FLUSH_AFTER`] after the last exchange, or when the
//!   copy goes stale or leaves the table. So the shard's view of a hot entry lags by at
//!   most that many accesses per thread; a flush also brings the copy's count up to the
//!   shard's, which includes the other threads' flushed accesses.
//!
//! The table is direct-mapped: [`WAYS`] places per thread and cache, chosen by the key's
//! hash; a key is copied when it is met at its place twice in a row, so keys seen once
//! (a long tail) cost one word written and never a copy.

use std::cell::{RefCell, RefMut};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use thread_local::ThreadLocal;

use super::shard::nanos;
use crate::sharded::Padded;
use crate::CacheEntry;

/// Places in each thread's table.
const WAYS: usize = 64;

/// Hits served from a copy before they are handed to the shard.
pub(super) const FLUSH_EVERY: u64 = 64;

/// Time after which a copy's next hit hands its accesses to the shard.
pub(super) const FLUSH_AFTER: Duration = Duration::from_secs(1);

/// Accesses served from a copy that its shard has not counted yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Unflushed {
    /// How many.
    pub count: u64,
    /// The latest, in nanoseconds since the Unix epoch.
    pub last: u64,
}

/// What [`Lane::serve`] found.
pub(super) enum Served {
    /// A hit served from this thread's copy.
    Hit(CacheEntry),
    /// Not served here: ask the shard, handing it the accesses a stale copy held.
    Ask(Option<Unflushed>),
}

/// One entry as a thread keeps it.
struct LocalCopy {
    hash: u64,
    /// The shard's version when the copy was made or last confirmed.
    version: u64,
    /// The entry with text of its own; its count and last access as this thread knows
    /// them.
    entry: CacheEntry,
    unflushed: u64,
    /// [`FLUSH_AFTER`] past the copy's last exchange of accesses with the shard. Times
    /// are kept as the clock gives them: a hit compares them and converts none (a
    /// conversion to nanoseconds was 40 instructions, a tenth of a memory hit).
    flush_due: SystemTime,
}

impl LocalCopy {
    fn new(entry: &CacheEntry, hash: u64, version: u64, now: SystemTime) -> Self {
        LocalCopy {
            hash,
            version,
            entry: CacheEntry {
                url: Arc::from(&*entry.url),
                expires_at: entry.expires_at,
                access_count: entry.access_count,
                created_at: entry.created_at,
                last_accessed: entry.last_accessed,
                image_key: Arc::from(&*entry.image_key),
                // Already this thread's own (see `shard::thread_copy`).
                mime_type: entry.mime_type.clone(),
            },
            unflushed: 0,
            flush_due: flush_due(now),
        }
    }

    fn take_unflushed(&mut self, now: SystemTime) -> Option<Unflushed> {
        self.flush_due = flush_due(now);
        match std::mem::take(&mut self.unflushed) {
            0 => None,
            count => Some(Unflushed {
                count,
                last: nanos(self.entry.last_accessed),
            }),
        }
    }

    /// Whether `entry` is the entry this copies (a refresh of its URL is not).
    fn copies(&self, entry: &CacheEntry) -> bool {
        self.entry.expires_at == entry.expires_at
            && self.entry.created_at == entry.created_at
            && self.entry.url == entry.url
            && self.entry.mime_type == entry.mime_type
    }
}

/// A place's tags: the tag of the key its copy holds, and of the last key met there
/// that has none (its candidate); 0 for none. Kept apart from the copies, in a kilobyte:
/// a lookup of a key without a copy (the long tail) reads and writes only this.
#[derive(Default, Clone, Copy)]
struct Tags {
    held: u64,
    candidate: u64,
}

/// When a copy synced at `now` next hands its accesses to the shard (at once, should the
/// clock be within a second of its end).
fn flush_due(now: SystemTime) -> SystemTime {
    now.checked_add(FLUSH_AFTER).unwrap_or(now)
}

/// A key's tag: its hash, never 0.
fn tag(hash: u64) -> u64 {
    hash | 1
}

/// One thread's table; see [`HotCopies::lane`].
pub(super) struct Lane {
    tags: Box<[Tags]>,
    copies: Box<[Option<LocalCopy>]>,
}

/// The per-thread tables of one cache.
#[derive(Default)]
pub(super) struct HotCopies {
    /// Padded: `ThreadLocal` keeps threads' values side by side, and each lookup writes
    /// its lane's borrow flag.
    lanes: ThreadLocal<Padded<RefCell<Lane>>>,
}

impl fmt::Debug for HotCopies {
    // The copies hold signed URLs, which never reach logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HotCopies").finish_non_exhaustive()
    }
}

fn way_of(hash: u64) -> usize {
    // The shard takes the hash's upper half and its table the lowest bits; bits 16.. are
    // independent of both.
    (hash >> 16) as usize % WAYS
}

impl HotCopies {
    /// This thread's table. Held across one lookup (the shard's lock may be taken
    /// meanwhile: shards never call back here).
    pub(super) fn lane(&self) -> RefMut<'_, Lane> {
        self.lanes
            .get_or(|| {
                Padded(RefCell::new(Lane {
                    tags: vec![Tags::default(); WAYS].into_boxed_slice(),
                    copies: (0..WAYS).map(|_| None).collect(),
                }))
            })
            .0
            .borrow_mut()
    }
}

impl Lane {
    /// This thread's copy of `key` (with this `hash`), if its place holds one.
    fn copy_of(&mut self, key: &str, hash: u64) -> Option<&mut LocalCopy> {
        let way = way_of(hash);
        if self.tags[way].held != tag(hash) {
            return None;
        }
        self.copies[way]
            .as_mut()
            .filter(|copy| copy.hash == hash && *copy.entry.image_key == *key)
    }

    /// Serves `key` from this thread's copy if it holds a current one: the shard's
    /// version is still `version` and the entry lives at `now`. A batch of accesses due
    /// for the shard goes to `flush`, which returns the shard's count after it (if the
    /// entry is still there) for the copy to catch up with.
    pub(super) fn serve(
        &mut self,
        key: &str,
        hash: u64,
        version: u64,
        now: SystemTime,
        flush: impl FnOnce(Unflushed) -> Option<u64>,
    ) -> Served {
        let Some(copy) = self.copy_of(key, hash) else {
            return Served::Ask(None);
        };
        if copy.version != version || now >= copy.entry.expires_at {
            return Served::Ask(copy.take_unflushed(now));
        }
        copy.entry.access_count += 1;
        copy.entry.last_accessed = now;
        copy.unflushed += 1;
        if copy.unflushed >= FLUSH_EVERY || now >= copy.flush_due {
            let due = copy.take_unflushed(now);
            if let Some(count) = due.and_then(flush) {
                copy.entry.access_count = count;
            }
        }
        Served::Hit(copy.entry.clone())
    }

    /// Tells this thread's table that the shard, at `version`, answered `entry` at
    /// `now`: the copy of it is confirmed or made, or the key becomes the place's
    /// candidate. The accesses of a copy this displaces go to `flush_displaced` (its
    /// key, hash and accesses).
    pub(super) fn offer(
        &mut self,
        entry: &CacheEntry,
        hash: u64,
        version: u64,
        now: SystemTime,
        flush_displaced: impl FnOnce(&str, u64, Unflushed),
    ) {
        if let Some(copy) = self.copy_of(&entry.image_key, hash) {
            if copy.copies(entry) {
                copy.version = version;
                copy.entry.access_count = entry.access_count;
                copy.entry.last_accessed = entry.last_accessed;
                copy.unflushed = 0;
                copy.flush_due = flush_due(now);
            } else {
                *copy = LocalCopy::new(entry, hash, version, now);
            }
            return;
        }
        let way = way_of(hash);
        let tags = &mut self.tags[way];
        if tags.candidate != tag(hash) {
            tags.candidate = tag(hash);
            return;
        }
        *tags = Tags {
            held: tag(hash),
            candidate: 0,
        };
        let displaced = self.copies[way].replace(LocalCopy::new(entry, hash, version, now));
        if let Some(mut old) = displaced {
            if let Some(unflushed) = old.take_unflushed(now) {
                flush_displaced(&old.entry.image_key, old.hash, unflushed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::super::tests::now;
    use super::*;
    use crate::{Clock, ManualClock, MemoryCache, UrlCache};

    /// A thread of its own that looks keys up when asked: its copies stay its own
    /// between requests, as a server worker's do.
    struct Worker {
        asks: mpsc::Sender<(String, mpsc::Sender<Option<CacheEntry>>)>,
    }

    impl Worker {
        fn spawn(cache: Arc<MemoryCache>) -> Self {
            let (asks, asked) = mpsc::channel::<(String, mpsc::Sender<Option<CacheEntry>>)>();
            std::thread::spawn(move || {
                for (key, answer) in asked {
                    answer.send(now(cache.get(&key)).unwrap()).unwrap();
                }
            });
            Worker { asks }
        }

        fn get(&self, key: &str) -> Option<CacheEntry> {
            let (answer, answered) = mpsc::channel();
            self.asks.send((key.to_owned(), answer)).unwrap();
            answered.recv().unwrap()
        }
    }

    struct Fixture {
        clock: Arc<ManualClock>,
        cache: Arc<MemoryCache>,
    }

    impl Fixture {
        fn new(capacity: usize) -> Self {
            let clock = Arc::new(ManualClock::from_unix_secs(1.7e9));
            let cache = MemoryCache::builder()
                .capacity(capacity)
                .clock(clock.clone())
                .build();
            Fixture {
                clock,
                cache: Arc::new(cache),
            }
        }

        /// Two threads of their own on the fixture's cache.
        fn two_workers(&self) -> (Worker, Worker) {
            (
                Worker::spawn(self.cache.clone()),
                Worker::spawn(self.cache.clone()),
            )
        }

        fn put(&self, key: &str, url: &str, lives: Duration) {
            let now = self.clock.now();
            let entry = CacheEntry::new(key, url, now + lives, now);
            now_put(&self.cache, entry);
        }
    }

    fn now_put(cache: &MemoryCache, entry: CacheEntry) {
        now(cache.put(entry)).unwrap();
    }

    const HOUR: Duration = Duration::from_secs(3600);

    /// The point of the copies: two threads hitting one entry hold text of their own,
    /// so neither bumps a reference count the other bumps, and a thread's later hits
    /// hand out its one copy (no allocation per hit).
    #[test]
    fn hits_on_two_threads_share_no_reference_count() {
        let f = Fixture::new(100);
        f.put("hot.jpg", "https://b/hot.jpg?q-signature=s", HOUR);
        let (a, b) = f.two_workers();
        let from_a: Vec<_> = (0..4).map(|_| a.get("hot.jpg").unwrap()).collect();
        let from_b: Vec<_> = (0..4).map(|_| b.get("hot.jpg").unwrap()).collect();
        let (a_last, b_last) = (&from_a[3], &from_b[3]);
        assert_eq!(a_last.url, b_last.url);
        assert!(!Arc::ptr_eq(&a_last.url, &b_last.url), "one URL's count");
        assert!(!Arc::ptr_eq(&a_last.image_key, &b_last.image_key));
        assert!(
            Arc::ptr_eq(&from_a[2].url, &a_last.url),
            "one copy per thread"
        );
        let counts: Vec<_> = from_a.iter().map(|e| e.access_count).collect();
        assert_eq!(
            counts,
            [1, 2, 3, 4],
            "each hit one more, as the thread sees it"
        );
        assert_eq!(f.cache.stats().hits, 8);
    }

    /// No change to an entry leaves another thread serving its copy: a delete, a put
    /// of a new URL, an eviction, the expiry.
    #[test]
    fn copies_are_never_served_after_a_change() {
        let f = Fixture::new(2);
        let reader = Worker::spawn(f.cache.clone());
        let copied = |key: &str| {
            for _ in 0..3 {
                reader.get(key).unwrap();
            }
        };
        f.put("k", "https://b/k?v=1", HOUR);
        copied("k");
        assert!(now(f.cache.delete("k")).unwrap());
        assert!(reader.get("k").is_none(), "deleted");

        f.put("k", "https://b/k?v=2", HOUR);
        copied("k");
        f.put("k", "https://b/k?v=3", HOUR);
        assert_eq!(&*reader.get("k").unwrap().url, "https://b/k?v=3");

        // Capacity 2: the third key evicts "k", which has not been read since "x".
        f.put("x", "https://b/x", HOUR);
        copied("x");
        f.put("y", "https://b/y", HOUR);
        assert!(reader.get("k").is_none(), "evicted");

        f.put("soon", "https://b/soon", Duration::from_secs(10));
        copied("soon");
        f.clock.advance(Duration::from_secs(10));
        let expired_before = f.cache.stats().expired;
        assert!(reader.get("soon").is_none(), "expired");
        assert_eq!(f.cache.stats().expired, expired_before + 1);
    }

    /// Accesses served from a copy reach the shared entry in batches: every
    /// [`FLUSH_EVERY`] hits, or at the first hit a second after the last exchange; a
    /// flush brings the copy's count up to the other threads' flushed accesses.
    #[test]
    fn accesses_served_from_copies_reach_the_entry_in_batches() {
        let f = Fixture::new(100);
        f.put("k", "https://b/k", HOUR);
        let (a, b) = f.two_workers();
        let peeked = || now(f.cache.peek("k")).unwrap().unwrap().access_count;
        // Two hits on the shard make the copy; then FLUSH_EVERY hits on it.
        let hits = 2 + FLUSH_EVERY;
        for _ in 0..hits - 1 {
            a.get("k").unwrap();
        }
        assert_eq!(peeked(), 2, "held back in the copy");
        assert_eq!(a.get("k").unwrap().access_count, hits);
        assert_eq!(peeked(), hits, "one batch");

        // The other thread's first hits are the shard's, and count A's flushed ones.
        assert_eq!(b.get("k").unwrap().access_count, hits + 1);
        assert_eq!(b.get("k").unwrap().access_count, hits + 2);
        assert_eq!(b.get("k").unwrap().access_count, hits + 3, "from B's copy");
        assert_eq!(a.get("k").unwrap().access_count, hits + 1, "A's own view");
        assert_eq!(peeked(), hits + 2);

        f.clock.advance(Duration::from_secs(1));
        let at = f.clock.now();
        assert_eq!(a.get("k").unwrap().access_count, hits + 4, "caught up");
        let entry = now(f.cache.peek("k")).unwrap().unwrap();
        assert_eq!((entry.access_count, entry.last_accessed), (hits + 4, at));
    }

    /// A copy that leaves its place for another key hands its accesses over first, and
    /// a key met once takes no copy's place.
    #[test]
    fn a_displaced_copy_hands_its_accesses_over() {
        let f = Fixture::new(100_000);
        f.put("k", "https://b/k", HOUR);
        let hash = f.cache.locate("k").0;
        // Keys meeting "k" at its place: each once, then one twice.
        let rivals: Vec<String> = (0..)
            .map(|i| format!("r{i}"))
            .filter(|r| way_of(f.cache.locate(r).0) == way_of(hash))
            .take(3)
            .collect();
        // All written before the copy is made: a write to its shard would make it stale.
        for rival in &rivals {
            f.put(rival, "https://b/r", HOUR);
        }
        let reader = Worker::spawn(f.cache.clone());
        for _ in 0..5 {
            reader.get("k").unwrap();
        }
        reader.get(&rivals[0]).unwrap();
        reader.get(&rivals[1]).unwrap();
        assert_eq!(reader.get("k").unwrap().access_count, 6, "still a copy");
        assert_eq!(now(f.cache.peek("k")).unwrap().unwrap().access_count, 2);
        reader.get(&rivals[2]).unwrap();
        reader.get(&rivals[2]).unwrap();
        assert_eq!(
            now(f.cache.peek("k")).unwrap().unwrap().access_count,
            6,
            "handed over when displaced"
        );
    }
}
