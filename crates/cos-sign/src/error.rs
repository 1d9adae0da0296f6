//! The crate's error type.

/// Everything that can go wrong in `cos-sign`.
///
/// Every error here is permanent: this crate does no I/O, so retrying the same input gives
/// the same answer. Messages never contain a secret key, a session token or a signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The object key is empty (or only `/`).
    #[error("object key is empty")]
    EmptyKey,
    /// The object key is longer than [`crate::ObjectKey::MAX_LEN`] bytes of UTF-8.
    #[error("object key is {len} bytes long; the limit is {max} bytes", max = crate::ObjectKey::MAX_LEN)]
    KeyTooLong {
        /// Length in bytes of the key that was given.
        len: usize,
    },
    /// The object key contains a control character.
    #[error("object key contains a control character at byte {position}")]
    KeyControlCharacter {
        /// Byte offset of the first control character.
        position: usize,
    },
    /// The object key resolves to the bucket root once `.`, `..` and empty segments are
    /// applied, which the official SDK refuses (`GetObject Key is invalid`).
    #[error("object key normalises to nothing (only '.', '..' and '/' segments)")]
    KeyNormalisesToNothing,
    /// The object key ends in a `.` or `..` segment: its URL path ends in one too, which
    /// browsers and HTTP clients resolve away (`a/b/..` is fetched as `a/`), so a presigned
    /// URL for it can never be fetched as signed. See [`crate::ObjectKey::url_is_stable`].
    #[error("object key ends in a '.' or '..' segment, which URL clients resolve away")]
    KeyEndsInDotSegment,
    /// A bucket name that is not `name-appid` made of `a-z`, `0-9` and `-`.
    #[error("invalid bucket name {0:?}: expected lowercase letters, digits and '-', like examplebucket-1250000000")]
    InvalidBucket(String),
    /// A region that is not made of `a-z`, `0-9` and `-`.
    #[error("invalid region {0:?}: expected something like ap-guangzhou")]
    InvalidRegion(String),
    /// A custom domain that is not a bare `host` or `host:port`.
    #[error("invalid domain {0:?}: expected a host name or host:port, without scheme or path")]
    InvalidDomain(String),
    /// A scheme other than `http` or `https`.
    #[error("invalid scheme {0:?}: expected http or https")]
    InvalidScheme(String),
    /// An HTTP method this crate does not sign.
    #[error("unsupported method {0:?}: expected GET, HEAD, PUT, POST or DELETE")]
    UnsupportedMethod(String),
    /// A signing window whose end is not after its start, or that starts before 1970.
    #[error(
        "invalid signing window {start};{end}: the end must be after the start, both non-negative"
    )]
    InvalidWindow {
        /// Start, unix seconds.
        start: i64,
        /// End, unix seconds.
        end: i64,
    },
    /// A query parameter that cannot be signed.
    #[error("invalid query parameter {name:?}: {reason}")]
    InvalidParameter {
        /// The parameter's name as given.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A header that cannot be signed.
    #[error("invalid header {name:?}: {reason}")]
    InvalidHeader {
        /// The header's name as given.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A request failed signature verification.
    #[error("signature rejected: {0}")]
    Rejected(#[from] Rejection),
}

/// Why [`crate::verify`] rejected a request. Each maps to a COS error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// Neither an `Authorization` header nor a `q-signature` query parameter.
    #[error("request carries no signature")]
    MissingSignature,
    /// The signature fields are malformed or incomplete.
    #[error("malformed signature: {0}")]
    Malformed(&'static str),
    /// `q-sign-algorithm` is not `sha1`.
    #[error("unsupported signature algorithm")]
    UnsupportedAlgorithm,
    /// `q-ak` names another secret id.
    #[error("the access key id does not match")]
    AccessKeyMismatch,
    /// The current time is after the end of `q-sign-time`.
    #[error("request has expired")]
    Expired,
    /// The current time is before the start of `q-sign-time`.
    #[error("request is not yet valid")]
    NotYetValid,
    /// A header named in `q-header-list` is absent from the request.
    #[error("signed header {0:?} is missing from the request")]
    MissingSignedHeader(String),
    /// A parameter named in `q-url-param-list` is absent from the request.
    #[error("signed query parameter {0:?} is missing from the request")]
    MissingSignedParameter(String),
    /// The request's STS session token is absent or differs from the credentials'.
    #[error("security token is missing or does not match")]
    SecurityTokenMismatch,
    /// The recomputed signature differs from `q-signature`.
    #[error("the signature does not match")]
    SignatureMismatch,
}

impl Rejection {
    /// The COS error code a server returns for this rejection (`AccessDenied` for most).
    pub fn cos_code(&self) -> &'static str {
        match self {
            Rejection::Expired => "AccessDenied",
            Rejection::SignatureMismatch => "SignatureDoesNotMatch",
            Rejection::AccessKeyMismatch => "InvalidAccessKeyId",
            _ => "AccessDenied",
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
