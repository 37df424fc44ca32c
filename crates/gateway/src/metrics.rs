//! Prometheus metrics of the gateway, in the text exposition format (written by hand: a few
//! counters and one histogram do not need a metrics library).

use shadowcat_store::{OP_BUCKETS, OpSample};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the request latency histogram.
pub const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// Requests by route, then method, then status (looked up without allocating: this is counted
/// on every request).
type Requests = BTreeMap<String, BTreeMap<String, BTreeMap<u16, u64>>>;

/// The entry for `key`, made on first use (a key is copied only then).
fn slot<'a, V: Default>(m: &'a mut BTreeMap<String, V>, key: &str) -> &'a mut V {
    if !m.contains_key(key) {
        m.insert(key.to_string(), V::default());
    }
    m.get_mut(key).expect("present")
}

#[derive(Default)]
struct State {
    requests: Requests,
    latency: BTreeMap<String, Histogram>,
    rate_limited: BTreeMap<(String, String), u64>,
    auth_failures: BTreeMap<(String, String), u64>,
    denied_sessions: BTreeMap<String, u64>,
    authz_denied: BTreeMap<String, u64>,
}

/// Counters shared by all requests.
#[derive(Default)]
pub struct Metrics {
    state: Mutex<State>,
}

/// Gauges read at scrape time.
pub struct Snapshot {
    /// Live sessions on this replica.
    pub active_sessions: usize,
    /// Whether the session store is reachable.
    pub store_healthy: bool,
    /// The store backend (`memory`, `sqlite`, `redis`).
    pub store_backend: &'static str,
    /// Per store operation: counts and latency.
    pub store_ops: Vec<OpSample>,
    /// Per upstream: route, upstream name, up (not ejected), live sessions, in-flight requests,
    /// sessions placed there, failed connection attempts.
    pub upstreams: Vec<UpstreamGauge>,
    /// Per server of a composite route: its live sessions by the server's state in each.
    pub servers: Vec<ServerGauge>,
}

/// One server of a composite route, over the route's live sessions on this replica.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ServerGauge {
    /// Route path.
    pub route: String,
    /// The server's name.
    pub server: String,
    /// Sessions in which it serves.
    pub up: usize,
    /// Sessions in which it is starting (or restarting).
    pub starting: usize,
    /// Sessions in which it failed and waits to be restarted (those sessions are degraded).
    pub down: usize,
}

/// One upstream's state.
pub struct UpstreamGauge {
    /// Route path.
    pub route: String,
    /// URL or command.
    pub upstream: String,
    /// May get new sessions (healthy and not ejected).
    pub up: bool,
    /// Active health checks say healthy (always true without checks).
    pub healthy: bool,
    /// Live sessions.
    pub sessions: usize,
    /// Requests in flight.
    pub inflight: usize,
    /// Sessions ever placed there.
    pub sessions_total: u64,
    /// Failed connection attempts.
    pub connect_failures: u64,
    /// Circuit breaker: 0 closed, 1 half-open, 2 open (0 without a breaker).
    pub breaker: u8,
    /// Times the breaker opened.
    pub breaker_opened: u64,
    /// Requests refused fast while the breaker was open.
    pub breaker_rejected: u64,
    /// Retries sent.
    pub retries: u64,
    /// Retries not sent because the retry budget was spent.
    pub retry_budget_exhausted: u64,
    /// Requests that timed out.
    pub timeouts: u64,
    /// Warm spares ready (stdio upstreams that keep spares only).
    pub spares: Option<usize>,
}

impl UpstreamGauge {
    /// The gauges of member `i` of `route`'s set.
    pub fn of(route: &str, set: &super::UpstreamSet, i: usize) -> UpstreamGauge {
        use std::sync::atomic::Ordering::Relaxed;
        let m = &set.members()[i];
        let g = m.guard();
        let s = g.stats();
        UpstreamGauge {
            route: route.to_string(),
            upstream: m.name().to_string(),
            up: set.is_available(i),
            healthy: m.healthy(),
            sessions: m.sessions(),
            inflight: m.inflight(),
            sessions_total: m.sessions_total(),
            connect_failures: m.connect_failures(),
            breaker: g.breaker().map(|b| b.state().gauge()).unwrap_or(0),
            breaker_opened: g.breaker().map(|b| b.opened_total()).unwrap_or(0),
            breaker_rejected: s.rejected.load(Relaxed),
            retries: s.retries.load(Relaxed),
            retry_budget_exhausted: s.budget_exhausted.load(Relaxed),
            timeouts: s.timeouts.load(Relaxed),
            spares: m.spares().map(|s| s.ready()),
        }
    }
}

/// Counters summed over routes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// HTTP requests answered.
    pub requests: u64,
    /// By status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub by_class: [u64; 5],
    /// Refused by a rate limit.
    pub rate_limited: u64,
    /// Refused by authentication.
    pub auth_failures: u64,
    /// Refused by an authorization rule.
    pub authz_denied: u64,
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        shadowcat_proxy::sync::lock(&self.state)
    }

    /// One HTTP request finished (its response head was produced).
    pub fn request(&self, route: &str, method: &str, status: u16, took: Duration) {
        let mut s = self.lock();
        let by_method = slot(&mut s.requests, route);
        *slot(by_method, method).entry(status).or_default() += 1;
        let h = slot(&mut s.latency, route);
        if h.counts.is_empty() {
            h.counts = vec![0; BUCKETS.len()];
        }
        let secs = took.as_secs_f64();
        for (c, b) in h.counts.iter_mut().zip(BUCKETS) {
            if secs <= *b {
                *c += 1;
            }
        }
        h.sum += secs;
        h.count += 1;
    }

    /// A request or call was refused by a rate limit.
    pub fn rate_limited(&self, route: &str, scope: &str) {
        *self
            .lock()
            .rate_limited
            .entry((route.to_string(), scope.to_string()))
            .or_default() += 1;
    }

    /// Authentication failed.
    pub fn auth_failure(&self, route: &str, reason: &str) {
        *self
            .lock()
            .auth_failures
            .entry((route.to_string(), reason.to_string()))
            .or_default() += 1;
    }

    /// A principal presented a session id bound to another principal.
    pub fn foreign_session(&self, route: &str) {
        *self
            .lock()
            .denied_sessions
            .entry(route.to_string())
            .or_default() += 1;
    }

    /// A request was refused by an authorization rule.
    pub fn authz_denied(&self, route: &str) {
        *self
            .lock()
            .authz_denied
            .entry(route.to_string())
            .or_default() += 1;
    }

    /// Running totals (the admin page turns them into rates).
    pub fn totals(&self) -> Totals {
        let s = self.lock();
        let mut t = Totals::default();
        for (status, n) in s.requests.values().flat_map(|m| m.values()).flatten() {
            t.requests += n;
            if let Some(c) = t
                .by_class
                .get_mut(usize::from(status / 100).wrapping_sub(1))
            {
                *c += n;
            }
        }
        t.rate_limited = s.rate_limited.values().sum();
        t.auth_failures = s.auth_failures.values().sum();
        t.authz_denied = s.authz_denied.values().sum();
        t
    }

    /// The exposition text.
    pub fn render(&self, snap: &Snapshot) -> String {
        let s = self.lock();
        let mut o = String::with_capacity(4096);
        let _ = writeln!(
            o,
            "# HELP shadowcat_http_requests_total HTTP requests by route, method and status."
        );
        let _ = writeln!(o, "# TYPE shadowcat_http_requests_total counter");
        let requests = s.requests.iter().flat_map(|(route, m)| {
            m.iter().flat_map(move |(method, st)| {
                st.iter().map(move |(status, n)| (route, method, status, n))
            })
        });
        for (route, method, status, n) in requests {
            let _ = writeln!(
                o,
                "shadowcat_http_requests_total{{route=\"{}\",method=\"{}\",status=\"{status}\"}} {n}",
                esc(route),
                esc(method)
            );
        }
        let _ = writeln!(
            o,
            "# HELP shadowcat_http_request_duration_seconds Time to the response head, by route."
        );
        let _ = writeln!(
            o,
            "# TYPE shadowcat_http_request_duration_seconds histogram"
        );
        for (route, h) in &s.latency {
            let r = esc(route);
            for (c, b) in h.counts.iter().zip(BUCKETS) {
                let _ = writeln!(
                    o,
                    "shadowcat_http_request_duration_seconds_bucket{{route=\"{r}\",le=\"{b}\"}} {c}"
                );
            }
            let _ = writeln!(
                o,
                "shadowcat_http_request_duration_seconds_bucket{{route=\"{r}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                o,
                "shadowcat_http_request_duration_seconds_sum{{route=\"{r}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                o,
                "shadowcat_http_request_duration_seconds_count{{route=\"{r}\"}} {}",
                h.count
            );
        }
        let _ = writeln!(
            o,
            "# HELP shadowcat_rate_limited_total Requests and tool calls refused by a rate limit."
        );
        let _ = writeln!(o, "# TYPE shadowcat_rate_limited_total counter");
        for ((route, scope), n) in &s.rate_limited {
            let _ = writeln!(
                o,
                "shadowcat_rate_limited_total{{route=\"{}\",limit=\"{}\"}} {n}",
                esc(route),
                esc(scope)
            );
        }
        let _ = writeln!(
            o,
            "# HELP shadowcat_auth_failures_total Requests refused by authentication."
        );
        let _ = writeln!(o, "# TYPE shadowcat_auth_failures_total counter");
        for ((route, reason), n) in &s.auth_failures {
            let _ = writeln!(
                o,
                "shadowcat_auth_failures_total{{route=\"{}\",reason=\"{}\"}} {n}",
                esc(route),
                esc(reason)
            );
        }
        let _ = writeln!(
            o,
            "# HELP shadowcat_foreign_session_total Session ids presented by a principal that does not own them (answered 404)."
        );
        let _ = writeln!(o, "# TYPE shadowcat_foreign_session_total counter");
        for (route, n) in &s.denied_sessions {
            let _ = writeln!(
                o,
                "shadowcat_foreign_session_total{{route=\"{}\"}} {n}",
                esc(route)
            );
        }
        let _ = writeln!(
            o,
            "# HELP shadowcat_authz_denied_total Requests refused by an authorization rule."
        );
        let _ = writeln!(o, "# TYPE shadowcat_authz_denied_total counter");
        for (route, n) in &s.authz_denied {
            let _ = writeln!(
                o,
                "shadowcat_authz_denied_total{{route=\"{}\"}} {n}",
                esc(route)
            );
        }
        drop(s);
        let _ = writeln!(
            o,
            "# HELP shadowcat_active_sessions Live sessions on this replica."
        );
        let _ = writeln!(o, "# TYPE shadowcat_active_sessions gauge");
        let _ = writeln!(o, "shadowcat_active_sessions {}", snap.active_sessions);
        let _ = writeln!(
            o,
            "# HELP shadowcat_store_up Whether the session store is reachable."
        );
        let _ = writeln!(o, "# TYPE shadowcat_store_up gauge");
        let _ = writeln!(o, "shadowcat_store_up {}", u8::from(snap.store_healthy));
        render_store_ops(&mut o, snap);
        type Field = fn(&UpstreamGauge) -> String;
        let families: [(&str, &str, &str, Field); 12] = [
            (
                "shadowcat_upstream_up",
                "gauge",
                "1 while the upstream may get new sessions (healthy, not ejected after connection failures).",
                |u| u8::from(u.up).to_string(),
            ),
            (
                "shadowcat_upstream_healthy",
                "gauge",
                "1 while active health checks pass (always 1 without checks).",
                |u| u8::from(u.healthy).to_string(),
            ),
            (
                "shadowcat_upstream_sessions",
                "gauge",
                "Live sessions per upstream.",
                |u| u.sessions.to_string(),
            ),
            (
                "shadowcat_upstream_inflight_requests",
                "gauge",
                "Client requests in flight per upstream.",
                |u| u.inflight.to_string(),
            ),
            (
                "shadowcat_upstream_sessions_total",
                "counter",
                "Sessions placed on each upstream.",
                |u| u.sessions_total.to_string(),
            ),
            (
                "shadowcat_upstream_connect_failures_total",
                "counter",
                "Failed connection attempts per upstream.",
                |u| u.connect_failures.to_string(),
            ),
            (
                "shadowcat_upstream_breaker_state",
                "gauge",
                "Circuit breaker state: 0 closed, 1 half-open (probing), 2 open (failing fast).",
                |u| u.breaker.to_string(),
            ),
            (
                "shadowcat_upstream_breaker_opened_total",
                "counter",
                "Times the circuit breaker opened.",
                |u| u.breaker_opened.to_string(),
            ),
            (
                "shadowcat_upstream_breaker_rejected_total",
                "counter",
                "Requests refused without reaching the upstream while its breaker was open.",
                |u| u.breaker_rejected.to_string(),
            ),
            (
                "shadowcat_upstream_retries_total",
                "counter",
                "Requests sent again (connection failures; 502/503/504 on idempotent methods).",
                |u| u.retries.to_string(),
            ),
            (
                "shadowcat_upstream_retry_budget_exhausted_total",
                "counter",
                "Retries not sent because the retry budget was spent.",
                |u| u.retry_budget_exhausted.to_string(),
            ),
            (
                "shadowcat_upstream_request_timeouts_total",
                "counter",
                "Requests the upstream did not answer within the request timeout.",
                |u| u.timeouts.to_string(),
            ),
        ];
        for (name, kind, help, value) in families {
            let _ = writeln!(o, "# HELP {name} {help}");
            let _ = writeln!(o, "# TYPE {name} {kind}");
            for u in &snap.upstreams {
                let _ = writeln!(
                    o,
                    "{name}{{route=\"{}\",upstream=\"{}\"}} {}",
                    esc(&u.route),
                    esc(&u.upstream),
                    value(u)
                );
            }
        }
        if !snap.servers.is_empty() {
            let name = "shadowcat_composite_server_sessions";
            let _ = writeln!(
                o,
                "# HELP {name} Live sessions of a composite route by the state of one of its servers in them (state=\"down\": the session is degraded)."
            );
            let _ = writeln!(o, "# TYPE {name} gauge");
            for g in &snap.servers {
                for (state, n) in [("up", g.up), ("starting", g.starting), ("down", g.down)] {
                    let _ = writeln!(
                        o,
                        "{name}{{route=\"{}\",server=\"{}\",state=\"{state}\"}} {n}",
                        esc(&g.route),
                        esc(&g.server),
                    );
                }
            }
        }
        render_callouts(&mut o);
        let spares: Vec<_> = snap
            .upstreams
            .iter()
            .filter_map(|u| u.spares.map(|n| (u, n)))
            .collect();
        if !spares.is_empty() {
            let _ = writeln!(
                o,
                "# HELP shadowcat_upstream_spares Warm spare children ready (stdio upstreams with spares)."
            );
            let _ = writeln!(o, "# TYPE shadowcat_upstream_spares gauge");
            for (u, n) in spares {
                let _ = writeln!(
                    o,
                    "shadowcat_upstream_spares{{route=\"{}\",upstream=\"{}\"}} {n}",
                    esc(&u.route),
                    esc(&u.upstream),
                );
            }
        }
        o
    }
}

/// `shadowcat_guardrail_callouts_total` and `shadowcat_guardrail_callout_seconds_total`, per
/// interceptor rule with a `callout` action (nothing until one was made).
fn render_callouts(o: &mut String) {
    use shadowcat_proxy::intercept::guard::{OUTCOMES, callout_counts};
    use std::sync::atomic::Ordering;
    let counts = callout_counts();
    if counts.is_empty() {
        return;
    }
    let name = "shadowcat_guardrail_callouts_total";
    let _ = writeln!(
        o,
        "# HELP {name} Guardrail callouts by interceptor rule and outcome (the service's decision, or a failure let through or refused by failure_mode)."
    );
    let _ = writeln!(o, "# TYPE {name} counter");
    for (rule, c) in &counts {
        for (outcome, n) in OUTCOMES.iter().zip(&c.outcomes) {
            let _ = writeln!(
                o,
                "{name}{{rule=\"{}\",outcome=\"{outcome}\"}} {}",
                esc(rule),
                n.load(Ordering::Relaxed)
            );
        }
    }
    let name = "shadowcat_guardrail_callout_seconds_total";
    let _ = writeln!(
        o,
        "# HELP {name} Time spent waiting for guardrail callouts, by interceptor rule."
    );
    let _ = writeln!(o, "# TYPE {name} counter");
    for (rule, c) in &counts {
        let secs = c.micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(o, "{name}{{rule=\"{}\"}} {secs}", esc(rule));
    }
}

/// `shadowcat_store_operations_total` and `shadowcat_store_operation_duration_seconds`.
fn render_store_ops(o: &mut String, snap: &Snapshot) {
    let b = snap.store_backend;
    let _ = writeln!(
        o,
        "# HELP shadowcat_store_operations_total Session store operations, by backend, operation and result."
    );
    let _ = writeln!(o, "# TYPE shadowcat_store_operations_total counter");
    for s in &snap.store_ops {
        for (result, n) in [("ok", s.ok), ("error", s.errors)] {
            let _ = writeln!(
                o,
                "shadowcat_store_operations_total{{backend=\"{b}\",op=\"{}\",result=\"{result}\"}} {n}",
                s.op
            );
        }
    }
    let _ = writeln!(
        o,
        "# HELP shadowcat_store_operation_duration_seconds Session store operation latency."
    );
    let _ = writeln!(
        o,
        "# TYPE shadowcat_store_operation_duration_seconds histogram"
    );
    for s in &snap.store_ops {
        let labels = format!("backend=\"{b}\",op=\"{}\"", s.op);
        let les = OP_BUCKETS.iter().map(|b| b.to_string());
        for (le, c) in les.chain(["+Inf".to_string()]).zip(&s.cumulative) {
            let _ = writeln!(
                o,
                "shadowcat_store_operation_duration_seconds_bucket{{{labels},le=\"{le}\"}} {c}"
            );
        }
        let _ = writeln!(
            o,
            "shadowcat_store_operation_duration_seconds_sum{{{labels}}} {}",
            s.sum_seconds
        );
        let _ = writeln!(
            o,
            "shadowcat_store_operation_duration_seconds_count{{{labels}}} {}",
            s.ok + s.errors
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        m.request("/mcp", "POST", 200, Duration::from_millis(3));
        m.request("/mcp", "POST", 200, Duration::from_millis(30));
        m.rate_limited("/mcp", "ip");
        let text = m.render(&Snapshot {
            active_sessions: 2,
            store_healthy: true,
            store_backend: "sqlite",
            store_ops: vec![OpSample {
                op: "get",
                ok: 3,
                errors: 1,
                cumulative: vec![1, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 4],
                sum_seconds: 0.5,
            }],
            upstreams: vec![UpstreamGauge {
                route: "/mcp".into(),
                upstream: "http://a/\"x\"".into(),
                up: true,
                healthy: true,
                sessions: 2,
                inflight: 1,
                sessions_total: 5,
                connect_failures: 0,
                breaker: 2,
                breaker_opened: 1,
                breaker_rejected: 4,
                retries: 3,
                retry_budget_exhausted: 0,
                timeouts: 1,
                spares: Some(2),
            }],
            servers: vec![ServerGauge {
                route: "/mcp".into(),
                server: "github".into(),
                up: 3,
                starting: 0,
                down: 1,
            }],
        });
        assert!(text.contains(
            "shadowcat_composite_server_sessions{route=\"/mcp\",server=\"github\",state=\"down\"} 1"
        ));
        assert!(text.contains(
            "shadowcat_http_requests_total{route=\"/mcp\",method=\"POST\",status=\"200\"} 2"
        ));
        assert!(text.contains(
            "shadowcat_http_request_duration_seconds_bucket{route=\"/mcp\",le=\"0.005\"} 1"
        ));
        assert!(text.contains(
            "shadowcat_http_request_duration_seconds_bucket{route=\"/mcp\",le=\"+Inf\"} 2"
        ));
        assert!(text.contains("shadowcat_rate_limited_total{route=\"/mcp\",limit=\"ip\"} 1"));
        assert!(text.contains(
            "shadowcat_upstream_sessions{route=\"/mcp\",upstream=\"http://a/\\\"x\\\"\"} 2"
        ));
        assert!(text.contains("shadowcat_active_sessions 2"));
        assert!(text.contains(
            "shadowcat_store_operations_total{backend=\"sqlite\",op=\"get\",result=\"error\"} 1"
        ));
        assert!(text.contains(
            "shadowcat_store_operation_duration_seconds_bucket{backend=\"sqlite\",op=\"get\",le=\"0.00025\"} 2"
        ));
        assert!(text.contains(
            "shadowcat_store_operation_duration_seconds_bucket{backend=\"sqlite\",op=\"get\",le=\"+Inf\"} 4"
        ));
        assert!(text.contains(
            "shadowcat_store_operation_duration_seconds_count{backend=\"sqlite\",op=\"get\"} 4"
        ));
        assert!(text.contains(
            "shadowcat_upstream_breaker_state{route=\"/mcp\",upstream=\"http://a/\\\"x\\\"\"} 2"
        ));
        assert!(text.contains(
            "shadowcat_upstream_retries_total{route=\"/mcp\",upstream=\"http://a/\\\"x\\\"\"} 3"
        ));
        assert!(text.contains(
            "shadowcat_upstream_spares{route=\"/mcp\",upstream=\"http://a/\\\"x\\\"\"} 2"
        ));
        let t = m.totals();
        assert_eq!((t.requests, t.by_class[1], t.rate_limited), (2, 2, 1));
    }
}
