//! The observation and interception flags shared by the proxy modes (`--record`, `--rules`,
//! `--admin`, `--shadow`), the pipeline they build and the admin listener they start.

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use shadowcat_gateway::Gateway;
use shadowcat_proxy::admin::{AdminServer, Traffic};
use shadowcat_proxy::audit::{Arguments, Audit, AuditConfig, DEFAULT_KEEP, DEFAULT_MAX_BYTES};
use shadowcat_proxy::front::conn::ConnLimits;
use shadowcat_proxy::intercept::{Interceptor, PauseBoard};
use shadowcat_proxy::pipeline::{Hook, Pipeline, TrafficLog};
use shadowcat_proxy::record::{self, OnFull, RecordConfig, RecordHandle};
use shadowcat_proxy::shadow::Shadow;
use shadowcat_proxy::upstream::CONNECT_TIMEOUT;
use shadowcat_proxy::upstream::{HttpClient, UpstreamOptions, UpstreamSpec};
use shadowcat_tape::RedactConfig;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const DEFAULT_BUFFER: usize = 4096;
/// `--admin` without an address in the forward and replay modes.
const DEFAULT_ADMIN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7474);

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFullArg {
    /// Leave frames out of the tape (counted in its end line, warned about); the relay never waits.
    Drop,
    /// Backpressure: the relay waits for the disk; the tape is complete.
    Block,
}

#[derive(Args, Debug, Clone)]
pub struct HookArgs {
    /// Log every relayed message (direction, kind, id, method, name, size).
    #[arg(long, help_heading = "Logging")]
    pub log_traffic: bool,
    /// Record all traffic to a tape (JSON Lines, see docs/tape-format.md): a file (every
    /// session in one tape), or a directory (one tape per session; a path ending in `/` is
    /// created). Secrets are redacted before they reach the disk.
    #[arg(long, value_name = "PATH", help_heading = "Recording")]
    pub record: Option<PathBuf>,
    /// When the disk is slower than the traffic and the recording buffer is full: `drop` frames
    /// from the tape (counted in its end line and warned about; the relay never waits) or
    /// `block` (backpressure: traffic waits for the disk, the tape is complete).
    #[arg(long, value_enum, value_name = "POLICY", default_value_t = OnFullArg::Drop, help_heading = "Recording")]
    pub record_on_full: OnFullArg,
    /// Frames buffered between the relay and the tape writer.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_BUFFER, help_heading = "Recording")]
    pub record_buffer: usize,
    /// Also redact the value at this JSON pointer of every recorded message (repeatable),
    /// e.g. `/params/arguments/password`.
    #[arg(
        long = "redact-pointer",
        value_name = "POINTER",
        help_heading = "Recording"
    )]
    pub redact_pointers: Vec<String>,
    /// Also redact every match of this regex inside recorded JSON strings (repeatable).
    #[arg(
        long = "redact-regex",
        value_name = "REGEX",
        help_heading = "Recording"
    )]
    pub redact_patterns: Vec<String>,
    /// Interceptor rules (TOML, or YAML for *.yaml/*.yml; see docs/interceptor.md): block,
    /// modify, mock, delay or pause matching messages. The file is reloaded when it changes; a
    /// bad file keeps the old rules.
    #[arg(long, value_name = "FILE", help_heading = "Interception and shadowing")]
    pub rules: Option<PathBuf>,
    /// Serve the admin API and web page (paused messages for `shadowcat intercept`, live
    /// traffic; a gateway's sessions and upstreams) on this address. `--admin` alone:
    /// 127.0.0.1:7474, or for `gateway` its `[admin].listen` (default 127.0.0.1:7474 too).
    /// Anything but loopback needs --admin-token.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, help_heading = "Admin listener")]
    pub admin: Option<Option<SocketAddr>>,
    /// Token the admin API requires as `Authorization: Bearer TOKEN` (for `gateway`: replaces
    /// `[admin].token` / `token_env`).
    #[arg(
        long,
        env = "SHADOWCAT_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true,
        help_heading = "Admin listener"
    )]
    pub admin_token: Option<String>,
    /// Mirror every client request to this second server (a Streamable HTTP URL, or a command
    /// line): clients only see the primary's answers; differing replies are logged and counted.
    #[arg(
        long,
        value_name = "URL|CMD",
        help_heading = "Interception and shadowing"
    )]
    pub shadow: Option<String>,
    /// Record the shadow's traffic to its own tape (compare with `tape diff`).
    #[arg(
        long,
        value_name = "PATH",
        requires = "shadow",
        help_heading = "Interception and shadowing"
    )]
    pub record_shadow: Option<PathBuf>,
    /// Write an audit log: one JSON line per client request (who, what, where, outcome,
    /// latency, bytes, refusal reason) to this file (created with mode 0600, rotated by size),
    /// or `-` for standard output. See docs/audit.md.
    #[arg(long, value_name = "PATH|-", help_heading = "Audit log")]
    pub audit: Option<PathBuf>,
    /// What the audit log keeps of `tools/call` and `prompts/get` arguments: `none`, `hash`
    /// (an HMAC-SHA256, keyed by --audit-hash-key) or `redacted` (with the --redact-* rules).
    #[arg(long, value_enum, value_name = "WHAT", help_heading = "Audit log")]
    pub audit_arguments: Option<AuditArgumentsArg>,
    /// Rotate the audit log file when it would grow past this many bytes [default: 104857600].
    #[arg(long, value_name = "BYTES", help_heading = "Audit log")]
    pub audit_max_bytes: Option<u64>,
    /// Rotated audit log files kept (PATH.1 … PATH.N) [default: 5].
    #[arg(long, value_name = "N", help_heading = "Audit log")]
    pub audit_keep: Option<usize>,
    /// Key of the arguments' HMAC (`--audit-arguments hash`), so that hashes compare across
    /// replicas and restarts; without it a random key per process.
    #[arg(
        long,
        env = "SHADOWCAT_AUDIT_HASH_KEY",
        value_name = "KEY",
        hide_env_values = true,
        help_heading = "Audit log"
    )]
    pub audit_hash_key: Option<String>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditArgumentsArg {
    /// Leave arguments out.
    None,
    /// An HMAC-SHA256 of the arguments.
    Hash,
    /// The arguments with the redaction rules applied.
    Redacted,
}

impl From<AuditArgumentsArg> for Arguments {
    fn from(a: AuditArgumentsArg) -> Arguments {
        match a {
            AuditArgumentsArg::None => Arguments::None,
            AuditArgumentsArg::Hash => Arguments::Hash,
            AuditArgumentsArg::Redacted => Arguments::Redacted,
        }
    }
}

impl HookArgs {
    /// The audit log these flags ask for, on top of `base` (the gateway's `[audit]`): a flag
    /// wins over the file. `None`: no audit log.
    pub fn audit_config(
        &self,
        base: Option<AuditConfig>,
        replica: Option<String>,
    ) -> anyhow::Result<Option<AuditConfig>> {
        let mut cfg = match (&self.audit, base) {
            (None, None) => {
                if self.audit_arguments.is_some()
                    || self.audit_max_bytes.is_some()
                    || self.audit_keep.is_some()
                {
                    bail!(
                        "--audit-arguments, --audit-max-bytes and --audit-keep apply to the audit \
                         log: add --audit PATH (or, for the gateway, an [audit] section)"
                    );
                }
                return Ok(None);
            }
            (Some(_), Some(b)) | (None, Some(b)) => b,
            (Some(_), None) => AuditConfig {
                path: None,
                arguments: Arguments::None,
                max_bytes: DEFAULT_MAX_BYTES,
                keep: DEFAULT_KEEP,
                replica: None,
                redact: RedactConfig::default(),
                hash_key: None,
            },
        };
        if let Some(p) = &self.audit {
            cfg.path = (p.as_os_str() != "-").then(|| p.clone());
        }
        if let Some(a) = self.audit_arguments {
            cfg.arguments = a.into();
        }
        if let Some(n) = self.audit_max_bytes {
            cfg.max_bytes = n;
        }
        if let Some(n) = self.audit_keep {
            cfg.keep = n;
        }
        if self.audit_hash_key.is_some() {
            cfg.hash_key = self.audit_hash_key.clone();
        }
        cfg.redact.pointers.extend(self.redact_pointers.clone());
        cfg.redact.patterns.extend(self.redact_patterns.clone());
        cfg.replica = cfg.replica.or(replica);
        Ok(Some(cfg))
    }
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

/// Where an admin listener goes and what it serves besides paused messages and live traffic.
pub struct AdminPlan {
    pub addr: SocketAddr,
    pub token: Option<String>,
    /// A gateway's sessions, upstreams, metrics and (redacted) configuration.
    pub gateway: Option<Arc<Gateway>>,
    /// Connection timeouts and limit (those of the proxy's own listener).
    pub conn: ConnLimits,
}

/// The hooks of a running proxy and what must be stopped with it.
pub struct Hooks {
    pub pipeline: Pipeline,
    /// The same hooks, for compositions that insert their own (the gateway).
    hooks: Vec<Arc<dyn Hook>>,
    recorders: Vec<RecordHandle>,
    shadow: Option<(Arc<Shadow>, TaskTracker)>,
    stop: CancellationToken,
    /// The admin listener's task, and the audit log's flushing.
    admin: TaskTracker,
    audit: Option<Arc<Audit>>,
}

impl Hooks {
    /// The pipeline of the forward and replay modes (the admin listener, if asked for, serves
    /// paused messages and live traffic).
    pub async fn build(a: &HookArgs, log_traffic: bool, d: Describe<'_>) -> anyhow::Result<Hooks> {
        Hooks::build_limited(a, log_traffic, d, ConnLimits::default(), Vec::new()).await
    }

    /// [`Hooks::build`] with the admin listener's connection limits, and `early` hooks of the
    /// mode's own run first (after the traffic log: pinning).
    pub async fn build_limited(
        a: &HookArgs,
        log_traffic: bool,
        d: Describe<'_>,
        conn: ConnLimits,
        early: Vec<Arc<dyn Hook>>,
    ) -> anyhow::Result<Hooks> {
        let admin = a.admin.map(|addr| AdminPlan {
            addr: addr.unwrap_or(DEFAULT_ADMIN),
            token: a.admin_token.clone(),
            gateway: None,
            conn,
        });
        Hooks::assemble(a, log_traffic, d, admin, a.audit_config(None, None)?, early).await
    }

    /// The hooks, in order.
    pub fn list(&self) -> Vec<Arc<dyn Hook>> {
        self.hooks.clone()
    }

    /// The audit log, when one is written (the gateway writes its own refusals there too).
    pub fn audit(&self) -> Option<Arc<Audit>> {
        self.audit.clone()
    }

    /// Build the pipeline: traffic log → interceptor → shadow → recorder → live traffic →
    /// audit log (so tapes, the shadow and the admin's live view get what was relayed, and the
    /// audit log every refusal and the answers as clients get them), and start the admin
    /// listener of `admin`.
    pub async fn assemble(
        a: &HookArgs,
        log_traffic: bool,
        d: Describe<'_>,
        admin: Option<AdminPlan>,
        audit: Option<AuditConfig>,
        early: Vec<Arc<dyn Hook>>,
    ) -> anyhow::Result<Hooks> {
        let recording_asked = a.record.is_some() || a.record_shadow.is_some();
        if !recording_asked
            && (a.record_on_full != OnFullArg::Drop || a.record_buffer != DEFAULT_BUFFER)
        {
            bail!(
                "--record-on-full and --record-buffer apply to recordings: add --record PATH (or \
                 --record-shadow PATH)"
            );
        }
        if !recording_asked
            && audit.is_none()
            && (!a.redact_pointers.is_empty() || !a.redact_patterns.is_empty())
        {
            bail!(
                "--redact-pointer and --redact-regex apply to recordings and the audit log: add \
                 --record PATH (or --record-shadow PATH, or --audit PATH)"
            );
        }
        if d.front == "stdio" && audit.as_ref().is_some_and(|c| c.path.is_none()) {
            bail!(
                "--audit - would write into the MCP messages on standard output: give the audit \
                 log a file"
            );
        }
        let stop = CancellationToken::new();
        let mut hooks: Vec<Arc<dyn Hook>> = Vec::new();
        if log_traffic {
            hooks.push(Arc::new(TrafficLog));
        }
        hooks.extend(early);
        let board = Arc::new(PauseBoard::default());
        if let Some(path) = &a.rules {
            let rules = shadowcat_proxy::intercept::load(path)?;
            tracing::info!(path = %path.display(), rules = rules.rules.len(), "interceptor rules loaded");
            let icpt = Interceptor::new(rules, board.clone());
            icpt.watch(path.clone(), Duration::from_millis(500), stop.clone());
            hooks.push(icpt);
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
        let tasks = TaskTracker::new();
        if let Some(plan) = admin {
            let traffic = Traffic::new();
            hooks.push(traffic.clone());
            let server = start_admin(plan, a.rules.is_some().then_some(board), traffic).await?;
            let s = stop.clone();
            tasks.spawn(async move {
                if let Err(e) = server.serve(s).await {
                    tracing::error!(error = %e, "the admin listener failed");
                }
            });
        }
        // With spans exported: a span per request, its context passed upstream in `_meta`.
        if let Some(trace) = shadowcat_proxy::tracecontext::TraceHook::new() {
            hooks.push(trace);
        }
        // Last: it sees the other hooks' refusals, and answers as the client gets them.
        let audit = match audit {
            Some(cfg) => {
                let audit = Audit::open(&cfg, &tasks, stop.clone())?;
                match &cfg.path {
                    Some(p) => tracing::info!(path = %p.display(), "writing the audit log"),
                    None => tracing::info!("writing the audit log to standard output"),
                }
                hooks.push(audit.clone());
                Some(audit)
            }
            None => None,
        };
        Ok(Hooks {
            pipeline: Pipeline::new(hooks.clone()),
            hooks,
            recorders,
            shadow,
            stop,
            admin: tasks,
            audit,
        })
    }

    /// Stop watching, serving and mirroring, and close the tapes (end lines written, files
    /// flushed).
    pub async fn finish(self) {
        self.stop.cancel();
        self.admin.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.admin.wait()).await;
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
        if let Some(a) = &self.audit {
            a.flush();
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

/// An admin listener bound to its address, ready to serve.
struct BoundAdmin {
    listener: tokio::net::TcpListener,
    server: AdminServer,
}

impl BoundAdmin {
    async fn serve(self, stop: CancellationToken) -> std::io::Result<()> {
        self.server.serve(self.listener, stop).await
    }
}

/// Bind the admin listener (refused beyond loopback without a token) and say where it is.
async fn start_admin(
    plan: AdminPlan,
    board: Option<Arc<PauseBoard>>,
    traffic: Arc<Traffic>,
) -> anyhow::Result<BoundAdmin> {
    let addr = plan.addr;
    if !addr.ip().is_loopback() && plan.token.is_none() {
        bail!(
            "the admin API would listen on {addr}, beyond loopback, without a token: set \
             --admin-token (or SHADOWCAT_ADMIN_TOKEN; for gateway `[admin].token_env`), or \
             listen on 127.0.0.1"
        );
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for the admin API"))?;
    let local = listener.local_addr()?;
    let mut server = AdminServer::new(plan.token)
        .traffic(traffic)
        .limits(plan.conn);
    if let Some(b) = board {
        server = server.intercept(b);
    }
    if let Some(gw) = &plan.gateway {
        server = server.extension("gateway", shadowcat_gateway::admin::routes(gw.clone()));
    }
    tracing::info!("admin API and page on http://{local}/");
    // Machine-readable line for scripts and tests that listen on port 0.
    eprintln!("shadowcat: admin listening on http://{local}");
    Ok(BoundAdmin { listener, server })
}

/// `--shadow`: an http(s) URL (Streamable HTTP) or a command line.
fn shadow_spec(target: &str, headers: &[(String, String)]) -> anyhow::Result<UpstreamSpec> {
    if target.starts_with("http://") || target.starts_with("https://") {
        return Ok(UpstreamSpec::http(target, headers.to_vec()));
    }
    let mut words = target.split_whitespace().map(str::to_string);
    let command = words.next().context("--shadow needs a URL or a command")?;
    Ok(UpstreamSpec::stdio(command, words.collect()))
}
