//! Many sessions at once: isolation, one child per session, cleanup on DELETE and idle timeout.

use super::harness::{Raw, Server, SseStream, WAIT, descendants, wait_descendants};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_sessions_each_with_its_own_child() {
    const N: usize = 200;
    let p = Server::forward_http(&["--demo"]).await;
    let pid = p.pid();
    let url = p.url();
    let mut tasks = Vec::new();
    for i in 0..N {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Raw::new(url);
            c.initialize().await;
            for round in 0..3 {
                let msg = format!("session {i} round {round}");
                assert_eq!(
                    c.call_tool(round, "echo", json!({"message": msg})).await,
                    msg
                );
            }
            c
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.expect("session task"));
    }
    // One child per live session: never shared, never one per request.
    let children = wait_descendants(pid, N).await;
    assert_eq!(children.len(), N);
    let ids: std::collections::HashSet<_> =
        clients.iter().map(|c| c.session.clone().unwrap()).collect();
    assert_eq!(ids.len(), N, "session ids are unique");
    // DELETE half, the rest stay
    for c in clients.drain(..N / 2) {
        assert_eq!(c.delete().await.status, 204);
    }
    wait_descendants(pid, N / 2).await;
    for c in &clients {
        assert_eq!(c.call_tool(99, "add", json!({"a": 1, "b": 1})).await, "2");
    }
    for c in clients.drain(..) {
        assert_eq!(c.delete().await.status, 204);
    }
    wait_descendants(pid, 0).await;
}

#[tokio::test]
async fn idle_sessions_are_reaped_and_their_child_killed() {
    let p = Server::forward_http(&["--demo", "--idle-timeout", "0.5"]).await;
    let mut c = Raw::new(p.url());
    c.initialize().await;
    assert_eq!(descendants(p.pid()).len(), 1);
    // a call longer than the idle timeout is not reaped while in flight
    let r = c
        .call_tool(1, "slow", json!({"steps": 2, "duration": 1.2}))
        .await;
    assert_eq!(r, "completed 2 steps");
    wait_descendants(p.pid(), 0).await;
    let r = c
        .post(json!({"jsonrpc":"2.0","id":2,"method":"tools/list"}))
        .await;
    assert_eq!(r.status, 404, "a reaped session is unknown: {}", r.body);
}

#[tokio::test]
async fn an_open_get_stream_does_not_keep_an_idle_session() {
    let p = Server::forward_http(&["--demo", "--idle-timeout", "1"]).await;
    let mut c = Raw::new(p.url());
    c.initialize().await;
    assert_eq!(descendants(p.pid()).len(), 1);
    let get = c
        .http
        .get(&c.url)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", c.session.as_deref().unwrap())
        .header("mcp-protocol-version", c.version);
    let resp = tokio::time::timeout(WAIT, get.send())
        .await
        .expect("HTTP timeout")
        .expect("GET");
    assert_eq!(resp.status(), 200);
    // Nobody asks anything and the server says nothing: the session is reaped with its stream
    // open, the stream ends, and the child is gone.
    let mut s = SseStream::new(resp);
    s.take(None).await;
    assert!(s.finished(), "the GET stream ended cleanly");
    wait_descendants(p.pid(), 0).await;
    let r = c
        .post(json!({"jsonrpc":"2.0","id":2,"method":"tools/list"}))
        .await;
    assert_eq!(r.status, 404, "a reaped session is unknown: {}", r.body);
}
