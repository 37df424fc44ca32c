use super::*;
use crate::pipeline::{HttpMeta, Outcome, Pipeline};
use bytes::Bytes;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

fn frame(v: Value) -> Frame {
    Frame::parse_single(Bytes::from(v.to_string())).unwrap()
}

fn config(path: &Path, arguments: Arguments) -> AuditConfig {
    AuditConfig {
        path: Some(path.to_path_buf()),
        arguments,
        max_bytes: DEFAULT_MAX_BYTES,
        keep: DEFAULT_KEEP,
        replica: Some("r1".into()),
        redact: RedactConfig::default(),
        hash_key: Some("k".into()),
    }
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Refuses `tools/call` of the tool `nope` (as the gateway's authorization would).
struct Refuser;

impl Hook for Refuser {
    fn name(&self) -> &'static str {
        "authz"
    }
    fn on_frame(&self, _: &FrameCtx<'_>, f: &Frame) -> Verdict {
        if f.target() == Some("nope") {
            Verdict::Reply(shadowcat_proto::error::error_frame(f.id(), -32003, "no"))
        } else {
            Verdict::Forward
        }
    }
}

fn call(id: i64, tool: &str, args: Value) -> Frame {
    frame(json!({"jsonrpc":"2.0","id":id,"method":"tools/call",
        "params":{"name":tool,"arguments":args}}))
}

#[tokio::test]
async fn every_outcome_gets_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (tracker, cancel) = (TaskTracker::new(), CancellationToken::new());
    let audit = Audit::open(&config(&path, Arguments::None), &tracker, cancel.clone()).unwrap();
    let p = Pipeline::new(vec![Arc::new(Refuser), audit.clone()]);
    let c2s = FrameCtx {
        principal: Some("alice"),
        route: Some(""),
        ..FrameCtx::new("s1", Direction::ClientToServer)
    };
    let s2c = FrameCtx {
        route: Some(""),
        ..FrameCtx::new("s1", Direction::ServerToClient)
    };
    // Allowed, answered.
    p.process(&c2s, call(1, "add", json!({"a": 1}))).await;
    p.process(
        &s2c,
        frame(json!({"jsonrpc":"2.0","id":1,"result":{"content":[]}})),
    )
    .await;
    // A tool result with isError.
    p.process(&c2s, call(2, "add", json!({}))).await;
    p.process(
        &s2c,
        frame(json!({"jsonrpc":"2.0","id":2,"result":{"content":[],"isError":true}})),
    )
    .await;
    // A JSON-RPC error from the server.
    p.process(&c2s, call(3, "add", json!({}))).await;
    p.process(
        &s2c,
        frame(json!({"jsonrpc":"2.0","id":3,"error":{"code":-32602,"message":"bad"}})),
    )
    .await;
    // Refused by the hook before it.
    assert!(matches!(
        p.process(&c2s, call(4, "nope", json!({}))).await,
        Outcome::Reply(_)
    ));
    // Failed before reaching the upstream.
    p.process(&c2s, call(5, "add", json!({}))).await;
    p.failed(&c2s, &RequestId::Number(5), &ProxyError::ShuttingDown);
    // Answered over HTTP: written when delivered, with the status.
    let later = FrameCtx {
        transport: Transport::Later,
        ..s2c
    };
    p.process(
        &c2s,
        frame(json!({"jsonrpc":"2.0","id":6,"method":"tools/list"})),
    )
    .await;
    let answer = frame(json!({"jsonrpc":"2.0","id":6,"result":{"tools":[]}}));
    p.process(&later, answer.clone()).await;
    let sent = FrameCtx {
        transport: Transport::Http(HttpMeta {
            method: "POST",
            status: Some(200),
            content_type: Some("application/json"),
            headers: None,
            sse_id: None,
            url: None,
        }),
        ..s2c
    };
    p.delivered(&sent, &answer).await;
    // Never answered: written when the session ends. Notifications are not requests.
    p.process(&c2s, call(7, "slow", json!({}))).await;
    p.process(
        &c2s,
        frame(json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":7}})),
    )
    .await;
    p.session_ended("s1");
    // Stateless requests share the session `-` and are told apart by their exchange.
    let (x1, x2) = (FrameCtx::next_exchange(), FrameCtx::next_exchange());
    let st = |exchange, direction| FrameCtx {
        exchange,
        ..FrameCtx::new("-", direction)
    };
    p.process(
        &st(x1, Direction::ClientToServer),
        call(1, "add", json!({})),
    )
    .await;
    p.process(
        &st(x2, Direction::ClientToServer),
        call(1, "mul", json!({})),
    )
    .await;
    p.process(
        &st(x2, Direction::ServerToClient),
        frame(json!({"jsonrpc":"2.0","id":1,"result":{"isError":true}})),
    )
    .await;
    p.process(
        &st(x1, Direction::ServerToClient),
        frame(json!({"jsonrpc":"2.0","id":1,"result":{}})),
    )
    .await;
    audit.refused(Refused {
        route: Some("/mcp"),
        principal: None,
        client_ip: Some("127.0.0.1".parse().unwrap()),
        http_method: "POST",
        status: 401,
        reason: "auth",
        started: Instant::now(),
    });
    audit.flush();

    let l = lines(&path);
    let summary: Vec<(Value, Value, Value, Value)> = l
        .iter()
        .map(|x| {
            (
                x["id"].clone(),
                x["outcome"].clone(),
                x.get("tool").cloned().unwrap_or(Value::Null),
                x.get("reason").cloned().unwrap_or(Value::Null),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (json!(1), json!("ok"), json!("add"), Value::Null),
            (json!(2), json!("tool_error"), json!("add"), Value::Null),
            (json!(3), json!("error"), json!("add"), Value::Null),
            (json!(4), json!("refused"), json!("nope"), json!("authz")),
            (json!(5), json!("failed"), json!("add"), Value::Null),
            (json!(6), json!("ok"), Value::Null, Value::Null),
            (json!(7), json!("no_answer"), json!("slow"), Value::Null),
            (json!(1), json!("tool_error"), json!("mul"), Value::Null),
            (json!(1), json!("ok"), json!("add"), Value::Null),
            (Value::Null, json!("refused"), Value::Null, json!("auth")),
        ],
        "{l:#?}"
    );
    let first = &l[0];
    assert_eq!(first["replica"], "r1");
    assert_eq!(first["route"], "/mcp");
    assert_eq!(first["session"], "s1");
    assert_eq!(first["principal"], "alice");
    assert_eq!(first["method"], "tools/call");
    assert!(first["bytes_in"].as_u64().unwrap() > 40, "{first}");
    assert!(first["bytes_out"].as_u64().unwrap() > 20, "{first}");
    assert!(first["latency_ms"].as_f64().is_some());
    assert!(first.get("arguments").is_none() && first.get("arguments_hash").is_none());
    assert_eq!(l[2]["error_code"], -32602);
    assert_eq!(l[3]["error_code"], -32003);
    assert_eq!(l[4]["error_code"], ProxyError::ShuttingDown.jsonrpc_code());
    assert_eq!(l[4]["http_status"], 503);
    assert_eq!(l[5]["http_status"], 200);
    assert!(l[7].get("session").is_none(), "stateless: no session");
    assert_eq!(l[9]["client_ip"], "127.0.0.1");
    assert_eq!(l[9]["http_status"], 401);
    // Nothing is kept for finished requests.
    assert!(audit.pending.is_empty());
    // Only the owner may read the file.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    cancel.cancel();
}

#[tokio::test]
async fn arguments_are_left_out_hashed_or_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let args = json!({"city": "Paris", "password": "hunter2", "note": "sk-live-abc"});
    let mut seen = Vec::new();
    for mode in [Arguments::None, Arguments::Hash, Arguments::Redacted] {
        let path = dir.path().join(format!("{mode:?}.jsonl"));
        let mut cfg = config(&path, mode);
        cfg.redact.patterns = vec!["sk-live-[a-z]+".into()];
        let audit = Audit::open(&cfg, &TaskTracker::new(), CancellationToken::new()).unwrap();
        let p = Pipeline::new(vec![audit.clone()]);
        let c2s = FrameCtx::new("s", Direction::ClientToServer);
        p.process(&c2s, call(1, "weather", args.clone())).await;
        p.session_ended("s");
        audit.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains("hunter2") && !text.contains("sk-live"),
            "{text}"
        );
        seen.push(lines(&path).remove(0));
    }
    assert!(seen[0].get("arguments").is_none() && seen[0].get("arguments_hash").is_none());
    let hash = seen[1]["arguments_hash"].as_str().unwrap();
    assert_eq!(hash.len(), 64, "{hash}");
    assert_eq!(seen[2]["arguments"]["city"], "Paris");
    assert_eq!(seen[2]["arguments"]["password"], "[REDACTED]");
}

#[tokio::test]
async fn the_file_rotates_by_size_in_whole_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut cfg = config(&path, Arguments::None);
    cfg.max_bytes = 2_000;
    cfg.keep = 2;
    let audit = Audit::open(&cfg, &TaskTracker::new(), CancellationToken::new()).unwrap();
    let p = Pipeline::new(vec![audit.clone()]);
    let c2s = FrameCtx::new("s", Direction::ClientToServer);
    let s2c = FrameCtx::new("s", Direction::ServerToClient);
    for i in 0..60 {
        p.process(&c2s, call(i, "add", json!({}))).await;
        p.process(&s2c, frame(json!({"jsonrpc":"2.0","id":i,"result":{}})))
            .await;
    }
    audit.flush();
    let rotated = |n: usize| PathBuf::from(format!("{}.{n}", path.display()));
    assert!(rotated(1).exists() && rotated(2).exists());
    assert!(!rotated(3).exists(), "only `keep` rotated files are kept");
    let mut ids = Vec::new();
    for p in [rotated(2), rotated(1), path.clone()] {
        assert!(std::fs::metadata(&p).unwrap().len() <= 2_000);
        ids.extend(lines(&p).iter().map(|l| l["id"].as_i64().unwrap()));
    }
    // The newest lines are all there, in order, none cut in two.
    assert_eq!(ids.last(), Some(&59));
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
}

#[tokio::test]
async fn a_log_that_cannot_be_opened_is_a_clear_error() {
    let e = match Audit::open(
        &config(Path::new("/nonexistent-dir/audit.jsonl"), Arguments::None),
        &TaskTracker::new(),
        CancellationToken::new(),
    ) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("opened"),
    };
    assert!(e.contains("/nonexistent-dir/audit.jsonl"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir.path().join("a"), Arguments::None);
    cfg.keep = 0;
    assert!(Audit::open(&cfg, &TaskTracker::new(), CancellationToken::new()).is_err());
}

#[test]
fn answers_are_read_for_their_error_and_is_error() {
    let raw = |text: &str| Frame::parse_single(Bytes::from(text.to_string())).unwrap();
    let is_error = |text: &str| answer_of(&raw(text)).is_error;
    // Not mentioned: not parsed, nothing to say.
    assert_eq!(
        is_error(r#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#),
        None
    );
    // Said once, `false` (with or without spaces): read without parsing.
    assert_eq!(
        is_error(r#"{"jsonrpc":"2.0","id":1,"result":{"content":[],"isError":false}}"#),
        Some(false)
    );
    assert_eq!(
        is_error(r#"{"jsonrpc":"2.0","id":1,"result":{"isError" : false,"content":[]}}"#),
        Some(false)
    );
    // `true`, or the key more than once: parsed, and only the result's own key counts.
    assert_eq!(
        is_error(r#"{"jsonrpc":"2.0","id":1,"result":{"content":[],"isError":true}}"#),
        Some(true)
    );
    assert_eq!(
        is_error(
            r#"{"jsonrpc":"2.0","id":1,"result":{"structuredContent":{"isError":false},"isError":true}}"#
        ),
        Some(true)
    );
    assert_eq!(
        is_error(r#"{"jsonrpc":"2.0","id":1,"result":{"structuredContent":{"isError":true}}}"#),
        None
    );
    // A text that quotes the key is not the key.
    assert_eq!(
        is_error(
            r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"\"isError\": true"}]}}"#
        ),
        None
    );
    let e = answer_of(&raw(
        r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"x"}}"#,
    ));
    assert_eq!((e.error_code, e.is_error), (Some(-32602), None));
}
