//! The engine in-process: gateways served on 127.0.0.1 ephemeral ports from this test process,
//! against fake upstreams (axum) — placement and failover, adoption over a shared store
//! (composite sessions taken over by racing replicas: `composite.rs`), limits, and teardown.
//! Fast: nothing is spawned, no binary is built.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};
use shadowcat_gateway::{Gateway, GatewayConfig, GatewayHooks, admin, gateway};
use shadowcat_proxy::admin::AdminServer;
use shadowcat_store::{MemoryStore, SessionStore};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

mod composite;
mod principal;
mod servers;

const WAIT: Duration = Duration::from_secs(30);

/// A Streamable HTTP upstream that names itself in every tool result, issues its own session
/// ids and remembers which ones it was asked to end. Its tools: `x` (answers its name),
/// `fail` (a tool error), `boom` (HTTP 500) and `slow` (answers once the test opens its
/// `gate`).
#[derive(Default)]
struct Fake {
    name: String,
    /// `initialize`s answered.
    sessions: AtomicUsize,
    /// Session ids presented on requests after `initialize`.
    seen: Mutex<Vec<String>>,
    deleted: Mutex<Vec<String>>,
    /// Issues no session id (a composite session continued on another replica starts it
    /// afresh, as it does a stdio server).
    sessionless: bool,
    /// How long it takes to answer `initialize`.
    init_delay: Duration,
    /// The tools called, in order.
    calls: Mutex<Vec<String>>,
    /// `slow` answers once a permit is added here.
    gate: Gate,
}

/// Permits for `slow` calls to answer (none at first).
struct Gate(tokio::sync::Semaphore);

impl Default for Gate {
    fn default() -> Gate {
        Gate(tokio::sync::Semaphore::new(0))
    }
}

impl Gate {
    /// Let `n` more `slow` calls answer.
    fn add_permits(&self, n: usize) {
        self.0.add_permits(n);
    }
}

impl Fake {
    async fn start(name: &str) -> (Arc<Fake>, String) {
        let (fake, url, _) = Fake::serve(Fake::named(name), CancellationToken::new()).await;
        (fake, url)
    }

    fn named(name: &str) -> Fake {
        Fake {
            name: name.to_string(),
            ..Fake::default()
        }
    }

    /// Serve `fake` until `stop` is cancelled; once the returned task has ended, its port
    /// refuses connections.
    async fn serve(fake: Fake, stop: CancellationToken) -> (Arc<Fake>, String, JoinHandle<()>) {
        let fake = Arc::new(fake);
        let app = axum::Router::new()
            .route(
                "/mcp",
                axum::routing::post(fake_post)
                    .get(|| async { StatusCode::METHOD_NOT_ALLOWED })
                    .delete(fake_delete),
            )
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/mcp", listener.local_addr().unwrap());
        let done = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
                .unwrap();
        });
        (fake, url, done)
    }

    fn deleted(&self) -> Vec<String> {
        self.deleted.lock().unwrap().clone()
    }

    /// How many times tool `name` was called.
    fn called(&self, name: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| *c == name)
            .count()
    }
}

async fn fake_post(State(f): State<Arc<Fake>>, headers: HeaderMap, body: Bytes) -> Response {
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(id) = v.get("id").cloned().filter(|_| v.get("method").is_some()) else {
        return StatusCode::ACCEPTED.into_response();
    };
    if let Some(s) = headers.get("mcp-session-id") {
        let s = s.to_str().unwrap().to_string();
        if f.deleted().contains(&s) {
            // As a real server: an ended session is not found.
            return StatusCode::NOT_FOUND.into_response();
        }
        f.seen.lock().unwrap().push(s);
    }
    let (result, session) = match v["method"].as_str().unwrap_or("") {
        "initialize" => {
            tokio::time::sleep(f.init_delay).await;
            let n = f.sessions.fetch_add(1, Ordering::SeqCst);
            let r = json!({"protocolVersion": v["params"]["protocolVersion"],
                "capabilities": {"tools": {}}, "serverInfo": {"name": f.name, "version": "1"}});
            (r, (!f.sessionless).then(|| format!("{}-{n}", f.name)))
        }
        "tools/list" => {
            let tools: Vec<Value> = ["x", "fail", "boom", "slow"]
                .iter()
                .map(|t| json!({"name": t, "inputSchema": {"type": "object"}}))
                .collect();
            (json!({ "tools": tools }), None)
        }
        "tools/call" if v["params"]["name"] == "boom" => {
            f.calls.lock().unwrap().push("boom".into());
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
        "tools/call" if v["params"]["name"] == "slow" => {
            f.calls.lock().unwrap().push("slow".into());
            f.gate.0.acquire().await.unwrap().forget();
            (json!({"content": [{"type": "text", "text": f.name}]}), None)
        }
        "tools/call" if v["params"]["name"] == "fail" => (
            json!({"content": [{"type": "text", "text": "failed"}], "isError": true}),
            None,
        ),
        "tools/call" => {
            let name = v["params"]["name"].as_str().unwrap_or_default().to_string();
            f.calls.lock().unwrap().push(name);
            (json!({"content": [{"type": "text", "text": f.name}]}), None)
        }
        _ => (json!({}), None),
    };
    let body = json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string();
    let mut r = ([("content-type", "application/json")], body).into_response();
    if let Some(s) = session {
        r.headers_mut().insert("mcp-session-id", s.parse().unwrap());
    }
    r
}

async fn fake_delete(State(f): State<Arc<Fake>>, headers: HeaderMap) -> StatusCode {
    if let Some(s) = headers.get("mcp-session-id") {
        f.deleted
            .lock()
            .unwrap()
            .push(s.to_str().unwrap().to_string());
    }
    StatusCode::OK
}

/// A gateway from `config` served in this process; cancel `stop` to shut it down.
struct Running {
    url: String,
    /// Its admin API (sessions of every kind, from the session host's table).
    admin: String,
    stop: CancellationToken,
    done: JoinHandle<()>,
}

async fn serve(config: &str, store: Arc<dyn SessionStore>, replica: &str) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve_on(listener, config, store, replica).await
}

/// A gateway whose replica id is its own URL (so other replicas forward to it).
async fn serve_addressed(config: &str, store: Arc<dyn SessionStore>) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let replica = format!("http://{}", listener.local_addr().unwrap());
    serve_on(listener, config, store, &replica).await
}

async fn serve_on(
    listener: tokio::net::TcpListener,
    config: &str,
    store: Arc<dyn SessionStore>,
    replica: &str,
) -> Running {
    let mut cfg = GatewayConfig::parse("engine.toml", config).unwrap();
    cfg.validate("engine.toml").unwrap();
    cfg.server.replica_id = Some(replica.to_string());
    // It serves the admin API below (the series is timed only with an admin listener).
    cfg.admin
        .get_or_insert_with(shadowcat_gateway::config::AdminConfig::default);
    let gw = Gateway::new(&cfg, "engine.toml").unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = format!("http://{}", admin_listener.local_addr().unwrap());
    let api = AdminServer::new(None).extension("gateway", admin::routes(gw.clone()));
    tokio::spawn(api.serve(admin_listener, stop.clone()));
    let server = cfg.server.clone();
    let token = stop.clone();
    let done = tokio::spawn(async move {
        let hooks = GatewayHooks::default();
        gateway(listener, gw, &server, hooks, store, token, || {})
            .await
            .unwrap();
    });
    Running {
        url,
        admin,
        stop,
        done,
    }
}

impl Running {
    /// GET `path` of its admin API, as JSON.
    async fn admin_get(&self, path: &str) -> Value {
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let text = http
            .get(format!("{}{path}", self.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// The live sessions its admin API lists (id, kind).
    async fn sessions(&self) -> Vec<(String, String)> {
        let v = self.admin_get("/api/sessions").await;
        v["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let field = |k: &str| s[k].as_str().unwrap_or_default().to_string();
                (field("id"), field("kind"))
            })
            .collect()
    }

    async fn shutdown(self) {
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.done)
            .await
            .expect("the gateway stops")
            .unwrap();
    }
}

fn route(upstreams: &[&str], extra: &str) -> String {
    let mut s =
        format!("[server]\nlisten = \"127.0.0.1:0\"\n{extra}\n[[routes]]\npath = \"/mcp\"\n");
    for u in upstreams {
        s.push_str(&format!("[[routes.upstreams]]\nurl = \"{u}\"\n"));
    }
    s
}

/// A raw Streamable HTTP client (the engine tests' one).
struct Client {
    http: reqwest::Client,
    url: String,
    /// Its API key (`Authorization: Bearer`), if any.
    key: Option<String>,
    session: Option<String>,
}

impl Client {
    fn new(url: &str) -> Client {
        Client {
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            url: url.to_string(),
            key: None,
            session: None,
        }
    }

    /// A client that presents API key `key`.
    fn with_key(url: &str, key: &str) -> Client {
        Client {
            key: Some(key.to_string()),
            ..Client::new(url)
        }
    }

    async fn post(&mut self, body: Value) -> (u16, HeaderMap, Value) {
        let mut req = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body.to_string());
        if let Some(k) = &self.key {
            req = req.bearer_auth(k);
        }
        if let Some(s) = &self.session {
            req = req
                .header("mcp-session-id", s)
                .header("mcp-protocol-version", "2025-06-18");
        }
        let resp = tokio::time::timeout(WAIT, req.send())
            .await
            .unwrap()
            .unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        if let Some(s) = headers.get("mcp-session-id") {
            self.session = Some(s.to_str().unwrap().to_string());
        }
        let text = resp.text().await.unwrap();
        (status, headers, answer_of(&text))
    }

    /// `initialize`; the status and the server's name.
    async fn initialize(&mut self) -> (u16, HeaderMap, Value) {
        self.post(json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
            "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"engine","version":"1"}}}))
            .await
    }

    /// Which upstream answers a tool call.
    async fn who(&mut self, id: i64) -> String {
        self.call(id, "x").await
    }

    /// The text of tool `name`'s result.
    async fn call(&mut self, id: i64, name: &str) -> String {
        let (status, _, body) = self
            .post(json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":name,"arguments":{}}}))
            .await;
        assert_eq!(status, 200, "{body}");
        body["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or_else(|| panic!("no result text: {body}"))
            .to_string()
    }

    async fn delete(&self) -> u16 {
        let mut req = self.http.delete(&self.url);
        if let Some(s) = &self.session {
            req = req.header("mcp-session-id", s);
        }
        req.send().await.unwrap().status().as_u16()
    }
}

/// A POST's answer: its JSON body, or the JSON-RPC answer among the events of an SSE body
/// (`Null` for neither).
fn answer_of(text: &str) -> Value {
    if let Ok(v) = serde_json::from_str(text) {
        return v;
    }
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .find(|v| v.get("id").is_some() && v.get("method").is_none())
        .unwrap_or(Value::Null)
}

/// Wait until `f` holds (upstream effects are asynchronous).
async fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A gateway whose `/mcp` balances round-robin over port 1 on loopback (nothing listens
/// there) and `url`.
async fn behind_a_dead_upstream(url: &str) -> Running {
    serve(
        &route(&["http://127.0.0.1:1/mcp", url], "").replace(
            "path = \"/mcp\"\n",
            "path = \"/mcp\"\nbalance = \"round-robin\"\n",
        ),
        Arc::new(MemoryStore::new()),
        "one",
    )
    .await
}

#[tokio::test]
async fn a_new_session_fails_over_from_an_unreachable_upstream() {
    let (fake, url) = Fake::start("b").await;
    let gw = behind_a_dead_upstream(&url).await;
    for i in 0..4 {
        let mut c = Client::new(&gw.url);
        let (status, _, body) = c.initialize().await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["result"]["serverInfo"]["name"], "b", "{body}");
        assert_eq!(c.who(i).await, "b");
    }
    assert_eq!(fake.sessions.load(Ordering::SeqCst), 4);
    gw.shutdown().await;
}

#[tokio::test]
async fn the_admin_series_counts_calls_errors_and_upstream_states() {
    let (_fake, url) = Fake::start("up").await;
    let gw = behind_a_dead_upstream(&url).await;
    let mut c = Client::new(&gw.url);
    assert_eq!(c.initialize().await.0, 200);
    assert_eq!(c.who(1).await, "up");
    assert_eq!(c.who(2).await, "up");
    let (status, _, body) = c
        .post(json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"fail","arguments":{}}}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["result"]["isError"], true);
    let v = gw.admin_get("/api/series").await;
    let sum = |k: &str| -> u64 {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_u64().unwrap())
            .sum()
    };
    assert!(sum("requests") >= 4, "{v}");
    assert_eq!(sum("errors"), 1, "the failed tool result: {v}");
    assert!(
        v["latency_p50_ms"]
            .as_array()
            .unwrap()
            .iter()
            .any(Value::is_number),
        "{v}"
    );
    let tools = v["tools"].as_array().unwrap();
    let tool = |n: &str| tools.iter().find(|t| t["name"] == n).cloned().unwrap();
    assert_eq!(
        (tool("x")["calls"].clone(), tool("x")["errors"].clone()),
        (json!(2), json!(0))
    );
    assert_eq!(
        (
            tool("fail")["calls"].clone(),
            tool("fail")["errors"].clone()
        ),
        (json!(1), json!(1))
    );
    assert!(tool("x")["p99_ms"].is_number(), "{v}");
    let ups = v["upstreams"].as_array().unwrap();
    assert_eq!(ups.len(), 2, "{v}");
    let last = |u: &Value, k: &str| u[k].as_array().unwrap().last().unwrap().clone();
    // The unreachable one was ejected when the session failed over from it.
    assert_eq!(ups[0]["name"], "http://127.0.0.1:1/mcp");
    assert_eq!(last(&ups[0], "states"), "ejected", "{v}");
    let failures: u64 = ups[0]["connect_failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert!(failures >= 1, "{v}");
    assert_eq!(last(&ups[1], "states"), "up", "{v}");
    assert_eq!(last(&ups[1], "sessions"), 1, "{v}");
    gw.shutdown().await;
}

/// Two gateways (replicas `one` and `two`) on one upstream and a shared store, and the id of a
/// session created on `one`.
async fn a_session_on_one_of_two() -> (Arc<Fake>, Running, Running, String) {
    let (fake, url) = Fake::start("up").await;
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let config = route(&[&url], "");
    let one = serve(&config, store.clone(), "one").await;
    let two = serve(&config, store, "two").await;
    let mut c = Client::new(&one.url);
    let (status, _, _) = c.initialize().await;
    assert_eq!(status, 200);
    let sid = c.session.clone().unwrap();
    (fake, one, two, sid)
}

#[tokio::test]
async fn a_session_is_adopted_by_another_gateway_over_a_shared_store() {
    let (fake, one, two, sid) = a_session_on_one_of_two().await;
    // The other gateway continues it, on the same upstream session.
    let mut on_two = Client::new(&two.url);
    on_two.session = Some(sid.clone());
    assert_eq!(on_two.who(1).await, "up");
    assert_eq!(fake.seen.lock().unwrap().last().unwrap(), "up-0");
    assert_eq!(
        fake.sessions.load(Ordering::SeqCst),
        1,
        "no second upstream session"
    );
    // Ended there: gone everywhere, and the upstream session is ended.
    assert_eq!(on_two.delete().await, 204);
    eventually("the upstream session is deleted", || {
        fake.deleted().contains(&"up-0".to_string())
    })
    .await;
    // The first gateway still holds its copy: its upstream says the session is gone, so the
    // request fails with an error (never a result) and the session ends there too.
    let mut again = Client::new(&one.url);
    again.session = Some(sid);
    let (status, _, body) = again
        .post(json!({"jsonrpc":"2.0","id":2,"method":"ping"}))
        .await;
    assert!(
        status == 404 || body.get("error").is_some(),
        "{status} {body}"
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    for id in 3.. {
        let (status, _, body) = again
            .post(json!({"jsonrpc":"2.0","id":id,"method":"ping"}))
            .await;
        if status == 404 {
            break;
        }
        assert!(body.get("error").is_some(), "never a result: {body}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the session never ended"
        );
    }
    one.shutdown().await;
    two.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_adopt_a_session_once() {
    let (fake, one, two, sid) = a_session_on_one_of_two().await;
    // Eight requests reach the other gateway at once: each may start adopting the session, one
    // wins, the others use it.
    let racers = (0..8).map(|i| {
        let mut on_two = Client::new(&two.url);
        on_two.session = Some(sid.clone());
        tokio::spawn(async move { on_two.who(i).await })
    });
    for who in futures_util::future::join_all(racers).await {
        assert_eq!(who.unwrap(), "up");
    }
    // One adopted session, listed once in the second gateway's session table, on one upstream
    // session. (Whether two adoptions overlap here depends on timing: the window is short.)
    assert_eq!(two.sessions().await, [(sid.clone(), "adopted".to_string())]);
    assert_eq!(
        fake.sessions.load(Ordering::SeqCst),
        1,
        "no second upstream session"
    );
    two.shutdown().await;
    one.shutdown().await;
}

#[tokio::test]
async fn the_session_limit_holds_and_a_deleted_session_frees_its_place() {
    let (fake, url) = Fake::start("up").await;
    let gw = serve(
        &route(&[&url], "max_sessions = 2"),
        Arc::new(MemoryStore::new()),
        "one",
    )
    .await;
    let mut a = Client::new(&gw.url);
    assert_eq!(a.initialize().await.0, 200);
    let mut b = Client::new(&gw.url);
    assert_eq!(b.initialize().await.0, 200);
    let (status, headers, body) = Client::new(&gw.url).initialize().await;
    assert_eq!(status, 503, "{body}");
    assert!(headers.contains_key("retry-after"));
    assert_eq!(
        fake.sessions.load(Ordering::SeqCst),
        2,
        "no upstream session for it"
    );
    assert_eq!(a.delete().await, 204);
    eventually("the upstream session is deleted", || {
        fake.deleted().len() == 1
    })
    .await;
    let mut c = Client::new(&gw.url);
    assert_eq!(c.initialize().await.0, 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn shutdown_ends_every_upstream_session() {
    let (fake, url) = Fake::start("up").await;
    let gw = serve(&route(&[&url], ""), Arc::new(MemoryStore::new()), "one").await;
    for _ in 0..3 {
        assert_eq!(Client::new(&gw.url).initialize().await.0, 200);
    }
    gw.shutdown().await;
    let mut deleted = fake.deleted();
    deleted.sort();
    assert_eq!(deleted, ["up-0", "up-1", "up-2"]);
}
