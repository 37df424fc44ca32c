//! A shared stdio pool (`share = K`): K children serve every session of one stdio upstream,
//! instead of a child per session.
//!
//! Each session is a *leg* ([`SharedLeg`]) of one slot of the pool (the slot with the fewest
//! legs when it joins). A slot's child is started lazily by the first request that needs it and
//! initialized once by the pool itself; every session's `initialize` is answered from that
//! handshake. Between the legs and the child:
//!
//! * client requests get an id of the slot's own (an integer), and a progress token the same
//!   integer; answers and progress get the session's own back and go to that session only;
//!   `notifications/cancelled` is passed on for the session's own requests only;
//! * `logging/setLevel` is answered per session (the child is set to the most verbose level
//!   asked for), `notifications/message` reaches the sessions whose level admits it — the one
//!   busy session, or every session when none is busy; while several are busy nobody gets it;
//! * `resources/subscribe` is counted per URI (the child is unsubscribed with the last
//!   session), `notifications/resources/updated` reaches the subscribers only, `list_changed`
//!   every session of the child;
//! * requests from the child (sampling, elicitation, roots) go to the one session with requests
//!   in flight (or the only session), and only if it declared the capability; otherwise the child
//!   gets a JSON-RPC error saying why (never a guess: that would hand one tenant's request to
//!   another). `ping` is answered by the pool;
//! * a session that does not keep up (its channel full) is ended rather than stalling the child
//!   for everyone;
//! * a child that exits fails the requests in flight on it (each session gets a JSON-RPC error)
//!   and the next request of any session starts a new one, re-initialized, with the
//!   subscriptions and log level of the sessions still there.
//!
//! The children run under the front's token ([`UpstreamCtx::front_cancel`]), not a session's:
//! they stop once the front's sessions have ended, and when the pool is dropped.

use super::stdio::StdioUpstream;
use super::{ChildEnv, UpstreamCtx, UpstreamEvent, Via};
use crate::error::ProxyError;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use shadowcat_proto::error::error_frame;
use shadowcat_proto::error::{INTERNAL_ERROR, INVALID_PARAMS, METHOD_NOT_FOUND, UPSTREAM_ERROR};
use shadowcat_proto::{Frame, FrameKind, RequestId};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Most children one pool may run.
pub const MAX_SHARE: usize = 64;
/// How long a child gets to answer the pool's `initialize`.
const INIT_DEADLINE: Duration = Duration::from_secs(30);
/// Most requests in flight at one child (all its sessions together).
const MAX_PENDING: usize = 10_000;
/// Most requests of a child waiting for a session's answer.
const MAX_ASKED: usize = 1024;
/// The version asked for when the first request is not an `initialize`.
const DEFAULT_VERSION: &str = "2025-11-25";

/// A stdio upstream whose children are shared by all its sessions. Compared by identity: two
/// pools are the same upstream only if they are the same pool.
#[derive(Clone)]
pub struct SharedStdio(pub Arc<StdioPool>);

impl PartialEq for SharedStdio {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for SharedStdio {}

impl std::fmt::Debug for SharedStdio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The program only: arguments may carry secrets.
        f.debug_struct("SharedStdio")
            .field("program", &self.0.describe())
            .field("share", &self.0.slots.len())
            .finish_non_exhaustive()
    }
}

/// The K children of one shared stdio upstream and the sessions on each.
pub struct StdioPool {
    command: String,
    args: Vec<String>,
    env: ChildEnv,
    slots: Box<[Arc<Slot>]>,
    next_leg: AtomicU64,
}

impl StdioPool {
    /// A pool of `share` children (1..=[`MAX_SHARE`]) of `command args`, none started yet.
    pub fn new(command: String, args: Vec<String>, env: ChildEnv, share: usize) -> StdioPool {
        let slots = (0..share.clamp(1, MAX_SHARE))
            .map(|index| {
                Arc::new(Slot {
                    index,
                    state: Mutex::new(State::default()),
                    starting: tokio::sync::Mutex::new(()),
                })
            })
            .collect();
        StdioPool {
            command,
            args,
            env,
            slots,
            next_leg: AtomicU64::new(1),
        }
    }

    /// The program's name (no arguments: they may hold secrets).
    pub fn describe(&self) -> String {
        shadowcat_tape::redact::command_label(&self.command)
    }

    /// The program and its arguments (configuration checks tell two upstreams apart by them).
    pub fn command(&self) -> (&str, &[String]) {
        (&self.command, &self.args)
    }

    /// How many children it may run.
    pub fn share(&self) -> usize {
        self.slots.len()
    }

    /// Children running now.
    pub fn running(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.lock().child.as_ref().is_some_and(|c| c.alive()))
            .count()
    }

    /// Sessions on the pool now.
    pub fn sessions(&self) -> usize {
        self.slots.iter().map(|s| s.lock().legs.len()).sum()
    }

    /// A new session joins the slot with the fewest sessions; its server frames go to
    /// `events`. No child is started here: the session's first request does that.
    pub(super) fn join(
        self: &Arc<Self>,
        ctx: UpstreamCtx,
        events: mpsc::Sender<UpstreamEvent>,
    ) -> SharedLeg {
        let id = self.next_leg.fetch_add(1, Ordering::Relaxed);
        let slot = self
            .slots
            .iter()
            .min_by_key(|s| s.lock().legs.len())
            .cloned()
            .unwrap_or_else(|| self.slots[0].clone());
        slot.lock().legs.insert(
            id,
            LegState {
                tx: events,
                caps: Caps::default(),
                level: None,
                subs: HashSet::new(),
                busy: 0,
                ready: false,
            },
        );
        tracing::debug!(session = %ctx.session, slot = slot.index, "session joined a shared stdio child");
        SharedLeg {
            pool: self.clone(),
            slot,
            id,
            ctx,
            left: AtomicBool::new(false),
        }
    }
}

impl Drop for StdioPool {
    fn drop(&mut self) {
        // A pool replaced (or the proxy ending) takes its children with it.
        for s in self.slots.iter() {
            if let Some(c) = s.lock().child.take() {
                c.stop.cancel();
            }
        }
    }
}

/// One child's place in the pool, and the sessions on it.
struct Slot {
    index: usize,
    state: Mutex<State>,
    /// Held while a child is started (spawn + handshake), so that one is started at a time.
    starting: tokio::sync::Mutex<()>,
}

/// A log level (RFC 5424 severities, as MCP names them), least severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Debug,
    Info,
    Notice,
    Warning,
    Error,
    Critical,
    Alert,
    Emergency,
}

impl Level {
    fn parse(s: &str) -> Option<Level> {
        Some(match s {
            "debug" => Level::Debug,
            "info" => Level::Info,
            "notice" => Level::Notice,
            "warning" => Level::Warning,
            "error" => Level::Error,
            "critical" => Level::Critical,
            "alert" => Level::Alert,
            "emergency" => Level::Emergency,
            _ => return None,
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Notice => "notice",
            Level::Warning => "warning",
            Level::Error => "error",
            Level::Critical => "critical",
            Level::Alert => "alert",
            Level::Emergency => "emergency",
        }
    }
}

/// What a session declared it can do for the server (from its `initialize`).
#[derive(Debug, Default, Clone, Copy)]
struct Caps {
    sampling: bool,
    elicitation: bool,
    roots: bool,
}

struct LegState {
    tx: mpsc::Sender<UpstreamEvent>,
    caps: Caps,
    /// Set by its `logging/setLevel` (`None`: never set, it gets what the child sends).
    level: Option<Level>,
    /// URIs it subscribed to.
    subs: HashSet<Arc<str>>,
    /// Its requests in flight at the child.
    busy: usize,
    /// Its handshake is over (its `notifications/initialized` came): until then the child's
    /// requests and broadcasts are not for it (a client gets nothing before its `initialize`
    /// answer).
    ready: bool,
}

/// A request sent to the child, by the slot's id for it.
enum Pending {
    /// A session's request.
    Client {
        leg: u64,
        id: RequestId,
        method: Arc<str>,
        /// The session's own progress token, if it asked for progress.
        token: Option<RequestId>,
        /// A `resources/subscribe` of this URI (undone if the child refuses it).
        subscribe: Option<Arc<str>>,
        generation: u64,
    },
    /// The pool's own (`logging/setLevel`, `resources/subscribe|unsubscribe`): the answer is
    /// only logged.
    Own { generation: u64 },
    /// The pool's `initialize` of a new child.
    Init {
        tx: oneshot::Sender<Frame>,
        generation: u64,
    },
}

impl Pending {
    fn generation(&self) -> u64 {
        match self {
            Pending::Client { generation, .. }
            | Pending::Own { generation }
            | Pending::Init { generation, .. } => *generation,
        }
    }
}

/// The handshake every session is answered with.
struct Handshake {
    /// The version children are asked for (the first session's).
    version: String,
    /// The `result` of the first child's `initialize` answer, as it came.
    result: Box<RawValue>,
    /// Whether the server declares `logging` (else `logging/setLevel` goes to it as it is).
    logging: bool,
}

#[derive(Default)]
struct State {
    child: Option<Arc<Child>>,
    generation: u64,
    next_id: i64,
    legs: HashMap<u64, LegState>,
    pending: HashMap<i64, Pending>,
    /// (session, its request id) → the slot's id, for cancellation.
    by_leg: HashMap<(u64, RequestId), i64>,
    /// The child's requests routed to a session: child's id → (session, child generation).
    asked: HashMap<RequestId, (u64, u64)>,
    /// URI → sessions subscribed to it.
    subscriptions: HashMap<Arc<str>, usize>,
    /// The level the child was last set to.
    level: Option<Level>,
    handshake: Option<Arc<Handshake>>,
}

impl State {
    fn next_id(&mut self) -> i64 {
        self.next_id += 1;
        self.next_id
    }

    /// The most verbose level any session asked for.
    fn wanted_level(&self) -> Option<Level> {
        self.legs.values().filter_map(|l| l.level).min()
    }

    /// The sessions past their handshake.
    fn ready_legs(&self) -> impl Iterator<Item = (&u64, &LegState)> {
        self.legs.iter().filter(|(_, l)| l.ready)
    }

    /// The sessions (past their handshake) with requests in flight.
    fn busy_legs(&self) -> Vec<u64> {
        self.ready_legs()
            .filter(|(_, l)| l.busy > 0)
            .map(|(id, _)| *id)
            .collect()
    }

    /// The one session a request or log message of the child can be attributed to: the only
    /// one with requests in flight, or the only session at all.
    fn attributed(&self) -> Result<u64, Unattributed> {
        let busy = self.busy_legs();
        let ready: Vec<u64> = self.ready_legs().map(|(id, _)| *id).collect();
        match (busy.as_slice(), ready.as_slice()) {
            ([one], _) => Ok(*one),
            ([], [one]) => Ok(*one),
            ([], []) => Err(Unattributed::NoneReady),
            ([], n) => Err(Unattributed::AllIdle(n.len())),
            (many, _) => Err(Unattributed::ManyBusy(many.len())),
        }
    }

    /// The level the child should be at for what the sessions want now: `Some` when it must
    /// be told (recorded as told).
    fn level_change(&mut self) -> Option<Level> {
        let want = self.wanted_level()?;
        if self.level == Some(want) {
            return None;
        }
        self.level = Some(want);
        Some(want)
    }

    /// A request of the pool's own, registered for the current child.
    fn own_request(&mut self, method: &str, params: serde_json::Value) -> Option<Frame> {
        let generation = self.child.as_ref()?.generation;
        let n = self.next_id();
        self.pending.insert(n, Pending::Own { generation });
        let v = serde_json::json!({"jsonrpc": "2.0", "id": n, "method": method, "params": params});
        Frame::parse_single(Bytes::from(v.to_string())).ok()
    }

    /// Forget session `leg`: its requests at the child are cancelled, its subscriptions
    /// dropped (the child unsubscribed from a URI nobody wants any more), the child's level
    /// lowered to what the others want, its pending server requests refused. Returns the
    /// frames for the child, and the session's state.
    fn remove_leg(&mut self, leg: u64) -> (Option<LegState>, Vec<Frame>) {
        let Some(state) = self.legs.remove(&leg) else {
            return (None, Vec::new());
        };
        let mut out = Vec::new();
        let current = self.child.as_ref().map(|c| c.generation);
        let mine: Vec<(u64, RequestId)> = self
            .by_leg
            .keys()
            .filter(|(l, _)| *l == leg)
            .cloned()
            .collect();
        for key in mine {
            let Some(n) = self.by_leg.remove(&key) else {
                continue;
            };
            if let Some(p) = self.pending.remove(&n)
                && Some(p.generation()) == current
            {
                let v = serde_json::json!({
                    "jsonrpc": "2.0",
                    "method": "notifications/cancelled",
                    "params": {"requestId": n, "reason": "the client's session ended"},
                });
                out.extend(Frame::parse_single(Bytes::from(v.to_string())).ok());
            }
        }
        for uri in &state.subs {
            if release(&mut self.subscriptions, uri) {
                out.extend(
                    self.own_request("resources/unsubscribe", serde_json::json!({"uri": &**uri})),
                );
            }
        }
        if state.level.is_some()
            && let Some(level) = self.level_change()
        {
            out.extend(self.own_request(
                "logging/setLevel",
                serde_json::json!({"level": level.as_str()}),
            ));
        }
        let asked: Vec<RequestId> = self
            .asked
            .iter()
            .filter(|(_, (l, _))| *l == leg)
            .map(|(id, _)| id.clone())
            .collect();
        for id in asked {
            if let Some((_, g)) = self.asked.remove(&id)
                && Some(g) == current
            {
                out.push(error_frame(
                    Some(&id),
                    INTERNAL_ERROR,
                    "the client's session ended before it answered",
                ));
            }
        }
        (Some(state), out)
    }
}

/// One fewer session subscribed to `uri`: `true` when it was the last.
fn release(subscriptions: &mut HashMap<Arc<str>, usize>, uri: &Arc<str>) -> bool {
    match subscriptions.get_mut(uri) {
        Some(n) if *n > 1 => {
            *n -= 1;
            false
        }
        Some(_) => {
            subscriptions.remove(uri);
            true
        }
        None => false,
    }
}

/// A frame for a session, and what of its own it gets back first.
struct Delivery {
    leg: u64,
    tx: mpsc::Sender<UpstreamEvent>,
    frame: Frame,
    fix: Fix,
}

/// What a frame for a session gets back before it is delivered.
enum Fix {
    None,
    /// The session's request id (an answer).
    Id(RequestId),
    /// The session's progress token (a progress notification).
    Token(RequestId),
}

impl Delivery {
    fn plain(leg: u64, tx: mpsc::Sender<UpstreamEvent>, frame: Frame) -> Delivery {
        Delivery::fixed(leg, tx, frame, Fix::None)
    }

    fn fixed(leg: u64, tx: mpsc::Sender<UpstreamEvent>, frame: Frame, fix: Fix) -> Delivery {
        Delivery {
            leg,
            tx,
            frame,
            fix,
        }
    }
}

/// One running child.
struct Child {
    upstream: StdioUpstream,
    generation: u64,
    /// Stops it (close stdin → SIGTERM → SIGKILL).
    stop: CancellationToken,
    /// Cleared (under the slot's lock) once it exited and its requests were failed.
    alive: AtomicBool,
}

impl Child {
    fn alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Queue a frame of the pool's own for the child without waiting (the demultiplexer must
    /// never wait on the child's stdin: the child may be waiting for its stdout to be read).
    fn queue(self: &Arc<Self>, frames: Vec<Frame>) {
        for f in frames {
            if let Some(raw) = self.upstream.try_queue(f.into_raw()) {
                // Full: a task waits for room (rare: only while the child reads slowly).
                let me = self.clone();
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move { me.upstream.send_raw(raw).await });
                }
            }
        }
    }
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    /// The running child, started (and initialized) first if there is none. `version`: the
    /// protocol version a first session asks for.
    async fn child(
        self: &Arc<Self>,
        pool: &StdioPool,
        ctx: &UpstreamCtx,
        version: Option<&str>,
    ) -> Result<Arc<Child>, ProxyError> {
        if let Some(c) = self.lock().child.clone().filter(|c| c.alive()) {
            return Ok(c);
        }
        let _starting = self.starting.lock().await;
        if let Some(c) = self.lock().child.clone().filter(|c| c.alive()) {
            return Ok(c);
        }
        self.start(pool, ctx, version).await
    }

    async fn start(
        self: &Arc<Self>,
        pool: &StdioPool,
        ctx: &UpstreamCtx,
        version: Option<&str>,
    ) -> Result<Arc<Child>, ProxyError> {
        let program = pool.describe();
        let (generation, version) = {
            let mut st = self.lock();
            st.generation += 1;
            let v = st
                .handshake
                .as_ref()
                .map(|h| h.version.clone())
                .or_else(|| version.map(str::to_owned))
                .unwrap_or_else(|| DEFAULT_VERSION.to_owned());
            (st.generation, v)
        };
        let stop = ctx.front_cancel.child_token();
        let child_ctx = UpstreamCtx {
            session: Arc::from(format!("shared {program}#{}", self.index)),
            cancel: stop.clone(),
            tracker: ctx.tracker.clone(),
            http: ctx.http.clone(),
            options: ctx.options.clone(),
            guard: None,
            front_cancel: ctx.front_cancel.clone(),
        };
        let (tx, rx) = mpsc::channel(ctx.options.channel_capacity.max(64));
        // Its spans are its own, not those of the request that happened to start it.
        let upstream =
            StdioUpstream::spawn_root(&pool.command, &pool.args, &pool.env, child_ctx, tx)?;
        let child = Arc::new(Child {
            upstream,
            generation,
            stop,
            alive: AtomicBool::new(true),
        });
        let span = tracing::info_span!(parent: None, "shared", program = %program, slot = self.index, generation);
        ctx.tracker
            .spawn(demux(self.clone(), child.clone(), rx).instrument(span));
        match self.handshake(&child, &version).await {
            Ok(()) => {
                tracing::info!(%program, slot = self.index, generation, "shared stdio child ready");
                Ok(child)
            }
            Err(e) => {
                child.stop.cancel();
                Err(e)
            }
        }
    }

    /// Initialize a new child, make it the slot's, and give it the sessions' subscriptions and
    /// log level.
    async fn handshake(
        self: &Arc<Self>,
        child: &Arc<Child>,
        version: &str,
    ) -> Result<(), ProxyError> {
        let (tx, rx) = oneshot::channel();
        let n = {
            let mut st = self.lock();
            if !child.alive() {
                return Err(exited_early());
            }
            let n = st.next_id();
            st.pending.insert(
                n,
                Pending::Init {
                    tx,
                    generation: child.generation,
                },
            );
            n
        };
        let init = serde_json::json!({
            "jsonrpc": "2.0",
            "id": n,
            "method": "initialize",
            "params": {
                "protocolVersion": version,
                "capabilities": {"roots": {"listChanged": true}, "sampling": {}, "elicitation": {}},
                "clientInfo": {"name": "shadowcat", "version": env!("CARGO_PKG_VERSION")},
            },
        });
        let frame = Frame::parse_single(Bytes::from(init.to_string()))
            .map_err(|e| ProxyError::UpstreamProtocol(e.to_string()))?;
        child.upstream.send(frame).await?;
        let answer = match tokio::time::timeout(INIT_DEADLINE, rx).await {
            Ok(Ok(a)) => a,
            Ok(Err(_)) => return Err(exited_early()),
            Err(_) => {
                self.lock().pending.remove(&n);
                return Err(ProxyError::UpstreamConnect(format!(
                    "the shared server process did not answer `initialize` within {} s",
                    INIT_DEADLINE.as_secs()
                )));
            }
        };
        let result = read_init(&answer)?;
        let initialized = Frame::parse_single(Bytes::from_static(
            br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        ))
        .map_err(|e| ProxyError::UpstreamProtocol(e.to_string()))?;
        child.upstream.send(initialized).await?;
        let again = {
            let mut st = self.lock();
            if !child.alive() {
                return Err(exited_early());
            }
            if st.handshake.is_none() {
                st.handshake = Some(Arc::new(result));
            }
            st.child = Some(child.clone());
            st.level = None;
            let mut again = Vec::new();
            let uris: Vec<Arc<str>> = st.subscriptions.keys().cloned().collect();
            for uri in uris {
                again.extend(
                    st.own_request("resources/subscribe", serde_json::json!({"uri": &*uri})),
                );
            }
            if let Some(level) = st.level_change() {
                again.extend(st.own_request(
                    "logging/setLevel",
                    serde_json::json!({"level": level.as_str()}),
                ));
            }
            again
        };
        child.queue(again);
        Ok(())
    }

    /// A frame from child `child`.
    fn child_frame(&self, child: &Arc<Child>, frame: Frame) {
        let mut deliver: Vec<Delivery> = Vec::new();
        let mut to_child = Vec::new();
        {
            let mut st = self.lock();
            match frame.kind() {
                FrameKind::Response | FrameKind::Error => {
                    self.answer(&mut st, child, frame, &mut deliver);
                }
                FrameKind::Request => {
                    if let Some(refusal) = self.server_request(&mut st, child, &frame, &mut deliver)
                    {
                        to_child.push(refusal);
                    }
                }
                FrameKind::Notification => self.notification(&mut st, frame, &mut deliver),
            }
        }
        child.queue(to_child);
        self.deliver(deliver);
    }

    /// The child answered one of the slot's requests.
    fn answer(
        &self,
        st: &mut State,
        child: &Arc<Child>,
        frame: Frame,
        deliver: &mut Vec<Delivery>,
    ) {
        let Some(RequestId::Number(n)) = frame.id().cloned() else {
            tracing::debug!("dropping an answer to no request of the pool");
            return;
        };
        match st.pending.remove(&n) {
            Some(Pending::Client {
                leg,
                id,
                subscribe,
                generation,
                ..
            }) if generation == child.generation => {
                st.by_leg.remove(&(leg, id.clone()));
                let Some(l) = st.legs.get_mut(&leg) else {
                    return;
                };
                l.busy = l.busy.saturating_sub(1);
                if frame.kind() == FrameKind::Error
                    && let Some(uri) = subscribe
                    && l.subs.remove(&uri)
                {
                    release(&mut st.subscriptions, &uri);
                }
                let tx = l.tx.clone();
                deliver.push(Delivery::fixed(leg, tx, frame, Fix::Id(id)));
            }
            Some(Pending::Init { tx, .. }) => {
                let _ = tx.send(frame);
            }
            Some(Pending::Own { .. }) => {
                if frame.kind() == FrameKind::Error {
                    tracing::debug!(answer = %String::from_utf8_lossy(frame.raw()), "the shared server refused a request of the pool's own");
                }
            }
            Some(_) | None => tracing::debug!(id = n, "dropping a late answer"),
        }
    }

    /// A request of the child (sampling, elicitation, roots, ping): routed to the one session
    /// it can be for, or refused (the returned answer goes to the child).
    fn server_request(
        &self,
        st: &mut State,
        child: &Arc<Child>,
        frame: &Frame,
        deliver: &mut Vec<Delivery>,
    ) -> Option<Frame> {
        let id = frame.id()?;
        let method = frame.method().unwrap_or("");
        if method == "ping" {
            let answer = format!(r#"{{"jsonrpc":"2.0","id":{},"result":{{}}}}"#, id_json(id));
            return Frame::parse_single(Bytes::from(answer)).ok();
        }
        let capability: fn(&Caps) -> bool = match method {
            "sampling/createMessage" => |c| c.sampling,
            "elicitation/create" => |c| c.elicitation,
            "roots/list" => |c| c.roots,
            _ => {
                let msg =
                    format!("`{method}` is not routed to clients by a shared stdio server pool");
                return Some(error_frame(Some(id), METHOD_NOT_FOUND, &msg));
            }
        };
        let leg = match st.attributed() {
            Ok(leg) => leg,
            Err(why) => {
                tracing::info!(method, "refused a request of a shared server: {why}");
                return Some(error_frame(
                    Some(id),
                    INTERNAL_ERROR,
                    &format!("`{method}` refused: {why}"),
                ));
            }
        };
        let Some(l) = st.legs.get(&leg) else {
            return Some(error_frame(Some(id), INTERNAL_ERROR, "the session is gone"));
        };
        if !capability(&l.caps) {
            let msg =
                format!("`{method}` refused: the client's session did not declare that capability");
            return Some(error_frame(Some(id), METHOD_NOT_FOUND, &msg));
        }
        if st.asked.len() >= MAX_ASKED || st.asked.contains_key(id) {
            let msg = "too many requests of the server wait for a client's answer";
            return Some(error_frame(Some(id), INTERNAL_ERROR, msg));
        }
        let tx = l.tx.clone();
        st.asked.insert(id.clone(), (leg, child.generation));
        deliver.push(Delivery::plain(leg, tx, frame.clone()));
        None
    }

    /// A notification of the child, to the sessions it is for.
    fn notification(&self, st: &mut State, frame: Frame, deliver: &mut Vec<Delivery>) {
        let method = frame.method().unwrap_or("");
        let to = |st: &State, leg: u64| st.legs.get(&leg).map(|l| (leg, l.tx.clone()));
        match method {
            "notifications/progress" => {
                let Some(RequestId::Number(n)) = frame.progress_token().cloned() else {
                    return;
                };
                if let Some(Pending::Client {
                    leg,
                    token: Some(token),
                    ..
                }) = st.pending.get(&n)
                    && let Some((leg, tx)) = to(st, *leg)
                {
                    deliver.push(Delivery::fixed(leg, tx, frame, Fix::Token(token.clone())));
                }
            }
            "notifications/message" => {
                let level = log_level(&frame);
                let legs: Vec<u64> = match st.busy_legs().as_slice() {
                    [one] => vec![*one],
                    [] => st.ready_legs().map(|(id, _)| *id).collect(),
                    _ => {
                        tracing::debug!(
                            "a log message while several sessions are busy: delivered to none"
                        );
                        Vec::new()
                    }
                };
                for leg in legs {
                    let Some(l) = st.legs.get(&leg) else { continue };
                    if admits(l.level, level) {
                        deliver.push(Delivery::plain(leg, l.tx.clone(), frame.clone()));
                    }
                }
            }
            "notifications/resources/updated" => {
                let Some(uri) = updated_uri(&frame) else {
                    return;
                };
                for (leg, l) in st.ready_legs() {
                    if l.subs.contains(uri.as_str()) {
                        deliver.push(Delivery::plain(*leg, l.tx.clone(), frame.clone()));
                    }
                }
            }
            "notifications/tools/list_changed"
            | "notifications/prompts/list_changed"
            | "notifications/resources/list_changed" => {
                for (leg, l) in st.ready_legs() {
                    deliver.push(Delivery::plain(*leg, l.tx.clone(), frame.clone()));
                }
            }
            "notifications/cancelled" => {
                // The child gave up on a request of its own it routed to a session.
                if let Some(id) = frame.cancelled_id()
                    && let Some((leg, _)) = st.asked.remove(id)
                    && let Some((leg, tx)) = to(st, leg)
                {
                    deliver.push(Delivery::plain(leg, tx, frame));
                }
            }
            _ => tracing::debug!(
                method,
                "dropping a notification of a shared server that is for no one session"
            ),
        }
    }

    /// Hand frames to their sessions without waiting: a session that cannot take one (its
    /// channel full: it does not keep up) is ended rather than stalling the child for all.
    fn deliver(&self, deliver: Vec<Delivery>) {
        for Delivery {
            leg,
            tx,
            frame,
            fix,
        } in deliver
        {
            // The session's own id or token back, outside the slot's lock.
            let frame = match fix {
                Fix::None => frame,
                Fix::Id(id) => match rewrite(frame.raw(), &["id"], &id) {
                    Some(f) => f,
                    None => {
                        tracing::warn!("could not give an answer its session's id back; dropped");
                        continue;
                    }
                },
                Fix::Token(t) => match rewrite(frame.raw(), &["params", "progressToken"], &t) {
                    Some(f) => f,
                    None => continue,
                },
            };
            let ev = UpstreamEvent::Frame {
                frame: Box::new(frame),
                via: Via::Unrelated,
            };
            match tx.try_send(ev) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(
                        slot = self.index,
                        "a session does not keep up with its shared server; ending it"
                    );
                    self.end_leg(leg);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => self.end_leg(leg),
            }
        }
    }

    /// Remove a session from the slot (its channel's sender is dropped: the session sees its
    /// upstream gone once it read what is queued).
    fn end_leg(&self, leg: u64) {
        let (frames, child) = {
            let mut st = self.lock();
            let (_, frames) = st.remove_leg(leg);
            (frames, st.child.clone())
        };
        if let Some(c) = child {
            c.queue(frames);
        }
    }

    /// Child `child` exited: every request in flight on it gets an error, and the next request
    /// starts a new child.
    fn child_died(&self, child: &Child, reason: &str) {
        let mut deliver = Vec::new();
        {
            let mut st = self.lock();
            child.alive.store(false, Ordering::Release);
            if st
                .child
                .as_ref()
                .is_some_and(|c| c.generation == child.generation)
            {
                st.child = None;
                st.level = None;
            }
            let gone: Vec<i64> = st
                .pending
                .iter()
                .filter(|(_, p)| p.generation() == child.generation)
                .map(|(n, _)| *n)
                .collect();
            for n in gone {
                let Some(Pending::Client {
                    leg, id, method, ..
                }) = st.pending.remove(&n)
                else {
                    continue;
                };
                st.by_leg.remove(&(leg, id.clone()));
                let Some(l) = st.legs.get_mut(&leg) else {
                    continue;
                };
                l.busy = l.busy.saturating_sub(1);
                let msg = format!(
                    "{method} failed: the shared server process exited ({reason}); it is started again on the next request, so retrying is possible"
                );
                deliver.push(Delivery::plain(
                    leg,
                    l.tx.clone(),
                    error_frame(Some(&id), UPSTREAM_ERROR, &msg),
                ));
            }
            st.asked.retain(|_, (_, g)| *g != child.generation);
        }
        tracing::warn!(slot = self.index, generation = child.generation, %reason, failed = deliver.len(), "shared stdio child exited");
        self.deliver(deliver);
    }
}

fn exited_early() -> ProxyError {
    ProxyError::UpstreamConnect(
        "the shared server process exited before it answered `initialize`".into(),
    )
}

/// What a new child's `initialize` answer says (an error answer refuses it).
fn read_init(answer: &Frame) -> Result<Handshake, ProxyError> {
    #[derive(Deserialize)]
    struct Answer<'a> {
        #[serde(borrow)]
        result: Option<&'a RawValue>,
        error: Option<serde_json::Value>,
    }
    #[derive(Deserialize)]
    struct Result_ {
        #[serde(rename = "protocolVersion")]
        protocol_version: String,
        #[serde(default)]
        capabilities: serde_json::Map<String, serde_json::Value>,
    }
    let bad =
        |what: String| ProxyError::UpstreamConnect(format!("the shared server process {what}"));
    let text = std::str::from_utf8(answer.raw())
        .map_err(|e| bad(format!("answered `initialize` with invalid UTF-8: {e}")))?;
    let a: Answer<'_> = serde_json::from_str(text).map_err(|e| {
        bad(format!(
            "answered `initialize` with something unreadable: {e}"
        ))
    })?;
    if let Some(e) = a.error {
        let msg = e
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or("no message");
        return Err(bad(format!("refused `initialize`: {msg}")));
    }
    let result = a
        .result
        .ok_or_else(|| bad("answered `initialize` without a result".into()))?;
    let r: Result_ = serde_json::from_str(result.get()).map_err(|e| {
        bad(format!(
            "answered `initialize` with an unreadable result: {e}"
        ))
    })?;
    Ok(Handshake {
        version: r.protocol_version,
        result: result.to_owned(),
        logging: r.capabilities.contains_key("logging"),
    })
}

/// The server frames tasks read from child `child`'s events: routed until it exits.
async fn demux(slot: Arc<Slot>, child: Arc<Child>, mut rx: mpsc::Receiver<UpstreamEvent>) {
    let reason = loop {
        match rx.recv().await {
            Some(UpstreamEvent::Frame { frame, .. }) => slot.child_frame(&child, *frame),
            Some(UpstreamEvent::Closed { reason, .. }) => break reason,
            None => break "the server process is gone".to_string(),
        }
    };
    slot.child_died(&child, &reason);
}

/// One session of a shared stdio upstream.
pub struct SharedLeg {
    pool: Arc<StdioPool>,
    slot: Arc<Slot>,
    id: u64,
    ctx: UpstreamCtx,
    left: AtomicBool,
}

impl SharedLeg {
    /// A client frame.
    pub(super) async fn send(&self, frame: Frame) -> Result<(), ProxyError> {
        match frame.kind() {
            FrameKind::Request => self.request(frame).await,
            FrameKind::Notification => self.notification(frame).await,
            FrameKind::Response | FrameKind::Error => self.client_answer(frame).await,
        }
    }

    /// The session's own channel (to answer it from the pool).
    fn tx(&self) -> Result<mpsc::Sender<UpstreamEvent>, ProxyError> {
        self.slot
            .lock()
            .legs
            .get(&self.id)
            .map(|l| l.tx.clone())
            .ok_or_else(gone)
    }

    /// Answer the session from the pool (as if the server had).
    async fn reply(&self, frame: Frame) -> Result<(), ProxyError> {
        let ev = UpstreamEvent::Frame {
            frame: Box::new(frame),
            via: Via::Unrelated,
        };
        self.tx()?.send(ev).await.map_err(|_| gone())
    }

    async fn reply_result(&self, id: &RequestId, result: &str) -> Result<(), ProxyError> {
        let raw = format!(
            r#"{{"jsonrpc":"2.0","id":{},"result":{result}}}"#,
            id_json(id)
        );
        let f = Frame::parse_single(Bytes::from(raw))
            .map_err(|e| ProxyError::UpstreamProtocol(e.to_string()))?;
        self.reply(f).await
    }

    async fn child(&self, version: Option<&str>) -> Result<Arc<Child>, ProxyError> {
        self.slot.child(&self.pool, &self.ctx, version).await
    }

    async fn request(&self, frame: Frame) -> Result<(), ProxyError> {
        let Some(id) = frame.id().cloned() else {
            return Ok(());
        };
        match frame.method().unwrap_or("") {
            "initialize" => self.initialize(&id, &frame).await,
            "logging/setLevel" => self.set_level(id, frame).await,
            "resources/subscribe" => {
                let uri = frame.target().map(Arc::<str>::from);
                self.forward(frame, uri).await
            }
            "resources/unsubscribe" => self.unsubscribe(id, frame).await,
            _ => self.forward(frame, None).await,
        }
    }

    /// The session's `initialize`: answered from the child's handshake (the child started first
    /// if none is running); what the client declared is remembered for routing.
    async fn initialize(&self, id: &RequestId, frame: &Frame) -> Result<(), ProxyError> {
        let (version, caps) = read_client_init(frame);
        self.slot
            .lock()
            .legs
            .get_mut(&self.id)
            .ok_or_else(gone)?
            .caps = caps;
        self.child(version.as_deref()).await?;
        let handshake = self.slot.lock().handshake.clone();
        let h = handshake.ok_or_else(exited_early)?;
        self.reply_result(id, h.result.get()).await
    }

    async fn set_level(&self, id: RequestId, frame: Frame) -> Result<(), ProxyError> {
        self.child(None).await?;
        let logging = self
            .slot
            .lock()
            .handshake
            .as_ref()
            .is_some_and(|h| h.logging);
        if !logging {
            // The server offers no logging: it answers for itself.
            return self.forward(frame, None).await;
        }
        let Some(level) = requested_level(&frame) else {
            let f = error_frame(
                Some(&id),
                INVALID_PARAMS,
                "`level` must be one of debug, info, notice, warning, error, critical, alert, emergency",
            );
            return self.reply(f).await;
        };
        let (frames, child) = {
            let mut st = self.slot.lock();
            st.legs.get_mut(&self.id).ok_or_else(gone)?.level = Some(level);
            let frames: Vec<Frame> = st
                .level_change()
                .and_then(|l| {
                    st.own_request("logging/setLevel", serde_json::json!({"level": l.as_str()}))
                })
                .into_iter()
                .collect();
            (frames, st.child.clone())
        };
        if let Some(c) = child {
            for f in frames {
                c.upstream.send(f).await?;
            }
        }
        self.reply_result(&id, "{}").await
    }

    async fn unsubscribe(&self, id: RequestId, frame: Frame) -> Result<(), ProxyError> {
        let Some(uri) = frame.target().map(Arc::<str>::from) else {
            return self.forward(frame, None).await;
        };
        let last = {
            let mut st = self.slot.lock();
            let l = st.legs.get_mut(&self.id).ok_or_else(gone)?;
            l.subs.remove(&uri) && release(&mut st.subscriptions, &uri)
        };
        if last {
            // The last session that wanted it: the child hears it, and answers.
            self.forward(frame, None).await
        } else {
            self.reply_result(&id, "{}").await
        }
    }

    /// A request to the child under an id of the slot's own (its progress token too).
    async fn forward(&self, frame: Frame, subscribe: Option<Arc<str>>) -> Result<(), ProxyError> {
        let Some(id) = frame.id().cloned() else {
            return Ok(());
        };
        for _ in 0..2 {
            let child = self.child(None).await?;
            let n = {
                let mut st = self.slot.lock();
                if !child.alive() {
                    continue;
                }
                if st.pending.len() >= MAX_PENDING {
                    return Err(ProxyError::UpstreamConnect(format!(
                        "the shared server process has {MAX_PENDING} requests in flight; retry later"
                    )));
                }
                let n = st.next_id();
                let l = st.legs.get_mut(&self.id).ok_or_else(gone)?;
                l.busy += 1;
                if let Some(uri) = &subscribe
                    && l.subs.insert(uri.clone())
                {
                    *st.subscriptions.entry(uri.clone()).or_default() += 1;
                }
                st.pending.insert(
                    n,
                    Pending::Client {
                        leg: self.id,
                        id: id.clone(),
                        method: Arc::from(frame.method().unwrap_or("")),
                        token: frame.progress_token().cloned(),
                        subscribe: subscribe.clone(),
                        generation: child.generation,
                    },
                );
                st.by_leg.insert((self.id, id.clone()), n);
                n
            };
            let ours = RequestId::Number(n);
            let mut out = rewrite(frame.raw(), &["id"], &ours);
            if frame.progress_token().is_some() {
                out = out
                    .and_then(|f| rewrite(f.raw(), &["params", "_meta", "progressToken"], &ours));
            }
            let sent = match out {
                Some(f) => child.upstream.send(f).await,
                None => Err(ProxyError::UpstreamProtocol(
                    "the request could not be given an id of the shared pool".into(),
                )),
            };
            return match sent {
                Ok(()) => Ok(()),
                Err(e) => {
                    // Still ours to answer unless the child's exit already did.
                    let mut st = self.slot.lock();
                    if let Some(Pending::Client { subscribe, .. }) = st.pending.remove(&n) {
                        st.by_leg.remove(&(self.id, id.clone()));
                        if let Some(l) = st.legs.get_mut(&self.id) {
                            l.busy = l.busy.saturating_sub(1);
                            if let Some(uri) = subscribe
                                && l.subs.remove(&uri)
                            {
                                release(&mut st.subscriptions, &uri);
                            }
                        }
                        Err(e)
                    } else {
                        Ok(())
                    }
                }
            };
        }
        Err(ProxyError::UpstreamClosed(
            "the shared server process exited".into(),
        ))
    }

    async fn notification(&self, frame: Frame) -> Result<(), ProxyError> {
        let out = match frame.method().unwrap_or("") {
            // The pool initialized the child itself: the session is now ready for what the
            // child sends on its own.
            "notifications/initialized" => {
                if let Some(l) = self.slot.lock().legs.get_mut(&self.id) {
                    l.ready = true;
                }
                return Ok(());
            }
            "notifications/cancelled" => {
                let Some(id) = frame.cancelled_id() else {
                    return Ok(());
                };
                // Only the session's own requests in flight can be cancelled. A cancelled
                // request is forgotten at once (the server need not answer it, and an answer
                // that still comes is dropped): the session is no longer busy with it.
                let n = {
                    let mut st = self.slot.lock();
                    let n = st.by_leg.remove(&(self.id, id.clone()));
                    if let Some(n) = n
                        && st.pending.remove(&n).is_some()
                        && let Some(l) = st.legs.get_mut(&self.id)
                    {
                        l.busy = l.busy.saturating_sub(1);
                    }
                    n
                };
                let Some(n) = n else { return Ok(()) };
                match rewrite(frame.raw(), &["params", "requestId"], &RequestId::Number(n)) {
                    Some(f) => f,
                    None => return Ok(()),
                }
            }
            _ => frame,
        };
        let child = self.slot.lock().child.clone().filter(|c| c.alive());
        match child {
            Some(c) => c.upstream.send(out).await,
            None => Ok(()),
        }
    }

    /// The client answered a request of the child: passed on only if it was routed to this
    /// session (by the current child).
    async fn client_answer(&self, frame: Frame) -> Result<(), ProxyError> {
        let Some(id) = frame.id() else {
            return Ok(());
        };
        let child = {
            let mut st = self.slot.lock();
            let current = st.child.clone().filter(|c| c.alive());
            match (st.asked.get(id), current) {
                (Some((leg, g)), Some(c)) if *leg == self.id && *g == c.generation => {
                    st.asked.remove(id);
                    Some(c)
                }
                _ => None,
            }
        };
        match child {
            Some(c) => c.upstream.send(frame).await,
            None => {
                tracing::debug!(%id, "dropping a client answer to no request routed to its session");
                Ok(())
            }
        }
    }

    /// The session ends: it leaves the slot (see [`State::remove_leg`]); the child stays.
    pub(super) async fn shutdown(&self) {
        self.leave(true);
    }

    fn leave(&self, closed: bool) {
        if self.left.swap(true, Ordering::AcqRel) {
            return;
        }
        let (state, frames, child) = {
            let mut st = self.slot.lock();
            let (state, frames) = st.remove_leg(self.id);
            (state, frames, st.child.clone())
        };
        if let Some(c) = child.filter(|c| c.alive()) {
            c.queue(frames);
        }
        if closed && let Some(s) = state {
            let _ = s.tx.try_send(UpstreamEvent::Closed {
                reason: "the session ended".into(),
                exit_code: None,
            });
        }
    }
}

impl Drop for SharedLeg {
    fn drop(&mut self) {
        self.leave(false);
    }
}

fn gone() -> ProxyError {
    ProxyError::UpstreamClosed("the session left its shared server process".into())
}

/// An id as JSON text.
fn id_json(id: &RequestId) -> String {
    serde_json::to_string(id).unwrap_or_else(|_| "null".into())
}

/// What a client's `initialize` asks for: its protocol version and capabilities.
fn read_client_init(frame: &Frame) -> (Option<String>, Caps) {
    #[derive(Deserialize)]
    struct Init {
        params: Option<Params>,
    }
    #[derive(Deserialize)]
    struct Params {
        #[serde(rename = "protocolVersion")]
        protocol_version: Option<String>,
        #[serde(default)]
        capabilities: serde_json::Map<String, serde_json::Value>,
    }
    let Ok(Init { params: Some(p) }) = serde_json::from_slice::<Init>(frame.raw()) else {
        return (None, Caps::default());
    };
    let has = |k: &str| p.capabilities.get(k).is_some_and(|v| !v.is_null());
    let caps = Caps {
        sampling: has("sampling"),
        elicitation: has("elicitation"),
        roots: has("roots"),
    };
    (p.protocol_version, caps)
}

/// The level of a `logging/setLevel` request.
fn requested_level(frame: &Frame) -> Option<Level> {
    #[derive(Deserialize)]
    struct Req {
        params: P,
    }
    #[derive(Deserialize)]
    struct P {
        level: String,
    }
    let r: Req = serde_json::from_slice(frame.raw()).ok()?;
    Level::parse(&r.params.level)
}

/// The level of a `notifications/message` (`None`: unreadable).
fn log_level(frame: &Frame) -> Option<Level> {
    requested_level(frame)
}

/// Whether a session whose level is `want` gets a message at `level`. A message whose level
/// cannot be read reaches only sessions that set no level.
fn admits(want: Option<Level>, level: Option<Level>) -> bool {
    match (want, level) {
        (None, _) => true,
        (Some(w), Some(l)) => l >= w,
        (Some(_), None) => false,
    }
}

/// The URI of a `notifications/resources/updated`.
fn updated_uri(frame: &Frame) -> Option<String> {
    #[derive(Deserialize)]
    struct N {
        params: P,
    }
    #[derive(Deserialize)]
    struct P {
        uri: String,
    }
    serde_json::from_slice::<N>(frame.raw())
        .ok()
        .map(|n| n.params.uri)
}

/// An object key, borrowed when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// A JSON object's members in order, their values unparsed.
struct Members<'a>(Vec<(Key<'a>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Members<'de>, A::Error> {
                let mut out = Vec::with_capacity(m.size_hint().unwrap_or(4));
                while let Some((k, v)) = m.next_entry::<Key<'de>, &'de RawValue>()? {
                    out.push((k, v));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// `text` (a JSON object) with the member at `path` set to `value` (JSON text); the member
/// must exist. Written by hand for speed: the other members (a large `result`) are copied as
/// they came, never parsed into values or re-serialised.
fn set_path(text: &str, path: &[&str], value: &str) -> Option<String> {
    let (first, rest) = path.split_first()?;
    let members: Members<'_> = serde_json::from_str(text).ok()?;
    let mut out = String::with_capacity(text.len() + value.len());
    out.push('{');
    let mut found = false;
    for (i, (k, v)) in members.0.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(&*k.0).ok()?);
        out.push(':');
        if !found && k.0 == *first {
            found = true;
            if rest.is_empty() {
                out.push_str(value);
            } else {
                out.push_str(&set_path(v.get(), rest, value)?);
            }
        } else {
            out.push_str(v.get());
        }
    }
    out.push('}');
    found.then_some(out)
}

/// `raw` with the member at `path` set to `id`, as a frame.
fn rewrite(raw: &[u8], path: &[&str], id: &RequestId) -> Option<Frame> {
    let text = std::str::from_utf8(raw).ok()?;
    let out = set_path(text, path, &id_json(id))?;
    Frame::parse_single(Bytes::from(out)).ok()
}

/// Why a request or log message of a shared child cannot be given to one of its sessions (the
/// child is answered with this, never guessed for).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum Unattributed {
    #[error(
        "no session of this server process has finished its handshake: the proxy cannot tell which one this request is for"
    )]
    NoneReady,
    #[error(
        "{0} sessions share this server process and none of them has a request in flight: the proxy cannot tell which one this request is for"
    )]
    AllIdle(usize),
    #[error(
        "{0} sessions sharing this server process have requests in flight: the proxy cannot tell which one this request is for"
    )]
    ManyBusy(usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(s: &str) -> Frame {
        Frame::parse_single(Bytes::copy_from_slice(s.as_bytes())).unwrap()
    }

    #[test]
    fn ids_and_tokens_are_rewritten_without_touching_the_rest() {
        let f = frame(
            r#"{"jsonrpc":"2.0","id":"a\"b","method":"tools/call","params":{"name":"slow","arguments":{"x":[1,2,{"id":3}]},"_meta":{"progressToken":"t","k":1}}}"#,
        );
        let g = rewrite(f.raw(), &["id"], &RequestId::Number(7)).unwrap();
        let g = rewrite(
            g.raw(),
            &["params", "_meta", "progressToken"],
            &RequestId::Number(7),
        )
        .unwrap();
        assert_eq!(
            std::str::from_utf8(g.raw()).unwrap(),
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"slow","arguments":{"x":[1,2,{"id":3}]},"_meta":{"progressToken":7,"k":1}}}"#
        );
        assert_eq!(g.id(), Some(&RequestId::Number(7)));
        assert_eq!(g.progress_token(), Some(&RequestId::Number(7)));
        let back = rewrite(g.raw(), &["id"], &RequestId::String("a\"b".into())).unwrap();
        assert_eq!(back.id(), Some(&RequestId::String("a\"b".into())));
        // A missing member is not invented.
        assert!(rewrite(f.raw(), &["params", "nope"], &RequestId::Number(1)).is_none());
    }

    #[test]
    fn levels_order_and_admit() {
        assert!(Level::Debug < Level::Error);
        assert!(admits(None, Some(Level::Debug)));
        assert!(admits(Some(Level::Info), Some(Level::Warning)));
        assert!(!admits(Some(Level::Error), Some(Level::Info)));
        assert!(!admits(Some(Level::Error), None));
        let f = frame(
            r#"{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"notice","data":"x"}}"#,
        );
        assert_eq!(log_level(&f), Some(Level::Notice));
    }

    #[test]
    fn attribution_needs_exactly_one_candidate() {
        let (tx, _rx) = mpsc::channel(1);
        let leg = |busy| LegState {
            tx: tx.clone(),
            caps: Caps::default(),
            level: None,
            subs: HashSet::new(),
            busy,
            ready: true,
        };
        let mut st = State::default();
        // A session still in its handshake is never the one (busy or not).
        st.legs.insert(
            3,
            LegState {
                ready: false,
                ..leg(1)
            },
        );
        assert!(st.attributed().is_err(), "nobody is past the handshake");
        st.legs.insert(1, leg(0));
        assert_eq!(st.attributed(), Ok(1), "the only session");
        st.legs.insert(2, leg(0));
        assert!(st.attributed().is_err(), "two idle sessions");
        st.legs.get_mut(&2).unwrap().busy = 1;
        assert_eq!(st.attributed(), Ok(2), "the one busy session");
        st.legs.get_mut(&1).unwrap().busy = 3;
        assert!(st.attributed().is_err(), "two busy sessions");
    }
}
