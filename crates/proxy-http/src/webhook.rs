//! Alerts to HTTP webhooks: a JSON POST per alert and receiver, in the shape
//! Alertmanager's webhook receivers accept, plus flat fields for simple receivers.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use image_url_service::{Alert, AlertSink, AlertState};

/// Posts each alert to every URL, with a timeout per attempt and retries with backoff
/// (1 s, 2 s, 4 s, … for `attempts` tries). Runs in the alert's own task: a slow
/// receiver delays nothing else. Logs name the receiver's host only (webhook URLs often
/// carry a token).
#[derive(Debug, Clone)]
pub struct WebhookSink {
    urls: Vec<url::Url>,
    client: reqwest::Client,
    attempts: u32,
    first_backoff: Duration,
}

impl WebhookSink {
    /// A sink posting to `urls` (each must be an `http` or `https` URL).
    pub fn new(urls: &[String]) -> Result<Self, String> {
        let urls = urls
            .iter()
            .map(|u| {
                let parsed = url::Url::parse(u).map_err(|e| format!("webhook URL: {e}"))?;
                match parsed.scheme() {
                    "http" | "https" => Ok(parsed),
                    other => Err(format!(
                        "webhook URL: scheme {other:?} is not http or https"
                    )),
                }
            })
            .collect::<Result<_, _>>()?;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(5))
            .tls_backend_preconfigured(cos_credentials::rustls_config())
            .build()
            .map_err(|e| format!("webhook client: {e}"))?;
        Ok(WebhookSink {
            urls,
            client,
            attempts: 4,
            first_backoff: Duration::from_secs(1),
        })
    }

    /// Tries each delivery `attempts` times, first waiting `first_backoff` before a
    /// retry and doubling it each time (default 4 tries from 1 s).
    pub fn retries(mut self, attempts: u32, first_backoff: Duration) -> Self {
        self.attempts = attempts.max(1);
        self.first_backoff = first_backoff;
        self
    }
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The JSON body for `alert`.
pub fn webhook_payload(alert: &Alert) -> serde_json::Value {
    let status = match alert.state {
        AlertState::Firing => "firing",
        _ => "resolved",
    };
    let alertname = format!("ImageUrl_{}", alert.rule);
    let labels = serde_json::json!({
        "alertname": alertname,
        "rule": alert.rule,
        "instance": alert.instance,
        "service": "image-url",
        "severity": "warning",
    });
    let annotations = serde_json::json!({
        "summary": alert.summary,
        "value": alert.value.to_string(),
        "threshold": alert.threshold.to_string(),
    });
    serde_json::json!({
        // Flat, for simple receivers.
        "rule": alert.rule,
        "state": status,
        "value": alert.value,
        "threshold": alert.threshold,
        "summary": alert.summary,
        "since": unix(alert.since),
        "time": unix(alert.at),
        "instance": alert.instance,
        // Alertmanager's webhook shape (version 4).
        "version": "4",
        "status": status,
        "receiver": "image-url",
        "groupKey": format!("{{}}:{{alertname=\"{alertname}\"}}"),
        "truncatedAlerts": 0,
        "groupLabels": { "alertname": alertname },
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": "",
        "alerts": [{
            "status": status,
            "labels": labels,
            "annotations": annotations,
            "startsAt": rfc3339(alert.since),
            "endsAt": if alert.state == AlertState::Firing { "0001-01-01T00:00:00Z".to_owned() } else { rfc3339(alert.at) },
            "generatorURL": "",
            "fingerprint": format!("{:016x}", fingerprint(alert.rule, &alert.instance)),
        }],
    })
}

/// A stable id per (rule, instance), as Alertmanager fingerprints label sets.
fn fingerprint(rule: &str, instance: &str) -> u64 {
    // FNV-1a: stable across processes and versions, unlike std's hasher.
    rule.bytes()
        .chain([0])
        .chain(instance.bytes())
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        })
}

#[async_trait]
impl AlertSink for WebhookSink {
    async fn send(&self, alert: &Alert) {
        let body = webhook_payload(alert).to_string();
        for url in &self.urls {
            let host = url.host_str().unwrap_or("?");
            let mut backoff = self.first_backoff;
            for attempt in 1..=self.attempts {
                let request = self
                    .client
                    .post(url.clone())
                    .header("content-type", "application/json")
                    .body(body.clone());
                match request.send().await {
                    Ok(res) if res.status().is_success() => break,
                    Ok(res) => tracing::warn!(
                        receiver = host,
                        status = res.status().as_u16(),
                        attempt,
                        "alert webhook refused the alert"
                    ),
                    Err(err) => {
                        tracing::warn!(receiver = host, error = %err.without_url(), attempt, "alert webhook unreachable")
                    }
                }
                if attempt == self.attempts {
                    tracing::error!(receiver = host, rule = alert.rule, "alert not delivered");
                    break;
                }
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2);
            }
        }
    }
}
