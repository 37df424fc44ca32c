//! The contract suite against every backend (memory; SQLite on real files; Redis on a private
//! `redis-server` per test), plus backend-specific behaviour: SQLite restart and
//! `mark_owned_ended`, Redis TTLs, pruning and outage, and `open`.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

#[path = "support/redis_server.rs"]
mod redis_server;
#[path = "support/redis_topology.rs"]
mod redis_topology;

use redis_server::RedisServer;
use redis_topology::{RedisCluster, RedisSentinel};
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
    conn.execute_batch(
        "DROP TABLE docs; ALTER TABLE sessions DROP COLUMN composite; PRAGMA user_version = 1;",
    )
    .expect("back to version 1");
    drop(conn);
    let read_only = SqliteStore::open_read_only(&path).expect("version 1 can be read");
    let old = read_only
        .get("old")
        .await
        .expect("get")
        .expect("the session");
    assert_eq!(
        old.composite, None,
        "read as a record without composite state"
    );
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
    let mut composite = contract::record("old");
    composite.composite = Some(serde_json::json!({"members": [{"name": "a"}]}));
    assert!(store.update(&composite).await.expect("update"));
    assert_eq!(
        store.get("old").await.expect("get"),
        Some(composite),
        "composite state after the migration"
    );
}

/// A store written by version 2 (sessions and documents, no composite state) is read as it is
/// read-only, and migrated in place: its sessions and documents stay, composite state works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_migrates_a_version_2_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("v2.db");
    {
        let store = SqliteStore::open(&path).expect("create");
        store
            .create(&contract::record("old"))
            .await
            .expect("create");
        store.doc_put("pins", "a", b"x").await.expect("doc");
    }
    let conn = rusqlite::Connection::open(&path).expect("raw open");
    conn.execute_batch("ALTER TABLE sessions DROP COLUMN composite; PRAGMA user_version = 2;")
        .expect("back to version 2");
    drop(conn);
    let read_only = SqliteStore::open_read_only(&path).expect("version 2 can be read");
    assert_eq!(
        read_only.get("old").await.expect("get"),
        Some(contract::record("old"))
    );
    drop(read_only);
    let store = SqliteStore::open(&path).expect("migrate");
    assert_eq!(
        store.get("old").await.expect("get"),
        Some(contract::record("old")),
        "sessions kept"
    );
    assert_eq!(store.doc_list("pins").await.expect("list").len(), 1);
    let mut composite = contract::record("old");
    composite.composite = Some(serde_json::json!({"members": [{"name": "a"}]}));
    assert!(store.update(&composite).await.expect("update"));
    assert_eq!(store.get("old").await.expect("get"), Some(composite));
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

/// `MEMORY USAGE` of `key` (bytes; 0 if absent).
async fn memory_usage(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> u64 {
    redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(key)
        .arg("SAMPLES")
        .arg(0)
        .query_async::<Option<u64>>(conn)
        .await
        .expect("MEMORY USAGE")
        .unwrap_or(0)
}

/// Keys and bytes per session and per event, for docs/operations.md: sessions recorded as the
/// proxy records them (an upstream session id, a client's `clientInfo` and capabilities),
/// then ~130-byte progress notifications logged on a stream (a measurement, not a check).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "sizing probe: run with --ignored --nocapture"]
async fn redis_sizing_probe() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url(), "shadowcat:", Duration::from_secs(600))
        .await
        .expect("connect");
    let mut conn = server.raw().await;
    let used = |info: String| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("used_memory")
    };
    let info = || redis::cmd("INFO").arg("memory").to_owned();
    let n = 1000u64;
    let before = used(info().query_async(&mut conn).await.expect("INFO"));
    for i in 0..n {
        let id = format!("{:032x}", 0x5eed_0000_u128 + u128::from(i) * 7_919);
        let mut r = contract::record(&id);
        r.upstream_session_id = Some(format!("{:032x}", 0xab_0000_u128 + u128::from(i)));
        r.upstream = "http://127.0.0.1:9000/mcp".into();
        r.route = "/mcp".into();
        r.owner = Some("http://10.0.0.12:8080".into());
        r.client_info = Some(serde_json::json!({"name": "claude-code", "version": "2.1.3"}));
        r.client_capabilities =
            Some(serde_json::json!({"roots": {"listChanged": true}, "sampling": {}}));
        store.create(&r).await.expect("create");
        store.touch_many(&[(id, now_ms())]).await.expect("touch");
    }
    let idle = used(info().query_async(&mut conn).await.expect("INFO"));
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("shadowcat:*")
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    let sample = format!("{:032x}", 0x5eed_0000_u128);
    let up = format!("{:032x}", 0xab_0000_u128);
    let session = memory_usage(&mut conn, &format!("shadowcat:session:{{{sample}}}")).await;
    let mapping = memory_usage(&mut conn, &format!("shadowcat:upstream:{up}")).await;
    let index = memory_usage(&mut conn, "shadowcat:sessions").await;
    println!(
        "idle: {} keys for {n} sessions; used_memory +{} B per session; MEMORY USAGE: session hash {session} B, upstream mapping {mapping} B, index {:.1} B per entry",
        keys.len(),
        (idle - before) / n,
        index as f64 / n as f64
    );

    // Events: 11 per session on one stream (a streamed call), then 1,000 on one stream.
    let event = |k: u64| {
        format!(
            r#"{{"jsonrpc":"2.0","method":"notifications/progress","params":{{"progressToken":"k","progress":{k},"total":40,"message":"step {k} of 40"}}}}"#
        )
    };
    let m = 200u64;
    let before = used(info().query_async(&mut conn).await.expect("INFO"));
    for i in 0..m {
        let id = format!("{:032x}", 0x5eed_0000_u128 + u128::from(i) * 7_919);
        for k in 0..11 {
            store
                .append_event(&id, "p1", event(k).as_bytes())
                .await
                .expect("append");
        }
    }
    let after = used(info().query_async(&mut conn).await.expect("INFO"));
    let stream = memory_usage(&mut conn, &format!("shadowcat:events:{{{sample}}}:p1")).await;
    let streams = memory_usage(&mut conn, &format!("shadowcat:streams:{{{sample}}}")).await;
    let bytes = memory_usage(&mut conn, &format!("shadowcat:bytes:{{{sample}}}")).await;
    println!(
        "11 events of {} B: used_memory +{} B per session; MEMORY USAGE: stream {stream} B, streams set {streams} B, bytes counter {bytes} B",
        event(10).len(),
        (after - before) / m
    );
    let long = "long-stream";
    for k in 0..1000 {
        store
            .append_event(long, "p1", event(k % 40).as_bytes())
            .await
            .expect("append");
    }
    let stream = memory_usage(&mut conn, &format!("shadowcat:events:{{{long}}}:p1")).await;
    println!(
        "1,000 events on one stream: MEMORY USAGE {stream} B, {:.0} B per event",
        stream as f64 / 1000.0
    );
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

/// Replicas with connections of their own race to claim the same sessions while activity is
/// touched: each session is won exactly once, by the replica its record then names, and the
/// claim leaves activity, TTLs and the mapping as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_claims_race_across_replicas() {
    let server = RedisServer::start();
    let prefix = format!("t{}:", next_seq());
    let ttl = Duration::from_secs(600);
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let store = RedisStore::connect(&server.url(), &prefix, ttl)
            .await
            .expect("connect to test redis");
        replicas.push(store);
    }
    let ids: Vec<String> = (0..40).map(|i| format!("race-{i}")).collect();
    for id in &ids {
        let mut r = contract::record(id);
        r.upstream_session_id = Some(format!("{id}-up"));
        replicas[0].create(&r).await.expect("create");
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (n, store) in replicas.iter().enumerate() {
        let (store, ids) = (store.clone(), ids.clone());
        tasks.spawn(async move {
            let me = format!("replica-{}", n + 10);
            let mut won = Vec::new();
            for id in &ids {
                let activity = [(id.clone(), 1_700_000_009_000)];
                let touch = store.touch_many(&activity);
                let claim = store.claim_owner(id, Some("replica-1"), &me);
                let (touched, claimed) = tokio::join!(touch, claim);
                touched.expect("touch");
                if claimed.expect("claim") {
                    won.push(id.clone());
                }
            }
            (me, won)
        });
    }
    let mut winner = std::collections::HashMap::new();
    while let Some(r) = tasks.join_next().await {
        let (me, won) = r.expect("the task");
        for id in won {
            assert!(
                winner.insert(id.clone(), me.clone()).is_none(),
                "{id} was claimed twice"
            );
        }
    }
    assert_eq!(winner.len(), ids.len(), "every session was claimed once");
    for id in &ids {
        let rec = replicas[1].get(id).await.expect("get").expect("the record");
        assert_eq!(rec.owner.as_ref(), winner.get(id), "{id}");
        assert_eq!(rec.last_active_ms, 1_700_000_009_000, "{id}");
        assert_eq!(rec.status, SessionStatus::Active);
        assert_eq!(
            replicas[2]
                .find_by_upstream_id(&format!("{id}-up"))
                .await
                .expect("find"),
            Some(id.clone())
        );
    }
    let mut conn = server.raw().await;
    let pttl: i64 = redis::cmd("PTTL")
        .arg(format!("{prefix}session:{{race-0}}"))
        .query_async(&mut conn)
        .await
        .expect("pttl");
    assert!(pttl > 0, "the claim kept the session's TTL: {pttl}");
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
            "bytes:{k-a}",
            "events:{k-a}:get",
            "events:{k-a}:main",
            "session:{k-a}",
            "sessions",
            "streams:{k-a}",
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_prefix_with_braces_is_refused() {
    let server = RedisServer::start();
    for prefix in ["{app}:", "a}b:", "x{:"] {
        match RedisStore::connect(&server.url(), prefix, Duration::from_secs(1)).await {
            Err(StoreError::Backend(msg)) => assert!(msg.contains("hash tag"), "{prefix}: {msg}"),
            other => panic!("{prefix}: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------- redis cluster, sentinel

/// One scripted session per id: a record with an upstream id, events on two streams, a touch.
async fn scripted_sessions(store: &dyn SessionStore, ids: &[String]) {
    for id in ids {
        let mut r = contract::record(id);
        r.upstream_session_id = Some(format!("up-{id}"));
        store.create(&r).await.expect("create");
        store.append_event(id, "p1", b"one").await.expect("append");
        store.append_event(id, "g", b"two").await.expect("append");
    }
    let touches: Vec<(String, u64)> = ids.iter().map(|id| (id.clone(), 7)).collect();
    assert_eq!(store.touch_many(&touches).await.expect("touch"), ids.len());
}

/// The contract on a 3-primary Cluster, then the layout: a session's keys share one hash slot,
/// sessions spread over the primaries, the shared keys (index, mappings) work across them,
/// and a delete leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_contract_and_layout() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    contract::run_all(|| async {
        RedisStore::connect(&url, &format!("t{}:", next_seq()), Duration::from_secs(600))
            .await
            .expect("connect to the cluster")
    })
    .await;

    let store = RedisStore::connect(&url, "layout:", Duration::from_secs(600))
        .await
        .expect("connect");
    assert!(store.is_cluster());
    let ids: Vec<String> = (0..24).map(|i| format!("c{i:02}-{}", i * 7919)).collect();
    scripted_sessions(&store, &ids).await;

    let keys = cluster.keys("layout:");
    let mut nodes = std::collections::BTreeSet::new();
    for id in &ids {
        let mine: Vec<&(u16, String)> = keys
            .iter()
            .filter(|(_, k)| k.contains(&format!("{{{id}}}")))
            .collect();
        assert_eq!(
            mine.len(),
            5,
            "session, streams, bytes, two streams: {mine:?}"
        );
        let slot = cluster.slot(&format!("layout:session:{{{id}}}"));
        for (port, key) in &mine {
            assert_eq!(cluster.slot(key), slot, "{key} is in the session's slot");
            nodes.insert(*port);
        }
        assert_eq!(
            store
                .find_by_upstream_id(&format!("up-{id}"))
                .await
                .expect("find"),
            Some(id.clone())
        );
    }
    assert_eq!(nodes.len(), 3, "sessions are spread over every primary");
    let page = store
        .list(&SessionFilter::default(), None, 100)
        .await
        .expect("list");
    let listed: Vec<&str> = page.sessions.iter().map(|r| r.id.as_str()).collect();
    let mut sorted: Vec<&str> = ids.iter().map(String::as_str).collect();
    sorted.sort();
    assert_eq!(
        listed, sorted,
        "one listing, in id order, over every primary"
    );
    for id in &ids {
        assert!(store.delete(id).await.expect("delete"));
    }
    assert_eq!(cluster.keys("layout:"), Vec::new(), "delete leaves nothing");
}

/// The contract on a Sentinel-monitored primary, then a manual failover: the store follows
/// the promotion within a bounded retry, and what it wrote before is still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sentinel_contract_and_failover() {
    let set = RedisSentinel::start();
    let url = set.url();
    contract::run_all(|| async {
        RedisStore::connect(&url, &format!("t{}:", next_seq()), Duration::from_secs(600))
            .await
            .expect("connect through sentinel")
    })
    .await;

    let store = RedisStore::connect(&url, "fo:", Duration::from_secs(600))
        .await
        .expect("connect");
    store
        .create(&contract::record("before"))
        .await
        .expect("create before the failover");
    let ev = store
        .append_event("before", "p1", b"logged")
        .await
        .expect("append");
    // Replicated before the primary changes (replication is asynchronous: what the replica has
    // not received when it is promoted is lost, whoever wrote it).
    let deadline = Instant::now() + Duration::from_secs(30);
    while redis_topology::must(set.replica.port, &["EXISTS", "fo:events:{before}:p1"])
        != redis_topology::Reply::Int(1)
    {
        assert!(
            Instant::now() < deadline,
            "the replica never got the writes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    set.failover();
    let promoted = Instant::now();
    let deadline = promoted + Duration::from_secs(30);
    let mut n = 0;
    loop {
        n += 1;
        let id = format!("after-{n}");
        let r = within(
            "create after the failover",
            store.create(&contract::record(&id)),
        )
        .await;
        let on_new = r.is_ok()
            && redis_topology::must(
                set.replica.port,
                &["EXISTS", &format!("fo:session:{{{id}}}")],
            ) == redis_topology::Reply::Int(1);
        if on_new {
            eprintln!(
                "failover: writes reached the new primary after {:?} ({n} tries)",
                promoted.elapsed()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the store did not follow the failover: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        store.get("before").await.expect("get").is_some(),
        "written before the failover"
    );
    let replay = store
        .events_after("before", "p1", None, 10)
        .await
        .expect("replay");
    assert_eq!(replay.first().map(|e| &e.id), Some(&ev));
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
        .arg(format!("{}session:{{open-a}}", opts.redis_prefix))
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
