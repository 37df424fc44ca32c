//! Server-Sent Events codec.
//!
//! [`SseDecoder`] is an incremental [`tokio_util::codec::Decoder`] that
//! implements the WHATWG HTML "event stream interpretation" rules and yields
//! one [`SseEvent`] per dispatched block, together with the exact bytes of the
//! block (`raw`) so a proxy can forward it without re-encoding.
//!
//! [`encode_event`], [`encode_event_into`] and [`encode_comment`] produce
//! well-formed event-stream bytes.
//!
//! Decoding rules, in short:
//!
//! * lines end with CRLF, LF or CR; a CR that is the last buffered byte is
//!   held back until the next byte shows whether it is the first half of a
//!   CRLF (at EOF it is a line end). Consequence: with a CR-only upstream the
//!   last block is dispatched when the next byte (or EOF) arrives;
//! * a UTF-8 BOM at the very start of the stream is stripped;
//! * lines starting with `:` are comments: they carry no field but stay in
//!   the `raw` bytes of the block they sit in;
//! * `name: value` with one optional space after the colon removed; a line
//!   without a colon is a field name with an empty value; unknown fields are
//!   ignored;
//! * a blank line ends a block. A block is yielded iff it set at least one of
//!   `id`, `event`, `data`, `retry`; other blocks (comments only, unknown
//!   fields only, ...) are dropped silently;
//! * an unterminated block at EOF is discarded;
//! * a block (complete, or still being buffered) larger than the configured
//!   limit fails with [`SseError::EventTooLarge`]; the rest of that block is
//!   then skipped without being buffered, and decoding resumes after it.
//!   Likewise, invalid UTF-8 in the value of a known field fails with
//!   [`SseError::InvalidUtf8`] and the rest of that block is skipped.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::Decoder;

/// Default limit for the size of one event block: 10 MiB.
pub const DEFAULT_MAX_EVENT_SIZE: usize = 10 * 1024 * 1024;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One dispatched SSE event block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// Value of the last `id:` field in the block (`None` if the block had no
    /// `id` field). An `id` value containing NUL is ignored, as the WHATWG
    /// spec requires.
    pub id: Option<String>,
    /// Value of the last `event:` field.
    pub event: Option<String>,
    /// `None` if the block had no `data:` line; otherwise the data lines
    /// joined with `'\n'` (so `data: ` alone gives `Some("")`).
    pub data: Option<String>,
    /// Value of the last `retry:` field made of ASCII digits only (values that
    /// overflow `u64` are ignored).
    pub retry: Option<u64>,
    /// The exact bytes of this block as received, including comment lines
    /// inside it and the terminating blank line (but never a stream-leading
    /// BOM).
    pub raw: Bytes,
}

/// Errors from [`SseDecoder`].
#[derive(Debug, thiserror::Error)]
pub enum SseError {
    #[error("SSE event exceeds the limit of {limit} bytes")]
    EventTooLarge { limit: usize },
    #[error("SSE stream is not valid UTF-8")]
    InvalidUtf8,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Fields collected so far for the block being decoded.
#[derive(Debug, Default)]
struct PendingBlock {
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
    retry: Option<u64>,
}

impl PendingBlock {
    fn is_empty(&self) -> bool {
        self.id.is_none() && self.event.is_none() && self.data.is_none() && self.retry.is_none()
    }
}

/// Incremental SSE decoder; see the [module documentation](self).
///
/// The bytes of the block being decoded stay in the caller's buffer until the
/// block is complete, and are then split off (without copying) as
/// [`SseEvent::raw`]. Each byte is examined a bounded number of times: the
/// decoder remembers where it stopped scanning.
#[derive(Debug)]
pub struct SseDecoder {
    max_event_size: usize,
    /// Nothing has been decoded yet: a leading BOM must be stripped.
    at_stream_start: bool,
    /// Offset in the buffer of the first byte of the current, unterminated
    /// line. The current block always starts at offset 0.
    line_start: usize,
    /// Offset from which to continue searching for a line terminator.
    search_pos: usize,
    pending: PendingBlock,
    /// Discarding the remainder of a block that caused an error.
    skipping: bool,
    /// While skipping: bytes of the current line were already discarded, so
    /// the line is not blank even if nothing of it is left in the buffer.
    skip_mid_line: bool,
}

impl SseDecoder {
    /// Create a decoder rejecting blocks larger than `max_event_size` bytes.
    pub fn new(max_event_size: usize) -> Self {
        SseDecoder {
            max_event_size,
            at_stream_start: true,
            line_start: 0,
            search_pos: 0,
            pending: PendingBlock::default(),
            skipping: false,
            skip_mid_line: false,
        }
    }

    /// Forget the block being decoded (offsets are relative to its start).
    fn reset_block(&mut self) {
        self.line_start = 0;
        self.search_pos = 0;
        self.pending = PendingBlock::default();
    }

    /// Start skipping the rest of the current block after an error.
    fn start_skipping(&mut self, mid_line: bool) {
        self.reset_block();
        self.skipping = true;
        self.skip_mid_line = mid_line;
    }

    fn too_large(&self) -> SseError {
        SseError::EventTooLarge {
            limit: self.max_event_size,
        }
    }

    /// Discard bytes up to and including the blank line ending the block being
    /// skipped. Returns `true` once that blank line has been consumed.
    fn skip_block(&mut self, src: &mut BytesMut, eof: bool) -> bool {
        loop {
            match scan_line(src, 0, eof) {
                Scan::Line {
                    content_end,
                    next_start,
                } => {
                    let blank = content_end == 0 && !self.skip_mid_line;
                    src.advance(next_start);
                    self.skip_mid_line = false;
                    if blank {
                        self.skipping = false;
                        return true;
                    }
                }
                Scan::Partial { resume_at } => {
                    if resume_at > 0 {
                        src.advance(resume_at);
                        self.skip_mid_line = true;
                    }
                    return false;
                }
            }
        }
    }

    /// Apply one complete, non-blank line to the pending block.
    fn process_line(&mut self, line: &[u8]) -> Result<(), SseError> {
        if line.first() == Some(&b':') {
            return Ok(());
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"data" => {
                let value = utf8(value)?;
                match &mut self.pending.data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(value);
                    }
                    None => self.pending.data = Some(value.to_owned()),
                }
            }
            b"event" => self.pending.event = Some(utf8(value)?.to_owned()),
            // An id containing NUL is ignored (WHATWG).
            b"id" if !value.contains(&0) => self.pending.id = Some(utf8(value)?.to_owned()),
            b"retry" => {
                if let Some(retry) = parse_digits(value) {
                    self.pending.retry = Some(retry);
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn decode_inner(
        &mut self,
        src: &mut BytesMut,
        eof: bool,
    ) -> Result<Option<SseEvent>, SseError> {
        if self.at_stream_start {
            if !eof && src.len() < BOM.len() && BOM.starts_with(src) {
                // Possibly the beginning of a BOM split across reads.
                return Ok(None);
            }
            if src.starts_with(BOM) {
                src.advance(BOM.len());
            }
            self.at_stream_start = false;
        }
        if self.skipping && !self.skip_block(src, eof) {
            return Ok(None);
        }
        loop {
            match scan_line(src, self.search_pos, eof) {
                Scan::Partial { resume_at } => {
                    if src.len() > self.max_event_size {
                        // The unterminated block is already too large: drop
                        // what we have and skip the rest as it arrives.
                        let mid_line = resume_at > self.line_start;
                        src.advance(resume_at);
                        self.start_skipping(mid_line);
                        return Err(self.too_large());
                    }
                    self.search_pos = resume_at;
                    return Ok(None);
                }
                Scan::Line {
                    content_end,
                    next_start,
                } => {
                    let blank = content_end == self.line_start;
                    if next_start > self.max_event_size {
                        src.advance(next_start);
                        if blank {
                            self.reset_block();
                        } else {
                            self.start_skipping(false);
                        }
                        return Err(self.too_large());
                    }
                    if blank {
                        let pending = std::mem::take(&mut self.pending);
                        self.reset_block();
                        if pending.is_empty() {
                            src.advance(next_start);
                            continue;
                        }
                        let raw = src.split_to(next_start).freeze();
                        return Ok(Some(SseEvent {
                            id: pending.id,
                            event: pending.event,
                            data: pending.data,
                            retry: pending.retry,
                            raw,
                        }));
                    }
                    if let Err(err) = self.process_line(&src[self.line_start..content_end]) {
                        src.advance(next_start);
                        self.start_skipping(false);
                        return Err(err);
                    }
                    self.line_start = next_start;
                    self.search_pos = next_start;
                }
            }
        }
    }
}

impl Default for SseDecoder {
    fn default() -> Self {
        SseDecoder::new(DEFAULT_MAX_EVENT_SIZE)
    }
}

impl Decoder for SseDecoder {
    type Item = SseEvent;
    type Error = SseError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<SseEvent>, SseError> {
        self.decode_inner(src, false)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<SseEvent>, SseError> {
        match self.decode_inner(src, true)? {
            Some(event) => Ok(Some(event)),
            None => {
                // Per spec, an unterminated block at EOF is discarded.
                src.clear();
                self.reset_block();
                self.skipping = false;
                self.skip_mid_line = false;
                Ok(None)
            }
        }
    }
}

/// Result of looking for the end of the line starting before `from`.
enum Scan {
    /// A complete line: content ends at `content_end`, the next line starts
    /// at `next_start` (after the CR, LF or CRLF).
    Line {
        content_end: usize,
        next_start: usize,
    },
    /// No complete line; resume searching at `resume_at` (the buffer length,
    /// or the offset of a trailing CR that may be followed by an LF).
    Partial { resume_at: usize },
}

fn scan_line(buf: &[u8], from: usize, eof: bool) -> Scan {
    let from = from.min(buf.len());
    let Some(rel) = buf[from..].iter().position(|&b| b == b'\n' || b == b'\r') else {
        return Scan::Partial {
            resume_at: buf.len(),
        };
    };
    let i = from + rel;
    let next_start = if buf[i] == b'\n' {
        i + 1
    } else {
        match buf.get(i + 1) {
            Some(b'\n') => i + 2,
            Some(_) => i + 1,
            None if eof => i + 1,
            None => return Scan::Partial { resume_at: i },
        }
    };
    Scan::Line {
        content_end: i,
        next_start,
    }
}

fn utf8(bytes: &[u8]) -> Result<&str, SseError> {
    std::str::from_utf8(bytes).map_err(|_| SseError::InvalidUtf8)
}

/// Parse a non-empty run of ASCII digits; `None` if anything else or overflow.
fn parse_digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |acc, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// Call `f` for each line of `s`, splitting on CRLF, LF and CR. Always calls
/// `f` at least once (the empty string gives one empty line).
fn for_each_line<'a>(s: &'a str, mut f: impl FnMut(&'a str)) {
    let bytes = s.as_bytes();
    let mut start = 0;
    while let Some(rel) = bytes[start..]
        .iter()
        .position(|&b| b == b'\n' || b == b'\r')
    {
        let end = start + rel;
        f(&s[start..end]);
        start = if bytes[end] == b'\r' && bytes.get(end + 1) == Some(&b'\n') {
            end + 2
        } else {
            end + 1
        };
    }
    f(&s[start..]);
}

fn count_line_breaks(s: &str) -> usize {
    s.bytes().filter(|&b| b == b'\n' || b == b'\r').count()
}

/// Upper bound of the encoded size, to reserve once.
fn encoded_len_bound(
    id: Option<&str>,
    event: Option<&str>,
    data: &str,
    retry: Option<u64>,
) -> usize {
    id.map_or(0, |id| "id: \n".len() + id.len())
        + event.map_or(0, |ev| "event: \n".len() + ev.len())
        + retry.map_or(0, |_| "retry: \n".len() + 20)
        + data.len()
        + "data: \n".len() * (1 + count_line_breaks(data))
        + 1
}

/// Write `name: value\n`, dropping any CR/LF in `value` so that it cannot
/// break the framing.
fn put_single_line_field(buf: &mut BytesMut, name: &[u8], value: &str) {
    buf.put_slice(name);
    buf.put_slice(b": ");
    for_each_line(value, |part| buf.put_slice(part.as_bytes()));
    buf.put_u8(b'\n');
}

fn put_u64(buf: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.put_slice(&digits[i..]);
}

/// Encode one event.
///
/// `data` is split on `"\r\n"`, `"\n"` and `"\r"` into several `data:` lines
/// (an empty `data` gives one empty `data: ` line). Field order: id, event,
/// retry, data. The output ends with `"\n\n"`. CR and LF characters in `id`
/// and `event` are removed (they would break the framing); an `id` containing
/// NUL is ignored by receivers.
pub fn encode_event(
    id: Option<&str>,
    event: Option<&str>,
    data: &str,
    retry: Option<u64>,
) -> Bytes {
    let mut buf = BytesMut::with_capacity(encoded_len_bound(id, event, data, retry));
    encode_event_into(&mut buf, id, event, data, retry);
    buf.freeze()
}

/// Same as [`encode_event`], appending into an existing buffer.
pub fn encode_event_into(
    buf: &mut BytesMut,
    id: Option<&str>,
    event: Option<&str>,
    data: &str,
    retry: Option<u64>,
) {
    buf.reserve(encoded_len_bound(id, event, data, retry));
    if let Some(id) = id {
        put_single_line_field(buf, b"id", id);
    }
    if let Some(event) = event {
        put_single_line_field(buf, b"event", event);
    }
    if let Some(retry) = retry {
        buf.put_slice(b"retry: ");
        put_u64(buf, retry);
        buf.put_u8(b'\n');
    }
    for_each_line(data, |line| {
        buf.put_slice(b"data: ");
        buf.put_slice(line.as_bytes());
        buf.put_u8(b'\n');
    });
    buf.put_u8(b'\n');
}

/// A comment block (e.g. a keep-alive): `": {text}\n\n"`. A `text` with line
/// breaks gives one comment line per line.
pub fn encode_comment(text: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(text.len() + 3 * (1 + count_line_breaks(text)) + 1);
    for_each_line(text, |line| {
        buf.put_slice(b": ");
        buf.put_slice(line.as_bytes());
        buf.put_u8(b'\n');
    });
    buf.put_u8(b'\n');
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Outcome of one decode call that produced something, comparable in tests.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Out {
        Event(SseEvent),
        Err(String),
    }

    fn out(r: Result<Option<SseEvent>, SseError>) -> Option<Out> {
        match r {
            Ok(Some(ev)) => Some(Out::Event(ev)),
            Ok(None) => None,
            Err(e) => Some(Out::Err(e.to_string())),
        }
    }

    /// Feed `chunks` one after the other, then signal EOF. Checks after every
    /// `Ok(None)` that the decoder does not hold more than the limit.
    fn decode_chunks_with(dec: &mut SseDecoder, chunks: &[&[u8]]) -> Vec<Out> {
        let mut buf = BytesMut::new();
        let mut outs = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            loop {
                let r = dec.decode(&mut buf);
                let done = matches!(r, Ok(None));
                outs.extend(out(r));
                if done {
                    assert!(buf.len() <= dec.max_event_size.max(BOM.len()));
                    break;
                }
            }
        }
        loop {
            let r = dec.decode_eof(&mut buf);
            let done = matches!(r, Ok(None));
            outs.extend(out(r));
            if done {
                assert!(buf.is_empty());
                break;
            }
        }
        outs
    }

    fn decode_chunks(chunks: &[&[u8]], max: usize) -> Vec<Out> {
        decode_chunks_with(&mut SseDecoder::new(max), chunks)
    }

    fn decode_all(input: &[u8]) -> Vec<Out> {
        decode_chunks(&[input], DEFAULT_MAX_EVENT_SIZE)
    }

    fn events(outs: Vec<Out>) -> Vec<SseEvent> {
        outs.into_iter()
            .map(|o| match o {
                Out::Event(ev) => ev,
                Out::Err(e) => panic!("unexpected error {e}"),
            })
            .collect()
    }

    fn ev(
        id: Option<&str>,
        event: Option<&str>,
        data: Option<&str>,
        retry: Option<u64>,
        raw: &[u8],
    ) -> SseEvent {
        SseEvent {
            id: id.map(str::to_owned),
            event: event.map(str::to_owned),
            data: data.map(str::to_owned),
            retry,
            raw: Bytes::copy_from_slice(raw),
        }
    }

    fn data_ev(data: &str, raw: &[u8]) -> SseEvent {
        ev(None, None, Some(data), None, raw)
    }

    /// A stream mixing BOM, LF, CRLF and CR line endings, comments, keep-alive
    /// blocks, multi-line data and every field.
    const SAMPLE: &[u8] = b"\xEF\xBB\xBF: hello\n\n\
        id: 1\nevent: message\ndata: {\"a\":1}\n\n\
        : keep-alive\r\n\r\n\
        data: line1\r\n: inner comment\r\ndata: line2\r\ndata\r\n\r\n\
        retry: 1500\rid:2\revent:x\rdata:no-space\r\r\
        foo: bar\n\n\
        data: last\r\n\r";

    fn sample_expected() -> Vec<SseEvent> {
        vec![
            ev(
                Some("1"),
                Some("message"),
                Some("{\"a\":1}"),
                None,
                b"id: 1\nevent: message\ndata: {\"a\":1}\n\n",
            ),
            data_ev(
                "line1\nline2\n",
                b"data: line1\r\n: inner comment\r\ndata: line2\r\ndata\r\n\r\n",
            ),
            ev(
                Some("2"),
                Some("x"),
                Some("no-space"),
                Some(1500),
                b"retry: 1500\rid:2\revent:x\rdata:no-space\r\r",
            ),
            data_ev("last", b"data: last\r\n\r"),
        ]
    }

    #[test]
    fn sample_whole() {
        assert_eq!(events(decode_all(SAMPLE)), sample_expected());
    }

    #[test]
    fn sample_split_at_every_position() {
        for i in 0..=SAMPLE.len() {
            let got = events(decode_chunks(&[&SAMPLE[..i], &SAMPLE[i..]], 1024));
            assert_eq!(got, sample_expected(), "split at {i}");
        }
    }

    #[test]
    fn sample_split_at_every_pair_of_positions() {
        for i in 0..=SAMPLE.len() {
            for j in i..=SAMPLE.len() {
                let chunks = [&SAMPLE[..i], &SAMPLE[i..j], &SAMPLE[j..]];
                assert_eq!(
                    events(decode_chunks(&chunks, 1024)),
                    sample_expected(),
                    "split at {i},{j}"
                );
            }
        }
    }

    #[test]
    fn sample_byte_by_byte() {
        let chunks: Vec<&[u8]> = SAMPLE.chunks(1).collect();
        assert_eq!(events(decode_chunks(&chunks, 1024)), sample_expected());
    }

    #[test]
    fn line_endings() {
        for input in [
            &b"data: a\ndata: b\n\n"[..],
            b"data: a\r\ndata: b\r\n\r\n",
            b"data: a\rdata: b\r\r",
            b"data: a\r\ndata: b\rdata: c\n\n",
        ] {
            let got = events(decode_all(input));
            assert_eq!(got.len(), 1, "{input:?}");
            assert!(got[0].data.as_deref().unwrap().starts_with("a\nb"));
            assert_eq!(&got[0].raw[..], input);
        }
        // LF CR is two line ends: the CR is a blank line.
        assert_eq!(
            events(decode_all(b"data: a\n\rdata: b\r\n\n")),
            vec![data_ev("a", b"data: a\n\r"), data_ev("b", b"data: b\r\n\n")]
        );
    }

    #[test]
    fn trailing_cr_waits_for_next_byte() {
        let mut dec = SseDecoder::default();
        let mut buf = BytesMut::from(&b"data: a\r\n\r"[..]);
        assert!(dec.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"\n");
        assert_eq!(
            dec.decode(&mut buf).unwrap(),
            Some(data_ev("a", b"data: a\r\n\r\n"))
        );
        assert!(buf.is_empty());

        // A lone CR followed by something else ends the line.
        let mut buf = BytesMut::from(&b"data: b\r\r"[..]);
        assert!(dec.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"data: c\r\r");
        assert_eq!(
            dec.decode(&mut buf).unwrap(),
            Some(data_ev("b", b"data: b\r\r"))
        );
        assert!(dec.decode(&mut buf).unwrap().is_none());
        // At EOF a trailing CR is a line end.
        assert_eq!(
            dec.decode_eof(&mut buf).unwrap(),
            Some(data_ev("c", b"data: c\r\r"))
        );
        assert!(dec.decode_eof(&mut buf).unwrap().is_none());
    }

    #[test]
    fn multi_line_data() {
        assert_eq!(
            events(decode_all(b"data: a\ndata:\ndata:  b\ndata\n\n")),
            vec![data_ev("a\n\n b\n", b"data: a\ndata:\ndata:  b\ndata\n\n")]
        );
    }

    #[test]
    fn comments() {
        let input = b": only a comment\n\n:\n\n: c1\ndata: x\n: c2\n\n: trailing\n\n";
        assert_eq!(
            events(decode_all(input)),
            vec![data_ev("x", b": c1\ndata: x\n: c2\n\n")]
        );
        // Comment-only and empty blocks between events vanish.
        assert_eq!(
            events(decode_all(b"\n\n\ndata: y\n\n\n\n")),
            vec![data_ev("y", b"data: y\n\n")]
        );
    }

    #[test]
    fn bom() {
        let input = b"\xEF\xBB\xBFdata: x\n\n";
        assert_eq!(
            events(decode_all(input)),
            vec![data_ev("x", b"data: x\n\n")]
        );
        // Split inside the BOM.
        for i in 0..=4 {
            let got = events(decode_chunks(&[&input[..i], &input[i..]], 1024));
            assert_eq!(got, vec![data_ev("x", b"data: x\n\n")], "split at {i}");
        }
        // Only at the very start: a second BOM makes an unknown field name.
        let input = b"\xEF\xBB\xBF\xEF\xBB\xBFdata: x\n\ndata: y\n\n";
        assert_eq!(
            events(decode_all(input)),
            vec![data_ev("y", b"data: y\n\n")]
        );
        // Not at the start of the stream.
        let input = b"data: y\n\n\xEF\xBB\xBFdata: x\n\n";
        assert_eq!(
            events(decode_all(input)),
            vec![data_ev("y", b"data: y\n\n")]
        );
        // A BOM prefix that is not a BOM.
        assert_eq!(
            events(decode_chunks(&[b"\xEF", b"data: x\n\n"], 1024)),
            Vec::<SseEvent>::new()
        );
        assert!(decode_all(b"\xEF").is_empty());
    }

    #[test]
    fn retry_parsing() {
        let retry = |line: &str| {
            let input = format!("{line}\ndata: d\n\n");
            events(decode_all(input.as_bytes()))[0].retry
        };
        assert_eq!(retry("retry: 1000"), Some(1000));
        assert_eq!(retry("retry:0"), Some(0));
        assert_eq!(retry("retry: 007"), Some(7));
        assert_eq!(retry("retry: 18446744073709551615"), Some(u64::MAX));
        assert_eq!(retry("retry: 18446744073709551616"), None);
        assert_eq!(retry("retry: 10a"), None);
        assert_eq!(retry("retry: -1"), None);
        assert_eq!(retry("retry: 1.5"), None);
        assert_eq!(retry("retry:  100"), None);
        assert_eq!(retry("retry: 100 "), None);
        assert_eq!(retry("retry:"), None);
        assert_eq!(retry("retry"), None);
        assert_eq!(retry("retry: 5\nretry: x"), Some(5));
        assert_eq!(retry("retry: 5\nretry: 6"), Some(6));
    }

    #[test]
    fn field_parsing() {
        let one = |input: &[u8]| {
            let mut got = events(decode_all(input));
            assert_eq!(got.len(), 1, "{input:?}");
            got.pop().unwrap()
        };
        // No space, one space (removed), two spaces (one kept).
        assert_eq!(one(b"data:x\n\n").data.as_deref(), Some("x"));
        assert_eq!(one(b"data: x\n\n").data.as_deref(), Some("x"));
        assert_eq!(one(b"data:  x\n\n").data.as_deref(), Some(" x"));
        assert_eq!(one(b"data: x: y\n\n").data.as_deref(), Some("x: y"));
        assert_eq!(one(b"data:\tx\n\n").data.as_deref(), Some("\tx"));
        // Field names are case-sensitive and exact.
        assert_eq!(one(b"Data: x\ndata: y\n\n").data.as_deref(), Some("y"));
        assert_eq!(one(b"data : x\ndata: y\n\n").data.as_deref(), Some("y"));
        // Last id / event wins.
        let e = one(b"id: 1\nid: 2\nevent: a\nevent: b\ndata\n\n");
        assert_eq!(
            (e.id.as_deref(), e.event.as_deref()),
            (Some("2"), Some("b"))
        );
        // Empty id / event are Some("").
        let e = one(b"id\nevent:\n\n");
        assert_eq!(
            (e.id.as_deref(), e.event.as_deref(), e.data),
            (Some(""), Some(""), None)
        );
        // An id containing NUL is ignored.
        assert_eq!(one(b"id: 1\nid: a\0b\ndata\n\n").id.as_deref(), Some("1"));
        assert!(decode_all(b"id: a\0b\n\n").is_empty());
        // Non-ASCII values.
        assert_eq!(
            one("data: héllo ✓\n\n".as_bytes()).data.as_deref(),
            Some("héllo ✓")
        );
    }

    #[test]
    fn which_blocks_are_yielded() {
        assert_eq!(
            events(decode_all(b"retry: 1000\n\n")),
            vec![ev(None, None, None, Some(1000), b"retry: 1000\n\n")]
        );
        assert_eq!(
            events(decode_all(b"id: 5\n\n")),
            vec![ev(Some("5"), None, None, None, b"id: 5\n\n")]
        );
        assert_eq!(
            events(decode_all(b"event: ping\n\n")),
            vec![ev(None, Some("ping"), None, None, b"event: ping\n\n")]
        );
        // Unknown fields only, invalid retry only: nothing to yield.
        assert!(decode_all(b"foo: bar\nbaz\n\nretry: x\n\n").is_empty());
    }

    #[test]
    fn priming_event() {
        assert_eq!(
            events(decode_all(b"id: abc\ndata: \n\n")),
            vec![ev(
                Some("abc"),
                None,
                Some(""),
                None,
                b"id: abc\ndata: \n\n"
            )]
        );
    }

    #[test]
    fn raw_is_exact_and_zero_copy_split() {
        let input = b": pre\n\nid: 7\r\n: mid\r\ndata: a\r\n\r\n:x\ndata:b\n\n";
        let got = events(decode_all(input));
        assert_eq!(&got[0].raw[..], b"id: 7\r\n: mid\r\ndata: a\r\n\r\n");
        assert_eq!(&got[1].raw[..], b":x\ndata:b\n\n");
    }

    #[test]
    fn eof_discards_partial_block() {
        assert_eq!(
            events(decode_all(b"data: a\n\ndata: b\n")),
            vec![data_ev("a", b"data: a\n\n")]
        );
        assert_eq!(
            events(decode_all(b"data: a\n\ndata: b")),
            vec![data_ev("a", b"data: a\n\n")]
        );
        // A trailing CR at EOF completes the blank line.
        assert_eq!(
            events(decode_all(b"data: a\r\r")),
            vec![data_ev("a", b"data: a\r\r")]
        );
        assert!(decode_all(b"").is_empty());
    }

    #[test]
    fn invalid_utf8() {
        let input = b"data: ok\n\ndata: \xFF\ndata: rest\n\ndata: after\n\n";
        assert_eq!(
            decode_all(input),
            vec![
                Out::Event(data_ev("ok", b"data: ok\n\n")),
                Out::Err(SseError::InvalidUtf8.to_string()),
                Out::Event(data_ev("after", b"data: after\n\n")),
            ]
        );
        // Invalid UTF-8 in comments and unknown fields is tolerated.
        assert_eq!(
            events(decode_all(b": \xFF\n\xFF: \xFE\ndata: x\n\n")),
            vec![data_ev("x", b": \xFF\n\xFF: \xFE\ndata: x\n\n")]
        );
    }

    #[test]
    fn size_limit_complete_block() {
        let big = format!("data: {}\n\n", "x".repeat(100));
        let input = format!("data: a\n\n{big}data: b\n\n");
        let ok = |d: &str| Out::Event(data_ev(d, format!("data: {d}\n\n").as_bytes()));
        let too_large = Out::Err(SseError::EventTooLarge { limit: 64 }.to_string());
        assert_eq!(
            decode_chunks(&[input.as_bytes()], 64),
            vec![ok("a"), too_large.clone(), ok("b")]
        );
        // Exactly at the limit is fine.
        let exact = decode_chunks(&[big.as_bytes()], big.len());
        assert_eq!(exact.len(), 1);
        assert!(matches!(&exact[0], Out::Event(e) if e.raw.len() == big.len()));
        assert_eq!(decode_chunks(&[big.as_bytes()], big.len() - 1).len(), 1);
        assert!(matches!(
            &decode_chunks(&[big.as_bytes()], big.len() - 1)[0],
            Out::Err(_)
        ));
        // The oversized block ending in a lone CR at EOF.
        let cr_big = format!("data: {}\r\r", "x".repeat(100));
        assert_eq!(decode_chunks(&[cr_big.as_bytes()], 64), vec![too_large]);
    }

    #[test]
    fn size_limit_incomplete_block() {
        let limit = 64;
        let too_large = Out::Err(SseError::EventTooLarge { limit }.to_string());
        // An unterminated block that keeps growing: error as soon as the
        // buffered part exceeds the limit, and nothing more is buffered.
        let mut dec = SseDecoder::new(limit);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(b"data: ");
        let mut errors = 0;
        for _ in 0..1000 {
            buf.extend_from_slice(&[b'x'; 10]);
            match dec.decode(&mut buf) {
                Ok(None) => {}
                Ok(Some(e)) => panic!("unexpected event {e:?}"),
                Err(SseError::EventTooLarge { limit: l }) => {
                    assert_eq!(l, limit);
                    errors += 1;
                }
                Err(e) => panic!("unexpected error {e}"),
            }
            assert!(buf.len() <= limit);
        }
        assert_eq!(errors, 1);
        // Many short lines without a blank line: same.
        let mut dec2 = SseDecoder::new(limit);
        let mut buf2 = BytesMut::new();
        let mut errors2 = 0;
        for _ in 0..1000 {
            buf2.extend_from_slice(b"data: y\n: c\n");
            if dec2.decode(&mut buf2).is_err() {
                errors2 += 1;
            }
            assert!(buf2.len() <= limit);
        }
        assert_eq!(errors2, 1);
        // The rest of the oversized block is skipped; decoding resumes after it.
        buf.extend_from_slice(b"\ndata: more\n\r\ndata: next\n\n");
        assert_eq!(
            dec.decode(&mut buf).unwrap(),
            Some(data_ev("next", b"data: next\n\n"))
        );
        // The oversized block is incomplete at EOF too.
        let input = format!("data: {}", "x".repeat(100));
        assert_eq!(
            decode_chunks(&[input.as_bytes()], limit),
            vec![too_large.clone()]
        );
        // Skipping a line whose content was dropped: its terminator is not a
        // blank line even when it arrives alone.
        let input = format!("data: {}", "x".repeat(100));
        assert_eq!(
            decode_chunks(
                &[
                    input.as_bytes(),
                    b"\n",
                    b"data: skipped\n\n",
                    b"data: z\n\n"
                ],
                limit
            ),
            vec![too_large, Out::Event(data_ev("z", b"data: z\n\n"))]
        );
    }

    #[test]
    fn decoder_is_incremental() {
        // A long line arriving in small pieces is not rescanned each time.
        let mut dec = SseDecoder::default();
        let mut buf = BytesMut::from(&b"data: "[..]);
        for _ in 0..1000 {
            buf.extend_from_slice(&[b'x'; 100]);
            assert!(dec.decode(&mut buf).unwrap().is_none());
            assert_eq!(dec.search_pos, buf.len());
        }
        buf.extend_from_slice(b"\n\n");
        let got = dec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(got.data.unwrap().len(), 100_000);
    }

    #[test]
    fn many_events_throughput() {
        let mut buf = BytesMut::new();
        for i in 0..100_000u64 {
            encode_event_into(
                &mut buf,
                Some(&i.to_string()),
                None,
                "{\"jsonrpc\":\"2.0\"}",
                None,
            );
        }
        let mut dec = SseDecoder::default();
        let mut n = 0u64;
        while let Some(e) = dec.decode(&mut buf).unwrap() {
            assert_eq!(e.id, Some(n.to_string()));
            n += 1;
        }
        assert_eq!(n, 100_000);
    }

    #[test]
    fn encode() {
        assert_eq!(
            &encode_event(Some("1"), Some("message"), "hello", Some(3000))[..],
            b"id: 1\nevent: message\nretry: 3000\ndata: hello\n\n"
        );
        assert_eq!(&encode_event(None, None, "", None)[..], b"data: \n\n");
        assert_eq!(
            &encode_event(Some("abc"), None, "", None)[..],
            b"id: abc\ndata: \n\n"
        );
        assert_eq!(
            &encode_event(None, None, "a\r\nb\nc\rd\n", Some(0))[..],
            b"retry: 0\ndata: a\ndata: b\ndata: c\ndata: d\ndata: \n\n"
        );
        assert_eq!(&encode_event(None, None, " x", None)[..], b"data:  x\n\n");
        // Line breaks cannot escape from id / event.
        assert_eq!(
            &encode_event(Some("a\nb"), Some("c\r\nd"), "x", None)[..],
            b"id: ab\nevent: cd\ndata: x\n\n"
        );
        assert_eq!(
            &encode_event(None, None, "x", Some(u64::MAX))[..],
            b"retry: 18446744073709551615\ndata: x\n\n"
        );

        let mut buf = BytesMut::from(&b"prefix"[..]);
        encode_event_into(&mut buf, None, Some("e"), "d", None);
        assert_eq!(&buf[..], b"prefixevent: e\ndata: d\n\n");

        assert_eq!(&encode_comment("keep-alive")[..], b": keep-alive\n\n");
        assert_eq!(&encode_comment("")[..], b": \n\n");
        assert_eq!(&encode_comment("a\nb")[..], b": a\n: b\n\n");
        assert!(decode_all(&encode_comment("a\r\nb")).is_empty());
    }

    fn normalise(s: &str) -> String {
        s.replace("\r\n", "\n").replace('\r', "\n")
    }

    fn data_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            prop::collection::vec(
                prop_oneof![
                    "[^\r\n]{0,8}",
                    Just("\n".to_owned()),
                    Just("\r\n".to_owned()),
                    Just("\r".to_owned()),
                ],
                0..8
            )
            .prop_map(|parts| parts.concat()),
        ]
    }

    type EventSpec = (Option<String>, Option<String>, String, Option<u64>);

    fn event_strategy() -> impl Strategy<Value = EventSpec> {
        (
            prop::option::of("[^\0\r\n]*"),
            prop::option::of("[^\r\n]*"),
            data_strategy(),
            prop::option::of(any::<u64>()),
        )
    }

    fn encode_spec((id, event, data, retry): &EventSpec) -> Bytes {
        encode_event(id.as_deref(), event.as_deref(), data, *retry)
    }

    fn expected_event(spec: &EventSpec, raw: Bytes) -> SseEvent {
        SseEvent {
            id: spec.0.clone(),
            event: spec.1.clone(),
            data: Some(normalise(&spec.2)),
            retry: spec.3,
            raw,
        }
    }

    /// Split `input` at the given (sorted, deduplicated) positions.
    fn split_at_indices<'a>(input: &'a [u8], cuts: &[prop::sample::Index]) -> Vec<&'a [u8]> {
        let mut positions: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
        positions.sort_unstable();
        positions.dedup();
        let mut chunks = Vec::new();
        let mut prev = 0;
        for p in positions {
            chunks.push(&input[prev..p]);
            prev = p;
        }
        chunks.push(&input[prev..]);
        chunks
    }

    /// Pieces for arbitrary-input tests: field names, separators, line ends,
    /// NUL, invalid UTF-8, BOM.
    const ALPHABET: &[&[u8]] = &[
        b"data",
        b"id",
        b"event",
        b"retry",
        b":",
        b": ",
        b" ",
        b"x",
        b"12",
        b"\n",
        b"\r",
        b"\r\n",
        b"\0",
        b"\xFF",
        b"\xEF\xBB\xBF",
    ];

    /// Starts of the arbitrary inputs of `prop_arbitrary_bytes`: a BOM, half a BOM, a field.
    const ARBITRARY_PREFIXES: &[&[u8]] = &[b"", b"\xEF\xBB\xBF", b"\xEF\xBB", b"data: x\n"];

    proptest! {
        #[test]
        fn prop_round_trip(spec in event_strategy()) {
            let encoded = encode_spec(&spec);
            let mut buf = BytesMut::new();
            encode_event_into(&mut buf, spec.0.as_deref(), spec.1.as_deref(), &spec.2, spec.3);
            prop_assert_eq!(&buf[..], &encoded[..]);
            let got = events(decode_all(&encoded));
            prop_assert_eq!(got, vec![expected_event(&spec, encoded.clone())]);
        }

        #[test]
        fn prop_stream_in_arbitrary_chunks(
            specs in prop::collection::vec((event_strategy(), prop::option::of("[^\r\n]{0,10}")), 1..8),
            line_ending in 0..3u8,
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let convert = |b: &[u8]| -> Vec<u8> {
                match line_ending {
                    0 => b.to_vec(),
                    1 => b.iter().flat_map(|&c| if c == b'\n' { vec![b'\r', b'\n'] } else { vec![c] }).collect(),
                    _ => b.iter().map(|&c| if c == b'\n' { b'\r' } else { c }).collect(),
                }
            };
            let mut stream = Vec::new();
            let mut expected = Vec::new();
            for (spec, comment) in &specs {
                if let Some(comment) = comment {
                    stream.extend(convert(&encode_comment(comment)));
                }
                let raw = convert(&encode_spec(spec));
                stream.extend_from_slice(&raw);
                expected.push(expected_event(spec, Bytes::from(raw)));
            }
            let chunks = split_at_indices(&stream, &cuts);
            let got = events(decode_chunks(&chunks, DEFAULT_MAX_EVENT_SIZE));
            prop_assert_eq!(got, expected);
        }

        /// On arbitrary input (small alphabet to hit the interesting cases,
        /// small limit to hit the size errors), the outcome does not depend
        /// on how the input is chunked, and the buffer stays bounded.
        #[test]
        fn prop_chunking_invariance(
            parts in prop::collection::vec(prop::sample::select(ALPHABET), 0..60),
            max in 8..64usize,
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let input = parts.concat();
            let whole = decode_chunks(&[&input], max);
            let chunks = split_at_indices(&input, &cuts);
            prop_assert_eq!(&decode_chunks(&chunks, max), &whole);
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            prop_assert_eq!(&decode_chunks(&bytes, max), &whole);
            for o in &whole {
                if let Out::Event(e) = o {
                    prop_assert!(e.raw.len() <= max);
                }
            }
        }

        /// Arbitrary bytes (invalid UTF-8, NULs, stray CRs, a BOM anywhere), in arbitrary
        /// chunks: never a panic or a hang, the buffer never holds more than the limit
        /// (`decode_chunks` checks it after every call), no event is larger than the limit,
        /// and the outcome does not depend on the chunking.
        #[test]
        fn prop_arbitrary_bytes(
            input in prop::collection::vec(
                prop_oneof![
                    4 => any::<u8>(),
                    1 => prop::sample::select(b"\n\r:".as_slice()),
                ],
                0..400,
            ),
            prefix in prop::sample::select(ARBITRARY_PREFIXES),
            max in 1..200usize,
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..16),
        ) {
            let input = [prefix, &input[..]].concat();
            let whole = decode_chunks(&[&input], max);
            let chunks = split_at_indices(&input, &cuts);
            prop_assert_eq!(&decode_chunks(&chunks, max), &whole);
            for o in &whole {
                if let Out::Event(e) = o {
                    prop_assert!(e.raw.len() <= max);
                }
            }
        }
    }
}
