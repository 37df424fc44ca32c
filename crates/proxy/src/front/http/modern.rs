//! The stateless era (2026-07-28) on the same endpoint as the session-based eras: chosen per
//! request by `MCP-Protocol-Version`.
//!
//! * The metadata headers are validated against the body first: `MCP-Protocol-Version` must
//!   equal `params._meta["io.modelcontextprotocol/protocolVersion"]`, `Mcp-Method` the method,
//!   and `Mcp-Name` (plain or `=?base64?…?=`) the tool/prompt name or resource URI of
//!   `tools/call`, `prompts/get`, `resources/read`. Failures: 400 + JSON-RPC -32020.
//! * No sessions: `Mcp-Session-Id` is ignored, none is minted; GET and DELETE with this version
//!   get 405.
//! * HTTP upstreams: the request is relayed as its own POST with the metadata headers and every
//!   `Mcp-Param-*` header (never the client's credentials), and the answer (JSON or SSE) is
//!   streamed back as it arrives. Closing the response closes the upstream request, which is
//!   the 2026-07-28 cancellation signal.
//! * stdio upstreams speak the session-based eras: the request is answered 400 + -32022 listing
//!   the versions this route serves, which makes dual-era clients fall back to `initialize`.

use super::{HttpFront, Target, reply};
use crate::error::ProxyError;
use crate::pipeline::{Direction, FrameCtx, Outcome};
use crate::upstream::UpstreamSpec;
use crate::upstream::credentials::{self, Credentials, SendError};
use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use shadowcat_proto::era::{
    META_PROTOCOL_VERSION, METHOD_HEADER, NAME_HEADER, PARAM_HEADER_PREFIX,
    PROTOCOL_VERSION_HEADER, ProtocolVersion,
};
use shadowcat_proto::error::{HEADER_MISMATCH, INVALID_REQUEST};
use shadowcat_proto::{Frame, FrameKind, Message, header_value};

fn mismatch(frame: &Frame, msg: String) -> ProxyError {
    let _ = frame;
    ProxyError::bad(
        StatusCode::BAD_REQUEST,
        HEADER_MISMATCH,
        format!("Header mismatch: {msg}"),
    )
}

/// The `_meta` protocol version of a request body.
fn body_version(frame: &Frame) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Body {
        params: Option<Params>,
    }
    #[derive(serde::Deserialize)]
    struct Params {
        #[serde(rename = "_meta")]
        meta: Option<serde_json::Map<String, serde_json::Value>>,
    }
    let b: Body = serde_json::from_slice(frame.raw()).ok()?;
    b.params?
        .meta?
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
    raw: Bytes,
    version: ProtocolVersion,
) -> Result<Response, ProxyError> {
    let frame = match Message::parse(raw)? {
        Message::Single(f) => f,
        Message::Batch(_) => {
            return Err(ProxyError::bad(
                StatusCode::BAD_REQUEST,
                INVALID_REQUEST,
                "JSON-RPC batches are not allowed in 2026-07-28",
            ));
        }
    };
    if frame.kind().is_reply() {
        return Err(ProxyError::bad(
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            "clients must not send JSON-RPC responses in 2026-07-28",
        ));
    }
    let id = frame.id().cloned();
    answer(
        serve(front, target, headers, frame, version).await,
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
    frame: Frame,
    version: ProtocolVersion,
) -> Result<Response, ProxyError> {
    validate(&headers, &frame, version)?;
    let ctx = FrameCtx::new("-", Direction::ClientToServer);
    let frame = match front.pipeline.process(&ctx, frame).await {
        Outcome::Forward(f) => f,
        Outcome::Reply(answer) => {
            return Ok(reply::json_response(StatusCode::OK, answer.into_raw()));
        }
        Outcome::Drop => return Ok(reply::accepted()),
    };
    match &target.spec {
        UpstreamSpec::Http {
            url,
            headers: extra,
            credentials,
        } => relay(front, url, extra, credentials.as_ref(), &headers, frame).await,
        _ => Err(ProxyError::UnsupportedVersion {
            requested: version.as_str().to_string(),
            supported: ProtocolVersion::ALL
                .iter()
                .filter(|v| !v.is_modern())
                .map(|v| v.as_str())
                .collect(),
        }),
    }
}

/// Relay one stateless request to an HTTP upstream and stream its answer back unchanged.
async fn relay(
    front: &HttpFront,
    url: &str,
    extra: &[(String, String)],
    credentials: Option<&Credentials>,
    client: &HeaderMap,
    frame: Frame,
) -> Result<Response, ProxyError> {
    let mut head = HeaderMap::new();
    head.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    head.insert(
        header::ACCEPT,
        HeaderValue::from_static("application/json, text/event-stream"),
    );
    for (k, v) in extra {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::try_from(k.as_str()),
            HeaderValue::try_from(v.as_str()),
        ) {
            head.append(k, v);
        }
    }
    for (k, v) in client {
        let name = k.as_str();
        let mirrored = name == PROTOCOL_VERSION_HEADER
            || name == METHOD_HEADER
            || name == NAME_HEADER
            || name.starts_with(PARAM_HEADER_PREFIX);
        if mirrored {
            head.append(k, v.clone());
        }
    }
    let body = frame.into_raw();
    let build = || {
        front
            .http
            .client()
            .post(url)
            .headers(head.clone())
            .body(body.clone())
    };
    let resp = credentials::send(credentials, build)
        .await
        .map_err(|e| match e {
            SendError::Credentials(e) => {
                ProxyError::UpstreamConnect(format!("no access token for {url}: {e}"))
            }
            SendError::Http(e) => {
                ProxyError::UpstreamConnect(format!("cannot reach upstream {url}: {e}"))
            }
        })?;
    let mut r = Response::new(Body::empty());
    *r.status_mut() = resp.status();
    for name in [header::CONTENT_TYPE, header::CACHE_CONTROL] {
        if let Some(v) = resp.headers().get(&name) {
            r.headers_mut().insert(name, v.clone());
        }
    }
    if r.headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
    {
        r.headers_mut()
            .insert("x-accel-buffering", http::HeaderValue::from_static("no"));
    }
    *r.body_mut() = Body::from_stream(resp.bytes_stream());
    Ok(r)
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
