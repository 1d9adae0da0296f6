//! Property tests over the edges a client controls: object keys, URL options and signed
//! links. Invariants: every URL the service hands out is on the configured host and
//! carries no CR/LF; a link verifies for exactly what it was signed for, and any
//! one-byte change of its signature, key, expiry or options fails.
//!
//! A short run here; a long run: `PROPTEST_CASES=1000000 cargo test -p image-url-service
//! --test properties --release` (see docs/security.md).

use std::sync::Arc;

use cos_sign::{CosSigner, Credentials, Endpoint, ObjectKey};
use image_url_service::{AccessPolicy, ImageUrlService, LinkError, LinkSigner, UrlOptions};
use proptest::prelude::*;
use url_cache::MemoryCache;

const SECRET: &str = "property-test-link-secret";

/// Keys and option values full of separators, escapes, controls and non-ASCII.
fn hostile_text(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just("/".to_owned()),
            Just("..".to_owned()),
            Just("%".to_owned()),
            Just("%2F".to_owned()),
            Just("\r\n".to_owned()),
            Just("@".to_owned()),
            Just("?".to_owned()),
            Just("#".to_owned()),
            Just("&".to_owned()),
            Just("=".to_owned()),
            Just("\\".to_owned()),
            Just("\u{202e}".to_owned()),
            "[a-zA-Z0-9 ._~-]{1,4}",
            "\\PC{1,2}",
        ],
        0..max,
    )
    .prop_map(|parts| parts.concat())
}

fn options() -> impl Strategy<Value = UrlOptions> {
    (
        proptest::option::of(hostile_text(4)),
        proptest::option::of(hostile_text(4)),
        proptest::option::of(hostile_text(4)),
    )
        .prop_map(|(content_type, disposition, process)| {
            let mut options = UrlOptions::new();
            options.content_type = content_type;
            options.content_disposition = disposition;
            options.process = process;
            options
        })
}

fn service(runtime: &tokio::runtime::Runtime) -> ImageUrlService {
    let _guard = runtime.enter();
    let signer = CosSigner::new(
        Credentials::new("AKIDprop", "prop-secret"),
        Endpoint::bucket("examplebucket-1250000000", "ap-guangzhou").unwrap(),
    );
    ImageUrlService::builder(signer, Arc::new(MemoryCache::new()))
        .access(
            AccessPolicy::builder()
                .allowed_content_types(["*/*"])
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
}

proptest! {
    #[test]
    fn every_url_is_on_the_configured_host_without_cr_or_lf(
        raw in hostile_text(12),
        options in options(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let service = service(&runtime);
        let Ok(key) = ObjectKey::new(&raw) else { return Ok(()) };
        if let Ok(answer) = runtime.block_on(service.get_url(&key, &options)) {
            prop_assert!(!answer.url.contains(['\r', '\n', '#', ' ']), "{:?}", answer.url);
            // What a browser or an HTTP client makes of the URL: the configured host, and
            // the path exactly as written (no dot segment resolved away, so the request
            // reaches the object that was signed).
            let parsed = url::Url::parse(&answer.url).expect("a valid absolute URL");
            prop_assert_eq!(parsed.scheme(), "https");
            prop_assert_eq!(parsed.host_str(), Some("examplebucket-1250000000.cos.ap-guangzhou.myqcloud.com"));
            prop_assert_eq!(parsed.port(), None);
            prop_assert!(parsed.username().is_empty() && parsed.password().is_none());
            let written = &answer.url["https://examplebucket-1250000000.cos.ap-guangzhou.myqcloud.com".len()..];
            let written_path = written.split('?').next().unwrap_or_default();
            prop_assert_eq!(parsed.path(), written_path);
        }
    }

    #[test]
    fn links_verify_for_exactly_what_they_sign(
        raw in hostile_text(12),
        options in options(),
        exp in 1u64..4_000_000_000,
        flip in any::<proptest::sample::Index>(),
        bit in 0u8..8,
    ) {
        let Ok(key) = ObjectKey::new(&raw) else { return Ok(()) };
        let policy = AccessPolicy::builder().link_secrets([SECRET]).build().unwrap();
        let sig = LinkSigner::new(SECRET).unwrap().sign(&key, &options, exp);
        let exp_text = exp.to_string();
        let now = exp as i64 - 1;
        prop_assert_eq!(policy.verify_link(&key, &options, Some(&exp_text), Some(&sig), now), Ok(()));
        prop_assert_eq!(
            policy.verify_link(&key, &options, Some(&exp_text), Some(&sig), exp as i64),
            Err(LinkError::Expired)
        );
        // Any one-byte change of the signature fails.
        let mut bytes = sig.clone().into_bytes();
        let at = flip.index(bytes.len());
        bytes[at] ^= 1 << bit;
        if let Ok(changed) = String::from_utf8(bytes) {
            if !changed.eq_ignore_ascii_case(&sig) {
                prop_assert_eq!(
                    policy.verify_link(&key, &options, Some(&exp_text), Some(&changed), now),
                    Err(LinkError::Invalid)
                );
            }
        }
        // Another expiry, another key, other options: refused.
        let later = (exp + 1).to_string();
        prop_assert_eq!(policy.verify_link(&key, &options, Some(&later), Some(&sig), now), Err(LinkError::Invalid));
        if let Ok(other) = ObjectKey::new(&format!("{}x", key.as_str())) {
            prop_assert_eq!(policy.verify_link(&other, &options, Some(&exp_text), Some(&sig), now), Err(LinkError::Invalid));
        }
        let mut other_options = options.clone();
        other_options.process = Some(format!("{}x", options.process.clone().unwrap_or_default()));
        prop_assert_eq!(policy.verify_link(&key, &other_options, Some(&exp_text), Some(&sig), now), Err(LinkError::Invalid));
    }

    #[test]
    fn normalised_dispositions_are_accepted_and_safe(value in hostile_text(8)) {
        let policy = AccessPolicy::default();
        if let Ok(options) = policy.normalize_options(UrlOptions::new().content_disposition(value)) {
            let disposition = options.content_disposition.clone().unwrap();
            prop_assert!(policy.check_options(&options).is_ok(), "{:?}", disposition);
            let name_ok = |name: &str| name.chars().all(|c| c.is_ascii_alphanumeric() || "._- ".contains(c));
            let safe = match disposition.split_once("; filename=") {
                None => disposition == "inline" || disposition == "attachment",
                Some((kind, quoted)) => {
                    (kind == "inline" || kind == "attachment")
                        && quoted.len() >= 2
                        && quoted.starts_with('"')
                        && quoted.ends_with('"')
                        && name_ok(&quoted[1..quoted.len() - 1])
                }
            };
            prop_assert!(safe, "{:?}", disposition);
            prop_assert!(!disposition.chars().any(char::is_control));
        }
    }
}
