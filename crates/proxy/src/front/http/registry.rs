//! The HTTP front's live sessions: lookup by proxy id (bound to the route that created it),
//! the session limit, idle reaping, and the pump that routes each session's server frames.

use super::outbox::{Outbox, Route};
use crate::session::Session;
use crate::upstream::UpstreamEvent;
use shadowcat_proto::{Frame, FrameKind};
use std::collections::HashMap;
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
        self.outbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Mark the session in use until the guard drops (an HTTP request or stream is open).
    pub fn busy(self: &Arc<Self>) -> BusyGuard {
        self.busy.fetch_add(1, Ordering::AcqRel);
        self.touch();
        BusyGuard(self.clone())
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
}

/// Keeps a session busy while alive.
pub struct BusyGuard(Arc<HttpSession>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// All live sessions of one HTTP front.
pub struct Registry {
    map: Mutex<HashMap<Arc<str>, Arc<HttpSession>>>,
    max: usize,
    queue_capacity: usize,
}

impl Registry {
    /// A registry holding at most `max` sessions.
    pub fn new(max: usize, queue_capacity: usize) -> Self {
        Registry {
            map: Mutex::new(HashMap::new()),
            max,
            queue_capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Arc<HttpSession>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether another session may be created.
    pub fn has_room(&self) -> bool {
        self.len() < self.max
    }

    /// The configured session limit.
    pub fn max(&self) -> usize {
        self.max
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
            outbox: Mutex::new(Outbox::new(self.queue_capacity)),
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

    /// Remove a session and stop its upstream. Returns false if it was not there.
    pub async fn end(&self, id: &str) -> bool {
        let s = self.lock().remove(id);
        match s {
            Some(s) => {
                s.core.shutdown().await;
                s.outbox().close();
                true
            }
            None => false,
        }
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

    /// Requests still in flight across all sessions.
    pub fn inflight(&self) -> usize {
        self.lock().values().map(|s| s.core.inflight().len()).sum()
    }

    async fn pump(&self, s: Arc<HttpSession>, mut events: mpsc::Receiver<UpstreamEvent>) {
        let cancel = s.core.cancel_token().clone();
        loop {
            let ev = tokio::select! {
                ev = events.recv() => ev,
                _ = cancel.cancelled() => None,
            };
            match ev {
                Some(UpstreamEvent::Frame { frame, via }) => {
                    let owner = match (frame.kind(), frame.progress_token()) {
                        (FrameKind::Notification, Some(t)) => {
                            s.core.inflight().by_progress_token(t)
                        }
                        _ => None,
                    };
                    if let Some(frame) = s.core.from_server(frame).await {
                        deliver(&s, frame, &via, owner).await;
                    }
                }
                Some(UpstreamEvent::Closed { reason, .. }) => {
                    tracing::info!(%reason, "upstream closed; ending the session");
                    for err in s.core.inflight().fail_all(&reason) {
                        deliver(&s, err, &crate::upstream::Via::Unrelated, None).await;
                    }
                    break;
                }
                None => break,
            }
        }
        // The session is over: forget it, release its upstream, finish its streams.
        let id = s.core.id().clone();
        self.lock().remove(&id);
        s.core.shutdown().await;
        s.outbox().close();
    }
}

async fn deliver(
    s: &HttpSession,
    frame: Frame,
    via: &crate::upstream::Via,
    owner: Option<shadowcat_proto::RequestId>,
) {
    let (route, frame) = s.outbox().route(frame, via, owner);
    if let (Route::To(tx), Some(frame)) = (route, frame) {
        // A client that went away makes this fail; that is fine.
        let _ = tx.send(frame).await;
    }
}
