//! Upstream sets and balancing: which upstream a new session goes to. A session stays on the
//! upstream it was given for life (affinity); only new sessions are balanced. A composite
//! route's server has a set too: each composite session's leg to the server is placed on one of
//! its upstreams, and counts there like a session while it runs there.
//!
//! Strategies: round-robin, smooth weighted round-robin, least in-flight (requests in flight
//! across the member's live sessions, then fewest sessions), weighted random, and a consistent
//! hash ring over the session id. Members that failed to connect are *ejected* for a while and
//! get no new sessions unless every member is ejected.

use super::config::Strategy;
use sha2::{Digest, Sha256};
use shadowcat_proxy::guard::{Guard, GuardConfig};
use shadowcat_proxy::session::Session;
use shadowcat_proxy::session::place::{LegHold, PlacedLeg};
use shadowcat_proxy::upstream::UpstreamSpec;
use shadowcat_proxy::upstream::spares::Spares;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

/// Points on the hash ring per unit of weight (fewer when the weights are large).
const VNODES_PER_WEIGHT: u32 = 160;
/// Most points on the ring.
const MAX_RING: u32 = 160_000;

/// One upstream of a set. Shared (`Arc`) so that a configuration reload that keeps it
/// (same name and settings) carries it over with its state: live sessions, health, breaker,
/// ejection, spares.
pub struct Member {
    spec: UpstreamSpec,
    name: String,
    /// What it was built from (its settings and its route's guard settings, weight excluded):
    /// a reload keeps the member when this is unchanged.
    fingerprint: String,
    /// Its weight (a reload may change it without replacing the member).
    weight: AtomicU32,
    ejected_until_ms: AtomicU64,
    /// What lives on it, by session id.
    live: Mutex<HashMap<Arc<str>, Occupant>>,
    sessions_total: AtomicU64,
    connect_failures: AtomicU64,
    /// Active health: healthy until checks say otherwise.
    healthy: AtomicBool,
    /// Consecutive check results: positive = successes, negative = failures.
    streak: AtomicI64,
    /// Breaker, retries and timeouts, shared by the sessions placed here.
    guard: Arc<Guard>,
    /// Warm spares (stdio upstreams with `spares`).
    spares: OnceLock<Arc<Spares>>,
}

/// What lives on a member: a session placed on it, or a composite session's leg.
enum Occupant {
    Session(Weak<Session>),
    /// `ticket` tells this leg from a later one of the same session (its hold removes only
    /// its own entry).
    Leg {
        ticket: u64,
        inflight: Arc<dyn Fn() -> usize + Send + Sync>,
    },
}

/// A composite session's leg counted on a member until this is dropped (the leg closed, or
/// its session ended).
struct LegBound {
    member: Arc<Member>,
    session: Arc<str>,
    ticket: u64,
}

impl Drop for LegBound {
    fn drop(&mut self) {
        let mut live = self.member.live();
        if matches!(live.get(&self.session), Some(Occupant::Leg { ticket, .. }) if *ticket == self.ticket)
        {
            live.remove(&self.session);
        }
    }
}

impl Member {
    /// A member named `name` (see [`UpstreamSet::names`]) with its own guard.
    pub fn new(
        spec: UpstreamSpec,
        name: String,
        weight: u32,
        guard: &GuardConfig,
        fingerprint: String,
    ) -> Arc<Member> {
        Arc::new(Member {
            guard: Arc::new(Guard::new(&name, guard)),
            name,
            fingerprint,
            spec,
            weight: AtomicU32::new(weight.max(1)),
            ejected_until_ms: AtomicU64::new(0),
            live: Mutex::new(HashMap::new()),
            sessions_total: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            streak: AtomicI64::new(0),
            spares: OnceLock::new(),
        })
    }

    /// What it was built from (see the field).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Set its weight (a reload that keeps it; the set is rebuilt around it).
    pub fn set_weight(&self, weight: u32) {
        self.weight.store(weight.max(1), Ordering::Relaxed);
    }

    /// Whether active health checks consider it healthy (always, without checks).
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Record one active check; returns the new health when it changed.
    pub fn checked(&self, ok: bool, healthy_after: u32, unhealthy_after: u32) -> Option<bool> {
        let streak = if ok {
            let prev = self.streak.load(Ordering::Acquire);
            let next = if prev > 0 { prev + 1 } else { 1 };
            self.streak.store(next, Ordering::Release);
            next
        } else {
            let prev = self.streak.load(Ordering::Acquire);
            let next = if prev < 0 { prev - 1 } else { -1 };
            self.streak.store(next, Ordering::Release);
            next
        };
        let was = self.healthy();
        let now = if was {
            !(streak < 0 && streak.unsigned_abs() >= u64::from(unhealthy_after))
        } else {
            streak > 0 && streak.unsigned_abs() >= u64::from(healthy_after)
        };
        self.healthy.store(now, Ordering::Release);
        (now != was).then_some(now)
    }

    /// Its warm spares, if it keeps any.
    pub fn spares(&self) -> Option<&Arc<Spares>> {
        self.spares.get()
    }

    /// Keep `n` warm spares (before the gateway starts; a second call is ignored).
    pub fn keep_spares(&self, n: usize) {
        let _ = self.spares.set(Spares::new(n));
    }

    /// Its breaker, retry budget and timeouts.
    pub fn guard(&self) -> &Arc<Guard> {
        &self.guard
    }
    /// How to reach it.
    pub fn spec(&self) -> &UpstreamSpec {
        &self.spec
    }
    /// Its name (the URL or the program, without secrets; `#N` after a name shared in the
    /// set): what session records, metrics and logs say.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Its weight.
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }
    /// Its live sessions (those still alive; composite legs on it aside).
    pub fn live_sessions(&self) -> Vec<Arc<Session>> {
        self.live()
            .values()
            .filter_map(|o| match o {
                Occupant::Session(s) => s.upgrade(),
                Occupant::Leg { .. } => None,
            })
            .collect()
    }
    fn live(&self) -> MutexGuard<'_, HashMap<Arc<str>, Occupant>> {
        shadowcat_proxy::sync::lock(&self.live)
    }
    /// Live sessions on it (a composite session's leg counts as one).
    pub fn sessions(&self) -> usize {
        self.live().len()
    }
    /// Client requests in flight across its live sessions (and composite legs).
    pub fn inflight(&self) -> usize {
        // Counted outside the lock (a leg's count takes its composite's own lock).
        let (sessions, legs): (Vec<_>, Vec<_>) = self
            .live()
            .values()
            .map(|o| match o {
                Occupant::Session(s) => (s.upgrade(), None),
                Occupant::Leg { inflight, .. } => (None, Some(inflight.clone())),
            })
            .unzip();
        let sessions: usize = sessions.iter().flatten().map(|s| s.inflight().len()).sum();
        sessions + legs.iter().flatten().map(|f| f()).sum::<usize>()
    }
    /// Sessions ever placed on it (composite legs included).
    pub fn sessions_total(&self) -> u64 {
        self.sessions_total.load(Ordering::Relaxed)
    }
    /// Failed connection attempts.
    pub fn connect_failures(&self) -> u64 {
        self.connect_failures.load(Ordering::Relaxed)
    }
}

/// The upstreams of one route and how new sessions are spread over them.
pub struct UpstreamSet {
    members: Vec<Arc<Member>>,
    strategy: Strategy,
    next: AtomicUsize,
    /// Smooth weighted round-robin order (one period).
    wrr: Vec<usize>,
    /// Hash ring: (point, member), sorted by point.
    ring: Vec<(u64, usize)>,
    eject_for: Duration,
}

/// What ejection times count from: one instant for the process, so a member carried over to
/// the set of a reloaded configuration keeps its ejection.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn hash64(data: &[u8]) -> u64 {
    let d = Sha256::digest(data);
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

impl UpstreamSet {
    /// A set of `(spec, weight)` members (at least one).
    pub fn new(
        members: Vec<(UpstreamSpec, u32)>,
        strategy: Strategy,
        eject_for: Duration,
        guard: &GuardConfig,
    ) -> Self {
        let names = UpstreamSet::names(members.iter().map(|(s, _)| s));
        let members = members
            .into_iter()
            .zip(names)
            .map(|((spec, weight), name)| Member::new(spec, name, weight, guard, String::new()))
            .collect();
        UpstreamSet::of(members, strategy, eject_for)
    }

    /// The names of members with these specs, in order: each one's `describe()`, without
    /// secrets. Names that collide (`python3` twice with other arguments) get their position
    /// in the set, so a session record still names one member.
    pub fn names<'a>(specs: impl Iterator<Item = &'a UpstreamSpec>) -> Vec<String> {
        let labels: Vec<String> = specs.map(UpstreamSpec::describe).collect();
        labels
            .iter()
            .enumerate()
            .map(|(i, l)| {
                if labels.iter().filter(|o| *o == l).count() > 1 {
                    format!("{l} #{}", i + 1)
                } else {
                    l.clone()
                }
            })
            .collect()
    }

    /// A set of these members (at least one), new or carried over from an earlier set.
    pub fn of(members: Vec<Arc<Member>>, strategy: Strategy, eject_for: Duration) -> Self {
        let weights: Vec<u32> = members.iter().map(|m| m.weight()).collect();
        let wrr = smooth_wrr(&weights);
        let mut ring = Vec::new();
        if strategy == Strategy::ConsistentHash {
            let total: u32 = weights.iter().sum();
            let per_weight = (MAX_RING / total.max(1)).clamp(1, VNODES_PER_WEIGHT);
            for (i, m) in members.iter().enumerate() {
                for v in 0..weights[i] * per_weight {
                    ring.push((hash64(format!("{}#{v}", m.name).as_bytes()), i));
                }
            }
            ring.sort_unstable();
        }
        UpstreamSet {
            members,
            strategy,
            next: AtomicUsize::new(0),
            wrr,
            ring,
            eject_for,
        }
    }

    /// The members, in configuration order.
    pub fn members(&self) -> &[Arc<Member>] {
        &self.members
    }

    /// The strategy.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// The member with this name (as stored in a session record).
    pub fn find(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name).map(|m| &**m)
    }

    fn now_ms(&self) -> u64 {
        epoch().elapsed().as_millis() as u64
    }

    /// Whether member `i` may get new sessions: healthy, not ejected, breaker not open.
    pub fn is_available(&self, i: usize) -> bool {
        let m = &self.members[i];
        m.healthy()
            && m.ejected_until_ms.load(Ordering::Acquire) <= self.now_ms()
            && m.guard.accepts_sessions()
    }

    /// Member `i` failed to connect: no new sessions for it for a while.
    pub fn eject(&self, i: usize) {
        let m = &self.members[i];
        m.connect_failures.fetch_add(1, Ordering::Relaxed);
        let until = self.now_ms() + self.eject_for.as_millis() as u64;
        m.ejected_until_ms.store(until, Ordering::Release);
    }

    /// A session now lives on member `i`.
    pub fn bind(&self, i: usize, session: &Arc<Session>) {
        let m = &self.members[i];
        m.sessions_total.fetch_add(1, Ordering::Relaxed);
        m.live().insert(
            session.id().clone(),
            Occupant::Session(Arc::downgrade(session)),
        );
    }

    /// A composite session's leg now runs on member `i`: it counts there (sessions,
    /// least-in-flight, the admin view, metrics) until the returned hold is dropped.
    pub fn bind_leg(&self, i: usize, leg: PlacedLeg) -> Option<LegHold> {
        static TICKETS: AtomicU64 = AtomicU64::new(0);
        let m = self.members.get(i)?.clone();
        let ticket = TICKETS.fetch_add(1, Ordering::Relaxed);
        m.sessions_total.fetch_add(1, Ordering::Relaxed);
        m.live().insert(
            leg.session.clone(),
            Occupant::Leg {
                ticket,
                inflight: leg.inflight,
            },
        );
        Some(Box::new(LegBound {
            member: m,
            session: leg.session,
            ticket,
        }))
    }

    /// The session ended.
    pub fn unbind(&self, i: usize, id: &str) {
        if let Some(m) = self.members.get(i) {
            m.live().remove(id);
        }
    }

    /// Members to try for a new session, best first: the strategy's choice, then (with
    /// `failover`) the other available members, then the ejected ones.
    pub fn plan(&self, session: &str, failover: bool) -> Vec<usize> {
        let n = self.members.len();
        let any_available = (0..n).any(|i| self.is_available(i));
        let ok = |i: usize| !any_available || self.is_available(i);
        let first = self.choose(session, &ok);
        let mut plan = vec![first];
        if failover {
            let rest = (1..n).map(|k| (first + k) % n);
            let (up, down): (Vec<usize>, Vec<usize>) = rest.partition(|&i| self.is_available(i));
            plan.extend(up);
            plan.extend(down);
        }
        plan
    }

    /// The member for one stateless (2026-07-28) request, which has no session to stay on:
    /// the strategy's choice among the available members (`key` feeds consistent hashing).
    /// Stateless requests are not counted by least-in-flight.
    pub fn pick_stateless(&self, key: &str) -> usize {
        self.plan(key, false)[0]
    }

    fn choose(&self, session: &str, ok: &dyn Fn(usize) -> bool) -> usize {
        let n = self.members.len();
        match self.strategy {
            Strategy::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| (start + k) % n)
                    .find(|&i| ok(i))
                    .unwrap_or(0)
            }
            Strategy::WeightedRoundRobin => {
                let len = self.wrr.len();
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..len)
                    .map(|k| self.wrr[(start + k) % len])
                    .find(|&i| ok(i))
                    .unwrap_or(0)
            }
            Strategy::LeastInFlight => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| (start + k) % n)
                    .filter(|&i| ok(i))
                    .min_by_key(|&i| {
                        let m = &self.members[i];
                        (m.inflight(), m.sessions())
                    })
                    .unwrap_or(0)
            }
            Strategy::Random => {
                let total: u64 = (0..n)
                    .filter(|&i| ok(i))
                    .map(|i| u64::from(self.members[i].weight()))
                    .sum();
                let mut r = rand::random_range(0..total.max(1));
                for i in (0..n).filter(|&i| ok(i)) {
                    let w = u64::from(self.members[i].weight());
                    if r < w {
                        return i;
                    }
                    r -= w;
                }
                0
            }
            Strategy::ConsistentHash => {
                let h = hash64(session.as_bytes());
                let start = self.ring.partition_point(|(p, _)| *p < h);
                let len = self.ring.len();
                (0..len)
                    .map(|k| self.ring[(start + k) % len].1)
                    .find(|&i| ok(i))
                    .unwrap_or(0)
            }
        }
    }
}

/// One period of smooth weighted round-robin (nginx): spreads each member's turns evenly.
fn smooth_wrr(weights: &[u32]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, &w) in current.iter_mut().zip(weights) {
            *c += i64::from(w);
        }
        let best = (0..weights.len())
            .max_by_key(|&i| (current[i], -(i as i64)))
            .unwrap_or(0);
        current[best] -= total;
        out.push(best);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(weights: &[u32], s: Strategy) -> UpstreamSet {
        let members = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| (UpstreamSpec::http(format!("http://u{i}/mcp"), vec![]), w))
            .collect();
        UpstreamSet::new(members, s, Duration::from_secs(60), &GuardConfig::default())
    }

    fn counts(s: &UpstreamSet, n: usize) -> Vec<usize> {
        let mut c = vec![0; s.members().len()];
        for k in 0..n {
            c[s.plan(&format!("session-{k}"), false)[0]] += 1;
        }
        c
    }

    #[test]
    fn members_are_named_without_secrets_and_still_apart() {
        let members = vec![
            (
                UpstreamSpec::stdio(
                    "/usr/bin/python3",
                    vec!["a.py".into(), "--token".into(), "t1".into()],
                ),
                1,
            ),
            (
                UpstreamSpec::stdio("/usr/bin/python3", vec!["b.py".into()]),
                1,
            ),
            (UpstreamSpec::http("http://u:pw@h/mcp?key=k1", vec![]), 1),
        ];
        let s = UpstreamSet::new(
            members,
            Strategy::ConsistentHash,
            Duration::from_secs(60),
            &GuardConfig::default(),
        );
        let names: Vec<&str> = s.members().iter().map(|m| m.name()).collect();
        assert_eq!(names, ["python3 #1", "python3 #2", "http://h/mcp?key"]);
        assert!(std::ptr::eq(
            s.find("python3 #2").unwrap(),
            &*s.members()[1]
        ));
    }

    #[test]
    fn strategies_spread_sessions() {
        assert_eq!(
            counts(&set(&[1, 1, 1], Strategy::RoundRobin), 30),
            vec![10, 10, 10]
        );
        assert_eq!(smooth_wrr(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(
            counts(&set(&[3, 1], Strategy::WeightedRoundRobin), 400),
            vec![300, 100]
        );
        let r = counts(&set(&[1, 3], Strategy::Random), 4000);
        assert!((800..1200).contains(&r[0]), "{r:?}");
        let h = set(&[1, 1, 1], Strategy::ConsistentHash);
        let c = counts(&h, 3000);
        assert!(c.iter().all(|&x| (700..1300).contains(&x)), "{c:?}");
        // The same session id always lands on the same member.
        assert_eq!(h.plan("abc", false), h.plan("abc", false));
    }

    #[test]
    fn health_thresholds() {
        let s = set(&[1, 1], Strategy::RoundRobin);
        let m = &s.members()[1];
        assert_eq!(m.checked(false, 2, 3), None);
        assert_eq!(m.checked(false, 2, 3), None);
        assert_eq!(
            m.checked(true, 2, 3),
            None,
            "a success resets the failure streak"
        );
        for _ in 0..2 {
            assert_eq!(m.checked(false, 2, 3), None);
        }
        assert_eq!(m.checked(false, 2, 3), Some(false));
        assert!(!s.is_available(1));
        assert_eq!(counts(&s, 10), vec![10, 0]);
        assert_eq!(m.checked(true, 2, 3), None);
        assert_eq!(m.checked(true, 2, 3), Some(true));
        assert!(s.is_available(1));
    }

    #[test]
    fn ejected_members_get_no_new_sessions_and_failover_order() {
        let s = set(&[1, 1, 1], Strategy::RoundRobin);
        s.eject(1);
        assert!(!s.is_available(1));
        assert_eq!(counts(&s, 30)[1], 0);
        let plan = s.plan("x", true);
        assert_eq!(plan.len(), 3);
        assert_eq!(plan[2], 1, "ejected member last: {plan:?}");
        assert_eq!(s.members()[1].connect_failures(), 1);
        s.eject(0);
        s.eject(2);
        // Everything ejected: still try something rather than nothing.
        assert_eq!(s.plan("y", true).len(), 3);
    }

    #[test]
    fn stateless_requests_are_balanced() {
        let s = set(&[1, 1, 1], Strategy::RoundRobin);
        let picks: Vec<usize> = (0..6).map(|_| s.pick_stateless("")).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
        s.eject(1);
        assert!((0..6).all(|_| s.pick_stateless("") != 1));
        let h = set(&[1, 1, 1], Strategy::ConsistentHash);
        assert_eq!(h.pick_stateless("alice"), h.pick_stateless("alice"));
    }
}
