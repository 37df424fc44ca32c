//! The legacy HTTP+SSE front (protocol 2024-11-05), served on the HTTP front's listener next to
//! Streamable HTTP, for the same targets.
//!
//! * `GET /sse` (default target) or `GET /servers/NAME/sse` opens a session: the proxy creates
//!   the session and its upstream (the route's target, as for Streamable HTTP), answers with an
//!   event stream whose first event is `event: endpoint` with `data: /message?sessionId=<id>`
//!   (`/servers/NAME/message?…` on a named route), then relays every server message as
//!   `event: message`. A keep-alive comment goes out every 15 s of silence.
//! * `POST /message?sessionId=<id>` (JSON body, one message) answers `202 Accepted` (body
//!   `Accepted`); the reply travels on the event stream. Errors, each with a JSON-RPC body:
//!   `400` no `sessionId`, malformed JSON (-32700) or not one JSON-RPC message (-32600, batches
//!   included: they came with 2025-03-26), a request whose id is still in flight in the session
//!   (-32600); `404` unknown or ended session (or one of another
//!   route); `413` body over the limit; `415` not JSON. `Origin` is checked by the HTTP front
//!   for every request (403).
//! * Closing the event stream ends the session: its upstream is shut down (the child killed,
//!   the HTTP upstream's session deleted). A dying upstream answers each request in flight with
//!   a JSON-RPC error on the stream, then the stream ends.
//!
//! Sessions are kept in a small registry of their own rather than the Streamable front's: a
//! legacy session has exactly one stream and no resumption, so the outbox (which routes replies
//! to the POST that carried the request and logs every event for `Last-Event-ID`) does not
//! apply, and logging each event in the store would be pure cost. They count against the
//! session limit together with the Streamable front's sessions, and are recorded in the same
//! store (route `sse:` + the target name, so a legacy session id is unknown to `/mcp`).
//!
//! In gateway mode the endpoints of each route (`/sse` + `/message` for the route `/mcp`,
//! `/servers/NAME/sse` + `/servers/NAME/message` for `/servers/NAME/mcp`) are admitted like the
//! route (authentication, the route's scopes, rate limits); the route's upstream set places
//! the session and binds it to the principal, and a `POST /message` of another principal is
//! answered 404. A legacy session lives on the replica that holds its stream; `POST /message`
//! for a session of another replica is answered 404.

mod session;

pub(crate) use session::frames_body;

use crate::error::ProxyError;
use crate::front::http::{HttpFront, HttpFrontConfig, Policy, Target};
use crate::session::{Host, Kind, Sent};
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use http_body_util::BodyExt;
use session::LegacySession;
use shadowcat_proto::error::{INVALID_REQUEST, error_frame};
use shadowcat_proto::{Frame, FrameError, FrameKind};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Capacity of a session's event stream channel.
const STREAM_CAPACITY: usize = 32;
/// A comment is sent on a silent event stream this often (keeps intermediaries and client read
/// timeouts from closing it, and finds a client that went away).
pub(crate) const KEEPALIVE: Duration = Duration::from_secs(15);

/// Which legacy endpoint a request addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// The SSE endpoint of a route (`""` = the default target, else the target name).
    Sse(Arc<str>),
    /// The message endpoint of a route.
    Message(Arc<str>),
}

impl Endpoint {
    /// The route key (`""` or the target name) of a legacy endpoint path.
    pub fn route_of(path: &str) -> Option<&str> {
        let (route, leaf) = match path.strip_prefix("/servers/") {
            Some(rest) => {
                let (name, leaf) = rest.rsplit_once('/')?;
                if name.is_empty() || name.contains('/') {
                    return None;
                }
                (name, leaf)
            }
            None => ("", path.strip_prefix('/')?),
        };
        matches!(leaf, "sse" | "message").then_some(route)
    }

    /// Parse a request path: `/sse`, `/message`, `/servers/NAME/sse`, `/servers/NAME/message`.
    pub fn parse(path: &str) -> Option<Endpoint> {
        let route = Arc::from(Self::route_of(path)?);
        if path.ends_with("/sse") {
            Some(Endpoint::Sse(route))
        } else {
            Some(Endpoint::Message(route))
        }
    }
}

/// The path prefix of a route's endpoints.
fn route_prefix(route: &str) -> String {
    if route.is_empty() {
        String::new()
    } else {
        format!("/servers/{route}")
    }
}

/// The route of a legacy session's record: `sse:` + the route key (as `abs:` marks absolute-URI
/// routes). Streamable HTTP requests never match it, so a legacy session id is unknown there.
fn record_route(route: &str) -> String {
    format!("sse:{route}")
}

/// The HTTP+SSE front of one HTTP front.
pub struct LegacyFront {
    shared: Arc<Shared>,
}

struct Shared {
    sessions: Mutex<HashMap<Arc<str>, Arc<LegacySession>>>,
    allow_absolute_uri: bool,
    /// With a policy (the gateway): routes, placement and principals come from it.
    policy: Option<Arc<dyn Policy>>,
    max_body: usize,
    host: Arc<Host>,
}

impl LegacyFront {
    /// The legacy front of an HTTP front with this configuration; it creates sessions through
    /// the front (its host, hooks, upstream context) and shares its host's records.
    pub fn new(config: &HttpFrontConfig, host: Arc<Host>) -> Self {
        LegacyFront {
            shared: Arc::new(Shared {
                sessions: Mutex::new(HashMap::new()),
                allow_absolute_uri: config.allow_absolute_uri,
                policy: config.policy.clone(),
                max_body: config.max_body,
                host,
            }),
        }
    }

    /// The legacy endpoint `req` addresses, if any. Absolute-form URIs that the front proxies
    /// (`--allow-absolute-uri`) are never ours.
    pub fn endpoint(&self, req: &Request) -> Option<Endpoint> {
        let uri = req.uri();
        if self.shared.allow_absolute_uri && uri.scheme().is_some() && uri.authority().is_some() {
            return None;
        }
        Endpoint::parse(uri.path())
    }

    /// Live legacy sessions.
    pub fn len(&self) -> usize {
        self.shared.lock().len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Serve a request for a legacy endpoint (Origin already checked; in gateway mode, admitted).
    pub async fn handle(
        &self,
        front: &HttpFront,
        endpoint: Endpoint,
        req: Request,
    ) -> Result<Response, ProxyError> {
        match (endpoint, req.method()) {
            (Endpoint::Sse(route), &Method::GET) => self.shared.open(front, route, req).await,
            (Endpoint::Message(route), &Method::POST) => self.shared.message(route, req).await,
            (Endpoint::Sse(_), _) => Ok(method_not_allowed("GET")),
            (Endpoint::Message(_), _) => Ok(method_not_allowed("POST")),
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Arc<LegacySession>>> {
        crate::sync::lock(&self.sessions)
    }

    /// The front's configured target for `route` (`""`: the default one).
    fn target(front: &HttpFront, route: &str) -> Result<Target, ProxyError> {
        front.fixed_target(route).cloned().ok_or_else(|| {
            let msg = if route.is_empty() {
                "no default target is configured; use /servers/NAME/sse".to_string()
            } else {
                format!("no target named `{route}`")
            };
            ProxyError::bad(crate::error::Refusal::NotFound, INVALID_REQUEST, msg)
        })
    }

    /// `GET …/sse`: create the session and its upstream, answer with its event stream.
    async fn open(
        self: &Arc<Self>,
        front: &HttpFront,
        route: Arc<str>,
        req: Request,
    ) -> Result<Response, ProxyError> {
        accepts_sse(req.headers())?;
        // With a policy (the gateway): the route (and principal) of this request; else the
        // configured target. The record exists from the stream's opening; `initialize` fills in
        // the client.
        let target = match &self.policy {
            Some(policy) => policy.target(&req)?,
            None => Self::target(front, &route)?,
        };
        let created = front
            .create(&target, Kind::Legacy, &record_route(&route), None)
            .await?;
        let (core, events) = (created.session, created.events);
        let id = core.id().clone();
        let upstream = core.spec().describe();
        let (session, rx) = LegacySession::new(core, route.clone(), STREAM_CAPACITY);
        self.lock().insert(id.clone(), session.clone());
        tracing::info!(%upstream, "legacy HTTP+SSE session created");
        let endpoint = format!("{}/message?sessionId={id}", route_prefix(&route));
        let body = session::body(&endpoint, rx, KEEPALIVE, session.stream_guard());
        let shared = self.clone();
        let span = tracing::info_span!("session", id = %id);
        let tracker = session.core().tracker().clone();
        tracker.spawn(tracing::Instrument::instrument(
            async move {
                session.pump(events).await;
                shared.ended(&session).await;
            },
            span,
        ));
        Ok(sse_response(body))
    }

    /// The session is over (its pump returned): forget it, stop its upstream (which ends its
    /// record).
    async fn ended(&self, s: &Arc<LegacySession>) {
        let id = s.core().id().clone();
        self.lock().remove(&id);
        s.core().shutdown().await;
        tracing::info!(session = %id, "legacy HTTP+SSE session ended");
    }

    /// `POST …/message?sessionId=…`: hand the message to the session; 202.
    async fn message(&self, route: Arc<str>, req: Request) -> Result<Response, ProxyError> {
        crate::front::http::checks::content_type(req.headers())?;
        let id = session_param(req.uri().query().unwrap_or("")).ok_or_else(|| {
            bad("the message endpoint needs `?sessionId=` (from the `endpoint` event)")
        })?;
        tracing::Span::current().record("session", id.as_str());
        let grant = match &self.policy {
            Some(policy) => {
                // A session answers only to the principal that opened it.
                let store = self.host.records().store();
                let placer = policy.target(&req)?.placer;
                placer.check_session(&id, &**store).await?;
                placer.grant()
            }
            None => None,
        };
        let session = self
            .lock()
            .get(id.as_str())
            .filter(|s| s.route() == &*route)
            .cloned()
            .ok_or(ProxyError::SessionNotFound)?;
        // The policy's hooks see what this request's credentials grant.
        if grant.is_some() {
            session.core().set_grant(grant);
        }
        let raw = read_body(req.into_body(), self.max_body).await?;
        let frame = Frame::parse_single(raw)?;
        if frame.is_initialize() {
            session.core().record_client(&frame).await;
        }
        let initialized = frame.method() == Some("notifications/initialized");
        let request = frame
            .id()
            .cloned()
            .filter(|_| frame.kind() == FrameKind::Request);
        match session.core().from_client(frame).await {
            Ok(Sent::Forwarded) | Ok(Sent::Dropped) => {}
            Ok(Sent::Replied(answer)) => {
                session.send(answer).await;
            }
            // Its id is taken by a request still in flight: refused on this POST (an error on
            // the stream would read as the answer to the first one).
            Err(e @ ProxyError::DuplicateRequestId(_)) => return Err(e),
            Err(e) => match request {
                Some(rid) => {
                    let err = error_frame(Some(&rid), e.jsonrpc_code(), &e.to_string());
                    session.send(err).await;
                }
                None => return Err(e),
            },
        }
        if initialized {
            session.core().listen_in_background();
        }
        Ok(accepted())
    }
}

/// The session id of a message URI: `sessionId` (what we issue) or `session_id`.
fn session_param(query: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (matches!(k, "sessionId" | "session_id") && !v.is_empty()).then(|| v.to_string())
    })
}

fn bad(msg: &str) -> ProxyError {
    ProxyError::bad(crate::error::Refusal::Malformed, INVALID_REQUEST, msg)
}

/// The client must accept an event stream if it says what it accepts (406 otherwise).
fn accepts_sse(headers: &HeaderMap) -> Result<(), ProxyError> {
    let mut values = headers.get_all(header::ACCEPT).iter().peekable();
    if values.peek().is_none() {
        return Ok(());
    }
    let ok = values.any(|v| {
        v.to_str().unwrap_or("").split(',').any(|part| {
            let media = part.split(';').next().unwrap_or("").trim();
            ["text/event-stream", "text/*", "*/*"]
                .iter()
                .any(|m| media.eq_ignore_ascii_case(m))
        })
    });
    if ok {
        return Ok(());
    }
    Err(ProxyError::bad(
        crate::error::Refusal::NotAcceptable,
        INVALID_REQUEST,
        "the SSE endpoint answers with `text/event-stream`; send `Accept: text/event-stream`",
    ))
}

async fn read_body(body: Body, max: usize) -> Result<Bytes, ProxyError> {
    let mut out = BytesMut::new();
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(crate::front::conn::body_error)?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > max {
                return Err(ProxyError::Frame(FrameError::TooLarge {
                    size: out.len() + data.len(),
                    limit: max,
                }));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}

/// `202 Accepted` with the body `Accepted`, as HTTP+SSE servers answer.
fn accepted() -> Response {
    let mut r = Response::new(Body::from("Accepted"));
    *r.status_mut() = StatusCode::ACCEPTED;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn method_not_allowed(allow: &'static str) -> Response {
    let e = ProxyError::MethodNotAllowed {
        allow,
        message: format!("this HTTP+SSE endpoint only takes {allow}"),
    };
    crate::front::http::reply::error(&e, None)
}

fn sse_response(body: Body) -> Response {
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_by_path() {
        let sse = |r: &str| Some(Endpoint::Sse(Arc::from(r)));
        let msg = |r: &str| Some(Endpoint::Message(Arc::from(r)));
        assert_eq!(Endpoint::parse("/sse"), sse(""));
        assert_eq!(Endpoint::parse("/message"), msg(""));
        assert_eq!(Endpoint::parse("/servers/docs/sse"), sse("docs"));
        assert_eq!(Endpoint::parse("/servers/docs/message"), msg("docs"));
        for other in [
            "/mcp",
            "/servers/docs/mcp",
            "/servers//sse",
            "/servers/a/b/sse",
            "/sse/",
            "/messages",
            "sse",
            "/health",
        ] {
            assert_eq!(Endpoint::parse(other), None, "{other}");
        }
        assert_eq!(route_prefix(""), "");
        assert_eq!(route_prefix("docs"), "/servers/docs");
        assert_eq!(record_route(""), "sse:");
        assert_eq!(record_route("docs"), "sse:docs");
    }

    #[test]
    fn session_ids_come_from_the_query() {
        assert_eq!(session_param("sessionId=ab12"), Some("ab12".into()));
        assert_eq!(session_param("x=1&session_id=cd"), Some("cd".into()));
        assert_eq!(session_param("sessionId="), None);
        assert_eq!(session_param(""), None);
    }

    #[test]
    fn accept_is_checked_only_when_sent() {
        let mut h = HeaderMap::new();
        assert!(accepts_sse(&h).is_ok());
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        assert!(accepts_sse(&h).is_ok());
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        assert_eq!(accepts_sse(&h).unwrap_err().http_status(), 406);
    }
}
