//! `shadowcat demo-server`.

use crate::args::DemoArgs;
use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub async fn run(args: DemoArgs) -> anyhow::Result<i32> {
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    shadowcat_proxy::runtime::cancel_on_signals(cancel.clone(), &tracker)?;
    match args.http {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            let local = listener.local_addr()?;
            tracing::info!("demo server listening on http://{local}/mcp");
            // Machine-readable line for scripts and tests that listen on port 0.
            eprintln!("shadowcat: listening on http://{local}");
            shadowcat_demo::serve_http(listener, cancel.clone()).await?;
        }
        None => shadowcat_demo::serve_stdio(cancel.clone()).await?,
    }
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
    Ok(0)
}
