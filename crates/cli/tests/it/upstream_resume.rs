//! Upstream reconnect: when an HTTP upstream's SSE stream breaks before the response, the proxy
//! resumes it with GET + the upstream's Last-Event-ID, dropping events it already relayed; if
//! the upstream cannot resume, the client gets a JSON-RPC error.

use super::harness::{Raw, Server};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Fake {
    resumable: bool,
    resumes: AtomicUsize,
}

fn sse(events: Vec<String>, then_break: bool) -> Response {
    let items: Vec<Result<Bytes, std::io::Error>> =
        events.into_iter().map(|e| Ok(Bytes::from(e))).collect();
    let events = futures_util::stream::iter(items);
    // The cut comes after the events reached the wire, as a real network failure would.
    let cut = futures_util::stream::once(async {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        Err(std::io::Error::other("connection cut"))
    });
    let body = if then_break {
        Body::from_stream(futures_util::StreamExt::chain(events, cut))
    } else {
        Body::from_stream(events)
    };
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(body)
        .unwrap()
}

fn ev(id: &str, msg: Value) -> String {
    format!("id: {id}\ndata: {msg}\n\n")
}

fn progress(n: u64) -> Value {
    json!({"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"t","progress":n}})
}

async fn fake(
    State(f): State<Arc<Fake>>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method == Method::DELETE {
        return Response::builder().status(200).body(Body::empty()).unwrap();
    }
    if method == Method::GET {
        let Some(last) = headers.get("last-event-id") else {
            return Response::builder()
                .status(StatusCode::METHOD_NOT_ALLOWED)
                .body(Body::empty())
                .unwrap();
        };
        if !f.resumable {
            return Response::builder()
                .status(StatusCode::METHOD_NOT_ALLOWED)
                .body(Body::empty())
                .unwrap();
        }
        f.resumes.fetch_add(1, Ordering::SeqCst);
        assert_eq!(
            headers.get("mcp-session-id").unwrap(),
            "upstream-1",
            "resume carries the upstream's session id"
        );
        assert_eq!(last, "e2", "resume from the upstream's own last event id");
        // The server re-sends e2 (the proxy must not relay it twice), then continues.
        let reply =
            json!({"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"done"}]}});
        return sse(
            vec![
                ev("e2", progress(2)),
                ev("e3", progress(3)),
                ev("e4", reply),
            ],
            false,
        );
    }
    let msg: Value = serde_json::from_slice(&body).unwrap();
    match msg["method"].as_str() {
        Some("initialize") => Response::builder()
            .header("content-type", "application/json")
            .header("mcp-session-id", "upstream-1")
            .body(Body::from(
                json!({"jsonrpc":"2.0","id":msg["id"],"result":{"protocolVersion":"2025-06-18","capabilities":{},"serverInfo":{"name":"fake","version":"1"}}}).to_string(),
            ))
            .unwrap(),
        Some("tools/call") => sse(vec![ev("e1", progress(1)), ev("e2", progress(2))], true),
        _ => Response::builder().status(202).body(Body::empty()).unwrap(),
    }
}

async fn start_fake(resumable: bool) -> (String, Arc<Fake>) {
    let f = Arc::new(Fake {
        resumable,
        resumes: AtomicUsize::new(0),
    });
    let app = axum::Router::new().fallback(fake).with_state(f.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/mcp"), f)
}

async fn call_through(url: &str) -> Vec<Value> {
    let p = Server::forward_http(&["--target", url]).await;
    let mut c = Raw::new(p.url());
    c.initialize().await;
    let r = c
        .post(json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"x","_meta":{"progressToken":"t"}}}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.messages()
}

#[tokio::test]
async fn a_broken_upstream_stream_is_resumed_without_duplicates() {
    let (url, f) = start_fake(true).await;
    let msgs = call_through(&url).await;
    let progress: Vec<u64> = msgs
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .map(|m| m["params"]["progress"].as_u64().unwrap())
        .collect();
    assert_eq!(progress, [1, 2, 3], "{msgs:?}");
    assert_eq!(msgs.last().unwrap()["result"]["content"][0]["text"], "done");
    assert_eq!(f.resumes.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_upstream_that_cannot_resume_gives_the_client_an_error() {
    let (url, _f) = start_fake(false).await;
    let msgs = call_through(&url).await;
    let reply = msgs
        .iter()
        .find(|m| m["id"] == json!(7))
        .expect("a reply for the request");
    assert_eq!(reply["error"]["code"], json!(-32000), "{reply}");
    let text = reply["error"]["message"].as_str().unwrap();
    assert!(text.contains("cannot resume"), "{text}");
}
