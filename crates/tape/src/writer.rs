//! Writing a tape: header, frames, end line, one JSON object per line.

use crate::record::{Dir, End, FrameRecord, Header, Line, Transport};
use crate::redact::Redactor;
use serde_json::value::RawValue;
use std::io::{self, Write};

/// Writes one tape to `W` (usually a buffered file). Redaction happens here, before the bytes
/// reach `W`.
pub struct TapeWriter<W: Write> {
    out: W,
    redactor: Redactor,
    frames: u64,
    last_t_us: u64,
    protocol: Option<String>,
}

impl<W: Write> TapeWriter<W> {
    /// Start a tape: writes the header line.
    pub fn new(mut out: W, header: &Header, redactor: Redactor) -> io::Result<Self> {
        writeln!(out, "{}", Line::Header(header.clone()).to_json())?;
        Ok(TapeWriter {
            out,
            redactor,
            frames: 0,
            last_t_us: 0,
            protocol: header.protocol.clone(),
        })
    }

    /// Append one frame. `raw` is the message as it travelled; secrets are redacted (in the
    /// message, in the transport's header values and URL) and line breaks (only possible as
    /// insignificant whitespace in JSON) become spaces.
    pub fn frame(
        &mut self,
        t_us: u64,
        dir: Dir,
        session: &str,
        mut transport: Transport,
        note: Option<&str>,
        raw: &[u8],
    ) -> io::Result<()> {
        if let Some(url) = transport.url.as_mut() {
            *url = self.redactor.url(url);
        }
        for (name, value) in transport.headers.iter_mut() {
            let clean = self.redactor.header(name, value);
            if clean != value.as_str() {
                *value = clean.into_owned();
            }
        }
        let redacted = self.redactor.message(raw);
        let text = String::from_utf8_lossy(&redacted);
        let text = if text.contains(['\n', '\r']) {
            text.replace(['\n', '\r'], " ")
        } else {
            text.into_owned()
        };
        let message = RawValue::from_string(text)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if dir == Dir::ServerToClient && self.protocol.is_none() {
            self.protocol = sniff_protocol(message.get());
        }
        let rec = FrameRecord {
            t_us,
            dir,
            session: session.to_string(),
            transport,
            note: note.map(str::to_string),
            message,
        };
        writeln!(self.out, "{}", Line::Frame(rec).to_json())?;
        self.frames += 1;
        self.last_t_us = self.last_t_us.max(t_us);
        Ok(())
    }

    /// Frames written so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Flush the underlying writer.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Write the end line and flush; returns the writer.
    pub fn finish(mut self, t_us: u64, dropped: u64) -> io::Result<W> {
        let end = End {
            t_us: t_us.max(self.last_t_us),
            frames: self.frames,
            dropped,
            protocol: self.protocol.take(),
        };
        writeln!(self.out, "{}", Line::End(end).to_json())?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// The protocol version of an `initialize` result, if this message is one.
pub fn sniff_protocol(message: &str) -> Option<String> {
    if !message.contains("\"protocolVersion\"") {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(message).ok()?;
    v.pointer("/result/protocolVersion")?
        .as_str()
        .map(str::to_string)
}
