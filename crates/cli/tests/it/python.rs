//! Interop with the official Python SDK (`mcp` on PyPI) as the client: tests/interop/python_client.py.
//! The Python environment comes from scripts/python-env.sh (run by the test script and CI).

use super::harness::{Launch, Server, bin, lossy};
use std::path::PathBuf;

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("SHADOWCAT_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = workspace().join(".venv/bin/python");
    assert!(
        venv.exists(),
        "python with `mcp` not found: run scripts/python-env.sh (or set SHADOWCAT_PYTHON)"
    );
    venv
}

/// Run the interop client tests/interop/SCRIPT with `args` (blocking); panics with its output
/// unless it exits 0 and reports ` passed, 0 failed`.
pub fn interop_client_passes(script: &str, args: &[&str]) {
    let out = Launch::interop(script).args(args).run();
    let stdout = lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(" passed, 0 failed"),
        "{script} {args:?} failed:\n{stdout}\n{}",
        lossy(&out.stderr)
    );
}

fn run_script(args: &[&str]) {
    interop_client_passes("python_client.py", args);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_through_forward_http() {
    let p = Server::forward_http(&["--demo"]).await;
    let url = p.url();
    tokio::task::spawn_blocking(move || run_script(&["--url", &url, "--concurrency", "8"]))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_through_forward_stdio() {
    tokio::task::spawn_blocking(|| {
        run_script(&["--stdio", "--", bin(), "forward", "stdio", "--demo"])
    })
    .await
    .unwrap();
}
