//! Activity coalescing: the proxy reports activity per frame with [`ActivityCoalescer::touch`]
//! (never awaits, never writes); one background task merges the touches per session and writes
//! them with one [`SessionStore::touch_many`] per interval, plus a final flush on cancel.

use crate::SessionStore;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Cheap handle for reporting session activity. Clones share the queue and the counters.
#[derive(Debug, Clone)]
pub struct ActivityCoalescer {
    tx: mpsc::Sender<(String, u64)>,
    counters: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    dropped: AtomicU64,
    flushes: AtomicU64,
    failed_flushes: AtomicU64,
}

impl ActivityCoalescer {
    /// Starts the flusher task on `tracker`. `capacity` bounds the queue of unmerged touches
    /// (touches beyond it are dropped and counted); `interval` is the flush period. On `cancel`
    /// the task drains the queue, flushes once more and ends.
    pub fn spawn(
        store: Arc<dyn SessionStore>,
        interval: Duration,
        capacity: usize,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> ActivityCoalescer {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let counters = Arc::new(Counters::default());
        tracker.spawn(run(store, interval, rx, cancel, Arc::clone(&counters)));
        ActivityCoalescer { tx, counters }
    }

    /// Records activity of session `id` at `now_ms`. Never blocks or awaits; if the queue is full
    /// (or the flusher has stopped) the touch is dropped and counted in [`dropped`](Self::dropped).
    pub fn touch(&self, id: &str, now_ms: u64) {
        if self.tx.try_send((id.to_owned(), now_ms)).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Touches dropped because the queue was full or the flusher had stopped.
    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }

    /// `touch_many` calls made so far (successful or not).
    pub fn flushes(&self) -> u64 {
        self.counters.flushes.load(Ordering::Relaxed)
    }

    /// `touch_many` calls that failed (their touches are retried with the next flush).
    pub fn failed_flushes(&self) -> u64 {
        self.counters.failed_flushes.load(Ordering::Relaxed)
    }
}

fn merge(pending: &mut HashMap<String, u64>, id: String, at: u64) {
    let slot = pending.entry(id).or_insert(at);
    // Latest activity wins (and activity never moves backwards).
    *slot = (*slot).max(at);
}

async fn flush(store: &dyn SessionStore, pending: &mut HashMap<String, u64>, counters: &Counters) {
    if pending.is_empty() {
        return;
    }
    let batch: Vec<(String, u64)> = pending.drain().collect();
    counters.flushes.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = store.touch_many(&batch).await {
        counters.failed_flushes.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %e, sessions = batch.len(), "activity flush failed; retrying next interval");
        for (id, at) in batch {
            merge(pending, id, at);
        }
    }
}

async fn run(
    store: Arc<dyn SessionStore>,
    interval: Duration,
    mut rx: mpsc::Receiver<(String, u64)>,
    cancel: CancellationToken,
    counters: Arc<Counters>,
) {
    let mut pending: HashMap<String, u64> = HashMap::new();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            _ = tick.tick() => flush(store.as_ref(), &mut pending, &counters).await,
            msg = rx.recv() => match msg {
                Some((id, at)) => merge(&mut pending, id, at),
                // Every handle is gone: nothing more can arrive.
                None => break,
            },
        }
    }
    rx.close();
    while let Ok((id, at)) = rx.try_recv() {
        merge(&mut pending, id, at);
    }
    flush(store.as_ref(), &mut pending, &counters).await;
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
    async fn full_queue_drops_and_counts() {
        let store = Arc::new(MemoryStore::new());
        let tracker = TaskTracker::new();
        let cancel = CancellationToken::new();
        let c =
            ActivityCoalescer::spawn(store, Duration::from_secs(1), 4, &tracker, cancel.clone());
        // The task has not run yet (no await), so the queue holds exactly 4.
        for i in 0..10 {
            c.touch("x", i);
        }
        assert_eq!(c.dropped(), 6);
        cancel.cancel();
        tracker.close();
        tracker.wait().await;
    }
}
