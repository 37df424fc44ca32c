//! Composite sessions over a shared store: replicas that take over a session whose owner is
//! gone (racing each other, losing the claim, or finding the upstream a server ran on gone
//! too), against fake Streamable HTTP servers.

use super::{Client, Fake, Running, WAIT, serve, serve_addressed};
use shadowcat_store::{
    LoggedEvent, MemoryStore, Retention, SessionFilter, SessionPage, SessionRecord, SessionStore,
    StoreResult,
};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A gateway configuration with a composite `/mcp` over `servers` (name, URL).
fn composite_route(servers: &[(&str, &str)]) -> String {
    let mut s = String::from("[server]\nlisten = \"127.0.0.1:0\"\n[[routes]]\npath = \"/mcp\"\n");
    for (name, url) in servers {
        s.push_str(&format!(
            "[[routes.servers]]\nname = \"{name}\"\nurl = \"{url}\"\n"
        ));
    }
    s
}

/// Session `id`'s record once `ready` holds for it (the composite state is written in the
/// background after the handshake).
async fn record_when(
    store: &dyn SessionStore,
    id: &str,
    ready: impl Fn(&SessionRecord) -> bool,
) -> SessionRecord {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let rec = store.get(id).await.unwrap();
        if let Some(rec) = rec.filter(|r| ready(r)) {
            return rec;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the record of {id} never got there: {:?}",
            store.get(id).await
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A client of the gateway `at` continuing session `id`.
fn continuing(at: &Running, id: &str) -> Client {
    let mut c = Client::new(&at.url);
    c.session = Some(id.to_string());
    c
}

/// Two replicas that both find a composite session's owner gone take it over at the same
/// moment. Only the one whose claim in the store wins adopts it — its members are started
/// once — and the other forwards its request there; both requests are answered, and the
/// record names the winner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_racing_to_take_over_a_composite_session_adopt_it_once() {
    let (web, web_url) = Fake::start("web").await;
    // Continued elsewhere it starts afresh, as a stdio server would, and takes its time: the
    // two takeovers overlap.
    let slow = Fake {
        sessionless: true,
        init_delay: Duration::from_millis(300),
        ..Fake::named("slow")
    };
    let (slow, slow_url, _) = Fake::serve(slow, CancellationToken::new()).await;
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let config = composite_route(&[("web", &web_url), ("slow", &slow_url)]);
    // The owner's address refuses connections: to the other replicas it is gone.
    let owner = serve(&config, store.clone(), "http://127.0.0.1:1").await;
    let two = serve_addressed(&config, store.clone()).await;
    let three = serve_addressed(&config, store.clone()).await;
    let mut c = Client::new(&owner.url);
    assert_eq!(c.initialize().await.0, 200);
    assert_eq!(c.call(1, "web__x").await, "web");
    let id = c.session.clone().unwrap();
    record_when(&*store, &id, |r| r.composite.is_some()).await;

    let (mut on_two, mut on_three) = (continuing(&two, &id), continuing(&three, &id));
    let (a, b) = tokio::join!(on_two.call(2, "slow__x"), on_three.call(3, "slow__x"));
    assert_eq!((a.as_str(), b.as_str()), ("slow", "slow"));

    let adopted = |sessions: Vec<(String, String)>| {
        assert!(
            sessions.is_empty() || sessions == [(id.clone(), "adopted".to_string())],
            "{sessions:?}"
        );
        !sessions.is_empty()
    };
    let (by_two, by_three) = (
        adopted(two.sessions().await),
        adopted(three.sessions().await),
    );
    assert!(
        by_two != by_three,
        "exactly one replica adopted the session (two: {by_two}, three: {by_three})"
    );
    assert_eq!(
        slow.sessions.load(Ordering::SeqCst),
        2,
        "the fresh server started once by its owner and once by the replica that took over"
    );
    assert_eq!(
        web.sessions.load(Ordering::SeqCst),
        1,
        "the HTTP server goes on with its session"
    );
    let winner = if by_two { &two } else { &three };
    let rec = store.get(&id).await.unwrap().unwrap();
    assert_eq!(
        rec.owner.as_deref(),
        winner.url.strip_suffix("/mcp"),
        "the record names the winner"
    );
    // Its next requests reach it from either replica.
    assert_eq!(continuing(&two, &id).call(4, "web__x").await, "web");
    assert_eq!(continuing(&three, &id).call(5, "slow__x").await, "slow");
    assert_eq!(slow.sessions.load(Ordering::SeqCst), 2);
    for gw in [owner, two, three] {
        gw.shutdown().await;
    }
}

/// A composite session continued by another replica after the upstream its server ran on
/// died: the server's set has two upstreams, the recorded one refuses connections by then. The
/// recorded upstream is probed, counted and ejected, and the server is placed afresh on the
/// other one at once — the first call after the takeover is answered there.
#[tokio::test]
async fn a_taken_over_composite_server_leaves_its_dead_recorded_upstream() {
    let stop_a = CancellationToken::new();
    let (a, a_url, a_done) = Fake::serve(Fake::named("a"), stop_a.clone()).await;
    let (b, b_url) = Fake::start("b").await;
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[[routes]]\npath = \"/mcp\"\n\
         [[routes.servers]]\nname = \"web\"\nbalance = \"round-robin\"\n\
         [[routes.servers.upstreams]]\nurl = \"{a_url}\"\n\
         [[routes.servers.upstreams]]\nurl = \"{b_url}\"\n"
    );
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let owner = serve(&config, store.clone(), "one").await;
    let other = serve(&config, store.clone(), "two").await;
    let mut c = Client::new(&owner.url);
    assert_eq!(c.initialize().await.0, 200);
    assert_eq!(
        c.call(1, "web__x").await,
        "a",
        "placed on the first upstream"
    );
    let id = c.session.clone().unwrap();
    record_when(&*store, &id, |r| {
        r.composite.as_ref().is_some_and(|c| {
            c["members"][0]["session"].is_string() && c["members"][0]["upstream"].is_string()
        })
    })
    .await;

    stop_a.cancel();
    a_done.await.unwrap();
    // The owner ("one") has no address: the other replica takes the session over.
    assert_eq!(continuing(&other, &id).call(2, "web__x").await, "b");
    assert_eq!(b.sessions.load(Ordering::SeqCst), 1, "a new session on b");
    assert_eq!(a.sessions.load(Ordering::SeqCst), 1);
    let ups = other.admin_get("/api/upstreams").await;
    let route = ups["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["path"] == "/mcp")
        .unwrap_or_else(|| panic!("/mcp: {ups}"));
    let set = &route["servers"][0]["upstreams"];
    assert_eq!(set[0]["name"], serde_json::json!(a_url), "{ups}");
    assert_eq!(set[0]["available"], false, "ejected: {ups}");
    assert_eq!(set[0]["connect_failures"], 1, "{ups}");
    assert_eq!(set[1]["available"], true, "{ups}");
    for gw in [owner, other] {
        gw.shutdown().await;
    }
}

/// A shared store in which another replica, `by` (an id that is not an address), always
/// claims a session a moment before this replica does: the claims this replica makes lose the
/// race, every time.
struct Preempted {
    inner: Arc<dyn SessionStore>,
    by: &'static str,
}

#[async_trait::async_trait]
impl SessionStore for Preempted {
    fn backend(&self) -> &'static str {
        "memory"
    }
    async fn claim_owner(
        &self,
        id: &str,
        expected: Option<&str>,
        owner: &str,
    ) -> StoreResult<bool> {
        self.inner.claim_owner(id, expected, self.by).await?;
        self.inner.claim_owner(id, expected, owner).await
    }
    async fn create(&self, rec: &SessionRecord) -> StoreResult<()> {
        self.inner.create(rec).await
    }
    async fn get(&self, id: &str) -> StoreResult<Option<SessionRecord>> {
        self.inner.get(id).await
    }
    async fn get_many(&self, ids: &[String]) -> StoreResult<Vec<Option<SessionRecord>>> {
        self.inner.get_many(ids).await
    }
    async fn update(&self, rec: &SessionRecord) -> StoreResult<bool> {
        self.inner.update(rec).await
    }
    async fn update_many(&self, recs: &[SessionRecord]) -> StoreResult<usize> {
        self.inner.update_many(recs).await
    }
    async fn touch_many(&self, touches: &[(String, u64)]) -> StoreResult<usize> {
        self.inner.touch_many(touches).await
    }
    async fn delete(&self, id: &str) -> StoreResult<bool> {
        self.inner.delete(id).await
    }
    async fn list(
        &self,
        f: &SessionFilter,
        after: Option<&str>,
        n: usize,
    ) -> StoreResult<SessionPage> {
        self.inner.list(f, after, n).await
    }
    async fn count(&self, filter: &SessionFilter) -> StoreResult<usize> {
        self.inner.count(filter).await
    }
    async fn expire(&self, now_ms: u64, idle_ttl: Duration) -> StoreResult<Vec<String>> {
        self.inner.expire(now_ms, idle_ttl).await
    }
    async fn find_by_upstream_id(&self, up: &str) -> StoreResult<Option<String>> {
        self.inner.find_by_upstream_id(up).await
    }
    async fn append_event(&self, session: &str, stream: &str, data: &[u8]) -> StoreResult<String> {
        self.inner.append_event(session, stream, data).await
    }
    async fn events_after(
        &self,
        session: &str,
        stream: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<LoggedEvent>> {
        self.inner.events_after(session, stream, after, limit).await
    }
    async fn trim_events(&self, session: &str, stream: &str, r: Retention) -> StoreResult<usize> {
        self.inner.trim_events(session, stream, r).await
    }
    async fn trim_session_bytes(&self, session: &str, max_bytes: u64) -> StoreResult<usize> {
        self.inner.trim_session_bytes(session, max_bytes).await
    }
    async fn ping(&self) -> StoreResult<()> {
        self.inner.ping().await
    }
    async fn doc_put(&self, ns: &str, key: &str, value: &[u8]) -> StoreResult<()> {
        self.inner.doc_put(ns, key, value).await
    }
    async fn doc_get(&self, ns: &str, key: &str) -> StoreResult<Option<Vec<u8>>> {
        self.inner.doc_get(ns, key).await
    }
    async fn doc_list(&self, ns: &str) -> StoreResult<Vec<(String, Vec<u8>)>> {
        self.inner.doc_list(ns).await
    }
    async fn doc_delete(&self, ns: &str, key: &str) -> StoreResult<bool> {
        self.inner.doc_delete(ns, key).await
    }
}

/// A replica that loses the claim to a session to one it cannot forward to (its id is not an
/// address) runs nothing of the session: the client is told to retry (`503`, `Retry-After`,
/// a JSON-RPC error saying so).
#[tokio::test]
async fn a_replica_that_loses_the_claim_to_an_unaddressed_one_asks_the_client_to_retry() {
    let (web, web_url) = Fake::start("web").await;
    let (fresh, fresh_url) = {
        let f = Fake {
            sessionless: true,
            ..Fake::named("fresh")
        };
        let (f, url, _) = Fake::serve(f, CancellationToken::new()).await;
        (f, url)
    };
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let config = composite_route(&[("web", &web_url), ("fresh", &fresh_url)]);
    let owner = serve(&config, store.clone(), "http://127.0.0.1:1").await;
    let preempted = Arc::new(Preempted {
        inner: store.clone(),
        by: "elsewhere",
    });
    let loser = serve_addressed(&config, preempted).await;
    let mut c = Client::new(&owner.url);
    assert_eq!(c.initialize().await.0, 200);
    let id = c.session.clone().unwrap();
    record_when(&*store, &id, |r| r.composite.is_some()).await;

    let (status, headers, body) = continuing(&loser, &id)
        .post(
            serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "web__x", "arguments": {}}}),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(body["error"]["code"], -32603, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("retry")),
        "{body}"
    );
    assert!(
        loser.sessions().await.is_empty(),
        "the loser adopted nothing"
    );
    assert_eq!(
        fresh.sessions.load(Ordering::SeqCst),
        1,
        "nothing started by the loser"
    );
    assert_eq!(web.sessions.load(Ordering::SeqCst), 1);
    let rec = store.get(&id).await.unwrap().unwrap();
    assert_eq!(rec.owner.as_deref(), Some("elsewhere"));
    for gw in [owner, loser] {
        gw.shutdown().await;
    }
}
