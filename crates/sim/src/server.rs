//! The HTTP/WebSocket shell around [`SimSession`]: `GET /v1/realtime` (upgrade),
//! `GET /_sim/sessions` (the session logs as JSON, for tests in other processes) and
//! `POST /_sim/control/{what}` (runtime fault controls, docs/simulator.md).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::Router;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchboard_realtime::ServerEvent;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::SimConfig;
use crate::control::{Control, DropMode, SessionCommand, UpgradeRefusals};
use crate::core::{DEFAULT_MODEL, Outgoing, SimSession};

/// Which side sent a logged event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Client,
    Server,
}

/// One event of a session log. Base64 audio is replaced by `"audio_bytes": N`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedEvent {
    pub direction: Direction,
    /// Wall-clock time, unix microseconds.
    pub at_unix_us: u64,
    pub event: Value,
}

/// What happened in one session.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SessionLog {
    /// `sess_…` as sent in `session.created` (empty for rejected beta connections).
    pub session_id: String,
    pub model: String,
    pub started_unix_us: u64,
    pub events: Vec<LoggedEvent>,
    /// Events beyond [`SimConfig::log_limit`], counted but not kept.
    pub dropped_events: u64,
    /// Whether the WebSocket has ended.
    pub closed: bool,
    /// How the session ended when the simulator ended it: `session_expired`, `close 1011`,
    /// `reset` (no close frame), `close 1001` (shutdown or drop); None while open or when
    /// the client closed.
    #[serde(default)]
    pub ended_by: Option<String>,
}

impl SessionLog {
    /// The logged events of one direction and `type`.
    pub fn events_of(&self, direction: Direction, event_type: &str) -> Vec<&Value> {
        self.events
            .iter()
            .filter(|e| e.direction == direction && e.event.get("type").and_then(Value::as_str) == Some(event_type))
            .map(|e| &e.event)
            .collect()
    }
}

type SharedLog = Arc<Mutex<SessionLog>>;

struct AppState {
    cfg: SimConfig,
    logs: Mutex<Vec<SharedLog>>,
    sessions_started: AtomicU64,
    shutdown: watch::Receiver<bool>,
    /// Command channels of the open sessions, for the controls; bounded by the open sessions.
    open_sessions: Mutex<HashMap<u64, mpsc::Sender<SessionCommand>>>,
    /// `refuse_upgrades`: the next upgrades refused with a status.
    refusals: Mutex<UpgradeRefusals>,
}

/// Commands a session's loop has not taken yet; a control finding the queue full skips that
/// session (and does not count it in its answer).
const SESSION_COMMAND_QUEUE: usize = 16;

/// The simulator entry point.
pub struct Simulator;

/// A started simulator; drop or [`RunningSimulator::shutdown`] to stop it.
pub struct RunningSimulator {
    addr: SocketAddr,
    state: Arc<AppState>,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<std::io::Result<()>>,
}

impl Simulator {
    /// Binds `bind` (port 0 picks a free port) and serves until shut down.
    pub async fn start(cfg: SimConfig, bind: SocketAddr) -> std::io::Result<RunningSimulator> {
        let listener = tokio::net::TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let state = Arc::new(AppState {
            cfg,
            logs: Mutex::new(Vec::new()),
            sessions_started: AtomicU64::new(0),
            shutdown: shutdown_rx.clone(),
            open_sessions: Mutex::new(HashMap::new()),
            refusals: Mutex::new(UpgradeRefusals::default()),
        });
        let app = Router::new()
            .route("/v1/realtime", get(realtime))
            .route("/_sim/sessions", get(list_sessions))
            .route("/_sim/control/{what}", post(control))
            .with_state(state.clone());
        let mut stop = shutdown_rx;
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|stopped| *stopped).await;
                })
                .await
        });
        tracing::info!(%addr, "Realtime simulator listening");
        Ok(RunningSimulator { addr, state, shutdown: shutdown_tx, server })
    }
}

impl RunningSimulator {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://ADDR/v1/realtime`.
    pub fn url(&self) -> String {
        format!("ws://{}/v1/realtime", self.addr)
    }

    /// Snapshot of every session log so far, oldest first.
    pub fn sessions(&self) -> Vec<SessionLog> {
        snapshot(&self.state)
    }

    /// Applies a runtime control, as `POST /_sim/control/{what}` does; returns the answer body.
    pub fn control(&self, what: &str, body: &str) -> Result<Value, crate::control::ControlError> {
        let control = Control::parse(what, body)?;
        Ok(apply_control(&self.state, control))
    }

    /// Closes open sessions (1001) and stops serving.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.server.await;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn snapshot(state: &AppState) -> Vec<SessionLog> {
    let logs: Vec<SharedLog> = lock(&state.logs).clone();
    logs.iter().map(|log| lock(log).clone()).collect()
}

async fn list_sessions(State(state): State<Arc<AppState>>) -> Json<Vec<SessionLog>> {
    Json(snapshot(&state))
}

/// `POST /_sim/control/{what}`: 200 with a JSON answer, 400 / 404 with a JSON error.
async fn control(State(state): State<Arc<AppState>>, Path(what): Path<String>, body: String) -> Response {
    match Control::parse(&what, &body) {
        Ok(control) => (StatusCode::OK, Json(apply_control(&state, control))).into_response(),
        Err(e) => {
            let status = if e.is_unknown_control() { StatusCode::NOT_FOUND } else { StatusCode::BAD_REQUEST };
            (status, Json(json!({"error": {"message": e.to_string()}}))).into_response()
        }
    }
}

fn apply_control(state: &AppState, control: Control) -> Value {
    tracing::info!(?control, "simulator control");
    match control {
        Control::RefuseUpgrades { status, count } => {
            *lock(&state.refusals) = UpgradeRefusals { status, remaining: count };
            json!({"status": status, "count": count})
        }
        Control::Session(command) => {
            let senders: Vec<mpsc::Sender<SessionCommand>> = lock(&state.open_sessions).values().cloned().collect();
            let sessions = senders.iter().filter(|tx| tx.try_send(command.clone()).is_ok()).count();
            json!({"sessions": sessions})
        }
    }
}

fn unix_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)).unwrap_or(0)
}

/// 401 body shaped like the API's (§1.3).
fn unauthorized(message: &str) -> Response {
    let body = json!({"error": {
        "message": message, "type": "invalid_request_error", "param": null, "code": "invalid_api_key"
    }});
    (StatusCode::UNAUTHORIZED, Json(body)).into_response()
}

/// Fault mode: the upgrade answered with an HTTP error and an API-shaped body (§1.3).
fn rejected_upgrade(status: u16) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let (kind, code) = match status.as_u16() {
        401 => ("invalid_request_error", "invalid_api_key"),
        403 => ("invalid_request_error", "unsupported_country_region_territory"),
        429 => ("requests", "rate_limit_exceeded"),
        _ => ("server_error", "server_error"),
    };
    let body = json!({"error": {
        "message": format!("Simulated upgrade refusal with HTTP {}.", status.as_u16()),
        "type": kind, "param": null, "code": code
    }});
    (status, Json(body)).into_response()
}

async fn realtime(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    // §1.1: `Authorization: Bearer <key>` is required.
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty());
    let Some(key) = bearer else {
        return unauthorized(
            "You didn't provide an API key. You need to provide your API key in an \
             Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        );
    };
    if let Some(expected) = &state.cfg.api_key
        && key != expected
    {
        return unauthorized("Incorrect API key provided.");
    }
    if let Some(status) = state.cfg.faults.reject_upgrade {
        return rejected_upgrade(status);
    }
    if let Some(status) = lock(&state.refusals).take_one() {
        return rejected_upgrade(status);
    }
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    let beta = headers.contains_key("openai-beta");
    let model = query.get("model").cloned().unwrap_or_else(|| DEFAULT_MODEL.to_owned());
    // §1.1: `intent=transcription` opens a transcription-only session.
    let transcription = query.get("intent").is_some_and(|intent| intent == "transcription");
    upgrade
        .max_message_size(32 * 1024 * 1024)
        .max_frame_size(32 * 1024 * 1024)
        .on_upgrade(move |socket| run_session(state, socket, model, beta, transcription))
}

/// Replaces base64 audio by its decoded size so logs stay small.
fn redact_audio(event: &mut Value) {
    let Some(map) = event.as_object_mut() else {
        return;
    };
    let audio_key = match map.get("type").and_then(Value::as_str) {
        Some("input_audio_buffer.append") => "audio",
        Some("response.output_audio.delta") => "delta",
        _ => {
            if let Some(Value::Array(parts)) =
                map.get_mut("item").and_then(|i| i.as_object_mut()).and_then(|i| i.get_mut("content"))
            {
                for part in parts {
                    redact_field(part, "audio");
                }
            }
            return;
        }
    };
    redact_field(event, audio_key);
}

fn redact_field(value: &mut Value, key: &str) {
    let Some(map) = value.as_object_mut() else {
        return;
    };
    if let Some(Value::String(b64)) = map.remove(key) {
        let bytes = BASE64.decode(b64.as_bytes()).map(|b| b.len()).unwrap_or(0);
        map.insert("audio_bytes".to_owned(), json!(bytes));
    }
}

fn record(log: &SharedLog, limit: usize, direction: Direction, mut event: Value) {
    redact_audio(&mut event);
    let mut log = lock(log);
    if log.events.len() >= limit {
        log.dropped_events += 1;
        return;
    }
    log.events.push(LoggedEvent { direction, at_unix_us: unix_us(), event });
}

/// Sends what the core produced; returns false once the socket is closed.
async fn deliver<S>(sink: &mut S, log: &SharedLog, limit: usize, outgoing: Vec<Outgoing>) -> bool
where
    S: SinkExt<Message> + Unpin,
{
    for out in outgoing {
        match out {
            Outgoing::Event(event) => {
                let Ok(text) = event.to_json() else {
                    tracing::error!(event_type = event.event_type(), "unserializable event");
                    continue;
                };
                let logged = match &event {
                    ServerEvent::OutputAudioDelta(d) => json!({
                        "type": "response.output_audio.delta", "event_id": d.event_id,
                        "response_id": d.response_id, "item_id": d.item_id,
                        "output_index": d.output_index, "content_index": d.content_index,
                        "audio_bytes": d.delta.len(),
                    }),
                    other => serde_json::to_value(other).unwrap_or(Value::Null),
                };
                record(log, limit, Direction::Server, logged);
                if sink.send(Message::text(text)).await.is_err() {
                    return false;
                }
            }
            Outgoing::Raw(event) => {
                let text = event.to_string();
                record(log, limit, Direction::Server, event);
                if sink.send(Message::text(text)).await.is_err() {
                    return false;
                }
            }
            Outgoing::Close { code, reason } => {
                let frame = CloseFrame { code, reason: reason.into() };
                let _ = sink.send(Message::Close(Some(frame))).await;
                return false;
            }
        }
    }
    true
}

async fn run_session(state: Arc<AppState>, socket: WebSocket, model: String, beta: bool, transcription: bool) {
    let limit = state.cfg.log_limit;
    let log: SharedLog =
        Arc::new(Mutex::new(SessionLog { model: model.clone(), started_unix_us: unix_us(), ..SessionLog::default() }));
    // A log limit of 0 keeps no logs at all (the gateway's offline agent: calls for months).
    if limit > 0 {
        lock(&state.logs).push(log.clone());
    }
    let (mut sink, mut stream) = socket.split();

    if beta {
        deliver(&mut sink, &log, limit, SimSession::beta_rejection()).await;
        lock(&log).closed = true;
        return;
    }

    let faults = state.cfg.faults.clone();
    if faults.silent {
        // Fault mode: upgraded, then nothing. Reading keeps the socket open (the WebSocket layer
        // still answers pings); nothing is ever sent.
        tracing::info!("simulated session opened in silent fault mode");
        let mut shutdown = state.shutdown.clone();
        loop {
            tokio::select! {
                message = stream.next() => match message {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => continue,
                },
                _ = shutdown.wait_for(|stopped| *stopped) => break,
            }
        }
        lock(&log).closed = true;
        return;
    }
    let stall_at = faults.stall_after.map(|after| tokio::time::Instant::now() + after);
    let mut huge_at: Option<tokio::time::Instant> = None;
    let mut stalled = false;
    let mut send_huge = false;
    let mut delay = std::time::Duration::ZERO;

    let n = state.sessions_started.fetch_add(1, Ordering::Relaxed);
    let seed = state.cfg.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let unix_secs = i64::try_from(unix_us() / 1_000_000).unwrap_or(0);
    let (mut session, opening) = if transcription {
        SimSession::new_transcription(state.cfg.clone(), Instant::now(), unix_secs, seed)
    } else {
        SimSession::new(state.cfg.clone(), &model, Instant::now(), unix_secs, seed)
    };
    lock(&log).session_id = session.session().id.clone().unwrap_or_default();
    tracing::info!(model, session_id = %lock(&log).session_id, "simulated session opened");
    let mut shutdown = state.shutdown.clone();
    let (command_tx, mut commands) = mpsc::channel(SESSION_COMMAND_QUEUE);
    lock(&state.open_sessions).insert(n, command_tx);
    let mut open = deliver(&mut sink, &log, limit, opening).await;
    let mut reset = false;

    while open {
        let deadline = tokio::time::Instant::from_std(session.next_deadline());
        let outgoing = tokio::select! {
            _ = sleep_until_some(stall_at) => {
                stalled = true;
                break;
            }
            _ = sleep_until_some(huge_at) => {
                huge_at = None;
                send_huge = true;
                Vec::new()
            }
            message = stream.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    let now = Instant::now();
                    match serde_json::from_str::<Value>(text.as_str()) {
                        Ok(value) => {
                            record(&log, limit, Direction::Client, value.clone());
                            if value.get("type").and_then(Value::as_str) == Some("session.update") {
                                delay = faults.session_update_delay;
                            }
                            let outgoing = session.handle_value(now, value);
                            let updated = outgoing
                                .iter()
                                .any(|o| matches!(o, Outgoing::Event(ServerEvent::SessionUpdated(_))));
                            if updated && huge_at.is_none() && faults.huge_message_bytes.is_some() {
                                huge_at = Some(tokio::time::Instant::now() + std::time::Duration::from_secs(1));
                            }
                            outgoing
                        }
                        Err(_) => {
                            record(&log, limit, Direction::Client, json!({"unparsed": text.as_str()}));
                            session.handle_text(now, text.as_str())
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => continue,
            },
            _ = tokio::time::sleep_until(deadline) => session.poll(Instant::now()),
            command = commands.recv() => match command {
                Some(SessionCommand::Drop(DropMode::Reset)) | None => {
                    reset = true;
                    break;
                }
                Some(SessionCommand::Drop(DropMode::Close(code))) => {
                    vec![Outgoing::Close { code, reason: format!("simulated close {code}") }]
                }
                Some(SessionCommand::Expire { mid_response }) => session.expire(Instant::now(), mid_response),
                Some(SessionCommand::CallTool { script, now }) => session.call_tool(Instant::now(), script, now),
                Some(SessionCommand::McpCall { script, now }) => session.mcp_call(Instant::now(), script, now),
            },
            _ = shutdown.wait_for(|stopped| *stopped) => {
                vec![Outgoing::Close { code: 1001, reason: "simulator shutting down".to_owned() }]
            }
        };
        if let Some(how) = ended_by(&outgoing) {
            lock(&log).ended_by = Some(how);
        }
        if !delay.is_zero() {
            // Fault mode: a slow session.update answer (nothing else is read meanwhile).
            tokio::time::sleep(std::mem::take(&mut delay)).await;
        }
        if std::mem::take(&mut send_huge) {
            let size = faults.huge_message_bytes.unwrap_or(0);
            tracing::info!(size, "sending one huge message (fault mode)");
            if sink.send(Message::text(huge_message(size))).await.is_err() {
                break;
            }
        }
        open = deliver(&mut sink, &log, limit, outgoing).await;
    }
    lock(&state.open_sessions).remove(&n);
    if stalled {
        // Fault mode: frozen. No reads (so no pongs either), no writes, until shutdown.
        tracing::info!(session_id = %lock(&log).session_id, "simulated session stalled");
        let _ = shutdown.wait_for(|stopped| *stopped).await;
    }
    if reset {
        // The `drop` control's `reset`: the TCP connection ends without a close frame, so the
        // client sees 1006 (abnormal closure).
        lock(&log).ended_by = Some("reset".to_owned());
        drop(sink);
        drop(stream);
    } else {
        let _ = sink.close().await;
    }
    lock(&log).closed = true;
    tracing::info!(session_id = %lock(&log).session_id, "simulated session closed");
}

/// How a batch of outgoing events ends the session, if it does.
fn ended_by(outgoing: &[Outgoing]) -> Option<String> {
    let close = outgoing.iter().find_map(|o| match o {
        Outgoing::Close { code, .. } => Some(*code),
        Outgoing::Event(_) | Outgoing::Raw(_) => None,
    })?;
    let expired = outgoing.iter().any(
        |o| matches!(o, Outgoing::Event(ServerEvent::Error(e)) if e.error.code.as_deref() == Some("session_expired")),
    );
    Some(if expired { "session_expired".to_owned() } else { format!("close {close}") })
}

/// Sleeps until `at`, or forever when there is no such time.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A valid audio delta event padded to about `size` bytes (fault mode: one huge message).
fn huge_message(size: usize) -> String {
    let head = r#"{"type":"response.output_audio.delta","event_id":"event_huge","response_id":"resp_huge","item_id":"item_huge","output_index":0,"content_index":0,"delta":""#;
    let tail = r#""}"#;
    let padding = size.saturating_sub(head.len() + tail.len()) / 4 * 4;
    let mut text = String::with_capacity(head.len() + padding + tail.len());
    text.push_str(head);
    text.extend(std::iter::repeat_n('/', padding));
    text.push_str(tail);
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn audio_is_replaced_by_its_size() {
        let mut append = json!({"type":"input_audio_buffer.append","audio": BASE64.encode([0u8; 160])});
        redact_audio(&mut append);
        assert_eq!(append, json!({"type":"input_audio_buffer.append","audio_bytes":160}));
        let mut create = json!({"type":"conversation.item.create","item":{"type":"message","role":"user",
            "content":[{"type":"input_audio","audio": BASE64.encode([1u8; 30])}]}});
        redact_audio(&mut create);
        assert_eq!(create["item"]["content"][0]["audio_bytes"], json!(30));
        assert!(create["item"]["content"][0].get("audio").is_none());
    }

    #[test]
    fn log_limit_counts_dropped_events() {
        let log: SharedLog = Arc::new(Mutex::new(SessionLog::default()));
        for _ in 0..5 {
            record(&log, 3, Direction::Client, json!({"type":"x"}));
        }
        let log = lock(&log);
        assert_eq!(log.events.len(), 3);
        assert_eq!(log.dropped_events, 2);
    }
}
