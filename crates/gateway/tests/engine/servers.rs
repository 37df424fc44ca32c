//! Composite routes in-process: each server's own resilience settings (request timeout,
//! breaker) and its legs counted as sessions of the upstreams they run on (least-in-flight over
//! a server's set, the admin API's counts, on the replica that continues a session too).

use super::{Client, Fake, Running, WAIT, eventually, serve};
use serde_json::{Value, json};
use shadowcat_store::{MemoryStore, SessionStore};
use std::sync::Arc;
use std::sync::atomic::Ordering;

fn call(id: i64, name: &str) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":name,"arguments":{}}})
}

/// The text of a call's result (panics on an error, naming it).
fn text(body: &Value) -> &str {
    body["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("a result: {body}"))
}

/// A composite `/mcp` route: `route` (its own settings, then its `[[routes.servers]]`).
async fn composite(route: &str, store: Arc<dyn SessionStore>, replica: &str) -> Running {
    let config =
        format!("[server]\nlisten = \"127.0.0.1:0\"\n[[routes]]\npath = \"/mcp\"\n{route}");
    serve(&config, store, replica).await
}

/// A client with a composite session whose merged tool list has been read (so calls by
/// exposed name take the composite's fast path, as a real client's do).
async fn session(url: &str) -> Client {
    let mut c = Client::new(url);
    let (status, _, body) = c.initialize().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["serverInfo"]["name"], "shadowcat-composite");
    let (status, _, body) = c
        .post(json!({"jsonrpc":"2.0","id":100,"method":"tools/list"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["result"]["tools"].as_array().is_some(), "{body}");
    c
}

/// The same session from another connection.
fn same(c: &Client, url: &str) -> Client {
    Client {
        session: c.session.clone(),
        ..Client::new(url)
    }
}

/// `/api/upstreams`: the upstreams of server `server` of `/mcp` (name, sessions, inflight,
/// sessions_total, timeouts).
async fn set_of(gw: &Running, server: &str) -> Vec<Value> {
    let v = gw.admin_get("/api/upstreams").await;
    let route = v["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["path"] == "/mcp")
        .unwrap_or_else(|| panic!("/mcp in {v}"))
        .clone();
    route["servers"]
        .as_array()
        .unwrap_or_else(|| panic!("servers in {v}"))
        .iter()
        .find(|s| s["name"] == server)
        .unwrap_or_else(|| panic!("server {server} in {v}"))["upstreams"]
        .as_array()
        .unwrap()
        .clone()
}

/// Live sessions (and composite legs) on each upstream of `server`'s set.
async fn sessions_on(gw: &Running, server: &str) -> Vec<u64> {
    set_of(gw, server)
        .await
        .iter()
        .map(|u| u["sessions"].as_u64().unwrap())
        .collect()
}

async fn eventually_sessions(gw: &Running, server: &str, want: &[u64]) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = sessions_on(gw, server).await;
        if now == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "server {server}: sessions {now:?}, never {want:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Server `a` takes the route's `request_timeout` (200 ms) and `b` sets its own (a minute):
/// a call that `a` does not answer is answered with the timeout error naming `a` (and counted
/// on `a`'s upstream), while `b`'s call, in flight past the route's 200 ms, is still answered
/// when `b` answers. The session goes on serving `a`.
#[tokio::test]
async fn each_server_times_out_its_requests_after_its_own_request_timeout() {
    let (a, a_url) = Fake::start("a").await;
    let (b, b_url) = Fake::start("b").await;
    let gw = composite(
        &format!(
            "request_timeout = \"200ms\"\n\
             [[routes.servers]]\nname = \"a\"\nurl = \"{a_url}\"\n\
             [[routes.servers]]\nname = \"b\"\nurl = \"{b_url}\"\nrequest_timeout = \"1m\"\n"
        ),
        Arc::new(MemoryStore::new()),
        "one",
    )
    .await;
    let mut c = session(&gw.url).await;
    let mut on_b = same(&c, &gw.url);
    let slow_b = tokio::spawn(async move { on_b.post(call(1, "b__slow")).await });
    eventually("b has the slow call", || b.called("slow") == 1).await;

    let (status, _, body) = c.post(call(2, "a__slow")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["error"]["code"], -32001, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("tools/call timed out: server `a` did not answer within 0.2 s"),
        "{message}"
    );
    // `b`'s call, sent before `a`'s, has waited longer than the route's timeout.
    b.gate.add_permits(1);
    let (status, _, body) = slow_b.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(text(&body), "b");

    a.gate.add_permits(1);
    let (_, _, body) = c.post(call(3, "a__x")).await;
    assert_eq!(text(&body), "a");
    assert_eq!(set_of(&gw, "a").await[0]["timeouts"], 1);
    assert_eq!(set_of(&gw, "b").await[0]["timeouts"], 0);
    gw.shutdown().await;
}

/// Server `a`'s breaker opens after its own `consecutive_failures` (2), the route's other
/// server `b` keeps the route's (5): after two failures `a`'s calls are refused fast without
/// reaching it, while `b`, failing just as often, still serves.
#[tokio::test]
async fn each_server_has_its_own_breaker_settings() {
    let (a, a_url) = Fake::start("a").await;
    let (b, b_url) = Fake::start("b").await;
    let gw = composite(
        &format!(
            "[routes.retry]\nattempts = 0\n\
             [[routes.servers]]\nname = \"a\"\nurl = \"{a_url}\"\n\
             [routes.servers.breaker]\nconsecutive_failures = 2\nopen_for = \"10m\"\n\
             [[routes.servers]]\nname = \"b\"\nurl = \"{b_url}\"\n"
        ),
        Arc::new(MemoryStore::new()),
        "one",
    )
    .await;
    let mut c = session(&gw.url).await;
    for (id, name) in [
        (1, "a__boom"),
        (2, "b__boom"),
        (3, "a__boom"),
        (4, "b__boom"),
    ] {
        let (_, _, body) = c.post(call(id, name)).await;
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("HTTP 500"), "{name}: {body}");
    }
    let (_, _, body) = c.post(call(5, "a__x")).await;
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("circuit breaker open"), "{body}");
    assert_eq!(
        (a.called("boom"), a.called("x")),
        (2, 0),
        "kept away from `a`"
    );
    let (_, _, body) = c.post(call(6, "b__x")).await;
    assert_eq!(text(&body), "b");
    assert_eq!(b.called("boom"), 2);
    assert_eq!(set_of(&gw, "a").await[0]["breaker"], "open");
    assert_eq!(set_of(&gw, "b").await[0]["breaker"], "closed");
    gw.shutdown().await;
}

/// A composite session's legs count as sessions of the upstreams they run on: least-in-flight
/// over server `a`'s set places a new session's leg on the upstream with fewer legs (not
/// merely the next in turn), `/api/upstreams` counts the legs (of a server with one upstream
/// too) and their calls in flight, and every count is back to 0 once the sessions end.
#[tokio::test]
async fn legs_count_on_their_upstreams_and_least_in_flight_balances_them() {
    let (a1, a1_url) = Fake::start("a1").await;
    let (a2, a2_url) = Fake::start("a2").await;
    let (_b, b_url) = Fake::start("b").await;
    let gw = composite(
        &format!(
            "[[routes.servers]]\nname = \"a\"\nbalance = \"least-in-flight\"\n\
             [[routes.servers.upstreams]]\nurl = \"{a1_url}\"\n\
             [[routes.servers.upstreams]]\nurl = \"{a2_url}\"\n\
             [[routes.servers]]\nname = \"b\"\nurl = \"{b_url}\"\n"
        ),
        Arc::new(MemoryStore::new()),
        "one",
    )
    .await;
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(session(&gw.url).await);
    }
    // In turn while equal: a1, a2, then a1 (the first of two with one leg each).
    assert_eq!(sessions_on(&gw, "a").await, [2, 1]);
    assert_eq!(sessions_on(&gw, "b").await, [3]);
    let s3 = sessions.pop().unwrap();
    let s1 = sessions.remove(0);
    assert_eq!(s1.delete().await, 204);
    assert_eq!(s3.delete().await, 204);
    eventually_sessions(&gw, "a", &[0, 1]).await;
    // Next in turn would be a2; it has a leg and a1 has none.
    let mut s4 = session(&gw.url).await;
    let initialized = |f: &Fake| f.sessions.load(Ordering::SeqCst);
    assert_eq!((initialized(&a1), initialized(&a2)), (3, 1));
    assert_eq!(sessions_on(&gw, "a").await, [1, 1]);
    assert_eq!(set_of(&gw, "a").await[0]["sessions_total"], 3);

    // A call in flight on a leg is the upstream's.
    let mut on_s4 = same(&s4, &gw.url);
    let slow = tokio::spawn(async move { on_s4.post(call(1, "a__slow")).await });
    eventually("a1 has the slow call", || a1.called("slow") == 1).await;
    assert_eq!(set_of(&gw, "a").await[0]["inflight"], 1);
    a1.gate.add_permits(1);
    assert_eq!(text(&slow.await.unwrap().2), "a1");
    assert_eq!(set_of(&gw, "a").await[0]["inflight"], 0);
    assert_eq!(text(&s4.post(call(2, "b__x")).await.2), "b");

    for s in [&s4, &sessions[0]] {
        assert_eq!(s.delete().await, 204);
    }
    eventually_sessions(&gw, "a", &[0, 0]).await;
    eventually_sessions(&gw, "b", &[0]).await;
    gw.shutdown().await;
}

/// A composite session continued by another replica (over a shared store) counts its legs on
/// that replica's upstreams, and they are released when it ends there.
#[tokio::test]
async fn a_continued_composite_session_counts_its_legs_where_it_continues() {
    let (_a, a_url) = Fake::start("a").await;
    let (_b, b_url) = Fake::start("b").await;
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let route = format!(
        "[[routes.servers]]\nname = \"a\"\nurl = \"{a_url}\"\n\
         [[routes.servers]]\nname = \"b\"\nurl = \"{b_url}\"\n"
    );
    let one = composite(&route, store.clone(), "one").await;
    let two = composite(&route, store.clone(), "two").await;
    let c = session(&one.url).await;
    let sid = c.session.clone().unwrap();
    // Once its state is recorded, another replica can continue it.
    let deadline = tokio::time::Instant::now() + WAIT;
    while store
        .get(&sid)
        .await
        .unwrap()
        .and_then(|r| r.composite)
        .is_none()
    {
        assert!(tokio::time::Instant::now() < deadline, "never recorded");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(sessions_on(&two, "a").await, [0]);
    let mut on_two = same(&c, &two.url);
    assert_eq!(text(&on_two.post(call(1, "a__x")).await.2), "a");
    assert_eq!(sessions_on(&two, "a").await, [1]);
    assert_eq!(sessions_on(&two, "b").await, [1]);
    assert_eq!(on_two.delete().await, 204);
    eventually_sessions(&two, "a", &[0]).await;
    eventually_sessions(&two, "b", &[0]).await;
    one.shutdown().await;
    two.shutdown().await;
}

/// A URL nothing listens on.
fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}/mcp", l.local_addr().unwrap())
}

/// Server `a`'s own health checks (every 50 ms, unhealthy after one failure) run beside the
/// route's (hourly, three failures), which server `b` keeps: `a`'s unreachable upstream is
/// soon unhealthy while `b`'s, just as unreachable, is not yet.
#[tokio::test]
async fn each_server_is_health_checked_with_its_own_settings() {
    let gw = composite(
        &format!(
            "[routes.health]\ninterval = \"1h\"\n\
             [[routes.servers]]\nname = \"a\"\nurl = \"{}\"\n\
             [routes.servers.health]\ninterval = \"50ms\"\nunhealthy_threshold = 1\n\
             [[routes.servers]]\nname = \"b\"\nurl = \"{}\"\n",
            dead_url(),
            dead_url()
        ),
        Arc::new(MemoryStore::new()),
        "one",
    )
    .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while set_of(&gw, "a").await[0]["healthy"] != false {
        assert!(tokio::time::Instant::now() < deadline, "a never unhealthy");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(set_of(&gw, "b").await[0]["healthy"], true);
    gw.shutdown().await;
}
