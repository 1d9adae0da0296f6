//! Alerts through the server process: Redis dies under it and a local webhook receiver
//! hears `firing` within `degraded_after_secs` plus one evaluation; Redis comes back and
//! it hears `resolved`. `GET /api/v1/alerts` lists the active one meanwhile.

mod common;

use std::time::{Duration, Instant};

use actix_web::{web, App, HttpServer};
use common::{http, serve_signing, start};
use image_url_tests::RedisServer;
use tokio::sync::mpsc;

const TOKEN: &str = "alerts-admin-token-0123";

/// A webhook receiver on a loopback port: every POSTed JSON body goes to the channel.
fn receiver() -> (
    String,
    mpsc::UnboundedReceiver<serde_json::Value>,
    actix_web::dev::ServerHandle,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let tx = web::Data::new(tx);
    let server = HttpServer::new(move || {
        App::new().app_data(tx.clone()).default_service(web::to(
            |body: web::Json<serde_json::Value>,
             tx: web::Data<mpsc::UnboundedSender<serde_json::Value>>| async move {
                // The test may have stopped listening; the receiver still answers.
                let _ = tx.send(body.into_inner());
                actix_web::HttpResponse::Ok().finish()
            },
        ))
    })
    .workers(1)
    .disable_signals()
    .bind("127.0.0.1:0")
    .unwrap();
    let url = format!(
        "http://{}/hooks/image-url?token=secret-in-url",
        server.addrs()[0]
    );
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    (url, rx, handle)
}

async fn next_alert(
    rx: &mut mpsc::UnboundedReceiver<serde_json::Value>,
    within: Duration,
) -> serde_json::Value {
    tokio::time::timeout(within, rx.recv())
        .await
        .expect("an alert in time")
        .expect("the receiver is running")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fires_cache_degraded_and_its_return_resolves_it() {
    let (url, mut alerts, receiver_handle) = receiver();
    let mut redis = RedisServer::start();
    let running = start(
        serve_signing("AKIDalerts", "alerts-secret")
            .env("IMAGE_URL_SERVER__ADMIN_TOKEN", TOKEN)
            .env("IMAGE_URL_CACHE__BACKEND", "redis")
            .env("IMAGE_URL_CACHE__REDIS_URL", redis.url())
            .env("IMAGE_URL_ALERTS__WEBHOOK_URLS", format!(r#"["{url}"]"#))
            .env("IMAGE_URL_ALERTS__EVALUATE_EVERY_SECS", "1")
            .env("IMAGE_URL_ALERTS__DEGRADED_AFTER_SECS", "2")
            .env("IMAGE_URL_ALERTS__INSTANCE", "replica-under-test"),
    );
    let http = http();

    redis.stop();
    let stopped = Instant::now();
    // degraded_after (2 s) + one evaluation (1 s), with slack for a loaded machine.
    let firing = next_alert(&mut alerts, Duration::from_secs(10)).await;
    assert_eq!(firing["rule"], "cache_degraded", "{firing}");
    assert_eq!(firing["state"], "firing");
    assert_eq!(firing["status"], "firing", "Alertmanager's field");
    assert_eq!(
        firing["alerts"][0]["labels"]["instance"],
        "replica-under-test"
    );
    assert!(
        stopped.elapsed() >= Duration::from_secs(2),
        "not before degraded_after"
    );

    let alerts_url = format!("{}/api/v1/alerts", running.base);
    let active = common::get_json(&http, &alerts_url, Some(TOKEN)).await;
    assert_eq!(active["alerts"][0]["rule"], "cache_degraded", "{active}");
    assert!(active["alerts"][0]["since"].as_f64().is_some());

    redis.start_again();
    let resolved = next_alert(&mut alerts, Duration::from_secs(15)).await;
    assert_eq!(
        (resolved["rule"].as_str(), resolved["state"].as_str()),
        (Some("cache_degraded"), Some("resolved")),
        "{resolved}"
    );
    assert_ne!(resolved["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");

    // The webhook URL's token never reaches the log.
    let common::Running { process, log, .. } = running;
    drop(process);
    let log = log.join().unwrap().join("\n");
    assert!(log.contains("alert firing"), "{log}");
    assert!(!log.contains("secret-in-url"), "{log}");
    receiver_handle.stop(false).await;
}
