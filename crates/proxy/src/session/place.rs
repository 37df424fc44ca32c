//! Placement, and the one path that creates a session.
//!
//! A request's [`Target`] names its route and carries a [`Placer`]: the seam through which a
//! mode decides where new sessions go. Forward mode places every session of a route on its one
//! configured upstream ([`StaticPlacer`]); the gateway's placer chooses among a route's upstream
//! set, binds sessions to principals and applies the route's rules. The engine never knows which.
//!
//! [`create`] is how every front (Streamable HTTP, legacy HTTP+SSE, held 2026-07-28 sessions)
//! creates a session: admission (a reserved slot in the [`Host`]) → the session record →
//! connect, failing over from one candidate to the next → bind → list in the host. Nothing is
//! recorded or spawned for a session refused at admission, and a session whose upstream cannot
//! be started leaves an ended record behind, never an active one.

use crate::error::ProxyError;
use crate::guard::Guard;
use crate::pipeline::{Grant, Pipeline};
use crate::session::{Host, Kind, Session, Slot, mint_session_id};
use crate::upstream::spares::Spares;
use crate::upstream::{UpstreamCtx, UpstreamEvent, UpstreamSpec};
use futures_util::future::BoxFuture;
use shadowcat_proto::Frame;
use shadowcat_store::SessionStore;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// What a request's path (or absolute URI) selects.
#[derive(Clone)]
pub struct Target {
    /// Route key sessions are bound to.
    pub key: Arc<str>,
    /// The upstream a stateless (2026-07-28) request goes to, and the default of new sessions.
    pub spec: UpstreamSpec,
    /// Where new sessions of this route go, and who may use them.
    pub placer: Arc<dyn Placer>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("key", &self.key)
            .field("principal", &self.placer.principal())
            .finish_non_exhaustive()
    }
}

impl Target {
    /// A route whose sessions all go to `spec` (forward mode).
    pub fn fixed(key: Arc<str>, spec: UpstreamSpec) -> Target {
        let placer = Arc::new(StaticPlacer::new(spec.clone()));
        Target { key, spec, placer }
    }
}

/// One upstream a new session may be placed on.
#[derive(Clone)]
pub struct Candidate {
    /// The placer's index for it (what [`Placer::eject`] and [`Placer::placed`] are given).
    pub index: usize,
    /// Its name in session records (affinity across replicas) and logs.
    pub name: Arc<str>,
    /// Where it is.
    pub spec: UpstreamSpec,
    /// Its breaker, retry budget and request timeout (`None`: the front's).
    pub guard: Option<Arc<Guard>>,
    /// Warm spare children a new session takes instead of spawning one.
    pub spares: Option<Arc<Spares>>,
}

/// Where the sessions of one route (for one request's principal) go. Implemented by the modes:
/// [`StaticPlacer`] in forward mode, the gateway's route placer in gateway mode.
pub trait Placer: Send + Sync + 'static {
    /// The authenticated principal of the request (new sessions are bound to it).
    fn principal(&self) -> Option<&str> {
        None
    }

    /// What the policy attaches to the request for its own hooks ([`FrameCtx::grant`]): a new
    /// session starts with it, each later request of the session refreshes it, a stateless
    /// request carries it.
    ///
    /// [`FrameCtx::grant`]: crate::pipeline::FrameCtx::grant
    fn grant(&self) -> Option<Grant> {
        None
    }

    /// The candidates for new session `session`, best first, without the indexes in `tried`
    /// (they failed this session already). An error refuses the session (e.g. every breaker is
    /// open).
    fn plan(&self, session: &str, tried: &[usize]) -> Result<Vec<Candidate>, ProxyError>;

    /// With failover, a session that cannot start on one candidate moves on to the next, and
    /// each candidate is first probed (a TCP connect) within the returned time. `None`: no
    /// failover.
    fn failover(&self) -> Option<Duration> {
        None
    }

    /// How many candidates the route has in all.
    fn size(&self) -> usize {
        1
    }

    /// Candidate `index` failed to take a session: stop placing sessions on it for a while.
    fn eject(&self, _index: usize) {}

    /// `session` now lives on candidate `index` (placed here, or continued for another replica).
    fn placed(&self, _index: usize, _session: &Arc<Session>) {}

    /// A composite session's leg now runs on candidate `index` (its server started, restarted,
    /// or was continued for another replica): it counts there (balancing, the admin view) for
    /// as long as the returned hold is kept. The composite drops the hold when the leg closes
    /// (its server fails) or the session ends, and with it the leg's place on the candidate.
    fn leg_placed(&self, _index: usize, _leg: PlacedLeg) -> Option<LegHold> {
        None
    }

    /// The candidate a session of another replica, whose record names `upstream`, continues on
    /// (`None`: the route has no such upstream; the session is not found).
    fn pinned(&self, upstream: &str) -> Option<Candidate>;

    /// A request names session `id` (its record is in `store`): `Err` when the request may not
    /// use it. A session answers only to the principal that created it, and another principal's
    /// session is "not found", never "forbidden" (ids are not to be probed).
    fn check_session<'a>(
        &'a self,
        _id: &'a str,
        _store: &'a dyn SessionStore,
    ) -> BoxFuture<'a, Result<(), ProxyError>> {
        Box::pin(async { Ok(()) })
    }

    /// The guard (breaker, retry budget, request timeout) of a stateless (2026-07-28) request
    /// (`None`: the front's).
    fn stateless_guard(&self) -> Option<Arc<Guard>> {
        None
    }

    /// The route's rules for a 2026-07-28 `subscriptions/listen`, which the proxy serves itself
    /// on a held session (no hook sees it): `Err(answer)` refuses it, or one of the URIs it
    /// would subscribe to. Every other message meets the rules in the policy's hooks.
    fn authorize_listen(&self, _frame: &Frame) -> Result<(), Frame> {
        Ok(())
    }
}

/// A composite session's leg on one candidate, as [`Placer::leg_placed`] is told of it.
pub struct PlacedLeg {
    /// The composite session's id.
    pub session: Arc<str>,
    /// The client requests in flight on the leg now.
    pub inflight: Arc<dyn Fn() -> usize + Send + Sync>,
}

/// What a placer keeps a composite session's leg counted by ([`Placer::leg_placed`]): its
/// place on the candidate ends when this is dropped.
pub type LegHold = Box<dyn std::any::Any + Send + Sync>;

/// Forward mode's placer: every session of the route goes to one upstream.
pub struct StaticPlacer {
    candidate: Candidate,
}

impl StaticPlacer {
    /// Place every session on `spec`.
    pub fn new(spec: UpstreamSpec) -> StaticPlacer {
        StaticPlacer {
            candidate: Candidate {
                index: 0,
                name: Arc::from(spec.describe()),
                spec,
                guard: None,
                spares: None,
            },
        }
    }
}

impl Placer for StaticPlacer {
    fn plan(&self, _session: &str, tried: &[usize]) -> Result<Vec<Candidate>, ProxyError> {
        Ok(if tried.is_empty() {
            vec![self.candidate.clone()]
        } else {
            Vec::new()
        })
    }

    fn pinned(&self, _upstream: &str) -> Option<Candidate> {
        Some(self.candidate.clone())
    }
}

/// Makes the upstream context of a new session, given its id.
pub type CtxFor<'a> = Box<dyn Fn(&Arc<str>) -> UpstreamCtx + Send + Sync + 'a>;

/// What [`create`] uses of the front that creates a session.
pub struct Creator<'a> {
    /// Admission and the table the session is listed in.
    pub host: &'a Arc<Host>,
    /// The hooks the session runs.
    pub pipeline: &'a Pipeline,
    /// The upstream context of a new session (its cancel token, tracker, HTTP client, options
    /// and the front's guard).
    pub ctx: CtxFor<'a>,
}

/// A session to create.
#[derive(Clone, Copy)]
pub struct NewSession<'a> {
    /// Its route (and placement).
    pub target: &'a Target,
    /// Its kind in the host's table.
    pub kind: Kind,
    /// The route its record names.
    pub route: &'a str,
    /// The `initialize` its record is made from (`None`: it comes later, on a front that opens
    /// the session first; see [`Session::record_client`]).
    pub init: Option<&'a Frame>,
    /// Candidates that already failed this client's `initialize`.
    pub tried: &'a [usize],
}

/// A created session.
pub struct Created {
    /// The session, listed in the host.
    pub session: Arc<Session>,
    /// Its upstream's events (for the front's pump).
    pub events: mpsc::Receiver<UpstreamEvent>,
    /// The candidate it was placed on.
    pub candidate: usize,
}

/// Create a session: reserve its place, record it, start its upstream on the placer's first
/// candidate that works, bind it, list it. This is the only place sessions are created.
pub async fn create(env: &Creator<'_>, new: NewSession<'_>) -> Result<Created, ProxyError> {
    let placer = &*new.target.placer;
    // Admission first: nothing is recorded or spawned for a session over a limit.
    let slot = env.host.reserve(placer.principal())?;
    let records = env.host.records();
    let id = mint_session_id();
    tracing::Span::current().record("session", &*id);
    let plan = placer.plan(&id, new.tried)?;
    let Some(first) = plan.first() else {
        return Err(ProxyError::UpstreamConnect(
            "no upstream of the route is left to try".into(),
        ));
    };
    // Record first: with a store that fails closed, nothing is spawned for a refused session.
    records
        .created(&id, new.route, &first.name, new.init, placer.principal())
        .await?;
    let records = &**records;
    let connected = connect_first(placer, plan, |n, c| {
        let id = id.clone();
        async move {
            if n > 0 {
                records.moved(&id, &c.name).await;
            }
            let mut ctx = (env.ctx)(&id);
            if let Some(g) = &c.guard {
                ctx.guard = Some(g.clone());
            }
            match c.spares.as_ref().and_then(|s| s.take()) {
                Some(spare) => {
                    tracing::debug!(upstream = %c.name, "the session takes a warm spare");
                    ctx.cancel = spare.cancel;
                    Ok(Session::with_upstream(
                        id.clone(),
                        c.spec,
                        env.pipeline.clone(),
                        spare.opened,
                        ctx,
                    ))
                }
                None => Session::connect(id.clone(), c.spec, env.pipeline.clone(), ctx).await,
            }
        }
    })
    .await;
    match connected {
        Ok(Connected {
            candidate,
            name,
            value: (session, events),
            ..
        }) => {
            session.attach(env.host);
            session.set_grant(placer.grant());
            placer.placed(candidate, &session);
            session.admit(slot, new.kind, new.target.key.clone());
            tracing::info!(upstream = %name, kind = new.kind.as_str(), "session created");
            Ok(Created {
                session,
                events,
                candidate,
            })
        }
        Err(e) => {
            records.ended(&id).await;
            Err(e)
        }
    }
}

/// What [`connect_first`] connected, and on which candidate.
pub struct Connected<T> {
    /// The candidate's index (see [`Candidate::index`]).
    pub candidate: usize,
    /// Its name.
    pub name: Arc<str>,
    /// Its guard (breaker, retry budget, request timeout), for what runs on it.
    pub guard: Option<Arc<Guard>>,
    /// What `connect` made.
    pub value: T,
}

/// Connect on the first candidate of `plan` (from `placer`) that works: with failover each
/// candidate is first probed (a TCP connect); one that cannot be reached, or fails to start
/// with a retryable error, is ejected, counted as a failure by its breaker, and the next is
/// tried. `connect(n, candidate)` starts the leg on the `n`-th candidate of the plan. A
/// session ([`create`]) and a composite route's member (its mux) both start their upstream
/// through here, so both fail over the same way.
pub async fn connect_first<T, F, Fut>(
    placer: &dyn Placer,
    plan: Vec<Candidate>,
    mut connect: F,
) -> Result<Connected<T>, ProxyError>
where
    F: FnMut(usize, Candidate) -> Fut,
    Fut: std::future::Future<Output = Result<T, ProxyError>>,
{
    let probe_within = placer.failover().filter(|_| plan.len() > 1);
    let count = plan.len();
    let mut last = None;
    for (n, c) in plan.into_iter().enumerate() {
        if let Some(timeout) = probe_within
            && let Err(e) = probe(&c.spec, timeout).await
        {
            tracing::warn!(upstream = %c.name, error = %e, "upstream unreachable; ejecting it and trying the next");
            candidate_failed(placer, c.index, c.guard.as_ref(), &e);
            last = Some(e);
            continue;
        }
        let (candidate, name, guard) = (c.index, c.name.clone(), c.guard.clone());
        match connect(n, c).await {
            Ok(value) => {
                return Ok(Connected {
                    candidate,
                    name,
                    guard,
                    value,
                });
            }
            Err(e) => {
                candidate_failed(placer, candidate, guard.as_ref(), &e);
                if e.retryable() && n + 1 < count {
                    tracing::warn!(upstream = %name, error = %e, "upstream failed to start; trying the next");
                    last = Some(e);
                    continue;
                }
                return Err(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| ProxyError::UpstreamConnect("no upstream to try".into())))
}

/// Candidate `index` of `placer` (guarded by `guard`) could not be reached or failed to start
/// with `e`: its breaker counts the failure, and, when the failure may pass (`e` is
/// retryable: unreachable, refused), it is ejected so that the next plans put it last.
pub(crate) fn candidate_failed(
    placer: &dyn Placer,
    index: usize,
    guard: Option<&Arc<Guard>>,
    e: &ProxyError,
) {
    if let Some(g) = guard {
        g.record(false);
    }
    if e.retryable() {
        placer.eject(index);
    }
}

/// What a front's `initialize` exchange on a new session came to (see [`initialize`]).
pub enum Initialized<T> {
    /// The server answered: the session started, or the server itself refused (its own error,
    /// e.g. a version it does not speak, is its answer; another upstream would not change it).
    Answered(T),
    /// The upstream failed the `initialize` (unreachable, HTTP error, child exited, timed out:
    /// the proxy had to answer it) before anything reached the client, and the front has ended
    /// the session. `T` is the front's answer should no other upstream be left to try.
    UpstreamFailed(T),
}

/// Create a session and run the front's `initialize` exchange on it (`exchange` gets the
/// created session; on failure it ends it). When the route fails over and the upstream failed
/// the `initialize`, that upstream is ejected and a new session is created on the route's next
/// one: the client sees only the upstream that took it. This is the one initialize-failover
/// loop; every front whose client's `initialize` opens the session (Streamable HTTP, held
/// 2026-07-28 sessions) goes through it. (A legacy HTTP+SSE session exists before its client's
/// `initialize`, by that wire format, so it fails over only while connecting, in [`create`].)
pub async fn initialize<T, F, Fut>(
    env: &Creator<'_>,
    new: NewSession<'_>,
    mut exchange: F,
) -> Result<T, ProxyError>
where
    F: FnMut(Created) -> Fut,
    Fut: Future<Output = Initialized<T>>,
{
    let placer = &*new.target.placer;
    let mut tried = new.tried.to_vec();
    loop {
        let created = create(
            env,
            NewSession {
                tried: &tried,
                ..new
            },
        )
        .await?;
        let candidate = created.candidate;
        match exchange(created).await {
            Initialized::Answered(t) => return Ok(t),
            Initialized::UpstreamFailed(t) => {
                if fail_over(placer, candidate, &mut tried) {
                    continue;
                }
                return Ok(t);
            }
        }
    }
}

/// A session of another replica to continue here (from its record).
pub struct Resumed {
    /// Its id.
    pub id: Arc<str>,
    /// The protocol version it negotiated.
    pub version: Option<String>,
    /// The upstream's session id.
    pub upstream_session_id: Option<String>,
    /// A composite session's recorded state (its members' sessions, the client's
    /// `initialize`): the composite is rebuilt from it.
    pub composite: Option<crate::upstream::composite::saved::Saved>,
}

/// A session connected but not yet admitted: [`Unlisted::admit`] binds it to its candidate and
/// lists it in the host; dropping it instead gives its place back.
pub struct Unlisted {
    slot: Slot,
    placer: Arc<dyn Placer>,
    candidate: usize,
    kind: Kind,
    key: Arc<str>,
}

impl Unlisted {
    /// Bind `session` to its candidate and list it in the host.
    pub fn admit(self, session: &Arc<Session>) {
        session.set_grant(self.placer.grant());
        self.placer.placed(self.candidate, session);
        session.admit(self.slot, self.kind, self.key);
    }
}

/// Continue a session of another replica on `candidate` (the one its record names): its place
/// is reserved (it counts like any other), its upstream connected and its negotiated state
/// restored. It is admitted only once the caller knows it is the one that continues it (two
/// requests may race to), with [`Unlisted::admit`].
pub async fn resume(
    env: &Creator<'_>,
    target: &Target,
    candidate: Candidate,
    resumed: &Resumed,
) -> Result<(Arc<Session>, mpsc::Receiver<UpstreamEvent>, Unlisted), ProxyError> {
    let slot = env.host.reserve(target.placer.principal())?;
    let mut ctx = (env.ctx)(&resumed.id);
    // Guarded like a session placed here (breaker, retry budget, request timeout).
    if let Some(g) = &candidate.guard {
        ctx.guard = Some(g.clone());
    }
    let (session, events) = match (&candidate.spec, &resumed.composite) {
        (UpstreamSpec::Composite(c), Some(saved)) => {
            let opened = crate::upstream::open_resumed(c, ctx.clone(), saved).await?;
            Session::with_upstream(
                resumed.id.clone(),
                candidate.spec,
                env.pipeline.clone(),
                opened,
                ctx,
            )
        }
        _ => {
            Session::connect(
                resumed.id.clone(),
                candidate.spec,
                env.pipeline.clone(),
                ctx,
            )
            .await?
        }
    };
    session.attach(env.host);
    session.restore(
        resumed.version.as_deref(),
        resumed.upstream_session_id.as_deref(),
    );
    // Bound to its principal before any request can find it.
    if let Some(p) = slot.principal() {
        session.set_principal(p);
    }
    let unlisted = Unlisted {
        slot,
        placer: target.placer.clone(),
        candidate: candidate.index,
        kind: Kind::Adopted,
        key: target.key.clone(),
    };
    Ok((session, events, unlisted))
}

/// A new session failed its `initialize` on candidate `index` (the proxy had to answer it).
/// With failover, the candidate is ejected and added to `tried`; `true` when the route has
/// another candidate left to try.
fn fail_over(placer: &dyn Placer, index: usize, tried: &mut Vec<usize>) -> bool {
    if placer.failover().is_none() || placer.size() < 2 {
        return false;
    }
    tracing::warn!(
        "upstream failed the initialize of a new session; ejecting it and trying the next"
    );
    placer.eject(index);
    tried.push(index);
    tried.len() < placer.size()
}

/// Can a TCP connection to an HTTP upstream be opened? (Stdio upstreams are checked by
/// spawning them.)
pub async fn probe(spec: &UpstreamSpec, timeout: Duration) -> Result<(), ProxyError> {
    let UpstreamSpec::Http { url, .. } = spec else {
        return Ok(());
    };
    let label = shadowcat_tape::redact::url_label(url);
    let u = reqwest::Url::parse(url)
        .map_err(|e| ProxyError::UpstreamConnect(format!("invalid upstream URL `{label}`: {e}")))?;
    let host = u
        .host_str()
        .unwrap_or("")
        .trim_matches(['[', ']'])
        .to_string();
    let port = u.port_or_known_default().unwrap_or(80);
    match tokio::time::timeout(
        timeout,
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(ProxyError::UpstreamConnect(format!(
            "cannot connect to {label}: {e}"
        ))),
        Err(_) => Err(ProxyError::UpstreamConnect(format!(
            "cannot connect to {label}: no answer within {} ms",
            timeout.as_millis()
        ))),
    }
}
