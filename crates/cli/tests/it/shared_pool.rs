//! Shared stdio children (`--share K`, gateway `share = K`): K children serve every session,
//! and each session still sees only what is its own — answers under its ids, its progress,
//! its cancellations, its log level, its subscriptions, the server's requests it can answer —
//! while a child that dies is replaced and graceful shutdown stops the children.

use super::gateway_support::{config_file, start_gateway};
use super::harness::{
    EventExt, Raw, Server, SseStream, WAIT, bin, descendants, process_alive, wait_descendants,
};
use super::python::workspace;
use serde_json::{Value, json};

/// A session that declared `caps` in its `initialize`.
async fn open(url: &str, caps: Value) -> Raw {
    let mut c = Raw::new(url.to_string());
    let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
        "protocolVersion": c.version, "capabilities": caps,
        "clientInfo": {"name": "pool-test", "version": "1"}}});
    let r = c.post(init).await;
    assert_eq!(r.status, 200, "initialize: {}", r.body);
    assert_eq!(r.json()["id"], json!(0), "{}", r.body);
    let sid = r.headers["mcp-session-id"].to_str().unwrap().to_string();
    c.session = Some(sid);
    let n = c
        .post(json!({"jsonrpc":"2.0","method":"notifications/initialized"}))
        .await;
    assert_eq!(n.status, 202, "{}", n.body);
    c
}

/// POST `body` and read the answer as a stream of events (SSE).
async fn stream(c: &Raw, body: Value) -> SseStream {
    let resp = tokio::time::timeout(WAIT, c.post_builder(body.to_string()).send())
        .await
        .expect("HTTP timeout")
        .expect("POST");
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"),
        "not a stream: {:?}",
        resp.headers()
    );
    SseStream::new(resp)
}

/// The session's GET stream.
async fn listen(c: &Raw) -> SseStream {
    let req = c
        .http
        .get(&c.url)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", c.session.as_deref().unwrap())
        .header("mcp-protocol-version", c.version);
    let resp = tokio::time::timeout(WAIT, req.send())
        .await
        .expect("HTTP timeout")
        .expect("GET");
    assert_eq!(resp.status(), 200);
    SseStream::new(resp)
}

fn call(id: Value, name: &str, args: Value, token: Option<&str>) -> Value {
    let mut params = json!({"name": name, "arguments": args});
    if let Some(t) = token {
        params["_meta"] = json!({"progressToken": t});
    }
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":params})
}

fn text(answer: &Value) -> &str {
    answer["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text in {answer}"))
}

fn is_method(v: &Value, m: &str) -> bool {
    v["method"] == json!(m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k_children_serve_every_session_each_under_its_own_ids_and_stop_with_the_proxy() {
    const N: usize = 6;
    let p = Server::forward_http(&["--share", "2", "--demo"]).await;
    let url = p.url();
    let mut tasks = Vec::new();
    for i in 0..N {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let c = open(&url, json!({})).await;
            // Every session uses the same ids (string ones for some), at once.
            let ids = if i % 2 == 0 {
                [json!(1), json!(2)]
            } else {
                [json!("1"), json!("2")]
            };
            let calls = ids.iter().map(|id| {
                let msg = format!("session {i} id {id}");
                let c = &c;
                async move {
                    let r = c
                        .post(call(id.clone(), "echo", json!({"message": msg}), None))
                        .await;
                    assert_eq!(r.status, 200, "{}", r.body);
                    let v = r.json();
                    assert_eq!(v["id"], *id, "the session's own id back: {v}");
                    assert_eq!(text(&v), msg);
                }
            });
            futures_util::future::join_all(calls).await;
            c
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.expect("session task"));
    }
    // Two children for six sessions.
    let kids = wait_descendants(p.pid(), 2).await;
    for c in &clients {
        assert_eq!(c.call_tool(9, "add", json!({"a": 2, "b": 3})).await, "5");
    }
    // Sessions end; the children stay for the next ones.
    for c in clients.drain(..N / 2) {
        assert_eq!(c.delete().await.status, 204);
    }
    let c = open(&url, json!({})).await;
    assert_eq!(
        c.call_tool(1, "echo", json!({"message": "late"})).await,
        "late"
    );
    assert_eq!(descendants(p.pid()), kids, "no child was started or ended");
    // Graceful shutdown stops them.
    assert_eq!(p.terminate().await, Some(0));
    for k in kids {
        assert!(!process_alive(k), "child {k} outlived the proxy");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_and_cancellations_stay_with_their_session() {
    // The request timeout answers a cancelled call (the server sends nothing for it).
    let p = Server::forward_http(&["--share", "1", "--demo", "--request-timeout", "8"]).await;
    let a = open(&p.url(), json!({})).await;
    let b = open(&p.url(), json!({})).await;
    // Same id, same progress token, at once: each session gets exactly its own three.
    let slow = |steps: u32, secs: f64| {
        call(
            json!(5),
            "slow",
            json!({"steps": steps, "duration": secs}),
            Some("p"),
        )
    };
    let mut sa = stream(&a, slow(3, 0.6)).await;
    let mut sb = stream(&b, slow(3, 0.6)).await;
    for s in [&mut sa, &mut sb] {
        let events: Vec<Value> = s.take(None).await.iter().filter_map(|e| e.json()).collect();
        let progress: Vec<&Value> = events
            .iter()
            .filter(|v| is_method(v, "notifications/progress"))
            .collect();
        assert_eq!(progress.len(), 3, "{events:?}");
        assert!(
            progress
                .iter()
                .all(|v| v["params"]["progressToken"] == json!("p")),
            "{events:?}"
        );
        let answer = events.iter().find(|v| v["id"] == json!(5)).unwrap();
        assert_eq!(text(answer), "completed 3 steps");
    }
    assert_eq!(descendants(p.pid()).len(), 1);

    // A cancels its call; B's, with the same id, runs on.
    let mut sa = stream(&a, slow(4, 4.0)).await;
    let mut sb = stream(&b, slow(2, 2.0)).await;
    sa.next_matching(|v| is_method(v, "notifications/progress"))
        .await;
    let cancel = json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":5,"reason":"test"}});
    assert_eq!(a.post(cancel).await.status, 202);
    let answer = sb.next_matching(|v| v["id"] == json!(5)).await;
    assert_eq!(
        text(&answer),
        "completed 2 steps",
        "B's call was not cancelled"
    );
    // A's call stopped at the server: no answer comes for it (the proxy's timeout answers),
    // and not all of its steps were reported.
    let mut steps = 1;
    let answer = loop {
        let v = sa.next_json().await.expect("an answer");
        if is_method(&v, "notifications/progress") {
            steps += 1;
        } else {
            break v;
        }
    };
    assert_eq!(answer["id"], json!(5));
    assert_eq!(answer["error"]["code"], json!(-32001), "{answer}");
    assert!(steps < 4, "A's call ran to the end: {steps} steps");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_levels_are_kept_per_session() {
    let p = Server::forward_http(&["--share", "1", "--demo"]).await;
    let a = open(&p.url(), json!({})).await;
    let b = open(&p.url(), json!({})).await;
    for (c, level) in [(&a, "debug"), (&b, "error")] {
        let r = c
            .post(json!({"jsonrpc":"2.0","id":1,"method":"logging/setLevel","params":{"level":level}}))
            .await;
        assert_eq!(r.json()["result"], json!({}), "{}", r.body);
    }
    let log = call(
        json!(2),
        "log",
        json!({"message": "hi", "level": "info", "count": 2}),
        None,
    );
    // The child logs at the most verbose level asked for; each session gets what it asked for.
    let ra = a.post(log.clone()).await.messages();
    let logs = |m: &[Value]| {
        m.iter()
            .filter(|v| is_method(v, "notifications/message"))
            .count()
    };
    assert_eq!(logs(&ra), 2, "{ra:?}");
    let rb = b.post(log.clone()).await.messages();
    assert_eq!(logs(&rb), 0, "{rb:?}");
    let answer = rb.iter().find(|v| v["id"] == json!(2)).unwrap();
    assert_eq!(
        text(answer),
        "logged 2",
        "the child sent them: the proxy kept them from B"
    );
    // A leaves: the child is set to what B wants.
    assert_eq!(a.delete().await.status, 204);
    let rb = b.post(log).await.messages();
    let answer = rb.iter().find(|v| v["id"] == json!(2)).unwrap();
    assert_eq!(text(answer), "logged 0", "{rb:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_requests_go_to_the_one_busy_session_that_can_answer_or_are_refused() {
    let p = Server::forward_http(&["--share", "1", "--demo"]).await;
    let url = p.url();
    let a = open(&url, json!({"sampling": {}})).await;
    let b = open(&url, json!({"sampling": {}})).await;
    let c = open(&url, json!({})).await;
    let sample = call(json!(3), "sample", json!({"prompt": "hello?"}), None);

    // A alone is busy: the sampling request is A's to answer.
    let mut sa = stream(&a, sample.clone()).await;
    let ask = sa
        .next_matching(|v| is_method(v, "sampling/createMessage"))
        .await;
    let answer = json!({"jsonrpc":"2.0","id":ask["id"],"result":{
        "role":"assistant","content":{"type":"text","text":"hi from A"},"model":"m"}});
    // Another session cannot answer it for A.
    assert_eq!(b.post(answer.clone()).await.status, 202);
    assert_eq!(a.post(answer).await.status, 202);
    let done = sa.next_matching(|v| v["id"] == json!(3)).await;
    assert_eq!(text(&done), "sampled: hi from A");

    // B is busy too: nobody can tell whose request it is, so the server is refused.
    let mut sb = stream(
        &b,
        call(
            json!(4),
            "slow",
            json!({"steps": 2, "duration": 3}),
            Some("b"),
        ),
    )
    .await;
    sb.next_matching(|v| is_method(v, "notifications/progress"))
        .await;
    let r = a.post(sample.clone()).await;
    let msgs = r.messages();
    assert!(
        !msgs.iter().any(|v| is_method(v, "sampling/createMessage")),
        "{msgs:?}"
    );
    let done = msgs.iter().find(|v| v["id"] == json!(3)).unwrap();
    assert_eq!(done["result"]["isError"], json!(true), "{done}");
    assert!(text(done).contains("cannot tell which one"), "{done}");
    sb.next_matching(|v| v["id"] == json!(4)).await;

    // C alone is busy but did not declare sampling.
    let r = c.post(sample).await;
    let msgs = r.messages();
    let done = msgs.iter().find(|v| v["id"] == json!(3)).unwrap();
    assert_eq!(done["result"]["isError"], json!(true), "{done}");
    assert!(text(done).contains("did not declare"), "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_reach_subscribers_and_list_changes_every_session() {
    let script = workspace().join("tests/interop/notify_server.py");
    let p =
        Server::forward_http(&["--share", "1", "--", "python3", script.to_str().unwrap()]).await;
    let url = p.url();
    let a = open(&url, json!({})).await;
    let b = open(&url, json!({})).await;
    let c = open(&url, json!({})).await;
    let subscribe = |m: &str| json!({"jsonrpc":"2.0","id":1,"method":m,"params":{"uri":"x://1"}});
    for s in [&a, &b] {
        let r = s.post(subscribe("resources/subscribe")).await;
        assert_eq!(r.json()["result"], json!({}), "{}", r.body);
    }
    assert_eq!(c.call_tool(2, "subscriptions", json!({})).await, "x://1");
    let mut ga = listen(&a).await;
    let mut gb = listen(&b).await;
    let mut gc = listen(&c).await;
    let notify = |id: i64| call(json!(id), "notify", json!({"uri": "x://1"}), None);
    let r = c.post(notify(3)).await.messages();
    assert_eq!(
        text(r.iter().find(|v| v["id"] == json!(3)).unwrap()),
        "notified"
    );
    // The subscribers get the update, then the list change; C (not subscribed) only the list
    // change: each session's own order shows it got nothing in between.
    for g in [&mut ga, &mut gb] {
        let first = g.next_json().await.unwrap();
        assert!(
            is_method(&first, "notifications/resources/updated"),
            "{first}"
        );
        assert_eq!(first["params"]["uri"], json!("x://1"));
        let second = g.next_json().await.unwrap();
        assert!(
            is_method(&second, "notifications/tools/list_changed"),
            "{second}"
        );
    }
    let in_c: Vec<&Value> = r.iter().filter(|v| v.get("method").is_some()).collect();
    let from_get = if in_c.is_empty() {
        vec![gc.next_json().await.unwrap()]
    } else {
        in_c.into_iter().cloned().collect()
    };
    assert_eq!(from_get.len(), 1, "{from_get:?}");
    assert!(
        is_method(&from_get[0], "notifications/tools/list_changed"),
        "{from_get:?}"
    );

    // The child stays subscribed while one session is.
    let r = b.post(subscribe("resources/unsubscribe")).await;
    assert_eq!(r.json()["result"], json!({}), "{}", r.body);
    assert_eq!(c.call_tool(4, "subscriptions", json!({})).await, "x://1");
    let r = a.post(subscribe("resources/unsubscribe")).await;
    assert_eq!(r.json()["result"], json!({}), "{}", r.body);
    assert_eq!(c.call_tool(5, "subscriptions", json!({})).await, "");
    c.post(notify(6)).await;
    let next = ga.next_json().await.unwrap();
    assert!(
        is_method(&next, "notifications/tools/list_changed"),
        "{next}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_dies_fails_its_requests_and_the_next_request_gets_a_new_one() {
    let p = Server::forward_http(&["--share", "1", "--demo"]).await;
    let a = open(&p.url(), json!({})).await;
    let b = open(&p.url(), json!({})).await;
    let mut sa = stream(
        &a,
        call(
            json!(7),
            "slow",
            json!({"steps": 10, "duration": 30}),
            Some("t"),
        ),
    )
    .await;
    sa.next_matching(|v| is_method(v, "notifications/progress"))
        .await;
    let old = wait_descendants(p.pid(), 1).await[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let failed = sa.next_matching(|v| v["id"] == json!(7)).await;
    assert_eq!(failed["error"]["code"], json!(-32000), "{failed}");
    let msg = failed["error"]["message"].as_str().unwrap();
    assert!(msg.contains("the shared server process exited"), "{msg}");
    // Both sessions carry on, on a new child.
    assert_eq!(
        a.call_tool(8, "echo", json!({"message": "again"})).await,
        "again"
    );
    assert_eq!(b.call_tool(1, "add", json!({"a": 1, "b": 1})).await, "2");
    let now = wait_descendants(p.pid(), 1).await;
    assert_ne!(now[0], old);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_upstream_with_share_runs_k_children() {
    let demo = bin();
    let (_d, cfg) = config_file(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[[routes]]\npath = \"/mcp\"\n\
         [[routes.upstreams]]\ncommand = \"{demo}\"\nargs = [\"demo-server\"]\nshare = 1\n"
    ));
    let gw = start_gateway(&["--config", &cfg], &[]).await;
    let mut clients = Vec::new();
    for i in 0..3 {
        let c = open(&gw.url(), json!({})).await;
        assert_eq!(
            c.call_tool(1, "echo", json!({"message": format!("s{i}")}))
                .await,
            format!("s{i}")
        );
        clients.push(c);
    }
    let kids = wait_descendants(gw.pid(), 1).await;
    assert_eq!(gw.terminate().await, Some(0));
    assert!(!process_alive(kids[0]));
}
