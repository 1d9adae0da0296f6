//! Two server processes on a 3-master Redis Cluster the test starts: a URL cached through
//! one replica is a hit through the other; one master killed under load costs no request
//! (the replicas sign directly while its slots are gone) and caching resumes when it
//! returns.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{http, origin, serve_for, start, Running};
use image_url_tests::RedisCluster;
use serde_json::{json, Value};

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

async fn batch(http: &reqwest::Client, base: &str, keys: &[String]) -> Value {
    http.post(format!("{base}/api/v1/images/batch/urls"))
        .json(&json!({ "keys": keys }))
        .send()
        .await
        .expect("the replica answers")
        .json()
        .await
        .expect("a JSON body")
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
    let second = batch(&http, &b.base, &keys).await;
    for key in &keys {
        assert_eq!(first["results"][key]["from_cache"], false, "{first}");
        assert_eq!(second["results"][key]["from_cache"], true, "{second}");
        assert_eq!(first["results"][key]["url"], second["results"][key]["url"]);
    }

    // Load on both replicas; one master is killed, then started again.
    let answered = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(tokio::sync::Notify::new());
    let mut load = Vec::new();
    for worker in 0..8 {
        let base = if worker % 2 == 0 {
            a.base.clone()
        } else {
            b.base.clone()
        };
        let (http, keys) = (http.clone(), keys.clone());
        let (answered, failed, stop, progress) = (
            answered.clone(),
            failed.clone(),
            stop.clone(),
            progress.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut i = worker;
            while !stop.load(Ordering::Relaxed) {
                let key = &keys[i % keys.len()];
                i += 1;
                let res = http
                    .get(format!("{base}/api/v1/images/{key}/proxy"))
                    .send()
                    .await;
                match res {
                    Ok(res) if res.status() == 302 => {}
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                answered.fetch_add(1, Ordering::Relaxed);
                progress.notify_waiters();
            }
        }));
    }
    let reach = |n: usize| {
        let (answered, progress) = (answered.clone(), progress.clone());
        async move {
            loop {
                let notified = progress.notified();
                if answered.load(Ordering::Relaxed) >= n {
                    return;
                }
                notified.await;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), reach(200))
        .await
        .expect("load runs");
    assert!(
        cluster.nodes[1].key_count() > 0,
        "the master to kill holds entries"
    );
    cluster.nodes[1].stop();
    let at_kill = answered.load(Ordering::Relaxed);
    tokio::time::timeout(Duration::from_secs(60), reach(at_kill + 600))
        .await
        .expect("requests go on while a master is down");
    cluster.nodes[1].start_again();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cluster.nodes.iter().all(|n| n.cluster_ok()) {
        assert!(Instant::now() < deadline, "the cluster did not recover");
        tokio::task::yield_now().await;
    }
    let at_return = answered.load(Ordering::Relaxed);
    tokio::time::timeout(Duration::from_secs(60), reach(at_return + 300))
        .await
        .expect("requests go on after the master returns");
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "every request got its 302"
    );

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
