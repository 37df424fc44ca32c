//! Rules on the principal through a real gateway: API keys authenticate two principals over
//! HTTP, the gateway binds each session to its principal, and rules see it.

use serde_json::{Value, json};
use shadowcat_gateway::auth::sha256_hex;
use shadowcat_gateway::{Gateway, GatewayConfig, GatewayHooks, gateway};
use shadowcat_proxy::intercept::{Interceptor, PauseBoard, RuleSet};
use shadowcat_proxy::pipeline::Hook;
use shadowcat_store::MemoryStore;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The upstream never answers: every request in this test is answered by a rule, so a reply
/// proves which rule matched.
const RULES: &str = r#"
[[rule]]
method = "initialize"
action = "mock"
result = { protocolVersion = "2025-06-18", capabilities = { tools = {} }, serverInfo = { name = "rules", version = "1" } }

[[rule]]
principal = "key:alice"
tool = "whoami"
action = "mock"
result = { content = [{ type = "text", text = "alice" }] }

[[rule]]
principal = "key:*"
tool = "whoami"
action = "mock"
result = { content = [{ type = "text", text = "another key holder" }] }
"#;

struct Client {
    http: reqwest::Client,
    url: String,
    key: &'static str,
    session: Option<String>,
}

impl Client {
    async fn post(&mut self, body: Value) -> (u16, Value) {
        let mut req = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body.to_string());
        if !self.key.is_empty() {
            req = req.bearer_auth(self.key);
        }
        if let Some(s) = &self.session {
            req = req
                .header("mcp-session-id", s)
                .header("mcp-protocol-version", "2025-06-18");
        }
        let resp = tokio::time::timeout(Duration::from_secs(10), req.send())
            .await
            .expect("answered in time")
            .expect("HTTP works");
        if let Some(s) = resp.headers().get("mcp-session-id") {
            self.session = Some(s.to_str().unwrap().to_string());
        }
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn whoami(&mut self) -> Value {
        let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
            "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}});
        let (status, body) = self.post(init).await;
        assert_eq!(status, 200, "{body}");
        assert!(self.session.is_some(), "a session was created");
        let call = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami","arguments":{}}});
        let (status, body) = self.post(call).await;
        assert_eq!(status, 200, "{body}");
        body["result"]["content"][0]["text"].clone()
    }
}

#[tokio::test]
async fn gateway_sessions_carry_their_principal_to_the_rules() {
    let cfg: GatewayConfig = toml::from_str(&format!(
        r#"
[server]
public_url = "https://mcp.example.com"
[auth]
[[auth.api_keys]]
name = "alice"
sha256 = "{}"
[[auth.api_keys]]
name = "bob"
sha256 = "{}"
[[routes]]
path = "/mcp"
[[routes.upstreams]]
command = "sh"
args = ["-c", "cat > /dev/null"]
"#,
        sha256_hex(b"alice-key"),
        sha256_hex(b"bob-key"),
    ))
    .unwrap();
    let gw = Gateway::new(&cfg, "test").unwrap();
    let icpt = Interceptor::new(
        RuleSet::parse(RULES).unwrap(),
        Arc::new(PauseBoard::default()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let hooks = GatewayHooks {
        before: Vec::new(),
        after: vec![icpt as Arc<dyn Hook>],
        audit: None,
    };
    let server = tokio::spawn({
        let stop = stop.clone();
        let server_cfg = cfg.server.clone();
        async move {
            gateway(
                listener,
                gw,
                &server_cfg,
                hooks,
                Arc::new(MemoryStore::new()),
                stop,
                || {},
            )
            .await
        }
    });
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let client = |key| Client {
        http: http.clone(),
        url: url.clone(),
        key,
        session: None,
    };
    assert_eq!(client("alice-key").whoami().await, "alice");
    assert_eq!(client("bob-key").whoami().await, "another key holder");
    // Without a key the gateway refuses before any rule runs.
    let (status, _) = client("")
        .post(json!({"jsonrpc":"2.0","id":0,"method":"initialize"}))
        .await;
    assert_eq!(status, 401);
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(20), server)
        .await
        .expect("the gateway stops")
        .unwrap()
        .unwrap();
}
