//! Live traffic: a pipeline hook publishes a short summary of each frame to a bounded broadcast
//! channel, and `GET /api/traffic` streams the summaries as SSE.
//!
//! The hook does nothing while nobody watches (one atomic load per frame). A summary holds the
//! time, session, direction, kind, method, id, tool/prompt name or resource URI, size and the
//! start of the message with secrets redacted (as tapes redact them). A viewer that falls
//! behind loses the oldest summaries and is told how many (`event: lagged`,
//! `data: {"skipped":N}`); the relay never waits for a viewer.
//!
//! `GET /api/traffic[?session=ID]`: `data:` lines are JSON objects
//! `{seq, time_ms, session, direction: "c2s"|"s2c", kind, method?, id?, name?, bytes, preview,
//! truncated, note?}`; `note` is `"answered by the proxy"` for a message a hook answered
//! itself (its answer follows in the other direction).

use super::{Shared, error};
use crate::pipeline::{Direction, FrameCtx, Hook, Verdict};
use axum::body::Body;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use serde::Serialize;
use shadowcat_proto::{Frame, FrameKind, RequestId};
use shadowcat_tape::redact::Redactor;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::broadcast;

/// Summaries kept for viewers that are behind.
const CAPACITY: usize = 512;
/// Characters of each message shown.
const PREVIEW_CHARS: usize = 300;
/// Larger messages are not parsed for redaction, so they get no preview.
const MAX_PREVIEW_SOURCE: usize = 256 * 1024;
/// Most viewers at once.
const MAX_VIEWERS: usize = 16;
/// A comment this often keeps idle connections open through proxies.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// One frame as the live view shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Increasing number (gaps: skipped for a lagging viewer).
    pub seq: u64,
    /// Wall-clock time, ms since the Unix epoch.
    pub time_ms: u64,
    /// Proxy session id.
    pub session: String,
    /// `c2s` or `s2c`.
    pub direction: &'static str,
    /// `request`, `notification`, `response` or `error`.
    pub kind: &'static str,
    /// JSON-RPC method.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// JSON-RPC id (its JSON type kept).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<RequestId>,
    /// Tool or prompt name, or resource URI.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Size of the message in bytes.
    pub bytes: usize,
    /// The start of the message, secrets redacted.
    pub preview: String,
    /// The preview is not the whole message.
    pub truncated: bool,
    /// Why this message was not relayed, when it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<&'static str>,
}

/// One published summary, serialised once for every viewer.
#[derive(Debug)]
struct Published {
    session: String,
    json: Bytes,
}

/// The live traffic channel. Install [`Traffic`] as a pipeline hook (after the hooks that
/// change traffic) and serve it with the admin listener.
pub struct Traffic {
    tx: broadcast::Sender<Arc<Published>>,
    seq: AtomicU64,
    viewers: AtomicUsize,
    redactor: Redactor,
}

impl Traffic {
    /// A channel nobody watches yet.
    pub fn new() -> Arc<Traffic> {
        Arc::new(Traffic {
            tx: broadcast::channel(CAPACITY).0,
            seq: AtomicU64::new(0),
            viewers: AtomicUsize::new(0),
            redactor: Redactor::default(),
        })
    }

    /// Whether anybody watches (the hook does nothing otherwise).
    pub fn watched(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// Subscribe to the summaries (what the SSE endpoint does).
    fn subscribe(&self) -> broadcast::Receiver<Arc<Published>> {
        self.tx.subscribe()
    }

    fn summarise(
        &self,
        session: &str,
        d: Direction,
        f: &Frame,
        note: Option<&'static str>,
    ) -> Summary {
        let raw = f.raw();
        let (preview, truncated) = if raw.len() > MAX_PREVIEW_SOURCE {
            (String::new(), true)
        } else {
            let clean = self.redactor.message(raw);
            let text = String::from_utf8_lossy(&clean);
            let mut chars = text.char_indices();
            match chars.nth(PREVIEW_CHARS) {
                Some((cut, _)) => (text[..cut].to_string(), true),
                None => (text.into_owned(), false),
            }
        };
        Summary {
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            time_ms: crate::session::records::now_ms(),
            session: session.to_string(),
            direction: match d {
                Direction::ClientToServer => "c2s",
                Direction::ServerToClient => "s2c",
            },
            kind: match f.kind() {
                FrameKind::Request => "request",
                FrameKind::Notification => "notification",
                FrameKind::Response => "response",
                FrameKind::Error => "error",
            },
            method: f.method().map(str::to_string),
            id: f.id().cloned(),
            name: f.target().map(str::to_string),
            bytes: raw.len(),
            preview,
            truncated,
            note,
        }
    }

    fn publish(&self, s: Summary) {
        let json = match serde_json::to_vec(&s) {
            Ok(j) => Bytes::from(j),
            Err(_) => return,
        };
        // Nobody listening any more is fine: the summary is simply not needed.
        let _ = self.tx.send(Arc::new(Published {
            session: s.session,
            json,
        }));
    }
}

impl Hook for Traffic {
    fn name(&self) -> &'static str {
        "admin-traffic"
    }

    fn on_frame(&self, ctx: &FrameCtx<'_>, frame: &Frame) -> Verdict {
        if self.watched() {
            self.publish(self.summarise(ctx.session, ctx.direction, frame, None));
        }
        Verdict::Forward
    }

    fn on_answered(&self, ctx: &FrameCtx<'_>, frame: &Frame, answer: &Frame, _by: &'static str) {
        if !self.watched() {
            return;
        }
        let back = match ctx.direction {
            Direction::ClientToServer => Direction::ServerToClient,
            Direction::ServerToClient => Direction::ClientToServer,
        };
        let asked = self.summarise(
            ctx.session,
            ctx.direction,
            frame,
            Some("answered by the proxy"),
        );
        self.publish(asked);
        self.publish(self.summarise(ctx.session, back, answer, None));
    }
}

/// Counts a viewer while its stream lives.
struct Viewer(Arc<Traffic>);

impl Drop for Viewer {
    fn drop(&mut self) {
        self.0.viewers.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `session=ID` from a query string.
fn session_filter(query: Option<&str>) -> Option<String> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == "session" && !v.is_empty()).then(|| v.to_string())
    })
}

/// `GET /api/traffic`: the SSE stream.
pub(super) async fn stream(axum::extract::State(a): Shared, req: Request) -> Response {
    let Some(traffic) = a.traffic.clone() else {
        return error(
            StatusCode::NOT_FOUND,
            "this proxy does not publish live traffic",
        );
    };
    if traffic.viewers.fetch_add(1, Ordering::AcqRel) >= MAX_VIEWERS {
        traffic.viewers.fetch_sub(1, Ordering::AcqRel);
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("{MAX_VIEWERS} live traffic viewers already; close one"),
        );
    }
    let only = session_filter(req.uri().query());
    let state = Watch {
        rx: traffic.subscribe(),
        _viewer: Viewer(traffic),
        only,
        cancel: a.cancel.clone(),
        started: false,
    };
    let body = futures_util::stream::unfold(state, |mut w| async move {
        let chunk = w.next().await?;
        Some((Ok::<_, std::convert::Infallible>(chunk), w))
    });
    let mut r = Response::new(Body::from_stream(body));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}

/// One viewer's position in the channel.
struct Watch {
    rx: broadcast::Receiver<Arc<Published>>,
    _viewer: Viewer,
    only: Option<String>,
    cancel: tokio_util::sync::CancellationToken,
    started: bool,
}

impl Watch {
    /// The next SSE chunk; `None` ends the stream (admin shutting down).
    async fn next(&mut self) -> Option<Bytes> {
        if !self.started {
            self.started = true;
            return Some(Bytes::from_static(b"retry: 2000\n: live traffic\n\n"));
        }
        loop {
            let got = tokio::select! {
                r = self.rx.recv() => r,
                _ = tokio::time::sleep(KEEP_ALIVE) => return Some(Bytes::from_static(b": keep-alive\n\n")),
                _ = self.cancel.cancelled() => return None,
            };
            match got {
                Ok(p) => {
                    if self.only.as_deref().is_some_and(|s| s != p.session) {
                        continue;
                    }
                    let mut out = Vec::with_capacity(p.json.len() + 8);
                    out.extend_from_slice(b"data: ");
                    out.extend_from_slice(&p.json);
                    out.extend_from_slice(b"\n\n");
                    return Some(Bytes::from(out));
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    return Some(Bytes::from(format!(
                        "event: lagged\ndata: {{\"skipped\":{n}}}\n\n"
                    )));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(s: &str) -> Frame {
        Frame::parse_single(Bytes::from(s.to_string())).unwrap()
    }

    fn ctx(d: Direction) -> FrameCtx<'static> {
        FrameCtx::new("s1", d)
    }

    #[tokio::test]
    async fn publishes_only_while_watched_and_redacts() {
        let t = Traffic::new();
        let call = frame(
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"password":"hunter2"}}}"#,
        );
        t.on_frame(&ctx(Direction::ClientToServer), &call);
        assert_eq!(t.seq.load(Ordering::Relaxed), 0, "nothing built unwatched");
        let mut w = Watch {
            rx: t.subscribe(),
            _viewer: Viewer(t.clone()),
            only: None,
            cancel: Default::default(),
            started: true,
        };
        t.viewers.fetch_add(1, Ordering::AcqRel);
        t.on_frame(&ctx(Direction::ClientToServer), &call);
        let chunk = String::from_utf8(w.next().await.unwrap().to_vec()).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(chunk.strip_prefix("data: ").unwrap().trim()).unwrap();
        assert_eq!(v["method"], "tools/call");
        assert_eq!(v["name"], "echo");
        assert_eq!(v["id"], 7);
        assert_eq!(v["direction"], "c2s");
        assert!(!chunk.contains("hunter2"), "{chunk}");
        drop(w);
        assert_eq!(t.viewers.load(Ordering::Acquire), 0);
        assert!(!t.watched());
    }

    #[tokio::test]
    async fn a_lagging_viewer_is_told_how_many_it_missed() {
        let t = Traffic::new();
        let mut w = Watch {
            rx: t.subscribe(),
            _viewer: Viewer(t.clone()),
            only: Some("s1".into()),
            cancel: Default::default(),
            started: true,
        };
        t.viewers.fetch_add(1, Ordering::AcqRel);
        let big = format!(
            r#"{{"jsonrpc":"2.0","method":"notifications/message","params":{{"data":"{}"}}}}"#,
            "x".repeat(1000)
        );
        for _ in 0..CAPACITY + 10 {
            t.on_frame(&ctx(Direction::ServerToClient), &frame(&big));
        }
        let first = String::from_utf8(w.next().await.unwrap().to_vec()).unwrap();
        assert_eq!(first, "event: lagged\ndata: {\"skipped\":10}\n\n");
        let next = String::from_utf8(w.next().await.unwrap().to_vec()).unwrap();
        assert!(next.contains("\"truncated\":true"), "{next}");
        assert_eq!(session_filter(Some("a=1&session=abc")), Some("abc".into()));
        assert_eq!(session_filter(Some("session=")), None);
    }
}
