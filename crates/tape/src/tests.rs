//! Tests across modules: write → read → validate, diff, export, replay index.

use crate::diff::{Change, DiffOptions, diff};
use crate::reader::{Severity, Tape, validate};
use crate::record::{Dir, Header, Transport};
use crate::redact::Redactor;
use crate::replay::{Book, Role, StepAction, Strictness};
use crate::writer::TapeWriter;
use serde_json::json;
use shadowcat_proto::FrameKind;

type Msg = (u64, Dir, &'static str, serde_json::Value);

fn tape_text(msgs: &[Msg]) -> String {
    let header = Header::new("forward-stdio", "demo", "2025-01-02T03:04:05.000Z".into());
    let mut w = TapeWriter::new(Vec::new(), &header, Redactor::default()).unwrap();
    for (t, dir, session, m) in msgs {
        w.frame(
            *t,
            *dir,
            session,
            Transport::default(),
            None,
            m.to_string().as_bytes(),
        )
        .unwrap();
    }
    String::from_utf8(w.finish(9_000_000, 0).unwrap()).unwrap()
}

fn tape(msgs: &[Msg]) -> Tape {
    Tape::read(tape_text(msgs).as_bytes()).unwrap()
}

const C: Dir = Dir::ClientToServer;
const S: Dir = Dir::ServerToClient;

fn session(id_base: i64, echo: &str) -> Vec<Msg> {
    vec![
        (
            0,
            C,
            "a",
            json!({"jsonrpc":"2.0","id":id_base,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"x","version":"1"}}}),
        ),
        (
            1000,
            S,
            "a",
            json!({"jsonrpc":"2.0","id":id_base,"result":{"protocolVersion":"2025-06-18","capabilities":{},"serverInfo":{"name":"demo","version":"1"}}}),
        ),
        (
            2000,
            C,
            "a",
            json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
        ),
        (
            3000,
            C,
            "a",
            json!({"jsonrpc":"2.0","id":id_base+1,"method":"tools/call","params":{"name":"slow","arguments":{"steps":2},"_meta":{"progressToken":id_base+100}}}),
        ),
        (
            4000,
            S,
            "a",
            json!({"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":id_base+100,"progress":1}}),
        ),
        (
            5000,
            S,
            "a",
            json!({"jsonrpc":"2.0","id":7,"method":"sampling/createMessage","params":{"messages":[]}}),
        ),
        (
            6000,
            C,
            "a",
            json!({"jsonrpc":"2.0","id":7,"result":{"role":"assistant","content":{"type":"text","text":"hi"}}}),
        ),
        (
            8000,
            S,
            "a",
            json!({"jsonrpc":"2.0","id":id_base+1,"result":{"content":[{"type":"text","text":echo}]}}),
        ),
    ]
}

#[test]
fn write_read_round_trip_keeps_bytes_and_protocol() {
    let t = tape(&session(1, "done"));
    assert_eq!(t.frames.len(), 8);
    assert_eq!(t.header.mode, "forward-stdio");
    assert_eq!(t.protocol().as_deref(), Some("2025-06-18"));
    assert_eq!(t.end.as_ref().unwrap().frames, 8);
    assert_eq!(t.frames[3].frame.target(), Some("slow"));
    assert_eq!(t.frames[3].line, 5);
    assert_eq!(t.sessions(), vec!["a"]);
}

#[test]
fn writer_redacts_before_disk() {
    let header = Header::new("m", "u", "2025-01-02T03:04:05.000Z".into());
    let red = Redactor::new(&crate::RedactConfig {
        pointers: vec!["/params/arguments/pin".into()],
        patterns: vec!["tok_[a-z0-9]+".into()],
    })
    .unwrap();
    let mut w = TapeWriter::new(Vec::new(), &header, red).unwrap();
    let m = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"pin":"1234","note":"use tok_abc123","api_key":"k-9"}}});
    w.frame(
        1,
        C,
        "s",
        Transport::default(),
        None,
        m.to_string().as_bytes(),
    )
    .unwrap();
    let text = String::from_utf8(w.finish(2, 0).unwrap()).unwrap();
    for secret in ["1234", "tok_abc123", "k-9"] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    assert!(Tape::read(text.as_bytes()).is_ok());
}

#[test]
fn multi_line_messages_become_one_line() {
    let header = Header::new("m", "u", "2025-01-02T03:04:05.000Z".into());
    let mut w = TapeWriter::new(Vec::new(), &header, Redactor::default()).unwrap();
    w.frame(
        1,
        C,
        "s",
        Transport::default(),
        None,
        b"{\n \"jsonrpc\": \"2.0\",\r\n \"method\": \"x\"\n}",
    )
    .unwrap();
    let text = String::from_utf8(w.finish(2, 0).unwrap()).unwrap();
    assert_eq!(text.lines().count(), 3);
    assert_eq!(
        Tape::read(text.as_bytes()).unwrap().frames[0]
            .frame
            .method(),
        Some("x")
    );
}

#[test]
fn validate_reports_line_numbers() {
    let mut text = tape_text(&session(1, "done"));
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[3] = "{not json".into();
    lines[5] = r#"{"type":"frame","t_us":1,"dir":"c2s","session":"a","message":{"id":1}}"#.into();
    lines.insert(7, r#"{"type":"bogus"}"#.into());
    text = lines.join("\n");
    let v = validate(text.as_bytes());
    let errors: Vec<(usize, String)> = v
        .problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .map(|p| (p.line, p.message.clone()))
        .collect();
    assert_eq!(
        errors.iter().map(|e| e.0).collect::<Vec<_>>(),
        vec![4, 6, 8],
        "{errors:?}"
    );
    assert!(errors[2].1.contains("bogus"));
    assert!(!v.is_valid());
    assert!(validate(tape_text(&session(1, "x")).as_bytes()).is_valid());
    let err = Tape::read(text.as_bytes()).unwrap_err().to_string();
    assert!(err.starts_with("line 4:"), "{err}");
    let no_header = validate(&b"{\"type\":\"end\",\"t_us\":1,\"frames\":0}\n"[..]);
    assert_eq!(no_header.problems[0].line, 1);
}

#[test]
fn diff_ignores_ids_times_sessions_and_catches_changes() {
    let a = tape(&session(1, "done"));
    let mut other = session(50, "done");
    for m in &mut other {
        m.0 *= 3;
        m.2 = "b";
    }
    let b = tape(&other);
    assert_eq!(diff(&a, &b, &DiffOptions::default()), vec![]);
    let c = tape(&session(1, "DIFFERENT"));
    let changes = diff(&a, &c, &DiffOptions::default());
    assert_eq!(changes.len(), 1, "{changes:?}");
    match &changes[0] {
        Change::Changed { fields, what, .. } => {
            assert_eq!(fields[0].0, "/result/content/0/text");
            assert!(what.contains("tools/call"), "{what}");
        }
        c => panic!("{c:?}"),
    }
    let ignored = DiffOptions {
        ignore: vec!["/result/content/0/text".into()],
    };
    assert_eq!(diff(&a, &c, &ignored), vec![]);
    // How the two directions interleave is timing, not a difference.
    let mut reordered = session(1, "done");
    reordered.swap(1, 2);
    assert_eq!(diff(&a, &tape(&reordered), &DiffOptions::default()), vec![]);
    // Nor is the order in which concurrent requests were answered.
    let mut concurrent = session(1, "done");
    concurrent.insert(
        4,
        (
            3500,
            C,
            "a",
            json!({"jsonrpc":"2.0","id":9,"method":"ping"}),
        ),
    );
    concurrent.push((8500, S, "a", json!({"jsonrpc":"2.0","id":9,"result":{}})));
    let mut swapped = concurrent.clone();
    let last = swapped.pop().unwrap();
    swapped.insert(5, last);
    let (c1, c2) = (tape(&concurrent), tape(&swapped));
    assert_eq!(diff(&c1, &c2, &DiffOptions::default()), vec![]);
    assert_eq!(
        diff(&a, &c1, &DiffOptions::default()).len(),
        2,
        "the extra ping and its reply"
    );
    let mut shorter = session(1, "done");
    shorter.remove(4);
    let changes = diff(&a, &tape(&shorter), &DiffOptions::default());
    assert!(
        matches!(changes.as_slice(), [Change::Removed { line: 6, .. }]),
        "{changes:?}"
    );
}

#[test]
fn replay_index_attaches_progress_server_requests_and_reply() {
    let book = Book::from_tape(&tape(&session(1, "done")));
    assert_eq!(book.requests(), 2);
    let mut cur = book.cursor();
    let params = json!({"name":"slow","arguments":{"steps":2}});
    let e = book
        .lookup(
            &mut cur,
            FrameKind::Request,
            "tools/call",
            Some("slow"),
            &params,
            Strictness::Exact,
        )
        .unwrap();
    let roles: Vec<String> = e
        .steps
        .iter()
        .map(|s| match &s.action {
            StepAction::Send { role, .. } => format!("{role:?}@{}", s.at_us),
            StepAction::AwaitClient(id) => format!("await {id}@{}", s.at_us),
        })
        .collect();
    assert_eq!(
        roles,
        vec![
            "Progress@1000",
            "ServerRequest(Number(7))@2000",
            "await 7@3000",
            "Reply@5000"
        ]
    );
    assert!(matches!(
        e.steps[3].action,
        StepAction::Send {
            role: Role::Reply,
            ..
        }
    ));
    // initialize matches whatever the client says about itself
    let init = json!({"protocolVersion":"2025-03-26","clientInfo":{"name":"other"}});
    assert!(
        book.lookup(
            &mut cur,
            FrameKind::Request,
            "initialize",
            None,
            &init,
            Strictness::Exact
        )
        .is_ok()
    );
}

#[test]
fn replay_misses_name_the_closest_request() {
    let book = Book::from_tape(&tape(&session(1, "done")));
    let mut cur = book.cursor();
    let params = json!({"name":"slow","arguments":{"steps":3}});
    let miss = book
        .lookup(
            &mut cur,
            FrameKind::Request,
            "tools/call",
            Some("slow"),
            &params,
            Strictness::Exact,
        )
        .unwrap_err();
    assert_eq!(miss.code, -32602);
    assert!(miss.message.contains("tape line 5"), "{}", miss.message);
    assert!(miss.message.contains("\"steps\":2"), "{}", miss.message);
    // looser matching answers with the closest recorded call
    assert!(
        book.lookup(
            &mut cur,
            FrameKind::Request,
            "tools/call",
            Some("slow"),
            &params,
            Strictness::Name
        )
        .is_ok()
    );
    let miss = book
        .lookup(
            &mut cur,
            FrameKind::Request,
            "prompts/get",
            None,
            &json!({}),
            Strictness::Method,
        )
        .unwrap_err();
    assert_eq!(miss.code, -32601);
}

#[test]
fn repeated_calls_walk_through_recorded_answers() {
    let mut msgs = Vec::new();
    for (i, n) in [(1, "1"), (2, "2")] {
        msgs.push((
            i * 10,
            C,
            "a",
            json!({"jsonrpc":"2.0","id":i,"method":"tools/call","params":{"name":"increment"}}),
        ));
        msgs.push((
            i * 10 + 1,
            S,
            "a",
            json!({"jsonrpc":"2.0","id":i,"result":{"n":n}}),
        ));
    }
    let book = Book::from_tape(&tape(&msgs));
    let mut cur = book.cursor();
    let p = json!({"name":"increment"});
    let answers: Vec<u64> = (0..3)
        .map(|_| {
            book.lookup(
                &mut cur,
                FrameKind::Request,
                "tools/call",
                Some("increment"),
                &p,
                Strictness::Exact,
            )
            .unwrap()
            .line as u64
        })
        .collect();
    assert_eq!(answers, vec![2, 4, 2]);
}

#[test]
fn exports() {
    let t = tape(&session(1, "done"));
    let har = crate::export::to_har(&t);
    let entries = har["log"]["entries"].as_array().unwrap();
    // initialize, initialized, tools/call, and the client's sampling answer
    assert_eq!(entries.len(), 4);
    assert_eq!(entries[0]["response"]["status"], 200);
    assert_eq!(entries[0]["startedDateTime"], "2025-01-02T03:04:05.000Z");
    assert_eq!(entries[1]["response"]["status"], 202);
    assert_eq!(entries[2]["time"], 5);
    assert_eq!(entries[2]["_serverMessages"].as_array().unwrap().len(), 2);
    let j = crate::export::to_json(&t);
    assert_eq!(j["frames"].as_array().unwrap().len(), 8);
    assert_eq!(j["frames"][0]["line"], 2);
    let shown = crate::show::render(&t, &Default::default());
    assert!(shown.contains("tools/call slow (5.0 ms)"), "{shown}");
    assert!(!shown.contains('\x1b'));
}

#[test]
fn redacted_values_match_anything_on_replay() {
    let msgs = vec![
        (
            0,
            C,
            "a",
            json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"login","arguments":{"user":"ada","password":"[REDACTED]"}}}),
        ),
        (
            1,
            S,
            "a",
            json!({"jsonrpc":"2.0","id":1,"result":{"ok":true}}),
        ),
    ];
    let book = Book::from_tape(&tape(&msgs));
    let mut cur = book.cursor();
    let p = json!({"name":"login","arguments":{"user":"ada","password":"secret"}});
    assert!(
        book.lookup(
            &mut cur,
            FrameKind::Request,
            "tools/call",
            Some("login"),
            &p,
            Strictness::Exact
        )
        .is_ok()
    );
    let p = json!({"name":"login","arguments":{"user":"bob","password":"secret"}});
    assert!(
        book.lookup(
            &mut cur,
            FrameKind::Request,
            "tools/call",
            Some("login"),
            &p,
            Strictness::Exact
        )
        .is_err()
    );
}

#[test]
fn transport_details_are_kept_redacted_shown_and_exported() {
    let header = Header::new(
        "forward-http",
        "http://h/mcp",
        "2025-01-02T03:04:05.000Z".into(),
    );
    let red = Redactor::new(&crate::RedactConfig {
        pointers: vec![],
        patterns: vec!["sk-[a-z0-9]+".into()],
    })
    .unwrap();
    let mut w = TapeWriter::new(Vec::new(), &header, red).unwrap();
    let post = Transport {
        method: Some("POST".into()),
        url: Some("http://127.0.0.1:8080/mcp?api_key=k-991&region=eu".into()),
        status: None,
        headers: [
            ("mcp-session-id", "abc"),
            ("accept", "application/json, text/event-stream"),
            ("authorization", "Bearer hunter2"),
            ("x-note", "key sk-abc123"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        sse_id: None,
    };
    let sse = Transport {
        method: Some("POST".into()),
        url: None,
        status: Some(200),
        headers: [("content-type".to_string(), "text/event-stream".to_string())].into(),
        sse_id: Some("p1.7".into()),
    };
    let call = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}});
    let reply = json!({"jsonrpc":"2.0","id":1,"result":{"content":[]}});
    w.frame(10, C, "abc", post, None, call.to_string().as_bytes())
        .unwrap();
    w.frame(2010, S, "abc", sse, None, reply.to_string().as_bytes())
        .unwrap();
    let text = String::from_utf8(w.finish(3000, 0).unwrap()).unwrap();
    for secret in ["hunter2", "sk-abc123", "k-991"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    let t = Tape::read(text.as_bytes()).unwrap();
    let c = &t.frames[0].record.transport;
    assert_eq!(c.method.as_deref(), Some("POST"));
    assert_eq!(c.headers["authorization"], crate::redact::REDACTED);
    assert_eq!(c.headers["x-note"], "key [REDACTED]");
    assert_eq!(
        c.url.as_deref(),
        Some("http://127.0.0.1:8080/mcp?api_key=[REDACTED]&region=eu")
    );
    assert_eq!(t.frames[1].record.transport.sse_id.as_deref(), Some("p1.7"));
    assert!(validate(text.as_bytes()).is_valid());

    let shown = crate::show::render(&t, &Default::default());
    assert!(shown.contains("[POST]"), "{shown}");
    assert!(shown.contains("[POST 200 sse p1.7]"), "{shown}");
    let full = crate::show::render(
        &t,
        &crate::show::ShowOptions {
            full: true,
            ..Default::default()
        },
    );
    assert!(full.contains("mcp-session-id: abc"), "{full}");
    assert!(
        full.contains("url: http://127.0.0.1:8080/mcp?api_key=[REDACTED]&region=eu"),
        "{full}"
    );

    let har = crate::export::to_har(&t);
    let e = &har["log"]["entries"][0];
    assert_eq!(e["request"]["method"], "POST");
    // The URL the client sent it to (not the upstream's, `http://h/mcp`), redacted.
    assert_eq!(
        e["request"]["url"],
        "http://127.0.0.1:8080/mcp?api_key=[REDACTED]&region=eu"
    );
    assert_eq!(
        e["request"]["queryString"],
        json!([{"name": "api_key", "value": "[REDACTED]"}, {"name": "region", "value": "eu"}])
    );
    let names: Vec<&str> = e["request"]["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"mcp-session-id") && names.contains(&"accept"));
    assert_eq!(e["response"]["status"], 200);
    assert_eq!(e["response"]["content"]["mimeType"], "text/event-stream");
    assert_eq!(e["response"]["_sseId"], "p1.7");
    assert_eq!(e["time"], 2);
    let j = crate::export::to_json(&t);
    assert_eq!(j["frames"][1]["transport"]["sse_id"], "p1.7");
}

#[test]
fn tapes_without_transport_details_still_read() {
    // A version-1 tape written before transport details existed.
    let text = concat!(
        r#"{"type":"header","format":"shadowcat-tape","version":1,"created":"2025-01-02T03:04:05.000Z","shadowcat":"0.1.0","mode":"forward-stdio","upstream":"demo"}"#,
        "\n",
        r#"{"type":"frame","t_us":5,"dir":"c2s","session":"a","message":{"jsonrpc":"2.0","id":1,"method":"ping"}}"#,
        "\n",
        r#"{"type":"end","t_us":9,"frames":1}"#,
        "\n"
    );
    let t = Tape::read(text.as_bytes()).unwrap();
    assert!(t.frames[0].record.transport.is_empty());
    assert!(validate(text.as_bytes()).is_valid());
    let har = crate::export::to_har(&t);
    assert_eq!(har["log"]["entries"][0]["request"]["method"], "POST");
    // No URL recorded, no front named, a command for upstream: the placeholder.
    assert_eq!(
        har["log"]["entries"][0]["request"]["url"],
        crate::export::STDIO_URL
    );
    assert!(!crate::show::render(&t, &Default::default()).contains('['));
    // An older HTTP tape without request URLs: the upstream's URL, as before.
    let http = text.replace(
        r#""upstream":"demo""#,
        r#""upstream":"http://up.example/mcp""#,
    );
    let t = Tape::read(http.as_bytes()).unwrap();
    let har = crate::export::to_har(&t);
    assert_eq!(
        har["log"]["entries"][0]["request"]["url"],
        "http://up.example/mcp"
    );
    // A stdio client never talked to a URL, whatever the upstream.
    let stdio = http.replace(
        r#""mode":"forward-stdio""#,
        r#""mode":"forward-stdio","front":"stdio""#,
    );
    let t = Tape::read(stdio.as_bytes()).unwrap();
    let har = crate::export::to_har(&t);
    assert_eq!(
        har["log"]["entries"][0]["request"]["url"],
        crate::export::STDIO_URL
    );
}

/// Property tests of the reader: arbitrary lines never panic it, a written tape reads back.
/// proptest's default of 256 cases each (PROPTEST_CASES=N for a deeper run).
mod props {
    use super::*;
    use crate::record::{FORMAT, VERSION};
    use crate::redact::SECRET_KEYS;
    use proptest::prelude::*;
    use serde_json::{Map, Value};

    /// Member names that redaction leaves alone (a secret key would be redacted on write).
    fn key() -> impl Strategy<Value = String> {
        any::<String>().prop_filter("not a secret key", |k| {
            !SECRET_KEYS.iter().any(|s| k.eq_ignore_ascii_case(s))
        })
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(key(), inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
            ]
        })
    }

    /// A JSON-RPC message (request, notification, response or error) as the writer gets it.
    fn message() -> impl Strategy<Value = Value> {
        let id = prop_oneof![
            any::<i64>().prop_map(Value::from),
            any::<String>().prop_map(Value::String)
        ];
        let method = "[a-z]{1,8}(/[a-z]{1,8})?".prop_filter("names no target", |m| {
            shadowcat_proto::frame::target_field(m).is_none()
        });
        prop_oneof![
            (id.clone(), method.clone(), json_value()).prop_map(|(id, m, p)| {
                serde_json::json!({"jsonrpc": "2.0", "id": id, "method": m, "params": p})
            }),
            (method, json_value())
                .prop_map(|(m, p)| serde_json::json!({"jsonrpc": "2.0", "method": m, "params": p})),
            (id.clone(), json_value())
                .prop_map(|(id, r)| serde_json::json!({"jsonrpc": "2.0", "id": id, "result": r})),
            (id, any::<i64>(), any::<String>()).prop_map(|(id, c, m)| {
                serde_json::json!({"jsonrpc": "2.0", "id": id, "error": {"code": c, "message": m}})
            }),
        ]
    }

    fn transport() -> impl Strategy<Value = Transport> {
        let header_name = "[a-z][a-z0-9-]{0,12}".prop_filter("not a secret header", |n| {
            !crate::redact::is_secret_header(n)
        });
        (
            prop::option::of("[A-Z]{3,6}"),
            // Query names that redaction leaves alone.
            prop::option::of(
                "http://[a-z0-9.]{1,12}(:[0-9]{1,5})?/[a-z/]{0,12}(\\?(q|page|x)=[a-z0-9]{0,5})?",
            ),
            prop::option::of(any::<u16>()),
            prop::collection::btree_map(header_name, any::<String>(), 0..3),
            prop::option::of(any::<String>()),
        )
            .prop_map(|(method, url, status, headers, sse_id)| Transport {
                method,
                url,
                status,
                headers,
                sse_id,
            })
    }

    type Rec = (u64, bool, String, Transport, Option<String>, Value, bool);

    fn record() -> impl Strategy<Value = Rec> {
        (
            any::<u64>(),
            any::<bool>(),
            any::<String>(),
            transport(),
            prop::option::of(any::<String>()),
            message(),
            any::<bool>(),
        )
    }

    /// Lines a tape could plausibly hold, broken in every way, and plain garbage.
    fn tapeish_line() -> impl Strategy<Value = String> {
        const HEADER: &str = r#"{"type":"header","format":"shadowcat-tape","version":1,"created":"c","shadowcat":"0","mode":"m","upstream":"u"}"#;
        const PARTS: &[&str] = &[
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            "\"",
            "\"type\"",
            "\"header\"",
            "\"frame\"",
            "\"end\"",
            "\"format\"",
            "\"shadowcat-tape\"",
            "\"version\"",
            "1",
            "2",
            "-1",
            "18446744073709551616",
            "\"t_us\"",
            "\"dir\"",
            "\"c2s\"",
            "\"s2c\"",
            "\"session\"",
            "\"message\"",
            "\"jsonrpc\"",
            "\"2.0\"",
            "\"id\"",
            "\"method\"",
            "\"result\"",
            "\"transport\"",
            "\"status\"",
            "\"headers\"",
            "null",
            "é",
        ];
        prop_oneof![
            Just(HEADER.to_string()),
            Just(r#"{"type":"end","t_us":1,"frames":0}"#.to_string()),
            any::<String>().prop_map(|s| s.replace('\n', " ")),
            prop::collection::vec(prop::sample::select(PARTS), 0..30).prop_map(|p| p.concat()),
            (message(), any::<u64>(), any::<bool>()).prop_map(|(m, t, c2s)| {
                let dir = if c2s { "c2s" } else { "s2c" };
                format!(
                    r#"{{"type":"frame","t_us":{t},"dir":"{dir}","session":"a","message":{m}}}"#
                )
            }),
        ]
    }

    proptest! {
        /// Whatever the lines (or bytes), reading and validating give a tape or errors with
        /// line numbers, never a panic; what reads also renders and exports.
        #[test]
        fn reader_never_panics_on_arbitrary_lines(
            lines in prop::collection::vec(tapeish_line(), 0..12),
            bytes in prop::collection::vec(any::<u8>(), 0..64),
            with_bytes in any::<bool>(),
        ) {
            let mut text = lines.join("\n").into_bytes();
            if with_bytes {
                text.extend_from_slice(&bytes);
            }
            let v = validate(&text[..]);
            match Tape::read(&text[..]) {
                Ok(t) => {
                    prop_assert!(v.is_valid(), "read but not valid: {:?}", v.problems);
                    let _ = crate::show::render(&t, &Default::default());
                    let _ = crate::export::to_har(&t);
                    let _ = crate::export::to_json(&t);
                    let _ = t.protocol();
                    let _ = t.duration_us();
                }
                Err(e) => {
                    prop_assert!(!v.is_valid(), "{e} but validate found no error");
                }
            }
        }

        /// A tape written by `TapeWriter` reads back as written: header, every frame (time,
        /// direction, session, transport, note, message bytes, parsed id) and the end line,
        /// and validates without errors.
        #[test]
        fn written_tape_reads_back(
            mode in any::<String>(),
            upstream in any::<String>(),
            created in any::<String>(),
            front in prop::option::of(any::<String>()),
            upstream_headers in prop::collection::btree_map(any::<String>(), any::<String>(), 0..3),
            protocol in prop::option::of(any::<String>()),
            session in prop::option::of(any::<String>()),
            recs in prop::collection::vec(record(), 0..8),
            end_t in any::<u64>(),
            dropped in any::<u64>(),
        ) {
            let header = Header {
                front,
                upstream_headers,
                protocol,
                session,
                ..Header::new(&mode, &upstream, created)
            };
            let mut w = TapeWriter::new(Vec::new(), &header, Redactor::default()).unwrap();
            let mut texts = Vec::new();
            for (t, c2s, session, transport, note, msg, pretty) in &recs {
                let dir = if *c2s { C } else { S };
                let text = if *pretty {
                    serde_json::to_string_pretty(msg).unwrap()
                } else {
                    serde_json::to_string(msg).unwrap()
                };
                w.frame(*t, dir, session, transport.clone(), note.as_deref(), text.as_bytes())
                    .unwrap();
                // Line breaks (only whitespace between JSON tokens) become spaces.
                texts.push(text.replace(['\n', '\r'], " "));
            }
            let out = w.finish(end_t, dropped).unwrap();
            let tape = Tape::read(&out[..]).unwrap();
            prop_assert_eq!(&tape.header, &header);
            prop_assert_eq!(tape.header.format.as_str(), FORMAT);
            prop_assert_eq!(tape.header.version, VERSION);
            prop_assert_eq!(tape.frames.len(), recs.len());
            for (i, (f, rec)) in tape.frames.iter().zip(&recs).enumerate() {
                let (t, c2s, session, transport, note, msg, _) = rec;
                prop_assert_eq!(f.line, i + 2);
                prop_assert_eq!(f.record.t_us, *t);
                prop_assert_eq!(f.record.dir, if *c2s { C } else { S });
                prop_assert_eq!(&f.record.session, session);
                prop_assert_eq!(&f.record.transport, transport);
                prop_assert_eq!(&f.record.note, note);
                prop_assert_eq!(f.record.message.get(), texts[i].as_str());
                // (Compared after one parse each: serde_json's float parsing is not exact.)
                prop_assert_eq!(f.json(), serde_json::from_str::<Value>(&texts[i]).unwrap());
                let id = f.frame.id().map(|id| serde_json::to_value(id).unwrap());
                let want = msg.get("id").filter(|v| !v.is_null()).cloned();
                prop_assert_eq!(id, want);
            }
            let end = tape.end.as_ref().unwrap();
            prop_assert_eq!(end.frames, recs.len() as u64);
            prop_assert_eq!(end.dropped, dropped);
            let last = recs.iter().map(|r| r.0).max().unwrap_or(0);
            prop_assert_eq!(end.t_us, end_t.max(last));
            let v = validate(&out[..]);
            prop_assert!(v.is_valid(), "{:?}", v.problems);
            prop_assert_eq!(v.frames, recs.len());
        }
    }
}
