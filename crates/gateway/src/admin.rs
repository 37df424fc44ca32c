//! The gateway's state as JSON.
//!
//! * `GET /api/sessions` → `{"sessions":[…]}`: the live sessions of this replica, of every
//!   kind (`streamable-http`, `legacy-sse`, `held` for 2026-07-28 clients, `adopted` from
//!   another replica), with route, principal, client, upstream, protocol version, requests in
//!   flight, times.
//! * `GET /api/sessions/{id}` → one of them, with its client capabilities and upstream
//!   session id; `404` when it is not live here.
//! * `DELETE /api/sessions/{id}` → end it: its upstream is shut down (a stdio child is
//!   killed), its record marked ended; the client's next request gets `404`.
//! * `GET /api/upstreams` → `{"routes":[{path, strategy, upstreams:[{name, weight, available,
//!   healthy, sessions, inflight, sessions_total, connect_failures, breaker
//!   (`closed`/`half-open`/`open`, null without one), retries, timeouts}]}]}`.
//! * `GET /api/config` → the configuration in force, secrets redacted.
//! * `GET /api/metrics` → request totals (by status class), refusals, live sessions, store,
//!   and `config`: the configuration's generation and its last reload (see [`crate::reload`]).
//! * `POST /admin/reload` → read the configuration file again and apply it: `200`
//!   `{"ok":true, generation, changed, changes:{…}, draining}`, or `422` `{"ok":false,
//!   generation, errors:[…]}` with the lines `config check` prints (the running configuration
//!   stays in force).
//! * `GET /api/series` → the last 15 minutes in 10-second buckets (see [`crate::series`]):
//!   `{bucket_ms, start_ms, now_ms, requests:[90], errors:[90], latency_p50_ms:[90],
//!   latency_p99_ms:[90], tools:[{name (null: other tools), calls, errors, p50_ms, p99_ms}],
//!   upstreams:[{route, name, states:[90], connect_failures:[90], sessions:[90]}]}`, oldest
//!   bucket first, the last one still filling (`null`: nothing to show for that bucket).
//!
//! Mounted on the admin listener with `AdminServer::extension("gateway", admin::routes(…))`:
//! behind its token and host checks. Without a gateway (forward modes) these answer `404`.

use crate::Gateway;
use axum::extract::Path;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};
use shadowcat_proxy::admin::{Answer, Refused, json};
use shadowcat_proxy::front::http::HttpFront;
use shadowcat_store::SessionRecord;
use shadowcat_tape::redact::Redactor;
use std::sync::Arc;
use std::time::Instant;

/// What the gateway's admin routes serve from.
struct Admin {
    gateway: Arc<Gateway>,
    started: Instant,
}

type Shared = State<Arc<Admin>>;

/// The admin API of gateway `gw` (its configuration is shown with every secret redacted).
pub fn routes(gw: Arc<Gateway>) -> axum::Router {
    let admin = Arc::new(Admin {
        gateway: gw,
        started: Instant::now(),
    });
    axum::Router::new()
        .route("/api/sessions", get(list))
        .route("/api/sessions/{id}", get(show).delete(kill))
        .route("/api/upstreams", get(upstreams))
        .route("/api/config", get(config))
        .route("/api/metrics", get(metrics))
        .route("/api/series", get(series))
        .route("/api/pins", get(pins_list))
        .route("/api/pins/{id}/approve", axum::routing::post(pins_approve))
        .route("/api/pins/{id}/reject", axum::routing::post(pins_reject))
        .route("/admin/reload", axum::routing::post(reload))
        // The Prometheus page too, behind the admin listener's token and host checks (for a
        // scraper that reaches the admin address rather than the MCP one).
        .route("/metrics", get(prometheus))
        .with_state(admin)
}

/// The gateway and its running front, or the answer saying why there is none.
fn running(a: &Admin) -> Result<(&Arc<Gateway>, Arc<HttpFront>), Refused> {
    let gw = &a.gateway;
    let front = gw.front().ok_or_else(|| {
        Refused::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the gateway is not serving (starting or shut down)",
        )
    })?;
    Ok((gw, front))
}

/// Upstream names as shown: URL credentials redacted.
pub(crate) fn shown(name: &str) -> String {
    if name.contains("://") {
        Redactor::default().url(name)
    } else {
        name.to_string()
    }
}

/// A live session as JSON (`detail`: with capabilities and the upstream's session id).
fn session_json(
    gw: &Gateway,
    front: &HttpFront,
    id: &str,
    rec: Option<&SessionRecord>,
    detail: bool,
) -> Option<Value> {
    let entry = front.host().get(id)?;
    let core = entry.session()?;
    let b = gw.binding(id);
    let client = rec.and_then(|r| r.client_info.as_ref());
    let upstream = b
        .as_ref()
        .and_then(|b| b.upstream.clone())
        .or_else(|| rec.map(|r| r.upstream.clone()))
        .unwrap_or_else(|| core.spec().describe());
    let route = b
        .map(|b| b.route)
        .unwrap_or_else(|| entry.route.to_string());
    let mut v = json!({
        "id": id,
        "kind": entry.kind.as_str(),
        "route": route,
        "principal": core.principal(),
        "upstream": shown(&upstream),
        "protocol_version": core.protocol_version(),
        "client": client.map(|c| json!({"name": c.get("name"), "version": c.get("version")})),
        "inflight": core.inflight().len(),
        "created_ms": rec.map(|r| r.created_ms),
        "last_active_ms": rec.map(|r| r.last_active_ms),
    });
    if let Some(c) = core.upstream().composite() {
        v["servers"] = c
            .members()
            .into_iter()
            .zip(c.upstreams())
            .map(|((name, state), on)| {
                json!({
                    "name": &*name,
                    "state": state.as_str(),
                    "upstream": on.map(|u| shown(&u)),
                })
            })
            .collect();
    }
    if detail {
        v["client_info"] = client.cloned().unwrap_or(Value::Null);
        v["client_capabilities"] = rec
            .and_then(|r| r.client_capabilities.clone())
            .unwrap_or(Value::Null);
        v["upstream_session_id"] = json!(rec.and_then(|r| r.upstream_session_id.clone()));
        v["replica"] = json!(rec.and_then(|r| r.owner.clone()));
    }
    Some(v)
}

async fn list(State(a): Shared) -> Answer {
    let (gw, front) = running(&a)?;
    let ids: Vec<String> = front
        .host()
        .entries()
        .iter()
        .map(|(id, _)| id.to_string())
        .collect();
    // The store adds what the front does not keep (client info, times); it may be down.
    let records = match front.host().records().store().get_many(&ids).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "admin: cannot read session records");
            vec![None; ids.len()]
        }
    };
    let mut sessions: Vec<Value> = ids
        .iter()
        .zip(records.iter())
        .filter_map(|(id, rec)| session_json(gw, &front, id, rec.as_ref(), false))
        .collect();
    sessions.sort_by_key(|s| std::cmp::Reverse(s["created_ms"].as_u64().unwrap_or(0)));
    Ok(json(StatusCode::OK, json!({ "sessions": sessions })))
}

async fn show(State(a): Shared, Path(id): Path<String>) -> Answer {
    let (gw, front) = running(&a)?;
    let rec = front.host().records().store().get(&id).await.ok().flatten();
    match session_json(gw, &front, &id, rec.as_ref(), true) {
        Some(v) => Ok(json(StatusCode::OK, v)),
        None => Err(not_live(&id)),
    }
}

fn not_live(id: &str) -> Refused {
    Refused::new(
        StatusCode::NOT_FOUND,
        format!("no live session `{id}` on this replica"),
    )
}

async fn kill(State(a): Shared, Path(id): Path<String>) -> Answer {
    let (_, front) = running(&a)?;
    let Some(session) = front.host().get(&id).and_then(|e| e.session()) else {
        return Err(not_live(&id));
    };
    // A Streamable HTTP session's front closes its streams too; the others end with their
    // upstream (their pump sees it and closes the client's stream).
    if !front.registry().end(&id).await {
        session.shutdown().await;
    }
    tracing::info!(session = %id, "session ended through the admin API");
    Ok(json(StatusCode::OK, json!({ "ended": id })))
}

/// The pinning hook, or why there is none.
fn pinning(a: &Admin) -> Result<&Arc<crate::pins::PinHook>, Refused> {
    a.gateway.pins.get().ok_or_else(|| {
        Refused::new(
            StatusCode::NOT_FOUND,
            "no route has tool pinning (`pinning = \"warn\"` or `\"enforce\"` on a route)",
        )
    })
}

fn pin_json(p: &crate::pins::Pin) -> Value {
    let mut v = serde_json::to_value(p).unwrap_or(Value::Null);
    v["state"] = json!(p.state());
    v
}

async fn pins_list(State(a): Shared) -> Answer {
    let hook = pinning(&a)?;
    let pins: Vec<Value> = hook.pins().iter().map(pin_json).collect();
    Ok(json(StatusCode::OK, json!({ "pins": pins })))
}

/// `{"hash": "…"}` (optional): approve only the definition that was reviewed.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Decision {
    #[serde(default)]
    hash: Option<String>,
}

async fn pins_decide(a: &Admin, id: &str, body: &[u8], approve: bool) -> Answer {
    let hook = pinning(a)?;
    let decision: Decision = if body.iter().all(u8::is_ascii_whitespace) {
        Decision::default()
    } else {
        serde_json::from_slice(body).map_err(|e| {
            Refused::new(
                StatusCode::BAD_REQUEST,
                format!("the body must be {{\"hash\": \"…\"}} or empty: {e}"),
            )
        })?
    };
    let store = hook.store().clone();
    let unavailable = |e: String| Refused::new(StatusCode::SERVICE_UNAVAILABLE, &e);
    let all = crate::pins::load(&*store).await.map_err(unavailable)?;
    let Some(mut pin) = all.into_iter().find(|p| p.id == id) else {
        return Err(Refused::new(
            StatusCode::NOT_FOUND,
            format!("no pin `{id}`"),
        ));
    };
    let done = if approve {
        pin.approve(decision.hash.as_deref())
    } else {
        pin.reject()
    };
    done.map_err(|e| Refused::new(StatusCode::CONFLICT, &e))?;
    crate::pins::save(&*store, &pin)
        .await
        .map_err(unavailable)?;
    hook.decided(&pin, if approve { "approve" } else { "reject" });
    tracing::info!(pin = %pin.id, name = %pin.name, route = %pin.route, approved = approve, "tool pin decided through the admin API");
    // Now here; the other replicas within their refresh.
    hook.refresh().await;
    Ok(json(StatusCode::OK, pin_json(&pin)))
}

async fn pins_approve(State(a): Shared, Path(id): Path<String>, body: axum::body::Bytes) -> Answer {
    pins_decide(&a, &id, &body, true).await
}

async fn pins_reject(State(a): Shared, Path(id): Path<String>, body: axum::body::Bytes) -> Answer {
    pins_decide(&a, &id, &body, false).await
}

async fn upstreams(State(a): Shared) -> Answer {
    let (gw, _) = running(&a)?;
    let routes: Vec<Value> = gw
        .routes()
        .into_iter()
        .map(|r| {
            let set = r.set();
            let members = |set: &crate::UpstreamSet| -> Vec<Value> {
                set.members()
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    json!({
                        "name": shown(m.name()),
                        "weight": m.weight(),
                        "available": set.is_available(i),
                        "healthy": m.healthy(),
                        "sessions": m.sessions(),
                        "inflight": m.inflight(),
                        "sessions_total": m.sessions_total(),
                        "connect_failures": m.connect_failures(),
                        "breaker": m.guard().breaker().map(|b| b.state().name()),
                        "retries": m.guard().stats().retries.load(std::sync::atomic::Ordering::Relaxed),
                        "timeouts": m.guard().stats().timeouts.load(std::sync::atomic::Ordering::Relaxed),
                        "spares": m.spares().map(|s| json!({"want": s.want(), "ready": s.ready(), "taken": s.taken()})),
                    })
                })
                .collect()
            };
            let mut v = json!({
                "path": r.path(),
                "strategy": set.strategy().name(),
                "upstreams": members(set),
            });
            // A composite route's servers with upstream sets of their own.
            let servers: Vec<Value> = r
                .sets()
                .filter(|(name, _)| !name.is_empty())
                .map(|(name, set)| {
                    json!({
                        "name": name,
                        "strategy": set.strategy().name(),
                        "upstreams": members(set),
                    })
                })
                .collect();
            if !servers.is_empty() {
                v["servers"] = json!(servers);
            }
            v
        })
        .collect();
    Ok(json(StatusCode::OK, json!({ "routes": routes })))
}

async fn config(State(a): Shared) -> Answer {
    Ok(json(StatusCode::OK, (*a.gateway.live().redacted).clone()))
}

/// `POST /admin/reload`: read the file again and apply it (see [`crate::reload`]).
async fn reload(State(a): Shared) -> Answer {
    if !a.gateway.can_reload() {
        return Err(Refused::new(
            StatusCode::NOT_FOUND,
            "this gateway cannot reload its configuration",
        ));
    }
    let outcome = a.gateway.reload(crate::Trigger::Admin).await;
    let status = if outcome.ok {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    Ok(json(status, outcome.json()))
}

async fn prometheus(State(a): Shared) -> axum::response::Response {
    match running(&a) {
        Ok((gw, front)) => gw.metrics_page(&front),
        Err(refused) => axum::response::IntoResponse::into_response(refused),
    }
}

async fn series(State(a): Shared) -> Answer {
    let (gw, _) = running(&a)?;
    // The current bucket shows the upstreams as they are now.
    gw.sample_series();
    Ok(json(StatusCode::OK, gw.series().snapshot()))
}

async fn metrics(State(a): Shared) -> Answer {
    let (gw, front) = running(&a)?;
    let t = gw.metrics().totals();
    let store = front.host().records().store();
    let h = store.health();
    Ok(json(
        StatusCode::OK,
        json!({
            "uptime_s": a.started.elapsed().as_secs_f64(),
            "requests_total": t.requests,
            "responses": {
                "1xx": t.by_class[0], "2xx": t.by_class[1], "3xx": t.by_class[2],
                "4xx": t.by_class[3], "5xx": t.by_class[4],
            },
            "rate_limited_total": t.rate_limited,
            "auth_failures_total": t.auth_failures,
            "authz_denied_total": t.authz_denied,
            "active_sessions": front.host().len(),
            "max_sessions": front.host().limits().max_sessions,
            "max_sessions_per_principal": front.host().limits().max_per_principal,
            "inflight": front.host().inflight(),
            "store": {"backend": store.backend(), "healthy": h.healthy, "degraded": h.degraded, "outages": h.outages},
            "config": gw.reload_status(),
        }),
    ))
}
