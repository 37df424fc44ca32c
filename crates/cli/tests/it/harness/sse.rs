//! The one SSE reader of the end-to-end tests: streaming from a response ([`SseStream`]) or over
//! a whole body ([`parse_events`]), yielding `id`/`event`/`data`/`retry` events.
//!
//! It reuses the proxy's own decoder, `shadowcat_proto::sse::SseDecoder`, on purpose: that
//! decoder has its own unit and property tests (crates/proto/src/sse.rs: LF, CRLF and CR line
//! ends, multi-line data, comments, a leading BOM, limits), so a second, smaller parser here
//! would only be a weaker copy whose quirks could hide the proxy's bugs or invent others.

use super::WAIT;
use bytes::BytesMut;
use serde_json::Value;
use shadowcat_proto::sse::SseDecoder;
pub use shadowcat_proto::sse::SseEvent;
use tokio_util::codec::Decoder;

/// Large enough for any event a test sends or receives.
const MAX_EVENT: usize = 16 << 20;

/// The parts of an event the tests look at.
pub trait EventExt {
    /// The data, `""` for an event without any.
    fn text(&self) -> &str;
    /// The data as JSON; `None` for an event without data (or blank data: a priming event).
    fn json(&self) -> Option<Value>;
}

impl EventExt for SseEvent {
    fn text(&self) -> &str {
        self.data.as_deref().unwrap_or("")
    }

    fn json(&self) -> Option<Value> {
        let data = self.data.as_deref().filter(|d| !d.trim().is_empty())?;
        Some(
            serde_json::from_str(data)
                .unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {data}")),
        )
    }
}

/// Every event of a whole `text/event-stream` body.
pub fn parse_events(body: &str) -> Vec<SseEvent> {
    let mut decoder = SseDecoder::new(MAX_EVENT);
    let mut buf = BytesMut::from(body.as_bytes());
    let mut out = Vec::new();
    while let Some(ev) = decoder.decode_eof(&mut buf).expect("valid SSE") {
        out.push(ev);
    }
    out
}

/// Reads an SSE response event by event, as it arrives.
pub struct SseStream {
    resp: reqwest::Response,
    buf: BytesMut,
    decoder: SseDecoder,
    /// The body ended (cleanly or not): only buffered events are left.
    ended: bool,
    /// Every event was read: [`SseStream::next_event`] returned `None`.
    done: bool,
    /// Why the body ended early, if it did not end cleanly.
    cut: Option<String>,
}

impl SseStream {
    pub fn new(resp: reqwest::Response) -> SseStream {
        SseStream {
            resp,
            buf: BytesMut::new(),
            decoder: SseDecoder::new(MAX_EVENT),
            ended: false,
            done: false,
            cut: None,
        }
    }

    /// The next event; `None` once the stream has ended. Panics if none comes within [`WAIT`].
    pub async fn next_event(&mut self) -> Option<SseEvent> {
        tokio::time::timeout(WAIT, async {
            loop {
                if self.ended {
                    let ev = self.decoder.decode_eof(&mut self.buf).expect("valid SSE");
                    self.done = ev.is_none();
                    return ev;
                }
                if let Some(ev) = self.decoder.decode(&mut self.buf).expect("valid SSE") {
                    return Some(ev);
                }
                match self.resp.chunk().await {
                    Ok(Some(c)) => self.buf.extend_from_slice(&c),
                    Ok(None) => self.ended = true,
                    Err(e) => {
                        self.ended = true;
                        self.cut = Some(e.to_string());
                    }
                }
            }
        })
        .await
        .expect("no SSE event within the timeout")
    }

    /// The JSON of the next event that has data; `None` once the stream has ended.
    pub async fn next_json(&mut self) -> Option<Value> {
        loop {
            if let Some(v) = self.next_event().await?.json() {
                return Some(v);
            }
        }
    }

    /// The JSON of the next event that `want` accepts (events without data are skipped).
    pub async fn next_matching(&mut self, want: impl Fn(&Value) -> bool) -> Value {
        loop {
            let v = self.next_json().await.expect("the stream ended");
            if want(&v) {
                return v;
            }
        }
    }

    /// Up to `n` events (all of them with `None`), fewer if the stream ends first.
    pub async fn take(&mut self, n: Option<usize>) -> Vec<SseEvent> {
        let mut out = Vec::new();
        while n.is_none_or(|n| out.len() < n) {
            match self.next_event().await {
                Some(ev) => out.push(ev),
                None => break,
            }
        }
        out
    }

    /// The stream ended and every event was read.
    pub fn finished(&self) -> bool {
        self.done
    }

    /// Why the body was cut short (a transport error), if it was.
    pub fn cut(&self) -> Option<&str> {
        self.cut.as_deref()
    }
}

#[test]
fn whole_bodies_parse_with_crlf_multi_line_data_and_a_last_cr() {
    let body = "id: p1.1\r\nretry: 500\r\ndata:\r\n\r\n: comment\nevent: message\ndata: {\"a\":\ndata: 1}\n\nid: p1.2\rdata: {\"b\":2}\r\r";
    let events = parse_events(body);
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[0].id.as_deref(), Some("p1.1"));
    assert_eq!(events[0].retry, Some(500));
    assert_eq!(events[0].json(), None, "a priming event has no JSON");
    assert_eq!(events[1].event.as_deref(), Some("message"));
    assert_eq!(events[1].text(), "{\"a\":\n1}");
    assert_eq!(events[1].json(), Some(serde_json::json!({"a": 1})));
    assert_eq!(events[2].id.as_deref(), Some("p1.2"));
    assert_eq!(events[2].json(), Some(serde_json::json!({"b": 2})));
}
