//! `calls`: request/response load.

use crate::http::{Conn, HttpSession, HttpTarget};
use crate::mcp::{self, EchoCall};
use crate::stats::{self, CpuWatch, Errors};
use crate::stdio::StdioSession;
use crate::{ReportArgs, Target, TargetArgs};
use anyhow::{anyhow, bail};
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct CallsArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub report: ReportArgs,
    /// Requests in flight at once (HTTP: one keep-alive connection each).
    #[arg(long, short = 'c', default_value_t = 1)]
    pub concurrency: usize,
    /// MCP sessions to spread the load over (default: one per concurrent request).
    #[arg(long)]
    pub sessions: Option<usize>,
    /// Seconds to measure (after the warm-up).
    #[arg(long, default_value_t = 10.0, conflicts_with = "requests")]
    pub duration: f64,
    /// Measure exactly this many requests instead of a duration.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Seconds of unmeasured load before measuring.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Size of the echoed message in bytes.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// The tool to call; it must answer with its `message` argument.
    #[arg(long, default_value = "echo")]
    pub tool: String,
    /// What the tool puts before the message in its answer (server-everything: "Echo: ").
    #[arg(long, default_value = "")]
    pub expect_prefix: String,
    /// Seconds before a request counts as timed out.
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
}

/// Sessions over either transport.
pub enum Sessions {
    Http(Arc<HttpTarget>, Vec<HttpSession>),
    Stdio(Vec<Arc<StdioSession>>),
}

impl Sessions {
    pub fn len(&self) -> usize {
        match self {
            Sessions::Http(_, v) => v.len(),
            Sessions::Stdio(v) => v.len(),
        }
    }

    pub async fn close(&self) {
        match self {
            Sessions::Http(t, v) => {
                let mut conn = Conn::new(t.clone());
                for s in v {
                    let _ = conn.delete(s).await;
                }
            }
            Sessions::Stdio(v) => {
                for s in v {
                    s.close().await;
                }
            }
        }
    }
}

/// Open `n` sessions, `parallel` at a time.
pub async fn open_sessions(target: &Target, n: usize, parallel: usize) -> anyhow::Result<Sessions> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..parallel.clamp(1, n.max(1)) {
        let next = next.clone();
        match target {
            Target::Http(t) => {
                let t = t.clone();
                tasks.push(tokio::spawn(async move {
                    let mut conn = Conn::new(t);
                    let mut out = Vec::new();
                    while (next.fetch_add(1, Ordering::Relaxed) as usize) < n {
                        out.push(Opened::Http(conn.handshake().await?));
                    }
                    anyhow::Ok(out)
                }));
            }
            Target::Stdio(cmd) => {
                let cmd = cmd.clone();
                tasks.push(tokio::spawn(async move {
                    let mut out = Vec::new();
                    while (next.fetch_add(1, Ordering::Relaxed) as usize) < n {
                        out.push(Opened::Stdio(
                            StdioSession::spawn(&cmd, Duration::from_secs(120)).await?,
                        ));
                    }
                    anyhow::Ok(out)
                }));
            }
        }
    }
    let mut http = Vec::new();
    let mut stdio = Vec::new();
    let mut first_err = None;
    for t in tasks {
        match t.await? {
            Ok(v) => {
                for o in v {
                    match o {
                        Opened::Http(s) => http.push(s),
                        Opened::Stdio(s) => stdio.push(s),
                    }
                }
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    let sessions = match target {
        Target::Http(t) => Sessions::Http(t.clone(), http),
        Target::Stdio(_) => Sessions::Stdio(stdio),
    };
    if let Some(e) = first_err {
        sessions.close().await;
        return Err(e.context(format!("opening {n} sessions")));
    }
    Ok(sessions)
}

enum Opened {
    Http(HttpSession),
    Stdio(Arc<StdioSession>),
}

/// One request on session `s`: the JSON-RPC payloads of the reply.
pub async fn fetch(
    sessions: &Sessions,
    conn: &mut Option<Conn>,
    s: usize,
    id: u64,
    body: bytes::Bytes,
) -> Result<Vec<Vec<u8>>, (&'static str, anyhow::Error)> {
    match sessions {
        Sessions::Http(t, v) => {
            let c = conn.get_or_insert_with(|| Conn::new(t.clone()));
            let reply = c
                .post(Some(&v[s]), body)
                .await
                .map_err(|e| ("transport", e))?;
            if reply.status != http::StatusCode::OK {
                return Err((
                    "http_status",
                    anyhow!(
                        "HTTP {}: {}",
                        reply.status,
                        mcp::truncate(&String::from_utf8_lossy(&reply.body), 200)
                    ),
                ));
            }
            Ok(reply.payloads())
        }
        Sessions::Stdio(v) => v[s]
            .request(id, body)
            .await
            .map(|d| vec![d])
            .map_err(|e| ("transport", e)),
    }
}

struct WorkerOut {
    hist: Histogram<u64>,
    errors: Errors,
    ok: u64,
    last: Option<Instant>,
}

struct Plan {
    measure_start: Instant,
    end: Option<Instant>,
    remaining: Option<AtomicI64>,
    timeout: Duration,
    done: AtomicU64,
}

impl Plan {
    /// Whether to send another request now, and whether it is measured.
    fn next(&self) -> Option<bool> {
        let now = Instant::now();
        if now < self.measure_start {
            return Some(false);
        }
        if let Some(end) = self.end {
            return (now < end).then_some(true);
        }
        let left = self
            .remaining
            .as_ref()
            .expect("requests mode")
            .fetch_sub(1, Ordering::Relaxed);
        (left > 0).then_some(true)
    }
}

async fn worker(
    w: usize,
    concurrency: usize,
    sessions: Arc<Sessions>,
    call: Arc<EchoCall>,
    plan: Arc<Plan>,
) -> WorkerOut {
    let n = sessions.len();
    let mine: Vec<usize> = if n >= concurrency {
        (w..n).step_by(concurrency).collect()
    } else {
        vec![w % n]
    };
    let mut out = WorkerOut {
        hist: stats::histogram(),
        errors: Errors::default(),
        ok: 0,
        last: None,
    };
    let mut conn: Option<Conn> = None;
    let mut k = 0usize;
    while let Some(measured) = plan.next() {
        let s = mine[k % mine.len()];
        k += 1;
        let id = mcp::next_id();
        let (body, expect) = call.request(id);
        let t0 = Instant::now();
        let res =
            tokio::time::timeout(plan.timeout, fetch(&sessions, &mut conn, s, id, body)).await;
        let elapsed = t0.elapsed();
        let verdict = match res {
            Err(_) => {
                conn = None;
                if let Sessions::Stdio(v) = &*sessions {
                    v[s].forget(id);
                }
                Err(("timeout", anyhow!("no reply within {:?}", plan.timeout)))
            }
            Ok(Err(e)) => Err(e),
            Ok(Ok(payloads)) => mcp::check_reply(payloads.iter().map(Vec::as_slice), id, &expect)
                .map_err(|e| ("wrong_answer", e)),
        };
        if !measured {
            continue;
        }
        match verdict {
            Ok(()) => {
                stats::record(&mut out.hist, elapsed);
                out.ok += 1;
                out.last = Some(Instant::now());
                plan.done.fetch_add(1, Ordering::Relaxed);
            }
            Err((kind, e)) => {
                out.errors.add(kind, &e);
                // Do not spin on a dead target.
                if kind != "wrong_answer" {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
    out
}

pub async fn run(a: CallsArgs) -> anyhow::Result<()> {
    if a.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let target = Target::from_args(&a.target).await?;
    let n_sessions = a.sessions.unwrap_or(a.concurrency).max(1);
    let t_open = Instant::now();
    // Children start slower than HTTP handshakes: fewer at once.
    let parallel = if matches!(target, Target::Stdio(_)) {
        8
    } else {
        32
    };
    let sessions = Arc::new(open_sessions(&target, n_sessions, parallel).await?);
    let open_s = t_open.elapsed().as_secs_f64();
    let call = Arc::new(EchoCall::new(&a.tool, a.payload, &a.expect_prefix));

    let measure_start = Instant::now() + Duration::from_secs_f64(a.warmup);
    let plan = Arc::new(Plan {
        measure_start,
        end: match a.requests {
            Some(_) => None,
            None => Some(measure_start + Duration::from_secs_f64(a.duration)),
        },
        remaining: a.requests.map(|r| AtomicI64::new(r as i64)),
        timeout: Duration::from_secs_f64(a.timeout),
        done: AtomicU64::new(0),
    });
    let bar = crate::progress(
        a.requests.unwrap_or((a.duration + a.warmup).ceil() as u64),
        &format!("calls c={}", a.concurrency),
    );
    let ticker = bar.clone().map(|pb| {
        let plan = plan.clone();
        let by_requests = a.requests.is_some();
        let start = Instant::now();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if by_requests {
                    pb.set_position(plan.done.load(Ordering::Relaxed));
                } else {
                    pb.set_position(start.elapsed().as_secs());
                }
            }
        })
    });

    let workers: Vec<_> = (0..a.concurrency)
        .map(|w| {
            tokio::spawn(worker(
                w,
                a.concurrency,
                sessions.clone(),
                call.clone(),
                plan.clone(),
            ))
        })
        .collect();
    // CPU is counted from the start of the measured window.
    tokio::time::sleep_until(measure_start.into()).await;
    let cpu = CpuWatch::start(&a.report.pids);
    let mut hist = stats::histogram();
    let mut errors = Errors::default();
    let mut ok = 0;
    let mut last = measure_start;
    for w in workers {
        let o = w.await?;
        hist.add(&o.hist).expect("same bounds");
        errors.merge(o.errors);
        ok += o.ok;
        if let Some(l) = o.last {
            last = last.max(l);
        }
    }
    let cpu = cpu.stop(ok);
    if let Some(t) = ticker {
        t.abort();
    }
    if let Some(pb) = bar {
        pb.finish_and_clear();
    }
    let window = match plan.end {
        Some(end) => end.max(last) - measure_start,
        None => last - measure_start,
    }
    .as_secs_f64();
    sessions.close().await;

    let rps = if window > 0.0 {
        ok as f64 / window
    } else {
        0.0
    };
    println!(
        "{}: {} c={} sessions={} payload={}B: {ok} ok, {} errors in {window:.2}s = {rps:.0} req/s",
        a.report.name("calls"),
        Target::describe(&a.target),
        a.concurrency,
        n_sessions,
        a.payload,
        errors.total()
    );
    println!("  {}", stats::fmt_summary("latency", &hist));
    for (k, (n, msg)) in &errors.by_kind {
        println!("  error {k} x{n}: {msg}");
    }
    let report = json!({
        "mode": "calls",
        "label": a.report.label,
        "target": Target::describe(&a.target),
        "concurrency": a.concurrency,
        "sessions": n_sessions,
        "sessions_open_s": open_s,
        "payload_bytes": a.payload,
        "tool": a.tool,
        "warmup_s": a.warmup,
        "window_s": window,
        "requests_ok": ok,
        "errors": errors.to_json(),
        "throughput_rps": rps,
        "latency": stats::summary(&hist),
        "cpu": cpu,
    });
    stats::write_json(a.report.json.as_deref(), &report)
}
