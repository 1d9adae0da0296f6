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
    rt.block_on(async {
        for key in &keys {
            service.get_url(key, &options).await.unwrap();
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
    // The same hits from two threads at once (each with its own current-thread runtime,
    // as two actix workers): time per request over both. With nothing shared written on
    // the hit path, this is no slower than one thread (on 2 cores).
    group.bench_function("service get_url (memory hit), 2 threads", |b| {
        b.iter_custom(|iters| {
            let per_thread = iters.div_ceil(2);
            let started = std::time::Instant::now();
            std::thread::scope(|scope| {
                for t in 0..2usize {
                    let (service, keys, options) = (&service, &keys, &options);
                    scope.spawn(move || {
                        let rt = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .unwrap();
                        for n in 0..per_thread as usize {
                            let key = &keys[(n * 2 + t) % keys.len()];
                            black_box(rt.block_on(service.get_url(key, options)).unwrap());
                        }
                    });
                }
            });
            // Wall time for 2 × per_thread requests, reported per request pair's share.
            started.elapsed() * (iters as u32).max(1) / (2 * per_thread as u32).max(1)
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

criterion_group!(benches, bench_service);
criterion_main!(benches);
