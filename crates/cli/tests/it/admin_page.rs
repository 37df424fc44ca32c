//! The admin web page in a real headless Chromium: it shows the live sessions, the upstreams
//! and the live messages, and ends a session with its button.

use super::admin::{call, demo_with_admin};
use super::cdp::Browser;
use super::harness::Raw;
use serde_json::{Value, json};

const TOKEN: &str = "page-token-31c9";

/// What the page shows, as JSON.
const STATE: &str = r#"JSON.stringify({
  sessions: [...document.querySelectorAll('#sessions tbody tr')].map(r => r.dataset.session),
  upstreams: [...document.querySelectorAll('#upstreams tbody tr')].map(r => r.dataset.upstream),
  live: [...document.querySelectorAll('#live tbody tr')].map(r => [r.dataset.session, r.dataset.method || '']),
  text: document.body.innerText,
  hash: location.hash,
  login: !document.getElementById('login').hidden,
})"#;

fn state(v: &Value) -> Value {
    serde_json::from_str(v.as_str().unwrap_or("{}")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_page_shows_live_sessions_in_headless_chromium() {
    let gw = demo_with_admin(&["--admin-token", TOKEN]).await;
    let mut c = Raw::new(gw.server.url());
    c.initialize().await;
    let id = c.session.clone().unwrap();

    // Without the token the page asks for it and shows nothing.
    let mut anon = Browser::open(&format!("{}/", gw.admin)).await;
    let s = state(&anon.wait_for(STATE, |v| state(v)["login"] == true).await);
    assert!(!s["text"].as_str().unwrap().contains(&id), "{s}");
    drop(anon);

    let mut b = Browser::open(&format!("{}/#token={TOKEN}", gw.admin)).await;
    let s = state(
        &b.wait_for(STATE, |v| {
            // The page fetches sessions and upstreams separately: wait for both.
            let s = state(v);
            s["sessions"]
                .as_array()
                .is_some_and(|l| l.contains(&json!(id)))
                && s["upstreams"].as_array().is_some_and(|l| !l.is_empty())
        })
        .await,
    );
    assert_eq!(s["hash"], "", "the token leaves the address bar");
    let upstreams = s["upstreams"].as_array().unwrap();
    assert_eq!(upstreams.len(), 1, "{s}");
    // The demo upstream, named by its program only (no arguments: they may carry secrets).
    assert_eq!(upstreams[0], "shadowcat", "{s}");
    let text = s["text"].as_str().unwrap();
    assert!(text.contains("raw-test"), "client name shown: {text}");
    assert!(text.contains("healthy"), "{text}");

    // A call made now appears in the live message view.
    assert_eq!(c.call_tool(5, "add", json!({"a": 20, "b": 22})).await, "42");
    b.wait_for(STATE, |v| {
        state(v)["live"]
            .as_array()
            .is_some_and(|rows| rows.contains(&json!([id, "tools/call"])))
    })
    .await;

    // The End button (pressed twice: arm, confirm) ends the session.
    let button = format!(
        "document.querySelector('#sessions tr[data-session=\"{id}\"] button').click(); true"
    );
    b.eval(&button).await;
    b.eval(&button).await;
    b.wait_for(STATE, |v| {
        state(v)["sessions"]
            .as_array()
            .is_some_and(|l| !l.contains(&json!(id)))
    })
    .await;
    let after = c
        .post(json!({"jsonrpc":"2.0","id":6,"method":"tools/list"}))
        .await;
    assert_eq!(after.status, 404, "{}", after.body);
    let (_, list) = call("GET", &format!("{}/api/sessions", gw.admin), Some(TOKEN)).await;
    assert_eq!(list["sessions"], json!([]));
    drop(b);
    gw.server.terminate().await;
}
