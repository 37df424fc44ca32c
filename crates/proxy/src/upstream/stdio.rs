//! A child process speaking MCP over newline-delimited stdin/stdout. One child per session.

use super::{UpstreamCtx, UpstreamEvent, Via, process};
use crate::error::ProxyError;
use bytes::Bytes;
use futures_util::StreamExt;
use shadowcat_proto::lines::{Line, LineCodec, single_line};
use shadowcat_proto::{Frame, Message};
use tokio::io::AsyncWriteExt;
use tokio::process::{ChildStderr, ChildStdin, ChildStdout};
use tokio::sync::{mpsc, watch};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Longest stderr line kept in the log; longer lines are cut.
const MAX_STDERR_LINE: usize = 64 * 1024;
/// First sizes of the per-child buffers (they grow with the messages): an idle session keeps
/// them all, so they start small rather than at the 8 KiB defaults.
const STDOUT_BUFFER: usize = 2048;
const STDERR_BUFFER: usize = 256;

/// The stdio upstream of one session.
pub struct StdioUpstream {
    stdin: mpsc::Sender<Bytes>,
    stop: CancellationToken,
    exited: watch::Receiver<Option<i32>>,
    pid: Option<u32>,
}

impl StdioUpstream {
    /// Start the child and its I/O tasks (its log span inside the current one: the session's).
    pub(super) fn spawn(
        command: &str,
        args: &[String],
        env: &process::ChildEnv,
        ctx: UpstreamCtx,
        events: mpsc::Sender<UpstreamEvent>,
    ) -> Result<Self, ProxyError> {
        Self::start(command, args, env, ctx, events, false)
    }

    /// [`StdioUpstream::spawn`] with a log span of its own (a shared child outlives the request
    /// that started it).
    pub(super) fn spawn_root(
        command: &str,
        args: &[String],
        env: &process::ChildEnv,
        ctx: UpstreamCtx,
        events: mpsc::Sender<UpstreamEvent>,
    ) -> Result<Self, ProxyError> {
        Self::start(command, args, env, ctx, events, true)
    }

    fn start(
        command: &str,
        args: &[String],
        env: &process::ChildEnv,
        ctx: UpstreamCtx,
        events: mpsc::Sender<UpstreamEvent>,
        root: bool,
    ) -> Result<Self, ProxyError> {
        let mut child = process::spawn(command, args, env).map_err(|e| {
            let program = shadowcat_tape::redact::command_label(command);
            ProxyError::UpstreamConnect(format!("cannot start `{program}`: {e}"))
        })?;
        let pid = child.id();
        // The pid as a plain number (no `Some(…)` in log lines); a child that is already gone
        // has none.
        let span = if root {
            tracing::info_span!(parent: None, "upstream", session = %ctx.session, pid = tracing::field::Empty)
        } else {
            tracing::info_span!("upstream", session = %ctx.session, pid = tracing::field::Empty)
        };
        if let Some(pid) = pid {
            span.record("pid", pid);
        }
        // The program only: arguments may carry secrets (`--token X`).
        let program = shadowcat_tape::redact::command_label(command);
        tracing::info!(parent: &span, %program, args = args.len(), "spawned stdio upstream");
        let (stdin_tx, stdin_rx) = mpsc::channel(ctx.options.channel_capacity);
        let stop = ctx.cancel.child_token();
        let (exit_tx, exit_rx) = watch::channel(None);

        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let t = &ctx.tracker;
        t.spawn(write_stdin(stdin, stdin_rx, stop.clone()).instrument(span.clone()));
        let reader = t.spawn(
            read_stdout(stdout, events.clone(), ctx.options.max_message).instrument(span.clone()),
        );
        t.spawn(read_stderr(stderr).instrument(span.clone()));
        let grace = ctx.options.shutdown_grace;
        let stop2 = stop.clone();
        t.spawn(
            async move {
                let (status, reason) = tokio::select! {
                    s = child.wait() => {
                        process::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
                        (s.ok(), "the server process exited")
                    }
                    _ = stop2.cancelled() => {
                        (process::terminate(&mut child, grace).await, "the session ended")
                    }
                };
                let code = status.as_ref().map(process::exit_code);
                // Deliver every frame the child wrote before it exited, then report the close.
                if tokio::time::timeout(grace, reader).await.is_err() {
                    tracing::warn!("child stdout still open after exit (a grandchild holds it?)");
                }
                match code {
                    Some(c) => tracing::info!(exit_code = c, "stdio upstream ended"),
                    None => tracing::info!("stdio upstream ended (no exit status)"),
                }
                let reason = match code {
                    Some(c) => format!("{reason} (exit code {c})"),
                    None => reason.to_string(),
                };
                let _ = events
                    .send(UpstreamEvent::Closed {
                        reason,
                        exit_code: code,
                    })
                    .await;
                let _ = exit_tx.send(Some(code.unwrap_or(1)));
            }
            .instrument(span),
        );
        Ok(StdioUpstream {
            stdin: stdin_tx,
            stop,
            exited: exit_rx,
            pid,
        })
    }

    /// Queue a frame for the child's stdin (waits when the queue is full: backpressure).
    pub(super) async fn send(&self, frame: Frame) -> Result<(), ProxyError> {
        self.stdin
            .send(frame.into_raw())
            .await
            .map_err(|_| ProxyError::UpstreamClosed("the server process has exited".into()))
    }

    /// Queue raw bytes for the child's stdin without waiting: handed back when the queue is
    /// full (dropped when the child is gone).
    pub(super) fn try_queue(&self, raw: Bytes) -> Option<Bytes> {
        match self.stdin.try_send(raw) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => None,
            Err(mpsc::error::TrySendError::Full(raw)) => Some(raw),
        }
    }

    /// Queue raw bytes for the child's stdin, waiting for room (dropped when the child is gone).
    pub(super) async fn send_raw(&self, raw: Bytes) {
        let _ = self.stdin.send(raw).await;
    }

    /// Close stdin, wait, SIGTERM, wait, SIGKILL; resolves when the child is gone.
    pub(super) async fn shutdown(&self) {
        self.stop.cancel();
        let mut rx = self.exited.clone();
        let _ = rx.wait_for(|v| v.is_some()).await;
    }

    /// Whether the child has exited (and its output was delivered).
    pub(super) fn has_exited(&self) -> bool {
        self.exited.borrow().is_some()
    }

    /// The child's process id (also its process group id).
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }
}

async fn write_stdin(stdin: ChildStdin, mut rx: mpsc::Receiver<Bytes>, stop: CancellationToken) {
    let mut w = stdin;
    loop {
        let msg = tokio::select! {
            m = rx.recv() => m,
            _ = stop.cancelled() => {
                // Deliver what the client already sent, then close stdin.
                let mut rest = Vec::new();
                while let Ok(m) = rx.try_recv() {
                    push_line(&mut rest, &m);
                }
                let _ = w.write_all(&rest).await;
                break;
            }
        };
        let Some(m) = msg else { break };
        // What is already queued goes out in the same write. The buffer lives for one write
        // only: an idle session keeps none.
        let mut batch = Vec::with_capacity(m.len() + 1);
        push_line(&mut batch, &m);
        while let Ok(m) = rx.try_recv() {
            push_line(&mut batch, &m);
        }
        if w.write_all(&batch).await.is_err() {
            break;
        }
    }
    // Dropping the pipe closes the child's stdin.
}

fn push_line(out: &mut Vec<u8>, raw: &Bytes) {
    out.extend_from_slice(&single_line(raw));
    out.push(b'\n');
}

async fn read_stdout(stdout: ChildStdout, events: mpsc::Sender<UpstreamEvent>, max: usize) {
    let mut lines = FramedRead::with_capacity(stdout, LineCodec::new(max), STDOUT_BUFFER);
    while let Some(item) = lines.next().await {
        let line = match item {
            Ok(Line::Line(l)) => l,
            Ok(Line::TooLong { seen }) => {
                tracing::error!(
                    seen,
                    limit = max,
                    "dropped a server message larger than the limit"
                );
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the server's stdout failed");
                break;
            }
        };
        match Message::parse(line) {
            Ok(msg) => {
                for frame in msg.into_frames() {
                    let ev = UpstreamEvent::Frame {
                        frame: Box::new(frame),
                        via: Via::Unrelated,
                    };
                    if events.send(ev).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "server wrote a line that is not JSON-RPC; ignored")
            }
        }
    }
}

/// A child's stderr line without the timestamp its own logger put first (ours is on every
/// line already): `2026-12-06T00:05:21.479Z  INFO …` → `INFO …`. Other lines are unchanged.
fn without_timestamp(line: &str) -> &str {
    let Some((first, rest)) = line.split_once(char::is_whitespace) else {
        return line;
    };
    let b = first.as_bytes();
    let looks_like_time = b.len() >= 19
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[7] == b'-'
        && (b[10] == b'T' || b[10] == b' ')
        && b[13] == b':'
        && b[16] == b':';
    if looks_like_time {
        rest.trim_start()
    } else {
        line
    }
}

async fn read_stderr(stderr: ChildStderr) {
    let mut lines =
        FramedRead::with_capacity(stderr, LineCodec::new(MAX_STDERR_LINE), STDERR_BUFFER);
    while let Some(Ok(item)) = lines.next().await {
        match item {
            Line::Line(l) => {
                let line = String::from_utf8_lossy(&l);
                tracing::info!(target: "shadowcat::upstream::stderr", "{}", without_timestamp(&line))
            }
            Line::TooLong { seen } => {
                tracing::info!(target: "shadowcat::upstream::stderr", "<{seen} bytes of stderr without a newline>")
            }
        }
    }
}

#[cfg(test)]
mod stderr_tests {
    use super::without_timestamp;

    #[test]
    fn a_childs_own_timestamp_is_dropped() {
        assert_eq!(
            without_timestamp("2026-12-06T00:05:21.479168Z  INFO rmcp::service: up"),
            "INFO rmcp::service: up"
        );
        assert_eq!(without_timestamp("plain line"), "plain line");
        assert_eq!(without_timestamp("2026 is a year"), "2026 is a year");
        assert_eq!(without_timestamp(""), "");
    }
}
