//! Session store operations per backend: latency of each operation, event-log appends/s.

use crate::stats::{fmt_summary, histogram, record, summary, write_json};
use clap::Args;
use serde_json::{Value, json};
use shadowcat_store::{OpenOptions, Retention, SessionRecord, SessionStatus, SessionStore};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct StoreArgs {
    /// Store to measure: `memory`, `sqlite:PATH`, `redis://…` / `redis+unix:///path` /
    /// `redis+cluster://…` / `redis+sentinel://…` (repeatable).
    #[arg(long = "store", required = true)]
    stores: Vec<String>,
    /// Operations of each kind.
    #[arg(long, default_value_t = 2000)]
    ops: usize,
    /// Event payload size in bytes.
    #[arg(long, default_value_t = 256)]
    payload: usize,
    /// Write a JSON report here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// A name for this run, copied into the report.
    #[arg(long, default_value = "")]
    label: String,
}

fn rec(id: &str) -> SessionRecord {
    SessionRecord {
        id: id.to_owned(),
        route: String::new(),
        upstream: "bench".into(),
        upstream_session_id: Some(format!("up-{id}")),
        protocol_version: Some("2025-11-25".into()),
        client_info: Some(json!({"name": "bench", "version": "1"})),
        client_capabilities: Some(json!({})),
        principal: None,
        owner: Some("bench".into()),
        status: SessionStatus::Active,
        created_ms: 0,
        last_active_ms: 0,
        composite: None,
    }
}

async fn measure(
    store: Arc<dyn SessionStore>,
    ops: usize,
    payload: usize,
) -> anyhow::Result<Value> {
    let run = format!("b{}", std::process::id());
    let data = vec![b'x'; payload];
    let mut out = serde_json::Map::new();
    let mut h = histogram();
    for i in 0..ops {
        let t = Instant::now();
        store.create(&rec(&format!("{run}-{i}"))).await?;
        record(&mut h, t.elapsed());
    }
    println!("  {}", fmt_summary("create", &h));
    out.insert("create".into(), summary(&h));
    let mut h = histogram();
    for i in 0..ops {
        let t = Instant::now();
        store.get(&format!("{run}-{i}")).await?;
        record(&mut h, t.elapsed());
    }
    println!("  {}", fmt_summary("get", &h));
    out.insert("get".into(), summary(&h));
    let mut h = histogram();
    for i in 0..ops {
        let t = Instant::now();
        store
            .touch_many(&[(format!("{run}-{i}"), i as u64)])
            .await?;
        record(&mut h, t.elapsed());
    }
    println!("  {}", fmt_summary("touch", &h));
    out.insert("touch".into(), summary(&h));
    let mut h = histogram();
    let session = format!("{run}-0");
    let started = Instant::now();
    for _ in 0..ops {
        let t = Instant::now();
        store.append_event(&session, "p1", &data).await?;
        record(&mut h, t.elapsed());
    }
    let rate = ops as f64 / started.elapsed().as_secs_f64();
    println!(
        "  {}  ({rate:.0} appends/s)",
        fmt_summary("append_event", &h)
    );
    out.insert("append_event".into(), summary(&h));
    out.insert("appends_per_s".into(), json!(rate.round()));
    let mut h = histogram();
    for _ in 0..ops.min(500) {
        let t = Instant::now();
        store.events_after(&session, "p1", None, 10).await?;
        record(&mut h, t.elapsed());
    }
    println!("  {}", fmt_summary("events_after(10)", &h));
    out.insert("events_after_10".into(), summary(&h));
    store
        .trim_events(
            &session,
            "p1",
            Retention {
                max_events: Some(0),
                max_age: None,
            },
        )
        .await?;
    let mut h = histogram();
    for i in 0..ops {
        let t = Instant::now();
        store.delete(&format!("{run}-{i}")).await?;
        record(&mut h, t.elapsed());
    }
    println!("  {}", fmt_summary("delete", &h));
    out.insert("delete".into(), summary(&h));
    Ok(Value::Object(out))
}

pub async fn run(a: StoreArgs) -> anyhow::Result<()> {
    let opts = OpenOptions {
        idle_ttl: Duration::from_secs(600),
        ..OpenOptions::default()
    };
    let mut stores = serde_json::Map::new();
    for spec in &a.stores {
        let store = shadowcat_store::open(spec, &opts).await?;
        println!("store {} ({spec}), {} ops each:", store.backend(), a.ops);
        let v = measure(store.clone(), a.ops, a.payload).await?;
        stores.insert(store.backend().to_string(), v);
    }
    let report = json!({
        "mode": "store",
        "label": a.label,
        "ops": a.ops,
        "payload": a.payload,
        "stores": stores,
    });
    write_json(a.json.as_deref(), &report)
}
