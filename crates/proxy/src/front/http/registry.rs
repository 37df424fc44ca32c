//! The HTTP front's live sessions: lookup by proxy id (bound to the route that created it),
//! the session limit, idle reaping, and the pump that routes each session's server frames.

use super::outbox::{GET_STREAM, Out, Outbox, Outgoing, Plan, StreamId};
use crate::pipeline::{HttpMeta, Transport};
use crate::session::Session;
use crate::session::pump::{self, Deliver};
use crate::upstream::{UpstreamEvent, Via};
use shadowcat_proto::{Frame, FrameKind, RequestId};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// One session as the HTTP front sees it.
pub struct HttpSession {
    core: Arc<Session>,
    route: Arc<str>,
    outbox: Mutex<Outbox>,
    busy: AtomicUsize,
    last_active_ms: AtomicU64,
    epoch: Instant,
}

impl HttpSession {
    /// The engine session.
    pub fn core(&self) -> &Arc<Session> {
        &self.core
    }

    /// The route (target) this session belongs to.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// The routing table (lock is never held across an await).
    pub fn outbox(&self) -> MutexGuard<'_, Outbox> {
        crate::sync::lock(&self.outbox)
    }

    /// Mark the session in use until the guard drops (an HTTP request or stream is open).
    pub fn busy(self: &Arc<Self>) -> BusyGuard {
        self.busy.fetch_add(1, Ordering::AcqRel);
        self.touch();
        self.core.touch();
        BusyGuard(self.clone())
    }

    /// Activity without keeping the session busy (a GET stream opened).
    pub fn touched(&self) {
        self.touch();
        self.core.touch();
    }

    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_active_ms.store(ms, Ordering::Release);
    }

    fn idle_for(&self) -> Option<Duration> {
        if self.busy.load(Ordering::Acquire) > 0 || !self.core.inflight().is_empty() {
            return None;
        }
        let last = self.last_active_ms.load(Ordering::Acquire);
        let now = self.epoch.elapsed().as_millis() as u64;
        Some(Duration::from_millis(now.saturating_sub(last)))
    }

    /// Route a frame made by the proxy or a hook to the client and deliver it.
    pub async fn deliver(&self, frame: Frame, via: &Via, owner: Option<RequestId>) {
        let plan = self.outbox().route(Outgoing::quiet(frame), via, owner);
        self.execute(plan).await;
    }

    /// Tell the hooks how a reported frame went out.
    async fn report(&self, out: &Outgoing, transport: Transport<'_>) {
        if out.report {
            self.core.delivered(&out.frame, transport).await;
        }
    }

    /// Carry out a routing decision: log SSE events before sending them.
    pub async fn execute(&self, plan: Plan) {
        match plan {
            Plan::Json {
                sink: Some(tx),
                frames,
            } => {
                for out in &frames {
                    self.report(out, json_reply()).await;
                }
                let frames = frames.into_iter().map(|o| o.frame).collect();
                let _ = tx.send(Out::Json(frames)).await;
            }
            Plan::Deliver {
                stream,
                frames,
                finish,
            } => {
                // Logged before sent, all of them in one store write.
                let ids = {
                    let data: Vec<&[u8]> = frames
                        .iter()
                        .map(|o| o.as_ref().map(|o| &o.frame.raw()[..]).unwrap_or(b""))
                        .collect();
                    self.core.log_events(&stream, &data).await
                };
                for (out, id) in frames.into_iter().zip(ids) {
                    let sink = self.outbox().logged(&stream, id.clone());
                    if let Some(out) = &out {
                        self.report(out, sse_event(&stream, id.as_deref())).await;
                    }
                    let frame = out.map(|o| o.frame);
                    if let Some(tx) = sink {
                        // A client that went away makes this fail; the event is in the log.
                        let _ = tx.send(Out::Event { frame, id }).await;
                    }
                }
                if finish {
                    self.outbox().finish(&stream);
                }
            }
            Plan::Json { sink: None, frames } => {
                for out in &frames {
                    self.report(out, Transport::Undelivered).await;
                }
            }
            Plan::Dropped(Some(out)) => self.report(&out, Transport::Undelivered).await,
            Plan::Held | Plan::Dropped(None) => {}
        }
    }
}

/// How a reply sent as the POST's JSON body travelled.
fn json_reply() -> Transport<'static> {
    Transport::Http(HttpMeta {
        method: "POST",
        status: Some(200),
        content_type: Some("application/json"),
        headers: None,
        url: None,
        sse_id: None,
    })
}

/// How a message sent as an SSE event of `stream` travelled.
fn sse_event<'a>(stream: &str, id: Option<&'a str>) -> Transport<'a> {
    Transport::Http(HttpMeta {
        method: if stream == GET_STREAM { "GET" } else { "POST" },
        status: Some(200),
        content_type: Some("text/event-stream"),
        headers: None,
        url: None,
        sse_id: id,
    })
}

/// Keeps a session busy while alive.
pub struct BusyGuard(Arc<HttpSession>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// All live sessions of one HTTP front (the session limit, records and event log are the
/// host's).
#[derive(Default)]
pub struct Registry {
    map: Mutex<HashMap<Arc<str>, Arc<HttpSession>>>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Arc<HttpSession>>> {
        crate::sync::lock(&self.map)
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Find a session; it must belong to `route` (another route's id is unknown here).
    pub fn get(&self, id: &str, route: &str) -> Option<Arc<HttpSession>> {
        self.lock().get(id).filter(|s| &*s.route == route).cloned()
    }

    /// Add a session and start the task that routes its server frames.
    pub fn insert(
        self: &Arc<Self>,
        core: Arc<Session>,
        route: Arc<str>,
        events: mpsc::Receiver<UpstreamEvent>,
    ) -> Arc<HttpSession> {
        let s = Arc::new(HttpSession {
            core: core.clone(),
            route,
            outbox: Mutex::new(Outbox::new()),
            busy: AtomicUsize::new(0),
            last_active_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        });
        self.lock().insert(core.id().clone(), s.clone());
        let reg = self.clone();
        let pumped = s.clone();
        let span = tracing::info_span!("session", id = %core.id());
        let pump = async move { reg.pump(pumped, events).await };
        core.tracker()
            .spawn(tracing::Instrument::instrument(pump, span));
        s
    }

    /// Like [`Registry::insert`], unless a session with this id exists: then that one is
    /// returned as the error and nothing is started.
    pub fn insert_new(
        self: &Arc<Self>,
        core: Arc<Session>,
        route: Arc<str>,
        events: mpsc::Receiver<UpstreamEvent>,
    ) -> Result<Arc<HttpSession>, Arc<HttpSession>> {
        if let Some(existing) = self.lock().get(core.id()).cloned() {
            return Err(existing);
        }
        Ok(self.insert(core, route, events))
    }

    /// Remove a session, stop its upstream and drop its event log. False if it was not there.
    pub async fn end(&self, id: &str) -> bool {
        // Ends its record too (the session host's teardown).
        self.let_go(id, false).await
    }

    /// Let go of session `id` for another replica to continue ([`Session::hand_off`]); `false`
    /// when it is not here.
    ///
    /// [`Session::hand_off`]: crate::session::Session::hand_off
    pub async fn hand_off(&self, id: &str) -> bool {
        self.let_go(id, true).await
    }

    /// Take session `id` out of the table, end it or hand it off, and close its outbox.
    async fn let_go(&self, id: &str, hand_off: bool) -> bool {
        let Some(s) = self.lock().remove(id) else {
            return false;
        };
        if hand_off {
            s.core.hand_off().await;
        } else {
            s.core.shutdown().await;
        }
        s.outbox().close();
        true
    }

    /// Every session id.
    pub fn ids(&self) -> Vec<Arc<str>> {
        self.lock().keys().cloned().collect()
    }

    /// Sessions idle (no open request or stream, nothing in flight) for longer than `timeout`.
    pub fn idle(&self, timeout: Duration) -> Vec<Arc<str>> {
        self.lock()
            .iter()
            .filter(|(_, s)| s.idle_for().is_some_and(|d| d >= timeout))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Drop the logged events of every finished POST stream whose grace period is over (a
    /// resumption after them then gets "events may have been lost").
    pub async fn drop_finished_streams(&self, grace: Duration) {
        let sessions: Vec<Arc<HttpSession>> = self.lock().values().cloned().collect();
        let now = Instant::now();
        for s in sessions {
            let done: Vec<StreamId> = s.outbox().finished_before(now, grace);
            for stream in done {
                s.core.drop_stream(&stream).await;
            }
        }
    }

    /// Route a session's server frames until its upstream closes or the session ends. Idle,
    /// this future waits on the channel only: everything else it awaits is boxed, so that the
    /// task a session keeps (its size is the largest state it can be in) stays small.
    async fn pump(&self, s: Arc<HttpSession>, mut events: mpsc::Receiver<UpstreamEvent>) {
        pump::pump(&s.core, &mut events, &mut ToOutbox(&s)).await;
        // The session is over: forget it, release its upstream (and end its record), finish its
        // streams.
        Box::pin(async {
            self.lock().remove(s.core.id());
            s.core.shutdown().await;
            s.outbox().close();
        })
        .await;
    }
}

/// The Streamable HTTP front's side of the pump: server frames go through the pipeline into the
/// outbox, which routes them to the client's streams. Its futures are boxed (see
/// [`Registry::pump`]).
struct ToOutbox<'a>(&'a Arc<HttpSession>);

impl Deliver for ToOutbox<'_> {
    fn frames(&mut self, mut burst: Vec<(Frame, Via)>) -> impl Future<Output = bool> + Send {
        let s = self.0;
        // A server message is activity (an idle timeout counts from the last one).
        s.touch();
        Box::pin(async move {
            if burst.len() == 1
                && let Some((frame, via)) = burst.pop()
            {
                route_server_frame(s, frame, via).await;
            } else {
                // Consecutive events of one stream are then logged with one store write.
                route_server_frames(s, burst).await;
            }
            true
        })
    }

    fn closed(&mut self, errors: Vec<Frame>) -> impl Future<Output = ()> + Send {
        let s = self.0;
        Box::pin(async move {
            for err in errors {
                s.deliver(err, &Via::Unrelated, None).await;
            }
        })
    }
}

/// Several server frames, in order: each through the pipeline and routed; consecutive SSE
/// events of one stream are delivered together (logged with one store write).
async fn route_server_frames(s: &Arc<HttpSession>, batch: Vec<(Frame, Via)>) {
    let mut pending: Option<Plan> = None;
    for (frame, via) in batch {
        let Some(plan) = plan_server_frame(s, frame, via).await else {
            continue;
        };
        pending = match (pending.take(), plan) {
            (
                Some(Plan::Deliver {
                    stream,
                    mut frames,
                    finish: false,
                }),
                Plan::Deliver {
                    stream: next,
                    frames: more,
                    finish,
                },
            ) if stream == next => {
                frames.extend(more);
                Some(Plan::Deliver {
                    stream,
                    frames,
                    finish,
                })
            }
            (earlier, plan) => {
                if let Some(p) = earlier {
                    s.execute(p).await;
                }
                match plan {
                    p @ Plan::Deliver { .. } => Some(p),
                    p => {
                        s.execute(p).await;
                        None
                    }
                }
            }
        };
    }
    if let Some(p) = pending {
        s.execute(p).await;
    }
}

/// One server frame through the pipeline, and where it goes (nothing if a hook dropped it).
async fn plan_server_frame(s: &Arc<HttpSession>, frame: Frame, via: Via) -> Option<Plan> {
    let owner = match (frame.kind(), frame.progress_token()) {
        (FrameKind::Notification, Some(t)) => s.core.inflight().by_progress_token(t),
        _ => None,
    };
    // With hooks, they hear how the frame reached the client once it has.
    let report = s.core.reports_delivery();
    let transport = if report {
        Transport::Later
    } else {
        Transport::None
    };
    let frame = s.core.from_server_via(frame, transport).await?;
    Some(s.outbox().route(Outgoing { frame, report }, &via, owner))
}

/// One server frame: the pipeline, then the client stream it belongs on.
async fn route_server_frame(s: &Arc<HttpSession>, frame: Frame, via: Via) {
    if let Some(plan) = plan_server_frame(s, frame, via).await {
        s.execute(plan).await;
    }
}
