//! The forward-proxy modes, each a composition of a front, sessions, the pipeline and upstreams.
//!
//! * `forward stdio`: stdio front → one session → stdio child or HTTP upstream.
//! * `forward http`: HTTP front → one session per client → an upstream per session, chosen per
//!   request (named target path, absolute-form URI, or the default target).

use crate::error::ProxyError;
use crate::front::http::{HttpFront, HttpFrontConfig};
use crate::front::stdio;
use crate::pipeline::Pipeline;
use crate::runtime::drain;
use crate::session::{Session, mint_session_id};
use crate::upstream::{HttpClient, UpstreamCtx, UpstreamOptions, UpstreamSpec};
use shadowcat_store::SessionStore;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Connect timeout for HTTP upstreams.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long stopping the worker threads may take once every task is drained.
pub const STOP_WORKERS: Duration = Duration::from_secs(2);

/// Settings of `forward stdio`.
#[derive(Clone)]
pub struct StdioForward {
    /// The server to relay to.
    pub upstream: UpstreamSpec,
    /// Largest line accepted from the client.
    pub max_line: usize,
    /// Upstream knobs.
    pub options: UpstreamOptions,
    /// Hooks.
    pub pipeline: Pipeline,
}

/// Relay our stdin/stdout to the upstream until the client or the server ends.
/// Returns the exit code for the process (the child's, for stdio upstreams).
pub async fn forward_stdio(
    cfg: StdioForward,
    shutdown: CancellationToken,
) -> Result<i32, ProxyError> {
    let tracker = TaskTracker::new();
    let ctx = UpstreamCtx {
        session: mint_session_id(),
        cancel: shutdown.child_token(),
        tracker: tracker.clone(),
        http: HttpClient::new(CONNECT_TIMEOUT)?,
        options: cfg.options.clone(),
        guard: None,
    };
    let grace = cfg.options.shutdown_grace;
    let (session, events) =
        Session::connect(ctx.session.clone(), cfg.upstream, cfg.pipeline, ctx).await?;
    let span = tracing::info_span!("session", id = %session.id());
    let code = tracing::Instrument::instrument(
        stdio::run(
            session,
            events,
            tokio::io::stdin(),
            tokio::io::stdout(),
            cfg.max_line,
            shutdown,
        ),
        span,
    )
    .await;
    drain(&tracker, grace * 3).await;
    Ok(code)
}

/// Serve the HTTP front on `listener` until `shutdown` fires, then shut down gracefully.
pub async fn forward_http(
    listener: TcpListener,
    config: HttpFrontConfig,
    pipeline: Pipeline,
    store: Arc<dyn SessionStore>,
    shutdown: CancellationToken,
    ready: impl FnOnce(),
) -> Result<(), ProxyError> {
    let tracker = TaskTracker::new();
    let deadline = config.shutdown_deadline + config.upstream.shutdown_grace * 3;
    let http = HttpClient::new(CONNECT_TIMEOUT)?;
    let front = HttpFront::new(config, pipeline, http, store, shutdown, tracker.clone())?;
    let result = front.clone().serve(listener, ready).await;
    drain(&tracker, deadline).await;
    front.workers().stop(STOP_WORKERS).await;
    result.map_err(|e| ProxyError::UpstreamConnect(format!("HTTP front failed: {e}")))
}
