//! Process-level runtime pieces: turning SIGINT/SIGTERM into a cancellation, waiting for
//! tracked tasks within a deadline, and the worker threads client connections run on.

mod workers;

pub use workers::{Workers, default_workers};

use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Cancel `token` on the first SIGINT or SIGTERM. The watcher task is tracked by `tracker`.
pub fn cancel_on_signals(token: CancellationToken, tracker: &TaskTracker) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let t = token.clone();
    tracker.spawn(async move {
        tokio::select! {
            _ = int.recv() => tracing::info!("SIGINT received; shutting down"),
            _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
            _ = t.cancelled() => return,
        }
        t.cancel();
    });
    Ok(())
}

/// How long stopping the worker threads may take once every task is drained.
pub const STOP_WORKERS: Duration = Duration::from_secs(2);

/// Close `tracker` and wait for its tasks, at most `deadline`. Returns false on timeout.
pub async fn drain(tracker: &TaskTracker, deadline: Duration) -> bool {
    tracker.close();
    let ok = tokio::time::timeout(deadline, tracker.wait()).await.is_ok();
    if !ok {
        tracing::warn!(
            remaining = tracker.len(),
            "tasks still running after the shutdown deadline"
        );
    }
    ok
}
