//! The forward-proxy modes, each a composition of a front, sessions, the pipeline and upstreams.
//!
//! * `forward stdio`: stdio front → one session → stdio child or HTTP upstream.
//! * `forward http`: HTTP front → one session per client → an upstream per session, chosen per
//!   request (named target path, absolute-form URI, or the default target).

use crate::error::ProxyError;
use crate::front::http::{HttpFront, HttpFrontConfig};
use crate::front::stdio;
use crate::pipeline::Pipeline;
use crate::runtime::drain;
use crate::session::host::Limits;
use crate::session::place::{self, Creator, NewSession, Target};
use crate::session::records::Records;
use crate::session::{Host, Kind};
use crate::upstream::{CONNECT_TIMEOUT, HttpClient, UpstreamCtx, UpstreamOptions, UpstreamSpec};
use shadowcat_store::{MemoryStore, SessionStore};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Settings of `forward stdio`.
#[derive(Clone)]
pub struct StdioForward {
    /// The server to relay to.
    pub upstream: UpstreamSpec,
    /// Largest line accepted from the client.
    pub max_line: usize,
    /// Upstream knobs.
    pub options: UpstreamOptions,
    /// Hooks.
    pub pipeline: Pipeline,
}

/// Relay our stdin/stdout to the upstream until the client or the server ends.
/// Returns the exit code for the process (the child's, for stdio upstreams). `built` is handed
/// the session host before the session starts (hooks that reach the session themselves, such
/// as pinning's `list_changed`, learn it there).
pub async fn forward_stdio(
    cfg: StdioForward,
    shutdown: CancellationToken,
    built: impl FnOnce(&Arc<Host>),
) -> Result<i32, ProxyError> {
    let tracker = TaskTracker::new();
    let grace = cfg.options.shutdown_grace;
    // The host's records outlive the session only until it is torn down: stopped then, so the
    // drain below waits for the upstream's tasks alone.
    let records_stop = CancellationToken::new();
    let host = stdio_host(&tracker, records_stop.clone());
    built(&host);
    let io = (tokio::io::stdin(), tokio::io::stdout());
    let code = relay_stdio(cfg, &host, &records_stop, &tracker, io, shutdown.clone()).await;
    drain(&tracker, grace * 3).await;
    code
}

/// The session host of `forward stdio`: one session, its record in a private in-memory store
/// (stopped by `cancel`).
fn stdio_host(tracker: &TaskTracker, cancel: CancellationToken) -> Arc<Host> {
    let records = Records::new(
        Arc::new(MemoryStore::new()),
        Arc::from("stdio"),
        Duration::from_secs(1),
        1,
        tracker,
        cancel,
    );
    let limits = Limits {
        max_sessions: 1,
        max_per_principal: None,
    };
    Host::new(limits, Arc::new(records), None)
}

/// The stdio front's one session, created in `host` like every session (see
/// [`place::create`]), relaying `input`/`output` until either side ends; then the host's
/// records are stopped (`records_stop`), so nothing of the relay is left on `tracker`.
async fn relay_stdio<R, W>(
    cfg: StdioForward,
    host: &Arc<Host>,
    records_stop: &CancellationToken,
    tracker: &TaskTracker,
    (input, output): (R, W),
    shutdown: CancellationToken,
) -> Result<i32, ProxyError>
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let http = HttpClient::new(CONNECT_TIMEOUT)?;
    let target = Target::fixed(Arc::from("stdio"), cfg.upstream);
    let creator = Creator {
        host,
        pipeline: &cfg.pipeline,
        ctx: Box::new(|id: &Arc<str>| UpstreamCtx {
            session: id.clone(),
            cancel: shutdown.child_token(),
            front_cancel: shutdown.clone(),
            tracker: tracker.clone(),
            http: http.clone(),
            options: cfg.options.clone(),
            guard: None,
        }),
    };
    let new = NewSession {
        target: &target,
        kind: Kind::Stdio,
        route: "stdio",
        init: None,
        tried: &[],
    };
    let created = place::create(&creator, new).await;
    let created = match created {
        Ok(c) => c,
        Err(e) => {
            records_stop.cancel();
            return Err(e);
        }
    };
    let span = tracing::info_span!("session", id = %created.session.id());
    let code = tracing::Instrument::instrument(
        stdio::run(
            created.session,
            created.events,
            input,
            output,
            cfg.max_line,
            shutdown.clone(),
        ),
        span,
    )
    .await;
    records_stop.cancel();
    Ok(code)
}

/// Serve the HTTP front on `listener` until `shutdown` fires, then shut down gracefully.
pub async fn forward_http(
    listener: TcpListener,
    config: HttpFrontConfig,
    pipeline: Pipeline,
    store: Arc<dyn SessionStore>,
    shutdown: CancellationToken,
    ready: impl FnOnce(),
    built: impl FnOnce(&Arc<HttpFront>),
) -> Result<(), ProxyError> {
    let http = HttpClient::new(CONNECT_TIMEOUT)?;
    let front = HttpFront::new(config, pipeline, http, store, shutdown, TaskTracker::new())?;
    // Hooks that reach the sessions themselves (pinning's list_changed) learn the front here.
    built(&front);
    front.run(listener, ready).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::UpstreamSpec;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    /// `forward stdio`'s session is created in its host like any other: listed there (kind
    /// `stdio`) while it runs, its place given back when the client closes stdin; the child's
    /// exit code is the relay's.
    #[tokio::test]
    async fn the_stdio_session_lives_in_the_host() {
        let tracker = TaskTracker::new();
        let records_stop = CancellationToken::new();
        let host = stdio_host(&tracker, records_stop.clone());
        // A server that answers every line with a result for id 1, then exits with 7.
        let script =
            r#"while read -r l; do echo '{"jsonrpc":"2.0","id":1,"result":{}}'; done; exit 7"#;
        let cfg = StdioForward {
            upstream: UpstreamSpec::stdio("sh", vec!["-c".into(), script.into()]),
            max_line: 1 << 20,
            options: UpstreamOptions::default(),
            pipeline: Pipeline::default(),
        };
        let (mut client, front_in) = tokio::io::duplex(4096);
        let (front_out, client_out) = tokio::io::duplex(4096);
        let relay = {
            let (host, tracker) = (host.clone(), tracker.clone());
            let records_stop = records_stop.clone();
            tokio::spawn(async move {
                let shutdown = CancellationToken::new();
                let io = (front_in, front_out);
                relay_stdio(cfg, &host, &records_stop, &tracker, io, shutdown).await
            })
        };
        client
            .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\n")
            .await
            .unwrap();
        let mut lines = BufReader::new(client_out).lines();
        let answer = lines.next_line().await.unwrap().unwrap();
        assert!(answer.contains("\"result\""), "{answer}");
        let entries = host.entries();
        assert_eq!(entries.len(), 1, "the session is listed in the host");
        assert_eq!(entries[0].1.kind, Kind::Stdio);
        assert_eq!(host.reserved(), 1);
        drop(client);
        let code = relay.await.unwrap().unwrap();
        assert_eq!(code, 7);
        assert!(host.is_empty(), "the session left the host's table");
        assert_eq!(host.reserved(), 0, "its place was given back");
        // Nothing of the relay is left running (forward stdio drains its tracker before it
        // exits: a task left over, such as the records' writer, would hold the exit up).
        tracker.close();
        tokio::time::timeout(Duration::from_secs(10), tracker.wait())
            .await
            .expect("every task of the relay ends");
    }
}
