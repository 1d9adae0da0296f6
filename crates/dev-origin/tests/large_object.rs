//! A 200 MiB object through the dev origin with flat memory. In a test binary of its own:
//! resident memory is per process, and other tests running beside it would blur it.

use std::sync::atomic::AtomicI64;
use std::sync::Arc;

use cos_sign::{
    CosSigner, Credentials, Endpoint, ObjectKey, PresignOptions, Scheme, SigningWindow,
};
use dev_origin::{DevOrigin, OriginConfig};
use futures::StreamExt;

const NOW: i64 = 1_800_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mib_object_streams_with_flat_memory() {
    let dir = tempfile::tempdir().unwrap();
    let credentials = Credentials::new("AKIDorigin", "origin-secret");
    let clock = Arc::new(AtomicI64::new(NOW));
    let mut config = OriginConfig::new(dir.path(), credentials.clone());
    config.clock = Arc::new(move || clock.load(std::sync::atomic::Ordering::SeqCst));
    let origin = DevOrigin::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let endpoint = Endpoint::custom_domain(&origin.addr().to_string())
        .unwrap()
        .with_scheme(Scheme::Http);
    let signer = CosSigner::new(credentials, endpoint);
    let window = SigningWindow::new(NOW - 60, NOW + 3600).unwrap();
    let url = signer
        .presign_url(
            &ObjectKey::new("big.bin").unwrap(),
            window,
            &PresignOptions::new(),
        )
        .unwrap();
    let size: u64 = 200 * 1024 * 1024;
    let file = std::fs::File::create(dir.path().join("big.bin")).unwrap();
    file.set_len(size).unwrap(); // sparse: no disk needed
    let before = image_url_tests::resident_kib(std::process::id());
    // reqwest is built with `rustls-no-provider` (for the proxy's TLS): pick ring first.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let res = reqwest::get(url).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.content_length(), Some(size));
    let mut stream = res.bytes_stream();
    let (mut received, mut peak) = (0u64, before);
    while let Some(chunk) = stream.next().await {
        received += chunk.unwrap().len() as u64;
        peak = peak.max(image_url_tests::resident_kib(std::process::id()));
    }
    assert_eq!(received, size);
    let grown_mib = (peak.saturating_sub(before)) / 1024;
    println!("resident memory grew by {grown_mib} MiB while streaming 200 MiB");
    assert!(
        grown_mib < 64,
        "resident memory grew by {grown_mib} MiB while streaming 200 MiB"
    );
    origin.stop().await;
}
