//! SSE response bodies (POST streams and the GET stream), streamed frame by frame with
//! backpressure: a slow client fills its bounded channel, which stalls the session's router,
//! which stops reading the upstream.

use super::registry::BusyGuard;
use super::{HttpFront, Target, checks, reply, session_header};
use crate::error::ProxyError;
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use http::StatusCode;
use shadowcat_proto::error::INVALID_REQUEST;
use shadowcat_proto::sse::encode_event_into;
use shadowcat_proto::{Frame, RequestId};
use std::collections::{HashSet, VecDeque};
use tokio::sync::mpsc;

/// Capacity of one response stream's channel.
pub const STREAM_CAPACITY: usize = 32;

/// One SSE event carrying a JSON-RPC message.
pub fn encode(frame: &Frame) -> Bytes {
    let data = String::from_utf8_lossy(frame.raw());
    let mut buf = BytesMut::with_capacity(frame.raw().len() + 24);
    encode_event_into(&mut buf, None, Some("message"), &data, None);
    buf.freeze()
}

struct StreamState {
    first: VecDeque<Frame>,
    rx: mpsc::Receiver<Frame>,
    /// For POST streams: replies still awaited; the stream ends when it is empty.
    expected: Option<HashSet<RequestId>>,
    _busy: BusyGuard,
}

/// An SSE body: `first` frames, then whatever arrives on `rx`, until every expected reply was
/// sent (POST) or the session ends (GET).
pub fn body(
    first: VecDeque<Frame>,
    rx: mpsc::Receiver<Frame>,
    expected: Option<HashSet<RequestId>>,
    busy: BusyGuard,
) -> Body {
    let state = StreamState {
        first,
        rx,
        expected,
        _busy: busy,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        if st.expected.as_ref().is_some_and(HashSet::is_empty) {
            return None;
        }
        let frame = match st.first.pop_front() {
            Some(f) => f,
            None => st.rx.recv().await?,
        };
        if let (Some(exp), Some(id)) = (st.expected.as_mut(), frame.id())
            && frame.kind().is_reply()
        {
            exp.remove(id);
        }
        Some((Ok::<Bytes, std::convert::Infallible>(encode(&frame)), st))
    });
    Body::from_stream(stream)
}

/// GET: open the session's server→client stream.
pub async fn handle_get(
    front: &HttpFront,
    target: Target,
    req: Request,
) -> Result<Response, ProxyError> {
    checks::get_accept(req.headers())?;
    checks::protocol_version(req.headers())?;
    let id = session_header(&req)?.ok_or_else(|| {
        ProxyError::bad(
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            "GET needs an Mcp-Session-Id header",
        )
    })?;
    let session = front
        .registry
        .get(id, &target.key)
        .ok_or(ProxyError::SessionNotFound)?;
    let busy = session.busy();
    if !session.core().upstream().open_listen().await? {
        return Err(ProxyError::bad(
            StatusCode::METHOD_NOT_ALLOWED,
            INVALID_REQUEST,
            "the upstream server offers no server-to-client stream",
        ));
    }
    let (tx, rx) = mpsc::channel(STREAM_CAPACITY);
    let queued = session.outbox().open_listen(tx);
    Ok(reply::sse(body(queued.into(), rx, None, busy)))
}
