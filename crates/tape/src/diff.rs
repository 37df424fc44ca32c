//! Structural comparison of two tapes.
//!
//! What is ignored: timestamps, session ids, JSON-RPC id values, progress tokens (ids and tokens
//! are replaced by their order of first appearance, so a reply still has to answer the same
//! request), and any JSON pointer the caller names. Sessions are compared in order of first
//! appearance; within a session each direction is aligned on its own (longest common subsequence
//! on kind + method + tool/resource), so one extra message shows as one addition, not as a
//! cascade; replies are paired by the request they answer. Timing — how the directions
//! interleave, which of several concurrent requests finished first — is no difference.

use crate::reader::{Tape, TapeFrame};
use crate::record::Dir;
use serde_json::Value;
use shadowcat_proto::FrameKind;
use std::collections::HashMap;

/// What to ignore besides ids, timestamps and session ids.
#[derive(Debug, Clone, Default)]
pub struct DiffOptions {
    /// JSON pointers into each message to leave out of the comparison.
    pub ignore: Vec<String>,
}

/// One difference.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Only in the first tape.
    Removed {
        /// Session number (1-based, order of appearance).
        session: usize,
        /// Line in the first tape.
        line: usize,
        /// Short description.
        what: String,
    },
    /// Only in the second tape.
    Added {
        /// Session number.
        session: usize,
        /// Line in the second tape.
        line: usize,
        /// Short description.
        what: String,
    },
    /// In both, with different contents.
    Changed {
        /// Session number.
        session: usize,
        /// Line in the first tape.
        left: usize,
        /// Line in the second tape.
        right: usize,
        /// Short description.
        what: String,
        /// `(pointer, left value, right value)` for each differing leaf.
        fields: Vec<(String, Option<Value>, Option<Value>)>,
    },
    /// A session only one tape has.
    Session {
        /// Session number.
        session: usize,
        /// True if the first tape has it.
        in_left: bool,
        /// Messages in it.
        frames: usize,
    },
}

/// Normalised message plus what it is.
struct Norm {
    line: usize,
    dir: Dir,
    /// For a reply with an id: the canonical id of the request it answers.
    answers: Option<String>,
    key: String,
    what: String,
    value: Value,
}

fn describe(
    f: &TapeFrame,
    asked: &HashMap<String, (String, String)>,
    id: &str,
) -> (String, String) {
    let kind = match f.frame.kind() {
        FrameKind::Request => "request",
        FrameKind::Notification => "notification",
        FrameKind::Response => "response",
        FrameKind::Error => "error",
    };
    let (method, target) = match f.frame.method() {
        Some(m) => (
            m.to_string(),
            f.frame
                .target()
                .map(|t| format!(" {t}"))
                .unwrap_or_default(),
        ),
        // A reply: what it answers.
        None => asked.get(id).cloned().unwrap_or_default(),
    };
    let dir = f.record.dir.as_str();
    let what = format!("{dir} {kind} {method}{target}");
    (what.clone(), what)
}

fn normalise(frames: &[&TapeFrame], opts: &DiffOptions) -> Vec<Norm> {
    let mut ids: HashMap<(Dir, String), String> = HashMap::new();
    let mut tokens: HashMap<String, String> = HashMap::new();
    let mut asked: HashMap<String, (String, String)> = HashMap::new();
    let mut out = Vec::new();
    for f in frames {
        let mut v = f.json();
        // The request direction decides the id space: a reply belongs to the other side's request.
        let origin = match f.frame.kind() {
            FrameKind::Request => f.record.dir,
            _ => f.record.dir.reverse(),
        };
        let mut canon = String::new();
        if let Some(id) = v.get("id").filter(|i| !i.is_null()) {
            // Numbered per side, so the client's ids do not shift when the server asks more.
            let n = ids.keys().filter(|(o, _)| *o == origin).count() + 1;
            let side = if origin == Dir::ClientToServer {
                "c"
            } else {
                "s"
            };
            canon = ids
                .entry((origin, id.to_string()))
                .or_insert_with(|| format!("{side}#{n}"))
                .clone();
            v["id"] = Value::String(canon.clone());
        }
        for ptr in ["/params/_meta/progressToken", "/params/progressToken"] {
            if let Some(t) = v.pointer_mut(ptr) {
                let n = tokens.len() + 1;
                let c = tokens
                    .entry(t.to_string())
                    .or_insert_with(|| format!("token#{n}"))
                    .clone();
                *t = Value::String(c);
            }
        }
        if let Some(t) = v.pointer_mut("/params/requestId")
            && let Some(c) = ids.get(&(f.record.dir, t.to_string()))
        {
            *t = Value::String(c.clone());
        }
        for p in &opts.ignore {
            remove(&mut v, p);
        }
        if f.frame.kind() == FrameKind::Request {
            let target = f
                .frame
                .target()
                .map(|t| format!(" {t}"))
                .unwrap_or_default();
            asked.insert(
                canon.clone(),
                (f.frame.method().unwrap_or("").to_string(), target),
            );
        }
        let (key, what) = describe(f, &asked, &canon);
        let answers = (f.frame.kind().is_reply() && !canon.is_empty()).then(|| canon.clone());
        out.push(Norm {
            line: f.line,
            dir: f.record.dir,
            answers,
            key,
            what,
            value: v,
        });
    }
    out
}

fn remove(v: &mut Value, pointer: &str) {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return;
    };
    let last = last.replace("~1", "/").replace("~0", "~");
    match v.pointer_mut(parent) {
        Some(Value::Object(m)) => {
            m.remove(&last);
        }
        Some(Value::Array(a)) => {
            if let Ok(i) = last.parse::<usize>()
                && i < a.len()
            {
                a.remove(i);
            }
        }
        _ => {}
    }
}

/// Leaves that differ, as `(pointer, left, right)`.
pub fn leaf_diff(a: &Value, b: &Value) -> Vec<(String, Option<Value>, Option<Value>)> {
    let mut out = Vec::new();
    walk("", Some(a), Some(b), &mut out);
    out
}

fn walk(
    path: &str,
    a: Option<&Value>,
    b: Option<&Value>,
    out: &mut Vec<(String, Option<Value>, Option<Value>)>,
) {
    match (a, b) {
        (Some(Value::Object(x)), Some(Value::Object(y))) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = format!("{path}/{}", k.replace('~', "~0").replace('/', "~1"));
                walk(&p, x.get(k), y.get(k), out);
            }
        }
        (Some(Value::Array(x)), Some(Value::Array(y))) => {
            for i in 0..x.len().max(y.len()) {
                walk(&format!("{path}/{i}"), x.get(i), y.get(i), out);
            }
        }
        (x, y) if x == y => {}
        (x, y) => out.push((
            if path.is_empty() {
                "/".into()
            } else {
                path.into()
            },
            x.cloned(),
            y.cloned(),
        )),
    }
}

fn by_session(t: &Tape) -> Vec<Vec<&TapeFrame>> {
    let order = t.sessions();
    let mut groups: Vec<Vec<&TapeFrame>> = vec![Vec::new(); order.len()];
    let index: HashMap<&str, usize> = order.iter().enumerate().map(|(i, s)| (*s, i)).collect();
    for f in &t.frames {
        groups[index[f.record.session.as_str()]].push(f);
    }
    groups
}

/// Compare two tapes. Empty = equivalent.
pub fn diff(left: &Tape, right: &Tape, opts: &DiffOptions) -> Vec<Change> {
    let (l, r) = (by_session(left), by_session(right));
    let mut changes = Vec::new();
    for s in 0..l.len().max(r.len()) {
        match (l.get(s), r.get(s)) {
            (Some(a), Some(b)) => diff_session(
                s + 1,
                &normalise(a, opts),
                &normalise(b, opts),
                &mut changes,
            ),
            (Some(a), None) => changes.push(Change::Session {
                session: s + 1,
                in_left: true,
                frames: a.len(),
            }),
            (None, Some(b)) => changes.push(Change::Session {
                session: s + 1,
                in_left: false,
                frames: b.len(),
            }),
            (None, None) => {}
        }
    }
    changes
}

fn diff_session(session: usize, a: &[Norm], b: &[Norm], out: &mut Vec<Change>) {
    let mut changes = Vec::new();
    for dir in [Dir::ClientToServer, Dir::ServerToClient] {
        // Messages that start something keep their order; replies are paired with their
        // counterpart by the request they answer, whatever order concurrent requests finished in.
        let (sa, ra) = split(a, dir);
        let (sb, rb) = split(b, dir);
        align(session, &sa, &sb, &mut changes);
        pair_replies(session, &ra, &rb, &mut changes);
    }
    changes.sort_by_key(|c| match c {
        Change::Removed { line, .. } | Change::Added { line, .. } => *line,
        Change::Changed { left, .. } => *left,
        Change::Session { .. } => 0,
    });
    out.extend(changes);
}

/// One direction's messages: those that start something, and replies with an id.
fn split(v: &[Norm], dir: Dir) -> (Vec<&Norm>, Vec<&Norm>) {
    v.iter()
        .filter(|n| n.dir == dir)
        .partition(|n| n.answers.is_none())
}

fn pair_replies(session: usize, a: &[&Norm], b: &[&Norm], out: &mut Vec<Change>) {
    let mut right: HashMap<&str, &Norm> = b
        .iter()
        .filter_map(|n| n.answers.as_deref().map(|id| (id, *n)))
        .collect();
    for x in a {
        let Some(id) = x.answers.as_deref() else {
            continue;
        };
        match right.remove(id) {
            Some(y) if y.value == x.value => {}
            Some(y) => out.push(Change::Changed {
                session,
                left: x.line,
                right: y.line,
                what: x.what.clone(),
                fields: leaf_diff(&x.value, &y.value),
            }),
            None => out.push(Change::Removed {
                session,
                line: x.line,
                what: x.what.clone(),
            }),
        }
    }
    let mut rest: Vec<&Norm> = right.into_values().collect();
    rest.sort_by_key(|n| n.line);
    for y in rest {
        out.push(Change::Added {
            session,
            line: y.line,
            what: y.what.clone(),
        });
    }
}

fn align(session: usize, a: &[&Norm], b: &[&Norm], out: &mut Vec<Change>) {
    // LCS table on the keys.
    let (n, m) = (a.len(), b.len());
    let mut t = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            t[i][j] = if a[i].key == b[j].key {
                t[i + 1][j + 1] + 1
            } else {
                t[i + 1][j].max(t[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && a[i].key == b[j].key {
            if a[i].value != b[j].value {
                out.push(Change::Changed {
                    session,
                    left: a[i].line,
                    right: b[j].line,
                    what: a[i].what.clone(),
                    fields: leaf_diff(&a[i].value, &b[j].value),
                });
            }
            i += 1;
            j += 1;
        } else if j < m && (i == n || t[i][j + 1] >= t[i + 1][j]) {
            out.push(Change::Added {
                session,
                line: b[j].line,
                what: b[j].what.clone(),
            });
            j += 1;
        } else {
            out.push(Change::Removed {
                session,
                line: a[i].line,
                what: a[i].what.clone(),
            });
            i += 1;
        }
    }
}

fn short(v: &Option<Value>) -> String {
    match v {
        None => "(absent)".into(),
        Some(v) => {
            let s = v.to_string();
            if s.chars().count() > 80 {
                format!("{}…", s.chars().take(79).collect::<String>())
            } else {
                s
            }
        }
    }
}

/// A human-readable report of the changes (empty string when there are none).
pub fn report(changes: &[Change]) -> String {
    let mut out = String::new();
    for c in changes {
        match c {
            Change::Removed {
                session,
                line,
                what,
            } => out.push_str(&format!("- session {session}, line {line}: {what}\n")),
            Change::Added {
                session,
                line,
                what,
            } => out.push_str(&format!("+ session {session}, line {line}: {what}\n")),
            Change::Changed {
                session,
                left,
                right,
                what,
                fields,
            } => {
                out.push_str(&format!(
                    "~ session {session}, lines {left} / {right}: {what}\n"
                ));
                for (p, x, y) in fields {
                    out.push_str(&format!("    {p}: {} → {}\n", short(x), short(y)));
                }
            }
            Change::Session {
                session,
                in_left,
                frames,
            } => out.push_str(&format!(
                "{} session {session} ({frames} messages) only in the {} tape\n",
                if *in_left { "-" } else { "+" },
                if *in_left { "first" } else { "second" }
            )),
        }
    }
    out
}
