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

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use crate::calls::{Direction, NewCall};

    use super::*;

    /// A request whose answer is JSON (`Null` when it is not).
    async fn request(
        admin: std::net::SocketAddr,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> (u16, serde_json::Value) {
        let (status, body) = crate::admin::tests::http(admin, method, path, token, body).await;
        (status, serde_json::from_str(&body).unwrap_or(serde_json::Value::Null))
    }

    fn config_text(instructions: &str, udp: &str, token: &str) -> String {
        format!(
            "[sip]\nudp = \"{udp}\"\ntcp = \"\"\n[media]\nbind = \"127.0.0.1\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{token}\"\n\
             [agents.default]\ninstructions = \"{instructions}\"\n"
        )
    }

    /// Reload over HTTP: a good file changes what `GET /v1/config` shows (restart-only keys
    /// kept and named), a broken one is refused with its problems and changes nothing, a
    /// rotated token takes effect, and no secret is shown.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reload_applies_a_good_file_and_refuses_a_broken_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchboard.toml");
        std::fs::write(&path, config_text("first", "127.0.0.1:0", "t0ken-one")).unwrap();
        let (config, resolved) = crate::config::load_with_env(&path, &[]).unwrap();
        let gateway = crate::app::start(config, resolved, None).await.unwrap();
        let admin = gateway.admin_addr().unwrap();
        let token = Some("t0ken-one");

        assert_eq!(request(admin, "POST", "/v1/reload", None, "").await.0, 401);
        assert_eq!(request(admin, "GET", "/v1/config", None, "").await.0, 401);
        // Started without a file to re-read: nothing to reload.
        assert_eq!(request(admin, "POST", "/v1/reload", token, "").await.0, 409);
        gateway.set_config_path(path.clone());

        let (status, shown) = request(admin, "GET", "/v1/config", token, "").await;
        assert_eq!(status, 200);
        assert_eq!(shown["agents"]["default"]["instructions"], "first");
        assert_eq!(shown["admin"]["token"], crate::config::MASKED);
        assert!(!shown.to_string().contains("t0ken-one"));

        std::fs::write(&path, config_text("second", "127.0.0.1:5999", "t0ken-one")).unwrap();
        let (status, report) = request(admin, "POST", "/v1/reload", token, "").await;
        assert_eq!(status, 200, "{report}");
        assert_eq!(report["agents"], 1);
        assert!(report["changed"].as_array().unwrap().iter().any(|k| k == "agents.default.instructions"), "{report}");
        assert_eq!(report["needs_restart"][0]["key"], "sip.udp", "{report}");
        assert_eq!(report["needs_restart"][0]["running"], "127.0.0.1:0", "{report}");
        let (_, shown) = request(admin, "GET", "/v1/config", token, "").await;
        assert_eq!(shown["agents"]["default"]["instructions"], "second");
        assert_eq!(shown["sip"]["udp"], "127.0.0.1:0", "the running listener is what is in effect");

        std::fs::write(&path, config_text("third", "127.0.0.1:0", "t0ken-one") + "[agents.default.bogus]\nx = 1\n")
            .unwrap();
        let (status, refused) = request(admin, "POST", "/v1/reload", token, "").await;
        assert_eq!(status, 422, "{refused}");
        let problems = refused["problems"].as_array().unwrap();
        assert!(problems.iter().any(|p| p.as_str().unwrap().contains("bogus")), "{refused}");
        let (_, shown) = request(admin, "GET", "/v1/config", token, "").await;
        assert_eq!(shown["agents"]["default"]["instructions"], "second", "the old configuration is kept");

        // A rotated token: the old one stops working at once.
        std::fs::write(&path, config_text("second", "127.0.0.1:0", "t0ken-two")).unwrap();
        assert_eq!(request(admin, "POST", "/v1/reload", token, "").await.0, 200);
        assert_eq!(request(admin, "GET", "/v1/config", token, "").await.0, 401);
        assert_eq!(request(admin, "GET", "/v1/config", Some("t0ken-two"), "").await.0, 200);
        gateway.shutdown(Duration::from_secs(1)).await;
    }

    /// `POST /v1/calls/{id}/transfer` at the registry level: a stand-in for the call's task
    /// answers the commands as the shell does; every answer maps to its status.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn transfer_answers_map_to_statuses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchboard.toml");
        std::fs::write(&path, config_text("first", "127.0.0.1:0", "")).unwrap();
        let (config, resolved) = crate::config::load_with_env(&path, &[]).unwrap();
        let gateway = crate::app::start(config, resolved, None).await.unwrap();
        let admin = gateway.admin_addr().unwrap();
        let calls = &gateway.state_for_test().calls;
        let new_call = || NewCall {
            direction: Direction::Inbound,
            agent: "default".into(),
            to: "100".into(),
            from: "200".into(),
            trunk: None,
        };
        let (ringing, _) = calls.register(new_call(), SystemTime::now()).unwrap();
        let (answered, _) = calls.register(new_call(), SystemTime::now()).unwrap();
        let mut commands = calls.accept_commands(answered.id()).unwrap();
        let call_task = tokio::spawn(async move {
            while let Some(OperatorCommand::Transfer { queue, reply }) = commands.recv().await {
                let answer = match queue.as_str() {
                    "sales" => Ok(()),
                    "busy" => Err(TransferRefusal::Busy),
                    "none" => Err(TransferRefusal::NotConfigured),
                    _ => Err(TransferRefusal::UnknownQueue { queue, valid: vec!["sales".into()] }),
                };
                let _ = reply.send(answer);
            }
        });
        let path = format!("/v1/calls/{}/transfer", answered.id());
        let (status, body) = request(admin, "POST", &path, None, r#"{"queue": "sales"}"#).await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["queue"], "sales");
        let (status, body) = request(admin, "POST", &path, None, r#"{"queue": "sip:evil@example"}"#).await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["valid"], serde_json::json!(["sales"]));
        assert_eq!(request(admin, "POST", &path, None, r#"{"queue": "busy"}"#).await.0, 409);
        assert_eq!(request(admin, "POST", &path, None, r#"{"queue": "none"}"#).await.0, 422);
        assert_eq!(request(admin, "POST", &path, None, r#"{"queue": 5}"#).await.0, 400);
        assert_eq!(request(admin, "POST", &path, None, r#"{"target": "sales"}"#).await.0, 400);
        let ringing_path = format!("/v1/calls/{}/transfer", ringing.id());
        assert_eq!(request(admin, "POST", &ringing_path, None, r#"{"queue": "sales"}"#).await.0, 409);
        assert_eq!(request(admin, "POST", "/v1/calls/nope/transfer", None, r#"{"queue": "sales"}"#).await.0, 404);
        drop(answered);
        call_task.await.unwrap();
        drop(ringing);
        gateway.shutdown(Duration::from_secs(1)).await;
    }
}
