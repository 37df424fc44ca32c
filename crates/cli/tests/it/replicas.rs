//! Several proxy replicas sharing a real Redis: sessions continue on any replica, SSE streams
//! resume on another replica (even after the first was SIGKILLed), stdio sessions are forwarded
//! to the replica that owns the child; Redis outages fail closed or degrade onto memory.

use super::harness::{
    AnyRedis, EventExt, Raw, Redis, Server, SseStream, descendants, free_port, wait_descendants,
};
use serde_json::json;
use std::time::Duration;

async fn replica(redis: &Redis, id: &str, extra: &[&str]) -> Server {
    replica_on(&redis.url(), id, extra).await
}

async fn replica_on(store: &str, id: &str, extra: &[&str]) -> Server {
    let mut args = vec!["--store", store, "--replica-id", id];
    args.extend_from_slice(extra);
    Server::forward_http(&args).await
}

#[tokio::test]
async fn a_session_created_on_one_replica_continues_on_another() {
    let redis = Redis::start();
    let demo = Server::demo_http().await;
    let a = replica(&redis, "a", &["--target", &demo.url()]).await;
    let b = replica(&redis, "b", &["--target", &demo.url()]).await;
    let mut on_a = Raw::new(a.url());
    on_a.initialize().await;
    assert_eq!(
        on_a.call_tool(1, "echo", json!({"message": "from a"}))
            .await,
        "from a"
    );
    let mut on_b = Raw::new(b.url());
    on_b.session = on_a.session.clone();
    assert_eq!(
        on_b.call_tool(2, "echo", json!({"message": "from b"}))
            .await,
        "from b"
    );
    assert_eq!(
        on_b.call_tool(3, "add", json!({"a": 20, "b": 22})).await,
        "42"
    );
    assert_eq!(on_b.delete().await.status, 204);
    let r = on_b
        .post(json!({"jsonrpc":"2.0","id":4,"method":"tools/list"}))
        .await;
    assert_eq!(r.status, 404, "ended on every replica: {}", r.body);
}

#[tokio::test]
async fn a_stream_cut_by_sigkill_resumes_on_another_replica() {
    resumes_on_another_replica(AnyRedis::single()).await;
}

#[tokio::test]
async fn a_stream_cut_by_sigkill_resumes_on_another_replica_on_a_redis_cluster() {
    resumes_on_another_replica(AnyRedis::cluster()).await;
}

#[tokio::test]
async fn a_stream_cut_by_sigkill_resumes_on_another_replica_through_sentinel() {
    resumes_on_another_replica(AnyRedis::sentinel()).await;
}

async fn resumes_on_another_replica(redis: AnyRedis) {
    let store = redis.url();
    let demo = Server::demo_http().await;
    let mut a = replica_on(&store, "a", &["--target", &demo.url()]).await;
    let b = replica_on(&store, "b", &["--target", &demo.url()]).await;
    let mut c = Raw::new(a.url());
    c.version = "2025-11-25";
    c.initialize().await;
    let call = json!({"jsonrpc":"2.0","id":9,"method":"tools/call","params":{
        "name":"slow","arguments":{"steps":40,"duration":2.0},"_meta":{"progressToken":"k"}}});
    let resp = c.post_builder(call.to_string()).send().await.unwrap();
    // The client reads 5 progress events; A goes on logging (and sending) more, which the
    // client acts as if it had not read: once 2 more have come, A dies without any cleanup.
    let mut events = SseStream::new(resp);
    let mut progress_read: Vec<(String, u64)> = Vec::new();
    while progress_read.len() < 7 {
        let ev = events.next_event().await.expect("A's stream is open");
        if let Some(m) = ev.json()
            && m["method"] == "notifications/progress"
        {
            let id = ev.id.clone().expect("events carry ids");
            progress_read.push((id, m["params"]["progress"].as_f64().unwrap() as u64));
        }
    }
    let (last_seen, last_progress) = progress_read[4].clone();
    a.kill().await;
    drop(events);
    let resumed = Raw::send(
        c.http
            .get(b.url())
            .header("accept", "text/event-stream")
            .header("mcp-session-id", c.session.clone().unwrap())
            .header("mcp-protocol-version", "2025-11-25")
            .header("last-event-id", &last_seen),
    )
    .await;
    assert_eq!(resumed.status, 200, "{}", resumed.body);
    let progress: Vec<u64> = resumed
        .messages()
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .map(|m| m["params"]["progress"].as_f64().unwrap() as u64)
        .collect();
    assert!(
        progress.len() >= 2,
        "A logged (before sending) the events the client acts as not having read: {}",
        resumed.body
    );
    let expected: Vec<u64> = (last_progress + 1..=last_progress + progress.len() as u64).collect();
    assert_eq!(
        progress, expected,
        "the replay continues exactly after the last event read"
    );
}

/// Two replicas on one Redis, each serving `upstream`; A advertises itself, B an address that
/// cannot be reached (so nothing is ever forwarded to B).
async fn owner_and_other(redis: &Redis, upstream: &[&str]) -> (Server, Server) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let advertise = format!("http://{listen}");
    let store = redis.url();
    let mut args_a = vec!["forward", "http", "--listen", &listen, "--store", &store];
    args_a.extend(["--advertise", &advertise]);
    args_a.extend_from_slice(upstream);
    let a = Server::start(&args_a).await;
    let mut args_b = vec![
        "forward",
        "http",
        "--listen",
        "127.0.0.1:0",
        "--store",
        &store,
    ];
    args_b.extend(["--advertise", "http://b.invalid:1"]);
    args_b.extend_from_slice(upstream);
    let b = Server::start(&args_b).await;
    (a, b)
}

#[tokio::test]
async fn stdio_sessions_are_forwarded_to_the_replica_that_owns_the_child() {
    let redis = Redis::start();
    let (a, b) = owner_and_other(&redis, &["--demo"]).await;
    let mut on_a = Raw::new(a.url());
    on_a.initialize().await;
    wait_descendants(a.pid(), 1).await;
    let mut on_b = Raw::new(b.url());
    on_b.session = on_a.session.clone();
    for i in 0..3 {
        let msg = format!("via b {i}");
        assert_eq!(
            on_b.call_tool(i, "echo", json!({"message": msg})).await,
            msg
        );
    }
    assert_eq!(
        descendants(b.pid()).len(),
        0,
        "B never spawned a child for A's session"
    );
    assert_eq!(
        descendants(a.pid()).len(),
        1,
        "still exactly one child, on A"
    );
    assert_eq!(on_b.delete().await.status, 204, "DELETE is forwarded too");
    wait_descendants(a.pid(), 0).await;
}

/// A composite session (its member sessions live on A) continues through B: B forwards it to
/// A, which owns the members, and starts none of its own.
#[tokio::test]
async fn a_composite_session_continues_through_another_replica() {
    let redis = Redis::start();
    let demo = format!("a={} demo-server", super::harness::bin());
    let twin = format!("b={} demo-server", super::harness::bin());
    let (a, b) = owner_and_other(&redis, &["--server", &demo, "--server", &twin]).await;
    let mut on_a = Raw::new(a.url());
    on_a.initialize().await;
    wait_descendants(a.pid(), 2).await;
    let mut on_b = Raw::new(b.url());
    on_b.session = on_a.session.clone();
    assert_eq!(
        on_b.call_tool(1, "a__echo", json!({"message": "via b"}))
            .await,
        "via b"
    );
    assert_eq!(
        on_b.call_tool(2, "b__add", json!({"a": 40, "b": 2})).await,
        "42"
    );
    assert_eq!(descendants(b.pid()).len(), 0, "B started no member");
    assert_eq!(descendants(a.pid()).len(), 2, "the two members, on A");
    assert_eq!(on_b.delete().await.status, 204, "DELETE is forwarded too");
    wait_descendants(a.pid(), 0).await;
}

/// The composite state in session `id`'s record, once it satisfies `ready` (the record is
/// written in the background after the handshake), and the record's owner.
async fn composite_record(
    store: &dyn shadowcat_store::SessionStore,
    id: &str,
    ready: impl Fn(&serde_json::Value, Option<&str>) -> bool,
) -> (serde_json::Value, Option<String>) {
    for _ in 0..200 {
        let rec = store.get(id).await.expect("the store answers");
        if let Some(rec) = rec
            && let Some(c) = &rec.composite
            && ready(c, rec.owner.as_deref())
        {
            return (c.clone(), rec.owner);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rec = store.get(id).await.expect("the store answers");
    panic!("the record of {id} never got there: {rec:?}");
}

fn tool_names(reply: &super::harness::Reply) -> Vec<String> {
    let msgs = reply.messages();
    let list = msgs
        .iter()
        .find(|m| m["id"] == json!(10) || m["id"] == json!(20))
        .unwrap_or_else(|| panic!("no tools/list answer: {}", reply.body));
    let mut names: Vec<String> = list["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("no tools: {list}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// A composite session whose owner dies is adopted by another replica: created on A (an HTTP
/// member, a stdio member), used through B while A lives (forwarded: B starts nothing), then
/// A is SIGKILLed and the same session id goes on at B — same exposed names, calls of both
/// members answered. The HTTP member continues its upstream session (the record keeps the
/// same member session id, no new `initialize`), the stdio member is started afresh on B, and
/// the record names B as the owner.
#[tokio::test]
async fn a_composite_session_is_adopted_when_its_owner_is_sigkilled() {
    let redis = Redis::start();
    let demo = Server::demo_http().await;
    let web = format!("web={}", demo.url());
    let local = format!("local={} demo-server", super::harness::bin());
    let (a, b) = owner_and_other(&redis, &["--server", &web, "--server", &local]).await;
    let a_id = a.base.clone();
    adopted_after_sigkill(&redis, a, &a_id, b, "http://b.invalid:1").await;
}

/// The same with two gateways (`gateway --server …`), their replica ids their URLs.
#[tokio::test]
async fn a_gateway_composite_session_is_adopted_when_its_owner_is_sigkilled() {
    let redis = Redis::start();
    let demo = Server::demo_http().await;
    let web = format!("web={}", demo.url());
    let local = format!("local={} demo-server", super::harness::bin());
    let store = redis.url();
    let listen = format!("127.0.0.1:{}", free_port());
    let a_id = format!("http://{listen}");
    let common = ["--server", &web, "--server", &local, "--store", &store];
    let mut args_a = vec!["--listen", &listen, "--replica-id", &a_id];
    args_a.extend_from_slice(&common);
    let a = super::gateway_support::start_gateway(&args_a, &[]).await;
    let b_id = "http://b.invalid:1";
    let mut args_b = vec!["--listen", "127.0.0.1:0", "--replica-id", b_id];
    args_b.extend_from_slice(&common);
    let b = super::gateway_support::start_gateway(&args_b, &[]).await;
    adopted_after_sigkill(&redis, a, &a_id, b, b_id).await;
}

/// A (replica id `a_id`, owner of a new composite session with a `web` HTTP member and a
/// `local` stdio member) and B (`b_id`) share `redis`: see the tests above.
async fn adopted_after_sigkill(redis: &Redis, mut a: Server, a_id: &str, b: Server, b_id: &str) {
    let store = shadowcat_store::open(&redis.url(), &Default::default())
        .await
        .expect("the test's own store handle");
    let mut on_a = Raw::new(a.url());
    on_a.initialize().await;
    wait_descendants(a.pid(), 1).await;
    let id = on_a.session.clone().unwrap();
    let list = json!({"jsonrpc":"2.0","id":10,"method":"tools/list"});
    let names_on_a = tool_names(&on_a.post(list.clone()).await);
    assert!(
        names_on_a.contains(&"web__echo".to_string()),
        "{names_on_a:?}"
    );
    assert!(
        names_on_a.contains(&"local__add".to_string()),
        "{names_on_a:?}"
    );
    assert_eq!(
        on_a.call_tool(1, "web__echo", json!({"message": "on a"}))
            .await,
        "on a"
    );
    let mut on_b = Raw::new(b.url());
    on_b.session = Some(id.clone());
    assert_eq!(
        on_b.call_tool(2, "local__add", json!({"a": 1, "b": 2}))
            .await,
        "3",
        "forwarded to A while A lives"
    );
    assert_eq!(descendants(b.pid()).len(), 0, "B started no member");
    let web_session = |c: &serde_json::Value| {
        c["members"]
            .as_array()
            .and_then(|ms| ms.iter().find(|m| m["name"] == "web"))
            .and_then(|m| m["session"].as_str())
            .map(str::to_string)
    };
    let (before, owner) = composite_record(&*store, &id, |c, _| web_session(c).is_some()).await;
    let member_session = web_session(&before).unwrap();
    assert_eq!(owner.as_deref(), Some(a_id), "A owns it");

    a.kill().await;
    let names_on_b = tool_names(&on_b.post(list.clone()).await);
    assert_eq!(names_on_b, names_on_a, "the same exposed names on B");
    assert_eq!(
        on_b.call_tool(3, "web__echo", json!({"message": "on b"}))
            .await,
        "on b"
    );
    assert_eq!(
        on_b.call_tool(4, "local__add", json!({"a": 40, "b": 2}))
            .await,
        "42"
    );
    assert_eq!(descendants(b.pid()).len(), 1, "the stdio member, now on B");
    let (after, owner) = composite_record(&*store, &id, |_, o| o == Some(b_id)).await;
    assert_eq!(
        web_session(&after).as_deref(),
        Some(member_session.as_str()),
        "the HTTP member goes on with its upstream session"
    );
    assert_eq!(owner.as_deref(), Some(b_id));
    assert_eq!(on_b.delete().await.status, 204);
    wait_descendants(b.pid(), 0).await;
}

#[tokio::test]
async fn redis_outage_fails_closed_then_recovers_without_restart() {
    let mut redis = Redis::start();
    let p = replica(&redis, "solo", &["--demo"]).await;
    let mut c = Raw::new(p.url());
    c.initialize().await;
    redis.stop();
    let r = Raw::new(p.url())
        .post(super::harness::init_body(1, "2025-06-18"))
        .await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.headers.get("retry-after").is_some());
    assert!(r.body.contains("session store"), "{}", r.body);
    // Not ready (new sessions are refused), but alive: a liveness probe does not restart it.
    let h = Raw::send(c.http.get(format!("{}/ready", p.base))).await;
    assert_eq!(h.status, 503, "{}", h.body);
    assert_eq!(h.json()["store"]["healthy"], json!(false));
    let h = Raw::send(c.http.get(format!("{}/health", p.base))).await;
    assert_eq!(h.status, 200, "{}", h.body);
    assert_eq!(h.json()["store"]["healthy"], json!(false));
    // the live session keeps working (its events just cannot be logged)
    assert_eq!(
        c.call_tool(5, "echo", json!({"message": "still"})).await,
        "still"
    );
    redis.restart();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let r = Raw::new(p.url())
            .post(super::harness::init_body(1, "2025-06-18"))
            .await;
        if r.status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no recovery: {} {}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let h = Raw::send(c.http.get(format!("{}/health", p.base))).await;
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["store"]["outages"], json!(1));
    let h = Raw::send(c.http.get(format!("{}/ready", p.base))).await;
    assert_eq!(h.status, 200, "{}", h.body);
}

/// A full Redis (`maxmemory` reached, `noeviction`: writes answer `OOM`) refuses new sessions
/// like an unreachable one: a 503 with `Retry-After`, and nothing started for the session.
#[tokio::test]
async fn a_full_redis_refuses_new_sessions() {
    let redis = Redis::start_with(&["--maxmemory", "1", "--maxmemory-policy", "noeviction"]);
    let p = replica(&redis, "solo", &["--demo"]).await;
    for id in 1..=2 {
        let r = Raw::new(p.url())
            .post(super::harness::init_body(id, "2025-06-18"))
            .await;
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(
            r.headers.get("retry-after").and_then(|v| v.to_str().ok()),
            Some("5")
        );
        assert!(r.body.contains("session store"), "{}", r.body);
        assert!(r.body.contains("OOM"), "says why: {}", r.body);
        assert_eq!(r.json()["id"], json!(id), "{}", r.body);
        assert!(r.headers.get("mcp-session-id").is_none(), "no session");
    }
    assert!(descendants(p.pid()).is_empty(), "no child was started");
}

#[tokio::test]
async fn redis_outage_can_continue_on_memory() {
    let mut redis = Redis::start();
    let p = replica(&redis, "solo", &["--demo", "--on-store-outage", "memory"]).await;
    redis.stop();
    let mut c = Raw::new(p.url());
    c.initialize().await;
    assert_eq!(
        c.call_tool(1, "echo", json!({"message": "degraded"})).await,
        "degraded"
    );
    let h = Raw::send(c.http.get(format!("{}/health", p.base))).await;
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["store"]["degraded"], json!(true));
}

/// A replica that is SIGKILLed leaves nothing behind that stops another replica from serving:
/// a new client's `initialize` on B succeeds and its session works, and the dead replica's
/// session continues on B too.
#[tokio::test]
async fn a_new_session_is_served_on_another_replica_after_one_is_sigkilled() {
    let redis = Redis::start();
    let demo = Server::demo_http().await;
    let mut a = replica(&redis, "a", &["--target", &demo.url()]).await;
    let b = replica(&redis, "b", &["--target", &demo.url()]).await;
    let mut on_a = Raw::new(a.url());
    on_a.initialize().await;
    assert_eq!(
        on_a.call_tool(1, "echo", json!({"message": "from a"}))
            .await,
        "from a"
    );
    a.kill().await;

    let mut fresh = Raw::new(b.url());
    fresh.initialize().await;
    assert_ne!(fresh.session, on_a.session, "a new session");
    assert_eq!(
        fresh
            .call_tool(2, "echo", json!({"message": "new on b"}))
            .await,
        "new on b"
    );
    let mut moved = Raw::new(b.url());
    moved.session = on_a.session.clone();
    assert_eq!(
        moved
            .call_tool(3, "echo", json!({"message": "a's on b"}))
            .await,
        "a's on b"
    );
    assert_eq!(fresh.delete().await.status, 204);
}

/// A graceful stop (SIGTERM, as in a rolling upgrade) hands the sessions another replica can
/// continue over to the shared store instead of ending them: the client's next request, on B,
/// goes on in the same session (its upstream session was not deleted).
#[tokio::test]
async fn a_graceful_stop_hands_its_http_sessions_to_another_replica() {
    let redis = Redis::start();
    let demo = Server::demo_http().await;
    let a = replica(&redis, "a", &["--target", &demo.url()]).await;
    let b = replica(&redis, "b", &["--target", &demo.url()]).await;
    let mut on_a = Raw::new(a.url());
    on_a.initialize().await;
    assert_eq!(
        on_a.call_tool(1, "echo", json!({"message": "from a"}))
            .await,
        "from a"
    );
    assert_eq!(a.terminate().await, Some(0));

    let mut moved = Raw::new(b.url());
    moved.session = on_a.session.clone();
    assert_eq!(
        moved
            .call_tool(2, "echo", json!({"message": "after a stopped"}))
            .await,
        "after a stopped"
    );
    assert_eq!(moved.delete().await.status, 204);
}
