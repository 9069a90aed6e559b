//! WebSocket client for the Realtime API (reference §1.1): `wss://` in production, `ws://` for
//! the local simulator. The binary installs the rustls crypto provider before the first connect.

use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::events::{ClientEvent, EventError, ServerEvent};

/// Initial WebSocket read buffer.
const READ_BUFFER_BYTES: usize = 8 * 1024;

/// Default cap on one server message (and frame). The gateway never asks for
/// `conversation.item.retrieved` (the only event carrying whole items of audio, §1.1); audio
/// deltas are a few KiB. A larger message is refused before its payload is buffered, so one
/// hostile or broken server cannot make a call hold hundreds of MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// The longest a server error body is kept (it is logged; the server is not trusted).
const MAX_ERROR_BODY_CHARS: usize = 300;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct ConnectConfig {
    /// e.g. `wss://api.openai.com/v1/realtime`; `?model=` is appended unless already present.
    pub url: String,
    pub model: String,
    pub api_key: String,
}

/// Per-connection bounds, chosen by the gateway's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectLimits {
    /// Largest server message (and frame) accepted; a larger one fails the receiver with
    /// [`ClientError::MessageTooLarge`].
    pub max_message_bytes: usize,
    /// How long one send may wait for the socket to take its bytes (a peer that stopped
    /// reading); `None`: no bound.
    pub send_timeout: Option<Duration>,
}

impl Default for ConnectLimits {
    fn default() -> Self {
        Self { max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES, send_timeout: None }
    }
}

/// Why the WebSocket session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL (or a header built from the config) is not usable.
    #[error("bad Realtime URL {url}: {reason}")]
    BadUrl { url: String, reason: String },
    /// The server answered the upgrade with an HTTP error (§1.3), e.g. 401 or 403. `body` is
    /// cut to a few hundred characters.
    #[error("Realtime upgrade rejected with HTTP {status}: {body}")]
    Rejected { status: u16, body: String },
    /// TCP, TLS or WebSocket handshake failure.
    #[error("Realtime connect failed: {0}")]
    Transport(#[source] tungstenite::Error),
}

/// Failures on an open session.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server closed the session (e.g. 1001 after `session_expired`, 4000 for the beta
    /// header).
    #[error("Realtime session closed by server: {code} {reason}")]
    Closed { code: u16, reason: String },
    /// A text frame that is not a server event; count it and carry on.
    #[error(transparent)]
    Event(#[from] EventError),
    /// A client event that could not be serialized.
    #[error("could not encode client event: {0}")]
    Encode(#[source] serde_json::Error),
    /// The server sent a message larger than [`ConnectLimits::max_message_bytes`]; the
    /// connection is unusable after it.
    #[error("Realtime server message of {size} bytes exceeds the {max_size}-byte limit")]
    MessageTooLarge { size: usize, max_size: usize },
    /// A send did not complete within [`ConnectLimits::send_timeout`]: the server stopped
    /// reading.
    #[error("Realtime send blocked for more than {0:?}")]
    SendTimeout(Duration),
    /// The socket failed.
    #[error("Realtime transport error: {0}")]
    Transport(#[from] tungstenite::Error),
}

/// The sending half of a session.
#[derive(Debug)]
pub struct RealtimeSender {
    sink: SplitSink<Socket, Message>,
    send_timeout: Option<Duration>,
}

/// The receiving half of a session.
#[derive(Debug)]
pub struct RealtimeReceiver {
    stream: SplitStream<Socket>,
    finished: bool,
    /// When the last frame of any kind (text, binary, ping, pong, close) arrived: what the
    /// watchdog ([`Keepalive`]) feeds on.
    last_frame_at: Instant,
}

/// Builds the request URL: appends `model=<model>` unless the query already names a model, or
/// `model` is empty (a transcription session, `?intent=transcription`, names none: §1.1).
fn request_url(cfg: &ConnectConfig) -> String {
    if cfg.model.is_empty() {
        return cfg.url.clone();
    }
    let (base, query) = match cfg.url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (cfg.url.as_str(), None),
    };
    match query {
        Some(q) if q.split('&').any(|pair| pair.starts_with("model=")) => cfg.url.clone(),
        Some(q) if !q.is_empty() => format!("{base}?{q}&model={}", encode_query(&cfg.model)),
        _ => format!("{base}?model={}", encode_query(&cfg.model)),
    }
}

/// Percent-encodes a query value (model names are plain, but never trust config).
fn encode_query(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Opens a Realtime session with the default [`ConnectLimits`].
pub async fn connect(cfg: &ConnectConfig) -> Result<(RealtimeSender, RealtimeReceiver), ConnectError> {
    connect_with_limits(cfg, ConnectLimits::default()).await
}

/// Opens a Realtime session: `Authorization: Bearer <key>`, no `OpenAI-Beta` header (GA).
pub async fn connect_with_limits(
    cfg: &ConnectConfig,
    limits: ConnectLimits,
) -> Result<(RealtimeSender, RealtimeReceiver), ConnectError> {
    let url = request_url(cfg);
    let bad_url = |reason: String| ConnectError::BadUrl { url: url.clone(), reason };
    if !(url.starts_with("ws://") || url.starts_with("wss://")) {
        return Err(bad_url("scheme must be ws:// or wss://".to_owned()));
    }
    let mut request = url.as_str().into_client_request().map_err(|e| bad_url(e.to_string()))?;
    let bearer = HeaderValue::from_str(&format!("Bearer {}", cfg.api_key))
        .map_err(|_| bad_url("API key is not a valid header value".to_owned()))?;
    request.headers_mut().insert("Authorization", bearer);

    // tungstenite zero-fills its whole read buffer before every read: its 128 KiB default cost 16 %
    // of the gateway's CPU and half its memory per call under load (docs/benchmarks.md). Audio
    // deltas are a few KiB; the codec grows the buffer itself for a larger frame.
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(Some(limits.max_message_bytes))
        .max_frame_size(Some(limits.max_message_bytes));
    let (socket, _response) =
        tokio_tungstenite::connect_async_with_config(request, Some(config), true).await.map_err(|e| match e {
            tungstenite::Error::Http(response) => {
                let status = response.status().as_u16();
                let body = response
                    .body()
                    .as_deref()
                    .map(|b| String::from_utf8_lossy(b).chars().take(MAX_ERROR_BODY_CHARS).collect())
                    .unwrap_or_default();
                ConnectError::Rejected { status, body }
            }
            tungstenite::Error::Url(e) => bad_url(e.to_string()),
            other => ConnectError::Transport(other),
        })?;
    let (sink, stream) = socket.split();
    Ok((
        RealtimeSender { sink, send_timeout: limits.send_timeout },
        RealtimeReceiver { stream, finished: false, last_frame_at: Instant::now() },
    ))
}

impl RealtimeSender {
    /// Sends one client event as a text frame.
    pub async fn send(&mut self, event: &ClientEvent) -> Result<(), ClientError> {
        let text = serde_json::to_string(event).map_err(ClientError::Encode)?;
        self.send_message(Message::text(text)).await
    }

    /// Sends a WebSocket Ping (RFC 6455 §5.5.2); the server's Pong is traffic for the watchdog.
    pub async fn ping(&mut self) -> Result<(), ClientError> {
        self.send_message(Message::Ping(Vec::<u8>::new().into())).await
    }

    async fn send_message(&mut self, message: Message) -> Result<(), ClientError> {
        match self.send_timeout {
            Some(limit) => match tokio::time::timeout(limit, self.sink.send(message)).await {
                Ok(result) => Ok(result?),
                Err(_) => Err(ClientError::SendTimeout(limit)),
            },
            None => Ok(self.sink.send(message).await?),
        }
    }

    /// Sends a normal Close (1000) and flushes; errors are irrelevant at this point. Bounded by
    /// the send timeout: a server that stopped reading must not hold the call's task.
    pub async fn close(&mut self) {
        let closing = async {
            let _ = self.sink.send(Message::Close(None)).await;
            let _ = self.sink.close().await;
        };
        match self.send_timeout {
            Some(limit) => {
                let _ = tokio::time::timeout(limit, closing).await;
            }
            None => closing.await,
        }
    }
}

impl RealtimeReceiver {
    /// When the last frame of any kind arrived (the connect time before the first one).
    pub fn last_frame_at(&self) -> Instant {
        self.last_frame_at
    }

    /// The next server event. Cancel-safe (use it in `tokio::select!`). Pings are answered by
    /// the WebSocket layer. A Close frame yields `Err(ClientError::Closed)`, then `None`.
    pub async fn recv(&mut self) -> Option<Result<ServerEvent, ClientError>> {
        if self.finished {
            return None;
        }
        loop {
            let message = match self.stream.next().await {
                None => {
                    self.finished = true;
                    return None;
                }
                Some(Err(e)) => {
                    self.finished = true;
                    return match e {
                        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => None,
                        tungstenite::Error::Capacity(tungstenite::error::CapacityError::MessageTooLong {
                            size,
                            max_size,
                        }) => Some(Err(ClientError::MessageTooLarge { size, max_size })),
                        other => Some(Err(ClientError::Transport(other))),
                    };
                }
                Some(Ok(message)) => message,
            };
            self.last_frame_at = Instant::now();
            match message {
                Message::Text(text) => {
                    return Some(ServerEvent::from_json(text.as_str()).map_err(ClientError::from));
                }
                Message::Binary(bytes) => {
                    let parsed = std::str::from_utf8(&bytes)
                        .map_err(|_| EventError::MissingType)
                        .and_then(ServerEvent::from_json);
                    return Some(parsed.map_err(ClientError::from));
                }
                Message::Close(frame) => {
                    self.finished = true;
                    let (code, reason) = match frame {
                        Some(frame) => (u16::from(frame.code), frame.reason.as_str().to_owned()),
                        None => (1005, String::new()),
                    };
                    return Some(Err(ClientError::Closed { code, reason }));
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            }
        }
    }
}

/// What the connection's keepalive wants done now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepaliveAction {
    /// Nothing due yet.
    Wait,
    /// Send a WebSocket Ping now.
    SendPing,
    /// No frame at all for the watchdog period: count the connection as dropped.
    Dead { silent_for: Duration },
}

/// Pings and the no-traffic watchdog of one Realtime connection, sans-IO: the shell feeds the
/// time of the last received frame and sleeps until [`Keepalive::next_deadline`].
///
/// A healthy server answers every Ping with a Pong (RFC 6455 §5.5.2), so with pings every
/// `ping_interval` a connection that stays silent for `watchdog` (several intervals) is dead or
/// wedged, even while neither side has anything to say (a silent caller, no response).
#[derive(Debug, Clone)]
pub struct Keepalive {
    ping_interval: Duration,
    watchdog: Duration,
    last_traffic: Instant,
    next_ping: Instant,
}

impl Keepalive {
    /// Starts counting at `now` (the connection is known alive).
    pub fn new(now: Instant, ping_interval: Duration, watchdog: Duration) -> Self {
        Self { ping_interval, watchdog, last_traffic: now, next_ping: now + ping_interval }
    }

    /// A frame arrived at `at` (any kind). Older times are ignored.
    pub fn on_traffic(&mut self, at: Instant) {
        self.last_traffic = self.last_traffic.max(at);
    }

    /// When [`Keepalive::poll`] has something to do next.
    pub fn next_deadline(&self) -> Instant {
        self.next_ping.min(self.last_traffic + self.watchdog)
    }

    /// The watchdog first, then the ping schedule. A ping is sent at most once per call, even
    /// after a long stall of the caller's task (missed pings are not sent in a burst).
    pub fn poll(&mut self, now: Instant) -> KeepaliveAction {
        let silent_for = now.saturating_duration_since(self.last_traffic);
        if silent_for >= self.watchdog {
            return KeepaliveAction::Dead { silent_for };
        }
        if now >= self.next_ping {
            self.next_ping = now + self.ping_interval;
            return KeepaliveAction::SendPing;
        }
        KeepaliveAction::Wait
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn keepalive_pings_on_schedule_while_traffic_flows() {
        let t0 = Instant::now();
        let mut keepalive = Keepalive::new(t0, 5 * SECOND, 15 * SECOND);
        assert_eq!(keepalive.next_deadline(), t0 + 5 * SECOND);
        assert_eq!(keepalive.poll(t0 + 4 * SECOND), KeepaliveAction::Wait);
        assert_eq!(keepalive.poll(t0 + 5 * SECOND), KeepaliveAction::SendPing);
        assert_eq!(keepalive.poll(t0 + 5 * SECOND), KeepaliveAction::Wait, "one ping per interval");
        // The pong arrives; an hour of pings and pongs never trips the watchdog.
        for tick in 1..=720u32 {
            let now = t0 + 5 * SECOND * tick;
            keepalive.on_traffic(now + Duration::from_millis(20));
            assert!(!matches!(keepalive.poll(now + SECOND), KeepaliveAction::Dead { .. }));
        }
    }

    #[test]
    fn keepalive_declares_a_silent_connection_dead_after_the_watchdog_period() {
        let t0 = Instant::now();
        let mut keepalive = Keepalive::new(t0, 5 * SECOND, 15 * SECOND);
        keepalive.on_traffic(t0 + 2 * SECOND);
        assert_eq!(keepalive.poll(t0 + 5 * SECOND), KeepaliveAction::SendPing);
        assert_eq!(keepalive.poll(t0 + 10 * SECOND), KeepaliveAction::SendPing);
        assert_eq!(keepalive.poll(t0 + 15 * SECOND), KeepaliveAction::SendPing);
        // Last frame at 2 s: dead at 17 s, and the deadline says so.
        assert_eq!(keepalive.next_deadline(), t0 + 17 * SECOND);
        assert_eq!(keepalive.poll(t0 + 17 * SECOND), KeepaliveAction::Dead { silent_for: 15 * SECOND });
        // Stale traffic reports do not move the clock backwards.
        keepalive.on_traffic(t0);
        assert!(matches!(keepalive.poll(t0 + 17 * SECOND), KeepaliveAction::Dead { .. }));
    }

    #[test]
    fn keepalive_does_not_burst_missed_pings() {
        let t0 = Instant::now();
        let mut keepalive = Keepalive::new(t0, 5 * SECOND, 60 * SECOND);
        assert_eq!(keepalive.poll(t0 + 30 * SECOND), KeepaliveAction::SendPing);
        assert_eq!(keepalive.poll(t0 + 30 * SECOND), KeepaliveAction::Wait);
        assert_eq!(keepalive.next_deadline(), t0 + 35 * SECOND);
    }

    fn cfg(url: &str) -> ConnectConfig {
        ConnectConfig { url: url.to_owned(), model: "gpt-realtime-2.1".to_owned(), api_key: "sk-test".to_owned() }
    }

    #[test]
    fn model_is_appended_to_the_url() {
        assert_eq!(
            request_url(&cfg("wss://api.openai.com/v1/realtime")),
            "wss://api.openai.com/v1/realtime?model=gpt-realtime-2.1"
        );
        assert_eq!(
            request_url(&cfg("ws://127.0.0.1:1/v1/realtime?x=1")),
            "ws://127.0.0.1:1/v1/realtime?x=1&model=gpt-realtime-2.1"
        );
        assert_eq!(request_url(&cfg("ws://h/v1/realtime?model=other")), "ws://h/v1/realtime?model=other");
    }

    #[test]
    fn model_is_percent_encoded() {
        let mut c = cfg("ws://h/v1/realtime");
        c.model = "a b&c".to_owned();
        assert_eq!(request_url(&c), "ws://h/v1/realtime?model=a%20b%26c");
    }

    #[tokio::test]
    async fn bad_urls_are_reported_as_such() {
        let err = connect(&cfg("http://example.invalid/v1/realtime")).await.unwrap_err();
        assert!(matches!(err, ConnectError::BadUrl { .. }), "{err}");
        let mut c = cfg("ws://127.0.0.1:1/v1/realtime");
        c.api_key = "bad\nkey".to_owned();
        assert!(matches!(connect(&c).await.unwrap_err(), ConnectError::BadUrl { .. }));
    }

    #[tokio::test]
    async fn refused_connection_is_a_transport_error() {
        // Port 1 on loopback is closed on any test machine.
        let err = connect(&cfg("ws://127.0.0.1:1/v1/realtime")).await.unwrap_err();
        assert!(matches!(err, ConnectError::Transport(_)), "{err}");
    }
}
