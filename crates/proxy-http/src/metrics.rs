//! Prometheus metrics: HTTP requests by route pattern (unmatched paths collapse into one
//! label), and the service's counters rendered at scrape time.

use std::cell::RefCell;
use std::fmt::Write;
use std::time::Duration;

use actix_web::http::{Method, StatusCode};

use image_url_service::{CircuitState, ServiceStats};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
    TextEncoder,
};

/// The HTTP-level metrics of one server.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Empty metrics.
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "image_url_http_requests_total",
                "HTTP requests by route pattern and status",
            ),
            &["method", "route", "status"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "image_url_http_request_duration_seconds",
                "HTTP request latency by route pattern",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0,
            ]),
            &["route"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let _ = registry.register(Box::new(requests.clone()));
        let _ = registry.register(Box::new(latency.clone()));
        Metrics {
            registry,
            requests,
            latency,
        }
    }

    /// The Prometheus text exposition, with `stats` appended when the service runs.
    pub fn render(&self, stats: Option<&ServiceStats>) -> String {
        let mut buffer = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        let mut text = String::from_utf8(buffer).unwrap_or_default();
        if let Some(s) = stats {
            let counters = [
                (
                    "image_url_requests_total",
                    "URL requests answered by the service",
                    s.requests,
                ),
                (
                    "image_url_cache_hits_total",
                    "URLs served from the cache",
                    s.hits,
                ),
                (
                    "image_url_cache_misses_total",
                    "URLs not in the cache",
                    s.misses,
                ),
                (
                    "image_url_cache_l1_hits_total",
                    "Cache hits served from the in-process L1 in front of Redis (no round trip)",
                    s.cache.l1_hits,
                ),
                (
                    "image_url_pre_refreshes_total",
                    "Cached URLs re-signed inside the pre-refresh threshold",
                    s.pre_refreshes,
                ),
                ("image_url_signings_total", "URLs signed", s.signings),
                (
                    "image_url_cache_errors_total",
                    "Cache calls that failed or timed out",
                    s.cache_errors,
                ),
                (
                    "image_url_degraded_total",
                    "Answers signed directly because the cache failed",
                    s.degraded,
                ),
                (
                    "image_url_cache_evictions_total",
                    "Cache entries evicted for capacity",
                    s.cache.evictions,
                ),
                (
                    "image_url_cache_corrupt_total",
                    "Cache entries the backend could not read (wrong type, malformed), dropped",
                    s.cache.corrupt,
                ),
                (
                    "image_url_maintenance_cleanups_total",
                    "Scheduled cleanups of expired cache entries run",
                    s.maintenance.cleanup_runs,
                ),
                (
                    "image_url_maintenance_cleanup_failures_total",
                    "Scheduled cleanups that failed (cache unavailable)",
                    s.maintenance.cleanup_failures,
                ),
                (
                    "image_url_maintenance_removed_total",
                    "Expired cache entries removed by scheduled cleanups",
                    s.maintenance.entries_removed,
                ),
                (
                    "image_url_refresher_runs_total",
                    "Refresh runs made by this replica (it held the lease)",
                    s.refresher.runs,
                ),
                (
                    "image_url_refresher_failed_runs_total",
                    "Refresh runs that failed (cache or signer unavailable)",
                    s.refresher.failed_runs,
                ),
                (
                    "image_url_refresher_lease_skips_total",
                    "Refresh cycles left to the replica holding the lease",
                    s.refresher.lease_skips,
                ),
                (
                    "image_url_refresher_refreshed_total",
                    "Cached URLs re-signed ahead of expiry by the refresher",
                    s.refresher.refreshed,
                ),
                (
                    "image_url_refresher_failed_total",
                    "Entries the refresher could not re-sign or write",
                    s.refresher.failed,
                ),
                (
                    "image_url_refresher_removed_total",
                    "Expired entries removed by the refresher",
                    s.refresher.removed,
                ),
                (
                    "image_url_refresher_dropped_idle_total",
                    "Idle entries dropped instead of refreshed",
                    s.refresher.dropped_idle,
                ),
                (
                    "image_url_refresher_skipped_total",
                    "Entries looked at and left alone (not due yet)",
                    s.refresher.skipped,
                ),
                (
                    "image_url_corrupt_urls_total",
                    "Cached URLs refused as not this service's for the key (host, path), replaced",
                    s.corrupt_entries,
                ),
            ];
            for (name, help, value) in counters {
                let _ = writeln!(
                    text,
                    "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
                );
            }
            let _ = writeln!(
                text,
                "# HELP image_url_signings_in_flight Signings in progress (single-flight entries)\n# TYPE image_url_signings_in_flight gauge\nimage_url_signings_in_flight {}",
                s.signings_in_flight
            );
            let state = match s.circuit {
                CircuitState::Closed => 0,
                CircuitState::HalfOpen => 1,
                CircuitState::Open => 2,
                // A state added later: reported as open until it has a number.
                _ => 2,
            };
            let _ = writeln!(
                text,
                "# HELP image_url_cache_circuit_state Cache circuit breaker: 0 closed, 1 half-open, 2 open\n# TYPE image_url_cache_circuit_state gauge\nimage_url_cache_circuit_state{{backend=\"{}\"}} {state}",
                s.cache_backend
            );
            let _ = writeln!(
                text,
                "# HELP image_url_cache_hit_ratio Share of URL requests served from the cache\n# TYPE image_url_cache_hit_ratio gauge\nimage_url_cache_hit_ratio {}",
                s.hit_rate
            );
            let _ = writeln!(
                text,
                "# HELP image_url_refresher_lag_seconds How overdue the most overdue entry was in the last refresh run\n# TYPE image_url_refresher_lag_seconds gauge\nimage_url_refresher_lag_seconds {}",
                s.refresher.last_lag.as_secs_f64()
            );
            write_histogram(
                &mut text,
                "image_url_refresher_run_duration_seconds",
                "How long refresh runs took",
                &image_url_service::RUN_DURATION_BUCKETS,
                &s.refresher.duration_buckets,
                s.refresher.runs,
                s.refresher.duration_sum_secs,
            );
            write_histogram(
                &mut text,
                "image_url_cache_call_duration_seconds",
                "Cache calls on the request path that waited for a remote backend (Redis); the memory backend answers at once and is not timed",
                &image_url_service::CACHE_CALL_BUCKETS,
                &s.cache_call_buckets,
                s.cache_call_buckets.last().copied().unwrap_or(0),
                s.cache_call_secs,
            );
            let l = &s.latency_us;
            let _ = writeln!(
                text,
                "# HELP image_url_service_latency_seconds Response time of the service's get_url (signing included, HTTP excluded)\n# TYPE image_url_service_latency_seconds summary\nimage_url_service_latency_seconds{{quantile=\"0.5\"}} {}\nimage_url_service_latency_seconds{{quantile=\"0.95\"}} {}\nimage_url_service_latency_seconds{{quantile=\"0.99\"}} {}\nimage_url_service_latency_seconds_count {}",
                l.p50 as f64 / 1e6,
                l.p95 as f64 / 1e6,
                l.p99 as f64 / 1e6,
                l.count
            );
            let _ = writeln!(
                text,
                "# HELP image_url_refresher_last_run_duration_seconds How long the last refresh run took\n# TYPE image_url_refresher_last_run_duration_seconds gauge\nimage_url_refresher_last_run_duration_seconds {}",
                s.refresher.last_duration.as_secs_f64()
            );
            if let Some(c) = &s.credentials {
                let source = c.source;
                let _ = writeln!(
                    text,
                    "# HELP image_url_credentials_expiry_timestamp_seconds When the signing credentials expire (Unix seconds; 0: they do not, or none are held)\n# TYPE image_url_credentials_expiry_timestamp_seconds gauge\nimage_url_credentials_expiry_timestamp_seconds{{source=\"{source}\"}} {}",
                    c.expires_at.unwrap_or(0)
                );
                let _ = writeln!(
                    text,
                    "# HELP image_url_credentials_rotations_total Times new credentials replaced the previous ones\n# TYPE image_url_credentials_rotations_total counter\nimage_url_credentials_rotations_total{{source=\"{source}\"}} {}",
                    c.rotations
                );
                let _ = writeln!(
                    text,
                    "# HELP image_url_credentials_refresh_failures Failed credential loads since the last success\n# TYPE image_url_credentials_refresh_failures gauge\nimage_url_credentials_refresh_failures{{source=\"{source}\"}} {}",
                    c.consecutive_failures
                );
            }
        }
        text
    }
}

/// A histogram in the text format from cumulative `counts` per upper bound in `bounds`.
fn write_histogram(
    text: &mut String,
    name: &str,
    help: &str,
    bounds: &[f64],
    counts: &[u64],
    total: u64,
    sum: f64,
) {
    let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (bound, count) in bounds.iter().zip(counts) {
        let _ = writeln!(text, "{name}_bucket{{le=\"{bound}\"}} {count}");
    }
    let _ = writeln!(
        text,
        "{name}_bucket{{le=\"+Inf\"}} {total}\n{name}_sum {sum}\n{name}_count {total}"
    );
}

/// One worker's handles on the request series it has recorded into.
///
/// Finding a series by its labels hashes three strings under a lock; a worker sees a
/// handful of (method, route, status) combinations, so it keeps their handles and finds
/// them again with a few comparisons. Not `Sync`: each actix worker builds its own.
#[derive(Debug)]
pub(crate) struct WorkerMetrics {
    metrics: Metrics,
    seen: RefCell<Vec<Series>>,
}

#[derive(Debug)]
struct Series {
    method: &'static str,
    route: String,
    status: StatusCode,
    requests: IntCounter,
    latency: Histogram,
}

/// The access log's counters, in the exposition format.
pub(crate) fn render_access_log(text: &mut String, log: &crate::AccessLog) {
    for (name, help, value) in [
        (
            "image_url_access_log_lines_total",
            "Access log lines written",
            log.written(),
        ),
        (
            "image_url_access_log_dropped_total",
            "Access log lines dropped because the writer fell behind or its output failed",
            log.dropped(),
        ),
    ] {
        let _ = writeln!(
            text,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    }
}

/// A request method as a label or a log field: one of the standard methods, or `other`
/// (a client can send any token as a method, and each distinct one would otherwise add a
/// permanent series, and its bytes to every log line).
pub(crate) fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// More distinct series than this are recorded without keeping their handles.
const MAX_KEPT_SERIES: usize = 64;

impl WorkerMetrics {
    pub(crate) fn new(metrics: Metrics) -> Self {
        WorkerMetrics {
            metrics,
            seen: RefCell::new(Vec::new()),
        }
    }

    pub(crate) fn observe_request(
        &self,
        method: &Method,
        route: &str,
        status: StatusCode,
        elapsed: Duration,
    ) {
        let method = method_label(method);
        let seconds = elapsed.as_secs_f64();
        let mut seen = self.seen.borrow_mut();
        if let Some(series) = seen
            .iter()
            .find(|s| s.status == status && s.method == method && s.route == route)
        {
            series.requests.inc();
            series.latency.observe(seconds);
            return;
        }
        let requests = self
            .metrics
            .requests
            .with_label_values(&[method, route, status.as_str()]);
        let latency = self.metrics.latency.with_label_values(&[route]);
        requests.inc();
        latency.observe(seconds);
        if seen.len() < MAX_KEPT_SERIES {
            seen.push(Series {
                method,
                route: route.to_owned(),
                status,
                requests,
                latency,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_and_fresh_series_count_alike() {
        let metrics = Metrics::new();
        let worker = WorkerMetrics::new(metrics.clone());
        for i in 0..(MAX_KEPT_SERIES + 10) {
            let route = format!("/r{i}");
            for _ in 0..3 {
                worker.observe_request(
                    &Method::GET,
                    &route,
                    StatusCode::OK,
                    Duration::from_millis(1),
                );
            }
        }
        worker.observe_request(
            &Method::POST,
            "/r0",
            StatusCode::OK,
            Duration::from_millis(1),
        );
        worker.observe_request(
            &Method::GET,
            "/r0",
            StatusCode::NOT_FOUND,
            Duration::from_millis(1),
        );
        let text = metrics.render(None);
        for i in [0, MAX_KEPT_SERIES - 1, MAX_KEPT_SERIES + 9] {
            let line = format!(
                "image_url_http_requests_total{{method=\"GET\",route=\"/r{i}\",status=\"200\"}} 3"
            );
            assert!(text.contains(&line), "missing {line} in\n{text}");
        }
        assert!(text.contains(
            "image_url_http_requests_total{method=\"POST\",route=\"/r0\",status=\"200\"} 1"
        ));
        assert!(text.contains(
            "image_url_http_requests_total{method=\"GET\",route=\"/r0\",status=\"404\"} 1"
        ));
        assert!(text.contains("image_url_http_request_duration_seconds_count{route=\"/r0\"} 5"));
    }
}
