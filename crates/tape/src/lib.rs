//! Shadowcat tapes: recordings of MCP traffic as JSON Lines (see `docs/tape-format.md`).
//!
//! * [`record`]: the line types (header, frame, end).
//! * [`writer`]: writing a tape, redacting secrets before they reach the disk ([`redact`]).
//! * [`reader`]: reading a tape, and validating one with line numbers.
//! * [`show`]: a readable timeline. [`export`]: JSON and HAR. [`diff`]: structural comparison.
//! * [`replay`]: the request index a replaying upstream answers from.
//!
//! No network I/O here; the proxy crate does the recording and the replaying.

pub mod diff;
pub mod export;
pub mod reader;
pub mod record;
pub mod redact;
pub mod replay;
pub mod show;
pub mod time;
pub mod writer;

pub use reader::{Tape, TapeFrame, validate};
pub use record::{Dir, End, FrameRecord, Header, Line, Transport};
pub use redact::{RedactConfig, Redactor};
pub use writer::TapeWriter;

use std::path::{Path, PathBuf};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum TapeError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A line of a tape is wrong.
    #[error("{}line {line}: {message}", file.as_ref().map(|f| format!("{}: ", f.display())).unwrap_or_default())]
    Line {
        /// The tape file, when known.
        file: Option<PathBuf>,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A setting (redaction pattern, replay option) is invalid.
    #[error("{0}")]
    Config(String),
}

impl TapeError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> TapeError {
        TapeError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn line(line: usize, message: impl Into<String>) -> TapeError {
        TapeError::Line {
            file: None,
            line,
            message: message.into(),
        }
    }

    pub(crate) fn in_file(self, path: &Path) -> TapeError {
        match self {
            TapeError::Line { line, message, .. } => TapeError::Line {
                file: Some(path.to_path_buf()),
                line,
                message,
            },
            other => other,
        }
    }

    /// The message without the file and line.
    pub fn message(&self) -> String {
        match self {
            TapeError::Line { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }
}

#[cfg(test)]
mod tests;
