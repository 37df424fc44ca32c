//! The audit log: one JSON line per client request, in every mode — when it arrived, where it
//! went (replica, route, member, session, principal), what it was (method, id, tool, prompt or
//! resource), how it ended (HTTP status, JSON-RPC error code, a tool result's `isError`, or the
//! stage that refused it and why), how long it took and how many bytes it carried.
//!
//! [`Audit`] is a pipeline hook, placed last: it sees what the other hooks let through, their
//! refusals (through [`Hook::on_answered`], which names the refusing hook), the answers as the
//! client gets them, and requests that failed before reaching the upstream
//! ([`Hook::on_failed`]). Refusals made before any session exists (authentication, per-client
//! rate limits in the gateway) are written through [`Audit::refused`].
//!
//! Arguments are never written by default (`arguments = none`); `hash` writes an HMAC-SHA256 of
//! them (keyed, so that short values cannot be guessed from their hash), `redacted` writes them
//! with the tape redaction rules applied. Requests still waiting for an answer when their
//! session ends are written with the outcome `no_answer`.
//!
//! Lines go to a file (mode 0600, rotated by size: `PATH.1` … `PATH.N`) or to standard output.
//! Writes are buffered and flushed every second and when the log is finished. Off, it costs
//! nothing: the hook is not in the pipeline.

use crate::error::ProxyError;
use crate::pipeline::{Awaiting, Direction, FrameCtx, Hook, Transport, Verdict};
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use serde_json::value::RawValue;
use shadowcat_proto::{Frame, FrameKind, RequestId};
use shadowcat_tape::{RedactConfig, Redactor};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What of a request's arguments (`tools/call`, `prompts/get`) the log keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arguments {
    /// Nothing (the default).
    #[default]
    None,
    /// An HMAC-SHA256 of the arguments' bytes, hex (`arguments_hash`).
    Hash,
    /// The arguments with the tape redaction rules applied (`arguments`).
    Redacted,
}

/// Where the log goes and what it keeps.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// A file, or `None` for standard output.
    pub path: Option<PathBuf>,
    /// What of the arguments is written.
    pub arguments: Arguments,
    /// A file is rotated once it would grow past this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept (`PATH.1` is the newest).
    pub keep: usize,
    /// This replica's id (gateway), written on every line.
    pub replica: Option<String>,
    /// Redaction rules beyond the built-in ones (for `arguments = redacted`).
    pub redact: RedactConfig,
    /// The HMAC key for `arguments = hash`; `None`: a random key for this process (hashes then
    /// compare only within one run).
    pub hash_key: Option<String>,
}

/// Default size at which the file is rotated: 100 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 100 * 1024 * 1024;
/// Default number of rotated files kept.
pub const DEFAULT_KEEP: usize = 5;
/// Requests of one session waiting for their answer that the log follows; more are written at
/// once with the outcome `untracked` (a client cannot grow the log's memory without bound).
const MAX_PENDING_PER_SESSION: usize = 10_000;
/// Requests of all sessions waiting for their answer that the log follows.
const MAX_PENDING: usize = 200_000;
/// Bytes buffered before a write reaches the file.
const BUFFER: usize = 64 * 1024;
/// Bytes reserved for one line before it is written.
const LINE_CAPACITY: usize = 512;

/// `"isError"`, searched for in every answer (built once).
static IS_ERROR: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"isError\""));

/// A request refused before any session existed (see [`Audit::refused`]).
#[derive(Debug, Clone, Copy)]
pub struct Refused<'a> {
    /// The path of the route the request addressed (`/mcp`), if any.
    pub route: Option<&'a str>,
    /// The principal, when it was authenticated before the refusal.
    pub principal: Option<&'a str>,
    /// The client's address.
    pub client_ip: Option<std::net::IpAddr>,
    /// The HTTP method of the refused request.
    pub http_method: &'a str,
    /// The status it was answered with.
    pub status: u16,
    /// Why: `auth`, `rate_limit`, …
    pub reason: &'a str,
    /// When it arrived.
    pub started: Instant,
}

/// The audit log (a pipeline hook; see the module docs).
pub struct Audit {
    out: Mutex<Out>,
    /// Requests waiting for their answer.
    pending: Awaiting<Pending>,
    arguments: Arguments,
    key: Vec<u8>,
    redactor: Redactor,
    replica: Option<Box<str>>,
    /// A write failed (said once in the log, not per line).
    failing: AtomicBool,
}

/// What the log knows of a request until its answer.
struct Pending {
    time: i64,
    started: Instant,
    method: Box<str>,
    target: Option<Box<str>>,
    principal: Option<Box<str>>,
    /// `/mcp` borrowed, a named route's path made once per request.
    route: Option<std::borrow::Cow<'static, str>>,
    member: Option<Box<str>>,
    bytes_in: usize,
    arguments: Option<Box<RawValue>>,
    arguments_hash: Option<String>,
}

/// What the log keeps of an answer (the trace hook reads answers with it too).
#[derive(Clone, Copy)]
pub(crate) struct Answer {
    pub(crate) error_code: Option<i64>,
    pub(crate) is_error: Option<bool>,
    bytes_out: usize,
}

/// One line of the log.
#[derive(Serialize)]
struct Line<'a> {
    time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    replica: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    route: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    member: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    principal: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http_method: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RequestId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource: Option<&'a str>,
    outcome: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http_status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_code: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    is_error: Option<bool>,
    latency_ms: f64,
    bytes_in: usize,
    bytes_out: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    arguments: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    arguments_hash: Option<&'a str>,
}

impl Audit {
    /// Open the log (the file is created with mode 0600 when it does not exist) and start
    /// flushing it every second on `tracker` until `cancel` fires.
    pub fn open(
        cfg: &AuditConfig,
        tracker: &tokio_util::task::TaskTracker,
        cancel: tokio_util::sync::CancellationToken,
    ) -> Result<Arc<Audit>, ProxyError> {
        let startup = |m: String| ProxyError::Startup(m);
        if cfg.max_bytes == 0 {
            return Err(startup("the audit log's max size must be above 0".into()));
        }
        if cfg.keep == 0 {
            return Err(startup(
                "the audit log keeps at least 1 rotated file (keep >= 1)".into(),
            ));
        }
        let out = match &cfg.path {
            None => Out::Stdout(std::io::stdout()),
            Some(path) => {
                let file = open_log(path).map_err(|e| {
                    startup(format!("cannot open the audit log {}: {e}", path.display()))
                })?;
                let written = file.metadata().map(|m| m.len()).unwrap_or(0);
                Out::File(Rotating {
                    file: BufWriter::with_capacity(BUFFER, file),
                    path: path.clone(),
                    written,
                    max: cfg.max_bytes,
                    keep: cfg.keep,
                })
            }
        };
        let redactor =
            Redactor::new(&cfg.redact).map_err(|e| startup(format!("audit log redaction: {e}")))?;
        let key = match &cfg.hash_key {
            Some(k) if !k.is_empty() => k.as_bytes().to_vec(),
            _ => rand::random::<[u8; 32]>().to_vec(),
        };
        let audit = Arc::new(Audit {
            out: Mutex::new(out),
            pending: Awaiting::new(MAX_PENDING_PER_SESSION, MAX_PENDING),
            arguments: cfg.arguments,
            key,
            redactor,
            replica: cfg.replica.as_deref().map(Box::from),
            failing: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&audit);
        tracker.spawn(flush_every(weak, Duration::from_secs(1), cancel));
        Ok(audit)
    }

    /// Write what is buffered.
    pub fn flush(&self) {
        let r = crate::sync::lock(&self.out).flush();
        self.failed(r);
    }

    /// Write the line of a request refused before any session existed.
    pub fn refused(&self, r: Refused<'_>) {
        let line = Line {
            time: now_rfc3339(),
            route: r.route,
            principal: r.principal,
            client_ip: r.client_ip.map(|ip| ip.to_string()),
            http_method: Some(r.http_method),
            outcome: "refused",
            reason: Some(r.reason),
            http_status: Some(r.status),
            latency_ms: millis(r.started.elapsed()),
            ..self.line()
        };
        self.write(&line);
    }

    /// Write a line about something other than a request (a tool pin's drift or approval):
    /// `{"time", "replica", "event": EVENT, …fields}`.
    pub fn event(&self, event: &str, fields: serde_json::Value) {
        let Some(bytes) = self.event_line(event, fields) else {
            return;
        };
        let r = crate::sync::lock(&self.out).write_line(&bytes);
        self.failed(r);
    }

    /// [`Audit::event`] written through to the file at once, or the error saying why it could
    /// not be (for a command that must not report a decision it could not audit).
    pub fn event_now(&self, event: &str, fields: serde_json::Value) -> std::io::Result<()> {
        let bytes = self
            .event_line(event, fields)
            .ok_or_else(|| std::io::Error::other("the event cannot be written as JSON"))?;
        let mut out = crate::sync::lock(&self.out);
        out.write_line(&bytes)?;
        out.flush()
    }

    /// The line of an event, newline included.
    fn event_line(&self, event: &str, fields: serde_json::Value) -> Option<Vec<u8>> {
        let mut line = serde_json::json!({
            "time": now_rfc3339(),
            "event": event,
        });
        if let Some(r) = &self.replica {
            line["replica"] = serde_json::json!(r);
        }
        if let (Some(o), serde_json::Value::Object(f)) = (line.as_object_mut(), fields) {
            for (k, v) in f {
                o.entry(k).or_insert(v);
            }
        }
        let mut bytes = serde_json::to_vec(&line).ok()?;
        bytes.push(b'\n');
        Some(bytes)
    }

    /// The fields every line has, the rest empty.
    fn line(&self) -> Line<'_> {
        Line {
            time: String::new(),
            replica: self.replica.as_deref(),
            route: None,
            member: None,
            session: None,
            principal: None,
            client_ip: None,
            http_method: None,
            method: None,
            id: None,
            tool: None,
            prompt: None,
            resource: None,
            outcome: "",
            reason: None,
            http_status: None,
            error_code: None,
            is_error: None,
            latency_ms: 0.0,
            bytes_in: 0,
            bytes_out: 0,
            arguments: None,
            arguments_hash: None,
        }
    }

    fn write(&self, line: &Line<'_>) {
        // Room for a typical line at once (no regrowing while it is written).
        let mut bytes = Vec::with_capacity(LINE_CAPACITY);
        if serde_json::to_writer(&mut bytes, line).is_err() {
            return;
        }
        bytes.push(b'\n');
        let r = crate::sync::lock(&self.out).write_line(&bytes);
        self.failed(r);
    }

    fn failed(&self, r: std::io::Result<()>) {
        match r {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("the audit log is written again");
                }
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::error!(error = %e, "cannot write the audit log");
                }
            }
        }
    }

    /// What the log keeps of a client request.
    fn pending(&self, ctx: &FrameCtx<'_>, frame: &Frame) -> Pending {
        let (arguments, arguments_hash) = match self.arguments {
            Arguments::None => (None, None),
            _ if !matches!(frame.method(), Some("tools/call" | "prompts/get")) => (None, None),
            Arguments::Hash => (None, arguments_of(frame.raw()).map(|a| self.hash(a))),
            Arguments::Redacted => {
                let redacted = self.redactor.message(frame.raw());
                (arguments_of(&redacted).map(RawValue::to_owned), None)
            }
        };
        Pending {
            time: now_ms(),
            started: Instant::now(),
            method: Box::from(frame.method().unwrap_or("")),
            target: frame.target().map(Box::from),
            principal: ctx.principal.map(Box::from),
            route: ctx.route.map(crate::front::http::route_path),
            member: ctx.member.map(Box::from),
            bytes_in: frame.raw().len(),
            arguments,
            arguments_hash,
        }
    }

    fn hash(&self, arguments: &RawValue) -> String {
        let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(&self.key) else {
            return String::new();
        };
        mac.update(arguments.get().as_bytes());
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Follow a request that went on towards the upstream.
    fn asked(&self, ctx: &FrameCtx<'_>, frame: &Frame) {
        let Some(id) = frame.id() else { return };
        let p = self.pending(ctx, frame);
        if let Err(p) = self.pending.insert(ctx, id, p) {
            self.finish(ctx.session, id, &p, None, "untracked", None, None);
        }
    }

    /// Write the line of a request.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        session: &str,
        id: &RequestId,
        p: &Pending,
        answer: Option<Answer>,
        outcome: &str,
        reason: Option<&str>,
        status: Option<u16>,
    ) {
        let (tool, prompt, resource) = match &*p.method {
            "tools/call" => (p.target.as_deref(), None, None),
            "prompts/get" => (None, p.target.as_deref(), None),
            _ => (None, None, p.target.as_deref()),
        };
        let line = Line {
            time: format_ms(p.time),
            route: p.route.as_deref(),
            member: p.member.as_deref(),
            session: (session != "-").then_some(session),
            principal: p.principal.as_deref(),
            method: Some(&p.method),
            id: Some(id),
            tool,
            prompt,
            resource,
            outcome,
            reason,
            http_status: status,
            error_code: answer.and_then(|a| a.error_code),
            is_error: answer.and_then(|a| a.is_error),
            latency_ms: millis(p.started.elapsed()),
            bytes_in: p.bytes_in,
            bytes_out: answer.map(|a| a.bytes_out).unwrap_or(0),
            arguments: p.arguments.as_deref(),
            arguments_hash: p.arguments_hash.as_deref(),
            ..self.line()
        };
        self.write(&line);
    }
}

impl Hook for Audit {
    fn name(&self) -> &'static str {
        "audit"
    }

    fn on_frame(&self, ctx: &FrameCtx<'_>, frame: &Frame) -> Verdict {
        match (ctx.direction, frame.kind()) {
            (Direction::ClientToServer, FrameKind::Request) => self.asked(ctx, frame),
            (Direction::ServerToClient, FrameKind::Response | FrameKind::Error) => {
                let Some(id) = frame.id() else {
                    return Verdict::Forward;
                };
                let Some(p) = self.pending.take(ctx, id) else {
                    return Verdict::Forward;
                };
                // The hook is last: this is the answer the client gets. Over HTTP a JSON-RPC
                // answer always travels in a 200 (the POST's response or an SSE stream); a
                // stdio front has no status.
                let status = match ctx.transport {
                    Transport::Http(m) => m.status,
                    _ if ctx.route.is_some() => Some(200),
                    _ => None,
                };
                let answer = answer_of(frame);
                let outcome = outcome_of(&answer);
                self.finish(ctx.session, id, &p, Some(answer), outcome, None, status);
            }
            _ => {}
        }
        Verdict::Forward
    }

    fn on_answered(&self, ctx: &FrameCtx<'_>, frame: &Frame, answer: &Frame, by: &'static str) {
        if ctx.direction != Direction::ClientToServer || frame.kind() != FrameKind::Request {
            return;
        }
        let Some(id) = frame.id() else { return };
        let p = self.pending(ctx, frame);
        let a = answer_of(answer);
        let (outcome, reason) = match a.error_code {
            Some(_) => ("refused", Some(reason_of(by))),
            // A rule that answers for the server (a mock) did not refuse anything.
            None => ("answered_by_proxy", Some(reason_of(by))),
        };
        let status = matches!(ctx.transport, Transport::Http(_)).then_some(200);
        self.finish(ctx.session, id, &p, Some(a), outcome, reason, status);
    }

    fn on_failed(&self, ctx: &FrameCtx<'_>, id: &RequestId, error: &ProxyError) {
        if let Some(p) = self.pending.take(ctx, id) {
            let a = Answer {
                error_code: Some(error.jsonrpc_code()),
                is_error: None,
                bytes_out: 0,
            };
            let status = Some(error.http_status().as_u16());
            self.finish(ctx.session, id, &p, Some(a), "failed", None, status);
        }
    }

    fn on_session_end(&self, session: &str) {
        for (id, p) in self.pending.end(session) {
            self.finish(session, &id, &p, None, "no_answer", None, None);
        }
    }
}

/// `ok`, `error` (a JSON-RPC error) or `tool_error` (a tool result with `isError: true`).
fn outcome_of(a: &Answer) -> &'static str {
    if a.error_code.is_some() {
        "error"
    } else if a.is_error == Some(true) {
        "tool_error"
    } else {
        "ok"
    }
}

/// The refusal reason a refusing hook stands for.
fn reason_of(by: &str) -> &str {
    match by {
        "intercept" => "rule",
        "rate-limit" => "rate_limit",
        other => other,
    }
}

/// The error code, and a result's `isError`, of an answer (reads only those fields; a result
/// that does not mention `isError` is not parsed at all).
pub(crate) fn answer_of(frame: &Frame) -> Answer {
    if frame.kind() == FrameKind::Response {
        let raw = frame.raw();
        let lone_false = match IS_ERROR.find(raw) {
            None => Some(None),
            // Most tool results say `"isError": false`, once: no need to parse them. (Were
            // that one key nested deeper, the line would say `false` where the result has no
            // `isError`: the outcome is `ok` either way.) `true`, or more than one key, is
            // parsed below.
            Some(at) => {
                let after = &raw[at + IS_ERROR.needle().len()..];
                let value = after
                    .iter()
                    .position(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b':'))
                    .map(|i| &after[i..]);
                (value.is_some_and(|v| v.starts_with(b"false")) && IS_ERROR.find(after).is_none())
                    .then_some(Some(false))
            }
        };
        if let Some(is_error) = lone_false {
            return Answer {
                error_code: None,
                is_error,
                bytes_out: raw.len(),
            };
        }
    }
    #[derive(serde::Deserialize)]
    struct Head {
        #[serde(default)]
        result: Option<ResultHead>,
        #[serde(default)]
        error: Option<ErrorHead>,
    }
    #[derive(serde::Deserialize)]
    struct ResultHead {
        #[serde(default, rename = "isError")]
        is_error: Option<bool>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorHead {
        #[serde(default)]
        code: Option<i64>,
    }
    let head = serde_json::from_slice::<Head>(frame.raw()).ok();
    let error_code = match frame.kind() {
        FrameKind::Error => Some(
            head.as_ref()
                .and_then(|h| h.error.as_ref())
                .and_then(|e| e.code)
                .unwrap_or(shadowcat_proto::error::INTERNAL_ERROR),
        ),
        _ => None,
    };
    Answer {
        error_code,
        is_error: head.and_then(|h| h.result).and_then(|r| r.is_error),
        bytes_out: frame.raw().len(),
    }
}

/// `params.arguments` of a message, borrowed.
fn arguments_of(raw: &[u8]) -> Option<&RawValue> {
    #[derive(serde::Deserialize)]
    struct Msg<'a> {
        #[serde(borrow)]
        params: Option<Params<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct Params<'a> {
        #[serde(borrow)]
        arguments: Option<&'a RawValue>,
    }
    serde_json::from_slice::<Msg<'_>>(raw)
        .ok()?
        .params?
        .arguments
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn now_rfc3339() -> String {
    format_ms(now_ms())
}

fn format_ms(ms: i64) -> String {
    shadowcat_tape::time::format_ms(ms)
}

async fn flush_every(
    audit: Weak<Audit>,
    every: Duration,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = cancel.cancelled() => break,
        }
        match audit.upgrade() {
            Some(a) => a.flush(),
            None => return,
        }
    }
    if let Some(a) = audit.upgrade() {
        a.flush();
    }
}

/// Where lines go.
enum Out {
    /// Written (and flushed) line by line: a reader of the pipe sees each request at once.
    Stdout(std::io::Stdout),
    File(Rotating),
}

impl Out {
    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        match self {
            Out::Stdout(s) => {
                let mut s = s.lock();
                s.write_all(line)?;
                s.flush()
            }
            Out::File(f) => f.write_line(line),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Out::Stdout(s) => s.flush(),
            Out::File(f) => f.file.flush(),
        }
    }
}

/// A file rotated by size, whole lines only: `PATH` → `PATH.1` → … → `PATH.keep`, the oldest
/// dropped. Written by hand: the rotation crates either split lines across files or, when a
/// file cannot be reopened, drop writes silently or panic; here every failure is an error the
/// log reports.
struct Rotating {
    file: BufWriter<File>,
    path: PathBuf,
    written: u64,
    max: u64,
    keep: usize,
}

impl Rotating {
    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.written > 0 && self.written + line.len() as u64 > self.max {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.written += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        let numbered = |n: usize| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        for n in (1..self.keep).rev() {
            let from = numbered(n);
            if from.exists() {
                std::fs::rename(&from, numbered(n + 1))?;
            }
        }
        std::fs::rename(&self.path, numbered(1))?;
        self.file = BufWriter::with_capacity(BUFFER, open_log(&self.path)?);
        self.written = 0;
        Ok(())
    }
}

impl Drop for Rotating {
    fn drop(&mut self) {
        let _ = self.file.flush();
    }
}

/// Open (or create, readable by its owner only) a log file for appending.
fn open_log(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests;
