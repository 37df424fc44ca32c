//! The admin listener: a JSON API, live traffic as SSE and a web page, on its own address
//! (never the proxy's listener). What it serves depends on what the proxy has:
//!
//! * always: `GET /` (the web page, `admin.js`, `admin.css`, `favicon.svg`: no data in them, no
//!   token needed) and `GET /api` (which parts this proxy has);
//! * interceptor rules (a [`PauseBoard`]): `/intercept/paused…` (see [`intercept`]);
//! * live traffic ([`Traffic`]): `GET /api/traffic` (SSE) and each session's latest messages,
//!   `GET /api/traffic/history?session=ID` (see [`traffic`]);
//! * extensions ([`AdminServer::extension`]): API routes a mode adds, served behind the same
//!   token and host checks — the gateway's `/api/sessions[/{id}]`, `/api/upstreams`,
//!   `/api/config`, `/api/metrics`, `/api/series` (in `shadowcat-gateway`); without it those answer `404`
//!   saying this proxy is not a gateway.
//!
//! With a token, every API request needs `Authorization: Bearer TOKEN` (compared in constant
//! time); `401` otherwise. Without one, only loopback `Host` names are served (a DNS-rebinding
//! page cannot reach it) and state-changing requests from a non-loopback `Origin` get `403`.

pub mod intercept;
mod page;
pub mod traffic;

pub use traffic::Traffic;

use crate::front::conn::{self, ConnLimits, Slots};
use crate::intercept::PauseBoard;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::get;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What an admin listener serves.
pub struct AdminServer {
    token: Option<Arc<str>>,
    board: Option<Arc<PauseBoard>>,
    extensions: Vec<(&'static str, axum::Router)>,
    traffic: Option<Arc<Traffic>>,
    limits: ConnLimits,
}

/// Shared by the handlers.
pub(crate) struct Admin {
    token: Option<Arc<str>>,
    board: Option<Arc<PauseBoard>>,
    /// The names of the extensions served (`GET /api` lists them).
    extensions: Vec<&'static str>,
    traffic: Option<Arc<Traffic>>,
    started: Instant,
    cancel: CancellationToken,
}

type Shared = State<Arc<Admin>>;

impl AdminServer {
    /// An admin listener; with `token`, every API request needs it.
    pub fn new(token: Option<String>) -> AdminServer {
        AdminServer {
            token: token.map(Arc::from),
            board: None,
            extensions: Vec::new(),
            traffic: None,
            limits: ConnLimits::default(),
        }
    }

    /// Connection timeouts and the connection limit (default: [`ConnLimits::default`]).
    pub fn limits(mut self, limits: ConnLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Serve the messages held by `pause` rules.
    pub fn intercept(mut self, board: Arc<PauseBoard>) -> Self {
        self.board = Some(board);
        self
    }

    /// Serve an extension's API `routes` (a mode's own state, e.g. the gateway's sessions and
    /// upstreams) behind the listener's token and host checks; `GET /api` says `name: true`.
    pub fn extension(mut self, name: &'static str, routes: axum::Router) -> Self {
        self.extensions.push((name, routes));
        self
    }

    /// Serve live traffic (install `traffic` in the pipeline too).
    pub fn traffic(mut self, traffic: Arc<Traffic>) -> Self {
        self.traffic = Some(traffic);
        self
    }

    /// Serve on `listener` until `cancel` (open live-traffic streams end then too).
    pub async fn serve(
        self,
        listener: TcpListener,
        cancel: CancellationToken,
    ) -> std::io::Result<()> {
        let names = self.extensions.iter().map(|(n, _)| *n).collect();
        let admin = Arc::new(Admin {
            token: self.token,
            board: self.board,
            extensions: names,
            traffic: self.traffic,
            started: Instant::now(),
            cancel: cancel.clone(),
        });
        let has_gateway = self.extensions.iter().any(|(n, _)| *n == "gateway");
        let mut api = axum::Router::new()
            .route("/api", get(index))
            .merge(intercept::routes())
            .route("/api/traffic", get(traffic::stream))
            .route("/api/traffic/history", get(traffic::history))
            .with_state(admin.clone());
        if !has_gateway {
            api = api.merge(not_a_gateway());
        }
        for (_, routes) in self.extensions {
            api = api.merge(routes);
        }
        let api = api
            .fallback(|| async { error(StatusCode::NOT_FOUND, "unknown admin endpoint") })
            .layer(axum::middleware::from_fn_with_state(admin.clone(), guard));
        let app = page::routes()
            .with_state(admin.clone())
            .merge(api)
            .layer(axum::middleware::from_fn_with_state(admin, host_check));
        // Our own accept loop (not `axum::serve`): the same timeouts and connection limit as
        // the proxy's listener.
        let limits = self.limits;
        let slots = Slots::new(limits.max_connections);
        let conns = tokio_util::task::TaskTracker::new();
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = cancel.cancelled() => break,
            };
            let (tcp, peer) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "admin listener: accepting a connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            };
            let Some(slot) = slots.take("admin") else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let app = app.clone();
            conns.spawn(conn::serve(
                tcp,
                peer,
                limits,
                cancel.clone(),
                slot,
                move |req| {
                    let mut app = app.clone();
                    async move {
                        match tower_service::Service::call(&mut app, req).await {
                            Ok(r) => r,
                            Err(never) => match never {},
                        }
                    }
                },
            ));
        }
        conns.close();
        conns.wait().await;
        Ok(())
    }
}

pub fn json(status: StatusCode, v: serde_json::Value) -> Response {
    let mut r = Response::new(Body::from(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}

pub fn error(status: StatusCode, message: &str) -> Response {
    json(status, serde_json::json!({ "error": message }))
}

/// An API request that cannot be served: its status and what to say.
pub struct Refused(StatusCode, String);

impl Refused {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Refused {
        Refused(status, message.into())
    }
}

impl axum::response::IntoResponse for Refused {
    fn into_response(self) -> Response {
        error(self.0, &self.1)
    }
}

/// What the handlers return.
pub type Answer = Result<Response, Refused>;

/// Without the gateway extension, its endpoints say why they are not served.
fn not_a_gateway() -> axum::Router {
    async fn refuse() -> Response {
        error(
            StatusCode::NOT_FOUND,
            "this proxy is not a gateway: sessions, upstreams, configuration and metrics are served by `shadowcat gateway`",
        )
    }
    axum::Router::new()
        .route("/api/sessions", get(refuse))
        .route("/api/sessions/{id}", get(refuse).delete(refuse))
        .route("/api/upstreams", get(refuse))
        .route("/api/config", get(refuse))
        .route("/api/metrics", get(refuse))
        .route("/api/series", get(refuse))
}

/// `GET /api`: what this admin listener serves.
async fn index(State(a): Shared) -> Response {
    json(
        StatusCode::OK,
        serde_json::json!({
            "shadowcat": env!("CARGO_PKG_VERSION"),
            "intercept": a.board.is_some(),
            "gateway": a.extensions.contains(&"gateway"),
            "traffic": a.traffic.is_some(),
            "uptime_s": a.started.elapsed().as_secs(),
        }),
    )
}

/// Whether the request carries `Authorization: Bearer TOKEN`, compared in constant time (the
/// timing does not reveal how much of a guess was right).
pub fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    use subtle::ConstantTimeEq;
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| bool::from(given.as_bytes().ct_eq(token.as_bytes())))
}

impl Admin {
    /// `None` when allowed; the 401 answer otherwise.
    fn refuse(&self, headers: &HeaderMap) -> Option<Response> {
        let token = self.token.as_ref()?;
        (!bearer_matches(headers, token)).then(|| {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong admin token (Authorization: Bearer TOKEN)",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer realm=\"shadowcat-admin\""),
            );
            r
        })
    }
}

/// The API needs the token (when one is set).
async fn guard(State(a): Shared, req: Request, next: Next) -> Response {
    if let Some(r) = a.refuse(req.headers()) {
        return r;
    }
    next.run(req).await
}

/// A loopback host name or address, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Without a token, refuse what a web page elsewhere could make a browser send here: other
/// `Host` names (DNS rebinding) and state changes from another origin.
async fn host_check(State(a): Shared, req: Request, next: Next) -> Response {
    if a.token.is_none() {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if !is_loopback_host(host) {
            return error(
                StatusCode::FORBIDDEN,
                "this admin listener has no token and serves loopback host names only \
                 (localhost, 127.0.0.1, [::1]); set a token to reach it by another name",
            );
        }
        let changes = !matches!(*req.method(), Method::GET | Method::HEAD);
        let origin = req
            .headers()
            .get(header::ORIGIN)
            .and_then(|o| o.to_str().ok());
        if changes
            && let Some(o) = origin
            && !o
                .split_once("://")
                .is_some_and(|(_, rest)| is_loopback_host(rest))
        {
            return error(
                StatusCode::FORBIDDEN,
                &format!("requests from the origin `{o}` may not change anything here"),
            );
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::is_loopback_host;

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "localhost:9090",
            "127.0.0.1",
            "127.0.0.1:1",
            "[::1]:9090",
            "[::1]",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "",
            "evil.example",
            "evil.example:9090",
            "10.0.0.1:9090",
            "localhost.evil.example",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }
}
