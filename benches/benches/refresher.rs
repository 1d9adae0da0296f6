//! One refresher run over 100 000 cached entries of which 10 000 expire soon, on the
//! memory backend and on a real `redis-server` (started here): the run's duration, the
//! entries refreshed, and on Redis the commands it sent and the round trips they took.
//!
//! `cargo bench -p image-url-benches --bench refresher`

use std::sync::Arc;
use std::time::{Duration, Instant};

use cos_sign::{CosSigner, Credentials, Endpoint};
use fred::prelude::{ClientLike, Config as FredConfig};
use image_url_service::{ImageUrlService, RefresherConfig, ServiceConfig};
use image_url_tests::RedisServer;
use url_cache::{CacheEntry, Clock, MemoryCache, RedisCache, RedisConfig, SystemClock, UrlCache};

const TOTAL: usize = 100_000;
const DUE: usize = 10_000;

fn service(cache: Arc<dyn UrlCache>) -> ImageUrlService {
    let signer = CosSigner::new(
        Credentials::new("AKIDbench", "bench-secret"),
        Endpoint::bucket("examplebucket-1250000000", "ap-guangzhou").unwrap(),
    );
    let mut config = ServiceConfig::default();
    config.align = Some(Duration::ZERO);
    ImageUrlService::builder(signer, cache)
        .config(config)
        .build()
        .unwrap()
}

async fn seed(cache: &Arc<dyn UrlCache>) {
    let now = SystemClock.now();
    let mut batch = Vec::with_capacity(1000);
    for i in 0..TOTAL {
        // The first DUE expire in 500 s (inside pre-refresh 900 s + one interval), the
        // rest in an hour.
        let left = if i < DUE { 500 } else { 3600 };
        let key = format!("images/user{}/photo-{i}.jpg", i % 997);
        let url = format!(
            "https://examplebucket-1250000000.cos.ap-guangzhou.myqcloud.com/{key}?q-signature={:0>40}",
            i
        );
        batch.push(CacheEntry::new(
            key,
            url,
            now + Duration::from_secs(left),
            now,
        ));
        if batch.len() == 1000 {
            cache.put_many(std::mem::take(&mut batch)).await.unwrap();
        }
    }
    cache.put_many(batch).await.unwrap();
}

async fn commands_processed(client: &fred::prelude::Client) -> u64 {
    let info: String = client
        .info(Some(fred::types::InfoKind::Stats))
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

async fn one_run(name: &str, cache: Arc<dyn UrlCache>, redis: Option<&fred::prelude::Client>) {
    seed(&cache).await;
    let service = service(cache.clone());
    let before = match redis {
        Some(client) => commands_processed(client).await,
        None => 0,
    };
    let started = Instant::now();
    let run = service.refresh_expiring(&RefresherConfig::default()).await;
    let elapsed = started.elapsed();
    assert_eq!(run.error, None);
    assert_eq!(run.refreshed as usize, DUE);
    let commands = match redis {
        // Less the INFO call itself.
        Some(client) => format!(
            ", {} Redis commands",
            commands_processed(client).await - before - 1
        ),
        None => String::new(),
    };
    // Round trips: one to find the due entries, one per batch of 100 written (100), one
    // for the expired-entry cleanup.
    println!(
        "{name}: refreshed {} of {TOTAL} in {:.0} ms ({:.1} µs per entry){commands}; {} write round trips of {} entries",
        run.refreshed,
        elapsed.as_secs_f64() * 1e3,
        elapsed.as_secs_f64() * 1e6 / DUE as f64,
        DUE.div_ceil(100),
        100
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let memory: Arc<dyn UrlCache> =
            Arc::new(MemoryCache::builder().capacity(TOTAL * 2).build());
        one_run("memory", memory, None).await;

        let server = RedisServer::start();
        let mut config = RedisConfig::new(server.url());
        config.max_entries = TOTAL * 2;
        let redis: Arc<dyn UrlCache> = Arc::new(RedisCache::connect(config).await.unwrap());
        let client =
            fred::prelude::Builder::from_config(FredConfig::from_url(&server.url()).unwrap())
                .build()
                .unwrap();
        client.init().await.unwrap();
        one_run("redis", redis, Some(&client)).await;
    });
}
