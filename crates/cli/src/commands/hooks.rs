//! The observation and interception flags shared by the proxy modes (`--record`, `--rules`,
//! `--admin`) and the pipeline they build.

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use shadowcat_proxy::forward::CONNECT_TIMEOUT;
use shadowcat_proxy::intercept::{Interceptor, PauseBoard};
use shadowcat_proxy::pipeline::{Hook, Pipeline, TrafficLog};
use shadowcat_proxy::record::{self, OnFull, RecordConfig, RecordHandle};
use shadowcat_proxy::shadow::Shadow;
use shadowcat_proxy::upstream::{HttpClient, UpstreamOptions, UpstreamSpec};
use shadowcat_tape::RedactConfig;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const DEFAULT_BUFFER: usize = 4096;

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFullArg {
    /// Leave frames out of the tape (counted in its end line, warned about); the relay never waits.
    Drop,
    /// Backpressure: the relay waits for the disk; the tape is complete.
    Block,
}

#[derive(Args, Debug, Clone)]
pub struct HookArgs {
    /// Record all traffic to a tape (JSON Lines, see docs/tape-format.md): a file (every
    /// session in one tape), or a directory (one tape per session; a path ending in `/` is
    /// created). Secrets are redacted before they reach the disk.
    #[arg(long, value_name = "PATH")]
    pub record: Option<PathBuf>,
    /// When the disk is slower than the traffic and the recording buffer is full: `drop` frames
    /// from the tape (counted in its end line and warned about; the relay never waits) or
    /// `block` (backpressure: traffic waits for the disk, the tape is complete).
    #[arg(long, value_enum, value_name = "POLICY", default_value_t = OnFullArg::Drop)]
    pub record_on_full: OnFullArg,
    /// Frames buffered between the relay and the tape writer.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_BUFFER)]
    pub record_buffer: usize,
    /// Also redact the value at this JSON pointer of every recorded message (repeatable),
    /// e.g. `/params/arguments/password`.
    #[arg(long = "redact-pointer", value_name = "POINTER")]
    pub redact_pointers: Vec<String>,
    /// Also redact every match of this regex inside recorded JSON strings (repeatable).
    #[arg(long = "redact-regex", value_name = "REGEX")]
    pub redact_patterns: Vec<String>,
    /// Interceptor rules (TOML, or YAML for *.yaml/*.yml; see docs/interceptor.md): block,
    /// modify, mock, delay or pause matching messages. The file is reloaded when it changes; a
    /// bad file keeps the old rules.
    #[arg(long, value_name = "FILE")]
    pub rules: Option<PathBuf>,
    /// Serve the admin API (paused messages, for `shadowcat intercept`) on this address
    /// (`--admin` alone: 127.0.0.1:7474).
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:7474")]
    pub admin: Option<SocketAddr>,
    /// Token the admin API requires as `Authorization: Bearer TOKEN`.
    #[arg(
        long,
        env = "SHADOWCAT_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// Mirror every client request to this second server (a Streamable HTTP URL, or a command
    /// line): clients only see the primary's answers; differing replies are logged and counted.
    #[arg(long, value_name = "URL|CMD")]
    pub shadow: Option<String>,
    /// Record the shadow's traffic to its own tape (compare with `tape diff`).
    #[arg(long, value_name = "PATH", requires = "shadow")]
    pub record_shadow: Option<PathBuf>,
}

/// What the tape header says about the proxy.
pub struct Describe<'a> {
    /// `forward-stdio`, `forward-http`, …
    pub mode: &'a str,
    /// `stdio` or `http`.
    pub front: &'a str,
    /// The upstream(s).
    pub upstream: String,
    /// Headers sent to HTTP upstreams.
    pub headers: Vec<(String, String)>,
}

/// The hooks of a running proxy and what must be stopped with it.
pub struct Hooks {
    pub pipeline: Pipeline,
    recorders: Vec<RecordHandle>,
    shadow: Option<(Arc<Shadow>, TaskTracker)>,
    stop: CancellationToken,
}

impl Hooks {
    /// Build the pipeline: traffic log → interceptor → shadow → recorder (so tapes and the shadow
    /// get what was relayed).
    pub async fn build(a: &HookArgs, log_traffic: bool, d: Describe<'_>) -> anyhow::Result<Hooks> {
        let recording_asked = a.record.is_some() || a.record_shadow.is_some();
        if !recording_asked
            && (!a.redact_pointers.is_empty()
                || !a.redact_patterns.is_empty()
                || a.record_on_full != OnFullArg::Drop
                || a.record_buffer != DEFAULT_BUFFER)
        {
            bail!(
                "--redact-pointer, --redact-regex, --record-on-full and --record-buffer apply to \
                 recordings: add --record PATH (or --record-shadow PATH)"
            );
        }
        let stop = CancellationToken::new();
        let mut hooks: Vec<Arc<dyn Hook>> = Vec::new();
        if log_traffic {
            hooks.push(Arc::new(TrafficLog));
        }
        let board = Arc::new(PauseBoard::default());
        if let Some(path) = &a.rules {
            let rules = shadowcat_proxy::intercept::load(path)?;
            tracing::info!(path = %path.display(), rules = rules.rules.len(), "interceptor rules loaded");
            let icpt = Interceptor::new(rules, board.clone());
            icpt.watch(path.clone(), Duration::from_millis(500), stop.clone());
            hooks.push(icpt);
        }
        if let Some(addr) = a.admin {
            if a.rules.is_none() {
                tracing::warn!("--admin without --rules: nothing can be paused");
            }
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for the admin API"))?;
            let local = listener.local_addr()?;
            if !local.ip().is_loopback() && a.admin_token.is_none() {
                tracing::warn!(%local, "the admin API listens beyond loopback without --admin-token");
            }
            eprintln!("shadowcat: admin listening on http://{local}");
            let (b, token, s) = (board.clone(), a.admin_token.clone(), stop.clone());
            tokio::spawn(async move {
                if let Err(e) = shadowcat_proxy::admin::serve(listener, b, token, s).await {
                    tracing::error!(error = %e, "the admin API failed");
                }
            });
        }
        let mut recorders = Vec::new();
        let recording = |path: &PathBuf, mode: &str, upstream: String| RecordConfig {
            path: path.clone(),
            mode: mode.to_string(),
            front: d.front.to_string(),
            upstream,
            upstream_headers: d.headers.clone(),
            redact: RedactConfig {
                pointers: a.redact_pointers.clone(),
                patterns: a.redact_patterns.clone(),
            },
            capacity: a.record_buffer,
            on_full: match a.record_on_full {
                OnFullArg::Drop => OnFull::Drop,
                OnFullArg::Block => OnFull::Block,
            },
        };
        // Order: interceptor → shadow (mirrors what is relayed) → recorder.
        let mut shadow = None;
        if let Some(target) = &a.shadow {
            let spec = shadow_spec(target, &d.headers)?;
            let recorder = match &a.record_shadow {
                Some(path) => {
                    let (hook, handle) = record::start(recording(path, "shadow", spec.describe()))?;
                    recorders.push(handle);
                    Some(hook)
                }
                None => None,
            };
            let tracker = TaskTracker::new();
            let s = Shadow::new(
                spec,
                UpstreamOptions::default(),
                HttpClient::new(CONNECT_TIMEOUT)?,
                recorder,
                tracker.clone(),
                stop.child_token(),
            );
            tracing::info!(shadow = %target, "mirroring client requests to a shadow upstream");
            hooks.push(s.clone());
            shadow = Some((s, tracker));
        }
        if let Some(path) = &a.record {
            let (hook, handle) = record::start(recording(path, d.mode, d.upstream.clone()))?;
            hooks.push(hook);
            recorders.push(handle);
        }
        Ok(Hooks {
            pipeline: Pipeline::new(hooks),
            recorders,
            shadow,
            stop,
        })
    }

    /// Stop watching, serving and mirroring, and close the tapes (end lines written, files
    /// flushed).
    pub async fn finish(self) {
        self.stop.cancel();
        if let Some((shadow, tracker)) = self.shadow {
            tracker.close();
            let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
            let s = shadow.stats();
            tracing::info!(
                compared = s.compared,
                differed = s.differed,
                not_mirrored = s.dropped,
                "shadow traffic summary"
            );
        }
        for r in self.recorders {
            let dropped = r.dropped();
            r.finish(Duration::from_secs(5)).await;
            if dropped > 0 {
                tracing::warn!(
                    dropped,
                    "frames were left out of the tape (disk slower than traffic)"
                );
            }
        }
    }
}

/// `--shadow`: an http(s) URL (Streamable HTTP) or a command line.
fn shadow_spec(target: &str, headers: &[(String, String)]) -> anyhow::Result<UpstreamSpec> {
    if target.starts_with("http://") || target.starts_with("https://") {
        return Ok(UpstreamSpec::http(target, headers.to_vec()));
    }
    let mut words = target.split_whitespace().map(str::to_string);
    let command = words.next().context("--shadow needs a URL or a command")?;
    Ok(UpstreamSpec::Stdio {
        command,
        args: words.collect(),
    })
}
