//! The route settings that protect upstreams: `[routes.breaker]`, `[routes.retry]` and the
//! request / SSE-idle timeouts, turned into a [`GuardConfig`] (see [`shadowcat_proxy::guard`]).

use super::config::{Dur, RouteConfig};
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

/// The guard settings of a route (a zero timeout means none).
pub fn guard_config(r: &RouteConfig) -> GuardConfig {
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

/// Problems with these sections of route `at` (`routes[0]`), as (field, message).
pub fn validate(at: &str, r: &RouteConfig, bad: &mut impl FnMut(String, String)) {
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
}
