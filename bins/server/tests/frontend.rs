//! What the `<smart-image>` element needs from the server, through the real process: the
//! embedded module with its cache headers, CORS for pages on other origins, and the
//! batch endpoint's `force`.

use common::{http, origin, serve_for, serve_signing, start};
use serde_json::{json, Value};

mod common;

#[tokio::test]
async fn the_module_is_served_with_an_etag_and_a_long_lifetime_when_versioned() {
    let server = start(&mut serve_signing("AKIDfront", "front-secret"));
    let http = http();
    let res = http
        .get(format!("{}/static/smart-image.js", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let headers = res.headers().clone();
    assert_eq!(headers["content-type"], "text/javascript; charset=utf-8");
    assert_eq!(headers["cache-control"], "public, max-age=300");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let etag = headers["etag"].to_str().unwrap().to_owned();
    let body = res.bytes().await.unwrap();
    let committed = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../web/dist/smart-image.js"
    ))
    .unwrap();
    assert_eq!(body.as_ref(), committed.as_slice());
    assert!(std::str::from_utf8(&body)
        .unwrap()
        .contains("customElements.define(\"smart-image\""));

    let revalidated = http
        .get(format!("{}/static/smart-image.js", server.base))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(revalidated.status(), 304);
    assert!(revalidated.bytes().await.unwrap().is_empty());

    // The versioned path is the ETag's hash, cached for a year; any other version is not
    // there.
    let version = etag.trim_matches('"');
    let versioned = http
        .get(format!("{}/static/smart-image.{version}.js", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(versioned.status(), 200);
    assert_eq!(
        versioned.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    for missing in ["smart-image.0123456789abcdef.js", "other.js", "..%2Fconfig"] {
        let res = http
            .get(format!("{}/static/{missing}", server.base))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404, "{missing}");
        assert_eq!(res.headers()["content-type"], "application/problem+json");
    }
}

/// A preflight and a batch request from `origin`, as a browser sends them.
async fn cross_origin(base: &str, origin: &str) -> (reqwest::Response, reqwest::Response) {
    let http = http();
    let preflight = http
        .request(
            reqwest::Method::OPTIONS,
            format!("{base}/api/v1/images/batch/urls"),
        )
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    let batch = http
        .post(format!("{base}/api/v1/images/batch/urls"))
        .header("origin", origin)
        .json(&json!({ "keys": ["a.jpg"] }))
        .send()
        .await
        .unwrap();
    (preflight, batch)
}

#[tokio::test]
async fn listed_origins_may_call_the_api_and_others_may_not() {
    let server = start(serve_signing("AKIDfront", "front-secret").env(
        "IMAGE_URL_SERVER__CORS_ORIGINS",
        r#"["http://app.test:5173"]"#,
    ));
    let (preflight, batch) = cross_origin(&server.base, "http://app.test:5173").await;
    assert!(preflight.status().is_success(), "{}", preflight.status());
    let h = preflight.headers();
    assert_eq!(h["access-control-allow-origin"], "http://app.test:5173");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert!(h["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    assert!(h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .contains("content-type"));
    assert_eq!(batch.status(), 200);
    assert_eq!(
        batch.headers()["access-control-allow-origin"],
        "http://app.test:5173"
    );
    assert!(batch.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .contains("x-request-id"));

    // Another origin gets its answer without CORS headers: its browser keeps it from the
    // page.
    let (preflight, batch) = cross_origin(&server.base, "http://evil.test").await;
    assert!(!preflight
        .headers()
        .contains_key("access-control-allow-origin"));
    assert!(!batch.headers().contains_key("access-control-allow-origin"));
}

#[tokio::test]
async fn a_wildcard_admits_every_origin_but_never_credentials() {
    let server = start(
        serve_signing("AKIDfront", "front-secret")
            .env("IMAGE_URL_SERVER__CORS_ORIGINS", r#"["*"]"#),
    );
    let (preflight, batch) = cross_origin(&server.base, "http://anywhere.test").await;
    assert!(preflight.status().is_success());
    assert_eq!(preflight.headers()["access-control-allow-origin"], "*");
    assert!(!preflight
        .headers()
        .contains_key("access-control-allow-credentials"));
    assert_eq!(batch.headers()["access-control-allow-origin"], "*");
    assert!(!batch
        .headers()
        .contains_key("access-control-allow-credentials"));
}

#[tokio::test]
async fn without_cors_origins_no_page_elsewhere_may_read_answers() {
    let server = start(&mut serve_signing("AKIDfront", "front-secret"));
    let (preflight, batch) = cross_origin(&server.base, "http://app.test:5173").await;
    assert!(!preflight
        .headers()
        .contains_key("access-control-allow-origin"));
    assert_eq!(batch.status(), 200);
    assert!(!batch.headers().contains_key("access-control-allow-origin"));
}

#[test]
fn a_cors_origin_that_is_not_an_origin_is_refused_at_startup() {
    let out = common::server()
        .arg("serve")
        .env("IMAGE_URL_SERVER__LISTEN", "127.0.0.1:0")
        .env(
            "IMAGE_URL_SERVER__CORS_ORIGINS",
            r#"["https://app.example.com/path"]"#,
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("server.cors_origins"), "{stderr}");
    assert!(stderr.contains("is not an origin"), "{stderr}");
}

/// `force` signs anew once per key per minute; past that the cached URL comes back, so
/// that clients cannot make every request re-sign.
#[tokio::test]
async fn force_signs_anew_at_most_once_per_key_per_minute() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.jpg"), b"jpeg").unwrap();
    let origin = origin(dir.path(), "AKIDfront", "front-secret").await;
    let server = start(&mut serve_for(&origin, "AKIDfront", "front-secret"));
    let http = http();
    let batch = |query: &'static str| {
        let http = http.clone();
        let url = format!("{}/api/v1/images/batch/urls{query}", server.base);
        async move {
            let body: Value = http
                .post(url)
                .json(&json!({ "keys": ["a.jpg", "b.jpg"] }))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            body
        }
    };
    let first = batch("").await;
    assert_eq!(first["results"]["a.jpg"]["from_cache"], false, "{first}");
    // The service stores a miss's URL after answering, detached.
    let keys = ["a.jpg".to_owned(), "b.jpg".to_owned()];
    let cached = common::batch_until_cached(&http, &server.base, &keys).await;
    assert_eq!(
        cached["results"]["a.jpg"]["url"],
        first["results"]["a.jpg"]["url"]
    );
    let forced = batch("?force=true").await;
    assert_eq!(forced["results"]["a.jpg"]["from_cache"], false, "{forced}");
    assert_eq!(forced["results"]["b.jpg"]["from_cache"], false, "{forced}");
    let again = batch("?force=true").await;
    assert_eq!(again["results"]["a.jpg"]["from_cache"], true, "{again}");
    assert_eq!(again["results"]["b.jpg"]["from_cache"], true, "{again}");

    let bad = http
        .post(format!(
            "{}/api/v1/images/batch/urls?force=yes",
            server.base
        ))
        .json(&json!({ "keys": ["a.jpg"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(common::problem_type(bad, 400).await, "bad-request");
    origin.stop().await;
}
