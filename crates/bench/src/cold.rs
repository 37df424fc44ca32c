//! `cold-start`: spawn a server (or proxy) and time it to its first served request.

use crate::ReportArgs;
use crate::http::{Conn, HttpTarget};
use crate::mcp::{self, EchoCall};
use crate::stats::{self, Errors};
use anyhow::{Context, anyhow, bail};
use clap::Args;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::json;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[derive(Args, Debug)]
pub struct ColdArgs {
    #[command(flatten)]
    pub report: ReportArgs,
    /// How many times to start the command.
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// Poll this URL instead of waiting for a `listening on http://ADDR` line on stderr.
    #[arg(long)]
    pub url: Option<String>,
    /// Text on stderr that precedes the listening URL.
    #[arg(long, default_value = "listening on http://")]
    pub ready_line: String,
    /// Endpoint path added to the address of the ready line.
    #[arg(long, default_value = "/mcp")]
    pub path: String,
    /// The tool called as the first request.
    #[arg(long, default_value = "echo")]
    pub tool: String,
    /// What the tool puts before the message in its answer.
    #[arg(long, default_value = "")]
    pub expect_prefix: String,
    /// Seconds a start may take before it counts as failed.
    #[arg(long, default_value_t = 20.0)]
    pub timeout: f64,
    /// The command that starts the server (after `--`).
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

struct Times {
    listening: Option<Duration>,
    initialized: Duration,
    first_call: Duration,
}

async fn one(a: &ColdArgs) -> anyhow::Result<Times> {
    let (program, args) = a.command.split_first().expect("required");
    let t0 = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot spawn {program}"))?;
    let pid = child.id().ok_or_else(|| anyhow!("no pid"))?;
    let stderr = child.stderr.take().expect("piped");
    let deadline = t0 + Duration::from_secs_f64(a.timeout);
    let result = async {
        let mut lines = BufReader::new(stderr).lines();
        let (url, listening) = match &a.url {
            Some(u) => (u.clone(), None),
            None => loop {
                let line = tokio::time::timeout_at(deadline.into(), lines.next_line())
                    .await
                    .map_err(|_| anyhow!("no `{}` line within {}s", a.ready_line, a.timeout))??
                    .ok_or_else(|| anyhow!("stderr closed before `{}`", a.ready_line))?;
                if let Some(pos) = line.find(&a.ready_line) {
                    let at = t0.elapsed();
                    let addr = line[pos + a.ready_line.len()..]
                        .split_whitespace()
                        .next()
                        .unwrap_or("")
                        .trim_end_matches('/');
                    break (format!("http://{addr}{}", a.path), Some(at));
                }
            },
        };
        // Keep draining stderr so the child never blocks on it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let target = HttpTarget::parse(&url).await?;
        let mut conn = Conn::new(target);
        let session = loop {
            match conn.handshake().await {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => return Err(e.context("initialize")),
                Err(_) => {
                    conn = Conn::new(conn.target().clone());
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        };
        let initialized = t0.elapsed();
        let call = EchoCall::new(&a.tool, 16, &a.expect_prefix);
        let id = mcp::next_id();
        let (body, expect) = call.request(id);
        let reply = conn.post(Some(&session), body).await?;
        if reply.status != ::http::StatusCode::OK {
            bail!("first call: HTTP {}", reply.status);
        }
        mcp::check_reply(reply.payloads().iter().map(Vec::as_slice), id, &expect)?;
        let first_call = t0.elapsed();
        let _ = conn.delete(&session).await;
        Ok(Times {
            listening,
            initialized,
            first_call,
        })
    }
    .await;
    // SIGTERM the whole group, then SIGKILL whatever is left.
    let pgid = Pid::from_raw(pid as i32);
    let _ = killpg(pgid, Signal::SIGTERM);
    if tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .is_err()
    {
        let _ = killpg(pgid, Signal::SIGKILL);
        let _ = child.wait().await;
    }
    let _ = killpg(pgid, Signal::SIGKILL);
    result
}

pub async fn run(a: ColdArgs) -> anyhow::Result<()> {
    let mut listening = stats::histogram();
    let mut initialized = stats::histogram();
    let mut first_call = stats::histogram();
    let mut errors = Errors::default();
    for _ in 0..a.runs {
        match one(&a).await {
            Ok(t) => {
                if let Some(l) = t.listening {
                    stats::record(&mut listening, l);
                }
                stats::record(&mut initialized, t.initialized);
                stats::record(&mut first_call, t.first_call);
            }
            Err(e) => errors.add("start", &e),
        }
    }
    println!(
        "{}: {} runs of `{}`, {} errors",
        a.report.name("cold-start"),
        a.runs,
        a.command.join(" "),
        errors.total()
    );
    println!(
        "  {}",
        stats::fmt_summary("spawn → listening line", &listening)
    );
    println!(
        "  {}",
        stats::fmt_summary("spawn → initialize answered", &initialized)
    );
    println!(
        "  {}",
        stats::fmt_summary("spawn → first tools/call answered", &first_call)
    );
    for (k, (n, msg)) in &errors.by_kind {
        println!("  error {k} x{n}: {msg}");
    }
    let report = json!({
        "mode": "cold-start",
        "label": a.report.label,
        "command": a.command.join(" "),
        "runs": a.runs,
        "errors": errors.to_json(),
        "listening": stats::summary(&listening),
        "initialized": stats::summary(&initialized),
        "first_call": stats::summary(&first_call),
    });
    stats::write_json(a.report.json.as_deref(), &report)
}
