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
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::task::JoinHandle;

use crate::app::GatewayState;
use crate::call::outbound::{self, PlaceCallRequest, PlanError, StartError};
use crate::calls::HangUp;
use crate::registration::Readiness;

/// `GET /v1/config`, `POST /v1/reload`, `POST /v1/calls/{id}/transfer`.
mod ops;

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
        .route("/v1/calls/{id}/transfer", post(ops::transfer_call))
        .route("/v1/config", get(ops::show_config))
        .route("/v1/reload", post(ops::reload))
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
    if gw.draining.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: draining ({active} calls in progress)\n"));
    }
    let limit = gw.config.calls.max_concurrent;
    if gw.capacity_saturated.load(Ordering::Acquire) {
        // Same answer as INVITE and OPTIONS get: a load balancer steers new calls elsewhere.
        return (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: pacing saturated ({active} calls)\n"));
    }
    if active >= limit {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: at the call limit ({active}/{limit})\n"));
    }
    match gw.registrations.readiness() {
        Readiness::Fine => (StatusCode::OK, format!("ready: {active}/{limit} calls\n")),
        Readiness::Degraded(failing) => {
            (StatusCode::OK, format!("ready: {active}/{limit} calls; degraded: {}\n", failing.join("; ")))
        }
        // No registration in force: the registrar routes no call here.
        Readiness::NoneRegistered(failing) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}\n", failing.join("; ")))
        }
    }
}

async fn render_metrics(State(state): State<AdminState>) -> impl IntoResponse {
    match &state.metrics {
        Some(handle) => {
            let mut text = handle.render();
            crate::telemetry::process::render(&mut text);
            (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
        }
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
    // The token of the current settings: a reload can rotate it.
    let settings = state.gateway.settings();
    let expected = settings.config.admin.token.expose();
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
    let settings = gateway.settings();
    let plan = match outbound::plan(&settings.config, &settings.resolved, request) {
        Ok(plan) => plan,
        Err(e @ PlanError::BadField { field, .. }) => return error(StatusCode::BAD_REQUEST, e, Some(field)),
        Err(e @ PlanError::UnknownAgent(_)) => return error(StatusCode::NOT_FOUND, e, Some("agent")),
        Err(e @ PlanError::UnknownTrunk(_)) => return error(StatusCode::NOT_FOUND, e, Some("trunk")),
    };
    match outbound::start(gateway, settings, plan) {
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

    /// One HTTP/1.1 request to the admin listener (`Connection: close`): the status and the body.
    pub(super) async fn http(
        admin: std::net::SocketAddr,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(admin).await.unwrap();
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let status: u16 = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
    }

    /// The calls API in-process, with a fake trunk on a loopback UDP socket that answers every
    /// INVITE with 486: the token is required, requests are checked, and the busy outcome of a
    /// call placed through the trunk is visible after it ended.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_calls_api_places_a_call_and_reports_its_outcome() {
        use std::io::Write as _;
        use std::time::Duration;

        let trunk = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let trunk_addr = trunk.local_addr().unwrap();
        let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        write!(
            file,
            "[sip]\nudp = \"127.0.0.1:0\"\ntcp = \"\"\n[media]\nbind = \"127.0.0.1\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"t0ken\"\n[trunks.fake]\naddress = \"{trunk_addr}\"\n"
        )
        .unwrap();
        let (config, resolved) = crate::config::load_with_env(file.path(), &[]).unwrap();
        let gateway = crate::app::start(config, resolved, None).await.unwrap();
        let admin = gateway.admin_addr().unwrap();

        let request = |method: &'static str, path: String, token: Option<&'static str>, body: &'static str| async move {
            http(admin, method, &path, token, body).await
        };

        let good = r#"{"to": "+1 555 0100", "agent": "default"}"#;
        assert_eq!(request("POST", "/v1/calls".into(), None, good).await.0, 401);
        assert_eq!(request("POST", "/v1/calls".into(), Some("t0ker"), good).await.0, 401);
        let (status, body) =
            request("POST", "/v1/calls".into(), Some("t0ken"), r#"{"to": "x y", "agent": "default"}"#).await;
        assert_eq!((status, body.contains(r#""field":"to""#)), (400, true), "{body}");
        let (status, body) =
            request("POST", "/v1/calls".into(), Some("t0ken"), r#"{"to": "1", "agent": "ghost"}"#).await;
        assert_eq!((status, body.contains(r#""field":"agent""#)), (404, true), "{body}");

        let (status, body) = request("POST", "/v1/calls".into(), Some("t0ken"), good).await;
        assert_eq!(status, 201, "{body}");
        let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"].as_str().unwrap().to_string();

        // The fake trunk: the INVITE carries our offer; answer 486 and take the ACK.
        let mut buf = vec![0u8; 65_535];
        let (len, from) =
            tokio::time::timeout(Duration::from_secs(10), trunk.recv_from(&mut buf)).await.unwrap().unwrap();
        let invite = String::from_utf8_lossy(&buf[..len]).to_string();
        assert!(invite.starts_with("INVITE sip:+15550100@"), "{invite}");
        assert!(invite.contains("m=audio "), "{invite}");
        let copied: String = invite
            .lines()
            .filter(|l| {
                ["via:", "from:", "to:", "call-id:", "cseq:"].iter().any(|h| l.to_ascii_lowercase().starts_with(h))
            })
            .map(|l| {
                if l.to_ascii_lowercase().starts_with("to:") { format!("{l};tag=busy\r\n") } else { format!("{l}\r\n") }
            })
            .collect();
        let busy = format!("SIP/2.0 486 Busy Here\r\n{copied}Content-Length: 0\r\n\r\n");
        trunk.send_to(busy.as_bytes(), from).await.unwrap();

        let mut outcome = serde_json::Value::Null;
        for _ in 0..100 {
            let (status, body) = request("GET", format!("/v1/calls/{id}"), Some("t0ken"), "").await;
            assert_eq!(status, 200, "{body}");
            outcome = serde_json::from_str(&body).unwrap();
            if outcome["state"] == "ended" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(outcome["outcome"]["outcome"], "busy", "{outcome}");
        assert_eq!(outcome["outcome"]["status"], 486, "{outcome}");
        assert_eq!(outcome["to"], "…0100", "{outcome}");
        assert_eq!(request("DELETE", format!("/v1/calls/{id}"), Some("t0ken"), "").await.0, 409);
        assert_eq!(request("DELETE", "/v1/calls/nope".into(), Some("t0ken"), "").await.0, 404);
        gateway.shutdown(Duration::from_secs(1)).await;
    }
}
