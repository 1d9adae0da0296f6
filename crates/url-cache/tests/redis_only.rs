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

fn entry(key: &str, now: f64, ttl: f64) -> CacheEntry {
    CacheEntry::new(
        key,
        format!("https://b.example/{key}?q-signature=s"),
        url_cache::from_unix_secs(now + ttl),
        url_cache::from_unix_secs(now),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layout_is_a_hash_per_entry_plus_two_sorted_sets() {
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
    let score: f64 = raw
        .zscore("image:url-index:expiry", "img/a.jpg")
        .await
        .unwrap();
    assert_eq!(score, now + 3600.0);
    let policy: Option<f64> = raw
        .zscore("image:url-index:policy", "img/a.jpg")
        .await
        .unwrap();
    assert!(policy.is_some());

    // A miss leaves at most a short-lived stub outside the indexes.
    assert!(cache.get("img/missing.jpg").await.unwrap().is_none());
    let stub_ttl: i64 = raw.ttl("image:url:img/missing.jpg").await.unwrap();
    assert!((1..=60).contains(&stub_ttl), "stub ttl {stub_ttl}");
    let card: u64 = raw.zcard("image:url-index:expiry").await.unwrap();
    assert_eq!(card, 1);
    // ...and a put over the stub yields a clean entry.
    cache
        .put(entry("img/missing.jpg", now, 3600.0))
        .await
        .unwrap();
    let got = cache.get("img/missing.jpg").await.unwrap().unwrap();
    assert_eq!(got.access_count, 1);
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
        got.url,
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
    assert_eq!(moved.url, "https://b.example/a.jpg?q-signature=s");
    let kind: String = raw
        .r#type("image:url:a-1250000000.cos.ap-guangzhou.myqcloud.com:a.jpg")
        .await
        .unwrap();
    assert_eq!(kind, "hash");
    let gone: i64 = raw.exists("image:url:a.jpg").await.unwrap();
    assert_eq!(gone, 0, "the old key is removed");
    let old_index: Option<f64> = raw.zscore("image:url-index:expiry", "a.jpg").await.unwrap();
    assert_eq!(old_index, None, "and its index members");
    let new_index: Option<f64> = raw
        .zscore(
            "image:url:a-1250000000.cos.ap-guangzhou.myqcloud.com-index:expiry",
            "a.jpg",
        )
        .await
        .unwrap();
    assert!(new_index.is_some());
    assert_eq!(bucket_a.get("a.jpg").await.unwrap().unwrap().url, moved.url);
    // The original system's JSON string moves too.
    assert_eq!(
        bucket_a.get("j.jpg").await.unwrap().expect("migrated").url,
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
