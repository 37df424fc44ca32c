//! SSE response bodies and the GET endpoint, including resumption.
//!
//! Bodies stream event by event with backpressure: a slow client fills its bounded channel,
//! which stalls the session's pump, which stops reading the upstream.
//!
//! `GET` + `Last-Event-ID: <stream>.<id>` replays the events of *that* stream logged after the
//! id, then continues live on it if the stream is still open (the GET stream, or a POST stream
//! whose replies are not all delivered yet). An id we did not issue, or one the log no longer
//! holds (trimmed, or the session's log was lost), is answered `400` with a JSON-RPC error that
//! says events may have been lost — never a silent gap.

use super::outbox::{Attached, GET_STREAM, Out, Outbox};
use super::registry::{BusyGuard, HttpSession};
use super::{HttpFront, Target, checks, reply, session_header};
use crate::error::ProxyError;
use crate::session::events::{Replay, Replayed, parse_event_id};
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use shadowcat_proto::era::LAST_EVENT_ID_HEADER;
use shadowcat_proto::error::INVALID_REQUEST;
use shadowcat_proto::sse::encode_event_into;
use shadowcat_store::StoreError;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Capacity of one response stream's channel.
pub const STREAM_CAPACITY: usize = 32;

/// Encode one SSE event. Priming events (no payload) carry the `retry` hint.
pub fn encode(id: Option<&str>, data: &[u8], retry: Duration) -> Bytes {
    let text = String::from_utf8_lossy(data);
    let mut buf = BytesMut::with_capacity(data.len() + 48);
    if data.is_empty() {
        encode_event_into(&mut buf, id, None, "", Some(retry.as_millis() as u64));
    } else {
        encode_event_into(&mut buf, id, Some("message"), &text, None);
    }
    buf.freeze()
}

struct BodyState {
    first: VecDeque<Bytes>,
    replay: Option<Replay>,
    rx: Option<mpsc::Receiver<Out>>,
    retry: Duration,
    _busy: Option<BusyGuard>,
}

/// An SSE body: the already-encoded `first` events, then every event arriving on `rx` until the
/// stream is finished (its sender dropped) — or nothing more when `rx` is `None`.
pub fn body(
    first: VecDeque<Bytes>,
    rx: Option<mpsc::Receiver<Out>>,
    retry: Duration,
    busy: BusyGuard,
) -> Body {
    replaying_body(first, None, rx, retry, Some(busy))
}

/// [`body`] that sends the rest of `replay` (page by page) after `first`, before `rx`.
fn replaying_body(
    first: VecDeque<Bytes>,
    replay: Option<Replay>,
    rx: Option<mpsc::Receiver<Out>>,
    retry: Duration,
    busy: Option<BusyGuard>,
) -> Body {
    let state = BodyState {
        first,
        replay,
        rx,
        retry,
        _busy: busy,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        if let Some(b) = st.first.pop_front() {
            return Some((Ok::<Bytes, std::convert::Infallible>(b), st));
        }
        while let Some(r) = st.replay.as_mut() {
            match r.next_page().await {
                Ok(page) if !page.is_empty() => {
                    st.first = encode_replay(page, st.retry);
                    if let Some(b) = st.first.pop_front() {
                        return Some((Ok(b), st));
                    }
                }
                Ok(_) => st.replay = None,
                Err(e) => {
                    // The live events that follow must not pretend nothing was missed.
                    tracing::warn!(error = %e, "replaying the event log failed; ending the stream");
                    return None;
                }
            }
        }
        loop {
            match st.rx.as_mut()?.recv().await? {
                Out::Event { frame, id } => {
                    let data = frame.as_ref().map(|f| &f.raw()[..]).unwrap_or(b"");
                    return Some((Ok(encode(id.as_deref(), data, st.retry)), st));
                }
                // A POST stream never receives JSON once it streams.
                Out::Json(_) => continue,
            }
        }
    });
    Body::from_stream(stream)
}

/// Encode replayed events.
pub fn encode_replay(events: Vec<Replayed>, retry: Duration) -> VecDeque<Bytes> {
    events
        .into_iter()
        .map(|(id, data)| encode(Some(&id), &data, retry))
        .collect()
}

fn gone(id: &str, why: &str) -> ProxyError {
    ProxyError::bad(
        crate::error::Refusal::Malformed,
        INVALID_REQUEST,
        format!(
            "cannot resume after Last-Event-ID `{id}`: {why}; events may have been lost — \
             re-send pending requests, and open a new stream without Last-Event-ID"
        ),
    )
}

/// Attach a new GET connection to the session's GET stream. That stream exists for the whole
/// life of the session, so only a session that ended since it was looked up has none: `404`,
/// as if the lookup had come a moment later.
fn attach_listen(o: &mut Outbox, tx: mpsc::Sender<Out>) -> Result<Attached, ProxyError> {
    o.attach(GET_STREAM, tx).ok_or(ProxyError::SessionNotFound)
}

/// Attach a resuming connection to `stream`: `None` when that stream is finished (its events
/// are replayed from the log), `404` when the whole session ended since it was looked up.
fn attach_resumed(
    o: &mut Outbox,
    stream: &str,
    tx: mpsc::Sender<Out>,
) -> Result<Option<Attached>, ProxyError> {
    if o.is_closed() {
        return Err(ProxyError::SessionNotFound);
    }
    Ok(o.attach(stream, tx))
}

/// GET: open (or resume) a server→client stream.
pub async fn handle_get(
    front: &HttpFront,
    target: Target,
    req: Request,
) -> Result<Response, ProxyError> {
    checks::get_accept(req.headers())?;
    checks::protocol_version(req.headers())?;
    let id = session_header(&req)?.ok_or_else(|| {
        ProxyError::bad(
            crate::error::Refusal::Malformed,
            INVALID_REQUEST,
            "GET needs an Mcp-Session-Id header",
        )
    })?;
    let session = front
        .registry
        .get(id, &target.key)
        .ok_or(ProxyError::SessionNotFound)?;
    let last = match req.headers().get(LAST_EVENT_ID_HEADER) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| gone("(not ASCII)", "it is not an id this proxy issued"))?
                .trim()
                .to_string(),
        ),
    };
    // Opening a stream is activity; an open GET stream is not (only requests and server
    // messages are): an idle session is reaped even while its client listens.
    session.touched();
    let retry = front.config.sse_retry;
    match last {
        Some(last) => resume(&session, &last, retry).await,
        None => open_listen(&session, retry).await,
    }
}

/// A fresh GET connection: replay what the previous GET connection never got, then live.
async fn open_listen(session: &Arc<HttpSession>, retry: Duration) -> Result<Response, ProxyError> {
    if !session.core().upstream().open_listen().await? {
        return Err(no_listen_stream());
    }
    let (tx, rx) = mpsc::channel(STREAM_CAPACITY);
    let (attached, priming) = {
        let mut o = session.outbox();
        (attach_listen(&mut o, tx.clone())?, o.priming())
    };
    let mut first = VecDeque::new();
    let mut rest = None;
    if let Some(until) = attached
        .watermark
        .as_deref()
        .filter(|w| Some(*w) != attached.delivered.as_deref())
    {
        let after = attached
            .delivered
            .as_deref()
            .and_then(parse_event_id)
            .map(|(_, e)| e);
        let core = session.core();
        if let Some(mut missed) = core.replay(GET_STREAM, after, Some(until)) {
            let mut page = missed.next_page().await;
            if let Err(StoreError::EventGone(_)) = page
                && let Some(again) = core.replay(GET_STREAM, None, Some(until))
            {
                // The last event this stream delivered was trimmed (byte budget, age): so was
                // everything before it. What the log still holds all came after it: deliver
                // that.
                tracing::warn!(
                    "the event log dropped GET-stream events this client never received (retention); replaying what it still holds"
                );
                missed = again;
                page = missed.next_page().await;
            }
            match page {
                Ok(events) => {
                    first = encode_replay(events, retry);
                    rest = Some(missed);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not replay queued GET-stream events")
                }
            }
        }
    }
    // Replayed events carry ids (and later pages of the replay must not come after a newer
    // priming id); otherwise give the client an id to resume from before the first event.
    if priming && first.is_empty() {
        let id = session.core().log_event(GET_STREAM, b"").await;
        first.push_back(encode(id.as_deref(), b"", retry));
        session.outbox().logged(GET_STREAM, id);
    }
    Ok(reply::sse(replaying_body(
        first,
        rest,
        Some(rx),
        retry,
        None,
    )))
}

/// `Last-Event-ID`: replay the stream it names after it, then continue live if still open.
async fn resume(
    session: &Arc<HttpSession>,
    last: &str,
    retry: Duration,
) -> Result<Response, ProxyError> {
    let (stream, event) =
        parse_event_id(last).ok_or_else(|| gone(last, "it is not an id this proxy issued"))?;
    // A request's stream keeps its session busy while it is read; the GET stream does not.
    let busy = (stream != GET_STREAM).then(|| session.busy());
    if stream == GET_STREAM && !session.core().upstream().open_listen().await? {
        return Err(no_listen_stream());
    }
    let (tx, rx) = mpsc::channel(STREAM_CAPACITY);
    let attached = attach_resumed(&mut session.outbox(), stream, tx)?;
    let until = attached.as_ref().map(|a| a.watermark.clone());
    let gone_or = |e| match e {
        shadowcat_store::StoreError::EventGone(_) => gone(last, "the event log does not hold it"),
        other => ProxyError::UpstreamConnect(format!("session store: {other}")),
    };
    let (replayed, rest) = match until {
        // The stream is open but nothing was ever logged on it: the id cannot be ours.
        Some(None) => return Err(gone(last, "the event log does not hold it")),
        // The client already has everything logged before this connection.
        Some(Some(w)) if &*w == last => (Vec::new(), None),
        // Replay up to the watermark (later events arrive live), or to the end of the log
        // when the stream is already finished: the first page now (an id the log no longer
        // holds is refused before anything is sent), the rest as the client reads.
        until => {
            let mut replay = session
                .core()
                .replay(stream, Some(event), until.flatten().as_deref())
                .ok_or_else(|| gone(last, "the event log does not hold it"))?;
            let first = replay.next_page().await.map_err(gone_or)?;
            (first, Some(replay))
        }
    };
    tracing::info!(
        stream,
        first_page = replayed.len(),
        live = attached.is_some(),
        "stream resumed"
    );
    let first = encode_replay(replayed, retry);
    Ok(reply::sse(replaying_body(
        first,
        rest,
        attached.map(|_| rx),
        retry,
        busy,
    )))
}

/// A GET on a session whose upstream has no server-to-client stream.
fn no_listen_stream() -> ProxyError {
    ProxyError::MethodNotAllowed {
        allow: "POST, DELETE",
        message: "the upstream server offers no server-to-client stream".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    /// A GET that found its session just before the session ended (the race window between
    /// the registry lookup and the attach) gets 404, not a panic; so does a resumption.
    #[test]
    fn attaching_to_a_session_that_just_ended_is_404() {
        let mut o = Outbox::new();
        assert!(attach_listen(&mut o, mpsc::channel(1).0).is_ok());
        assert!(matches!(
            attach_resumed(&mut o, "p9", mpsc::channel(1).0),
            Ok(None)
        ));
        o.close(); // the session ends here
        let e = attach_listen(&mut o, mpsc::channel(1).0).unwrap_err();
        assert!(matches!(e, ProxyError::SessionNotFound));
        assert_eq!(e.http_status(), StatusCode::NOT_FOUND);
        let e = attach_resumed(&mut o, GET_STREAM, mpsc::channel(1).0).unwrap_err();
        assert_eq!(e.http_status(), StatusCode::NOT_FOUND);
        // A POST arriving in the same window is not registered (it would wait forever).
        assert!(matches!(
            o.open_post(&[shadowcat_proto::RequestId::Number(1)], mpsc::channel(1).0),
            Err(ProxyError::SessionNotFound)
        ));
    }
}
