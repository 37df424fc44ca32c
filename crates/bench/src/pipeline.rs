//! `pipeline`: the cost of the hook pipeline per frame, in process, without any I/O.
//!
//! One exchange is what the Streamable HTTP front does for a `tools/call` and its reply: the
//! request through the pipeline (client → server, with the POST's headers), the reply through it
//! (server → client, delivery reported later) and, when there are hooks, the delivery report.
//! Variants:
//!
//! * `relay`: no pipeline call at all — the frames are only moved (the floor);
//! * `no-hooks`: an empty pipeline, as `Session` runs it without `--record` and `--rules`: one
//!   emptiness check, and the pipeline is not entered;
//! * `no-hooks-entered`: `Pipeline::process` called on the empty pipeline anyway (what the check
//!   saves: building and polling its future);
//! * `rules`: the interceptor with the rules of `--rules FILE`;
//! * `record`: the recorder writing a tape into `--dir` (`--record-on-full block`, so every frame
//!   is written; the writer thread's time is reported apart: it runs beside the relay);
//! * `rules+record`: both;
//! * `audit`: the audit log (`--audit`) writing into `--dir` (arguments left out, the default).
//! * `pinning`: tool pinning under `enforce` on a warm session: the tool was listed (and pinned)
//!   once before the batches, so each call is checked against its approved pin.
//!
//! The time per frame is the median over `--batches` batches (the machine is shared: read the
//! median, and compare variants of the same run).

use crate::stats::write_json;
use anyhow::Context;
use bytes::Bytes;
use clap::{Args, ValueEnum};
use serde_json::json;
use shadowcat_proto::Frame;
use shadowcat_proxy::intercept::{Interceptor, PauseBoard};
use shadowcat_proxy::pipeline::{
    Direction, FrameCtx, Hook, HttpMeta, Outcome, Pipeline, Transport,
};
use shadowcat_proxy::record::{OnFull, RecordConfig};
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Variant {
    Relay,
    NoHooks,
    NoHooksEntered,
    Rules,
    Record,
    #[value(name = "rules+record")]
    RulesRecord,
    Audit,
    Pinning,
}

#[derive(Args, Debug)]
pub struct PipelineArgs {
    /// What to run frames through.
    #[arg(long, value_enum)]
    variant: Variant,
    /// Interceptor rules file (variants `rules`, `rules+record`).
    #[arg(long)]
    rules: Option<PathBuf>,
    /// Directory for the tape (variants `record`, `rules+record`; default: the temp directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Exchanges (request + reply) per batch.
    #[arg(long, default_value_t = 20_000)]
    exchanges: usize,
    /// Measured batches (one more runs first, unmeasured).
    #[arg(long, default_value_t = 15)]
    batches: usize,
    /// Size of the echoed message in bytes.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// A name for this run, copied into the report.
    #[arg(long, default_value = "")]
    label: String,
}

fn frame(v: serde_json::Value) -> anyhow::Result<Frame> {
    Frame::parse_single(Bytes::from(v.to_string())).context("a benchmark frame does not parse")
}

pub async fn run(a: PipelineArgs) -> anyhow::Result<()> {
    let mut hooks: Vec<Arc<dyn Hook>> = Vec::new();
    if matches!(a.variant, Variant::Rules | Variant::RulesRecord) {
        let path = a
            .rules
            .as_ref()
            .context("--variant rules needs --rules FILE")?;
        let rules = shadowcat_proxy::intercept::load(path)?;
        hooks.push(Interceptor::new(rules, Arc::new(PauseBoard::default())));
    }
    let mut recorder = None;
    let tmp = a.dir.clone().unwrap_or_else(std::env::temp_dir);
    let tape = tmp.join(format!("pipeline-bench-{}.jsonl", std::process::id()));
    if matches!(a.variant, Variant::Record | Variant::RulesRecord) {
        let (hook, handle) = shadowcat_proxy::record::start(RecordConfig {
            path: tape.clone(),
            mode: "forward-http".into(),
            front: "http".into(),
            upstream: "bench".into(),
            upstream_headers: Vec::new(),
            redact: Default::default(),
            capacity: 4096,
            on_full: OnFull::Block,
        })?;
        hooks.push(hook);
        recorder = Some(handle);
    }
    let audit_path = tmp.join(format!("pipeline-bench-audit-{}.jsonl", std::process::id()));
    let audit = if a.variant == Variant::Audit {
        let audit = shadowcat_proxy::audit::Audit::open(
            &shadowcat_proxy::audit::AuditConfig {
                path: Some(audit_path.clone()),
                arguments: Default::default(),
                max_bytes: u64::MAX,
                keep: 1,
                replica: None,
                redact: Default::default(),
                hash_key: None,
            },
            &tokio_util::task::TaskTracker::new(),
            tokio_util::sync::CancellationToken::new(),
        )?;
        hooks.push(audit.clone());
        Some(audit)
    } else {
        None
    };
    if a.variant == Variant::Pinning {
        use shadowcat_gateway::pins::{NewTools, PinHook, Pinning, Policy};
        let policy = |_: Option<&str>, _: Option<&str>| Policy {
            pinning: Pinning::Enforce,
            new_tools: NewTools::Allow,
        };
        let store: Arc<dyn shadowcat_store::SessionStore> =
            Arc::new(shadowcat_store::MemoryStore::new());
        let hook = PinHook::start(
            store,
            policy,
            &tokio_util::task::TaskTracker::new(),
            tokio_util::sync::CancellationToken::new(),
        )
        .await
        .map_err(anyhow::Error::msg)?;
        hooks.push(hook);
    }
    let pipeline = Pipeline::new(hooks);
    let message = "x".repeat(a.payload);
    let call = frame(json!({"jsonrpc":"2.0","id":1,"method":"tools/call",
        "params":{"name":"echo","arguments":{"message":message}}}))?;
    let reply = frame(json!({"jsonrpc":"2.0","id":1,
        "result":{"content":[{"type":"text","text":message}],"isError":false}}))?;
    let mut headers = http::HeaderMap::new();
    for (k, v) in [
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("mcp-session-id", "bench-session-0123456789abcdef"),
        ("mcp-protocol-version", "2025-06-18"),
        ("authorization", "Bearer bench-secret"),
    ] {
        headers.insert(k, http::HeaderValue::from_static(v));
    }
    let session = "bench-session-0123456789abcdef";
    let c2s = FrameCtx {
        transport: Transport::Http(HttpMeta {
            method: "POST",
            status: None,
            content_type: None,
            headers: Some(&headers),
            sse_id: None,
            url: Some("http://127.0.0.1:8080/mcp"),
        }),
        ..FrameCtx::new(session, Direction::ClientToServer)
    };
    let s2c = FrameCtx {
        transport: Transport::Later,
        ..FrameCtx::new(session, Direction::ServerToClient)
    };
    let sent = FrameCtx {
        transport: Transport::Http(HttpMeta {
            method: "POST",
            status: Some(200),
            content_type: Some("application/json"),
            headers: None,
            sse_id: None,
            url: None,
        }),
        ..FrameCtx::new(session, Direction::ServerToClient)
    };
    if a.variant == Variant::Pinning {
        // A warm session: the tool was listed (and pinned, trusted on first use) before.
        let list = frame(json!({"jsonrpc":"2.0","id":0,"method":"tools/list"}))?;
        let tools = frame(
            json!({"jsonrpc":"2.0","id":0,"result":{"tools":[{"name":"echo",
            "description":"Echo a message","inputSchema":{"type":"object",
            "properties":{"message":{"type":"string"}}}}]}}),
        )?;
        pipeline.process(&c2s, list).await;
        pipeline.process(&s2c, tools).await;
        anyhow::ensure!(
            matches!(
                pipeline.process(&c2s, call.clone()).await,
                Outcome::Forward(_)
            ),
            "the pinned tool's call is refused"
        );
    }
    let relay = a.variant == Variant::Relay;
    let enter_anyway = a.variant == Variant::NoHooksEntered;
    // As `Session` does: with no hooks the pipeline is not entered (checked per frame; the
    // black box keeps the check from being hoisted out of the loop).
    let bypass = |p: &Pipeline| relay || (!enter_anyway && black_box(p).is_empty());
    let mut per_frame_ns = Vec::with_capacity(a.batches);
    let started = Instant::now();
    let mut forwarded = 0u64;
    for batch in 0..=a.batches {
        let t = Instant::now();
        for _ in 0..a.exchanges {
            let out = if bypass(&pipeline) {
                Outcome::Forward(black_box(call.clone()))
            } else {
                pipeline.process(&c2s, call.clone()).await
            };
            forwarded += u64::from(matches!(black_box(out), Outcome::Forward(_)));
            let out = if bypass(&pipeline) {
                Outcome::Forward(black_box(reply.clone()))
            } else {
                pipeline.process(&s2c, reply.clone()).await
            };
            if let Outcome::Forward(f) = black_box(out) {
                forwarded += 1;
                // As the HTTP front does: report the delivery only when there are hooks.
                if !relay && !pipeline.is_empty() {
                    pipeline.delivered(&sent, &f).await;
                }
            }
        }
        let ns = t.elapsed().as_nanos() as f64 / (2 * a.exchanges) as f64;
        if batch > 0 {
            per_frame_ns.push(ns);
        }
    }
    let relay_time = started.elapsed();
    let frames = (2 * a.exchanges * (a.batches + 1)) as u64;
    anyhow::ensure!(
        forwarded == frames,
        "only {forwarded} of {frames} frames were forwarded: the rules must let the benchmark's \
         traffic through (use `continue` rules)"
    );
    let mut written = serde_json::Value::Null;
    if let Some(audit) = audit {
        audit.flush();
        let lines = std::fs::read_to_string(&audit_path)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        let bytes = std::fs::metadata(&audit_path).map(|m| m.len()).unwrap_or(0);
        let _ = std::fs::remove_file(&audit_path);
        let requests = (a.exchanges * (a.batches + 1)) as u64;
        anyhow::ensure!(
            lines as u64 == requests,
            "the audit log holds {lines} lines for {requests} requests"
        );
        written = json!({ "audit_lines": lines, "audit_bytes": bytes });
    }
    if let Some(handle) = recorder {
        let t = Instant::now();
        let dropped = handle.dropped();
        handle.finish(Duration::from_secs(120)).await;
        let drain = t.elapsed();
        let tape_bytes = std::fs::metadata(&tape).map(|m| m.len()).unwrap_or(0);
        let lines = std::fs::read_to_string(&tape)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        let _ = std::fs::remove_file(&tape);
        let recorded = lines.saturating_sub(2) as u64;
        anyhow::ensure!(
            recorded == frames && dropped == 0,
            "the tape holds {recorded} of {frames} frames ({dropped} dropped)"
        );
        written = json!({
            "frames": recorded,
            "dropped": dropped,
            "tape_bytes": tape_bytes,
            "drain_after_relay_ms": drain.as_secs_f64() * 1e3,
            "ns_per_frame_incl_writer": (relay_time + drain).as_nanos() as f64 / frames as f64,
        });
    }
    let mut sorted = per_frame_ns.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN);
    let min = sorted.first().copied().unwrap_or(f64::NAN);
    println!(
        "{:?}: {median:.1} ns/frame median, {min:.1} min over {} batches of {} frames{}",
        a.variant,
        per_frame_ns.len(),
        2 * a.exchanges,
        if written.is_null() {
            String::new()
        } else {
            format!(
                "; with the writer: {:.1} ns/frame",
                written["ns_per_frame_incl_writer"].as_f64().unwrap_or(0.0)
            )
        }
    );
    let report = json!({
        "mode": "pipeline",
        "label": a.label,
        "variant": format!("{:?}", a.variant),
        "hooks": pipeline.names(),
        "payload": a.payload,
        "frames": frames,
        "ns_per_frame": median,
        "ns_per_frame_min": min,
        "ns_per_frame_batches": per_frame_ns,
        "recorded": written,
    });
    write_json(a.json.as_deref(), &report)
}
