//! Redis backend: sessions as hashes, an id index (sorted set) pruned of entries whose session
//! key expired, the upstream-id mapping as plain keys, and the event log as Redis Streams (entry
//! ids `ms-seq` are the event ids). Every key carries the idle TTL. One server, a Redis Cluster
//! or the primary of a Sentinel set ([`conn`]); every operation is bounded by a timeout, and
//! failures that may pass (unreachable, failover) are [`StoreError::Unavailable`]. Key layout:
//! see [`scripts`].
//!
//! A session's keys share one hash slot and each of its scripts touches that slot only, so the
//! same layout works on a Cluster. The two keys shared by all sessions, the index and the
//! upstream-id mapping, are in other slots, so they are written after the session's script
//! rather than inside it, in an order that keeps them usable if a replica dies in between:
//! - create/update/touch write the session first, then list it in the index (and touch lists
//!   it again, so an entry lost between the two comes back with the session's next activity);
//!   delete removes the session first, then its index entry. An index entry without a session
//!   is pruned by the next listing (and listed again if the session was created meanwhile).
//! - the mapping is written after the session and only trusted when the session it names still
//!   carries that upstream id (`find_by_upstream_id` checks), so a stale one is harmless; it
//!   expires with the idle TTL.

mod conn;
mod scripts;

pub use conn::{RedisConn, SentinelConn};

use crate::util::{duration_ms, expiry_cutoff, matches, page_limit};
use crate::{
    LoggedEvent, Retention, SessionFilter, SessionPage, SessionRecord, SessionStore, StoreError,
    StoreResult,
};
use ::redis::streams::StreamRangeReply;
use ::redis::{RedisError, Script, ScriptInvocation, Value};
use async_trait::async_trait;
use futures_util::{StreamExt, TryStreamExt};
use scripts::{
    ABSENT, CHANGED, CREATE_SCRIPT, DELETE_SCRIPT, DELETED, KEPT, SWAP_SCRIPT, SWAPPED,
    TOUCH_SCRIPT, TRIM_AGE_SCRIPT, TRIM_BYTES_SCRIPT, UNMAP_SCRIPT, UPDATE_SCRIPT,
};
use std::borrow::Cow;
use std::future::Future;
use std::time::Duration;

/// Default retention of every event stream (`XADD … MAXLEN ~ N`).
pub const DEFAULT_MAX_EVENTS: usize = 10_000;

/// Ids fetched per round trip when scanning the index.
const SCAN_BATCH: usize = 200;

/// Entries read per stream and step by the byte budget's walk (inside its script).
const TRIM_PAGE: usize = 64;

/// Commands of one operation in flight at once when it reads or touches many sessions (each
/// session is its own hash slot; the connections pipeline them).
const CONCURRENCY: usize = 32;

/// Times `claim_owner` reads the record again when another write changed it between its read
/// and its compare-and-set (an activity touch does not: it writes another field).
const CLAIM_ATTEMPTS: usize = 16;

/// The bound on a whole call (including waiting for a reconnect).
const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// When the delete script may delete.
enum DeleteIf {
    Always,
    /// Only if the session key is gone (pruning an index entry left by a TTL expiry).
    Absent,
    /// Only if the session's last activity is below this (ms).
    IdleBefore(u64),
}

/// What the session scripts report besides their code: the session's upstream id, if any.
type ScriptReply = (i64, i64, String);

/// The Redis store. Cloning shares the connection.
#[derive(Clone)]
pub struct RedisStore {
    conn: RedisConn,
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
    if conn::transient(&e) {
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

/// A session id as its keys' hash tag: `%`, `{` and `}` percent-escaped (so the tag ends where
/// the id does, and two ids never share a key), the empty id as `%` (an empty tag would not be
/// one).
fn tag(id: &str) -> Cow<'_, str> {
    if id.is_empty() {
        return Cow::Borrowed("%");
    }
    if !id.contains(['%', '{', '}']) {
        return Cow::Borrowed(id);
    }
    let mut out = String::with_capacity(id.len() + 8);
    for c in id.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The keys of one session (see [`scripts`]).
struct SessionKeys {
    session: String,
    streams: String,
    bytes: String,
    /// `P events:T:`; a stream's key is this plus its name.
    events: String,
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

/// A connection to the Redis `url` names, with the store's timeouts: `redis://`, `rediss://`
/// (feature `redis-tls`), `redis+unix:///path`, `redis+cluster://HOST:PORT[,HOST:PORT…]` (a
/// Redis Cluster, from its seed nodes) or `redis+sentinel://HOST:PORT[,…]/SERVICE[/DB]` (the
/// primary the Sentinels name, followed across failovers). It reconnects by itself after a
/// failure. Fails with `Unavailable` if the server cannot be reached now.
pub async fn redis_connection(url: &str) -> StoreResult<RedisConn> {
    // Boxed: the cluster and Sentinel connects are deep futures, and callers nest this in
    // their own request handling.
    match tokio::time::timeout(OP_TIMEOUT, Box::pin(conn::open(url))).await {
        Ok(r) => r,
        Err(_) => Err(StoreError::Unavailable(format!(
            "redis: `{}` did not answer within {OP_TIMEOUT:?}",
            crate::util::url_label(url)
        ))),
    }
}

/// Checks a Redis URL without connecting (for configuration checks).
pub(crate) fn check_url(url: &str) -> StoreResult<()> {
    conn::parse(url).map(|_| ())
}

impl RedisStore {
    /// Connects to `url` (any form [`redis_connection`] takes). `prefix` starts every key (it
    /// cannot contain `{` or `}`); `ttl` is the idle TTL every key gets (refreshed on
    /// create/update/touch). Fails with `Unavailable` if the server cannot be reached.
    pub async fn connect(url: &str, prefix: &str, ttl: Duration) -> StoreResult<RedisStore> {
        crate::check_redis_prefix(prefix)
            .map_err(|why| StoreError::Backend(format!("redis: key prefix {why}")))?;
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

    /// Whether the store is on a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.conn.is_cluster()
    }

    fn keys(&self, id: &str) -> SessionKeys {
        let (p, t) = (&self.prefix, tag(id));
        SessionKeys {
            session: format!("{p}session:{{{t}}}"),
            streams: format!("{p}streams:{{{t}}}"),
            bytes: format!("{p}bytes:{{{t}}}"),
            events: format!("{p}events:{{{t}}}:"),
        }
    }

    fn index_key(&self) -> String {
        format!("{}sessions", self.prefix)
    }

    fn upstream_key(&self, up: &str) -> String {
        format!("{}upstream:{up}", self.prefix)
    }

    /// The hash of the documents of `ns` (no TTL: documents are kept until deleted).
    fn docs_key(&self, ns: &str) -> String {
        format!("{}docs:{ns}", self.prefix)
    }

    /// An invocation of a session script with the session's keys and events prefix.
    fn session_call<'a>(script: &'a Script, keys: &SessionKeys) -> ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        inv.key(&keys.session)
            .key(&keys.streams)
            .key(&keys.bytes)
            .arg(&keys.events);
        inv
    }

    async fn invoke<T: ::redis::FromRedisValue>(
        &self,
        inv: &ScriptInvocation<'_>,
    ) -> StoreResult<T> {
        let mut conn = self.conn.clone();
        bounded(inv.invoke_async(&mut conn)).await
    }

    async fn query<T: ::redis::FromRedisValue>(&self, cmd: &::redis::Cmd) -> StoreResult<T> {
        let mut conn = self.conn.clone();
        bounded(cmd.query_async(&mut conn)).await
    }

    /// Lists `ids` in the index and refreshes its TTL (one slot: one pipeline).
    async fn index_add(&self, ids: &[&str]) -> StoreResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let index = self.index_key();
        let mut pipe = ::redis::pipe();
        let zadd = pipe.cmd("ZADD").arg(&index);
        for id in ids {
            zadd.arg(0).arg(*id);
        }
        zadd.ignore()
            .cmd("PEXPIRE")
            .arg(&index)
            .arg(self.ttl_ms)
            .ignore();
        let mut conn = self.conn.clone();
        bounded(pipe.query_async::<()>(&mut conn)).await
    }

    /// Points the mapping of upstream id `up` at session `id` (for the idle TTL).
    async fn map(&self, up: &str, id: &str) -> StoreResult<()> {
        let cmd = ::redis::cmd("SET")
            .arg(self.upstream_key(up))
            .arg(id)
            .arg("PX")
            .arg(self.ttl_ms)
            .to_owned();
        self.query::<()>(&cmd).await
    }

    /// Drops the mapping of `up` if it still names `id`.
    async fn unmap(&self, up: &str, id: &str) -> StoreResult<()> {
        let mut inv = UNMAP_SCRIPT.prepare_invoke();
        inv.key(self.upstream_key(up)).arg(id);
        self.invoke::<i64>(&inv).await.map(drop)
    }

    /// Runs the create or update script for `rec`.
    async fn write_record(&self, script: &Script, rec: &SessionRecord) -> StoreResult<ScriptReply> {
        let json = encode_record(rec)?;
        let keys = self.keys(&rec.id);
        let mut inv = Self::session_call(script, &keys);
        inv.arg(self.ttl_ms)
            .arg(json)
            .arg(rec.last_active_ms)
            .arg(if rec.upstream_session_id.is_some() {
                "1"
            } else {
                "0"
            })
            .arg(rec.upstream_session_id.as_deref().unwrap_or(""));
        self.invoke(&inv).await
    }

    /// Runs the delete script with a condition (see [`scripts`]), then drops the session's
    /// index entry and mapping. Returns the script's code.
    async fn delete_script(&self, id: &str, condition: DeleteIf) -> StoreResult<i64> {
        let absent = matches!(condition, DeleteIf::Absent);
        let condition = match condition {
            DeleteIf::Always => String::new(),
            DeleteIf::Absent => "absent".to_owned(),
            DeleteIf::IdleBefore(cutoff) => cutoff.to_string(),
        };
        let keys = self.keys(id);
        let mut inv = Self::session_call(&DELETE_SCRIPT, &keys);
        inv.arg(condition);
        let (code, had_up, up): ScriptReply = self.invoke(&inv).await?;
        if code == KEPT {
            return Ok(code);
        }
        let zrem = ::redis::cmd("ZREM")
            .arg(self.index_key())
            .arg(id)
            .to_owned();
        self.query::<i64>(&zrem).await?;
        if had_up == 1 {
            self.unmap(&up, id).await?;
        }
        if absent {
            // Created meanwhile (between the script and ZREM)? Then it is listed again.
            let exists = ::redis::cmd("EXISTS").arg(&keys.session).to_owned();
            if self.query::<i64>(&exists).await? == 1 {
                self.index_add(&[id]).await?;
            }
        }
        Ok(code)
    }

    /// Fetches the records of `ids`, in order (one command per session, pipelined). Owned ids:
    /// the stream's closures then take no borrowed arguments (`async_trait` needs `Send`).
    async fn fetch(&self, ids: &[String]) -> StoreResult<Vec<Option<SessionRecord>>> {
        futures_util::stream::iter(ids.to_vec())
            .map(|id| async move {
                let cmd = ::redis::cmd("HMGET")
                    .arg(self.keys(&id).session)
                    .arg("rec")
                    .arg("last")
                    .to_owned();
                let (rec, last): (Option<Vec<u8>>, Option<u64>) = self.query(&cmd).await?;
                decode_record(&id, rec, last)
            })
            .buffered(CONCURRENCY)
            .try_collect()
            .await
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
            let cmd = ::redis::cmd("ZRANGE")
                .arg(self.index_key())
                .arg(&from)
                .arg("+")
                .arg("BYLEX")
                .arg("LIMIT")
                .arg(0)
                .arg(SCAN_BATCH)
                .to_owned();
            let ids: Vec<String> = self.query(&cmd).await?;
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
        let (created, _, _) = self.write_record(&CREATE_SCRIPT, rec).await?;
        if created == 0 {
            return Err(StoreError::Exists(rec.id.clone()));
        }
        let shared = async {
            self.index_add(&[&rec.id]).await?;
            if let Some(up) = &rec.upstream_session_id {
                self.map(up, &rec.id).await?;
            }
            Ok(())
        };
        if let Err(e) = shared.await {
            // A create that fails leaves nothing behind (a full Redis still deletes).
            if let Err(undo) = self.delete_script(&rec.id, DeleteIf::Always).await {
                tracing::warn!(error = %undo, "redis: could not remove a half-created session");
            }
            return Err(e);
        }
        Ok(())
    }

    async fn get(&self, id: &str) -> StoreResult<Option<SessionRecord>> {
        let cmd = ::redis::cmd("HMGET")
            .arg(self.keys(id).session)
            .arg("rec")
            .arg("last")
            .to_owned();
        let (rec, last): (Option<Vec<u8>>, Option<u64>) = self.query(&cmd).await?;
        decode_record(id, rec, last)
    }

    async fn get_many(&self, ids: &[String]) -> StoreResult<Vec<Option<SessionRecord>>> {
        self.fetch(ids).await
    }

    async fn update(&self, rec: &SessionRecord) -> StoreResult<bool> {
        let (updated, had_up, old) = self.write_record(&UPDATE_SCRIPT, rec).await?;
        if updated == 0 {
            return Ok(false);
        }
        self.index_add(&[&rec.id]).await?;
        if let Some(up) = &rec.upstream_session_id {
            self.map(up, &rec.id).await?;
        }
        if had_up == 1 && rec.upstream_session_id.as_deref() != Some(old.as_str()) {
            self.unmap(&old, &rec.id).await?;
        }
        Ok(true)
    }

    async fn update_many(&self, recs: &[SessionRecord]) -> StoreResult<usize> {
        let mut n = 0;
        for rec in recs {
            n += usize::from(self.update(rec).await?);
        }
        Ok(n)
    }

    async fn touch_many(&self, touches: &[(String, u64)]) -> StoreResult<usize> {
        let touched: Vec<(String, ScriptReply)> = futures_util::stream::iter(touches.to_vec())
            .map(|(id, at)| async move {
                let keys = self.keys(&id);
                let mut inv = Self::session_call(&TOUCH_SCRIPT, &keys);
                inv.arg(self.ttl_ms).arg(at);
                let reply: ScriptReply = self.invoke(&inv).await?;
                Ok::<_, StoreError>((id, reply))
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        let mut live = Vec::new();
        let mut mapped = Vec::new();
        for (id, (exists, has_up, up)) in touched {
            if exists == 1 {
                if has_up == 1 {
                    mapped.push((up, id.clone()));
                }
                live.push(id);
            }
        }
        self.index_add(&live.iter().map(String::as_str).collect::<Vec<_>>())
            .await?;
        futures_util::stream::iter(mapped)
            .map(|(up, id)| async move { self.map(&up, &id).await })
            .buffer_unordered(CONCURRENCY)
            .try_collect::<()>()
            .await?;
        Ok(live.len())
    }

    async fn delete(&self, id: &str) -> StoreResult<bool> {
        Ok(self.delete_script(id, DeleteIf::Always).await? == DELETED)
    }

    /// The record is read, checked and rewritten with the new owner by a compare-and-set of
    /// its bytes ([`SWAP_SCRIPT`]: one key, so one slot on a Cluster); a record another write
    /// changed in between is read again.
    async fn claim_owner(
        &self,
        id: &str,
        expected: Option<&str>,
        owner: &str,
    ) -> StoreResult<bool> {
        let key = self.keys(id).session;
        for _ in 0..CLAIM_ATTEMPTS {
            let read = ::redis::cmd("HGET").arg(&key).arg("rec").to_owned();
            let Some(raw) = self.query::<Option<Vec<u8>>>(&read).await? else {
                return Ok(false);
            };
            let mut rec: SessionRecord = serde_json::from_slice(&raw)
                .map_err(|e| StoreError::Corrupt(format!("redis: session `{id}`: {e}")))?;
            if rec.status != crate::SessionStatus::Active || rec.owner.as_deref() != expected {
                return Ok(false);
            }
            rec.owner = Some(owner.to_owned());
            let mut inv = SWAP_SCRIPT.prepare_invoke();
            inv.key(&key).arg(raw).arg(encode_record(&rec)?);
            match self.invoke::<i64>(&inv).await? {
                SWAPPED => return Ok(true),
                CHANGED => continue,
                _ => return Ok(false),
            }
        }
        Err(StoreError::Unavailable(
            "redis: a session record kept changing while it was being claimed".to_owned(),
        ))
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
                != KEPT
            {
                gone.push(id);
            }
        }
        gone.sort();
        Ok(gone)
    }

    /// The mapping is trusted only while the session it names carries that upstream id.
    async fn find_by_upstream_id(&self, upstream_session_id: &str) -> StoreResult<Option<String>> {
        let get = ::redis::cmd("GET")
            .arg(self.upstream_key(upstream_session_id))
            .to_owned();
        let Some(id) = self.query::<Option<String>>(&get).await? else {
            return Ok(None);
        };
        let up = ::redis::cmd("HGET")
            .arg(self.keys(&id).session)
            .arg("up")
            .to_owned();
        let up: Option<String> = self.query(&up).await?;
        Ok((up.as_deref() == Some(upstream_session_id)).then_some(id))
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
        let keys = self.keys(session);
        let key = format!("{}{stream}", keys.events);
        // One slot (the session's tag), so one transaction even on a Cluster.
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
        pipe.cmd("PEXPIRE")
            .arg(&key)
            .arg(self.ttl_ms)
            .ignore()
            .cmd("INCRBY")
            .arg(&keys.bytes)
            .arg(bytes)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&keys.bytes)
            .arg(self.ttl_ms)
            .ignore()
            .cmd("SADD")
            .arg(&keys.streams)
            .arg(stream)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&keys.streams)
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
        let key = format!("{}{stream}", self.keys(session).events);
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
            return decode_events(self.query(&cmd).await?);
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
        let mut conn = self.conn.clone();
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
        let key = format!("{}{stream}", self.keys(session).events);
        let mut n = 0;
        if let Some(max_age) = retention.max_age {
            // By the clock of the server that holds the stream (entry ids carry it).
            let mut inv = TRIM_AGE_SCRIPT.prepare_invoke();
            inv.key(&key).arg(duration_ms(max_age));
            n += self.invoke::<usize>(&inv).await?;
        }
        if let Some(max) = retention.max_events {
            let cmd = ::redis::cmd("XTRIM")
                .arg(&key)
                .arg("MAXLEN")
                .arg("=")
                .arg(max)
                .to_owned();
            n += self.query::<usize>(&cmd).await?;
        }
        Ok(n)
    }

    async fn trim_session_bytes(&self, session: &str, max_bytes: u64) -> StoreResult<usize> {
        let keys = self.keys(session);
        let mut inv = TRIM_BYTES_SCRIPT.prepare_invoke();
        inv.key(&keys.bytes)
            .key(&keys.streams)
            .arg(&keys.events)
            .arg(max_bytes)
            .arg(TRIM_PAGE);
        self.invoke(&inv).await
    }

    /// On a Cluster, every primary must answer.
    async fn ping(&self) -> StoreResult<()> {
        let pong: String = self.query(&::redis::cmd("PING")).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(StoreError::Backend(format!(
                "redis: PING answered `{pong}`"
            )))
        }
    }

    async fn doc_put(&self, ns: &str, key: &str, value: &[u8]) -> StoreResult<()> {
        let cmd = ::redis::cmd("HSET")
            .arg(self.docs_key(ns))
            .arg(key)
            .arg(value)
            .to_owned();
        self.query::<i64>(&cmd).await.map(drop)
    }

    async fn doc_get(&self, ns: &str, key: &str) -> StoreResult<Option<Vec<u8>>> {
        let cmd = ::redis::cmd("HGET")
            .arg(self.docs_key(ns))
            .arg(key)
            .to_owned();
        self.query(&cmd).await
    }

    async fn doc_list(&self, ns: &str) -> StoreResult<Vec<(String, Vec<u8>)>> {
        let cmd = ::redis::cmd("HGETALL").arg(self.docs_key(ns)).to_owned();
        let mut all: Vec<(String, Vec<u8>)> = self.query(&cmd).await?;
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(all)
    }

    async fn doc_delete(&self, ns: &str, key: &str) -> StoreResult<bool> {
        let cmd = ::redis::cmd("HDEL")
            .arg(self.docs_key(ns))
            .arg(key)
            .to_owned();
        let n: i64 = self.query(&cmd).await?;
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::{is_stream_id, tag};

    #[test]
    fn tags_end_where_the_id_does() {
        assert_eq!(tag("3a35c0ffee"), "3a35c0ffee");
        assert_eq!(tag(""), "%");
        assert_eq!(tag("a}b{c%"), "a%7Db%7Bc%25");
        // Injective: an id that looks escaped is escaped again.
        assert_ne!(tag("%7D"), tag("}"));
    }

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
