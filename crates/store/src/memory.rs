//! In-process backend: `std::sync::Mutex`-protected maps (never held across an await). Event ids
//! are per-stream increasing integers, as decimal strings.

use crate::util::{expiry_cutoff, matches, now_ms, page_limit};
use crate::{
    LoggedEvent, Retention, SessionFilter, SessionPage, SessionRecord, SessionStatus, SessionStore,
    StoreError, StoreResult,
};
use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// One event of a stream: id, append time (ms since epoch), its place in the session's append
/// order (across streams), payload.
#[derive(Debug)]
struct Event {
    id: u64,
    at_ms: u64,
    seq: u64,
    data: Vec<u8>,
}

#[derive(Debug, Default)]
struct Stream {
    /// Last id handed out (ids start at 1 and never repeat, even after trimming).
    last_id: u64,
    events: VecDeque<Event>,
}

impl Stream {
    /// Drops the oldest event; returns its payload size.
    fn pop_oldest(&mut self) -> Option<u64> {
        self.events.pop_front().map(|e| e.data.len() as u64)
    }
}

/// The event log of one session.
#[derive(Debug, Default)]
struct SessionLog {
    /// Last append sequence number handed out (orders events across streams).
    seq: u64,
    /// Payload bytes held by all streams together.
    bytes: u64,
    /// stream name → log.
    streams: HashMap<String, Stream>,
}

#[derive(Debug, Default)]
struct State {
    sessions: BTreeMap<String, SessionRecord>,
    /// upstream session id → proxy session id.
    upstream: HashMap<String, String>,
    /// session id → its event log.
    events: HashMap<String, SessionLog>,
    /// (namespace, key) → document.
    docs: BTreeMap<(String, String), Vec<u8>>,
}

impl State {
    fn map_upstream(&mut self, rec: &SessionRecord) {
        if let Some(up) = &rec.upstream_session_id {
            self.upstream.insert(up.clone(), rec.id.clone());
        }
    }

    fn unmap_upstream(&mut self, id: &str, upstream_session_id: Option<&String>) {
        if let Some(up) = upstream_session_id
            && self.upstream.get(up).is_some_and(|owner| owner == id)
        {
            self.upstream.remove(up);
        }
    }

    fn replace(&mut self, rec: &SessionRecord) -> bool {
        let Some(old) = self.sessions.get_mut(&rec.id) else {
            return false;
        };
        let old_up = std::mem::replace(old, rec.clone()).upstream_session_id;
        if old_up != rec.upstream_session_id {
            self.unmap_upstream(&rec.id, old_up.as_ref());
        }
        self.map_upstream(rec);
        true
    }

    fn remove(&mut self, id: &str) -> bool {
        self.events.remove(id);
        match self.sessions.remove(id) {
            Some(old) => {
                self.unmap_upstream(id, old.upstream_session_id.as_ref());
                true
            }
            None => false,
        }
    }
}

/// The in-memory store: fast, per-process, lost on exit.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that breaks
        // later calls, so a poisoned lock is still usable.
        crate::util::lock(&self.state)
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn create(&self, rec: &SessionRecord) -> StoreResult<()> {
        let mut st = self.lock();
        if st.sessions.contains_key(&rec.id) {
            return Err(StoreError::Exists(rec.id.clone()));
        }
        st.sessions.insert(rec.id.clone(), rec.clone());
        st.map_upstream(rec);
        Ok(())
    }

    async fn get(&self, id: &str) -> StoreResult<Option<SessionRecord>> {
        Ok(self.lock().sessions.get(id).cloned())
    }

    async fn get_many(&self, ids: &[String]) -> StoreResult<Vec<Option<SessionRecord>>> {
        let st = self.lock();
        Ok(ids.iter().map(|id| st.sessions.get(id).cloned()).collect())
    }

    async fn update(&self, rec: &SessionRecord) -> StoreResult<bool> {
        Ok(self.lock().replace(rec))
    }

    async fn update_many(&self, recs: &[SessionRecord]) -> StoreResult<usize> {
        let mut st = self.lock();
        Ok(recs.iter().filter(|rec| st.replace(rec)).count())
    }

    async fn touch_many(&self, touches: &[(String, u64)]) -> StoreResult<usize> {
        let mut st = self.lock();
        let mut n = 0;
        for (id, at) in touches {
            if let Some(rec) = st.sessions.get_mut(id) {
                rec.last_active_ms = *at;
                n += 1;
            }
        }
        Ok(n)
    }

    async fn delete(&self, id: &str) -> StoreResult<bool> {
        Ok(self.lock().remove(id))
    }

    async fn claim_owner(
        &self,
        id: &str,
        expected: Option<&str>,
        owner: &str,
    ) -> StoreResult<bool> {
        match self.lock().sessions.get_mut(id) {
            Some(rec)
                if rec.status == SessionStatus::Active && rec.owner.as_deref() == expected =>
            {
                rec.owner = Some(owner.to_owned());
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn list(
        &self,
        filter: &SessionFilter,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<SessionPage> {
        let limit = page_limit(limit);
        let st = self.lock();
        let start = match after {
            Some(a) => Bound::Excluded(a),
            None => Bound::Unbounded,
        };
        let sessions: Vec<SessionRecord> = st
            .sessions
            .range::<str, _>((start, Bound::Unbounded))
            .map(|(_, rec)| rec)
            .filter(|rec| matches(filter, rec))
            .take(limit + 1)
            .cloned()
            .collect();
        Ok(crate::util::page(sessions, limit))
    }

    async fn count(&self, filter: &SessionFilter) -> StoreResult<usize> {
        Ok(self
            .lock()
            .sessions
            .values()
            .filter(|r| matches(filter, r))
            .count())
    }

    async fn expire(&self, now_ms: u64, idle_ttl: Duration) -> StoreResult<Vec<String>> {
        let Some(cutoff) = expiry_cutoff(now_ms, idle_ttl) else {
            return Ok(Vec::new());
        };
        let mut st = self.lock();
        let ids: Vec<String> = st
            .sessions
            .values()
            .filter(|r| r.last_active_ms < cutoff)
            .map(|r| r.id.clone())
            .collect();
        for id in &ids {
            st.remove(id);
        }
        Ok(ids)
    }

    async fn find_by_upstream_id(&self, upstream_session_id: &str) -> StoreResult<Option<String>> {
        Ok(self.lock().upstream.get(upstream_session_id).cloned())
    }

    async fn append_event(&self, session: &str, stream: &str, data: &[u8]) -> StoreResult<String> {
        let at_ms = now_ms();
        let mut st = self.lock();
        let session = st.events.entry(session.to_owned()).or_default();
        session.seq += 1;
        session.bytes += data.len() as u64;
        let seq = session.seq;
        let log = session.streams.entry(stream.to_owned()).or_default();
        log.last_id += 1;
        let id = log.last_id;
        log.events.push_back(Event {
            id,
            at_ms,
            seq,
            data: data.to_vec(),
        });
        Ok(id.to_string())
    }

    async fn events_after(
        &self,
        session: &str,
        stream: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<LoggedEvent>> {
        let after = after
            .map(|a| crate::util::parse_event_id::<u64>(a).map(|n| (a, n)))
            .transpose()?;
        let st = self.lock();
        let log = st.events.get(session).and_then(|s| s.streams.get(stream));
        let events = log.map(|l| &l.events);
        let start = match after {
            None => 0,
            Some((raw, n)) => match events.map(|ev| ev.binary_search_by_key(&n, |e| e.id)) {
                Some(Ok(pos)) => pos + 1,
                _ => return Err(StoreError::EventGone(raw.to_owned())),
            },
        };
        Ok(events
            .into_iter()
            .flatten()
            .skip(start)
            .take(limit)
            .map(|e| LoggedEvent {
                id: e.id.to_string(),
                data: e.data.clone(),
            })
            .collect())
    }

    async fn trim_events(
        &self,
        session: &str,
        stream: &str,
        retention: Retention,
    ) -> StoreResult<usize> {
        let now = now_ms();
        let mut st = self.lock();
        let Some(session) = st.events.get_mut(session) else {
            return Ok(0);
        };
        let Some(log) = session.streams.get_mut(stream) else {
            return Ok(0);
        };
        let before = log.events.len();
        let mut freed = 0;
        if let Some(max_age) = retention.max_age {
            let min_at = now.saturating_sub(crate::util::duration_ms(max_age));
            while log.events.front().is_some_and(|e| e.at_ms < min_at) {
                freed += log.pop_oldest().unwrap_or(0);
            }
        }
        if let Some(max) = retention.max_events {
            while log.events.len() > max {
                freed += log.pop_oldest().unwrap_or(0);
            }
        }
        let dropped = before - log.events.len();
        session.bytes -= freed;
        Ok(dropped)
    }

    async fn trim_session_bytes(&self, session: &str, max_bytes: u64) -> StoreResult<usize> {
        let mut st = self.lock();
        let Some(log) = st.events.get_mut(session) else {
            return Ok(0);
        };
        if log.bytes <= max_bytes {
            return Ok(0);
        }
        // Walk from the newest event back (merging the streams by append order) until the
        // budget is spent; that event and everything older go.
        let mut order: Vec<(u64, u64)> = log
            .streams
            .values()
            .flat_map(|s| s.events.iter().map(|e| (e.seq, e.data.len() as u64)))
            .collect();
        order.sort_unstable_by_key(|e| std::cmp::Reverse(e.0));
        let mut kept = 0;
        let mut cut = None;
        for (seq, len) in order {
            if kept + len > max_bytes {
                cut = Some(seq);
                break;
            }
            kept += len;
        }
        let Some(cut) = cut else {
            return Ok(0);
        };
        let mut dropped = 0;
        for s in log.streams.values_mut() {
            while s.events.front().is_some_and(|e| e.seq <= cut) {
                s.pop_oldest();
                dropped += 1;
            }
        }
        log.bytes = kept;
        Ok(dropped)
    }

    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }

    async fn doc_put(&self, ns: &str, key: &str, value: &[u8]) -> StoreResult<()> {
        self.lock()
            .docs
            .insert((ns.to_owned(), key.to_owned()), value.to_vec());
        Ok(())
    }

    async fn doc_get(&self, ns: &str, key: &str) -> StoreResult<Option<Vec<u8>>> {
        Ok(self
            .lock()
            .docs
            .get(&(ns.to_owned(), key.to_owned()))
            .cloned())
    }

    async fn doc_list(&self, ns: &str) -> StoreResult<Vec<(String, Vec<u8>)>> {
        let start = (ns.to_owned(), String::new());
        Ok(self
            .lock()
            .docs
            .range(start..)
            .take_while(|((n, _), _)| n == ns)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }

    async fn doc_delete(&self, ns: &str, key: &str) -> StoreResult<bool> {
        Ok(self
            .lock()
            .docs
            .remove(&(ns.to_owned(), key.to_owned()))
            .is_some())
    }
}
