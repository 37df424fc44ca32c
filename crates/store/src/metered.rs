//! Operation counts and latencies of a store (for the gateway's `/metrics`): a wrapper that
//! times every call of the backend it holds. Lock-free: a few atomic adds per operation.

use crate::{
    LoggedEvent, Retention, SessionFilter, SessionPage, SessionRecord, SessionStore, StoreHealth,
    StoreResult,
};
use async_trait::async_trait;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The store operations, as named in metrics.
pub const OPS: [&str; 22] = [
    "create",
    "get",
    "get_many",
    "update",
    "update_many",
    "touch_many",
    "delete",
    "list",
    "count",
    "expire",
    "find_by_upstream_id",
    "append_event",
    "events_after",
    "trim_events",
    "ping",
    "append_events",
    "trim_session_bytes",
    "doc_put",
    "doc_get",
    "doc_list",
    "doc_delete",
    "claim_owner",
];

/// Upper bounds (seconds) of the latency histogram's buckets; the last bucket is `+Inf`.
pub const BUCKETS: [f64; 12] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

#[derive(Default)]
struct OpCounters {
    ok: AtomicU64,
    errors: AtomicU64,
    /// Non-cumulative: `buckets[i]` counts calls in `(BUCKETS[i-1], BUCKETS[i]]`; the last one
    /// counts the rest.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

/// One operation's totals, read at scrape time.
#[derive(Debug, Clone, PartialEq)]
pub struct OpSample {
    /// Operation name (one of [`OPS`]).
    pub op: &'static str,
    /// Calls that succeeded.
    pub ok: u64,
    /// Calls that returned an error.
    pub errors: u64,
    /// Cumulative bucket counts, one per [`BUCKETS`] bound and a last one for `+Inf`.
    pub cumulative: Vec<u64>,
    /// Total time spent, in seconds.
    pub sum_seconds: f64,
}

/// A store that counts and times every operation of the one it wraps.
pub struct MeteredStore {
    inner: Arc<dyn SessionStore>,
    ops: [OpCounters; OPS.len()],
}

impl MeteredStore {
    /// Wrap `inner`.
    pub fn new(inner: Arc<dyn SessionStore>) -> Arc<Self> {
        Arc::new(MeteredStore {
            inner,
            ops: Default::default(),
        })
    }

    fn note<T>(&self, op: usize, started: Instant, r: &StoreResult<T>) {
        let c = &self.ops[op];
        match r {
            Ok(_) => c.ok.fetch_add(1, Ordering::Relaxed),
            Err(_) => c.errors.fetch_add(1, Ordering::Relaxed),
        };
        let took = started.elapsed();
        let secs = took.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        c.buckets[i].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        c.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Totals of every operation called at least once, in [`OPS`] order.
    pub fn samples(&self) -> Vec<OpSample> {
        let mut out = Vec::new();
        for (name, c) in OPS.iter().zip(&self.ops) {
            let ok = c.ok.load(Ordering::Relaxed);
            let errors = c.errors.load(Ordering::Relaxed);
            if ok + errors == 0 {
                continue;
            }
            let mut total = 0;
            let cumulative = c
                .buckets
                .iter()
                .map(|b| {
                    total += b.load(Ordering::Relaxed);
                    total
                })
                .collect();
            out.push(OpSample {
                op: name,
                ok,
                errors,
                cumulative,
                sum_seconds: Duration::from_nanos(c.sum_ns.load(Ordering::Relaxed)).as_secs_f64(),
            });
        }
        out
    }
}

/// Time `$call` as operation number `$op`.
macro_rules! timed {
    ($self:ident, $op:expr, $call:expr) => {{
        let started = Instant::now();
        let r = $call.await;
        $self.note($op, started, &r);
        r
    }};
}

#[async_trait]
impl SessionStore for MeteredStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn create(&self, rec: &SessionRecord) -> StoreResult<()> {
        timed!(self, 0, self.inner.create(rec))
    }
    async fn get(&self, id: &str) -> StoreResult<Option<SessionRecord>> {
        timed!(self, 1, self.inner.get(id))
    }
    async fn get_many(&self, ids: &[String]) -> StoreResult<Vec<Option<SessionRecord>>> {
        timed!(self, 2, self.inner.get_many(ids))
    }
    async fn update(&self, rec: &SessionRecord) -> StoreResult<bool> {
        timed!(self, 3, self.inner.update(rec))
    }
    async fn update_many(&self, recs: &[SessionRecord]) -> StoreResult<usize> {
        timed!(self, 4, self.inner.update_many(recs))
    }
    async fn touch_many(&self, touches: &[(String, u64)]) -> StoreResult<usize> {
        timed!(self, 5, self.inner.touch_many(touches))
    }
    async fn delete(&self, id: &str) -> StoreResult<bool> {
        timed!(self, 6, self.inner.delete(id))
    }
    async fn claim_owner(
        &self,
        id: &str,
        expected: Option<&str>,
        owner: &str,
    ) -> StoreResult<bool> {
        timed!(self, 21, self.inner.claim_owner(id, expected, owner))
    }
    async fn list(
        &self,
        filter: &SessionFilter,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<SessionPage> {
        timed!(self, 7, self.inner.list(filter, after, limit))
    }
    async fn count(&self, filter: &SessionFilter) -> StoreResult<usize> {
        timed!(self, 8, self.inner.count(filter))
    }
    async fn expire(&self, now_ms: u64, idle_ttl: Duration) -> StoreResult<Vec<String>> {
        timed!(self, 9, self.inner.expire(now_ms, idle_ttl))
    }
    async fn find_by_upstream_id(&self, upstream_session_id: &str) -> StoreResult<Option<String>> {
        timed!(
            self,
            10,
            self.inner.find_by_upstream_id(upstream_session_id)
        )
    }
    async fn append_event(&self, session: &str, stream: &str, data: &[u8]) -> StoreResult<String> {
        timed!(self, 11, self.inner.append_event(session, stream, data))
    }
    async fn append_events(
        &self,
        session: &str,
        stream: &str,
        data: &[&[u8]],
    ) -> StoreResult<Vec<String>> {
        timed!(self, 15, self.inner.append_events(session, stream, data))
    }
    async fn events_after(
        &self,
        session: &str,
        stream: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<LoggedEvent>> {
        timed!(
            self,
            12,
            self.inner.events_after(session, stream, after, limit)
        )
    }
    async fn trim_events(
        &self,
        session: &str,
        stream: &str,
        retention: Retention,
    ) -> StoreResult<usize> {
        timed!(self, 13, self.inner.trim_events(session, stream, retention))
    }
    async fn trim_session_bytes(&self, session: &str, max_bytes: u64) -> StoreResult<usize> {
        timed!(self, 16, self.inner.trim_session_bytes(session, max_bytes))
    }
    async fn ping(&self) -> StoreResult<()> {
        timed!(self, 14, self.inner.ping())
    }
    fn health(&self) -> StoreHealth {
        self.inner.health()
    }
    fn op_samples(&self) -> Vec<OpSample> {
        self.samples()
    }
    async fn doc_put(&self, ns: &str, key: &str, value: &[u8]) -> StoreResult<()> {
        timed!(self, 17, self.inner.doc_put(ns, key, value))
    }
    async fn doc_get(&self, ns: &str, key: &str) -> StoreResult<Option<Vec<u8>>> {
        timed!(self, 18, self.inner.doc_get(ns, key))
    }
    async fn doc_list(&self, ns: &str) -> StoreResult<Vec<(String, Vec<u8>)>> {
        timed!(self, 19, self.inner.doc_list(ns))
    }
    async fn doc_delete(&self, ns: &str, key: &str) -> StoreResult<bool> {
        timed!(self, 20, self.inner.doc_delete(ns, key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;

    #[tokio::test]
    async fn counts_and_times_each_operation() {
        let m = MeteredStore::new(Arc::new(MemoryStore::new()));
        assert!(m.samples().is_empty());
        m.append_event("s", "0", b"a").await.unwrap();
        m.append_event("s", "0", b"b").await.unwrap();
        assert!(m.events_after("s", "0", Some("nope"), 10).await.is_err());
        let s = m.op_samples();
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].op, s[0].ok, s[0].errors), ("append_event", 2, 0));
        assert_eq!((s[1].op, s[1].ok, s[1].errors), ("events_after", 0, 1));
        assert_eq!(s[0].cumulative.len(), BUCKETS.len() + 1);
        assert_eq!(*s[0].cumulative.last().unwrap(), 2);
        assert!(s[0].cumulative.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(m.backend(), "memory");
    }
}
