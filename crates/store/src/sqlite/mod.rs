//! SQLite backend: one database file in WAL mode (`synchronous=NORMAL`). Every write goes through
//! one writer thread ([`writer`]); reads use a small pool of read-only connections ([`read`]).
//! Event ids are the `events` table's AUTOINCREMENT rowids, so they never repeat and increase
//! within every stream.

mod read;
mod schema;
mod writer;

use crate::util::{expiry_cutoff, now_ms, page_limit};
use crate::{
    LoggedEvent, Retention, SessionFilter, SessionPage, SessionRecord, SessionStore, StoreError,
    StoreResult,
};
use async_trait::async_trait;
use read::Readers;
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};
use schema::{
    RecordParams, SESSION_COLUMNS, record_from_row, row_err, sql_err, status_str, to_i64,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use writer::Writer;

/// The SQLite store. Cheap to share behind an `Arc`; dropping the last handle stops the writer
/// thread after it has finished the queued writes.
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    writer: Writer,
    readers: Arc<Readers>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`: WAL mode, `synchronous=NORMAL`, schema
    /// created or checked (`PRAGMA user_version`), writer thread started.
    pub fn open(path: impl AsRef<Path>) -> StoreResult<SqliteStore> {
        let path = path.as_ref().to_path_buf();
        let conn = schema::open_writer(&path)?;
        SqliteStore::with_writer(path, conn)
    }

    /// The store over `path` whose writes go through `conn`.
    fn with_writer(path: PathBuf, conn: rusqlite::Connection) -> StoreResult<SqliteStore> {
        let writer = Writer::spawn(conn)?;
        let readers = Readers::new(path.clone())?;
        Ok(SqliteStore {
            path,
            writer,
            readers,
        })
    }

    /// Opens an existing database read-only: nothing is created or migrated, and every write
    /// fails (for tools that inspect a store). A file that is not a Shadowcat store is an error.
    pub fn open_read_only(path: impl AsRef<Path>) -> StoreResult<SqliteStore> {
        let path = path.as_ref().to_path_buf();
        if !path.is_file() {
            return Err(crate::StoreError::Backend(format!(
                "sqlite: no database at `{}`",
                path.display()
            )));
        }
        let conn = schema::open_reader(&path)?;
        schema::check_version(&conn)?;
        SqliteStore::with_writer(path, conn)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets status `Ended` on every `Active` session owned by `owner` (at proxy start: the stdio
    /// children of a previous run are gone). Returns how many sessions changed.
    pub async fn mark_owned_ended(&self, owner: &str) -> StoreResult<usize> {
        let owner = owner.to_owned();
        self.writer
            .run(move |conn| {
                conn.execute(
                    "UPDATE sessions SET status = ?2 WHERE owner = ?1 AND status = ?3",
                    params![
                        owner,
                        status_str(crate::SessionStatus::Ended),
                        status_str(crate::SessionStatus::Active)
                    ],
                )
                .map_err(sql_err)
            })
            .await
    }
}

const UPDATE_SQL: &str = "UPDATE sessions SET route = ?2, upstream = ?3, upstream_session_id = ?4, \
    protocol_version = ?5, client_info = ?6, client_capabilities = ?7, principal = ?8, owner = ?9, \
    status = ?10, created_ms = ?11, last_active_ms = ?12, composite = ?13 WHERE id = ?1";

fn update_one(conn: &Connection, rec: &RecordParams) -> StoreResult<bool> {
    let mut stmt = conn.prepare_cached(UPDATE_SQL).map_err(sql_err)?;
    let n = stmt
        .execute(params_from_iter(rec.values.iter()))
        .map_err(sql_err)?;
    Ok(n > 0)
}

fn get_one(conn: &Connection, id: &str) -> StoreResult<Option<SessionRecord>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?1"
        ))
        .map_err(sql_err)?;
    stmt.query_row([id], record_from_row)
        .optional()
        .map_err(row_err)
}

/// `WHERE` clause and parameters for a filter (and an optional exclusive lower id bound).
fn filter_sql(filter: &SessionFilter, after: Option<&str>) -> (String, Vec<Value>) {
    let mut clauses = Vec::new();
    let mut values = Vec::new();
    let mut push = |clause: &str, v: Value| {
        values.push(v);
        clauses.push(format!("{clause} ?{}", values.len()));
    };
    if let Some(a) = after {
        push("id >", Value::Text(a.to_owned()));
    }
    if let Some(s) = filter.status {
        push("status =", Value::Text(status_str(s).to_owned()));
    }
    if let Some(r) = &filter.route {
        push("route =", Value::Text(r.clone()));
    }
    if let Some(o) = &filter.owner {
        push("owner =", Value::Text(o.clone()));
    }
    if let Some(p) = &filter.principal {
        push("principal =", Value::Text(p.clone()));
    }
    if let Some(t) = filter.idle_since_ms {
        push(
            "last_active_ms <=",
            Value::Integer(to_i64(t).unwrap_or(i64::MAX)),
        );
    }
    let sql = if clauses.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", clauses.join(" AND "))
    };
    (sql, values)
}

#[async_trait]
impl SessionStore for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn create(&self, rec: &SessionRecord) -> StoreResult<()> {
        let id = rec.id.clone();
        let p = RecordParams::new(rec)?;
        self.writer
            .run(move |conn| {
                let sql = format!(
                    "INSERT INTO sessions ({SESSION_COLUMNS}) VALUES \
                     (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) ON CONFLICT (id) DO NOTHING"
                );
                let mut stmt = conn.prepare_cached(&sql).map_err(sql_err)?;
                match stmt.execute(params_from_iter(p.values.iter())).map_err(sql_err)? {
                    0 => Err(StoreError::Exists(id)),
                    _ => Ok(()),
                }
            })
            .await
    }

    async fn get(&self, id: &str) -> StoreResult<Option<SessionRecord>> {
        let id = id.to_owned();
        self.readers.run(move |conn| get_one(conn, &id)).await
    }

    async fn get_many(&self, ids: &[String]) -> StoreResult<Vec<Option<SessionRecord>>> {
        let ids = ids.to_vec();
        self.readers
            .run(move |conn| {
                let tx = conn.transaction().map_err(sql_err)?;
                let out = ids.iter().map(|id| get_one(&tx, id)).collect();
                tx.finish().map_err(sql_err)?;
                out
            })
            .await
    }

    async fn update(&self, rec: &SessionRecord) -> StoreResult<bool> {
        let p = RecordParams::new(rec)?;
        self.writer.run(move |conn| update_one(conn, &p)).await
    }

    async fn update_many(&self, recs: &[SessionRecord]) -> StoreResult<usize> {
        let ps = recs
            .iter()
            .map(RecordParams::new)
            .collect::<StoreResult<Vec<_>>>()?;
        self.writer
            .run(move |conn| {
                let tx = conn.transaction().map_err(sql_err)?;
                let mut n = 0;
                for p in &ps {
                    n += usize::from(update_one(&tx, p)?);
                }
                tx.commit().map_err(sql_err)?;
                Ok(n)
            })
            .await
    }

    async fn touch_many(&self, touches: &[(String, u64)]) -> StoreResult<usize> {
        let touches = touches
            .iter()
            .map(|(id, at)| Ok((id.clone(), to_i64(*at)?)))
            .collect::<StoreResult<Vec<_>>>()?;
        self.writer
            .run(move |conn| {
                let tx = conn.transaction().map_err(sql_err)?;
                let mut n = 0;
                {
                    let mut stmt = tx
                        .prepare_cached("UPDATE sessions SET last_active_ms = ?2 WHERE id = ?1")
                        .map_err(sql_err)?;
                    for (id, at) in &touches {
                        n += stmt.execute(params![id, at]).map_err(sql_err)?;
                    }
                }
                tx.commit().map_err(sql_err)?;
                Ok(n)
            })
            .await
    }

    async fn delete(&self, id: &str) -> StoreResult<bool> {
        let id = id.to_owned();
        self.writer
            .run(move |conn| {
                let tx = conn.transaction().map_err(sql_err)?;
                tx.execute("DELETE FROM events WHERE session = ?1", [&id])
                    .map_err(sql_err)?;
                let n = tx
                    .execute("DELETE FROM sessions WHERE id = ?1", [&id])
                    .map_err(sql_err)?;
                tx.commit().map_err(sql_err)?;
                Ok(n > 0)
            })
            .await
    }

    async fn claim_owner(
        &self,
        id: &str,
        expected: Option<&str>,
        owner: &str,
    ) -> StoreResult<bool> {
        let (id, expected, owner) = (id.to_owned(), expected.map(str::to_owned), owner.to_owned());
        self.writer
            .run(move |conn| {
                // One statement: the comparison and the write cannot be separated.
                let n = conn
                    .prepare_cached(
                        "UPDATE sessions SET owner = ?3 \
                         WHERE id = ?1 AND owner IS ?2 AND status = ?4",
                    )
                    .and_then(|mut stmt| {
                        stmt.execute(params![
                            id,
                            expected,
                            owner,
                            status_str(crate::SessionStatus::Active)
                        ])
                    })
                    .map_err(sql_err)?;
                Ok(n > 0)
            })
            .await
    }

    async fn list(
        &self,
        filter: &SessionFilter,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<SessionPage> {
        let limit = page_limit(limit);
        let (clause, mut values) = filter_sql(filter, after);
        values.push(Value::Integer(
            i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1,
        ));
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM sessions{clause} ORDER BY id LIMIT ?{}",
            values.len()
        );
        self.readers
            .run(move |conn| {
                let mut stmt = conn.prepare_cached(&sql).map_err(sql_err)?;
                let sessions = stmt
                    .query_map(params_from_iter(values.iter()), record_from_row)
                    .map_err(sql_err)?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(row_err)?;
                Ok(crate::util::page(sessions, limit))
            })
            .await
    }

    async fn count(&self, filter: &SessionFilter) -> StoreResult<usize> {
        let (clause, values) = filter_sql(filter, None);
        let sql = format!("SELECT COUNT(*) FROM sessions{clause}");
        self.readers
            .run(move |conn| {
                let n: i64 = conn
                    .prepare_cached(&sql)
                    .and_then(|mut s| s.query_row(params_from_iter(values.iter()), |r| r.get(0)))
                    .map_err(sql_err)?;
                usize::try_from(n).map_err(|_| StoreError::Corrupt(format!("sqlite: count {n}")))
            })
            .await
    }

    async fn expire(&self, now_ms: u64, idle_ttl: Duration) -> StoreResult<Vec<String>> {
        let Some(cutoff) = expiry_cutoff(now_ms, idle_ttl) else {
            return Ok(Vec::new());
        };
        let cutoff = to_i64(cutoff)?;
        self.writer
            .run(move |conn| {
                let tx = conn.transaction().map_err(sql_err)?;
                let ids = {
                    let mut stmt = tx
                        .prepare_cached(
                            "SELECT id FROM sessions WHERE last_active_ms < ?1 ORDER BY id",
                        )
                        .map_err(sql_err)?;
                    stmt.query_map([cutoff], |r| r.get::<_, String>(0))
                        .map_err(sql_err)?
                        .collect::<rusqlite::Result<Vec<_>>>()
                        .map_err(sql_err)?
                };
                tx.execute(
                    "DELETE FROM events WHERE session IN \
                     (SELECT id FROM sessions WHERE last_active_ms < ?1)",
                    [cutoff],
                )
                .map_err(sql_err)?;
                tx.execute("DELETE FROM sessions WHERE last_active_ms < ?1", [cutoff])
                    .map_err(sql_err)?;
                tx.commit().map_err(sql_err)?;
                Ok(ids)
            })
            .await
    }

    async fn find_by_upstream_id(&self, upstream_session_id: &str) -> StoreResult<Option<String>> {
        let up = upstream_session_id.to_owned();
        self.readers
            .run(move |conn| {
                let mut stmt = conn
                    .prepare_cached("SELECT id FROM sessions WHERE upstream_session_id = ?1 ORDER BY id LIMIT 1")
                    .map_err(sql_err)?;
                stmt.query_row([&up], |r| r.get(0)).optional().map_err(sql_err)
            })
            .await
    }

    async fn append_event(&self, session: &str, stream: &str, data: &[u8]) -> StoreResult<String> {
        let (session, stream, data) = (session.to_owned(), stream.to_owned(), data.to_vec());
        let at = to_i64(now_ms())?;
        self.writer
            .run(move |conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "INSERT INTO events (session, stream, at_ms, data) VALUES (?1, ?2, ?3, ?4)",
                    )
                    .map_err(sql_err)?;
                stmt.execute(params![session, stream, at, data])
                    .map_err(sql_err)?;
                Ok(conn.last_insert_rowid().to_string())
            })
            .await
    }

    async fn append_events(
        &self,
        session: &str,
        stream: &str,
        data: &[&[u8]],
    ) -> StoreResult<Vec<String>> {
        let (session, stream) = (session.to_owned(), stream.to_owned());
        let data: Vec<Vec<u8>> = data.iter().map(|d| d.to_vec()).collect();
        let at = to_i64(now_ms())?;
        self.writer
            .run(move |conn| {
                // One transaction for the batch: one commit instead of one per event.
                let tx = conn.transaction().map_err(sql_err)?;
                let mut ids = Vec::with_capacity(data.len());
                {
                    let mut stmt = tx
                        .prepare_cached(
                            "INSERT INTO events (session, stream, at_ms, data) VALUES (?1, ?2, ?3, ?4)",
                        )
                        .map_err(sql_err)?;
                    for d in &data {
                        stmt.execute(params![session, stream, at, d])
                            .map_err(sql_err)?;
                        ids.push(tx.last_insert_rowid().to_string());
                    }
                }
                tx.commit().map_err(sql_err)?;
                Ok(ids)
            })
            .await
    }

    async fn events_after(
        &self,
        session: &str,
        stream: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<LoggedEvent>> {
        let after = after
            .map(|a| crate::util::parse_event_id::<i64>(a).map(|n| (a.to_owned(), n)))
            .transpose()?;
        let (session, stream) = (session.to_owned(), stream.to_owned());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.readers
            .run(move |conn| {
                // One read transaction: the existence check and the read see the same snapshot.
                let tx = conn.transaction().map_err(sql_err)?;
                let from = match &after {
                    None => 0,
                    Some((raw, n)) => {
                        let known = tx
                            .prepare_cached("SELECT 1 FROM events WHERE id = ?1 AND session = ?2 AND stream = ?3")
                            .and_then(|mut s| s.query_row(params![n, session, stream], |_| Ok(())).optional())
                            .map_err(sql_err)?;
                        if known.is_none() {
                            return Err(StoreError::EventGone(raw.clone()));
                        }
                        *n
                    }
                };
                let events = {
                    let mut stmt = tx
                        .prepare_cached(
                            "SELECT id, data FROM events WHERE session = ?1 AND stream = ?2 AND id > ?3 \
                             ORDER BY id LIMIT ?4",
                        )
                        .map_err(sql_err)?;
                    stmt.query_map(params![session, stream, from, limit], |r| {
                        Ok(LoggedEvent {
                            id: r.get::<_, i64>(0)?.to_string(),
                            data: r.get(1)?,
                        })
                    })
                    .map_err(sql_err)?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(row_err)?
                };
                tx.finish().map_err(sql_err)?;
                Ok(events)
            })
            .await
    }

    async fn trim_events(
        &self,
        session: &str,
        stream: &str,
        retention: Retention,
    ) -> StoreResult<usize> {
        let (session, stream) = (session.to_owned(), stream.to_owned());
        let min_at = retention
            .max_age
            .map(|age| to_i64(now_ms().saturating_sub(crate::util::duration_ms(age))))
            .transpose()?;
        let keep = retention
            .max_events
            .map(|n| i64::try_from(n).unwrap_or(i64::MAX));
        self.writer
            .run(move |conn| {
                let tx = conn.transaction().map_err(sql_err)?;
                let mut n = 0;
                if let Some(min_at) = min_at {
                    n += tx
                        .execute(
                            "DELETE FROM events WHERE session = ?1 AND stream = ?2 AND at_ms < ?3",
                            params![session, stream, min_at],
                        )
                        .map_err(sql_err)?;
                }
                if let Some(keep) = keep {
                    n += tx
                        .execute(
                            "DELETE FROM events WHERE session = ?1 AND stream = ?2 AND id <= \
                             (SELECT id FROM events WHERE session = ?1 AND stream = ?2 \
                              ORDER BY id DESC LIMIT 1 OFFSET ?3)",
                            params![session, stream, keep],
                        )
                        .map_err(sql_err)?;
                }
                tx.commit().map_err(sql_err)?;
                Ok(n)
            })
            .await
    }

    async fn trim_session_bytes(&self, session: &str, max_bytes: u64) -> StoreResult<usize> {
        let session = session.to_owned();
        let max = i64::try_from(max_bytes).unwrap_or(i64::MAX);
        self.writer
            .run(move |conn| {
                // Running totals from the newest event back: the newest event whose total is
                // over the budget, and everything older, goes.
                conn.prepare_cached(
                    "DELETE FROM events WHERE session = ?1 AND id <= (\
                       SELECT id FROM (\
                         SELECT id, SUM(length(data)) OVER (ORDER BY id DESC \
                           ROWS UNBOUNDED PRECEDING) AS total \
                         FROM events WHERE session = ?1) \
                       WHERE total > ?2 ORDER BY id DESC LIMIT 1)",
                )
                .and_then(|mut stmt| stmt.execute(params![session, max]))
                .map_err(sql_err)
            })
            .await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.writer
            .run(|conn| conn.query_row("SELECT 1", [], |_| Ok(())).map_err(sql_err))
            .await?;
        self.readers
            .run(|conn| conn.query_row("SELECT 1", [], |_| Ok(())).map_err(sql_err))
            .await
    }

    async fn doc_put(&self, ns: &str, key: &str, value: &[u8]) -> StoreResult<()> {
        let (ns, key, value) = (ns.to_owned(), key.to_owned(), value.to_vec());
        self.writer
            .run(move |conn| {
                conn.prepare_cached(
                    "INSERT INTO docs (ns, key, value) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value",
                )
                .and_then(|mut s| s.execute(params![ns, key, value]))
                .map(|_| ())
                .map_err(sql_err)
            })
            .await
    }

    async fn doc_get(&self, ns: &str, key: &str) -> StoreResult<Option<Vec<u8>>> {
        let (ns, key) = (ns.to_owned(), key.to_owned());
        self.readers
            .run(move |conn| {
                conn.prepare_cached("SELECT value FROM docs WHERE ns = ?1 AND key = ?2")
                    .and_then(|mut s| s.query_row(params![ns, key], |r| r.get(0)).optional())
                    .map_err(sql_err)
            })
            .await
    }

    async fn doc_list(&self, ns: &str) -> StoreResult<Vec<(String, Vec<u8>)>> {
        let ns = ns.to_owned();
        self.readers
            .run(move |conn| {
                let mut stmt = conn
                    .prepare_cached("SELECT key, value FROM docs WHERE ns = ?1 ORDER BY key")
                    .map_err(sql_err)?;
                let rows = stmt
                    .query_map(params![ns], |r| Ok((r.get(0)?, r.get(1)?)))
                    .map_err(sql_err)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(sql_err)
            })
            .await
    }

    async fn doc_delete(&self, ns: &str, key: &str) -> StoreResult<bool> {
        let (ns, key) = (ns.to_owned(), key.to_owned());
        self.writer
            .run(move |conn| {
                conn.prepare_cached("DELETE FROM docs WHERE ns = ?1 AND key = ?2")
                    .and_then(|mut s| s.execute(params![ns, key]))
                    .map(|n| n > 0)
                    .map_err(sql_err)
            })
            .await
    }
}
