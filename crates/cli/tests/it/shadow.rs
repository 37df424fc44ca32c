//! Shadow traffic: requests mirrored to a second server that answers one tool differently; the
//! client sees only the primary's answers, the difference is logged, and `tape diff` on the two
//! recordings finds it.

use super::harness::{lossy, run};
use super::intercept::{Proxy, call, text, write_rules};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_reports_a_seeded_difference() {
    let dir = tempfile::tempdir().unwrap();
    // The shadow: the demo server behind a proxy whose rule changes echo's answers.
    let rules = dir.path().join("seed.toml");
    write_rules(
        &rules,
        "[[rule]]\ndirection = 'server'\nkind = 'response'\ntool = 'echo'\naction = 'modify'\nset = { '/result/content/0/text' = 'SEEDED DIFFERENCE' }\n",
    );
    let shadow = Proxy::start(&["--rules", &rules.to_string_lossy()]).await;
    let (p_tape, s_tape) = (
        dir.path().join("primary.jsonl"),
        dir.path().join("shadow.jsonl"),
    );
    let primary = Proxy::start(&[
        "--shadow",
        &shadow.url,
        "--record",
        &p_tape.to_string_lossy(),
        "--record-shadow",
        &s_tape.to_string_lossy(),
    ])
    .await;

    let raw = primary.client().await;
    assert_eq!(
        text(&call(&raw, 1, "echo", json!({"message": "hi"})).await),
        "hi"
    );
    assert_eq!(
        text(&call(&raw, 2, "add", json!({"a": 2, "b": 3})).await),
        "5"
    );
    let line = primary
        .wait_log(&["shadow response differs", "tools/call echo"])
        .await;
    assert!(
        line.contains("/result/content/0/text") && line.contains("SEEDED DIFFERENCE"),
        "{line}"
    );
    assert!(
        !primary.logged("tools/call add"),
        "add answered the same on both"
    );
    assert!(
        shadow.logged("session created"),
        "the shadow really got the traffic"
    );
    // The shadow answers on its own time: its answer to `add` (id 2) must be in its tape before
    // the session and the proxy end (shutdown does not wait for a mirror).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !answered_in(&s_tape, 2) {
        assert!(
            std::time::Instant::now() < deadline,
            "the shadow's answer to add never reached its tape"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    raw.delete().await;
    primary.terminate().await;

    let d = run(&[
        "tape",
        "diff",
        &p_tape.to_string_lossy(),
        &s_tape.to_string_lossy(),
    ]);
    let report = lossy(&d.stdout);
    assert_eq!(d.status.code(), Some(1), "{report}");
    assert!(report.contains("s2c response tools/call echo"), "{report}");
    assert!(report.contains("\"SEEDED DIFFERENCE\""), "{report}");
    assert!(
        report.contains("1 difference(s)"),
        "only echo differs: {report}"
    );
}

/// Whether the tape at `path` holds a server → client answer to request `id`.
fn answered_in(path: &std::path::Path, id: i64) -> bool {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .any(|v| v["dir"] == "s2c" && v["message"]["id"] == json!(id))
}
