//! Admin HTTP: `/healthz` (the process can work), `/readyz` (taking calls), `/metrics` (Prometheus),
//! and the calls API under `/v1` (place, list, inspect and hang up calls; docs/operations.md).
//!
//! When `admin.token` is set, every `/v1` route requires `Authorization: Bearer <token>`
//! (compared in constant time); `switchboard check` refuses a non-loopback listener without one.
//!
//! Both health answers tell the truth: once a task the gateway cannot live without has ended
//! (the SIP driver, the accept loops), `/healthz` and `/readyz` answer 503 with what ended, at
//! once, while the process shuts down and exits non-zero.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::task::JoinHandle;

use crate::app::GatewayState;
use crate::call::outbound::{self, PlaceCallRequest, PlanError, StartError};
use crate::calls::HangUp;

/// Largest `POST /v1/calls` body accepted.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

#[derive(Clone)]
struct AdminState {
    gateway: Arc<GatewayState>,
    metrics: Option<PrometheusHandle>,
}

/// Binds `addr` and serves in the background; returns the bound address and the server task
/// (which the gateway supervises: it should never end).
pub async fn serve(
    addr: SocketAddr,
    gateway: Arc<GatewayState>,
    metrics: Option<PrometheusHandle>,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let state = AdminState { gateway, metrics };
    let calls_api = Router::new()
        .route("/v1/calls", get(list_calls).post(place_call))
        .route("/v1/calls/{id}", get(show_call).delete(hang_up_call))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .merge(calls_api)
        .with_state(state);
    // axum's accept loop already pauses on EMFILE and similar errors instead of spinning.
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "admin listener stopped");
        }
    });
    Ok((bound, task))
}

async fn healthz(State(state): State<AdminState>) -> impl IntoResponse {
    match state.gateway.failure() {
        Some(failure) => (StatusCode::SERVICE_UNAVAILABLE, format!("unhealthy: {failure}\n")),
        None => (StatusCode::OK, "ok\n".to_string()),
    }
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    let gw = &state.gateway;
    if let Some(failure) = gw.failure() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {failure}\n"));
    }
    if !gw.ready.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready: starting or shutting down\n".to_string());
    }
    let active = gw.active_calls.load(Ordering::Acquire);
    let limit = gw.config.calls.max_concurrent;
    if gw.capacity_saturated.load(Ordering::Acquire) {
        // Same answer as INVITE and OPTIONS get: a load balancer steers new calls elsewhere.
        return (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: pacing saturated ({active} calls)\n"));
    }
    if active >= limit {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: at the call limit ({active}/{limit})\n"));
    }
    (StatusCode::OK, format!("ready: {active}/{limit} calls\n"))
}

async fn render_metrics(State(state): State<AdminState>) -> impl IntoResponse {
    match &state.metrics {
        Some(handle) => (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()),
        None => (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "text/plain")], "metrics disabled\n".to_string()),
    }
}

/// A JSON error body: `{"error": "...", "field": "..."}` (field only when one is at fault).
fn error(status: StatusCode, message: impl std::fmt::Display, field: Option<&str>) -> Response {
    let body = match field {
        Some(field) => json!({ "error": message.to_string(), "field": field }),
        None => json!({ "error": message.to_string() }),
    };
    (status, axum::Json(body)).into_response()
}

/// `Authorization: Bearer <admin.token>` on every /v1 route when a token is configured.
async fn require_token(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let expected = state.gateway.config.admin.token.expose();
    if expected.is_empty() {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(presented.as_bytes(), expected.as_bytes()) {
        return next.run(request).await;
    }
    let mut response = error(StatusCode::UNAUTHORIZED, "a valid `Authorization: Bearer <admin.token>` is needed", None);
    // RFC 6750 §3: tell the client which scheme is expected.
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Compares without an early exit on the first differing byte, so the time taken says nothing
/// about how much of a guessed token was right (only its length may show).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

async fn list_calls(State(state): State<AdminState>) -> Response {
    let calls = state.gateway.calls.list();
    axum::Json(json!({ "calls": calls })).into_response()
}

async fn show_call(State(state): State<AdminState>, Path(id): Path<String>) -> Response {
    match state.gateway.calls.get(&id) {
        Some(call) => axum::Json(call).into_response(),
        None => error(StatusCode::NOT_FOUND, "no such call", None),
    }
}

async fn hang_up_call(State(state): State<AdminState>, Path(id): Path<String>) -> Response {
    match state.gateway.calls.hang_up(&id) {
        HangUp::Requested => {
            tracing::info!(call = %id, "hang-up requested through the admin API");
            StatusCode::NO_CONTENT.into_response()
        }
        HangUp::AlreadyEnded => error(StatusCode::CONFLICT, "the call has already ended", None),
        HangUp::Unknown => error(StatusCode::NOT_FOUND, "no such call", None),
    }
}

/// `POST /v1/calls`: 201 `{"id"}` once the call's task runs; 400 naming the field at fault;
/// 404 unknown agent or trunk; 503 with Retry-After when the trunk or the gateway is full.
async fn place_call(State(state): State<AdminState>, headers: HeaderMap, body: Bytes) -> Response {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json")));
    if !is_json {
        return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/json", None);
    }
    if body.len() > MAX_REQUEST_BYTES {
        return error(StatusCode::PAYLOAD_TOO_LARGE, format!("at most {MAX_REQUEST_BYTES} bytes"), None);
    }
    let request = match parse_request(&body) {
        Ok(request) => request,
        Err((field, message)) => return error(StatusCode::BAD_REQUEST, message, field.as_deref()),
    };
    let gateway = &state.gateway;
    let plan = match outbound::plan(&gateway.config, &gateway.resolved, request) {
        Ok(plan) => plan,
        Err(e @ PlanError::BadField { field, .. }) => return error(StatusCode::BAD_REQUEST, e, Some(field)),
        Err(e @ PlanError::UnknownAgent(_)) => return error(StatusCode::NOT_FOUND, e, Some("agent")),
        Err(e @ PlanError::UnknownTrunk(_)) => return error(StatusCode::NOT_FOUND, e, Some("trunk")),
    };
    match outbound::start(gateway, plan) {
        Ok(id) => (StatusCode::CREATED, axum::Json(json!({ "id": id }))).into_response(),
        Err(e) => {
            let mut response = error(StatusCode::SERVICE_UNAVAILABLE, &e, None);
            if !matches!(e, StartError::NotReady) {
                let retry_after = HeaderValue::from(gateway.config.calls.retry_after_secs);
                response.headers_mut().insert(header::RETRY_AFTER, retry_after);
            }
            response
        }
    }
}

/// The body as a [`PlaceCallRequest`], or the field at fault (its JSON path) and what is wrong.
fn parse_request(body: &[u8]) -> Result<PlaceCallRequest, (Option<String>, String)> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let parsed: Result<PlaceCallRequest, _> = serde_path_to_error::deserialize(&mut deserializer);
    let request = parsed.map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        // A missing or unknown field is named in serde's message, not in the path.
        let field = if path == "." {
            ["to", "agent"]
                .iter()
                .find(|f| message.contains(&format!("missing field `{f}`")))
                .map(|f| f.to_string())
                .or_else(|| unknown_field(&message))
        } else {
            Some(path)
        };
        (field, message)
    })?;
    deserializer.end().map_err(|e| (None, e.to_string()))?;
    Ok(request)
}

/// `unknown field `x`, expected ...` → `x`.
fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest.split('`').next()?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison_is_exact() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn request_errors_name_the_field() {
        let field = |body: &str| parse_request(body.as_bytes()).unwrap_err().0;
        assert_eq!(field(r#"{"agent": "default"}"#).as_deref(), Some("to"));
        assert_eq!(field(r#"{"to": "123"}"#).as_deref(), Some("agent"));
        assert_eq!(field(r#"{"to": 5, "agent": "default"}"#).as_deref(), Some("to"));
        assert_eq!(field(r#"{"to": "1", "agent": "default", "colour": 1}"#).as_deref(), Some("colour"));
        assert_eq!(field(r#"{"to": "1", "agent": "default", "variables": {"a": 1}}"#).as_deref(), Some("variables.a"));
        assert_eq!(field("not json"), None);
        assert!(parse_request(br#"{"to": "1", "agent": "default", "variables": {"a": "b"}}"#).is_ok());
    }
}
