//! The access log of the real server: written to a file by its own thread, one line per
//! request with the id the client saw, never a query or a signed URL; sampling; counted
//! in the metrics; a bad setting refused.

use common::{http, metrics, redirect, serve_signing, start, terminate};

mod common;

fn log_file(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("image-url-access-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(name);
    let _ = std::fs::remove_file(&file);
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_a_line_with_its_id_and_no_secret() {
    let file = log_file("all.log");
    let running = start(
        serve_signing("AKIDlog", "log-secret")
            .env("IMAGE_URL_SERVER__ACCESS_LOG", &file)
            .env("RUST_LOG", "info"),
    );
    let http = http();
    let base = running.base.clone();
    let mut ids = Vec::new();
    for path in [
        "/api/v1/images/a.jpg/proxy?token=secret-in-query",
        "/api/v1/images/a.jpg/proxy",
        "/nowhere",
    ] {
        let res = http.get(format!("{base}{path}")).send().await.unwrap();
        let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
        ids.push((id, res.status().as_u16()));
    }
    let counters = metrics(&http, &base).await;
    assert!(
        counters.contains("# TYPE image_url_access_log_dropped_total counter"),
        "{counters}"
    );
    assert!(
        counters.contains("image_url_access_log_dropped_total 0"),
        "{counters}"
    );
    let stderr = terminate(running);

    let written = std::fs::read_to_string(&file).unwrap();
    for (id, status) in &ids {
        assert!(
            written
                .lines()
                .any(|l| l.contains(&format!("request_id=\"{id}\""))
                    && l.contains(&format!("status={status}"))),
            "a line for {id} ({status}):\n{written}"
        );
    }
    assert!(
        written.contains("route=\"unmatched\" status=404"),
        "{written}"
    );
    assert!(
        written.contains("route=\"/metrics\" status=200"),
        "{written}"
    );
    for secret in [
        "secret-in-query",
        "q-signature",
        "q-sign-time",
        "log-secret",
    ] {
        assert!(
            !written.contains(secret),
            "{secret} in the access log:\n{written}"
        );
    }
    assert!(
        !stderr.contains("image_url::access"),
        "the file, not stderr:\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_sample_rate_logs_only_errors_in_json() {
    let file = log_file("errors.log");
    let running = start(
        serve_signing("AKIDlog", "log-secret")
            .env("IMAGE_URL_SERVER__ACCESS_LOG", &file)
            .env("IMAGE_URL_SERVER__ACCESS_LOG_SAMPLE_RATE", "0")
            .env("IMAGE_URL_SERVER__JSON_LOGS", "true")
            .env("RUST_LOG", "info"),
    );
    let http = http();
    for _ in 0..20 {
        redirect(&http, &running.base, "a.jpg").await;
    }
    let res = http
        .get(format!("{}/api/v1/images/a%01b/proxy", running.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    terminate(running);

    let written = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<serde_json::Value> = written
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 1, "{written}");
    assert_eq!(lines[0]["fields"]["status"], 400);
    assert_eq!(lines[0]["target"], "image_url::access");
}

#[test]
fn a_sample_rate_outside_zero_to_one_is_refused() {
    let out = serve_signing("AKIDlog", "log-secret")
        .env("IMAGE_URL_SERVER__ACCESS_LOG_SAMPLE_RATE", "1.5")
        .env("RUST_LOG", "info")
        .env("IMAGE_URL_SERVER__LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.access_log_sample_rate"), "{err}");
    assert!(err.contains("1.5"), "{err}");
}

#[test]
fn an_access_log_that_cannot_be_opened_is_refused() {
    let out = serve_signing("AKIDlog", "log-secret")
        .env(
            "IMAGE_URL_SERVER__ACCESS_LOG",
            "/nonexistent-dir/access.log",
        )
        .env("IMAGE_URL_SERVER__LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("server.access_log") && err.contains("/nonexistent-dir/access.log"),
        "{err}"
    );
}

/// A log line written while a request is handled names the request's id (from the
/// request context, as the server runs without per-request spans), in text and JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_written_during_a_request_carry_its_id() {
    // A Redis nobody listens on: every lookup fails, and says so at debug.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let redis_url = format!("redis://{}", dead.local_addr().unwrap());
    drop(dead);
    // Both at once: each waits a few seconds for its Redis before it listens.
    let starting = ["false", "true"].map(|json| {
        let redis_url = redis_url.clone();
        std::thread::spawn(move || {
            start(
                serve_signing("AKIDlog", "log-secret")
                    .env("IMAGE_URL_CACHE__BACKEND", "redis")
                    .env("IMAGE_URL_CACHE__REDIS_URL", &redis_url)
                    .env("IMAGE_URL_SERVER__JSON_LOGS", json)
                    .env(
                        "RUST_LOG",
                        "warn,image_url_server=info,image_url_service=debug",
                    ),
            )
        })
    });
    for (json, running) in ["false", "true"].into_iter().zip(starting) {
        let running = running.join().unwrap();
        // Degraded, never failed.
        let res = redirect(&http(), &running.base, "a.jpg").await;
        let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
        let log = terminate(running);
        // The lookup fails inside the request; the store after signing fails in a task
        // of its own, outside it.
        let carries_id = |line: &str| {
            if json == "true" {
                serde_json::from_str::<serde_json::Value>(line).unwrap()["request_id"]
                    == id.as_str()
            } else {
                line.ends_with(&format!(" request_id=\"{id}\""))
            }
        };
        assert!(
            log.lines()
                .any(|l| l.contains("signing directly") && carries_id(l)),
            "the lookup's failure names the request:\n{log}"
        );
        // Lines outside any request carry no id.
        let listening = log.lines().find(|l| l.contains("listening")).unwrap();
        assert!(!listening.contains("request_id"), "{listening}");
    }
}
