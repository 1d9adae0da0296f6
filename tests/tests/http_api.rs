//! The HTTP API end to end: the real server on 127.0.0.1:0, the real memory and Redis
//! caches, and the dev origin (which verifies every signature) as COS.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cos_sign::{CosSigner, Credentials, Endpoint, Scheme};
use dev_origin::{DevOrigin, OriginConfig};
use image_url_service::{ImageUrlService, ServiceConfig};
use image_url_tests::RedisServer;
use proxy_http::{ApiConfig, AppState, HttpServerHandle};
use reqwest::{header, redirect, StatusCode};
use url_cache::{Clock, ManualClock, MemoryCache, RedisCache, RedisConfig, SystemClock, UrlCache};

const TOKEN: &str = "test-admin-token";

struct Stack {
    server: Option<HttpServerHandle>,
    origin: Option<DevOrigin>,
    service_clock: Arc<ManualClock>,
    cache: Arc<dyn UrlCache>,
    dir: tempfile::TempDir,
    http: reqwest::Client,
    _redis: Option<RedisServer>,
}

impl Stack {
    async fn start(redis: bool) -> Self {
        Self::start_with(redis, ApiConfig::default().admin_token(Some(TOKEN.into()))).await
    }

    async fn start_with(redis: bool, api: ApiConfig) -> Self {
        // reqwest is built with `rustls-no-provider` (for the proxy's TLS): pick ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        // The start of the current stable-URL window (default 3600 − 900 s), so that
        // URLs signed now run the whole TTL and the tests' time steps stay in one window.
        let now = (SystemClock.now_unix() / 2700.0).floor() * 2700.0;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("photos")).unwrap();
        std::fs::write(dir.path().join("photos/cat 1.jpg"), vec![42u8; 10_000]).unwrap();
        std::fs::write(dir.path().join("logo.png"), b"png").unwrap();
        let credentials = Credentials::new("AKIDe2e", "e2e-secret");
        let origin_clock = Arc::new(AtomicI64::new(now as i64));
        let mut origin_config = OriginConfig::new(dir.path(), credentials.clone());
        let c = origin_clock.clone();
        origin_config.clock = Arc::new(move || c.load(Ordering::SeqCst));
        let origin = DevOrigin::start(origin_config, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();

        let service_clock = Arc::new(ManualClock::from_unix_secs(now));
        let (cache, redis_server): (Arc<dyn UrlCache>, _) = if redis {
            let server = RedisServer::start();
            let cache = RedisCache::connect_with_clock(
                RedisConfig::new(server.url()),
                service_clock.clone(),
            )
            .await
            .unwrap();
            (Arc::new(cache), Some(server))
        } else {
            (
                Arc::new(MemoryCache::builder().clock(service_clock.clone()).build()),
                None,
            )
        };
        let endpoint = Endpoint::custom_domain(&origin.addr().to_string())
            .unwrap()
            .with_scheme(Scheme::Http);
        let service =
            ImageUrlService::builder(CosSigner::new(credentials, endpoint), cache.clone())
                .config(ServiceConfig::default())
                .clock(service_clock.clone())
                .build()
                .unwrap();
        let server = HttpServerHandle::start(
            AppState::new(service, api),
            "127.0.0.1:0".parse().unwrap(),
            2,
        )
        .unwrap();
        Stack {
            server: Some(server),
            origin: Some(origin),
            service_clock,
            cache,
            dir,
            http: reqwest::Client::builder()
                .redirect(redirect::Policy::none())
                .build()
                .unwrap(),
            _redis: redis_server,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.server.as_ref().unwrap().addr())
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.unwrap()
    }

    /// `GET /stats` with the admin token.
    async fn stats(&self) -> serde_json::Value {
        self.http
            .get(self.url("/api/v1/images/stats"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.stop(true).await;
        }
        if let Some(origin) = self.origin.take() {
            origin.stop().await;
        }
    }
}

async fn problem(res: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(res.status().as_u16(), status);
    assert_eq!(
        res.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
    let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["status"], status);
    assert_eq!(
        body["request_id"],
        id.as_str(),
        "the body carries the header's request id"
    );
    assert!(body["type"].as_str().unwrap().starts_with("https://"));
    assert!(
        !body.to_string().contains("q-signature"),
        "no signed URL in an error body"
    );
    body
}

async fn redirect_flow(redis: bool) {
    let s = Stack::start(redis).await;
    let res = s.get("/api/v1/images/photos%2Fcat%201.jpg/proxy").await;
    assert_eq!(res.status(), StatusCode::FOUND);
    assert_eq!(
        res.headers()[header::CACHE_CONTROL],
        "private, max-age=2700"
    );
    assert!(res.headers().contains_key("x-request-id"));
    let location = res.headers()[header::LOCATION].to_str().unwrap().to_owned();
    assert!(location.contains("/photos/cat%201.jpg?q-sign-algorithm=sha1"));
    // The origin accepts the URL: the whole chain works.
    let image = s.http.get(&location).send().await.unwrap();
    assert_eq!(image.status(), 200);
    assert_eq!(image.bytes().await.unwrap().len(), 10_000);
    // A raw '/' in the key works too, and the URL is stable while valid.
    let again = s.get("/api/v1/images/photos/cat%201.jpg/proxy").await;
    assert_eq!(
        again.headers()[header::LOCATION].to_str().unwrap(),
        location
    );

    // Batch, GET and POST. The redirects' write is detached: ask until it has landed.
    image_url_tests::batch_until_cached(&s.http, &s.url(""), &["photos/cat 1.jpg".to_owned()])
        .await;
    let res = s
        .get("/api/v1/images/batch/urls?key=logo.png&key=photos/cat%201.jpg&key=")
        .await;
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["results"]["photos/cat 1.jpg"]["from_cache"], true);
    assert_eq!(body["results"]["logo.png"]["from_cache"], false);
    assert!(body["results"]["logo.png"]["url"]
        .as_str()
        .unwrap()
        .contains("/logo.png?"));
    assert_eq!(body["results"][""]["error"]["status"], 400);
    // The service stores a miss's URL after answering, detached (on Redis a round trip
    // later): ask until it is served from the cache.
    image_url_tests::batch_until_cached(&s.http, &s.url(""), &["logo.png".to_owned()]).await;
    let many: Vec<String> = (0..101).map(|i| format!("k{i}")).collect();
    let res = s
        .http
        .post(s.url("/api/v1/images/batch/urls"))
        .json(&serde_json::json!({ "keys": many }))
        .send()
        .await
        .unwrap();
    let body = problem(res, 400).await;
    assert_eq!(body["title"], "Batch too large");

    // Status.
    let res = s.get("/api/v1/images/logo.png/status").await;
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["cached"], true);
    assert!(body.get("url").is_none(), "status never hands out the URL");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_batch_and_status_with_the_memory_cache() {
    redirect_flow(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_batch_and_status_with_the_redis_cache() {
    redirect_flow(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_mode_streams_with_ranges_conditionals_and_refresh_on_expiry() {
    let s = Stack::start(false).await;
    let path = "/api/v1/images/photos%2Fcat%201.jpg/proxy?mode=proxy";
    let res = s.get(path).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "image/jpeg");
    assert_eq!(res.headers()[header::CONTENT_LENGTH], "10000");
    assert_eq!(res.headers()[header::ACCEPT_RANGES], "bytes");
    assert!(res.headers()[header::CACHE_CONTROL]
        .to_str()
        .unwrap()
        .starts_with("private"));
    let etag = res.headers()[header::ETAG].clone();
    assert!(res.headers().contains_key(header::LAST_MODIFIED));
    assert_eq!(
        res.bytes().await.unwrap().as_ref(),
        vec![42u8; 10_000].as_slice()
    );

    let res = s
        .http
        .get(s.url(path))
        .header(header::RANGE, "bytes=0-99")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 206);
    assert_eq!(res.headers()[header::CONTENT_RANGE], "bytes 0-99/10000");
    assert_eq!(res.bytes().await.unwrap().len(), 100);
    let res = s
        .http
        .get(s.url(path))
        .header(header::IF_NONE_MATCH, etag)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 304);

    let body = problem(
        s.get("/api/v1/images/missing.jpg/proxy?mode=proxy").await,
        404,
    )
    .await;
    assert_eq!(body["title"], "Image not found");

    // The cached URL looks right to the service (its host, path and window) but the
    // origin refuses it (here a damaged signature; in life, revoked credentials): the
    // origin answers 403, the server re-signs once and succeeds.
    let mut entry = s.cache.peek("photos/cat 1.jpg").await.unwrap().unwrap();
    let good = entry.url.clone();
    let last = good.chars().last().unwrap();
    let damaged = format!(
        "{}{}",
        &good[..good.len() - 1],
        if last == '0' { '1' } else { '0' }
    );
    entry.url = damaged.as_str().into();
    s.cache.put(entry).await.unwrap();
    let res = s.get(path).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.bytes().await.unwrap().len(), 10_000);
    let stats = s.stats().await;
    assert_eq!(stats["forced_refreshes"], 1, "re-signed once: {stats}");
    let repaired = s.cache.peek("photos/cat 1.jpg").await.unwrap().unwrap();
    assert_eq!(repaired.url, good, "the good URL replaced the damaged one");
    // Damaged again within the minute: no second re-sign for this key (a client cannot
    // make every request re-sign and rewrite the cache); the answer is a 502 problem.
    let mut entry = repaired;
    entry.url = damaged.as_str().into();
    s.cache.put(entry).await.unwrap();
    problem(s.get(path).await, 502).await;
    assert_eq!(
        s.stats().await["forced_refreshes"],
        1,
        "not re-signed again"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_need_the_token() {
    let s = Stack::start(false).await;
    for (method, path) in [
        (reqwest::Method::GET, "/api/v1/images/stats"),
        (reqwest::Method::POST, "/api/v1/images/cleanup"),
        (reqwest::Method::POST, "/api/v1/images/logo.png/refresh"),
    ] {
        let res = s
            .http
            .request(method.clone(), s.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(res.headers()[header::WWW_AUTHENTICATE], "Bearer");
        problem(res, 401).await;
        let res = s
            .http
            .request(method.clone(), s.url(path))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        problem(res, 401).await;
        let res = s
            .http
            .request(method, s.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{path}");
    }
    let res = s
        .http
        .post(s.url("/api/v1/images/preload"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"keys": ["logo.png", "photos/cat 1.jpg", "bad/.."]}))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["requested"], 3);
    assert_eq!(
        body["loaded"].as_u64().unwrap() + body["already_cached"].as_u64().unwrap(),
        2
    );
    assert!(body["failed"]["bad/.."].is_string());
    let res = s
        .http
        .post(s.url("/api/v1/images/logo.png/refresh"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["refreshed"], true);
    let stats = s.stats().await;
    assert!(stats["signings"].as_u64().unwrap() >= 3);
    assert_eq!(stats["circuit"], "closed");
    s.service_clock.advance(Duration::from_secs(7200));
    let res = s
        .http
        .post(s.url("/api/v1/images/cleanup"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["removed"], 2);
    s.stop().await;

    // Without a configured token the admin endpoints are off.
    let s = Stack::start_with(false, ApiConfig::default()).await;
    let res = s
        .http
        .get(s.url("/api/v1/images/stats"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    problem(res, 403).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_problem_json_with_a_request_id() {
    let s = Stack::start(false).await;
    let body = problem(s.get("/api/v1/images/a%0Ab.jpg/proxy").await, 400).await;
    assert_eq!(body["title"], "Invalid image key");
    problem(s.get("/api/v1/images/%FF%FE/proxy").await, 400).await;
    problem(s.get("/api/v1/images/a.jpg/proxy?mode=teleport").await, 400).await;
    problem(s.get("/api/v1/images/a.jpg/proxy?bogus=1").await, 400).await;
    problem(s.get("/nope").await, 404).await;
    problem(
        s.http
            .delete(s.url("/api/v1/images/a.jpg/proxy"))
            .send()
            .await
            .unwrap(),
        405,
    )
    .await;
    let res = s
        .http
        .post(s.url("/api/v1/images/batch/urls"))
        .header(header::CONTENT_TYPE, "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    problem(res, 400).await;
    problem(s.get("/api/v1/images/batch/urls").await, 400).await;
    // A caller's request id is kept.
    let res = s
        .http
        .get(s.url("/nope"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "abc-123");
    let res = s
        .http
        .get(s.url("/nope"))
        .header("x-request-id", "no spaces <allowed>")
        .send()
        .await
        .unwrap();
    assert_ne!(res.headers()["x-request-id"], "no spaces <allowed>");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_endpoints() {
    let s = Stack::start(false).await;
    assert_eq!(s.get("/livez").await.status(), 200);
    let ready: serde_json::Value = s.get("/readyz").await.json().await.unwrap();
    assert_eq!(ready["status"], "ready");
    s.get("/api/v1/images/logo.png/proxy").await;
    s.get("/some/random/path").await;
    s.get("/another/random/path").await;
    let metrics = s.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains(r#"image_url_http_requests_total{method="GET",route="/api/v1/images/{key}/proxy",status="302"} 1"#), "{metrics}");
    assert!(
        metrics.contains(r#"route="unmatched",status="404"} 2"#),
        "{metrics}"
    );
    assert!(metrics.contains("image_url_signings_total 1"));
    assert!(metrics.contains("image_url_cache_circuit_state{backend=\"memory\"} 0"));
    assert!(
        !metrics.contains("random"),
        "unmatched paths collapse into one label"
    );
    let openapi: serde_json::Value = s.get("/api/v1/openapi.json").await.json().await.unwrap();
    assert!(openapi["paths"]["/api/v1/images/{key}/proxy"]["get"].is_object());
    assert!(openapi["paths"]["/api/v1/images/batch/urls"]["post"].is_object());
    s.stop().await;

    // Not configured: URL endpoints and readiness answer 503, liveness 200.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = HttpServerHandle::start(
        AppState::unconfigured("COS credentials missing", ApiConfig::default()),
        "127.0.0.1:0".parse().unwrap(),
        1,
    )
    .unwrap();
    let http = reqwest::Client::new();
    let base = format!("http://{}", server.addr());
    assert_eq!(
        http.get(format!("{base}/livez"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let body = problem(
        http.get(format!("{base}/readyz")).send().await.unwrap(),
        503,
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("credentials"));
    problem(
        http.get(format!("{base}/api/v1/images/a.jpg/proxy"))
            .send()
            .await
            .unwrap(),
        503,
    )
    .await;
    server.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_loses_no_in_flight_request() {
    use futures::StreamExt;
    let s = Stack::start(false).await;
    // In-flight requests: proxy mode through the origin, for a 10 MB object, each held
    // open by its client after the first chunk until the server has been told to stop.
    std::fs::write(s.dir.path().join("big.bin"), vec![1u8; 10_000_000]).unwrap();
    let url = s.url("/api/v1/images/big.bin/proxy?mode=proxy");
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(40);
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let http = reqwest::Client::builder().build().unwrap();
        let url = url.clone();
        let ready = ready_tx.clone();
        let mut go = go_rx.clone();
        tasks.push(tokio::spawn(async move {
            let res = http.get(url).send().await?;
            let status = res.status();
            let mut body = res.bytes_stream();
            let mut len = match body.next().await {
                Some(chunk) => chunk?.len(),
                None => 0,
            };
            ready
                .send(())
                .await
                .expect("the test waits for every request");
            go.wait_for(|go| *go).await.expect("the test sends go");
            while let Some(chunk) = body.next().await {
                len += chunk?.len();
            }
            Ok::<_, reqwest::Error>((status, len))
        }));
    }
    for _ in 0..40 {
        ready_rx.recv().await.expect("every request reports in");
    }
    let Stack { server, origin, .. } = s;
    let server = server.unwrap();
    let addr = server.addr();
    let stopping = tokio::spawn(server.stop(true));
    // Once the stop signal is handled the listener is closed: new connections are
    // refused while the 40 requests are still in flight (their clients are not reading).
    let refused_by = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < refused_by,
            "still accepting after the stop signal"
        );
        tokio::task::yield_now().await;
    }
    go_tx.send(true).unwrap();
    stopping.await.unwrap();
    for task in tasks {
        // Every request accepted before the stop completes in full; none is cut off.
        let (status, len) = task
            .await
            .unwrap()
            .expect("the in-flight request completes");
        assert_eq!(status, 200);
        assert_eq!(len, 10_000_000);
    }
    origin.unwrap().stop().await;
}

/// A stand-in for COS that accepts connections, reads the request head, writes `answer`
/// (if any) and then stalls, keeping the connection open.
async fn scripted_origin(answer: Option<&'static [u8]>) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        // Keep every connection open until the test's runtime ends.
        let mut held = Vec::new();
        while let Ok((mut socket, _)) = listener.accept().await {
            // Answer only once the request is in, as a real server would.
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            if let Some(answer) = answer {
                let _ = socket.write_all(answer).await;
            }
            held.push(socket);
        }
    });
    addr
}

/// The head and the first ten bytes of a 1000-byte body.
const HEAD_AND_TEN_BYTES: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 1000\r\n\r\n0123456789";

/// A server whose COS endpoint is `origin`, with the given proxy timeouts.
fn server_for(
    origin: std::net::SocketAddr,
    read_timeout: Duration,
    total_timeout: Duration,
) -> HttpServerHandle {
    let endpoint = Endpoint::custom_domain(&origin.to_string())
        .unwrap()
        .with_scheme(Scheme::Http);
    let signer = CosSigner::new(Credentials::new("AKIDstall", "stall-secret"), endpoint);
    let service = ImageUrlService::builder(signer, Arc::new(MemoryCache::builder().build()))
        .build()
        .unwrap();
    let mut api = ApiConfig::default();
    api.proxy_read_timeout = read_timeout;
    api.proxy_timeout = total_timeout;
    HttpServerHandle::start(
        AppState::new(service, api),
        "127.0.0.1:0".parse().unwrap(),
        1,
    )
    .unwrap()
}

/// `GET a.jpg?mode=proxy`, with a client-side deadline well past every server timeout
/// the tests set.
async fn proxy_mode_get(http: &reqwest::Client, server: &HttpServerHandle) -> reqwest::Response {
    http.get(format!(
        "http://{}/api/v1/images/a.jpg/proxy?mode=proxy",
        server.addr()
    ))
    .timeout(Duration::from_secs(60))
    .send()
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_timeouts_end_a_stalled_origin_fetch() {
    // reqwest is built with `rustls-no-provider` (for the proxy's TLS): pick ring first.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let long = Duration::from_secs(120);
    let short = Duration::from_millis(500);

    // An origin that never answers: the total timeout gives a 504 problem, which names
    // neither the URL nor its signature. (Without it, this would wait for the 120 s read
    // timeout and the client's own deadline below would fail the test.)
    let silent = scripted_origin(None).await;
    let server = server_for(silent, long, short);
    let res = proxy_mode_get(&http, &server).await;
    let body = problem(res, 504).await;
    let text = body.to_string();
    assert!(
        !text.contains("q-signature") && !text.contains(&silent.to_string()),
        "{text}"
    );
    server.stop(false).await;

    // An origin that stops in the middle of the body: the read timeout cuts the stream,
    // and the client sees a body shorter than the Content-Length it was promised.
    let stalling = scripted_origin(Some(HEAD_AND_TEN_BYTES)).await;
    for (read, total) in [(short, long), (long, short)] {
        let server = server_for(stalling, read, total);
        let res = proxy_mode_get(&http, &server).await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.content_length(), Some(1000));
        match res.bytes().await {
            Ok(body) => assert!(body.len() < 1000, "a short body, not {}", body.len()),
            Err(err) => assert!(
                !err.is_timeout(),
                "the server cut it, not the client: {err}"
            ),
        }
        server.stop(false).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_origin_failures_are_502_problems() {
    // reqwest is built with `rustls-no-provider` (for the proxy's TLS): pick ring first.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let long = Duration::from_secs(60);
    // A port nobody listens on (bound, then released).
    let refused = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let failing = scripted_origin(Some(
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
    ))
    .await;
    let redirecting = scripted_origin(Some(
        b"HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/\r\nContent-Length: 0\r\n\r\n",
    ))
    .await;
    // A 403 for a URL signed this very moment: re-signing would not help, so it is not
    // tried (no second fetch, no cache rewrite).
    let forbidding =
        scripted_origin(Some(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")).await;
    for (origin, says) in [
        (refused, "cannot connect to the origin"),
        (failing, "the origin answered 500"),
        (redirecting, "the origin answered 302"),
        (forbidding, "the origin refused the signed URL (403)"),
    ] {
        let server = server_for(origin, long, long);
        let res = proxy_mode_get(&http, &server).await;
        let body = problem(res, 502).await;
        let text = body.to_string();
        assert!(text.contains(says), "{text}");
        assert!(!text.contains("q-signature"), "{text}");
        server.stop(false).await;
    }
}
