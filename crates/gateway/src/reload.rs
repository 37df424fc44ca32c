//! Configuration reload: `SIGHUP`, a file watch (`--watch`) and `POST /admin/reload` all come
//! here ([`Gateway::reload`]), one reload at a time.
//!
//! A reload reads the file again (the command line's overrides applied again), checks it as
//! `config check` does, refuses changes to what is set up once at start (`[server]` but for
//! `drain_grace` and `trusted_proxies`, `[admin]`, `[audit]`, turning tool pinning on when
//! no route had it), builds the new [`Live`] snapshot reusing what did not change, and swaps
//! it in: the next request sees the new configuration whole, a request already admitted
//! finishes under the one it started with. Any problem leaves the running configuration in
//! force and is answered with the same lines `config check` prints.
//!
//! Live sessions keep their upstream. A session on a member the new configuration still has
//! is moved to the new route (its rules, pinning policy); one whose member (or route) is gone
//! *drains*: it keeps working for `server.drain_grace`, then ends as if its upstream had
//! closed, its requests in flight answered with a JSON-RPC error saying why; a later request
//! with its id gets `404` with the same reason (remembered for 10 minutes, at most 10,000).
//! Health checkers of replaced routes and spares of removed members are stopped, new ones
//! started. Each reload is logged (what changed, never a secret), counted in `/metrics`
//! (`shadowcat_config_reloads_total{result}`, `shadowcat_config_last_reload_success_timestamp_seconds`,
//! `shadowcat_config_generation`, `shadowcat_config_draining_sessions`) and shown on the
//! admin page.

use super::balance::Member;
use super::config::{ConfigError, GatewayConfig};
use super::live::{Changes, Live, restart_only};
use super::{Bound, Gateway, Route, admin, health};
use serde_json::{Value, json};
use shadowcat_proxy::upstream::UpstreamCtx;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What a reload loads: the configuration and the name its errors use, or the problems, one
/// line each as `config check` prints them.
pub type Loaded = Result<(GatewayConfig, String), Vec<String>>;

/// How the gateway reads its configuration again (the binary's: the file, then the flags).
pub type Loader = Box<dyn Fn() -> Loaded + Send + Sync>;

/// Sessions ended by a drain whose reason is remembered for their late requests.
const MAX_ENDED: usize = 10_000;
/// How long that reason is remembered.
const ENDED_FOR: Duration = Duration::from_secs(600);
/// How long a draining session's end may take before it is shut down outright.
const END_WITHIN: Duration = Duration::from_secs(5);

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// `SIGHUP`.
    Signal,
    /// `--watch`: the file changed.
    Watch,
    /// `POST /admin/reload`.
    Admin,
}

impl Trigger {
    /// Its name in logs and answers.
    pub fn name(self) -> &'static str {
        match self {
            Trigger::Signal => "sighup",
            Trigger::Watch => "watch",
            Trigger::Admin => "admin",
        }
    }
}

/// The result of one reload.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Whether the file was good (applied, or nothing to change).
    pub ok: bool,
    /// The configuration generation in force afterwards.
    pub generation: u64,
    /// What asked for it.
    pub trigger: Trigger,
    /// When (Unix ms).
    pub at_ms: u64,
    /// The problems of a refused file, as `config check` prints them.
    pub errors: Vec<String>,
    /// What changed (`None`: refused).
    pub changes: Option<Changes>,
    /// Sessions that now drain.
    pub draining: usize,
}

impl Outcome {
    /// As JSON (the answer of `POST /admin/reload`, the admin page's last reload).
    pub fn json(&self) -> Value {
        let mut v = json!({
            "ok": self.ok,
            "generation": self.generation,
            "trigger": self.trigger.name(),
            "at_ms": self.at_ms,
        });
        if self.ok {
            v["changed"] = json!(self.changes.as_ref().is_some_and(Changes::any));
            v["changes"] = json!(self.changes);
            v["draining"] = json!(self.draining);
        } else {
            v["errors"] = json!(self.errors);
        }
        v
    }
}

/// What the gateway keeps to start and stop per-route tasks after start (set once serving).
pub(crate) struct Runtime {
    pub tracker: TaskTracker,
    /// The template of the health checkers' and spares' upstream contexts.
    pub check_ctx: UpstreamCtx,
    pub http_checks: reqwest::Client,
    /// The gateway's shutdown.
    pub stop: CancellationToken,
}

/// Sessions ended by a drain: why, their principal, and since when.
type Ended = HashMap<Arc<str>, (Arc<str>, Option<Arc<str>>, Instant)>;

/// A running health checker: its route and what stops it.
type Checker = (Arc<Route>, CancellationToken);

/// The reload state of a gateway (see the module docs).
#[derive(Default)]
pub(crate) struct Reloads {
    /// One reload at a time.
    lock: tokio::sync::Mutex<()>,
    loader: OnceLock<Loader>,
    runtime: OnceLock<Runtime>,
    /// Health checkers by route key.
    checkers: Mutex<HashMap<Arc<str>, Checker>>,
    ok: AtomicU64,
    failed: AtomicU64,
    /// When a configuration was last loaded successfully (Unix ms; the start counts).
    last_success_ms: AtomicU64,
    last: Mutex<Option<Outcome>>,
    /// Sessions ended by a drain: why, and since when.
    ended: Mutex<Ended>,
    /// Whether `ended` may hold anything (every request with a session id asks it).
    any_ended: AtomicBool,
    /// Some configuration since start had authorization rules. Sticky: a session draining on
    /// a route with rules keeps them after a reload that removed every rule.
    rules: AtomicBool,
}

impl Reloads {
    /// Noted at start and at each reload.
    pub fn saw_rules(&self, any: bool) {
        if any {
            self.rules.store(true, Ordering::Release);
        }
        if self.last_success_ms.load(Ordering::Relaxed) == 0 {
            self.last_success_ms.store(now_ms(), Ordering::Relaxed);
        }
    }

    /// Whether the authorization hook must look at frames.
    pub fn any_rules(&self) -> bool {
        self.rules.load(Ordering::Acquire)
    }

    /// The gateway serves: per-route tasks can be started from now on.
    pub fn serving(&self, rt: Runtime) {
        let _ = self.runtime.set(rt);
    }

    /// Why session `id` was ended by a drain, if it was (recently), told only to the
    /// principal it belonged to.
    pub fn ended(&self, id: &str, principal: Option<&str>) -> Option<Arc<str>> {
        if !self.any_ended.load(Ordering::Acquire) {
            return None;
        }
        shadowcat_proxy::sync::lock(&self.ended)
            .get(id)
            .filter(|(_, owner, _)| owner.as_deref() == principal)
            .map(|(r, ..)| r.clone())
    }

    fn remember_ended(&self, id: &Arc<str>, reason: &Arc<str>, principal: Option<&str>) {
        let mut ended = shadowcat_proxy::sync::lock(&self.ended);
        if ended.len() >= MAX_ENDED {
            ended.retain(|_, (.., at)| at.elapsed() < ENDED_FOR);
        }
        if ended.len() < MAX_ENDED {
            let principal = principal.map(Arc::from);
            ended.insert(id.clone(), (reason.clone(), principal, Instant::now()));
            self.any_ended.store(true, Ordering::Release);
        }
    }

    /// Forget the reasons older than [`ENDED_FOR`] (housekeeping).
    pub fn forget_ended(&self) {
        let mut ended = shadowcat_proxy::sync::lock(&self.ended);
        ended.retain(|_, (.., at)| at.elapsed() < ENDED_FOR);
        if ended.is_empty() {
            self.any_ended.store(false, Ordering::Release);
        }
    }

    fn record(&self, outcome: &Outcome) {
        if outcome.ok {
            self.ok.fetch_add(1, Ordering::Relaxed);
            self.last_success_ms.store(outcome.at_ms, Ordering::Relaxed);
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        *shadowcat_proxy::sync::lock(&self.last) = Some(outcome.clone());
    }
}

/// A problem line as logged: a URL it quotes (`` `…` ``) without its user info or secret query
/// values, and the default secret patterns redacted (the admin's answer has the line as is,
/// like `config check`).
fn loggable(line: &str) -> String {
    let r = shadowcat_tape::redact::Redactor::default();
    let parts: Vec<String> = line
        .split('`')
        .map(|part| {
            if part.contains("://") {
                r.url(part)
            } else {
                part.to_string()
            }
        })
        .collect();
    r.text(&parts.join("`")).into_owned()
}

fn now_ms() -> u64 {
    shadowcat_proxy::session::records::now_ms()
}

/// Every member of every route of `live`.
fn members(live: &Live) -> Vec<Arc<Member>> {
    live.routes
        .values()
        .flat_map(|r| r.set.members().iter().cloned())
        .collect()
}

fn has(list: &[Arc<Member>], m: &Arc<Member>) -> bool {
    list.iter().any(|o| Arc::ptr_eq(o, m))
}

impl Gateway {
    /// How [`Gateway::reload`] reads the configuration again (set once, by the binary).
    pub fn set_loader(&self, loader: Loader) {
        let _ = self.reloads.loader.set(loader);
    }

    /// Whether a loader is set (a gateway started from a file or flags).
    pub fn can_reload(&self) -> bool {
        self.reloads.loader.get().is_some()
    }

    /// Read the configuration again and apply it (see the module docs).
    pub async fn reload(self: &Arc<Self>, trigger: Trigger) -> Outcome {
        let _one = self.reloads.lock.lock().await;
        let loaded = match self.reloads.loader.get() {
            Some(load) => load(),
            None => Err(vec![
                "this gateway has no configuration to read again".into(),
            ]),
        };
        match loaded {
            Ok((cfg, source)) => self.apply_locked(&cfg, &source, trigger).await,
            Err(errors) => self.refused(trigger, errors),
        }
    }

    /// Apply `cfg` (read from `source`) as a reload would.
    pub async fn apply(
        self: &Arc<Self>,
        cfg: &GatewayConfig,
        source: &str,
        trigger: Trigger,
    ) -> Outcome {
        let _one = self.reloads.lock.lock().await;
        self.apply_locked(cfg, source, trigger).await
    }

    fn refused(&self, trigger: Trigger, errors: Vec<String>) -> Outcome {
        let outcome = Outcome {
            ok: false,
            generation: self.live().generation,
            trigger,
            at_ms: now_ms(),
            errors,
            changes: None,
            draining: 0,
        };
        tracing::warn!(
            trigger = trigger.name(),
            problems = outcome.errors.len(),
            generation = outcome.generation,
            "configuration reload refused; the running configuration stays in force"
        );
        for problem in &outcome.errors {
            tracing::warn!("configuration reload refused: {}", loggable(problem));
        }
        self.reloads.record(&outcome);
        outcome
    }

    async fn apply_locked(
        self: &Arc<Self>,
        cfg: &GatewayConfig,
        source: &str,
        trigger: Trigger,
    ) -> Outcome {
        let old = self.live.load_full();
        let lines = |e: ConfigError| e.to_string().lines().map(str::to_string).collect();
        let problems = restart_only(&old.config, cfg, self.pins.get().is_some());
        if !problems.is_empty() {
            return self.refused(
                trigger,
                lines(ConfigError {
                    file: source.to_string(),
                    problems,
                }),
            );
        }
        let new = match Live::build(cfg, source, Some(&old), old.generation + 1) {
            Ok(new) => new,
            Err(e) => return self.refused(trigger, lines(e)),
        };
        let changes = Changes::between(&old, &new);
        if !changes.any() {
            let outcome = Outcome {
                ok: true,
                generation: old.generation,
                trigger,
                at_ms: now_ms(),
                errors: Vec::new(),
                changes: Some(changes),
                draining: 0,
            };
            tracing::info!(
                trigger = trigger.name(),
                generation = old.generation,
                "configuration reloaded: nothing changed"
            );
            self.reloads.record(&outcome);
            return outcome;
        }
        if let Some(a) = &new.auth
            && !old.auth.as_ref().is_some_and(|o| Arc::ptr_eq(o, a))
        {
            a.prefetch().await;
        }
        let new = Arc::new(new);
        self.reloads.saw_rules(new.any_rules);
        // Swapped under the sessions' lock: a placement finishing now either is moved here or
        // sees the new configuration in `placed`.
        let drained: Vec<(Arc<str>, Arc<str>)> = {
            let mut bound = self.bound();
            self.live.store(new.clone());
            bound
                .iter_mut()
                .filter_map(|(id, b)| reconcile(&new, b).map(|why| (id.clone(), why)))
                .collect()
        };
        self.retask(Some(&old), &new);
        let draining = drained.len();
        self.drain(drained, new.drain_grace);
        tracing::info!(
            trigger = trigger.name(),
            generation = new.generation,
            routes_added = ?changes.routes_added,
            routes_removed = ?changes.routes_removed,
            routes_changed = ?changes.routes_changed,
            upstreams_added = ?changes.upstreams_added,
            upstreams_removed = ?changes.upstreams_removed,
            auth_changed = changes.auth,
            limits_changed = changes.limits,
            draining,
            "configuration reloaded"
        );
        let outcome = Outcome {
            ok: true,
            generation: new.generation,
            trigger,
            at_ms: now_ms(),
            errors: Vec::new(),
            changes: Some(changes),
            draining,
        };
        self.reloads.record(&outcome);
        outcome
    }

    /// A session placed by a request routed under an older configuration: bind it to the
    /// configuration in force, or drain it when its member is gone. Called with the new
    /// binding made, under the sessions' lock (`bound`).
    pub(crate) fn placed_late(self: &Arc<Self>, id: &Arc<str>, b: &mut Bound) {
        let live = self.live();
        if let Some(why) = reconcile(&live, b) {
            // `drain` only spawns: fine under the lock.
            self.drain(vec![(id.clone(), why)], live.drain_grace);
        }
    }

    /// Start and stop per-route tasks for the change from `old` (none: at start) to `new`:
    /// health checkers of routes that are new or replaced (stopping those of routes gone or
    /// replaced), spare keepers of new members (retiring those of members gone).
    pub(crate) fn retask(&self, old: Option<&Live>, new: &Live) {
        let Some(rt) = self.reloads.runtime.get() else {
            return;
        };
        {
            let mut checkers = shadowcat_proxy::sync::lock(&self.reloads.checkers);
            checkers.retain(|key, (route, stop)| {
                let kept = new.routes.get(key).is_some_and(|r| Arc::ptr_eq(r, route));
                if !kept {
                    stop.cancel();
                }
                kept
            });
            for r in new.routes.values() {
                let checks = r.checks();
                if checks.is_empty() || checkers.contains_key(&r.key) {
                    continue;
                }
                // One checker per set (each with its settings), stopped together.
                let stop = rt.stop.child_token();
                for (set, h) in checks {
                    let mut ctx = rt.check_ctx.clone();
                    ctx.cancel = stop.clone();
                    rt.tracker.spawn(health::watch(
                        r.path().to_string(),
                        set.members().to_vec(),
                        h.clone(),
                        rt.http_checks.clone(),
                        ctx,
                        stop.clone(),
                    ));
                }
                checkers.insert(r.key.clone(), (r.clone(), stop));
            }
        }
        let before = old.map(members).unwrap_or_default();
        let after = members(new);
        for m in after.iter().filter(|m| !has(&before, m)) {
            if let Some(spares) = m.spares() {
                let mut ctx = rt.check_ctx.clone();
                ctx.session = Arc::from("spare");
                rt.tracker.spawn(spares.clone().keep(m.spec().clone(), ctx));
            }
        }
        for m in before.iter().filter(|m| !has(&after, m)) {
            if let Some(spares) = m.spares() {
                spares.retire();
            }
        }
    }

    /// End `sessions` (id, why) after `grace`, unless the gateway stops first.
    fn drain(self: &Arc<Self>, sessions: Vec<(Arc<str>, Arc<str>)>, grace: Duration) {
        if sessions.is_empty() {
            return;
        }
        let Some(rt) = self.reloads.runtime.get() else {
            return;
        };
        tracing::info!(
            sessions = sessions.len(),
            grace_ms = grace.as_millis() as u64,
            "sessions on upstreams a reload removed get no successor and end after the drain grace"
        );
        let (gw, stop) = (self.clone(), rt.stop.clone());
        rt.tracker.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(grace) => {}
                _ = stop.cancelled() => return,
            }
            let ends = sessions.iter().map(|(id, why)| gw.end_drained(id, why));
            futures_util::future::join_all(ends).await;
        });
    }

    /// End one draining session: its requests in flight get `why` as a JSON-RPC error, its
    /// later requests a `404` saying it.
    async fn end_drained(&self, id: &Arc<str>, why: &Arc<str>) {
        let Some(front) = self.front() else {
            return;
        };
        let Some(session) = front.host().get(id).and_then(|e| e.session()) else {
            // Not live here (ended meanwhile, or forwarded to its owner replica).
            self.bound().remove(id);
            return;
        };
        self.reloads.remember_ended(id, why, session.principal());
        tracing::info!(session = %id, reason = %why, "ending a drained session");
        if session.end_with(why)
            && tokio::time::timeout(END_WITHIN, session.cancel_token().cancelled())
                .await
                .is_ok()
        {
            return;
        }
        if !front.registry().end(id).await {
            session.shutdown().await;
        }
    }

    /// Sessions now draining.
    fn draining(&self) -> usize {
        self.bound().values().filter(|b| b.draining).count()
    }

    /// The reload section of `/metrics`.
    pub(crate) fn render_reload_metrics(&self, o: &mut String) {
        let r = &self.reloads;
        let _ = writeln!(
            o,
            "# HELP shadowcat_config_reloads_total Configuration reloads (SIGHUP, --watch, POST /admin/reload), by result."
        );
        let _ = writeln!(o, "# TYPE shadowcat_config_reloads_total counter");
        for (result, n) in [("ok", &r.ok), ("error", &r.failed)] {
            let _ = writeln!(
                o,
                "shadowcat_config_reloads_total{{result=\"{result}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            o,
            "# HELP shadowcat_config_last_reload_success_timestamp_seconds When the configuration was last loaded successfully (the start counts)."
        );
        let _ = writeln!(
            o,
            "# TYPE shadowcat_config_last_reload_success_timestamp_seconds gauge"
        );
        let _ = writeln!(
            o,
            "shadowcat_config_last_reload_success_timestamp_seconds {}",
            r.last_success_ms.load(Ordering::Relaxed) as f64 / 1000.0
        );
        let _ = writeln!(
            o,
            "# HELP shadowcat_config_generation The configuration in force: 1 at start, one more per reload that changed something."
        );
        let _ = writeln!(o, "# TYPE shadowcat_config_generation gauge");
        let _ = writeln!(o, "shadowcat_config_generation {}", self.live().generation);
        let _ = writeln!(
            o,
            "# HELP shadowcat_config_draining_sessions Sessions on upstreams a reload removed, ending after the drain grace."
        );
        let _ = writeln!(o, "# TYPE shadowcat_config_draining_sessions gauge");
        let _ = writeln!(o, "shadowcat_config_draining_sessions {}", self.draining());
    }

    /// The configuration's state for the admin page: generation, last reload, counts.
    pub(crate) fn reload_status(&self) -> Value {
        let r = &self.reloads;
        let last = shadowcat_proxy::sync::lock(&r.last)
            .as_ref()
            .map(Outcome::json);
        json!({
            "generation": self.live().generation,
            "reloadable": self.can_reload(),
            "last_reload": last,
            "reloads": {
                "ok": r.ok.load(Ordering::Relaxed),
                "error": r.failed.load(Ordering::Relaxed),
            },
            "last_success_ms": r.last_success_ms.load(Ordering::Relaxed),
            "draining_sessions": self.draining(),
        })
    }
}

/// Move session binding `b` onto the configuration `live`: the same member in the new route
/// (rules, pinning policy, balancing counts as configured now), nothing when its route is
/// unchanged, or — its member or route gone — mark it draining and say why (`Some`).
fn reconcile(live: &Live, b: &mut Bound) -> Option<Arc<str>> {
    if b.draining {
        return None;
    }
    let Some(route) = live.routes.get(&b.route.key) else {
        b.draining = true;
        return Some(Arc::from(format!(
            "the session ended: its route {} was removed by a configuration reload; \
             this endpoint is no longer served",
            b.route.path
        )));
    };
    if Arc::ptr_eq(route, &b.route) {
        return None;
    }
    let Some(m) = b.member else {
        b.route = route.clone();
        return None;
    };
    let member = b.route.set.members().get(m)?.clone();
    match route
        .set
        .members()
        .iter()
        .position(|n| Arc::ptr_eq(n, &member))
    {
        Some(j) => {
            b.route = route.clone();
            b.member = Some(j);
            None
        }
        None => {
            b.draining = true;
            Some(Arc::from(format!(
                "the session ended: its upstream {} of route {} was removed or changed by a \
                 configuration reload; start a new session",
                admin::shown(member.name()),
                b.route.path
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_problems_carry_no_url_credentials() {
        let line = "g.toml: routes[0].upstreams[0].url: `ftp://bot:hunter2@mcp.example.com/mcp?token=abc` must be an http:// or https:// URL";
        let logged = loggable(line);
        assert!(
            !logged.contains("hunter2") && !logged.contains("abc"),
            "{logged}"
        );
        assert!(logged.contains("mcp.example.com/mcp"), "{logged}");
        assert_eq!(
            loggable("g.toml: server.max_sessions: must be at least 1"),
            "g.toml: server.max_sessions: must be at least 1"
        );
    }

    /// Turning pinning on (on a route or on one server of a composite route) needs a restart
    /// when no route had it at start; with the hook running, it reloads.
    #[test]
    fn pinning_turned_on_for_a_server_needs_the_hook() {
        let cfg = |server_pinning: &str| {
            let text = format!(
                "[[routes]]\npath = \"/mcp\"\n\
                 [[routes.servers]]\nname = \"a\"\ncommand = \"x\"\n{server_pinning}\n\
                 [[routes.servers]]\nname = \"b\"\ncommand = \"y\"\n"
            );
            GatewayConfig::parse("g.toml", &text).unwrap()
        };
        let old = cfg("");
        let fields = |new: &GatewayConfig, hook: bool| -> Vec<String> {
            restart_only(&old, new, hook)
                .into_iter()
                .map(|p| p.field)
                .collect()
        };
        let on = cfg("pinning = \"warn\"");
        assert_eq!(fields(&on, false), ["routes[0].servers[0].pinning"]);
        assert!(fields(&on, true).is_empty());
        assert!(fields(&cfg("pinning = \"off\""), false).is_empty());
    }
}
