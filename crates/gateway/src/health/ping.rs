//! Health checks by MCP `ping` over a session the checker keeps open with the upstream (one per
//! upstream, opened on the first check, re-opened after it is lost). The session is made with
//! the same upstream machinery as a client's — credentials, transports, era translation — so a
//! check sees what a new session would: a server whose port is open but which no longer
//! answers MCP fails it. A 2026-07-28-only server has no `ping`; it is asked `server/discover`.
//! Stdio upstreams get a child of their own for the checks.

use crate::client::McpClient;
use serde_json::{Value, json};
use shadowcat_proto::{Frame, FrameKind};
use shadowcat_proxy::upstream::{UpstreamCtx, UpstreamSpec};
use std::time::Duration;

/// The checker of one upstream.
pub(super) struct Pinger {
    spec: UpstreamSpec,
    ctx: UpstreamCtx,
    live: Option<McpClient>,
}

impl Pinger {
    /// A checker of `spec`; `ctx` is the template of its sessions' contexts (each session gets
    /// a child of its cancel token).
    pub(super) fn new(spec: UpstreamSpec, ctx: UpstreamCtx) -> Pinger {
        Pinger {
            spec,
            ctx,
            live: None,
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
        let live = match &mut self.live {
            Some(l) => l,
            None => {
                let mut ctx = self.ctx.clone();
                ctx.cancel = self.ctx.cancel.child_token();
                let (c, _) = McpClient::open(
                    &self.spec,
                    ctx,
                    "shadowcat-health-check",
                    "MCP health check",
                )
                .await?;
                self.live.insert(c)
            }
        };
        let method = if live.is_stateless() {
            "server/discover"
        } else {
            "ping"
        };
        let answer = live.request(method, json!({})).await?;
        outcome(method, &answer).map(|_| ())
    }

    /// End the kept session.
    fn close(&mut self) {
        if let Some(live) = self.live.take() {
            live.close();
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::frame;
    use shadowcat_proto::RequestId;
    use shadowcat_proto::error::error_frame;

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
