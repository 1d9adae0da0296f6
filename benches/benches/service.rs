#![allow(missing_docs)] // criterion_group! generates undocumented items
//! `ImageUrlService::get_url` on a memory-cache hit and a 100-key batch, beside the raw
//! cos-sign presign, in the same run. See docs/performance.md.
//!
//! Run: `cargo bench -p image-url-benches --bench service`

use std::hint::black_box;
use std::sync::Arc;

use cos_sign::{CosSigner, Credentials, Endpoint, ObjectKey, PresignOptions, SigningWindow};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use image_url_service::{ImageUrlService, UrlOptions};
use url_cache::MemoryCache;

fn signer() -> CosSigner {
    CosSigner::new(
        Credentials::new(
            "AKIDQjz3ltompVjBni5LitkWHFlFpwkn9U5q",
            "BQYIM75p8x0iWVFSIgqEKwFprpRSVHlz",
        ),
        Endpoint::bucket("examplebucket-1250000000", "ap-guangzhou").unwrap(),
    )
}

fn bench_service(c: &mut Criterion) {
    // A current-thread runtime, as an actix-web worker has.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let service = ImageUrlService::builder(signer(), Arc::new(MemoryCache::new()))
        .build()
        .unwrap();
    let keys: Vec<ObjectKey> = (0..1000)
        .map(|i| ObjectKey::new(&format!("images/user{}/photo-{i}.jpg", i % 37)).unwrap())
        .collect();
    let options = UrlOptions::new();
    // A cache small enough to be one shard (below 4096 entries), which every thread's
    // lookups share.
    let small = ImageUrlService::builder(
        signer(),
        Arc::new(MemoryCache::builder().capacity(2000).build()),
    )
    .build()
    .unwrap();
    // Two services with a cache each, one per thread: the same lookups with nothing
    // shared at all, which shows what a second thread costs this working set on this
    // machine's cores and caches by themselves.
    let apart = [0, 1].map(|_| {
        ImageUrlService::builder(signer(), Arc::new(MemoryCache::new()))
            .build()
            .unwrap()
    });
    rt.block_on(async {
        for key in &keys {
            service.get_url(key, &options).await.unwrap();
            small.get_url(key, &options).await.unwrap();
            for own in &apart {
                own.get_url(key, &options).await.unwrap();
            }
        }
    });

    let mut group = c.benchmark_group("get_url");
    let raw = signer();
    let window = SigningWindow::new(1_700_000_000, 1_700_003_600).unwrap();
    let plain = PresignOptions::new();
    group.bench_function("baseline: cos-sign presign_url", |b| {
        b.iter(|| {
            raw.presign_url(black_box(&keys[7]), window, &plain)
                .unwrap()
        })
    });
    let mut i = 0usize;
    // Timed inside one `block_on`, as a worker runs its requests: entering the runtime
    // per call (about 100 ns) is not the service's cost.
    group.bench_function("service get_url (memory hit)", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let started = std::time::Instant::now();
                for _ in 0..iters {
                    i = (i + 1) % keys.len();
                    let answer = service
                        .get_url(black_box(&keys[i]), &options)
                        .await
                        .unwrap();
                    debug_assert!(answer.from_cache);
                    black_box(answer);
                }
                started.elapsed()
            })
        })
    });
    group.bench_function("service get_url (memory hit), block_on per call", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            rt.block_on(service.get_url(black_box(&keys[i]), &options))
                .unwrap()
        })
    });
    let uncached = UrlOptions::new().use_cache(false);
    group.bench_function("service get_url (use_cache=false: sign only)", |b| {
        b.iter(|| {
            rt.block_on(service.get_url(black_box(&keys[3]), &uncached))
                .unwrap()
        })
    });
    group.finish();

    // One thread against two at once, timed from a barrier: the time a request takes
    // as its thread sees it. With no cache line written by both threads per request, two
    // threads take as long per request as one, and the raw presign (nothing shared) shows
    // what a second busy thread costs on this machine by itself. Key sets: 8 hot keys
    // that both threads ask for, served from each thread's own copies; and 1000 keys
    // split between the threads, which go to the shards (16 here) and share no entry,
    // only the shards; the same in a cache of one shard; and the same split with a
    // service and cache per thread, sharing nothing: a presign is arithmetic, so this is
    // the baseline for lookups, which wait on memory and feel a second thread in the
    // caches the two cores share.
    let mut group = c.benchmark_group("get_url_threads");
    for threads in [1, 2] {
        group.bench_function(format!("baseline: presign_url, {threads} thread(s)"), |b| {
            b.iter_custom(|iters| {
                on_threads(threads, &keys, false, |_, mine, start| {
                    start.wait();
                    let started = std::time::Instant::now();
                    for n in 0..iters as usize {
                        let key = &mine[n % mine.len()];
                        black_box(raw.presign_url(black_box(key), window, &plain).unwrap());
                    }
                    started.elapsed()
                })
            })
        });
    }
    // Each set: its keys, whether the threads split them, and the service each thread
    // asks (the thread's number picks one of the two; both the same but in the last).
    let sets = [
        ("8 hot keys", 8, false, [&service, &service]),
        ("1000 keys", keys.len(), true, [&service, &service]),
        ("1000 keys, one shard", keys.len(), true, [&small, &small]),
        (
            "1000 keys, a service each (shares nothing)",
            keys.len(),
            true,
            [&apart[0], &apart[1]],
        ),
    ];
    for (set, count, split, services) in sets {
        for threads in [1, 2] {
            let name = format!("get_url (memory hit), {set}, {threads} thread(s)");
            group.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    on_threads(threads, &keys[..count], split, |thread, mine, start| {
                        let service = services[thread % 2];
                        // A current-thread runtime, as an actix worker runs.
                        let rt = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .unwrap();
                        rt.block_on(async {
                            start.wait();
                            let started = std::time::Instant::now();
                            for n in 0..iters as usize {
                                let key = &mine[n % mine.len()];
                                let answer =
                                    service.get_url(black_box(key), &options).await.unwrap();
                                debug_assert!(answer.from_cache);
                                black_box(answer);
                            }
                            started.elapsed()
                        })
                    })
                })
            });
        }
    }
    group.finish();

    let mut group = c.benchmark_group("get_many");
    group.throughput(Throughput::Elements(100));
    let batch: Vec<String> = keys
        .iter()
        .take(100)
        .map(|k| k.as_str().to_owned())
        .collect();
    let batch: Vec<&str> = batch.iter().map(String::as_str).collect();
    group.bench_function("100 keys, all cached", |b| {
        b.iter(|| {
            rt.block_on(service.get_many(black_box(&batch), &options, None))
                .unwrap()
        })
    });
    group.finish();
}

/// Runs `body` on `threads` threads at once, each with its number, its keys (all of
/// `keys`, or with `split` an equal share) and a barrier to wait on once set up; the
/// longest time any thread reports.
fn on_threads(
    threads: usize,
    keys: &[ObjectKey],
    split: bool,
    body: impl Fn(usize, &[ObjectKey], &std::sync::Barrier) -> std::time::Duration + Sync,
) -> std::time::Duration {
    let start = std::sync::Barrier::new(threads);
    let share = if split {
        keys.len() / threads
    } else {
        keys.len()
    };
    std::thread::scope(|scope| {
        let running: Vec<_> = (0..threads)
            .map(|t| {
                let mine = if split {
                    &keys[t * share..(t + 1) * share]
                } else {
                    keys
                };
                let (body, start) = (&body, &start);
                scope.spawn(move || body(t, mine, start))
            })
            .collect();
        running
            .into_iter()
            .map(|thread| thread.join().unwrap())
            .max()
            .unwrap_or_default()
    })
}

criterion_group!(benches, bench_service);
criterion_main!(benches);
