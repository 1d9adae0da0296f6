//! The baseline of the redirect load test: a minimal actix-web handler that returns a
//! constant 302, one worker unless told. Usage: `const302 127.0.0.1:PORT [WORKERS]`.

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
    .workers(workers)
    .bind(listen)?
    .run()
    .await
}
