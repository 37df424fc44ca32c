//! Configuration hot reload of `shadowcat gateway`, end to end with the real binary: `SIGHUP`,
//! `--watch` and `POST /admin/reload`; routes added and removed (a removed route's session
//! drains and ends with a clear error), an API key changed, invalid files and restart-only
//! changes refused by every trigger while the old configuration keeps serving, per-route
//! tasks (spares, health checkers) following the reload, and reloads under load with zero
//! failed requests.

use super::admin::{call, start};
use super::gateway_support::{
    FakeUpstream, Fault, client, config_file, get, run, sample, with_api_keys,
};
use super::harness::{Raw, WAIT, bin, wait_descendants};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// `[server]` on an ephemeral port with `extra` lines, and an admin listener without a token
/// (loopback).
fn server(extra: &str) -> String {
    format!("[server]\nlisten = \"127.0.0.1:0\"\n{extra}\n[admin]\nlisten = \"127.0.0.1:0\"\n")
}

/// A route `path` over these upstream URLs (`url`, or `url weight`).
fn route(path: &str, upstreams: &[&str]) -> String {
    let mut t = format!("[[routes]]\npath = \"{path}\"\n");
    for u in upstreams {
        let (url, weight) = u.split_once(' ').unwrap_or((u, "1"));
        t.push_str(&format!(
            "[[routes.upstreams]]\nurl = \"{url}\"\nweight = {weight}\n"
        ));
    }
    t
}

fn hangup(pid: u32) {
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("send SIGHUP");
}

/// Wait until at least `n` stderr lines contain every needle.
async fn wait_lines(p: &super::harness::Process, needles: &[&str], n: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let seen = p
            .log()
            .iter()
            .filter(|l| needles.iter().all(|x| l.contains(x)))
            .count();
        if seen >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "fewer than {n} lines with {needles:?}:\n{}",
            p.log().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn tool_call(id: i64) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"who","arguments":{}}})
}

async fn metrics(base: &str) -> String {
    let (status, _, text) = get(base, "/metrics").await;
    assert_eq!(status, 200, "{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_and_removes_routes_and_the_removed_routes_session_drains_with_a_clear_error() {
    let (one, old, new) = (
        FakeUpstream::start("one").await,
        FakeUpstream::start("old").await,
        FakeUpstream::start("new").await,
    );
    let grace = "drain_grace = \"3s\"";
    let (dir, cfg) = config_file(&format!(
        "{}{}{}{}",
        server(grace),
        route("/mcp", &[&one.url]),
        route("/servers/old/mcp", &[&old.url]),
        "[[routes.rules]]\neffect = \"deny\"\ntools = [\"secret\"]\n"
    ));
    let gw = start(&["--config", &cfg], &[]).await;
    let base = gw.server.base.clone();

    let mut on_old = Raw::new(format!("{base}/servers/old/mcp"));
    on_old.initialize().await;
    assert_eq!(on_old.call_tool(1, "who", json!({})).await, "old");
    let mut on_new = Raw::new(format!("{base}/servers/new/mcp"));
    assert_eq!(
        on_new
            .post(super::harness::init_body(0, on_new.version))
            .await
            .status,
        404
    );

    std::fs::write(
        dir.path().join("gateway.toml"),
        format!(
            "{}{}{}",
            server(grace),
            route("/mcp", &[&one.url]),
            route("/servers/new/mcp", &[&new.url])
        ),
    )
    .unwrap();
    hangup(gw.server.pid());
    let line = gw
        .server
        .wait_log(&["configuration reloaded", "generation=2"])
        .await;
    assert!(line.contains("trigger=\"sighup\""), "{line}");
    assert!(
        line.contains("routes_added=[\"/servers/new/mcp\"]"),
        "{line}"
    );
    assert!(
        line.contains("routes_removed=[\"/servers/old/mcp\"]"),
        "{line}"
    );
    assert!(line.contains("draining=1"), "{line}");

    // The new route serves at once; the removed one takes no new session…
    on_new.initialize().await;
    assert_eq!(on_new.call_tool(1, "who", json!({})).await, "new");
    let fresh = Raw::new(format!("{base}/servers/old/mcp"));
    let r = fresh
        .post(super::harness::init_body(0, fresh.version))
        .await;
    assert_eq!(r.status, 404, "{}", r.body);
    // …but its live session keeps its upstream during the grace.
    assert_eq!(on_old.call_tool(2, "who", json!({})).await, "old");
    // …under its route's rules, which the new configuration no longer has.
    let r = on_old
        .post(json!({"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"secret","arguments":{}}}))
        .await;
    assert!(
        r.messages()[0]["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("secret")),
        "refused by the removed route's rule: {}",
        r.body
    );

    // A call in flight when the grace ends gets a JSON-RPC error saying why.
    old.set_fault(Some(Fault::Hang));
    let mut hung = Raw::new(on_old.url.clone());
    hung.session = on_old.session.clone();
    let r = hung.post(tool_call(3)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let answer = r
        .messages()
        .into_iter()
        .find(|m| m["id"] == json!(3))
        .unwrap_or_else(|| panic!("no answer: {}", r.body));
    let msg = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("its route /servers/old/mcp was removed by a configuration reload"),
        "{answer}"
    );
    // The session is over; its id gets 404 with the same reason.
    let r = on_old.post(tool_call(4)).await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(
        r.body.contains("was removed by a configuration reload"),
        "{}",
        r.body
    );

    let m = metrics(&base).await;
    assert_eq!(
        sample(&m, "shadowcat_config_reloads_total{result=\"ok\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(sample(&m, "shadowcat_config_generation"), Some(2.0));
    assert_eq!(sample(&m, "shadowcat_config_draining_sessions"), Some(0.0));
    // The admin page's numbers: generation and last reload.
    let (status, v) = call("GET", &format!("{}/api/metrics", gw.admin), None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["config"]["generation"], 2, "{v}");
    assert_eq!(v["config"]["last_reload"]["ok"], true, "{v}");
    assert_eq!(v["config"]["last_reload"]["trigger"], "sighup", "{v}");
    let (_, c) = call("GET", &format!("{}/api/config", gw.admin), None).await;
    assert_eq!(c["routes"][1]["path"], "/servers/new/mcp", "{c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_changed_by_post_admin_reload_refuses_the_old_key_and_accepts_the_new_one() {
    let one = FakeUpstream::start("one").await;
    let text = |key: &str| {
        format!(
            "{}[admin]\nlisten = \"127.0.0.1:0\"\n",
            with_api_keys("", &[("alice", key, "")], &route("/mcp", &[&one.url]))
        )
    };
    let (dir, cfg) = config_file(&text("alice-old-key-3f9a"));
    let gw = start(&["--config", &cfg], &[]).await;
    let url = format!("{}/mcp", gw.server.base);
    let mut before = client(url.clone(), Some("alice-old-key-3f9a"));
    before.initialize().await;
    assert_eq!(before.call_tool(1, "who", json!({})).await, "one");

    std::fs::write(dir.path().join("gateway.toml"), text("alice-new-key-81c2")).unwrap();
    let (status, v) = call("POST", &format!("{}/admin/reload", gw.admin), None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["generation"], 2, "{v}");
    assert_eq!(v["changes"]["auth"], true, "{v}");
    assert_eq!(v["draining"], 0, "{v}");

    // The old key is refused, even on its session…
    let r = before.post(tool_call(2)).await;
    assert_eq!(r.status, 401, "{}", r.body);
    let mut fresh = client(url.clone(), Some("alice-old-key-3f9a"));
    let r = fresh
        .post(super::harness::init_body(0, fresh.version))
        .await;
    assert_eq!(r.status, 401, "{}", r.body);
    // …the new one is accepted, for a new session and for the principal's own session.
    fresh = client(url.clone(), Some("alice-new-key-81c2"));
    fresh.initialize().await;
    assert_eq!(fresh.call_tool(1, "who", json!({})).await, "one");
    let mut same = client(url, Some("alice-new-key-81c2"));
    same.session = before.session.clone();
    assert_eq!(same.call_tool(3, "who", json!({})).await, "one");

    // No key (or its hash) in the log.
    let log = gw.server.log().join("\n");
    assert!(log.contains("auth_changed=true"), "{log}");
    assert!(
        !log.contains("alice-new-key") && !log.contains("alice-old-key"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_is_refused_by_every_trigger_with_the_errors_of_config_check_and_the_old_config_keeps_serving()
 {
    let (one, two) = (
        FakeUpstream::start("one").await,
        FakeUpstream::start("two").await,
    );
    let good = format!("{}{}", server(""), route("/mcp", &[&one.url]));
    let (dir, cfg) = config_file(&good);
    let path = dir.path().join("gateway.toml");
    let gw = start(&["--config", &cfg, "--watch"], &[]).await;
    let base = gw.server.base.clone();
    let p = &gw.server.process;
    let mut c = Raw::new(format!("{base}/mcp"));
    c.initialize().await;
    assert_eq!(c.call_tool(1, "who", json!({})).await, "one");

    // Two problems `config check` reports.
    let bad = format!(
        "{}[limits]\nper_ip = {{ requests = 0, per = \"1s\" }}\n{}",
        server(""),
        route("/api", &[&one.url])
    );
    std::fs::write(&path, &bad).unwrap();
    let (code, _, check) = run(&["config", "check", &cfg], &[]).await;
    assert_eq!(code, 1);
    let expected: Vec<&str> = check.lines().collect();
    assert_eq!(expected.len(), 2, "{check}");
    // --watch sees it…
    wait_lines(
        p,
        &["configuration reload refused;", "trigger=\"watch\""],
        1,
    )
    .await;
    // …SIGHUP…
    hangup(p.pid());
    wait_lines(
        p,
        &["configuration reload refused;", "trigger=\"sighup\""],
        1,
    )
    .await;
    // …and POST /admin/reload, which answers the same lines as `config check`.
    let (status, v) = call("POST", &format!("{}/admin/reload", gw.admin), None).await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["ok"], false);
    assert_eq!(v["generation"], 1);
    let errors: Vec<&str> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert_eq!(errors, expected);
    for line in &expected {
        assert!(p.logged(line), "each problem is logged: {line}");
    }
    // The running configuration still serves, its session too.
    assert_eq!(c.call_tool(2, "who", json!({})).await, "one");
    let m = metrics(&base).await;
    assert!(
        sample(&m, "shadowcat_config_reloads_total{result=\"error\"}").unwrap() >= 3.0,
        "{m}"
    );
    assert_eq!(
        sample(&m, "shadowcat_config_reloads_total{result=\"ok\"}"),
        Some(0.0)
    );
    assert_eq!(sample(&m, "shadowcat_config_generation"), Some(1.0));
    let (_, v) = call("GET", &format!("{}/api/metrics", gw.admin), None).await;
    assert_eq!(v["config"]["last_reload"]["ok"], false, "{v}");

    // A setting that needs a restart is refused as well, naming it.
    std::fs::write(
        &path,
        format!(
            "{}{}",
            server("max_sessions = 7"),
            route("/mcp", &[&one.url])
        ),
    )
    .unwrap();
    let (status, v) = call("POST", &format!("{}/admin/reload", gw.admin), None).await;
    assert_eq!(status, 422, "{v}");
    assert!(
        v["errors"][0]
            .as_str()
            .unwrap()
            .ends_with("server.max_sessions: cannot change while the gateway runs (it is set up once at start); restart the gateway to change it, or put back the running value"),
        "{v}"
    );
    assert_eq!(c.call_tool(3, "who", json!({})).await, "one");

    // A good file is applied by the watch.
    std::fs::write(
        &path,
        format!("{good}{}", route("/servers/two/mcp", &[&two.url])),
    )
    .unwrap();
    wait_lines(
        p,
        &[
            "configuration reloaded",
            "trigger=\"watch\"",
            "generation=2",
        ],
        1,
    )
    .await;
    let mut t = Raw::new(format!("{base}/servers/two/mcp"));
    t.initialize().await;
    assert_eq!(t.call_tool(1, "who", json!({})).await, "two");
    assert_eq!(c.call_tool(4, "who", json!({})).await, "one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spares_and_health_checkers_follow_the_reload() {
    let one = FakeUpstream::start("one").await;
    let stdio = |spares: u32, health: &str| {
        format!(
            "{}[[routes]]\npath = \"/mcp\"\n{health}[[routes.upstreams]]\ncommand = \"{}\"\nargs = [\"demo-server\"]\nspares = {spares}\n",
            server(""),
            bin()
        )
    };
    let ping = "[routes.health]\ncheck = \"ping\"\ninterval = \"1s\"\n";
    let (dir, cfg) = config_file(&stdio(2, ping));
    let path = dir.path().join("gateway.toml");
    let gw = start(&["--config", &cfg], &[]).await;
    let pid = gw.server.pid();
    // Two spares and the health checker's child.
    wait_descendants(pid, 3).await;

    // The route now has an HTTP upstream: every child of the old one ends.
    std::fs::write(
        &path,
        format!("{}{}", server(""), route("/mcp", &[&one.url])),
    )
    .unwrap();
    let (status, v) = call("POST", &format!("{}/admin/reload", gw.admin), None).await;
    assert_eq!(status, 200, "{v}");
    wait_descendants(pid, 0).await;

    // And back to a stdio upstream with one spare, no checks.
    std::fs::write(&path, stdio(1, "")).unwrap();
    let (status, v) = call("POST", &format!("{}/admin/reload", gw.admin), None).await;
    assert_eq!(status, 200, "{v}");
    wait_descendants(pid, 1).await;
    let mut c = Raw::new(format!("{}/mcp", gw.server.base));
    c.initialize().await;
    assert_eq!(
        c.call_tool(1, "add", json!({"a": 2, "b": 3})).await,
        "5",
        "a session on the new upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_fail_no_request_and_sessions_keep_their_upstream() {
    let (one, two, extra) = (
        FakeUpstream::start("one").await,
        FakeUpstream::start("two").await,
        FakeUpstream::start("extra").await,
    );
    let limits = "[limits.per_tool]\nwho = { requests = 100000, per = \"1s\" }\n";
    // No grace for what a reload removes: a session moved off its member would fail at once.
    let now = "drain_grace = \"0s\"";
    let configs = [
        // 1: a route added.
        format!(
            "{}{}{}",
            server(now),
            route("/mcp", &[&one.url]),
            route("/servers/extra/mcp", &[&extra.url])
        ),
        // 2: a member added to /mcp, a per-tool limit.
        format!(
            "{}{limits}{}{}",
            server(now),
            route("/mcp", &[&one.url, &two.url]),
            route("/servers/extra/mcp", &[&extra.url])
        ),
        // 3: weights changed, the extra route removed.
        format!(
            "{}{limits}{}",
            server(now),
            route("/mcp", &[&format!("{} 3", one.url), &two.url])
        ),
        // 4: the added member removed (the new sessions on it drain, with a grace), the
        // limit too.
        format!(
            "{}{}",
            server("drain_grace = \"30s\""),
            route("/mcp", &[&one.url])
        ),
    ];
    let (dir, cfg) = config_file(&format!("{}{}", server(""), route("/mcp", &[&one.url])));
    let path = dir.path().join("gateway.toml");
    let gw = start(&["--config", &cfg], &[]).await;
    let url = format!("{}/mcp", gw.server.base);

    let done = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    // Four clients with sessions made before any reload: every call answered by `one`.
    for _ in 0..4 {
        let mut c = Raw::new(url.clone());
        c.initialize().await;
        let (done, failures, calls) = (done.clone(), failures.clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            let mut after = 0;
            for id in 1..=20_000i64 {
                let r = c.post(tool_call(id)).await;
                let text = r.messages().first().and_then(|m| {
                    m["result"]["content"][0]["text"]
                        .as_str()
                        .map(str::to_string)
                });
                if r.status != 200 || text.as_deref() != Some("one") {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("{} {}", r.status, r.body));
                }
                calls.fetch_add(1, Ordering::Relaxed);
                if done.load(Ordering::Relaxed) {
                    after += 1;
                    if after == 20 {
                        return;
                    }
                }
            }
        }));
    }
    // A fifth makes new sessions all along (placed on whatever the configuration says).
    {
        let (done, failures, url) = (done.clone(), failures.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..2_000 {
                let mut c = Raw::new(url.clone());
                let r = c.post(super::harness::init_body(0, c.version)).await;
                if r.status != 200 {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("init {} {}", r.status, r.body));
                    continue;
                }
                c.session = r
                    .headers
                    .get("mcp-session-id")
                    .map(|v| v.to_str().unwrap().to_string());
                let r = c.post(tool_call(1)).await;
                let ok = r.status == 200
                    && r.messages()
                        .first()
                        .is_some_and(|m| m["result"]["content"][0]["text"].is_string());
                if !ok {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("new session {} {}", r.status, r.body));
                }
                c.delete().await;
                if done.load(Ordering::Relaxed) {
                    return;
                }
            }
        }));
    }
    for (i, text) in configs.iter().enumerate() {
        // Some traffic between reloads.
        let seen = calls.load(Ordering::Relaxed);
        while calls.load(Ordering::Relaxed) < seen + 100 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        std::fs::write(&path, text).unwrap();
        let (status, v) = call("POST", &format!("{}/admin/reload", gw.admin), None).await;
        assert_eq!(status, 200, "reload {}: {v}", i + 1);
        assert_eq!(v["generation"], i as u64 + 2, "{v}");
        assert_eq!(v["changed"], true, "{v}");
    }
    done.store(true, Ordering::Relaxed);
    for t in tasks {
        tokio::time::timeout(WAIT, t)
            .await
            .expect("clients finish")
            .unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    eprintln!(
        "{} calls on the four sessions, {} failed, across {} reloads",
        calls.load(Ordering::Relaxed),
        failures.len(),
        configs.len()
    );
    assert!(
        failures.is_empty(),
        "{} failed of {} calls: {:?}",
        failures.len(),
        calls.load(Ordering::Relaxed),
        &failures[..failures.len().min(5)]
    );
    let m = metrics(&gw.server.base).await;
    assert_eq!(
        sample(&m, "shadowcat_config_reloads_total{result=\"ok\"}"),
        Some(4.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_page_shows_the_generation_and_the_last_reload_in_headless_chromium() {
    let one = FakeUpstream::start("one").await;
    let good = format!("{}{}", server(""), route("/mcp", &[&one.url]));
    let (dir, cfg) = config_file(&good);
    let path = dir.path().join("gateway.toml");
    let gw = start(&["--config", &cfg], &[]).await;
    const CONFIG: &str = r#"JSON.stringify((e => ({text: e.textContent, class: e.className, title: e.title}))(document.getElementById('config')))"#;
    let shown = |v: &Value| -> Value { serde_json::from_str(v.as_str().unwrap_or("{}")).unwrap() };
    let mut b = super::cdp::Browser::open(&format!("{}/", gw.admin)).await;
    b.wait_for(CONFIG, |v| shown(v)["text"] == "generation 1")
        .await;

    std::fs::write(
        &path,
        format!("{}{}", server(""), route("/api", &[&one.url])),
    )
    .unwrap();
    let (status, _) = call("POST", &format!("{}/admin/reload", gw.admin), None).await;
    assert_eq!(status, 422);
    let s = shown(
        &b.wait_for(CONFIG, |v| {
            shown(v)["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("generation 1 · reload refused "))
        })
        .await,
    );
    assert_eq!(s["class"], "bad", "{s}");
    assert!(
        s["title"]
            .as_str()
            .unwrap()
            .contains("routes[0].path: `/api` must be"),
        "the problems on hover: {s}"
    );

    std::fs::write(
        &path,
        format!("{good}{}", route("/servers/x/mcp", &[&one.url])),
    )
    .unwrap();
    let (status, _) = call("POST", &format!("{}/admin/reload", gw.admin), None).await;
    assert_eq!(status, 200);
    let s = shown(
        &b.wait_for(CONFIG, |v| {
            shown(v)["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("generation 2 · reloaded "))
        })
        .await,
    );
    assert_eq!(s["class"], "ok", "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_composite_routes_servers_and_shaping_reload_and_its_old_sessions_drain() {
    let composite = |servers: &[&str], tools: &str| {
        let mut t = format!("{}[[routes]]\npath = \"/mcp\"\n", server(""));
        for s in servers {
            t.push_str(&format!(
                "[[routes.servers]]\nname = \"{s}\"\ncommand = \"{}\"\nargs = [\"demo-server\"]\n{tools}",
                bin()
            ));
        }
        t
    };
    let (dir, cfg) = config_file(&composite(&["a"], ""));
    let gw = start(&["--config", &cfg], &[]).await;
    let list = json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}});
    let tools = |r: super::harness::Reply| -> Vec<String> {
        let msgs = r.messages();
        let reply = msgs.iter().find(|m| m["id"] == json!(1)).expect("reply");
        let mut names: Vec<String> = reply["result"]["tools"]
            .as_array()
            .unwrap_or_else(|| panic!("no tools: {reply}"))
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    };
    let mut before = Raw::new(format!("{}/mcp", gw.server.base));
    before.initialize().await;
    let names = tools(before.post(list.clone()).await);
    assert!(names.iter().all(|n| n.starts_with("a__")), "{names:?}");

    // A second server, and the first one's `add` hidden.
    let hide = "[routes.servers.tools]\ndeny = [\"add\"]\n";
    std::fs::write(
        dir.path().join("gateway.toml"),
        composite(&["a", "b"], hide),
    )
    .unwrap();
    let (status, v) = call("POST", &format!("{}/admin/reload", gw.admin), None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["changes"]["routes_changed"], json!(["/mcp"]), "{v}");
    assert_eq!(
        v["draining"], 1,
        "the session on the old servers drains: {v}"
    );

    let mut after = Raw::new(format!("{}/mcp", gw.server.base));
    after.initialize().await;
    let names = tools(after.post(list.clone()).await);
    assert!(names.contains(&"b__echo".to_string()), "{names:?}");
    assert!(!names.iter().any(|n| n.ends_with("__add")), "{names:?}");
    assert_eq!(
        after
            .call_tool(2, "b__echo", json!({"message": "hi"}))
            .await,
        "hi"
    );
    // The old session still has its servers, unshaped, during the grace.
    assert_eq!(
        before.call_tool(3, "a__add", json!({"a": 1, "b": 2})).await,
        "3"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_drains_while_the_kept_one_keeps_its_sessions() {
    let (one, two) = (
        FakeUpstream::start("one").await,
        FakeUpstream::start("two").await,
    );
    let (dir, cfg) = config_file(&format!(
        "{}{}",
        server(""),
        route("/mcp", &[&one.url, &two.url])
    ));
    let gw = start(&["--config", &cfg], &[]).await;
    let url = format!("{}/mcp", gw.server.base);
    // Round-robin: one session on each member.
    let mut on = std::collections::HashMap::new();
    for _ in 0..2 {
        let mut c = Raw::new(url.clone());
        c.initialize().await;
        let who = c.call_tool(1, "who", json!({})).await;
        on.insert(who, c);
    }
    let (Some(kept), Some(gone)) = (on.remove("one"), on.remove("two")) else {
        panic!("a session on each member");
    };

    std::fs::write(
        dir.path().join("gateway.toml"),
        format!(
            "{}{}",
            server("drain_grace = \"0s\""),
            route("/mcp", &[&one.url])
        ),
    )
    .unwrap();
    let (status, v) = call("POST", &format!("{}/admin/reload", gw.admin), None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["changes"]["upstreams_removed"],
        json!([format!("/mcp {}", two.url)]),
        "{v}"
    );
    assert_eq!(v["draining"], 1, "{v}");

    // No grace: the session on the removed member ends at once (its next request, or the one
    // after, is refused with the reason)…
    let mut id = 10;
    let refused = loop {
        id += 1;
        let r = gone.post(tool_call(id)).await;
        if r.status == 404 {
            break r;
        }
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(id < 10_000, "the drained session never ended");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let why = refused.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        why,
        format!(
            "the session ended: its upstream {} of route /mcp was removed or changed by a configuration reload; start a new session",
            two.url
        )
    );
    // …the other goes on, on its upstream.
    assert_eq!(kept.call_tool(2, "who", json!({})).await, "one");
    let (_, u) = call("GET", &format!("{}/api/upstreams", gw.admin), None).await;
    let members = &u["routes"][0]["upstreams"];
    assert_eq!(members.as_array().unwrap().len(), 1, "{u}");
    assert_eq!(
        members[0]["sessions"], 1,
        "the kept session is still counted: {u}"
    );
}
