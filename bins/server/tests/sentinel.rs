//! A server process on a master behind three sentinels the test starts: the master is
//! killed under load, the sentinels promote its replica, the client follows, no request
//! fails, and caching goes on on the new master.

use std::time::{Duration, Instant};

use common::{batch, batch_until_cached, http, origin, serve_for, start, Load};
use image_url_tests::RedisSentinels;

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_follows_a_failover_and_no_request_fails() {
    let mut redis = RedisSentinels::start();
    let dir = tempfile::tempdir().unwrap();
    let keys: Vec<String> = (0..20).map(|i| format!("s{i}.jpg")).collect();
    for key in &keys {
        std::fs::write(dir.path().join(key), b"jpeg").unwrap();
    }
    let origin = origin(dir.path(), "AKIDsentinel", "sentinel-secret").await;
    let server = start(
        serve_for(&origin, "AKIDsentinel", "sentinel-secret")
            .env("IMAGE_URL_CACHE__BACKEND", "redis")
            .env("IMAGE_URL_CACHE__REDIS_URL", redis.url())
            .env("IMAGE_URL_CACHE__POOL_SIZE", "2")
            .env("IMAGE_URL_REFRESHER__ENABLED", "false"),
    );
    let http = http();
    let first = batch(&http, &server.base, &keys).await;
    for key in &keys {
        assert_eq!(first["results"][key]["from_cache"], false, "{first}");
    }
    batch_until_cached(&http, &server.base, &keys).await;
    assert!(redis.master.key_count() > 0, "entries are on the master");

    let load = Load::start(&http, &[&server.base], &keys, 4);
    load.reach(100, Duration::from_secs(30), "load runs").await;

    // Kill the master; the sentinels promote the replica (down after 1 s, then a vote).
    let replica_port = redis.replica.addr().port();
    redis.master.stop();
    let deadline = Instant::now() + Duration::from_secs(30);
    while redis.master_port() != Some(replica_port) {
        assert!(Instant::now() < deadline, "no failover");
        tokio::task::yield_now().await;
    }
    load.reach(300, Duration::from_secs(60), "after the failover")
        .await;
    assert_eq!(load.stop().await, 0, "every request got its 302");

    // The client follows the new master: new entries are written there and read back.
    let fresh: Vec<String> = keys.iter().map(|k| format!("new/{k}")).collect();
    for key in &fresh {
        std::fs::create_dir_all(dir.path().join("new")).unwrap();
        std::fs::write(dir.path().join(key), b"jpeg").unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        batch(&http, &server.base, &fresh).await;
        let read = batch(&http, &server.base, &fresh).await;
        if fresh
            .iter()
            .all(|k| read["results"][k]["from_cache"] == true)
        {
            break;
        }
        assert!(Instant::now() < deadline, "caching did not resume: {read}");
    }
    assert!(redis.replica.key_count() > 0);
    origin.stop().await;
}
