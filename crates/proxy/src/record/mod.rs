//! Recording traffic to tapes (`--record PATH`).
//!
//! The recorder is a pipeline hook: it timestamps each frame and hands it (the raw bytes, a
//! reference-counted clone) to a bounded channel. A background thread owns the files: it redacts,
//! serialises and writes, and flushes whenever it has caught up; while traffic flows it naps
//! 2 ms between batches rather than being woken (a system call on the relay's side) per frame.
//! The relay never waits for the disk unless asked to: when the channel is full the frame is
//! dropped from the tape, counted (in the tape's end line) and warned about (`OnFull::Drop`, the
//! default), or the relay waits for room (`OnFull::Block`, backpressure).
//!
//! `PATH` is a file (every session in one tape) or a directory (one tape per session, named
//! `YYYYMMDD-HHMMSS-SESSION.jsonl`); a path ending in `/` is created as a directory.

mod hook;
mod sink;

pub use hook::{RECORDED_HEADERS, RecordHook};

use bytes::Bytes;
use shadowcat_tape::{Dir, RedactConfig, Redactor, Transport};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;

/// What the recorder does when the disk falls behind and its buffer is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFull {
    /// Leave the frame out of the tape, count it and warn (the relay never waits).
    #[default]
    Drop,
    /// Hold the frame (and the frames behind it) until there is room: the tape is complete,
    /// traffic slows down to the disk's pace.
    Block,
}

/// Settings of a recorder.
#[derive(Debug, Clone)]
pub struct RecordConfig {
    /// A tape file, or a directory for one tape per session.
    pub path: PathBuf,
    /// Mode named in the header (`forward-stdio`, `forward-http`, `replay`).
    pub mode: String,
    /// Front transport named in the header (`stdio`, `http`).
    pub front: String,
    /// Upstream description for the header (redacted before writing).
    pub upstream: String,
    /// Headers configured for the upstream (secret values redacted before writing).
    pub upstream_headers: Vec<(String, String)>,
    /// Extra redaction (pointers, patterns).
    pub redact: RedactConfig,
    /// Frames buffered between the relay and the writer thread.
    pub capacity: usize,
    /// What to do when that buffer is full.
    pub on_full: OnFull,
}

/// Why recording cannot start.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The tape file or directory cannot be created.
    #[error("cannot record to {}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A redaction pattern or pointer is invalid.
    #[error(transparent)]
    Redact(#[from] shadowcat_tape::TapeError),
}

/// What travels from the hook to the writer thread.
pub(crate) enum Msg {
    Frame {
        t_us: u64,
        dir: Dir,
        session: Box<str>,
        raw: Bytes,
        /// HTTP details, when the front gave them (boxed: stdio frames carry none).
        transport: Option<Box<Transport>>,
        note: Option<&'static str>,
    },
    SessionEnd {
        session: Box<str>,
        t_us: u64,
    },
    Finish,
}

/// Counters shared by the hook and the writer.
#[derive(Default)]
pub(crate) struct Shared {
    pub dropped: std::sync::Mutex<std::collections::HashMap<Box<str>, u64>>,
    pub dropped_total: std::sync::atomic::AtomicU64,
}

impl Shared {
    pub fn take_dropped(&self, session: Option<&str>) -> u64 {
        let mut m = crate::sync::lock(&self.dropped);
        match session {
            Some(s) => m.remove(s).unwrap_or(0),
            None => m.drain().map(|(_, n)| n).sum(),
        }
    }
}

/// Handle to stop a recorder cleanly (end lines written, files flushed).
pub struct RecordHandle {
    tx: mpsc::Sender<Msg>,
    thread: Option<std::thread::JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl RecordHandle {
    /// Frames left out of the tapes so far because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.shared
            .dropped_total
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Write the end lines, flush and close every tape. Waits up to `deadline` for the writer.
    pub async fn finish(mut self, deadline: Duration) {
        let _ = tokio::time::timeout(deadline, self.tx.send(Msg::Finish)).await;
        if let Some(t) = self.thread.take() {
            let join = tokio::task::spawn_blocking(move || t.join());
            if tokio::time::timeout(deadline, join).await.is_err() {
                tracing::warn!(
                    "the tape writer did not finish in time; the tape may lack its end line"
                );
            }
        }
    }
}

/// Start recording: returns the hook to put in the pipeline and the handle to finish with.
pub fn start(cfg: RecordConfig) -> Result<(Arc<RecordHook>, RecordHandle), RecordError> {
    let redactor = Redactor::new(&cfg.redact)?;
    let (tx, rx) = mpsc::channel(cfg.capacity.max(1));
    let shared = Arc::new(Shared::default());
    let epoch = Instant::now();
    let wall = SystemTime::now();
    let sink = sink::Sink::open(&cfg, redactor, wall)?;
    let writer_shared = shared.clone();
    let thread = std::thread::Builder::new()
        .name("tape-writer".into())
        .spawn(move || sink::run(rx, sink, writer_shared))
        .map_err(|e| RecordError::Io {
            path: cfg.path.clone(),
            source: e,
        })?;
    tracing::info!(path = %cfg.path.display(), on_full = ?cfg.on_full, "recording traffic");
    let hook = Arc::new(RecordHook::new(
        tx.clone(),
        epoch,
        cfg.on_full,
        shared.clone(),
    ));
    Ok((
        hook,
        RecordHandle {
            tx,
            thread: Some(thread),
            shared,
        },
    ))
}

#[cfg(test)]
mod tests;
