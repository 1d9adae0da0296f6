#![allow(missing_docs)] // criterion_group! generates undocumented items
//! Presigning one URL: cos-sign beside reqsign-tencent-cos (the Rust peer), same key,
//! same lifetime, host signed by both. See docs/performance.md.
//!
//! Run: `cargo bench -p image-url-benches --bench presign`

use std::hint::black_box;
use std::time::Duration;

use cos_sign::{CosSigner, Credentials, Endpoint, ObjectKey, PresignOptions, SigningWindow};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use reqsign_core::{Context, SignRequest};

const SECRET_ID: &str = "AKIDQjz3ltompVjBni5LitkWHFlFpwkn9U5q";
const SECRET_KEY: &str = "BQYIM75p8x0iWVFSIgqEKwFprpRSVHlz";
const KEY: &str = "images/user123/2024/image.jpg";
const HOST: &str = "examplebucket-1250000000.cos.ap-beijing.myqcloud.com";

fn bench_presign(c: &mut Criterion) {
    let mut group = c.benchmark_group("presign_one_url");

    let signer = CosSigner::new(
        Credentials::new(SECRET_ID, SECRET_KEY),
        Endpoint::bucket("examplebucket-1250000000", "ap-beijing").unwrap(),
    );
    let key = ObjectKey::new(KEY).unwrap();
    let window = SigningWindow::new(1_700_000_000, 1_700_003_600).unwrap();
    let plain = PresignOptions::new();
    group.bench_function("cos-sign", |b| {
        b.iter(|| {
            signer
                .presign_url(black_box(&key), black_box(window), &plain)
                .unwrap()
        })
    });

    let with_params = PresignOptions::new()
        .param("response-content-type", "image/webp")
        .param("imageMogr2/thumbnail/200x", "");
    group.bench_function("cos-sign (2 params)", |b| {
        b.iter(|| {
            signer
                .presign_url(black_box(&key), black_box(window), &with_params)
                .unwrap()
        })
    });

    // What the service does to every cached URL before serving it.
    let signed = signer.presign_url(&key, window, &plain).unwrap();
    group.bench_function("cos-sign presigned_window (check a cached URL)", |b| {
        b.iter(|| {
            signer
                .presigned_window(black_box(&key), black_box(&signed))
                .unwrap()
        })
    });

    group.bench_function("cos-sign (key validation + sign)", |b| {
        b.iter(|| {
            let key = ObjectKey::new(black_box(KEY)).unwrap();
            signer.presign_url(&key, window, &plain).unwrap()
        })
    });

    let ctx = Context::new();
    let reqsign = reqsign_tencent_cos::RequestSigner::new();
    let credential = reqsign_tencent_cos::Credential {
        secret_id: SECRET_ID.into(),
        secret_key: SECRET_KEY.into(),
        security_token: None,
        expires_in: None,
    };
    let url = format!("https://{HOST}/{KEY}");
    group.bench_function("reqsign-tencent-cos", |b| {
        b.iter_batched(
            || http::Request::get(&url).body(()).unwrap().into_parts().0,
            |mut parts| {
                pollster::block_on(reqsign.sign_request(
                    &ctx,
                    &mut parts,
                    Some(&credential),
                    Some(Duration::from_secs(3600)),
                ))
                .unwrap();
                parts.uri.to_string()
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench_presign);
criterion_main!(benches);
