//! What callers ask for, and what they get.

use std::borrow::Cow;
use std::time::Duration;

use cos_sign::{ObjectKey, PresignOptions};
use serde::Serialize;

use crate::{Result, ServiceError};

/// Options of one URL request.
///
/// Signed response parameters make a different URL, so each combination is a separate
/// cache entry. The cache key is the object key alone when no parameter is set (the
/// original system's layout), else `{key}?{param}={value}&...` in a fixed order.
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
        UrlOptions {
            force_refresh: false,
            use_cache: true,
            content_type: None,
            content_disposition: None,
            cache_control: None,
            process: None,
        }
    }
}

impl UrlOptions {
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

    /// The cache key for `key` with these options.
    pub(crate) fn cache_key<'k>(&self, key: &'k ObjectKey) -> Result<Cow<'k, str>> {
        let params = self.params()?;
        if params.is_empty() {
            // The common case, on every lookup: the key itself, not a copy of it.
            return Ok(Cow::Borrowed(key.as_str()));
        }
        let mut cache_key = String::with_capacity(key.as_str().len() + 64);
        cache_key.push_str(key.as_str());
        for (i, (name, value)) in params.iter().enumerate() {
            cache_key.push(if i == 0 { '?' } else { '&' });
            cache_key.push_str(name);
            if !value.is_empty() {
                cache_key.push('=');
                cache_key.push_str(value);
            }
        }
        Ok(Cow::Owned(cache_key))
    }
}

/// A presigned URL with what the caller needs to know about it.
#[derive(Clone, PartialEq, Serialize)]
pub struct ImageUrl {
    /// The object key.
    pub key: String,
    /// The presigned URL. A bearer credential: never log it.
    pub url: String,
    /// When the URL stops working, unix seconds.
    pub expires_at: f64,
    /// Time left at the moment of the answer.
    #[serde(serialize_with = "serialize_secs")]
    pub ttl_remaining: Duration,
    /// Served from the cache.
    pub from_cache: bool,
    /// Signed directly because the cache failed or its breaker is open.
    pub degraded: bool,
    /// A cached URL was replaced (pre-refresh near expiry, or `force_refresh`).
    pub refreshed: bool,
    /// The object's MIME type, guessed from its extension.
    pub mime_type: Option<String>,
}

fn serialize_secs<S: serde::Serializer>(
    d: &Duration,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
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
/// for dashboards and must not hand out credentials.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UrlStatus {
    /// The object key.
    pub key: String,
    /// Whether a live URL is cached.
    pub cached: bool,
    /// When the cached URL expires.
    pub expires_at: Option<f64>,
    /// Time the cached URL has left, seconds.
    pub ttl_remaining: Option<f64>,
    /// How often the cached URL was served.
    pub access_count: Option<u64>,
    /// When the cached URL was created.
    pub created_at: Option<f64>,
    /// When it was last served.
    pub last_accessed: Option<f64>,
    /// Whether the next request would re-sign (inside the pre-refresh threshold).
    pub needs_refresh: bool,
    /// Whether the cache answered (false: unknown, the cache is failing).
    pub cache_available: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

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
