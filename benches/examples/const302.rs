//! The baseline of the redirect load test: a minimal actix-web handler that returns a
//! constant 302, one worker. Usage: `const302 127.0.0.1:PORT`.

use actix_web::{web, App, HttpResponse, HttpServer};

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8090".into());
    HttpServer::new(|| {
        App::new().default_service(web::to(|| async {
            HttpResponse::Found()
                .insert_header((
                    "location",
                    "https://examplebucket-1250000000.cos.ap-guangzhou.myqcloud.com/a.jpg",
                ))
                .insert_header(("cache-control", "private, max-age=2700"))
                .finish()
        }))
    })
    .workers(1)
    .bind(listen)?
    .run()
    .await
}
