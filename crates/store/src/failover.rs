//! Behaviour while a shared backend (Redis) is unreachable: fail closed, or continue on local
//! memory. Either way the outage is logged and counted, and a probe notices when the backend
//! is back, without a restart.

use crate::{
    LoggedEvent, MemoryStore, Retention, SessionFilter, SessionPage, SessionRecord, SessionStore,
    StoreError, StoreHealth, StoreResult,
};
use async_trait::async_trait;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What to do while the backend is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnOutage {
    /// Every operation fails with `Unavailable` (the proxy answers 503 + Retry-After).
    FailClosed,
    /// Operations go to a local in-memory store until the backend is back (sessions created
    /// meanwhile live on this replica only; events logged meanwhile are not copied back).
    Memory,
}

/// A store wrapper that tracks the backend's health and applies [`OnOutage`].
pub struct FailoverStore {
    primary: Arc<dyn SessionStore>,
    fallback: MemoryStore,
    mode: OnOutage,
    healthy: AtomicBool,
    outages: AtomicU64,
}

impl FailoverStore {
    /// Wrap `primary`.
    pub fn new(primary: Arc<dyn SessionStore>, mode: OnOutage) -> Arc<Self> {
        Arc::new(FailoverStore {
            primary,
            fallback: MemoryStore::new(),
            mode,
            healthy: AtomicBool::new(true),
            outages: AtomicU64::new(0),
        })
    }

    /// Ping the backend every `interval` while it is down; mark it healthy when it answers.
    pub fn spawn_probe(
        self: &Arc<Self>,
        interval: Duration,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) {
        let me = self.clone();
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = cancel.cancelled() => return,
                }
                if !me.healthy.load(Ordering::Acquire) && me.primary.ping().await.is_ok() {
                    me.healthy.store(true, Ordering::Release);
                    tracing::warn!(
                        backend = me.primary.backend(),
                        "session store reachable again"
                    );
                }
            }
        });
    }

    fn down(&self, why: &str) {
        if self.healthy.swap(false, Ordering::AcqRel) {
            self.outages.fetch_add(1, Ordering::Relaxed);
            let mode = match self.mode {
                OnOutage::FailClosed => "failing closed (503) until it is back",
                OnOutage::Memory => "continuing on local memory until it is back",
            };
            tracing::error!(
                backend = self.primary.backend(),
                error = why,
                "session store unreachable; {mode}"
            );
        }
    }
}

/// Run `$call` on the backend while healthy; on `Unavailable` (or while down) apply the mode.
macro_rules! route {
    ($self:ident, $store:ident => $call:expr) => {{
        if $self.healthy.load(Ordering::Acquire) {
            let $store: &dyn SessionStore = &*$self.primary;
            match $call.await {
                Err(StoreError::Unavailable(why)) => $self.down(&why),
                other => return other,
            }
        }
        match $self.mode {
            OnOutage::FailClosed => Err(StoreError::Unavailable(format!(
                "{} is down",
                $self.primary.backend()
            ))),
            OnOutage::Memory => {
                let $store: &dyn SessionStore = &$self.fallback;
                $call.await
            }
        }
    }};
}

#[async_trait]
impl SessionStore for FailoverStore {
    fn backend(&self) -> &'static str {
        self.primary.backend()
    }
    async fn create(&self, rec: &SessionRecord) -> StoreResult<()> {
        route!(self, s => s.create(rec))
    }
    async fn get(&self, id: &str) -> StoreResult<Option<SessionRecord>> {
        route!(self, s => s.get(id))
    }
    async fn get_many(&self, ids: &[String]) -> StoreResult<Vec<Option<SessionRecord>>> {
        route!(self, s => s.get_many(ids))
    }
    async fn update(&self, rec: &SessionRecord) -> StoreResult<bool> {
        route!(self, s => s.update(rec))
    }
    async fn update_many(&self, recs: &[SessionRecord]) -> StoreResult<usize> {
        route!(self, s => s.update_many(recs))
    }
    async fn touch_many(&self, touches: &[(String, u64)]) -> StoreResult<usize> {
        route!(self, s => s.touch_many(touches))
    }
    async fn delete(&self, id: &str) -> StoreResult<bool> {
        route!(self, s => s.delete(id))
    }
    async fn claim_owner(
        &self,
        id: &str,
        expected: Option<&str>,
        owner: &str,
    ) -> StoreResult<bool> {
        route!(self, s => s.claim_owner(id, expected, owner))
    }
    async fn list(
        &self,
        filter: &SessionFilter,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<SessionPage> {
        route!(self, s => s.list(filter, after, limit))
    }
    async fn count(&self, filter: &SessionFilter) -> StoreResult<usize> {
        route!(self, s => s.count(filter))
    }
    async fn expire(&self, now_ms: u64, idle_ttl: Duration) -> StoreResult<Vec<String>> {
        route!(self, s => s.expire(now_ms, idle_ttl))
    }
    async fn find_by_upstream_id(&self, upstream_session_id: &str) -> StoreResult<Option<String>> {
        route!(self, s => s.find_by_upstream_id(upstream_session_id))
    }
    async fn append_event(&self, session: &str, stream: &str, data: &[u8]) -> StoreResult<String> {
        route!(self, s => s.append_event(session, stream, data))
    }
    async fn append_events(
        &self,
        session: &str,
        stream: &str,
        data: &[&[u8]],
    ) -> StoreResult<Vec<String>> {
        route!(self, s => s.append_events(session, stream, data))
    }
    async fn events_after(
        &self,
        session: &str,
        stream: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<LoggedEvent>> {
        route!(self, s => s.events_after(session, stream, after, limit))
    }
    async fn trim_events(
        &self,
        session: &str,
        stream: &str,
        retention: Retention,
    ) -> StoreResult<usize> {
        route!(self, s => s.trim_events(session, stream, retention))
    }
    async fn trim_session_bytes(&self, session: &str, max_bytes: u64) -> StoreResult<usize> {
        route!(self, s => s.trim_session_bytes(session, max_bytes))
    }
    async fn ping(&self) -> StoreResult<()> {
        self.primary.ping().await
    }
    async fn doc_put(&self, ns: &str, key: &str, value: &[u8]) -> StoreResult<()> {
        route!(self, s => s.doc_put(ns, key, value))
    }
    async fn doc_get(&self, ns: &str, key: &str) -> StoreResult<Option<Vec<u8>>> {
        route!(self, s => s.doc_get(ns, key))
    }
    async fn doc_list(&self, ns: &str) -> StoreResult<Vec<(String, Vec<u8>)>> {
        route!(self, s => s.doc_list(ns))
    }
    async fn doc_delete(&self, ns: &str, key: &str) -> StoreResult<bool> {
        route!(self, s => s.doc_delete(ns, key))
    }
    fn health(&self) -> StoreHealth {
        let healthy = self.healthy.load(Ordering::Acquire);
        StoreHealth {
            healthy,
            outages: self.outages.load(Ordering::Relaxed),
            degraded: !healthy && self.mode == OnOutage::Memory,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend that is down until told otherwise.
    struct Flaky {
        up: AtomicBool,
        inner: MemoryStore,
    }

    #[async_trait]
    impl SessionStore for Flaky {
        fn backend(&self) -> &'static str {
            "flaky"
        }
        async fn create(&self, rec: &SessionRecord) -> StoreResult<()> {
            self.check()?;
            self.inner.create(rec).await
        }
        async fn get(&self, id: &str) -> StoreResult<Option<SessionRecord>> {
            self.check()?;
            self.inner.get(id).await
        }
        async fn get_many(&self, ids: &[String]) -> StoreResult<Vec<Option<SessionRecord>>> {
            self.inner.get_many(ids).await
        }
        async fn update(&self, rec: &SessionRecord) -> StoreResult<bool> {
            self.inner.update(rec).await
        }
        async fn update_many(&self, recs: &[SessionRecord]) -> StoreResult<usize> {
            self.inner.update_many(recs).await
        }
        async fn touch_many(&self, t: &[(String, u64)]) -> StoreResult<usize> {
            self.inner.touch_many(t).await
        }
        async fn delete(&self, id: &str) -> StoreResult<bool> {
            self.inner.delete(id).await
        }
        async fn claim_owner(&self, id: &str, e: Option<&str>, o: &str) -> StoreResult<bool> {
            self.inner.claim_owner(id, e, o).await
        }
        async fn list(
            &self,
            f: &SessionFilter,
            a: Option<&str>,
            l: usize,
        ) -> StoreResult<SessionPage> {
            self.inner.list(f, a, l).await
        }
        async fn count(&self, f: &SessionFilter) -> StoreResult<usize> {
            self.inner.count(f).await
        }
        async fn expire(&self, n: u64, t: Duration) -> StoreResult<Vec<String>> {
            self.inner.expire(n, t).await
        }
        async fn find_by_upstream_id(&self, u: &str) -> StoreResult<Option<String>> {
            self.inner.find_by_upstream_id(u).await
        }
        async fn append_event(&self, s: &str, st: &str, d: &[u8]) -> StoreResult<String> {
            self.inner.append_event(s, st, d).await
        }
        async fn events_after(
            &self,
            s: &str,
            st: &str,
            a: Option<&str>,
            l: usize,
        ) -> StoreResult<Vec<LoggedEvent>> {
            self.inner.events_after(s, st, a, l).await
        }
        async fn trim_events(&self, s: &str, st: &str, r: Retention) -> StoreResult<usize> {
            self.inner.trim_events(s, st, r).await
        }
        async fn trim_session_bytes(&self, s: &str, max: u64) -> StoreResult<usize> {
            self.inner.trim_session_bytes(s, max).await
        }
        async fn ping(&self) -> StoreResult<()> {
            self.check()
        }
        async fn doc_put(&self, ns: &str, key: &str, value: &[u8]) -> StoreResult<()> {
            self.inner.doc_put(ns, key, value).await
        }
        async fn doc_get(&self, ns: &str, key: &str) -> StoreResult<Option<Vec<u8>>> {
            self.inner.doc_get(ns, key).await
        }
        async fn doc_list(&self, ns: &str) -> StoreResult<Vec<(String, Vec<u8>)>> {
            self.inner.doc_list(ns).await
        }
        async fn doc_delete(&self, ns: &str, key: &str) -> StoreResult<bool> {
            self.inner.doc_delete(ns, key).await
        }
    }

    impl Flaky {
        fn check(&self) -> StoreResult<()> {
            if self.up.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err(StoreError::Unavailable("connection refused".into()))
            }
        }
    }

    fn rec(id: &str) -> SessionRecord {
        SessionRecord {
            id: id.into(),
            route: String::new(),
            upstream: "u".into(),
            upstream_session_id: None,
            protocol_version: None,
            client_info: None,
            client_capabilities: None,
            principal: None,
            owner: None,
            status: crate::SessionStatus::Active,
            created_ms: 0,
            last_active_ms: 0,
            composite: None,
        }
    }

    async fn setup(
        mode: OnOutage,
    ) -> (
        Arc<Flaky>,
        Arc<FailoverStore>,
        TaskTracker,
        CancellationToken,
    ) {
        let flaky = Arc::new(Flaky {
            up: AtomicBool::new(true),
            inner: MemoryStore::new(),
        });
        let store = FailoverStore::new(flaky.clone(), mode);
        let tracker = TaskTracker::new();
        let cancel = CancellationToken::new();
        store.spawn_probe(Duration::from_millis(20), &tracker, cancel.clone());
        (flaky, store, tracker, cancel)
    }

    async fn until_healthy(store: &FailoverStore) {
        for _ in 0..200 {
            if store.health().healthy {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the probe never noticed the backend came back");
    }

    #[tokio::test]
    async fn fail_closed_refuses_while_down_and_recovers() {
        let (flaky, store, _t, cancel) = setup(OnOutage::FailClosed).await;
        store.create(&rec("a")).await.unwrap();
        flaky.up.store(false, Ordering::SeqCst);
        assert!(matches!(
            store.create(&rec("b")).await,
            Err(StoreError::Unavailable(_))
        ));
        assert_eq!(
            store.health(),
            StoreHealth {
                healthy: false,
                outages: 1,
                degraded: false
            }
        );
        // while down, calls fail fast without touching the backend
        assert!(matches!(
            store.get("a").await,
            Err(StoreError::Unavailable(_))
        ));
        flaky.up.store(true, Ordering::SeqCst);
        until_healthy(&store).await;
        assert!(store.get("a").await.unwrap().is_some());
        store.create(&rec("b")).await.unwrap();
        cancel.cancel();
    }

    #[tokio::test]
    async fn memory_mode_continues_locally_then_returns_to_the_backend() {
        let (flaky, store, _t, cancel) = setup(OnOutage::Memory).await;
        flaky.up.store(false, Ordering::SeqCst);
        store.create(&rec("local")).await.unwrap();
        assert!(
            store.get("local").await.unwrap().is_some(),
            "served from memory while down"
        );
        assert!(store.health().degraded);
        flaky.up.store(true, Ordering::SeqCst);
        until_healthy(&store).await;
        assert!(
            store.get("local").await.unwrap().is_none(),
            "back on the backend"
        );
        assert_eq!(store.health().outages, 1);
        cancel.cancel();
    }
}
