//! Upstream credentials of the gateway: an OAuth client-credentials token from a real token
//! endpoint (a local server that checks the client's secret and counts its calls) sent to an
//! upstream that accepts only the tokens that endpoint issued. The client's own credentials
//! never reach the upstream; one token serves many requests; it is refreshed before it expires
//! and refetched once when the upstream refuses it; a dead token endpoint gives a clear error.

use super::gateway_support::{FakeUpstream, client, config_file, start_gateway, with_api_keys};
use super::harness::{Server, init_body};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CLIENT_ID: &str = "gw-client";
const SECRET: &str = "s3cret";
/// base64("gw-client:s3cret")
const BASIC: &str = "Basic Z3ctY2xpZW50OnMzY3JldA==";
const API_KEY: &str = "client-api-key";

/// One token request: its `Authorization` header and its form fields.
type TokenRequest = (Option<String>, HashMap<String, String>);

#[derive(Default)]
struct TokenState {
    calls: AtomicUsize,
    down: AtomicBool,
    expires_in: AtomicU64,
    /// Tokens issued and not revoked.
    valid: Mutex<HashSet<String>>,
    /// Each request: its Authorization header and form fields.
    requests: Mutex<Vec<TokenRequest>>,
}

/// An OAuth token endpoint (client credentials): `tok-N` for the N-th call.
struct TokenServer {
    url: String,
    state: Arc<TokenState>,
}

impl TokenServer {
    async fn start(expires_in: u64) -> TokenServer {
        let state = Arc::new(TokenState::default());
        state.expires_in.store(expires_in, Ordering::SeqCst);
        let app = axum::Router::new()
            .route("/token", axum::routing::post(token))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        TokenServer { url, state }
    }

    fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// The upstream stops accepting every token issued so far.
    fn revoke_all(&self) {
        self.state.valid.lock().unwrap().clear();
    }

    fn requests(&self) -> Vec<TokenRequest> {
        self.state.requests.lock().unwrap().clone()
    }
}

async fn token(State(s): State<Arc<TokenState>>, headers: HeaderMap, body: Bytes) -> Response {
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let auth = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap().to_string());
    s.requests
        .lock()
        .unwrap()
        .push((auth.clone(), form.clone()));
    let n = s.calls.fetch_add(1, Ordering::SeqCst) + 1;
    let json_body = |status: StatusCode, v: Value| {
        (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            v.to_string(),
        )
            .into_response()
    };
    if s.down.load(Ordering::SeqCst) {
        return json_body(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "temporarily_unavailable"}),
        );
    }
    let basic_ok = auth.as_deref() == Some(BASIC);
    let post_ok = form.get("client_id").map(String::as_str) == Some(CLIENT_ID)
        && form.get("client_secret").map(String::as_str) == Some(SECRET);
    if !(basic_ok || post_ok) {
        return json_body(
            StatusCode::UNAUTHORIZED,
            json!({"error": "invalid_client", "error_description": "unknown client or wrong secret"}),
        );
    }
    let tok = match form.get("grant_type").map(String::as_str) {
        Some("client_credentials") => format!("tok-{n}"),
        // RFC 8693: only an access token is exchanged, for an access token.
        Some("urn:ietf:params:oauth:grant-type:token-exchange")
            if form.get("subject_token").is_some_and(|t| !t.is_empty())
                && form.get("subject_token_type").map(String::as_str)
                    == Some("urn:ietf:params:oauth:token-type:access_token") =>
        {
            format!("xchg-{n}")
        }
        _ => {
            return json_body(
                StatusCode::BAD_REQUEST,
                json!({"error": "unsupported_grant_type"}),
            );
        }
    };
    s.valid.lock().unwrap().insert(tok.clone());
    json_body(
        StatusCode::OK,
        json!({
            "access_token": tok,
            "token_type": "Bearer",
            "expires_in": s.expires_in.load(Ordering::SeqCst),
        }),
    )
}

struct GuardState {
    tokens: Arc<TokenState>,
    inner: String,
    http: reqwest::Client,
    /// Every Authorization header received.
    seen: Mutex<Vec<Option<String>>>,
    refused: AtomicUsize,
}

/// An MCP upstream that requires a bearer token the token server issued: a check in front of a
/// [`FakeUpstream`] (401 + `WWW-Authenticate` otherwise, as an MCP resource server answers).
struct GuardedUpstream {
    url: String,
    state: Arc<GuardState>,
    _inner: FakeUpstream,
}

impl GuardedUpstream {
    async fn start(tokens: &TokenServer) -> GuardedUpstream {
        let inner = FakeUpstream::start("up").await;
        let state = Arc::new(GuardState {
            tokens: tokens.state.clone(),
            inner: inner.url.clone(),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            seen: Mutex::new(Vec::new()),
            refused: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .route("/mcp", axum::routing::any(guard))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/mcp", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        GuardedUpstream {
            url,
            state,
            _inner: inner,
        }
    }

    fn seen(&self) -> Vec<Option<String>> {
        self.state.seen.lock().unwrap().clone()
    }

    fn refused(&self) -> usize {
        self.state.refused.load(Ordering::SeqCst)
    }
}

async fn guard(
    State(s): State<Arc<GuardState>>,
    method: axum::http::Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let auth = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or("<non-ascii>").to_string());
    s.seen.lock().unwrap().push(auth.clone());
    let ok = auth
        .as_deref()
        .and_then(|a| a.strip_prefix("Bearer "))
        .is_some_and(|t| s.tokens.valid.lock().unwrap().contains(t));
    if !ok {
        s.refused.fetch_add(1, Ordering::SeqCst);
        return (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                "Bearer error=\"invalid_token\", resource_metadata=\"http://up.test/.well-known/oauth-protected-resource\"",
            )],
        )
            .into_response();
    }
    let mut req = s.http.request(method, &s.inner).body(body);
    for name in [
        "content-type",
        "accept",
        "mcp-session-id",
        "mcp-protocol-version",
    ] {
        if let Some(v) = headers.get(name) {
            req = req.header(name, v);
        }
    }
    let resp = req.send().await.expect("fake upstream answers");
    let mut out = Response::builder().status(resp.status().as_u16());
    for name in ["content-type", "mcp-session-id"] {
        if let Some(v) = resp.headers().get(name) {
            out = out.header(name, v.as_bytes());
        }
    }
    out.body(axum::body::Body::from(resp.bytes().await.unwrap()))
        .unwrap()
}

/// A gateway with API-key authentication in front of `up`, whose token comes from `tokens`.
async fn gateway(
    up: &str,
    tokens: &str,
    client_id: &str,
    oauth_extra: &str,
) -> (Server, tempfile::TempDir) {
    let (dir, cfg) = config_file(&with_api_keys(
        "",
        &[("ci", API_KEY, "")],
        &format!(
            r#"
[[routes]]
path = "/mcp"
[[routes.upstreams]]
url = "{up}"
[routes.upstreams.oauth]
token_url = "{tokens}"
client_id = "{client_id}"
client_secret_env = "UPSTREAM_CLIENT_SECRET"
scope = "mcp:tools"
resource = "{up}"
{oauth_extra}
"#
        ),
    ));
    let gw = start_gateway(&["--config", &cfg], &[("UPSTREAM_CLIENT_SECRET", SECRET)]).await;
    (gw, dir)
}

#[tokio::test]
async fn the_upstream_gets_the_gateways_token_never_the_clients_key() {
    let tokens = TokenServer::start(3600).await;
    let up = GuardedUpstream::start(&tokens).await;
    let (gw, _cfg) = gateway(&up.url, &tokens.url, CLIENT_ID, "").await;

    // Two client sessions, several calls each: one token serves them all.
    for _ in 0..2 {
        let mut c = client(gw.url(), Some(API_KEY));
        c.initialize().await;
        for i in 1..=5 {
            assert_eq!(c.call_tool(i, "whoami", json!({})).await, "up");
        }
        assert_eq!(c.delete().await.status, 204);
    }
    assert_eq!(tokens.calls(), 1, "{:?}", tokens.requests());
    let seen = up.seen();
    assert!(seen.len() >= 2 * 7, "{seen:?}");
    assert!(
        seen.iter().all(|a| a.as_deref() == Some("Bearer tok-1")),
        "{seen:?}"
    );
    assert_eq!(up.refused(), 0);

    // The token request: HTTP Basic client authentication, the grant, scope and RFC 8707
    // resource; the secret is not in the body.
    let (auth, form) = &tokens.requests()[0];
    assert_eq!(auth.as_deref(), Some(BASIC));
    assert_eq!(form["grant_type"], "client_credentials");
    assert_eq!(form["scope"], "mcp:tools");
    assert_eq!(form["resource"], up.url);
    assert!(!form.contains_key("client_secret"), "{form:?}");
}

#[tokio::test]
async fn tokens_are_refreshed_before_expiry_and_refetched_once_on_401() {
    let tokens = TokenServer::start(2).await;
    let up = GuardedUpstream::start(&tokens).await;
    let (gw, _cfg) = gateway(
        &up.url,
        &tokens.url,
        CLIENT_ID,
        "auth_method = \"client_secret_post\"",
    )
    .await;
    let mut c = client(gw.url(), Some(API_KEY));
    c.initialize().await;
    assert_eq!(c.call_tool(1, "whoami", json!({})).await, "up");
    assert_eq!(tokens.calls(), 1);
    // client_secret_post: the credentials are in the form, no Basic header.
    let (auth, form) = &tokens.requests()[0];
    assert_eq!(auth, &None);
    assert_eq!(form["client_id"], CLIENT_ID);
    assert_eq!(form["client_secret"], SECRET);

    // Past half of the 2 s lifetime the next request refreshes the token.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(c.call_tool(2, "whoami", json!({})).await, "up");
    assert_eq!(tokens.calls(), 2);
    assert_eq!(
        up.seen().last().cloned().flatten().as_deref(),
        Some("Bearer tok-2")
    );

    // The upstream stops accepting the token: its 401 makes the gateway fetch a new one and
    // send that request once more; the client never sees the refusal.
    tokens.revoke_all();
    let refused_before = up.refused();
    assert_eq!(c.call_tool(3, "whoami", json!({})).await, "up");
    assert_eq!(up.refused(), refused_before + 1);
    assert_eq!(tokens.calls(), 3);
    assert_eq!(
        up.seen().last().cloned().flatten().as_deref(),
        Some("Bearer tok-3")
    );
}

#[tokio::test]
async fn a_failing_token_endpoint_gives_the_client_a_clear_error() {
    let tokens = TokenServer::start(1).await;
    let up = GuardedUpstream::start(&tokens).await;
    let (gw, _cfg) = gateway(&up.url, &tokens.url, CLIENT_ID, "").await;

    // Down when a session starts: initialize is refused with 502 and a JSON-RPC error that
    // names the token endpoint and what it said.
    tokens.set_down(true);
    let r = client(gw.url(), Some(API_KEY))
        .post(init_body(0, "2025-06-18"))
        .await;
    assert_eq!(r.status, 502, "{}", r.body);
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains(&format!("token endpoint {}", tokens.url)) && msg.contains("HTTP 503"),
        "{msg}"
    );
    assert!(up.seen().is_empty(), "{:?}", up.seen());

    // Up again: sessions work.
    tokens.set_down(false);
    let mut c = client(gw.url(), Some(API_KEY));
    c.initialize().await;
    assert_eq!(c.call_tool(1, "whoami", json!({})).await, "up");

    // Down once the 1 s token has expired: the call gets a JSON-RPC error saying why.
    tokens.set_down(true);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = c
        .post(json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"whoami","arguments":{}}}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let reply = r
        .messages()
        .into_iter()
        .find(|m| m["id"] == json!(2))
        .unwrap_or_else(|| panic!("no reply: {}", r.body));
    let msg = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains(&format!("no access token for {}", up.url))
            && msg.contains(&format!("token endpoint {}", tokens.url)),
        "{reply}"
    );

    // A client the endpoint does not know: the error says so.
    let (gw2, _cfg2) = gateway(&up.url, &tokens.url, "nobody", "").await;
    tokens.set_down(false);
    let r = client(gw2.url(), Some(API_KEY))
        .post(init_body(0, "2025-06-18"))
        .await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(
        r.body.contains("refused the client `nobody` with HTTP 401")
            && r.body.contains("invalid_client"),
        "{}",
        r.body
    );
}

#[tokio::test]
async fn token_exchange_trades_each_clients_jwt_for_an_upstream_token_once() {
    use super::gateway_support::{AUDIENCE, ISSUER, JwksServer, TestKey};
    let key = TestKey::load("ed1.pem", "ed-1", jsonwebtoken::Algorithm::EdDSA);
    let jwks = JwksServer::start(&[&key]).await;
    let tokens = TokenServer::start(3600).await;
    let up = GuardedUpstream::start(&tokens).await;
    let (_d, cfg) = config_file(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
public_url = "https://mcp.example.test"
[auth.jwt]
issuer = "{ISSUER}"
audience = ["{AUDIENCE}"]
jwks_url = "{jwks}"
[[routes]]
path = "/mcp"
[[routes.upstreams]]
url = "{up}"
[routes.upstreams.oauth]
token_url = "{sts}"
client_id = "{CLIENT_ID}"
client_secret_env = "GW_SECRET"
grant = "token_exchange"
audience = "upstream-api"
"#,
        jwks = jwks.url,
        up = up.url,
        sts = tokens.url,
    ));
    let gw = start_gateway(&["--config", &cfg], &[("GW_SECRET", SECRET)]).await;
    let alice = key.token(json!({"sub": "alice"}));
    let bob = key.token(json!({"sub": "bob"}));

    // Alice's JWT is exchanged; the upstream gets the exchanged token, never the JWT.
    let mut a = client(gw.url(), Some(&alice));
    a.initialize().await;
    assert_eq!(a.call_tool(1, "whoami", json!({})).await, "up");
    assert_eq!(tokens.calls(), 1);
    let (_, form) = tokens.requests()[0].clone();
    assert_eq!(
        form["subject_token"], alice,
        "the client's token is what is exchanged"
    );
    assert_eq!(form["audience"], "upstream-api");
    assert!(
        up.seen()
            .iter()
            .all(|h| h.as_deref() == Some("Bearer xchg-1")),
        "{:?}",
        up.seen()
    );
    // A second session of the same token reuses the exchange.
    let mut a2 = client(gw.url(), Some(&alice));
    a2.initialize().await;
    assert_eq!(a2.call_tool(1, "whoami", json!({})).await, "up");
    assert_eq!(tokens.calls(), 1, "cached per client token");
    // Bob gets his own.
    let mut b = client(gw.url(), Some(&bob));
    b.initialize().await;
    assert_eq!(b.call_tool(1, "whoami", json!({})).await, "up");
    assert_eq!(tokens.calls(), 2);
    assert_eq!(
        up.seen().last().cloned().flatten().as_deref(),
        Some("Bearer xchg-2")
    );
    let seen = format!("{:?}", up.seen());
    assert!(!seen.contains(&alice) && !seen.contains(&bob), "{seen}");

    // The token endpoint refuses: the client is told clearly, nothing reaches the upstream.
    tokens.set_down(true);
    let carol = key.token(json!({"sub": "carol"}));
    let before = up.seen().len();
    let r = client(gw.url(), Some(&carol))
        .post(init_body(0, "2025-06-18"))
        .await;
    assert_eq!(r.status, 502, "{}", r.body);
    let msg = r.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        msg.contains("token endpoint") && msg.contains("HTTP 503"),
        "{msg}"
    );
    assert!(
        !msg.contains(&carol),
        "the token is never in an error: {msg}"
    );
    assert_eq!(up.seen().len(), before);
    gw.terminate().await;
}

#[tokio::test]
async fn token_exchange_needs_jwt_clients() {
    let (_d, cfg) = config_file(
        r#"
[server]
listen = "127.0.0.1:0"
[[routes]]
path = "/mcp"
[[routes.upstreams]]
url = "http://127.0.0.1:9/mcp"
[routes.upstreams.oauth]
token_url = "http://127.0.0.1:9/token"
client_id = "gw"
client_secret_env = "GW_SECRET"
grant = "token_exchange"
"#,
    );
    let (code, _, err) =
        super::gateway_support::run(&["config", "check", &cfg], &[("GW_SECRET", "x")]).await;
    assert_ne!(code, 0);
    assert!(
        err.contains("routes[0].upstreams.oauth.grant") && err.contains("[auth.jwt]"),
        "{err}"
    );
}
