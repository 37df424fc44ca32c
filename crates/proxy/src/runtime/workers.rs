//! Worker threads for client connections: one single-threaded Tokio runtime per thread, no work
//! stealing between them.
//!
//! A connection is placed on the worker with the fewest live connections and stays there; the
//! tasks its requests spawn (a new session's upstream, its pump) run on the same thread. A request
//! relayed to an upstream then never changes thread: on a work-stealing runtime every hand-off
//! between the connection, the upstream request and the session's pump could wake a parked thread
//! (a futex wake and a context switch each), which cost more than the relaying itself at low
//! concurrency. With many connections every worker is busy and each stays on its own core.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A fixed set of single-threaded runtimes. Cheap to clone; the threads stop when
/// [`Workers::stop`] is called or the last clone is dropped.
#[derive(Clone)]
pub struct Workers {
    inner: Arc<Inner>,
}

struct Inner {
    workers: Vec<Worker>,
    stop: CancellationToken,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

struct Worker {
    handle: Handle,
    /// Live connections (or other tasks placed with [`Workers::spawn`]) on this worker.
    load: Arc<AtomicUsize>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The default number of workers: one per CPU this process may use.
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

impl Workers {
    /// Start `n` worker threads (at least one), named `shadowcat-worker-N`.
    pub fn start(n: usize) -> io::Result<Workers> {
        let stop = CancellationToken::new();
        let mut workers = Vec::new();
        let mut threads = Vec::new();
        for i in 0..n.max(1) {
            let name = format!("shadowcat-worker-{i}");
            // The runtime is built, run and dropped on its own thread (dropping one inside
            // another runtime's async context would panic).
            let (tx, rx) = std::sync::mpsc::channel();
            let stopped = stop.clone();
            let spawned = std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .thread_name(name)
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = tx.send(Ok(rt.handle().clone()));
                    rt.block_on(stopped.cancelled());
                    // Tasks still here are dropped with the runtime (their children are killed
                    // on drop); the front ends its sessions before it stops the workers.
                    drop(rt);
                });
            let thread = match spawned {
                Ok(t) => t,
                Err(e) => {
                    stop.cancel();
                    return Err(e);
                }
            };
            let started = rx
                .recv()
                .map_err(|_| io::Error::other("a worker thread ended while starting"))
                .and_then(|r| r);
            let handle = match started {
                Ok(h) => h,
                Err(e) => {
                    stop.cancel(); // the workers started so far end
                    return Err(e);
                }
            };
            threads.push(thread);
            workers.push(Worker {
                handle,
                load: Arc::new(AtomicUsize::new(0)),
            });
        }
        Ok(Workers {
            inner: Arc::new(Inner {
                workers,
                stop,
                threads: Mutex::new(threads),
            }),
        })
    }

    /// Number of worker threads.
    pub fn len(&self) -> usize {
        self.inner.workers.len()
    }

    /// Always false: there is at least one worker.
    pub fn is_empty(&self) -> bool {
        self.inner.workers.is_empty()
    }

    /// Live tasks placed on each worker.
    pub fn loads(&self) -> Vec<usize> {
        let w = &self.inner.workers;
        w.iter().map(|w| w.load.load(Ordering::Relaxed)).collect()
    }

    /// Run `task` on the least loaded worker, tracked by `tracker`, counted against that worker
    /// until it ends. After [`Workers::stop`] it is dropped without running.
    pub fn spawn<F>(&self, tracker: &TaskTracker, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let w = self.least_loaded();
        let load = w.load.clone();
        load.fetch_add(1, Ordering::Relaxed);
        let counted = Counted(load);
        w.handle.spawn(tracker.track_future(async move {
            let _counted = counted;
            task.await;
        }));
    }

    fn least_loaded(&self) -> &Worker {
        let w = &self.inner.workers;
        // Ties go to the lowest index: an idle proxy keeps its few connections on one thread.
        w.iter()
            .min_by_key(|w| w.load.load(Ordering::Relaxed))
            .expect("at least one worker")
    }

    /// Stop the worker threads (their remaining tasks are dropped) and wait up to `timeout` for
    /// them to finish.
    pub async fn stop(&self, timeout: Duration) {
        self.inner.stop.cancel();
        let threads = std::mem::take(&mut *crate::sync::lock(&self.inner.threads));
        if threads.is_empty() {
            return;
        }
        let join = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        });
        if tokio::time::timeout(timeout, join).await.is_err() {
            tracing::warn!("worker threads still running after {timeout:?}");
        }
    }
}

/// Decrements a worker's load when the task it counts ends (or is dropped).
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_go_to_the_least_loaded_worker_and_stay_on_its_thread() {
        let workers = Workers::start(2).expect("start");
        let tracker = TaskTracker::new();
        let (hold_tx, hold_rx) = tokio::sync::watch::channel(false);
        let (name_tx, mut name_rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..4 {
            let mut hold = hold_rx.clone();
            let names = name_tx.clone();
            workers.spawn(&tracker, async move {
                let first = std::thread::current().name().map(str::to_owned);
                let _ = hold.wait_for(|h| *h).await;
                let after = std::thread::current().name().map(str::to_owned);
                let _ = names.send((first, after));
            });
        }
        assert_eq!(workers.loads(), vec![2, 2], "spread evenly while running");
        hold_tx.send(true).expect("release");
        tracker.close();
        tracker.wait().await;
        drop(name_tx);
        let mut seen = Vec::new();
        while let Some((first, after)) = name_rx.recv().await {
            assert_eq!(first, after, "a task never changes thread");
            seen.push(first.expect("named thread"));
        }
        seen.sort();
        assert_eq!(
            seen,
            [
                "shadowcat-worker-0",
                "shadowcat-worker-0",
                "shadowcat-worker-1",
                "shadowcat-worker-1"
            ]
        );
        assert_eq!(workers.loads(), vec![0, 0], "load released when tasks end");
        workers.stop(Duration::from_secs(5)).await;
        // Stopped: a new task is dropped without running, and the load is released again.
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        workers.spawn(&tracker, async move {
            r.fetch_add(1, Ordering::Relaxed);
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(ran.load(Ordering::Relaxed), 0);
        assert_eq!(workers.loads(), vec![0, 0]);
    }
}
