//! MCP messages: what the generator sends, and how it checks what comes back.

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};

/// The protocol version the generator asks for.
pub const PROTOCOL_VERSION: &str = "2025-06-18";

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A request id unique in this process (0 is reserved for `initialize`).
pub fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// The `initialize` request (id 0).
pub fn initialize() -> Bytes {
    initialize_as(PROTOCOL_VERSION)
}

/// The `initialize` request (id 0) asking for protocol `version`.
pub fn initialize_as(version: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"jsonrpc":"2.0","id":0,"method":"initialize","params":{{"protocolVersion":{},"capabilities":{{}},"clientInfo":{{"name":"shadowcat-bench","version":"{}"}}}}}}"#,
        serde_json::Value::String(version.to_owned()),
        env!("CARGO_PKG_VERSION")
    ))
}

/// The `notifications/initialized` notification.
pub fn initialized() -> Bytes {
    Bytes::from_static(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
}

/// Builds `tools/call` requests of one tool with a `message` argument of a fixed size, unique per
/// request, and knows the reply text to expect.
#[derive(Debug, Clone)]
pub struct EchoCall {
    tool: String,
    filler: String,
    expect_prefix: String,
}

impl EchoCall {
    /// `payload` is the size of the `message` argument in bytes (at least the id's digits).
    pub fn new(tool: &str, payload: usize, expect_prefix: &str) -> Self {
        // Letters and digits only: nothing to escape, so the JSON size is predictable.
        let filler: String = (0..payload)
            .map(|i| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[i % 36]))
            .collect();
        EchoCall {
            tool: tool.to_owned(),
            filler,
            expect_prefix: expect_prefix.to_owned(),
        }
    }

    /// The message sent with request `id`: `"<id>-"` then filler up to the payload size.
    pub fn message(&self, id: u64) -> String {
        let head = format!("{id}-");
        let rest = self.filler.len().saturating_sub(head.len());
        let mut m = String::with_capacity(head.len() + rest);
        m.push_str(&head);
        m.push_str(&self.filler[..rest]);
        m
    }

    /// The JSON-RPC request with id `id` and the text the reply must carry.
    pub fn request(&self, id: u64) -> (Bytes, String) {
        let message = self.message(id);
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":{},"arguments":{{"message":"{message}"}}}}}}"#,
            serde_json::Value::String(self.tool.clone())
        );
        let mut expect = String::with_capacity(self.expect_prefix.len() + message.len());
        expect.push_str(&self.expect_prefix);
        expect.push_str(&message);
        (Bytes::from(body), expect)
    }
}

/// A `tools/call` of the demo server's `log` tool: `count` notifications `"<message> #i"`.
pub fn log_call(id: u64, tool: &str, message: &str, count: u32) -> Bytes {
    Bytes::from(format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":{},"arguments":{{"message":{},"count":{count}}}}}}}"#,
        serde_json::Value::String(tool.to_owned()),
        serde_json::Value::String(message.to_owned()),
    ))
}

/// A `tools/call` of the demo server's `slow` tool: `steps` progress notifications (progress token
/// = the request id), no sleeping.
pub fn slow_call(id: u64, tool: &str, steps: u32) -> Bytes {
    Bytes::from(format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":{},"arguments":{{"steps":{steps},"duration":0}},"_meta":{{"progressToken":{id}}}}}}}"#,
        serde_json::Value::String(tool.to_owned()),
    ))
}

/// One JSON-RPC message, fields borrowed from the bytes.
#[derive(Debug, Deserialize)]
pub struct Msg<'a> {
    #[serde(borrow, default)]
    pub id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub method: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub params: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub result: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub error: Option<&'a RawValue>,
}

impl Msg<'_> {
    /// The numeric id, if any.
    pub fn num_id(&self) -> Option<u64> {
        self.id.and_then(|r| r.get().parse().ok())
    }

    /// A response (no method, has an id).
    pub fn is_response(&self) -> bool {
        self.method.is_none() && self.id.is_some()
    }
}

#[derive(Debug, Deserialize)]
struct ToolResult<'a> {
    #[serde(borrow, default)]
    content: Vec<Content<'a>>,
    #[serde(rename = "isError", default)]
    is_error: bool,
}

#[derive(Debug, Deserialize)]
struct Content<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

/// Parse one JSON-RPC message.
pub fn parse(data: &[u8]) -> anyhow::Result<Msg<'_>> {
    serde_json::from_slice(data).with_context(|| {
        format!(
            "not a JSON-RPC message: {}",
            String::from_utf8_lossy(&data[..data.len().min(200)])
        )
    })
}

/// The text of a successful tool result (all text blocks joined).
pub fn tool_text(result: &RawValue) -> anyhow::Result<String> {
    let r: ToolResult<'_> = serde_json::from_str(result.get()).context("not a tool result")?;
    let text: String = r.content.iter().filter_map(|c| c.text.as_deref()).collect();
    if r.is_error {
        bail!("tool error: {}", truncate(&text, 200));
    }
    Ok(text)
}

/// Among `messages` (JSON-RPC payloads), find the response with id `id` and check that it is a
/// tool result whose text is exactly `expect`.
pub fn check_reply<'a>(
    messages: impl IntoIterator<Item = &'a [u8]>,
    id: u64,
    expect: &str,
) -> anyhow::Result<()> {
    for data in messages {
        let msg = parse(data)?;
        if !msg.is_response() || msg.num_id() != Some(id) {
            continue;
        }
        if let Some(err) = msg.error {
            bail!("JSON-RPC error: {}", truncate(err.get(), 200));
        }
        let result = msg
            .result
            .ok_or_else(|| anyhow!("response without result"))?;
        let text = tool_text(result)?;
        if text != expect {
            bail!(
                "wrong answer: expected {:?}, got {:?}",
                truncate(expect, 60),
                truncate(&text, 60)
            );
        }
        return Ok(());
    }
    bail!("no response with id {id} in the reply")
}

pub fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// One SSE event: its `id` field, if it had one, and its `data` (`None` for an event without
/// data, such as a priming event).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub data: Option<Vec<u8>>,
}

/// An incremental SSE decoder: feed bytes, get the `data` of each complete event (events without
/// data, such as priming events and comments, are skipped) or, with [`SseDecoder::feed_events`],
/// the events with their ids. Handles LF, CRLF and CR line ends.
#[derive(Debug, Default)]
pub struct SseDecoder {
    buf: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
    id: Option<String>,
    /// The previous chunk ended with CR: a LF starting the next one belongs to it.
    pending_cr: bool,
}

impl SseDecoder {
    /// The data of each complete event.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<Vec<u8>>) {
        self.feed_with(chunk, &mut |ev| out.extend(ev.data));
    }

    /// Each complete event that has an id or data.
    pub fn feed_events(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) {
        self.feed_with(chunk, &mut |ev| out.push(ev));
    }

    fn feed_with(&mut self, mut chunk: &[u8], emit: &mut dyn FnMut(SseEvent)) {
        if self.pending_cr && chunk.first() == Some(&b'\n') {
            chunk = &chunk[1..];
        }
        self.pending_cr = false;
        self.buf.extend_from_slice(chunk);
        let mut start = 0;
        let mut i = 0;
        while i < self.buf.len() {
            let b = self.buf[i];
            if b == b'\n' || b == b'\r' {
                let line_end = i;
                if b == b'\r' {
                    if i + 1 < self.buf.len() {
                        if self.buf[i + 1] == b'\n' {
                            i += 1;
                        }
                    } else {
                        self.pending_cr = true;
                    }
                }
                let line = self.buf[start..line_end].to_vec();
                self.line(&line, emit);
                start = i + 1;
            }
            i += 1;
        }
        self.buf.drain(..start);
    }

    fn line(&mut self, line: &[u8], emit: &mut dyn FnMut(SseEvent)) {
        if line.is_empty() {
            if self.has_data || self.id.is_some() {
                emit(SseEvent {
                    id: self.id.take(),
                    data: self.has_data.then(|| std::mem::take(&mut self.data)),
                });
            }
            self.has_data = false;
            self.data.clear();
            return;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(0) => return, // a comment
            Some(c) => (
                &line[..c],
                line[c + 1..].strip_prefix(b" ").unwrap_or(&line[c + 1..]),
            ),
            None => (line, &[][..]),
        };
        match name {
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"id" if !value.contains(&0) => {
                self.id = Some(String::from_utf8_lossy(value).into_owned());
            }
            _ => {}
        }
    }
}

/// The JSON-RPC payloads of a whole reply body (SSE or JSON, batches split).
pub fn payloads(is_sse: bool, body: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    if is_sse {
        let mut d = SseDecoder::default();
        d.feed(body, &mut out);
        d.feed(b"\n\n", &mut out);
        out.retain(|e| !e.iter().all(u8::is_ascii_whitespace));
    } else {
        let trimmed = body.trim_ascii_start();
        if trimmed.first() == Some(&b'[') {
            if let Ok(items) = serde_json::from_slice::<Vec<&RawValue>>(trimmed) {
                out.extend(items.into_iter().map(|r| r.get().as_bytes().to_vec()));
            }
        } else if !trimmed.is_empty() {
            out.push(body.to_vec());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_decoder_handles_split_chunks_and_line_ends() {
        let mut d = SseDecoder::default();
        let mut out = Vec::new();
        d.feed(b"id: 1\ndata: {\"a\"", &mut out);
        assert!(out.is_empty());
        d.feed(b":1}\r", &mut out);
        d.feed(b"\n\r\n: comment\n\ndata:x\ndata: y\r\r", &mut out);
        assert_eq!(out, vec![b"{\"a\":1}".to_vec(), b"x\ny".to_vec()]);
    }

    #[test]
    fn sse_decoder_reports_ids_and_priming_events() {
        let mut d = SseDecoder::default();
        let mut out = Vec::new();
        d.feed_events(b"id: p1.1\nretry: 1000\ndata:\n\n: c\n\nid:p1.", &mut out);
        d.feed_events(
            b"2\nevent: message\ndata: {}\n\ndata: x\n\nid\n\n",
            &mut out,
        );
        let ev = |id: Option<&str>, data: Option<&[u8]>| SseEvent {
            id: id.map(str::to_owned),
            data: data.map(<[u8]>::to_vec),
        };
        assert_eq!(
            out,
            vec![
                ev(Some("p1.1"), Some(b"")),
                ev(Some("p1.2"), Some(b"{}")),
                ev(None, Some(b"x")),
                ev(Some(""), None),
            ]
        );
    }

    #[test]
    fn echo_request_and_check() {
        let call = EchoCall::new("echo", 32, "");
        let (body, expect) = call.request(7);
        assert_eq!(expect.len(), 32);
        assert!(expect.starts_with("7-"));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["params"]["arguments"]["message"], expect.as_str());
        let reply = format!(
            r#"{{"jsonrpc":"2.0","id":7,"result":{{"content":[{{"type":"text","text":"{expect}"}}]}}}}"#
        );
        check_reply([reply.as_bytes()], 7, &expect).unwrap();
        assert!(check_reply([reply.as_bytes()], 8, &expect).is_err());
        assert!(check_reply([reply.as_bytes()], 7, "other").is_err());
    }

    #[test]
    fn payloads_of_json_batch_and_sse() {
        let p = payloads(false, br#"[{"id":1},{"id":2}]"#);
        assert_eq!(p.len(), 2);
        let p = payloads(true, b"event: message\ndata: {\"id\":1}\n\ndata:\n\n");
        assert_eq!(p, vec![b"{\"id\":1}".to_vec()]);
    }
}
