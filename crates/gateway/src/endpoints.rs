//! The gateway's HTTP layer: its own endpoints (`/metrics`, `/ready`, protected-resource
//! metadata), admission of MCP requests (rate limits, authentication, scopes) and the
//! answers that refuse them (`401`/`403` challenges, `429`).

use super::auth::{AuthError, Principal};
use super::config::route_key;
use super::limits::Limited;
use super::live::Live;
use super::metrics::{Snapshot, UpstreamGauge};
use super::{ClientToken, Current, Gateway, Route, WELL_KNOWN};
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header};
use shadowcat_proto::error::{INVALID_REQUEST, error_bytes};
use shadowcat_proxy::audit::Refused;
use shadowcat_proxy::error::ProxyError;
use shadowcat_proxy::front::http::{ClientIp, HttpFront, reply, serve_mcp};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

impl Gateway {
    /// Serve one request: gateway endpoints, limits, authentication, then the MCP front.
    pub(crate) async fn handle(self: &Arc<Self>, front: &Arc<HttpFront>, req: Request) -> Response {
        let started = Instant::now();
        // One configuration for the whole request, even when a reload lands meanwhile.
        let live = self.live.load_full();
        let method = req.method().clone();
        let path = req.uri().path();
        if method == Method::GET && req.uri().scheme().is_none() {
            if path == "/metrics" {
                if let Some(token) = &live.metrics_token
                    && !shadowcat_proxy::admin::bearer_matches(req.headers(), token)
                {
                    return metrics_refused();
                }
                return self.metrics_page(front);
            }
            if path == "/ready" {
                return self.ready(front);
            }
            if let Some(rest) = path.strip_prefix(WELL_KNOWN) {
                return self.resource_metadata(&live, rest);
            }
        }
        // Legacy HTTP+SSE endpoints are admitted as their route (its scopes, its label).
        let route = self.route_for(&live, path, req.headers());
        let label = route
            .as_ref()
            .map(|r| r.path.as_str())
            .unwrap_or("unmatched");
        // The body is not `Sync`: only the head is borrowed across the awaits of admission.
        let (mut parts, body) = req.into_parts();
        let resp = match self
            .admit(&live, &parts, route.as_ref(), label, started)
            .await
        {
            Ok((principal, ip)) => {
                if let Some(p) = principal {
                    if let Some(t) = client_token(&live, &parts, &p) {
                        parts.extensions.insert(t);
                    }
                    parts.extensions.insert(p);
                }
                // What a request forwarded to another replica says in X-Forwarded-For.
                parts.extensions.insert(ClientIp(ip));
                parts.extensions.insert(Current(live.clone()));
                serve_mcp(front.clone(), Request::from_parts(parts, body)).await
            }
            Err(r) => r,
        };
        self.metrics.request(
            label,
            method.as_str(),
            resp.status().as_u16(),
            started.elapsed(),
        );
        self.series.http(resp.status().as_u16());
        resp
    }

    async fn admit(
        &self,
        live: &Live,
        req: &http::request::Parts,
        route: Option<&Arc<Route>>,
        label: &str,
        started: Instant,
    ) -> Result<(Option<Principal>, IpAddr), Response> {
        let peer = req
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let ip = live.limits.client_ip(peer, &req.headers);
        // The audit log's line for a request refused here (before any session).
        let audit = |principal: Option<&str>, r: &Response, reason: &str| {
            if let Some(a) = self.audit.get() {
                a.refused(Refused {
                    route: route.map(|r| r.path.as_str()),
                    principal,
                    client_ip: Some(ip),
                    http_method: req.method.as_str(),
                    status: r.status().as_u16(),
                    reason,
                    started,
                });
            }
        };
        if let Err(l) = live.limits.check_client(ip).await {
            self.metrics.rate_limited(label, l.scope);
            let r = too_many(&l);
            audit(None, &r, "rate_limit");
            return Err(r);
        }
        // With [auth], every path but the gateway's own endpoints needs credentials: unknown
        // paths too (no route enumeration, nothing served unauthenticated by accident).
        let Some(auth) = &live.auth else {
            return Ok((None, ip));
        };
        let principal = match auth.authenticate(&req.headers).await {
            Ok(p) => p,
            Err(e) => {
                self.metrics.auth_failure(label, e.reason());
                tracing::info!(%ip, reason = %e, "request refused by authentication");
                let r = self.challenge(live, route, &e);
                audit(None, &r, "auth");
                return Err(r);
            }
        };
        let needed = route
            .map(|r| r.scopes.as_slice())
            .unwrap_or(&live.auth_scopes);
        if !principal.has_scopes(needed) {
            let e = AuthError::InsufficientScope(needed.to_vec());
            self.metrics.auth_failure(label, e.reason());
            tracing::info!(principal = %principal.id, reason = %e, "request refused");
            let r = self.challenge(live, route, &e);
            audit(Some(&principal.id), &r, "scope");
            return Err(r);
        }
        if let Err(l) = live.limits.check_principal(&principal.id).await {
            self.metrics.rate_limited(label, l.scope);
            let r = too_many(&l);
            audit(Some(&principal.id), &r, "rate_limit");
            return Err(r);
        }
        Ok((Some(principal), ip))
    }

    /// The base URL of this gateway as clients see it: `server.public_url`, which validation
    /// requires with `[auth]` (the only case that names it). Never built from the request's
    /// `Host`: a client could make the challenge point anywhere, and the scheme is unknown.
    fn base_url(&self) -> &str {
        self.public_url.as_deref().unwrap_or_default()
    }

    /// The metadata of the route, or of the whole origin for other paths.
    fn metadata_url(&self, route: Option<&Arc<Route>>) -> String {
        format!(
            "{}{WELL_KNOWN}{}",
            self.base_url(),
            route.map(|r| r.path.as_str()).unwrap_or("")
        )
    }

    fn challenge(&self, live: &Live, route: Option<&Arc<Route>>, e: &AuthError) -> Response {
        reply::error(&self.refusal(live, route, e), None)
    }

    /// The error that refuses a request's credentials, with its RFC 6750 / RFC 9728 challenge.
    fn refusal(&self, live: &Live, route: Option<&Arc<Route>>, e: &AuthError) -> ProxyError {
        let clean = |s: &str| s.replace(['"', '\\'], "'");
        let mut v = format!("Bearer resource_metadata=\"{}\"", self.metadata_url(route));
        let scopes = route
            .map(|r| r.scopes.as_slice())
            .unwrap_or(&live.auth_scopes);
        if !scopes.is_empty() {
            v.push_str(&format!(", scope=\"{}\"", clean(&scopes.join(" "))));
        }
        match e {
            AuthError::Missing => {}
            AuthError::Invalid(_) | AuthError::Expired => {
                v.push_str(&format!(
                    ", error=\"invalid_token\", error_description=\"{}\"",
                    clean(&e.to_string())
                ));
            }
            AuthError::InsufficientScope(_) => v.push_str(", error=\"insufficient_scope\""),
        }
        ProxyError::Unauthorized {
            message: e.to_string(),
            challenge: v,
            insufficient_scope: matches!(e, AuthError::InsufficientScope(_)),
        }
    }

    /// RFC 9728 protected-resource metadata: `rest` is empty (the whole origin) or a route path.
    fn resource_metadata(&self, live: &Live, rest: &str) -> Response {
        if live.auth.is_none() {
            return json(
                StatusCode::NOT_FOUND,
                error_bytes(
                    None,
                    INVALID_REQUEST,
                    "this gateway does not require authentication",
                    None,
                ),
            );
        }
        let base = self.base_url().to_string();
        let (resource, scopes) = if rest.is_empty() || rest == "/" {
            let mut all = live.auth_scopes.clone();
            for r in live.sorted_routes() {
                all.extend(
                    r.scopes
                        .iter()
                        .filter(|s| !all.contains(s))
                        .cloned()
                        .collect::<Vec<_>>(),
                );
            }
            (base, all)
        } else {
            match route_key(rest).and_then(|k| live.routes.get(k)) {
                Some(r) => (format!("{base}{}", r.path), r.scopes.clone()),
                None => {
                    return json(
                        StatusCode::NOT_FOUND,
                        error_bytes(
                            None,
                            INVALID_REQUEST,
                            &format!("no MCP endpoint at `{rest}`"),
                            None,
                        ),
                    );
                }
            }
        };
        let mut doc = serde_json::json!({
            "resource": resource,
            "bearer_methods_supported": ["header"],
            "resource_name": "Shadowcat MCP gateway",
        });
        if !live.authorization_servers.is_empty() {
            doc["authorization_servers"] = serde_json::json!(live.authorization_servers);
        }
        if !scopes.is_empty() {
            doc["scopes_supported"] = serde_json::json!(scopes);
        }
        json(StatusCode::OK, Bytes::from(doc.to_string()))
    }

    fn snapshot(&self, front: &HttpFront) -> Snapshot {
        let store = front.host().records().store();
        let h = store.health();
        let mut upstreams = Vec::new();
        let live = self.live();
        for r in live.sorted_routes() {
            // A composite server's upstreams are labelled `SERVER=UPSTREAM`.
            for (server, set) in r.sets() {
                for i in 0..set.members().len() {
                    let mut g = UpstreamGauge::of(&r.path, set, i);
                    if !server.is_empty() {
                        g.upstream = format!("{server}={}", g.upstream);
                    }
                    upstreams.push(g);
                }
            }
        }
        Snapshot {
            active_sessions: front.host().len(),
            store_healthy: h.healthy || h.degraded,
            store_backend: store.backend(),
            store_ops: store.op_samples(),
            upstreams,
            servers: server_gauges(front, |key| live.routes.get(key).map(|r| r.path.clone())),
        }
    }

    /// The Prometheus text of `/metrics` (also served on the admin listener).
    pub(crate) fn metrics_page(&self, front: &HttpFront) -> Response {
        let mut text = self.metrics.render(&self.snapshot(front));
        self.live().limits.render_metrics(&mut text);
        self.render_reload_metrics(&mut text);
        if let Some(p) = self.pins.get() {
            p.render_metrics(&mut text);
        }
        let mut r = Response::new(Body::from(text));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        r
    }

    /// `GET /ready`: 200 while the store is reachable and every route has an upstream that may
    /// take new sessions; 503 otherwise. The body says which part is not ready.
    fn ready(&self, front: &HttpFront) -> Response {
        let snap = self.snapshot(front);
        let mut routes = serde_json::Map::new();
        let mut all_routes = true;
        for r in self.live().sorted_routes() {
            let up = (0..r.set.members().len())
                .filter(|&i| r.set.is_available(i))
                .count();
            all_routes &= up > 0;
            routes.insert(
                r.path.clone(),
                serde_json::json!({"upstreams": r.set.members().len(), "available": up}),
            );
        }
        let ready = snap.store_healthy && all_routes && !front.is_shutting_down();
        let body = serde_json::json!({
            "ready": ready,
            "store": snap.store_healthy,
            "shutting_down": front.is_shutting_down(),
            "routes": routes,
        });
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        json(status, Bytes::from(body.to_string()))
    }
}

fn json(status: StatusCode, body: Bytes) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// `/metrics` without its token: `401` with a challenge.
fn metrics_refused() -> Response {
    let e = ProxyError::Unauthorized {
        message: "missing or wrong metrics token (Authorization: Bearer TOKEN)".into(),
        challenge: "Bearer realm=\"shadowcat-metrics\"".into(),
        insufficient_scope: false,
    };
    reply::error(&e, None)
}

fn too_many(l: &Limited) -> Response {
    reply::error(&l.error(), None)
}

/// Each composite route's servers, over its live sessions: in how many each is up, starting,
/// down.
fn server_gauges(
    front: &HttpFront,
    path_of: impl Fn(&str) -> Option<String>,
) -> Vec<crate::metrics::ServerGauge> {
    use shadowcat_proxy::upstream::composite::MemberState;
    let mut by: std::collections::BTreeMap<(String, String), crate::metrics::ServerGauge> =
        std::collections::BTreeMap::new();
    for (_, entry) in front.host().entries() {
        let Some(session) = entry.session() else {
            continue;
        };
        let Some(c) = session.upstream().composite() else {
            continue;
        };
        let route = path_of(&entry.route).unwrap_or_else(|| entry.route.to_string());
        for (server, state) in c.members() {
            let g = by
                .entry((route.clone(), server.to_string()))
                .or_insert_with(|| crate::metrics::ServerGauge {
                    route: route.clone(),
                    server: server.to_string(),
                    ..Default::default()
                });
            match state {
                MemberState::Up => g.up += 1,
                MemberState::Starting => g.starting += 1,
                MemberState::Down => g.down += 1,
            }
        }
    }
    by.into_values().collect()
}

/// The client's JWT, for upstreams that exchange it (an API key is never exchanged).
fn client_token(
    live: &Live,
    req: &http::request::Parts,
    principal: &Principal,
) -> Option<ClientToken> {
    if !live.exchanges || !principal.id.starts_with("jwt:") {
        return None;
    }
    super::auth::bearer(&req.headers)
        .ok()
        .map(|t| ClientToken(Arc::from(t)))
}
