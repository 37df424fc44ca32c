//! The stdio front: our own stdin/stdout, one client, one session. Used by `forward stdio`.
//!
//! Client EOF → the upstream is shut down (child: close stdin → wait → SIGTERM → SIGKILL) and the
//! exit code of the child becomes ours. Upstream gone → every in-flight request gets a JSON-RPC
//! error, then we exit. A request that could not be sent (its id is still in flight, `-32600`;
//! the upstream refused it) is answered with a JSON-RPC error carrying its id.

use crate::session::pump::{self, Deliver, End};
use crate::session::{Sent, Session};
use crate::upstream::{UpstreamEvent, Via};
use bytes::Bytes;
use futures_util::StreamExt;
use shadowcat_proto::error::{INVALID_REQUEST, error_frame};
use shadowcat_proto::lines::{Line, LineCodec, single_line};
use shadowcat_proto::{Frame, FrameError, FrameKind, Message};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Relay between a line-oriented client (`input`/`output`) and a session until the upstream ends.
/// Returns the exit code to use (the child's for stdio upstreams, 0 otherwise).
pub async fn run<R, W>(
    session: Arc<Session>,
    mut events: mpsc::Receiver<UpstreamEvent>,
    input: R,
    output: W,
    max_line: usize,
    shutdown: CancellationToken,
) -> i32
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let tracker = TaskTracker::new();
    let (out_tx, out_rx) = mpsc::channel::<Bytes>(64);
    let writer = tracker.spawn(write_output(output, out_rx));
    let reader_done = CancellationToken::new();
    tracker.spawn(read_input(
        session.clone(),
        input,
        out_tx.clone(),
        max_line,
        reader_done.clone(),
    ));

    let mut out = ToOutput {
        session: &session,
        out: out_tx.clone(),
        reader_done,
        shutdown,
        stopping: false,
        tracker: &tracker,
    };
    let code = match pump::pump(&session, &mut events, &mut out).await {
        End::Closed { exit_code, .. } => exit_code.unwrap_or(0),
        End::Client(_) | End::Cancelled => 0,
    };
    drop(out);
    // Teardown: the upstream is stopped (a no-op once it has closed), the record ended and the
    // session's place in its host given back.
    session.shutdown().await;
    drop(out_tx);
    tracker.close();
    let _ = writer.await;
    code
}

/// The stdio front's side of the pump: frames through the pipeline onto stdout. Once the client
/// closes stdin (or shutdown is asked for), the upstream is shut down and the pump goes on until
/// it closes, so that what it still says reaches the client.
struct ToOutput<'a> {
    session: &'a Arc<Session>,
    out: mpsc::Sender<Bytes>,
    reader_done: CancellationToken,
    shutdown: CancellationToken,
    stopping: bool,
    tracker: &'a TaskTracker,
}

impl Deliver for ToOutput<'_> {
    async fn frames(&mut self, burst: Vec<(Frame, Via)>) -> bool {
        for (frame, _) in burst {
            if let Some(f) = self.session.from_server(frame).await
                && self.out.send(f.into_raw()).await.is_err()
            {
                tracing::info!("client output closed");
            }
        }
        true
    }

    async fn closed(&mut self, errors: Vec<Frame>) {
        for err in errors {
            let _ = self.out.send(err.into_raw()).await;
        }
    }

    /// The child's exit code is the proxy's: wait for it even once the session is shut down.
    fn until_closed(&self) -> bool {
        true
    }

    async fn wait(&mut self) {
        if self.stopping {
            return std::future::pending().await;
        }
        tokio::select! {
            _ = self.reader_done.cancelled() => {}
            _ = self.shutdown.cancelled() => {}
        }
    }

    async fn woke(&mut self) -> Option<String> {
        if self.reader_done.is_cancelled() {
            tracing::info!("client closed stdin; shutting the upstream down");
        } else {
            tracing::info!("shutdown requested; stopping the upstream");
        }
        self.stopping = true;
        let s = self.session.clone();
        self.tracker.spawn(async move { s.shutdown().await });
        None
    }
}

async fn write_output<W: AsyncWrite + Unpin>(output: W, mut rx: mpsc::Receiver<Bytes>) {
    let mut w = BufWriter::new(output);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(m) = next {
            if w.write_all(&single_line(&m)).await.is_err() || w.write_all(b"\n").await.is_err() {
                return;
            }
            next = rx.try_recv().ok();
        }
        if w.flush().await.is_err() {
            return;
        }
    }
    let _ = w.flush().await;
}

async fn read_input<R: AsyncRead + Unpin>(
    session: Arc<Session>,
    input: R,
    out: mpsc::Sender<Bytes>,
    max_line: usize,
    done: CancellationToken,
) {
    let mut lines = FramedRead::new(input, LineCodec::new(max_line));
    let cancel = session.cancel_token().clone();
    loop {
        let item = tokio::select! {
            i = lines.next() => i,
            _ = cancel.cancelled() => break,
        };
        let line = match item {
            Some(Ok(Line::Line(l))) => l,
            Some(Ok(Line::TooLong { seen })) => {
                let e = FrameError::TooLarge {
                    size: seen,
                    limit: max_line,
                };
                let _ = out
                    .send(error_frame(e.id(), e.code(), &e.to_string()).into_raw())
                    .await;
                continue;
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "reading stdin failed");
                break;
            }
            None => break,
        };
        for frame in parse_client_line(&session, line, &out).await {
            let initialized = frame.method() == Some("notifications/initialized");
            let request = frame
                .id()
                .cloned()
                .filter(|_| frame.kind() == FrameKind::Request);
            match session.from_client(frame).await {
                Ok(Sent::Forwarded) => {
                    if initialized {
                        session.listen_in_background();
                    }
                }
                Ok(Sent::Replied(f)) => {
                    let _ = out.send(f.into_raw()).await;
                }
                Ok(Sent::Dropped) => {}
                // A request that was not sent (its id is still in flight, the upstream could
                // not take it) is answered here: the client never waits for nothing.
                Err(e) => match request {
                    Some(id) => {
                        tracing::debug!(error = %e, "client request refused");
                        let err = error_frame(Some(&id), e.jsonrpc_code(), &e.to_string());
                        let _ = out.send(err.into_raw()).await;
                    }
                    None => tracing::warn!(error = %e, "could not forward a client message"),
                },
            }
        }
    }
    done.cancel();
}

/// Parse a client line; invalid input is answered with a JSON-RPC error on stdout.
async fn parse_client_line(
    session: &Session,
    line: Bytes,
    out: &mpsc::Sender<Bytes>,
) -> Vec<Frame> {
    match Message::parse(line) {
        Ok(Message::Single(f)) => vec![f],
        Ok(Message::Batch(frames)) => match session.known_version() {
            Some(v) if !v.allows_batches() => {
                let msg = format!("JSON-RPC batches are not allowed in protocol version {v}");
                let _ = out
                    .send(error_frame(None, INVALID_REQUEST, &msg).into_raw())
                    .await;
                vec![]
            }
            _ => frames,
        },
        Err(e) => {
            let _ = out
                .send(error_frame(e.id(), e.code(), &e.to_string()).into_raw())
                .await;
            vec![]
        }
    }
}
