//! Alerting: rules over the service's own figures, evaluated by the maintenance task;
//! when one fires or resolves, every [`AlertSink`] hears of it (a webhook, a log), in a
//! task of its own, so a slow receiver never holds up the refresher or a request.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::Serialize;

use crate::ImageUrlService;

/// The rules and where alerts go (part of [`crate::MaintenanceConfig`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AlertConfig {
    /// How often the rules are evaluated (default 15 s).
    pub evaluate_every: Duration,
    /// Fires when more than this share of the last `refresh_failure_runs` refresh runs
    /// failed (default 0.5).
    pub refresh_failure_ratio: f64,
    /// The runs the ratio is taken over (default 3).
    pub refresh_failure_runs: usize,
    /// Fires when the cache has been unreachable or its breaker open for longer than
    /// this (default 60 s).
    pub degraded_after: Duration,
    /// Fires when the last refresh run's lag exceeded this (default 300 s).
    pub max_refresh_lag: Duration,
    /// Fires when the signing credentials expire within this (default 15 min).
    pub credentials_expire_within: Duration,
    /// Fires when the hit rate since the last evaluation is below this, over at least
    /// `min_requests` requests (default 0: off).
    pub min_hit_rate: f64,
    /// Requests an evaluation window needs before its hit rate counts (default 100).
    pub min_requests: u64,
    /// How long every other condition must hold before its alert fires (default 0: at
    /// the first evaluation that sees it).
    pub hold_for: Duration,
    /// This replica's name in alerts (default: the host name, else the process id).
    pub instance: String,
    /// Where alerts go, besides the log.
    pub sinks: Vec<Arc<dyn AlertSink>>,
}

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig {
            evaluate_every: Duration::from_secs(15),
            refresh_failure_ratio: 0.5,
            refresh_failure_runs: 3,
            degraded_after: Duration::from_secs(60),
            max_refresh_lag: Duration::from_secs(300),
            credentials_expire_within: Duration::from_secs(900),
            min_hit_rate: 0.0,
            min_requests: 100,
            hold_for: Duration::ZERO,
            instance: std::env::var("HOSTNAME")
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| format!("pid-{}", std::process::id())),
            sinks: Vec::new(),
        }
    }
}

/// `firing` or `resolved`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum AlertState {
    /// The condition holds.
    Firing,
    /// It held and no longer does.
    Resolved,
}

/// One alert, as sinks receive it and `/api/v1/alerts` lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Alert {
    /// The rule: `refresh_failures`, `cache_degraded`, `refresh_lag`,
    /// `credentials_expiring` or `low_hit_rate`.
    pub rule: &'static str,
    /// Firing or resolved.
    pub state: AlertState,
    /// The figure the rule looked at, when it changed state.
    pub value: f64,
    /// The rule's threshold.
    pub threshold: f64,
    /// What it means, for people.
    pub summary: String,
    /// Since when the condition held.
    #[serde(serialize_with = "crate::unix_time::serialize_time")]
    pub since: SystemTime,
    /// When the alert changed state.
    #[serde(serialize_with = "crate::unix_time::serialize_time")]
    pub at: SystemTime,
    /// The replica.
    pub instance: String,
}

/// Where alerts go. Implementations must not block for long; they run in a task of
/// their own, one per alert, and may retry there.
#[async_trait]
pub trait AlertSink: Send + Sync + std::fmt::Debug {
    /// Delivers `alert`.
    async fn send(&self, alert: &Alert);
}

/// Per-rule state between evaluations.
#[derive(Debug, Default)]
pub(crate) struct AlertBook {
    rules: Vec<RuleState>,
    last_requests: u64,
    last_hits: u64,
}

#[derive(Debug)]
struct RuleState {
    rule: &'static str,
    pending_since: Option<SystemTime>,
    firing: Option<Alert>,
}

/// One rule's reading at an evaluation.
struct Reading {
    rule: &'static str,
    holds: bool,
    value: f64,
    threshold: f64,
    hold_for: Duration,
    summary: String,
}

impl ImageUrlService {
    /// Evaluates the alert rules now; returns the alerts that changed state (and hands
    /// them to the sinks). The maintenance task calls it every `evaluate_every`.
    pub async fn evaluate_alerts(&self, config: &AlertConfig) -> Vec<Alert> {
        let readings = self.readings(config).await;
        let now = self.inner.clock.now();
        let mut changed = Vec::new();
        {
            let mut book = self.inner.alerts.lock().unwrap_or_else(|p| p.into_inner());
            for reading in readings {
                let index = match book.rules.iter().position(|r| r.rule == reading.rule) {
                    Some(i) => i,
                    None => {
                        book.rules.push(RuleState {
                            rule: reading.rule,
                            pending_since: None,
                            firing: None,
                        });
                        book.rules.len() - 1
                    }
                };
                let state = &mut book.rules[index];
                if reading.holds {
                    let since = *state.pending_since.get_or_insert(now);
                    let held = now.duration_since(since).unwrap_or_default();
                    if state.firing.is_none() && held >= reading.hold_for {
                        let alert = Alert {
                            rule: reading.rule,
                            state: AlertState::Firing,
                            value: reading.value,
                            threshold: reading.threshold,
                            summary: reading.summary,
                            since,
                            at: now,
                            instance: config.instance.clone(),
                        };
                        state.firing = Some(alert.clone());
                        changed.push(alert);
                    }
                } else {
                    state.pending_since = None;
                    if let Some(firing) = state.firing.take() {
                        changed.push(Alert {
                            state: AlertState::Resolved,
                            value: reading.value,
                            at: now,
                            ..firing
                        });
                    }
                }
            }
        }
        for alert in &changed {
            match alert.state {
                AlertState::Firing => {
                    tracing::warn!(rule = alert.rule, value = alert.value, threshold = alert.threshold, summary = %alert.summary, "alert firing")
                }
                _ => tracing::info!(rule = alert.rule, value = alert.value, "alert resolved"),
            }
            for sink in &config.sinks {
                let (sink, alert) = (sink.clone(), alert.clone());
                // Detached: a slow or dead receiver delays nobody.
                tokio::spawn(async move { sink.send(&alert).await });
            }
        }
        changed
    }

    /// The alerts firing now, with since when.
    pub fn active_alerts(&self) -> Vec<Alert> {
        let book = self.inner.alerts.lock().unwrap_or_else(|p| p.into_inner());
        book.rules.iter().filter_map(|r| r.firing.clone()).collect()
    }

    async fn readings(&self, config: &AlertConfig) -> Vec<Reading> {
        let stats = self.stats();
        let mut readings = Vec::new();

        // Refresh failures over the last runs.
        let (_, runs, _) = self.refresher_status();
        let recent: Vec<_> = runs
            .iter()
            .rev()
            .take(config.refresh_failure_runs.max(1))
            .collect();
        let failed = recent.iter().filter(|r| r.error.is_some()).count();
        let ratio = if recent.is_empty() {
            0.0
        } else {
            failed as f64 / recent.len() as f64
        };
        readings.push(Reading {
            rule: "refresh_failures",
            holds: recent.len() >= config.refresh_failure_runs.max(1)
                && ratio > config.refresh_failure_ratio,
            value: ratio,
            threshold: config.refresh_failure_ratio,
            hold_for: config.hold_for,
            summary: format!("{failed} of the last {} refresh runs failed", recent.len()),
        });

        // The cache: unreachable now, or its breaker open.
        let reachable = self.cache_healthy().await;
        let open = stats.circuit != crate::CircuitState::Closed;
        readings.push(Reading {
            rule: "cache_degraded",
            holds: !reachable || open,
            value: f64::from(u8::from(!reachable || open)),
            threshold: config.degraded_after.as_secs_f64(),
            hold_for: config.degraded_after,
            summary: if reachable {
                "the cache circuit breaker is open: URLs are signed without the cache".into()
            } else {
                "the cache does not answer: URLs are signed without it (degraded)".into()
            },
        });

        // Refresh lag.
        let lag = stats.refresher.last_lag.as_secs_f64();
        readings.push(Reading {
            rule: "refresh_lag",
            holds: lag > config.max_refresh_lag.as_secs_f64(),
            value: lag,
            threshold: config.max_refresh_lag.as_secs_f64(),
            hold_for: config.hold_for,
            summary: format!("the refresher is {lag:.0} s behind"),
        });

        // Credentials about to expire (only when they do).
        if let Some(expires_at) = stats.credentials.as_ref().and_then(|c| c.expires_at) {
            let left = expires_at as f64 - self.inner.clock.now_unix();
            readings.push(Reading {
                rule: "credentials_expiring",
                holds: left < config.credentials_expire_within.as_secs_f64(),
                value: left,
                threshold: config.credentials_expire_within.as_secs_f64(),
                hold_for: config.hold_for,
                summary: format!("the COS credentials expire in {left:.0} s"),
            });
        }

        // Hit rate over the evaluation window.
        if config.min_hit_rate > 0.0 {
            let mut book = self.inner.alerts.lock().unwrap_or_else(|p| p.into_inner());
            let requests = stats.requests.saturating_sub(book.last_requests);
            let hits = stats.hits.saturating_sub(book.last_hits);
            book.last_requests = stats.requests;
            book.last_hits = stats.hits;
            drop(book);
            let rate = if requests == 0 {
                1.0
            } else {
                hits as f64 / requests as f64
            };
            readings.push(Reading {
                rule: "low_hit_rate",
                holds: requests >= config.min_requests && rate < config.min_hit_rate,
                value: rate,
                threshold: config.min_hit_rate,
                hold_for: config.hold_for,
                summary: format!(
                    "cache hit rate {:.1} % over the last {requests} requests",
                    rate * 100.0
                ),
            });
        }
        readings
    }
}
