//! Shadow traffic (`--shadow URL`): every client request and notification is mirrored to a second
//! upstream, one shadow session per proxy session. The client only ever sees the primary's
//! answers; the shadow's replies are compared with the primary's (ids and `jsonrpc` aside) and
//! each difference is logged (`shadowcat::shadow` target) and counted. With a recorder, the
//! shadow's own traffic goes to its own tape, so `tape diff` can compare the two recordings.
//!
//! Mirroring never slows the primary: frames reach each shadow session through a bounded queue
//! and are dropped (and counted) when it is full. Requests the shadow server sends to the client
//! (sampling, elicitation) are answered with an error: the shadow has no client.

use crate::pipeline::{Direction, FrameCtx, Hook, Verdict};
use crate::record::RecordHook;
use crate::sync::lock;
use crate::upstream::{
    self, HttpClient, UpstreamCtx, UpstreamEvent, UpstreamOptions, UpstreamSpec,
};
use serde_json::Value;
use shadowcat_proto::error::{METHOD_NOT_FOUND, error_frame};
use shadowcat_proto::{Frame, FrameKind, RequestId};
use shadowcat_tape::diff::leaf_diff;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Frames queued for one shadow session before mirroring drops them.
const QUEUE: usize = 256;
/// How long a shadow session may still answer after its primary session ended.
const GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Counters of a shadow.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ShadowStats {
    /// Reply pairs compared.
    pub compared: u64,
    /// Pairs that differed.
    pub differed: u64,
    /// Frames not mirrored because a shadow session was behind or gone.
    pub dropped: u64,
}

/// Which reply of a pair arrived first, and what was asked.
enum Half {
    Asked(String),
    Primary(String, Value),
    Shadow(String, Value),
}

type Key = (Arc<str>, RequestId);

struct Inner {
    spec: UpstreamSpec,
    options: UpstreamOptions,
    http: HttpClient,
    tracker: TaskTracker,
    cancel: CancellationToken,
    recorder: Option<Arc<RecordHook>>,
    sessions: Mutex<HashMap<Arc<str>, mpsc::Sender<Frame>>>,
    pairs: Mutex<HashMap<Key, Half>>,
    compared: AtomicU64,
    differed: AtomicU64,
    dropped: AtomicU64,
}

/// The shadow hook.
pub struct Shadow {
    inner: Arc<Inner>,
}

/// The parts of a reply that are compared.
fn comparable(f: &Frame) -> Value {
    let mut v: Value = serde_json::from_slice(f.raw()).unwrap_or(Value::Null);
    if let Some(m) = v.as_object_mut() {
        m.remove("id");
        m.remove("jsonrpc");
    }
    v
}

impl Shadow {
    /// Mirror to `spec`. `recorder` records the shadow's traffic (its own tape). Sessions stop
    /// with `cancel`; their tasks are on `tracker`.
    pub fn new(
        spec: UpstreamSpec,
        options: UpstreamOptions,
        http: HttpClient,
        recorder: Option<Arc<RecordHook>>,
        tracker: TaskTracker,
        cancel: CancellationToken,
    ) -> Arc<Shadow> {
        Arc::new(Shadow {
            inner: Arc::new(Inner {
                spec,
                options,
                http,
                tracker,
                cancel,
                recorder,
                sessions: Mutex::new(HashMap::new()),
                pairs: Mutex::new(HashMap::new()),
                compared: AtomicU64::new(0),
                differed: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
            }),
        })
    }

    /// Counters so far.
    pub fn stats(&self) -> ShadowStats {
        let i = &self.inner;
        ShadowStats {
            compared: i.compared.load(Ordering::Relaxed),
            differed: i.differed.load(Ordering::Relaxed),
            dropped: i.dropped.load(Ordering::Relaxed),
        }
    }

    fn queue(&self, session: &str) -> mpsc::Sender<Frame> {
        let mut map = lock(&self.inner.sessions);
        if let Some(tx) = map.get(session) {
            return tx.clone();
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let id: Arc<str> = Arc::from(session);
        map.insert(id.clone(), tx.clone());
        let inner = self.inner.clone();
        let span = tracing::info_span!("shadow", session = %id);
        self.inner
            .tracker
            .spawn(tracing::Instrument::instrument(run(inner, id, rx), span));
        tx
    }
}

impl Inner {
    /// One reply of a pair arrived; compare when both have.
    fn reply(&self, session: &Arc<str>, id: &RequestId, frame: &Frame, primary: bool) {
        let key = (session.clone(), id.clone());
        let mut pairs = lock(&self.pairs);
        let Some(half) = pairs.remove(&key) else {
            return;
        };
        let v = comparable(frame);
        let (what, p, s) = match (half, primary) {
            (Half::Asked(what), true) => {
                pairs.insert(key, Half::Primary(what, v));
                return;
            }
            (Half::Asked(what), false) => {
                pairs.insert(key, Half::Shadow(what, v));
                return;
            }
            (Half::Shadow(what, s), true) => (what, v, s),
            (Half::Primary(what, p), false) => (what, p, v),
            (other, _) => {
                pairs.insert(key, other);
                return;
            }
        };
        drop(pairs);
        self.compared.fetch_add(1, Ordering::Relaxed);
        let diffs = leaf_diff(&p, &s);
        if diffs.is_empty() {
            return;
        }
        let n = self.differed.fetch_add(1, Ordering::Relaxed) + 1;
        let shown: Vec<String> = diffs
            .iter()
            .take(5)
            .map(|(ptr, a, b)| {
                let show =
                    |x: &Option<Value>| x.as_ref().map_or("(absent)".into(), |v| v.to_string());
                format!("{ptr}: {} vs {}", show(a), show(b))
            })
            .collect();
        tracing::warn!(
            target: "shadowcat::shadow",
            session = %session,
            request = %what,
            differences = diffs.len(),
            differed_total = n,
            "shadow response differs from the primary's: {}",
            shown.join("; ")
        );
    }

    fn record(&self, session: &str, direction: Direction, frame: &Frame) {
        if let Some(r) = &self.recorder {
            let _ = r.on_frame(&FrameCtx::new(session, direction), frame);
        }
    }
}

async fn run(inner: Arc<Inner>, session: Arc<str>, mut rx: mpsc::Receiver<Frame>) {
    let ctx = UpstreamCtx {
        session: session.clone(),
        cancel: inner.cancel.child_token(),
        front_cancel: inner.cancel.clone(),
        tracker: inner.tracker.clone(),
        http: inner.http.clone(),
        options: inner.options.clone(),
        guard: None,
    };
    let (up, mut events) = match upstream::connect(&inner.spec, ctx).await {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(error = %e, "cannot reach the shadow upstream; this session is not mirrored");
            lock(&inner.sessions).remove(&session);
            return;
        }
    };
    let mut initialize: Option<RequestId> = None;
    let mut outstanding = 0usize;
    let mut awaiting_init = false;
    let mut ended: Option<tokio::time::Instant> = None;
    loop {
        if ended.is_some_and(|t| outstanding == 0 || t.elapsed() >= GRACE) {
            break;
        }
        tokio::select! {
            // Nothing else goes out before the shadow answered initialize: HTTP upstreams need
            // the session id it brings (frames wait in the queue meanwhile).
            f = rx.recv(), if ended.is_none() && !awaiting_init => {
                let Some(f) = f else {
                    // The primary session ended: give the shadow a moment to answer what it has.
                    ended = Some(tokio::time::Instant::now());
                    continue;
                };
                if f.is_initialize() {
                    initialize = f.id().cloned();
                    awaiting_init = true;
                }
                if f.kind() == FrameKind::Request {
                    outstanding += 1;
                }
                inner.record(&session, Direction::ClientToServer, &f);
                if let Err(e) = up.send(f).await {
                    tracing::debug!(error = %e, "the shadow upstream did not take a frame");
                }
            }
            ev = events.recv() => match ev {
                Some(UpstreamEvent::Frame { frame, .. }) => {
                    inner.record(&session, Direction::ServerToClient, &frame);
                    match (frame.kind(), frame.id()) {
                        (FrameKind::Request, Some(id)) => {
                            let no = error_frame(Some(id), METHOD_NOT_FOUND, "a shadow session has no client to ask");
                            inner.record(&session, Direction::ClientToServer, &no);
                            let _ = up.send(no).await;
                        }
                        (k, Some(id)) if k.is_reply() => {
                            outstanding = outstanding.saturating_sub(1);
                            if initialize.as_ref() == Some(id) {
                                awaiting_init = false;
                            }
                            if initialize.as_ref() == Some(id)
                                && let Some(v) = comparable(&frame).pointer("/result/protocolVersion").and_then(Value::as_str)
                            {
                                up.set_protocol_version(v);
                            }
                            inner.reply(&session, id, &frame, false);
                        }
                        _ => {}
                    }
                }
                Some(UpstreamEvent::Closed { reason, .. }) => {
                    tracing::debug!(%reason, "the shadow upstream closed");
                    break;
                }
                None => break,
            },
            _ = tokio::time::sleep(GRACE), if ended.is_some() => {}
            _ = inner.cancel.cancelled() => break,
        }
    }
    up.shutdown().await;
    lock(&inner.pairs).retain(|(s, _), _| *s != session);
    if let Some(r) = &inner.recorder {
        r.on_session_end(&session);
    }
}

impl Hook for Shadow {
    fn name(&self) -> &'static str {
        "shadow"
    }

    fn on_frame(&self, ctx: &FrameCtx<'_>, frame: &Frame) -> Verdict {
        match (ctx.direction, frame.kind()) {
            (Direction::ClientToServer, FrameKind::Request | FrameKind::Notification) => {
                if let (FrameKind::Request, Some(id)) = (frame.kind(), frame.id()) {
                    let what = match frame.target() {
                        Some(t) => format!("{} {t}", frame.method().unwrap_or("")),
                        None => frame.method().unwrap_or("").to_string(),
                    };
                    lock(&self.inner.pairs)
                        .insert((Arc::from(ctx.session), id.clone()), Half::Asked(what));
                }
                if self.queue(ctx.session).try_send(frame.clone()).is_err() {
                    self.inner.dropped.fetch_add(1, Ordering::Relaxed);
                    if let Some(id) = frame.id() {
                        lock(&self.inner.pairs).remove(&(Arc::from(ctx.session), id.clone()));
                    }
                }
            }
            (Direction::ServerToClient, k) if k.is_reply() => {
                if let Some(id) = frame.id() {
                    self.inner.reply(&Arc::from(ctx.session), id, frame, true);
                }
            }
            _ => {}
        }
        Verdict::Forward
    }

    fn on_session_end(&self, session: &str) {
        // Closing the queue tells the shadow session to finish (after a short grace).
        lock(&self.inner.sessions).remove(session);
    }
}
