//! Which HTTP transport an upstream URL speaks, for `UpstreamSpec::Auto`: Streamable HTTP, or
//! the legacy HTTP+SSE transport of 2024-11-05.
//!
//! The probe is the spec's backwards-compatibility algorithm, run when a session is created and
//! the answer is not cached yet:
//!
//! 1. `POST` an `initialize` to the URL (`Accept: application/json, text/event-stream`).
//!    * `2xx`: Streamable HTTP. The probe's own upstream session is deleted again (`DELETE`
//!      with the `Mcp-Session-Id` it got, best effort).
//!    * `400`/`404`/`405` with a JSON-RPC error body of the 2026-07-28 era (-32020…-32022): a
//!      modern Streamable server.
//!    * any other `400`/`404`/`405`: step 2.
//!    * anything else (401, 403, 5xx…): Streamable HTTP, not cached — the session's own
//!      requests surface the error to the client.
//!    * no HTTP answer at all: the session fails (`UpstreamConnect`); nothing is cached.
//! 2. `GET` the URL (`Accept: text/event-stream`): an event stream whose first event is
//!    `endpoint` means HTTP+SSE, and that connection becomes the session's upstream (no second
//!    GET). Anything else: Streamable HTTP, not cached.
//!
//! Results are cached per URL for the whole process. A cached HTTP+SSE result is re-probed when
//! its GET fails; a cached Streamable result is forgotten when an upstream `initialize` is
//! answered `400`/`404`/`405` ([`forget`]), so the next session probes again.

use super::http::HttpUpstream;
use super::sse::SseUpstream;
use super::{Upstream, UpstreamCtx, UpstreamEvent};
use crate::error::ProxyError;
use http::{StatusCode, header};
use shadowcat_proto::era::SESSION_ID_HEADER;
use shadowcat_proto::error::{HEADER_MISMATCH, MISSING_CAPABILITY, UNSUPPORTED_VERSION};
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// The HTTP transports an upstream URL can speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Streamable HTTP (2025-03-26 and later): one MCP endpoint for POST, GET and DELETE.
    Streamable,
    /// HTTP+SSE (2024-11-05): GET an event stream, POST to the endpoint it names.
    Sse,
}

/// Most URLs remembered (absolute-form URIs can name any number of them).
const CACHE_CAP: usize = 1024;
/// How long the probe's `initialize` may take to be answered.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

static CACHE: LazyLock<Mutex<HashMap<String, Transport>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn cache() -> std::sync::MutexGuard<'static, HashMap<String, Transport>> {
    CACHE.lock().unwrap_or_else(|p| p.into_inner())
}

/// The cache key of a URL: its normalised form.
fn key(url: &str) -> String {
    reqwest::Url::parse(url)
        .map(|u| u.to_string())
        .unwrap_or_else(|_| url.to_string())
}

/// What the process knows about `url`, if it probed it.
pub fn cached(url: &str) -> Option<Transport> {
    cache().get(&key(url)).copied()
}

/// Forget what was detected for `url`: the next session probes again.
pub fn forget(url: &str) {
    let k = key(url);
    let mut c = cache();
    if c.remove(&k).is_some() {
        tracing::info!(url = %k, "forgot the detected transport of an upstream");
    }
}

fn remember(url: &str, t: Transport) {
    let mut c = cache();
    if c.len() >= CACHE_CAP
        && let Some(old) = c.keys().next().cloned()
    {
        c.remove(&old);
    }
    c.insert(key(url), t);
}

/// Create the upstream of a session for an `auto` URL: the cached transport, else the probe's.
pub(super) async fn connect(
    url: &str,
    headers: &[(String, String)],
    ctx: UpstreamCtx,
    events: mpsc::Sender<UpstreamEvent>,
) -> Result<Upstream, ProxyError> {
    match cached(url) {
        Some(Transport::Streamable) => {
            return Ok(Upstream::Http(HttpUpstream::new(
                url, headers, ctx, events,
            )?));
        }
        Some(Transport::Sse) => {
            match SseUpstream::connect(url, headers, ctx.clone(), events.clone()).await {
                Ok(up) => return Ok(Upstream::Sse(up)),
                Err(e) => {
                    tracing::info!(error = %e, url, "cached HTTP+SSE upstream failed; probing again");
                    forget(url);
                }
            }
        }
        None => {}
    }
    match probe_streamable(url, headers, &ctx).await? {
        Probe::Streamable { cache } => {
            if cache {
                remember(url, Transport::Streamable);
            }
            tracing::info!(url, cached = cache, "upstream speaks Streamable HTTP");
            Ok(Upstream::Http(HttpUpstream::new(
                url, headers, ctx, events,
            )?))
        }
        Probe::TryLegacy(status) => {
            match SseUpstream::connect(url, headers, ctx.clone(), events.clone()).await {
                Ok(up) => {
                    remember(url, Transport::Sse);
                    tracing::info!(url, "upstream speaks HTTP+SSE (2024-11-05)");
                    Ok(Upstream::Sse(up))
                }
                Err(e) => {
                    tracing::info!(
                        url, %status, error = %e,
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

enum Probe {
    /// Speak Streamable HTTP; `cache`: the answer was conclusive.
    Streamable { cache: bool },
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
        .map_err(|e| ProxyError::UpstreamConnect(format!("cannot reach upstream {url}: {e}")))?;
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
                tracing::debug!(error = %e, "could not delete the probe's upstream session");
            }
        }
        return Ok(Probe::Streamable { cache: true });
    }
    if !matches!(status.as_u16(), 400 | 404 | 405) {
        tracing::debug!(url, %status, "inconclusive transport probe");
        return Ok(Probe::Streamable { cache: false });
    }
    let body = super::sse::read_some(resp).await;
    if is_modern_error(&body) {
        return Ok(Probe::Streamable { cache: true });
    }
    Ok(Probe::TryLegacy(status))
}

/// A JSON-RPC error body of the 2026-07-28 era: the server speaks (modern) Streamable HTTP.
fn is_modern_error(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct E {
        error: C,
    }
    #[derive(serde::Deserialize)]
    struct C {
        code: i64,
    }
    serde_json::from_slice::<E>(body).is_ok_and(|e| {
        matches!(
            e.error.code,
            HEADER_MISMATCH | MISSING_CAPABILITY | UNSUPPORTED_VERSION
        )
    })
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
}
