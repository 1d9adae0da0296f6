//! The baseline of the redirect load test: a minimal actix-web handler that returns a
//! constant 302, one worker unless told. Usage: `const302 127.0.0.1:PORT [WORKERS]`;
//! `CONST302_LOCATION` replaces the `Location` (to compare with a longer signed URL).

use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, App, HttpResponse, HttpServer};

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8090".into());
    // A second worker shows what two workers cost on this machine, without our code.
    let workers = std::env::args()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let location: &'static str = Box::leak(
        std::env::var("CONST302_LOCATION")
            .unwrap_or_else(|_| {
                "https://examplebucket-1250000000.cos.ap-guangzhou.myqcloud.com/a.jpg".into()
            })
            .into_boxed_str(),
    );
    // Static header values, made once and inserted directly: per request no conversion
    // or check (a static value's clone copies a pointer), the cheapest a constant answer
    // gets, whatever the Location's length.
    let location = HeaderValue::from_static(location);
    let cache_control = HeaderValue::from_static("private, max-age=2700");
    HttpServer::new(move || {
        let (location, cache_control) = (location.clone(), cache_control.clone());
        App::new().default_service(web::to(move || {
            let (location, cache_control) = (location.clone(), cache_control.clone());
            async move {
                let mut response = HttpResponse::Found().finish();
                let headers = response.headers_mut();
                headers.insert(header::LOCATION, location);
                headers.insert(header::CACHE_CONTROL, cache_control);
                response
            }
        }))
    })
    .workers(workers)
    .bind(listen)?
    .run()
    .await
}
