//! HTTP responses of the front: JSON-RPC error bodies with the right status, JSON replies, 202,
//! and SSE response headers.

use crate::error::ProxyError;
use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use shadowcat_proto::RequestId;
use shadowcat_proto::era::SESSION_ID_HEADER;
use shadowcat_proto::error::error_bytes;

/// An error response: the mapped HTTP status and a JSON-RPC error body saying what was wrong.
pub fn error(e: &ProxyError, id: Option<&RequestId>) -> Response {
    let status = e.http_status();
    if status.is_server_error() {
        tracing::warn!(error = %e, %status, "request failed");
    } else {
        tracing::debug!(error = %e, %status, "request rejected");
    }
    let id = id.or(e.request_id());
    let body = error_bytes(id, e.jsonrpc_code(), &e.to_string(), e.data().as_ref());
    let mut r = json_response(status, body);
    r.headers_mut().extend(e.headers());
    r
}

/// A JSON body with a status.
pub fn json_response(status: StatusCode, body: Bytes) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// 202 Accepted, no body: notifications and responses were taken.
pub fn accepted() -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::ACCEPTED;
    r
}

/// Headers of an SSE response.
pub fn sse(body: Body) -> Response {
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

/// Add the proxy's session id header.
pub fn with_session(mut r: Response, session: Option<&str>) -> Response {
    if let Some(v) = session.and_then(|s| HeaderValue::from_str(s).ok()) {
        r.headers_mut().insert(SESSION_ID_HEADER, v);
    }
    r
}
