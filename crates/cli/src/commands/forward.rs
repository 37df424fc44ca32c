//! `shadowcat forward stdio` and `shadowcat forward http`.

use super::hooks::{Describe, Hooks};
use super::servers;
use crate::args::StoreOutage;
use crate::args::{
    Common, ConnArgs, HttpArgs, PinArgs, PinningArg, Prefix, StdioArgs, UpstreamTransport,
};
use anyhow::{Context, bail};
use shadowcat_proxy::forward::{StdioForward, forward_http, forward_stdio};
use shadowcat_proxy::front::conn::ConnLimits;
use shadowcat_proxy::front::http::{
    HostPolicy, HttpFrontConfig, OriginPolicy, Targets, default_replica_id,
};
use shadowcat_proxy::pipeline::Hook;
use shadowcat_proxy::upstream::composite::{CompositeSpec, Member, names};
use shadowcat_proxy::upstream::destinations::Destinations;
use shadowcat_proxy::upstream::{UpstreamOptions, UpstreamSpec};
use shadowcat_store::{FailoverStore, OnOutage, Retention};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

fn seconds(name: &str, v: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(v)
        .map_err(|_| anyhow::anyhow!("--{name} must be a non-negative number of seconds"))
}

/// The listener's connection limits from the flags, validated.
pub fn conn_limits(c: &ConnArgs) -> anyhow::Result<ConnLimits> {
    let limits = ConnLimits {
        header_timeout: seconds("header-timeout", c.header_timeout)?,
        body_timeout: seconds("body-timeout", c.body_timeout)?,
        idle_timeout: seconds("keep-alive-timeout", c.keep_alive_timeout)?,
        max_connections: c.max_connections,
    };
    limits
        .validate([
            "--header-timeout",
            "--body-timeout",
            "--keep-alive-timeout",
            "--max-connections",
        ])
        .map_err(anyhow::Error::msg)?;
    Ok(limits)
}

fn positive_seconds(name: &str, v: f64) -> anyhow::Result<Duration> {
    match seconds(name, v)? {
        d if d.is_zero() => anyhow::bail!("--{name} must be more than 0 seconds"),
        d => Ok(d),
    }
}

fn options(c: &Common) -> anyhow::Result<UpstreamOptions> {
    Ok(UpstreamOptions {
        max_message: c.max_message,
        shutdown_grace: seconds("shutdown-grace", c.shutdown_grace)?,
        ..UpstreamOptions::default()
    })
}

fn headers(c: &Common) -> anyhow::Result<Vec<(String, String)>> {
    servers::headers(&c.headers)
}

fn demo_spec() -> anyhow::Result<UpstreamSpec> {
    let exe = std::env::current_exe().context("cannot find this executable for --demo")?;
    Ok(UpstreamSpec::stdio(
        exe.to_string_lossy(),
        vec!["demo-server".into()],
    ))
}

fn command_spec(cmd: &[String]) -> Option<UpstreamSpec> {
    let (first, rest) = cmd.split_first()?;
    Some(UpstreamSpec::stdio(first.clone(), rest.to_vec()))
}

/// The upstream for a URL: its transport prefix (`sse+`, `auto+`, `streamable+`) or else
/// `default`. `None` when it is not an http(s) URL.
fn url_spec(
    raw: &str,
    default: UpstreamTransport,
    headers: &[(String, String)],
) -> Option<UpstreamSpec> {
    let (transport, url) = servers::url_transport(raw, default)?;
    Some(transport_spec(url.to_string(), transport, headers.to_vec()))
}

fn transport_spec(
    url: String,
    transport: UpstreamTransport,
    headers: Vec<(String, String)>,
) -> UpstreamSpec {
    match transport {
        UpstreamTransport::Streamable => UpstreamSpec::http(url, headers),
        UpstreamTransport::Sse => UpstreamSpec::Sse { url, headers },
        UpstreamTransport::Auto => UpstreamSpec::Auto { url, headers },
    }
}

pub async fn stdio(a: StdioArgs, log_traffic: bool) -> anyhow::Result<i32> {
    let upstream = match (&a.url, command_spec(&a.command), a.common.demo) {
        (Some(url), None, false) => {
            url_spec(url, a.common.upstream_transport, &headers(&a.common)?)
                .with_context(|| format!("--url `{url}` must be an http:// or https:// URL"))?
        }
        (None, Some(spec), false) => spec,
        (None, None, true) => demo_spec()?,
        (None, None, false) => {
            bail!("say which server to relay to: `-- CMD [ARGS…]`, `--url URL` or `--demo`")
        }
        _ => bail!("give only one of `-- CMD`, `--url` and `--demo`"),
    };
    let describe = Describe {
        mode: "forward-stdio",
        front: "stdio",
        upstream: upstream.describe(),
        headers: headers(&a.common)?,
    };
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    shadowcat_proxy::runtime::cancel_on_signals(shutdown.clone(), &tracker)?;
    let pins = if a.trust.pinning == PinningArg::Off {
        if a.store.store.trim() != "memory" {
            tracing::warn!(
                "forward stdio keeps only tool pins in --store, and --pinning is off: the store is not used"
            );
        }
        None
    } else {
        // Nothing but pins is kept here: no session records, no event log.
        let store = super::session::open_store(&a.store, 10_000, Duration::from_secs(1800)).await?;
        pinning(&a.trust, &store, &tracker, &shutdown).await?
    };
    let early: Vec<Arc<dyn Hook>> = pins.iter().map(|p| p.clone() as Arc<dyn Hook>).collect();
    let hooks = Hooks::build_limited(
        &a.hooks,
        log_traffic,
        describe,
        ConnLimits::default(),
        early,
    )
    .await?;
    if let (Some(p), Some(audit)) = (&pins, hooks.audit()) {
        p.audit_to(audit);
    }
    let cfg = StdioForward {
        upstream,
        max_line: a.common.max_message,
        options: options(&a.common)?,
        pipeline: hooks.pipeline.clone(),
    };
    let code = forward_stdio(cfg, shutdown.clone(), |host| {
        if let Some(p) = &pins {
            p.attach(host);
        }
    })
    .await;
    hooks.finish().await;
    shutdown.cancel();
    Ok(code?)
}

/// The pinning hook the flags ask for (`None` with `--pinning off`), its pins in `store`, after
/// writing the `--pins` file's into it.
async fn pinning(
    a: &PinArgs,
    store: &Arc<dyn shadowcat_store::SessionStore>,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Arc<shadowcat_gateway::pins::PinHook>>> {
    let policy = a.pinning.policy(a.new_tools);
    if let Some(file) = &a.pins {
        if policy.pinning == shadowcat_gateway::pins::Pinning::Off {
            bail!("--pins needs --pinning warn or --pinning enforce");
        }
        let n = super::pins::seed(&**store, file).await?;
        tracing::info!(pins = n, file = %file.display(), "reviewed tool pins loaded");
    }
    if policy.pinning == shadowcat_gateway::pins::Pinning::Off {
        return Ok(None);
    }
    if store.backend() == "memory" {
        tracing::warn!(
            "pins are kept in the memory store: they are forgotten at exit (give --store sqlite:PATH to keep them)"
        );
    }
    let hook = shadowcat_gateway::pins::PinHook::start(
        store.clone(),
        move |_, _| policy,
        tracker,
        shutdown.child_token(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("cannot read the tool pins: {e}"))?;
    Ok(Some(hook))
}

/// A `--server NAME=URL|CMD ARGS` member of a composite route (`--header`s go to HTTP ones).
pub fn member(
    raw: &str,
    transport: UpstreamTransport,
    hdrs: &[(String, String)],
) -> anyhow::Result<Member> {
    let flag = servers::parse(raw, transport)?;
    let spec = match flag.place {
        servers::Place::Url { url, transport } => transport_spec(url, transport, hdrs.to_vec()),
        servers::Place::Command { program, args } => UpstreamSpec::stdio(program, args),
    };
    Ok(Member::new(flag.name, spec))
}

fn targets(a: &HttpArgs) -> anyhow::Result<Targets> {
    let hdrs = headers(&a.common)?;
    let mut t = Targets::default();
    let mut set_default = |spec: UpstreamSpec, what: &str| -> anyhow::Result<()> {
        if t.default.is_some() {
            bail!("more than one default target ({what}); name the others with --target NAME=…");
        }
        t.default = Some(spec);
        Ok(())
    };
    if let Some(spec) = command_spec(&a.command) {
        set_default(spec, "-- CMD")?;
    }
    if a.common.demo {
        set_default(demo_spec()?, "--demo")?;
    }
    let transport = a.common.upstream_transport;
    if !a.servers.is_empty() {
        let members = a
            .servers
            .iter()
            .map(|raw| member(raw, transport, &hdrs))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mode = match a.prefix {
            Prefix::Always => names::PrefixMode::Always,
            Prefix::OnConflict => names::PrefixMode::OnConflict,
            Prefix::Never => names::PrefixMode::Never,
        };
        let mut spec = CompositeSpec {
            page_size: a.page_size,
            ..CompositeSpec::new(members)
        };
        spec.names.mode = mode;
        let problems = spec.problems();
        if !problems.is_empty() {
            bail!("--server: {}", problems.join("; "));
        }
        set_default(UpstreamSpec::Composite(Arc::new(spec)), "--server")?;
    }
    for raw in &a.targets {
        if let Some(spec) = url_spec(raw, transport, &hdrs) {
            set_default(spec, raw)?;
            continue;
        }
        let Some((name, value)) = raw.split_once('=') else {
            bail!("--target `{raw}` must be URL, NAME=URL or NAME=CMD");
        };
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            bail!("--target name `{name}` may only use letters, digits, `-` and `_`");
        }
        let spec = if let Some(spec) = url_spec(value, transport, &hdrs) {
            spec
        } else {
            let words: Vec<String> = value.split_whitespace().map(str::to_string).collect();
            command_spec(&words)
                .with_context(|| format!("--target `{raw}` has an empty command"))?
        };
        if t.named.insert(name.to_string(), spec).is_some() {
            bail!("--target name `{name}` is given twice");
        }
    }
    if t.default.is_none() && t.named.is_empty() && !a.allow_absolute_uri {
        bail!(
            "no upstream: give `-- CMD [ARGS…]`, `--target URL`, `--target NAME=…`, `--demo` or `--allow-absolute-uri`"
        );
    }
    if let Some(k) = a.share {
        share(&mut t, usize::from(k))?;
    }
    Ok(t)
}

/// `--share K`: every stdio target becomes a pool of K children shared by its sessions (each
/// target its own pool). Composite members keep a child per session.
fn share(t: &mut Targets, k: usize) -> anyhow::Result<()> {
    let mut any = false;
    for spec in t.default.iter_mut().chain(t.named.values_mut()) {
        if let UpstreamSpec::Stdio { command, args, env } = spec {
            *spec = UpstreamSpec::shared(command.clone(), args.clone(), env.clone(), k);
            any = true;
        }
    }
    if !any {
        bail!(
            "--share applies to stdio upstreams (`-- CMD`, --demo, --target NAME=CMD); there is none (a composite route's --server members are not shared)"
        );
    }
    Ok(())
}

/// Warn at start about a stdio upstream whose program cannot be found (each session would fail
/// to start it): the mistake shows at once, not at the first client.
fn warn_missing_programs(t: &Targets) {
    let mut specs: Vec<&UpstreamSpec> = t.default.iter().chain(t.named.values()).collect();
    let members: Vec<&UpstreamSpec> = specs
        .iter()
        .filter_map(|s| match s {
            UpstreamSpec::Composite(c) => Some(c.members.iter().map(|m| &m.spec)),
            _ => None,
        })
        .flatten()
        .collect();
    specs.extend(members);
    for spec in specs {
        let command = match spec {
            UpstreamSpec::Stdio { command, .. } => command.as_str(),
            UpstreamSpec::Shared(p) => p.0.command().0,
            _ => continue,
        };
        if !program_exists(command) {
            tracing::warn!(
                program = %shadowcat_tape::redact::command_label(command),
                "the upstream's program is not found (not on PATH, or not executable): sessions will fail to start it"
            );
        }
    }
}

/// Whether `program` names an executable file: a path as given, a bare name on `PATH`.
fn program_exists(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        return executable(std::path::Path::new(program));
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| executable(&dir.join(program))))
}

pub async fn http(a: HttpArgs, log_traffic: bool) -> anyhow::Result<i32> {
    let targets = targets(&a)?;
    warn_missing_programs(&targets);
    let config = HttpFrontConfig {
        targets,
        allow_absolute_uri: a.allow_absolute_uri,
        destinations: Destinations::parse(&a.allow_destinations)
            .map_err(|e| anyhow::anyhow!("--allow-destination: {e}"))?,
        absolute_headers: headers(&a.common)?,
        origins: OriginPolicy::new(&a.allow_origins),
        hosts: HostPolicy::new(&a.allow_hosts, a.advertise.as_deref())
            .map_err(|e| anyhow::anyhow!("--allow-host / --advertise: {e}"))?,
        max_body: a.common.max_message,
        max_sessions: a.max_sessions,
        idle_timeout: seconds("idle-timeout", a.idle_timeout)?,
        shutdown_deadline: seconds("shutdown-deadline", a.shutdown_deadline)?,
        request_timeout: Some(seconds("request-timeout", a.request_timeout)?)
            .filter(|d| !d.is_zero()),
        upstream: options(&a.common)?,
        retention: Retention {
            max_events: Some(a.max_events),
            max_age: Some(positive_seconds("event-max-age", a.event_max_age)?),
        },
        max_event_bytes: a.max_event_bytes,
        finished_stream_grace: seconds("finished-stream-grace", a.finished_stream_grace)?,
        sse_retry: Duration::from_millis(a.sse_retry_ms),
        workers: a
            .workers
            .map(usize::from)
            .unwrap_or_else(shadowcat_proxy::runtime::default_workers),
        conn: conn_limits(&a.conn)?,
        replica_id: a
            .advertise
            .clone()
            .or_else(|| a.replica_id.clone())
            .unwrap_or_else(default_replica_id),
        ..HttpFrontConfig::default()
    };
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    shadowcat_proxy::runtime::cancel_on_signals(shutdown.clone(), &tracker)?;
    let mut store = super::session::open_store(&a.store, a.max_events, config.idle_timeout).await?;
    if store.backend() != "memory" {
        let mode = match a.on_store_outage {
            StoreOutage::Closed => OnOutage::FailClosed,
            StoreOutage::Memory => OnOutage::Memory,
        };
        let failover = FailoverStore::new(store, mode);
        failover.spawn_probe(Duration::from_secs(1), &tracker, shutdown.clone());
        store = failover;
    }
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("cannot listen on {}", a.listen))?;
    let local = listener.local_addr()?;
    if !local.ip().is_loopback() {
        tracing::warn!(
            "listening on {local}: forward http has no authentication, so anyone who can reach it can use its upstreams (put it behind `shadowcat gateway` with [auth], or listen on 127.0.0.1)"
        );
    }
    let mut endpoints: Vec<String> = Vec::new();
    if config.targets.default.is_some() {
        endpoints.push(format!(
            "http://{local}/mcp (legacy HTTP+SSE: http://{local}/sse)"
        ));
    }
    for name in config.targets.named.keys() {
        endpoints.push(format!("http://{local}/servers/{name}/mcp"));
    }
    if config.allow_absolute_uri {
        endpoints.push(format!("absolute-form requests to http://{local}"));
    }
    let ready = move || {
        for e in &endpoints {
            tracing::info!("serving MCP at {e}");
        }
        // Machine-readable line for scripts and tests that listen on port 0.
        eprintln!("shadowcat: listening on http://{local}");
    };
    let describe = Describe {
        mode: "forward-http",
        front: "http",
        upstream: describe_targets(&config.targets, config.allow_absolute_uri),
        headers: headers(&a.common)?,
    };
    let pins = pinning(&a.trust, &store, &tracker, &shutdown).await?;
    let early: Vec<Arc<dyn Hook>> = pins.iter().map(|p| p.clone() as Arc<dyn Hook>).collect();
    let hooks = Hooks::build_limited(&a.hooks, log_traffic, describe, config.conn, early).await?;
    if let (Some(p), Some(audit)) = (&pins, hooks.audit()) {
        p.audit_to(audit);
    }
    let served = forward_http(
        listener,
        config,
        hooks.pipeline.clone(),
        store,
        shutdown.clone(),
        ready,
        |front| {
            if let Some(p) = &pins {
                p.attach(front.host());
            }
        },
    )
    .await;
    hooks.finish().await;
    served?;
    shutdown.cancel();
    Ok(0)
}

/// The upstreams of the HTTP front, for tape headers.
fn describe_targets(t: &Targets, absolute: bool) -> String {
    let mut parts: Vec<String> = t.default.iter().map(UpstreamSpec::describe).collect();
    let mut named: Vec<_> = t.named.iter().collect();
    named.sort_by(|a, b| a.0.cmp(b.0));
    parts.extend(
        named
            .into_iter()
            .map(|(n, s)| format!("{n}={}", s.describe())),
    );
    if absolute {
        parts.push("absolute-form URIs".into());
    }
    parts.join(", ")
}
