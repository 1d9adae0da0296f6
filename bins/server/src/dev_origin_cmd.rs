//! `image-url-server dev-origin`: a local COS-compatible bucket.

use dev_origin::{DevOrigin, OriginConfig};

use crate::cli::DevOriginArgs;
use crate::presign::credentials_from_env;

/// Serves until Ctrl-C or SIGTERM, then lets in-flight requests finish.
pub fn run(args: &DevOriginArgs) -> Result<(), String> {
    let _log_writer = crate::logging::init(false);
    let credentials = credentials_from_env(&|name| std::env::var(name).ok())?;
    let mut config = OriginConfig::new(&args.dir, credentials);
    config.bucket = args.bucket.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async {
        let (addr, server) = DevOrigin::server(config, args.listen)
            .map_err(|e| format!("--listen {}: {e}", args.listen))?;
        tracing::info!(%addr, dir = %args.dir.display(), "dev origin serving; Ctrl-C to stop");
        let handle = server.handle();
        let server = tokio::spawn(server);
        crate::logging::shutdown_signal().await;
        tracing::info!("stopping: letting in-flight requests finish");
        handle.stop(true).await;
        server
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    })
}
