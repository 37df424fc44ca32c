//! Tapes end to end: record through forward stdio and forward http, replay to the Python `mcp`
//! client and get identical results; tape tools (validate, diff, show, list, export);
//! redaction at capture.

use super::harness::{Launch, Raw, Server, bin, init_body, lossy, run as shadowcat};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

/// Run tests/interop/tape_client.py with these arguments; its JSON result.
fn tape_client(args: &[&str]) -> Value {
    let out = Launch::interop("tape_client.py").args(args).run();
    assert!(
        out.status.success(),
        "tape client failed:\n{}\n{}",
        lossy(&out.stdout),
        lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("tape client prints JSON")
}

fn stdout(o: &Output) -> String {
    lossy(&o.stdout)
}

fn only_tape(dir: &Path) -> PathBuf {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("tape directory")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(files.len(), 1, "one tape per session: {files:?}");
    files.into_iter().next().unwrap()
}

fn expected_live_result(r: &Value) {
    // The live run itself must be right, or identical replays would prove nothing.
    assert_eq!(r["server"], "shadowcat-demo");
    assert_eq!(r["echo"], "hello tape");
    assert_eq!(r["progress"], json!([1.0, 2.0, 3.0]));
    assert_eq!(r["sample"], "sampled: pong from the tape test");
    assert_eq!(r["logs"], json!(["tape #1", "tape #2"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_forward_stdio_then_replay_to_python_gives_identical_results() {
    let dir = tempfile::tempdir().unwrap();
    let tape = dir.path().join("stdio.jsonl");
    let t = tape.to_string_lossy().into_owned();
    let (live, replayed) = tokio::task::spawn_blocking(move || {
        let live = tape_client(&[
            "--stdio",
            "--",
            bin(),
            "forward",
            "stdio",
            "--demo",
            "--record",
            &t,
        ]);
        let replayed = tape_client(&["--stdio", "--", bin(), "replay", &t, "--quiet"]);
        (live, replayed)
    })
    .await
    .unwrap();
    expected_live_result(&live);
    assert_eq!(live, replayed);
    let v = shadowcat(&["tape", "validate", "--strict", &tape.to_string_lossy()]);
    assert!(v.status.success(), "{}", stdout(&v));
    assert!(
        stdout(&v).contains("0 error(s), 0 warning(s)"),
        "{}",
        stdout(&v)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_forward_http_then_replay_over_http_gives_identical_results() {
    let dir = tempfile::tempdir().unwrap();
    let rec = format!("{}/", dir.path().join("tapes").display());
    let proxy = Server::forward_http(&["--demo", "--record", &rec]).await;
    let url = proxy.url();
    let live = tokio::task::spawn_blocking(move || tape_client(&["--url", &url]))
        .await
        .unwrap();
    expected_live_result(&live);
    assert_eq!(proxy.terminate().await, Some(0));
    let tape = only_tape(&dir.path().join("tapes"));
    let header: Value = serde_json::from_str(
        std::fs::read_to_string(&tape)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["mode"], "forward-http");
    assert!(header["session"].is_string(), "{header}");

    let replay =
        Server::start(&["replay", &tape.to_string_lossy(), "--listen", "127.0.0.1:0"]).await;
    let url = replay.url();
    let replayed = tokio::task::spawn_blocking(move || tape_client(&["--url", &url]))
        .await
        .unwrap();
    assert_eq!(live, replayed);
    // Each session replays the tape from its start: a second client gets the same answers.
    let url = replay.url();
    let again = tokio::task::spawn_blocking(move || tape_client(&["--url", &url]))
        .await
        .unwrap();
    assert_eq!(live, again);
    replay.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_answers_unmatched_requests_with_the_closest_recorded_one() {
    let dir = tempfile::tempdir().unwrap();
    let tape = dir.path().join("t.jsonl");
    let t = tape.to_string_lossy().into_owned();
    tokio::task::spawn_blocking({
        let t = t.clone();
        move || {
            tape_client(&[
                "--stdio",
                "--",
                bin(),
                "forward",
                "stdio",
                "--demo",
                "--record",
                &t,
            ])
        }
    })
    .await
    .unwrap();
    let replay = Server::start(&["replay", &t, "--listen", "127.0.0.1:0", "--speed", "0"]).await;
    let mut raw = Raw::new(replay.url());
    raw.initialize().await;
    assert_eq!(
        raw.call_tool(1, "echo", json!({"message": "hello tape"}))
            .await,
        "hello tape"
    );
    let r = raw
        .post(json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"message":"never said"}}}))
        .await;
    let m = &r.messages()[0];
    assert_eq!(m["id"], 2);
    assert_eq!(m["error"]["code"], -32602, "{m}");
    let msg = m["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("never said") && msg.contains("hello tape"),
        "{msg}"
    );
    assert!(m["error"]["data"]["closest"]["line"].as_u64().unwrap() > 1);
    let r = raw
        .post(json!({"jsonrpc":"2.0","id":3,"method":"completion/complete","params":{}}))
        .await;
    assert_eq!(r.messages()[0]["error"]["code"], -32601);
    // What any client sends but this tape never recorded is answered by the replay itself.
    let set_level =
        json!({"jsonrpc":"2.0","id":4,"method":"logging/setLevel","params":{"level":"debug"}});
    for (req, id) in [
        (set_level.clone(), 4),
        (json!({"jsonrpc":"2.0","id":5,"method":"ping"}), 5),
    ] {
        let r = raw.post(req).await;
        assert_eq!(r.messages()[0]["id"], id);
        assert_eq!(r.messages()[0]["result"], json!({}), "{}", r.body);
    }
    replay.terminate().await;

    // --strict: only the tape answers.
    let replay = Server::start(&["replay", &t, "--listen", "127.0.0.1:0", "--strict"]).await;
    let mut raw = Raw::new(replay.url());
    raw.initialize().await;
    let r = raw.post(set_level).await;
    assert_eq!(r.messages()[0]["error"]["code"], -32601, "{}", r.body);
    replay.terminate().await;

    // --match name: the closest recorded echo answers.
    let replay = Server::start(&["replay", &t, "--listen", "127.0.0.1:0", "--match", "name"]).await;
    let mut raw = Raw::new(replay.url());
    raw.initialize().await;
    assert_eq!(
        raw.call_tool(1, "echo", json!({"message": "other"})).await,
        "hello tape"
    );
    replay.terminate().await;
}

/// Rewrite every message of a tape with `f`.
fn rewrite(from: &Path, to: &Path, f: impl Fn(&mut Value)) {
    let text = std::fs::read_to_string(from).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        let mut v: Value = serde_json::from_str(line).unwrap();
        if v["type"] == "frame" {
            f(&mut v["message"]);
            v["t_us"] = json!(v["t_us"].as_u64().unwrap() * 2 + 17);
            v["session"] = json!("another-session");
        }
        out.push_str(&v.to_string());
        out.push('\n');
    }
    std::fs::write(to, out).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tape_diff_ignores_ids_and_catches_a_changed_response() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.jsonl");
    let b = dir.path().join("b.jsonl");
    for p in [&a, &b] {
        let t = p.to_string_lossy().into_owned();
        tokio::task::spawn_blocking(move || {
            tape_client(&[
                "--stdio",
                "--",
                bin(),
                "forward",
                "stdio",
                "--demo",
                "--record",
                &t,
            ])
        })
        .await
        .unwrap();
    }
    let (sa, sb) = (a.to_string_lossy(), b.to_string_lossy());
    // Two real runs: different sessions and timings, same conversation.
    let d = shadowcat(&["tape", "diff", &sa, &sb]);
    assert_eq!(d.status.code(), Some(0), "{}", stdout(&d));

    // Every id shifted (requests and their replies alike): still equivalent.
    let ids = dir.path().join("ids.jsonl");
    rewrite(&a, &ids, |m| {
        if let Some(n) = m["id"].as_i64() {
            m["id"] = json!(n + 1000);
        } else if let Some(s) = m["id"].as_str() {
            m["id"] = json!(format!("x-{s}"));
        }
    });
    let d = shadowcat(&["tape", "diff", &sa, &ids.to_string_lossy()]);
    assert_eq!(d.status.code(), Some(0), "{}", stdout(&d));

    // One response changed: exit 1, and the report names the line and the field.
    let changed = dir.path().join("changed.jsonl");
    rewrite(&a, &changed, |m| {
        if m["result"]["content"][0]["text"] == "hello tape" {
            m["result"]["content"][0]["text"] = json!("HELLO TAPE");
        }
    });
    let d = shadowcat(&["tape", "diff", &sa, &changed.to_string_lossy()]);
    assert_eq!(d.status.code(), Some(1), "{}", stdout(&d));
    let report = stdout(&d);
    assert!(report.contains("/result/content/0/text"), "{report}");
    assert!(report.contains("\"HELLO TAPE\""), "{report}");
    assert!(report.contains("tools/call echo"), "{report}");
    assert!(report.contains("1 difference(s)"), "{report}");
    // …unless that field is ignored.
    let d = shadowcat(&[
        "tape",
        "diff",
        &sa,
        &changed.to_string_lossy(),
        "--ignore",
        "/result/content/0/text",
    ]);
    assert_eq!(d.status.code(), Some(0), "{}", stdout(&d));
    let d = shadowcat(&["tape", "diff", &sa, "/nonexistent.jsonl"]);
    assert_eq!(d.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tape_show_list_export_and_validate() {
    let dir = tempfile::tempdir().unwrap();
    let tape = dir.path().join("t.jsonl");
    let t = tape.to_string_lossy().into_owned();
    tokio::task::spawn_blocking({
        let t = t.clone();
        move || {
            tape_client(&[
                "--stdio",
                "--",
                bin(),
                "forward",
                "stdio",
                "--demo",
                "--record",
                &t,
            ])
        }
    })
    .await
    .unwrap();

    let show = stdout(&shadowcat(&["tape", "show", &t]));
    assert!(show.contains("tools/call echo"), "{show}");
    assert!(show.contains("notifications/progress"), "{show}");
    assert!(show.contains("sampling/createMessage"), "{show}");
    assert!(!show.contains('\x1b'), "no colour when not a terminal");
    let coloured = stdout(&shadowcat(&["tape", "show", &t, "--color", "always"]));
    assert!(coloured.contains("\x1b["));

    let list = shadowcat(&["tape", "list", "--json", &dir.path().to_string_lossy()]);
    let rows: Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(rows[0]["sessions"], 1);
    assert_eq!(rows[0]["complete"], true);
    assert!(rows[0]["frames"].as_u64().unwrap() >= 20, "{rows}");
    let table = stdout(&shadowcat(&["tape", "list", &dir.path().to_string_lossy()]));
    assert!(
        table.contains("t.jsonl") && table.contains("forward-stdio"),
        "{table}"
    );
    // Aligned columns: every row's size ends where the header's SIZE does, and reads as a size
    // for people.
    let lines: Vec<&str> = table.lines().collect();
    let path_end = lines[0].find("  ").unwrap();
    let end = lines[0].find("SIZE").unwrap() + "SIZE".len();
    for l in &lines[1..] {
        assert!(
            l.as_bytes()[end - 1] != b' ' && l.as_bytes()[end] == b' ',
            "{table}"
        );
        let size = l[path_end..end].trim();
        assert!(
            size.ends_with(" KiB") || size.ends_with(" B"),
            "{size}: {table}"
        );
    }

    let har = shadowcat(&["tape", "export", "--format", "har", &t]);
    let har: Value = serde_json::from_slice(&har.stdout).unwrap();
    let entries = har["log"]["entries"].as_array().unwrap();
    let echo = entries
        .iter()
        .find(|e| {
            e["request"]["postData"]["text"]
                .as_str()
                .unwrap()
                .contains("hello tape")
        })
        .expect("an entry for the echo call");
    assert_eq!(echo["response"]["status"], 200);
    assert!(
        echo["response"]["content"]["text"]
            .as_str()
            .unwrap()
            .contains("hello tape")
    );
    let out = dir.path().join("t.json");
    std::fs::write(&out, "an older export, world-readable").unwrap();
    let e = shadowcat(&["tape", "export", &t, "-o", &out.to_string_lossy()]);
    assert!(e.status.success());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "an export is its owner's only, like the tape");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(doc["header"]["mode"], "forward-stdio");

    // A broken tape: every problem with its line number, exit 1.
    let mut lines: Vec<String> = std::fs::read_to_string(&tape)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    lines[2] = "{\"type\":\"frame\",\"oops\":".into();
    lines[4] = lines[4].replace("\"jsonrpc\":\"2.0\"", "\"jsonrpc\":\"1.0\"");
    let broken = dir.path().join("broken.jsonl");
    std::fs::write(&broken, lines.join("\n")).unwrap();
    let v = shadowcat(&["tape", "validate", &broken.to_string_lossy()]);
    assert_eq!(v.status.code(), Some(1));
    let report = stdout(&v);
    assert!(report.contains("broken.jsonl:3: error"), "{report}");
    assert!(report.contains("broken.jsonl:5: error"), "{report}");
    assert!(report.contains("2 error(s)"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_tape() {
    let demo = Server::demo_http().await;
    let dir = tempfile::tempdir().unwrap();
    let tape = dir.path().join("secret.jsonl");
    let mut p = Launch::shadowcat(&[
        "forward",
        "stdio",
        "--url",
        &demo.url().replace("127.0.0.1", "user:pa55word@127.0.0.1"),
        "--header",
        "Authorization: Bearer SEKRET-TOKEN-123",
        "--header",
        "X-Api-Key: KEY-456",
        "--record",
        &tape.to_string_lossy(),
        "--redact-regex",
        "card-[0-9]{4}",
        "--redact-pointer",
        "/params/arguments/pin",
    ])
    .stdin_piped()
    .stdout_piped()
    .start()
    .await;
    let lines = [
        json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}),
        json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
        json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"pay with card-1234","pin":"PIN-9876","api_key":"ARG-KEY-789"}}}),
    ];
    let mut replies = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        p.send(l).await;
        if l["id"].is_null() {
            continue;
        }
        // Like a real client: wait for each answer (initialize first of all).
        let v = p.next_json().await;
        assert_eq!(v["id"], l["id"], "reply to line {i}: {v}");
        replies.push(v);
    }
    let echoed = replies.pop();
    // The relay itself is untouched: the server got (and echoed) the real values.
    assert_eq!(
        echoed.unwrap()["result"]["content"][0]["text"],
        "pay with card-1234"
    );
    p.close_stdin();
    p.wait().await;
    let text = std::fs::read_to_string(&tape).unwrap();
    for secret in [
        "SEKRET-TOKEN-123",
        "KEY-456",
        "pa55word",
        "card-1234",
        // (Not a bare number: it could appear in a timestamp.)
        "PIN-9876",
        "ARG-KEY-789",
    ] {
        assert!(
            !text.contains(secret),
            "`{secret}` leaked into the tape:\n{text}"
        );
    }
    assert!(text.contains("\"Authorization\":\"[REDACTED]\""), "{text}");
    assert!(text.contains("pay with [REDACTED]"), "{text}");
    assert!(text.contains("\"type\":\"end\""));
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_http_tapes_carry_http_details_and_never_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let tape = dir.path().join("http.jsonl");
    let t = tape.to_string_lossy().into_owned();
    let proxy = Server::forward_http(&["--demo", "--record", &t]).await;
    // A query string may carry a secret too.
    let mut raw = Raw::new(format!("{}?api_key=QSECRET-31&trace=1", proxy.url()));
    let recorded_url = format!("{}?api_key=[REDACTED]&trace=1", proxy.url());
    assert!(
        recorded_url.starts_with("http://127.0.0.1:"),
        "{recorded_url}"
    );
    let secret = |r: reqwest::RequestBuilder| r.header("authorization", "Bearer TOPSECRET-777");
    let init = Raw::send(secret(
        raw.post_builder(init_body(0, "2025-06-18").to_string()),
    ))
    .await;
    assert_eq!(init.status, 200, "{}", init.body);
    let sid = init.headers["mcp-session-id"].to_str().unwrap().to_string();
    raw.session = Some(sid.clone());
    let n = Raw::send(secret(raw.post_builder(
        json!({"jsonrpc":"2.0","method":"notifications/initialized"}).to_string(),
    )))
    .await;
    assert_eq!(n.status, 202);
    // Progress first: the POST's answer becomes an SSE stream with proxy-issued event ids.
    let call = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"slow",
        "arguments":{"duration":0.05,"steps":2},"_meta":{"progressToken":"pt"}}});
    let slow = Raw::send(secret(raw.post_builder(call.to_string()))).await;
    assert!(
        slow.content_type().starts_with("text/event-stream"),
        "{}",
        slow.body
    );
    let sent_ids: Vec<String> = slow
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("id:"))
        .map(|id| id.trim().to_string())
        .collect();
    assert_eq!(sent_ids.len(), 3, "2 progress + the reply: {}", slow.body);
    assert_eq!(proxy.terminate().await, Some(0));

    let text = std::fs::read_to_string(&tape).unwrap();
    assert!(!text.contains("TOPSECRET"), "{text}");
    assert!(!text.contains("QSECRET"), "{text}");
    assert!(
        !text.to_ascii_lowercase().contains("\"authorization\""),
        "{text}"
    );
    let frames: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["type"] == "frame")
        .collect();
    let find = |dir: &str, pred: &dyn Fn(&Value) -> bool| -> Vec<Value> {
        frames
            .iter()
            .filter(|f| f["dir"] == dir && pred(&f["message"]))
            .map(|f| f["transport"].clone())
            .collect()
    };
    // Client → server: the POST and its selected headers.
    let init_t = &find("c2s", &|m| m["method"] == "initialize")[0];
    assert_eq!(init_t["method"], "POST", "{init_t}");
    // The URL the client talked to (the proxy's address and path), its secret redacted.
    assert_eq!(init_t["url"], recorded_url.as_str(), "{init_t}");
    assert_eq!(init_t["headers"]["content-type"], "application/json");
    assert_eq!(
        init_t["headers"]["accept"],
        "application/json, text/event-stream"
    );
    assert!(init_t["headers"].get("mcp-session-id").is_none());
    let call_t = &find("c2s", &|m| m["method"] == "tools/call")[0];
    assert_eq!(call_t["headers"]["mcp-session-id"], sid.as_str());
    assert_eq!(call_t["headers"]["mcp-protocol-version"], "2025-06-18");
    let initialized = &find("c2s", &|m| m["method"] == "notifications/initialized")[0];
    assert_eq!(initialized["method"], "POST");
    // Server → client: the initialize result was the POST's JSON body...
    let init_r = &find("s2c", &|m| m["id"] == 0)[0];
    assert_eq!(init_r["status"], 200, "{init_r}");
    assert_eq!(init_r["headers"]["content-type"], "application/json");
    assert!(init_r.get("sse_id").is_none());
    // ...and the progress notifications and the reply went out as the SSE events the client got.
    let streamed = find("s2c", &|m| {
        m["id"] == 1 || m["method"] == "notifications/progress"
    });
    let recorded_ids: Vec<String> = streamed
        .iter()
        .map(|t| {
            assert_eq!(t["status"], 200, "{t}");
            assert_eq!(t["method"], "POST");
            assert_eq!(t["headers"]["content-type"], "text/event-stream");
            t["sse_id"].as_str().expect("an SSE event id").to_string()
        })
        .collect();
    assert_eq!(recorded_ids, sent_ids);

    let show = stdout(&shadowcat(&["tape", "show", &t]));
    assert!(show.contains("[POST 200 json]"), "{show}");
    assert!(
        show.contains(&format!("[POST 200 sse {}]", sent_ids[2])),
        "{show}"
    );
    let har: Value =
        serde_json::from_slice(&shadowcat(&["tape", "export", &t, "--format", "har"]).stdout)
            .unwrap();
    let entry = har["log"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["request"]["postData"]["text"]
                .as_str()
                .unwrap()
                .contains("tools/call")
        })
        .unwrap()
        .clone();
    assert_eq!(
        entry["response"]["content"]["mimeType"],
        "text/event-stream"
    );
    assert_eq!(entry["response"]["_sseId"], sent_ids[2].as_str());
    assert_eq!(entry["_serverMessages"].as_array().unwrap().len(), 2);
    // Every entry names the URL the client sent it to, not the upstream's.
    for e in har["log"]["entries"].as_array().unwrap() {
        assert_eq!(e["request"]["url"], recorded_url.as_str(), "{e}");
    }
    assert_eq!(
        entry["request"]["queryString"],
        json!([{"name": "api_key", "value": "[REDACTED]"}, {"name": "trace", "value": "1"}])
    );
}
