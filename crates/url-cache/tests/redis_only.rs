//! Redis-specific behaviour: the documented layout, legacy JSON entries, and a server that
//! stops or restarts under the client.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::{ClientLike, HashesInterface, KeysInterface, SortedSetsInterface};
use image_url_tests::RedisServer;
use url_cache::{CacheEntry, Clock, ManualClock, RedisCache, RedisConfig, SystemClock, UrlCache};

async fn raw_client(server: &RedisServer) -> fred::prelude::Client {
    let client = fred::prelude::Client::new(
        fred::prelude::Config::from_url(&server.url()).unwrap(),
        None,
        None,
        None,
    );
    client.init().await.unwrap();
    client
}

/// A cache on `server` whose accesses are flushed by the test (`flush_access`), not by
/// the timer; with an L1 of `l1_max_entries` (0: none).
async fn flushed_by_the_test(server: &RedisServer, l1_max_entries: usize) -> RedisCache {
    let mut config = RedisConfig::new(server.url());
    config.l1_max_entries = l1_max_entries;
    config.access_flush_interval = Duration::from_secs(3600);
    RedisCache::connect(config).await.unwrap()
}

fn entry(key: &str, now: f64, ttl: f64) -> CacheEntry {
    CacheEntry::new(
        key,
        format!("https://b.example/{key}?q-signature=s"),
        url_cache::from_unix_secs(now + ttl),
        url_cache::from_unix_secs(now),
    )
}

/// The index shards (default 16) holding `key` as a member: `(shard, score)` for the
/// expiry sets, then for the policy sets.
async fn shards_holding(
    raw: &fred::prelude::Client,
    key: &str,
) -> (Vec<(usize, f64)>, Vec<(usize, f64)>) {
    shards_of_index_holding(raw, "image:url-index", key).await
}

/// [`shards_holding`] for the indexes named `index`.
async fn shards_of_index_holding(
    raw: &fred::prelude::Client,
    index: &str,
    key: &str,
) -> (Vec<(usize, f64)>, Vec<(usize, f64)>) {
    let mut expiry = Vec::new();
    let mut policy = Vec::new();
    for shard in 0..16 {
        let e: Option<f64> = raw
            .zscore(format!("{{{index}:{shard}}}:expiry"), key)
            .await
            .unwrap();
        expiry.extend(e.map(|s| (shard, s)));
        let p: Option<f64> = raw
            .zscore(format!("{{{index}:{shard}}}:policy"), key)
            .await
            .unwrap();
        policy.extend(p.map(|s| (shard, s)));
    }
    (expiry, policy)
}

/// The number of calls of each command since `CONFIG RESETSTAT` (`INFO commandstats`).
fn command_calls(server: &RedisServer) -> HashMap<String, u64> {
    server
        .info("commandstats")
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layout_is_a_hash_per_entry_plus_sharded_sorted_sets() {
    let server = RedisServer::start();
    let cache = RedisCache::connect(RedisConfig::new(server.url()))
        .await
        .unwrap();
    // Whole seconds: entry times are kept to the microsecond.
    let now = SystemClock.now_unix().floor();
    cache
        .put(entry("img/a.jpg", now, 3600.0).with_mime_type("image/jpeg"))
        .await
        .unwrap();

    let raw = raw_client(&server).await;
    let fields: HashMap<String, String> = raw.hgetall("image:url:img/a.jpg").await.unwrap();
    assert_eq!(fields["url"], "https://b.example/img/a.jpg?q-signature=s");
    assert_eq!(fields["mime_type"], "image/jpeg");
    assert_eq!(fields["image_key"], "img/a.jpg");
    let ttl_ms: i64 = raw.pttl("image:url:img/a.jpg").await.unwrap();
    assert!(
        ttl_ms > 3_500_000 && ttl_ms <= 3_601_000,
        "hash expires with the URL: {ttl_ms}"
    );
    // One expiry shard and the policy shard of the same number (one hash tag) hold it.
    let (expiry, policy) = shards_holding(&raw, "img/a.jpg").await;
    assert_eq!(expiry.len(), 1, "{expiry:?}");
    assert_eq!(expiry[0].1, now + 3600.0);
    assert_eq!(policy.len(), 1, "{policy:?}");
    assert_eq!(policy[0].0, expiry[0].0);

    // Keys spread over the shards.
    for i in 0..64 {
        cache
            .put(entry(&format!("spread/{i}.jpg"), now, 3600.0))
            .await
            .unwrap();
    }
    let mut used = std::collections::BTreeSet::new();
    for shard in 0..16 {
        let n: u64 = raw
            .zcard(format!("{{image:url-index:{shard}}}:expiry"))
            .await
            .unwrap();
        if n > 0 {
            used.insert(shard);
        }
    }
    assert!(used.len() >= 12, "64 keys in only {} shards", used.len());
    assert_eq!(cache.len().await.unwrap(), 65);
}

/// A hit is one command (`HMGET` of the entry's fields) and a miss writes nothing; the
/// accesses reach Redis with the next flush, and `peek` shows them before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_is_one_read_and_accesses_are_written_in_batches() {
    let server = RedisServer::start();
    let cache = flushed_by_the_test(&server, 0).await;
    let now = SystemClock.now_unix();
    for key in ["a.jpg", "b.jpg"] {
        cache.put(entry(key, now, 3600.0)).await.unwrap();
    }
    let raw = raw_client(&server).await;
    let keys_before = server.command(&["DBSIZE"]);
    assert_eq!(server.command(&["CONFIG", "RESETSTAT"]), "+OK");

    for expected in 1..=10u64 {
        let got = cache.get("a.jpg").await.unwrap().unwrap();
        assert_eq!(got.access_count, expected);
    }
    assert!(cache.get("b.jpg").await.unwrap().is_some());
    assert!(cache.get("missing.jpg").await.unwrap().is_none());
    let calls = command_calls(&server);
    assert_eq!(calls.get("hmget"), Some(&12), "{calls:?}");
    for write in ["hincrby", "hset", "zadd", "expire", "del", "evalsha"] {
        assert_eq!(
            calls.get(write),
            None,
            "{write} on the read path: {calls:?}"
        );
    }
    // A miss created nothing.
    assert_eq!(server.command(&["DBSIZE"]), keys_before);
    let stored: HashMap<String, String> = raw.hgetall("image:url:a.jpg").await.unwrap();
    assert_eq!(stored["access_count"], "0");
    // Not written yet, but visible to this process.
    assert_eq!(cache.peek("a.jpg").await.unwrap().unwrap().access_count, 10);

    assert_eq!(cache.flush_access().await.unwrap(), 2);
    let stored: HashMap<String, String> = raw.hgetall("image:url:a.jpg").await.unwrap();
    assert_eq!(stored["access_count"], "10");
    let calls = command_calls(&server);
    assert_eq!(calls.get("hincrby"), Some(&2), "{calls:?}");
    assert_eq!(calls.get("zadd"), Some(&2), "{calls:?}");
    assert_eq!(cache.peek("a.jpg").await.unwrap().unwrap().access_count, 10);
    // A key with spaces (the flush packs its numbers in lines of `<number> <key>`): its
    // last access moves its place in the LRU order, as any key's.
    cache
        .put(entry("with space.jpg", now - 100.0, 3600.0))
        .await
        .unwrap();
    let (_, policy) = shards_holding(&raw, "with space.jpg").await;
    assert_eq!(policy.len(), 1);
    assert!(policy[0].1 < now - 99.0, "{policy:?}");
    assert!(cache.get("with space.jpg").await.unwrap().is_some());
    assert_eq!(cache.flush_access().await.unwrap(), 1);
    let (_, policy) = shards_holding(&raw, "with space.jpg").await;
    assert!(policy[0].1 >= now - 1.0, "not moved: {policy:?}");
    let stored: HashMap<String, String> = raw.hgetall("image:url:with space.jpg").await.unwrap();
    assert_eq!(stored["access_count"], "1");
    // Nothing pending: the next flush writes nothing.
    assert_eq!(cache.flush_access().await.unwrap(), 0);
    assert_eq!(cache.access_updates_dropped(), 0);
}

/// A lookup's future is allocated and copied whole on every call: it holds fred's command
/// future (about 5 KB) once, not twice beside the rare paths' futures (12.4 KB before:
/// the deadline wrapper kept its argument and its timeout side by side, and adopting or
/// dropping a corrupt entry was inlined).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookups_future_holds_one_command_future() {
    let server = RedisServer::start();
    let cache = flushed_by_the_test(&server, 0).await;
    let get = cache.get("a.jpg");
    assert!(
        std::mem::size_of_val(&*get) < 6 * 1024,
        "{} bytes",
        std::mem::size_of_val(&*get)
    );
    drop(get);
    let get_many = cache.get_many(&["a.jpg", "b.jpg"]);
    assert!(
        std::mem::size_of_val(&*get_many) < 6 * 1024,
        "{} bytes",
        std::mem::size_of_val(&*get_many)
    );
}

/// A put far below the capacity sends no `ZCARD`s: the count is taken by the first put,
/// then only when it is a second old or the estimate nears the capacity, where every
/// put counts, so the capacity still holds exactly within a process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_count_the_entries_only_when_the_capacity_may_be_reached() {
    let server = RedisServer::start();
    let clock = Arc::new(ManualClock::from_unix_secs(SystemClock.now_unix()));
    let mut config = RedisConfig::new(server.url());
    config.max_entries = 20;
    config.access_flush_interval = Duration::from_secs(3600);
    let cache = RedisCache::connect_with_clock(config, clock.clone())
        .await
        .unwrap();
    let zcards = || command_calls(&server).get("zcard").copied().unwrap_or(0);
    let now = clock.now_unix();
    let put = |i: usize| cache.put(entry(&format!("held/{i}.jpg"), now, 3600.0));
    assert_eq!(server.command(&["CONFIG", "RESETSTAT"]), "+OK");
    put(0).await.unwrap();
    assert_eq!(zcards(), 16, "the first put counts (16 shards)");
    for i in 1..17 {
        put(i).await.unwrap();
    }
    assert_eq!(zcards(), 16, "17 of 20: no count");
    // The 18th reaches 90 %: from here every put counts, and the 21st evicts one.
    for i in 17..21 {
        put(i).await.unwrap();
    }
    assert_eq!(zcards(), 16 * 5);
    assert_eq!(cache.len().await.unwrap(), 20);
    assert_eq!(cache.stats().evictions, 1);
    // A count a second old is taken again, whatever the estimate.
    let roomy = RedisCache::connect_with_clock(
        {
            let mut config = RedisConfig::new(server.url());
            config.namespace = Some("roomy".into());
            config
        },
        clock.clone(),
    )
    .await
    .unwrap();
    assert_eq!(server.command(&["CONFIG", "RESETSTAT"]), "+OK");
    roomy.put(entry("r/0.jpg", now, 3600.0)).await.unwrap();
    roomy.put(entry("r/1.jpg", now, 3600.0)).await.unwrap();
    assert_eq!(zcards(), 16);
    clock.advance(Duration::from_secs(1));
    roomy.put(entry("r/2.jpg", now, 3600.0)).await.unwrap();
    assert_eq!(zcards(), 32);
}

/// A flush larger than one pipeline chunk writes every key, chunk after chunk, each
/// chunk's accesses in one script on a standalone server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_of_many_keys_writes_them_all_in_chunks() {
    let server = RedisServer::start();
    let cache = flushed_by_the_test(&server, 0).await;
    let now = SystemClock.now_unix();
    let keys: Vec<String> = (0..600).map(|i| format!("many/{i}.jpg")).collect();
    for key in &keys {
        cache.put(entry(key, now, 3600.0)).await.unwrap();
        assert!(cache.get(key).await.unwrap().is_some());
    }
    assert_eq!(server.command(&["CONFIG", "RESETSTAT"]), "+OK");
    assert_eq!(cache.flush_access().await.unwrap(), 600);
    let calls = command_calls(&server);
    assert_eq!(calls.get("hincrby"), Some(&600), "{calls:?}");
    // On one server, one script per chunk for every key's count and last access (600
    // keys: three chunks), and one script with one ZADD per policy shard per chunk (16
    // shards); not four commands per key, nor one script per key.
    let zadds = calls.get("zadd").copied().unwrap_or_default();
    assert!((16..=48).contains(&zadds), "{zadds} ZADDs: {calls:?}");
    assert_eq!(calls.get("evalsha"), Some(&(3 + zadds)), "{calls:?}");
    let raw = raw_client(&server).await;
    for key in [&keys[0], &keys[299], &keys[599]] {
        let count: String = raw
            .hget(format!("image:url:{key}"), "access_count")
            .await
            .unwrap();
        assert_eq!(count, "1", "{key}");
    }
    assert_eq!(cache.access_updates_dropped(), 0);
}

/// A flush dropped before Redis confirmed its writes counts those accesses as lost
/// instead of forgetting them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_flush_counts_its_accesses_as_lost() {
    let server = RedisServer::start();
    let cache = flushed_by_the_test(&server, 0).await;
    let now = SystemClock.now_unix();
    for i in 0..300 {
        let key = format!("drop/{i}.jpg");
        cache.put(entry(&key, now, 3600.0)).await.unwrap();
        assert!(cache.get(&key).await.unwrap().is_some());
        assert!(cache.get(&key).await.unwrap().is_some());
    }
    {
        let mut flush = std::pin::pin!(cache.flush_access());
        // One poll sends the first chunk; its replies cannot have been read yet.
        assert!(futures::poll!(flush.as_mut()).is_pending());
    }
    assert_eq!(cache.access_updates_dropped(), 600);
    // Nothing is pending any more: the buffer was taken.
    assert_eq!(cache.flush_access().await.unwrap(), 0);
}

/// An entry deleted between its read and the flush stays deleted: the flush writes no
/// key (no stub hash, no index member).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_after_a_delete_resurrects_nothing() {
    let server = RedisServer::start();
    let cache = flushed_by_the_test(&server, 0).await;
    let other = RedisCache::connect(RedisConfig::new(server.url()))
        .await
        .unwrap();
    let now = SystemClock.now_unix();
    cache.put(entry("gone.jpg", now, 3600.0)).await.unwrap();
    assert!(cache.get("gone.jpg").await.unwrap().is_some());
    // Another replica deletes it; this one still holds the access.
    assert!(other.delete("gone.jpg").await.unwrap());
    cache.flush_access().await.unwrap();
    assert!(cache.get("gone.jpg").await.unwrap().is_none());
    assert!(other.get("gone.jpg").await.unwrap().is_none());
    let raw = raw_client(&server).await;
    let left: i64 = raw.exists("image:url:gone.jpg").await.unwrap();
    assert_eq!(left, 0, "the flush recreated the deleted entry's hash");
    let (expiry, policy) = shards_holding(&raw, "gone.jpg").await;
    assert!(expiry.is_empty() && policy.is_empty());
    assert_eq!(cache.len().await.unwrap(), 0);
}

/// Redis forgetting the flush's script (a restart, a failover to a replica, `SCRIPT
/// FLUSH`) loses no access: the flush loads it again and writes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_loads_its_script_again_when_redis_forgot_it() {
    let server = RedisServer::start();
    let cache = flushed_by_the_test(&server, 0).await;
    let now = SystemClock.now_unix();
    cache.put(entry("kept.jpg", now, 3600.0)).await.unwrap();
    let raw = raw_client(&server).await;
    for round in 1..=2u64 {
        assert!(cache.get("kept.jpg").await.unwrap().is_some());
        assert!(cache.get("kept.jpg").await.unwrap().is_some());
        assert_eq!(server.command(&["SCRIPT", "FLUSH"]), "+OK");
        assert_eq!(cache.flush_access().await.unwrap(), 1);
        let count: String = raw
            .hget("image:url:kept.jpg", "access_count")
            .await
            .unwrap();
        assert_eq!(count, (2 * round).to_string(), "round {round}");
    }
    assert_eq!(cache.access_updates_dropped(), 0);
}

/// The two index sets of the layout before shards are moved into the shards at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsharded_indexes_of_earlier_versions_are_moved_into_the_shards() {
    let server = RedisServer::start();
    let raw = raw_client(&server).await;
    let now = SystemClock.now_unix().floor();
    let mut fields = HashMap::new();
    for (name, value) in [
        ("url", "https://b.example/old.jpg?q-signature=s".to_owned()),
        ("expires_at", (now + 3600.0).to_string()),
        ("access_count", "3".to_owned()),
        ("created_at", now.to_string()),
        ("last_accessed", now.to_string()),
        ("image_key", "old.jpg".to_owned()),
    ] {
        fields.insert(name, value);
    }
    let _: () = raw.hset("image:url:old.jpg", fields).await.unwrap();
    let _: () = raw
        .zadd(
            "image:url-index:expiry",
            None,
            None,
            false,
            false,
            (now + 3600.0, "old.jpg"),
        )
        .await
        .unwrap();
    let _: () = raw
        .zadd(
            "image:url-index:policy",
            None,
            None,
            false,
            false,
            (now, "old.jpg"),
        )
        .await
        .unwrap();
    let cache = RedisCache::connect(RedisConfig::new(server.url()))
        .await
        .unwrap();
    // The move runs in the background at start: wait for its effect, bounded.
    let deadline = Instant::now() + Duration::from_secs(10);
    while cache.len().await.unwrap() == 0 {
        assert!(Instant::now() < deadline, "the old index was not moved");
        tokio::task::yield_now().await;
    }
    let (expiry, policy) = shards_holding(&raw, "old.jpg").await;
    assert_eq!(expiry, vec![(expiry[0].0, now + 3600.0)]);
    assert_eq!(policy, vec![(expiry[0].0, now)]);
    for legacy in ["image:url-index:expiry", "image:url-index:policy"] {
        let left: u64 = raw.exists(legacy).await.unwrap();
        assert_eq!(left, 0, "{legacy}");
    }
    assert_eq!(cache.get("old.jpg").await.unwrap().unwrap().access_count, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_json_strings_written_by_the_original_system() {
    let server = RedisServer::start();
    let raw = raw_client(&server).await;
    let now = SystemClock.now_unix();
    let json = format!(
        r#"{{"url": "https://b.cos.ap-guangzhou.myqcloud.com/old.jpg?q-signature=x", "expires_at": {}, "access_count": 4, "created_at": {}, "last_accessed": {}, "image_key": "old.jpg", "mime_type": "image/jpeg"}}"#,
        now + 1000.0,
        now - 10.0,
        now - 5.0
    );
    let _: () = raw
        .set("image:url:old.jpg", json, None, None, false)
        .await
        .unwrap();
    let cache = RedisCache::connect(RedisConfig::new(server.url()))
        .await
        .unwrap();
    let got = cache.get("old.jpg").await.unwrap().unwrap();
    assert_eq!(
        &*got.url,
        "https://b.cos.ap-guangzhou.myqcloud.com/old.jpg?q-signature=x"
    );
    assert_eq!(got.access_count, 5);
    // Migrated to the hash layout on first read.
    let kind: String = raw.r#type("image:url:old.jpg").await.unwrap();
    assert_eq!(kind, "hash");
    assert_eq!(cache.get("old.jpg").await.unwrap().unwrap().access_count, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_fails_fast_with_a_retryable_error() {
    let mut server = RedisServer::start();
    let mut config = RedisConfig::new(server.url());
    config.command_timeout = Duration::from_millis(300);
    config.pool_size = 2;
    let cache = RedisCache::connect(config).await.unwrap();
    cache
        .put(entry("k", SystemClock.now_unix(), 3600.0))
        .await
        .unwrap();
    server.stop();
    for _ in 0..3 {
        let started = Instant::now();
        let err = cache.get("k").await.unwrap_err();
        assert!(err.is_retryable(), "{err}");
        // Bounded by the command timeout, never a hang (generous margin for a busy machine).
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
    }
    assert!(cache.health_check().await.is_err());
    assert!(!cache.is_healthy());
    assert!(cache.stats().errors >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_when_the_server_restarts_without_a_new_client() {
    let mut server = RedisServer::start();
    let mut config = RedisConfig::new(server.url());
    config.command_timeout = Duration::from_millis(500);
    config.reconnect_max_delay = Duration::from_millis(200);
    config.pool_size = 2;
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::from_unix_secs(SystemClock.now_unix()));
    let cache = RedisCache::connect_with_clock(config, clock.clone())
        .await
        .unwrap();
    cache
        .put(entry("k", clock.now_unix(), 3600.0))
        .await
        .unwrap();
    let connected = cache.reconnects();
    assert!(
        connected >= 2,
        "both pooled connections counted: {connected}"
    );
    server.restart(); // empty again: nothing is persisted
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match cache.put(entry("k2", clock.now_unix(), 3600.0)).await {
            Ok(()) => break,
            Err(err) => {
                assert!(err.is_retryable(), "{err}");
                // Each failed put waited for the reconnection up to the command
                // timeout already; no extra pause is needed.
                assert!(Instant::now() < deadline, "did not recover: {err}");
                tokio::task::yield_now().await;
            }
        }
    }
    assert!(cache.get("k2").await.unwrap().is_some());
    assert!(
        cache.get("k").await.unwrap().is_none(),
        "the restarted server is empty"
    );
    assert!(cache.health_check().await.is_ok());
    assert!(cache.is_healthy());
    assert!(
        cache.reconnects() > connected,
        "the reconnection was reported: {} after {connected}",
        cache.reconnects()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_while_redis_is_down_does_not_fail() {
    let port = image_url_tests::free_port();
    let mut config = RedisConfig::new(format!("redis://127.0.0.1:{port}"));
    config.connect_timeout = Duration::from_millis(300);
    config.command_timeout = Duration::from_millis(300);
    let cache = RedisCache::connect(config).await.expect("starts anyway");
    assert!(!cache.is_healthy());
    assert!(cache.get("k").await.unwrap_err().is_retryable());
}

#[tokio::test]
async fn an_invalid_url_is_a_clear_error() {
    let err = RedisCache::connect(RedisConfig::new("http://nope"))
        .await
        .unwrap_err();
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("invalid Redis URL"), "{err}");
}

/// Regression: a value of the wrong type under an entry key failed the lookup with a
/// retryable error (five of them opened the service's breaker), and one bad entry failed
/// a whole `get_many`. Each is now a corrupt entry: counted, dropped, read as a miss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_types_and_malformed_hashes_are_corrupt_misses() {
    let server = RedisServer::start();
    let cache = RedisCache::connect(RedisConfig::new(server.url()))
        .await
        .unwrap();
    let now = SystemClock.now_unix();
    cache.put(entry("good.jpg", now, 3600.0)).await.unwrap();
    let raw = raw_client(&server).await;
    for (command, key) in [
        ("RPUSH", "image:url:list.jpg"),
        ("SADD", "image:url:set.jpg"),
    ] {
        let _: i64 = raw
            .custom(fred::cmd!(command), vec![key, "x"])
            .await
            .unwrap();
    }
    let _: () = raw
        .set("image:url:notjson.jpg", "{not json", None, None, false)
        .await
        .unwrap();
    let _: () = raw
        .hset(
            "image:url:badhash.jpg",
            [("url", "https://b.example/x"), ("expires_at", "soon")],
        )
        .await
        .unwrap();

    let bad = ["list.jpg", "set.jpg", "notjson.jpg", "badhash.jpg"];
    for key in bad {
        assert_eq!(cache.peek(key).await.unwrap(), None, "{key}");
    }
    let mut keys = vec!["good.jpg"];
    keys.extend(bad);
    let found = cache
        .get_many(&keys)
        .await
        .expect("one bad entry fails nothing");
    assert!(found[0].is_some(), "the good entry survives its neighbours");
    assert!(found[1..].iter().all(Option::is_none));
    let stats = cache.stats();
    assert_eq!((stats.corrupt, stats.errors), (4, 0), "{stats:?}");
    assert_eq!(stats.misses, 4);
    // Dropped, so the next put starts clean and the next read is a plain miss.
    for key in bad {
        let kind: String = raw.r#type(format!("image:url:{key}")).await.unwrap();
        assert!(kind == "none" || kind == "hash", "{key} is {kind}");
        assert_eq!(cache.get(key).await.unwrap(), None);
        cache.put(entry(key, now, 3600.0)).await.unwrap();
        assert!(cache.get(key).await.unwrap().is_some(), "{key}");
    }
    assert_eq!(cache.stats().corrupt, 4, "no entry was counted twice");
    // A put straight over a value of another type replaces it (and counts it).
    let _: i64 = raw
        .custom(fred::cmd!("RPUSH"), vec!["image:url:overwrite.jpg", "x"])
        .await
        .unwrap();
    cache
        .put(entry("overwrite.jpg", now, 3600.0))
        .await
        .unwrap();
    assert!(cache.get("overwrite.jpg").await.unwrap().is_some());
    assert_eq!(cache.stats().corrupt, 5);
    assert_eq!(cache.stats().errors, 0);
}

/// Two buckets on one Redis prefix used to serve each other's URLs. With a namespace
/// each sees only its own; entries of the layout without namespace (hashes, and the
/// original system's JSON strings) move over on first read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_keep_buckets_apart_and_old_keys_move_over() {
    let server = RedisServer::start();
    let now = SystemClock.now_unix();
    let old = RedisCache::connect(RedisConfig::new(server.url()))
        .await
        .unwrap();
    old.put(entry("a.jpg", now, 3600.0)).await.unwrap();
    let raw = raw_client(&server).await;
    let json = format!(
        r#"{{"url": "https://b/j.jpg?q-signature=x", "expires_at": {}, "access_count": 2, "created_at": {now}, "last_accessed": {now}, "image_key": "j.jpg", "mime_type": null}}"#,
        now + 1000.0
    );
    let _: () = raw
        .set("image:url:j.jpg", json, None, None, false)
        .await
        .unwrap();
    let namespaced = |namespace: &str| {
        let mut config = RedisConfig::new(server.url());
        config.namespace = Some(namespace.to_owned());
        RedisCache::connect(config)
    };
    let bucket_a = namespaced("a-1250000000.cos.ap-guangzhou.myqcloud.com")
        .await
        .unwrap();
    let bucket_b = namespaced("b-1250000000.cos.ap-guangzhou.myqcloud.com")
        .await
        .unwrap();

    // A batch does not migrate (a round trip per miss is too dear there)...
    let batch = bucket_a.get_many(&["a.jpg", "none.jpg"]).await.unwrap();
    assert!(batch.iter().all(Option::is_none));
    // ...a single read in A moves the old entry under A's namespace.
    let moved = bucket_a.get("a.jpg").await.unwrap().expect("migrated");
    assert_eq!(&*moved.url, "https://b.example/a.jpg?q-signature=s");
    let kind: String = raw
        .r#type("image:url:a-1250000000.cos.ap-guangzhou.myqcloud.com:a.jpg")
        .await
        .unwrap();
    assert_eq!(kind, "hash");
    let gone: i64 = raw.exists("image:url:a.jpg").await.unwrap();
    assert_eq!(gone, 0, "the old key is removed");
    let (old_expiry, old_policy) = shards_holding(&raw, "a.jpg").await;
    assert!(
        old_expiry.is_empty() && old_policy.is_empty(),
        "and its index members"
    );
    let (new_expiry, new_policy) = shards_of_index_holding(
        &raw,
        "image:url:a-1250000000.cos.ap-guangzhou.myqcloud.com-index",
        "a.jpg",
    )
    .await;
    assert_eq!((new_expiry.len(), new_policy.len()), (1, 1));
    assert_eq!(bucket_a.get("a.jpg").await.unwrap().unwrap().url, moved.url);
    // The original system's JSON string moves too.
    assert_eq!(
        &*bucket_a.get("j.jpg").await.unwrap().expect("migrated").url,
        "https://b/j.jpg?q-signature=x"
    );

    // B sees none of A's entries, old or new.
    assert!(bucket_b.get("a.jpg").await.unwrap().is_none());
    bucket_a.put(entry("x.jpg", now, 3600.0)).await.unwrap();
    assert!(bucket_b.get("x.jpg").await.unwrap().is_none());
    assert!(bucket_b.peek("x.jpg").await.unwrap().is_none());
    assert_eq!(bucket_b.len().await.unwrap(), 0);
    assert_eq!(bucket_a.len().await.unwrap(), 3);
    let stats = bucket_a.stats();
    assert_eq!((stats.hits, stats.misses, stats.errors), (3, 2, 0));
}

/// Leases are exclusive across clients, extended only by their holder, released only by
/// their holder, and free again once their time runs out (a crashed holder).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_exclusive_and_run_out() {
    let server = RedisServer::start();
    let a = RedisCache::connect(RedisConfig::new(server.url()))
        .await
        .unwrap();
    let b = RedisCache::connect(RedisConfig::new(server.url()))
        .await
        .unwrap();
    let minute = Duration::from_secs(60);
    assert!(a.try_lease("refresher", "replica-a", minute).await.unwrap());
    assert!(!b.try_lease("refresher", "replica-b", minute).await.unwrap());
    assert!(
        a.try_lease("refresher", "replica-a", minute).await.unwrap(),
        "the holder extends"
    );
    assert_eq!(
        b.lease_holder("refresher").await.unwrap().as_deref(),
        Some("replica-a")
    );
    // Not b's to give back.
    b.release_lease("refresher", "replica-b").await.unwrap();
    assert_eq!(
        a.lease_holder("refresher").await.unwrap().as_deref(),
        Some("replica-a")
    );
    a.release_lease("refresher", "replica-a").await.unwrap();
    assert!(b
        .try_lease("refresher", "replica-b", Duration::from_millis(150))
        .await
        .unwrap());

    // b "crashes" holding it: after its time Redis frees it and a takes over.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !a.try_lease("refresher", "replica-a", minute).await.unwrap() {
        assert!(Instant::now() < deadline, "the lease never ran out");
        // Waiting on Redis's own clock, which no test can advance.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        a.lease_holder("refresher").await.unwrap().as_deref(),
        Some("replica-a")
    );
}

/// With an L1, what a lookup returns counts every access once, whether the L1 or Redis
/// answers it and wherever flushes fall between lookups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_hits_count_every_access_across_flushes() {
    let server = RedisServer::start();
    let cache = flushed_by_the_test(&server, 100).await;
    let now = SystemClock.now_unix();
    cache.put(entry("a.jpg", now, 3600.0)).await.unwrap();
    for expected in 1..=20u64 {
        let got = cache.get("a.jpg").await.unwrap().unwrap();
        assert_eq!(got.access_count, expected, "get number {expected}");
        if expected % 3 == 0 {
            cache.flush_access().await.unwrap();
        }
        if expected % 7 == 0 {
            let peeked = cache.peek("a.jpg").await.unwrap().unwrap();
            assert_eq!(peeked.access_count, expected, "peek after get {expected}");
        }
    }
    assert!(cache.stats().l1_hits >= 15, "{:?}", cache.stats());
}

/// An L1 entry lives `l1_ttl` by the cache's clock, whatever the URL's own expiry: the
/// next lookup after that reads Redis again (and sees what another writer left there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_entries_leave_after_their_ttl_by_the_caches_clock() {
    let server = RedisServer::start();
    let clock = Arc::new(ManualClock::from_unix_secs(SystemClock.now_unix()));
    let mut config = RedisConfig::new(server.url());
    config.l1_max_entries = 100;
    config.l1_ttl = Duration::from_secs(30);
    config.access_flush_interval = Duration::from_secs(3600);
    let cache = RedisCache::connect_with_clock(config, clock.clone())
        .await
        .unwrap();
    let now = clock.now_unix();
    cache.put(entry("ttl.jpg", now, 3600.0)).await.unwrap();
    assert!(cache.get("ttl.jpg").await.unwrap().is_some());
    assert!(cache.get_ready("ttl.jpg").is_some(), "filled the L1");
    clock.advance(Duration::from_secs(29));
    assert!(cache.get_ready("ttl.jpg").is_some(), "within its ttl");
    clock.advance(Duration::from_secs(1));
    assert!(
        cache.get_ready("ttl.jpg").is_none(),
        "served from the L1 past its ttl"
    );
    let hits = cache.stats().l1_hits;
    assert!(cache.get("ttl.jpg").await.unwrap().is_some());
    assert_eq!(cache.stats().l1_hits, hits, "read from Redis");
    assert!(cache.get_ready("ttl.jpg").is_some(), "in the L1 again");
}

/// A burst of other replicas' invalidations that arrives while the process is busy drops
/// the keys it names, and only those. It used to overflow fred's 32-message buffer of
/// received messages; the L1 then had to empty itself whole (which keys the lost messages
/// named is unknown), and every hot key's next lookup went to Redis at once: on the Zipf
/// load of `benches/load/redis.sh` that surge timed lookups out and opened the service's
/// breaker.
#[tokio::test] // One thread: while the test blocks it, nothing reads the subscription.
async fn a_burst_of_invalidations_drops_only_the_keys_it_names() {
    let server = RedisServer::start();
    let cache = flushed_by_the_test(&server, 100).await;
    let now = SystemClock.now_unix();
    for key in ["kept.jpg", "marker.jpg"] {
        cache.put(entry(key, now, 3600.0)).await.unwrap();
        assert!(cache.get(key).await.unwrap().is_some());
        assert!(cache.get_ready(key).is_some(), "{key} is not in the L1");
    }
    // Another replica ("other") invalidates 500 keys, then the marker; the messages
    // queue up in the socket while this thread is blocked publishing them.
    let channel = "image:url-index:invalidate";
    for i in 0..500 {
        let message = format!("other\nburst/{i}.jpg");
        assert_eq!(server.command(&["PUBLISH", channel, &message]), ":1");
    }
    assert_eq!(
        server.command(&["PUBLISH", channel, "other\nmarker.jpg"]),
        ":1"
    );
    // Once the marker is gone, every message before it has been applied.
    let deadline = Instant::now() + Duration::from_secs(5);
    while cache.get_ready("marker.jpg").is_some() {
        assert!(
            Instant::now() < deadline,
            "the marker was never invalidated"
        );
        tokio::task::yield_now().await;
    }
    assert!(
        cache.get_ready("kept.jpg").is_some(),
        "the burst emptied the whole L1"
    );
}

/// Two replicas with an L1: a hot key is served from the process (no command reaches
/// Redis, counted as an L1 hit), and a write, a refresh or a delete through one replica
/// reaches the other's L1 within a second, through Redis pub/sub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_serves_hot_keys_locally_and_replicas_invalidate_each_other() {
    let server = RedisServer::start();
    let replica = || {
        let mut config = RedisConfig::new(server.url());
        config.l1_max_entries = 100;
        RedisCache::connect(config)
    };
    let a = replica().await.unwrap();
    let b = replica().await.unwrap();
    let now = SystemClock.now_unix();
    a.put(entry("hot.jpg", now, 3600.0)).await.unwrap();
    assert_eq!(
        &*b.get("hot.jpg").await.unwrap().unwrap().url,
        "https://b.example/hot.jpg?q-signature=s"
    );
    assert_eq!(server.command(&["CONFIG", "RESETSTAT"]), "+OK");
    for _ in 0..5 {
        assert!(b.get("hot.jpg").await.unwrap().is_some());
    }
    assert_eq!(command_calls(&server).get("hmget"), None);
    assert_eq!(b.stats().l1_hits, 5);
    assert_eq!(b.stats().hits, 6);

    // A refresh through A: B serves the new URL within a second.
    let mut refreshed = entry("hot.jpg", now, 7200.0);
    refreshed.url = "https://b.example/hot.jpg?q-signature=refreshed".into();
    a.put(refreshed.clone()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let seen = b.get("hot.jpg").await.unwrap().unwrap().url;
        if seen == refreshed.url {
            break;
        }
        assert!(Instant::now() < deadline, "B still serves {seen}");
        tokio::task::yield_now().await;
    }
    // A delete through A: gone from B's L1 too.
    assert!(a.delete("hot.jpg").await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(1);
    while b.get("hot.jpg").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "B still serves a deleted entry");
        tokio::task::yield_now().await;
    }
}

/// When a replica's subscription to invalidations drops, it stops serving from its L1
/// at once, long before its subscriber reconnects: what another replica writes meanwhile
/// (whose invalidation it cannot hear) is served from Redis, never a stale URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_subscription_drops_stops_using_its_l1() {
    let server = RedisServer::start();
    let replica = |reconnect: Duration| {
        let mut config = RedisConfig::new(server.url());
        config.l1_max_entries = 100;
        // B reconnects slowly: the gap stays open while the test runs.
        config.reconnect_min_delay = reconnect;
        config.reconnect_max_delay = reconnect;
        RedisCache::connect(config)
    };
    let a = replica(Duration::from_millis(100)).await.unwrap();
    let b = replica(Duration::from_millis(1500)).await.unwrap();
    let now = SystemClock.now_unix();
    a.put(entry("hot.jpg", now, 3600.0)).await.unwrap();
    assert!(b.get("hot.jpg").await.unwrap().is_some());
    assert!(b.get("hot.jpg").await.unwrap().is_some());
    assert_eq!(b.stats().l1_hits, 1, "served from B's L1");

    // Every subscription dropped; the pools' connections stay.
    assert!(server
        .command(&["CLIENT", "KILL", "TYPE", "pubsub"])
        .starts_with(':'));
    // B notices at once, long before it reconnects: its lookups stop being L1 hits.
    let deadline = Instant::now() + Duration::from_millis(500);
    loop {
        let before = b.stats().l1_hits;
        assert!(b.get("hot.jpg").await.unwrap().is_some());
        if b.stats().l1_hits == before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B still serves from its L1 without a subscription"
        );
        tokio::task::yield_now().await;
    }
    // A refreshes the URL; nobody hears the invalidation. B serves the new URL.
    let mut refreshed = entry("hot.jpg", now, 7200.0);
    refreshed.url = "https://b.example/hot.jpg?q-signature=refreshed".into();
    a.put(refreshed.clone()).await.unwrap();
    for _ in 0..3 {
        assert_eq!(b.get("hot.jpg").await.unwrap().unwrap().url, refreshed.url);
    }
}

/// On a current-thread runtime (an actix-web worker) lookups use a client of that
/// thread once it has connected. A thread that runs one runtime after another must never
/// send a lookup to a client whose connection task died with an earlier runtime: every
/// lookup answers, in every runtime.
#[test]
fn lookups_on_one_thread_survive_its_runtimes_one_after_another() {
    let server = RedisServer::start();
    let url = server.url();
    let shared = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let cache = shared.block_on(async {
        let cache = RedisCache::connect(RedisConfig::new(url)).await.unwrap();
        cache
            .put(entry("a.jpg", SystemClock.now_unix(), 3600.0))
            .await
            .unwrap();
        cache
    });
    for round in 0..3 {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            // The first lookups on this runtime go through the shared pool while the
            // thread's client connects; the later ones through it. Every one answers.
            for _ in 0..200 {
                let got = tokio::time::timeout(Duration::from_secs(2), cache.get("a.jpg"))
                    .await
                    .unwrap_or_else(|_| panic!("round {round}: a lookup hung"))
                    .unwrap();
                assert!(got.is_some(), "round {round}");
                tokio::task::yield_now().await;
            }
        });
        drop(runtime);
    }
    assert_eq!(cache.stats().errors, 0);
    drop(cache);
    drop(shared);
}

/// The connections to `server` (not counting the one asking) and the last command of the
/// one made last (CLIENT LIST's highest id).
fn connections_and_newest_command(server: &RedisServer) -> (usize, Option<String>) {
    let list = server.bulk(&["CLIENT", "LIST"]).unwrap_or_default();
    let field = |line: &str, name: &str| {
        line.split(' ')
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_owned)
    };
    let connections: Vec<(u64, String)> = list
        .lines()
        .filter_map(|line| Some((field(line, "id")?.parse().ok()?, field(line, "cmd")?)))
        .filter(|(_, cmd)| cmd != "client|list")
        .collect();
    let newest = connections.iter().max().map(|(_, cmd)| cmd.clone());
    (connections.len(), newest)
}

/// A lookup on a current-thread runtime (an actix-web worker) goes through the thread's
/// own client, which has no deadline of its own: the cache's `command_timeout` must
/// still bound it when Redis stops answering.
#[tokio::test(flavor = "current_thread")]
async fn a_lookup_on_the_threads_own_client_is_bounded_by_the_command_timeout() {
    let server = RedisServer::start();
    let mut config = RedisConfig::new(server.url());
    config.command_timeout = Duration::from_millis(300);
    config.pool_size = 1;
    let cache = RedisCache::connect(config).await.unwrap();
    cache
        .put(entry("k", SystemClock.now_unix(), 3600.0))
        .await
        .unwrap();
    // The first lookups go through the pool while this thread's client connects; it is
    // in use once there is one more connection and its last command is a lookup.
    let (pooled, _) = connections_and_newest_command(&server);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(cache.get("k").await.unwrap().is_some());
        let (connections, newest) = connections_and_newest_command(&server);
        if connections > pooled && newest.as_deref() == Some("hmget") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the thread's client never served a lookup"
        );
    }
    server.signal("STOP");
    let started = Instant::now();
    let outcome = cache.get("k").await;
    let took = started.elapsed();
    server.signal("CONT");
    assert!(
        matches!(outcome, Err(url_cache::CacheError::Timeout(_))),
        "{outcome:?}"
    );
    // Bounded by the 300 ms timeout (a generous margin for a busy machine).
    assert!(took < Duration::from_secs(3), "took {took:?}");
}
