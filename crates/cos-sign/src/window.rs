//! Signing windows and HTTP methods.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{Error, Result};

/// The interval `[start, end]`, in unix seconds, during which a signature is valid
/// (`q-sign-time` and `q-key-time`).
///
/// ```
/// use cos_sign::SigningWindow;
/// // Stable URLs: every caller inside the same 600 s slot gets the same window.
/// let a = SigningWindow::aligned(1_700_000_123, 600, 3600)?;
/// let b = SigningWindow::aligned(1_700_000_399, 600, 3600)?;
/// assert_eq!(a, b);
/// assert_eq!((a.start(), a.end()), (1_699_999_800, 1_700_003_400));
/// # Ok::<(), cos_sign::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SigningWindow {
    start: i64,
    end: i64,
}

impl SigningWindow {
    /// How far back the official SDK starts a window, to absorb clock skew.
    pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60);

    /// An explicit window; `end` must be after `start` and both non-negative.
    pub fn new(start: i64, end: i64) -> Result<Self> {
        if start < 0 || end <= start {
            return Err(Error::InvalidWindow { start, end });
        }
        Ok(SigningWindow { start, end })
    }

    /// A window from `now` for `ttl_secs` seconds, exactly.
    pub fn starting_at(now: i64, ttl_secs: i64) -> Result<Self> {
        Self::new(now, now.saturating_add(ttl_secs))
    }

    /// As the official SDK signs "for `ttl_secs` from now": the start is set back by
    /// [`Self::CLOCK_SKEW_ALLOWANCE`], the end is `now + ttl_secs`.
    pub fn from_now_with_skew(now: i64, ttl_secs: i64) -> Result<Self> {
        let skew = Self::CLOCK_SKEW_ALLOWANCE.as_secs() as i64;
        Self::new(
            now.saturating_sub(skew).max(0),
            now.saturating_add(ttl_secs),
        )
    }

    /// The aligned window used for stable URLs: start is `now` rounded down to a multiple
    /// of `align_secs`, end is start + `ttl_secs`. Everyone signing within one slot gets
    /// the same window, so the same key yields byte-identical URLs.
    pub fn aligned(now: i64, align_secs: i64, ttl_secs: i64) -> Result<Self> {
        if align_secs <= 0 {
            return Self::starting_at(now, ttl_secs);
        }
        let start = now - now.rem_euclid(align_secs);
        Self::new(start, start.saturating_add(ttl_secs))
    }

    /// Start, unix seconds.
    pub fn start(&self) -> i64 {
        self.start
    }

    /// End, unix seconds.
    pub fn end(&self) -> i64 {
        self.end
    }

    /// Whether `now` (unix seconds) lies inside the window, bounds included.
    pub fn contains(&self, now: i64) -> bool {
        self.start <= now && now <= self.end
    }
}

impl fmt::Display for SigningWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{};{}", self.start, self.end)
    }
}

/// The current time in unix seconds (0 if the clock is before 1970).
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The HTTP methods COS signs. The method is part of the signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Method {
    /// Download (the default).
    #[default]
    Get,
    /// Metadata only.
    Head,
    /// Upload.
    Put,
    /// Form upload and other POST APIs.
    Post,
    /// Deletion.
    Delete,
}

impl Method {
    /// Upper-case name, as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Put => "PUT",
            Method::Post => "POST",
            Method::Delete => "DELETE",
        }
    }

    /// Lower-case name, as signed.
    pub(crate) fn signed_name(self) -> &'static str {
        match self {
            Method::Get => "get",
            Method::Head => "head",
            Method::Put => "put",
            Method::Post => "post",
            Method::Delete => "delete",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Method {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_uppercase().as_str() {
            "GET" => Ok(Method::Get),
            "HEAD" => Ok(Method::Head),
            "PUT" => Ok(Method::Put),
            "POST" => Ok(Method::Post),
            "DELETE" => Ok(Method::Delete),
            _ => Err(Error::UnsupportedMethod(s.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows() {
        assert!(SigningWindow::new(10, 10).is_err());
        assert!(SigningWindow::new(-1, 10).is_err());
        let w = SigningWindow::from_now_with_skew(1000, 300).unwrap();
        assert_eq!((w.start(), w.end()), (940, 1300));
        assert!(w.contains(940) && w.contains(1300) && !w.contains(1301));
        let w = SigningWindow::aligned(1000, 0, 300).unwrap();
        assert_eq!((w.start(), w.end()), (1000, 1300));
        assert_eq!(w.to_string(), "1000;1300");
    }

    #[test]
    fn methods() {
        assert_eq!("head".parse::<Method>().unwrap(), Method::Head);
        assert!("PATCH".parse::<Method>().is_err());
    }
}
