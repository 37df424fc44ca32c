//! Rules on the principal through a real gateway: API keys authenticate two principals over
//! HTTP, the gateway binds each session to its principal, and rules see it.

use super::Client;
use serde_json::json;
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
    for (key, who) in [("alice-key", "alice"), ("bob-key", "another key holder")] {
        let mut c = Client::with_key(&url, key);
        let (status, _, body) = c.initialize().await;
        assert_eq!(status, 200, "{body}");
        assert!(c.session.is_some(), "a session was created");
        assert_eq!(c.call(1, "whoami").await, who);
    }
    // Without a key the gateway refuses before any rule runs.
    let (status, _, _) = Client::new(&url)
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
