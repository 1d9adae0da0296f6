//! Conformance with Tencent's official Python SDK (`cos-python-sdk-v5` 1.9.44): every case
//! of `data/cos-presign.json` (copied from `shared/vectors`) must produce the same scheme,
//! host and path bytes and the same decoded query parameters, or be rejected where the case
//! says `expect_error`. Each presigned URL must also pass our own verifier inside its window.

use std::collections::BTreeMap;

use cos_sign::{
    verify, CosSigner, Credentials, Endpoint, Error, ObjectKey, PresignOptions, Scheme,
    SigningWindow, VerifyRequest,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Vectors {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    key: String,
    method: String,
    start: i64,
    end: i64,
    #[serde(default)]
    params: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    headers: serde_json::Map<String, serde_json::Value>,
    sign_host: bool,
    bucket: String,
    region: String,
    secret_id: String,
    secret_key: String,
    token: Option<String>,
    domain: Option<String>,
    scheme: Option<String>,
    expected_url: Option<String>,
    expect_error: Option<String>,
}

fn pairs(map: &serde_json::Map<String, serde_json::Value>) -> Vec<(String, String)> {
    map.iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("string value").to_owned()))
        .collect()
}

fn load() -> Vec<Case> {
    let text = include_str!("data/cos-presign.json");
    let vectors: Vectors = serde_json::from_str(text).expect("vectors parse");
    vectors.cases
}

struct Built {
    signer: CosSigner,
    credentials: Credentials,
    options: PresignOptions,
    window: SigningWindow,
}

fn build(case: &Case) -> Built {
    let mut credentials = Credentials::new(&case.secret_id, &case.secret_key);
    if let Some(token) = &case.token {
        credentials = credentials.with_session_token(token, None);
    }
    let endpoint = match &case.domain {
        Some(domain) => Endpoint::custom_domain(domain).unwrap(),
        None => Endpoint::bucket(&case.bucket, &case.region).unwrap(),
    };
    let scheme: Scheme = case.scheme.as_deref().unwrap_or("https").parse().unwrap();
    let mut options = PresignOptions::new()
        .method(case.method.parse().unwrap())
        .sign_host(case.sign_host);
    for (k, v) in pairs(&case.params) {
        options = options.param(k, v);
    }
    for (k, v) in pairs(&case.headers) {
        options = options.header(k, v);
    }
    Built {
        signer: CosSigner::new(credentials.clone(), endpoint.with_scheme(scheme)),
        credentials,
        options,
        window: SigningWindow::new(case.start, case.end).unwrap(),
    }
}

/// (scheme, host, raw path bytes, decoded query parameters)
fn parts(url: &str) -> (String, String, String, BTreeMap<String, String>) {
    let parsed = url::Url::parse(url).expect("valid URL");
    let query: BTreeMap<String, String> = parsed.query_pairs().into_owned().collect();
    let host = parsed.host_str().unwrap().to_owned();
    let authority = match parsed.port() {
        Some(port) => format!("{host}:{port}"),
        None => host,
    };
    // The raw path: everything between the authority and '?', byte for byte.
    let after_scheme = url.split_once("://").unwrap().1;
    let path_and_query = &after_scheme[after_scheme.find('/').unwrap()..];
    let path = path_and_query.split('?').next().unwrap().to_owned();
    (parsed.scheme().to_owned(), authority, path, query)
}

#[test]
fn every_vector_matches_the_official_sdk() {
    let cases = load();
    assert_eq!(cases.len(), 223, "the vector file lost cases");
    let mut matched = 0;
    let mut rejected = 0;
    for case in &cases {
        let key = ObjectKey::new(&case.key);
        match (&case.expected_url, &case.expect_error) {
            (Some(expected), None) => {
                let key = key.unwrap_or_else(|e| panic!("{}: key refused: {e}", case.name));
                let built = build(case);
                let url = built
                    .signer
                    .presign_url(&key, built.window, &built.options)
                    .unwrap_or_else(|e| panic!("{}: {e}", case.name));
                assert_eq!(parts(&url), parts(expected), "case {}", case.name);
                matched += 1;
            }
            (None, Some(_)) => {
                assert_eq!(
                    key,
                    Err(Error::KeyNormalisesToNothing),
                    "case {}",
                    case.name
                );
                rejected += 1;
            }
            _ => panic!(
                "{}: a case has either expected_url or expect_error",
                case.name
            ),
        }
    }
    assert_eq!((matched, rejected), (220, 3));
}

#[test]
fn plain_cases_are_byte_identical() {
    // Where the SDK's query order is unambiguous our URL is the same string, not just an
    // equivalent one.
    for case in load().iter().filter(|c| c.expected_url.is_some()) {
        let built = build(case);
        let url = built
            .signer
            .presign_url(
                &ObjectKey::new(&case.key).unwrap(),
                built.window,
                &built.options,
            )
            .unwrap();
        assert_eq!(Some(&url), case.expected_url.as_ref(), "case {}", case.name);
    }
}

#[test]
fn sdk_urls_verify_inside_their_window_only() {
    for case in load().iter().filter(|c| c.expected_url.is_some()) {
        let built = build(case);
        let expected = case.expected_url.as_deref().unwrap();
        let (_, authority, path, _) = parts(expected);
        let query = expected.split_once('?').unwrap().1;
        let mut headers: Vec<(&str, &str)> = vec![("Host", authority.as_str())];
        for (k, v) in &case.headers {
            headers.push((k.as_str(), v.as_str().unwrap()));
        }
        let request = VerifyRequest {
            method: &case.method,
            path: &path,
            query,
            headers: &headers,
        };
        let ok = verify(&built.credentials, &request, case.start + 1)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert_eq!(
            ok.key,
            ObjectKey::new(&case.key).unwrap().as_str(),
            "case {}",
            case.name
        );
        assert!(
            verify(&built.credentials, &request, case.end + 1).is_err(),
            "case {}",
            case.name
        );
        assert!(
            verify(&built.credentials, &request, case.start - 1).is_err(),
            "case {}",
            case.name
        );
    }
}
