//! `shadowcat gateway`: configuration (files, flags, environment, exact errors), balancing with
//! session affinity, failover, rate limits (accuracy over 1,000 requests), per-tool limits,
//! `/metrics` and `/ready`, composite routes.

use super::gateway_support::{
    FakeUpstream, alice_and_bob_with, client, config_file, get, run, sample, start_gateway,
    with_api_keys,
};
use super::harness::{Launch, Raw, free_port, lossy};
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn example() -> String {
    format!("{}/../../examples/gateway.toml", env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test]
async fn config_check_accepts_the_example_and_names_file_field_and_problem() {
    let (code, out, err) = run(&["config", "check", &example()], &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(": OK"), "{out}");
    assert!(
        out.contains("route /servers/github/mcp: 1 upstream(s), consistent-hash, 0 rule(s)"),
        "{out}"
    );
    assert!(
        out.contains("route /mcp: 3 upstream(s), least-in-flight, 3 rule(s)"),
        "{out}"
    );

    // A type error: file, line, column, field path, problem.
    let (_d, bad) = config_file(
        "[[routes]]\npath = \"/mcp\"\n\n[[routes.upstreams]]\nurl = \"http://127.0.0.1:1/mcp\"\nweight = \"heavy\"\n",
    );
    let (code, _, err) = run(&["config", "check", &bad], &[]).await;
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        format!(
            "{bad}:6:10: routes[0].upstreams[0].weight: invalid type: string \"heavy\", expected u32"
        )
    );

    // Semantic errors: all of them, one per line.
    let (_d2, bad2) = config_file(
        r#"
[server]
trusted_proxies = ["10.0.0.0/40"]
[auth]
[[auth.api_keys]]
name = "ci"
sha256 = "not-a-hash"
[limits]
per_ip = { requests = 0, per = "1s" }
[[routes]]
path = "/api"
[[routes.upstreams]]
url = "ftp://example.com/mcp"
[[routes.upstreams]]
url = "http://example.com/mcp"
command = "server"
"#,
    );
    let (code, _, err) = run(&["config", "check", &bad2], &[]).await;
    assert_eq!(code, 1);
    let lines: Vec<&str> = err.lines().collect();
    let expect = [
        format!("{bad2}: server.trusted_proxies[0]: `10.0.0.0/40`: prefix length must be 0..=32"),
        format!(
            "{bad2}: auth.api_keys[0].sha256: must be 64 hex digits: the SHA-256 of the key (`printf %s KEY | sha256sum`), never the key itself"
        ),
        format!(
            "{bad2}: server.public_url: is required with [auth]: the RFC 9728 metadata and the `WWW-Authenticate` challenges name this gateway by it (e.g. https://mcp.example.com); it is never guessed from the request's `Host`"
        ),
        format!("{bad2}: limits.per_ip.requests: must be at least 1"),
        format!(
            "{bad2}: routes[0].path: `/api` must be `/mcp` or `/servers/NAME/mcp` (NAME: letters, digits, `-`, `_`)"
        ),
        format!(
            "{bad2}: routes[0].upstreams[0].url: `ftp://example.com/mcp` must be an http:// or https:// URL"
        ),
        format!("{bad2}: routes[0].upstreams[1]: give either `url` or `command`, not both"),
    ];
    for e in &expect {
        assert!(lines.contains(&e.as_str()), "missing `{e}` in:\n{err}");
    }
    assert_eq!(lines.len(), expect.len(), "{err}");

    // The gateway refuses to start with the same messages; a missing file is named too.
    let (code, _, err) = run(&["gateway", "--config", &bad2], &[]).await;
    assert_eq!(code, 1);
    assert!(err.contains(&expect[4]), "{err}");
    let (code, _, err) = run(&["gateway", "--config", "/nonexistent/gw.toml"], &[]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("/nonexistent/gw.toml: cannot read the configuration file"),
        "{err}"
    );
    // A bearer_env that is not set.
    let (_d3, bad3) = config_file(
        "[[routes]]\npath = \"/mcp\"\n[[routes.upstreams]]\nurl = \"http://127.0.0.1:1/mcp\"\nbearer_env = \"SHADOWCAT_TEST_UNSET_TOKEN\"\n",
    );
    let (code, _, err) = run(&["gateway", "--config", &bad3], &[]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("{bad3}: routes[0].upstreams[0].bearer_env: environment variable `SHADOWCAT_TEST_UNSET_TOKEN` (bearer_env) is not set")),
        "{err}"
    );
}

/// Which fake upstream a session lives on (its tools answer with their name).
async fn whoami(c: &Raw, id: i64) -> String {
    c.call_tool(id, "whoami", json!({})).await
}

#[tokio::test]
async fn sessions_are_balanced_and_stay_on_their_upstream() {
    let ups = [
        FakeUpstream::start("up0").await,
        FakeUpstream::start("up1").await,
        FakeUpstream::start("up2").await,
    ];
    // Round-robin from flags alone.
    let gw = start_gateway(
        &[
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &ups[0].url,
            "--upstream",
            &ups[1].url,
            "--upstream",
            &ups[2].url,
        ],
        &[],
    )
    .await;
    let mut clients = Vec::new();
    for _ in 0..6 {
        let mut c = Raw::new(gw.url());
        c.initialize().await;
        clients.push(c);
    }
    let mut placed: HashMap<String, usize> = HashMap::new();
    for (i, c) in clients.iter().enumerate() {
        let first = whoami(c, 1).await;
        for k in 2..5 {
            assert_eq!(whoami(c, k).await, first, "session {i} moved");
        }
        *placed.entry(first).or_default() += 1;
    }
    assert_eq!(placed.len(), 3, "{placed:?}");
    assert!(placed.values().all(|&n| n == 2), "{placed:?}");
    assert!(ups.iter().all(|u| u.sessions() == 2));

    let (status, _, metrics) = get(&gw.base, "/metrics").await;
    assert_eq!(status, 200);
    for u in &ups {
        let series = format!(
            "shadowcat_upstream_sessions{{route=\"/mcp\",upstream=\"{}\"}}",
            u.url
        );
        assert_eq!(sample(&metrics, &series), Some(2.0), "{series}\n{metrics}");
    }
    assert_eq!(sample(&metrics, "shadowcat_active_sessions"), Some(6.0));
    // 6 × (initialize + initialized + 4 calls) POSTs answered 200/202.
    let ok = sample(
        &metrics,
        "shadowcat_http_requests_total{route=\"/mcp\",method=\"POST\",status=\"200\"}",
    );
    assert_eq!(ok, Some(30.0), "{metrics}");
    assert!(metrics.contains("# TYPE shadowcat_http_request_duration_seconds histogram"));
    // Every session was recorded in the (memory) store, each create timed.
    let creates = sample(
        &metrics,
        "shadowcat_store_operations_total{backend=\"memory\",op=\"create\",result=\"ok\"}",
    );
    assert!(creates.is_some_and(|n| n >= 6.0), "{metrics}");
    assert_eq!(
        sample(
            &metrics,
            "shadowcat_store_operation_duration_seconds_count{backend=\"memory\",op=\"create\"}"
        ),
        creates
    );
    let (status, _, ready) = get(&gw.base, "/ready").await;
    assert_eq!(status, 200, "{ready}");

    // Ending a session frees its place.
    assert_eq!(clients[0].delete().await.status, 204);
    let (_, _, metrics) = get(&gw.base, "/metrics").await;
    assert_eq!(sample(&metrics, "shadowcat_active_sessions"), Some(5.0));
}

#[tokio::test]
async fn the_upstream_get_stream_opens_only_when_the_client_opens_its_own() {
    let up = FakeUpstream::start("lazy").await;
    let gw = start_gateway(&["--listen", "127.0.0.1:0", "--upstream", &up.url], &[]).await;
    let mut c = Raw::new(gw.url());
    c.initialize().await;
    // An idle session holds no upstream connection (memory per idle session): by the time the
    // upstream has answered initialize, initialized and these calls, it has seen no GET.
    for i in 1..4 {
        assert_eq!(whoami(&c, i).await, "lazy");
    }
    assert_eq!(up.gets(), 0);
    let r = Raw::send(
        c.http
            .get(gw.url())
            .header("accept", "text/event-stream")
            .header("mcp-session-id", c.session.clone().unwrap())
            .header("mcp-protocol-version", c.version),
    )
    .await;
    assert_eq!(r.status, 405, "{}", r.body);
    assert!(r.body.contains("no server-to-client stream"), "{}", r.body);
    assert_eq!(up.gets(), 1);
}

#[tokio::test]
async fn weighted_and_hashed_sets_from_a_config_file() {
    let a = FakeUpstream::start("a").await;
    let b = FakeUpstream::start("b").await;
    let (_d, cfg) = config_file(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
[[routes]]
path = "/mcp"
balance = "weighted-round-robin"
[[routes.upstreams]]
url = "{a}"
weight = 3
[[routes.upstreams]]
url = "{b}"
[[routes]]
path = "/servers/hashed/mcp"
balance = "consistent-hash"
[[routes.upstreams]]
url = "{a}"
[[routes.upstreams]]
url = "{b}"
"#,
        a = a.url,
        b = b.url
    ));
    let gw = start_gateway(&["--config", &cfg], &[]).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for i in 0..8 {
        let mut c = Raw::new(gw.url());
        c.initialize().await;
        *counts.entry(whoami(&c, i).await).or_default() += 1;
    }
    assert_eq!(counts.get("a"), Some(&6), "{counts:?}");
    assert_eq!(counts.get("b"), Some(&2), "{counts:?}");
    // The named route has its own set, and a session id of one route is unknown on another.
    let mut h = Raw::new(format!("{}/servers/hashed/mcp", gw.base));
    h.initialize().await;
    let name = whoami(&h, 1).await;
    assert!(name == "a" || name == "b");
    let mut other = Raw::new(gw.url());
    other.session = h.session.clone();
    let r = other
        .post(json!({"jsonrpc":"2.0","id":2,"method":"ping"}))
        .await;
    assert_eq!(r.status, 404, "{}", r.body);
    let r = Raw::new(format!("{}/servers/nope/mcp", gw.base))
        .post(super::harness::init_body(0, "2025-06-18"))
        .await;
    assert_eq!(r.status, 404);
    assert!(r.body.contains("/servers/hashed/mcp"), "{}", r.body);
}

#[tokio::test]
async fn a_new_session_fails_over_when_its_upstream_is_unreachable() {
    let live = FakeUpstream::start("live").await;
    let dead = format!("http://127.0.0.1:{}/mcp", free_port());
    let gw = start_gateway(
        &[
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &dead,
            "--upstream",
            &live.url,
        ],
        &[],
    )
    .await;
    for i in 0..4 {
        let mut c = Raw::new(gw.url());
        c.initialize().await;
        assert_eq!(whoami(&c, i).await, "live");
    }
    assert_eq!(live.sessions(), 4);
    let (_, _, metrics) = get(&gw.base, "/metrics").await;
    let up = format!("shadowcat_upstream_up{{route=\"/mcp\",upstream=\"{dead}\"}}");
    assert_eq!(sample(&metrics, &up), Some(0.0), "ejected: {metrics}");
    let fails =
        format!("shadowcat_upstream_connect_failures_total{{route=\"/mcp\",upstream=\"{dead}\"}}");
    assert_eq!(
        sample(&metrics, &fails),
        Some(1.0),
        "tried once, then skipped: {metrics}"
    );
    // One upstream left that takes sessions: still ready.
    assert_eq!(get(&gw.base, "/ready").await.0, 200);

    // Nothing reachable at all: the client gets a JSON-RPC error, and /ready says 503.
    let dead2 = format!("http://127.0.0.1:{}/mcp", free_port());
    let gw2 = start_gateway(
        &[
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &dead,
            "--upstream",
            &dead2,
        ],
        &[],
    )
    .await;
    let r = Raw::new(gw2.url())
        .post(super::harness::init_body(0, "2025-06-18"))
        .await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(r.body.contains("cannot connect"), "{}", r.body);
    let (status, _, body) = get(&gw2.base, "/ready").await;
    assert_eq!(status, 503, "{body}");
}

#[tokio::test]
async fn environment_variables_configure_the_simple_case() {
    let a = FakeUpstream::start("a").await;
    let b = FakeUpstream::start("b").await;
    let both = format!("{},{}", a.url, b.url);
    let gw = start_gateway(
        &[],
        &[
            ("SHADOWCAT_LISTEN", "127.0.0.1:0"),
            ("SHADOWCAT_UPSTREAMS", &both),
            ("SHADOWCAT_BALANCE", "least-in-flight"),
        ],
    )
    .await;
    let mut seen = Vec::new();
    for i in 0..2 {
        let mut c = Raw::new(gw.url());
        c.initialize().await;
        seen.push(whoami(&c, i).await);
    }
    seen.sort();
    assert_eq!(
        seen,
        vec!["a", "b"],
        "least-in-flight spreads idle sessions"
    );
    let (_, _, metrics) = get(&gw.base, "/metrics").await;
    assert!(metrics.contains(&format!("upstream=\"{}\"", b.url)));
    let (code, _, err) = run(&["gateway", "--balance", "fastest"], &[]).await;
    assert_eq!(code, 2);
    assert!(err.contains("`fastest` is not a strategy"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_rate_limit_refuses_concurrent_clients_with_retry_after() {
    // The limiter's accuracy over time is tested in-process on a clock the test moves
    // (gateway::limits tests). Here: one refill an hour, so what passes does not depend on how
    // fast this machine is — a burst of 5, two of them taken by initialize + initialized.
    let up = FakeUpstream::start("up").await;
    let (_d, cfg) = config_file(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
[limits]
per_ip = {{ requests = 1, per = "1h", burst = 5 }}
[[routes]]
path = "/mcp"
[[routes.upstreams]]
url = "{}"
"#,
        up.url
    ));
    let gw = start_gateway(&["--config", &cfg], &[]).await;
    let mut c = Raw::new(gw.url());
    c.initialize().await;
    let c = std::sync::Arc::new(c);
    let mut tasks = Vec::new();
    for w in 0..4 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut limited, mut headers_ok) = (0usize, 0usize, true);
            for i in 0..50 {
                let id = w * 1000 + i;
                let r = c
                    .post(json!({"jsonrpc":"2.0","id":id,"method":"ping"}))
                    .await;
                match r.status {
                    200 => ok += 1,
                    429 => {
                        limited += 1;
                        let h = |n: &str| {
                            r.headers
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string)
                        };
                        let retry = h("retry-after").and_then(|v| v.parse::<u64>().ok());
                        headers_ok &= retry.is_some_and(|s| (1..=3600).contains(&s))
                            && h("ratelimit-limit").as_deref() == Some("5")
                            && h("ratelimit-remaining").as_deref() == Some("0")
                            && r.rpc_code() == -32029;
                    }
                    s => panic!("unexpected status {s}: {}", r.body),
                }
            }
            (ok, limited, headers_ok)
        }));
    }
    let (mut ok, mut limited) = (0, 0);
    for t in tasks {
        let (o, l, headers_ok) = t.await.unwrap();
        assert!(
            headers_ok,
            "429s carry Retry-After, RateLimit-* and a JSON-RPC error"
        );
        ok += o;
        limited += l;
    }
    assert_eq!(
        (ok, limited),
        (3, 197),
        "the rest of the burst, then refusals"
    );
    let (_, _, metrics) = get(&gw.base, "/metrics").await;
    assert_eq!(
        sample(
            &metrics,
            "shadowcat_rate_limited_total{route=\"/mcp\",limit=\"ip\"}"
        ),
        Some(limited as f64),
        "{metrics}"
    );
}

#[tokio::test]
async fn per_tool_limit_answers_the_call_with_a_json_rpc_error() {
    let (_d, cfg) = config_file(
        r#"
[server]
listen = "127.0.0.1:0"
[limits.per_tool]
echo = { requests = 1, per = "1m" }
[[routes]]
path = "/mcp"
[[routes.upstreams]]
command = "SELF"
args = ["demo-server"]
"#
        .replace("SELF", super::harness::bin())
        .as_str(),
    );
    let gw = start_gateway(&["--config", &cfg], &[]).await;
    let mut c = client(gw.url(), None);
    c.initialize().await;
    assert_eq!(
        c.call_tool(1, "echo", json!({"message": "once"})).await,
        "once"
    );
    let r = c
        .post(json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"message":"twice"}}}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["id"], json!(2));
    assert_eq!(r.rpc_code(), -32029);
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.starts_with("tool `echo`: rate limit exceeded"), "{msg}");
    // Other tools are not limited.
    assert_eq!(c.call_tool(3, "add", json!({"a": 1, "b": 2})).await, "3");
    let (_, _, metrics) = get(&gw.base, "/metrics").await;
    assert_eq!(
        sample(
            &metrics,
            "shadowcat_rate_limited_total{route=\"/mcp\",limit=\"tool\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn affinity_and_principal_binding_hold_across_replicas_sharing_a_store() {
    let redis = super::harness::Redis::start();
    let a = FakeUpstream::start("a").await;
    let b = FakeUpstream::start("b").await;
    let (_d, cfg) = config_file(&alice_and_bob_with(
        &format!("store = \"{}\"", redis.url()),
        "",
        &format!(
            "[[routes]]\npath = \"/mcp\"\n[[routes.upstreams]]\nurl = \"{}\"\n[[routes.upstreams]]\nurl = \"{}\"\n",
            a.url, b.url
        ),
    ));
    // Distinct replica ids: sessions owned by one are continued (adopted) by the other.
    let one = start_gateway(&["--config", &cfg, "--replica-id", "one"], &[]).await;
    let two = start_gateway(&["--config", &cfg], &[("SHADOWCAT_REPLICA_ID", "two")]).await;

    // Two sessions on replica one: round-robin puts them on a and on b.
    let mut placed = Vec::new();
    for i in 0..2 {
        let mut c = client(one.url(), Some("alice-key"));
        c.initialize().await;
        placed.push((c.session.clone(), whoami(&c, i).await));
    }
    let names: Vec<&str> = placed.iter().map(|(_, n)| n.as_str()).collect();
    assert!(names.contains(&"a") && names.contains(&"b"), "{names:?}");
    // Replica two continues each on the upstream its record names, whatever its own
    // round-robin would pick.
    for (i, (sid, name)) in placed.iter().enumerate() {
        for k in 0..2 {
            let mut c = client(two.url(), Some("alice-key"));
            c.session = sid.clone();
            assert_eq!(&whoami(&c, 10 + (i * 2 + k) as i64).await, name);
        }
        // Another principal presenting the id on replica two: not found.
        let mut m = client(two.url(), Some("bob-key"));
        m.session = sid.clone();
        let r = m
            .post(json!({"jsonrpc":"2.0","id":99,"method":"ping"}))
            .await;
        assert_eq!(r.status, 404, "{}", r.body);
    }
}

/// Poll `/metrics` until `series` has `value`.
async fn wait_metric(base: &str, series: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, _, m) = get(base, "/metrics").await;
        if sample(&m, series) == Some(value) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never became {value}:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn active_health_checks_take_unhealthy_upstreams_out_and_back() {
    let ups = [
        FakeUpstream::start("u0").await,
        FakeUpstream::start("u1").await,
    ];
    let (_d, cfg) = config_file(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
[[routes]]
path = "/mcp"
[routes.health]
interval = "100ms"
timeout = "1s"
unhealthy_threshold = 2
healthy_threshold = 2
http_path = "/health"
[[routes.upstreams]]
url = "{}"
[[routes.upstreams]]
url = "{}"
"#,
        ups[0].url, ups[1].url
    ));
    let gw = start_gateway(&["--config", &cfg], &[]).await;
    let healthy = |u: &FakeUpstream| {
        format!(
            "shadowcat_upstream_healthy{{route=\"/mcp\",upstream=\"{}\"}}",
            u.url
        )
    };
    // A session on each, then u1 fails its checks.
    let mut before = Vec::new();
    for i in 0..2 {
        let mut c = Raw::new(gw.url());
        c.initialize().await;
        before.push((whoami(&c, i).await, c));
    }
    ups[1].set_healthy(false);
    wait_metric(&gw.base, &healthy(&ups[1]), 0.0).await;
    for i in 0..4 {
        let mut c = Raw::new(gw.url());
        c.initialize().await;
        assert_eq!(
            whoami(&c, i).await,
            "u0",
            "no new sessions on an unhealthy upstream"
        );
    }
    // Sessions already there stay there.
    for (i, (name, c)) in before.iter().enumerate() {
        assert_eq!(&whoami(c, 10 + i as i64).await, name);
    }
    assert_eq!(
        get(&gw.base, "/ready").await.0,
        200,
        "u0 still takes sessions"
    );
    ups[0].set_healthy(false);
    wait_metric(&gw.base, &healthy(&ups[0]), 0.0).await;
    let (status, _, body) = get(&gw.base, "/ready").await;
    assert_eq!(status, 503, "{body}");
    // Recovery.
    ups[0].set_healthy(true);
    ups[1].set_healthy(true);
    wait_metric(&gw.base, &healthy(&ups[1]), 1.0).await;
    wait_metric(&gw.base, &healthy(&ups[0]), 1.0).await;
    assert_eq!(get(&gw.base, "/ready").await.0, 200);
    let mut seen = std::collections::HashSet::new();
    for i in 0..2 {
        let mut c = Raw::new(gw.url());
        c.initialize().await;
        seen.insert(whoami(&c, i).await);
    }
    assert_eq!(seen.len(), 2, "both take sessions again: {seen:?}");
}

#[tokio::test]
async fn ping_health_checks_keep_a_session_and_catch_a_wedged_server() {
    let u0 = FakeUpstream::start("u0").await;
    let demo = super::harness::bin();
    let (_d, cfg) = config_file(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
[[routes]]
path = "/mcp"
[routes.health]
check = "ping"
interval = "100ms"
timeout = "500ms"
unhealthy_threshold = 2
healthy_threshold = 2
[[routes.upstreams]]
url = "{}"
[[routes.upstreams]]
command = "{demo}"
args = ["demo-server"]
[[routes.upstreams]]
command = "sh"
args = ["-c", "exit 3"]
"#,
        u0.url
    ));
    let gw = start_gateway(&["--config", &cfg], &[]).await;
    let healthy =
        |name: &str| format!("shadowcat_upstream_healthy{{route=\"/mcp\",upstream=\"{name}\"}}");
    // A stdio server that cannot hold a session fails its checks; the demo server passes.
    wait_metric(&gw.base, &healthy("sh"), 0.0).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while u0.count("ping") < 3 {
        assert!(
            Instant::now() < deadline,
            "no pings reached the HTTP upstream"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(u0.sessions(), 1, "one kept session for every ping");
    let (_, _, m) = get(&gw.base, "/metrics").await;
    assert_eq!(sample(&m, &healthy("shadowcat")), Some(1.0), "{m}");
    assert_eq!(sample(&m, &healthy(&u0.url)), Some(1.0), "{m}");

    // Its port still open, but MCP stuck: unhealthy, no new sessions there.
    u0.set_ping_hangs(true);
    wait_metric(&gw.base, &healthy(&u0.url), 0.0).await;
    for _ in 0..3 {
        let mut c = Raw::new(gw.url());
        let r = c.initialize().await;
        let name = &r.messages()[0]["result"]["serverInfo"]["name"];
        assert_ne!(name, "u0", "{}", r.body);
    }
    assert_eq!(
        get(&gw.base, "/ready").await.0,
        200,
        "the demo server takes sessions"
    );
    // Answering again: healthy, through a new session (the stuck one was closed).
    u0.set_ping_hangs(false);
    wait_metric(&gw.base, &healthy(&u0.url), 1.0).await;
    assert!(u0.sessions() >= 2, "a new check session: {}", u0.sessions());
}

/// Direct children of a process.
fn children(pid: u32) -> std::collections::BTreeSet<u32> {
    let out = std::process::Command::new("pgrep")
        .args(["-P", &pid.to_string()])
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

async fn wait_children(pid: u32, n: usize) -> std::collections::BTreeSet<u32> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let c = children(pid);
        if c.len() == n {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "{} children, not {n}: {c:?}",
            c.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn warm_spares_start_sessions_on_running_children() {
    let demo = super::harness::bin();
    let (_d, cfg) = config_file(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[[routes]]\npath = \"/mcp\"\n\
         [[routes.upstreams]]\ncommand = \"{demo}\"\nargs = [\"demo-server\"]\nspares = 2\n"
    ));
    let gw = start_gateway(&["--config", &cfg], &[]).await;
    let pid = gw.child.id().unwrap();
    // Named by the program only (its arguments could carry secrets).
    let spares = "shadowcat_upstream_spares{route=\"/mcp\",upstream=\"shadowcat\"}";
    wait_metric(&gw.base, spares, 2.0).await;
    let before = wait_children(pid, 2).await;

    let mut c = Raw::new(gw.url());
    c.initialize().await;
    assert_eq!(
        c.call_tool(1, "echo", json!({"message": "warm"})).await,
        "warm"
    );
    // The pool is refilled: two spares again, three children in all.
    wait_metric(&gw.base, spares, 2.0).await;
    let during = wait_children(pid, 3).await;
    assert!(before.is_subset(&during), "{before:?} ⊄ {during:?}");
    // The session runs on one of the first spares: ending it ends one of them.
    assert_eq!(c.delete().await.status, 204);
    let after = wait_children(pid, 2).await;
    assert_eq!(
        before.intersection(&after).count(),
        1,
        "{before:?} / {after:?}"
    );

    // A spare that dies while waiting is replaced, and sessions never get a dead one.
    let victim = *after.iter().next().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = children(pid);
        let (_, _, m) = get(&gw.base, "/metrics").await;
        if !now.contains(&victim) && now.len() == 2 && sample(&m, spares) == Some(2.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dead spare was not replaced: {now:?}\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..3 {
        let mut c = Raw::new(gw.url());
        c.initialize().await;
        assert_eq!(c.call_tool(i, "echo", json!({"message": "ok"})).await, "ok");
    }
    let (status, _, body) = get(&gw.base, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        sample(
            &body,
            "shadowcat_upstream_sessions_total{route=\"/mcp\",upstream=\"shadowcat\"}"
        ),
        Some(4.0),
        "{body}"
    );
}

/// A composite /mcp from `--server` flags (two demo servers over stdio) and a composite route
/// from the file, behind an API key: one session lists both servers' tools under their
/// prefixes and a call reaches its server; no key, no entry.
#[tokio::test]
async fn composite_routes_from_flags_and_file_serve_every_servers_tools_behind_auth() {
    let bin = super::harness::bin();
    let (_d, cfg) = config_file(&with_api_keys(
        "",
        &[("ci", "ci-key", "")],
        &format!(
            "[[routes]]\npath = \"/servers/both/mcp\"\n[routes.names]\nseparator = \"-\"\n\
             [[routes.servers]]\nname = \"x\"\ncommand = \"{bin}\"\nargs = [\"demo-server\"]\n\
             [[routes.servers]]\nname = \"y\"\ncommand = \"{bin}\"\nargs = [\"demo-server\"]\n"
        ),
    ));
    let a = format!("a={bin} demo-server");
    let b = format!("b={bin} demo-server");
    let gw = start_gateway(&["--config", &cfg, "--server", &a, "--server", &b], &[]).await;
    let tools = |r: &super::harness::Reply| -> Vec<String> {
        let msgs = r.messages();
        let reply = msgs.iter().find(|m| m["id"] == json!(1)).expect("reply");
        reply["result"]["tools"]
            .as_array()
            .unwrap_or_else(|| panic!("no tools: {reply}"))
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect()
    };
    let list = json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}});

    let mut c = client(gw.url(), Some("ci-key"));
    c.initialize().await;
    let names = tools(&c.post(list.clone()).await);
    for want in ["a__echo", "b__echo"] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("a__") || n.starts_with("b__")),
        "{names:?}"
    );
    assert_eq!(
        c.call_tool(2, "b__echo", json!({"message": "hi"})).await,
        "hi"
    );

    let mut f = client(format!("{}/servers/both/mcp", gw.base), Some("ci-key"));
    f.initialize().await;
    let names = tools(&f.post(list).await);
    assert!(
        names.iter().any(|n| n == "x-echo") && names.iter().any(|n| n == "y-echo"),
        "{names:?}"
    );

    let anonymous = Raw::new(gw.url())
        .post(super::harness::init_body(0, "2025-06-18"))
        .await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);

    // `config check` names each composite problem's field.
    let (_d2, bad) = config_file(
        "[[routes]]\npath = \"/mcp\"\n[[routes.servers]]\nname = \"ok\"\ncommand = \"x\"\n\
         [[routes.servers]]\nname = \"Not OK\"\ncommand = \"y\"\n",
    );
    let (code, _, err) = run(&["config", "check", &bad], &[]).await;
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        err.trim(),
        format!(
            "{bad}: routes[0].servers[1].name: server name `Not OK` must start with a lowercase letter or a digit"
        )
    );
}

/// Tool shaping on a composite route, and a virtual server: what the client sees of each
/// server's tools (allowed, renamed, re-described, a parameter fixed) and what the server gets.
#[tokio::test]
async fn composite_routes_shape_tools_and_make_virtual_servers() {
    let bin = super::harness::bin();
    let (_d, cfg) = config_file(&format!(
        "[[routes]]\npath = \"/mcp\"\ntools = [\"a:echo\", \"a:add\", \"b:ad*\"]\n\
         [[routes.servers]]\nname = \"a\"\ncommand = \"{bin}\"\nargs = [\"demo-server\"]\n\
         [routes.servers.tools]\ndeny = [\"add\"]\n\
         [routes.servers.tools.rename]\necho = \"say\"\n\
         [routes.servers.tools.describe.echo]\ndescription = \"Says what the gateway says.\"\n\
         [routes.servers.tools.fixed.echo]\nmessage = \"fixed by the gateway\"\n\
         [[routes.servers]]\nname = \"b\"\ncommand = \"{bin}\"\nargs = [\"demo-server\"]\n"
    ));
    let admin = super::admin::start(
        &[
            "--config",
            &cfg,
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ],
        &[],
    )
    .await;
    let gw = &admin.server;
    let mut c = client(gw.url(), None);
    c.initialize().await;
    let r = c
        .post(json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}))
        .await;
    let msgs = r.messages();
    let tools = msgs[0]["result"]["tools"]
        .as_array()
        .expect("tools")
        .clone();
    let mut names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    names.sort();
    // a:add is on the route's list but denied by the server's section; b offers only add.
    assert_eq!(names, ["a__say", "b__add"]);
    let say = tools.iter().find(|t| t["name"] == "a__say").unwrap();
    assert_eq!(say["description"], "Says what the gateway says.");
    assert!(
        say["inputSchema"]["properties"].get("message").is_none(),
        "a fixed parameter is not shown: {say}"
    );
    assert_eq!(
        c.call_tool(2, "a__say", json!({})).await,
        "fixed by the gateway"
    );
    assert_eq!(c.call_tool(3, "b__add", json!({"a": 1, "b": 2})).await, "3");
    for (id, hidden) in [(4, "a__echo"), (5, "a__add"), (6, "b__echo")] {
        let r = c
            .post(json!({"jsonrpc":"2.0","id":id,"method":"tools/call",
                "params":{"name":hidden,"arguments":{"message":"x"}}}))
            .await;
        assert_eq!(
            r.messages()[0]["error"]["code"],
            -32602,
            "{hidden}: {}",
            r.body
        );
    }
    let smuggled = c
        .post(json!({"jsonrpc":"2.0","id":7,"method":"tools/call",
            "params":{"name":"a__say","arguments":{"message":"mine"}}}))
        .await;
    assert!(
        smuggled.body.contains("`message` is set by the gateway"),
        "{}",
        smuggled.body
    );
    // Each server's state over the route's sessions is a gauge.
    let (_, _, metrics) = get(&gw.base, "/metrics").await;
    for server in ["a", "b"] {
        let line = format!(
            "shadowcat_composite_server_sessions{{route=\"/mcp\",server=\"{server}\",state=\"up\"}} 1"
        );
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    // The admin API shows each server's state in the session.
    let (status, list) =
        super::admin::call("GET", &format!("{}/api/sessions", admin.admin), None).await;
    assert_eq!(status, 200, "{list}");
    let servers = list["sessions"][0]["servers"].as_array().expect("servers");
    let states: Vec<(&str, &str)> = servers
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["state"].as_str().unwrap()))
        .collect();
    assert_eq!(states, [("a", "up"), ("b", "up")], "{list}");
    // Each names the upstream its leg runs on (a server's one upstream here: the program).
    assert!(
        servers.iter().all(|s| s["upstream"] == "shadowcat"),
        "{list}"
    );

    // `config check` names shaping problems by field.
    let (_d2, bad) = config_file(
        "[[routes]]\npath = \"/mcp\"\ntools = [\"zz:x\"]\n[[routes.servers]]\nname = \"a\"\n\
         command = \"x\"\n[routes.servers.tools.rename]\nx = \"has space\"\n",
    );
    let (code, _, err) = run(&["config", "check", &bad], &[]).await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("routes[0].servers[0].tools.rename.x:"),
        "{err}"
    );
    assert!(
        err.contains("routes[0].tools[0]: `zz` is not a server of this route"),
        "{err}"
    );
}

/// A composite route whose server has an upstream set (`[[routes.servers.upstreams]]`): the
/// session's leg to it fails over from a dead upstream (probed, ejected, counted) to a live one,
/// and calls reach it; a server whose every upstream is down is down in the session (failure
/// `open`) while the other server serves, and health checks of its set see them unhealthy.
/// Each set's upstreams are in `/metrics` and `/api/upstreams` under their server.
#[tokio::test]
async fn a_composite_servers_upstream_set_fails_over_and_a_server_with_none_up_is_down() {
    let bin = super::harness::bin();
    let live = super::harness::Server::demo_http().await;
    let dead = format!("http://127.0.0.1:{}/mcp", free_port());
    let (dead1, dead2) = (
        format!("http://127.0.0.1:{}/mcp", free_port()),
        format!("http://127.0.0.1:{}/mcp", free_port()),
    );
    let (_d, cfg) = config_file(&format!(
        "[[routes]]\npath = \"/mcp\"\n\
         [[routes.servers]]\nname = \"a\"\n\
         [[routes.servers.upstreams]]\nurl = \"{dead}\"\n\
         [[routes.servers.upstreams]]\nurl = \"{}\"\n\
         [[routes.servers]]\nname = \"b\"\ncommand = \"{bin}\"\nargs = [\"demo-server\"]\n\
         [[routes]]\npath = \"/servers/half/mcp\"\n\
         [routes.health]\ninterval = \"50ms\"\nunhealthy_threshold = 1\n\
         [[routes.servers]]\nname = \"gone\"\n\
         [[routes.servers.upstreams]]\nurl = \"{dead1}\"\n\
         [[routes.servers.upstreams]]\nurl = \"{dead2}\"\n\
         [[routes.servers]]\nname = \"b\"\ncommand = \"{bin}\"\nargs = [\"demo-server\"]\n",
        live.url()
    ));
    let (code, out, err) = run(&["config", "check", &cfg], &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(
            "route /mcp: composite of 2 server(s) (a (2 upstream(s), round-robin), b), failure open"
        ),
        "{out}"
    );
    let admin = super::admin::start(
        &[
            "--config",
            &cfg,
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ],
        &[],
    )
    .await;
    let gw = &admin.server;

    // The first session's plan starts on the dead upstream (round-robin): it fails over.
    let mut c = client(gw.url(), None);
    c.initialize().await;
    assert_eq!(
        c.call_tool(1, "a__echo", json!({"message": "over the set"}))
            .await,
        "over the set"
    );
    assert_eq!(
        c.call_tool(2, "b__echo", json!({"message": "b"})).await,
        "b"
    );
    let (status, list) =
        super::admin::call("GET", &format!("{}/api/sessions", admin.admin), None).await;
    assert_eq!(status, 200, "{list}");
    let a = &list["sessions"][0]["servers"][0];
    assert_eq!(a["name"], "a", "{list}");
    assert_eq!(a["state"], "up", "{list}");
    assert_eq!(a["upstream"], json!(live.url()), "{list}");

    let (status, ups) =
        super::admin::call("GET", &format!("{}/api/upstreams", admin.admin), None).await;
    assert_eq!(status, 200, "{ups}");
    let route = ups["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["path"] == "/mcp")
        .expect("/mcp");
    let set = &route["servers"][0];
    assert_eq!(set["name"], "a", "{ups}");
    assert_eq!(set["strategy"], "round-robin", "{ups}");
    assert_eq!(set["upstreams"][0]["name"], json!(dead), "{ups}");
    assert_eq!(set["upstreams"][0]["connect_failures"], 1, "{ups}");
    assert_eq!(set["upstreams"][0]["available"], false, "ejected: {ups}");
    assert_eq!(set["upstreams"][1]["connect_failures"], 0, "{ups}");
    assert_eq!(set["upstreams"][1]["breaker"], "closed", "{ups}");
    let (_, _, metrics) = get(&gw.base, "/metrics").await;
    assert_eq!(
        sample(
            &metrics,
            &format!(
                "shadowcat_upstream_connect_failures_total{{route=\"/mcp\",upstream=\"a={dead}\"}}"
            )
        ),
        Some(1.0),
        "{metrics}"
    );

    // Every upstream of `gone` is down: the session serves `b` alone.
    let mut h = client(format!("{}/servers/half/mcp", gw.base), None);
    h.initialize().await;
    let r = h
        .post(json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}))
        .await;
    let msgs = r.messages();
    let names: Vec<&str> = msgs[0]["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("tools: {}", r.body))
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"b__echo"), "{names:?}");
    assert!(names.iter().all(|n| n.starts_with("b__")), "{names:?}");
    assert_eq!(
        h.call_tool(2, "b__echo", json!({"message": "still"})).await,
        "still"
    );
    let gone = h
        .post(json!({"jsonrpc":"2.0","id":3,"method":"resources/read",
            "params":{"uri":"gone+demo://x"}}))
        .await;
    assert!(
        gone.body.contains("server `gone` of the composite route"),
        "{}",
        gone.body
    );
    let (_, list) = super::admin::call("GET", &format!("{}/api/sessions", admin.admin), None).await;
    let half = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["route"] == "/servers/half/mcp")
        .unwrap_or_else(|| panic!("{list}"));
    assert_ne!(half["servers"][0]["state"], "up", "{list}");
    assert_eq!(half["servers"][1]["state"], "up", "{list}");
    // The set's health checks see both upstreams down.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, _, metrics) = get(&gw.base, "/metrics").await;
        let unhealthy = [&dead1, &dead2].iter().all(|u| {
            sample(
                &metrics,
                &format!(
                    "shadowcat_upstream_healthy{{route=\"/servers/half/mcp\",upstream=\"gone={u}\"}}"
                ),
            ) == Some(0.0)
        });
        if unhealthy {
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// examples/local-gateway.toml runs as shipped (only the ports are moved, so tests do not
/// collide): the demo server answers through it, its health check passes, and the start prints
/// the full endpoint URL. The demo server's own `/health` answers 200.
#[tokio::test]
async fn the_local_gateway_example_runs_as_shipped() {
    let example = super::python::workspace().join("examples/local-gateway.toml");
    let bin_dir = std::path::Path::new(super::harness::bin())
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let admin = super::admin::start(
        &[
            "--config",
            example.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ],
        &[("PATH", &path)],
    )
    .await;
    let gw = &admin.server;
    assert!(
        gw.process.logged(&format!("serving MCP at {}", gw.url())),
        "the full endpoint URL is printed"
    );
    let mut c = client(gw.url(), None);
    c.initialize().await;
    assert_eq!(c.call_tool(1, "add", json!({"a": 1, "b": 1})).await, "2");
    let (status, ups) =
        super::admin::call("GET", &format!("{}/api/upstreams", admin.admin), None).await;
    assert_eq!(status, 200, "{ups}");
    assert_eq!(ups["routes"][0]["upstreams"][0]["healthy"], true, "{ups}");
    // /metrics is served on the admin listener too.
    let (status, _, metrics) = get(&admin.admin, "/metrics").await;
    assert_eq!(status, 200, "{metrics}");
    assert!(metrics.contains("shadowcat_active_sessions 1"), "{metrics}");

    let demo = super::harness::Server::demo_http().await;
    let (status, _, body) = get(&demo.base, "/health").await;
    assert_eq!((status, body.trim()), (200, "ok"));
}

/// `config schema` prints a JSON Schema that every shipped example satisfies and that catches a
/// misspelt key (checked with Python's `jsonschema`, as an editor would use it).
#[tokio::test]
async fn the_config_schema_accepts_the_examples_and_refuses_a_typo() {
    let (code, schema, err) = run(&["config", "schema"], &[]).await;
    assert_eq!(code, 0, "{err}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("schema.json");
    std::fs::write(&path, &schema).unwrap();
    let check = r#"
import glob, json, sys, tomllib, jsonschema
v = jsonschema.Draft202012Validator(json.load(open(sys.argv[1])))
files = sorted(glob.glob(sys.argv[2] + "/*.toml"))
assert len(files) >= 3, files
for f in files:
    errors = [e.message for e in v.iter_errors(tomllib.load(open(f, "rb")))]
    assert not errors, (f, errors)
typo = list(v.iter_errors({"server": {"max_sesions": 3}}))
assert typo and "max_sesions" in typo[0].message, typo
print("schema ok", len(files))
"#;
    let examples = super::python::workspace().join("examples");
    let out = Launch::python()
        .args(["-c", check])
        .arg(&path)
        .arg(&examples)
        .run();
    assert!(
        out.status.success(),
        "{}{}",
        lossy(&out.stdout),
        lossy(&out.stderr)
    );
}
