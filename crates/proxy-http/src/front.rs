//! The key routes ahead of the router, for the bundled server.
//!
//! Every image view is a `GET /api/v1/images/{key}/proxy`. Through actix's router it
//! costs a route match, the resource path's bookkeeping and a boxed future of the
//! router's own before the handler is reached: about 600 instructions, 3 % of a cached
//! redirect. [`KeyRouteFront`] sits just inside the other middleware and hands a key
//! route straight to its endpoint; every other path goes on to the router. The routes
//! are the same either way: the router keeps the key routes (an `App` built with
//! [`crate::configure`] alone still answers them), and both ask [`KeyRoutes::serves`]
//! which paths are theirs.
//!
//! Key routes are taken before any other route, including extra routes registered ahead
//! of the API's: none may share the `/api/v1/images/{key}/proxy|status|refresh` paths.

use std::future::{ready, Ready};

use actix_web::body::BoxBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform};
use futures::future::Either;

use crate::handlers::{serve_key_route, KeyRouteFuture, KeyRoutes};

/// The middleware: the key routes of one listener (see [`KeyRoutes::on`]), answered
/// before the router is asked.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyRouteFront {
    routes: KeyRoutes,
}

impl KeyRouteFront {
    /// In front of a router that has `routes` registered.
    pub(crate) fn new(routes: KeyRoutes) -> Self {
        KeyRouteFront { routes }
    }
}

impl<S> Transform<S, ServiceRequest> for KeyRouteFront
where
    S: Service<ServiceRequest, Response = ServiceResponse<BoxBody>, Error = actix_web::Error>,
{
    type Response = ServiceResponse<BoxBody>;
    type Error = actix_web::Error;
    type Transform = KeyRouteFrontService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(KeyRouteFrontService {
            routes: self.routes,
            service,
        }))
    }
}

/// [`KeyRouteFront`] around the router.
#[derive(Debug)]
pub(crate) struct KeyRouteFrontService<S> {
    routes: KeyRoutes,
    service: S,
}

impl<S> Service<ServiceRequest> for KeyRouteFrontService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<BoxBody>, Error = actix_web::Error>,
{
    type Response = ServiceResponse<BoxBody>;
    type Error = actix_web::Error;
    type Future = Either<KeyRouteFuture, S::Future>;

    actix_web::dev::forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        if self.routes.serves(req.path()) {
            Either::Left(serve_key_route(req))
        } else {
            Either::Right(self.service.call(req))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::task::Poll;

    use actix_web::http::StatusCode;
    use actix_web::{test, web, App};
    use cos_sign::{CosSigner, Credentials, Endpoint};
    use image_url_service::ImageUrlService;
    use url_cache::MemoryCache;

    use super::*;
    use crate::handlers::Surface;
    use crate::{ApiConfig, AppState};

    fn memory_service() -> ImageUrlService {
        let signer = CosSigner::new(
            Credentials::new("AKIDexample", "secret"),
            Endpoint::bucket("examplebucket-1250000000", "ap-guangzhou").unwrap(),
        );
        ImageUrlService::builder(signer, Arc::new(MemoryCache::new()))
            .build()
            .unwrap()
    }

    /// A key route's work waits for its first poll: dropped before it (a client gone
    /// while the request was queued), nothing is counted or signed; polled, it answers;
    /// polled again, it answers an error rather than panicking.
    #[actix_web::test]
    async fn a_key_route_works_when_first_polled_and_only_once() {
        let service = memory_service();
        let state = web::Data::new(AppState::new(service.clone(), ApiConfig::default()));
        let request = || {
            test::TestRequest::get()
                .uri("/api/v1/images/a.jpg/proxy")
                .app_data(state.clone())
                .to_srv_request()
        };
        drop(serve_key_route(request()));
        assert_eq!(service.stats().requests, 0);

        let mut route = serve_key_route(request());
        let response = (&mut route).await.unwrap();
        assert_eq!(response.status(), StatusCode::FOUND);
        assert_eq!(service.stats().requests, 1);
        match futures::poll!(&mut route) {
            Poll::Ready(Err(error)) => assert_eq!(
                error.as_response_error().status_code(),
                StatusCode::INTERNAL_SERVER_ERROR
            ),
            Poll::Ready(Ok(_)) => panic!("a second answer"),
            Poll::Pending => panic!("a second poll waits"),
        }
        assert_eq!(service.stats().requests, 1);
    }

    /// In front of a listener's router, the front answers that listener's key routes
    /// and leaves every other path, and the other listener's key routes, to the router.
    #[actix_web::test]
    async fn the_front_answers_its_surfaces_key_routes_only() {
        let service = memory_service();
        let state = web::Data::new(AppState::new(service.clone(), ApiConfig::default()));
        let app = test::init_service(
            App::new()
                .app_data(state)
                .wrap(KeyRouteFront::new(KeyRoutes::on(Surface::Public)))
                .configure(|cfg| crate::handlers::routes(cfg, Surface::Public)),
        )
        .await;
        for (method, path, status) in [
            ("GET", "/api/v1/images/a.jpg/proxy", StatusCode::FOUND),
            ("GET", "/api/v1/images/a.jpg/status", StatusCode::OK),
            // The admin surface's route: not served here, by the front or the router.
            (
                "POST",
                "/api/v1/images/a.jpg/refresh",
                StatusCode::NOT_FOUND,
            ),
            ("GET", "/livez", StatusCode::OK),
            ("GET", "/api/v1/images/", StatusCode::NOT_FOUND),
        ] {
            let request = test::TestRequest::default()
                .method(method.parse().unwrap())
                .uri(path)
                .to_request();
            let response = test::call_service(&app, request).await;
            assert_eq!(response.status(), status, "{method} {path}");
        }
        // The redirect asked the service for a URL (a status is not a URL request).
        assert_eq!(service.stats().requests, 1);
    }
}
