//! Upstreams: the server side of a session. Each session creates its own upstream on demand —
//! one child process per session for stdio, one upstream MCP session for HTTP.
//!
//! An upstream takes the client's frames with [`Upstream::send`] and delivers the server's frames,
//! tagged with where they came from, on the [`UpstreamEvent`] channel returned by [`connect`].

pub(crate) mod client;
pub mod composite;
pub mod credentials;
pub mod destinations;
pub mod detect;
mod exchange;
pub mod guarded;
mod http;
pub(crate) mod modern;
mod process;
pub mod shared;
pub mod spares;
mod sse;
pub(crate) mod sse_map;
mod stateless;
mod stdio;
mod tape;

pub use client::{CONNECT_TIMEOUT, HttpClient};
pub use credentials::Credentials;
pub use exchange::Exchange;
pub use http::HttpUpstream;
pub use process::{ChildEnv, MINIMAL_ENV};
pub use shared::{SharedLeg, SharedStdio, StdioPool};
pub use sse::SseUpstream;
pub use stdio::StdioUpstream;
pub use tape::{TapeSource, TapeSpec, TapeUpstream};

use crate::error::ProxyError;
use crate::guard::Guard;
use shadowcat_proto::{Frame, RequestId};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How to reach one MCP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamSpec {
    /// Launch a child process speaking MCP on stdin/stdout.
    Stdio {
        /// Program to run.
        command: String,
        /// Its arguments.
        args: Vec<String>,
        /// The environment it starts with.
        env: ChildEnv,
    },
    /// A Streamable HTTP MCP endpoint.
    Http {
        /// The endpoint URL.
        url: String,
        /// Extra headers sent on every request (e.g. static upstream credentials).
        headers: Vec<(String, String)>,
        /// A token source whose `Authorization: Bearer …` goes with every request (OAuth
        /// client credentials); `None` costs nothing.
        credentials: Option<Credentials>,
    },
    /// A legacy HTTP+SSE (2024-11-05) server: GET the SSE URL, POST to the endpoint it names.
    Sse {
        /// The SSE URL (conventionally `…/sse`).
        url: String,
        /// Extra headers sent on every request.
        headers: Vec<(String, String)>,
    },
    /// An HTTP server whose transport is detected when a session is created (Streamable HTTP,
    /// else HTTP+SSE; see [`detect`]).
    Auto {
        /// The URL.
        url: String,
        /// Extra headers sent on every request.
        headers: Vec<(String, String)>,
    },
    /// A recorded server: answers from a tape (`shadowcat replay`).
    Tape(TapeSpec),
    /// Several servers behind one session (a composite route).
    Composite(Arc<composite::CompositeSpec>),
    /// A stdio server whose children are shared by all its sessions (`share = K`).
    Shared(SharedStdio),
}

impl UpstreamSpec {
    /// A child process that inherits the proxy's environment without Shadowcat's own
    /// variables (the forward modes).
    pub fn stdio(command: impl Into<String>, args: Vec<String>) -> UpstreamSpec {
        UpstreamSpec::Stdio {
            command: command.into(),
            args,
            env: ChildEnv::Inherit,
        }
    }

    /// A stdio server run as `share` children that all its sessions share (see [`shared`]).
    pub fn shared(
        command: impl Into<String>,
        args: Vec<String>,
        env: ChildEnv,
        share: usize,
    ) -> UpstreamSpec {
        UpstreamSpec::Shared(SharedStdio(Arc::new(StdioPool::new(
            command.into(),
            args,
            env,
            share,
        ))))
    }

    /// A Streamable HTTP endpoint with static headers only.
    pub fn http(url: impl Into<String>, headers: Vec<(String, String)>) -> UpstreamSpec {
        UpstreamSpec::Http {
            url: url.into(),
            headers,
            credentials: None,
        }
    }

    /// How logs, metrics labels, session records, tapes and error messages name it, with no
    /// secret in it: a URL without user info and query values, a command as its program's
    /// name only (see [`shadowcat_tape::redact::url_label`]). Not unique: two upstreams may
    /// differ only in what is left out.
    pub fn describe(&self) -> String {
        use shadowcat_tape::redact::{command_label, url_label};
        match self {
            UpstreamSpec::Stdio { command, .. } => command_label(command),
            UpstreamSpec::Http { url, .. } => url_label(url),
            UpstreamSpec::Sse { url, .. } => format!("sse+{}", url_label(url)),
            UpstreamSpec::Auto { url, .. } => format!("auto+{}", url_label(url)),
            UpstreamSpec::Tape(t) => format!("tape:{}", t.0.path.display()),
            UpstreamSpec::Composite(c) => c.describe(),
            UpstreamSpec::Shared(p) => p.0.describe(),
        }
    }
}

/// Knobs shared by all upstreams of a proxy.
#[derive(Debug, Clone)]
pub struct UpstreamOptions {
    /// Largest stdio line or HTTP body/SSE event accepted from the upstream.
    pub max_message: usize,
    /// How long a child gets after stdin closes, and again after SIGTERM, before the next step.
    pub shutdown_grace: Duration,
    /// Capacity of the channel carrying the server's frames to the session.
    pub channel_capacity: usize,
    /// Resuming a broken upstream SSE stream: first backoff delay.
    pub reconnect_base: Duration,
    /// Resuming: largest backoff delay.
    pub reconnect_cap: Duration,
    /// Resuming: attempts before the client gets an error.
    pub reconnect_attempts: u32,
}

impl Default for UpstreamOptions {
    fn default() -> Self {
        UpstreamOptions {
            max_message: shadowcat_proto::lines::DEFAULT_MAX_LINE,
            shutdown_grace: Duration::from_secs(2),
            channel_capacity: 64,
            reconnect_base: Duration::from_millis(100),
            reconnect_cap: Duration::from_secs(5),
            reconnect_attempts: 5,
        }
    }
}

/// Which stream of the upstream carried a server frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// The upstream's response stream for this client request (HTTP upstreams).
    Request(RequestId),
    /// The upstream's standalone server→client stream (HTTP GET).
    Listen,
    /// No relation known (stdio upstreams carry everything on one pipe).
    Unrelated,
}

/// What an upstream delivers to its session.
#[derive(Debug)]
pub enum UpstreamEvent {
    /// A frame from the server.
    Frame {
        /// The frame (boxed: the event stays small, and so does every channel's first block,
        /// allocated per session whether or not anything is ever sent).
        frame: Box<Frame>,
        /// Where it came from.
        via: Via,
    },
    /// The upstream is gone (child exited, session ended); no more frames will come.
    Closed {
        /// Why, for logs and the errors sent to clients.
        reason: String,
        /// The child's exit code, for stdio upstreams that exited.
        exit_code: Option<i32>,
    },
}

/// Context an upstream runs in.
#[derive(Clone)]
pub struct UpstreamCtx {
    /// Session id, for log spans.
    pub session: Arc<str>,
    /// Cancelled when the session ends.
    pub cancel: CancellationToken,
    /// Cancelled once every session of the front has ended (after the shutdown drain): the
    /// parent of the sessions' tokens. What outlives one session — a shared stdio child — runs
    /// under it, so it stops with the front and not with the session that started it.
    pub front_cancel: CancellationToken,
    /// Tracks the upstream's tasks.
    pub tracker: TaskTracker,
    /// Shared HTTP client (connection pool).
    pub http: HttpClient,
    /// Options.
    pub options: UpstreamOptions,
    /// Breaker, retries and timeouts of the upstream (gateway mode); `None`: none of them.
    pub guard: Option<Arc<Guard>>,
}

#[cfg(test)]
impl UpstreamCtx {
    /// A context for tests: session `s`, its own cancel token and tracker, default options,
    /// no guard.
    pub(crate) fn for_test() -> UpstreamCtx {
        UpstreamCtx {
            session: Arc::from("s"),
            cancel: CancellationToken::new(),
            front_cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
            http: HttpClient::new(Duration::from_secs(5)).expect("an HTTP client"),
            options: UpstreamOptions::default(),
            guard: None,
        }
    }
}

/// The server side of one session.
pub enum Upstream {
    /// A child process.
    Stdio(StdioUpstream),
    /// A Streamable HTTP server.
    Http(HttpUpstream),
    /// A legacy HTTP+SSE server.
    Sse(SseUpstream),
    /// A tape being replayed.
    Tape(TapeUpstream),
    /// The members of a composite route.
    Composite(composite::CompositeUpstream),
    /// A session of a shared stdio pool.
    Shared(SharedLeg),
}

/// Create the upstream for a session. Server frames arrive on the returned receiver.
pub async fn connect(
    spec: &UpstreamSpec,
    ctx: UpstreamCtx,
) -> Result<(Upstream, mpsc::Receiver<UpstreamEvent>), ProxyError> {
    open(spec, ctx).await.map(|o| (o.upstream, o.events))
}

/// An upstream just created, with its event channel.
pub struct Opened {
    /// The upstream.
    pub upstream: Upstream,
    /// Its events.
    pub events: mpsc::Receiver<UpstreamEvent>,
    /// A way to put events of the proxy's own (timeouts) on that channel without keeping it
    /// open: it closes when the upstream lets go of its end.
    pub loopback: mpsc::WeakSender<UpstreamEvent>,
}

/// Like [`connect`], also giving the session a weak handle on the event channel.
pub async fn open(spec: &UpstreamSpec, ctx: UpstreamCtx) -> Result<Opened, ProxyError> {
    let (tx, rx) = mpsc::channel(ctx.options.channel_capacity);
    let loopback = tx.downgrade();
    let up = match spec {
        UpstreamSpec::Stdio { command, args, env } => {
            Upstream::Stdio(StdioUpstream::spawn(command, args, env, ctx, tx)?)
        }
        UpstreamSpec::Http {
            url,
            headers,
            credentials,
        } => {
            if let Some(c) = credentials {
                // A session starts with a token: a token endpoint that fails refuses the session
                // (HTTP 502 to its `initialize`) instead of failing each later request.
                c.bearer().await.map_err(|e| {
                    ProxyError::UpstreamConnect(format!(
                        "no access token for {}: {e}",
                        shadowcat_tape::redact::url_label(url)
                    ))
                })?;
            }
            Upstream::Http(HttpUpstream::with_credentials(
                url,
                headers,
                credentials.clone(),
                ctx,
                tx,
            )?)
        }
        UpstreamSpec::Sse { url, headers } => {
            Upstream::Sse(SseUpstream::connect(url, headers, ctx, tx).await?)
        }
        UpstreamSpec::Auto { url, headers } => detect::connect(url, headers, ctx, tx).await?,
        UpstreamSpec::Tape(t) => Upstream::Tape(TapeUpstream::new(t, ctx, tx)),
        UpstreamSpec::Composite(c) => Box::pin(composite::CompositeUpstream::start(c, ctx, tx))
            .await?
            .into(),
        UpstreamSpec::Shared(p) => Upstream::Shared(p.0.join(ctx, tx)),
    };
    Ok(Opened {
        upstream: up,
        events: rx,
        loopback,
    })
}

/// Open a composite route's upstream for a session another replica started, from its
/// recorded state (see [`composite::CompositeUpstream::resume`]).
pub async fn open_resumed(
    spec: &Arc<composite::CompositeSpec>,
    ctx: UpstreamCtx,
    saved: &composite::saved::Saved,
) -> Result<Opened, ProxyError> {
    let (tx, rx) = mpsc::channel(ctx.options.channel_capacity);
    let loopback = tx.downgrade();
    let up = Box::pin(composite::CompositeUpstream::resume(spec, ctx, tx, saved)).await?;
    Ok(Opened {
        upstream: up.into(),
        events: rx,
        loopback,
    })
}

impl Upstream {
    /// Send one client frame to the server. Returns once the frame is handed over (stdio: queued
    /// for the child's stdin; HTTP: the POST is under way). Replies arrive as events.
    pub async fn send(&self, frame: Frame) -> Result<(), ProxyError> {
        if let Some(x) = self.start(frame).await? {
            x.detach();
        }
        Ok(())
    }

    /// Like [`Upstream::send`], but an HTTP upstream hands back its request as an [`Exchange`]
    /// for the caller to drive (or detach); the others queue the frame and return `None`.
    pub async fn start(&self, frame: Frame) -> Result<Option<Exchange>, ProxyError> {
        match self {
            Upstream::Stdio(s) => s.send(frame).await.map(|()| None),
            Upstream::Http(h) => Ok(Some(h.exchange(frame))),
            // The legacy POST, a tape's replay and a shared child's lease are boxed: their
            // state would otherwise be part of every request's future (moved and polled for
            // each one), whatever its upstream.
            Upstream::Sse(s) => Box::pin(s.send(frame)).await.map(|()| None),
            Upstream::Tape(t) => Box::pin(t.send(frame)).await.map(|()| None),
            Upstream::Composite(c) => Box::pin(c.send(frame)).await,
            Upstream::Shared(l) => Box::pin(l.send(frame)).await.map(|()| None),
        }
    }

    /// Like [`Upstream::start`], and an HTTP upstream's frames of this exchange go where
    /// `divert` says (the others are not diverted).
    pub(crate) async fn start_diverted(
        &self,
        frame: Frame,
        divert: Arc<dyn http::Divert>,
    ) -> Result<Option<Exchange>, ProxyError> {
        match self {
            Upstream::Http(h) => Ok(Some(h.exchange_diverted(frame, divert))),
            other => other.start(frame).await,
        }
    }

    /// Make sure server-initiated messages can flow (HTTP: open the GET stream once). Returns
    /// `false` when the upstream has no such stream (HTTP 405).
    pub async fn open_listen(&self) -> Result<bool, ProxyError> {
        match self {
            // A composite opens its members' streams itself, once they joined.
            Upstream::Stdio(_)
            | Upstream::Sse(_)
            | Upstream::Tape(_)
            | Upstream::Composite(_)
            | Upstream::Shared(_) => Ok(true),
            Upstream::Http(h) => h.open_listen().await,
        }
    }

    /// End the upstream: stdio closes stdin, then SIGTERM, then SIGKILL after the grace periods;
    /// HTTP sends DELETE for its upstream session. Resolves when that is done.
    pub async fn shutdown(&self) {
        match self {
            Upstream::Stdio(s) => s.shutdown().await,
            Upstream::Http(h) => h.shutdown().await,
            Upstream::Sse(s) => s.shutdown().await,
            Upstream::Tape(t) => t.shutdown().await,
            Upstream::Composite(c) => c.shutdown().await,
            Upstream::Shared(l) => l.shutdown().await,
        }
    }

    /// Record the protocol version negotiated by `initialize` (HTTP sends it as a header).
    pub fn set_protocol_version(&self, version: &str) {
        if let Upstream::Http(h) = self {
            h.set_protocol_version(version);
        }
    }

    /// The composite behind a composite route's session, if this is one.
    pub fn composite(&self) -> Option<&composite::CompositeUpstream> {
        match self {
            Upstream::Composite(c) => Some(c),
            _ => None,
        }
    }

    /// Whether the upstream is known to be gone (a stdio child that exited).
    pub fn has_exited(&self) -> bool {
        matches!(self, Upstream::Stdio(s) if s.has_exited())
    }

    /// Whether the server serves only the stateless 2026-07-28 era (an HTTP upstream whose
    /// session the proxy plays).
    pub fn is_stateless(&self) -> bool {
        matches!(self, Upstream::Http(h) if h.is_stateless())
    }

    /// The upstream's own session id (HTTP upstreams that issued one).
    pub fn upstream_session_id(&self) -> Option<String> {
        match self {
            Upstream::Http(h) => h.session_id(),
            Upstream::Stdio(_)
            | Upstream::Sse(_)
            | Upstream::Tape(_)
            | Upstream::Composite(_)
            | Upstream::Shared(_) => None,
        }
    }

    /// Continue an upstream session another replica started (HTTP upstreams only).
    pub fn restore_session_id(&self, id: &str) {
        if let Upstream::Http(h) = self {
            h.set_session_id(id);
        }
    }
}
