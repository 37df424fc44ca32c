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
//!   the others start afresh, and the record names this replica as the owner from then on.

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
use shadowcat_store::{SessionRecord, SessionStatus, StoreError};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

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
    let mut composite = None;
    match &pinned.spec {
        UpstreamSpec::Http { .. } => {}
        // Detected as Streamable HTTP and given an upstream session id: any replica continues it.
        UpstreamSpec::Auto { url, headers } if rec.upstream_session_id.is_some() => {
            pinned.spec = UpstreamSpec::http(url.clone(), headers.clone());
        }
        // A composite's members live on the replica that owns the session; with its state
        // recorded, this replica can rebuild it when that one cannot be reached.
        UpstreamSpec::Composite(_) => {
            let saved = rec.composite.as_ref().and_then(Saved::from_record);
            match owner_to_forward_to(front, &rec, forwarded) {
                Some(url) => {
                    let adoptable = saved.is_some();
                    return Ok(Located::Owner { url, adoptable });
                }
                None if saved.is_some() => composite = saved,
                None => return Err(ProxyError::SessionNotFound),
            }
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
    adopt(front, id, target, rec, pinned, composite).await
}

/// The owning replica of a composite session (`Located::Owner { adoptable: true }`) could not
/// be reached: continue the session here from its record.
pub async fn take_over(front: &HttpFront, id: &str, target: &Target) -> Result<(), ProxyError> {
    if let Some(s) = front.registry.get(id, &target.key) {
        drop(s);
        return Ok(());
    }
    let (rec, pinned) = record_of(front, id, target).await?;
    let composite = match &pinned.spec {
        UpstreamSpec::Composite(_) => rec.composite.as_ref().and_then(Saved::from_record),
        _ => None,
    };
    if composite.is_none() {
        return Err(ProxyError::SessionNotFound);
    }
    tracing::warn!(
        session = id,
        owner = rec.owner.as_deref().unwrap_or(""),
        "the replica that owns this composite session is unreachable; continuing it here"
    );
    adopt(front, id, target, rec, pinned, composite)
        .await
        .map(|_| ())
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
        // Another request adopted it first; ours never did I/O, so just drop it.
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
