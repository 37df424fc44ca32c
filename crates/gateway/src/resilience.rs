//! The settings that protect upstreams: `[routes.breaker]`, `[routes.retry]` and the
//! request / SSE-idle timeouts, turned into a [`GuardConfig`] (see [`shadowcat_proxy::guard`]),
//! with failover, ejection and health checks: a route's ([`Resilience`]), and on a composite
//! route each server's, which overrides any of them (`[routes.servers.breaker]`…) and keeps the
//! route's for the rest.

use super::config::{Dur, HealthCheck, HealthConfig};
use serde::{Deserialize, Serialize};
use shadowcat_proxy::guard::{BreakerConfig, GuardConfig, RetryConfig};
use std::time::Duration;

/// `[routes.breaker]`: on by default.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BreakerSection {
    /// `false` turns the breaker off.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Failures in a row that open it (0: only the failure rate counts).
    #[serde(default = "d_consecutive")]
    pub consecutive_failures: u32,
    /// Failure share over `window` that opens it (0 < rate ≤ 1; 0: only failures in a row count).
    #[serde(default = "d_rate")]
    pub failure_rate: f64,
    /// The failure-rate window.
    #[serde(default = "d_window")]
    pub window: Dur,
    /// Outcomes the window needs before its rate counts.
    #[serde(default = "d_min")]
    pub min_requests: u32,
    /// How long it stays open (requests fail fast, no new sessions) before probing.
    #[serde(default = "d_open_for")]
    pub open_for: Dur,
    /// Requests let through at once while probing (half-open).
    #[serde(default = "d_probes")]
    pub half_open_probes: u32,
}

impl Default for BreakerSection {
    fn default() -> Self {
        let d = BreakerConfig::default();
        BreakerSection {
            enabled: true,
            consecutive_failures: d.consecutive_failures,
            failure_rate: d.failure_rate,
            window: Dur(d.window),
            min_requests: d.min_requests,
            open_for: Dur(d.open_for),
            half_open_probes: d.half_open_probes,
        }
    }
}

/// `[routes.servers.breaker]`: a composite server's own breaker settings; each one left out
/// is the route's (`[routes.breaker]`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BreakerOverride {
    /// `false` turns the server's breakers off (`true` on, with the route's off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Failures in a row that open it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    /// Failure share over `window` that opens it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_rate: Option<f64>,
    /// The failure-rate window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Dur>,
    /// Outcomes the window needs before its rate counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u32>,
    /// How long it stays open before probing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_for: Option<Dur>,
    /// Requests let through at once while probing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub half_open_probes: Option<u32>,
}

impl BreakerOverride {
    /// `base` (the route's) with what this sets.
    pub fn over(&self, base: &BreakerSection) -> BreakerSection {
        BreakerSection {
            enabled: self.enabled.unwrap_or(base.enabled),
            consecutive_failures: self
                .consecutive_failures
                .unwrap_or(base.consecutive_failures),
            failure_rate: self.failure_rate.unwrap_or(base.failure_rate),
            window: self.window.unwrap_or(base.window),
            min_requests: self.min_requests.unwrap_or(base.min_requests),
            open_for: self.open_for.unwrap_or(base.open_for),
            half_open_probes: self.half_open_probes.unwrap_or(base.half_open_probes),
        }
    }
}

/// `[routes.retry]`: where retries are safe (see `shadowcat_proxy::guard`), under a budget.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrySection {
    /// Extra attempts per request (0: never retry).
    #[serde(default = "d_attempts")]
    pub attempts: u32,
    /// First backoff delay (doubled per attempt, jittered).
    #[serde(default = "d_backoff")]
    pub backoff: Dur,
    /// Largest backoff delay.
    #[serde(default = "d_backoff_max")]
    pub backoff_max: Dur,
    /// Share of requests that may be retries.
    #[serde(default = "d_ratio")]
    pub budget_ratio: f64,
    /// Retries per second allowed whatever the traffic.
    #[serde(default = "d_per_sec")]
    pub budget_min_per_sec: f64,
}

impl Default for RetrySection {
    fn default() -> Self {
        let d = RetryConfig::default();
        RetrySection {
            attempts: d.attempts,
            backoff: Dur(d.backoff),
            backoff_max: Dur(d.backoff_max),
            budget_ratio: d.budget_ratio,
            budget_min_per_sec: d.budget_min_per_sec,
        }
    }
}

/// `[routes.servers.retry]`: a composite server's own retry settings; each one left out is the
/// route's (`[routes.retry]`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryOverride {
    /// Extra attempts per request (0: never retry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// First backoff delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Dur>,
    /// Largest backoff delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_max: Option<Dur>,
    /// Share of requests that may be retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_ratio: Option<f64>,
    /// Retries per second allowed whatever the traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_min_per_sec: Option<f64>,
}

impl RetryOverride {
    /// `base` (the route's) with what this sets.
    pub fn over(&self, base: &RetrySection) -> RetrySection {
        RetrySection {
            attempts: self.attempts.unwrap_or(base.attempts),
            backoff: self.backoff.unwrap_or(base.backoff),
            backoff_max: self.backoff_max.unwrap_or(base.backoff_max),
            budget_ratio: self.budget_ratio.unwrap_or(base.budget_ratio),
            budget_min_per_sec: self.budget_min_per_sec.unwrap_or(base.budget_min_per_sec),
        }
    }
}

/// `[routes.servers.health]`: a composite server's own active health checks; each setting left
/// out is the route's (`[routes.health]`, or the defaults when the route has none). `check` and
/// `http_path` go together: a server that sets either sets both.
#[derive(Debug, Clone, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthOverride {
    /// `false`: the server's upstreams are not checked (though the route's are).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Time between checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Dur>,
    /// A check that takes longer failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
    /// Consecutive successes that make an unhealthy upstream healthy again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<u32>,
    /// Consecutive failures that make a healthy upstream unhealthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<u32>,
    /// `GET` this path on the upstream's origin (2xx = healthy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_path: Option<String>,
    /// What a check does: `tcp`, `http` or `ping`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<HealthCheck>,
}

impl HealthOverride {
    /// `base` (the route's checks, if any) with what this sets; `None`: not checked.
    pub fn over(&self, base: Option<&HealthConfig>) -> Option<HealthConfig> {
        if self.enabled == Some(false) {
            return None;
        }
        let base = base.cloned().unwrap_or_default();
        let (http_path, check) = if self.http_path.is_some() || self.check.is_some() {
            (self.http_path.clone(), self.check)
        } else {
            (base.http_path, base.check)
        };
        Some(HealthConfig {
            interval: self.interval.unwrap_or(base.interval),
            timeout: self.timeout.unwrap_or(base.timeout),
            healthy_threshold: self.healthy_threshold.unwrap_or(base.healthy_threshold),
            unhealthy_threshold: self.unhealthy_threshold.unwrap_or(base.unhealthy_threshold),
            http_path,
            check,
        })
    }
}

/// What protects one upstream set: a plain route's settings, or a composite route's server's
/// (its own where it sets them, the route's for the rest; see
/// [`RouteConfig::server_resilience`](super::config::RouteConfig::server_resilience)).
#[derive(Debug, Clone, Serialize)]
pub struct Resilience {
    /// Try the next upstream when a session (or leg) cannot start on one.
    pub failover: bool,
    /// An upstream that failed to connect gets nothing new for this long.
    pub eject_for: Dur,
    /// Connect timeout of the reachability probe (with failover).
    pub connect_timeout: Dur,
    /// Active health checks (`None`: none).
    pub health: Option<HealthConfig>,
    /// Each upstream's breaker.
    pub breaker: BreakerSection,
    /// Retries where safe.
    pub retry: RetrySection,
    /// Longest wait for an answer (`0`: none).
    pub request_timeout: Dur,
    /// Longest silence on a response stream (`0`: none).
    pub sse_idle_timeout: Dur,
}

fn yes() -> bool {
    true
}
fn d_consecutive() -> u32 {
    BreakerConfig::default().consecutive_failures
}
fn d_rate() -> f64 {
    BreakerConfig::default().failure_rate
}
fn d_window() -> Dur {
    Dur(BreakerConfig::default().window)
}
fn d_min() -> u32 {
    BreakerConfig::default().min_requests
}
fn d_open_for() -> Dur {
    Dur(BreakerConfig::default().open_for)
}
fn d_probes() -> u32 {
    BreakerConfig::default().half_open_probes
}
fn d_attempts() -> u32 {
    RetryConfig::default().attempts
}
fn d_backoff() -> Dur {
    Dur(RetryConfig::default().backoff)
}
fn d_backoff_max() -> Dur {
    Dur(RetryConfig::default().backoff_max)
}
fn d_ratio() -> f64 {
    RetryConfig::default().budget_ratio
}
fn d_per_sec() -> f64 {
    RetryConfig::default().budget_min_per_sec
}

/// Default request timeout: long enough for slow tools, short enough that nobody waits forever.
pub fn default_request_timeout() -> Dur {
    Dur(Duration::from_secs(300))
}

/// Default silence allowed on an upstream response stream.
pub fn default_sse_idle_timeout() -> Dur {
    Dur(Duration::from_secs(300))
}

/// The guard settings of a set's upstreams (a zero timeout means none).
pub fn guard_config(r: &Resilience) -> GuardConfig {
    let b = &r.breaker;
    let t = &r.retry;
    let some = |d: &Dur| (!d.0.is_zero()).then_some(d.0);
    GuardConfig {
        breaker: b.enabled.then_some(BreakerConfig {
            consecutive_failures: b.consecutive_failures,
            failure_rate: b.failure_rate,
            window: b.window.0,
            min_requests: b.min_requests,
            open_for: b.open_for.0,
            half_open_probes: b.half_open_probes,
        }),
        retry: RetryConfig {
            attempts: t.attempts,
            backoff: t.backoff.0,
            backoff_max: t.backoff_max.0,
            budget_ratio: t.budget_ratio,
            budget_min_per_sec: t.budget_min_per_sec,
        },
        request_timeout: some(&r.request_timeout),
        sse_idle_timeout: some(&r.sse_idle_timeout),
    }
}

/// Problems with the settings `r` of the set at `at` (`routes[0]`, `routes[0].servers[1]`), as
/// (field, message).
pub fn validate(at: &str, r: &Resilience, bad: &mut impl FnMut(String, String)) {
    if r.connect_timeout.0.is_zero() {
        bad(
            format!("{at}.connect_timeout"),
            "must be more than 0".into(),
        );
    }
    let b = &r.breaker;
    if b.enabled {
        if !(0.0..=1.0).contains(&b.failure_rate) || b.failure_rate.is_nan() {
            bad(
                format!("{at}.breaker.failure_rate"),
                format!("{} is not a share between 0 and 1", b.failure_rate),
            );
        }
        if b.consecutive_failures == 0 && b.failure_rate == 0.0 {
            bad(
                format!("{at}.breaker"),
                "consecutive_failures and failure_rate are both 0, so it could never open (set enabled = false to turn it off)".into(),
            );
        }
        if b.window.0 < Duration::from_millis(10) {
            bad(
                format!("{at}.breaker.window"),
                "must be at least 10ms".into(),
            );
        }
        if b.open_for.0.is_zero() {
            bad(
                format!("{at}.breaker.open_for"),
                "must be more than 0".into(),
            );
        }
        if b.half_open_probes == 0 {
            bad(
                format!("{at}.breaker.half_open_probes"),
                "must be at least 1".into(),
            );
        }
    }
    let t = &r.retry;
    if t.attempts > 10 {
        bad(
            format!("{at}.retry.attempts"),
            format!("{} is too many (at most 10)", t.attempts),
        );
    }
    if t.backoff.0 > t.backoff_max.0 {
        bad(
            format!("{at}.retry.backoff"),
            "is larger than retry.backoff_max".into(),
        );
    }
    if !(0.0..=1.0).contains(&t.budget_ratio) || t.budget_ratio.is_nan() {
        bad(
            format!("{at}.retry.budget_ratio"),
            format!("{} is not a share between 0 and 1", t.budget_ratio),
        );
    }
    if !(t.budget_min_per_sec >= 0.0 && t.budget_min_per_sec.is_finite()) {
        bad(
            format!("{at}.retry.budget_min_per_sec"),
            "must be a number ≥ 0".into(),
        );
    }
    if let Some(h) = &r.health {
        validate_health(&format!("{at}.health"), h, bad);
    }
}

/// Problems with health checks `h` at `at` (`routes[0].health`).
fn validate_health(at: &str, h: &HealthConfig, bad: &mut impl FnMut(String, String)) {
    if h.interval.0 < Duration::from_millis(10) {
        bad(format!("{at}.interval"), "must be at least 10ms".into());
    }
    if h.timeout.0.is_zero() {
        bad(format!("{at}.timeout"), "must be more than 0".into());
    }
    if h.healthy_threshold == 0 {
        bad(
            format!("{at}.healthy_threshold"),
            "must be at least 1".into(),
        );
    }
    if h.unhealthy_threshold == 0 {
        bad(
            format!("{at}.unhealthy_threshold"),
            "must be at least 1".into(),
        );
    }
    if let Some(p) = &h.http_path
        && !p.starts_with('/')
    {
        bad(
            format!("{at}.http_path"),
            format!("`{p}` must start with `/`"),
        );
    }
    match (h.check, &h.http_path) {
        (Some(HealthCheck::Http), None) => bad(
            format!("{at}.http_path"),
            "check = \"http\" needs the path to GET".into(),
        ),
        (Some(c @ (HealthCheck::Tcp | HealthCheck::Ping)), Some(_)) => bad(
            format!("{at}.http_path"),
            format!(
                "is only used by check = \"http\", not by check = \"{}\"",
                if c == HealthCheck::Tcp { "tcp" } else { "ping" }
            ),
        ),
        _ => {}
    }
}
