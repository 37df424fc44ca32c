//! The 2026-07-28 stateless era next to the session-based eras on the same endpoint: header
//! validation, pass-through to a modern upstream, and fallback for dual-era clients when the
//! upstream only speaks the session-based eras. Peers: the official Python SDK (`mcp` 2.3).

use super::harness::{Raw, Server, free_port};
use super::python::{python, workspace};
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A dual-era Python MCP server (tools echo, add) on a free port; killed on drop.
struct PyServer(Child, String);

impl PyServer {
    async fn start() -> PyServer {
        let port = free_port();
        let child = Command::new(python())
            .arg(workspace().join("tests/interop/modern_peer.py"))
            .args(["server", "--port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the python server");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "python server did not listen"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        PyServer(child, format!("http://127.0.0.1:{port}/mcp"))
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn py_client(url: &str, mode: &str, expect_era: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new(python());
    cmd.arg(workspace().join("tests/interop/modern_peer.py"))
        .args(["client", "--url", url, "--mode", mode]);
    if let Some(e) = expect_era {
        cmd.args(["--expect-era", e]);
    }
    let out = cmd.output().expect("run the python client");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_era_through_the_proxy_to_a_dual_era_server() {
    let py = PyServer::start().await;
    let p = Server::forward_http(&["--target", &py.1]).await;
    let url = p.url();
    for (mode, era) in [
        ("2026-07-28", "modern"),
        ("legacy", "legacy"),
        ("auto", "modern"),
    ] {
        let u = url.clone();
        let (ok, out) = tokio::task::spawn_blocking(move || py_client(&u, mode, Some(era)))
            .await
            .unwrap();
        assert!(ok, "mode {mode}:\n{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_era_clients_fall_back_when_the_upstream_is_session_based() {
    let p = Server::forward_http(&["--demo"]).await;
    let url = p.url();
    let u = url.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || {
        let script = workspace().join("tests/interop/python_client.py");
        let o = Command::new(python())
            .arg(script)
            .args(["--url", &u, "--mode", "auto"])
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    })
    .await
    .unwrap();
    assert!(ok && out.contains(" passed, 0 failed"), "{out}");
    // A strictly modern request gets the versions this route serves.
    let r = modern(&url, "tools/list", None, json!({})).await;
    assert_eq!((r.status, r.rpc_code()), (400, -32022), "{}", r.body);
    let data = &r.json()["error"]["data"];
    assert_eq!(data["requested"], "2026-07-28");
    let supported: Vec<&str> = data["supported"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        supported.contains(&"2025-11-25") && !supported.contains(&"2026-07-28"),
        "{supported:?}"
    );
    assert_eq!(
        r.json()["id"],
        json!(1),
        "errors for a parsed request carry its id"
    );
}

/// POST a 2026-07-28 request with correct headers unless overridden.
async fn modern(
    url: &str,
    method: &str,
    name: Option<&str>,
    params: Value,
) -> super::harness::Reply {
    modern_with(url, method, name, params, &[]).await
}

async fn modern_with(
    url: &str,
    method: &str,
    name: Option<&str>,
    mut params: Value,
    extra: &[(&str, &str)],
) -> super::harness::Reply {
    params["_meta"] = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}});
    if let Some(n) = name {
        params["name"] = json!(n);
    }
    let body = json!({"jsonrpc":"2.0","id":1,"method":method,"params":params});
    let c = Raw::new(url.to_string());
    let mut req = c
        .http
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", method)
        .body(body.to_string());
    if let Some(n) = name {
        req = req.header("mcp-name", n);
    }
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    Raw::send(req).await
}

#[tokio::test]
async fn modern_headers_are_validated_against_the_body() {
    let py = PyServer::start().await;
    let p = Server::forward_http(&["--target", &py.1]).await;
    let url = p.url();
    // a good stateless call goes through, with a bogus Mcp-Session-Id ignored
    let r = modern_with(
        &url,
        "tools/call",
        Some("echo"),
        json!({"arguments": {"message": "m"}}),
        &[("mcp-session-id", "nope")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let reply = r
        .messages()
        .into_iter()
        .find(|m| m["id"] == json!(1))
        .unwrap();
    assert_eq!(reply["result"]["content"][0]["text"], "m", "{reply}");
    // Mcp-Name mismatch
    let mut params = json!({"arguments": {"message": "m"}, "name": "echo"});
    params["_meta"] = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28"});
    let c = Raw::new(url.clone());
    let mism = c
        .http
        .post(&url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "add")
        .body(json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":params}).to_string());
    let r = Raw::send(mism).await;
    assert_eq!((r.status, r.rpc_code()), (400, -32020), "{}", r.body);
    assert!(r.body.contains("does not match"), "{}", r.body);
    // Mcp-Method mismatch and missing
    let r = modern_with(
        &url,
        "tools/list",
        None,
        json!({}),
        &[("mcp-method", "tools/call")],
    )
    .await;
    assert_eq!(r.rpc_code(), -32020, "{}", r.body);
    // Mcp-Name missing on tools/call
    let r = modern(
        &url,
        "tools/call",
        None,
        json!({"name": "echo", "arguments": {}}),
    )
    .await;
    assert_eq!((r.status, r.rpc_code()), (400, -32020), "{}", r.body);
    // Base64 sentinel names are decoded before comparing
    let r = modern_with(
        &url,
        "tools/call",
        None,
        json!({"name": "echo", "arguments": {"message": "b"}}),
        &[("mcp-name", "=?base64?ZWNobw==?=")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // unsupported version
    let r = Raw::send(
        c.http
            .post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2099-01-01")
            .body("{}"),
    )
    .await;
    assert_eq!((r.status, r.rpc_code()), (400, -32022), "{}", r.body);
    // no GET or DELETE in 2026-07-28
    let r = Raw::send(
        c.http
            .get(&url)
            .header("accept", "text/event-stream")
            .header("mcp-protocol-version", "2026-07-28"),
    )
    .await;
    assert_eq!(r.status, 405);
    let r = Raw::send(
        c.http
            .delete(&url)
            .header("mcp-protocol-version", "2026-07-28"),
    )
    .await;
    assert_eq!(r.status, 405);
}
