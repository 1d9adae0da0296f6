//! Two service replicas on one real `redis-server`: the refresh lease makes each entry
//! refreshed once per cycle, by one replica; when the holder dies without handing the
//! lease back, the other takes over once it runs out.

use std::sync::Arc;
use std::time::Duration;

use cos_sign::{CosSigner, Credentials, Endpoint};
use image_url_service::{ImageUrlService, MaintenanceConfig, MaintenanceHandle, ServiceConfig};
use image_url_tests::RedisServer;
use url_cache::{CacheEntry, Clock, RedisCache, RedisConfig, SystemClock, UrlCache};

const SIGNED_PREFIX: &str = "https://examplebucket-1250000000.cos.ap-guangzhou.myqcloud.com/";

async fn replica(
    server: &RedisServer,
    holder: &str,
) -> (ImageUrlService, MaintenanceHandle, Arc<dyn UrlCache>) {
    let cache: Arc<dyn UrlCache> = Arc::new(
        RedisCache::connect(RedisConfig::new(server.url()))
            .await
            .unwrap(),
    );
    let signer = CosSigner::new(
        Credentials::new("AKIDtest", "secret"),
        Endpoint::bucket("examplebucket-1250000000", "ap-guangzhou").unwrap(),
    );
    let mut config = ServiceConfig::default();
    config.align = Some(Duration::ZERO);
    let service = ImageUrlService::builder(signer, cache.clone())
        .config(config)
        .build()
        .unwrap();
    let mut maintenance = MaintenanceConfig::default();
    maintenance.refresher.interval = Duration::from_millis(200);
    maintenance.refresher.holder = holder.to_owned();
    let handle = service.spawn_maintenance(maintenance);
    (service, handle, cache)
}

/// `n` entries that expire in 100 s, with a placeholder URL the refresher replaces.
async fn seed(cache: &Arc<dyn UrlCache>, prefix: &str, n: usize) {
    let now = SystemClock.now();
    let entries = (0..n)
        .map(|i| {
            CacheEntry::new(
                format!("{prefix}/{i}.jpg"),
                "https://placeholder.invalid/x?q-signature=old",
                now + Duration::from_secs(100),
                now,
            )
        })
        .collect();
    cache.put_many(entries).await.unwrap();
}

async fn all_refreshed(cache: &Arc<dyn UrlCache>, prefix: &str, n: usize) -> bool {
    for i in 0..n {
        match cache.peek(&format!("{prefix}/{i}.jpg")).await.unwrap() {
            Some(entry) if entry.url.starts_with(SIGNED_PREFIX) => {}
            _ => return false,
        }
    }
    true
}

/// Waits until `done` holds, checking after each refresh cycle of any of `replicas`
/// (their own progress, not the clock), for 20 s at most.
async fn until(what: &str, replicas: &[&ImageUrlService], mut done: impl AsyncFnMut() -> bool) {
    let waiting = async {
        while !done().await {
            let cycles = replicas.iter().map(|r| Box::pin(r.next_refresh_cycle()));
            futures::future::select_all(cycles).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting: {what}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_entry_is_refreshed_once_per_cycle_and_a_dead_holder_is_replaced() {
    let server = RedisServer::start();
    let (a, a_handle, cache) = replica(&server, "replica-a").await;
    let (b, b_handle, _) = replica(&server, "replica-b").await;
    seed(&cache, "round1", 50).await;
    until("round 1 refreshed", &[&a, &b], async || {
        all_refreshed(&cache, "round1", 50).await
    })
    .await;
    // A few more cycles on both.
    let cycles = |s: &ImageUrlService| {
        let r = s.stats().refresher;
        r.runs + r.lease_skips
    };
    let (a0, b0) = (cycles(&a), cycles(&b));
    until("three more cycles each", &[&a, &b], async || {
        cycles(&a) >= a0 + 3 && cycles(&b) >= b0 + 3
    })
    .await;
    let (ra, rb) = (a.stats().refresher, b.stats().refresher);
    assert_eq!(
        ra.refreshed + rb.refreshed,
        50,
        "each entry refreshed once: {ra:?} {rb:?}"
    );
    let (holder, holder_handle, other, other_handle) = if ra.runs > 0 {
        (a, a_handle, b, b_handle)
    } else {
        (b, b_handle, a, a_handle)
    };
    let other_stats = other.stats().refresher;
    assert_eq!(
        other_stats.runs, 0,
        "only the lease holder runs: {other_stats:?}"
    );
    assert!(other_stats.lease_skips >= 3);

    // The holder dies (its task is aborted: no release). The other replica takes over
    // once the lease (3 intervals) runs out.
    drop(holder_handle);
    drop(holder);
    seed(&cache, "round2", 20).await;
    until("round 2 refreshed by the survivor", &[&other], async || {
        all_refreshed(&cache, "round2", 20).await
    })
    .await;
    assert!(other.stats().refresher.runs > 0);
    assert_eq!(other.stats().refresher.refreshed, 20);
    other_handle.shutdown().await;
}
