//! Signature v5: the signing core, presigned URLs and `Authorization` headers.

use std::fmt;
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use sha1::{Digest, Sha1};

use crate::encode::{push_query_component, push_sign_component, sign_name, sign_value};
use crate::{Credentials, Endpoint, Error, Method, ObjectKey, Result, SigningWindow};

type HmacSha1 = Hmac<Sha1>;

/// The query parameter that carries an STS session token.
pub const SECURITY_TOKEN_PARAM: &str = "x-cos-security-token";

/// Query parameter names that belong to the signature itself.
pub(crate) const AUTH_PARAMS: [&str; 7] = [
    "q-sign-algorithm",
    "q-ak",
    "q-sign-time",
    "q-key-time",
    "q-header-list",
    "q-url-param-list",
    "q-signature",
];

/// What to sign besides the key and the window.
///
/// ```
/// use cos_sign::{Method, PresignOptions};
/// let options = PresignOptions::new()
///     .param("response-content-type", "image/webp")
///     .param("imageMogr2/thumbnail/200x", "") // COS image processing: a name without value
///     .header("x-cos-traffic-limit", "819200")
///     .method(Method::Get);
/// assert!(options.sign_host);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PresignOptions {
    /// The HTTP method the URL is for (default GET).
    pub method: Method,
    /// Signed query parameters, in the order they appear in the URL.
    pub params: Vec<(String, String)>,
    /// Signed headers; the client must send them with these exact values.
    pub headers: Vec<(String, String)>,
    /// Sign the `host` header (default true, as the official SDKs do).
    pub sign_host: bool,
}

impl Default for PresignOptions {
    fn default() -> Self {
        PresignOptions {
            method: Method::Get,
            params: Vec::new(),
            headers: Vec::new(),
            sign_host: true,
        }
    }
}

impl PresignOptions {
    /// GET, no parameters or headers, host signed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the method.
    pub fn method(mut self, method: Method) -> Self {
        self.method = method;
        self
    }

    /// Adds a signed query parameter (`value` may be empty).
    pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.params.push((name.into(), value.into()));
        self
    }

    /// Adds a signed header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Chooses whether the `host` header is signed.
    pub fn sign_host(mut self, sign_host: bool) -> Self {
        self.sign_host = sign_host;
        self
    }
}

/// The result of [`CosSigner::authorization`]: the headers a request must carry.
#[derive(Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    /// The value of the `Authorization` header.
    pub authorization: String,
    /// The STS token to send as the `x-cos-security-token` header, when there is one
    /// (it is part of the signed headers).
    pub security_token: Option<String>,
}

impl fmt::Debug for SignedHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedHeaders")
            .field("authorization", &"<redacted>")
            .field(
                "security_token",
                &self.security_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Signs requests for one bucket endpoint with one set of credentials.
///
/// Cheap to share (`Arc<CosSigner>`); signing takes `&self` and touches no global state.
///
/// ```
/// use cos_sign::{CosSigner, Credentials, Endpoint, ObjectKey, PresignOptions, SigningWindow};
/// let signer = CosSigner::new(
///     Credentials::new("AKIDQjz3ltompVjBni5LitkWHFlFpwkn9U5q", "BQYIM75p8x0iWVFSIgqEKwFprpRSVHlz"),
///     Endpoint::bucket("examplebucket-1250000000", "ap-beijing")?,
/// );
/// let key = ObjectKey::new("exampleobject")?;
/// let window = SigningWindow::new(1557989151, 1557996351)?;
/// let url = signer.presign_url(&key, window, &PresignOptions::new())?;
/// assert!(url.ends_with("q-signature=27cf30444826da1b67c09aa099a56cfe3a6a1cc5"));
/// # Ok::<(), cos_sign::Error>(())
/// ```
pub struct CosSigner {
    credentials: Credentials,
    endpoint: Endpoint,
    /// HMAC keyed with the secret key, cloned per signature: the key schedule (two SHA-1
    /// blocks) is computed once instead of on every URL.
    secret_mac: HmacSha1,
    /// The SignKey HMAC of the last window signed (four SHA-1 blocks saved per URL).
    last_sign_key: Mutex<Option<(SigningWindow, HmacSha1)>>,
    /// The endpoint's host as signed (`quote(host)`), computed once.
    signed_host: String,
}

impl Clone for CosSigner {
    fn clone(&self) -> Self {
        CosSigner::new(self.credentials.clone(), self.endpoint.clone())
    }
}

impl fmt::Debug for CosSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CosSigner")
            .field("credentials", &self.credentials)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// The signed parts of a request, computed once, rendered as URL or header.
pub(crate) struct Signature {
    pub(crate) header_list: String,
    pub(crate) param_list: String,
    pub(crate) hex: [u8; 40],
}

impl Signature {
    pub(crate) fn hex_str(&self) -> &str {
        std::str::from_utf8(&self.hex).unwrap_or_default()
    }
}

impl CosSigner {
    /// A signer for `endpoint` with `credentials`.
    pub fn new(credentials: Credentials, endpoint: Endpoint) -> Self {
        let secret_mac = new_mac(credentials.secret_key().as_bytes());
        let endpoint_host = endpoint.signing_host();
        let signed_host = sign_value(endpoint_host);
        CosSigner {
            credentials,
            endpoint,
            secret_mac,
            last_sign_key: Mutex::new(None),
            signed_host,
        }
    }

    /// The credentials.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// A presigned URL for `key` valid during `window`.
    ///
    /// Equivalent to the official SDK's `get_presigned_url`: same scheme, host and path
    /// bytes, same query parameters. An STS token goes into the URL as
    /// `x-cos-security-token` and is signed as a parameter.
    pub fn presign_url(
        &self,
        key: &ObjectKey,
        window: SigningWindow,
        options: &PresignOptions,
    ) -> Result<String> {
        let token = self.credentials.session_token();
        let mut params = signed_params(&options.params, token)?;
        if let Some(token) = token {
            params.push((sign_name(SECURITY_TOKEN_PARAM), sign_value(token)));
        }
        let headers = self.signed_headers(options, None)?;
        let signature = self.sign(options.method, key.as_str(), window, params, headers);

        let mut url = String::with_capacity(256 + key.as_str().len() * 3);
        url.push_str(self.endpoint.scheme().as_str());
        url.push_str("://");
        url.push_str(self.endpoint.authority());
        url.push('/');
        key.push_url_path(&mut url);
        url.push_str("?q-sign-algorithm=sha1&q-ak=");
        push_query_component(&mut url, self.credentials.secret_id());
        let time = format!("{}%3B{}", window.start(), window.end());
        url.push_str("&q-sign-time=");
        url.push_str(&time);
        url.push_str("&q-key-time=");
        url.push_str(&time);
        url.push_str("&q-header-list=");
        push_query_component(&mut url, &signature.header_list);
        url.push_str("&q-url-param-list=");
        push_query_component(&mut url, &signature.param_list);
        url.push_str("&q-signature=");
        url.push_str(signature.hex_str());
        for (name, value) in &options.params {
            url.push('&');
            push_query_component(&mut url, name);
            url.push('=');
            push_query_component(&mut url, value);
        }
        if let Some(token) = token {
            url.push('&');
            url.push_str(SECURITY_TOKEN_PARAM);
            url.push('=');
            push_query_component(&mut url, token);
        }
        Ok(url)
    }

    /// The signing window of `url` if it is a presigned URL of this signer's endpoint for
    /// `key`: the same scheme, host and path, then `q-sign-algorithm=sha1`, a `q-ak` and
    /// a well-formed `q-sign-time`. `None` for anything else.
    ///
    /// For checking URLs read back from a cache before handing them out: a URL of another
    /// host or another object is refused. The signature is not checked (that would cost
    /// as much as signing); a forged one only fails at COS. Allocates nothing.
    ///
    /// ```
    /// # use cos_sign::{CosSigner, Credentials, Endpoint, ObjectKey, PresignOptions, SigningWindow};
    /// let signer = CosSigner::new(Credentials::new("AKIDexample", "secret"), Endpoint::bucket("b-1250000000", "ap-guangzhou")?);
    /// let key = ObjectKey::new("images/a b.jpg")?;
    /// let window = SigningWindow::new(1_700_000_000, 1_700_003_600)?;
    /// let url = signer.presign_url(&key, window, &PresignOptions::new())?;
    /// assert_eq!(signer.presigned_window(&key, &url), Some(window));
    /// assert_eq!(signer.presigned_window(&ObjectKey::new("images/a")?, &url), None);
    /// assert_eq!(signer.presigned_window(&key, "http://169.254.169.254/latest"), None);
    /// # Ok::<(), cos_sign::Error>(())
    /// ```
    pub fn presigned_window(&self, key: &ObjectKey, url: &str) -> Option<SigningWindow> {
        self.endpoint.presigned_window(key, url)
    }

    /// The `Authorization` header value for a request to `key` during `window`.
    ///
    /// `options.params` are the request's query parameters to sign, `options.headers` its
    /// headers to sign. An STS token is signed as the `x-cos-security-token` header, which
    /// the caller sends (see [`SignedHeaders::security_token`]).
    pub fn authorization(
        &self,
        key: &ObjectKey,
        window: SigningWindow,
        options: &PresignOptions,
    ) -> Result<SignedHeaders> {
        let token = self.credentials.session_token();
        let params = signed_params(&options.params, None)?;
        let headers = self.signed_headers(options, token)?;
        let signature = self.sign(options.method, key.as_str(), window, params, headers);
        Ok(SignedHeaders {
            authorization: format!(
                "q-sign-algorithm=sha1&q-ak={}&q-sign-time={window}&q-key-time={window}&q-header-list={}&q-url-param-list={}&q-signature={}",
                self.credentials.secret_id(),
                signature.header_list,
                signature.param_list,
                signature.hex_str()
            ),
            security_token: token.map(str::to_owned),
        })
    }

    fn signed_headers(
        &self,
        options: &PresignOptions,
        token_header: Option<&str>,
    ) -> Result<Vec<(String, String)>> {
        let mut headers = Vec::with_capacity(options.headers.len() + 2);
        for (name, value) in &options.headers {
            if name.is_empty() || !name.bytes().all(is_token_char) {
                return Err(invalid_header(name, "not a valid header name"));
            }
            if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                return Err(invalid_header(name, "value contains CR, LF or NUL"));
            }
            let signed = sign_name(name);
            if headers.iter().any(|(n, _): &(String, String)| *n == signed) {
                return Err(invalid_header(name, "given twice"));
            }
            headers.push((signed, sign_value(value)));
        }
        if options.sign_host && !headers.iter().any(|(n, _)| n == "host") {
            headers.push(("host".to_owned(), self.signed_host.clone()));
        }
        if let Some(token) = token_header {
            if headers.iter().any(|(n, _)| n == SECURITY_TOKEN_PARAM) {
                return Err(invalid_header(
                    SECURITY_TOKEN_PARAM,
                    "set by the credentials",
                ));
            }
            headers.push((SECURITY_TOKEN_PARAM.to_owned(), sign_value(token)));
        }
        Ok(headers)
    }

    /// The signing core, shared with verification: `key_path` is the decoded path without
    /// its leading `/`; entries are `(signed name, signed value)`.
    pub(crate) fn sign(
        &self,
        method: Method,
        key_path: &str,
        window: SigningWindow,
        params: Vec<(String, String)>,
        headers: Vec<(String, String)>,
    ) -> Signature {
        let sign_key_mac = self.cached_sign_key_mac(window);
        sign_with_key(
            &sign_key_mac,
            method.signed_name(),
            key_path,
            window,
            params,
            headers,
        )
    }

    /// The SignKey HMAC for `window`, reused while consecutive signatures share a window
    /// (always, with aligned windows; within a second, without). `try_lock` only: a
    /// contended lock costs a recomputation, never a wait.
    fn cached_sign_key_mac(&self, window: SigningWindow) -> HmacSha1 {
        if let Ok(cached) = self.last_sign_key.try_lock() {
            if let Some((cached_window, mac)) = &*cached {
                if *cached_window == window {
                    return mac.clone();
                }
            }
        }
        let mac = sign_key_mac(&self.secret_mac, window);
        if let Ok(mut cached) = self.last_sign_key.try_lock() {
            *cached = Some((window, mac.clone()));
        }
        mac
    }
}

/// Computes a signature with a secret-keyed HMAC; see `CosSigner::sign`.
pub(crate) fn sign_with(
    secret_mac: &HmacSha1,
    method: &str,
    key_path: &str,
    window: SigningWindow,
    params: Vec<(String, String)>,
    headers: Vec<(String, String)>,
) -> Signature {
    let sign_key_mac = sign_key_mac(secret_mac, window);
    sign_with_key(&sign_key_mac, method, key_path, window, params, headers)
}

/// HMAC keyed with SignKey = hex(HMAC-SHA1(SecretKey, KeyTime)): depends on the window
/// only, so it can be reused for every signature in the same window.
fn sign_key_mac(secret_mac: &HmacSha1, window: SigningWindow) -> HmacSha1 {
    let mut mac = secret_mac.clone();
    mac.update(window.to_string().as_bytes());
    let mut sign_key = [0u8; 40];
    hex_into(&mac.finalize().into_bytes(), &mut sign_key);
    new_mac(&sign_key)
}

fn sign_with_key(
    sign_key_mac: &HmacSha1,
    method: &str,
    key_path: &str,
    window: SigningWindow,
    mut params: Vec<(String, String)>,
    mut headers: Vec<(String, String)>,
) -> Signature {
    params.sort_unstable();
    headers.sort_unstable();

    // HttpString = method \n path \n params \n headers \n, hashed as it is written.
    let mut http = Sha1::new();
    http.update(method.as_bytes());
    http.update(b"\n");
    http.update(b"/");
    http.update(key_path.as_bytes());
    http.update(b"\n");
    update_pairs(&mut http, &params);
    http.update(b"\n");
    update_pairs(&mut http, &headers);
    http.update(b"\n");
    let mut http_hex = [0u8; 40];
    hex_into(&http.finalize(), &mut http_hex);

    // StringToSign = "sha1\n" KeyTime "\n" hex(SHA1(HttpString)) "\n"
    let mut mac = sign_key_mac.clone();
    mac.update(b"sha1\n");
    mac.update(itoa_pair(window).as_bytes());
    mac.update(b"\n");
    mac.update(&http_hex);
    mac.update(b"\n");
    let mut hex = [0u8; 40];
    hex_into(&mac.finalize().into_bytes(), &mut hex);

    Signature {
        header_list: join_names(&headers),
        param_list: join_names(&params),
        hex,
    }
}

pub(crate) fn new_mac(key: &[u8]) -> HmacSha1 {
    // HMAC accepts keys of any length; this cannot fail.
    <HmacSha1 as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
}

/// `start;end` without going through `fmt`.
fn itoa_pair(window: SigningWindow) -> String {
    let mut out = String::with_capacity(24);
    out.push_str(&window.start().to_string());
    out.push(';');
    out.push_str(&window.end().to_string());
    out
}

fn hex_into(bytes: &[u8], out: &mut [u8; 40]) {
    // 20 bytes always fill 40 hex digits.
    let _ = hex::encode_to_slice(bytes, out);
}

fn update_pairs(hash: &mut Sha1, pairs: &[(String, String)]) {
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            hash.update(b"&");
        }
        hash.update(name.as_bytes());
        hash.update(b"=");
        hash.update(value.as_bytes());
    }
}

fn join_names(pairs: &[(String, String)]) -> String {
    let mut out = String::with_capacity(pairs.iter().map(|(n, _)| n.len() + 1).sum());
    for (i, (name, _)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(';');
        }
        out.push_str(name);
    }
    out
}

/// Validates and encodes the caller's query parameters for signing.
fn signed_params(
    params: &[(String, String)],
    token: Option<&str>,
) -> Result<Vec<(String, String)>> {
    let mut signed = Vec::with_capacity(params.len() + 1);
    for (name, value) in params {
        if name.is_empty() {
            return Err(invalid_param(name, "the name is empty"));
        }
        let lower = name.to_ascii_lowercase();
        if AUTH_PARAMS.contains(&lower.as_str()) {
            return Err(invalid_param(name, "reserved for the signature"));
        }
        if token.is_some() && lower == SECURITY_TOKEN_PARAM {
            return Err(invalid_param(name, "set by the credentials' session token"));
        }
        let mut signed_name = String::with_capacity(name.len() + 8);
        push_sign_component(&mut signed_name, name, true);
        if signed
            .iter()
            .any(|(n, _): &(String, String)| *n == signed_name)
        {
            return Err(invalid_param(
                name,
                "given twice (names are compared case-insensitively)",
            ));
        }
        signed.push((signed_name, sign_value(value)));
    }
    Ok(signed)
}

/// The decimal number at the start of `s` (1 to 18 digits) and what follows it.
fn invalid_param(name: &str, reason: &'static str) -> Error {
    Error::InvalidParameter {
        name: name.to_owned(),
        reason,
    }
}

fn invalid_header(name: &str, reason: &'static str) -> Error {
    Error::InvalidHeader {
        name: name.to_owned(),
        reason,
    }
}

/// RFC 9110 `tchar`.
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> CosSigner {
        CosSigner::new(
            Credentials::new(
                "AKIDQjz3ltompVjBni5LitkWHFlFpwkn9U5q",
                "BQYIM75p8x0iWVFSIgqEKwFprpRSVHlz",
            ),
            Endpoint::bucket("examplebucket-1250000000", "ap-beijing").unwrap(),
        )
    }

    #[test]
    fn authorization_header_matches_documented_example() {
        // Tencent's documented example: GET /exampleobject, host signed.
        let signed = signer()
            .authorization(
                &ObjectKey::new("exampleobject").unwrap(),
                SigningWindow::new(1557989151, 1557996351).unwrap(),
                &PresignOptions::new(),
            )
            .unwrap();
        assert_eq!(
            signed.authorization,
            "q-sign-algorithm=sha1&q-ak=AKIDQjz3ltompVjBni5LitkWHFlFpwkn9U5q&q-sign-time=1557989151;1557996351&q-key-time=1557989151;1557996351&q-header-list=host&q-url-param-list=&q-signature=27cf30444826da1b67c09aa099a56cfe3a6a1cc5"
        );
        assert_eq!(signed.security_token, None);
        assert!(!format!("{signed:?}").contains("27cf3"));
    }

    #[test]
    fn rejects_bad_params_and_headers() {
        let key = ObjectKey::new("a.jpg").unwrap();
        let w = SigningWindow::new(1, 2).unwrap();
        let s = signer();
        for options in [
            PresignOptions::new().param("", "x"),
            PresignOptions::new().param("q-signature", "x"),
            PresignOptions::new().param("A", "1").param("a", "2"),
        ] {
            assert!(matches!(
                s.presign_url(&key, w, &options),
                Err(Error::InvalidParameter { .. })
            ));
        }
        for options in [
            PresignOptions::new().header("bad name", "x"),
            PresignOptions::new().header("x-a", "a\r\nb"),
            PresignOptions::new().header("X-A", "1").header("x-a", "2"),
        ] {
            assert!(matches!(
                s.presign_url(&key, w, &options),
                Err(Error::InvalidHeader { .. })
            ));
        }
    }
}
