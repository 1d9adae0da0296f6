//! `image-url-server demo`: the dev origin serving sample images and the server in front
//! of it, in one process, with a page of `<smart-image>` elements at `/demo` and buttons
//! that expire a URL or make the origin refuse browsers, so that the fallbacks show.
//!
//! The demo's routes exist only in this command. They change the server's state without a
//! token, so the demo listens on loopback unless told otherwise.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix_web::{web, HttpResponse};
use cos_sign::{Credentials, ObjectKey};
use dev_origin::{DevOrigin, OriginConfig, OriginFaults};
use figment::providers::Serialized;
use image_url_service::{ImageUrlService, UrlOptions};
use url_cache::Clock as _;

use crate::cli::DemoArgs;
use crate::serve::{serve, Hooks};

/// The bundled samples (CC0, drawn by scripts/make-demo-images.py).
const SAMPLES: [(&str, &[u8]); 8] = [
    (
        "sample-01.png",
        include_bytes!("../demo/images/sample-01.png"),
    ),
    (
        "sample-02.png",
        include_bytes!("../demo/images/sample-02.png"),
    ),
    (
        "sample-03.png",
        include_bytes!("../demo/images/sample-03.png"),
    ),
    (
        "sample-04.png",
        include_bytes!("../demo/images/sample-04.png"),
    ),
    (
        "sample-05.png",
        include_bytes!("../demo/images/sample-05.png"),
    ),
    (
        "sample-06.png",
        include_bytes!("../demo/images/sample-06.png"),
    ),
    (
        "sample-07.png",
        include_bytes!("../demo/images/sample-07.png"),
    ),
    (
        "sample-08.png",
        include_bytes!("../demo/images/sample-08.png"),
    ),
];

const PAGE: &str = include_str!("../demo/page.html");
const LICENSE: &[u8] = include_bytes!("../demo/images/LICENSE");

/// Most images the page shows.
const MAX_IMAGES: usize = 500;

/// What the demo's routes share.
struct Demo {
    service: ImageUrlService,
    faults: OriginFaults,
    keys: Vec<String>,
    page: String,
}

/// Runs the demo until Ctrl-C or SIGTERM.
pub fn run(args: &DemoArgs) -> Result<(), String> {
    let _log_writer = crate::logging::init(false);
    let samples;
    let dir: PathBuf = match &args.dir {
        Some(dir) if dir.is_dir() => dir.clone(),
        Some(dir) => return Err(format!("--dir {}: not a directory", dir.display())),
        None => {
            samples = tempfile::Builder::new()
                .prefix("image-url-demo-")
                .tempdir()
                .map_err(|e| format!("cannot create a directory for the samples: {e}"))?;
            let images = samples.path().join("samples");
            std::fs::create_dir_all(&images).map_err(|e| e.to_string())?;
            for (name, bytes) in SAMPLES {
                std::fs::write(images.join(name), bytes).map_err(|e| e.to_string())?;
            }
            std::fs::write(images.join("LICENSE"), LICENSE).map_err(|e| e.to_string())?;
            samples.path().to_owned()
        }
    };
    let keys = image_keys(&dir);
    if keys.is_empty() {
        return Err(format!(
            "--dir {}: no images (png, jpg, jpeg, gif, webp, avif) in it",
            dir.display()
        ));
    }
    // Credentials of this run only: nothing outside the process can sign for its bucket.
    let credentials = Credentials::new("AKIDimageurldemo", random_secret());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async {
        let faults = OriginFaults::default();
        let mut origin_config = OriginConfig::new(&dir, credentials.clone());
        origin_config.faults = faults.clone();
        let origin = DevOrigin::start(origin_config, "127.0.0.1:0".parse().expect("an address"))
            .await
            .map_err(|e| format!("cannot start the demo's origin: {e}"))?;
        let origin_addr = origin.addr().to_string();
        let listen = args.listen.to_string();
        let (config, figment) = crate::config::load_with(
            args.config.as_deref(),
            // Short-lived URLs without stable windows, so that expiry and re-signing show
            // within a minute; a --config file may change them.
            // (`Serialized::default`: a bare `(key, value)` would land in figment's global
            // profile, which outranks the file.)
            |f| {
                f.merge(Serialized::default("signing.ttl_secs", 300))
                    .merge(Serialized::default("signing.pre_refresh_secs", 60))
                    .merge(Serialized::default("signing.align_secs", 0))
            },
            |f| {
                f.merge(Serialized::default("cos.domain", origin_addr.as_str()))
                    .merge(Serialized::default("cos.scheme", "http"))
                    .merge(Serialized::default("cos.credentials", "static"))
                    .merge(Serialized::default("cos.secret_id", credentials.secret_id()))
                    .merge(Serialized::default("cos.secret_key", credentials.secret_key()))
                    .merge(Serialized::default("cos.security_token", ""))
                    .merge(Serialized::default("cache.backend", "memory"))
                    .merge(Serialized::default("server.listen", listen.as_str()))
            },
        )?;
        tracing::info!(origin = %origin_addr, dir = %dir.display(), images = keys.len(), "demo origin serving");
        if !args.listen.ip().is_loopback() {
            tracing::warn!(listen = %args.listen, "the demo's buttons change the server without a token: anyone who can reach this address can use them");
        }
        let hooks = Hooks {
            routes: Some(Box::new(move |service: Option<&ImageUrlService>| {
                let demo = web::Data::new(Demo {
                    service: service?.clone(),
                    faults,
                    keys,
                    page: PAGE.replace("{{MODULE}}", &proxy_http::smart_image_path()),
                });
                let routes: proxy_http::ExtraRoutes = Arc::new(move |cfg| routes(cfg, &demo));
                Some(routes)
            })),
            listening: Some(Box::new(|addr| {
                println!("image-url demo: open http://{addr}/demo (Ctrl-C to stop)");
            })),
        };
        let served = serve(config, figment, hooks).await;
        origin.stop().await;
        served
    })
}

fn routes(cfg: &mut web::ServiceConfig, demo: &web::Data<Demo>) {
    cfg.app_data(demo.clone())
        .service(web::resource("/demo").route(web::get().to(page)))
        .service(web::resource("/demo/api/images").route(web::get().to(images)))
        .service(web::resource("/demo/api/expire").route(web::post().to(expire)))
        .service(web::resource("/demo/api/origin").route(web::post().to(origin)));
}

async fn page(demo: web::Data<Demo>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("cache-control", "no-store"))
        .body(demo.page.clone())
}

async fn images(demo: web::Data<Demo>) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({
        "keys": demo.keys,
        "refusing_browsers": demo.faults.refusing_browsers(),
    }))
}

#[derive(serde::Deserialize)]
struct KeyQuery {
    key: String,
}

/// The key's URL is replaced, as when it expires: the next request gets a new one.
async fn expire(demo: web::Data<Demo>, query: web::Query<KeyQuery>) -> HttpResponse {
    let Ok(key) = ObjectKey::new(&query.key) else {
        return HttpResponse::BadRequest().body("not an object key");
    };
    next_second().await;
    match demo.service.refresh(&key, &UrlOptions::new()).await {
        Ok(_) => HttpResponse::NoContent().finish(),
        Err(err) => HttpResponse::ServiceUnavailable().body(err.to_string()),
    }
}

#[derive(serde::Deserialize)]
struct OriginQuery {
    refuse_browsers: bool,
}

/// Switches the origin's hotlink protection, then re-signs every key: the page's next
/// loads use new URLs, which the browser has not cached, so the origin's answer shows.
async fn origin(demo: web::Data<Demo>, query: web::Query<OriginQuery>) -> HttpResponse {
    demo.faults.refuse_browsers(query.refuse_browsers);
    next_second().await;
    let keys: Vec<&str> = demo.keys.iter().map(String::as_str).collect();
    let options = UrlOptions::new().force_refresh(true);
    for chunk in keys.chunks(100) {
        if let Err(err) = demo.service.get_many(chunk, &options, None).await {
            return HttpResponse::ServiceUnavailable().body(err.to_string());
        }
    }
    HttpResponse::NoContent().finish()
}

/// Waits for the next whole second. A URL's signing window starts at a whole second, so
/// one signed now for a key signed earlier in this second would be the same URL, which
/// the browser has cached: the demo's buttons would show nothing.
///
/// The second is read from the clock the service signs with (`url_cache::SystemClock`,
/// the kernel's coarse clock), which may lag the precise one by a tick or more: waiting
/// on the precise clock alone sometimes left the service in the old second.
async fn next_second() {
    let since_epoch = || {
        url_cache::SystemClock
            .now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
    };
    let start = since_epoch().as_secs();
    loop {
        let now = since_epoch();
        if now.as_secs() > start {
            return;
        }
        let left = std::time::Duration::from_nanos(1_000_000_000 - u64::from(now.subsec_nanos()));
        tokio::time::sleep(left + std::time::Duration::from_millis(1)).await;
    }
}

/// The image files under `dir`, as object keys (`/`-separated relative paths), sorted.
fn image_keys(dir: &Path) -> Vec<String> {
    let mut keys = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(at) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&at) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let image = path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                matches!(
                    e.to_ascii_lowercase().as_str(),
                    "png" | "jpg" | "jpeg" | "gif" | "webp" | "avif"
                )
            });
            let key = path.strip_prefix(dir).ok().and_then(|p| {
                p.components()
                    .map(|c| c.as_os_str().to_str())
                    .collect::<Option<Vec<_>>>()
                    .map(|parts| parts.join("/"))
            });
            if let (true, Some(key)) = (image, key) {
                if ObjectKey::new(&key).is_ok() {
                    keys.push(key);
                }
            }
        }
    }
    keys.sort();
    keys.truncate(MAX_IMAGES);
    keys
}

/// 32 hex digits from the standard library's per-process random hash keys.
fn random_secret() -> String {
    use std::hash::{BuildHasher, Hasher};
    (0..2)
        .map(|i| {
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u64(i);
            format!("{:016x}", hasher.finish())
        })
        .collect()
}
