//! Real MCP peers for the era tests: the official Python SDK's server in each era
//! (tests/interop/modern_peer.py), server-everything (Node, installed by
//! scripts/node-peers.sh), and the Python SDK's client in each mode.

use super::harness::{WAIT, free_port};
use super::python::{python, workspace};
use bytes::BytesMut;
use shadowcat_proto::sse::{SseDecoder, SseEvent};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio_util::codec::Decoder;

/// Python and Node peers start slowly on a busy machine.
pub const PEER_START: Duration = Duration::from_secs(120);

/// Wait until something listens on `port` (the child must not exit first).
pub async fn wait_port(port: u16, child: &mut Child, what: &str) {
    let deadline = tokio::time::Instant::now() + PEER_START;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before listening ({status})");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not listen on port {port}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A server process (killed on drop) and the URL clients use.
pub struct Peer {
    pub child: Child,
    pub url: String,
}

/// The eras tests/interop/modern_peer.py serves over HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PyEra {
    /// 2026-07-28 and the session-based eras on one endpoint.
    Dual,
    /// Session-based Streamable HTTP only.
    Legacy,
    /// 2026-07-28 only.
    Modern,
    /// HTTP+SSE (2024-11-05).
    Sse,
}

impl PyEra {
    fn arg(self) -> &'static str {
        match self {
            PyEra::Dual => "dual",
            PyEra::Legacy => "legacy",
            PyEra::Modern => "modern",
            PyEra::Sse => "sse",
        }
    }
}

impl Peer {
    /// The Python SDK's server (tools echo, add, count, wait, cancellations, whoami) in `era`.
    pub async fn python(era: PyEra) -> Peer {
        Peer::python_named(era, "py-era-peer").await
    }

    /// [`Peer::python`] whose `whoami` tool (and `serverInfo`) answers `name`.
    pub async fn python_named(era: PyEra, name: &str) -> Peer {
        let port = free_port();
        let mut child = Command::new(python())
            .arg(workspace().join("tests/interop/modern_peer.py"))
            .args(["server", "--port", &port.to_string(), "--era", era.arg()])
            .args(["--name", name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start the python server");
        wait_port(port, &mut child, "the python server").await;
        let path = if era == PyEra::Sse { "sse" } else { "mcp" };
        Peer {
            child,
            url: format!("http://127.0.0.1:{port}/{path}"),
        }
    }

    /// server-everything in `mode` (`sse` → `/sse`, `streamableHttp` → `/mcp`).
    pub async fn everything(mode: &str) -> Peer {
        let (node, js) = tokio::task::spawn_blocking(node_peers).await.unwrap();
        let port = free_port();
        let mut child = Command::new(node)
            .arg(js)
            .arg(mode)
            .env("PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start server-everything");
        wait_port(port, &mut child, "server-everything").await;
        let path = if mode == "sse" { "sse" } else { "mcp" };
        Peer {
            child,
            url: format!("http://127.0.0.1:{port}/{path}"),
        }
    }
}

/// The command line of the Python SDK's server on stdio.
pub fn python_stdio() -> Vec<String> {
    vec![
        python().to_string_lossy().into_owned(),
        workspace()
            .join("tests/interop/modern_peer.py")
            .to_string_lossy()
            .into_owned(),
        "server".into(),
        "--stdio".into(),
    ]
}

/// The Python SDK's stdio server as a gateway upstream: `command = …` and `args = […]` lines.
pub fn python_stdio_toml() -> String {
    let cmd = python_stdio();
    let args: Vec<String> = cmd[1..].iter().map(|a| format!("{a:?}")).collect();
    format!("command = {:?}\nargs = [{}]", cmd[0], args.join(", "))
}

/// Node 22 and server-everything's entry point, installed by scripts/node-peers.sh if needed.
pub fn node_peers() -> (String, String) {
    let out = std::process::Command::new("bash")
        .arg(workspace().join("scripts/node-peers.sh"))
        .output()
        .expect("run scripts/node-peers.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "scripts/node-peers.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let get = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {stdout}"))
            .to_string()
    };
    (get("NODE="), get("EVERYTHING_JS="))
}

/// A client era as the Python SDK's client speaks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientEra {
    /// HTTP+SSE (2024-11-05): the SDK's SSE client, `initialize` handshake.
    Sse,
    /// Streamable HTTP with `initialize` (mode `legacy`: 2025-11-25).
    Legacy,
    /// Stateless 2026-07-28 (mode `2026-07-28`: no handshake at all).
    Modern,
    /// Mode `auto`: `server/discover` first, `initialize` if that fails.
    Auto,
}

impl ClientEra {
    pub const ALL: [ClientEra; 4] = [
        ClientEra::Sse,
        ClientEra::Legacy,
        ClientEra::Modern,
        ClientEra::Auto,
    ];

    /// The era the session must end up in.
    fn expect(self) -> &'static str {
        match self {
            ClientEra::Sse | ClientEra::Legacy => "legacy",
            ClientEra::Modern | ClientEra::Auto => "modern",
        }
    }
}

/// Run the Python SDK's client in `era` against the route at `base` + `route` (`/mcp` or
/// `/servers/NAME/mcp`; the SSE client uses the route's `sse` endpoint): list tools, call echo,
/// add and count (with 3 progress notifications), check the era; with `ask`, also the `ask`
/// tool (the server's multi-round-trip elicitation reaches the client's callback). Returns
/// (passed, output).
pub fn python_client(base: &str, route: &str, era: ClientEra, ask: bool) -> (bool, String) {
    let url = match era {
        ClientEra::Sse => format!("{base}{}", route.replace("/mcp", "/sse")),
        _ => format!("{base}{route}"),
    };
    let mode = match era {
        ClientEra::Sse | ClientEra::Legacy => "legacy",
        ClientEra::Modern => "2026-07-28",
        ClientEra::Auto => "auto",
    };
    let mut cmd = std::process::Command::new(python());
    cmd.arg(workspace().join("tests/interop/modern_peer.py"))
        .args(["client", "--url", &url, "--mode", mode, "--progress"])
        .args(["--expect-era", era.expect()]);
    if era == ClientEra::Sse {
        cmd.arg("--sse");
    }
    if ask {
        cmd.arg("--ask");
    }
    let out = cmd.output().expect("run the python client");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let checks = if ask { 8 } else { 6 };
    let ok = out.status.success() && text.contains(&format!("{checks} passed, 0 failed"));
    (ok, text)
}

/// Reads an SSE response event by event.
pub struct SseReader {
    resp: reqwest::Response,
    buf: BytesMut,
    decoder: SseDecoder,
}

impl SseReader {
    pub fn new(resp: reqwest::Response) -> SseReader {
        SseReader {
            resp,
            buf: BytesMut::new(),
            decoder: SseDecoder::new(1 << 20),
        }
    }

    /// The next event; `None` when the stream ended.
    pub async fn next_event(&mut self) -> Option<SseEvent> {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(ev) = self.decoder.decode(&mut self.buf).expect("valid SSE") {
                    return Some(ev);
                }
                match self.resp.chunk().await {
                    Ok(Some(c)) => self.buf.extend_from_slice(&c),
                    Ok(None) | Err(_) => return None,
                }
            }
        })
        .await
        .expect("no event within the timeout")
    }

    /// The JSON of the next event that has data; `None` when the stream ended.
    pub async fn next_json(&mut self) -> Option<serde_json::Value> {
        loop {
            let ev = self.next_event().await?;
            if let Some(d) = ev.data.filter(|d| !d.trim().is_empty()) {
                return Some(serde_json::from_str(&d).expect("JSON data"));
            }
        }
    }
}
