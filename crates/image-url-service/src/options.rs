//! What callers ask for, and what they get.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cos_sign::{ObjectKey, PresignOptions};
use serde::Serialize;

use crate::{Result, ServiceError};

/// Options of one URL request.
///
/// Signed response parameters make a different URL, so each combination is a separate
/// cache entry. The cache key is the object key alone when no parameter is set (the
/// original system's layout), else `{key}?{param}={value}&...` in a fixed order, with
/// the separators escaped inside each part so that no two requests share a key.
///
/// ```
/// use image_url_service::UrlOptions;
/// let thumbnail = UrlOptions::new().process("imageMogr2/thumbnail/200x").content_type("image/webp");
/// assert!(thumbnail.use_cache && !thumbnail.force_refresh);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct UrlOptions {
    /// Ignore any cached URL and sign a new one (which is then cached).
    pub force_refresh: bool,
    /// Read and write the cache (default true). Off: sign directly, touch nothing.
    pub use_cache: bool,
    /// `response-content-type`.
    pub content_type: Option<String>,
    /// `response-content-disposition`.
    pub content_disposition: Option<String>,
    /// `response-cache-control`.
    pub cache_control: Option<String>,
    /// A COS image-processing rule, e.g. `imageMogr2/thumbnail/200x` (a parameter
    /// without value).
    pub process: Option<String>,
}

impl Default for UrlOptions {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl UrlOptions {
    /// The defaults (what [`UrlOptions::new`] returns), as a constant: a caller can keep
    /// them in a `static` and lend them to every request that sets nothing.
    pub const DEFAULT: UrlOptions = UrlOptions {
        force_refresh: false,
        use_cache: true,
        content_type: None,
        content_disposition: None,
        cache_control: None,
        process: None,
    };

    /// The defaults: cache on, no refresh, no parameters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `force_refresh`.
    pub fn force_refresh(mut self, yes: bool) -> Self {
        self.force_refresh = yes;
        self
    }

    /// Sets `use_cache`.
    pub fn use_cache(mut self, yes: bool) -> Self {
        self.use_cache = yes;
        self
    }

    /// Sets `response-content-type`.
    pub fn content_type(mut self, value: impl Into<String>) -> Self {
        self.content_type = Some(value.into());
        self
    }

    /// Sets `response-content-disposition`.
    pub fn content_disposition(mut self, value: impl Into<String>) -> Self {
        self.content_disposition = Some(value.into());
        self
    }

    /// Sets `response-cache-control`.
    pub fn cache_control(mut self, value: impl Into<String>) -> Self {
        self.cache_control = Some(value.into());
        self
    }

    /// Sets the image-processing rule.
    pub fn process(mut self, rule: impl Into<String>) -> Self {
        self.process = Some(rule.into());
        self
    }

    /// The signed parameters, in a fixed order.
    pub(crate) fn params(&self) -> Result<Vec<(String, String)>> {
        let mut params = Vec::new();
        for (name, value) in [
            ("response-content-type", &self.content_type),
            ("response-content-disposition", &self.content_disposition),
            ("response-cache-control", &self.cache_control),
        ] {
            if let Some(value) = value {
                if value.chars().any(char::is_control) {
                    return Err(ServiceError::InvalidOptions(format!(
                        "{name} contains a control character"
                    )));
                }
                params.push((name.to_owned(), value.clone()));
            }
        }
        if let Some(rule) = &self.process {
            let valid = !rule.is_empty()
                && rule.len() <= 1024
                && rule
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'&' && b != b'=' && b != b'#');
            if !valid || rule.to_ascii_lowercase().starts_with("q-") {
                return Err(ServiceError::InvalidOptions(
                    "the image-processing rule must be printable ASCII without '&', '=' or '#'"
                        .into(),
                ));
            }
            params.push((rule.clone(), String::new()));
        }
        Ok(params)
    }

    pub(crate) fn presign_options(&self) -> Result<PresignOptions> {
        let mut options = PresignOptions::new();
        for (name, value) in self.params()? {
            options = options.param(name, value);
        }
        Ok(options)
    }

    /// The cache key for `key` with these options: an injective encoding, so two
    /// different requests never share an entry.
    ///
    /// The key comes first with `%` and `?` escaped (`%25`, `%3F`), so the first `?`
    /// always ends it; then each parameter as `name=value`, joined by `&`, with `%`, `&`
    /// and `=` escaped in names and values. An ordinary key without options (no `%` or
    /// `?`) is its own cache key, readable in Redis.
    pub(crate) fn cache_key<'k>(&self, key: &'k ObjectKey) -> Result<Cow<'k, str>> {
        let raw = key.as_str();
        // Without options there is nothing to check or to append (and `params` would
        // build an empty vector on every lookup). Destructured, so that a new option
        // cannot be forgotten here.
        let UrlOptions {
            force_refresh: _,
            use_cache: _,
            content_type,
            content_disposition,
            cache_control,
            process,
        } = self;
        let plain = content_type.is_none()
            && content_disposition.is_none()
            && cache_control.is_none()
            && process.is_none();
        let params = if plain { Vec::new() } else { self.params()? };
        // A verbatim key has neither `%` nor `?`: known without a scan.
        if params.is_empty()
            && (key.url_path_is_verbatim() || !raw.bytes().any(|b| b == b'%' || b == b'?'))
        {
            // The common case, on every lookup: the key itself, not a copy of it.
            return Ok(Cow::Borrowed(raw));
        }
        let mut cache_key = String::with_capacity(raw.len() + 64);
        push_escaped(&mut cache_key, raw, b"%?");
        for (i, (name, value)) in params.iter().enumerate() {
            cache_key.push(if i == 0 { '?' } else { '&' });
            push_escaped(&mut cache_key, name, b"%&=");
            if !value.is_empty() {
                cache_key.push('=');
                push_escaped(&mut cache_key, value, b"%&=");
            }
        }
        Ok(Cow::Owned(cache_key))
    }
}

/// The object key and options a cache key was made from: the inverse of
/// [`UrlOptions::cache_key`] (for the background refresher, which finds entries by their
/// cache keys). `None` for a string no `cache_key` call produces.
pub(crate) fn parse_cache_key(cache_key: &str) -> Option<(ObjectKey, UrlOptions)> {
    let (raw_key, query) = match cache_key.split_once('?') {
        Some((key, query)) => (key, Some(query)),
        None => (cache_key, None),
    };
    let key = ObjectKey::new(&unescape(raw_key)?).ok()?;
    let mut options = UrlOptions::new();
    for param in query.into_iter().flat_map(|q| q.split('&')) {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (unescape(name)?, Some(unescape(value)?)),
            None => (unescape(param)?, None),
        };
        let slot = match name.as_str() {
            "response-content-type" => &mut options.content_type,
            "response-content-disposition" => &mut options.content_disposition,
            "response-cache-control" => &mut options.cache_control,
            _ if value.is_none() => &mut options.process,
            _ => return None,
        };
        if slot.is_some() {
            return None;
        }
        *slot = Some(value.unwrap_or(name));
    }
    // Only what `cache_key` itself would produce, byte for byte.
    (options.cache_key(&key).ok()?.as_ref() == cache_key).then_some((key, options))
}

/// Undoes `push_escaped`: `%XX` back to its byte.
fn unescape(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Appends `s` with each byte of `special` (all ASCII) written as `%XX`.
fn push_escaped(out: &mut String, s: &str, special: &[u8]) {
    for c in s.chars() {
        if c.is_ascii() && special.contains(&(c as u8)) {
            let _ = write!(out, "%{:02X}", c as u8); // writing to a String cannot fail
        } else {
            out.push(c);
        }
    }
}

/// A presigned URL with what the caller needs to know about it. Serialized with times as
/// float Unix seconds and durations as float seconds, the original system's JSON.
#[derive(Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ImageUrl {
    /// The object key.
    pub key: Arc<str>,
    /// The presigned URL. A bearer credential: never log it. Shared with the cache
    /// entry it came from: a hit copies no text.
    pub url: Arc<str>,
    /// When the URL stops working.
    #[serde(serialize_with = "crate::unix_time::serialize_time")]
    pub expires_at: SystemTime,
    /// Time left at the moment of the answer.
    #[serde(serialize_with = "crate::unix_time::serialize_secs")]
    pub ttl_remaining: Duration,
    /// Served from the cache.
    pub from_cache: bool,
    /// Signed directly because the cache failed or its breaker is open.
    pub degraded: bool,
    /// A cached URL was replaced (pre-refresh near expiry, or `force_refresh`).
    pub refreshed: bool,
    /// The object's MIME type, guessed from its extension.
    pub mime_type: Option<Arc<str>>,
}

impl std::fmt::Debug for ImageUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageUrl")
            .field("key", &self.key)
            .field("url", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .field("ttl_remaining", &self.ttl_remaining)
            .field("from_cache", &self.from_cache)
            .field("degraded", &self.degraded)
            .field("refreshed", &self.refreshed)
            .field("mime_type", &self.mime_type)
            .finish()
    }
}

/// What the cache knows about a key (`ImageUrlService::status`). No URL: status is
/// for dashboards and must not hand out credentials. Serialized like [`ImageUrl`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct UrlStatus {
    /// The object key.
    pub key: String,
    /// Whether a live URL is cached.
    pub cached: bool,
    /// When the cached URL expires.
    #[serde(serialize_with = "crate::unix_time::serialize_opt_time")]
    pub expires_at: Option<SystemTime>,
    /// Time the cached URL has left.
    #[serde(serialize_with = "crate::unix_time::serialize_opt_secs")]
    pub ttl_remaining: Option<Duration>,
    /// How often the cached URL was served.
    pub access_count: Option<u64>,
    /// When the cached URL was created.
    #[serde(serialize_with = "crate::unix_time::serialize_opt_time")]
    pub created_at: Option<SystemTime>,
    /// When it was last served.
    #[serde(serialize_with = "crate::unix_time::serialize_opt_time")]
    pub last_accessed: Option<SystemTime>,
    /// Whether the next request would re-sign (inside the pre-refresh threshold).
    pub needs_refresh: bool,
    /// Whether the cache answered (false: unknown, the cache is failing).
    pub cache_available: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_keys_parse_back_to_their_request() {
        let cases = [
            ("a.jpg", UrlOptions::new()),
            ("100%?.jpg", UrlOptions::new()),
            (
                "dir/a&b=c.jpg",
                UrlOptions::new()
                    .content_type("image/webp")
                    .content_disposition("attachment; filename=\"a&b=%.jpg\"")
                    .cache_control("max-age=60")
                    .process("imageMogr2/thumbnail/200x"),
            ),
        ];
        for (raw, options) in cases {
            let key = ObjectKey::new(raw).unwrap();
            let cache_key = options.cache_key(&key).unwrap();
            let (parsed_key, parsed) = parse_cache_key(&cache_key).expect(raw);
            assert_eq!((parsed_key.as_str(), &parsed), (raw, &options));
        }
        for foreign in [
            "a.jpg?x=1",
            "a.jpg?imageMogr2&imageMogr2",
            "a%zz.jpg",
            "",
            "a.jpg?response-content-type",
        ] {
            assert!(parse_cache_key(foreign).is_none(), "{foreign}");
        }
    }

    #[test]
    fn cache_keys_separate_variants() {
        let key = ObjectKey::new("a.jpg").unwrap();
        assert_eq!(UrlOptions::new().cache_key(&key).unwrap(), "a.jpg");
        assert_eq!(
            UrlOptions::new()
                .process("imageMogr2/thumbnail/200x")
                .content_type("image/webp")
                .cache_key(&key)
                .unwrap(),
            "a.jpg?response-content-type=image/webp&imageMogr2/thumbnail/200x"
        );
    }

    /// Regression: an object key with `?` and an option value with `&` used to produce
    /// the same cache key as another request, so one could poison the other's entry.
    #[test]
    fn known_collisions_are_gone() {
        let thumb = "imageMogr2/thumbnail/200x";
        let question = ObjectKey::new(&format!("a.jpg?{thumb}")).unwrap();
        let plain = ObjectKey::new("a.jpg").unwrap();
        assert_ne!(
            UrlOptions::new().cache_key(&question).unwrap(),
            UrlOptions::new().process(thumb).cache_key(&plain).unwrap()
        );
        assert_ne!(
            UrlOptions::new()
                .content_type(format!("image/webp&{thumb}"))
                .cache_key(&plain)
                .unwrap(),
            UrlOptions::new()
                .content_type("image/webp")
                .process(thumb)
                .cache_key(&plain)
                .unwrap()
        );
    }

    proptest::proptest! {
        /// Distinct (key, options) pairs never share a cache key. Small alphabets full of
        /// the separators make near-collisions common.
        #[test]
        fn cache_keys_are_injective(
            requests in proptest::collection::vec(
                (
                    "[a?&=%/]{1,6}",
                    proptest::option::of("[a?&=%]{0,4}"),
                    proptest::option::of("[a?&=%]{0,4}"),
                    proptest::option::of("[a?%/]{1,4}"),
                ),
                1..40,
            )
        ) {
            let mut seen: std::collections::HashMap<String, (String, UrlOptions)> =
                std::collections::HashMap::new();
            for (raw, content_type, disposition, process) in requests {
                let Ok(key) = ObjectKey::new(&raw) else { continue };
                let mut options = UrlOptions::new();
                options.content_type = content_type;
                options.content_disposition = disposition;
                options.process = process;
                let Ok(cache_key) = options.cache_key(&key) else { continue };
                let request = (key.as_str().to_owned(), options);
                if let Some(earlier) = seen.insert(cache_key.clone().into_owned(), request.clone()) {
                    proptest::prop_assert_eq!(earlier, request, "{} shared", cache_key);
                }
            }
        }
    }

    #[test]
    fn bad_options_are_typed_errors() {
        for options in [
            UrlOptions::new().process("a&b"),
            UrlOptions::new().process(""),
            UrlOptions::new().process("q-signature"),
            UrlOptions::new().content_type("a\nb"),
        ] {
            assert!(matches!(
                options.params(),
                Err(ServiceError::InvalidOptions(_))
            ));
        }
    }
}
