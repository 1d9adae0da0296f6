//! The Redis backend on a 3-master Redis Cluster this test starts: the whole exported
//! conformance suite, every policy, with the entries and the index shards spread over
//! the nodes (fred routes each command to its slot's node); leases work there too.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use image_url_tests::RedisCluster;
use url_cache::testing::{run_all, CacheFactory};
use url_cache::{EvictionPolicy, ManualClock, RedisCache, RedisConfig, UrlCache};

struct Cluster(String);

#[async_trait]
impl CacheFactory for Cluster {
    async fn make(
        &self,
        capacity: usize,
        policy: EvictionPolicy,
        clock: Arc<ManualClock>,
    ) -> Arc<dyn UrlCache> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let mut config = RedisConfig::new(&self.0);
        config.max_entries = capacity;
        config.policy = policy;
        config.pool_size = 2;
        // No timed flush: a read that overlaps a flush of its key can show the count
        // without the accesses in flight (docs/redis-layout.md), and the suite checks
        // counts exactly. Flushes still run where they matter: before an eviction.
        config.access_flush_interval = std::time::Duration::from_secs(3600);
        config.key_prefix = format!("cluster-{}:", NEXT.fetch_add(1, Ordering::Relaxed));
        let cache = RedisCache::connect_with_clock(config, clock)
            .await
            .expect("connect to the cluster");
        assert!(cache.is_healthy());
        Arc::new(cache)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_suite_passes_on_a_three_master_cluster() {
    let cluster = RedisCluster::start(3);
    let factory = Cluster(cluster.url());
    for policy in [
        EvictionPolicy::lru(),
        EvictionPolicy::lfu(),
        EvictionPolicy::fifo(),
    ] {
        run_all(&factory, policy).await;
    }
    // Entries and index shards landed on every master, not in one slot.
    for node in &cluster.nodes {
        assert!(node.key_count() > 0, "node {} holds no key", node.addr());
    }

    // A lease is one key (and one script) in one slot: exclusive across replicas there.
    let a = factory
        .make(
            100,
            EvictionPolicy::lru(),
            Arc::new(ManualClock::new(std::time::SystemTime::now())),
        )
        .await;
    assert!(a
        .try_lease("refresher", "a", Duration::from_secs(30))
        .await
        .unwrap());
    assert!(!a
        .try_lease("refresher", "b", Duration::from_secs(30))
        .await
        .unwrap());
    assert_eq!(
        a.lease_holder("refresher").await.unwrap().as_deref(),
        Some("a")
    );
    a.release_lease("refresher", "a").await.unwrap();
    assert!(a
        .try_lease("refresher", "b", Duration::from_secs(30))
        .await
        .unwrap());
}

/// An access flush sends each command to the node of its key's slot: no `MOVED` (which
/// fred would follow, slowly, by synchronising the cluster's slots anew each time). Its
/// scripts were once routed by their SHA-1 instead of their key, and every flush set off
/// thousands of reconnections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_flush_sends_every_command_to_its_slots_node() {
    let cluster = RedisCluster::start(3);
    for (n, policy) in [EvictionPolicy::lru(), EvictionPolicy::lfu()]
        .into_iter()
        .enumerate()
    {
        let mut config = RedisConfig::new(cluster.url());
        config.policy = policy;
        config.access_flush_interval = Duration::from_secs(3600);
        config.key_prefix = format!("flush-{n}:");
        let cache = RedisCache::connect(config).await.unwrap();
        let now = std::time::SystemTime::now();
        let keys: Vec<String> = (0..100).map(|i| format!("routed/{i}.jpg")).collect();
        for key in &keys {
            let entry = url_cache::CacheEntry::new(
                key.as_str(),
                format!("https://b.example/{key}?q-signature=s"),
                now + Duration::from_secs(3600),
                now,
            );
            cache.put(entry).await.unwrap();
            assert!(cache.get(key).await.unwrap().is_some());
        }
        for node in &cluster.nodes {
            assert_eq!(node.command(&["CONFIG", "RESETSTAT"]), "+OK");
        }
        assert_eq!(cache.flush_access().await.unwrap(), 100);
        for node in &cluster.nodes {
            let errors = node.info("errorstats");
            assert!(
                !errors.contains("errorstat_MOVED"),
                "{policy:?}: node {} answered MOVED: {errors}",
                node.addr()
            );
        }
        for key in [&keys[0], &keys[99]] {
            let stored = cache.peek(key).await.unwrap().unwrap();
            assert_eq!(stored.access_count, 1, "{policy:?}: {key}");
        }
        assert_eq!(cache.access_updates_dropped(), 0);
    }
}
