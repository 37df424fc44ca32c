//! The last 15 minutes in 10-second buckets, for the admin page's charts (`GET /api/series`).
//!
//! A ring of [`BUCKETS`] buckets of [`BUCKET_MS`] each, aligned on the wall clock (bucket `n`
//! covers `[n × 10 s, (n + 1) × 10 s)` since the Unix epoch) and advanced by a monotonic clock.
//! A bucket older than the window is reused, so memory never grows with time. Each bucket holds:
//!
//! * `requests`: HTTP requests the gateway answered (every one, refused ones too — what
//!   `shadowcat_http_requests_total` counts);
//! * `errors`: answers that were errors — HTTP `4xx`/`5xx`, JSON-RPC error responses, and
//!   `tools/call` results with `isError: true`;
//! * `latency`: a histogram of the time from a client's JSON-RPC request to its answer, in the
//!   bucket of the answer (answers the gateway gave itself — refusals — are counted as calls
//!   and errors, not in the latency);
//! * per tool (`tools/call` by name): calls, errors, latency. Tool names come from clients, so
//!   a bucket keeps at most [`MAX_TOOLS_PER_BUCKET`] names (the rest are counted as *other
//!   tools*), names are cut at [`MAX_NAME_CHARS`] characters, and none of this is a metrics
//!   label;
//! * per upstream: the worst state seen by the samples taken every 2 s (`up`, `half-open`,
//!   `open` breaker, `ejected` after connection failures, `unhealthy` by health checks), the
//!   connection failures counted in the bucket, and the live sessions at the last sample.
//!
//! Percentiles are read from the histograms ([`Latency::quantile`]): linear interpolation inside
//! the bucket holding the rank, as Prometheus' `histogram_quantile` does, so a p99 is as exact as
//! the bucket bounds ([`LATENCY_MS`]) allow.
//!
//! Requests waiting for their answer are remembered per session (in the engine's
//! [`Awaiting`]: at most [`MAX_PENDING`] in all; beyond, a request is not timed) and forgotten
//! when answered, cancelled, when the session ends or after the window (15 minutes).

use super::Gateway;
use serde::Deserialize;
use serde_json::{Value, json};
use shadowcat_proto::{Frame, FrameKind, RequestId};
use shadowcat_proxy::guard::BreakerState;
use shadowcat_proxy::pipeline::{Awaiting, Direction, FrameCtx, Hook, Verdict};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Length of a bucket.
pub const BUCKET_MS: u64 = 10_000;
/// Buckets in the window (90 × 10 s = 15 minutes).
pub const BUCKETS: usize = 90;
/// Upper bounds (milliseconds) of the latency histogram's buckets; one more counts the rest.
pub const LATENCY_MS: [f64; 28] = [
    1.0, 2.0, 3.0, 5.0, 7.0, 10.0, 15.0, 20.0, 30.0, 50.0, 70.0, 100.0, 150.0, 200.0, 300.0, 500.0,
    700.0, 1_000.0, 1_500.0, 2_000.0, 3_000.0, 5_000.0, 7_000.0, 10_000.0, 15_000.0, 20_000.0,
    30_000.0, 60_000.0,
];
/// Distinct tool names a bucket keeps; calls to others count as *other tools*.
pub const MAX_TOOLS_PER_BUCKET: usize = 64;
/// Rows of the per-tool table (the busiest tools of the window; the rest are *other tools*).
pub const TOOL_ROWS: usize = 50;
/// Characters of a tool name kept.
pub const MAX_NAME_CHARS: usize = 128;
/// Requests waiting for an answer that are timed, over all sessions.
pub const MAX_PENDING: usize = 10_000;
/// How often upstream states are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// A latency histogram over [`LATENCY_MS`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Latency {
    counts: [u32; LATENCY_MS.len() + 1],
}

impl Latency {
    /// Count one answer that took `ms` milliseconds.
    pub fn add(&mut self, ms: f64) {
        let i = LATENCY_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(LATENCY_MS.len());
        self.counts[i] = self.counts[i].saturating_add(1);
    }

    /// Add `other`'s counts.
    pub fn merge(&mut self, other: &Latency) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a = a.saturating_add(b);
        }
    }

    /// Answers counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| u64::from(*c)).sum()
    }

    /// The `q` quantile (`0.5`: median) in milliseconds; `None` without answers. Inside the
    /// histogram bucket that holds the rank the value is interpolated linearly; in the last one
    /// (beyond 60 s) it is that bucket's lower bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (i, c) in self.counts.iter().map(|c| u64::from(*c)).enumerate() {
            if c > 0 && (below + c) as f64 >= rank {
                let lower = if i == 0 { 0.0 } else { LATENCY_MS[i - 1] };
                let Some(upper) = LATENCY_MS.get(i) else {
                    return Some(lower);
                };
                let within = ((rank - below as f64) / c as f64).clamp(0.0, 1.0);
                return Some(lower + (upper - lower) * within);
            }
            below += c;
        }
        LATENCY_MS.last().copied()
    }
}

/// One tool's calls.
#[derive(Debug, Clone, Default)]
struct ToolStats {
    calls: u64,
    errors: u64,
    latency: Latency,
}

impl ToolStats {
    fn merge(&mut self, o: &ToolStats) {
        self.calls += o.calls;
        self.errors += o.errors;
        self.latency.merge(&o.latency);
    }
}

/// An upstream's state, from best to worst (a bucket keeps the worst it saw).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum UpState {
    /// Takes new sessions.
    Up,
    /// Its breaker probes whether it recovered.
    HalfOpen,
    /// Its breaker is open: failing fast.
    Open,
    /// Ejected for a while after failing to connect.
    Ejected,
    /// Its active health checks fail.
    Unhealthy,
}

impl UpState {
    fn name(self) -> &'static str {
        match self {
            UpState::Up => "up",
            UpState::HalfOpen => "half-open",
            UpState::Open => "open",
            UpState::Ejected => "ejected",
            UpState::Unhealthy => "unhealthy",
        }
    }
}

/// One sample of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpSample {
    /// Its state now.
    pub state: UpState,
    /// Failed connection attempts so far (a running total).
    pub connect_failures: u64,
    /// Live sessions now.
    pub sessions: usize,
}

/// What a bucket keeps of one upstream.
#[derive(Debug, Clone, Copy)]
struct UpCell {
    worst: UpState,
    failures: u64,
    sessions: usize,
}

#[derive(Debug, Default)]
struct Bucket {
    /// Which bucket of the clock this is (`None`: never used).
    index: Option<u64>,
    requests: u64,
    errors: u64,
    latency: Latency,
    tools: HashMap<Box<str>, ToolStats>,
    /// Calls to tools beyond [`MAX_TOOLS_PER_BUCKET`].
    other: ToolStats,
    upstreams: Vec<Option<UpCell>>,
}

/// The ring of buckets and the last upstream samples.
#[derive(Debug)]
struct Ring {
    /// (route, upstream as shown) of every upstream, in the order samples come.
    names: Vec<(String, String)>,
    slots: Vec<Bucket>,
    /// Each upstream's running failure total at its previous sample (0 before the first: the
    /// failures since the gateway started belong to the first sample's bucket).
    last_failures: Vec<u64>,
}

impl Ring {
    fn new(names: Vec<(String, String)>) -> Ring {
        Ring {
            slots: (0..BUCKETS).map(|_| Bucket::default()).collect(),
            last_failures: vec![0; names.len()],
            names,
        }
    }

    /// The upstreams are now `names` (a configuration reload): each one's history follows
    /// it to its new place; a new one starts empty, a removed one's is dropped.
    fn rename(&mut self, names: &[(String, String)]) {
        let from: Vec<Option<usize>> = names
            .iter()
            .map(|n| self.names.iter().position(|o| o == n))
            .collect();
        let moved = |old: &[Option<UpCell>]| -> Vec<Option<UpCell>> {
            from.iter()
                .map(|i| i.and_then(|i| old.get(i).copied().flatten()))
                .collect()
        };
        for slot in &mut self.slots {
            if slot.index.is_some() {
                slot.upstreams = moved(&slot.upstreams);
            }
        }
        self.last_failures = from
            .iter()
            .map(|i| {
                i.and_then(|i| self.last_failures.get(i).copied())
                    .unwrap_or(0)
            })
            .collect();
        self.names = names.to_vec();
    }

    /// Bucket `index`, emptied first when its slot held an older one; `None` when the slot
    /// already holds a newer one (a writer that was held up for the whole window).
    fn at(&mut self, index: u64) -> Option<&mut Bucket> {
        let upstreams = self.last_failures.len();
        let slot = &mut self.slots[(index % BUCKETS as u64) as usize];
        match slot.index {
            Some(i) if i == index => {}
            Some(i) if i > index => return None,
            _ => {
                *slot = Bucket {
                    index: Some(index),
                    upstreams: vec![None; upstreams],
                    ..Bucket::default()
                }
            }
        }
        Some(slot)
    }

    fn get(&self, index: u64) -> Option<&Bucket> {
        let slot = &self.slots[(index % BUCKETS as u64) as usize];
        (slot.index == Some(index)).then_some(slot)
    }

    /// The window ending with bucket `now`, oldest first (`None`: nothing happened then).
    fn window(&self, now: u64) -> impl Iterator<Item = Option<&Bucket>> {
        let first = now.saturating_sub(BUCKETS as u64 - 1);
        (first..=now).map(move |i| self.get(i))
    }

    fn sample(&mut self, index: u64, samples: &[UpSample]) {
        let deltas: Vec<u64> = samples
            .iter()
            .zip(self.last_failures.iter_mut())
            .map(|(s, last)| {
                let d = s.connect_failures.saturating_sub(*last);
                *last = s.connect_failures;
                d
            })
            .collect();
        let Some(b) = self.at(index) else { return };
        for ((cell, s), d) in b.upstreams.iter_mut().zip(samples).zip(deltas) {
            *cell = Some(match *cell {
                Some(c) => UpCell {
                    worst: c.worst.max(s.state),
                    failures: c.failures + d,
                    sessions: s.sessions,
                },
                None => UpCell {
                    worst: s.state,
                    failures: d,
                    sessions: s.sessions,
                },
            });
        }
    }
}

/// A client request waiting for its answer.
#[derive(Debug)]
struct Waiting {
    since: Instant,
    /// The tool of a `tools/call`.
    tool: Option<Box<str>>,
}

/// The wall clock, advanced monotonically from when the series started.
#[derive(Debug)]
struct Clock {
    start: Instant,
    start_ms: u64,
}

impl Clock {
    fn now_ms(&self) -> u64 {
        self.start_ms + self.start.elapsed().as_millis() as u64
    }
}

/// The gateway's last 15 minutes.
#[derive(Debug)]
pub struct Series {
    clock: Clock,
    ring: Mutex<Ring>,
    pending: Awaiting<Waiting>,
}

/// `name` cut to [`MAX_NAME_CHARS`] characters.
fn bounded(name: &str) -> Box<str> {
    match name.char_indices().nth(MAX_NAME_CHARS) {
        Some((cut, _)) => Box::from(&name[..cut]),
        None => Box::from(name),
    }
}

/// Whether a `tools/call` answer is a failed tool result (`"isError": true`). Most answers do
/// not say `"isError"` at all: those are not parsed.
fn tool_failed(answer: &Frame) -> bool {
    #[derive(Deserialize)]
    struct Reply {
        result: Option<ToolResult>,
    }
    #[derive(Deserialize)]
    struct ToolResult {
        #[serde(rename = "isError")]
        is_error: Option<bool>,
    }
    if answer.kind() != FrameKind::Response
        || memchr::memmem::find(answer.raw(), b"\"isError\"").is_none()
    {
        return false;
    }
    serde_json::from_slice::<Reply>(answer.raw())
        .ok()
        .and_then(|r| r.result)
        .and_then(|r| r.is_error)
        .unwrap_or(false)
}

impl Series {
    /// An empty series over these upstreams (route, name as shown), sampled in this order.
    pub fn new(upstreams: Vec<(String, String)>) -> Series {
        Series::starting_at(upstreams, shadowcat_proxy::session::records::now_ms())
    }

    /// An empty series whose clock reads `now_ms` now.
    fn starting_at(upstreams: Vec<(String, String)>, now_ms: u64) -> Series {
        Series {
            clock: Clock {
                start: Instant::now(),
                start_ms: now_ms,
            },
            ring: Mutex::new(Ring::new(upstreams)),
            pending: Awaiting::new(MAX_PENDING, MAX_PENDING),
        }
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        shadowcat_proxy::sync::lock(&self.ring)
    }

    fn index(&self) -> u64 {
        self.clock.now_ms() / BUCKET_MS
    }

    /// The gateway answered an HTTP request with `status`.
    pub fn http(&self, status: u16) {
        let index = self.index();
        if let Some(b) = self.ring().at(index) {
            b.requests += 1;
            if status >= 400 {
                b.errors += 1;
            }
        }
    }

    /// A client request is on its way to the upstream (beyond the bound it is not timed).
    fn asked(&self, ctx: &FrameCtx<'_>, frame: &Frame) {
        let Some(id) = frame.id() else { return };
        let tool = (frame.method() == Some("tools/call"))
            .then(|| frame.target().map(bounded))
            .flatten();
        let waiting = Waiting {
            since: Instant::now(),
            tool,
        };
        let _ = self.pending.insert(ctx, id, waiting);
    }

    /// The request `id` of `ctx` will not be answered (cancelled), or was.
    fn forget(&self, ctx: &FrameCtx<'_>, id: &RequestId) -> Option<Waiting> {
        self.pending.take(ctx, id)
    }

    /// An answer (response or error) goes to the client.
    fn answered(&self, ctx: &FrameCtx<'_>, answer: &Frame) {
        let waiting = answer.id().and_then(|id| self.forget(ctx, id));
        let took = waiting.as_ref().map(|w| w.since.elapsed());
        let tool = waiting.and_then(|w| w.tool);
        let failed = answer.kind() == FrameKind::Error || (tool.is_some() && tool_failed(answer));
        self.count(tool, failed, took);
    }

    /// The gateway (or a hook after it) answered a client request itself.
    fn refused(&self, asked: &Frame, answer: &Frame) {
        let tool = (asked.method() == Some("tools/call"))
            .then(|| asked.target().map(bounded))
            .flatten();
        let failed = answer.kind() == FrameKind::Error || (tool.is_some() && tool_failed(answer));
        self.count(tool, failed, None);
    }

    fn count(&self, tool: Option<Box<str>>, failed: bool, took: Option<Duration>) {
        let ms = took.map(|d| d.as_secs_f64() * 1000.0);
        let index = self.index();
        let mut ring = self.ring();
        let Some(b) = ring.at(index) else { return };
        b.errors += u64::from(failed);
        if let Some(ms) = ms {
            b.latency.add(ms);
        }
        let Some(tool) = tool else { return };
        if !b.tools.contains_key(&tool) && b.tools.len() < MAX_TOOLS_PER_BUCKET {
            b.tools.insert(tool.clone(), ToolStats::default());
        }
        let stats = match b.tools.get_mut(&tool) {
            Some(s) => s,
            None => &mut b.other,
        };
        stats.calls += 1;
        stats.errors += u64::from(failed);
        if let Some(ms) = ms {
            stats.latency.add(ms);
        }
    }

    /// A session ended: its requests are no longer waited for.
    fn session_ended(&self, session: &str) {
        self.pending.end(session);
    }

    /// Record one sample of every upstream, `names` saying whose (route, name as shown; in
    /// the order given to [`Series::new`] unless a reload changed the upstreams) and stop
    /// waiting for requests older than the window.
    pub fn sample(&self, names: &[(String, String)], samples: &[UpSample]) {
        let index = self.index();
        let mut ring = self.ring();
        if ring.names != names {
            ring.rename(names);
        }
        ring.sample(index, samples);
        drop(ring);
        let window = Duration::from_millis(BUCKET_MS * BUCKETS as u64);
        self.pending.retain(|w| w.since.elapsed() < window);
    }

    /// The window as JSON (see `GET /api/series` in the admin module).
    pub fn snapshot(&self) -> Value {
        let now_ms = self.clock.now_ms();
        self.snapshot_at(now_ms)
    }

    fn snapshot_at(&self, now_ms: u64) -> Value {
        let now = now_ms / BUCKET_MS;
        let ring = self.ring();
        let window: Vec<Option<&Bucket>> = ring.window(now).collect();
        let requests: Vec<u64> = window.iter().map(|b| b.map_or(0, |b| b.requests)).collect();
        let errors: Vec<u64> = window.iter().map(|b| b.map_or(0, |b| b.errors)).collect();
        let quantile = |q: f64| -> Vec<Value> {
            window
                .iter()
                .map(|b| json!(b.and_then(|b| b.latency.quantile(q)).map(round)))
                .collect()
        };
        let (p50, p99) = (quantile(0.5), quantile(0.99));
        let mut tools: HashMap<&str, ToolStats> = HashMap::new();
        let mut other = ToolStats::default();
        for b in window.iter().flatten() {
            for (name, s) in &b.tools {
                tools.entry(name).or_default().merge(s);
            }
            other.merge(&b.other);
        }
        let mut tools: Vec<(&str, ToolStats)> = tools.into_iter().collect();
        tools.sort_by(|a, b| b.1.calls.cmp(&a.1.calls).then(a.0.cmp(b.0)));
        for (_, s) in tools.iter().skip(TOOL_ROWS) {
            other.merge(s);
        }
        tools.truncate(TOOL_ROWS);
        let row = |name: Option<&str>, s: &ToolStats| {
            json!({
                "name": name,
                "calls": s.calls,
                "errors": s.errors,
                "p50_ms": s.latency.quantile(0.5).map(round),
                "p99_ms": s.latency.quantile(0.99).map(round),
            })
        };
        let mut tool_rows: Vec<Value> = tools.iter().map(|(n, s)| row(Some(*n), s)).collect();
        if other.calls > 0 {
            tool_rows.push(row(None, &other));
        }
        let upstreams: Vec<Value> = ring
            .names
            .iter()
            .enumerate()
            .map(|(i, (route, name))| {
                let cell = |b: &Option<&Bucket>| b.and_then(|b| b.upstreams.get(i).copied().flatten());
                json!({
                    "route": route,
                    "name": name,
                    "states": window.iter().map(|b| cell(b).map(|c| c.worst.name())).collect::<Vec<_>>(),
                    "connect_failures": window.iter().map(|b| cell(b).map_or(0, |c| c.failures)).collect::<Vec<_>>(),
                    "sessions": window.iter().map(|b| cell(b).map(|c| c.sessions)).collect::<Vec<_>>(),
                })
            })
            .collect();
        let first = now.saturating_sub(BUCKETS as u64 - 1);
        json!({
            "bucket_ms": BUCKET_MS,
            "start_ms": first * BUCKET_MS,
            "now_ms": now_ms,
            "requests": requests,
            "errors": errors,
            "latency_p50_ms": p50,
            "latency_p99_ms": p99,
            "tools": tool_rows,
            "upstreams": upstreams,
        })
    }
}

/// Milliseconds to two decimals (what a chart shows).
fn round(ms: f64) -> f64 {
    (ms * 100.0).round() / 100.0
}

impl Gateway {
    /// Every upstream of every route, ordered by route path then member: the order of
    /// [`Series`] samples.
    pub(crate) fn upstream_order(
        routes: &HashMap<Arc<str>, Arc<super::Route>>,
    ) -> Vec<(Arc<super::Route>, usize)> {
        let mut list: Vec<_> = routes.values().cloned().collect();
        list.sort_by(|a, b| a.path.cmp(&b.path));
        list.into_iter()
            .flat_map(|r| (0..r.set.members().len()).map(move |i| (r.clone(), i)))
            .collect()
    }

    /// Sample every upstream's state into the series.
    pub(crate) fn sample_series(&self) {
        let order = Gateway::upstream_order(&self.live().routes);
        let names: Vec<(String, String)> = order
            .iter()
            .map(|(r, i)| {
                (
                    r.path.clone(),
                    super::admin::shown(r.set.members()[*i].name()),
                )
            })
            .collect();
        let samples: Vec<UpSample> = order
            .iter()
            .map(|(r, i)| {
                let set = &r.set;
                let m = &set.members()[*i];
                let breaker = m.guard().breaker().map(|b| b.state());
                let state = if !m.healthy() {
                    UpState::Unhealthy
                } else if breaker == Some(BreakerState::Open) {
                    UpState::Open
                } else if !set.is_available(*i) {
                    UpState::Ejected
                } else if breaker == Some(BreakerState::HalfOpen) {
                    UpState::HalfOpen
                } else {
                    UpState::Up
                };
                UpSample {
                    state,
                    connect_failures: m.connect_failures(),
                    sessions: m.sessions(),
                }
            })
            .collect();
        self.series.sample(&names, &samples);
    }

    /// The pipeline hook that times requests for the series; install it last, so that it
    /// sees what reaches the upstream and the client (and answers hooks gave themselves).
    pub fn series_hook(self: &Arc<Self>) -> Arc<dyn Hook> {
        Arc::new(SeriesHook(self.clone()))
    }
}

/// Times client requests and counts their answers.
struct SeriesHook(Arc<Gateway>);

impl Hook for SeriesHook {
    fn name(&self) -> &'static str {
        "gateway-series"
    }

    fn on_frame(&self, ctx: &FrameCtx<'_>, frame: &Frame) -> Verdict {
        let series = &self.0.series;
        match (ctx.direction, frame.kind()) {
            (Direction::ClientToServer, FrameKind::Request) => series.asked(ctx, frame),
            (Direction::ClientToServer, FrameKind::Notification) => {
                if let Some(id) = frame.cancelled_id() {
                    series.forget(ctx, id);
                }
            }
            (Direction::ServerToClient, FrameKind::Response | FrameKind::Error) => {
                series.answered(ctx, frame)
            }
            _ => {}
        }
        Verdict::Forward
    }

    fn on_answered(&self, ctx: &FrameCtx<'_>, frame: &Frame, answer: &Frame, _by: &'static str) {
        if ctx.direction == Direction::ClientToServer && frame.kind() == FrameKind::Request {
            self.0.series.refused(frame, answer);
        }
    }

    fn on_session_end(&self, session: &str) {
        self.0.series.session_ended(session);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c2s(session: &str) -> FrameCtx<'_> {
        FrameCtx::new(session, Direction::ClientToServer)
    }

    fn s2c(session: &str) -> FrameCtx<'_> {
        FrameCtx::new(session, Direction::ServerToClient)
    }
    use bytes::Bytes;

    fn frame(s: &str) -> Frame {
        Frame::parse_single(Bytes::from(s.to_string())).unwrap()
    }

    /// A series whose clock starts at the start of a bucket: what a test counts lands in
    /// one bucket.
    fn series() -> Series {
        let aligned = 1_000_000 * BUCKET_MS;
        Series::starting_at(vec![("/mcp".into(), "http://a/mcp".into())], aligned)
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        let mut l = Latency::default();
        assert_eq!(l.quantile(0.5), None, "no answers, no percentile");
        // 100 answers: 90 in (5, 7] ms, 10 in (700, 1000] ms.
        for _ in 0..90 {
            l.add(6.0);
        }
        for _ in 0..10 {
            l.add(800.0);
        }
        assert_eq!(l.count(), 100);
        // Rank 50 of the 90 in (5, 7]: 5 + 2 × 50/90.
        let p50 = l.quantile(0.5).unwrap();
        assert!((p50 - (5.0 + 2.0 * 50.0 / 90.0)).abs() < 1e-9, "{p50}");
        // Rank 99: the 9th of the 10 in (700, 1000]: 700 + 300 × 9/10.
        let p99 = l.quantile(0.99).unwrap();
        assert!((p99 - 970.0).abs() < 1e-9, "{p99}");
        // Bounds are inclusive; beyond the last one the value is its lower bound.
        let mut edge = Latency::default();
        edge.add(1.0);
        assert!(edge.quantile(1.0).unwrap() <= 1.0);
        let mut slow = Latency::default();
        slow.add(120_000.0);
        assert_eq!(slow.quantile(0.5), Some(60_000.0));
        let mut merged = l.clone();
        merged.merge(&slow);
        assert_eq!(merged.count(), 101);
    }

    #[test]
    fn the_ring_keeps_fifteen_minutes_and_reuses_old_buckets() {
        let mut ring = Ring::new(Vec::new());
        let start = 1_000_000u64;
        ring.at(start).unwrap().requests = 5;
        ring.at(start + 1).unwrap().requests = 7;
        let w: Vec<u64> = ring
            .window(start + 1)
            .map(|b| b.map_or(0, |b| b.requests))
            .collect();
        assert_eq!(w.len(), BUCKETS);
        assert_eq!(&w[BUCKETS - 2..], &[5, 7], "newest last");
        // 90 buckets later the first slot is reused: its old counts are gone.
        let later = start + BUCKETS as u64;
        assert_eq!(ring.at(later).unwrap().requests, 0, "emptied on reuse");
        assert!(ring.get(start).is_none());
        let w: Vec<u64> = ring
            .window(later)
            .map(|b| b.map_or(0, |b| b.requests))
            .collect();
        assert_eq!(
            w[BUCKETS - 1 - (BUCKETS - 1)],
            7,
            "start + 1 is the oldest left"
        );
        // A writer held up for the whole window does not wipe a newer bucket.
        assert!(ring.at(start).is_none());
        assert!(ring.get(later).is_some());
    }

    #[test]
    fn calls_errors_and_latency_per_tool() {
        let s = series();
        s.http(200);
        s.http(401);
        let call = |id: u32, tool: &str| {
            frame(&format!(
                r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}"}}}}"#
            ))
        };
        s.asked(&c2s("s1"), &call(1, "add"));
        s.asked(&c2s("s1"), &call(2, "add"));
        s.asked(&c2s("s1"), &call(3, "flaky"));
        s.answered(
            &s2c("s1"),
            &frame(r#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#),
        );
        s.answered(
            &s2c("s1"),
            &frame(r#"{"jsonrpc":"2.0","id":2,"result":{"content":[],"isError":true}}"#),
        );
        s.answered(
            &s2c("s1"),
            &frame(r#"{"jsonrpc":"2.0","id":3,"error":{"code":-32000,"message":"x"}}"#),
        );
        // Refused by the gateway itself: a call and an error, not timed.
        let refused = frame(r#"{"jsonrpc":"2.0","id":4,"error":{"code":-32029,"message":"x"}}"#);
        s.refused(&call(4, "flaky"), &refused);
        let v = s.snapshot();
        let last = |k: &str| v[k].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last("requests"), 2);
        assert_eq!(
            last("errors"),
            1 + 3,
            "the 401, the failed result, two errors"
        );
        assert!(last("latency_p50_ms").is_number(), "{v}");
        assert_eq!(v["requests"].as_array().unwrap().len(), BUCKETS);
        let tools = v["tools"].as_array().unwrap();
        assert_eq!(tools.len(), 2, "{v}");
        let by = |n: &str| tools.iter().find(|t| t["name"] == n).unwrap().clone();
        assert_eq!(by("add")["calls"], 2);
        assert_eq!(by("add")["errors"], 1);
        assert!(by("add")["p99_ms"].is_number());
        assert_eq!(by("flaky")["calls"], 2);
        assert_eq!(by("flaky")["errors"], 2);
        assert!(s.pending.is_empty(), "every answered request forgotten");
    }

    #[test]
    fn tool_names_are_bounded() {
        let s = series();
        for i in 0..MAX_TOOLS_PER_BUCKET + 5 {
            let f = frame(&format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"t{i}"}}}}"#
            ));
            s.refused(&f, &frame(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#));
        }
        let long = "x".repeat(MAX_NAME_CHARS * 3);
        assert_eq!(bounded(&long).chars().count(), MAX_NAME_CHARS);
        let v = s.snapshot();
        let tools = v["tools"].as_array().unwrap();
        assert_eq!(tools.len(), TOOL_ROWS + 1, "{v}");
        let other = tools.last().unwrap();
        assert_eq!(other["name"], Value::Null);
        assert_eq!(
            other["calls"],
            (MAX_TOOLS_PER_BUCKET + 5 - TOOL_ROWS) as u64,
            "the bucket's overflow and the rows beyond the table"
        );
    }

    #[test]
    fn pending_requests_are_bounded_and_forgotten() {
        let s = series();
        for i in 0..MAX_PENDING + 10 {
            let f = frame(&format!(r#"{{"jsonrpc":"2.0","id":{i},"method":"ping"}}"#));
            s.asked(&c2s(if i % 2 == 0 { "a" } else { "b" }), &f);
        }
        assert_eq!(s.pending.len(None), MAX_PENDING, "the rest are not timed");
        let n = s.pending.len(Some("a"));
        s.session_ended("a");
        assert_eq!(s.pending.len(None), MAX_PENDING - n);
        assert!(s.forget(&c2s("b"), &RequestId::Number(1)).is_some());
        assert!(s.forget(&c2s("b"), &RequestId::Number(1)).is_none());
    }

    #[test]
    fn upstream_samples_keep_the_worst_state_and_count_failures() {
        let s = series();
        let at = |state, failures, sessions| UpSample {
            state,
            connect_failures: failures,
            sessions,
        };
        let a = [("/mcp".to_string(), "http://a/mcp".to_string())];
        s.sample(&a, &[at(UpState::Up, 3, 1)]);
        s.sample(&a, &[at(UpState::Ejected, 5, 2)]);
        s.sample(&a, &[at(UpState::Up, 6, 0)]);
        let v = s.snapshot();
        let u = &v["upstreams"][0];
        assert_eq!(u["route"], "/mcp");
        let last = |k: &str| u[k].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last("states"), "ejected", "the worst of the bucket: {u}");
        assert_eq!(
            last("connect_failures"),
            6,
            "failures since the gateway started"
        );
        assert_eq!(last("sessions"), 0, "as last sampled");
        let states = u["states"].as_array().unwrap();
        assert!(states[0].is_null(), "nothing sampled 15 minutes ago");
    }

    #[test]
    fn a_reload_moves_each_upstreams_history_with_it() {
        let s = series();
        let up = |sessions| UpSample {
            state: UpState::Up,
            connect_failures: 0,
            sessions,
        };
        let name = |route: &str, n: &str| (route.to_string(), n.to_string());
        s.sample(&[name("/mcp", "http://a/mcp")], &[up(4)]);
        // A reload adds a route before it and a member after it.
        let after = [
            name("/mcp", "http://0/mcp"),
            name("/mcp", "http://a/mcp"),
            name("/servers/x/mcp", "x"),
        ];
        s.sample(&after, &[up(1), up(5), up(2)]);
        let v = s.snapshot();
        let rows = v["upstreams"].as_array().unwrap();
        assert_eq!(rows.len(), 3, "{v}");
        assert_eq!(rows[1]["name"], "http://a/mcp");
        let last = |i: usize| {
            rows[i]["sessions"]
                .as_array()
                .unwrap()
                .last()
                .unwrap()
                .clone()
        };
        assert_eq!(last(1), 5, "a's cell followed it to its new place: {v}");
        assert_eq!(last(0), 1);
        // Removed: its history goes with it.
        s.sample(&after[1..2], &[up(6)]);
        let v = s.snapshot();
        assert_eq!(v["upstreams"].as_array().unwrap().len(), 1, "{v}");
        assert_eq!(v["upstreams"][0]["name"], "http://a/mcp");
    }
}
