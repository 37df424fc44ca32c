//! The one pump: a session's upstream events → its front's client, for every front (Streamable
//! HTTP, legacy HTTP+SSE, held 2026-07-28 sessions, stdio).
//!
//! The pump owns what every front needs alike: waiting on the upstream's events, the session's
//! cancellation and whatever else the front waits for (its client closing a stream, an idle
//! tick); taking the frames already waiting together as one burst (a front that logs events
//! can then write a burst with one store write); and, when the upstream closes, answering every
//! request still in flight with a JSON-RPC error ([`Session::fail_pending`]). How frames reach
//! the client — through the pipeline in which transport, routed to which stream — is the
//! front's, behind [`Deliver`].

use crate::session::Session;
use crate::upstream::{UpstreamEvent, Via};
use shadowcat_proto::Frame;
use std::future::Future;
use tokio::sync::mpsc;

/// Most server frames handed over as one burst.
pub const BURST: usize = 64;

/// How a front hands its session's server frames to its client.
pub trait Deliver: Send {
    /// Server frames that arrived together (oldest first), not yet through the pipeline: the
    /// front runs them through it ([`Session::from_server`]) as its wire needs and delivers
    /// them. `false`: the client is gone, and the session ends.
    fn frames(&mut self, burst: Vec<(Frame, Via)>) -> impl Future<Output = bool> + Send;

    /// The upstream closed: `errors` answer the client's requests still in flight.
    fn closed(&mut self, errors: Vec<Frame>) -> impl Future<Output = ()> + Send;

    /// Whatever else the front waits for besides the upstream (its client closing the stream,
    /// an idle tick). Created anew on each turn of the pump and dropped when the upstream
    /// speaks first, so it must only wait (cancel safe); the work is [`Deliver::woke`]. Never
    /// ready by default.
    fn wait(&mut self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }

    /// Whether the pump goes on after the session is cancelled, until the upstream itself
    /// closes (the stdio front: the child's exit code is the proxy's, and what the child still
    /// writes reaches the client). Only for an upstream that is sure to close once its session
    /// is shut down.
    fn until_closed(&self) -> bool {
        false
    }

    /// [`Deliver::wait`] is over: `Some(reason)` ends the session (its client closed the stream,
    /// it was idle too long); `None` goes on.
    fn woke(&mut self) -> impl Future<Output = Option<String>> + Send {
        std::future::ready(None)
    }
}

/// Why a pump ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The upstream closed (a child's exit code, when it had one).
    Closed {
        /// What the upstream said.
        reason: String,
        /// The child's exit code.
        exit_code: Option<i32>,
    },
    /// The front ended it ([`Deliver::woke`]), or its client is gone ([`Deliver::frames`]).
    Client(String),
    /// The session was cancelled (ended elsewhere, or the proxy is shutting down).
    Cancelled,
}

impl End {
    /// A short reason for logs and records.
    pub fn reason(&self) -> &str {
        match self {
            End::Closed { reason, .. } | End::Client(reason) => reason,
            End::Cancelled => "the session was ended",
        }
    }
}

/// Pump `session`'s upstream `events` into `front` until one of them ends.
pub async fn pump<D: Deliver>(
    session: &Session,
    events: &mut mpsc::Receiver<UpstreamEvent>,
    front: &mut D,
) -> End {
    let cancel = session.cancel_token().clone();
    let until_closed = front.until_closed();
    loop {
        let ev = tokio::select! {
            ev = events.recv() => ev,
            () = front.wait() => match front.woke().await {
                Some(reason) => return End::Client(reason),
                None => continue,
            },
            _ = cancel.cancelled(), if !until_closed => return End::Cancelled,
        };
        let (burst, closed) = match ev {
            Some(UpstreamEvent::Frame { frame, via }) => gather(*frame, via, events),
            Some(closed @ UpstreamEvent::Closed { .. }) => (Vec::new(), Some(closed)),
            None => (
                Vec::new(),
                Some(UpstreamEvent::Closed {
                    reason: "the upstream is gone".into(),
                    exit_code: None,
                }),
            ),
        };
        if !burst.is_empty() && !front.frames(burst).await {
            return End::Client("the client is gone".into());
        }
        if let Some(UpstreamEvent::Closed { reason, exit_code }) = closed {
            tracing::info!(%reason, "upstream closed; ending the session");
            front.closed(session.fail_pending(&reason)).await;
            return End::Closed { reason, exit_code };
        }
    }
}

/// `first`, and what else is already waiting on `events` (up to [`BURST`] frames); a close met
/// on the way is returned to be handled after them.
fn gather(
    first: Frame,
    via: Via,
    events: &mut mpsc::Receiver<UpstreamEvent>,
) -> (Vec<(Frame, Via)>, Option<UpstreamEvent>) {
    let mut burst = vec![(first, via)];
    while burst.len() < BURST {
        match events.try_recv() {
            Ok(UpstreamEvent::Frame { frame, via }) => burst.push((*frame, via)),
            Ok(closed @ UpstreamEvent::Closed { .. }) => return (burst, Some(closed)),
            Err(_) => break,
        }
    }
    (burst, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn frame(n: usize) -> UpstreamEvent {
        let raw =
            format!(r#"{{"jsonrpc":"2.0","method":"notifications/message","params":{{"n":{n}}}}}"#);
        UpstreamEvent::Frame {
            frame: Box::new(Frame::parse_single(Bytes::from(raw)).unwrap()),
            via: Via::Unrelated,
        }
    }

    fn n_of(f: &Frame) -> usize {
        let v: serde_json::Value = serde_json::from_slice(f.raw()).unwrap();
        v["params"]["n"].as_u64().unwrap() as usize
    }

    #[tokio::test]
    async fn a_burst_takes_what_is_waiting_in_order_and_stops_at_a_close() {
        let (tx, mut rx) = mpsc::channel(8);
        for n in 1..=3 {
            tx.send(frame(n)).await.unwrap();
        }
        tx.send(UpstreamEvent::Closed {
            reason: "bye".into(),
            exit_code: Some(3),
        })
        .await
        .unwrap();
        tx.send(frame(9)).await.unwrap();
        let Some(UpstreamEvent::Frame { frame: first, via }) = rx.recv().await else {
            panic!("a frame first")
        };
        let (burst, closed) = gather(*first, via, &mut rx);
        let ns: Vec<usize> = burst.iter().map(|(f, _)| n_of(f)).collect();
        assert_eq!(ns, [1, 2, 3]);
        assert!(
            matches!(
                closed,
                Some(UpstreamEvent::Closed {
                    exit_code: Some(3),
                    ..
                })
            ),
            "the close is handed back, after the frames before it"
        );
        // What followed the close stays on the channel.
        assert!(matches!(rx.try_recv(), Ok(UpstreamEvent::Frame { .. })));
    }

    #[tokio::test]
    async fn a_burst_is_bounded() {
        let (tx, mut rx) = mpsc::channel(BURST * 2);
        for n in 0..BURST + 5 {
            tx.send(frame(n)).await.unwrap();
        }
        let Some(UpstreamEvent::Frame { frame: first, via }) = rx.recv().await else {
            panic!("a frame first")
        };
        let (burst, closed) = gather(*first, via, &mut rx);
        assert_eq!(burst.len(), BURST);
        assert!(closed.is_none());
        assert_eq!(rx.len(), 5, "the rest waits for the next turn");
    }
}
