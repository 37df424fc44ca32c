//! Redis backend: sessions as hashes, an id index (sorted set) pruned of entries whose session
//! key expired, the upstream-id mapping as plain keys, and the event log as Redis Streams (entry
//! ids `ms-seq` are the event ids). Every key carries the idle TTL. Connections go through a
//! [`ConnectionManager`] (automatic reconnect); every operation is bounded by a timeout, and
//! connection failures are [`StoreError::Unavailable`]. Key layout: see [`scripts`].

mod scripts;

use crate::util::{duration_ms, expiry_cutoff, matches, page_limit};
use crate::{
    LoggedEvent, Retention, SessionFilter, SessionPage, SessionRecord, SessionStore, StoreError,
    StoreResult,
};
use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::streams::StreamRangeReply;
use ::redis::{Client, RedisError, Value};
use async_trait::async_trait;
use scripts::{
    ABSENT, CREATE_SCRIPT, DELETE_SCRIPT, DELETED, TOUCH_SCRIPT, TRIM_BYTES_SCRIPT, UPDATE_SCRIPT,
};
use std::future::Future;
use std::time::Duration;

/// Default retention of every event stream (`XADD … MAXLEN ~ N`).
pub const DEFAULT_MAX_EVENTS: usize = 10_000;

/// Ids fetched per round trip when scanning the index.
const SCAN_BATCH: usize = 200;

/// Entries read per stream and step by the byte budget's walk (inside its script).
const TRIM_PAGE: usize = 64;

/// Connect / response timeouts of the underlying connection, and the bound on a whole operation
/// (including waiting for a reconnect).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// When the delete script may delete.
enum DeleteIf {
    Always,
    /// Only if the session key is gone (pruning an index entry left by a TTL expiry).
    Absent,
    /// Only if the session's last activity is below this (ms).
    IdleBefore(u64),
}

/// The Redis store. Cloning shares the connection.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    ttl_ms: u64,
    max_events: usize,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("ttl_ms", &self.ttl_ms)
            .field("max_events", &self.max_events)
            .finish_non_exhaustive()
    }
}

fn redis_err(e: RedisError) -> StoreError {
    if e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
    {
        StoreError::Unavailable(format!("redis: {e}"))
    } else {
        StoreError::Backend(format!("redis: {e}"))
    }
}

/// Bounds `fut` by [`OP_TIMEOUT`] and maps its errors.
async fn bounded<T>(fut: impl Future<Output = Result<T, RedisError>>) -> StoreResult<T> {
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(r) => r.map_err(redis_err),
        Err(_) => Err(StoreError::Unavailable(format!(
            "redis: no answer within {OP_TIMEOUT:?}"
        ))),
    }
}

/// Stream entry ids are `ms-seq`, both canonical decimal u64s; anything else (`05-1`, `+5-1`,
/// which Redis would read as the same id) was never handed out.
fn is_stream_id(id: &str) -> bool {
    let canonical = |p: &str| p.parse::<u64>().is_ok_and(|n| n.to_string() == p);
    id.split_once('-')
        .is_some_and(|(ms, seq)| canonical(ms) && canonical(seq))
}

fn decode_record(
    id: &str,
    rec: Option<Vec<u8>>,
    last: Option<u64>,
) -> StoreResult<Option<SessionRecord>> {
    let Some(rec) = rec else {
        return Ok(None);
    };
    let mut rec: SessionRecord = serde_json::from_slice(&rec)
        .map_err(|e| StoreError::Corrupt(format!("redis: session `{id}`: {e}")))?;
    if let Some(last) = last {
        rec.last_active_ms = last;
    }
    Ok(Some(rec))
}

fn encode_record(rec: &SessionRecord) -> StoreResult<Vec<u8>> {
    serde_json::to_vec(rec)
        .map_err(|e| StoreError::Backend(format!("redis: encoding session: {e}")))
}

fn decode_events(reply: StreamRangeReply) -> StoreResult<Vec<LoggedEvent>> {
    reply
        .ids
        .into_iter()
        .map(|entry| match entry.map.get("data") {
            Some(Value::BulkString(data)) => Ok(LoggedEvent {
                data: data.clone(),
                id: entry.id,
            }),
            Some(Value::SimpleString(s)) => Ok(LoggedEvent {
                data: s.clone().into_bytes(),
                id: entry.id,
            }),
            _ => Err(StoreError::Corrupt(format!(
                "redis: event `{}` has no data",
                entry.id
            ))),
        })
        .collect()
}

/// A connection to the Redis at `url` (`redis://`, `rediss://` with feature `redis-tls`,
/// `redis+unix:///path`) with the store's timeouts: reconnects by itself after a failure.
/// Fails with `Unavailable` if the server cannot be reached now.
pub async fn redis_connection(url: &str) -> StoreResult<ConnectionManager> {
    let client = Client::open(url)
        .map_err(|e| StoreError::Backend(format!("redis: bad url `{url}`: {e}")))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    bounded(ConnectionManager::new_with_config(client, config)).await
}

impl RedisStore {
    /// Connects to `url` (`redis://`, `rediss://` with feature `redis-tls`, `redis+unix:///path`).
    /// `prefix` starts every key; `ttl` is the idle TTL every key gets (refreshed on
    /// create/update/touch). Fails with `Unavailable` if the server cannot be reached.
    pub async fn connect(url: &str, prefix: &str, ttl: Duration) -> StoreResult<RedisStore> {
        let conn = redis_connection(url).await?;
        Ok(RedisStore {
            conn,
            prefix: prefix.to_owned(),
            ttl_ms: duration_ms(ttl).max(1),
            max_events: DEFAULT_MAX_EVENTS,
        })
    }

    /// Sets the per-stream retention applied on every append (`MAXLEN ~ n`, at least 1).
    pub fn with_max_events(mut self, n: usize) -> Self {
        self.max_events = n.max(1);
        self
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn session_key(&self, id: &str) -> String {
        format!("{}session:{id}", self.prefix)
    }

    fn index_key(&self) -> String {
        format!("{}sessions", self.prefix)
    }

    fn upstream_key(&self, up: &str) -> String {
        format!("{}upstream:{up}", self.prefix)
    }

    fn streams_key(&self, session: &str) -> String {
        format!("{}streams:{session}", self.prefix)
    }

    fn bytes_key(&self, session: &str) -> String {
        format!("{}bytes:{session}", self.prefix)
    }

    fn events_key(&self, session: &str, stream: &str) -> String {
        format!("{}events:{session}:{stream}", self.prefix)
    }

    /// The hash of the documents of `ns` (no TTL: documents are kept until deleted).
    fn docs_key(&self, ns: &str) -> String {
        format!("{}docs:{ns}", self.prefix)
    }

    /// Runs the create or update script for `rec`.
    async fn write_record(
        &self,
        script: &::redis::Script,
        rec: &SessionRecord,
    ) -> StoreResult<bool> {
        let json = encode_record(rec)?;
        let mut inv = script.prepare_invoke();
        inv.key(self.session_key(&rec.id))
            .key(self.index_key())
            .arg(&self.prefix)
            .arg(&rec.id)
            .arg(self.ttl_ms)
            .arg(json)
            .arg(rec.last_active_ms)
            .arg(if rec.upstream_session_id.is_some() {
                "1"
            } else {
                "0"
            })
            .arg(rec.upstream_session_id.as_deref().unwrap_or(""));
        let mut conn = self.conn.clone();
        let n: i64 = bounded(inv.invoke_async(&mut conn)).await?;
        Ok(n == 1)
    }

    /// Runs the delete script with a condition (see [`scripts`]).
    async fn delete_script(&self, id: &str, condition: DeleteIf) -> StoreResult<i64> {
        let condition = match condition {
            DeleteIf::Always => String::new(),
            DeleteIf::Absent => "absent".to_owned(),
            DeleteIf::IdleBefore(cutoff) => cutoff.to_string(),
        };
        let mut inv = DELETE_SCRIPT.prepare_invoke();
        inv.key(self.session_key(id))
            .key(self.index_key())
            .arg(&self.prefix)
            .arg(id)
            .arg(condition);
        let mut conn = self.conn.clone();
        bounded(inv.invoke_async(&mut conn)).await
    }

    /// Fetches (record JSON, last) for each id, in one round trip.
    async fn fetch(&self, ids: &[String]) -> StoreResult<Vec<Option<SessionRecord>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = ::redis::pipe();
        for id in ids {
            pipe.cmd("HMGET")
                .arg(self.session_key(id))
                .arg("rec")
                .arg("last");
        }
        let mut conn = self.conn.clone();
        let rows: Vec<(Option<Vec<u8>>, Option<u64>)> =
            bounded(pipe.query_async(&mut conn)).await?;
        ids.iter()
            .zip(rows)
            .map(|(id, (rec, last))| decode_record(id, rec, last))
            .collect()
    }

    /// Walks the index in id order from after `after`, calling `visit` with every live record
    /// until it returns false. Index entries whose session key has expired are pruned (with
    /// their leftovers) and reported to `pruned`.
    async fn scan(
        &self,
        after: Option<&str>,
        mut visit: impl FnMut(SessionRecord) -> bool,
        mut pruned: impl FnMut(String),
    ) -> StoreResult<()> {
        let mut from = after.map_or_else(|| "-".to_owned(), |a| format!("({a}"));
        loop {
            let mut conn = self.conn.clone();
            let cmd = ::redis::cmd("ZRANGE")
                .arg(self.index_key())
                .arg(&from)
                .arg("+")
                .arg("BYLEX")
                .arg("LIMIT")
                .arg(0)
                .arg(SCAN_BATCH)
                .to_owned();
            let ids: Vec<String> = bounded(cmd.query_async(&mut conn)).await?;
            let full = ids.len() == SCAN_BATCH;
            let recs = self.fetch(&ids).await?;
            for (id, rec) in ids.iter().zip(recs) {
                match rec {
                    Some(rec) => {
                        if !visit(rec) {
                            return Ok(());
                        }
                    }
                    None => {
                        if self.delete_script(id, DeleteIf::Absent).await? == ABSENT {
                            pruned(id.clone());
                        }
                    }
                }
            }
            match ids.last() {
                Some(last) if full => from = format!("({last}"),
                _ => return Ok(()),
            }
        }
    }
}

#[async_trait]
impl SessionStore for RedisStore {
    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn create(&self, rec: &SessionRecord) -> StoreResult<()> {
        if self.write_record(&CREATE_SCRIPT, rec).await? {
            Ok(())
        } else {
            Err(StoreError::Exists(rec.id.clone()))
        }
    }

    async fn get(&self, id: &str) -> StoreResult<Option<SessionRecord>> {
        let mut conn = self.conn.clone();
        let cmd = ::redis::cmd("HMGET")
            .arg(self.session_key(id))
            .arg("rec")
            .arg("last")
            .to_owned();
        let (rec, last): (Option<Vec<u8>>, Option<u64>) =
            bounded(cmd.query_async(&mut conn)).await?;
        decode_record(id, rec, last)
    }

    async fn get_many(&self, ids: &[String]) -> StoreResult<Vec<Option<SessionRecord>>> {
        self.fetch(ids).await
    }

    async fn update(&self, rec: &SessionRecord) -> StoreResult<bool> {
        self.write_record(&UPDATE_SCRIPT, rec).await
    }

    async fn update_many(&self, recs: &[SessionRecord]) -> StoreResult<usize> {
        let mut n = 0;
        for rec in recs {
            n += usize::from(self.update(rec).await?);
        }
        Ok(n)
    }

    async fn touch_many(&self, touches: &[(String, u64)]) -> StoreResult<usize> {
        if touches.is_empty() {
            return Ok(0);
        }
        let mut inv = TOUCH_SCRIPT.prepare_invoke();
        inv.arg(&self.prefix).arg(self.ttl_ms);
        for (id, at) in touches {
            inv.arg(id).arg(*at);
        }
        let mut conn = self.conn.clone();
        bounded(inv.invoke_async(&mut conn)).await
    }

    async fn delete(&self, id: &str) -> StoreResult<bool> {
        Ok(self.delete_script(id, DeleteIf::Always).await? == DELETED)
    }

    async fn list(
        &self,
        filter: &SessionFilter,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<SessionPage> {
        let limit = page_limit(limit);
        let mut sessions = Vec::new();
        self.scan(
            after,
            |rec| {
                if matches(filter, &rec) {
                    sessions.push(rec);
                }
                sessions.len() <= limit
            },
            |_| {},
        )
        .await?;
        Ok(crate::util::page(sessions, limit))
    }

    async fn count(&self, filter: &SessionFilter) -> StoreResult<usize> {
        let mut n = 0;
        self.scan(
            None,
            |rec| {
                n += usize::from(matches(filter, &rec));
                true
            },
            |_| {},
        )
        .await?;
        Ok(n)
    }

    /// Also reports ids whose session key Redis had already expired by TTL (found in the index).
    async fn expire(&self, now_ms: u64, idle_ttl: Duration) -> StoreResult<Vec<String>> {
        let Some(cutoff) = expiry_cutoff(now_ms, idle_ttl) else {
            return Ok(Vec::new());
        };
        let mut idle = Vec::new();
        let mut gone = Vec::new();
        self.scan(
            None,
            |rec| {
                if rec.last_active_ms < cutoff {
                    idle.push(rec.id);
                }
                true
            },
            |id| gone.push(id),
        )
        .await?;
        for id in idle {
            // Conditional: a session touched since the scan (another replica) is kept.
            if self
                .delete_script(&id, DeleteIf::IdleBefore(cutoff))
                .await?
                != 0
            {
                gone.push(id);
            }
        }
        gone.sort();
        Ok(gone)
    }

    async fn find_by_upstream_id(&self, upstream_session_id: &str) -> StoreResult<Option<String>> {
        let mut conn = self.conn.clone();
        let cmd = ::redis::cmd("GET")
            .arg(self.upstream_key(upstream_session_id))
            .to_owned();
        bounded(cmd.query_async(&mut conn)).await
    }

    async fn append_event(&self, session: &str, stream: &str, data: &[u8]) -> StoreResult<String> {
        let mut ids = self.append_events(session, stream, &[data]).await?;
        ids.pop()
            .ok_or_else(|| StoreError::Backend("XADD returned no id".into()))
    }

    async fn append_events(
        &self,
        session: &str,
        stream: &str,
        data: &[&[u8]],
    ) -> StoreResult<Vec<String>> {
        if data.is_empty() {
            return Ok(Vec::new());
        }
        let key = self.events_key(session, stream);
        let streams = self.streams_key(session);
        let mut pipe = ::redis::pipe();
        pipe.atomic();
        for d in data {
            pipe.cmd("XADD")
                .arg(&key)
                .arg("MAXLEN")
                .arg("~")
                .arg(self.max_events)
                .arg("*")
                .arg("data")
                .arg(*d);
        }
        let bytes: u64 = data.iter().map(|d| d.len() as u64).sum();
        let bytes_key = self.bytes_key(session);
        pipe.cmd("PEXPIRE")
            .arg(&key)
            .arg(self.ttl_ms)
            .ignore()
            .cmd("INCRBY")
            .arg(&bytes_key)
            .arg(bytes)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&bytes_key)
            .arg(self.ttl_ms)
            .ignore()
            .cmd("SADD")
            .arg(&streams)
            .arg(stream)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&streams)
            .arg(self.ttl_ms)
            .ignore();
        let mut conn = self.conn.clone();
        bounded(pipe.query_async(&mut conn)).await
    }

    async fn events_after(
        &self,
        session: &str,
        stream: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<LoggedEvent>> {
        let key = self.events_key(session, stream);
        let mut conn = self.conn.clone();
        let Some(after) = after else {
            if limit == 0 {
                return Ok(Vec::new());
            }
            let cmd = ::redis::cmd("XRANGE")
                .arg(&key)
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(limit)
                .to_owned();
            return decode_events(bounded(cmd.query_async(&mut conn)).await?);
        };
        if !is_stream_id(after) {
            return Err(StoreError::EventGone(after.to_owned()));
        }
        // Both reads in one MULTI so they see the same stream.
        let mut pipe = ::redis::pipe();
        pipe.atomic()
            .cmd("XRANGE")
            .arg(&key)
            .arg(after)
            .arg(after)
            .arg("COUNT")
            .arg(1)
            .cmd("XRANGE")
            .arg(&key)
            .arg(format!("({after}"))
            .arg("+")
            .arg("COUNT")
            .arg(limit.max(1));
        let (anchor, rest): (StreamRangeReply, StreamRangeReply) =
            bounded(pipe.query_async(&mut conn)).await?;
        if anchor.ids.is_empty() {
            return Err(StoreError::EventGone(after.to_owned()));
        }
        let mut events = decode_events(rest)?;
        events.truncate(limit);
        Ok(events)
    }

    async fn trim_events(
        &self,
        session: &str,
        stream: &str,
        retention: Retention,
    ) -> StoreResult<usize> {
        let key = self.events_key(session, stream);
        let mut conn = self.conn.clone();
        let mut n = 0;
        if let Some(max_age) = retention.max_age {
            // Entry ids carry the server's clock, so the cutoff uses it too.
            let (secs, micros): (u64, u64) =
                bounded(::redis::cmd("TIME").query_async(&mut conn)).await?;
            let now = secs.saturating_mul(1000).saturating_add(micros / 1000);
            let min_id = now.saturating_sub(duration_ms(max_age));
            let cmd = ::redis::cmd("XTRIM")
                .arg(&key)
                .arg("MINID")
                .arg("=")
                .arg(min_id)
                .to_owned();
            n += bounded(cmd.query_async::<usize>(&mut conn)).await?;
        }
        if let Some(max) = retention.max_events {
            let cmd = ::redis::cmd("XTRIM")
                .arg(&key)
                .arg("MAXLEN")
                .arg("=")
                .arg(max)
                .to_owned();
            n += bounded(cmd.query_async::<usize>(&mut conn)).await?;
        }
        Ok(n)
    }

    async fn trim_session_bytes(&self, session: &str, max_bytes: u64) -> StoreResult<usize> {
        let mut inv = TRIM_BYTES_SCRIPT.prepare_invoke();
        inv.arg(&self.prefix)
            .arg(session)
            .arg(max_bytes)
            .arg(TRIM_PAGE);
        let mut conn = self.conn.clone();
        bounded(inv.invoke_async(&mut conn)).await
    }

    async fn ping(&self) -> StoreResult<()> {
        let mut conn = self.conn.clone();
        let pong: String = bounded(::redis::cmd("PING").query_async(&mut conn)).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(StoreError::Backend(format!(
                "redis: PING answered `{pong}`"
            )))
        }
    }

    async fn doc_put(&self, ns: &str, key: &str, value: &[u8]) -> StoreResult<()> {
        let mut conn = self.conn.clone();
        let cmd = ::redis::cmd("HSET")
            .arg(self.docs_key(ns))
            .arg(key)
            .arg(value)
            .to_owned();
        let _: i64 = bounded(cmd.query_async(&mut conn)).await?;
        Ok(())
    }

    async fn doc_get(&self, ns: &str, key: &str) -> StoreResult<Option<Vec<u8>>> {
        let mut conn = self.conn.clone();
        let cmd = ::redis::cmd("HGET")
            .arg(self.docs_key(ns))
            .arg(key)
            .to_owned();
        bounded(cmd.query_async(&mut conn)).await
    }

    async fn doc_list(&self, ns: &str) -> StoreResult<Vec<(String, Vec<u8>)>> {
        let mut conn = self.conn.clone();
        let cmd = ::redis::cmd("HGETALL").arg(self.docs_key(ns)).to_owned();
        let mut all: Vec<(String, Vec<u8>)> = bounded(cmd.query_async(&mut conn)).await?;
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(all)
    }

    async fn doc_delete(&self, ns: &str, key: &str) -> StoreResult<bool> {
        let mut conn = self.conn.clone();
        let cmd = ::redis::cmd("HDEL")
            .arg(self.docs_key(ns))
            .arg(key)
            .to_owned();
        let n: i64 = bounded(cmd.query_async(&mut conn)).await?;
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::is_stream_id;

    #[test]
    fn stream_ids() {
        assert!(is_stream_id("1700000000000-0"));
        assert!(is_stream_id("1-12"));
        assert!(!is_stream_id("1"));
        assert!(!is_stream_id("1-"));
        assert!(!is_stream_id("-1"));
        assert!(!is_stream_id("1-2-3"));
        assert!(!is_stream_id("a-1"));
        assert!(!is_stream_id("01-1"));
        assert!(!is_stream_id("1-01"));
        assert!(!is_stream_id("+1-1"));
        assert!(!is_stream_id(""));
    }
}
