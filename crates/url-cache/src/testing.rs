//! The [`UrlCache`] contract as an executable suite, for any backend (feature
//! `testing`).
//!
//! A backend proves itself by handing the suite a [`CacheFactory`], which makes a fresh,
//! empty cache per test with a given capacity and policy, reading time from the suite's
//! [`ManualClock`]. The project's memory and Redis backends run this same suite.
//!
//! ```
//! # tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use url_cache::testing::{run_all, CacheFactory};
//! use url_cache::{EvictionPolicy, ManualClock, MemoryCache, UrlCache};
//!
//! struct Memory;
//!
//! #[async_trait::async_trait]
//! impl CacheFactory for Memory {
//!     async fn make(&self, capacity: usize, policy: EvictionPolicy, clock: Arc<ManualClock>) -> Arc<dyn UrlCache> {
//!         Arc::new(MemoryCache::builder().capacity(capacity).policy(policy).clock(clock).build())
//!     }
//! }
//!
//! run_all(&Memory, EvictionPolicy::lru()).await; // panics, naming the test, on a breach
//! # });
//! ```
//!
//! The tests assert with `assert!`: run them inside `#[tokio::test(flavor =
//! "multi_thread")]` (one of them spawns tasks).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::{CacheEntry, CacheError, Clock, EvictionPolicy, ManualClock, SystemClock, UrlCache};

/// Makes the caches the suite tests.
#[async_trait]
pub trait CacheFactory: Send + Sync {
    /// A new, empty cache holding at most `capacity` entries, evicting by `policy`, and
    /// taking "now" from `clock` (which starts at the real time, whole seconds: a
    /// backend that also expires on its own clock, as Redis does, stays in step).
    async fn make(
        &self,
        capacity: usize,
        policy: EvictionPolicy,
        clock: Arc<ManualClock>,
    ) -> Arc<dyn UrlCache>;
}

/// Every contract test, by name, for [`run_all`].
pub const TESTS: [&str; 14] = [
    "put_get_delete",
    "peek_records_nothing",
    "expiry_follows_the_injected_clock",
    "access_is_recorded",
    "eviction_order_follows_the_policy",
    "capacity_always_holds",
    "expiring_within_and_batched_cleanup",
    "stats_count_every_lookup",
    "get_many_keeps_order_and_reports_missing",
    "concurrent_tasks_on_the_same_keys",
    "python_json_entries_round_trip",
    "bad_input_is_a_typed_error",
    "batched_writes_and_refreshes_keep_the_order",
    "get_ready_answers_as_get_does",
];

/// Runs every contract test against caches from `factory` with `policy`, one after
/// another; a breach panics with the test's name on stderr just before.
pub async fn run_all(factory: &dyn CacheFactory, policy: EvictionPolicy) {
    for name in TESTS {
        eprintln!("url-cache conformance: {name} ({})", policy.name());
        run_one(factory, policy, name).await;
    }
}

/// Runs the contract test called `name` (one of [`TESTS`]).
pub async fn run_one(factory: &dyn CacheFactory, policy: EvictionPolicy, name: &str) {
    match name {
        "put_get_delete" => put_get_delete(factory, policy).await,
        "peek_records_nothing" => peek_records_nothing(factory, policy).await,
        "expiry_follows_the_injected_clock" => {
            expiry_follows_the_injected_clock(factory, policy).await
        }
        "access_is_recorded" => access_is_recorded(factory, policy).await,
        "eviction_order_follows_the_policy" => {
            eviction_order_follows_the_policy(factory, policy).await
        }
        "capacity_always_holds" => capacity_always_holds(factory, policy).await,
        "expiring_within_and_batched_cleanup" => {
            expiring_within_and_batched_cleanup(factory, policy).await
        }
        "stats_count_every_lookup" => stats_count_every_lookup(factory, policy).await,
        "get_many_keeps_order_and_reports_missing" => {
            get_many_keeps_order_and_reports_missing(factory, policy).await
        }
        "concurrent_tasks_on_the_same_keys" => {
            concurrent_tasks_on_the_same_keys(factory, policy).await
        }
        "python_json_entries_round_trip" => python_json_entries_round_trip(factory, policy).await,
        "bad_input_is_a_typed_error" => bad_input_is_a_typed_error(factory, policy).await,
        "batched_writes_and_refreshes_keep_the_order" => {
            batched_writes_and_refreshes_keep_the_order(factory, policy).await
        }
        "get_ready_answers_as_get_does" => get_ready_answers_as_get_does(factory, policy).await,
        other => panic!("no conformance test named {other:?}"),
    }
}

struct Fixture {
    cache: Arc<dyn UrlCache>,
    clock: Arc<ManualClock>,
    policy: EvictionPolicy,
}

impl Fixture {
    async fn new(factory: &dyn CacheFactory, policy: EvictionPolicy, capacity: usize) -> Self {
        // Start at the real time: Redis expires hashes on its own clock.
        let clock = Arc::new(ManualClock::from_unix_secs(SystemClock.now_unix().floor()));
        let cache = factory.make(capacity, policy, clock.clone()).await;
        Fixture {
            cache,
            clock,
            policy,
        }
    }

    fn now(&self) -> SystemTime {
        self.clock.now()
    }

    fn entry(&self, key: &str, ttl_secs: f64) -> CacheEntry {
        let now = self.now();
        CacheEntry::new(
            key,
            format!("https://b.example/{key}?q-signature=s"),
            // A negative TTL makes an already expired entry.
            crate::from_unix_secs(crate::unix_secs(now) + ttl_secs),
            now,
        )
        .with_mime_type("image/jpeg")
    }

    /// Moves the clock one second, so recency and insertion scores never tie.
    fn tick(&self) {
        self.clock.advance(Duration::from_secs(1));
    }

    async fn present(&self, keys: &[&str]) -> Vec<String> {
        let found = self.cache.get_many(keys).await.unwrap();
        keys.iter()
            .zip(found)
            .filter(|(_, e)| e.is_some())
            .map(|(k, _)| k.to_string())
            .collect()
    }
}

/// Put, get (every field back), replace, delete, `len`, `health_check`.
pub async fn put_get_delete(factory: &dyn CacheFactory, policy: EvictionPolicy) {
    let f = Fixture::new(factory, policy, 100).await;
    let entry = f.entry("images/a.jpg", 3600.0);
    f.cache.put(entry.clone()).await.unwrap();
    let got = f.cache.get("images/a.jpg").await.unwrap().expect("hit");
    assert_eq!(got.url, entry.url);
    assert_eq!(got.expires_at, entry.expires_at);
    assert_eq!(got.created_at, entry.created_at);
    assert_eq!(got.mime_type.as_deref(), Some("image/jpeg"));
    assert_eq!(&*got.image_key, "images/a.jpg");
    assert_eq!(f.cache.len().await.unwrap(), 1);

    // Replacing keeps one entry.
    let newer = CacheEntry {
        url: "https://b.example/new".into(),
        ..f.entry("images/a.jpg", 7200.0)
    };
    f.cache.put(newer).await.unwrap();
    let got = f.cache.get("images/a.jpg").await.unwrap().unwrap();
    assert_eq!(&*got.url, "https://b.example/new");
    assert_eq!(f.cache.len().await.unwrap(), 1);

    assert!(f.cache.delete("images/a.jpg").await.unwrap());
    assert!(!f.cache.delete("images/a.jpg").await.unwrap());
    assert!(f.cache.get("images/a.jpg").await.unwrap().is_none());
    assert_eq!(f.cache.len().await.unwrap(), 0);
    assert!(f.cache.health_check().await.is_ok());
}

/// `peek` records no access and counts no lookup, and never shows an expired entry.
pub async fn peek_records_nothing(factory: &dyn CacheFactory, policy: EvictionPolicy) {
    let f = Fixture::new(factory, policy, 100).await;
    f.cache.put(f.entry("k", 100.0)).await.unwrap();
    let peeked = f.cache.peek("k").await.unwrap().unwrap();
    assert_eq!(peeked.access_count, 0);
    assert!(f.cache.peek("missing").await.unwrap().is_none());
    assert_eq!(f.cache.stats().lookups(), 0);
    assert_eq!(f.cache.get("k").await.unwrap().unwrap().access_count, 1);
    f.clock.advance(Duration::from_secs(100));
    assert!(
        f.cache.peek("k").await.unwrap().is_none(),
        "never shows an expired entry"
    );
}

/// An entry is served until its `expires_at` by the injected clock, never at it; the lookup that finds it expired counts `expired` and reclaims it; an expired `put` stores nothing.
pub async fn expiry_follows_the_injected_clock(factory: &dyn CacheFactory, policy: EvictionPolicy) {
    let f = Fixture::new(factory, policy, 100).await;
    f.cache.put(f.entry("k", 100.0)).await.unwrap();
    f.clock.advance(Duration::from_millis(99_999));
    assert!(
        f.cache.get("k").await.unwrap().is_some(),
        "alive 1 ms before expiry"
    );
    f.clock.advance(Duration::from_millis(1));
    assert!(
        f.cache.get("k").await.unwrap().is_none(),
        "never served at expiry"
    );
    assert!(f.cache.get("k").await.unwrap().is_none());
    let stats = f.cache.stats();
    assert_eq!((stats.hits, stats.expired, stats.misses), (1, 1, 1));
    // The expired entry was reclaimed by the lookup that found it.
    assert_eq!(f.cache.len().await.unwrap(), 0);
    // Putting an already expired entry stores nothing.
    f.cache.put(f.entry("old", -1.0)).await.unwrap();
    assert!(f.cache.get("old").await.unwrap().is_none());
    assert_eq!(f.cache.len().await.unwrap(), 0);
}

/// `get_ready`, where the backend answers it, is a `get`: the same entry, the access and
/// the lookup recorded; where it does not (`None`), it recorded nothing. Bad keys are
/// refused by either.
pub async fn get_ready_answers_as_get_does(factory: &dyn CacheFactory, policy: EvictionPolicy) {
    let f = Fixture::new(factory, policy, 100).await;
    f.cache.put(f.entry("k", 3600.0)).await.unwrap();
    // A first `get` (an L1 in front of a remote store holds the entry after it).
    assert_eq!(f.cache.get("k").await.unwrap().unwrap().access_count, 1);
    f.tick();
    let before = f.cache.stats();
    let expected_count = match f.cache.get_ready("k") {
        Some(answer) => {
            let got = answer.unwrap().expect("a live entry");
            assert_eq!(got.access_count, 2);
            assert_eq!(got.last_accessed, f.now());
            assert_eq!(&*got.url, "https://b.example/k?q-signature=s");
            assert_eq!(f.cache.stats().hits, before.hits + 1);
            3
        }
        None => {
            assert_eq!(f.cache.stats(), before, "nothing recorded");
            2
        }
    };
    let got = f.cache.get("k").await.unwrap().unwrap();
    assert_eq!(got.access_count, expected_count);
    // A miss: answered at once as `None`, or left to `get`.
    if let Some(answer) = f.cache.get_ready("absent") {
        assert!(answer.unwrap().is_none());
    }
    // Refused also once the thread holds copies of good keys (read twice above).
    let too_long = "k".repeat(crate::MAX_KEY_LEN + 1);
    for bad in ["", "a\nb", "k\u{85}", &too_long] {
        if let Some(answer) = f.cache.get_ready(bad) {
            assert!(
                matches!(answer, Err(CacheError::InvalidInput(_))),
                "{bad:?}"
            );
        }
    }
}

/// Each `get` returns the access count one higher and `last_accessed` = now.
pub async fn access_is_recorded(factory: &dyn CacheFactory, policy: EvictionPolicy) {
    let f = Fixture::new(factory, policy, 100).await;
    f.cache.put(f.entry("k", 3600.0)).await.unwrap();
    for expected in 1..=3u64 {
        f.tick();
        let got = f.cache.get("k").await.unwrap().unwrap();
        assert_eq!(got.access_count, expected);
        assert_eq!(got.last_accessed, f.now());
    }
}

/// Over capacity, the victim is the one the policy names (LRU, LFU, FIFO), never the entry just written; evictions are counted.
pub async fn eviction_order_follows_the_policy(factory: &dyn CacheFactory, policy: EvictionPolicy) {
    let f = Fixture::new(factory, policy, 3).await;
    for key in ["a", "b", "c"] {
        f.cache.put(f.entry(key, 3600.0)).await.unwrap();
        f.tick();
    }
    // Reads: a twice, c once, b never; a is the most recent.
    for key in ["a", "c", "a"] {
        assert!(f.cache.get(key).await.unwrap().is_some());
        f.tick();
    }
    f.cache.put(f.entry("d", 3600.0)).await.unwrap();
    f.tick();
    let (round_one, round_two): (&[&str], &[&str]) = match f.policy.name() {
        // b is least recently and least frequently used; FIFO drops the first in, a.
        "lru" | "lfu" => (&["a", "c", "d"], &["a", "c", "e"]),
        "fifo" => (&["b", "c", "d"], &["c", "d", "e"]),
        other => panic!("unknown policy {other}"),
    };
    assert_eq!(
        f.present(&["a", "b", "c", "d"]).await,
        round_one,
        "{policy:?}"
    );
    assert_eq!(f.cache.len().await.unwrap(), 3);
    assert_eq!(f.cache.stats().evictions, 1);

    // Round two: everything present was just read once more (above); now c then a again.
    // LRU: d is least recent. LFU: d has 1 read, c 3, a 4 — and the new entry e, with
    // none, is not its own victim. FIFO: b is the oldest insertion.
    f.tick();
    for key in ["c", "a"] {
        f.cache.get(key).await.unwrap();
        f.tick();
    }
    f.cache.put(f.entry("e", 3600.0)).await.unwrap();
    assert_eq!(
        f.present(&["a", "b", "c", "d", "e"]).await,
        round_two,
        "{policy:?}"
    );
    assert_eq!(f.cache.stats().evictions, 2);
}

/// After any `put`, the cache holds at most its capacity.
pub async fn capacity_always_holds(factory: &dyn CacheFactory, policy: EvictionPolicy) {
    let f = Fixture::new(factory, policy, 10).await;
    for i in 0..50 {
        f.cache
            .put(f.entry(&format!("k{i}"), 3600.0))
            .await
            .unwrap();
        f.clock.advance(Duration::from_millis(10));
    }
    assert_eq!(f.cache.len().await.unwrap(), 10);
    assert_eq!(f.cache.stats().evictions, 40);
    // The last one written is always kept.
    assert!(f.cache.get("k49").await.unwrap().is_some());
}

/// `expiring_within` is sorted and limited and counts no access; `remove_expired` removes exactly the expired entries, in batches.
pub async fn expiring_within_and_batched_cleanup(
    factory: &dyn CacheFactory,
    policy: EvictionPolicy,
) {
    let f = Fixture::new(factory, policy, 1000).await;
    // 250 entries expiring 10..260 s from now, plus 5 long-lived ones.
    for i in 0..250 {
        f.cache
            .put(f.entry(&format!("short/{i}"), 10.0 + i as f64))
            .await
            .unwrap();
    }
    for i in 0..5 {
        f.cache
            .put(f.entry(&format!("long/{i}"), 86_400.0))
            .await
            .unwrap();
    }
    let soon = f
        .cache
        .expiring_within(Duration::from_secs(20), 100)
        .await
        .unwrap();
    let keys: Vec<String> = soon.iter().map(|e| e.image_key.to_string()).collect();
    assert_eq!(
        keys,
        (0..=10).map(|i| format!("short/{i}")).collect::<Vec<_>>()
    );
    let limited = f
        .cache
        .expiring_within(Duration::from_secs(1000), 7)
        .await
        .unwrap();
    assert_eq!(limited.len(), 7);
    assert_eq!(&*limited[0].image_key, "short/0");
    assert!(limited
        .windows(2)
        .all(|w| w[0].expires_at <= w[1].expires_at));
    // Looking does not count as access.
    assert_eq!(f.cache.stats().lookups(), 0);

    f.clock.advance(Duration::from_secs(300));
    assert!(f
        .cache
        .expiring_within(Duration::from_secs(20), 100)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(f.cache.remove_expired(100).await.unwrap(), 250);
    assert_eq!(f.cache.len().await.unwrap(), 5);
    assert_eq!(f.cache.remove_expired(100).await.unwrap(), 0);
    assert!(f.cache.get("long/0").await.unwrap().is_some());
}

/// Every looked-up key counts exactly one of hit, miss or expired.
pub async fn stats_count_every_lookup(factory: &dyn CacheFactory, policy: EvictionPolicy) {
    let f = Fixture::new(factory, policy, 100).await;
    f.cache.put(f.entry("a", 3600.0)).await.unwrap();
    f.cache.put(f.entry("b", 10.0)).await.unwrap();
    f.cache.get("a").await.unwrap();
    f.cache.get("a").await.unwrap();
    f.cache.get("nope").await.unwrap();
    f.clock.advance(Duration::from_secs(11));
    f.cache.get("b").await.unwrap();
    let stats = f.cache.stats();
    assert_eq!(
        (stats.hits, stats.misses, stats.expired, stats.errors),
        (2, 1, 1, 0)
    );
    assert_eq!(stats.hit_rate(), 0.5);
}

/// `get_many` answers in order, duplicates included, and a miss leaves nothing visible.
pub async fn get_many_keeps_order_and_reports_missing(
    factory: &dyn CacheFactory,
    policy: EvictionPolicy,
) {
    let f = Fixture::new(factory, policy, 100).await;
    f.cache.put(f.entry("a", 3600.0)).await.unwrap();
    f.cache.put(f.entry("c", 3600.0)).await.unwrap();
    let found = f.cache.get_many(&["c", "missing", "a", "c"]).await.unwrap();
    let keys: Vec<Option<&str>> = found
        .iter()
        .map(|e| e.as_ref().map(|e| &*e.image_key))
        .collect();
    assert_eq!(keys, vec![Some("c"), None, Some("a"), Some("c")]);
    assert_eq!(found[3].as_ref().unwrap().access_count, 2);
    assert!(f.cache.get_many(&[]).await.unwrap().is_empty());
    let stats = f.cache.stats();
    assert_eq!((stats.hits, stats.misses), (3, 1));
    // A missed key stays missing (no stub becomes visible) and is not counted in len.
    assert_eq!(f.cache.len().await.unwrap(), 2);
    assert!(f.cache.get("missing").await.unwrap().is_none());
}

/// 32 tasks reading and writing the same keys: every read hits and the counters agree.
pub async fn concurrent_tasks_on_the_same_keys(factory: &dyn CacheFactory, policy: EvictionPolicy) {
    let f = Fixture::new(factory, policy, 100).await;
    let keys: Vec<String> = (0..8).map(|i| format!("hot/{i}")).collect();
    for key in &keys {
        f.cache.put(f.entry(key, 3600.0)).await.unwrap();
    }
    let mut tasks = Vec::new();
    for t in 0..32 {
        let cache = f.cache.clone();
        let keys = keys.clone();
        let template = f.entry("template", 3600.0);
        tasks.push(tokio::spawn(async move {
            let mut hits = 0u64;
            for i in 0..50 {
                let key = &keys[(t + i) % keys.len()];
                if i % 10 == 9 {
                    let entry = CacheEntry {
                        image_key: key.as_str().into(),
                        ..template.clone()
                    };
                    cache.put(entry).await.unwrap();
                } else if cache.get(key).await.unwrap().is_some() {
                    hits += 1;
                }
            }
            hits
        }));
    }
    let mut hits = 0;
    for task in tasks {
        hits += task.await.unwrap();
    }
    // Every key stays present (capacity 100), so every read hits, and the counters agree.
    assert_eq!(hits, 32 * 45);
    let stats = f.cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.errors), (hits, 0, 0));
    assert_eq!(f.cache.len().await.unwrap(), 8);
}

/// `put_many` and `delete_many` work as their one-key forms. Re-putting an entry with
/// its `created_at`, `last_accessed` and `access_count` (a refresh of its URL) replaces
/// the URL but keeps the entry's place in the eviction order: it is not a use.
pub async fn batched_writes_and_refreshes_keep_the_order(
    factory: &dyn CacheFactory,
    policy: EvictionPolicy,
) {
    let f = Fixture::new(factory, policy, 3).await;
    for key in ["a", "b", "c"] {
        f.cache.put_many(vec![f.entry(key, 3600.0)]).await.unwrap();
        f.tick();
    }
    // The refresher's write: a new URL and expiry, the same bookkeeping.
    let mut refreshed = f.cache.peek("a").await.unwrap().expect("a");
    refreshed.url = "https://b.example/a?q-signature=refreshed".into();
    refreshed.expires_at += Duration::from_secs(600);
    f.cache.put_many(vec![refreshed.clone()]).await.unwrap();
    let got = f
        .cache
        .peek("a")
        .await
        .unwrap()
        .expect("a after its refresh");
    assert_eq!(got.url, refreshed.url);
    assert_eq!(got.expires_at_unix(), refreshed.expires_at_unix());
    assert_eq!(got.access_count, refreshed.access_count);
    f.tick();
    // a is still the first victim under every policy (least recent, first in, and no
    // more used than the others, with the lowest name for a tie).
    f.cache.put(f.entry("d", 3600.0)).await.unwrap();
    let mut present = Vec::new();
    for key in ["a", "b", "c", "d"] {
        if f.cache.peek(key).await.unwrap().is_some() {
            present.push(key);
        }
    }
    assert_eq!(present, ["b", "c", "d"], "{policy:?}");
    assert_eq!(
        f.cache.delete_many(&["b", "c", "missing"]).await.unwrap(),
        2
    );
    assert_eq!(f.cache.len().await.unwrap(), 1);
    // A batch with an expired entry stores the live ones and not the expired one.
    f.cache
        .put_many(vec![f.entry("e", 3600.0), f.entry("f", -1.0)])
        .await
        .unwrap();
    assert!(f.cache.peek("e").await.unwrap().is_some());
    assert!(f.cache.peek("f").await.unwrap().is_none());
}

/// The original system's JSON record round-trips through the cache field for field.
pub async fn python_json_entries_round_trip(factory: &dyn CacheFactory, policy: EvictionPolicy) {
    let f = Fixture::new(factory, policy, 100).await;
    let now = f.clock.now_unix();
    let json = format!(
        r#"{{"url": "https://b.cos.ap-guangzhou.myqcloud.com/a.jpg?q-signature=abc", "expires_at": {}, "access_count": 7, "created_at": {}, "last_accessed": {}, "image_key": "legacy/a.jpg", "mime_type": "image/jpeg"}}"#,
        now + 1800.25,
        now - 100.0,
        now - 50.5
    );
    let entry: CacheEntry = serde_json::from_str(&json).unwrap();
    f.cache.put(entry.clone()).await.unwrap();
    let got = f.cache.get("legacy/a.jpg").await.unwrap().unwrap();
    assert_eq!(got.url, entry.url);
    assert_eq!(got.expires_at, entry.expires_at);
    assert_eq!(got.created_at, entry.created_at);
    assert_eq!(got.access_count, 8);
    assert_eq!(got.mime_type, entry.mime_type);
    let back = serde_json::to_value(&got).unwrap();
    let mut fields: Vec<&str> = back
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "access_count",
            "created_at",
            "expires_at",
            "image_key",
            "last_accessed",
            "mime_type",
            "url"
        ]
    );
}

/// Bad keys and entries are `InvalidInput`, never a panic or a retryable error.
pub async fn bad_input_is_a_typed_error(factory: &dyn CacheFactory, policy: EvictionPolicy) {
    let f = Fixture::new(factory, policy, 100).await;
    let long = "x".repeat(5000);
    for key in ["", "a\nb", long.as_str()] {
        assert!(matches!(
            f.cache.get(key).await,
            Err(CacheError::InvalidInput(_))
        ));
        assert!(matches!(
            f.cache.delete(key).await,
            Err(CacheError::InvalidInput(_))
        ));
    }
    let mut entry = f.entry("k", 3600.0);
    entry.expires_at = std::time::UNIX_EPOCH - Duration::from_secs(1);
    let err = f.cache.put(entry).await.unwrap_err();
    assert!(matches!(err, CacheError::InvalidInput(_)) && !err.is_retryable());
    let mut entry = f.entry("k", 3600.0);
    entry.url = "".into();
    assert!(f.cache.put(entry).await.is_err());
    assert!(f.cache.get_many(&["ok", ""]).await.is_err());
}
