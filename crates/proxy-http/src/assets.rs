//! The front-end component, embedded in the binary: `GET /static/smart-image.js` and its
//! versioned path.
//!
//! The module is `web/dist/smart-image.js`, built from `web/src` by `npm run build` and
//! committed, so that building the server needs no Node.js (CI checks that the committed
//! file is what the sources build to).

use std::sync::LazyLock;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use sha2::{Digest, Sha256};

use crate::ApiError;

/// The `<smart-image>` module.
pub(crate) const SMART_IMAGE_JS: &[u8] = include_bytes!("../../../web/dist/smart-image.js");

/// The first 16 hex digits of the module's SHA-256: its version and its `ETag`.
static VERSION: LazyLock<String> =
    LazyLock::new(|| hex::encode(&Sha256::digest(SMART_IMAGE_JS)[..8]));

/// The versioned path of the `<smart-image>` module, `/static/smart-image.<hash>.js`:
/// cached by browsers and CDNs for a year, since its content never changes. Pages the
/// server renders use it; `/static/smart-image.js` is the stable name for hand-written
/// pages (revalidated every 5 minutes).
pub fn smart_image_path() -> String {
    format!("/static/smart-image.{}.js", *VERSION)
}

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/static/{file}").route(web::get().to(asset)));
}

async fn asset(req: HttpRequest, file: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let cache_control = if file.as_str() == "smart-image.js" {
        "public, max-age=300"
    } else if file
        .strip_prefix("smart-image.")
        .and_then(|rest| rest.strip_suffix(".js"))
        == Some(VERSION.as_str())
    {
        "public, max-age=31536000, immutable"
    } else {
        return Err(ApiError::NotFound);
    };
    let etag = format!("\"{}\"", *VERSION);
    let matches = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim() == "*"
                || v.split(',')
                    .any(|t| t.trim().trim_start_matches("W/") == etag)
        });
    let mut response = if matches {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    response
        .insert_header((header::ETAG, etag))
        .insert_header((header::CACHE_CONTROL, cache_control))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"));
    Ok(if matches {
        response.finish()
    } else {
        response
            .content_type("text/javascript; charset=utf-8")
            .body(SMART_IMAGE_JS)
    })
}
