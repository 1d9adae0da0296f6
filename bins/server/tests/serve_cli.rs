//! `image-url-server serve` as a real process: the embedded default, config errors, and
//! shutdown on SIGTERM.

use std::process::Command;

use common::{http, server, start, terminate};

mod common;

/// Runs `serve` as `command` sets it up; it must fail, and its stderr must say each of
/// `expected`.
fn refused(command: &mut Command, expected: &[&str]) {
    let out = command.output().unwrap();
    assert!(
        !out.status.success(),
        "serve must refuse this configuration"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in expected {
        assert!(err.contains(needle), "{needle:?} missing from: {err}");
    }
}

#[test]
fn invalid_configuration_names_the_key_and_its_source() {
    let dir = tempfile_dir();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[signing]\nttl_secs = \"soon\"\n").unwrap();
    refused(
        server().args(["serve", "--config"]).arg(&file),
        &["signing.ttl_secs", "bad.toml"],
    );
    refused(
        server()
            .arg("serve")
            .env("IMAGE_URL_CACHE__BACKEND", "memcached"),
        &["cache.backend", "IMAGE_URL_"],
    );
    std::fs::write(&file, "[signing]\nttl_secs = 600\npre_refresh_secs = 900\n").unwrap();
    refused(
        server().args(["serve", "--config"]).arg(&file),
        &["pre_refresh"],
    );
    refused(
        server()
            .arg("serve")
            .env("IMAGE_URL_PROXY__TIMEOUT_SECS", "0"),
        &["proxy.timeout_secs", "IMAGE_URL_", "at least 1"],
    );
    refused(
        server().args(["serve", "--config", "/nonexistent.toml"]),
        &["no such file"],
    );
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("image-url-serve-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_on_the_embedded_default_says_what_is_missing_and_stops_on_sigterm() {
    let running = start(
        server()
            .arg("serve")
            .env("IMAGE_URL_SERVER__WORKERS", "1")
            .env("RUST_LOG", "info"),
    );
    let http = http();
    let base = running.base.clone();
    let live = http.get(format!("{base}/livez")).send().await.unwrap();
    assert_eq!(live.status(), 200);
    let res = http
        .get(format!("{base}/api/v1/images/a.jpg/proxy"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    let body = res.text().await.unwrap();
    assert!(
        body.contains("COS_SECRET_ID") && body.contains("COS_SECRET_KEY"),
        "{body}"
    );

    let log = terminate(running);
    assert!(log.contains("COS credentials missing"), "{log}");
    assert!(log.contains("stopped"), "{log}");
    // The default access log: stderr, a line for the 503 (ids are 21 characters).
    assert!(
        log.lines()
            .any(|l| l.contains("image_url::access: request request_id=")
                && l.contains("route=\"/api/v1/images/{key}/proxy\" status=503")),
        "{log}"
    );
}
