//! The part of the gateway a configuration reload replaces: routes (upstream sets, composite
//! servers, shaping, rules, pinning policy, health settings), authentication, rate limits and
//! the `/metrics` token, as one immutable [`Live`] snapshot. The gateway swaps it atomically;
//! a request loads it once and sees one configuration from admission to placement.
//!
//! A rebuild reuses what did not change, so a reload costs nothing where nothing changed:
//! a route whose settings are all the same is kept whole (its `Arc`, its health checker); in a
//! changed route, a member whose name and settings are the same (weight aside) is kept with
//! its state (live sessions, health, breaker, ejection, spares); unchanged authentication
//! keeps its JWKS cache; unchanged rate limits keep their buckets ([`Limits::carry_over`]).

use super::auth::Authenticator;
use super::authz::Rules;
use super::balance::{Member, UpstreamSet};
use super::config::{self, Cidr, ConfigError, GatewayConfig, RouteConfig, route_key};
use super::limits::Limits;
use super::target::MemberPlacer;
use super::{Route, Servers, pins, resilience};
use serde_json::Value;
use shadowcat_proxy::upstream::UpstreamSpec;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Routes by key.
pub(crate) type Routes = HashMap<Arc<str>, Arc<Route>>;

/// One configuration in force (see the module docs).
pub(crate) struct Live {
    /// 1 for the configuration the gateway started with, one more for each reload that
    /// changed something.
    pub generation: u64,
    pub routes: Routes,
    pub auth: Option<Arc<Authenticator>>,
    /// Scopes every route requires (`auth.scopes`).
    pub auth_scopes: Vec<String>,
    pub authorization_servers: Vec<String>,
    /// The bearer token `/metrics` requires (`None`: open).
    pub metrics_token: Option<String>,
    pub limits: Limits,
    /// Some route has authorization rules (the hook then looks at every frame).
    pub any_rules: bool,
    /// Some upstream exchanges the client's token (admission keeps it for the request).
    pub exchanges: bool,
    /// How long sessions of an upstream a reload removed keep working.
    pub drain_grace: Duration,
    /// The configuration this was built from (flags applied, validated).
    pub config: GatewayConfig,
    /// The same, every secret redacted (`GET /api/config`).
    pub redacted: Arc<Value>,
}

/// The settings of a set's members that are not theirs alone: their guard (breaker, retry
/// budget, timeouts). A member whose guard settings change is replaced.
fn guard_fingerprint(r: &resilience::Resilience) -> String {
    serde_json::json!([r.breaker, r.retry, r.request_timeout, r.sse_idle_timeout]).to_string()
}

/// JSON text of `v` (the configuration types always serialize).
fn text(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

impl Live {
    /// Build from a configuration (validated again here; `source` names it in errors),
    /// reusing what is unchanged from `old`.
    pub fn build(
        cfg: &GatewayConfig,
        source: &str,
        old: Option<&Live>,
        generation: u64,
    ) -> Result<Live, ConfigError> {
        cfg.validate(source)?;
        let global_scopes = cfg
            .auth
            .as_ref()
            .map(|a| a.scopes.clone())
            .unwrap_or_default();
        let mut routes = HashMap::new();
        for (i, r) in cfg.routes.iter().enumerate() {
            let key: Arc<str> = Arc::from(route_key(&r.path).unwrap_or_default());
            let mut scopes = global_scopes.clone();
            scopes.extend(
                r.scopes
                    .iter()
                    .filter(|s| !global_scopes.contains(s))
                    .cloned(),
            );
            let fingerprint = text(&(r, &scopes));
            let before = old.and_then(|o| o.routes.get(&key));
            if let Some(b) = before.filter(|b| b.fingerprint == fingerprint) {
                routes.insert(key, b.clone());
                continue;
            }
            let (set, servers) = build_set(i, r, source, before.map(|b| &**b))?;
            routes.insert(
                key.clone(),
                Arc::new(Route {
                    path: r.path.clone(),
                    key,
                    set,
                    servers,
                    scopes,
                    failover: r.failover,
                    connect_timeout: r.connect_timeout.0,
                    rules: Rules::new(r.rules.clone(), r.default_effect),
                    // A composite route's servers are checked by their own settings.
                    health: if r.is_composite() {
                        None
                    } else {
                        r.health.clone()
                    },
                    pins: pins::RoutePolicy::new(
                        pins::Policy {
                            pinning: r.pinning,
                            new_tools: r.new_tools,
                        },
                        r.servers
                            .iter()
                            .map(|m| (m.name.clone(), m.pinning, m.new_tools)),
                    ),
                    fingerprint,
                }),
            );
        }
        let auth = match (&cfg.auth, old) {
            (None, _) => None,
            (Some(_), Some(o)) if o.auth.is_some() && text(&o.config.auth) == text(&cfg.auth) => {
                o.auth.clone()
            }
            (Some(a), _) => {
                let jwks_http = reqwest::Client::builder()
                    .no_proxy()
                    .connect_timeout(Duration::from_secs(5))
                    .build()
                    .map_err(|e| {
                        ConfigError::one(
                            source,
                            "auth.jwt",
                            format!("cannot build the HTTP client for the JWKS: {e}"),
                        )
                    })?;
                Some(Arc::new(Authenticator::new(a, jwks_http)))
            }
        };
        let authorization_servers = cfg
            .auth
            .as_ref()
            .map(|a| {
                if a.authorization_servers.is_empty() {
                    a.jwt.iter().map(|j| j.issuer.clone()).collect()
                } else {
                    a.authorization_servers.clone()
                }
            })
            .unwrap_or_default();
        let trusted = cfg
            .server
            .trusted_proxies
            .iter()
            .filter_map(|t| Cidr::parse(t).ok())
            .collect();
        let limits = Limits::new(
            &cfg.limits,
            trusted,
            cfg.limits.shared_redis(&cfg.server),
            &cfg.server.redis_prefix,
        );
        let limits = match old {
            Some(o) => limits.carry_over(&o.limits),
            None => limits,
        };
        let any_rules = routes.values().any(|r: &Arc<Route>| !r.rules.is_open());
        let exchanges = routes.values().any(|r: &Arc<Route>| {
            r.sets()
                .flat_map(|(_, set)| set.members().iter())
                .any(|m| super::target::needs_client_token(m.spec()))
        });
        Ok(Live {
            generation,
            routes,
            auth,
            auth_scopes: global_scopes,
            authorization_servers,
            metrics_token: cfg.metrics.resolve_token().ok().flatten(),
            limits,
            any_rules,
            exchanges,
            drain_grace: cfg.server.drain_grace.0,
            redacted: Arc::new(super::redact::config(cfg)),
            config: cfg.clone(),
        })
    }

    /// The routes sorted by path.
    pub fn sorted_routes(&self) -> Vec<Arc<Route>> {
        let mut routes: Vec<Arc<Route>> = self.routes.values().cloned().collect();
        routes.sort_by(|a, b| a.path.cmp(&b.path));
        routes
    }
}

/// `(spec, weight, spares, what the member is built from)` of each upstream of a set.
type Built = (UpstreamSpec, u32, u32, String);

/// What the upstreams of a set are built from: their specs, weights and spares, and each one's
/// settings (weight aside) and the route's guard settings.
fn upstreams_of(ups: &[config::UpstreamConfig], guard: &str) -> Vec<Built> {
    ups.iter()
        .filter_map(|u| {
            let spec = u.spec().ok()?;
            let mut unweighted = u.clone();
            unweighted.weight = 0;
            Some((spec, u.weight, u.spares, text(&(&unweighted, guard))))
        })
        .collect()
}

/// The upstream set of route `i` (`r`) and its servers' sets (each composite server's: its
/// `[[routes.servers.upstreams]]`, or its one upstream), keeping the members of `before` (the
/// route in the running configuration) whose name and settings are unchanged.
fn build_set(
    i: usize,
    r: &RouteConfig,
    source: &str,
    before: Option<&Route>,
) -> Result<(UpstreamSet, Servers), ConfigError> {
    let own = r.resilience();
    let guard = guard_fingerprint(&own);
    let mut guard_cfg = resilience::guard_config(&own);
    let mut servers = Servers::new();
    let members: Vec<Built> = match r.composite() {
        // A composite route: one candidate, every server of it in each session.
        Some(spec) => {
            let mut spec = spec.map_err(|e| {
                let at = format!("routes[{i}].{}", e.field);
                ConfigError::one(source, &at, e.message)
            })?;
            let problems = spec.problems();
            if !problems.is_empty() {
                let at = format!("routes[{i}].servers");
                return Err(ConfigError::one(source, &at, problems.join("; ")));
            }
            // Each server is placed by a placer of its own over its set, protected by its
            // settings (the route's where it has none of its own).
            let mut settings = Vec::with_capacity(r.servers.len());
            for (m, mc) in spec.members.iter_mut().zip(&r.servers) {
                let res = r.server_resilience(mc);
                let old = before.and_then(|b| {
                    b.servers
                        .iter()
                        .find(|(n, _)| *n == m.name)
                        .map(|(_, p)| &*p.set)
                });
                let set = Arc::new(UpstreamSet::of(
                    carry(
                        upstreams_of(mc.set_upstreams(), &guard_fingerprint(&res)),
                        old,
                        &resilience::guard_config(&res),
                    ),
                    mc.balance.unwrap_or_default(),
                    res.eject_for.0,
                ));
                let placer = Arc::new(MemberPlacer {
                    set,
                    what: format!("{} server `{}`", r.path, m.name),
                    failover: res.failover,
                    connect_timeout: res.connect_timeout.0,
                    health: res.health.clone(),
                    client_token: None,
                });
                m.placer = Some(placer.clone());
                servers.push((m.name.clone(), placer));
                settings.push(res);
            }
            // The composite session as a whole has no breaker and no timeouts: each server's
            // upstreams have theirs (a failing server must not refuse the others' requests,
            // nor a route-wide timeout cut a server's longer one).
            guard_cfg.breaker = None;
            guard_cfg.request_timeout = None;
            guard_cfg.sse_idle_timeout = None;
            let from = text(&(
                &r.servers,
                &r.names,
                &r.tools,
                &r.failure,
                &r.page_size,
                &settings,
            ));
            vec![(UpstreamSpec::Composite(Arc::new(spec)), 1, 0, from)]
        }
        None => upstreams_of(&r.upstreams, &guard),
    };
    let set = UpstreamSet::of(
        carry(members, before.map(|b| &b.set), &guard_cfg),
        r.balance,
        r.eject_for.0,
    );
    // A composite candidate carried over keeps the servers' sets its spec places on.
    if let (Some(b), Some(m)) = (before, set.members().first())
        && r.is_composite()
        && b.set.members().iter().any(|o| Arc::ptr_eq(o, m))
    {
        servers = b.servers.clone();
    }
    Ok((set, servers))
}

/// The members of a set built from `members`, each carried over from `before` (with its state)
/// when its name and settings are unchanged.
fn carry(
    members: Vec<Built>,
    before: Option<&UpstreamSet>,
    guard_cfg: &shadowcat_proxy::guard::GuardConfig,
) -> Vec<Arc<Member>> {
    let names = UpstreamSet::names(members.iter().map(|(s, ..)| s));
    let mut taken: Vec<usize> = Vec::new();
    members
        .into_iter()
        .zip(names)
        .map(|((spec, weight, spares, from), name)| {
            let fingerprint = format!("{name}\n{from}");
            let kept = before.and_then(|b| {
                b.members()
                    .iter()
                    .enumerate()
                    .find(|(j, m)| !taken.contains(j) && m.fingerprint() == fingerprint)
            });
            match kept {
                Some((j, m)) => {
                    taken.push(j);
                    m.set_weight(weight);
                    m.clone()
                }
                None => {
                    let m = Member::new(spec, name, weight, guard_cfg, fingerprint);
                    if spares > 0 {
                        m.keep_spares(spares as usize);
                    }
                    m
                }
            }
        })
        .collect()
}

/// What a reload changed, for its log line and its answer (paths and upstream names, which
/// never carry secrets: names are `describe()`d, URLs shown without credentials).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Changes {
    /// Routes added, removed, and kept with other settings (paths).
    pub routes_added: Vec<String>,
    pub routes_removed: Vec<String>,
    pub routes_changed: Vec<String>,
    /// Upstreams (`ROUTE UPSTREAM`) new in the configuration, and gone from it (their
    /// sessions drain).
    pub upstreams_added: Vec<String>,
    pub upstreams_removed: Vec<String>,
    /// `[auth]`, `[limits]` (or `server.trusted_proxies`), `[metrics]`, `server.drain_grace`
    /// changed.
    pub auth: bool,
    pub limits: bool,
    pub metrics: bool,
    pub drain_grace: bool,
}

impl Changes {
    /// Compare the running `old` with `new`.
    pub(crate) fn between(old: &Live, new: &Live) -> Changes {
        let mut c = Changes::default();
        let label = |r: &Route, m: &Member| format!("{} {}", r.path, super::admin::shown(m.name()));
        let members = |l: &Live| -> Vec<(String, *const Member)> {
            l.sorted_routes()
                .iter()
                .flat_map(|r| {
                    r.set
                        .members()
                        .iter()
                        .map(|m| (label(r, m), Arc::as_ptr(m)))
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let (before, after) = (members(old), members(new));
        for r in new.sorted_routes() {
            match old.routes.get(&r.key) {
                None => c.routes_added.push(r.path.clone()),
                Some(o) if !Arc::ptr_eq(o, &r) => c.routes_changed.push(r.path.clone()),
                Some(_) => {}
            }
        }
        for r in old.sorted_routes() {
            if !new.routes.contains_key(&r.key) {
                c.routes_removed.push(r.path.clone());
            }
        }
        for (name, m) in &after {
            if !before.iter().any(|(_, o)| o == m) {
                c.upstreams_added.push(name.clone());
            }
        }
        for (name, m) in &before {
            if !after.iter().any(|(_, n)| n == m) {
                c.upstreams_removed.push(name.clone());
            }
        }
        let (o, n) = (&old.config, &new.config);
        c.auth = text(&o.auth) != text(&n.auth);
        c.limits = text(&o.limits) != text(&n.limits)
            || o.server.trusted_proxies != n.server.trusted_proxies;
        c.metrics = text(&o.metrics) != text(&n.metrics);
        c.drain_grace = o.server.drain_grace != n.server.drain_grace;
        c
    }

    /// Whether anything changed.
    pub fn any(&self) -> bool {
        !(self.routes_added.is_empty()
            && self.routes_removed.is_empty()
            && self.routes_changed.is_empty()
            && self.upstreams_added.is_empty()
            && self.upstreams_removed.is_empty())
            || self.auth
            || self.limits
            || self.metrics
            || self.drain_grace
    }
}

/// The parts of a configuration a reload cannot change (they were built once at start: the
/// listener and its front, the store, the admin listener, the audit log, the pipeline):
/// one problem per changed setting. `pinning_hook`: tool pinning runs (some route had it at
/// start), so routes may turn it on and off.
pub(crate) fn restart_only(
    old: &GatewayConfig,
    new: &GatewayConfig,
    pinning_hook: bool,
) -> Vec<config::Problem> {
    let mut problems = Vec::new();
    let mut differ = |section: &str, a: Value, b: Value| {
        let keys: Vec<String> = match (&a, &b) {
            (Value::Object(x), Value::Object(y)) => {
                let mut k: Vec<String> = x.keys().chain(y.keys()).cloned().collect();
                k.sort();
                k.dedup();
                k.into_iter().filter(|k| x.get(k) != y.get(k)).collect()
            }
            _ if a != b => vec![String::new()],
            _ => Vec::new(),
        };
        for k in keys {
            let field = if k.is_empty() {
                section.to_string()
            } else {
                format!("{section}.{k}")
            };
            problems.push(config::Problem {
                field,
                position: None,
                message: "cannot change while the gateway runs (it is set up once at start); \
                          restart the gateway to change it, or put back the running value"
                    .into(),
            });
        }
    };
    let mut server_old = json(&old.server);
    let mut server_new = json(&new.server);
    // The one [server] setting a reload may change, and the ones limits read.
    for s in [&mut server_old, &mut server_new] {
        if let Value::Object(m) = s {
            m.remove("drain_grace");
            m.remove("trusted_proxies");
        }
    }
    differ("server", server_old, server_new);
    differ("admin", json(&old.admin), json(&new.admin));
    differ("audit", json(&old.audit), json(&new.audit));
    if !pinning_hook {
        for (i, r) in new.routes.iter().enumerate() {
            let members = r
                .servers
                .iter()
                .enumerate()
                .map(|(j, m)| (format!("routes[{i}].servers[{j}].pinning"), m.pinning));
            let on = std::iter::once((format!("routes[{i}].pinning"), Some(r.pinning)))
                .chain(members)
                .filter(|(_, p)| p.is_some_and(|p| p != pins::Pinning::Off));
            for (field, _) in on {
                problems.push(config::Problem {
                    field,
                    position: None,
                    message: "tool pinning was off on every route at start: turning it on \
                              needs a restart"
                        .into(),
                });
            }
        }
    }
    problems
}

/// `v` as JSON (the configuration types always serialize).
fn json(v: &impl serde::Serialize) -> Value {
    serde_json::to_value(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(text: &str, old: Option<&Live>) -> Live {
        let cfg = GatewayConfig::parse("g.toml", text).expect("parse");
        let generation = old.map_or(1, |o| o.generation + 1);
        Live::build(&cfg, "g.toml", old, generation).expect("build")
    }

    const SET: &str = "[[routes]]\npath = \"/mcp\"\n\
        [[routes.servers]]\nname = \"a\"\n\
        [[routes.servers.upstreams]]\nurl = \"http://127.0.0.1:1/mcp\"\n\
        [[routes.servers.upstreams]]\nurl = \"http://127.0.0.1:2/mcp\"\n\
        [[routes.servers]]\nname = \"b\"\ncommand = \"x\"\n";

    /// A server's set is placed through its placer; a reload that changes only the route's
    /// rules keeps the composite member and the set it places on, and one that changes the set
    /// replaces the composite member (its sessions drain) while an unchanged upstream of the
    /// set keeps its state.
    #[test]
    fn a_servers_set_follows_its_composite_member_across_reloads() {
        let a = live(SET, None);
        let ra = &a.routes[""];
        // Every server has a set: `b`'s one upstream is a set of one.
        assert_eq!(ra.servers.len(), 2);
        let UpstreamSpec::Composite(spec) = ra.set.members()[0].spec() else {
            panic!("a composite member")
        };
        assert!(spec.members.iter().all(|m| m.placer.is_some()));
        assert_eq!(ra.servers[1].1.set.members()[0].name(), "x");
        let plan = spec.members[0].placer().plan("s", &[]).expect("a plan");
        let names: Vec<&str> = plan.iter().map(|c| &*c.name).collect();
        assert_eq!(names, ["http://127.0.0.1:1/mcp", "http://127.0.0.1:2/mcp"]);

        let denying = SET.replace(
            "path = \"/mcp\"\n",
            "path = \"/mcp\"\ndefault_effect = \"deny\"\n",
        );
        let b = live(&denying, Some(&a));
        let rb = &b.routes[""];
        assert!(!Arc::ptr_eq(ra, rb), "the route is rebuilt");
        assert!(Arc::ptr_eq(&ra.set.members()[0], &rb.set.members()[0]));
        assert!(Arc::ptr_eq(&ra.servers[0].1, &rb.servers[0].1));

        let c = live(&SET.replace("127.0.0.1:2/", "127.0.0.1:3/"), Some(&b));
        let rc = &c.routes[""];
        assert!(!Arc::ptr_eq(&rb.set.members()[0], &rc.set.members()[0]));
        let (old, new) = (&rb.servers[0].1.set, &rc.servers[0].1.set);
        assert!(Arc::ptr_eq(&old.members()[0], &new.members()[0]));
        assert!(!Arc::ptr_eq(&old.members()[1], &new.members()[1]));
        let changes = Changes::between(&b, &c);
        assert_eq!(changes.upstreams_removed, ["/mcp composite(a,b)"]);
        assert_eq!(changes.upstreams_added, ["/mcp composite(a,b)"]);
    }
}
