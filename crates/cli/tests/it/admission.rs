//! Admission: one session limit (and one per-principal limit) over every kind of session —
//! Streamable HTTP, legacy HTTP+SSE and the sessions held for 2026-07-28 clients — reserved
//! before anything is spawned, so the excess gets 503 + Retry-After and no child.

use super::eras::modern_request;
use super::gateway_support::{alice_and_bob, config_file, start_gateway};
use super::harness::{Raw, Reply, Server, descendants, init_body, wait_descendants};
use serde_json::json;

/// Open a legacy HTTP+SSE session: the GET's response is kept open (the session lives as long
/// as it does) when it succeeds.
async fn open_sse(
    http: &reqwest::Client,
    base: &str,
) -> Result<reqwest::Response, (u16, Option<String>, String)> {
    let resp = http
        .get(format!("{base}/sse"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("GET /sse");
    if resp.status() == 200 {
        return Ok(resp);
    }
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    Err((status, retry, resp.text().await.unwrap_or_default()))
}

/// A 2026-07-28 `tools/list` from a client named `client` (clients that differ get their own
/// held session).
async fn modern_list(url: &str, client: &str, extra: &[(&str, &str)]) -> Reply {
    let params =
        json!({"_meta": {"io.modelcontextprotocol/clientInfo": {"name": client, "version": "1"}}});
    Raw::send(modern_request(
        url,
        json!(1),
        "tools/list",
        None,
        params,
        extra,
    ))
    .await
}

fn assert_limited(status: u16, retry: Option<&str>, body: &str) {
    assert_eq!(status, 503, "{body}");
    assert_eq!(retry, Some("5"), "Retry-After: {body}");
    assert!(body.contains("limit"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_sessions_holds_across_every_kind_of_session() {
    let p = Server::forward_http(&["--demo", "--max-sessions", "3"]).await;
    let (url, base) = (p.url(), p.base.clone());
    let http = reqwest::Client::builder().no_proxy().build().unwrap();

    // One of each kind: Streamable HTTP, legacy HTTP+SSE, a session held for 2026-07-28 clients.
    let mut a = Raw::new(url.clone());
    a.initialize().await;
    let legacy = open_sse(&http, &base).await.expect("a legacy session");
    let r = modern_list(&url, "first", &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    wait_descendants(p.pid(), 3).await;

    // A fourth of any kind is refused, and nothing is spawned for it.
    let r = Raw::new(url.clone()).post(init_body(7, "2025-06-18")).await;
    let retry = r.headers.get("retry-after").map(|v| v.to_str().unwrap());
    assert_limited(r.status, retry, &r.body);
    assert_eq!(r.json()["id"], json!(7));
    let (status, retry, body) = open_sse(&http, &base).await.expect_err("over the limit");
    assert_limited(status, retry.as_deref(), &body);
    let r = modern_list(&url, "second", &[]).await;
    let retry = r.headers.get("retry-after").map(|v| v.to_str().unwrap());
    assert_limited(r.status, retry, &r.body);
    assert_eq!(
        descendants(p.pid()).len(),
        3,
        "no child for a refused session"
    );

    // A session that ends gives its place back, to any kind.
    a.delete().await;
    wait_descendants(p.pid(), 2).await;
    let _again = open_sse(&http, &base).await.expect("room again");
    drop(legacy);
}

/// Eight creations of three kinds at once (Streamable, legacy SSE, held for a 2026-07-28
/// client), sent with `auth` (`Authorization` value) if any: the statuses, sorted, each refusal
/// checked for its `Retry-After` and for `why` in its message. The legacy streams that opened
/// are kept open (their sessions live as long as they do) and returned.
async fn race(
    url: &str,
    base: &str,
    auth: Option<&'static str>,
    why: &'static str,
) -> (Vec<u16>, Vec<reqwest::Response>) {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(a) = auth {
        headers.insert("authorization", a.parse().unwrap());
    }
    let http = reqwest::Client::builder()
        .no_proxy()
        .default_headers(headers)
        .build()
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let (url, base, http) = (url.to_string(), base.to_string(), http.clone());
        tasks.spawn(async move {
            let extra: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
            let (status, retry, body, stream) = match i % 3 {
                0 => {
                    let r = Raw::send(
                        http.post(&url)
                            .header("accept", "application/json, text/event-stream")
                            .header("content-type", "application/json")
                            .body(init_body(i, "2025-06-18").to_string()),
                    )
                    .await;
                    let retry = r
                        .headers
                        .get("retry-after")
                        .map(|v| v.to_str().unwrap().to_string());
                    (r.status, retry, r.body, None)
                }
                1 => match open_sse(&http, &base).await {
                    Ok(stream) => (200, None, String::new(), Some(stream)),
                    Err((status, retry, body)) => (status, retry, body, None),
                },
                _ => {
                    let r = modern_list(&url, &format!("client-{i}"), &extra).await;
                    let retry = r
                        .headers
                        .get("retry-after")
                        .map(|v| v.to_str().unwrap().to_string());
                    (r.status, retry, r.body, None)
                }
            };
            if status != 200 {
                assert_limited(status, retry.as_deref(), &body);
                assert!(body.contains(why), "{body}");
            }
            (status, stream)
        });
    }
    let mut streams = Vec::new();
    let mut statuses = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (status, stream) = done.unwrap();
        statuses.push(status);
        streams.extend(stream);
    }
    statuses.sort();
    (statuses, streams)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_creations_never_overshoot_the_limit() {
    let p = Server::forward_http(&["--demo", "--max-sessions", "3"]).await;
    let (statuses, _streams) = race(&p.url(), &p.base, None, "limit").await;
    assert_eq!(statuses, [200, 200, 200, 503, 503, 503, 503, 503]);
    assert_eq!(
        wait_descendants(p.pid(), 3).await.len(),
        3,
        "one child per admitted session, none for the refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_creations_of_one_principal_never_overshoot_its_limit() {
    let (_dir, cfg) = config_file(&alice_and_bob("max_sessions_per_principal = 2", ""));
    let gw = start_gateway(&["--config", &cfg], &[]).await;
    let (statuses, _streams) =
        race(&gw.url(), &gw.base, Some("Bearer alice-key"), "principal").await;
    assert_eq!(statuses, [200, 200, 503, 503, 503, 503, 503, 503]);
    assert_eq!(
        wait_descendants(gw.pid(), 2).await.len(),
        2,
        "one child per admitted session, none for the refused"
    );
    // Bob still has his own places.
    let r = modern_list(&gw.url(), "bob", &[("authorization", "Bearer bob-key")]).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_principal_limit_holds_across_kinds() {
    let (_dir, cfg) = config_file(&alice_and_bob("max_sessions_per_principal = 2", ""));
    let gw = start_gateway(&["--config", &cfg], &[]).await;
    let (url, base) = (gw.url(), gw.base.clone());
    let alice = super::gateway_support::client(url.clone(), Some("alice-key"));
    let bob = super::gateway_support::client(url.clone(), Some("bob-key"));

    // Alice: a Streamable session and a legacy one; her third (a held one) is refused.
    let mut a1 = super::gateway_support::client(url.clone(), Some("alice-key"));
    a1.initialize().await;
    let _a2 = open_sse(&alice.http, &base).await.expect("alice's second");
    let r = modern_list(&url, "alice", &[("authorization", "Bearer alice-key")]).await;
    let retry = r.headers.get("retry-after").map(|v| v.to_str().unwrap());
    assert_limited(r.status, retry, &r.body);
    assert!(r.body.contains("principal"), "{}", r.body);
    let r = Raw::send(
        alice
            .post_builder(init_body(3, "2025-06-18").to_string())
            .header("mcp-protocol-version", "2025-06-18"),
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.body);

    // Bob is not counted against Alice.
    let r = modern_list(&url, "bob", &[("authorization", "Bearer bob-key")]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let mut b = bob;
    b.initialize().await;
    wait_descendants(gw.pid(), 4).await;

    // Alice ends one: she may open another.
    a1.delete().await;
    let r = modern_list(&url, "alice", &[("authorization", "Bearer alice-key")]).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

/// The text of a 2026-07-28 `tools/call` answer (JSON or SSE).
fn modern_text(r: &Reply) -> String {
    let msgs = r.messages();
    let reply = msgs
        .iter()
        .find(|m| m["id"] == json!(1))
        .unwrap_or_else(|| panic!("no reply: {}", r.body));
    reply["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text in {reply}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_is_listed_by_the_admin_api_and_drained_on_sigterm() {
    use super::admin::{call, demo_with_admin};
    use super::legacy_sse::Legacy;
    let gw = demo_with_admin(&[]).await;
    let (url, base, admin) = (gw.server.url(), gw.server.base.clone(), gw.admin.clone());

    let mut a = Raw::new(url.clone());
    a.initialize().await;
    let mut legacy = Legacy::connect(&base, "/sse").await;
    legacy.initialize().await;
    let r = modern_list(&url, "modern", &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);

    let (status, list) = call("GET", &format!("{admin}/api/sessions"), None).await;
    assert_eq!(status, 200, "{list}");
    let mut kinds: Vec<&str> = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    kinds.sort();
    assert_eq!(kinds, ["held", "legacy-sse", "streamable-http"], "{list}");
    let children = wait_descendants(gw.server.pid(), 3).await;

    // A slow call in flight on each kind when SIGTERM arrives: each one completes.
    let slow = json!({"steps": 3, "duration": 1.5});
    let streamable = tokio::spawn(async move { a.call_tool(5, "slow", slow).await });
    let slow = json!({"steps": 3, "duration": 1.5});
    let held_url = url.clone();
    let held = tokio::spawn(async move {
        let params = json!({"arguments": slow, "_meta": {"io.modelcontextprotocol/clientInfo": {"name": "modern", "version": "1"}}});
        let r = Raw::send(modern_request(
            &held_url,
            json!(1),
            "tools/call",
            Some("slow"),
            params,
            &[],
        ))
        .await;
        modern_text(&r)
    });
    let slow = json!({"steps": 3, "duration": 1.5});
    let legacy_call = tokio::spawn(async move { legacy.call(6, "slow", slow).await });
    // All three are in flight (the proxy says so) before the signal.
    let deadline = tokio::time::Instant::now() + super::harness::WAIT;
    loop {
        let (_, list) = call("GET", &format!("{admin}/api/sessions"), None).await;
        let inflight: u64 = list["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["inflight"].as_u64().unwrap_or(0))
            .sum();
        if inflight == 3 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{list}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(gw.server.terminate().await, Some(0));
    assert_eq!(streamable.await.unwrap(), "completed 3 steps");
    assert_eq!(held.await.unwrap(), "completed 3 steps");
    assert_eq!(legacy_call.await.unwrap(), "completed 3 steps");
    for pid in children {
        assert!(
            !super::harness::process_alive(pid),
            "child {pid} outlived the proxy"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn principal_rules_apply_on_every_front_and_era() {
    use super::legacy_sse::Legacy;
    use super::peers::{Peer, PyEra};
    let py = Peer::python(PyEra::Dual).await;
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        r#"
[[rule]]
principal = "key:alice"
tool = "echo"
action = "mock"
result = { content = [{ type = "text", text = "rule-for-alice" }] }
"#,
    )
    .unwrap();
    // /mcp: a stdio server (2026-07-28 requests translated onto a held session);
    // /servers/py/mcp: a dual-era HTTP server (2026-07-28 requests relayed as they are).
    let (_cfg_dir, cfg) = config_file(&alice_and_bob(
        "",
        &format!(
            "[[routes]]\npath = \"/servers/py/mcp\"\n[[routes.upstreams]]\nurl = \"{}\"\n",
            py.url
        ),
    ));
    let rules = rules.display().to_string();
    let gw = start_gateway(&["--config", &cfg, "--rules", &rules], &[]).await;
    let base = gw.base.clone();
    let args = json!({"message": "hello"});

    for (key, want) in [("alice-key", "rule-for-alice"), ("bob-key", "hello")] {
        let auth = format!("Bearer {key}");
        let auth = [("authorization", auth.as_str())];
        // Streamable HTTP, on both routes.
        for path in ["/mcp", "/servers/py/mcp"] {
            let mut c = super::gateway_support::client(format!("{base}{path}"), Some(key));
            c.initialize().await;
            assert_eq!(c.call_tool(1, "echo", args.clone()).await, want, "{path}");
        }
        // Legacy HTTP+SSE.
        let http = super::gateway_support::client(String::new(), Some(key)).http;
        let mut l = Legacy::connect_with(http, &base, "/sse").await;
        l.initialize().await;
        assert_eq!(l.call(2, "echo", args.clone()).await, want, "legacy");
        // 2026-07-28, translated (stdio) and relayed (HTTP).
        for path in ["/mcp", "/servers/py/mcp"] {
            let params = json!({"arguments": args});
            let r = Raw::send(modern_request(
                &format!("{base}{path}"),
                json!(1),
                "tools/call",
                Some("echo"),
                params,
                &auth,
            ))
            .await;
            assert_eq!(r.status, 200, "{path}: {}", r.body);
            assert_eq!(modern_text(&r), want, "2026-07-28 on {path}");
        }
    }
}
