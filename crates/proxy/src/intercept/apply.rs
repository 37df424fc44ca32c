//! Matching a rule against a message, and carrying out its action.

use super::pattern;
use super::pause::{Decision, PauseBoard, PausedInfo};
use super::rules::{Action, BLOCKED, OnTimeout, PauseLimits, Rule, kind_bit};
use crate::pipeline::{Direction, FrameCtx, Verdict};
use serde_json::{Value, json};
use shadowcat_proto::error::{UPSTREAM_ERROR, error_frame};
use shadowcat_proto::{Frame, FrameKind};
use std::sync::Arc;

/// Does `rule` apply? `parsed` is the message as JSON, parsed on first need.
pub(super) fn matches(
    rule: &Rule,
    ctx: &FrameCtx<'_>,
    kind: FrameKind,
    method: Option<&str>,
    target: Option<&str>,
    frame: &Frame,
    parsed: &mut Option<Value>,
) -> bool {
    if rule.direction.is_some_and(|d| d != ctx.direction) || rule.kinds & kind_bit(kind) == 0 {
        return false;
    }
    let fits = |p: &Option<pattern::Pattern>, v: Option<&str>| {
        p.as_ref().is_none_or(|p| v.is_some_and(|v| p.matches(v)))
    };
    if !fits(&rule.method, method)
        || !fits(&rule.session, Some(ctx.session))
        || !fits(&rule.principal, ctx.principal)
    {
        return false;
    }
    if let Some(p) = &rule.route
        && !ctx
            .route
            .is_some_and(|k| p.matches(&crate::front::http::route_path(k)))
    {
        return false;
    }
    let m = method.unwrap_or("");
    let named = |p: &Option<pattern::Pattern>, methods: &[&str]| {
        p.is_none() || (methods.contains(&m) && fits(p, target))
    };
    if !named(&rule.tool, &["tools/call"])
        || !named(&rule.prompt, &["prompts/get"])
        || !named(
            &rule.resource,
            &[
                "resources/read",
                "resources/subscribe",
                "resources/unsubscribe",
            ],
        )
    {
        return false;
    }
    if rule.when.is_empty() {
        return true;
    }
    let msg =
        parsed.get_or_insert_with(|| serde_json::from_slice(frame.raw()).unwrap_or(Value::Null));
    rule.when.iter().all(|c| c.holds(msg))
}

fn dir_name(d: Direction) -> &'static str {
    match d {
        Direction::ClientToServer => "c2s",
        Direction::ServerToClient => "s2c",
    }
}

fn frame_of(v: &Value) -> Option<Frame> {
    let bytes = serde_json::to_vec(v).ok()?;
    Frame::parse_single(bytes.into()).ok()
}

/// A JSON-RPC error for the sender of a request, or in place of a reply; notifications vanish.
pub(super) fn block(frame: &Frame, code: i64, message: &str) -> Verdict {
    match (frame.kind(), frame.id()) {
        (FrameKind::Request, Some(id)) => Verdict::Reply(error_frame(Some(id), code, message)),
        (k, Some(id)) if k.is_reply() => Verdict::Replace(error_frame(Some(id), code, message)),
        _ => Verdict::Drop,
    }
}

fn modify(rule: &Rule, frame: &Frame, set: &[(String, Value)], remove: &[String]) -> Verdict {
    let Ok(mut v) = serde_json::from_slice::<Value>(frame.raw()) else {
        return Verdict::Forward;
    };
    for (p, val) in set {
        if let Err(e) = pattern::set(&mut v, p, val.clone()) {
            tracing::warn!(rule = %rule.name, error = %e, "modify could not set a value; message left unchanged");
            return Verdict::Forward;
        }
    }
    for p in remove {
        pattern::remove(&mut v, p);
    }
    match frame_of(&v) {
        Some(f) => Verdict::Replace(f),
        None => {
            tracing::warn!(rule = %rule.name, "modify produced an invalid JSON-RPC message; message left unchanged");
            Verdict::Forward
        }
    }
}

fn mock(frame: &Frame, reply: &Result<Value, Value>) -> Verdict {
    let Some(id) = frame.id() else {
        return Verdict::Drop;
    };
    let mut v = json!({"jsonrpc": "2.0", "id": id});
    match reply {
        Ok(result) => v["result"] = result.clone(),
        Err(error) => v["error"] = error.clone(),
    }
    let Some(f) = frame_of(&v) else {
        return Verdict::Forward;
    };
    match frame.kind() {
        FrameKind::Request => Verdict::Reply(f),
        FrameKind::Response | FrameKind::Error => Verdict::Replace(f),
        FrameKind::Notification => Verdict::Drop,
    }
}

/// Removes a paused message from the board if its waiter goes away (session ended).
struct Unhold(Arc<PauseBoard>, u64);

impl Drop for Unhold {
    fn drop(&mut self) {
        self.0.forget(self.1);
    }
}

fn dropped(frame: &Frame, message: &str) -> Verdict {
    match (frame.kind(), frame.id()) {
        (FrameKind::Request, Some(id)) => {
            Verdict::Reply(error_frame(Some(id), UPSTREAM_ERROR, message))
        }
        _ => Verdict::Drop,
    }
}

/// What the rule the message is looked at by deals with: the method and target of the message,
/// or for a reply those of the request it answers.
pub(super) struct Asked<'a> {
    pub method: Option<&'a str>,
    pub target: Option<&'a str>,
}

/// Carry out a rule's action on a frame; `None` when the rule did not decide (a detector that
/// found nothing: later rules apply).
pub(super) fn apply(
    rule: &Rule,
    ctx: &FrameCtx<'_>,
    asked: Asked<'_>,
    frame: &Frame,
    board: &Arc<PauseBoard>,
    limits: PauseLimits,
) -> Option<Verdict> {
    Some(match &rule.action {
        Action::Detect(d) => return d.check(&rule.name, frame),
        Action::Callout(c) => c.ask(&rule.name, ctx, asked.method, asked.target, frame),
        Action::Continue => Verdict::Forward,
        Action::Block { code, message } => block(frame, *code, message),
        Action::Modify { set, remove } => modify(rule, frame, set, remove),
        Action::Mock { reply } => mock(frame, reply),
        Action::Delay(d) => {
            let d = *d;
            Verdict::Defer(Box::pin(async move {
                tokio::time::sleep(d).await;
                Verdict::Forward
            }))
        }
        Action::Pause {
            timeout,
            on_timeout,
        } => {
            let info = PausedInfo {
                id: 0,
                session: ctx.session.to_string(),
                direction: dir_name(ctx.direction),
                rule: rule.name.clone(),
                since: shadowcat_tape::time::now_rfc3339(),
                timeout_s: timeout.as_secs_f64(),
                message: serde_json::from_slice(frame.raw()).unwrap_or(Value::Null),
            };
            let (id, rx) = match board.hold(info, frame.clone(), limits) {
                Ok(held) => held,
                Err(full) => {
                    // Fail closed: a message that cannot be held for a decision is not forwarded.
                    tracing::warn!(rule = %rule.name, session = ctx.session, method = frame.method(), reason = %full, "a pause rule matched but no more messages can be held; message refused");
                    let message = format!(
                        "the message was refused: interceptor rule `{}` holds messages for a \
                         decision, but {full}; retry later",
                        rule.name
                    );
                    return Some(block(frame, BLOCKED, &message));
                }
            };
            tracing::info!(paused = id, rule = %rule.name, session = ctx.session, method = frame.method(), "message paused; use `shadowcat intercept` to resume, edit or drop it");
            let guard = Unhold(board.clone(), id);
            let (timeout, on_timeout, frame) = (*timeout, *on_timeout, frame.clone());
            let name = rule.name.clone();
            Verdict::Defer(Box::pin(async move {
                let _guard = guard;
                match tokio::time::timeout(timeout, rx).await {
                    Ok(Ok(Decision::Resume)) => Verdict::Forward,
                    Ok(Ok(Decision::Edit(f))) => Verdict::Replace(f),
                    Ok(Ok(Decision::Drop)) => dropped(
                        &frame,
                        "the message was dropped by an operator (shadowcat intercept drop)",
                    ),
                    Ok(Err(_)) | Err(_) => {
                        tracing::info!(paused = id, ?on_timeout, "paused message timed out");
                        let why = format!(
                            "the message was held by interceptor rule `{name}` and not decided \
                             within {} s",
                            timeout.as_secs_f64()
                        );
                        match on_timeout {
                            OnTimeout::Continue => Verdict::Forward,
                            OnTimeout::Drop => dropped(&frame, &format!("{why}; it was dropped")),
                            OnTimeout::Block => {
                                block(&frame, BLOCKED, &format!("{why}; it was not forwarded"))
                            }
                        }
                    }
                }
            }))
        }
    })
}
