//! The official Rust SDK (rmcp) as the client, through every forward mode.

#![allow(deprecated)] // sampling and logging are deprecated in rmcp, but they are what we relay.

use super::harness::{Launch, Server, WAIT};
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, ClientRequest,
    CreateMessageRequestParams, CreateMessageResult, ElicitRequestParams, ElicitResult,
    ElicitationAction, Implementation, JsonObject, LoggingMessageNotificationParam,
    ProgressNotificationParam, Request, SamplingMessage, ServerResult,
};
use rmcp::service::{NotificationContext, PeerRequestOptions, RequestContext, RunningService};
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

/// The demo server's tools, sorted.
const DEMO_TOOLS: [&str; 7] = [
    "add",
    "echo",
    "elicit",
    "increment",
    "log",
    "sample",
    "slow",
];

#[derive(Default)]
struct Seen {
    progress: Vec<f64>,
    logs: Vec<String>,
}

/// A client that answers sampling and elicitation and records progress and logs.
#[derive(Clone, Default)]
struct Client {
    seen: Arc<Mutex<Seen>>,
}

impl ClientHandler for Client {
    fn get_info(&self) -> ClientConfig {
        let caps = ClientCapabilities::builder()
            .enable_sampling()
            .enable_elicitation()
            .build();
        ClientConfig::new(caps, Implementation::new("shadowcat-it", "0.0.0"))
    }

    async fn create_message(
        &self,
        params: CreateMessageRequestParams,
        _: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, rmcp::ErrorData> {
        let prompt = params
            .messages
            .first()
            .and_then(|m| m.content.first())
            .and_then(|c| c.as_text())
            .map(|t| t.text.clone())
            .unwrap_or_default();
        Ok(CreateMessageResult::new(
            SamplingMessage::assistant_text(format!("rust says {prompt}")),
            "it-model".to_owned(),
        ))
    }

    async fn create_elicitation(
        &self,
        _: ElicitRequestParams,
        _: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, rmcp::ErrorData> {
        Ok(ElicitResult::new(ElicitationAction::Accept).with_content(json!({"name": "Grace"})))
    }

    async fn on_progress(&self, p: ProgressNotificationParam, _: NotificationContext<RoleClient>) {
        self.seen.lock().unwrap().progress.push(p.progress);
    }

    async fn on_logging_message(
        &self,
        p: LoggingMessageNotificationParam,
        _: NotificationContext<RoleClient>,
    ) {
        self.seen.lock().unwrap().logs.push(p.data.to_string());
    }
}

fn args(v: Value) -> JsonObject {
    v.as_object().cloned().expect("object")
}

fn text(r: &CallToolResult) -> String {
    r.content[0].as_text().expect("text content").text.clone()
}

async fn call(s: &RunningService<RoleClient, Client>, name: &'static str, a: Value) -> String {
    let r = tokio::time::timeout(
        WAIT,
        s.call_tool(CallToolRequestParams::new(name).with_arguments(args(a))),
    )
    .await
    .unwrap_or_else(|_| panic!("{name} timed out"))
    .unwrap_or_else(|e| panic!("{name} failed: {e}"));
    assert_ne!(r.is_error, Some(true), "{name}: {r:?}");
    text(&r)
}

/// Wait (within [`WAIT`]) until the client has seen the progress of a 3-step `slow` call and
/// `logs` log messages.
async fn wait_seen(client: &Client, logs: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (p, l) = {
            let seen = client.seen.lock().unwrap();
            (seen.progress.clone(), seen.logs.len())
        };
        if p == [1.0, 2.0, 3.0] && l == logs {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "progress {p:?}, logs {l}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The same conversation through any transport: tools, server→client requests, progress, logs.
async fn exercise(s: RunningService<RoleClient, Client>, client: Client) {
    let info = s.peer_info().expect("initialized");
    assert_eq!(info.server_info.as_ref().unwrap().name, "shadowcat-demo");
    let tools = s.list_all_tools().await.expect("tools/list");
    let mut names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    assert_eq!(names, DEMO_TOOLS);
    assert_eq!(
        call(&s, "echo", json!({"message": "héllo 🐈\nline"})).await,
        "héllo 🐈\nline"
    );
    assert_eq!(call(&s, "add", json!({"a": 2, "b": 40})).await, "42");
    assert_eq!(
        call(&s, "sample", json!({"prompt": "ping"})).await,
        "sampled: rust says ping"
    );
    let e = call(&s, "elicit", json!({"message": "who?"})).await;
    assert!(e.contains("accept") && e.contains("name=Grace"), "{e}");
    assert_eq!(
        call(&s, "log", json!({"message": "hi", "count": 2})).await,
        "logged 2"
    );

    let handle = s
        .send_cancellable_request(
            ClientRequest::CallToolRequest(Request::new(
                CallToolRequestParams::new("slow")
                    .with_arguments(args(json!({"steps": 3, "duration": 0.3}))),
            )),
            PeerRequestOptions::no_options(),
        )
        .await
        .expect("send slow");
    let ServerResult::CallToolResult(r) = tokio::time::timeout(WAIT, handle.await_response())
        .await
        .unwrap()
        .unwrap()
    else {
        panic!("not a tool result")
    };
    assert_eq!(text(&r), "completed 3 steps");
    wait_seen(&client, 2).await;
    s.cancel().await.expect("close client");
}

/// A client initialized over Streamable HTTP at `url`, and its handler (what it saw).
async fn over_http(url: String) -> (RunningService<RoleClient, Client>, Client) {
    let client = Client::default();
    let s = client
        .clone()
        .serve(StreamableHttpClientTransport::from_uri(url))
        .await
        .expect("initialize");
    (s, client)
}

fn child(args: &[&str]) -> TokioChildProcess {
    TokioChildProcess::new(Launch::shadowcat(args).command()).expect("spawn shadowcat")
}

#[tokio::test]
async fn rmcp_through_forward_stdio_to_a_stdio_child() {
    let client = Client::default();
    let s = client
        .clone()
        .serve(child(&["forward", "stdio", "--demo"]))
        .await
        .expect("initialize");
    exercise(s, client).await;
}

#[tokio::test]
async fn rmcp_through_forward_stdio_to_an_http_server() {
    let demo = Server::demo_http().await;
    let client = Client::default();
    let t = child(&["forward", "stdio", "--url", &demo.url()]);
    let s = client.clone().serve(t).await.expect("initialize");
    exercise(s, client).await;
}

#[tokio::test]
async fn rmcp_through_forward_http_to_a_stdio_child() {
    let p = Server::forward_http(&["--demo"]).await;
    let (s, client) = over_http(p.url()).await;
    exercise(s, client).await;
}

#[tokio::test]
async fn rmcp_through_forward_http_to_an_http_server() {
    let demo = Server::demo_http().await;
    let p = Server::forward_http(&["--target", &demo.url()]).await;
    let (s, client) = over_http(p.url()).await;
    exercise(s, client).await;
}

/// The Rust SDK through a composite route of two demo servers, its merged lists paged by the
/// route (pages of 3): every tool listed once under its prefix, calls routed to their member,
/// sampling from a member answered, progress of a member's call reaching the client.
#[tokio::test]
async fn rmcp_through_a_composite_route() {
    let demo = format!("a={} demo-server", super::harness::bin());
    let http = Server::demo_http().await;
    let twin = format!("b={}", http.url());
    let p = Server::forward_http(&["--server", &demo, "--server", &twin, "--page-size", "3"]).await;
    let (s, client) = over_http(p.url()).await;
    let info = s.peer_info().expect("initialized");
    assert_eq!(
        info.server_info.as_ref().unwrap().name,
        "shadowcat-composite"
    );
    let tools = s.list_all_tools().await.expect("tools/list");
    let mut names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    let mut expected: Vec<String> = ["a", "b"]
        .iter()
        .flat_map(|m| DEMO_TOOLS.iter().map(move |t| format!("{m}__{t}")))
        .collect();
    expected.sort();
    assert_eq!(names, expected);
    assert_eq!(call(&s, "b__add", json!({"a": 2, "b": 40})).await, "42");
    assert_eq!(
        call(&s, "b__sample", json!({"prompt": "ping"})).await,
        "sampled: rust says ping"
    );
    assert_eq!(
        call(&s, "a__slow", json!({"steps": 3, "duration": 0.1})).await,
        "completed 3 steps"
    );
    wait_seen(&client, 0).await;
    s.cancel().await.expect("close client");
}
