//! End-to-end tests of the demo server, driven by an rmcp client: in-process
//! over `tokio::io::duplex` (the stdio wire format), plus one Streamable HTTP
//! test against `serve_http`.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]
// Sampling, logging and resources/subscribe are deprecated in rmcp (SEP-2577),
// but they are what the demo server exists to exercise.
#![allow(deprecated)]

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rmcp::{
    ClientHandler, RoleClient, ServiceExt,
    model::{
        CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, ClientRequest,
        ContentBlock, CreateMessageRequestParams, CreateMessageResult, ElicitRequestParams,
        ElicitResult, ElicitationAction, ErrorCode, GetPromptRequestParams, Implementation,
        JsonObject, LoggingLevel, LoggingMessageNotificationParam, ProgressNotificationParam,
        ProgressToken, ReadResourceRequestParams, Request, ResourceContents,
        ResourceUpdatedNotificationParam, Role, SamplingMessage, ServerResult,
        SetLevelRequestParams, SubscribeRequestParams, UnsubscribeRequestParams,
    },
    service::{
        NotificationContext, PeerRequestOptions, RequestContext, RunningService, ServiceError,
    },
    transport::StreamableHttpClientTransport,
};
use serde_json::{Value, json};
use shadowcat_demo::{DemoError, SharedState, serve_http, serve_io, serve_io_with_state};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// Test client
// ---------------------------------------------------------------------------

/// What the test client saw, and how it answers server requests.
#[derive(Default)]
struct Recorded {
    progress: Vec<ProgressNotificationParam>,
    logs: Vec<LoggingMessageNotificationParam>,
    resource_updates: Vec<String>,
    sampling_requests: Vec<CreateMessageRequestParams>,
    elicitation_requests: Vec<ElicitRequestParams>,
    /// The action the client answers elicitation requests with.
    elicit_action: Option<ElicitationAction>,
}

#[derive(Clone)]
struct TestClient {
    capabilities: ClientCapabilities,
    recorded: Arc<Mutex<Recorded>>,
}

impl TestClient {
    /// A client that supports sampling and elicitation.
    fn capable() -> Self {
        Self::with_capabilities(
            ClientCapabilities::builder()
                .enable_sampling()
                .enable_elicitation()
                .build(),
        )
    }

    /// A client that declares no capabilities at all.
    fn bare() -> Self {
        Self::with_capabilities(ClientCapabilities::default())
    }

    fn with_capabilities(capabilities: ClientCapabilities) -> Self {
        Self {
            capabilities,
            recorded: Arc::default(),
        }
    }

    fn recorded(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.recorded.lock().unwrap()
    }

    /// Poll until `condition` holds on the recorded state, or fail after `WAIT`.
    async fn wait_for(&self, what: &str, condition: impl Fn(&Recorded) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            if condition(&self.recorded()) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn progress_for(&self, token: &ProgressToken) -> Vec<ProgressNotificationParam> {
        self.recorded()
            .progress
            .iter()
            .filter(|p| &p.progress_token == token)
            .cloned()
            .collect()
    }
}

impl ClientHandler for TestClient {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            self.capabilities.clone(),
            Implementation::new("shadowcat-demo-test-client", "0.0.0"),
        )
    }

    async fn create_message(
        &self,
        params: CreateMessageRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, rmcp::ErrorData> {
        let prompt = params
            .messages
            .first()
            .and_then(|m| m.content.first())
            .and_then(|c| c.as_text())
            .map(|t| t.text.clone())
            .unwrap_or_default();
        self.recorded().sampling_requests.push(params);
        Ok(CreateMessageResult::new(
            SamplingMessage::assistant_text(format!("model says: {prompt}")),
            "test-model".to_owned(),
        )
        .with_stop_reason(CreateMessageResult::STOP_REASON_END_TURN))
    }

    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, rmcp::ErrorData> {
        let mut recorded = self.recorded();
        recorded.elicitation_requests.push(request);
        Ok(match recorded.elicit_action.clone() {
            None | Some(ElicitationAction::Accept) => {
                ElicitResult::new(ElicitationAction::Accept).with_content(json!({"name": "Ada"}))
            }
            Some(action) => ElicitResult::new(action),
        })
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.recorded().progress.push(params);
    }

    async fn on_logging_message(
        &self,
        params: LoggingMessageNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.recorded().logs.push(params);
    }

    async fn on_resource_updated(
        &self,
        params: ResourceUpdatedNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.recorded().resource_updates.push(params.uri);
    }
}

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

struct Harness {
    client: TestClient,
    service: RunningService<RoleClient, TestClient>,
    server: JoinHandle<Result<(), DemoError>>,
    cancel: CancellationToken,
}

impl Harness {
    async fn start(client: TestClient) -> Self {
        Self::start_with_state(client, SharedState::new()).await
    }

    async fn start_with_state(client: TestClient, state: Arc<SharedState>) -> Self {
        let (server_io, client_io) = tokio::io::duplex(64 * 1024);
        let (read, write) = tokio::io::split(server_io);
        let cancel = CancellationToken::new();
        let server = tokio::spawn(serve_io_with_state(read, write, state, cancel.clone()));
        let service = client
            .clone()
            .serve(client_io)
            .await
            .expect("client initializes against the demo server");
        Self {
            client,
            service,
            server,
            cancel,
        }
    }

    async fn call(&self, name: &'static str, arguments: Value) -> CallToolResult {
        self.service
            .call_tool(CallToolRequestParams::new(name).with_arguments(object(arguments)))
            .await
            .unwrap_or_else(|error| panic!("tools/call {name} failed: {error}"))
    }

    /// Call a tool that must succeed and return its single text content.
    async fn call_text(&self, name: &'static str, arguments: Value) -> String {
        let result = self.call(name, arguments).await;
        assert_ne!(result.is_error, Some(true), "{name} failed: {result:?}");
        only_text(&result)
    }

    /// Call a tool that must fail at the tool level and return its message.
    async fn call_error(&self, name: &'static str, arguments: Value) -> String {
        let result = self.call(name, arguments).await;
        assert_eq!(result.is_error, Some(true), "{name} unexpectedly succeeded");
        only_text(&result)
    }

    async fn read_text(&self, uri: &str) -> String {
        let result = self
            .service
            .read_resource(ReadResourceRequestParams::new(uri))
            .await
            .unwrap_or_else(|error| panic!("resources/read {uri} failed: {error}"));
        assert_eq!(result.contents.len(), 1, "{result:?}");
        match &result.contents[0] {
            ResourceContents::TextResourceContents {
                uri: got_uri,
                mime_type,
                text,
                ..
            } => {
                assert_eq!(got_uri, uri);
                assert_eq!(mime_type.as_deref(), Some("text/plain"));
                text.clone()
            }
            other => panic!("expected text contents, got {other:?}"),
        }
    }

    /// Close the client and check the server ends cleanly.
    async fn shutdown(self) {
        let Self {
            service,
            server,
            cancel,
            ..
        } = self;
        service.cancel().await.expect("client shuts down");
        let result = tokio::time::timeout(WAIT, server)
            .await
            .expect("server ends after the client disconnects")
            .expect("server task does not panic");
        assert!(result.is_ok(), "server ended with {result:?}");
        cancel.cancel();
    }
}

fn object(value: Value) -> JsonObject {
    match value {
        Value::Object(map) => map,
        other => panic!("expected a JSON object, got {other}"),
    }
}

fn only_text(result: &CallToolResult) -> String {
    assert_eq!(result.content.len(), 1, "{result:?}");
    result.content[0]
        .as_text()
        .unwrap_or_else(|| panic!("expected text content, got {result:?}"))
        .text
        .clone()
}

fn mcp_error(error: ServiceError) -> rmcp::ErrorData {
    match error {
        ServiceError::McpError(error) => error,
        other => panic!("expected a JSON-RPC error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Tests (in-process, stdio wire format)
// ---------------------------------------------------------------------------

#[tokio::test]
async fn initialize_announces_name_version_and_capabilities() {
    let h = Harness::start(TestClient::capable()).await;
    let info = h.service.peer_info().expect("server info after initialize");
    assert_eq!(
        info.server_info.as_ref().expect("serverInfo").name,
        "shadowcat-demo"
    );
    assert_eq!(
        info.server_info.as_ref().expect("serverInfo").version,
        env!("CARGO_PKG_VERSION")
    );
    let caps = &info.capabilities;
    assert!(caps.tools.is_some(), "tools capability: {caps:?}");
    assert!(caps.prompts.is_some(), "prompts capability: {caps:?}");
    assert!(caps.logging.is_some(), "logging capability: {caps:?}");
    let resources = caps.resources.as_ref().expect("resources capability");
    assert_eq!(resources.subscribe, Some(true));
    assert!(
        info.protocol_version.has_initialize(),
        "negotiated a session-based revision, got {}",
        info.protocol_version
    );
    h.shutdown().await;
}

#[tokio::test]
async fn tools_list_has_all_seven_tools() {
    let h = Harness::start(TestClient::capable()).await;
    let tools = h.service.list_all_tools().await.expect("tools/list");
    let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "add",
            "echo",
            "elicit",
            "increment",
            "log",
            "sample",
            "slow"
        ]
    );
    let echo = tools.iter().find(|t| t.name == "echo").unwrap();
    assert_eq!(
        echo.input_schema.get("required"),
        Some(&json!(["message"])),
        "{:?}",
        echo.input_schema
    );
    h.shutdown().await;
}

#[tokio::test]
async fn echo_and_add() {
    let h = Harness::start(TestClient::capable()).await;
    assert_eq!(
        h.call_text("echo", json!({"message": "hello, 世界 \n ok"}))
            .await,
        "hello, 世界 \n ok"
    );
    assert_eq!(h.call_text("add", json!({"a": 2, "b": 3})).await, "5");
    assert_eq!(h.call_text("add", json!({"a": 1.5, "b": 1})).await, "2.5");
    assert_eq!(
        h.call_text("add", json!({"a": -7, "b": 2.25})).await,
        "-4.75"
    );
    // A missing argument is reported, not silently defaulted.
    let missing = h.call("add", json!({"a": 1})).await;
    assert_eq!(missing.is_error, Some(true), "{missing:?}");
    h.shutdown().await;
}

#[tokio::test]
async fn slow_reports_progress_for_its_token() {
    let h = Harness::start(TestClient::capable()).await;
    let handle = h
        .service
        .send_cancellable_request(
            ClientRequest::CallToolRequest(Request::new(
                CallToolRequestParams::new("slow")
                    .with_arguments(object(json!({"steps": 3, "duration": 0.3}))),
            )),
            PeerRequestOptions::no_options(),
        )
        .await
        .expect("send tools/call slow");
    let token = handle.progress_token.clone();
    let response = handle.await_response().await.expect("slow completes");
    let ServerResult::CallToolResult(result) = response else {
        panic!("expected a CallToolResult, got {response:?}");
    };
    assert_eq!(only_text(&result), "completed 3 steps");
    h.client
        .wait_for("3 progress notifications", |r| {
            r.progress
                .iter()
                .filter(|p| p.progress_token == token)
                .count()
                >= 3
        })
        .await;
    let progress = h.client.progress_for(&token);
    let seen: Vec<(f64, Option<f64>, Option<&str>)> = progress
        .iter()
        .map(|p| (p.progress, p.total, p.message.as_deref()))
        .collect();
    assert_eq!(
        seen,
        [
            (1.0, Some(3.0), Some("step 1/3")),
            (2.0, Some(3.0), Some("step 2/3")),
            (3.0, Some(3.0), Some("step 3/3")),
        ]
    );
    // Defaults: 3 steps over 1 second (a lower bound only: a loaded machine may take longer).
    let started = Instant::now();
    assert_eq!(h.call_text("slow", json!({})).await, "completed 3 steps");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900),
        "default slow took {elapsed:?}"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn slow_stops_promptly_when_cancelled() {
    let h = Harness::start(TestClient::capable()).await;
    // 50 steps over 10 s: one progress notification every 200 ms.
    let handle = h
        .service
        .send_cancellable_request(
            ClientRequest::CallToolRequest(Request::new(
                CallToolRequestParams::new("slow")
                    .with_arguments(object(json!({"steps": 50, "duration": 10.0}))),
            )),
            PeerRequestOptions::no_options(),
        )
        .await
        .expect("send tools/call slow");
    let token = handle.progress_token.clone();
    h.client
        .wait_for("the first progress notification", |r| {
            r.progress.iter().any(|p| p.progress_token == token)
        })
        .await;
    let at_cancel = h.client.progress_for(&token).len();
    handle
        .cancel(Some("test cancels".to_owned()))
        .await
        .expect("send notifications/cancelled");

    // A second `slow` at the same pace (one step every 200 ms), run to its end: a server that
    // ignored the cancellation would have sent several more progress notifications for the
    // first meanwhile. One may have been on its way when the cancellation arrived, and one more
    // may race it (a step that had just checked for cancellation).
    let second = h
        .service
        .send_cancellable_request(
            ClientRequest::CallToolRequest(Request::new(
                CallToolRequestParams::new("slow")
                    .with_arguments(object(json!({"steps": 5, "duration": 1.0}))),
            )),
            PeerRequestOptions::no_options(),
        )
        .await
        .expect("send the second tools/call slow");
    let second_token = second.progress_token.clone();
    second
        .await_response()
        .await
        .expect("the second slow completes");
    h.client
        .wait_for("the second call's 5 progress notifications", |r| {
            r.progress
                .iter()
                .filter(|p| p.progress_token == second_token)
                .count()
                >= 5
        })
        .await;
    let later = h.client.progress_for(&token).len();
    assert!(
        later <= at_cancel + 2,
        "progress continued after cancellation: {at_cancel} then {later}"
    );
    assert!(later < 10, "slow ran {later} steps before stopping");

    // The server is still responsive.
    assert_eq!(
        h.call_text("echo", json!({"message": "still here"})).await,
        "still here"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn sample_round_trips_through_the_client() {
    let h = Harness::start(TestClient::capable()).await;
    assert_eq!(
        h.call_text("sample", json!({"prompt": "write a haiku"}))
            .await,
        "sampled: model says: write a haiku"
    );
    assert_eq!(
        h.call_text("sample", json!({"prompt": "short", "max_tokens": 7}))
            .await,
        "sampled: model says: short"
    );
    {
        let recorded = h.client.recorded();
        let requests = &recorded.sampling_requests;
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0].max_tokens, 100);
        assert_eq!(requests[1].max_tokens, 7);
        assert_eq!(requests[0].messages.len(), 1);
        assert_eq!(requests[0].messages[0].role, Role::User);
    }
    h.shutdown().await;
}

#[tokio::test]
async fn sample_and_elicit_fail_cleanly_without_client_support() {
    let h = Harness::start(TestClient::bare()).await;
    let message = h.call_error("sample", json!({"prompt": "hi"})).await;
    assert!(message.contains("does not support sampling"), "{message}");
    let message = h.call_error("elicit", json!({"message": "who?"})).await;
    assert!(
        message.contains("does not support form elicitation"),
        "{message}"
    );
    assert!(h.client.recorded().sampling_requests.is_empty());
    assert!(h.client.recorded().elicitation_requests.is_empty());
    h.shutdown().await;
}

#[tokio::test]
async fn elicit_round_trips_through_the_client() {
    let h = Harness::start(TestClient::capable()).await;
    assert_eq!(
        h.call_text("elicit", json!({"message": "What is your name?"}))
            .await,
        "elicited: accept name=Ada"
    );
    {
        let recorded = h.client.recorded();
        let [
            ElicitRequestParams::FormElicitationParams {
                message,
                requested_schema,
                ..
            },
        ] = recorded.elicitation_requests.as_slice()
        else {
            panic!(
                "expected one form elicitation, got {:?}",
                recorded.elicitation_requests
            );
        };
        assert_eq!(message, "What is your name?");
        let schema = serde_json::to_value(requested_schema).unwrap();
        assert_eq!(schema["type"], "object");
        assert_eq!(schema["required"], json!(["name"]));
        assert_eq!(schema["properties"]["name"]["type"], "string");
    }
    h.client.recorded().elicit_action = Some(ElicitationAction::Decline);
    assert_eq!(
        h.call_text("elicit", json!({"message": "again?"})).await,
        "elicited: decline"
    );
    h.client.recorded().elicit_action = Some(ElicitationAction::Cancel);
    assert_eq!(
        h.call_text("elicit", json!({"message": "again?"})).await,
        "elicited: cancel"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn log_emits_notifications_and_respects_set_level() {
    let h = Harness::start(TestClient::capable()).await;
    assert_eq!(
        h.call_text(
            "log",
            json!({"message": "hello", "level": "warning", "count": 3})
        )
        .await,
        "logged 3"
    );
    h.client
        .wait_for("3 log notifications", |r| r.logs.len() >= 3)
        .await;
    {
        let recorded = h.client.recorded();
        let data: Vec<&Value> = recorded.logs.iter().map(|l| &l.data).collect();
        assert_eq!(
            data,
            [&json!("hello #1"), &json!("hello #2"), &json!("hello #3")]
        );
        for log in &recorded.logs {
            assert_eq!(log.level, LoggingLevel::Warning);
            assert_eq!(log.logger.as_deref(), Some("demo"));
        }
    }
    // Single message: no " #i" suffix, level defaults to info.
    assert_eq!(
        h.call_text("log", json!({"message": "once"})).await,
        "logged 1"
    );
    h.client
        .wait_for("4 log notifications", |r| r.logs.len() >= 4)
        .await;
    {
        let recorded = h.client.recorded();
        assert_eq!(recorded.logs[3].data, json!("once"));
        assert_eq!(recorded.logs[3].level, LoggingLevel::Info);
    }

    h.service
        .set_level(SetLevelRequestParams::new(LoggingLevel::Error))
        .await
        .expect("logging/setLevel");
    assert_eq!(
        h.call_text(
            "log",
            json!({"message": "quiet", "level": "info", "count": 2})
        )
        .await,
        "logged 0"
    );
    assert_eq!(
        h.call_text("log", json!({"message": "loud", "level": "critical"}))
            .await,
        "logged 1"
    );
    // "loud" was sent after the "quiet" call was answered, on the same ordered stream: once it
    // is here, any "quiet" notification would have come before it.
    h.client
        .wait_for("the \"loud\" log notification", |r| {
            r.logs.iter().any(|l| l.data == json!("loud"))
        })
        .await;
    {
        let recorded = h.client.recorded();
        assert_eq!(recorded.logs.len(), 5, "{:?}", recorded.logs);
        assert_eq!(recorded.logs[4].data, json!("loud"));
        assert_eq!(recorded.logs[4].level, LoggingLevel::Critical);
    }
    let message = h
        .call_error("log", json!({"message": "x", "level": "loudest"}))
        .await;
    assert!(message.contains("unknown log level"), "{message}");
    h.shutdown().await;
}

#[tokio::test]
async fn resources_list_read_and_templates() {
    let h = Harness::start(TestClient::capable()).await;
    let resources = h
        .service
        .list_all_resources()
        .await
        .expect("resources/list");
    let mut uris: Vec<&str> = resources.iter().map(|r| r.uri.as_str()).collect();
    uris.sort_unstable();
    assert_eq!(uris, ["demo://counter", "demo://readme"]);
    for resource in &resources {
        assert_eq!(resource.mime_type.as_deref(), Some("text/plain"));
    }

    let readme = h.read_text("demo://readme").await;
    assert!(readme.contains("demo MCP server"), "{readme}");
    assert_eq!(h.read_text("demo://counter").await, "0");

    let templates = h
        .service
        .list_all_resource_templates()
        .await
        .expect("resources/templates/list");
    let template_uris: Vec<&str> = templates.iter().map(|t| t.uri_template.as_str()).collect();
    assert_eq!(template_uris, ["demo://items/{id}"]);
    assert_eq!(h.read_text("demo://items/42").await, "item 42");
    assert_eq!(h.read_text("demo://items/abc").await, "item abc");

    let error = mcp_error(
        h.service
            .read_resource(ReadResourceRequestParams::new("demo://nope"))
            .await
            .expect_err("unknown uri must fail"),
    );
    assert_eq!(error.code, ErrorCode::INVALID_PARAMS);
    assert_eq!(error.code.0, -32602);
    assert!(error.message.contains("demo://nope"), "{}", error.message);
    h.shutdown().await;
}

#[tokio::test]
async fn subscribe_increment_sends_resource_updated() {
    let h = Harness::start(TestClient::capable()).await;
    // Not subscribed yet: no notification.
    assert_eq!(h.call_text("increment", json!({})).await, "1");
    h.service
        .subscribe(SubscribeRequestParams::new("demo://counter"))
        .await
        .expect("resources/subscribe");
    assert_eq!(h.call_text("increment", json!({})).await, "2");
    h.client
        .wait_for("resources/updated", |r| !r.resource_updates.is_empty())
        .await;
    assert_eq!(h.client.recorded().resource_updates, ["demo://counter"]);
    assert_eq!(h.read_text("demo://counter").await, "2");

    h.service
        .unsubscribe(UnsubscribeRequestParams::new("demo://counter"))
        .await
        .expect("resources/unsubscribe");
    assert_eq!(h.call_text("increment", json!({})).await, "3");
    // A log notification sent after that increment was answered, on the same ordered stream: once
    // it is here, an update for the increment would have come before it.
    assert_eq!(
        h.call_text("log", json!({"message": "after increment 3"}))
            .await,
        "logged 1"
    );
    h.client
        .wait_for("the marker log notification", |r| {
            r.logs.iter().any(|l| l.data == json!("after increment 3"))
        })
        .await;
    assert_eq!(h.client.recorded().resource_updates.len(), 1);

    let error = mcp_error(
        h.service
            .subscribe(SubscribeRequestParams::new("demo://missing"))
            .await
            .expect_err("subscribing to an unknown uri must fail"),
    );
    assert_eq!(error.code, ErrorCode::INVALID_PARAMS);
    assert!(
        error.message.contains("demo://missing"),
        "{}",
        error.message
    );
    h.shutdown().await;
}

#[tokio::test]
async fn increment_notifies_subscribers_in_other_sessions() {
    let state = SharedState::new();
    let watcher = Harness::start_with_state(TestClient::capable(), state.clone()).await;
    let actor = Harness::start_with_state(TestClient::capable(), state.clone()).await;
    watcher
        .service
        .subscribe(SubscribeRequestParams::new("demo://counter"))
        .await
        .expect("resources/subscribe");
    assert_eq!(actor.call_text("increment", json!({})).await, "1");
    watcher
        .client
        .wait_for("resources/updated in the other session", |r| {
            r.resource_updates == ["demo://counter"]
        })
        .await;
    assert!(actor.client.recorded().resource_updates.is_empty());
    assert_eq!(watcher.read_text("demo://counter").await, "1");

    // Once the watcher's session is gone, increments still work.
    watcher.shutdown().await;
    assert_eq!(actor.call_text("increment", json!({})).await, "2");
    assert_eq!(state.counter(), 2);
    actor.shutdown().await;
}

#[tokio::test]
async fn prompts_list_and_get() {
    let h = Harness::start(TestClient::capable()).await;
    let prompts = h.service.list_all_prompts().await.expect("prompts/list");
    let mut names: Vec<&str> = prompts.iter().map(|p| p.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["code_review", "greeting"]);
    let arguments = |name: &str| -> Vec<(String, Option<bool>)> {
        let prompt = prompts.iter().find(|p| p.name == name).unwrap();
        let mut args: Vec<_> = prompt
            .arguments
            .iter()
            .flatten()
            .map(|a| (a.name.clone(), a.required))
            .collect();
        args.sort();
        args
    };
    assert_eq!(arguments("greeting"), [("name".to_owned(), Some(true))]);
    let code_review = arguments("code_review");
    assert_eq!(code_review[0], ("code".to_owned(), Some(true)));
    assert_eq!(code_review[1].0, "language");
    assert_ne!(code_review[1].1, Some(true), "language is optional");

    let greeting = h
        .service
        .get_prompt(
            GetPromptRequestParams::new("greeting").with_arguments(object(json!({"name": "Ada"}))),
        )
        .await
        .expect("prompts/get greeting");
    assert_eq!(greeting.messages.len(), 1);
    assert_eq!(greeting.messages[0].role, Role::User);
    assert_eq!(
        prompt_text(&greeting.messages[0].content),
        "Say hello to Ada."
    );

    let review = h
        .service
        .get_prompt(
            GetPromptRequestParams::new("code_review")
                .with_arguments(object(json!({"code": "fn main() {}", "language": "rust"}))),
        )
        .await
        .expect("prompts/get code_review");
    assert_eq!(review.messages.len(), 1);
    assert_eq!(review.messages[0].role, Role::User);
    let text = prompt_text(&review.messages[0].content);
    assert!(text.contains("review"), "{text}");
    assert!(text.contains("fn main() {}"), "{text}");
    assert!(text.contains("rust"), "{text}");

    let review = h
        .service
        .get_prompt(
            GetPromptRequestParams::new("code_review")
                .with_arguments(object(json!({"code": "print(1)"}))),
        )
        .await
        .expect("prompts/get code_review without language");
    assert!(prompt_text(&review.messages[0].content).contains("print(1)"));

    let error = mcp_error(
        h.service
            .get_prompt(GetPromptRequestParams::new("greeting"))
            .await
            .expect_err("greeting without a name must fail"),
    );
    assert_eq!(error.code, ErrorCode::INVALID_PARAMS, "{error:?}");
    h.shutdown().await;
}

fn prompt_text(content: &ContentBlock) -> String {
    content
        .as_text()
        .unwrap_or_else(|| panic!("expected text prompt content, got {content:?}"))
        .text
        .clone()
}

#[tokio::test]
async fn serve_io_ends_when_cancelled() {
    let (server_io, client_io) = tokio::io::duplex(4096);
    let (read, write) = tokio::io::split(server_io);
    let cancel = CancellationToken::new();
    let server = tokio::spawn(serve_io(read, write, cancel.clone()));
    // It serves a client (an answer to `initialize`) until it is cancelled.
    let (client_read, mut client_write) = tokio::io::split(client_io);
    let init = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},
        "clientInfo":{"name":"t","version":"1"}}});
    client_write
        .write_all(format!("{init}\n").as_bytes())
        .await
        .unwrap();
    let mut lines = tokio::io::BufReader::new(client_read).lines();
    let answer = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("an answer in time")
        .unwrap()
        .expect("an answer line");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["id"], json!(1), "{answer}");
    assert!(!server.is_finished(), "server waits for more");
    cancel.cancel();
    let result = tokio::time::timeout(WAIT, server)
        .await
        .expect("server stops when cancelled")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
}

// ---------------------------------------------------------------------------
// Streamable HTTP
// ---------------------------------------------------------------------------

/// Send one raw HTTP/1.1 request and return the whole response as text.
async fn raw_http(addr: std::net::SocketAddr, request: String) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("server closes the response")
        .unwrap();
    String::from_utf8_lossy(&response).into_owned()
}

fn initialize_request(host: &str) -> String {
    let body = json!({
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"}
        }
    })
    .to_string();
    format!(
        "POST /mcp HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn serve_http_streamable_http_round_trip() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cancel = CancellationToken::new();
    let server = tokio::spawn(serve_http(listener, cancel.clone()));

    // rmcp's Streamable HTTP client: echo, progress and a sampling round trip
    // (a server-to-client request carried on the POST's SSE stream).
    let client = TestClient::capable();
    let transport = StreamableHttpClientTransport::from_uri(format!("http://{addr}/mcp"));
    let service = client
        .clone()
        .serve(transport)
        .await
        .expect("client initializes over Streamable HTTP");
    let info = service.peer_info().expect("server info");
    assert_eq!(
        info.server_info.as_ref().expect("serverInfo").name,
        "shadowcat-demo"
    );
    let result = service
        .call_tool(
            CallToolRequestParams::new("echo")
                .with_arguments(object(json!({"message": "over http"}))),
        )
        .await
        .expect("tools/call echo over HTTP");
    assert_eq!(only_text(&result), "over http");
    assert_eq!(service.list_all_tools().await.unwrap().len(), 7);
    let result = service
        .call_tool(
            CallToolRequestParams::new("slow")
                .with_arguments(object(json!({"steps": 2, "duration": 0.1}))),
        )
        .await
        .expect("tools/call slow over HTTP");
    assert_eq!(only_text(&result), "completed 2 steps");
    client
        .wait_for("progress over HTTP", |r| r.progress.len() >= 2)
        .await;
    let result = service
        .call_tool(
            CallToolRequestParams::new("sample").with_arguments(object(json!({"prompt": "ping"}))),
        )
        .await
        .expect("tools/call sample over HTTP");
    assert_eq!(only_text(&result), "sampled: model says: ping");

    // Raw HTTP: stateful session id + SSE response, loopback Host accepted on
    // any port, foreign Host rejected.
    let response = raw_http(addr, initialize_request(&addr.to_string())).await;
    let head = response
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{response}");
    assert!(head.contains("mcp-session-id:"), "{response}");
    assert!(
        head.contains("content-type: text/event-stream"),
        "{response}"
    );
    assert!(response.contains("\"serverInfo\""), "{response}");
    let response = raw_http(
        addr,
        initialize_request(&format!("localhost:{}", addr.port())),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let response = raw_http(addr, initialize_request("evil.example:80")).await;
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");

    // Graceful shutdown, even with the client's session still open.
    cancel.cancel();
    let result = tokio::time::timeout(WAIT, server)
        .await
        .expect("serve_http returns after cancellation")
        .expect("server task does not panic");
    assert!(result.is_ok(), "{result:?}");
    drop(service);
}

/// Off loopback (`0.0.0.0` in a container, where the gateway reaches it as
/// `http://demo:9000/mcp`) every `Host` is served; the listener is reached over
/// 127.0.0.1 here.
#[tokio::test]
async fn serve_http_on_a_non_loopback_address_serves_any_host() {
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let cancel = CancellationToken::new();
    let server = tokio::spawn(serve_http(listener, cancel.clone()));
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let response = raw_http(addr, initialize_request("demo:9000")).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"serverInfo\""), "{response}");
    cancel.cancel();
    let result = tokio::time::timeout(WAIT, server).await.unwrap().unwrap();
    assert!(result.is_ok(), "{result:?}");
}

/// The CLI propagates `DemoError` through `anyhow` and may spawn the serve
/// futures on a multi-threaded runtime.
#[test]
fn errors_and_futures_are_send_and_sync() {
    fn error<E: std::error::Error + Send + Sync + 'static>() {}
    fn send<F: std::future::Future + Send>(_: F) {}
    error::<DemoError>();
    send(shadowcat_demo::serve_stdio(CancellationToken::new()));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    send(serve_http(listener, CancellationToken::new()));
}
