//! What the gateway adds to a request's front [`Target`](crate::front::http::Target): the route's upstream set and the
//! request's principal. It binds sessions to principals and places new sessions on the set.

use super::{Bound, Gateway, Principal, Route};
use crate::error::ProxyError;
use crate::front::http::HttpFront;
use crate::session::Session;
use crate::upstream::{UpstreamEvent, UpstreamSpec};
use shadowcat_proto::Frame;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// What the gateway adds to a request's [`Target`](crate::front::http::Target).
#[derive(Clone)]
pub struct GatewayTarget {
    pub(super) gateway: Arc<Gateway>,
    pub(super) route: Arc<Route>,
    pub(super) principal: Option<Principal>,
    /// The member a stateless (2026-07-28) request was placed on.
    pub(super) member: Option<usize>,
}

impl std::fmt::Debug for GatewayTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayTarget")
            .field("route", &self.route.path)
            .field("principal", &self.principal())
            .finish()
    }
}

impl GatewayTarget {
    /// The authenticated principal of the request (its id).
    pub fn principal(&self) -> Option<&str> {
        self.principal.as_ref().map(|p| &*p.id)
    }

    /// The upstream a session record names (affinity across replicas).
    pub fn spec_for(&self, upstream: &str) -> Option<UpstreamSpec> {
        self.route.set.find(upstream).map(|m| m.spec().clone())
    }

    /// The guard (breaker, retry budget, request timeout) of the member a stateless
    /// (2026-07-28) request was placed on.
    pub(crate) fn stateless_guard(&self) -> Option<Arc<crate::guard::Guard>> {
        let m = self.member?;
        Some(self.route.set.members()[m].guard().clone())
    }

    /// The guard (breaker, retry budget, request timeout) of the member named `upstream`, for
    /// a session of another replica continued here on it.
    pub(crate) fn member_guard(&self, upstream: &str) -> Option<Arc<crate::guard::Guard>> {
        self.route.set.find(upstream).map(|m| m.guard().clone())
    }

    /// A session of another replica continued here on the member named `upstream`: the member
    /// counts it (balancing, least-in-flight, `/api/upstreams`) until it ends, as if placed here.
    pub(crate) fn adopted(&self, upstream: &str, core: &Arc<Session>) {
        let set = &self.route.set;
        let Some(i) = set.members().iter().position(|m| m.name() == upstream) else {
            return;
        };
        set.bind(i, core);
        self.gateway
            .bound()
            .entry(core.id().clone())
            .or_insert_with(|| Bound {
                principal: self.principal.clone(),
                route: self.route.clone(),
                member: None,
                lists: HashMap::new(),
                since: Instant::now(),
            })
            .member = Some(i);
    }

    /// A request names session `id`: it must belong to this request's principal. Another
    /// principal's session is "not found" (never "forbidden": ids are not to be probed).
    pub(crate) async fn check_session(
        &self,
        front: &HttpFront,
        id: &str,
    ) -> Result<(), ProxyError> {
        let mine = self.principal();
        {
            let mut bound = self.gateway.bound();
            if let Some(b) = bound.get_mut(id) {
                if b.principal.as_ref().map(|p| &*p.id) == mine {
                    // Rules see the scopes and claims of the latest token.
                    b.principal = self.principal.clone();
                    return Ok(());
                }
                drop(bound);
                return Err(self.foreign(id));
            }
        }
        let owner = match front.registry().records().store().get(id).await {
            Ok(Some(rec)) => rec.principal,
            // Unknown ids and store errors are the front's to answer.
            Ok(None) | Err(_) => return Ok(()),
        };
        if owner.as_deref() != mine {
            return Err(self.foreign(id));
        }
        // A session of another replica that this one continues (or forwards): remember its
        // principal and route for the pipeline's rules.
        self.gateway
            .bound()
            .entry(Arc::from(id))
            .or_insert_with(|| Bound {
                principal: self.principal.clone(),
                route: self.route.clone(),
                member: None,
                lists: HashMap::new(),
                since: Instant::now(),
            });
        Ok(())
    }

    /// The upstream `spec` of a new session failed its `initialize` (the proxy had to answer
    /// it). With failover, that upstream is ejected, added to `tried`, and `true` is returned
    /// when another upstream of the route is left to try.
    pub(crate) fn fail_over(&self, spec: &UpstreamSpec, tried: &mut Vec<usize>) -> bool {
        let set = &self.route.set;
        if !self.route.failover || set.members().len() < 2 {
            return false;
        }
        let Some(i) = set.members().iter().position(|m| m.spec() == spec) else {
            return false;
        };
        tracing::warn!(
            upstream = set.members()[i].name(),
            "upstream failed the initialize of a new session; ejecting it and trying the next"
        );
        set.eject(i);
        tried.push(i);
        tried.len() < set.members().len()
    }

    fn foreign(&self, id: &str) -> ProxyError {
        tracing::warn!(
            session = id,
            principal = self.principal().unwrap_or("-"),
            "a session id was presented by a principal that does not own it"
        );
        self.gateway.metrics.foreign_session(&self.route.path);
        ProxyError::SessionNotFound
    }

    /// Create the upstream of a new session: the route's set chooses, and an upstream that
    /// cannot be reached is ejected and the next one tried (with `failover`). The session
    /// record is written before anything is spawned (and updated if the session moves).
    /// `tried`: members that already failed this session's `initialize` (not tried again).
    pub(crate) async fn connect(
        &self,
        front: &HttpFront,
        id: &Arc<str>,
        init: &Frame,
        tried: &[usize],
    ) -> Result<(Arc<Session>, mpsc::Receiver<UpstreamEvent>), ProxyError> {
        let set = &self.route.set;
        let mut plan = set.plan(id, self.route.failover);
        plan.retain(|i| !tried.contains(i));
        if plan.is_empty() {
            return Err(ProxyError::UpstreamConnect(
                "no upstream of the route is left to try".into(),
            ));
        }
        // Every breaker open: refuse now rather than start a session bound to fail.
        let waits: Option<Vec<_>> = plan
            .iter()
            .map(|&i| set.members()[i].guard().open_for())
            .collect();
        if let Some(wait) = waits.and_then(|w| w.into_iter().min()) {
            return Err(ProxyError::CircuitOpen {
                message: format!(
                    "every upstream of {} is failing (circuit breakers open); retry in {} s",
                    self.route.path,
                    wait.as_secs().max(1)
                ),
                retry_after: wait.as_secs().max(1),
            });
        }
        let records = front.registry().records();
        let first = set.members()[plan[0]].name();
        records
            .created_by(id, &self.route.key, first, init, self.principal())
            .await?;
        let mut last = None;
        for (n, &i) in plan.iter().enumerate() {
            let m = &set.members()[i];
            if n > 0 {
                records.moved(id, m.name()).await;
            }
            if plan.len() > 1
                && let Err(e) = probe(m.spec(), self.route.connect_timeout).await
            {
                tracing::warn!(upstream = m.name(), error = %e, "upstream unreachable; ejecting it and trying the next");
                m.guard().record(false);
                set.eject(i);
                last = Some(e);
                continue;
            }
            let mut ctx = front.upstream_ctx(id);
            ctx.guard = Some(m.guard().clone());
            let (spec, pipeline) = (m.spec().clone(), front.pipeline().clone());
            let connected = match m.spares().and_then(|s| s.take()) {
                Some(spare) => {
                    tracing::debug!(upstream = m.name(), "the session takes a warm spare");
                    ctx.cancel = spare.cancel;
                    Ok(Session::with_upstream(
                        id.clone(),
                        spec,
                        pipeline,
                        spare.opened,
                        ctx,
                    ))
                }
                None => Session::connect(id.clone(), spec, pipeline, ctx).await,
            };
            if connected.is_err() {
                m.guard().record(false);
            }
            match connected {
                Ok((core, events)) => {
                    set.bind(i, &core);
                    self.gateway.bound().insert(
                        id.clone(),
                        Bound {
                            principal: self.principal.clone(),
                            route: self.route.clone(),
                            member: Some(i),
                            lists: HashMap::new(),
                            since: Instant::now(),
                        },
                    );
                    return Ok((core, events));
                }
                Err(e) if e.retryable() && n + 1 < plan.len() => {
                    tracing::warn!(upstream = m.name(), error = %e, "upstream failed to start; ejecting it and trying the next");
                    set.eject(i);
                    last = Some(e);
                }
                Err(e) => {
                    if e.retryable() {
                        set.eject(i);
                    }
                    records.ended(id).await;
                    return Err(e);
                }
            }
        }
        records.ended(id).await;
        Err(last.unwrap_or_else(|| ProxyError::UpstreamConnect("no upstream to try".into())))
    }
}

/// Can a TCP connection to an HTTP upstream be opened? (Stdio upstreams are checked by
/// spawning them.)
pub(super) async fn probe(spec: &UpstreamSpec, timeout: Duration) -> Result<(), ProxyError> {
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
