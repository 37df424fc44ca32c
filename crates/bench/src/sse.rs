//! `sse`: server→client notifications streamed during a call. Two kinds:
//!
//! - `log` (default): the demo server's `log` tool sends `count` `notifications/message`
//!   (`"e #i"`). They are not tied to the request, so an HTTP server may send them on the
//!   session's GET stream instead of the POST's: the generator keeps a GET stream open and counts
//!   events from both.
//! - `slow`: the demo server's `slow` tool with `duration: 0` sends `count` `notifications/progress`
//!   for the request's progress token: they belong on the POST stream.
//!
//! Every event is checked (each index exactly once, then the right reply). Reports events/s, the
//! gap between consecutive events at the client, and request → first event of `count: 1` probes.

use crate::http::{self, Conn, HttpSession};
use crate::mcp::{self, SseDecoder};
use crate::stats::{self, CpuWatch, Errors};
use crate::stdio::StdioSession;
use crate::{ReportArgs, Target, TargetArgs};
use anyhow::{Context, anyhow, bail};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::json;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `log {message, count}` → notifications/message.
    Log,
    /// `slow {steps, duration: 0}` with a progress token → notifications/progress.
    Slow,
}

impl Kind {
    /// The notifications the tool sends.
    pub fn method(self) -> &'static str {
        match self {
            Kind::Log => "notifications/message",
            Kind::Slow => "notifications/progress",
        }
    }

    /// The demo server's tool.
    pub fn tool(self) -> &'static str {
        match self {
            Kind::Log => "log",
            Kind::Slow => "slow",
        }
    }

    /// The `tools/call` (request id `id`) that sends `count` notifications.
    pub fn call(self, id: u64, tool: &str, count: u32) -> bytes::Bytes {
        match self {
            Kind::Log => mcp::log_call(id, tool, MESSAGE, count),
            Kind::Slow => mcp::slow_call(id, tool, count),
        }
    }

    /// The text of the tool's reply.
    pub fn reply(self, count: u32) -> String {
        match self {
            Kind::Log => format!("logged {count}"),
            Kind::Slow => format!("completed {count} steps"),
        }
    }

    /// The index (1..=count) of one notification of call `id`, from its params; `None` when it
    /// belongs to another request.
    pub fn index(self, params: &str, id: u64, count: u32) -> anyhow::Result<Option<u32>> {
        Ok(match self {
            Kind::Log => {
                let p: LogParams<'_> = serde_json::from_str(params).context("log params")?;
                if count == 1 {
                    (p.data == MESSAGE).then_some(1)
                } else {
                    p.data
                        .strip_prefix(MESSAGE)
                        .and_then(|r| r.strip_prefix(" #"))
                        .and_then(|i| i.parse().ok())
                }
                .ok_or_else(|| anyhow!("unexpected log data {:?}", p.data))
                .map(Some)?
            }
            Kind::Slow => {
                let p: ProgressParams = serde_json::from_str(params).context("progress params")?;
                if p.token.as_u64() != Some(id) {
                    return Ok(None); // another request's progress
                }
                Some(p.progress as u32)
            }
        })
    }
}

#[derive(Args, Debug)]
pub struct SseArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub report: ReportArgs,
    /// Which notifications to stream.
    #[arg(long, value_enum, default_value_t = Kind::Log)]
    pub kind: Kind,
    /// Concurrent streams (each its own session and connection).
    #[arg(long, default_value_t = 1)]
    pub streams: usize,
    /// Notifications per call (the demo server allows at most 10000).
    #[arg(long, default_value_t = 10_000)]
    pub count: u32,
    /// Calls per stream.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Unmeasured calls per stream first.
    #[arg(long, default_value_t = 1)]
    pub warmup_rounds: usize,
    /// Sequential `count: 1` calls afterwards, timing request → first notification.
    #[arg(long, default_value_t = 200)]
    pub probes: usize,
    /// The tool to call (default: `log` or `slow` after --kind).
    #[arg(long)]
    pub tool: Option<String>,
    /// Seconds before one call counts as timed out.
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
}

const MESSAGE: &str = "e";

type Events = mpsc::UnboundedReceiver<(Instant, Vec<u8>)>;

enum Stream {
    /// The connection for POSTs, the session, and the events of its GET stream (if the server
    /// offers one).
    Http(Conn, HttpSession, Option<Events>),
    Stdio(Arc<StdioSession>),
}

/// What one call saw.
#[derive(Default)]
struct CallOut {
    events: u64,
    first: Option<Duration>,
    total: Duration,
}

#[derive(Deserialize)]
struct LogParams<'a> {
    #[serde(borrow)]
    data: Cow<'a, str>,
}

#[derive(Deserialize)]
struct ProgressParams {
    #[serde(rename = "progressToken")]
    token: serde_json::Value,
    progress: f64,
}

/// Checks the notifications and the reply of one call.
struct Checker {
    kind: Kind,
    id: u64,
    count: u32,
    seen: Vec<bool>,
    n_seen: u32,
    arrivals: Vec<Instant>,
    replied: bool,
}

impl Checker {
    fn new(kind: Kind, id: u64, count: u32) -> Checker {
        Checker {
            kind,
            id,
            count,
            seen: vec![false; count as usize + 1],
            n_seen: 0,
            arrivals: Vec::with_capacity(count as usize),
            replied: false,
        }
    }

    fn complete(&self) -> bool {
        self.replied && self.n_seen == self.count
    }

    fn event(&mut self, data: &[u8], at: Instant) -> anyhow::Result<()> {
        if data.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let msg = mcp::parse(data)?;
        let method = self.kind.method();
        if msg.method.as_deref() == Some(method) {
            let params = msg
                .params
                .ok_or_else(|| anyhow!("{method} without params"))?;
            let Some(i) = self.kind.index(params.get(), self.id, self.count)? else {
                return Ok(());
            };
            if i == 0 || i > self.count || self.seen[i as usize] {
                bail!(
                    "event {i} is out of range or repeated (count {})",
                    self.count
                );
            }
            self.seen[i as usize] = true;
            self.n_seen += 1;
            self.arrivals.push(at);
        } else if msg.is_response() && msg.num_id() == Some(self.id) {
            if let Some(e) = msg.error {
                bail!("JSON-RPC error: {}", e.get());
            }
            let text = mcp::tool_text(msg.result.ok_or_else(|| anyhow!("no result"))?)?;
            let want = self.kind.reply(self.count);
            if text != want {
                bail!("reply {text:?}, expected {want:?}");
            }
            self.replied = true;
        }
        Ok(())
    }
}

/// Open the session's GET stream; its events go to the returned channel. `None` if the server
/// does not offer one.
async fn open_get(conn: &Conn, session: &HttpSession) -> anyhow::Result<Option<Events>> {
    let mut c = Conn::new(conn.target().clone());
    let req = c.get_request(session, None)?;
    let resp = c.send(req).await?;
    if resp.status() != ::http::StatusCode::OK || !http::is_sse(&resp) {
        return Ok(None);
    }
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _conn = c;
        let mut body = resp.into_body();
        let mut dec = SseDecoder::default();
        let mut events = Vec::new();
        while let Some(Ok(frame)) = body.frame().await {
            let at = Instant::now();
            let Ok(data) = frame.into_data() else {
                continue;
            };
            dec.feed(&data, &mut events);
            for ev in events.drain(..) {
                if tx.send((at, ev)).is_err() {
                    return;
                }
            }
        }
    });
    Ok(Some(rx))
}

async fn one_call(
    stream: &mut Stream,
    kind: Kind,
    tool: &str,
    count: u32,
    gaps: &mut Histogram<u64>,
    deadline: Instant,
) -> anyhow::Result<CallOut> {
    let id = mcp::next_id();
    let body = kind.call(id, tool, count);
    let mut ck = Checker::new(kind, id, count);
    let t0 = Instant::now();
    match stream {
        Stream::Http(conn, session, get) => {
            let req = conn.request(::http::Method::POST, Some(session), body);
            let resp = conn.send(req).await?;
            if resp.status() != ::http::StatusCode::OK {
                bail!("HTTP {}", resp.status());
            }
            let sse = http::is_sse(&resp);
            let mut body = resp.into_body();
            let mut dec = SseDecoder::default();
            let mut events = Vec::new();
            let mut raw = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.context("reading the stream")?;
                let at = Instant::now();
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if sse {
                    dec.feed(&data, &mut events);
                    for ev in events.drain(..) {
                        ck.event(&ev, at)?;
                    }
                } else {
                    raw.extend_from_slice(&data);
                }
                if let Some(g) = get {
                    while let Ok((t, ev)) = g.try_recv() {
                        ck.event(&ev, t)?;
                    }
                }
            }
            if !sse {
                let at = Instant::now();
                for p in mcp::payloads(false, &raw) {
                    ck.event(&p, at)?;
                }
            }
            // The rest may still be coming on the GET stream.
            if let Some(g) = get {
                while !ck.complete() {
                    match tokio::time::timeout_at(deadline.into(), g.recv()).await {
                        Ok(Some((t, ev))) => ck.event(&ev, t)?,
                        Ok(None) => break,
                        Err(_) => bail!(
                            "timed out after the reply with {} of {count} notifications",
                            ck.n_seen
                        ),
                    }
                }
            }
        }
        Stream::Stdio(s) => {
            let mut rx = s.listen();
            let reply = s.request(id, body).await?;
            let at = Instant::now();
            while let Ok((t, n)) = rx.try_recv() {
                ck.event(&n, t)?;
            }
            s.unlisten();
            ck.event(&reply, at)?;
        }
    }
    if !ck.complete() {
        bail!(
            "{} of {count} notifications, reply {}",
            ck.n_seen,
            if ck.replied { "seen" } else { "missing" }
        );
    }
    let total = t0.elapsed();
    ck.arrivals.sort();
    for w in ck.arrivals.windows(2) {
        stats::record(gaps, w[1] - w[0]);
    }
    Ok(CallOut {
        events: u64::from(ck.n_seen),
        first: ck.arrivals.first().map(|f| *f - t0),
        total,
    })
}

struct StreamOut {
    calls: Vec<CallOut>,
    gaps: Histogram<u64>,
    errors: Errors,
    start: Instant,
    end: Instant,
}

pub async fn run(a: SseArgs) -> anyhow::Result<()> {
    let target = Target::from_args(&a.target).await?;
    let timeout = Duration::from_secs_f64(a.timeout);
    let tool = a.tool.clone().unwrap_or_else(|| a.kind.tool().into());
    let mut streams = Vec::new();
    let mut get_streams = 0;
    for _ in 0..a.streams.max(1) {
        streams.push(match &target {
            Target::Http(t) => {
                let mut conn = Conn::new(t.clone());
                let s = conn.handshake().await?;
                let get = if a.kind == Kind::Log {
                    open_get(&conn, &s).await?
                } else {
                    None
                };
                get_streams += usize::from(get.is_some());
                Stream::Http(conn, s, get)
            }
            Target::Stdio(cmd) => Stream::Stdio(StdioSession::spawn(cmd, timeout).await?),
        });
    }
    // Warm-up, each stream on its own.
    let mut scratch = stats::histogram();
    for s in &mut streams {
        for _ in 0..a.warmup_rounds {
            let call = one_call(
                s,
                a.kind,
                &tool,
                a.count,
                &mut scratch,
                Instant::now() + timeout,
            );
            tokio::time::timeout(timeout + Duration::from_secs(5), call)
                .await
                .map_err(|_| anyhow!("warm-up call timed out"))?
                .context("warm-up call")?;
        }
    }

    let cpu = CpuWatch::start(&a.report.pids);
    let barrier = Arc::new(tokio::sync::Barrier::new(streams.len()));
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            let barrier = barrier.clone();
            let tool = tool.clone();
            let (kind, count, rounds) = (a.kind, a.count, a.rounds);
            tokio::spawn(async move {
                barrier.wait().await;
                let mut out = StreamOut {
                    calls: Vec::new(),
                    gaps: stats::histogram(),
                    errors: Errors::default(),
                    start: Instant::now(),
                    end: Instant::now(),
                };
                for _ in 0..rounds {
                    let call = one_call(
                        &mut s,
                        kind,
                        &tool,
                        count,
                        &mut out.gaps,
                        Instant::now() + timeout,
                    );
                    match tokio::time::timeout(timeout + Duration::from_secs(5), call).await {
                        Ok(Ok(c)) => out.calls.push(c),
                        Ok(Err(e)) => out.errors.add("stream", &e),
                        Err(_) => out.errors.add("timeout", &anyhow!("call timed out")),
                    }
                }
                out.end = Instant::now();
                (s, out)
            })
        })
        .collect();
    let mut outs = Vec::new();
    let mut streams = Vec::new();
    for t in tasks {
        let (s, o) = t.await?;
        streams.push(s);
        outs.push(o);
    }
    let events: u64 = outs.iter().flat_map(|o| &o.calls).map(|c| c.events).sum();
    let cpu = cpu.stop(events);

    // Probes: request → first notification, one call at a time.
    let mut probe = stats::histogram();
    let mut probe_errors = Errors::default();
    if let Some(s) = streams.first_mut() {
        for _ in 0..a.probes {
            let call = one_call(s, a.kind, &tool, 1, &mut scratch, Instant::now() + timeout);
            match tokio::time::timeout(timeout + Duration::from_secs(5), call).await {
                Ok(Ok(c)) => {
                    if let Some(f) = c.first {
                        stats::record(&mut probe, f);
                    }
                }
                Ok(Err(e)) => probe_errors.add("probe", &e),
                Err(_) => probe_errors.add("timeout", &anyhow!("probe timed out")),
            }
        }
    }
    for s in &streams {
        match s {
            Stream::Http(conn, session, _) => {
                let mut c = Conn::new(conn.target().clone());
                let _ = c.delete(session).await;
            }
            Stream::Stdio(s) => s.close().await,
        }
    }

    let start = outs.iter().map(|o| o.start).min().expect("one stream");
    let end = outs.iter().map(|o| o.end).max().expect("one stream");
    let window = (end - start).as_secs_f64();
    let mut gaps = stats::histogram();
    let mut first_event = stats::histogram();
    let mut call_time = stats::histogram();
    let mut errors = Errors::default();
    let mut per_call_rates = Vec::new();
    for o in outs {
        gaps.add(&o.gaps).expect("same bounds");
        errors.merge(o.errors);
        for c in &o.calls {
            if let Some(f) = c.first {
                stats::record(&mut first_event, f);
            }
            stats::record(&mut call_time, c.total);
            per_call_rates.push(c.events as f64 / c.total.as_secs_f64().max(1e-9));
        }
    }
    errors.merge(probe_errors);
    per_call_rates.sort_by(f64::total_cmp);
    let median_rate = per_call_rates
        .get(per_call_rates.len() / 2)
        .copied()
        .unwrap_or(0.0);
    let rate = events as f64 / window.max(1e-9);
    println!(
        "{}: {} kind={:?} streams={} count={} rounds={}: {events} events in {window:.2}s = {rate:.0} events/s (median per call {median_rate:.0}/s), {} errors, {get_streams} GET streams",
        a.report.name("sse"),
        Target::describe(&a.target),
        a.kind,
        a.streams,
        a.count,
        a.rounds,
        errors.total()
    );
    println!("  {}", stats::fmt_summary("gap between events", &gaps));
    println!(
        "  {}",
        stats::fmt_summary("request → first event (count=1 probes)", &probe)
    );
    for (k, (n, msg)) in &errors.by_kind {
        println!("  error {k} x{n}: {msg}");
    }
    let report = json!({
        "mode": "sse",
        "label": a.report.label,
        "target": Target::describe(&a.target),
        "kind": format!("{:?}", a.kind).to_lowercase(),
        "tool": tool,
        "streams": a.streams,
        "get_streams": get_streams,
        "count": a.count,
        "rounds": a.rounds,
        "events": events,
        "window_s": window,
        "events_per_s": rate,
        "median_call_events_per_s": median_rate,
        "errors": errors.to_json(),
        "event_gap": stats::summary(&gaps),
        "call_first_event": stats::summary(&first_event),
        "call_duration": stats::summary(&call_time),
        "probe_first_event": stats::summary(&probe),
        "cpu": cpu,
    });
    stats::write_json(a.report.json.as_deref(), &report)
}
