//! A stdio MCP client: spawn a command, speak newline-delimited JSON-RPC on its stdin/stdout,
//! match replies to requests by id (many requests may be in flight on one child).

use crate::mcp;
use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};

type Pending = Mutex<HashMap<u64, oneshot::Sender<Vec<u8>>>>;
/// Where notifications go while someone listens: (arrival time, payload).
type NotifySink = Mutex<Option<mpsc::UnboundedSender<(Instant, Vec<u8>)>>>;

/// One child process = one MCP session.
pub struct StdioSession {
    tx: mpsc::Sender<Bytes>,
    pending: Arc<Pending>,
    notify: Arc<NotifySink>,
    child: Mutex<Option<Child>>,
}

impl StdioSession {
    /// Spawn `cmd` (stderr discarded) and do the MCP handshake.
    pub async fn spawn(cmd: &[String], timeout: Duration) -> anyhow::Result<Arc<StdioSession>> {
        let (program, args) = cmd
            .split_first()
            .ok_or_else(|| anyhow!("--stdio needs a command after `--`"))?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot spawn {program}"))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let (tx, mut rx) = mpsc::channel::<Bytes>(1024);
        let pending: Arc<Pending> = Arc::default();
        let notify: Arc<NotifySink> = Arc::default();

        // Writer: batch lines, flush when the queue is empty.
        tokio::spawn(async move {
            let mut w = BufWriter::with_capacity(64 * 1024, stdin);
            while let Some(line) = rx.recv().await {
                if w.write_all(&line).await.is_err() || w.write_all(b"\n").await.is_err() {
                    return;
                }
                while let Ok(line) = rx.try_recv() {
                    if w.write_all(&line).await.is_err() || w.write_all(b"\n").await.is_err() {
                        return;
                    }
                }
                if w.flush().await.is_err() {
                    return;
                }
            }
        });

        // Reader: route replies by id, notifications to the sink, answer server requests.
        let (p, n, reply_tx) = (pending.clone(), notify.clone(), tx.clone());
        tokio::spawn(async move {
            let mut r = BufReader::with_capacity(64 * 1024, stdout);
            let mut line = Vec::with_capacity(4096);
            loop {
                line.clear();
                match r.read_until(b'\n', &mut line).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let now = Instant::now();
                let data = line.trim_ascii();
                if data.is_empty() {
                    continue;
                }
                let Ok(msg) = mcp::parse(data) else { continue };
                if msg.is_response() {
                    if let Some(id) = msg.num_id()
                        && let Some(waiter) = shadowcat_proxy::sync::lock(&p).remove(&id)
                    {
                        let _ = waiter.send(data.to_vec());
                    }
                } else if let Some(method) = &msg.method {
                    if let Some(id) = msg.id {
                        // A server→client request: answer ping, refuse the rest.
                        let reply = if method == "ping" {
                            format!(r#"{{"jsonrpc":"2.0","id":{},"result":{{}}}}"#, id.get())
                        } else {
                            format!(
                                r#"{{"jsonrpc":"2.0","id":{},"error":{{"code":-32601,"message":"not supported by shadowcat-bench"}}}}"#,
                                id.get()
                            )
                        };
                        let _ = reply_tx.send(Bytes::from(reply)).await;
                    } else if let Some(sink) = shadowcat_proxy::sync::lock(&n).as_ref() {
                        let _ = sink.send((now, data.to_vec()));
                    }
                }
            }
            // EOF: fail everyone still waiting.
            shadowcat_proxy::sync::lock(&p).clear();
        });

        let session = Arc::new(StdioSession {
            tx,
            pending,
            notify,
            child: Mutex::new(Some(child)),
        });
        let init = tokio::time::timeout(timeout, session.request(0, mcp::initialize()))
            .await
            .map_err(|_| anyhow!("initialize timed out after {timeout:?}"))??;
        let msg = mcp::parse(&init)?;
        if let Some(err) = msg.error {
            bail!("initialize failed: {}", err.get());
        }
        session.notify(mcp::initialized()).await?;
        Ok(session)
    }

    /// Send a request and wait for its reply (the raw JSON-RPC response).
    pub async fn request(&self, id: u64, body: Bytes) -> anyhow::Result<Vec<u8>> {
        let (tx, rx) = oneshot::channel();
        shadowcat_proxy::sync::lock(&self.pending).insert(id, tx);
        if self.tx.send(body).await.is_err() {
            shadowcat_proxy::sync::lock(&self.pending).remove(&id);
            bail!("the child's stdin is closed");
        }
        rx.await
            .map_err(|_| anyhow!("the child closed stdout before answering"))
    }

    /// Forget a request that timed out.
    pub fn forget(&self, id: u64) {
        shadowcat_proxy::sync::lock(&self.pending).remove(&id);
    }

    pub async fn notify(&self, body: Bytes) -> anyhow::Result<()> {
        self.tx
            .send(body)
            .await
            .map_err(|_| anyhow!("the child's stdin is closed"))
    }

    /// Receive notifications from now on (replaces any earlier listener).
    pub fn listen(&self) -> mpsc::UnboundedReceiver<(Instant, Vec<u8>)> {
        let (tx, rx) = mpsc::unbounded_channel();
        *shadowcat_proxy::sync::lock(&self.notify) = Some(tx);
        rx
    }

    pub fn unlisten(&self) {
        *shadowcat_proxy::sync::lock(&self.notify) = None;
    }

    /// Kill the child and reap it.
    pub async fn close(&self) {
        let child = shadowcat_proxy::sync::lock(&self.child).take();
        if let Some(mut child) = child {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
        }
    }
}
