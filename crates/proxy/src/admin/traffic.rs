//! Live traffic: a pipeline hook publishes a short summary of each frame to a bounded broadcast
//! channel, and `GET /api/traffic` streams the summaries as SSE. It also keeps the latest
//! messages of each session for the admin page's session timeline
//! (`GET /api/traffic/history`).
//!
//! Summaries are built only while somebody watches. A summary holds the time, session,
//! direction, kind, method, id, tool/prompt name or resource URI, size and the start of the
//! message with secrets redacted (as tapes redact them). A viewer that falls behind loses the
//! oldest summaries and is told how many (`event: lagged`, `data: {"skipped":N}`); the relay
//! never waits for a viewer.
//!
//! The history keeps a copy of each message (up to [`HISTORY_MAX_MESSAGE`] bytes; larger ones
//! are kept as a summary without the message), at most [`HISTORY_PER_SESSION`] per session and
//! [`HISTORY_TOTAL`] messages and [`HISTORY_BYTES`] bytes in all, the oldest going first. A
//! session's messages outlive it until newer traffic pushes them out. Secrets are redacted when
//! the history is read, with the same rules as the live view.
//!
//! `GET /api/traffic/history?session=ID[&after=SEQ]` → `{session, messages:[{seq, time_ms,
//! direction, kind, method?, id?, name?, bytes, message (the JSON message, redacted; null when
//! it was too large to keep), note?}]}`, oldest first, only those after `SEQ` when given
//! (`seq` is shared with the live stream).
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
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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
/// Messages of one session kept for its timeline.
pub const HISTORY_PER_SESSION: usize = 200;
/// Messages kept over all sessions.
pub const HISTORY_TOTAL: usize = 5_000;
/// Bytes of kept messages over all sessions.
pub const HISTORY_BYTES: usize = 16 * 1024 * 1024;
/// Larger messages are kept without their content.
pub const HISTORY_MAX_MESSAGE: usize = 64 * 1024;

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

/// One message kept for a session's timeline.
#[derive(Debug, Clone)]
struct Kept {
    seq: u64,
    time_ms: u64,
    direction: Direction,
    note: Option<&'static str>,
    /// A copy of the message, or what is shown of one too large to keep.
    body: KeptBody,
}

#[derive(Debug, Clone)]
enum KeptBody {
    Message(Bytes),
    TooLarge(Box<Summary>),
}

impl Kept {
    fn bytes(&self) -> usize {
        match &self.body {
            KeptBody::Message(b) => b.len(),
            KeptBody::TooLarge(_) => 0,
        }
    }
}

/// The latest messages of each session, within the bounds above.
#[derive(Debug, Default)]
struct History {
    sessions: HashMap<Arc<str>, VecDeque<Kept>>,
    /// (seq, session) of every message kept (and of some already pushed out of their
    /// session's list), oldest first: what goes when the totals are exceeded.
    order: VecDeque<(u64, Arc<str>)>,
    bytes: usize,
}

impl History {
    fn keep(&mut self, session: &str, kept: Kept) {
        let key = match self.sessions.get_key_value(session) {
            Some((k, _)) => k.clone(),
            None => Arc::from(session),
        };
        self.bytes += kept.bytes();
        self.order.push_back((kept.seq, key.clone()));
        let list = self.sessions.entry(key).or_default();
        list.push_back(kept);
        if list.len() > HISTORY_PER_SESSION
            && let Some(old) = list.pop_front()
        {
            self.bytes -= old.bytes();
        }
        while self.order.len() > HISTORY_TOTAL || self.bytes > HISTORY_BYTES {
            let Some((seq, session)) = self.order.pop_front() else {
                break;
            };
            self.drop_oldest(&session, seq);
        }
    }

    /// Drop message `seq` of `session` if it is still kept (it is then the session's oldest).
    fn drop_oldest(&mut self, session: &str, seq: u64) {
        let Some(list) = self.sessions.get_mut(session) else {
            return;
        };
        if list.front().is_some_and(|k| k.seq == seq)
            && let Some(old) = list.pop_front()
        {
            self.bytes -= old.bytes();
        }
        if list.is_empty() {
            self.sessions.remove(session);
        }
    }

    fn of(&self, session: &str, after: u64) -> Vec<Kept> {
        self.sessions
            .get(session)
            .map(|l| l.iter().filter(|k| k.seq > after).cloned().collect())
            .unwrap_or_default()
    }
}

/// The live traffic channel. Install [`Traffic`] as a pipeline hook (after the hooks that
/// change traffic) and serve it with the admin listener.
pub struct Traffic {
    tx: broadcast::Sender<Arc<Published>>,
    seq: AtomicU64,
    viewers: AtomicUsize,
    redactor: Redactor,
    history: Mutex<History>,
}

impl Traffic {
    /// A channel nobody watches yet.
    pub fn new() -> Arc<Traffic> {
        Arc::new(Traffic {
            tx: broadcast::channel(CAPACITY).0,
            seq: AtomicU64::new(0),
            viewers: AtomicUsize::new(0),
            redactor: Redactor::default(),
            history: Mutex::new(History::default()),
        })
    }

    /// Keep `f` in `session`'s history; its sequence number.
    fn keep(&self, session: &str, d: Direction, f: &Frame, note: Option<&'static str>) -> u64 {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let time_ms = crate::session::records::now_ms();
        let raw = f.raw();
        let body = if raw.len() <= HISTORY_MAX_MESSAGE {
            // A copy: the frame's bytes may be a slice of a larger buffer.
            KeptBody::Message(Bytes::copy_from_slice(raw))
        } else {
            let mut s = self.describe(seq, time_ms, session, d, f, note);
            s.truncated = true;
            KeptBody::TooLarge(Box::new(s))
        };
        let kept = Kept {
            seq,
            time_ms,
            direction: d,
            note,
            body,
        };
        crate::sync::lock(&self.history).keep(session, kept);
        seq
    }

    /// The kept messages of `session` after `after`, as the history endpoint shows them.
    fn history(&self, session: &str, after: u64) -> Vec<serde_json::Value> {
        let kept = crate::sync::lock(&self.history).of(session, after);
        kept.into_iter()
            .map(|k| {
                let (summary, message) = match k.body {
                    KeptBody::Message(raw) => {
                        let clean = self.redactor.message(&raw);
                        let message = serde_json::from_slice::<serde_json::Value>(&clean)
                            .unwrap_or_else(|_| {
                                serde_json::Value::String(
                                    String::from_utf8_lossy(&clean).into_owned(),
                                )
                            });
                        let summary = Frame::parse_single(raw).ok().map(|f| {
                            self.describe(k.seq, k.time_ms, session, k.direction, &f, k.note)
                        });
                        (summary, message)
                    }
                    KeptBody::TooLarge(s) => (Some(*s), serde_json::Value::Null),
                };
                let mut v = match summary {
                    Some(s) => serde_json::to_value(&s).unwrap_or_default(),
                    None => serde_json::json!({
                        "seq": k.seq,
                        "time_ms": k.time_ms,
                        "session": session,
                        "direction": direction_name(k.direction),
                    }),
                };
                if let Some(o) = v.as_object_mut() {
                    o.remove("preview");
                    o.remove("truncated");
                    o.remove("session");
                    o.insert("message".into(), message);
                }
                v
            })
            .collect()
    }

    /// Whether anybody watches (the hook does nothing otherwise).
    pub fn watched(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// Subscribe to the summaries (what the SSE endpoint does).
    fn subscribe(&self) -> broadcast::Receiver<Arc<Published>> {
        self.tx.subscribe()
    }

    /// A summary without the message's preview.
    fn describe(
        &self,
        seq: u64,
        time_ms: u64,
        session: &str,
        d: Direction,
        f: &Frame,
        note: Option<&'static str>,
    ) -> Summary {
        Summary {
            seq,
            time_ms,
            session: session.to_string(),
            direction: direction_name(d),
            kind: match f.kind() {
                FrameKind::Request => "request",
                FrameKind::Notification => "notification",
                FrameKind::Response => "response",
                FrameKind::Error => "error",
            },
            method: f.method().map(str::to_string),
            id: f.id().cloned(),
            name: f.target().map(str::to_string),
            bytes: f.raw().len(),
            preview: String::new(),
            truncated: false,
            note,
        }
    }

    /// The summary the live view shows: with the start of the message, redacted.
    fn summarise(
        &self,
        seq: u64,
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
        let time_ms = crate::session::records::now_ms();
        Summary {
            preview,
            truncated,
            ..self.describe(seq, time_ms, session, d, f, note)
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
        let seq = self.keep(ctx.session, ctx.direction, frame, None);
        if self.watched() {
            self.publish(self.summarise(seq, ctx.session, ctx.direction, frame, None));
        }
        Verdict::Forward
    }

    fn on_answered(&self, ctx: &FrameCtx<'_>, frame: &Frame, answer: &Frame, _by: &'static str) {
        const NOTE: Option<&str> = Some("answered by the proxy");
        let back = match ctx.direction {
            Direction::ClientToServer => Direction::ServerToClient,
            Direction::ServerToClient => Direction::ClientToServer,
        };
        let asked = self.keep(ctx.session, ctx.direction, frame, NOTE);
        let answered = self.keep(ctx.session, back, answer, None);
        if self.watched() {
            self.publish(self.summarise(asked, ctx.session, ctx.direction, frame, NOTE));
            self.publish(self.summarise(answered, ctx.session, back, answer, None));
        }
    }
}

fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::ClientToServer => "c2s",
        Direction::ServerToClient => "s2c",
    }
}

/// Counts a viewer while its stream lives.
struct Viewer(Arc<Traffic>);

impl Drop for Viewer {
    fn drop(&mut self) {
        self.0.viewers.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The value of `key=…` in a query string (percent-decoded), when not empty.
fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, v)| k == key && !v.is_empty())
        .map(|(_, v)| v.into_owned())
}

/// `session=ID` from a query string.
fn session_filter(query: Option<&str>) -> Option<String> {
    query_param(query, "session")
}

/// `GET /api/traffic/history?session=ID[&after=SEQ]`: a session's kept messages.
pub(super) async fn history(axum::extract::State(a): Shared, req: Request) -> Response {
    let Some(traffic) = a.traffic.clone() else {
        return error(
            StatusCode::NOT_FOUND,
            "this proxy does not keep traffic history",
        );
    };
    let query = req.uri().query();
    let Some(session) = session_filter(query) else {
        return error(
            StatusCode::BAD_REQUEST,
            "which session? ask for /api/traffic/history?session=ID",
        );
    };
    let after = match query_param(query, "after").map(|v| v.parse::<u64>()) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "`after` must be a message sequence number (a non-negative integer)",
            );
        }
    };
    // Redacting may take a while for many large messages: not on the runtime's threads.
    let messages = match tokio::task::spawn_blocking({
        let session = session.clone();
        move || traffic.history(&session, after)
    })
    .await
    {
        Ok(m) => m,
        Err(_) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "reading the traffic history failed",
            );
        }
    };
    super::json(
        StatusCode::OK,
        serde_json::json!({ "session": session, "messages": messages }),
    )
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
        assert_eq!(t.seq.load(Ordering::Relaxed), 1, "kept in the history");
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
        assert_eq!(v["seq"], 2, "the frame sent unwatched was not published");
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

    #[test]
    fn the_history_keeps_recent_messages_redacted_within_bounds() {
        let t = Traffic::new();
        let call = frame(
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"password":"hunter2"}}}"#,
        );
        // Kept while nobody watches.
        t.on_frame(&ctx(Direction::ClientToServer), &call);
        let answer = frame(r#"{"jsonrpc":"2.0","id":7,"result":{"content":[]}}"#);
        t.on_answered(&ctx(Direction::ServerToClient), &answer, &call, "test");
        let h = t.history("s1", 0);
        assert_eq!(h.len(), 3, "{h:?}");
        assert_eq!(h[0]["method"], "tools/call");
        assert_eq!(h[0]["name"], "echo");
        assert_eq!(h[0]["direction"], "c2s");
        assert_eq!(
            h[0]["message"]["params"]["arguments"]["password"],
            "[REDACTED]"
        );
        assert!(!serde_json::to_string(&h).unwrap().contains("hunter2"));
        assert_eq!(h[1]["note"], "answered by the proxy");
        assert_eq!(
            h[2]["direction"], "c2s",
            "the answer goes back the other way"
        );
        let seq = h[0]["seq"].as_u64().unwrap();
        assert_eq!(t.history("s1", seq).len(), 2, "only those after `after`");
        assert!(t.history("nobody", 0).is_empty());

        // Too large: a summary without the message.
        let big = format!(
            r#"{{"jsonrpc":"2.0","method":"notifications/message","params":{{"data":"{}"}}}}"#,
            "x".repeat(HISTORY_MAX_MESSAGE)
        );
        t.on_frame(&ctx(Direction::ServerToClient), &frame(&big));
        let last = t.history("s1", 0).pop().unwrap();
        assert_eq!(last["method"], "notifications/message");
        assert_eq!(last["message"], serde_json::Value::Null);
        assert_eq!(last["bytes"], big.len());

        // Per session: the latest HISTORY_PER_SESSION.
        let ping = frame(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#);
        for _ in 0..HISTORY_PER_SESSION + 5 {
            t.on_frame(&ctx(Direction::ClientToServer), &ping);
        }
        let h = t.history("s1", 0);
        assert_eq!(h.len(), HISTORY_PER_SESSION);
        assert!(h.iter().all(|m| m["method"] == "ping"));
    }

    #[test]
    fn the_history_is_bounded_over_all_sessions() {
        let mut h = History::default();
        let kept = |seq: u64, len: usize| Kept {
            seq,
            time_ms: 0,
            direction: Direction::ClientToServer,
            note: None,
            body: KeptBody::Message(Bytes::from(vec![b' '; len])),
        };
        // Many sessions: the oldest messages go first.
        for i in 0..HISTORY_TOTAL as u64 + 10 {
            h.keep(&format!("s{i}"), kept(i + 1, 10));
        }
        assert_eq!(h.sessions.len(), HISTORY_TOTAL);
        assert!(!h.sessions.contains_key("s0"));
        assert!(h.sessions.contains_key(&*format!("s{}", HISTORY_TOTAL + 9)));
        // One busy session: what it pushed out does not pile up in the order list.
        let mut one = History::default();
        for i in 0..(HISTORY_TOTAL * 3) as u64 {
            one.keep("busy", kept(i + 1, 1));
        }
        assert!(one.order.len() <= HISTORY_TOTAL);
        assert_eq!(one.sessions["busy"].len(), HISTORY_PER_SESSION);
        assert_eq!(one.bytes, HISTORY_PER_SESSION);
        // Bytes: large messages push the older ones out.
        let mut big = History::default();
        for i in 0..40u64 {
            big.keep(&format!("b{}", i % 4), kept(i + 1, HISTORY_MAX_MESSAGE * 8));
        }
        assert!(big.bytes <= HISTORY_BYTES, "{}", big.bytes);
        let kept_now: usize = big.sessions.values().map(VecDeque::len).sum();
        assert_eq!(kept_now, HISTORY_BYTES / (HISTORY_MAX_MESSAGE * 8));
    }
}
