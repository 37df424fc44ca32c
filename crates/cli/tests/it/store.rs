//! Session records in a real SQLite file: listed by `shadowcat session`, kept across a restart,
//! and a crashed proxy's sessions are marked ended when it comes back.

use super::harness::{Launch, Raw, Server, lossy};
use serde_json::Value;

fn session_cli(args: &[&str]) -> (i32, String) {
    let out = Launch::shadowcat(&["session"]).args(args).run();
    (out.status.code().unwrap_or(-1), lossy(&out.stdout))
}

fn list(store: &str) -> Vec<Value> {
    let (code, out) = session_cli(&["list", "--store", store, "--json"]);
    assert_eq!(code, 0, "{out}");
    serde_json::from_str::<Vec<Value>>(&out).expect("JSON list")
}

#[tokio::test]
async fn sqlite_sessions_survive_a_crash_and_are_marked_ended() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite:{}", dir.path().join("sessions.db").display());
    let mut p = Server::forward_http(&["--demo", "--store", &store]).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let mut c = Raw::new(p.url());
        c.initialize().await;
        ids.push(c.session.clone().unwrap());
    }
    let rows = list(&store);
    assert_eq!(rows.len(), 2, "{rows:?}");
    for r in &rows {
        assert_eq!(r["status"], "active");
        assert_eq!(r["protocol_version"], "2025-06-18");
        assert_eq!(r["client_info"]["name"], "raw-test");
        assert!(ids.contains(&r["id"].as_str().unwrap().to_string()));
    }
    let (code, text) = session_cli(&["show", "--store", &store, &ids[0]]);
    assert_eq!(code, 0);
    assert!(text.contains(&ids[0]) && text.contains("active"), "{text}");

    // crash: SIGKILL, no cleanup. The children get EOF on stdin and exit on their own.
    p.kill().await;
    let _p2 = Server::forward_http(&["--demo", "--store", &store]).await;
    let rows = list(&store);
    assert_eq!(rows.len(), 2, "still listed after the restart: {rows:?}");
    assert!(rows.iter().all(|r| r["status"] == "ended"), "{rows:?}");

    let (code, _) = session_cli(&["kill", "--store", &store, &ids[1]]);
    assert_eq!(code, 0);
    assert_eq!(list(&store).len(), 1);
    let (code, _) = session_cli(&["show", "--store", &store, &ids[1]]);
    assert_eq!(code, 1, "a killed session is gone");
    let (code, _) = session_cli(&["list", "--store", "memory"]);
    assert_ne!(code, 0, "the memory store cannot be listed from outside");
}

/// Inspecting sessions never creates a store: a mistyped SQLite path is an error naming it, and
/// no file appears; the memory store (the default) is refused with a hint.
#[test]
fn session_commands_never_create_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("sesions.db");
    let store = format!("sqlite:{}", typo.display());
    let run = |args: &[&str]| {
        let out = Launch::shadowcat(args).run();
        (out.status.code().unwrap_or(-1), lossy(&out.stderr))
    };
    for cmd in [&["list"][..], &["show", "abc"], &["kill", "abc"]] {
        let mut args = vec!["session"];
        args.extend_from_slice(cmd);
        args.extend(["--store", &store]);
        let (code, err) = run(&args);
        assert_eq!(code, 1, "{cmd:?}: {err}");
        assert!(
            err.contains("no session store at") && err.contains("sesions.db"),
            "{err}"
        );
    }
    assert!(!typo.exists(), "no file was created");
    let (code, err) = run(&["session", "list"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--store"), "{err}");
    // Inspecting someone else's file never turns it into a store (it is opened read-only).
    let other = dir.path().join("other.db");
    std::fs::write(&other, b"").unwrap();
    let other_store = format!("sqlite:{}", other.display());
    for cmd in [&["list"][..], &["show", "abc"]] {
        let mut args = vec!["session"];
        args.extend_from_slice(cmd);
        args.extend(["--store", &other_store]);
        let (code, err) = run(&args);
        assert_eq!(code, 1, "{cmd:?}: {err}");
        assert!(err.contains("not a Shadowcat session store"), "{err}");
    }
    assert_eq!(
        std::fs::metadata(&other).unwrap().len(),
        0,
        "left untouched"
    );
}

/// A Redis store that cannot be opened (bad, or unreachable) is named without its credentials,
/// in every URL form.
#[test]
fn store_errors_never_show_the_password() {
    for store in [
        "redis://:hunter2@127.0.0.1:1/0",
        "redis+cluster://user:hunter2@127.0.0.1:1,127.0.0.1:2",
        "redis+cluster://user:hunter2@127.0.0.1:x",
        "redis+sentinel://:hunter2@127.0.0.1:1/mymaster",
        "redis+sentinel://:hunter2@127.0.0.1:1",
    ] {
        let out = Launch::shadowcat(&["session", "list", "--store", store]).run();
        let err = lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{store}: {err}");
        assert!(err.contains("cannot open session store"), "{store}: {err}");
        assert!(!err.contains("hunter2"), "{store}: {err}");
    }
}
