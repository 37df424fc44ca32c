//! The stateless mode of an HTTP upstream: a modern-only (2026-07-28) server behind a
//! session-based client. The client believes it has a session; the proxy plays it.
//!
//! * `initialize` → `POST server/discover`; its `DiscoverResult` becomes the `InitializeResult`
//!   (the client's own protocol version when known, else 2025-11-25). The client's
//!   capabilities and `clientInfo` are kept for every later request's `_meta`.
//! * `notifications/initialized` is absorbed; `notifications/cancelled` closes the cancelled
//!   request's POST (2026-07-28 cancellation); other client notifications are dropped.
//! * `ping` → `{}`; `logging/setLevel` → `{}` and the level rides in every later request's
//!   `_meta` (`logLevel`); `resources/subscribe`/`unsubscribe` → `{}`, and the URI set feeds the
//!   `subscriptions/listen` request (re-opened on change) — or `-32601` when the server's
//!   capabilities do not offer subscriptions.
//! * Every other request is POSTed on its own: the `_meta` envelope, `MCP-Protocol-Version:
//!   2026-07-28`, `Mcp-Method`, `Mcp-Name` (Base64 sentinel when needed) and `Mcp-Param-*` for
//!   tool arguments the server annotated with `x-mcp-header` (learned from `tools/list`), no
//!   session id. Answers lose `resultType`, cache hints and the `serverInfo` stamp. A result of
//!   type `input_required` (multi-round-trip input: elicitation, sampling, roots) becomes server
//!   requests to the client, whose answers go back in a retry of its request ([`input`]).
//! * The client's GET stream is fed by `POST subscriptions/listen` asking for every list change
//!   the server offers and the subscribed URIs; the acknowledgement and the stream's final
//!   result are not relayed.

mod input;

use super::http::Inner;
use crate::error::ProxyError;
use crate::translate::{envelope, handshake};
use bytes::Bytes;
use serde_json::{Value, json};
use shadowcat_proto::era::{
    METHOD_HEADER, NAME_HEADER, PARAM_HEADER_PREFIX, PROTOCOL_VERSION_HEADER, ProtocolVersion,
};
use shadowcat_proto::error::{METHOD_NOT_FOUND, UPSTREAM_ERROR, error_frame};
use shadowcat_proto::{Frame, FrameKind, RequestId, header_value};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio_util::sync::CancellationToken;

/// What to do with a client frame.
pub(super) enum Plan {
    /// Answer the client at once (no server round trip). `relisten`: the subscriptions changed.
    Answer { frame: Frame, relisten: bool },
    /// Nothing goes to the server.
    Absorb,
    /// POST this request; `cancel` fires when the client cancels it.
    Post(Outgoing),
}

/// One stateless POST.
pub(super) struct Outgoing {
    pub id: Option<RequestId>,
    pub body: Bytes,
    pub headers: Vec<(String, String)>,
    pub cancel: CancellationToken,
}

struct Pending {
    method: Arc<str>,
    /// The client's request (sent again with `inputResponses` if the server asks for input).
    request: Frame,
    cancel: CancellationToken,
}

#[derive(Default)]
struct State {
    client: envelope::Envelope,
    requested: Option<String>,
    pending: HashMap<RequestId, Pending>,
    server_caps: Value,
    subscriptions: BTreeSet<String>,
    /// `x-mcp-header` annotations by tool: (argument path, header token).
    param_headers: HashMap<String, Vec<(Vec<String>, String)>>,
    listen: Option<CancellationToken>,
    listen_ids: HashSet<RequestId>,
    /// The client opened its GET stream (listening is wanted).
    listening: bool,
    /// Requests whose server asked the client for input.
    rounds: input::Rounds,
}

/// The session-based client's state, kept by the proxy.
#[derive(Default)]
pub(super) struct Stateless {
    state: Mutex<State>,
    next_listen: AtomicU64,
}

fn frame_of(v: Value) -> Frame {
    Frame::parse_single(Bytes::from(v.to_string())).expect("a valid JSON-RPC message")
}

fn empty_result(id: &RequestId) -> Frame {
    frame_of(json!({"jsonrpc":"2.0","id": envelope::id_value(id),"result":{}}))
}

fn params_of(frame: &Frame) -> Value {
    serde_json::from_slice::<Value>(frame.raw())
        .map(|v| v["params"].clone())
        .unwrap_or(Value::Null)
}

impl Stateless {
    fn state(&self) -> MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    /// Decide what a client frame becomes.
    pub(super) fn plan(&self, frame: &Frame) -> Plan {
        let method = frame.method().unwrap_or("");
        match frame.kind() {
            FrameKind::Request => {}
            FrameKind::Notification => {
                if method == "notifications/cancelled"
                    && let Some(id) = frame.cancelled_id()
                {
                    let mut st = self.state();
                    if let Some(p) = st.pending.remove(id) {
                        p.cancel.cancel();
                    } else if st.rounds.forget(id) {
                        // Cancelled while its client was being asked for input.
                        let msg =
                            "the request was cancelled by the client (notifications/cancelled)";
                        return Plan::Answer {
                            frame: error_frame(Some(id), UPSTREAM_ERROR, msg),
                            relisten: false,
                        };
                    }
                }
                return Plan::Absorb;
            }
            _ => return self.answered(frame),
        }
        let Some(id) = frame.id().cloned() else {
            return Plan::Absorb;
        };
        let params = params_of(frame);
        match method {
            "ping" => Plan::Answer {
                frame: empty_result(&id),
                relisten: false,
            },
            "logging/setLevel" => {
                self.state().client.log_level = params["level"].as_str().map(str::to_owned);
                Plan::Answer {
                    frame: empty_result(&id),
                    relisten: false,
                }
            }
            "resources/subscribe" | "resources/unsubscribe" => {
                let mut st = self.state();
                if st.server_caps["resources"]["subscribe"] != json!(true) {
                    let msg = "the server offers no resource subscriptions";
                    return Plan::Answer {
                        frame: error_frame(Some(&id), METHOD_NOT_FOUND, msg),
                        relisten: false,
                    };
                }
                let uri = params["uri"].as_str().unwrap_or("").to_string();
                let changed = if method == "resources/subscribe" {
                    st.subscriptions.insert(uri)
                } else {
                    st.subscriptions.remove(&uri)
                };
                Plan::Answer {
                    frame: empty_result(&id),
                    relisten: changed && st.listening,
                }
            }
            "initialize" => {
                let mut st = self.state();
                if let Some(c) = params.get("capabilities").filter(|c| c.is_object()) {
                    st.client.capabilities = c.clone();
                }
                st.client.client_info = params.get("clientInfo").filter(|c| c.is_object()).cloned();
                st.requested = params["protocolVersion"].as_str().map(str::to_owned);
                drop(st);
                let discover = frame_of(json!({"jsonrpc":"2.0","id": envelope::id_value(&id),
                    "method":"server/discover","params":{}}));
                self.outgoing(&discover, id, "initialize", "server/discover", None)
            }
            _ => {
                let name = match method {
                    "tools/call" | "prompts/get" | "resources/read" => frame.target(),
                    _ => None,
                };
                self.outgoing(frame, id, method, method, name)
            }
        }
    }

    /// A client's response: the answer to a question the server asked through the proxy.
    fn answered(&self, frame: &Frame) -> Plan {
        let answered = self.state().rounds.answered(frame);
        match answered {
            input::Answered::NotOurs => {
                tracing::debug!("a client response has no server request to answer; dropped");
                Plan::Absorb
            }
            input::Answered::Waiting => Plan::Absorb,
            input::Answered::Refused(frame) => Plan::Answer {
                frame,
                relisten: false,
            },
            input::Answered::Retry(request) => {
                let (Some(id), Some(method)) = (request.id().cloned(), request.method()) else {
                    return Plan::Absorb;
                };
                let method = method.to_string();
                let name = match method.as_str() {
                    "tools/call" | "prompts/get" | "resources/read" => request.target(),
                    _ => None,
                };
                self.outgoing(&request, id, &method, &method, name)
            }
        }
    }

    fn outgoing(
        &self,
        frame: &Frame,
        id: RequestId,
        client_method: &str,
        method: &str,
        name: Option<&str>,
    ) -> Plan {
        let mut st = self.state();
        let body = match envelope::wrap_request(frame, &st.client) {
            Ok(b) => b,
            Err(e) => {
                return Plan::Answer {
                    frame: error_frame(Some(&id), UPSTREAM_ERROR, &e.to_string()),
                    relisten: false,
                };
            }
        };
        let mut headers = vec![
            (
                PROTOCOL_VERSION_HEADER.to_string(),
                ProtocolVersion::V2026_07_28.as_str().to_string(),
            ),
            (METHOD_HEADER.to_string(), method.to_string()),
        ];
        if let Some(n) = name {
            headers.push((NAME_HEADER.to_string(), header_value::encode(n)));
        }
        if method == "tools/call"
            && let Some(annotated) = name.and_then(|n| st.param_headers.get(n))
        {
            let args = &params_of(frame)["arguments"];
            for (path, token) in annotated {
                let value = path.iter().fold(args, |v, k| &v[k.as_str()]);
                let rendered = match value {
                    Value::String(s) => Some(s.clone()),
                    Value::Bool(b) => Some(b.to_string()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                };
                if let Some(r) = rendered {
                    headers.push((
                        format!("{PARAM_HEADER_PREFIX}{token}"),
                        header_value::encode(&r),
                    ));
                }
            }
        }
        let cancel = CancellationToken::new();
        st.pending.insert(
            id.clone(),
            Pending {
                method: Arc::from(client_method),
                request: frame.clone(),
                cancel: cancel.clone(),
            },
        );
        Plan::Post(Outgoing {
            id: Some(id),
            body,
            headers,
            cancel,
        })
    }

    /// The `subscriptions/listen` request for the client's GET stream, or `None` when the
    /// server offers nothing to listen to. Replaces (cancels) the previous one.
    pub(super) fn listen_request(&self) -> Option<Outgoing> {
        let mut st = self.state();
        st.listening = true;
        let caps = &st.server_caps;
        let mut filter = serde_json::Map::new();
        for (cap, key) in [
            ("tools", "toolsListChanged"),
            ("prompts", "promptsListChanged"),
            ("resources", "resourcesListChanged"),
        ] {
            if caps[cap]["listChanged"] == json!(true) {
                filter.insert(key.into(), json!(true));
            }
        }
        if !st.subscriptions.is_empty() {
            filter.insert("resourceSubscriptions".into(), json!(st.subscriptions));
        }
        if let Some(old) = st.listen.take() {
            old.cancel();
        }
        if filter.is_empty() {
            return None;
        }
        let n = self.next_listen.fetch_add(1, Ordering::Relaxed);
        let id = RequestId::String(Arc::from(format!("shadowcat-listen-{n}")));
        st.listen_ids.insert(id.clone());
        let req = frame_of(json!({"jsonrpc":"2.0","id": envelope::id_value(&id),
            "method":"subscriptions/listen","params":{"notifications": filter}}));
        let body = envelope::wrap_request(&req, &st.client).ok()?;
        let cancel = CancellationToken::new();
        st.listen = Some(cancel.clone());
        Some(Outgoing {
            id: None,
            body,
            headers: vec![
                (
                    PROTOCOL_VERSION_HEADER.to_string(),
                    ProtocolVersion::V2026_07_28.as_str().to_string(),
                ),
                (METHOD_HEADER.to_string(), "subscriptions/listen".into()),
            ],
            cancel,
        })
    }

    /// A server frame in the client's era: usually one frame; none when the client must not see
    /// it; the server's questions when it answered with an `InputRequiredResult`.
    pub(super) fn to_client(&self, frame: Frame) -> Vec<Frame> {
        match frame.kind() {
            FrameKind::Notification => {
                let hidden = frame.method() == Some("notifications/subscriptions/acknowledged");
                return if hidden { vec![] } else { vec![frame] };
            }
            FrameKind::Response | FrameKind::Error => {}
            _ => return vec![frame],
        }
        let Some(id) = frame.id().cloned() else {
            return vec![frame];
        };
        let pending = {
            let mut st = self.state();
            if st.listen_ids.remove(&id) {
                return vec![]; // a listen stream's final result
            }
            st.pending.remove(&id)
        };
        if frame.kind() == FrameKind::Error {
            return vec![frame];
        }
        let method = pending.as_ref().map(|p| p.method.clone());
        match method.as_deref() {
            Some("initialize") => {
                let Ok(v) = serde_json::from_slice::<Value>(frame.raw()) else {
                    return vec![frame];
                };
                let discover = &v["result"];
                let requested = {
                    let mut st = self.state();
                    st.server_caps = discover["capabilities"].clone();
                    st.requested.clone()
                };
                let result = handshake::initialize_result(discover, requested.as_deref());
                return vec![frame_of(
                    json!({"jsonrpc":"2.0","id": envelope::id_value(&id),"result": result}),
                )];
            }
            Some("tools/list") => self.learn_param_headers(&frame),
            _ => {}
        }
        if envelope::result_type(&frame).is_some_and(|t| t != "complete") {
            // Multi-round-trip input: asked as server requests, then the request is retried.
            let v: Value = serde_json::from_slice(frame.raw()).unwrap_or(Value::Null);
            if let Some(p) = pending
                && let Some(asks) = self.state().rounds.ask(&id, p.request, &v["result"])
            {
                return asks;
            }
            let msg = "the server answered with a result of a kind Shadowcat cannot translate \
                       for session-based clients (see docs/architecture.md, protocol eras)";
            return vec![error_frame(Some(&id), UPSTREAM_ERROR, msg)];
        }
        vec![envelope::legacy_answer(frame.clone()).unwrap_or(frame)]
    }

    /// Remember which tool arguments the server wants mirrored in `Mcp-Param-*` headers.
    fn learn_param_headers(&self, frame: &Frame) {
        let Ok(v) = serde_json::from_slice::<Value>(frame.raw()) else {
            return;
        };
        let Some(tools) = v["result"]["tools"].as_array() else {
            return;
        };
        let mut st = self.state();
        for t in tools {
            let Some(name) = t["name"].as_str() else {
                continue;
            };
            let mut found = Vec::new();
            annotated(&t["inputSchema"], &mut Vec::new(), &mut found);
            if found.is_empty() {
                st.param_headers.remove(name);
            } else {
                st.param_headers.insert(name.to_string(), found);
            }
        }
    }
}

/// Properties reachable through `properties` chains that carry `x-mcp-header`.
fn annotated(schema: &Value, path: &mut Vec<String>, out: &mut Vec<(Vec<String>, String)>) {
    if !path.is_empty()
        && let Some(token) = schema["x-mcp-header"].as_str()
        && !token.is_empty()
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    {
        out.push((path.clone(), token.to_string()));
    }
    if let Some(props) = schema["properties"].as_object() {
        for (k, sub) in props {
            path.push(k.clone());
            annotated(sub, path, out);
            path.pop();
        }
    }
}

/// POST one planned request and relay its answer (the POST ends early if the client cancels).
pub(super) async fn post(inner: &Arc<Inner>, st: &Arc<Stateless>, frame: Frame) {
    match st.plan(&frame) {
        Plan::Absorb => {}
        Plan::Answer { frame, relisten } => {
            inner.deliver(frame, super::Via::Unrelated).await;
            if relisten {
                listen(inner, st);
            }
        }
        Plan::Post(out) => {
            let (cancel, id) = (out.cancel.clone(), out.id.clone());
            tokio::select! {
                _ = send(inner, out) => {}
                _ = cancel.cancelled() => {
                    // Closing the POST is the cancellation; the client's own HTTP request for
                    // it is released with an error it will ignore (it cancelled).
                    inner.fail(id.as_ref(), ProxyError::Cancelled).await;
                }
            }
        }
    }
}

async fn send(inner: &Arc<Inner>, out: Outgoing) {
    let mut headers = http::HeaderMap::new();
    for (k, v) in &out.headers {
        match (
            http::HeaderName::try_from(k.as_str()),
            http::HeaderValue::try_from(v.as_str()),
        ) {
            (Ok(k), Ok(v)) => {
                headers.append(k, v);
            }
            _ => tracing::warn!(header = %k, "dropped a header that is not valid HTTP"),
        }
    }
    let build = || {
        inner.request(http::Method::POST, out.body.clone(), |h| {
            super::client::json_post_headers(h);
            crate::tracecontext::upstream_headers(&out.body, h);
            for (k, v) in &headers {
                h.append(k, v.clone());
            }
        })
    };
    let resp = match inner.send(build).await {
        Ok(r) => r,
        Err(msg) => return inner.fail(out.id.as_ref(), msg).await,
    };
    inner.answer(resp, out.id).await;
}

/// Open (or re-open) the `subscriptions/listen` stream feeding the client's GET stream. False
/// when the server offers nothing to listen to.
pub(super) fn listen(inner: &Arc<Inner>, st: &Arc<Stateless>) -> bool {
    let Some(out) = st.listen_request() else {
        return false;
    };
    let inner2 = inner.clone();
    let session = inner.ctx().cancel.clone();
    inner.ctx().tracker.spawn(async move {
        let cancel = out.cancel.clone();
        tokio::select! {
            _ = send(&inner2, out) => tracing::debug!("the upstream's subscriptions/listen stream ended"),
            _ = cancel.cancelled() => {}
            _ = session.cancelled() => {}
        }
    });
    true
}

#[cfg(test)]
mod tests;
