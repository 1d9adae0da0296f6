//! The cached record.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::clock::{from_unix_secs, unix_secs};

/// One cached presigned URL: the record the original system stored as JSON under
/// `image:url:{image_key}`. In JSON, times are Unix seconds as the original system wrote
/// them (fractional allowed).
///
/// The text fields are shared (`Arc<str>`): a backend that keeps entries in memory hands
/// out a hit by bumping reference counts, without copying the URL.
///
/// ```
/// use std::time::Duration;
/// use url_cache::CacheEntry;
/// let json = r#"{"url": "https://b.cos.ap-guangzhou.myqcloud.com/a.jpg?q-signature=x",
///   "expires_at": 1700003600.5, "access_count": 3, "created_at": 1700000000,
///   "last_accessed": 1700000100.25, "image_key": "a.jpg", "mime_type": "image/jpeg"}"#;
/// let entry: CacheEntry = serde_json::from_str(json)?;
/// let at = url_cache::from_unix_secs;
/// assert!(entry.needs_refresh(at(1_700_002_700.5), Duration::from_secs(900)));
/// assert!(!entry.is_expired(at(1_700_003_600.0)));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CacheEntry {
    /// The presigned URL.
    pub url: Arc<str>,
    /// When the URL's signature ends.
    #[serde(with = "unix_float")]
    pub expires_at: SystemTime,
    /// How many times the entry was read from the cache.
    #[serde(default)]
    pub access_count: u64,
    /// When the entry was created.
    #[serde(with = "unix_float")]
    pub created_at: SystemTime,
    /// When the entry was last read (its creation time until then).
    #[serde(with = "unix_float")]
    pub last_accessed: SystemTime,
    /// The cache key: the object key, or the object key with its signed variant.
    pub image_key: Arc<str>,
    /// The object's MIME type, if known.
    #[serde(default)]
    pub mime_type: Option<Arc<str>>,
}

impl CacheEntry {
    /// A fresh entry created at `now`, never read.
    pub fn new(
        image_key: impl Into<Arc<str>>,
        url: impl Into<Arc<str>>,
        expires_at: SystemTime,
        now: SystemTime,
    ) -> Self {
        CacheEntry {
            url: url.into(),
            expires_at,
            access_count: 0,
            created_at: now,
            last_accessed: now,
            image_key: image_key.into(),
            mime_type: None,
        }
    }

    /// Sets the MIME type.
    pub fn with_mime_type(mut self, mime_type: impl Into<Arc<str>>) -> Self {
        self.mime_type = Some(mime_type.into());
        self
    }

    /// Whether the URL has expired at `now` (the end instant counts as expired).
    pub fn is_expired(&self, now: SystemTime) -> bool {
        now >= self.expires_at
    }

    /// Time left until expiry at `now` (zero once expired).
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.expires_at
            .duration_since(now)
            .unwrap_or(Duration::ZERO)
    }

    /// Whether the URL has `threshold` or less left at `now` and should be re-signed.
    pub fn needs_refresh(&self, now: SystemTime, threshold: Duration) -> bool {
        self.remaining(now) <= threshold
    }

    /// [`expires_at`](CacheEntry::expires_at) as fractional Unix seconds.
    pub fn expires_at_unix(&self) -> f64 {
        unix_secs(self.expires_at)
    }

    /// [`last_accessed`](CacheEntry::last_accessed) as fractional Unix seconds.
    pub fn last_accessed_unix(&self) -> f64 {
        unix_secs(self.last_accessed)
    }

    /// [`created_at`](CacheEntry::created_at) as fractional Unix seconds.
    pub fn created_at_unix(&self) -> f64 {
        unix_secs(self.created_at)
    }
}

/// Times as float Unix seconds in JSON (integers accepted), as the original system's
/// Python `json.dumps` of `time.time()` values.
mod unix_float {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(super::unix_secs(*time))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let secs = f64::deserialize(d)?;
        if !secs.is_finite() || secs < 0.0 {
            return Err(serde::de::Error::custom(format!(
                "{secs} is not a time in Unix seconds"
            )));
        }
        Ok(super::from_unix_secs(secs))
    }
}

/// The URL is a bearer credential: `Debug` shows the URL's origin and path only.
impl std::fmt::Debug for CacheEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = self.url.split('?').next().unwrap_or_default();
        f.debug_struct("CacheEntry")
            .field("url", &format_args!("{url}?<signature redacted>"))
            .field("expires_at", &self.expires_at_unix())
            .field("access_count", &self.access_count)
            .field("created_at", &self.created_at_unix())
            .field("last_accessed", &self.last_accessed_unix())
            .field("image_key", &self.image_key)
            .field("mime_type", &self.mime_type)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_round_trips_exactly() {
        let json = r#"{"url":"https://h/a.jpg?q-signature=abc","expires_at":1700003600.5,"access_count":3,"created_at":1700000000.0,"last_accessed":1700000100.25,"image_key":"a.jpg","mime_type":"image/jpeg"}"#;
        let entry: CacheEntry = serde_json::from_str(json).unwrap();
        assert_eq!(entry.access_count, 3);
        assert_eq!(entry.mime_type.as_deref(), Some("image/jpeg"));
        assert_eq!(serde_json::to_string(&entry).unwrap(), json);
        // Python's json.dumps writes integers for whole floats and null for None.
        let python = r#"{"url": "u", "expires_at": 1700003600, "access_count": 0, "created_at": 1700000000, "last_accessed": 1700000000, "image_key": "k", "mime_type": null}"#;
        let entry: CacheEntry = serde_json::from_str(python).unwrap();
        assert_eq!(entry.expires_at_unix(), 1_700_003_600.0);
        assert_eq!(entry.mime_type, None);
    }

    #[test]
    fn expiry_boundaries() {
        let at = from_unix_secs;
        let e = CacheEntry::new("k", "u", at(100.0), at(0.0));
        assert!(!e.is_expired(at(99.999)));
        assert!(e.is_expired(at(100.0)));
        assert_eq!(e.remaining(at(40.0)), Duration::from_secs(60));
        assert_eq!(e.remaining(at(140.0)), Duration::ZERO);
        assert!(!e.needs_refresh(at(39.0), Duration::from_secs(60)));
        assert!(e.needs_refresh(at(40.0), Duration::from_secs(60)));
    }

    #[test]
    fn debug_hides_the_signature() {
        let e = CacheEntry::new(
            "k",
            "https://h/a.jpg?q-signature=secret",
            from_unix_secs(1.0),
            from_unix_secs(0.0),
        );
        let shown = format!("{e:?}");
        assert!(!shown.contains("secret") && shown.contains("https://h/a.jpg"));
    }
}
