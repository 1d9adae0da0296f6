//! Hostile input through the real server process and the local origin: path tricks,
//! encodings, header injection, odd methods. Never a 5xx, never a redirect to or a fetch
//! from another host, never a header split, never a new metrics series per attacker.

use common::{http, metrics, origin, serve_for, serve_signing, server, start};

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
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.jpg"), b"jpeg").unwrap();
    let origin = origin(dir.path(), "AKIDhostile", "hostile-secret").await;
    let running = start(&mut serve_for(&origin, "AKIDhostile", "hostile-secret"));
    let http = http();
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
    let running = start(server().arg("serve").env("IMAGE_URL_SERVER__WORKERS", "1"));
    let http = http();
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
    let metrics = metrics(&http, &running.base).await;
    assert!(!metrics.contains("ODD"), "{metrics}");
    assert!(
        metrics.contains(r#"image_url_http_requests_total{method="other",route="/api/v1/images/{key}/proxy",status="405"} 50"#),
        "{metrics}"
    );
}

/// Slow and greedy connections: a client that never finishes its request head is cut
/// off at the header timeout; a megabyte of headers is refused with a 4xx; hundreds of
/// idle connections do not stop the server from answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_greedy_and_idle_connections() {
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let running = start(
        serve_signing("AKIDslow", "slow-secret").env("IMAGE_URL_SERVER__HEADER_TIMEOUT_MS", "1000"),
    );
    let addr = running.base.trim_start_matches("http://").to_owned();

    // Slowloris: half a request head, then silence. The server answers 408 (or just
    // closes) once the timeout passes; reading to the end is the signal.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut answer))
        .await
        .expect("the server hangs up on a slow client")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );

    // Hundreds of idle connections held open.
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let http = http();
    let res = http
        .get(format!("{}/api/v1/images/a.jpg/proxy", running.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 302, "served beside 300 idle connections");
    drop(idle);

    // A megabyte of headers, a 100 KB method, a 100 KB path: refused (or the
    // connection closed), never a 5xx.
    let mut headers = b"GET /api/v1/images/a.jpg/proxy HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..1024 {
        headers.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "a".repeat(1000)).as_bytes());
    }
    headers.extend_from_slice(b"\r\n");
    let method = format!("{} /livez HTTP/1.1\r\nHost: x\r\n\r\n", "M".repeat(100_000));
    let path = format!(
        "GET /api/v1/images/{}/proxy HTTP/1.1\r\nHost: x\r\n\r\n",
        "p".repeat(100_000)
    );
    for (what, request) in [
        ("1 MB of headers", headers),
        ("a 100 KB method", method.into_bytes()),
        ("a 100 KB path", path.into_bytes()),
    ] {
        let status = raw_status(&addr, &request).await;
        assert!(
            status.is_none_or(|s| (400..500).contains(&s)),
            "{what}: {status:?}"
        );
    }

    // 5 000 keys in one batch, 10 000 braces as a body: 400s.
    let keys: Vec<String> = (0..5000).map(|i| format!("k{i}.jpg")).collect();
    let res = http
        .post(format!("{}/api/v1/images/batch/urls", running.base))
        .json(&serde_json::json!({ "keys": keys }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let res = http
        .post(format!("{}/api/v1/images/batch/urls", running.base))
        .header("content-type", "application/json")
        .body("{".repeat(10_000))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
}

/// Sends `request` on a fresh connection and reads the answer's status; `None` if the
/// server closed the connection without one.
async fn raw_status(addr: &str, request: &[u8]) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The server may stop reading (and close) before all of it is written.
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await
    .expect("the server answers or hangs up within 10 s");
    if let Err(err) = read {
        // Hanging up hard (a reset) is an answer too.
        assert!(
            matches!(
                err.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
            "{err}"
        );
    }
    String::from_utf8_lossy(&answer)
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
}
