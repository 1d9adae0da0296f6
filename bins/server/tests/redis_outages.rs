//! The server process against a `redis-server` the test drives: killed and restarted,
//! paused with SIGSTOP, and filled with values that are not entries. Every request must
//! be answered with a URL the origin accepts; the cache must be used again soon after
//! Redis comes back; a paused Redis costs a request one cache deadline at most; bad data
//! is a miss, never an outage or a foreign redirect.
//!
//! The measured figures are printed (`--nocapture`) and recorded in docs/performance.md.

use std::time::{Duration, Instant};

use common::{http, metrics, origin, serve_for, start, Running};
use dev_origin::DevOrigin;
use image_url_tests::RedisServer;
use reqwest::StatusCode;
use serde_json::Value;

mod common;

const TOKEN: &str = "outage-test-token";

struct Stack {
    redis: RedisServer,
    origin: DevOrigin,
    _server: Running,
    base: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Stack {
    /// The server on a Redis cache with a `timeout_ms` cache deadline, signing for a
    /// dev origin that serves `img{0..20}.jpg`.
    async fn start(timeout_ms: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..20 {
            std::fs::write(dir.path().join(format!("img{i}.jpg")), b"jpeg").unwrap();
        }
        let origin = origin(dir.path(), "AKIDoutage", "outage-secret").await;
        let redis = RedisServer::start();
        let running = start(
            serve_for(&origin, "AKIDoutage", "outage-secret")
                .env("IMAGE_URL_SERVER__ADMIN_TOKEN", TOKEN)
                .env("IMAGE_URL_CACHE__BACKEND", "redis")
                .env("IMAGE_URL_CACHE__REDIS_URL", redis.url())
                .env("IMAGE_URL_CACHE__POOL_SIZE", "4")
                .env("IMAGE_URL_CACHE__TIMEOUT_MS", timeout_ms.to_string()),
        );
        let base = running.base.clone();
        let http = http();
        Stack {
            redis,
            origin,
            _server: running,
            base,
            http,
            _dir: dir,
        }
    }

    /// `GET /{key}/proxy`: the redirect's target, checked to be a URL for this key on
    /// the configured origin.
    async fn redirect(&self, key: &str) -> String {
        let res = self
            .http
            .get(format!("{}/api/v1/images/{key}/proxy", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::FOUND, "{key}");
        let location = res.headers()["location"].to_str().unwrap().to_owned();
        assert!(
            location.starts_with(&format!("http://{}/{key}?", self.origin.addr())),
            "{key} redirected elsewhere"
        );
        location
    }

    /// The origin accepts `url` (its signature verifies, the object is served).
    async fn origin_accepts(&self, url: &str) {
        let res = self.http.get(url).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }

    /// One key through the batch endpoint: `(from_cache, degraded)`.
    async fn lookup(&self, key: &str) -> (bool, bool) {
        let body: Value = self
            .http
            .get(format!("{}/api/v1/images/batch/urls?key={key}", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let item = &body["results"][key];
        (
            item["from_cache"].as_bool().unwrap(),
            item["degraded"].as_bool().unwrap(),
        )
    }

    /// Batches of `keys` until all are served from the cache: a miss is answered once
    /// signed and stored afterwards, detached, so the read right after it may still miss
    /// (or join the flight that is storing it). Never degraded on the way.
    async fn cached_soon(&self, keys: &[String]) {
        let body = image_url_tests::batch_until_cached(&self.http, &self.base, keys).await;
        for key in keys {
            assert_eq!(body["results"][key]["degraded"], false, "{body}");
        }
    }

    async fn stats(&self) -> Value {
        self.http
            .get(format!("{}/api/v1/images/stats", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_every_request_answered_caching_resumes_quickly() {
    let mut s = Stack::start(50).await;
    let url = s.redirect("img0.jpg").await;
    s.origin_accepts(&url).await;
    s.cached_soon(&["img0.jpg".to_owned()]).await;

    s.redis.stop();
    // Traffic throughout an outage long enough for the reconnect backoff to reach its
    // cap (2.5 s), every request answered with a URL the origin accepts.
    let stopped = Instant::now();
    let mut i = 0;
    while stopped.elapsed() < Duration::from_millis(2500) {
        let url = s.redirect(&format!("img{}.jpg", i % 20)).await;
        if i % 50 == 0 {
            s.origin_accepts(&url).await;
        }
        i += 1;
    }
    assert!(s.lookup("img1.jpg").await.1, "degraded while down");

    s.redis.start_again();
    let restarted = Instant::now();
    // Real traffic is what lets the breaker probe: requests back to back until one is
    // answered from the cache path again (not degraded), at most 10 s.
    let mut requests = 0;
    loop {
        requests += 1;
        let url = s.redirect("img2.jpg").await;
        let (_, degraded) = s.lookup("img3.jpg").await;
        if !degraded {
            s.origin_accepts(&url).await;
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(10),
            "the cache was not used again within 10 s"
        );
    }
    let recovered = restarted.elapsed();
    println!("caching resumed {recovered:?} after the restart ({requests} requests)");
    assert!(
        recovered < Duration::from_secs(2),
        "caching resumed only after {recovered:?}"
    );
    // The restarted Redis is empty; it is filled again and served from.
    s.redirect("img4.jpg").await;
    s.cached_soon(&["img4.jpg".to_owned()]).await;
    assert_eq!(s.stats().await["circuit"], "closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_costs_each_request_one_deadline_at_most() {
    // A long deadline makes the difference between one cache wait and three (lookup,
    // re-check, write) far larger than scheduling noise.
    let deadline = Duration::from_millis(400);
    let s = Stack::start(deadline.as_millis() as u64).await;
    s.redirect("img0.jpg").await;
    s.redis.signal("STOP");
    let mut worst = Duration::ZERO;
    for i in 0..8 {
        let started = Instant::now();
        let (from_cache, degraded) = s.lookup(&format!("img{i}.jpg")).await;
        let took = started.elapsed();
        worst = worst.max(took);
        assert!(!from_cache && degraded, "img{i}.jpg");
        assert!(
            took < deadline + Duration::from_millis(300),
            "img{i}.jpg took {took:?}, more than one {deadline:?} deadline plus signing"
        );
    }
    println!("worst request with Redis paused: {worst:?} (cache deadline {deadline:?})");
    let stats = s.stats().await;
    assert_eq!(stats["circuit"], "open", "{stats}");
    s.redis.signal("CONT");
    // Answers stay valid throughout.
    let url = s.redirect("img9.jpg").await;
    s.origin_accepts(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_types_and_foreign_urls_in_redis_are_misses_not_outages() {
    // A generous deadline: this test is about bad data, and a lookup that misses a short
    // deadline on a loaded machine (the whole suite shares two cores) would count as
    // the outage it checks there is none of.
    let s = Stack::start(5000).await;
    for i in 0..10 {
        let key = format!("image:url:img{i}.jpg");
        let reply = match i % 3 {
            0 => s.redis.command(&["RPUSH", &key, "x"]),
            1 => s.redis.command(&["SADD", &key, "x"]),
            _ => s.redis.command(&["SET", &key, "{not json"]),
        };
        assert!(!reply.starts_with('-'), "{reply}");
    }
    let reply = s.redis.command(&[
        "HSET",
        "image:url:img10.jpg",
        "url",
        "http://169.254.169.254/latest/meta-data/",
        "expires_at",
        "9999999999",
        "created_at",
        "0",
        "last_accessed",
        "0",
    ]);
    assert_eq!(reply, ":4");

    for i in 0..=10 {
        let url = s.redirect(&format!("img{i}.jpg")).await;
        s.origin_accepts(&url).await;
    }
    // Proxy mode never fetches the foreign URL either.
    let res = s
        .http
        .get(format!(
            "{}/api/v1/images/img10.jpg/proxy?mode=proxy",
            s.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.bytes().await.unwrap().as_ref(), b"jpeg");

    let stats = s.stats().await;
    assert_eq!(stats["circuit"], "closed", "{stats}");
    assert_eq!(stats["degraded"], 0, "bad data is not an outage: {stats}");
    assert_eq!(stats["cache_errors"], 0, "{stats}");
    assert_eq!(stats["cache"]["corrupt"], 10, "{stats}");
    assert_eq!(stats["corrupt_entries"], 1, "{stats}");
    let metrics = metrics(&s.http, &s.base).await;
    assert!(
        metrics.contains("\nimage_url_cache_corrupt_total 10\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("\nimage_url_corrupt_urls_total 1\n"),
        "{metrics}"
    );
    // Each entry was replaced: reads become hits once the replacements have landed.
    let keys: Vec<String> = (0..=10).map(|i| format!("img{i}.jpg")).collect();
    s.cached_soon(&keys).await;
}

/// Accesses buffered in the process (written to Redis once a flush interval) are written
/// when the server stops: a replica started after it sees every read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accesses_pending_at_shutdown_are_written() {
    let redis = RedisServer::start();
    let serve = || {
        let mut command = common::serve_signing("AKIDflush", "flush-secret");
        command
            .env("IMAGE_URL_CACHE__BACKEND", "redis")
            .env("IMAGE_URL_CACHE__REDIS_URL", redis.url())
            // No periodic flush while the test runs: only the one at shutdown.
            .env("IMAGE_URL_CACHE__ACCESS_FLUSH_MS", "600000");
        start(&mut command)
    };
    let http = http();
    let first = serve();
    for _ in 0..5 {
        common::redirect(&http, &first.base, "a.jpg").await;
    }
    common::terminate(first);

    let second = serve();
    let status = common::get_json(
        &http,
        &format!("{}/api/v1/images/a.jpg/status", second.base),
        None,
    )
    .await;
    assert_eq!(status["cached"], true, "{status}");
    // The first request signed and stored it; the four after it read it.
    assert_eq!(status["access_count"], 4, "{status}");
}
