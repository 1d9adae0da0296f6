//! Prometheus metrics: HTTP requests by route pattern (unmatched paths collapse into one
//! label), and the service's counters rendered at scrape time.
//!
//! The HTTP series are written per worker and summed when scraped: each worker counts
//! into cells of its own (plain loads and stores, no atomic read-modify-write, nothing
//! another worker writes), where a shared `prometheus` counter and histogram took four
//! atomic writes per request on cache lines every worker wrote.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::http::{Method, StatusCode};

use image_url_service::{CircuitState, ServiceStats};

/// Upper bounds of the request-latency histogram's buckets, in seconds.
const LATENCY_BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// [`LATENCY_BUCKETS`] in nanoseconds, for the comparisons made per request.
const LATENCY_BUCKETS_NANOS: [u64; 15] = {
    let mut nanos = [0; 15];
    let mut i = 0;
    while i < nanos.len() {
        nanos[i] = (LATENCY_BUCKETS[i] * 1e9) as u64;
        i += 1;
    }
    nanos
};

/// The HTTP-level metrics of one server: every worker's request series, read when
/// scraped.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// Every series any worker has recorded into. Locked when a worker records a
    /// (method, route, status) it has not seen before, and when scraped.
    series: Arc<Mutex<Vec<Arc<Series>>>>,
}

impl Metrics {
    /// Empty metrics.
    pub fn new() -> Self {
        Self::default()
    }

    /// The HTTP series in the text format: requests by (method, route, status), latency
    /// by route, each the sum over the workers.
    fn render_http(&self, text: &mut String) {
        let mut requests: BTreeMap<(&str, &str, u16), u64> = BTreeMap::new();
        let mut latency: BTreeMap<&str, Latency> = BTreeMap::new();
        // Held while rendering: the labels are borrowed from the series, and a worker
        // waits on this lock only when it records a combination it has not seen before.
        let series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        for one in series.iter() {
            let count = one.requests.get();
            *requests
                .entry((one.method, &*one.route, one.status.as_u16()))
                .or_default() += count;
            let route = latency.entry(&*one.route).or_default();
            route.count += count;
            route.sum_nanos += one.latency_sum_nanos.get();
            for (total, cell) in route.buckets.iter_mut().zip(&one.latency_buckets) {
                *total += cell.get();
            }
        }
        if requests.is_empty() {
            return;
        }
        let name = "image_url_http_requests_total";
        let _ = writeln!(
            text,
            "# HELP {name} HTTP requests by route pattern and status\n# TYPE {name} counter"
        );
        for ((method, route, status), count) in &requests {
            let route = LabelValue(route);
            let _ = writeln!(
                text,
                "{name}{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {count}"
            );
        }
        let name = "image_url_http_request_duration_seconds";
        let _ = writeln!(
            text,
            "# HELP {name} HTTP request latency by route pattern\n# TYPE {name} histogram"
        );
        for (route, latency) in &latency {
            let route = LabelValue(route);
            let mut cumulative = 0;
            for (bound, count) in LATENCY_BUCKETS.iter().zip(latency.buckets) {
                cumulative += count;
                let _ = writeln!(
                    text,
                    "{name}_bucket{{route=\"{route}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let count = latency.count;
            let sum = latency.sum_nanos as f64 / 1e9;
            let _ = writeln!(
                text,
                "{name}_bucket{{route=\"{route}\",le=\"+Inf\"}} {count}\n{name}_sum{{route=\"{route}\"}} {sum}\n{name}_count{{route=\"{route}\"}} {count}"
            );
        }
    }

    /// The Prometheus text exposition, with `stats` appended when the service runs.
    pub fn render(&self, stats: Option<&ServiceStats>) -> String {
        let mut text = String::new();
        self.render_http(&mut text);
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

/// A label value as the text format writes it: `\\`, `"` and line feeds escaped.
struct LabelValue<'a>(&'a str);

impl std::fmt::Display for LabelValue<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// One route's latency, summed over the workers when scraped.
#[derive(Default)]
struct Latency {
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum_nanos: u64,
}

/// A counter with one writer: the worker that made it adds with a plain load and store
/// (no atomic read-modify-write); scrapes on other threads read it.
#[derive(Debug, Default)]
struct OwnedCounter(AtomicU64);

impl OwnedCounter {
    /// Only the owning worker calls this, so no update is lost between the load and the
    /// store.
    fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A series' (method, route, status).
type SeriesLabels = (&'static str, String, StatusCode);

/// One worker's counts for one (method, route, status): its requests, and their
/// latencies by bucket (each bucket counts only its own range; scrapes accumulate).
#[derive(Debug)]
struct Series {
    method: &'static str,
    route: Cow<'static, str>,
    status: StatusCode,
    requests: OwnedCounter,
    latency_buckets: [OwnedCounter; LATENCY_BUCKETS.len()],
    latency_sum_nanos: OwnedCounter,
}

impl Series {
    fn record(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.requests.add(1);
        self.latency_sum_nanos.add(nanos);
        // Most requests land in the first bucket: a short scan from the bottom.
        if let Some(bucket) = LATENCY_BUCKETS_NANOS.iter().position(|&le| nanos <= le) {
            self.latency_buckets[bucket].add(1);
        }
    }
}

/// One worker's request series: written by that worker alone, found again with a few
/// comparisons (a worker sees a handful of (method, route, status) combinations; past
/// [`MAX_SCANNED_SERIES`], through a map). Not `Sync`: each actix worker builds its own.
#[derive(Debug)]
pub(crate) struct WorkerMetrics {
    metrics: Metrics,
    seen: RefCell<Vec<Arc<Series>>>,
    /// The series past the first [`MAX_SCANNED_SERIES`], by their labels.
    more: RefCell<HashMap<SeriesLabels, Arc<Series>>>,
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

/// Series a worker finds by scanning; the rest it finds through a map.
const MAX_SCANNED_SERIES: usize = 64;

impl WorkerMetrics {
    pub(crate) fn new(metrics: Metrics) -> Self {
        WorkerMetrics {
            metrics,
            seen: RefCell::new(Vec::new()),
            more: RefCell::new(HashMap::new()),
        }
    }

    // A `Cow`, not a `&str`: whether the route is `'static` text is what lets a lookup
    // compare pointers.
    #[allow(clippy::ptr_arg)]
    pub(crate) fn observe_request(
        &self,
        method: &Method,
        route: &Cow<'static, str>,
        status: StatusCode,
        elapsed: Duration,
    ) {
        let method = method_label(method);
        let mut seen = self.seen.borrow_mut();
        // Labels are mostly `'static` (the methods, the key routes' patterns): the same
        // pointer is the same text, without comparing the bytes.
        let same_route = |s: &Series| match (&s.route, route) {
            (Cow::Borrowed(a), Cow::Borrowed(b)) if std::ptr::eq(*a, *b) => true,
            (a, b) => a == b,
        };
        if let Some(series) = seen.iter().find(|s| {
            s.status == status
                && (std::ptr::eq(s.method, method) || s.method == method)
                && same_route(s)
        }) {
            series.record(elapsed);
            return;
        }
        let mut more = self.more.borrow_mut();
        let labels = (method, route.to_string(), status);
        if let Some(series) = more.get(&labels) {
            series.record(elapsed);
            return;
        }
        let series = Arc::new(Series {
            method,
            route: route.clone(),
            status,
            requests: OwnedCounter::default(),
            latency_buckets: Default::default(),
            latency_sum_nanos: OwnedCounter::default(),
        });
        series.record(elapsed);
        self.metrics
            .series
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::clone(&series));
        if seen.len() < MAX_SCANNED_SERIES {
            seen.push(series);
        } else {
            more.insert(labels, series);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each worker counts on its own; a scrape sums them, per series and per bucket.
    #[test]
    fn workers_count_apart_and_scrapes_sum_them() {
        let metrics = Metrics::new();
        let latencies = [
            Duration::from_micros(3),
            Duration::from_micros(100),
            Duration::from_micros(101),
            Duration::from_millis(3),
            Duration::from_secs(9),
        ];
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let metrics = metrics.clone();
                std::thread::spawn(move || {
                    let worker = WorkerMetrics::new(metrics);
                    for elapsed in latencies {
                        worker.observe_request(
                            &Method::GET,
                            &"/p".into(),
                            StatusCode::FOUND,
                            elapsed,
                        );
                    }
                    worker.observe_request(
                        &Method::GET,
                        &"/a\"b\\c\nd".into(),
                        StatusCode::NOT_FOUND,
                        Duration::ZERO,
                    );
                })
            })
            .collect();
        for worker in workers {
            worker.join().unwrap();
        }
        let text = metrics.render(None);
        let name = "image_url_http_request_duration_seconds";
        for line in [
            "# TYPE image_url_http_requests_total counter",
            r#"image_url_http_requests_total{method="GET",route="/p",status="302"} 10"#,
            r#"image_url_http_requests_total{method="GET",route="/a\"b\\c\nd",status="404"} 2"#,
            "# TYPE image_url_http_request_duration_seconds histogram",
            &format!(r#"{name}_bucket{{route="/p",le="0.0001"}} 4"#),
            &format!(r#"{name}_bucket{{route="/p",le="0.00025"}} 6"#),
            &format!(r#"{name}_bucket{{route="/p",le="0.0025"}} 6"#),
            &format!(r#"{name}_bucket{{route="/p",le="0.005"}} 8"#),
            &format!(r#"{name}_bucket{{route="/p",le="1"}} 8"#),
            &format!(r#"{name}_bucket{{route="/p",le="5"}} 8"#),
            &format!(r#"{name}_bucket{{route="/p",le="+Inf"}} 10"#),
            &format!(r#"{name}_sum{{route="/p"}} 18.006408"#),
            &format!(r#"{name}_count{{route="/p"}} 10"#),
            &format!(r#"{name}_count{{route="/a\"b\\c\nd"}} 2"#),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
    }

    /// A route given as `'static` text and the same text owned are one series.
    #[test]
    fn a_route_is_one_series_however_its_text_is_held() {
        let metrics = Metrics::new();
        let worker = WorkerMetrics::new(metrics.clone());
        for route in [Cow::Borrowed("/p"), Cow::Owned("/p".to_owned())] {
            worker.observe_request(&Method::GET, &route, StatusCode::FOUND, Duration::ZERO);
        }
        let text = metrics.render(None);
        assert!(
            text.contains(
                r#"image_url_http_requests_total{method="GET",route="/p",status="302"} 2"#
            ),
            "{text}"
        );
    }

    #[test]
    fn nothing_recorded_renders_no_http_series() {
        let text = Metrics::new().render(None);
        assert!(!text.contains("image_url_http"), "{text}");
    }

    #[test]
    fn kept_and_fresh_series_count_alike() {
        let metrics = Metrics::new();
        let worker = WorkerMetrics::new(metrics.clone());
        for i in 0..(MAX_SCANNED_SERIES + 10) {
            let route = format!("/r{i}");
            for _ in 0..3 {
                worker.observe_request(
                    &Method::GET,
                    &route.clone().into(),
                    StatusCode::OK,
                    Duration::from_millis(1),
                );
            }
        }
        worker.observe_request(
            &Method::POST,
            &"/r0".into(),
            StatusCode::OK,
            Duration::from_millis(1),
        );
        worker.observe_request(
            &Method::GET,
            &"/r0".into(),
            StatusCode::NOT_FOUND,
            Duration::from_millis(1),
        );
        let text = metrics.render(None);
        for i in [0, MAX_SCANNED_SERIES - 1, MAX_SCANNED_SERIES + 9] {
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
