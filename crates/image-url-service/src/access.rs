//! Who may have a URL for what: key prefixes, URL options, signed links.
//!
//! Plain, synchronous code, so that an embedding service and the HTTP layer apply the
//! same rules. The service applies [`AccessPolicy::check_key`] and
//! [`AccessPolicy::check_options`] to every request; a front end that hands out
//! links verifies them with [`AccessPolicy::verify_link`] and makes them with
//! [`LinkSigner`].

use cos_sign::ObjectKey;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{ServiceError, UrlOptions};

type HmacSha256 = Hmac<Sha256>;

/// The shortest link secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 16;

/// Why a signed link was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// No `exp`/`sig`, a malformed one, or a signature that no secret made (HTTP 403).
    #[error("a valid signed link (exp and sig) is required for this key")]
    Invalid,
    /// A genuine link past its `exp` (HTTP 410).
    #[error("the signed link has expired")]
    Expired,
}

/// Makes signed links: the Rust implementation of the format below (docs/security.md
/// has the same in Python and JavaScript).
///
/// # Signed links
///
/// A link authorises one key with one set of URL options until `exp` (unix seconds).
/// `sig` is the lowercase hex HMAC-SHA256, keyed with a link secret, of the message
///
/// ```text
/// {key}\n{exp}[\ncontent_disposition={value}][\ncontent_type={value}][\nprocess={value}]
/// ```
///
/// where `key` is the object key (without a leading `/`), `exp` the decimal expiry as
/// it appears in the link, and each URL option that is set follows on its own line, in
/// this (alphabetical) order, with its value as given (keys and values never contain
/// control characters, so the lines cannot be confused). The host is not signed, so a
/// link survives a change of domain; the mode (redirect or proxy) is not signed, so one
/// link serves both.
///
/// ```
/// use cos_sign::ObjectKey;
/// use image_url_service::{AccessPolicy, LinkError, LinkSigner, UrlOptions};
/// let signer = LinkSigner::new("a link secret of 16+ bytes")?;
/// let key = ObjectKey::new("images/a.jpg")?;
/// let options = UrlOptions::new().process("imageMogr2/thumbnail/200x");
/// let sig = signer.sign(&key, &options, 1_700_003_600);
/// let policy = AccessPolicy::builder().link_secrets(["a link secret of 16+ bytes"]).build()?;
/// assert_eq!(policy.verify_link(&key, &options, Some("1700003600"), Some(&sig), 1_700_000_000), Ok(()));
/// assert_eq!(policy.verify_link(&key, &options, Some("1700003600"), Some(&sig), 1_700_003_600), Err(LinkError::Expired));
/// assert_eq!(policy.verify_link(&key, &UrlOptions::new(), Some("1700003600"), Some(&sig), 1_700_000_000), Err(LinkError::Invalid));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct LinkSigner {
    mac: HmacSha256,
}

impl std::fmt::Debug for LinkSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkSigner { secret: <redacted> }")
    }
}

impl LinkSigner {
    /// A signer with `secret` (at least [`MIN_SECRET_LEN`] bytes).
    pub fn new(secret: impl AsRef<[u8]>) -> Result<Self, ServiceError> {
        let secret = secret.as_ref();
        if secret.len() < MIN_SECRET_LEN {
            return Err(ServiceError::InvalidConfig(format!(
                "a link secret must be at least {MIN_SECRET_LEN} bytes"
            )));
        }
        let mac = HmacSha256::new_from_slice(secret)
            .map_err(|_| ServiceError::InvalidConfig("unusable link secret".into()))?;
        Ok(LinkSigner { mac })
    }

    /// `sig` for `key` with `options`, valid until `exp` (unix seconds).
    pub fn sign(&self, key: &ObjectKey, options: &UrlOptions, exp: u64) -> String {
        let mut mac = self.mac.clone();
        mac.update(message(key, options, &exp.to_string()).as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// Whether `sig` (hex) is this secret's signature of the message; constant time.
    fn verifies(&self, message: &str, sig: &[u8]) -> bool {
        let mut mac = self.mac.clone();
        mac.update(message.as_bytes());
        mac.verify_slice(sig).is_ok()
    }
}

/// The signed message of a link.
fn message(key: &ObjectKey, options: &UrlOptions, exp: &str) -> String {
    let mut message = String::with_capacity(key.as_str().len() + 64);
    message.push_str(key.as_str());
    message.push('\n');
    message.push_str(exp);
    for (name, value) in [
        ("content_disposition", &options.content_disposition),
        ("content_type", &options.content_type),
        ("process", &options.process),
    ] {
        if let Some(value) = value {
            message.push('\n');
            message.push_str(name);
            message.push('=');
            message.push_str(value);
        }
    }
    message
}

/// The access rules. The default allows every key and option a COS URL can carry
/// except content types other than `image/*`, and requires no link.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    allowed_prefixes: Vec<String>,
    denied_prefixes: Vec<String>,
    /// The first signs (for tools), every one verifies (rotation).
    link_signers: Vec<LinkSigner>,
    allowed_content_types: Vec<String>,
    allow_processing: bool,
    allowed_processing_prefixes: Vec<String>,
}

impl Default for AccessPolicy {
    fn default() -> Self {
        AccessPolicy {
            allowed_prefixes: Vec::new(),
            denied_prefixes: Vec::new(),
            link_signers: Vec::new(),
            allowed_content_types: vec!["image/*".into()],
            allow_processing: true,
            allowed_processing_prefixes: Vec::new(),
        }
    }
}

/// Builds an [`AccessPolicy`].
#[derive(Debug, Default)]
pub struct AccessPolicyBuilder {
    policy: AccessPolicy,
    secrets: Vec<Vec<u8>>,
}

impl AccessPolicyBuilder {
    /// Keys must start with one of these (none given: every key).
    pub fn allowed_prefixes<S: Into<String>>(
        mut self,
        prefixes: impl IntoIterator<Item = S>,
    ) -> Self {
        self.policy.allowed_prefixes = prefixes.into_iter().map(Into::into).collect();
        self
    }

    /// Keys starting with one of these are refused, whatever `allowed_prefixes` says.
    pub fn denied_prefixes<S: Into<String>>(
        mut self,
        prefixes: impl IntoIterator<Item = S>,
    ) -> Self {
        self.policy.denied_prefixes = prefixes.into_iter().map(Into::into).collect();
        self
    }

    /// Link secrets (each at least [`MIN_SECRET_LEN`] bytes); with any, public requests
    /// need a signed link. Several verify at once, for rotation; the first signs.
    pub fn link_secrets<S: AsRef<[u8]>>(mut self, secrets: impl IntoIterator<Item = S>) -> Self {
        self.secrets = secrets.into_iter().map(|s| s.as_ref().to_vec()).collect();
        self
    }

    /// Content types a request may ask COS to answer with (`response-content-type`):
    /// exact (`image/webp`) or a family (`image/*`); default `["image/*"]`. A family
    /// never admits `image/svg+xml` (active content): list it on its own to allow it.
    pub fn allowed_content_types<S: Into<String>>(
        mut self,
        types: impl IntoIterator<Item = S>,
    ) -> Self {
        self.policy.allowed_content_types = types.into_iter().map(Into::into).collect();
        self
    }

    /// Whether image-processing rules are allowed at all (default true).
    pub fn allow_processing(mut self, yes: bool) -> Self {
        self.policy.allow_processing = yes;
        self
    }

    /// Image-processing rules must start with one of these (none given: any rule), e.g.
    /// `imageMogr2/thumbnail/`, so clients cannot run arbitrary billable processing or
    /// mint unlimited cache variants.
    pub fn allowed_processing_prefixes<S: Into<String>>(
        mut self,
        prefixes: impl IntoIterator<Item = S>,
    ) -> Self {
        self.policy.allowed_processing_prefixes = prefixes.into_iter().map(Into::into).collect();
        self
    }

    /// Checks the secrets and builds the policy.
    pub fn build(mut self) -> Result<AccessPolicy, ServiceError> {
        self.policy.link_signers = self
            .secrets
            .iter()
            .map(LinkSigner::new)
            .collect::<Result<_, _>>()?;
        Ok(self.policy)
    }
}

impl AccessPolicy {
    /// A builder starting from the defaults.
    pub fn builder() -> AccessPolicyBuilder {
        AccessPolicyBuilder::default()
    }

    /// Whether public requests need a signed link (some link secret is set).
    pub fn requires_links(&self) -> bool {
        !self.link_signers.is_empty()
    }

    /// The signer of new links (the first secret), if any.
    pub fn link_signer(&self) -> Option<&LinkSigner> {
        self.link_signers.first()
    }

    /// `Err(Forbidden)` for a key outside the allowed prefixes or inside a denied one;
    /// `Err(InvalidKey)` for one whose URL clients would not fetch as signed (a final `.`
    /// or `..` segment, see [`ObjectKey::url_is_stable`]).
    pub fn check_key(&self, key: &ObjectKey) -> Result<(), ServiceError> {
        if !key.url_is_stable() {
            return Err(ServiceError::InvalidKey(
                cos_sign::Error::KeyEndsInDotSegment,
            ));
        }
        let key = key.as_str();
        let allowed = self.allowed_prefixes.is_empty()
            || self
                .allowed_prefixes
                .iter()
                .any(|p| key.starts_with(p.as_str()));
        if !allowed
            || self
                .denied_prefixes
                .iter()
                .any(|p| key.starts_with(p.as_str()))
        {
            return Err(ServiceError::Forbidden(
                "the key is outside the prefixes this server serves".into(),
            ));
        }
        Ok(())
    }

    /// [`AccessPolicy::check_key`] and [`AccessPolicy::check_options`] together: what
    /// every single-key request must pass.
    pub fn check(&self, key: &ObjectKey, options: &UrlOptions) -> Result<(), ServiceError> {
        self.check_key(key)?;
        self.check_options(options)
    }

    /// `Err(InvalidOptions)` for a content type, disposition or processing rule the
    /// policy does not allow. The disposition must be `inline` or `attachment`, with at
    /// most a plain filename: use [`AccessPolicy::normalize_options`] first to turn a
    /// client's disposition into that form.
    pub fn check_options(&self, options: &UrlOptions) -> Result<(), ServiceError> {
        if let Some(content_type) = &options.content_type {
            if !self.content_type_allowed(content_type) {
                return Err(ServiceError::InvalidOptions(format!(
                    "content_type {content_type:?} is not allowed (allowed: {})",
                    self.allowed_content_types.join(", ")
                )));
            }
        }
        if let Some(disposition) = &options.content_disposition {
            if normalize_disposition(disposition).as_deref() != Some(disposition.as_str()) {
                return Err(ServiceError::InvalidOptions(
                    "content_disposition must be inline or attachment, with at most a filename of letters, digits, '.', '_', '-' and spaces".into(),
                ));
            }
        }
        if let Some(rule) = &options.process {
            if !self.allow_processing {
                return Err(ServiceError::InvalidOptions(
                    "image processing is not allowed on this server".into(),
                ));
            }
            if !self.allowed_processing_prefixes.is_empty()
                && !self
                    .allowed_processing_prefixes
                    .iter()
                    .any(|p| rule.starts_with(p.as_str()))
            {
                return Err(ServiceError::InvalidOptions(format!(
                    "the processing rule is not allowed (allowed: {})",
                    self.allowed_processing_prefixes.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// `options` with the disposition in its one accepted form (`inline`, `attachment`
    /// or `attachment; filename="name"` with the name reduced to safe characters), so
    /// that equivalent requests share a signature and a cache entry. A disposition that
    /// is neither inline nor attachment is an error.
    pub fn normalize_options(&self, mut options: UrlOptions) -> Result<UrlOptions, ServiceError> {
        if let Some(disposition) = &options.content_disposition {
            let normalized = normalize_disposition(disposition).ok_or_else(|| {
                ServiceError::InvalidOptions(
                    "content_disposition must be inline or attachment".into(),
                )
            })?;
            options.content_disposition = Some(normalized);
        }
        Ok(options)
    }

    /// Whether content of `content_type` may be shown inline (proxy mode): the same
    /// allow-list as `content_type` overrides. Anything else (HTML, SVG, scripts) is
    /// served as a download.
    pub fn serves_inline(&self, content_type: &str) -> bool {
        self.content_type_allowed(content_type)
    }

    fn content_type_allowed(&self, content_type: &str) -> bool {
        if content_type.trim() != content_type {
            return false;
        }
        let wanted = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if wanted.is_empty() || wanted.contains(|c: char| c.is_whitespace()) {
            return false;
        }
        self.allowed_content_types.iter().any(|allowed| {
            let allowed = allowed.to_ascii_lowercase();
            match allowed.strip_suffix("/*") {
                // A family never admits SVG: it is a document that runs scripts.
                Some(family) => {
                    wanted
                        .strip_prefix(family)
                        .is_some_and(|rest| rest.starts_with('/'))
                        && wanted != "image/svg+xml"
                }
                None => wanted == allowed,
            }
        })
    }

    /// Checks a link presented for `key` with `options` at `now` (unix seconds):
    /// `exp` and `sig` as they came in the request.
    pub fn verify_link(
        &self,
        key: &ObjectKey,
        options: &UrlOptions,
        exp: Option<&str>,
        sig: Option<&str>,
        now: i64,
    ) -> Result<(), LinkError> {
        let (Some(exp), Some(sig)) = (exp, sig) else {
            return Err(LinkError::Invalid);
        };
        let valid_exp =
            !exp.is_empty() && exp.len() <= 18 && exp.bytes().all(|b| b.is_ascii_digit());
        let Ok(sig) = hex::decode(sig) else {
            return Err(LinkError::Invalid);
        };
        if !valid_exp || sig.len() != 32 {
            return Err(LinkError::Invalid);
        }
        let message = message(key, options, exp);
        if !self.link_signers.iter().any(|s| s.verifies(&message, &sig)) {
            return Err(LinkError::Invalid);
        }
        // Only a genuine link learns that it expired.
        match exp.parse::<i64>() {
            Ok(exp) if exp > now => Ok(()),
            _ => Err(LinkError::Expired),
        }
    }
}

/// `inline`, `attachment` or `attachment; filename="name"` with only letters, digits,
/// `.`, `_`, `-` and spaces kept in the name (at most 100 of them); `None` for any other
/// disposition type.
fn normalize_disposition(value: &str) -> Option<String> {
    let mut parts = value.split(';');
    let kind = parts.next()?.trim().to_ascii_lowercase();
    if kind != "inline" && kind != "attachment" {
        return None;
    }
    let filename = parts.find_map(|part| {
        let (name, value) = part.split_once('=')?;
        let name = name.trim().to_ascii_lowercase();
        (name == "filename").then(|| {
            value
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ' '))
                .take(100)
                .collect::<String>()
                .trim()
                .trim_start_matches('.')
                .to_owned()
        })
    });
    Some(match filename {
        Some(name) if !name.is_empty() => format!("{kind}; filename=\"{name}\""),
        _ => kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> ObjectKey {
        ObjectKey::new(k).unwrap()
    }

    /// The HTTP layer lends requests without parameters `UrlOptions::DEFAULT` without
    /// normalising them: that holds only while normalising leaves them as they are.
    #[test]
    fn the_default_options_are_already_normal() {
        let strict = AccessPolicy::builder()
            .allowed_prefixes(["images/"])
            .allow_processing(false)
            .build()
            .unwrap();
        for policy in [AccessPolicy::default(), strict] {
            assert_eq!(
                policy.normalize_options(UrlOptions::DEFAULT).unwrap(),
                UrlOptions::DEFAULT
            );
        }
        assert_eq!(UrlOptions::DEFAULT, UrlOptions::new());
    }

    #[test]
    fn prefixes_allow_and_deny() {
        let policy = AccessPolicy::builder()
            .allowed_prefixes(["images/", "avatars/"])
            .denied_prefixes(["images/private/"])
            .build()
            .unwrap();
        assert!(policy.check_key(&key("images/a.jpg")).is_ok());
        assert!(policy.check_key(&key("avatars/u1.png")).is_ok());
        for refused in [
            "images/private/a.jpg",
            "secrets/a.jpg",
            "imagesx/a.jpg",
            "a.jpg",
        ] {
            assert!(
                matches!(
                    policy.check_key(&key(refused)),
                    Err(ServiceError::Forbidden(_))
                ),
                "{refused}"
            );
        }
        assert!(AccessPolicy::default().check_key(&key("anything")).is_ok());
        // Found by the long property run: a final dot segment is resolved away by URL
        // clients, so the signed URL would never be fetched as signed.
        for unreachable in ["a/b/..", "%/@/..", "a/."] {
            assert!(
                matches!(
                    AccessPolicy::default().check_key(&key(unreachable)),
                    Err(ServiceError::InvalidKey(
                        cos_sign::Error::KeyEndsInDotSegment
                    ))
                ),
                "{unreachable}"
            );
        }
    }

    #[test]
    fn content_types_are_image_only_and_never_svg_by_family() {
        let policy = AccessPolicy::default();
        let ok = |t: &str| {
            policy
                .check_options(&UrlOptions::new().content_type(t))
                .is_ok()
        };
        assert!(ok("image/webp") && ok("image/jpeg") && ok("IMAGE/PNG"));
        for bad in [
            "text/html",
            "image/svg+xml",
            "application/javascript",
            "image",
            "",
            " image/png",
            "imagex/png",
            "text/html; image/png",
        ] {
            assert!(!ok(bad), "{bad}");
        }
        let with_svg = AccessPolicy::builder()
            .allowed_content_types(["image/*", "image/svg+xml"])
            .build()
            .unwrap();
        assert!(with_svg
            .check_options(&UrlOptions::new().content_type("image/svg+xml"))
            .is_ok());
    }

    #[test]
    fn dispositions_are_normalised_and_sanitised() {
        let policy = AccessPolicy::default();
        let normalize = |d: &str| {
            policy
                .normalize_options(UrlOptions::new().content_disposition(d))
                .map(|o| o.content_disposition.unwrap())
        };
        assert_eq!(normalize("inline").unwrap(), "inline");
        assert_eq!(normalize(" Attachment ").unwrap(), "attachment");
        assert_eq!(
            normalize("attachment; filename=\"../../evil\\\".html\"").unwrap(),
            "attachment; filename=\"evil.html\""
        );
        assert_eq!(
            normalize("attachment; filename=\"\r\nSet-Cookie: x\"").unwrap(),
            "attachment; filename=\"Set-Cookie x\""
        );
        assert!(normalize("form-data; name=x").is_err());
        for good in ["inline", "attachment; filename=\"a b.jpg\""] {
            assert!(policy
                .check_options(&UrlOptions::new().content_disposition(good))
                .is_ok());
        }
        assert!(policy
            .check_options(&UrlOptions::new().content_disposition("attachment; filename=x\"y"))
            .is_err());
    }

    #[test]
    fn processing_can_be_limited_or_off() {
        let thumb = UrlOptions::new().process("imageMogr2/thumbnail/200x");
        let watermark = UrlOptions::new().process("watermark/2/text/aGk=");
        let limited = AccessPolicy::builder()
            .allowed_processing_prefixes(["imageMogr2/thumbnail/"])
            .build()
            .unwrap();
        assert!(limited.check_options(&thumb).is_ok());
        assert!(limited.check_options(&watermark).is_err());
        let off = AccessPolicy::builder()
            .allow_processing(false)
            .build()
            .unwrap();
        assert!(off.check_options(&thumb).is_err());
        assert!(AccessPolicy::default().check_options(&watermark).is_ok());
    }

    #[test]
    fn links_verify_with_any_secret_and_fail_on_any_change() {
        let old = "the old secret, 16+ bytes";
        let new = "the new secret, 16+ bytes";
        let policy = AccessPolicy::builder()
            .link_secrets([new, old])
            .build()
            .unwrap();
        let k = key("images/a.jpg");
        let options = UrlOptions::new().content_type("image/webp");
        let now = 1_700_000_000;
        for secret in [old, new] {
            let sig = LinkSigner::new(secret)
                .unwrap()
                .sign(&k, &options, 1_700_000_100);
            assert_eq!(
                policy.verify_link(&k, &options, Some("1700000100"), Some(&sig), now),
                Ok(())
            );
        }
        let sig = policy
            .link_signer()
            .unwrap()
            .sign(&k, &options, 1_700_000_100);
        let verify =
            |key: &ObjectKey, options: &UrlOptions, exp: Option<&str>, sig: Option<&str>| {
                policy.verify_link(key, options, exp, sig, now)
            };
        assert_eq!(verify(&k, &options, Some("1700000100"), Some(&sig)), Ok(()));
        assert_eq!(
            verify(
                &key("images/b.jpg"),
                &options,
                Some("1700000100"),
                Some(&sig)
            ),
            Err(LinkError::Invalid)
        );
        assert_eq!(
            verify(&k, &UrlOptions::new(), Some("1700000100"), Some(&sig)),
            Err(LinkError::Invalid)
        );
        assert_eq!(
            verify(&k, &options, Some("1700000101"), Some(&sig)),
            Err(LinkError::Invalid)
        );
        assert_eq!(
            verify(&k, &options, Some("01700000100"), Some(&sig)),
            Err(LinkError::Invalid)
        );
        assert_eq!(
            verify(&k, &options, None, Some(&sig)),
            Err(LinkError::Invalid)
        );
        assert_eq!(
            verify(&k, &options, Some("1700000100"), None),
            Err(LinkError::Invalid)
        );
        assert_eq!(
            verify(&k, &options, Some("1700000100"), Some(&sig.to_uppercase())),
            Ok(())
        );
        let mut flipped = sig.clone().into_bytes();
        flipped[10] = if flipped[10] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(
            verify(&k, &options, Some("1700000100"), Some(&flipped)),
            Err(LinkError::Invalid)
        );
        // Expired only once genuine.
        assert_eq!(
            policy.verify_link(&k, &options, Some("1700000100"), Some(&sig), 1_700_000_100),
            Err(LinkError::Expired)
        );
        let stranger = LinkSigner::new("somebody else's secret")
            .unwrap()
            .sign(&k, &options, 1);
        assert_eq!(
            policy.verify_link(&k, &options, Some("1"), Some(&stranger), now),
            Err(LinkError::Invalid)
        );
        assert!(LinkSigner::new("short").is_err());
    }

    /// A fixed vector, shared with the Python and JavaScript reference implementations
    /// in docs/security.md.
    #[test]
    fn the_documented_vector() {
        let signer = LinkSigner::new("example-link-secret-0123456789").unwrap();
        let options = UrlOptions::new().process("imageMogr2/thumbnail/200x");
        let sig = signer.sign(&key("images/cat 1.jpg"), &options, 1_700_003_600);
        let mut mac = HmacSha256::new_from_slice(b"example-link-secret-0123456789").unwrap();
        mac.update(b"images/cat 1.jpg\n1700003600\nprocess=imageMogr2/thumbnail/200x");
        assert_eq!(sig, hex::encode(mac.finalize().into_bytes()));
    }
}
