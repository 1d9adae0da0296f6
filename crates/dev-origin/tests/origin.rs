//! The dev origin over real HTTP: every status it promises, both signature forms, the
//! official SDK's vectors, path escapes, and a 200 MiB object with flat memory.

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use cos_sign::{
    CosSigner, Credentials, Endpoint, Method, ObjectKey, PresignOptions, Scheme, SigningWindow,
};
use dev_origin::{DevOrigin, OriginConfig};
use reqwest::header;

const NOW: i64 = 1_800_000_000;

struct Origin {
    origin: Option<DevOrigin>,
    dir: tempfile::TempDir,
    clock: Arc<AtomicI64>,
    signer: CosSigner,
    credentials: Credentials,
    http: reqwest::Client,
}

impl Origin {
    async fn start() -> Self {
        Self::start_with(Credentials::new("AKIDorigin", "origin-secret")).await
    }

    async fn start_with(credentials: Credentials) -> Self {
        Self::start_configured(credentials, |_| {}).await
    }

    async fn start_configured(
        credentials: Credentials,
        change: impl FnOnce(&mut OriginConfig),
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.jpg"), b"0123456789abcdefghij").unwrap();
        std::fs::create_dir_all(dir.path().join("photos/2024")).unwrap();
        std::fs::write(dir.path().join("photos/2024/b c.png"), b"png bytes").unwrap();
        let clock = Arc::new(AtomicI64::new(NOW));
        let mut config = OriginConfig::new(dir.path(), credentials.clone());
        let c = clock.clone();
        config.clock = Arc::new(move || c.load(Ordering::SeqCst));
        change(&mut config);
        let origin = DevOrigin::start(config, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let endpoint = Endpoint::custom_domain(&origin.addr().to_string())
            .unwrap()
            .with_scheme(Scheme::Http);
        Origin {
            origin: Some(origin),
            dir,
            clock,
            signer: CosSigner::new(credentials.clone(), endpoint),
            credentials,
            http: http_client(),
        }
    }

    fn url(&self, key: &str, options: &PresignOptions) -> String {
        let window = SigningWindow::new(NOW - 60, NOW + 3600).unwrap();
        self.signer
            .presign_url(&ObjectKey::new(key).unwrap(), window, options)
            .unwrap()
    }

    fn base(&self) -> String {
        format!("http://{}", self.origin.as_ref().unwrap().addr())
    }

    async fn stop(mut self) {
        if let Some(origin) = self.origin.take() {
            origin.stop().await;
        }
    }
}

/// reqwest is built with `rustls-no-provider` (for the proxy's TLS): pick ring first.
fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_head_carry_the_object_metadata() {
    let o = Origin::start().await;
    let res = o
        .http
        .get(o.url("a.jpg", &PresignOptions::new()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let h = res.headers().clone();
    assert_eq!(h[header::CONTENT_TYPE], "image/jpeg");
    assert_eq!(h[header::CONTENT_LENGTH], "20");
    assert_eq!(h[header::ACCEPT_RANGES], "bytes");
    assert!(
        h[header::ETAG].to_str().unwrap().starts_with('"'),
        "strong ETag"
    );
    assert!(h.contains_key(header::LAST_MODIFIED));
    assert_eq!(res.bytes().await.unwrap().as_ref(), b"0123456789abcdefghij");

    let head_url = o.url("a.jpg", &PresignOptions::new().method(Method::Head));
    let res = o.http.head(head_url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()[header::CONTENT_LENGTH], "20");
    assert_eq!(res.headers()[header::ETAG], h[header::ETAG]);

    // Keys with spaces and directories.
    let res = o
        .http
        .get(o.url("photos/2024/b c.png", &PresignOptions::new()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "image/png");
    o.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_conditionals_and_overrides() {
    let o = Origin::start().await;
    let url = o.url("a.jpg", &PresignOptions::new());
    let res = o
        .http
        .get(&url)
        .header(header::RANGE, "bytes=2-5")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 206);
    assert_eq!(res.headers()[header::CONTENT_RANGE], "bytes 2-5/20");
    assert_eq!(res.bytes().await.unwrap().as_ref(), b"2345");
    let res = o
        .http
        .get(&url)
        .header(header::RANGE, "bytes=100-")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 416);

    let full = o.http.get(&url).send().await.unwrap();
    let etag = full.headers()[header::ETAG].clone();
    let modified = full.headers()[header::LAST_MODIFIED].clone();
    let res = o
        .http
        .get(&url)
        .header(header::IF_NONE_MATCH, etag)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 304);
    let res = o
        .http
        .get(&url)
        .header(header::IF_MODIFIED_SINCE, modified)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 304);

    let options = PresignOptions::new()
        .param("response-content-type", "image/webp")
        .param(
            "response-content-disposition",
            "attachment; filename=\"x.jpg\"",
        )
        .param("response-cache-control", "max-age=60");
    let res = o.http.get(o.url("a.jpg", &options)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "image/webp");
    assert_eq!(
        res.headers()[header::CONTENT_DISPOSITION],
        "attachment; filename=\"x.jpg\""
    );
    assert_eq!(res.headers()[header::CACHE_CONTROL], "max-age=60");
    o.stop().await;
}

async fn error_code(res: reqwest::Response) -> (u16, String) {
    let status = res.status().as_u16();
    let body = res.text().await.unwrap();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_are_enforced() {
    let o = Origin::start().await;
    // No signature.
    let (status, body) = error_code(
        o.http
            .get(format!("{}/a.jpg", o.base()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403);
    assert!(body.contains("<Code>AccessDenied</Code>"), "{body}");

    // Tampered query.
    let url = o.url(
        "a.jpg",
        &PresignOptions::new().param("response-content-type", "image/webp"),
    );
    let tampered = url.replace("image%2Fwebp", "text%2Fhtml");
    let (status, body) = error_code(o.http.get(tampered).send().await.unwrap()).await;
    assert_eq!(status, 403);
    assert!(
        body.contains("<Code>SignatureDoesNotMatch</Code>"),
        "{body}"
    );

    // Another key's signature.
    let other = o
        .url("a.jpg", &PresignOptions::new())
        .replace("/a.jpg?", "/photos/2024/b%20c.png?");
    assert_eq!(o.http.get(other).send().await.unwrap().status(), 403);

    // A signed header must match.
    let url = o.url(
        "a.jpg",
        &PresignOptions::new().header("x-cos-traffic-limit", "819200"),
    );
    assert_eq!(o.http.get(&url).send().await.unwrap().status(), 403);
    let res = o
        .http
        .get(&url)
        .header("x-cos-traffic-limit", "819200")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = o
        .http
        .get(&url)
        .header("x-cos-traffic-limit", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);

    // A signed host that differs.
    let elsewhere = CosSigner::new(
        o.credentials.clone(),
        Endpoint::custom_domain("elsewhere.example")
            .unwrap()
            .with_scheme(Scheme::Http),
    );
    let window = SigningWindow::new(NOW - 60, NOW + 60).unwrap();
    let url = elsewhere
        .presign_url(
            &ObjectKey::new("a.jpg").unwrap(),
            window,
            &PresignOptions::new(),
        )
        .unwrap();
    let url = url.replace("http://elsewhere.example", &o.base());
    assert_eq!(o.http.get(url).send().await.unwrap().status(), 403);

    // Expired, and not yet valid.
    let url = o.url("a.jpg", &PresignOptions::new());
    o.clock.store(NOW + 3601, Ordering::SeqCst);
    let (status, body) = error_code(o.http.get(&url).send().await.unwrap()).await;
    assert_eq!(status, 403);
    assert!(body.contains("Request has expired"), "{body}");
    o.clock.store(NOW - 61, Ordering::SeqCst);
    assert_eq!(o.http.get(&url).send().await.unwrap().status(), 403);
    o.clock.store(NOW, Ordering::SeqCst);

    // The Authorization header form.
    let window = SigningWindow::new(NOW - 60, NOW + 60).unwrap();
    let signed = o
        .signer
        .authorization(
            &ObjectKey::new("a.jpg").unwrap(),
            window,
            &PresignOptions::new(),
        )
        .unwrap();
    let res = o
        .http
        .get(format!("{}/a.jpg", o.base()))
        .header(header::AUTHORIZATION, signed.authorization)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    o.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_keys_are_404_and_put_stores_objects() {
    let o = Origin::start().await;
    let (status, body) = error_code(
        o.http
            .get(o.url("missing.jpg", &PresignOptions::new()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    assert!(body.contains("<Code>NoSuchKey</Code>"), "{body}");

    let put = o.url(
        "uploads/new.webp",
        &PresignOptions::new().method(Method::Put),
    );
    let res = o.http.put(put).body(vec![7u8; 1000]).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let res = o
        .http
        .get(o.url("uploads/new.webp", &PresignOptions::new()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "image/webp");
    assert_eq!(res.bytes().await.unwrap().len(), 1000);
    // A GET signature does not allow a PUT.
    let get_url = o.url("uploads/evil.jpg", &PresignOptions::new());
    assert_eq!(
        o.http.put(get_url).body("x").send().await.unwrap().status(),
        403
    );
    assert!(!o.dir.path().join("uploads/evil.jpg").exists());
    o.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_cannot_escape_the_directory() {
    let o = Origin::start().await;
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), b"secret").unwrap();
    std::os::unix::fs::symlink(outside.path(), o.dir.path().join("link")).unwrap();
    std::fs::write(
        o.dir.path().parent().unwrap().join("sibling-secret.txt"),
        b"TOP-SECRET-CONTENT",
    )
    .ok();
    std::fs::write(outside.path().join("secret.txt"), b"TOP-SECRET-CONTENT").unwrap();
    for key in [
        "../sibling-secret.txt",
        "photos/../../sibling-secret.txt",
        "link/secret.txt",
        "./a.jpg",
    ] {
        let res = o
            .http
            .get(o.url(key, &PresignOptions::new()))
            .send()
            .await
            .unwrap();
        let status = res.status();
        let body = res.text().await.unwrap();
        assert_eq!(status, 403, "{key}: {body}");
        assert!(!body.contains("TOP-SECRET-CONTENT"), "{key}");
    }
    // Writing through a symlink out of the directory is refused too.
    let put = o.url(
        "link/planted.txt",
        &PresignOptions::new().method(Method::Put),
    );
    assert_eq!(
        o.http.put(put).body("x").send().await.unwrap().status(),
        403
    );
    assert!(!outside.path().join("planted.txt").exists());
    o.stop().await;
}

#[derive(serde::Deserialize)]
struct Vectors {
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    name: String,
    key: String,
    start: i64,
    secret_id: String,
    secret_key: String,
    token: Option<String>,
    headers: std::collections::BTreeMap<String, String>,
    expected_url: Option<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_sdk_urls_are_accepted_inside_their_window() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../cos-sign/tests/data/cos-presign.json"),
    )
    .unwrap();
    let vectors: Vectors = serde_json::from_str(&text).unwrap();
    let mut served = 0;
    for case in vectors.cases.iter().filter(|c| c.expected_url.is_some()) {
        let key = ObjectKey::new(&case.key).unwrap();
        // A directory-backed origin cannot hold keys with dot segments or empty segments.
        if key
            .as_str()
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
            || served >= 40
        {
            continue;
        }
        let mut creds = Credentials::new(&case.secret_id, &case.secret_key);
        if let Some(token) = &case.token {
            creds = creds.with_session_token(token, None);
        }
        let o = Origin::start_with(creds).await;
        let file = o.dir.path().join(key.as_str());
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, b"vector object").unwrap();
        o.clock.store(case.start + 1, Ordering::SeqCst);
        let expected = case.expected_url.as_deref().unwrap();
        let after_scheme = expected.split_once("://").unwrap().1;
        let (host, path_and_query) = after_scheme.split_at(after_scheme.find('/').unwrap());
        let mut request = o
            .http
            .get(format!("{}{path_and_query}", o.base()))
            .header(header::HOST, host);
        for (name, value) in &case.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let res = request.send().await.unwrap();
        let status = res.status().as_u16();
        assert!(
            status == 200 || status == 206,
            "{}: {status} {}",
            case.name,
            res.text().await.unwrap()
        );
        served += 1;
        o.stop().await;
    }
    assert_eq!(served, 40);
}

/// Regression: unsigned `response-*` parameters appended to a presigned URL were applied,
/// so anyone holding an image URL could have it served as `text/html`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_signed_overrides_are_honoured() {
    let o = Origin::start().await;
    let plain = o.url("a.jpg", &PresignOptions::new());
    let res = o
        .http
        .get(format!(
            "{plain}&response-content-type=text%2Fhtml&response-content-disposition=attachment"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "image/jpeg");
    assert!(!res.headers().contains_key(header::CONTENT_DISPOSITION));
    let signed = o.url(
        "a.jpg",
        &PresignOptions::new().param("response-content-type", "image/webp"),
    );
    let res = o.http.get(signed).send().await.unwrap();
    assert_eq!(res.headers()[header::CONTENT_TYPE], "image/webp");
    o.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_bodies_are_capped() {
    let o = Origin::start_configured(Credentials::new("AKIDorigin", "origin-secret"), |c| {
        c.max_put_bytes = 1000
    })
    .await;
    let put = |key: &str| o.url(key, &PresignOptions::new().method(Method::Put));
    let res = o
        .http
        .put(put("ok.bin"))
        .body(vec![1u8; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (status, body) = error_code(
        o.http
            .put(put("big.bin"))
            .body(vec![1u8; 1001])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("<Code>EntityTooLarge</Code>"), "{body}");
    assert!(!o.dir.path().join("big.bin").exists());
    let leftovers: Vec<_> = std::fs::read_dir(o.dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".dev-origin-upload-")
        })
        .collect();
    assert!(leftovers.is_empty(), "no partial upload left behind");
    o.stop().await;
}

/// With browsers refused (hotlink protection), a request with a `Referer` gets COS's
/// 403 `AccessDenied`, the same URL without one is served, and switching the fault off
/// serves both again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_browsers_refuses_requests_with_a_referer_only() {
    let faults = dev_origin::OriginFaults::default();
    let switch = faults.clone();
    let o = Origin::start_configured(Credentials::new("AKIDorigin", "origin-secret"), |c| {
        c.faults = switch
    })
    .await;
    let url = o.url("a.jpg", &PresignOptions::new());
    let from_page = || {
        o.http
            .get(&url)
            .header(header::REFERER, "http://127.0.0.1:8080/demo")
            .send()
    };
    assert_eq!(from_page().await.unwrap().status(), 200);
    faults.refuse_browsers(true);
    assert!(faults.refusing_browsers());
    let refused = from_page().await.unwrap();
    assert_eq!(refused.status(), 403);
    assert!(refused
        .text()
        .await
        .unwrap()
        .contains("<Code>AccessDenied</Code>"));
    assert_eq!(o.http.get(&url).send().await.unwrap().status(), 200);
    faults.refuse_browsers(false);
    assert_eq!(from_page().await.unwrap().status(), 200);
    o.stop().await;
}
