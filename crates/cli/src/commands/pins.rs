//! `shadowcat pins list|show|approve|reject|export|import` against the session store the proxies
//! share (see docs/pins.md). A change made here reaches every proxy using the store within the
//! pins' refresh interval, and their clients get `list_changed`.

use crate::args::StoreArgs;
use anyhow::{Context, bail};
use clap::Subcommand;
use shadowcat_gateway::pins::{self, Pin};
use shadowcat_proxy::upstream::{HttpClient, UpstreamCtx, UpstreamOptions, UpstreamSpec};
use shadowcat_store::SessionStore;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Subcommand, Debug)]
pub enum PinsCmd {
    /// List every pinned tool and prompt with its state (approved, pending, held, rejected).
    List {
        #[command(flatten)]
        store: StoreArgs,
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
        store: StoreArgs,
        /// The pin's id (from `pins list`).
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Approve the definition waiting for a decision.
    Approve {
        #[command(flatten)]
        store: StoreArgs,
        /// The pin's id.
        id: String,
        /// Approve only if the waiting definition still has this hash (the one you reviewed).
        #[arg(long)]
        hash: Option<String>,
    },
    /// Reject the definition waiting for a decision (it stays out under `enforce`).
    Reject {
        #[command(flatten)]
        store: StoreArgs,
        /// The pin's id.
        id: String,
    },
    /// Write every pin as JSON (to a file to review and check in, or stdout).
    Export {
        #[command(flatten)]
        store: StoreArgs,
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
        store: StoreArgs,
        /// The file `export` wrote.
        file: PathBuf,
    },
}

async fn open(a: &StoreArgs) -> anyhow::Result<Arc<dyn SessionStore>> {
    if a.store.trim() == "memory" {
        bail!(
            "pins kept in the memory store live inside a running proxy; give the --store (sqlite:PATH or redis://…) your proxies share"
        );
    }
    if let Some(path) = a.store.trim().strip_prefix("sqlite:")
        && !std::path::Path::new(path).is_file()
    {
        bail!("no session store at `{path}` (no such file); give the --store of a proxy that ran");
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
            store,
            pending,
            json,
        } => {
            let store = open(&store).await?;
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
        PinsCmd::Show { store, id, json } => {
            let store = open(&store).await?;
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
        PinsCmd::Approve { store, id, hash } => {
            let store = open(&store).await?;
            let mut p = find(&*store, &id).await?;
            p.approve(hash.as_deref()).map_err(anyhow::Error::msg)?;
            pins::save(&*store, &p).await.map_err(anyhow::Error::msg)?;
            println!("approved {} ({})", p.name, p.id);
            Ok(0)
        }
        PinsCmd::Reject { store, id } => {
            let store = open(&store).await?;
            let mut p = find(&*store, &id).await?;
            p.reject().map_err(anyhow::Error::msg)?;
            pins::save(&*store, &p).await.map_err(anyhow::Error::msg)?;
            println!("rejected the waiting definition of {} ({})", p.name, p.id);
            Ok(0)
        }
        PinsCmd::Export { store, output } => {
            let store = open(&store).await?;
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
        PinsCmd::Import { store, file } => {
            let list = read_file(&file)?;
            let store = open(&store).await?;
            for p in &list {
                pins::save(&*store, p).await.map_err(anyhow::Error::msg)?;
            }
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
