//! Signature verification, for local origins and tests.

use crate::encode::{percent_decode_path, sign_name, sign_value};
use crate::signer::{new_mac, sign_with, SECURITY_TOKEN_PARAM};
use crate::{Credentials, Rejection, SigningWindow};

/// A request as a server sees it.
#[derive(Debug, Clone, Copy)]
pub struct VerifyRequest<'a> {
    /// The HTTP method (any case).
    pub method: &'a str,
    /// The raw, still percent-encoded URL path, starting with `/`.
    pub path: &'a str,
    /// The raw query string without `?` (empty when there is none).
    pub query: &'a str,
    /// The request headers, names in any case. Include `Host` and `Authorization`.
    pub headers: &'a [(&'a str, &'a str)],
}

/// What a valid signature covered.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Verified {
    /// The signing window.
    pub window: SigningWindow,
    /// The decoded object key the signature covers, without the leading `/`.
    pub key: String,
    /// Whether the signature came from the query string (a presigned URL) rather than
    /// the `Authorization` header.
    pub presigned: bool,
    /// The query parameters the signature covers, as signed (lower case, encoded). A
    /// server must act only on these: any other parameter is the client's own addition.
    pub signed_params: Vec<String>,
}

/// Verifies a request's COS signature v5 against `credentials` at time `now`
/// (unix seconds). Both forms are accepted: a presigned URL's query parameters, or an
/// `Authorization` header (the query form wins when both are present).
///
/// Checks, in order: the signature is present and well formed, the algorithm is sha1,
/// `q-ak` is the credentials' secret id, `now` lies in `q-sign-time`, the STS token (if
/// the credentials have one) is present and equal, every signed header and parameter is
/// present, and the recomputed signature matches (compared in constant time). The `host`
/// header is signed without its port, as the official SDK signs it.
///
/// ```
/// use cos_sign::*;
/// let creds = Credentials::new("AKIDexample", "secret");
/// let signer = CosSigner::new(creds.clone(), Endpoint::custom_domain("127.0.0.1:9000")?);
/// let url = signer.presign_url(&ObjectKey::new("a b.jpg")?, SigningWindow::new(100, 200)?, &PresignOptions::new())?;
/// let (path, query) = url.split_once("127.0.0.1:9000").unwrap().1.split_once('?').unwrap();
/// let request = VerifyRequest { method: "GET", path, query, headers: &[("Host", "127.0.0.1:9000")] };
/// assert_eq!(verify(&creds, &request, 150)?.key, "a b.jpg");
/// assert_eq!(verify(&creds, &request, 201), Err(Rejection::Expired));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn verify(
    credentials: &Credentials,
    request: &VerifyRequest<'_>,
    now: i64,
) -> Result<Verified, Rejection> {
    let query: Vec<(String, String)> = url::form_urlencoded::parse(request.query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    };

    let presigned = query.iter().any(|(k, _)| k == "q-signature");
    let fields: Vec<(String, String)> = if presigned {
        query
            .iter()
            .filter(|(k, _)| k.starts_with("q-"))
            .cloned()
            .collect()
    } else {
        let auth = header("authorization").ok_or(Rejection::MissingSignature)?;
        auth.split('&')
            .filter_map(|part| part.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect()
    };
    let field = |name: &str| {
        let mut found = fields.iter().filter(|(k, _)| k == name);
        match (found.next(), found.next()) {
            (Some((_, v)), None) => Ok(v.as_str()),
            (None, _) => Err(Rejection::Malformed("a q- field is missing")),
            (Some(_), Some(_)) => Err(Rejection::Malformed("a q- field is repeated")),
        }
    };

    if !field("q-sign-algorithm")?.eq_ignore_ascii_case("sha1") {
        return Err(Rejection::UnsupportedAlgorithm);
    }
    let sign_time = parse_window(field("q-sign-time")?)?;
    let key_time = parse_window(field("q-key-time")?)?;
    let header_list = field("q-header-list")?;
    let param_list = field("q-url-param-list")?;
    let signature = field("q-signature")?;
    if signature.len() != 40 {
        return Err(Rejection::Malformed("q-signature is not 40 hex digits"));
    }
    if field("q-ak")? != credentials.secret_id() {
        return Err(Rejection::AccessKeyMismatch);
    }
    if now < sign_time.start() {
        return Err(Rejection::NotYetValid);
    }
    if now > sign_time.end() {
        return Err(Rejection::Expired);
    }
    if let Some(expected) = credentials.session_token() {
        let sent = query
            .iter()
            .find(|(k, _)| k == SECURITY_TOKEN_PARAM)
            .map(|(_, v)| v.as_str())
            .or_else(|| header(SECURITY_TOKEN_PARAM));
        if !sent.is_some_and(|t| constant_time_eq(t.as_bytes(), expected.as_bytes())) {
            return Err(Rejection::SecurityTokenMismatch);
        }
    }

    let mut headers = Vec::new();
    for name in header_list.split(';').filter(|n| !n.is_empty()) {
        let (_, value) = request
            .headers
            .iter()
            .find(|(n, _)| sign_name(n) == name)
            .ok_or_else(|| Rejection::MissingSignedHeader(name.to_owned()))?;
        let value = if name == "host" {
            host_without_port(value)
        } else {
            value
        };
        headers.push((name.to_owned(), sign_value(value)));
    }
    let mut params = Vec::new();
    let mut signed_params = Vec::new();
    for name in param_list.split(';').filter(|n| !n.is_empty()) {
        signed_params.push(name.to_owned());
        let (_, value) = query
            .iter()
            .find(|(k, _)| sign_name(k) == name)
            .ok_or_else(|| Rejection::MissingSignedParameter(name.to_owned()))?;
        params.push((name.to_owned(), sign_value(value)));
    }

    let path = percent_decode_path(request.path).ok_or(Rejection::Malformed(
        "the path is not percent-encoded UTF-8",
    ))?;
    let mac = new_mac(credentials.secret_key().as_bytes());
    // Signature v5 keys the HMAC with KeyTime and signs SignTime; the SDKs set both equal,
    // and so does this crate, so one window drives both.
    if key_time != sign_time {
        return Err(Rejection::Malformed("q-key-time differs from q-sign-time"));
    }
    let method = request.method.to_ascii_lowercase();
    let key_path = path
        .strip_prefix('/')
        .ok_or(Rejection::Malformed("the path does not start with '/'"))?;
    let expected = sign_with(&mac, &method, key_path, sign_time, params, headers);
    if !constant_time_eq(&expected.hex, signature.to_ascii_lowercase().as_bytes()) {
        return Err(Rejection::SignatureMismatch);
    }
    Ok(Verified {
        window: sign_time,
        key: path.strip_prefix('/').unwrap_or(&path).to_owned(),
        presigned,
        signed_params,
    })
}

fn parse_window(s: &str) -> Result<SigningWindow, Rejection> {
    let bad = Rejection::Malformed("a time field is not start;end");
    let (start, end) = s.split_once(';').ok_or(bad.clone())?;
    let start = start.parse().map_err(|_| bad.clone())?;
    let end = end.parse().map_err(|_| bad.clone())?;
    SigningWindow::new(start, end).map_err(|_| bad)
}

/// `host[:port]` → `host`, `[v6]:port` → `v6`.
fn host_without_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split_once(']').map(|(h, _)| h).unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CosSigner, Endpoint, ObjectKey, PresignOptions, Scheme};

    fn creds() -> Credentials {
        Credentials::new("AKIDtest", "secret-key")
    }

    fn signer(creds: Credentials) -> CosSigner {
        CosSigner::new(
            creds,
            Endpoint::custom_domain("127.0.0.1:9000")
                .unwrap()
                .with_scheme(Scheme::Http),
        )
    }

    fn split(url: &str) -> (String, String) {
        let rest = url.strip_prefix("http://127.0.0.1:9000").unwrap();
        let (p, q) = rest.split_once('?').unwrap();
        (p.to_owned(), q.to_owned())
    }

    #[test]
    fn presigned_url_round_trip_and_tampering() {
        let key = ObjectKey::new("dir/a b+c.jpg").unwrap();
        let w = SigningWindow::new(1000, 2000).unwrap();
        let options = PresignOptions::new()
            .param("response-content-type", "image/webp")
            .header("x-cos-traffic-limit", "819200");
        let url = signer(creds()).presign_url(&key, w, &options).unwrap();
        let (path, query) = split(&url);
        let headers = [
            ("Host", "127.0.0.1:9000"),
            ("X-Cos-Traffic-Limit", "819200"),
        ];
        let req = VerifyRequest {
            method: "GET",
            path: &path,
            query: &query,
            headers: &headers,
        };
        let ok = verify(&creds(), &req, 1500).unwrap();
        assert_eq!(ok.key, "dir/a b+c.jpg");
        assert!(ok.presigned);
        assert_eq!(verify(&creds(), &req, 999), Err(Rejection::NotYetValid));
        assert_eq!(verify(&creds(), &req, 2001), Err(Rejection::Expired));
        assert_eq!(
            verify(
                &creds(),
                &VerifyRequest {
                    method: "HEAD",
                    ..req
                },
                1500
            ),
            Err(Rejection::SignatureMismatch)
        );
        let other_key = Credentials::new("AKIDtest", "other");
        assert_eq!(
            verify(&other_key, &req, 1500),
            Err(Rejection::SignatureMismatch)
        );
        let other_id = Credentials::new("AKIDother", "secret-key");
        assert_eq!(
            verify(&other_id, &req, 1500),
            Err(Rejection::AccessKeyMismatch)
        );
        let tampered = query.replace("image%2Fwebp", "text%2Fhtml");
        assert_eq!(
            verify(
                &creds(),
                &VerifyRequest {
                    query: &tampered,
                    ..req
                },
                1500
            ),
            Err(Rejection::SignatureMismatch)
        );
        let wrong_host = [
            ("Host", "evil.example:9000"),
            ("X-Cos-Traffic-Limit", "819200"),
        ];
        assert_eq!(
            verify(
                &creds(),
                &VerifyRequest {
                    headers: &wrong_host,
                    ..req
                },
                1500
            ),
            Err(Rejection::SignatureMismatch)
        );
        let no_header = [("Host", "127.0.0.1:9000")];
        assert_eq!(
            verify(
                &creds(),
                &VerifyRequest {
                    headers: &no_header,
                    ..req
                },
                1500
            ),
            Err(Rejection::MissingSignedHeader("x-cos-traffic-limit".into()))
        );
        assert_eq!(
            verify(
                &creds(),
                &VerifyRequest {
                    path: "/dir/other.jpg",
                    ..req
                },
                1500
            ),
            Err(Rejection::SignatureMismatch)
        );
        let none = VerifyRequest {
            method: "GET",
            path: &path,
            query: "",
            headers: &no_header,
        };
        assert_eq!(
            verify(&creds(), &none, 1500),
            Err(Rejection::MissingSignature)
        );
    }

    #[test]
    fn authorization_header_round_trip_with_token() {
        let creds = creds().with_session_token("tok+/=", None);
        let key = ObjectKey::new("a.jpg").unwrap();
        let w = SigningWindow::new(1000, 2000).unwrap();
        let signed = signer(creds.clone())
            .authorization(&key, w, &PresignOptions::new().method(crate::Method::Put))
            .unwrap();
        let token = signed.security_token.clone().unwrap();
        let headers = [
            ("host", "127.0.0.1:9000"),
            ("authorization", signed.authorization.as_str()),
            ("x-cos-security-token", token.as_str()),
        ];
        let req = VerifyRequest {
            method: "PUT",
            path: "/a.jpg",
            query: "",
            headers: &headers,
        };
        let ok = verify(&creds, &req, 1500).unwrap();
        assert!(!ok.presigned);
        let no_token = &headers[..2];
        assert_eq!(
            verify(
                &creds,
                &VerifyRequest {
                    headers: no_token,
                    ..req
                },
                1500
            ),
            Err(Rejection::SecurityTokenMismatch)
        );
    }

    #[test]
    fn malformed_fields() {
        let headers = [("authorization", "q-sign-algorithm=md5&q-ak=x")];
        let req = VerifyRequest {
            method: "GET",
            path: "/a",
            query: "",
            headers: &headers,
        };
        assert_eq!(
            verify(&creds(), &req, 1),
            Err(Rejection::UnsupportedAlgorithm)
        );
        let req = VerifyRequest {
            query: "q-signature=abc",
            headers: &[],
            ..req
        };
        assert!(matches!(
            verify(&creds(), &req, 1),
            Err(Rejection::Malformed(_))
        ));
    }

    #[test]
    fn host_port_stripping() {
        assert_eq!(host_without_port("a.b:80"), "a.b");
        assert_eq!(host_without_port("a.b"), "a.b");
        assert_eq!(host_without_port("[::1]:9000"), "::1");
    }
}
