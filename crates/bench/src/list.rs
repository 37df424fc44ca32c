//! `list-latency`: the first `tools/list` of a new session, all pages, timed.
//!
//! Each run opens a new session (`initialize` + `notifications/initialized`), times the
//! session's first `tools/list` walked to its end (following `nextCursor`), checks how many tools
//! came back, and closes the session (`DELETE`). A composite route gathers its members' lists
//! on a session's first `tools/list`, so this is what its fan-out costs.

use crate::ReportArgs;
use crate::http::{Conn, HttpSession, HttpTarget};
use crate::mcp;
use crate::stats::{self, CpuWatch, Errors};
use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use clap::Args;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Streamable HTTP endpoint, e.g. http://127.0.0.1:8080/mcp.
    #[arg(long)]
    pub url: String,
    #[command(flatten)]
    pub report: ReportArgs,
    /// Measured runs (one new session each).
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// Unmeasured runs before the measured ones.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// The listed tools must number at least this many (a shorter list is an error).
    #[arg(long, default_value_t = 1)]
    pub expect_tools: usize,
    /// Most pages to follow before the list counts as endless (an error).
    #[arg(long, default_value_t = 10_000)]
    pub max_pages: usize,
    /// Seconds a run (handshake, list, close) may take before it counts as timed out.
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
}

/// What one run measured.
struct Run {
    initialize: Duration,
    list: Duration,
    pages: usize,
    tools: usize,
}

#[derive(Deserialize)]
struct ListResult<'a> {
    #[serde(borrow, default)]
    tools: Vec<&'a RawValue>,
    #[serde(rename = "nextCursor", default)]
    next_cursor: Option<String>,
}

fn list_request(id: u64, cursor: Option<&str>) -> Bytes {
    let params = match cursor {
        Some(c) => format!(
            r#"{{"cursor":{}}}"#,
            serde_json::Value::String(c.to_owned())
        ),
        None => "{}".to_owned(),
    };
    Bytes::from(format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/list","params":{params}}}"#
    ))
}

/// Among `messages`, the `tools/list` answer with id `id`: its tool count and next cursor.
fn parse_page<'a>(
    messages: impl IntoIterator<Item = &'a [u8]>,
    id: u64,
) -> anyhow::Result<(usize, Option<String>)> {
    for data in messages {
        let msg = mcp::parse(data)?;
        if !msg.is_response() || msg.num_id() != Some(id) {
            continue;
        }
        if let Some(err) = msg.error {
            bail!("JSON-RPC error: {}", mcp::truncate(err.get(), 200));
        }
        let result = msg
            .result
            .ok_or_else(|| anyhow!("response without result"))?;
        let page: ListResult<'_> =
            serde_json::from_str(result.get()).context("not a tools/list result")?;
        return Ok((page.tools.len(), page.next_cursor.filter(|c| !c.is_empty())));
    }
    bail!("no response with id {id} in the reply")
}

/// `tools/list` to the end on `session`: (pages, tools).
async fn list_all(
    conn: &mut Conn,
    session: &HttpSession,
    max_pages: usize,
) -> anyhow::Result<(usize, usize)> {
    let mut cursor: Option<String> = None;
    let mut tools = 0;
    for page in 1..=max_pages {
        let id = mcp::next_id();
        let reply = conn
            .post(Some(session), list_request(id, cursor.as_deref()))
            .await?;
        if reply.status != http::StatusCode::OK {
            bail!(
                "tools/list: HTTP {}: {}",
                reply.status,
                mcp::truncate(&String::from_utf8_lossy(&reply.body), 200)
            );
        }
        let payloads = reply.payloads();
        let (n, next) = parse_page(payloads.iter().map(Vec::as_slice), id)
            .with_context(|| format!("tools/list page {page}"))?;
        tools += n;
        match next {
            Some(c) => cursor = Some(c),
            None => return Ok((page, tools)),
        }
    }
    bail!("tools/list: still a nextCursor after {max_pages} pages")
}

/// One run on a fresh connection: new session, timed first list, DELETE.
async fn one(target: &Arc<HttpTarget>, a: &ListArgs) -> Result<Run, (&'static str, anyhow::Error)> {
    let mut conn = Conn::new(target.clone());
    let t0 = Instant::now();
    let session = conn.handshake().await.map_err(|e| ("initialize", e))?;
    let initialize = t0.elapsed();
    let t1 = Instant::now();
    let listed = list_all(&mut conn, &session, a.max_pages).await;
    let list = t1.elapsed();
    // Close the session whatever happened, so its upstream side goes away.
    let deleted = conn.delete(&session).await;
    let (pages, tools) = listed.map_err(|e| ("list", e))?;
    if tools < a.expect_tools {
        return Err((
            "too_few_tools",
            anyhow!("{tools} tools listed, expected at least {}", a.expect_tools),
        ));
    }
    match deleted {
        Ok(s) if s.is_success() => {}
        Ok(s) => return Err(("delete", anyhow!("DELETE: HTTP {s}"))),
        Err(e) => return Err(("delete", e)),
    }
    Ok(Run {
        initialize,
        list,
        pages,
        tools,
    })
}

pub async fn run(a: ListArgs) -> anyhow::Result<()> {
    let target = HttpTarget::parse(&a.url).await?;
    let timeout = Duration::from_secs_f64(a.timeout);
    let mut warmup_errors = Errors::default();
    for _ in 0..a.warmup {
        match tokio::time::timeout(timeout, one(&target, &a)).await {
            Ok(Ok(_)) => {}
            Ok(Err((kind, e))) => warmup_errors.add(kind, &e),
            Err(_) => warmup_errors.add("timeout", &anyhow!("no answer within {timeout:?}")),
        }
    }
    let bar = crate::progress(a.runs as u64, "list-latency");
    let cpu = CpuWatch::start(&a.report.pids);
    let mut list = stats::histogram();
    let mut init = stats::histogram();
    let mut errors = Errors::default();
    let (mut pages, mut tools) = (None, None);
    for _ in 0..a.runs {
        match tokio::time::timeout(timeout, one(&target, &a)).await {
            Ok(Ok(r)) => {
                stats::record(&mut list, r.list);
                stats::record(&mut init, r.initialize);
                pages = Some(r.pages);
                tools = Some(r.tools);
            }
            Ok(Err((kind, e))) => errors.add(kind, &e),
            Err(_) => errors.add("timeout", &anyhow!("no answer within {timeout:?}")),
        }
        if let Some(pb) = &bar {
            pb.inc(1);
        }
    }
    let ok = list.len();
    let cpu = cpu.stop(ok);
    if let Some(pb) = bar {
        pb.finish_and_clear();
    }
    println!(
        "{}: {} runs={} ({} ok, {} errors), {} tools in {} page(s)",
        a.report.name("list-latency"),
        a.url,
        a.runs,
        ok,
        errors.total(),
        tools.map_or("?".into(), |n| n.to_string()),
        pages.map_or("?".into(), |n| n.to_string()),
    );
    println!(
        "  {}",
        stats::fmt_summary("first tools/list (all pages)", &list)
    );
    println!(
        "  {}",
        stats::fmt_summary("initialize + initialized", &init)
    );
    for (k, (n, msg)) in &errors.by_kind {
        println!("  error {k} x{n}: {msg}");
    }
    for (k, (n, msg)) in &warmup_errors.by_kind {
        println!("  warm-up error {k} x{n}: {msg}");
    }
    let report = json!({
        "mode": "list-latency",
        "label": a.report.label,
        "target": a.url,
        "runs": a.runs,
        "warmup_runs": a.warmup,
        "runs_ok": ok,
        "expect_tools": a.expect_tools,
        "tools": tools,
        "pages": pages,
        "errors": errors.to_json(),
        "warmup_errors": warmup_errors.to_json(),
        "list": stats::summary(&list),
        "initialize": stats::summary(&init),
        "cpu": cpu,
    });
    stats::write_json(a.report.json.as_deref(), &report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_request_with_and_without_cursor() {
        let v: serde_json::Value = serde_json::from_slice(&list_request(3, None)).unwrap();
        assert_eq!(v["method"], "tools/list");
        assert_eq!(v["id"], 3);
        assert!(v["params"].get("cursor").is_none());
        let v: serde_json::Value = serde_json::from_slice(&list_request(4, Some("a\"b"))).unwrap();
        assert_eq!(v["params"]["cursor"], "a\"b");
    }

    #[test]
    fn pages_are_counted_and_followed() {
        let page = br#"{"jsonrpc":"2.0","id":5,"result":{"tools":[{"name":"a"},{"name":"b"}],"nextCursor":"x"}}"#;
        assert_eq!(
            parse_page([&page[..]], 5).unwrap(),
            (2, Some("x".to_owned()))
        );
        let last = br#"{"jsonrpc":"2.0","id":6,"result":{"tools":[{"name":"c"}]}}"#;
        assert_eq!(parse_page([&last[..]], 6).unwrap(), (1, None));
        assert!(parse_page([&last[..]], 7).is_err());
        let err = br#"{"jsonrpc":"2.0","id":8,"error":{"code":-32601,"message":"no"}}"#;
        assert!(parse_page([&err[..]], 8).is_err());
    }
}
