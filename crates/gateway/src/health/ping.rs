//! Health checks by MCP `ping` over a session the checker keeps open with the upstream (one per
//! upstream, opened on the first check, re-opened after it is lost). The session is made with
//! the same upstream machinery as a client's — credentials, transports, era translation — so a
//! check sees what a new session would: a server whose port is open but which no longer
//! answers MCP fails it. A 2026-07-28-only server has no `ping`; it is asked `server/discover`.
//! Stdio upstreams get a child of their own for the checks.

use serde_json::{Value, json};
use shadowcat_proto::error::{METHOD_NOT_FOUND, error_frame};
use shadowcat_proto::{Frame, FrameKind, RequestId};
use shadowcat_proxy::upstream::{self, Upstream, UpstreamCtx, UpstreamEvent, UpstreamSpec};
use std::time::Duration;
use tokio::sync::mpsc;

/// The protocol version the checker asks for (the server may answer with an older one).
const CHECK_VERSION: &str = "2025-11-25";

/// The checker of one upstream.
pub(super) struct Pinger {
    spec: UpstreamSpec,
    ctx: UpstreamCtx,
    live: Option<Live>,
    next_id: i64,
}

/// The checker's session with the upstream.
struct Live {
    upstream: Upstream,
    events: mpsc::Receiver<UpstreamEvent>,
    ctx: UpstreamCtx,
}

impl Pinger {
    /// A checker of `spec`; `ctx` is the template of its sessions' contexts (each session gets
    /// a child of its cancel token).
    pub(super) fn new(spec: UpstreamSpec, ctx: UpstreamCtx) -> Pinger {
        Pinger {
            spec,
            ctx,
            live: None,
            next_id: 0,
        }
    }

    /// One check within `timeout`: a `ping` on the kept session (opened first if need be). A
    /// kept session that the upstream lost (the proxy had to answer the ping) is replaced by a
    /// new one within the same check: an upstream that restarted is healthy.
    pub(super) async fn check(&mut self, timeout: Duration) -> Result<(), String> {
        let round = async {
            let kept = self.live.is_some();
            match self.round().await {
                Err(e) if kept => {
                    tracing::debug!(upstream = %self.spec.describe(), error = %e, "health-check session lost; opening a new one");
                    self.close();
                    self.round().await
                }
                r => r,
            }
        };
        let result = match tokio::time::timeout(timeout, round).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "MCP health check: no answer within {} ms",
                timeout.as_millis()
            )),
        };
        if result.is_err() {
            self.close();
        }
        result
    }

    async fn round(&mut self) -> Result<(), String> {
        if self.live.is_none() {
            let live = self.open().await?;
            self.live = Some(live);
        }
        let id = self.id();
        let live = self.live.as_mut().expect("opened above");
        let method = if live.upstream.is_stateless() {
            "server/discover"
        } else {
            "ping"
        };
        live.request(id, method, json!({})).await.map(|_| ())
    }

    async fn open(&mut self) -> Result<Live, String> {
        let mut ctx = self.ctx.clone();
        ctx.cancel = self.ctx.cancel.child_token();
        let opened = upstream::open(&self.spec, ctx.clone())
            .await
            .map_err(|e| e.to_string())?;
        let mut live = Live {
            upstream: opened.upstream,
            events: opened.events,
            ctx,
        };
        let params = json!({
            "protocolVersion": CHECK_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "shadowcat-health-check", "version": env!("CARGO_PKG_VERSION")},
        });
        let id = self.id();
        let result = match live.request(id, "initialize", params).await {
            Ok(r) => r,
            Err(e) => {
                live.close();
                return Err(e);
            }
        };
        if let Some(v) = result.get("protocolVersion").and_then(Value::as_str) {
            live.upstream.set_protocol_version(v);
        }
        let initialized = frame(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        if let Err(e) = live.upstream.send(initialized).await {
            live.close();
            return Err(format!("MCP health check: {e}"));
        }
        Ok(live)
    }

    fn id(&mut self) -> RequestId {
        self.next_id += 1;
        RequestId::Number(self.next_id)
    }

    /// End the kept session (in the background: a child gets its grace periods).
    fn close(&mut self) {
        if let Some(live) = self.live.take() {
            live.close();
        }
    }
}

impl Live {
    /// Send a request and wait for its answer: the result, or why there is none.
    async fn request(
        &mut self,
        id: RequestId,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        let req = frame(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        self.upstream
            .send(req)
            .await
            .map_err(|e| format!("MCP health check: {method}: {e}"))?;
        loop {
            let frame = match self.events.recv().await {
                Some(UpstreamEvent::Frame { frame, .. }) => *frame,
                Some(UpstreamEvent::Closed { reason, .. }) => {
                    return Err(format!("MCP health check: {method}: {reason}"));
                }
                None => return Err(format!("MCP health check: {method}: the upstream is gone")),
            };
            match frame.kind() {
                FrameKind::Request => self.answer(&frame).await,
                FrameKind::Response | FrameKind::Error if frame.id() == Some(&id) => {
                    return outcome(method, &frame);
                }
                _ => {}
            }
        }
    }

    /// The server asked something: `ping` is answered, anything else refused (the checker
    /// declares no capabilities).
    async fn answer(&self, request: &Frame) {
        let reply = if request.method() == Some("ping") {
            frame(json!({"jsonrpc": "2.0", "id": request.id(), "result": {}}))
        } else {
            error_frame(
                request.id(),
                METHOD_NOT_FOUND,
                "the gateway's health checker does not serve requests",
            )
        };
        let _ = self.upstream.send(reply).await;
    }

    fn close(self) {
        let tracker = self.ctx.tracker.clone();
        tracker.spawn(async move {
            self.upstream.shutdown().await;
            self.ctx.cancel.cancel();
        });
    }
}

/// What an answer to `method` says about the upstream. A server that answers is alive, even
/// with its own error to `ping`; an error the proxy had to make (unreachable, HTTP error,
/// session lost) is a failure, and so is a server error to `initialize` (no session).
fn outcome(method: &str, frame: &Frame) -> Result<Value, String> {
    let v: Value = serde_json::from_slice(frame.raw()).unwrap_or(Value::Null);
    if frame.kind() == FrameKind::Response {
        return Ok(v.get("result").cloned().unwrap_or(Value::Null));
    }
    let message = v["error"]["message"].as_str().unwrap_or("(no message)");
    if frame.proxy_error().is_some() || method == "initialize" {
        return Err(format!("MCP health check: {method}: {message}"));
    }
    Ok(Value::Null)
}

fn frame(v: Value) -> Frame {
    Frame::parse_single(v.to_string().into()).expect("a JSON-RPC message we built")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_decide_health() {
        let ok = frame(json!({"jsonrpc":"2.0","id":1,"result":{}}));
        assert!(outcome("ping", &ok).is_ok());
        let server_err =
            frame(json!({"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"no ping"}}));
        assert!(outcome("ping", &server_err).is_ok(), "the server answered");
        let e = outcome("initialize", &server_err).unwrap_err();
        assert!(e.contains("initialize: no ping"), "{e}");
        let proxy_err = error_frame(
            Some(&RequestId::Number(1)),
            shadowcat_proto::error::UPSTREAM_ERROR,
            "upstream answered HTTP 404",
        );
        let e = outcome("ping", &proxy_err).unwrap_err();
        assert!(e.contains("HTTP 404"), "{e}");
    }
}
