//! Session records in the store: created with the session, updated when the version is
//! negotiated, touched (coalesced, one write per interval) on activity, and marked ended when
//! the session ends (its event log is dropped then).

use crate::error::ProxyError;
use shadowcat_proto::Frame;
use shadowcat_store::{
    ActivityCoalescer, SessionFilter, SessionRecord, SessionStatus, SessionStore, StoreError,
};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What a client's `initialize` says about it.
#[derive(serde::Deserialize, Default)]
struct ClientParams {
    #[serde(rename = "clientInfo")]
    client_info: Option<serde_json::Value>,
    capabilities: Option<serde_json::Value>,
}

impl ClientParams {
    /// The params of `init`, if it has any.
    fn of(init: &Frame) -> Option<ClientParams> {
        #[derive(serde::Deserialize)]
        struct Init {
            #[serde(default)]
            params: Option<ClientParams>,
        }
        serde_json::from_slice::<Init>(init.raw())
            .ok()
            .and_then(|i| i.params)
    }
}

/// Writes session records for one front.
pub struct Records {
    store: Arc<dyn SessionStore>,
    owner: Arc<str>,
    activity: ActivityCoalescer,
}

impl Records {
    /// Records owned by replica `owner`; activity is flushed every `interval`, for up to
    /// `sessions` sessions touched within one interval.
    pub fn new(
        store: Arc<dyn SessionStore>,
        owner: Arc<str>,
        interval: Duration,
        sessions: usize,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> Self {
        let activity = ActivityCoalescer::spawn(store.clone(), interval, sessions, tracker, cancel);
        Records {
            store,
            owner,
            activity,
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    /// This replica's id.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// A session of `route` on `upstream` is being created by this `initialize`, bound to the
    /// authenticated `principal` if any (gateway). Fails closed whenever the record cannot be
    /// written — the store is unreachable, or refuses the write (a full Redis answers `OOM`, a
    /// full disk fails SQLite): a session no record names could not be continued or listed
    /// anywhere, so it is not started (the caller has spawned nothing yet).
    pub async fn created(
        &self,
        id: &str,
        route: &str,
        upstream: &str,
        init: Option<&Frame>,
        principal: Option<&str>,
    ) -> Result<(), ProxyError> {
        let params = init.and_then(ClientParams::of).unwrap_or_default();
        let now = now_ms();
        let rec = SessionRecord {
            id: id.to_string(),
            route: route.to_string(),
            upstream: upstream.to_string(),
            upstream_session_id: None,
            protocol_version: None,
            client_info: params.client_info,
            client_capabilities: params.capabilities,
            principal: principal.map(str::to_string),
            owner: Some(self.owner.to_string()),
            status: SessionStatus::Active,
            created_ms: now,
            last_active_ms: now,
            composite: None,
        };
        match self.store.create(&rec).await {
            Ok(()) => Ok(()),
            Err(StoreError::Unavailable(why)) => Err(ProxyError::StoreUnavailable(why)),
            Err(e) => Err(ProxyError::StoreUnavailable(e.to_string())),
        }
    }

    /// Change a session's record (logged, never failing: the record is informational here).
    async fn modify(&self, id: &str, change: impl FnOnce(&mut SessionRecord)) {
        match self.store.get(id).await {
            Ok(Some(mut rec)) => {
                change(&mut rec);
                if let Err(e) = self.store.update(&rec).await {
                    tracing::warn!(error = %e, "could not update the session record");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "could not read the session record"),
        }
    }

    /// The client's `initialize` arrived after the record was made (the legacy HTTP+SSE front
    /// records the session when its stream opens): its `clientInfo` and `capabilities` go in.
    pub async fn client(&self, id: &str, init: &Frame) {
        let Some(params) = ClientParams::of(init) else {
            return;
        };
        self.modify(id, |rec| {
            rec.client_info = params.client_info;
            rec.client_capabilities = params.capabilities;
        })
        .await;
    }

    /// The session was placed on another upstream than first recorded (gateway failover).
    pub async fn moved(&self, id: &str, upstream: &str) {
        self.modify(id, |rec| rec.upstream = upstream.to_string())
            .await;
    }

    /// The server agreed on a protocol version (and an HTTP upstream issued its session id).
    pub async fn negotiated(&self, id: &str, version: &str, upstream_session_id: Option<String>) {
        self.modify(id, |rec| {
            rec.protocol_version = Some(version.to_string());
            rec.upstream_session_id = upstream_session_id;
            rec.last_active_ms = now_ms();
        })
        .await;
    }

    /// A composite session's state changed (its handshake was answered, a member (re)joined,
    /// or this replica continued it): it goes in the record. The owner is left as it is: it
    /// changes by a claim ([`SessionStore::claim_owner`]), so a replica that lost a session
    /// to another (which found it unreachable) does not name itself the owner again by writing
    /// its state (only a write racing the claim can undo it: the whole record is rewritten as
    /// read).
    pub async fn composite(&self, id: &str, state: serde_json::Value) {
        self.modify(id, |rec| rec.composite = Some(state)).await;
    }

    /// Activity (coalesced; never waits).
    pub fn touch(&self, id: &str) {
        self.activity.touch(id, now_ms());
    }

    /// The session ended: drop its event log and mapping, keep its record as `ended` (in a
    /// shared or persistent store; an in-memory record goes with the session).
    pub async fn ended(&self, id: &str) {
        if self.store.backend() == "memory" {
            // Nothing outside this process reads an in-memory store, and an ended record
            // answers like none at all: kept, it would only hold memory until it expires
            // (`record_ttl`, an hour of session churn). The record and its log go now.
            if let Err(e) = self.store.delete(id).await {
                tracing::warn!(error = %e, "could not delete the session record");
            }
            return;
        }
        let rec = match self.store.get(id).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the session record");
                None
            }
        };
        if let Err(e) = self.store.delete(id).await {
            tracing::warn!(error = %e, "could not delete the session's event log");
        }
        if let Some(mut rec) = rec {
            rec.status = SessionStatus::Ended;
            rec.last_active_ms = now_ms();
            if let Err(e) = self.store.create(&rec).await {
                tracing::warn!(error = %e, "could not mark the session ended");
            }
        }
    }

    /// Delete the records of sessions that ended (or went quiet) more than `ttl` ago.
    pub async fn expire(&self, ttl: Duration) {
        match self.store.expire(now_ms(), ttl).await {
            Ok(gone) if !gone.is_empty() => {
                tracing::info!(expired = gone.len(), "expired old session records")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not expire old session records"),
        }
    }

    /// At start: sessions a previous run of this replica left active have lost their upstream
    /// (their children died with it). Mark them ended. Returns how many.
    pub async fn end_orphans(&self) -> usize {
        let filter = SessionFilter {
            status: Some(SessionStatus::Active),
            owner: Some(self.owner.to_string()),
            ..SessionFilter::default()
        };
        let mut ended = 0;
        loop {
            let page = match self.store.list(&filter, None, 500).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "could not list this replica's previous sessions");
                    return ended;
                }
            };
            if page.sessions.is_empty() {
                return ended;
            }
            for mut rec in page.sessions {
                rec.status = SessionStatus::Ended;
                match self.store.update(&rec).await {
                    Ok(_) => ended += 1,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not mark a previous session ended");
                        return ended;
                    }
                }
            }
        }
    }
}
