//! Graceful shutdown: SIGINT/SIGTERM cancel a token that every task watches; a second signal exits at once.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How long a binary waits, after its work has returned, for blocking jobs still running.
pub const BLOCKING_GRACE: Duration = Duration::from_secs(2);

/// Runs `main` on a multi-threaded runtime, then gives blocking jobs at most [`BLOCKING_GRACE`]
/// before the process exits. A training job has no cancellation point and can run for minutes;
/// its request's offset was never stored, so it is replayed after a restart, and waiting for it
/// (what dropping a runtime does) would keep a drained service alive until it is killed. Registry
/// versions are written to a temp dir and renamed, so a job cut off at exit leaves nothing half-made;
/// a GPU job may still be inside the driver then, which the process exit tears down with it.
///
/// # Panics
/// When the runtime cannot be built (no threads can be spawned).
pub fn block_on_then_exit<T>(main: impl std::future::Future<Output = T>) -> T {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime can be built");
    let result = runtime.block_on(main);
    runtime.shutdown_timeout(BLOCKING_GRACE);
    result
}

/// A token cancelled by the first SIGINT or SIGTERM. A second signal aborts the process with status 130,
/// so an operator is never stuck behind a drain that hangs.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested; draining (signal again to exit immediately)");
        trigger.cancel();
        wait_for_signal().await;
        tracing::warn!("second signal: exiting without draining");
        std::process::exit(130);
    });
    token
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C will stop the service");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
