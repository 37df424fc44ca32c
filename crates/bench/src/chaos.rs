//! Chaos runs (driven by `bench/chaos.sh`): hostile requests, and calls under injected faults.
//!
//! - `chaos-hostile`: N malformed or hostile requests on raw TCP connections (fuzzed JSON,
//!   oversize bodies, bad headers, bad and foreign session ids, heads trickled in pieces);
//!   every one must be answered with a 4xx status. Each request is written by hand (so it can
//!   be as broken as wanted) with `Connection: close`, and its answer read to the end.
//! - `chaos-load`: `tools/call` in a loop on MCP sessions while faults are injected (`--fault
//!   SECS=CMD`, run with `sh -c`): every call must be answered (a result, a JSON-RPC error or
//!   an HTTP error) within `--call-timeout`; a call left without an answer is a *hang*, a wrong
//!   result is *wrong*. With several `--url`s (replicas behind one store), a connection error
//!   moves the session to the next URL, as a load balancer would; a session the next replica
//!   does not know is *lost*. Optionally samples the RSS of a process (soak).

use crate::http::{Conn, HttpSession, HttpTarget};
use crate::mcp::{self, EchoCall};
use crate::stats;
use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use clap::Args;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A small deterministic PRNG (xorshift64*): reproducible fuzzing without a dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

// ------------------------------------------------------------------------------ hostile

#[derive(Args, Debug)]
pub struct HostileArgs {
    /// Streamable HTTP endpoint, e.g. http://127.0.0.1:8080/mcp.
    #[arg(long)]
    pub url: String,
    /// Requests to send.
    #[arg(long, default_value_t = 10_000)]
    pub requests: usize,
    /// Connections at once.
    #[arg(long, short = 'c', default_value_t = 8)]
    pub concurrency: usize,
    /// The proxy's `--max-message` (oversize bodies are a little larger).
    #[arg(long, default_value_t = 10 * 1024 * 1024)]
    pub max_message: usize,
    /// Seconds one request may take before it counts as unanswered.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// Pause between the pieces of a trickled head, in milliseconds.
    #[arg(long, default_value_t = 20)]
    pub trickle_ms: u64,
    /// Seed of the fuzzer.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// The kinds of hostile request, sent in turn.
const CATEGORIES: &[&str] = &[
    "fuzz-truncated-json",
    "fuzz-random-bytes",
    "fuzz-not-json-rpc",
    "fuzz-in-session",
    "oversize-body",
    "bad-accept",
    "bad-content-type",
    "bad-protocol-version",
    "repeated-session-header",
    "unknown-session-id",
    "malformed-session-id",
    "foreign-session-id",
    "bad-origin",
    "bad-method",
    "bad-path",
    "garbage-request-line",
    "too-many-headers",
    "slow-head",
];

/// Valid JSON that is no valid JSON-RPC request for a session-less POST.
const NOT_JSON_RPC: &[&str] = &[
    "[]",
    "[1,2]",
    "123",
    "\"initialize\"",
    "null",
    "{}",
    r#"{"jsonrpc":"1.0","id":1,"method":"initialize"}"#,
    r#"{"jsonrpc":"2.0","id":{},"method":"initialize"}"#,
    r#"{"jsonrpc":"2.0","id":1.5,"method":"initialize"}"#,
    r#"{"jsonrpc":"2.0","id":null,"method":"initialize"}"#,
    r#"{"jsonrpc":"2.0","id":1,"method":7}"#,
    r#"{"jsonrpc":"2.0","id":1,"result":{},"error":{"code":1,"message":"x"}}"#,
    r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":7}}"#,
    r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","Name":"b"}}"#,
    r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":[]}"#,
];

/// What the fuzzer knows of the target: live and ended sessions to aim at.
struct Fixture {
    host: String,
    path: String,
    version: String,
    live: Vec<String>,
    ended: Vec<String>,
}

/// One hostile request: the bytes of its head and body, written in `pieces` (more than one:
/// trickled), and the category it belongs to.
struct Hostile {
    category: &'static str,
    head: Vec<u8>,
    body: Vec<u8>,
    pieces: usize,
}

fn head(method: &str, path: &str, host: &str, headers: &[(&str, String)], len: usize) -> Vec<u8> {
    let mut h = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str(&format!("Content-Length: {len}\r\n\r\n"));
    h.into_bytes()
}

fn build(i: usize, rng: &mut Rng, fx: &Fixture, max_message: usize) -> Hostile {
    let category = CATEGORIES[i % CATEGORIES.len()];
    let init = mcp::initialize_as(&fx.version).to_vec();
    let json_headers = |extra: &[(&'static str, String)]| -> Vec<(&'static str, String)> {
        let mut h = vec![
            ("Content-Type", "application/json".to_string()),
            ("Accept", "application/json, text/event-stream".to_string()),
        ];
        h.extend(extra.iter().cloned());
        h
    };
    let live = || fx.live[rng_pick(i, fx.live.len())].clone();
    let in_session = |sid: String| {
        json_headers(&[
            ("Mcp-Session-Id", sid),
            ("MCP-Protocol-Version", fx.version.clone()),
        ])
    };
    let list = br#"{"jsonrpc":"2.0","id":5,"method":"tools/list"}"#.to_vec();
    let (method, path, headers, body): (&str, String, Vec<(&str, String)>, Vec<u8>) = match category
    {
        "fuzz-truncated-json" => {
            // A strict prefix of a JSON object is never valid JSON.
            let cut = 1 + rng.below(init.len() - 1);
            (
                "POST",
                fx.path.clone(),
                json_headers(&[]),
                init[..cut].to_vec(),
            )
        }
        "fuzz-random-bytes" => {
            let mut b = vec![b'\xff'];
            let n = rng.below(512);
            b.extend(rng.bytes(n));
            ("POST", fx.path.clone(), json_headers(&[]), b)
        }
        "fuzz-not-json-rpc" => {
            let b = NOT_JSON_RPC[rng.below(NOT_JSON_RPC.len())]
                .as_bytes()
                .to_vec();
            ("POST", fx.path.clone(), json_headers(&[]), b)
        }
        "fuzz-in-session" => {
            let mut b = list.clone();
            let cut = 1 + rng.below(b.len() - 1);
            b.truncate(cut);
            let n = rng.below(8);
            b.extend(rng.bytes(n).iter().map(|c| c & 0x7f));
            b.push(b'\xfe');
            ("POST", fx.path.clone(), in_session(live()), b)
        }
        "oversize-body" => {
            let mut b = init.clone();
            b.resize(max_message + 1 + rng.below(65_536), b' ');
            ("POST", fx.path.clone(), json_headers(&[]), b)
        }
        "bad-accept" => {
            let h = vec![
                ("Content-Type", "application/json".to_string()),
                ("Accept", "text/html".to_string()),
            ];
            ("POST", fx.path.clone(), h, init.clone())
        }
        "bad-content-type" => {
            let h = vec![
                ("Content-Type", "text/plain".to_string()),
                ("Accept", "application/json, text/event-stream".to_string()),
            ];
            ("POST", fx.path.clone(), h, init.clone())
        }
        "bad-protocol-version" => {
            let h = json_headers(&[
                ("Mcp-Session-Id", live()),
                ("MCP-Protocol-Version", "1999-01-01".to_string()),
            ]);
            ("POST", fx.path.clone(), h, list.clone())
        }
        "repeated-session-header" => {
            let mut h = in_session(live());
            h.push(("Mcp-Session-Id", format!("{:032x}", rng.next())));
            ("POST", fx.path.clone(), h, list.clone())
        }
        "unknown-session-id" => {
            let sid = format!("{:016x}{:016x}", rng.next(), rng.next());
            ("POST", fx.path.clone(), in_session(sid), list.clone())
        }
        "malformed-session-id" => {
            const BAD: &[&str] = &["../../etc/passwd", "*", "%00", "a b", "é", "{}", ""];
            let sid = BAD[rng.below(BAD.len())].to_string();
            ("POST", fx.path.clone(), in_session(sid), list.clone())
        }
        "foreign-session-id" => {
            // A session this proxy issued and ended (DELETE) before the run.
            let sid = fx.ended[rng_pick(i, fx.ended.len())].clone();
            ("POST", fx.path.clone(), in_session(sid), list.clone())
        }
        "bad-origin" => {
            let h = json_headers(&[("Origin", "http://evil.example".to_string())]);
            ("POST", fx.path.clone(), h, init.clone())
        }
        "bad-method" => {
            const METHODS: &[&str] = &["PUT", "PATCH", "TRACE", "FOO"];
            let m = METHODS[rng.below(METHODS.len())];
            (m, fx.path.clone(), json_headers(&[]), init.clone())
        }
        "bad-path" => {
            const PATHS: &[&str] = &[
                "/nope",
                "/mcp/x",
                "/servers/../mcp",
                "/%ff",
                "/servers//mcp",
            ];
            let p = PATHS[rng.below(PATHS.len())].to_string();
            ("POST", p, json_headers(&[]), init.clone())
        }
        "garbage-request-line" => {
            let n = 1 + rng.below(64);
            let mut h = rng.bytes(n);
            h.retain(|c| *c != b'\n');
            h.extend_from_slice(b"\r\n\r\n");
            return Hostile {
                category,
                head: h,
                body: Vec::new(),
                pieces: 1,
            };
        }
        "too-many-headers" => {
            let mut h = json_headers(&[]);
            for _ in 0..200 {
                h.push(("X-Filler", "x".repeat(16)));
            }
            ("POST", fx.path.clone(), h, init.clone())
        }
        "slow-head" => {
            // A request with a bad Accept, its head trickled in pieces.
            let h = vec![
                ("Content-Type", "application/json".to_string()),
                ("Accept", "text/plain".to_string()),
            ];
            let b = init.clone();
            return Hostile {
                category,
                head: head("POST", &fx.path, &fx.host, &h, b.len()),
                body: b,
                pieces: 8,
            };
        }
        other => unreachable!("category {other}"),
    };
    Hostile {
        category,
        head: head(method, &path, &fx.host, &headers, body.len()),
        body,
        pieces: 1,
    }
}

fn rng_pick(i: usize, n: usize) -> usize {
    i / CATEGORIES.len() % n.max(1)
}

/// The answer to one hostile request.
enum Answer {
    Status(u16),
    /// The connection ended without a status line.
    Closed,
    /// Nothing within the timeout.
    Hang,
}

async fn send_hostile(
    addr: std::net::SocketAddr,
    h: Hostile,
    trickle: Duration,
    timeout: Duration,
) -> Answer {
    let run = async {
        let stream = match TcpStream::connect(addr).await {
            Ok(s) => s,
            Err(_) => return Answer::Closed,
        };
        let _ = stream.set_nodelay(true);
        let (mut rd, mut wr) = stream.into_split();
        // Write in the background: the proxy may answer (413, 400) before reading it all.
        let writer = tokio::spawn(async move {
            let size = h.head.len().div_ceil(h.pieces);
            for (n, piece) in h.head.chunks(size.max(1)).enumerate() {
                if n > 0 {
                    tokio::time::sleep(trickle).await;
                }
                wr.write_all(piece).await?;
            }
            wr.write_all(&h.body).await?;
            wr.flush().await?;
            Ok::<_, std::io::Error>(wr)
        });
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        writer.abort();
        match parse_status(&buf) {
            Some(s) => Answer::Status(s),
            None => Answer::Closed,
        }
    };
    tokio::time::timeout(timeout, run)
        .await
        .unwrap_or(Answer::Hang)
}

fn parse_status(buf: &[u8]) -> Option<u16> {
    let line = buf.split(|&b| b == b'\n').next()?;
    let mut parts = line.split(|&b| b == b' ');
    let version = parts.next()?;
    if !version.starts_with(b"HTTP/1.") {
        return None;
    }
    std::str::from_utf8(parts.next()?).ok()?.parse().ok()
}

/// Sessions to aim at: `live` ones open during the run, `ended` ones created and deleted.
async fn fixture(target: &Arc<HttpTarget>) -> anyhow::Result<Fixture> {
    let mut conn = Conn::new(target.clone());
    let mut live = Vec::new();
    let mut ended = Vec::new();
    let mut version = mcp::PROTOCOL_VERSION.to_string();
    for i in 0..8 {
        let s = conn.handshake().await.context("opening a session")?;
        let id =
            s.id.as_ref()
                .ok_or_else(|| anyhow!("the target issued no Mcp-Session-Id"))?
                .to_str()?
                .to_string();
        version = s.version.to_str()?.to_string();
        if i % 2 == 0 {
            live.push(id);
        } else {
            let status = conn.delete(&s).await?;
            if !status.is_success() {
                bail!("DELETE of a session: HTTP {status}");
            }
            ended.push(id);
        }
    }
    Ok(Fixture {
        host: target.host.to_str()?.to_string(),
        path: target.path.clone(),
        version,
        live,
        ended,
    })
}

/// An echo call on a fresh session: the target still serves.
async fn still_serves(target: &Arc<HttpTarget>) -> anyhow::Result<()> {
    let mut conn = Conn::new(target.clone());
    let s = conn.handshake().await?;
    let call = EchoCall::new("echo", 16, "");
    let id = mcp::next_id();
    let (body, expect) = call.request(id);
    let reply = conn.post(Some(&s), body).await?;
    let payloads = reply.payloads();
    mcp::check_reply(payloads.iter().map(Vec::as_slice), id, &expect)?;
    let _ = conn.delete(&s).await;
    Ok(())
}

#[derive(Default)]
struct CategoryTally {
    sent: u64,
    client_error: u64,
    statuses: BTreeMap<u16, u64>,
    no_answer: u64,
    hang: u64,
}

pub async fn hostile(a: HostileArgs) -> anyhow::Result<()> {
    let target = HttpTarget::parse(&a.url).await?;
    let fx = Arc::new(fixture(&target).await?);
    let tally: Arc<Mutex<BTreeMap<&'static str, CategoryTally>>> = Arc::default();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..a.concurrency.max(1))
        .map(|w| {
            let (fx, tally, next, target) =
                (fx.clone(), tally.clone(), next.clone(), target.clone());
            let (n, max, seed) = (a.requests, a.max_message, a.seed);
            let trickle = Duration::from_millis(a.trickle_ms);
            let timeout = Duration::from_secs_f64(a.timeout);
            tokio::spawn(async move {
                let mut rng = Rng::new(seed.wrapping_mul(1_000_003).wrapping_add(w as u64 + 1));
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let h = build(i, &mut rng, &fx, max);
                    let category = h.category;
                    let answer = send_hostile(target.addr, h, trickle, timeout).await;
                    let mut t = shadowcat_proxy::sync::lock(&tally);
                    let c = t.entry(category).or_default();
                    c.sent += 1;
                    match answer {
                        Answer::Status(s) => {
                            *c.statuses.entry(s).or_default() += 1;
                            if (400..500).contains(&s) {
                                c.client_error += 1;
                            }
                        }
                        Answer::Closed => c.no_answer += 1,
                        Answer::Hang => c.hang += 1,
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await?;
    }
    let window = start.elapsed().as_secs_f64();
    let alive = still_serves(&target).await;
    let t = shadowcat_proxy::sync::lock(&tally);
    let (mut sent, mut right, mut no_answer, mut hang) = (0, 0, 0, 0);
    let mut by_category = serde_json::Map::new();
    for (name, c) in t.iter() {
        sent += c.sent;
        right += c.client_error;
        no_answer += c.no_answer;
        hang += c.hang;
        let statuses: serde_json::Map<String, Value> = c
            .statuses
            .iter()
            .map(|(s, n)| (s.to_string(), json!(n)))
            .collect();
        by_category.insert(
            (*name).to_string(),
            json!({"sent": c.sent, "answered_4xx": c.client_error, "statuses": statuses,
                   "no_answer": c.no_answer, "hang": c.hang}),
        );
        let flag = if c.client_error == c.sent {
            ""
        } else {
            "  <-- not all 4xx"
        };
        println!(
            "  {name:<26} {:>6} sent, {:>6} 4xx, statuses {:?}, {} no answer, {} hang{flag}",
            c.sent, c.client_error, c.statuses, c.no_answer, c.hang
        );
    }
    println!(
        "chaos-hostile: {sent} requests in {window:.1}s: {right} answered 4xx, {} other status, {no_answer} without answer, {hang} hung; target still serves: {}",
        sent - right - no_answer - hang,
        match &alive {
            Ok(()) => "yes".to_string(),
            Err(e) => format!("NO ({e:#})"),
        }
    );
    let report = json!({
        "mode": "chaos-hostile",
        "target": a.url,
        "requests": sent,
        "answered_4xx": right,
        "other_status": sent - right - no_answer - hang,
        "no_answer": no_answer,
        "hang": hang,
        "still_serves": alive.is_ok(),
        "still_serves_error": alive.as_ref().err().map(|e| format!("{e:#}")),
        "window_s": window,
        "max_message": a.max_message,
        "seed": a.seed,
        "by_category": by_category,
    });
    stats::write_json(a.json.as_deref(), &report)
}

// ------------------------------------------------------------------------------ load

#[derive(Args, Debug)]
pub struct LoadArgs {
    /// Streamable HTTP endpoint; repeat for replicas (a connection error moves a session to
    /// the next one).
    #[arg(long = "url", required = true)]
    pub urls: Vec<String>,
    /// Sessions calling at once (one connection each).
    #[arg(long, short = 'c', default_value_t = 8)]
    pub concurrency: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds a call may take before it counts as a hang.
    #[arg(long, default_value_t = 15.0)]
    pub call_timeout: f64,
    /// What to call: `echo` (checked answer), `slow` (a call taking --slow-secs, progress
    /// notifications on an SSE stream) or `log` (--log-count notifications, then the answer).
    #[arg(long, default_value = "echo")]
    pub tool: String,
    /// Duration of one `slow` call, seconds.
    #[arg(long, default_value_t = 2.0)]
    pub slow_secs: f64,
    /// Notifications of one `log` call.
    #[arg(long, default_value_t = 200)]
    pub log_count: u32,
    /// Calls per session before it is deleted and a new one opened (0: never).
    #[arg(long, default_value_t = 0)]
    pub churn: u64,
    /// `SECS=CMD`: run CMD with `sh -c` SECS seconds after the first answered call. Repeatable.
    #[arg(long = "fault")]
    pub faults: Vec<String>,
    /// Sample the RSS of this process every --rss-every seconds.
    #[arg(long)]
    pub rss_pid: Option<u32>,
    #[arg(long, default_value_t = 5.0)]
    pub rss_every: f64,
    /// Seconds before the first RSS sample that counts as the start (warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub rss_warmup: f64,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// How one call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Ok,
    /// A JSON-RPC error answer (the upstream died, the store is down, …).
    RpcError,
    /// An HTTP error status.
    Http(u16),
    /// Connecting or reading failed (the replica or proxy is gone).
    Transport,
    /// No answer within the call timeout.
    Hang,
    /// An answer that is not what was asked.
    Wrong,
}

impl Outcome {
    fn name(self) -> String {
        match self {
            Outcome::Ok => "ok".into(),
            Outcome::RpcError => "jsonrpc_error".into(),
            Outcome::Http(s) => format!("http_{s}"),
            Outcome::Transport => "transport_error".into(),
            Outcome::Hang => "hang".into(),
            Outcome::Wrong => "wrong".into(),
        }
    }
}

struct Shared {
    start: Instant,
    /// Set at the first answered call: faults are timed from here.
    first_ok: Mutex<Option<Instant>>,
    first_ok_notify: tokio::sync::Notify,
    /// (seconds since start at the answer, outcome, seconds the call took) of every call.
    calls: Mutex<Vec<(f64, Outcome, f64)>>,
    /// Sessions moved to another URL after a connection error, and whether they continued.
    moved: Mutex<(u64, u64)>,
    /// Sessions opened.
    sessions: std::sync::atomic::AtomicU64,
    /// Session opening (`initialize`) and closing (`DELETE`): (name, outcome, seconds taken).
    session_ops: Mutex<Vec<(&'static str, Outcome, f64)>>,
}

impl Shared {
    fn session_op(&self, name: &'static str, outcome: Outcome, began: Instant) {
        let took = began.elapsed().as_secs_f64();
        shadowcat_proxy::sync::lock(&self.session_ops).push((name, outcome, took));
    }
}

fn call_body(a: &LoadArgs, id: u64, echo: &EchoCall) -> (Bytes, Option<String>) {
    match a.tool.as_str() {
        "slow" => (
            Bytes::from(format!(
                r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"slow","arguments":{{"steps":10,"duration":{}}},"_meta":{{"progressToken":{id}}}}}}}"#,
                a.slow_secs
            )),
            Some("completed 10 steps".into()),
        ),
        "log" => (
            mcp::log_call(id, "log", "chaos", a.log_count),
            Some(format!("logged {}", a.log_count)),
        ),
        _ => {
            let (b, e) = echo.request(id);
            (b, Some(e))
        }
    }
}

/// One call on `conn`; the outcome.
async fn one_call(conn: &mut Conn, s: &HttpSession, a: &LoadArgs, echo: &EchoCall) -> Outcome {
    let id = mcp::next_id();
    let (body, expect) = call_body(a, id, echo);
    let run = conn.post(Some(s), body);
    let reply = match tokio::time::timeout(Duration::from_secs_f64(a.call_timeout), run).await {
        Err(_) => return Outcome::Hang,
        Ok(Err(_)) => return Outcome::Transport,
        Ok(Ok(r)) => r,
    };
    if !reply.status.is_success() {
        return Outcome::Http(reply.status.as_u16());
    }
    for data in reply.payloads() {
        let Ok(msg) = mcp::parse(&data) else {
            return Outcome::Wrong;
        };
        if !msg.is_response() || msg.num_id() != Some(id) {
            continue;
        }
        if msg.error.is_some() {
            return Outcome::RpcError;
        }
        let Some(result) = msg.result else {
            return Outcome::Wrong;
        };
        return match (mcp::tool_text(result), &expect) {
            (Ok(text), Some(want)) if &text == want => Outcome::Ok,
            // A tool error (isError) from a dying upstream is an answer, not a wrong one.
            (Err(_), _) => Outcome::RpcError,
            _ => Outcome::Wrong,
        };
    }
    // The stream ended without the answer: the connection broke mid-reply.
    Outcome::Transport
}

async fn worker(targets: Vec<Arc<HttpTarget>>, w: usize, a: Arc<LoadArgs>, sh: Arc<Shared>) {
    let deadline = sh.start + Duration::from_secs_f64(a.duration);
    let echo = EchoCall::new("echo", 64, "");
    let mut at = w % targets.len();
    let mut conn = Conn::new(targets[at].clone());
    let mut session: Option<HttpSession> = None;
    let mut calls_on_session = 0u64;
    // Set when the session moved to another URL: its next call says whether it continued.
    let mut moved = false;
    while Instant::now() < deadline {
        let s = match &session {
            Some(s) => s.clone(),
            None => {
                let began = Instant::now();
                let hs =
                    tokio::time::timeout(Duration::from_secs_f64(a.call_timeout), conn.handshake())
                        .await;
                let outcome = match &hs {
                    Ok(Ok(_)) => Outcome::Ok,
                    // Refused (an HTTP error) or unreachable: an answer, not a hang.
                    Ok(Err(_)) => Outcome::Transport,
                    Err(_) => Outcome::Hang,
                };
                sh.session_op("initialize", outcome, began);
                match hs {
                    Ok(Ok(s)) => {
                        sh.sessions
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        calls_on_session = 0;
                        session = Some(s.clone());
                        s
                    }
                    _ => {
                        // Down (or refusing): try the next URL after a pause.
                        at = (at + 1) % targets.len();
                        conn = Conn::new(targets[at].clone());
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
            }
        };
        let began = Instant::now();
        let outcome = one_call(&mut conn, &s, &a, &echo).await;
        let t = sh.start.elapsed().as_secs_f64();
        let took = began.elapsed().as_secs_f64();
        shadowcat_proxy::sync::lock(&sh.calls).push((t, outcome, took));
        if outcome == Outcome::Ok {
            let mut first = shadowcat_proxy::sync::lock(&sh.first_ok);
            if first.is_none() {
                *first = Some(Instant::now());
                sh.first_ok_notify.notify_waiters();
            }
        }
        if moved {
            moved = false;
            let mut m = shadowcat_proxy::sync::lock(&sh.moved);
            if outcome == Outcome::Ok {
                m.1 += 1;
            }
        }
        calls_on_session += 1;
        match outcome {
            Outcome::Ok => {
                if a.churn > 0 && calls_on_session >= a.churn {
                    let began = Instant::now();
                    let timeout = Duration::from_secs_f64(a.call_timeout);
                    let outcome = match tokio::time::timeout(timeout, conn.delete(&s)).await {
                        Ok(Ok(st)) if st.is_success() => Outcome::Ok,
                        Ok(Ok(st)) => Outcome::Http(st.as_u16()),
                        Ok(Err(_)) => Outcome::Transport,
                        Err(_) => Outcome::Hang,
                    };
                    sh.session_op("delete", outcome, began);
                    session = None;
                }
            }
            Outcome::Transport if targets.len() > 1 => {
                // The replica is gone: the same session on the next one (a load balancer).
                at = (at + 1) % targets.len();
                conn = Conn::new(targets[at].clone());
                shadowcat_proxy::sync::lock(&sh.moved).0 += 1;
                moved = true;
            }
            Outcome::Transport | Outcome::Hang => {
                conn = Conn::new(targets[at].clone());
                session = None;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Outcome::Http(503) | Outcome::Http(429) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                session = None;
            }
            _ => session = None,
        }
    }
    if let Some(s) = session {
        let _ = conn.delete(&s).await;
    }
}

fn parse_fault(s: &str) -> anyhow::Result<(f64, String)> {
    let (secs, cmd) = s
        .split_once('=')
        .ok_or_else(|| anyhow!("--fault takes SECS=CMD, got {s:?}"))?;
    Ok((
        secs.trim().parse().context("--fault SECS")?,
        cmd.to_string(),
    ))
}

pub async fn load(a: LoadArgs) -> anyhow::Result<()> {
    let mut targets = Vec::new();
    for u in &a.urls {
        targets.push(HttpTarget::parse(u).await?);
    }
    let faults: Vec<(f64, String)> = a
        .faults
        .iter()
        .map(|f| parse_fault(f))
        .collect::<anyhow::Result<_>>()?;
    let a = Arc::new(a);
    let sh = Arc::new(Shared {
        start: Instant::now(),
        first_ok: Mutex::new(None),
        first_ok_notify: tokio::sync::Notify::new(),
        calls: Mutex::new(Vec::new()),
        moved: Mutex::new((0, 0)),
        sessions: Default::default(),
        session_ops: Mutex::new(Vec::new()),
    });
    let workers: Vec<_> = (0..a.concurrency.max(1))
        .map(|w| tokio::spawn(worker(targets.clone(), w, a.clone(), sh.clone())))
        .collect();

    // Faults, timed from the first answered call.
    let fault_task = {
        let sh = sh.clone();
        tokio::spawn(async move {
            let mut ran = Vec::new();
            let notified = sh.first_ok_notify.notified();
            let first = *shadowcat_proxy::sync::lock(&sh.first_ok);
            let base = match first {
                Some(t) => t,
                None => {
                    notified.await;
                    shadowcat_proxy::sync::lock(&sh.first_ok).unwrap_or_else(Instant::now)
                }
            };
            for (secs, cmd) in faults {
                tokio::time::sleep_until((base + Duration::from_secs_f64(secs)).into()).await;
                let at = sh.start.elapsed().as_secs_f64();
                let status = tokio::process::Command::new("sh")
                    .arg("-c")
                    .arg(&cmd)
                    .status()
                    .await;
                let code = status.ok().and_then(|s| s.code());
                eprintln!("chaos-load: t={at:.1}s fault `{cmd}` exited {code:?}");
                ran.push(json!({"t_s": at, "cmd": cmd, "exit": code}));
            }
            ran
        })
    };

    // RSS samples.
    let rss_task = a.rss_pid.map(|pid| {
        let (sh, every, duration) = (sh.clone(), a.rss_every, a.duration);
        tokio::spawn(async move {
            let mut samples = Vec::new();
            loop {
                let t = sh.start.elapsed().as_secs_f64();
                if let Some(p) = stats::proc_info(pid) {
                    samples.push((t, p.rss_kb));
                }
                if t >= duration {
                    break samples;
                }
                tokio::time::sleep(Duration::from_secs_f64(every.min(duration - t).max(0.1))).await;
            }
        })
    });

    for w in workers {
        w.await?;
    }
    let faults_ran = if shadowcat_proxy::sync::lock(&sh.first_ok).is_some() {
        fault_task.await?
    } else {
        fault_task.abort();
        Vec::new()
    };
    let rss = match rss_task {
        Some(t) => Some(t.await?),
        None => None,
    };

    let calls = shadowcat_proxy::sync::lock(&sh.calls).clone();
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    for (_, o, _) in &calls {
        *totals.entry(o.name()).or_default() += 1;
    }
    let longest_call = calls.iter().map(|c| c.2).fold(0.0, f64::max);
    let ops = shadowcat_proxy::sync::lock(&sh.session_ops).clone();
    let mut op_totals: BTreeMap<String, u64> = BTreeMap::new();
    let mut op_longest: BTreeMap<&str, f64> = BTreeMap::new();
    for (name, o, took) in &ops {
        *op_totals.entry(format!("{name}_{}", o.name())).or_default() += 1;
        let l = op_longest.entry(name).or_default();
        *l = l.max(*took);
    }
    let op_hangs = ops.iter().filter(|o| o.1 == Outcome::Hang).count() as u64;
    let last_fault = faults_ran
        .iter()
        .filter_map(|f| f["t_s"].as_f64())
        .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.max(t))));
    let ok_after_faults = match last_fault {
        Some(t) => calls
            .iter()
            .filter(|(c, o, _)| *c > t && *o == Outcome::Ok)
            .count() as u64,
        None => totals.get("ok").copied().unwrap_or(0),
    };
    // Per second: outcome counts, to see where the faults bit.
    let mut timeline: BTreeMap<u64, BTreeMap<String, u64>> = BTreeMap::new();
    for (t, o, _) in &calls {
        *timeline
            .entry(*t as u64)
            .or_default()
            .entry(o.name())
            .or_default() += 1;
    }
    let (moved, continued) = *shadowcat_proxy::sync::lock(&sh.moved);
    let get = |k: &str| totals.get(k).copied().unwrap_or(0);
    let (rss_start, rss_end) = match &rss {
        Some(s) if !s.is_empty() => {
            let start = s
                .iter()
                .find(|(t, _)| *t >= a.rss_warmup.min(a.duration / 2.0))
                .or(s.first())
                .map(|x| x.1);
            (start, s.last().map(|x| x.1))
        }
        _ => (None, None),
    };
    println!("chaos-load: session opening/closing: {op_totals:?}, longest {op_longest:?}");
    println!(
        "chaos-load: {} calls in {:.1}s on {} sessions: {:?}; longest call {longest_call:.1}s; {} answered after the last fault; sessions moved to another URL: {moved}, continued there: {continued}{}",
        calls.len(),
        a.duration,
        sh.sessions.load(std::sync::atomic::Ordering::Relaxed),
        totals,
        ok_after_faults,
        match (rss_start, rss_end) {
            (Some(s), Some(e)) => format!("; RSS {s} kB -> {e} kB"),
            _ => String::new(),
        }
    );
    let report = json!({
        "mode": "chaos-load",
        "targets": a.urls,
        "tool": a.tool,
        "concurrency": a.concurrency,
        "duration_s": a.duration,
        "call_timeout_s": a.call_timeout,
        "calls": calls.len(),
        "outcomes": totals,
        "ok": get("ok"),
        "hang": get("hang") + op_hangs,
        "session_ops": op_totals,
        "session_ops_longest_s": op_longest,
        "wrong": get("wrong"),
        "longest_call_s": longest_call,
        "sessions_opened": sh.sessions.load(std::sync::atomic::Ordering::Relaxed),
        "faults": faults_ran,
        "ok_after_last_fault": ok_after_faults,
        "sessions_moved": moved,
        "sessions_continued": continued,
        "rss_kb_start": rss_start,
        "rss_kb_end": rss_end,
        "rss_samples": rss.map(|s| s.into_iter().map(|(t, kb)| json!([t, kb])).collect::<Vec<_>>()),
        "timeline": timeline,
    });
    stats::write_json(a.json.as_deref(), &report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_parse() {
        assert_eq!(
            parse_status(b"HTTP/1.1 413 Payload Too Large\r\n"),
            Some(413)
        );
        assert_eq!(parse_status(b"HTTP/1.0 400 Bad\r\n\r\n"), Some(400));
        assert_eq!(parse_status(b""), None);
        assert_eq!(parse_status(b"garbage 200\r\n"), None);
    }

    #[test]
    fn truncated_json_is_never_valid() {
        let fx = Fixture {
            host: "h".into(),
            path: "/mcp".into(),
            version: "2025-06-18".into(),
            live: vec!["a".into()],
            ended: vec!["b".into()],
        };
        let mut rng = Rng::new(7);
        for i in 0..2000 {
            let h = build(i, &mut rng, &fx, 4096);
            if h.category == "fuzz-truncated-json" {
                assert!(serde_json::from_slice::<Value>(&h.body).is_err());
            }
            if h.category == "oversize-body" {
                assert!(h.body.len() > 4096);
            }
        }
    }
}
