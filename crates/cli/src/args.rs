//! Command-line arguments.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;

/// Shadowcat: a proxy for the Model Context Protocol.
///
/// Relays MCP traffic between clients and servers over stdio and Streamable HTTP, one isolated
/// session (and one upstream) per client.
#[derive(Parser, Debug)]
#[command(name = "shadowcat", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// `--log-traffic` of the relay commands (forward, gateway, replay).
    pub fn log_traffic(&self) -> bool {
        match &self.command {
            Command::Forward(Forward::Stdio(a)) => a.hooks.log_traffic,
            Command::Forward(Forward::Http(a)) => a.hooks.log_traffic,
            Command::Gateway(a) => a.hooks.log_traffic,
            Command::Replay(a) => a.hooks.log_traffic,
            _ => false,
        }
    }
}

/// Examples shown after each command's help (`after_help`), by the command's path.
const EXAMPLES: &[(&[&str], &str)] = &[
    (
        &["forward", "stdio"],
        "shadowcat forward stdio -- npx -y @modelcontextprotocol/server-everything\n  shadowcat forward stdio --url https://mcp.example.com/mcp --header 'Authorization: Bearer $TOKEN'\n  shadowcat forward stdio --record session.jsonl --audit audit.jsonl -- python server.py",
    ),
    (
        &["forward", "http"],
        "shadowcat forward http --listen 8080 -- npx -y @modelcontextprotocol/server-everything\n  shadowcat forward http --target https://mcp.example.com/mcp --record tapes/\n  shadowcat forward http --server files='npx -y @modelcontextprotocol/server-filesystem /tmp' --server web=https://mcp.example.com/mcp\n  shadowcat forward http --pinning enforce --store sqlite:pins.db -- python server.py",
    ),
    (
        &["demo-server"],
        "shadowcat demo-server\n  shadowcat demo-server --http 127.0.0.1:9000",
    ),
    (
        &["session", "list"],
        "shadowcat session list --store sqlite:sessions.db\n  shadowcat session list --store redis://127.0.0.1:6379 --status active --json\n  shadowcat session list --store redis+cluster://10.0.0.1:7000,10.0.0.2:7000\n  shadowcat session list --store redis+sentinel://10.0.0.5:26379,10.0.0.6:26379/mymaster",
    ),
    (
        &["session", "show"],
        "shadowcat session show 3a35c0ffee --store sqlite:sessions.db",
    ),
    (
        &["session", "kill"],
        "shadowcat session kill 3a35c0ffee --store redis://127.0.0.1:6379",
    ),
    (
        &["pins", "list"],
        "shadowcat pins list --store sqlite:sessions.db --pending",
    ),
    (
        &["pins", "show"],
        "shadowcat pins show 3f9c2a1b --store sqlite:sessions.db",
    ),
    (
        &["pins", "approve"],
        "shadowcat pins approve 3f9c2a1b --hash 9e1f… --store sqlite:sessions.db",
    ),
    (
        &["pins", "reject"],
        "shadowcat pins reject 3f9c2a1b --store redis://127.0.0.1:6379",
    ),
    (
        &["pins", "export"],
        "shadowcat pins export -o pins.json --store sqlite:sessions.db",
    ),
    (
        &["pins", "import"],
        "shadowcat pins import pins.json --store sqlite:sessions.db",
    ),
    (
        &["pins", "check"],
        "shadowcat pins check pins.json -- npx -y my-mcp-server\n  shadowcat pins check pins.json --url https://mcp.example.com/mcp --header 'Authorization: Bearer $TOKEN'",
    ),
    (
        &["tape", "list"],
        "shadowcat tape list tapes/\n  shadowcat tape list session.jsonl --json",
    ),
    (
        &["tape", "show"],
        "shadowcat tape show session.jsonl\n  shadowcat tape show session.jsonl --full --session 3a35",
    ),
    (
        &["tape", "export"],
        "shadowcat tape export session.jsonl --format har -o session.har",
    ),
    (
        &["tape", "diff"],
        "shadowcat tape diff before.jsonl after.jsonl --ignore /result/content/0/text",
    ),
    (
        &["tape", "pins"],
        "shadowcat tape pins session.jsonl -o pins.json",
    ),
    (
        &["tape", "validate"],
        "shadowcat tape validate session.jsonl --strict",
    ),
    (
        &["replay"],
        "shadowcat replay session.jsonl\n  shadowcat replay session.jsonl --listen 127.0.0.1:8080 --speed 0",
    ),
    (
        &["intercept", "list"],
        "shadowcat intercept list\n  shadowcat intercept list --admin http://127.0.0.1:7474 --token $ADMIN_TOKEN",
    ),
    (&["intercept", "resume"], "shadowcat intercept resume 3"),
    (&["intercept", "edit"], "shadowcat intercept edit 3"),
    (&["intercept", "drop"], "shadowcat intercept drop 3"),
    (
        &["gateway"],
        "shadowcat gateway --config examples/local-gateway.toml\n  shadowcat gateway --listen 8080 --upstream https://mcp.example.com/mcp\n  shadowcat gateway --server files='npx -y @modelcontextprotocol/server-filesystem /tmp' --server web=https://mcp.example.com/mcp",
    ),
    (&["config", "check"], "shadowcat config check gateway.toml"),
    (
        &["config", "hash-key"],
        "shadowcat config hash-key   # reads the key from stdin",
    ),
    (
        &["config", "schema"],
        "shadowcat config schema > gateway.schema.json",
    ),
    (
        &["completions"],
        "shadowcat completions bash > /etc/bash_completion.d/shadowcat\n  shadowcat completions zsh > \"${fpath[1]}/_shadowcat\"",
    ),
    (
        &["man"],
        "shadowcat man > /usr/local/share/man/man1/shadowcat.1",
    ),
];

/// The command line, with the examples after each command's help.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    for (path, examples) in EXAMPLES {
        cmd = with_examples(cmd, path, examples);
    }
    cmd
}

fn with_examples(cmd: clap::Command, path: &[&str], examples: &str) -> clap::Command {
    match path {
        [] => cmd.after_help(format!("Examples:\n  {examples}")),
        [first, rest @ ..] => cmd.mut_subcommand(*first, |sub| with_examples(sub, rest, examples)),
    }
}

/// Parse the process's arguments (with [`command`]'s help).
pub fn parse() -> Cli {
    use clap::FromArgMatches;
    match Cli::from_arg_matches(&command().get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    }
}

#[derive(Args, Debug)]
pub struct LogArgs {
    /// Log filter: a level (`trace`, `debug`, `info`, `warn`, `error`, `off`) and/or
    /// `TARGET=LEVEL` directives (e.g. `info,shadowcat_proxy=debug`). SHADOWCAT_LOG, else
    /// RUST_LOG, overrides it.
    #[arg(long, global = true, default_value = "info", value_parser = log_filter)]
    pub log_level: String,
    /// Log format. Logs always go to stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Export trace spans over OTLP to this collector (base URL, e.g. http://127.0.0.1:4318:
    /// spans go to BASE/v1/traces; with OTEL_EXPORTER_OTLP_PROTOCOL=grpc the collector's
    /// address, e.g. http://127.0.0.1:4317).
    #[cfg(feature = "otel")]
    #[arg(
        long,
        global = true,
        env = "OTEL_EXPORTER_OTLP_ENDPOINT",
        value_name = "URL"
    )]
    pub otel_endpoint: Option<String>,
}

/// `--prefix` of a composite route.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefix {
    Always,
    OnConflict,
    Never,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum StoreOutage {
    Closed,
    Memory,
}

/// The HTTP transport of URL upstreams.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamTransport {
    /// Streamable HTTP (2025-03-26 and later).
    Streamable,
    /// Legacy HTTP+SSE (2024-11-05): GET the URL, POST to the endpoint it names.
    Sse,
    /// Detect per URL when a session is created (cached for the process).
    Auto,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Forward proxy: put Shadowcat between an MCP client and its server(s).
    #[command(subcommand)]
    Forward(Forward),
    /// Run the built-in demo MCP server (stdio by default, or Streamable HTTP at /mcp).
    DemoServer(DemoArgs),
    /// Inspect and end sessions in a session store (sqlite:PATH, redis://…, redis+cluster://…,
    /// redis+sentinel://…).
    #[command(subcommand)]
    Session(SessionCmd),
    /// Tool pinning (rug-pull defence): list, show, approve, reject, export and import the
    /// pinned tool and prompt definitions in the session store your proxies share.
    #[command(subcommand)]
    Pins(crate::commands::pins::PinsCmd),
    /// Work with tapes (recordings made with --record): list, show, export, diff, validate.
    #[command(subcommand)]
    Tape(crate::commands::tape::TapeCmd),
    /// Serve a tape as an MCP server: recorded answers to matching requests (stdio, or
    /// Streamable HTTP with --listen).
    Replay(Box<crate::commands::replay::ReplayArgs>),
    /// Messages paused by interceptor rules on a running proxy (through its --admin API).
    #[command(subcommand)]
    Intercept(crate::commands::intercept::InterceptCmd),
    /// Gateway (reverse proxy): routes with upstream sets, balancing, OAuth/API-key
    /// authentication, rate limits and Prometheus metrics, from a config file or flags.
    #[command(alias = "reverse")]
    Gateway(Box<crate::commands::gateway::GatewayArgs>),
    /// Gateway configuration files: `check FILE`, `hash-key`.
    #[command(subcommand)]
    Config(crate::commands::config::ConfigCmd),
    /// Print a shell completion script: `shadowcat completions bash > /etc/bash_completion.d/shadowcat`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `shadowcat man > /usr/local/share/man/man1/shadowcat.1`.
    Man,
}

#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// Session store: `memory`, `sqlite:PATH` or `redis://HOST[:PORT][/DB]` (also `rediss://`,
    /// `redis+unix:///path`; a Redis Cluster: `redis+cluster://HOST:PORT[,HOST:PORT…]`; the
    /// primary a set of Sentinels names: `redis+sentinel://HOST:PORT[,HOST:PORT…]/SERVICE[/DB]`).
    /// Holds session records and the SSE event log used for resumption.
    #[arg(
        long,
        env = "SHADOWCAT_STORE",
        default_value = "memory",
        help_heading = "Session store"
    )]
    pub store: String,
    /// Prefix of every Redis key (no `{` or `}`).
    #[arg(long, default_value = "shadowcat:", help_heading = "Session store")]
    pub redis_prefix: String,
}

#[derive(Subcommand, Debug)]
pub enum SessionCmd {
    /// List sessions (newest activity last), as a table or JSON.
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// Only `active` or `ended` sessions.
        #[arg(long, value_parser = ["active", "ended"])]
        status: Option<String>,
        /// Most sessions to show.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one session's record.
    Show {
        #[command(flatten)]
        store: StoreArgs,
        /// The proxy session id.
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Delete a session from the store (its record and event log). A proxy still serving it
    /// keeps its local state until it ends; use the proxy's DELETE for a live session.
    Kill {
        #[command(flatten)]
        store: StoreArgs,
        /// The proxy session id.
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum Forward {
    /// Stdio front: an MCP client launches `shadowcat forward stdio -- CMD` in place of CMD.
    ///
    /// Relays our stdin/stdout to a child process (`-- CMD [ARGS…]`) or to a remote Streamable
    /// HTTP server (`--url`). The exit code is the child's.
    Stdio(Box<StdioArgs>),
    /// HTTP front: serve Streamable HTTP at /mcp; every client session gets its own upstream.
    ///
    /// Upstreams: `-- CMD [ARGS…]` (one child per session), `--target URL`, named targets
    /// `--target NAME=URL` / `--target NAME=CMD` served at /servers/NAME/mcp, and absolute-form
    /// request URIs with `--allow-absolute-uri`.
    ///
    /// Legacy HTTP+SSE clients (2024-11-05) use the same targets at /sse and
    /// /servers/NAME/sse: the stream's `endpoint` event names the URI to POST messages to.
    Http(Box<HttpArgs>),
}

#[derive(Args, Debug)]
pub struct Common {
    /// Largest message accepted, in bytes (HTTP body, stdio line, SSE event).
    #[arg(long, default_value_t = 10 * 1024 * 1024)]
    pub max_message: usize,
    /// Seconds a child gets after its stdin closes, and again after SIGTERM.
    #[arg(long, default_value_t = 2.0)]
    pub shutdown_grace: f64,
    /// Header sent to HTTP upstreams, `Name: value` (repeatable).
    #[arg(long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// Use the built-in demo server (this executable's `demo-server`) as the upstream.
    #[arg(long)]
    pub demo: bool,
    /// Transport of upstream URLs: `streamable` (Streamable HTTP), `sse` (legacy HTTP+SSE,
    /// 2024-11-05: the URL is the SSE endpoint, e.g. http://host/sse) or `auto` (when a session
    /// is created: POST `server/discover`, else `initialize`, and on 400/404/405 try HTTP+SSE;
    /// cached per URL, probed again after a failure). Eras are translated either way. One URL can choose for itself with a prefix:
    /// `sse+http://host/sse`, `auto+https://host/mcp`, `streamable+http://host/mcp`.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = UpstreamTransport::Streamable)]
    pub upstream_transport: UpstreamTransport,
}

#[derive(Args, Debug)]
pub struct StdioArgs {
    /// HTTP server URL to relay to (instead of a child process); see --upstream-transport.
    #[arg(long, conflicts_with = "command")]
    pub url: Option<String>,
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub hooks: crate::commands::hooks::HookArgs,
    #[command(flatten)]
    pub trust: PinArgs,
    // Where tool pins are kept with --pinning (`forward stdio` keeps nothing else in it).
    #[command(flatten)]
    pub store: StoreArgs,
    /// The MCP server command and its arguments (after `--`).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Tool pinning flags of `forward stdio` and `forward http`.
#[derive(Args, Debug)]
pub struct PinArgs {
    /// Tool and prompt pinning (docs/pins.md): `warn` (report and mark tools whose definition
    /// changed) or `enforce` (leave them out and refuse their calls until approved with
    /// `shadowcat pins`). Pins are kept in --store (give `sqlite:PATH` to keep them).
    #[arg(long, value_enum, default_value_t = PinningArg::Off, env = "SHADOWCAT_PINNING", help_heading = "Tool pinning")]
    pub pinning: PinningArg,
    /// With --pinning: a tool never seen before is `allow`ed (trusted on first use) or
    /// `hold`-ed until approved.
    #[arg(long, value_enum, default_value_t = NewToolsArg::Allow, help_heading = "Tool pinning")]
    pub new_tools: NewToolsArg,
    /// With --pinning: reviewed pins (from `shadowcat pins export` or `tape pins`), written into
    /// --store at start; their definitions are the approved ones.
    #[arg(long, value_name = "FILE", help_heading = "Tool pinning")]
    pub pins: Option<std::path::PathBuf>,
}

#[derive(Args, Debug)]
pub struct HttpArgs {
    #[command(flatten)]
    pub trust: PinArgs,
    /// Address to listen on: `HOST:PORT`, `localhost:8080`, `:8080` or `8080` (the last two on
    /// loopback; `0.0.0.0:8080` listens on every interface).
    #[arg(long, env = "SHADOWCAT_LISTEN", default_value = "127.0.0.1:8080", value_parser = listen_addr)]
    pub listen: SocketAddr,
    /// Upstream: `URL` (default target), `NAME=URL` or `NAME=CMD ARGS` (served at
    /// /servers/NAME/mcp and /servers/NAME/sse). Repeatable. A URL may carry a transport
    /// prefix (`sse+http://…`, `auto+http://…`); see --upstream-transport.
    #[arg(long = "target", value_name = "[NAME=]URL|CMD")]
    pub targets: Vec<String>,
    /// A member server of a composite /mcp: `NAME=URL` or `NAME=CMD ARGS` (repeatable). The
    /// servers' tools and prompts are served together as `NAME__tool`, their resources as
    /// `NAME+uri`. NAME: lowercase letters, digits and `-`.
    #[arg(long = "server", value_name = "NAME=URL|CMD")]
    pub servers: Vec<String>,
    /// Items per page of a composite /mcp's merged lists (`0`: the whole list in one answer).
    /// Pages past the first are asked for with the opaque cursor of the one before.
    #[arg(long, default_value_t = 0, requires = "servers")]
    pub page_size: usize,
    /// When a composite /mcp prefixes tool and prompt names with their server: `always`,
    /// `on-conflict` (only names two servers share) or `never` (a shared name is an error).
    #[arg(long, value_enum, default_value_t = Prefix::Always, requires = "servers")]
    pub prefix: Prefix,
    /// Accept absolute-form request URIs (`POST http://host/mcp`) and proxy to that URL. Only
    /// public addresses are reached (see --allow-destination); --header values are sent only
    /// to the origins of the --target URLs.
    #[arg(long)]
    pub allow_absolute_uri: bool,
    /// With --allow-absolute-uri: a destination allowed although it is loopback, link-local or
    /// private — an address, a CIDR (`10.0.0.0/8`) or a host name (repeatable). Names are
    /// judged by every address they resolve to, when asked and when connecting.
    #[arg(
        long = "allow-destination",
        value_name = "HOST|CIDR",
        requires = "allow_absolute_uri"
    )]
    pub allow_destinations: Vec<String>,
    /// Browser origin allowed besides localhost ones (repeatable; `*` allows any).
    #[arg(
        long = "allow-origin",
        env = "SHADOWCAT_ALLOW_ORIGINS",
        value_delimiter = ',',
        value_name = "ORIGIN"
    )]
    pub allow_origins: Vec<String>,
    /// Host name (or address) clients may use in `Host` besides loopback ones (repeatable; any
    /// port). On a loopback --listen other names get 403 (DNS-rebinding protection); on another
    /// address every name is served unless this is given. The --advertise URL's host is allowed.
    #[arg(
        long = "allow-host",
        env = "SHADOWCAT_ALLOW_HOSTS",
        value_delimiter = ',',
        value_name = "HOST"
    )]
    pub allow_hosts: Vec<String>,
    /// Most concurrent sessions; more get 503 with Retry-After.
    #[arg(long, env = "SHADOWCAT_MAX_SESSIONS", default_value_t = 1000)]
    pub max_sessions: usize,
    /// Run each stdio upstream (`-- CMD`, --demo, --target NAME=CMD) as K children shared by
    /// all sessions instead of a child per session (1..=64). A shared child cannot keep its
    /// sessions apart the way separate processes do: see docs/operations.md.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub share: Option<u16>,
    /// Seconds a session may stay idle before it is reaped (its child killed).
    #[arg(long, env = "SHADOWCAT_IDLE_TIMEOUT", default_value_t = 600.0)]
    pub idle_timeout: f64,
    /// Seconds shutdown waits for in-flight requests.
    #[arg(long, env = "SHADOWCAT_SHUTDOWN_DEADLINE", default_value_t = 10.0)]
    pub shutdown_deadline: f64,
    /// Seconds the upstream may take to answer a request; then the client gets a JSON-RPC
    /// error (-32001), the upstream `notifications/cancelled`, and a late answer is dropped.
    /// 0: no limit.
    #[arg(
        long,
        env = "SHADOWCAT_REQUEST_TIMEOUT",
        default_value_t = 300.0,
        value_name = "SECONDS"
    )]
    pub request_timeout: f64,
    #[command(flatten)]
    pub store: StoreArgs,
    /// This replica's id in the session store (default: the host name). Replicas sharing a
    /// store on one host need distinct ids.
    #[arg(long, env = "SHADOWCAT_REPLICA_ID", conflicts_with = "advertise")]
    pub replica_id: Option<String>,
    /// Base URL other replicas use to reach this one (e.g. `http://10.0.0.5:8080`); it is also
    /// this replica's id. With a shared store, requests for sessions whose stdio child lives
    /// here are forwarded to it by the other replicas.
    #[arg(long, env = "SHADOWCAT_ADVERTISE", value_name = "URL")]
    pub advertise: Option<String>,
    /// While a shared store (Redis) is unreachable: `closed` answers new sessions with 503 +
    /// Retry-After; `memory` continues on local memory (sessions created meanwhile live on this
    /// replica only). Either way it is logged, counted (`/health`) and recovers by itself.
    #[arg(long, env = "SHADOWCAT_ON_STORE_OUTAGE", value_enum, default_value_t = StoreOutage::Closed)]
    pub on_store_outage: StoreOutage,
    /// SSE events kept per stream for resumption.
    #[arg(long, default_value_t = 1000, value_parser = clap::builder::TypedValueParser::map(clap::value_parser!(u64).range(1..), |n| n as usize))]
    pub max_events: usize,
    /// Most bytes of SSE event payloads kept for resumption per session, all its streams
    /// together (the oldest go first; default 8 MiB).
    #[arg(long, value_name = "BYTES", default_value_t = 8 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024..))]
    pub max_event_bytes: u64,
    /// Seconds after which a logged SSE event is dropped (no longer resumable).
    #[arg(long, value_name = "SECS", default_value_t = 600.0)]
    pub event_max_age: f64,
    /// Seconds a finished response stream stays resumable before its events are dropped.
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    pub finished_stream_grace: f64,
    /// `retry:` hint in milliseconds sent to 2025-11-25 clients on priming events.
    #[arg(long, default_value_t = 1000)]
    pub sse_retry_ms: u64,
    /// Threads serving client connections (default: one per CPU). Each connection, and the
    /// sessions it creates, stays on one thread.
    #[arg(long, env = "SHADOWCAT_WORKERS", value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,
    #[command(flatten)]
    pub conn: ConnArgs,
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub hooks: crate::commands::hooks::HookArgs,
    /// Default target command and arguments (after `--`): one child per session.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Connection timeouts and limit of a listener (the admin listener, if any, applies the same
/// settings with its own count).
#[derive(Args, Debug, Clone)]
pub struct ConnArgs {
    /// Seconds a client may take to send a request head (from connecting, or from its first
    /// byte after an idle spell); the connection is closed then.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    pub header_timeout: f64,
    /// Seconds a client may take to send a request body once its head arrived; `408` and the
    /// connection is closed then.
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    pub body_timeout: f64,
    /// Seconds a keep-alive connection with nothing in flight is kept open.
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
    pub keep_alive_timeout: f64,
    /// Most client connections served at once; further ones are accepted and closed at once.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub max_connections: usize,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Serve Streamable HTTP on this address (endpoint /mcp) instead of stdio.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
}

/// A listen address: `HOST:PORT` (a name is resolved: `localhost:8080`), `:PORT` or `PORT`
/// (loopback). Every interface only when asked for (`0.0.0.0:PORT`, `[::]:PORT`).
pub fn listen_addr(s: &str) -> Result<SocketAddr, String> {
    use std::net::{Ipv4Addr, ToSocketAddrs};
    let s = s.trim();
    let port_only = s.strip_prefix(':').unwrap_or(s);
    if let Ok(port) = port_only.parse::<u16>() {
        return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let expected = "expected HOST:PORT, :PORT or PORT (e.g. 127.0.0.1:8080, localhost:8080, 8080)";
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("`{s}` is not a listen address: {expected}"));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!("`{s}` is not a listen address: {expected}"));
    }
    let mut addrs = s
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve `{host}`: {e}"))?;
    // `localhost` may resolve to ::1 first; prefer the IPv4 address clients try first.
    let all: Vec<SocketAddr> = addrs.by_ref().collect();
    all.iter()
        .find(|a| a.is_ipv4())
        .or(all.first())
        .copied()
        .ok_or_else(|| format!("`{host}` resolves to no address"))
}

#[cfg(test)]
mod listen_tests {
    use super::listen_addr;

    #[test]
    fn listen_addresses_in_every_usual_spelling() {
        for (given, want) in [
            ("8080", "127.0.0.1:8080"),
            (":8080", "127.0.0.1:8080"),
            ("localhost:8080", "127.0.0.1:8080"),
            ("0.0.0.0:9", "0.0.0.0:9"),
            ("[::1]:7", "[::1]:7"),
        ] {
            assert_eq!(listen_addr(given).unwrap().to_string(), want, "{given}");
        }
        for bad in ["", "http://x:1", "host:", ":99999", "a:b:c"] {
            let e = listen_addr(bad).unwrap_err();
            assert!(
                e.contains("listen address") || e.contains("resolve"),
                "{bad}: {e}"
            );
        }
    }
}

/// A `--log-level` value: every bare word must be a level (a misspelt level such as `verbose`
/// would otherwise be read as a target name and quietly log nothing).
pub fn log_filter(s: &str) -> Result<String, String> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let level = match part.rsplit_once('=') {
            Some((_, level)) => level,
            None => part,
        };
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "unknown log level `{level}`: use trace, debug, info, warn, error or off, or TARGET=LEVEL directives (e.g. `info,shadowcat_proxy=debug`)"
            ));
        }
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod log_filter_tests {
    use super::log_filter;

    #[test]
    fn log_levels_are_checked() {
        for ok in [
            "info",
            "DEBUG",
            "info,shadowcat_proxy=debug",
            "warn,hyper=off",
        ] {
            assert!(log_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["verbose", "info,foo", "shadowcat_proxy=loud"] {
            assert!(
                log_filter(bad).unwrap_err().contains("unknown log level"),
                "{bad}"
            );
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinningArg {
    Off,
    Warn,
    Enforce,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum NewToolsArg {
    Allow,
    Hold,
}

impl PinningArg {
    /// The policy these flags ask for.
    pub fn policy(self, new_tools: NewToolsArg) -> shadowcat_gateway::pins::Policy {
        use shadowcat_gateway::pins::{NewTools, Pinning, Policy};
        Policy {
            pinning: match self {
                PinningArg::Off => Pinning::Off,
                PinningArg::Warn => Pinning::Warn,
                PinningArg::Enforce => Pinning::Enforce,
            },
            new_tools: match new_tools {
                NewToolsArg::Allow => NewTools::Allow,
                NewToolsArg::Hold => NewTools::Hold,
            },
        }
    }
}

#[cfg(test)]
mod help_tests {
    use super::command;

    /// Every command a user runs (every leaf) shows examples after its help; the relay
    /// commands offer --log-traffic and the others do not.
    #[test]
    fn every_command_has_examples_and_only_relays_log_traffic() {
        let mut cmd = command();
        cmd.build();
        fn leaves(c: &clap::Command, path: String, out: &mut Vec<(String, clap::Command)>) {
            let subs: Vec<&clap::Command> = c
                .get_subcommands()
                .filter(|s| s.get_name() != "help")
                .collect();
            if subs.is_empty() {
                out.push((path.clone(), c.clone()));
            }
            for s in subs {
                leaves(s, format!("{path} {}", s.get_name()), out);
            }
        }
        let mut all = Vec::new();
        leaves(&cmd, "shadowcat".into(), &mut all);
        assert!(all.len() > 25, "{}", all.len());
        for (path, c) in &all {
            let after = c
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            assert!(after.starts_with("Examples:"), "`{path}` has no examples");
            let relays = ["forward stdio", "forward http", "gateway", "replay"]
                .iter()
                .any(|r| path.ends_with(r));
            let logs = c.get_arguments().any(|a| a.get_id() == "log_traffic");
            assert_eq!(logs, relays, "`{path}`: --log-traffic");
        }
    }
}
