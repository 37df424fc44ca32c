//! Reading and validating tapes.

use crate::TapeError;
use crate::record::{Dir, End, FORMAT, FrameRecord, Header, Line, VERSION};
use bytes::Bytes;
use shadowcat_proto::{Frame, FrameKind, RequestId};
use std::collections::{HashMap, HashSet};
use std::io::BufRead;
use std::path::Path;

/// One frame of a tape, with the line it was on and its parsed envelope.
#[derive(Debug, Clone)]
pub struct TapeFrame {
    /// 1-based line number in the tape file.
    pub line: usize,
    /// The record as written.
    pub record: FrameRecord,
    /// The message, parsed (kind, id, method, target).
    pub frame: Frame,
}

impl TapeFrame {
    /// The message as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.record.message.get()).unwrap_or(serde_json::Value::Null)
    }
}

/// A whole tape in memory.
#[derive(Debug, Clone)]
pub struct Tape {
    /// The header line.
    pub header: Header,
    /// Every frame, in file order.
    pub frames: Vec<TapeFrame>,
    /// The end line, if the recording was closed properly.
    pub end: Option<End>,
}

impl Tape {
    /// Read a tape file; the first problem is an error with its line number.
    pub fn open(path: &Path) -> Result<Tape, TapeError> {
        let file = std::fs::File::open(path).map_err(|e| TapeError::io(path, e))?;
        Tape::read(std::io::BufReader::new(file)).map_err(|e| e.in_file(path))
    }

    /// Read a tape from any buffered reader.
    pub fn read<R: BufRead>(r: R) -> Result<Tape, TapeError> {
        let mut header = None;
        let mut frames = Vec::new();
        let mut end = None;
        for (i, line) in r.lines().enumerate() {
            let n = i + 1;
            let text = line.map_err(|e| TapeError::line(n, format!("cannot read: {e}")))?;
            if text.trim().is_empty() {
                continue;
            }
            match parse_line(n, &text, header.is_some(), end.is_some())? {
                Line::Header(h) => header = Some(h),
                Line::Frame(record) => {
                    let frame = frame_of(n, &record)?;
                    frames.push(TapeFrame {
                        line: n,
                        record,
                        frame,
                    });
                }
                Line::End(e) => end = Some(e),
            }
        }
        let header = header.ok_or_else(|| TapeError::line(1, "the tape is empty (no header)"))?;
        Ok(Tape {
            header,
            frames,
            end,
        })
    }

    /// Session ids in order of first appearance.
    pub fn sessions(&self) -> Vec<&str> {
        let mut seen = HashSet::new();
        self.frames
            .iter()
            .map(|f| f.record.session.as_str())
            .filter(|s| seen.insert(*s))
            .collect()
    }

    /// Time of the last frame or the end line, in microseconds.
    pub fn duration_us(&self) -> u64 {
        let last = self.frames.iter().map(|f| f.record.t_us).max().unwrap_or(0);
        self.end.as_ref().map_or(last, |e| e.t_us.max(last))
    }

    /// The negotiated protocol version: the header's, the end line's, or the one in the first
    /// `initialize` result.
    pub fn protocol(&self) -> Option<String> {
        self.header
            .protocol
            .clone()
            .or_else(|| self.end.as_ref().and_then(|e| e.protocol.clone()))
            .or_else(|| {
                self.frames
                    .iter()
                    .filter(|f| f.record.dir == Dir::ServerToClient)
                    .find_map(|f| crate::writer::sniff_protocol(f.record.message.get()))
            })
    }
}

fn parse_line(n: usize, text: &str, have_header: bool, have_end: bool) -> Result<Line, TapeError> {
    let line = Line::parse(text).map_err(|m| TapeError::line(n, m))?;
    match (&line, have_header) {
        (Line::Header(_), true) => return Err(TapeError::line(n, "a second header")),
        (Line::Header(h), false) => {
            if h.format != FORMAT {
                return Err(TapeError::line(
                    n,
                    format!("format is `{}`, expected `{FORMAT}`", h.format),
                ));
            }
            if h.version != VERSION {
                return Err(TapeError::line(
                    n,
                    format!(
                        "format version {} is not supported (this Shadowcat reads {VERSION})",
                        h.version
                    ),
                ));
            }
        }
        (_, false) => return Err(TapeError::line(n, "the first line must be the header")),
        _ => {}
    }
    if have_end {
        return Err(TapeError::line(n, "a line after the end line"));
    }
    Ok(line)
}

fn frame_of(n: usize, record: &FrameRecord) -> Result<Frame, TapeError> {
    Frame::parse_single(Bytes::copy_from_slice(record.message.get().as_bytes()))
        .map_err(|e| TapeError::line(n, format!("message is not a JSON-RPC message: {e}")))
}

/// How bad a problem [`validate`] found is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The tape is not valid.
    Error,
    /// Valid, but probably not what was meant (an unanswered request, a truncated tape).
    Warning,
}

/// One problem found by [`validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line number (0 for the tape as a whole).
    pub line: usize,
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong.
    pub message: String,
}

/// What [`validate`] found.
#[derive(Debug, Clone, Default)]
pub struct Validation {
    /// Every problem, in line order.
    pub problems: Vec<Problem>,
    /// Frames read.
    pub frames: usize,
}

impl Validation {
    /// True when there is no error (warnings allowed).
    pub fn is_valid(&self) -> bool {
        self.problems.iter().all(|p| p.severity != Severity::Error)
    }
}

/// Check a whole tape, reporting every problem with its line number instead of stopping at the
/// first.
pub fn validate<R: BufRead>(r: R) -> Validation {
    let mut v = Validation::default();
    let mut header = false;
    let mut end = false;
    let mut open: HashMap<(String, Dir, RequestId), usize> = HashMap::new();
    let err = |v: &mut Validation, line, message: String, severity| {
        v.problems.push(Problem {
            line,
            severity,
            message,
        })
    };
    for (i, line) in r.lines().enumerate() {
        let n = i + 1;
        let text = match line {
            Ok(t) => t,
            Err(e) => {
                err(&mut v, n, format!("cannot read: {e}"), Severity::Error);
                break;
            }
        };
        if text.trim().is_empty() {
            continue;
        }
        let line = match parse_line(n, &text, header, end) {
            Ok(l) => l,
            Err(e) => {
                err(&mut v, n, e.message(), Severity::Error);
                // Keep going as if the line had the role it claims, to find later problems.
                header |= text.contains("\"header\"");
                continue;
            }
        };
        match line {
            Line::Header(_) => header = true,
            Line::End(_) => end = true,
            Line::Frame(rec) => {
                v.frames += 1;
                let frame = match frame_of(n, &rec) {
                    Ok(f) => f,
                    Err(e) => {
                        err(&mut v, n, e.message(), Severity::Error);
                        continue;
                    }
                };
                match (frame.kind(), frame.id()) {
                    (FrameKind::Request, Some(id)) => {
                        let key = (rec.session.clone(), rec.dir, id.clone());
                        if let Some(prev) = open.insert(key, n) {
                            err(
                                &mut v,
                                n,
                                format!(
                                    "request id {id} reuses the id of the unanswered request on line {prev}"
                                ),
                                Severity::Warning,
                            );
                        }
                    }
                    (k, Some(id)) if k.is_reply() => {
                        let key = (rec.session.clone(), rec.dir.reverse(), id.clone());
                        if open.remove(&key).is_none() {
                            err(
                                &mut v,
                                n,
                                format!(
                                    "reply to id {id}, but no request with that id came before it"
                                ),
                                Severity::Warning,
                            );
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    if !header {
        err(&mut v, 1, "the tape has no header".into(), Severity::Error);
    }
    let mut unanswered: Vec<usize> = open.into_values().collect();
    unanswered.sort_unstable();
    for n in unanswered {
        err(
            &mut v,
            n,
            "request never answered".into(),
            Severity::Warning,
        );
    }
    if header && !end {
        err(
            &mut v,
            0,
            "no end line: the recording was not closed (the tape may be truncated)".into(),
            Severity::Warning,
        );
    }
    v.problems.sort_by_key(|p| p.line);
    v
}
