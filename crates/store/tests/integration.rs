//! The contract suite against every backend (memory; SQLite on real files; Redis on a private
//! `redis-server` per test), plus backend-specific behaviour: SQLite restart and
//! `mark_owned_ended`, Redis TTLs, pruning and outage, and `open`.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

#[path = "support/redis_server.rs"]
mod redis_server;

use redis_server::RedisServer;
use shadowcat_store::{
    MemoryStore, OpenOptions, RedisStore, SessionFilter, SessionStatus, SessionStore, SqliteStore,
    StoreError, contract, open,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static SEQ: AtomicUsize = AtomicUsize::new(0);

fn next_seq() -> usize {
    SEQ.fetch_add(1, Ordering::Relaxed)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------- memory

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_contract() {
    contract::run_all(|| async { MemoryStore::new() }).await;
}

// ---------------------------------------------------------------- sqlite

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path().to_path_buf();
    contract::run_all(|| {
        let path = dir.join(format!("contract-{}.db", next_seq()));
        async move { SqliteStore::open(path).expect("open sqlite") }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_survives_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("restart.db");
    let mut rec = contract::record("restart-a");
    rec.upstream_session_id = Some("restart-up".into());
    let (e1, e2) = {
        let store = SqliteStore::open(&path).expect("open");
        store.create(&rec).await.expect("create");
        let e1 = store
            .append_event("restart-a", "main", b"first")
            .await
            .expect("append");
        let e2 = store
            .append_event("restart-a", "main", b"second")
            .await
            .expect("append");
        store
            .touch_many(&[("restart-a".into(), 42)])
            .await
            .expect("touch");
        (e1, e2)
    }; // dropped: writer thread joined, connections closed
    rec.last_active_ms = 42;

    let store = SqliteStore::open(&path).expect("reopen");
    assert_eq!(store.get("restart-a").await.expect("get"), Some(rec));
    assert_eq!(
        store.find_by_upstream_id("restart-up").await.expect("find"),
        Some("restart-a".into())
    );
    let events = store
        .events_after("restart-a", "main", None, 10)
        .await
        .expect("events");
    assert_eq!(
        events.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        vec![e1.as_str(), e2.as_str()]
    );
    assert_eq!(events[1].data, b"second");
    let resumed = store
        .events_after("restart-a", "main", Some(&e1), 10)
        .await
        .expect("resume");
    assert_eq!(resumed.len(), 1);
    // Ids keep increasing across the restart (AUTOINCREMENT), even after the newest is trimmed.
    store
        .trim_events(
            "restart-a",
            "main",
            shadowcat_store::Retention {
                max_events: Some(0),
                max_age: None,
            },
        )
        .await
        .expect("trim");
    drop(store);
    let store = SqliteStore::open(&path).expect("reopen again");
    let e3 = store
        .append_event("restart-a", "main", b"third")
        .await
        .expect("append");
    assert!(e3.parse::<i64>().expect("int id") > e2.parse::<i64>().expect("int id"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_mark_owned_ended() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path().join("owned.db")).expect("open");
    let specs = [
        ("o-1", Some("me"), SessionStatus::Active),
        ("o-2", Some("me"), SessionStatus::Active),
        ("o-3", Some("me"), SessionStatus::Ended),
        ("o-4", Some("other"), SessionStatus::Active),
        ("o-5", None, SessionStatus::Active),
    ];
    for (id, owner, status) in specs {
        let mut r = contract::record(id);
        r.owner = owner.map(Into::into);
        r.status = status;
        store.create(&r).await.expect("create");
    }
    assert_eq!(store.mark_owned_ended("me").await.expect("mark"), 2);
    let got = store
        .get_many(&specs.iter().map(|s| s.0.to_owned()).collect::<Vec<_>>())
        .await
        .expect("get_many");
    let statuses: Vec<_> = got.iter().map(|r| r.as_ref().map(|r| r.status)).collect();
    use SessionStatus::{Active, Ended};
    assert_eq!(
        statuses,
        vec![
            Some(Ended),
            Some(Ended),
            Some(Ended),
            Some(Active),
            Some(Active)
        ]
    );
    assert_eq!(store.mark_owned_ended("me").await.expect("mark again"), 0);
    assert_eq!(
        store.mark_owned_ended("nobody").await.expect("mark none"),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_rejects_unknown_schema_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("future.db");
    drop(SqliteStore::open(&path).expect("create"));
    let conn = rusqlite::Connection::open(&path).expect("raw open");
    conn.pragma_update(None, "user_version", 99)
        .expect("set version");
    drop(conn);
    match SqliteStore::open(&path) {
        Err(StoreError::Backend(msg)) => assert!(msg.contains("schema version 99"), "{msg}"),
        other => panic!("expected a schema version error, got {other:?}"),
    }
}

/// A store written by the previous version (sessions, no documents) is migrated in place:
/// its sessions stay, documents work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_migrates_a_version_1_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("v1.db");
    {
        let store = SqliteStore::open(&path).expect("create");
        store
            .create(&contract::record("old"))
            .await
            .expect("create");
    }
    let conn = rusqlite::Connection::open(&path).expect("raw open");
    conn.execute_batch("DROP TABLE docs; PRAGMA user_version = 1;")
        .expect("back to version 1");
    drop(conn);
    let read_only = SqliteStore::open_read_only(&path).expect("version 1 can be read");
    assert!(read_only.get("old").await.expect("get").is_some());
    assert!(
        read_only.doc_put("pins", "a", b"x").await.is_err(),
        "read-only: no writes"
    );
    drop(read_only);
    let store = SqliteStore::open(&path).expect("migrate");
    assert!(
        store.get("old").await.expect("get").is_some(),
        "sessions kept"
    );
    store
        .doc_put("pins", "a", b"x")
        .await
        .expect("documents after the migration");
    assert_eq!(store.doc_list("pins").await.expect("list").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_uses_wal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("wal.db");
    let store = SqliteStore::open(&path).expect("open");
    store.create(&contract::record("w")).await.expect("create");
    let conn = rusqlite::Connection::open(&path).expect("raw open");
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .expect("mode");
    assert_eq!(mode, "wal");
}

/// Prints p50/p99/max of simple operations, one at a time (a latency probe, not a check).
async fn print_latencies(store: &dyn SessionStore) {
    let n = 2000;
    let mut create = Vec::new();
    let mut get = Vec::new();
    let mut append = Vec::new();
    let mut touch = Vec::new();
    let mut replay = Vec::new();
    for i in 0..n {
        let id = format!("lat-{i:05}");
        let t = Instant::now();
        store.create(&contract::record(&id)).await.expect("create");
        create.push(t.elapsed());
        let t = Instant::now();
        store.get(&id).await.expect("get");
        get.push(t.elapsed());
        let t = Instant::now();
        let ev = store
            .append_event(&id, "main", &[b'x'; 300])
            .await
            .expect("append");
        append.push(t.elapsed());
        let t = Instant::now();
        store.touch_many(&[(id.clone(), 5)]).await.expect("touch");
        touch.push(t.elapsed());
        let t = Instant::now();
        store
            .events_after(&id, "main", Some(&ev), 100)
            .await
            .expect("events_after");
        replay.push(t.elapsed());
    }
    for (name, mut v) in [
        ("create", create),
        ("get", get),
        ("append_event", append),
        ("touch_many(1)", touch),
        ("events_after", replay),
    ] {
        v.sort();
        println!(
            "{} {name}: p50 {:?} p99 {:?} max {:?}",
            store.backend(),
            v[v.len() / 2],
            v[v.len() * 99 / 100],
            v[v.len() - 1]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "latency probe: run with --ignored --nocapture"]
async fn latency_probe() {
    print_latencies(&MemoryStore::new()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    print_latencies(&SqliteStore::open(dir.path().join("lat.db")).expect("open")).await;
    let server = RedisServer::start();
    print_latencies(&redis_store(&server, Duration::from_secs(600)).await).await;
}

// ---------------------------------------------------------------- redis

async fn redis_store(server: &RedisServer, ttl: Duration) -> RedisStore {
    RedisStore::connect(&server.url(), &format!("t{}:", next_seq()), ttl)
        .await
        .expect("connect to test redis")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_contract() {
    let server = RedisServer::start();
    contract::run_all(|| redis_store(&server, Duration::from_secs(600))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_every_key_has_ttl() {
    let server = RedisServer::start();
    let store = redis_store(&server, Duration::from_secs(600)).await;
    let prefix = store.prefix().to_owned();
    let mut r = contract::record("k-a");
    r.upstream_session_id = Some("k-up".into());
    store.create(&r).await.expect("create");
    store
        .append_event("k-a", "main", b"x")
        .await
        .expect("append");
    store
        .append_event("k-a", "get", b"y")
        .await
        .expect("append");
    store.touch_many(&[("k-a".into(), 7)]).await.expect("touch");

    let mut conn = server.raw().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    let mut names: Vec<String> = keys.iter().map(|k| k[prefix.len()..].to_owned()).collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            "bytes:k-a",
            "events:k-a:get",
            "events:k-a:main",
            "session:k-a",
            "sessions",
            "streams:k-a",
            "upstream:k-up",
        ]
    );
    for key in &keys {
        let pttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .expect("PTTL");
        assert!(pttl > 590_000 && pttl <= 600_000, "{key} has TTL {pttl}");
    }
    assert!(store.delete("k-a").await.expect("delete"));
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    assert!(keys.is_empty(), "delete leaves nothing behind: {keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_ttl_expiry_is_pruned_from_listings() {
    let server = RedisServer::start();
    let store = redis_store(&server, Duration::from_secs(3)).await;
    let index = format!("{}sessions", store.prefix());
    for id in ["x-kept", "x-lapsed"] {
        store.create(&contract::record(id)).await.expect("create");
    }
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert_eq!(
        store
            .touch_many(&[("x-kept".into(), now_ms())])
            .await
            .expect("touch"),
        1
    );
    tokio::time::sleep(Duration::from_millis(1800)).await;
    // x-lapsed's key is gone by TTL; its index entry is found, pruned and reported.
    let expired = store
        .expire(now_ms(), Duration::from_secs(3600))
        .await
        .expect("expire");
    assert_eq!(expired, vec!["x-lapsed".to_owned()]);
    assert_eq!(
        store.count(&SessionFilter::default()).await.expect("count"),
        1
    );
    let page = store
        .list(&SessionFilter::default(), None, 10)
        .await
        .expect("list");
    assert_eq!(
        page.sessions
            .iter()
            .map(|r| r.id.as_str())
            .collect::<Vec<_>>(),
        vec!["x-kept"]
    );
    let mut conn = server.raw().await;
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(&index)
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .expect("ZRANGE");
    assert_eq!(members, vec!["x-kept".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_max_events_on_append() {
    let server = RedisServer::start();
    let store = redis_store(&server, Duration::from_secs(600))
        .await
        .with_max_events(5);
    // `MAXLEN ~` trims whole macro nodes (100 entries by default), so append well past them.
    for i in 0..1000 {
        store
            .append_event("me", "main", format!("{i}").as_bytes())
            .await
            .expect("append");
    }
    let left = store
        .events_after("me", "main", None, 10_000)
        .await
        .expect("events");
    assert!(
        left.len() < 1000 && left.len() >= 5,
        "approximate retention kept {}",
        left.len()
    );
    assert_eq!(left.last().map(|e| e.data.clone()), Some(b"999".to_vec()));
}

/// Runs `f` with a hard bound, so a hang fails the test instead of stalling it.
async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(15), fut)
        .await
        .unwrap_or_else(|_| panic!("{what} hung"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_is_unavailable_then_recovers() {
    let mut server = RedisServer::start();
    let store = redis_store(&server, Duration::from_secs(600)).await;
    store
        .create(&contract::record("out-a"))
        .await
        .expect("create");

    server.stop();
    let started = Instant::now();
    for attempt in 0..3 {
        let r = within("get during outage", store.get("out-a")).await;
        assert!(
            matches!(r, Err(StoreError::Unavailable(_))),
            "attempt {attempt}: {r:?}"
        );
    }
    let r = within(
        "create during outage",
        store.create(&contract::record("out-b")),
    )
    .await;
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    let r = within(
        "append during outage",
        store.append_event("out-a", "s", b"x"),
    )
    .await;
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    let r = within("ping during outage", store.ping()).await;
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    eprintln!("outage: 6 failed operations took {:?}", started.elapsed());

    server.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match within("ping after restart", store.ping()).await {
            Ok(()) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "store did not recover: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // The server came back empty (no persistence); the same store works again.
    assert_eq!(store.get("out-a").await.expect("get after restart"), None);
    store
        .create(&contract::record("out-c"))
        .await
        .expect("create after restart");
    assert!(store.get("out-c").await.expect("get").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_connect_fails_when_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("redis+unix://{}", dir.path().join("nobody.sock").display());
    let r = within(
        "connect",
        RedisStore::connect(&url, "p:", Duration::from_secs(1)),
    )
    .await;
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
}

// ---------------------------------------------------------------- open

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_every_spec() {
    let opts = OpenOptions::default();
    assert_eq!(opts.redis_prefix, "shadowcat:");
    let s = open("memory", &opts).await.expect("memory");
    assert_eq!(s.backend(), "memory");

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("open.db");
    let s = open(&format!("sqlite:{}", path.display()), &opts)
        .await
        .expect("sqlite");
    assert_eq!(s.backend(), "sqlite");
    s.ping().await.expect("ping sqlite");
    assert!(path.exists());

    let server = RedisServer::start();
    let opts = OpenOptions {
        redis_prefix: format!("open{}:", next_seq()),
        ..OpenOptions::default()
    };
    let s = open(&server.url(), &opts).await.expect("redis");
    assert_eq!(s.backend(), "redis");
    s.create(&contract::record("open-a")).await.expect("create");
    let mut conn = server.raw().await;
    let exists: bool = redis::cmd("EXISTS")
        .arg(format!("{}session:open-a", opts.redis_prefix))
        .query_async(&mut conn)
        .await
        .expect("EXISTS");
    assert!(exists, "the prefix from OpenOptions is used");

    for bad in ["postgres://x", "mem", "sqlite:", ""] {
        match open(bad, &opts).await {
            Err(StoreError::Backend(msg)) => assert!(msg.contains("expected"), "{bad}: {msg}"),
            Err(e) => panic!("{bad}: unexpected error {e}"),
            Ok(_) => panic!("{bad}: opened"),
        }
    }
}
