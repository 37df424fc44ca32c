//! Where a session's server→client messages go on the HTTP front.
//!
//! * A reply goes to the HTTP request that carried its request.
//! * A server request/notification related to a client request goes on that request's stream
//!   while it is open (HTTP upstreams tell us the relation; for stdio upstreams progress
//!   notifications are matched by progress token, and anything else goes to the only open
//!   request stream, else the GET stream, else the newest request stream).
//! * Otherwise it goes on the session's GET stream; when no stream is open it waits in a bounded
//!   queue that the next GET stream drains first.

use crate::upstream::Via;
use shadowcat_proto::{Frame, RequestId};
use std::collections::{HashMap, VecDeque};
use tokio::sync::mpsc;

/// The sending half of one open HTTP response (POST stream or GET stream).
#[derive(Clone, Debug)]
pub struct Sink {
    tx: mpsc::Sender<Frame>,
    seq: u64,
}

impl Sink {
    fn open(&self) -> bool {
        !self.tx.is_closed()
    }
}

/// What the router decided for a frame.
#[derive(Debug)]
pub enum Route {
    /// Send on this stream (outside the lock).
    To(mpsc::Sender<Frame>),
    /// Queued for the next GET stream.
    Queued,
    /// Nobody is waiting (a reply whose client went away).
    Dropped,
}

/// Per-session routing table. Guarded by a std mutex that is never held across an await.
#[derive(Debug)]
pub struct Outbox {
    requests: HashMap<RequestId, Sink>,
    listen: Option<Sink>,
    queue: VecDeque<Frame>,
    capacity: usize,
    next_seq: u64,
    dropped: u64,
    closed: bool,
}

impl Outbox {
    /// An outbox whose queue holds at most `capacity` frames.
    pub fn new(capacity: usize) -> Self {
        Outbox {
            requests: HashMap::new(),
            listen: None,
            queue: VecDeque::new(),
            capacity,
            next_seq: 0,
            dropped: 0,
            closed: false,
        }
    }

    fn sink(&mut self, tx: mpsc::Sender<Frame>) -> Sink {
        self.next_seq += 1;
        Sink {
            tx,
            seq: self.next_seq,
        }
    }

    /// Register an HTTP response stream for these client request ids.
    pub fn register_requests(&mut self, ids: &[RequestId], tx: mpsc::Sender<Frame>) {
        let sink = self.sink(tx);
        for id in ids {
            self.requests.insert(id.clone(), sink.clone());
        }
    }

    /// Install the GET stream (replacing an older one) and take what waited for it.
    pub fn open_listen(&mut self, tx: mpsc::Sender<Frame>) -> Vec<Frame> {
        self.listen = Some(self.sink(tx));
        self.queue.drain(..).collect()
    }

    /// Number of frames dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Frames waiting for a GET stream.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Whether a GET stream is open.
    pub fn listening(&self) -> bool {
        self.listen.as_ref().is_some_and(Sink::open)
    }

    /// Whether any HTTP response stream of this session is still open.
    pub fn has_open_streams(&self) -> bool {
        self.listening() || self.requests.values().any(Sink::open)
    }

    /// The session ended: drop every stream so the responses finish.
    pub fn close(&mut self) {
        self.closed = true;
        self.requests.clear();
        self.listen = None;
        self.queue.clear();
    }

    /// Decide where a server frame goes. `progress_owner` is the request a stdio progress
    /// notification belongs to (found by progress token), if any.
    pub fn route(
        &mut self,
        frame: Frame,
        via: &Via,
        progress_owner: Option<RequestId>,
    ) -> (Route, Option<Frame>) {
        if self.closed {
            return (Route::Dropped, None);
        }
        if frame.kind().is_reply() {
            let sink = frame.id().and_then(|id| self.requests.remove(id));
            return match sink.filter(Sink::open) {
                Some(s) => (Route::To(s.tx), Some(frame)),
                None => (Route::Dropped, None),
            };
        }
        self.requests.retain(|_, s| s.open());
        let related = match via {
            Via::Request(id) => Some(id.clone()),
            Via::Unrelated => progress_owner,
            Via::Listen => None,
        };
        if let Some(s) = related.as_ref().and_then(|id| self.requests.get(id)) {
            return (Route::To(s.tx.clone()), Some(frame));
        }
        let unrelated_stdio = matches!(via, Via::Unrelated);
        if unrelated_stdio && let Some(only) = self.only_request_stream() {
            return (Route::To(only), Some(frame));
        }
        if let Some(l) = self.listen.as_ref().filter(|l| l.open()) {
            return (Route::To(l.tx.clone()), Some(frame));
        }
        if unrelated_stdio && let Some(newest) = self.requests.values().max_by_key(|s| s.seq) {
            return (Route::To(newest.tx.clone()), Some(frame));
        }
        if self.queue.len() >= self.capacity {
            self.queue.pop_front();
            self.dropped += 1;
            tracing::warn!(
                capacity = self.capacity,
                "session queue full; dropped its oldest message"
            );
        }
        self.queue.push_back(frame);
        (Route::Queued, None)
    }

    fn only_request_stream(&self) -> Option<mpsc::Sender<Frame>> {
        let mut it = self.requests.values();
        let first = it.next()?;
        if it.all(|s| s.seq == first.seq) {
            Some(first.tx.clone())
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn f(s: &'static str) -> Frame {
        Frame::parse_single(Bytes::from_static(s.as_bytes())).unwrap()
    }
    const NOTE: &str = r#"{"jsonrpc":"2.0","method":"notifications/message","params":{}}"#;

    #[test]
    fn replies_go_to_their_request_and_notes_queue_until_get() {
        let mut o = Outbox::new(2);
        let (tx1, mut rx1) = mpsc::channel(4);
        o.register_requests(&[RequestId::Number(1)], tx1);
        let (r, fr) = o.route(
            f(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#),
            &Via::Unrelated,
            None,
        );
        let Route::To(tx) = r else {
            panic!("reply not routed")
        };
        tx.try_send(fr.unwrap()).unwrap();
        assert_eq!(rx1.try_recv().unwrap().id(), Some(&RequestId::Number(1)));
        // a second reply with the same id has nobody waiting
        assert!(matches!(
            o.route(
                f(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#),
                &Via::Unrelated,
                None
            )
            .0,
            Route::Dropped
        ));
        // no streams: notifications queue, bounded, oldest dropped
        for _ in 0..3 {
            assert!(matches!(
                o.route(f(NOTE), &Via::Unrelated, None).0,
                Route::Queued
            ));
        }
        assert_eq!((o.queued(), o.dropped()), (2, 1));
        let (tx2, _rx2) = mpsc::channel(4);
        assert_eq!(o.open_listen(tx2).len(), 2);
        assert!(matches!(
            o.route(f(NOTE), &Via::Listen, None).0,
            Route::To(_)
        ));
    }

    #[test]
    fn related_messages_follow_their_request_stream() {
        let mut o = Outbox::new(8);
        let (tx1, _rx1) = mpsc::channel(4);
        let (tx2, _rx2) = mpsc::channel(4);
        let (tl, _rl) = mpsc::channel(4);
        o.register_requests(&[RequestId::Number(1)], tx1.clone());
        o.register_requests(&[RequestId::Number(2)], tx2.clone());
        o.open_listen(tl.clone());
        let to = |r: Route| match r {
            Route::To(t) => t,
            other => panic!("{other:?}"),
        };
        assert!(
            to(o.route(f(NOTE), &Via::Request(RequestId::Number(1)), None)
                .0)
            .same_channel(&tx1)
        );
        assert!(
            to(
                o.route(f(NOTE), &Via::Unrelated, Some(RequestId::Number(2)))
                    .0
            )
            .same_channel(&tx2)
        );
        // two request streams open and no relation known: the GET stream
        assert!(to(o.route(f(NOTE), &Via::Unrelated, None).0).same_channel(&tl));
        o.close();
        assert!(matches!(
            o.route(f(NOTE), &Via::Unrelated, None).0,
            Route::Dropped
        ));
        assert!(!o.has_open_streams());
    }
}
