//! A client message's round trip with an HTTP upstream, as a future the caller may drive.
//!
//! The HTTP front drives the POST of a request on the task that serves the client's request
//! (no task hand-off between the two); a front that does not wait for it, or a caller that
//! stops waiting (the client went away: in the session-based eras that is not cancellation),
//! leaves it to run on its own as a task of the session.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio_util::task::TaskTracker;

type Work = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Work under way for one client message. Awaiting it drives it; dropping it unfinished
/// [detaches](Exchange::detach) it.
pub struct Exchange {
    work: Option<Work>,
    tracker: TaskTracker,
}

impl Exchange {
    pub(super) fn new(
        work: impl Future<Output = ()> + Send + 'static,
        tracker: TaskTracker,
    ) -> Self {
        Exchange {
            work: Some(Box::pin(work)),
            tracker,
        }
    }

    /// Let it finish on its own, as a task tracked by the session.
    pub fn detach(mut self) {
        self.spawn_rest();
    }

    /// Give it one more turn (the rest of an answer is often already there), then detach it if
    /// it is not done.
    pub fn finish_or_detach(mut self) {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        if let Some(w) = self.work.as_mut()
            && w.as_mut().poll(&mut cx).is_ready()
        {
            self.work = None;
        }
        self.spawn_rest();
    }

    fn spawn_rest(&mut self) {
        let Some(work) = self.work.take() else {
            return;
        };
        // Outside a runtime (the process is ending) there is nothing left to run it.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(self.tracker.track_future(work));
        }
    }
}

impl Future for Exchange {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(w) = self.work.as_mut() else {
            return Poll::Ready(());
        };
        let done = w.as_mut().poll(cx);
        if done.is_ready() {
            self.work = None;
        }
        done
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.spawn_rest();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn driven_inline_or_detached_it_always_finishes() {
        let tracker = TaskTracker::new();
        let done = Arc::new(AtomicUsize::new(0));
        let work = |d: Arc<AtomicUsize>| async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            d.fetch_add(1, Ordering::SeqCst);
        };
        // Awaited: runs here.
        Exchange::new(work(done.clone()), tracker.clone()).await;
        assert_eq!(done.load(Ordering::SeqCst), 1);
        // Dropped half-way (the caller stopped waiting): finishes as a task.
        let mut ex = Exchange::new(work(done.clone()), tracker.clone());
        let _ = tokio::time::timeout(Duration::from_millis(1), &mut ex).await;
        drop(ex);
        // Detached before it started, and finished or detached after one turn.
        Exchange::new(work(done.clone()), tracker.clone()).detach();
        Exchange::new(work(done.clone()), tracker.clone()).finish_or_detach();
        // Already complete on the first turn: nothing is spawned.
        let quick = done.clone();
        Exchange::new(
            async move {
                quick.fetch_add(1, Ordering::SeqCst);
            },
            tracker.clone(),
        )
        .finish_or_detach();
        assert_eq!(done.load(Ordering::SeqCst), 2);
        tracker.close();
        tracker.wait().await;
        assert_eq!(done.load(Ordering::SeqCst), 5);
    }
}
