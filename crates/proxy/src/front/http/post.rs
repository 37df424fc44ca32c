//! POST: one client message (or a 2025-03-26 batch). Notifications and responses get 202.
//! Requests get their replies as one JSON body when nothing else comes first, and as an SSE
//! stream as soon as the server sends anything else (progress, logs, server requests) before
//! the reply — the first byte reaches the client as soon as the upstream sends it.

use super::outbox::Out;
use super::registry::HttpSession;
use super::stream::{STREAM_CAPACITY, body, encode};
use super::{HttpFront, Target, checks, reply, session_header};
use crate::error::ProxyError;
use crate::pipeline::{HttpMeta, Transport};
use crate::session::place::{self, Initialized};
use crate::session::{Kind, Sent};
use crate::upstream::Via;
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode, header};
use http_body_util::BodyExt;
use shadowcat_proto::era::ProtocolVersion;
use shadowcat_proto::error::{INVALID_REQUEST, REQUEST_TIMEOUT, UPSTREAM_ERROR, error_frame};
use shadowcat_proto::{Frame, FrameError, FrameKind, Message, RequestId};
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::mpsc;

pub async fn handle(
    front: &HttpFront,
    target: Target,
    req: Request,
) -> Result<Response, ProxyError> {
    checks::content_type(req.headers())?;
    checks::post_accept(req.headers())?;
    let header_version = checks::protocol_version(req.headers())?;
    // The URL is only for the hooks that read it (tapes): not built when none does.
    let hooked = front.pipeline.wants_url();
    if let Some(v) = header_version.filter(|v| v.is_modern()) {
        let (parts, body) = req.into_parts();
        let url = hooked.then(|| super::request_url(&parts)).flatten();
        let raw = read_body(body, front.config.max_body).await?;
        // Boxed, as `initialize` below: the session request's path (every other POST) then
        // carries neither's state in its own future, which every request moves and polls.
        return Box::pin(super::modern::handle(
            front,
            target,
            parts.headers,
            url.as_deref(),
            raw,
            v,
        ))
        .await;
    }
    let sid = session_header(&req)?.map(str::to_owned);
    let (parts, body) = req.into_parts();
    let url = hooked.then(|| super::request_url(&parts)).flatten();
    let url = url.as_deref();
    let raw = read_body(body, front.config.max_body).await?;
    let msg = Message::parse(raw)?;
    super::note_message(&msg);

    let session = match sid {
        None => {
            let init = match &msg {
                Message::Single(f) if f.is_initialize() => f.clone(),
                _ => {
                    return Err(bad(
                        "missing Mcp-Session-Id header: only an `initialize` request may be sent without one",
                    ));
                }
            };
            return Box::pin(initialize(front, target, init, &parts.headers, url)).await;
        }
        Some(id) => {
            let s = front
                .registry
                .get(&id, &target.key)
                .ok_or(ProxyError::SessionNotFound)?;
            if msg.frames().iter().any(Frame::is_initialize) {
                return Err(bad(
                    "`initialize` must be sent without an Mcp-Session-Id header",
                ));
            }
            // The policy's hooks see what this request's credentials grant.
            if let Some(g) = target.placer.grant() {
                s.core().set_grant(Some(g));
            }
            s
        }
    };
    if msg.is_batch() {
        let v = header_version
            .or_else(|| session.core().known_version())
            .unwrap_or(ProtocolVersion::HTTP_DEFAULT);
        if !v.allows_batches() {
            return Err(bad(&format!(
                "JSON-RPC batches are not supported in protocol version {v} (only in 2025-03-26)"
            )));
        }
    }
    let batch = msg.is_batch();
    let retry = front.config.sse_retry;
    let via = Posted {
        headers: &parts.headers,
        url,
    };
    match relay(&session, msg.into_frames(), batch, retry, via).await? {
        Relayed::Answer(r) => Ok(r),
        Relayed::InitFailed(replies) => Ok(json_replies(replies, batch)),
    }
}

/// A new session: create it and relay its `initialize`. An upstream that fails the
/// `initialize` itself before anything reached the client is failed over by the engine
/// ([`place::initialize`]).
async fn initialize(
    front: &HttpFront,
    target: Target,
    init: Frame,
    headers: &HeaderMap,
    url: Option<&str>,
) -> Result<Response, ProxyError> {
    let via = Posted { headers, url };
    let retry = front.config.sse_retry;
    let (key, init_ref) = (&target.key, &init);
    let exchange = |created: place::Created| async move {
        let session = front
            .registry
            .insert(created.session, key.clone(), created.events);
        let core = session.core();
        match relay(&session, vec![init_ref.clone()], false, retry, via).await {
            Ok(Relayed::Answer(response)) => {
                // Before the client can send its next request (maybe to another replica).
                core.record_negotiated().await;
                Initialized::Answered(Ok(reply::with_session(response, Some(core.id()))))
            }
            Ok(Relayed::InitFailed(replies)) => {
                let by_upstream = replies.iter().all(upstream_failed);
                front.registry.end(core.id()).await;
                // No session id for a session that never started. An upstream that could not
                // answer is a 502 whatever its kind (a command that cannot start is refused
                // the same way before the session exists); the server's own error to the
                // `initialize` (e.g. a version it does not speak) is its answer, 200.
                tracing::info!("initialize failed upstream; the session is ended");
                let status = if by_upstream {
                    StatusCode::BAD_GATEWAY
                } else {
                    StatusCode::OK
                };
                let body = replies
                    .into_iter()
                    .next()
                    .map(Frame::into_raw)
                    .unwrap_or_default();
                let answer = Ok(reply::json_response(status, body));
                if by_upstream {
                    Initialized::UpstreamFailed(answer)
                } else {
                    Initialized::Answered(answer)
                }
            }
            Err(e) => Initialized::Answered(Err(e)),
        }
    };
    match front
        .initialize(&target, Kind::Streamable, &target.key, &init, exchange)
        .await
    {
        Ok(answer) => answer,
        Err(e) => Ok(reply::error(&e, init.id())),
    }
}

/// An answer the proxy made because the upstream failed (not the server's own error).
fn upstream_failed(f: &Frame) -> bool {
    matches!(f.proxy_error(), Some(UPSTREAM_ERROR | REQUEST_TIMEOUT))
}

fn bad(msg: &str) -> ProxyError {
    ProxyError::bad(crate::error::Refusal::Malformed, INVALID_REQUEST, msg)
}

pub(super) async fn read_body(body: Body, max: usize) -> Result<Bytes, ProxyError> {
    let too_large = |size| ProxyError::Frame(FrameError::TooLarge { size, limit: max });
    let mut out = BytesMut::new();
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(crate::front::conn::body_error)?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > max {
                return Err(too_large(out.len() + data.len()));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}

/// What [`relay`] made of the client's frames.
enum Relayed {
    /// The HTTP answer.
    Answer(Response),
    /// `initialize` was answered with an error (these replies, as JSON): the session is over
    /// unless it can be placed elsewhere.
    InitFailed(Vec<Frame>),
}

/// What hooks learn of the POST that carried client frames.
#[derive(Clone, Copy)]
struct Posted<'a> {
    headers: &'a HeaderMap,
    url: Option<&'a str>,
}

/// Send the frames upstream and build the HTTP answer.
async fn relay(
    session: &Arc<HttpSession>,
    frames: Vec<Frame>,
    batch: bool,
    retry: std::time::Duration,
    via: Posted<'_>,
) -> Result<Relayed, ProxyError> {
    let core = session.core();
    let transport = Transport::Http(HttpMeta {
        method: "POST",
        status: None,
        content_type: None,
        headers: Some(via.headers),
        url: via.url,
        sse_id: None,
    });
    let requests: Vec<RequestId> = frames
        .iter()
        .filter(|f| f.kind() == FrameKind::Request)
        .filter_map(|f| f.id().cloned())
        .collect();
    let busy = session.busy();
    if requests.is_empty() {
        // The upstream's GET stream is opened when the client opens its own (stream.rs), as
        // talking to the server directly would: an idle session holds no upstream connection.
        for f in frames {
            core.from_client_via(f, transport).await?;
        }
        return Ok(Relayed::Answer(reply::accepted()));
    }
    let init = frames.iter().any(Frame::is_initialize);
    let (tx, mut rx) = mpsc::channel(STREAM_CAPACITY);
    {
        let mut o = session.outbox();
        if let Some(v) = core.known_version() {
            o.set_priming(v >= ProtocolVersion::V2025_11_25);
        }
        // Refused when the session ended since it was looked up (nothing would answer), or
        // when a request id is still in flight in the session (400, before anything is sent).
        o.open_post(&requests, tx)?;
    }
    // The upstream's request for a lone message is driven right here, on this task, until the
    // answer's first message is routed; anything else runs as tasks of the session.
    let lone = frames.len() == 1;
    let mut inline = None;
    for f in frames {
        let id = f.id().cloned().filter(|_| f.kind() == FrameKind::Request);
        match core.from_client_start(f, transport).await {
            Ok((Sent::Forwarded, exchange)) => match exchange {
                Some(x) if lone => inline = Some(x),
                Some(x) => x.detach(),
                None => {}
            },
            // The rare outcomes' deliveries are boxed: kept out of every request's future.
            Ok((Sent::Replied(answer), _)) => {
                Box::pin(session.deliver(answer, &Via::Unrelated, None)).await
            }
            Ok((Sent::Dropped, _)) => {
                if let Some(id) = id {
                    let plan = session.outbox().forget_request(&id);
                    Box::pin(session.execute(plan)).await;
                }
            }
            Err(e) => match id {
                Some(id) => {
                    let err = error_frame(Some(&id), e.jsonrpc_code(), &e.to_string());
                    Box::pin(session.deliver(err, &Via::Unrelated, None)).await;
                }
                None => tracing::warn!(error = %e, "could not forward a client message"),
            },
        }
    }
    let first = match inline.as_mut() {
        None => rx.recv().await,
        Some(x) => {
            tokio::select! {
                biased;
                out = rx.recv() => out,
                () = x => rx.recv().await,
            }
        }
    };
    match first {
        Some(Out::Json(replies)) => {
            if let Some(x) = inline {
                // Usually just the end of the upstream's body is left.
                x.finish_or_detach();
            }
            if init && replies.iter().any(|f| f.kind() == FrameKind::Error) {
                return Ok(Relayed::InitFailed(replies));
            }
            Ok(Relayed::Answer(json_replies(replies, batch)))
        }
        Some(first @ Out::Event { .. }) => {
            // The answer is a stream: the upstream's request carries on as a task.
            drop(inline);
            let Out::Event { frame, id } = first else {
                unreachable!()
            };
            let data = frame.as_ref().map(|f| &f.raw()[..]).unwrap_or(b"");
            let head = VecDeque::from([encode(id.as_deref(), data, retry)]);
            Ok(Relayed::Answer(reply::sse(body(
                head,
                Some(rx),
                retry,
                busy,
            ))))
        }
        None => {
            // The session ended under us: answer every request.
            let reason = "the session ended before the upstream answered";
            let errors = requests
                .iter()
                .map(|id| error_frame(Some(id), UPSTREAM_ERROR, reason))
                .collect();
            Ok(Relayed::Answer(json_replies(errors, batch)))
        }
    }
}

fn json_replies(replies: Vec<Frame>, batch: bool) -> Response {
    if replies.is_empty() {
        return reply::accepted();
    }
    if !batch && replies.len() == 1 {
        let f = replies
            .into_iter()
            .next()
            .map(Frame::into_raw)
            .unwrap_or_default();
        return reply::json_response(StatusCode::OK, f);
    }
    let mut out = BytesMut::new();
    out.extend_from_slice(b"[");
    for (i, f) in replies.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b",");
        }
        out.extend_from_slice(f.raw());
    }
    out.extend_from_slice(b"]");
    let mut r = reply::json_response(StatusCode::OK, out.freeze());
    r.headers_mut().remove(header::CONTENT_LENGTH);
    r
}
