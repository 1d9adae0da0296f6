//! Proxy mode streams a 1 GiB object through the real server process with flat memory.
//!
//! The server runs as its own process so that its resident memory can be read from
//! `/proc/<pid>/status` without the test's own buffers blurring it; the origin (the dev
//! origin, which verifies every signature) runs in the test process and serves a sparse
//! file, so no disk space is needed.

use common::{http, origin, serve_for, start};

use futures::StreamExt;

mod common;

const SIZE: u64 = 1024 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_mode_streams_1_gib_with_flat_server_memory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::File::create(dir.path().join("big.bin"))
        .unwrap()
        .set_len(SIZE)
        .unwrap();
    let origin = origin(dir.path(), "AKIDproxytest", "proxy-test-secret").await;
    let running = start(
        serve_for(&origin, "AKIDproxytest", "proxy-test-secret")
            .env("IMAGE_URL_PROXY__MAX_OBJECT_BYTES", (2 * SIZE).to_string()),
    );
    let pid = running.process.id();
    let base = running.base.clone();

    let http = http();
    assert_eq!(
        http.get(format!("{base}/livez"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // Warm the server up (connection pool, cache entry) before the baseline reading.
    let warm = http
        .get(format!("{base}/api/v1/images/big.bin/proxy?mode=proxy"))
        .header("range", "bytes=0-1023")
        .send()
        .await
        .unwrap();
    assert_eq!(warm.status(), 206);
    assert_eq!(warm.bytes().await.unwrap().len(), 1024);
    let before = image_url_tests::resident_kib(pid);

    let res = http
        .get(format!("{base}/api/v1/images/big.bin/proxy?mode=proxy"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.content_length(),
        Some(SIZE),
        "Content-Length passed through"
    );
    let mut body = res.bytes_stream();
    let (mut received, mut peak, mut chunks) = (0u64, before, 0u64);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        assert!(
            chunk.iter().all(|&b| b == 0),
            "the sparse file reads as zeros"
        );
        received += chunk.len() as u64;
        chunks += 1;
        if chunks % 64 == 0 {
            peak = peak.max(image_url_tests::resident_kib(pid));
        }
    }
    peak = peak.max(image_url_tests::resident_kib(pid));
    assert_eq!(received, SIZE);
    let grown_mib = peak.saturating_sub(before) / 1024;
    println!(
        "server resident memory {before} KiB before, peak {peak} KiB while proxying 1 GiB \
         (+{grown_mib} MiB)"
    );
    assert!(
        grown_mib < 64,
        "the server's resident memory grew by {grown_mib} MiB while proxying 1 GiB"
    );
    drop(running);
    origin.stop().await;
}
