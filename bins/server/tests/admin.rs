//! Admin endpoints through the real server process: several tokens, the bearer scheme in
//! any case, bodies read only after the token is checked, 413 for oversized bodies, and
//! a server that refuses to start with a short token.

use common::{http, problem_type, serve_signing, server, start};
use reqwest::StatusCode;

mod common;

const NEW_TOKEN: &str = "the-new-admin-token-0123";
const OLD_TOKEN: &str = "the-old-admin-token-0123";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_rotate_and_bodies_wait_for_the_token() {
    let running = start(
        serve_signing("AKIDadmin", "admin-secret")
            .env("IMAGE_URL_SERVER__ADMIN_TOKEN", OLD_TOKEN)
            .env(
                "IMAGE_URL_SERVER__ADMIN_TOKENS",
                format!(r#"["{NEW_TOKEN}"]"#),
            ),
    );
    let http = http();
    let stats = format!("{}/api/v1/images/stats", running.base);
    for authorization in [
        format!("Bearer {NEW_TOKEN}"),
        format!("Bearer {OLD_TOKEN}"),
        format!("bearer {NEW_TOKEN}"),
        format!("BEARER  {OLD_TOKEN} "),
    ] {
        let res = http
            .get(&stats)
            .header("authorization", &authorization)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{authorization}");
    }
    for authorization in [
        "Bearer the-new-admin-token-012".to_owned(),
        format!("Bearer {NEW_TOKEN}x"),
        format!("Basic {NEW_TOKEN}"),
        NEW_TOKEN.to_owned(),
        String::new(),
    ] {
        let res = http
            .get(&stats)
            .header("authorization", &authorization)
            .send()
            .await
            .unwrap();
        assert_eq!(
            problem_type(res, 401).await,
            "unauthorized",
            "{authorization:?}"
        );
    }

    // Without the token, a preload body is never read: 401, not 400 or 413.
    let preload = format!("{}/api/v1/images/preload", running.base);
    for body in ["{".repeat(10_000), "x".repeat(1_000_000)] {
        let res = http.post(&preload).body(body).send().await.unwrap();
        assert_eq!(problem_type(res, 401).await, "unauthorized");
    }
    // With it: an oversized body is 413, a malformed one 400, too many keys 400.
    let authed = |body: String| http.post(&preload).bearer_auth(NEW_TOKEN).body(body).send();
    assert_eq!(
        problem_type(authed("x".repeat(300_000)).await.unwrap(), 413).await,
        "payload-too-large"
    );
    assert_eq!(
        problem_type(authed("{".repeat(10_000)).await.unwrap(), 400).await,
        "bad-request"
    );
    let keys: Vec<String> = (0..1001).map(|i| format!("k{i}.jpg")).collect();
    let many = serde_json::json!({ "keys": keys }).to_string();
    assert_eq!(
        problem_type(authed(many).await.unwrap(), 400).await,
        "bad-request"
    );
    // The public batch endpoint: 413 for an oversized body too.
    let res = http
        .post(format!("{}/api/v1/images/batch/urls", running.base))
        .header("content-type", "application/json")
        .body(format!(r#"{{"keys": ["{}"]}}"#, "a".repeat(300_000)))
        .send()
        .await
        .unwrap();
    assert_eq!(problem_type(res, 413).await, "payload-too-large");
}

#[test]
fn a_short_admin_token_stops_the_server_with_one_line() {
    for (name, value, key) in [
        (
            "IMAGE_URL_SERVER__ADMIN_TOKEN",
            "change-me",
            "server.admin_token ",
        ),
        (
            "IMAGE_URL_SERVER__ADMIN_TOKENS",
            r#"["short"]"#,
            "server.admin_tokens ",
        ),
    ] {
        let out = server()
            .arg("serve")
            .env("IMAGE_URL_SERVER__LISTEN", "127.0.0.1:0")
            .env(name, value)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{name}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        let last = stderr.trim().lines().last().unwrap_or_default();
        assert!(last.contains("at least 16 bytes"), "{stderr}");
        assert!(last.contains(key), "names the key: {stderr}");
        assert!(
            !stderr.contains("change-me") && !stderr.contains("short\""),
            "{stderr}"
        );
    }
}

/// With `server.admin_listen`, the public port serves URLs and health only; admin
/// endpoints, metrics and the OpenAPI document live on the private port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_can_live_on_a_private_port() {
    let admin_port = image_url_tests::free_port();
    let running = start(
        serve_signing("AKIDadmin", "admin-secret")
            .env("IMAGE_URL_SERVER__ADMIN_TOKEN", NEW_TOKEN)
            .env(
                "IMAGE_URL_SERVER__ADMIN_LISTEN",
                format!("127.0.0.1:{admin_port}"),
            ),
    );
    let admin = format!("http://127.0.0.1:{admin_port}");
    let http = http();
    let status = |base: &str, method: reqwest::Method, path: &str| {
        http.request(method, format!("{base}{path}"))
            .bearer_auth(NEW_TOKEN)
            .send()
    };
    use reqwest::Method;
    for (method, path) in [
        (Method::GET, "/api/v1/images/stats"),
        (Method::POST, "/api/v1/images/cleanup"),
        (Method::POST, "/api/v1/images/a.jpg/refresh"),
        (Method::GET, "/metrics"),
        (Method::GET, "/api/v1/openapi.json"),
    ] {
        let public = status(&running.base, method.clone(), path).await.unwrap();
        assert_eq!(
            problem_type(public, 404).await,
            "not-found",
            "public {path}"
        );
        let private = status(&admin, method, path).await.unwrap();
        assert_eq!(private.status(), StatusCode::OK, "admin {path}");
    }
    for path in [
        "/api/v1/images/a.jpg/proxy",
        "/api/v1/images/batch/urls?key=a.jpg",
    ] {
        let public = status(&running.base, Method::GET, path).await.unwrap();
        assert!(
            public.status() == 302 || public.status() == 200,
            "public {path}"
        );
        let private = status(&admin, Method::GET, path).await.unwrap();
        assert_eq!(private.status(), StatusCode::NOT_FOUND, "admin {path}");
    }
    for base in [&running.base, &admin] {
        let live = status(base, Method::GET, "/livez").await.unwrap();
        assert_eq!(live.status(), StatusCode::OK);
    }
}

/// `GET /api/v1/tasks`: the refresher's runs, next run and lease, behind the token; its
/// figures in `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_show_the_refresher_behind_the_token() {
    let running = start(
        serve_signing("AKIDadmin", "admin-secret")
            .env("IMAGE_URL_SERVER__ADMIN_TOKEN", NEW_TOKEN)
            .env("IMAGE_URL_REFRESHER__INTERVAL_SECS", "3600"),
    );
    let http = http();
    let tasks = format!("{}/api/v1/tasks", running.base);
    let res = http.get(&tasks).send().await.unwrap();
    assert_eq!(problem_type(res, 401).await, "unauthorized");
    // The first run starts with the server; wait for it (bounded) through the endpoint.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let body = loop {
        let body = common::get_json(&http, &tasks, Some(NEW_TOKEN)).await;
        if body["refresher"]["totals"]["runs"].as_u64() >= Some(1) {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no refresh run: {body}"
        );
        tokio::task::yield_now().await;
    };
    let run = &body["refresher"]["last_runs"][0];
    assert!(run["started_at"].as_f64().unwrap() > 1.7e9, "{body}");
    assert_eq!(run["error"], serde_json::Value::Null, "{body}");
    assert!(
        body["refresher"]["next_run_at"].as_f64().is_some(),
        "{body}"
    );
    assert!(body["cleanup"]["cleanup_runs"].is_u64(), "{body}");
    let metrics = common::metrics(&http, &running.base).await;
    for name in [
        "image_url_refresher_runs_total 1",
        "image_url_refresher_lag_seconds",
        "image_url_refresher_refreshed_total",
    ] {
        assert!(metrics.contains(name), "{name} missing");
    }
}
