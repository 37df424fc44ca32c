//! A small MCP client session with an upstream, made with the same machinery as a client's
//! session (credentials, transports, era translation): the health checker's `ping`s and
//! `shadowcat pins check` use it. It declares no capabilities: a server request other than
//! `ping` is refused.

use serde_json::{Value, json};
use shadowcat_proto::error::{METHOD_NOT_FOUND, error_frame};
use shadowcat_proto::{Frame, FrameKind, RequestId};
use shadowcat_proxy::upstream::{self, Upstream, UpstreamCtx, UpstreamEvent, UpstreamSpec};
use tokio::sync::mpsc;

/// The protocol version asked for (the server may answer with an older one).
const VERSION: &str = "2025-11-25";

/// An initialized session with one upstream.
pub(crate) struct McpClient {
    upstream: Upstream,
    events: mpsc::Receiver<UpstreamEvent>,
    ctx: UpstreamCtx,
    next_id: i64,
    /// Who asks, in error messages (`MCP health check`, `pins check`).
    label: &'static str,
}

impl McpClient {
    /// Open a session with `spec` (its context's cancel token ends it) and initialize it as
    /// `name`. The `initialize` result comes back with it.
    pub(crate) async fn open(
        spec: &UpstreamSpec,
        ctx: UpstreamCtx,
        name: &str,
        label: &'static str,
    ) -> Result<(McpClient, Value), String> {
        let opened = upstream::open(spec, ctx.clone())
            .await
            .map_err(|e| e.to_string())?;
        let mut c = McpClient {
            upstream: opened.upstream,
            events: opened.events,
            ctx,
            next_id: 0,
            label,
        };
        let params = json!({
            "protocolVersion": VERSION,
            "capabilities": {},
            "clientInfo": {"name": name, "version": env!("CARGO_PKG_VERSION")},
        });
        let answer = match c.request("initialize", params).await {
            Ok(a) => a,
            Err(e) => {
                c.close();
                return Err(e);
            }
        };
        let result = match result_of(&answer) {
            Ok(r) => r,
            Err(e) => {
                c.close();
                return Err(format!("{label}: initialize: {e}"));
            }
        };
        if let Some(v) = result.get("protocolVersion").and_then(Value::as_str) {
            c.upstream.set_protocol_version(v);
        }
        let initialized = frame(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        if let Err(e) = c.upstream.send(initialized).await {
            c.close();
            return Err(format!("{label}: {e}"));
        }
        Ok((c, result))
    }

    /// True when the upstream speaks the stateless 2026-07-28 era.
    pub(crate) fn is_stateless(&self) -> bool {
        self.upstream.is_stateless()
    }

    /// Send a request and wait for its answer (a response or an error, the server's or one
    /// the proxy made); `Err` when the upstream is gone.
    pub(crate) async fn request(&mut self, method: &str, params: Value) -> Result<Frame, String> {
        self.next_id += 1;
        let id = RequestId::Number(self.next_id);
        let label = self.label;
        let req = frame(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        self.upstream
            .send(req)
            .await
            .map_err(|e| format!("{label}: {method}: {e}"))?;
        loop {
            let frame = match self.events.recv().await {
                Some(UpstreamEvent::Frame { frame, .. }) => *frame,
                Some(UpstreamEvent::Closed { reason, .. }) => {
                    return Err(format!("{label}: {method}: {reason}"));
                }
                None => return Err(format!("{label}: {method}: the upstream is gone")),
            };
            match frame.kind() {
                FrameKind::Request => self.answer(&frame).await,
                FrameKind::Response | FrameKind::Error if frame.id() == Some(&id) => {
                    return Ok(frame);
                }
                _ => {}
            }
        }
    }

    /// The server asked something: `ping` is answered, anything else refused.
    async fn answer(&self, request: &Frame) {
        let reply = if request.method() == Some("ping") {
            frame(json!({"jsonrpc": "2.0", "id": request.id(), "result": {}}))
        } else {
            error_frame(
                request.id(),
                METHOD_NOT_FOUND,
                "this client of the proxy's own does not serve requests",
            )
        };
        let _ = self.upstream.send(reply).await;
    }

    /// End the session (in the background: a child gets its grace periods).
    pub(crate) fn close(self) {
        let tracker = self.ctx.tracker.clone();
        tracker.spawn(async move {
            self.upstream.shutdown().await;
            self.ctx.cancel.cancel();
        });
    }

    /// End the session and wait until it has.
    pub(crate) async fn shutdown(self) {
        self.upstream.shutdown().await;
        self.ctx.cancel.cancel();
    }
}

/// The result of an answer, or its error's message.
pub(crate) fn result_of(answer: &Frame) -> Result<Value, String> {
    let v: Value = serde_json::from_slice(answer.raw()).unwrap_or(Value::Null);
    if answer.kind() == FrameKind::Response {
        return Ok(v.get("result").cloned().unwrap_or(Value::Null));
    }
    Err(v["error"]["message"]
        .as_str()
        .unwrap_or("(no message)")
        .to_string())
}

pub(crate) fn frame(v: Value) -> Frame {
    Frame::parse_single(v.to_string().into()).expect("a JSON-RPC message we built")
}
