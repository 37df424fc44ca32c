//! The held sessions of one HTTP front. One held session per route, principal (gateway) and
//! client identity (the declared capabilities and `clientInfo`, which a session-based server
//! learns once, in `initialize`): clients that look the same to the server share it, clients
//! that do not never do. Created on the first request that needs it (concurrent first requests
//! wait for the same one), re-created on the next request after it ended (idle, upstream gone).
//! Held sessions count against the front's session limit.

use crate::error::ProxyError;
use crate::front::http::{HttpFront, Target};
use crate::session::Kind;
use crate::session::place::{Created, Initialized};
use crate::translate::envelope::Envelope;
use crate::translate::handshake;
use crate::translate::held::Held;
use bytes::Bytes;
use serde_json::json;
use sha2::{Digest, Sha256};
use shadowcat_proto::Frame;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::OnceCell;

/// How long a server may take to answer the held session's `initialize`.
const INIT_TIMEOUT: Duration = Duration::from_secs(30);

type Slot = Arc<OnceCell<Arc<Held>>>;

/// Held sessions by key.
#[derive(Default)]
pub struct Pool {
    slots: Mutex<HashMap<Arc<str>, Slot>>,
}

impl Pool {
    fn slots(&self) -> MutexGuard<'_, HashMap<Arc<str>, Slot>> {
        crate::sync::lock(&self.slots)
    }

    /// The held session for a request of `target` whose envelope is `env`, created if needed.
    pub(crate) async fn get(
        self: &Arc<Self>,
        front: &HttpFront,
        target: &Target,
        env: &Envelope,
    ) -> Result<Arc<Held>, ProxyError> {
        let key = key(target, env);
        for _ in 0..3 {
            let slot = self.slots().entry(key.clone()).or_default().clone();
            let got = slot
                .get_or_try_init(|| create(self.clone(), front, target, env, key.clone()))
                .await;
            match got {
                Ok(h) if h.alive() => return Ok(h.clone()),
                Ok(h) => self.remove(h), // ended just now: make a new one
                Err(e) => {
                    self.remove_slot(&key, &slot);
                    return Err(e);
                }
            }
        }
        Err(ProxyError::UpstreamClosed(
            "the server session held for 2026-07-28 clients keeps ending".into(),
        ))
    }

    /// Forget `held` (it ended).
    pub fn remove(&self, held: &Arc<Held>) {
        let mut slots = self.slots();
        let mine = slots
            .get(held.key())
            .and_then(|s| s.get())
            .is_some_and(|h| Arc::ptr_eq(h, held));
        if mine {
            slots.remove(held.key());
        }
    }

    fn remove_slot(&self, key: &str, slot: &Slot) {
        let mut slots = self.slots();
        if slots.get(key).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            slots.remove(key);
        }
    }
}

/// The pool key: route, principal and a digest of what the server is told about the client.
fn key(target: &Target, env: &Envelope) -> Arc<str> {
    let identity = json!([
        handshake::held_capabilities(env),
        handshake::held_client_info(env)
    ]);
    let digest = Sha256::digest(identity.to_string().as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    let principal = target.placer.principal().unwrap_or("");
    Arc::from(format!("{}\u{0}{principal}\u{0}{hex}", target.key))
}

async fn create(
    pool: Arc<Pool>,
    front: &HttpFront,
    target: &Target,
    env: &Envelope,
    key: Arc<str>,
) -> Result<Arc<Held>, ProxyError> {
    let params = handshake::initialize_params(env);
    let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":params});
    let init = Frame::parse_single(Bytes::from(init.to_string())).map_err(ProxyError::Frame)?;
    // Held sessions count against the front's limits like any other session; with the
    // gateway, the route's upstream set places it and binds it to the principal, so the
    // route's authorization rules apply to every translated request. An upstream that fails
    // the `initialize` is failed over like a Streamable HTTP client's (`place::initialize`).
    let route = format!("modern:{}", target.key);
    let idle = front.config().idle_timeout;
    let exchange = |created: Created| {
        let (pool, key, params) = (pool.clone(), key.clone(), params.clone());
        async move {
            let answer = hold(pool, created, key, params, idle).await;
            match answer {
                Err(e) if e.upstream_failed() => Initialized::UpstreamFailed(Err(e)),
                answer => Initialized::Answered(answer),
            }
        }
    };
    front
        .initialize(target, Kind::Held, &route, &init, exchange)
        .await?
}

/// Hold `created` for 2026-07-28 clients: start its pump and run its `initialize` (`params`);
/// on failure the session is ended.
async fn hold(
    pool: Arc<Pool>,
    created: Created,
    key: Arc<str>,
    params: serde_json::Value,
    idle: Duration,
) -> Result<Arc<Held>, ProxyError> {
    let (core, events) = (created.session, created.events);
    let id = core.id().clone();
    let held = Held::new(core, key);
    let upstream = held.core().spec().describe();
    tracing::info!(session = %id, %upstream, "holding a session-based session for 2026-07-28 clients");
    let (h, p) = (held.clone(), pool);
    let span = tracing::info_span!("held_session", id = %id);
    held.core().tracker().spawn(tracing::Instrument::instrument(
        async move {
            let reason = h.clone().pump(events, idle).await;
            p.remove(&h);
            h.finish(&reason).await;
            tracing::info!(%reason, "held session ended");
        },
        span,
    ));
    if let Err(e) = held.initialize(params, INIT_TIMEOUT).await {
        tracing::warn!(error = %e, %upstream, "could not open a held session");
        held.core().shutdown().await;
        return Err(e);
    }
    held.core().record_negotiated().await;
    Ok(held)
}
