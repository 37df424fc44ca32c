//! Active health checks of an upstream set (a route's, or a composite route's server's, each
//! with its own settings), every `interval` within `timeout`:
//!
//! * `tcp` (the default without `http_path`): a TCP connect to an HTTP upstream;
//! * `http` (the default with `http_path`): `GET http_path` on its origin, 2xx = healthy;
//! * `ping`: MCP `ping` over a session kept open with the upstream ([`ping`]) — every kind of
//!   upstream, stdio included (a child of the checker's own).
//!
//! An upstream turns unhealthy after `unhealthy_threshold` consecutive failures and healthy
//! again after `healthy_threshold` consecutive successes; unhealthy upstreams get no new
//! sessions (sessions already there stay: affinity). Without `ping`, stdio upstreams are not
//! checked (each session spawns its own child; a spawn failure ejects the upstream).

mod ping;

use super::balance::Member;
use super::config::{HealthCheck, HealthConfig};
use ping::Pinger;
use shadowcat_proxy::session::place::probe;
use shadowcat_proxy::upstream::credentials::{self, SendError};
use shadowcat_proxy::upstream::{UpstreamCtx, UpstreamSpec};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// How one member is checked.
enum Checker {
    /// TCP connect or HTTP GET: no state.
    Probe,
    /// MCP ping over a kept session.
    Ping(Box<Pinger>),
    /// Not checked (stays healthy).
    None,
}

/// Check `members` (the upstreams of one set of route `route`) until `cancel` fires. `ctx`
/// is the template of the contexts of the `ping` checker's sessions. A composite route's
/// candidate is not checked: its session restarts a failed server, whose set is checked.
pub(super) async fn watch(
    route: String,
    members: Vec<Arc<Member>>,
    cfg: HealthConfig,
    http: reqwest::Client,
    ctx: UpstreamCtx,
    cancel: CancellationToken,
) {
    let kind = cfg.kind();
    let mut checkers: Vec<Checker> = members
        .iter()
        .map(|m| match (kind, m.spec()) {
            (_, UpstreamSpec::Tape(_) | UpstreamSpec::Composite(_)) => Checker::None,
            (HealthCheck::Ping, spec) => {
                let mut ctx = ctx.clone();
                ctx.session = Arc::from(format!("health-check {}", m.name()));
                Checker::Ping(Box::new(Pinger::new(spec.clone(), ctx)))
            }
            (_, UpstreamSpec::Http { .. }) => Checker::Probe,
            _ => Checker::None,
        })
        .collect();
    let mut tick = tokio::time::interval(cfg.interval.0);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = cancel.cancelled() => return,
        }
        let checks =
            members
                .iter()
                .zip(checkers.iter_mut())
                .enumerate()
                .map(|(i, (m, checker))| {
                    let (cfg, http) = (&cfg, &http);
                    async move {
                        let r = match checker {
                            Checker::Probe => Some(check(m.spec(), cfg, http).await),
                            Checker::Ping(p) => Some(p.check(cfg.timeout.0).await),
                            Checker::None => None,
                        };
                        (i, r)
                    }
                });
        let results = tokio::select! {
            r = futures_util::future::join_all(checks) => r,
            _ = cancel.cancelled() => return,
        };
        for (i, result) in results {
            let Some(result) = result else { continue };
            let m = &members[i];
            let change = m.checked(
                result.is_ok(),
                cfg.healthy_threshold,
                cfg.unhealthy_threshold,
            );
            match (change, result) {
                (Some(true), _) => {
                    tracing::info!(route = %route, upstream = m.name(), "upstream is healthy again")
                }
                (Some(false), Err(e)) => tracing::warn!(
                    route = %route,
                    upstream = m.name(),
                    error = %e,
                    "upstream is unhealthy; it gets no new sessions"
                ),
                _ => {}
            }
        }
    }
}

async fn check(
    spec: &UpstreamSpec,
    cfg: &HealthConfig,
    http: &reqwest::Client,
) -> Result<(), String> {
    let UpstreamSpec::Http {
        url,
        headers,
        credentials,
    } = spec
    else {
        return Ok(());
    };
    let Some(path) = &cfg.http_path else {
        return probe(spec, cfg.timeout.0).await.map_err(|e| e.to_string());
    };
    let label = shadowcat_tape::redact::url_label(url);
    let mut u = reqwest::Url::parse(url).map_err(|e| format!("invalid URL `{label}`: {e}"))?;
    u.set_path(path);
    u.set_query(None);
    let u_label = shadowcat_tape::redact::url_label(u.as_str());
    let build = || {
        let mut req = http.get(u.clone()).timeout(cfg.timeout.0);
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        req
    };
    let resp = credentials::send(credentials.as_ref(), build)
        .await
        .map_err(|e| match e {
            SendError::Credentials(e) => {
                format!("health check GET {u_label}: no access token: {e}")
            }
            SendError::Http(e) => format!("health check GET {u_label} failed: {}", e.without_url()),
        })?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!(
            "health check GET {u_label} answered HTTP {}",
            resp.status()
        ))
    }
}
