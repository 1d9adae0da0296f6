//! Validated object keys.

use std::fmt;
use std::str::FromStr;

use crate::{encode, Error, Result};

/// A validated COS object key.
///
/// Rules (those of the official Python SDK, plus what COS itself refuses):
/// - one leading `/` is stripped, as the SDK does (`/a.jpg` and `a.jpg` are the same key);
/// - the rest must be non-empty, at most [`ObjectKey::MAX_LEN`] bytes of UTF-8 and free of
///   control characters;
/// - it must not normalise to nothing once `.`, `..` and empty segments are applied
///   (`a/..`, `./.`), which the SDK's `GetObject` refuses.
///
/// Everything else is kept byte for byte: `a//b`, `x/../y` and `%20` are distinct keys.
///
/// ```
/// use cos_sign::ObjectKey;
/// let key: ObjectKey = "/images/头像 1.png".parse()?;
/// assert_eq!(key.as_str(), "images/头像 1.png");
/// assert_eq!(key.url_path(), "/images/%E5%A4%B4%E5%83%8F%201.png");
/// assert!("a/..".parse::<ObjectKey>().is_err());
/// # Ok::<(), cos_sign::Error>(())
/// ```
#[derive(Clone)]
pub struct ObjectKey {
    text: Box<str>,
    /// Whether the URL path is `/` and the key unchanged (see
    /// [`ObjectKey::url_path_is_verbatim`]); found once, when the key is validated, so
    /// that the per-request checks of a cached URL compare bytes instead of encoding.
    verbatim: bool,
}

// Equality, order and hash are the text's: `verbatim` is a function of it.
impl PartialEq for ObjectKey {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for ObjectKey {}

impl PartialOrd for ObjectKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ObjectKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

impl std::hash::Hash for ObjectKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.text.hash(state);
    }
}

impl ObjectKey {
    /// The longest key COS accepts, in bytes of UTF-8.
    pub const MAX_LEN: usize = 850;

    /// Validates `key`; see the type's docs for the rules.
    pub fn new(key: &str) -> Result<Self> {
        let key = key.strip_prefix('/').unwrap_or(key);
        if key.is_empty() {
            return Err(Error::EmptyKey);
        }
        if key.len() > Self::MAX_LEN {
            return Err(Error::KeyTooLong { len: key.len() });
        }
        // A verbatim key is printable ASCII: only other keys need the character scan.
        let verbatim = encode::is_path_verbatim(key);
        if !verbatim {
            if let Some((position, _)) = key.char_indices().find(|(_, c)| c.is_control()) {
                return Err(Error::KeyControlCharacter { position });
            }
        }
        // A last segment other than ``, `.` or `..` leaves at least itself, so only a
        // key ending in `/` or `.` needs the walk through its segments.
        if key.ends_with(['/', '.']) && normalises_to_nothing(key) {
            return Err(Error::KeyNormalisesToNothing);
        }
        Ok(ObjectKey {
            text: key.into(),
            verbatim,
        })
    }

    /// The key without its leading `/`, as stored in COS.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the key's URL path is `/` followed by the key unchanged: every byte is one
    /// of `A-Za-z0-9-_.~/` and no `/` follows a `.`. Such a key also has nothing to
    /// escape in a query or a cache key (no `%`, `?`, `&`, `=`, space or non-ASCII).
    ///
    /// ```
    /// use cos_sign::ObjectKey;
    /// assert!(ObjectKey::new("images/cat-01.jpg")?.url_path_is_verbatim());
    /// assert!(!ObjectKey::new("images/cat 01.jpg")?.url_path_is_verbatim());
    /// assert!(!ObjectKey::new("a./b.jpg")?.url_path_is_verbatim()); // `.%2F`
    /// # Ok::<(), cos_sign::Error>(())
    /// ```
    pub fn url_path_is_verbatim(&self) -> bool {
        self.verbatim
    }

    /// The path signed by signature v5: `/` followed by the key, not encoded.
    pub fn signing_path(&self) -> String {
        let mut path = String::with_capacity(self.text.len() + 1);
        path.push('/');
        path.push_str(&self.text);
        path
    }

    /// The URL path, percent-encoded as the official SDK does (`/` kept, everything but
    /// `A-Za-z0-9-_.~` escaped, `./` written `.%2F`).
    pub fn url_path(&self) -> String {
        let mut path = String::with_capacity(self.text.len() * 3 + 1);
        path.push('/');
        self.push_url_path(&mut path);
        path
    }

    /// Appends the URL path without its leading `/`.
    pub(crate) fn push_url_path(&self, out: &mut String) {
        if self.verbatim {
            out.push_str(&self.text);
        } else {
            encode::push_path(out, &self.text);
        }
    }

    /// If `url` starts with the key's URL path (without its leading `/`), the rest of
    /// `url`.
    pub(crate) fn strip_url_path<'u>(&self, url: &'u str) -> Option<&'u str> {
        if self.verbatim {
            url.strip_prefix(&*self.text)
        } else {
            encode::strip_path(url, &self.text)
        }
    }

    /// Whether the key's URL path reaches the server as written. The path encoding keeps
    /// `/` but writes `./` as `.%2F`, so only a final `.` or `..` segment is left for URL
    /// clients to resolve away (`a/b/..` would be fetched as `a/`): for such keys this is
    /// false and a presigned URL cannot be used from a browser.
    ///
    /// ```
    /// use cos_sign::ObjectKey;
    /// assert!(ObjectKey::new("a/../b.jpg")?.url_is_stable());
    /// assert!(!ObjectKey::new("a/b/..")?.url_is_stable());
    /// assert!(!ObjectKey::new("a/.")?.url_is_stable());
    /// # Ok::<(), cos_sign::Error>(())
    /// ```
    pub fn url_is_stable(&self) -> bool {
        // The last segment is `.` or `..`. Written without a search: this runs on every
        // request.
        let key: &str = &self.text;
        !(key == "." || key == ".." || key.ends_with("/.") || key.ends_with("/.."))
    }

    /// The key's file extension (after the last `.` of the last segment), if any.
    pub fn extension(&self) -> Option<&str> {
        let name = self.text.rsplit('/').next()?;
        let (stem, ext) = name.rsplit_once('.')?;
        (!stem.is_empty() && !ext.is_empty()).then_some(ext)
    }
}

/// The SDK's `path_simplify_check`: true when `.`/`..`/empty segments leave nothing.
fn normalises_to_nothing(key: &str) -> bool {
    let mut depth = 0usize;
    // Split on bytes with a plain loop: `str::split` searches with `memchr`, which costs
    // more than it saves on keys this short (this runs on every request).
    for segment in key.as_bytes().split(|&b| b == b'/') {
        match segment {
            b".." => depth = depth.saturating_sub(1),
            b"" | b"." => {}
            _ => depth += 1,
        }
    }
    depth == 0
}

impl fmt::Debug for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ObjectKey").field(&self.text).finish()
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl AsRef<str> for ObjectKey {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl FromStr for ObjectKey {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        ObjectKey::new(s)
    }
}

impl TryFrom<&str> for ObjectKey {
    type Error = Error;
    fn try_from(s: &str) -> Result<Self> {
        ObjectKey::new(s)
    }
}

impl TryFrom<String> for ObjectKey {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        ObjectKey::new(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_one_leading_slash_only() {
        assert_eq!(ObjectKey::new("/a.jpg").unwrap().as_str(), "a.jpg");
        assert_eq!(ObjectKey::new("//a.jpg").unwrap().as_str(), "/a.jpg");
    }

    #[test]
    fn rejects_bad_keys_with_typed_errors() {
        assert_eq!(ObjectKey::new(""), Err(Error::EmptyKey));
        assert_eq!(ObjectKey::new("/"), Err(Error::EmptyKey));
        assert_eq!(
            ObjectKey::new(&"a".repeat(851)),
            Err(Error::KeyTooLong { len: 851 })
        );
        assert!(ObjectKey::new(&"a".repeat(850)).is_ok());
        assert_eq!(
            ObjectKey::new("a\nb"),
            Err(Error::KeyControlCharacter { position: 1 })
        );
        assert_eq!(
            ObjectKey::new("a\u{7f}"),
            Err(Error::KeyControlCharacter { position: 1 })
        );
        for nothing in ["a/..", "./.", "//", "a/b/../..", "../x/.."] {
            assert_eq!(
                ObjectKey::new(nothing),
                Err(Error::KeyNormalisesToNothing),
                "{nothing}"
            );
        }
        assert!(ObjectKey::new("../x").is_ok());
    }

    /// The shortcut (only keys ending in `/` or `.` can normalise to nothing) agrees
    /// with the walk through the segments on every key of up to seven of `a`, `.`, `/`.
    #[test]
    fn only_keys_ending_in_a_slash_or_a_dot_can_normalise_to_nothing() {
        let mut keys = vec![String::new()];
        for _ in 0..7 {
            let longer: Vec<String> = keys
                .iter()
                .flat_map(|k| ["a", ".", "/"].map(|c| format!("{k}{c}")))
                .collect();
            for key in &longer {
                if normalises_to_nothing(key) {
                    assert!(key.ends_with(['/', '.']), "{key}");
                }
                let refused = ObjectKey::new(key) == Err(Error::KeyNormalisesToNothing);
                let stripped = key.strip_prefix('/').unwrap_or(key);
                assert_eq!(
                    refused,
                    !stripped.is_empty() && normalises_to_nothing(stripped),
                    "{key}"
                );
            }
            keys = longer;
        }
    }

    #[test]
    fn extension() {
        let ext = |k: &str| ObjectKey::new(k).unwrap().extension().map(str::to_owned);
        assert_eq!(ext("a/b.JPG").as_deref(), Some("JPG"));
        assert_eq!(ext("a.b/c"), None);
        assert_eq!(ext(".hidden"), None);
        assert_eq!(ext("x.tar.gz").as_deref(), Some("gz"));
    }
}
