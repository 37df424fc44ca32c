//! The pipeline: an ordered list of hooks run on every frame in both directions. Auth, limits,
//! interceptor rules, recording and metrics are hooks; with no hooks the pipeline costs one
//! empty-slice check per frame.

use shadowcat_proto::Frame;
use std::sync::Arc;

/// Which way a frame travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the client towards the server.
    ClientToServer,
    /// From the server towards the client.
    ServerToClient,
}

/// What a hook decides about a frame.
#[derive(Debug)]
pub enum Verdict {
    /// Pass it on (to the next hook, then to the other side).
    Forward,
    /// Do not pass it on; answer the sender with this frame instead (e.g. a JSON-RPC error).
    Reply(Frame),
    /// Do not pass it on and answer nothing.
    Drop,
}

/// Per-frame context a hook sees.
#[derive(Debug, Clone, Copy)]
pub struct FrameCtx<'a> {
    /// The proxy's session id.
    pub session: &'a str,
    /// Direction of travel.
    pub direction: Direction,
}

/// One pipeline stage.
pub trait Hook: Send + Sync + 'static {
    /// Name for logs.
    fn name(&self) -> &'static str;
    /// Inspect (never mutate in place) a frame and decide.
    fn on_frame(&self, ctx: &FrameCtx<'_>, frame: &Frame) -> Verdict;
}

/// The ordered hooks of a proxy.
#[derive(Clone, Default)]
pub struct Pipeline {
    hooks: Vec<Arc<dyn Hook>>,
}

impl Pipeline {
    /// A pipeline with the given hooks, run in order.
    pub fn new(hooks: Vec<Arc<dyn Hook>>) -> Self {
        Pipeline { hooks }
    }

    /// Run every hook until one does not forward.
    #[inline]
    pub fn run(&self, ctx: &FrameCtx<'_>, frame: &Frame) -> Verdict {
        for h in &self.hooks {
            match h.on_frame(ctx, frame) {
                Verdict::Forward => continue,
                other => return other,
            }
        }
        Verdict::Forward
    }

    /// Names of the hooks, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.hooks.iter().map(|h| h.name()).collect()
    }
}

/// Makes traffic visible: logs every frame (direction, kind, id, method, name, size) under the
/// `shadowcat::traffic` target.
pub struct TrafficLog;

impl Hook for TrafficLog {
    fn name(&self) -> &'static str {
        "traffic-log"
    }

    fn on_frame(&self, ctx: &FrameCtx<'_>, frame: &Frame) -> Verdict {
        let dir = match ctx.direction {
            Direction::ClientToServer => "c->s",
            Direction::ServerToClient => "s->c",
        };
        tracing::info!(
            target: "shadowcat::traffic",
            session = ctx.session,
            dir,
            kind = ?frame.kind(),
            id = frame.id().map(|i| i.to_string()),
            method = frame.method(),
            name = frame.target(),
            bytes = frame.raw().len(),
        );
        Verdict::Forward
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    struct Block;
    impl Hook for Block {
        fn name(&self) -> &'static str {
            "block"
        }
        fn on_frame(&self, _: &FrameCtx<'_>, f: &Frame) -> Verdict {
            if f.method() == Some("tools/call") {
                Verdict::Drop
            } else {
                Verdict::Forward
            }
        }
    }

    #[test]
    fn hooks_run_in_order_until_one_decides() {
        let p = Pipeline::new(vec![Arc::new(TrafficLog), Arc::new(Block)]);
        assert_eq!(p.names(), vec!["traffic-log", "block"]);
        let ctx = FrameCtx {
            session: "s",
            direction: Direction::ClientToServer,
        };
        let call = Frame::parse_single(Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}"#,
        ))
        .unwrap();
        assert!(matches!(p.run(&ctx, &call), Verdict::Drop));
        let list = Frame::parse_single(Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
        ))
        .unwrap();
        assert!(matches!(p.run(&ctx, &list), Verdict::Forward));
        assert!(matches!(
            Pipeline::default().run(&ctx, &call),
            Verdict::Forward
        ));
    }
}
