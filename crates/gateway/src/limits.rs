//! Rate limits (GCRA): global, per principal, per client IP, per tool.
//!
//! HTTP-level limits answer `429` with `Retry-After` and `RateLimit-*` headers; the per-tool
//! limit applies to `tools/call` messages inside a session and answers that call with a JSON-RPC
//! error (code [`RATE_LIMITED`]) saying when to retry.
//!
//! State lives in this process (`governor`), or with `backend = "redis"` in Redis so that every
//! replica enforces one shared limit (see [`shared`]). While Redis is unreachable the limiter
//! follows `on_redis_outage`: this process's own limits (`local`), or `503` (`deny`).
//!
//! The client IP is the TCP peer, unless the peer is a configured trusted proxy: then the
//! right-most address of `X-Forwarded-For` that is not itself a trusted proxy.

mod shared;

use super::config::{Cidr, LimitsBackend, LimitsConfig, RateConfig, RedisOutage};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use http::HeaderMap;
use shadowcat_proxy::error::ProxyError;
use shared::{Shared, SharedKey};
use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

/// JSON-RPC error code of a call refused by a rate limit.
pub use shadowcat_proto::error::RATE_LIMITED;

type Direct<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;
type Keyed<K, C> = RateLimiter<K, DashMapStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;
/// A limit shared by the configurations that keep it (see [`Limits::carry_over`]).
type Kept<L> = Option<Arc<Limit<L>>>;

/// A request over a limit (or refused because the shared limiter is unreachable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    /// Which limit: `global`, `principal`, `ip` or `tool`.
    pub scope: &'static str,
    /// When the next request would be allowed.
    pub retry_after: Duration,
    /// The limit's burst size (the `RateLimit-Limit` header).
    pub limit: u32,
    /// Refused because Redis is unreachable (`on_redis_outage = "deny"`), not over the limit.
    pub unavailable: bool,
}

impl Limited {
    /// Whole seconds to wait, at least 1 (for `Retry-After`).
    pub fn retry_secs(&self) -> u64 {
        self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0)
    }
    /// What to tell the client.
    pub fn message(&self) -> String {
        if self.unavailable {
            return format!(
                "the shared rate limiter is unavailable (Redis unreachable); retry in {} s",
                self.retry_secs().max(1)
            );
        }
        let which = match self.scope {
            "global" => "the gateway's overall limit",
            "principal" => "your limit",
            "ip" => "the limit for your address",
            _ => "this tool's limit",
        };
        format!(
            "rate limit exceeded ({which}); retry in {} s",
            self.retry_secs().max(1)
        )
    }
    /// The refusal, as the one error model maps it onto HTTP: `429` (`503` when the limiter is
    /// unavailable) with `Retry-After` and `RateLimit-*`.
    pub fn error(&self) -> ProxyError {
        ProxyError::RateLimited {
            message: self.message(),
            retry_after: self.retry_secs(),
            limit: self.limit,
            unavailable: self.unavailable,
        }
    }
}

fn quota(r: &RateConfig) -> Quota {
    let burst = NonZeroU32::new(r.burst()).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(r.interval())
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
        .allow_burst(burst)
}

/// One configured limit: its in-process limiter and its rate.
struct Limit<L> {
    local: L,
    rate: RateConfig,
}

impl<L> Limit<L> {
    fn shared(&self, scope: &'static str, key: String) -> SharedKey {
        SharedKey {
            scope,
            key,
            interval: self.rate.interval(),
            burst: self.rate.burst(),
        }
    }
}

/// The configured limiters. `C` is their clock: the real one, or in tests one they move
/// (`governor::clock::FakeRelativeClock`).
pub struct Limits<C: Clock = DefaultClock> {
    clock: C,
    global: Kept<Direct<C>>,
    principal: Kept<Keyed<Arc<str>, C>>,
    ip: Kept<Keyed<IpAddr, C>>,
    tools: HashMap<String, Arc<Limit<Direct<C>>>>,
    trusted: Vec<Cidr>,
    /// `backend = "redis"`: the shared state.
    shared: Option<Arc<Shared>>,
    /// What `shared` was built from (URL, key prefix, timeout, deny on outage).
    shared_from: Option<SharedFrom>,
}

/// The settings a shared limiter is built from.
type SharedFrom = (String, String, Duration, bool);

impl Limits {
    /// Build from validated configuration; `trusted` are the proxies whose `X-Forwarded-For`
    /// is believed; `redis` is the Redis of `backend = "redis"` (nothing is connected until
    /// the first check) and `prefix` starts its keys.
    pub fn new(cfg: &LimitsConfig, trusted: Vec<Cidr>, redis: Option<&str>, prefix: &str) -> Self {
        Limits::with_clock(cfg, trusted, redis, prefix, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Limits<C> {
    /// [`Limits::new`] with the clock the in-process limiters read.
    pub fn with_clock(
        cfg: &LimitsConfig,
        trusted: Vec<Cidr>,
        redis: Option<&str>,
        prefix: &str,
        clock: C,
    ) -> Self {
        let direct = |r: &RateConfig| {
            Arc::new(Limit {
                local: RateLimiter::direct_with_clock(quota(r), clock.clone()),
                rate: *r,
            })
        };
        let shared_from = match (cfg.backend, redis) {
            (LimitsBackend::Redis, Some(url)) => Some((
                url.to_string(),
                prefix.to_string(),
                cfg.redis_timeout.0,
                cfg.on_redis_outage == RedisOutage::Deny,
            )),
            _ => None,
        };
        let shared = shared_from.as_ref().map(|(url, prefix, timeout, deny)| {
            Arc::new(Shared::new(url, prefix, *timeout, *deny))
        });
        Limits {
            global: cfg.global.as_ref().map(direct),
            principal: cfg.per_principal.as_ref().map(|r| {
                Arc::new(Limit {
                    local: RateLimiter::dashmap_with_clock(quota(r), clock.clone()),
                    rate: *r,
                })
            }),
            ip: cfg.per_ip.as_ref().map(|r| {
                Arc::new(Limit {
                    local: RateLimiter::dashmap_with_clock(quota(r), clock.clone()),
                    rate: *r,
                })
            }),
            tools: cfg
                .per_tool
                .iter()
                .map(|(t, r)| (t.clone(), direct(r)))
                .collect(),
            trusted,
            shared,
            shared_from,
            clock,
        }
    }

    /// These limits (of a reloaded configuration), keeping the state of `old`'s limits that
    /// are unchanged: a limit whose rate is the same goes on with its buckets (nobody's
    /// allowance is reset by a reload), one whose rate changed starts full. The shared
    /// limiter is kept when its Redis settings are unchanged (its state is in Redis anyway).
    pub fn carry_over(mut self, old: &Limits<C>) -> Self {
        fn keep<L>(new: &mut Kept<L>, old: &Kept<L>) {
            if let (Some(n), Some(o)) = (new.as_ref(), old)
                && n.rate == o.rate
            {
                *new = Some(o.clone());
            }
        }
        keep(&mut self.global, &old.global);
        keep(&mut self.principal, &old.principal);
        keep(&mut self.ip, &old.ip);
        for (tool, l) in self.tools.iter_mut() {
            if let Some(o) = old.tools.get(tool)
                && o.rate == l.rate
            {
                *l = o.clone();
            }
        }
        if self.shared_from.is_some() && self.shared_from == old.shared_from {
            self.shared = old.shared.clone();
        }
        self
    }

    /// Whether any per-tool limit is configured.
    pub fn has_tool_limits(&self) -> bool {
        !self.tools.is_empty()
    }

    /// Whether `tools/call` of `tool` is limited.
    pub fn limits_tool(&self, tool: &str) -> bool {
        self.tools.contains_key(tool)
    }

    /// Whether checks may wait for Redis (otherwise they complete without waiting).
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    fn refused(
        &self,
        scope: &'static str,
        rate: &RateConfig,
        at: governor::NotUntil<C::Instant>,
    ) -> Limited {
        Limited {
            scope,
            retry_after: at.wait_time_from(self.clock.now()),
            limit: rate.burst(),
            unavailable: false,
        }
    }

    /// Check `keys` in Redis. `None`: Redis is unreachable and this process's limits decide.
    async fn check_shared(&self, keys: Vec<SharedKey>) -> Option<Result<(), Limited>> {
        let shared = self.shared.as_ref()?;
        if keys.is_empty() {
            return Some(Ok(()));
        }
        match shared.check(&keys).await {
            Ok(None) => Some(Ok(())),
            Ok(Some((i, retry_after))) => {
                let k = &keys[i];
                Some(Err(Limited {
                    scope: k.scope,
                    retry_after,
                    limit: k.burst,
                    unavailable: false,
                }))
            }
            Err(()) if shared.deny_on_outage() => Some(Err(Limited {
                scope: keys[0].scope,
                retry_after: shared::RETRY_EVERY,
                limit: keys[0].burst,
                unavailable: true,
            })),
            Err(()) => None,
        }
    }

    /// Per-IP, then global limit: checked before authentication.
    pub async fn check_client(&self, ip: IpAddr) -> Result<(), Limited> {
        if self.shared.is_some() {
            let mut keys = Vec::new();
            if let Some(l) = &self.ip {
                keys.push(l.shared("ip", ip.to_string()));
            }
            if let Some(l) = &self.global {
                keys.push(l.shared("global", String::new()));
            }
            if let Some(decided) = self.check_shared(keys).await {
                return decided;
            }
        }
        if let Some(l) = &self.ip {
            l.local
                .check_key(&ip)
                .map_err(|n| self.refused("ip", &l.rate, n))?;
        }
        if let Some(l) = &self.global {
            l.local
                .check()
                .map_err(|n| self.refused("global", &l.rate, n))?;
        }
        Ok(())
    }

    /// Per-principal limit: checked after authentication.
    pub async fn check_principal(&self, principal: &Arc<str>) -> Result<(), Limited> {
        let Some(l) = &self.principal else {
            return Ok(());
        };
        if self.shared.is_some()
            && let Some(decided) = self
                .check_shared(vec![l.shared("principal", principal.to_string())])
                .await
        {
            return decided;
        }
        l.local
            .check_key(principal)
            .map_err(|n| self.refused("principal", &l.rate, n))
    }

    /// Per-tool limit on a `tools/call`.
    pub async fn check_tool(&self, tool: &str) -> Result<(), Limited> {
        let Some(l) = self.tools.get(tool) else {
            return Ok(());
        };
        if self.shared.is_some()
            && let Some(decided) = self
                .check_shared(vec![l.shared("tool", tool.to_string())])
                .await
        {
            return decided;
        }
        l.local
            .check()
            .map_err(|n| self.refused("tool", &l.rate, n))
    }

    /// Forget keys whose state is back to full (bounded memory under many clients).
    pub fn housekeeping(&self) {
        if let Some(l) = &self.principal {
            l.local.retain_recent();
            l.local.shrink_to_fit();
        }
        if let Some(l) = &self.ip {
            l.local.retain_recent();
            l.local.shrink_to_fit();
        }
    }

    /// The client's address: the peer, or (from a trusted proxy) the right-most untrusted
    /// `X-Forwarded-For` entry.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        client_ip(peer, headers, &self.trusted)
    }

    /// Prometheus lines of the shared limiter (nothing with the local backend).
    pub fn render_metrics(&self, out: &mut String) {
        if let Some(s) = &self.shared {
            s.render_metrics(out);
        }
    }
}

fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    // Every hop in order; `None` for one that is not an address (a value that is not text
    // counts as one such hop).
    let hops: Vec<Option<IpAddr>> = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| match v.to_str() {
            Ok(text) => text.split(',').map(parse_hop).collect::<Vec<_>>(),
            Err(_) => vec![None],
        })
        .collect();
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        // A hop a trusted proxy wrote that is not an address ends the walk there: what lies to
        // its left is not vouched for by anyone we trust (skipping it would let the client's
        // own entries through). The client is then the last trusted hop.
        let Some(ip) = hop else {
            break;
        };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, with or without a port (`1.2.3.4:5678`,
/// `[::1]:80`).
fn parse_hop(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
}

#[cfg(test)]
mod tests {
    use super::super::config::Dur;
    use super::*;

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = vec![Cidr::parse("10.0.0.0/8").unwrap()];
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "1.2.3.4, 10.0.0.7".parse().unwrap());
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            client_ip(peer, &h, &trusted),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        let outsider: IpAddr = "8.8.8.8".parse().unwrap();
        assert_eq!(client_ip(outsider, &h, &trusted), outsider);
        // A spoofed left-most entry does not win over the untrusted hop to its right.
        h.insert("x-forwarded-for", "9.9.9.9, 5.6.7.8".parse().unwrap());
        assert_eq!(
            client_ip(peer, &h, &trusted),
            "5.6.7.8".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn an_unparsable_forwarded_for_hop_ends_the_walk() {
        let trusted = vec![Cidr::parse("10.0.0.0/8").unwrap()];
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let walk = |xff: &[&str]| {
            let mut h = HeaderMap::new();
            for v in xff {
                h.append("x-forwarded-for", v.parse().unwrap());
            }
            client_ip(peer, &h, &trusted)
        };
        // The client's own entry left of a hop the proxy could not name is not believed: the
        // client is the last trusted hop.
        assert_eq!(walk(&["6.6.6.6, unknown, 10.0.0.7"]), ip("10.0.0.7"));
        assert_eq!(walk(&["6.6.6.6, unknown"]), peer);
        assert_eq!(walk(&["6.6.6.6,,10.0.0.7"]), ip("10.0.0.7"));
        assert_eq!(walk(&["6.6.6.6", "garbage"]), peer);
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "6.6.6.6".parse().unwrap());
        h.append(
            "x-forwarded-for",
            http::HeaderValue::from_bytes(b"\xff").unwrap(),
        );
        assert_eq!(client_ip(peer, &h, &trusted), peer);
        // Addresses with ports are addresses.
        assert_eq!(walk(&["6.6.6.6, 5.6.7.8:4321"]), ip("5.6.7.8"));
        assert_eq!(walk(&["[2001:db8::1]:443"]), ip("2001:db8::1"));
        // Without bad hops nothing changes.
        assert_eq!(walk(&["6.6.6.6", "5.6.7.8, 10.0.0.9"]), ip("5.6.7.8"));
    }

    #[tokio::test]
    async fn a_reload_keeps_the_buckets_of_unchanged_limits_only() {
        let rate = |requests| RateConfig {
            requests,
            per: Dur(Duration::from_secs(60)),
            burst: None,
        };
        let cfg = |ip, tool| LimitsConfig {
            per_ip: Some(rate(ip)),
            per_tool: [("t".to_string(), rate(tool))].into(),
            ..LimitsConfig::default()
        };
        let clock = governor::clock::FakeRelativeClock::default();
        let first = Limits::with_clock(&cfg(2, 1), vec![], None, "t:", clock.clone());
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(first.check_client(ip).await.is_ok());
        assert!(first.check_client(ip).await.is_ok());
        assert!(first.check_client(ip).await.is_err());
        assert!(first.check_tool("t").await.is_ok());
        assert!(first.check_tool("t").await.is_err());
        // Same per-IP rate, another per-tool rate: the address stays limited, the tool starts
        // over.
        let second =
            Limits::with_clock(&cfg(2, 5), vec![], None, "t:", clock.clone()).carry_over(&first);
        assert!(second.check_client(ip).await.is_err(), "bucket kept");
        assert!(
            second.check_tool("t").await.is_ok(),
            "changed limit starts full"
        );
        // Without carry_over every bucket would start full (what the test above rules out).
        let fresh = Limits::with_clock(&cfg(2, 5), vec![], None, "t:", clock);
        assert!(fresh.check_client(ip).await.is_ok());
    }

    #[tokio::test]
    async fn burst_then_refusal_with_retry_after() {
        let cfg = LimitsConfig {
            per_ip: Some(RateConfig {
                requests: 1,
                per: Dur(Duration::from_secs(10)),
                burst: Some(3),
            }),
            ..LimitsConfig::default()
        };
        let clock = governor::clock::FakeRelativeClock::default();
        let l = Limits::with_clock(&cfg, vec![], None, "t:", clock);
        assert!(!l.is_shared());
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..3 {
            assert!(l.check_client(ip).await.is_ok());
        }
        let r = l.check_client(ip).await.unwrap_err();
        assert_eq!((r.scope, r.limit, r.unavailable), ("ip", 3, false));
        assert_eq!(r.error().http_status(), http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.retry_after, Duration::from_secs(10), "{r:?}");
        assert_eq!(r.retry_secs(), 10);
        assert!(l.check_client("127.0.0.2".parse().unwrap()).await.is_ok());
    }

    #[tokio::test]
    async fn per_ip_limit_is_exact_over_1000_requests_on_a_moving_clock() {
        // 20 per second (one every 50 ms), burst 5; four clients together sending one request
        // every 2.5 ms for 2.5 s, on a clock only this test moves.
        let cfg = LimitsConfig {
            per_ip: Some(RateConfig {
                requests: 20,
                per: Dur(Duration::from_secs(1)),
                burst: Some(5),
            }),
            ..LimitsConfig::default()
        };
        let clock = governor::clock::FakeRelativeClock::default();
        let l = Limits::with_clock(&cfg, vec![], None, "t:", clock.clone());
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let step = Duration::from_micros(2500);
        let period = Duration::from_millis(50);
        let mut allowed = Vec::new();
        for k in 0..1000u32 {
            let now = step * k;
            match l.check_client(ip).await {
                Ok(()) => allowed.push(k),
                Err(r) => {
                    assert_eq!((r.scope, r.limit, r.unavailable), ("ip", 5, false));
                    // Retry-After names the next moment a request passes: the next 50 ms mark.
                    let next = now + r.retry_after;
                    assert!(r.retry_after > Duration::ZERO && r.retry_after <= period);
                    assert_eq!(
                        next.as_micros() % period.as_micros(),
                        0,
                        "at {now:?}: {r:?}"
                    );
                    assert_eq!(r.retry_secs(), 1);
                }
            }
            clock.advance(step);
        }
        // A full burst, then exactly one request per 50 ms: at 50, 100, …, 2450 ms.
        let expected: Vec<u32> = (0..5).chain((1..50).map(|i| 20 * i)).collect();
        assert_eq!(allowed, expected);
        // At 2500 ms one more passes; then Retry-After is exact to the nanosecond.
        assert!(l.check_client(ip).await.is_ok());
        let r = l.check_client(ip).await.unwrap_err();
        assert_eq!(r.retry_after, period);
        clock.advance(r.retry_after - Duration::from_nanos(1));
        assert!(l.check_client(ip).await.is_err(), "a nanosecond early");
        clock.advance(Duration::from_nanos(1));
        assert!(l.check_client(ip).await.is_ok(), "on time");
        // Another address has its own full burst.
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        for _ in 0..5 {
            assert!(l.check_client(other).await.is_ok());
        }
        assert!(l.check_client(other).await.is_err());
    }

    #[tokio::test]
    async fn unreachable_redis_follows_on_redis_outage() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("redis+unix://{}", dir.path().join("none.sock").display());
        let rate = RateConfig {
            requests: 1,
            per: Dur(Duration::from_secs(60)),
            burst: Some(2),
        };
        let mut cfg = LimitsConfig {
            backend: LimitsBackend::Redis,
            global: Some(rate),
            ..LimitsConfig::default()
        };
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        // local: this process's own limit still applies.
        let l = Limits::new(&cfg, vec![], Some(&url), "t:");
        assert!(l.is_shared());
        assert!(l.check_client(ip).await.is_ok());
        assert!(l.check_client(ip).await.is_ok());
        let r = l.check_client(ip).await.unwrap_err();
        assert_eq!((r.scope, r.unavailable), ("global", false));
        let mut m = String::new();
        l.render_metrics(&mut m);
        assert!(m.contains("shadowcat_ratelimit_redis_up 0"), "{m}");
        assert!(
            m.contains("shadowcat_ratelimit_redis_outage_decisions_total{decision=\"local\"} 3"),
            "{m}"
        );
        // deny: refused with 503.
        cfg.on_redis_outage = RedisOutage::Deny;
        let l = Limits::new(&cfg, vec![], Some(&url), "t:");
        let r = l.check_client(ip).await.unwrap_err();
        assert!(r.unavailable, "{r:?}");
        assert_eq!(
            r.error().http_status(),
            http::StatusCode::SERVICE_UNAVAILABLE
        );
        assert!(r.message().contains("Redis unreachable"), "{}", r.message());
    }
}
