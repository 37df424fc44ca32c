//! Opening a store from a spec string (`memory`, `sqlite:PATH`, `redis://…`, `rediss://…`,
//! `redis+unix://…`, `redis+cluster://…`, `redis+sentinel://…`).

use crate::{MemoryStore, SessionStore, StoreError, StoreResult};
use std::sync::Arc;
use std::time::Duration;

/// Backend settings that do not fit in the spec string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenOptions {
    /// Prefix of every Redis key (default `shadowcat:`).
    pub redis_prefix: String,
    /// Idle TTL: Redis keys expire after this long without activity (default 30 min).
    pub idle_ttl: Duration,
    /// Events kept per stream on append, for backends that trim on append (Redis; default
    /// 10 000).
    pub max_events: usize,
    /// Only read (SQLite: the file must exist and is opened read-only; every write fails). For
    /// tools that inspect a store, never change it.
    pub read_only: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            redis_prefix: "shadowcat:".to_owned(),
            idle_ttl: Duration::from_secs(30 * 60),
            max_events: 10_000,
            read_only: false,
        }
    }
}

/// What a spec names, before anything is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Spec<'a> {
    Memory,
    Sqlite(&'a str),
    Redis(&'a str),
}

const SPEC_HELP: &str = "expected `memory`, `sqlite:PATH`, `redis://…`, `rediss://…`, \
     `redis+unix:///path`, `redis+cluster://HOST:PORT[,HOST:PORT…]` or \
     `redis+sentinel://HOST:PORT[,HOST:PORT…]/SERVICE[/DB]`";

/// The URL schemes of Redis specs.
const REDIS_SCHEMES: [&str; 5] = [
    "redis://",
    "rediss://",
    "redis+unix://",
    "redis+cluster://",
    "redis+sentinel://",
];

fn parse(spec: &str) -> StoreResult<Spec<'_>> {
    let spec = spec.trim();
    let shown = crate::util::url_label(spec);
    if spec == "memory" {
        return Ok(Spec::Memory);
    }
    if let Some(path) = spec.strip_prefix("sqlite:") {
        let path = path.strip_prefix("//").unwrap_or(path);
        if path.is_empty() {
            return Err(StoreError::Backend(format!(
                "store spec `{shown}` has no path; {SPEC_HELP}"
            )));
        }
        return Ok(Spec::Sqlite(path));
    }
    if REDIS_SCHEMES.iter().any(|p| spec.starts_with(p)) {
        return Ok(Spec::Redis(spec));
    }
    Err(StoreError::Backend(format!(
        "unknown store spec `{shown}`; {SPEC_HELP}"
    )))
}

/// Checks a spec without opening anything (for `config check`): its form, and for Redis every
/// part of the URL (hosts, ports, the Sentinel service, the database). Errors never repeat a
/// URL's credentials.
pub fn check_spec(spec: &str) -> StoreResult<()> {
    match parse(spec)? {
        Spec::Memory | Spec::Sqlite(_) => Ok(()),
        Spec::Redis(url) => check_redis(url),
    }
}

#[cfg(feature = "redis")]
fn check_redis(url: &str) -> StoreResult<()> {
    crate::redis::check_url(url)
}

#[cfg(not(feature = "redis"))]
fn check_redis(_url: &str) -> StoreResult<()> {
    Err(StoreError::Backend(
        "this build has no redis backend (feature `redis`)".into(),
    ))
}

/// Why `prefix` cannot start Redis keys, if it cannot: it may not contain `{` or `}` (the store
/// and the shared rate limiter put their own Redis Cluster hash tags after it).
pub fn check_redis_prefix(prefix: &str) -> Result<(), String> {
    if prefix.contains(['{', '}']) {
        Err(format!(
            "`{prefix}` contains `{{` or `}}`: Shadowcat puts its own hash tags after the prefix (each session's keys in one Redis Cluster slot), so the prefix cannot carry one"
        ))
    } else {
        Ok(())
    }
}

/// Opens the store a spec names. Backends left out of the build (features `sqlite`, `redis`,
/// `redis-tls` for `rediss://`) are reported as errors, not ignored.
pub async fn open(spec: &str, opts: &OpenOptions) -> StoreResult<Arc<dyn SessionStore>> {
    match parse(spec)? {
        Spec::Memory => Ok(Arc::new(MemoryStore::new())),
        Spec::Sqlite(path) => open_sqlite(path, opts.read_only),
        Spec::Redis(url) => open_redis(url, opts).await,
    }
}

#[cfg(feature = "sqlite")]
fn open_sqlite(path: &str, read_only: bool) -> StoreResult<Arc<dyn SessionStore>> {
    Ok(Arc::new(if read_only {
        crate::SqliteStore::open_read_only(path)?
    } else {
        crate::SqliteStore::open(path)?
    }))
}

#[cfg(not(feature = "sqlite"))]
fn open_sqlite(_path: &str, _read_only: bool) -> StoreResult<Arc<dyn SessionStore>> {
    Err(StoreError::Backend(
        "this build has no sqlite backend (feature `sqlite`)".into(),
    ))
}

#[cfg(feature = "redis")]
async fn open_redis(url: &str, opts: &OpenOptions) -> StoreResult<Arc<dyn SessionStore>> {
    if url.starts_with("rediss://") && !cfg!(feature = "redis-tls") {
        return Err(StoreError::Backend(
            "this build has no TLS for redis (`rediss://` needs feature `redis-tls`)".into(),
        ));
    }
    let store = crate::RedisStore::connect(url, &opts.redis_prefix, opts.idle_ttl)
        .await?
        .with_max_events(opts.max_events);
    Ok(Arc::new(store))
}

#[cfg(not(feature = "redis"))]
async fn open_redis(_url: &str, _opts: &OpenOptions) -> StoreResult<Arc<dyn SessionStore>> {
    Err(StoreError::Backend(
        "this build has no redis backend (feature `redis`)".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert_eq!(parse("memory").ok(), Some(Spec::Memory));
        assert_eq!(
            parse("sqlite:/var/lib/s.db").ok(),
            Some(Spec::Sqlite("/var/lib/s.db"))
        );
        assert_eq!(parse("sqlite:rel.db").ok(), Some(Spec::Sqlite("rel.db")));
        assert_eq!(
            parse("sqlite:///abs.db").ok(),
            Some(Spec::Sqlite("/abs.db"))
        );
        assert_eq!(
            parse("redis://h:6379/0").ok(),
            Some(Spec::Redis("redis://h:6379/0"))
        );
        assert_eq!(parse("rediss://h").ok(), Some(Spec::Redis("rediss://h")));
        assert_eq!(
            parse("redis+unix:///s.sock").ok(),
            Some(Spec::Redis("redis+unix:///s.sock"))
        );
        assert_eq!(
            parse("redis+cluster://a:1,b:2").ok(),
            Some(Spec::Redis("redis+cluster://a:1,b:2"))
        );
        assert_eq!(
            parse("redis+sentinel://s:26379/m").ok(),
            Some(Spec::Redis("redis+sentinel://s:26379/m"))
        );
        for bad in ["", "mem", "sqlite:", "postgres://x", "redis:/x", "Memory"] {
            match parse(bad) {
                Err(StoreError::Backend(msg)) => assert!(msg.contains("expected"), "{bad}: {msg}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(check_spec("memory").is_ok());
        assert!(check_spec("redis+cluster://a:1,b:2").is_ok());
        assert!(check_spec("redis+sentinel://:pw@s/m/2").is_ok());
        for bad in [
            "redis+cluster://a:x",
            "redis+sentinel://s",
            "redis://:pw@h:port",
        ] {
            match check_spec(bad) {
                Err(StoreError::Backend(msg)) => assert!(!msg.contains("pw"), "{bad}: {msg}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(check_redis_prefix("shadowcat:").is_ok());
        assert!(check_redis_prefix("{x}:").is_err());
    }
}
