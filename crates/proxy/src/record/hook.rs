//! The recorder's pipeline hook: timestamp, hand over, never parse.

use super::{Msg, OnFull, Shared};
use crate::pipeline::{Direction, FrameCtx, Hook, Verdict};
use shadowcat_proto::Frame;
use shadowcat_tape::Dir;
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

    fn msg(&self, d: Direction, session: &str, frame: &Frame, note: Option<&'static str>) -> Msg {
        Msg::Frame {
            t_us: self.now_us(),
            dir: dir(d),
            session: session.into(),
            raw: frame.raw().clone(),
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
            let mut m = self
                .shared
                .dropped
                .lock()
                .unwrap_or_else(|p| p.into_inner());
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
        let msg = self.msg(ctx.direction, ctx.session, frame, None);
        self.offer(ctx.session, msg).unwrap_or(Verdict::Forward)
    }

    fn on_answered(&self, ctx: &FrameCtx<'_>, frame: &Frame, answer: &Frame) {
        // Observers cannot wait: both lines are offered without blocking.
        let m = self.msg(ctx.direction, ctx.session, frame, Some("answered-by-hook"));
        if self.offer(ctx.session, m).is_some() {
            self.dropped(ctx.session);
        }
        let back = match ctx.direction {
            Direction::ClientToServer => Direction::ServerToClient,
            Direction::ServerToClient => Direction::ClientToServer,
        };
        let m = self.msg(back, ctx.session, answer, Some("hook-answer"));
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
