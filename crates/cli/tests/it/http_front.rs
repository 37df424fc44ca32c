//! The Streamable HTTP front: statuses, headers and JSON-RPC error codes for good and bad input.

use super::harness::SseStream;
use super::harness::{Raw, Server, init_body};
use serde_json::json;

async fn proxy() -> Server {
    Server::forward_http(&["--demo", "--max-message", "4096"]).await
}

#[tokio::test]
async fn bad_input_gets_exact_statuses() {
    let p = proxy().await;
    let mut c = Raw::new(p.url());
    c.initialize().await;

    // malformed JSON → 400 + parse error
    let r = Raw::send(c.post_builder("{not json")).await;
    assert_eq!((r.status, r.rpc_code()), (400, -32700), "{}", r.body);
    // valid JSON, not JSON-RPC → 400 + invalid request
    let r = c.post(json!({"hello": "world"})).await;
    assert_eq!((r.status, r.rpc_code()), (400, -32600), "{}", r.body);
    // wrong Content-Type → 415
    let wrong_type = c
        .http
        .post(&c.url)
        .header("content-type", "text/plain")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", c.session.clone().unwrap())
        .body("{}");
    let r = Raw::send(wrong_type).await;
    assert_eq!(r.status, 415, "{}", r.body);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("application/json")
    );
    // Accept missing text/event-stream → 406
    let json_only = c
        .http
        .post(&c.url)
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .header("mcp-session-id", c.session.clone().unwrap())
        .body(json!({"jsonrpc":"2.0","id":5,"method":"ping"}).to_string());
    let r = Raw::send(json_only).await;
    assert_eq!(r.status, 406, "{}", r.body);
    // oversized body → 413
    let big = json!({"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"echo","arguments":{"message":"x".repeat(5000)}}});
    let r = c.post(big).await;
    assert_eq!(r.status, 413, "{}", r.body);
    // unknown session id → 404
    let mut other = Raw::new(p.url());
    other.session = Some("0123456789abcdef0123456789abcdef".into());
    let r = other
        .post(json!({"jsonrpc":"2.0","id":7,"method":"tools/list"}))
        .await;
    assert_eq!(r.status, 404, "{}", r.body);
    // missing session id on a non-initialize request → 400
    let anon = Raw::new(p.url());
    let r = anon
        .post(json!({"jsonrpc":"2.0","id":8,"method":"tools/list"}))
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("Mcp-Session-Id"), "{}", r.body);
    // bad Origin → 403; a localhost origin is fine
    let r = Raw::send(
        c.post_builder(json!({"jsonrpc":"2.0","id":9,"method":"ping"}).to_string())
            .header("origin", "https://evil.example"),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = Raw::send(
        c.post_builder(json!({"jsonrpc":"2.0","id":10,"method":"ping"}).to_string())
            .header("origin", "http://localhost:5173"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // unsupported protocol version → 400
    let mut old = Raw::new(p.url());
    old.session = c.session.clone();
    old.version = "1999-01-01";
    let r = old
        .post(json!({"jsonrpc":"2.0","id":11,"method":"ping"}))
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("1999-01-01"));
    // batch in 2025-06-18 → 400
    let batch = json!([{"jsonrpc":"2.0","id":12,"method":"ping"},{"jsonrpc":"2.0","id":13,"method":"ping"}]);
    let r = c.post(batch).await;
    assert_eq!((r.status, r.rpc_code()), (400, -32600), "{}", r.body);
    assert!(r.body.contains("batch"), "{}", r.body);
    // wrong method → 405 with Allow
    let r = Raw::send(c.http.put(&c.url)).await;
    assert_eq!(r.status, 405);
    assert!(r.headers.get("allow").is_some());
    // unknown path → 404
    let r = Raw::send(c.http.post(format!("{}/nope", p.base))).await;
    assert_eq!(r.status, 404);
    // GET without Accept: text/event-stream → 406
    let get = c.http.get(&c.url).header("accept", "application/json");
    let r = Raw::send(get.header("mcp-session-id", c.session.clone().unwrap())).await;
    assert_eq!(r.status, 406, "{}", r.body);
    // the session still works after all that
    assert_eq!(
        c.call_tool(20, "echo", json!({"message":"still here"}))
            .await,
        "still here"
    );
}

#[tokio::test]
async fn batches_work_in_2025_03_26() {
    let p = proxy().await;
    let mut c = Raw::new(p.url());
    c.version = "2025-03-26";
    c.initialize().await;
    let batch = json!([
        {"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"add","arguments":{"a":2,"b":3}}},
        {"jsonrpc":"2.0","method":"notifications/roots/list_changed"},
        {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"message":"b"}}}
    ]);
    let r = c.post(batch).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let msgs = r.messages();
    assert_eq!(msgs.len(), 2, "{}", r.body);
    let a = msgs
        .iter()
        .find(|m| m["id"] == json!("a"))
        .expect("reply to string id \"a\"");
    assert_eq!(a["result"]["content"][0]["text"], "5");
    let b = msgs
        .iter()
        .find(|m| m["id"] == json!(2))
        .expect("reply to integer id 2");
    assert_eq!(b["result"]["content"][0]["text"], "b");
}

#[tokio::test]
async fn notifications_get_202_and_ids_keep_their_type() {
    let p = proxy().await;
    let mut c = Raw::new(p.url());
    c.initialize().await;
    let r = c
        .post(json!({"jsonrpc":"2.0","method":"notifications/roots/list_changed"}))
        .await;
    assert_eq!((r.status, r.body.as_str()), (202, ""));
    let r = c
        .post(json!({"jsonrpc":"2.0","id":"0","method":"ping"}))
        .await;
    assert_eq!(r.messages()[0]["id"], json!("0"));
    let r = c
        .post(json!({"jsonrpc":"2.0","id":0,"method":"ping"}))
        .await;
    assert_eq!(r.messages()[0]["id"], json!(0));
}

#[tokio::test]
async fn progress_streams_as_sse_before_the_reply() {
    let p = proxy().await;
    let mut c = Raw::new(p.url());
    c.initialize().await;
    let r = c
        .post(
            json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{
            "name":"slow","arguments":{"steps":3,"duration":0.3},"_meta":{"progressToken":"tok"}}}),
        )
        .await;
    assert!(
        r.content_type().starts_with("text/event-stream"),
        "{:?}",
        r.headers
    );
    let msgs = r.messages();
    let progress: Vec<_> = msgs
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .collect();
    assert_eq!(progress.len(), 3, "{}", r.body);
    assert_eq!(
        msgs.last().unwrap()["result"]["content"][0]["text"],
        "completed 3 steps"
    );
    // without a progress token the answer is plain JSON
    let r = c.post(json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"slow","arguments":{"steps":2,"duration":0.1}}})).await;
    assert!(
        r.content_type().starts_with("application/json"),
        "{:?}",
        r.headers
    );
}

#[tokio::test]
async fn session_ids_are_proxy_minted_and_deleted_sessions_are_gone() {
    let demo = Server::demo_http().await;
    let p = Server::forward_http(&["--target", &demo.url()]).await;
    let mut c = Raw::new(p.url());
    c.initialize().await;
    let sid = c.session.clone().unwrap();
    assert_eq!(sid.len(), 32);
    assert!(sid.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(
        c.call_tool(1, "echo", json!({"message":"via http"})).await,
        "via http"
    );
    // The upstream never saw our id: presenting it directly to the upstream fails.
    let mut direct = Raw::new(demo.url());
    direct.session = Some(sid.clone());
    let r = direct
        .post(json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}))
        .await;
    assert!(
        r.status == 404 || r.status == 400 || r.status == 401,
        "upstream accepted the proxy id: {}",
        r.status
    );
    // DELETE ends it; afterwards 404
    let r = c.delete().await;
    assert_eq!(r.status, 204);
    let r = c
        .post(json!({"jsonrpc":"2.0","id":2,"method":"tools/list"}))
        .await;
    assert_eq!(r.status, 404);
    let r = c.delete().await;
    assert_eq!(r.status, 404);
    // initialize with a fresh session still works
    let mut again = Raw::new(p.url());
    again.initialize().await;
    assert_ne!(again.session, Some(sid));
}

#[tokio::test]
async fn named_targets_and_session_binding_to_routes() {
    let demo = Server::demo_http().await;
    let http_target = format!("remote={}", demo.url());
    let stdio_target = format!("local={} demo-server", super::harness::bin());
    let p = Server::forward_http(&["--target", &http_target, "--target", &stdio_target]).await;
    // no default target configured → /mcp is 404 with a clear message
    let r = Raw::new(p.url()).post(init_body(1, "2025-06-18")).await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(r.body.contains("/servers/NAME/mcp"));
    let mut remote = Raw::new(format!("{}/servers/remote/mcp", p.base));
    remote.initialize().await;
    assert_eq!(remote.call_tool(1, "add", json!({"a":1,"b":2})).await, "3");
    let mut local = Raw::new(format!("{}/servers/local/mcp", p.base));
    local.initialize().await;
    assert_eq!(
        local.call_tool(1, "echo", json!({"message":"local"})).await,
        "local"
    );
    // a session id belongs to its route
    let mut cross = Raw::new(format!("{}/servers/local/mcp", p.base));
    cross.session = remote.session.clone();
    let r = cross
        .post(json!({"jsonrpc":"2.0","id":3,"method":"tools/list"}))
        .await;
    assert_eq!(r.status, 404);
    let r = Raw::new(format!("{}/servers/nope/mcp", p.base))
        .post(init_body(1, "2025-06-18"))
        .await;
    assert_eq!(r.status, 404);
    assert!(r.body.contains("nope"));
}

#[tokio::test]
async fn absolute_form_uris_select_the_upstream() {
    let demo = Server::demo_http().await;
    let via = |p: &Server| {
        // reqwest sends absolute-form request targets when talking to an HTTP proxy.
        reqwest::Client::builder()
            .proxy(reqwest::Proxy::http(&p.base).unwrap())
            .build()
            .unwrap()
    };
    // The demo listens on loopback: refused unless allowed, by address or by name.
    let closed = Server::forward_http(&["--allow-absolute-uri"]).await;
    let mut c = Raw::new(demo.url());
    c.http = via(&closed);
    let r = c.post(init_body(1, "2025-06-18")).await;
    assert_eq!((r.status, r.rpc_code()), (403, -32600), "{}", r.body);
    assert!(
        r.body.contains("loopback") && r.body.contains("--allow-destination"),
        "{}",
        r.body
    );
    let mut by_name = Raw::new(demo.url().replace("127.0.0.1", "localhost"));
    by_name.http = via(&closed);
    let r = by_name.post(init_body(1, "2025-06-18")).await;
    assert_eq!(r.status, 403, "{}", r.body);
    let p =
        Server::forward_http(&["--allow-absolute-uri", "--allow-destination", "127.0.0.0/8"]).await;
    let mut c = Raw::new(demo.url());
    c.http = via(&p);
    c.initialize().await;
    assert_eq!(
        c.call_tool(1, "echo", json!({"message":"absolute"})).await,
        "absolute"
    );
    // without the flag, there is no default target at /mcp: the request is refused, not relayed
    let plain = Server::forward_http(&["--target", "named=http://127.0.0.1:9/mcp"]).await;
    let mut c = Raw::new(demo.url());
    c.http = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(&plain.base).unwrap())
        .build()
        .unwrap();
    let r = c.post(init_body(1, "2025-06-18")).await;
    assert_eq!(r.status, 404, "{}", r.body);
}

#[tokio::test]
async fn session_limit_answers_503_with_retry_after() {
    let p = Server::forward_http(&["--demo", "--max-sessions", "2"]).await;
    let mut a = Raw::new(p.url());
    a.initialize().await;
    let mut b = Raw::new(p.url());
    b.initialize().await;
    let r = Raw::new(p.url()).post(init_body(1, "2025-06-18")).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.headers.get("retry-after").unwrap(), "5");
    assert_eq!(r.json()["id"], json!(1));
    a.delete().await;
    let mut c = Raw::new(p.url());
    c.initialize().await;
}

/// A dead upstream gets the same answer whatever its kind — an unreachable URL, or a command
/// that cannot start: `502` with a JSON-RPC error carrying the request id, and no session id
/// (no session outlives a failed `initialize`). The missing program is reported at start.
#[tokio::test]
async fn unreachable_upstream_gives_502_with_the_request_id() {
    let p = Server::forward_http(&[
        "--target",
        "http://127.0.0.1:9/mcp",
        "--target",
        "gone=/nonexistent/shadowcat-test-server",
    ])
    .await;
    assert!(
        p.process.logged("program is not found"),
        "a missing program is reported at start"
    );
    let gone = format!("{}/servers/gone/mcp", p.base);
    for endpoint in [p.url(), gone.clone()] {
        assert!(
            p.process.logged(&format!("serving MCP at {endpoint}")),
            "the full URL of every endpoint is printed at start: {endpoint}"
        );
    }
    for (url, named) in [(p.url(), "127.0.0.1:9"), (gone, "shadowcat-test-server")] {
        let r = Raw::new(url).post(init_body(42, "2025-06-18")).await;
        assert_eq!(r.status, 502, "{}", r.body);
        assert!(
            r.headers.get("mcp-session-id").is_none(),
            "a failed initialize hands out no session id"
        );
        assert_eq!(r.json()["id"], json!(42));
        assert_eq!(r.rpc_code(), -32000);
        assert!(r.body.contains(named), "{}", r.body);
    }
}

/// Send `head` + `body` on a new connection and read until the server closes it.
async fn raw_exchange(base: &str, head: &str, body: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(head.as_bytes()).await.expect("write head");
    tcp.write_all(body).await.expect("write body");
    let mut out = Vec::new();
    tokio::time::timeout(super::harness::WAIT, tcp.read_to_end(&mut out))
        .await
        .expect("the server closes the connection after a refused body")
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

/// The head of the response (status line and headers), lower-cased.
fn head_of(response: &str) -> String {
    response
        .split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// A body the server stops reading (413 at the limit; 415 before reading it) leaves the
/// connection unusable: the response says `Connection: close` and the connection is closed,
/// and a client's next request on a new connection works.
#[tokio::test]
async fn a_refused_body_closes_the_connection_and_says_so() {
    let p = proxy().await; // --max-message 4096
    let host = p.base.trim_start_matches("http://").to_string();
    // 413: announces 1 MB, sends 8 KiB (over the limit) and waits for the answer.
    let head = format!(
        "POST /mcp HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nContent-Length: 1000000\r\n\r\n"
    );
    let r = raw_exchange(&p.base, &head, &[b'x'; 8192]).await;
    let h = head_of(&r);
    assert!(h.starts_with("http/1.1 413"), "{r}");
    assert!(h.contains("\r\nconnection: close"), "{r}");
    // 415: refused before the body is read at all.
    let head = format!(
        "POST /mcp HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/plain\r\n\
         Accept: application/json, text/event-stream\r\nContent-Length: 1000000\r\n\r\n"
    );
    let r = raw_exchange(&p.base, &head, &[b'x'; 8192]).await;
    let h = head_of(&r);
    assert!(h.starts_with("http/1.1 415"), "{r}");
    assert!(h.contains("\r\nconnection: close"), "{r}");
    // A request without a body keeps its connection (nothing left unread).
    let c = Raw::new(p.url());
    let r = Raw::send(c.http.get(&c.url).header("accept", "text/event-stream")).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.headers.get("connection").is_none(), "{:?}", r.headers);
    // A keep-alive client: the oversized request is refused, the next one works.
    let mut c = Raw::new(p.url());
    let big =
        json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"pad":"x".repeat(50_000)}});
    let r = c.post(big).await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(
        r.headers.get("connection").map(|v| v.to_str().unwrap()),
        Some("close")
    );
    c.initialize().await;
    assert_eq!(
        c.call_tool(2, "echo", json!({"message": "after"})).await,
        "after"
    );
}

/// A repeated `Mcp-Session-Id`, `MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name` or
/// `Mcp-Param-*` header is refused with 400 and a JSON-RPC error naming it, on POST, GET and
/// DELETE alike: the proxy would check one value and forward them all.
#[tokio::test]
async fn repeated_mcp_headers_are_refused_on_every_method() {
    let p = proxy().await;
    let mut c = Raw::new(p.url());
    c.initialize().await;
    let sid = c.session.clone().unwrap();
    let ping = json!({"jsonrpc":"2.0","id":1,"method":"ping"}).to_string();
    let refused = |r: &super::harness::Reply, name: &str| {
        assert_eq!(
            (r.status, r.rpc_code()),
            (400, -32600),
            "{name}: {}",
            r.body
        );
        assert!(
            r.body
                .contains(&format!("`{name}` header is sent more than once")),
            "{}",
            r.body
        );
    };
    // POST: post_builder already sends the session id and version once.
    for (name, value) in [
        ("mcp-session-id", "0123456789abcdef0123456789abcdef"),
        ("mcp-protocol-version", "2025-03-26"),
    ] {
        let r = Raw::send(c.post_builder(ping.clone()).header(name, value)).await;
        refused(&r, name);
    }
    for name in ["mcp-method", "mcp-name", "mcp-param-region"] {
        let r = Raw::send(
            c.post_builder(ping.clone())
                .header(name, "a")
                .header(name, "b"),
        )
        .await;
        refused(&r, name);
    }
    // GET and DELETE.
    let r = Raw::send(
        c.http
            .get(&c.url)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", &sid)
            .header("mcp-session-id", &sid),
    )
    .await;
    refused(&r, "mcp-session-id");
    let r = Raw::send(
        c.http
            .delete(&c.url)
            .header("mcp-session-id", &sid)
            .header("mcp-session-id", "0123456789abcdef0123456789abcdef"),
    )
    .await;
    refused(&r, "mcp-session-id");
    // The refused DELETE ended nothing: the session still works, and one of each is fine.
    assert_eq!(
        c.call_tool(2, "echo", json!({"message": "alive"})).await,
        "alive"
    );
    assert_eq!(c.delete().await.status, 204);
}

/// forward http: a request the upstream never answers gets a JSON-RPC error after
/// `--request-timeout`, and its session, with nothing in flight any more, is reaped when idle.
#[tokio::test]
async fn forward_request_timeout_answers_the_client_and_frees_the_session() {
    let p =
        Server::forward_http(&["--demo", "--request-timeout", "0.5", "--idle-timeout", "1"]).await;
    let mut c = Raw::new(p.url());
    c.initialize().await;
    let r = c
        .post(json!({"jsonrpc":"2.0","id":5,"method":"tools/call",
            "params":{"name":"slow","arguments":{"steps":1,"duration":600}}}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let msgs = r.messages();
    let reply = msgs.iter().find(|m| m["id"] == 5).expect("an answer");
    assert_eq!(reply["error"]["code"], -32001, "{reply}");
    let msg = reply["error"]["message"].as_str().unwrap();
    assert!(msg.contains("tools/call timed out"), "{msg}");
    // Nothing in flight: the idle reaper ends the session.
    let health = format!("{}/health", p.base);
    let mut sessions = -1;
    for _ in 0..600 {
        let h: serde_json::Value = c
            .http
            .get(&health)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        sessions = h["sessions"].as_i64().unwrap();
        if sessions == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(sessions, 0, "the timed-out session was never reaped");
    let r = c
        .post(json!({"jsonrpc":"2.0","id":6,"method":"ping"}))
        .await;
    assert_eq!(r.status, 404, "{}", r.body);
}

/// An upstream's answer that is not JSON-RPC is never shown to the client (with
/// --allow-absolute-uri the client picks the upstream: its body could be anything's secret).
#[tokio::test]
async fn a_non_json_rpc_upstream_body_is_not_echoed_to_the_client() {
    let app = axum::Router::new().fallback(|| async { "SECRET-INSTANCE-CREDENTIALS" });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let p =
        Server::forward_http(&["--allow-absolute-uri", "--allow-destination", "127.0.0.1"]).await;
    let mut c = Raw::new(format!("http://{addr}/mcp"));
    c.http = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(&p.base).unwrap())
        .build()
        .unwrap();
    let r = c.post(init_body(1, "2025-06-18")).await;
    assert!(r.body.contains("not JSON-RPC"), "{}", r.body);
    assert!(!r.body.contains("SECRET"), "{}", r.body);
}

/// `initialize` (declaring form elicitation) + `notifications/initialized` on a raw client.
async fn initialize_eliciting(c: &mut Raw) {
    let mut init = init_body(0, c.version);
    init["params"]["capabilities"] = json!({"elicitation": {}});
    let r = c.post(init).await;
    assert_eq!(r.status, 200, "initialize: {}", r.body);
    c.session = Some(r.headers["mcp-session-id"].to_str().unwrap().to_string());
    let n = c
        .post(json!({"jsonrpc":"2.0","method":"notifications/initialized"}))
        .await;
    assert_eq!(n.status, 202, "{}", n.body);
}

#[tokio::test]
async fn a_request_id_still_in_flight_is_refused_and_the_first_request_completes() {
    let p = proxy().await;
    let mut c = Raw::new(p.url());
    initialize_eliciting(&mut c).await;
    // Request 5 stays in flight until the client answers the server's elicitation.
    let call = json!({"jsonrpc":"2.0","id":5,"method":"tools/call",
        "params":{"name":"elicit","arguments":{"message":"who?"}}});
    let resp = c.post_builder(call.to_string()).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut first = SseStream::new(resp);
    let ask = first.next_json().await.expect("the elicitation request");
    assert_eq!(ask["method"], "elicitation/create", "{ask}");

    // Another POST reusing id 5 (alone, or in a batch) is refused; nothing of it is sent.
    for body in [
        json!({"jsonrpc":"2.0","id":5,"method":"tools/call",
            "params":{"name":"echo","arguments":{"message":"again"}}}),
        json!({"jsonrpc":"2.0","id":5,"method":"ping"}),
    ] {
        let r = c.post(body).await;
        assert_eq!((r.status, r.rpc_code()), (400, -32600), "{}", r.body);
        assert_eq!(r.json()["id"], json!(5), "{}", r.body);
        let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(
            msg.contains("request id 5 is already in flight in this session"),
            "{msg}"
        );
    }

    // The first request is still answered on its own stream, once the client answers.
    let answer = json!({"jsonrpc":"2.0","id":ask["id"],
        "result":{"action":"accept","content":{"name":"Ann"}}});
    assert_eq!(c.post(answer).await.status, 202);
    let reply = loop {
        let m = first.next_json().await.expect("the reply to request 5");
        if m["id"] == json!(5) {
            break m;
        }
    };
    assert_eq!(
        reply["result"]["content"][0]["text"], "elicited: accept name=Ann",
        "{reply}"
    );
    // Answered: id 5 is free again.
    assert_eq!(c.call_tool(5, "echo", json!({"message":"ok"})).await, "ok");
}

/// Listening off loopback without authentication is allowed, and said at start: forward http
/// always (it has none), the gateway without `[auth]`.
#[tokio::test]
async fn listening_off_loopback_without_auth_is_warned_about() {
    let forward = Server::start(&["forward", "http", "--listen", "0.0.0.0:0", "--demo"]).await;
    assert!(
        forward.process.logged("forward http has no authentication"),
        "forward http warns"
    );
    let gateway = Server::start(&["gateway", "--listen", "0.0.0.0:0", "--demo"]).await;
    assert!(
        gateway.process.logged("without authentication"),
        "the gateway without [auth] warns"
    );
    let quiet = Server::forward_http(&["--demo"]).await;
    assert!(
        !quiet.process.logged("no authentication"),
        "loopback: no warning"
    );
}

/// Default INFO logging of a session's life reads as sentences: no Rust `Debug` dumps
/// (`Some(…)`), and a child's stderr without its own timestamp in front of ours.
#[tokio::test]
async fn default_logs_carry_no_debug_dumps_or_double_timestamps() {
    let mut p = Server::forward_http(&["--demo"]).await;
    let mut c = Raw::new(p.url());
    c.initialize().await;
    assert_eq!(c.call_tool(1, "echo", json!({"message": "x"})).await, "x");
    c.delete().await;
    p.process.terminate().await;
    let log = p.process.log();
    assert!(log.len() > 3, "{log:?}");
    for line in &log {
        assert!(!line.contains("Some("), "a Debug dump: {line}");
        let timestamps = line
            .char_indices()
            .filter(|(i, _)| {
                let b = &line.as_bytes()[*i..];
                b.len() > 19
                    && b[..4].iter().all(u8::is_ascii_digit)
                    && b[4] == b'-'
                    && b[10] == b'T'
                    && b[13] == b':'
            })
            .count();
        assert!(timestamps <= 1, "two timestamps: {line}");
    }
}

/// forward http's settings can come from `SHADOWCAT_*` variables, as the gateway's do (here the
/// listen address, the session limit and the allowed origins).
#[tokio::test]
async fn forward_http_reads_its_settings_from_the_environment() {
    let p = Server::start_with_env(
        &["forward", "http", "--demo"],
        &[
            ("SHADOWCAT_LISTEN", "127.0.0.1:0"),
            ("SHADOWCAT_MAX_SESSIONS", "1"),
            (
                "SHADOWCAT_ALLOW_ORIGINS",
                "https://a.example,https://b.example",
            ),
        ],
    )
    .await;
    let init = |origin: &'static str| {
        Raw::new(p.url())
            .post_builder(init_body(1, "2025-06-18").to_string())
            .header("origin", origin)
    };
    let first = Raw::send(init("https://b.example")).await;
    assert_eq!(
        first.status, 200,
        "an origin from the variable: {}",
        first.body
    );
    let second = Raw::send(init("https://a.example")).await;
    assert_eq!(
        second.status, 503,
        "the limit from the variable: {}",
        second.body
    );
    let other = Raw::send(init("https://c.example")).await;
    assert_eq!(other.status, 403, "{}", other.body);
}
