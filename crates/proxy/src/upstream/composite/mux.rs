//! The mux of a composite session: one task between the client's frames and the members'.
//!
//! Every request the mux sends a member is remembered under (member, id) until the member
//! answers it or fails; what the answer is for ([`Pending`]) decides where it goes. Client
//! requests routed to a member keep their id (their answers pass through untouched); requests
//! of the mux's own (handshakes, list pages) use ids `shadowcat-mux-<n>`, and a client request
//! that would collide with one is refused. Requests from a member to the client get an id of
//! the mux's own too (`<member>:<n>`), since two members may use the same one.

use super::cursor::{CursorKey, Position};
use super::names::{self, NameMap};
use super::saved::{Saved, SavedMember};
use super::{CompositeSpec, Failure, Member, MemberState};
use crate::error::ProxyError;
use crate::guard::Guard;
use crate::session::place::{
    Connected, LegHold, PlacedLeg, candidate_failed, connect_first, probe,
};
use crate::upstream::{Opened, Upstream, UpstreamCtx, UpstreamEvent, UpstreamSpec, Via};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Map, Value, json};
use shadowcat_proto::error::error_frame;
use shadowcat_proto::error::{
    INTERNAL_ERROR, INVALID_PARAMS, METHOD_NOT_FOUND, REQUEST_TIMEOUT, UPSTREAM_ERROR,
};
use shadowcat_proto::{Frame, FrameKind, RequestId};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::StreamMap;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

/// How long members get to answer the handshake, and to list one kind of item whole.
const MEMBER_DEADLINE: Duration = Duration::from_secs(30);
/// Members' `list_changed` within this window reach the client as one.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// Restarting a failed member: first delay, doubled per attempt up to the cap.
const RESTART_BASE: Duration = Duration::from_millis(500);
const RESTART_CAP: Duration = Duration::from_secs(30);
/// Most pages read from one member for one list (a member whose cursor never ends is cut off).
const MAX_PAGES: usize = 1000;
/// Most items of one merged list.
const MAX_ITEMS: usize = 100_000;
/// Calls waiting for a list to resolve their names.
const MAX_WAITING: usize = 1024;
/// Members' requests waiting for the client's answer.
const MAX_ASKED: usize = 1024;
/// Client requests the mux timed out, remembered so that their late answers are dropped.
const TIMED_OUT_KEPT: usize = 256;

/// The four lists a composite merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum List {
    Tools,
    Prompts,
    Resources,
    Templates,
}

impl List {
    const ALL: [List; 4] = [List::Tools, List::Prompts, List::Resources, List::Templates];

    fn of_method(method: &str) -> Option<List> {
        Some(match method {
            "tools/list" => List::Tools,
            "prompts/list" => List::Prompts,
            "resources/list" => List::Resources,
            "resources/templates/list" => List::Templates,
            _ => return None,
        })
    }

    fn index(self) -> usize {
        self as usize
    }

    fn method(self) -> &'static str {
        match self {
            List::Tools => "tools/list",
            List::Prompts => "prompts/list",
            List::Resources => "resources/list",
            List::Templates => "resources/templates/list",
        }
    }

    /// The key of the items in a list answer.
    fn key(self) -> &'static str {
        match self {
            List::Tools => "tools",
            List::Prompts => "prompts",
            List::Resources => "resources",
            List::Templates => "resourceTemplates",
        }
    }

    /// The member capability that offers it.
    fn capability(self) -> &'static str {
        match self {
            List::Tools => "tools",
            List::Prompts => "prompts",
            List::Resources | List::Templates => "resources",
        }
    }

    /// The field naming an item: a name, or a URI (template) exposed with its server prefix.
    fn field(self) -> &'static str {
        match self {
            List::Tools | List::Prompts => "name",
            List::Resources => "uri",
            List::Templates => "uriTemplate",
        }
    }

    fn cursor_list(self) -> u8 {
        match self {
            List::Tools => Position::TOOLS,
            List::Prompts => Position::PROMPTS,
            List::Resources => Position::RESOURCES,
            List::Templates => Position::TEMPLATES,
        }
    }

    fn names_kind(self) -> Option<names::Kind> {
        match self {
            List::Tools => Some(names::Kind::Tool),
            List::Prompts => Some(names::Kind::Prompt),
            List::Resources | List::Templates => None,
        }
    }

    /// The `list_changed` notification the client is sent when it changes.
    fn changed(self) -> &'static str {
        match self {
            List::Tools => "notifications/tools/list_changed",
            List::Prompts => "notifications/prompts/list_changed",
            List::Resources | List::Templates => "notifications/resources/list_changed",
        }
    }
}

/// The members' upstreams, shared between the mux and the session's shutdown.
pub(super) struct Legs {
    ups: Vec<Mutex<Option<Arc<Upstream>>>>,
    /// Each member's name and [`MemberState`] (as a `u8`), for whoever watches the session.
    names: Vec<Arc<str>>,
    states: Vec<AtomicU8>,
    /// The candidate of its placer each member's leg runs on.
    on: Vec<Mutex<Option<On>>>,
    /// What each member's placer keeps the leg counted on its candidate by, while it runs
    /// there ([`crate::session::place::Placer::leg_placed`]).
    held: Vec<Mutex<Option<LegHold>>>,
    cancel: CancellationToken,
}

/// The candidate a member's leg was placed on: its name, and the guard (breaker, retry budget)
/// the member's requests run under.
#[derive(Clone)]
pub(super) struct On {
    pub(super) upstream: Arc<str>,
    pub(super) guard: Option<Arc<Guard>>,
}

/// A member's leg opened on a candidate of its placer.
type Placed = Result<Connected<Opened>, ProxyError>;

/// Open member `m`'s leg for a session another replica started: a member recorded with an
/// upstream session (`saved`) continues it on the upstream it ran on, when its placer still
/// has that one and it is a Streamable HTTP server (an `auto` URL that was found to be one is
/// opened as one: nothing to detect again); `true` then. Otherwise the member is placed
/// afresh ([`open_member`]; `false`: it starts with a new `initialize`). The recorded upstream
/// is treated as a candidate of [`connect_first`] is: with failover it is first probed (an
/// HTTP leg opens without connecting, so a dead upstream would otherwise be found only by the
/// member's first request), and when it cannot be reached or opened its breaker counts the
/// failure and it is ejected before the member is placed afresh, so that placement does not
/// choose it again first.
async fn continue_member(
    m: &Member,
    ctx: UpstreamCtx,
    saved: Option<&SavedMember>,
) -> Result<(Connected<Opened>, bool), ProxyError> {
    let placer = m.placer();
    let pinned = saved
        .and_then(|s| match &s.upstream {
            Some(name) => placer.pinned(name),
            // Recorded before members had upstream sets: its one upstream.
            None => placer.plan(&ctx.session, &[]).ok()?.into_iter().next(),
        })
        .and_then(|mut c| {
            c.spec = match c.spec {
                UpstreamSpec::Http { .. } => c.spec,
                UpstreamSpec::Auto { url, headers } => UpstreamSpec::http(url, headers),
                _ => return None,
            };
            Some(c)
        });
    let Some(c) = pinned else {
        return open_member(m, ctx).await.map(|p| (p, false));
    };
    let mut ctx = ctx;
    ctx.guard = c.guard.clone();
    let probed = match placer.failover().filter(|_| placer.size() > 1) {
        Some(timeout) => probe(&c.spec, timeout).await,
        None => Ok(()),
    };
    let opened = match probed {
        Ok(()) => super::super::open(&c.spec, ctx.clone()).await,
        Err(e) => Err(e),
    };
    match opened {
        Ok(opened) => Ok((
            Connected {
                candidate: c.index,
                value: opened,
                name: c.name,
                guard: c.guard,
            },
            true,
        )),
        Err(e) => {
            tracing::warn!(server = %m.name, upstream = %c.name, error = %e, "the recorded upstream of a composite member is gone; placing it afresh");
            candidate_failed(&*placer, c.index, c.guard.as_ref(), &e);
            open_member(m, ctx).await.map(|p| (p, false))
        }
    }
}

/// What member `m`'s placer keeps leg `i` (of session `session`) counted on `placed`'s candidate
/// by; the requests in flight on it are those `shared` routed to the member.
fn leg_hold(
    m: &Member,
    placed: &Connected<Opened>,
    session: &Arc<str>,
    shared: &Arc<Shared>,
    i: usize,
) -> Option<LegHold> {
    let placer = m.placer.as_ref()?;
    let shared = Arc::downgrade(shared);
    placer.leg_placed(
        placed.candidate,
        PlacedLeg {
            session: session.clone(),
            inflight: Arc::new(move || shared.upgrade().map_or(0, |s| s.inflight_at(i))),
        },
    )
}

/// Open member `m`'s leg on the first candidate of its placer that works (probed, ejected
/// and failed over as a new session's upstream is: [`connect_first`]); the leg runs under
/// that candidate's guard.
async fn open_member(m: &Member, ctx: UpstreamCtx) -> Placed {
    let placer = m.placer();
    let plan = placer.plan(&ctx.session, &[])?;
    connect_first(&*placer, plan, |_, c| {
        let mut ctx = ctx.clone();
        ctx.guard = c.guard.clone();
        async move { super::super::open(&c.spec, ctx).await }
    })
    .await
}

impl Legs {
    fn mark(&self, i: usize, state: MemberState) {
        if let Some(s) = self.states.get(i) {
            s.store(state as u8, Ordering::Relaxed);
        }
    }

    /// Each member's name and state.
    pub(super) fn members(&self) -> Vec<(Arc<str>, MemberState)> {
        self.names
            .iter()
            .zip(&self.states)
            .map(|(n, s)| (n.clone(), MemberState::from_u8(s.load(Ordering::Relaxed))))
            .collect()
    }

    /// The candidate member `i` runs on (`None` while it is down).
    pub(super) fn on(&self, i: usize) -> Option<On> {
        self.on.get(i).and_then(|o| crate::sync::lock(o).clone())
    }

    /// The guard of member `i`'s candidate.
    pub(super) fn guard(&self, i: usize) -> Option<Arc<Guard>> {
        self.on(i).and_then(|o| o.guard)
    }

    fn set_on(&self, i: usize, on: Option<On>) {
        if let Some(cell) = self.on.get(i) {
            *crate::sync::lock(cell) = on;
        }
    }

    /// Member `i`'s leg is open on `placed`'s candidate, counted there while `hold` is kept.
    fn open(
        &self,
        i: usize,
        placed: Connected<Opened>,
        hold: Option<LegHold>,
    ) -> mpsc::Receiver<UpstreamEvent> {
        self.set_on(
            i,
            Some(On {
                upstream: placed.name,
                guard: placed.guard,
            }),
        );
        if let Some(cell) = self.held.get(i) {
            *crate::sync::lock(cell) = hold;
        }
        self.set(i, Some(Arc::new(placed.value.upstream)));
        placed.value.events
    }

    /// Member `i`'s leg is closed: it runs on no candidate, and counts on none.
    fn close(&self, i: usize) {
        self.set_on(i, None);
        self.release(i);
    }

    /// Drop what keeps member `i`'s leg counted on its candidate.
    fn release(&self, i: usize) {
        let hold = self.held.get(i).and_then(|h| crate::sync::lock(h).take());
        drop(hold);
    }

    pub(super) fn get(&self, i: usize) -> Option<Arc<Upstream>> {
        self.ups.get(i).and_then(|u| crate::sync::lock(u).clone())
    }

    fn set(&self, i: usize, up: Option<Arc<Upstream>>) -> Option<Arc<Upstream>> {
        match self.ups.get(i) {
            Some(cell) => std::mem::replace(&mut *crate::sync::lock(cell), up),
            None => None,
        }
    }

    /// Stop every member (in parallel) and the mux; the legs count on their candidates no
    /// more.
    pub(super) async fn shutdown(&self) {
        self.cancel.cancel();
        let ups: Vec<Arc<Upstream>> = (0..self.ups.len()).filter_map(|i| self.get(i)).collect();
        futures_util::future::join_all(ups.iter().map(|u| u.shutdown())).await;
        for i in 0..self.held.len() {
            self.release(i);
        }
    }
}

/// What the mux shares with the session's task, so that a `tools/call` whose name is known is
/// routed right there (no hop through the mux, and an HTTP member's exchange driven by the
/// caller, as for a plain session): the merged tool names, and every client request in flight
/// at a member. Its locks are never held across an await.
#[derive(Default)]
pub(super) struct Shared {
    /// The merged tool names while they are current.
    tools: Mutex<Option<Arc<Names>>>,
    /// The merged prompt names while they are current.
    prompts: Mutex<Option<Arc<Names>>>,
    /// Client requests routed to a member, by id.
    routed: Mutex<HashMap<RequestId, Routed>>,
}

/// A client request routed to a member, until its answer.
#[derive(Debug, Clone, Copy)]
pub(super) struct Routed {
    /// The member.
    pub(super) member: usize,
    /// Whether its answer's URIs are exposed (`resources/read`).
    pub(super) expose_uris: bool,
    /// Its method (what a timeout's answer names).
    pub(super) method: &'static str,
    /// When it was sent (the member's request timeout counts from here).
    pub(super) since: Instant,
}

/// The methods routed to a member, as `'static` names (the others are not routed).
fn routed_method(method: &str) -> &'static str {
    match method {
        "tools/call" => "tools/call",
        "prompts/get" => "prompts/get",
        "resources/read" => "resources/read",
        "resources/subscribe" => "resources/subscribe",
        "resources/unsubscribe" => "resources/unsubscribe",
        "completion/complete" => "completion/complete",
        _ => "the request",
    }
}

/// The exposed names of a merged list (tools or prompts), and the tool names a member's shaper
/// changed: (member, name as shaped) → the member's own name.
pub(super) struct Names {
    map: NameMap,
    renamed: Renamed,
}

impl Names {
    /// The member behind an exposed name, and the member's own name for it.
    fn resolve(&self, exposed: &str) -> Option<(usize, &str)> {
        let (i, shaped) = self.map.resolve(exposed)?;
        let own = self.renamed.get(i).and_then(|r| r.get(shaped));
        Some((i, own.map_or(shaped, String::as_str)))
    }
}

/// The member a client request is for, when it is known without asking the mux: a
/// `tools/call` of a listed tool, a `prompts/get` of a listed prompt, or a resource by its
/// exposed URI.
pub(super) fn member_of(spec: &CompositeSpec, shared: &Shared, frame: &Frame) -> Option<usize> {
    let target = frame.target()?;
    match frame.method()? {
        "tools/call" => member_of_name(shared, names::Kind::Tool, target),
        "prompts/get" => member_of_name(shared, names::Kind::Prompt, target),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            let (server, _) = super::names::parse_uri(target)?;
            spec.members.iter().position(|m| m.name == server)
        }
        _ => None,
    }
}

/// Why a cursor of a list that changed since it was issued is refused.
const LIST_CHANGED: &str =
    "the list changed since this cursor was issued; list again from the start";

/// A merged list's generation: a digest of its items, so that every replica continuing a
/// session gives the same list the same generation (a cursor issued on one opens on another)
/// and a list that changed gets another.
fn generation_of(items: &[Value]) -> u64 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for it in items {
        let bytes = serde_json::to_vec(it).unwrap_or_default();
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(&bytes);
    }
    let d = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    u64::from_be_bytes(first)
}

/// The member behind the exposed name of a tool or prompt of the current merged list.
pub(super) fn member_of_name(shared: &Shared, kind: names::Kind, exposed: &str) -> Option<usize> {
    let names = match kind {
        names::Kind::Tool => &shared.tools,
        names::Kind::Prompt => &shared.prompts,
    };
    let names = crate::sync::lock(names).clone()?;
    names.resolve(exposed).map(|(i, _)| i)
}

/// Internal request ids start with this (a client request using one goes the slow way, where
/// a collision is refused).
const OWN_ID: &str = "shadowcat-mux-";

impl Shared {
    /// Where the exposed names of `list` are shared (tools and prompts).
    fn names(&self, list: List) -> Option<&Mutex<Option<Arc<Names>>>> {
        match list {
            List::Tools => Some(&self.tools),
            List::Prompts => Some(&self.prompts),
            List::Resources | List::Templates => None,
        }
    }

    fn route(&self, id: RequestId, member: usize, expose_uris: bool, method: &str) -> bool {
        let routed = Routed {
            member,
            expose_uris,
            method: routed_method(method),
            since: Instant::now(),
        };
        match crate::sync::lock(&self.routed).entry(id) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(routed);
                true
            }
        }
    }

    pub(super) fn unroute(&self, id: &RequestId) -> Option<Routed> {
        crate::sync::lock(&self.routed).remove(id)
    }

    /// Client requests in flight at `member`.
    fn inflight_at(&self, member: usize) -> usize {
        crate::sync::lock(&self.routed)
            .values()
            .filter(|r| r.member == member)
            .count()
    }

    /// Take the requests in flight at a member for `timeout_of(member)` or more at `now`; and
    /// when the first of those left is due.
    fn expire(
        &self,
        now: Instant,
        timeout_of: impl Fn(usize) -> Option<Duration>,
    ) -> (Vec<(RequestId, Routed)>, Option<Instant>) {
        let mut r = crate::sync::lock(&self.routed);
        let mut next: Option<Instant> = None;
        let mut due = Vec::new();
        for (id, routed) in r.iter() {
            let Some(at) = timeout_of(routed.member).and_then(|t| routed.since.checked_add(t))
            else {
                continue;
            };
            if at <= now {
                due.push(id.clone());
            } else {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        let due = due
            .into_iter()
            .filter_map(|id| r.remove(&id).map(|routed| (id, routed)))
            .collect();
        (due, next)
    }

    /// Remove and return every request in flight at `member`.
    fn drain(&self, member: usize) -> Vec<RequestId> {
        let mut r = crate::sync::lock(&self.routed);
        let ids: Vec<RequestId> = r
            .iter()
            .filter(|(_, r)| r.member == member)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &ids {
            r.remove(id);
        }
        ids
    }
}

/// The fast path of a `tools/call` (see [`Shared`]): the member and the frame to send it, or
/// `None` when the call must go through the mux (names not known yet, the member not up, a
/// shaped member, an id that looks like the mux's own).
pub(super) fn fast_call(
    spec: &CompositeSpec,
    legs: &Legs,
    shared: &Shared,
    frame: &Frame,
) -> Option<(usize, Frame)> {
    if frame.kind() != FrameKind::Request || frame.method() != Some("tools/call") {
        return None;
    }
    let id = frame.id()?;
    if matches!(id, RequestId::String(s) if s.starts_with(OWN_ID)) {
        return None;
    }
    let tools = crate::sync::lock(&shared.tools).clone()?;
    let name = frame.target()?;
    let (i, original) = tools.resolve(name)?;
    if spec.members.get(i)?.shaper.is_some()
        || legs.states.get(i)?.load(Ordering::Relaxed) != MemberState::Up as u8
        || !breaker_closed(legs, i)
    {
        return None;
    }
    // The member's own name back in place of the exposed one (no new parse).
    let frame = if original == name {
        frame.clone()
    } else {
        frame.with_target(original)?
    };
    shared
        .route(id.clone(), i, false, "tools/call")
        .then_some((i, frame))
}

/// Whether member `i`'s breaker lets every request through (or it has none): otherwise its
/// calls go through the mux, which asks the breaker and answers a refused one itself.
fn breaker_closed(legs: &Legs, i: usize) -> bool {
    use crate::guard::BreakerState;
    let Some(cell) = legs.on.get(i) else {
        return true;
    };
    let on = crate::sync::lock(cell);
    on.as_ref()
        .and_then(|o| o.guard.as_deref())
        .and_then(Guard::breaker)
        .is_none_or(|b| b.state() == BreakerState::Closed)
}

/// A member's state.
enum Status {
    /// Opened; its handshake not done yet.
    Joining,
    /// Serving.
    Up,
    /// Failed; restarted at `retry`.
    Down { reason: String, retry: Instant },
    /// Being reopened.
    Opening,
}

struct Leg {
    name: Arc<str>,
    status: Status,
    /// What it answered `initialize` with.
    capabilities: Value,
    instructions: Option<String>,
    /// The protocol version it negotiated.
    version: Option<String>,
    /// Restarts since it last served.
    attempts: u32,
}

impl Leg {
    fn up(&self) -> bool {
        matches!(self.status, Status::Up)
    }

    fn offers(&self, list: List) -> bool {
        self.up() && self.capabilities.get(list.capability()).is_some()
    }
}

/// What a member's answer is for.
enum Pending {
    /// The member's handshake for the client's `initialize`.
    Init,
    /// The handshake of a member that restarted.
    Rejoin,
    /// A page of a list.
    Page(List),
    /// Nobody waits for it (a fanned-out `logging/setLevel`).
    Ignore,
}

/// One merged list, whole.
struct Merged {
    generation: u64,
    items: Vec<Value>,
    /// Its exposed names (tools and prompts); shared with the session's task for tools.
    names: Option<Arc<Names>>,
}

/// A list being read from the members.
struct Walk {
    items: Vec<Vec<Value>>,
    pages: Vec<usize>,
    waiting: HashSet<usize>,
    deadline: Instant,
}

#[derive(Default)]
struct ListState {
    merged: Option<Merged>,
    walk: Option<Walk>,
    /// Client list requests waiting for the walk: (id, offset, the generation its cursor was
    /// issued for).
    readers: Vec<(RequestId, usize, Option<u64>)>,
    /// Client calls waiting for the walk to resolve their names.
    calls: Vec<Frame>,
    /// Exposed names of members that are down, and which member (a call to one is told so).
    gone: HashMap<String, usize>,
}

/// The client's `initialize`, while members answer it.
struct Handshake {
    id: RequestId,
    waiting: HashSet<usize>,
    deadline: Instant,
    errors: Vec<String>,
}

struct Mux {
    spec: Arc<CompositeSpec>,
    ctx: UpstreamCtx,
    legs: Arc<Legs>,
    state: Vec<Leg>,
    streams: StreamMap<usize, MemberEvents>,
    out: mpsc::Sender<UpstreamEvent>,
    reopened: mpsc::Sender<(usize, Placed)>,
    pending: HashMap<(usize, RequestId), Pending>,
    /// What the session's task routes itself (tool names, requests in flight at a member).
    shared: Arc<Shared>,
    /// Requests from members to the client: our id → (member, its id).
    asked: HashMap<RequestId, (usize, RequestId)>,
    next: u64,
    /// The client's `initialize` params (members that restart are handed the same).
    init: Option<Value>,
    handshake: Option<Handshake>,
    initialized: bool,
    lists: [ListState; 4],
    key: CursorKey,
    /// The cursor key's bytes (recorded, so that another replica opens this session's cursors).
    key_bytes: [u8; 32],
    /// The session's state as last recorded (see [`super::saved`]).
    saved: watch::Sender<Option<Arc<Saved>>>,
    /// A session continued from its record: the members started afresh whose handshake is not
    /// done, and until when it may take. Client frames wait meanwhile.
    restoring: Option<(HashSet<usize>, Instant)>,
    /// `list_changed` to send the client once the debounce window closes.
    changed: [bool; 4],
    debounce: Option<Instant>,
    /// When the requests in flight at members are next looked at for their members' request
    /// timeouts (`None`: no member has one). Like the sessions' sweeper
    /// ([`crate::session`]), it wakes at the first known deadline or one shortest timeout
    /// after it last looked, whichever is first: a request sent since cannot be due earlier.
    sweep_at: Option<Instant>,
    /// Client requests the mux timed out: (member, id), oldest first; their late answers are
    /// dropped.
    timed_out: VecDeque<(usize, RequestId)>,
}

/// What [`start`] hands the session: the members' upstreams, what the session's task routes
/// itself, and the session's recorded state as it changes.
pub(super) type Started = (Arc<Legs>, Arc<Shared>, watch::Receiver<Option<Arc<Saved>>>);

/// Open the members and start the mux on `ctx.tracker`. With `restore`, the session continues
/// from its record (another replica created it): a Streamable HTTP member recorded with an
/// upstream session goes on with it, every other member starts afresh and is initialized with
/// the recorded params.
pub(super) async fn start(
    spec: Arc<CompositeSpec>,
    ctx: UpstreamCtx,
    inbox: mpsc::Receiver<Frame>,
    out: mpsc::Sender<UpstreamEvent>,
    restore: Option<&Saved>,
) -> Result<Started, ProxyError> {
    let n = spec.members.len();
    let legs = Arc::new(Legs {
        ups: (0..n).map(|_| Mutex::new(None)).collect(),
        names: spec
            .members
            .iter()
            .map(|m| Arc::from(m.name.as_str()))
            .collect(),
        states: (0..n)
            .map(|_| AtomicU8::new(MemberState::Starting as u8))
            .collect(),
        on: (0..n).map(|_| Mutex::new(None)).collect(),
        held: (0..n).map(|_| Mutex::new(None)).collect(),
        cancel: ctx.cancel.child_token(),
    });
    let shared = Arc::new(Shared::default());
    // A member recorded with an upstream session continues it on the upstream it ran on.
    let continued: Vec<Option<&SavedMember>> = spec
        .members
        .iter()
        .map(|m| {
            restore
                .and_then(|r| r.member(&m.name))
                .filter(|s| s.session.is_some())
        })
        .collect();
    let opened = futures_util::future::join_all(
        spec.members
            .iter()
            .zip(&continued)
            .map(|(m, c)| continue_member(m, member_ctx(&ctx, &legs.cancel), *c)),
    )
    .await;
    let mut streams = StreamMap::new();
    let mut state = Vec::with_capacity(n);
    let mut failed = Vec::new();
    let now = Instant::now();
    for (i, (m, o)) in spec.members.iter().zip(opened).enumerate() {
        let mut leg_capabilities = Value::Null;
        let mut leg_version = None;
        let status = match o {
            Ok((placed, continues)) => {
                let status = match continued[i].filter(|_| continues) {
                    Some(saved) => {
                        if let Some(session) = &saved.session {
                            placed.value.upstream.restore_session_id(session);
                        }
                        if let Some(v) = &saved.version {
                            placed.value.upstream.set_protocol_version(v);
                        }
                        leg_capabilities = saved.capabilities.clone();
                        leg_version = saved.version.clone();
                        legs.mark(i, MemberState::Up);
                        Status::Up
                    }
                    None => Status::Joining,
                };
                let hold = leg_hold(m, &placed, &ctx.session, &shared, i);
                let events = legs.open(i, placed, hold);
                streams.insert(i, member_events(events));
                status
            }
            Err(e) => {
                let reason = e.to_string();
                legs.mark(i, MemberState::Down);
                tracing::warn!(server = %m.name, error = %reason, "composite member failed to start");
                failed.push(format!("server `{}`: {reason}", m.name));
                Status::Down {
                    reason,
                    retry: now + RESTART_BASE,
                }
            }
        };
        state.push(Leg {
            name: Arc::from(m.name.as_str()),
            status,
            capabilities: leg_capabilities,
            instructions: None,
            version: leg_version,
            attempts: 0,
        });
    }
    if !failed.is_empty() && (spec.failure == Failure::Closed || failed.len() == n) {
        legs.shutdown().await;
        return Err(ProxyError::UpstreamConnect(format!(
            "the composite route cannot start: {}",
            failed.join("; ")
        )));
    }
    let (reopened, reopened_rx) = mpsc::channel(n.max(1));
    let key_bytes = restore
        .and_then(Saved::key_bytes)
        .unwrap_or_else(rand::random);
    let (saved, saved_rx) = watch::channel(None);
    let mut mux = Mux {
        spec,
        ctx: ctx.clone(),
        legs: legs.clone(),
        state,
        streams,
        out,
        reopened,
        pending: HashMap::new(),
        shared: shared.clone(),
        asked: HashMap::new(),
        next: 0,
        init: None,
        handshake: None,
        initialized: false,
        lists: Default::default(),
        key: CursorKey::from_bytes(key_bytes),
        key_bytes,
        saved,
        restoring: None,
        changed: [false; 4],
        debounce: None,
        sweep_at: None,
        timed_out: VecDeque::new(),
    };
    for i in 0..n {
        mux.arm_sweep(i);
    }
    if let Some(r) = restore {
        mux.restore(r).await;
    }
    let span = tracing::info_span!("composite", session = %ctx.session);
    ctx.tracker.spawn(tracing::Instrument::instrument(
        mux.run(inbox, reopened_rx),
        span,
    ));
    Ok((legs, shared, saved_rx))
}

/// A member's events, ending with `Closed` even when its channel closes without one (so a
/// member that vanishes is noticed, never silently dropped from the map).
type MemberEvents =
    tokio_stream::adapters::Chain<ReceiverStream<UpstreamEvent>, tokio_stream::Once<UpstreamEvent>>;

fn member_events(rx: mpsc::Receiver<UpstreamEvent>) -> MemberEvents {
    let end = tokio_stream::once(UpstreamEvent::Closed {
        reason: "the server's connection ended".into(),
        exit_code: None,
    });
    tokio_stream::StreamExt::chain(ReceiverStream::new(rx), end)
}

/// A member's context: the session's, with a cancel token of its own under the mux's.
fn member_ctx(ctx: &UpstreamCtx, cancel: &CancellationToken) -> UpstreamCtx {
    let mut c = ctx.clone();
    c.cancel = cancel.child_token();
    c.guard = None;
    c
}

fn to_frame(v: &Value) -> Option<Frame> {
    match serde_json::to_vec(v) {
        Ok(bytes) => match Frame::parse_single(Bytes::from(bytes)) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(error = %e, "the composite made a frame it cannot parse");
                None
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "could not serialise a composite frame");
            None
        }
    }
}

fn value_of(frame: &Frame) -> Option<Value> {
    serde_json::from_slice(frame.raw()).ok()
}

fn result_frame(id: &RequestId, result: Value) -> Option<Frame> {
    to_frame(&json!({"jsonrpc": "2.0", "id": id, "result": result}))
}

impl Mux {
    async fn run(
        mut self,
        mut inbox: mpsc::Receiver<Frame>,
        mut reopened: mpsc::Receiver<(usize, Placed)>,
    ) {
        let cancel = self.legs.cancel.clone();
        loop {
            let wake = self.next_timer();
            tokio::select! {
                f = inbox.recv(), if self.restoring.is_none() => match f {
                    Some(f) => self.client_frame(f).await,
                    None => break,
                },
                Some((i, ev)) = self.streams.next() => {
                    if !self.member_event(i, ev).await {
                        break;
                    }
                }
                Some((i, o)) = reopened.recv() => self.reopened(i, o).await,
                _ = sleep_until(wake) => {
                    if !self.timers().await {
                        break;
                    }
                }
                _ = cancel.cancelled() => break,
            }
        }
    }

    // ----- sending -----

    async fn emit(&self, frame: Frame, via: Via) {
        let _ = self
            .out
            .send(UpstreamEvent::Frame {
                frame: Box::new(frame),
                via,
            })
            .await;
    }

    async fn answer(&self, id: &RequestId, result: Value) {
        if let Some(f) = result_frame(id, result) {
            self.emit(f, Via::Request(id.clone())).await;
        }
    }

    async fn fail(&self, id: &RequestId, code: i64, message: &str) {
        self.emit(
            error_frame(Some(id), code, message),
            Via::Request(id.clone()),
        )
        .await;
    }

    /// Send `frame` to member `i`; false when it is gone.
    async fn to_member(&self, i: usize, frame: Frame) -> bool {
        let Some(up) = self.legs.get(i) else {
            return false;
        };
        match up.start(frame).await {
            Ok(Some(x)) => {
                x.detach();
                true
            }
            Ok(None) => true,
            Err(e) => {
                tracing::warn!(server = %self.state[i].name, error = %e, "could not send to a composite member");
                false
            }
        }
    }

    /// Send a request of the mux's own to member `i`, answered as `pending`.
    async fn ask(&mut self, i: usize, method: &str, params: Value, pending: Pending) -> bool {
        self.next += 1;
        let id = RequestId::String(Arc::from(format!("shadowcat-mux-{}", self.next)));
        let Some(frame) =
            to_frame(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
        else {
            return false;
        };
        self.pending.insert((i, id.clone()), pending);
        if self.to_member(i, frame).await {
            true
        } else {
            self.pending.remove(&(i, id));
            false
        }
    }

    async fn notify_member(&self, i: usize, method: &str, params: Option<Value>) {
        let mut v = json!({"jsonrpc": "2.0", "method": method});
        if let Some(p) = params {
            v["params"] = p;
        }
        if let Some(f) = to_frame(&v) {
            self.to_member(i, f).await;
        }
    }

    // ----- from the client -----

    async fn client_frame(&mut self, frame: Frame) {
        match frame.kind() {
            FrameKind::Request => self.client_request(frame).await,
            FrameKind::Notification => self.client_notification(frame).await,
            FrameKind::Response | FrameKind::Error => self.client_answer(frame).await,
        }
    }

    async fn client_request(&mut self, frame: Frame) {
        let Some(id) = frame.id().cloned() else {
            return;
        };
        let method = frame.method().unwrap_or("").to_string();
        match method.as_str() {
            "initialize" => self.initialize(id, &frame).await,
            "ping" => self.answer(&id, json!({})).await,
            "logging/setLevel" => {
                let params = value_of(&frame).and_then(|v| v.get("params").cloned());
                for i in 0..self.state.len() {
                    if self.state[i].up() && self.state[i].capabilities.get("logging").is_some() {
                        let p = params.clone().unwrap_or(Value::Null);
                        self.ask(i, "logging/setLevel", p, Pending::Ignore).await;
                    }
                }
                self.answer(&id, json!({})).await;
            }
            m => {
                if let Some(list) = List::of_method(m) {
                    self.list(id, list, &frame).await;
                } else {
                    self.route(frame).await;
                }
            }
        }
    }

    async fn client_notification(&mut self, frame: Frame) {
        match frame.method() {
            Some("notifications/initialized") => {
                self.initialized = true;
                for i in 0..self.state.len() {
                    if self.state[i].up() {
                        self.joined(i).await;
                    }
                }
            }
            // The member is told; the request is no longer in flight there (a member need not
            // answer a cancelled request, so it is not waited for, nor timed out).
            Some("notifications/cancelled") => {
                if let Some(id) = frame.cancelled_id()
                    && let Some(r) = self.shared.unroute(id)
                {
                    self.to_member(r.member, frame).await;
                }
            }
            // Roots changed, progress of a member's request, anything else: every member that
            // serves hears it.
            _ => {
                for i in 0..self.state.len() {
                    if self.state[i].up() {
                        self.to_member(i, frame.clone()).await;
                    }
                }
            }
        }
    }

    /// The client answers a member's request: back to that member under its own id.
    async fn client_answer(&mut self, frame: Frame) {
        let Some((i, original)) = frame.id().and_then(|id| self.asked.remove(id)) else {
            tracing::debug!("dropping a client answer to no member's request");
            return;
        };
        let Some(mut v) = value_of(&frame) else {
            return;
        };
        v["id"] = json!(original);
        if let Some(f) = to_frame(&v) {
            self.to_member(i, f).await;
        }
    }

    // ----- continuing on another replica -----

    /// Continue a session from its record: the client's handshake is done; the members started
    /// afresh are initialized with its params (client frames wait until they have answered, at
    /// most [`MEMBER_DEADLINE`]); the continued ones open their server-to-client streams.
    async fn restore(&mut self, saved: &Saved) {
        self.init = Some(saved.init.clone());
        self.initialized = true;
        let mut waiting = HashSet::new();
        for i in 0..self.state.len() {
            match self.state[i].status {
                Status::Joining => {
                    if self
                        .ask(i, "initialize", saved.init.clone(), Pending::Rejoin)
                        .await
                    {
                        waiting.insert(i);
                    } else {
                        self.down(i, "could not send initialize".into()).await;
                    }
                }
                Status::Up => {
                    if let Some(up) = self.legs.get(i) {
                        let name = self.state[i].name.clone();
                        self.ctx.tracker.spawn(async move {
                            if let Err(e) = up.open_listen().await {
                                tracing::warn!(server = %name, error = %e, "could not open a member's server-to-client stream");
                            }
                        });
                    }
                }
                Status::Down { .. } | Status::Opening => {}
            }
        }
        if !waiting.is_empty() {
            self.restoring = Some((waiting, Instant::now() + MEMBER_DEADLINE));
        }
        self.record();
    }

    /// Member `i`, started afresh for a continued session, has answered its handshake (or
    /// failed it).
    fn restored(&mut self, i: usize) {
        if let Some((waiting, _)) = &mut self.restoring {
            waiting.remove(&i);
            if waiting.is_empty() {
                self.restoring = None;
            }
        }
    }

    /// Publish the session's state for its record (see [`super::saved`]); nothing before the
    /// client's `initialize`.
    fn record(&self) {
        let Some(init) = &self.init else { return };
        let members = self
            .state
            .iter()
            .enumerate()
            .map(|(i, l)| SavedMember {
                name: l.name.to_string(),
                session: self
                    .legs
                    .get(i)
                    .filter(|_| l.up())
                    .and_then(|u| u.upstream_session_id()),
                version: l.version.clone(),
                capabilities: l.capabilities.clone(),
                upstream: self.legs.on(i).map(|o| o.upstream.to_string()),
            })
            .collect();
        self.saved.send_replace(Some(Arc::new(Saved {
            init: init.clone(),
            key: Saved::encode_key(&self.key_bytes),
            members,
        })));
    }

    // ----- initialize -----

    async fn initialize(&mut self, id: RequestId, frame: &Frame) {
        let params = value_of(frame)
            .and_then(|v| v.get("params").cloned())
            .unwrap_or_else(|| json!({}));
        self.init = Some(params.clone());
        let mut waiting = HashSet::new();
        for i in 0..self.state.len() {
            if matches!(self.state[i].status, Status::Joining)
                && self
                    .ask(i, "initialize", params.clone(), Pending::Init)
                    .await
            {
                waiting.insert(i);
            }
        }
        self.handshake = Some(Handshake {
            id,
            waiting,
            deadline: Instant::now() + MEMBER_DEADLINE,
            errors: Vec::new(),
        });
        self.handshake_done().await;
    }

    /// A member answered the handshake (or failed it).
    fn learn(&mut self, i: usize, answer: &Value) -> Result<(), String> {
        match answer.get("result") {
            Some(r) => {
                let leg = &mut self.state[i];
                leg.capabilities = r.get("capabilities").cloned().unwrap_or_else(|| json!({}));
                leg.instructions = r
                    .get("instructions")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                let version = r.get("protocolVersion").and_then(Value::as_str);
                if let Some(v) = version
                    && let Some(up) = self.legs.get(i)
                {
                    up.set_protocol_version(v);
                }
                leg.version = version.map(str::to_string);
                leg.status = Status::Up;
                self.legs.mark(i, MemberState::Up);
                leg.attempts = 0;
                Ok(())
            }
            None => Err(answer
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("no result")
                .to_string()),
        }
    }

    /// Answer the client's `initialize` once every member has answered (or timed out).
    async fn handshake_done(&mut self) {
        let Some(h) = &self.handshake else { return };
        if !h.waiting.is_empty() {
            return;
        }
        let Some(h) = self.handshake.take() else {
            return;
        };
        let up: Vec<usize> = (0..self.state.len())
            .filter(|&i| self.state[i].up())
            .collect();
        if up.is_empty() || (self.spec.failure == Failure::Closed && !h.errors.is_empty()) {
            let why = if h.errors.is_empty() {
                "no server of the composite route is available".to_string()
            } else {
                h.errors.join("; ")
            };
            self.fail(
                &h.id,
                UPSTREAM_ERROR,
                &format!("the composite route could not start: {why}"),
            )
            .await;
            return;
        }
        let requested = self
            .init
            .as_ref()
            .and_then(|p| p.get("protocolVersion"))
            .and_then(Value::as_str)
            .filter(|v| shadowcat_proto::era::ProtocolVersion::parse(v).is_some())
            .unwrap_or(shadowcat_proto::era::ProtocolVersion::V2025_06_18.as_str())
            .to_string();
        let any_down = up.len() < self.state.len();
        let mut caps = Map::new();
        for &i in &up {
            merge_capabilities(&mut caps, &self.state[i].capabilities);
        }
        if any_down {
            // A member that is down may come back with anything: say lists can change.
            for c in ["tools", "prompts", "resources"] {
                caps.entry(c)
                    .or_insert_with(|| json!({"listChanged": true}));
            }
        }
        let instructions: Vec<String> = up
            .iter()
            .filter_map(|&i| {
                let l = &self.state[i];
                l.instructions.as_ref().map(|t| format!("[{}] {t}", l.name))
            })
            .collect();
        let mut result = json!({
            "protocolVersion": requested,
            "capabilities": caps,
            "serverInfo": {"name": "shadowcat-composite", "version": env!("CARGO_PKG_VERSION")},
        });
        if !instructions.is_empty() {
            result["instructions"] = json!(instructions.join("\n\n"));
        }
        self.answer(&h.id, result).await;
        self.record();
    }

    /// Member `i` serves (and the client has sent `initialized`): tell it, open its stream.
    async fn joined(&mut self, i: usize) {
        self.notify_member(i, "notifications/initialized", None)
            .await;
        if let Some(up) = self.legs.get(i) {
            let name = self.state[i].name.clone();
            self.ctx.tracker.spawn(async move {
                if let Err(e) = up.open_listen().await {
                    tracing::warn!(server = %name, error = %e, "could not open a member's server-to-client stream");
                }
            });
        }
    }

    // ----- lists -----

    async fn list(&mut self, id: RequestId, list: List, frame: &Frame) {
        let cursor = value_of(frame).and_then(|v| {
            v.pointer("/params/cursor")
                .and_then(Value::as_str)
                .map(str::to_string)
        });
        let mut offset = 0;
        if let Some(c) = cursor {
            match self.key.open(&self.ctx.session, &c) {
                Ok(p) if p.list == list.cursor_list() => {
                    // Not merged (yet) here — a list invalidated since, or a session continued
                    // from another replica: the cursor is checked against the list once read.
                    if self.lists[list.index()].merged.is_none() {
                        let st = &mut self.lists[list.index()];
                        st.readers.push((id, p.offset as usize, Some(p.generation)));
                        self.walk(list).await;
                        return;
                    }
                    let current = self.lists[list.index()].merged.as_ref();
                    if current.map(|m| m.generation) != Some(p.generation) {
                        self.fail(&id, INVALID_PARAMS, LIST_CHANGED).await;
                        return;
                    }
                    offset = p.offset as usize;
                }
                Ok(_) => {
                    let msg = format!("invalid cursor: it is not a cursor of {}", list.method());
                    self.fail(&id, INVALID_PARAMS, &msg).await;
                    return;
                }
                Err(e) => {
                    self.fail(&id, INVALID_PARAMS, &e.to_string()).await;
                    return;
                }
            }
        }
        if self.lists[list.index()].merged.is_some() {
            self.page(&id, list, offset).await;
            return;
        }
        self.lists[list.index()].readers.push((id, offset, None));
        self.walk(list).await;
    }

    /// Answer a list request with the page of the merged list at `offset`.
    async fn page(&self, id: &RequestId, list: List, offset: usize) {
        let Some(m) = &self.lists[list.index()].merged else {
            return;
        };
        let size = match self.spec.page_size {
            0 => m.items.len(),
            n => n,
        };
        let start = offset.min(m.items.len());
        let end = start.saturating_add(size).min(m.items.len());
        let mut result = json!({ list.key(): &m.items[start..end] });
        if end < m.items.len() {
            let pos = Position {
                list: list.cursor_list(),
                generation: m.generation,
                offset: end as u32,
            };
            result["nextCursor"] = json!(self.key.seal(&self.ctx.session, &pos));
        }
        self.answer(id, result).await;
    }

    /// Start reading `list` from every member that offers it, unless a read is under way.
    async fn walk(&mut self, list: List) {
        if self.lists[list.index()].walk.is_some() {
            return;
        }
        let n = self.state.len();
        let mut waiting = HashSet::new();
        for i in 0..n {
            if self.state[i].offers(list)
                && self
                    .ask(i, list.method(), json!({}), Pending::Page(list))
                    .await
            {
                waiting.insert(i);
            }
        }
        self.lists[list.index()].walk = Some(Walk {
            items: vec![Vec::new(); n],
            pages: vec![0; n],
            waiting,
            deadline: Instant::now() + MEMBER_DEADLINE,
        });
        self.walk_done(list).await;
    }

    /// A page of `list` from member `i` (`None`: the member failed or refused).
    async fn page_in(&mut self, i: usize, list: List, answer: Option<&Value>) {
        let Some(walk) = self.lists[list.index()].walk.as_mut() else {
            return;
        };
        let mut next = None;
        if let Some(result) = answer.and_then(|a| a.get("result")) {
            if let Some(items) = result.get(list.key()).and_then(Value::as_array) {
                let total: usize = walk.items.iter().map(Vec::len).sum();
                let room = MAX_ITEMS.saturating_sub(total);
                walk.items[i].extend(items.iter().take(room).cloned());
            }
            walk.pages[i] += 1;
            next = result
                .get("nextCursor")
                .and_then(Value::as_str)
                .map(str::to_string);
            if walk.pages[i] >= MAX_PAGES && next.is_some() {
                tracing::warn!(server = %self.state[i].name, pages = MAX_PAGES, "a member's list has too many pages; the rest is left out");
                next = None;
            }
        } else if let Some(e) = answer.and_then(|a| a.pointer("/error/message")) {
            tracing::warn!(server = %self.state[i].name, error = %e, method = list.method(), "a member refused to list");
        }
        match next {
            Some(c) => {
                if !self
                    .ask(i, list.method(), json!({"cursor": c}), Pending::Page(list))
                    .await
                    && let Some(w) = self.lists[list.index()].walk.as_mut()
                {
                    w.waiting.remove(&i);
                }
            }
            None => {
                if let Some(w) = self.lists[list.index()].walk.as_mut() {
                    w.waiting.remove(&i);
                }
            }
        }
        self.walk_done(list).await;
    }

    /// Once every member has listed: merge, expose the names, answer the readers, run the
    /// calls that waited for the names.
    async fn walk_done(&mut self, list: List) {
        let st = &mut self.lists[list.index()];
        if st.walk.as_ref().is_none_or(|w| !w.waiting.is_empty()) {
            return;
        }
        let Some(walk) = st.walk.take() else { return };
        let readers = std::mem::take(&mut st.readers);
        let calls = std::mem::take(&mut st.calls);
        let (shaped, renamed) = match list {
            List::Tools => shape(&self.spec, walk.items),
            _ => (walk.items, Vec::new()),
        };
        match merge(&self.spec, list, &self.state, shaped) {
            Ok((items, map)) => {
                let generation = generation_of(&items);
                let names = map.map(|map| Arc::new(Names { map, renamed }));
                if let Some(shared) = self.shared.names(list) {
                    *crate::sync::lock(shared) = names.clone();
                }
                self.lists[list.index()].merged = Some(Merged {
                    generation,
                    items,
                    names,
                });
                for (id, offset, issued) in readers {
                    if issued.is_some_and(|g| g != generation) {
                        self.fail(&id, INVALID_PARAMS, LIST_CHANGED).await;
                    } else {
                        self.page(&id, list, offset).await;
                    }
                }
                for call in calls {
                    // Boxed: routing a call may start a walk, which ends here.
                    Box::pin(self.route(call)).await;
                }
            }
            Err(e) => {
                let msg = e.to_string();
                tracing::warn!(error = %msg, "the composite route cannot merge its members' lists");
                for (id, _, _) in readers {
                    self.fail(&id, INTERNAL_ERROR, &msg).await;
                }
                for call in calls {
                    if let Some(id) = call.id() {
                        self.fail(id, INTERNAL_ERROR, &msg).await;
                    }
                }
            }
        }
    }

    /// The merged `list` is out of date (a member changed, failed or came back).
    fn invalidate(&mut self, list: List) {
        self.lists[list.index()].merged = None;
        if let Some(shared) = self.shared.names(list) {
            *crate::sync::lock(shared) = None;
        }
        self.changed[list.index()] = true;
        self.debounce
            .get_or_insert_with(|| Instant::now() + DEBOUNCE);
    }

    // ----- routed calls -----

    /// Send a call to the member that owns what it names, with the original name restored.
    async fn route(&mut self, frame: Frame) {
        let Some(id) = frame.id().cloned() else {
            return;
        };
        let method = frame.method().unwrap_or("").to_string();
        let Some(mut v) = value_of(&frame) else {
            return;
        };
        let target = match method.as_str() {
            "tools/call" => {
                self.by_name(List::Tools, &mut v, "/params/name", frame)
                    .await
            }
            "prompts/get" => {
                self.by_name(List::Prompts, &mut v, "/params/name", frame)
                    .await
            }
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
                self.by_uri(&mut v, "/params/uri")
            }
            "completion/complete" => match v.pointer("/params/ref/type").and_then(Value::as_str) {
                Some("ref/prompt") => {
                    self.by_name(List::Prompts, &mut v, "/params/ref/name", frame)
                        .await
                }
                Some("ref/resource") => self.by_uri(&mut v, "/params/ref/uri"),
                _ => Err((
                    INVALID_PARAMS,
                    "completion/complete needs a ref/prompt or ref/resource".into(),
                )),
            },
            m => Err((
                METHOD_NOT_FOUND,
                format!("`{m}` is not supported on a composite route"),
            )),
        };
        let i = match target {
            Ok(Some(i)) => i,
            // Waits for the names.
            Ok(None) => return,
            Err((code, msg)) => {
                self.fail(&id, code, &msg).await;
                return;
            }
        };
        if !self.state[i].up() {
            let msg = self.unavailable(i);
            self.fail(&id, UPSTREAM_ERROR, &msg).await;
            return;
        }
        if self.pending.contains_key(&(i, id.clone())) {
            self.fail(
                &id,
                shadowcat_proto::error::INVALID_REQUEST,
                "this request id is in use by the proxy; use another",
            )
            .await;
            return;
        }
        let Some(f) = to_frame(&v) else {
            self.fail(&id, INTERNAL_ERROR, "could not forward the request")
                .await;
            return;
        };
        // The member's breaker may refuse it fast, as a plain session's guard does.
        if let Some(g) = self.legs.guard(i)
            && let Err(why) = g.admit()
        {
            self.fail(&id, why.jsonrpc_code(), &why.to_string()).await;
            return;
        }
        if !self
            .shared
            .route(id.clone(), i, method == "resources/read", &method)
        {
            self.fail(
                &id,
                shadowcat_proto::error::INVALID_REQUEST,
                "a request with this id is already in flight",
            )
            .await;
            return;
        }
        if !self.to_member(i, f).await {
            self.shared.unroute(&id);
            let msg = self.unavailable(i);
            self.fail(&id, UPSTREAM_ERROR, &msg).await;
        }
    }

    fn unavailable(&self, i: usize) -> String {
        let l = &self.state[i];
        match &l.status {
            Status::Down { reason, .. } => {
                format!(
                    "server `{}` of the composite route is unavailable: {reason}",
                    l.name
                )
            }
            _ => format!("server `{}` of the composite route is not ready", l.name),
        }
    }

    /// The member owning the name at `pointer` (rewritten to its own name). `Ok(None)`: the
    /// names are not known yet; the call waits for the list (`frame` is queued).
    async fn by_name(
        &mut self,
        list: List,
        v: &mut Value,
        pointer: &str,
        frame: Frame,
    ) -> Result<Option<usize>, (i64, String)> {
        let kind = list.names_kind().map(|k| k.to_string()).unwrap_or_default();
        let Some(name) = v
            .pointer(pointer)
            .and_then(Value::as_str)
            .map(str::to_string)
        else {
            return Err((INVALID_PARAMS, format!("the request names no {kind}")));
        };
        let st = &mut self.lists[list.index()];
        let Some(merged) = &st.merged else {
            if st.calls.len() >= MAX_WAITING {
                return Err((
                    UPSTREAM_ERROR,
                    "too many calls wait for the composite route's lists".into(),
                ));
            }
            st.calls.push(frame);
            self.walk(list).await;
            return Ok(None);
        };
        let resolved = merged
            .names
            .as_ref()
            .and_then(|m| m.resolve(&name))
            .map(|(i, own)| (i, own.to_string()));
        match resolved {
            Some((i, original)) => {
                if list == List::Tools
                    && let Some(shaper) = &self.spec.members[i].shaper
                {
                    let args = v
                        .pointer_mut("/params")
                        .and_then(Value::as_object_mut)
                        .map(|p| p.entry("arguments").or_insert_with(|| json!({})));
                    match args.and_then(Value::as_object_mut) {
                        Some(args) => shaper.call(&original, args).map_err(|why| {
                            (INVALID_PARAMS, format!("tool `{}`: {why}", shown(&name)))
                        })?,
                        None => {
                            return Err((
                                INVALID_PARAMS,
                                "tool arguments must be an object".into(),
                            ));
                        }
                    }
                }
                if let Some(slot) = v.pointer_mut(pointer) {
                    *slot = json!(original);
                }
                Ok(Some(i))
            }
            None => match st.gone.get(&name) {
                Some(&i) => Ok(Some(i)),
                // The one server's own name, listed or not: it decides.
                None if self.spec.transparent() => Ok(Some(0)),
                None => Err((INVALID_PARAMS, format!("unknown {kind} `{}`", shown(&name)))),
            },
        }
    }

    /// The member a `<server>+<uri>` URI at `pointer` belongs to (rewritten to its own URI).
    fn by_uri(&self, v: &mut Value, pointer: &str) -> Result<Option<usize>, (i64, String)> {
        if self.spec.transparent() {
            return Ok(Some(0));
        }
        let uri = v.pointer(pointer).and_then(Value::as_str).unwrap_or("");
        let found = names::parse_uri(uri).and_then(|(server, original)| {
            let i = self.state.iter().position(|l| &*l.name == server)?;
            Some((i, original.to_string()))
        });
        match found {
            Some((i, original)) => {
                if let Some(slot) = v.pointer_mut(pointer) {
                    *slot = json!(original);
                }
                Ok(Some(i))
            }
            None => Err((
                INVALID_PARAMS,
                format!(
                    "unknown resource `{}`: URIs on a composite route are `<server>+<uri>`",
                    shown(uri)
                ),
            )),
        }
    }

    // ----- from the members -----

    /// An event of member `i`; false when the session must end.
    async fn member_event(&mut self, i: usize, ev: UpstreamEvent) -> bool {
        match ev {
            UpstreamEvent::Closed { reason, .. } => self.down(i, reason).await,
            UpstreamEvent::Frame { frame, via } => {
                self.member_frame(i, *frame, via).await;
                true
            }
        }
    }

    async fn member_frame(&mut self, i: usize, frame: Frame, via: Via) {
        match frame.kind() {
            FrameKind::Response | FrameKind::Error => {
                let Some(id) = frame.id().cloned() else {
                    return;
                };
                let pending = self.pending.remove(&(i, id.clone()));
                if pending.is_none()
                    && let Some(Routed { expose_uris, .. }) = self.shared.unroute(&id)
                {
                    if let Some(g) = self.legs.guard(i) {
                        g.record(!crate::session::upstream_failed(&frame));
                    }
                    let frame = if expose_uris && !self.spec.transparent() {
                        self.expose_contents(i, frame)
                    } else {
                        frame
                    };
                    self.emit(frame, via).await;
                    return;
                }
                match pending {
                    Some(Pending::Init) => {
                        let answer = value_of(&frame).unwrap_or(Value::Null);
                        let learned = self.learn(i, &answer);
                        if let Some(h) = self.handshake.as_mut() {
                            h.waiting.remove(&i);
                            if let Err(e) = learned {
                                h.errors
                                    .push(format!("server `{}`: {e}", self.state[i].name));
                            }
                        }
                        self.handshake_done().await;
                    }
                    Some(Pending::Rejoin) => {
                        let answer = value_of(&frame).unwrap_or(Value::Null);
                        match self.learn(i, &answer) {
                            Ok(()) => {
                                tracing::info!(server = %self.state[i].name, "composite member is back");
                                if self.initialized {
                                    self.joined(i).await;
                                }
                                for list in List::ALL {
                                    self.lists[list.index()].gone.retain(|_, m| *m != i);
                                    self.invalidate(list);
                                }
                                self.restored(i);
                                self.record();
                            }
                            Err(e) => {
                                self.restored(i);
                                self.restart_later(i, format!("initialize failed: {e}"));
                            }
                        }
                    }
                    Some(Pending::Page(list)) => {
                        let answer = value_of(&frame);
                        self.page_in(i, list, answer.as_ref()).await;
                    }
                    Some(Pending::Ignore) => {}
                    None => {
                        // A late answer to a request the mux timed out: the client has its
                        // answer already.
                        if let Some(k) =
                            self.timed_out.iter().position(|(m, t)| *m == i && *t == id)
                        {
                            self.timed_out.remove(k);
                            tracing::debug!(server = %self.state[i].name, %id, "dropping the late answer to a request that timed out");
                            return;
                        }
                        // A late answer (the request timed out at the proxy): the session
                        // drops it.
                        self.emit(frame, via).await
                    }
                }
            }
            FrameKind::Request => {
                let Some(original) = frame.id().cloned() else {
                    return;
                };
                if self.asked.len() >= MAX_ASKED {
                    let msg = "too many requests wait for the client's answer";
                    self.to_member(i, error_frame(Some(&original), INTERNAL_ERROR, msg))
                        .await;
                    return;
                }
                let Some(mut v) = value_of(&frame) else {
                    return;
                };
                self.next += 1;
                let ours =
                    RequestId::String(Arc::from(format!("{}:{}", self.state[i].name, self.next)));
                v["id"] = json!(ours);
                self.asked.insert(ours, (i, original));
                if let Some(f) = to_frame(&v) {
                    self.emit(f, via).await;
                }
            }
            FrameKind::Notification => self.member_notification(i, frame, via).await,
        }
    }

    async fn member_notification(&mut self, i: usize, frame: Frame, via: Via) {
        match frame.method() {
            Some("notifications/tools/list_changed") => self.invalidate(List::Tools),
            Some("notifications/prompts/list_changed") => self.invalidate(List::Prompts),
            Some("notifications/resources/list_changed") => {
                self.invalidate(List::Resources);
                self.invalidate(List::Templates);
            }
            Some("notifications/resources/updated") if !self.spec.transparent() => {
                let Some(mut v) = value_of(&frame) else {
                    return;
                };
                if let Some(uri) = v.pointer("/params/uri").and_then(Value::as_str) {
                    let exposed = names::expose_uri(&self.state[i].name, uri);
                    v["params"]["uri"] = json!(exposed);
                }
                if let Some(f) = to_frame(&v) {
                    self.emit(f, via).await;
                }
            }
            Some("notifications/cancelled") => {
                // The member gave up on a request of its own: name it with our id.
                let ours = frame.cancelled_id().and_then(|theirs| {
                    self.asked
                        .iter()
                        .find(|(_, (m, t))| *m == i && t == theirs)
                        .map(|(o, _)| o.clone())
                });
                let Some(ours) = ours else { return };
                self.asked.remove(&ours);
                let Some(mut v) = value_of(&frame) else {
                    return;
                };
                v["params"]["requestId"] = json!(ours);
                if let Some(f) = to_frame(&v) {
                    self.emit(f, via).await;
                }
            }
            _ => self.emit(frame, via).await,
        }
    }

    /// A `resources/read` answer names its contents by the member's URIs: expose them.
    fn expose_contents(&self, i: usize, frame: Frame) -> Frame {
        let Some(mut v) = value_of(&frame) else {
            return frame;
        };
        let server = &self.state[i].name;
        let Some(contents) = v
            .pointer_mut("/result/contents")
            .and_then(Value::as_array_mut)
        else {
            return frame;
        };
        for c in contents {
            if let Some(uri) = c.get("uri").and_then(Value::as_str) {
                c["uri"] = json!(names::expose_uri(server, uri));
            }
        }
        to_frame(&v).unwrap_or(frame)
    }

    // ----- failure and restarts -----

    /// Member `i` is gone; false when the session must end with it.
    async fn down(&mut self, i: usize, reason: String) -> bool {
        let name = self.state[i].name.clone();
        tracing::warn!(server = %name, reason = %reason, "composite member failed");
        self.streams.remove(&i);
        let guard = self.legs.guard(i);
        self.legs.close(i);
        if let Some(old) = self.legs.set(i, None) {
            self.ctx.tracker.spawn(async move { old.shutdown().await });
        }
        let was_up = self.state[i].up();
        self.restart_later(i, reason.clone());
        let msg = self.unavailable(i);
        // Its calls in flight fail, naming it; the lists it was in are read again without it.
        let mine: Vec<(RequestId, Pending)> = self
            .pending
            .keys()
            .filter(|(m, _)| *m == i)
            .cloned()
            .collect::<Vec<_>>()
            .into_iter()
            .filter_map(|k| self.pending.remove(&k).map(|p| (k.1, p)))
            .collect();
        for id in self.shared.drain(i) {
            // Each call in flight failed with it, as a plain session's would.
            if let Some(g) = &guard {
                g.record(false);
            }
            self.fail(&id, UPSTREAM_ERROR, &msg).await;
        }
        for (_, p) in mine {
            match p {
                Pending::Init => {
                    if let Some(h) = self.handshake.as_mut() {
                        h.waiting.remove(&i);
                        h.errors.push(format!("server `{name}`: {reason}"));
                    }
                    self.handshake_done().await;
                }
                Pending::Page(list) => self.page_in(i, list, None).await,
                Pending::Rejoin => self.restored(i),
                Pending::Ignore => {}
            }
        }
        self.asked.retain(|_, (m, _)| *m != i);
        if self.spec.failure == Failure::Closed {
            let _ = self
                .out
                .send(UpstreamEvent::Closed {
                    reason: msg,
                    exit_code: None,
                })
                .await;
            return false;
        }
        if was_up {
            for list in List::ALL {
                // Remember its names, so a call to one is told the member is down.
                if let Some(Merged {
                    names: Some(map), ..
                }) = &self.lists[list.index()].merged
                {
                    let gone: Vec<String> = map.map.names_of(i).map(str::to_string).collect();
                    let st = &mut self.lists[list.index()];
                    for g in gone {
                        st.gone.insert(g, i);
                    }
                }
                self.invalidate(list);
            }
        }
        true
    }

    fn restart_later(&mut self, i: usize, reason: String) {
        let leg = &mut self.state[i];
        let delay = RESTART_BASE
            .saturating_mul(1u32 << leg.attempts.min(10))
            .min(RESTART_CAP);
        leg.attempts = leg.attempts.saturating_add(1);
        self.legs.mark(i, MemberState::Down);
        leg.status = Status::Down {
            reason,
            retry: Instant::now() + delay,
        };
    }

    /// Reopen member `i` in the background (opening may take a while: an SSE member connects).
    fn reopen(&mut self, i: usize) {
        self.state[i].status = Status::Opening;
        self.legs.mark(i, MemberState::Starting);
        let member = self.spec.members[i].clone();
        let ctx = member_ctx(&self.ctx, &self.legs.cancel);
        let tx = self.reopened.clone();
        self.ctx.tracker.spawn(async move {
            let o = open_member(&member, ctx).await;
            let _ = tx.send((i, o)).await;
        });
    }

    async fn reopened(&mut self, i: usize, o: Placed) {
        match o {
            Ok(placed) => {
                let spec = &self.spec.members[i];
                let hold = leg_hold(spec, &placed, &self.ctx.session, &self.shared, i);
                let events = self.legs.open(i, placed, hold);
                self.arm_sweep(i);
                self.streams.insert(i, member_events(events));
                self.state[i].status = Status::Joining;
                // Before the client's `initialize` it joins with the others.
                if let Some(params) = self.init.clone()
                    && !self.ask(i, "initialize", params, Pending::Rejoin).await
                {
                    self.restart_later(i, "could not send initialize".into());
                }
            }
            Err(e) => {
                tracing::warn!(server = %self.state[i].name, error = %e, "composite member failed to restart");
                self.restart_later(i, e.to_string());
            }
        }
    }

    // ----- timers -----

    fn next_timer(&self) -> Option<Instant> {
        let mut t = self.debounce;
        let mut at = |x: Instant| t = Some(t.map_or(x, |y| y.min(x)));
        if let Some(h) = &self.handshake {
            at(h.deadline);
        }
        if let Some((_, deadline)) = &self.restoring {
            at(*deadline);
        }
        for st in &self.lists {
            if let Some(w) = &st.walk {
                at(w.deadline);
            }
        }
        for l in &self.state {
            if let Status::Down { retry, .. } = l.status {
                at(retry);
            }
        }
        if let Some(s) = self.sweep_at {
            at(s);
        }
        t
    }

    /// Member `i`'s leg timeout, from its candidate's guard (`None`: no limit).
    fn request_timeout(&self, i: usize) -> Option<Duration> {
        self.legs.guard(i).and_then(|g| g.request_timeout())
    }

    /// Member `i`'s leg opened: with a request timeout, its requests are looked at within one
    /// timeout from now.
    fn arm_sweep(&mut self, i: usize) {
        if let Some(t) = self.request_timeout(i) {
            let at = Instant::now() + t;
            self.sweep_at = Some(self.sweep_at.map_or(at, |s| s.min(at)));
        }
    }

    /// Time out the requests in flight at members for their member's request timeout; look
    /// again at the first deadline left, or one shortest timeout from now.
    async fn sweep(&mut self, now: Instant) {
        let timeouts: Vec<Option<Duration>> = (0..self.state.len())
            .map(|i| self.request_timeout(i))
            .collect();
        let (due, next) = self
            .shared
            .expire(now, |m| timeouts.get(m).copied().flatten());
        for (id, r) in due {
            let after = timeouts[r.member].unwrap_or_default();
            self.request_timed_out(id, r, after).await;
        }
        let horizon = timeouts.iter().flatten().min().map(|t| now + *t);
        self.sweep_at = match (next, horizon) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    /// A client request got no answer from its member within the member's request timeout:
    /// the client is answered with the error, the member's breaker counts it, and the member
    /// is told to stop (`notifications/cancelled`).
    async fn request_timed_out(&mut self, id: RequestId, r: Routed, after: Duration) {
        let i = r.member;
        if let Some(g) = self.legs.guard(i) {
            g.timed_out();
        }
        let server = self.state[i].name.clone();
        tracing::warn!(%server, %id, method = r.method, "a composite member's request timed out");
        let msg = format!(
            "{} timed out: server `{server}` did not answer within {} s",
            r.method,
            after.as_secs_f64()
        );
        self.fail(&id, REQUEST_TIMEOUT, &msg).await;
        let cancel = json!({"requestId": id, "reason": "timed out at the proxy"});
        self.notify_member(i, "notifications/cancelled", Some(cancel))
            .await;
        if self.timed_out.len() >= TIMED_OUT_KEPT {
            self.timed_out.pop_front();
        }
        self.timed_out.push_back((i, id));
    }

    /// Whatever is due; false when the session must end.
    async fn timers(&mut self) -> bool {
        let now = Instant::now();
        if self.sweep_at.is_some_and(|s| s <= now) {
            self.sweep(now).await;
        }
        if self.debounce.is_some_and(|d| d <= now) {
            self.debounce = None;
            let mut sent = HashSet::new();
            for list in List::ALL {
                if std::mem::take(&mut self.changed[list.index()])
                    && self.initialized
                    && sent.insert(list.changed())
                    && let Some(f) = to_frame(&json!({"jsonrpc": "2.0", "method": list.changed()}))
                {
                    self.emit(f, Via::Unrelated).await;
                }
            }
        }
        if let Some(h) = &self.handshake
            && h.deadline <= now
        {
            let late: Vec<usize> = h.waiting.iter().copied().collect();
            for i in late {
                if !self.down(i, "no answer to initialize in time".into()).await {
                    return false;
                }
            }
        }
        if let Some((waiting, deadline)) = &self.restoring
            && *deadline <= now
        {
            let late: Vec<usize> = waiting.iter().copied().collect();
            self.restoring = None;
            for i in late {
                if !self.down(i, "no answer to initialize in time".into()).await {
                    return false;
                }
            }
        }
        for list in List::ALL {
            let late: Vec<usize> = match &self.lists[list.index()].walk {
                Some(w) if w.deadline <= now => w.waiting.iter().copied().collect(),
                _ => continue,
            };
            for i in late {
                tracing::warn!(server = %self.state[i].name, method = list.method(), "a member did not list in time; merging without it");
                self.pending
                    .retain(|(m, _), p| !(*m == i && matches!(p, Pending::Page(l) if *l == list)));
                self.page_in(i, list, None).await;
            }
        }
        for i in 0..self.state.len() {
            if let Status::Down { retry, .. } = self.state[i].status
                && retry <= now
            {
                self.reopen(i);
            }
        }
        true
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// At most 64 characters of a client-given name or URI, for error messages.
fn shown(s: &str) -> String {
    s.chars().take(64).collect()
}

/// What some member offers, merged: each list with `listChanged` (the composite sends it when
/// members come and go), `subscribe` if any member has it, logging and completions if any.
fn merge_capabilities(into: &mut Map<String, Value>, member: &Value) {
    for c in ["tools", "prompts"] {
        if member.get(c).is_some() {
            into.insert(c.into(), json!({"listChanged": true}));
        }
    }
    if let Some(r) = member.get("resources") {
        let subscribe = r.get("subscribe").and_then(Value::as_bool).unwrap_or(false)
            || into
                .get("resources")
                .and_then(|x| x.get("subscribe"))
                .and_then(Value::as_bool)
                .unwrap_or(false);
        let mut v = json!({"listChanged": true});
        if subscribe {
            v["subscribe"] = json!(true);
        }
        into.insert("resources".into(), v);
    }
    for c in ["logging", "completions"] {
        if member.get(c).is_some() {
            into.insert(c.into(), json!({}));
        }
    }
}

/// Apply each member's shaper to its tools: hidden ones go, the rest are listed as shaped; the
/// names a shaper changed are returned, per member, as shaped name → the member's own name.
type Renamed = Vec<HashMap<String, String>>;

fn shape(spec: &CompositeSpec, items: Vec<Vec<Value>>) -> (Vec<Vec<Value>>, Renamed) {
    let mut renamed: Renamed = vec![HashMap::new(); items.len()];
    let shaped = items
        .into_iter()
        .enumerate()
        .map(
            |(i, tools)| match spec.members.get(i).and_then(|m| m.shaper.as_ref()) {
                None => tools,
                Some(shaper) => tools
                    .iter()
                    .filter_map(|t| {
                        let own = t.get("name").and_then(Value::as_str)?;
                        let out = shaper.list(t)?;
                        let name = out.get("name").and_then(Value::as_str)?;
                        if name != own {
                            renamed[i].insert(name.to_string(), own.to_string());
                        }
                        Some(out)
                    })
                    .collect(),
            },
        )
        .collect();
    (shaped, renamed)
}

/// Merge the members' items of `list` in member order, exposing their names or URIs.
fn merge(
    spec: &CompositeSpec,
    list: List,
    legs: &[Leg],
    items: Vec<Vec<Value>>,
) -> Result<(Vec<Value>, Option<NameMap>), names::NameError> {
    let field = list.field();
    let map = match list.names_kind() {
        Some(kind) => {
            let owned: Vec<Vec<String>> = items
                .iter()
                .map(|its| {
                    its.iter()
                        .filter_map(|it| it.get(field).and_then(Value::as_str))
                        .map(str::to_string)
                        .collect()
                })
                .collect();
            let members: Vec<(&str, &[String])> = legs
                .iter()
                .zip(&owned)
                .map(|(l, n)| (&*l.name, n.as_slice()))
                .collect();
            Some(NameMap::build(kind, &members, &spec.names)?)
        }
        None => None,
    };
    let mut out = Vec::new();
    for (i, its) in items.into_iter().enumerate() {
        for mut it in its {
            let Some(original) = it.get(field).and_then(Value::as_str).map(str::to_string) else {
                continue;
            };
            let exposed = match &map {
                Some(m) => match m.exposed(i, &original) {
                    Some(e) => e.to_string(),
                    None => continue,
                },
                None if spec.transparent() => original,
                None => names::expose_uri(&legs[i].name, &original),
            };
            it[field] = json!(exposed);
            out.push(it);
        }
    }
    Ok((out, map))
}
