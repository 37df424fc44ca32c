//! A legacy HTTP+SSE MCP server (protocol 2024-11-05) as the upstream of one session.
//!
//! `GET` the SSE URL (`Accept: text/event-stream`) and wait for the `endpoint` event: its data
//! is the URI (relative to the SSE URL, same origin required) that every client message is
//! `POST`ed to. The server answers each POST with `202 Accepted`; everything it sends — replies
//! included — arrives on the one event stream as `event: message`.
//!
//! * Client frames are POSTed one at a time, in order, from a bounded queue (`send` waits when
//!   it is full). Order matters on this transport (`notifications/initialized` before the next
//!   request, `notifications/cancelled` after its request) and the 202 comes back at once.
//! * A POST the server refuses or that cannot be sent turns its request into a JSON-RPC error.
//!   `404` means the server forgot the session: the upstream reports `Closed`.
//! * Server frames are delivered as [`Via::Unrelated`] (the stream carries no request relation).
//! * The end or break of the event stream is `Closed`; the session then answers every request
//!   still in flight with an error. `shutdown` closes the stream, which ends the server's session.

use super::{UpstreamCtx, UpstreamEvent, Via};
use crate::error::ProxyError;
use crate::sync::lock;
use bytes::BytesMut;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use shadowcat_proto::error::{UPSTREAM_ERROR, error_frame};
use shadowcat_proto::sse::{SseDecoder, SseError, SseEvent};
use shadowcat_proto::{Frame, FrameKind, Message, RequestId};
use shadowcat_tape::redact::url_label;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::codec::Decoder;
use tracing::Instrument;

/// How long the server may take to send its `endpoint` event.
const ENDPOINT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one POST may take to be answered (the server answers 202 before doing the work).
const POST_TIMEOUT: Duration = Duration::from_secs(30);
/// Most bytes read (and discarded) of a POST's answer; an error body is quoted in the error.
const POST_BODY_LIMIT: usize = 64 * 1024;

/// The HTTP+SSE upstream of one session.
pub struct SseUpstream {
    inner: Arc<Inner>,
    queue: mpsc::Sender<Frame>,
}

struct Inner {
    sse_url: reqwest::Url,
    endpoint: Mutex<reqwest::Url>,
    headers: HeaderMap,
    events: mpsc::Sender<UpstreamEvent>,
    ctx: UpstreamCtx,
}

impl SseUpstream {
    /// Open the event stream and wait for the `endpoint` event. Fails when the URL does not
    /// serve an HTTP+SSE event stream that starts with `endpoint` (this is also the detection
    /// test of `upstream::detect`).
    pub(super) async fn connect(
        url: &str,
        extra: &[(String, String)],
        ctx: UpstreamCtx,
        events: mpsc::Sender<UpstreamEvent>,
    ) -> Result<Self, ProxyError> {
        let sse_url = parse_url(url)?;
        let label = url_label(url);
        let headers = header_map(extra)?;
        let resp = ctx
            .http
            .client()
            .get(sse_url.clone())
            .headers(headers.clone())
            .header(header::ACCEPT, "text/event-stream")
            .send()
            .await
            .map_err(|e| {
                let e = e.without_url();
                ProxyError::UpstreamConnect(format!("cannot reach upstream {label}: {e}"))
            })?;
        let status = resp.status();
        if !status.is_success() {
            return Err(ProxyError::UpstreamConnect(format!(
                "upstream {label} answered the HTTP+SSE GET with HTTP {status}"
            )));
        }
        if !is_sse(resp.headers()) {
            return Err(ProxyError::UpstreamProtocol(format!(
                "upstream {label} answered the HTTP+SSE GET with `{}`, not an event stream",
                content_type(resp.headers())
            )));
        }
        let mut stream = EventStream::new(resp, ctx.options.max_message);
        let first = tokio::time::timeout(ENDPOINT_TIMEOUT, stream.next())
            .await
            .map_err(|_| {
                ProxyError::UpstreamProtocol(format!(
                    "upstream {label} sent no `endpoint` event within {}s",
                    ENDPOINT_TIMEOUT.as_secs()
                ))
            })?;
        let endpoint = match first {
            Ok(Some(ev)) if ev.event.as_deref() == Some("endpoint") => {
                resolve_endpoint(&sse_url, ev.data.as_deref().unwrap_or(""))?
            }
            Ok(Some(ev)) => {
                return Err(ProxyError::UpstreamProtocol(format!(
                    "upstream {label} did not start its event stream with `event: endpoint` \
                     (got `{}`): not an HTTP+SSE server",
                    ev.event.as_deref().unwrap_or("message")
                )));
            }
            Ok(None) => {
                return Err(ProxyError::UpstreamProtocol(format!(
                    "upstream {label} closed its event stream before sending `endpoint`"
                )));
            }
            Err(why) => return Err(why.context(&label)),
        };
        let span = tracing::info_span!("upstream", session = %ctx.session);
        tracing::info!(parent: &span, sse_url = %label, endpoint = %url_label(endpoint.as_str()), "connected to an HTTP+SSE upstream");
        let (queue, rx) = mpsc::channel(ctx.options.channel_capacity);
        let inner = Arc::new(Inner {
            sse_url,
            endpoint: Mutex::new(endpoint),
            headers,
            events,
            ctx,
        });
        let cancel = inner.ctx.cancel.clone();
        let reader = inner.clone();
        inner.ctx.tracker.spawn(
            async move {
                tokio::select! {
                    _ = read_events(&reader, stream) => {}
                    _ = cancel.cancelled() => {}
                }
            }
            .instrument(span.clone()),
        );
        let cancel = inner.ctx.cancel.clone();
        let writer = inner.clone();
        inner.ctx.tracker.spawn(
            async move {
                tokio::select! {
                    _ = write_posts(&writer, rx) => {}
                    _ = cancel.cancelled() => {}
                }
            }
            .instrument(span),
        );
        Ok(SseUpstream { inner, queue })
    }

    /// Queue one client frame for its POST (waits while the queue is full: backpressure).
    pub(super) async fn send(&self, frame: Frame) -> Result<(), ProxyError> {
        self.queue.send(frame).await.map_err(|_| {
            ProxyError::UpstreamClosed("the upstream HTTP+SSE session has ended".into())
        })
    }

    /// Close the event stream (the server ends its session) and stop posting.
    pub(super) async fn shutdown(&self) {
        let inner = &self.inner;
        inner.ctx.cancel.cancel();
        tracing::debug!(url = %url_label(inner.sse_url.as_str()), "closed the upstream HTTP+SSE stream");
        let closed = UpstreamEvent::Closed {
            reason: "the session ended".into(),
            exit_code: None,
        };
        let _ = inner
            .events
            .send_timeout(closed, Duration::from_secs(1))
            .await;
    }

    /// The URI the server told us to POST to.
    pub fn endpoint(&self) -> String {
        lock(&self.inner.endpoint).to_string()
    }
}

pub(super) fn parse_url(url: &str) -> Result<reqwest::Url, ProxyError> {
    let label = url_label(url);
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| ProxyError::UpstreamConnect(format!("invalid upstream URL `{label}`: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(ProxyError::UpstreamConnect(format!(
            "upstream URL `{label}` must be http:// or https://"
        )));
    }
    Ok(parsed)
}

pub(super) fn header_map(extra: &[(String, String)]) -> Result<HeaderMap, ProxyError> {
    let mut headers = HeaderMap::new();
    for (k, v) in extra {
        let name = HeaderName::try_from(k.as_str())
            .map_err(|e| ProxyError::UpstreamConnect(format!("invalid header name `{k}`: {e}")))?;
        let value = HeaderValue::try_from(v.as_str()).map_err(|e| {
            ProxyError::UpstreamConnect(format!("invalid value for header `{k}`: {e}"))
        })?;
        headers.append(name, value);
    }
    Ok(headers)
}

fn content_type(h: &HeaderMap) -> &str {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn is_sse(h: &HeaderMap) -> bool {
    content_type(h).starts_with("text/event-stream")
}

/// The POST URI of an `endpoint` event, resolved against the SSE URL. It must stay on the SSE
/// URL's origin: client messages (and the configured upstream headers, credentials included)
/// are never sent anywhere else.
fn resolve_endpoint(sse_url: &reqwest::Url, data: &str) -> Result<reqwest::Url, ProxyError> {
    let data = data.trim();
    let label = url_label(sse_url.as_str());
    if data.is_empty() {
        return Err(ProxyError::UpstreamProtocol(format!(
            "upstream {label} sent an empty `endpoint` event"
        )));
    }
    let endpoint = sse_url.join(data).map_err(|e| {
        ProxyError::UpstreamProtocol(format!(
            "upstream {label} sent an invalid endpoint `{}`: {e}",
            url_label(data)
        ))
    })?;
    let same_origin = endpoint.scheme() == sse_url.scheme()
        && endpoint.host_str() == sse_url.host_str()
        && endpoint.port_or_known_default() == sse_url.port_or_known_default();
    if !same_origin {
        return Err(ProxyError::UpstreamProtocol(format!(
            "upstream {label} sent an endpoint on another origin ({}); refused",
            url_label(endpoint.as_str())
        )));
    }
    Ok(endpoint)
}

/// An SSE response body decoded event by event.
struct EventStream {
    resp: reqwest::Response,
    decoder: SseDecoder,
    buf: BytesMut,
}

impl EventStream {
    fn new(resp: reqwest::Response, max_event: usize) -> Self {
        EventStream {
            resp,
            decoder: SseDecoder::new(max_event),
            buf: BytesMut::new(),
        }
    }

    /// The next event; `None` at the end of the stream; an error when the stream broke.
    /// Oversized and non-UTF-8 events are skipped (logged), the stream goes on.
    async fn next(&mut self) -> Result<Option<SseEvent>, ProxyError> {
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(ev)) => return Ok(Some(ev)),
                Ok(None) => {}
                Err(e @ (SseError::EventTooLarge { .. } | SseError::InvalidUtf8)) => {
                    tracing::error!(error = %e, "dropped an upstream SSE event");
                    continue;
                }
                Err(SseError::Io(e)) => {
                    return Err(ProxyError::UpstreamClosed(format!(
                        "upstream event stream failed: {e}"
                    )));
                }
            }
            match self.resp.chunk().await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk),
                Ok(None) => return Ok(None),
                Err(e) => {
                    return Err(ProxyError::UpstreamClosed(format!(
                        "upstream event stream broke: {e}"
                    )));
                }
            }
        }
    }
}

/// Relay `message` events until the stream ends, then report `Closed`.
async fn read_events(inner: &Arc<Inner>, mut stream: EventStream) {
    let reason = loop {
        let ev = match stream.next().await {
            Ok(Some(ev)) => ev,
            Ok(None) => break "the upstream closed its HTTP+SSE event stream".to_string(),
            Err(why) => break why.to_string(),
        };
        match ev.event.as_deref() {
            None | Some("message") => {}
            Some("endpoint") => {
                match resolve_endpoint(&inner.sse_url, ev.data.as_deref().unwrap_or("")) {
                    Ok(url) => {
                        tracing::info!(endpoint = %url_label(url.as_str()), "upstream moved its POST endpoint");
                        *lock(&inner.endpoint) = url;
                    }
                    Err(why) => tracing::warn!(%why, "ignored a new `endpoint` event"),
                }
                continue;
            }
            Some(other) => {
                tracing::debug!(
                    event = other,
                    "ignored an upstream SSE event of unknown type"
                );
                continue;
            }
        }
        let Some(data) = ev.data.filter(|d| !d.trim().is_empty()) else {
            continue; // keep-alive
        };
        match Message::parse(bytes::Bytes::from(data)) {
            Ok(msg) => {
                for frame in msg.into_frames() {
                    let ev = UpstreamEvent::Frame {
                        frame: Box::new(frame),
                        via: Via::Unrelated,
                    };
                    if inner.events.send(ev).await.is_err() {
                        return; // the session is gone
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "upstream SSE message is not JSON-RPC; ignored"),
        }
    };
    tracing::info!(%reason, "upstream HTTP+SSE stream ended");
    let _ = inner
        .events
        .send(UpstreamEvent::Closed {
            reason,
            exit_code: None,
        })
        .await;
}

/// POST queued client frames one at a time, in order.
async fn write_posts(inner: &Arc<Inner>, mut rx: mpsc::Receiver<Frame>) {
    while let Some(frame) = rx.recv().await {
        if !post(inner, frame).await {
            return;
        }
    }
}

/// POST one frame. False when the upstream session is gone (no point in posting more).
async fn post(inner: &Arc<Inner>, frame: Frame) -> bool {
    let id = match frame.kind() {
        FrameKind::Request => frame.id().cloned(),
        _ => None,
    };
    let endpoint = lock(&inner.endpoint).clone();
    let req = inner
        .ctx
        .http
        .client()
        .post(endpoint.clone())
        .headers(inner.headers.clone())
        .header(header::CONTENT_TYPE, "application/json")
        .timeout(POST_TIMEOUT)
        .body(frame.into_raw());
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            let msg = format!(
                "cannot POST to upstream {}: {}",
                url_label(endpoint.as_str()),
                e.without_url()
            );
            return fail(inner, id.as_ref(), msg).await;
        }
    };
    let status = resp.status();
    let body = read_some(resp).await;
    if status.is_success() {
        return true;
    }
    // The body goes to the log only, never to the client.
    let snippet: String = String::from_utf8_lossy(&body)
        .trim()
        .chars()
        .take(200)
        .collect();
    tracing::debug!(%status, body = %snippet, "upstream refused a message POST");
    let msg = format!("upstream answered the message POST with HTTP {status}");
    if status == StatusCode::NOT_FOUND {
        fail(inner, id.as_ref(), msg).await;
        let reason = "the upstream ended its HTTP+SSE session (HTTP 404)".to_string();
        let _ = inner
            .events
            .send(UpstreamEvent::Closed {
                reason,
                exit_code: None,
            })
            .await;
        return false;
    }
    fail(inner, id.as_ref(), msg).await
}

/// Read (at most [`POST_BODY_LIMIT`] of) a POST's answer so the connection can be reused.
pub(super) async fn read_some(mut resp: reqwest::Response) -> BytesMut {
    let mut body = BytesMut::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        if body.len() + chunk.len() > POST_BODY_LIMIT {
            break;
        }
        body.extend_from_slice(&chunk);
    }
    body
}

/// Tell the client its request failed (never leave it waiting in silence). True while the
/// session still listens.
async fn fail(inner: &Inner, id: Option<&RequestId>, message: String) -> bool {
    tracing::warn!(%message, "upstream message failed");
    let Some(id) = id else { return true };
    let frame = error_frame(Some(id), UPSTREAM_ERROR, &message);
    inner
        .events
        .send(UpstreamEvent::Frame {
            frame: Box::new(frame),
            via: Via::Unrelated,
        })
        .await
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::resolve_endpoint;

    #[test]
    fn endpoints_resolve_against_the_sse_url_and_stay_on_its_origin() {
        let base = reqwest::Url::parse("http://127.0.0.1:3001/servers/x/sse").unwrap();
        let ok = |d: &str| resolve_endpoint(&base, d).unwrap().to_string();
        assert_eq!(
            ok("/message?sessionId=abc"),
            "http://127.0.0.1:3001/message?sessionId=abc"
        );
        assert_eq!(
            ok("messages/?session_id=1f"),
            "http://127.0.0.1:3001/servers/x/messages/?session_id=1f"
        );
        assert_eq!(
            ok(" http://127.0.0.1:3001/m?s=1\n"),
            "http://127.0.0.1:3001/m?s=1"
        );
        for bad in [
            "",
            "http://evil.example/message",
            "https://127.0.0.1:3001/message",
            "http://127.0.0.1:3002/message",
            "//evil.example/message",
        ] {
            assert!(resolve_endpoint(&base, bad).is_err(), "{bad:?}");
        }
    }
}
