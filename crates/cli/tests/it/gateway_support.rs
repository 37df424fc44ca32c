//! Helpers of the gateway tests: a fake Streamable HTTP upstream that says who it is and records
//! the `Authorization` headers it receives, a JWKS server whose keys can be rotated, JWT signing
//! with the test keys in `tests/fixtures/jwt/`, and starting `shadowcat gateway` with a config
//! file and environment.

use super::harness::{Launch, Raw, Server, bin, lossy};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

pub const ISSUER: &str = "https://issuer.test";
pub const AUDIENCE: &str = "https://gateway.test/mcp";

#[derive(Default)]
struct FakeState {
    name: String,
    authorization: Mutex<Vec<Option<String>>>,
    sessions: AtomicUsize,
    unhealthy: std::sync::atomic::AtomicBool,
    /// Every message received: its method (`reply` for responses).
    methods: Mutex<Vec<String>>,
    /// Faults, see [`Fault`].
    fault: Mutex<Option<Fault>>,
    /// Answer this many more requests (not `initialize`) with HTTP 503.
    unavailable: AtomicUsize,
    /// Answer `initialize` with HTTP 503.
    refuse_initialize: std::sync::atomic::AtomicBool,
    /// Never answer `ping` (a wedged server whose port is still open).
    ping_hangs: std::sync::atomic::AtomicBool,
    /// GET requests received (each answered 405: no server-to-client stream).
    gets: AtomicUsize,
    /// Answer `server/discover` as a 2026-07-28 server (stateless requests are then relayed).
    modern: std::sync::atomic::AtomicBool,
}

/// How the fake misbehaves on `tools/call`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// HTTP 500 with an empty body.
    Error500,
    /// Never answer (the request hangs until the client gives up).
    Hang,
    /// Answer `text/event-stream` and then send nothing.
    SilentStream,
}

/// A minimal Streamable HTTP MCP server: answers `initialize` (serverInfo.name = its name),
/// `tools/call` (text = its name) and anything else with `{}`; 202 for notifications.
pub struct FakeUpstream {
    pub url: String,
    state: Arc<FakeState>,
}

impl FakeUpstream {
    pub async fn start(name: &str) -> FakeUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/mcp", listener.local_addr().unwrap());
        let state = Arc::new(FakeState {
            name: name.to_string(),
            ..FakeState::default()
        });
        let app = axum::Router::new()
            .route(
                "/mcp",
                axum::routing::post(fake_post)
                    .get(|State(s): State<Arc<FakeState>>| async move {
                        s.gets.fetch_add(1, Ordering::SeqCst);
                        StatusCode::METHOD_NOT_ALLOWED
                    })
                    .delete(|| async { StatusCode::OK }),
            )
            .route(
                "/health",
                axum::routing::get(|State(s): State<Arc<FakeState>>| async move {
                    if s.unhealthy.load(Ordering::SeqCst) {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::OK
                    }
                }),
            )
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeUpstream { url, state }
    }

    /// GET requests received.
    pub fn gets(&self) -> usize {
        self.state.gets.load(Ordering::SeqCst)
    }

    /// Every `Authorization` header received (None: absent).
    pub fn authorization(&self) -> Vec<Option<String>> {
        self.state.authorization.lock().unwrap().clone()
    }

    /// Make `GET /health` answer 503 (or 200 again).
    pub fn set_healthy(&self, healthy: bool) {
        self.state.unhealthy.store(!healthy, Ordering::SeqCst);
    }

    /// Misbehave on `tools/call` (or behave again with `None`).
    pub fn set_fault(&self, f: Option<Fault>) {
        *self.state.fault.lock().unwrap() = f;
    }

    /// Answer the next `n` requests other than `initialize` with HTTP 503.
    pub fn unavailable_for(&self, n: usize) {
        self.state.unavailable.store(n, Ordering::SeqCst);
    }

    /// Answer every `initialize` with HTTP 503 (or normally again).
    pub fn refuse_initialize(&self, refuse: bool) {
        self.state.refuse_initialize.store(refuse, Ordering::SeqCst);
    }

    /// Leave every `ping` unanswered (or answer again).
    pub fn set_modern(&self, modern: bool) {
        self.state.modern.store(modern, Ordering::SeqCst);
    }

    pub fn set_ping_hangs(&self, hang: bool) {
        self.state.ping_hangs.store(hang, Ordering::SeqCst);
    }

    /// How many messages with this method arrived.
    pub fn count(&self, method: &str) -> usize {
        self.state
            .methods
            .lock()
            .unwrap()
            .iter()
            .filter(|m| *m == method)
            .count()
    }

    /// Sessions initialized here.
    pub fn sessions(&self) -> usize {
        self.state.sessions.load(Ordering::SeqCst)
    }
}

async fn fake_post(State(s): State<Arc<FakeState>>, headers: HeaderMap, body: Bytes) -> Response {
    s.authorization.lock().unwrap().push(
        headers
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or("<non-ascii>").to_string()),
    );
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let method = v["method"].as_str().unwrap_or("reply").to_string();
    s.methods.lock().unwrap().push(method.clone());
    let Some(id) = v.get("id").cloned().filter(|_| v.get("method").is_some()) else {
        return StatusCode::ACCEPTED.into_response();
    };
    if method != "initialize"
        && s.unavailable
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    if method == "ping" && s.ping_hangs.load(Ordering::SeqCst) {
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
    }
    if method == "initialize" && s.refuse_initialize.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let fault = *s.fault.lock().unwrap();
    match fault.filter(|_| method == "tools/call") {
        Some(Fault::Error500) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        Some(Fault::Hang) => {
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        }
        Some(Fault::SilentStream) => {
            let never = futures_util::stream::pending::<Result<Bytes, std::io::Error>>();
            return (
                [(header::CONTENT_TYPE, "text/event-stream")],
                axum::body::Body::from_stream(never),
            )
                .into_response();
        }
        None => {}
    }
    let result = match v["method"].as_str().unwrap_or("") {
        "initialize" => {
            let n = s.sessions.fetch_add(1, Ordering::SeqCst);
            let result = json!({
                "protocolVersion": v["params"]["protocolVersion"],
                "capabilities": {"tools": {}},
                "serverInfo": {"name": s.name, "version": "1"},
            });
            let body = json!({"jsonrpc":"2.0","id":id,"result":result}).to_string();
            return (
                [
                    (header::CONTENT_TYPE, "application/json".to_string()),
                    (
                        header::HeaderName::from_static("mcp-session-id"),
                        format!("{}-{n}", s.name),
                    ),
                ],
                body,
            )
                .into_response();
        }
        "tools/call" => json!({"content":[{"type":"text","text":s.name}]}),
        // Every tool answers with the server's name.
        "tools/list" => json!({"tools": [
            {"name": "echo", "inputSchema": {"type": "object"}},
            {"name": "whoami", "inputSchema": {"type": "object"}},
        ]}),
        "server/discover" if s.modern.load(Ordering::SeqCst) => json!({
            "supportedVersions": ["2026-07-28"],
            "capabilities": {"tools": {}},
            "_meta": {"io.modelcontextprotocol/serverInfo": {"name": s.name, "version": "1"}},
        }),
        _ => json!({}),
    };
    let body = json!({"jsonrpc":"2.0","id":id,"result":result}).to_string();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// A file of `tests/fixtures/jwt/`.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/jwt/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A test signing key with its JWK (public half).
pub struct TestKey {
    pub kid: String,
    pub alg: Algorithm,
    encoding: EncodingKey,
}

impl TestKey {
    pub fn load(file: &str, kid: &str, alg: Algorithm) -> TestKey {
        let pem = fixture(file);
        let encoding = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
            other => panic!("no test key for {other:?}"),
        }
        .expect("test key");
        TestKey {
            kid: kid.to_string(),
            alg,
            encoding,
        }
    }

    pub fn jwk(&self) -> Jwk {
        let mut jwk = Jwk::from_encoding_key(&self.encoding, self.alg).expect("jwk");
        jwk.common.key_id = Some(self.kid.clone());
        jwk
    }

    /// Sign `claims` (merged over valid defaults: iss, aud, sub, exp in 5 min, scope `mcp`).
    pub fn token(&self, claims: Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.clone());
        self.token_with(h, claims)
    }

    /// [`TestKey::token`] with the header given (its `alg` must be this key's to sign).
    pub fn token_with(&self, header: Header, claims: Value) -> String {
        jsonwebtoken::encode(&header, &claims_over_defaults(claims), &self.encoding).expect("sign")
    }
}

/// Valid claims (iss, aud, sub, exp in 5 min, scope `mcp`) with `claims` merged over them (a
/// `null` removes one).
pub fn claims_over_defaults(claims: Value) -> Value {
    let mut all = json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "exp": now() + 300,
        "iat": now(),
        "scope": "mcp",
    });
    for (k, v) in claims.as_object().expect("claims object") {
        if v.is_null() {
            all.as_object_mut().unwrap().remove(k);
        } else {
            all[k] = v.clone();
        }
    }
    all
}

/// A token signed with HMAC (`alg` HS256/HS384/HS512) using `secret`, e.g. a public key's bytes
/// (the algorithm confusion attack), with header `kid`.
pub fn hmac_token(alg: Algorithm, kid: &str, secret: &[u8], claims: Value) -> String {
    let mut h = Header::new(alg);
    h.kid = Some(kid.to_string());
    jsonwebtoken::encode(
        &h,
        &claims_over_defaults(claims),
        &EncodingKey::from_secret(secret),
    )
    .expect("sign")
}

/// An unsigned token (`alg: none`, empty signature), with header `kid` when given.
pub fn unsigned_token(kid: Option<&str>, claims: Value) -> String {
    let mut header = json!({"alg": "none", "typ": "JWT"});
    if let Some(kid) = kid {
        header["kid"] = json!(kid);
    }
    format!(
        "{}.{}.",
        base64url(header.to_string().as_bytes()),
        base64url(claims_over_defaults(claims).to_string().as_bytes())
    )
}

/// Unpadded base64url (RFC 4648 §5).
pub fn base64url(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[derive(Default)]
struct JwksState {
    keys: Mutex<Vec<Jwk>>,
    fetches: AtomicUsize,
}

/// Serves a JWKS at `/jwks` whose keys can be replaced (key rotation); counts fetches.
pub struct JwksServer {
    pub url: String,
    state: Arc<JwksState>,
}

impl JwksServer {
    pub async fn start(keys: &[&TestKey]) -> JwksServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        let state = Arc::new(JwksState::default());
        let app = axum::Router::new()
            .route(
                "/jwks",
                axum::routing::get(|State(s): State<Arc<JwksState>>| async move {
                    s.fetches.fetch_add(1, Ordering::SeqCst);
                    let set = JwkSet {
                        keys: s.keys.lock().unwrap().clone(),
                    };
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        serde_json::to_string(&set).unwrap(),
                    )
                }),
            )
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let s = JwksServer { url, state };
        s.set(keys);
        s
    }

    pub fn set(&self, keys: &[&TestKey]) {
        *self.state.keys.lock().unwrap() = keys.iter().map(|k| k.jwk()).collect();
    }

    /// Serve these keys without their (optional) `alg` member.
    pub fn set_without_alg(&self, keys: &[&TestKey]) {
        *self.state.keys.lock().unwrap() = keys
            .iter()
            .map(|k| {
                let mut jwk = k.jwk();
                jwk.common.key_algorithm = None;
                jwk
            })
            .collect();
    }

    pub fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }
}

/// A config file in a temp dir (kept alive with the returned guard).
pub fn config_file(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    let p = path.to_string_lossy().into_owned();
    (dir, p)
}

/// `shadowcat gateway ARGS` with extra environment variables, ready once it listens.
pub fn gateway(args: &[&str], env: &[(&str, &str)]) -> Launch {
    Launch::shadowcat(&["gateway"])
        .args(args)
        .envs(env)
        .label("gateway")
        .listening()
}

/// `shadowcat gateway ARGS` with extra environment variables; waits for "listening on".
pub async fn start_gateway(args: &[&str], env: &[(&str, &str)]) -> Server {
    gateway(args, env).serve().await
}

/// Run `shadowcat ARGS` to completion: (exit code, stdout, stderr).
pub async fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Launch::shadowcat(args).envs(env).output().await;
    (
        out.status.code().unwrap_or(-1),
        lossy(&out.stdout),
        lossy(&out.stderr),
    )
}

/// A raw client that sends `Authorization: Bearer TOKEN` on every request.
pub fn client(url: String, token: Option<&str>) -> Raw {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(t) = token {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {t}").parse().unwrap(),
        );
    }
    let mut r = Raw::new(url);
    r.http = reqwest::Client::builder()
        .no_proxy()
        .default_headers(headers)
        .build()
        .unwrap();
    r
}

/// GET a path of the gateway (metrics, ready, metadata): (status, headers, body).
pub async fn get(base: &str, path: &str) -> (u16, reqwest::header::HeaderMap, String) {
    let r = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("{base}{path}"))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap())
}

/// The value of one sample in Prometheus text (`name{labels}` exactly as written).
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// `shadowcat config hash-key` of `key` (what `auth.api_keys[].sha256` holds).
pub fn key_hash(key: &str) -> String {
    let out = Launch::shadowcat(&["config", "hash-key"])
        .stdin_bytes(format!("{key}\n"))
        .run();
    assert!(out.status.success(), "{}", lossy(&out.stderr));
    lossy(&out.stdout).trim().to_string()
}

/// A route `path` on the demo server (over stdio), with `extra` lines after its path.
pub fn demo_route(path: &str, extra: &str) -> String {
    format!(
        "[[routes]]\npath = \"{path}\"\n{extra}\n[[routes.upstreams]]\ncommand = \"{bin}\"\nargs = [\"demo-server\"]\n",
        bin = bin(),
    )
}

/// A gateway config: `[server]` on an ephemeral port with a public URL and `server_extra`
/// lines, `[auth]` with one API key per `(name, key, extra lines)` (principal `key:NAME`), then
/// `routes`.
pub fn with_api_keys(server_extra: &str, keys: &[(&str, &str, &str)], routes: &str) -> String {
    let mut text = format!(
        "\n[server]\nlisten = \"127.0.0.1:0\"\npublic_url = \"https://mcp.example.test\"\n{server_extra}\n[auth]\n"
    );
    for (name, key, extra) in keys {
        text.push_str(&format!(
            "[[auth.api_keys]]\nname = \"{name}\"\nsha256 = \"{hash}\"\n{extra}\n",
            hash = key_hash(key),
        ));
    }
    text.push_str(routes);
    text
}

/// A gateway config with API keys for two principals, `key:alice` (`alice-key`) and `key:bob`
/// (`bob-key`, with `bob_extra` lines), `server_extra` lines in `[server]`, then `routes`.
pub fn alice_and_bob_with(server_extra: &str, bob_extra: &str, routes: &str) -> String {
    with_api_keys(
        server_extra,
        &[("alice", "alice-key", ""), ("bob", "bob-key", bob_extra)],
        routes,
    )
}

/// [`alice_and_bob_with`] whose routes are `/mcp` on the demo server (stdio), then `more`.
pub fn alice_and_bob(server_extra: &str, more: &str) -> String {
    alice_and_bob_with(
        server_extra,
        "",
        &format!("{}{more}", demo_route("/mcp", "")),
    )
}
