//! The index a replaying upstream answers from.
//!
//! Each client message of the tape becomes an [`Entry`]: what to match it on (kind, method,
//! tool/prompt name or resource URI, params without `_meta`) and the [`Step`]s the server took
//! after it, with their times relative to it: the reply, and the server messages attached to it
//! (progress by token; other server messages to the newest open request, else to the newest
//! client message). A server request's answer from the client becomes an
//! [`StepAction::AwaitClient`] so a replay waits for it, as the server did.

use crate::TapeError;
use crate::diff::leaf_diff;
use crate::reader::Tape;
use crate::record::Dir;
use serde_json::Value;
use shadowcat_proto::FrameKind;
use shadowcat_proto::error::{INVALID_PARAMS, METHOD_NOT_FOUND};
use std::collections::HashMap;

/// How closely an incoming request must match a recorded one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strictness {
    /// Method and params (without `_meta`) must be equal.
    #[default]
    Exact,
    /// Method and tool/prompt name or resource URI must be equal; among those, the recorded
    /// request with the closest params answers.
    Name,
    /// Method only; the closest params answer.
    Method,
}

impl std::str::FromStr for Strictness {
    type Err = TapeError;
    fn from_str(s: &str) -> Result<Self, TapeError> {
        match s {
            "exact" => Ok(Strictness::Exact),
            "name" => Ok(Strictness::Name),
            "method" => Ok(Strictness::Method),
            _ => Err(TapeError::Config(format!(
                "strictness `{s}`: use exact, name or method"
            ))),
        }
    }
}

impl std::fmt::Display for Strictness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Strictness::Exact => "exact",
            Strictness::Name => "name",
            Strictness::Method => "method",
        })
    }
}

/// What a recorded server message was.
#[derive(Debug, Clone, PartialEq)]
pub enum Role {
    /// The reply to the entry's request (its id becomes the incoming request's id).
    Reply,
    /// A progress notification for the entry's request (its token becomes the incoming one's).
    Progress,
    /// A server→client request (sampling, elicitation, roots) with its recorded id.
    ServerRequest(Value),
    /// Any other notification.
    Notification,
}

/// One thing the server did.
#[derive(Debug, Clone, PartialEq)]
pub enum StepAction {
    /// Send this message.
    Send {
        /// The recorded message.
        message: Value,
        /// What it is.
        role: Role,
    },
    /// Wait until the client answers the server request recorded with this id.
    AwaitClient(Value),
}

/// A step and when it happened, relative to the client message it follows.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Microseconds after the entry's client message.
    pub at_us: u64,
    /// What to do.
    pub action: StepAction,
}

/// One recorded client message and what followed it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Tape line of the client message.
    pub line: usize,
    /// Request or notification.
    pub kind: FrameKind,
    /// Its method.
    pub method: String,
    /// Tool/prompt name or resource URI.
    pub target: Option<String>,
    /// Params without `_meta` (`null` when absent).
    pub params: Value,
    /// What the server did after it.
    pub steps: Vec<Step>,
}

/// Every recorded client message of a tape, ready for matching.
#[derive(Debug, Clone, Default)]
pub struct Book {
    /// The entries, in tape order.
    pub entries: Vec<Entry>,
}

/// Per-replay-session use counts, so repeated calls walk through the recorded answers in order.
#[derive(Debug, Clone, Default)]
pub struct Cursor {
    uses: Vec<u32>,
}

/// Why nothing matched: the JSON-RPC error to answer with.
#[derive(Debug, Clone, PartialEq)]
pub struct Miss {
    /// JSON-RPC code: method not found (never recorded) or invalid params.
    pub code: i64,
    /// Message naming the closest recorded request.
    pub message: String,
    /// The closest recorded request: `{"line", "method", "params"}`.
    pub closest: Option<Value>,
}

/// Params as matched: `_meta` removed.
pub fn match_params(params: Option<&Value>) -> Value {
    match params {
        Some(Value::Object(m)) => {
            let mut m = m.clone();
            m.remove("_meta");
            Value::Object(m)
        }
        Some(v) => v.clone(),
        None => Value::Null,
    }
}

struct Open {
    id: String,
    entry: usize,
    t_us: u64,
    token: Option<String>,
}

#[derive(Default)]
struct SessionState {
    open: Vec<Open>,
    last: Option<usize>,
    server_requests: HashMap<String, usize>,
}

impl Book {
    /// Index a tape.
    pub fn from_tape(tape: &Tape) -> Book {
        let mut entries: Vec<Entry> = Vec::new();
        let mut starts: Vec<u64> = Vec::new();
        let mut sessions: HashMap<&str, SessionState> = HashMap::new();
        for f in &tape.frames {
            let st = sessions.entry(f.record.session.as_str()).or_default();
            let v = f.json();
            let t = f.record.t_us;
            let id = v.get("id").map(Value::to_string);
            match (f.record.dir, f.frame.kind()) {
                (Dir::ClientToServer, kind @ (FrameKind::Request | FrameKind::Notification)) => {
                    let i = entries.len();
                    starts.push(t);
                    entries.push(Entry {
                        line: f.line,
                        kind,
                        method: f.frame.method().unwrap_or("").to_string(),
                        target: f.frame.target().map(str::to_string),
                        params: match_params(v.get("params")),
                        steps: Vec::new(),
                    });
                    if let (FrameKind::Request, Some(id)) = (kind, id) {
                        let token = v
                            .pointer("/params/_meta/progressToken")
                            .map(Value::to_string);
                        st.open.push(Open {
                            id,
                            entry: i,
                            t_us: t,
                            token,
                        });
                    }
                    st.last = Some(i);
                }
                (Dir::ClientToServer, _) => {
                    // The client's answer to a server request: the server waited for it.
                    if let Some(owner) = id.and_then(|id| st.server_requests.remove(&id))
                        && let Some(e) = entries.get_mut(owner)
                    {
                        e.steps.push(Step {
                            at_us: t.saturating_sub(starts[owner]),
                            action: StepAction::AwaitClient(v["id"].clone()),
                        });
                    }
                }
                (Dir::ServerToClient, kind) if kind.is_reply() => {
                    let Some(id) = id else { continue };
                    if let Some(pos) = st.open.iter().position(|o| o.id == id) {
                        let o = st.open.remove(pos);
                        entries[o.entry].steps.push(Step {
                            at_us: t.saturating_sub(o.t_us),
                            action: StepAction::Send {
                                message: v,
                                role: Role::Reply,
                            },
                        });
                    }
                }
                (Dir::ServerToClient, kind) => {
                    let token = v.pointer("/params/progressToken").map(Value::to_string);
                    let by_token = token.as_ref().and_then(|tk| {
                        st.open
                            .iter()
                            .find(|o| o.token.as_ref() == Some(tk))
                            .map(|o| o.entry)
                    });
                    let owner = by_token
                        .or_else(|| st.open.last().map(|o| o.entry))
                        .or(st.last);
                    let Some(owner) = owner else { continue };
                    let base = starts[owner];
                    let role = if by_token.is_some() {
                        Role::Progress
                    } else if kind == FrameKind::Request {
                        if let Some(id) = &id {
                            st.server_requests.insert(id.clone(), owner);
                        }
                        Role::ServerRequest(v["id"].clone())
                    } else {
                        Role::Notification
                    };
                    entries[owner].steps.push(Step {
                        at_us: t.saturating_sub(base),
                        action: StepAction::Send { message: v, role },
                    });
                }
            }
        }
        Book { entries }
    }

    /// Recorded client requests.
    pub fn requests(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| e.kind == FrameKind::Request)
            .count()
    }

    /// A fresh cursor for one replay session.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            uses: vec![0; self.entries.len()],
        }
    }

    /// Find the recorded entry for an incoming client message and count its use.
    pub fn lookup(
        &self,
        cursor: &mut Cursor,
        kind: FrameKind,
        method: &str,
        target: Option<&str>,
        params: &Value,
        strictness: Strictness,
    ) -> Result<&Entry, Miss> {
        // initialize carries the client's name and capabilities: any client may replay a tape.
        let strictness = if method == "initialize" {
            Strictness::Method
        } else {
            strictness
        };
        let mut best: Option<(usize, (bool, u32, usize, u32))> = None;
        for (i, e) in self.entries.iter().enumerate() {
            if e.kind != kind || e.method != method {
                continue;
            }
            let equal = same(&e.params, params);
            let ok = match strictness {
                Strictness::Exact => equal,
                Strictness::Name => e.target.as_deref() == target,
                Strictness::Method => true,
            };
            if !ok {
                continue;
            }
            let uses = cursor.uses.get(i).copied().unwrap_or(0);
            let distance = if equal {
                0
            } else {
                leaf_diff(&e.params, params).len()
            };
            let key = (!equal, if equal { uses } else { 0 }, distance, uses);
            if best.as_ref().is_none_or(|(_, k)| key < *k) {
                best = Some((i, key));
            }
        }
        match best {
            Some((i, _)) => {
                if let Some(u) = cursor.uses.get_mut(i) {
                    *u += 1;
                }
                Ok(&self.entries[i])
            }
            None => Err(self.miss(kind, method, target, params, strictness)),
        }
    }

    fn miss(
        &self,
        kind: FrameKind,
        method: &str,
        target: Option<&str>,
        params: &Value,
        strictness: Strictness,
    ) -> Miss {
        let closest = self
            .entries
            .iter()
            .filter(|e| e.kind == kind)
            .min_by_key(|e| {
                (
                    e.method != method,
                    e.target.as_deref() != target,
                    leaf_diff(&e.params, params).len(),
                )
            });
        let known = self.entries.iter().any(|e| e.method == method);
        let code = if known {
            INVALID_PARAMS
        } else {
            METHOD_NOT_FOUND
        };
        let mut message = format!(
            "replay: no recorded {method} request matches {} (matching: {strictness})",
            cut(&params.to_string())
        );
        if !known {
            message = format!("replay: {method} was never recorded on this tape");
        }
        if let Some(c) = closest {
            message.push_str(&format!(
                "; closest recorded request (tape line {}): {} {}",
                c.line,
                c.method,
                cut(&c.params.to_string())
            ));
        }
        Miss {
            code,
            message,
            closest: closest.map(
                |c| serde_json::json!({"line": c.line, "method": c.method, "params": c.params}),
            ),
        }
    }
}

/// Recorded params equal incoming ones; a value redacted at capture matches anything.
fn same(recorded: &Value, incoming: &Value) -> bool {
    match (recorded, incoming) {
        (Value::String(r), _) if r == crate::redact::REDACTED => true,
        (Value::Object(r), Value::Object(i)) => {
            r.len() == i.len()
                && r.iter()
                    .all(|(k, v)| i.get(k).is_some_and(|iv| same(v, iv)))
        }
        (Value::Array(r), Value::Array(i)) => {
            r.len() == i.len() && r.iter().zip(i).all(|(a, b)| same(a, b))
        }
        (r, i) => r == i,
    }
}

fn cut(s: &str) -> String {
    if s.chars().count() > 200 {
        format!("{}…", s.chars().take(199).collect::<String>())
    } else {
        s.to_string()
    }
}
