//! Activity coalescing: the proxy reports activity per frame with [`ActivityCoalescer::touch`]
//! (never awaits, never writes, wakes nobody); touches are merged per session in a shared map,
//! and one background task writes them with one [`SessionStore::touch_many`] per interval, plus a
//! final flush on cancel.

use crate::SessionStore;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Cheap handle for reporting session activity. Clones share the pending touches and counters.
#[derive(Debug, Clone)]
pub struct ActivityCoalescer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Latest activity per session since the last flush. A touch of a session already here
    /// allocates nothing.
    pending: Mutex<HashMap<Arc<str>, u64>>,
    /// Most sessions kept between flushes; touches of further sessions are dropped.
    capacity: usize,
    /// The flusher has stopped: touches are dropped.
    stopped: AtomicBool,
    dropped: AtomicU64,
    flushes: AtomicU64,
    failed_flushes: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, u64>> {
        crate::util::lock(&self.pending)
    }
}

impl ActivityCoalescer {
    /// Starts the flusher task on `tracker`. `capacity` bounds the sessions with touches waiting
    /// for the next flush (touches of further sessions are dropped and counted); `interval` is
    /// the flush period. On `cancel` the task flushes once more and ends.
    pub fn spawn(
        store: Arc<dyn SessionStore>,
        interval: Duration,
        capacity: usize,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> ActivityCoalescer {
        let shared = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            stopped: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            failed_flushes: AtomicU64::new(0),
        });
        tracker.spawn(run(store, interval, cancel, Arc::clone(&shared)));
        ActivityCoalescer { shared }
    }

    /// Records activity of session `id` at `now_ms`. Never blocks on I/O or awaits; if too many
    /// sessions wait for the next flush (or the flusher has stopped) the touch is dropped and
    /// counted in [`dropped`](Self::dropped).
    pub fn touch(&self, id: &str, now_ms: u64) {
        let s = &self.shared;
        if s.stopped.load(Ordering::Acquire) {
            s.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut pending = s.lock();
        if let Some(at) = pending.get_mut(id) {
            // Latest activity wins (and activity never moves backwards).
            *at = (*at).max(now_ms);
        } else if pending.len() < s.capacity {
            pending.insert(Arc::from(id), now_ms);
        } else {
            drop(pending);
            s.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Touches dropped because too many sessions were pending or the flusher had stopped.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// `touch_many` calls made so far (successful or not).
    pub fn flushes(&self) -> u64 {
        self.shared.flushes.load(Ordering::Relaxed)
    }

    /// `touch_many` calls that failed (their touches are retried with the next flush).
    pub fn failed_flushes(&self) -> u64 {
        self.shared.failed_flushes.load(Ordering::Relaxed)
    }
}

async fn flush(store: &dyn SessionStore, shared: &Shared) {
    let batch: Vec<(String, u64)> = {
        let mut pending = shared.lock();
        if pending.is_empty() {
            return;
        }
        pending
            .drain()
            .map(|(id, at)| (id.to_string(), at))
            .collect()
    };
    shared.flushes.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = store.touch_many(&batch).await {
        shared.failed_flushes.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %e, sessions = batch.len(), "activity flush failed; retrying next interval");
        let mut pending = shared.lock();
        for (id, at) in batch {
            let slot = pending.entry(Arc::from(id)).or_insert(at);
            *slot = (*slot).max(at);
        }
    }
}

async fn run(
    store: Arc<dyn SessionStore>,
    interval: Duration,
    cancel: CancellationToken,
    shared: Arc<Shared>,
) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            _ = tick.tick() => flush(store.as_ref(), &shared).await,
        }
    }
    shared.stopped.store(true, Ordering::Release);
    flush(store.as_ref(), &shared).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MemoryStore, SessionRecord, SessionStatus};

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
            status: SessionStatus::Active,
            created_ms: 1,
            last_active_ms: 1,
            composite: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn many_touches_become_one_touch_many() {
        let store = Arc::new(MemoryStore::new());
        for id in ["a", "b"] {
            store.create(&rec(id)).await.expect("create");
        }
        let tracker = TaskTracker::new();
        let cancel = CancellationToken::new();
        let c = ActivityCoalescer::spawn(
            store.clone(),
            Duration::from_secs(1),
            10_000,
            &tracker,
            cancel.clone(),
        );
        for i in 0..1000u64 {
            c.touch("a", 100 + i);
            c.touch("b", 5000 - i);
        }
        // Let the task take everything in, then cross one interval.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(c.flushes(), 1, "one touch_many for 2000 touches");
        assert_eq!(c.dropped(), 0);
        let got = store
            .get_many(&["a".into(), "b".into()])
            .await
            .expect("get");
        assert_eq!(got[0].as_ref().map(|r| r.last_active_ms), Some(1099));
        assert_eq!(got[1].as_ref().map(|r| r.last_active_ms), Some(5000));
        // Nothing new: the next interval writes nothing.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(c.flushes(), 1);
        cancel.cancel();
        tracker.close();
        tracker.wait().await;
    }

    #[tokio::test(start_paused = true)]
    async fn final_flush_on_cancel() {
        let store = Arc::new(MemoryStore::new());
        store.create(&rec("a")).await.expect("create");
        let tracker = TaskTracker::new();
        let cancel = CancellationToken::new();
        let c = ActivityCoalescer::spawn(
            store.clone(),
            Duration::from_secs(3600),
            16,
            &tracker,
            cancel.clone(),
        );
        c.touch("a", 42);
        cancel.cancel();
        tracker.close();
        tracker.wait().await;
        assert_eq!(c.flushes(), 1);
        assert_eq!(
            store.get("a").await.expect("get").map(|r| r.last_active_ms),
            Some(42)
        );
        // The flusher is gone: touches are dropped and counted, not queued forever.
        c.touch("a", 43);
        assert_eq!(c.dropped(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn too_many_pending_sessions_drop_and_count() {
        let store = Arc::new(MemoryStore::new());
        let tracker = TaskTracker::new();
        let cancel = CancellationToken::new();
        let c =
            ActivityCoalescer::spawn(store, Duration::from_secs(1), 4, &tracker, cancel.clone());
        // Touches of a pending session merge; only 4 distinct sessions wait for a flush.
        for i in 0..10 {
            c.touch("x", i);
        }
        assert_eq!(c.dropped(), 0);
        for i in 0..10 {
            c.touch(&format!("s{i}"), i);
        }
        assert_eq!(c.dropped(), 7, "x plus 3 more sessions fit");
        cancel.cancel();
        tracker.close();
        tracker.wait().await;
    }
}
