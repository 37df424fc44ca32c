//! The gateway's [`Placer`]: a request's route (its upstream set and rules) and principal. It
//! binds sessions to principals, places new sessions on the set, and attaches the principal to
//! requests for the authorization hook (which applies the route's rules in every era). The engine's one creation path ([`shadowcat_proxy::session::place::create`])
//! runs the failover loop over the candidates it gives.

use super::balance::UpstreamSet;
use super::{Bound, Gateway, Principal, Route};
use futures_util::future::BoxFuture;
use shadowcat_proto::Frame;
use shadowcat_proto::error::error_frame;
use shadowcat_proxy::error::ProxyError;
use shadowcat_proxy::pipeline::Grant;
use shadowcat_proxy::session::Session;
use shadowcat_proxy::session::place::{Candidate, LegHold, PlacedLeg, Placer};
use shadowcat_proxy::upstream::UpstreamSpec;
use shadowcat_store::SessionStore;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The placement of one request's route (see the module docs).
#[derive(Clone)]
pub struct GatewayTarget {
    pub(super) gateway: Arc<Gateway>,
    pub(super) route: Arc<Route>,
    /// Shared with the session's hooks as its [`Grant`].
    pub(super) principal: Option<Arc<Principal>>,
    /// The member a stateless (2026-07-28) request was placed on.
    pub(super) member: Option<usize>,
    /// The client's validated JWT, when a member exchanges it for its own token.
    pub(super) client_token: Option<Arc<str>>,
}

/// `spec` for a request whose client sent `token`: an upstream whose OAuth client does token
/// exchange gets credentials of its own for that token (cached per token); others are
/// unchanged. Without a token such an upstream cannot be reached: the error says so.
pub(crate) fn for_client(
    spec: &UpstreamSpec,
    token: Option<&str>,
) -> Result<UpstreamSpec, ProxyError> {
    use shadowcat_proxy::upstream::credentials::Credentials;
    match spec {
        UpstreamSpec::Http {
            url,
            headers,
            credentials: Some(c),
        } if c.client().exchange => {
            let Some(t) = token else {
                return Err(ProxyError::bad(
                    shadowcat_proxy::error::Refusal::Forbidden,
                    shadowcat_proto::error::INVALID_REQUEST,
                    "this route exchanges the client's token for the upstream's: authenticate with a JWT (an API key cannot be exchanged)",
                ));
            };
            Ok(UpstreamSpec::Http {
                url: url.clone(),
                headers: headers.clone(),
                credentials: Some(Credentials::exchange(c.client(), t)),
            })
        }
        UpstreamSpec::Composite(c) if needs_client_token(spec) => {
            let mut members = Vec::with_capacity(c.members.len());
            for m in &c.members {
                let mut m = m.clone();
                m.spec = for_client(&m.spec, token)?;
                members.push(m);
            }
            Ok(UpstreamSpec::Composite(Arc::new(
                shadowcat_proxy::upstream::composite::CompositeSpec {
                    members,
                    ..(**c).clone()
                },
            )))
        }
        other => Ok(other.clone()),
    }
}

/// Whether `spec` (or a member of it) exchanges the client's token.
pub(crate) fn needs_client_token(spec: &UpstreamSpec) -> bool {
    match spec {
        UpstreamSpec::Http {
            credentials: Some(c),
            ..
        } => c.client().exchange,
        UpstreamSpec::Composite(c) => c.members.iter().any(|m| needs_client_token(&m.spec)),
        _ => false,
    }
}

impl std::fmt::Debug for GatewayTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayTarget")
            .field("route", &self.route.path)
            .field("principal", &Placer::principal(self))
            .finish()
    }
}

/// Candidate `i` of `set` for a request whose client sent `token`.
fn candidate_of(set: &UpstreamSet, i: usize, token: Option<&str>) -> Candidate {
    let m = &set.members()[i];
    // A client without the token an exchanging member needs gets the error when the
    // session connects (the spec is left as it is: its exchange has no subject token).
    let spec = for_client(m.spec(), token).unwrap_or_else(|_| m.spec().clone());
    Candidate {
        index: i,
        name: Arc::from(m.name()),
        spec,
        guard: Some(m.guard().clone()),
        spares: m.spares().cloned(),
    }
}

/// The members of `set` to try for new session `session`, best first, without those in
/// `tried`; refused when every breaker among them is open (`what` names the set in the error).
fn plan_on(
    set: &UpstreamSet,
    failover: bool,
    session: &str,
    tried: &[usize],
    what: &str,
) -> Result<Vec<usize>, ProxyError> {
    let mut plan = set.plan(session, failover);
    plan.retain(|i| !tried.contains(i));
    let waits: Option<Vec<_>> = plan
        .iter()
        .map(|&i| set.members()[i].guard().open_for())
        .collect();
    if let Some(wait) = waits.and_then(|w| w.into_iter().min()) {
        return Err(ProxyError::CircuitOpen {
            message: format!(
                "every upstream of {what} is failing (circuit breakers open); retry in {} s",
                wait.as_secs().max(1)
            ),
            retry_after: wait.as_secs().max(1),
        });
    }
    Ok(plan)
}

/// The placer of a composite route's server, over its upstream set
/// (`[[routes.servers.upstreams]]`, or its one upstream as a set of one): the engine's mux
/// plans its leg through it when the session starts and each time the server restarts, as a
/// plain route's sessions are planned ([`GatewayTarget`]): balanced over the set, unhealthy
/// and ejected upstreams last, failed over with the server's `failover` and `connect_timeout`
/// (default: the route's), refused while every breaker is open. The leg counts on the upstream
/// it runs on while it runs there.
pub(crate) struct MemberPlacer {
    /// The server's upstream set (shared with the route, for health checks, metrics and the
    /// admin API).
    pub(crate) set: Arc<UpstreamSet>,
    /// `ROUTE server NAME`, for errors.
    pub(crate) what: String,
    pub(crate) failover: bool,
    pub(crate) connect_timeout: Duration,
    /// The set's active health checks (the server's, or the route's).
    pub(crate) health: Option<crate::config::HealthConfig>,
    /// The client's validated JWT, for an upstream of the set that exchanges it.
    pub(crate) client_token: Option<Arc<str>>,
}

impl MemberPlacer {
    /// The same placer for a request whose client sent `token`.
    pub(crate) fn for_token(&self, token: Option<&str>) -> MemberPlacer {
        MemberPlacer {
            set: self.set.clone(),
            what: self.what.clone(),
            failover: self.failover,
            connect_timeout: self.connect_timeout,
            health: self.health.clone(),
            client_token: token.map(Arc::from),
        }
    }
}

impl Placer for MemberPlacer {
    fn plan(&self, session: &str, tried: &[usize]) -> Result<Vec<Candidate>, ProxyError> {
        let plan = plan_on(&self.set, self.failover, session, tried, &self.what)?;
        let token = self.client_token.as_deref();
        Ok(plan
            .into_iter()
            .map(|i| candidate_of(&self.set, i, token))
            .collect())
    }

    fn failover(&self) -> Option<Duration> {
        self.failover.then_some(self.connect_timeout)
    }

    fn size(&self) -> usize {
        self.set.members().len()
    }

    fn eject(&self, index: usize) {
        self.set.eject(index);
    }

    /// The leg counts as a session of the upstream it runs on (least-in-flight, the admin
    /// API, `shadowcat_upstream_sessions`) while the composite keeps the hold.
    fn leg_placed(&self, index: usize, leg: PlacedLeg) -> Option<LegHold> {
        self.set.bind_leg(index, leg)
    }

    fn pinned(&self, upstream: &str) -> Option<Candidate> {
        let i = self
            .set
            .members()
            .iter()
            .position(|m| m.name() == upstream)?;
        Some(candidate_of(&self.set, i, self.client_token.as_deref()))
    }
}

impl GatewayTarget {
    fn candidate(&self, i: usize) -> Candidate {
        let token = self.client_token.as_deref();
        let mut c = candidate_of(&self.route.set, i, token);
        // A composite route's servers with upstream sets are placed with the client's token
        // too (an upstream of a set may exchange it).
        if token.is_some()
            && !self.route.servers.is_empty()
            && let UpstreamSpec::Composite(spec) = &c.spec
        {
            let mut spec = (**spec).clone();
            for m in &mut spec.members {
                if let Some((_, p)) = self.route.servers.iter().find(|(n, _)| *n == m.name) {
                    m.placer = Some(Arc::new(p.for_token(token)));
                }
            }
            c.spec = UpstreamSpec::Composite(Arc::new(spec));
        }
        c
    }

    fn bound(&self, member: Option<usize>) -> Bound {
        Bound {
            owner: self.principal.as_ref().map(|p| p.id.clone()),
            route: self.route.clone(),
            member,
            since: Instant::now(),
            draining: false,
        }
    }

    fn foreign(&self, id: &str) -> ProxyError {
        tracing::warn!(
            session = id,
            principal = Placer::principal(self).unwrap_or("-"),
            "a session id was presented by a principal that does not own it"
        );
        self.gateway.metrics.foreign_session(&self.route.path);
        ProxyError::SessionNotFound
    }
}

impl Placer for GatewayTarget {
    fn principal(&self) -> Option<&str> {
        self.principal.as_ref().map(|p| &*p.id)
    }

    /// The route's set chooses; members that already failed this session are left out. Every
    /// breaker open: refused now rather than starting a session bound to fail.
    fn plan(&self, session: &str, tried: &[usize]) -> Result<Vec<Candidate>, ProxyError> {
        let plan = plan_on(
            &self.route.set,
            self.route.failover,
            session,
            tried,
            &self.route.path,
        )?;
        Ok(plan.into_iter().map(|i| self.candidate(i)).collect())
    }

    fn failover(&self) -> Option<Duration> {
        self.route.failover.then_some(self.route.connect_timeout)
    }

    fn size(&self) -> usize {
        self.route.set.members().len()
    }

    fn eject(&self, index: usize) {
        self.route.set.eject(index);
    }

    /// The member counts the session (balancing, least-in-flight, `/api/upstreams`) until it
    /// ends, and the session is bound to the principal and the route's rules.
    fn placed(&self, index: usize, session: &Arc<Session>) {
        self.route.set.bind(index, session);
        let mut bound = self.gateway.bound();
        let b = bound
            .entry(session.id().clone())
            .or_insert_with(|| self.bound(None));
        b.member = Some(index);
        // Routed before a reload that replaced the route: moved onto the configuration in
        // force, or drained when its member is gone.
        self.gateway.placed_late(session.id(), b);
    }

    fn pinned(&self, upstream: &str) -> Option<Candidate> {
        let set = &self.route.set;
        let i = set.members().iter().position(|m| m.name() == upstream)?;
        Some(self.candidate(i))
    }

    fn check_session<'a>(
        &'a self,
        id: &'a str,
        store: &'a dyn SessionStore,
    ) -> BoxFuture<'a, Result<(), ProxyError>> {
        Box::pin(async move {
            let mine = Placer::principal(self);
            // Ended by a drain (first: its binding goes only once its upstream is shut down):
            // the client learns why, and starts a new session.
            if let Some(why) = self.gateway.reloads.ended(id, mine) {
                return Err(ProxyError::bad(
                    shadowcat_proxy::error::Refusal::NotFound,
                    shadowcat_proto::error::INVALID_REQUEST,
                    why.to_string(),
                ));
            }
            {
                let bound = self.gateway.bound();
                if let Some(b) = bound.get(id) {
                    if b.owner.as_deref() == mine {
                        return Ok(());
                    }
                    drop(bound);
                    return Err(self.foreign(id));
                }
            }
            let owner = match store.get(id).await {
                Ok(Some(rec)) => rec.principal,
                // Unknown ids and store errors are the front's to answer.
                Ok(None) | Err(_) => return Ok(()),
            };
            if owner.as_deref() != mine {
                return Err(self.foreign(id));
            }
            // A session of another replica that this one continues (or forwards): remember its
            // owner, so that its next requests are checked without the store.
            self.gateway
                .bound()
                .entry(Arc::from(id))
                .or_insert_with(|| self.bound(None));
            Ok(())
        })
    }

    fn stateless_guard(&self) -> Option<Arc<shadowcat_proxy::guard::Guard>> {
        let m = self.member?;
        Some(self.route.set.members()[m].guard().clone())
    }

    /// The gateway attaches the request's principal (scopes and claims) for its authorization
    /// hook, when some route has rules (nothing else reads it).
    fn grant(&self) -> Option<Grant> {
        if !self.gateway.reloads.any_rules() {
            return None;
        }
        let p: Grant = self.principal.clone()?;
        Some(p)
    }

    /// The route's rules for a 2026-07-28 `subscriptions/listen` served on a held session:
    /// refused when a rule refuses it, or one of its `resourceSubscriptions` URIs.
    fn authorize_listen(&self, frame: &Frame) -> Result<(), Frame> {
        let rules = &self.route.rules;
        if rules.is_open() {
            return Ok(());
        }
        let principal = self.principal.as_deref();
        rules.check_frame(principal, frame).map_err(|denied| {
            tracing::info!(reason = %denied.message, "subscriptions/listen refused by an authorization rule");
            self.gateway.metrics.authz_denied(&self.route.path);
            error_frame(frame.id(), denied.code, &denied.message)
        })
    }
}
