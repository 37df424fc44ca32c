//! A composite upstream: one client session over N *member* servers (a composite route).
//!
//! To the session it is an upstream like any other — frames in with [`Upstream::start`], server
//! frames out on the event channel — so fronts, the session host, the pump and the pipeline
//! need nothing of their own for it. Inside, each member is an upstream leg of its own (stdio,
//! Streamable HTTP, HTTP+SSE, opened with [`super::open`]) and one task, the mux
//! ([`mux`]), stands between them:
//!
//! * `initialize` goes to every member; the answer merges their capabilities and labelled
//!   instructions; each member keeps the version it negotiated.
//! * `tools/list`, `prompts/list`, `resources/list`, `resources/templates/list` walk *every page*
//!   of every member in parallel, merge, and page the merged list with an opaque,
//!   tamper-checked cursor ([`cursor`]). Names are exposed per [`names`]; the merged list is
//!   kept until a member says it changed.
//! * Calls (`tools/call`, `prompts/get`, `resources/read|subscribe|unsubscribe`,
//!   `completion/complete`) go to the owning member with the original name or URI restored;
//!   their answers come back untouched (a `resources/read` answer gets its URIs exposed).
//! * Requests from a member (sampling, elicitation, `roots/list`) reach the client under an id
//!   of the mux's own, and the client's answer goes back to that member under the original.
//! * A member that fails (at start or later) takes its tools away (`list_changed`), its calls
//!   in flight get a JSON-RPC error naming it, and it is restarted with backoff; when it is back
//!   its tools return. With [`Failure::Closed`] the whole session ends instead.

pub mod cursor;
mod mux;
pub mod names;

use super::{Upstream, UpstreamCtx, UpstreamEvent, UpstreamSpec};
use crate::error::ProxyError;
use names::NameRules;
use shadowcat_proto::Frame;
use std::sync::Arc;
use tokio::sync::mpsc;

/// One member server of a composite route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its name: the prefix of its tools and prompts, the scheme prefix of its resources
    /// (see [`names::valid_server_name`]).
    pub name: String,
    /// Where it is.
    pub spec: UpstreamSpec,
}

/// What a composite session does when a member fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// The other members carry on; the failed one's tools disappear until it is back.
    #[default]
    Open,
    /// The session fails (at start: it is refused; later: it ends).
    Closed,
}

/// A composite route's members and rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompositeSpec {
    /// The members, in order (the order breaks ties between exposed names).
    pub members: Vec<Member>,
    /// How tool and prompt names are exposed.
    pub names: NameRules,
    /// What a member failure does to the session.
    pub failure: Failure,
    /// Items per page of a merged list (`0`: the whole list in one answer).
    pub page_size: usize,
}

impl CompositeSpec {
    /// Members with the default rules.
    pub fn new(members: Vec<Member>) -> CompositeSpec {
        CompositeSpec {
            members,
            names: NameRules::default(),
            failure: Failure::default(),
            page_size: 0,
        }
    }

    /// Every problem that makes the spec unusable, each a sentence naming what is wrong.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.members.is_empty() {
            out.push("a composite route needs at least one server".to_string());
        }
        let mut seen = std::collections::HashSet::new();
        for m in &self.members {
            if let Err(e) = names::valid_server_name(&m.name) {
                out.push(e);
            }
            if !seen.insert(m.name.as_str()) {
                out.push(format!("server name `{}` is used twice", m.name));
            }
            if matches!(m.spec, UpstreamSpec::Composite(_)) {
                out.push(format!(
                    "server `{}` is itself composite; members must be single servers",
                    m.name
                ));
            }
        }
        if let Err(e) = self.names.validate() {
            out.push(e);
        }
        out
    }

    /// How logs and records name it: `composite(a,b,c)`.
    pub fn describe(&self) -> String {
        let names: Vec<&str> = self.members.iter().map(|m| m.name.as_str()).collect();
        format!("composite({})", names.join(","))
    }
}

/// The upstream side of a composite session: a handle on its mux task.
pub struct CompositeUpstream {
    inbox: mpsc::Sender<Frame>,
    legs: Arc<mux::Legs>,
}

impl CompositeUpstream {
    /// Open the members (in parallel) and start the mux; server frames go to `events`. With
    /// [`Failure::Closed`] a member that cannot start refuses the session; otherwise it is
    /// retried in the background, and only a session none of whose members starts is refused.
    pub async fn start(
        spec: &Arc<CompositeSpec>,
        ctx: UpstreamCtx,
        events: mpsc::Sender<UpstreamEvent>,
    ) -> Result<CompositeUpstream, ProxyError> {
        let problems = spec.problems();
        if !problems.is_empty() {
            return Err(ProxyError::UpstreamConnect(format!(
                "invalid composite route: {}",
                problems.join("; ")
            )));
        }
        let (inbox, rx) = mpsc::channel(ctx.options.channel_capacity);
        let legs = mux::start(spec.clone(), ctx, rx, events).await?;
        Ok(CompositeUpstream { inbox, legs })
    }

    /// Hand a client frame to the mux.
    pub async fn send(&self, frame: Frame) -> Result<(), ProxyError> {
        self.inbox
            .send(frame)
            .await
            .map_err(|_| ProxyError::UpstreamClosed("the composite session has ended".into()))
    }

    /// Stop every member.
    pub async fn shutdown(&self) {
        self.legs.shutdown().await;
    }
}

impl From<CompositeUpstream> for Upstream {
    fn from(c: CompositeUpstream) -> Upstream {
        Upstream::Composite(c)
    }
}
