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

/// The README's five-line Python client runs as written against `forward http --demo` (only
/// the address is changed to the test's port) and prints the echo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_python_client_runs() {
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let block = readme
        .split("**A five-line Python client**")
        .nth(1)
        .and_then(|rest| rest.split("```python\n").nth(1))
        .and_then(|code| code.split("```").next())
        .expect("the README's Python client block");
    assert_eq!(block.lines().count(), 5, "five lines: {block}");
    let p = Server::forward_http(&["--demo"]).await;
    let code = block.replace("http://127.0.0.1:8080/mcp", &p.url());
    assert_ne!(code, block, "the README's client uses the default address");
    let out = tokio::task::spawn_blocking(move || Launch::python().args(["-c", &code]).run())
        .await
        .unwrap();
    assert!(out.status.success(), "{}", lossy(&out.stderr));
    assert_eq!(lossy(&out.stdout).trim(), "hello");
}
