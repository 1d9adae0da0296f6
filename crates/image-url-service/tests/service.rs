//! The policy, end to end against the real memory backend with an injected clock, plus
//! mockall caches for faults (errors, timeouts) at the `UrlCache` boundary.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cos_sign::{CosSigner, Credentials, Endpoint, ObjectKey};
use image_url_service::{
    CircuitState, ImageUrlService, MaintenanceConfig, RefresherConfig, ServiceConfig, ServiceError,
    UrlNow, UrlOptions,
};
use url_cache::{CacheEntry, CacheError, CacheStats, Clock, ManualClock, MemoryCache, UrlCache};

/// The start of a stable-URL window with the defaults (a multiple of 3600 − 900 s), so
/// that URLs signed at T0 run exactly `ttl` and the default alignment is visible only
/// where a test looks for it.
const T0: f64 = 1_699_998_300.0;

/// `secs` Unix seconds as the API's time.
fn at(secs: f64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + Duration::from_secs_f64(secs)
}

fn signer() -> CosSigner {
    CosSigner::new(
        Credentials::new("AKIDtest", "secret"),
        Endpoint::bucket("examplebucket-1250000000", "ap-guangzhou").unwrap(),
    )
}

fn key(k: &str) -> ObjectKey {
    ObjectKey::new(k).unwrap()
}

struct Setup {
    service: ImageUrlService,
    clock: Arc<ManualClock>,
    cache: Arc<dyn UrlCache>,
}

fn setup_with(
    config: ServiceConfig,
    wrap: impl FnOnce(Arc<dyn UrlCache>) -> Arc<dyn UrlCache>,
) -> Setup {
    let clock = Arc::new(ManualClock::from_unix_secs(T0));
    let memory: Arc<dyn UrlCache> = Arc::new(MemoryCache::builder().clock(clock.clone()).build());
    let cache = wrap(memory);
    let service = ImageUrlService::builder(signer(), cache.clone())
        .config(config)
        .clock(clock.clone())
        .build()
        .unwrap();
    Setup {
        service,
        clock,
        cache,
    }
}

/// The default configuration with `change` applied (the struct is non-exhaustive).
fn config(change: impl FnOnce(&mut ServiceConfig)) -> ServiceConfig {
    let mut config = ServiceConfig::default();
    change(&mut config);
    config
}

/// A plain request for `k` (no options) that must succeed.
async fn url_for(service: &ImageUrlService, k: &str) -> image_url_service::ImageUrl {
    service
        .get_url(&key(k), &UrlOptions::new())
        .await
        .expect("a URL")
}

fn setup() -> Setup {
    setup_with(ServiceConfig::default(), |c| c)
}

#[tokio::test]
async fn hit_miss_and_pre_refresh_boundaries() {
    let s = setup();
    let opts = UrlOptions::new();
    let first = s.service.get_url(&key("a.jpg"), &opts).await.unwrap();
    assert!(!first.from_cache && !first.refreshed && !first.degraded);
    assert_eq!(first.expires_at, at(T0 + 3600.0));
    assert_eq!(first.mime_type.as_deref(), Some("image/jpeg"));

    // 901 s left: still served from the cache, same URL.
    s.clock.advance(Duration::from_secs(2699));
    let hit = s.service.get_url(&key("a.jpg"), &opts).await.unwrap();
    assert!(hit.from_cache);
    assert_eq!(hit.url, first.url);
    assert_eq!(hit.ttl_remaining, Duration::from_secs(901));

    // 900 s left: inside the threshold, re-signed, never handed out.
    s.clock.advance(Duration::from_secs(1));
    let fresh = s.service.get_url(&key("a.jpg"), &opts).await.unwrap();
    assert!(!fresh.from_cache && fresh.refreshed);
    assert_ne!(fresh.url, first.url);
    assert_eq!(fresh.expires_at, at(T0 + 2700.0 + 3600.0));
    // ...and the fresh one is what the cache serves now.
    let again = s.service.get_url(&key("a.jpg"), &opts).await.unwrap();
    assert!(again.from_cache);
    assert_eq!(again.url, fresh.url);

    let stats = s.service.stats();
    assert_eq!(
        (
            stats.requests,
            stats.hits,
            stats.misses,
            stats.pre_refreshes,
            stats.signings
        ),
        (4, 2, 1, 1, 2)
    );
    assert_eq!(stats.signings_saved, 0.5);
    assert_eq!(stats.hit_rate, 0.5);
    assert_eq!(stats.latency_us.count, 4);
    assert!(stats.latency_us.p50 >= 1 && stats.latency_us.p99 >= stats.latency_us.p50);
    assert_eq!(stats.circuit, CircuitState::Closed);
}

#[tokio::test]
async fn a_client_never_gets_less_than_the_threshold() {
    let s = setup();
    for _ in 0..200 {
        let answer = url_for(&s.service, "b.png").await;
        assert!(
            answer.ttl_remaining > Duration::from_secs(900),
            "{:?}",
            answer.ttl_remaining
        );
        s.clock.advance(Duration::from_secs(37));
    }
}

/// A service over a memory cache wrapped in a `TestCache`, with a typed handle on the
/// wrapper for its counters and gate.
fn gated_setup(config: ServiceConfig, gated: bool) -> (Setup, Arc<TestCache>) {
    let mut wrapper = None;
    let setup = setup_with(config, |inner| {
        let gated = Arc::new(TestCache::new(inner, gated));
        wrapper = Some(gated.clone());
        gated
    });
    (setup, wrapper.expect("setup_with calls the wrapper"))
}

#[tokio::test]
async fn one_signing_for_a_thousand_concurrent_requests() {
    // The flight's cache write waits at a gate until every request has missed the cache,
    // so all 1000 overlap the one flight however the tasks are scheduled.
    let (s, cache) = gated_setup(ServiceConfig::default(), true);
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let service = s.service.clone();
            tokio::spawn(async move { url_for(&service, "hot.jpg").await })
        })
        .collect();
    // Readiness, not time: let the spawned tasks run until all have looked up.
    while cache.gets.load(Ordering::SeqCst) < 1000 {
        tokio::task::yield_now().await;
    }
    cache.gate.as_ref().unwrap().add_permits(1);
    let mut urls = std::collections::HashSet::new();
    for task in tasks {
        urls.insert(task.await.unwrap().url);
    }
    let stats = s.service.stats();
    assert_eq!(stats.signings, 1, "exactly one signing");
    assert_eq!(urls.len(), 1, "everyone got the same URL");
    assert_eq!(stats.requests, 1000);
    // The requests really overlapped: all of them missed the cache before the one write.
    assert_eq!(stats.misses, 1000);
    while s.service.stats().signings_in_flight > 0 {
        tokio::task::yield_now().await;
    }
    assert_eq!(s.cache.len().await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_shared_not_cached() {
    // Expired STS credentials: every concurrent request gets the error, and once the
    // credentials are valid the next request succeeds (nothing cached the failure).
    let clock = Arc::new(ManualClock::from_unix_secs(T0));
    let expired = Credentials::new("AKIDtest", "secret").with_session_token(
        "token",
        Some(time::OffsetDateTime::from_unix_timestamp(T0 as i64 - 1).unwrap()),
    );
    let cache: Arc<dyn UrlCache> = Arc::new(MemoryCache::builder().clock(clock.clone()).build());
    let bad = ImageUrlService::builder(
        CosSigner::new(expired, Endpoint::bucket("b-1", "ap-guangzhou").unwrap()),
        cache.clone(),
    )
    .clock(clock.clone())
    .build()
    .unwrap();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let service = bad.clone();
            tokio::spawn(async move { service.get_url(&key("x.jpg"), &UrlOptions::new()).await })
        })
        .collect();
    for task in tasks {
        assert!(matches!(
            task.await.unwrap(),
            Err(ServiceError::CredentialsExpired)
        ));
    }
    assert_eq!(cache.len().await.unwrap(), 0);
    let good = ImageUrlService::builder(signer(), cache.clone())
        .clock(clock)
        .build()
        .unwrap();
    assert!(good
        .get_url(&key("x.jpg"), &UrlOptions::new())
        .await
        .is_ok());
}

#[tokio::test]
async fn sts_credentials_bound_the_url_lifetime() {
    let clock = Arc::new(ManualClock::from_unix_secs(T0));
    let creds = Credentials::new("AKIDtest", "secret").with_session_token(
        "token",
        Some(time::OffsetDateTime::from_unix_timestamp(T0 as i64 + 1800).unwrap()),
    );
    let service = ImageUrlService::builder(
        CosSigner::new(creds, Endpoint::bucket("b-1", "ap-guangzhou").unwrap()),
        Arc::new(MemoryCache::builder().clock(clock.clone()).build()),
    )
    .clock(clock.clone())
    .build()
    .unwrap();
    let answer = url_for(&service, "a.jpg").await;
    assert_eq!(answer.expires_at, at(T0 + 1800.0));
    // The stable window starts at T0; the credentials end it early.
    assert!(answer
        .url
        .contains(&format!("q-sign-time={}%3B{}", T0 as i64, T0 as i64 + 1800)));
    assert!(answer.url.contains("x-cos-security-token=token"));
}

mockall::mock! {
    pub Cache {}
    #[async_trait]
    impl UrlCache for Cache {
        async fn get(&self, key: &str) -> url_cache::Result<Option<CacheEntry>>;
        async fn peek(&self, key: &str) -> url_cache::Result<Option<CacheEntry>>;
        async fn put(&self, entry: CacheEntry) -> url_cache::Result<()>;
        async fn delete(&self, key: &str) -> url_cache::Result<bool>;
        async fn expiring_within(&self, within: Duration, limit: usize) -> url_cache::Result<Vec<CacheEntry>>;
        async fn remove_expired(&self, batch_size: usize) -> url_cache::Result<usize>;
        async fn len(&self) -> url_cache::Result<usize>;
        async fn health_check(&self) -> url_cache::Result<()>;
        fn stats(&self) -> CacheStats;
        fn backend(&self) -> &'static str;
    }
}

impl std::fmt::Debug for MockCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MockCache")
    }
}

fn service_over(
    mock: MockCache,
    clock: Arc<ManualClock>,
    config: ServiceConfig,
) -> ImageUrlService {
    ImageUrlService::builder(signer(), Arc::new(mock))
        .config(config)
        .clock(clock)
        .build()
        .unwrap()
}

/// A hit answered in its first poll is counted at the histogram's lowest bucket without a
/// clock read; a request that waits is timed, wait included.
#[tokio::test]
async fn latency_counts_hits_at_the_floor_and_times_waits() {
    let (s, cache) = gated_setup(ServiceConfig::default(), false);
    let opts = UrlOptions::new();
    s.service.get_url(&key("a.jpg"), &opts).await.unwrap();
    for _ in 0..3 {
        assert!(
            s.service
                .get_url(&key("a.jpg"), &opts)
                .await
                .unwrap()
                .from_cache
        );
    }
    cache.set(SLOW);
    let slow = s.service.get_url(&key("a.jpg"), &opts).await.unwrap();
    assert!(slow.from_cache);
    let latency = s.service.stats().latency_us;
    assert_eq!(latency.count, 5);
    assert_eq!(latency.p50, 1, "the three hits: {latency:?}");
    // hdrhistogram with 2 significant digits may report a value up to 1 % under.
    assert!(
        latency.max as f64 >= SLOW_ROUND_TRIP.as_micros() as f64 * 0.99,
        "the slow lookup was timed: {latency:?}"
    );
}

#[tokio::test]
async fn a_failing_cache_degrades_opens_the_breaker_and_recovers() {
    let clock = Arc::new(ManualClock::from_unix_secs(T0));
    let healthy = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let mut mock = MockCache::new();
    // Every call is counted, and fails until `healthy` is set.
    let outcome = {
        let (healthy, calls) = (healthy.clone(), calls.clone());
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            if healthy.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err(CacheError::Unavailable("connection refused".into()))
            }
        }
    };
    let o = outcome.clone();
    mock.expect_get().returning(move |_| o().map(|()| None));
    let o = outcome.clone();
    mock.expect_peek().returning(move |_| o().map(|()| None));
    mock.expect_put().returning(move |_| outcome());
    mock.expect_stats().returning(CacheStats::default);
    mock.expect_backend().return_const("mock");
    let config = config(|c| {
        c.breaker_threshold = 2;
        c.breaker_cool_down = Duration::from_secs(10);
    });
    let service = service_over(mock, clock.clone(), config);

    // Every request is answered, degraded; two cache failures open the breaker.
    let first = url_for(&service, "a.jpg").await;
    assert!(first.degraded && !first.from_cache);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the lookup, then the flight's write (no re-check)"
    );
    assert_eq!(service.stats().circuit, CircuitState::Open);
    for _ in 0..20 {
        let answer = url_for(&service, "a.jpg").await;
        assert!(answer.degraded);
        assert!(answer
            .url
            .starts_with("https://examplebucket-1250000000.cos.ap-guangzhou.myqcloud.com/a.jpg?"));
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "an open breaker stops calling the cache"
    );
    let stats = service.stats();
    assert_eq!(
        (
            stats.requests,
            stats.degraded,
            stats.cache_errors,
            stats.signings
        ),
        (21, 21, 2, 21)
    );

    // After the cool-down one probe goes through; the cache is back, the breaker closes.
    healthy.store(true, Ordering::SeqCst);
    clock.advance(Duration::from_secs(10));
    assert_eq!(service.stats().circuit, CircuitState::HalfOpen);
    let answer = url_for(&service, "a.jpg").await;
    assert!(!answer.degraded);
    assert_eq!(service.stats().circuit, CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_hanging_cache_costs_one_deadline_then_nothing() {
    // Every call hangs far past the deadline.
    let (service, cache, _clock) = faulty_service(config(|c| c.breaker_threshold = 1));
    cache.set(HANGING);
    let started = tokio::time::Instant::now();
    let answer = url_for(&service, "a.jpg").await;
    assert!(answer.degraded);
    // One 50 ms deadline (the get); the breaker then skips the re-check and the put.
    assert_eq!(started.elapsed(), Duration::from_millis(50));
    let started = tokio::time::Instant::now();
    assert!(url_for(&service, "a.jpg").await.degraded);
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(service.stats().cache_errors, 1);
}

#[tokio::test]
async fn batches_dedupe_isolate_bad_keys_and_use_one_round_trip() {
    let (s, cache) = gated_setup(ServiceConfig::default(), false);
    for k in ["a.jpg", "b.jpg", "c.jpg"] {
        s.service
            .get_url(&key(k), &UrlOptions::new())
            .await
            .unwrap();
    }
    let before = s.service.stats().signings;
    let keys = ["a.jpg", "b.jpg", "a.jpg", "", "d.png", "c.jpg", "dir/.."];
    let items = s
        .service
        .get_many(&keys, &UrlOptions::new(), Some(2))
        .await
        .unwrap();
    let order: Vec<&str> = items.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(order, ["a.jpg", "b.jpg", "", "d.png", "c.jpg", "dir/.."]);
    for item in &items {
        match item.key.as_str() {
            "a.jpg" | "b.jpg" | "c.jpg" => assert!(item.result.as_ref().unwrap().from_cache),
            "d.png" => {
                let url = item.result.as_ref().unwrap();
                assert!(!url.from_cache);
                assert_eq!(url.mime_type.as_deref(), Some("image/png"));
            }
            _ => assert!(
                matches!(item.result, Err(ServiceError::InvalidKey(_))),
                "{}",
                item.key
            ),
        }
    }
    assert_eq!(s.service.stats().signings - before, 1);
    // Counted by the wrapper: one get_many round trip, no single gets for the batch.
    assert_eq!(cache.get_manys.load(Ordering::SeqCst), 1);
    assert_eq!(cache.gets.load(Ordering::SeqCst), 3);

    let too_many: Vec<String> = (0..101).map(|i| format!("k{i}")).collect();
    let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
    assert!(matches!(
        s.service
            .get_many(&too_many, &UrlOptions::new(), None)
            .await,
        Err(ServiceError::BatchTooLarge {
            size: 101,
            max: 100
        })
    ));
}

#[tokio::test]
async fn stable_windows_give_identical_urls_across_replicas_and_degradation() {
    let config = config(|c| c.align = Some(Duration::from_secs(600)));
    let a = setup_with(config.clone(), |c| c);
    let b = setup_with(config.clone(), |c| c);
    // A third replica whose cache is dead.
    let mut dead = MockCache::new();
    dead.expect_get()
        .returning(|_| Err(CacheError::Unavailable("down".into())));
    dead.expect_peek()
        .returning(|_| Err(CacheError::Unavailable("down".into())));
    dead.expect_put()
        .returning(|_| Err(CacheError::Unavailable("down".into())));
    dead.expect_stats().returning(CacheStats::default);
    dead.expect_backend().return_const("mock");
    let dead_clock = Arc::new(ManualClock::from_unix_secs(T0));
    let c = service_over(dead, dead_clock.clone(), config);

    let from_a = url_for(&a.service, "s.jpg").await;
    for step in [0u64, 100, 199] {
        a.clock.set_unix_secs(T0 + step as f64);
        b.clock.set_unix_secs(T0 + step as f64);
        dead_clock.set_unix_secs(T0 + step as f64);
        let cached = url_for(&a.service, "s.jpg").await;
        let fresh = url_for(&b.service, "s.jpg").await;
        let degraded = url_for(&c, "s.jpg").await;
        assert!(degraded.degraded);
        assert_eq!(cached.url, from_a.url);
        assert_eq!(fresh.url, from_a.url, "another replica, same window");
        assert_eq!(degraded.url, from_a.url, "a dead cache, same window");
    }
    // T0 is 300 s past a 600 s boundary: the window started at T0 - 300.
    assert_eq!(from_a.expires_at, at(T0 - 300.0 + 3600.0));
    // Next window: a new URL.
    dead_clock.set_unix_secs(T0 + 400.0);
    assert_ne!(url_for(&c, "s.jpg").await.url, from_a.url);
}

#[tokio::test]
async fn variants_status_refresh_preload_and_cleanup() {
    let s = setup();
    let thumb = UrlOptions::new()
        .process("imageMogr2/thumbnail/200x")
        .content_type("image/webp");
    let plain = url_for(&s.service, "v.jpg").await;
    let small = s.service.get_url(&key("v.jpg"), &thumb).await.unwrap();
    assert_ne!(plain.url, small.url);
    assert!(
        small.url.contains("imageMogr2%2Fthumbnail%2F200x=")
            && small.url.contains("response-content-type=image%2Fwebp")
    );
    assert_eq!(s.cache.len().await.unwrap(), 2);
    assert!(
        s.service
            .get_url(&key("v.jpg"), &thumb)
            .await
            .unwrap()
            .from_cache
    );

    let status = s
        .service
        .status(&key("v.jpg"), &UrlOptions::new())
        .await
        .unwrap();
    assert!(status.cached && status.cache_available && !status.needs_refresh);
    assert_eq!(status.expires_at, Some(plain.expires_at));
    assert_eq!(
        status.access_count,
        Some(0),
        "status does not count as access"
    );
    let unknown = s
        .service
        .status(&key("nope.jpg"), &UrlOptions::new())
        .await
        .unwrap();
    assert!(!unknown.cached && unknown.needs_refresh);

    s.clock.advance(Duration::from_secs(5));
    let refreshed = s
        .service
        .refresh(&key("v.jpg"), &UrlOptions::new())
        .await
        .unwrap();
    assert!(refreshed.refreshed && !refreshed.from_cache);
    assert_eq!(s.service.stats().signings, 3, "re-signed");
    // Same credentials, same stable window: the same bytes, so browsers keep their copy.
    assert_eq!(refreshed.url, plain.url);
    assert_eq!(url_for(&s.service, "v.jpg").await.url, refreshed.url);

    let report = s
        .service
        .preload(
            &["p1.jpg", "p2.jpg", "v.jpg", "p1.jpg", ""],
            &UrlOptions::new(),
        )
        .await;
    assert_eq!(
        (
            report.requested,
            report.loaded,
            report.already_cached,
            report.failed.len()
        ),
        (4, 2, 1, 1)
    );

    s.clock.advance(Duration::from_secs(4000));
    // v.jpg (refreshed in place), its thumbnail variant, p1.jpg and p2.jpg.
    assert_eq!(s.service.cleanup().await.unwrap(), 4);
    assert_eq!(s.cache.len().await.unwrap(), 0);

    let direct = s
        .service
        .get_url(&key("v.jpg"), &UrlOptions::new().use_cache(false))
        .await
        .unwrap();
    assert!(!direct.from_cache);
    assert_eq!(
        s.cache.len().await.unwrap(),
        0,
        "use_cache=false touches nothing"
    );
}

/// `get_url_now` answers what it can at once (a memory hit, a refusal) and hands back
/// the rest; with `finish_url` it is one `get_url`: one request counted, the cache asked
/// once.
#[tokio::test]
async fn get_url_now_answers_at_once_or_hands_back_the_rest() {
    let (k, opts) = (key("a.jpg"), UrlOptions::new());
    // Over memory: a miss waits for its signing; then the hit is ready.
    let s = setup();
    let UrlNow::Later(pending) = s.service.get_url_now(&k, &opts) else {
        panic!("a miss waits for its signing");
    };
    let signed = s.service.finish_url(pending, &k, &opts).await.unwrap();
    assert!(!signed.from_cache);
    let UrlNow::Ready(Ok(hit)) = s.service.get_url_now(&k, &opts) else {
        panic!("a memory hit is ready");
    };
    assert!(hit.from_cache);
    assert_eq!(hit.url, signed.url);
    let bad = UrlOptions::new().process("a&b");
    assert!(matches!(
        s.service.get_url_now(&k, &bad),
        UrlNow::Ready(Err(ServiceError::InvalidOptions(_)))
    ));
    let stats = s.service.stats();
    assert_eq!(
        (stats.requests, stats.hits, stats.misses, stats.signings),
        (3, 1, 1, 1)
    );
    assert_eq!(s.cache.stats().misses, 1, "the miss was looked up once");

    // Over a cache that answers only later (no `get_ready`): its `get` is called once,
    // by `finish_url`.
    let (s, cache) = gated_setup(ServiceConfig::default(), false);
    url_for(&s.service, "a.jpg").await;
    let gets = cache.gets.load(Ordering::SeqCst);
    let UrlNow::Later(pending) = s.service.get_url_now(&k, &opts) else {
        panic!("this cache answers later");
    };
    assert_eq!(cache.gets.load(Ordering::SeqCst), gets, "not asked yet");
    let later = s.service.finish_url(pending, &k, &opts).await.unwrap();
    assert!(later.from_cache);
    assert_eq!(cache.gets.load(Ordering::SeqCst), gets + 1);
    assert_eq!(s.service.stats().requests, 2);
}

#[tokio::test]
async fn invalid_input_and_config_are_typed_errors() {
    let s = setup();
    assert!(matches!(
        s.service.get_url_for("", &UrlOptions::new()).await,
        Err(ServiceError::InvalidKey(_))
    ));
    assert!(matches!(
        s.service
            .get_url(&key("a.jpg"), &UrlOptions::new().process("a&b"))
            .await,
        Err(ServiceError::InvalidOptions(_))
    ));
    for config in [
        config(|c| c.pre_refresh = Duration::from_secs(3600)),
        config(|c| c.align = Some(Duration::from_secs(3000))),
        config(|c| c.cache_timeout = Duration::ZERO),
    ] {
        let built = ImageUrlService::builder(signer(), Arc::new(MemoryCache::new()))
            .config(config)
            .build();
        assert!(matches!(built, Err(ServiceError::InvalidConfig(_))));
    }
}

/// Regression: the object `a.jpg?imageMogr2/thumbnail/200x` and the thumbnail of `a.jpg`
/// shared a cache entry, so whoever asked first decided which object the other got.
#[tokio::test]
async fn a_key_with_a_question_mark_cannot_poison_a_variant() {
    let s = setup();
    let thumb = "imageMogr2/thumbnail/200x";
    let odd = s
        .service
        .get_url(&key(&format!("a.jpg?{thumb}")), &UrlOptions::new())
        .await
        .unwrap();
    assert!(odd.url.contains("/a.jpg%3FimageMogr2/thumbnail/200x?"));
    let variant = s
        .service
        .get_url(&key("a.jpg"), &UrlOptions::new().process(thumb))
        .await
        .unwrap();
    assert!(
        !variant.from_cache,
        "a different request, a different entry"
    );
    assert!(
        variant
            .url
            .starts_with("https://examplebucket-1250000000.cos.ap-guangzhou.myqcloud.com/a.jpg?"),
        "the thumbnail is of a.jpg"
    );
}

const SLOW_ROUND_TRIP: Duration = Duration::from_millis(30);

/// How a `TestCache` answers.
const HEALTHY: u8 = 0;
const FAILING: u8 = 1;
const HANGING: u8 = 2;
/// Answers after 30 ms of real time (a slow round trip).
const SLOW: u8 = 3;

/// A real memory cache that counts lookups, can be switched to failing or hanging at any
/// moment, and whose writes can be held at a gate (so that concurrent requests overlap
/// one flight).
#[derive(Debug)]
struct TestCache {
    inner: Arc<dyn UrlCache>,
    mode: std::sync::atomic::AtomicU8,
    gate: Option<tokio::sync::Semaphore>,
    gets: AtomicUsize,
    get_manys: AtomicUsize,
}

impl TestCache {
    fn new(inner: Arc<dyn UrlCache>, gated: bool) -> Self {
        TestCache {
            inner,
            mode: std::sync::atomic::AtomicU8::new(HEALTHY),
            gate: gated.then(|| tokio::sync::Semaphore::new(0)),
            gets: AtomicUsize::new(0),
            get_manys: AtomicUsize::new(0),
        }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    async fn fault(&self) -> url_cache::Result<()> {
        match self.mode.load(Ordering::SeqCst) {
            FAILING => Err(CacheError::Unavailable("connection refused".into())),
            HANGING => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(())
            }
            SLOW => {
                tokio::time::sleep(SLOW_ROUND_TRIP).await;
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl UrlCache for TestCache {
    async fn get(&self, key: &str) -> url_cache::Result<Option<CacheEntry>> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.fault().await?;
        self.inner.get(key).await
    }
    async fn peek(&self, key: &str) -> url_cache::Result<Option<CacheEntry>> {
        self.fault().await?;
        self.inner.peek(key).await
    }
    async fn get_many(&self, keys: &[&str]) -> url_cache::Result<Vec<Option<CacheEntry>>> {
        self.get_manys.fetch_add(1, Ordering::SeqCst);
        self.fault().await?;
        self.inner.get_many(keys).await
    }
    async fn put(&self, entry: CacheEntry) -> url_cache::Result<()> {
        if let Some(gate) = &self.gate {
            // Held until the test opens the gate; nothing closes the semaphore.
            let _held = gate
                .acquire()
                .await
                .map_err(|_| CacheError::Unavailable("gate closed".into()))?;
        }
        self.fault().await?;
        self.inner.put(entry).await
    }
    async fn delete(&self, key: &str) -> url_cache::Result<bool> {
        self.inner.delete(key).await
    }
    async fn expiring_within(
        &self,
        within: Duration,
        limit: usize,
    ) -> url_cache::Result<Vec<CacheEntry>> {
        self.fault().await?;
        self.inner.expiring_within(within, limit).await
    }
    async fn remove_expired(&self, batch: usize) -> url_cache::Result<usize> {
        self.fault().await?;
        self.inner.remove_expired(batch).await
    }
    async fn len(&self) -> url_cache::Result<usize> {
        self.inner.len().await
    }
    async fn health_check(&self) -> url_cache::Result<()> {
        self.fault().await
    }
    fn stats(&self) -> CacheStats {
        self.inner.stats()
    }
    fn backend(&self) -> &'static str {
        "test-memory"
    }
}

fn faulty_service(config: ServiceConfig) -> (ImageUrlService, Arc<TestCache>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::from_unix_secs(T0));
    let memory = Arc::new(MemoryCache::builder().clock(clock.clone()).build());
    let cache = Arc::new(TestCache::new(memory, false));
    let service = ImageUrlService::builder(signer(), cache.clone())
        .config(config)
        .clock(clock.clone())
        .build()
        .unwrap();
    (service, cache, clock)
}

/// Polls `future` once, then drops it: a client that went away mid-request.
async fn poll_once_and_drop<F: std::future::Future>(future: F) {
    let mut future = std::pin::pin!(future);
    let _ = futures::poll!(future.as_mut());
}

/// Lets spawned tasks run, moving paused time on by a millisecond a step (a flight's
/// write may be waiting out its deadline), until no signing is in flight. Bounded: a
/// wedged flight fails the test.
async fn settle(service: &ImageUrlService) {
    for _ in 0..1000 {
        if service.stats().signings_in_flight == 0 {
            return;
        }
        tokio::time::advance(Duration::from_millis(1)).await;
        tokio::task::yield_now().await;
    }
    panic!(
        "{} signings still in flight",
        service.stats().signings_in_flight
    );
}

/// Regression: the half-open probe was a plain value; a probe whose request was dropped
/// left the breaker half-open and probing forever, and the cache was never used again.
#[tokio::test(start_paused = true)]
async fn an_abandoned_probe_does_not_wedge_the_breaker() {
    let (service, cache, clock) = faulty_service(config(|c| c.breaker_threshold = 1));
    cache.set(FAILING);
    assert!(url_for(&service, "a.jpg").await.degraded);
    assert_eq!(service.stats().circuit, CircuitState::Open);
    clock.advance(Duration::from_secs(10));
    // The probe goes to a hanging cache and its client goes away.
    cache.set(HANGING);
    poll_once_and_drop(service.get_url(&key("a.jpg"), &UrlOptions::new())).await;
    // The cache is healthy again: the next request probes, succeeds and closes it.
    cache.set(HEALTHY);
    let answer = url_for(&service, "a.jpg").await;
    assert!(!answer.degraded);
    assert_eq!(service.stats().circuit, CircuitState::Closed);
    settle(&service).await;
    assert!(url_for(&service, "a.jpg").await.from_cache);
}

/// Regression: a flight whose callers all went away stayed in the map, parked; the map
/// grew with every abandoned key, and a later caller could resume a stale flight.
#[tokio::test(start_paused = true)]
async fn ten_thousand_abandoned_requests_leave_no_flights() {
    let (service, cache, _clock) = faulty_service(ServiceConfig::default());
    for i in 0..10_000 {
        let key = key(&format!("random/{i}.jpg"));
        poll_once_and_drop(service.get_url(&key, &UrlOptions::new())).await;
    }
    settle(&service).await;
    // Each abandoned flight still finished its work: signed and stored.
    assert_eq!(cache.len().await.unwrap(), 10_000);
    assert_eq!(service.stats().signings, 10_000);
}

/// Every await point of `get_url`, `get_many` and `refresh`, cut by `timeout(0)` and by
/// a single poll, under a cache that hangs and one that fails: afterwards the service
/// is whole (no flight left, breaker closed once the cache is healthy, caching works).
#[tokio::test(start_paused = true)]
async fn futures_dropped_at_any_await_leave_nothing_behind() {
    let (service, cache, clock) = faulty_service(config(|c| c.breaker_threshold = 3));
    let k = key("d.jpg");
    for mode in [HANGING, FAILING, HEALTHY, HANGING] {
        cache.set(mode);
        for _ in 0..20 {
            let _ =
                tokio::time::timeout(Duration::ZERO, service.get_url(&k, &UrlOptions::new())).await;
            let _ =
                tokio::time::timeout(Duration::ZERO, service.refresh(&k, &UrlOptions::new())).await;
            let _ = tokio::time::timeout(
                Duration::ZERO,
                service.get_many(&["d.jpg", "e.jpg"], &UrlOptions::new(), None),
            )
            .await;
            poll_once_and_drop(service.get_url(&k, &UrlOptions::new())).await;
            poll_once_and_drop(service.get_many(&["d.jpg", "f.jpg"], &UrlOptions::new(), None))
                .await;
            poll_once_and_drop(service.refresh(&k, &UrlOptions::new())).await;
        }
        clock.advance(Duration::from_secs(11));
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    cache.set(HEALTHY);
    clock.advance(Duration::from_secs(11));
    settle(&service).await;
    let answer = url_for(&service, "g.jpg").await;
    assert!(!answer.degraded, "the cache is used again");
    assert_eq!(service.stats().circuit, CircuitState::Closed);
    settle(&service).await;
    assert!(url_for(&service, "g.jpg").await.from_cache);
    assert_eq!(service.stats().signings_in_flight, 0);
}

/// Regression: `Inner → flights → Shared → service → Inner` was a reference cycle (an
/// abandoned flight kept its service, and the service's cache, alive forever).
#[tokio::test(start_paused = true)]
async fn dropping_the_last_handle_frees_the_service() {
    let (service, cache, _clock) = faulty_service(ServiceConfig::default());
    let weak = Arc::downgrade(&cache);
    drop(cache);
    // A running maintenance task does not keep the service alive either.
    let maintenance = service.spawn_maintenance(MaintenanceConfig::default());
    url_for(&service, "a.jpg").await;
    poll_once_and_drop(service.get_url(&key("b.jpg"), &UrlOptions::new())).await;
    settle(&service).await;
    drop(service);
    assert!(
        weak.upgrade().is_none(),
        "the service and its cache were freed"
    );
    maintenance.shutdown().await;
}

/// A paused or stuck cache (every call hangs) costs each request one deadline at most,
/// never one per cache call (lookup, re-check, write).
#[tokio::test(start_paused = true)]
async fn a_hanging_cache_costs_each_request_at_most_one_deadline() {
    let (service, cache, _clock) = faulty_service(config(|c| {
        c.breaker_threshold = 64;
        c.breaker_window = 64;
        c.breaker_failure_percent = 100;
    }));
    cache.set(HANGING);
    for i in 0..5 {
        let started = tokio::time::Instant::now();
        let answer = service
            .get_url(&key(&format!("h{i}.jpg")), &UrlOptions::new())
            .await
            .unwrap();
        assert!(answer.degraded);
        assert_eq!(started.elapsed(), Duration::from_millis(50), "request {i}");
    }
}

/// Regression: a cached URL was served whatever it pointed at; with a writable Redis,
/// `url = http://169.254.169.254/...` became a 302 to that host.
#[tokio::test]
async fn a_foreign_url_in_the_cache_is_replaced_never_served() {
    let s = setup();
    for (k, url) in [
        ("a.jpg", "http://169.254.169.254/latest/meta-data/?q-sign-time=1%3B2"),
        (
            "b.jpg",
            "https://examplebucket-1250000000.cos.ap-guangzhou.myqcloud.com/other.jpg?q-sign-algorithm=sha1&q-ak=AKIDtest&q-sign-time=1699998300%3B1700001900",
        ),
        ("c.jpg", "not a url"),
    ] {
        s.cache
            .put(CacheEntry::new(k, url, at(T0 + 3000.0), at(T0)))
            .await
            .unwrap();
        let answer = s.service.get_url(&key(k), &UrlOptions::new()).await.unwrap();
        assert!(!answer.from_cache, "{k}");
        assert!(
            answer.url.starts_with(&format!(
                "https://examplebucket-1250000000.cos.ap-guangzhou.myqcloud.com/{k}?"
            )),
            "{k}"
        );
        // Replaced in the cache by the good URL.
        let again = s.service.get_url(&key(k), &UrlOptions::new()).await.unwrap();
        assert!(again.from_cache && again.url == answer.url, "{k}");
    }
    assert_eq!(s.service.stats().corrupt_entries, 3);
    let items = s
        .service
        .get_many(&["a.jpg", "b.jpg"], &UrlOptions::new(), None)
        .await
        .unwrap();
    assert!(items.iter().all(|i| i.result.as_ref().unwrap().from_cache));
}

/// Each thread remembers the windows of the URLs it checked (`windows.rs`): a hot entry
/// replaced by a foreign URL is still caught, and a service for another bucket sharing
/// the cache never borrows the first one's answer for the same URL.
#[tokio::test]
async fn a_hot_entry_is_checked_again_when_replaced_and_per_service() {
    let s = setup();
    let k = key("hot.jpg");
    let good = s.service.get_url(&k, &UrlOptions::new()).await.unwrap();
    for _ in 0..4 {
        let hit = s.service.get_url(&k, &UrlOptions::new()).await.unwrap();
        assert!(hit.from_cache && hit.url == good.url);
    }
    let other_bucket = ImageUrlService::builder(
        CosSigner::new(
            Credentials::new("AKIDtest", "secret"),
            Endpoint::bucket("otherbucket-1250000000", "ap-guangzhou").unwrap(),
        ),
        s.cache.clone(),
    )
    .clock(s.clock.clone())
    .build()
    .unwrap();
    let theirs = other_bucket.get_url(&k, &UrlOptions::new()).await.unwrap();
    assert!(!theirs.from_cache, "not a URL of this bucket");
    assert!(theirs.url.starts_with("https://otherbucket-1250000000."));
    s.cache
        .put(CacheEntry::new(
            "hot.jpg",
            "http://169.254.169.254/hot.jpg?q-sign-time=1%3B2",
            at(T0 + 3000.0),
            at(T0),
        ))
        .await
        .unwrap();
    let answer = s.service.get_url(&k, &UrlOptions::new()).await.unwrap();
    assert!(!answer.from_cache);
    assert_eq!(answer.url, good.url, "signed again, in the same window");
}

/// Regression: with `align` set, a replica that cached a URL in window k kept serving it
/// in window k+1 while a replica without the entry signed window k+1.
#[tokio::test]
async fn replicas_switch_windows_at_the_same_instant() {
    let config = config(|c| {
        c.ttl = Duration::from_secs(60);
        c.align = Some(Duration::from_secs(10));
        c.pre_refresh = Duration::from_secs(30);
    });
    let a = setup_with(config.clone(), |c| c);
    let b = setup_with(config.clone(), |c| c);
    let k = key("w.jpg");
    let first = a.service.get_url(&k, &UrlOptions::new()).await.unwrap();
    for clock in [&a.clock, &b.clock] {
        clock.advance(Duration::from_secs(10)); // the next window
    }
    let from_a = a.service.get_url(&k, &UrlOptions::new()).await.unwrap();
    let from_b = b.service.get_url(&k, &UrlOptions::new()).await.unwrap();
    assert_ne!(
        from_a.url, first.url,
        "window k's URL is stale in window k+1"
    );
    assert_eq!(from_a.url, from_b.url, "both replicas serve window k+1");
    // A third replica whose cache is down agrees with them.
    let (dead, dead_cache, dead_clock) = faulty_service(config.clone());
    dead_cache.set(FAILING);
    dead_clock.set(a.clock.now());
    let from_dead = dead.get_url(&k, &UrlOptions::new()).await.unwrap();
    assert!(from_dead.degraded);
    assert_eq!(
        from_dead.url, from_a.url,
        "a replica with a dead cache agrees"
    );
    // A restart inside the window (a new service, the same cache) changes nothing.
    let restarted = ImageUrlService::builder(signer(), a.cache.clone())
        .config(config)
        .clock(a.clock.clone())
        .build()
        .unwrap();
    a.clock.advance(Duration::from_secs(5));
    let after = restarted.get_url(&k, &UrlOptions::new()).await.unwrap();
    assert!(after.from_cache);
    assert_eq!(after.url, from_b.url);
}

/// Stable URLs are on by default: two replicas with their own caches, one of them
/// restarted, agree without any configuration.
#[tokio::test]
async fn stable_urls_are_the_default() {
    assert_eq!(
        ServiceConfig::default().effective_align(),
        Duration::from_secs(2700)
    );
    let a = setup();
    let b = setup();
    for step in [0u64, 600, 1200] {
        a.clock.set_unix_secs(T0 + 100.0 + step as f64);
        b.clock.set_unix_secs(T0 + 1500.0 + step as f64 / 2.0);
        let from_a = url_for(&a.service, "x.jpg").await;
        let from_b = url_for(&b.service, "x.jpg").await;
        assert_eq!(from_a.url, from_b.url, "step {step}");
    }
}

/// Lets the maintenance task run once time has moved past a tick (paused time).
async fn cleanup_runs_reach(service: &ImageUrlService, runs: u64) {
    for _ in 0..1000 {
        if service.stats().maintenance.cleanup_runs >= runs {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("the maintenance task did not run");
}

#[tokio::test(start_paused = true)]
async fn maintenance_cleans_up_on_schedule_and_stops_when_told() {
    let s = setup();
    for k in ["m1.jpg", "m2.jpg"] {
        s.service
            .get_url(&key(k), &UrlOptions::new())
            .await
            .unwrap();
    }
    let mut config = MaintenanceConfig::default();
    config.cleanup_interval = Duration::from_secs(300);
    let handle = s.service.spawn_maintenance(config.clone());
    // Nothing before the first interval has passed.
    tokio::task::yield_now().await;
    assert_eq!(s.service.stats().maintenance.cleanup_runs, 0);
    s.clock.advance(Duration::from_secs(4000)); // both entries expire
    tokio::time::advance(Duration::from_secs(300)).await;
    cleanup_runs_reach(&s.service, 1).await;
    let stats = s.service.stats().maintenance;
    assert_eq!(
        (
            stats.cleanup_runs,
            stats.entries_removed,
            stats.cleanup_failures
        ),
        (1, 2, 0)
    );
    assert_eq!(stats.last_cleanup_at, Some(T0 + 4000.0));
    assert_eq!(s.cache.len().await.unwrap(), 0);
    // Shut down: no more runs, however much time passes.
    handle.shutdown().await;
    tokio::time::advance(Duration::from_secs(3000)).await;
    tokio::task::yield_now().await;
    assert_eq!(s.service.stats().maintenance.cleanup_runs, 1);
    // Dropping the handle stops it too.
    let handle = s.service.spawn_maintenance(config);
    drop(handle);
    tokio::time::advance(Duration::from_secs(3000)).await;
    tokio::task::yield_now().await;
    assert_eq!(s.service.stats().maintenance.cleanup_runs, 1);
}

#[tokio::test(start_paused = true)]
async fn a_failing_cleanup_is_counted_and_the_task_goes_on() {
    let (service, cache, _clock) = faulty_service(ServiceConfig::default());
    let mut config = MaintenanceConfig::default();
    config.cleanup_interval = Duration::from_secs(60);
    let handle = service.spawn_maintenance(config);
    cache.set(HANGING);
    // A cleanup that hangs ends at its own deadline (30 s), is counted as failed, and
    // the next one runs on schedule.
    tokio::time::advance(Duration::from_secs(60)).await;
    for _ in 0..10 {
        tokio::time::advance(Duration::from_secs(10)).await;
        tokio::task::yield_now().await;
    }
    cleanup_runs_reach(&service, 1).await;
    assert_eq!(service.stats().maintenance.cleanup_failures, 1);
    cache.set(HEALTHY);
    tokio::time::advance(Duration::from_secs(60)).await;
    cleanup_runs_reach(&service, 2).await;
    assert_eq!(service.stats().maintenance.cleanup_failures, 1);
    handle.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// The background refresher, run by hand with the injected clock.

/// A service without stable windows on a switchable cache, holding `a.jpg` 950 s before
/// its expiry: inside the refresher's threshold, outside the readers'.
async fn one_entry_due_for_refresh() -> (ImageUrlService, Arc<TestCache>) {
    let (service, cache, clock) = faulty_service(config(|c| c.align = Some(Duration::ZERO)));
    service
        .get_url(&key("a.jpg"), &UrlOptions::new())
        .await
        .unwrap();
    clock.advance(Duration::from_secs(3600 - 950));
    (service, cache)
}

fn refresher() -> RefresherConfig {
    RefresherConfig::default()
}

#[tokio::test]
async fn the_refresher_renews_urls_before_readers_would_and_keeps_their_statistics() {
    // No stable windows: each refresh signs from now.
    let s = setup_with(config(|c| c.align = Some(Duration::ZERO)), |c| c);
    let first = url_for(&s.service, "a.jpg").await;
    url_for(&s.service, "a.jpg").await;
    url_for(&s.service, "a.jpg").await;
    let before = s.cache.peek("a.jpg").await.unwrap().unwrap();
    assert_eq!(before.access_count, 2);

    // Not yet within pre-refresh (900 s) + one interval (60 s): nothing to do.
    s.clock.advance(Duration::from_secs(3600 - 1000));
    let run = s.service.refresh_expiring(&refresher()).await;
    assert_eq!(
        (run.refreshed, run.skipped, run.error.as_deref()),
        (0, 0, None)
    );

    // Inside it, but before any reader would re-sign: refreshed, statistics kept.
    s.clock.advance(Duration::from_secs(50));
    let run = s.service.refresh_expiring(&refresher()).await;
    assert_eq!((run.refreshed, run.failed, run.lag), (1, 0, Duration::ZERO));
    let after = s.cache.peek("a.jpg").await.unwrap().unwrap();
    assert_ne!(after.url, first.url);
    assert_eq!(after.expires_at_unix(), T0 + 2650.0 + 3600.0);
    assert_eq!(
        (after.access_count, after.created_at, after.last_accessed),
        (before.access_count, before.created_at, before.last_accessed)
    );
    // The reader gets the refreshed URL from the cache, without a signing.
    let signings = s.service.stats().signings;
    let served = url_for(&s.service, "a.jpg").await;
    assert!(served.from_cache && served.url == after.url);
    assert_eq!(s.service.stats().signings, signings);
    let stats = s.service.stats().refresher;
    assert_eq!((stats.runs, stats.refreshed), (2, 1));
}

#[tokio::test]
async fn with_stable_windows_the_refresher_moves_entries_to_the_next_window_at_its_turn() {
    let s = setup();
    let options = UrlOptions::new().content_type("image/webp");
    let first = s.service.get_url(&key("a.jpg"), &options).await.unwrap();
    // 40 s before the window (2700 s) turns: due soon, but signing now would make the
    // same URL again, so it waits.
    s.clock.advance(Duration::from_secs(2660));
    let run = s.service.refresh_expiring(&refresher()).await;
    assert_eq!((run.refreshed, run.skipped), (0, 1));
    // Just after the turn: every replica signs the new window's URL; the refresher
    // writes exactly that one.
    s.clock.advance(Duration::from_secs(41));
    let run = s.service.refresh_expiring(&refresher()).await;
    assert_eq!(run.refreshed, 1);
    assert_eq!(
        run.lag,
        Duration::from_secs(1),
        "due at the turn, refreshed 1 s after"
    );
    let other_replica = setup();
    other_replica.clock.set(s.clock.now());
    let expected = other_replica
        .service
        .get_url(&key("a.jpg"), &options)
        .await
        .unwrap();
    let served = s.service.get_url(&key("a.jpg"), &options).await.unwrap();
    assert!(served.from_cache, "the refreshed entry is served");
    assert_eq!(served.url, expected.url);
    assert_ne!(served.url, first.url);
}

#[tokio::test]
async fn idle_entries_are_dropped_not_refreshed_and_expired_ones_removed() {
    let s = setup_with(config(|c| c.align = Some(Duration::ZERO)), |c| c);
    url_for(&s.service, "idle.jpg").await;
    s.clock.advance(Duration::from_secs(1800));
    url_for(&s.service, "busy.jpg").await;
    s.clock.advance(Duration::from_secs(1700)); // idle.jpg: 100 s left, read 3500 s ago
    let mut config = refresher();
    config.idle_drop = Duration::from_secs(3000);
    let run = s.service.refresh_expiring(&config).await;
    assert_eq!((run.dropped_idle, run.refreshed), (1, 0));
    assert!(s.cache.peek("idle.jpg").await.unwrap().is_none());
    assert!(s.cache.peek("busy.jpg").await.unwrap().is_some());
}

#[tokio::test(start_paused = true)]
async fn a_failing_cache_fails_the_run_fast_and_is_counted() {
    let (service, cache) = one_entry_due_for_refresh().await;
    cache.set(FAILING);
    let run = service.refresh_expiring(&refresher()).await;
    assert!(run.error.is_some() && run.refreshed == 0, "{run:?}");
    cache.set(HANGING);
    // Paused time: the refresher's deadline (10 s) passes at once, the hang (an hour)
    // does not.
    let run = tokio::time::timeout(
        Duration::from_secs(60),
        service.refresh_expiring(&refresher()),
    )
    .await
    .expect("a hanging cache costs one deadline, not a wedged refresher");
    assert!(run.error.is_some());
    let stats = service.stats().refresher;
    assert_eq!((stats.runs, stats.failed_runs), (2, 2));
    cache.set(HEALTHY);
    let run = service.refresh_expiring(&refresher()).await;
    assert_eq!((run.refreshed, run.error), (1, None));
}

#[tokio::test(start_paused = true)]
async fn the_maintenance_task_refreshes_on_its_own_and_stops_promptly() {
    let s = setup_with(config(|c| c.align = Some(Duration::ZERO)), |c| c);
    url_for(&s.service, "a.jpg").await;
    s.clock.advance(Duration::from_secs(3600 - 950));
    let mut maintenance = MaintenanceConfig::default();
    maintenance.refresher.interval = Duration::from_secs(60);
    let handle = s.service.spawn_maintenance(maintenance);
    // The first run starts at once; paused time lets the runtime run it.
    while s.service.stats().refresher.runs == 0 {
        s.service.next_refresh_cycle().await;
    }
    assert_eq!(s.service.stats().refresher.refreshed, 1);
    let (_, runs, next) = s.service.refresher_status();
    assert_eq!(runs.len(), 1);
    assert!(next.is_some());
    let started = tokio::time::Instant::now();
    handle.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(1));
}

// ---------------------------------------------------------------------------------------
// Alerts.

/// Collects what it is sent.
#[derive(Debug, Default)]
struct Collect(
    tokio::sync::Mutex<Vec<image_url_service::Alert>>,
    tokio::sync::Notify,
);

#[async_trait]
impl image_url_service::AlertSink for Collect {
    async fn send(&self, alert: &image_url_service::Alert) {
        self.0.lock().await.push(alert.clone());
        self.1.notify_one();
    }
}

impl Collect {
    /// Waits (bounded) until `n` alerts have arrived.
    async fn received(&self, n: usize) -> Vec<image_url_service::Alert> {
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let notified = self.1.notified();
                if self.0.lock().await.len() >= n {
                    return self.0.lock().await.clone();
                }
                notified.await;
            }
        })
        .await
        .expect("the alerts arrive")
    }
}

#[tokio::test]
async fn cache_degraded_fires_after_its_duration_and_resolves() {
    let (service, cache, clock) = faulty_service(ServiceConfig::default());
    let sink = Arc::new(Collect::default());
    let mut alerts = image_url_service::AlertConfig::default();
    alerts.degraded_after = Duration::from_secs(60);
    alerts.instance = "replica-1".into();
    alerts.sinks = vec![sink.clone()];

    assert!(service.evaluate_alerts(&alerts).await.is_empty());
    cache.set(FAILING);
    assert!(
        service.evaluate_alerts(&alerts).await.is_empty(),
        "not for 60 s yet"
    );
    clock.advance(Duration::from_secs(59));
    assert!(service.evaluate_alerts(&alerts).await.is_empty());
    clock.advance(Duration::from_secs(1));
    let fired = service.evaluate_alerts(&alerts).await;
    assert_eq!(fired.len(), 1);
    assert_eq!(
        (fired[0].rule, fired[0].state),
        ("cache_degraded", image_url_service::AlertState::Firing)
    );
    assert_eq!(service.active_alerts().len(), 1);
    assert!(
        service.evaluate_alerts(&alerts).await.is_empty(),
        "fires once"
    );

    cache.set(HEALTHY);
    let resolved = service.evaluate_alerts(&alerts).await;
    assert_eq!(resolved[0].state, image_url_service::AlertState::Resolved);
    assert!(service.active_alerts().is_empty());
    let received = sink.received(2).await;
    assert_eq!(received[0].instance, "replica-1");
    assert_eq!(received[1].state, image_url_service::AlertState::Resolved);
}

#[tokio::test(start_paused = true)]
async fn failing_refresh_runs_fire_an_alert() {
    let (service, cache, _clock) = faulty_service(config(|c| c.align = Some(Duration::ZERO)));
    let alerts = image_url_service::AlertConfig::default();
    cache.set(FAILING);
    for _ in 0..2 {
        service.refresh_expiring(&refresher()).await;
        assert!(!service
            .evaluate_alerts(&alerts)
            .await
            .iter()
            .any(|a| a.rule == "refresh_failures"));
    }
    service.refresh_expiring(&refresher()).await;
    let fired = service.evaluate_alerts(&alerts).await;
    assert!(
        fired
            .iter()
            .any(|a| a.rule == "refresh_failures" && a.value == 1.0),
        "{fired:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_run_that_overruns_its_interval_delays_the_next_instead_of_doubling() {
    let (service, cache) = one_entry_due_for_refresh().await;
    // Each run hangs until the refresher's own deadline (10 s); the interval is 1 s.
    cache.set(HANGING);
    let mut maintenance = MaintenanceConfig::default();
    maintenance.refresher.interval = Duration::from_secs(1);
    let handle = service.spawn_maintenance(maintenance);
    tokio::time::sleep(Duration::from_secs(35)).await;
    let stats = service.stats().refresher;
    // At most one run per 10 s (plus the interval), never 35 overlapping ones.
    assert!((3..=4).contains(&stats.runs), "{stats:?}");
    assert_eq!(stats.failed_runs, stats.runs);
    handle.shutdown().await;
}
