//! `shadowcat replay TAPE`: the tape is the MCP server.

use super::hooks::{Describe, HookArgs, Hooks};
use crate::args::StoreArgs;
use anyhow::Context;
use clap::{Args, ValueEnum};
use shadowcat_proxy::forward::{StdioForward, forward_http, forward_stdio};
use shadowcat_proxy::front::http::{HttpFrontConfig, Targets};
use shadowcat_proxy::upstream::{TapeSource, TapeSpec, UpstreamOptions, UpstreamSpec};
use shadowcat_tape::replay::Strictness;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchArg {
    /// Method and params (without `_meta`) must equal a recorded request's.
    Exact,
    /// Method and tool/prompt name or resource URI; the closest recorded params answer.
    Name,
    /// Method only; the closest recorded params answer.
    Method,
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// The tape to serve.
    pub tape: PathBuf,
    /// Serve Streamable HTTP at /mcp on this address instead of stdio; every session replays
    /// the tape from its start.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Recorded delays are divided by this (2 = twice as fast; 0 = no delays at all).
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// How incoming requests are matched to recorded ones (`initialize` always matches by
    /// method, whatever the client says about itself).
    #[arg(long = "match", value_enum, value_name = "HOW", default_value_t = MatchArg::Exact)]
    pub strictness: MatchArg,
    /// Answer only from the tape. By default the replay answers `ping` and
    /// `logging/setLevel` itself when the tape has no such request (and `initialize` when it
    /// has none at all), so a tape recorded with one client replays to any other.
    #[arg(long)]
    pub strict: bool,
    /// No progress line (it is shown on stderr when stderr is a terminal).
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub hooks: HookArgs,
}

fn progress(src: Arc<TapeSource>, stop: CancellationToken) {
    let total = src.book.requests();
    tokio::spawn(async move {
        let mut last = (usize::MAX, usize::MAX);
        loop {
            let done = stop.is_cancelled();
            let now = (
                src.answered.load(Ordering::Relaxed),
                src.unmatched.load(Ordering::Relaxed),
            );
            if now != last || done {
                last = now;
                let width = 24;
                let filled = (now.0.min(total) * width)
                    .checked_div(total)
                    .unwrap_or(width);
                eprint!(
                    "\r\x1b[2Kreplay [{}{}] {} of {total} recorded requests answered, {} unmatched",
                    "#".repeat(filled),
                    "-".repeat(width - filled),
                    now.0,
                    now.1
                );
            }
            if done {
                eprintln!();
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stop.cancelled() => {}
            }
        }
    });
}

pub async fn run(a: ReplayArgs, log_traffic: bool) -> anyhow::Result<i32> {
    let strictness = match a.strictness {
        MatchArg::Exact => Strictness::Exact,
        MatchArg::Name => Strictness::Name,
        MatchArg::Method => Strictness::Method,
    };
    let src = Arc::new(
        TapeSource::load(&a.tape, a.speed, strictness)
            .with_context(|| format!("cannot replay {}", a.tape.display()))?
            .own_answers(!a.strict),
    );
    tracing::info!(
        tape = %a.tape.display(),
        requests = src.book.requests(),
        speed = a.speed,
        matching = %strictness,
        "replaying"
    );
    let spec = UpstreamSpec::Tape(TapeSpec(src.clone()));
    let describe = Describe {
        mode: "replay",
        front: if a.listen.is_some() { "http" } else { "stdio" },
        upstream: spec.describe(),
        headers: Vec::new(),
    };
    let hooks = Hooks::build(&a.hooks, log_traffic, describe).await?;
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    shadowcat_proxy::runtime::cancel_on_signals(shutdown.clone(), &tracker)?;
    let bar = CancellationToken::new();
    if !a.quiet && std::io::stderr().is_terminal() {
        progress(src.clone(), bar.clone());
    }
    let result = match a.listen {
        None => {
            let cfg = StdioForward {
                upstream: spec,
                max_line: 10 * 1024 * 1024,
                options: UpstreamOptions::default(),
                pipeline: hooks.pipeline.clone(),
            };
            forward_stdio(cfg, shutdown.clone(), |_| {})
                .await
                .map(|_| 0)
        }
        Some(addr) => {
            let config = HttpFrontConfig {
                targets: Targets {
                    default: Some(spec),
                    ..Targets::default()
                },
                ..HttpFrontConfig::default()
            };
            let store_args = StoreArgs {
                store: "memory".into(),
                redis_prefix: String::new(),
            };
            let store = super::session::open_store(&store_args, 1000, config.idle_timeout).await?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            let local = listener.local_addr()?;
            let ready = move || {
                tracing::info!("replay listening on http://{local}/mcp");
                eprintln!("shadowcat: listening on http://{local}");
            };
            let pipeline = hooks.pipeline.clone();
            forward_http(
                listener,
                config,
                pipeline,
                store,
                shutdown.clone(),
                ready,
                |_| {},
            )
            .await
            .map(|_| 0)
        }
    };
    bar.cancel();
    hooks.finish().await;
    shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(if a.quiet { 0 } else { 20 })).await;
    Ok(result?)
}
