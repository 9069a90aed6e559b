//! The AI connection lost mid-call, end to end (release gateway, simulator, SIPp as the caller,
//! tshark recording what the caller hears): the caller is not hung up on. The gateway reconnects,
//! sends the same session config, replays the conversation so far, and the conversation goes on;
//! the caller's pause is measured from the RTP the caller received. If the AI cannot be reached,
//! the give-up announcement plays and the gateway hangs up. (Connect-time 401/429/5xx before the
//! answer are in realtime_faults.rs: `refused_upgrades_get_503_with_retry_after`.)

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use switchboard_e2e::pcap::{self, RtpPacket};
use switchboard_e2e::procs::{Capture, Gateway, Sim};
use switchboard_e2e::{Ports, audio, sipp, tools};

const MAX_PAUSE_MS: f64 = 1500.0;

/// µ-law silence.
const ULAW_SILENCE: u8 = 0xFF;

/// The gateway with a greeting (the simulator answers it with its greeting tone), quick reconnect
/// retries and a short give-up (environment overrides: the harness's generated config already
/// has its `[realtime]` table).
fn start_gateway(ports: Ports, sim: &Sim, dir: &Path, give_up_secs: &str) -> Gateway {
    Gateway::start_with_env(
        ports,
        &sim.url(),
        "[agents.default]\ngreeting = \"Welcome to the test line.\"\n",
        dir,
        &[
            ("SWITCHBOARD__REALTIME__RECONNECT_INITIAL_MS", "100"),
            ("SWITCHBOARD__REALTIME__RECONNECT_MAX_MS", "500"),
            ("SWITCHBOARD__REALTIME__RECONNECT_GIVE_UP_SECS", give_up_secs),
        ],
    )
}

fn capture_filter(ports: Ports) -> String {
    format!(
        "udp and (portrange {}-{} or portrange {}-{})",
        ports.rtp_first,
        ports.rtp_last,
        ports.peer_media,
        ports.peer_media + 3
    )
}

/// The RTP the caller received, in the order sent.
fn to_caller(pcap_path: &Path, ports: Ports) -> Vec<RtpPacket> {
    let mut packets: Vec<RtpPacket> =
        pcap::read_rtp(pcap_path).into_iter().filter(|p| p.dst.port() == ports.peer_media).collect();
    packets.sort_by_key(|p| p.time_us);
    packets
}

/// One stream for the whole call, whatever happened to the AI connection: one SSRC, sequence
/// numbers +1 and timestamps +160 (20 ms of PCMU) from packet to packet.
fn assert_continuous(packets: &[RtpPacket]) {
    assert!(packets.len() > 100, "only {} packets to the caller", packets.len());
    for pair in packets.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert_eq!(b.ssrc, a.ssrc, "SSRC changed");
        assert_eq!(b.sequence, a.sequence.wrapping_add(1), "sequence gap after {}", a.sequence);
        assert_eq!(b.timestamp, a.timestamp.wrapping_add(160), "timestamp jump after seq {}", a.sequence);
    }
}

fn linear(packet: &RtpPacket) -> Vec<i16> {
    packet.payload.iter().map(|&b| audio::ulaw_to_linear(b)).collect()
}

/// Whether a 20 ms frame is (mostly) a tone of `hz`: the Goertzel power at `hz` is a large share
/// of the frame's power, and the frame is not near silence.
fn is_tone(samples: &[i16], hz: f64) -> bool {
    let mean_square = samples.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / samples.len().max(1) as f64;
    mean_square > 300.0 * 300.0 && audio::goertzel(samples, 8000.0, hz) > 0.2 * mean_square
}

/// Whether a 20 ms frame is the agent's voice: loud (the simulator's tones are at half scale),
/// unlike silence and the gateway's soft comfort pulse (about -24 dBFS).
fn is_agent_audio(samples: &[i16]) -> bool {
    let mean_square = samples.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / samples.len().max(1) as f64;
    mean_square > 5000.0 * 5000.0
}

/// The gaps (ms on the RTP clock) between runs of the agent's audio: each is what the caller
/// heard between the agent's last audio of one session and its first of the next.
fn gaps_between_agent_audio(packets: &[RtpPacket]) -> Vec<f64> {
    let mut gaps = Vec::new();
    let mut last_tone: Option<u32> = None;
    for packet in packets {
        if !is_agent_audio(&linear(packet)) {
            continue;
        }
        if let Some(last) = last_tone {
            let gap_ms = f64::from(packet.timestamp.wrapping_sub(last).saturating_sub(160)) / 8.0;
            if gap_ms > 0.0 {
                gaps.push(gap_ms);
            }
        }
        last_tone = Some(packet.timestamp);
    }
    gaps
}

fn metric_value(metrics: &str, line_start: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn client_events<'a>(session: &'a Value, event_type: &str) -> Vec<&'a Value> {
    session["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter(|e| e["direction"] == "client" && e["event"]["type"] == event_type)
                .map(|e| &e["event"])
                .collect()
        })
        .unwrap_or_default()
}

/// A µ-law stream file: the given pieces (speech, or silence of so many ms) back to back.
enum Piece<'a> {
    Silence(u32),
    Ulaw(&'a [u8]),
}

fn write_stream(dir: &Path, pieces: &[Piece<'_>]) -> String {
    let mut stream = Vec::new();
    for piece in pieces {
        match piece {
            Piece::Silence(ms) => stream.extend(std::iter::repeat_n(ULAW_SILENCE, (*ms * 8) as usize)),
            Piece::Ulaw(bytes) => stream.extend_from_slice(bytes),
        }
    }
    let path = dir.join("caller.ul");
    std::fs::write(&path, stream).expect("write stream");
    path.display().to_string()
}

fn call(dir: &Path, ports: Ports, stream: &str, pause_ms: u32) -> std::process::Output {
    sipp::run(
        "uac_call.xml",
        &[
            ("FORMATS", "0 101"),
            ("RTPMAPS", &sipp::rtpmaps("0 101")),
            ("EXPECT_PT", "0"),
            ("MEDIA", &sipp::rtp_stream(stream, "0")),
        ],
        dir,
        ports,
        "15550001000",
        pause_ms,
    )
}

/// Short sessions (3 s, `expires_at` saying so) and an agent that never stops talking: the
/// rollover's next session is ready, but no turn boundary comes, so each session expires
/// mid-answer and the gateway switches to the ready one at once. The caller hears the answer
/// stop, a short pause, and the agent pick up again (a 1 kHz tone stands for its voice); the
/// pause is measured on the RTP the caller received.
#[test]
#[cfg_attr(not(all(has_sipp, has_tshark)), ignore = "needs sipp and tshark (scripts/install-deps.sh)")]
fn an_expiry_mid_answer_with_the_next_session_ready_costs_the_caller_a_short_pause() {
    let test = "reconnect_expiry_pause";
    let ports = Ports::for_slot(77);
    let dir = tools::scratch_dir(test);
    // An 8-second "answer" and 3-second sessions: every session expires mid-answer.
    let sim = Sim::start(ports, &["--greeting-tone", "1000:8000", "--max-session-secs", "3"], &dir);
    let gateway = start_gateway(ports, &sim, &dir, "10");
    let stream = write_stream(&dir, &[Piece::Silence(8000)]);
    let capture = Capture::start(&capture_filter(ports), &dir.join("call.pcap"), 60);
    let out = call(&dir, ports, &stream, 7000);
    let pcap_path = capture.finish();
    assert!(out.status.success(), "the caller was hung up on (or SIPp failed); gateway log:\n{}", gateway.log());

    let packets = to_caller(&pcap_path, ports);
    assert_continuous(&packets);
    let answer_frames = packets.iter().filter(|p| is_tone(&linear(p), 1000.0)).count();
    assert!(answer_frames > 100, "the agent's answer was heard for only {answer_frames} frames");
    let gaps = gaps_between_agent_audio(&packets);
    // No gap at all is possible: the next session can answer within one 20 ms frame.
    eprintln!("{test}: gaps in the agent's audio (ms): {gaps:?}");
    for gap in &gaps {
        assert!(*gap <= MAX_PAUSE_MS, "a reconnect cost the caller {gap} ms of pause");
    }
    let metrics = gateway.metrics();
    let resumed =
        metric_value(&metrics, r#"switchboard_realtime_reconnects_total{reason="expired",outcome="resumed"}"#);
    assert!(resumed >= 1, "{metrics}");
    assert!(gateway.log().contains("conversation resumed"), "the pause is logged per reconnect");
    let sessions = sim.sessions();
    let sessions = sessions.as_array().expect("sessions");
    assert!(sessions.len() >= 2, "{} sessions", sessions.len());
    // The new session is configured as the first was (the same session.update).
    let update = |s: &Value| client_events(s, "session.update").first().map(|e| e["session"].clone());
    assert_eq!(update(&sessions[0]), update(&sessions[1]));
    assert!(update(&sessions[1]).is_some_and(|s| s["audio"]["input"]["transcription"]["model"].is_string()));
}

/// The agent is answering (a 1 kHz tone streamed in real time) when `control` hits the
/// simulator: the caller hears the answer stop, a pause, and the agent pick up again (the
/// simulator's short scripted answer) after a real reconnect (connect, `session.update`, replay,
/// `response.create`). Returns the pauses (ms on the caller's RTP clock).
fn pause_across(slot: u16, test: &str, control: &str, body: &str, reason: &str) -> Vec<f64> {
    let ports = Ports::for_slot(slot);
    let dir = tools::scratch_dir(test);
    let sim = Sim::start(ports, &["--greeting-tone", "1000:8000", "--speed", "1"], &dir);
    let gateway = start_gateway(ports, &sim, &dir, "10");
    let stream = write_stream(&dir, &[Piece::Silence(6000)]);
    let capture = Capture::start(&capture_filter(ports), &dir.join("call.pcap"), 60);
    let out = std::thread::scope(|scope| {
        let sim = &sim;
        scope.spawn(move || {
            std::thread::sleep(Duration::from_millis(2000));
            let answer = sim.control(control, body);
            assert_eq!(answer["sessions"], 1, "{control}: {answer}");
        });
        call(&dir, ports, &stream, 5000)
    });
    let pcap_path = capture.finish();
    assert!(out.status.success(), "the caller was hung up on (or SIPp failed); gateway log:\n{}", gateway.log());
    let packets = to_caller(&pcap_path, ports);
    assert_continuous(&packets);
    let gaps = gaps_between_agent_audio(&packets);
    eprintln!("{test}: pause heard across the reconnect (ms): {gaps:?}");
    let sessions = sim.sessions();
    std::fs::write(dir.join("sessions.json"), sessions.to_string()).expect("write sessions");
    for session in sessions.as_array().expect("sessions") {
        for error in session["events"].as_array().into_iter().flatten().filter(|e| e["event"]["type"] == "error") {
            eprintln!("{test}: simulator error: {}", error["event"]);
        }
    }
    // The longest silence in the agent's audio is the one the reconnect caused (the others are
    // a frame between the simulator's scripted items).
    let pause = gaps.iter().copied().fold(0.0, f64::max);
    eprintln!("{test}: caller's pause across the reconnect: {pause} ms");
    assert!(pause <= MAX_PAUSE_MS, "the reconnect cost the caller {pause} ms of pause");
    // The old answer (1 kHz) stopped at the loss; what the agent said after it is the new
    // session's answer (another tone).
    let old_answer = packets.iter().filter(|p| is_tone(&linear(p), 1000.0)).count();
    let new_answer = packets.iter().filter(|p| is_agent_audio(&linear(p)) && !is_tone(&linear(p), 1000.0)).count();
    eprintln!("{test}: frames of the cut answer {old_answer}, of the answer after the reconnect {new_answer}");
    assert!((75..=150).contains(&old_answer), "the first answer was not cut at the loss (2 s): {old_answer} frames");
    assert!(new_answer >= 20, "the agent did not pick up after the reconnect: {new_answer} frames");
    let metrics = gateway.metrics();
    let line = format!(r#"switchboard_realtime_reconnects_total{{reason="{reason}",outcome="resumed"}}"#);
    assert_eq!(metric_value(&metrics, &line), 1, "{metrics}");
    let second = &sessions.as_array().expect("sessions")[1];
    assert!(
        client_events(second, "conversation.item.create")
            .iter()
            .any(|e| e["item"]["role"] == "assistant" && e["item"]["content"][0]["type"] == "output_text"),
        "the cut answer was replayed"
    );
    assert_eq!(client_events(second, "response.create").len(), 1, "the agent was asked to pick up where it was cut");
    gaps
}

#[test]
#[cfg_attr(not(all(has_sipp, has_tshark)), ignore = "needs sipp and tshark (scripts/install-deps.sh)")]
fn a_dropped_connection_mid_answer_costs_the_caller_a_short_pause() {
    // Without a close frame (the client sees 1006), then with the server's 1011.
    pause_across(81, "reconnect_drop_pause", "drop", r#"{"mode":"reset"}"#, "dropped");
    pause_across(81, "reconnect_close_pause", "drop", r#"{"mode":"close_1011"}"#, "closed");
}

#[test]
#[cfg_attr(not(all(has_sipp, has_tshark)), ignore = "needs sipp and tshark (scripts/install-deps.sh)")]
fn an_expiry_mid_answer_without_a_rollover_costs_the_caller_a_short_pause() {
    pause_across(82, "reconnect_expire_pause", "expire", r#"{"mid_response":true}"#, "expired");
}

/// How the AI connection is lost in [`conversation_goes_on_after`].
#[derive(Debug, Clone, Copy)]
enum Loss {
    /// Not a loss: the simulator's sessions last `--max-session-secs` (their `expires_at` says
    /// so) and the gateway rolls over to a new one at a turn boundary before that.
    Rollover,
    /// `drop {"mode":"reset"}` (contract SIM): the TCP connection closed without a close frame.
    Reset,
}

/// The caller speaks, the echo agent says it back; the session is replaced (rolled over, or the
/// connection is lost); the caller speaks again and is still echoed, by a second session that
/// was told the first one's turns.
fn conversation_goes_on_after(loss: Loss, slot: u16, test: &str) {
    let ports = Ports::for_slot(slot);
    let dir = tools::scratch_dir(test);
    let speech = audio::make_speech(&dir);
    let speech_ulaw = std::fs::read(&speech.ulaw).expect("speech");
    let speech_ms = (speech_ulaw.len() / 8) as u32;
    // Speech, the echo, the loss in the silence after it, speech again, its echo.
    let first_turn_ms = 300 + speech_ms + 500 + speech_ms;
    let loss_at_ms = first_turn_ms + 1200;
    let second_speech_ms = loss_at_ms + 1000;
    let stream = write_stream(
        &dir,
        &[
            Piece::Silence(300),
            Piece::Ulaw(&speech_ulaw),
            Piece::Silence(second_speech_ms - 300 - speech_ms),
            Piece::Ulaw(&speech_ulaw),
            Piece::Silence(speech_ms + 1500),
        ],
    );
    let session_secs = (loss_at_ms / 1000 + 1).to_string();
    let mut sim_args = vec!["--behaviour", "echo", "--greeting-tone", "440:300"];
    if matches!(loss, Loss::Rollover) {
        sim_args.extend(["--max-session-secs", session_secs.as_str()]);
    }
    let sim = Sim::start(ports, &sim_args, &dir);
    let gateway = start_gateway(ports, &sim, &dir, "10");
    let capture = Capture::start(&capture_filter(ports), &dir.join("call.pcap"), 60);
    let call_ms = second_speech_ms + 2 * speech_ms + 1500;
    let out = std::thread::scope(|scope| {
        if matches!(loss, Loss::Reset) {
            let sim = &sim;
            scope.spawn(move || {
                std::thread::sleep(Duration::from_millis(u64::from(loss_at_ms)));
                let answer = sim.control("drop", r#"{"mode":"reset"}"#);
                assert_eq!(answer["sessions"], 1, "one session dropped: {answer}");
            });
        }
        call(&dir, ports, &stream, call_ms)
    });
    let pcap_path = capture.finish();
    assert!(out.status.success(), "the caller was hung up on (or SIPp failed); gateway log:\n{}", gateway.log());

    // The second session was told the first one's turns before anything else...
    let sessions = sim.sessions();
    let sessions = sessions.as_array().expect("sessions");
    assert!(sessions.len() >= 2, "no second session; log:\n{}", gateway.log());
    let second = &sessions[1];
    let events = second["events"].as_array().expect("events");
    let first_append = events
        .iter()
        .position(|e| e["direction"] == "client" && e["event"]["type"] == "input_audio_buffer.append")
        .expect("the caller's audio reached the second session");
    let replayed: Vec<&Value> = events[..first_append]
        .iter()
        .filter(|e| e["direction"] == "client" && e["event"]["type"] == "conversation.item.create")
        .map(|e| &e["event"]["item"])
        .collect();
    eprintln!("{test}: replayed items: {replayed:?}");
    assert!(
        replayed.iter().any(|i| i["role"] == "user" && i["content"][0]["type"] == "input_text"),
        "the caller's first turn (its transcript) was replayed: {replayed:?}"
    );
    assert!(
        replayed.iter().any(|i| i["role"] == "assistant"
            && i["content"][0]["type"] == "output_text"
            && i["content"][0]["text"].as_str().is_some_and(|t| t.starts_with("You said something"))),
        "the agent's echo (its transcript) was replayed: {replayed:?}"
    );
    // ...and answered the caller's later speech.
    let answered = events.iter().any(|e| {
        e["direction"] == "server"
            && e["event"]["type"] == "response.done"
            && e["event"]["response"]["status"] == "completed"
    });
    assert!(answered, "the second session never answered the caller");

    // What the caller heard after the loss is the echo of its later speech.
    let packets = to_caller(&pcap_path, ports);
    assert_continuous(&packets);
    let start_ts = packets[0].timestamp;
    let after_loss: Vec<i16> =
        packets.iter().filter(|p| p.timestamp.wrapping_sub(start_ts) / 8 > second_speech_ms).flat_map(linear).collect();
    let (_, reference) = audio::read_wav(&speech.wav_8k);
    let (_, r) =
        audio::best_lag_correlation(&audio::envelope(&reference, 160), &audio::envelope(&after_loss, 160), 400);
    eprintln!("{test}: echo after the reconnect correlates r = {r:.3} with the speech");
    assert!(r >= 0.8, "the caller's later speech was not echoed back (r = {r:.3})");

    let reason = match loss {
        Loss::Rollover => "rollover",
        Loss::Reset => "dropped",
    };
    let metrics = gateway.metrics();
    let line = format!(r#"switchboard_realtime_reconnects_total{{reason="{reason}",outcome="resumed"}}"#);
    assert!(metric_value(&metrics, &line) >= 1, "{metrics}");
    if matches!(loss, Loss::Rollover) {
        // Rolled over in time: no session reached its expiry, nothing was lost.
        assert!(!gateway.log().contains("Realtime connection lost"), "{}", gateway.log());
    }
}

#[test]
#[cfg_attr(not(all(has_sipp, has_tshark, has_espeak_ng, has_sox)), ignore = "needs sipp, tshark, espeak-ng, sox")]
fn the_conversation_goes_on_across_a_rollover_before_the_session_expires() {
    conversation_goes_on_after(Loss::Rollover, 78, "reconnect_rollover_conversation");
}

#[test]
#[cfg_attr(not(all(has_sipp, has_tshark, has_espeak_ng, has_sox)), ignore = "needs sipp, tshark, espeak-ng, sox")]
fn the_conversation_goes_on_across_a_dropped_connection() {
    conversation_goes_on_after(Loss::Reset, 79, "reconnect_drop_conversation");
}

/// The AI cannot be reached again (the connection drops, then every upgrade is refused with
/// 503): the caller hears the comfort pulse, then the give-up tones, then the gateway hangs up.
#[test]
#[cfg_attr(not(all(has_sipp, has_tshark)), ignore = "needs sipp and tshark (scripts/install-deps.sh)")]
fn an_ai_that_does_not_come_back_gets_the_announcement_then_bye() {
    let test = "reconnect_give_up";
    let ports = Ports::for_slot(80);
    let dir = tools::scratch_dir(test);
    // The greeting is far from every tone listened for below.
    let sim = Sim::start(ports, &["--greeting-tone", "2500:300"], &dir);
    let give_up = Duration::from_secs(3);
    let gateway = start_gateway(ports, &sim, &dir, "3");
    let capture = Capture::start(&capture_filter(ports), &dir.join("call.pcap"), 60);
    let started = Instant::now();
    let (out, lost_at) = std::thread::scope(|scope| {
        let sipp = scope.spawn(|| sipp::run("uac_wait_bye.xml", &[], &dir, ports, "15550001000", 0));
        std::thread::sleep(Duration::from_millis(1500));
        sim.control("refuse_upgrades", r#"{"status":503,"count":1000}"#);
        let lost_at = started.elapsed();
        let answer = sim.control("drop", r#"{"mode":"reset"}"#);
        assert_eq!(answer["sessions"], 1, "{answer}");
        (sipp.join().expect("sipp thread"), lost_at)
    });
    let bye_after = started.elapsed() - lost_at;
    let pcap_path = capture.finish();
    eprintln!("{test}: BYE {bye_after:?} after the AI went away (give-up {give_up:?})");
    assert!(out.status.success(), "no BYE from the gateway; log:\n{}", gateway.log());
    assert!(bye_after >= give_up, "hung up before the give-up time: {bye_after:?}");
    assert!(bye_after < give_up + Duration::from_millis(3500), "BYE only after {bye_after:?}");
    let log = gateway.log();
    let attempts = log.matches("Realtime reconnect attempt failed").count();
    assert!(attempts >= 3, "{attempts} reconnect attempts in {give_up:?} (backoff 100-500 ms):\n{log}");
    assert!(log.contains("HTTP 503"), "each attempt's reason is logged");

    let packets = to_caller(&pcap_path, ports);
    assert_continuous(&packets);
    let heard = |hz: f64| packets.iter().filter(|p| is_tone(&linear(p), hz)).count();
    let (pulse, sit1, sit2, sit3) = (heard(425.0), heard(950.0), heard(1400.0), heard(1800.0));
    eprintln!("{test}: frames of comfort pulse {pulse}, give-up tones {sit1}/{sit2}/{sit3}");
    assert!(pulse >= 10, "the comfort pulse was not heard ({pulse} frames)");
    for (hz, frames) in [(950, sit1), (1400, sit2), (1800, sit3)] {
        assert!((14..=18).contains(&frames), "{hz} Hz announcement tone: {frames} frames, expected ~16");
    }
    let metrics = gateway.metrics();
    assert_eq!(
        metric_value(&metrics, r#"switchboard_realtime_reconnects_total{reason="dropped",outcome="gave_up"}"#),
        1,
        "{metrics}"
    );
    assert!(
        metrics
            .contains(r#"switchboard_calls_total{direction="inbound",outcome="failed",reason="agent_disconnected"} 1"#),
        "{metrics}"
    );
    let refused = metric_value(&metrics, r#"switchboard_realtime_connect_failures_total{reason="http_5xx"}"#);
    assert_eq!(refused as usize, attempts, "every failed attempt is counted: {metrics}");
}
