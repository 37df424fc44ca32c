//! The Redis-backed limiter: GCRA state in Redis, so every replica sharing it enforces one
//! limit.
//!
//! * One Lua script checks all the limits of a request atomically against Redis' clock (`TIME`,
//!   so replicas' clocks do not matter) and consumes them only if every one allows it. Key per
//!   limit: `PREFIX {ratelimit}:SCOPE:KEY` holding the theoretical arrival time (µs); it expires
//!   when the limit is full again, so idle keys cost nothing. The hash tag `{ratelimit}` puts
//!   every limit in one hash slot: on a Redis Cluster the script's keys must share one, and a
//!   request checks the global limit with its own, so all of them must (the limiter's keys then
//!   live on one primary; they are few and small).
//! * Sent with `EVALSHA`, falling back to loading the script on `NOSCRIPT` (a restarted or
//!   flushed Redis).
//! * Each check is bounded by `redis_timeout`. A failure (refused, dropped, timed out) starts an
//!   outage: for [`RETRY_EVERY`] the limiter does not wait for Redis and the caller follows
//!   `on_redis_outage`; then the next request tries again. Outages are logged once each and
//!   counted in the metrics.
//!
//! Redis is any deployment the session store takes (one server, a Cluster, a Sentinel-monitored
//! primary), over the store's connection ([`shadowcat_store::redis_connection`]).

use redis::Script;
use shadowcat_store::RedisConn;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// How long an outage lasts before Redis is tried again.
pub(super) const RETRY_EVERY: Duration = Duration::from_secs(1);

/// KEYS: one per limit. ARGV: per key, the emission interval (µs) and the burst. Returns
/// `{0, 0}` when all allow (and consumes them), else `{i, wait_µs}` for the first key `i`
/// (1-based) that refuses (nothing consumed).
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tats = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tat = now
  local v = redis.call('GET', key)
  if v then tat = math.max(tonumber(v) or now, now) end
  local new = tat + interval
  local allow_at = new - interval * burst
  if now < allow_at then return {i, allow_at - now} end
  tats[i] = new
end
for i, key in ipairs(KEYS) do
  local ttl = math.max(1, math.ceil((tats[i] - now) / 1000))
  redis.call('SET', key, string.format('%.0f', tats[i]), 'PX', ttl)
end
return {0, 0}
"#;

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(GCRA));

/// One limit to check: which, for whom, at what rate.
#[derive(Debug, Clone)]
pub(crate) struct SharedKey {
    /// `global`, `ip`, `principal`, `tool`.
    pub scope: &'static str,
    /// The IP, principal id or tool name (empty for `global`).
    pub key: String,
    /// Time between two requests at the sustained rate.
    pub interval: Duration,
    /// Largest burst.
    pub burst: u32,
}

/// The shared limiter of one gateway.
pub(crate) struct Shared {
    url: String,
    prefix: String,
    timeout: Duration,
    deny: bool,
    conn: OnceCell<RedisConn>,
    /// During an outage: when to try Redis again.
    retry_at: Mutex<Option<Instant>>,
    down: AtomicBool,
    /// Decisions made without Redis: by this process's limits, or refusals (`deny`).
    fell_back: AtomicU64,
    denied: AtomicU64,
}

impl Shared {
    pub(crate) fn new(url: &str, prefix: &str, timeout: Duration, deny: bool) -> Self {
        Shared {
            url: url.to_string(),
            prefix: format!("{prefix}{{ratelimit}}:"),
            timeout,
            deny,
            conn: OnceCell::new(),
            retry_at: Mutex::new(None),
            down: AtomicBool::new(false),
            fell_back: AtomicU64::new(0),
            denied: AtomicU64::new(0),
        }
    }

    /// Whether an outage refuses requests (else this process's limits decide).
    pub(crate) fn deny_on_outage(&self) -> bool {
        self.deny
    }

    fn in_outage(&self) -> bool {
        let mut r = shadowcat_proxy::sync::lock(&self.retry_at);
        match *r {
            Some(at) if Instant::now() < at => true,
            Some(_) => {
                *r = None;
                false
            }
            None => false,
        }
    }

    fn outage(&self, why: &str) {
        *shadowcat_proxy::sync::lock(&self.retry_at) = Some(Instant::now() + RETRY_EVERY);
        if !self.down.swap(true, Ordering::AcqRel) {
            let then = if self.deny {
                "refusing requests (on_redis_outage = \"deny\")"
            } else {
                "this replica's own limits apply (on_redis_outage = \"local\")"
            };
            tracing::warn!(error = %why, "the shared rate limiter's Redis is unreachable; {then}");
        }
    }

    /// Check `keys` (all or nothing). `Ok(None)`: allowed; `Ok(Some((i, wait)))`: `keys[i]`
    /// refuses for `wait`; `Err(())`: Redis is unreachable (counted as an outage decision).
    pub(crate) async fn check(&self, keys: &[SharedKey]) -> Result<Option<(usize, Duration)>, ()> {
        let result = if self.in_outage() {
            Err(None)
        } else {
            match tokio::time::timeout(self.timeout, self.run(keys)).await {
                Ok(Ok(r)) => Ok(r),
                Ok(Err(e)) => Err(Some(e)),
                Err(_) => Err(Some(format!("no answer within {:?}", self.timeout))),
            }
        };
        match result {
            Ok(r) => {
                if self.down.swap(false, Ordering::AcqRel) {
                    tracing::info!("the shared rate limiter's Redis is reachable again");
                }
                Ok(r)
            }
            Err(why) => {
                if let Some(why) = why {
                    self.outage(&why);
                }
                let counter = if self.deny {
                    &self.denied
                } else {
                    &self.fell_back
                };
                counter.fetch_add(1, Ordering::Relaxed);
                Err(())
            }
        }
    }

    async fn connection(&self) -> Result<RedisConn, String> {
        self.conn
            .get_or_try_init(|| async {
                // Waiters queued behind a failed attempt do not each try again.
                if self.in_outage() {
                    return Err("still unreachable".to_string());
                }
                shadowcat_store::redis_connection(&self.url)
                    .await
                    .map_err(|e| e.to_string())
            })
            .await
            .cloned()
    }

    async fn run(&self, keys: &[SharedKey]) -> Result<Option<(usize, Duration)>, String> {
        let mut conn = self.connection().await?;
        let mut inv = SCRIPT.prepare_invoke();
        for k in keys {
            inv.key(format!("{}{}:{}", self.prefix, k.scope, k.key));
        }
        for k in keys {
            let us = u64::try_from(k.interval.as_micros())
                .unwrap_or(u64::MAX)
                .max(1);
            inv.arg(us).arg(k.burst.max(1));
        }
        let (i, wait): (i64, i64) = inv
            .invoke_async(&mut conn)
            .await
            .map_err(|e| format!("redis: {e}"))?;
        if i <= 0 {
            return Ok(None);
        }
        let i = usize::try_from(i - 1).unwrap_or(0).min(keys.len() - 1);
        let wait = Duration::from_micros(u64::try_from(wait).unwrap_or(0));
        Ok(Some((i, wait)))
    }

    /// Prometheus lines: Redis reachable, and decisions taken without it.
    pub(crate) fn render_metrics(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP shadowcat_ratelimit_redis_up Whether the shared rate limiter's Redis answered its last check."
        );
        let _ = writeln!(out, "# TYPE shadowcat_ratelimit_redis_up gauge");
        let up = u8::from(!self.down.load(Ordering::Acquire));
        let _ = writeln!(out, "shadowcat_ratelimit_redis_up {up}");
        let _ = writeln!(
            out,
            "# HELP shadowcat_ratelimit_redis_outage_decisions_total Rate-limit checks decided without Redis: by this replica's own limits (local) or refused (deny)."
        );
        let _ = writeln!(
            out,
            "# TYPE shadowcat_ratelimit_redis_outage_decisions_total counter"
        );
        for (decision, n) in [("local", &self.fell_back), ("deny", &self.denied)] {
            let _ = writeln!(
                out,
                "shadowcat_ratelimit_redis_outage_decisions_total{{decision=\"{decision}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
    }
}
