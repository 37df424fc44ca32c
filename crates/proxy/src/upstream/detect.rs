//! Which era and transport an upstream URL speaks: the stateless 2026-07-28 era (answers
//! `server/discover`), session-based Streamable HTTP (2025-03-26…2025-11-25), or the legacy
//! HTTP+SSE transport of 2024-11-05.
//!
//! The probe follows the spec's backwards-compatibility algorithms, in this order, and stops as
//! soon as it knows enough for the session being created:
//!
//! 1. **Era** ([`serves_modern`]): `POST server/discover` with the 2026-07-28 headers and
//!    `_meta`. It is stateless on every kind of server (a session-based server refuses it for
//!    lack of a session id, or answers -32601 without creating one), so it never leaves an
//!    upstream session open.
//!    * a `DiscoverResult` listing `2026-07-28`, or a 2026-era error (-32020…-32022 naming
//!      `2026-07-28`): **modern**.
//!    * any other HTTP answer (4xx, other JSON-RPC errors, a result that is not a discover
//!      result): **not modern**.
//!    * no answer, 401/403/5xx: inconclusive, not cached (the request's own answer will tell).
//! 2. **Transport** (for `auto` URLs of sessions that need one; [`connect`]): a modern server is
//!    used as Streamable HTTP — if it refuses the client's `initialize` with a 2026-era error it
//!    is modern-only, and the HTTP upstream switches to the stateless translation
//!    ([`super::stateless`]), remembered as [`Transport::ModernOnly`]. Otherwise `POST
//!    initialize`:
//!    * `2xx`: Streamable HTTP. The probe's own upstream session is deleted again (`DELETE` with
//!      the `Mcp-Session-Id` it got, best effort).
//!    * `400`/`404`/`405` with a 2026-era error body: modern-only.
//!    * any other `400`/`404`/`405`: `GET` the URL (`Accept: text/event-stream`): an event stream
//!      whose first event is `endpoint` means HTTP+SSE, and that connection becomes the
//!      session's upstream (no second GET). Anything else: Streamable HTTP, not cached.
//!    * anything else (401, 403, 5xx…): Streamable HTTP, not cached — the session's own
//!      requests surface the error to the client.
//!    * no HTTP answer at all: the session fails (`UpstreamConnect`); nothing is cached.
//!
//! Results are cached per URL for the whole process and re-probed on failure: a cached
//! HTTP+SSE result when its GET fails, a Streamable result when an upstream `initialize` is
//! answered `400`/`404`/`405`, a modern result when a relayed 2026-07-28 request is answered
//! `400`/`404`/`405` without a 2026-era error ([`forget`] in each case).

use super::http::HttpUpstream;
use super::sse::SseUpstream;
use super::{HttpClient, Upstream, UpstreamCtx, UpstreamEvent};
use crate::error::ProxyError;
use bytes::{Bytes, BytesMut};
use http::{StatusCode, header};
use shadowcat_proto::era::{
    METHOD_HEADER, PROTOCOL_VERSION_HEADER, ProtocolVersion, SESSION_ID_HEADER,
};
use shadowcat_proto::error::{
    HEADER_MISMATCH, MISSING_CAPABILITY, UNSUPPORTED_VERSION, error_code,
};
use shadowcat_proto::sse::SseDecoder;
use shadowcat_tape::redact::url_label;
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::codec::Decoder;

/// The HTTP transports an upstream URL can speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Streamable HTTP with sessions (2025-03-26 and later; maybe 2026-07-28 as well).
    Streamable,
    /// HTTP+SSE (2024-11-05): GET an event stream, POST to the endpoint it names.
    Sse,
    /// Streamable HTTP serving only the stateless 2026-07-28 era: it refuses `initialize`.
    ModernOnly,
}

/// What the process knows about one URL.
#[derive(Debug, Clone, Copy, Default)]
struct Known {
    /// Answers `server/discover` (2026-07-28).
    modern: Option<bool>,
    /// The transport sessions use.
    transport: Option<Transport>,
}

/// Most URLs remembered (absolute-form URIs can name any number of them).
const CACHE_CAP: usize = 1024;
/// How long a probe may take to be answered.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of a probe's answer read.
const PROBE_BODY_LIMIT: usize = 64 * 1024;

static CACHE: LazyLock<Mutex<HashMap<String, Known>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn cache() -> std::sync::MutexGuard<'static, HashMap<String, Known>> {
    crate::sync::lock(&CACHE)
}

/// The cache key of a URL: its normalised form.
fn key(url: &str) -> String {
    reqwest::Url::parse(url)
        .map(|u| u.to_string())
        .unwrap_or_else(|_| url.to_string())
}

/// The transport the process detected for `url`, if it probed it.
pub fn cached(url: &str) -> Option<Transport> {
    cache().get(&key(url)).and_then(|k| k.transport)
}

/// Whether `url` answered `server/discover`, if the process probed it.
pub fn cached_modern(url: &str) -> Option<bool> {
    cache().get(&key(url)).and_then(|k| k.modern)
}

/// Forget what was detected for `url`: the next session or request probes again.
pub fn forget(url: &str) {
    let k = key(url);
    let mut c = cache();
    if c.remove(&k).is_some() {
        tracing::info!(url = %url_label(&k), "forgot the detected era and transport of an upstream");
    }
}

fn update(url: &str, f: impl FnOnce(&mut Known)) {
    let k = key(url);
    let mut c = cache();
    if !c.contains_key(&k)
        && c.len() >= CACHE_CAP
        && let Some(old) = c.keys().next().cloned()
    {
        c.remove(&old);
    }
    f(c.entry(k).or_default());
}

/// Remember the transport of `url`.
pub(crate) fn remember(url: &str, t: Transport) {
    update(url, |k| {
        k.transport = Some(t);
        if t == Transport::ModernOnly {
            k.modern = Some(true);
        }
    });
}

fn remember_modern(url: &str, modern: bool) {
    update(url, |k| k.modern = Some(modern));
}

/// Whether `url` serves the stateless 2026-07-28 era: the cached answer, else a
/// `server/discover` probe. `None` when the probe was inconclusive (nothing cached).
pub async fn serves_modern(
    url: &str,
    headers: &[(String, String)],
    http: &HttpClient,
) -> Option<bool> {
    if let Some(m) = cached_modern(url) {
        return Some(m);
    }
    let answer = probe_discover(url, headers, http).await;
    match answer {
        Some(m) => {
            remember_modern(url, m);
            tracing::info!(
                url,
                modern = m,
                "probed the upstream's era with server/discover"
            );
        }
        None => tracing::debug!(url = %url_label(url), "inconclusive server/discover probe"),
    }
    answer
}

/// Create the upstream of a session for an `auto` URL: the cached transport, else the probe's.
pub(super) async fn connect(
    url: &str,
    headers: &[(String, String)],
    ctx: UpstreamCtx,
    events: mpsc::Sender<UpstreamEvent>,
) -> Result<Upstream, ProxyError> {
    match cached(url) {
        Some(Transport::Streamable | Transport::ModernOnly) => {
            // A modern-only URL makes the HTTP upstream start in its stateless mode.
            return Ok(Upstream::Http(HttpUpstream::new(
                url, headers, ctx, events,
            )?));
        }
        Some(Transport::Sse) => {
            match SseUpstream::connect(url, headers, ctx.clone(), events.clone()).await {
                Ok(up) => return Ok(Upstream::Sse(up)),
                Err(e) => {
                    tracing::info!(error = %e, url = %url_label(url), "cached HTTP+SSE upstream failed; probing again");
                    forget(url);
                }
            }
        }
        None => {}
    }
    if serves_modern(url, headers, &ctx.http).await == Some(true) {
        // Dual-era servers take the client's own `initialize`; a modern-only one refuses it,
        // and the HTTP upstream switches to the stateless translation then.
        tracing::info!(url = %url_label(url), "upstream serves 2026-07-28; using Streamable HTTP");
        return Ok(Upstream::Http(HttpUpstream::new(
            url, headers, ctx, events,
        )?));
    }
    match probe_streamable(url, headers, &ctx).await? {
        Probe::Streamable { cache } => {
            if cache {
                remember(url, Transport::Streamable);
            }
            tracing::info!(url = %url_label(url), cached = cache, "upstream speaks Streamable HTTP");
            Ok(Upstream::Http(HttpUpstream::new(
                url, headers, ctx, events,
            )?))
        }
        Probe::ModernOnly => {
            remember(url, Transport::ModernOnly);
            tracing::info!(
                url,
                "upstream serves only 2026-07-28; translating sessions for it"
            );
            Ok(Upstream::Http(HttpUpstream::new(
                url, headers, ctx, events,
            )?))
        }
        Probe::TryLegacy(status) => {
            match SseUpstream::connect(url, headers, ctx.clone(), events.clone()).await {
                Ok(up) => {
                    remember(url, Transport::Sse);
                    tracing::info!(url = %url_label(url), "upstream speaks HTTP+SSE (2024-11-05)");
                    Ok(Upstream::Sse(up))
                }
                Err(e) => {
                    tracing::info!(
                        url = %url_label(url), %status, error = %e,
                        "upstream refused initialize and is not HTTP+SSE either; using Streamable HTTP"
                    );
                    Ok(Upstream::Http(HttpUpstream::new(
                        url, headers, ctx, events,
                    )?))
                }
            }
        }
    }
}

fn discover_body() -> String {
    serde_json::json!({
        "jsonrpc": "2.0",
        "id": "shadowcat-era-probe",
        "method": "server/discover",
        "params": {"_meta": {
            "io.modelcontextprotocol/protocolVersion": ProtocolVersion::V2026_07_28.as_str(),
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": {"name": "shadowcat-era-probe", "version": env!("CARGO_PKG_VERSION")},
        }}
    })
    .to_string()
}

/// `Some(true)`: the answer proves a 2026-07-28 server; `Some(false)`: an HTTP answer that
/// proves the opposite; `None`: no conclusion.
async fn probe_discover(
    url: &str,
    headers: &[(String, String)],
    http: &HttpClient,
) -> Option<bool> {
    let parsed = super::sse::parse_url(url).ok()?;
    let extra = super::sse::header_map(headers).ok()?;
    let resp = http
        .client()
        .post(parsed)
        .headers(extra)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json, text/event-stream")
        .header(
            PROTOCOL_VERSION_HEADER,
            ProtocolVersion::V2026_07_28.as_str(),
        )
        .header(METHOD_HEADER, "server/discover")
        .timeout(PROBE_TIMEOUT)
        .body(discover_body())
        .send()
        .await
        .ok()?;
    let status = resp.status();
    if matches!(status.as_u16(), 401 | 403 | 407 | 408 | 429) || status.is_server_error() {
        return None;
    }
    let sse = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let body = read_limited(resp).await;
    let json = if sse {
        first_sse_data(body)
    } else {
        Some(body.freeze())
    };
    Some(json.is_some_and(|j| is_discover_answer(&j)))
}

async fn read_limited(mut resp: reqwest::Response) -> BytesMut {
    let mut body = BytesMut::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() >= PROBE_BODY_LIMIT {
            break;
        }
    }
    body
}

/// The first event with data of an SSE body.
fn first_sse_data(mut body: BytesMut) -> Option<Bytes> {
    let mut decoder = SseDecoder::new(PROBE_BODY_LIMIT);
    while let Ok(Some(ev)) = decoder.decode(&mut body) {
        if let Some(d) = ev.data.filter(|d| !d.trim().is_empty()) {
            return Some(Bytes::from(d));
        }
    }
    None
}

/// A `DiscoverResult` listing 2026-07-28, or a 2026-era error that names it.
fn is_discover_answer(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Answer {
        result: Option<R>,
        error: Option<E>,
    }
    #[derive(serde::Deserialize)]
    struct R {
        #[serde(rename = "supportedVersions")]
        supported_versions: Option<Vec<String>>,
    }
    #[derive(serde::Deserialize)]
    struct E {
        code: i64,
        data: Option<serde_json::Value>,
    }
    let Ok(a) = serde_json::from_slice::<Answer>(body) else {
        return false;
    };
    let modern = ProtocolVersion::V2026_07_28.as_str();
    if let Some(r) = a.result {
        return r
            .supported_versions
            .is_some_and(|v| v.iter().any(|s| s == modern));
    }
    a.error.is_some_and(|e| match e.code {
        UNSUPPORTED_VERSION => e.data.is_some_and(|d| {
            d["supported"]
                .as_array()
                .is_some_and(|s| s.iter().any(|v| v.as_str() == Some(modern)))
        }),
        HEADER_MISMATCH | MISSING_CAPABILITY => true,
        _ => false,
    })
}

enum Probe {
    /// Speak Streamable HTTP; `cache`: the answer was conclusive.
    Streamable { cache: bool },
    /// `initialize` was refused with a 2026-era error: the server is modern-only.
    ModernOnly,
    /// `initialize` was refused with this status: try HTTP+SSE.
    TryLegacy(StatusCode),
}

fn probe_body() -> String {
    serde_json::json!({
        "jsonrpc": "2.0",
        "id": "shadowcat-transport-probe",
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "shadowcat-transport-probe", "version": env!("CARGO_PKG_VERSION")}
        }
    })
    .to_string()
}

async fn probe_streamable(
    url: &str,
    headers: &[(String, String)],
    ctx: &UpstreamCtx,
) -> Result<Probe, ProxyError> {
    let parsed = super::sse::parse_url(url)?;
    let extra = super::sse::header_map(headers)?;
    let client = ctx.http.client();
    let resp = client
        .post(parsed.clone())
        .headers(extra.clone())
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json, text/event-stream")
        .timeout(PROBE_TIMEOUT)
        .body(probe_body())
        .send()
        .await
        .map_err(|e| {
            ProxyError::UpstreamConnect(format!(
                "cannot reach upstream {}: {}",
                url_label(url),
                e.without_url()
            ))
        })?;
    let status = resp.status();
    if status.is_success() {
        // The probe opened an upstream session: end it (the body is not needed).
        if let Some(sid) = resp.headers().get(SESSION_ID_HEADER).cloned() {
            drop(resp);
            let deleted = client
                .delete(parsed)
                .headers(extra)
                .header(SESSION_ID_HEADER, sid)
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if let Err(e) = deleted {
                tracing::debug!(error = %e.without_url(), "could not delete the probe's upstream session");
            }
        }
        return Ok(Probe::Streamable { cache: true });
    }
    if !matches!(status.as_u16(), 400 | 404 | 405) {
        tracing::debug!(url = %url_label(url), %status, "inconclusive transport probe");
        return Ok(Probe::Streamable { cache: false });
    }
    let body = super::sse::read_some(resp).await;
    if is_modern_error(&body) {
        return Ok(Probe::ModernOnly);
    }
    Ok(Probe::TryLegacy(status))
}

/// A JSON-RPC error body of the 2026-07-28 era: the server speaks (modern) Streamable HTTP.
pub(crate) fn is_modern_error(body: &[u8]) -> bool {
    matches!(
        error_code(body),
        Some(HEADER_MISMATCH | MISSING_CAPABILITY | UNSUPPORTED_VERSION)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_is_keyed_by_normalised_url_and_forgettable() {
        let url = "HTTP://Example.test:80/detect-test";
        assert_eq!(cached(url), None);
        remember(url, Transport::Sse);
        assert_eq!(
            cached("http://example.test/detect-test"),
            Some(Transport::Sse)
        );
        forget("http://example.test:80/detect-test");
        assert_eq!(cached(url), None);
    }

    #[test]
    fn modern_errors_are_recognised() {
        assert!(is_modern_error(
            br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32022,"message":"x"}}"#
        ));
        assert!(!is_modern_error(
            br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"x"}}"#
        ));
        assert!(!is_modern_error(b"Cannot POST /sse"));
    }

    #[test]
    fn discover_answers_prove_the_era() {
        assert!(is_discover_answer(
            br#"{"jsonrpc":"2.0","id":1,"result":{"supportedVersions":["2026-07-28"],"capabilities":{}}}"#
        ));
        // A result that is not a discover result (a server answering anything with `{}`).
        assert!(!is_discover_answer(
            br#"{"jsonrpc":"2.0","id":1,"result":{}}"#
        ));
        assert!(!is_discover_answer(
            br#"{"jsonrpc":"2.0","id":1,"result":{"supportedVersions":["2099-01-01"]}}"#
        ));
        assert!(is_discover_answer(
            br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32022,"message":"x","data":{"supported":["2026-07-28"]}}}"#
        ));
        assert!(!is_discover_answer(
            br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32022,"message":"x","data":{"supported":["2099-01-01"]}}}"#
        ));
        assert!(!is_discover_answer(
            br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Bad Request: No valid session ID"}}"#
        ));
        assert!(!is_discover_answer(b"Not Found"));
        let sse = BytesMut::from(
            &b": hi\n\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n"[..],
        );
        assert_eq!(
            first_sse_data(sse).as_deref(),
            Some(&br#"{"jsonrpc":"2.0","id":1,"result":{}}"#[..])
        );
    }
}
