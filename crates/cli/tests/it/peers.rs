//! Real MCP peers for the era tests: the official Python SDK's server in each era
//! (tests/interop/modern_peer.py), server-everything (Node, installed by
//! scripts/node-peers.sh), and the Python SDK's client in each mode.

use super::harness::{Launch, Process, free_port, lossy};
use super::python::workspace;
use std::time::Duration;

/// Python and Node peers start slowly on a busy machine.
pub const PEER_START: Duration = Duration::from_secs(120);

/// A server process (killed on drop) and the URL clients use.
pub struct Peer {
    pub process: Process,
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
        let process = Launch::interop("modern_peer.py")
            .args(["server", "--port", &port.to_string(), "--era", era.arg()])
            .args(["--name", name])
            .label("the python server")
            .port(port)
            .within(PEER_START)
            .start()
            .await;
        let path = if era == PyEra::Sse { "sse" } else { "mcp" };
        Peer {
            process,
            url: format!("http://127.0.0.1:{port}/{path}"),
        }
    }

    /// server-everything in `mode` (`sse` → `/sse`, `streamableHttp` → `/mcp`).
    pub async fn everything(mode: &str) -> Peer {
        let (node, js) = tokio::task::spawn_blocking(node_peers).await.unwrap();
        let port = free_port();
        let process = Launch::new(node)
            .arg(js)
            .arg(mode)
            .env("PORT", port.to_string())
            .label("server-everything")
            .port(port)
            .within(PEER_START)
            .start()
            .await;
        let path = if mode == "sse" { "sse" } else { "mcp" };
        Peer {
            process,
            url: format!("http://127.0.0.1:{port}/{path}"),
        }
    }
}

/// The command line of the Python SDK's server on stdio.
pub fn python_stdio() -> Vec<String> {
    vec![
        super::python::python().to_string_lossy().into_owned(),
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
    let out = Launch::new("bash")
        .arg(workspace().join("scripts/node-peers.sh"))
        .run();
    let stdout = lossy(&out.stdout);
    assert!(
        out.status.success(),
        "scripts/node-peers.sh failed:\n{}",
        lossy(&out.stderr)
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
    let mut cmd = Launch::interop("modern_peer.py")
        .args(["client", "--url", &url, "--mode", mode, "--progress"])
        .args(["--expect-era", era.expect()]);
    if era == ClientEra::Sse {
        cmd = cmd.arg("--sse");
    }
    if ask {
        cmd = cmd.arg("--ask");
    }
    let out = cmd.run();
    let text = format!("{}{}", lossy(&out.stdout), lossy(&out.stderr));
    let checks = if ask { 8 } else { 6 };
    let ok = out.status.success() && text.contains(&format!("{checks} passed, 0 failed"));
    (ok, text)
}
