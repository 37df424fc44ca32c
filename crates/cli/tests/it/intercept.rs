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
