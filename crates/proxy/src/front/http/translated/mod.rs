//! A 2026-07-28 request for a route whose server speaks only the session-based eras (stdio,
//! HTTP+SSE, Streamable HTTP without 2026-07-28): answered on the held session of its client.
//! The HTTP side of era translation; the translation itself is [`crate::translate`] (which
//! imports nothing from the fronts). [`pool`] holds the held sessions.

mod pool;

pub use pool::Pool;

use crate::error::ProxyError;
use crate::front::http::{HttpFront, Target, reply};
use crate::front::sse::{KEEPALIVE, frames_body};
use crate::translate::envelope::{self, id_value};
use crate::translate::handshake;
use crate::translate::held::{Call, Filter};
use axum::response::Response;
use bytes::Bytes;
use http::StatusCode;
use serde_json::{Value, json};
use shadowcat_proto::error::{INVALID_REQUEST, UPSTREAM_ERROR, error_code, error_frame};
use shadowcat_proto::sse::encode_event;
use shadowcat_proto::{Frame, FrameKind};

/// Serve one validated 2026-07-28 message on a held session.
pub(crate) async fn handle(
    front: &HttpFront,
    target: &Target,
    frame: Frame,
) -> Result<Response, ProxyError> {
    let method = frame.method().unwrap_or("").to_string();
    if frame.kind() == FrameKind::Notification {
        // 2026-07-28 defines no client notifications over HTTP (cancellation is closing the
        // response stream); there is no session to deliver one to.
        tracing::debug!(%method, "2026-07-28 notification for a session-based server; absorbed");
        return Ok(reply::accepted());
    }
    if method == "initialize" {
        return Err(ProxyError::bad(
            crate::error::Refusal::Malformed,
            INVALID_REQUEST,
            "`initialize` is not part of 2026-07-28: send requests directly (server/discover \
             describes the server), or omit the 2026-07-28 MCP-Protocol-Version header",
        ));
    }
    let env = envelope::read_envelope(&frame);
    let held = front.translations().get(front, target, &env).await?;
    // The policy's hooks see what this request's credentials grant.
    if let Some(g) = target.placer.grant() {
        held.core().set_grant(Some(g));
    }
    let id = frame.id().cloned();
    match method.as_str() {
        "server/discover" => {
            let init = held.init_result().cloned().unwrap_or(Value::Null);
            let body = json!({"jsonrpc":"2.0","id": id.as_ref().map(id_value),
                "result": handshake::discover_result(&init)});
            Ok(reply::json_response(
                StatusCode::OK,
                Bytes::from(body.to_string()),
            ))
        }
        "subscriptions/listen" => {
            let Some(id) = id else {
                return Err(bad("subscriptions/listen must be a request"));
            };
            // Gateway: served here, not through the held session's hooks, so the route's rules
            // are applied here — to the request and to every URI it would subscribe to.
            if let Err(answer) = target.placer.authorize_listen(&frame) {
                let ctx = crate::pipeline::FrameCtx {
                    principal: target.placer.principal(),
                    route: Some(&target.key),
                    exchange: crate::pipeline::FrameCtx::next_exchange(),
                    ..crate::pipeline::FrameCtx::new(
                        held.core().id(),
                        crate::pipeline::Direction::ClientToServer,
                    )
                };
                front.pipeline.answered(&ctx, &frame, &answer, "authz");
                let status = status_of(&answer);
                return Ok(reply::json_response(status, answer.into_raw()));
            }
            let params: Value = serde_json::from_slice::<Value>(frame.raw())
                .map(|v| v["params"].clone())
                .unwrap_or(Value::Null);
            let l = held.listen(&id, Filter::parse(&params)).await;
            let first = encode_event(
                None,
                Some("message"),
                &String::from_utf8_lossy(l.ack.raw()),
                None,
            );
            Ok(reply::sse(frames_body(
                vec![first],
                l.rx,
                KEEPALIVE,
                l.guard,
            )))
        }
        _ => respond(held.call(&frame).await?, id.as_ref()).await,
    }
}

fn bad(msg: &str) -> ProxyError {
    ProxyError::bad(crate::error::Refusal::Malformed, INVALID_REQUEST, msg)
}

/// JSON when the answer comes first, else an event stream of the notifications and the answer
/// (which ends it). Dropping the response early cancels the request upstream.
async fn respond(
    mut call: Call,
    id: Option<&shadowcat_proto::RequestId>,
) -> Result<Response, ProxyError> {
    let Some(first) = call.rx.recv().await else {
        let err = error_frame(
            id,
            UPSTREAM_ERROR,
            "the request was dropped by a proxy rule before reaching the server",
        );
        return Ok(reply::json_response(StatusCode::OK, err.into_raw()));
    };
    if first.kind().is_reply() {
        let status = status_of(&first);
        return Ok(reply::json_response(status, first.into_raw()));
    }
    let event = encode_event(
        None,
        Some("message"),
        &String::from_utf8_lossy(first.raw()),
        None,
    );
    Ok(reply::sse(frames_body(
        vec![event],
        call.rx,
        KEEPALIVE,
        call.guard,
    )))
}

/// The HTTP status of a JSON answer (the one table: [`crate::error::stateless_answer_status`]).
pub(crate) fn status_of(frame: &Frame) -> StatusCode {
    if frame.kind() != FrameKind::Error {
        return StatusCode::OK;
    }
    crate::error::stateless_answer_status(error_code(frame.raw()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_error_code() {
        let f = |s: &str| Frame::parse_single(Bytes::from(s.to_string())).unwrap();
        assert_eq!(
            status_of(&f(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#)),
            200
        );
        assert_eq!(
            status_of(&f(
                r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"m"}}"#
            )),
            404
        );
        assert_eq!(
            status_of(&f(
                r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"m"}}"#
            )),
            400
        );
        assert_eq!(
            status_of(&f(
                r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"m"}}"#
            )),
            200
        );
    }
}
