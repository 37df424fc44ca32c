//! Export a tape as one JSON document or as HAR 1.2 (for HAR viewers and browser dev tools).
//!
//! HAR is request/response shaped, so: every client request with its reply is one entry
//! (the request as `postData`, the reply as the response body, the latency as `time`). HTTP
//! method, URL, status, headers and content type come from the frames' recorded transport
//! details when there are any (the Streamable HTTP front: `forward http`, `gateway`,
//! `replay --listen`), else `POST`, `200` and `application/json`. The URL is the one the
//! client sent the request to; without one (see [`fallback_url`]) a stdio client's entries get
//! the placeholder [`STDIO_URL`];
//! client notifications and responses are entries answered with `202`; messages the server sent
//! while a request was open (progress, logs, sampling requests) are listed in that entry's
//! `_serverMessages`, and the others in the log's `_serverMessages`.

use crate::reader::Tape;
use crate::record::{Dir, Transport};
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

/// The request URL of HAR entries whose client spoke over stdio (no URL; HAR needs one). Not
/// an `http` URL on purpose: nothing was requested over HTTP.
pub const STDIO_URL: &str = "mcp://stdio/";

/// The URL of entries whose request has none recorded: [`STDIO_URL`] for a stdio client;
/// otherwise (tapes from before request URLs were recorded, the legacy HTTP+SSE front) the
/// upstream's URL when it is one — where the requests went, not where the client sent them —
/// else [`STDIO_URL`].
pub fn fallback_url(tape: &Tape) -> String {
    let u = &tape.header.upstream;
    let stdio_front = tape.header.front.as_deref() == Some("stdio");
    if !stdio_front && (u.starts_with("http://") || u.starts_with("https://")) {
        u.clone()
    } else {
        STDIO_URL.to_string()
    }
}

/// A URL's query parameters, as HAR lists them (as they appear in the URL).
fn query_string(url: &str) -> Vec<Value> {
    let query = url.split_once('#').map_or(url, |(u, _)| u).split_once('?');
    let Some((_, query)) = query else {
        return Vec::new();
    };
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (name, value) = kv.split_once('=').unwrap_or((kv, ""));
            json!({"name": name, "value": value})
        })
        .collect()
}

fn har_headers(t: &Transport) -> Vec<Value> {
    t.headers
        .iter()
        .map(|(name, value)| json!({"name": name, "value": value}))
        .collect()
}

fn status_text(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        _ => "",
    }
}

fn entry(started_ms: i64, url: &str, session: &str, request: &Value, t: &Transport) -> Value {
    let text = request.to_string();
    let headers = if t.headers.is_empty() {
        vec![
            json!({"name": "Content-Type", "value": "application/json"}),
            json!({"name": "Mcp-Session-Id", "value": session}),
        ]
    } else {
        har_headers(t)
    };
    json!({
        "startedDateTime": format_ms(started_ms),
        "time": 0,
        "request": {
            "method": t.method.as_deref().unwrap_or("POST"),
            "url": url,
            "httpVersion": "HTTP/1.1",
            "cookies": [],
            "headers": headers,
            "queryString": query_string(url),
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
    let fallback = fallback_url(tape);
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
                let url = r.transport.url.as_deref().unwrap_or(&fallback);
                entries.push(entry(at_ms, url, &r.session, &msg, &r.transport));
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
                        let t = &r.transport;
                        let status = t.status.unwrap_or(200);
                        let mime = t
                            .headers
                            .get("content-type")
                            .map_or("application/json", String::as_str);
                        e["time"] = json!(wait);
                        e["timings"]["wait"] = json!(wait);
                        e["response"]["status"] = json!(status);
                        e["response"]["statusText"] = json!(status_text(status));
                        e["response"]["headers"] = json!(har_headers(t));
                        e["response"]["content"] =
                            json!({"size": text.len(), "mimeType": mime, "text": text});
                        e["response"]["bodySize"] = json!(text.len());
                        if let Some(id) = &t.sse_id {
                            e["response"]["_sseId"] = json!(id);
                        }
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
                let mut item = json!({"t_us": r.t_us, "message": msg});
                if let Some(id) = &r.transport.sse_id {
                    item["sse_id"] = json!(id);
                }
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
