//! Logging set-up and the shutdown signal, shared by the long-running commands.

/// Structured logs to stderr; `RUST_LOG` filters (default `info`), `json` switches to JSON
/// lines, colours only when stderr is a terminal.
///
/// Lines are formatted on the thread that logs but written by a background thread: an
/// access-log line per request must not make a server worker wait on a pipe or a disk.
/// If the writer falls more than 128 000 lines behind, new lines are dropped rather than
/// stalling requests. Keep the returned guard until exit: dropping it flushes what is
/// buffered.
///
/// A line written while a request is handled carries its id (`request_id`), read from
/// the request context rather than from a per-request span, which would cost every
/// request a few thousand instructions to serve the few that log: the server runs
/// with `ApiConfig::request_spans` off.
///
/// The access log is not written here but by [`proxy_http::AccessLog`].
#[must_use = "dropping the guard stops the log writer"]
pub fn init(json: bool) -> tracing_appender::non_blocking::WorkerGuard {
    use std::io::IsTerminal;
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    let _ = if json {
        builder
            .json()
            .map_event_format(|format| WithRequestId { format, json: true })
            .try_init()
    } else {
        builder
            .map_event_format(|format| WithRequestId {
                format,
                json: false,
            })
            .try_init()
    };
    guard
}

/// An event format that adds the current request's id to the line `format` makes: as a
/// last field of a text line, as a top-level `request_id` of a JSON one.
struct WithRequestId<F> {
    format: F,
    json: bool,
}

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for WithRequestId<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        proxy_http::request_id::with_current_request_id(|id| {
            let Some(id) = id else {
                return self.format.format_event(ctx, writer, event);
            };
            // Formatted aside to add the field before the line ends (without colours:
            // only lines written during a request, and only on a terminal).
            let mut line = String::new();
            self.format.format_event(
                ctx,
                tracing_subscriber::fmt::format::Writer::new(&mut line),
                event,
            )?;
            let line = line.trim_end_matches('\n');
            // Ids are plain ASCII (letters, digits, `-_.`): nothing to escape.
            match line.strip_suffix('}') {
                Some(object) if self.json => writeln!(writer, "{object},\"request_id\":\"{id}\"}}"),
                _ => writeln!(writer, "{line} request_id=\"{id}\""),
            }
        })
    }
}

/// Resolves on Ctrl-C or SIGTERM: who stops the servers is whoever awaits this.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
