//! Every metric the Prometheus rules (`deploy/prometheus/alerts.yml`) and the Grafana
//! dashboard (`deploy/grafana/image-url.json`) use is one the server exports.

mod common;

use std::collections::BTreeSet;

use common::{http, serve_signing, start};

/// The `image_url_*` names in `text`, with a histogram's `_bucket`/`_sum`/`_count`
/// suffix taken off.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("image_url_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(base.to_owned());
        rest = &tail[end..];
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_and_dashboard_use_only_exported_metrics() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy");
    let rules = std::fs::read_to_string(format!("{root}/prometheus/alerts.yml")).unwrap();
    let dashboard = std::fs::read_to_string(format!("{root}/grafana/image-url.json")).unwrap();
    serde_json::from_str::<serde_json::Value>(&dashboard).expect("the dashboard is JSON");
    let used: BTreeSet<String> = metric_names(&rules)
        .into_iter()
        .chain(metric_names(&dashboard))
        .collect();
    assert!(used.len() >= 10, "{used:?}");

    // Credentials from a provider, so that their metrics exist too.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        r#"[cos]
credentials = "command"
command = ["sh", "-c", "echo '{\"SecretId\":\"AKIDcmd\",\"SecretKey\":\"k\",\"Token\":\"t\",\"ExpiredTime\":4102444800}'"]
"#,
    )
    .unwrap();
    let running = start(serve_signing("", "").arg("--config").arg(&config));
    let http = http();
    let res = http
        .get(format!("{}/api/v1/images/a.jpg/proxy", running.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 302);
    let exported = common::metrics(&http, &running.base).await;
    let exported: BTreeSet<String> = exported
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let missing: Vec<_> = used.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "used but not exported: {missing:?}\nexported: {exported:?}"
    );
}
