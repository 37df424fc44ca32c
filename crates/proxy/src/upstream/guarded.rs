//! One stateless (2026-07-28) request relayed to an upstream, guarded like a session's
//! requests (see [`crate::guard`]): the breaker admits it or refuses it fast; a connection
//! failure (nothing was delivered), or 502/503/504 for an idempotent method, is retried within
//! the retry budget; the request timeout covers the whole answer — an SSE answer whose response
//! has not come by then gets a JSON-RPC error event and is closed (closing is the era's
//! cancellation); the outcome feeds the breaker.

use crate::error::ProxyError;
use crate::guard::{Guard, is_idempotent};
use crate::upstream::sse_map::{EventMap, Mapped, map_sse};
use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::header;
use shadowcat_proto::error::{REQUEST_TIMEOUT, error_frame};
use shadowcat_proto::sse::{SseEvent, encode_event};
use shadowcat_proto::{Frame, RequestId};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// What is being asked, for retries and the timeout's answer.
pub struct Ask<'a> {
    /// The JSON-RPC method (retries only for idempotent ones after an HTTP error).
    pub method: &'a str,
    /// The request's id (the timeout's error answers it).
    pub id: Option<RequestId>,
    /// Largest answer read.
    pub limit: usize,
}

/// Send with `send` (called again for each retry) under `guard`; no guard: sent once, as is.
pub async fn exchange<F, Fut>(
    guard: Option<Arc<Guard>>,
    ask: Ask<'_>,
    send: F,
) -> Result<Response, ProxyError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Response, ProxyError>>,
{
    let Some(g) = guard else {
        return send().await;
    };
    g.admit()?;
    let timeout = g.request_timeout();
    let deadline = timeout.map(|t| Instant::now() + t);
    let timed_out = |g: &Guard| {
        g.timed_out();
        ProxyError::RequestTimeout(timeout_message(ask.method, timeout))
    };
    let idempotent = is_idempotent(ask.method);
    g.attempt();
    let mut attempt = 0;
    let sent = loop {
        let sent = match deadline {
            Some(d) => match tokio::time::timeout_at(d, send()).await {
                Ok(r) => r,
                Err(_) => return Err(timed_out(&g)),
            },
            None => send().await,
        };
        let retry_on = match &sent {
            Err(ProxyError::UpstreamConnect(_)) => true,
            Ok(r) => idempotent && matches!(r.status().as_u16(), 502..=504),
            Err(_) => false,
        };
        if retry_on && let Some(delay) = g.retry_after(attempt) {
            tracing::info!(
                attempt = attempt + 1,
                method = ask.method,
                "retrying the stateless request"
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
            continue;
        }
        break sent;
    };
    let answer = match sent {
        Ok(r) => r,
        Err(e) => {
            g.record(false);
            return Err(e);
        }
    };
    if answer.status().is_server_error() {
        g.record(false);
        return Ok(answer);
    }
    let Some(deadline) = deadline else {
        g.record(true);
        return Ok(answer);
    };
    let sse = answer
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let (mut parts, body) = answer.into_parts();
    if !sse {
        // A JSON answer comes whole: read it within the deadline.
        return match tokio::time::timeout_at(deadline, axum::body::to_bytes(body, ask.limit)).await
        {
            Ok(Ok(bytes)) => {
                g.record(true);
                parts.headers.remove(header::CONTENT_LENGTH);
                Ok(Response::from_parts(parts, Body::from(bytes)))
            }
            Ok(Err(e)) => {
                g.record(false);
                Err(ProxyError::UpstreamProtocol(format!(
                    "the upstream's answer could not be read: {e}"
                )))
            }
            Err(_) => Err(timed_out(&g)),
        };
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    let message = timeout_message(ask.method, timeout);
    Ok(Response::from_parts(
        parts,
        sse_within(body, deadline, g, ask.id, ask.limit, message),
    ))
}

fn timeout_message(method: &str, timeout: Option<Duration>) -> String {
    format!(
        "{method} timed out: the upstream did not answer within {} s",
        timeout.unwrap_or_default().as_secs_f64()
    )
}

/// The request timeout over an SSE answer: until the request's response has come, waiting for
/// the body is limited to the deadline.
struct Within {
    deadline: Instant,
    guard: Arc<Guard>,
    id: Option<RequestId>,
    message: String,
    answered: bool,
}

impl EventMap for Within {
    async fn map(&mut self, ev: &SseEvent) -> Mapped {
        if !self.answered
            && let Some(d) = ev.data.as_deref().filter(|d| !d.trim().is_empty())
            && Frame::parse_single(Bytes::copy_from_slice(d.as_bytes()))
                .is_ok_and(|f| f.kind().is_reply() && f.id() == self.id.as_ref())
        {
            self.answered = true;
            self.guard.record(true);
        }
        Mapped::Keep
    }

    fn deadline(&self) -> Option<Instant> {
        (!self.answered).then_some(self.deadline)
    }

    fn expired(&mut self) -> Bytes {
        self.guard.timed_out();
        tracing::warn!("a stateless request timed out; closing its answer");
        let frame = error_frame(self.id.as_ref(), REQUEST_TIMEOUT, &self.message);
        let text = String::from_utf8_lossy(frame.raw()).into_owned();
        encode_event(None, Some("message"), &text, None)
    }
}

/// The SSE answer event by event; if its response has not come by `deadline`, an error event
/// answers the request and the stream ends (the upstream request is closed with it).
fn sse_within(
    body: Body,
    deadline: Instant,
    guard: Arc<Guard>,
    id: Option<RequestId>,
    limit: usize,
    message: String,
) -> Body {
    let within = Within {
        deadline,
        guard,
        id,
        message,
        answered: false,
    };
    map_sse(body, limit, within)
}
