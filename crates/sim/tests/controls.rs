#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The runtime controls (`POST /_sim/control/{what}`, docs/simulator.md) over real sockets:
//! what a client sees when a test drops, expires or refuses its sessions.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use switchboard_realtime::{ConnectConfig, ConnectError, connect};
use switchboard_sim::{RunningSimulator, SimConfig, Simulator};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

const WAIT: Duration = Duration::from_secs(10);

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn start() -> RunningSimulator {
    Simulator::start(SimConfig::default(), "127.0.0.1:0".parse().unwrap()).await.unwrap()
}

/// `POST /_sim/control/{what}`; returns (status, JSON body).
async fn control(sim: &RunningSimulator, what: &str, body: &str) -> (u16, Value) {
    let mut stream = tokio::net::TcpStream::connect(sim.local_addr()).await.unwrap();
    let request = format!(
        "POST /_sim/control/{what} HTTP/1.1\r\nHost: sim\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut response)).await.unwrap().unwrap();
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// A raw WebSocket past `session.created` and `conversation.created`.
async fn open(sim: &RunningSimulator) -> Ws {
    let mut request = format!("{}?model=m", sim.url()).into_client_request().unwrap();
    request.headers_mut().insert("authorization", "Bearer k".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    for expected in ["session.created", "conversation.created"] {
        let Some(Ok(Message::Text(text))) = next(&mut ws).await else { panic!("no {expected}") };
        assert!(text.as_str().contains(expected), "{text}");
    }
    ws
}

async fn next(ws: &mut Ws) -> Option<Result<Message, tungstenite::Error>> {
    tokio::time::timeout(WAIT, ws.next()).await.expect("timed out waiting for the socket")
}

#[tokio::test]
async fn drop_reset_ends_the_connection_without_a_close_frame() {
    let sim = start().await;
    let mut ws = open(&sim).await;
    let (status, answer) = control(&sim, "drop", r#"{"mode":"reset"}"#).await;
    assert_eq!((status, answer["sessions"].as_u64()), (200, Some(1)));
    match next(&mut ws).await {
        // 1006: the stream ends without the closing handshake.
        None | Some(Err(_)) => {}
        other => panic!("expected the connection to end without a close frame, got {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let logs = sim.sessions();
    assert!(logs[0].closed);
    assert_eq!(logs[0].ended_by.as_deref(), Some("reset"));
    // Closed sessions are not counted by later controls.
    let (_, answer) = control(&sim, "drop", r#"{"mode":"reset"}"#).await;
    assert_eq!(answer["sessions"].as_u64(), Some(0));
    sim.shutdown().await;
}

#[tokio::test]
async fn drop_close_sends_the_close_code_to_every_session() {
    let sim = start().await;
    let mut first = open(&sim).await;
    let mut second = open(&sim).await;
    let (status, answer) = control(&sim, "drop", r#"{"mode":"close_1011"}"#).await;
    assert_eq!((status, answer["sessions"].as_u64()), (200, Some(2)));
    for ws in [&mut first, &mut second] {
        let Some(Ok(Message::Close(Some(frame)))) = next(ws).await else { panic!("expected a close frame") };
        assert_eq!(u16::from(frame.code), 1011);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(sim.sessions().iter().all(|log| log.ended_by.as_deref() == Some("close 1011")));
    sim.shutdown().await;
}

#[tokio::test]
async fn expire_control_sends_session_expired_then_close_1001() {
    let sim = start().await;
    let mut ws = open(&sim).await;
    let (status, answer) = control(&sim, "expire", r#"{"mid_response":false}"#).await;
    assert_eq!((status, answer["sessions"].as_u64()), (200, Some(1)));
    let Some(Ok(Message::Text(text))) = next(&mut ws).await else { panic!("expected the error event") };
    let error: Value = serde_json::from_str(text.as_str()).unwrap();
    assert_eq!(error["error"]["code"], "session_expired");
    assert_eq!(error["error"]["type"], "invalid_request_error");
    let Some(Ok(Message::Close(Some(frame)))) = next(&mut ws).await else { panic!("expected a close frame") };
    assert_eq!(u16::from(frame.code), 1001);
    sim.shutdown().await;
}

#[tokio::test]
async fn refuse_upgrades_refuses_exactly_count_upgrades() {
    let sim = start().await;
    let (status, _) = control(&sim, "refuse_upgrades", r#"{"status":429,"count":2}"#).await;
    assert_eq!(status, 200);
    let cfg = ConnectConfig { url: sim.url(), model: "m".into(), api_key: "sk".into() };
    for _ in 0..2 {
        match connect(&cfg).await {
            Err(ConnectError::Rejected { status, body }) => {
                assert_eq!(status, 429);
                let body: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(body["error"]["code"], "rate_limit_exceeded");
            }
            other => panic!("expected HTTP 429, got {:?}", other.map(|_| ())),
        }
    }
    assert!(connect(&cfg).await.is_ok(), "the third upgrade is accepted");
    // `count: 0` cancels a refusal still pending.
    control(&sim, "refuse_upgrades", r#"{"status":401,"count":5}"#).await;
    control(&sim, "refuse_upgrades", r#"{"status":401,"count":0}"#).await;
    assert!(connect(&cfg).await.is_ok(), "cancelled");
    sim.shutdown().await;
}

#[tokio::test]
async fn bad_controls_are_400_and_unknown_ones_404() {
    let sim = start().await;
    let (status, body) = control(&sim, "explode", "{}").await;
    assert_eq!(status, 404);
    assert!(body["error"]["message"].as_str().unwrap().contains("unknown control"));
    let (status, body) = control(&sim, "drop", r#"{"mode":"gently"}"#).await;
    assert_eq!(status, 400);
    assert!(body["error"]["message"].as_str().unwrap().contains("gently"));
    let (status, _) = control(&sim, "refuse_upgrades", r#"{"status":302,"count":1}"#).await;
    assert_eq!(status, 400);
    sim.shutdown().await;
}
