//! Where a bucket is reached.

use std::fmt;
use std::str::FromStr;

use crate::{Error, ObjectKey, Result, SigningWindow};

/// `https` (the default) or `http`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Scheme {
    /// TLS; what every public COS endpoint should be reached with.
    #[default]
    Https,
    /// Plain HTTP, for local origins and private networks.
    Http,
}

impl Scheme {
    /// `"https"` or `"http"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Https => "https",
            Scheme::Http => "http",
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scheme {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "https" => Ok(Scheme::Https),
            "http" => Ok(Scheme::Http),
            _ => Err(Error::InvalidScheme(s.to_owned())),
        }
    }
}

/// The scheme and host that presigned URLs point at.
///
/// Either the bucket's default domain `{bucket}.cos.{region}.myqcloud.com` or a custom
/// domain (a CDN domain, or `host:port` of a local origin). The host signed by signature
/// v5 is the host name alone, lower-cased and without the port, as the official SDK signs it.
///
/// ```
/// use cos_sign::{Endpoint, Scheme};
/// let ep = Endpoint::bucket("examplebucket-1250000000", "ap-guangzhou")?;
/// assert_eq!(ep.base_url(), "https://examplebucket-1250000000.cos.ap-guangzhou.myqcloud.com");
/// let local = Endpoint::custom_domain("127.0.0.1:9000")?.with_scheme(Scheme::Http);
/// assert_eq!(local.base_url(), "http://127.0.0.1:9000");
/// assert_eq!(local.signing_host(), "127.0.0.1");
/// # Ok::<(), cos_sign::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    scheme: Scheme,
    authority: String,
    signing_host: String,
    /// `scheme://authority/`, what every presigned URL starts with: checking a cached
    /// URL compares it in one step.
    url_prefix: String,
}

impl Endpoint {
    /// The bucket's default domain in `region`.
    pub fn bucket(bucket: &str, region: &str) -> Result<Self> {
        Self::check_bucket_name(bucket)?;
        if !is_dns_label_chars(region) || region.len() > 63 {
            return Err(Error::InvalidRegion(region.to_owned()));
        }
        let host = format!("{bucket}.cos.{region}.myqcloud.com");
        Ok(Endpoint::from_parts(Scheme::Https, host.clone(), host))
    }

    /// Checks a bucket name: `a-z`, `0-9` and inner `-`, at most 63 bytes.
    pub fn check_bucket_name(bucket: &str) -> Result<()> {
        if !is_dns_label_chars(bucket) || bucket.len() > 63 {
            return Err(Error::InvalidBucket(bucket.to_owned()));
        }
        Ok(())
    }

    /// A custom domain: `host` or `host:port` (IPv6 as `[::1]:9000`), no scheme or path.
    pub fn custom_domain(domain: &str) -> Result<Self> {
        let invalid = || Error::InvalidDomain(domain.to_owned());
        if domain.is_empty()
            || domain
                .bytes()
                .any(|b| matches!(b, b'/' | b'?' | b'#' | b'@' | b'\\') || b <= b' ')
        {
            return Err(invalid());
        }
        let parsed = url::Url::parse(&format!("http://{domain}/")).map_err(|_| invalid())?;
        let host = parsed.host_str().ok_or_else(invalid)?;
        let signing_host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .to_ascii_lowercase();
        let authority = match parsed.port() {
            Some(port) => format!("{host}:{port}"),
            None if domain.ends_with(":80") => format!("{host}:80"),
            None => host.to_owned(),
        };
        Ok(Endpoint::from_parts(Scheme::Https, authority, signing_host))
    }

    fn from_parts(scheme: Scheme, authority: String, signing_host: String) -> Self {
        Endpoint {
            url_prefix: format!("{scheme}://{authority}/"),
            scheme,
            authority,
            signing_host,
        }
    }

    /// The same endpoint reached with `scheme`.
    pub fn with_scheme(self, scheme: Scheme) -> Self {
        Endpoint::from_parts(scheme, self.authority, self.signing_host)
    }

    /// The scheme.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// `host[:port]` as written in URLs.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The signing window of `url` if it is a presigned URL for `key` at this endpoint
    /// (same scheme, host and path, `q-sign-algorithm=sha1`, a well-formed
    /// `q-sign-time`), else `None`: a cached URL is checked with it before it is served,
    /// so a poisoned or foreign entry is never handed out. The access key and the
    /// signature are not checked (that would cost as much as signing; a forged one only
    /// fails at COS), so URLs signed with earlier, rotated credentials still pass.
    /// Allocates nothing. [`CosSigner::presigned_window`](crate::CosSigner::presigned_window)
    /// is the same check.
    pub fn presigned_window(&self, key: &ObjectKey, url: &str) -> Option<SigningWindow> {
        let rest = url.strip_prefix(self.url_prefix.as_str())?;
        let rest = key.strip_url_path(rest)?;
        let rest = rest.strip_prefix("?q-sign-algorithm=sha1&q-ak=")?;
        // Past the access key (of any length: URLs signed with rotated keys still
        // pass). `memchr` scans 16 bytes a step with little set-up; `split_once` spent
        // about 170 instructions here, 1 % of a redirect.
        let rest = &rest[memchr::memchr(b'&', rest.as_bytes())? + 1..];
        let rest = rest.strip_prefix("q-sign-time=")?;
        let (start, end, rest) = sign_time(rest)?;
        if !(rest.is_empty() || rest.starts_with('&')) {
            return None;
        }
        SigningWindow::new(start, end).ok()
    }

    /// The host name signed as the `host` header: lower case, without port.
    pub fn signing_host(&self) -> &str {
        &self.signing_host
    }

    /// `scheme://authority`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("{}://{}", self.scheme, self.authority)
    }
}

/// Lowercase letters, digits and inner `-`: what bucket names and regions are made of.
fn is_dns_label_chars(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The `start%3Bend` pair `s` starts with (each 1 to 18 digits) and the rest of `s`.
///
/// This runs on every cache hit whose window the thread has not remembered. Every Unix
/// time from 2001 to 2286 has ten digits, so a pair of them (23 bytes) is read first, by
/// two eight-digit steps and four single digits, with no loop: about half the
/// instructions of two [`leading_number`] calls. Anything else, or a pair followed by
/// another digit, is read by [`leading_number`], which gives the same answer.
fn sign_time(s: &str) -> Option<(i64, i64, &str)> {
    if let Some(pair) = s.as_bytes().first_chunk::<23>() {
        let next_is_digit = s.as_bytes().get(23).is_some_and(u8::is_ascii_digit);
        if pair[10..13] == *b"%3B" && !next_is_digit {
            let start = pair.first_chunk::<10>().and_then(ten_digits);
            let end = pair.last_chunk::<10>().and_then(ten_digits);
            if let (Some(start), Some(end)) = (start, end) {
                // The 23 bytes are ASCII, so this is a char boundary.
                return Some((start, end, &s[23..]));
            }
        }
    }
    let (start, rest) = leading_number(s)?;
    let rest = rest.strip_prefix("%3B")?;
    let (end, rest) = leading_number(rest)?;
    Some((start, end, rest))
}

/// The value of ten ASCII digits, or `None` if any byte is not a digit.
fn ten_digits(digits: &[u8; 10]) -> Option<i64> {
    let [.., d8, d9] = *digits;
    let high = eight_digits(u64::from_le_bytes(*digits.first_chunk::<8>()?))?;
    let (d8, d9) = (d8.wrapping_sub(b'0'), d9.wrapping_sub(b'0'));
    if d8 > 9 || d9 > 9 {
        return None;
    }
    Some(high as i64 * 100 + i64::from(d8) * 10 + i64::from(d9))
}

/// The decimal number `s` starts with (1 to 18 digits, so it fits an `i64`) and the
/// rest of `s`: [`sign_time`]'s reader for any pair but two ten-digit times. The first
/// eight digits are checked and converted at once when they are all digits.
fn leading_number(s: &str) -> Option<(i64, &str)> {
    let bytes = s.as_bytes();
    let (mut value, mut digits) = match bytes.first_chunk::<8>() {
        Some(chunk) => match eight_digits(u64::from_le_bytes(*chunk)) {
            Some(value) => (value as i64, 8),
            None => (0, 0),
        },
        None => (0, 0),
    };
    for &b in &bytes[digits..] {
        let digit = b.wrapping_sub(b'0');
        if digit > 9 {
            break;
        }
        digits += 1;
        if digits > 18 {
            return None;
        }
        value = value * 10 + i64::from(digit);
    }
    (digits > 0).then(|| (value, &s[digits..]))
}

/// The value of eight ASCII digits read as a little-endian word (the first digit in the
/// lowest byte), or `None` if any byte is not a digit. The SWAR method of simdjson's
/// `parse_eight_digits_unrolled`.
fn eight_digits(word: u64) -> Option<u64> {
    const HIGH: u64 = 0xF0F0_F0F0_F0F0_F0F0;
    // Each byte is 0x30..=0x39 exactly when its high nibble is 3 and adding 6 does not
    // carry into it.
    if (word & HIGH) | (((word.wrapping_add(0x0606_0606_0606_0606)) & HIGH) >> 4)
        != 0x3333_3333_3333_3333
    {
        return None;
    }
    let word = word - 0x3030_3030_3030_3030;
    // Pairs, then quadruples, then the whole: each step combines neighbouring lanes.
    let word = (word * 10 + (word >> 8)) & 0x00FF_00FF_00FF_00FF;
    let word = (word * 100 + (word >> 16)) & 0x0000_FFFF_0000_FFFF;
    Some((word * 10_000 + (word >> 32)) & 0xFFFF_FFFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_numbers_parse_up_to_eighteen_digits() {
        assert_eq!(
            leading_number("1700000000%3B"),
            Some((1_700_000_000, "%3B"))
        );
        assert_eq!(leading_number("0"), Some((0, "")));
        assert_eq!(
            leading_number("999999999999999999x"),
            Some((999_999_999_999_999_999, "x"))
        );
        assert_eq!(leading_number("1234567890123456789"), None);
        assert_eq!(leading_number("x1"), None);
        assert_eq!(leading_number(""), None);
        assert_eq!(leading_number("١٢"), None); // non-ASCII digits are not digits here
    }

    /// The eight-at-once path agrees with reading one digit at a time, whatever byte
    /// breaks the run and wherever.
    #[test]
    fn leading_numbers_agree_with_one_digit_at_a_time() {
        fn one_at_a_time(s: &str) -> Option<(i64, &str)> {
            let digits = s.bytes().take_while(u8::is_ascii_digit).count();
            (1..=18)
                .contains(&digits)
                .then(|| (s[..digits].parse().unwrap(), &s[digits..]))
        }
        let numbers = [
            "0",
            "7",
            "12345678",
            "1700000000",
            "99999999",
            "123456789012345678",
        ];
        let breakers = ["", "%3B1", "/", ":", "&x", "\u{0}", "é", "9"];
        for number in numbers {
            for breaker in breakers {
                for cut in 0..=number.len() {
                    let s = format!("{}{breaker}{}", &number[..cut], &number[cut..]);
                    assert_eq!(leading_number(&s), one_at_a_time(&s), "{s:?}");
                }
            }
        }
        for byte in 0..=255u8 {
            let mut word = *b"17000000";
            for at in 0..8 {
                let saved = word[at];
                word[at] = byte;
                let expected = word
                    .iter()
                    .all(u8::is_ascii_digit)
                    .then(|| std::str::from_utf8(&word).unwrap().parse::<u64>().unwrap());
                assert_eq!(eight_digits(u64::from_le_bytes(word)), expected, "{word:?}");
                word[at] = saved;
            }
        }
    }

    /// The ten-digit pair's path gives what two `leading_number` calls give, for pairs
    /// of every length around ten digits, whatever breaks or follows them, and with any
    /// one byte of a usual pair replaced.
    #[test]
    fn sign_times_agree_with_reading_each_number() {
        fn each_number(s: &str) -> Option<(i64, i64, &str)> {
            let (start, rest) = leading_number(s)?;
            let (end, rest) = leading_number(rest.strip_prefix("%3B")?)?;
            Some((start, end, rest))
        }
        let digits = |n: usize| "1234567890123456789"[..n].to_string();
        let mut cases = Vec::new();
        for start in [0, 1, 9, 10, 11, 18, 19] {
            for separator in ["%3B", "%3b", "%3", ";", "", "%3B%3B"] {
                for end in [0, 1, 9, 10, 11, 18, 19] {
                    for after in ["", "&q-key-time=1", "x", "9", "é", "%3B1"] {
                        cases.push(format!(
                            "{}{separator}{}{after}",
                            digits(start),
                            digits(end)
                        ));
                    }
                }
            }
        }
        let usual = "1700000000%3B1700003600&q-key-time";
        for at in 0..24 {
            for byte in 0..128u8 {
                let mut bytes = usual.as_bytes().to_vec();
                bytes[at] = byte;
                cases.push(String::from_utf8(bytes).unwrap());
            }
            cases.push(format!("{}é{}", &usual[..at], &usual[at + 1..]));
        }
        for case in &cases {
            assert_eq!(sign_time(case), each_number(case), "{case:?}");
        }
        assert_eq!(
            sign_time("1700000000%3B1700003600&x"),
            Some((1_700_000_000, 1_700_003_600, "&x"))
        );
    }

    #[test]
    fn bucket_and_region_are_validated() {
        assert!(Endpoint::bucket("examplebucket-1250000000", "ap-beijing").is_ok());
        assert!(matches!(
            Endpoint::bucket("Bad_Bucket", "ap-beijing"),
            Err(Error::InvalidBucket(_))
        ));
        assert!(matches!(
            Endpoint::bucket("b-1", "ap beijing"),
            Err(Error::InvalidRegion(_))
        ));
        assert!(matches!(
            Endpoint::bucket("", "ap-beijing"),
            Err(Error::InvalidBucket(_))
        ));
    }

    #[test]
    fn custom_domains() {
        let ep = Endpoint::custom_domain("IMG.Example.com").unwrap();
        assert_eq!(ep.signing_host(), "img.example.com");
        assert_eq!(ep.authority(), "img.example.com");
        let ep = Endpoint::custom_domain("[::1]:9000").unwrap();
        assert_eq!(ep.signing_host(), "::1");
        assert_eq!(ep.authority(), "[::1]:9000");
        for bad in ["", "http://x", "x/y", "a b", "x?y", "u@x", "x:99999"] {
            assert!(Endpoint::custom_domain(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scheme_parses() {
        assert_eq!("HTTP".parse::<Scheme>().unwrap(), Scheme::Http);
        assert!("ftp".parse::<Scheme>().is_err());
    }
}
