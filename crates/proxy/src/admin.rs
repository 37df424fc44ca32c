//! A minimal admin API (`--admin ADDR`): the messages held by `pause` rules, as JSON, for
//! `shadowcat intercept`. Loopback by default; with a token, every request needs
//! `Authorization: Bearer TOKEN`.
//!
//! * `GET  /intercept/paused` → `{"paused":[{id, session, direction, rule, since, timeout_s, message}]}`
//! * `POST /intercept/paused/{id}/resume` → let it through
//! * `POST /intercept/paused/{id}/edit` with a JSON-RPC message as the body → let that through
//!   instead (the id of the original is kept)
//! * `POST /intercept/paused/{id}/drop` → discard it (a request is answered with an error)
//!
//! Errors: `401` bad or missing token, `404` no such paused message, `400` invalid edit.

use crate::intercept::{DecideError, PauseBoard};
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
struct Admin {
    board: Arc<PauseBoard>,
    token: Option<Arc<str>>,
}

fn json(status: StatusCode, v: serde_json::Value) -> Response {
    let mut r = Response::new(Body::from(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, message: &str) -> Response {
    json(status, serde_json::json!({ "error": message }))
}

impl Admin {
    /// `None` when allowed; the 401 answer otherwise.
    fn refuse(&self, headers: &HeaderMap) -> Option<Response> {
        let token = self.token.as_ref()?;
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        // Compare without an early exit so timing does not reveal the token's prefix.
        let ok = given.is_some_and(|g| {
            g.len() == token.len()
                && g.bytes()
                    .zip(token.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        });
        (!ok).then(|| {
            error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong admin token (Authorization: Bearer TOKEN)",
            )
        })
    }
}

fn decided(r: Result<(), DecideError>) -> Response {
    match r {
        Ok(()) => json(StatusCode::OK, serde_json::json!({ "ok": true })),
        Err(e @ DecideError::NotFound(_)) => error(StatusCode::NOT_FOUND, &e.to_string()),
        Err(e @ DecideError::Invalid(_)) => error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

async fn list(State(a): State<Admin>, headers: HeaderMap) -> Response {
    if let Some(r) = a.refuse(&headers) {
        return r;
    }
    json(
        StatusCode::OK,
        serde_json::json!({ "paused": a.board.list() }),
    )
}

async fn act(
    State(a): State<Admin>,
    Path((id, verb)): Path<(u64, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = a.refuse(&headers) {
        return r;
    }
    match verb.as_str() {
        "resume" => decided(a.board.resume(id)),
        "drop" => decided(a.board.drop_message(id)),
        "edit" => match serde_json::from_slice(&body) {
            Ok(v) => decided(a.board.edit(id, v)),
            Err(e) => error(
                StatusCode::BAD_REQUEST,
                &format!("the body must be the edited JSON-RPC message: {e}"),
            ),
        },
        _ => error(StatusCode::NOT_FOUND, "use resume, edit or drop"),
    }
}

/// Serve the admin API on `listener` until `cancel`.
pub async fn serve(
    listener: TcpListener,
    board: Arc<PauseBoard>,
    token: Option<String>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let state = Admin {
        board,
        token: token.map(Arc::from),
    };
    let app = axum::Router::new()
        .route("/intercept/paused", get(list))
        .route("/intercept/paused/{id}/{verb}", post(act))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "unknown admin endpoint") })
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}
