//! `resume`: an SSE stream resumed after its connection dropped (`GET` + `Last-Event-ID`), as a
//! client that lost its network sees it.
//!
//! One cycle, on a fresh session (protocol 2025-11-25 by default, so streams start with a
//! priming event): a `tools/call` that sends `count` notifications, answered as an SSE stream
//! (`--kind log`: the demo server's `log`, notifications/message not tied to the request;
//! `--kind slow`: `slow` with a progress token, notifications/progress of the request); read
//! `--read` notifications; drop the connection (the call goes on: disconnecting does not cancel
//! it); wait `--pause-ms`; on a new connection `GET` with `Last-Event-ID: <last id seen>` and read
//! until the tool's reply and the end of the stream; `DELETE` the session.
//!
//! Measured: time to resume (GET written on an open connection → first event of the resumed
//! stream) and events per second on the resumed stream (its events / GET written → reply).
//! Checked: every notification after the resume point arrives exactly once and in order (a gap,
//! a repeat or a reordering is an error), event ids increase and stay on one stream, the reply
//! arrives and nothing follows it.

use crate::ReportArgs;
use crate::http::{Conn, HttpSession, HttpTarget, SseBody, is_sse};
use crate::mcp::{self, SseEvent};
use crate::sse::Kind;
use crate::stats::{self, CpuWatch, Errors};
use anyhow::anyhow;
use clap::Args;
use http_body_util::BodyExt;
use serde_json::json;
use std::cmp::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args, Debug, Clone)]
pub struct ResumeArgs {
    /// Streamable HTTP endpoint of a server or proxy that resumes streams, e.g.
    /// http://127.0.0.1:8080/mcp.
    #[arg(long)]
    pub url: String,
    #[command(flatten)]
    pub report: ReportArgs,
    /// Which notifications the call sends.
    #[arg(long, value_enum, default_value_t = Kind::Log)]
    pub kind: Kind,
    /// Notifications per call (the demo server allows at most 10000).
    #[arg(long, default_value_t = 10_000)]
    pub count: u32,
    /// Notifications read before the connection is dropped (0: only the priming event).
    #[arg(long, default_value_t = 100)]
    pub read: u32,
    /// Milliseconds between dropping the connection and resuming (events accumulate meanwhile).
    #[arg(long, default_value_t = 0)]
    pub pause_ms: u64,
    /// Measured resumptions per parallel worker (each on a fresh session).
    #[arg(long, default_value_t = 20)]
    pub rounds: usize,
    /// Unmeasured resumptions first, one at a time.
    #[arg(long, default_value_t = 1)]
    pub warmup_rounds: usize,
    /// Workers resuming in parallel.
    #[arg(long, short = 'c', default_value_t = 1)]
    pub concurrency: usize,
    /// Protocol version asked for in `initialize`.
    #[arg(long, default_value = "2025-11-25")]
    pub protocol_version: String,
    /// The tool to call (default: `log` or `slow` after --kind).
    #[arg(long)]
    pub tool: Option<String>,
    /// Seconds one cycle may take.
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
}

/// Why a cycle failed: a kind for the error tally, and the error.
#[derive(Debug)]
struct Failure {
    kind: &'static str,
    error: anyhow::Error,
}

fn fail(kind: &'static str, error: anyhow::Error) -> Failure {
    Failure { kind, error }
}

trait KindOf<T> {
    fn kind(self, kind: &'static str) -> Result<T, Failure>;
}

impl<T, E: Into<anyhow::Error>> KindOf<T> for Result<T, E> {
    fn kind(self, kind: &'static str) -> Result<T, Failure> {
        self.map_err(|e| fail(kind, e.into()))
    }
}

/// What an event was.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// No payload (a priming event) or a message that is none of the others.
    Other,
    Note,
    Reply,
}

/// The order one call's events must come in, across the dropped connection and the resumed one.
struct Sequence {
    kind: Kind,
    call: u64,
    count: u32,
    /// The next notification index expected.
    next: u32,
    replied: bool,
    stream: Option<String>,
    last_id: Option<String>,
}

/// Whether the store id `b` (the part of an event id after the stream) comes after `a`: as
/// numbers, or `ms-seq` pairs (Redis stream ids); otherwise only that they differ.
fn increases(a: &str, b: &str) -> bool {
    fn key(s: &str) -> Option<Vec<u64>> {
        s.split('-').map(|p| p.parse().ok()).collect()
    }
    match (key(a), key(b)) {
        (Some(a), Some(b)) => b > a,
        _ => a != b,
    }
}

impl Sequence {
    fn new(kind: Kind, call: u64, count: u32) -> Sequence {
        Sequence {
            kind,
            call,
            count,
            next: 1,
            replied: false,
            stream: None,
            last_id: None,
        }
    }

    fn event(&mut self, ev: &SseEvent) -> Result<Seen, Failure> {
        if self.replied {
            return Err(fail(
                "after-reply",
                anyhow!("event {:?} after the reply", ev.id),
            ));
        }
        let id = ev.id.as_deref().ok_or_else(|| {
            fail(
                "no-id",
                anyhow!("an event without id (not logged: nothing to resume from)"),
            )
        })?;
        self.check_id(id)?;
        let data = ev.data.as_deref().unwrap_or_default();
        if data.iter().all(u8::is_ascii_whitespace) {
            return Ok(Seen::Other);
        }
        let msg = mcp::parse(data).kind("protocol")?;
        if msg.method.as_deref() == Some(self.kind.method()) {
            let params = msg
                .params
                .ok_or_else(|| fail("protocol", anyhow!("notification without params")))?;
            let index = self.kind.index(params.get(), self.call, self.count);
            let Some(i) = index.kind("protocol")? else {
                return Ok(Seen::Other); // another request's
            };
            match i.cmp(&self.next) {
                Ordering::Equal => self.next += 1,
                Ordering::Less => {
                    return Err(fail(
                        "duplicate",
                        anyhow!("notification #{i} again (id {id}), expected #{}", self.next),
                    ));
                }
                Ordering::Greater => {
                    return Err(fail(
                        "gap",
                        anyhow!(
                            "notification #{i} (id {id}) after #{}: {} missing",
                            self.next - 1,
                            i - self.next
                        ),
                    ));
                }
            }
            Ok(Seen::Note)
        } else if msg.is_response() {
            if self.next <= self.count {
                return Err(fail(
                    "gap",
                    anyhow!(
                        "the reply (id {id}) after #{} of {} notifications",
                        self.next - 1,
                        self.count
                    ),
                ));
            }
            let want = self.kind.reply(self.count);
            mcp::check_reply([data], self.call, &want).kind("reply")?;
            self.replied = true;
            Ok(Seen::Reply)
        } else {
            Ok(Seen::Other)
        }
    }

    fn check_id(&mut self, id: &str) -> Result<(), Failure> {
        let (stream, n) = id.split_once('.').unwrap_or(("", id));
        match &self.stream {
            None => self.stream = Some(stream.to_owned()),
            Some(s) if s != stream => {
                return Err(fail(
                    "id-order",
                    anyhow!("event id {id} is not on stream {s}"),
                ));
            }
            Some(_) => {}
        }
        if let Some(last) = &self.last_id {
            let last_n = last.split_once('.').map_or(last.as_str(), |(_, n)| n);
            if !increases(last_n, n) {
                return Err(fail("id-order", anyhow!("event id {id} after {last}")));
            }
        }
        self.last_id = Some(id.to_owned());
        Ok(())
    }
}

/// One resumption.
struct Resumed {
    /// GET written → first event.
    first: Duration,
    /// GET written → the reply.
    total: Duration,
    /// Events with a payload on the resumed stream (notifications and the reply).
    events: u64,
}

/// Call `log`, read `a.read` notifications, drop the connection; returns the call's sequence
/// (its last id is the resume point).
async fn call_and_drop(
    target: &Arc<HttpTarget>,
    session: &HttpSession,
    a: &ResumeArgs,
) -> Result<Sequence, Failure> {
    let mut conn = Conn::new(target.clone());
    let id = mcp::next_id();
    let tool = a.tool.as_deref().unwrap_or(a.kind.tool());
    let body = a.kind.call(id, tool, a.count);
    let req = conn.request(::http::Method::POST, Some(session), body);
    let resp = conn.send(req).await.kind("call")?;
    if resp.status() != ::http::StatusCode::OK || !is_sse(&resp) {
        return Err(fail(
            "call",
            anyhow!(
                "HTTP {} {:?}: not an SSE stream",
                resp.status(),
                resp.headers().get(::http::header::CONTENT_TYPE)
            ),
        ));
    }
    let mut body = SseBody::new(resp.into_body());
    let mut seq = Sequence::new(a.kind, id, a.count);
    let mut read = 0;
    while read < a.read || seq.last_id.is_none() {
        let Some((_, ev)) = body.next().await.kind("call")? else {
            return Err(fail(
                "call",
                anyhow!("the stream ended after {read} notifications"),
            ));
        };
        match seq.event(&ev)? {
            Seen::Note => read += 1,
            Seen::Reply => {
                return Err(fail(
                    "call",
                    anyhow!("the reply came before {} notifications were read", a.read),
                ));
            }
            Seen::Other => {}
        }
    }
    // Dropping the body and the connection closes the socket, like a lost network.
    drop(body);
    drop(conn);
    Ok(seq)
}

/// `GET` + `Last-Event-ID` after the sequence's last id; read to the end of the stream.
async fn resume(
    target: &Arc<HttpTarget>,
    session: &HttpSession,
    mut seq: Sequence,
) -> Result<Resumed, Failure> {
    let last = seq.last_id.clone().expect("an event was read");
    let mut conn = Conn::new(target.clone());
    conn.connect().await.kind("resume")?;
    let req = conn.get_request(session, Some(&last)).kind("resume")?;
    let sent = Instant::now();
    let resp = conn.send(req).await.kind("resume")?;
    if resp.status() != ::http::StatusCode::OK || !is_sse(&resp) {
        let status = resp.status();
        let body = resp.into_body().collect().await.map(|b| b.to_bytes());
        let text = body
            .as_deref()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        return Err(fail(
            "refused",
            anyhow!(
                "GET with Last-Event-ID {last}: HTTP {status}: {}",
                mcp::truncate(&text, 300)
            ),
        ));
    }
    let mut body = SseBody::new(resp.into_body());
    let (mut first, mut total, mut events) = (None, None, 0);
    while let Some((at, ev)) = body.next().await.kind("resume")? {
        first.get_or_insert(at - sent);
        match seq.event(&ev)? {
            Seen::Note => events += 1,
            Seen::Reply => {
                events += 1;
                total = Some(at - sent);
            }
            Seen::Other => {}
        }
    }
    let (Some(first), Some(total)) = (first, total) else {
        return Err(fail(
            "no-reply",
            anyhow!(
                "the resumed stream ended after #{} of {} without the reply",
                seq.next - 1,
                seq.count
            ),
        ));
    };
    let _ = conn.delete(session).await;
    Ok(Resumed {
        first,
        total,
        events,
    })
}

/// One cycle on a fresh session.
async fn cycle(target: &Arc<HttpTarget>, a: &ResumeArgs) -> Result<Resumed, Failure> {
    let mut conn = Conn::new(target.clone());
    let session = conn
        .handshake_as(&a.protocol_version)
        .await
        .kind("session")?;
    let run = async {
        let seq = call_and_drop(target, &session, a).await?;
        tokio::time::sleep(Duration::from_millis(a.pause_ms)).await;
        resume(target, &session, seq).await
    };
    let out = tokio::time::timeout(Duration::from_secs_f64(a.timeout), run)
        .await
        .unwrap_or_else(|_| Err(fail("timeout", anyhow!("cycle timed out"))));
    if out.is_err() {
        let _ = conn.delete(&session).await;
    }
    out
}

pub async fn run(a: ResumeArgs) -> anyhow::Result<()> {
    let target = HttpTarget::parse(&a.url).await?;
    let mut warmup_errors = Errors::default();
    for _ in 0..a.warmup_rounds {
        if let Err(f) = cycle(&target, &a).await {
            warmup_errors.add(f.kind, &f.error);
        }
    }
    let cpu = CpuWatch::start(&a.report.pids);
    let start = Instant::now();
    let workers: Vec<_> = (0..a.concurrency.max(1))
        .map(|_| {
            let (target, a) = (target.clone(), a.clone());
            tokio::spawn(async move {
                let mut done = Vec::new();
                let mut errors = Errors::default();
                for _ in 0..a.rounds {
                    match cycle(&target, &a).await {
                        Ok(r) => done.push(r),
                        Err(f) => errors.add(f.kind, &f.error),
                    }
                }
                (done, errors)
            })
        })
        .collect();
    let mut done = Vec::new();
    let mut errors = Errors::default();
    for w in workers {
        let (d, e) = w.await?;
        done.extend(d);
        errors.merge(e);
    }
    let window = start.elapsed().as_secs_f64();
    let cpu = cpu.stop(done.len() as u64);

    let mut first = stats::histogram();
    let mut total = stats::histogram();
    let mut rates: Vec<f64> = Vec::new();
    for r in &done {
        stats::record(&mut first, r.first);
        stats::record(&mut total, r.total);
        rates.push(r.events as f64 / r.total.as_secs_f64().max(1e-9));
    }
    rates.sort_by(f64::total_cmp);
    let events: u64 = done.iter().map(|r| r.events).sum();
    let busy: f64 = done.iter().map(|r| r.total.as_secs_f64()).sum();
    let median_rate = rates.get(rates.len() / 2).copied().unwrap_or(0.0);
    let pooled_rate = events as f64 / busy.max(1e-9);
    let per = events as f64 / (done.len().max(1) as f64);
    println!(
        "{}: {} kind={:?} count={} read={} pause={}ms c={} rounds={}: {} of {} resumed, {per:.0} events each, median {median_rate:.0} events/s ({pooled_rate:.0} pooled), {} errors",
        a.report.name("resume"),
        a.url,
        a.kind,
        a.count,
        a.read,
        a.pause_ms,
        a.concurrency,
        a.rounds,
        done.len(),
        a.rounds * a.concurrency.max(1),
        errors.total()
    );
    println!(
        "  {}",
        stats::fmt_summary("GET → first resumed event", &first)
    );
    println!("  {}", stats::fmt_summary("GET → reply", &total));
    for (k, (n, msg)) in &errors.by_kind {
        println!("  error {k} x{n}: {msg}");
    }
    for (k, (n, msg)) in &warmup_errors.by_kind {
        println!("  warm-up error {k} x{n}: {msg}");
    }
    let report = json!({
        "mode": "resume",
        "label": a.report.label,
        "target": a.url,
        "protocol_version": a.protocol_version,
        "kind": format!("{:?}", a.kind).to_lowercase(),
        "tool": a.tool.as_deref().unwrap_or(a.kind.tool()),
        "count": a.count,
        "read": a.read,
        "pause_ms": a.pause_ms,
        "concurrency": a.concurrency,
        "rounds": a.rounds,
        "resumptions": a.rounds * a.concurrency.max(1),
        "resumed": done.len(),
        "events": events,
        "events_per_resumption": per,
        "events_per_s": median_rate,
        "events_per_s_pooled": pooled_rate,
        "window_s": window,
        "resume_first_event": stats::summary(&first),
        "resume_to_reply": stats::summary(&total),
        "errors": errors.to_json(),
        "warmup_errors": warmup_errors.to_json(),
        "cpu": cpu,
    });
    stats::write_json(a.report.json.as_deref(), &report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(id: &str, i: u32) -> SseEvent {
        SseEvent {
            id: Some(id.to_owned()),
            data: Some(
                format!(
                    r#"{{"jsonrpc":"2.0","method":"notifications/message","params":{{"data":"e #{i}","level":"info"}}}}"#
                )
                .into_bytes(),
            ),
        }
    }

    fn reply(id: &str, call: u64, n: u32) -> SseEvent {
        SseEvent {
            id: Some(id.to_owned()),
            data: Some(
                format!(
                    r#"{{"jsonrpc":"2.0","id":{call},"result":{{"content":[{{"type":"text","text":"logged {n}"}}]}}}}"#
                )
                .into_bytes(),
            ),
        }
    }

    fn priming(id: &str) -> SseEvent {
        SseEvent {
            id: Some(id.to_owned()),
            data: Some(Vec::new()),
        }
    }

    #[test]
    fn a_complete_sequence_passes() {
        let mut s = Sequence::new(Kind::Log, 7, 3);
        assert_eq!(s.event(&priming("p2.1")).unwrap(), Seen::Other);
        assert_eq!(s.event(&note("p2.2", 1)).unwrap(), Seen::Note);
        // resumed after p2.2; ids need not be contiguous (SQLite), only increasing
        assert_eq!(s.event(&note("p2.9", 2)).unwrap(), Seen::Note);
        assert_eq!(s.event(&note("p2.10", 3)).unwrap(), Seen::Note);
        assert_eq!(s.event(&reply("p2.11", 7, 3)).unwrap(), Seen::Reply);
        assert_eq!(s.event(&note("p2.12", 4)).unwrap_err().kind, "after-reply");
    }

    #[test]
    fn gaps_repeats_and_bad_ids_are_errors() {
        let mut s = Sequence::new(Kind::Log, 7, 3);
        s.event(&note("p1.1", 1)).unwrap();
        assert_eq!(s.event(&note("p1.2", 3)).unwrap_err().kind, "gap");
        let mut s = Sequence::new(Kind::Log, 7, 3);
        s.event(&note("p1.1", 1)).unwrap();
        assert_eq!(s.event(&note("p1.2", 1)).unwrap_err().kind, "duplicate");
        let mut s = Sequence::new(Kind::Log, 7, 3);
        s.event(&note("p1.5", 1)).unwrap();
        assert_eq!(s.event(&note("p1.5", 2)).unwrap_err().kind, "id-order");
        assert_eq!(s.event(&note("p2.6", 2)).unwrap_err().kind, "id-order");
        let mut s = Sequence::new(Kind::Log, 7, 2);
        s.event(&note("p1.1", 1)).unwrap();
        assert_eq!(s.event(&reply("p1.2", 7, 2)).unwrap_err().kind, "gap");
        let mut s = Sequence::new(Kind::Log, 7, 1);
        let no_id = SseEvent {
            id: None,
            ..note("", 1)
        };
        assert_eq!(s.event(&no_id).unwrap_err().kind, "no-id");
    }

    #[test]
    fn store_ids_compare_as_numbers_or_redis_pairs() {
        assert!(increases("9", "10"));
        assert!(!increases("10", "9"));
        assert!(increases("1700000000000-9", "1700000000000-10"));
        assert!(increases("1700000000000-9", "1700000000001-0"));
        assert!(!increases("1700000000001-0", "1700000000000-5"));
        assert!(!increases("x", "x"));
    }
}
