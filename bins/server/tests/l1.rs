//! Two server processes with an L1 in front of one Redis: a refresh through replica A
//! reaches replica B's L1 within a second (Redis pub/sub), and B's hits come from its L1.

use std::time::{Duration, Instant};

use common::{get_json, http, origin, serve_for, start, Running};
use image_url_tests::RedisServer;

mod common;

const TOKEN: &str = "l1-admin-token-0123456789";

fn replica(origin: &dev_origin::DevOrigin, redis: &RedisServer) -> Running {
    start(
        serve_for(origin, "AKIDl1", "l1-secret")
            .env("IMAGE_URL_CACHE__BACKEND", "redis")
            .env("IMAGE_URL_CACHE__REDIS_URL", redis.url())
            .env("IMAGE_URL_CACHE__L1_MAX_ENTRIES", "100")
            // Without stable windows a refresh signs a different URL.
            .env("IMAGE_URL_SIGNING__ALIGN_SECS", "0")
            .env("IMAGE_URL_SERVER__ADMIN_TOKEN", TOKEN)
            .env("IMAGE_URL_REFRESHER__ENABLED", "false"),
    )
}

async fn location(http: &reqwest::Client, base: &str) -> String {
    let res = http
        .get(format!("{base}/api/v1/images/a.jpg/proxy"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 302);
    res.headers()["location"].to_str().unwrap().to_owned()
}

/// The second on the servers' clock (the kernel's coarse clock, which may be a tick
/// behind `SystemTime::now`).
fn unix_secs() -> u64 {
    use url_cache::Clock;
    url_cache::SystemClock.now_unix() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_through_one_replica_reaches_the_others_l1_within_a_second() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.jpg"), b"jpeg").unwrap();
    let origin = origin(dir.path(), "AKIDl1", "l1-secret").await;
    let a = replica(&origin, &redis);
    let b = replica(&origin, &redis);
    let http = http();

    let first = location(&http, &a.base).await;
    assert_eq!(location(&http, &b.base).await, first);
    // B's next hits come from its L1. All but one: A's write published an invalidation
    // that may reach B after B's first read filled its L1, and drop that entry once
    // (seen in CI under load).
    for _ in 0..4 {
        assert_eq!(location(&http, &b.base).await, first);
    }
    let stats = get_json(
        &http,
        &format!("{}/api/v1/images/stats", b.base),
        Some(TOKEN),
    )
    .await;
    assert!(stats["cache"]["l1_hits"].as_u64().unwrap() >= 3, "{stats}");

    // A URL signed in a later second differs: wait for the clock to tick, then refresh
    // through A.
    let signed_at = unix_secs();
    while unix_secs() == signed_at {
        tokio::task::yield_now().await;
    }
    let refreshed: serde_json::Value = http
        .post(format!("{}/api/v1/images/a.jpg/refresh", a.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let new_url = refreshed["url"].as_str().unwrap().to_owned();
    assert_ne!(new_url, first);
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let seen = location(&http, &b.base).await;
        if seen == new_url {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B still serves the old URL a second after the refresh"
        );
    }
    assert!(common::metrics(&http, &b.base)
        .await
        .contains("image_url_cache_l1_hits_total"));
    origin.stop().await;
}
