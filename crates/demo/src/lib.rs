//! The built-in demo MCP server.
//!
//! A small but complete MCP server built on the official Rust SDK (`rmcp`),
//! used by the quickstart, the proxy's tests and the benchmarks. It offers:
//!
//! * tools: `echo`, `add`, `slow` (progress + cancellation), `sample`
//!   (`sampling/createMessage` round trip), `elicit` (`elicitation/create`
//!   round trip), `log` (`notifications/message`, honours `logging/setLevel`)
//!   and `increment` (bumps a counter and sends `notifications/resources/updated`
//!   to subscribers of `demo://counter`);
//! * resources: `demo://readme`, `demo://counter` and the template
//!   `demo://items/{id}`, with `resources/subscribe` / `resources/unsubscribe`;
//! * prompts: `greeting` and `code_review`.
//!
//! Two transports are provided: [`serve_stdio`] (newline-delimited JSON-RPC on
//! stdin/stdout) and [`serve_http`] (Streamable HTTP at `/mcp`, with stateful
//! `Mcp-Session-Id` sessions and SSE responses). [`serve_io`] serves any byte
//! stream pair, which is how the tests drive the server in-process.
//!
//! The server speaks the session-based MCP revisions (those with an
//! `initialize` handshake, up to `2025-11-25`): sampling, elicitation,
//! logging and `resources/subscribe` are features of those revisions.
//!
//! Nothing here writes to stdout except the MCP transport itself; diagnostics
//! go through `tracing`, and installing a subscriber (writing to stderr) is up
//! to the binary.

mod server;
mod stdio;

use std::sync::Arc;

use rmcp::{
    ServiceExt,
    service::{QuitReason, ServerInitializeError},
    transport::{
        StreamableHttpServerConfig, StreamableHttpService,
        streamable_http_server::session::local::LocalSessionManager,
    },
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

pub use server::{DemoServer, SharedState};

/// The HTTP path the Streamable HTTP endpoint is served at.
pub const HTTP_PATH: &str = "/mcp";

/// Errors returned by the demo server's entry points.
///
/// The underlying cause is available through [`std::error::Error::source`]
/// (and is printed by `anyhow`'s `{:#}` / `{:?}`).
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The MCP `initialize` handshake did not complete.
    #[error("MCP initialization with the client failed")]
    Initialize(#[source] Box<ServerInitializeError>),
    /// The task driving the MCP session panicked or was aborted.
    #[error("the MCP session task failed")]
    SessionTask(#[source] tokio::task::JoinError),
    /// Standard input/output could not be set up for the stdio transport.
    #[error("failed to set up stdin/stdout for the stdio transport")]
    Stdio(#[source] std::io::Error),
    /// The HTTP server failed while accepting or serving connections.
    #[error("the Streamable HTTP server failed")]
    Http(#[source] std::io::Error),
}

/// Serve MCP over our stdin/stdout until stdin closes or `cancel` fires.
///
/// Never writes anything but MCP to stdout (diagnostics go through `tracing`).
/// A client that closes stdin before finishing the `initialize` handshake is
/// treated as a normal end of input, not an error. After `cancel` fires this
/// returns promptly even if stdin stays open: no blocking read of stdin is
/// left on Tokio's blocking pool to hold up runtime shutdown.
pub async fn serve_stdio(cancel: CancellationToken) -> Result<(), DemoError> {
    let (stdin, stdout) = stdio::stdio().map_err(DemoError::Stdio)?;
    serve_io(stdin, stdout, cancel).await
}

/// Serve one MCP session over an arbitrary byte-stream pair
/// (newline-delimited JSON-RPC, like stdio) until the input ends or `cancel`
/// fires.
///
/// The session gets its own [`SharedState`] (counter and subscriber registry);
/// use [`serve_io_with_state`] to share one between several sessions.
pub async fn serve_io<R, W>(read: R, write: W, cancel: CancellationToken) -> Result<(), DemoError>
where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + 'static,
{
    serve_io_with_state(read, write, SharedState::new(), cancel).await
}

/// Like [`serve_io`], sharing `state` (the counter and the subscriber
/// registry) with other sessions.
pub async fn serve_io_with_state<R, W>(
    read: R,
    write: W,
    state: Arc<SharedState>,
    cancel: CancellationToken,
) -> Result<(), DemoError>
where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + 'static,
{
    let server = DemoServer::new(state);
    let running = match server.serve_with_ct((read, write), cancel).await {
        Ok(running) => running,
        Err(ServerInitializeError::Cancelled) => {
            tracing::debug!("cancelled before the MCP handshake completed");
            return Ok(());
        }
        Err(ServerInitializeError::ConnectionClosed(context)) => {
            tracing::info!(%context, "input closed before the MCP handshake completed");
            return Ok(());
        }
        Err(error) => return Err(DemoError::Initialize(Box::new(error))),
    };
    match running.waiting().await {
        Ok(QuitReason::Cancelled) => {
            tracing::debug!("MCP session cancelled");
            Ok(())
        }
        Ok(QuitReason::Closed) => {
            tracing::debug!("MCP session closed by the client");
            Ok(())
        }
        Ok(QuitReason::JoinError(error)) | Err(error) => Err(DemoError::SessionTask(error)),
        Ok(reason) => {
            tracing::debug!(?reason, "MCP session ended");
            Ok(())
        }
    }
}

/// Serve Streamable HTTP at path [`HTTP_PATH`] (`/mcp`) on an already-bound
/// listener until `cancel` fires, then shut down gracefully.
///
/// Sessions are stateful (`Mcp-Session-Id`) and responses are SSE streams.
/// On a loopback listener only loopback `Host` headers (`localhost`,
/// `127.0.0.1`, `::1`, any port) are accepted, which protects a locally running
/// server from DNS rebinding; on any other address (`0.0.0.0` in a container,
/// reached as `http://demo:9000/mcp`) every name is served, as the proxy's own
/// front does. All sessions share one counter, and `increment` notifies
/// subscribers in every session.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    cancel: CancellationToken,
) -> Result<(), DemoError> {
    let state = SharedState::new();
    // A child token: cancelling it ends every session (and its SSE streams) so
    // the graceful shutdown below does not wait on long-lived GET streams.
    let sessions_ct = cancel.child_token();
    let config = StreamableHttpServerConfig::default().with_cancellation_token(sessions_ct.clone());
    // An address we cannot read is treated as loopback: the check stays on.
    let config = match listener.local_addr() {
        Ok(addr) if !addr.ip().is_loopback() => config.disable_allowed_hosts(),
        _ => config.with_allowed_hosts(["localhost", "127.0.0.1", "::1"]),
    };
    let service = StreamableHttpService::new(
        move || Ok(DemoServer::new(state.clone())),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    // `/health` answers 200 while the server runs (what a gateway's `check = "http"` asks).
    let app = axum::Router::new()
        .route_service(HTTP_PATH, service)
        .route("/health", axum::routing::get(|| async { "ok\n" }));
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, path = HTTP_PATH, "demo MCP server listening (Streamable HTTP)");
    }
    let shutdown = async move {
        cancel.cancelled().await;
        sessions_ct.cancel();
    };
    // Without TCP_NODELAY, Nagle holds small SSE writes for the peer's delayed ACK (up to 40 ms).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(DemoError::Http)
}
