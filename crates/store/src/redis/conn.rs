//! Connections to a Redis deployment, whatever its topology: one server (`redis://`,
//! `rediss://`, `redis+unix://`; a [`ConnectionManager`] that reconnects by itself), a Redis
//! Cluster (`redis+cluster://SEEDS`; redis-rs' cluster connection, which follows the slot map,
//! `MOVED` and `ASK`), or the primary a set of Sentinels names (`redis+sentinel://SENTINELS/NAME`;
//! [`SentinelConn`] below, which follows a failover). All three are one [`RedisConn`], a redis-rs
//! [`ConnectionLike`], so commands, pipelines and scripts run on it unchanged.

use crate::util::url_label as label;
use crate::{StoreError, StoreResult};
use ::redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use ::redis::cluster::ClusterClient;
use ::redis::cluster_async::ClusterConnection;
use ::redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use ::redis::{
    AsyncConnectionConfig, Client, Cmd, ErrorKind, IntoConnectionInfo, Pipeline, RedisError,
    RedisFuture, RedisResult, ServerErrorKind, Value,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

/// Connect / response timeouts of every connection to a Redis node.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
pub(super) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// How often a Sentinel connection asks a Sentinel which server is the primary (a manual
/// `SENTINEL FAILOVER` promotes a replica while the old primary still answers: without asking,
/// writes would go on landing on the old one, and be lost, until Sentinel demotes it). One
/// small command on a kept connection to a Sentinel.
const SENTINEL_CHECK_EVERY: Duration = Duration::from_millis(250);

/// Default ports of the URL forms that list hosts.
const REDIS_PORT: u16 = 6379;
const SENTINEL_PORT: u16 = 26379;

/// What a Redis URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Topology {
    /// One server: the URL as redis-rs reads it.
    Single(String),
    /// A Redis Cluster: one `redis://` URL per seed node (credentials included).
    Cluster(Vec<String>),
    /// The primary of `service`, found through these Sentinels (`redis://HOST:PORT` each);
    /// `node` is the URL whose credentials and database the primary is connected with.
    Sentinel {
        sentinels: Vec<String>,
        service: String,
        node: String,
    },
}

fn bad(url: &str, why: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("redis: bad url `{}`: {why}", label(url)))
}

/// `HOST[:PORT]` or `[V6]:PORT` → `HOST:PORT` with `default` as the port.
fn host_port(url: &str, item: &str, default: u16) -> StoreResult<String> {
    let item = item.trim();
    let (host, port) = if let Some(v6) = item.strip_prefix('[') {
        let (host, rest) = v6
            .split_once(']')
            .ok_or_else(|| bad(url, format!("`{item}` has no closing `]`")))?;
        match rest {
            "" => (format!("[{host}]"), None),
            p => match p.strip_prefix(':') {
                Some(p) => (format!("[{host}]"), Some(p)),
                None => return Err(bad(url, format!("`{item}` is not HOST:PORT"))),
            },
        }
    } else {
        match item.split_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (item.to_owned(), None),
        }
    };
    if host.is_empty() || host == "[]" {
        return Err(bad(url, format!("`{item}` has no host")));
    }
    let port = match port {
        None => default,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad(url, format!("`{p}` is not a port")))?,
    };
    Ok(format!("{host}:{port}"))
}

/// Splits `SCHEME://[USERINFO@]HOST[:PORT][,HOST[:PORT]…][/PATH]` into the user information
/// (with its `@`), the hosts and the path; `?` is refused.
fn split_list(url: &str, rest: &str, default: u16) -> StoreResult<(String, Vec<String>, String)> {
    if rest.contains('?') {
        return Err(bad(url, "query parameters are not supported here"));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), authority),
    };
    let hosts = hosts
        .split(',')
        .map(|h| host_port(url, h, default))
        .collect::<StoreResult<Vec<_>>>()?;
    Ok((userinfo, hosts, path.to_owned()))
}

/// Reads a Redis URL (see the module docs for the forms). Checks every part without
/// connecting; errors never repeat the credentials.
pub(crate) fn parse(url: &str) -> StoreResult<Topology> {
    let url = url.trim();
    if let Some(rest) = url.strip_prefix("redis+cluster://") {
        let (userinfo, seeds, path) = split_list(url, rest, REDIS_PORT)?;
        if !matches!(path.as_str(), "" | "/" | "/0") {
            return Err(bad(url, "a Redis Cluster has database 0 only"));
        }
        let seeds: Vec<String> = seeds
            .iter()
            .map(|s| format!("redis://{userinfo}{s}/"))
            .collect();
        for s in &seeds {
            s.as_str().into_connection_info().map_err(|e| bad(url, e))?;
        }
        return Ok(Topology::Cluster(seeds));
    }
    if let Some(rest) = url.strip_prefix("redis+sentinel://") {
        let (userinfo, sentinels, path) = split_list(url, rest, SENTINEL_PORT)?;
        let mut parts = path.trim_start_matches('/').split('/');
        let service = parts.next().unwrap_or_default().to_owned();
        if service.is_empty() {
            return Err(bad(
                url,
                "name the primary: redis+sentinel://HOST:PORT[,HOST:PORT…]/SERVICE[/DB]",
            ));
        }
        let db = match parts.next() {
            None | Some("") => 0,
            Some(db) => db
                .parse::<u32>()
                .map_err(|_| bad(url, format!("`{db}` is not a database number")))?,
        };
        if parts.next().is_some() {
            return Err(bad(url, "expected …/SERVICE[/DB]"));
        }
        let node = format!("redis://{userinfo}localhost/{db}");
        node.as_str()
            .into_connection_info()
            .map_err(|e| bad(url, e))?;
        let sentinels = sentinels.iter().map(|s| format!("redis://{s}/")).collect();
        return Ok(Topology::Sentinel {
            sentinels,
            service,
            node,
        });
    }
    if ["redis://", "rediss://", "redis+unix://"]
        .iter()
        .any(|p| url.starts_with(p))
    {
        url.into_connection_info().map_err(|e| bad(url, e))?;
        return Ok(Topology::Single(url.to_owned()));
    }
    Err(bad(
        url,
        "expected redis://, rediss://, redis+unix://, redis+cluster:// or redis+sentinel://",
    ))
}

/// Whether this error says the server cannot take the command now but may later (unreachable,
/// a failover under way, a full cluster reconfiguring): the store reports those as
/// `Unavailable`.
pub(crate) fn transient(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::ReadOnly
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::BusyLoading
                )
        )
        || e.code() == Some("READONLY")
}

/// A connection to a Redis deployment. Cloning shares it.
#[derive(Clone)]
pub enum RedisConn {
    /// One server.
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
    /// The primary named by Sentinels.
    Sentinel(SentinelConn),
}

impl RedisConn {
    /// Whether this is a Redis Cluster (whose keys must be placed by hash slot).
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConn::Cluster(_))
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
            RedisConn::Sentinel(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Sentinel(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
            RedisConn::Sentinel(c) => c.get_db(),
        }
    }
}

/// Opens a connection to what `url` names (not bounded in time: the caller bounds it).
pub(crate) async fn open(url: &str) -> StoreResult<RedisConn> {
    let unavailable = |e: RedisError| {
        if transient(&e) || matches!(e.kind(), ErrorKind::MasterNameNotFoundBySentinel) {
            StoreError::Unavailable(format!("redis: {e}"))
        } else {
            StoreError::Backend(format!("redis: {e}"))
        }
    };
    match parse(url)? {
        Topology::Single(url) => {
            let client = Client::open(url.as_str()).map_err(|e| bad(&url, e))?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            let conn = ConnectionManager::new_with_config(client, config)
                .await
                .map_err(unavailable)?;
            Ok(RedisConn::Single(conn))
        }
        Topology::Cluster(seeds) => {
            let client = ClusterClient::builder(seeds)
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(RESPONSE_TIMEOUT)
                .retries(3)
                .build()
                .map_err(|e| bad(url, e))?;
            let conn = client.get_async_connection().await.map_err(unavailable)?;
            Ok(RedisConn::Cluster(conn))
        }
        Topology::Sentinel {
            sentinels,
            service,
            node,
        } => {
            let node = node
                .as_str()
                .into_connection_info()
                .map_err(|e| bad(url, e))?;
            let db = node.redis_settings().db();
            let node = SentinelNodeConnectionInfo::default()
                .set_redis_connection_info(node.redis_settings().clone());
            let client = SentinelClient::build(
                sentinels,
                service.clone(),
                Some(node),
                SentinelServerType::Master,
            )
            .map_err(|e| bad(url, e))?;
            let conn = SentinelConn::new(client, service, db);
            conn.0.primary().await.map_err(unavailable)?;
            Ok(RedisConn::Sentinel(conn))
        }
    }
}

/// The primary of a Sentinel-monitored service. Resolved through the Sentinels on first use
/// and again after any failure that says the primary is gone or demoted (connection errors,
/// `READONLY`; a command refused with `READONLY` is sent once more to the new primary, since
/// a replica applied none of it), and whenever a Sentinel names another primary (asked every
/// [`SENTINEL_CHECK_EVERY`] by a task that ends when the last clone is dropped).
#[derive(Clone)]
pub struct SentinelConn(Arc<SentinelShared>);

struct SentinelShared {
    /// Asks the Sentinels; one lookup at a time.
    resolver: tokio::sync::Mutex<SentinelClient>,
    service: String,
    current: Mutex<Option<Primary>>,
    generation: AtomicU64,
    config: AsyncConnectionConfig,
    db: i64,
}

#[derive(Clone)]
struct Primary {
    conn: MultiplexedConnection,
    addr: String,
    generation: u64,
}

fn is_readonly(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly) || e.code() == Some("READONLY")
}

impl SentinelConn {
    fn new(client: SentinelClient, service: String, db: i64) -> SentinelConn {
        let shared = Arc::new(SentinelShared {
            resolver: tokio::sync::Mutex::new(client),
            service,
            current: Mutex::new(None),
            generation: AtomicU64::new(0),
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT)),
            db,
        });
        tokio::spawn(watch(Arc::downgrade(&shared)));
        SentinelConn(shared)
    }
}

/// Every [`SENTINEL_CHECK_EVERY`], asks a Sentinel whether the primary moved, over a
/// connection kept for it (made again, to the first Sentinel that answers, after a failure);
/// ends with the connection.
async fn watch(shared: Weak<SentinelShared>) {
    let mut sentinel: Option<MultiplexedConnection> = None;
    loop {
        tokio::time::sleep(SENTINEL_CHECK_EVERY).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let checked =
            tokio::time::timeout(SENTINEL_CHECK_EVERY * 4, shared.check(&mut sentinel)).await;
        if !matches!(checked, Ok(Ok(()))) {
            sentinel = None;
        }
    }
}

impl SentinelShared {
    fn cached(&self) -> Option<Primary> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The current primary, connecting to the one the Sentinels name if there is none.
    async fn primary(&self) -> RedisResult<Primary> {
        if let Some(p) = self.cached() {
            return Ok(p);
        }
        let mut resolver = self.resolver.lock().await;
        if let Some(p) = self.cached() {
            return Ok(p);
        }
        let client = resolver.async_get_client().await?;
        let addr = client.get_connection_info().addr().to_string();
        let conn = client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        let primary = Primary {
            conn,
            addr,
            generation: self.generation.fetch_add(1, Ordering::Relaxed) + 1,
        };
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(primary.clone());
        Ok(primary)
    }

    /// Drops the connection of `generation` (a newer one is kept).
    fn forget(&self, generation: u64) {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if current.as_ref().is_some_and(|p| p.generation == generation) {
            *current = None;
        }
    }

    /// After a failed command on `primary`: drop the connection if the error says it is no
    /// longer the way to the primary.
    fn failed(&self, primary: &Primary, e: &RedisError) {
        if transient(e) {
            self.forget(primary.generation);
        }
    }

    /// Asks a Sentinel where the primary is; drops the connection to it if it moved.
    async fn check(&self, sentinel: &mut Option<MultiplexedConnection>) -> RedisResult<()> {
        let Some(current) = self.cached() else {
            return Ok(());
        };
        let conn = match sentinel {
            Some(c) => c,
            None => {
                let client = self
                    .resolver
                    .lock()
                    .await
                    .async_get_sentinel_client()
                    .await?;
                sentinel.insert(
                    client
                        .get_multiplexed_async_connection_with_config(&self.config)
                        .await?,
                )
            }
        };
        let named: Option<(String, u16)> = ::redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(&self.service)
            .query_async(conn)
            .await?;
        if let Some((host, port)) = named {
            let addr = format!("{host}:{port}");
            if addr != current.addr {
                tracing::warn!(from = %current.addr, to = %addr, "redis: Sentinel names a new primary; switching to it");
                self.forget(current.generation);
            }
        }
        Ok(())
    }

    async fn command(&self, cmd: &Cmd) -> RedisResult<Value> {
        let primary = self.primary().await?;
        let mut conn = primary.conn.clone();
        match conn.req_packed_command(cmd).await {
            Err(e) if is_readonly(&e) => {
                self.forget(primary.generation);
                let primary = self.primary().await?;
                let mut conn = primary.conn.clone();
                let r = conn.req_packed_command(cmd).await;
                if let Err(e) = &r {
                    self.failed(&primary, e);
                }
                r
            }
            Err(e) => {
                self.failed(&primary, &e);
                Err(e)
            }
            ok => ok,
        }
    }

    async fn commands(
        &self,
        pipeline: &Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        let primary = self.primary().await?;
        let mut conn = primary.conn.clone();
        let r = conn.req_packed_commands(pipeline, offset, count).await;
        match &r {
            Err(e) => self.failed(&primary, e),
            Ok(values) => {
                let demoted = values
                    .iter()
                    .any(|v| matches!(v, Value::ServerError(e) if e.code() == "READONLY"));
                if demoted {
                    self.forget(primary.generation);
                }
            }
        }
        r
    }
}

impl ConnectionLike for SentinelConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(self.0.command(cmd))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(self.0.commands(pipeline, offset, count))
    }

    fn get_db(&self) -> i64 {
        self.0.db
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse("redis://h:1/2").ok(),
            Some(Topology::Single("redis://h:1/2".into()))
        );
        assert_eq!(
            parse("redis+cluster://u:p%40ss@a:7000,b,[::1]:7002").ok(),
            Some(Topology::Cluster(vec![
                "redis://u:p%40ss@a:7000/".into(),
                "redis://u:p%40ss@b:6379/".into(),
                "redis://u:p%40ss@[::1]:7002/".into(),
            ]))
        );
        assert_eq!(
            parse("redis+cluster://a:7000/0").ok(),
            Some(Topology::Cluster(vec!["redis://a:7000/".into()]))
        );
        assert_eq!(
            parse("redis+sentinel://:pw@s1,s2:5000/mymaster/3").ok(),
            Some(Topology::Sentinel {
                sentinels: vec!["redis://s1:26379/".into(), "redis://s2:5000/".into()],
                service: "mymaster".into(),
                node: "redis://:pw@localhost/3".into(),
            })
        );
        assert!(matches!(
            parse("redis+sentinel://s1/mymaster"),
            Ok(Topology::Sentinel { .. })
        ));
        for (bad, why) in [
            ("redis+cluster://", "has no host"),
            ("redis+cluster://a,,b", "has no host"),
            ("redis+cluster://a:x", "is not a port"),
            ("redis+cluster://a:0", "is not a port"),
            ("redis+cluster://a:70000", "is not a port"),
            ("redis+cluster://a/1", "database 0 only"),
            ("redis+cluster://a?x=1", "query"),
            ("redis+cluster://[::1", "closing"),
            ("redis+sentinel://s1", "name the primary"),
            ("redis+sentinel://s1/", "name the primary"),
            ("redis+sentinel://s1/m/x", "not a database"),
            ("redis+sentinel://s1/m/1/2", "SERVICE[/DB]"),
            ("redis+sentinel://:secret@s1:x/m", "is not a port"),
            ("postgres://x", "expected redis://"),
        ] {
            match parse(bad) {
                Err(StoreError::Backend(msg)) => {
                    assert!(msg.contains(why), "{bad}: {msg}");
                    assert!(!msg.contains("secret"), "{bad}: {msg}");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
