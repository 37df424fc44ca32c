//! Process lifecycle: children dying, client EOF, signals, exit codes. No orphan, ever.

use super::harness::{
    Launch, Raw, Server, SseStream, WAIT, descendants, process_alive, wait_descendants,
};
use serde_json::{Value, json};
use std::time::Duration;

#[tokio::test]
async fn child_killed_mid_call_gives_an_error_and_ends_the_session() {
    let p = Server::forward_http(&["--demo"]).await;
    let mut c = Raw::new(p.url());
    c.initialize().await;
    let child = wait_descendants(p.pid(), 1).await[0];
    // The call is killed mid-way: once its first progress notification has come, the child is
    // working on it.
    let call = json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"slow",
        "arguments":{"steps":300,"duration":30},"_meta":{"progressToken":"p7"}}});
    let resp = c.post_builder(call.to_string()).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut events = SseStream::new(resp);
    let first = events.next_json().await.expect("a progress notification");
    assert_eq!(first["method"], "notifications/progress", "{first}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let reply = loop {
        let m = events.next_json().await.expect("a reply for id 7");
        if m["id"] == json!(7) {
            break m;
        }
    };
    assert_eq!(reply["error"]["code"], json!(-32000), "{reply}");
    let msg = reply["error"]["message"].as_str().unwrap();
    assert!(msg.contains("tools/call") && msg.contains("exit"), "{msg}");
    // the session is over
    let r = c
        .post(json!({"jsonrpc":"2.0","id":8,"method":"tools/list"}))
        .await;
    assert_eq!(r.status, 404);
    wait_descendants(p.pid(), 0).await;
}

#[tokio::test]
async fn sigterm_with_live_sessions_leaves_no_child() {
    let p = Server::forward_http(&[
        "--demo",
        "--shutdown-deadline",
        "1",
        "--shutdown-grace",
        "0.5",
    ])
    .await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = Raw::new(p.url());
        c.initialize().await;
        clients.push(c);
    }
    let children = wait_descendants(p.pid(), 3).await;
    let code = p.terminate().await;
    assert_eq!(code, Some(0));
    for pid in children {
        let deadline = tokio::time::Instant::now() + WAIT;
        while process_alive(pid) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "child {pid} outlived the proxy"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Run `shadowcat forward stdio ARGS`, write `input` lines, close stdin, and collect output.
async fn stdio_run(args: &[&str], input: &[Value], close_stdin: bool) -> (Option<i32>, Vec<Value>) {
    let mut p = Launch::shadowcat(&["forward", "stdio", "--shutdown-grace", "0.3"])
        .args(args)
        .stdin_piped()
        .stdout_piped()
        .start()
        .await;
    for v in input {
        p.send(v).await;
    }
    if close_stdin {
        p.close_stdin();
    } // otherwise it stays open: the child must end things
    let mut out = Vec::new();
    while let Some(l) = p.next_line().await {
        out.push(
            serde_json::from_str(&l).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {l}")),
        );
    }
    (p.wait().await.code(), out)
}

#[tokio::test]
async fn forward_stdio_exit_code_is_the_childs() {
    let (code, out) = stdio_run(&["--", "sh", "-c", "exit 3"], &[], false).await;
    assert_eq!(code, Some(3));
    assert!(out.is_empty());
    let (code, _) = stdio_run(&["--", "sh", "-c", "cat >/dev/null; exit 5"], &[], true).await;
    assert_eq!(
        code,
        Some(5),
        "client EOF closes the child's stdin; its exit code is ours"
    );
}

#[tokio::test]
async fn forward_stdio_child_death_fails_in_flight_requests() {
    let req = json!({"jsonrpc":"2.0","id":"r1","method":"tools/call","params":{"name":"x"}});
    let (code, out) = stdio_run(&["--", "sh", "-c", "read line; exit 7"], &[req], false).await;
    assert_eq!(code, Some(7));
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0]["id"], json!("r1"));
    assert_eq!(out[0]["error"]["code"], json!(-32000));
}

#[tokio::test]
async fn forward_stdio_escalates_to_sigkill_and_leaves_no_grandchild() {
    let marker = format!("shadowcat-it-{}", std::process::id());
    // The shell ignores SIGTERM and stdin EOF; its `sleep` grandchild must not survive either
    // (it would outlive the wait below: 600 s).
    let script = format!("trap '' TERM; sleep 600 # {marker}\n");
    let (code, _) = stdio_run(&["--", "sh", "-c", &script], &[], true).await;
    assert_eq!(code, Some(137), "killed by SIGKILL");
    // The group was killed with the child: wait until no process carries the marker (a killed
    // one may take a moment to be reaped).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let leftovers = std::process::Command::new("pgrep")
            .args(["-f", &marker])
            .output()
            .unwrap();
        let pids = String::from_utf8_lossy(&leftovers.stdout).to_string();
        if pids.trim().is_empty() {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            for pid in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                let pid = nix::unistd::Pid::from_raw(pid);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
            panic!("orphans: {pids}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn forward_stdio_answers_garbage_and_oversized_lines_with_errors() {
    let init = super::harness::init_body(1, "2025-06-18");
    let mut p = Launch::shadowcat(&["forward", "stdio", "--max-message", "1000", "--demo"])
        .stdin_piped()
        .stdout_piped()
        .start()
        .await;
    let big = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"x\",\"params\":{{\"p\":\"{}\"}}}}",
        "y".repeat(1500)
    );
    p.send_raw(&format!("not json\n{big}\n{init}\n")).await;
    let mut got = Vec::new();
    while got.len() < 3 {
        got.push(p.next_json().await);
    }
    assert_eq!(got[0]["error"]["code"], json!(-32700));
    assert_eq!(got[1]["error"]["code"], json!(-32600));
    assert!(
        got[1]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limit")
    );
    assert_eq!(got[2]["id"], json!(1));
    assert_eq!(got[2]["result"]["serverInfo"]["name"], "shadowcat-demo");
    p.close_stdin();
    assert_eq!(p.wait().await.code(), Some(0));
    assert!(descendants(std::process::id()).len() < 50);
}

#[tokio::test]
async fn forward_stdio_refuses_a_request_id_still_in_flight() {
    let mut p = Launch::shadowcat(&["forward", "stdio", "--demo"])
        .stdin_piped()
        .stdout_piped()
        .start()
        .await;
    let mut init = super::harness::init_body(0, "2025-06-18");
    init["params"]["capabilities"] = json!({"elicitation": {}});
    // Request 5 stays in flight until the client answers the server's elicitation.
    let call = json!({"jsonrpc":"2.0","id":5,"method":"tools/call",
        "params":{"name":"elicit","arguments":{"message":"who?"}}});
    let initialized = json!({"jsonrpc":"2.0","method":"notifications/initialized"});
    for v in [&init, &initialized, &call] {
        p.send(v).await;
    }
    assert_eq!(p.next_json().await["id"], json!(0));
    let ask = p.next_json().await;
    assert_eq!(ask["method"], "elicitation/create", "{ask}");
    // A second request with id 5 is answered by the proxy and never reaches the server.
    let dup = json!({"jsonrpc":"2.0","id":5,"method":"tools/call",
        "params":{"name":"echo","arguments":{"message":"again"}}});
    p.send(&dup).await;
    let refused = p.next_json().await;
    assert_eq!(refused["id"], json!(5), "{refused}");
    assert_eq!(refused["error"]["code"], json!(-32600), "{refused}");
    let msg = refused["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("request id 5 is already in flight in this session"),
        "{msg}"
    );
    // The first request is answered once the client answers, and is the only other answer.
    let answer = json!({"jsonrpc":"2.0","id":ask["id"],
        "result":{"action":"accept","content":{"name":"Ann"}}});
    let after = json!({"jsonrpc":"2.0","id":6,"method":"ping"});
    for v in [&answer, &after] {
        p.send(v).await;
    }
    let (a, b) = (p.next_json().await, p.next_json().await);
    let (reply, pong) = if a["id"] == json!(5) { (a, b) } else { (b, a) };
    assert_eq!(reply["id"], json!(5), "{reply}");
    assert_eq!(
        reply["result"]["content"][0]["text"], "elicited: accept name=Ann",
        "{reply}"
    );
    assert_eq!(pong["id"], json!(6), "nothing else came: {pong}");
    p.close_stdin();
    assert_eq!(p.wait().await.code(), Some(0));
}

/// Shell completions for every shell clap knows, and the man page, printed to stdout; an
/// error is one line on stderr, printed once.
#[test]
fn completions_man_page_and_one_line_errors() {
    use super::harness::{lossy, run};
    for (shell, marker) in [
        ("bash", "_shadowcat()"),
        ("zsh", "#compdef shadowcat"),
        ("fish", "complete -c shadowcat"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let out = run(&["completions", shell]);
        let text = lossy(&out.stdout);
        assert!(out.status.success(), "{shell}: {}", lossy(&out.stderr));
        assert!(text.contains(marker), "{shell}: no `{marker}`");
        assert!(
            text.contains("forward"),
            "{shell}: subcommands are completed"
        );
    }
    let man = run(&["man"]);
    let page = lossy(&man.stdout);
    assert!(
        man.status.success() && page.contains(".TH shadowcat 1"),
        "{page}"
    );
    let bad = run(&["config", "check", "/nonexistent/shadowcat.toml"]);
    assert_eq!(bad.status.code(), Some(1));
    let err = lossy(&bad.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("/nonexistent/shadowcat.toml"), "{err}");
}
