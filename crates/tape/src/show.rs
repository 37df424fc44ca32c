//! A tape as a readable timeline: one line per message, time since the start, direction, kind,
//! id, method (replies name the method they answer and the latency), and a summary of the
//! payload. Colour is optional (the CLI turns it on for terminals).

use crate::reader::Tape;
use crate::record::{Dir, Transport};
use shadowcat_proto::{FrameKind, RequestId};
use std::collections::HashMap;
use std::fmt::Write;

/// How to render.
#[derive(Debug, Clone)]
pub struct ShowOptions {
    /// ANSI colours.
    pub color: bool,
    /// Print each whole message (pretty JSON) instead of a one-line summary.
    pub full: bool,
    /// Width the one-line summaries are cut to.
    pub width: usize,
    /// Only this session (a prefix of its id is enough).
    pub session: Option<String>,
}

impl Default for ShowOptions {
    fn default() -> Self {
        ShowOptions {
            color: false,
            full: false,
            width: 120,
            session: None,
        }
    }
}

struct Paint(bool);

impl Paint {
    fn wrap(&self, code: &str, s: &str) -> String {
        if self.0 {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
}

/// `1.234s`
pub fn seconds(us: u64) -> String {
    format!("{}.{:03}s", us / 1_000_000, us / 1000 % 1000)
}

/// The timeline of a tape.
pub fn render(tape: &Tape, opts: &ShowOptions) -> String {
    let p = Paint(opts.color);
    let mut out = String::new();
    let h = &tape.header;
    let sessions = tape.sessions();
    let _ = writeln!(
        out,
        "{} {}  upstream {}  created {}  protocol {}  {} session(s), {} frame(s), {}",
        p.wrap("1", "tape"),
        h.mode,
        h.upstream,
        h.created,
        tape.protocol().unwrap_or_else(|| "?".into()),
        sessions.len(),
        tape.frames.len(),
        seconds(tape.duration_us()),
    );
    if let Some(e) = &tape.end
        && e.dropped > 0
    {
        let _ = writeln!(
            out,
            "{}",
            p.wrap(
                "33",
                &format!(
                    "warning: {} frame(s) were dropped while recording (disk slower than traffic)",
                    e.dropped
                )
            )
        );
    }
    if tape.end.is_none() {
        let _ = writeln!(
            out,
            "{}",
            p.wrap("33", "warning: no end line (the recording was not closed)")
        );
    }
    let mut asked: HashMap<(&str, Dir, RequestId), (String, u64)> = HashMap::new();
    let mut current: Option<&str> = None;
    for f in &tape.frames {
        let r = &f.record;
        if let Some(want) = &opts.session
            && !r.session.starts_with(want.as_str())
        {
            continue;
        }
        if sessions.len() > 1 && current != Some(r.session.as_str()) {
            current = Some(r.session.as_str());
            let _ = writeln!(out, "{}", p.wrap("1", &format!("── session {}", r.session)));
        }
        let (arrow, dir_colour) = match r.dir {
            Dir::ClientToServer => ("c2s →", "36"),
            Dir::ServerToClient => ("s2c ←", "35"),
        };
        let frame = &f.frame;
        let kind = match frame.kind() {
            FrameKind::Request => "request",
            FrameKind::Notification => "notify",
            FrameKind::Response => "response",
            FrameKind::Error => "error",
        };
        let id = frame.id().map(|i| format!("#{i}")).unwrap_or_default();
        let mut what = frame.method().unwrap_or("").to_string();
        if let Some(t) = frame.target() {
            what = format!("{what} {t}");
        }
        if let Some(id) = frame.id() {
            if frame.kind() == FrameKind::Request {
                asked.insert((&r.session, r.dir, id.clone()), (what.clone(), r.t_us));
            } else if let Some((m, t0)) = asked.remove(&(&r.session, r.dir.reverse(), id.clone())) {
                what = format!("{m} ({:.1} ms)", r.t_us.saturating_sub(t0) as f64 / 1000.0);
            }
        }
        let kind_col = if frame.kind() == FrameKind::Error {
            p.wrap("31", &format!("{kind:<8}"))
        } else {
            format!("{kind:<8}")
        };
        let via = transport_tag(&r.transport)
            .map(|t| format!(" {}", p.wrap("34", &format!("[{t}]"))))
            .unwrap_or_default();
        let note = r
            .note
            .as_ref()
            .map(|n| format!(" {}", p.wrap("33", &format!("[{n}]"))))
            .unwrap_or_default();
        let head = format!(
            "{:>10}  {}  {} {:>6}  {}{}{}",
            format!("+{}", seconds(r.t_us)),
            p.wrap(dir_colour, arrow),
            kind_col,
            id,
            p.wrap("1", &what),
            via,
            note
        );
        let payload = payload(&f.json());
        if opts.full {
            let pretty = serde_json::to_string_pretty(&f.json()).unwrap_or_default();
            let _ = writeln!(out, "{head}");
            if let Some(url) = &r.transport.url {
                let _ = writeln!(out, "            {}", p.wrap("34", &format!("url: {url}")));
            }
            for (name, value) in &r.transport.headers {
                let _ = writeln!(
                    out,
                    "            {}",
                    p.wrap("34", &format!("{name}: {value}"))
                );
            }
            for l in pretty.lines() {
                let _ = writeln!(out, "            {}", p.wrap("2", l));
            }
        } else {
            let room = opts.width.saturating_sub(visible_len(&head) + 2).max(20);
            let _ = writeln!(out, "{head}  {}", p.wrap("2", &cut(&payload, room)));
        }
    }
    out
}

/// How the message travelled, shortly: `POST` for a client message, `POST 200 json`,
/// `POST 200 sse p1.3` or `GET 200 sse g.7` for a server message (method of the request that
/// opened the response, status, body type, SSE event id). `None` without transport details.
pub fn transport_tag(t: &Transport) -> Option<String> {
    if t.is_empty() {
        return None;
    }
    let mut parts: Vec<String> = Vec::new();
    parts.extend(t.method.clone());
    if let Some(status) = t.status {
        parts.push(status.to_string());
        let body = t.headers.get("content-type").map(|ct| {
            if ct.starts_with("text/event-stream") {
                "sse"
            } else if ct.starts_with("application/json") {
                "json"
            } else {
                ct.as_str()
            }
        });
        parts.extend(body.map(str::to_string));
    }
    parts.extend(t.sse_id.clone());
    Some(parts.join(" "))
}

/// The interesting part of a message: params, result or error.
fn payload(v: &serde_json::Value) -> String {
    let part = v
        .get("params")
        .or_else(|| v.get("result"))
        .or_else(|| v.get("error"));
    part.map(|p| p.to_string()).unwrap_or_default()
}

fn cut(s: &str, room: usize) -> String {
    if s.chars().count() <= room {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(room.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

fn visible_len(s: &str) -> usize {
    let mut n = 0;
    let mut esc = false;
    for c in s.chars() {
        match (esc, c) {
            (false, '\x1b') => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, _) => n += 1,
        }
    }
    n
}
