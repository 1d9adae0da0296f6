//! Access rules through the real server process: key prefixes, signed links (made by the
//! `sign-link` command and by the Python and JavaScript reference implementations in
//! docs/examples), link rotation, expiry, per-key links in batches, URL options.

use std::process::Command;

use common::{http, origin, problem_type, serve_for, server, start, Running};
use cos_sign::unix_now;
use dev_origin::DevOrigin;
use reqwest::StatusCode;
use serde_json::{json, Value};

mod common;

const NEW_SECRET: &str = "the-new-link-secret-0123";
const OLD_SECRET: &str = "the-old-link-secret-0123";

struct Stack {
    origin: DevOrigin,
    server: Running,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Stack {
    async fn start(link_secrets: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for path in [
            "images/a.jpg",
            "images/b c.jpg",
            "images/private/p.jpg",
            "other/o.jpg",
        ] {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"jpeg").unwrap();
        }
        let origin = origin(dir.path(), "AKIDaccess", "access-secret").await;
        let secrets = serde_json::to_string(link_secrets).unwrap();
        let server = start(
            serve_for(&origin, "AKIDaccess", "access-secret")
                .env("IMAGE_URL_ACCESS__ALLOWED_PREFIXES", r#"["images/"]"#)
                .env(
                    "IMAGE_URL_ACCESS__DENIED_PREFIXES",
                    r#"["images/private/"]"#,
                )
                .env("IMAGE_URL_ACCESS__LINK_SECRETS", secrets),
        );
        let http = http();
        Stack {
            origin,
            server,
            http,
            _dir: dir,
        }
    }

    async fn get(&self, path_and_query: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path_and_query}", self.server.base))
            .send()
            .await
            .unwrap()
    }
}

/// A link made by `image-url-server sign-link`.
fn sign_link(secret: &str, exp: i64, key: &str, params: &[&str]) -> String {
    let mut command = server();
    command
        .args([
            "sign-link",
            "--secret",
            secret,
            "--expires-at",
            &exp.to_string(),
        ])
        .arg(key);
    for param in params {
        command.args(["--param", param]);
    }
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// `exp` and `sig` of a link.
fn exp_and_sig(link: &str) -> (u64, String) {
    let query = link.split_once('?').unwrap().1;
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let get = |name: &str| pairs.iter().find(|(k, _)| k == name).unwrap().1.clone();
    (get("exp").parse().unwrap(), get("sig"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_links_and_prefixes_through_the_server() {
    let s = Stack::start(&[NEW_SECRET, OLD_SECRET]).await;
    let later = unix_now() + 600;

    // No link, a link for another key, a tampered option: 403.
    assert_eq!(
        problem_type(s.get("/api/v1/images/images/a.jpg/proxy").await, 403).await,
        "link-invalid"
    );
    let link_a = sign_link(NEW_SECRET, later, "images/a.jpg", &[]);
    let for_b = link_a.replace("images/a.jpg", "images/b%20c.jpg");
    assert_eq!(problem_type(s.get(&for_b).await, 403).await, "link-invalid");
    let tampered = link_a.replace("?exp=", "?process=imageMogr2%2Fthumbnail%2F10x&exp=");
    assert_eq!(
        problem_type(s.get(&tampered).await, 403).await,
        "link-invalid"
    );
    let stretched = link_a.replace(&format!("exp={later}"), &format!("exp={}", later + 1));
    assert_eq!(
        problem_type(s.get(&stretched).await, 403).await,
        "link-invalid"
    );

    // A good link: a redirect the origin accepts, and the same link in proxy mode.
    let res = s.get(&link_a).await;
    assert_eq!(res.status(), StatusCode::FOUND);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(&format!("http://{}/images/a.jpg?", s.origin.addr())));
    assert_eq!(s.http.get(&location).send().await.unwrap().status(), 200);
    let res = s.get(&format!("{link_a}&mode=proxy")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.bytes().await.unwrap().as_ref(), b"jpeg");
    // /status takes the same link.
    assert_eq!(
        problem_type(s.get("/api/v1/images/images/a.jpg/status").await, 403).await,
        "link-invalid"
    );
    let status_link = link_a.replace("/proxy?", "/status?");
    assert_eq!(s.get(&status_link).await.status(), 200);

    // Rotation: a link made with the old secret still works.
    let old = sign_link(
        OLD_SECRET,
        later,
        "images/b c.jpg",
        &["process=imageMogr2/thumbnail/200x"],
    );
    assert_eq!(s.get(&old).await.status(), StatusCode::FOUND);
    // Expired: 410.
    let expired = sign_link(NEW_SECRET, unix_now() - 1, "images/a.jpg", &[]);
    assert_eq!(
        problem_type(s.get(&expired).await, 410).await,
        "link-expired"
    );

    // Prefixes: a valid link does not open a key outside them.
    for key in ["images/private/p.jpg", "other/o.jpg"] {
        let link = sign_link(NEW_SECRET, later, key, &[]);
        assert_eq!(
            problem_type(s.get(&link).await, 403).await,
            "forbidden-key",
            "{key}"
        );
    }
    // URL options outside the policy: 400, even with a valid link.
    let html = sign_link(
        NEW_SECRET,
        later,
        "images/a.jpg",
        &["content_type=text/html"],
    );
    assert_eq!(
        problem_type(s.get(&html).await, 400).await,
        "invalid-options"
    );

    // Batches: one link per key, each judged on its own.
    let (exp, sig) = exp_and_sig(&link_a);
    let body = json!({
        "keys": ["images/b c.jpg"],
        "items": [
            {"key": "images/a.jpg", "exp": exp, "sig": sig},
            {"key": "images/b c.jpg", "exp": exp, "sig": sig},
            {"key": "images/private/p.jpg", "exp": exp_and_sig(&sign_link(NEW_SECRET, later, "images/private/p.jpg", &[])).0,
             "sig": exp_and_sig(&sign_link(NEW_SECRET, later, "images/private/p.jpg", &[])).1},
        ],
    });
    let res = s
        .http
        .post(format!("{}/api/v1/images/batch/urls", s.server.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let results: Value = res.json().await.unwrap();
    let results = &results["results"];
    assert!(
        results["images/a.jpg"]["url"].as_str().is_some(),
        "{results}"
    );
    assert_eq!(
        results["images/b c.jpg"]["error"]["status"], 403,
        "{results}"
    );
    assert_eq!(
        results["images/private/p.jpg"]["error"]["status"], 403,
        "{results}"
    );
    assert!(results["images/private/p.jpg"]["error"]["type"]
        .as_str()
        .unwrap()
        .ends_with("forbidden-key"));
    // Plain keys through GET: 403 each.
    let res = s.get("/api/v1/images/batch/urls?key=images/a.jpg").await;
    let results: Value = res.json().await.unwrap();
    assert_eq!(results["results"]["images/a.jpg"]["error"]["status"], 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_implementations_make_the_same_links() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/examples");
    let cases: [(&str, &[&str]); 3] = [
        ("images/cat 1.jpg", &["process=imageMogr2/thumbnail/200x"]),
        (
            "/images/ünïcødé/a&b=c?.jpg",
            &[
                "content_type=image/webp",
                "content_disposition=attachment; filename=\"a b.jpg\"",
            ],
        ),
        ("images/../x.jpg", &[]),
    ];
    for (key, params) in cases {
        let from_cli = sign_link(NEW_SECRET, 1_700_003_600, key, params);
        for (program, script) in [("python3", "sign_link.py"), ("node", "sign_link.mjs")] {
            let out = Command::new(program)
                .arg(format!("{root}/{script}"))
                .args([NEW_SECRET, "1700003600", key])
                .args(params)
                .output()
                .unwrap_or_else(|e| panic!("run {program}: {e}"));
            assert!(
                out.status.success(),
                "{program}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let link = String::from_utf8(out.stdout).unwrap();
            assert_eq!(
                exp_and_sig(link.trim()),
                exp_and_sig(&from_cli),
                "{program} {key}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_link_errors_are_one_line() {
    for (args, expected) in [
        (
            vec!["sign-link", "--secret", "short", "--expires", "60", "a.jpg"],
            "at least 16 bytes",
        ),
        (
            vec!["sign-link", "--secret", NEW_SECRET, "--expires", "60", ""],
            "<KEY>",
        ),
        (
            vec![
                "sign-link",
                "--secret",
                NEW_SECRET,
                "--expires",
                "60",
                "--param",
                "q-sign=x",
                "a.jpg",
            ],
            "not a URL option",
        ),
        (
            vec!["sign-link", "--secret", NEW_SECRET, "a.jpg"],
            "--expires",
        ),
    ] {
        let out = server()
            .args(&args)
            .env_remove("IMAGE_URL_LINK_SECRET")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains(NEW_SECRET), "the secret is never printed");
    }
}

/// Proxy mode never serves active content from the API's origin: every answer carries
/// `nosniff` and a sandboxing CSP, and HTML, SVG or scripts go out as downloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_mode_serves_no_active_content() {
    let s = Stack::start(&[]).await;
    for (name, body) in [
        ("images/page.html", "<script>alert(1)</script>"),
        ("images/icon.svg", "<svg onload=alert(1)/>"),
        ("images/app.js", "alert(1)"),
        ("images/noext", "<html>"),
    ] {
        std::fs::write(s._dir.path().join(name), body).unwrap();
    }
    for (key, inline) in [
        ("images/a.jpg", true),
        ("images/page.html", false),
        ("images/icon.svg", false),
        ("images/app.js", false),
        ("images/noext", false),
    ] {
        let res = s
            .get(&format!("/api/v1/images/{key}/proxy?mode=proxy"))
            .await;
        assert_eq!(res.status(), 200, "{key}");
        let headers = res.headers();
        assert_eq!(headers["x-content-type-options"], "nosniff", "{key}");
        assert_eq!(
            headers["content-security-policy"],
            "default-src 'none'; img-src data:; style-src 'unsafe-inline'; sandbox",
            "{key}"
        );
        if inline {
            assert_eq!(headers["content-type"], "image/jpeg", "{key}");
            assert!(!headers.contains_key("content-disposition"), "{key}");
        } else {
            assert_eq!(headers["content-type"], "application/octet-stream", "{key}");
            assert_eq!(headers["content-disposition"], "attachment", "{key}");
        }
    }
    // A client cannot ask COS to relabel an image as HTML either.
    let res = s
        .get("/api/v1/images/images/a.jpg/proxy?mode=proxy&content_type=text/html")
        .await;
    assert_eq!(problem_type(res, 400).await, "invalid-options");
}
