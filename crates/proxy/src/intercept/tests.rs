//! Each action through the real pipeline, reply matching, pause decisions and hot reload.

use super::*;
use crate::pipeline::{FrameCtx, Outcome, Pipeline};
use bytes::Bytes;
use serde_json::{Value, json};
use std::time::Instant;

fn frame(v: Value) -> Frame {
    Frame::parse_single(Bytes::from(v.to_string())).unwrap()
}

fn json_of(f: &Frame) -> Value {
    serde_json::from_slice(f.raw()).unwrap()
}

fn setup(rules: &str) -> (Pipeline, Arc<Interceptor>) {
    let icpt = Interceptor::new(
        RuleSet::parse(rules).unwrap(),
        Arc::new(PauseBoard::default()),
    );
    (Pipeline::new(vec![icpt.clone()]), icpt)
}

const C2S: FrameCtx<'static> = FrameCtx::new("s1", Direction::ClientToServer);
const S2C: FrameCtx<'static> = FrameCtx::new("s1", Direction::ServerToClient);

fn call(id: i64, tool: &str) -> Frame {
    frame(
        json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":{"message":"hi","path":"/etc/passwd"}}}),
    )
}

#[tokio::test]
async fn block_answers_requests_with_an_error() {
    let (p, _) = setup(
        r#"[[rule]]
        name = "no-delete"
        tool = "delete_*"
        action = "block"
        message = "nope"
        code = -32099"#,
    );
    match p.process(&C2S, call(4, "delete_file")).await {
        Outcome::Reply(f) => {
            let v = json_of(&f);
            assert_eq!(v["id"], 4);
            assert_eq!(v["error"]["code"], -32099);
            assert_eq!(v["error"]["message"], "nope");
        }
        o => panic!("{o:?}"),
    }
    assert!(matches!(
        p.process(&C2S, call(5, "echo")).await,
        Outcome::Forward(_)
    ));
    // a server → client message does not match a client rule... this one has no direction, so a
    // notification matching it is dropped
    let (p, _) = setup("[[rule]]\nmethod = 'notifications/*'\naction = 'block'");
    let n = frame(json!({"jsonrpc":"2.0","method":"notifications/progress","params":{}}));
    assert!(matches!(p.process(&S2C, n).await, Outcome::Drop));
}

#[tokio::test]
async fn conditions_direction_and_priority() {
    let (p, _) = setup(
        r#"
        [[rule]]
        name = "allow-tmp"
        priority = 10
        when = [{ pointer = "/params/arguments/path", matches = "^/tmp/" }]
        action = "continue"
        [[rule]]
        name = "deny-paths"
        direction = "client"
        when = [{ pointer = "/params/arguments/path", exists = true }]
        action = "block"
        "#,
    );
    assert!(matches!(
        p.process(&C2S, call(1, "read")).await,
        Outcome::Reply(_)
    ));
    let tmp = frame(
        json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"read","arguments":{"path":"/tmp/x"}}}),
    );
    assert!(matches!(p.process(&C2S, tmp).await, Outcome::Forward(_)));
    // direction = client: the same message from the server passes
    assert!(matches!(
        p.process(&S2C, call(3, "read")).await,
        Outcome::Forward(_)
    ));
}

#[tokio::test]
async fn modify_sets_and_removes_and_keeps_the_id() {
    let (p, _) = setup(
        r#"[[rule]]
        method = "tools/call"
        action = "modify"
        set = { "/params/arguments/message" = "changed", "/params/arguments/extra" = [1, 2] }
        remove = ["/params/arguments/path"]"#,
    );
    match p.process(&C2S, call(7, "echo")).await {
        Outcome::Forward(f) => {
            let v = json_of(&f);
            assert_eq!(v["id"], 7);
            assert_eq!(
                v["params"]["arguments"],
                json!({"message":"changed","extra":[1,2]})
            );
            assert_eq!(f.target(), Some("echo"));
        }
        o => panic!("{o:?}"),
    }
}

#[tokio::test]
async fn replies_match_the_method_and_tool_they_answer() {
    let (p, _) = setup(
        r#"[[rule]]
        direction = "server"
        kind = "reply"
        method = "tools/call"
        tool = "echo"
        when = [{ pointer = "/result/content/0/text", equals = "hi" }]
        action = "modify"
        set = { "/result/content/0/text" = "HI" }"#,
    );
    let reply = |id: i64| {
        frame(json!({"jsonrpc":"2.0","id":id,"result":{"content":[{"type":"text","text":"hi"}]}}))
    };
    // no request seen for this id: the rule cannot know it answers echo
    assert!(
        matches!(p.process(&S2C, reply(1)).await, Outcome::Forward(f) if json_of(&f)["result"]["content"][0]["text"] == "hi")
    );
    assert!(matches!(
        p.process(&C2S, call(2, "echo")).await,
        Outcome::Forward(_)
    ));
    match p.process(&S2C, reply(2)).await {
        Outcome::Forward(f) => assert_eq!(json_of(&f)["result"]["content"][0]["text"], "HI"),
        o => panic!("{o:?}"),
    }
    assert!(matches!(
        p.process(&C2S, call(3, "add")).await,
        Outcome::Forward(_)
    ));
    assert!(
        matches!(p.process(&S2C, reply(3)).await, Outcome::Forward(f) if json_of(&f)["result"]["content"][0]["text"] == "hi")
    );

    // Without `kind`, rules leave replies alone: pausing `echo` pauses the call, not its result.
    let (p, _) = setup("[[rule]]\ntool = 'echo'\naction = 'block'");
    assert!(matches!(
        p.process(&S2C, reply(4)).await,
        Outcome::Forward(_)
    ));
    let (p, _) = setup("[[rule]]\ntool = 'echo'\nkind = 'any'\naction = 'block'");
    assert!(matches!(
        p.process(&C2S, call(5, "echo")).await,
        Outcome::Reply(_)
    ));
}

#[tokio::test]
async fn mock_answers_without_the_server() {
    let (p, _) = setup(
        r#"[[rule]]
        tool = "echo"
        action = "mock"
        result = { content = [{ type = "text", text = "mocked" }] }
        [[rule]]
        tool = "add"
        action = "mock"
        error = { code = -32042, message = "no adding today" }"#,
    );
    match p.process(&C2S, call(9, "echo")).await {
        Outcome::Reply(f) => {
            let v = json_of(&f);
            assert_eq!(v["id"], 9);
            assert_eq!(v["result"]["content"][0]["text"], "mocked");
        }
        o => panic!("{o:?}"),
    }
    match p.process(&C2S, call(10, "add")).await {
        Outcome::Reply(f) => assert_eq!(json_of(&f)["error"]["code"], -32042),
        o => panic!("{o:?}"),
    }
}

#[tokio::test]
async fn delay_holds_the_message() {
    let (p, _) = setup("[[rule]]\naction = 'delay'\ndelay_ms = 150");
    let t = Instant::now();
    assert!(matches!(
        p.process(&C2S, call(1, "echo")).await,
        Outcome::Forward(_)
    ));
    assert!(
        t.elapsed() >= Duration::from_millis(150),
        "{:?}",
        t.elapsed()
    );
}

async fn paused_id(board: &PauseBoard) -> u64 {
    for _ in 0..200 {
        if let Some(p) = board.list().first() {
            return p.id;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("nothing was paused");
}

#[tokio::test]
async fn pause_resume_edit_drop_and_timeout() {
    let (p, icpt) = setup("[[rule]]\nname = 'hold'\naction = 'pause'\ntimeout_ms = 5000");
    let board = icpt.board().clone();

    let run = |f: Frame| {
        let p = p.clone();
        tokio::spawn(async move { p.process(&C2S, f).await })
    };
    let h = run(call(1, "echo"));
    let id = paused_id(&board).await;
    let info = &board.list()[0];
    assert_eq!(
        (info.rule.as_str(), info.direction, info.session.as_str()),
        ("hold", "c2s", "s1")
    );
    assert_eq!(info.message["params"]["name"], "echo");
    board.resume(id).unwrap();
    assert!(matches!(h.await.unwrap(), Outcome::Forward(f) if json_of(&f)["id"] == 1));
    assert_eq!(board.resume(id), Err(DecideError::NotFound(id)));

    let h = run(call(2, "echo"));
    let id = paused_id(&board).await;
    assert!(board.edit(id, json!("not an object")).is_err());
    board
        .edit(id, json!({"jsonrpc":"2.0","id":999,"method":"tools/call","params":{"name":"add","arguments":{"a":1,"b":2}}}))
        .unwrap();
    match h.await.unwrap() {
        Outcome::Forward(f) => {
            let v = json_of(&f);
            assert_eq!(v["id"], 2, "the original id is kept");
            assert_eq!(v["params"]["name"], "add");
        }
        o => panic!("{o:?}"),
    }

    let h = run(call(3, "echo"));
    let id = paused_id(&board).await;
    board.drop_message(id).unwrap();
    assert!(matches!(h.await.unwrap(), Outcome::Reply(f) if json_of(&f)["error"].is_object()));
    assert!(board.is_empty());

    let (p, icpt) = setup("[[rule]]\naction = 'pause'\ntimeout_ms = 50\non_timeout = 'block'");
    assert!(
        matches!(p.process(&C2S, call(4, "echo")).await, Outcome::Reply(f) if json_of(&f)["error"]["code"] == BLOCKED)
    );
    assert!(icpt.board().is_empty());
    let (p, _) = setup("[[rule]]\naction = 'pause'\ntimeout_ms = 50\non_timeout = 'continue'");
    assert!(matches!(
        p.process(&C2S, call(5, "echo")).await,
        Outcome::Forward(_)
    ));
    let (p, _) = setup("[[rule]]\naction = 'pause'\ntimeout_ms = 50\non_timeout = 'drop'");
    match p.process(&C2S, call(6, "echo")).await {
        Outcome::Reply(f) => {
            let text = json_of(&f)["error"]["message"].to_string();
            assert!(
                text.contains("not decided") && text.contains("dropped"),
                "{text}"
            );
        }
        o => panic!("{o:?}"),
    }
}

/// Fail closed: a paused message nobody decides on is not forwarded unless the rule says
/// `on_timeout = "continue"`; its sender learns which rule held it and why it was refused.
#[tokio::test]
async fn an_undecided_pause_blocks_by_default() {
    let (p, icpt) = setup("[[rule]]\nname = 'hold'\naction = 'pause'\ntimeout_ms = 50");
    assert!(matches!(
        icpt.rules().rules[0].action,
        Action::Pause {
            on_timeout: OnTimeout::Block,
            ..
        }
    ));
    match p.process(&C2S, call(7, "echo")).await {
        Outcome::Reply(f) => {
            let v = json_of(&f);
            assert_eq!(
                (v["id"].clone(), v["error"]["code"].clone()),
                (json!(7), json!(BLOCKED))
            );
            let text = v["error"]["message"].as_str().unwrap();
            assert!(
                text.contains("held by interceptor rule `hold`")
                    && text.contains("not decided within 0.05 s")
                    && text.contains("not forwarded"),
                "{text}"
            );
        }
        o => panic!("{o:?}"),
    }
    assert!(icpt.board().is_empty());
    // A notification that times out is discarded, not forwarded.
    let n = frame(json!({"jsonrpc":"2.0","method":"notifications/message","params":{}}));
    assert!(matches!(p.process(&C2S, n).await, Outcome::Drop));
}

/// Waits for a refusal that must come without holding (a held message would never finish).
async fn refused(p: &Pipeline, ctx: &FrameCtx<'static>, f: Frame) -> Outcome {
    tokio::time::timeout(Duration::from_secs(30), p.process(ctx, f))
        .await
        .expect("a message over the cap is refused, not held")
}

async fn wait_held(board: &PauseBoard, n: usize) {
    for _ in 0..2000 {
        if board.len() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("expected {n} paused messages, found {}", board.len());
}

#[tokio::test]
async fn paused_messages_are_capped_per_session_and_per_proxy() {
    let (p, icpt) = setup(
        "[pause]\nmax_paused = 3\nmax_paused_per_session = 2\n\
         [[rule]]\nname = 'hold'\naction = 'pause'\ntimeout_ms = 600000",
    );
    let board = icpt.board().clone();
    const S2: FrameCtx<'static> = FrameCtx::new("s2", Direction::ClientToServer);
    const S3: FrameCtx<'static> = FrameCtx::new("s3", Direction::ClientToServer);
    let hold = |ctx: &'static FrameCtx<'static>, f: Frame| {
        let p = p.clone();
        tokio::spawn(async move { p.process(ctx, f).await })
    };
    let a = hold(&C2S, call(1, "echo"));
    let b = hold(&C2S, call(2, "echo"));
    wait_held(&board, 2).await;
    // The session's third is refused at once with a clear error; nothing more is held.
    match refused(&p, &C2S, call(3, "echo")).await {
        Outcome::Reply(f) => {
            let v = json_of(&f);
            assert_eq!(
                (v["id"].clone(), v["error"]["code"].clone()),
                (json!(3), json!(BLOCKED))
            );
            let text = v["error"]["message"].as_str().unwrap();
            assert!(
                text.contains("rule `hold`") && text.contains("max_paused_per_session"),
                "{text}"
            );
        }
        o => panic!("{o:?}"),
    }
    assert_eq!(board.len(), 2);
    // Another session still has room, until the proxy-wide cap.
    let c = hold(&S2, call(4, "echo"));
    wait_held(&board, 3).await;
    match refused(&p, &S3, call(5, "echo")).await {
        Outcome::Reply(f) => {
            let text = json_of(&f)["error"]["message"].to_string();
            assert!(text.contains("max_paused)"), "{text}");
        }
        o => panic!("{o:?}"),
    }
    // Over the cap a notification is discarded and a reply replaced by an error.
    let n = frame(json!({"jsonrpc":"2.0","method":"notifications/message","params":{}}));
    assert!(matches!(refused(&p, &S3, n).await, Outcome::Drop));
    assert_eq!(board.len(), 3);
    // Deciding frees a place.
    let first = board
        .list()
        .into_iter()
        .find(|p| p.message["id"] == 1)
        .unwrap()
        .id;
    board.resume(first).unwrap();
    assert!(matches!(a.await.unwrap(), Outcome::Forward(_)));
    let d = hold(&S3, call(6, "echo"));
    wait_held(&board, 3).await;
    for h in [b, c, d] {
        h.abort();
        let _ = h.await;
    }
    assert!(board.is_empty());
}

#[tokio::test]
async fn an_abandoned_pause_leaves_the_board() {
    let (p, icpt) = setup("[[rule]]\naction = 'pause'");
    let h = tokio::spawn(async move { p.process(&C2S, call(1, "echo")).await });
    paused_id(icpt.board()).await;
    h.abort();
    let _ = h.await;
    assert!(icpt.board().is_empty());
}

/// Rules files of one syntax for the hot reload test: block echo, mock echo, a bad action, empty.
struct Files {
    name: &'static str,
    block: &'static str,
    mock: &'static str,
    bad: &'static str,
}

async fn hot_reload_keeps_old_rules_on_a_bad_file(files: Files) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(files.name);
    std::fs::write(&path, files.block).unwrap();
    let icpt = Interceptor::new(load(&path).unwrap(), Arc::new(PauseBoard::default()));
    let p = Pipeline::new(vec![icpt.clone()]);
    let stop = CancellationToken::new();
    icpt.watch(path.clone(), Duration::from_millis(20), stop.clone());
    assert!(matches!(
        p.process(&C2S, call(1, "echo")).await,
        Outcome::Reply(_)
    ));

    async fn until(p: &Pipeline, f: impl Fn(&Outcome) -> bool) {
        for _ in 0..200 {
            if f(&p.process(&C2S, call(1, "echo")).await) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "the rules did not change: {:?}",
            p.process(&C2S, call(1, "echo")).await
        );
    }
    std::fs::write(&path, files.mock).unwrap();
    until(
        &p,
        |o| matches!(o, Outcome::Reply(f) if json_of(f)["result"].is_object()),
    )
    .await;
    std::fs::write(&path, files.bad).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        matches!(p.process(&C2S, call(1, "echo")).await, Outcome::Reply(f) if json_of(&f)["result"].is_object())
    );
    assert!(
        icpt.reload(&path)
            .unwrap_err()
            .to_string()
            .contains("teleport")
    );
    std::fs::write(&path, "").unwrap();
    until(&p, |o| matches!(o, Outcome::Forward(_))).await;
    stop.cancel();
}

#[tokio::test]
async fn hot_reload_of_a_toml_file() {
    hot_reload_keeps_old_rules_on_a_bad_file(Files {
        name: "rules.toml",
        block: "[[rule]]\ntool = 'echo'\naction = 'block'",
        mock: "[[rule]]\ntool = 'echo'\naction = 'mock'\nresult = {}",
        bad: "[[rule]]\ntool = 'echo'\naction = 'teleport'",
    })
    .await;
}

#[tokio::test]
async fn hot_reload_of_a_yaml_file() {
    hot_reload_keeps_old_rules_on_a_bad_file(Files {
        name: "rules.yml",
        block: "rule:\n  - tool: echo\n    action: block\n",
        mock: "rules:\n  - tool: echo\n    action: mock\n    result: {}\n",
        bad: "rule:\n  - tool: echo\n    action: teleport\n",
    })
    .await;
}

#[tokio::test]
async fn rules_on_the_principal_need_one() {
    let (p, _) = setup(
        r#"
        [[rule]]
        name = "admins-may"
        principal = "admin-*"
        tool = "delete_*"
        action = "continue"
        [[rule]]
        name = "alice-is-watched"
        principal = "alice"
        tool = "echo"
        action = "mock"
        result = { content = [{ type = "text", text = "hi alice" }] }
        [[rule]]
        name = "regex"
        principal = "/^svc-[0-9]+$/"
        action = "block"
        message = "services may not call tools"
        [[rule]]
        name = "nobody-else"
        tool = "delete_*"
        action = "block"
        "#,
    );
    let who = |principal: Option<&'static str>| FrameCtx { principal, ..C2S };
    let blocked = |o: &Outcome| matches!(o, Outcome::Reply(f) if json_of(f)["error"].is_object());
    // Forward modes have no principal: rules that need one never match.
    assert!(blocked(&p.process(&who(None), call(1, "delete_x")).await));
    assert!(matches!(
        p.process(&who(None), call(2, "echo")).await,
        Outcome::Forward(_)
    ));
    assert!(matches!(
        p.process(&who(Some("admin-bob")), call(3, "delete_x"))
            .await,
        Outcome::Forward(_)
    ));
    assert!(blocked(
        &p.process(&who(Some("bob")), call(4, "delete_x")).await
    ));
    match p.process(&who(Some("alice")), call(5, "echo")).await {
        Outcome::Reply(f) => assert_eq!(json_of(&f)["result"]["content"][0]["text"], "hi alice"),
        o => panic!("{o:?}"),
    }
    // Exact means exact.
    assert!(matches!(
        p.process(&who(Some("alice2")), call(6, "echo")).await,
        Outcome::Forward(_)
    ));
    match p.process(&who(Some("svc-42")), call(7, "echo")).await {
        Outcome::Reply(f) => {
            assert_eq!(
                json_of(&f)["error"]["message"],
                "services may not call tools"
            )
        }
        o => panic!("{o:?}"),
    }
    assert!(matches!(
        p.process(&who(Some("svc-4x")), call(8, "echo")).await,
        Outcome::Forward(_)
    ));
}

#[tokio::test]
async fn callouts_are_counted_per_rule_and_outcome() {
    use crate::pipeline::{Direction, Verdict};
    use std::sync::atomic::Ordering;
    // Nothing listens on port 1: every callout fails, and its failure_mode decides.
    for (rule, fail_open) in [("count-closed", false), ("count-open", true)] {
        let c = guard::Callout::new(
            "http://127.0.0.1:1/decide",
            std::time::Duration::from_secs(2),
            fail_open,
            1,
            None,
        )
        .unwrap();
        let ctx = FrameCtx::new("s", Direction::ClientToServer);
        for _ in 0..2 {
            let Verdict::Defer(decide) = c.ask(
                rule,
                &ctx,
                Some("tools/call"),
                Some("echo"),
                &call(1, "echo"),
            ) else {
                panic!("a callout decides later");
            };
            let v = decide.await;
            assert_eq!(matches!(v, Verdict::Forward), fail_open, "{v:?}");
        }
    }
    let counts = guard::callout_counts();
    let of = |rule: &str, outcome: &str| {
        let (_, c) = counts.iter().find(|(r, _)| r == rule).expect("counted");
        let i = guard::OUTCOMES.iter().position(|o| *o == outcome).unwrap();
        c.outcomes[i].load(Ordering::Relaxed)
    };
    assert_eq!(of("count-closed", "failed_closed"), 2);
    assert_eq!(of("count-closed", "failed_open"), 0);
    assert_eq!(of("count-open", "failed_open"), 2);
    assert_eq!(of("count-open", "continue"), 0);
}
