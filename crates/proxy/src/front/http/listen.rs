//! Accepting client connections and serving HTTP/1.1 on them. Each connection is handed to a
//! worker thread (see [`crate::runtime::Workers`]) and served there until it closes; on shutdown
//! every connection finishes its in-flight requests and closes. Timeouts and the connection
//! limit are [`crate::front::conn`]'s.

use super::HttpFront;
use crate::front::conn::{self, Slots};
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::task::TaskTracker;

/// Accept connections until the front is cancelled. Connection tasks are tracked by `conns`.
pub(super) async fn accept(front: Arc<HttpFront>, listener: TcpListener, conns: TaskTracker) {
    let cancel = front.cancel.clone();
    let slots = Slots::new(front.config.conn.max_connections);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = cancel.cancelled() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(c) => c,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors and the like: wait a little instead of spinning.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Over the limit: close it now (dropping the socket) rather than hold it.
        let Some(slot) = slots.take("http") else {
            continue;
        };
        // Small writes (SSE events, short JSON answers) must not wait for the client's delayed
        // ACK: without TCP_NODELAY, Nagle holds them up to 40 ms.
        let _ = tcp.set_nodelay(true);
        // Leave this runtime's reactor: the worker registers the socket with its own, so that
        // the connection's readiness wakes its task on its own thread.
        let std = match tcp.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "could not hand a connection to a worker");
                continue;
            }
        };
        let f = front.clone();
        front.workers.spawn(&conns, serve(f, std, peer, slot));
    }
}

fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    )
}

/// Serve one connection on the current (worker) thread.
async fn serve(
    front: Arc<HttpFront>,
    std: std::net::TcpStream,
    peer: SocketAddr,
    slot: OwnedSemaphorePermit,
) {
    let tcp = match TcpStream::from_std(std) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "could not register a connection");
            return;
        }
    };
    let limits = front.config.conn;
    let cancel = front.cancel.clone();
    conn::serve(tcp, peer, limits, cancel, slot, move |req| {
        super::dispatch(front.clone(), req)
    })
    .await;
}
