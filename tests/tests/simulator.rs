//! The release `switchboard-sim` binary as other tests drive it: its issue 8 flags are accepted
//! and wired (`--max-session-ms` with a matching `expires_at`, `--phases`, `--late-deltas`,
//! `--fail-reason`, `--transcription-delay-ms`), and the runtime controls work on the process
//! over HTTP (docs/simulator.md). A minimal WebSocket client over `std::net` keeps the harness
//! free of extra dependencies.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use switchboard_e2e::procs::{Sim, http_post};
use switchboard_e2e::{Ports, tools};

/// A WebSocket client connection: the upgrade's status, and the stream once it is 101.
struct RawWs {
    stream: TcpStream,
}

/// One server frame: opcode and payload.
struct Frame {
    opcode: u8,
    payload: Vec<u8>,
}

/// Sends the upgrade request; returns the HTTP status and, for 101, the connection.
fn upgrade(addr: SocketAddr) -> (u16, String, Option<RawWs>) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect to the simulator");
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
    write!(
        stream,
        "GET /v1/realtime?model=gpt-realtime-2.1 HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer sk-test\r\n\
         Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .expect("send the upgrade");
    // Read the response head byte by byte: the frames that follow must stay in the stream.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("read the upgrade response");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    if status == 101 {
        return (status, head, Some(RawWs { stream }));
    }
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).expect("read the refusal body");
    (status, String::from_utf8_lossy(&body).into_owned(), None)
}

impl RawWs {
    fn read_frame(&mut self) -> Frame {
        let mut head = [0u8; 2];
        self.stream.read_exact(&mut head).expect("read a frame header");
        let opcode = head[0] & 0x0f;
        let mut len = u64::from(head[1] & 0x7f);
        if len == 126 {
            let mut ext = [0u8; 2];
            self.stream.read_exact(&mut ext).expect("read the length");
            len = u64::from(u16::from_be_bytes(ext));
        } else if len == 127 {
            let mut ext = [0u8; 8];
            self.stream.read_exact(&mut ext).expect("read the length");
            len = u64::from_be_bytes(ext);
        }
        let mut payload = vec![0u8; usize::try_from(len).expect("frame size")];
        self.stream.read_exact(&mut payload).expect("read the payload");
        Frame { opcode, payload }
    }

    /// The next text frame as JSON; panics on anything else.
    fn next_event(&mut self) -> Value {
        let frame = self.read_frame();
        assert_eq!(frame.opcode, 1, "expected a text frame, got opcode {}", frame.opcode);
        serde_json::from_slice(&frame.payload).expect("event JSON")
    }

    /// Reads events until one of `event_type`.
    fn until(&mut self, event_type: &str) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let event = self.next_event();
            let done = event["type"] == event_type;
            seen.push(event);
            if done {
                return seen;
            }
        }
    }

    /// Sends a masked text frame (RFC 6455 §5.3: client frames are masked; a zero key is valid).
    fn send(&mut self, event: &Value) {
        let payload = event.to_string().into_bytes();
        let mut frame = vec![0x81u8];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | u8::try_from(n).expect("small")),
            n if n <= usize::from(u16::MAX) => {
                frame.push(0x80 | 126);
                frame.extend(u16::try_from(n).expect("medium").to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend(u64::try_from(n).expect("large").to_be_bytes());
            }
        }
        frame.extend([0u8; 4]);
        frame.extend(payload);
        self.stream.write_all(&frame).expect("send a frame");
    }
}

/// The opcodes of the whole frames in `bytes` (server frames: unmasked).
fn frame_opcodes(bytes: &[u8]) -> Vec<u8> {
    let mut opcodes = Vec::new();
    let mut at = 0;
    while let (Some(&b0), Some(&b1)) = (bytes.get(at), bytes.get(at + 1)) {
        let (len, header) = match b1 & 0x7f {
            126 => (bytes.get(at + 2..at + 4).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]]))), 4),
            127 => (
                bytes
                    .get(at + 2..at + 10)
                    .map(|b| usize::try_from(u64::from_be_bytes(b.try_into().expect("8 bytes"))).expect("size")),
                10,
            ),
            n => (Some(usize::from(n)), 2),
        };
        let Some(len) = len else { break };
        opcodes.push(b0 & 0x0f);
        at += header + len;
    }
    opcodes
}

fn unix_secs() -> i64 {
    i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()).expect("secs")
}

#[test]
fn the_binary_takes_the_new_flags_and_its_controls_act_on_the_process() {
    let test = "simulator_binary_flags_and_controls";
    let ports = Ports::for_slot(83);
    let dir = tools::scratch_dir(test);
    let sim = Sim::start(
        ports,
        &[
            "--max-session-ms",
            "1500",
            "--phases",
            "--late-deltas",
            "2",
            "--fail-responses",
            "--fail-reason",
            "insufficient_quota",
            "--transcription-delay-ms",
            "300",
        ],
        &dir,
    );

    // refuse_upgrades: exactly `count` refusals, API-shaped.
    assert_eq!(sim.control("refuse_upgrades", r#"{"status":503,"count":1}"#), json!({"status":503,"count":1}));
    let (status, body, _) = upgrade(sim.addr);
    assert_eq!(status, 503, "{body}");
    let body: Value = serde_json::from_str(&body).expect("refusal body JSON");
    assert_eq!(body["error"]["type"], "server_error");

    // --max-session-ms: expires_at matches (rounded down), then session_expired and close 1001.
    let before = unix_secs();
    let (status, head, ws) = upgrade(sim.addr);
    assert_eq!(status, 101, "{head}");
    let mut ws = ws.expect("upgraded");
    let opened = Instant::now();
    let created = ws.next_event();
    assert_eq!(created["type"], "session.created");
    let expires_at = created["session"]["expires_at"].as_i64().expect("expires_at");
    assert!((before + 1..=unix_secs() + 1).contains(&expires_at), "expires_at {expires_at}, opened at {before}");
    let events = ws.until("error");
    assert_eq!(events.last().expect("error")["error"]["code"], "session_expired");
    let close = ws.read_frame();
    assert_eq!(close.opcode, 8);
    assert_eq!(u16::from_be_bytes([close.payload[0], close.payload[1]]), 1001);
    let lived = opened.elapsed();
    assert!(lived >= Duration::from_millis(1400) && lived < Duration::from_secs(4), "expired after {lived:?}");
    let logs = sim.sessions();
    assert_eq!(logs[0]["ended_by"], "session_expired");

    // call_tool: a goodbye then the declared function, in one response.
    let (_, _, ws) = upgrade(sim.addr);
    let mut ws = ws.expect("upgraded");
    ws.until("conversation.created");
    ws.send(&json!({"type":"session.update","session":{"type":"realtime","tools":[
        {"type":"function","name":"end_call","description":"Hang up after saying goodbye.",
         "parameters":{"type":"object","properties":{}}}]}}));
    ws.until("session.updated");
    let answer = sim.control("call_tool", r#"{"name":"end_call","arguments":"{}","say_ms":200,"now":true}"#);
    assert_eq!(answer["sessions"], 1);
    let events = ws.until("response.done");
    let args = events.iter().find(|e| e["type"] == "response.function_call_arguments.done").expect("the call");
    assert_eq!(args["name"], "end_call");
    let done = events.last().expect("response.done");
    assert_eq!(done["response"]["output"][0]["type"], "message");
    assert_eq!(done["response"]["output"][1]["type"], "function_call");

    // A nested unknown field is rejected with its path.
    ws.send(&json!({"type":"session.update","event_id":"evt_bad","session":{"type":"realtime",
        "audio":{"input":{"turn_detection":{"type":"semantic_vad","idle_timeout_ms":8000}}}}}));
    let error = ws.until("error").pop().expect("error");
    assert_eq!(error["error"]["param"], "session.audio.input.turn_detection.idle_timeout_ms");
    assert_eq!(error["error"]["event_id"], "evt_bad");

    // drop: the open session ends without a close frame; unknown controls are 404.
    assert_eq!(sim.control("drop", r#"{"mode":"reset"}"#)["sessions"], 1);
    let mut rest = Vec::new();
    let _ = ws.stream.read_to_end(&mut rest);
    assert_eq!(frame_opcodes(&rest).iter().filter(|&&op| op == 8).count(), 0, "no close frame after a reset");
    let (status, _) = http_post(sim.addr, "/_sim/control/explode", "{}");
    assert_eq!(status, 404);
}
