//! Interceptor rules (`--rules FILE`): match messages and continue, block, modify, mock, delay
//! or pause them. The first matching rule (highest priority, then file order) decides.
//! The file is watched: a changed file is reloaded; a bad one keeps the old rules and logs why.
//! See `docs/interceptor.md`.

mod apply;
pub mod guard;
mod pattern;
mod pause;
mod rules;

pub use pattern::{Pattern, Pointer};
pub use pause::{DecideError, Decision, PauseBoard, PauseFull, PausedInfo};
pub use rules::{
    Action, BLOCKED, Cond, DEFAULT_MAX_PAUSED, DEFAULT_MAX_PAUSED_PER_SESSION, Format, KIND_ERROR,
    KIND_NOTIFICATION, KIND_REQUEST, KIND_RESPONSE, OnTimeout, PauseLimits, Rule, RuleSet, Test,
};

use crate::pipeline::{Direction, FrameCtx, Hook, Verdict};
use shadowcat_proto::{Frame, FrameKind, RequestId};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// Why rules cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// The file cannot be read.
    #[error("cannot read rules file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("invalid rules file {}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Load and compile a rules file: YAML when it is named `*.yaml` or `*.yml`, else TOML.
pub fn load(path: &Path) -> Result<RuleSet, RulesError> {
    let text = std::fs::read_to_string(path).map_err(|e| RulesError::Read {
        path: path.to_path_buf(),
        source: e,
    })?;
    RuleSet::parse_as(&text, Format::of(path)).map_err(|message| RulesError::Invalid {
        path: path.to_path_buf(),
        message,
    })
}

/// Per session: requests in flight (by the direction they travelled and their id) with their
/// method and target. Keyed by session first so that lookups need no allocation.
type Asked = HashMap<Arc<str>, HashMap<(Direction, RequestId), (Arc<str>, Option<Arc<str>>)>>;

/// Rules in force, and whether any of them looks at replies.
struct Active {
    rules: Arc<RuleSet>,
    replies: bool,
}

impl Active {
    fn new(rules: RuleSet) -> Self {
        Active {
            replies: rules.needs_replies(),
            rules: Arc::new(rules),
        }
    }
}

/// The interceptor hook.
pub struct Interceptor {
    rules: RwLock<Active>,
    board: Arc<PauseBoard>,
    /// Method and target of requests in flight, so rules can match their replies.
    asked: Mutex<Asked>,
}

impl Interceptor {
    /// An interceptor with these rules, holding paused messages on `board`.
    pub fn new(rules: RuleSet, board: Arc<PauseBoard>) -> Arc<Interceptor> {
        Arc::new(Interceptor {
            rules: RwLock::new(Active::new(rules)),
            board,
            asked: Mutex::new(HashMap::new()),
        })
    }

    /// The paused messages.
    pub fn board(&self) -> &Arc<PauseBoard> {
        &self.board
    }

    /// The rules in force.
    pub fn rules(&self) -> Arc<RuleSet> {
        self.active().0
    }

    fn active(&self) -> (Arc<RuleSet>, bool) {
        let a = crate::sync::read(&self.rules);
        (a.rules.clone(), a.replies)
    }

    /// Replace the rules.
    pub fn set_rules(&self, rules: RuleSet) {
        *crate::sync::write(&self.rules) = Active::new(rules);
    }

    /// Reload from `path`: on success the new rules apply to the next message; on failure the
    /// old rules stay and the error is returned.
    pub fn reload(&self, path: &Path) -> Result<usize, RulesError> {
        let rules = load(path)?;
        let n = rules.rules.len();
        self.set_rules(rules);
        Ok(n)
    }

    /// Watch `path` (polling every `every`) and reload when it changes, until `cancel`.
    pub fn watch(self: &Arc<Self>, path: PathBuf, every: Duration, cancel: CancellationToken) {
        let me = self.clone();
        let stamp = |p: &Path| {
            std::fs::metadata(p)
                .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
                .ok()
        };
        // Taken now, not in the task: a change made before the task first runs is still seen.
        let mut last = stamp(&path);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = cancel.cancelled() => return,
                }
                let now = stamp(&path);
                if now == last {
                    continue;
                }
                last = now;
                match me.reload(&path) {
                    Ok(n) => {
                        tracing::info!(path = %path.display(), rules = n, "reloaded interceptor rules")
                    }
                    Err(e) => tracing::warn!(error = %e, "keeping the previous interceptor rules"),
                }
            }
        });
    }

    fn asked(&self) -> std::sync::MutexGuard<'_, Asked> {
        crate::sync::lock(&self.asked)
    }
}

impl Hook for Interceptor {
    fn name(&self) -> &'static str {
        "intercept"
    }

    fn on_frame(&self, ctx: &FrameCtx<'_>, frame: &Frame) -> Verdict {
        let (rules, replies) = self.active();
        if rules.is_empty() {
            return Verdict::Forward;
        }
        let kind = frame.kind();
        // Which method/target a reply answers.
        let answered = match (kind.is_reply(), frame.id()) {
            (true, Some(id)) => {
                let back = match ctx.direction {
                    Direction::ClientToServer => Direction::ServerToClient,
                    Direction::ServerToClient => Direction::ClientToServer,
                };
                let mut asked = self.asked();
                let found = asked.get_mut(ctx.session);
                let hit = found.and_then(|m| m.remove(&(back, id.clone())));
                if asked.get(ctx.session).is_some_and(HashMap::is_empty) {
                    asked.remove(ctx.session);
                }
                hit
            }
            _ => None,
        };
        let (method, target) = match &answered {
            Some((m, t)) => (Some(&**m), t.as_deref()),
            None => (frame.method(), frame.target()),
        };
        let mut parsed: Option<serde_json::Value> = None;
        let mut verdict = Verdict::Forward;
        for rule in &rules.rules {
            if !apply::matches(rule, ctx, kind, method, target, frame, &mut parsed) {
                continue;
            }
            tracing::debug!(rule = %rule.name, session = ctx.session, method, "interceptor rule matched");
            let asked = apply::Asked { method, target };
            // A detector that finds nothing does not decide: later rules still apply.
            if let Some(v) = apply::apply(rule, ctx, asked, frame, &self.board, rules.pause) {
                verdict = v;
                break;
            }
        }
        if kind == FrameKind::Request
            && replies
            && matches!(
                verdict,
                Verdict::Forward | Verdict::Replace(_) | Verdict::Defer(_)
            )
            && let (Some(id), Some(m)) = (frame.id(), frame.method())
        {
            let entry = (Arc::from(m), frame.target().map(Arc::from));
            let mut asked = self.asked();
            match asked.get_mut(ctx.session) {
                Some(m) => {
                    m.insert((ctx.direction, id.clone()), entry);
                }
                None => {
                    let m = HashMap::from([((ctx.direction, id.clone()), entry)]);
                    asked.insert(Arc::from(ctx.session), m);
                }
            }
        }
        verdict
    }

    fn on_session_end(&self, session: &str) {
        self.asked().remove(session);
    }
}

#[cfg(test)]
mod tests;
