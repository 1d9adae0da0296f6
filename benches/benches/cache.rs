#![allow(missing_docs)] // criterion_group! generates undocumented items
//! url-cache lookups: the memory backend (one thread, and two threads sharing one cache)
//! and the Redis backend beside `redis-benchmark`'s GET against the same server, in the
//! same run. See docs/performance.md.
//!
//! Run: `cargo bench -p image-url-benches --bench cache`

use std::hint::black_box;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures::FutureExt;
use image_url_tests::RedisServer;
use url_cache::{
    CacheEntry, Clock, EvictionPolicy, MemoryCache, RedisCache, RedisConfig, SystemClock, UrlCache,
};

const ENTRIES: usize = 10_000;

fn url_450(key: &str) -> String {
    let base = format!("https://examplebucket-1250000000.cos.ap-guangzhou.myqcloud.com/{key}?q-sign-algorithm=sha1&q-ak=AKIDQjz3ltompVjBni5LitkWHFlFpwkn9U5q&q-sign-time=1700000000%3B1700003600&q-key-time=1700000000%3B1700003600&q-header-list=host&q-url-param-list=&q-signature=");
    format!("{base}{}", "0".repeat(450usize.saturating_sub(base.len())))
}

fn keys() -> Vec<String> {
    (0..ENTRIES)
        .map(|i| format!("images/user{}/photo-{i}.jpg", i % 97))
        .collect()
}

fn fill_memory(policy: EvictionPolicy) -> Arc<MemoryCache> {
    let cache = Arc::new(
        MemoryCache::builder()
            .capacity(ENTRIES)
            .policy(policy)
            .build(),
    );
    let now = SystemClock.now();
    for key in keys() {
        let entry = CacheEntry::new(
            key.as_str(),
            url_450(&key),
            now + std::time::Duration::from_secs(3600),
            now,
        );
        cache.put(entry).now_or_never().unwrap().unwrap();
    }
    cache
}

fn bench_memory(c: &mut Criterion) {
    let keys = keys();
    let mut group = c.benchmark_group("memory_get_hit");
    for policy in [
        EvictionPolicy::lru(),
        EvictionPolicy::lfu(),
        EvictionPolicy::fifo(),
    ] {
        let cache = fill_memory(policy);
        let mut i = 0usize;
        group.bench_function(policy.name(), |b| {
            b.iter(|| {
                i = (i + 7919) % ENTRIES;
                // The memory backend never awaits: the future is ready on first poll.
                let found = cache
                    .get(black_box(&keys[i]))
                    .now_or_never()
                    .unwrap()
                    .unwrap();
                assert!(found.is_some());
                found
            })
        });
    }
    // The floor for this access pattern: a plain HashMap lookup and clone of the same
    // entries, without lock, clock, statistics or policy.
    let now = SystemClock.now();
    let plain: std::collections::HashMap<String, CacheEntry> = keys
        .iter()
        .map(|k| {
            (
                k.clone(),
                CacheEntry::new(
                    k.as_str(),
                    url_450(k),
                    now + std::time::Duration::from_secs(3600),
                    now,
                ),
            )
        })
        .collect();
    let mut i = 0usize;
    group.bench_function("baseline: std HashMap get + clone", |b| {
        b.iter(|| {
            i = (i + 7919) % ENTRIES;
            plain.get(black_box(&keys[i])).cloned().unwrap()
        })
    });

    // The same key again and again: the working set stays in the CPU cache.
    let cache = fill_memory(EvictionPolicy::lru());
    group.bench_function("lru (one hot key)", |b| {
        b.iter(|| {
            cache
                .get(black_box(&keys[42]))
                .now_or_never()
                .unwrap()
                .unwrap()
        })
    });
    group.finish();

    // Two threads hammering one cache: total lookups per second. Over all keys, and on
    // one hot key, where every hit would write the same lines if hits shared the entry.
    let mut group = c.benchmark_group("memory_get_hit_2_threads");
    group.throughput(Throughput::Elements(2));
    for (name, policy, stride) in [
        ("lru", EvictionPolicy::lru(), 7919),
        ("fifo", EvictionPolicy::fifo(), 7919),
        ("lru (one hot key)", EvictionPolicy::lru(), 0),
    ] {
        let cache = fill_memory(policy);
        let keys = Arc::new(keys.clone());
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                let workers: Vec<_> = (0..2)
                    .map(|t| {
                        let cache = cache.clone();
                        let keys = keys.clone();
                        std::thread::spawn(move || {
                            let mut i = if stride == 0 { 42 } else { t * 4999 };
                            for _ in 0..iters {
                                i = (i + stride) % ENTRIES;
                                let found = cache.get(&keys[i]).now_or_never().unwrap().unwrap();
                                black_box(found);
                            }
                        })
                    })
                    .collect();
                for w in workers {
                    w.join().unwrap();
                }
                start.elapsed()
            })
        });
    }
    group.finish();

    // Writes: a refresh of a cached key's URL, and a new key into a full cache (one
    // eviction). Writes take the shard to themselves, which costs more than a read.
    let mut group = c.benchmark_group("memory_put");
    let cache = fill_memory(EvictionPolicy::lru());
    let now = SystemClock.now();
    let expires = now + Duration::from_secs(3600);
    let mut i = 0usize;
    group.bench_function("refresh a cached key", |b| {
        b.iter_batched(
            || {
                i = (i + 7919) % ENTRIES;
                CacheEntry::new(keys[i].as_str(), url_450(&keys[i]), expires, now)
            },
            |entry| cache.put(entry).now_or_never().unwrap().unwrap(),
            criterion::BatchSize::SmallInput,
        )
    });
    let mut n = 0u64;
    group.bench_function("new key, evicting one", |b| {
        b.iter_batched(
            || {
                n += 1;
                let key = format!("new/{n}.jpg");
                let url = url_450(&key);
                CacheEntry::new(key, url, expires, now)
            },
            |entry| cache.put(entry).now_or_never().unwrap().unwrap(),
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn bench_redis(c: &mut Criterion) {
    let server = RedisServer::start();
    // A current-thread runtime, as an actix-web worker runs one: the connection tasks
    // and the caller share the thread, so no wake-up crosses threads.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut config = RedisConfig::new(server.url());
    config.pool_size = 1;
    let cache = rt.block_on(RedisCache::connect(config)).unwrap();
    let keys = keys();
    let now = SystemClock.now();
    rt.block_on(async {
        for key in keys.iter().take(1000) {
            cache
                .put(CacheEntry::new(
                    key.as_str(),
                    url_450(key),
                    now + std::time::Duration::from_secs(3600),
                    now,
                ))
                .await
                .unwrap();
        }
    });

    // The same server's plain GET latency, one connection, no pipelining, this run.
    let set = Command::new("redis-cli")
        .args([
            "-p",
            &server.addr().port().to_string(),
            "SET",
            "key:__rand_int__",
            &url_450("x"),
        ])
        .output();
    drop(set);
    match Command::new("redis-benchmark")
        .args([
            "-p",
            &server.addr().port().to_string(),
            "-t",
            "get",
            "-n",
            "50000",
            "-c",
            "1",
            "-d",
            "450",
            "-q",
        ])
        .output()
    {
        Ok(out) => {
            // -q prints progress lines separated by \r; the summary is the last one.
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let summary = text
                .split(['\r', '\n'])
                .rfind(|l| !l.trim().is_empty())
                .unwrap_or("");
            println!(
                "redis-benchmark (same server, -c 1 -d 450): {}",
                summary.trim()
            );
        }
        Err(e) => println!("redis-benchmark not available: {e}"),
    }

    let mut group = c.benchmark_group("redis_get_hit");
    group.measurement_time(Duration::from_secs(5));
    // The client's own floor: one plain GET of a 450-byte value through fred.
    let raw = rt.block_on(async {
        use fred::prelude::{ClientLike, KeysInterface};
        let client = fred::prelude::Client::new(
            fred::prelude::Config::from_url(&server.url()).unwrap(),
            None,
            None,
            None,
        );
        client.init().await.unwrap();
        let _: () = client
            .set("raw:k", url_450("raw"), None, None, false)
            .await
            .unwrap();
        client
    });
    group.bench_function("baseline: fred GET (450 bytes)", |b| {
        use fred::prelude::KeysInterface;
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let v: String = raw.get("raw:k").await.unwrap();
                    black_box(v);
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("url-cache get (1 pipeline)", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for i in 0..iters as usize {
                    let found = cache.get(&keys[i % 1000]).await.unwrap();
                    black_box(found);
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("url-cache get_many (100 keys, 1 pipeline)", |b| {
        let batch: Vec<&str> = keys.iter().take(100).map(String::as_str).collect();
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(cache.get_many(&batch).await.unwrap());
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

criterion_group!(benches, bench_memory, bench_redis);
criterion_main!(benches);
