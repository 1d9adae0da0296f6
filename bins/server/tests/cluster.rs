//! Two server processes on a 3-master Redis Cluster the test starts: a URL cached through
//! one replica is a hit through the other; one master killed under load costs no request
//! (the replicas sign directly while its slots are gone) and caching resumes when it
//! returns.

use std::time::{Duration, Instant};

use common::{batch, batch_until_cached, http, origin, serve_for, start, Load, Running};
use image_url_tests::RedisCluster;

mod common;

fn replica(origin: &dev_origin::DevOrigin, cluster: &RedisCluster) -> Running {
    start(
        serve_for(origin, "AKIDcluster", "cluster-secret")
            .env("IMAGE_URL_CACHE__BACKEND", "redis")
            .env("IMAGE_URL_CACHE__REDIS_URL", cluster.url())
            .env("IMAGE_URL_CACHE__POOL_SIZE", "2")
            .env("IMAGE_URL_REFRESHER__ENABLED", "false"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_a_cluster_and_survive_a_master_going_down() {
    let mut cluster = RedisCluster::start(3);
    let dir = tempfile::tempdir().unwrap();
    let keys: Vec<String> = (0..30).map(|i| format!("k{i}.jpg")).collect();
    for key in &keys {
        std::fs::write(dir.path().join(key), b"jpeg").unwrap();
    }
    let origin = origin(dir.path(), "AKIDcluster", "cluster-secret").await;
    let a = replica(&origin, &cluster);
    let b = replica(&origin, &cluster);
    let http = http();

    // Cached through A, a hit through B, byte for byte.
    let first = batch(&http, &a.base, &keys).await;
    // Once A's writes have landed (A serves them), B finds them without signing.
    batch_until_cached(&http, &a.base, &keys).await;
    let second = batch(&http, &b.base, &keys).await;
    for key in &keys {
        assert_eq!(first["results"][key]["from_cache"], false, "{first}");
        assert_eq!(second["results"][key]["from_cache"], true, "{second}");
        assert_eq!(first["results"][key]["url"], second["results"][key]["url"]);
    }

    // Load on both replicas; one master is killed, then started again.
    let load = Load::start(&http, &[&a.base, &b.base], &keys, 8);
    load.reach(200, Duration::from_secs(30), "load runs").await;
    assert!(
        cluster.nodes[1].key_count() > 0,
        "the master to kill holds entries"
    );
    cluster.nodes[1].stop();
    load.reach(600, Duration::from_secs(60), "while a master is down")
        .await;
    cluster.nodes[1].start_again();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cluster.nodes.iter().all(|n| n.cluster_ok()) {
        assert!(Instant::now() < deadline, "the cluster did not recover");
        tokio::task::yield_now().await;
    }
    load.reach(300, Duration::from_secs(60), "after the master returns")
        .await;
    assert_eq!(load.stop().await, 0, "every request got its 302");

    // Caching resumes on every slot, the returned master's included: a round of batches
    // ends with every key a hit on both replicas.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let through_a = batch(&http, &a.base, &keys).await;
        let through_b = batch(&http, &b.base, &keys).await;
        let all_hits = keys.iter().all(|k| {
            through_a["results"][k]["from_cache"] == true
                && through_b["results"][k]["from_cache"] == true
        });
        if all_hits {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "caching did not resume: {through_b}"
        );
    }
    origin.stop().await;
}
