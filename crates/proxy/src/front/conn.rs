//! Connection hygiene shared by every HTTP listener (the HTTP front and the admin listener):
//! how long a client may take to send a request head and a request body, how long an idle
//! keep-alive connection is kept, and how many connections are served at once.
//!
//! hyper's own header timer cannot tell "idle between requests" from "sending a head slowly"
//! (it runs from the end of the previous response), so both are timed here instead, as Go's
//! `ReadHeaderTimeout`/`IdleTimeout` do: each connection has a small state
//! ([`Watch`]) moved by its reads and by its requests:
//!
//! * *head* (from the accept, or from the first byte after an idle spell): the head must be
//!   complete within `header_timeout`;
//! * *busy* (a request is being served, its response body included — SSE streams stay open
//!   as long as they need): no connection timer; the request body must arrive within
//!   `body_timeout` of the head ([`TimedBody`], answered `408` and the connection closed);
//! * *idle* (nothing in flight, nothing sent): closed after `idle_timeout`.
//!
//! Over `max_connections`, a new connection is accepted and closed at once ([`Slots`]): the
//! listener never holds more, and the backlog does not fill up with clients left waiting.

use crate::error::ProxyError;
use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http::{HeaderValue, header};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use shadowcat_proto::error::INVALID_REQUEST;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

/// Limits of one listener's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// A request head (from its first byte, or from the accept) must arrive within this.
    pub header_timeout: Duration,
    /// A request body must arrive within this of its head (`408` otherwise).
    pub body_timeout: Duration,
    /// A keep-alive connection with nothing in flight is closed after this.
    pub idle_timeout: Duration,
    /// Most connections served at once; more are accepted and closed immediately.
    pub max_connections: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
        }
    }
}

impl ConnLimits {
    /// Every timeout must be positive and at least one connection allowed. The error names
    /// the setting as `names` spells it (flag or file key).
    pub fn validate(&self, names: [&str; 4]) -> Result<(), String> {
        let [header, body, idle, max] = names;
        for (name, d) in [
            (header, self.header_timeout),
            (body, self.body_timeout),
            (idle, self.idle_timeout),
        ] {
            if d.is_zero() {
                return Err(format!("{name} must be more than 0 seconds"));
            }
        }
        if self.max_connections == 0 || self.max_connections > Semaphore::MAX_PERMITS {
            return Err(format!(
                "{max} must be between 1 and {}",
                Semaphore::MAX_PERMITS
            ));
        }
        Ok(())
    }
}

/// The connection slots of one listener.
#[derive(Clone)]
pub(crate) struct Slots {
    inner: Arc<SlotsInner>,
}

struct SlotsInner {
    free: Arc<Semaphore>,
    max: usize,
    /// Connections refused since the last warning.
    refused: AtomicU64,
    last_warning: Mutex<Option<Instant>>,
}

impl Slots {
    pub(crate) fn new(max: usize) -> Slots {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Slots {
            inner: Arc::new(SlotsInner {
                free: Arc::new(Semaphore::new(max)),
                max,
                refused: AtomicU64::new(0),
                last_warning: Mutex::new(None),
            }),
        }
    }

    /// A slot for a new connection, held until the connection ends; `None` at the limit (the
    /// caller closes the connection). Refusals are logged at most every 10 s.
    pub(crate) fn take(&self, what: &str) -> Option<OwnedSemaphorePermit> {
        if let Ok(p) = self.inner.free.clone().try_acquire_owned() {
            return Some(p);
        }
        let n = self.inner.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = crate::sync::lock(&self.inner.last_warning);
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            *last = Some(Instant::now());
            self.inner.refused.store(0, Ordering::Relaxed);
            tracing::warn!(
                listener = what,
                limit = self.inner.max,
                refused = n,
                "connection limit reached: closing new connections"
            );
        }
        None
    }
}

/// Where a connection is in its life (see the module docs).
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for (the rest of) a request head since this instant.
    Head(Instant),
    /// Serving requests.
    Busy,
    /// Nothing in flight and nothing received since this instant.
    Idle(Instant),
}

#[derive(Debug)]
struct State {
    /// Requests being served (until their response body is done).
    active: usize,
    phase: Phase,
}

/// One connection's state and the timer that watches it. Transitions never wake the timer
/// (that cost three task wake-ups and two timer registrations per request on the relay path):
/// it wakes when the current phase would expire, or sooner — never later than the earliest
/// deadline of a phase that could start meanwhile — and reads the phase then. Every deadline
/// is still kept on time.
struct Watch {
    state: Mutex<State>,
    limits: ConnLimits,
}

impl Watch {
    fn new(limits: ConnLimits) -> Arc<Watch> {
        Arc::new(Watch {
            state: Mutex::new(State {
                active: 0,
                phase: Phase::Head(Instant::now()),
            }),
            limits,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    /// Bytes arrived: an idle connection starts a head.
    fn received(&self) {
        let mut s = self.lock();
        if let Phase::Idle(_) = s.phase {
            s.phase = Phase::Head(Instant::now());
        }
    }

    /// A request head was parsed: the connection is busy until the guard is dropped.
    fn start(self: &Arc<Self>) -> BusyGuard {
        let mut s = self.lock();
        s.active += 1;
        s.phase = Phase::Busy;
        drop(s);
        BusyGuard(self.clone())
    }

    fn finish(&self) {
        let mut s = self.lock();
        s.active = s.active.saturating_sub(1);
        if s.active == 0 {
            s.phase = Phase::Idle(Instant::now());
        }
    }

    /// Resolves when the connection has overstayed its current phase; says which.
    async fn expired(&self) -> &'static str {
        let (head, idle) = (self.limits.header_timeout, self.limits.idle_timeout);
        loop {
            let now = Instant::now();
            let phase = self.lock().phase;
            // Never sleep past the earliest deadline a phase starting now could have: a new
            // head (`head`) or a new idle spell (`idle`).
            let wake = match phase {
                Phase::Head(t) if now >= t + head => return "request head",
                Phase::Head(t) => (t + head).min(now + idle),
                Phase::Idle(t) if now >= t + idle => return "keep-alive idle",
                Phase::Idle(t) => (t + idle).min(now + head),
                Phase::Busy => now + head.min(idle),
            };
            tokio::time::sleep_until(wake).await;
        }
    }
}

/// Holds a connection busy while a request (and its response body) is being served.
struct BusyGuard(Arc<Watch>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.finish();
    }
}

/// The socket, telling the [`Watch`] when bytes arrive.
struct Watched<T> {
    io: T,
    watch: Arc<Watch>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.watch.received();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// A request body did not arrive in time.
#[derive(Debug)]
pub(crate) struct BodyTimeout(Duration);

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body did not arrive within {} s",
            self.0.as_secs_f64()
        )
    }
}

impl std::error::Error for BodyTimeout {}

/// A request body that fails with [`BodyTimeout`] unless complete by its deadline (a client
/// that sends its head and then trickles the body holds nothing for longer than that).
struct TimedBody {
    inner: Incoming,
    deadline: Instant,
    limit: Duration,
    /// Made on the first wait only (most bodies arrive with their head).
    sleep: Option<Pin<Box<Sleep>>>,
    timed_out: Arc<AtomicBool>,
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.timed_out.load(Ordering::Relaxed) {
            return Poll::Ready(Some(Err(Box::new(BodyTimeout(this.limit)))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(r) => return Poll::Ready(r.map(|f| f.map_err(Into::into))),
            Poll::Pending => {}
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.timed_out.store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err(Box::new(BodyTimeout(this.limit)))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that keeps its connection busy until it is done (or dropped).
struct TrackedBody {
    inner: Body,
    _busy: BusyGuard,
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The error of a failed request-body read: `408` for a body that did not arrive in time,
/// `400` otherwise.
pub(crate) fn body_error(e: axum::Error) -> ProxyError {
    let inner = e.into_inner();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&*inner);
    while let Some(c) = cause {
        if let Some(t) = c.downcast_ref::<BodyTimeout>() {
            return ProxyError::bad(
                crate::error::Refusal::TooSlow,
                INVALID_REQUEST,
                t.to_string(),
            );
        }
        cause = c.source();
    }
    ProxyError::bad(
        crate::error::Refusal::Malformed,
        INVALID_REQUEST,
        format!("reading the body failed: {inner}"),
    )
}

/// The local address a request's connection was accepted on, in the request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct ListenAddr(pub SocketAddr);

/// Serve HTTP/1.1 on one connection with `limits`, handing each request (with the peer's
/// address as [`ConnectInfo`] and its own as [`ListenAddr`]) to `handler`, until the client closes, a timer of `limits`
/// expires, or `cancel` fires (then in-flight requests finish first). `slot` is released when
/// the connection ends.
pub(crate) async fn serve<H, F>(
    tcp: TcpStream,
    peer: SocketAddr,
    limits: ConnLimits,
    cancel: CancellationToken,
    slot: OwnedSemaphorePermit,
    handler: H,
) where
    H: Fn(http::Request<Body>) -> F + Send + Sync + 'static,
    F: Future<Output = http::Response<Body>> + Send + 'static,
{
    let _slot = slot;
    let local = tcp.local_addr().ok();
    let watch = Watch::new(limits);
    let handler = Arc::new(handler);
    let w = watch.clone();
    let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
        let busy = w.start();
        let timed_out = Arc::new(AtomicBool::new(false));
        let req = req.map(|inner| {
            Body::new(TimedBody {
                inner,
                deadline: Instant::now() + limits.body_timeout,
                limit: limits.body_timeout,
                sleep: None,
                timed_out: timed_out.clone(),
            })
        });
        let handler = handler.clone();
        async move {
            let mut req = req;
            req.extensions_mut().insert(ConnectInfo(peer));
            if let Some(a) = local {
                req.extensions_mut().insert(ListenAddr(a));
            }
            let mut resp = handler(req).await;
            if timed_out.load(Ordering::Relaxed) {
                // The rest of the body may still be trickling in: do not wait for it.
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            let resp = resp.map(|inner| Body::new(TrackedBody { inner, _busy: busy }));
            Ok::<_, Infallible>(resp)
        }
    });
    let io = TokioIo::new(Watched {
        io: tcp,
        watch: watch.clone(),
    });
    let conn = http1::Builder::new().serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => Some(r),
        why = watch.expired() => {
            tracing::debug!(%peer, "closing a connection: {why} timeout");
            return;
        }
        _ = cancel.cancelled() => None,
    };
    let result = match result {
        Some(r) => r,
        None => {
            // Shutting down: finish the requests under way, take no new ones.
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                r = conn.as_mut() => r,
                why = watch.expired() => {
                    tracing::debug!(%peer, "closing a connection: {why} timeout");
                    return;
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, %peer, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_validated() {
        let names = ["h", "b", "i", "m"];
        assert!(ConnLimits::default().validate(names).is_ok());
        let zero = ConnLimits {
            body_timeout: Duration::ZERO,
            ..ConnLimits::default()
        };
        assert_eq!(
            zero.validate(names).unwrap_err(),
            "b must be more than 0 seconds"
        );
        let none = ConnLimits {
            max_connections: 0,
            ..ConnLimits::default()
        };
        assert!(none.validate(names).unwrap_err().starts_with("m must be"));
    }
}
