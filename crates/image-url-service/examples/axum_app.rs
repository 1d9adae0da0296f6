//! The service embedded in an axum application: `GET /images/{*key}` answers a 302 to a
//! presigned URL (cached, stable within its window), with credentials from the
//! environment through a credentials cache, which refreshes temporary ones in the
//! background. Swap `EnvProvider` for `CvmRoleProvider`, `WebIdentityProvider` or
//! `cos_credentials::default_chain()` in production.
//!
//! Run: `COS_SECRET_ID=… COS_SECRET_KEY=… cargo run -p image-url-service --example axum_app
//! -- BUCKET REGION` and open `http://127.0.0.1:PORT/images/a.jpg`. With `--once` it
//! answers one request it sends itself, prints the answer and exits (CI runs it so).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use cos_credentials::{CredentialsCache, EnvProvider, RefreshConfig};
use cos_sign::{Endpoint, ObjectKey};
use image_url_service::{ImageUrlService, MaintenanceConfig, ServiceError, UrlOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use url_cache::MemoryCache;

/// `GET /images/{*key}`: a redirect to the object's presigned URL.
async fn image(State(service): State<ImageUrlService>, Path(key): Path<String>) -> Response {
    let key = match ObjectKey::new(&key) {
        Ok(key) => key,
        Err(err) => return (StatusCode::BAD_REQUEST, err.to_string()).into_response(),
    };
    match service.get_url(&key, &UrlOptions::new()).await {
        Ok(url) => {
            // Browsers may reuse the redirect while the URL stays valid.
            let max_age = url.ttl_remaining.as_secs().saturating_sub(60);
            (
                StatusCode::FOUND,
                [
                    (header::LOCATION, url.url.to_string()),
                    (header::CACHE_CONTROL, format!("private, max-age={max_age}")),
                ],
            )
                .into_response()
        }
        Err(ServiceError::Forbidden(_)) => StatusCode::FORBIDDEN.into_response(),
        Err(ServiceError::InvalidKey(_) | ServiceError::InvalidOptions(_)) => {
            StatusCode::BAD_REQUEST.into_response()
        }
        // Credentials missing or expired, or another failure: never the reason in the
        // body (it may name internal endpoints); the service logged it.
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let once = args.iter().any(|a| a == "--once");
    let positional: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let [bucket, region] = positional.as_slice() else {
        return Err("usage: axum_app BUCKET REGION [--once] (credentials in COS_SECRET_ID/COS_SECRET_KEY or TENCENTCLOUD_SECRET_ID/TENCENTCLOUD_SECRET_KEY)".into());
    };

    let credentials = CredentialsCache::spawn(EnvProvider::new(), RefreshConfig::default());
    credentials.ready().await?;
    let service = ImageUrlService::builder_with_credentials(
        Endpoint::bucket(bucket.as_str(), region.as_str())?,
        credentials,
        Arc::new(MemoryCache::new()),
    )
    .build()?;
    // Expired-entry cleanup (and later the refresher) run beside the app.
    let maintenance = service.spawn_maintenance(MaintenanceConfig::default());

    let app = Router::new()
        .route("/images/{*key}", get(image))
        .with_state(service);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");

    if once {
        tokio::spawn(async move { axum::serve(listener, app).await });
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(
                b"GET /images/a.jpg HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            )
            .await?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await?;
        for line in answer.lines().take_while(|l| !l.is_empty()) {
            if line.starts_with("HTTP/") || line.to_ascii_lowercase().starts_with("location:") {
                println!("{line}");
            }
        }
    } else {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
    }
    maintenance.shutdown().await;
    Ok(())
}
