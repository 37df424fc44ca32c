//! The gateway's admin listener: the JSON API (sessions list/show/end, upstreams, redacted
//! configuration, metrics, the token), live traffic over SSE, and `gateway --record/--rules`.

use super::gateway_support::{client, config_file, gateway, key_hash, run};
use super::harness::{Raw, Server, SseStream, WAIT};
use serde_json::{Value, json};

/// A gateway with its admin URL.
pub struct AdminGateway {
    pub server: Server,
    pub admin: String,
}

/// `shadowcat gateway ARGS` (with `env`, and an admin listener); waits until both listen.
pub async fn start(args: &[&str], env: &[(&str, &str)]) -> AdminGateway {
    let server = gateway(args, env).with_admin().serve().await;
    let admin = server.admin.clone().expect("an admin listener");
    AdminGateway { server, admin }
}

/// `shadowcat gateway --demo` on ephemeral ports, with an admin listener, plus `extra`.
pub async fn demo_with_admin(extra: &[&str]) -> AdminGateway {
    let base = [
        "--demo",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
    ];
    start(&[&base[..], extra].concat(), &[]).await
}

/// One admin API call: (status, JSON body).
pub async fn call(method: &str, url: &str, token: Option<&str>) -> (u16, Value) {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut req = http.request(method.parse().unwrap(), url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = tokio::time::timeout(WAIT, req.send())
        .await
        .expect("admin API in time")
        .expect("admin API reachable");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| json!({ "text": text }));
    (status, body)
}

const ADMIN_TOKEN: &str = "admin-token-7f3a9c";
const UPSTREAM_SECRET: &str = "upstream-secret-5d1e";
const CLIENT_KEY: &str = "client-key-0b8e";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_lists_shows_and_ends_sessions_and_redacts_the_config() {
    let demo = Server::demo_http().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sessions.db");
    let hash = key_hash(CLIENT_KEY);
    let (_cfg_dir, cfg) = config_file(&format!(
        r#"
[server]
public_url = "https://mcp.example.test"
listen = "127.0.0.1:0"
store = "sqlite:{db}"
[auth]
[[auth.api_keys]]
name = "ci"
sha256 = "{hash}"
[admin]
listen = "127.0.0.1:0"
token_env = "TEST_ADMIN_TOKEN"
[[routes]]
path = "/mcp"
[[routes.upstreams]]
url = "{url}"
headers = {{ Authorization = "Bearer {UPSTREAM_SECRET}" }}
"#,
        db = db.display(),
        url = demo.url(),
    ));
    let gw = start(&["--config", &cfg], &[("TEST_ADMIN_TOKEN", ADMIN_TOKEN)]).await;
    let admin = gw.admin.clone();
    let tok = Some(ADMIN_TOKEN);

    // Without the token, or with another one: 401, and nothing is listed.
    for wrong in [None, Some("nope")] {
        let (status, body) = call("GET", &format!("{admin}/api/sessions"), wrong).await;
        assert_eq!(status, 401, "{body}");
        assert!(body["error"].as_str().unwrap().contains("admin token"));
    }
    // The page itself holds no data and needs no token.
    let page = reqwest::get(format!("{admin}/")).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );

    let mut c = client(format!("{}/mcp", gw.server.base), Some(CLIENT_KEY));
    c.initialize().await;
    let id = c.session.clone().unwrap();
    assert_eq!(c.call_tool(1, "add", json!({"a": 2, "b": 3})).await, "5");

    let (status, list) = call("GET", &format!("{admin}/api/sessions"), tok).await;
    assert_eq!(status, 200, "{list}");
    let sessions = list["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{list}");
    let s = &sessions[0];
    assert_eq!(s["id"], id.as_str());
    assert_eq!(s["route"], "/mcp");
    assert_eq!(s["principal"], "key:ci");
    assert_eq!(s["client"]["name"], "raw-test");
    assert_eq!(s["upstream"], demo.url());
    assert_eq!(s["protocol_version"], "2025-06-18");
    assert_eq!(s["inflight"], 0);

    let (status, one) = call("GET", &format!("{admin}/api/sessions/{id}"), tok).await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["client_info"]["name"], "raw-test");
    assert!(one["client_capabilities"].is_object(), "{one}");
    assert!(one["upstream_session_id"].is_string(), "{one}");
    let (status, _) = call("GET", &format!("{admin}/api/sessions/nope"), tok).await;
    assert_eq!(status, 404);

    let (status, up) = call("GET", &format!("{admin}/api/upstreams"), tok).await;
    assert_eq!(status, 200, "{up}");
    let route = &up["routes"][0];
    assert_eq!(route["path"], "/mcp");
    assert_eq!(route["strategy"], "round-robin");
    let member = &route["upstreams"][0];
    assert_eq!(member["name"], demo.url());
    assert_eq!(member["sessions"], 1);
    assert_eq!(member["healthy"], true);
    assert_eq!(member["available"], true);
    assert_eq!(member["connect_failures"], 0);

    let (status, m) = call("GET", &format!("{admin}/api/metrics"), tok).await;
    assert_eq!(status, 200, "{m}");
    assert!(m["requests_total"].as_u64().unwrap() >= 3, "{m}");
    assert_eq!(m["active_sessions"], 1);
    assert_eq!(m["store"]["backend"], "sqlite");

    // The configuration: complete, but no secret in it.
    let (status, conf) = call("GET", &format!("{admin}/api/config"), tok).await;
    assert_eq!(status, 200, "{conf}");
    let text = conf.to_string();
    for secret in [UPSTREAM_SECRET, ADMIN_TOKEN, hash.as_str()] {
        assert!(!text.contains(secret), "secret {secret} in {text}");
    }
    assert_eq!(
        conf["routes"][0]["upstreams"][0]["headers"]["Authorization"],
        "[REDACTED]"
    );
    assert_eq!(conf["auth"]["api_keys"][0]["sha256"], "[REDACTED]");
    assert_eq!(conf["auth"]["api_keys"][0]["name"], "ci");
    assert_eq!(conf["admin"]["token_env"], "TEST_ADMIN_TOKEN");
    assert_eq!(conf["server"]["max_sessions"], 1000);

    // End the session: the client's next request gets 404, the record says ended.
    let (status, ended) = call("DELETE", &format!("{admin}/api/sessions/{id}"), tok).await;
    assert_eq!(status, 200, "{ended}");
    let after = c
        .post(json!({"jsonrpc":"2.0","id":2,"method":"tools/list"}))
        .await;
    assert_eq!(after.status, 404, "{}", after.body);
    let (status, _) = call("DELETE", &format!("{admin}/api/sessions/{id}"), tok).await;
    assert_eq!(status, 404);
    let (_, list) = call("GET", &format!("{admin}/api/sessions"), tok).await;
    assert_eq!(list["sessions"], json!([]));
    let (code, out, err) = run(
        &[
            "session",
            "show",
            "--store",
            &format!("sqlite:{}", db.display()),
            &id,
            "--json",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let rec: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rec["status"], "ended", "{rec}");
    gw.server.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_traffic_shows_a_tools_call_as_it_happens() {
    let gw = demo_with_admin(&[]).await;
    let admin = gw.admin.clone();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();

    // No token: loopback names only (a DNS-rebinding page cannot reach it).
    let rebound = http
        .get(format!("{admin}/api"))
        .header("host", "evil.example:9090")
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), 403);
    let cross = http
        .delete(format!("{admin}/api/sessions/x"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), 403);

    let live = http
        .get(format!("{admin}/api/traffic"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    assert_eq!(live.headers()["content-type"], "text/event-stream");
    let mut live = SseStream::new(live);

    let mut c = Raw::new(gw.server.url());
    c.initialize().await;
    let id = c.session.clone().unwrap();
    let mut other = Raw::new(gw.server.url());
    other.initialize().await;
    let other_id = other.session.clone().unwrap();
    let mut only_other = SseStream::new(
        http.get(format!("{admin}/api/traffic?session={other_id}"))
            .send()
            .await
            .unwrap(),
    );
    let text = c
        .call_tool(7, "echo", json!({"message": "hi", "password": "pw-0c4d"}))
        .await;
    assert!(text.contains("hi"), "{text}");

    let call = live.next_matching(|e| e["method"] == "tools/call").await;
    assert_eq!(call["session"], id.as_str());
    assert_eq!(call["direction"], "c2s");
    assert_eq!(call["kind"], "request");
    assert_eq!(call["id"], 7);
    assert_eq!(call["name"], "echo");
    let preview = call["preview"].as_str().unwrap();
    assert!(preview.contains("\"message\":\"hi\""), "{preview}");
    assert!(
        !preview.contains("pw-0c4d"),
        "secret in the preview: {preview}"
    );
    let reply = live
        .next_matching(|e| e["id"] == 7 && e["direction"] == "s2c")
        .await;
    assert_eq!(reply["kind"], "response");
    assert_eq!(reply["session"], id.as_str());

    // A viewer of the other session sees only its traffic: its first event is the other
    // client's request, made after the tools/call above.
    let listed = other
        .post(json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}))
        .await;
    assert_eq!(listed.status, 200);
    let first = only_other.next_matching(|_| true).await;
    assert_eq!(first["session"], other_id.as_str(), "{first}");
    assert_eq!(first["method"], "tools/list", "{first}");
    drop(live);
    gw.server.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_records_tapes_and_applies_rules() {
    let dir = tempfile::tempdir().unwrap();
    let tapes = dir.path().join("tapes");
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[[rule]]\nname = \"no-add\"\ntool = \"add\"\naction = \"block\"\nmessage = \"adding is off\"\n",
    )
    .unwrap();
    let tape_dir = format!("{}/", tapes.display());
    let rules = rules.to_string_lossy();
    let gw = demo_with_admin(&["--record", &tape_dir, "--rules", &rules]).await;
    let mut c = Raw::new(gw.server.url());
    c.initialize().await;
    assert_eq!(
        c.call_tool(1, "echo", json!({"message": "taped"})).await,
        "taped"
    );
    let blocked = c
        .post(json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"add","arguments":{"a":1,"b":2}}}))
        .await;
    let msgs = blocked.messages();
    assert!(
        msgs[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("adding is off"),
        "{}",
        blocked.body
    );
    // The same admin listener serves the interceptor's paused list.
    let (status, paused) = call("GET", &format!("{}/intercept/paused", gw.admin), None).await;
    assert_eq!(status, 200, "{paused}");
    assert_eq!(paused["paused"], json!([]));
    assert_eq!(c.delete().await.status, 204);
    gw.server.terminate().await;

    let files: Vec<_> = std::fs::read_dir(&tapes)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "one tape per session: {files:?}");
    let tape = files[0].to_string_lossy().into_owned();
    let (code, out, err) = run(&["tape", "validate", "--strict", &tape], &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(text.contains("\"mode\":\"gateway\""), "{text}");
    assert!(text.contains("tools/call"), "{text}");
    assert!(
        text.contains("adding is off"),
        "the rule's answer is taped: {text}"
    );
}

/// `shadowcat ARGS` fails, saying `why`.
async fn refused(args: &[&str], why: &str) {
    let (code, _, err) = run(args, &[]).await;
    assert_ne!(code, 0, "{args:?} started");
    assert!(err.contains(why), "{args:?}: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_refuses_shadow_and_an_open_admin_without_token() {
    let demo = ["gateway", "--demo", "--listen", "127.0.0.1:0"];
    let shadow = [&demo[..], &["--shadow", "http://127.0.0.1:9/mcp"]].concat();
    refused(&shadow, "--shadow does not apply to `gateway`").await;
    let open = [&demo[..], &["--admin", "0.0.0.0:0"]].concat();
    refused(&open, "admin.listen: `0.0.0.0:0` is not a loopback address").await;
    let (_d, cfg) = config_file(
        "[admin]\ntoken = \"a\"\ntoken_env = \"B\"\n[[routes]]\npath = \"/mcp\"\n[[routes.upstreams]]\nurl = \"http://127.0.0.1:9/mcp\"\n",
    );
    refused(
        &["gateway", "--config", &cfg],
        "admin: give `token` or `token_env`, not both",
    )
    .await;
}
