//! Every client era × every server era, through `forward http` and through `gateway`, with the
//! official Python SDK (`mcp` 2.3) on both sides.
//!
//! Clients: HTTP+SSE (2024-11-05), Streamable HTTP with `initialize` (2025-11-25), stateless
//! 2026-07-28, and `auto` (discover first). Servers: HTTP+SSE only, session-based Streamable
//! HTTP only, 2026-07-28 only, and stdio. Without the proxy, a modern client cannot use a
//! legacy server and a legacy client cannot use a modern-only one; through it, each pair lists
//! tools, calls `echo`, `add` and `count` (3 progress notifications relayed) and ends up in the
//! era its client asked for. The modern-only server also asks every client for input with a
//! multi-round-trip result (`ask`): session-based clients get it as `elicitation/create`.

use super::gateway_support::{config_file, start_gateway};
use super::harness::Server;
use super::peers::{ClientEra, Peer, PyEra, python_client, python_stdio, python_stdio_toml};
use std::sync::Arc;

/// The four server eras, started once per test.
struct Upstreams {
    legacy: Peer,
    sse: Peer,
    modern: Peer,
}

impl Upstreams {
    async fn start() -> Upstreams {
        let (legacy, sse, modern) = tokio::join!(
            Peer::python(PyEra::Legacy),
            Peer::python(PyEra::Sse),
            Peer::python(PyEra::Modern)
        );
        Upstreams {
            legacy,
            sse,
            modern,
        }
    }
}

const ROUTES: [&str; 4] = ["legacy", "sse", "modern", "stdio"];

/// Run every client era against every route of the proxy at `base`, a few at a time; panic
/// with the failures' output.
async fn run_matrix(base: String) {
    let limit = Arc::new(tokio::sync::Semaphore::new(3));
    let mut runs = Vec::new();
    for route in ROUTES {
        for era in ClientEra::ALL {
            let (base, limit) = (base.clone(), limit.clone());
            runs.push(tokio::spawn(async move {
                let _permit = limit.acquire_owned().await.unwrap();
                let path = format!("/servers/{route}/mcp");
                // The modern-only server asks for input the 2026-07-28 way (`ask`).
                let ask = route == "modern";
                let (ok, out) =
                    tokio::task::spawn_blocking(move || python_client(&base, &path, era, ask))
                        .await
                        .unwrap();
                (route, era, ok, out)
            }));
        }
    }
    let mut failures = Vec::new();
    let mut passed = 0;
    for r in runs {
        let (route, era, ok, out) = r.await.unwrap();
        if ok {
            passed += 1;
        } else {
            failures.push(format!("--- {era:?} client → {route} server:\n{out}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} pairs failed:\n{}",
        failures.len(),
        passed + failures.len(),
        failures.join("\n")
    );
    assert_eq!(passed, ROUTES.len() * ClientEra::ALL.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_era_to_every_server_era_through_forward_http() {
    let up = Upstreams::start().await;
    let stdio = python_stdio().join(" ");
    let p = Server::forward_http(&[
        "--target",
        &format!("legacy={}", up.legacy.url),
        "--target",
        &format!("sse=sse+{}", up.sse.url),
        "--target",
        &format!("modern={}", up.modern.url),
        "--target",
        &format!("stdio={stdio}"),
    ])
    .await;
    run_matrix(p.base.clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_era_to_every_server_era_through_the_gateway() {
    let up = Upstreams::start().await;
    let (_dir, cfg) = config_file(&format!(
        r#"
[server]
listen = "127.0.0.1:0"

[[routes]]
path = "/servers/legacy/mcp"
[[routes.upstreams]]
url = "{legacy}"

[[routes]]
path = "/servers/sse/mcp"
[[routes.upstreams]]
url = "{sse}"
transport = "sse"

[[routes]]
path = "/servers/modern/mcp"
[[routes.upstreams]]
url = "{modern}"

[[routes]]
path = "/servers/stdio/mcp"
[[routes.upstreams]]
{stdio}
"#,
        legacy = up.legacy.url,
        sse = up.sse.url,
        modern = up.modern.url,
        stdio = python_stdio_toml(),
    ));
    let gw = start_gateway(&["--config", &cfg], &[]).await;
    run_matrix(gw.base.clone()).await;
}
