//! One legacy HTTP+SSE session: its event stream (a bounded channel of frames read by the
//! response body) and the pump that relays its upstream's frames onto it.

use crate::session::Session;
use crate::session::pump::{self, Deliver, End};
use crate::upstream::{UpstreamEvent, Via};
use axum::body::Body;
use bytes::Bytes;
use shadowcat_proto::Frame;
use shadowcat_proto::sse::{encode_comment, encode_event};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

/// A session of the legacy front.
pub struct LegacySession {
    core: Arc<Session>,
    route: Arc<str>,
    out: mpsc::Sender<Frame>,
    /// Cancelled when the client's event stream is gone (its body was dropped).
    closed: CancellationToken,
}

impl LegacySession {
    /// A session relaying to a new event stream; the receiver feeds the response body.
    pub fn new(
        core: Arc<Session>,
        route: Arc<str>,
        capacity: usize,
    ) -> (Arc<Self>, mpsc::Receiver<Frame>) {
        let (out, rx) = mpsc::channel(capacity);
        let s = LegacySession {
            core,
            route,
            out,
            closed: CancellationToken::new(),
        };
        (Arc::new(s), rx)
    }

    /// The engine session.
    pub fn core(&self) -> &Arc<Session> {
        &self.core
    }

    /// The route (target) this session belongs to.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// A guard for the response body: dropping it (the client went away) ends the session.
    pub fn stream_guard(&self) -> DropGuard {
        self.closed.clone().drop_guard()
    }

    /// Put a frame on the client's event stream, waiting while it is full (backpressure).
    /// False when the stream is gone.
    pub async fn send(&self, frame: Frame) -> bool {
        tokio::select! {
            sent = self.out.send(frame) => sent.is_ok(),
            _ = self.closed.cancelled() => false,
        }
    }

    /// Relay the upstream's frames to the event stream until the client leaves, the upstream
    /// closes (every request in flight then gets an error first) or the session is cancelled.
    pub async fn pump(&self, mut events: mpsc::Receiver<UpstreamEvent>) {
        let mut stream = ToStream {
            session: self,
            recorded: false,
        };
        if let End::Client(reason) = pump::pump(&self.core, &mut events, &mut stream).await {
            tracing::info!(%reason, "ending the legacy HTTP+SSE session");
        }
    }
}

/// The legacy front's side of the pump: frames through the pipeline onto the event stream.
struct ToStream<'a> {
    session: &'a LegacySession,
    /// Whether the negotiated version is in the session record yet.
    recorded: bool,
}

impl Deliver for ToStream<'_> {
    async fn frames(&mut self, burst: Vec<(Frame, Via)>) -> bool {
        let core = &self.session.core;
        for (frame, _) in burst {
            if let Some(frame) = core.from_server(frame).await
                && !self.session.send(frame).await
            {
                return false;
            }
        }
        if !self.recorded {
            self.recorded = core.record_negotiated().await;
        }
        true
    }

    async fn closed(&mut self, errors: Vec<Frame>) {
        for err in errors {
            if !self.session.send(err).await {
                break;
            }
        }
    }

    async fn wait(&mut self) {
        self.session.closed.cancelled().await;
    }

    async fn woke(&mut self) -> Option<String> {
        Some("the client closed its HTTP+SSE stream".into())
    }
}

struct BodyState<G> {
    first: std::collections::VecDeque<Bytes>,
    rx: mpsc::Receiver<Frame>,
    keepalive: tokio::time::Interval,
    _guard: G,
}

/// The event stream: `event: endpoint` first, then one `event: message` per frame (a comment
/// after each `keepalive` of silence) until the session ends. Dropping it drops `guard`.
pub fn body(
    endpoint: &str,
    rx: mpsc::Receiver<Frame>,
    keepalive: Duration,
    guard: DropGuard,
) -> Body {
    let first = encode_event(None, Some("endpoint"), endpoint, None);
    frames_body(vec![first], rx, keepalive, guard)
}

/// An event stream of frames without ids (nothing to resume): the already encoded `first`
/// events, then one `event: message` per frame from `rx` (a comment after each `keepalive` of
/// silence) until `rx` closes. `guard` lives exactly as long as the body (the legacy session's
/// end, a 2026-07-28 request's cancellation).
pub(crate) fn frames_body<G: Send + 'static>(
    first: Vec<Bytes>,
    rx: mpsc::Receiver<Frame>,
    keepalive: Duration,
    guard: G,
) -> Body {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = BodyState {
        first: first.into(),
        rx,
        keepalive: tick,
        _guard: guard,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        if let Some(b) = st.first.pop_front() {
            return Some((Ok::<Bytes, std::convert::Infallible>(b), st));
        }
        let chunk = tokio::select! {
            frame = st.rx.recv() => {
                let frame = frame?;
                let text = String::from_utf8_lossy(frame.raw());
                encode_event(None, Some("message"), &text, None)
            }
            _ = st.keepalive.tick() => encode_comment("keep-alive"),
        };
        st.keepalive.reset();
        Some((Ok(chunk), st))
    });
    Body::from_stream(stream)
}
