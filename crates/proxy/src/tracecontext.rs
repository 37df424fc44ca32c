//! W3C trace context across the proxy: what a client sends (`traceparent`, `tracestate`,
//! `baggage` as HTTP headers, or in a request's `params._meta` as the MCP conventions for trace
//! context put them — the only way for a stdio client), continued in the proxy's spans and passed
//! on to every upstream in `params._meta` (and to HTTP upstreams as headers too).
//!
//! The engine does not depend on OpenTelemetry: the binary that exports spans installs a
//! [`SpanLink`] ([`install`]), which makes a `tracing` span the child of a remote context and
//! reads a span's own context. With a link installed the [`TraceHook`] is in the pipeline: one
//! span per client request, named and described after the OpenTelemetry semantic conventions
//! for MCP (`{mcp.method.name} {target}`, `mcp.method.name`, `mcp.session.id`,
//! `jsonrpc.request.id`, `gen_ai.tool.name`, `gen_ai.prompt.name`, `mcp.resource.uri`,
//! `mcp.protocol.version`, `network.transport`, `error.type`), from the request until its answer,
//! and the request goes upstream with that span as the parent of what the server does.
//!
//! Whatever a client sends is checked before it is passed on: a malformed `traceparent` is
//! dropped (as W3C Trace Context says), `tracestate` and `baggage` are kept only when they are
//! printable ASCII within their size limits.

use crate::error::ProxyError;
use crate::pipeline::{Awaiting, Direction, FrameCtx, Hook, Transport, Verdict};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use serde_json::value::RawValue;
use shadowcat_proto::{Frame, FrameKind, RequestId};
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

/// Longest `tracestate` passed on (W3C: 32 members of at most 256 bytes; 512 is what
/// implementations are asked to propagate at least).
const MAX_TRACESTATE: usize = 512;
/// Longest `baggage` passed on (W3C Baggage: 8192 bytes).
const MAX_BAGGAGE: usize = 8192;
/// Requests of one session with an open span; more are traced without waiting for their answer.
const MAX_OPEN_PER_SESSION: usize = 10_000;
/// Open spans of all sessions.
const MAX_OPEN: usize = 200_000;

/// A trace context: a valid `traceparent`, and the `tracestate` and `baggage` that go with it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TraceContext {
    /// `00-<trace id>-<parent id>-<flags>`.
    pub traceparent: String,
    pub tracestate: Option<String>,
    pub baggage: Option<String>,
}

/// Finds `traceparent` in a message's bytes; built once (a searcher built per message showed in
/// the relay's profile).
static TRACEPARENT: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"traceparent"));

impl TraceContext {
    /// A context from its three values, each checked: `None` without a valid `traceparent`.
    pub fn new(
        traceparent: &str,
        tracestate: Option<&str>,
        baggage: Option<&str>,
    ) -> Option<TraceContext> {
        let traceparent = traceparent.trim();
        valid_traceparent(traceparent).then(|| TraceContext {
            traceparent: traceparent.to_ascii_lowercase(),
            tracestate: tracestate.and_then(|s| printable(s, MAX_TRACESTATE)),
            baggage: baggage.and_then(|s| printable(s, MAX_BAGGAGE)),
        })
    }

    /// From the W3C headers of an HTTP request.
    pub fn from_headers(h: &HeaderMap) -> Option<TraceContext> {
        let get = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
        TraceContext::new(get("traceparent")?, get("tracestate"), get("baggage"))
    }

    /// From `params._meta` of a JSON-RPC message (looked for only when the bytes mention
    /// `traceparent`: a message without one is not parsed).
    pub fn from_meta(raw: &[u8]) -> Option<TraceContext> {
        TRACEPARENT.find(raw)?;
        #[derive(serde::Deserialize)]
        struct Msg {
            params: Option<Params>,
        }
        #[derive(serde::Deserialize)]
        struct Params {
            #[serde(rename = "_meta")]
            meta: Option<Meta>,
        }
        #[derive(serde::Deserialize)]
        struct Meta {
            traceparent: Option<String>,
            tracestate: Option<String>,
            baggage: Option<String>,
        }
        let meta = serde_json::from_slice::<Msg>(raw).ok()?.params?.meta?;
        TraceContext::new(
            meta.traceparent.as_deref()?,
            meta.tracestate.as_deref(),
            meta.baggage.as_deref(),
        )
    }

    /// The trace id (32 hex digits).
    pub fn trace_id(&self) -> &str {
        self.traceparent.get(3..35).unwrap_or("")
    }

    /// Add the W3C headers to an upstream request.
    pub fn add_headers(&self, h: &mut HeaderMap) {
        let mut put = |name: &'static str, v: &str| {
            if let Ok(v) = HeaderValue::from_str(v) {
                h.insert(name, v);
            }
        };
        put("traceparent", &self.traceparent);
        if let Some(s) = &self.tracestate {
            put("tracestate", s);
        }
        if let Some(b) = &self.baggage {
            put("baggage", b);
        }
    }

    /// The message `raw` with this context in `params._meta` (other members untouched, the
    /// arguments not parsed); `None` when `raw` is not a JSON object with object params.
    pub fn into_meta_of(&self, raw: &[u8]) -> Option<Bytes> {
        let mut top: BTreeMap<String, Box<RawValue>> = serde_json::from_slice(raw).ok()?;
        let mut params: BTreeMap<String, Box<RawValue>> = match top.get("params") {
            Some(p) => serde_json::from_str(p.get()).ok()?,
            None => BTreeMap::new(),
        };
        let mut meta: serde_json::Map<String, serde_json::Value> = match params.get("_meta") {
            Some(m) => serde_json::from_str(m.get()).ok()?,
            None => serde_json::Map::new(),
        };
        meta.insert("traceparent".into(), self.traceparent.clone().into());
        for (k, v) in [("tracestate", &self.tracestate), ("baggage", &self.baggage)] {
            match v {
                Some(v) => meta.insert(k.into(), v.clone().into()),
                None => meta.remove(k),
            };
        }
        params.insert("_meta".into(), serde_json::value::to_raw_value(&meta).ok()?);
        top.insert(
            "params".into(),
            serde_json::value::to_raw_value(&params).ok()?,
        );
        serde_json::to_vec(&top).ok().map(Bytes::from)
    }
}

/// `version-traceid-parentid-flags`, lowercase hex, ids not all zeros, version not `ff`; a
/// later version may add fields after a `-`.
fn valid_traceparent(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 55 || (b.len() > 55 && (b[55] != b'-' || &b[..2] == b"00")) {
        return false;
    }
    let hex = |r: std::ops::Range<usize>| {
        b[r].iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    let nonzero = |r: std::ops::Range<usize>| b[r].iter().any(|c| *c != b'0');
    b[2] == b'-'
        && b[35] == b'-'
        && b[52] == b'-'
        && hex(0..2)
        && &b[..2] != b"ff"
        && hex(3..35)
        && hex(36..52)
        && hex(53..55)
        && nonzero(3..35)
        && nonzero(36..52)
}

/// `s` when it is visible ASCII and spaces (a valid header value), not empty, at most `max`.
fn printable(s: &str, max: usize) -> Option<String> {
    let s = s.trim();
    (!s.is_empty() && s.len() <= max && s.bytes().all(|c| (0x20..0x7f).contains(&c)))
        .then(|| s.to_string())
}

/// What an OpenTelemetry exporter lends the engine (see the module docs).
pub trait SpanLink: Send + Sync + 'static {
    /// Make `span` a child of the remote context `parent`.
    fn adopt(&self, span: &tracing::Span, parent: &TraceContext);
    /// The `traceparent` of `span` itself, when it is being recorded.
    fn traceparent_of(&self, span: &tracing::Span) -> Option<String>;
}

static LINK: OnceLock<Arc<dyn SpanLink>> = OnceLock::new();

/// Install the span link (once, at start, by the binary that exports spans).
pub fn install(link: Arc<dyn SpanLink>) {
    let _ = LINK.set(link);
}

/// The installed span link, if spans are exported.
pub fn link() -> Option<&'static Arc<dyn SpanLink>> {
    LINK.get()
}

/// Make `span` (an HTTP request's) part of the trace its headers name, when spans are exported.
pub fn adopt_headers(span: &tracing::Span, h: &HeaderMap) {
    if let (Some(link), Some(cx)) = (link(), TraceContext::from_headers(h)) {
        link.adopt(span, &cx);
    }
}

/// The W3C headers for an upstream POST of `raw`: the context in its `params._meta`, if any.
pub fn upstream_headers(raw: &[u8], h: &mut HeaderMap) {
    if let Some(cx) = TraceContext::from_meta(raw) {
        cx.add_headers(h);
    }
}

/// The pipeline hook: one span per client request, its context passed upstream.
pub struct TraceHook {
    link: Arc<dyn SpanLink>,
    /// Open spans, until their request's answer.
    open: Awaiting<tracing::Span>,
}

impl TraceHook {
    /// A hook with the installed link; `None` when spans are not exported.
    pub fn new() -> Option<Arc<TraceHook>> {
        Some(Arc::new(TraceHook {
            link: link()?.clone(),
            open: Awaiting::new(MAX_OPEN_PER_SESSION, MAX_OPEN),
        }))
    }

    fn span(&self, ctx: &FrameCtx<'_>, frame: &Frame) -> tracing::Span {
        let method = frame.method().unwrap_or("");
        let target = frame.target();
        let low_cardinality = matches!(method, "tools/call" | "prompts/get");
        let name = match target {
            Some(t) if low_cardinality => format!("{method} {t}"),
            _ => method.to_string(),
        };
        let (tool, prompt, resource) = match method {
            "tools/call" => (target, None, None),
            "prompts/get" => (None, target, None),
            m if m.starts_with("resources/") => (None, None, target),
            _ => (None, None, None),
        };
        let transport = match ctx.transport {
            Transport::None => "pipe",
            _ => "tcp",
        };
        let id = frame.id().map(|i| match i {
            RequestId::Number(n) => n.to_string(),
            RequestId::String(s) => s.to_string(),
        });
        tracing::info_span!(
            target: "shadowcat::mcp",
            "mcp",
            "otel.name" = %name,
            "otel.kind" = "server",
            "mcp.method.name" = method,
            "mcp.session.id" = (ctx.session != "-").then_some(ctx.session),
            "jsonrpc.request.id" = id,
            "gen_ai.tool.name" = tool,
            "gen_ai.operation.name" = tool.map(|_| "execute_tool"),
            "gen_ai.prompt.name" = prompt,
            "mcp.resource.uri" = resource,
            "network.transport" = transport,
            "error.type" = tracing::field::Empty,
            "otel.status_code" = tracing::field::Empty,
        )
    }

    fn close(&self, ctx: &FrameCtx<'_>, id: &RequestId) -> Option<tracing::Span> {
        self.open.take(ctx, id)
    }
}

/// Mark a span failed with `error.type`.
fn failed(span: &tracing::Span, error_type: &str) {
    span.record("error.type", error_type);
    span.record("otel.status_code", "ERROR");
}

impl Hook for TraceHook {
    fn name(&self) -> &'static str {
        "trace"
    }

    fn on_frame(&self, ctx: &FrameCtx<'_>, frame: &Frame) -> Verdict {
        match (ctx.direction, frame.kind()) {
            (Direction::ClientToServer, FrameKind::Request) => {
                let Some(id) = frame.id() else {
                    return Verdict::Forward;
                };
                let span = self.span(ctx, frame);
                // The message's own context wins; an HTTP request's headers made the request
                // span (this span's parent) part of their trace already.
                let incoming = TraceContext::from_meta(frame.raw());
                if let Some(cx) = &incoming {
                    self.link.adopt(&span, cx);
                }
                let outgoing = match self.link.traceparent_of(&span) {
                    Some(tp) => {
                        let (state, baggage) = match &incoming {
                            Some(c) => (c.tracestate.clone(), c.baggage.clone()),
                            None => match ctx.transport {
                                Transport::Http(m) => m
                                    .headers
                                    .and_then(TraceContext::from_headers)
                                    .map(|c| (c.tracestate, c.baggage))
                                    .unwrap_or_default(),
                                _ => (None, None),
                            },
                        };
                        TraceContext::new(&tp, state.as_deref(), baggage.as_deref())
                    }
                    None => incoming.clone(),
                };
                // Over the bound the span ends now (it still names the upstream's parent).
                let _ = self.open.insert(ctx, id, span);
                match outgoing {
                    Some(cx) if Some(&cx) != incoming.as_ref() => {
                        match cx.into_meta_of(frame.raw()).map(Frame::parse_single) {
                            Some(Ok(f)) => Verdict::Replace(f),
                            _ => Verdict::Forward,
                        }
                    }
                    _ => Verdict::Forward,
                }
            }
            (Direction::ServerToClient, FrameKind::Response | FrameKind::Error) => {
                if let Some(span) = frame.id().and_then(|id| self.close(ctx, id)) {
                    let a = crate::audit::answer_of(frame);
                    match (a.error_code, a.is_error) {
                        (Some(code), _) => failed(&span, &code.to_string()),
                        (None, Some(true)) => failed(&span, "tool_error"),
                        _ => {}
                    }
                }
                Verdict::Forward
            }
            _ => Verdict::Forward,
        }
    }

    fn on_answered(&self, ctx: &FrameCtx<'_>, frame: &Frame, answer: &Frame, by: &'static str) {
        if ctx.direction != Direction::ClientToServer || frame.kind() != FrameKind::Request {
            return;
        }
        // Refused before it reached this hook: a span of its own, ended at once.
        let span = self.span(ctx, frame);
        if let Some(cx) = TraceContext::from_meta(frame.raw()) {
            self.link.adopt(&span, &cx);
        }
        if answer.kind() == FrameKind::Error {
            failed(&span, &format!("refused by {by}"));
        }
    }

    fn on_failed(&self, ctx: &FrameCtx<'_>, id: &RequestId, error: &ProxyError) {
        if let Some(span) = self.close(ctx, id) {
            failed(&span, &error.jsonrpc_code().to_string());
        }
    }

    fn on_session_end(&self, session: &str) {
        for (_, span) in self.open.end(session) {
            failed(&span, "no_answer");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparents_are_checked() {
        assert!(valid_traceparent(TP));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(!valid_traceparent(bad), "{bad}");
        }
        // A later version may carry more fields.
        assert!(valid_traceparent(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more"
        ));
    }

    #[test]
    fn state_and_baggage_are_kept_only_when_safe() {
        let cx = TraceContext::new(TP, Some("a=1,b=2"), Some("k=v")).unwrap();
        assert_eq!(cx.tracestate.as_deref(), Some("a=1,b=2"));
        let cx = TraceContext::new(TP, Some("a=1\r\nx-evil: 1"), Some(&"k".repeat(9000))).unwrap();
        assert_eq!((cx.tracestate, cx.baggage), (None, None));
        assert_eq!(TraceContext::new("junk", None, None), None);
        let mut h = HeaderMap::new();
        h.insert("traceparent", HeaderValue::from_static(TP));
        h.insert("tracestate", HeaderValue::from_static("vendor=x"));
        let cx = TraceContext::from_headers(&h).unwrap();
        assert_eq!(cx.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(cx.tracestate.as_deref(), Some("vendor=x"));
    }

    #[test]
    fn meta_is_read_and_written_without_touching_the_rest() {
        let raw = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","arguments":{"a":1.50,"b":[2, 3]},"_meta":{"progressToken":"p1"}}}"#;
        assert_eq!(TraceContext::from_meta(raw), None);
        let cx = TraceContext::new(TP, None, Some("user=1")).unwrap();
        let out = cx.into_meta_of(raw).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["params"]["_meta"]["traceparent"], TP);
        assert_eq!(v["params"]["_meta"]["baggage"], "user=1");
        assert_eq!(v["params"]["_meta"]["progressToken"], "p1");
        assert_eq!(v["id"], 1);
        // The arguments' bytes are kept as they were (1.50 stays 1.50).
        assert!(
            std::str::from_utf8(&out)
                .unwrap()
                .contains(r#""arguments":{"a":1.50,"b":[2, 3]}"#)
        );
        assert_eq!(TraceContext::from_meta(&out), Some(cx));
        // A request without params gets them.
        let bare = br#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#;
        let out = TraceContext::new(TP, None, None)
            .unwrap()
            .into_meta_of(bare)
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["params"]["_meta"]["traceparent"], TP);
        // Headers for an HTTP upstream come from the message.
        let mut h = HeaderMap::new();
        upstream_headers(&out, &mut h);
        assert_eq!(h.get("traceparent").unwrap(), TP);
    }
}
