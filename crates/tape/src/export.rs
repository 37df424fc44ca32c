//! Export a tape as one JSON document or as HAR 1.2 (for HAR viewers and browser dev tools).
//!
//! HAR is request/response shaped, so: every client request with its reply is one entry
//! (`POST`, the request as `postData`, the reply as the response body, the latency as `time`);
//! client notifications and responses are entries answered with `202`; messages the server sent
//! while a request was open (progress, logs, sampling requests) are listed in that entry's
//! `_serverMessages`, and the others in the log's `_serverMessages`.

use crate::reader::Tape;
use crate::record::Dir;
use crate::time::{format_ms, parse_ms};
use serde_json::{Value, json};
use shadowcat_proto::{FrameKind, RequestId};
use std::collections::HashMap;

/// The tape as one JSON document: `{"header":…,"frames":[…],"end":…}`; each frame keeps its
/// line number and its message as a JSON value.
pub fn to_json(tape: &Tape) -> Value {
    let frames: Vec<Value> = tape
        .frames
        .iter()
        .map(|f| {
            let mut o = json!({
                "line": f.line,
                "t_us": f.record.t_us,
                "dir": f.record.dir.as_str(),
                "session": f.record.session,
                "message": f.json(),
            });
            if !f.record.transport.is_empty() {
                o["transport"] = serde_json::to_value(&f.record.transport).unwrap_or(Value::Null);
            }
            if let Some(n) = &f.record.note {
                o["note"] = json!(n);
            }
            o
        })
        .collect();
    json!({
        "header": serde_json::to_value(&tape.header).unwrap_or(Value::Null),
        "frames": frames,
        "end": tape.end.as_ref().map(|e| serde_json::to_value(e).unwrap_or(Value::Null)),
    })
}

fn url_of(tape: &Tape) -> String {
    let u = &tape.header.upstream;
    if u.starts_with("http://") || u.starts_with("https://") {
        u.clone()
    } else {
        // A stdio server: no URL; HAR needs one, so name the session's MCP endpoint.
        "mcp://stdio/".to_string()
    }
}

fn entry(started_ms: i64, url: &str, session: &str, request: &Value) -> Value {
    let text = request.to_string();
    json!({
        "startedDateTime": format_ms(started_ms),
        "time": 0,
        "request": {
            "method": "POST",
            "url": url,
            "httpVersion": "HTTP/1.1",
            "cookies": [],
            "headers": [
                {"name": "Content-Type", "value": "application/json"},
                {"name": "Mcp-Session-Id", "value": session},
            ],
            "queryString": [],
            "postData": {"mimeType": "application/json", "text": text},
            "headersSize": -1,
            "bodySize": text.len(),
        },
        "response": {
            "status": 202,
            "statusText": "Accepted",
            "httpVersion": "HTTP/1.1",
            "cookies": [],
            "headers": [],
            "content": {"size": 0, "mimeType": "application/json"},
            "redirectURL": "",
            "headersSize": -1,
            "bodySize": 0,
        },
        "cache": {},
        "timings": {"send": 0, "wait": 0, "receive": 0},
        "_session": session,
        "_serverMessages": [],
    })
}

/// The tape as HAR 1.2.
pub fn to_har(tape: &Tape) -> Value {
    let start_ms = parse_ms(&tape.header.created).unwrap_or(0);
    let url = url_of(tape);
    let mut entries: Vec<Value> = Vec::new();
    let mut open: HashMap<(String, RequestId), usize> = HashMap::new();
    let mut loose: Vec<Value> = Vec::new();
    for f in &tape.frames {
        let r = &f.record;
        let msg = f.json();
        let at_ms = start_ms + (r.t_us / 1000) as i64;
        match (r.dir, f.frame.kind()) {
            (Dir::ClientToServer, kind) => {
                let i = entries.len();
                entries.push(entry(at_ms, &url, &r.session, &msg));
                if kind == FrameKind::Request
                    && let Some(id) = f.frame.id()
                {
                    open.insert((r.session.clone(), id.clone()), i);
                }
            }
            (Dir::ServerToClient, kind) if kind.is_reply() => {
                let idx = f
                    .frame
                    .id()
                    .and_then(|id| open.remove(&(r.session.clone(), id.clone())));
                match idx {
                    Some(i) => {
                        let e = &mut entries[i];
                        let started = e["startedDateTime"]
                            .as_str()
                            .and_then(parse_ms)
                            .unwrap_or(at_ms);
                        let wait = (at_ms - started).max(0);
                        let text = msg.to_string();
                        e["time"] = json!(wait);
                        e["timings"]["wait"] = json!(wait);
                        e["response"]["status"] = json!(200);
                        e["response"]["statusText"] = json!("OK");
                        e["response"]["content"] = json!({"size": text.len(), "mimeType": "application/json", "text": text});
                        e["response"]["bodySize"] = json!(text.len());
                    }
                    None => {
                        loose.push(json!({"t_us": r.t_us, "session": r.session, "message": msg}))
                    }
                }
            }
            (Dir::ServerToClient, _) => {
                // Attach to the newest open request of the session, if any.
                let owner = open
                    .iter()
                    .filter(|((s, _), _)| *s == r.session)
                    .map(|(_, i)| *i)
                    .max();
                let item = json!({"t_us": r.t_us, "message": msg});
                match owner {
                    Some(i) => {
                        if let Some(a) = entries[i]["_serverMessages"].as_array_mut() {
                            a.push(item);
                        }
                    }
                    None => loose.push(item),
                }
            }
        }
    }
    json!({
        "log": {
            "version": "1.2",
            "creator": {"name": "shadowcat", "version": tape.header.shadowcat},
            "pages": [],
            "entries": entries,
            "comment": format!("{} tape of {}", tape.header.mode, tape.header.upstream),
            "_serverMessages": loose,
        }
    })
}
