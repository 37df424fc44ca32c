//! The stateless era (2026-07-28) on the same endpoint as the session-based eras: chosen per
//! request by `MCP-Protocol-Version`.
//!
//! * The metadata headers are validated against the body first: `MCP-Protocol-Version` must
//!   equal `params._meta["io.modelcontextprotocol/protocolVersion"]`, `Mcp-Method` the method,
//!   and `Mcp-Name` (plain or `=?base64?…?=`) the tool/prompt name or resource URI of
//!   `tools/call`, `prompts/get`, `resources/read`. Failures: 400 + JSON-RPC -32020.
//! * No sessions: `Mcp-Session-Id` is ignored, none is minted; GET and DELETE with this version
//!   get 405.
//! * HTTP upstreams that serve 2026-07-28 (a `server/discover` probe, cached per URL: see
//!   [`crate::upstream::detect`]): the request is relayed as its own POST with the metadata
//!   headers and every `Mcp-Param-*` header (never the client's credentials), and the answer
//!   (JSON or SSE) is streamed back as it arrives. Closing the response closes the upstream
//!   request, which is the 2026-07-28 cancellation signal. A relayed request refused with
//!   `400`/`405` and no 2026-era error makes the next request probe again.
//! * Upstreams that speak only the session-based eras (stdio children, HTTP+SSE servers,
//!   Streamable HTTP servers that do not answer `server/discover`): the request is translated
//!   onto a session the proxy holds with the server ([`crate::translate`]).
//! * Tape replays (recorded sessions) answer 400 + -32022 listing the session-based versions,
//!   which makes dual-era clients fall back to `initialize`.

use super::answers;
use super::{HttpFront, Target, reply};
use crate::error::ProxyError;
use crate::pipeline::{Direction, FrameCtx, HttpMeta, Outcome, Transport as PipeTransport};
use crate::upstream::guarded;
use crate::upstream::modern::{Era, era, relay};
use axum::response::Response;
use bytes::Bytes;
use http::HeaderMap;
use shadowcat_proto::era::{
    META_PROTOCOL_VERSION, METHOD_HEADER, NAME_HEADER, PARAM_HEADER_PREFIX, ProtocolVersion,
};
use shadowcat_proto::error::{HEADER_MISMATCH, INVALID_REQUEST};
use shadowcat_proto::{Frame, FrameKind, Message, header_value};
use std::sync::Arc;

fn mismatch(frame: &Frame, msg: String) -> ProxyError {
    let _ = frame;
    ProxyError::bad(
        crate::error::Refusal::Malformed,
        HEADER_MISMATCH,
        format!("Header mismatch: {msg}"),
    )
}

/// The `_meta` protocol version of a request body.
fn body_version(frame: &Frame) -> Option<String> {
    crate::translate::envelope::request_meta(frame)?
        .get(META_PROTOCOL_VERSION)?
        .as_str()
        .map(str::to_owned)
}

/// Check the metadata headers against the body (2026-07-28 "Server Validation").
pub fn validate(
    headers: &HeaderMap,
    frame: &Frame,
    version: ProtocolVersion,
) -> Result<(), ProxyError> {
    let method = frame.method().unwrap_or("");
    if frame.kind() == FrameKind::Request {
        match body_version(frame) {
            Some(v) if v == version.as_str() => {}
            Some(v) => {
                return Err(mismatch(
                    frame,
                    format!(
                        "MCP-Protocol-Version header `{version}` does not match body `_meta` version `{v}`"
                    ),
                ));
            }
            None => {
                return Err(mismatch(
                    frame,
                    format!("the request has no `params._meta[\"{META_PROTOCOL_VERSION}\"]`"),
                ));
            }
        }
    }
    let Some(m) = headers.get(METHOD_HEADER) else {
        return Err(mismatch(frame, "the Mcp-Method header is missing".into()));
    };
    if m.as_bytes() != method.as_bytes() {
        let shown = String::from_utf8_lossy(m.as_bytes());
        return Err(mismatch(
            frame,
            format!("Mcp-Method header `{shown}` does not match body method `{method}`"),
        ));
    }
    let needs_name = matches!(method, "tools/call" | "resources/read" | "prompts/get");
    if needs_name {
        let body_name = frame.target().unwrap_or("");
        let Some(raw) = headers.get(NAME_HEADER) else {
            return Err(mismatch(
                frame,
                format!("the Mcp-Name header is missing (required for {method})"),
            ));
        };
        let Some(name) = header_value::decode(raw.as_bytes()) else {
            return Err(mismatch(
                frame,
                "the Mcp-Name header has invalid characters or bad Base64".into(),
            ));
        };
        if name != body_name {
            return Err(mismatch(
                frame,
                format!("Mcp-Name header value `{name}` does not match body value `{body_name}`"),
            ));
        }
    }
    for (k, v) in headers {
        if k.as_str().starts_with(PARAM_HEADER_PREFIX)
            && header_value::decode(v.as_bytes()).is_none()
        {
            return Err(mismatch(
                frame,
                format!("header `{k}` has invalid characters or bad Base64"),
            ));
        }
    }
    Ok(())
}

/// A 2026-07-28 POST.
pub async fn handle(
    front: &HttpFront,
    target: Target,
    headers: HeaderMap,
    client_url: Option<&str>,
    raw: Bytes,
    version: ProtocolVersion,
) -> Result<Response, ProxyError> {
    let msg = Message::parse(raw)?;
    super::note_message(&msg);
    let frame = match msg {
        Message::Single(f) => f,
        Message::Batch(_) => {
            return Err(ProxyError::bad(
                crate::error::Refusal::Malformed,
                INVALID_REQUEST,
                "JSON-RPC batches are not allowed in 2026-07-28",
            ));
        }
    };
    if frame.kind().is_reply() {
        return Err(ProxyError::bad(
            crate::error::Refusal::Malformed,
            INVALID_REQUEST,
            "clients must not send JSON-RPC responses in 2026-07-28",
        ));
    }
    let id = frame.id().cloned();
    answer(
        serve(front, target, headers, client_url, frame, version).await,
        id.as_ref(),
    )
}

/// Errors of a parsed request carry its id.
fn answer(
    r: Result<Response, ProxyError>,
    id: Option<&shadowcat_proto::RequestId>,
) -> Result<Response, ProxyError> {
    Ok(r.unwrap_or_else(|e| reply::error(&e, id)))
}

async fn serve(
    front: &HttpFront,
    target: Target,
    headers: HeaderMap,
    client_url: Option<&str>,
    frame: Frame,
    version: ProtocolVersion,
) -> Result<Response, ProxyError> {
    validate(&headers, &frame, version)?;
    let http = front.http_for(&target);
    let (url, extra, credentials) = match era(http, &target.spec).await {
        Era::Relay {
            url,
            headers,
            credentials,
        } => (url, headers, credentials),
        // The held session's pipeline runs on the translated frames.
        Era::Translate => return super::translated::handle(front, &target, frame).await,
        Era::Refuse => {
            return Err(ProxyError::UnsupportedVersion {
                requested: version.as_str().to_string(),
                supported: ProtocolVersion::ALL
                    .iter()
                    .filter(|v| !v.is_modern())
                    .map(|v| v.as_str())
                    .collect(),
            });
        }
    };
    // No session: the request's own principal is what `principal =` rules match, and its
    // answers pass through the hooks here (answers.rs).
    let principal = target.placer.principal();
    let grant = target.placer.grant();
    let exchange = FrameCtx::next_exchange();
    let ctx = FrameCtx {
        principal,
        transport: PipeTransport::Http(HttpMeta {
            method: "POST",
            status: None,
            content_type: None,
            headers: Some(&headers),
            url: client_url,
            sse_id: None,
        }),
        route: Some(&target.key),
        exchange,
        grant: grant.as_ref(),
        ..FrameCtx::new("-", Direction::ClientToServer)
    };
    let frame = match front.pipeline.process(&ctx, frame).await {
        Outcome::Forward(f) => f,
        Outcome::Reply(answer) => {
            let status = super::translated::status_of(&answer);
            return Ok(reply::json_response(status, answer.into_raw()));
        }
        Outcome::Drop => return Ok(reply::accepted()),
    };
    // Guarded like a session's requests: the placed upstream's breaker, retry budget and
    // request timeout, or the front's request timeout.
    let guard = target
        .placer
        .stateless_guard()
        .or_else(|| front.guard.clone());
    let method = frame.method().unwrap_or("").to_string();
    let ask = guarded::Ask {
        method: &method,
        id: frame.id().cloned(),
        limit: front.config.upstream.max_message,
    };
    let send = || {
        relay(
            http,
            &url,
            &extra,
            credentials.as_ref(),
            &headers,
            frame.clone(),
        )
    };
    let answer = match guarded::exchange(guard, ask, send).await {
        Ok(answer) => answer,
        Err(e) => {
            if let Some(id) = frame.id() {
                front.pipeline.failed(&ctx, id, &e);
            }
            return Err(e);
        }
    };
    // From here on, an answer that never passes the hooks is reported to them as failed.
    let asker = answers::Asker {
        pipeline: front.pipeline.clone(),
        principal: principal.map(Arc::from),
        route: target.key.clone(),
        exchange,
        id: frame.id().cloned(),
        limit: front.config.upstream.max_message,
        answered: false,
    };
    Ok(answers::through_pipeline(answer, asker).await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn frame(s: &'static str) -> Frame {
        Frame::parse_single(Bytes::from_static(s.as_bytes())).unwrap()
    }
    const CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_weather","arguments":{},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn code(r: Result<(), ProxyError>) -> Option<i64> {
        r.err().map(|e| e.jsonrpc_code())
    }

    #[test]
    fn headers_must_mirror_the_body() {
        let v = ProtocolVersion::V2026_07_28;
        let f = frame(CALL);
        let ok = headers(&[("mcp-method", "tools/call"), ("mcp-name", "get_weather")]);
        assert_eq!(code(validate(&ok, &f, v)), None);
        let b64 = headers(&[
            ("mcp-method", "tools/call"),
            ("mcp-name", "=?base64?Z2V0X3dlYXRoZXI=?="),
        ]);
        assert_eq!(code(validate(&b64, &f, v)), None);
        for bad in [
            headers(&[("mcp-name", "get_weather")]),
            headers(&[("mcp-method", "tools/list"), ("mcp-name", "get_weather")]),
            headers(&[("mcp-method", "tools/call")]),
            headers(&[("mcp-method", "tools/call"), ("mcp-name", "other")]),
            headers(&[
                ("mcp-method", "tools/call"),
                ("mcp-name", "get_weather"),
                ("mcp-param-x", "=?base64?%%?="),
            ]),
        ] {
            assert_eq!(code(validate(&bad, &f, v)), Some(-32020), "{bad:?}");
        }
        let no_meta = frame(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#);
        assert_eq!(
            code(validate(
                &headers(&[("mcp-method", "tools/list")]),
                &no_meta,
                v
            )),
            Some(-32020)
        );
        let other = frame(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2025-11-25"}}}"#,
        );
        let e = validate(&headers(&[("mcp-method", "tools/list")]), &other, v).unwrap_err();
        assert!(e.to_string().contains("does not match body"), "{e}");
    }
}
