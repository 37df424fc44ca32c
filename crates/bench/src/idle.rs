//! `idle-sessions`: open N sessions, leave them idle, and see what they cost in memory.

use crate::calls::{Sessions, fetch, open_sessions};
use crate::mcp::{self, EchoCall};
use crate::stats::{self, TreeInfo};
use crate::{ReportArgs, Target, TargetArgs};
use clap::Args;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct IdleArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub report: ReportArgs,
    /// Sessions to open.
    #[arg(long, default_value_t = 1000)]
    pub sessions: usize,
    /// Sessions opened at once.
    #[arg(long, short = 'c', default_value_t = 32)]
    pub concurrency: usize,
    /// Seconds to wait after opening before measuring memory.
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
    /// Seconds to keep the sessions open after measuring.
    #[arg(long, default_value_t = 0.0)]
    pub hold: f64,
    /// After measuring, call the echo tool on this many of the sessions (spread evenly) to show
    /// they are alive; every one must answer.
    #[arg(long, default_value_t = 100)]
    pub verify: usize,
    /// The tool used by --verify.
    #[arg(long, default_value = "echo")]
    pub tool: String,
    /// What the tool puts before the message in its answer.
    #[arg(long, default_value = "")]
    pub expect_prefix: String,
    /// DELETE every session at the end.
    #[arg(long)]
    pub delete: bool,
}

fn snapshot(pids: &[(String, u32)]) -> Vec<(String, u32, TreeInfo)> {
    pids.iter()
        .map(|(n, p)| (n.clone(), *p, stats::tree_info(*p)))
        .collect()
}

pub async fn run(a: IdleArgs) -> anyhow::Result<()> {
    let target = Target::from_args(&a.target).await?;
    let before = snapshot(&a.report.pids);
    let t0 = Instant::now();
    let sessions = open_sessions(&target, a.sessions, a.concurrency).await?;
    let open_s = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(a.settle)).await;
    let after = snapshot(&a.report.pids);

    // Are they real? Call the tool on a spread of them.
    let call = EchoCall::new(&a.tool, 16, &a.expect_prefix);
    let n = sessions.len();
    let k = a.verify.min(n);
    let mut verified = 0;
    let mut verify_errors = Vec::new();
    let mut conn = None;
    for i in 0..k {
        let s = i * n / k.max(1);
        let id = mcp::next_id();
        let (body, expect) = call.request(id);
        let r = fetch(&sessions, &mut conn, s, id, body)
            .await
            .map_err(|(_, e)| e)
            .and_then(|p| mcp::check_reply(p.iter().map(Vec::as_slice), id, &expect));
        match r {
            Ok(()) => verified += 1,
            Err(e) if verify_errors.len() < 3 => verify_errors.push(format!("{e:#}")),
            Err(_) => {}
        }
    }
    if a.hold > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(a.hold)).await;
    }
    if a.delete {
        close_all(&sessions, a.concurrency).await;
    }

    let mut procs = serde_json::Map::new();
    println!(
        "{}: {} sessions opened in {open_s:.2}s ({:.0}/s); verified {verified}/{k}",
        a.report.name("idle-sessions"),
        n,
        n as f64 / open_s.max(1e-9),
    );
    for ((name, pid, b), (_, _, af)) in before.iter().zip(after.iter()) {
        let per = |x: u64, y: u64| (y as f64 - x as f64) * 1024.0 / n.max(1) as f64;
        let rss_per = per(b.main.rss_kb, af.main.rss_kb);
        let kids_rss_per = per(b.children_rss_kb, af.children_rss_kb);
        let kids_pss_per = per(b.children_pss_kb, af.children_pss_kb);
        println!(
            "  {name} (pid {pid}): RSS {} → {} kB = {:.0} B/session; children {} → {}, RSS {} → {} kB ({:.0} B/session), PSS {} → {} kB ({:.0} B/session)",
            b.main.rss_kb,
            af.main.rss_kb,
            rss_per,
            b.children,
            af.children,
            b.children_rss_kb,
            af.children_rss_kb,
            kids_rss_per,
            b.children_pss_kb,
            af.children_pss_kb,
            kids_pss_per,
        );
        procs.insert(
            name.clone(),
            json!({
                "pid": pid,
                "before": b.to_json(),
                "after": af.to_json(),
                "rss_bytes_per_session": rss_per,
                "children_rss_bytes_per_session": kids_rss_per,
                "children_pss_bytes_per_session": kids_pss_per,
                "children_per_session": (af.children as f64 - b.children as f64) / n.max(1) as f64,
            }),
        );
    }
    for e in &verify_errors {
        println!("  verify error: {e}");
    }
    let report = json!({
        "mode": "idle-sessions",
        "label": a.report.label,
        "target": Target::describe(&a.target),
        "sessions": n,
        "open_s": open_s,
        "sessions_per_s": n as f64 / open_s.max(1e-9),
        "settle_s": a.settle,
        "verified": verified,
        "verify_attempted": k,
        "verify_errors": verify_errors,
        "processes": Value::Object(procs),
    });
    stats::write_json(a.report.json.as_deref(), &report)
}

async fn close_all(sessions: &Sessions, parallel: usize) {
    match sessions {
        Sessions::Http(t, v) => {
            let chunks: Vec<Vec<_>> = v
                .chunks(v.len().div_ceil(parallel.max(1)).max(1))
                .map(<[_]>::to_vec)
                .collect();
            let tasks: Vec<_> = chunks
                .into_iter()
                .map(|chunk| {
                    let t = t.clone();
                    tokio::spawn(async move {
                        let mut conn = crate::http::Conn::new(t);
                        for s in &chunk {
                            let _ = conn.delete(s).await;
                        }
                    })
                })
                .collect();
            for t in tasks {
                let _ = t.await;
            }
        }
        Sessions::Stdio(_) => sessions.close().await,
    }
}
