//! Sessions that live on another replica (several proxies sharing a Redis store).
//!
//! A request naming a session this replica does not hold is resolved through the store:
//! * HTTP upstream: any replica can continue it. This replica *adopts* the session — a local
//!   session bound to the same upstream session id and protocol version — and serves it; its
//!   event log is shared, so `Last-Event-ID`s issued by another replica resume here.
//! * stdio upstream: the child lives on the replica that owns it. The request is forwarded
//!   over direct HTTP to that replica's advertised URL (its replica id, `--advertise`), and the
//!   answer streamed back. A forwarded request is never forwarded again (no loops).
//! * composite route: forwarded to the owner like a stdio session while the owner answers (its
//!   stdio members keep their state there). When the owner cannot be reached (the connection is
//!   refused: it is gone), has no reachable address, or the request was forwarded here already,
//!   this replica *adopts* the session from the state its record keeps
//!   ([`crate::upstream::composite::saved`]): HTTP members continue their upstream sessions,
//!   the others start afresh. It first *claims* the session in the store
//!   ([`SessionStore::claim_owner`]: the record's owner from the one it read to this replica,
//!   only if no one changed it since), so of replicas taking it over at once exactly one runs
//!   it; the others forward the request to that one, or answer
//!   [`ProxyError::SessionMoving`] (`503`, retry) when they cannot. Within this replica,
//!   requests for a session being adopted wait for that adoption ([`Adoptions`]).
//!
//! A plain HTTP-upstream session is adopted without a claim: it holds nothing on the replica
//! that runs it (the upstream session and the event log are shared), so any number of
//! replicas may continue it at once, and its record's owner stays the replica that created it.

use super::{HttpFront, Target};
use crate::error::ProxyError;
use crate::session::place::{Candidate, Resumed};
use crate::upstream::UpstreamSpec;
use crate::upstream::composite::saved::Saved;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::extract::Request;
use axum::response::Response;
use futures_util::TryStreamExt;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use shadowcat_store::{SessionRecord, SessionStatus, SessionStore, StoreError};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

/// Marks a request forwarded by a peer replica.
pub const FORWARDED_HEADER: &str = "x-shadowcat-forwarded-by";

/// Where a session named by a request is.
pub enum Located {
    /// Held (or now adopted) here.
    Here,
    /// Owned by the replica at this base URL. `adoptable`: when it cannot be reached, this
    /// replica continues the session itself ([`take_over`]).
    Owner { url: String, adoptable: bool },
}

/// Find the session `id` for a request on `target`: local, adopted from the store, or owned by
/// a peer. `SessionNotFound` when the store does not know it (or it ended).
pub async fn locate(
    front: &HttpFront,
    id: &str,
    target: &Target,
    forwarded: bool,
) -> Result<Located, ProxyError> {
    if let Some(s) = front.registry.get(id, &target.key) {
        drop(s);
        return Ok(Located::Here);
    }
    let (rec, mut pinned) = record_of(front, id, target).await?;
    match &pinned.spec {
        UpstreamSpec::Http { .. } => {}
        // Detected as Streamable HTTP and given an upstream session id: any replica continues it.
        UpstreamSpec::Auto { url, headers } if rec.upstream_session_id.is_some() => {
            pinned.spec = UpstreamSpec::http(url.clone(), headers.clone());
        }
        // A composite's members live on the replica that owns the session; with its state
        // recorded, this replica can rebuild it when that one cannot be reached.
        UpstreamSpec::Composite(_) => {
            return match owner_to_forward_to(front, &rec, forwarded) {
                Some(url) => {
                    let adoptable = rec
                        .composite
                        .as_ref()
                        .and_then(Saved::from_record)
                        .is_some();
                    Ok(Located::Owner { url, adoptable })
                }
                None => continue_composite(front, id, target, forwarded).await,
            };
        }
        // The child process or the HTTP+SSE stream lives on the replica that owns the
        // session.
        UpstreamSpec::Stdio { .. }
        | UpstreamSpec::Sse { .. }
        | UpstreamSpec::Auto { .. }
        | UpstreamSpec::Tape(_)
        | UpstreamSpec::Shared(_) => {
            return match owner_to_forward_to(front, &rec, forwarded) {
                Some(url) => Ok(Located::Owner {
                    url,
                    adoptable: false,
                }),
                None => Err(ProxyError::SessionNotFound),
            };
        }
    }
    adopt(front, id, target, rec, pinned, None).await
}

/// The owning replica of a composite session (`Located::Owner { adoptable: true }`) could not
/// be reached: continue the session here from its record — or, when another replica claimed
/// it first, learn where the request goes instead (`Located::Owner`, not adoptable).
pub async fn take_over(
    front: &HttpFront,
    id: &str,
    target: &Target,
) -> Result<Located, ProxyError> {
    continue_composite(front, id, target, false).await
}

/// Continue the composite session `id` here from its record, once this replica has claimed
/// it: the record's owner goes from the one read to this replica only if it is still the one
/// read ([`SessionStore::claim_owner`]), so of replicas taking it over at once only the one
/// whose claim wins runs it. A loser forwards the request to the winner; when it cannot (the
/// request was forwarded here already, the winner has no address) the client is asked to
/// retry ([`ProxyError::SessionMoving`]). `forwarded`: the request came from a peer.
async fn continue_composite(
    front: &HttpFront,
    id: &str,
    target: &Target,
    forwarded: bool,
) -> Result<Located, ProxyError> {
    // One adoption of a session at a time on this replica: a request that waited finds the
    // session adopted by the one before it.
    let _turn = front.adoptions.turn(id).await;
    if let Some(s) = front.registry.get(id, &target.key) {
        drop(s);
        return Ok(Located::Here);
    }
    let (rec, pinned) = record_of(front, id, target).await?;
    let saved = match &pinned.spec {
        UpstreamSpec::Composite(_) => rec.composite.as_ref().and_then(Saved::from_record),
        _ => None,
    };
    let Some(saved) = saved else {
        // Recorded without the state (an older record, or one whose `initialize` was never
        // answered): it cannot be rebuilt here.
        return Err(ProxyError::SessionNotFound);
    };
    let me = front.host.records().owner();
    let store = front.host.records().store();
    if !claim(&**store, id, rec.owner.as_deref(), me).await? {
        return claimed_elsewhere(front, id, target, forwarded).await;
    }
    if rec.owner.as_deref() != Some(me) {
        tracing::warn!(
            session = id,
            owner = rec.owner.as_deref().unwrap_or(""),
            "the replica that owns this composite session is unreachable; continuing it here"
        );
    }
    adopt(front, id, target, rec, pinned, Some(saved)).await
}

/// Claim session `id` for this replica (`me`) from `expected`.
async fn claim(
    store: &dyn SessionStore,
    id: &str,
    expected: Option<&str>,
    me: &str,
) -> Result<bool, ProxyError> {
    match store.claim_owner(id, expected, me).await {
        Ok(won) => Ok(won),
        Err(StoreError::Unavailable(why)) => Err(ProxyError::StoreUnavailable(why)),
        Err(e) => Err(ProxyError::StoreUnavailable(e.to_string())),
    }
}

/// This replica lost the claim to session `id`: where its request goes now.
async fn claimed_elsewhere(
    front: &HttpFront,
    id: &str,
    target: &Target,
    forwarded: bool,
) -> Result<Located, ProxyError> {
    // Ended meanwhile: not found.
    let (rec, _) = record_of(front, id, target).await?;
    let me = front.host.records().owner();
    match rec.owner.as_deref() {
        Some(owner) if !forwarded && owner != me && is_url(owner) => {
            tracing::info!(
                session = id,
                %owner,
                "another replica took this composite session over first; forwarding to it"
            );
            Ok(Located::Owner {
                url: owner.to_string(),
                adoptable: false,
            })
        }
        owner => {
            tracing::info!(
                session = id,
                owner = owner.unwrap_or(""),
                forwarded,
                "another replica took this composite session over first and cannot be forwarded to; asking the client to retry"
            );
            Err(ProxyError::SessionMoving)
        }
    }
}

/// Adoptions of sessions of other replicas in progress on this replica: one turn per session
/// id, so a request for a session being adopted waits for that adoption (and then finds the
/// session here) instead of starting its upstreams again. An entry lives while a turn is held
/// or awaited (the last turn removes it; one left by a cancelled waiter goes with the next
/// turn taken).
#[derive(Default)]
pub struct Adoptions {
    turns: Mutex<HashMap<Arc<str>, Arc<tokio::sync::Mutex<()>>>>,
}

/// A turn at adopting one session (see [`Adoptions`]); the next waiter's turn starts when it
/// is dropped.
pub struct Turn<'a> {
    adoptions: &'a Adoptions,
    id: Arc<str>,
    _held: tokio::sync::OwnedMutexGuard<()>,
}

impl Adoptions {
    /// Wait for the turn at adopting session `id`.
    pub async fn turn(&self, id: &str) -> Turn<'_> {
        let (id, lock) = {
            let mut turns = crate::sync::lock(&self.turns);
            // Entries no one holds or awaits any more (a waiter cancelled just as its turn
            // came leaves one behind); adoptions are rare, the map small.
            turns.retain(|_, l| Arc::strong_count(l) > 1);
            match turns.get_key_value(id) {
                Some((k, l)) => (k.clone(), l.clone()),
                None => {
                    let k: Arc<str> = Arc::from(id);
                    let l = Arc::new(tokio::sync::Mutex::new(()));
                    turns.insert(k.clone(), l.clone());
                    (k, l)
                }
            }
        };
        Turn {
            adoptions: self,
            id,
            _held: lock.lock_owned().await,
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut turns = crate::sync::lock(&self.adoptions.turns);
        // Held by the map and this turn alone: no one waits, the entry goes.
        if turns
            .get(&self.id)
            .is_some_and(|l| Arc::strong_count(l) <= 2)
        {
            turns.remove(&self.id);
        }
    }
}

/// The active record of session `id` on `target`'s route, and the upstream it stays on.
async fn record_of(
    front: &HttpFront,
    id: &str,
    target: &Target,
) -> Result<(SessionRecord, Candidate), ProxyError> {
    let store = front.host.records().store();
    let rec = match store.get(id).await {
        Ok(Some(rec)) => rec,
        Ok(None) => return Err(ProxyError::SessionNotFound),
        Err(StoreError::Unavailable(why)) => return Err(ProxyError::StoreUnavailable(why)),
        Err(e) => return Err(ProxyError::StoreUnavailable(e.to_string())),
    };
    if rec.status != SessionStatus::Active || rec.route != *target.key {
        return Err(ProxyError::SessionNotFound);
    }
    // The session stays on the upstream its record names (affinity across replicas).
    let Some(pinned) = target.placer.pinned(&rec.upstream) else {
        return Err(ProxyError::SessionNotFound);
    };
    Ok((rec, pinned))
}

/// The replica to forward a request of the session `rec` to: its owner, when that is another
/// replica with an address and the request was not forwarded already.
fn owner_to_forward_to(front: &HttpFront, rec: &SessionRecord, forwarded: bool) -> Option<String> {
    let me = front.host.records().owner();
    match &rec.owner {
        Some(owner) if !forwarded && owner != me && is_url(owner) => Some(owner.clone()),
        _ => None,
    }
}

/// Continue the session `rec` here, on `pinned` (a composite from its `composite` state).
async fn adopt(
    front: &HttpFront,
    id: &str,
    target: &Target,
    rec: SessionRecord,
    pinned: Candidate,
    composite: Option<Saved>,
) -> Result<Located, ProxyError> {
    let resumed = Resumed {
        id: Arc::from(id),
        version: rec.protocol_version,
        upstream_session_id: rec.upstream_session_id,
        composite,
    };
    let (session, events, unlisted) = front.resume(target, pinned, &resumed).await?;
    match front
        .registry
        .insert_new(session.clone(), target.key.clone(), events)
    {
        Ok(s) => {
            // An adopted session counts like any other (the placer checked that it belongs to
            // this request's principal, whom the slot binds it to).
            unlisted.admit(&session);
            tracing::info!(
                session = id,
                "continuing a session created by another replica"
            );
            session.listen_in_background();
            drop(s);
            Ok(Located::Here)
        }
        // Another request adopted it first (a plain HTTP session: nothing was sent
        // upstream, so ours is just dropped).
        Err(_existing) => {
            session.cancel_token().cancel();
            Ok(Located::Here)
        }
    }
}

fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

/// What became of a request forwarded to the owning replica.
pub enum Forwarded {
    /// The owner answered (this is its answer).
    Answered(Response),
    /// The owner could not be connected to (the request never reached it): here it is back,
    /// to be served here.
    Unreachable(Request),
}

/// Relay the request to the owning replica and stream its answer back. With `fallback`, the
/// body is read first (up to the front's `max_body`) so that a request the owner cannot be
/// connected to comes back whole ([`Forwarded::Unreachable`]); without it, that is an error.
pub async fn forward(
    front: &HttpFront,
    owner: &str,
    req: Request,
    fallback: bool,
) -> Result<Forwarded, ProxyError> {
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/mcp");
    let url = format!("{}{}", owner.trim_end_matches('/'), path);
    let client = parts
        .extensions
        .get::<super::ClientIp>()
        .map(|c| c.0)
        .or_else(|| {
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip())
        });
    let headers = forwarded_headers(&parts.headers, client, front.host.records().owner());
    let out = front
        .http
        .client()
        .request(parts.method.clone(), &url)
        .headers(headers);
    let unreachable = |e: reqwest::Error| {
        ProxyError::UpstreamConnect(format!(
            "the replica {owner} that owns this session is unreachable: {e}"
        ))
    };
    let resp = if fallback {
        let bytes = super::post::read_body(body, front.config.max_body).await?;
        match out.body(bytes.clone()).send().await {
            Ok(resp) => resp,
            Err(e) if e.is_connect() => {
                tracing::debug!(%owner, error = %e, "the owning replica cannot be connected to");
                return Ok(Forwarded::Unreachable(Request::from_parts(
                    parts,
                    Body::from(bytes),
                )));
            }
            Err(e) => return Err(unreachable(e)),
        }
    } else {
        let stream = body.into_data_stream().map_err(std::io::Error::other);
        out.body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
            .map_err(unreachable)?
    };
    tracing::debug!(%owner, status = %resp.status(), "forwarded to the owning replica");
    let mut r = Response::new(Body::empty());
    *r.status_mut() =
        StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    for (name, value) in resp.headers() {
        let hop = [
            header::CONTENT_LENGTH,
            header::TRANSFER_ENCODING,
            header::CONNECTION,
        ];
        if !hop.contains(name) {
            r.headers_mut().append(name.clone(), value.clone());
        }
    }
    *r.body_mut() = Body::from_stream(resp.bytes_stream());
    Ok(Forwarded::Answered(r))
}

/// The headers of a request forwarded to the owning replica: the client's, except the
/// connection's own (`Host`, `Content-Length`) and what says where it came from —
/// `X-Forwarded-For` is overwritten with the client's address as this replica determined it
/// (a client's own `X-Forwarded-For` must not reach a replica that trusts this one's), and
/// [`FORWARDED_HEADER`] names this replica.
fn forwarded_headers(headers: &HeaderMap, client: Option<IpAddr>, me: &str) -> HeaderMap {
    const XFF: &str = "x-forwarded-for";
    let mut out = HeaderMap::with_capacity(headers.len() + 2);
    for (name, value) in headers {
        let skip = name == header::HOST
            || name == header::CONTENT_LENGTH
            || name == header::FORWARDED
            || name == XFF
            || name == "x-real-ip"
            || name == FORWARDED_HEADER;
        if !skip {
            out.append(name, value.clone());
        }
    }
    if let Some(ip) = client
        && let Ok(v) = HeaderValue::from_str(&ip.to_string())
    {
        out.insert(XFF, v);
    }
    if let Ok(v) = HeaderValue::from_str(me) {
        out.insert(FORWARDED_HEADER, v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn adoptions_of_one_session_take_turns_and_leave_nothing_behind() {
        let adoptions = Arc::new(Adoptions::default());
        let first = adoptions.turn("s1").await;
        // Another session's turn is not held up.
        drop(adoptions.turn("s2").await);
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let waiter = {
            let adoptions = adoptions.clone();
            tokio::spawn(async move {
                let turn = adoptions.turn("s1").await;
                tx.send(()).unwrap();
                drop(turn);
            })
        };
        // The waiter cannot have its turn while the first is held.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(
            rx.try_recv().is_err(),
            "a second turn while the first is held"
        );
        assert_eq!(crate::sync::lock(&adoptions.turns).len(), 1);
        drop(first);
        waiter.await.unwrap();
        assert!(rx.try_recv().is_ok());
        assert!(
            crate::sync::lock(&adoptions.turns).is_empty(),
            "no entry once no one holds or awaits a turn"
        );
        // A waiter given up on just as its turn comes leaves an entry behind, for no longer
        // than the next turn taken.
        let held = adoptions.turn("s3").await;
        let given_up = {
            let adoptions = adoptions.clone();
            tokio::spawn(async move { drop(adoptions.turn("s3").await) })
        };
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        drop(held);
        given_up.abort();
        let _ = given_up.await;
        drop(adoptions.turn("s4").await);
        assert!(crate::sync::lock(&adoptions.turns).is_empty());
    }

    #[test]
    fn forwarding_overwrites_where_the_request_came_from() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("a.example"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        h.append("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.append("x-forwarded-for", HeaderValue::from_static("7.7.7.7"));
        h.insert(header::FORWARDED, HeaderValue::from_static("for=6.6.6.6"));
        h.insert("x-real-ip", HeaderValue::from_static("6.6.6.6"));
        h.insert(FORWARDED_HEADER, HeaderValue::from_static("spoofed"));
        h.insert("mcp-session-id", HeaderValue::from_static("abc"));
        h.append(header::ACCEPT, HeaderValue::from_static("application/json"));
        h.append(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        let client: IpAddr = "203.0.113.9".parse().unwrap();
        let out = forwarded_headers(&h, Some(client), "http://10.0.0.5:8080");
        let all =
            |n: &str| -> Vec<&str> { out.get_all(n).iter().map(|v| v.to_str().unwrap()).collect() };
        assert_eq!(all("x-forwarded-for"), ["203.0.113.9"]);
        assert_eq!(all(FORWARDED_HEADER), ["http://10.0.0.5:8080"]);
        for gone in ["host", "content-length", "forwarded", "x-real-ip"] {
            assert!(all(gone).is_empty(), "{gone}");
        }
        assert_eq!(all("mcp-session-id"), ["abc"]);
        assert_eq!(all("accept"), ["application/json", "text/event-stream"]);
        // Without a known client address, the client's header still does not go through.
        let out = forwarded_headers(&h, None, "r1");
        assert!(out.get("x-forwarded-for").is_none());
    }
}
