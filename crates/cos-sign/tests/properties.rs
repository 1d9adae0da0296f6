//! Property tests: key encoding and sign/verify round trips over arbitrary UTF-8 keys.

use cos_sign::{
    verify, CosSigner, Credentials, Endpoint, ObjectKey, PresignOptions, Rejection, Scheme,
    SigningWindow, VerifyRequest,
};
use proptest::prelude::*;

fn signer(creds: &Credentials) -> CosSigner {
    CosSigner::new(
        creds.clone(),
        Endpoint::custom_domain("origin.test:9000")
            .unwrap()
            .with_scheme(Scheme::Http),
    )
}

/// Keys mixing ASCII punctuation, dots, slashes and multi-byte characters.
fn key_strategy() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just("/".to_owned()),
            Just(".".to_owned()),
            Just("..".to_owned()),
            Just("%20".to_owned()),
            "[a-zA-Z0-9 +&=?#;:,!$'()*@~_-]{1,4}",
            "\\PC{1,3}",
        ],
        1..12,
    )
    .prop_map(|parts| parts.concat())
}

proptest! {
    #[test]
    fn url_path_decodes_back_to_the_key(raw in key_strategy()) {
        if let Ok(key) = ObjectKey::new(&raw) {
            let path = key.url_path();
            // Only unreserved characters, '/', and escapes remain.
            prop_assert!(path.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~/%".contains(&b)));
            // A '.' is never followed by a literal '/'.
            prop_assert!(!path.contains("./"));
            let decoded = url::form_urlencoded::parse(format!("k={}", path.replace('+', "%2B")).as_bytes())
                .next().unwrap().1.into_owned();
            prop_assert_eq!(decoded, key.signing_path());
            // The verbatim flag says exactly when the path is the key unchanged.
            prop_assert_eq!(key.url_path_is_verbatim(), path == key.signing_path());
        }
    }

    #[test]
    fn valid_keys_are_idempotent(raw in key_strategy()) {
        if let Ok(key) = ObjectKey::new(&raw) {
            // Parsing the stored form again yields the same key unless it starts with '/'
            // (then one more slash would be stripped, as the SDK does).
            if !key.as_str().starts_with('/') {
                prop_assert_eq!(ObjectKey::new(key.as_str()).unwrap(), key);
            }
        }
    }

    #[test]
    fn sign_then_verify_round_trips(
        raw in key_strategy(),
        start in 0i64..2_000_000_000,
        ttl in 1i64..1_000_000,
        value in "\\PC{0,20}",
        token in proptest::option::of("[a-zA-Z0-9+/=_-]{1,40}"),
    ) {
        let Ok(key) = ObjectKey::new(&raw) else { return Ok(()) };
        let mut creds = Credentials::new("AKIDprop", "prop-secret");
        if let Some(token) = &token {
            creds = creds.with_session_token(token, None);
        }
        let window = SigningWindow::new(start, start + ttl).unwrap();
        let options = PresignOptions::new().param("response-content-disposition", value.clone());
        let url = signer(&creds).presign_url(&key, window, &options).unwrap();
        let rest = url.strip_prefix("http://origin.test:9000").unwrap();
        let (path, query) = rest.split_once('?').unwrap();
        let headers = [("Host", "origin.test:9000")];
        let request = VerifyRequest { method: "GET", path, query, headers: &headers };
        let verified = verify(&creds, &request, start + ttl / 2).unwrap();
        prop_assert_eq!(verified.key.as_str(), key.as_str());
        prop_assert_eq!(verify(&creds, &request, start + ttl + 1), Err(Rejection::Expired));
        let other = Credentials::new("AKIDprop", "other-secret");
        let other = match &token { Some(t) => other.with_session_token(t, None), None => other };
        prop_assert_eq!(verify(&other, &request, start + 1), Err(Rejection::SignatureMismatch));
    }

    #[test]
    fn presigned_window_recognises_exactly_its_own_urls(
        raw in key_strategy(),
        other_raw in key_strategy(),
        start in 0i64..2_000_000_000,
        ttl in 1i64..1_000_000,
        token in proptest::option::of("[a-zA-Z0-9+/=_-]{1,40}"),
    ) {
        let Ok(key) = ObjectKey::new(&raw) else { return Ok(()) };
        let mut creds = Credentials::new("AKIDprop", "prop-secret");
        if let Some(token) = &token {
            creds = creds.with_session_token(token, None);
        }
        let window = SigningWindow::new(start, start + ttl).unwrap();
        let options = PresignOptions::new().param("imageMogr2/thumbnail/200x", "");
        let signer = signer(&creds);
        let url = signer.presign_url(&key, window, &options).unwrap();
        prop_assert_eq!(signer.presigned_window(&key, &url), Some(window));
        if let Ok(other) = ObjectKey::new(&other_raw) {
            if other != key {
                prop_assert_eq!(signer.presigned_window(&other, &url), None);
            }
        }
        let elsewhere = CosSigner::new(creds, Endpoint::custom_domain("other.test:9000").unwrap().with_scheme(Scheme::Http));
        prop_assert_eq!(elsewhere.presigned_window(&key, &url), None);
        let https = url.replacen("http://", "https://", 1);
        prop_assert_eq!(signer.presigned_window(&key, &https), None);
    }
}
