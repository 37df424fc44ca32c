//! Protection of one upstream, shared by every session placed on it (gateway mode): a circuit
//! breaker, safe retries under a budget, and the request / SSE-idle timeouts. Sessions carry an
//! `Arc<Guard>` through their [`UpstreamCtx`](crate::upstream::UpstreamCtx); without one
//! (`forward stdio`) none of this runs. The HTTP front's own sessions (forward http) share a
//! guard with only a request timeout.
//!
//! Outcomes: a client request answered by the server (result or the server's own JSON-RPC
//! error) is a success; one the proxy had to answer because the upstream failed (unreachable,
//! HTTP error, stream broken, child exited, timed out) is a failure; so is a session whose
//! upstream could not be started.

mod breaker;
mod retry;

pub use breaker::{Breaker, BreakerConfig, BreakerState};
pub use retry::{RetryBudget, RetryConfig, backoff, is_idempotent};

use crate::error::ProxyError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Settings of a route's guards.
#[derive(Debug, Clone, Default)]
pub struct GuardConfig {
    /// The breaker (`None`: no breaker).
    pub breaker: Option<BreakerConfig>,
    /// Retries.
    pub retry: RetryConfig,
    /// Longest wait for the answer to a request (`None`: no limit).
    pub request_timeout: Option<Duration>,
    /// Longest silence on an upstream SSE response stream before it counts as broken
    /// (resumed with `Last-Event-ID` when the upstream allows; `None`: no limit).
    pub sse_idle_timeout: Option<Duration>,
}

/// Counters of one guard (for metrics and the admin API).
#[derive(Debug, Default)]
pub struct GuardStats {
    /// Retries sent.
    pub retries: AtomicU64,
    /// Retries not sent because the budget was spent.
    pub budget_exhausted: AtomicU64,
    /// Requests that timed out.
    pub timeouts: AtomicU64,
    /// Requests refused while the breaker was open.
    pub rejected: AtomicU64,
    /// Failures counted.
    pub failures: AtomicU64,
}

/// One upstream's guard.
#[derive(Debug)]
pub struct Guard {
    name: String,
    breaker: Option<Breaker>,
    retry: RetryConfig,
    budget: RetryBudget,
    request_timeout: Option<Duration>,
    sse_idle_timeout: Option<Duration>,
    stats: GuardStats,
}

impl Guard {
    /// The guard of the upstream called `name` (for logs).
    pub fn new(name: &str, cfg: &GuardConfig) -> Guard {
        Guard {
            name: name.to_string(),
            breaker: cfg.breaker.clone().map(Breaker::new),
            budget: RetryBudget::new(&cfg.retry),
            retry: cfg.retry.clone(),
            request_timeout: cfg.request_timeout,
            sse_idle_timeout: cfg.sse_idle_timeout,
            stats: GuardStats::default(),
        }
    }

    /// The breaker, if any.
    pub fn breaker(&self) -> Option<&Breaker> {
        self.breaker.as_ref()
    }

    /// Its counters.
    pub fn stats(&self) -> &GuardStats {
        &self.stats
    }

    /// The request timeout.
    pub fn request_timeout(&self) -> Option<Duration> {
        self.request_timeout
    }

    /// The SSE idle timeout.
    pub fn sse_idle_timeout(&self) -> Option<Duration> {
        self.sse_idle_timeout
    }

    /// May a request go to the upstream now? [`ProxyError::CircuitOpen`] when the breaker is
    /// open.
    pub fn admit(&self) -> Result<(), ProxyError> {
        let Some(b) = &self.breaker else {
            return Ok(());
        };
        b.admit().map_err(|wait| {
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            let retry_after = wait.as_secs().max(1);
            ProxyError::CircuitOpen {
                message: format!(
                    "upstream {} is failing (circuit breaker open); try again in {retry_after} s",
                    self.name,
                ),
                retry_after,
            }
        })
    }

    /// May new sessions be placed on the upstream?
    pub fn accepts_sessions(&self) -> bool {
        self.breaker.as_ref().is_none_or(Breaker::accepts_sessions)
    }

    /// While the breaker is open: how long until it probes again.
    pub fn open_for(&self) -> Option<Duration> {
        self.breaker.as_ref().and_then(Breaker::retry_in)
    }

    /// Count one outcome.
    pub fn record(&self, ok: bool) {
        if !ok {
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
        }
        let Some(b) = &self.breaker else {
            return;
        };
        match b.record(ok) {
            Some(BreakerState::Open) => tracing::warn!(
                upstream = %self.name,
                "circuit breaker opened: requests fail fast, no new sessions"
            ),
            Some(BreakerState::Closed) => {
                tracing::info!(upstream = %self.name, "circuit breaker closed: the upstream recovered")
            }
            _ => {}
        }
    }

    /// A request timed out (counted as a failure too).
    pub fn timed_out(&self) {
        self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
        self.record(false);
    }

    /// A first attempt is being made (feeds the retry budget).
    pub fn attempt(&self) {
        self.budget.deposit();
    }

    /// The delay before retry number `attempt` (0-based), or `None` when no retry is allowed
    /// (attempts used up, or the budget spent).
    pub fn retry_after(&self, attempt: u32) -> Option<Duration> {
        if attempt >= self.retry.attempts {
            return None;
        }
        if !self.budget.withdraw() {
            self.stats.budget_exhausted.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.stats.retries.fetch_add(1, Ordering::Relaxed);
        Some(backoff(self.retry.backoff, self.retry.backoff_max, attempt))
    }
}
