//! Messages held by `pause` rules, for `shadowcat intercept` and the web page.
//!
//! * `GET  /intercept/paused` → `{"paused":[{id, session, direction, rule, since, timeout_s, message}]}`
//! * `POST /intercept/paused/{id}/resume` → let it through
//! * `POST /intercept/paused/{id}/edit` with a JSON-RPC message as the body → let that through
//!   instead (the id of the original is kept)
//! * `POST /intercept/paused/{id}/drop` → discard it (a request is answered with an error)
//!
//! Errors: `401` bad or missing token, `404` no such paused message (or no interceptor rules
//! on this proxy), `400` invalid edit.

use super::{Admin, Answer, Refused, Shared, error, json};
use crate::intercept::{DecideError, PauseBoard};
use axum::body::Bytes;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use std::sync::Arc;

pub(super) fn routes() -> axum::Router<Arc<Admin>> {
    axum::Router::new()
        .route("/intercept/paused", get(list))
        .route("/intercept/paused/{id}/{verb}", post(act))
}

fn board(a: &Admin) -> Result<&PauseBoard, Refused> {
    a.board.as_deref().ok_or_else(|| {
        Refused::new(
            StatusCode::NOT_FOUND,
            "this proxy has no interceptor rules (start it with --rules FILE)",
        )
    })
}

fn decided(r: Result<(), DecideError>) -> Response {
    match r {
        Ok(()) => json(StatusCode::OK, serde_json::json!({ "ok": true })),
        Err(e @ DecideError::NotFound(_)) => error(StatusCode::NOT_FOUND, &e.to_string()),
        Err(e @ DecideError::Invalid(_)) => error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

async fn list(axum::extract::State(a): Shared) -> Answer {
    let b = board(&a)?;
    Ok(json(
        StatusCode::OK,
        serde_json::json!({ "paused": b.list() }),
    ))
}

async fn act(
    axum::extract::State(a): Shared,
    Path((id, verb)): Path<(u64, String)>,
    body: Bytes,
) -> Answer {
    let b = board(&a)?;
    Ok(match verb.as_str() {
        "resume" => decided(b.resume(id)),
        "drop" => decided(b.drop_message(id)),
        "edit" => match serde_json::from_slice(&body) {
            Ok(v) => decided(b.edit(id, v)),
            Err(e) => error(
                StatusCode::BAD_REQUEST,
                &format!("the body must be the edited JSON-RPC message: {e}"),
            ),
        },
        _ => error(StatusCode::NOT_FOUND, "use resume, edit or drop"),
    })
}
