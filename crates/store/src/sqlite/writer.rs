//! The single writer: a std thread that owns the write connection and runs commands sent over a
//! bounded channel, one at a time, replying on a oneshot.

use crate::{StoreError, StoreResult};
use rusqlite::Connection;
use std::panic::AssertUnwindSafe;
use std::thread::JoinHandle;
use tokio::sync::{mpsc, oneshot};

/// A write command: runs on the writer thread with the write connection and replies itself.
type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// Commands waiting for the writer at most; senders wait (asynchronously) beyond that.
const QUEUE: usize = 1024;

/// Handle to the writer thread. Dropping it closes the queue and joins the thread (which then
/// closes the connection), so a reopen of the same file sees everything written.
#[derive(Debug)]
pub(super) struct Writer {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    pub(super) fn spawn(mut conn: Connection) -> StoreResult<Self> {
        let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
        let thread = std::thread::Builder::new()
            .name("shadowcat-sqlite-writer".into())
            .spawn(move || {
                while let Some(job) = rx.blocking_recv() {
                    // A panicking command drops its reply sender (the caller sees an error); the
                    // writer keeps serving the others.
                    if std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut conn))).is_err() {
                        tracing::error!("sqlite writer: a command panicked");
                    }
                }
            })
            .map_err(|e| StoreError::Backend(format!("sqlite: spawning the writer thread: {e}")))?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Runs `f` on the writer thread and returns its result.
    pub(super) async fn run<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| StoreError::Unavailable("sqlite writer is shut down".into()))?;
        let (reply_tx, reply_rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            // The caller may have gone away (cancelled); nothing to do then.
            let _ = reply_tx.send(f(conn));
        });
        tx.send(job)
            .await
            .map_err(|_| StoreError::Unavailable("sqlite writer thread has stopped".into()))?;
        reply_rx.await.map_err(|_| {
            StoreError::Backend("sqlite writer dropped the command (it panicked)".into())
        })?
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop once the queued commands are done.
        self.tx.take();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("sqlite writer thread panicked");
        }
    }
}
