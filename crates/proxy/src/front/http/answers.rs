//! The answers of relayed 2026-07-28 requests through the pipeline (server → client), as they
//! stream: SSE event by event, a JSON body whole. A relayed request has no session, so this is
//! where hooks (interceptor rules, the recorder, the live traffic view) see its answers. With
//! no hooks the answer is not touched.

use crate::error::ProxyError;
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

/// Who asked, for the hooks' context. Dropped before its answer passed the hooks (the client
/// went away, the upstream's answer was an HTTP error or could not be read), it tells them the
/// request failed, so that what they keep for it ([`crate::pipeline::Awaiting`]) is let go.
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
    /// The answer to `id` passed the hooks.
    pub answered: bool,
}

impl Asker {
    /// Tell the hooks that the request failed with `error` (once).
    fn fail(&mut self, error: &ProxyError) {
        if std::mem::replace(&mut self.answered, true) || self.pipeline.is_empty() {
            return;
        }
        if let Some(id) = &self.id {
            let ctx = FrameCtx {
                route: Some(&self.route),
                exchange: self.exchange,
                ..FrameCtx::new("-", Direction::ServerToClient)
            };
            self.pipeline.failed(&ctx, id, error);
        }
    }
}

impl Drop for Asker {
    fn drop(&mut self) {
        // The client went away before the answer came.
        self.fail(&ProxyError::Cancelled);
    }
}

impl Asker {
    /// Run the hooks on one server message; `None` when a hook withheld it.
    async fn process(&mut self, frame: Frame, transport: Transport<'_>) -> Option<Frame> {
        if frame.kind().is_reply() && frame.id() == self.id.as_ref() {
            self.answered = true;
        }
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
pub(super) async fn through_pipeline(answer: Response, mut asker: Asker) -> Response {
    if asker.pipeline.is_empty() {
        return answer;
    }
    if !answer.status().is_success() {
        let status = answer.status();
        asker.fail(&ProxyError::UpstreamProtocol(format!(
            "the upstream answered HTTP {status}"
        )));
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
async fn json_body(body: Body, mut asker: Asker) -> Bytes {
    let id = asker.id.clone();
    let failed = |why: &str| error_frame(id.as_ref(), UPSTREAM_ERROR, why).into_raw();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{Hook, Verdict};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts the answers it saw and the requests reported failed.
    #[derive(Default)]
    struct Count {
        answers: AtomicUsize,
        failed: AtomicUsize,
    }

    impl Hook for Count {
        fn name(&self) -> &'static str {
            "count"
        }
        fn on_frame(&self, _ctx: &FrameCtx<'_>, frame: &Frame) -> Verdict {
            if frame.kind().is_reply() {
                self.answers.fetch_add(1, Ordering::Relaxed);
            }
            Verdict::Forward
        }
        fn on_failed(&self, _ctx: &FrameCtx<'_>, _id: &RequestId, _error: &ProxyError) {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn asker(count: &Arc<Count>) -> Asker {
        Asker {
            pipeline: Pipeline::new(vec![count.clone()]),
            principal: None,
            route: Arc::from(""),
            exchange: 7,
            id: Some(RequestId::Number(1)),
            limit: 1 << 20,
            answered: false,
        }
    }

    fn json(status: u16, body: &'static str) -> Response {
        let mut r = Response::new(Body::from(body));
        *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
        r.headers_mut()
            .insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        r
    }

    #[tokio::test]
    async fn an_answer_that_never_passes_the_hooks_is_reported_failed_once() {
        // Answered: no failure.
        let count = Arc::new(Count::default());
        let r = through_pipeline(
            json(200, r#"{"jsonrpc":"2.0","id":1,"result":{}}"#),
            asker(&count),
        )
        .await;
        axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        assert_eq!(count.answers.load(Ordering::Relaxed), 1);
        assert_eq!(count.failed.load(Ordering::Relaxed), 0);

        // An HTTP error is not passed to the hooks: they hear that the request failed.
        let count = Arc::new(Count::default());
        let _ = through_pipeline(json(502, "bad gateway"), asker(&count)).await;
        assert_eq!(count.answers.load(Ordering::Relaxed), 0);
        assert_eq!(count.failed.load(Ordering::Relaxed), 1);

        // A client that goes away before a streamed answer is read: the same.
        let count = Arc::new(Count::default());
        let mut sse = json(
            200,
            "data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n",
        );
        sse.headers_mut()
            .insert(header::CONTENT_TYPE, "text/event-stream".parse().unwrap());
        let r = through_pipeline(sse, asker(&count)).await;
        assert_eq!(count.failed.load(Ordering::Relaxed), 0, "not yet");
        drop(r);
        assert_eq!(count.answers.load(Ordering::Relaxed), 0);
        assert_eq!(count.failed.load(Ordering::Relaxed), 1);
    }
}
