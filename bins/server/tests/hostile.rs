//! Hostile input through the real server process and the local origin: path tricks,
//! encodings, header injection, odd methods. Never a 5xx, never a redirect to or a fetch
//! from another host, never a header split, never a new metrics series per attacker.

use common::{server, start};
use cos_sign::Credentials;
use dev_origin::{DevOrigin, OriginConfig};
use reqwest::redirect;

mod common;

/// Raw path segments for `{key}` in `/api/v1/images/{key}/proxy`, sent as they are.
const HOSTILE_KEYS: &[&str] = &[
    "../etc/passwd",
    "%2e%2e/%2e%2e/x",
    "..%2f..%2fx",
    "%2F%2Fevil.com/x",
    "@evil.com/x",
    "%40evil.com%2Fx",
    "..\\..\\windows\\win.ini",
    "%5c%5cevil.com%5cx",
    "a%00b.jpg",
    "%00",
    "a%0d%0aSet-Cookie:%20x=1.jpg",
    "a%0aLocation:%20http://evil.com/.jpg",
    "%C0%AE%C0%AE/x",
    "%252e%252e/x",
    "%E2%80%AEgpj.exe",
    "%ff%fe",
    "caf%C3%A9.jpg",
    "cafe%CC%81.jpg",
    "http://evil.com/x.jpg",
    "//evil.com/x.jpg",
    "%2F",
    "%20",
    ".",
    "..",
    "./.",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_keys_never_reach_another_host_or_a_5xx() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.jpg"), b"jpeg").unwrap();
    let origin = DevOrigin::start(
        OriginConfig::new(
            dir.path(),
            Credentials::new("AKIDhostile", "hostile-secret"),
        ),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let running = start(
        server()
            .arg("serve")
            .env("COS_SECRET_ID", "AKIDhostile")
            .env("COS_SECRET_KEY", "hostile-secret")
            .env("IMAGE_URL_COS__DOMAIN", origin.addr().to_string())
            .env("IMAGE_URL_COS__SCHEME", "http")
            .env("IMAGE_URL_SERVER__WORKERS", "1"),
    );
    let http = reqwest::Client::builder()
        .redirect(redirect::Policy::none())
        .build()
        .unwrap();
    let own_origin = format!("http://{}/", origin.addr());
    let long = "a".repeat(5000);
    let keys = HOSTILE_KEYS.iter().copied().chain([long.as_str()]);
    for key in keys {
        for mode in ["", "?mode=proxy"] {
            let url = format!("{}/api/v1/images/{key}/proxy{mode}", running.base);
            let res = http.get(&url).send().await.unwrap();
            let status = res.status().as_u16();
            assert!(status < 500, "{key}{mode}: {status}");
            for (name, value) in res.headers() {
                let value = value.as_bytes();
                assert!(
                    !value.contains(&b'\r') && !value.contains(&b'\n'),
                    "{key}{mode}: header split in {name}"
                );
                assert_ne!(name.as_str(), "set-cookie", "{key}{mode}");
            }
            if let Some(location) = res.headers().get("location") {
                let location = location.to_str().unwrap();
                assert!(location.starts_with(&own_origin), "{key}{mode}: {location}");
            }
            if status >= 400 {
                assert_eq!(
                    res.headers()["content-type"],
                    "application/problem+json",
                    "{key}{mode}"
                );
            }
        }
        let res = http
            .post(format!("{}/api/v1/images/batch/urls", running.base))
            .json(&serde_json::json!({ "keys": [key, "a.jpg"] }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "batch with {key}");
        let body: serde_json::Value = res.json().await.unwrap();
        for (_, result) in body["results"].as_object().unwrap() {
            if let Some(url) = result["url"].as_str() {
                assert!(url.starts_with(&own_origin), "batch {key}: {url}");
            }
        }
        assert!(
            body["results"]["a.jpg"]["url"].is_string(),
            "its neighbour is served"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_methods_share_one_metrics_series() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let running = start(server().arg("serve").env("IMAGE_URL_SERVER__WORKERS", "1"));
    let http = reqwest::Client::new();
    for i in 0..50 {
        let method = reqwest::Method::from_bytes(format!("ODD{i}").as_bytes()).unwrap();
        let res = http
            .request(
                method,
                format!("{}/api/v1/images/a.jpg/proxy", running.base),
            )
            .send()
            .await
            .unwrap();
        assert!(res.status().is_client_error(), "{}", res.status());
    }
    let metrics = http
        .get(format!("{}/metrics", running.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!metrics.contains("ODD"), "{metrics}");
    assert!(
        metrics.contains(r#"image_url_http_requests_total{method="other",route="/api/v1/images/{key}/proxy",status="405"} 50"#),
        "{metrics}"
    );
}
