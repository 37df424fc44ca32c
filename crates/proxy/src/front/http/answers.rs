//! The answers of relayed 2026-07-28 requests through the pipeline (server → client), as they
//! stream: SSE event by event, a JSON body whole. A relayed request has no session, so this is
//! where hooks (interceptor rules, the recorder, the live traffic view) see its answers. With
//! no hooks the answer is not touched.

use crate::pipeline::{Direction, FrameCtx, HttpMeta, Outcome, Pipeline, Transport};
use crate::upstream::sse_map::{EventMap, Mapped, map_sse};
use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::header;
use shadowcat_proto::error::{UPSTREAM_ERROR, error_frame};
use shadowcat_proto::sse::SseEvent;
use shadowcat_proto::{Frame, RequestId};
use std::sync::Arc;

/// Who asked, for the hooks' context.
#[derive(Clone)]
pub(super) struct Asker {
    pub pipeline: Pipeline,
    pub principal: Option<Arc<str>>,
    /// The route, and the request's [`FrameCtx::exchange`] number.
    pub route: Arc<str>,
    pub exchange: u64,
    /// The request's id (a withheld JSON answer becomes an error for it).
    pub id: Option<RequestId>,
    /// Largest message read.
    pub limit: usize,
}

impl Asker {
    /// Run the hooks on one server message; `None` when a hook withheld it.
    async fn process(&self, frame: Frame, transport: Transport<'_>) -> Option<Frame> {
        let ctx = FrameCtx {
            principal: self.principal.as_deref(),
            transport,
            route: Some(&self.route),
            exchange: self.exchange,
            ..FrameCtx::new("-", Direction::ServerToClient)
        };
        match self.pipeline.process(&ctx, frame).await {
            Outcome::Forward(f) => Some(f),
            // "Answer the sender" has no sender to answer here: the message is withheld.
            Outcome::Reply(_) | Outcome::Drop => None,
        }
    }
}

fn http_meta<'a>(content_type: &'static str, sse_id: Option<&'a str>) -> Transport<'a> {
    Transport::Http(HttpMeta {
        method: "POST",
        status: Some(200),
        content_type: Some(content_type),
        headers: None,
        url: None,
        sse_id,
    })
}

/// `answer` with every message passed through the hooks.
pub(super) async fn through_pipeline(answer: Response, asker: Asker) -> Response {
    if asker.pipeline.is_empty() || !answer.status().is_success() {
        return answer;
    }
    let sse = answer
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let (mut parts, body) = answer.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = if sse {
        sse_body(body, asker)
    } else {
        Body::from(json_body(body, asker).await)
    };
    Response::from_parts(parts, body)
}

/// A JSON answer, read whole (up to the limit), through the hooks.
async fn json_body(body: Body, asker: Asker) -> Bytes {
    let failed = |why: &str| error_frame(asker.id.as_ref(), UPSTREAM_ERROR, why).into_raw();
    let bytes = match axum::body::to_bytes(body, asker.limit).await {
        Ok(b) => b,
        Err(e) => return failed(&format!("the upstream's answer could not be read: {e}")),
    };
    // Fail closed: what the hooks cannot examine does not reach the client.
    let frame = match Frame::parse_single(bytes) {
        Ok(f) => f,
        Err(e) => {
            return failed(&format!(
                "the upstream's answer is not a JSON-RPC message: {e}"
            ));
        }
    };
    match asker
        .process(frame, http_meta("application/json", None))
        .await
    {
        Some(f) => f.into_raw(),
        None => failed("the upstream's answer was withheld by a proxy rule"),
    }
}

impl EventMap for Asker {
    /// One event of an SSE answer: its message through the hooks.
    async fn map(&mut self, ev: &SseEvent) -> Mapped {
        let Some(data) = ev.data.as_deref().filter(|d| !d.trim().is_empty()) else {
            // Comments, priming events: nothing for the hooks.
            return Mapped::Keep;
        };
        let frame = match Frame::parse_single(Bytes::copy_from_slice(data.as_bytes())) {
            Ok(f) => f,
            Err(e) => {
                // Fail closed: an event the hooks cannot examine is not relayed.
                tracing::warn!(error = %e, "a relayed 2026-07-28 answer event is not JSON-RPC; not relayed");
                return Mapped::Drop;
            }
        };
        let transport = http_meta("text/event-stream", ev.id.as_deref());
        match self.process(frame, transport).await {
            Some(f) => Mapped::Data(f.into_raw()),
            None => Mapped::Drop,
        }
    }
}

/// An SSE answer, event by event as they arrive, each event's message through the hooks.
fn sse_body(body: Body, asker: Asker) -> Body {
    let limit = asker.limit;
    map_sse(body, limit, asker)
}
