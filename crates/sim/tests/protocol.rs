#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The `switchboard-realtime` client against a started simulator, over real sockets.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard_media::g711;
use switchboard_realtime::events::*;
use switchboard_realtime::{ClientError, ConnectConfig, ConnectError, RealtimeReceiver, RealtimeSender, connect};
use switchboard_sim::{Direction, RunningSimulator, SimConfig, Simulator};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

const WAIT: Duration = Duration::from_secs(10);

async fn start(cfg: SimConfig) -> RunningSimulator {
    Simulator::start(cfg, "127.0.0.1:0".parse().unwrap()).await.unwrap()
}

async fn open(sim: &RunningSimulator) -> (RealtimeSender, RealtimeReceiver) {
    let (tx, mut rx) =
        connect(&ConnectConfig { url: sim.url(), model: "gpt-realtime-2.1".into(), api_key: "sk-test".into() })
            .await
            .unwrap();
    assert!(matches!(next(&mut rx).await, ServerEvent::SessionCreated(_)));
    assert!(matches!(next(&mut rx).await, ServerEvent::ConversationCreated(_)));
    (tx, rx)
}

async fn next(rx: &mut RealtimeReceiver) -> ServerEvent {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("timed out waiting for a server event")
        .expect("session ended")
        .expect("bad server event")
}

/// Reads events until `pred` matches, returning everything read including the match.
async fn until(rx: &mut RealtimeReceiver, pred: impl Fn(&ServerEvent) -> bool) -> Vec<ServerEvent> {
    let mut seen = Vec::new();
    loop {
        let event = next(rx).await;
        let done = pred(&event);
        seen.push(event);
        if done {
            return seen;
        }
    }
}

fn error_code(event: &ServerEvent) -> Option<&str> {
    match event {
        ServerEvent::Error(e) => e.error.code.as_deref(),
        _ => None,
    }
}

async fn configure_pcmu(tx: &mut RealtimeSender, rx: &mut RealtimeReceiver) {
    let mut session = SessionConfig::realtime();
    session.audio = Some(AudioConfig {
        input: Some(AudioInput { format: Some(AudioFormat::Pcmu), ..AudioInput::default() }),
        output: Some(AudioOutput { format: Some(AudioFormat::Pcmu), ..AudioOutput::default() }),
    });
    tx.send(&ClientEvent::SessionUpdate { event_id: Some("cfg".into()), session: Box::new(session) }).await.unwrap();
    let ServerEvent::SessionUpdated(updated) = next(rx).await else { panic!("expected session.updated") };
    let audio = updated.session.audio.unwrap();
    assert_eq!(audio.input.unwrap().format, Some(AudioFormat::Pcmu));
    assert_eq!(audio.output.unwrap().format, Some(AudioFormat::Pcmu));
}

fn tone_samples(ms: u32) -> Vec<i16> {
    let count = (8 * ms) as usize;
    (0..count)
        .map(|n| {
            let t = n as f64 / 8000.0;
            (16_000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16
        })
        .collect()
}

#[tokio::test]
async fn echo_turn_over_pcmu() {
    let sim = start(SimConfig::default()).await;
    let (mut tx, mut rx) = open(&sim).await;
    configure_pcmu(&mut tx, &mut rx).await;

    let mut samples = vec![0i16; 8000];
    samples.extend(tone_samples(1000));
    samples.extend(vec![0i16; 8000]);
    let sent: Vec<u8> = samples.iter().map(|&s| g711::ulaw_encode(s)).collect();
    for frame in sent.chunks(160) {
        tx.send(&ClientEvent::append(frame.to_vec())).await.unwrap();
    }

    let events = until(&mut rx, |e| matches!(e, ServerEvent::ResponseDone(_))).await;
    let started = events
        .iter()
        .find_map(|e| match e {
            ServerEvent::SpeechStarted(s) => Some(s.clone()),
            _ => None,
        })
        .expect("speech_started");
    let stopped = events
        .iter()
        .find_map(|e| match e {
            ServerEvent::SpeechStopped(s) => Some(s.clone()),
            _ => None,
        })
        .expect("speech_stopped");
    assert_eq!(started.audio_start_ms, 700);
    assert_eq!(stopped.audio_end_ms, 2000);
    assert!(
        events.iter().any(|e| matches!(e, ServerEvent::InputAudioBufferCommitted(c) if c.item_id == started.item_id))
    );
    let echoed: Vec<u8> = events
        .iter()
        .filter_map(|e| match e {
            ServerEvent::OutputAudioDelta(d) => Some(d.delta.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    let deltas = events.iter().filter(|e| matches!(e, ServerEvent::OutputAudioDelta(_))).count();
    assert!(deltas > 1, "audio must arrive in several chunks");
    // The echo is the utterance (prefix padding included) as the caller sent it.
    let decode = |b: &[u8]| b.iter().map(|&c| g711::ulaw_decode(c)).collect::<Vec<_>>();
    assert_eq!(decode(&echoed), decode(&sent[700 * 8..2000 * 8]));
    let Some(ServerEvent::ResponseDone(done)) = events.last() else { unreachable!() };
    assert_eq!(done.response.status, ResponseStatus::Completed);

    // The log has both directions, with audio replaced by sizes.
    let logs = sim.sessions();
    assert_eq!(logs.len(), 1);
    let log = &logs[0];
    assert_eq!(log.model, "gpt-realtime-2.1");
    let appends = log.events_of(Direction::Client, "input_audio_buffer.append");
    assert_eq!(appends.len(), 150);
    assert_eq!(appends[0]["audio_bytes"], json!(160));
    assert!(appends[0].get("audio").is_none());
    let logged_deltas = log.events_of(Direction::Server, "response.output_audio.delta");
    assert_eq!(logged_deltas.len(), deltas);
    assert!(logged_deltas.iter().all(|d| d.get("delta").is_none()));
    assert!(log.events.windows(2).all(|w| w[0].at_unix_us <= w[1].at_unix_us));
    sim.shutdown().await;
}

#[tokio::test]
async fn truncate_beyond_item_length_is_an_error() {
    let sim = start(SimConfig::default()).await;
    let (mut tx, mut rx) = open(&sim).await;
    tx.send(&ClientEvent::ResponseCreate { event_id: None, response: None }).await.unwrap();
    let events = until(&mut rx, |e| matches!(e, ServerEvent::ResponseDone(_))).await;
    let item_id = events
        .iter()
        .find_map(|e| match e {
            ServerEvent::OutputItemAdded(a) => a.item.id().map(str::to_owned),
            _ => None,
        })
        .unwrap();
    // The default greeting is 1000 ms.
    tx.send(&ClientEvent::ConversationItemTruncate {
        event_id: Some("trunc_1".into()),
        item_id: item_id.clone(),
        content_index: 0,
        audio_end_ms: 5000,
    })
    .await
    .unwrap();
    let ServerEvent::Error(error) = next(&mut rx).await else { panic!("expected error") };
    assert_eq!(error.error.event_id.as_deref(), Some("trunc_1"));
    assert_eq!(error.error.param.as_deref(), Some("audio_end_ms"));

    tx.send(&ClientEvent::ConversationItemTruncate {
        event_id: None,
        item_id: item_id.clone(),
        content_index: 0,
        audio_end_ms: 640,
    })
    .await
    .unwrap();
    let ServerEvent::ConversationItemTruncated(t) = next(&mut rx).await else {
        panic!("expected conversation.item.truncated")
    };
    assert_eq!((t.item_id.as_str(), t.audio_end_ms), (item_id.as_str(), 640));
    sim.shutdown().await;
}

#[tokio::test]
async fn cancel_when_idle_is_an_error() {
    let sim = start(SimConfig::default()).await;
    let (mut tx, mut rx) = open(&sim).await;
    tx.send(&ClientEvent::ResponseCancel { event_id: Some("c1".into()), response_id: None }).await.unwrap();
    let event = next(&mut rx).await;
    assert_eq!(error_code(&event), Some("response_cancel_not_active"));
    sim.shutdown().await;
}

#[tokio::test]
async fn barge_in_cancels_a_monologue() {
    let sim =
        start(SimConfig { behaviour: switchboard_sim::Behaviour::Monologue { ms: 20_000 }, ..SimConfig::default() })
            .await;
    let (mut tx, mut rx) = open(&sim).await;
    configure_pcmu(&mut tx, &mut rx).await;
    let mut turn = vec![0i16; 4000];
    turn.extend(tone_samples(600));
    turn.extend(vec![0i16; 4000]);
    for frame in turn.chunks(160) {
        let bytes: Vec<u8> = frame.iter().map(|&s| g711::ulaw_encode(s)).collect();
        tx.send(&ClientEvent::append(bytes.to_vec())).await.unwrap();
    }
    until(&mut rx, |e| matches!(e, ServerEvent::OutputAudioDelta(_))).await;
    for frame in tone_samples(200).chunks(160) {
        let bytes: Vec<u8> = frame.iter().map(|&s| g711::ulaw_encode(s)).collect();
        tx.send(&ClientEvent::append(bytes.to_vec())).await.unwrap();
    }
    let events = until(&mut rx, |e| matches!(e, ServerEvent::ResponseDone(_))).await;
    assert!(events.iter().any(|e| matches!(e, ServerEvent::SpeechStarted(_))));
    let Some(ServerEvent::ResponseDone(done)) = events.last() else { unreachable!() };
    assert_eq!(done.response.status, ResponseStatus::Cancelled);
    assert_eq!(done.response.status_details.as_ref().unwrap().reason.as_deref(), Some("turn_detected"));
    sim.shutdown().await;
}

/// A raw socket, for what the typed client deliberately cannot send.
async fn raw_connect(
    sim: &RunningSimulator,
    headers: &[(&str, &str)],
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    tungstenite::Error,
> {
    let mut request = format!("{}?model=m", sim.url()).into_client_request().unwrap();
    for (name, value) in headers {
        let name = tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap();
        request.headers_mut().insert(name, value.parse().unwrap());
    }
    tokio_tungstenite::connect_async(request).await.map(|(ws, _)| ws)
}

#[tokio::test]
async fn unknown_event_type_is_an_error_and_the_session_stays_open() {
    let sim = start(SimConfig::default()).await;
    let mut ws = raw_connect(&sim, &[("authorization", "Bearer k")]).await.unwrap();
    let mut texts = Vec::new();
    ws.send(Message::text(json!({"type":"response.explode","event_id":"evt_x"}).to_string())).await.unwrap();
    while texts.len() < 3 {
        let Some(Ok(Message::Text(text))) = ws.next().await else { panic!("socket ended") };
        texts.push(serde_json::from_str::<Value>(text.as_str()).unwrap());
    }
    assert_eq!(texts[0]["type"], "session.created");
    assert_eq!(texts[2]["type"], "error");
    assert_eq!(texts[2]["error"]["code"], "invalid_event");
    assert_eq!(texts[2]["error"]["type"], "invalid_request_error");
    assert_eq!(texts[2]["error"]["event_id"], "evt_x");
    // Still serving.
    ws.send(Message::text(r#"{"type":"input_audio_buffer.clear"}"#)).await.unwrap();
    let Some(Ok(Message::Text(text))) = ws.next().await else { panic!("socket ended") };
    assert!(text.as_str().contains("input_audio_buffer.cleared"));
    sim.shutdown().await;
}

#[tokio::test]
async fn beta_header_gets_error_then_close_4000() {
    let sim = start(SimConfig::default()).await;
    let mut ws = raw_connect(&sim, &[("authorization", "Bearer k"), ("openai-beta", "realtime=v1")]).await.unwrap();
    let Some(Ok(Message::Text(text))) = ws.next().await else { panic!("expected an error event") };
    let error: Value = serde_json::from_str(text.as_str()).unwrap();
    assert_eq!(error["error"]["code"], "beta_api_shape_disabled");
    let Some(Ok(Message::Close(Some(frame)))) = ws.next().await else { panic!("expected a close frame") };
    assert_eq!(u16::from(frame.code), 4000);
    sim.shutdown().await;
}

#[tokio::test]
async fn missing_or_wrong_bearer_is_401() {
    let sim = start(SimConfig { api_key: Some("sk-right".into()), ..SimConfig::default() }).await;
    match raw_connect(&sim, &[]).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 401);
            let body: Value = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["error"]["type"], "invalid_request_error");
        }
        other => panic!("expected HTTP 401, got {other:?}"),
    }
    let err =
        connect(&ConnectConfig { url: sim.url(), model: "m".into(), api_key: "sk-wrong".into() }).await.unwrap_err();
    match err {
        ConnectError::Rejected { status, body } => {
            assert_eq!(status, 401);
            assert!(body.contains("invalid_api_key"), "{body}");
        }
        other => panic!("expected a rejected upgrade, got {other}"),
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn session_expiry_sends_error_then_close_1001() {
    let sim = start(SimConfig { max_session: Duration::from_millis(300), ..SimConfig::default() }).await;
    let (_tx, mut rx) = open(&sim).await;
    let event = next(&mut rx).await;
    assert_eq!(error_code(&event), Some("session_expired"));
    match tokio::time::timeout(WAIT, rx.recv()).await.unwrap() {
        Some(Err(ClientError::Closed { code, reason })) => {
            assert_eq!(code, 1001);
            assert!(reason.contains("maximum duration"), "{reason}");
        }
        other => panic!("expected close 1001, got {other:?}"),
    }
    assert!(rx.recv().await.is_none());
    sim.shutdown().await;
}

#[tokio::test]
async fn sessions_endpoint_serves_the_logs() {
    let sim = start(SimConfig::default()).await;
    let (_tx, _rx) = open(&sim).await;
    let mut stream = tokio::net::TcpStream::connect(sim.local_addr()).await.unwrap();
    stream.write_all(b"GET /_sim/sessions HTTP/1.1\r\nHost: sim\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let body = response.split("\r\n\r\n").nth(1).unwrap();
    let logs: Vec<switchboard_sim::SessionLog> = serde_json::from_str(body).unwrap();
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0].model, "gpt-realtime-2.1");
    assert!(logs[0].session_id.starts_with("sess_"));
    assert_eq!(logs[0].events_of(Direction::Server, "session.created").len(), 1);
    sim.shutdown().await;
}

/// The gateway's barge-in bookkeeping (`Conversation`) and the simulator agree: the truncate
/// computed from played audio is accepted, and late deltas of the cancelled response are dropped.
#[tokio::test]
async fn conversation_truncate_after_barge_in_is_accepted() {
    use switchboard_realtime::Conversation;

    let sim =
        start(SimConfig { behaviour: switchboard_sim::Behaviour::Monologue { ms: 20_000 }, ..SimConfig::default() })
            .await;
    let (mut tx, mut rx) = open(&sim).await;
    configure_pcmu(&mut tx, &mut rx).await;
    let send_audio = |samples: Vec<i16>| {
        samples
            .chunks(160)
            .map(|f| ClientEvent::append(f.iter().map(|&s| g711::ulaw_encode(s)).collect::<Vec<u8>>()))
            .collect::<Vec<_>>()
    };
    let mut turn = vec![0i16; 4000];
    turn.extend(tone_samples(600));
    turn.extend(vec![0i16; 4000]);
    for event in send_audio(turn) {
        tx.send(&event).await.unwrap();
    }

    let mut conv = Conversation::new();
    let mut received_ms = 0.0;
    let mut tag = None;
    // Take about 2 s of the answer, "playing" all but the last 500 ms of it.
    while received_ms < 2000.0 {
        match next(&mut rx).await {
            ServerEvent::ResponseCreated(r) => conv.on_response_created(&r.response.id),
            ServerEvent::OutputAudioDelta(d) => {
                let ms = AudioFormat::Pcmu.bytes_to_ms(d.delta.len());
                tag = conv.on_audio_delta(&d.response_id, &d.item_id, ms);
                received_ms += ms;
            }
            _ => {}
        }
    }
    let tag = tag.unwrap();
    let played = ((received_ms - 500.0) / 20.0).floor() as u32;
    for _ in 0..played {
        conv.on_audio_played(tag, 20.0);
    }

    for event in send_audio(tone_samples(200)) {
        tx.send(&event).await.unwrap();
    }
    let mut truncate = None;
    loop {
        match next(&mut rx).await {
            ServerEvent::SpeechStarted(_) => truncate = conv.on_speech_started().into_iter().next(),
            ServerEvent::OutputAudioDelta(d) => {
                let ms = AudioFormat::Pcmu.bytes_to_ms(d.delta.len());
                assert!(truncate.is_none() || conv.on_audio_delta(&d.response_id, &d.item_id, ms).is_none());
            }
            ServerEvent::ResponseDone(done) => {
                conv.on_response_done(&done.response.id);
                break;
            }
            _ => {}
        }
    }
    assert!(!conv.has_active_response());
    let truncate = truncate.expect("audio was left unplayed");
    assert_eq!(truncate.audio_end_ms, played * 20);
    tx.send(&truncate.to_event()).await.unwrap();
    let event = until(&mut rx, |e| matches!(e, ServerEvent::ConversationItemTruncated(_) | ServerEvent::Error(_)))
        .await
        .pop()
        .unwrap();
    let ServerEvent::ConversationItemTruncated(t) = event else { panic!("truncate rejected: {event:?}") };
    assert_eq!(t.item_id, truncate.item_id);
    assert_eq!(t.audio_end_ms, played * 20);
    sim.shutdown().await;
}

fn sim_config_with(faults: switchboard_sim::Faults) -> SimConfig {
    SimConfig { faults, ..SimConfig::default() }
}

fn connect_config(sim: &RunningSimulator) -> ConnectConfig {
    ConnectConfig { url: sim.url(), model: "gpt-realtime-2.1".into(), api_key: "sk-test".into() }
}

#[tokio::test]
async fn fault_reject_upgrade_is_a_rejected_connect_with_its_status() {
    for status in [401u16, 429, 503] {
        let faults = switchboard_sim::Faults { reject_upgrade: Some(status), ..Default::default() };
        let sim = start(sim_config_with(faults)).await;
        match connect(&connect_config(&sim)).await {
            Err(ConnectError::Rejected { status: got, body }) => {
                assert_eq!(got, status);
                assert!(body.contains("error"), "{body}");
            }
            other => panic!("expected HTTP {status}, got {:?}", other.map(|_| ())),
        }
        sim.shutdown().await;
    }
}

#[tokio::test]
async fn a_message_over_the_limit_fails_the_receiver_without_buffering_it() {
    let faults = switchboard_sim::Faults { huge_message_bytes: Some(5_000_000), ..Default::default() };
    let sim = start(sim_config_with(faults)).await;
    let limits = switchboard_realtime::ConnectLimits { max_message_bytes: 1024 * 1024, send_timeout: None };
    let (mut tx, mut rx) = switchboard_realtime::connect_with_limits(&connect_config(&sim), limits).await.unwrap();
    tx.send(&ClientEvent::SessionUpdate { event_id: None, session: Box::new(SessionConfig::realtime()) })
        .await
        .unwrap();
    let outcome = tokio::time::timeout(WAIT, async {
        loop {
            match rx.recv().await {
                Some(Ok(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the huge message never came");
    match outcome {
        Some(Err(ClientError::MessageTooLarge { size, max_size })) => {
            assert!(size > max_size, "{size} <= {max_size}");
            assert_eq!(max_size, 1024 * 1024);
        }
        other => panic!("expected MessageTooLarge, got {other:?}"),
    }
    assert!(rx.recv().await.is_none(), "the connection is finished after an oversized message");
    sim.shutdown().await;
}

#[tokio::test]
async fn a_stalled_server_stops_answering_pings_and_the_last_frame_time_stops_moving() {
    let faults = switchboard_sim::Faults { stall_after: Some(Duration::from_millis(1500)), ..Default::default() };
    let sim = start(sim_config_with(faults)).await;
    let (mut tx, mut rx) = connect(&connect_config(&sim)).await.unwrap();
    // Drain the opening events (session.created, conversation.created).
    while tokio::time::timeout(Duration::from_millis(100), rx.recv()).await.is_ok() {}
    // Before the stall: a ping is answered, and the pong alone moves the last-frame time.
    let before = rx.last_frame_at();
    tx.ping().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await;
    assert!(rx.last_frame_at() > before, "no pong before the stall");
    // After it: nothing at all comes back.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stalled_at = rx.last_frame_at();
    tx.ping().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await;
    assert_eq!(rx.last_frame_at(), stalled_at, "a stalled server must not answer pings");
    sim.shutdown().await;
}
