//! `shadowcat session list|show|kill` against a session store.

use crate::args::{SessionCmd, StoreArgs};
use anyhow::{Context, bail};
use shadowcat_store::{OpenOptions, SessionFilter, SessionRecord, SessionStatus, SessionStore};
use std::sync::Arc;
use std::time::Duration;

/// Open the store named by `--store`.
pub async fn open_store(
    a: &StoreArgs,
    max_events: usize,
    idle_ttl: Duration,
) -> anyhow::Result<Arc<dyn SessionStore>> {
    open_with(a, max_events, idle_ttl, false).await
}

async fn open_with(
    a: &StoreArgs,
    max_events: usize,
    idle_ttl: Duration,
    read_only: bool,
) -> anyhow::Result<Arc<dyn SessionStore>> {
    let opts = OpenOptions {
        redis_prefix: a.redis_prefix.clone(),
        idle_ttl,
        max_events,
        read_only,
    };
    let store = shadowcat_store::open(&a.store, &opts)
        .await
        .with_context(|| {
            // Without the URL's credentials (this goes to the terminal and the service's log).
            format!(
                "cannot open session store `{}`",
                shadowcat_tape::redact::url_label(&a.store)
            )
        })?;
    Ok(store)
}

/// Open a store to inspect (`read_only`: SQLite opened read-only) or to change (`kill`).
async fn open_for_cli(a: &StoreArgs, read_only: bool) -> anyhow::Result<Arc<dyn SessionStore>> {
    if a.store.trim() == "memory" {
        bail!(
            "the memory store lives inside a running proxy; give --store sqlite:PATH or --store redis://… (or redis+cluster://…, redis+sentinel://…)"
        );
    }
    // Inspecting a store never creates one: a mistyped path is an error, not a new file.
    if let Some(path) = a.store.trim().strip_prefix("sqlite:") {
        let path = std::path::Path::new(path);
        if !path.is_file() {
            bail!(
                "no session store at `{}` (no such file); give the --store of a proxy that ran",
                path.display()
            );
        }
    }
    open_with(a, 10_000, Duration::from_secs(1800), read_only).await
}

pub async fn run(cmd: SessionCmd) -> anyhow::Result<i32> {
    match cmd {
        SessionCmd::List {
            store,
            status,
            limit,
            json,
        } => {
            let store = open_for_cli(&store, true).await?;
            let filter = SessionFilter {
                status: status.as_deref().map(|s| {
                    if s == "ended" {
                        SessionStatus::Ended
                    } else {
                        SessionStatus::Active
                    }
                }),
                ..SessionFilter::default()
            };
            let mut out: Vec<SessionRecord> = Vec::new();
            let mut after: Option<String> = None;
            while out.len() < limit {
                let page = store
                    .list(&filter, after.as_deref(), (limit - out.len()).min(500))
                    .await?;
                out.extend(page.sessions);
                match page.next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
            out.sort_by_key(|r| r.last_active_ms);
            if json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                print_table(&out);
            }
            Ok(0)
        }
        SessionCmd::Show { store, id, json } => {
            let store = open_for_cli(&store, true).await?;
            let Some(rec) = store.get(&id).await? else {
                eprintln!("shadowcat: no session `{id}` in the store");
                return Ok(1);
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&rec)?);
            } else {
                print_record(&rec);
            }
            Ok(0)
        }
        SessionCmd::Kill { store, id } => {
            let store = open_for_cli(&store, false).await?;
            if store.delete(&id).await? {
                println!("deleted session {id}");
                Ok(0)
            } else {
                eprintln!("shadowcat: no session `{id}` in the store");
                Ok(1)
            }
        }
    }
}

fn status(s: SessionStatus) -> &'static str {
    match s {
        SessionStatus::Active => "active",
        SessionStatus::Ended => "ended",
    }
}

fn age(ms: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let s = now.saturating_sub(ms) / 1000;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        _ => format!("{}h ago", s / 3600),
    }
}

fn client_name(r: &SessionRecord) -> String {
    r.client_info
        .as_ref()
        .and_then(|c| c.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or("-")
        .to_string()
}

fn print_table(rows: &[SessionRecord]) {
    println!(
        "{:<32}  {:<6}  {:<10}  {:<16}  {:<12}  UPSTREAM",
        "ID", "STATUS", "VERSION", "CLIENT", "ACTIVE"
    );
    for r in rows {
        println!(
            "{:<32}  {:<6}  {:<10}  {:<16}  {:<12}  {}",
            r.id,
            status(r.status),
            r.protocol_version.as_deref().unwrap_or("-"),
            client_name(r),
            age(r.last_active_ms),
            r.upstream
        );
    }
    println!("{} session(s)", rows.len());
}

fn print_record(r: &SessionRecord) {
    println!("id:               {}", r.id);
    println!("status:           {}", status(r.status));
    println!(
        "route:            {}",
        if r.route.is_empty() { "/mcp" } else { &r.route }
    );
    println!("upstream:         {}", r.upstream);
    println!(
        "protocol version: {}",
        r.protocol_version.as_deref().unwrap_or("-")
    );
    println!("client:           {}", client_name(r));
    println!("owner:            {}", r.owner.as_deref().unwrap_or("-"));
    println!("created:          {}", age(r.created_ms));
    println!("last active:      {}", age(r.last_active_ms));
}
