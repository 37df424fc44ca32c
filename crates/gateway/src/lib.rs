//! The gateway (reverse proxy) mode: the Streamable HTTP front with routes from a config file,
//! an upstream *set* per route, authentication, rate limits and metrics.
//!
//! Per request, before anything reaches a session: extra endpoints (`/metrics`, `/ready`,
//! `/.well-known/oauth-protected-resource[/PATH]`), then the per-IP and global rate limits, then
//! authentication and the route's scopes, then the per-principal limit. An admitted request
//! carries its [`Principal`] into the front, which binds new sessions to it and answers `404` to
//! any other principal presenting the session's id. New sessions are placed by the route's
//! [`UpstreamSet`] (with failover when an upstream cannot be reached) and stay there for life.

pub mod admin;
pub mod auth;
pub mod authz;
pub mod balance;
mod client;
pub mod config;
mod endpoints;
mod health;
pub mod limits;
mod live;
pub mod metrics;
pub mod pins;
mod redact;
pub mod reload;
pub mod resilience;
pub mod series;
pub mod shape;
mod target;
mod validate;

pub use auth::{AuthError, Principal};
pub use balance::UpstreamSet;
pub use config::{ConfigError, GatewayConfig};
pub use live::Changes;
pub use reload::{Loader, Outcome, Trigger};
pub use target::GatewayTarget;

use arc_swap::ArcSwap;
use authz::{Kind, Rules};
use axum::extract::Request;
use axum::response::Response;
use config::route_key;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use limits::RATE_LIMITED;
use live::Live;
use metrics::Metrics;
use shadowcat_proto::error::{INVALID_REQUEST, error_frame};
use shadowcat_proto::{Frame, FrameKind, RequestId};
use shadowcat_proxy::audit::Audit;
use shadowcat_proxy::error::ProxyError;
use shadowcat_proxy::front::http::{
    HostPolicy, HttpFront, HttpFrontConfig, OriginPolicy, Policy, Target,
};
use shadowcat_proxy::pipeline::{Awaiting, Direction, FrameCtx, Grant, Hook, Pipeline, Verdict};
use shadowcat_proxy::upstream::CONNECT_TIMEOUT;
use shadowcat_proxy::upstream::{HttpClient, UpstreamCtx, UpstreamOptions};
use shadowcat_store::{Retention, SessionStore};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

/// One configured MCP endpoint.
pub struct Route {
    path: String,
    key: Arc<str>,
    set: UpstreamSet,
    /// A composite route's servers, by name, each with the placer its composite sessions'
    /// legs are placed by (over the server's upstream set).
    servers: Servers,
    scopes: Vec<String>,
    failover: bool,
    connect_timeout: Duration,
    rules: Rules,
    /// The active health checks of `set` (a plain route's; a composite route's servers have
    /// theirs in their placers).
    health: Option<config::HealthConfig>,
    /// Tool pinning on this route (and, on a composite route, each member's).
    pins: pins::RoutePolicy,
    /// What it was built from (its settings and scopes): a reload keeps the route whole when
    /// this is unchanged.
    fingerprint: String,
}

impl Route {
    /// `/mcp` or `/servers/NAME/mcp`.
    pub fn path(&self) -> &str {
        &self.path
    }
    /// The upstream set.
    pub fn set(&self) -> &UpstreamSet {
        &self.set
    }

    /// Its upstream sets that are checked, each with its checks: a plain route's set with the
    /// route's `[routes.health]`, each composite server's with its own (or the route's).
    pub(crate) fn checks(&self) -> Vec<(&UpstreamSet, &config::HealthConfig)> {
        let own = self.health.as_ref().map(|h| (&self.set, h));
        let servers = self
            .servers
            .iter()
            .filter_map(|(_, p)| p.health.as_ref().map(|h| (&*p.set, h)));
        own.into_iter().chain(servers).collect()
    }

    /// Its upstream sets, each with its label in metrics and the admin API: the route's own
    /// (`""`), then each composite server's (the server's name).
    pub(crate) fn sets(&self) -> impl Iterator<Item = (&str, &UpstreamSet)> {
        std::iter::once(("", &self.set)).chain(
            self.servers
                .iter()
                .map(|(name, p)| (name.as_str(), &*p.set)),
        )
    }
}

/// A composite route's servers: (name, placer).
pub(crate) type Servers = Vec<(String, Arc<target::MemberPlacer>)>;

/// The client's validated JWT, kept for the request when an upstream exchanges it (RFC 8693);
/// never logged, never sent upstream.
#[derive(Clone)]
pub(crate) struct ClientToken(pub Arc<str>);

/// Where a live session is: the member of its route it was placed on (balancing, the admin
/// API), or the owner of a session this replica continues or forwards for another one. Rules
/// never read it: the authorization hook gets the principal with each request.
struct Bound {
    /// The principal that owns it (sessions answer only to their owner).
    owner: Option<Arc<str>>,
    route: Arc<Route>,
    /// The member of the route's set it lives on; `None` for a session this replica continues
    /// (or forwards) for another one.
    member: Option<usize>,
    since: Instant,
    /// A reload removed its upstream (or route): it ends after the drain grace.
    draining: bool,
}

/// The gateway's policies and state, shared by every request of the front. What a reload
/// replaces is one [`Live`] snapshot, swapped atomically; the rest lives across reloads.
pub struct Gateway {
    /// The configuration in force (routes, auth, limits…).
    live: ArcSwap<Live>,
    /// `server.public_url` (set at start: `[server]` does not reload).
    public_url: Option<String>,
    metrics: Metrics,
    /// The last 15 minutes, for the admin page.
    series: series::Series,
    sessions: Mutex<HashMap<Arc<str>, Bound>>,
    /// The front serving this gateway, once [`gateway`] has built it (for the admin API).
    front: OnceLock<Weak<HttpFront>>,
    /// The audit log, when one is written: refusals at admission go there.
    audit: OnceLock<Arc<Audit>>,
    /// Tool pinning, when a route has it (for the admin API).
    pins: OnceLock<Arc<pins::PinHook>>,
    /// An admin listener is configured: its page reads the series, so requests are timed.
    admin: bool,
    /// Reloads: their triggers' loader, results, the per-route tasks they restart, drains.
    reloads: reload::Reloads,
}

/// The configuration a request was admitted under, kept in its extensions so that routing
/// sees the same one (a reload in between does not split it).
#[derive(Clone)]
pub(crate) struct Current(pub Arc<Live>);

/// What the gateway knows about one live session (for the admin API).
pub(crate) struct SessionBinding {
    /// Route path.
    pub route: String,
    /// The upstream it was placed on (`None`: continued for another replica).
    pub upstream: Option<String>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let live = self.live();
        f.debug_struct("Gateway")
            .field("generation", &live.generation)
            .field("routes", &live.routes.keys().collect::<Vec<_>>())
            .field("auth", &live.auth.is_some())
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Build from a configuration (validated again here; `source` names it in errors).
    pub fn new(cfg: &GatewayConfig, source: &str) -> Result<Arc<Gateway>, ConfigError> {
        let live = Live::build(cfg, source, None, 1)?;
        let series = series::Series::new(
            Gateway::upstream_order(&live.routes)
                .iter()
                .map(|(r, i)| (r.path.clone(), admin::shown(r.set.members()[*i].name())))
                .collect(),
        );
        let reloads = reload::Reloads::default();
        reloads.saw_rules(live.any_rules);
        Ok(Arc::new(Gateway {
            series,
            public_url: cfg
                .server
                .public_url
                .as_ref()
                .map(|u| u.trim_end_matches('/').to_string()),
            live: ArcSwap::from_pointee(live),
            metrics: Metrics::default(),
            sessions: Mutex::new(HashMap::new()),
            front: OnceLock::new(),
            audit: OnceLock::new(),
            pins: OnceLock::new(),
            admin: cfg.admin.as_ref().is_some_and(|a| a.enabled),
            reloads,
        }))
    }

    /// The configuration in force.
    pub(crate) fn live(&self) -> arc_swap::Guard<Arc<Live>> {
        self.live.load()
    }

    /// The routes in force, by path.
    pub fn routes(&self) -> Vec<Arc<Route>> {
        self.live().sorted_routes()
    }

    /// The front serving this gateway (`None` before it starts and after it is gone).
    pub(crate) fn front(&self) -> Option<Arc<HttpFront>> {
        self.front.get().and_then(Weak::upgrade)
    }

    /// Request counters.
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The last 15 minutes.
    pub(crate) fn series(&self) -> &series::Series {
        &self.series
    }

    /// Route, principal and upstream of a session this gateway holds.
    pub(crate) fn binding(&self, session: &str) -> Option<SessionBinding> {
        let bound = self.bound();
        let b = bound.get(session)?;
        Some(SessionBinding {
            route: b.route.path.clone(),
            upstream: b
                .member
                .map(|m| b.route.set.members()[m].name().to_string()),
        })
    }

    fn bound(&self) -> MutexGuard<'_, HashMap<Arc<str>, Bound>> {
        shadowcat_proxy::sync::lock(&self.sessions)
    }

    /// The path of the route a hook's frame belongs to (`""` when it has none).
    fn route_path(&self, key: Option<&str>) -> String {
        let live = self.live();
        key.and_then(|k| live.routes.get(k))
            .map(|r| r.path.clone())
            .unwrap_or_default()
    }

    /// The route of a hook's frame: the session's route in the configuration in force or,
    /// for a session draining on a route a reload removed, the route it lives on.
    fn hook_route(&self, key: Option<&str>, session: &str) -> Option<Arc<Route>> {
        let key = key?;
        if let Some(r) = self.live().routes.get(key) {
            return Some(r.clone());
        }
        self.bound()
            .get(session)
            .filter(|b| &*b.route.key == key)
            .map(|b| b.route.clone())
    }

    /// The pipeline hook of the gateway (per-tool limits, session accounting). Install it in
    /// the pipeline of the front that uses this gateway.
    /// The gateway's pipeline stages, in order: authorization (route rules, and the sessions'
    /// accounting), then per-tool rate limits. Two hooks, so that what sees a refusal (the
    /// audit log) knows which one refused.
    pub fn hooks(self: &Arc<Self>) -> [Arc<dyn Hook>; 2] {
        [
            Arc::new(AuthzHook {
                gw: self.clone(),
                lists: Awaiting::new(MAX_LISTS_PER_SESSION, MAX_LISTS),
            }),
            Arc::new(ToolLimitHook(self.clone())),
        ]
    }

    fn forget(&self, session: &str) {
        let b = self.bound().remove(session);
        if let Some(Bound {
            route,
            member: Some(m),
            ..
        }) = b
        {
            route.set.unbind(m, session);
        }
    }

    /// Drop what is kept for sessions continued for another replica that are not live here
    /// (forwarded to their owner, or ended elsewhere).
    fn prune(&self, live: &std::collections::HashSet<Arc<str>>) {
        self.bound().retain(|id, b| {
            b.member.is_some() || live.contains(id) || b.since.elapsed() < Duration::from_secs(60)
        });
    }

    /// The route of a request for `path` under `live`: the configured one, or for a session
    /// whose route a reload removed (draining), the route it lives on until it ends.
    pub(crate) fn route_for(
        &self,
        live: &Live,
        path: &str,
        headers: &http::HeaderMap,
    ) -> Option<Arc<Route>> {
        let key = route_key_of(path)?;
        if let Some(r) = live.routes.get(key) {
            return Some(r.clone());
        }
        let session = session_of(headers)?;
        self.bound()
            .get(session)
            .filter(|b| &*b.route.key == key)
            .map(|b| b.route.clone())
    }

    /// Which route a request addresses (paths only: the gateway is an origin server).
    pub(crate) fn target(self: &Arc<Self>, req: &Request) -> Result<Target, ProxyError> {
        let live = match req.extensions().get::<Current>() {
            Some(c) => c.0.clone(),
            None => self.live.load_full(),
        };
        let path = req.uri().path();
        let principal = req.extensions().get::<Principal>().cloned();
        let route = self.route_for(&live, path, req.headers()).ok_or_else(|| {
            // A session a reload ended with its route: say so.
            if let Some(reason) = session_of(req.headers())
                .and_then(|s| self.reloads.ended(s, principal.as_ref().map(|p| &*p.id)))
            {
                return ProxyError::bad(
                    shadowcat_proxy::error::Refusal::NotFound,
                    INVALID_REQUEST,
                    reason.to_string(),
                );
            }
            let mut known: Vec<&str> = live.routes.values().map(|r| r.path.as_str()).collect();
            known.sort_unstable();
            ProxyError::bad(
                shadowcat_proxy::error::Refusal::NotFound,
                INVALID_REQUEST,
                format!(
                    "no MCP endpoint at `{path}`; this gateway serves {}",
                    known.join(", ")
                ),
            )
        })?;
        let route = &route;
        let principal = principal.map(Arc::new);
        // A stateless (2026-07-28) request has no session placed on a member: the route's
        // balancing picks one per request (consistent hashing keys on the principal). New
        // sessions are placed by `GatewayTarget::connect`, so member 0 is only a default.
        let stateless = shadowcat_proxy::front::http::checks::protocol_version(req.headers())
            .ok()
            .flatten()
            .is_some_and(|v| v.is_modern());
        let member = if stateless {
            let key = principal
                .as_ref()
                .map(|p| p.id.to_string())
                .unwrap_or_else(|| rand::random::<u64>().to_string());
            route.set.pick_stateless(&key)
        } else {
            0
        };
        let client_token = req.extensions().get::<ClientToken>().map(|t| t.0.clone());
        let spec = target::for_client(route.set.members()[member].spec(), client_token.as_deref())?;
        Ok(Target {
            key: route.key.clone(),
            spec,
            placer: Arc::new(GatewayTarget {
                gateway: self.clone(),
                route: route.clone(),
                principal,
                member: stateless.then_some(member),
                client_token,
            }),
        })
    }
}

/// The session id a request names (`Mcp-Session-Id`).
pub(crate) fn session_of(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get(shadowcat_proto::era::SESSION_ID_HEADER)
        .and_then(|v| v.to_str().ok())
}

/// The route key a request path addresses: a route's MCP endpoint, or one of its legacy
/// HTTP+SSE endpoints (`/sse` and `/message` belong to `/mcp`; `/servers/NAME/sse` and
/// `/servers/NAME/message` to `/servers/NAME/mcp`).
pub(crate) fn route_key_of(path: &str) -> Option<&str> {
    route_key(path).or_else(|| shadowcat_proxy::front::sse::Endpoint::route_of(path))
}

/// The gateway as the front's [`Policy`]: its endpoints, admission and routes.
#[derive(Debug)]
struct GatewayPolicy(Arc<Gateway>);

impl Policy for GatewayPolicy {
    fn handle<'a>(&'a self, front: &'a Arc<HttpFront>, req: Request) -> BoxFuture<'a, Response> {
        Box::pin(self.0.handle(front, req))
    }

    fn target(&self, req: &Request) -> Result<Target, ProxyError> {
        self.0.target(req)
    }
}

/// List requests kept until their answers by the authorization hook, per session and in all.
const MAX_LISTS_PER_SESSION: usize = 1_000;
const MAX_LISTS: usize = 100_000;

/// The gateway's authorization stage, one for every front and era: route rules on requests
/// (with the principal the request came with, its [`Grant`]) and on list answers, and the
/// sessions' accounting. What it cannot place it refuses: a request of no known route, or a
/// list beyond the bound of those waiting for their answers.
struct AuthzHook {
    gw: Arc<Gateway>,
    /// List requests whose answers lose what the principal may not see: the list and the
    /// grant of the request.
    lists: Awaiting<(Kind, &'static str, Option<Grant>)>,
}

impl AuthzHook {
    fn authorize(&self, ctx: &FrameCtx<'_>, frame: &Frame) -> Verdict {
        let (Some(id), Some(method)) = (frame.id(), frame.method()) else {
            return Verdict::Forward;
        };
        let Some(route) = self.gw.hook_route(ctx.route, ctx.session) else {
            tracing::warn!(
                session = ctx.session,
                "a request of no known route; refused"
            );
            return Verdict::Reply(error_frame(
                Some(id),
                INVALID_REQUEST,
                "the gateway cannot tell which route's rules apply to this request",
            ));
        };
        if route.rules.is_open() {
            return Verdict::Forward;
        }
        let principal = ctx.grant.and_then(|g| g.downcast_ref::<Principal>());
        if let Err(denied) = route.rules.check_frame(principal, frame) {
            tracing::info!(session = ctx.session, reason = %denied.message, "request refused by an authorization rule");
            self.gw.metrics.authz_denied(&route.path);
            return Verdict::Reply(error_frame(Some(id), denied.code, &denied.message));
        }
        if let Some((kind, key)) = Kind::of_list(method)
            && self
                .lists
                .insert(ctx, id, (kind, key, ctx.grant.cloned()))
                .is_err()
        {
            // Beyond the bound a list answer could not be filtered: refused, not let through.
            return Verdict::Reply(error_frame(
                Some(id),
                INVALID_REQUEST,
                "too many list requests waiting for their answers",
            ));
        }
        Verdict::Forward
    }

    /// Filter a list answer by the route's rules, for the principal of its request.
    fn filter(&self, ctx: &FrameCtx<'_>, frame: &Frame) -> Verdict {
        let Some(id) = frame.id() else {
            return Verdict::Forward;
        };
        let Some((kind, key, grant)) = self.lists.take(ctx, id) else {
            return Verdict::Forward;
        };
        if frame.kind() != FrameKind::Response {
            return Verdict::Forward;
        }
        let Some(route) = self.gw.hook_route(ctx.route, ctx.session) else {
            // Its request was checked under a route: an answer that lost it is withheld.
            return Verdict::Drop;
        };
        let principal = grant.as_ref().and_then(|g| g.downcast_ref::<Principal>());
        match route.rules.filter_list(principal, kind, key, frame) {
            Some(filtered) => Verdict::Replace(filtered),
            None => Verdict::Forward,
        }
    }
}

impl Hook for AuthzHook {
    fn name(&self) -> &'static str {
        "authz"
    }

    fn on_frame(&self, ctx: &FrameCtx<'_>, frame: &Frame) -> Verdict {
        if !self.gw.reloads.any_rules() {
            return Verdict::Forward;
        }
        match ctx.direction {
            Direction::ClientToServer => self.authorize(ctx, frame),
            Direction::ServerToClient if frame.kind().is_reply() => self.filter(ctx, frame),
            Direction::ServerToClient => Verdict::Forward,
        }
    }

    fn on_failed(&self, ctx: &FrameCtx<'_>, id: &RequestId, _error: &ProxyError) {
        self.lists.take(ctx, id);
    }

    fn on_session_end(&self, session: &str) {
        self.lists.end(session);
        self.gw.forget(session);
    }
}

/// The gateway's per-tool rate limits.
struct ToolLimitHook(Arc<Gateway>);

impl Hook for ToolLimitHook {
    fn name(&self) -> &'static str {
        "rate-limit"
    }

    fn on_frame(&self, ctx: &FrameCtx<'_>, frame: &Frame) -> Verdict {
        if ctx.direction != Direction::ClientToServer || frame.method() != Some("tools/call") {
            return Verdict::Forward;
        }
        let live = self.0.live();
        if !live.limits.has_tool_limits() {
            return Verdict::Forward;
        }
        let Some(tool) = frame.target().filter(|t| live.limits.limits_tool(t)) else {
            return Verdict::Forward;
        };
        let live = arc_swap::Guard::into_inner(live);
        let (gw, tool, id) = (self.0.clone(), tool.to_string(), frame.id().cloned());
        let key = ctx.route.map(str::to_owned);
        let decide = async move {
            match live.limits.check_tool(&tool).await {
                Ok(()) => Verdict::Forward,
                Err(l) => {
                    let route = gw.route_path(key.as_deref());
                    gw.metrics.rate_limited(&route, l.scope);
                    let msg = format!("tool `{tool}`: {}", l.message());
                    Verdict::Reply(error_frame(id.as_ref(), RATE_LIMITED, &msg))
                }
            }
        };
        // The local limiter decides at once; the shared one may wait for Redis.
        let mut decide = Box::pin(decide);
        match (&mut decide).now_or_never() {
            Some(v) => v,
            None => Verdict::Defer(decide),
        }
    }
}

/// The pipeline hooks a gateway runs besides its own stage.
#[derive(Default)]
pub struct GatewayHooks {
    /// Before the gateway's stage: they see what clients sent (the traffic log).
    pub before: Vec<Arc<dyn Hook>>,
    /// After it: they see what it admitted, and its refusals through `on_answered`
    /// (interceptor, recorder, the admin's live traffic, the audit log).
    pub after: Vec<Arc<dyn Hook>>,
    /// The audit log (one of `after`), which also gets the requests refused at admission
    /// (authentication, per-client and per-principal rate limits).
    pub audit: Option<Arc<Audit>>,
}

/// The HTTP front's settings for the gateway `gw` with `[server]` section `s`.
fn front_config(
    gw: &Arc<Gateway>,
    s: &config::ServerConfig,
) -> Result<HttpFrontConfig, ProxyError> {
    Ok(HttpFrontConfig {
        workers: s
            .workers
            .unwrap_or_else(shadowcat_proxy::runtime::default_workers),
        origins: OriginPolicy::new(&s.allow_origins),
        hosts: HostPolicy::new(&s.allowed_hosts, s.public_url.as_deref())
            .map_err(|e| ProxyError::Startup(format!("server.allowed_hosts: {e}")))?,
        max_body: s.max_message,
        max_sessions: s.max_sessions,
        max_sessions_per_principal: s.max_sessions_per_principal,
        idle_timeout: s.idle_timeout.0,
        shutdown_deadline: s.shutdown_deadline.0,
        upstream: UpstreamOptions {
            max_message: s.max_message,
            shutdown_grace: s.shutdown_grace.0,
            ..UpstreamOptions::default()
        },
        retention: Retention {
            max_events: Some(s.max_events),
            max_age: Some(s.event_max_age.0),
        },
        max_event_bytes: s.max_event_bytes,
        finished_stream_grace: s.finished_stream_grace.0,
        replica_id: s
            .replica_id
            .clone()
            .unwrap_or_else(shadowcat_proxy::front::http::default_replica_id),
        policy: Some(Arc::new(GatewayPolicy(gw.clone()))),
        conn: s.conn_limits(),
        // Each route's members carry their own (`routes.request_timeout`).
        request_timeout: None,
        ..HttpFrontConfig::default()
    })
}

/// Serve the gateway `gw` (built by [`Gateway::new`] from the file whose `[server]` section is
/// `s`) on `listener` until `shutdown` fires, then shut down gracefully.
pub async fn gateway(
    listener: TcpListener,
    gw: Arc<Gateway>,
    s: &config::ServerConfig,
    hooks: GatewayHooks,
    store: Arc<dyn SessionStore>,
    shutdown: CancellationToken,
    ready: impl FnOnce(),
) -> Result<(), ProxyError> {
    let config = front_config(&gw, s)?;
    let GatewayHooks {
        before,
        after,
        audit,
    } = hooks;
    if let Some(a) = audit {
        let _ = gw.audit.set(a);
    }
    let mut hooks = before;
    hooks.extend(gw.hooks());
    let tracker = TaskTracker::new();
    // Pinning sees what the route admitted, before the recorder, the live view and the audit
    // log: they get lists as the client gets them.
    if gw.live().routes.values().any(|r| r.pins.any_on()) {
        // Each route's (and member's) policy as the configuration in force says (a reload may
        // change it).
        let me = Arc::downgrade(&gw);
        let policy = move |key: Option<&str>, member: Option<&str>| {
            key.and_then(|k| {
                let gw = me.upgrade()?;
                let live = gw.live();
                live.routes.get(k).map(|r| r.pins.of(member))
            })
            .unwrap_or_default()
        };
        let hook = pins::PinHook::start(store.clone(), policy, &tracker, shutdown.child_token())
            .await
            .map_err(|e| ProxyError::Startup(format!("cannot read the tool pins: {e}")))?;
        if let Some(a) = gw.audit.get() {
            hook.audit_to(a.clone());
        }
        let _ = gw.pins.set(hook.clone());
        hooks.push(hook);
    }
    hooks.extend(after);
    // Last: it times what reached the upstream and the client. Only for the admin page: without
    // an admin listener nobody reads it, and the relay does not pay for it.
    if gw.admin {
        hooks.push(gw.series_hook());
    }
    let http = HttpClient::new(CONNECT_TIMEOUT)?;
    let http_checks = http.client().clone();
    let mut check_ctx = UpstreamCtx {
        session: Arc::from("health-check"),
        cancel: shutdown.child_token(),
        // Replaced by the front's below (a shared child a health check starts outlives it).
        front_cancel: shutdown.child_token(),
        tracker: tracker.clone(),
        http: http.clone(),
        options: config.upstream.clone(),
        guard: None,
    };
    if let Some(a) = &gw.live().auth {
        a.prefetch().await;
    }
    let stop = shutdown.clone();
    let front = HttpFront::new(
        config,
        Pipeline::new(hooks),
        http,
        store,
        shutdown,
        tracker.clone(),
    )?;
    let _ = gw.front.set(Arc::downgrade(&front));
    check_ctx.front_cancel = front.sessions_token();
    if let Some(p) = gw.pins.get() {
        p.attach(front.host());
    }
    // Health checkers and warm spares: started here, and again for what a reload adds
    // (stopped for what it removes).
    gw.reloads.serving(reload::Runtime {
        tracker: tracker.clone(),
        check_ctx,
        http_checks,
        stop: stop.clone(),
    });
    gw.retask(None, &gw.live.load_full());
    let (housekeeping, live) = (gw.clone(), front.clone());
    tracker.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        let mut sample = tokio::time::interval(series::SAMPLE_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    housekeeping.live().limits.housekeeping();
                    housekeeping.prune(&live.registry().ids().into_iter().collect());
                    housekeeping.reloads.forget_ended();
                }
                _ = sample.tick() => housekeeping.sample_series(),
                _ = stop.cancelled() => return,
            }
        }
    });
    front.run(listener, ready).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_front_keeps_the_event_log_within_the_server_limits() {
        let cfg = GatewayConfig::parse(
            "g.toml",
            "[server]\nmax_events = 7\nmax_event_bytes = 4096\nfinished_stream_grace = \"5s\"\n\
             [[routes]]\npath = \"/mcp\"\n[[routes.upstreams]]\nurl = \"http://a/mcp\"\n",
        )
        .expect("parse");
        let gw = Gateway::new(&cfg, "g.toml").expect("gateway");
        let front = front_config(&gw, &cfg.server).unwrap();
        assert_eq!(
            front.retention,
            Retention {
                max_events: Some(7),
                max_age: Some(Duration::from_secs(600)),
            },
            "events expire by age by default"
        );
        assert_eq!(front.max_event_bytes, 4096);
        assert_eq!(front.finished_stream_grace, Duration::from_secs(5));
    }
}
