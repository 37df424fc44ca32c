//! The 2026-07-28 stateless era next to the session-based eras on the same endpoint: header
//! validation, pass-through to a modern upstream, era detection, and translation both ways
//! (2026-07-28 clients on sessions the proxy holds with session-based servers; session-based
//! clients of modern-only servers). Peers: the official Python SDK (`mcp` 2.3), the demo
//! server, server-everything (TS SDK).

use super::gateway_support::{config_file, start_gateway};
use super::harness::{Launch, Raw, Reply, Server, SseStream, WAIT, init_body, lossy};
use super::peers::{Peer, PyEra, python_stdio, python_stdio_toml};
use super::python::interop_client_passes;
use serde_json::{Value, json};
use std::time::Duration;

fn py_client(url: &str, mode: &str, expect_era: Option<&str>) -> (bool, String) {
    let mut cmd = Launch::interop("modern_peer.py").args(["client", "--url", url, "--mode", mode]);
    if let Some(e) = expect_era {
        cmd = cmd.args(["--expect-era", e]);
    }
    let out = cmd.run();
    let all = format!("{}{}", lossy(&out.stdout), lossy(&out.stderr));
    (out.status.success(), all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_era_through_the_proxy_to_a_dual_era_server() {
    let py = Peer::python(PyEra::Dual).await;
    let p = Server::forward_http(&["--target", &py.url]).await;
    let url = p.url();
    for (mode, era) in [
        ("2026-07-28", "modern"),
        ("legacy", "legacy"),
        ("auto", "modern"),
    ] {
        let u = url.clone();
        let (ok, out) = tokio::task::spawn_blocking(move || py_client(&u, mode, Some(era)))
            .await
            .unwrap();
        assert!(ok, "mode {mode}:\n{out}");
    }
}

/// POST a 2026-07-28 request with correct headers unless overridden.
async fn modern(
    url: &str,
    method: &str,
    name: Option<&str>,
    params: Value,
) -> super::harness::Reply {
    modern_with(url, method, name, params, &[]).await
}

async fn modern_with(
    url: &str,
    method: &str,
    name: Option<&str>,
    params: Value,
    extra: &[(&str, &str)],
) -> super::harness::Reply {
    Raw::send(modern_request(url, json!(1), method, name, params, extra)).await
}

/// A 2026-07-28 request with id `id`: the `_meta` envelope (merged with `params._meta`) and
/// the metadata headers, then `extra` headers.
pub(super) fn modern_request(
    url: &str,
    id: Value,
    method: &str,
    name: Option<&str>,
    mut params: Value,
    extra: &[(&str, &str)],
) -> reqwest::RequestBuilder {
    let mut meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "raw-modern", "version": "1"}});
    if let Value::Object(m) = params["_meta"].take() {
        for (k, v) in m {
            meta[k] = v;
        }
    }
    params["_meta"] = meta;
    if let Some(n) = name {
        params["name"] = json!(n);
    }
    let body = json!({"jsonrpc":"2.0","id":id,"method":method,"params":params});
    let mut req = Raw::new(url.to_string())
        .http
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", method)
        .body(body.to_string());
    if let Some(n) = name {
        req = req.header("mcp-name", n);
    }
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    req
}

/// The text of the first content item of the reply to request `id` in `r`.
fn text_of(r: &Reply, id: &Value) -> String {
    let reply = r
        .messages()
        .into_iter()
        .find(|m| m["id"] == *id && m.get("method").is_none())
        .unwrap_or_else(|| panic!("no reply to {id}: {}", r.body));
    reply["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text in {reply}"))
        .to_string()
}

#[tokio::test]
async fn modern_headers_are_validated_against_the_body() {
    let py = Peer::python(PyEra::Dual).await;
    let p = Server::forward_http(&["--target", &py.url]).await;
    let url = p.url();
    // a good stateless call goes through, with a bogus Mcp-Session-Id ignored
    let r = modern_with(
        &url,
        "tools/call",
        Some("echo"),
        json!({"arguments": {"message": "m"}}),
        &[("mcp-session-id", "nope")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let reply = r
        .messages()
        .into_iter()
        .find(|m| m["id"] == json!(1))
        .unwrap();
    assert_eq!(reply["result"]["content"][0]["text"], "m", "{reply}");
    // Mcp-Name mismatch
    let mut params = json!({"arguments": {"message": "m"}, "name": "echo"});
    params["_meta"] = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28"});
    let c = Raw::new(url.clone());
    let mism = c
        .http
        .post(&url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "add")
        .body(json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":params}).to_string());
    let r = Raw::send(mism).await;
    assert_eq!((r.status, r.rpc_code()), (400, -32020), "{}", r.body);
    assert!(r.body.contains("does not match"), "{}", r.body);
    // Mcp-Method mismatch and missing
    let list = json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}});
    let with_method = |m: Option<&str>| {
        let mut req = c
            .http
            .post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .body(list.to_string());
        if let Some(m) = m {
            req = req.header("mcp-method", m);
        }
        req
    };
    let r = Raw::send(with_method(Some("tools/call"))).await;
    assert_eq!((r.status, r.rpc_code()), (400, -32020), "{}", r.body);
    assert!(r.body.contains("does not match"), "{}", r.body);
    let r = Raw::send(with_method(None)).await;
    assert_eq!((r.status, r.rpc_code()), (400, -32020), "{}", r.body);
    assert!(r.body.contains("missing"), "{}", r.body);
    // Mcp-Method sent twice (one matching the body): refused, naming the header, before the
    // first value could be checked against the body and both forwarded.
    let r = modern_with(
        &url,
        "tools/list",
        None,
        json!({}),
        &[("mcp-method", "tools/call")],
    )
    .await;
    assert_eq!((r.status, r.rpc_code()), (400, -32020), "{}", r.body);
    assert!(
        r.body
            .contains("`mcp-method` header is sent more than once"),
        "{}",
        r.body
    );
    // Mcp-Name missing on tools/call
    let r = modern(
        &url,
        "tools/call",
        None,
        json!({"name": "echo", "arguments": {}}),
    )
    .await;
    assert_eq!((r.status, r.rpc_code()), (400, -32020), "{}", r.body);
    // Base64 sentinel names are decoded before comparing
    let r = modern_with(
        &url,
        "tools/call",
        None,
        json!({"name": "echo", "arguments": {"message": "b"}}),
        &[("mcp-name", "=?base64?ZWNobw==?=")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // unsupported version
    let r = Raw::send(
        c.http
            .post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2099-01-01")
            .body("{}"),
    )
    .await;
    assert_eq!((r.status, r.rpc_code()), (400, -32022), "{}", r.body);
    // no GET or DELETE in 2026-07-28
    let r = Raw::send(
        c.http
            .get(&url)
            .header("accept", "text/event-stream")
            .header("mcp-protocol-version", "2026-07-28"),
    )
    .await;
    assert_eq!(r.status, 405);
    let r = Raw::send(
        c.http
            .delete(&url)
            .header("mcp-protocol-version", "2026-07-28"),
    )
    .await;
    assert_eq!(r.status, 405);
}

/// Call `tool` statelessly until its text is `want` (state reached through another request).
async fn eventually_text(url: &str, tool: &str, want: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = modern(url, "tools/call", Some(tool), json!({"arguments": {}})).await;
        let text = text_of(&r, &json!(1));
        if text == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{tool} still says {text:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modern_requests_are_translated_onto_a_held_session() {
    let p = Server::forward_http(&["--demo"]).await;
    let url = p.url();

    // server/discover comes from the held session's InitializeResult.
    let r = modern(&url, "server/discover", None, json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let d = &r.json()["result"];
    assert_eq!(d["supportedVersions"], json!(["2026-07-28"]), "{d}");
    assert_eq!(
        d["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
        "shadowcat-demo"
    );
    assert_eq!(
        d["capabilities"]["resources"]["subscribe"],
        json!(true),
        "{d}"
    );
    assert_eq!(d["resultType"], "complete");

    // Results gain resultType, the serverInfo stamp and (lists) cache hints.
    let r = modern(&url, "tools/list", None, json!({})).await;
    let res = &r.json()["result"];
    assert!(
        res["tools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "echo"),
        "{res}"
    );
    assert_eq!(
        (&res["resultType"], &res["ttlMs"], &res["cacheScope"]),
        (&json!("complete"), &json!(0), &json!("private")),
        "{res}"
    );
    assert_eq!(
        res["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
        "shadowcat-demo"
    );

    // Concurrent clients using the same JSON-RPC id never get each other's answers.
    let calls = (0..8).map(|i| {
        let url = url.clone();
        async move {
            let msg = format!("client {i}");
            let req = modern_request(
                &url,
                json!("same"),
                "tools/call",
                Some("echo"),
                json!({"arguments": {"message": msg}}),
                &[],
            );
            (msg, Raw::send(req).await)
        }
    });
    for (msg, r) in futures_util::future::join_all(calls).await {
        assert_eq!(text_of(&r, &json!("same")), msg);
    }

    // Progress reaches the request that asked for it, with the client's own token.
    let r = modern(
        &url,
        "tools/call",
        Some("slow"),
        json!({"arguments": {"steps": 3, "duration": 0.3}, "_meta": {"progressToken": "tok"}}),
    )
    .await;
    assert!(
        r.content_type().starts_with("text/event-stream"),
        "{}",
        r.content_type()
    );
    let msgs = r.messages();
    let progress: Vec<&Value> = msgs
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .collect();
    assert_eq!(progress.len(), 3, "{}", r.body);
    assert!(
        progress
            .iter()
            .all(|m| m["params"]["progressToken"] == "tok"),
        "{}",
        r.body
    );
    assert_eq!(text_of(&r, &json!(1)), "completed 3 steps");

    // Client notifications are absorbed; initialize does not exist in 2026-07-28; unknown
    // methods get the server's -32601 with 404.
    let n = json!({"jsonrpc":"2.0","method":"notifications/roots/list_changed","params":{}});
    let r = Raw::send(
        Raw::new(url.clone())
            .post_builder(n.to_string())
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "notifications/roots/list_changed"),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let r = modern(
        &url,
        "initialize",
        None,
        init_body(0, "2026-07-28")["params"].clone(),
    )
    .await;
    assert_eq!((r.status, r.rpc_code()), (400, -32600), "{}", r.body);
    let r = modern(&url, "nope/nothing", None, json!({})).await;
    assert_eq!((r.status, r.rpc_code()), (404, -32601), "{}", r.body);

    // subscriptions/listen: granted what the server offers, resource updates delivered.
    let listen = modern_request(
        &url,
        json!("listen-1"),
        "subscriptions/listen",
        None,
        json!({"notifications": {"resourceSubscriptions": ["demo://counter"], "promptsListChanged": true}}),
        &[],
    )
    .send()
    .await
    .unwrap();
    assert_eq!(listen.status(), 200);
    let mut events = SseStream::new(listen);
    let ack = events.next_json().await.expect("an acknowledgement");
    assert_eq!(
        ack["method"], "notifications/subscriptions/acknowledged",
        "{ack}"
    );
    assert_eq!(
        ack["params"]["notifications"],
        json!({"resourceSubscriptions": ["demo://counter"]}),
        "{ack}"
    );
    assert_eq!(
        ack["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
        "listen-1"
    );
    let r = modern(
        &url,
        "tools/call",
        Some("increment"),
        json!({"arguments": {}}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let upd = events.next_json().await.expect("a resource update");
    assert_eq!(upd["method"], "notifications/resources/updated", "{upd}");
    assert_eq!(upd["params"]["uri"], "demo://counter");
    assert_eq!(
        upd["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
        "listen-1"
    );
}

/// tests/interop/python_client.py (every feature of the demo server) in `mode`; panics with its
/// output unless every check passed.
fn python_client_script(url: &str, mode: &str) {
    interop_client_passes(
        "python_client.py",
        &["--url", url, "--mode", mode, "--concurrency", "4"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modern_clients_of_a_session_based_server_lose_nothing() {
    // Progress, sampling and elicitation (as multi-round-trip input), log messages (opted in
    // per request), resources, prompts and 4 concurrent sessions, through a held session.
    let p = Server::forward_http(&["--demo"]).await;
    for mode in ["2026-07-28", "auto"] {
        let url = p.url();
        tokio::task::spawn_blocking(move || python_client_script(&url, mode))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_modern_response_cancels_the_request_on_the_held_session() {
    let stdio = format!("stdio={}", python_stdio().join(" "));
    let p = Server::forward_http(&["--target", &stdio]).await;
    let url = format!("{}/servers/stdio/mcp", p.base);
    eventually_text(&url, "cancellations", "0").await;
    // The client gives up after a moment: its response closes.
    let gave_up = modern_request(
        &url,
        json!(2),
        "tools/call",
        Some("wait"),
        json!({"arguments": {"seconds": 60}}),
        &[],
    )
    .timeout(Duration::from_millis(1500))
    .send()
    .await;
    assert!(gave_up.is_err(), "the wait should not have finished");
    // The server saw `notifications/cancelled` for it (on the same held session).
    eventually_text(&url, "cancellations", "1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_based_clients_of_a_modern_only_server() {
    let py = Peer::python_named(PyEra::Modern, "py-modern-only").await;
    // Detected (`auto+`): server/discover answers, initialize is refused with -32022.
    let p = Server::forward_http(&["--target", &format!("auto+{}", py.url)]).await;
    let mut c = Raw::new(p.url());
    c.version = "2025-06-18";
    let init = c.initialize().await;
    let res = &init.json()["result"];
    assert_eq!(res["protocolVersion"], "2025-06-18", "{res}");
    assert_eq!(res["serverInfo"]["name"], "py-modern-only", "{res}");
    assert!(res.get("resultType").is_none(), "{res}");
    // ping and logging/setLevel are the proxy's to answer; tools go through.
    let r = c
        .post(json!({"jsonrpc":"2.0","id":1,"method":"ping"}))
        .await;
    assert_eq!(r.json()["result"], json!({}), "{}", r.body);
    let r = c
        .post(json!({"jsonrpc":"2.0","id":2,"method":"logging/setLevel","params":{"level":"info"}}))
        .await;
    assert_eq!(r.json()["result"], json!({}), "{}", r.body);
    let r = c
        .post(json!({"jsonrpc":"2.0","id":3,"method":"tools/list"}))
        .await;
    let list = &r.json()["result"];
    assert!(
        list.get("ttlMs").is_none() && list.get("resultType").is_none(),
        "{list}"
    );
    assert_eq!(c.call_tool(4, "whoami", json!({})).await, "py-modern-only");
    assert_eq!(c.call_tool(5, "cancellations", json!({})).await, "0");

    // notifications/cancelled closes the request's stateless POST: the server cancels it.
    let waiting = {
        let req = c.post_builder(
            json!({"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"wait","arguments":{"seconds":60}}})
                .to_string(),
        );
        tokio::spawn(Raw::send(req))
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let n = json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":6,"reason":"test"}});
        assert_eq!(c.post(n).await.status, 202);
        if c.call_tool(7, "cancellations", json!({})).await == "1" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the wait was never cancelled"
        );
    }
    let r = waiting.await.unwrap();
    assert!(r.body.contains("cancelled by the client"), "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_everything_streamable_behind_modern_clients() {
    let everything = Peer::everything("streamableHttp").await;
    let p = Server::forward_http(&["--target", &everything.url]).await;
    let url = p.url();
    let r = modern(&url, "server/discover", None, json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let name = r.json()["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]["name"].clone();
    assert!(name.as_str().is_some_and(|n| !n.is_empty()), "{}", r.body);
    let r = modern(
        &url,
        "tools/call",
        Some("echo"),
        json!({"arguments": {"message": "ts"}}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(text_of(&r, &json!(1)).contains("ts"), "{}", r.body);
    // The python SDK's 2026-07-28 client lists and calls the TS server's tools.
    let u = url.clone();
    let out = tokio::task::spawn_blocking(move || {
        Launch::interop("modern_peer.py")
            .args([
                "client",
                "--url",
                &u,
                "--mode",
                "2026-07-28",
                "--any-server",
            ])
            .run()
    })
    .await
    .unwrap();
    let stdout = lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("echo"),
        "{stdout}{}",
        lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_balances_stateless_requests_over_the_route() {
    let (a, b) = tokio::join!(
        Peer::python_named(PyEra::Dual, "a"),
        Peer::python_named(PyEra::Dual, "b")
    );
    let (_dir, cfg) = config_file(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
[[routes]]
path = "/mcp"
balance = "round-robin"
[[routes.upstreams]]
url = "{a}"
[[routes.upstreams]]
url = "{b}"
"#,
        a = a.url,
        b = b.url
    ));
    let gw = start_gateway(&["--config", &cfg], &[]).await;
    let mut seen = Vec::new();
    for _ in 0..6 {
        let r = modern(
            &gw.url(),
            "tools/call",
            Some("whoami"),
            json!({"arguments": {}}),
        )
        .await;
        seen.push(text_of(&r, &json!(1)));
    }
    let count = |n: &str| seen.iter().filter(|s| *s == n).count();
    assert_eq!((count("a"), count("b")), (3, 3), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_rules_apply_to_stateless_requests_relayed_or_translated() {
    let py = Peer::python(PyEra::Dual).await;
    let (dir, cfg) = config_file(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
[[routes]]
path = "/servers/relayed/mcp"
[[routes.upstreams]]
url = "{url}"
[[routes.rules]]
effect = "deny"
tools = ["add", "count"]
[[routes]]
path = "/servers/held/mcp"
[[routes.upstreams]]
{stdio}
[[routes.rules]]
effect = "deny"
tools = ["add", "count"]
"#,
        url = py.url,
        stdio = python_stdio_toml(),
    ));
    let tape = dir.path().join("rules.jsonl");
    let t = tape.display().to_string();
    let gw = start_gateway(&["--config", &cfg, "--record", &t], &[]).await;
    for route in ["relayed", "held"] {
        let url = format!("{}/servers/{route}/mcp", gw.base);
        let r = modern(&url, "tools/list", None, json!({})).await;
        assert_eq!(r.status, 200, "{route}: {}", r.body);
        let names: Vec<String> = r.messages()[0]["result"]["tools"]
            .as_array()
            .unwrap_or_else(|| panic!("{route}: {}", r.body))
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect();
        assert!(names.contains(&"echo".to_string()), "{route}: {names:?}");
        assert!(
            !names.iter().any(|n| n == "add" || n == "count"),
            "{route}: {names:?}"
        );
        let r = modern(
            &url,
            "tools/call",
            Some("add"),
            json!({"arguments": {"a": 1, "b": 2}}),
        )
        .await;
        assert_eq!(r.rpc_code(), -32003, "{route}: {}", r.body);
        assert!(
            r.body.contains("forbidden by the gateway"),
            "{route}: {}",
            r.body
        );
        let r = modern(
            &url,
            "tools/call",
            Some("echo"),
            json!({"arguments": {"message": "ok"}}),
        )
        .await;
        assert_eq!(text_of(&r, &json!(1)), "ok", "{route}");
    }
    assert_eq!(gw.terminate().await, Some(0));
    // The tape sees the lists as the client got them (the rules' filter runs before the
    // recorder, in every era): no hidden tool reaches it.
    let text = std::fs::read_to_string(&tape).unwrap();
    let lists: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["dir"] == "s2c" && v["message"]["result"]["tools"].is_array())
        .collect();
    assert!(lists.len() >= 2, "both routes' lists are taped: {text}");
    for l in &lists {
        let names: Vec<&str> = l["message"]["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|t| t["name"].as_str())
            .collect();
        assert!(names.contains(&"echo"), "{names:?}");
        assert!(
            !names.iter().any(|n| *n == "add" || *n == "count"),
            "a hidden tool reached the tape: {names:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_modern_answers_pass_through_rules_and_into_the_tape() {
    let py = Peer::python(PyEra::Dual).await;
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        r#"
[[rule]]
direction = "server"
kind = "response"
when = [{ pointer = "/result/content/0/text", contains = "hello" }]
action = "modify"
set = { "/result/content/0/text" = "seen by a rule" }
"#,
    )
    .unwrap();
    let tape = dir.path().join("modern.jsonl");
    let (rules, t) = (rules.display().to_string(), tape.display().to_string());
    let p = Server::forward_http(&["--target", &py.url, "--rules", &rules, "--record", &t]).await;
    let url = p.url();
    // Relayed as they are (the server serves 2026-07-28): the rule sees the answers.
    let call = |msg: &'static str| {
        modern(
            &url,
            "tools/call",
            Some("echo"),
            json!({"arguments": {"message": msg}}),
        )
    };
    let r = call("hello").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(text_of(&r, &json!(1)), "seen by a rule");
    let r = call("other").await;
    assert_eq!(text_of(&r, &json!(1)), "other");
    assert_eq!(p.terminate().await, Some(0));

    // The tape holds the requests and their answers.
    let text = std::fs::read_to_string(&tape).unwrap();
    let frames: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["type"] == "frame")
        .collect();
    let calls = frames
        .iter()
        .filter(|f| f["dir"] == "c2s" && f["message"]["method"] == "tools/call")
        .count();
    let answers: Vec<&Value> = frames
        .iter()
        .filter(|f| f["dir"] == "s2c" && f["message"]["id"] == json!(1))
        .collect();
    assert_eq!((calls, answers.len()), (2, 2), "{text}");
    assert_eq!(
        answers[0]["message"]["result"]["content"][0]["text"], "seen by a rule",
        "{text}"
    );
    assert_eq!(
        frames
            .iter()
            .find(|f| f["dir"] == "c2s")
            .map(|f| f["transport"]["headers"]["mcp-method"].clone()),
        Some(json!("tools/call")),
        "{text}"
    );
}

/// The status and first message of a `subscriptions/listen` answer (JSON, or the first event of
/// its stream, which stays open).
async fn listen_first(url: &str, subscriptions: Value) -> (u16, Value) {
    let resp = modern_request(
        url,
        json!("listen-1"),
        "subscriptions/listen",
        None,
        json!({"notifications": {"resourceSubscriptions": subscriptions}}),
        &[],
    )
    .send()
    .await
    .unwrap();
    let status = resp.status().as_u16();
    let sse = resp
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let first = if sse {
        SseStream::new(resp)
            .next_json()
            .await
            .expect("a first event")
    } else {
        serde_json::from_str(&resp.text().await.unwrap()).unwrap()
    };
    (status, first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_rules_apply_to_every_uri_of_a_listen_request_relayed_or_translated() {
    // A 2026-era upstream: another proxy serving the demo server (it answers server/discover).
    let inner = Server::forward_http(&["--demo"]).await;
    let (_dir, cfg) = config_file(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
[[routes]]
path = "/servers/relayed/mcp"
[[routes.upstreams]]
url = "{url}"
[[routes.rules]]
effect = "deny"
resources = ["demo://counter"]
[[routes]]
path = "/servers/held/mcp"
[[routes.upstreams]]
command = "{bin}"
args = ["demo-server"]
[[routes.rules]]
effect = "deny"
resources = ["demo://counter"]
"#,
        url = inner.url(),
        bin = super::harness::bin(),
    ));
    let gw = start_gateway(&["--config", &cfg], &[]).await;
    for route in ["relayed", "held"] {
        let url = format!("{}/servers/{route}/mcp", gw.base);
        // One denied URI among allowed ones refuses the whole request, naming it.
        let (status, r) = listen_first(&url, json!(["demo://readme", "demo://counter"])).await;
        assert_eq!(
            (status, &r["error"]["code"]),
            (200, &json!(-32003)),
            "{route}: {r}"
        );
        let msg = r["error"]["message"].as_str().unwrap();
        assert!(msg.contains("resource `demo://counter`"), "{route}: {msg}");
        assert_eq!(r["id"], "listen-1", "{route}: {r}");
        // A list the rules cannot read is refused too.
        let (status, r) = listen_first(&url, json!("demo://counter")).await;
        assert_eq!(
            (status, &r["error"]["code"]),
            (400, &json!(-32602)),
            "{route}: {r}"
        );
        // Allowed URIs only: acknowledged as before.
        let (status, ack) = listen_first(&url, json!(["demo://readme"])).await;
        assert_eq!(status, 200, "{route}: {ack}");
        assert_eq!(
            ack["method"], "notifications/subscriptions/acknowledged",
            "{route}: {ack}"
        );
        assert_eq!(
            ack["params"]["notifications"],
            json!({"resourceSubscriptions": ["demo://readme"]}),
            "{route}: {ack}"
        );
    }
}
