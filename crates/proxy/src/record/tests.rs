//! The recorder end to end inside the process: hook → writer thread → tape files.

use super::*;
use crate::pipeline::{Direction, FrameCtx, Hook, Outcome, Pipeline, Verdict};
use shadowcat_proto::Frame;
use shadowcat_tape::Tape;

fn frame(s: &str) -> Frame {
    Frame::parse_single(Bytes::copy_from_slice(s.as_bytes())).unwrap()
}

fn config(path: PathBuf) -> RecordConfig {
    RecordConfig {
        path,
        mode: "forward-stdio".into(),
        front: "stdio".into(),
        upstream: "https://user:pw@example.test/mcp?token=abc".into(),
        upstream_headers: vec![
            ("Authorization".into(), "Bearer s3cret".into()),
            ("X-Trace".into(), "t1".into()),
        ],
        redact: RedactConfig::default(),
        capacity: 64,
        on_full: OnFull::Drop,
    }
}

fn ctx(session: &str, direction: Direction) -> FrameCtx<'_> {
    FrameCtx::new(session, direction)
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn an_existing_tape_file_is_made_private() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.jsonl");
    std::fs::write(&path, "old").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (_hook, handle) = start(config(path.clone())).unwrap();
    handle.finish(Duration::from_secs(5)).await;
    assert_eq!(mode(&path), 0o600);
}

#[tokio::test]
async fn one_file_for_all_sessions_with_redacted_header() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("all.jsonl");
    let (hook, handle) = start(config(path.clone())).unwrap();
    let p = Pipeline::new(vec![hook]);
    for s in ["a", "b"] {
        let req = frame(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#);
        assert!(matches!(
            p.process(&ctx(s, Direction::ClientToServer), req).await,
            Outcome::Forward(_)
        ));
        let res = frame(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#);
        p.process(&ctx(s, Direction::ServerToClient), res).await;
    }
    handle.finish(Duration::from_secs(5)).await;
    let text = std::fs::read_to_string(&path).unwrap();
    for secret in ["s3cret", "pw@", "token=abc"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    assert_eq!(mode(&path), 0o600, "the tape is its owner's only");
    let t = Tape::open(&path).unwrap();
    assert_eq!(t.sessions(), vec!["a", "b"]);
    assert_eq!(t.frames.len(), 4);
    assert_eq!(t.header.upstream_headers["X-Trace"], "t1");
    assert_eq!(t.end.unwrap().frames, 4);
}

#[tokio::test]
async fn a_directory_gets_one_tape_per_session() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new/tapes/");
    let (hook, handle) = start(config(path.clone())).unwrap();
    let p = Pipeline::new(vec![hook]);
    for s in ["s1", "s2"] {
        let n = frame(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        p.process(&ctx(s, Direction::ClientToServer), n).await;
    }
    p.session_ended("s1");
    handle.finish(Duration::from_secs(5)).await;
    let mut files: Vec<_> = std::fs::read_dir(&path)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "{files:?}");
    assert_eq!(mode(&path), 0o700, "the tape directory is its owner's only");
    assert_eq!(
        mode(&dir.path().join("new")),
        0o700,
        "so are the parents it made"
    );
    for f in &files {
        assert_eq!(mode(f), 0o600, "{}", f.display());
        let t = Tape::open(f).unwrap();
        let s = t.header.session.clone().unwrap();
        assert!(f.to_string_lossy().ends_with(&format!("-{s}.jsonl")));
        assert_eq!(t.frames.len(), 1);
        assert!(t.end.is_some(), "{} not closed", f.display());
        assert_eq!(
            t.frames[0].record.t_us, 0,
            "each tape starts at its first frame"
        );
    }
}

#[tokio::test]
async fn hook_answers_are_recorded_with_a_note() {
    struct Answer;
    impl Hook for Answer {
        fn name(&self) -> &'static str {
            "answer"
        }
        fn on_frame(&self, _: &FrameCtx<'_>, _: &Frame) -> Verdict {
            Verdict::Reply(frame(
                r#"{"jsonrpc":"2.0","id":1,"result":{"mocked":true}}"#,
            ))
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.jsonl");
    let (hook, handle) = start(config(path.clone())).unwrap();
    let p = Pipeline::new(vec![Arc::new(Answer), hook]);
    let req = frame(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}"#);
    assert!(matches!(
        p.process(&ctx("s", Direction::ClientToServer), req).await,
        Outcome::Reply(_)
    ));
    handle.finish(Duration::from_secs(5)).await;
    let t = Tape::open(&path).unwrap();
    let notes: Vec<_> = t
        .frames
        .iter()
        .map(|f| {
            (
                f.record.dir.as_str(),
                f.record.note.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        notes,
        vec![
            ("c2s", "answered-by-hook".to_string()),
            ("s2c", "hook-answer".to_string())
        ]
    );
}

#[tokio::test]
async fn a_full_buffer_drops_and_counts_or_blocks() {
    let shared = Arc::new(Shared::default());
    let (tx, mut rx) = mpsc::channel(1);
    let hook = RecordHook::new(tx, Instant::now(), OnFull::Drop, shared.clone());
    let c = ctx("s", Direction::ClientToServer);
    let f = frame(r#"{"jsonrpc":"2.0","method":"x"}"#);
    assert!(matches!(hook.on_frame(&c, &f), Verdict::Forward));
    assert!(matches!(hook.on_frame(&c, &f), Verdict::Forward));
    assert_eq!(
        shared
            .dropped_total
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(shared.take_dropped(Some("s")), 1);

    let (tx, mut rx2) = mpsc::channel(1);
    let hook = RecordHook::new(tx, Instant::now(), OnFull::Block, shared.clone());
    assert!(matches!(hook.on_frame(&c, &f), Verdict::Forward));
    let Verdict::Defer(wait) = hook.on_frame(&c, &f) else {
        panic!("a full buffer must make the relay wait with OnFull::Block");
    };
    let waiting = tokio::spawn(wait);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished(), "it must wait for room");
    rx2.recv().await.unwrap();
    assert!(matches!(waiting.await.unwrap(), Verdict::Forward));
    assert!(
        rx2.recv().await.is_some(),
        "the held frame is written, not lost"
    );
    rx.close();
}

#[tokio::test]
async fn http_details_are_kept_and_server_frames_wait_for_delivery() {
    use crate::pipeline::{HttpMeta, Transport};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.jsonl");
    let (hook, handle) = start(config(path.clone())).unwrap();
    let p = Pipeline::new(vec![hook]);
    let mut headers = http::HeaderMap::new();
    headers.insert("mcp-protocol-version", "2025-06-18".parse().unwrap());
    headers.insert("authorization", "Bearer s3cret".parse().unwrap());
    headers.insert("x-api-key", "k3y".parse().unwrap());
    headers.insert("content-type", "application/json".parse().unwrap());
    let post = FrameCtx {
        transport: Transport::Http(HttpMeta {
            method: "POST",
            status: None,
            content_type: None,
            headers: Some(&headers),
            url: Some("http://127.0.0.1:9/mcp?access_token=t0k3n&page=2"),
            sse_id: None,
        }),
        ..ctx("s", Direction::ClientToServer)
    };
    let req = frame(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#);
    p.process(&post, req).await;
    // A server frame whose delivery is reported later: nothing is recorded until then.
    let later = FrameCtx {
        transport: Transport::Later,
        ..ctx("s", Direction::ServerToClient)
    };
    let note = frame(r#"{"jsonrpc":"2.0","method":"notifications/message","params":{}}"#);
    let res = frame(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#);
    let stray = frame(r#"{"jsonrpc":"2.0","id":9,"result":{}}"#);
    for f in [&note, &res, &stray] {
        assert!(matches!(
            p.process(&later, (*f).clone()).await,
            Outcome::Forward(_)
        ));
    }
    let sent = FrameCtx {
        transport: Transport::Http(HttpMeta {
            method: "POST",
            status: Some(200),
            content_type: Some("text/event-stream"),
            headers: None,
            url: None,
            sse_id: Some("p1.3"),
        }),
        ..ctx("s", Direction::ServerToClient)
    };
    p.delivered(&sent, &note).await;
    p.delivered(&sent, &res).await;
    let lost = FrameCtx {
        transport: Transport::Undelivered,
        ..ctx("s", Direction::ServerToClient)
    };
    p.delivered(&lost, &stray).await;
    handle.finish(Duration::from_secs(5)).await;
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        !text.contains("s3cret") && !text.contains("k3y") && !text.contains("t0k3n"),
        "{text}"
    );
    assert!(
        !text
            .to_ascii_lowercase()
            .contains("authorization\":\"bearer")
    );
    let t = Tape::open(&path).unwrap();
    assert_eq!(t.frames.len(), 4, "{text}");
    let c = &t.frames[0].record.transport;
    assert_eq!(c.method.as_deref(), Some("POST"));
    assert_eq!(c.headers["mcp-protocol-version"], "2025-06-18");
    assert_eq!(c.headers["content-type"], "application/json");
    assert!(!c.headers.contains_key("authorization"));
    assert!(!c.headers.contains_key("x-api-key"));
    assert_eq!(
        c.url.as_deref(),
        Some("http://127.0.0.1:9/mcp?access_token=[REDACTED]&page=2")
    );
    let s = &t.frames[2].record.transport;
    assert_eq!((s.status, s.sse_id.as_deref()), (Some(200), Some("p1.3")));
    assert_eq!(s.headers["content-type"], "text/event-stream");
    assert_eq!(t.frames[3].record.note.as_deref(), Some("undelivered"));
    assert!(t.frames[3].record.transport.is_empty());
}
