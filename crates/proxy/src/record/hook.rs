//! The recorder's pipeline hook: timestamp, hand over, never parse.

use super::{Msg, OnFull, Shared};
use crate::pipeline::{Direction, FrameCtx, Hook, Transport, Verdict, Wait};
use shadowcat_proto::Frame;
use shadowcat_tape::Dir;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tokio::sync::mpsc::{self, error::TrySendError};

/// Records every frame it sees (put it after the hooks that change traffic, so the tape holds
/// what was actually relayed; answers given by earlier hooks are recorded too).
pub struct RecordHook {
    tx: mpsc::Sender<Msg>,
    epoch: Instant,
    on_full: OnFull,
    shared: Arc<Shared>,
    last_warn_ms: AtomicU64,
}

/// Request headers a tape keeps, by lower-case name. Credentials (`Authorization`, cookies, API
/// keys) are not among them: they are never captured.
pub const RECORDED_HEADERS: &[&str] = &[
    "mcp-session-id",
    "mcp-protocol-version",
    "mcp-method",
    "mcp-name",
    "last-event-id",
    "content-type",
    "accept",
];

/// The transport details worth keeping, copied out of the front's borrowed view.
fn capture(t: &Transport<'_>) -> Option<Box<shadowcat_tape::Transport>> {
    let Transport::Http(m) = t else {
        return None;
    };
    let mut headers = BTreeMap::new();
    if let Some(h) = m.headers {
        for name in RECORDED_HEADERS {
            if let Some(v) = h.get(*name) {
                let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                headers.insert(name.to_string(), v);
            }
        }
    }
    if let Some(ct) = m.content_type {
        headers.insert("content-type".to_string(), ct.to_string());
    }
    Some(Box::new(shadowcat_tape::Transport {
        method: Some(m.method.to_string()),
        // Redacted by the writer, with the message.
        url: m.url.map(str::to_string),
        status: m.status,
        headers,
        sse_id: m.sse_id.map(str::to_string),
    }))
}

fn dir(d: Direction) -> Dir {
    match d {
        Direction::ClientToServer => Dir::ClientToServer,
        Direction::ServerToClient => Dir::ServerToClient,
    }
}

impl RecordHook {
    pub(crate) fn new(
        tx: mpsc::Sender<Msg>,
        epoch: Instant,
        on_full: OnFull,
        shared: Arc<Shared>,
    ) -> Self {
        RecordHook {
            tx,
            epoch,
            on_full,
            shared,
            last_warn_ms: AtomicU64::new(0),
        }
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    fn msg(
        &self,
        d: Direction,
        session: &str,
        frame: &Frame,
        transport: &Transport<'_>,
        note: Option<&'static str>,
    ) -> Msg {
        Msg::Frame {
            t_us: self.now_us(),
            dir: dir(d),
            session: session.into(),
            raw: frame.raw().clone(),
            transport: capture(transport),
            note,
        }
    }

    /// Hand a message to the writer. `None` when done; `Some(future)` to wait for room.
    fn offer(&self, session: &str, msg: Msg) -> Option<Verdict> {
        match self.tx.try_send(msg) {
            Ok(()) | Err(TrySendError::Closed(_)) => None,
            Err(TrySendError::Full(msg)) => match self.on_full {
                OnFull::Block => {
                    let tx = self.tx.clone();
                    Some(Verdict::Defer(Box::pin(async move {
                        let _ = tx.send(msg).await;
                        Verdict::Forward
                    })))
                }
                OnFull::Drop => {
                    self.dropped(session);
                    None
                }
            },
        }
    }

    fn dropped(&self, session: &str) {
        let total = self.shared.dropped_total.fetch_add(1, Ordering::Relaxed) + 1;
        {
            let mut m = crate::sync::lock(&self.shared.dropped);
            *m.entry(session.into()).or_default() += 1;
        }
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        let last = self.last_warn_ms.load(Ordering::Relaxed);
        if (total == 1 || now_ms.saturating_sub(last) >= 5000)
            && self
                .last_warn_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                dropped_total = total,
                "the tape writer is behind (disk slower than traffic): frames are left out of the tape; use --record-on-full block for complete tapes"
            );
        }
    }
}

impl Hook for RecordHook {
    fn name(&self) -> &'static str {
        "record"
    }

    fn on_frame(&self, ctx: &FrameCtx<'_>, frame: &Frame) -> Verdict {
        if let Transport::Later = ctx.transport {
            // Recorded by `on_delivered`, with how it reached the client.
            return Verdict::Forward;
        }
        let msg = self.msg(ctx.direction, ctx.session, frame, &ctx.transport, None);
        self.offer(ctx.session, msg).unwrap_or(Verdict::Forward)
    }

    fn wants_delivery(&self) -> bool {
        true
    }

    fn wants_url(&self) -> bool {
        true
    }

    fn on_delivered(&self, ctx: &FrameCtx<'_>, frame: &Frame) -> Option<Wait> {
        let note = match ctx.transport {
            Transport::Undelivered => Some("undelivered"),
            _ => None,
        };
        let msg = self.msg(ctx.direction, ctx.session, frame, &ctx.transport, note);
        match self.offer(ctx.session, msg)? {
            Verdict::Defer(wait) => Some(Box::pin(async move {
                wait.await;
            })),
            _ => None,
        }
    }

    fn on_answered(&self, ctx: &FrameCtx<'_>, frame: &Frame, answer: &Frame, _by: &'static str) {
        // Observers cannot wait: both lines are offered without blocking.
        let m = self.msg(
            ctx.direction,
            ctx.session,
            frame,
            &ctx.transport,
            Some("answered-by-hook"),
        );
        if self.offer(ctx.session, m).is_some() {
            self.dropped(ctx.session);
        }
        let back = match ctx.direction {
            Direction::ClientToServer => Direction::ServerToClient,
            Direction::ServerToClient => Direction::ClientToServer,
        };
        let m = self.msg(
            back,
            ctx.session,
            answer,
            &Transport::None,
            Some("hook-answer"),
        );
        if self.offer(ctx.session, m).is_some() {
            self.dropped(ctx.session);
        }
    }

    fn on_session_end(&self, session: &str) {
        let _ = self.tx.try_send(Msg::SessionEnd {
            session: session.into(),
            t_us: self.now_us(),
        });
    }
}
