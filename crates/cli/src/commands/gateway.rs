//! `shadowcat gateway` (alias `reverse`): the production front door for MCP servers.
//!
//! Settings come from a TOML file (`--config`, see `examples/gateway.toml`); for the simple case
//! the flags alone are enough (`--upstream URL`…, `--server NAME=URL|CMD`… for a composite
//! route, or `-- CMD`). Flags override the file, and
//! every flag can also be given as a `SHADOWCAT_*` environment variable. `--record`, `--rules`
//! and `--admin` work as in the forward modes; the admin listener also serves the gateway's
//! sessions, upstreams and configuration (`[admin]`).
//!
//! The configuration reloads on `SIGHUP`, on `POST /admin/reload` (admin listener) and, with
//! `--watch`, when the file changes: the file is read and checked again with the same flags
//! applied, and the gateway swaps it in or keeps the running one (see
//! `shadowcat_gateway::reload`).

use super::hooks::{AdminPlan, Describe, HookArgs, Hooks};
use super::servers::Place;
use crate::args::StoreArgs;
use crate::args::UpstreamTransport;
use anyhow::{Context, bail};
use clap::Args;
use shadowcat_gateway::config::{
    AdminConfig, MemberConfig, RouteConfig, Strategy, UpstreamConfig, UrlTransport,
};
use shadowcat_gateway::{ConfigError, Gateway, GatewayConfig, GatewayHooks, Trigger, gateway};
use shadowcat_proxy::pipeline::{Hook, TrafficLog};
use shadowcat_proxy::upstream::UpstreamSpec;
use shadowcat_store::{FailoverStore, MeteredStore, OnOutage, SessionStore};
use shadowcat_tape::Redactor;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// `shadowcat gateway`.
#[derive(Args, Debug)]
pub struct GatewayArgs {
    /// Configuration file (TOML): routes, upstream sets, auth, limits. See examples/gateway.toml.
    #[arg(long, short = 'c', env = "SHADOWCAT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Reload the configuration when the file changes (checked every 500 ms; applied once
    /// it has stopped changing). `SIGHUP` and `POST /admin/reload` reload it too, with or
    /// without this flag; a file that does not pass `config check` is refused and the
    /// running configuration stays in force.
    #[arg(long, requires = "config")]
    pub watch: bool,
    /// Reviewed tool pins (from `shadowcat pins export` or `tape pins`), written into the store
    /// at start: their definitions are the approved ones on routes with `pinning`.
    #[arg(long, value_name = "FILE")]
    pub pins: Option<PathBuf>,
    /// Address to listen on (overrides `server.listen`; default 127.0.0.1:8080).
    #[arg(long, env = "SHADOWCAT_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Upstream URL for /mcp (repeatable, or comma-separated in the variable); replaces the
    /// upstreams of the file's /mcp route.
    #[arg(
        long = "upstream",
        env = "SHADOWCAT_UPSTREAMS",
        value_delimiter = ',',
        value_name = "URL"
    )]
    pub upstreams: Vec<String>,
    /// A member server of a composite /mcp route: `NAME=URL` or `NAME=CMD ARGS` (repeatable;
    /// `sse+`/`auto+` before a URL picks its transport). Each session is one session over all
    /// of them: tools and prompts as `NAME__tool`, resources as `NAME+uri`. Replaces the file's
    /// /mcp route's upstreams or servers.
    #[arg(long = "server", value_name = "NAME=URL|CMD")]
    pub servers: Vec<String>,
    /// Balancing of the /mcp route given by --upstream / -- CMD / --demo: round-robin,
    /// weighted-round-robin, least-in-flight, random, consistent-hash.
    #[arg(long, env = "SHADOWCAT_BALANCE", value_name = "STRATEGY", value_parser = parse_strategy)]
    pub balance: Option<Strategy>,
    /// Session store: `memory`, `sqlite:PATH`, `redis://…`, `redis+cluster://HOST:PORT[,…]`
    /// or `redis+sentinel://HOST:PORT[,…]/SERVICE[/DB]` (overrides `server.store`).
    #[arg(long, env = "SHADOWCAT_STORE")]
    pub store: Option<String>,
    /// Public base URL of the gateway, used in OAuth metadata (overrides `server.public_url`;
    /// required with `[auth]`).
    #[arg(long, env = "SHADOWCAT_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,
    /// This replica's id in the session store (overrides `server.replica_id`; default: the
    /// host name). Replicas sharing a store need distinct ids.
    #[arg(long, env = "SHADOWCAT_REPLICA_ID", value_name = "ID")]
    pub replica_id: Option<String>,
    /// Use the built-in demo server (one child per session) as the /mcp upstream.
    #[arg(long)]
    pub demo: bool,
    /// Threads serving client connections (overrides `server.workers`; default: one per CPU).
    #[arg(long, env = "SHADOWCAT_WORKERS", value_name = "N")]
    pub workers: Option<usize>,
    /// Keep this many children of the stdio upstream given by `-- CMD` or --demo running ahead
    /// of need, so new sessions do not wait for a spawn (0..=64).
    #[arg(long, env = "SHADOWCAT_SPARES", value_name = "N")]
    pub spares: Option<u32>,
    /// Most live sessions of one authenticated principal, every kind of session together
    /// (overrides `server.max_sessions_per_principal`); more get 503 with Retry-After.
    #[arg(long, env = "SHADOWCAT_MAX_SESSIONS_PER_PRINCIPAL", value_name = "N")]
    pub max_sessions_per_principal: Option<usize>,
    /// `/metrics` requires `Authorization: Bearer TOKEN`, the token read from this environment
    /// variable at start (overrides `metrics.token_env`; default: `/metrics` is open).
    #[arg(long, env = "SHADOWCAT_METRICS_TOKEN_ENV", value_name = "VAR")]
    pub metrics_token_env: Option<String>,
    #[command(flatten)]
    pub hooks: HookArgs,
    /// A stdio MCP server for /mcp (after `--`): one child per session.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

fn parse_strategy(s: &str) -> Result<Strategy, String> {
    Strategy::parse(s).ok_or_else(|| {
        format!(
            "`{s}` is not a strategy: use round-robin, weighted-round-robin, least-in-flight, random or consistent-hash"
        )
    })
}

/// The configuration after flags and environment: the file's, with overrides applied, validated.
/// Returns it with the name used in error messages.
pub fn load(a: &GatewayArgs) -> anyhow::Result<(GatewayConfig, String)> {
    let (mut cfg, source) = match &a.config {
        Some(path) => {
            // Parse only: validation runs once the overrides are applied.
            let file = path.display().to_string();
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("{file}: cannot read the configuration file"))?;
            (GatewayConfig::parse(&file, &text)?, file)
        }
        None => (GatewayConfig::default(), "command line".to_string()),
    };
    if let Some(w) = a.workers {
        cfg.server.workers = Some(w);
    }
    if let Some(n) = a.max_sessions_per_principal {
        cfg.server.max_sessions_per_principal = Some(n);
    }
    if let Some(l) = a.listen {
        cfg.server.listen = l;
    }
    if let Some(s) = &a.store {
        cfg.server.store = s.clone();
    }
    if let Some(u) = &a.public_url {
        cfg.server.public_url = Some(u.clone());
    }
    if let Some(id) = &a.replica_id {
        cfg.server.replica_id = Some(id.clone());
    }
    if let Some(var) = &a.metrics_token_env {
        cfg.metrics.token_env = Some(var.clone());
    }
    let mut upstreams: Vec<UpstreamConfig> = a
        .upstreams
        .iter()
        .filter(|u| !u.trim().is_empty())
        .map(|u| UpstreamConfig {
            url: Some(u.trim().to_string()),
            weight: 1,
            ..UpstreamConfig::default()
        })
        .collect();
    let spares = a.spares.unwrap_or(0);
    if let Some((cmd, args)) = a.command.split_first() {
        upstreams.push(UpstreamConfig {
            command: Some(cmd.clone()),
            args: args.to_vec(),
            weight: 1,
            spares,
            ..UpstreamConfig::default()
        });
    }
    if a.demo {
        let exe = std::env::current_exe().context("cannot find this executable for --demo")?;
        upstreams.push(UpstreamConfig {
            command: Some(exe.to_string_lossy().into_owned()),
            args: vec!["demo-server".into()],
            weight: 1,
            spares,
            ..UpstreamConfig::default()
        });
    }
    if a.spares.is_some() && a.command.is_empty() && !a.demo {
        bail!("--spares applies to the stdio upstream given by -- CMD or --demo");
    }
    let servers = a
        .servers
        .iter()
        .map(|raw| member(raw))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if !servers.is_empty() && !upstreams.is_empty() {
        bail!(
            "--server makes /mcp a composite route; --upstream, --demo and -- CMD make it an \
             upstream set: give one or the other"
        );
    }
    if !servers.is_empty() && a.balance.is_some() {
        bail!("--balance does not apply to the composite /mcp route given by --server");
    }
    if !upstreams.is_empty() || !servers.is_empty() {
        match cfg.routes.iter_mut().find(|r| r.path == "/mcp") {
            Some(r) => {
                r.upstreams = upstreams;
                r.servers = servers;
            }
            None => cfg.routes.push(RouteConfig {
                path: "/mcp".into(),
                balance: Strategy::default(),
                scopes: Vec::new(),
                failover: true,
                eject_for: shadowcat_gateway::config::Dur(Duration::from_secs(10)),
                connect_timeout: shadowcat_gateway::config::Dur(Duration::from_secs(2)),
                upstreams,
                servers,
                names: None,
                tools: Vec::new(),
                failure: None,
                page_size: None,
                pinning: Default::default(),
                new_tools: Default::default(),
                rules: Vec::new(),
                default_effect: Default::default(),
                health: None,
                breaker: Default::default(),
                retry: Default::default(),
                request_timeout: shadowcat_gateway::resilience::default_request_timeout(),
                sse_idle_timeout: shadowcat_gateway::resilience::default_sse_idle_timeout(),
            }),
        }
        if let Some(b) = a.balance
            && let Some(r) = cfg.routes.iter_mut().find(|r| r.path == "/mcp")
        {
            r.balance = b;
        }
    } else if a.balance.is_some() {
        bail!("--balance applies to the /mcp route given by --upstream, -- CMD or --demo");
    }
    if let Some(addr) = a.hooks.admin {
        let admin = cfg.admin.get_or_insert_with(AdminConfig::default);
        admin.enabled = true;
        if let Some(addr) = addr {
            admin.listen = addr;
        }
    }
    if let Some(token) = &a.hooks.admin_token {
        match cfg.admin.as_mut() {
            Some(admin) => {
                admin.token = Some(token.clone());
                admin.token_env = None;
            }
            None => tracing::warn!(
                "an admin token is given (--admin-token / SHADOWCAT_ADMIN_TOKEN) but the admin \
                 listener is off: add --admin or an [admin] section"
            ),
        }
    }
    if a.config.is_none() && cfg.routes.is_empty() {
        bail!(
            "no upstream: give --config FILE, --upstream URL (repeatable), --server NAME=URL|CMD \
             (repeatable), --demo or -- CMD [ARGS…]"
        );
    }
    cfg.validate(&source)?;
    Ok((cfg, source))
}

/// The problems of a configuration that could not be loaded, one line each (a file's as
/// `config check` prints them).
fn problems(e: &anyhow::Error) -> Vec<String> {
    match e.downcast_ref::<ConfigError>() {
        Some(c) => c.to_string().lines().map(str::to_string).collect(),
        None => vec![format!("{e:#}")],
    }
}

/// `SIGHUP` reloads the configuration (until `stop`).
fn reload_on_hangup(
    gw: &Arc<Gateway>,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let (gw, stop) = (gw.clone(), stop.clone());
    tracker.spawn(async move {
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    tracing::info!("SIGHUP received; reloading the configuration");
                    gw.reload(Trigger::Signal).await;
                }
                _ = stop.cancelled() => return,
            }
        }
    });
    Ok(())
}

/// How often `--watch` looks at the file.
const WATCH_EVERY: Duration = Duration::from_millis(500);
/// A changed file is read once it looks the same this long apart (an editor or a deploy tool
/// may write it in steps)…
const SETTLE: Duration = Duration::from_millis(200);
/// …but after at most this many looks.
const SETTLE_LOOKS: usize = 25;

/// `--watch`: reload when `path` changes (until `stop`). Polling its modification time and
/// size, as the interceptor's rules file is watched: no inotify limits, and it sees a file
/// replaced by a rename or a Kubernetes ConfigMap's symlink swap (the metadata of the target
/// is read) as well as one edited in place.
fn watch(gw: &Arc<Gateway>, path: PathBuf, tracker: &TaskTracker, stop: &CancellationToken) {
    let stamp = |p: &std::path::Path| {
        std::fs::metadata(p)
            .map(|m| (m.modified().ok(), m.len()))
            .ok()
    };
    // Taken now, not in the task: a change made before the task first runs is still seen.
    let mut last = stamp(&path);
    let (gw, stop) = (gw.clone(), stop.clone());
    tracing::info!(path = %path.display(), "watching the configuration file");
    tracker.spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(WATCH_EVERY) => {}
                _ = stop.cancelled() => return,
            }
            let mut now = stamp(&path);
            if now == last {
                continue;
            }
            for _ in 0..SETTLE_LOOKS {
                tokio::select! {
                    _ = tokio::time::sleep(SETTLE) => {}
                    _ = stop.cancelled() => return,
                }
                let again = stamp(&path);
                if again == now {
                    break;
                }
                now = again;
            }
            last = now;
            tracing::info!(path = %path.display(), "the configuration file changed; reloading");
            gw.reload(Trigger::Watch).await;
        }
    });
}

/// A `--server NAME=URL|CMD ARGS` flag as a `[[routes.servers]]` entry.
fn member(raw: &str) -> anyhow::Result<MemberConfig> {
    let flag = super::servers::parse(raw, UpstreamTransport::Streamable)?;
    let upstream = match flag.place {
        Place::Url { url, transport } => UpstreamConfig {
            url: Some(url),
            transport: match transport {
                UpstreamTransport::Streamable => UrlTransport::Streamable,
                UpstreamTransport::Sse => UrlTransport::Sse,
                UpstreamTransport::Auto => UrlTransport::Auto,
            },
            weight: 1,
            ..UpstreamConfig::default()
        },
        Place::Command { program, args } => UpstreamConfig {
            command: Some(program),
            args,
            weight: 1,
            ..UpstreamConfig::default()
        },
    };
    Ok(MemberConfig {
        name: flag.name,
        upstream,
        ..MemberConfig::default()
    })
}

/// What tape headers say about the gateway's upstreams: each route with its members
/// (credentials in URLs redacted).
fn describe_routes(gw: &Gateway) -> String {
    let r = Redactor::default();
    let mut routes: Vec<String> = gw
        .routes()
        .iter()
        .map(|route| {
            let members: Vec<String> = route
                .set()
                .members()
                .iter()
                .map(|m| r.url(m.name()))
                .collect();
            format!("{} = {}", route.path(), members.join(" | "))
        })
        .collect();
    routes.sort();
    routes.join("; ")
}

pub async fn run(a: GatewayArgs, log_traffic: bool) -> anyhow::Result<i32> {
    if a.hooks.shadow.is_some() {
        bail!(
            "--shadow does not apply to `gateway`: its routes balance over sets of upstreams, so \
             there is no single server to mirror; mirror one server with `shadowcat forward http \
             --shadow URL|CMD …` in front of it"
        );
    }
    let (cfg, source) = load(&a)?;
    let gw = Gateway::new(&cfg, &source)?;
    let s = &cfg.server;
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    shadowcat_proxy::runtime::cancel_on_signals(shutdown.clone(), &tracker)?;
    // Reloads read the file again with the same flags applied.
    let a = Arc::new(a);
    let again = a.clone();
    gw.set_loader(Box::new(move || load(&again).map_err(|e| problems(&e))));
    reload_on_hangup(&gw, &tracker, &shutdown)?;
    if a.watch
        && let Some(path) = &a.config
    {
        watch(&gw, path.clone(), &tracker, &shutdown);
    }
    let store_args = StoreArgs {
        store: s.store.clone(),
        redis_prefix: s.redis_prefix.clone(),
    };
    let mut store = super::session::open_store(&store_args, s.max_events, s.idle_timeout.0).await?;
    if store.backend() != "memory" {
        let mode = if s.on_store_outage == "memory" {
            OnOutage::Memory
        } else {
            OnOutage::FailClosed
        };
        let failover = FailoverStore::new(store, mode);
        failover.spawn_probe(Duration::from_secs(1), &tracker, shutdown.clone());
        store = failover;
    }
    // Operation counts and latencies for /metrics.
    let store: Arc<dyn SessionStore> = MeteredStore::new(store);
    if let Some(file) = &a.pins {
        if !cfg.routes.iter().any(|r| r.pinning_on()) {
            bail!(
                "--pins: no route (or composite route server) has `pinning = \"warn\"` or `\"enforce\"`"
            );
        }
        let n = super::pins::seed(&*store, file).await?;
        tracing::info!(pins = n, file = %file.display(), "reviewed tool pins loaded");
    }
    let listener = tokio::net::TcpListener::bind(s.listen)
        .await
        .with_context(|| format!("cannot listen on {}", s.listen))?;
    let local = listener.local_addr()?;
    if cfg.auth.is_none() && !local.ip().is_loopback() {
        tracing::warn!(
            "listening on {local} without authentication: anyone who can reach it can use every route (configure [auth], or listen on 127.0.0.1)"
        );
    }
    let routes: Vec<String> = gw
        .routes()
        .iter()
        .map(|r| match r.set().members() {
            [only] if matches!(only.spec(), UpstreamSpec::Composite(_)) => {
                format!("{} ({})", r.path(), only.name())
            }
            members => format!(
                "{} ({} upstream(s), {})",
                r.path(),
                members.len(),
                r.set().strategy().name()
            ),
        })
        .collect();
    let ready = move || {
        for r in &routes {
            tracing::info!("serving MCP at http://{local}{r}");
        }
        // Machine-readable line for scripts and tests that listen on port 0.
        eprintln!("shadowcat: listening on http://{local}");
    };
    let admin = match &cfg.admin {
        Some(admin) if admin.enabled => Some(AdminPlan {
            addr: admin.listen,
            token: admin
                .resolve_token()
                .map_err(|e| anyhow::anyhow!("{source}: admin: {e}"))?,
            gateway: Some(gw.clone()),
            conn: cfg.server.conn_limits(),
        }),
        _ => None,
    };
    let describe = Describe {
        mode: "gateway",
        front: "http",
        upstream: describe_routes(&gw),
        headers: Vec::new(),
    };
    let audit = match &cfg.audit {
        Some(f) => Some(
            f.resolve()
                .map_err(|e| anyhow::anyhow!("{source}: audit: {e}"))?,
        ),
        None => None,
    };
    let replica = Some(
        s.replica_id
            .clone()
            .unwrap_or_else(shadowcat_proxy::front::http::default_replica_id),
    );
    let audit = a.hooks.audit_config(audit, replica)?;
    let hooks = Hooks::assemble(&a.hooks, false, describe, admin, audit, Vec::new()).await?;
    // The traffic log sees what clients sent; the others what the gateway admitted.
    let mut before: Vec<Arc<dyn Hook>> = Vec::new();
    if log_traffic {
        before.push(Arc::new(TrafficLog));
    }
    let around = GatewayHooks {
        before,
        after: hooks.list(),
        audit: hooks.audit(),
    };
    let served = gateway(listener, gw, s, around, store, shutdown.clone(), ready).await;
    hooks.finish().await;
    served?;
    shutdown.cancel();
    Ok(0)
}
