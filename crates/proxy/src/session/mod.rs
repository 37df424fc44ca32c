//! A session: one client's conversation with one upstream. It owns the upstream, knows the
//! negotiated protocol version, tracks the client's in-flight requests (so that a dying upstream
//! turns each into a JSON-RPC error, never silence) and runs the pipeline on every frame.

pub mod events;
pub mod host;
mod id;
mod inflight;
pub mod place;
pub mod pump;
pub mod records;
mod sweeper;

pub use host::{Host, Kind, Slot};
pub use id::mint_session_id;
pub use inflight::Inflight;

use crate::error::ProxyError;
use crate::guard::Guard;
use crate::pipeline::{Direction, FrameCtx, Grant, Outcome, Pipeline, Transport};
use crate::upstream::{self, Exchange, Upstream, UpstreamCtx, UpstreamEvent, UpstreamSpec, Via};
use shadowcat_proto::era::ProtocolVersion;
use shadowcat_proto::error::{REQUEST_TIMEOUT, UPSTREAM_ERROR, error_frame};
use shadowcat_proto::{Frame, FrameKind, RequestId};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What happened to a client frame.
#[derive(Debug)]
pub enum Sent {
    /// Handed to the upstream.
    Forwarded,
    /// A hook answered it; send this frame back to the client.
    Replied(Frame),
    /// A hook dropped it.
    Dropped,
}

/// One client session and its upstream.
pub struct Session {
    id: Arc<str>,
    spec: UpstreamSpec,
    upstream: Upstream,
    pipeline: Pipeline,
    inflight: Inflight,
    protocol: OnceLock<String>,
    principal: OnceLock<Arc<str>>,
    /// The route it was admitted under (hooks see it in [`FrameCtx::route`]).
    route: OnceLock<Arc<str>>,
    /// What the admitting policy attached to its latest request (hooks see it in
    /// [`FrameCtx::grant`]).
    grant: std::sync::RwLock<Option<Grant>>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    ending: AtomicBool,
    /// Breaker, retries and timeouts of the upstream (gateway mode).
    guard: Option<Arc<Guard>>,
    /// Puts the proxy's own answers (timeouts) on the upstream's event channel.
    loopback: mpsc::WeakSender<UpstreamEvent>,
    /// Its place in the session host (given back when the session shuts down).
    slot: std::sync::Mutex<Option<Slot>>,
    /// The host it was created in: its records and event log are there.
    host: OnceLock<Arc<Host>>,
    /// Appends to its event log since retention last ran.
    log_counters: events::LogCounters,
    /// Held while its record is read and written back, so that two changes (the negotiated
    /// version, a composite's state) never overwrite each other.
    record_lock: tokio::sync::Mutex<()>,
    /// With a request timeout: its place in the thread's sweeper, which times its requests out.
    _timeouts: Option<sweeper::Registration>,
}

impl Session {
    /// Create a session and its upstream. Server frames arrive on the returned receiver; pass
    /// each through [`Session::from_server`] before delivering it.
    pub async fn connect(
        id: Arc<str>,
        spec: UpstreamSpec,
        pipeline: Pipeline,
        ctx: UpstreamCtx,
    ) -> Result<(Arc<Session>, mpsc::Receiver<UpstreamEvent>), ProxyError> {
        let opened = upstream::open(&spec, ctx.clone()).await?;
        Ok(Session::with_upstream(id, spec, pipeline, opened, ctx))
    }

    /// Create a session on an upstream opened beforehand (a warm spare) with `ctx`, whose
    /// cancel token ends it.
    pub fn with_upstream(
        id: Arc<str>,
        spec: UpstreamSpec,
        pipeline: Pipeline,
        opened: upstream::Opened,
        ctx: UpstreamCtx,
    ) -> (Arc<Session>, mpsc::Receiver<UpstreamEvent>) {
        let UpstreamCtx {
            cancel,
            tracker,
            guard,
            ..
        } = ctx;
        let timeout = guard.as_ref().and_then(|g| g.request_timeout());
        let s = Arc::new_cyclic(|me| Session {
            id,
            spec,
            upstream: opened.upstream,
            pipeline,
            inflight: Inflight::default(),
            protocol: OnceLock::new(),
            principal: OnceLock::new(),
            route: OnceLock::new(),
            grant: std::sync::RwLock::new(None),
            cancel,
            tracker,
            ending: AtomicBool::new(false),
            guard,
            loopback: opened.loopback,
            slot: std::sync::Mutex::new(None),
            host: OnceLock::new(),
            log_counters: events::LogCounters::default(),
            record_lock: tokio::sync::Mutex::new(()),
            _timeouts: timeout.map(|t| sweeper::register(me.clone(), t)),
        });
        (s, opened.events)
    }

    /// The proxy's session id.
    pub fn id(&self) -> &Arc<str> {
        &self.id
    }

    /// Where this session's upstream is.
    pub fn spec(&self) -> &UpstreamSpec {
        &self.spec
    }

    /// The upstream.
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// In-flight client requests.
    pub fn inflight(&self) -> &Inflight {
        &self.inflight
    }

    /// Cancelled when the session ends.
    pub fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Tracks the tasks of this session (and of its upstream).
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// The session belongs to `host` (set by the creation path as soon as the session exists,
    /// before it is admitted): its record is written, and its SSE events logged, there.
    pub(crate) fn attach(self: &Arc<Self>, host: &Arc<Host>) {
        let _ = self.host.set(host.clone());
        if let Some(c) = self.upstream.composite() {
            self.record_composite(c.saved());
        }
    }

    /// Keep a composite session's state in its record, as the mux publishes it, until the
    /// session ends (another replica continues the session from it).
    fn record_composite(
        self: &Arc<Self>,
        mut saved: tokio::sync::watch::Receiver<
            Option<Arc<crate::upstream::composite::saved::Saved>>,
        >,
    ) {
        let me = Arc::downgrade(self);
        let cancel = self.cancel.clone();
        self.tracker.spawn(async move {
            // A state published before this task started counts as a change.
            saved.mark_changed();
            loop {
                tokio::select! {
                    changed = saved.changed() => if changed.is_err() { return },
                    _ = cancel.cancelled() => return,
                }
                let Some(state) = saved.borrow_and_update().clone() else {
                    continue;
                };
                let Some(s) = me.upgrade() else { return };
                if let Some(r) = s.records() {
                    let _held = s.record_lock.lock().await;
                    if s.ending.load(Ordering::Acquire) {
                        return;
                    }
                    r.composite(&s.id, state.to_record()).await;
                }
            }
        });
    }

    /// Take the place reserved for this session in the host ([`Host::reserve`]): the session
    /// is bound to the slot's principal and listed in the host's table as a `kind` session of
    /// `route` until it shuts down.
    pub fn admit(self: &Arc<Self>, mut slot: Slot, kind: Kind, route: Arc<str>) {
        if let Some(p) = slot.principal() {
            self.set_principal(p);
        }
        if kind != Kind::Stdio {
            let _ = self.route.set(route.clone());
        }
        slot.list(self, kind, route);
        *crate::sync::lock(&self.slot) = Some(slot);
    }

    /// Bind the session to the authenticated principal that created it (the gateway does, before
    /// the first frame); hooks see it in [`FrameCtx::principal`]. Set once: later calls are
    /// ignored (a session never changes owner).
    pub fn set_principal(&self, principal: &str) {
        let _ = self.principal.set(Arc::from(principal));
    }

    /// Send the client a message of the proxy's own (a `list_changed` after an approval), as if
    /// the server had sent it: it passes the hooks and reaches the client like a server
    /// notification. Never waits: when the session's queue is full it is dropped (and logged).
    pub fn notify_client(&self, frame: Frame) {
        let Some(tx) = self.loopback.upgrade() else {
            return;
        };
        let event = UpstreamEvent::Frame {
            frame: Box::new(frame),
            via: Via::Unrelated,
        };
        if tx.try_send(event).is_err() {
            tracing::warn!(session = %self.id, "a notification of the proxy's own was dropped: the session is busy or ending");
        }
    }

    /// End the session from outside as if its upstream had closed with `reason` (a gateway
    /// draining an upstream that a reload removed): every request still in flight is answered
    /// with a JSON-RPC error saying it, then the front ends the session. Never waits: `false`
    /// when the session's queue is full or gone (the caller then shuts it down).
    pub fn end_with(&self, reason: &str) -> bool {
        let Some(tx) = self.loopback.upgrade() else {
            return false;
        };
        tx.try_send(UpstreamEvent::Closed {
            reason: reason.to_string(),
            exit_code: None,
        })
        .is_ok()
    }

    /// What the admitting policy attached to the session's latest request (the gateway: the
    /// principal with the scopes and claims of the token it came with): hooks see it on the
    /// client's frames. Set when the session is placed and again by each request, so rules see
    /// the latest token.
    pub fn set_grant(&self, grant: Option<Grant>) {
        *crate::sync::write(&self.grant) = grant;
    }

    /// The principal the session is bound to, if any.
    pub fn principal(&self) -> Option<&str> {
        self.principal.get().map(|p| &**p)
    }

    fn ctx<'a>(&'a self, direction: Direction, transport: Transport<'a>) -> FrameCtx<'a> {
        FrameCtx {
            session: &self.id,
            direction,
            principal: self.principal(),
            transport,
            route: self.route.get().map(|r| &**r),
            member: None,
            exchange: 0,
            grant: None,
        }
    }

    /// The protocol version the server agreed to in `initialize`, once known.
    pub fn protocol_version(&self) -> Option<&str> {
        self.protocol.get().map(String::as_str)
    }

    /// Put the client's `clientInfo` and `capabilities` from its `initialize` into the session's
    /// record (for a front whose record was made before the client's `initialize` arrived).
    pub async fn record_client(&self, init: &Frame) {
        if let Some(r) = self.records() {
            r.client(&self.id, init).await;
        }
    }

    /// The records the session's record is in (its host's).
    fn records(&self) -> Option<&Arc<records::Records>> {
        self.host.get().map(|h| h.records())
    }

    /// Activity on the session (coalesced into its record; never waits).
    pub fn touch(&self) {
        if let Some(r) = self.records() {
            r.touch(&self.id);
        }
    }

    /// Log an SSE event of `stream` in the host's event log before it is sent: its SSE id, or
    /// `None` when there is no log or the store failed (it is then sent without an id).
    pub async fn log_event(&self, stream: &str, data: &[u8]) -> Option<Arc<str>> {
        let log = self.host.get()?.events()?;
        log.append(&self.id, stream, data, &self.log_counters).await
    }

    /// [`Session::log_event`] for several events of one stream, in one store write.
    pub async fn log_events(&self, stream: &str, data: &[&[u8]]) -> Vec<Option<Arc<str>>> {
        match self.host.get().and_then(|h| h.events()) {
            Some(log) => {
                log.append_many(&self.id, stream, data, &self.log_counters)
                    .await
            }
            None => vec![None; data.len()],
        }
    }

    /// The logged events of `stream` after the store id `after` (or from the start), up to the
    /// SSE id `until` (see [`events::EventLog::replay`]); `None` when the host keeps no log.
    pub fn replay(
        &self,
        stream: &str,
        after: Option<&str>,
        until: Option<&str>,
    ) -> Option<events::Replay> {
        let log = self.host.get()?.events()?;
        Some(log.replay(&self.id, stream, after, until))
    }

    /// Drop every logged event of a finished `stream`.
    pub async fn drop_stream(&self, stream: &str) {
        if let Some(log) = self.host.get().and_then(|h| h.events()) {
            log.drop_stream(&self.id, stream).await;
        }
    }

    /// Write the negotiated version (and the upstream's session id) into the session's record,
    /// once it is known: other replicas continue the session from it. `false`: not known yet.
    pub async fn record_negotiated(&self) -> bool {
        let Some(version) = self.protocol_version() else {
            return false;
        };
        if let Some(r) = self.records() {
            let upstream = self.upstream.upstream_session_id();
            let _held = self.record_lock.lock().await;
            r.negotiated(&self.id, version, upstream).await;
        }
        true
    }

    /// The negotiated version if it is one this proxy knows.
    pub fn known_version(&self) -> Option<ProtocolVersion> {
        self.protocol_version().and_then(ProtocolVersion::parse)
    }

    /// After the handshake, listen to the upstream's server→client stream in the background (HTTP
    /// upstreams open their GET stream; 405 means the server has none, which is fine).
    pub fn listen_in_background(self: &Arc<Self>) {
        let s = self.clone();
        self.tracker.spawn(async move {
            match s.upstream.open_listen().await {
                Ok(true) => tracing::debug!("listening to the upstream's server-to-client stream"),
                Ok(false) => tracing::debug!("the upstream has no server-to-client stream (405)"),
                Err(e) => tracing::warn!(error = %e, "could not open the upstream's server-to-client stream"),
            }
        });
    }

    /// Run the pipeline on a client frame and, unless a hook decided otherwise, send it upstream.
    pub async fn from_client(&self, frame: Frame) -> Result<Sent, ProxyError> {
        self.from_client_via(frame, Transport::None).await
    }

    /// [`Session::from_client`] for a front that tells hooks how the frame travelled.
    pub async fn from_client_via(
        &self,
        frame: Frame,
        transport: Transport<'_>,
    ) -> Result<Sent, ProxyError> {
        let (sent, exchange) = self.from_client_start(frame, transport).await?;
        if let Some(x) = exchange {
            x.detach();
        }
        Ok(sent)
    }

    /// [`Session::from_client_via`] that hands back the HTTP upstream's request as an
    /// [`Exchange`] for the caller to drive on its own task (see [`Upstream::start`]).
    pub async fn from_client_start(
        &self,
        frame: Frame,
        transport: Transport<'_>,
    ) -> Result<(Sent, Option<Exchange>), ProxyError> {
        // A request reusing the id of one still in flight is refused before any hook sees it
        // (its answer could not be told from the first one's); `insert` below checks again
        // under the table's lock, for two such requests racing through the hooks.
        if frame.kind() == FrameKind::Request
            && let Some(id) = frame.id()
            && self.inflight.contains(id)
        {
            return Err(ProxyError::DuplicateRequestId(id.clone()));
        }
        // No hooks: not even the pipeline's future is made (no cost when unused).
        let frame = if self.pipeline.is_empty() {
            frame
        } else {
            let grant = crate::sync::read(&self.grant).clone();
            let ctx = FrameCtx {
                member: self.upstream.composite().and_then(|c| c.member_of(&frame)),
                grant: grant.as_ref(),
                ..self.ctx(Direction::ClientToServer, transport)
            };
            match self.pipeline.process(&ctx, frame).await {
                Outcome::Forward(f) => f,
                Outcome::Reply(f) => return Ok((Sent::Replied(f), None)),
                Outcome::Drop => return Ok((Sent::Dropped, None)),
            }
        };
        let tracked = match frame.kind() {
            FrameKind::Request => {
                if let Some(id) = frame.id()
                    && !self.inflight.insert(&frame)
                {
                    return Err(ProxyError::DuplicateRequestId(id.clone()));
                }
                if let Some(g) = &self.guard
                    && let Err(why) = g.admit()
                {
                    if let Some(id) = frame.id() {
                        self.inflight.remove(id);
                    }
                    // Hooks saw the request go on: its answer passes them like the server's.
                    let refused = || error_frame(frame.id(), why.jsonrpc_code(), &why.to_string());
                    // Boxed: a refusal is rare, and the answer's path would otherwise be part
                    // of every request's future.
                    let answer = Box::pin(self.from_server(refused()))
                        .await
                        .unwrap_or_else(refused);
                    return Ok((Sent::Replied(answer), None));
                }
                frame.id().cloned()
            }
            _ => None,
        };
        match self.upstream.start(frame).await {
            Ok(exchange) => Ok((Sent::Forwarded, exchange)),
            Err(e) => {
                if let Some(id) = tracked {
                    self.inflight.remove(&id);
                    if !self.pipeline.is_empty() {
                        let ctx = self.ctx(Direction::ClientToServer, Transport::None);
                        self.pipeline.failed(&ctx, &id, &e);
                    }
                }
                Err(e)
            }
        }
    }

    /// Account for a server frame (completes in-flight requests, learns the protocol version)
    /// and run the pipeline on it. Returns the frame to deliver to the client, if any.
    pub async fn from_server(&self, frame: Frame) -> Option<Frame> {
        self.from_server_via(frame, Transport::None).await
    }

    /// Whether hooks want to hear how server frames were delivered: a front that can tell
    /// passes [`Transport::Later`] to [`Session::from_server_via`] and then calls
    /// [`Session::delivered`]. False when there are no hooks (no work at all then).
    pub fn reports_delivery(&self) -> bool {
        self.pipeline.reports_delivery()
    }

    /// [`Session::from_server`] for a front that tells hooks how the frame travelled.
    pub async fn from_server_via(&self, frame: Frame, transport: Transport<'_>) -> Option<Frame> {
        if frame.kind().is_reply()
            && let Some(id) = frame.id()
        {
            match self.inflight.remove(id) {
                Some(req) => {
                    if let Some(g) = &self.guard {
                        g.record(!upstream_failed(&frame));
                    }
                    if req.method.as_ref() == "initialize" && frame.kind() == FrameKind::Response {
                        self.learn_version(&frame);
                    }
                }
                // The client was told this request timed out: its late answer goes nowhere.
                None if self.guard.is_some()
                    && frame.proxy_error() != Some(REQUEST_TIMEOUT)
                    && self.inflight.was_expired(id) =>
                {
                    tracing::debug!(%id, "dropping the late answer to a request that timed out");
                    return None;
                }
                None => {}
            }
        }
        if self.pipeline.is_empty() {
            return Some(frame);
        }
        let ctx = self.ctx(Direction::ServerToClient, transport);
        match self.pipeline.process(&ctx, frame).await {
            Outcome::Forward(f) => Some(f),
            Outcome::Drop => None,
            Outcome::Reply(answer) => {
                if let Err(e) = Box::pin(self.upstream.send(answer)).await {
                    tracing::warn!(error = %e, "could not send a hook's answer upstream");
                }
                None
            }
        }
    }

    /// The upstream is gone: every pending request becomes a JSON-RPC error saying why (each
    /// counted as a failure of the upstream).
    pub fn fail_pending(&self, reason: &str) -> Vec<Frame> {
        let errors = self.inflight.fail_all(reason);
        if let Some(g) = &self.guard {
            for _ in &errors {
                g.record(false);
            }
        }
        errors
    }

    /// A request got no answer in time: tell the client (through the event channel, so the
    /// answer takes the same path as the server's would have), and the server
    /// (`notifications/cancelled`).
    async fn timed_out(&self, id: RequestId, method: &str, after: Duration) {
        if let Some(g) = &self.guard {
            g.timed_out();
        }
        tracing::warn!(session = %self.id, %id, method, "upstream request timed out");
        let msg = format!(
            "{method} timed out: the upstream did not answer within {} s",
            after.as_secs_f64()
        );
        let frame = error_frame(Some(&id), REQUEST_TIMEOUT, &msg);
        if let Some(tx) = self.loopback.upgrade() {
            let via = Via::Request(id.clone());
            let _ = tx
                .send(UpstreamEvent::Frame {
                    frame: Box::new(frame),
                    via,
                })
                .await;
        }
        let cancel = serde_json::json!({
            "jsonrpc": "2.0",
            "method": "notifications/cancelled",
            "params": {"requestId": id, "reason": "timed out at the proxy"},
        });
        if let Ok(f) = Frame::parse_single(cancel.to_string().into()) {
            let _ = self.upstream.send(f).await;
        }
    }

    /// A server frame that passed [`Session::from_server_via`] with [`Transport::Later`] was
    /// handed to the client like this (or could not be: [`Transport::Undelivered`]).
    pub async fn delivered(&self, frame: &Frame, transport: Transport<'_>) {
        let ctx = self.ctx(Direction::ServerToClient, transport);
        self.pipeline.delivered(&ctx, frame).await;
    }

    /// Continue a session another replica created: the negotiated version and the upstream's
    /// session id come from its record.
    pub fn restore(&self, version: Option<&str>, upstream_session_id: Option<&str>) {
        if let Some(v) = version {
            self.upstream.set_protocol_version(v);
            let _ = self.protocol.set(v.to_string());
        }
        if let Some(id) = upstream_session_id {
            self.upstream.restore_session_id(id);
        }
    }

    fn learn_version(&self, frame: &Frame) {
        #[derive(serde::Deserialize)]
        struct R {
            result: Res,
        }
        #[derive(serde::Deserialize)]
        struct Res {
            #[serde(rename = "protocolVersion")]
            protocol_version: String,
        }
        if let Ok(r) = serde_json::from_slice::<R>(frame.raw()) {
            self.upstream
                .set_protocol_version(&r.result.protocol_version);
            let _ = self.protocol.set(r.result.protocol_version);
        }
    }

    /// End the session: stop the upstream (child: close stdin → SIGTERM → SIGKILL; HTTP: DELETE).
    /// Safe to call more than once: later callers wait for the first to finish.
    pub async fn shutdown(&self) {
        if self.ending.swap(true, Ordering::AcqRel) {
            self.cancel.cancelled().await;
            return;
        }
        self.upstream.shutdown().await;
        self.pipeline.session_ended(&self.id);
        self.cancel.cancel();
        // The upstream is released: its record ends, and its place in the host is free again.
        let slot = crate::sync::lock(&self.slot).take();
        if let Some(records) = self.records() {
            // Not while a composite's state is being written: that write, read before, would
            // put the record back as active.
            let _held = self.record_lock.lock().await;
            records.ended(&self.id).await;
        }
        drop(slot);
    }
}

impl Session {
    /// Whether another replica sharing the store can continue this session once this one lets
    /// go of it: its upstream is a Streamable HTTP session, which any replica reaches (a child
    /// process or an HTTP+SSE stream lives and dies here).
    pub fn can_hand_off(&self) -> bool {
        matches!(self.upstream, Upstream::Http(_))
    }

    /// Let go of the session for another replica to continue (a graceful stop with a shared
    /// store): like [`Session::shutdown`], but the upstream session is left open (no DELETE)
    /// and the record stays active, so the client's next request — on any replica — adopts it.
    pub async fn hand_off(&self) {
        if self.ending.swap(true, Ordering::AcqRel) {
            self.cancel.cancelled().await;
            return;
        }
        self.pipeline.session_ended(&self.id);
        self.cancel.cancel();
        // Its activity is flushed with the records' own stop; the place in the host is free.
        let slot = crate::sync::lock(&self.slot).take();
        drop(slot);
    }
}

/// A reply the proxy made because the upstream failed (not the server's own answer).
pub(crate) fn upstream_failed(frame: &Frame) -> bool {
    matches!(frame.proxy_error(), Some(UPSTREAM_ERROR | REQUEST_TIMEOUT))
}
