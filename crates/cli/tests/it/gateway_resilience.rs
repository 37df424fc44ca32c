//! The gateway protects its upstreams: the circuit breaker opens on failures (requests fail
//! fast, new sessions get 503) and closes after a good probe; idempotent requests are retried
//! on 502/503/504 but `tools/call` never is; the request and SSE-idle timeouts answer the client
//! and cancel the request upstream.

use super::gateway_support::{FakeUpstream, Fault, config_file, get, sample, start_gateway};
use super::harness::Raw;
use serde_json::{Value, json};
use std::time::Duration;

fn route(upstream: &str, extra: &str) -> String {
    format!("[[routes]]\npath = \"/mcp\"\n{extra}\n[[routes.upstreams]]\nurl = \"{upstream}\"\n")
}

async fn call(c: &Raw, id: i64) -> Value {
    let r = c
        .post(json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"echo","arguments":{}}}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.messages()
        .into_iter()
        .find(|m| m["id"] == json!(id))
        .unwrap_or_else(|| panic!("no reply to {id}: {}", r.body))
}

async fn metric(base: &str, series: &str) -> f64 {
    let (_, _, text) = get(base, "/metrics").await;
    sample(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[tokio::test]
async fn breaker_opens_on_failures_fails_fast_and_closes_after_recovery() {
    let up = FakeUpstream::start("flaky").await;
    let (_d, file) = config_file(&route(
        &up.url,
        "[routes.breaker]\nconsecutive_failures = 3\nopen_for = \"1s\"\n[routes.retry]\nattempts = 0\n",
    ));
    let gw = start_gateway(&["--config", &file, "--listen", "127.0.0.1:0"], &[]).await;
    let base = gw.base.clone();
    let series = format!(
        "shadowcat_upstream_breaker_state{{route=\"/mcp\",upstream=\"{}\"}}",
        up.url
    );
    let mut c = Raw::new(gw.url());
    c.initialize().await;
    assert_eq!(call(&c, 1).await["result"]["content"][0]["text"], "flaky");

    up.set_fault(Some(Fault::Error500));
    for id in 2..5 {
        let r = call(&c, id).await;
        assert_eq!(r["error"]["code"], -32000, "{r}");
        assert!(
            r["error"]["message"].as_str().unwrap().contains("HTTP 500"),
            "{r}"
        );
    }
    assert_eq!(up.count("tools/call"), 4);
    assert_eq!(metric(&base, &series).await, 2.0, "open");

    // Open: fails fast without reaching the upstream.
    let r = call(&c, 5).await;
    assert_eq!(r["error"]["code"], -32000, "{r}");
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(msg.contains("circuit breaker open"), "{msg}");
    assert_eq!(
        up.count("tools/call"),
        4,
        "the open breaker kept the request away"
    );
    // … and a new session is refused with 503 + Retry-After.
    let mut other = Raw::new(gw.url());
    let r = other.post(super::harness::init_body(0, "2025-06-18")).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.headers.get("retry-after").is_some());
    assert!(r.body.contains("circuit breakers open"), "{}", r.body);

    // Recovery: after open_for, one probe goes through and closes it.
    up.set_fault(None);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(call(&c, 6).await["result"]["content"][0]["text"], "flaky");
    assert_eq!(metric(&base, &series).await, 0.0, "closed again");
    other.initialize().await;
    assert_eq!(call(&c, 7).await["result"]["content"][0]["text"], "flaky");
    let opened = format!(
        "shadowcat_upstream_breaker_opened_total{{route=\"/mcp\",upstream=\"{}\"}}",
        up.url
    );
    assert_eq!(metric(&base, &opened).await, 1.0);
}

#[tokio::test]
async fn idempotent_requests_are_retried_and_tools_call_never_is() {
    let up = FakeUpstream::start("busy").await;
    let (_d, file) = config_file(&route(
        &up.url,
        "[routes.retry]\nattempts = 2\nbackoff = \"10ms\"\nbudget_min_per_sec = 10\n",
    ));
    let gw = start_gateway(&["--config", &file, "--listen", "127.0.0.1:0"], &[]).await;
    let base = gw.base.clone();
    let mut c = Raw::new(gw.url());
    c.initialize().await;

    // tools/list: two 503s, then an answer — the client sees only the answer.
    up.unavailable_for(2);
    let r = c
        .post(json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.json().get("result").is_some(), "{}", r.body);
    assert_eq!(up.count("tools/list"), 3);

    // tools/call: one 503 and no retry (it may have had effects).
    up.unavailable_for(1);
    let r = call(&c, 2).await;
    assert_eq!(r["error"]["code"], -32000, "{r}");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("503"),
        "{r}"
    );
    assert_eq!(up.count("tools/call"), 1, "tools/call is never retried");

    // Three 503s for tools/list: 2 retries, then the client gets the error.
    up.unavailable_for(3);
    let r = c
        .post(json!({"jsonrpc":"2.0","id":3,"method":"tools/list"}))
        .await;
    assert_eq!(r.json()["error"]["code"], -32000, "{}", r.body);
    assert_eq!(up.count("tools/list"), 6);
    let retries = format!(
        "shadowcat_upstream_retries_total{{route=\"/mcp\",upstream=\"{}\"}}",
        up.url
    );
    assert_eq!(metric(&base, &retries).await, 4.0);
}

#[tokio::test]
async fn request_timeout_answers_the_client_and_cancels_upstream() {
    let up = FakeUpstream::start("slow").await;
    let (_d, file) = config_file(&route(&up.url, "request_timeout = \"1s\"\n"));
    let gw = start_gateway(&["--config", &file, "--listen", "127.0.0.1:0"], &[]).await;
    let base = gw.base.clone();
    let mut c = Raw::new(gw.url());
    c.initialize().await;
    up.set_fault(Some(Fault::Hang));
    let r = call(&c, 9).await;
    assert_eq!(r["error"]["code"], -32001, "{r}");
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("tools/call timed out") && msg.contains("1 s"),
        "{msg}"
    );
    // The upstream is told to stop working on it.
    let mut cancelled = 0;
    for _ in 0..100 {
        cancelled = up.count("notifications/cancelled");
        if cancelled > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(cancelled, 1);
    // The session goes on.
    up.set_fault(None);
    assert_eq!(call(&c, 10).await["result"]["content"][0]["text"], "slow");
    let timeouts = format!(
        "shadowcat_upstream_request_timeouts_total{{route=\"/mcp\",upstream=\"{}\"}}",
        up.url
    );
    assert_eq!(metric(&base, &timeouts).await, 1.0);
}

#[tokio::test]
async fn a_silent_upstream_stream_is_cut_by_the_sse_idle_timeout() {
    let up = FakeUpstream::start("mute").await;
    let (_d, file) = config_file(&route(&up.url, "sse_idle_timeout = \"500ms\"\n"));
    let gw = start_gateway(&["--config", &file, "--listen", "127.0.0.1:0"], &[]).await;
    let mut c = Raw::new(gw.url());
    c.initialize().await;
    up.set_fault(Some(Fault::SilentStream));
    let r = call(&c, 4).await;
    assert_eq!(r["error"]["code"], -32000, "{r}");
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(msg.contains("no event for 0.5 s"), "{msg}");
}

#[tokio::test]
async fn a_new_session_whose_upstream_fails_initialize_moves_to_the_next() {
    let bad = FakeUpstream::start("bad").await;
    bad.refuse_initialize(true);
    let good = FakeUpstream::start("good").await;
    let gw = start_gateway(
        &[
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &bad.url,
            "--upstream",
            &good.url,
        ],
        &[],
    )
    .await;
    for i in 0..3 {
        let mut c = Raw::new(gw.url());
        let r = c.initialize().await;
        assert_eq!(
            r.messages()[0]["result"]["serverInfo"]["name"],
            "good",
            "{}",
            r.body
        );
        assert_eq!(c.call_tool(i, "whoami", json!({})).await, "good");
    }
    assert_eq!(good.sessions(), 3);
    // The first session tried it (with the route's retries of a 503), then it was ejected.
    let tries = bad.count("initialize");
    assert!(
        (1..=3).contains(&tries),
        "initialize sent to the bad upstream {tries} times"
    );
    let up = format!(
        "shadowcat_upstream_up{{route=\"/mcp\",upstream=\"{}\"}}",
        bad.url
    );
    assert_eq!(metric(&gw.base, &up).await, 0.0);

    // With no other upstream left, the client gets the error (and no live session).
    let gw1 = start_gateway(&["--listen", "127.0.0.1:0", "--upstream", &bad.url], &[]).await;
    let r = Raw::new(gw1.url())
        .post(super::harness::init_body(0, "2025-06-18"))
        .await;
    let m = &r.messages()[0];
    assert_eq!(m["error"]["code"], -32000, "{}", r.body);
    assert!(r.body.contains("503"), "{}", r.body);
}

/// The session the proxy holds for 2026-07-28 clients of a session-based server fails over on
/// a failed `initialize` exactly as a Streamable HTTP client's does (one loop, in the engine).
#[tokio::test]
async fn a_held_session_whose_upstream_fails_initialize_moves_to_the_next() {
    let bad = FakeUpstream::start("bad").await;
    bad.refuse_initialize(true);
    let good = FakeUpstream::start("good").await;
    // Weighted 20:1 for `bad`: the first held session is placed on it first.
    let (_d, file) = config_file(&format!(
        "[[routes]]\npath = \"/mcp\"\nbalance = \"weighted\"\n\
         [routes.retry]\nattempts = 0\n\
         [[routes.upstreams]]\nurl = \"{}\"\nweight = 20\n\
         [[routes.upstreams]]\nurl = \"{}\"\n",
        bad.url, good.url
    ));
    let gw = start_gateway(&["--config", &file, "--listen", "127.0.0.1:0"], &[]).await;
    let url = gw.url();
    for i in 0..3 {
        // Each client identity gets a held session of its own.
        let who = format!("client-{i}");
        let meta =
            json!({"_meta": {"io.modelcontextprotocol/clientInfo": {"name": who, "version": "1"}}});
        let mut params = meta.clone();
        params["arguments"] = json!({});
        let r = Raw::send(super::eras::modern_request(
            &url,
            json!(i),
            "tools/call",
            Some("whoami"),
            params,
            &[],
        ))
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(
            r.json()["result"]["content"][0]["text"],
            "good",
            "{}",
            r.body
        );
    }
    assert_eq!(good.sessions(), 3);
    assert_eq!(bad.count("initialize"), 1, "tried once, then ejected");
}

#[tokio::test]
async fn a_stdio_upstream_that_exits_before_initialize_fails_over() {
    let demo = super::harness::bin();
    let (_d, file) = config_file(&format!(
        "[[routes]]\npath = \"/mcp\"\n\
         [[routes.upstreams]]\ncommand = \"sh\"\nargs = [\"-c\", \"exit 3\"]\n\
         [[routes.upstreams]]\ncommand = \"{demo}\"\nargs = [\"demo-server\"]\n"
    ));
    let gw = start_gateway(&["--config", &file, "--listen", "127.0.0.1:0"], &[]).await;
    for i in 0..2 {
        let mut c = Raw::new(gw.url());
        let r = c.initialize().await;
        assert!(
            r.messages()[0]["result"]["serverInfo"].is_object(),
            "{}",
            r.body
        );
        assert_eq!(c.call_tool(i, "echo", json!({"message": "hi"})).await, "hi");
    }
    let up = "shadowcat_upstream_up{route=\"/mcp\",upstream=\"sh\"}";
    assert_eq!(metric(&gw.base, up).await, 0.0);
}

#[tokio::test]
async fn resilience_settings_are_validated() {
    let (_d, file) = config_file(&route(
        "http://127.0.0.1:1/mcp",
        "[routes.breaker]\nfailure_rate = 1.5\nhalf_open_probes = 0\n[routes.retry]\nbackoff = \"2s\"\nbackoff_max = \"1s\"\n",
    ));
    let (code, _, err) = super::gateway_support::run(&["config", "check", &file], &[]).await;
    assert_eq!(code, 1);
    for want in [
        "routes[0].breaker.failure_rate: 1.5 is not a share between 0 and 1",
        "routes[0].breaker.half_open_probes: must be at least 1",
        "routes[0].retry.backoff: is larger than retry.backoff_max",
    ] {
        assert!(err.contains(want), "missing `{want}` in\n{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adopted_session_is_guarded_and_counted_like_one_placed_here() {
    let redis = super::harness::Redis::start();
    let up = FakeUpstream::start("slow").await;
    let (_d, file) = config_file(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nstore = \"{}\"\n{}",
        redis.url(),
        route(
            &up.url,
            "request_timeout = \"1s\"\nbalance = \"least-in-flight\"\n\
             [routes.breaker]\nconsecutive_failures = 2\nopen_for = \"60s\"\n\
             [routes.retry]\nattempts = 0\n"
        )
    ));
    let a = start_gateway(&["--config", &file, "--replica-id", "a"], &[]).await;
    let b = start_gateway(&["--config", &file, "--replica-id", "b"], &[]).await;
    let mut on_a = Raw::new(a.url());
    on_a.initialize().await;
    // Replica b continues the session (adopts it): it counts on b's upstream...
    let mut on_b = Raw::new(b.url());
    on_b.session = on_a.session.clone();
    assert_eq!(call(&on_b, 1).await["result"]["content"][0]["text"], "slow");
    let sessions = format!(
        "shadowcat_upstream_sessions{{route=\"/mcp\",upstream=\"{}\"}}",
        up.url
    );
    assert_eq!(metric(&b.base, &sessions).await, 1.0);
    // ...its requests count as in flight on b's upstream (least-in-flight balances on it)...
    up.set_fault(Some(Fault::Hang));
    let inflight = format!(
        "shadowcat_upstream_inflight_requests{{route=\"/mcp\",upstream=\"{}\"}}",
        up.url
    );
    let hung = tokio::spawn({
        let c = on_b.clone();
        async move { call(&c, 2).await }
    });
    let mut seen = 0.0;
    for _ in 0..50 {
        seen = metric(&b.base, &inflight).await;
        if seen == 1.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(seen, 1.0, "the hung request is in flight on b");
    // ...it gets the route's request timeout...
    let r = hung.await.unwrap();
    assert_eq!(r["error"]["code"], -32001, "{r}");
    let timeouts = format!(
        "shadowcat_upstream_request_timeouts_total{{route=\"/mcp\",upstream=\"{}\"}}",
        up.url
    );
    assert_eq!(metric(&b.base, &timeouts).await, 1.0);
    // ...and the route's breaker: a second failure opens it, and the next request is refused
    // without reaching the upstream.
    let r = call(&on_b, 3).await;
    assert_eq!(r["error"]["code"], -32001, "{r}");
    let sent = up.count("tools/call");
    let r = call(&on_b, 4).await;
    assert!(
        r["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("circuit breaker open")),
        "{r}"
    );
    assert_eq!(up.count("tools/call"), sent, "refused at the breaker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateless_requests_get_the_members_timeout_and_breaker() {
    let up = FakeUpstream::start("modern").await;
    up.set_modern(true);
    let (_d, file) = config_file(&route(
        &up.url,
        "request_timeout = \"1s\"\n[routes.breaker]\nconsecutive_failures = 2\nopen_for = \"60s\"\n[routes.retry]\nattempts = 0\n",
    ));
    let gw = start_gateway(&["--config", &file, "--listen", "127.0.0.1:0"], &[]).await;
    let url = gw.url();
    let call = || async {
        Raw::send(super::eras::modern_request(
            &url,
            json!(1),
            "tools/call",
            Some("echo"),
            json!({"arguments": {}}),
            &[],
        ))
        .await
    };
    // Relayed as it is (the upstream serves 2026-07-28).
    let r = call().await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["result"]["content"][0]["text"],
        "modern",
        "{}",
        r.body
    );
    // An SSE answer that never brings the response: an error event answers the request when
    // the route's request timeout is up, and the stream ends.
    up.set_fault(Some(Fault::SilentStream));
    let r = call().await;
    assert_eq!(r.status, 200, "{}", r.body);
    let msgs = r.messages();
    assert_eq!(msgs.len(), 1, "{}", r.body);
    assert_eq!(msgs[0]["id"], json!(1), "{}", r.body);
    assert_eq!(msgs[0]["error"]["code"], -32001, "{}", r.body);
    // A hung upstream: the timeout answers with 504. Two failures: the breaker opens.
    up.set_fault(Some(Fault::Hang));
    let r = call().await;
    assert_eq!((r.status, r.rpc_code()), (504, -32001), "{}", r.body);
    assert!(r.body.contains("tools/call timed out"), "{}", r.body);
    let sent = up.count("tools/call");
    let r = call().await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("circuit breaker open"), "{}", r.body);
    assert!(r.headers.get("retry-after").is_some(), "{:?}", r.headers);
    assert_eq!(
        up.count("tools/call"),
        sent,
        "refused without reaching the upstream"
    );
}

/// A composite server's upstream set: each upstream has its own breaker, fed by the outcomes
/// of the server's requests (three HTTP 500s open it), shown in `/metrics` under the route as
/// `SERVER=UPSTREAM`; once open, the server's requests fail fast without reaching it.
#[tokio::test]
async fn a_composite_servers_upstream_has_its_own_breaker() {
    let up = FakeUpstream::start("flaky").await;
    let (_d, file) = config_file(&format!(
        "[[routes]]\npath = \"/mcp\"\n[routes.names]\nprefix = \"never\"\n\
         [routes.breaker]\nconsecutive_failures = 3\nopen_for = \"60s\"\n\
         [routes.retry]\nattempts = 0\n\
         [[routes.servers]]\nname = \"f\"\n[[routes.servers.upstreams]]\nurl = \"{}\"\n",
        up.url
    ));
    let gw = start_gateway(&["--config", &file, "--listen", "127.0.0.1:0"], &[]).await;
    let series = format!(
        "shadowcat_upstream_breaker_state{{route=\"/mcp\",upstream=\"f={}\"}}",
        up.url
    );
    let mut c = Raw::new(gw.url());
    c.initialize().await;
    // Listed first, so that calls take the composite's fast path (their answers go straight to
    // the session, not through the mux): the breaker counts them all the same.
    let r = c
        .post(json!({"jsonrpc":"2.0","id":100,"method":"tools/list"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(call(&c, 1).await["result"]["content"][0]["text"], "flaky");
    assert_eq!(metric(&gw.base, &series).await, 0.0, "closed");

    up.set_fault(Some(Fault::Error500));
    for id in 2..5 {
        let r = call(&c, id).await;
        assert!(
            r["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("HTTP 500")),
            "{r}"
        );
    }
    assert_eq!(metric(&gw.base, &series).await, 2.0, "open");
    let r = call(&c, 5).await;
    assert!(
        r["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("circuit breaker open")),
        "{r}"
    );
    assert_eq!(up.count("tools/call"), 4, "kept away from the upstream");
}
