//! `shadowcat pins list|show|approve|reject|export|import` against the session store the proxies
//! share (see docs/pins.md). A change made here reaches every proxy using the store within the
//! pins' refresh interval, and their clients get `list_changed`.

use crate::args::StoreArgs;
use anyhow::{Context, bail};
use clap::Subcommand;
use shadowcat_gateway::config::GatewayConfig;
use shadowcat_gateway::pins::{self, Pin};
use shadowcat_proxy::audit::{Audit, AuditConfig};
use shadowcat_proxy::upstream::{HttpClient, UpstreamCtx, UpstreamOptions, UpstreamSpec};
use shadowcat_store::SessionStore;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Subcommand, Debug)]
pub enum PinsCmd {
    /// List every pinned tool and prompt with its state (approved, pending, held, rejected).
    List {
        #[command(flatten)]
        place: Place,
        /// Only those waiting for a decision (pending, held).
        #[arg(long)]
        pending: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one pin: its approved definition and, when one waits, what changed.
    Show {
        #[command(flatten)]
        place: Place,
        /// The pin's id (from `pins list`).
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Approve the definition waiting for a decision.
    Approve {
        #[command(flatten)]
        place: Place,
        /// The pin's id.
        id: String,
        /// Approve only if the waiting definition still has this hash (the one you reviewed).
        #[arg(long)]
        hash: Option<String>,
        #[command(flatten)]
        audit: AuditArg,
    },
    /// Reject the definition waiting for a decision (it stays out under `enforce`).
    Reject {
        #[command(flatten)]
        place: Place,
        /// The pin's id.
        id: String,
        #[command(flatten)]
        audit: AuditArg,
    },
    /// Write every pin as JSON (to a file to review and check in, or stdout).
    Export {
        #[command(flatten)]
        place: Place,
        /// Where (default: stdout).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Compare what a server offers now with reviewed pins (a file from `export` or `tape
    /// pins`): exit 1, with what changed, when a tool or prompt is new or not the reviewed one.
    /// For CI: `shadowcat pins check pins.json -- npx my-server` or `--url URL`.
    Check {
        /// The reviewed pins.
        file: PathBuf,
        /// The route of the pins to compare with.
        #[arg(long, default_value = "/mcp")]
        route: String,
        /// A Streamable HTTP server (instead of `-- CMD`).
        #[arg(long, conflicts_with = "command")]
        url: Option<String>,
        /// Header sent to the server, `Name: value` (repeatable; with --url).
        #[arg(long = "header", value_name = "NAME: VALUE", requires = "url")]
        headers: Vec<String>,
        /// The server's command line.
        #[arg(last = true, value_name = "CMD")]
        command: Vec<String>,
        /// Print JSON (the drifted pins) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Read pins written by `export` into the store (replacing those with the same id).
    Import {
        #[command(flatten)]
        place: Place,
        /// The file `export` wrote.
        file: PathBuf,
        #[command(flatten)]
        audit: AuditArg,
    },
}

/// Which store (and, for decisions, which audit log): `--store`, or a gateway's `--config`.
#[derive(clap::Args, Debug)]
pub struct Place {
    #[command(flatten)]
    store: StoreArgs,
    /// A gateway configuration file: its `server.store` (and `redis_prefix`) unless --store is
    /// given, and for approve, reject and import its `[audit]` log unless --audit is given.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// Where a decision is audited.
#[derive(clap::Args, Debug)]
pub struct AuditArg {
    /// Append the decision to this audit log (a `pin_decided` JSON line, as the gateway writes
    /// for its admin API; the file is created with mode 0600). Default: the `[audit]` log of
    /// --config, if any. The decision is not made when the log cannot be opened.
    #[arg(long, value_name = "PATH")]
    audit: Option<PathBuf>,
}

/// A gateway configuration named by --config.
fn gateway_config(p: &Place) -> anyhow::Result<Option<GatewayConfig>> {
    p.config
        .as_deref()
        .map(|f| GatewayConfig::load(f).map_err(|e| anyhow::anyhow!("{e}")))
        .transpose()
}

/// The store: --store, else the --config's `server.store`.
async fn open(p: &Place, cfg: Option<&GatewayConfig>) -> anyhow::Result<Arc<dyn SessionStore>> {
    match cfg {
        Some(c) if p.store.store.trim() == "memory" => {
            let a = StoreArgs {
                store: c.server.store.clone(),
                redis_prefix: c.server.redis_prefix.clone(),
            };
            open_store(&a).await
        }
        _ => open_store(&p.store).await,
    }
}

/// The audit log a decision goes to (--audit, else the --config's `[audit]`), opened before
/// anything changes: a decision that cannot be audited is not made.
fn audit_log(
    a: &AuditArg,
    cfg: Option<&GatewayConfig>,
    tracker: &tokio_util::task::TaskTracker,
    cancel: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<Option<Arc<Audit>>> {
    let config = match (&a.audit, cfg.and_then(|c| c.audit.as_ref())) {
        (Some(path), _) => {
            if path.as_os_str() == "-" {
                bail!("--audit -: a decision is audited to a file (give its path)");
            }
            AuditConfig {
                path: Some(path.clone()),
                arguments: Default::default(),
                max_bytes: shadowcat_proxy::audit::DEFAULT_MAX_BYTES,
                keep: shadowcat_proxy::audit::DEFAULT_KEEP,
                replica: None,
                redact: Default::default(),
                hash_key: None,
            }
        }
        (None, Some(f)) => {
            let c = f.resolve().map_err(|e| anyhow::anyhow!("audit: {e}"))?;
            if c.path.is_none() {
                bail!(
                    "the gateway's audit log is its standard output, which this command cannot append to: give --audit PATH"
                );
            }
            AuditConfig { replica: None, ..c }
        }
        (None, None) => return Ok(None),
    };
    let audit = Audit::open(&config, tracker, cancel.clone())?;
    Ok(Some(audit))
}

/// Write the decision on `pin` to `audit`.
fn audited(audit: Option<&Audit>, pin: &Pin, decision: &str) -> anyhow::Result<()> {
    let Some(a) = audit else { return Ok(()) };
    let mut fields = pins::decided_fields(pin, decision, "cli");
    // Who ran it: the uid (what the kernel says) and the login name (when the shell has one).
    if let Ok(m) = std::fs::metadata("/proc/self") {
        use std::os::unix::fs::MetadataExt;
        fields["uid"] = m.uid().into();
    }
    if let Ok(user) = std::env::var("USER") {
        fields["user"] = user.into();
    }
    a.event_now(pins::DECIDED, fields).with_context(|| {
        format!(
            "the decision on {} ({}) is in the store, but its audit line could not be written",
            pin.name, pin.id
        )
    })
}

async fn open_store(a: &StoreArgs) -> anyhow::Result<Arc<dyn SessionStore>> {
    if a.store.trim() == "memory" {
        bail!(
            "pins kept in the memory store live inside a running proxy; give the --store (sqlite:PATH or redis://…) your proxies share, or the gateway's --config"
        );
    }
    if let Some(path) = a.store.trim().strip_prefix("sqlite:")
        && !std::path::Path::new(path).is_file()
    {
        bail!(
            "no session store at `{path}` (no such file); give the --store (or --config) of a proxy that ran"
        );
    }
    super::session::open_store(a, 10_000, std::time::Duration::from_secs(1800)).await
}

async fn find(store: &dyn SessionStore, id: &str) -> anyhow::Result<Pin> {
    let all = pins::load(store).await.map_err(anyhow::Error::msg)?;
    let mut hits: Vec<Pin> = all.into_iter().filter(|p| p.id.starts_with(id)).collect();
    match hits.len() {
        1 => Ok(hits.remove(0)),
        0 => bail!("no pin `{id}` in the store (see `shadowcat pins list`)"),
        n => bail!("`{id}` names {n} pins: give more of the id"),
    }
}

fn short(hash: Option<&str>) -> String {
    hash.map(|h| h.chars().take(12).collect())
        .unwrap_or_else(|| "-".into())
}

pub async fn run(cmd: PinsCmd) -> anyhow::Result<i32> {
    match cmd {
        PinsCmd::List {
            place,
            pending,
            json,
        } => {
            let store = open(&place, gateway_config(&place)?.as_ref()).await?;
            let mut all = pins::load(&*store).await.map_err(anyhow::Error::msg)?;
            all.retain(|p| !pending || p.quarantined());
            all.sort_by(|a, b| (&a.route, &a.name).cmp(&(&b.route, &b.name)));
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
                return Ok(0);
            }
            if all.is_empty() {
                println!("no pins");
                return Ok(0);
            }
            println!(
                "{:<24}  {:<20}  {:<6}  {:<32}  {:<8}  {:<12}  {:<12}",
                "ID", "ROUTE", "KIND", "NAME", "STATE", "APPROVED", "WAITING"
            );
            for p in &all {
                println!(
                    "{:<24}  {:<20}  {:<6}  {:<32}  {:<8}  {:<12}  {:<12}",
                    p.id,
                    p.route,
                    serde_json::to_value(p.kind)?.as_str().unwrap_or(""),
                    p.name,
                    p.state(),
                    short(p.approved.as_ref().map(|d| d.hash.as_str())),
                    short(p.pending.as_ref().map(|d| d.hash.as_str())),
                );
            }
            Ok(0)
        }
        PinsCmd::Show { place, id, json } => {
            let store = open(&place, gateway_config(&place)?.as_ref()).await?;
            let p = find(&*store, &id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&p)?);
                return Ok(0);
            }
            println!(
                "{} {} on {} ({}): {}",
                p.id,
                p.name,
                p.route,
                serde_json::to_value(p.kind)?.as_str().unwrap_or(""),
                p.state()
            );
            print!("{}", describe(&p));
            Ok(0)
        }
        PinsCmd::Approve {
            place,
            id,
            hash,
            audit,
        } => {
            let cfg = gateway_config(&place)?;
            let (tracker, cancel) = background();
            let log = audit_log(&audit, cfg.as_ref(), &tracker, &cancel)?;
            let store = open(&place, cfg.as_ref()).await?;
            let mut p = find(&*store, &id).await?;
            p.approve(hash.as_deref()).map_err(anyhow::Error::msg)?;
            pins::save(&*store, &p).await.map_err(anyhow::Error::msg)?;
            audited(log.as_deref(), &p, "approve")?;
            cancel.cancel();
            println!("approved {} ({})", p.name, p.id);
            Ok(0)
        }
        PinsCmd::Reject { place, id, audit } => {
            let cfg = gateway_config(&place)?;
            let (tracker, cancel) = background();
            let log = audit_log(&audit, cfg.as_ref(), &tracker, &cancel)?;
            let store = open(&place, cfg.as_ref()).await?;
            let mut p = find(&*store, &id).await?;
            p.reject().map_err(anyhow::Error::msg)?;
            pins::save(&*store, &p).await.map_err(anyhow::Error::msg)?;
            audited(log.as_deref(), &p, "reject")?;
            cancel.cancel();
            println!("rejected the waiting definition of {} ({})", p.name, p.id);
            Ok(0)
        }
        PinsCmd::Export { place, output } => {
            let store = open(&place, gateway_config(&place)?.as_ref()).await?;
            let mut all = pins::load(&*store).await.map_err(anyhow::Error::msg)?;
            all.sort_by(|a, b| (&a.route, &a.name).cmp(&(&b.route, &b.name)));
            let text = serde_json::to_string_pretty(&all)? + "\n";
            match output {
                Some(path) => std::fs::write(&path, text)
                    .with_context(|| format!("cannot write {}", path.display()))?,
                None => print!("{text}"),
            }
            Ok(0)
        }
        PinsCmd::Import { place, file, audit } => {
            let list = read_file(&file)?;
            let cfg = gateway_config(&place)?;
            let (tracker, cancel) = background();
            let log = audit_log(&audit, cfg.as_ref(), &tracker, &cancel)?;
            let store = open(&place, cfg.as_ref()).await?;
            for p in &list {
                pins::save(&*store, p).await.map_err(anyhow::Error::msg)?;
                audited(log.as_deref(), p, "import")?;
            }
            cancel.cancel();
            println!("imported {} pins", list.len());
            Ok(0)
        }
        PinsCmd::Check {
            file,
            route,
            url,
            headers,
            command,
            json,
        } => {
            let reviewed = read_file(&file)?;
            let spec = match (url, command.split_first()) {
                (Some(u), _) => UpstreamSpec::http(u, super::servers::headers(&headers)?),
                (None, Some((cmd, args))) => UpstreamSpec::stdio(cmd.clone(), args.to_vec()),
                (None, None) => bail!("give the server: `-- CMD [ARGS…]` or --url URL"),
            };
            let ctx = UpstreamCtx {
                session: Arc::from("pins-check"),
                cancel: tokio_util::sync::CancellationToken::new(),
                front_cancel: tokio_util::sync::CancellationToken::new(),
                tracker: tokio_util::task::TaskTracker::new(),
                http: HttpClient::new(shadowcat_proxy::upstream::CONNECT_TIMEOUT)?,
                options: UpstreamOptions::default(),
                guard: None,
            };
            let seen = tokio::time::timeout(CHECK_TIMEOUT, pins::fetch(&spec, ctx))
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                        "the server did not list its tools within {} s",
                        CHECK_TIMEOUT.as_secs()
                    )
                })?
                .map_err(anyhow::Error::msg)?;
            let n = seen.len();
            let drifted = pins::drift(&reviewed, &route, seen);
            if json {
                println!("{}", serde_json::to_string_pretty(&drifted)?);
            } else if drifted.is_empty() {
                println!("{n} tools and prompts match the reviewed pins of {route}");
            } else {
                for p in &drifted {
                    let what = if p.approved.is_none() {
                        "new"
                    } else {
                        "changed"
                    };
                    println!(
                        "{what}: {} ({})",
                        p.name,
                        serde_json::to_value(p.kind)?.as_str().unwrap_or("")
                    );
                    print!("{}", describe(p));
                }
                println!("{} of {n} drifted from {}", drifted.len(), file.display());
            }
            Ok(i32::from(!drifted.is_empty()))
        }
    }
}

/// The task tracker and token the audit log's flushing runs on (cancelled once the decision
/// is written: every line is written through at once).
fn background() -> (
    tokio_util::task::TaskTracker,
    tokio_util::sync::CancellationToken,
) {
    (
        tokio_util::task::TaskTracker::new(),
        tokio_util::sync::CancellationToken::new(),
    )
}

/// How long `pins check` waits for the server.
const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Pins from a file `export` (or `tape pins`) wrote, each checked against its id.
pub fn read_file(file: &std::path::Path) -> anyhow::Result<Vec<Pin>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let list: Vec<Pin> = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a pins export", file.display()))?;
    for p in &list {
        let want = Pin::id_of(&p.route, p.kind, &p.name);
        if p.id != want {
            bail!(
                "{}: pin `{}` has id {} but its route, kind and name give {want}",
                file.display(),
                p.name,
                p.id
            );
        }
    }
    Ok(list)
}

/// Write the pins of `file` into `store` (`--pins FILE` at start): their definitions are the
/// approved ones.
pub async fn seed(store: &dyn SessionStore, file: &std::path::Path) -> anyhow::Result<usize> {
    let list = read_file(file)?;
    for p in &list {
        pins::save(store, p).await.map_err(anyhow::Error::msg)?;
    }
    Ok(list.len())
}

/// The definitions a tape's `tools/list` and `prompts/list` answers carried, as pins of
/// `route` (the first definition of each name; a later different one is reported).
pub fn from_tape(tape: &std::path::Path, route: &str) -> anyhow::Result<String> {
    use shadowcat_proto::FrameKind;
    use std::collections::{BTreeMap, HashMap};
    let t =
        shadowcat_tape::Tape::open(tape).map_err(|e| anyhow::anyhow!("{}: {e}", tape.display()))?;
    // (session, id) → which list was asked for.
    let mut asked: HashMap<(String, String), pins::Kind> = HashMap::new();
    let mut out: BTreeMap<String, Pin> = BTreeMap::new();
    for f in &t.frames {
        let key = |id: &shadowcat_proto::RequestId| (f.record.session.clone(), id.to_string());
        match (f.record.dir, f.frame.kind(), f.frame.id()) {
            (shadowcat_tape::Dir::ClientToServer, FrameKind::Request, Some(id)) => {
                let kind = match f.frame.method() {
                    Some("tools/list") => pins::Kind::Tool,
                    Some("prompts/list") => pins::Kind::Prompt,
                    _ => continue,
                };
                asked.insert(key(id), kind);
            }
            (shadowcat_tape::Dir::ServerToClient, FrameKind::Response, Some(id)) => {
                let Some(kind) = asked.remove(&key(id)) else {
                    continue;
                };
                let list_key = match kind {
                    pins::Kind::Tool => "tools",
                    pins::Kind::Prompt => "prompts",
                };
                let v = f.json();
                for item in v["result"][list_key].as_array().into_iter().flatten() {
                    let Some(name) = item.get("name").and_then(serde_json::Value::as_str) else {
                        continue;
                    };
                    if item.to_string().contains(shadowcat_tape::redact::REDACTED) {
                        eprintln!(
                            "shadowcat: `{name}` left out: the tape redacted part of its definition (line {})",
                            f.line
                        );
                        continue;
                    }
                    let def = pins::Def::of(kind, item);
                    let id = Pin::id_of(route, kind, name);
                    match out.get(&id) {
                        Some(p) if p.approved.as_ref().is_some_and(|a| a.hash != def.hash) => {
                            eprintln!(
                                "shadowcat: `{name}` changed during the tape (line {}); the first definition is kept",
                                f.line
                            );
                        }
                        Some(_) => {}
                        None => {
                            let (pin, _) =
                                Pin::observe(None, route, kind, name, def, pins::NewTools::Allow);
                            out.insert(id, pin);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let list: Vec<&Pin> = out.values().collect();
    Ok(serde_json::to_string_pretty(&list)? + "\n")
}

/// The approved definition, and a line diff to the waiting one.
pub fn describe(p: &Pin) -> String {
    let pretty = |d: &Option<pins::Def>| {
        d.as_ref()
            .map(|d| serde_json::to_string_pretty(&d.definition).unwrap_or_default())
            .unwrap_or_default()
    };
    let mut out = String::new();
    match (&p.approved, &p.pending) {
        (Some(a), None) => {
            out.push_str(&format!("approved {}:\n{}\n", a.hash, pretty(&p.approved)));
        }
        (a, Some(w)) => {
            out.push_str(&format!(
                "waiting {} (approved: {}):\n",
                w.hash,
                a.as_ref()
                    .map(|a| a.hash.as_str())
                    .unwrap_or("none, a new one")
            ));
            let (old, new) = (pretty(&p.approved), pretty(&p.pending));
            for change in similar::TextDiff::from_lines(&old, &new).iter_all_changes() {
                let sign = match change.tag() {
                    similar::ChangeTag::Delete => "-",
                    similar::ChangeTag::Insert => "+",
                    similar::ChangeTag::Equal => " ",
                };
                out.push_str(&format!("{sign} {}", change));
                if change.missing_newline() {
                    out.push('\n');
                }
            }
        }
        (None, None) => out.push_str("(empty)\n"),
    }
    out
}
