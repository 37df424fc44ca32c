//! Composite routes end to end: the official Python SDK as the client of a `forward http`
//! route over four different servers — the demo server (stdio) and again over HTTP (the same
//! tool names twice), server-everything (stdio, Node), and a server with 1,000 tools in pages
//! of 50 that can announce a new tool and die mid-call (tests/interop/paged_server.py). The
//! client (tests/interop/composite_client.py) checks lists (every page, names LLM APIs
//! accept), calls, sampling and elicitation from members, resources and prompts, list_changed,
//! and a member killed mid-session that comes back; then the same as a 2026-07-28 client.

use super::harness::{Server, bin};
use super::peers::node_peers;
use super::python::{interop_client_passes, python, workspace};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_through_a_composite_route() {
    let twin = Server::demo_http().await;
    let (node, everything) = tokio::task::spawn_blocking(node_peers).await.unwrap();
    let paged = workspace().join("tests/interop/paged_server.py");
    let servers = [
        format!("demo={} demo-server", bin()),
        format!("twin={}", twin.url()),
        format!("everything={node} {everything} stdio"),
        format!("paged={} {}", python().display(), paged.display()),
    ];
    let mut args: Vec<&str> = vec!["--page-size", "100"];
    for s in &servers {
        args.extend(["--server", s.as_str()]);
    }
    let proxy = Server::forward_http(&args).await;
    let url = proxy.url();
    tokio::task::spawn_blocking(move || {
        interop_client_passes(
            "composite_client.py",
            &["--url", &url, "--everything", "--timeout", "30"],
        );
        // A 2026-07-28 client (no handshake; list changes on a `subscriptions/listen`
        // stream): served through a held session like any session-based upstream.
        interop_client_passes(
            "composite_client.py",
            &["--url", &url, "--mode", "2026-07-28"],
        );
    })
    .await
    .unwrap();
}
