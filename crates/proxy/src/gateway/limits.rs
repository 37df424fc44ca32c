//! Rate limits (GCRA, `governor`): global, per principal, per client IP, per tool.
//!
//! HTTP-level limits answer `429` with `Retry-After` and `RateLimit-*` headers; the per-tool
//! limit applies to `tools/call` messages inside a session and answers that call with a JSON-RPC
//! error (code [`RATE_LIMITED`]) saying when to retry.
//!
//! The client IP is the TCP peer, unless the peer is a configured trusted proxy: then the
//! right-most address of `X-Forwarded-For` that is not itself a trusted proxy.

use super::config::{Cidr, LimitsConfig, RateConfig};
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use http::HeaderMap;
use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

/// JSON-RPC error code of a call refused by a rate limit.
pub const RATE_LIMITED: i64 = -32029;

type Direct = RateLimiter<NotKeyed, InMemoryState, DefaultClock>;
type Keyed<K> = RateLimiter<K, DashMapStateStore<K>, DefaultClock>;

/// A request over a limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    /// Which limit: `global`, `principal`, `ip` or `tool`.
    pub scope: &'static str,
    /// When the next request would be allowed.
    pub retry_after: Duration,
    /// The limit's burst size (the `RateLimit-Limit` header).
    pub limit: u32,
}

impl Limited {
    /// Whole seconds to wait, at least 1 (for `Retry-After`).
    pub fn retry_secs(&self) -> u64 {
        self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0)
    }
    /// What to tell the client.
    pub fn message(&self) -> String {
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
}

fn quota(r: &RateConfig) -> Quota {
    let burst = NonZeroU32::new(r.burst()).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(r.interval())
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
        .allow_burst(burst)
}

/// The configured limiters.
pub struct Limits {
    clock: DefaultClock,
    global: Option<(Direct, u32)>,
    principal: Option<(Keyed<Arc<str>>, u32)>,
    ip: Option<(Keyed<IpAddr>, u32)>,
    tools: HashMap<String, (Direct, u32)>,
    trusted: Vec<Cidr>,
}

impl Limits {
    /// Build from validated configuration; `trusted` are the proxies whose `X-Forwarded-For`
    /// is believed.
    pub fn new(cfg: &LimitsConfig, trusted: Vec<Cidr>) -> Self {
        Limits {
            clock: DefaultClock::default(),
            global: cfg
                .global
                .as_ref()
                .map(|r| (RateLimiter::direct(quota(r)), r.burst())),
            principal: cfg
                .per_principal
                .as_ref()
                .map(|r| (RateLimiter::dashmap(quota(r)), r.burst())),
            ip: cfg
                .per_ip
                .as_ref()
                .map(|r| (RateLimiter::dashmap(quota(r)), r.burst())),
            tools: cfg
                .per_tool
                .iter()
                .map(|(t, r)| (t.clone(), (RateLimiter::direct(quota(r)), r.burst())))
                .collect(),
            trusted,
        }
    }

    /// Whether any per-tool limit is configured.
    pub fn has_tool_limits(&self) -> bool {
        !self.tools.is_empty()
    }

    fn refused(
        &self,
        scope: &'static str,
        limit: u32,
        at: governor::NotUntil<<DefaultClock as Clock>::Instant>,
    ) -> Limited {
        Limited {
            scope,
            retry_after: at.wait_time_from(self.clock.now()),
            limit,
        }
    }

    /// Per-IP, then global limit: checked before authentication.
    pub fn check_client(&self, ip: IpAddr) -> Result<(), Limited> {
        if let Some((l, b)) = &self.ip {
            l.check_key(&ip).map_err(|n| self.refused("ip", *b, n))?;
        }
        if let Some((l, b)) = &self.global {
            l.check().map_err(|n| self.refused("global", *b, n))?;
        }
        Ok(())
    }

    /// Per-principal limit: checked after authentication.
    pub fn check_principal(&self, principal: &Arc<str>) -> Result<(), Limited> {
        if let Some((l, b)) = &self.principal {
            l.check_key(principal)
                .map_err(|n| self.refused("principal", *b, n))?;
        }
        Ok(())
    }

    /// Per-tool limit on a `tools/call`.
    pub fn check_tool(&self, tool: &str) -> Result<(), Limited> {
        if let Some((l, b)) = self.tools.get(tool) {
            l.check().map_err(|n| self.refused("tool", *b, n))?;
        }
        Ok(())
    }

    /// Forget keys whose state is back to full (bounded memory under many clients).
    pub fn housekeeping(&self) {
        if let Some((l, _)) = &self.principal {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some((l, _)) = &self.ip {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    /// The client's address: the peer, or (from a trusted proxy) the right-most untrusted
    /// `X-Forwarded-For` entry.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        client_ip(peer, headers, &self.trusted)
    }
}

fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let hops: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse::<IpAddr>().ok())
        .collect();
    let mut client = peer;
    for ip in hops.into_iter().rev() {
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    client
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
    fn burst_then_refusal_with_retry_after() {
        let cfg = LimitsConfig {
            per_ip: Some(RateConfig {
                requests: 1,
                per: Dur(Duration::from_secs(10)),
                burst: Some(3),
            }),
            ..LimitsConfig::default()
        };
        let l = Limits::new(&cfg, vec![]);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..3 {
            assert!(l.check_client(ip).is_ok());
        }
        let r = l.check_client(ip).unwrap_err();
        assert_eq!((r.scope, r.limit), ("ip", 3));
        assert!(
            r.retry_after > Duration::from_secs(9) && r.retry_secs() == 10,
            "{r:?}"
        );
        assert!(l.check_client("127.0.0.2".parse().unwrap()).is_ok());
    }
}
