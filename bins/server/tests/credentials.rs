//! The server process on rotating temporary credentials: a fake CVM metadata service
//! issues credentials that live a few seconds and rotates them on its own schedule; the
//! dev origin accepts exactly what it issued, until each set expires.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use cos_sign::Credentials;
use dev_origin::{CredentialSet, DevOrigin, OriginConfig};
use image_url_tests::fake_tencent::FakeMetadata;

/// `(q-ak, end of q-sign-time)` of a presigned URL.
fn signed_by(url: &str) -> (String, i64) {
    let query = url.split_once('?').expect("a query").1;
    let field = |name: &str| {
        query
            .split('&')
            .find_map(|f| f.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} in the URL"))
            .to_owned()
    };
    let end = field("q-sign-time=")
        .split_once("%3B")
        .expect("start;end")
        .1
        .parse()
        .expect("a number");
    (field("q-ak="), end)
}

async fn origin_accepting(dir: &std::path::Path, accepted: &CredentialSet) -> DevOrigin {
    let mut config = OriginConfig::new(dir, Credentials::new("AKIDnobody", "nobody"));
    config.more_credentials = accepted.clone();
    DevOrigin::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("start the dev origin")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urls_stay_valid_across_rotations_and_none_outlives_its_credentials() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.jpg"), b"\xff\xd8\xff\xe0 a tiny jpeg").unwrap();
    std::fs::write(dir.path().join("b.jpg"), b"\xff\xd8\xff\xe0 another").unwrap();
    let accepted = CredentialSet::default();
    let origin = origin_accepting(dir.path(), &accepted).await;
    // Each set lives 4 s; the service hands out a new one after 1 s.
    let metadata = FakeMetadata::start(
        "image-url-role",
        Duration::from_secs(4),
        Duration::from_secs(1),
        accepted,
    )
    .await;
    let running = common::start(
        common::server()
            .arg("serve")
            .env("IMAGE_URL_SERVER__WORKERS", "1")
            .env("IMAGE_URL_COS__DOMAIN", origin.addr().to_string())
            .env("IMAGE_URL_COS__SCHEME", "http")
            .env("IMAGE_URL_COS__CREDENTIALS", "cvm-role")
            .env("IMAGE_URL_COS__METADATA_URL", metadata.url())
            .env("IMAGE_URL_SIGNING__PRE_REFRESH_SECS", "1"),
    );
    let http = common::http();
    let base = &running.base;

    // A page asking for its images a few times a second, as browsers would, until three
    // different credential sets have signed its URLs.
    let mut signers = HashSet::new();
    let mut pace = tokio::time::interval(Duration::from_millis(200));
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut requests = 0;
    while signers.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "only {} credential sets seen in 40 s",
            signers.len()
        );
        pace.tick().await;
        for key in ["a.jpg", "b.jpg"] {
            let res = http
                .get(format!("{base}/api/v1/images/{key}/proxy"))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 302, "{}", res.text().await.unwrap());
            let location = res.headers()["location"].to_str().unwrap().to_owned();
            let (ak, end) = signed_by(&location);
            let credentials = metadata.find(&ak).expect("signed with issued credentials");
            let expiry = credentials.expires_at().unwrap().unix_timestamp();
            assert!(
                end <= expiry,
                "a URL valid until {end} signed with credentials expiring at {expiry}"
            );
            let fetched = http.get(&location).send().await.unwrap();
            assert_eq!(
                fetched.status(),
                200,
                "{key} via {ak}: {}",
                fetched.text().await.unwrap()
            );
            signers.insert(ak);
            requests += 1;
        }
    }
    assert!(requests > 6);
    let metrics = common::metrics(&http, base).await;
    assert!(
        metrics.contains("image_url_credentials_rotations_total{source=\"cvm-role\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("image_url_credentials_expiry_timestamp_seconds{source=\"cvm-role\"} 1")
    );

    // The metadata service goes away: the held credentials keep signing, and /readyz says
    // the refresh is failing; once they expire, URL requests are 503 problems.
    metadata.set_down(true);
    let mut saw_degraded = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "the credentials never expired");
        pace.tick().await;
        let ready = common::get_json(&http, &format!("{base}/readyz"), None).await;
        let res = http
            .get(format!("{base}/api/v1/images/a.jpg/proxy"))
            .send()
            .await
            .unwrap();
        if res.status() == 302 {
            saw_degraded |= ready["status"] == "degraded"
                && ready["credentials"]["consecutive_failures"].as_u64() > Some(0);
            continue;
        }
        assert_eq!(common::problem_type(res, 503).await, "credentials-expired");
        break;
    }
    assert!(
        saw_degraded,
        "/readyz reported the failing refresh while signing went on"
    );
    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body = ready.text().await.unwrap();
    assert!(
        !body.contains("tmp-secret") && !body.contains("tmp-token"),
        "{body}"
    );

    // Nothing secret in the log either.
    let common::Running { process, log, .. } = running;
    drop(process);
    let log = log.join().unwrap().join("\n");
    assert!(log.contains("refreshing COS credentials failed"), "{log}");
    assert!(
        !log.contains("tmp-secret") && !log.contains("tmp-token"),
        "{log}"
    );
    origin.stop().await;
}
