//! The Redis-backed rate limiter: gateway replicas sharing one private `redis-server` enforce one
//! limit together, and while Redis is down each follows `on_redis_outage` (its own limits, or
//! 503), then shares again once Redis is back.

use super::gateway_support::{
    FakeUpstream, alice_and_bob_with, client, config_file, get, sample, start_gateway,
};
use super::harness::{AnyRedis, Redis, Reply, Server, WAIT, init_body};
use serde_json::json;
use std::time::Instant;

async fn init(gw: &Server, key: Option<&str>) -> Reply {
    client(gw.url(), key).post(init_body(0, "2025-06-18")).await
}

#[tokio::test]
async fn replicas_enforce_one_per_principal_limit() {
    replicas_enforce_one_limit(AnyRedis::single()).await;
}

#[tokio::test]
async fn replicas_enforce_one_per_principal_limit_on_a_redis_cluster() {
    replicas_enforce_one_limit(AnyRedis::cluster()).await;
}

#[tokio::test]
async fn replicas_enforce_one_per_principal_limit_through_sentinel() {
    replicas_enforce_one_limit(AnyRedis::sentinel()).await;
}

/// Two gateways sharing `redis` for their sessions and their limits.
async fn replicas_enforce_one_limit(redis: AnyRedis) {
    let up = FakeUpstream::start("up").await;
    let (_d, cfg) = config_file(&alice_and_bob_with(
        &format!("store = \"{}\"", redis.url()),
        "",
        &format!(
            r#"
[limits]
backend = "redis"
per_principal = {{ requests = 10, per = "1h", burst = 10 }}
[limits.per_tool]
echo = {{ requests = 2, per = "1h" }}
[[routes]]
path = "/mcp"
[[routes.upstreams]]
url = "{up}"
"#,
            up = up.url,
        ),
    ));
    let one = start_gateway(&["--config", &cfg, "--replica-id", "one"], &[]).await;
    let two = start_gateway(&["--config", &cfg, "--replica-id", "two"], &[]).await;

    // 30 requests of one principal, alternating between the replicas: 10 pass in all.
    let mut allowed = [0, 0];
    for i in 0..30 {
        let gw = if i % 2 == 0 { &one } else { &two };
        let r = init(gw, Some("alice-key")).await;
        match r.status {
            200 => allowed[i % 2] += 1,
            429 => {
                assert_eq!(r.rpc_code(), -32029, "{}", r.body);
                assert!(
                    r.body.contains("rate limit exceeded (your limit)"),
                    "{}",
                    r.body
                );
                let h = |n: &str| r.headers.get(n).map(|v| v.to_str().unwrap().to_string());
                let retry: u64 = h("retry-after").unwrap().parse().unwrap();
                assert!((1..=360).contains(&retry), "retry-after {retry}");
                assert_eq!(h("ratelimit-limit").as_deref(), Some("10"));
                assert_eq!(h("ratelimit-remaining").as_deref(), Some("0"));
            }
            s => panic!("unexpected {s}: {}", r.body),
        }
    }
    assert_eq!(allowed[0] + allowed[1], 10, "{allowed:?}");
    assert!(allowed[0] > 0 && allowed[1] > 0, "{allowed:?}");
    // Another principal has its own limit; a tool's limit is shared too: 2 calls of `echo`
    // in all, whichever replica the session is on.
    let mut sessions = Vec::new();
    for gw in [&one, &two] {
        let mut c = client(gw.url(), Some("bob-key"));
        c.initialize().await;
        sessions.push(c);
    }
    let mut refused = 0;
    for i in 0..5 {
        let c = &sessions[i % 2];
        let r = c
            .post(json!({"jsonrpc":"2.0","id":i,"method":"tools/call","params":{"name":"echo","arguments":{}}}))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let reply = r
            .messages()
            .into_iter()
            .find(|m| m["id"] == json!(i))
            .unwrap();
        if reply.get("error").is_some() {
            assert_eq!(reply["error"]["code"], json!(-32029), "{reply}");
            let msg = reply["error"]["message"].as_str().unwrap();
            assert!(msg.starts_with("tool `echo`: rate limit exceeded"), "{msg}");
            refused += 1;
        } else {
            assert_eq!(
                reply["result"]["content"][0]["text"],
                json!("up"),
                "{reply}"
            );
        }
    }
    assert_eq!(refused, 3);
    let (_, _, m) = get(&one.base, "/metrics").await;
    assert_eq!(sample(&m, "shadowcat_ratelimit_redis_up"), Some(1.0), "{m}");
    assert_eq!(
        sample(
            &m,
            "shadowcat_ratelimit_redis_outage_decisions_total{decision=\"local\"}"
        ),
        Some(0.0),
        "{m}"
    );
}

#[tokio::test]
async fn a_redis_outage_follows_on_redis_outage() {
    let mut redis = Redis::start();
    let up = FakeUpstream::start("up").await;
    let config = |outage: &str| {
        config_file(&format!(
            r#"
[server]
listen = "127.0.0.1:0"
[limits]
backend = "redis"
redis_url = "{redis}"
on_redis_outage = "{outage}"
global = {{ requests = 3, per = "1h", burst = 3 }}
[[routes]]
path = "/mcp"
[[routes.upstreams]]
url = "{up}"
"#,
            redis = redis.url(),
            up = up.url,
        ))
    };
    let (_dl, local_cfg) = config("local");
    let (_dd, deny_cfg) = config("deny");
    let local = start_gateway(&["--config", &local_cfg], &[]).await;
    let deny = start_gateway(&["--config", &deny_cfg], &[]).await;

    // Shared: 3 of 8 pass across both.
    let mut ok = 0;
    for i in 0..8 {
        let gw = if i % 2 == 0 { &local } else { &deny };
        if init(gw, None).await.status == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 3);

    redis.stop();
    // `local`: this replica's own limit (a fresh 3) decides, logged and counted.
    let statuses: Vec<u16> = futures_util::future::join_all((0..5).map(|_| init(&local, None)))
        .await
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        2,
        "{statuses:?}"
    );
    let (_, _, m) = get(&local.base, "/metrics").await;
    assert_eq!(sample(&m, "shadowcat_ratelimit_redis_up"), Some(0.0), "{m}");
    assert_eq!(
        sample(
            &m,
            "shadowcat_ratelimit_redis_outage_decisions_total{decision=\"local\"}"
        ),
        Some(5.0),
        "{m}"
    );
    // `deny`: 503 with Retry-After and a JSON-RPC error saying why.
    let r = init(&deny, None).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("Redis unreachable"), "{}", r.body);
    assert_eq!(r.headers.get("retry-after").unwrap(), "1");
    assert!(r.headers.get("ratelimit-limit").is_none());

    // Redis back (empty): each replica returns to the shared limit after its next check.
    // Without Redis neither can answer 200 any more (`local` spent its own 3, `deny` refuses),
    // so every 200 from here on is a decision of the shared limit: exactly 3.
    redis.restart();
    let deadline = Instant::now() + WAIT;
    let (mut ok, mut up) = (0, [false, false]);
    let check = async |gw: &Server| {
        let r = init(gw, None).await;
        assert!(
            matches!(r.status, 200 | 429 | 503),
            "{}: {}",
            r.status,
            r.body
        );
        let (_, _, m) = get(&gw.base, "/metrics").await;
        (
            usize::from(r.status == 200),
            sample(&m, "shadowcat_ratelimit_redis_up") == Some(1.0),
        )
    };
    while !(up[0] && up[1]) {
        assert!(Instant::now() < deadline, "replicas never used Redis again");
        for (i, gw) in [&local, &deny].into_iter().enumerate() {
            let (n, is_up) = check(gw).await;
            ok += n;
            up[i] = is_up;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    for gw in [&local, &deny, &local, &deny, &local, &deny] {
        ok += check(gw).await.0;
    }
    assert_eq!(ok, 3);
}
