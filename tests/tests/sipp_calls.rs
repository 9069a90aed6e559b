//! SIPp places calls through the release gateway to the simulator: G.711 both ways with the
//! negotiated payload type, CANCEL, OPTIONS, 404 and 488. The capture is the judge of RTP.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use switchboard_e2e::audio::{self, Speech};
use switchboard_e2e::pcap::{self, RtpPacket};
use switchboard_e2e::procs::{Capture, Gateway, Sim};
use switchboard_e2e::{Ports, sipp, tools};

/// Speech followed by 1.5 s of G.711 silence: phones keep sending RTP, and the model's VAD needs
/// that silence to notice the caller finished.
fn speech_then_silence(speech: &Path, silence_byte: u8, dir: &Path, name: &str) -> String {
    let mut audio = std::fs::read(speech).expect("read speech");
    audio.extend(std::iter::repeat_n(silence_byte, 8000 * 3 / 2));
    let path = dir.join(name);
    std::fs::write(&path, audio).expect("write stream file");
    path.display().to_string()
}

fn capture_media(ports: Ports, dir: &Path) -> Capture {
    let filter = format!(
        "udp and (portrange {}-{} or portrange {}-{})",
        ports.rtp_first,
        ports.rtp_last,
        ports.peer_media,
        ports.peer_media + 3
    );
    Capture::start(&filter, &dir.join("media.pcap"), 60)
}

fn decode(packets: &[&RtpPacket], law: fn(u8) -> i16) -> Vec<i16> {
    packets.iter().flat_map(|p| p.payload.iter().map(|&b| law(b))).collect()
}

/// One G.711 call: asserts the answer, RTP both ways with `pt`, and that the echo agent's audio the
/// caller received correlates with what it said.
fn g711_call(slot: u16, test: &str, formats: &str, pt: u8, law: fn(u8) -> i16, format_name: &str) {
    let ports = Ports::for_slot(slot);
    let dir = tools::scratch_dir(test);
    let Speech { wav_8k, ulaw, alaw } = audio::make_speech(&dir);
    let (raw, silence) = if pt == 0 { (&ulaw, 0xFF) } else { (&alaw, 0xD5) };
    let stream = speech_then_silence(raw, silence, &dir, "stream.raw");
    let sim = Sim::start(ports, &["--behaviour", "echo"], &dir);
    let gateway = Gateway::start(ports, &sim.url(), "", &dir);
    let capture = capture_media(ports, &dir);

    let pt_text = pt.to_string();
    let out = sipp::run(
        "uac_call.xml",
        &[
            ("FORMATS", formats),
            ("RTPMAPS", &sipp::rtpmaps(formats)),
            ("EXPECT_PT", &pt_text),
            ("MEDIA", &sipp::rtp_stream(&stream, &pt_text)),
        ],
        &dir,
        ports,
        "15550001000",
        9000,
    );
    let pcap_path = capture.finish();
    assert!(out.status.success(), "SIPp call failed; gateway log:\n{}", gateway.log());

    let packets = pcap::read_rtp(&pcap_path);
    let to_caller: Vec<&RtpPacket> = packets.iter().filter(|p| p.dst.port() == ports.peer_media).collect();
    let from_caller: Vec<&RtpPacket> = packets.iter().filter(|p| p.src.port() == ports.peer_media).collect();
    assert!(from_caller.len() > 150, "caller sent {} RTP packets", from_caller.len());
    assert!(to_caller.len() > 300, "gateway sent only {} RTP packets", to_caller.len());
    assert!(to_caller.iter().all(|p| p.payload_type == pt), "gateway RTP must use payload type {pt}");
    assert!(to_caller.iter().all(|p| p.payload.len() == 160), "20 ms G.711 frames are 160 bytes");
    assert!(from_caller.iter().all(|p| (ports.rtp_first..=ports.rtp_last).contains(&p.dst.port())));
    // One stream: stable SSRC, sequence numbers without gaps.
    assert!(to_caller.windows(2).all(|w| w[0].ssrc == w[1].ssrc));
    assert!(to_caller.windows(2).all(|w| w[1].sequence == w[0].sequence.wrapping_add(1)));

    // The echo agent said back what the caller said: envelopes correlate.
    let (_, reference) = audio::read_wav(&wav_8k);
    let received = decode(&to_caller, law);
    let (lag, r) =
        audio::best_lag_correlation(&audio::envelope(&reference, 160), &audio::envelope(&received, 160), 600);
    eprintln!("{test}: echo envelope correlation r = {r:.3} at lag {} ms", lag * 20);
    assert!(r >= 0.8, "echoed speech correlation {r:.3} < 0.8");

    let sessions = sim.sessions();
    let session = &sessions[0];
    let update = session["events"]
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["direction"] == "client" && e["event"]["type"] == "session.update")
        .expect("session.update received");
    let format = &update["event"]["session"]["audio"]["input"]["format"]["type"];
    assert_eq!(format, format_name, "G.711 goes to the model untouched");
    let metrics = gateway.metrics();
    assert!(
        metrics.contains(r#"switchboard_calls_total{direction="inbound",outcome="completed",reason="caller_bye"} 1"#),
        "metrics:\n{metrics}"
    );
}

#[test]
#[cfg_attr(
    not(all(has_sipp, has_tshark, has_espeak_ng)),
    ignore = "needs sipp, tshark and espeak-ng (scripts/install-deps.sh)"
)]
fn pcmu_call_streams_audio_both_ways() {
    g711_call(0, "pcmu_call_streams_audio_both_ways", "0 8 101", 0, audio::ulaw_to_linear, "audio/pcmu");
}

#[test]
#[cfg_attr(
    not(all(has_sipp, has_tshark, has_espeak_ng)),
    ignore = "needs sipp, tshark and espeak-ng (scripts/install-deps.sh)"
)]
fn pcma_only_offer_is_answered_with_pcma() {
    g711_call(1, "pcma_only_offer_is_answered_with_pcma", "8 101", 8, audio::alaw_to_linear, "audio/pcma");
}

/// A simulator stand-in that accepts TCP but never answers the WebSocket upgrade, so the call
/// stays ringing long enough to be cancelled.
fn silent_realtime_endpoint() -> (std::net::TcpListener, String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("ws://{}/v1/realtime", listener.local_addr().expect("addr"));
    (listener, url)
}

#[test]
#[cfg_attr(not(has_sipp), ignore = "needs sipp (scripts/install-deps.sh)")]
fn cancel_while_ringing_gets_487() {
    let test = "cancel_while_ringing_gets_487";
    let ports = Ports::for_slot(2);
    let dir = tools::scratch_dir(test);
    let (_listener, url) = silent_realtime_endpoint();
    let gateway = Gateway::start(ports, &url, "", &dir);
    let out = sipp::run("uac_cancel.xml", &[], &dir, ports, "15550001000", 0);
    assert!(out.status.success(), "CANCEL flow failed; gateway log:\n{}", gateway.log());
    std::thread::sleep(Duration::from_millis(200));
    let metrics = gateway.metrics();
    assert!(
        metrics
            .contains(r#"switchboard_calls_total{direction="inbound",outcome="cancelled",reason="caller_cancel"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("switchboard_calls_active 0"), "{metrics}");
}

#[test]
#[cfg_attr(not(has_sipp), ignore = "needs sipp (scripts/install-deps.sh)")]
fn options_ping_gets_200_with_allow() {
    let test = "options_ping_gets_200_with_allow";
    let ports = Ports::for_slot(3);
    let dir = tools::scratch_dir(test);
    let (_listener, url) = silent_realtime_endpoint();
    let gateway = Gateway::start(ports, &url, "", &dir);
    let out = sipp::run("options.xml", &[], &dir, ports, "ping", 0);
    assert!(out.status.success(), "OPTIONS failed; gateway log:\n{}", gateway.log());
}

fn refused(slot: u16, test: &str, formats: &str, service: &str, code: &str, extra_toml: &str, reason: &str) {
    let ports = Ports::for_slot(slot);
    let dir = tools::scratch_dir(test);
    let sim = Sim::start(ports, &["--behaviour", "echo"], &dir);
    let gateway = Gateway::start(ports, &sim.url(), extra_toml, &dir);
    let out = sipp::run(
        "uac_refused.xml",
        &[("FORMATS", formats), ("RTPMAPS", &sipp::rtpmaps(formats)), ("CODE", code)],
        &dir,
        ports,
        service,
        0,
    );
    assert!(out.status.success(), "expected {code}; gateway log:\n{}", gateway.log());
    let metrics = gateway.metrics();
    assert!(
        metrics.contains(&format!(
            r#"switchboard_calls_total{{direction="inbound",outcome="refused",reason="{reason}"}} 1"#
        )),
        "{metrics}"
    );
    assert!(sim.sessions().as_array().is_some_and(|s| s.is_empty()), "a refused call must not open a Realtime session");
}

#[test]
#[cfg_attr(not(has_sipp), ignore = "needs sipp (scripts/install-deps.sh)")]
fn unknown_number_gets_404() {
    refused(
        4,
        "unknown_number_gets_404",
        "0 101",
        "999",
        "404",
        "[agents.default]\nnumbers = [\"1555*\"]\n",
        "no_route",
    );
}

#[test]
#[cfg_attr(not(has_sipp), ignore = "needs sipp (scripts/install-deps.sh)")]
fn no_common_codec_gets_488() {
    refused(5, "no_common_codec_gets_488", "18", "15550001000", "488", "", "no_common_codec");
}

#[test]
#[cfg_attr(
    not(all(has_sipp, has_tshark, has_espeak_ng, has_python3, has_sox)),
    ignore = "needs sipp, tshark, espeak-ng, python3 and sox (scripts/install-deps.sh)"
)]
fn opus_pcap_replay_is_transcoded_both_ways() {
    let test = "opus_pcap_replay_is_transcoded_both_ways";
    let ports = Ports::for_slot(18);
    let dir = tools::scratch_dir(test);
    let speech = audio::make_speech(&dir);
    // Caller audio: speech then silence, Opus-encoded by the system libopus into an RTP pcap.
    let pcap_in = dir.join("caller_opus.pcap");
    let made = switchboard_e2e::procs::run_bounded(
        "opus_pcap.py",
        Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/opus_pcap.py"))
            .arg(&pcap_in)
            .arg("6")
            .arg(&speech.wav_8k),
        Duration::from_secs(60),
    );
    assert!(made.status.success(), "opus_pcap.py: {}", String::from_utf8_lossy(&made.stderr));
    let sim = Sim::start(ports, &["--behaviour", "echo"], &dir);
    let gateway = Gateway::start(ports, &sim.url(), "[agents.default]\ncodecs = [\"opus\", \"PCMU\"]\n", &dir);
    let capture = capture_media(ports, &dir);
    let formats = "111 0 101";
    let out = sipp::run(
        "uac_call.xml",
        &[
            ("FORMATS", formats),
            ("RTPMAPS", &sipp::rtpmaps(formats)),
            ("EXPECT_PT", "111"),
            ("MEDIA", &sipp::play_pcap(&pcap_in.display().to_string())),
        ],
        &dir,
        ports,
        "15550001000",
        9000,
    );
    let pcap_path = capture.finish();
    assert!(out.status.success(), "SIPp Opus call failed; gateway log:\n{}", gateway.log());
    assert!(gateway.log().contains("codec=Opus"), "the gateway must prefer Opus");

    let packets = pcap::read_rtp(&pcap_path);
    let to_caller: Vec<&RtpPacket> = packets.iter().filter(|p| p.dst.port() == ports.peer_media).collect();
    assert!(to_caller.len() > 300, "gateway sent only {} RTP packets", to_caller.len());
    assert!(to_caller.iter().all(|p| p.payload_type == 111), "Opus payload type 111 throughout");
    // RFC 7587 §4.1: the RTP clock is 48 kHz whatever the audio rate: 960 ticks per 20 ms.
    assert!(to_caller.windows(2).all(|w| w[1].timestamp.wrapping_sub(w[0].timestamp) == 960));
    // The echo agent answered with speech: Opus speech packets are far larger than silence ones.
    let speech_packets = to_caller.iter().filter(|p| p.payload.len() > 40).count();
    assert!(speech_packets > 50, "only {speech_packets} speech-sized Opus packets reached the caller");

    // The model got 24 kHz PCM and its VAD heard the caller's (decoded) speech.
    let sessions = sim.sessions();
    let events = sessions[0]["events"].as_array().expect("events");
    let update = events.iter().find(|e| e["event"]["type"] == "session.update").expect("session.update");
    assert_eq!(update["event"]["session"]["audio"]["input"]["format"]["type"], "audio/pcm");
    assert!(
        events.iter().any(|e| e["direction"] == "server" && e["event"]["type"] == "input_audio_buffer.speech_started"),
        "the decoded caller audio never sounded like speech to the model"
    );
}
