//! The writer thread: owns the tape files, redacts and writes, flushes when caught up.

use super::{Msg, RecordConfig, RecordError, Shared};
use shadowcat_tape::time::format_ms;
use shadowcat_tape::{Header, Redactor, TapeWriter};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc::{self, error::TryRecvError};

type Writer = TapeWriter<BufWriter<File>>;

struct Open {
    writer: Writer,
    /// Recorder time (µs) at which this tape starts.
    start_us: u64,
    failed: bool,
}

enum Target {
    File(Option<Open>),
    Dir {
        dir: PathBuf,
        open: HashMap<Box<str>, Open>,
        ended: HashSet<Box<str>>,
    },
}

pub(crate) struct Sink {
    target: Target,
    header: Header,
    redactor: Redactor,
    wall_ms: i64,
}

/// A tape file readable by its owner only (`0600`); an existing file is truncated and made
/// private too. Tapes hold whatever the traffic held (redaction covers known secrets, not all).
fn create_private(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

/// A tape directory (and any missing parents) created `0700`; an existing one is left as it is.
fn create_private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

fn io(path: &Path, source: std::io::Error) -> RecordError {
    RecordError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Sink {
    pub fn open(
        cfg: &RecordConfig,
        redactor: Redactor,
        wall: SystemTime,
    ) -> Result<Sink, RecordError> {
        let wall_ms = wall
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let mut header = Header::new(&cfg.mode, &redactor.url(&cfg.upstream), format_ms(wall_ms));
        header.shadowcat = env!("CARGO_PKG_VERSION").to_string();
        header.front = Some(cfg.front.clone());
        header.upstream_headers = cfg
            .upstream_headers
            .iter()
            .map(|(k, v)| (k.clone(), redactor.header(k, v).into_owned()))
            .collect();
        let as_dir = cfg.path.is_dir() || cfg.path.to_string_lossy().ends_with('/');
        let target = if as_dir {
            create_private_dir(&cfg.path).map_err(|e| io(&cfg.path, e))?;
            Target::Dir {
                dir: cfg.path.clone(),
                open: HashMap::new(),
                ended: HashSet::new(),
            }
        } else {
            let file = create_private(&cfg.path).map_err(|e| io(&cfg.path, e))?;
            let writer = TapeWriter::new(BufWriter::new(file), &header, redactor.clone())
                .map_err(|e| io(&cfg.path, e))?;
            Target::File(Some(Open {
                writer,
                start_us: 0,
                failed: false,
            }))
        };
        Ok(Sink {
            target,
            header,
            redactor,
            wall_ms,
        })
    }

    fn tape_for(&mut self, session: &str, t_us: u64) -> Option<&mut Open> {
        match &mut self.target {
            Target::File(open) => open.as_mut(),
            Target::Dir { dir, open, ended } => {
                if ended.contains(session) {
                    return None;
                }
                if !open.contains_key(session) {
                    let started = self.wall_ms + (t_us / 1000) as i64;
                    let stamp: String = format_ms(started)
                        .chars()
                        .filter(|c| c.is_ascii_digit())
                        .take(14)
                        .collect();
                    let name = format!("{}-{}-{session}.jsonl", &stamp[..8], &stamp[8..]);
                    let path = dir.join(name);
                    let mut header = self.header.clone();
                    header.created = format_ms(started);
                    header.session = Some(session.to_string());
                    let made = create_private(&path).and_then(|f| {
                        TapeWriter::new(BufWriter::new(f), &header, self.redactor.clone())
                    });
                    match made {
                        Ok(writer) => {
                            open.insert(
                                session.into(),
                                Open {
                                    writer,
                                    start_us: t_us,
                                    failed: false,
                                },
                            );
                        }
                        Err(e) => {
                            tracing::error!(path = %path.display(), error = %e, "cannot create a tape; this session is not recorded");
                            ended.insert(session.into());
                            return None;
                        }
                    }
                }
                open.get_mut(session)
            }
        }
    }

    fn frame(&mut self, msg: Msg, shared: &Shared) {
        let Msg::Frame {
            t_us,
            dir,
            session,
            raw,
            transport,
            note,
        } = msg
        else {
            return;
        };
        let Some(tape) = self.tape_for(&session, t_us) else {
            return;
        };
        let t = t_us.saturating_sub(tape.start_us);
        if let Err(e) = tape.writer.frame(
            t,
            dir,
            &session,
            transport.map(|t| *t).unwrap_or_default(),
            note,
            &raw,
        ) {
            if !tape.failed {
                tracing::error!(error = %e, "writing the tape failed; frames are being lost");
                tape.failed = true;
            }
            let mut m = crate::sync::lock(&shared.dropped);
            *m.entry(session).or_default() += 1;
        }
    }

    fn end_session(&mut self, session: &str, t_us: u64, shared: &Shared) {
        if let Target::Dir { open, ended, .. } = &mut self.target
            && let Some(tape) = open.remove(session)
        {
            ended.insert(session.into());
            finish(tape, t_us, shared.take_dropped(Some(session)));
        }
    }

    fn flush(&mut self) {
        match &mut self.target {
            Target::File(Some(o)) => {
                let _ = o.writer.flush();
            }
            Target::File(None) => {}
            Target::Dir { open, .. } => {
                for o in open.values_mut() {
                    let _ = o.writer.flush();
                }
            }
        }
    }

    fn finish_all(&mut self, t_us: u64, shared: &Shared) {
        match &mut self.target {
            Target::File(o) => {
                if let Some(tape) = o.take() {
                    finish(tape, t_us, shared.take_dropped(None));
                }
            }
            Target::Dir { open, .. } => {
                for (session, tape) in open.drain() {
                    let dropped = shared.take_dropped(Some(&session));
                    finish(tape, t_us, dropped);
                }
            }
        }
    }
}

fn finish(tape: Open, t_us: u64, dropped: u64) {
    let t = t_us.saturating_sub(tape.start_us);
    if let Err(e) = tape.writer.finish(t, dropped) {
        tracing::error!(error = %e, "could not close a tape");
    }
}

/// While traffic flows, the writer naps this long when it has caught up instead of parking in
/// `recv`: a parked receiver is woken by every message, which costs the relay a system call per
/// frame. Frames reach the disk at most this late.
const NAP: Duration = Duration::from_millis(2);
/// Naps in a row (nothing arrived) before the writer parks until the next message.
const NAPS_BEFORE_PARKING: u32 = 50;

/// The writer loop: write what comes, flush when the queue is empty, stop on `Finish`.
pub(crate) fn run(mut rx: mpsc::Receiver<Msg>, mut sink: Sink, shared: Arc<Shared>) {
    let mut last_t = 0;
    let mut naps = 0;
    loop {
        let msg = match rx.try_recv() {
            Ok(m) => m,
            Err(TryRecvError::Empty) => {
                if naps == 0 {
                    sink.flush();
                }
                if naps < NAPS_BEFORE_PARKING {
                    naps += 1;
                    std::thread::sleep(NAP);
                    continue;
                }
                match rx.blocking_recv() {
                    Some(m) => m,
                    None => break,
                }
            }
            Err(TryRecvError::Disconnected) => break,
        };
        naps = 0;
        match msg {
            m @ Msg::Frame { .. } => {
                if let Msg::Frame { t_us, .. } = &m {
                    last_t = last_t.max(*t_us);
                }
                sink.frame(m, &shared);
            }
            Msg::SessionEnd { session, t_us } => {
                last_t = last_t.max(t_us);
                sink.end_session(&session, t_us, &shared);
            }
            Msg::Finish => break,
        }
    }
    // Frames still queued behind Finish are written before the end lines.
    rx.close();
    while let Ok(m) = rx.try_recv() {
        if let Msg::Frame { t_us, .. } = &m {
            last_t = last_t.max(*t_us);
        }
        sink.frame(m, &shared);
    }
    sink.finish_all(last_t, &shared);
}
