//! The demo server's MCP handler: tools, resources, prompts and logging.

// Sampling and logging are marked deprecated in rmcp (SEP-2577 removes them
// from the 2026-07-28 revision), but they are exactly what this demo server
// exists to exercise on the session-based revisions it speaks.
#![allow(deprecated)]

use std::{
    borrow::Cow,
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use rmcp::{
    ErrorData as McpError, Peer, RoleServer, ServerHandler,
    handler::server::{
        router::{prompt::PromptRouter, tool::ToolRouter},
        wrapper::Parameters,
    },
    model::{
        CallToolResult, ContentBlock, CreateMessageRequestParams, ElicitRequestParams,
        ElicitationAction, ElicitationSchema, Implementation, ListResourceTemplatesResult,
        ListResourcesResult, LoggingLevel, LoggingMessageNotificationParam, PaginatedRequestParams,
        ProgressNotificationParam, PromptMessage, ProtocolVersion, ReadResourceRequestParams,
        ReadResourceResponse, ReadResourceResult, Resource, ResourceContents, ResourceTemplate,
        ResourceUpdatedNotificationParam, Role, SamplingMessage, ServerCapabilities, ServerConfig,
        SetLevelRequestParams, SubscribeRequestParams, UnsubscribeRequestParams,
    },
    prompt, prompt_handler, prompt_router,
    service::{ElicitationMode, RequestContext},
    tool, tool_handler, tool_router,
};
use schemars::JsonSchema;
use serde::Deserialize;

/// The server name announced in `initialize`.
pub const SERVER_NAME: &str = "shadowcat-demo";

const README_URI: &str = "demo://readme";
const COUNTER_URI: &str = "demo://counter";
const ITEM_URI_PREFIX: &str = "demo://items/";
const ITEM_URI_TEMPLATE: &str = "demo://items/{id}";
const TEXT_PLAIN: &str = "text/plain";

const README_TEXT: &str = "Shadowcat demo MCP server.\n\
\n\
Tools: echo, add, slow (progress notifications, cancellable), sample \
(sampling/createMessage), elicit (elicitation/create), log (notifications/message), \
increment (bumps demo://counter and notifies its subscribers).\n\
Resources: demo://readme, demo://counter, demo://items/{id}.\n\
Prompts: greeting, code_review.\n";

/// Upper bounds that keep a single call from tying the server up.
const MAX_SLOW_STEPS: u32 = 10_000;
const MAX_SLOW_DURATION_SECS: f64 = 3_600.0;
const MAX_LOG_COUNT: u32 = 10_000;
/// How long `increment` waits for one subscriber's notification to be queued.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(2);

/// Lock a mutex, recovering the data if a previous holder panicked (all the
/// guarded data stays consistent across a panic: single inserts/removes).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// State shared by every session of one server: the counter and the registry
/// of `resources/subscribe` subscriptions (uri → session id → client peer).
#[derive(Debug, Default)]
pub struct SharedState {
    counter: AtomicU64,
    next_session_id: AtomicU64,
    subscribers: Mutex<HashMap<String, HashMap<u64, Peer<RoleServer>>>>,
}

impl SharedState {
    /// A fresh state: counter at 0, no subscriptions.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The current value of the `demo://counter` resource.
    pub fn counter(&self) -> u64 {
        self.counter.load(Ordering::SeqCst)
    }

    fn increment(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn subscribe(&self, uri: &str, session_id: u64, peer: Peer<RoleServer>) {
        lock(&self.subscribers)
            .entry(uri.to_owned())
            .or_default()
            .insert(session_id, peer);
    }

    fn unsubscribe(&self, uri: &str, session_id: u64) {
        let mut subscribers = lock(&self.subscribers);
        if let Some(sessions) = subscribers.get_mut(uri) {
            sessions.remove(&session_id);
            if sessions.is_empty() {
                subscribers.remove(uri);
            }
        }
    }

    /// Send `notifications/resources/updated` for `uri` to every subscribed
    /// session. Sessions whose transport is gone are dropped from the registry.
    async fn notify_updated(&self, uri: &str) {
        let peers: Vec<(u64, Peer<RoleServer>)> = lock(&self.subscribers)
            .get(uri)
            .map(|sessions| {
                sessions
                    .iter()
                    .map(|(id, peer)| (*id, peer.clone()))
                    .collect()
            })
            .unwrap_or_default();
        for (session_id, peer) in peers {
            let notify = peer.notify_resource_updated(ResourceUpdatedNotificationParam::new(uri));
            match tokio::time::timeout(NOTIFY_TIMEOUT, notify).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::debug!(session_id, uri, %error, "dropping unreachable subscriber");
                    self.unsubscribe(uri, session_id);
                }
                Err(_) => {
                    tracing::warn!(session_id, uri, "timed out notifying a subscriber");
                }
            }
        }
    }
}

/// Per-connection state. Dropping it (the session ended) removes the
/// session's subscriptions from the shared registry.
#[derive(Debug)]
struct Session {
    id: u64,
    shared: Arc<SharedState>,
    /// The minimum level set by `logging/setLevel`; `None` sends everything.
    min_log_level: Mutex<Option<LoggingLevel>>,
    subscriptions: Mutex<HashSet<String>>,
}

impl Session {
    fn new(shared: Arc<SharedState>) -> Self {
        let id = shared.next_session_id.fetch_add(1, Ordering::Relaxed);
        Self {
            id,
            shared,
            min_log_level: Mutex::new(None),
            subscriptions: Mutex::new(HashSet::new()),
        }
    }

    fn log_enabled(&self, level: LoggingLevel) -> bool {
        lock(&self.min_log_level).is_none_or(|min| level_rank(level) >= level_rank(min))
    }

    fn subscribe(&self, uri: &str, peer: Peer<RoleServer>) {
        lock(&self.subscriptions).insert(uri.to_owned());
        self.shared.subscribe(uri, self.id, peer);
    }

    fn unsubscribe(&self, uri: &str) {
        lock(&self.subscriptions).remove(uri);
        self.shared.unsubscribe(uri, self.id);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let uris = std::mem::take(&mut *lock(&self.subscriptions));
        for uri in uris {
            self.shared.unsubscribe(&uri, self.id);
        }
    }
}

/// The demo MCP server handler. One instance serves one client connection.
pub struct DemoServer {
    session: Session,
    tool_router: ToolRouter<Self>,
    prompt_router: PromptRouter<Self>,
}

impl std::fmt::Debug for DemoServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoServer")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl DemoServer {
    /// A handler for one connection, sharing `state` with other connections.
    pub fn new(state: Arc<SharedState>) -> Self {
        Self {
            session: Session::new(state),
            tool_router: Self::tool_router(),
            prompt_router: Self::prompt_router(),
        }
    }
}

// ---------------------------------------------------------------------------
// Tool arguments
// ---------------------------------------------------------------------------

#[derive(Debug, Deserialize, JsonSchema)]
struct EchoArgs {
    /// The message to echo back.
    message: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct AddArgs {
    /// The first addend.
    a: f64,
    /// The second addend.
    b: f64,
}

fn default_steps() -> u32 {
    3
}

fn default_duration() -> f64 {
    1.0
}

#[derive(Debug, Deserialize, JsonSchema)]
struct SlowArgs {
    /// Number of steps; a progress notification is sent after each one.
    #[serde(default = "default_steps")]
    #[schemars(range(max = 10_000))]
    steps: u32,
    /// Total duration in seconds, spread evenly over the steps.
    #[serde(default = "default_duration")]
    #[schemars(range(min = 0, max = 3_600))]
    duration: f64,
}

fn default_max_tokens() -> u32 {
    100
}

#[derive(Debug, Deserialize, JsonSchema)]
struct SampleArgs {
    /// The prompt sent to the client's model as a single user message.
    prompt: String,
    /// The maximum number of tokens the client's model may generate.
    #[serde(default = "default_max_tokens")]
    max_tokens: u32,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct ElicitArgs {
    /// The message shown to the user when asking for their name.
    message: String,
}

fn default_level() -> String {
    "info".to_owned()
}

fn default_count() -> u32 {
    1
}

#[derive(Debug, Deserialize, JsonSchema)]
struct LogArgs {
    /// The log message (sent as the notification's `data`).
    message: String,
    /// Log level: debug, info, notice, warning, error, critical, alert or emergency.
    #[serde(default = "default_level")]
    level: String,
    /// How many notifications to send; with more than one, " #i" is appended.
    #[serde(default = "default_count")]
    #[schemars(range(max = 10_000))]
    count: u32,
}

// ---------------------------------------------------------------------------
// Prompt arguments
// ---------------------------------------------------------------------------

#[derive(Debug, Deserialize, JsonSchema)]
struct GreetingArgs {
    /// The name of the person to greet.
    name: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct CodeReviewArgs {
    /// The code to review.
    code: String,
    /// The programming language of the code.
    #[serde(default)]
    language: Option<String>,
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn text_result(text: impl Into<String>) -> CallToolResult {
    CallToolResult::success(vec![ContentBlock::text(text)])
}

fn tool_error(text: impl Into<String>) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(text)])
}

/// Format a number the way a person would write it: `5`, not `5.0`.
fn format_number(value: f64) -> String {
    if value == 0.0 {
        // Also normalises -0.
        return "0".to_owned();
    }
    // `Display` for f64 already omits a zero fraction ("5") and keeps the
    // shortest round-tripping representation otherwise ("2.5").
    value.to_string()
}

fn parse_level(level: &str) -> Option<LoggingLevel> {
    Some(match level.to_ascii_lowercase().as_str() {
        "debug" => LoggingLevel::Debug,
        "info" => LoggingLevel::Info,
        "notice" => LoggingLevel::Notice,
        "warning" | "warn" => LoggingLevel::Warning,
        "error" => LoggingLevel::Error,
        "critical" => LoggingLevel::Critical,
        "alert" => LoggingLevel::Alert,
        "emergency" => LoggingLevel::Emergency,
        _ => return None,
    })
}

/// Syslog severity order (RFC 5424), least severe first.
fn level_rank(level: LoggingLevel) -> u8 {
    match level {
        LoggingLevel::Debug => 0,
        LoggingLevel::Info => 1,
        LoggingLevel::Notice => 2,
        LoggingLevel::Warning => 3,
        LoggingLevel::Error => 4,
        LoggingLevel::Critical => 5,
        LoggingLevel::Alert => 6,
        LoggingLevel::Emergency => 7,
    }
}

fn action_name(action: &ElicitationAction) -> &'static str {
    match action {
        ElicitationAction::Accept => "accept",
        ElicitationAction::Decline => "decline",
        ElicitationAction::Cancel => "cancel",
        _ => "unknown",
    }
}

/// The text of a readable resource, or `None` if `uri` names no resource.
fn resource_text(uri: &str, shared: &SharedState) -> Option<String> {
    match uri {
        README_URI => Some(README_TEXT.to_owned()),
        COUNTER_URI => Some(shared.counter().to_string()),
        _ => {
            let id = uri.strip_prefix(ITEM_URI_PREFIX)?;
            (!id.is_empty() && !id.contains('/')).then(|| format!("item {id}"))
        }
    }
}

fn resource_not_found(uri: &str) -> McpError {
    McpError::invalid_params(
        format!("resource not found: {uri}"),
        Some(serde_json::json!({ "uri": uri })),
    )
}

// ---------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------

#[tool_router]
impl DemoServer {
    #[tool(description = "Echo the message back unchanged.")]
    async fn echo(&self, Parameters(args): Parameters<EchoArgs>) -> CallToolResult {
        text_result(args.message)
    }

    #[tool(description = "Add two numbers and return the sum.")]
    async fn add(&self, Parameters(AddArgs { a, b }): Parameters<AddArgs>) -> CallToolResult {
        text_result(format_number(a + b))
    }

    #[tool(
        description = "Sleep for `duration` seconds in `steps` equal steps, sending a progress \
                       notification after each step when the request carries a progress token. \
                       Stops early when the request is cancelled."
    )]
    async fn slow(
        &self,
        Parameters(SlowArgs { steps, duration }): Parameters<SlowArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        if steps > MAX_SLOW_STEPS {
            return tool_error(format!(
                "steps must be at most {MAX_SLOW_STEPS}, got {steps}"
            ));
        }
        if !(0.0..=MAX_SLOW_DURATION_SECS).contains(&duration) {
            return tool_error(format!(
                "duration must be between 0 and {MAX_SLOW_DURATION_SECS} seconds, got {duration}"
            ));
        }
        let per_step = if steps == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(duration / f64::from(steps))
        };
        let progress_token = ctx.meta.get_progress_token();
        for step in 1..=steps {
            tokio::select! {
                biased;
                () = ctx.ct.cancelled() => {
                    tracing::debug!(step, steps, "slow: cancelled by the client");
                    return tool_error(format!("cancelled after {} of {steps} steps", step - 1));
                }
                () = tokio::time::sleep(per_step) => {}
            }
            if ctx.ct.is_cancelled() {
                return tool_error(format!("cancelled after {step} of {steps} steps"));
            }
            if let Some(token) = &progress_token {
                let progress = ProgressNotificationParam::new(token.clone(), f64::from(step))
                    .with_total(f64::from(steps))
                    .with_message(format!("step {step}/{steps}"));
                if let Err(error) = ctx.peer.notify_progress(progress).await {
                    tracing::debug!(%error, "slow: failed to send a progress notification");
                }
            }
        }
        text_result(format!("completed {steps} steps"))
    }

    #[tool(
        description = "Ask the client's model to respond to `prompt` (sampling/createMessage) \
                       and return its reply."
    )]
    async fn sample(
        &self,
        Parameters(SampleArgs { prompt, max_tokens }): Parameters<SampleArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let supports_sampling = ctx
            .client_capabilities()
            .is_some_and(|caps| caps.sampling.is_some());
        if !supports_sampling {
            return tool_error(
                "the client does not support sampling (it did not declare the `sampling` \
                 capability), so sampling/createMessage cannot be sent",
            );
        }
        let params =
            CreateMessageRequestParams::new(vec![SamplingMessage::user_text(prompt)], max_tokens);
        let result = tokio::select! {
            result = ctx.peer.create_message(params) => result,
            () = ctx.ct.cancelled() => return tool_error("cancelled while waiting for the client's sampling reply"),
        };
        match result {
            Ok(reply) => {
                let text: Vec<&str> = reply
                    .message
                    .content
                    .iter()
                    .filter_map(|block| block.as_text())
                    .map(|text| text.text.as_str())
                    .collect();
                if text.is_empty() {
                    tool_error("the client's sampling reply contained no text content")
                } else {
                    text_result(format!("sampled: {}", text.join("")))
                }
            }
            Err(error) => tool_error(format!("sampling/createMessage failed: {error}")),
        }
    }

    #[tool(
        description = "Ask the user for their name (elicitation/create) and report what they \
                       answered."
    )]
    async fn elicit(
        &self,
        Parameters(ElicitArgs { message }): Parameters<ElicitArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        if !ctx
            .peer
            .supported_elicitation_modes()
            .contains(&ElicitationMode::Form)
        {
            return tool_error(
                "the client does not support form elicitation (it did not declare the \
                 `elicitation` capability), so elicitation/create cannot be sent",
            );
        }
        let requested_schema = match ElicitationSchema::builder().required_string("name").build() {
            Ok(schema) => schema,
            Err(error) => {
                return tool_error(format!("failed to build the elicitation schema: {error}"));
            }
        };
        let params = ElicitRequestParams::FormElicitationParams {
            meta: None,
            message,
            requested_schema,
        };
        let result = tokio::select! {
            result = ctx.peer.create_elicitation(params) => result,
            () = ctx.ct.cancelled() => return tool_error("cancelled while waiting for the client's elicitation reply"),
        };
        match result {
            Ok(reply) => {
                let mut text = format!("elicited: {}", action_name(&reply.action));
                if reply.action == ElicitationAction::Accept
                    && let Some(name) = reply
                        .content
                        .as_ref()
                        .and_then(|content| content.get("name"))
                        .and_then(|name| name.as_str())
                {
                    text.push_str(" name=");
                    text.push_str(name);
                }
                text_result(text)
            }
            Err(error) => tool_error(format!("elicitation/create failed: {error}")),
        }
    }

    #[tool(
        name = "log",
        description = "Send `count` logging notifications (notifications/message, logger \
                       \"demo\") at `level`. Messages below the level set with logging/setLevel \
                       are not sent; the reply says how many were."
    )]
    async fn log_tool(
        &self,
        Parameters(LogArgs {
            message,
            level,
            count,
        }): Parameters<LogArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let Some(level) = parse_level(&level) else {
            return tool_error(format!(
                "unknown log level {level:?}; expected one of debug, info, notice, warning, \
                 error, critical, alert, emergency"
            ));
        };
        if count > MAX_LOG_COUNT {
            return tool_error(format!(
                "count must be at most {MAX_LOG_COUNT}, got {count}"
            ));
        }
        let mut sent = 0u32;
        for i in 1..=count {
            if !self.session.log_enabled(level) {
                continue;
            }
            let data = if count > 1 {
                format!("{message} #{i}")
            } else {
                message.clone()
            };
            let notification =
                LoggingMessageNotificationParam::new(level, serde_json::Value::String(data))
                    .with_logger("demo");
            if let Err(error) = ctx.peer.notify_logging_message(notification).await {
                return tool_error(format!(
                    "failed to send logging notification {i} of {count}: {error}"
                ));
            }
            sent += 1;
        }
        text_result(format!("logged {sent}"))
    }

    #[tool(
        description = "Increment the server's counter (resource demo://counter), notify its \
                       subscribers, and return the new value."
    )]
    async fn increment(&self) -> CallToolResult {
        let value = self.session.shared.increment();
        self.session.shared.notify_updated(COUNTER_URI).await;
        text_result(value.to_string())
    }
}

// ---------------------------------------------------------------------------
// Prompts
// ---------------------------------------------------------------------------

#[prompt_router]
impl DemoServer {
    #[prompt(
        name = "greeting",
        description = "Ask the model to greet someone by name."
    )]
    async fn greeting_prompt(
        &self,
        Parameters(GreetingArgs { name }): Parameters<GreetingArgs>,
    ) -> Vec<PromptMessage> {
        vec![PromptMessage::new_text(
            Role::User,
            format!("Say hello to {name}."),
        )]
    }

    #[prompt(
        name = "code_review",
        description = "Ask the model to review a piece of code."
    )]
    async fn code_review_prompt(
        &self,
        Parameters(CodeReviewArgs { code, language }): Parameters<CodeReviewArgs>,
    ) -> Vec<PromptMessage> {
        let text = match language.as_deref().map(str::trim) {
            Some(language) if !language.is_empty() => format!(
                "Please review the following {language} code and point out bugs, risks and \
                 possible improvements:\n\n```{language}\n{code}\n```"
            ),
            _ => format!(
                "Please review the following code and point out bugs, risks and possible \
                 improvements:\n\n```\n{code}\n```"
            ),
        };
        vec![PromptMessage::new_text(Role::User, text)]
    }
}

// ---------------------------------------------------------------------------
// ServerHandler
// ---------------------------------------------------------------------------

#[tool_handler(router = self.tool_router)]
#[prompt_handler(router = self.prompt_router)]
impl ServerHandler for DemoServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .enable_resources_subscribe()
                .enable_prompts()
                .enable_logging()
                .build(),
        )
        .with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE)
        .with_server_info(Implementation::new(SERVER_NAME, env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "Shadowcat's demo server: tools echo, add, slow, sample, elicit, log and increment; \
             resources demo://readme, demo://counter and demo://items/{id}; prompts greeting and \
             code_review.",
        )
    }

    /// Only the session-based revisions (those with an `initialize`
    /// handshake): sampling, elicitation, logging and `resources/subscribe`
    /// do not exist on the 2026-07-28 revision.
    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        Cow::Borrowed(ProtocolVersion::known_up_to(
            &ProtocolVersion::LATEST_WITH_INITIALIZE,
        ))
    }

    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        tracing::debug!(level = ?request.level, "logging/setLevel");
        *lock(&self.session.min_log_level) = Some(request.level);
        Ok(())
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        Ok(ListResourcesResult::with_all_items(vec![
            Resource::new(README_URI, "readme")
                .with_title("Demo server README")
                .with_description("A short description of the demo server.")
                .with_mime_type(TEXT_PLAIN),
            Resource::new(COUNTER_URI, "counter")
                .with_title("Counter")
                .with_description(
                    "The current counter value; the increment tool bumps it and notifies \
                     subscribers.",
                )
                .with_mime_type(TEXT_PLAIN),
        ]))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        Ok(ListResourceTemplatesResult::with_all_items(vec![
            ResourceTemplate::new(ITEM_URI_TEMPLATE, "item")
                .with_title("Demo item")
                .with_description("A demo item; reading demo://items/42 returns \"item 42\".")
                .with_mime_type(TEXT_PLAIN),
        ]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let uri = request.uri;
        let text =
            resource_text(&uri, &self.session.shared).ok_or_else(|| resource_not_found(&uri))?;
        Ok(ReadResourceResult::new(vec![ResourceContents::text(text, uri)]).into())
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let uri = request.uri;
        if resource_text(&uri, &self.session.shared).is_none() {
            return Err(resource_not_found(&uri));
        }
        tracing::debug!(session = self.session.id, %uri, "resources/subscribe");
        self.session.subscribe(&uri, context.peer);
        Ok(())
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        tracing::debug!(session = self.session.id, uri = %request.uri, "resources/unsubscribe");
        self.session.unsubscribe(&request.uri);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_formatted_without_a_zero_fraction() {
        assert_eq!(format_number(2.0 + 3.0), "5");
        assert_eq!(format_number(1.5 + 1.0), "2.5");
        assert_eq!(format_number(-0.0), "0");
        assert_eq!(format_number(-4.0), "-4");
        assert_eq!(format_number(0.1 + 0.2), "0.30000000000000004");
    }

    #[test]
    fn log_levels_parse_and_order() {
        assert_eq!(parse_level("WARN"), Some(LoggingLevel::Warning));
        assert_eq!(parse_level("emergency"), Some(LoggingLevel::Emergency));
        assert_eq!(parse_level("loud"), None);
        assert!(level_rank(LoggingLevel::Debug) < level_rank(LoggingLevel::Info));
        assert!(level_rank(LoggingLevel::Alert) < level_rank(LoggingLevel::Emergency));
    }

    #[test]
    fn resource_uris_resolve() {
        let shared = SharedState::new();
        assert_eq!(resource_text(COUNTER_URI, &shared).as_deref(), Some("0"));
        shared.increment();
        assert_eq!(resource_text(COUNTER_URI, &shared).as_deref(), Some("1"));
        assert_eq!(
            resource_text("demo://items/42", &shared).as_deref(),
            Some("item 42")
        );
        assert!(resource_text("demo://items/", &shared).is_none());
        assert!(resource_text("demo://items/1/2", &shared).is_none());
        assert!(resource_text("demo://nope", &shared).is_none());
        assert!(
            resource_text(README_URI, &shared)
                .unwrap()
                .contains("demo MCP server")
        );
    }
}
