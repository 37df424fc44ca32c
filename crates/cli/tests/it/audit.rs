//! The audit log end to end: a gateway writes one line per client request — allowed, refused
//! by authentication, by an authorization rule and by a rate limit, errored, and a tool result
//! with `isError` — and forward stdio writes one to a file (never into its MCP stdout).

use super::gateway_support::{client, config_file, demo_route, run, start_gateway, with_api_keys};
use super::harness::{Launch, init_body};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

/// The log's lines once it has `n` of them (it is flushed every second).
async fn lines(path: &Path, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let l: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        if l.len() >= n || tokio::time::Instant::now() > deadline {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn find(l: &[Value], pred: impl Fn(&Value) -> bool) -> &Value {
    l.iter()
        .find(|x| pred(x))
        .unwrap_or_else(|| panic!("no such line in {l:#?}"))
}

#[tokio::test]
async fn gateway_audits_every_outcome_and_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let routes = format!(
        "{}[[routes.rules]]\neffect = \"deny\"\ntools = [\"increment\"]\n\
         [limits.per_tool]\necho = {{ requests = 1, per = \"1m\" }}\n\
         [audit]\npath = \"{}\"\n",
        demo_route("/mcp", ""),
        log.display()
    );
    let (_d, cfg) = config_file(&with_api_keys(
        "replica_id = \"r-audit\"",
        &[("alice", "alice-key", "")],
        &routes,
    ));
    // The file says where; the flags say what of the arguments (redacted, one rule more).
    let gw = start_gateway(
        &[
            "--config",
            &cfg,
            "--audit-arguments",
            "redacted",
            "--redact-regex",
            "hunter[0-9]",
        ],
        &[],
    )
    .await;
    let mut c = client(gw.url(), Some("alice-key"));
    c.initialize().await;
    let session = c.session.clone().unwrap();
    assert_eq!(c.call_tool(2, "add", json!({"a": 20, "b": 22})).await, "42");
    assert_eq!(
        c.call_tool(3, "echo", json!({"message": "hunter2"})).await,
        "hunter2"
    );
    let limited = c
        .post(json!({"jsonrpc":"2.0","id":4,"method":"tools/call",
            "params":{"name":"echo","arguments":{"message":"again"}}}))
        .await;
    assert_eq!(limited.rpc_code(), -32029, "{}", limited.body);
    let denied = c
        .post(json!({"jsonrpc":"2.0","id":5,"method":"tools/call",
            "params":{"name":"increment","arguments":{}}}))
        .await;
    assert_eq!(denied.rpc_code(), -32003, "{}", denied.body);
    let unknown = c
        .post(json!({"jsonrpc":"2.0","id":6,"method":"tools/call",
            "params":{"name":"no-such-tool","arguments":{}}}))
        .await;
    assert!(unknown.json()["error"]["code"].is_i64(), "{}", unknown.body);
    let failing = c
        .post(json!({"jsonrpc":"2.0","id":7,"method":"tools/call",
            "params":{"name":"slow","arguments":{"steps": 1000000}}}))
        .await;
    assert_eq!(
        failing.json()["result"]["isError"],
        true,
        "{}",
        failing.body
    );
    let anonymous = client(gw.url(), None);
    let r = anonymous.post(init_body(1, "2025-06-18")).await;
    assert_eq!(r.status, 401);

    let l = lines(&log, 8).await;
    let call = |id: i64| find(&l, |x| x["id"] == json!(id) && x["method"] == "tools/call");
    let init = find(&l, |x| x["method"] == "initialize");
    assert_eq!(init["outcome"], "ok");
    let ok = call(2);
    for (k, v) in [
        ("replica", json!("r-audit")),
        ("route", json!("/mcp")),
        ("session", json!(session)),
        ("principal", json!("key:alice")),
        ("tool", json!("add")),
        ("outcome", json!("ok")),
        ("http_status", json!(200)),
        ("arguments", json!({"a": 20, "b": 22})),
    ] {
        assert_eq!(ok[k], v, "{k}: {ok}");
    }
    assert!(ok["latency_ms"].as_f64().unwrap() > 0.0, "{ok}");
    assert!(ok["bytes_in"].as_u64().unwrap() > 0 && ok["bytes_out"].as_u64().unwrap() > 0);
    assert_eq!(call(3)["arguments"]["message"], "[REDACTED]");
    let (limited, denied) = (call(4), call(5));
    assert_eq!(
        (
            &limited["outcome"],
            &limited["reason"],
            &limited["error_code"]
        ),
        (&json!("refused"), &json!("rate_limit"), &json!(-32029)),
        "{limited}"
    );
    assert_eq!(
        (&denied["outcome"], &denied["reason"], &denied["error_code"]),
        (&json!("refused"), &json!("authz"), &json!(-32003)),
        "{denied}"
    );
    assert_eq!(call(6)["outcome"], "error");
    assert_eq!(call(7)["outcome"], "tool_error");
    assert_eq!(call(7)["is_error"], true);
    let auth = find(&l, |x| x["reason"] == "auth");
    assert_eq!(auth["outcome"], "refused");
    assert_eq!(auth["http_status"], 401);
    assert_eq!(auth["client_ip"], "127.0.0.1");
    assert!(auth.get("principal").is_none());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("hunter2") && !text.contains("alice-key"),
        "{text}"
    );
    gw.terminate().await;
}

#[tokio::test]
async fn forward_stdio_audits_to_a_file_and_refuses_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let mut p = Launch::shadowcat(&[
        "forward",
        "stdio",
        "--audit",
        log.to_str().unwrap(),
        "--demo",
    ])
    .stdin_piped()
    .stdout_piped()
    .start()
    .await;
    p.send(&init_body(0, "2025-06-18")).await;
    assert_eq!(p.next_json().await["id"], json!(0));
    p.send(&json!({"jsonrpc":"2.0","id":1,"method":"tools/call",
        "params":{"name":"add","arguments":{"a":1,"b":2}}}))
        .await;
    assert_eq!(p.next_json().await["id"], json!(1));
    let l = lines(&log, 2).await;
    let call = find(&l, |x| x["id"] == json!(1));
    assert_eq!(call["outcome"], "ok", "{call}");
    assert_eq!(call["tool"], "add");
    assert!(
        call.get("arguments").is_none(),
        "arguments are left out by default"
    );
    assert!(call.get("http_status").is_none(), "{call}");
    assert!(call["session"].is_string(), "{call}");
    assert!(
        call.get("route").is_none(),
        "the stdio front has no route: {call}"
    );
    drop(p);

    let (code, _, err) = run(&["forward", "stdio", "--audit", "-", "--demo"], &[]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("give the audit log a file"), "{err}");
}

#[tokio::test]
async fn composite_routes_name_the_member_a_request_went_to() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let bin = super::harness::bin();
    let (one, two) = (
        format!("one={bin} demo-server"),
        format!("two={bin} demo-server"),
    );
    let p = super::harness::Server::forward_http(&[
        "--server",
        &one,
        "--server",
        &two,
        "--audit",
        log.to_str().unwrap(),
    ])
    .await;
    let mut c = super::harness::Raw::new(p.url());
    c.initialize().await;
    // The names are known once listed.
    let listed = c
        .post(json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}))
        .await;
    assert!(listed.body.contains("two__echo"), "{}", listed.body);
    assert_eq!(
        c.call_tool(2, "two__echo", json!({"message": "hi"})).await,
        "hi"
    );
    let read = c
        .post(json!({"jsonrpc":"2.0","id":3,"method":"resources/read",
            "params":{"uri":"one+demo://readme"}}))
        .await;
    assert!(
        read.json()["result"]["contents"].is_array(),
        "{}",
        read.body
    );
    let l = lines(&log, 4).await;
    let call = find(&l, |x| x["id"] == json!(2));
    assert_eq!(
        (&call["tool"], &call["member"]),
        (&json!("two__echo"), &json!("two")),
        "{call}"
    );
    let res = find(&l, |x| x["id"] == json!(3));
    assert_eq!(res["member"], "one", "{res}");
    let list = find(&l, |x| x["id"] == json!(1));
    assert!(
        list.get("member").is_none(),
        "a list goes to every member: {list}"
    );
    p.terminate().await;
}
