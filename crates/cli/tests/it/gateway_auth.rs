//! Gateway authentication: JWTs (RS256, ES256, EdDSA) validated against a JWKS served by a local
//! server (rotation, expiry with leeway, audience, issuer), API keys stored hashed, RFC 9728
//! metadata and challenges, sessions bound to their principal, and the client's token never
//! reaching the upstream.

use super::gateway_support::{
    AUDIENCE, FakeUpstream, ISSUER, JwksServer, TestKey, base64url, client, config_file,
    demo_route, fixture, get, hmac_token, key_hash, now, sample, start_gateway, unsigned_token,
    with_api_keys,
};
use super::harness::{Server, init_body};
use jsonwebtoken::{Algorithm, Header};
use serde_json::{Value, json};

/// SHA-256 of "sk-test-key".
const API_KEY: &str = "sk-test-key";
/// `server.public_url`: what the metadata and the challenges name the gateway by (never the
/// request's `Host`).
const PUBLIC: &str = "https://mcp.example.test";

struct Setup {
    gw: Server,
    jwks: JwksServer,
    up: FakeUpstream,
    rsa: TestKey,
    ec: TestKey,
    ed1: TestKey,
    ed2: TestKey,
    _cfg: tempfile::TempDir,
}

async fn setup(extra_route: &str) -> Setup {
    setup_with(extra_route, "1s").await
}

async fn setup_with(extra_route: &str, min_refetch: &str) -> Setup {
    let rsa = TestKey::load("rsa.pem", "rsa-1", Algorithm::RS256);
    let ec = TestKey::load("ec.pem", "ec-1", Algorithm::ES256);
    let ed1 = TestKey::load("ed1.pem", "ed-1", Algorithm::EdDSA);
    let ed2 = TestKey::load("ed2.pem", "ed-2", Algorithm::EdDSA);
    let jwks = JwksServer::start(&[&rsa, &ec, &ed1]).await;
    let up = FakeUpstream::start("up").await;
    let key_hash = key_hash(API_KEY);
    let (dir, cfg) = config_file(&format!(
        r#"
[server]
public_url = "https://mcp.example.test"
listen = "127.0.0.1:0"
[auth]
scopes = ["mcp"]
[auth.jwt]
issuer = "{ISSUER}"
audience = ["{AUDIENCE}"]
jwks_url = "{jwks}"
leeway = "60s"
jwks_min_refetch = "{min_refetch}"
[[auth.api_keys]]
name = "ci"
sha256 = "{key_hash}"
scopes = ["mcp"]
[[routes]]
path = "/mcp"
[[routes.upstreams]]
url = "{up}"
bearer_env = "UPSTREAM_TOKEN"
{extra_route}
"#,
        jwks = jwks.url,
        up = up.url,
    ));
    let gw = start_gateway(
        &["--config", &cfg],
        &[("UPSTREAM_TOKEN", "upstream-secret")],
    )
    .await;
    Setup {
        gw,
        jwks,
        up,
        rsa,
        ec,
        ed1,
        ed2,
        _cfg: dir,
    }
}

async fn init_status(s: &Setup, token: Option<&str>) -> super::harness::Reply {
    client(s.gw.url(), token)
        .post(init_body(0, "2025-06-18"))
        .await
}

fn www_authenticate(r: &super::harness::Reply) -> String {
    r.headers
        .get("www-authenticate")
        .unwrap_or_else(|| panic!("no WWW-Authenticate ({}): {}", r.status, r.body))
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn jwts_are_validated_against_the_jwks() {
    let s = setup("").await;
    let metadata = format!("{PUBLIC}/.well-known/oauth-protected-resource/mcp");

    // No token: 401 pointing at the metadata, with the scope needed.
    let r = init_status(&s, None).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(
        www_authenticate(&r),
        format!("Bearer resource_metadata=\"{metadata}\", scope=\"mcp\"")
    );

    // Valid tokens of each algorithm.
    for key in [&s.rsa, &s.ec, &s.ed1] {
        let mut c = client(s.gw.url(), Some(&key.token(json!({}))));
        c.initialize().await;
        assert_eq!(c.call_tool(1, "x", json!({})).await, "up", "{:?}", key.alg);
    }

    let refused = |r: &super::harness::Reply, why: &str| {
        assert_eq!(r.status, 401, "{why}: {}", r.body);
        let h = www_authenticate(r);
        assert!(
            h.starts_with(&format!("Bearer resource_metadata=\"{metadata}\"")),
            "{h}"
        );
        assert!(h.contains("error=\"invalid_token\""), "{h}");
        assert!(h.contains(why), "`{why}` not in {h}");
        assert!(r.body.contains(why), "{}", r.body);
    };
    // Expired beyond the 60 s leeway; expired within it is accepted.
    let t = s.ed1.token(json!({"exp": now() - 120}));
    refused(&init_status(&s, Some(&t)).await, "expired");
    let t = s.ed1.token(json!({"exp": now() - 20}));
    assert_eq!(init_status(&s, Some(&t)).await.status, 200);
    // Not valid yet (nbf beyond the leeway).
    let t = s.ed1.token(json!({"nbf": now() + 600}));
    refused(&init_status(&s, Some(&t)).await, "not valid yet");
    // Wrong audience, wrong issuer, no exp.
    let t = s.rsa.token(json!({"aud": "https://other.test/mcp"}));
    refused(&init_status(&s, Some(&t)).await, "audience");
    let t = s.ec.token(json!({"iss": "https://evil.test"}));
    refused(&init_status(&s, Some(&t)).await, "issuer");
    let t = s.ed1.token(json!({"exp": null}));
    refused(&init_status(&s, Some(&t)).await, "no `exp` claim");
    // A forged signature (signed by a key the JWKS does not hold, under a known kid).
    let forged = TestKey::load("ed2.pem", "ed-1", Algorithm::EdDSA).token(json!({}));
    refused(&init_status(&s, Some(&forged)).await, "bad signature");
    // Garbage.
    refused(&init_status(&s, Some("a.b.c")).await, "malformed");
    refused(
        &init_status(&s, Some("nope")).await,
        "not a JWT and not a known API key",
    );

    // Missing scope: 403 insufficient_scope.
    let t = s.ed1.token(json!({"scope": "read"}));
    let r = init_status(&s, Some(&t)).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(
        www_authenticate(&r),
        format!(
            "Bearer resource_metadata=\"{metadata}\", scope=\"mcp\", error=\"insufficient_scope\""
        )
    );

    let (_, _, metrics) = get(&s.gw.base, "/metrics").await;
    assert_eq!(
        sample(
            &metrics,
            "shadowcat_auth_failures_total{route=\"/mcp\",reason=\"expired\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "shadowcat_auth_failures_total{route=\"/mcp\",reason=\"insufficient_scope\"}"
        ),
        Some(1.0)
    );
}

/// A token refused as invalid: 401 `invalid_token`, and no session.
fn assert_invalid_token(r: &super::harness::Reply, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", r.body);
    let h = www_authenticate(r);
    assert!(h.contains("error=\"invalid_token\""), "{what}: {h}");
    assert!(
        r.headers.get("mcp-session-id").is_none(),
        "{what}: no session"
    );
}

/// Tokens that must never pass, whatever the JWKS says about its keys.
fn forged_tokens(s: &Setup) -> Vec<(&'static str, String)> {
    let header = |alg: Algorithm, kid: &str| {
        let mut h = Header::new(alg);
        h.kid = Some(kid.to_string());
        h
    };
    let mut out = vec![
        (
            "alg none naming a known kid",
            unsigned_token(Some("rsa-1"), json!({})),
        ),
        ("alg none without a kid", unsigned_token(None, json!({}))),
        (
            "EdDSA-signed, naming the RSA key's kid",
            s.ed1
                .token_with(header(Algorithm::EdDSA, "rsa-1"), json!({})),
        ),
        (
            "RS256-signed, naming the Ed25519 key's kid",
            s.rsa
                .token_with(header(Algorithm::RS256, "ed-1"), json!({})),
        ),
        (
            "ES256-signed, naming the RSA key's kid",
            s.ec.token_with(header(Algorithm::ES256, "rsa-1"), json!({})),
        ),
    ];
    // Algorithm confusion: HMAC keyed with the RSA public key as the JWKS publishes it, in the
    // forms a verifier might take as an HMAC secret.
    for (form, secret) in [
        ("SPKI PEM", fixture("rsa.pub.pem")),
        ("PKCS#1 PEM", fixture("rsa.pkcs1.pub.pem")),
    ] {
        for alg in [Algorithm::HS256, Algorithm::HS512] {
            out.push((
                if form == "SPKI PEM" {
                    "HMAC keyed with the RSA public key (SPKI PEM)"
                } else {
                    "HMAC keyed with the RSA public key (PKCS#1 PEM)"
                },
                hmac_token(alg, "rsa-1", &secret, json!({})),
            ));
        }
    }
    out
}

#[tokio::test]
async fn unsigned_algorithm_confused_and_kid_mismatched_tokens_are_refused() {
    assert_eq!(
        [
            b"".as_slice(),
            b"f",
            b"fo",
            b"foo",
            b"foobar",
            &[0xfb, 0xff]
        ]
        .map(base64url),
        ["", "Zg", "Zm8", "Zm9v", "Zm9vYmFy", "-_8"],
        "the test's encoder is base64url"
    );
    let s = setup_with("", "0s").await;
    for (what, token) in forged_tokens(&s) {
        assert_invalid_token(&init_status(&s, Some(&token)).await, what);
    }
    // The same against a JWKS whose keys do not name their algorithm (`alg` is optional in a
    // JWK): the key's type must still decide which algorithm it verifies.
    s.jwks.set_without_alg(&[&s.rsa, &s.ec, &s.ed1]);
    let before = s.jwks.fetches();
    // A token with an unknown kid makes the gateway refetch (jwks_min_refetch = 0s).
    let r = init_status(&s, Some(&s.ed2.token(json!({})))).await;
    assert_invalid_token(&r, "unknown kid");
    assert!(s.jwks.fetches() > before, "the JWKS was refetched");
    for (what, token) in forged_tokens(&s) {
        let r = init_status(&s, Some(&token)).await;
        assert_invalid_token(&r, &format!("{what} (JWKS without alg)"));
        if what.contains("naming the") {
            assert!(
                r.body
                    .contains("the token's algorithm (alg) does not fit the key its kid names"),
                "{what}: {}",
                r.body
            );
        }
    }
    // Genuine tokens pass against those keys.
    for key in [&s.rsa, &s.ec, &s.ed1] {
        let r = init_status(&s, Some(&key.token(json!({})))).await;
        assert_eq!(r.status, 200, "{:?}: {}", key.alg, r.body);
    }
}

#[tokio::test]
async fn jwks_rotation_refetches_on_unknown_kid_at_most_every_min_interval() {
    let s = setup_with("", "3s").await;
    let t1 = s.ed1.token(json!({}));
    assert_eq!(init_status(&s, Some(&t1)).await.status, 200);
    let fetched = s.jwks.fetches();
    assert!(fetched >= 1);

    // A token from a key the issuer has not published yet: refused; a burst of them triggers
    // at most one refetch per interval.
    let t2 = s.ed2.token(json!({}));
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    let t0 = std::time::Instant::now();
    for _ in 0..5 {
        let r = init_status(&s, Some(&t2)).await;
        assert_eq!(r.status, 401);
        assert!(
            r.body.contains("no signing key with kid `ed-2`"),
            "{}",
            r.body
        );
    }
    let windows = 1 + (t0.elapsed().as_secs_f64() / 3.0) as usize;
    let refetches = s.jwks.fetches() - fetched;
    assert!(
        (1..=windows).contains(&refetches),
        "{refetches} refetches for the unknown kid; at most one per 3 s allowed"
    );
    let fetched = s.jwks.fetches();

    // The issuer rotates: ed-1 is retired, ed-2 published.
    s.jwks.set(&[&s.ed2]);
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    let mut c = client(s.gw.url(), Some(&t2));
    c.initialize().await;
    assert_eq!(s.jwks.fetches(), fetched + 1);
    // The retired key no longer validates.
    let r = init_status(&s, Some(&s.ed1.token(json!({})))).await;
    assert_eq!(r.status, 401, "{}", r.body);
}

#[tokio::test]
async fn api_keys_metadata_and_the_upstream_never_sees_the_clients_token() {
    let s = setup("").await;
    let mut c = client(s.gw.url(), Some(API_KEY));
    c.initialize().await;
    assert_eq!(c.call_tool(1, "x", json!({})).await, "up");
    let r = init_status(&s, Some("sk-wrong-key")).await;
    assert_eq!(r.status, 401);

    let jwt = s.rsa.token(json!({}));
    let mut j = client(s.gw.url(), Some(&jwt));
    j.initialize().await;
    j.call_tool(2, "x", json!({})).await;

    // Every request the upstream got carried its own credentials, never the client's.
    let seen = s.up.authorization();
    assert!(seen.len() >= 6, "{seen:?}");
    for a in &seen {
        assert_eq!(a.as_deref(), Some("Bearer upstream-secret"), "{seen:?}");
    }

    // RFC 9728 metadata, for the route and for the whole origin.
    let (status, _, body) = get(&s.gw.base, "/.well-known/oauth-protected-resource/mcp").await;
    assert_eq!(status, 200, "{body}");
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["resource"], json!(format!("{PUBLIC}/mcp")));
    assert_eq!(doc["authorization_servers"], json!([ISSUER]));
    assert_eq!(doc["scopes_supported"], json!(["mcp"]));
    assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
    let (status, _, body) = get(&s.gw.base, "/.well-known/oauth-protected-resource").await;
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["resource"], json!(PUBLIC));
    let (status, _, _) = get(
        &s.gw.base,
        "/.well-known/oauth-protected-resource/servers/x/mcp",
    )
    .await;
    assert_eq!(status, 404);
    // Other paths need credentials too; the challenge points at the origin's metadata.
    let r = client(format!("{}/servers/x/mcp", s.gw.base), None)
        .post(init_body(0, "2025-06-18"))
        .await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(
        www_authenticate(&r),
        format!(
            "Bearer resource_metadata=\"{PUBLIC}/.well-known/oauth-protected-resource\", scope=\"mcp\""
        )
    );
}

#[tokio::test]
async fn a_session_presented_by_another_principal_is_not_found() {
    let s = setup("").await;
    let alice = s.ed1.token(json!({"sub": "alice"}));
    let mallory = s.ed1.token(json!({"sub": "mallory"}));
    let mut a = client(s.gw.url(), Some(&alice));
    a.initialize().await;

    for (who, token) in [("mallory", mallory.as_str()), ("an API key", API_KEY)] {
        let mut m = client(s.gw.url(), Some(token));
        m.session = a.session.clone();
        let r = m
            .post(json!({"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"x"}}))
            .await;
        assert_eq!(r.status, 404, "{who}: {}", r.body);
        assert_eq!(m.delete().await.status, 404, "{who} cannot end it");
        let g = m
            .http
            .get(&m.url)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", m.session.as_deref().unwrap())
            .header("mcp-protocol-version", "2025-06-18")
            .send()
            .await
            .unwrap();
        assert_eq!(g.status().as_u16(), 404, "{who} cannot open its stream");
    }
    // Alice carries on, with a fresh token for the same subject.
    a = {
        let mut again = client(s.gw.url(), Some(&s.rsa.token(json!({"sub": "alice"}))));
        again.session = a.session.clone();
        again
    };
    assert_eq!(a.call_tool(6, "x", json!({})).await, "up");
    let (_, _, metrics) = get(&s.gw.base, "/metrics").await;
    assert_eq!(
        sample(&metrics, "shadowcat_foreign_session_total{route=\"/mcp\"}"),
        Some(6.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn route_scopes_and_per_principal_limits() {
    let up2 = FakeUpstream::start("admin-up").await;
    let extra = format!(
        "[[routes]]\npath = \"/servers/admin/mcp\"\nscopes = [\"admin\"]\n[[routes.upstreams]]\nurl = \"{}\"\n\
         [limits]\nper_principal = {{ requests = 1, per = \"1m\", burst = 3 }}\n",
        up2.url
    );
    let s = setup(&extra).await;
    let admin_url = format!("{}/servers/admin/mcp", s.gw.base);
    let plain = s.ed1.token(json!({"sub": "bob"}));
    let r = client(admin_url.clone(), Some(&plain))
        .post(init_body(0, "2025-06-18"))
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let h = www_authenticate(&r);
    assert!(h.contains("scope=\"mcp admin\""), "{h}");
    assert!(
        h.contains("oauth-protected-resource/servers/admin/mcp"),
        "{h}"
    );
    let admin = s
        .ed1
        .token(json!({"sub": "carol", "scp": ["mcp", "admin"]}));
    let mut c = client(admin_url, Some(&admin));
    c.initialize().await; // 2 requests of carol's burst of 3
    assert_eq!(c.call_tool(1, "x", json!({})).await, "admin-up");
    let r = c
        .post(json!({"jsonrpc":"2.0","id":2,"method":"ping"}))
        .await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.headers.get("retry-after").is_some());
    // Another principal has its own budget.
    let mut d = client(s.gw.url(), Some(&s.ed1.token(json!({"sub": "dave"}))));
    d.initialize().await;
}

#[tokio::test]
async fn authorization_rules_refuse_calls_and_filter_lists() {
    let rules = r#"
[[routes.rules]]
effect = "allow"
scopes = ["admin"]
[[routes.rules]]
effect = "deny"
tools = ["increment", "sl*"]
prompts = ["code_review"]
resources = ["demo://counter"]
"#;
    let (_d, cfg) = config_file(&with_api_keys(
        "",
        &[
            ("admin", "admin-key", "scopes = [\"admin\"]"),
            ("user", "user-key", ""),
        ],
        &format!("{}{rules}", demo_route("/mcp", "")),
    ));
    let gw = start_gateway(&["--config", &cfg], &[]).await;
    let mut user = client(gw.url(), Some("user-key"));
    user.initialize().await;
    let tools = list(&user, 1, "tools/list", "tools", "name").await;
    assert!(tools.contains(&"echo".to_string()), "{tools:?}");
    assert!(
        !tools.iter().any(|t| t == "increment" || t == "slow"),
        "{tools:?}"
    );
    let prompts = list(&user, 2, "prompts/list", "prompts", "name").await;
    assert_eq!(prompts, vec!["greeting"]);
    let resources = list(&user, 3, "resources/list", "resources", "uri").await;
    assert!(
        resources.contains(&"demo://readme".to_string()),
        "{resources:?}"
    );
    assert!(
        !resources.contains(&"demo://counter".to_string()),
        "{resources:?}"
    );

    let r = user
        .post(json!({"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"increment","arguments":{}}}))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["id"], json!(4));
    assert_eq!(r.rpc_code(), -32003);
    assert_eq!(
        r.json()["error"]["message"],
        json!(
            "forbidden by the gateway: tool `increment` is not allowed for key:user (rule 2 of this route denies it)"
        )
    );
    let r = user
        .post(json!({"jsonrpc":"2.0","id":5,"method":"resources/read","params":{"uri":"demo://counter"}}))
        .await;
    assert_eq!(r.rpc_code(), -32003, "{}", r.body);
    assert_eq!(
        user.call_tool(6, "echo", json!({"message": "fine"})).await,
        "fine"
    );

    // The first rule lets the admin scope do everything.
    let mut admin = client(gw.url(), Some("admin-key"));
    admin.initialize().await;
    let tools = list(&admin, 1, "tools/list", "tools", "name").await;
    assert!(tools.contains(&"increment".to_string()), "{tools:?}");
    assert_eq!(admin.call_tool(2, "increment", json!({})).await, "1");

    let (_, _, metrics) = get(&gw.base, "/metrics").await;
    assert_eq!(
        sample(&metrics, "shadowcat_authz_denied_total{route=\"/mcp\"}"),
        Some(2.0),
        "{metrics}"
    );
}

/// A deny rule cannot be sidestepped with params the proxy used to read as "no name": a sibling
/// field of an unexpected type no longer hides the name (the rule applies), and a name that is
/// not a string, no name, the name twice or in other letter case is refused with -32602 and the
/// request's id. The upstream never sees the call, in the session-based era and in 2026-07-28.
#[tokio::test]
async fn a_deny_rule_is_not_bypassed_by_params_the_proxy_cannot_read() {
    let up = FakeUpstream::start("up").await;
    let (_d, cfg) = config_file(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
[[routes]]
path = "/mcp"
[[routes.upstreams]]
url = "{url}"
[[routes.rules]]
effect = "deny"
tools = ["rm"]
resources = ["file:///secret"]
"#,
        url = up.url,
    ));
    let gw = start_gateway(&["--config", &cfg], &[]).await;
    let mut c = client(gw.url(), None);
    c.initialize().await;
    // A sibling field of an unexpected type no longer hides the name: the rule sees it.
    for (id, params) in [
        (10, json!({"name": "rm", "uri": 1, "arguments": {}})),
        (11, json!({"name": "rm", "_meta": 5, "progressToken": []})),
    ] {
        let r = c
            .post(json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":params}))
            .await;
        assert_eq!(
            (r.status, r.rpc_code()),
            (200, -32003),
            "{params}: {}",
            r.body
        );
        assert_eq!(r.json()["id"], json!(id), "{}", r.body);
    }
    // A name that cannot be read is refused before any rule, with the request's id.
    let unreadable = [
        json!({"name": 1, "arguments": {}}),
        json!({"name": ["rm"]}),
        json!({"arguments": {}}),
        json!(["rm"]),
    ];
    for (i, params) in unreadable.iter().enumerate() {
        let id = 12 + i as i64;
        let r = c
            .post(json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":params}))
            .await;
        assert_eq!(
            (r.status, r.rpc_code()),
            (400, -32602),
            "{params}: {}",
            r.body
        );
        assert_eq!(r.json()["id"], json!(id), "{}", r.body);
        assert!(r.body.contains("tools/call"), "{}", r.body);
    }
    // Raw bodies: the name twice, or in other letter case (read by some servers).
    for body in [
        r#"{"jsonrpc":"2.0","id":20,"method":"tools/call","params":{"name":"echo","name":"rm"}}"#,
        r#"{"jsonrpc":"2.0","id":21,"method":"tools/call","params":{"name":"echo","Name":"rm"}}"#,
    ] {
        let r = super::harness::Raw::send(c.post_builder(body)).await;
        assert_eq!(
            (r.status, r.rpc_code()),
            (400, -32602),
            "{body}: {}",
            r.body
        );
    }
    let r = c
        .post(json!({"jsonrpc":"2.0","id":22,"method":"resources/read","params":{"uri":1}}))
        .await;
    assert_eq!((r.status, r.rpc_code()), (400, -32602), "{}", r.body);
    let r = c
        .post(json!({"jsonrpc":"2.0","id":23,"method":"resources/read","params":{"uri":"file:///secret","name":1}}))
        .await;
    assert_eq!(r.rpc_code(), -32003, "{}", r.body);
    // 2026-07-28: an unreadable name with headers that name the tool is refused the same way.
    let modern = json!({"jsonrpc":"2.0","id":30,"method":"tools/call","params":{
        "name": {"rm": true}, "arguments": {},
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": {"name": "raw-modern", "version": "1"}}}});
    let r = super::harness::Raw::send(
        c.http
            .post(gw.url())
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "tools/call")
            .header("mcp-name", "rm")
            .body(modern.to_string()),
    )
    .await;
    assert_eq!((r.status, r.rpc_code()), (400, -32602), "{}", r.body);
    assert_eq!(r.json()["id"], json!(30), "{}", r.body);
    // The rule itself still refuses a readable call, and an allowed call still goes through:
    // the only call the upstream ever saw.
    let r = c
        .post(json!({"jsonrpc":"2.0","id":40,"method":"tools/call","params":{"name":"rm","arguments":{}}}))
        .await;
    assert_eq!(r.rpc_code(), -32003, "{}", r.body);
    assert_eq!(c.call_tool(41, "echo", json!({})).await, "up");
    assert_eq!(up.count("tools/call"), 1);
    assert_eq!(up.count("resources/read"), 0);
}

/// The names (or URIs) a list method answers with.
async fn list(
    c: &super::harness::Raw,
    id: i64,
    method: &str,
    key: &str,
    field: &str,
) -> Vec<String> {
    let r = c
        .post(json!({"jsonrpc":"2.0","id":id,"method":method}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.messages().into_iter().next().expect("a reply");
    v["result"][key]
        .as_array()
        .unwrap_or_else(|| panic!("{method}: {v}"))
        .iter()
        .map(|t| t[field].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn the_official_rust_sdk_connects_with_a_bearer_token() {
    use rmcp::ServiceExt;
    use rmcp::model::CallToolRequestParams;
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    let (_d, cfg) = config_file(&with_api_keys(
        "",
        &[("sdk", "sdk-key", "")],
        &demo_route("/mcp", ""),
    ));
    let gw = start_gateway(&["--config", &cfg], &[]).await;
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(gw.url()).auth_header("sdk-key"),
    );
    let client = tokio::time::timeout(super::harness::WAIT, ().serve(transport))
        .await
        .expect("connect in time")
        .expect("rmcp connects through the gateway");
    let tools = client.list_all_tools().await.expect("tools/list");
    assert!(tools.iter().any(|t| t.name == "echo"));
    let mut args = serde_json::Map::new();
    args.insert("message".into(), json!("via the gateway"));
    let r = client
        .call_tool(CallToolRequestParams::new("echo").with_arguments(args))
        .await
        .expect("tools/call");
    let text = r.content[0].as_text().expect("text").text.clone();
    assert_eq!(text, "via the gateway");
    client.cancel().await.expect("close");

    // Without the token the SDK cannot even initialize.
    let anonymous = StreamableHttpClientTransport::from_uri(gw.url());
    let refused = tokio::time::timeout(super::harness::WAIT, ().serve(anonymous))
        .await
        .expect("answer in time");
    assert!(refused.is_err());
}
