//! The 2026-07-28 era as an upstream exchange: which way a route's upstream takes stateless
//! requests ([`era`]), and the exchange itself for one that serves them ([`relay`]): one POST
//! per request with the metadata headers and every `Mcp-Param-*` header mirrored (never the
//! client's credentials: the upstream's own, with the 401 retry of [`credentials`]), the
//! answer streamed back as it arrives. The front guards it ([`super::guarded`]) and runs its
//! answer through the pipeline.

use super::credentials::{self, Credentials, SendError};
use super::detect::{self, Transport};
use super::{HttpClient, UpstreamSpec, client};
use crate::error::ProxyError;
use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header};
use shadowcat_proto::Frame;
use shadowcat_proto::era::{
    METHOD_HEADER, NAME_HEADER, PARAM_HEADER_PREFIX, PROTOCOL_VERSION_HEADER,
};
use shadowcat_tape::redact::url_label;

/// How a route's upstream takes 2026-07-28 requests.
pub(crate) enum Era {
    /// As they are: it serves 2026-07-28 (or nobody knows yet, and its own answer will tell).
    Relay {
        url: String,
        headers: Vec<(String, String)>,
        credentials: Option<Credentials>,
    },
    /// On a session held with it: it speaks only the session-based eras.
    Translate,
    /// Not at all (a tape replays a recorded session).
    Refuse,
}

/// How `spec` takes 2026-07-28 requests (probing an HTTP upstream's era, cached per URL).
pub(crate) async fn era(http: &HttpClient, spec: &UpstreamSpec) -> Era {
    match spec {
        UpstreamSpec::Http { url, headers, .. } | UpstreamSpec::Auto { url, headers } => {
            let credentials = match spec {
                UpstreamSpec::Http { credentials, .. } => credentials.clone(),
                _ => None,
            };
            let relay = Era::Relay {
                url: url.clone(),
                headers: headers.clone(),
                credentials,
            };
            if detect::cached(url) == Some(Transport::ModernOnly) {
                return relay;
            }
            match detect::serves_modern(url, headers, http).await {
                Some(false) => Era::Translate,
                Some(true) | None => relay,
            }
        }
        UpstreamSpec::Stdio { .. }
        | UpstreamSpec::Sse { .. }
        | UpstreamSpec::Composite(_)
        | UpstreamSpec::Shared(_) => Era::Translate,
        UpstreamSpec::Tape(_) => Era::Refuse,
    }
}

/// Relay one stateless request to an HTTP upstream as its own POST and stream its answer back
/// unchanged (status, content type, cache control). A `400`/`405` refusal not in 2026-era
/// terms makes the URL's era be probed again next time.
pub(crate) async fn relay(
    http: &HttpClient,
    url: &str,
    extra: &[(String, String)],
    credentials: Option<&Credentials>,
    client: &HeaderMap,
    frame: Frame,
) -> Result<Response, ProxyError> {
    let label = url_label(url);
    let uri: http::Uri = url
        .parse()
        .map_err(|e| ProxyError::UpstreamConnect(format!("invalid upstream URL `{label}`: {e}")))?;
    let mut head = HeaderMap::new();
    client::json_post_headers(&mut head);
    crate::tracecontext::upstream_headers(frame.raw(), &mut head);
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
    let resp = credentials::authorized(credentials, |token| {
        let (uri, head, body) = (&uri, &head, &body);
        http.send(move || {
            let mut req = client::request(http::Method::POST, uri, head, body.clone());
            if let Some(t) = &token {
                req.headers_mut().insert(header::AUTHORIZATION, t.clone());
            }
            req
        })
    })
    .await
    .map_err(|e| match e {
        SendError::Credentials(e) => {
            ProxyError::UpstreamConnect(format!("no access token for {label}: {e}"))
        }
        SendError::Http(e) => {
            ProxyError::UpstreamConnect(format!("cannot reach upstream {label}: {e}"))
        }
    })?;
    let status = resp.status();
    if matches!(status.as_u16(), 400 | 405) {
        // Refused: if not in 2026-era terms, the URL's era is probed again next time.
        let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
        let body = read_refusal(resp).await;
        if !refused_in_modern_terms(&body) {
            tracing::info!(url = %label, %status, "a relayed 2026-07-28 request was refused; probing the upstream's era again next time");
            detect::forget(url);
        }
        let mut r = Response::new(Body::from(body));
        *r.status_mut() = status;
        if let Some(ct) = content_type {
            r.headers_mut().insert(header::CONTENT_TYPE, ct);
        }
        return Ok(r);
    }
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
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
    *r.body_mut() = Body::new(resp.into_body());
    Ok(r)
}

/// Most bytes of a refused relay's body read (the rest is dropped).
const REFUSAL_LIMIT: usize = 64 * 1024;

async fn read_refusal(resp: client::Response) -> Bytes {
    use http_body_util::BodyExt;
    let mut body = bytes::BytesMut::new();
    let mut incoming = resp.into_body();
    while let Some(Ok(frame)) = incoming.frame().await {
        if let Ok(chunk) = frame.into_data() {
            body.extend_from_slice(&chunk);
        }
        if body.len() >= REFUSAL_LIMIT {
            break;
        }
    }
    body.freeze()
}

/// A JSON-RPC error a 2026-07-28 server answers with (header, version, capability, params or
/// parse errors): the URL still serves the era.
fn refused_in_modern_terms(body: &[u8]) -> bool {
    use shadowcat_proto::error::{INVALID_PARAMS, PARSE_ERROR};
    detect::is_modern_error(body)
        || matches!(
            shadowcat_proto::error::error_code(body),
            Some(INVALID_PARAMS | PARSE_ERROR)
        )
}
