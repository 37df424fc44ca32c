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
pub mod metrics;
pub mod pins;
mod redact;
pub mod resilience;
pub mod series;
pub mod shape;
mod target;
mod validate;

pub use auth::{AuthError, Principal};
pub use balance::UpstreamSet;
pub use config::{ConfigError, GatewayConfig};
pub use target::GatewayTarget;

use auth::Authenticator;
use authz::{Kind, Rules};
use axum::extract::Request;
use axum::response::Response;
use config::{Cidr, route_key};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use limits::{Limits, RATE_LIMITED};
use metrics::Metrics;
use shadowcat_proto::error::{INVALID_REQUEST, error_frame};
use shadowcat_proto::{Frame, RequestId};
use shadowcat_proxy::audit::Audit;
use shadowcat_proxy::error::ProxyError;
use shadowcat_proxy::forward::CONNECT_TIMEOUT;
use shadowcat_proxy::front::http::{
    HostPolicy, HttpFront, HttpFrontConfig, OriginPolicy, Policy, Target,
};
use shadowcat_proxy::pipeline::{Direction, FrameCtx, Hook, Pipeline, Verdict};
use shadowcat_proxy::runtime::drain;
use shadowcat_proxy::upstream::{HttpClient, UpstreamCtx, UpstreamOptions, UpstreamSpec};
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
    scopes: Vec<String>,
    failover: bool,
    connect_timeout: Duration,
    rules: Rules,
    health: Option<config::HealthConfig>,
    /// Tool pinning on this route.
    pins: pins::Policy,
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
}

/// The client's validated JWT, kept for the request when an upstream exchanges it (RFC 8693);
/// never logged, never sent upstream.
#[derive(Clone)]
pub(crate) struct ClientToken(pub Arc<str>);

/// What the gateway knows about a live session.
struct Bound {
    /// The principal of its latest request (scopes and claims as of that token).
    principal: Option<Principal>,
    route: Arc<Route>,
    /// The member of the route's set it lives on; `None` for a session this replica continues
    /// (or forwards) for another one.
    member: Option<usize>,
    /// List requests in flight whose answers are filtered by the route's rules.
    lists: HashMap<RequestId, (Kind, &'static str)>,
    since: Instant,
}

/// The gateway's policies and state, shared by every request of the front.
pub struct Gateway {
    routes: HashMap<Arc<str>, Arc<Route>>,
    auth: Option<Authenticator>,
    auth_scopes: Vec<String>,
    authorization_servers: Vec<String>,
    public_url: Option<String>,
    /// The bearer token `/metrics` requires (`None`: open).
    metrics_token: Option<String>,
    limits: Limits,
    metrics: Metrics,
    /// The last 15 minutes, for the admin page.
    series: series::Series,
    sessions: Mutex<HashMap<Arc<str>, Bound>>,
    /// Some route has authorization rules (the hook then looks at every frame).
    any_rules: bool,
    /// The front serving this gateway, once [`gateway`] has built it (for the admin API).
    front: OnceLock<Weak<HttpFront>>,
    /// The audit log, when one is written: refusals at admission go there.
    audit: OnceLock<Arc<Audit>>,
    /// Tool pinning, when a route has it (for the admin API).
    pins: OnceLock<Arc<pins::PinHook>>,
    /// An admin listener is configured: its page reads the series, so requests are timed.
    admin: bool,
    /// Some upstream exchanges the client's token (admission keeps it for the request).
    exchanges: bool,
}

/// What the gateway knows about one live session (for the admin API).
pub(crate) struct SessionBinding {
    /// Route path.
    pub route: String,
    /// The upstream it was placed on (`None`: continued for another replica).
    pub upstream: Option<String>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("routes", &self.routes.keys().collect::<Vec<_>>())
            .field("auth", &self.auth.is_some())
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Build from a configuration (validated again here; `source` names it in errors).
    pub fn new(cfg: &GatewayConfig, source: &str) -> Result<Arc<Gateway>, ConfigError> {
        cfg.validate(source)?;
        let mut routes = HashMap::new();
        let global_scopes = cfg
            .auth
            .as_ref()
            .map(|a| a.scopes.clone())
            .unwrap_or_default();
        for (i, r) in cfg.routes.iter().enumerate() {
            let key: Arc<str> = Arc::from(route_key(&r.path).unwrap_or_default());
            let (members, spares): (Vec<_>, Vec<_>) = match r.composite() {
                // A composite route: one candidate, every server of it in each session.
                Some(spec) => {
                    let spec = spec.map_err(|e| {
                        let at = format!("routes[{i}].{}", e.field);
                        ConfigError::one(source, &at, e.message)
                    })?;
                    let problems = spec.problems();
                    if !problems.is_empty() {
                        let at = format!("routes[{i}].servers");
                        return Err(ConfigError::one(source, &at, problems.join("; ")));
                    }
                    (vec![(UpstreamSpec::Composite(Arc::new(spec)), 1)], vec![0])
                }
                None => r
                    .upstreams
                    .iter()
                    .filter_map(|u| u.spec().ok().map(|s| ((s, u.weight), u.spares)))
                    .unzip(),
            };
            let set = UpstreamSet::new(
                members,
                r.balance,
                r.eject_for.0,
                &resilience::guard_config(r),
            );
            for (m, n) in set.members().iter().zip(spares) {
                if n > 0 {
                    m.keep_spares(n as usize);
                }
            }
            let mut scopes = global_scopes.clone();
            scopes.extend(
                r.scopes
                    .iter()
                    .filter(|s| !global_scopes.contains(s))
                    .cloned(),
            );
            routes.insert(
                key.clone(),
                Arc::new(Route {
                    path: r.path.clone(),
                    key,
                    set,
                    scopes,
                    failover: r.failover,
                    connect_timeout: r.connect_timeout.0,
                    rules: Rules::new(r.rules.clone(), r.default_effect),
                    health: r.health.clone(),
                    pins: pins::Policy {
                        pinning: r.pinning,
                        new_tools: r.new_tools,
                    },
                }),
            );
        }
        let jwks_http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| ConfigError {
                file: source.to_string(),
                problems: vec![config::Problem {
                    field: "auth.jwt".into(),
                    position: None,
                    message: format!("cannot build the HTTP client for the JWKS: {e}"),
                }],
            })?;
        let auth = cfg.auth.as_ref().map(|a| Authenticator::new(a, jwks_http));
        let authorization_servers = cfg
            .auth
            .as_ref()
            .map(|a| {
                if a.authorization_servers.is_empty() {
                    a.jwt.iter().map(|j| j.issuer.clone()).collect()
                } else {
                    a.authorization_servers.clone()
                }
            })
            .unwrap_or_default();
        let trusted = cfg
            .server
            .trusted_proxies
            .iter()
            .filter_map(|t| Cidr::parse(t).ok())
            .collect();
        let any_rules = routes.values().any(|r| !r.rules.is_open());
        let series = series::Series::new(
            Gateway::upstream_order(&routes)
                .iter()
                .map(|(r, i)| (r.path.clone(), admin::shown(r.set.members()[*i].name())))
                .collect(),
        );
        let exchanges = routes.values().any(|r: &Arc<Route>| {
            r.set
                .members()
                .iter()
                .any(|m| target::needs_client_token(m.spec()))
        });
        Ok(Arc::new(Gateway {
            series,
            any_rules,
            routes,
            auth,
            auth_scopes: global_scopes,
            authorization_servers,
            public_url: cfg
                .server
                .public_url
                .as_ref()
                .map(|u| u.trim_end_matches('/').to_string()),
            metrics_token: cfg.metrics.resolve_token().ok().flatten(),
            limits: Limits::new(
                &cfg.limits,
                trusted,
                cfg.limits.shared_redis(&cfg.server),
                &cfg.server.redis_prefix,
            ),
            metrics: Metrics::default(),
            sessions: Mutex::new(HashMap::new()),
            front: OnceLock::new(),
            audit: OnceLock::new(),
            pins: OnceLock::new(),
            admin: cfg.admin.as_ref().is_some_and(|a| a.enabled),
            exchanges,
        }))
    }

    /// The routes by key.
    pub fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.values()
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

    fn route_of(&self, session: &str) -> String {
        self.bound()
            .get(session)
            .map(|b| b.route.path.clone())
            .unwrap_or_default()
    }

    /// Apply the session's route rules to a client request: `Some(reply)` when it is refused.
    /// List requests are remembered so that their answers get filtered.
    fn authorize(&self, session: &str, frame: &Frame) -> Option<Verdict> {
        let (Some(id), Some(method)) = (frame.id(), frame.method()) else {
            return None;
        };
        let mut bound = self.bound();
        let b = bound.get_mut(session)?;
        if b.route.rules.is_open() {
            return None;
        }
        if let Err(denied) = b.route.rules.check_frame(b.principal.as_ref(), frame) {
            let route = b.route.path.clone();
            drop(bound);
            tracing::info!(session, reason = %denied.message, "request refused by an authorization rule");
            self.metrics.authz_denied(&route);
            let answer = error_frame(Some(id), denied.code, &denied.message);
            return Some(Verdict::Reply(answer));
        }
        if let Some(list) = Kind::of_list(method) {
            b.lists.insert(id.clone(), list);
        }
        None
    }

    /// Filter a list answer by the session's route rules.
    fn filter(&self, session: &str, frame: &Frame) -> Verdict {
        if !frame.kind().is_reply() {
            return Verdict::Forward;
        }
        let Some(id) = frame.id() else {
            return Verdict::Forward;
        };
        let (rules, principal, (kind, key)) = {
            let mut bound = self.bound();
            let Some(b) = bound.get_mut(session) else {
                return Verdict::Forward;
            };
            let Some(list) = b.lists.remove(id) else {
                return Verdict::Forward;
            };
            (b.route.clone(), b.principal.clone(), list)
        };
        match rules
            .rules
            .filter_list(principal.as_ref(), kind, key, frame)
        {
            Some(filtered) => Verdict::Replace(filtered),
            None => Verdict::Forward,
        }
    }

    /// The pipeline hook of the gateway (per-tool limits, session accounting). Install it in
    /// the pipeline of the front that uses this gateway.
    /// The gateway's pipeline stages, in order: authorization (route rules, and the sessions'
    /// accounting), then per-tool rate limits. Two hooks, so that what sees a refusal (the
    /// audit log) knows which one refused.
    pub fn hooks(self: &Arc<Self>) -> [Arc<dyn Hook>; 2] {
        [
            Arc::new(AuthzHook(self.clone())),
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

    /// Which route a request addresses (paths only: the gateway is an origin server).
    pub(crate) fn target(self: &Arc<Self>, req: &Request) -> Result<Target, ProxyError> {
        let path = req.uri().path();
        let route = route_key_of(path)
            .and_then(|k| self.routes.get(k))
            .ok_or_else(|| {
                let mut known: Vec<&str> = self.routes.values().map(|r| r.path.as_str()).collect();
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
        let principal = req.extensions().get::<Principal>().cloned();
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

/// The gateway's authorization stage: route rules on requests and list answers, and the
/// sessions' accounting.
struct AuthzHook(Arc<Gateway>);

impl Hook for AuthzHook {
    fn name(&self) -> &'static str {
        "authz"
    }

    fn on_frame(&self, ctx: &FrameCtx<'_>, frame: &Frame) -> Verdict {
        if !self.0.any_rules {
            return Verdict::Forward;
        }
        match ctx.direction {
            Direction::ClientToServer => self
                .0
                .authorize(ctx.session, frame)
                .unwrap_or(Verdict::Forward),
            Direction::ServerToClient => self.0.filter(ctx.session, frame),
        }
    }

    fn on_session_end(&self, session: &str) {
        self.0.forget(session);
    }
}

/// The gateway's per-tool rate limits.
struct ToolLimitHook(Arc<Gateway>);

impl Hook for ToolLimitHook {
    fn name(&self) -> &'static str {
        "rate-limit"
    }

    fn on_frame(&self, ctx: &FrameCtx<'_>, frame: &Frame) -> Verdict {
        if ctx.direction != Direction::ClientToServer
            || !self.0.limits.has_tool_limits()
            || frame.method() != Some("tools/call")
        {
            return Verdict::Forward;
        }
        let Some(tool) = frame.target().filter(|t| self.0.limits.limits_tool(t)) else {
            return Verdict::Forward;
        };
        let (gw, tool, id) = (self.0.clone(), tool.to_string(), frame.id().cloned());
        let session = ctx.session.to_string();
        let decide = async move {
            match gw.limits.check_tool(&tool).await {
                Ok(()) => Verdict::Forward,
                Err(l) => {
                    let route = gw.route_of(&session);
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
    if gw
        .routes
        .values()
        .any(|r| r.pins.pinning != pins::Pinning::Off)
    {
        let policies: HashMap<Arc<str>, pins::Policy> = gw
            .routes
            .values()
            .map(|r| (r.key.clone(), r.pins))
            .collect();
        let policy = move |key: Option<&str>| {
            key.and_then(|k| policies.get(k))
                .copied()
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
    let deadline = config.shutdown_deadline + config.upstream.shutdown_grace * 3;
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
    if let Some(a) = &gw.auth {
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
    for r in gw.routes.values() {
        for m in r.set.members() {
            if let Some(spares) = m.spares() {
                let mut ctx = check_ctx.clone();
                ctx.session = Arc::from("spare");
                tracker.spawn(spares.clone().keep(m.spec().clone(), ctx));
            }
        }
        if let Some(h) = &r.health {
            let checker = health::watch(
                r.clone(),
                h.clone(),
                http_checks.clone(),
                check_ctx.clone(),
                stop.clone(),
            );
            tracker.spawn(checker);
        }
    }
    let (housekeeping, live) = (gw.clone(), front.clone());
    tracker.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        let mut sample = tokio::time::interval(series::SAMPLE_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    housekeeping.limits.housekeeping();
                    housekeeping.prune(&live.registry().ids().into_iter().collect());
                }
                _ = sample.tick() => housekeeping.sample_series(),
                _ = stop.cancelled() => return,
            }
        }
    });
    let result = front.clone().serve(listener, ready).await;
    drain(&tracker, deadline).await;
    front
        .workers()
        .stop(shadowcat_proxy::forward::STOP_WORKERS)
        .await;
    result.map_err(|e| ProxyError::UpstreamConnect(format!("HTTP front failed: {e}")))
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
