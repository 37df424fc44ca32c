//! A session-based session the proxy holds with a server on behalf of 2026-07-28 clients: it
//! was opened with `initialize` + `notifications/initialized` like any legacy client's, and
//! each stateless request is mapped onto it with an id of its own.
//!
//! * Ids: every request gets the next integer of this session (the held session's own id
//!   space: nothing else sends on it), so concurrent clients never collide; the answer is
//!   routed back by that id, with the client's id restored. A progress token the client asked
//!   for is replaced by the same integer and restored on each progress notification.
//! * Server notifications: progress by token; log messages to the request that caused them
//!   (the HTTP upstream's stream, or the only request in flight on stdio) if that request
//!   opted in with `_meta` `logLevel` and the level is high enough; `list_changed` and
//!   `resources/updated` to the `subscriptions/listen` streams that asked for them; anything
//!   else is dropped (debug log).
//! * Server requests: `ping` is answered `{}`; `sampling/createMessage` and
//!   `elicitation/create` related to a client's `tools/call`, `prompts/get` or `resources/read`
//!   reach that client as a multi-round-trip `InputRequiredResult` ([`super::mrtr`]); anything
//!   else (unrelated ones, `roots/list`, which the held session never declares) gets JSON-RPC
//!   `-32601` with a message saying why.
//! * A client that closes its response stream cancels its request: the server gets
//!   `notifications/cancelled` for the held id.
//! * The session ends when it has been idle (nothing in flight, no listener) for the front's
//!   idle timeout, when the upstream closes (each request in flight gets `-32000` saying so,
//!   each listener a final `subscriptions/listen` result) or when the proxy shuts down.

mod input;
mod listen;
mod route;

pub use listen::{Filter, ListenGuard, Listening, SUBSCRIPTION_ID};

use super::envelope::{self, id_value};
use super::mrtr::{self, Suspended};
use crate::error::ProxyError;
use crate::session::pump::{self, Deliver, End};
use crate::session::{Sent, Session};
use crate::upstream::{UpstreamEvent, Via};
use bytes::Bytes;
use listen::Listener;
use route::severity;
use serde_json::{Value, json};
use shadowcat_proto::error::{REQUEST_TIMEOUT, UPSTREAM_ERROR, error_frame};
use shadowcat_proto::{Frame, RequestId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Capacity of one request's (or listener's) channel of frames.
pub const CHANNEL_CAPACITY: usize = 32;

struct Waiter {
    client_id: RequestId,
    method: Arc<str>,
    target: Option<Arc<str>>,
    client_token: Option<Value>,
    log_level: Option<usize>,
    tx: mpsc::Sender<Frame>,
}

#[derive(Default)]
struct Table {
    waiting: HashMap<RequestId, Waiter>,
    listeners: HashMap<u64, Listener>,
    next_listener: u64,
    /// Resource URIs subscribed on the server, with how many listeners want each.
    subscribed: HashMap<String, usize>,
    /// Client requests waiting for their client's input, by `requestState`.
    suspended: HashMap<String, Suspended>,
}

/// A session-based upstream session held for 2026-07-28 clients.
pub struct Held {
    core: Arc<Session>,
    key: Arc<str>,
    next_id: AtomicI64,
    table: Mutex<Table>,
    init: OnceLock<Value>,
    epoch: Instant,
    last_used_ms: AtomicU64,
}

/// Frames answering one client request (notifications first, the answer last), and the guard
/// that cancels the request upstream if dropped before the answer came.
pub struct Call {
    /// The frames, already in the client's era.
    pub rx: mpsc::Receiver<Frame>,
    /// Cancels the request when dropped early.
    pub guard: CallGuard,
}

/// Dropped before the answer arrived (the client closed its response): the server gets
/// `notifications/cancelled`.
pub struct CallGuard {
    held: Arc<Held>,
    id: RequestId,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.held.cancel(&self.id);
    }
}

impl Held {
    /// A held session over `core` (its pump is started by the pool).
    pub fn new(core: Arc<Session>, key: Arc<str>) -> Arc<Held> {
        Arc::new(Held {
            core,
            key,
            next_id: AtomicI64::new(0),
            table: Mutex::new(Table::default()),
            init: OnceLock::new(),
            epoch: Instant::now(),
            last_used_ms: AtomicU64::new(0),
        })
    }

    /// The engine session.
    pub fn core(&self) -> &Arc<Session> {
        &self.core
    }

    /// The pool key.
    pub fn key(&self) -> &Arc<str> {
        &self.key
    }

    /// The server's `InitializeResult` (after [`Held::initialize`]).
    pub fn init_result(&self) -> Option<&Value> {
        self.init.get()
    }

    /// False once the session ended.
    pub fn alive(&self) -> bool {
        !self.core.cancel_token().is_cancelled()
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        crate::sync::lock(&self.table)
    }

    fn next_id(&self) -> RequestId {
        RequestId::Number(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_used_ms.store(ms, Ordering::Release);
    }

    fn idle_for(&self) -> Option<Duration> {
        let t = self.table();
        if !t.waiting.is_empty() || !t.listeners.is_empty() || !t.suspended.is_empty() {
            return None;
        }
        drop(t);
        let last = self.last_used_ms.load(Ordering::Acquire);
        let now = self.epoch.elapsed().as_millis() as u64;
        Some(Duration::from_millis(now.saturating_sub(last)))
    }

    fn server_info(&self) -> Option<&Value> {
        self.init.get().and_then(|i| i.get("serverInfo"))
    }

    /// Open the session: `initialize` with `params`, wait for the answer (at most `timeout`),
    /// then `notifications/initialized` and the server→client stream.
    pub async fn initialize(
        self: &Arc<Self>,
        params: Value,
        timeout: Duration,
    ) -> Result<(), ProxyError> {
        let id = self.next_id();
        let frame = request_frame(&id, "initialize", params);
        let (tx, mut rx) = mpsc::channel(CHANNEL_CAPACITY);
        self.table().waiting.insert(
            id.clone(),
            Waiter {
                client_id: id.clone(),
                method: Arc::from("initialize"),
                target: None,
                client_token: None,
                log_level: None,
                tx,
            },
        );
        self.send(frame, &id).await?;
        let answer = loop {
            match tokio::time::timeout(timeout, rx.recv()).await {
                Ok(Some(f)) if f.kind().is_reply() => break f,
                Ok(Some(_)) => continue,
                Ok(None) => {
                    return Err(ProxyError::UpstreamClosed(
                        "the server session ended during initialize".into(),
                    ));
                }
                Err(_) => {
                    self.table().waiting.remove(&id);
                    return Err(ProxyError::RequestTimeout(format!(
                        "the server did not answer initialize within {} s",
                        timeout.as_secs()
                    )));
                }
            }
        };
        let v: Value = serde_json::from_slice(answer.raw()).unwrap_or(Value::Null);
        let Some(result) = v.get("result").filter(|r| r.is_object()) else {
            let why = v["error"]["message"].as_str().unwrap_or("no result");
            // The proxy answered for an upstream that could not (see `upstream_failed`); the
            // server's own error is a refusal.
            return Err(match answer.proxy_error() {
                Some(REQUEST_TIMEOUT) => ProxyError::RequestTimeout(why.to_string()),
                Some(_) => ProxyError::UpstreamClosed(why.to_string()),
                None => {
                    ProxyError::UpstreamProtocol(format!("the server refused initialize: {why}"))
                }
            });
        };
        let _ = self.init.set(result.clone());
        let initialized = Frame::parse_single(Bytes::from_static(
            br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        ))
        .map_err(ProxyError::Frame)?;
        self.core.from_client(initialized).await?;
        self.core.listen_in_background();
        self.touch();
        Ok(())
    }

    /// Send a request of the proxy's own through the pipeline; a hook's answer is routed like
    /// the server's.
    async fn send(&self, frame: Frame, id: &RequestId) -> Result<(), ProxyError> {
        match self.core.from_client(frame).await {
            Ok(Sent::Forwarded) => Ok(()),
            Ok(Sent::Replied(answer)) => {
                self.route_reply(answer).await;
                Ok(())
            }
            Ok(Sent::Dropped) => {
                // Nothing will answer: the receiver sees the channel close.
                self.table().waiting.remove(id);
                Ok(())
            }
            Err(e) => {
                self.table().waiting.remove(id);
                Err(e)
            }
        }
    }

    /// Map a client's request onto the session. Its answer (and related notifications) arrive
    /// on the returned channel in the client's era; the channel closes after the answer.
    pub async fn call(self: &Arc<Self>, frame: &Frame) -> Result<Call, ProxyError> {
        let client_id = frame.id().cloned().ok_or_else(|| {
            ProxyError::UpstreamProtocol("a request without an id cannot be relayed".into())
        })?;
        if let Some((state, responses)) = mrtr::retry_of(frame) {
            return self.resume(frame, client_id, &state, &responses).await;
        }
        let id = self.next_id();
        let unwrapped = envelope::unwrap_request(frame, &id, &id_value(&id)).map_err(|e| {
            ProxyError::bad(
                crate::error::Refusal::Malformed,
                shadowcat_proto::error::INVALID_REQUEST,
                e.to_string(),
            )
        })?;
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        self.table().waiting.insert(
            id.clone(),
            Waiter {
                client_id,
                method: Arc::from(frame.method().unwrap_or("")),
                target: frame.target().map(Arc::from),
                client_token: unwrapped.progress_token,
                log_level: unwrapped.envelope.log_level.as_deref().and_then(severity),
                tx,
            },
        );
        self.touch();
        let guard = CallGuard {
            held: self.clone(),
            id: id.clone(),
        };
        self.send(unwrapped.frame, &id).await?;
        Ok(Call { rx, guard })
    }

    /// The client went away before its answer: forget the request and cancel it upstream.
    fn cancel(self: &Arc<Self>, id: &RequestId) {
        if self.table().waiting.remove(id).is_none() {
            return;
        }
        self.core.inflight().remove(id);
        self.touch();
        if !self.alive() {
            return;
        }
        let note = json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{
            "requestId": id_value(id),
            "reason": "the 2026-07-28 client closed its response stream"}});
        let Ok(frame) = Frame::parse_single(Bytes::from(note.to_string())) else {
            return;
        };
        let held = self.clone();
        self.core.tracker().spawn(async move {
            if let Err(e) = held.core.from_client(frame).await {
                tracing::debug!(error = %e, "could not send notifications/cancelled upstream");
            }
        });
    }

    /// A request of the proxy's own whose answer nobody waits for.
    async fn internal(&self, method: &str, params: Value) {
        let id = self.next_id();
        let (tx, _) = mpsc::channel(1);
        self.table().waiting.insert(
            id.clone(),
            Waiter {
                client_id: id.clone(),
                method: Arc::from(method),
                target: None,
                client_token: None,
                log_level: None,
                tx,
            },
        );
        if let Err(e) = self.send(request_frame(&id, method, params), &id).await {
            tracing::warn!(error = %e, method, "a request of the held session failed");
        }
    }

    /// Relay the server's frames until the session ends (idle for `idle`, upstream closed, or
    /// cancelled). Then every waiting request gets an error and every listener a final result.
    pub async fn pump(
        self: Arc<Self>,
        mut events: mpsc::Receiver<UpstreamEvent>,
        idle: Duration,
    ) -> String {
        let period = (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
        let mut clients = ToClients {
            held: &self,
            tick: tokio::time::interval(period),
            idle,
        };
        match pump::pump(&self.core, &mut events, &mut clients).await {
            End::Cancelled => "the proxy is shutting down".into(),
            end => end.reason().to_string(),
        }
    }

    /// After the pump: tell everyone still waiting, stop the upstream (which ends the record).
    pub async fn finish(&self, reason: &str) {
        let (waiting, listeners) = {
            let mut t = self.table();
            t.subscribed.clear();
            t.suspended.clear();
            (
                std::mem::take(&mut t.waiting),
                std::mem::take(&mut t.listeners),
            )
        };
        let msg = format!("the server session held for 2026-07-28 clients ended: {reason}");
        for w in waiting.into_values() {
            let _ =
                w.tx.try_send(error_frame(Some(&w.client_id), UPSTREAM_ERROR, &msg));
        }
        for l in listeners.into_values() {
            let end = json!({"jsonrpc":"2.0","id": l.subscription,
                "result":{"resultType":"complete","_meta":{SUBSCRIPTION_ID: l.subscription}}});
            if let Ok(f) = Frame::parse_single(Bytes::from(end.to_string())) {
                let _ = l.tx.try_send(f);
            }
        }
        self.core.shutdown().await;
    }
}

/// The held session's side of the pump: server frames through the pipeline, translated for the
/// 2026-07-28 requests and listeners waiting on them.
struct ToClients<'a> {
    held: &'a Held,
    tick: tokio::time::Interval,
    idle: Duration,
}

impl Deliver for ToClients<'_> {
    async fn frames(&mut self, burst: Vec<(Frame, Via)>) -> bool {
        for (frame, via) in burst {
            if let Some(f) = self.held.core.from_server(frame).await {
                self.held.on_frame(f, &via).await;
            }
        }
        true
    }

    /// The upstream closed: its errors for the held session's own requests in flight reach
    /// the clients waiting on them like any answer.
    async fn closed(&mut self, errors: Vec<Frame>) {
        for err in errors {
            self.held.on_frame(err, &Via::Unrelated).await;
        }
    }

    async fn wait(&mut self) {
        self.tick.tick().await;
    }

    async fn woke(&mut self) -> Option<String> {
        self.held.expire(self.idle).await;
        self.held
            .idle_for()
            .is_some_and(|d| d >= self.idle)
            .then(|| "idle".to_string())
    }
}

fn request_frame(id: &RequestId, method: &str, params: Value) -> Frame {
    let v = json!({"jsonrpc":"2.0","id": id_value(id),"method": method,"params": params});
    Frame::parse_single(Bytes::from(v.to_string())).expect("a valid JSON-RPC request")
}
