//! Where a session's server→client messages go on the HTTP front.
//!
//! Messages travel on *streams*: one per POST that carried requests (`p1`, `p2`, …) and the
//! session's GET stream (`g`). A stream outlives the HTTP connection that carries it: while the
//! client is away its events still go to the event log, and a `GET` with `Last-Event-ID` attaches
//! a new connection to it (see `stream.rs`).
//!
//! * A reply goes to the stream of the POST that carried its request.
//! * Until a POST stream's first non-reply message it is *undecided*: replies are held, and if all
//!   of them arrive first the POST is answered with plain JSON. The first non-reply message turns
//!   it into an SSE stream (held replies first).
//! * A server request/notification related to a client request goes on that request's stream
//!   (HTTP upstreams tell us the relation; for stdio upstreams progress notifications are matched
//!   by progress token, and anything else goes to the only request stream the client can still
//!   read — connected, or dropped after it got an event id to resume from — else the GET
//!   stream, else the newest connected request stream).
//! * Otherwise it goes on the GET stream, logged even while no GET is connected; the next GET
//!   replays what it missed.

use crate::error::ProxyError;
use crate::upstream::Via;
use shadowcat_proto::{Frame, RequestId};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Name of a stream within its session (`g` or `p<n>`).
pub type StreamId = Arc<str>;

/// Id of the GET stream.
pub const GET_STREAM: &str = "g";

/// A server→client message on its way to the client.
#[derive(Debug)]
pub struct Outgoing {
    /// The message.
    pub frame: Frame,
    /// It passed the pipeline with `Transport::Later`: the session's hooks are told how it was
    /// delivered (see `HttpSession::execute`).
    pub report: bool,
}

impl Outgoing {
    /// A message the hooks are not told about (an answer made by the proxy or a hook).
    pub fn quiet(frame: Frame) -> Self {
        Outgoing {
            frame,
            report: false,
        }
    }
}

/// What a response stream's channel carries.
#[derive(Debug)]
pub enum Out {
    /// The POST's replies all came before anything else: answer with one JSON body.
    Json(Vec<Frame>),
    /// One SSE event; `id` is its SSE event id when it was logged. `frame: None` is a priming
    /// event (id and empty data).
    Event {
        /// The message.
        frame: Option<Frame>,
        /// `stream.event` id, when logged.
        id: Option<Arc<str>>,
    },
}

#[derive(Debug)]
struct Stream {
    sink: Option<mpsc::Sender<Out>>,
    /// POST streams: replies still awaited. `None` for the GET stream.
    expected: Option<HashSet<RequestId>>,
    /// Replies held while the stream is undecided.
    held: Vec<Outgoing>,
    sse: bool,
    last_event: Option<Arc<str>>,
    /// Last event handed to a connected client (GET streams replay from here on reconnect).
    delivered: Option<Arc<str>>,
    seq: u64,
}

impl Stream {
    fn connected(&self) -> bool {
        self.sink.as_ref().is_some_and(|s| !s.is_closed())
    }
}

/// Replay bounds returned by [`Outbox::attach`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// The last event logged on the stream before the new connection was attached.
    pub watermark: Option<Arc<str>>,
    /// The last event handed to a connected client.
    pub delivered: Option<Arc<str>>,
}

/// What the caller must do with a frame, outside the lock.
#[derive(Debug)]
pub enum Plan {
    /// Log these frames on `stream` (in order; `None` = a priming event) and send each to the
    /// stream's current sink. `finish`: the stream is complete after them.
    Deliver {
        /// The stream.
        stream: StreamId,
        /// Frames to log and send.
        frames: Vec<Option<Outgoing>>,
        /// End the stream afterwards.
        finish: bool,
    },
    /// Answer the POST with these replies as JSON (stream already removed).
    Json {
        /// The POST's channel.
        sink: Option<mpsc::Sender<Out>>,
        /// Its replies.
        frames: Vec<Outgoing>,
    },
    /// Held until the POST's other replies arrive.
    Held,
    /// Nobody can ever receive it (a reply to an unknown request, or the session ended).
    Dropped(Option<Outgoing>),
}

/// Per-session routing table. Guarded by a std mutex that is never held across an await.
#[derive(Debug)]
pub struct Outbox {
    streams: HashMap<StreamId, Stream>,
    requests: HashMap<RequestId, StreamId>,
    next_post: u64,
    next_seq: u64,
    priming: bool,
    closed: bool,
    /// POST streams that delivered their last reply, oldest first, with when: their logged
    /// events stay resumable for a grace period, then the front drops them.
    finished: VecDeque<(Instant, StreamId)>,
}

impl Outbox {
    /// An empty outbox. `priming`: SSE streams start with a priming event (2025-11-25).
    pub fn new() -> Self {
        let mut o = Outbox {
            streams: HashMap::new(),
            requests: HashMap::new(),
            next_post: 0,
            next_seq: 0,
            priming: false,
            closed: false,
            finished: VecDeque::new(),
        };
        let get = o.new_stream(None, None);
        o.streams.insert(Arc::from(GET_STREAM), get);
        o
    }

    fn new_stream(
        &mut self,
        sink: Option<mpsc::Sender<Out>>,
        expected: Option<HashSet<RequestId>>,
    ) -> Stream {
        self.next_seq += 1;
        let sse = expected.is_none();
        Stream {
            sink,
            expected,
            held: Vec::new(),
            sse,
            last_event: None,
            delivered: None,
            seq: self.next_seq,
        }
    }

    /// Whether SSE streams begin with a priming event (negotiated version 2025-11-25 or later).
    pub fn set_priming(&mut self, on: bool) {
        self.priming = on;
    }

    /// Register a POST carrying these request ids; returns its stream id. Refused with
    /// [`ProxyError::SessionNotFound`] once the session has ended ([`Outbox::close`]: nothing
    /// would ever answer on the stream), and with [`ProxyError::DuplicateRequestId`] when one of
    /// the ids is still awaiting its reply in this session (or repeats within the POST): the
    /// second registration would take the first one's reply, and the first POST would wait
    /// forever.
    pub fn open_post(
        &mut self,
        ids: &[RequestId],
        tx: mpsc::Sender<Out>,
    ) -> Result<StreamId, ProxyError> {
        if self.closed {
            return Err(ProxyError::SessionNotFound);
        }
        let mut seen = HashSet::with_capacity(ids.len());
        for r in ids {
            if self.requests.contains_key(r) || !seen.insert(r) {
                return Err(ProxyError::DuplicateRequestId(r.clone()));
            }
        }
        self.next_post += 1;
        let id: StreamId = Arc::from(format!("p{}", self.next_post));
        let s = self.new_stream(Some(tx), Some(ids.iter().cloned().collect()));
        self.streams.insert(id.clone(), s);
        for r in ids {
            self.requests.insert(r.clone(), id.clone());
        }
        Ok(id)
    }

    /// A request of a POST will get no reply (a hook dropped it).
    pub fn forget_request(&mut self, id: &RequestId) -> Plan {
        let Some(sid) = self.requests.remove(id) else {
            return Plan::Dropped(None);
        };
        let Some(s) = self.streams.get_mut(&sid) else {
            return Plan::Dropped(None);
        };
        if let Some(exp) = s.expected.as_mut() {
            exp.remove(id);
        }
        self.complete_if_done(sid)
    }

    /// Attach a connection to a stream (replacing an older one). `None` when the stream no
    /// longer exists; otherwise the last event logged on it (the replay watermark: later events
    /// go to the new connection) and the last one handed to a connected client.
    pub fn attach(&mut self, stream: &str, tx: mpsc::Sender<Out>) -> Option<Attached> {
        self.next_seq += 1;
        let seq = self.next_seq;
        let s = self.streams.get_mut(stream)?;
        s.sink = Some(tx);
        s.seq = seq;
        Some(Attached {
            watermark: s.last_event.clone(),
            delivered: s.delivered.clone(),
        })
    }

    /// Whether new SSE streams start with a priming event.
    pub fn priming(&self) -> bool {
        self.priming
    }

    /// Record the id of an event just logged on `stream`, and get the connection to send it on.
    pub fn logged(&mut self, stream: &str, id: Option<Arc<str>>) -> Option<mpsc::Sender<Out>> {
        let s = self.streams.get_mut(stream)?;
        let connected = s.connected();
        if id.is_some() {
            if connected {
                s.delivered = id.clone();
            }
            s.last_event = id;
        }
        s.sink.clone().filter(|_| connected)
    }

    /// A POST stream delivered its last reply: forget it (its connection ends). Its logged
    /// events stay until [`Outbox::finished_before`] hands it out.
    pub fn finish(&mut self, stream: &str) {
        if stream != GET_STREAM
            && let Some((id, _)) = self.streams.remove_entry(stream)
        {
            self.finished.push_back((Instant::now(), id));
        }
    }

    /// Finished POST streams whose grace period is over at `now`: their events can go.
    pub fn finished_before(&mut self, now: Instant, grace: Duration) -> Vec<StreamId> {
        let mut out = Vec::new();
        while let Some((at, _)) = self.finished.front()
            && now.saturating_duration_since(*at) >= grace
        {
            if let Some((_, id)) = self.finished.pop_front() {
                out.push(id);
            }
        }
        out
    }

    /// Whether any client connection of this session is open.
    pub fn has_open_streams(&self) -> bool {
        self.streams.values().any(Stream::connected)
    }

    /// Whether a GET connection is open.
    pub fn listening(&self) -> bool {
        self.streams.get(GET_STREAM).is_some_and(Stream::connected)
    }

    /// Whether the session has ended ([`Outbox::close`]).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The session ended: drop every connection so the responses finish.
    pub fn close(&mut self) {
        self.closed = true;
        self.streams.clear();
        self.requests.clear();
        self.finished.clear();
    }

    fn complete_if_done(&mut self, sid: StreamId) -> Plan {
        let Some(s) = self.streams.get_mut(&sid) else {
            return Plan::Dropped(None);
        };
        if !s.expected.as_ref().is_some_and(HashSet::is_empty) {
            return Plan::Held;
        }
        if s.sse {
            return Plan::Deliver {
                stream: sid,
                frames: Vec::new(),
                finish: true,
            };
        }
        let s = self.streams.remove(&sid).expect("present");
        Plan::Json {
            sink: s.sink,
            frames: s.held,
        }
    }

    /// Decide where a server frame goes. `progress_owner` is the request a stdio progress
    /// notification belongs to (found by progress token), if any.
    pub fn route(&mut self, out: Outgoing, via: &Via, progress_owner: Option<RequestId>) -> Plan {
        if self.closed {
            return Plan::Dropped(Some(out));
        }
        if out.frame.kind().is_reply() {
            let Some(sid) = out.frame.id().and_then(|id| self.requests.remove(id)) else {
                return Plan::Dropped(Some(out));
            };
            let Some(s) = self.streams.get_mut(&sid) else {
                return Plan::Dropped(Some(out));
            };
            if let (Some(exp), Some(id)) = (s.expected.as_mut(), out.frame.id()) {
                exp.remove(id);
            }
            let done = s.expected.as_ref().is_some_and(HashSet::is_empty);
            if s.sse {
                return Plan::Deliver {
                    stream: sid,
                    frames: vec![Some(out)],
                    finish: done,
                };
            }
            s.held.push(out);
            return self.complete_if_done(sid);
        }
        let sid = self.pick_stream(via, progress_owner);
        let priming = self.priming;
        let Some(s) = self.streams.get_mut(&sid) else {
            // pick_stream only names streams that exist; should that ever not hold, the frame
            // is reported undelivered rather than the session's pump panicking.
            return Plan::Dropped(Some(out));
        };
        let mut frames = Vec::new();
        if !s.sse {
            // The first non-reply message decides: this POST becomes an SSE stream.
            s.sse = true;
            if priming {
                frames.push(None);
            }
            frames.extend(s.held.drain(..).map(Some));
        }
        frames.push(Some(out));
        Plan::Deliver {
            stream: sid,
            frames,
            finish: false,
        }
    }

    fn pick_stream(&self, via: &Via, progress_owner: Option<RequestId>) -> StreamId {
        let related = match via {
            Via::Request(id) => Some(id.clone()),
            Via::Unrelated => progress_owner,
            Via::Listen => None,
        };
        if let Some(sid) = related.as_ref().and_then(|id| self.requests.get(id)) {
            return sid.clone();
        }
        let get: StreamId = Arc::from(GET_STREAM);
        if !matches!(via, Via::Unrelated) {
            return get;
        }
        // No relation known (stdio): a request stream the client can still read — connected,
        // or dropped after it got an event id to resume from (disconnecting is not cancelling:
        // 2025-11-25 clients reconnect with Last-Event-ID).
        let live = |s: &Stream| s.connected() || s.delivered.is_some();
        let mut posts = self
            .streams
            .iter()
            .filter(|(id, s)| &***id != GET_STREAM && live(s));
        if let Some((first_id, _)) = posts.next()
            && posts.next().is_none()
        {
            return first_id.clone();
        }
        if self.listening() {
            return get;
        }
        self.streams
            .iter()
            .filter(|(id, s)| &***id != GET_STREAM && s.connected())
            .max_by_key(|(_, s)| s.seq)
            .map(|(id, _)| id.clone())
            .unwrap_or(get)
    }
}

impl Default for Outbox {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn f(s: &'static str) -> Outgoing {
        Outgoing::quiet(Frame::parse_single(Bytes::from_static(s.as_bytes())).unwrap())
    }
    const NOTE: &str = r#"{"jsonrpc":"2.0","method":"notifications/message","params":{}}"#;
    const R1: &str = r#"{"jsonrpc":"2.0","id":1,"result":{}}"#;
    const R2: &str = r#"{"jsonrpc":"2.0","id":2,"result":{}}"#;

    fn stream_of(p: &Plan) -> &str {
        match p {
            Plan::Deliver { stream, .. } => stream,
            other => panic!("not delivered: {other:?}"),
        }
    }

    #[test]
    fn finished_streams_are_handed_out_once_their_grace_is_over() {
        let mut o = Outbox::new();
        let (tx, _rx) = mpsc::channel(4);
        let sid = o.open_post(&[RequestId::Number(1)], tx).unwrap();
        assert!(matches!(
            o.route(f(NOTE), &Via::Request(RequestId::Number(1)), None),
            Plan::Deliver { .. }
        ));
        match o.route(f(R1), &Via::Unrelated, None) {
            Plan::Deliver { finish: true, .. } => o.finish(&sid),
            other => panic!("{other:?}"),
        }
        o.finish(GET_STREAM);
        let grace = Duration::from_secs(60);
        let now = Instant::now();
        assert!(o.finished_before(now, grace).is_empty(), "still in grace");
        assert_eq!(o.finished_before(now + grace, grace), vec![sid]);
        assert!(
            o.finished_before(now + grace * 2, grace).is_empty(),
            "handed out once; the GET stream never finishes"
        );
    }

    #[test]
    fn a_request_id_still_awaiting_its_reply_cannot_be_registered_again() {
        let mut o = Outbox::new();
        let (tx1, _rx1) = mpsc::channel(4);
        let (tx2, _rx2) = mpsc::channel(4);
        o.open_post(&[RequestId::Number(1)], tx1.clone()).unwrap();
        let dup = o.open_post(&[RequestId::Number(2), RequestId::Number(1)], tx2.clone());
        match dup {
            Err(ProxyError::DuplicateRequestId(id)) => assert_eq!(id, RequestId::Number(1)),
            other => panic!("{other:?}"),
        }
        // Nothing of the refused POST was registered: id 2 is free, and id 1's reply still
        // goes to the first POST.
        let within = o.open_post(&[RequestId::Number(3), RequestId::Number(3)], tx2.clone());
        assert!(matches!(within, Err(ProxyError::DuplicateRequestId(_))));
        assert!(!o.requests.contains_key(&RequestId::Number(2)));
        assert!(!o.requests.contains_key(&RequestId::Number(3)));
        match o.route(f(R1), &Via::Unrelated, None) {
            Plan::Json { frames, sink } => {
                assert_eq!(frames.len(), 1);
                assert!(
                    sink.is_some_and(|s| s.same_channel(&tx1)),
                    "the first POST's"
                );
            }
            other => panic!("{other:?}"),
        }
        // Answered: the id may be used again.
        o.open_post(&[RequestId::Number(1)], tx2).unwrap();
    }

    #[test]
    fn replies_first_means_json() {
        let mut o = Outbox::new();
        let (tx, _rx) = mpsc::channel(4);
        o.open_post(&[RequestId::Number(1), RequestId::Number(2)], tx)
            .unwrap();
        assert!(matches!(o.route(f(R1), &Via::Unrelated, None), Plan::Held));
        match o.route(f(R2), &Via::Unrelated, None) {
            Plan::Json { frames, sink } => {
                assert_eq!(frames.len(), 2);
                assert!(sink.is_some());
            }
            other => panic!("{other:?}"),
        }
        // the stream is gone; a duplicate reply has nobody waiting
        assert!(matches!(
            o.route(f(R1), &Via::Unrelated, None),
            Plan::Dropped(_)
        ));
    }

    #[test]
    fn a_notification_first_turns_the_post_into_sse_with_held_replies_and_priming() {
        let mut o = Outbox::new();
        o.set_priming(true);
        let (tx, _rx) = mpsc::channel(4);
        let sid = o
            .open_post(&[RequestId::Number(1), RequestId::Number(2)], tx)
            .unwrap();
        assert!(matches!(o.route(f(R1), &Via::Unrelated, None), Plan::Held));
        match o.route(f(NOTE), &Via::Unrelated, None) {
            Plan::Deliver {
                stream,
                frames,
                finish,
            } => {
                assert_eq!(stream, sid);
                assert!(!finish);
                assert!(frames[0].is_none(), "priming event first");
                assert_eq!(
                    frames[1].as_ref().unwrap().frame.id(),
                    Some(&RequestId::Number(1))
                );
                assert_eq!(
                    frames[2].as_ref().unwrap().frame.method(),
                    Some("notifications/message")
                );
            }
            other => panic!("{other:?}"),
        }
        match o.route(f(R2), &Via::Unrelated, None) {
            Plan::Deliver { finish, frames, .. } => assert!(finish && frames.len() == 1),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn related_messages_follow_their_request_even_when_disconnected() {
        let mut o = Outbox::new();
        let (tx1, rx1) = mpsc::channel(4);
        let (tx2, _rx2) = mpsc::channel(4);
        let (tg, _rg) = mpsc::channel(4);
        let s1 = o.open_post(&[RequestId::Number(1)], tx1).unwrap();
        let s2 = o.open_post(&[RequestId::Number(2)], tx2).unwrap();
        assert_eq!(o.attach(GET_STREAM, tg).unwrap().watermark, None);
        assert_eq!(
            stream_of(&o.route(f(NOTE), &Via::Request(RequestId::Number(1)), None)),
            &*s1
        );
        assert_eq!(
            stream_of(&o.route(f(NOTE), &Via::Unrelated, Some(RequestId::Number(2)))),
            &*s2
        );
        // two connected POSTs and no relation known: the GET stream
        assert_eq!(
            stream_of(&o.route(f(NOTE), &Via::Unrelated, None)),
            GET_STREAM
        );
        assert_eq!(stream_of(&o.route(f(NOTE), &Via::Listen, None)), GET_STREAM);
        // POST 1's client went away: its related messages still go to its stream (for replay)
        drop(rx1);
        assert_eq!(
            stream_of(&o.route(f(NOTE), &Via::Request(RequestId::Number(1)), None)),
            &*s1
        );
        // ...but unrelated stdio messages now pick the only connected POST
        let (tx3, _rx3) = mpsc::channel(4);
        o.attach(&s2, tx3);
        o.close();
        assert!(matches!(
            o.route(f(NOTE), &Via::Unrelated, None),
            Plan::Dropped(_)
        ));
        assert!(!o.has_open_streams());
    }

    #[test]
    fn unrelated_messages_stay_on_a_dropped_stream_the_client_can_resume() {
        let mut o = Outbox::new();
        let (tx, rx) = mpsc::channel(4);
        let sid = o.open_post(&[RequestId::Number(1)], tx).unwrap();
        let (tg, _rg) = mpsc::channel(4);
        o.attach(GET_STREAM, tg);
        // The only request stream, connected: related by default.
        assert_eq!(stream_of(&o.route(f(NOTE), &Via::Unrelated, None)), &*sid);
        o.logged(&sid, Some(Arc::from("p1.1")));
        // Its client drops the connection after event p1.1: later messages still go to p1
        // (logged, replayed when it resumes), not to the GET stream.
        drop(rx);
        assert_eq!(stream_of(&o.route(f(NOTE), &Via::Unrelated, None)), &*sid);
        // A dropped request stream that never got an event id cannot be resumed: GET stream.
        let mut o = Outbox::new();
        let (tx, rx) = mpsc::channel(4);
        o.open_post(&[RequestId::Number(1)], tx).unwrap();
        let (tg, _rg) = mpsc::channel(4);
        o.attach(GET_STREAM, tg);
        drop(rx);
        assert_eq!(
            stream_of(&o.route(f(NOTE), &Via::Unrelated, None)),
            GET_STREAM
        );
    }

    #[test]
    fn unrelated_messages_without_streams_go_to_the_get_stream_and_watermarks_move() {
        let mut o = Outbox::new();
        assert_eq!(
            stream_of(&o.route(f(NOTE), &Via::Unrelated, None)),
            GET_STREAM
        );
        assert!(
            o.logged(GET_STREAM, Some(Arc::from("g.1"))).is_none(),
            "no connection yet"
        );
        let (tg, _rg) = mpsc::channel(4);
        let a = o.attach(GET_STREAM, tg).unwrap();
        assert_eq!((a.watermark.as_deref(), a.delivered), (Some("g.1"), None));
        assert!(o.logged(GET_STREAM, Some(Arc::from("g.2"))).is_some());
        let a = o.attach(GET_STREAM, mpsc::channel(1).0).unwrap();
        assert_eq!(
            (a.watermark.as_deref(), a.delivered.as_deref()),
            (Some("g.2"), Some("g.2"))
        );
        assert!(o.attach("p9", mpsc::channel(1).0).is_none());
        // a dropped request completes its POST with no replies
        let (tx, _rx) = mpsc::channel(4);
        o.open_post(&[RequestId::Number(5)], tx).unwrap();
        match o.forget_request(&RequestId::Number(5)) {
            Plan::Json { frames, .. } => assert!(frames.is_empty()),
            other => panic!("{other:?}"),
        }
    }
}
