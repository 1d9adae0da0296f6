//! The exported conformance suite ([`url_cache::testing`]) against every backend and
//! policy: memory × {LRU, LFU, FIFO} and Redis × {LRU, LFU, FIFO}, the Redis ones on one
//! `redis-server` this file starts, each cache under a prefix of its own.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use image_url_tests::RedisServer;
use url_cache::testing::{run_one, CacheFactory};
use url_cache::{EvictionPolicy, ManualClock, MemoryCache, RedisCache, RedisConfig, UrlCache};

struct Memory;

#[async_trait]
impl CacheFactory for Memory {
    async fn make(
        &self,
        capacity: usize,
        policy: EvictionPolicy,
        clock: Arc<ManualClock>,
    ) -> Arc<dyn UrlCache> {
        Arc::new(
            MemoryCache::builder()
                .capacity(capacity)
                .policy(policy)
                .clock(clock)
                .build(),
        )
    }
}

/// [`Redis`] with an L1 in front (the in-process cache the server's `l1_max_entries`
/// turns on): the contract holds through it too.
struct RedisWithL1(RedisServer);

#[async_trait]
impl CacheFactory for RedisWithL1 {
    async fn make(
        &self,
        capacity: usize,
        policy: EvictionPolicy,
        clock: Arc<ManualClock>,
    ) -> Arc<dyn UrlCache> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let mut config = RedisConfig::new(self.0.url());
        config.max_entries = capacity;
        config.policy = policy;
        config.pool_size = 4;
        // No timed flush: a read that overlaps a flush of its key can show the count
        // without the accesses in flight (docs/redis-layout.md), and the suite checks
        // counts exactly. Flushes still run where they matter: before an eviction.
        config.access_flush_interval = std::time::Duration::from_secs(3600);
        config.l1_max_entries = 1000;
        config.key_prefix = format!("conformance-l1-{}:", NEXT.fetch_add(1, Ordering::Relaxed));
        let cache = RedisCache::connect_with_clock(config, clock)
            .await
            .expect("connect");
        Arc::new(cache)
    }
}

/// A Redis of the test's own, stopped when the test ends. (Not a `static`: statics are
/// never dropped, so every test process would leave its `redis-server` running.)
struct Redis(RedisServer);

impl Redis {
    fn start() -> Self {
        Redis(RedisServer::start())
    }
}

#[async_trait]
impl CacheFactory for Redis {
    async fn make(
        &self,
        capacity: usize,
        policy: EvictionPolicy,
        clock: Arc<ManualClock>,
    ) -> Arc<dyn UrlCache> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let mut config = RedisConfig::new(self.0.url());
        config.max_entries = capacity;
        config.policy = policy;
        config.pool_size = 4;
        // No timed flush: a read that overlaps a flush of its key can show the count
        // without the accesses in flight (docs/redis-layout.md), and the suite checks
        // counts exactly. Flushes still run where they matter: before an eviction.
        config.access_flush_interval = std::time::Duration::from_secs(3600);
        config.key_prefix = format!("conformance-{}:", NEXT.fetch_add(1, Ordering::Relaxed));
        let cache = RedisCache::connect_with_clock(config, clock)
            .await
            .expect("connect");
        assert!(cache.is_healthy());
        Arc::new(cache)
    }
}

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        macro_rules! backend_suite {
            ($module:ident, $factory:expr, $policy:expr) => {
                mod $module {
                    use super::*;
                    $(
                        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                        async fn $test() {
                            let factory = $factory;
                            run_one(&factory, $policy, stringify!($test)).await;
                        }
                    )*
                }
            };
        }
        backend_suite!(memory_lru, Memory, EvictionPolicy::lru());
        backend_suite!(memory_lfu, Memory, EvictionPolicy::lfu());
        backend_suite!(memory_fifo, Memory, EvictionPolicy::fifo());
        backend_suite!(redis_lru, Redis::start(), EvictionPolicy::lru());
        backend_suite!(redis_lfu, Redis::start(), EvictionPolicy::lfu());
        backend_suite!(redis_fifo, Redis::start(), EvictionPolicy::fifo());
        backend_suite!(redis_l1_lru, RedisWithL1(RedisServer::start()), EvictionPolicy::lru());
        backend_suite!(redis_l1_lfu, RedisWithL1(RedisServer::start()), EvictionPolicy::lfu());
    };
}

// Listed here so that each runs (and fails) as a test of its own.
conformance!(
    put_get_delete,
    peek_records_nothing,
    expiry_follows_the_injected_clock,
    access_is_recorded,
    eviction_order_follows_the_policy,
    capacity_always_holds,
    expiring_within_and_batched_cleanup,
    stats_count_every_lookup,
    get_many_keeps_order_and_reports_missing,
    concurrent_tasks_on_the_same_keys,
    python_json_entries_round_trip,
    bad_input_is_a_typed_error,
    batched_writes_and_refreshes_keep_the_order,
    get_ready_answers_as_get_does,
);

/// Every exported test is listed above.
#[test]
fn the_list_above_is_the_whole_suite() {
    let listed = include_str!("conformance.rs");
    for name in url_cache::testing::TESTS {
        assert!(
            listed.contains(&format!("    {name},")),
            "{name} is not run here"
        );
    }
}
