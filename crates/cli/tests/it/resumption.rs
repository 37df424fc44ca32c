//! Proxy-owned resumption: SSE events carry ids naming their stream, are logged before they are
//! sent, and a GET with Last-Event-ID replays exactly what the client missed.

use super::harness::{EventExt, Launch, Raw, Server, SseEvent, SseStream, WAIT};
use serde_json::{Value, json};
use std::time::Duration;

/// Read SSE events from a response until `stop_after` events were read (then drop the
/// connection) or the stream ends; (events, whether it ended). A stream cut by a transport
/// error fails the test.
async fn read_events(resp: reqwest::Response, stop_after: Option<usize>) -> (Vec<SseEvent>, bool) {
    let mut stream = SseStream::new(resp);
    let events = stream.take(stop_after).await;
    if let Some(e) = stream.cut() {
        panic!("SSE read failed: {e}");
    }
    (events, stream.finished())
}

fn get_resume(c: &Raw, last: &str) -> reqwest::RequestBuilder {
    c.http
        .get(&c.url)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", c.session.clone().unwrap())
        .header("mcp-protocol-version", c.version)
        .header("last-event-id", last)
}

#[tokio::test]
async fn a_stream_cut_100_times_loses_and_duplicates_nothing() {
    const STEPS: u64 = 300;
    let p = Server::forward_http(&["--demo"]).await;
    let mut c = Raw::new(p.url());
    c.version = "2025-11-25";
    c.initialize().await;
    let call = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{
        "name":"slow","arguments":{"steps":STEPS,"duration":3.0},"_meta":{"progressToken":"t"}}});
    let resp = c.post_builder(call.to_string()).send().await.unwrap();
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut seed: u64 = 0x5eed;
    let mut next_cut = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        1 + (seed >> 33) as usize % 4
    };
    let (mut events, mut ended) = read_events(resp, Some(next_cut())).await;
    let first = &events[0];
    assert!(
        first.text().is_empty() && first.retry.is_some(),
        "2025-11-25 streams start with a priming event: {first:?}"
    );
    let mut cuts = 0;
    while !ended {
        let last = events
            .iter()
            .rev()
            .find_map(|e| e.id.clone())
            .expect("events carry ids");
        assert!(
            last.starts_with("p"),
            "POST stream ids name their stream: {last}"
        );
        let stop = if cuts < 100 { Some(next_cut()) } else { None };
        let resp = get_resume(&c, &last).send().await.unwrap();
        assert_eq!(resp.status(), 200, "resume after {last}");
        let (more, done) = read_events(resp, stop).await;
        events.extend(more);
        ended = done;
        cuts += 1;
    }
    assert!(cuts >= 100, "only {cuts} cuts: the stream ended too early");
    let msgs: Vec<Value> = events.iter().filter_map(EventExt::json).collect();
    let progress: Vec<u64> = msgs
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .map(|m| m["params"]["progress"].as_f64().unwrap() as u64)
        .collect();
    assert_eq!(
        progress,
        (1..=STEPS).collect::<Vec<_>>(),
        "every progress event exactly once, in order"
    );
    let last = msgs.last().unwrap();
    assert_eq!(last["id"], json!(1));
    assert_eq!(
        last["result"]["content"][0]["text"],
        format!("completed {STEPS} steps")
    );
    let ids: Vec<&String> = events.iter().filter_map(|e| e.id.as_ref()).collect();
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "no event id twice");
}

/// A client that drops a stdio server's tool-call stream early and comes back after the tool
/// finished gets every missed log notification (more than a replay page) on that stream, in
/// order, once, then the reply.
#[tokio::test]
async fn a_long_missed_stretch_is_replayed_in_pages_on_its_own_stream() {
    const COUNT: usize = 1500;
    // The admin listener's live traffic shows when the tool is done.
    let p = Launch::shadowcat(&["forward", "http", "--listen", "127.0.0.1:0", "--demo"])
        .args(["--max-events", "5000", "--admin", "127.0.0.1:0"])
        .with_admin()
        .serve()
        .await;
    let mut c = Raw::new(p.url());
    c.version = "2025-11-25";
    c.initialize().await;
    let traffic = c
        .http
        .get(format!("{}/api/traffic", p.admin.as_deref().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(traffic.status(), 200);
    let mut traffic = SseStream::new(traffic);
    let call = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{
        "name":"log","arguments":{"message":"m","count":COUNT}}});
    let resp = c.post_builder(call.to_string()).send().await.unwrap();
    // The priming event and a few notifications, then the connection is dropped.
    let (mut events, ended) = read_events(resp, Some(4)).await;
    assert!(!ended);
    let last = events
        .iter()
        .rev()
        .find_map(|e| e.id.clone())
        .expect("events carry ids");
    // The tool runs to its end meanwhile (its reply passes the proxy); everything it sends is
    // logged on this stream.
    traffic
        .next_matching(|e| e["id"] == 1 && e["direction"] == "s2c")
        .await;
    let resp = get_resume(&c, &last).send().await.unwrap();
    assert_eq!(resp.status(), 200, "resume after {last}");
    let (more, done) = read_events(resp, None).await;
    assert!(done, "the resumed stream ends after the reply");
    events.extend(more);
    let msgs: Vec<Value> = events.iter().filter_map(EventExt::json).collect();
    let logged: Vec<String> = msgs
        .iter()
        .filter(|m| m["method"] == "notifications/message")
        .map(|m| m["params"]["data"].as_str().unwrap_or_default().to_string())
        .collect();
    let expected: Vec<String> = (1..=COUNT).map(|i| format!("m #{i}")).collect();
    assert_eq!(logged, expected, "every log notification once, in order");
    assert_eq!(msgs.last().unwrap()["id"], json!(1), "then the reply");
    let ids: Vec<&String> = events.iter().filter_map(|e| e.id.as_ref()).collect();
    assert!(
        ids.iter()
            .all(|i| i.starts_with(last.split('.').next().unwrap()))
    );
}

#[tokio::test]
async fn unknown_or_foreign_last_event_ids_are_refused_clearly() {
    let p = Server::forward_http(&["--demo"]).await;
    let mut c = Raw::new(p.url());
    c.version = "2025-11-25";
    c.initialize().await;
    for bad in ["nonsense", "p99.5", "g.12345", "x.1"] {
        let r = Raw::send(get_resume(&c, bad)).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        assert!(r.body.contains("events may have been lost"), "{}", r.body);
    }
}

#[tokio::test]
async fn get_stream_events_wait_for_the_next_get() {
    // Over HTTP the demo server sends resource updates on its GET stream; the proxy listens to
    // it from the start, so updates that arrive while the client has no GET open are kept.
    let demo = Server::demo_http().await;
    let p = Server::forward_http(&["--target", &demo.url()]).await;
    let mut a = Raw::new(p.url());
    a.initialize().await;
    let r = a.post(json!({"jsonrpc":"2.0","id":1,"method":"resources/subscribe","params":{"uri":"demo://counter"}})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let mut b = Raw::new(p.url());
    b.initialize().await;
    for i in 0..3 {
        b.call_tool(10 + i, "increment", json!({})).await;
    }
    let get = a
        .http
        .get(&a.url)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", a.session.clone().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 200);
    let (events, _) = read_events(get, Some(3)).await;
    for e in &events {
        let m = e.json().expect("data");
        assert_eq!(m["method"], "notifications/resources/updated", "{m}");
        assert!(e.id.as_deref().unwrap().starts_with("g."), "{e:?}");
    }
}

/// Calls the demo's `log` tool (`count` notifications of ~100 bytes, then the reply) and reads
/// its SSE stream to the end; returns the ids of its events, in order.
async fn logged_call(c: &Raw, count: usize) -> Vec<String> {
    let call = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{
        "name":"log","arguments":{"message":"a log line of some length to fill the event log","count":count}}});
    let resp = c.post_builder(call.to_string()).send().await.unwrap();
    let (events, ended) = read_events(resp, None).await;
    assert!(ended, "the call's stream ends after its reply");
    let last = events.last().unwrap().json().expect("data");
    assert_eq!(last["id"], json!(1), "the reply comes last");
    events
        .into_iter()
        .map(|e| e.id.expect("every event has an id"))
        .collect()
}

/// `--max-event-bytes` bounds a session's event log: the oldest events of a long stream are
/// dropped (resuming from them is refused: events may have been lost), the newest stay
/// resumable (also after the stream finished, within its grace period).
#[tokio::test]
async fn a_session_event_log_keeps_within_its_byte_budget() {
    let p = Server::forward_http(&[
        "--demo",
        "--max-event-bytes",
        "4096",
        "--finished-stream-grace",
        "3600",
    ])
    .await;
    let mut c = Raw::new(p.url());
    c.version = "2025-11-25";
    c.initialize().await;
    let ids = logged_call(&c, 300).await;
    for early in &ids[..3] {
        let r = Raw::send(get_resume(&c, early)).await;
        assert_eq!(r.status, 400, "{early}: {}", r.body);
        assert!(r.body.contains("events may have been lost"), "{}", r.body);
    }
    let before_last = &ids[ids.len() - 2];
    let resp = get_resume(&c, before_last).send().await.unwrap();
    assert_eq!(resp.status(), 200, "resume after {before_last}");
    let (replayed, ended) = read_events(resp, None).await;
    assert!(ended, "a finished stream's replay ends");
    assert_eq!(
        replayed
            .iter()
            .map(|e| e.id.clone().unwrap())
            .collect::<Vec<_>>(),
        vec![ids[ids.len() - 1].clone()],
        "exactly the reply is replayed"
    );
}

/// A finished POST stream's events are dropped once `--finished-stream-grace` is over: a
/// resumption then gets the "events may have been lost" answer instead of a replay.
#[tokio::test]
async fn a_finished_stream_is_dropped_after_its_grace_period() {
    let p = Server::forward_http(&["--demo", "--finished-stream-grace", "0.2"]).await;
    let mut c = Raw::new(p.url());
    c.version = "2025-11-25";
    c.initialize().await;
    let ids = logged_call(&c, 3).await;
    let first = &ids[0];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = Raw::send(get_resume(&c, first)).await;
        if r.status == 400 {
            assert!(r.body.contains("events may have been lost"), "{}", r.body);
            break;
        }
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the finished stream's events were never dropped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The session itself lives on.
    let text = c
        .call_tool(2, "echo", json!({"message": "still here"}))
        .await;
    assert!(text.contains("still here"), "{text}");
}

/// A fresh GET (no `Last-Event-ID`) after the event log dropped the last event the previous
/// GET delivered (byte budget): what the log still holds is delivered, not silently skipped.
#[tokio::test]
async fn a_fresh_get_after_retention_dropped_its_last_event_still_gets_what_is_kept() {
    let demo = Server::demo_http().await;
    let p = Server::forward_http(&["--target", &demo.url(), "--max-event-bytes", "1024"]).await;
    let mut a = Raw::new(p.url());
    a.initialize().await;
    let r = a.post(json!({"jsonrpc":"2.0","id":1,"method":"resources/subscribe","params":{"uri":"demo://counter"}})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let get = || {
        a.http
            .get(&a.url)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", a.session.clone().unwrap())
            .send()
    };
    let mut b = Raw::new(p.url());
    b.initialize().await;
    // The first GET delivers one update, then goes away.
    let first = get().await.unwrap();
    b.call_tool(10, "increment", json!({})).await;
    let (events, _) = read_events(first, Some(1)).await;
    let delivered = events[0].id.clone().unwrap();
    // Thirty more updates while no GET is open: far more than 1024 bytes of log.
    for i in 0..30 {
        b.call_tool(20 + i, "increment", json!({})).await;
    }
    let again = get().await.unwrap();
    assert_eq!(again.status(), 200);
    let (events, _) = read_events(again, Some(1)).await;
    let e = &events[0];
    let m = e.json().expect("data");
    assert_eq!(m["method"], "notifications/resources/updated", "{m}");
    assert_ne!(e.id.as_deref(), Some(delivered.as_str()), "{e:?}");
}
