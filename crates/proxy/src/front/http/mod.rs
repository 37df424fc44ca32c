//! The Streamable HTTP front (protocol versions 2025-03-26, 2025-06-18, 2025-11-25).
//!
//! Endpoints: `/mcp` (the default target) and `/servers/NAME/mcp` (named targets); with
//! `allow_absolute_uri`, absolute-form request URIs (`POST http://host/mcp HTTP/1.1`) select an
//! HTTP upstream per request, as a forward proxy does. Each session gets its own upstream.

mod answers;
pub mod checks;
mod listen;
mod modern;
mod outbox;
mod post;
mod registry;
mod replicas;
pub mod reply;
mod stream;
mod translated;

/// Session records (the era translation's held sessions write them too).
use crate::session::records::Records;
pub use checks::{HostPolicy, OriginPolicy};
pub use registry::Registry;

use crate::error::ProxyError;
use crate::pipeline::Pipeline;
use crate::runtime::Workers;
use crate::session::events::EventLog;
use crate::session::host::Limits;
pub use crate::session::place::Target;
use crate::session::place::{self, Created, Creator, NewSession};
use crate::session::{Host, Kind, Session};
use crate::upstream::{HttpClient, UpstreamCtx, UpstreamEvent, UpstreamOptions, UpstreamSpec};
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use futures_util::future::BoxFuture;
use http::{Method, StatusCode, header};
use shadowcat_proto::era::SESSION_ID_HEADER;
use shadowcat_proto::error::INVALID_REQUEST;
use shadowcat_proto::{Frame, Message};
use shadowcat_store::{Retention, SessionStore};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Where sessions of each route go.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    /// Served at `/mcp`.
    pub default: Option<UpstreamSpec>,
    /// Served at `/servers/NAME/mcp`.
    pub named: HashMap<String, UpstreamSpec>,
}

/// Settings of the HTTP front.
#[derive(Debug, Clone)]
pub struct HttpFrontConfig {
    /// Upstreams by route.
    pub targets: Targets,
    /// Accept absolute-form request URIs and proxy to the URI they name.
    pub allow_absolute_uri: bool,
    /// Headers added to requests sent to absolute-URI upstreams — only to the origins of the
    /// configured HTTP targets (never to an origin a client picks).
    pub absolute_headers: Vec<(String, String)>,
    /// Where absolute-URI upstreams may be (loopback, link-local and private addresses are
    /// refused unless listed).
    pub destinations: crate::upstream::destinations::Destinations,
    /// Browser origins allowed besides loopback ones.
    pub origins: OriginPolicy,
    /// `Host` names served besides loopback ones (checked on a loopback listener, or on any
    /// listener once names are configured).
    pub hosts: HostPolicy,
    /// Largest request body accepted (413 above).
    pub max_body: usize,
    /// Most live sessions of every kind together (503 + Retry-After above).
    pub max_sessions: usize,
    /// Most live sessions of one authenticated principal (gateway; `None`: no such limit).
    pub max_sessions_per_principal: Option<usize>,
    /// Sessions idle this long are reaped and their upstream released.
    pub idle_timeout: Duration,
    /// SSE events kept per stream for resumption (and for a GET stream that is not connected).
    pub retention: Retention,
    /// Most payload bytes one session's event log holds, all its streams together (its oldest
    /// events go first).
    pub max_event_bytes: u64,
    /// How long a finished POST stream's events stay resumable before they are dropped.
    pub finished_stream_grace: Duration,
    /// The `retry:` hint sent to 2025-11-25 clients on priming events.
    pub sse_retry: Duration,
    /// How long shutdown waits for in-flight requests before ending sessions.
    pub shutdown_deadline: Duration,
    /// Upstream knobs.
    pub upstream: UpstreamOptions,
    /// This replica's id in session records (sessions it owns die with it).
    pub replica_id: String,
    /// Ended and abandoned session records are deleted from the store after this long.
    pub record_ttl: Duration,
    /// Admission and routing by a policy (the gateway's routes, authentication, limits). When
    /// set, it replaces `targets` and `allow_absolute_uri`.
    pub policy: Option<Arc<dyn Policy>>,
    /// Threads client connections are served on (see [`Workers`]).
    pub workers: usize,
    /// Connection timeouts and the connection limit of the listener.
    pub conn: crate::front::conn::ConnLimits,
    /// Longest wait for the upstream's answer to a client request: then the client gets a
    /// JSON-RPC error (`-32001`), the upstream `notifications/cancelled`, and the session can
    /// become idle again. `None`: no limit. Gateway mode sets it per route instead.
    pub request_timeout: Option<Duration>,
}

/// Default SSE events kept per stream.
pub const DEFAULT_MAX_EVENTS: usize = 1000;
/// Default age after which logged SSE events are dropped.
pub const DEFAULT_EVENT_MAX_AGE: Duration = Duration::from_secs(600);
/// Default byte budget of one session's event log (8 MiB).
pub const DEFAULT_MAX_EVENT_BYTES: u64 = 8 * 1024 * 1024;
/// Default grace period of a finished POST stream's events.
pub const DEFAULT_FINISHED_STREAM_GRACE: Duration = Duration::from_secs(60);

impl Default for HttpFrontConfig {
    fn default() -> Self {
        HttpFrontConfig {
            targets: Targets::default(),
            allow_absolute_uri: false,
            absolute_headers: Vec::new(),
            destinations: Default::default(),
            origins: OriginPolicy::default(),
            hosts: HostPolicy::default(),
            max_body: 10 * 1024 * 1024,
            max_sessions: 1000,
            max_sessions_per_principal: None,
            idle_timeout: Duration::from_secs(600),
            retention: Retention {
                max_events: Some(DEFAULT_MAX_EVENTS),
                max_age: Some(DEFAULT_EVENT_MAX_AGE),
            },
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            finished_stream_grace: DEFAULT_FINISHED_STREAM_GRACE,
            sse_retry: Duration::from_millis(1000),
            shutdown_deadline: Duration::from_secs(10),
            upstream: UpstreamOptions::default(),
            replica_id: default_replica_id(),
            record_ttl: Duration::from_secs(3600),
            policy: None,
            workers: crate::runtime::default_workers(),
            conn: crate::front::conn::ConnLimits::default(),
            request_timeout: Some(DEFAULT_REQUEST_TIMEOUT),
        }
    }
}

/// The forward modes' default request timeout.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// The guard of the sessions the front places itself (not the gateway's, whose members have
/// their own): only a request timeout — no breaker, no retries.
fn front_guard(config: &HttpFrontConfig) -> Option<Arc<crate::guard::Guard>> {
    let timeout = config.request_timeout?;
    let cfg = crate::guard::GuardConfig {
        breaker: None,
        retry: crate::guard::RetryConfig {
            attempts: 0,
            ..crate::guard::RetryConfig::default()
        },
        request_timeout: Some(timeout),
        sse_idle_timeout: None,
    };
    Some(Arc::new(crate::guard::Guard::new("upstream", &cfg)))
}

/// Shared state of a running HTTP front.
pub struct HttpFront {
    config: HttpFrontConfig,
    /// Every live session of every kind, and admission.
    host: Arc<Host>,
    registry: Arc<Registry>,
    pipeline: Pipeline,
    http: HttpClient,
    /// Fires when shutdown begins (stop accepting, drain).
    cancel: CancellationToken,
    /// Fires once the drain is over: the parent of every session's token.
    sessions_cancel: CancellationToken,
    tracker: TaskTracker,
    /// The legacy HTTP+SSE endpoints (`/sse`, `/message`) on the same listener.
    legacy: crate::front::sse::LegacyFront,
    /// Sessions held with session-based servers for 2026-07-28 clients (era translation).
    translations: Arc<translated::Pool>,
    /// The threads client connections are served on.
    workers: Workers,
    /// Whether `Host` is checked (decided by `serve` from the listener's address).
    check_hosts: std::sync::atomic::AtomicBool,
    /// The request timeout of sessions placed by the front (see [`front_guard`]).
    guard: Option<Arc<crate::guard::Guard>>,
    /// The client of absolute-URI upstreams: it connects only where `destinations` allows.
    absolute_http: Option<HttpClient>,
    /// Origins (`scheme://host:port`) of the configured HTTP targets.
    target_origins: Vec<String>,
    /// The configured targets, each with its placer (built once).
    fixed: FixedTargets,
    /// Sessions of other replicas being adopted here (one adoption of a session at a time).
    adoptions: replicas::Adoptions,
}

/// The configured targets of forward mode, as [`Target`]s.
#[derive(Default)]
struct FixedTargets {
    /// `/mcp`.
    default: Option<Target>,
    /// `/servers/NAME/mcp`.
    named: HashMap<String, Target>,
}

impl FixedTargets {
    fn new(targets: &Targets) -> FixedTargets {
        FixedTargets {
            default: targets
                .default
                .as_ref()
                .map(|s| Target::fixed(Arc::from(""), s.clone())),
            named: targets
                .named
                .iter()
                .map(|(name, s)| {
                    (
                        name.clone(),
                        Target::fixed(Arc::from(name.as_str()), s.clone()),
                    )
                })
                .collect(),
        }
    }
}

/// The URL a client sent a request to: an absolute-form request target as it came (a client
/// using this front as an HTTP proxy), else `http://` + the `Host` header (or the address the
/// connection was accepted on, without a usable one) + the path and query. The front speaks
/// plain HTTP: a TLS terminator in front of it is not seen. `None` when neither a host nor the
/// listen address is known.
pub fn request_url(parts: &http::request::Parts) -> Option<String> {
    let uri = &parts.uri;
    if uri.scheme().is_some() && uri.authority().is_some() {
        return Some(uri.to_string());
    }
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && !h.contains(['/', '?', '#', '@', ' ']))
        .map(str::to_string)
        .or_else(|| {
            parts
                .extensions
                .get::<crate::front::conn::ListenAddr>()
                .map(|a| a.0.to_string())
        })?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    Some(format!("http://{host}{path}"))
}

/// The client's address as the gateway determined it (the peer, or from a trusted proxy's
/// `X-Forwarded-For`), in a request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub std::net::IpAddr);

/// The seam through which a mode admits and routes the front's requests (the gateway: its own
/// endpoints, rate limits, authentication, routes with upstream sets). The front never knows
/// which mode it serves.
pub trait Policy: Send + Sync + std::fmt::Debug + 'static {
    /// Serve one request: answer it (the policy's own endpoints, refusals), or admit it and
    /// pass it on to [`serve_mcp`].
    fn handle<'a>(&'a self, front: &'a Arc<HttpFront>, req: Request) -> BoxFuture<'a, Response>;
    /// Which route an admitted request addresses, and where its new sessions go.
    fn target(&self, req: &Request) -> Result<Target, ProxyError>;
}

impl HttpFront {
    /// Build a front. `cancel` stops it; its tasks are tracked by `tracker`.
    pub fn new(
        config: HttpFrontConfig,
        pipeline: Pipeline,
        http: HttpClient,
        store: Arc<dyn SessionStore>,
        cancel: CancellationToken,
        tracker: TaskTracker,
    ) -> Result<Arc<Self>, ProxyError> {
        let workers = Workers::start(config.workers).map_err(|e| {
            ProxyError::Startup(format!(
                "cannot start {} worker threads: {e}",
                config.workers
            ))
        })?;
        let log = Arc::new(EventLog::new(
            store.clone(),
            config.retention,
            config.max_event_bytes,
        ));
        let owner: Arc<str> = Arc::from(config.replica_id.as_str());
        let records = Records::new(
            store,
            owner,
            Duration::from_secs(1),
            // Held 2026-07-28 sessions count against the limit too; headroom for those ending.
            config.max_sessions.saturating_mul(2).max(1024),
            &tracker,
            cancel.clone(),
        );
        let registry = Arc::new(Registry::default());
        let limits = Limits {
            max_sessions: config.max_sessions,
            max_per_principal: config.max_sessions_per_principal,
        };
        let host = Host::new(limits, Arc::new(records), Some(log));
        let sessions_cancel = CancellationToken::new();
        let guard = front_guard(&config);
        let absolute_http = if config.allow_absolute_uri && config.policy.is_none() {
            Some(http.restricted(config.destinations.clone())?)
        } else {
            None
        };
        let target_origins = config
            .targets
            .default
            .iter()
            .chain(config.targets.named.values())
            .filter_map(|s| match s {
                UpstreamSpec::Http { url, .. }
                | UpstreamSpec::Sse { url, .. }
                | UpstreamSpec::Auto { url, .. } => origin_of(url),
                _ => None,
            })
            .collect();
        let fixed = FixedTargets::new(&config.targets);
        let legacy = crate::front::sse::LegacyFront::new(&config, host.clone());
        Ok(Arc::new(HttpFront {
            config,
            host,
            registry,
            pipeline,
            http,
            cancel,
            sessions_cancel,
            tracker,
            legacy,
            translations: Arc::default(),
            workers,
            check_hosts: std::sync::atomic::AtomicBool::new(true),
            guard,
            absolute_http,
            target_origins,
            fixed,
            adoptions: replicas::Adoptions::default(),
        }))
    }

    /// The threads client connections are served on.
    pub fn workers(&self) -> &Workers {
        &self.workers
    }

    /// The front's settings.
    pub(crate) fn config(&self) -> &HttpFrontConfig {
        &self.config
    }

    /// The sessions held for 2026-07-28 clients of session-based servers.
    pub(crate) fn translations(&self) -> &Arc<translated::Pool> {
        &self.translations
    }

    /// The live Streamable HTTP sessions (the front's own view: outboxes, event logs).
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Every live session of every kind, and admission.
    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }

    /// The configured target of forward mode named `route` (`""`: the default one).
    pub(crate) fn fixed_target(&self, route: &str) -> Option<&Target> {
        if route.is_empty() {
            self.fixed.default.as_ref()
        } else {
            self.fixed.named.get(route)
        }
    }

    /// Create a session of `kind` for `target` (see [`place::create`]).
    pub(crate) async fn create(
        &self,
        target: &Target,
        kind: Kind,
        route: &str,
        init: Option<&Frame>,
    ) -> Result<Created, ProxyError> {
        let new = NewSession {
            target,
            kind,
            route,
            init,
            tried: &[],
        };
        place::create(&self.creator(target), new).await
    }

    /// Create a session whose client's `initialize` opens it, and run the front's exchange of
    /// that `initialize` on it, failing over as the route says (see [`place::initialize`]).
    pub(crate) async fn initialize<T, Fut>(
        &self,
        target: &Target,
        kind: Kind,
        route: &str,
        init: &Frame,
        exchange: impl FnMut(Created) -> Fut,
    ) -> Result<T, ProxyError>
    where
        Fut: Future<Output = place::Initialized<T>>,
    {
        let new = NewSession {
            target,
            kind,
            route,
            init: Some(init),
            tried: &[],
        };
        place::initialize(&self.creator(target), new, exchange).await
    }

    /// Continue a session of another replica on `candidate` (see [`place::resume`]).
    pub(crate) async fn resume(
        &self,
        target: &Target,
        candidate: place::Candidate,
        resumed: &place::Resumed,
    ) -> Result<(Arc<Session>, mpsc::Receiver<UpstreamEvent>, place::Unlisted), ProxyError> {
        place::resume(&self.creator(target), target, candidate, resumed).await
    }

    /// What the one creation path uses of this front, for sessions of `target`.
    fn creator<'a>(&'a self, target: &'a Target) -> Creator<'a> {
        Creator {
            host: &self.host,
            pipeline: &self.pipeline,
            ctx: Box::new(move |id: &Arc<str>| self.upstream_ctx_for(id, target)),
        }
    }

    /// True once shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// The HTTP client for `target`'s upstream: absolute-URI targets get the one restricted to
    /// the allowed destinations.
    pub(crate) fn http_for(&self, target: &Target) -> &HttpClient {
        match &self.absolute_http {
            Some(h) if target.is_absolute() => h,
            _ => &self.http,
        }
    }

    /// [`HttpFront::upstream_ctx`] for a session of `target`.
    pub(crate) fn upstream_ctx_for(&self, session: &Arc<str>, target: &Target) -> UpstreamCtx {
        let mut ctx = self.upstream_ctx(session);
        if target.is_absolute() {
            ctx.http = self.http_for(target).clone();
        }
        ctx
    }

    /// Cancelled once every session of the front has ended (after the shutdown drain).
    pub fn sessions_token(&self) -> CancellationToken {
        self.sessions_cancel.clone()
    }

    /// The context for a new session's upstream (cancelled with the front, tracked by it).
    pub(crate) fn upstream_ctx(&self, session: &Arc<str>) -> UpstreamCtx {
        UpstreamCtx {
            session: session.clone(),
            cancel: self.sessions_cancel.child_token(),
            front_cancel: self.sessions_cancel.clone(),
            tracker: self.tracker.clone(),
            http: self.http.clone(),
            options: self.config.upstream.clone(),
            guard: self.guard.clone(),
        }
    }

    /// Serve on `listener` until shutdown (see [`HttpFront::serve`]), then wait for every task
    /// of the front (sessions, children, background work on its tracker) up to the shutdown
    /// deadline plus three child grace periods, and stop its worker threads. Every mode that
    /// serves HTTP (forward, gateway) ends this way.
    pub async fn run(
        self: Arc<Self>,
        listener: TcpListener,
        ready: impl FnOnce(),
    ) -> Result<(), ProxyError> {
        let deadline = self.config.shutdown_deadline + self.config.upstream.shutdown_grace * 3;
        let result = self.clone().serve(listener, ready).await;
        crate::runtime::drain(&self.tracker, deadline).await;
        self.workers.stop(crate::runtime::STOP_WORKERS).await;
        result.map_err(|e| ProxyError::UpstreamConnect(format!("HTTP front failed: {e}")))
    }

    /// Serve on `listener` until the cancel token fires, then shut down gracefully: stop
    /// accepting, let in-flight requests finish (up to the deadline), end every session (which
    /// stops its upstream and kills its child), and close the remaining streams.
    /// `ready` is called once the front is ready to serve (after start-up housekeeping).
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        ready: impl FnOnce(),
    ) -> std::io::Result<()> {
        // A single-process store (SQLite) outlives us; sessions our previous run left active lost
        // their children with it. Shared stores (Redis) are left alone: other replicas own theirs.
        let single_process = self.host.records().store().backend() == "sqlite";
        let orphans = if single_process {
            self.host.records().end_orphans().await
        } else {
            0
        };
        if orphans > 0 {
            tracing::info!(
                orphans,
                "marked sessions of this replica's previous run as ended"
            );
        }
        // DNS rebinding: a loopback listener is reachable from this machine's browsers under any
        // name an attacker points at 127.0.0.1; elsewhere the operator names the host.
        let loopback = listener.local_addr()?.ip().is_loopback();
        self.check_hosts.store(
            loopback || self.config.hosts.has_names(),
            std::sync::atomic::Ordering::Relaxed,
        );
        ready();
        let reaper = self.tracker.spawn(self.clone().reap());
        let conns = TaskTracker::new();
        let accept = self
            .tracker
            .spawn(listen::accept(self.clone(), listener, conns.clone()));
        self.cancel.cancelled().await;
        // No new session from here on; the live ones (of every kind) finish what is in flight.
        self.host.close();
        tracing::info!(sessions = self.host.len(), "shutting down the HTTP front");
        let deadline = tokio::time::Instant::now() + self.config.shutdown_deadline;
        while self.host.inflight() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // With a shared store, a session another replica can continue is handed off, not
        // ended: its client's next request (with the same id, or a Last-Event-ID) goes on
        // elsewhere, as in a rolling upgrade. The others end here.
        let shared = !matches!(self.host.records().store().backend(), "memory" | "sqlite");
        let handed = std::sync::atomic::AtomicUsize::new(0);
        let ends = self.host.entries().into_iter().map(|(id, entry)| {
            let reg = self.registry.clone();
            let handed = &handed;
            async move {
                let session = entry.session();
                if shared
                    && session.as_ref().is_some_and(|s| s.can_hand_off())
                    && reg.hand_off(&id).await
                {
                    handed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return;
                }
                if !reg.end(&id).await
                    && let Some(s) = session
                {
                    s.shutdown().await;
                }
            }
        });
        futures_util::future::join_all(ends).await;
        let handed = handed.into_inner();
        if handed > 0 {
            tracing::info!(
                sessions = handed,
                "left sessions in the shared store for other replicas to continue"
            );
        }
        self.sessions_cancel.cancel();
        let _ = reaper.await;
        let _ = accept.await;
        conns.close();
        if tokio::time::timeout(self.config.shutdown_deadline, conns.wait())
            .await
            .is_err()
        {
            tracing::warn!("connections still open after the shutdown deadline; closing them");
        }
        Ok(())
    }

    async fn reap(self: Arc<Self>) {
        let period = (self.config.idle_timeout / 4)
            .min(self.config.finished_stream_grace / 2)
            .clamp(Duration::from_millis(100), Duration::from_secs(5));
        let mut tick = tokio::time::interval(period);
        let mut last_expire = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.cancel.cancelled() => return,
            }
            for id in self.registry.idle(self.config.idle_timeout) {
                tracing::info!(session = %id, "session idle too long; reaping it");
                self.registry.end(&id).await;
            }
            self.registry
                .drop_finished_streams(self.config.finished_stream_grace)
                .await;
            if last_expire.elapsed() >= Duration::from_secs(60) {
                last_expire = tokio::time::Instant::now();
                self.host.records().expire(self.config.record_ttl).await;
            }
        }
    }

    /// Which upstream a request addresses.
    fn target(&self, req: &Request) -> Result<Target, ProxyError> {
        if let Some(policy) = &self.config.policy {
            return policy.target(req);
        }
        let uri = req.uri();
        if self.config.allow_absolute_uri && uri.scheme().is_some() && uri.authority().is_some() {
            let url = uri.to_string();
            // The operator's headers (credentials) go to the operator's targets only.
            let headers = match origin_of(&url) {
                Some(o) if self.target_origins.contains(&o) => self.config.absolute_headers.clone(),
                _ => Vec::new(),
            };
            return Ok(Target::fixed(
                Arc::from(format!("{ABSOLUTE_KEY}{url}")),
                UpstreamSpec::http(url, headers),
            ));
        }
        let path = uri.path();
        if path == "/mcp" {
            return match &self.fixed.default {
                Some(t) => Ok(t.clone()),
                None => Err(not_found(
                    "no default target is configured; use /servers/NAME/mcp",
                )),
            };
        }
        if let Some(name) = path
            .strip_prefix("/servers/")
            .and_then(|r| r.strip_suffix("/mcp"))
        {
            return match self.fixed.named.get(name) {
                Some(t) => Ok(t.clone()),
                None => Err(not_found(&format!("no target named `{name}`"))),
            };
        }
        Err(not_found(&format!(
            "no MCP endpoint at `{path}`; use /mcp or /servers/NAME/mcp"
        )))
    }
}

/// Route keys of absolute-URI targets start with this.
const ABSOLUTE_KEY: &str = "abs:";

/// The endpoint path of a route key, as clients address it: `/mcp`, `/servers/NAME/mcp`, or
/// `absolute-uri` for an upstream the client named with an absolute-form URI (the URI itself
/// is not shown: it may carry credentials).
pub fn route_path(key: &str) -> std::borrow::Cow<'static, str> {
    match key {
        "" => "/mcp".into(),
        k if k.starts_with(ABSOLUTE_KEY) => "absolute-uri".into(),
        k => format!("/servers/{k}/mcp").into(),
    }
}

/// Whether a route key is an absolute-URI target's (its [`route_path`] is `absolute-uri`).
pub fn is_absolute_key(key: &str) -> bool {
    key.starts_with(ABSOLUTE_KEY)
}

impl Target {
    /// Whether the client chose this upstream with an absolute-form URI.
    pub(crate) fn is_absolute(&self) -> bool {
        self.key.starts_with(ABSOLUTE_KEY)
    }
}

/// `scheme://host:port` (port explicit) of an http(s) URL; `None` if it is not one.
fn origin_of(url: &str) -> Option<String> {
    let u = reqwest::Url::parse(url).ok()?;
    if !matches!(u.scheme(), "http" | "https") {
        return None;
    }
    Some(format!(
        "{}://{}:{}",
        u.scheme(),
        u.host_str()?.to_ascii_lowercase(),
        u.port_or_known_default()?
    ))
}

/// The host name: stable across restarts, so a restarted proxy recognises its own sessions.
/// Replicas that share a store on one host need distinct ids (`--replica-id`).
pub fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    match host.trim() {
        "" => "shadowcat".to_string(),
        h => h.to_string(),
    }
}

fn not_found(msg: &str) -> ProxyError {
    ProxyError::bad(crate::error::Refusal::NotFound, INVALID_REQUEST, msg)
}

/// The session id header of a request, if any.
pub(crate) fn session_header(req: &Request) -> Result<Option<&str>, ProxyError> {
    match req.headers().get(SESSION_ID_HEADER) {
        None => Ok(None),
        Some(v) => v.to_str().map(Some).map_err(|_| {
            ProxyError::bad(
                crate::error::Refusal::Malformed,
                INVALID_REQUEST,
                "Mcp-Session-Id must be visible ASCII",
            )
        }),
    }
}

/// `GET /health`: liveness — `200` while the proxy serves, whatever its store does (a liveness
/// probe that failed during a store outage would restart replicas, which does not bring the
/// store back) — with the session count and the store's state in the body. Readiness is
/// `/ready`.
fn health(front: &HttpFront) -> Response {
    let (_, store) = store_state(front);
    let body = serde_json::json!({
        "status": "ok",
        "sessions": front.host.len(),
        "store": store,
    });
    reply::json_response(StatusCode::OK, bytes::Bytes::from(body.to_string()))
}

/// `GET /ready` (forward mode; the gateway answers its own, with its routes): `200` while new
/// sessions can be taken — the store is reachable (or degraded onto memory) and the proxy is
/// not shutting down —, `503` otherwise, the body saying which.
fn ready(front: &HttpFront) -> Response {
    let (store_ok, store) = store_state(front);
    let shutting_down = front.is_shutting_down();
    let ready = store_ok && !shutting_down;
    let body = serde_json::json!({
        "ready": ready,
        "shutting_down": shutting_down,
        "store": store,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    reply::json_response(status, bytes::Bytes::from(body.to_string()))
}

/// Whether the store takes new sessions (reachable, or degraded onto memory), and its state.
fn store_state(front: &HttpFront) -> (bool, serde_json::Value) {
    let store = front.host.records().store();
    let h = store.health();
    let state = serde_json::json!({
        "backend": store.backend(), "healthy": h.healthy, "degraded": h.degraded, "outages": h.outages,
    });
    (h.healthy || h.degraded, state)
}

async fn dispatch(front: Arc<HttpFront>, req: Request) -> Response {
    if front.check_hosts.load(std::sync::atomic::Ordering::Relaxed)
        && let Err(e) = front.config.hosts.check(req.uri(), req.headers())
    {
        return reply::error(&e, None);
    }
    if req.method() == Method::GET && req.uri().scheme().is_none() {
        match req.uri().path() {
            "/health" => return health(&front),
            // A policy (the gateway) answers its own readiness.
            "/ready" if front.config.policy.is_none() => return ready(&front),
            _ => {}
        }
    }
    let has_body = has_body(req.headers());
    let mut response = match front.config.policy.clone() {
        Some(policy) => policy.handle(&front, req).await,
        None => serve_mcp(front, req).await,
    };
    close_if_refused_with_body(has_body, &mut response);
    response
}

/// Whether a request carries a body (`Content-Length` > 0, or any `Transfer-Encoding`).
fn has_body(headers: &http::HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// A request refused (4xx/5xx) may have left part of its body unread (a `413` stops reading at
/// the limit; most refusals never read it). The server cannot then tell where the next request
/// starts and closes the connection after the response, so the response says `Connection:
/// close`: a keep-alive client opens a new connection instead of failing its next request on
/// this one. Refused requests are rare, so closing even when the body was read costs nothing
/// that matters.
fn close_if_refused_with_body(has_body: bool, response: &mut Response) {
    let s = response.status();
    if has_body && (s.is_client_error() || s.is_server_error()) {
        response
            .headers_mut()
            .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    }
}

/// Serve one MCP request (with a [`Policy`]: once it has admitted it).
pub async fn serve_mcp(front: Arc<HttpFront>, mut req: Request) -> Response {
    let sid = req
        .headers()
        .get(SESSION_ID_HEADER)
        .and_then(|v| v.to_str().ok());
    let span = tracing::info_span!(
        "request",
        method = %req.method(),
        path = req.uri().path(),
        session = sid,
        rpc = tracing::field::Empty,
        name = tracing::field::Empty,
        status = tracing::field::Empty
    );
    crate::tracecontext::adopt_headers(&span, req.headers());
    let result = tracing::Instrument::instrument(
        async {
            front.config.origins.check(req.headers())?;
            checks::single_headers(req.headers())?;
            if let Some(endpoint) = front.legacy.endpoint(&req) {
                return Box::pin(front.legacy.handle(&front, endpoint, req)).await;
            }
            let target = front.target(&req)?;
            if target.is_absolute() {
                // The client picked the destination: it must be one we may reach.
                front.config.destinations.check(req.uri()).await?;
            }
            let modern = checks::protocol_version(req.headers())?.is_some_and(|v| v.is_modern());
            if modern {
                // 2026-07-28 has no sessions and no GET/DELETE; Mcp-Session-Id is ignored.
                return match *req.method() {
                    Method::POST => post::handle(&front, target, req).await,
                    _ => Ok(method_not_allowed_modern()),
                };
            }
            if let Some(id) = session_header(&req)? {
                // A session answers only to the principal that created it.
                let store = front.host.records().store();
                target.placer.check_session(id, &**store).await?;
                let forwarded = req.headers().contains_key(replicas::FORWARDED_HEADER);
                // A session held here (nearly every request) is served at once; finding one
                // elsewhere is boxed, so that its state is not part of every request's future.
                let held = front.registry.get(id, &target.key).is_some();
                if !held {
                    let mut at = Box::pin(replicas::locate(&front, id, &target, forwarded)).await?;
                    let id = id.to_string();
                    while let replicas::Located::Owner { url, adoptable } = at {
                        match Box::pin(replicas::forward(&front, &url, req, adoptable)).await? {
                            replicas::Forwarded::Answered(r) => return Ok(r),
                            // The owner is gone: the session continues here, or where another
                            // replica that took it over first runs it (forwarded there, with no
                            // second fallback).
                            replicas::Forwarded::Unreachable(back) => {
                                req = back;
                                at = Box::pin(replicas::take_over(&front, &id, &target)).await?;
                            }
                        }
                    }
                }
            }
            match *req.method() {
                Method::POST => post::handle(&front, target, req).await,
                // GET streams and DELETE are boxed as the other paths that are not a POST.
                Method::GET => Box::pin(stream::handle_get(&front, target, req)).await,
                Method::DELETE => Box::pin(handle_delete(&front, target, req)).await,
                _ => Ok(method_not_allowed()),
            }
        },
        span.clone(),
    )
    .await;
    let response = result.unwrap_or_else(|e| reply::error(&e, None));
    span.record("status", response.status().as_u16());
    response
}

/// Name the JSON-RPC request on the current `request` span (seen in traces).
pub(crate) fn note_message(msg: &Message) {
    let span = tracing::Span::current();
    match msg {
        Message::Single(f) => {
            if let Some(m) = f.method() {
                span.record("rpc", m);
            }
            if let Some(n) = f.target() {
                span.record("name", n);
            }
        }
        Message::Batch(_) => {
            span.record("rpc", "(batch)");
        }
    }
}

fn method_not_allowed_modern() -> Response {
    let e = ProxyError::MethodNotAllowed {
        allow: "POST",
        message: "2026-07-28 has no GET stream and no sessions: use POST (subscriptions/listen for change notifications)".into(),
    };
    reply::error(&e, None)
}

fn method_not_allowed() -> Response {
    let e = ProxyError::MethodNotAllowed {
        allow: "GET, POST, DELETE",
        message: "use POST, GET or DELETE".into(),
    };
    reply::error(&e, None)
}

async fn handle_delete(
    front: &HttpFront,
    target: Target,
    req: Request,
) -> Result<Response, ProxyError> {
    let id = session_header(&req)?.ok_or_else(|| {
        ProxyError::bad(
            crate::error::Refusal::Malformed,
            INVALID_REQUEST,
            "DELETE needs an Mcp-Session-Id header",
        )
    })?;
    if front.registry.get(id, &target.key).is_none() {
        return Err(ProxyError::SessionNotFound);
    }
    front.registry.end(id).await;
    tracing::info!(session = id, "session deleted by the client");
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::destinations::Destinations;

    #[test]
    fn the_url_a_client_sent_its_request_to() {
        let url = |uri: &str, host: Option<&str>, listen: Option<&str>| {
            let mut b = Request::builder().method("POST").uri(uri);
            if let Some(h) = host {
                b = b.header(http::header::HOST, h);
            }
            let (mut parts, _) = b.body(Body::empty()).unwrap().into_parts();
            if let Some(a) = listen {
                parts
                    .extensions
                    .insert(crate::front::conn::ListenAddr(a.parse().unwrap()));
            }
            request_url(&parts)
        };
        let listen = Some("127.0.0.1:8080");
        assert_eq!(
            url("/mcp?x=1", Some("gw.example:9000"), listen).as_deref(),
            Some("http://gw.example:9000/mcp?x=1")
        );
        // No usable Host: the address the connection came in on.
        for host in [None, Some(""), Some("evil/path"), Some("user@host")] {
            assert_eq!(
                url("/servers/a/mcp", host, listen).as_deref(),
                Some("http://127.0.0.1:8080/servers/a/mcp"),
                "{host:?}"
            );
        }
        // A client using the proxy as an HTTP proxy: the target it named.
        assert_eq!(
            url("http://up.example/mcp?k=v", Some("127.0.0.1:8080"), listen).as_deref(),
            Some("http://up.example/mcp?k=v")
        );
        assert_eq!(url("/mcp", None, None), None);
    }

    fn front(config: HttpFrontConfig) -> Arc<HttpFront> {
        HttpFront::new(
            config,
            Pipeline::new(Vec::new()),
            HttpClient::new(Duration::from_secs(1)).unwrap(),
            Arc::new(shadowcat_store::MemoryStore::new()),
            CancellationToken::new(),
            TaskTracker::new(),
        )
        .unwrap()
    }

    fn headers_for(f: &HttpFront, url: &str) -> Vec<(String, String)> {
        let req = Request::builder()
            .method(Method::POST)
            .uri(url)
            .body(Body::empty())
            .unwrap();
        let t = f.target(&req).unwrap();
        assert!(t.is_absolute());
        match t.spec {
            UpstreamSpec::Http { headers, .. } => headers,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn absolute_uris_get_the_configured_headers_only_on_the_targets_origins() {
        let mut named = HashMap::new();
        named.insert(
            "a".to_string(),
            UpstreamSpec::http("https://Up.Example/mcp", Vec::new()),
        );
        let f = front(HttpFrontConfig {
            targets: Targets {
                default: Some(UpstreamSpec::http("http://10.0.0.5:3000/mcp", Vec::new())),
                named,
            },
            allow_absolute_uri: true,
            absolute_headers: vec![("X-Api-Key".into(), "secret".into())],
            destinations: Destinations::parse(&["10.0.0.0/8".into()]).unwrap(),
            workers: 1,
            ..HttpFrontConfig::default()
        });
        let key = vec![("X-Api-Key".to_string(), "secret".to_string())];
        assert_eq!(headers_for(&f, "https://up.example/other"), key);
        assert_eq!(headers_for(&f, "https://up.example:443/mcp"), key);
        assert_eq!(headers_for(&f, "http://10.0.0.5:3000/x"), key);
        for elsewhere in [
            "http://up.example/mcp",
            "https://up.example:8443/mcp",
            "https://evil.example/mcp",
            "http://10.0.0.5:3001/mcp",
            "http://169.254.169.254/latest/meta-data",
        ] {
            assert!(headers_for(&f, elsewhere).is_empty(), "{elsewhere}");
        }
    }
}
