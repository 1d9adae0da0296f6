//! The access log: one line per request, formatted and written off the request path.
//!
//! A request costs a worker only a copy of a small record into a buffer of its own
//! (a mutex no other worker takes; the writer thread takes it once per flush interval
//! to swap the buffer out). The writer thread formats the records and writes them with
//! buffering, as nginx's `access_log … buffer=` does. A worker never waits for the
//! writer: a worker whose buffer is full drops the record and counts it
//! ([`AccessLog::dropped`]), so a slow disk or a stalled pipe costs log lines, never
//! requests.
//!
//! ```
//! use proxy_http::{AccessLog, AccessLogOptions, ApiConfig};
//!
//! // Lines to stdout, one in ten successful requests (errors always).
//! let mut options = AccessLogOptions::default();
//! options.sample_rate = 0.1;
//! let (log, _writer) = AccessLog::start(std::io::stdout(), options).unwrap();
//! let config = ApiConfig::default().access_log(log);
//! # let _ = config;
//! // Keep `_writer` until exit: dropping it writes what is pending.
//! ```

use std::borrow::Cow;
use std::cell::Cell;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

// The request middleware's clock (see `request_id`): records are placed on the wall
// clock by one reading of both per writer round.
use quanta::Instant;

/// Where a server's access lines go ([`crate::ApiConfig::access_log`]).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum AccessLines {
    /// `tracing` events at `info` with the target `image_url::access`, formatted on the
    /// worker (what an application embedding the routes gets unless it chooses).
    #[default]
    Tracing,
    /// None at all.
    Off,
    /// Into an [`AccessLog`]: formatted and written off the workers.
    To(AccessLog),
}

/// How the lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AccessLogFormat {
    /// `2026-11-28T11:59:18.123456Z  INFO image_url::access: request request_id="…"
    /// method="GET" route="/api/v1/images/{key}/proxy" status=302 latency_us=12`, as the
    /// `tracing` text format writes it.
    #[default]
    Text,
    /// One JSON object per line, in the shape of `tracing`'s JSON format.
    Json,
}

/// Settings of [`AccessLog::start`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AccessLogOptions {
    /// Text or JSON lines.
    pub format: AccessLogFormat,
    /// Share of successful (below 400) requests logged, 0.0 to 1.0 (default 1.0: all).
    /// Every 4xx and 5xx is logged whatever the rate. The choice is by count, not by
    /// chance: 0.25 logs exactly every fourth success of each worker.
    pub sample_rate: f64,
    /// How often the writer collects the workers' records and writes them (default
    /// 100 ms): the most a line waits, and (with the request rate) the size of a
    /// worker's buffer.
    pub flush_interval: Duration,
    /// Records one worker may hold for the writer (default 65 536, about 7 MiB); beyond
    /// it records are dropped and counted.
    pub max_pending_per_worker: usize,
    /// Bytes buffered before a write (default 64 KiB). Writes carry whole lines, so up
    /// to 4096 they are atomic on a pipe shared with other writers (e.g. stderr).
    pub write_buffer_bytes: usize,
}

impl Default for AccessLogOptions {
    fn default() -> Self {
        AccessLogOptions {
            format: AccessLogFormat::Text,
            sample_rate: 1.0,
            flush_interval: Duration::from_millis(100),
            max_pending_per_worker: 65_536,
            write_buffer_bytes: 64 * 1024,
        }
    }
}

/// Why [`AccessLog::start`] refused its options.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccessLogError {
    /// `sample_rate` is not within 0.0 to 1.0.
    #[error("access log sample rate must be within 0.0 and 1.0, not {0}")]
    SampleRate(f64),
    /// `flush_interval` is zero or over a minute.
    #[error("access log flush interval must be within 1 ms and 60 s")]
    FlushInterval,
    /// The writer thread could not be started.
    #[error("cannot start the access log writer: {0}")]
    Thread(#[source] std::io::Error),
}

/// The handle workers record into; clone it freely. Made by [`AccessLog::start`], given
/// to the server with [`crate::ApiConfig::access_log`].
#[derive(Clone)]
pub struct AccessLog {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("options", &self.shared.options)
            .field("written", &self.written())
            .field("dropped", &self.dropped())
            .finish()
    }
}

/// Keeps the writer thread running; dropping it writes every pending record, flushes
/// and stops the thread.
#[must_use = "dropping the guard stops the access log writer"]
#[derive(Debug)]
pub struct AccessLogWriter {
    stop: Option<mpsc::Sender<()>>,
    done: mpsc::Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for AccessLogWriter {
    fn drop(&mut self) {
        // Dropping the sender wakes the writer for its last round. An output stuck for
        // good (a pipe nobody reads) must not hold up the exit: wait 2 s at most.
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            if self.done.recv_timeout(Duration::from_secs(2))
                != Err(mpsc::RecvTimeoutError::Timeout)
            {
                let _ = thread.join();
            }
        }
    }
}

struct Shared {
    options: AccessLogOptions,
    /// Every worker's buffer. Locked when a worker starts and once per flush.
    slots: Mutex<Vec<Arc<Slot>>>,
    written: AtomicU64,
    dropped: AtomicU64,
}

/// One worker's records, waiting for the writer.
#[derive(Default)]
struct Slot {
    pending: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    records: Vec<Record>,
    dropped: u64,
}

/// What is kept of a request until its line is written: fixed size but for the route of
/// a request that matched no key route (rare; the router's pattern).
struct Record {
    started: Instant,
    latency_us: u32,
    status: u16,
    method: &'static str,
    route: Cow<'static, str>,
    id: LoggedId,
}

/// A request id as a record keeps it: a fresh id's number, whose text the writer thread
/// makes (not the worker), or a caller's id's bytes.
pub(crate) enum LoggedId {
    /// A fresh id (see `request_id`).
    Fresh(u32),
    /// A caller's id, at most 64 bytes of plain ASCII.
    Given { len: u8, bytes: [u8; 64] },
}

impl LoggedId {
    /// A caller's id (cut at 64 bytes; the middleware admits no longer one).
    pub(crate) fn given(id: &[u8]) -> Self {
        let mut bytes = [0u8; 64];
        let len = id.len().min(bytes.len());
        bytes[..len].copy_from_slice(&id[..len]);
        LoggedId::Given {
            len: len as u8,
            bytes,
        }
    }
}

impl AccessLog {
    /// Starts the writer thread over `out` (stderr, a file opened for appending, …).
    pub fn start(
        out: impl Write + Send + 'static,
        options: AccessLogOptions,
    ) -> Result<(AccessLog, AccessLogWriter), AccessLogError> {
        if !(0.0..=1.0).contains(&options.sample_rate) {
            return Err(AccessLogError::SampleRate(options.sample_rate));
        }
        if options.flush_interval < Duration::from_millis(1)
            || options.flush_interval > Duration::from_secs(60)
        {
            return Err(AccessLogError::FlushInterval);
        }
        let shared = Arc::new(Shared {
            options,
            slots: Mutex::new(Vec::new()),
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        let (stop, stopped) = mpsc::channel::<()>();
        let (finished, done) = mpsc::channel::<()>();
        let writer_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                // Dropped when the loop ends, however it ends.
                let _finished = finished;
                write_loop(&writer_shared, out, &stopped);
            })
            .map_err(AccessLogError::Thread)?;
        Ok((
            AccessLog { shared },
            AccessLogWriter {
                stop: Some(stop),
                done,
                thread: Some(thread),
            },
        ))
    }

    /// Lines written so far.
    pub fn written(&self) -> u64 {
        self.shared.written.load(Ordering::Relaxed)
    }

    /// Records dropped so far because a worker's buffer was full (the writer fell
    /// behind) or the output failed.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// A buffer for one worker thread.
    pub(crate) fn worker(&self) -> WorkerAccessLog {
        let slot = Arc::new(Slot::default());
        self.shared
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::clone(&slot));
        WorkerAccessLog {
            slot,
            sample_rate: self.shared.options.sample_rate,
            max_pending: self.shared.options.max_pending_per_worker,
            sampled: Cell::new(0.0),
        }
    }
}

/// One worker's side of the log (not `Send`: a worker's own).
pub(crate) struct WorkerAccessLog {
    slot: Arc<Slot>,
    sample_rate: f64,
    max_pending: usize,
    /// Successes owed a line: each one adds the rate, a line takes 1.
    sampled: Cell<f64>,
}

impl std::fmt::Debug for WorkerAccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerAccessLog").finish_non_exhaustive()
    }
}

impl WorkerAccessLog {
    /// Records one request, unless sampling skips it.
    pub(crate) fn record(
        &self,
        started: Instant,
        elapsed: Duration,
        method: &'static str,
        route: Cow<'static, str>,
        status: u16,
        id: LoggedId,
    ) {
        if status < 400 && self.sample_rate < 1.0 {
            let owed = self.sampled.get() + self.sample_rate;
            if owed < 1.0 {
                self.sampled.set(owed);
                return;
            }
            self.sampled.set(owed - 1.0);
        }
        let record = Record {
            started,
            latency_us: u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX),
            status,
            method,
            route,
            id,
        };
        let mut pending = self
            .slot
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if pending.records.len() < self.max_pending {
            pending.records.push(record);
        } else {
            pending.dropped += 1;
        }
    }
}

/// The writer thread: every interval (and once more when stopped) swaps each worker's
/// records out, formats and writes them.
fn write_loop(shared: &Shared, out: impl Write, stopped: &mpsc::Receiver<()>) {
    let options = &shared.options;
    let mut out = std::io::BufWriter::with_capacity(options.write_buffer_bytes.max(256), out);
    let mut batch: Vec<Record> = Vec::new();
    let mut line: Vec<u8> = Vec::with_capacity(256);
    let mut clock = SecondText::default();
    let mut failing = false;
    loop {
        let last = !matches!(
            stopped.recv_timeout(options.flush_interval),
            Err(mpsc::RecvTimeoutError::Timeout)
        );
        let slots: Vec<Arc<Slot>> = {
            let mut slots = shared.slots.lock().unwrap_or_else(PoisonError::into_inner);
            // A worker that has gone (its `Arc` is the last one here) is drained once more
            // below, then forgotten.
            let all = slots.clone();
            slots.retain(|slot| Arc::strong_count(slot) > 2);
            all
        };
        // One reading of both clocks per round places every record on the wall clock.
        let now = Instant::now();
        let wall = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        for slot in &slots {
            let dropped = {
                let mut pending = slot.pending.lock().unwrap_or_else(PoisonError::into_inner);
                std::mem::swap(&mut pending.records, &mut batch);
                std::mem::take(&mut pending.dropped)
            };
            if dropped > 0 {
                shared.dropped.fetch_add(dropped, Ordering::Relaxed);
            }
            let mut written = 0;
            for record in batch.drain(..) {
                line.clear();
                let at = wall.saturating_sub(now.saturating_duration_since(record.started));
                format_line(&mut line, options.format, at, &record, &mut clock);
                if out.write_all(&line).is_ok() {
                    written += 1;
                } else {
                    shared.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            shared.written.fetch_add(written, Ordering::Relaxed);
        }
        let flushed = out.flush();
        // One warning per failing streak (the warning goes through `tracing`, which
        // writes elsewhere or not at all; never this log, so it cannot loop).
        match (&flushed, failing) {
            (Err(e), false) => tracing::warn!(error = %e, "the access log cannot be written"),
            (Ok(()), true) => tracing::info!("the access log is written again"),
            _ => {}
        }
        failing = flushed.is_err();
        if last {
            return;
        }
    }
}

/// Appends one line, newline included, `at` after the Unix epoch. Request ids are plain
/// ASCII (the middleware admits no other) and routes are route patterns, so nothing
/// needs escaping but what JSON would (done by `serde_json` for the route, to be safe).
/// Pieces are appended as bytes (no UTF-8 check of what is known to be text), and the
/// timestamp's text up to the second is reused: this runs once a request, on the writer
/// thread, which shares the machine with the workers.
fn format_line(
    line: &mut Vec<u8>,
    format: AccessLogFormat,
    at: Duration,
    record: &Record,
    clock: &mut SecondText,
) {
    let fresh;
    let id = match &record.id {
        LoggedId::Fresh(number) => {
            fresh = crate::request_id::fresh_id_text(*number);
            &fresh[..]
        }
        LoggedId::Given { len, bytes } => &bytes[..usize::from(*len)],
    };
    let mut number = itoa::Buffer::new();
    match format {
        AccessLogFormat::Text => {
            clock.push(line, at);
            line.extend_from_slice(b"  INFO image_url::access: request request_id=\"");
            line.extend_from_slice(id);
            line.extend_from_slice(b"\" method=\"");
            line.extend_from_slice(record.method.as_bytes());
            line.extend_from_slice(b"\" route=\"");
            line.extend_from_slice(record.route.as_bytes());
            line.extend_from_slice(b"\" status=");
            line.extend_from_slice(number.format(record.status).as_bytes());
            line.extend_from_slice(b" latency_us=");
            line.extend_from_slice(number.format(record.latency_us).as_bytes());
        }
        AccessLogFormat::Json => {
            line.extend_from_slice(b"{\"timestamp\":\"");
            clock.push(line, at);
            line.extend_from_slice(
                b"\",\"level\":\"INFO\",\"fields\":{\"message\":\"request\",\"request_id\":\"",
            );
            line.extend_from_slice(id);
            line.extend_from_slice(b"\",\"method\":\"");
            line.extend_from_slice(record.method.as_bytes());
            line.extend_from_slice(b"\",\"route\":");
            line.extend_from_slice(
                serde_json::Value::from(record.route.as_ref())
                    .to_string()
                    .as_bytes(),
            );
            line.extend_from_slice(b",\"status\":");
            line.extend_from_slice(number.format(record.status).as_bytes());
            line.extend_from_slice(b",\"latency_us\":");
            line.extend_from_slice(number.format(record.latency_us).as_bytes());
            line.extend_from_slice(b"},\"target\":\"image_url::access\"}");
        }
    }
    line.push(b'\n');
}

/// Writes `2026-11-28T11:59:18.123456Z` (UTC, microseconds), keeping the text of the
/// last second.
#[derive(Default)]
struct SecondText {
    second: Option<u64>,
    text: String,
}

impl SecondText {
    /// The time `since_epoch` after the Unix epoch.
    fn push(&mut self, line: &mut Vec<u8>, since_epoch: Duration) {
        let second = since_epoch.as_secs();
        if self.second != Some(second) {
            use std::fmt::Write as _;
            let t = time::OffsetDateTime::from(std::time::UNIX_EPOCH + since_epoch);
            self.text.clear();
            let _ = write!(
                self.text,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            );
            self.second = Some(second);
        }
        line.extend_from_slice(self.text.as_bytes());
        let mut digits = [b'0'; 6];
        let mut rest = since_epoch.subsec_micros();
        for digit in digits.iter_mut().rev() {
            *digit = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        line.extend_from_slice(&digits);
        line.push(b'Z');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::Captured;
    use std::sync::Barrier;

    /// A flush interval no test waits for: lines come out when the guard is dropped.
    fn options() -> AccessLogOptions {
        AccessLogOptions {
            flush_interval: Duration::from_secs(60),
            ..AccessLogOptions::default()
        }
    }

    fn record(worker: &WorkerAccessLog, status: u16, id: &str) {
        worker.record(
            Instant::now(),
            Duration::from_micros(42),
            "GET",
            Cow::Borrowed("/api/v1/images/{key}/proxy"),
            status,
            LoggedId::given(id.as_bytes()),
        );
    }

    #[test]
    fn every_record_of_every_worker_is_written_when_the_writer_stops() {
        let out = Captured::default();
        let (log, writer) = AccessLog::start(out.clone(), options()).unwrap();
        let (a, b) = (log.worker(), log.worker());
        record(&a, 302, "req-a");
        record(&b, 404, "req-b");
        drop(a); // a worker that has gone still has its records written
        drop(writer);
        let lines = out.lines();
        assert_eq!(lines.len(), 2, "{lines:?}");
        let a = lines
            .iter()
            .find(|l| l.contains("request_id=\"req-a\""))
            .unwrap();
        assert!(
            a.ends_with(
                " INFO image_url::access: request request_id=\"req-a\" method=\"GET\" \
             route=\"/api/v1/images/{key}/proxy\" status=302 latency_us=42"
            ),
            "{a}"
        );
        // `2026-11-28T11:59:18.123456Z`
        let stamp = a.split_whitespace().next().unwrap();
        assert_eq!(stamp.len(), 27, "{stamp}");
        assert!(stamp.ends_with('Z') && &stamp[10..11] == "T", "{stamp}");
        assert!(lines.iter().any(|l| l.contains("status=404")));
        assert_eq!((log.written(), log.dropped()), (2, 0));
    }

    #[test]
    fn timestamps_are_utc_with_microseconds_across_seconds() {
        let mut clock = SecondText::default();
        let mut line = Vec::new();
        let at = Duration::new(1_000_000_000, 42_000);
        for t in [
            at,
            at + Duration::from_micros(5),
            at + Duration::from_secs(1),
        ] {
            clock.push(&mut line, t);
            line.push(b' ');
        }
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "2001-09-09T01:46:40.000042Z 2001-09-09T01:46:40.000047Z 2001-09-09T01:46:41.000042Z "
        );
    }

    #[test]
    fn json_lines_parse() {
        let out = Captured::default();
        let (log, writer) = AccessLog::start(
            out.clone(),
            AccessLogOptions {
                format: AccessLogFormat::Json,
                ..options()
            },
        )
        .unwrap();
        record(&log.worker(), 302, "req-json");
        drop(writer);
        let lines = out.lines();
        let value: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(value["target"], "image_url::access");
        assert_eq!(value["fields"]["request_id"], "req-json");
        assert_eq!(value["fields"]["route"], "/api/v1/images/{key}/proxy");
        assert_eq!(value["fields"]["status"], 302);
        assert_eq!(value["fields"]["latency_us"], 42);
    }

    #[test]
    fn sampling_keeps_the_share_of_successes_and_every_error() {
        let out = Captured::default();
        let (log, writer) = AccessLog::start(
            out.clone(),
            AccessLogOptions {
                sample_rate: 0.25,
                ..options()
            },
        )
        .unwrap();
        let worker = log.worker();
        for i in 0..100 {
            record(&worker, 302, &format!("ok-{i}"));
            record(&worker, 503, &format!("err-{i}"));
        }
        drop(writer);
        let lines = out.lines();
        assert_eq!(
            lines.iter().filter(|l| l.contains("status=302")).count(),
            25
        );
        assert_eq!(
            lines.iter().filter(|l| l.contains("status=503")).count(),
            100
        );
    }

    #[test]
    fn rates_outside_zero_to_one_are_refused() {
        for rate in [-0.1, 1.5, f64::NAN] {
            let refused = AccessLog::start(
                Captured::default(),
                AccessLogOptions {
                    sample_rate: rate,
                    ..options()
                },
            );
            assert!(
                matches!(refused, Err(AccessLogError::SampleRate(_))),
                "{rate}"
            );
        }
    }

    /// An output that blocks until released, as a stalled pipe or disk does.
    struct Stalled {
        entered: Arc<Barrier>,
        release: Arc<Barrier>,
        first: bool,
    }

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if std::mem::take(&mut self.first) {
                self.entered.wait();
                self.release.wait();
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// With the writer stuck in a write, a worker goes on recording without waiting:
    /// what its buffer cannot hold is dropped and counted.
    #[test]
    fn a_stalled_output_never_blocks_a_worker() {
        let (entered, release) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
        let (log, writer) = AccessLog::start(
            Stalled {
                entered: Arc::clone(&entered),
                release: Arc::clone(&release),
                first: true,
            },
            AccessLogOptions {
                flush_interval: Duration::from_millis(1),
                max_pending_per_worker: 10,
                ..AccessLogOptions::default()
            },
        )
        .unwrap();
        let worker = log.worker();
        // The writer takes this record and blocks writing it.
        record(&worker, 302, "first");
        entered.wait();
        // The writer is stuck: these return at once, and all but 10 are dropped.
        for i in 0..100 {
            record(&worker, 302, &format!("second-{i}"));
        }
        release.wait();
        drop(writer);
        assert_eq!(log.dropped(), 90);
        assert_eq!(log.written(), 11);
    }
}
