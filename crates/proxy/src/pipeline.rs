//! The pipeline: an ordered list of hooks run on every frame in both directions. Auth, limits,
//! interceptor rules, recording and metrics are hooks; with no hooks the pipeline costs one
//! empty-slice check per frame.
//!
//! A hook decides synchronously ([`Hook::on_frame`]); when it must wait (delay, pause for a
//! person, backpressure from a recorder) it returns [`Verdict::Defer`] with a future that the
//! session awaits, which holds back the frames behind it in the same direction.

use crate::error::ProxyError;
use shadowcat_proto::{Frame, RequestId};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// Which way a frame travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the client towards the server.
    ClientToServer,
    /// From the server towards the client.
    ServerToClient,
}

/// A decision that takes time (see [`Verdict::Defer`]).
pub type Deferred = Pin<Box<dyn Future<Output = Verdict> + Send + 'static>>;

/// What a hook decides about a frame.
pub enum Verdict {
    /// Pass it on (to the next hook, then to the other side).
    Forward,
    /// Pass this frame on instead (a modified message); later hooks see the new one.
    Replace(Frame),
    /// Do not pass it on; answer the sender with this frame instead (e.g. a JSON-RPC error).
    Reply(Frame),
    /// Do not pass it on and answer nothing.
    Drop,
    /// Decide later: the session awaits the future, then applies the verdict it yields.
    Defer(Deferred),
}

impl std::fmt::Debug for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Forward => f.write_str("Forward"),
            Verdict::Replace(x) => f.debug_tuple("Replace").field(x).finish(),
            Verdict::Reply(x) => f.debug_tuple("Reply").field(x).finish(),
            Verdict::Drop => f.write_str("Drop"),
            Verdict::Defer(_) => f.write_str("Defer(..)"),
        }
    }
}

/// What the pipeline as a whole decided.
#[derive(Debug)]
pub enum Outcome {
    /// Send this frame on (the original, or a hook's replacement).
    Forward(Frame),
    /// Answer the sender with this frame.
    Reply(Frame),
    /// Send nothing.
    Drop,
}

/// A future a hook asks the relay to wait for (see [`Hook::on_delivered`]).
pub type Wait = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// How an HTTP exchange carried a frame. Everything is borrowed from the front: building it
/// costs nothing, and hooks copy only what they keep.
#[derive(Debug, Clone, Copy)]
pub struct HttpMeta<'a> {
    /// Client → server: the method of the request that carried the frame (`POST`). Server →
    /// client: the method of the request that opened the stream or response carrying it (`POST`
    /// for a POST's replies and stream, `GET` for the session's GET stream).
    pub method: &'a str,
    /// Server → client: the status of the response that carried the frame.
    pub status: Option<u16>,
    /// Server → client: the `Content-Type` of that response (`application/json` or
    /// `text/event-stream`).
    pub content_type: Option<&'a str>,
    /// Client → server: the request's headers (hooks pick what they need; secrets included, so
    /// a hook that keeps any must redact them).
    pub headers: Option<&'a http::HeaderMap>,
    /// Client → server: the URL the client sent the request to (see
    /// [`crate::front::http::request_url`]; its query may hold secrets, so a hook that keeps it
    /// must redact it).
    pub url: Option<&'a str>,
    /// Server → client: the SSE event id the frame was sent under (a proxy-issued id that the
    /// client can resume after).
    pub sse_id: Option<&'a str>,
}

/// What a hook learns about the transport of a frame.
#[derive(Debug, Clone, Copy, Default)]
pub enum Transport<'a> {
    /// Nothing to tell (stdio, or a front that does not pass transport details).
    #[default]
    None,
    /// The HTTP exchange that carried it.
    Http(HttpMeta<'a>),
    /// Server → client on the Streamable HTTP front, in [`Hook::on_frame`]: how the frame reaches
    /// the client (JSON body or SSE event, and its event id) is decided after the pipeline ran;
    /// the front reports it to [`Hook::on_delivered`] once the frame has been handed over.
    Later,
    /// In [`Hook::on_delivered`]: a frame that had [`Transport::Later`] could not be delivered
    /// (the request it answers is unknown, or the session ended).
    Undelivered,
}

/// What the policy that admitted a request attached to it (the gateway: the principal with its
/// scopes and claims), for that policy's own hooks to read by downcasting. The engine only
/// carries it: sessions keep the one of their latest request ([`crate::session::Session::set_grant`]),
/// a stateless request has its own.
pub type Grant = Arc<dyn std::any::Any + Send + Sync>;

/// Per-frame context a hook sees.
#[derive(Debug, Clone, Copy)]
pub struct FrameCtx<'a> {
    /// The proxy's session id.
    pub session: &'a str,
    /// Direction of travel.
    pub direction: Direction,
    /// The authenticated principal the session is bound to (gateway with `[auth]`); `None` in
    /// the forward modes and without authentication.
    pub principal: Option<&'a str>,
    /// Transport details, when the front has them.
    pub transport: Transport<'a>,
    /// The key of the route the session (or stateless request) belongs to: `""` for `/mcp`,
    /// `NAME` for `/servers/NAME/mcp` (see [`crate::front::http::route_path`]); `None` where
    /// there is no route (the stdio front).
    pub route: Option<&'a str>,
    /// On a composite route, the member server a client request goes to, when the proxy knows
    /// it before sending (a `tools/call` of a listed tool, a `prompts/get` of a listed prompt,
    /// a resource URI).
    pub member: Option<&'a str>,
    /// Tells apart requests that have no session (2026-07-28 stateless requests share the
    /// session `-`): a number of the request's own, the same for the request and its answer;
    /// `0` inside a session.
    pub exchange: u64,
    /// Client → server: what the admitting policy attached to the request ([`Grant`]); `None`
    /// where there is no such policy (forward modes), and on server → client frames.
    pub grant: Option<&'a Grant>,
}

impl<'a> FrameCtx<'a> {
    /// A context with no principal and no transport details.
    pub const fn new(session: &'a str, direction: Direction) -> Self {
        FrameCtx {
            session,
            direction,
            principal: None,
            transport: Transport::None,
            route: None,
            member: None,
            exchange: 0,
            grant: None,
        }
    }

    /// A new [`FrameCtx::exchange`] number for a request outside any session.
    pub fn next_exchange() -> u64 {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

/// One pipeline stage.
pub trait Hook: Send + Sync + 'static {
    /// Name for logs.
    fn name(&self) -> &'static str;
    /// Inspect (never mutate in place) a frame and decide.
    fn on_frame(&self, ctx: &FrameCtx<'_>, frame: &Frame) -> Verdict;
    /// An earlier stage (the hook named `by`, or the front for a refusal made outside the
    /// hooks) answered `frame` with `answer` (sent back to the frame's sender), so this hook
    /// never saw `frame` in [`Hook::on_frame`]. Observers (the recorder, the audit log) use this.
    fn on_answered(&self, _ctx: &FrameCtx<'_>, _frame: &Frame, _answer: &Frame, _by: &'static str) {
    }
    /// A client request that passed every hook never reached the upstream: the client gets
    /// `error` (an HTTP error, or a JSON-RPC error made from it) instead of an answer that
    /// would pass the hooks. Observers (the audit log) use this.
    fn on_failed(&self, _ctx: &FrameCtx<'_>, _id: &RequestId, _error: &ProxyError) {}
    /// A frame that passed the pipeline with [`Transport::Later`] (and was forwarded) has been
    /// handed to the client; `ctx.transport` now says how ([`Transport::Http`]), or that nobody
    /// could receive it ([`Transport::Undelivered`]). Observers (the recorder) use this; a
    /// returned future makes the front wait for it (backpressure).
    fn on_delivered(&self, _ctx: &FrameCtx<'_>, _frame: &Frame) -> Option<Wait> {
        None
    }
    /// The session ended: release what is kept for it.
    fn on_session_end(&self, _session: &str) {}
    /// True when the hook needs [`Hook::on_delivered`] (the recorder). The HTTP front reports
    /// deliveries only when some hook does: telling them costs work per server frame.
    fn wants_delivery(&self) -> bool {
        false
    }
    /// True when the hook reads [`HttpMeta::url`] (the recorder): the HTTP front builds the
    /// request's URL only when some hook does.
    fn wants_url(&self) -> bool {
        false
    }
}

/// What an observer hook keeps for each client request until its answer (the audit log's line,
/// the trace's span, the gateway series' timing), keyed by session, [`FrameCtx::exchange`] and
/// request id. Bounded per session and in all: [`Awaiting::insert`] hands the value back when
/// either bound is reached.
pub struct Awaiting<T> {
    per_session: usize,
    total: usize,
    inner: std::sync::Mutex<Kept<T>>,
}

struct Kept<T> {
    map: HashMap<Box<str>, Requests<T>>,
    len: usize,
}

/// One session's requests, by (exchange, id).
type Requests<T> = HashMap<(u64, RequestId), T>;

impl<T> std::fmt::Debug for Awaiting<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Awaiting")
            .field("len", &self.len(None))
            .finish_non_exhaustive()
    }
}

impl<T> Awaiting<T> {
    /// At most `per_session` requests of one session, and `total` in all, are kept.
    pub fn new(per_session: usize, total: usize) -> Self {
        Awaiting {
            per_session,
            total,
            inner: std::sync::Mutex::new(Kept {
                map: HashMap::new(),
                len: 0,
            }),
        }
    }

    /// Keep `value` for the request `id` of `ctx`; `Err(value)` when a bound is reached.
    pub fn insert(&self, ctx: &FrameCtx<'_>, id: &RequestId, value: T) -> Result<(), T> {
        let mut k = crate::sync::lock(&self.inner);
        if k.len >= self.total {
            return Err(value);
        }
        // The session's map is usually there: its key is allocated only the first time.
        if !k.map.contains_key(ctx.session) {
            k.map.insert(Box::from(ctx.session), HashMap::new());
        }
        let Some(waiting) = k.map.get_mut(ctx.session) else {
            return Err(value);
        };
        if waiting.len() >= self.per_session {
            return Err(value);
        }
        let fresh = waiting.insert((ctx.exchange, id.clone()), value).is_none();
        k.len += usize::from(fresh);
        Ok(())
    }

    /// Take what is kept for the request `id` of `ctx` (its answer came).
    pub fn take(&self, ctx: &FrameCtx<'_>, id: &RequestId) -> Option<T> {
        let mut k = crate::sync::lock(&self.inner);
        // An empty map stays until the session ends (no allocation per request).
        let v = k
            .map
            .get_mut(ctx.session)?
            .remove(&(ctx.exchange, id.clone()))?;
        k.len -= 1;
        Some(v)
    }

    /// Take everything kept for `session` (it ended).
    pub fn end(&self, session: &str) -> Vec<(RequestId, T)> {
        let mut k = crate::sync::lock(&self.inner);
        let Some(waiting) = k.map.remove(session) else {
            return Vec::new();
        };
        k.len -= waiting.len();
        waiting.into_iter().map(|((_, id), v)| (id, v)).collect()
    }

    /// Keep only what `keep` says (e.g. forget requests older than a window).
    pub fn retain(&self, mut keep: impl FnMut(&T) -> bool) {
        let mut k = crate::sync::lock(&self.inner);
        let mut dropped = 0;
        k.map.retain(|_, waiting| {
            let before = waiting.len();
            waiting.retain(|_, v| keep(v));
            dropped += before - waiting.len();
            !waiting.is_empty()
        });
        k.len -= dropped;
    }

    /// How many requests are kept, in all and for `session`.
    pub fn len(&self, session: Option<&str>) -> usize {
        let k = crate::sync::lock(&self.inner);
        match session {
            None => k.len,
            Some(s) => k.map.get(s).map_or(0, HashMap::len),
        }
    }

    /// True when nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len(None) == 0
    }
}

/// The ordered hooks of a proxy.
#[derive(Clone, Default)]
pub struct Pipeline {
    hooks: Vec<Arc<dyn Hook>>,
    /// Some hook wants to hear how server frames were delivered.
    delivery: bool,
    url: bool,
}

impl Pipeline {
    /// A pipeline with the given hooks, run in order.
    pub fn new(hooks: Vec<Arc<dyn Hook>>) -> Self {
        let delivery = hooks.iter().any(|h| h.wants_delivery());
        let url = hooks.iter().any(|h| h.wants_url());
        Pipeline {
            hooks,
            delivery,
            url,
        }
    }

    /// True when some hook wants [`Hook::on_delivered`]: the front then passes server frames
    /// with [`Transport::Later`] and reports their delivery.
    pub fn reports_delivery(&self) -> bool {
        self.delivery
    }

    /// True when some hook reads the client request's URL ([`Hook::wants_url`]).
    pub fn wants_url(&self) -> bool {
        self.url
    }

    /// True when there are no hooks (the relay path then does no work here).
    pub fn is_empty(&self) -> bool {
        self.hooks.is_empty()
    }

    /// Run the hooks in order until one replies or drops; replacements carry on to the next
    /// hook, deferred verdicts are awaited.
    #[inline]
    pub async fn process(&self, ctx: &FrameCtx<'_>, frame: Frame) -> Outcome {
        if self.hooks.is_empty() {
            return Outcome::Forward(frame);
        }
        let mut frame = frame;
        for (i, h) in self.hooks.iter().enumerate() {
            let mut verdict = h.on_frame(ctx, &frame);
            loop {
                match verdict {
                    Verdict::Forward => break,
                    Verdict::Replace(f) => {
                        frame = f;
                        break;
                    }
                    Verdict::Defer(later) => verdict = later.await,
                    Verdict::Reply(answer) => {
                        for later in &self.hooks[i + 1..] {
                            later.on_answered(ctx, &frame, &answer, h.name());
                        }
                        return Outcome::Reply(answer);
                    }
                    Verdict::Drop => return Outcome::Drop,
                }
            }
        }
        Outcome::Forward(frame)
    }

    /// Tell every hook how a frame that passed with [`Transport::Later`] was delivered (see
    /// [`Hook::on_delivered`]); waits for the hooks that ask to.
    pub async fn delivered(&self, ctx: &FrameCtx<'_>, frame: &Frame) {
        for h in &self.hooks {
            if let Some(wait) = h.on_delivered(ctx, frame) {
                wait.await;
            }
        }
    }

    /// Tell every hook that `frame` was answered with `answer` outside the hooks, by the
    /// stage named `by` (a refusal made before the pipeline ran).
    pub fn answered(&self, ctx: &FrameCtx<'_>, frame: &Frame, answer: &Frame, by: &'static str) {
        for h in &self.hooks {
            h.on_answered(ctx, frame, answer, by);
        }
    }

    /// Tell every hook that the request `id`, which passed them, failed with `error` before
    /// it reached the upstream (see [`Hook::on_failed`]).
    pub fn failed(&self, ctx: &FrameCtx<'_>, id: &RequestId, error: &ProxyError) {
        for h in &self.hooks {
            h.on_failed(ctx, id, error);
        }
    }

    /// Tell every hook that a session ended.
    pub fn session_ended(&self, session: &str) {
        for h in &self.hooks {
            h.on_session_end(session);
        }
    }

    /// Names of the hooks, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.hooks.iter().map(|h| h.name()).collect()
    }
}

/// Makes traffic visible: logs every frame (direction, kind, id, method, name, size) under the
/// `shadowcat::traffic` target.
pub struct TrafficLog;

impl Hook for TrafficLog {
    fn name(&self) -> &'static str {
        "traffic-log"
    }

    fn on_frame(&self, ctx: &FrameCtx<'_>, frame: &Frame) -> Verdict {
        let dir = match ctx.direction {
            Direction::ClientToServer => "c->s",
            Direction::ServerToClient => "s->c",
        };
        tracing::info!(
            target: "shadowcat::traffic",
            session = ctx.session,
            dir,
            kind = ?frame.kind(),
            id = frame.id().map(|i| i.to_string()),
            method = frame.method(),
            name = frame.target(),
            bytes = frame.raw().len(),
        );
        Verdict::Forward
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    struct Block;
    impl Hook for Block {
        fn name(&self) -> &'static str {
            "block"
        }
        fn on_frame(&self, _: &FrameCtx<'_>, f: &Frame) -> Verdict {
            if f.method() == Some("tools/call") {
                Verdict::Drop
            } else {
                Verdict::Forward
            }
        }
    }

    #[tokio::test]
    async fn hooks_run_in_order_until_one_decides() {
        let p = Pipeline::new(vec![Arc::new(TrafficLog), Arc::new(Block)]);
        assert_eq!(p.names(), vec!["traffic-log", "block"]);
        let ctx = FrameCtx::new("s", Direction::ClientToServer);
        let call = Frame::parse_single(Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}"#,
        ))
        .unwrap();
        assert!(matches!(p.process(&ctx, call.clone()).await, Outcome::Drop));
        let list = Frame::parse_single(Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
        ))
        .unwrap();
        assert!(matches!(p.process(&ctx, list).await, Outcome::Forward(_)));
        assert!(matches!(
            Pipeline::default().process(&ctx, call).await,
            Outcome::Forward(_)
        ));
    }

    struct Upper;
    impl Hook for Upper {
        fn name(&self) -> &'static str {
            "upper"
        }
        fn on_frame(&self, _: &FrameCtx<'_>, f: &Frame) -> Verdict {
            if f.method() == Some("later") {
                return Verdict::Defer(Box::pin(async {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    Verdict::Replace(
                        Frame::parse_single(Bytes::from_static(
                            br#"{"jsonrpc":"2.0","method":"replaced"}"#,
                        ))
                        .unwrap(),
                    )
                }));
            }
            if f.method() == Some("ask") {
                return Verdict::Reply(
                    Frame::parse_single(Bytes::from_static(
                        br#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
                    ))
                    .unwrap(),
                );
            }
            Verdict::Forward
        }
    }

    #[derive(Default)]
    struct Seen(std::sync::Mutex<Vec<String>>);
    impl Hook for Seen {
        fn name(&self) -> &'static str {
            "seen"
        }
        fn on_frame(&self, _: &FrameCtx<'_>, f: &Frame) -> Verdict {
            let m = f.method().unwrap_or("").to_string();
            self.0.lock().unwrap().push(m);
            Verdict::Forward
        }
        fn on_answered(&self, _: &FrameCtx<'_>, f: &Frame, a: &Frame, _: &'static str) {
            let m = format!("answered {} with {:?}", f.method().unwrap_or(""), a.kind());
            self.0.lock().unwrap().push(m);
        }
    }

    #[tokio::test]
    async fn replace_defer_and_answers_reach_later_hooks() {
        let seen = Arc::new(Seen::default());
        let p = Pipeline::new(vec![Arc::new(Upper), seen.clone()]);
        let ctx = FrameCtx::new("s", Direction::ClientToServer);
        let f = |m: &'static str| {
            Frame::parse_single(Bytes::from(format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"{m}"}}"#
            )))
            .unwrap()
        };
        match p.process(&ctx, f("later")).await {
            Outcome::Forward(out) => assert_eq!(out.method(), Some("replaced")),
            o => panic!("{o:?}"),
        }
        assert!(matches!(p.process(&ctx, f("ask")).await, Outcome::Reply(_)));
        assert_eq!(
            *seen.0.lock().unwrap(),
            vec![
                "replaced".to_string(),
                "answered ask with Response".to_string()
            ]
        );
    }
}
