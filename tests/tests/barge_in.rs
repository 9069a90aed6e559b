//! Barge-in: while the agent is talking (a 20 s greeting), the caller speaks. The gateway must stop
//! sending agent audio within 40 ms of `speech_started` reaching it, and the `audio_end_ms` of its
//! truncate must match, within 40 ms, the agent audio the caller actually received (per capture).

use std::path::Path;

use switchboard_e2e::audio::{self, Speech};
use switchboard_e2e::pcap::{self, RtpPacket};
use switchboard_e2e::procs::{Capture, Gateway, Sim};
use switchboard_e2e::{Ports, sipp, tools};

const TONE_HZ: f64 = 440.0;

/// 3 s of silence, then speech, then 1 s of silence, as raw µ-law.
fn silence_speech_silence(speech: &Path, dir: &Path) -> String {
    let mut audio = vec![0xFFu8; 8000 * 3];
    audio.extend(std::fs::read(speech).expect("read speech"));
    audio.extend(std::iter::repeat_n(0xFF, 8000));
    let path = dir.join("barge.ul");
    std::fs::write(&path, audio).expect("write");
    path.display().to_string()
}

/// A packet carries agent audio when the greeting tone dominates it (silence frames do not).
fn carries_tone(packet: &RtpPacket) -> bool {
    let samples: Vec<i16> = packet.payload.iter().map(|&b| audio::ulaw_to_linear(b)).collect();
    let rms = (samples.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / samples.len() as f64).sqrt();
    rms > 300.0 && audio::goertzel(&samples, 8000.0, TONE_HZ) > audio::goertzel(&samples, 8000.0, 1000.0) * 10.0
}

#[test]
#[cfg_attr(
    not(all(has_sipp, has_tshark, has_espeak_ng)),
    ignore = "needs sipp, tshark and espeak-ng (scripts/install-deps.sh)"
)]
fn barge_in_flushes_agent_audio_and_truncates_to_what_was_heard() {
    let test = "barge_in_flushes_agent_audio";
    let ports = Ports::for_slot(11);
    let dir = tools::scratch_dir(test);
    let Speech { ulaw, .. } = audio::make_speech(&dir);
    let stream = silence_speech_silence(&ulaw, &dir);
    let sim = Sim::start(ports, &["--behaviour", "echo", "--greeting-tone", "440:20000"], &dir);
    let gateway =
        Gateway::start(ports, &sim.url(), "[agents.default]\ngreeting = \"Welcome to the test line.\"\n", &dir);
    let filter = format!("udp and dst portrange {}-{}", ports.peer_media, ports.peer_media + 3);
    let capture = Capture::start(&filter, &dir.join("to_caller.pcap"), 60);

    let formats = "0 101";
    let out = sipp::run(
        "uac_call.xml",
        &[
            ("FORMATS", formats),
            ("RTPMAPS", &sipp::rtpmaps(formats)),
            ("EXPECT_PT", "0"),
            ("MEDIA", &sipp::rtp_stream(&stream, "0")),
        ],
        &dir,
        ports,
        "15550001000",
        6000,
    );
    let pcap_path = capture.finish();
    assert!(out.status.success(), "SIPp call failed; gateway log:\n{}", gateway.log());

    let sessions = sim.sessions();
    let events = sessions[0]["events"].as_array().expect("events").clone();
    let speech_started_us = events
        .iter()
        .find(|e| e["direction"] == "server" && e["event"]["type"] == "input_audio_buffer.speech_started")
        .and_then(|e| e["at_unix_us"].as_i64())
        .expect("the simulator detected the caller's speech");
    let truncate = events
        .iter()
        .find(|e| e["direction"] == "client" && e["event"]["type"] == "conversation.item.truncate")
        .expect("the gateway sent conversation.item.truncate");
    let audio_end_ms = truncate["event"]["audio_end_ms"].as_i64().expect("audio_end_ms");

    let to_caller: Vec<RtpPacket> = pcap::read_rtp(&pcap_path);
    let tone: Vec<&RtpPacket> = to_caller.iter().filter(|p| carries_tone(p)).collect();
    assert!(tone.len() > 50, "the greeting reached the caller ({} tone packets)", tone.len());
    let last_tone_us = tone.last().map(|p| p.time_us).unwrap_or_default();
    let stop_delay_ms = (last_tone_us - speech_started_us) as f64 / 1000.0;
    eprintln!("{test}: agent audio stopped {stop_delay_ms:.1} ms after speech_started");
    assert!(
        tone.iter().any(|p| p.time_us < speech_started_us && p.time_us > speech_started_us - 100_000),
        "the agent was still talking when the caller barged in"
    );
    assert!(stop_delay_ms <= 40.0, "agent audio continued {stop_delay_ms:.1} ms after speech_started");

    let heard_ms = tone.len() as i64 * 20;
    eprintln!("{test}: truncate audio_end_ms = {audio_end_ms}, caller received {heard_ms} ms of agent audio");
    assert!((audio_end_ms - heard_ms).abs() <= 40, "audio_end_ms {audio_end_ms} vs {heard_ms} ms received");
    assert!(gateway.metrics().contains("switchboard_barge_ins_total 1"));
}
