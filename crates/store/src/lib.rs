//! The session store: sessions, the proxy↔upstream id mapping, and the SSE event log that makes
//! proxy-owned resumption possible. One async trait, [`SessionStore`], with one contract test
//! suite (module `contract`, feature `contract-tests`) that every backend must pass.
//!
//! Backends: `memory` ([`MemoryStore`]), `sqlite` ([`SqliteStore`], feature `sqlite`), `redis`
//! ([`RedisStore`], feature `redis`: one server, a Redis Cluster or a Sentinel-monitored
//! primary; `rediss://` needs feature `redis-tls`). [`open()`] picks one
//! from a spec string. [`ActivityCoalescer`] turns per-frame activity into one `touch_many` per
//! interval.
//!
//! Semantics shared by every backend (checked by the contract suite):
//! - `list` pages are ordered by id; `limit` is clamped to at least 1; `next` is the last id of
//!   the page when more matching sessions follow, else `None`.
//! - `expire(now_ms, idle_ttl)` deletes sessions with `last_active_ms < now_ms - idle_ttl`
//!   (idle for strictly longer than `idle_ttl`); nothing expires while `now_ms < idle_ttl`.
//! - `claim_owner` is a compare-and-set of the record's `owner` alone: concurrent claims of
//!   one session from the same expected owner, from any number of replicas, succeed once.
//! - `find_by_upstream_id` follows `update` (old upstream id dropped, new one added) and goes
//!   away with the session. Upstream ids are expected to be unique; if several sessions carry the
//!   same one, which of them is returned is unspecified.
//! - Events may be appended to a stream of a session id that has no record; `delete` of that id
//!   still removes them (and returns false).
//! - Event ids are opaque strings (`[A-Za-z0-9-]`), unique within their stream and handed out in
//!   increasing order (memory: `1`, `2`, …; sqlite: global rowids; redis: `ms-seq`), never
//!   reused after a trim. `events_after` with an id that is not (or no longer) in that stream,
//!   including a non-canonical spelling of one, is `EventGone`.
//! - `trim_session_bytes(session, max)` keeps the newest events of the session (all its streams
//!   together) whose payloads fit in `max` bytes and drops every older one: walking from the
//!   newest event back, the first that does not fit is dropped with everything older. Within a
//!   stream that is append order; across streams memory and sqlite use append order and redis
//!   entry ids (server time: events of different streams appended within one millisecond are in
//!   no defined order).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::time::Duration;

pub mod coalesce;
#[cfg(feature = "contract-tests")]
pub mod contract;
mod failover;
mod memory;
mod metered;
mod open;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "sqlite")]
mod sqlite;
mod util;

#[cfg(feature = "redis")]
pub use self::redis::{RedisConn, RedisStore, SentinelConn, redis_connection};
pub use coalesce::ActivityCoalescer;
pub use failover::{FailoverStore, OnOutage};
pub use memory::MemoryStore;
pub use metered::{BUCKETS as OP_BUCKETS, MeteredStore, OpSample};
pub use open::{OpenOptions, check_redis_prefix, check_spec, open};
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;

/// Lifecycle state of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    /// Live.
    Active,
    /// Ended (deleted by the client, reaped, or its upstream died); kept for inspection until it
    /// expires.
    Ended,
}

/// Everything the proxy persists about one session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The proxy-minted session id (what the client sees).
    pub id: String,
    /// The route that created the session (`""` for the default target, a target name, or an
    /// absolute URI key).
    pub route: String,
    /// Human-readable description of the upstream (URL or command line).
    pub upstream: String,
    /// The upstream's own session id (HTTP upstreams), never shown to the client.
    pub upstream_session_id: Option<String>,
    /// Negotiated protocol version, once known.
    pub protocol_version: Option<String>,
    /// `clientInfo` from `initialize`.
    pub client_info: Option<serde_json::Value>,
    /// `capabilities` from `initialize`.
    pub client_capabilities: Option<serde_json::Value>,
    /// Authenticated principal (empty until auth exists).
    pub principal: Option<String>,
    /// Id of the proxy replica that owns the session's upstream (e.g. its stdio child).
    pub owner: Option<String>,
    /// Lifecycle state.
    pub status: SessionStatus,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Last activity, milliseconds since the Unix epoch.
    pub last_active_ms: u64,
    /// What a composite session needs to continue on another replica (its members' upstream
    /// sessions, the client's `initialize`), as the proxy writes it; opaque to the store.
    /// `None` for every other session (and in records written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub composite: Option<serde_json::Value>,
}

/// Which sessions a listing or count selects. Every `Some` field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionFilter {
    /// Only sessions in this state.
    pub status: Option<SessionStatus>,
    /// Only sessions of this route.
    pub route: Option<String>,
    /// Only sessions owned by this replica.
    pub owner: Option<String>,
    /// Only sessions of this principal.
    pub principal: Option<String>,
    /// Only sessions whose last activity is at or before this time (ms since epoch).
    pub idle_since_ms: Option<u64>,
}

/// One page of a listing, ordered by session id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionPage {
    /// The sessions of this page.
    pub sessions: Vec<SessionRecord>,
    /// Pass as `after` to get the next page; `None` when this is the last page.
    pub next: Option<String>,
}

/// An event of the log: its store-assigned id and the bytes the proxy sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedEvent {
    /// Opaque, store-assigned, strictly increasing within its stream. Contains only
    /// `[A-Za-z0-9-]` so the proxy can embed it in an SSE event id.
    pub id: String,
    /// The payload (a JSON-RPC message, or empty for a priming event).
    pub data: Vec<u8>,
}

/// How much of an event stream to keep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep at most this many events per stream (oldest dropped first).
    pub max_events: Option<usize>,
    /// Drop events older than this.
    pub max_age: Option<Duration>,
}

/// Reachability of a store, see [`SessionStore::health`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StoreHealth {
    /// The backend answers.
    pub healthy: bool,
    /// Outages seen since start (transitions to unreachable).
    pub outages: u64,
    /// Serving from the local memory fallback because the backend is down.
    pub degraded: bool,
}

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `create` of an id that exists.
    #[error("session `{0}` already exists")]
    Exists(String),
    /// The requested event id is unknown or was trimmed: the events after it cannot be replayed.
    #[error("event `{0}` is not in the log (unknown, or trimmed by retention)")]
    EventGone(String),
    /// The backend is unreachable (e.g. Redis down); retrying later may work.
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    /// Stored data could not be decoded.
    #[error("corrupt session store data: {0}")]
    Corrupt(String),
    /// Anything else the backend reported.
    #[error("session store error: {0}")]
    Backend(String),
}

/// Result of store operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// The session store contract. Implementations must be safe to share between tasks and, for
/// shared backends, between proxy replicas.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Backend name for logs and metrics (`memory`, `sqlite`, `redis`).
    fn backend(&self) -> &'static str;

    /// Insert a new session. `Exists` if the id is taken.
    async fn create(&self, rec: &SessionRecord) -> StoreResult<()>;
    /// Fetch a session.
    async fn get(&self, id: &str) -> StoreResult<Option<SessionRecord>>;
    /// Fetch several sessions; the result has one entry per id, in order.
    async fn get_many(&self, ids: &[String]) -> StoreResult<Vec<Option<SessionRecord>>>;
    /// Replace a session's record. Returns false (and stores nothing) if it does not exist.
    async fn update(&self, rec: &SessionRecord) -> StoreResult<bool>;
    /// Replace several records; missing ones are skipped. Returns how many were updated.
    async fn update_many(&self, recs: &[SessionRecord]) -> StoreResult<usize>;
    /// Set `last_active_ms` of several sessions (coalesced activity). Missing ids are ignored.
    /// Returns how many were updated.
    async fn touch_many(&self, touches: &[(String, u64)]) -> StoreResult<usize>;
    /// Delete a session, its id mapping and its event log. Returns false if it did not exist.
    async fn delete(&self, id: &str) -> StoreResult<bool>;
    /// Make `owner` the owner of session `id` if its record is active and still names
    /// `expected` as its owner (`None`: no owner): one atomic compare-and-set, so that of
    /// several replicas taking over a session at once exactly one does. Nothing else of the
    /// record changes. Returns whether it did; false when the record names another owner, has
    /// ended, or does not exist.
    async fn claim_owner(&self, id: &str, expected: Option<&str>, owner: &str)
    -> StoreResult<bool>;
    /// List sessions matching `filter`, ordered by id, starting after the id `after`, at most
    /// `limit` per page.
    async fn list(
        &self,
        filter: &SessionFilter,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<SessionPage>;
    /// Count sessions matching `filter`.
    async fn count(&self, filter: &SessionFilter) -> StoreResult<usize>;
    /// Delete every session whose last activity is older than `idle_ttl` at `now_ms` (with its
    /// mapping and events). Returns the deleted ids.
    async fn expire(&self, now_ms: u64, idle_ttl: Duration) -> StoreResult<Vec<String>>;

    /// The proxy session id whose record has this `upstream_session_id`.
    async fn find_by_upstream_id(&self, upstream_session_id: &str) -> StoreResult<Option<String>>;

    /// Append an event to `stream` of `session`; returns its id.
    async fn append_event(&self, session: &str, stream: &str, data: &[u8]) -> StoreResult<String>;
    /// Append several events to `stream` of `session`, in order; returns their ids. Shared
    /// backends do it in one round trip (a burst of SSE events costs one write, not one each).
    /// On an error none or only a prefix may have been appended.
    async fn append_events(
        &self,
        session: &str,
        stream: &str,
        data: &[&[u8]],
    ) -> StoreResult<Vec<String>> {
        let mut ids = Vec::with_capacity(data.len());
        for d in data {
            ids.push(self.append_event(session, stream, d).await?);
        }
        Ok(ids)
    }
    /// The events of `stream` after the event `after` (exclusive), oldest first, at most `limit`.
    /// `after: None` reads from the start. `EventGone` if `after` is not in the log.
    async fn events_after(
        &self,
        session: &str,
        stream: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<LoggedEvent>>;
    /// Apply retention to one stream; returns how many events were dropped.
    async fn trim_events(
        &self,
        session: &str,
        stream: &str,
        retention: Retention,
    ) -> StoreResult<usize>;
    /// Apply a byte budget to a whole session's log: drop its oldest events (all streams
    /// together) until the payloads left total at most `max_bytes`. Returns how many were
    /// dropped. Ids are never reused afterwards; `events_after` a dropped id is `EventGone`.
    async fn trim_session_bytes(&self, session: &str, max_bytes: u64) -> StoreResult<usize>;
    /// Whether the store is reachable (for readiness checks).
    async fn ping(&self) -> StoreResult<()>;

    /// Put a small shared document (a tool pin, …) under `ns`/`key`, replacing any. Documents
    /// never expire: every replica sharing the store sees them, across restarts.
    async fn doc_put(&self, ns: &str, key: &str, value: &[u8]) -> StoreResult<()>;
    /// The document under `ns`/`key`.
    async fn doc_get(&self, ns: &str, key: &str) -> StoreResult<Option<Vec<u8>>>;
    /// Every document of `ns`, ordered by key.
    async fn doc_list(&self, ns: &str) -> StoreResult<Vec<(String, Vec<u8>)>>;
    /// Delete a document; false if there was none.
    async fn doc_delete(&self, ns: &str, key: &str) -> StoreResult<bool>;

    /// Whether the backend is reachable right now and how many outages it has had (for
    /// `/health` and metrics). Plain backends report healthy; [`FailoverStore`] tracks it.
    fn health(&self) -> StoreHealth {
        StoreHealth {
            healthy: true,
            outages: 0,
            degraded: false,
        }
    }

    /// Per-operation counts and latencies, for metrics; only [`MeteredStore`] keeps them.
    fn op_samples(&self) -> Vec<OpSample> {
        Vec::new()
    }
}
