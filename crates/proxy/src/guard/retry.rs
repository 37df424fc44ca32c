//! Retries where they are safe, bounded by a budget.
//!
//! Safe: a request that never reached the upstream (the connection could not be opened) — any
//! method; and methods without side effects (`initialize` before anything reached the client,
//! `ping`, the `*/list` methods, `resources/read`, `prompts/get`, `completion/complete`,
//! `server/discover`) when the upstream answered 502, 503 or 504. Never `tools/call` or any other
//! method once it may have reached the upstream.
//!
//! Budget: every first attempt deposits `ratio` tokens (so retries stay under that share of the
//! traffic), and `min_per_sec` tokens are added each second so that low traffic can still
//! retry; a retry takes one token. Tokens are capped so that a quiet period does not bank a burst.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Retry settings (`[routes.retry]`).
#[derive(Debug, Clone)]
pub struct RetryConfig {
    /// Extra attempts per request (0: no retries).
    pub attempts: u32,
    /// First backoff delay (doubled per attempt, jittered).
    pub backoff: Duration,
    /// Largest backoff delay.
    pub backoff_max: Duration,
    /// Share of requests that may be retries.
    pub budget_ratio: f64,
    /// Retries per second allowed whatever the traffic.
    pub budget_min_per_sec: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts: 2,
            backoff: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
            budget_ratio: 0.2,
            budget_min_per_sec: 3.0,
        }
    }
}

/// Is `method` free of side effects, so that a request the upstream refused with 502/503/504
/// may be sent again?
pub fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "initialize"
            | "ping"
            | "tools/list"
            | "prompts/list"
            | "prompts/get"
            | "resources/list"
            | "resources/templates/list"
            | "resources/read"
            | "completion/complete"
            | "server/discover"
    )
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The retry budget of one upstream.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    per_sec: f64,
    cap: f64,
    bucket: Mutex<Bucket>,
}

impl RetryBudget {
    /// A full budget.
    pub fn new(cfg: &RetryConfig) -> RetryBudget {
        let cap = (cfg.budget_min_per_sec * 10.0).max(10.0);
        RetryBudget {
            ratio: cfg.budget_ratio.max(0.0),
            per_sec: cfg.budget_min_per_sec.max(0.0),
            cap,
            bucket: Mutex::new(Bucket {
                tokens: cfg.budget_min_per_sec.max(0.0),
                at: Instant::now(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bucket> {
        crate::sync::lock(&self.bucket)
    }

    fn refill(&self, b: &mut Bucket, add: f64) {
        let now = Instant::now();
        let secs = now.duration_since(b.at).as_secs_f64();
        b.at = now;
        b.tokens = (b.tokens + secs * self.per_sec + add).min(self.cap);
    }

    /// A first attempt was made.
    pub fn deposit(&self) {
        let mut b = self.lock();
        self.refill(&mut b, self.ratio);
    }

    /// Take a token for one retry; false when the budget is spent.
    pub fn withdraw(&self) -> bool {
        let mut b = self.lock();
        self.refill(&mut b, 0.0);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// `base * 2^attempt`, capped, with jitter in [50%, 100%].
pub fn backoff(base: Duration, cap: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.min(16)).min(cap);
    let jitter: f64 = 0.5 + rand::random::<f64>() * 0.5;
    exp.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_side_effect_free_methods_are_idempotent() {
        assert!(is_idempotent("tools/list"));
        assert!(is_idempotent("initialize"));
        assert!(!is_idempotent("tools/call"));
        assert!(!is_idempotent("resources/subscribe"));
        assert!(!is_idempotent("sampling/createMessage"));
    }

    #[test]
    fn the_budget_allows_a_share_of_the_traffic() {
        let b = RetryBudget::new(&RetryConfig {
            budget_ratio: 0.25,
            budget_min_per_sec: 0.0,
            ..RetryConfig::default()
        });
        assert!(!b.withdraw(), "nothing deposited yet");
        for _ in 0..8 {
            b.deposit();
        }
        assert!(b.withdraw());
        assert!(b.withdraw());
        assert!(!b.withdraw(), "8 requests × 0.25 = 2 retries");
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(2);
        for attempt in 0..10 {
            let d = backoff(base, cap, attempt);
            let full = (base * 2u32.pow(attempt)).min(cap);
            assert!(d >= full / 2 && d <= full, "{attempt}: {d:?} vs {full:?}");
        }
    }
}
