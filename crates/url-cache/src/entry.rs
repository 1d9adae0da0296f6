//! The cached record.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One cached presigned URL: the record the original system stored as JSON under
/// `image:url:{image_key}`. Times are unix seconds (fractional allowed).
///
/// ```
/// use std::time::Duration;
/// use url_cache::CacheEntry;
/// let json = r#"{"url": "https://b.cos.ap-guangzhou.myqcloud.com/a.jpg?q-signature=x",
///   "expires_at": 1700003600.5, "access_count": 3, "created_at": 1700000000,
///   "last_accessed": 1700000100.25, "image_key": "a.jpg", "mime_type": "image/jpeg"}"#;
/// let entry: CacheEntry = serde_json::from_str(json)?;
/// assert!(entry.needs_refresh(1_700_002_700.5, Duration::from_secs(900)));
/// assert!(!entry.is_expired(1_700_003_600.0));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CacheEntry {
    /// The presigned URL.
    pub url: String,
    /// When the URL's signature ends.
    pub expires_at: f64,
    /// How many times the entry was read from the cache.
    #[serde(default)]
    pub access_count: u64,
    /// When the entry was created.
    pub created_at: f64,
    /// When the entry was last read (its creation time until then).
    pub last_accessed: f64,
    /// The cache key: the object key, or the object key with its signed variant.
    pub image_key: String,
    /// The object's MIME type, if known.
    #[serde(default)]
    pub mime_type: Option<String>,
}

impl CacheEntry {
    /// A fresh entry created at `now`, never read.
    pub fn new(
        image_key: impl Into<String>,
        url: impl Into<String>,
        expires_at: f64,
        now: f64,
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
    pub fn with_mime_type(mut self, mime_type: impl Into<String>) -> Self {
        self.mime_type = Some(mime_type.into());
        self
    }

    /// Whether the URL has expired at `now` (the end instant counts as expired).
    pub fn is_expired(&self, now: f64) -> bool {
        now >= self.expires_at
    }

    /// Time left until expiry at `now` (zero once expired).
    pub fn remaining(&self, now: f64) -> Duration {
        Duration::try_from_secs_f64(self.expires_at - now).unwrap_or(Duration::ZERO)
    }

    /// Whether the URL has `threshold` or less left at `now` and should be re-signed.
    pub fn needs_refresh(&self, now: f64, threshold: Duration) -> bool {
        self.expires_at - now <= threshold.as_secs_f64()
    }
}

/// The URL is a bearer credential: `Debug` shows the URL's origin and path only.
impl std::fmt::Debug for CacheEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = self.url.split('?').next().unwrap_or_default();
        f.debug_struct("CacheEntry")
            .field("url", &format_args!("{url}?<signature redacted>"))
            .field("expires_at", &self.expires_at)
            .field("access_count", &self.access_count)
            .field("created_at", &self.created_at)
            .field("last_accessed", &self.last_accessed)
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
        assert_eq!(entry.expires_at, 1_700_003_600.0);
        assert_eq!(entry.mime_type, None);
    }

    #[test]
    fn expiry_boundaries() {
        let e = CacheEntry::new("k", "u", 100.0, 0.0);
        assert!(!e.is_expired(99.999));
        assert!(e.is_expired(100.0));
        assert_eq!(e.remaining(40.0), Duration::from_secs(60));
        assert_eq!(e.remaining(140.0), Duration::ZERO);
        assert!(!e.needs_refresh(39.0, Duration::from_secs(60)));
        assert!(e.needs_refresh(40.0, Duration::from_secs(60)));
    }

    #[test]
    fn debug_hides_the_signature() {
        let e = CacheEntry::new("k", "https://h/a.jpg?q-signature=secret", 1.0, 0.0);
        let shown = format!("{e:?}");
        assert!(!shown.contains("secret") && shown.contains("https://h/a.jpg"));
    }
}
