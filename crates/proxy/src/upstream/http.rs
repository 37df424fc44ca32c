//! A Streamable HTTP MCP server as the upstream of one session: POST per client message, JSON or
//! SSE answers streamed event by event, an optional GET stream, DELETE at the end. The upstream's
//! `Mcp-Session-Id` stays here; the client never sees it.

use super::client::{self, ClientError, Response};
use super::credentials::{self, Credentials, SendError};
use super::detect::{self, Transport};
use super::stateless::{self, Stateless};
use super::{Exchange, UpstreamCtx, UpstreamEvent, Via};
use crate::error::ProxyError;
use crate::guard::backoff;
use crate::sync::lock;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use shadowcat_proto::era::{PROTOCOL_VERSION_HEADER, SESSION_ID_HEADER};
use shadowcat_proto::error::{UPSTREAM_ERROR, error_frame};
use shadowcat_proto::sse::SseDecoder;
use shadowcat_proto::{Frame, FrameKind, Message, RequestId};
use shadowcat_tape::redact::url_label;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::codec::Decoder;
use tracing::Instrument;

const LISTEN_IDLE: u8 = 0;
const LISTEN_RUNNING: u8 = 1;
const LISTEN_UNSUPPORTED: u8 = 2;

/// The HTTP upstream of one session.
pub struct HttpUpstream {
    inner: Arc<Inner>,
}

pub(super) struct Inner {
    url: reqwest::Url,
    /// `url` as logs and errors name it (no user info, no query values).
    label: String,
    /// `url`, parsed once for every request.
    uri: Uri,
    headers: HeaderMap,
    /// `Authorization: Bearer …` from a token source (OAuth client credentials).
    credentials: Option<Credentials>,
    session_id: Mutex<Option<HeaderValue>>,
    protocol_version: Mutex<Option<HeaderValue>>,
    listen: AtomicU8,
    events: mpsc::Sender<UpstreamEvent>,
    ctx: UpstreamCtx,
    /// Set when the server serves only 2026-07-28: the proxy plays the session for the client
    /// (era translation, see `stateless/`).
    stateless: OnceLock<Arc<Stateless>>,
}

impl HttpUpstream {
    pub(super) fn new(
        url: &str,
        extra: &[(String, String)],
        ctx: UpstreamCtx,
        events: mpsc::Sender<UpstreamEvent>,
    ) -> Result<Self, ProxyError> {
        Self::with_credentials(url, extra, None, ctx, events)
    }

    /// Like `new`, with a token source for `Authorization: Bearer …`.
    pub(super) fn with_credentials(
        url: &str,
        extra: &[(String, String)],
        credentials: Option<Credentials>,
        ctx: UpstreamCtx,
        events: mpsc::Sender<UpstreamEvent>,
    ) -> Result<Self, ProxyError> {
        let label = url_label(url);
        let url = reqwest::Url::parse(url).map_err(|e| {
            ProxyError::UpstreamConnect(format!("invalid upstream URL `{label}`: {e}"))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ProxyError::UpstreamConnect(format!(
                "upstream URL `{label}` must be http:// or https://"
            )));
        }
        let uri: Uri = url.as_str().parse().map_err(|e| {
            ProxyError::UpstreamConnect(format!("invalid upstream URL `{label}`: {e}"))
        })?;
        let mut headers = HeaderMap::new();
        for (k, v) in extra {
            let name = HeaderName::try_from(k.as_str()).map_err(|e| {
                ProxyError::UpstreamConnect(format!("invalid header name `{k}`: {e}"))
            })?;
            let value = HeaderValue::try_from(v.as_str()).map_err(|e| {
                ProxyError::UpstreamConnect(format!("invalid value for header `{k}`: {e}"))
            })?;
            headers.append(name, value);
        }
        let stateless = OnceLock::new();
        if detect::cached(url.as_str()) == Some(Transport::ModernOnly) {
            let _ = stateless.set(Arc::default());
        }
        Ok(HttpUpstream {
            inner: Arc::new(Inner {
                url,
                label,
                uri,
                headers,
                credentials,
                session_id: Mutex::new(None),
                protocol_version: Mutex::new(None),
                listen: AtomicU8::new(LISTEN_IDLE),
                events,
                ctx,
                stateless,
            }),
        })
    }

    /// The POST for one client frame, whose frames `divert` may send elsewhere than this
    /// upstream's event channel (see [`Divert`]).
    pub(super) fn exchange_diverted(&self, frame: Frame, divert: Arc<dyn Divert>) -> Exchange {
        let inner = self.inner.clone();
        let span = tracing::debug_span!("upstream_post", session = %inner.ctx.session);
        let cancel = inner.ctx.cancel.clone();
        let tracker = inner.ctx.tracker.clone();
        let work = DIVERT.scope(divert, async move {
            tokio::select! {
                _ = post(&inner, frame) => {}
                _ = cancel.cancelled() => {}
            }
        });
        Exchange::new(work.instrument(span), tracker)
    }

    /// The POST for one client frame; its answer arrives as events.
    pub(super) fn exchange(&self, frame: Frame) -> Exchange {
        let inner = self.inner.clone();
        let span = tracing::debug_span!("upstream_post", session = %inner.ctx.session);
        let cancel = inner.ctx.cancel.clone();
        let tracker = inner.ctx.tracker.clone();
        let work = async move {
            tokio::select! {
                _ = post(&inner, frame) => {}
                _ = cancel.cancelled() => {}
            }
        };
        Exchange::new(work.instrument(span), tracker)
    }

    pub(super) fn session_id(&self) -> Option<String> {
        lock(&self.inner.session_id)
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    pub(super) fn set_session_id(&self, id: &str) {
        if let Ok(v) = HeaderValue::try_from(id) {
            *lock(&self.inner.session_id) = Some(v);
        }
    }

    pub(super) fn is_stateless(&self) -> bool {
        self.inner.stateless.get().is_some()
    }

    pub(super) fn set_protocol_version(&self, version: &str) {
        if let Ok(v) = HeaderValue::try_from(version) {
            *lock(&self.inner.protocol_version) = Some(v);
        }
    }

    /// Open the upstream GET stream if it is not open yet.
    pub(super) async fn open_listen(&self) -> Result<bool, ProxyError> {
        let inner = &self.inner;
        if let Some(st) = inner.stateless.get() {
            // A modern-only server: `subscriptions/listen` feeds the client's GET stream.
            return Ok(stateless::listen(inner, st));
        }
        match inner.listen.compare_exchange(
            LISTEN_IDLE,
            LISTEN_RUNNING,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => {}
            Err(LISTEN_UNSUPPORTED) => return Ok(false),
            Err(_) => return Ok(true),
        }
        let build = || inner.request(Method::GET, Bytes::new(), sse_accept);
        let resp = match inner.send(build).await {
            Ok(r) => r,
            Err(e) => {
                inner.listen.store(LISTEN_IDLE, Ordering::Release);
                return Err(e.context("cannot open the upstream GET stream"));
            }
        };
        if resp.status() == StatusCode::METHOD_NOT_ALLOWED {
            inner.listen.store(LISTEN_UNSUPPORTED, Ordering::Release);
            return Ok(false);
        }
        if !resp.status().is_success() || !is_sse(resp.headers()) {
            inner.listen.store(LISTEN_IDLE, Ordering::Release);
            return Err(ProxyError::UpstreamProtocol(format!(
                "upstream answered the GET stream with HTTP {}",
                resp.status()
            )));
        }
        let inner2 = inner.clone();
        let cancel = inner.ctx.cancel.clone();
        inner.ctx.tracker.spawn(async move {
            tokio::select! {
                _ = pump_sse(&inner2, resp, None, Via::Listen) => {}
                _ = cancel.cancelled() => {}
            }
            inner2.listen.store(LISTEN_IDLE, Ordering::Release);
        });
        Ok(true)
    }

    /// DELETE the upstream session (if the upstream gave one) and stop all requests.
    pub(super) async fn shutdown(&self) {
        let inner = &self.inner;
        let has_session = lock(&inner.session_id).is_some();
        if has_session {
            let build = || inner.request(Method::DELETE, Bytes::new(), |_| {});
            let deleted = tokio::time::timeout(Duration::from_secs(5), inner.send(build)).await;
            match deleted {
                Ok(Ok(r)) => tracing::debug!(status = %r.status(), "upstream session deleted"),
                Ok(Err(e)) => tracing::debug!(error = %e, "upstream DELETE failed"),
                Err(_) => tracing::debug!("upstream DELETE timed out"),
            }
        }
        inner.ctx.cancel.cancel();
        let closed = UpstreamEvent::Closed {
            reason: "the session ended".into(),
            exit_code: None,
        };
        let _ = inner
            .events
            .send_timeout(closed, Duration::from_secs(1))
            .await;
    }
}

/// Where the frames of one exchange go instead of its upstream's event channel: a composite
/// session hands the answer to a `tools/call` it routed itself straight to the session, not
/// through its mux task (one task hop less per call).
pub(crate) trait Divert: Send + Sync {
    /// The channel `frame` goes to instead (`None`: the upstream's own). Called once per frame,
    /// right before it is sent.
    fn divert(&self, frame: &Frame) -> Option<mpsc::Sender<UpstreamEvent>>;
}

tokio::task_local! {
    /// The diversion of the exchange running in this task (see [`HttpUpstream::exchange_diverted`]).
    static DIVERT: Arc<dyn Divert>;
}

/// `Accept: text/event-stream` (GET streams).
fn sse_accept(h: &mut HeaderMap) {
    h.insert(
        header::ACCEPT,
        HeaderValue::from_static("text/event-stream"),
    );
}

fn is_sse(h: &HeaderMap) -> bool {
    content_type(h).starts_with("text/event-stream")
}

fn content_type(h: &HeaderMap) -> &str {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

impl Inner {
    pub(super) fn ctx(&self) -> &UpstreamCtx {
        &self.ctx
    }

    /// A request to the upstream URL with the session's headers; `more` adds the request's own.
    pub(super) fn request(
        &self,
        method: Method,
        body: Bytes,
        more: impl FnOnce(&mut HeaderMap),
    ) -> Request<Full<Bytes>> {
        let mut req = client::request(method, &self.uri, &self.headers, body);
        let h = req.headers_mut();
        if let Some(id) = lock(&self.session_id).clone() {
            h.insert(SESSION_ID_HEADER, id);
        }
        // Stateless requests carry their own (2026-07-28) version header.
        if self.stateless.get().is_none()
            && let Some(v) = lock(&self.protocol_version).clone()
        {
            h.insert(PROTOCOL_VERSION_HEADER, v);
        }
        more(h);
        req
    }

    /// Send what `build` makes, with the upstream's credentials (after a `401`, a new token and
    /// one more attempt). The error says what failed.
    pub(super) async fn send(
        &self,
        build: impl Fn() -> Request<Full<Bytes>>,
    ) -> Result<Response, ProxyError> {
        self.describe(self.send_raw(&build).await)
    }

    async fn send_raw(
        &self,
        build: &impl Fn() -> Request<Full<Bytes>>,
    ) -> Result<Response, SendError<ClientError>> {
        let http = &self.ctx.http;
        credentials::authorized(self.credentials.as_ref(), |token| {
            http.send(move || {
                let mut req = build();
                if let Some(t) = &token {
                    req.headers_mut().insert(header::AUTHORIZATION, t.clone());
                }
                req
            })
        })
        .await
    }

    /// What went wrong sending: nothing reached the upstream (safe to retry).
    fn describe(
        &self,
        sent: Result<Response, SendError<ClientError>>,
    ) -> Result<Response, ProxyError> {
        sent.map_err(|e| match e {
            SendError::Credentials(e) => {
                ProxyError::UpstreamConnect(format!("no access token for {}: {e}", self.label))
            }
            SendError::Http(e) => {
                ProxyError::UpstreamConnect(format!("cannot reach upstream {}: {e}", self.label))
            }
        })
    }

    pub(super) async fn deliver(&self, frame: Frame, via: Via) -> bool {
        if let Some(st) = self.stateless.get() {
            // The client's era: maybe nothing, maybe several frames (the server's questions).
            for f in st.to_client(frame) {
                if !self.send_event(f, via.clone()).await {
                    return false;
                }
            }
            return true;
        }
        self.send_event(frame, via).await
    }

    async fn send_event(&self, frame: Frame, via: Via) -> bool {
        // An exchange whose frames may go elsewhere (a composite's direct answers).
        let diverted = DIVERT.try_with(|d| d.divert(&frame)).ok().flatten();
        diverted
            .as_ref()
            .unwrap_or(&self.events)
            .send(UpstreamEvent::Frame {
                frame: Box::new(frame),
                via,
            })
            .await
            .is_ok()
    }

    /// Tell the client its request failed (never leave it waiting in silence).
    pub(super) async fn fail(&self, id: Option<&RequestId>, error: ProxyError) {
        tracing::warn!(%error, "upstream request failed");
        if let Some(id) = id {
            let frame = error_frame(Some(id), UPSTREAM_ERROR, &error.to_string());
            self.deliver(frame, Via::Request(id.clone())).await;
        }
    }
}

async fn post(inner: &Arc<Inner>, frame: Frame) {
    if let Some(st) = inner.stateless.get() {
        return stateless::post(inner, st, frame).await;
    }
    let id = match frame.kind() {
        FrameKind::Request => frame.id().cloned(),
        _ => None,
    };
    let is_init = frame.is_initialize();
    let init = is_init.then(|| frame.clone());
    let idempotent = frame.method().is_some_and(crate::guard::is_idempotent);
    let resp = match send_post(inner, frame.into_raw(), idempotent).await {
        Ok(r) => r,
        Err(e) => return inner.fail(id.as_ref(), e).await,
    };
    let status = resp.status();
    if status == StatusCode::UNAUTHORIZED
        && let Some(c) = &inner.credentials
    {
        let msg = format!(
            "upstream {} refused a fresh access token from {} (HTTP 401): check the client's scope and resource/audience",
            inner.label,
            url_label(c.token_url())
        );
        return inner
            .fail(id.as_ref(), ProxyError::UpstreamConnect(msg))
            .await;
    }
    if is_init
        && status.is_success()
        && let Some(sid) = resp.headers().get(SESSION_ID_HEADER)
    {
        // A copy: a clone would share (and keep alive for the whole session) the connection's
        // read buffer the header was parsed from.
        if let Ok(owned) = HeaderValue::from_bytes(sid.as_bytes()) {
            *lock(&inner.session_id) = Some(owned);
        }
    }
    if status == StatusCode::NOT_FOUND && lock(&inner.session_id).is_some() {
        inner
            .fail(
                id.as_ref(),
                ProxyError::UpstreamClosed("the upstream session has expired (HTTP 404)".into()),
            )
            .await;
        let reason = "the upstream ended its session (HTTP 404)".to_string();
        let _ = inner
            .events
            .send(UpstreamEvent::Closed {
                reason,
                exit_code: None,
            })
            .await;
        return;
    }
    if let Some(init) = init
        && status.is_client_error()
        && !is_sse(resp.headers())
    {
        let body = match read_limited(resp, inner.ctx.options.max_message).await {
            Ok(b) => b,
            Err(msg) => return inner.fail(id.as_ref(), msg).await,
        };
        if detect::is_modern_error(&body) {
            // Era translation: the server serves only 2026-07-28. From now on this upstream
            // plays the session for the client (and the URL is remembered as modern-only).
            tracing::info!(url = %inner.label, "upstream refused initialize with a 2026-07-28 error; translating this session");
            detect::remember(inner.url.as_str(), Transport::ModernOnly);
            let st = inner.stateless.get_or_init(Arc::default);
            return stateless::post(inner, st, init).await;
        }
        if matches!(status.as_u16(), 400 | 404 | 405) {
            // An upstream detected as Streamable HTTP refuses it now: re-probe next session.
            detect::forget(inner.url.as_str());
        }
        let via = id.clone().map(Via::Request).unwrap_or(Via::Unrelated);
        return answer_body(inner, status, body, id.as_ref(), via).await;
    }
    inner.answer(resp, id).await;
}

impl Inner {
    /// Relay the answer to a POST: an event stream event by event, a JSON body as its frames,
    /// anything else as a JSON-RPC error for the request.
    pub(super) async fn answer(self: &Arc<Self>, resp: Response, id: Option<RequestId>) {
        let status = resp.status();
        let via = id.clone().map(Via::Request).unwrap_or(Via::Unrelated);
        if is_sse(resp.headers()) && status.is_success() {
            return pump_sse(self, resp, id.as_ref(), via).await;
        }
        let body = match read_limited(resp, self.ctx.options.max_message).await {
            Ok(b) => b,
            Err(msg) => return self.fail(id.as_ref(), msg).await,
        };
        answer_body(self, status, body, id.as_ref(), via).await
    }
}

async fn answer_body(
    inner: &Arc<Inner>,
    status: StatusCode,
    body: bytes::Bytes,
    id: Option<&RequestId>,
    via: Via,
) {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        if status.is_success() {
            if id.is_some() {
                let msg =
                    format!("upstream answered the request with HTTP {status} and no response");
                inner.fail(id, ProxyError::UpstreamProtocol(msg)).await;
            }
        } else {
            inner
                .fail(
                    id,
                    ProxyError::UpstreamProtocol(format!("upstream answered HTTP {status}")),
                )
                .await;
        }
        return;
    }
    match Message::parse(body.clone()) {
        Ok(msg) => {
            let mut answered = id.is_none();
            for f in msg.into_frames() {
                answered |= f.kind().is_reply() && f.id() == id;
                // A JSON-RPC error with a null id in an error status answers this request.
                let f = if f.kind() == FrameKind::Error && f.id().is_none() && id.is_some() {
                    answered = true;
                    let text = String::from_utf8_lossy(f.raw());
                    error_frame(
                        id,
                        UPSTREAM_ERROR,
                        &format!("upstream HTTP {status}: {text}"),
                    )
                } else {
                    f
                };
                if !inner.deliver(f, via.clone()).await {
                    return;
                }
            }
            if !answered {
                let msg =
                    format!("upstream answered HTTP {status} without a response to the request");
                inner.fail(id, ProxyError::UpstreamProtocol(msg)).await;
            }
        }
        Err(e) => {
            // The body goes to the log only: never to the client (an upstream the client
            // picked could be a service whose answer is a secret).
            let snippet: String = String::from_utf8_lossy(&body).chars().take(200).collect();
            tracing::debug!(upstream = %inner.url, %status, error = %e, body = %snippet, "upstream answer is not JSON-RPC");
            let msg = format!(
                "upstream answered HTTP {status} with a body that is not JSON-RPC ({} bytes)",
                body.len()
            );
            inner.fail(id, ProxyError::UpstreamProtocol(msg)).await;
        }
    }
}

/// POST a client message. With a guard, retried where safe (see [`crate::guard`]): after a
/// connection failure (nothing was delivered), and for idempotent methods after 502/503/504.
async fn send_post(
    inner: &Arc<Inner>,
    body: Bytes,
    idempotent: bool,
) -> Result<Response, ProxyError> {
    let build = || {
        inner.request(Method::POST, body.clone(), |h| {
            client::json_post_headers(h);
            crate::tracecontext::upstream_headers(&body, h);
        })
    };
    let Some(g) = inner.ctx.guard.as_deref() else {
        return inner.send(build).await;
    };
    g.attempt();
    let mut attempt = 0;
    loop {
        let sent = inner.send_raw(&build).await;
        let why = match &sent {
            Err(SendError::Http(e)) if e.is_connect() => format!("cannot connect: {e}"),
            Ok(r) if idempotent && matches!(r.status().as_u16(), 502..=504) => {
                format!("HTTP {}", r.status())
            }
            _ => return inner.describe(sent),
        };
        let Some(delay) = g.retry_after(attempt) else {
            return inner.describe(sent);
        };
        tracing::info!(upstream = %inner.label, attempt = attempt + 1, %why, "retrying the upstream request");
        tokio::time::sleep(delay).await;
        attempt += 1;
    }
}

async fn read_limited(resp: Response, max: usize) -> Result<bytes::Bytes, ProxyError> {
    let mut body = BytesMut::new();
    let mut stream = resp.into_body();
    while let Some(frame) = stream.frame().await {
        let frame = frame.map_err(|e| {
            ProxyError::UpstreamClosed(format!("reading the upstream response failed: {e}"))
        })?;
        let Ok(chunk) = frame.into_data() else {
            continue; // trailers
        };
        if body.len() + chunk.len() > max {
            return Err(ProxyError::UpstreamProtocol(format!(
                "upstream response exceeds the limit of {max} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Relay an upstream SSE body event by event (never buffered whole). For a POST stream, `id` is
/// the request it answers: if the stream breaks before that response, the proxy resumes it with
/// `GET` + the upstream's own `Last-Event-ID` (jittered exponential backoff, or the server's
/// `retry:` hint), skipping events it already relayed; if the upstream cannot resume, the client
/// gets a JSON-RPC error — never silence.
async fn pump_sse(inner: &Arc<Inner>, resp: Response, id: Option<&RequestId>, via: Via) {
    let mut st = SseProgress {
        answered: id.is_none(),
        last_id: None,
        retry: None,
        seen: HashSet::new(),
        resumed: false,
    };
    let mut resp = resp;
    loop {
        let reason = match relay_events(inner, resp, id, &via, &mut st).await {
            Ok(()) if st.answered => return,
            Ok(()) => "upstream stream ended before the response arrived".to_string(),
            Err(Stop::ClientGone) => return,
            Err(Stop::Broken(why)) if st.answered => {
                tracing::debug!(%why, "upstream stream broke after its response");
                return;
            }
            Err(Stop::Broken(why)) => why,
        };
        let Some(last) = st.last_id.clone() else {
            return inner.fail(id, ProxyError::UpstreamClosed(reason)).await;
        };
        match reconnect(inner, &last, st.retry).await {
            Ok(r) => {
                tracing::info!(last_event_id = %last, "resumed the upstream stream");
                st.resumed = true;
                resp = r;
            }
            Err(why) => return inner.fail(id, why.context(&reason)).await,
        }
    }
}

struct SseProgress {
    answered: bool,
    last_id: Option<String>,
    retry: Option<Duration>,
    seen: HashSet<String>,
    resumed: bool,
}

enum Stop {
    ClientGone,
    Broken(String),
}

async fn relay_events(
    inner: &Arc<Inner>,
    resp: Response,
    id: Option<&RequestId>,
    via: &Via,
    st: &mut SseProgress,
) -> Result<(), Stop> {
    let mut decoder = SseDecoder::new(inner.ctx.options.max_message);
    let mut buf = BytesMut::new();
    let mut stream = resp.into_body();
    // Only response streams (a request waits on them) have an idle limit.
    let idle = match via {
        Via::Request(_) => inner.ctx.guard.as_ref().and_then(|g| g.sse_idle_timeout()),
        _ => None,
    };
    loop {
        let event = match decoder.decode(&mut buf) {
            Ok(Some(ev)) => ev,
            Ok(None) => match next_chunk(&mut stream, idle).await {
                Ok(Some(Ok(frame))) => {
                    if let Ok(chunk) = frame.into_data() {
                        buf.extend_from_slice(&chunk);
                    }
                    continue;
                }
                Ok(Some(Err(e))) => {
                    return Err(Stop::Broken(format!("upstream stream broke: {e}")));
                }
                Ok(None) => return Ok(()),
                Err(after) => {
                    return Err(Stop::Broken(format!(
                        "upstream stream idle: no event for {} s",
                        after.as_secs_f64()
                    )));
                }
            },
            Err(e) => {
                return Err(Stop::Broken(format!(
                    "upstream sent an invalid event stream: {e}"
                )));
            }
        };
        if let Some(ms) = event.retry {
            st.retry = Some(Duration::from_millis(ms));
        }
        let eid = event.id.filter(|e| !e.is_empty());
        if let Some(e) = &eid {
            st.last_id = Some(e.clone());
        }
        let Some(data) = event.data.filter(|d| !d.trim().is_empty()) else {
            continue; // priming events, retry hints
        };
        // Some servers reuse a priming event's id for the next message, so only messages count.
        if let Some(e) = eid {
            let fresh = st.seen.insert(e);
            if !fresh && st.resumed {
                continue; // replayed by the upstream after a reconnect: already relayed
            }
        }
        if event.event.as_deref().is_some_and(|e| e != "message") {
            continue;
        }
        match Message::parse(bytes::Bytes::from(data)) {
            Ok(msg) => {
                for f in msg.into_frames() {
                    st.answered |= f.kind().is_reply() && f.id() == id;
                    if !inner.deliver(f, via.clone()).await {
                        return Err(Stop::ClientGone);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "upstream SSE event is not JSON-RPC; ignored"),
        }
    }
}

/// The next frame of a body, or `Err(limit)` when none came within `limit`.
async fn next_chunk<B: http_body::Body + Unpin>(
    body: &mut B,
    limit: Option<Duration>,
) -> Result<Option<Result<http_body::Frame<B::Data>, B::Error>>, Duration> {
    match limit {
        None => Ok(body.frame().await),
        Some(l) => tokio::time::timeout(l, body.frame()).await.map_err(|_| l),
    }
}

/// GET + Last-Event-ID with jittered exponential backoff. The error says why resuming failed.
async fn reconnect(
    inner: &Arc<Inner>,
    last: &str,
    hint: Option<Duration>,
) -> Result<Response, ProxyError> {
    let o = &inner.ctx.options;
    for attempt in 0..o.reconnect_attempts {
        let delay = match hint {
            Some(h) if attempt == 0 => h,
            _ => backoff(o.reconnect_base, o.reconnect_cap, attempt),
        };
        tokio::time::sleep(delay).await;
        let last_id = HeaderValue::from_str(last).ok();
        let build = || {
            inner.request(Method::GET, Bytes::new(), |h| {
                sse_accept(h);
                if let Some(v) = &last_id {
                    h.insert("last-event-id", v.clone());
                }
            })
        };
        match inner.send(build).await {
            Ok(r) if r.status().is_success() && is_sse(r.headers()) => return Ok(r),
            Ok(r) if r.status().is_client_error() => {
                return Err(ProxyError::UpstreamClosed(format!(
                    "the upstream cannot resume it (HTTP {} to GET with Last-Event-ID)",
                    r.status()
                )));
            }
            Ok(r) => {
                tracing::debug!(status = %r.status(), attempt, "upstream resume attempt failed")
            }
            Err(e) => tracing::debug!(error = %e, attempt, "upstream resume attempt failed"),
        }
    }
    Err(ProxyError::UpstreamClosed(format!(
        "resuming it failed after {} attempts",
        o.reconnect_attempts
    )))
}
