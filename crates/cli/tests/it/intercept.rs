//! Interceptor rules end to end through `forward http`: each action, hot reload (good and bad
//! file), and pause → list → edit/drop/resume through `shadowcat intercept` and the admin API.

use super::harness::{Launch, Raw, Server, WAIT};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A proxy (`forward http --demo`) whose stderr is kept, with its MCP and admin URLs.
pub struct Proxy {
    server: Server,
    pub url: String,
    admin: Option<String>,
}

impl Proxy {
    /// `shadowcat forward http --listen 127.0.0.1:0 --demo ARGS…`; with `--admin` among them,
    /// also waits for the admin listener.
    pub async fn start(args: &[&str]) -> Proxy {
        let mut launch =
            Launch::shadowcat(&["forward", "http", "--listen", "127.0.0.1:0", "--demo"])
                .args(args)
                .label("proxy");
        if args.contains(&"--admin") {
            launch = launch.with_admin();
        }
        let server = launch.serve().await;
        Proxy {
            url: server.url(),
            admin: server.admin.clone(),
            server,
        }
    }

    pub async fn client(&self) -> Raw {
        let mut raw = Raw::new(self.url.clone());
        raw.initialize().await;
        raw
    }

    pub fn logged(&self, needle: &str) -> bool {
        self.server.logged(needle)
    }

    /// Wait until a log line contains every needle; that line.
    pub async fn wait_log(&self, needles: &[&str]) -> String {
        self.server.wait_log(needles).await
    }

    /// SIGTERM and wait for a clean exit.
    pub async fn terminate(self) {
        assert_eq!(self.server.terminate().await, Some(0));
    }
}

pub fn write_rules(path: &Path, text: &str) {
    // Write then rename, as editors do, so the watcher never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

pub async fn call(raw: &Raw, id: i64, tool: &str, args: Value) -> Value {
    let r = raw
        .post(json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":args}}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.messages()
        .into_iter()
        .find(|m| m["id"] == json!(id))
        .unwrap_or_else(|| panic!("no reply: {}", r.body))
}

pub fn text(reply: &Value) -> &str {
    reply["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text: {reply}"))
}

const RULES: &str = r#"
[[rule]]
name = "no-adding"
tool = "add"
action = "block"
message = "adding is blocked"

[[rule]]
name = "shout"
direction = "client"
tool = "echo"
when = [{ pointer = "/params/arguments/message", equals = "change me" }]
action = "modify"
set = { "/params/arguments/message" = "changed by a rule" }

[[rule]]
name = "fake-counter"
tool = "increment"
action = "mock"
result = { content = [{ type = "text", text = "mocked 42" }] }

[[rule]]
name = "slow-prompts"
method = "prompts/get"
action = "delay"
delay_ms = 400

[[rule]]
name = "redact-replies"
direction = "server"
kind = "response"
tool = "echo"
when = [{ pointer = "/result/content/0/text", contains = "secret" }]
action = "modify"
set = { "/result/content/0/text" = "[hidden]" }

[[rule]]
name = "allow-everything-else"
priority = -1
action = "continue"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_rule_action_through_forward_http() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    write_rules(&rules, RULES);
    let p = Proxy::start(&["--rules", &rules.to_string_lossy()]).await;
    let raw = p.client().await;

    let blocked = call(&raw, 1, "add", json!({"a": 1, "b": 2})).await;
    assert_eq!(blocked["error"]["code"], -32003, "{blocked}");
    assert_eq!(blocked["error"]["message"], "adding is blocked");

    assert_eq!(
        text(&call(&raw, 2, "echo", json!({"message": "change me"})).await),
        "changed by a rule"
    );
    assert_eq!(
        text(&call(&raw, 3, "echo", json!({"message": "keep me"})).await),
        "keep me"
    );
    assert_eq!(
        text(&call(&raw, 4, "echo", json!({"message": "my secret"})).await),
        "[hidden]"
    );

    // The mocked tool never reached the server: its real counter still starts at 1 … but we
    // cannot call it through the rule, so read the counter resource instead.
    assert_eq!(
        text(&call(&raw, 5, "increment", json!({})).await),
        "mocked 42"
    );
    let counter = raw
        .post(json!({"jsonrpc":"2.0","id":6,"method":"resources/read","params":{"uri":"demo://counter"}}))
        .await;
    assert_eq!(
        counter.messages()[0]["result"]["contents"][0]["text"],
        "0",
        "{}",
        counter.body
    );

    let t = Instant::now();
    let r = raw
        .post(json!({"jsonrpc":"2.0","id":7,"method":"prompts/get","params":{"name":"greeting","arguments":{"name":"Bob"}}}))
        .await;
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "delay not applied: {:?}",
        t.elapsed()
    );
    assert!(r.body.contains("Bob"), "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_reload_when_the_file_changes_and_a_bad_file_keeps_the_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    write_rules(
        &rules,
        "[[rule]]\ntool = 'echo'\naction = 'block'\nmessage = 'v1'\n",
    );
    let p = Proxy::start(&["--rules", &rules.to_string_lossy()]).await;
    let raw = p.client().await;
    assert_eq!(
        call(&raw, 1, "echo", json!({"message": "x"})).await["error"]["message"],
        "v1"
    );

    async fn until(raw: &Raw, want: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let r = call(raw, 9, "echo", json!({"message": "x"})).await;
            let got = r["error"]["message"]
                .as_str()
                .or(r["result"]["content"][0]["text"].as_str());
            if got == Some(want) {
                return;
            }
            assert!(Instant::now() < deadline, "rules did not reload: {r}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    write_rules(
        &rules,
        "[[rule]]\ntool = 'echo'\naction = 'block'\nmessage = 'v2'\n",
    );
    until(&raw, "v2").await;
    assert!(p.logged("reloaded interceptor rules"));

    write_rules(&rules, "[[rule]]\ntool = 'echo'\naction = 'explode'\n");
    let deadline = Instant::now() + WAIT;
    while !p.logged("keeping the previous interceptor rules") {
        assert!(Instant::now() < deadline, "the bad file was not reported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(p.logged("explode"), "the log says why");
    assert_eq!(
        call(&raw, 2, "echo", json!({"message": "x"})).await["error"]["message"],
        "v2"
    );

    write_rules(&rules, "");
    until(&raw, "x").await;
}

async fn wait_paused(admin: &str, token: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let out = intercept(&[
            "intercept",
            "list",
            "--json",
            "--admin",
            admin,
            "--token",
            token,
        ])
        .await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        if list.len() == n {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "expected {n} paused, have {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn intercept(args: &[&str]) -> std::process::Output {
    Launch::shadowcat(args).output().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_then_edit_drop_and_resume_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    write_rules(
        &rules,
        "[[rule]]\nname = 'hold-echo'\ntool = 'echo'\naction = 'pause'\ntimeout_ms = 20000\n",
    );
    let p = Proxy::start(&[
        "--rules",
        &rules.to_string_lossy(),
        "--admin",
        "127.0.0.1:0",
        "--admin-token",
        "tok-1",
    ])
    .await;
    let admin = p.admin.clone().unwrap();
    let raw = Arc::new(p.client().await);

    let pending = |id: i64, msg: &'static str| {
        let raw = raw.clone();
        tokio::spawn(async move { call(&raw, id, "echo", json!({"message": msg})).await })
    };

    // Without the token the admin API refuses.
    let denied = intercept(&["intercept", "list", "--admin", &admin]).await;
    assert!(!denied.status.success());
    assert!(String::from_utf8_lossy(&denied.stderr).contains("401"));

    // edit
    let h = pending(1, "original");
    let list = wait_paused(&admin, "tok-1", 1).await;
    assert_eq!(list[0]["rule"], "hold-echo");
    assert_eq!(list[0]["direction"], "c2s");
    assert_eq!(
        list[0]["message"]["params"]["arguments"]["message"],
        "original"
    );
    let id = list[0]["id"].to_string();
    let edited = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"edited by a person"}}});
    let out = intercept(&[
        "intercept",
        "edit",
        &id,
        "--admin",
        &admin,
        "--token",
        "tok-1",
        "--message",
        &edited.to_string(),
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply = tokio::time::timeout(WAIT, h).await.unwrap().unwrap();
    assert_eq!(text(&reply), "edited by a person");
    // Decided messages are gone.
    let again = intercept(&[
        "intercept",
        "resume",
        &id,
        "--admin",
        &admin,
        "--token",
        "tok-1",
    ])
    .await;
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("404"));

    // drop
    let h = pending(2, "doomed");
    let id = wait_paused(&admin, "tok-1", 1).await[0]["id"].to_string();
    let out = intercept(&[
        "intercept",
        "drop",
        &id,
        "--admin",
        &admin,
        "--token",
        "tok-1",
    ])
    .await;
    assert!(out.status.success());
    let reply = tokio::time::timeout(WAIT, h).await.unwrap().unwrap();
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("dropped"),
        "{reply}"
    );

    // resume
    let h = pending(3, "as sent");
    let id = wait_paused(&admin, "tok-1", 1).await[0]["id"].to_string();
    let out = intercept(&[
        "intercept",
        "resume",
        &id,
        "--admin",
        &admin,
        "--token",
        "tok-1",
    ])
    .await;
    assert!(out.status.success());
    let reply = tokio::time::timeout(WAIT, h).await.unwrap().unwrap();
    assert_eq!(text(&reply), "as sent");
    wait_paused(&admin, "tok-1", 0).await;
}

/// Start a proxy with these rules: it must refuse; its stderr.
async fn refused(rules: &Path) -> String {
    let out = Launch::shadowcat(&[
        "forward",
        "http",
        "--listen",
        "127.0.0.1:0",
        "--demo",
        "--rules",
    ])
    .arg(rules)
    .output()
    .await;
    assert!(
        !out.status.success(),
        "the proxy started with a bad rules file"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_rules_file_stops_the_proxy_from_starting() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    write_rules(&rules, "[[rule]]\naction = 'block'\nmethod = '/(/'\n");
    let err = refused(&rules).await;
    assert!(
        err.contains("invalid rules file") && err.contains("method"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yaml_rules_apply_reload_and_report_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    let v = |msg: &str| {
        format!(
            "rule:\n  - name: anyone-signed-in\n    principal: '*'\n    action: block\n    message: never in forward mode\n  - tool: echo\n    action: block\n    message: {msg}\n"
        )
    };
    write_rules(&rules, &v("v1"));
    let p = Proxy::start(&["--rules", &rules.to_string_lossy()]).await;
    let raw = p.client().await;
    let echo = |id| call(&raw, id, "echo", json!({"message": "x"}));
    // The forward proxy has no principal: the first rule never matches.
    assert_eq!(echo(1).await["error"]["message"], "v1");
    write_rules(&rules, &v("v2"));
    let deadline = Instant::now() + WAIT;
    while echo(2).await["error"]["message"] != "v2" {
        assert!(Instant::now() < deadline, "the YAML rules did not reload");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    write_rules(
        &rules,
        "rule:\n  - tool: echo\n    action: mock\n    result: [unclosed\n",
    );
    let deadline = Instant::now() + WAIT;
    while !p.logged("keeping the previous interceptor rules") {
        assert!(Instant::now() < deadline, "the bad file was not reported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(p.logged("at line 4"), "the log says where");
    assert_eq!(echo(3).await["error"]["message"], "v2");
    p.terminate().await;

    write_rules(
        &rules,
        "rule:\n  - action: block\n    tool: echo\n    colour: red\n",
    );
    let err = refused(&rules).await;
    assert!(
        err.contains("unknown field `colour`") && err.contains("line 4"),
        "{err}"
    );
}

/// What the fake guardrail service was asked: (rule, method, target, route, session).
type Asked = Arc<std::sync::Mutex<Vec<Value>>>;

/// A guardrail service: it rejects an echo of `reject-me`, rewrites an echo of `rewrite-me`,
/// never answers about `slow`, `add` or `bad-answer` (a broken answer), and lets the rest go.
async fn guardrail() -> (String, Asked) {
    async fn decide(
        axum::extract::State(asked): axum::extract::State<Asked>,
        body: String,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        let q: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        asked.lock().unwrap().push(q.clone());
        let message = q["message"]["params"]["arguments"]["message"]
            .as_str()
            .unwrap_or("");
        if q["target"] == "add" || message == "slow" {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        let answer = match message {
            "reject-me" => json!({"decision":"reject","message":"not on my watch"}),
            "rewrite-me" => json!({"decision":"replace",
                "params":{"name":"echo","arguments":{"message":"rewritten"}}}),
            "other-tool" => json!({"decision":"replace",
                "params":{"name":"add","arguments":{"a":1,"b":2}}}),
            "bad-answer" => json!({"verdict":"yes"}),
            _ => json!({"decision":"continue"}),
        };
        ([("content-type", "application/json")], answer.to_string()).into_response()
    }
    let asked: Asked = Arc::default();
    let app = axum::Router::new()
        .route("/decide", axum::routing::post(decide))
        .with_state(asked.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/decide"), asked)
}

#[tokio::test]
async fn guardrails_call_out_reject_rewrite_time_out_and_redact_secrets() {
    let (url, asked) = guardrail().await;
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    write_rules(
        &rules,
        &format!(
            r#"
[[rule]]
name = "secrets-in-results"
direction = "server"
kind = "reply"
method = "tools/call"
action = "detect"
detectors = ["secrets"]
on_match = "redact"

[[rule]]
name = "no-card-numbers"
tool = "echo"
action = "detect"
patterns = ["card-[0-9]{{4}}"]

[[rule]]
name = "judge"
route = "/mcp"
tool = "echo"
action = "callout"
url = "{url}"
timeout_ms = 500

[[rule]]
name = "judge-open"
tool = "add"
action = "callout"
url = "{url}"
timeout_ms = 300
failure_mode = "open"
"#
        ),
    );
    let p = Proxy::start(&["--rules", rules.to_str().unwrap()]).await;
    let c = p.client().await;
    let echo = |id: i64, message: &str| {
        json!({"jsonrpc":"2.0","id":id,"method":"tools/call",
            "params":{"name":"echo","arguments":{"message":message}}})
    };
    // Continue: the call goes through, and the service saw who asked what.
    assert_eq!(
        c.call_tool(1, "echo", json!({"message": "hello"})).await,
        "hello"
    );
    let q = asked.lock().unwrap()[0].clone();
    assert_eq!(q["rule"], "judge");
    assert_eq!(q["method"], "tools/call");
    assert_eq!(q["target"], "echo");
    assert_eq!(q["route"], "/mcp");
    assert_eq!(q["session"], json!(c.session.clone().unwrap()));
    assert_eq!(q["message"]["params"]["arguments"]["message"], "hello");
    // Reject: the client gets the service's message; the server never sees the call.
    let r = c.post(echo(2, "reject-me")).await;
    assert_eq!(r.rpc_code(), -32003, "{}", r.body);
    assert_eq!(r.json()["error"]["message"], "not on my watch");
    // Replace: the server gets the new params.
    assert_eq!(
        c.post(echo(3, "rewrite-me")).await.json()["result"]["content"][0]["text"],
        "rewritten"
    );
    // A replacement may not change which tool is called (fail closed).
    let r = c.post(echo(4, "other-tool")).await;
    assert_eq!(r.rpc_code(), -32003, "{}", r.body);
    assert!(r.body.contains("from `echo` to `add`"), "{}", r.body);
    // No decision in time, failure_mode closed: refused, saying why.
    let t = Instant::now();
    let r = c.post(echo(5, "slow")).await;
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(r.rpc_code(), -32003, "{}", r.body);
    assert!(
        r.body
            .contains("could not decide (no decision within 500 ms)"),
        "{}",
        r.body
    );
    // An answer that is not a decision: refused too.
    let r = c.post(echo(6, "bad-answer")).await;
    assert_eq!(r.rpc_code(), -32003, "{}", r.body);
    // failure_mode open: the message goes on.
    assert_eq!(c.call_tool(7, "add", json!({"a": 1, "b": 2})).await, "3");
    // A secret in a result is redacted before the client sees it.
    let secret = "AKIAIOSFODNN7EXAMPLE";
    let r = c.post(echo(8, &format!("the key is {secret}"))).await;
    assert_eq!(
        r.json()["result"]["content"][0]["text"],
        "the key is [REDACTED]",
        "{}",
        r.body
    );
    // A configured pattern in a request is blocked before the callout is asked.
    let before = asked.lock().unwrap().len();
    let r = c.post(echo(9, "pay with card-1234")).await;
    assert_eq!(r.rpc_code(), -32003, "{}", r.body);
    assert_eq!(
        asked.lock().unwrap().len(),
        before,
        "the detector decided first"
    );
    p.terminate().await;
}

#[tokio::test]
async fn a_callout_rule_without_a_usable_url_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    for (text, needle) in [
        ("[[rule]]\naction = \"callout\"\n", "callout needs `url`"),
        (
            "[[rule]]\naction = \"callout\"\nurl = \"ftp://x\"\n",
            "must be http:// or https://",
        ),
        (
            "[[rule]]\naction = \"callout\"\nurl = \"http://x\"\nfailure_mode = \"maybe\"\n",
            "failure_mode `maybe`",
        ),
        (
            "[[rule]]\naction = \"detect\"\ndetectors = [\"magic\"]\n",
            "detector `magic`",
        ),
    ] {
        write_rules(&rules, text);
        let err = refused(&rules).await;
        assert!(err.contains(needle), "{needle}: {err}");
    }
}

#[tokio::test]
async fn the_example_guardrail_service_lets_calls_through_and_refuses_others() {
    let script = format!("{}/../../examples/guardrail.py", env!("CARGO_MANIFEST_DIR"));
    let mut g = Launch::python()
        .args([&script, "--port", "0"])
        .stdout_piped()
        .label("guardrail")
        .start()
        .await;
    let line = g.next_line().await.expect("the guardrail's first line");
    let url = line
        .trim()
        .strip_prefix("guardrail listening on ")
        .unwrap_or_else(|| panic!("{line}"))
        .to_string();
    let example = std::fs::read_to_string(format!(
        "{}/../../examples/rules/guardrails.toml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
    .replace("http://127.0.0.1:9100/", &url);
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    write_rules(&rules, &example);
    let p = Proxy::start(&["--rules", rules.to_str().unwrap()]).await;
    let c = p.client().await;
    assert_eq!(
        c.call_tool(1, "echo", json!({"message": "ls /tmp"})).await,
        "ls /tmp"
    );
    let r = c
        .post(json!({"jsonrpc":"2.0","id":2,"method":"tools/call",
            "params":{"name":"echo","arguments":{"message":"rm -rf / please"}}}))
        .await;
    assert_eq!(r.rpc_code(), -32003, "{}", r.body);
    assert!(r.body.contains("destructive arguments"), "{}", r.body);
    let r = c
        .post(json!({"jsonrpc":"2.0","id":3,"method":"tools/call",
            "params":{"name":"echo","arguments":{"message":"ghp_abcdefghijklmnopqrstuvwxyz0123456789"}}}))
        .await;
    assert_eq!(
        r.rpc_code(),
        -32003,
        "a secret in the arguments: {}",
        r.body
    );
    p.terminate().await;
    g.terminate().await;
}
