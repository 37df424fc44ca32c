//! Where client-chosen upstreams may go (`forward http --allow-absolute-uri`): a request names
//! any URL, so without a policy a client could make the proxy reach its loopback services,
//! cloud metadata (link-local) or the private network behind it.
//!
//! Public addresses are allowed; loopback, link-local, private, shared (CGNAT), unspecified,
//! multicast, broadcast and unique-local ranges (IPv4-mapped forms included) are refused unless
//! `--allow-destination` lists the address's network or the host name. Names are judged by
//! the addresses they resolve to — every one must be allowed — at request time
//! ([`Destinations::check`]) *and* at connect time (the [`GuardedResolver`] of the client
//! these upstreams use), so a name that resolves elsewhere between the two (DNS rebinding)
//! still cannot connect to a refused address.

use crate::error::ProxyError;
use hyper_util::client::legacy::connect::dns::Name;
use ipnet::IpNet;
use shadowcat_proto::error::INVALID_REQUEST;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// The destination policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Destinations {
    /// Networks allowed whatever their kind.
    nets: Vec<IpNet>,
    /// Host names allowed whatever they resolve to (lower case).
    hosts: Vec<String>,
}

impl Destinations {
    /// From `--allow-destination` entries: an address, a CIDR (`10.0.0.0/8`) or a host name.
    pub fn parse(entries: &[String]) -> Result<Destinations, String> {
        let mut d = Destinations::default();
        for e in entries {
            let t = e.trim();
            if let Ok(net) = t.parse::<IpNet>() {
                d.nets.push(net);
            } else if let Ok(ip) = t.trim_matches(['[', ']']).parse::<IpAddr>() {
                d.nets.push(IpNet::from(ip));
            } else if !t.is_empty()
                && t.len() <= 253
                && t.split('.').all(|label| {
                    !label.is_empty()
                        && label
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                })
            {
                d.hosts.push(t.to_ascii_lowercase());
            } else {
                return Err(format!(
                    "`{e}` is not an address, a CIDR (10.0.0.0/8) or a host name"
                ));
            }
        }
        Ok(d)
    }

    /// Whether the host name is listed.
    fn allows_name(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.hosts.contains(&host)
    }

    /// Whether a connection to `ip` is allowed.
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|n| n.contains(&ip)) || is_public(ip)
    }

    /// 403 unless `uri`'s host is listed or every address it names or resolves to is allowed.
    pub async fn check(&self, uri: &http::Uri) -> Result<(), ProxyError> {
        let host = uri.host().unwrap_or("").trim_matches(['[', ']']);
        if self.allows_name(host) {
            return Ok(());
        }
        let refuse = |why: String| {
            Err(ProxyError::bad(
                crate::error::Refusal::Forbidden,
                INVALID_REQUEST,
                format!(
                    "destination `{host}` is not allowed: {why}; allow it with --allow-destination"
                ),
            ))
        };
        if let Ok(ip) = host.parse::<IpAddr>() {
            return if self.allows_ip(ip) {
                Ok(())
            } else {
                refuse(format!("{ip} is a {} address", kind(ip)))
            };
        }
        let addrs: Vec<SocketAddr> = match tokio::net::lookup_host((host, 0)).await {
            Ok(a) => a.collect(),
            Err(_) => {
                return Err(ProxyError::UpstreamConnect(format!(
                    "cannot resolve `{host}`"
                )));
            }
        };
        match addrs
            .iter()
            .map(SocketAddr::ip)
            .find(|ip| !self.allows_ip(*ip))
        {
            Some(ip) => refuse(format!("it resolves to {ip}, a {} address", kind(ip))),
            None => Ok(()),
        }
    }
}

/// IPv4-mapped and IPv4-compatible IPv6 addresses as the IPv4 address they are.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !is_special_v4(v4),
        IpAddr::V6(v6) => !is_special_v6(v6),
    }
}

fn is_special_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || o[0] == 0
        // Shared address space (CGNAT), 100.64.0.0/10.
        || (o[0] == 100 && (o[1] & 0xc0) == 64)
        // IETF protocol assignments, 192.0.0.0/24; reserved 240.0.0.0/4.
        || (o[0] == 192 && o[1] == 0 && o[2] == 0)
        || o[0] >= 240
}

fn is_special_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        // Unique local fc00::/7, link-local fe80::/10, site-local fec0::/10.
        || (s[0] & 0xfe00) == 0xfc00
        || (s[0] & 0xffc0) == 0xfe80
        || (s[0] & 0xffc0) == 0xfec0
        // IPv4-compatible (::a.b.c.d), NAT64 well-known prefix 64:ff9b::/96 carrying any v4.
        || (s[0..6] == [0, 0, 0, 0, 0, 0])
        || (s[0] == 0x64 && s[1] == 0xff9b)
}

fn kind(ip: IpAddr) -> &'static str {
    match canonical(ip) {
        IpAddr::V4(v4) if v4.is_loopback() => "loopback",
        IpAddr::V6(v6) if v6.is_loopback() => "loopback",
        IpAddr::V4(v4) if v4.is_link_local() => "link-local",
        IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80 => "link-local",
        IpAddr::V4(v4) if v4.is_private() => "private",
        IpAddr::V6(v6) if (v6.segments()[0] & 0xfe00) == 0xfc00 => "private",
        _ => "reserved",
    }
}

/// A resolver that only returns allowed addresses (error when a name resolves to a refused
/// one), or the system's resolver unchanged.
#[derive(Clone, Debug, Default)]
pub(crate) struct GuardedResolver {
    policy: Option<Arc<Destinations>>,
}

impl GuardedResolver {
    pub(crate) fn new(policy: Option<Arc<Destinations>>) -> Self {
        GuardedResolver { policy }
    }
}

type Resolving =
    Pin<Box<dyn Future<Output = Result<std::vec::IntoIter<SocketAddr>, std::io::Error>> + Send>>;

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Resolving;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if let Some(p) = policy
                && !p.allows_name(&host)
                && let Some(bad) = addrs.iter().find(|a| !p.allows_ip(a.ip()))
            {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!(
                        "destination `{host}` resolves to {}, which is not allowed",
                        bad.ip()
                    ),
                ));
            }
            Ok(addrs.into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    fn d(entries: &[&str]) -> Destinations {
        Destinations::parse(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn special_ranges_are_refused_unless_listed() {
        let none = d(&[]);
        for bad in [
            "127.0.0.1",
            "127.9.9.9",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            let ip: IpAddr = bad.parse().unwrap();
            assert!(!none.allows_ip(ip), "{bad}");
        }
        for ok in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(none.allows_ip(ok.parse().unwrap()), "{ok}");
        }
        let some = d(&["10.0.0.0/8", "127.0.0.1", "[::1]", "Internal.Example"]);
        assert!(some.allows_ip("10.200.0.1".parse().unwrap()));
        assert!(some.allows_ip("127.0.0.1".parse().unwrap()));
        assert!(some.allows_ip("::ffff:127.0.0.1".parse().unwrap()));
        assert!(some.allows_ip("::1".parse().unwrap()));
        assert!(!some.allows_ip("127.0.0.2".parse().unwrap()));
        assert!(!some.allows_ip("192.168.0.1".parse().unwrap()));
        assert!(some.allows_name("internal.example."));
        for bad in ["", "http://x", "a b", "10.0.0.0/33", "x/y"] {
            assert!(Destinations::parse(&[bad.to_string()]).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn literal_and_resolved_addresses_are_checked() {
        let none = d(&[]);
        let uri = |s: &str| s.parse::<http::Uri>().unwrap();
        for bad in [
            "http://127.0.0.1:8080/mcp",
            "http://[::1]/mcp",
            "http://169.254.169.254/latest/meta-data",
            "http://localhost:9/mcp",
        ] {
            let e = none.check(&uri(bad)).await.unwrap_err();
            assert_eq!(e.http_status(), StatusCode::FORBIDDEN, "{bad}");
            assert!(e.to_string().contains("--allow-destination"), "{e}");
        }
        assert!(none.check(&uri("http://93.184.216.34/mcp")).await.is_ok());
        let lo = d(&["127.0.0.0/8", "::1"]);
        assert!(lo.check(&uri("http://localhost:9/mcp")).await.is_ok());
        assert!(
            d(&["localhost"])
                .check(&uri("http://localhost/"))
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_of_refused_addresses() {
        use tower_service::Service;
        let name: Name = "localhost".parse().unwrap();
        let mut guarded = GuardedResolver::new(Some(Arc::new(d(&[]))));
        let e = guarded.call(name.clone()).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
        let mut open = GuardedResolver::new(None);
        assert!(open.call(name.clone()).await.unwrap().next().is_some());
        let mut listed = GuardedResolver::new(Some(Arc::new(d(&["localhost"]))));
        assert!(listed.call(name).await.unwrap().next().is_some());
    }
}
