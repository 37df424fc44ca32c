//! Newline-delimited framing for the stdio transport, with a size limit that never buffers more
//! than the limit: an oversized line is reported as an item (not a stream error) and skipped, so
//! the stream continues with the next line.

use bytes::{Bytes, BytesMut};
use tokio_util::codec::Decoder;

/// Default limit for one stdio line: 10 MiB.
pub const DEFAULT_MAX_LINE: usize = 10 * 1024 * 1024;

/// One decoded line, or the notice that a line was too long and was skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A complete line without its terminator (`\n` or `\r\n`).
    Line(Bytes),
    /// A line longer than the limit was discarded; `seen` is how many bytes were dropped.
    TooLong {
        /// Bytes dropped (at least the limit).
        seen: usize,
    },
}

/// Decoder for newline-delimited messages. Blank lines are skipped.
#[derive(Debug)]
pub struct LineCodec {
    max: usize,
    scanned: usize,
    discarding: Option<usize>,
}

impl LineCodec {
    /// A codec accepting lines up to `max` bytes.
    pub fn new(max: usize) -> Self {
        LineCodec {
            max,
            scanned: 0,
            discarding: None,
        }
    }
}

impl Default for LineCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_LINE)
    }
}

fn trim(mut line: BytesMut) -> Option<Bytes> {
    if line.last() == Some(&b'\r') {
        line.truncate(line.len() - 1);
    }
    if line.iter().all(|b| b.is_ascii_whitespace()) {
        None
    } else {
        Some(line.freeze())
    }
}

impl Decoder for LineCodec {
    type Item = Line;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Line>, std::io::Error> {
        loop {
            if let Some(dropped) = self.discarding {
                match buf.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        let _ = buf.split_to(i + 1);
                        self.discarding = None;
                        self.scanned = 0;
                        return Ok(Some(Line::TooLong { seen: dropped + i }));
                    }
                    None => {
                        self.discarding = Some(dropped + buf.len());
                        buf.clear();
                        return Ok(None);
                    }
                }
            }
            let limit = buf.len().min(self.max + 1);
            match buf[self.scanned..limit].iter().position(|&b| b == b'\n') {
                Some(rel) => {
                    let i = self.scanned + rel;
                    let mut line = buf.split_to(i + 1);
                    line.truncate(i);
                    self.scanned = 0;
                    match trim(line) {
                        Some(l) => return Ok(Some(Line::Line(l))),
                        None => continue,
                    }
                }
                None if buf.len() > self.max => {
                    self.scanned = 0;
                    // Too long: drop through the end of this line only, never the lines after it.
                    match buf[limit..].iter().position(|&b| b == b'\n') {
                        Some(rel) => {
                            let end = limit + rel;
                            let _ = buf.split_to(end + 1);
                            return Ok(Some(Line::TooLong { seen: end }));
                        }
                        None => {
                            self.discarding = Some(buf.len());
                            buf.clear();
                        }
                    }
                }
                None => {
                    self.scanned = buf.len();
                    return Ok(None);
                }
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Line>, std::io::Error> {
        if let Some(item) = self.decode(buf)? {
            return Ok(Some(item));
        }
        if let Some(dropped) = self.discarding.take() {
            return Ok(Some(Line::TooLong { seen: dropped }));
        }
        self.scanned = 0;
        if buf.is_empty() {
            return Ok(None);
        }
        let rest = buf.split();
        Ok(trim(rest).map(Line::Line))
    }
}

/// Make a JSON text safe for one stdio line. In valid JSON, CR and LF can only appear as
/// insignificant whitespace (inside strings they must be escaped), so replacing them with spaces
/// keeps the message identical in meaning. Returns the input unchanged (no copy) when it has none.
pub fn single_line(raw: &Bytes) -> Bytes {
    if !raw.iter().any(|&b| b == b'\n' || b == b'\r') {
        return raw.clone();
    }
    let v: Vec<u8> = raw
        .iter()
        .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b })
        .collect();
    Bytes::from(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(codec: &mut LineCodec, chunks: &[&[u8]]) -> Vec<Line> {
        let mut buf = BytesMut::new();
        let mut out = vec![];
        for c in chunks {
            buf.extend_from_slice(c);
            while let Some(l) = codec.decode(&mut buf).unwrap() {
                out.push(l);
            }
        }
        while let Some(l) = codec.decode_eof(&mut buf).unwrap() {
            out.push(l);
        }
        out
    }

    fn line(s: &str) -> Line {
        Line::Line(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn splits_lines_across_chunks_and_crlf() {
        let mut c = LineCodec::new(100);
        let got = all(
            &mut c,
            &[b"{\"a\"", b":1}\r\n\n  \n{\"b\":2}\n{\"c\"", b":3}"],
        );
        assert_eq!(
            got,
            vec![line("{\"a\":1}"), line("{\"b\":2}"), line("{\"c\":3}")]
        );
    }

    #[test]
    fn oversized_line_is_reported_and_skipped() {
        let mut c = LineCodec::new(8);
        let got = all(&mut c, &[b"0123456789abc", b"def\nok\n"]);
        assert_eq!(got, vec![Line::TooLong { seen: 16 }, line("ok")]);
        // the lines after an oversized one, already buffered in the same chunk, survive
        let mut c = LineCodec::new(8);
        let got = all(&mut c, &[b"0123456789abcdef\nok\nfine\n"]);
        assert_eq!(
            got,
            vec![Line::TooLong { seen: 16 }, line("ok"), line("fine")]
        );
        // exactly at the limit is fine
        let mut c = LineCodec::new(8);
        assert_eq!(all(&mut c, &[b"01234567\n"]), vec![line("01234567")]);
        // an oversized unterminated tail at EOF is reported too
        let mut c = LineCodec::new(4);
        assert_eq!(
            all(&mut c, &[b"ab\n0123456"]),
            vec![line("ab"), Line::TooLong { seen: 7 }]
        );
    }

    #[test]
    fn single_line_replaces_only_newlines() {
        let b = Bytes::from_static(b"{\n \"a\": \"x\\ny\"\r\n}");
        assert_eq!(&single_line(&b)[..], b"{  \"a\": \"x\\ny\"  }");
        let plain = Bytes::from_static(b"{}");
        assert_eq!(single_line(&plain).as_ptr(), plain.as_ptr());
    }
}
