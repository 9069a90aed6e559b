//! WebSocket client for the Realtime API (reference §1.1): `wss://` in production, `ws://` for
//! the local simulator. The binary installs the rustls crypto provider before the first connect.

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

/// `conversation.item.retrieved` carries full audio (§1.1): allow large messages.
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct ConnectConfig {
    /// e.g. `wss://api.openai.com/v1/realtime`; `?model=` is appended unless already present.
    pub url: String,
    pub model: String,
    pub api_key: String,
}

/// Why the WebSocket session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL (or a header built from the config) is not usable.
    #[error("bad Realtime URL {url}: {reason}")]
    BadUrl { url: String, reason: String },
    /// The server answered the upgrade with an HTTP error (§1.3), e.g. 401 or 403.
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
    /// The socket failed.
    #[error("Realtime transport error: {0}")]
    Transport(#[from] tungstenite::Error),
}

/// The sending half of a session.
#[derive(Debug)]
pub struct RealtimeSender {
    sink: SplitSink<Socket, Message>,
}

/// The receiving half of a session.
#[derive(Debug)]
pub struct RealtimeReceiver {
    stream: SplitStream<Socket>,
    finished: bool,
}

/// Builds the request URL: appends `model=<model>` unless the query already names a model.
fn request_url(cfg: &ConnectConfig) -> String {
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

/// Opens a Realtime session: `Authorization: Bearer <key>`, no `OpenAI-Beta` header (GA).
pub async fn connect(cfg: &ConnectConfig) -> Result<(RealtimeSender, RealtimeReceiver), ConnectError> {
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
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES));
    let (socket, _response) =
        tokio_tungstenite::connect_async_with_config(request, Some(config), true).await.map_err(|e| match e {
            tungstenite::Error::Http(response) => {
                let status = response.status().as_u16();
                let body =
                    response.body().as_deref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
                ConnectError::Rejected { status, body }
            }
            tungstenite::Error::Url(e) => bad_url(e.to_string()),
            other => ConnectError::Transport(other),
        })?;
    let (sink, stream) = socket.split();
    Ok((RealtimeSender { sink }, RealtimeReceiver { stream, finished: false }))
}

impl RealtimeSender {
    /// Sends one client event as a text frame.
    pub async fn send(&mut self, event: &ClientEvent) -> Result<(), ClientError> {
        let text = serde_json::to_string(event).map_err(ClientError::Encode)?;
        self.sink.send(Message::text(text)).await?;
        Ok(())
    }

    /// Sends a normal Close (1000) and flushes; errors are irrelevant at this point.
    pub async fn close(&mut self) {
        let _ = self.sink.send(Message::Close(None)).await;
        let _ = self.sink.close().await;
    }
}

impl RealtimeReceiver {
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
                    if matches!(e, tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) {
                        self.finished = true;
                        return None;
                    }
                    self.finished = true;
                    return Some(Err(ClientError::Transport(e)));
                }
                Some(Ok(message)) => message,
            };
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

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
