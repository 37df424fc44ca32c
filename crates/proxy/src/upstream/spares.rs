//! Warm spares of a stdio upstream (`spares = N`): children spawned ahead of need, so a new
//! session takes one that is already running instead of waiting for a spawn. A spare is a
//! whole upstream (child + I/O tasks), not yet initialized; the session that takes it sends its
//! own `initialize`, so each child still serves exactly one session. A keeper task refills the
//! pool after each take, drops spares whose child died while waiting, and backs off when
//! spawning fails. Spares are children of the gateway's shutdown token: they are killed with it.

use crate::upstream::{self, Opened, UpstreamCtx, UpstreamSpec};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How often the keeper looks for spares that died while waiting.
const PRUNE_EVERY: Duration = Duration::from_secs(1);
/// First and largest wait after a failed spawn.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(30));

/// One warm child: its upstream, and the token that ends it (the session's token once taken).
pub struct Spare {
    /// The upstream and its event channel.
    pub opened: Opened,
    /// Cancelling it stops the child.
    pub cancel: CancellationToken,
}

/// The spares of one stdio member.
pub struct Spares {
    want: usize,
    ready: Mutex<VecDeque<Spare>>,
    wake: Notify,
    taken: AtomicU64,
    /// Its member left the configuration (a reload): the keeper stops and the spares end.
    retired: AtomicBool,
}

impl Spares {
    /// A pool that keeps `want` spares.
    pub fn new(want: usize) -> Arc<Spares> {
        Arc::new(Spares {
            want,
            ready: Mutex::new(VecDeque::with_capacity(want)),
            wake: Notify::new(),
            taken: AtomicU64::new(0),
            retired: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Spare>> {
        crate::sync::lock(&self.ready)
    }

    /// Spares kept.
    pub fn want(&self) -> usize {
        self.want
    }

    /// Spares ready now (children still running).
    pub fn ready(&self) -> usize {
        self.lock()
            .iter()
            .filter(|s| !s.opened.upstream.has_exited())
            .count()
    }

    /// Sessions that started on a spare.
    pub fn taken(&self) -> u64 {
        self.taken.load(Ordering::Relaxed)
    }

    /// A live spare, if one is ready (the keeper is told to spawn its replacement).
    pub fn take(&self) -> Option<Spare> {
        let spare = {
            let mut ready = self.lock();
            loop {
                match ready.pop_front() {
                    Some(s) if s.opened.upstream.has_exited() => s.cancel.cancel(),
                    other => break other,
                }
            }
        };
        self.wake.notify_one();
        if spare.is_some() {
            self.taken.fetch_add(1, Ordering::Relaxed);
        }
        spare
    }

    /// Stop keeping spares (the member left the configuration): the keeper ends the spares
    /// still waiting and returns. Sessions that took one are not touched.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// End the spares still waiting.
    fn end_waiting(&self) {
        for s in self.lock().drain(..) {
            s.cancel.cancel();
        }
    }

    /// Keep the pool full until `cancel` fires or [`Spares::retire`]. `ctx` is the template of the spares' contexts
    /// (each spare gets a child of its cancel token).
    pub async fn keep(self: Arc<Self>, spec: UpstreamSpec, ctx: UpstreamCtx) {
        let stop = ctx.cancel.clone();
        let mut backoff = BACKOFF.0;
        loop {
            if self.retired.load(Ordering::Acquire) {
                self.end_waiting();
                return;
            }
            self.prune();
            while self.lock().len() < self.want
                && !stop.is_cancelled()
                && !self.retired.load(Ordering::Acquire)
            {
                let mut c = ctx.clone();
                c.cancel = stop.child_token();
                match upstream::open(&spec, c.clone()).await {
                    Ok(opened) => {
                        backoff = BACKOFF.0;
                        self.lock().push_back(Spare {
                            opened,
                            cancel: c.cancel,
                        });
                    }
                    Err(e) => {
                        tracing::warn!(upstream = %spec.describe(), error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot start a spare");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = stop.cancelled() => return,
                        }
                        backoff = (backoff * 2).min(BACKOFF.1);
                    }
                }
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(PRUNE_EVERY) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Drop the spares whose child exited while waiting.
    fn prune(&self) {
        self.lock().retain(|s| {
            let alive = !s.opened.upstream.has_exited();
            if !alive {
                tracing::warn!("a spare child exited before any session took it");
                s.cancel.cancel();
            }
            alive
        });
    }
}
