//! Contract cases for session records, listing, expiry and the upstream mapping.

use super::{put, record};
use crate::{SessionFilter, SessionRecord, SessionStatus, SessionStore, StoreError};
use std::time::Duration;

fn ids(recs: &[SessionRecord]) -> Vec<&str> {
    recs.iter().map(|r| r.id.as_str()).collect()
}

fn owned(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|s| (*s).to_owned()).collect()
}

pub(super) async fn create_get_exists(store: &dyn SessionStore) {
    assert!(!store.backend().is_empty());
    let mut rec = record("s-create");
    rec.upstream_session_id = Some("up-create".into());
    put(store, &rec).await;
    assert_eq!(
        store.get("s-create").await.expect("get"),
        Some(rec.clone()),
        "round trip"
    );

    let mut sparse = record("s-sparse");
    sparse.protocol_version = None;
    sparse.client_info = None;
    sparse.client_capabilities = None;
    sparse.principal = None;
    sparse.owner = None;
    sparse.route = String::new();
    sparse.status = SessionStatus::Ended;
    put(store, &sparse).await;
    assert_eq!(
        store.get("s-sparse").await.expect("get"),
        Some(sparse),
        "round trip of Nones"
    );

    assert_eq!(store.get("s-missing").await.expect("get missing"), None);

    let mut again = record("s-create");
    again.route = "other".into();
    match store.create(&again).await {
        Err(StoreError::Exists(id)) => assert_eq!(id, "s-create"),
        other => panic!("second create must be Exists, got {other:?}"),
    }
    assert_eq!(
        store.get("s-create").await.expect("get"),
        Some(rec),
        "failed create changed nothing"
    );
}

pub(super) async fn get_many_in_order(store: &dyn SessionStore) {
    let a = record("gm-a");
    let mut c = record("gm-c");
    c.route = "rc".into();
    put(store, &c).await;
    put(store, &a).await;
    let got = store
        .get_many(&owned(&["gm-c", "gm-missing", "gm-a", "gm-c"]))
        .await
        .expect("get_many");
    assert_eq!(got, vec![Some(c.clone()), None, Some(a), Some(c)]);
    assert!(
        store
            .get_many(&[])
            .await
            .expect("get_many empty")
            .is_empty()
    );
}

pub(super) async fn update_and_update_many(store: &dyn SessionStore) {
    put(store, &record("up-a")).await;
    put(store, &record("up-b")).await;

    let mut a = record("up-a");
    a.status = SessionStatus::Ended;
    a.protocol_version = Some("2025-03-26".into());
    a.client_info = None;
    a.last_active_ms += 10;
    assert!(store.update(&a).await.expect("update"));
    assert_eq!(store.get("up-a").await.expect("get"), Some(a.clone()));

    let ghost = record("up-ghost");
    assert!(!store.update(&ghost).await.expect("update missing"));
    assert_eq!(
        store.get("up-ghost").await.expect("get"),
        None,
        "update must not create"
    );

    let mut a2 = a.clone();
    a2.route = "r-new".into();
    let mut b2 = record("up-b");
    b2.owner = Some("replica-2".into());
    let n = store
        .update_many(&[a2.clone(), ghost, b2.clone()])
        .await
        .expect("update_many");
    assert_eq!(n, 2, "missing records are skipped");
    assert_eq!(store.get("up-a").await.expect("get"), Some(a2));
    assert_eq!(store.get("up-b").await.expect("get"), Some(b2));
    assert_eq!(store.get("up-ghost").await.expect("get"), None);
    assert_eq!(store.update_many(&[]).await.expect("update_many empty"), 0);
}

pub(super) async fn touch_many_sets_activity(store: &dyn SessionStore) {
    let a = record("t-a");
    let b = record("t-b");
    let c = record("t-c");
    for r in [&a, &b, &c] {
        put(store, r).await;
    }
    let n = store
        .touch_many(&[
            ("t-a".into(), 1_800_000_000_000),
            ("t-missing".into(), 5),
            ("t-b".into(), 1_800_000_000_001),
        ])
        .await
        .expect("touch_many");
    assert_eq!(n, 2);
    let got = store
        .get_many(&owned(&["t-a", "t-b", "t-c", "t-missing"]))
        .await
        .expect("get_many");
    let mut want_a = a;
    want_a.last_active_ms = 1_800_000_000_000;
    let mut want_b = b;
    want_b.last_active_ms = 1_800_000_000_001;
    assert_eq!(
        got,
        vec![Some(want_a), Some(want_b.clone()), Some(c), None],
        "only last_active_ms changes"
    );
    assert_eq!(store.touch_many(&[]).await.expect("touch_many empty"), 0);

    // A later full update still wins over an earlier touch, and a touch after it applies.
    let mut b2 = want_b;
    b2.route = "rb".into();
    assert!(store.update(&b2).await.expect("update"));
    assert_eq!(
        store.touch_many(&[("t-b".into(), 7)]).await.expect("touch"),
        1
    );
    b2.last_active_ms = 7;
    assert_eq!(store.get("t-b").await.expect("get"), Some(b2));
}

pub(super) async fn delete_removes_mapping_and_events(store: &dyn SessionStore) {
    let mut a = record("d-a");
    a.upstream_session_id = Some("d-up-a".into());
    let mut b = record("d-b");
    b.upstream_session_id = Some("d-up-b".into());
    put(store, &a).await;
    put(store, &b).await;
    let ea = store
        .append_event("d-a", "s1", b"one")
        .await
        .expect("append");
    store
        .append_event("d-a", "s2", b"two")
        .await
        .expect("append");
    let eb = store
        .append_event("d-b", "s1", b"keep")
        .await
        .expect("append");

    assert!(store.delete("d-a").await.expect("delete"));
    assert_eq!(store.get("d-a").await.expect("get"), None);
    assert_eq!(
        store.find_by_upstream_id("d-up-a").await.expect("find"),
        None,
        "mapping removed"
    );
    for stream in ["s1", "s2"] {
        assert!(
            store
                .events_after("d-a", stream, None, 10)
                .await
                .expect("events")
                .is_empty(),
            "events removed"
        );
    }
    assert!(matches!(
        store.events_after("d-a", "s1", Some(&ea), 10).await,
        Err(StoreError::EventGone(_))
    ));
    assert!(
        !store.delete("d-a").await.expect("second delete"),
        "already gone"
    );

    // The other session is untouched.
    assert_eq!(store.get("d-b").await.expect("get"), Some(b));
    assert_eq!(
        store.find_by_upstream_id("d-up-b").await.expect("find"),
        Some("d-b".into())
    );
    let left = store
        .events_after("d-b", "s1", None, 10)
        .await
        .expect("events");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id, eb);
    assert_eq!(left[0].data, b"keep");

    // Events of an id without a record are removed too (and delete reports no session).
    store
        .append_event("d-orphan", "s", b"x")
        .await
        .expect("append");
    assert!(!store.delete("d-orphan").await.expect("delete orphan"));
    assert!(
        store
            .events_after("d-orphan", "s", None, 10)
            .await
            .expect("events")
            .is_empty()
    );
}

/// id, status, route, owner, principal, last_active_ms.
type FilterSpec = (
    &'static str,
    SessionStatus,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    u64,
);

/// Six sessions with distinct combinations of the filterable fields.
async fn seed_filter_set(store: &dyn SessionStore) {
    let specs: [FilterSpec; 6] = [
        (
            "f1",
            SessionStatus::Active,
            "r1",
            Some("o1"),
            Some("alice"),
            1000,
        ),
        (
            "f2",
            SessionStatus::Ended,
            "r1",
            Some("o2"),
            Some("bob"),
            2000,
        ),
        ("f3", SessionStatus::Active, "r2", Some("o1"), None, 3000),
        ("f4", SessionStatus::Active, "", None, Some("alice"), 4000),
        (
            "f5",
            SessionStatus::Ended,
            "r2",
            Some("o1"),
            Some("alice"),
            5000,
        ),
        (
            "f6",
            SessionStatus::Active,
            "r1",
            Some("o2"),
            Some("bob"),
            6000,
        ),
    ];
    // Insert out of id order: listings must still come back ordered by id.
    for i in [3, 0, 5, 1, 4, 2] {
        let (id, status, route, owner, principal, last) = specs[i];
        let mut r = record(id);
        r.status = status;
        r.route = route.into();
        r.owner = owner.map(Into::into);
        r.principal = principal.map(Into::into);
        r.last_active_ms = last;
        put(store, &r).await;
    }
}

fn filter_cases() -> Vec<(SessionFilter, Vec<&'static str>)> {
    vec![
        (
            SessionFilter::default(),
            vec!["f1", "f2", "f3", "f4", "f5", "f6"],
        ),
        (
            SessionFilter {
                status: Some(SessionStatus::Active),
                ..Default::default()
            },
            vec!["f1", "f3", "f4", "f6"],
        ),
        (
            SessionFilter {
                status: Some(SessionStatus::Ended),
                ..Default::default()
            },
            vec!["f2", "f5"],
        ),
        (
            SessionFilter {
                route: Some("r1".into()),
                ..Default::default()
            },
            vec!["f1", "f2", "f6"],
        ),
        (
            SessionFilter {
                route: Some(String::new()),
                ..Default::default()
            },
            vec!["f4"],
        ),
        (
            SessionFilter {
                owner: Some("o1".into()),
                ..Default::default()
            },
            vec!["f1", "f3", "f5"],
        ),
        (
            SessionFilter {
                principal: Some("alice".into()),
                ..Default::default()
            },
            vec!["f1", "f4", "f5"],
        ),
        (
            SessionFilter {
                idle_since_ms: Some(3000),
                ..Default::default()
            },
            vec!["f1", "f2", "f3"],
        ),
        (
            SessionFilter {
                idle_since_ms: Some(999),
                ..Default::default()
            },
            vec![],
        ),
        (
            SessionFilter {
                status: Some(SessionStatus::Active),
                route: Some("r1".into()),
                owner: Some("o2".into()),
                principal: Some("bob".into()),
                idle_since_ms: Some(6000),
            },
            vec!["f6"],
        ),
        (
            SessionFilter {
                route: Some("nope".into()),
                ..Default::default()
            },
            vec![],
        ),
    ]
}

pub(super) async fn list_filters(store: &dyn SessionStore) {
    seed_filter_set(store).await;
    for (filter, want) in filter_cases() {
        let page = store.list(&filter, None, 100).await.expect("list");
        assert_eq!(ids(&page.sessions), want, "filter {filter:?}");
        assert_eq!(page.next, None, "single page for {filter:?}");
    }
    // Whole records come back, not just ids.
    let page = store
        .list(
            &SessionFilter {
                route: Some(String::new()),
                ..Default::default()
            },
            None,
            10,
        )
        .await
        .expect("list");
    assert_eq!(page.sessions.first().map(|r| r.last_active_ms), Some(4000));
    assert_eq!(
        page.sessions.first().and_then(|r| r.principal.clone()),
        Some("alice".into())
    );
}

pub(super) async fn count_filters(store: &dyn SessionStore) {
    assert_eq!(
        store
            .count(&SessionFilter::default())
            .await
            .expect("count empty"),
        0
    );
    seed_filter_set(store).await;
    for (filter, want) in filter_cases() {
        assert_eq!(
            store.count(&filter).await.expect("count"),
            want.len(),
            "filter {filter:?}"
        );
    }
}

/// Pages through everything matching `filter` with page size `limit`.
async fn pages(store: &dyn SessionStore, filter: &SessionFilter, limit: usize) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .list(filter, after.as_deref(), limit)
            .await
            .expect("list page");
        out.push(
            page.sessions
                .iter()
                .map(|r| r.id.clone())
                .collect::<Vec<_>>(),
        );
        match page.next {
            Some(next) => {
                assert_eq!(
                    Some(&next),
                    page.sessions.last().map(|r| &r.id),
                    "next is the page's last id"
                );
                after = Some(next);
            }
            None => return out,
        }
        assert!(out.len() <= 20, "pagination does not end");
    }
}

pub(super) async fn list_pagination(store: &dyn SessionStore) {
    assert_eq!(
        store
            .list(&SessionFilter::default(), None, 10)
            .await
            .expect("list empty"),
        Default::default()
    );
    for (i, id) in ["p05", "p02", "p07", "p01", "p04", "p06", "p03"]
        .into_iter()
        .enumerate()
    {
        let mut r = record(id);
        if i % 2 == 1 {
            r.status = SessionStatus::Ended; // p02, p01, p06
        }
        put(store, &r).await;
    }
    let all = SessionFilter::default();
    assert_eq!(
        pages(store, &all, 3).await,
        vec![
            owned(&["p01", "p02", "p03"]),
            owned(&["p04", "p05", "p06"]),
            owned(&["p07"]),
        ]
    );
    assert_eq!(
        pages(store, &all, 7).await,
        vec![owned(&["p01", "p02", "p03", "p04", "p05", "p06", "p07"])]
    );
    let halves = pages(store, &all, 1).await;
    assert_eq!(halves.len(), 7, "limit 1: one per page");
    assert_eq!(
        pages(store, &all, 0).await.len(),
        7,
        "limit 0 is clamped to 1"
    );
    let active = SessionFilter {
        status: Some(SessionStatus::Active),
        ..Default::default()
    };
    assert_eq!(
        pages(store, &active, 2).await,
        vec![owned(&["p03", "p04"]), owned(&["p05", "p07"])]
    );
    // `after` need not be an existing id, and after the last id there is nothing.
    let page = store.list(&all, Some("p045"), 2).await.expect("list");
    assert_eq!(ids(&page.sessions), vec!["p05", "p06"]);
    assert_eq!(page.next.as_deref(), Some("p06"));
    let page = store.list(&all, Some("p07"), 5).await.expect("list");
    assert_eq!(page, Default::default());
}

pub(super) async fn expire_idle_only(store: &dyn SessionStore) {
    let now = 1_000_000;
    let ttl = Duration::from_secs(100); // cutoff: now - 100_000 = 900_000
    let specs = [
        ("e-old", 100_000),
        ("e-older", 5),
        ("e-edge", 900_000),
        ("e-new", 999_000),
    ];
    for (id, last) in specs {
        let mut r = record(id);
        r.last_active_ms = last;
        r.upstream_session_id = Some(format!("{id}-up"));
        put(store, &r).await;
        store.append_event(id, "s", b"ev").await.expect("append");
    }
    assert!(
        store
            .expire(50_000, ttl)
            .await
            .expect("expire early")
            .is_empty(),
        "now < ttl expires nothing"
    );

    let mut gone = store.expire(now, ttl).await.expect("expire");
    gone.sort();
    assert_eq!(gone, owned(&["e-old", "e-older"]));
    for id in ["e-old", "e-older"] {
        assert_eq!(store.get(id).await.expect("get"), None);
        assert_eq!(
            store
                .find_by_upstream_id(&format!("{id}-up"))
                .await
                .expect("find"),
            None
        );
        assert!(
            store
                .events_after(id, "s", None, 10)
                .await
                .expect("events")
                .is_empty()
        );
    }
    for id in ["e-edge", "e-new"] {
        assert!(store.get(id).await.expect("get").is_some(), "{id} kept");
        assert_eq!(
            store
                .find_by_upstream_id(&format!("{id}-up"))
                .await
                .expect("find"),
            Some(id.to_owned())
        );
        assert_eq!(
            store
                .events_after(id, "s", None, 10)
                .await
                .expect("events")
                .len(),
            1
        );
    }
    assert!(
        store
            .expire(now, ttl)
            .await
            .expect("expire again")
            .is_empty()
    );
    assert_eq!(
        store.count(&SessionFilter::default()).await.expect("count"),
        2
    );
}

pub(super) async fn upstream_mapping_follows_updates(store: &dyn SessionStore) {
    let mut r = record("m-a");
    r.upstream_session_id = Some("u-1".into());
    put(store, &r).await;
    put(store, &record("m-b")).await; // no upstream id
    assert_eq!(
        store.find_by_upstream_id("u-1").await.expect("find"),
        Some("m-a".into())
    );
    assert_eq!(
        store.find_by_upstream_id("u-unknown").await.expect("find"),
        None
    );

    r.upstream_session_id = Some("u-2".into());
    assert!(store.update(&r).await.expect("update"));
    assert_eq!(
        store.find_by_upstream_id("u-1").await.expect("find"),
        None,
        "old mapping dropped"
    );
    assert_eq!(
        store.find_by_upstream_id("u-2").await.expect("find"),
        Some("m-a".into())
    );

    // A session learning its upstream id later (the usual case for HTTP upstreams).
    let mut b = record("m-b");
    b.upstream_session_id = Some("u-3".into());
    assert_eq!(
        store
            .update_many(std::slice::from_ref(&b))
            .await
            .expect("update_many"),
        1
    );
    assert_eq!(
        store.find_by_upstream_id("u-3").await.expect("find"),
        Some("m-b".into())
    );

    r.upstream_session_id = None;
    assert!(store.update(&r).await.expect("update"));
    assert_eq!(
        store.find_by_upstream_id("u-2").await.expect("find"),
        None,
        "mapping cleared"
    );
    assert_eq!(
        store.find_by_upstream_id("u-3").await.expect("find"),
        Some("m-b".into())
    );
}

/// A composite session's state is kept with its record: written by `create` and `update`,
/// replaced, cleared, listed, and left alone by `touch_many` (which only moves activity).
pub(super) async fn composite_state_round_trips(store: &dyn SessionStore) {
    let state = |member_session: &str| {
        serde_json::json!({
            "init": {"protocolVersion": "2025-06-18", "capabilities": {"roots": {}}},
            "members": [
                {"name": "web", "session": member_session, "version": "2025-06-18"},
                {"name": "files", "session": null},
            ],
        })
    };
    let mut rec = record("cs-a");
    rec.composite = Some(state("up-1"));
    put(store, &rec).await;
    assert_eq!(store.get("cs-a").await.expect("get"), Some(rec.clone()));

    // A member reconnected with a new upstream session: the state is replaced whole.
    rec.composite = Some(state("up-2"));
    rec.owner = Some("replica-2".into());
    assert!(store.update(&rec).await.expect("update"));
    assert_eq!(store.get("cs-a").await.expect("get"), Some(rec.clone()));

    assert_eq!(
        store
            .touch_many(&[("cs-a".into(), rec.last_active_ms + 5)])
            .await
            .expect("touch"),
        1
    );
    let touched = store.get("cs-a").await.expect("get").expect("the record");
    assert_eq!(touched.composite, rec.composite, "activity keeps the state");

    let plain = record("cs-b");
    put(store, &plain).await;
    let page = store
        .list(&SessionFilter::default(), None, 10)
        .await
        .expect("list");
    let listed: Vec<Option<serde_json::Value>> =
        page.sessions.into_iter().map(|r| r.composite).collect();
    assert_eq!(listed, vec![rec.composite.clone(), None]);

    rec.composite = None;
    rec.last_active_ms = touched.last_active_ms;
    assert!(store.update(&rec).await.expect("update"));
    assert_eq!(store.get("cs-a").await.expect("get"), Some(rec), "cleared");
}

/// `claim_owner` sets the owner only from the expected one, only on an active record, and
/// changes nothing else: the composite state, the upstream mapping and activity stay.
pub(super) async fn claim_owner_compares_and_sets(store: &dyn SessionStore) {
    let mut rec = record("co-a");
    rec.upstream_session_id = Some("co-up".into());
    rec.composite = Some(serde_json::json!({"members": [{"name": "web", "session": "s-1"}]}));
    put(store, &rec).await;
    assert_eq!(
        store
            .touch_many(&[("co-a".into(), rec.last_active_ms + 7)])
            .await
            .expect("touch"),
        1
    );
    rec.last_active_ms += 7;

    let claim = |expected: Option<&'static str>, owner: &'static str| {
        store.claim_owner("co-a", expected, owner)
    };
    assert!(
        !claim(Some("replica-9"), "replica-2").await.expect("claim"),
        "another owner is expected: nothing changes"
    );
    assert!(
        !claim(None, "replica-2").await.expect("claim"),
        "it has one"
    );
    assert_eq!(store.get("co-a").await.expect("get"), Some(rec.clone()));

    assert!(claim(Some("replica-1"), "replica-2").await.expect("claim"));
    rec.owner = Some("replica-2".into());
    assert_eq!(
        store.get("co-a").await.expect("get"),
        Some(rec.clone()),
        "only the owner changed"
    );
    assert_eq!(
        store.find_by_upstream_id("co-up").await.expect("find"),
        Some("co-a".into())
    );
    assert!(
        !claim(Some("replica-1"), "replica-3").await.expect("claim"),
        "a claim from the old owner loses once another won"
    );
    assert!(
        claim(Some("replica-2"), "replica-2").await.expect("claim"),
        "claiming what one owns holds"
    );
    assert_eq!(store.get("co-a").await.expect("get"), Some(rec.clone()));

    let mut none = record("co-b");
    none.owner = None;
    put(store, &none).await;
    assert!(
        store
            .claim_owner("co-b", None, "replica-2")
            .await
            .expect("claim"),
        "no owner: claimed from none"
    );
    none.owner = Some("replica-2".into());
    assert_eq!(store.get("co-b").await.expect("get"), Some(none));

    let mut ended = record("co-c");
    ended.status = SessionStatus::Ended;
    put(store, &ended).await;
    assert!(
        !store
            .claim_owner("co-c", Some("replica-1"), "replica-2")
            .await
            .expect("claim"),
        "an ended session is not claimed"
    );
    assert_eq!(store.get("co-c").await.expect("get"), Some(ended));
    assert!(
        !store
            .claim_owner("co-none", Some("replica-1"), "replica-2")
            .await
            .expect("claim"),
        "no such session"
    );
    assert_eq!(
        store.get("co-none").await.expect("get"),
        None,
        "not created"
    );
}

/// Replicas that take over one session at once: of concurrent claims from the same owner,
/// exactly one wins, and the record names the winner.
pub(super) async fn concurrent_claims_succeed_once(store: &dyn SessionStore) {
    let rec = record("co-race");
    put(store, &rec).await;
    let claim = |owner: &'static str| store.claim_owner("co-race", Some("replica-1"), owner);
    let (a, b, c, d) = tokio::join!(
        claim("racer-a"),
        claim("racer-b"),
        claim("racer-c"),
        claim("racer-d")
    );
    let won: Vec<&str> = [
        ("racer-a", a),
        ("racer-b", b),
        ("racer-c", c),
        ("racer-d", d),
    ]
    .into_iter()
    .filter_map(|(who, r)| r.expect("claim").then_some(who))
    .collect();
    assert_eq!(won.len(), 1, "exactly one claim wins: {won:?}");
    let now = store
        .get("co-race")
        .await
        .expect("get")
        .expect("the record");
    assert_eq!(now.owner.as_deref(), Some(won[0]));
    assert_eq!(
        now,
        SessionRecord {
            owner: Some(won[0].to_owned()),
            ..rec
        }
    );
}
