//! Logging set-up and the shutdown signal, shared by the long-running commands.

/// Structured logs to stderr; `RUST_LOG` filters (default `info`), `json` switches to JSON
/// lines, colours only when stderr is a terminal.
///
/// Lines are formatted on the thread that logs but written by a background thread: an
/// access-log line per request must not make a server worker wait on a pipe or a disk.
/// If the writer falls more than 128 000 lines behind, new lines are dropped rather than
/// stalling requests. Keep the returned guard until exit: dropping it flushes what is
/// buffered.
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
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    guard
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
