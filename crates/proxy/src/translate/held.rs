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

use super::envelope::{self, id_value};
use super::mrtr::{self, Suspended};
use crate::error::ProxyError;
use crate::front::http::Records;
use crate::session::{Sent, Session};
use crate::upstream::{UpstreamEvent, Via};
use bytes::Bytes;
use serde_json::{Value, json};
use shadowcat_proto::error::{METHOD_NOT_FOUND, UPSTREAM_ERROR, error_frame};
use shadowcat_proto::{Frame, FrameKind, RequestId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Capacity of one request's (or listener's) channel of frames.
pub const CHANNEL_CAPACITY: usize = 32;
/// `_meta` key tagging every frame of a `subscriptions/listen` stream with the listen id.
pub const SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";

/// Which notifications a `subscriptions/listen` stream asked for (or was granted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// `notifications/tools/list_changed`.
    pub tools: bool,
    /// `notifications/prompts/list_changed`.
    pub prompts: bool,
    /// `notifications/resources/list_changed`.
    pub resources: bool,
    /// `notifications/resources/updated` for these URIs.
    pub uris: Vec<String>,
}

impl Filter {
    /// The `notifications` param of a `subscriptions/listen` request.
    pub fn parse(params: &Value) -> Filter {
        let n = &params["notifications"];
        Filter {
            tools: n["toolsListChanged"].as_bool().unwrap_or(false),
            prompts: n["promptsListChanged"].as_bool().unwrap_or(false),
            resources: n["resourcesListChanged"].as_bool().unwrap_or(false),
            uris: n["resourceSubscriptions"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|u| u.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// As the `notifications` object of an acknowledgement.
    pub fn to_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        if self.tools {
            m.insert("toolsListChanged".into(), json!(true));
        }
        if self.prompts {
            m.insert("promptsListChanged".into(), json!(true));
        }
        if self.resources {
            m.insert("resourcesListChanged".into(), json!(true));
        }
        if !self.uris.is_empty() {
            m.insert("resourceSubscriptions".into(), json!(self.uris));
        }
        Value::Object(m)
    }

    fn wants(&self, frame: &Frame) -> bool {
        match frame.method() {
            Some("notifications/tools/list_changed") => self.tools,
            Some("notifications/prompts/list_changed") => self.prompts,
            Some("notifications/resources/list_changed") => self.resources,
            Some("notifications/resources/updated") => {
                let uri = updated_uri(frame);
                uri.is_some_and(|u| self.uris.contains(&u))
            }
            _ => false,
        }
    }
}

fn updated_uri(frame: &Frame) -> Option<String> {
    let v: Value = serde_json::from_slice(frame.raw()).ok()?;
    v["params"]["uri"].as_str().map(str::to_owned)
}

/// Log levels in increasing severity (RFC 5424, as MCP uses them).
const LEVELS: [&str; 8] = [
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
];

fn severity(level: &str) -> Option<usize> {
    LEVELS.iter().position(|l| *l == level)
}

struct Waiter {
    client_id: RequestId,
    method: Arc<str>,
    target: Option<Arc<str>>,
    client_token: Option<Value>,
    log_level: Option<usize>,
    tx: mpsc::Sender<Frame>,
}

struct Listener {
    filter: Filter,
    subscription: Value,
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

/// A `subscriptions/listen` stream: the frames for it, and the guard that removes it.
pub struct Listening {
    /// The acknowledgement (first frame of the stream).
    pub ack: Frame,
    /// Later notifications, then a final result if the held session ends.
    pub rx: mpsc::Receiver<Frame>,
    /// Removes the listener when dropped.
    pub guard: ListenGuard,
}

/// Removes its listener (and unsubscribes resources nobody else listens to) when dropped.
pub struct ListenGuard {
    held: Arc<Held>,
    id: u64,
}

impl Drop for ListenGuard {
    fn drop(&mut self) {
        self.held.unlisten(self.id);
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
        self.table.lock().unwrap_or_else(|p| p.into_inner())
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
                    return Err(ProxyError::UpstreamProtocol(format!(
                        "the server did not answer initialize within {} s",
                        timeout.as_secs()
                    )));
                }
            }
        };
        let v: Value = serde_json::from_slice(answer.raw()).unwrap_or(Value::Null);
        let Some(result) = v.get("result").filter(|r| r.is_object()) else {
            let why = v["error"]["message"].as_str().unwrap_or("no result");
            return Err(ProxyError::UpstreamProtocol(format!(
                "the server refused initialize: {why}"
            )));
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
                http::StatusCode::BAD_REQUEST,
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

    /// A client's retry with `inputResponses` for a request that asked it for input: answer the
    /// server's requests, then wait for the request's answer (or ask again for what is missing).
    async fn resume(
        self: &Arc<Self>,
        frame: &Frame,
        client_id: RequestId,
        state: &str,
        responses: &serde_json::Map<String, Value>,
    ) -> Result<Call, ProxyError> {
        let invalid = |msg: &str| {
            ProxyError::bad(
                http::StatusCode::BAD_REQUEST,
                shadowcat_proto::error::INVALID_PARAMS,
                msg,
            )
        };
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let (answers, uid, now) = {
            let mut t = self.table();
            let Some(mut s) = t.suspended.remove(state) else {
                return Err(invalid(
                    "unknown or expired requestState: send the request again without it",
                ));
            };
            if Some(&*s.method) != frame.method() || s.target.as_deref() != frame.target() {
                t.suspended.insert(state.to_string(), s);
                return Err(invalid("this requestState belongs to another request"));
            }
            let answers = s.answer(responses);
            let uid = s.uid.clone();
            let now = if s.asking() {
                // Input still missing: ask for it again, under the same state.
                let again = s.input_required(&client_id, state);
                t.suspended.insert(state.to_string(), s);
                Some(again)
            } else if let Some(done) = s.done.take() {
                let info = self.server_info();
                Some(envelope::modern_answer(&done, &client_id, &s.method, info).unwrap_or(done))
            } else {
                let env = envelope::read_envelope(frame);
                t.waiting.insert(
                    uid.clone(),
                    Waiter {
                        client_id,
                        method: s.method,
                        target: s.target,
                        client_token: frame.progress_token().map(id_value),
                        log_level: env.log_level.as_deref().and_then(severity),
                        tx: tx.clone(),
                    },
                );
                None
            };
            (answers, uid, now)
        };
        self.touch();
        if let Some(f) = now {
            let _ = tx.try_send(f);
        }
        drop(tx);
        let guard = CallGuard {
            held: self.clone(),
            id: uid.clone(),
        };
        for a in answers {
            self.core.from_client(a).await?;
        }
        Ok(Call { rx, guard })
    }

    /// A server request for input (`sampling/createMessage`, `elicitation/create`) related to
    /// a client request that may take input: the client gets an `InputRequiredResult` for it.
    /// False when it cannot be related to one.
    fn suspend(&self, request: &Frame, via: &Via) -> bool {
        let mut t = self.table();
        let uid = match via {
            Via::Request(id) => Some(id.clone()),
            // stdio and HTTP+SSE carry no relation: the only client request in flight, else
            // the only one already asking its client.
            _ => {
                let mut live = t.waiting.iter().filter(|(_, w)| !w.tx.is_closed());
                match (live.next(), live.next()) {
                    (Some((id, _)), None) => Some(id.clone()),
                    (None, _) if t.suspended.len() == 1 => {
                        t.suspended.values().next().map(|s| s.uid.clone())
                    }
                    _ => None,
                }
            }
        };
        let Some(uid) = uid else {
            return false;
        };
        if let Some(s) = t.suspended.values_mut().find(|s| s.uid == uid) {
            // Its client has not come back yet: this is asked in the same round.
            s.add(request);
            return true;
        }
        let takes_input = t
            .waiting
            .get(&uid)
            .is_some_and(|w| mrtr::TAKES_INPUT.contains(&&*w.method));
        if !takes_input {
            return false;
        }
        let Some(w) = t.waiting.remove(&uid) else {
            return false;
        };
        let mut s = Suspended::new(uid, w.method.clone(), w.target.clone());
        s.add(request);
        let state = mrtr::new_state();
        let ask = s.input_required(&w.client_id, &state);
        t.suspended.insert(state, s);
        drop(t);
        if let Err(mpsc::error::TrySendError::Full(ask)) = w.tx.try_send(ask) {
            self.core.tracker().spawn(async move {
                let _ = w.tx.send(ask).await;
            });
        }
        true
    }

    /// Suspended requests whose client did not come back within `ttl`: the server's requests
    /// get an error, the client's request is cancelled.
    async fn expire(&self, ttl: Duration) {
        let expired: Vec<Suspended> = {
            let mut t = self.table();
            let old: Vec<String> = t
                .suspended
                .iter()
                .filter(|(_, s)| s.since.elapsed() >= ttl)
                .map(|(k, _)| k.clone())
                .collect();
            old.iter().filter_map(|k| t.suspended.remove(k)).collect()
        };
        for mut s in expired {
            tracing::info!(id = %s.uid, "a 2026-07-28 client never came back with the input it was asked for");
            let mut out = s.abandon("the client never answered (its requestState expired)");
            let note = json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{
                "requestId": id_value(&s.uid), "reason": "the client's requestState expired"}});
            out.extend(Frame::parse_single(Bytes::from(note.to_string())));
            self.core.inflight().remove(&s.uid);
            for f in out {
                if let Err(e) = self.core.from_client(f).await {
                    tracing::debug!(error = %e, "could not tell the server");
                }
            }
        }
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

    /// Open a `subscriptions/listen` stream with listen request id `listen_id`. The server's
    /// capabilities decide what is granted; granted resource URIs are subscribed on the server
    /// (`resources/subscribe`) while some listener wants them.
    pub async fn listen(self: &Arc<Self>, listen_id: &RequestId, asked: Filter) -> Listening {
        let caps = self
            .init
            .get()
            .map(|i| i["capabilities"].clone())
            .unwrap_or(Value::Null);
        let granted = Filter {
            tools: asked.tools && caps["tools"]["listChanged"] == json!(true),
            prompts: asked.prompts && caps["prompts"]["listChanged"] == json!(true),
            resources: asked.resources && caps["resources"]["listChanged"] == json!(true),
            uris: if caps["resources"]["subscribe"] == json!(true) {
                asked.uris
            } else {
                Vec::new()
            },
        };
        let subscription = id_value(listen_id);
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let (id, new_uris) = {
            let mut t = self.table();
            let id = t.next_listener;
            t.next_listener += 1;
            let mut new_uris = Vec::new();
            for u in &granted.uris {
                let n = t.subscribed.entry(u.clone()).or_insert(0);
                *n += 1;
                if *n == 1 {
                    new_uris.push(u.clone());
                }
            }
            t.listeners.insert(
                id,
                Listener {
                    filter: granted.clone(),
                    subscription: subscription.clone(),
                    tx,
                },
            );
            (id, new_uris)
        };
        self.touch();
        for uri in new_uris {
            self.internal("resources/subscribe", json!({ "uri": uri }))
                .await;
        }
        let ack = json!({"jsonrpc":"2.0","method":"notifications/subscriptions/acknowledged",
            "params":{"notifications": granted.to_json(), "_meta": {SUBSCRIPTION_ID: subscription}}});
        let ack = Frame::parse_single(Bytes::from(ack.to_string()))
            .expect("a valid JSON-RPC notification");
        Listening {
            ack,
            rx,
            guard: ListenGuard {
                held: self.clone(),
                id,
            },
        }
    }

    fn unlisten(self: &Arc<Self>, id: u64) {
        let gone = {
            let mut t = self.table();
            let Some(l) = t.listeners.remove(&id) else {
                return;
            };
            let mut gone = Vec::new();
            for u in l.filter.uris {
                if let Some(n) = t.subscribed.get_mut(&u) {
                    *n -= 1;
                    if *n == 0 {
                        t.subscribed.remove(&u);
                        gone.push(u);
                    }
                }
            }
            gone
        };
        self.touch();
        if gone.is_empty() || !self.alive() {
            return;
        }
        let held = self.clone();
        self.core.tracker().spawn(async move {
            for uri in gone {
                held.internal("resources/unsubscribe", json!({ "uri": uri }))
                    .await;
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

    /// Route one server frame (after the pipeline).
    async fn on_frame(&self, frame: Frame, via: &Via) {
        match frame.kind() {
            FrameKind::Response | FrameKind::Error => self.route_reply(frame).await,
            FrameKind::Request => self.answer_server_request(frame, via).await,
            FrameKind::Notification => self.route_notification(frame, via),
        }
    }

    async fn route_reply(&self, frame: Frame) {
        let w = {
            let mut t = self.table();
            let Some(id) = frame.id() else {
                return;
            };
            match t.waiting.remove(id) {
                Some(w) => w,
                None => {
                    // Answered while its client is away for input: kept for the retry.
                    match t.suspended.values_mut().find(|s| s.uid == *id) {
                        Some(s) => s.done = Some(frame),
                        None => tracing::debug!(%id, "an answer for no waiting request; dropped"),
                    }
                    return;
                }
            }
        };
        self.touch();
        let out = if &*w.method == "initialize" {
            frame
        } else {
            match envelope::modern_answer(&frame, &w.client_id, &w.method, self.server_info()) {
                Ok(f) => f,
                Err(e) => error_frame(
                    Some(&w.client_id),
                    UPSTREAM_ERROR,
                    &format!("the server's answer could not be translated: {e}"),
                ),
            }
        };
        // The answer must arrive: wait for room (in a task, so a slow client never stalls the
        // other requests of this session).
        if let Err(mpsc::error::TrySendError::Full(out)) = w.tx.try_send(out) {
            let tx = w.tx.clone();
            self.core.tracker().spawn(async move {
                let _ = tx.send(out).await;
            });
        }
    }

    async fn answer_server_request(&self, frame: Frame, via: &Via) {
        let method = frame.method().unwrap_or("");
        let id = frame.id().cloned();
        if mrtr::INPUT_METHODS.contains(&method) && self.suspend(&frame, via) {
            return;
        }
        let answer = if method == "ping" {
            let v = json!({"jsonrpc":"2.0","id": id.as_ref().map(id_value),"result":{}});
            Frame::parse_single(Bytes::from(v.to_string())).ok()
        } else {
            tracing::info!(
                method,
                "a server request on a held session cannot reach a 2026-07-28 client"
            );
            let msg = format!(
                "`{method}` is not available: the client speaks 2026-07-28 through Shadowcat, \
                 which holds this session for it; server requests reach it only as input for \
                 one of its tools/call, prompts/get or resources/read requests in flight"
            );
            Some(error_frame(id.as_ref(), METHOD_NOT_FOUND, &msg))
        };
        if let Some(a) = answer
            && let Err(e) = self.core.from_client(a).await
        {
            tracing::debug!(error = %e, "could not answer a server request");
        }
    }

    fn route_notification(&self, frame: Frame, via: &Via) {
        let method = frame.method().unwrap_or("").to_string();
        let method = method.as_str();
        match method {
            "notifications/progress" => {
                let t = self.table();
                let Some(w) = frame.progress_token().and_then(|tok| t.waiting.get(tok)) else {
                    return;
                };
                let Some(token) = &w.client_token else {
                    return;
                };
                if let Ok(f) = envelope::with_progress_token(&frame, token) {
                    offer(&w.tx, f, method);
                }
            }
            "notifications/message" => {
                let level = log_level(&frame);
                let t = self.table();
                let w = match via {
                    Via::Request(id) => t.waiting.get(id),
                    _ => {
                        // The proxy's own requests have nobody listening.
                        let mut client = t.waiting.values().filter(|w| !w.tx.is_closed());
                        match (client.next(), client.next()) {
                            (Some(w), None) => Some(w),
                            _ => None,
                        }
                    }
                };
                if let Some(w) = w
                    && let (Some(min), Some(l)) = (w.log_level, level)
                    && l >= min
                {
                    offer(&w.tx, frame, method);
                }
            }
            _ => {
                let t = self.table();
                let mut any = false;
                for l in t.listeners.values().filter(|l| l.filter.wants(&frame)) {
                    any = true;
                    if let Ok(f) =
                        envelope::with_meta(&frame, SUBSCRIPTION_ID, l.subscription.clone())
                    {
                        offer(&l.tx, f, method);
                    }
                }
                if !any {
                    tracing::debug!(
                        method,
                        "no 2026-07-28 client asked for this notification; dropped"
                    );
                }
            }
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
        let mut tick = tokio::time::interval(period);
        let cancel = self.core.cancel_token().clone();
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(UpstreamEvent::Frame { frame, via }) => {
                        if let Some(f) = self.core.from_server(frame).await {
                            self.on_frame(f, &via).await;
                        }
                    }
                    Some(UpstreamEvent::Closed { reason, .. }) => return reason,
                    None => return "the upstream is gone".into(),
                },
                _ = tick.tick() => {
                    self.expire(idle).await;
                    if self.idle_for().is_some_and(|d| d >= idle) {
                        return "idle".into();
                    }
                }
                _ = cancel.cancelled() => return "the proxy is shutting down".into(),
            }
        }
    }

    /// After the pump: tell everyone still waiting, stop the upstream, end the record.
    pub async fn finish(&self, reason: &str, records: &Records) {
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
        records.ended(self.core.id()).await;
    }
}

fn request_frame(id: &RequestId, method: &str, params: Value) -> Frame {
    let v = json!({"jsonrpc":"2.0","id": id_value(id),"method": method,"params": params});
    Frame::parse_single(Bytes::from(v.to_string())).expect("a valid JSON-RPC request")
}

fn log_level(frame: &Frame) -> Option<usize> {
    let v: Value = serde_json::from_slice(frame.raw()).ok()?;
    severity(v["params"]["level"].as_str()?)
}

/// Hand a notification to a stream without waiting: a full stream loses it (logged), it never
/// stalls the session.
fn offer(tx: &mpsc::Sender<Frame>, frame: Frame, method: &str) {
    if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(frame) {
        tracing::warn!(
            method,
            "a 2026-07-28 client's stream is full; notification dropped"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(v: Value) -> Frame {
        Frame::parse_single(Bytes::from(v.to_string())).unwrap()
    }

    #[test]
    fn filters_parse_serialise_and_match() {
        let f = Filter::parse(&json!({"notifications":{"toolsListChanged":true,
            "resourceSubscriptions":["demo://a"]}}));
        assert!(f.tools && !f.prompts && !f.resources);
        assert_eq!(f.uris, vec!["demo://a".to_string()]);
        assert_eq!(
            f.to_json(),
            json!({"toolsListChanged":true,"resourceSubscriptions":["demo://a"]})
        );
        assert!(f.wants(&frame(
            json!({"jsonrpc":"2.0","method":"notifications/tools/list_changed"})
        )));
        assert!(!f.wants(&frame(
            json!({"jsonrpc":"2.0","method":"notifications/prompts/list_changed"})
        )));
        assert!(f.wants(&frame(json!({"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"uri":"demo://a"}}))));
        assert!(!f.wants(&frame(json!({"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"uri":"demo://b"}}))));
        assert_eq!(Filter::parse(&json!({})).to_json(), json!({}));
    }

    #[test]
    fn log_levels_are_ordered() {
        assert!(severity("error") > severity("info"));
        assert_eq!(severity("nope"), None);
        let f = frame(
            json!({"jsonrpc":"2.0","method":"notifications/message","params":{"level":"warning","data":"x"}}),
        );
        assert_eq!(log_level(&f), severity("warning"));
    }
}
