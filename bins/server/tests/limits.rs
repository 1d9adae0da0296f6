//! Per-client rate limits through the real server process: 429 problem+json with
//! `Retry-After`, clients told apart by forwarding headers only behind trusted proxies,
//! and a refused configuration for a bad CIDR.

use common::{http, origin, serve_for, serve_signing, server, start};
use serde_json::Value;

mod common;

async fn get(http: &reqwest::Client, url: &str, forwarded_for: Option<&str>) -> reqwest::Response {
    let mut req = http.get(url);
    if let Some(client) = forwarded_for {
        req = req.header("x-forwarded-for", client);
    }
    req.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_over_their_rate_get_429_with_retry_after() {
    let http = http();
    for (trusted, separate_clients) in [("[]", false), (r#"["127.0.0.1"]"#, true)] {
        let running = start(
            serve_signing("AKIDlimits", "limits-secret")
                // A burst of three, then one a second: four local requests take a few
                // milliseconds, far less than the second a refill needs.
                .env("IMAGE_URL_LIMITS__REQUESTS_PER_SECOND", "1")
                .env("IMAGE_URL_LIMITS__BURST", "3")
                .env("IMAGE_URL_LIMITS__TRUSTED_PROXIES", trusted),
        );
        let url = format!("{}/api/v1/images/a.jpg/proxy", running.base);
        for _ in 0..3 {
            assert_eq!(get(&http, &url, Some("203.0.113.1")).await.status(), 302);
        }
        let res = get(&http, &url, Some("203.0.113.1")).await;
        assert_eq!(res.status(), 429);
        let retry_after: u64 = res.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=2).contains(&retry_after), "{retry_after}");
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["status"], 429);
        // Another client behind the same proxy: its own budget only if the proxy is
        // trusted; otherwise the header is the client's own claim and changes nothing.
        let other = get(&http, &url, Some("203.0.113.2")).await.status();
        assert_eq!(other == 302, separate_clients, "trusted: {trusted}");
        // The batch endpoint counts too; ops endpoints do not.
        let batch = format!("{}/api/v1/images/batch/urls?key=a.jpg", running.base);
        assert_eq!(get(&http, &batch, Some("203.0.113.1")).await.status(), 429);
        assert_eq!(
            get(
                &http,
                &format!("{}/livez", running.base),
                Some("203.0.113.1")
            )
            .await
            .status(),
            200
        );
    }
}

#[test]
fn a_bad_trusted_proxy_stops_the_server_with_one_line() {
    let out = server()
        .arg("serve")
        .env("IMAGE_URL_SERVER__LISTEN", "127.0.0.1:0")
        .env("IMAGE_URL_LIMITS__TRUSTED_PROXIES", r#"["10.0.0.0/33"]"#)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    let last = stderr.trim().lines().last().unwrap_or_default();
    assert!(
        last.contains("limits.trusted_proxies") && last.contains("10.0.0.0/33"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_mode_caps_object_size_and_concurrent_streams() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let sparse = |name: &str, len: u64| {
        std::fs::File::create(dir.path().join(name))
            .unwrap()
            .set_len(len)
            .unwrap();
    };
    sparse("small.jpg", 500);
    // Far more than loopback socket buffers hold, so an unread stream stays open.
    sparse("held.jpg", 64 << 20);
    sparse("large.jpg", 200 << 20);
    let origin = origin(dir.path(), "AKIDcaps", "caps-secret").await;
    let running = start(
        serve_for(&origin, "AKIDcaps", "caps-secret")
            .env(
                "IMAGE_URL_PROXY__MAX_OBJECT_BYTES",
                (100u64 << 20).to_string(),
            )
            .env("IMAGE_URL_PROXY__MAX_CONCURRENT", "1"),
    );
    let http = http();
    let url = |key: &str| format!("{}/api/v1/images/{key}/proxy?mode=proxy", running.base);
    let res = http.get(url("small.jpg")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.bytes().await.unwrap().len(), 500);
    // Over the limit by its Content-Length: refused before a byte is streamed.
    let res = http.get(url("large.jpg")).send().await.unwrap();
    assert_eq!(res.status(), 422);
    assert_eq!(res.headers()["content-type"], "application/problem+json");

    // One stream held open (its client reads nothing): the next request gets 503.
    let held = common::http().get(url("held.jpg")).send().await.unwrap();
    assert_eq!(held.status(), 200);
    let res = http.get(url("small.jpg")).send().await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "1");
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    // The client goes away: the slot is given back once the server notices.
    drop(held);
    let freed_by = Instant::now() + Duration::from_secs(10);
    loop {
        let res = http.get(url("small.jpg")).send().await.unwrap();
        if res.status() == 200 {
            break;
        }
        assert_eq!(res.status(), 503);
        assert!(Instant::now() < freed_by, "the slot was never given back");
        tokio::task::yield_now().await;
    }
}
