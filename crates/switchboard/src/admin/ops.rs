//! The operator's admin routes beside the calls API (same bearer token): the effective
//! configuration, reload, and transferring a live call to a queue (docs/operations.md).

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{AdminState, MAX_REQUEST_BYTES, error};
use crate::calls::{CommandRefusal, OperatorCommand, TransferRefusal};
use crate::config::view::effective_json;
use crate::reload::{self, ReloadError};

/// How long the call's task may take to say whether the transfer started (it answers at its
/// next turn of the loop: microseconds unless it is wedged).
const COMMAND_ANSWER_LIMIT: Duration = Duration::from_secs(5);

/// `GET /v1/config`: the configuration new calls get (after defaults and environment
/// overrides, restart-only keys at their running values), every secret masked.
pub(super) async fn show_config(State(state): State<AdminState>) -> Response {
    let settings = state.gateway.settings();
    axum::Json(effective_json(&settings.config)).into_response()
}

/// `POST /v1/reload`: 200 with what changed; 422 with every problem when the file is refused
/// (the running configuration is kept); 409 when the gateway has no file to re-read.
pub(super) async fn reload(State(state): State<AdminState>) -> Response {
    match reload::reload(&state.gateway).await {
        Ok(report) => (StatusCode::OK, axum::Json(report)).into_response(),
        Err(ReloadError::Invalid(problems)) => {
            let listed: Vec<String> = problems.iter().map(ToString::to_string).collect();
            let message = ReloadError::Invalid(problems).to_string();
            (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(json!({ "error": message, "problems": listed })))
                .into_response()
        }
        Err(e @ ReloadError::NoFile) => error(StatusCode::CONFLICT, e, None),
        Err(e @ ReloadError::Internal(_)) => error(StatusCode::INTERNAL_SERVER_ERROR, e, None),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferRequest {
    /// One of the agent's `[agents.X.transfer] queues` (a name: never a URI).
    queue: String,
}

/// `POST /v1/calls/{id}/transfer` `{"queue": "NAME"}`: 202 once the transfer started; 404
/// unknown call; 409 not answered, ended, or a transfer already running; 422 unknown queue (the
/// valid ones listed) or no transfer configured; 400 a bad body.
pub(super) async fn transfer_call(State(state): State<AdminState>, Path(id): Path<String>, body: Bytes) -> Response {
    if body.len() > MAX_REQUEST_BYTES {
        return error(StatusCode::PAYLOAD_TOO_LARGE, format!("at most {MAX_REQUEST_BYTES} bytes"), None);
    }
    let request: TransferRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return error(StatusCode::BAD_REQUEST, e, Some("queue")),
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    let command = OperatorCommand::Transfer { queue: request.queue.clone(), reply };
    match state.gateway.calls.command(&id, command) {
        Ok(()) => {}
        Err(CommandRefusal::Unknown) => return error(StatusCode::NOT_FOUND, "no such call", None),
        Err(CommandRefusal::AlreadyEnded) => return error(StatusCode::CONFLICT, "the call has already ended", None),
        Err(CommandRefusal::NotAnswered) => return error(StatusCode::CONFLICT, "the call is not answered yet", None),
        Err(CommandRefusal::Busy) => {
            return error(StatusCode::CONFLICT, "the call is ending or busy with other commands", None);
        }
    }
    match tokio::time::timeout(COMMAND_ANSWER_LIMIT, answer).await {
        Ok(Ok(Ok(()))) => {
            tracing::info!(call = %id, queue = request.queue, "transfer started through the admin API");
            (StatusCode::ACCEPTED, axum::Json(json!({ "id": id, "queue": request.queue }))).into_response()
        }
        Ok(Ok(Err(refusal))) => transfer_refused(refusal),
        // The call's task ended before it read the command.
        Ok(Err(_)) => error(StatusCode::CONFLICT, "the call has ended", None),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the call did not answer the command in time", None),
    }
}

fn transfer_refused(refusal: TransferRefusal) -> Response {
    match &refusal {
        TransferRefusal::Busy => error(StatusCode::CONFLICT, &refusal, None),
        TransferRefusal::NotConfigured => error(StatusCode::UNPROCESSABLE_ENTITY, &refusal, None),
        TransferRefusal::UnknownQueue { valid, .. } => {
            let body = json!({ "error": refusal.to_string(), "field": "queue", "valid": valid });
            (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(body)).into_response()
        }
    }
}
