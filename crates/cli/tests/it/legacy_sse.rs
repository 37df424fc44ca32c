//! The legacy HTTP+SSE transport (2024-11-05) on both sides of the proxy, and upstream transport
//! detection. Peers: the official Python SDK (`mcp` 2.3: SSE client and SSE server, from
//! tests/interop/), `@modelcontextprotocol/server-everything` in `sse` mode (installed by
//! scripts/node-peers.sh when missing), and a raw HTTP+SSE client written here.

use super::gateway_support::{alice_and_bob_with, demo_route};
use super::harness::{
    Launch, Raw, Reply, Server, SseEvent, SseStream, WAIT, bin, free_port, init_body, run,
    wait_descendants,
};
use super::peers::{PEER_START, Peer};
use super::python::interop_client_passes;
use serde_json::{Value, json};
use std::time::Duration;

/// tests/interop/python_sse_server.py: an HTTP+SSE-only server (tools echo, add, slow).
async fn python_sse() -> Peer {
    let port = free_port();
    let process = Launch::interop("python_sse_server.py")
        .args(["--port", &port.to_string()])
        .label("the python HTTP+SSE server")
        .port(port)
        .within(PEER_START)
        .start()
        .await;
    Peer {
        process,
        url: format!("http://127.0.0.1:{port}/sse"),
    }
}

/// A raw HTTP+SSE client: GET the SSE URL, POST to the endpoint it names, read `message` events.
pub(super) struct Legacy {
    http: reqwest::Client,
    base: String,
    events: SseStream,
    /// The `endpoint` event's data.
    pub endpoint: String,
}

impl Legacy {
    pub(super) async fn connect(base: &str, path: &str) -> Legacy {
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        Legacy::connect_with(http, base, path).await
    }

    /// [`Legacy::connect`] with a client of the caller's (default headers: credentials).
    pub(super) async fn connect_with(http: reqwest::Client, base: &str, path: &str) -> Legacy {
        let resp = tokio::time::timeout(
            WAIT,
            http.get(format!("{base}{path}"))
                .header("accept", "text/event-stream")
                .send(),
        )
        .await
        .expect("GET timeout")
        .expect("GET");
        assert_eq!(resp.status(), 200, "GET {path}");
        let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        let mut c = Legacy {
            http,
            base: base.to_string(),
            events: SseStream::new(resp),
            endpoint: String::new(),
        };
        let first = c.next_event().await.expect("an endpoint event");
        assert_eq!(first.event.as_deref(), Some("endpoint"), "{first:?}");
        c.endpoint = first.data.unwrap();
        c
    }

    /// The next event; `None` when the stream ended.
    pub(super) async fn next_event(&mut self) -> Option<SseEvent> {
        self.events.next_event().await
    }

    /// The next `message` event's JSON.
    pub(super) async fn next_message(&mut self) -> Value {
        loop {
            let ev = self.next_event().await.expect("stream ended");
            if ev.event.as_deref() == Some("message") {
                return serde_json::from_str(ev.data.as_deref().unwrap()).expect("JSON data");
            }
        }
    }

    pub(super) async fn post_raw(&self, endpoint: &str, content_type: &str, body: String) -> Reply {
        Raw::send(
            self.http
                .post(format!("{}{endpoint}", self.base))
                .header("content-type", content_type)
                .body(body),
        )
        .await
    }

    pub(super) async fn post(&self, body: Value) -> Reply {
        self.post_raw(&self.endpoint, "application/json", body.to_string())
            .await
    }

    /// POST a request (202 Accepted) and read its reply from the stream.
    pub(super) async fn request(&mut self, body: Value) -> Value {
        let r = self.post(body.clone()).await;
        assert_eq!((r.status, r.body.as_str()), (202, "Accepted"), "{body}");
        loop {
            let m = self.next_message().await;
            if m["id"] == body["id"] && m.get("method").is_none() {
                return m;
            }
        }
    }

    pub(super) async fn initialize(&mut self) -> Value {
        let mut init = init_body(0, "2024-11-05");
        init["params"]["clientInfo"]["name"] = json!("raw-legacy");
        let r = self.request(init).await;
        assert!(r["result"]["protocolVersion"].is_string(), "{r}");
        let n = self
            .post(json!({"jsonrpc":"2.0","method":"notifications/initialized"}))
            .await;
        assert_eq!(n.status, 202, "{}", n.body);
        r
    }

    pub(super) async fn call(&mut self, id: i64, tool: &str, args: Value) -> String {
        let r = self
            .request(json!({"jsonrpc":"2.0","id":id,"method":"tools/call",
                "params":{"name":tool,"arguments":args}}))
            .await;
        r["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or_else(|| panic!("no text in {r}"))
            .to_string()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sse_client_through_forward_http() {
    let p = Server::forward_http(&["--demo"]).await;
    let url = format!("{}/sse", p.base);
    tokio::task::spawn_blocking(move || {
        interop_client_passes(
            "python_sse_client.py",
            &["--url", &url, "--concurrency", "4"],
        )
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_front_endpoints_statuses_and_session_end() {
    let named = format!("named={} demo-server", bin());
    let p = Server::forward_http(&["--demo", "--target", &named]).await;
    let base = p.base.clone();

    let mut a = Legacy::connect(&base, "/sse").await;
    assert!(
        a.endpoint.starts_with("/message?sessionId="),
        "{}",
        a.endpoint
    );
    let init = a.initialize().await;
    assert_eq!(init["result"]["serverInfo"]["name"], "shadowcat-demo");
    assert_eq!(a.call(1, "echo", json!({"message":"héllo"})).await, "héllo");
    assert_eq!(a.call(2, "add", json!({"a":2,"b":3})).await, "5");

    let mut b = Legacy::connect(&base, "/servers/named/sse").await;
    assert!(
        b.endpoint.starts_with("/servers/named/message?sessionId="),
        "{}",
        b.endpoint
    );
    b.initialize().await;
    assert_eq!(b.call(1, "echo", json!({"message":"b"})).await, "b");
    wait_descendants(p.pid(), 2).await;

    let sid = a.endpoint.split_once('=').unwrap().1.to_string();
    let ping = json!({"jsonrpc":"2.0","id":9,"method":"ping"}).to_string();
    let check = |r: &Reply, status: u16, code: i64, what: &str| {
        assert_eq!(r.status, status, "{what}: {}", r.body);
        assert_eq!(r.rpc_code(), code, "{what}");
    };
    let r = a
        .post_raw("/message", "application/json", ping.clone())
        .await;
    check(&r, 400, -32600, "no sessionId");
    let r = a
        .post_raw("/message?sessionId=0123", "application/json", ping.clone())
        .await;
    check(&r, 404, -32600, "unknown session");
    let other_route = format!("/servers/named/message?sessionId={sid}");
    let r = a
        .post_raw(&other_route, "application/json", ping.clone())
        .await;
    check(&r, 404, -32600, "session of another route");
    let r = a
        .post_raw(&a.endpoint, "application/json", "{not json".into())
        .await;
    check(&r, 400, -32700, "malformed JSON");
    let batch = format!("[{ping}]");
    let r = a.post_raw(&a.endpoint, "application/json", batch).await;
    check(&r, 400, -32600, "batch");
    let r = a.post_raw(&a.endpoint, "text/plain", ping.clone()).await;
    check(&r, 415, -32600, "content type");
    let twice = a
        .http
        .post(format!("{base}{}", a.endpoint))
        .header("content-type", "application/json")
        .header("mcp-protocol-version", "2024-11-05")
        .header("mcp-protocol-version", "2025-06-18")
        .body(ping.clone());
    let r = Raw::send(twice).await;
    check(&r, 400, -32600, "a repeated MCP header on /message");
    assert!(r.body.contains("`mcp-protocol-version`"), "{}", r.body);
    let evil = a
        .http
        .post(format!("{base}{}", a.endpoint))
        .header("content-type", "application/json")
        .header("origin", "http://evil.example")
        .body(ping.clone());
    check(&Raw::send(evil).await, 403, -32600, "bad Origin on POST");
    let evil = a
        .http
        .get(format!("{base}/sse"))
        .header("origin", "http://evil.example");
    check(&Raw::send(evil).await, 403, -32600, "bad Origin on GET");
    let wrong = a
        .http
        .get(format!("{base}/sse"))
        .header("accept", "application/json");
    check(&Raw::send(wrong).await, 406, -32600, "Accept");
    let r = Raw::send(a.http.get(format!("{base}/servers/nope/sse"))).await;
    check(&r, 404, -32600, "unknown target");
    let r = Raw::send(a.http.post(format!("{base}/sse")).body(ping.clone())).await;
    check(&r, 405, -32600, "POST /sse");
    assert_eq!(r.headers["allow"], "GET");
    let r = Raw::send(a.http.get(format!("{base}{}", a.endpoint))).await;
    check(&r, 405, -32600, "GET /message");
    // The session survived all of that.
    assert_eq!(
        a.call(3, "echo", json!({"message":"still here"})).await,
        "still here"
    );

    // Closing the stream ends the session: its child is gone and its endpoint is unknown.
    let endpoint = a.endpoint.clone();
    drop(a);
    wait_descendants(p.pid(), 1).await;
    let r = b.post_raw(&endpoint, "application/json", ping).await;
    check(&r, 404, -32600, "ended session");
    assert_eq!(b.call(2, "echo", json!({"message":"b2"})).await, "b2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_sessions_are_recorded_in_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite:{}", dir.path().join("sessions.db").display());
    let p = Server::forward_http(&["--demo", "--store", &store]).await;
    let mut c = Legacy::connect(&p.base, "/sse").await;
    c.initialize().await;
    let id = c.endpoint.split_once('=').unwrap().1.to_string();
    let list = || {
        let out = run(&["session", "list", "--store", &store, "--json"]);
        assert!(out.status.success());
        serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    let row = loop {
        let rows = list();
        if let Some(r) = rows.iter().find(|r| r["id"] == json!(id))
            && r["protocol_version"].is_string()
        {
            break r.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "{rows:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(row["status"], "active", "{row}");
    assert_eq!(row["route"], "sse:", "{row}");
    assert_eq!(row["client_info"]["name"], "raw-legacy", "{row}");
    drop(c);
    loop {
        let rows = list();
        if rows
            .iter()
            .any(|r| r["id"] == json!(id) && r["status"] == "ended")
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not ended: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamable_client_to_a_python_sse_upstream() {
    let mut py = python_sse().await;
    let target = format!("sse+{}", py.url);
    let p = Server::forward_http(&["--target", &target]).await;
    let mut c = Raw::new(p.url());
    let init = c.initialize().await;
    assert_eq!(
        init.json()["result"]["serverInfo"]["name"],
        "python-sse-interop"
    );
    let tools = c
        .post(json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}))
        .await;
    let msgs = tools.messages();
    let names: Vec<&str> = msgs[0]["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"echo") && names.contains(&"slow"),
        "{names:?}"
    );
    assert_eq!(c.call_tool(2, "echo", json!({"message":"hi"})).await, "hi");
    assert_eq!(c.call_tool(3, "add", json!({"a":2,"b":3})).await, "5");

    // A legacy client through the proxy to the same legacy server.
    let mut l = Legacy::connect(&p.base, "/sse").await;
    l.initialize().await;
    assert_eq!(
        l.call(1, "echo", json!({"message":"both legacy"})).await,
        "both legacy"
    );

    // The upstream dies while a request is in flight (the tool is running: its log message
    // came): the client gets a JSON-RPC error.
    let slow = c
        .post_builder(
            json!({"jsonrpc":"2.0","id":4,"method":"tools/call",
                "params":{"name":"slow","arguments":{"seconds":60}}})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    let mut events = SseStream::new(slow);
    let log = events.next_json().await.expect("the tool's log message");
    assert_eq!(log["method"], "notifications/message", "{log}");
    py.process.kill().await;
    let reply = events.next_matching(|m| m["id"] == json!(4)).await;
    assert_eq!(reply["error"]["code"], -32000, "{reply}");
    // The legacy client's stream ends with its session.
    while l.next_event().await.is_some() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_everything_sse_detected_and_relayed_both_ways() {
    let everything = Peer::everything("sse").await;
    // server-everything answers `POST /sse` with 404: detection falls back to HTTP+SSE.
    let target = format!("everything=auto+{}", everything.url);
    let p = Server::forward_http(&["--target", &target]).await;
    let mut c = Raw::new(format!("{}/servers/everything/mcp", p.base));
    let init = c.initialize().await;
    assert!(init.json()["result"]["serverInfo"]["name"].is_string());
    let echoed = c.call_tool(1, "echo", json!({"message":"ping"})).await;
    assert!(echoed.contains("ping"), "{echoed}");

    let mut l = Legacy::connect(&p.base, "/servers/everything/sse").await;
    l.initialize().await;
    let echoed = l.call(1, "echo", json!({"message":"legacy ping"})).await;
    assert!(echoed.contains("legacy ping"), "{echoed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_detection_picks_sse_for_a_legacy_server_and_streamable_for_the_demo() {
    let py = python_sse().await;
    let demo = Server::demo_http().await;
    let legacy = format!("legacy={}", py.url);
    let modern = format!("modern={}", demo.url());
    let p = Server::forward_http(&[
        "--upstream-transport",
        "auto",
        "--target",
        &legacy,
        "--target",
        &modern,
    ])
    .await;
    // Twice each: the first session probes, the second uses the cached answer.
    for round in 0..2 {
        let mut c = Raw::new(format!("{}/servers/legacy/mcp", p.base));
        let init = c.initialize().await;
        assert_eq!(
            init.json()["result"]["serverInfo"]["name"],
            "python-sse-interop"
        );
        let m = format!("legacy {round}");
        assert_eq!(c.call_tool(1, "echo", json!({"message": m})).await, m);

        let mut c = Raw::new(format!("{}/servers/modern/mcp", p.base));
        let init = c.initialize().await;
        assert_eq!(
            init.json()["result"]["serverInfo"]["name"],
            "shadowcat-demo"
        );
        let m = format!("modern {round}");
        assert_eq!(c.call_tool(1, "echo", json!({"message": m})).await, m);
    }

    // The stdio front detects too (`--url auto+…`).
    let mut stdio = Launch::shadowcat(&["forward", "stdio", "--url", &format!("auto+{}", py.url)])
        .stdin_piped()
        .stdout_piped()
        .start()
        .await;
    stdio.send(&init_body(1, "2024-11-05")).await;
    let v = stdio.next_json().await;
    assert_eq!(
        v["result"]["serverInfo"]["name"], "python-sse-interop",
        "{v}"
    );
    stdio.close_stdin();
    let status = stdio.wait().await;
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_serves_http_sse_per_route_bound_to_the_principal() {
    use super::gateway_support::{client, config_file, start_gateway};
    let routes = format!(
        "{}{}",
        demo_route("/mcp", ""),
        demo_route("/servers/docs/mcp", "scopes = [\"docs\"]")
    );
    let (_dir, cfg) = config_file(&alice_and_bob_with("", "scopes = [\"docs\"]", &routes));
    let gw = start_gateway(&["--config", &cfg], &[]).await;
    let base = gw.base.clone();
    let alice = client(String::new(), Some("alice-key")).http;
    let bob = client(String::new(), Some("bob-key")).http;

    // Admission applies to the legacy endpoints: no credentials, or missing route scopes.
    let anon = reqwest::Client::builder().no_proxy().build().unwrap();
    let r = Raw::send(
        anon.get(format!("{base}/sse"))
            .header("accept", "text/event-stream"),
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.body);
    let r = Raw::send(
        alice
            .get(format!("{base}/servers/docs/sse"))
            .header("accept", "text/event-stream"),
    )
    .await;
    assert_eq!(r.status, 403, "the route's scopes apply: {}", r.body);

    // Alice's session works; the gateway placed it on the route's upstream.
    let mut a = Legacy::connect_with(alice.clone(), &base, "/sse").await;
    assert!(
        a.endpoint.starts_with("/message?sessionId="),
        "{}",
        a.endpoint
    );
    let init = a.initialize().await;
    assert_eq!(init["result"]["serverInfo"]["name"], "shadowcat-demo");
    assert_eq!(a.call(1, "echo", json!({"message": "gw"})).await, "gw");

    // Bob may not post into it: 404, as for an unknown session.
    let ping = json!({"jsonrpc":"2.0","id":9,"method":"ping"});
    let r = Raw::send(
        bob.post(format!("{base}{}", a.endpoint))
            .header("content-type", "application/json")
            .body(ping.to_string()),
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.body);
    // Its id is not a Streamable session either.
    let sid = a.endpoint.rsplit('=').next().unwrap().to_string();
    let r = Raw::send(
        alice
            .post(format!("{base}/mcp"))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", &sid)
            .header("mcp-protocol-version", "2025-06-18")
            .body(ping.to_string()),
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.body);
    // Bob has his own, on the route his scopes allow.
    let mut b = Legacy::connect_with(bob, &base, "/servers/docs/sse").await;
    assert!(
        b.endpoint.starts_with("/servers/docs/message?sessionId="),
        "{}",
        b.endpoint
    );
    b.initialize().await;
    assert_eq!(b.call(2, "add", json!({"a": 1, "b": 2})).await, "3");
    assert_eq!(
        a.call(3, "echo", json!({"message": "still"})).await,
        "still"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_front_refuses_a_request_id_still_in_flight() {
    let p = Server::forward_http(&["--demo"]).await;
    let mut a = Legacy::connect(&p.base, "/sse").await;
    let mut init = init_body(0, "2024-11-05");
    init["params"]["capabilities"] = json!({"elicitation": {}});
    assert!(a.request(init).await["result"].is_object());
    let n = a
        .post(json!({"jsonrpc":"2.0","method":"notifications/initialized"}))
        .await;
    assert_eq!(n.status, 202, "{}", n.body);
    // Request 5 stays in flight until the client answers the server's elicitation.
    let call = json!({"jsonrpc":"2.0","id":5,"method":"tools/call",
        "params":{"name":"elicit","arguments":{"message":"who?"}}});
    assert_eq!(a.post(call).await.status, 202);
    let ask = a.next_message().await;
    assert_eq!(ask["method"], "elicitation/create", "{ask}");
    // A second request with id 5 is refused on its POST (nothing goes on the stream).
    let r = a
        .post(json!({"jsonrpc":"2.0","id":5,"method":"tools/call",
            "params":{"name":"echo","arguments":{"message":"again"}}}))
        .await;
    assert_eq!((r.status, r.rpc_code()), (400, -32600), "{}", r.body);
    assert!(
        r.body
            .contains("request id 5 is already in flight in this session"),
        "{}",
        r.body
    );
    // The first request is answered once the client answers, and it is the only answer to 5.
    let answer = json!({"jsonrpc":"2.0","id":ask["id"],
        "result":{"action":"accept","content":{"name":"Ann"}}});
    assert_eq!(a.post(answer).await.status, 202);
    let reply = a.next_message().await;
    assert_eq!(reply["id"], json!(5), "{reply}");
    assert_eq!(
        reply["result"]["content"][0]["text"], "elicited: accept name=Ann",
        "{reply}"
    );
    // Answered: id 5 is free again.
    assert_eq!(a.call(5, "echo", json!({"message":"ok"})).await, "ok");
}
