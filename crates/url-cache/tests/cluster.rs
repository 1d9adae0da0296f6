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
