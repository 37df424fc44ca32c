//! Active health checks of a route's HTTP upstreams: every `interval`, a TCP connect (or a
//! `GET http_path` on the upstream's origin, 2xx = healthy) within `timeout`. An upstream turns
//! unhealthy after `unhealthy_threshold` consecutive failures and healthy again after
//! `healthy_threshold` consecutive successes; unhealthy upstreams get no new sessions (sessions
//! already there stay: affinity). Stdio upstreams are not checked (each session spawns its own
//! child; a spawn failure ejects the upstream).

use super::Route;
use super::config::HealthConfig;
use super::target::probe;
use crate::upstream::UpstreamSpec;
use crate::upstream::credentials::{self, SendError};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Check the route's upstreams until `cancel` fires.
pub(super) async fn watch(
    route: Arc<Route>,
    cfg: HealthConfig,
    http: reqwest::Client,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(cfg.interval.0);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = cancel.cancelled() => return,
        }
        let checks = route
            .set
            .members()
            .iter()
            .enumerate()
            .filter(|(_, m)| matches!(m.spec(), UpstreamSpec::Http { .. }))
            .map(|(i, m)| {
                let (cfg, http) = (&cfg, &http);
                async move { (i, check(m.spec(), cfg, http).await) }
            });
        let results = tokio::select! {
            r = futures_util::future::join_all(checks) => r,
            _ = cancel.cancelled() => return,
        };
        for (i, result) in results {
            let m = &route.set.members()[i];
            let change = m.checked(
                result.is_ok(),
                cfg.healthy_threshold,
                cfg.unhealthy_threshold,
            );
            match (change, result) {
                (Some(true), _) => {
                    tracing::info!(route = %route.path, upstream = m.name(), "upstream is healthy again")
                }
                (Some(false), Err(e)) => tracing::warn!(
                    route = %route.path,
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
    let mut u = reqwest::Url::parse(url).map_err(|e| format!("invalid URL `{url}`: {e}"))?;
    u.set_path(path);
    u.set_query(None);
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
            SendError::Credentials(e) => format!("health check GET {u}: no access token: {e}"),
            SendError::Http(e) => format!("health check GET {u} failed: {e}"),
        })?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!(
            "health check GET {u} answered HTTP {}",
            resp.status()
        ))
    }
}
