//! A composite upstream: one client session over N *member* servers (a composite route).
//!
//! To the session it is an upstream like any other — frames in with [`Upstream::start`], server
//! frames out on the event channel — so fronts, the session host, the pump and the pipeline
//! need nothing of their own for it. Inside, each member is an upstream leg of its own (stdio,
//! Streamable HTTP, HTTP+SSE, opened with [`super::open`]) and one task, the mux
//! ([`mux`]), stands between them:
//!
//! * `initialize` goes to every member; the answer merges their capabilities and labelled
//!   instructions; each member keeps the version it negotiated.
//! * `tools/list`, `prompts/list`, `resources/list`, `resources/templates/list` walk *every page*
//!   of every member in parallel, merge, and page the merged list with an opaque,
//!   tamper-checked cursor ([`cursor`]). Names are exposed per [`names`]; the merged list is
//!   kept until a member says it changed.
//! * Calls (`tools/call`, `prompts/get`, `resources/read|subscribe|unsubscribe`,
//!   `completion/complete`) go to the owning member with the original name or URI restored;
//!   their answers come back untouched (a `resources/read` answer gets its URIs exposed).
//! * Requests from a member (sampling, elicitation, `roots/list`) reach the client under an id
//!   of the mux's own, and the client's answer goes back to that member under the original.
//! * A member that fails (at start or later) takes its tools away (`list_changed`), its calls
//!   in flight get a JSON-RPC error naming it, and it is restarted with backoff; when it is back
//!   its tools return. With [`Failure::Closed`] the whole session ends instead.
//! * A member is placed through the same [`Placer`] seam as a route's sessions: each start and
//!   restart plans candidates (one, [`StaticPlacer`], unless the policy gives the member an
//!   upstream set), connects on the first that works
//!   ([`connect_first`](crate::session::place::connect_first): probe, eject, next), and the
//!   member's requests then run under that candidate's guard (its breaker refuses them fast
//!   and counts their outcomes; its retry budget covers an HTTP member's retries).

pub mod cursor;
mod mux;
pub mod names;
pub mod saved;

use super::{Upstream, UpstreamCtx, UpstreamEvent, UpstreamSpec};
use crate::error::ProxyError;
use crate::session::place::{Placer, StaticPlacer};
use names::NameRules;
use saved::Saved;
use shadowcat_proto::Frame;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// One member server of a composite route.
#[derive(Clone)]
pub struct Member {
    /// Its name: the prefix of its tools and prompts, the scheme prefix of its resources
    /// (see [`names::valid_server_name`]).
    pub name: String,
    /// Where it is: its one upstream, or the first of its upstream set (how logs name it).
    pub spec: UpstreamSpec,
    /// How its tools are shaped for the client (`None`: as the member lists them).
    pub shaper: Option<Arc<dyn Shaper>>,
    /// Where its leg goes when the mux starts or restarts it: the same seam a route's sessions
    /// are placed through (`None`: always `spec`, as [`StaticPlacer`] places it).
    pub placer: Option<Arc<dyn Placer>>,
}

impl Member {
    /// A member whose tools are served as it lists them, on `spec` alone.
    pub fn new(name: impl Into<String>, spec: UpstreamSpec) -> Member {
        Member {
            name: name.into(),
            spec,
            shaper: None,
            placer: None,
        }
    }

    /// Its placer: the one it was given, or a [`StaticPlacer`] on `spec`.
    pub fn placer(&self) -> Arc<dyn Placer> {
        match &self.placer {
            Some(p) => p.clone(),
            None => Arc::new(StaticPlacer::new(self.spec.clone())),
        }
    }
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("name", &self.name)
            .field("spec", &self.spec)
            .field("shaped", &self.shaper.is_some())
            .field("placed", &self.placer.is_some())
            .finish()
    }
}

impl PartialEq for Member {
    fn eq(&self, other: &Member) -> bool {
        let same_shaper = match (&self.shaper, &other.shaper) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        let same_placer = match (&self.placer, &other.placer) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        self.name == other.name && self.spec == other.spec && same_shaper && same_placer
    }
}

impl Eq for Member {}

/// Tool shaping of one member: the seam through which a policy (the gateway's `[…shape]`
/// settings) decides what the client sees of a member's tools and what the member gets. The
/// mux applies it to every listed tool and every call; a tool the shaper hides is not in the
/// merged list, so it cannot be called by any name.
pub trait Shaper: Send + Sync + 'static {
    /// A tool as the member lists it → as the client sees it: `None` hides it; otherwise the
    /// definition to list (its `name`, `title`, `description`, `inputSchema` may differ).
    fn list(&self, tool: &serde_json::Value) -> Option<serde_json::Value>;

    /// A call to the member's tool `original` (its own name), with the client's `arguments`:
    /// fill in what the client does not see (fixed values of hidden parameters, defaults).
    /// `Err(why)` refuses the call (answered with a JSON-RPC error saying why).
    fn call(
        &self,
        original: &str,
        arguments: &mut serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), String>;
}

/// What a composite session does when a member fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// The other members carry on; the failed one's tools disappear until it is back.
    #[default]
    Open,
    /// The session fails (at start: it is refused; later: it ends).
    Closed,
}

/// A composite route's members and rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompositeSpec {
    /// The members, in order (the order breaks ties between exposed names).
    pub members: Vec<Member>,
    /// How tool and prompt names are exposed.
    pub names: NameRules,
    /// What a member failure does to the session.
    pub failure: Failure,
    /// Items per page of a merged list (`0`: the whole list in one answer).
    pub page_size: usize,
}

impl CompositeSpec {
    /// Members with the default rules.
    pub fn new(members: Vec<Member>) -> CompositeSpec {
        CompositeSpec {
            members,
            names: NameRules::default(),
            failure: Failure::default(),
            page_size: 0,
        }
    }

    /// Every problem that makes the spec unusable, each a sentence naming what is wrong.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.members.is_empty() {
            out.push("a composite route needs at least one server".to_string());
        }
        let mut seen = std::collections::HashSet::new();
        for m in &self.members {
            if let Err(e) = names::valid_server_name(&m.name) {
                out.push(e);
            }
            if !seen.insert(m.name.as_str()) {
                out.push(format!("server name `{}` is used twice", m.name));
            }
            if matches!(m.spec, UpstreamSpec::Composite(_)) {
                out.push(format!(
                    "server `{}` is itself composite; members must be single servers",
                    m.name
                ));
            }
        }
        if let Err(e) = self.names.validate() {
            out.push(e);
        }
        out
    }

    /// A composite of one server, with `prefix = never` and no shaping: names and URIs are the
    /// server's own, and a name or URI the lists do not show still goes to the server (it
    /// decides). Such a route adds the composite's failure handling and nothing else.
    pub fn transparent(&self) -> bool {
        self.members.len() == 1
            && self.names.mode == names::PrefixMode::Never
            && self.members[0].shaper.is_none()
    }

    /// How logs and records name it: `composite(a,b,c)`.
    pub fn describe(&self) -> String {
        let names: Vec<&str> = self.members.iter().map(|m| m.name.as_str()).collect();
        format!("composite({})", names.join(","))
    }
}

/// Where a member of a composite session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MemberState {
    /// Being started (or restarted), its handshake not done.
    Starting = 0,
    /// Serving.
    Up = 1,
    /// Failed; restarted after a backoff (the session goes on without it).
    Down = 2,
}

impl MemberState {
    fn from_u8(v: u8) -> MemberState {
        match v {
            1 => MemberState::Up,
            2 => MemberState::Down,
            _ => MemberState::Starting,
        }
    }

    /// The name the admin API and metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Starting => "starting",
            MemberState::Up => "up",
            MemberState::Down => "down",
        }
    }
}

/// The upstream side of a composite session: a handle on its mux task.
pub struct CompositeUpstream {
    spec: Arc<CompositeSpec>,
    inbox: mpsc::Sender<Frame>,
    legs: Arc<mux::Legs>,
    shared: Arc<mux::Shared>,
    /// The session's event channel (weak: the mux owns it), for answers that skip the mux.
    to_session: mpsc::WeakSender<UpstreamEvent>,
    saved: watch::Receiver<Option<Arc<Saved>>>,
}

impl CompositeUpstream {
    /// The name of the member a client request goes to, when it is known before it is sent (a
    /// `tools/call` of a listed tool, a resource URI): hooks see it as [`FrameCtx::member`].
    ///
    /// [`FrameCtx::member`]: crate::pipeline::FrameCtx::member
    pub fn member_of(&self, frame: &Frame) -> Option<&str> {
        let i = mux::member_of(&self.spec, &self.shared, frame)?;
        self.spec.members.get(i).map(|m| m.name.as_str())
    }

    /// The name of the member offering the tool (or prompt) that the current merged list
    /// exposes as `exposed`; `None` when no such list is current or it has no such name. Hooks
    /// that judge a list answer item by item (tool pinning) use it.
    pub fn member_of_listed(&self, kind: names::Kind, exposed: &str) -> Option<&str> {
        let i = mux::member_of_name(&self.shared, kind, exposed)?;
        self.spec.members.get(i).map(|m| m.name.as_str())
    }

    /// Open the members (in parallel) and start the mux; server frames go to `events`. With
    /// [`Failure::Closed`] a member that cannot start refuses the session; otherwise it is
    /// retried in the background, and only a session none of whose members starts is refused.
    pub async fn start(
        spec: &Arc<CompositeSpec>,
        ctx: UpstreamCtx,
        events: mpsc::Sender<UpstreamEvent>,
    ) -> Result<CompositeUpstream, ProxyError> {
        CompositeUpstream::open(spec, ctx, events, None).await
    }

    /// Continue a session another replica started, from its recorded state ([`saved`]): a
    /// Streamable HTTP member goes on with its recorded upstream session (no new
    /// `initialize`); the others (a stdio child, an HTTP+SSE stream: they died with that
    /// replica) start afresh and are initialized with the client's recorded `initialize`
    /// params, then told `notifications/initialized`. Client frames wait for those handshakes.
    pub async fn resume(
        spec: &Arc<CompositeSpec>,
        ctx: UpstreamCtx,
        events: mpsc::Sender<UpstreamEvent>,
        saved: &Saved,
    ) -> Result<CompositeUpstream, ProxyError> {
        CompositeUpstream::open(spec, ctx, events, Some(saved)).await
    }

    async fn open(
        spec: &Arc<CompositeSpec>,
        ctx: UpstreamCtx,
        events: mpsc::Sender<UpstreamEvent>,
        restore: Option<&Saved>,
    ) -> Result<CompositeUpstream, ProxyError> {
        let problems = spec.problems();
        if !problems.is_empty() {
            return Err(ProxyError::UpstreamConnect(format!(
                "invalid composite route: {}",
                problems.join("; ")
            )));
        }
        let (inbox, rx) = mpsc::channel(ctx.options.channel_capacity);
        let to_session = events.downgrade();
        let (legs, shared, saved) = mux::start(spec.clone(), ctx, rx, events, restore).await?;
        Ok(CompositeUpstream {
            spec: spec.clone(),
            inbox,
            legs,
            shared,
            to_session,
            saved,
        })
    }

    /// The session's state for its record, as it changes (`None` until the client's
    /// `initialize` has been answered; see [`saved`]).
    pub fn saved(&self) -> watch::Receiver<Option<Arc<Saved>>> {
        self.saved.clone()
    }

    /// Send a client frame: a `tools/call` whose name is known goes straight to its member
    /// (an HTTP member's exchange is handed back for the caller to drive, as a plain
    /// session's is, and its answer goes straight to the session, see [`Direct`]); anything
    /// else is handed to the mux.
    pub async fn send(&self, frame: Frame) -> Result<Option<super::Exchange>, ProxyError> {
        if let Some((i, routed)) = mux::fast_call(&self.spec, &self.legs, &self.shared, &frame) {
            let direct = frame.id().cloned().map(|id| Direct {
                id,
                member: i,
                legs: self.legs.clone(),
                shared: self.shared.clone(),
                to_session: self.to_session.clone(),
            });
            let sent = match (self.legs.get(i), direct) {
                (Some(up), Some(d)) => up.start_diverted(routed, Arc::new(d)).await,
                (Some(up), None) => up.start(routed).await,
                (None, _) => Err(ProxyError::UpstreamClosed(format!(
                    "server `{}` of the composite route is unavailable",
                    self.spec.members[i].name
                ))),
            };
            if sent.is_err()
                && let Some(id) = frame.id()
            {
                self.shared.unroute(id);
            }
            return sent;
        }
        self.inbox
            .send(frame)
            .await
            .map_err(|_| ProxyError::UpstreamClosed("the composite session has ended".into()))?;
        Ok(None)
    }

    /// Each member's name and state, in member order.
    pub fn members(&self) -> Vec<(Arc<str>, MemberState)> {
        self.legs.members()
    }

    /// The name of the upstream each member's leg runs on (the candidate its placer gave),
    /// in member order; `None` while a member is down.
    pub fn upstreams(&self) -> Vec<Option<Arc<str>>> {
        (0..self.spec.members.len())
            .map(|i| self.legs.on(i).map(|o| o.upstream))
            .collect()
    }

    /// Stop every member.
    pub async fn shutdown(&self) {
        self.legs.shutdown().await;
    }
}

/// The diversion of a `tools/call` the composite routed itself (its name known, its member
/// up): the member's answer, and the progress and log notifications on its response stream, go
/// straight to the session — they are relayed untouched anyway — instead of through the mux
/// task. Anything else on that stream (requests from the member, `list_changed`…) still goes
/// to the mux, which rewrites or merges it; so does an answer the mux already settled (the
/// member went down meanwhile).
struct Direct {
    id: shadowcat_proto::RequestId,
    /// The member it went to: its breaker counts the answer's outcome, as the mux would.
    member: usize,
    legs: Arc<mux::Legs>,
    shared: Arc<mux::Shared>,
    to_session: mpsc::WeakSender<UpstreamEvent>,
}

impl super::http::Divert for Direct {
    fn divert(&self, frame: &Frame) -> Option<mpsc::Sender<UpstreamEvent>> {
        use shadowcat_proto::FrameKind;
        let direct = match frame.kind() {
            FrameKind::Response | FrameKind::Error => {
                let mine = frame.id() == Some(&self.id) && self.shared.unroute(&self.id).is_some();
                if mine && let Some(g) = self.legs.guard(self.member) {
                    g.record(!crate::session::upstream_failed(frame));
                }
                mine
            }
            FrameKind::Notification => matches!(
                frame.method(),
                Some("notifications/progress" | "notifications/message")
            ),
            FrameKind::Request => false,
        };
        if direct {
            self.to_session.upgrade()
        } else {
            None
        }
    }
}

impl From<CompositeUpstream> for Upstream {
    fn from(c: CompositeUpstream) -> Upstream {
        Upstream::Composite(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, Value, json};
    use std::time::Duration;

    /// Hides `t0001`, lists `t0002` as `renamed` without its `secret` parameter, and gives
    /// every call of `t0002` `secret = 42`.
    struct TestShaper;

    impl Shaper for TestShaper {
        fn list(&self, tool: &Value) -> Option<Value> {
            match tool["name"].as_str()? {
                "t0001" => None,
                "t0002" => {
                    let mut t = tool.clone();
                    t["name"] = json!("renamed");
                    t["description"] = json!("shaped");
                    Some(t)
                }
                _ => Some(tool.clone()),
            }
        }

        fn call(&self, original: &str, args: &mut Map<String, Value>) -> Result<(), String> {
            if original == "t0002" {
                if args.contains_key("secret") {
                    return Err("`secret` is set by the gateway".into());
                }
                args.insert("secret".into(), json!(42));
            }
            Ok(())
        }
    }

    fn paged(tools: usize) -> UpstreamSpec {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/interop/paged_server.py"
        );
        let args = vec![script.into(), "--tools".into(), tools.to_string()];
        UpstreamSpec::stdio(
            "python3",
            [args, vec!["--page".into(), "2".into()]].concat(),
        )
    }

    /// `spec` opened as a session's upstream (in a test context): the upstream and its events.
    async fn open_composite(spec: CompositeSpec) -> (Upstream, mpsc::Receiver<UpstreamEvent>) {
        let spec = UpstreamSpec::Composite(Arc::new(spec));
        let opened = crate::upstream::open(&spec, UpstreamCtx::for_test())
            .await
            .unwrap();
        (opened.upstream, opened.events)
    }

    async fn rpc(
        up: &Upstream,
        events: &mut mpsc::Receiver<UpstreamEvent>,
        id: i64,
        method: &str,
        params: Value,
    ) -> Value {
        let req = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let frame = Frame::parse_single(req.to_string().into()).unwrap();
        up.send(frame).await.unwrap();
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(20), events.recv())
                .await
                .expect("an answer in time")
                .expect("the composite is still open");
            if let UpstreamEvent::Frame { frame, .. } = ev {
                let v: Value = serde_json::from_slice(frame.raw()).unwrap();
                if v["id"] == json!(id) {
                    return v;
                }
            }
        }
    }

    /// A member placed over two candidates (a test placer): an HTTP one nobody listens on and
    /// the paged server. As a gateway's upstream set: ejected candidates are planned last, and
    /// without failover only the first is.
    struct TwoPlacer {
        candidates: Vec<crate::session::place::Candidate>,
        ejected: std::sync::Mutex<Vec<usize>>,
        failover: Option<Duration>,
    }

    impl Placer for TwoPlacer {
        fn plan(
            &self,
            _session: &str,
            tried: &[usize],
        ) -> Result<Vec<crate::session::place::Candidate>, ProxyError> {
            let ejected = self.ejected.lock().unwrap().clone();
            let (mut plan, last): (Vec<_>, Vec<_>) = self
                .candidates
                .iter()
                .filter(|c| !tried.contains(&c.index))
                .cloned()
                .partition(|c| !ejected.contains(&c.index));
            plan.extend(last);
            if self.failover.is_none() {
                plan.truncate(1);
            }
            Ok(plan)
        }

        fn failover(&self) -> Option<Duration> {
            self.failover
        }

        fn size(&self) -> usize {
            self.candidates.len()
        }

        fn eject(&self, index: usize) {
            self.ejected.lock().unwrap().push(index);
        }

        fn pinned(&self, upstream: &str) -> Option<crate::session::place::Candidate> {
            self.candidates
                .iter()
                .find(|c| &*c.name == upstream)
                .cloned()
        }
    }

    /// Two candidates for a member: an HTTP one nobody listens on (`c0`; without failover,
    /// with a token endpoint nobody listens on either, so that it cannot even be opened), then
    /// the paged server with three tools (`c1`), each with its own breaker.
    fn dead_then_paged(
        failover: Option<Duration>,
    ) -> (
        Arc<TwoPlacer>,
        Arc<crate::guard::Guard>,
        Arc<crate::guard::Guard>,
    ) {
        use crate::guard::{BreakerConfig, Guard, GuardConfig};
        use crate::session::place::Candidate;
        let cfg = GuardConfig {
            breaker: Some(BreakerConfig {
                consecutive_failures: 1,
                open_for: Duration::from_secs(600),
                ..BreakerConfig::default()
            }),
            ..GuardConfig::default()
        };
        let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dead = Arc::new(Guard::new("dead", &cfg));
        let live = Arc::new(Guard::new("live", &cfg));
        let candidate = |index: usize, spec: UpstreamSpec, guard: &Arc<Guard>| Candidate {
            index,
            name: Arc::from(format!("c{index}")),
            spec,
            guard: Some(guard.clone()),
            spares: None,
        };
        let token = crate::upstream::credentials::OAuthClient {
            token_url: format!("http://127.0.0.1:{dead_port}/token"),
            client_id: "c".into(),
            client_secret: "s".into(),
            scope: None,
            resource: None,
            audience: None,
            auth_method: Default::default(),
            refresh_before: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
            exchange: false,
            subject_token: None,
        };
        let gone = UpstreamSpec::Http {
            url: format!("http://127.0.0.1:{dead_port}/mcp"),
            headers: Vec::new(),
            // With failover it is probed; without, it must fail to open to be found out.
            credentials: failover
                .is_none()
                .then(|| crate::upstream::Credentials::oauth(token)),
        };
        let placer = Arc::new(TwoPlacer {
            candidates: vec![candidate(0, gone, &dead), candidate(1, paged(3), &live)],
            ejected: Default::default(),
            failover,
        });
        (placer, dead, live)
    }

    /// A session continued from its record whose member ran on an upstream that is gone since
    /// (with failover: it is probed; without: it fails to open): the recorded upstream is
    /// counted by its breaker and ejected, and the member is placed afresh on the other
    /// candidate — which a placement without failover picks only because the dead one was
    /// ejected — where it serves.
    #[tokio::test]
    async fn a_continued_member_whose_recorded_upstream_is_gone_is_placed_elsewhere() {
        for failover in [Some(Duration::from_secs(2)), None] {
            continued_off_a_dead_upstream(failover).await;
        }
    }

    async fn continued_off_a_dead_upstream(failover: Option<Duration>) {
        use std::sync::atomic::Ordering::Relaxed;
        let (placer, dead, live) = dead_then_paged(failover);
        let spec = Arc::new(CompositeSpec::new(vec![
            Member {
                placer: Some(placer.clone()),
                ..Member::new("p", paged(1))
            },
            Member::new("q", paged(2)),
        ]));
        let init = json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}});
        let saved = Saved {
            init,
            key: Saved::encode_key(&[7u8; 32]),
            members: vec![
                saved::SavedMember {
                    name: "p".into(),
                    session: Some("gone-1".into()),
                    version: Some("2025-06-18".into()),
                    capabilities: json!({"tools": {}}),
                    upstream: Some("c0".into()),
                },
                saved::SavedMember {
                    name: "q".into(),
                    session: None,
                    version: None,
                    capabilities: Value::Null,
                    upstream: None,
                },
            ],
        };
        let opened = crate::upstream::open_resumed(&spec, UpstreamCtx::for_test(), &saved)
            .await
            .unwrap();
        let (up, mut events) = (opened.upstream, opened.events);
        let Upstream::Composite(c) = &up else {
            panic!("a composite upstream")
        };
        assert_eq!(
            c.upstreams(),
            [Some(Arc::from("c1")), Some(Arc::from("python3"))],
            "the member left its recorded upstream (failover {failover:?})"
        );
        assert_eq!(*placer.ejected.lock().unwrap(), [0], "ejected once");
        assert_eq!(
            dead.stats().failures.load(Relaxed),
            1,
            "counted by its breaker"
        );
        rpc(&up, &mut events, 2, "tools/list", json!({})).await;
        let called = rpc(
            &up,
            &mut events,
            3,
            "tools/call",
            json!({"name": "p__t0002"}),
        )
        .await;
        assert_eq!(called["result"]["content"][0]["text"], "t0002", "{called}");
        assert_eq!(live.stats().failures.load(Relaxed), 0);
        up.shutdown().await;
    }

    /// A member with a placer starts on the first candidate that works (the unreachable one is
    /// probed, ejected and counted by its breaker), and its calls run under that candidate's
    /// guard: once its breaker opens, a call is refused fast with the breaker's error (the
    /// member never sees it) while the other member still serves.
    #[tokio::test]
    async fn a_placed_member_fails_over_and_runs_under_its_candidates_breaker() {
        use std::sync::atomic::Ordering::Relaxed;
        let (placer, dead, live) = dead_then_paged(Some(Duration::from_secs(2)));
        let spec = CompositeSpec::new(vec![
            Member {
                placer: Some(placer.clone()),
                ..Member::new("p", paged(1))
            },
            Member::new("q", paged(2)),
        ]);
        let (up, mut events) = open_composite(spec).await;
        let Upstream::Composite(c) = &up else {
            panic!("a composite upstream")
        };
        assert_eq!(
            c.upstreams(),
            [Some(Arc::from("c1")), Some(Arc::from("python3"))]
        );
        assert_eq!(*placer.ejected.lock().unwrap(), [0]);
        assert_eq!(dead.stats().failures.load(Relaxed), 1);
        rpc(&up, &mut events, 1, "initialize", json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}})).await;
        rpc(&up, &mut events, 2, "tools/list", json!({})).await;
        // Three tools: the leg runs on the second candidate (`paged(3)`), not `spec`.
        let called = rpc(
            &up,
            &mut events,
            3,
            "tools/call",
            json!({"name": "p__t0002"}),
        )
        .await;
        assert_eq!(called["result"]["content"][0]["text"], "t0002", "{called}");
        assert_eq!(live.stats().failures.load(Relaxed), 0);

        // The candidate's breaker opens: the member's calls are refused fast.
        live.record(false);
        let refused = rpc(
            &up,
            &mut events,
            4,
            "tools/call",
            json!({"name": "p__t0000"}),
        )
        .await;
        assert!(
            refused["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("circuit breaker open")),
            "{refused}"
        );
        assert_eq!(live.stats().rejected.load(Relaxed), 1);
        let other = rpc(
            &up,
            &mut events,
            5,
            "tools/call",
            json!({"name": "q__t0001"}),
        )
        .await;
        assert_eq!(other["result"]["content"][0]["text"], "t0001", "{other}");
        up.shutdown().await;
    }

    /// A placer of one candidate that counts the legs placed on it: how many were placed, and
    /// how many it holds now (a hold is dropped when its leg closes).
    struct Counting {
        candidate: crate::session::place::Candidate,
        placed: std::sync::atomic::AtomicUsize,
        held: Arc<std::sync::atomic::AtomicUsize>,
        inflight: std::sync::Mutex<Vec<Arc<dyn Fn() -> usize + Send + Sync>>>,
    }

    /// Held while a leg counts on the candidate.
    struct Held(Arc<std::sync::atomic::AtomicUsize>);

    impl Drop for Held {
        fn drop(&mut self) {
            self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    impl Placer for Counting {
        fn plan(
            &self,
            _session: &str,
            _tried: &[usize],
        ) -> Result<Vec<crate::session::place::Candidate>, ProxyError> {
            Ok(vec![self.candidate.clone()])
        }

        fn leg_placed(
            &self,
            index: usize,
            leg: crate::session::place::PlacedLeg,
        ) -> Option<crate::session::place::LegHold> {
            use std::sync::atomic::Ordering::SeqCst;
            assert_eq!(index, self.candidate.index);
            assert_eq!(&*leg.session, "s", "the session's id");
            self.placed.fetch_add(1, SeqCst);
            self.held.fetch_add(1, SeqCst);
            self.inflight.lock().unwrap().push(leg.inflight);
            Some(Box::new(Held(self.held.clone())))
        }

        fn pinned(&self, _upstream: &str) -> Option<crate::session::place::Candidate> {
            None
        }
    }

    /// A member's leg is counted on the candidate it runs on from the moment it opens: its
    /// requests in flight are told, a restart after the member failed moves the count (the old
    /// leg's hold is dropped, the new one's kept), and the session's end drops it.
    #[tokio::test]
    async fn a_placed_members_leg_counts_on_its_candidate_until_it_closes() {
        use std::sync::atomic::Ordering::SeqCst;
        let placer = Arc::new(Counting {
            candidate: crate::session::place::Candidate {
                index: 7,
                name: Arc::from("c7"),
                spec: paged(2),
                guard: None,
                spares: None,
            },
            placed: Default::default(),
            held: Default::default(),
            inflight: Default::default(),
        });
        let spec = CompositeSpec::new(vec![
            Member {
                placer: Some(placer.clone()),
                ..Member::new("p", paged(2))
            },
            Member::new("q", paged(1)),
        ]);
        let (up, mut events) = open_composite(spec).await;
        assert_eq!(
            (placer.placed.load(SeqCst), placer.held.load(SeqCst)),
            (1, 1)
        );
        rpc(&up, &mut events, 1, "initialize", json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}})).await;
        rpc(&up, &mut events, 2, "tools/list", json!({})).await;
        // A call in flight at the member is the leg's: `die` never answers before the child
        // exits, so it is counted until the member goes down.
        let die = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "p__die"}});
        let inflight = placer.inflight.lock().unwrap()[0].clone();
        assert_eq!(inflight(), 0);
        up.send(Frame::parse_single(die.to_string().into()).unwrap())
            .await
            .unwrap();
        // Down, then restarted on the candidate: placed again, held once.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while placer.placed.load(SeqCst) < 2 {
            assert!(tokio::time::Instant::now() < deadline, "never restarted");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(placer.held.load(SeqCst), 1, "the old leg's hold is dropped");
        assert_eq!(inflight(), 0, "the failed call is no longer in flight");
        up.shutdown().await;
        assert_eq!(
            placer.held.load(SeqCst),
            0,
            "the session's end drops the hold"
        );
    }

    /// A shaped member: a hidden tool is not listed and cannot be called by any name, a renamed
    /// one is listed and called under its new name only, and the member gets the argument the
    /// shaper fills in (one the client sets itself is refused). Two members' lists are merged
    /// across pages (the server lists 2 tools a page).
    #[tokio::test]
    async fn shaped_tools_are_hidden_renamed_and_filled_in() {
        let spec = CompositeSpec::new(vec![
            Member {
                shaper: Some(Arc::new(TestShaper)),
                ..Member::new("p", paged(4))
            },
            Member::new("q", paged(3)),
        ]);
        let (up, mut events) = open_composite(spec).await;
        let init = rpc(&up, &mut events, 1, "initialize", json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}})).await;
        assert_eq!(init["result"]["serverInfo"]["name"], "shadowcat-composite");
        let list = rpc(&up, &mut events, 2, "tools/list", json!({})).await;
        let names: Vec<&str> = list["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "p__t0000",
                "p__renamed",
                "p__t0003",
                "p__grow",
                "p__die",
                "q__t0000",
                "q__t0001",
                "q__t0002",
                "q__grow",
                "q__die"
            ]
        );
        let called = rpc(
            &up,
            &mut events,
            3,
            "tools/call",
            json!({"name": "p__renamed"}),
        )
        .await;
        assert_eq!(
            called["result"]["content"][0]["text"],
            r#"t0002 {"secret": 42}"#
        );
        for (id, hidden) in [(4, "p__t0001"), (5, "p__t0002")] {
            let refused = rpc(&up, &mut events, id, "tools/call", json!({"name": hidden})).await;
            assert_eq!(refused["error"]["code"], -32602, "{hidden}: {refused}");
        }
        let smuggled = rpc(
            &up,
            &mut events,
            6,
            "tools/call",
            json!({"name": "p__renamed", "arguments": {"secret": 1}}),
        )
        .await;
        assert!(
            smuggled["error"]["message"]
                .as_str()
                .unwrap()
                .contains("set by the gateway"),
            "{smuggled}"
        );
        let other = rpc(
            &up,
            &mut events,
            7,
            "tools/call",
            json!({"name": "q__t0002"}),
        )
        .await;
        assert_eq!(other["result"]["content"][0]["text"], "t0002");
        up.shutdown().await;
    }

    fn names_of(answer: &Value) -> Vec<&str> {
        answer["result"]["tools"]
            .as_array()
            .unwrap_or_else(|| panic!("no tools: {answer}"))
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect()
    }

    /// A session continued from its recorded state, as another replica continues it: the stdio
    /// members start afresh (initialized with the recorded params before any client frame),
    /// the merged list has the same names, and a cursor the first process issued opens the
    /// next page in the second (the key is in the state, the generation is the list's digest).
    #[tokio::test]
    async fn a_session_continued_from_its_record_keeps_names_and_cursors() {
        let spec = Arc::new(CompositeSpec {
            page_size: 3,
            ..CompositeSpec::new(vec![Member::new("p", paged(4)), Member::new("q", paged(3))])
        });
        let opened = crate::upstream::open(
            &UpstreamSpec::Composite(spec.clone()),
            UpstreamCtx::for_test(),
        )
        .await
        .unwrap();
        let (up, mut events) = (opened.upstream, opened.events);
        let mut saved = up.composite().expect("a composite").saved();
        let params = json!({"protocolVersion": "2025-06-18", "capabilities": {"roots": {}}, "clientInfo": {"name": "t", "version": "1"}});
        rpc(&up, &mut events, 1, "initialize", params.clone()).await;
        let first = rpc(&up, &mut events, 2, "tools/list", json!({})).await;
        assert_eq!(names_of(&first), ["p__t0000", "p__t0001", "p__t0002"]);
        let cursor = first["result"]["nextCursor"].as_str().unwrap().to_string();
        let state = saved
            .wait_for(Option::is_some)
            .await
            .expect("the mux publishes its state")
            .clone()
            .unwrap();
        assert_eq!(state.init, params);
        let members: Vec<(&str, Option<&str>)> = state
            .members
            .iter()
            .map(|m| (m.name.as_str(), m.session.as_deref()))
            .collect();
        assert_eq!(members, [("p", None), ("q", None)], "stdio: no session");
        // A member that fails and comes back (re)joins: the state is published again.
        rpc(
            &up,
            &mut events,
            90,
            "tools/call",
            json!({"name": "q__die"}),
        )
        .await;
        tokio::time::timeout(Duration::from_secs(20), saved.changed())
            .await
            .expect("published again once the member is back")
            .expect("the mux is still running");
        let again = saved.borrow().clone().unwrap();
        assert_eq!(again.key, state.key, "the same cursor key");
        assert!(again.members[1].capabilities.get("tools").is_some());
        up.shutdown().await;

        // Another process (a fresh context, the same session id) continues it.
        let opened = crate::upstream::open_resumed(&spec, UpstreamCtx::for_test(), &state)
            .await
            .unwrap();
        let (up, mut events) = (opened.upstream, opened.events);
        let next = rpc(&up, &mut events, 3, "tools/list", json!({"cursor": cursor})).await;
        assert_eq!(names_of(&next), ["p__t0003", "p__grow", "p__die"], "{next}");
        let called = rpc(
            &up,
            &mut events,
            4,
            "tools/call",
            json!({"name": "q__t0001"}),
        )
        .await;
        assert_eq!(called["result"]["content"][0]["text"], "t0001");
        // A member's list changes: the old cursor no longer opens a page.
        let grown = rpc(
            &up,
            &mut events,
            5,
            "tools/call",
            json!({"name": "q__grow"}),
        )
        .await;
        assert!(grown.get("result").is_some(), "{grown}");
        // The client hears of it once the merged list is invalidated.
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(20), events.recv())
                .await
                .expect("list_changed in time")
                .expect("the composite is still open");
            if let UpstreamEvent::Frame { frame, .. } = ev
                && frame.method() == Some("notifications/tools/list_changed")
            {
                break;
            }
        }
        let stale = rpc(&up, &mut events, 6, "tools/list", json!({"cursor": cursor})).await;
        assert_eq!(stale["error"]["code"], -32602, "{stale}");
        up.shutdown().await;
    }
}
