//! Latency histograms, error tallies, and what /proc says about processes.

use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Latencies in nanoseconds, 1 ns .. 10 min, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("valid bounds")
}

pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
    h.saturating_record(ns);
}

/// Percentiles in microseconds.
pub fn summary(h: &Histogram<u64>) -> Value {
    let us = |ns: u64| (ns as f64 / 1000.0 * 10.0).round() / 10.0;
    if h.is_empty() {
        return json!({ "count": 0 });
    }
    json!({
        "count": h.len(),
        "mean_us": us(h.mean() as u64),
        "p50_us": us(h.value_at_quantile(0.50)),
        "p90_us": us(h.value_at_quantile(0.90)),
        "p99_us": us(h.value_at_quantile(0.99)),
        "p999_us": us(h.value_at_quantile(0.999)),
        "max_us": us(h.max()),
    })
}

pub fn fmt_summary(name: &str, h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return format!("{name}: no samples");
    }
    let us = |ns: u64| ns as f64 / 1000.0;
    format!(
        "{name}: p50 {:.1} µs  p90 {:.1} µs  p99 {:.1} µs  max {:.1} µs  (n={})",
        us(h.value_at_quantile(0.5)),
        us(h.value_at_quantile(0.9)),
        us(h.value_at_quantile(0.99)),
        us(h.max()),
        h.len()
    )
}

/// Errors by kind, with the first message of each kind.
#[derive(Debug, Default)]
pub struct Errors {
    pub by_kind: BTreeMap<String, (u64, String)>,
}

impl Errors {
    pub fn add(&mut self, kind: &str, e: &anyhow::Error) {
        let entry = self
            .by_kind
            .entry(kind.to_owned())
            .or_insert_with(|| (0, format!("{e:#}")));
        entry.0 += 1;
    }

    pub fn merge(&mut self, other: Errors) {
        for (k, (n, msg)) in other.by_kind {
            self.by_kind.entry(k).or_insert((0, msg)).0 += n;
        }
    }

    pub fn total(&self) -> u64 {
        self.by_kind.values().map(|(n, _)| n).sum()
    }

    pub fn to_json(&self) -> Value {
        let kinds: serde_json::Map<String, Value> = self
            .by_kind
            .iter()
            .map(|(k, (n, msg))| (k.clone(), json!({ "count": n, "first": msg })))
            .collect();
        json!({ "total": self.total(), "kinds": kinds })
    }
}

/// What /proc tells about one process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcInfo {
    pub rss_kb: u64,
    pub pss_kb: u64,
    /// utime + stime, in seconds.
    pub cpu_s: f64,
}

fn clock_ticks() -> f64 {
    // Linux has used 100 ticks per second for user-visible times for decades.
    100.0
}

/// `None` if the process is gone.
pub fn proc_info(pid: u32) -> Option<ProcInfo> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let pss_kb = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces), counted from field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some(ProcInfo {
        rss_kb,
        pss_kb,
        cpu_s: (utime + stime) / clock_ticks(),
    })
}

/// All descendants of `pid` (children, grandchildren, …).
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            let Some(close) = stat.rfind(')') else {
                continue;
            };
            let ppid = stat[close + 2..]
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                children.entry(ppid).or_default().push(p);
            }
        }
    }
    let mut out = Vec::new();
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        if let Some(kids) = children.get(&p) {
            for &k in kids {
                out.push(k);
                stack.push(k);
            }
        }
    }
    out
}

/// A process and its descendants at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct TreeInfo {
    pub main: ProcInfo,
    pub children: usize,
    pub children_rss_kb: u64,
    pub children_pss_kb: u64,
    pub children_cpu_s: f64,
}

pub fn tree_info(pid: u32) -> TreeInfo {
    let main = proc_info(pid).unwrap_or_default();
    let mut t = TreeInfo {
        main,
        ..TreeInfo::default()
    };
    for c in descendants(pid) {
        if let Some(i) = proc_info(c) {
            t.children += 1;
            t.children_rss_kb += i.rss_kb;
            t.children_pss_kb += i.pss_kb;
            t.children_cpu_s += i.cpu_s;
        }
    }
    t
}

impl TreeInfo {
    pub fn to_json(self) -> Value {
        json!({
            "rss_kb": self.main.rss_kb,
            "pss_kb": self.main.pss_kb,
            "cpu_s": self.main.cpu_s,
            "children": self.children,
            "children_rss_kb": self.children_rss_kb,
            "children_pss_kb": self.children_pss_kb,
            "children_cpu_s": self.children_cpu_s,
        })
    }
}

/// `NAME=PID` or `PID`.
pub fn parse_pid(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = match s.split_once('=') {
        Some((n, p)) => (n.to_owned(), p),
        None => (format!("pid{s}"), s),
    };
    let pid = pid.parse().map_err(|_| format!("bad pid `{s}`"))?;
    Ok((name, pid))
}

/// CPU used by watched processes (and their descendants) and by this process over an interval.
pub struct CpuWatch {
    pids: Vec<(String, u32, TreeInfo)>,
    me: f64,
}

impl CpuWatch {
    pub fn start(pids: &[(String, u32)]) -> CpuWatch {
        CpuWatch {
            pids: pids
                .iter()
                .map(|(n, p)| (n.clone(), *p, tree_info(*p)))
                .collect(),
            me: proc_info(std::process::id()).map_or(0.0, |i| i.cpu_s),
        }
    }

    /// CPU seconds used since `start`, per process (with descendants), plus `generator`.
    pub fn stop(&self, requests: u64) -> Value {
        let per = |cpu: f64| {
            if requests == 0 {
                Value::Null
            } else {
                json!((cpu / requests as f64 * 1e6 * 10.0).round() / 10.0)
            }
        };
        let mut out = serde_json::Map::new();
        for (name, pid, before) in &self.pids {
            let now = tree_info(*pid);
            let cpu = (now.main.cpu_s - before.main.cpu_s).max(0.0);
            let kids = (now.children_cpu_s - before.children_cpu_s).max(0.0);
            out.insert(
                name.clone(),
                json!({
                    "pid": pid,
                    "cpu_s": cpu,
                    "cpu_us_per_request": per(cpu),
                    "children": now.children,
                    "children_cpu_s": kids,
                    "children_cpu_us_per_request": per(kids),
                    "rss_kb": now.main.rss_kb,
                    "children_rss_kb": now.children_rss_kb,
                }),
            );
        }
        let me = proc_info(std::process::id()).map_or(0.0, |i| i.cpu_s) - self.me;
        out.insert(
            "generator".into(),
            json!({ "cpu_s": me, "cpu_us_per_request": per(me) }),
        );
        Value::Object(out)
    }
}

pub fn write_json(path: Option<&std::path::Path>, v: &Value) -> anyhow::Result<()> {
    if let Some(p) = path {
        std::fs::write(p, serde_json::to_vec_pretty(v)?)?;
    }
    Ok(())
}
