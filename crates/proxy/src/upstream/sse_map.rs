//! Mapping the events of an SSE body as they stream: decode with [`SseDecoder`], let an
//! [`EventMap`] keep, rewrite or drop each event (and optionally give up waiting for the body
//! at a deadline, ending the stream with a last event of its own), re-encode.
//!
//! Used where the proxy has to look into a relayed SSE answer without buffering it: the hooks
//! on 2026-07-28 answers (`front/http/answers.rs`) and the request timeout over a stateless
//! answer ([`super::guarded`]).
//!
//! The stream ends when the body does (an unterminated last block is not relayed), after the
//! first error (a body that fails, an event the decoder refuses: relayed as the body's error),
//! or with the map's last event once its deadline has passed.

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use shadowcat_proto::sse::{SseDecoder, SseEvent, encode_event};
use std::future::Future;
use tokio::time::Instant;
use tokio_util::codec::Decoder;

/// What to relay for one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapped {
    /// The event as received (its raw bytes, comments included).
    Keep,
    /// The event with this data instead: same id, event type and retry, re-encoded (invalid
    /// UTF-8 is replaced).
    Data(Bytes),
    /// Nothing.
    Drop,
}

/// Decides what happens to each event of a body mapped with [`map_sse`].
pub trait EventMap: Send + 'static {
    /// What to relay for `event`.
    fn map(&mut self, event: &SseEvent) -> impl Future<Output = Mapped> + Send;

    /// While waiting for more of the body: how long to wait (`None`, the default: as long as
    /// it takes). Asked again before every wait.
    fn deadline(&self) -> Option<Instant> {
        None
    }

    /// The deadline passed: the last event to relay before the stream ends.
    fn expired(&mut self) -> Bytes {
        Bytes::new()
    }
}

struct State<M> {
    data: axum::body::BodyDataStream,
    buf: BytesMut,
    decoder: SseDecoder,
    map: M,
    done: bool,
}

/// `body`, an SSE stream, with each event (of at most `limit` bytes) relayed as `map` says.
pub fn map_sse<M: EventMap>(body: Body, limit: usize, map: M) -> Body {
    let state = State {
        data: body.into_data_stream(),
        buf: BytesMut::new(),
        decoder: SseDecoder::new(limit),
        map,
        done: false,
    };
    let events = futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if s.done {
                return None;
            }
            match s.decoder.decode(&mut s.buf) {
                Ok(Some(ev)) => {
                    let out = match s.map.map(&ev).await {
                        Mapped::Keep => ev.raw,
                        Mapped::Data(data) => {
                            let text = String::from_utf8_lossy(&data);
                            let (id, event) = (ev.id.as_deref(), ev.event.as_deref());
                            encode_event(id, event, &text, ev.retry)
                        }
                        Mapped::Drop => continue,
                    };
                    return Some((Ok::<_, std::io::Error>(out), s));
                }
                Ok(None) => {}
                Err(e) => {
                    s.done = true;
                    return Some((Err(std::io::Error::other(e)), s));
                }
            }
            let next = match s.map.deadline() {
                None => s.data.next().await,
                Some(d) => match tokio::time::timeout_at(d, s.data.next()).await {
                    Ok(n) => n,
                    Err(_) => {
                        s.done = true;
                        return Some((Ok(s.map.expired()), s));
                    }
                },
            };
            match next {
                Some(Ok(chunk)) => s.buf.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    s.done = true;
                    return Some((Err(std::io::Error::other(e)), s));
                }
                None => return None,
            }
        }
    });
    Body::from_stream(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// Records what it saw; upper-cases data, drops `skip`.
    struct Upper(Arc<Mutex<Vec<Option<String>>>>);

    impl EventMap for Upper {
        async fn map(&mut self, event: &SseEvent) -> Mapped {
            self.0.lock().unwrap().push(event.data.clone());
            // Mapping may wait (hooks do): the stream waits with it.
            tokio::task::yield_now().await;
            match event.data.as_deref() {
                None => Mapped::Keep,
                Some("skip") => Mapped::Drop,
                Some(d) => Mapped::Data(Bytes::from(d.to_uppercase())),
            }
        }
    }

    fn body_of(chunks: &[&'static [u8]]) -> Body {
        let chunks: Vec<Result<Bytes, std::io::Error>> =
            chunks.iter().map(|c| Ok(Bytes::from_static(c))).collect();
        Body::from_stream(futures_util::stream::iter(chunks))
    }

    async fn text(body: Body) -> Result<String, String> {
        axum::body::to_bytes(body, usize::MAX)
            .await
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
            .map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn events_split_across_chunks_with_crlf_and_multi_line_data_are_mapped() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let body = body_of(&[
            b"id: 1\r\nevent: mes",
            b"sage\r\ndata: one\r",
            b"\ndata: two\r\n\r",
            b"\n: a comment\r\nretry: 5\r\n\r\n",
            b"data: skip\n\n",
            b"id: 2\ndata: thr",
            b"ee\n\ndata: unterminated at the end",
        ]);
        let out = text(map_sse(body, 1024, Upper(seen.clone())))
            .await
            .unwrap();
        assert_eq!(
            out,
            "id: 1\nevent: message\ndata: ONE\ndata: TWO\n\n\
             : a comment\r\nretry: 5\r\n\r\n\
             id: 2\ndata: THREE\n\n"
        );
        assert_eq!(
            *seen.lock().unwrap(),
            [
                Some("one\ntwo".to_string()),
                None,
                Some("skip".to_string()),
                Some("three".to_string())
            ]
        );
    }

    #[tokio::test]
    async fn an_event_over_the_limit_fails_the_stream() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let body = body_of(&[b"data: a\n\ndata: far too long for the limit\n\n"]);
        let err = text(map_sse(body, 16, Upper(seen.clone())))
            .await
            .unwrap_err();
        assert!(err.contains("limit"), "{err}");
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    /// Waits for the body until a deadline while `waiting`; then ends with its own error event.
    struct Patient {
        until: Instant,
        waiting: bool,
    }

    impl EventMap for Patient {
        async fn map(&mut self, event: &SseEvent) -> Mapped {
            if event.data.as_deref() == Some("answer") {
                self.waiting = false;
            }
            Mapped::Keep
        }

        fn deadline(&self) -> Option<Instant> {
            self.waiting.then_some(self.until)
        }

        fn expired(&mut self) -> Bytes {
            encode_event(None, Some("message"), "gave up", None)
        }
    }

    /// A body that sends `first` and then nothing, never ending (until the sender is dropped).
    fn stalled(first: &'static [u8]) -> (Body, tokio::sync::mpsc::Sender<Bytes>) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let head = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(first))]);
        let rest = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, std::io::Error>);
        (Body::from_stream(head.chain(rest)), tx)
    }

    #[tokio::test]
    async fn a_passed_deadline_ends_the_stream_with_the_maps_error_event() {
        let (body, _tx) = stalled(b"data: progress\n\n");
        let map = Patient {
            until: Instant::now() + Duration::from_millis(50),
            waiting: true,
        };
        let out = text(map_sse(body, 1024, map)).await.unwrap();
        assert_eq!(out, "data: progress\n\nevent: message\ndata: gave up\n\n");
    }

    #[tokio::test]
    async fn without_a_deadline_the_stream_waits_for_the_body() {
        let (body, tx) = stalled(b"data: answer\n\n");
        let map = Patient {
            // Already passed: only a map still waiting would give up.
            until: Instant::now(),
            waiting: true,
        };
        let mut data = map_sse(body, 1024, map).into_data_stream();
        assert_eq!(data.next().await.unwrap().unwrap(), "data: answer\n\n");
        tx.send(Bytes::from_static(b"data: more\n\n"))
            .await
            .unwrap();
        assert_eq!(data.next().await.unwrap().unwrap(), "data: more\n\n");
        drop(tx);
        assert!(data.next().await.is_none(), "ends with the body");
    }
}
