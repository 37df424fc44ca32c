//! Read connections: a small pool of read-only connections, used on tokio's blocking pool so a
//! read never blocks an async worker (WAL lets them run beside the writer).

use super::schema::open_reader;
use crate::{StoreError, StoreResult};
use rusqlite::Connection;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Idle connections kept at most; more may exist while many reads run at once.
const MAX_IDLE: usize = 4;

#[derive(Debug)]
pub(super) struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    pub(super) fn new(path: PathBuf) -> StoreResult<Arc<Self>> {
        // Open one now so a bad path fails at `open`, not at the first read.
        let first = open_reader(&path)?;
        Ok(Arc::new(Self {
            path,
            idle: Mutex::new(vec![first]),
        }))
    }

    fn take(&self) -> StoreResult<Connection> {
        let pooled = crate::util::lock(&self.idle).pop();
        match pooled {
            Some(conn) => Ok(conn),
            None => open_reader(&self.path),
        }
    }

    fn put(&self, conn: Connection) {
        let mut idle = crate::util::lock(&self.idle);
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    /// Runs `f` with a read connection on the blocking pool.
    pub(super) async fn run<T, F>(self: &Arc<Self>, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let mut conn = this.take()?;
            let out = f(&mut conn);
            this.put(conn);
            out
        })
        .await
        .map_err(|e| StoreError::Backend(format!("sqlite read task failed: {e}")))?
    }
}
