//! JSON-RPC error codes and the error frames the proxy itself emits.

use crate::frame::{Frame, RequestId};
use bytes::Bytes;
use serde::Serialize;

/// Invalid JSON was received.
pub const PARSE_ERROR: i64 = -32700;
/// The JSON is not a valid JSON-RPC message (or not allowed here, e.g. a batch outside 2025-03-26).
pub const INVALID_REQUEST: i64 = -32600;
/// The method does not exist or is not available.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// Invalid method parameters.
pub const INVALID_PARAMS: i64 = -32602;
/// Internal error of the proxy.
pub const INTERNAL_ERROR: i64 = -32603;
/// The upstream server could not be reached, failed, or went away before answering.
pub const UPSTREAM_ERROR: i64 = -32000;
/// The upstream did not answer within the proxy's request timeout.
pub const REQUEST_TIMEOUT: i64 = -32001;
/// 2026-07-28 `HeaderMismatch`: the metadata headers are missing, malformed or disagree with
/// the body.
pub const HEADER_MISMATCH: i64 = -32020;
/// 2026-07-28 `MissingRequiredClientCapabilityError`.
pub const MISSING_CAPABILITY: i64 = -32021;
/// 2026-07-28 `UnsupportedProtocolVersionError` (`data.supported` lists what is served).
pub const UNSUPPORTED_VERSION: i64 = -32022;
/// A rate limit refused the request (Shadowcat's own code).
pub const RATE_LIMITED: i64 = -32029;

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: i64,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a serde_json::Value>,
}

#[derive(Serialize)]
struct ErrorResponse<'a> {
    jsonrpc: &'static str,
    id: Option<&'a RequestId>,
    error: ErrorBody<'a>,
}

/// Serialise a JSON-RPC error response. `id` is `None` when the request id is unknown
/// (it is then written as `null`, as JSON-RPC requires).
pub fn error_bytes(
    id: Option<&RequestId>,
    code: i64,
    message: &str,
    data: Option<&serde_json::Value>,
) -> Bytes {
    let body = ErrorResponse {
        jsonrpc: "2.0",
        id,
        error: ErrorBody {
            code,
            message,
            data,
        },
    };
    // Serialising plain structs of strings and integers cannot fail.
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

/// The `error.code` of a JSON-RPC error response body, if it is one.
pub fn error_code(body: &[u8]) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct E {
        error: C,
    }
    #[derive(serde::Deserialize)]
    struct C {
        code: i64,
    }
    serde_json::from_slice::<E>(body).ok().map(|e| e.error.code)
}

/// A JSON-RPC error response as a [`Frame`].
pub fn error_frame(id: Option<&RequestId>, code: i64, message: &str) -> Frame {
    Frame::from_trusted_error(error_bytes(id, code, message, None), id.cloned(), code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameKind;

    #[test]
    fn error_codes_are_read_from_bodies() {
        assert_eq!(
            error_code(br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"m"}}"#),
            Some(-32601)
        );
        assert_eq!(error_code(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#), None);
        assert_eq!(error_code(b"Bad Request"), None);
    }

    #[test]
    fn error_frame_keeps_id_type_and_parses_back() {
        let f = error_frame(Some(&RequestId::Number(7)), UPSTREAM_ERROR, "gone");
        let v: serde_json::Value = serde_json::from_slice(f.raw()).unwrap();
        assert_eq!(v["id"], serde_json::json!(7));
        assert_eq!(v["error"]["code"], serde_json::json!(-32000));
        assert_eq!(f.proxy_error(), Some(UPSTREAM_ERROR));
        let back = Frame::parse_single(f.raw().clone()).unwrap();
        assert_eq!(
            back.proxy_error(),
            None,
            "a received frame is never the proxy's own"
        );
        assert_eq!(back.kind(), FrameKind::Error);
        assert_eq!(back.id(), Some(&RequestId::Number(7)));

        let s = error_frame(Some(&RequestId::String("7".into())), PARSE_ERROR, "x");
        let v: serde_json::Value = serde_json::from_slice(s.raw()).unwrap();
        assert_eq!(v["id"], serde_json::json!("7"));
        let n = error_frame(None, PARSE_ERROR, "x");
        let v: serde_json::Value = serde_json::from_slice(n.raw()).unwrap();
        assert!(v["id"].is_null());
    }
}
