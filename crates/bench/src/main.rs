//! `shadowcat-bench`: a load generator for MCP servers and proxies.
//!
//! It drives real MCP sessions (Streamable HTTP or stdio) and checks every answer: a reply that is
//! not exactly what was asked for counts as an error. Numbers are reported, never judged.

mod calls;
mod chaos;
mod cold;
mod http;
mod idle;
mod list;
mod mcp;
mod pipeline;
mod resume;
mod sse;
mod stats;
mod stdio;
mod store;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;

/// Load generator for MCP servers and proxies (Streamable HTTP and stdio).
#[derive(Parser, Debug)]
#[command(name = "shadowcat-bench", version)]
struct Cli {
    /// Tokio worker threads of the generator (it shares the machine with what it measures).
    #[arg(long, global = true, default_value_t = 1, env = "BENCH_THREADS")]
    threads: usize,
    /// ACK every segment at once (TCP_QUICKACK re-armed after each read) instead of delaying
    /// ACKs: keeps the generator out of Nagle/delayed-ACK stalls of servers without TCP_NODELAY.
    #[arg(long, global = true, env = "BENCH_QUICKACK", action = clap::ArgAction::SetTrue,
          value_parser = clap::builder::FalseyValueParser::new())]
    quickack: bool,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Request/response load: N `tools/call` of an echo tool, every reply checked.
    Calls(calls::CallsArgs),
    /// Open N sessions, hold them idle and report the RSS of the given processes.
    IdleSessions(idle::IdleArgs),
    /// Server-sent notifications: events/s and per-event timing (`log` tool with a large count).
    Sse(sse::SseArgs),
    /// Resuming a dropped SSE stream (GET + Last-Event-ID): time to resume, replayed events/s,
    /// every event after the resume point exactly once.
    Resume(resume::ResumeArgs),
    /// Time from spawning a server/proxy to its first served request.
    ColdStart(cold::ColdArgs),
    /// A new session's first `tools/list` (all pages), timed; one new session per run.
    ListLatency(list::ListArgs),
    /// Session store operations per backend (memory, sqlite, redis): latency, appends/s.
    Store(store::StoreArgs),
    /// Cost per frame of the hook pipeline (none, interceptor rules, recorder), in process.
    Pipeline(pipeline::PipelineArgs),
    /// Malformed and hostile requests: every one must get a 4xx (bench/chaos.sh).
    ChaosHostile(chaos::HostileArgs),
    /// Calls under injected faults (`--fault SECS=CMD`): every call answered, none hangs;
    /// optionally the RSS of a process over time (bench/chaos.sh).
    ChaosLoad(chaos::LoadArgs),
    /// Wait until an MCP endpoint answers `initialize` (for scripts).
    Wait(WaitArgs),
}

#[derive(Args, Debug)]
struct WaitArgs {
    #[arg(long)]
    url: String,
    /// Seconds to keep trying.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
}

/// Which server to drive.
#[derive(Args, Debug, Clone)]
pub struct TargetArgs {
    /// Streamable HTTP endpoint, e.g. http://127.0.0.1:8080/mcp.
    #[arg(long, conflicts_with = "stdio")]
    pub url: Option<String>,
    /// Spawn the command after `--` and speak newline-delimited JSON-RPC on its stdio
    /// (one child per session).
    #[arg(long)]
    pub stdio: bool,
    /// The stdio server command (after `--`).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Where the report goes and what to watch.
#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// A name for this run, copied into the report.
    #[arg(long, default_value = "")]
    pub label: String,
    /// Process to watch (CPU, RSS; with its descendants), as NAME=PID or PID. Repeatable.
    #[arg(long = "pid", value_parser = stats::parse_pid)]
    pub pids: Vec<(String, u32)>,
}

impl ReportArgs {
    /// The run's name in what it prints: the label, or the mode's name.
    pub fn name<'a>(&'a self, mode: &'a str) -> &'a str {
        if self.label.is_empty() {
            mode
        } else {
            &self.label
        }
    }
}

pub enum Target {
    Http(Arc<http::HttpTarget>),
    Stdio(Vec<String>),
}

impl Target {
    pub async fn from_args(a: &TargetArgs) -> anyhow::Result<Target> {
        match (&a.url, a.stdio) {
            (Some(url), false) => Ok(Target::Http(http::HttpTarget::parse(url).await?)),
            (None, true) if !a.command.is_empty() => Ok(Target::Stdio(a.command.clone())),
            (None, true) => anyhow::bail!("--stdio needs a command after `--`"),
            _ => anyhow::bail!("give --url URL or --stdio -- CMD [ARGS…]"),
        }
    }

    pub fn describe(a: &TargetArgs) -> String {
        match &a.url {
            Some(u) => u.clone(),
            None => format!("stdio: {}", a.command.join(" ")),
        }
    }
}

/// A progress bar on stderr, only when stderr is a terminal.
pub fn progress(len: u64, what: &str) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = indicatif::ProgressBar::new(len);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_owned());
    Some(pb)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    http::QUICKACK.store(cli.quickack, std::sync::atomic::Ordering::Relaxed);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.mode {
            Mode::Calls(a) => calls::run(a).await,
            Mode::IdleSessions(a) => idle::run(a).await,
            Mode::Sse(a) => sse::run(a).await,
            Mode::Resume(a) => resume::run(a).await,
            Mode::ColdStart(a) => cold::run(a).await,
            Mode::ListLatency(a) => list::run(a).await,
            Mode::Store(a) => store::run(a).await,
            Mode::Pipeline(a) => pipeline::run(a).await,
            Mode::ChaosHostile(a) => chaos::hostile(a).await,
            Mode::ChaosLoad(a) => chaos::load(a).await,
            Mode::Wait(a) => {
                http::wait_ready(&a.url, std::time::Duration::from_secs_f64(a.timeout)).await
            }
        }
    })
}
