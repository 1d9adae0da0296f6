//! Cross-origin requests: pages on other origins calling the URL endpoints (the
//! `<smart-image>` element's batch requests).

use actix_cors::Cors;
use actix_web::http::header;

/// A configured origin that is not `scheme://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an origin (scheme://host[:port], e.g. https://app.example.com) or \"*\"")]
pub struct InvalidOrigin(pub String);

/// `origin` as browsers send it in `Origin` (a trailing `/` dropped), or why not.
pub(crate) fn check_origin(origin: &str) -> Result<String, InvalidOrigin> {
    if origin == "*" {
        return Ok(origin.to_owned());
    }
    let invalid = || InvalidOrigin(origin.to_owned());
    let url = url::Url::parse(origin).map_err(|_| invalid())?;
    let bare = matches!(url.scheme(), "http" | "https")
        && url.host().is_some()
        && url.username().is_empty()
        && url.password().is_none()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none();
    let serialized = url.origin().ascii_serialization();
    if bare && serialized == origin.trim_end_matches('/') {
        Ok(serialized)
    } else {
        Err(invalid())
    }
}

/// The CORS middleware for `origins` (already checked): preflights answered for `GET`
/// and `POST` with a JSON body, `X-Request-Id` readable by the page. A listed origin may
/// send credentials (cookies of an authenticating proxy in front); `"*"` admits every
/// origin and never credentials. A request from any other origin is served without CORS
/// headers, so its browser keeps the answer from the page.
pub(crate) fn middleware(origins: &[String]) -> Cors {
    let mut cors = Cors::default()
        .allowed_methods(["GET", "POST"])
        .allowed_headers([header::CONTENT_TYPE])
        .expose_headers([header::HeaderName::from_static(
            crate::request_id::REQUEST_ID_HEADER,
        )])
        .max_age(3600)
        .block_on_origin_mismatch(false);
    if origins.iter().any(|o| o == "*") {
        cors = cors.allow_any_origin().send_wildcard();
    } else {
        for origin in origins {
            cors = cors.allowed_origin(origin);
        }
        cors = cors.supports_credentials();
    }
    cors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_scheme_host_and_port_only() {
        for ok in [
            "https://app.example.com",
            "http://127.0.0.1:5173",
            "https://app.example.com/",
            "*",
        ] {
            assert!(check_origin(ok).is_ok(), "{ok}");
        }
        assert_eq!(
            check_origin("https://app.example.com/").unwrap(),
            "https://app.example.com"
        );
        for bad in [
            "app.example.com",
            "https://app.example.com/path",
            "https://user@app.example.com",
            "https://app.example.com?x=1",
            "ftp://app.example.com",
            "https://APP.example.com",
            "https://app.example.com:443",
            "",
        ] {
            assert!(check_origin(bad).is_err(), "{bad}");
        }
    }
}
