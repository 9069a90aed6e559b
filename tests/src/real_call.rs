//! "The gateway still carries a real call": one PCMU call through the gateway to the simulator's
//! echo agent, judged by the audio that came back (speech envelope correlation), not by the SIP
//! exchange alone. Used after a test has fed the gateway hostile input.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::audio::{self, Speech};
use crate::baresip::{self, Phone};
use crate::pcap::{self, RtpPacket};
use crate::procs::{Capture, Gateway, run_bounded};
use crate::{Ports, sipp};

/// The correlation a working echo call reaches (the other e2e tests use the same bar).
pub const MIN_CORRELATION: f64 = 0.8;

/// A SIPp call (tests/scenarios/uac_call.xml) offering PCMU that streams speech then 1.5 s of
/// silence; asserts the call completed, RTP came back with PT 0, and the echoed speech correlates.
/// Returns the correlation.
pub fn sipp_pcmu_echo_call(ports: Ports, gateway: &Gateway, dir: &Path) -> f64 {
    let Speech { wav_8k, ulaw, .. } = audio::make_speech(dir);
    let mut stream = std::fs::read(&ulaw).expect("read speech");
    stream.extend(std::iter::repeat_n(0xFF_u8, 8000 * 3 / 2)); // µ-law silence
    let stream_path = dir.join("real_call.ul");
    std::fs::write(&stream_path, stream).expect("write stream file");
    let filter = format!(
        "udp and (portrange {}-{} or portrange {}-{})",
        ports.rtp_first,
        ports.rtp_last,
        ports.peer_media,
        ports.peer_media + 3
    );
    let capture = Capture::start(&filter, &dir.join("real_call.pcap"), 60);
    let out = sipp::run(
        "uac_call.xml",
        &[
            ("FORMATS", "0 101"),
            ("RTPMAPS", &sipp::rtpmaps("0 101")),
            ("EXPECT_PT", "0"),
            ("MEDIA", &sipp::rtp_stream(&stream_path.display().to_string(), "0")),
        ],
        dir,
        ports,
        "15550001000",
        9000,
    );
    let pcap_path = capture.finish();
    assert!(out.status.success(), "the real call after the test failed (SIPp); gateway log:\n{}", gateway.log());
    let packets = pcap::read_rtp(&pcap_path);
    let to_caller: Vec<&RtpPacket> = packets.iter().filter(|p| p.dst.port() == ports.peer_media).collect();
    assert!(to_caller.len() > 300, "the gateway sent only {} RTP packets to the caller", to_caller.len());
    assert!(to_caller.iter().all(|p| p.payload_type == 0), "PCMU was negotiated");
    let received: Vec<i16> =
        to_caller.iter().flat_map(|p| p.payload.iter().map(|&b| audio::ulaw_to_linear(b))).collect();
    let (_, reference) = audio::read_wav(&wav_8k);
    let (_, r) = audio::best_lag_correlation(&audio::envelope(&reference, 160), &audio::envelope(&received, 160), 600);
    assert!(r >= MIN_CORRELATION, "the real call's echo correlates only {r:.3} with the speech sent");
    r
}

/// A baresip call (a real softphone) offering PCMU: plays speech, records what it hears. Asserts
/// the recording's speech envelope correlates with what was played; returns the correlation.
pub fn baresip_pcmu_echo_call(ports: Ports, gateway: &Gateway, dir: &Path) -> f64 {
    let speech = audio::make_speech(dir);
    // Speech, then silence long enough for the echo to come back before baresip hangs up.
    let source = dir.join("speech_then_silence.wav");
    let padded = run_bounded(
        "sox",
        Command::new("sox").arg(&speech.wav_8k).arg(&source).args(["pad", "0", "7"]),
        Duration::from_secs(30),
    );
    assert!(padded.status.success(), "sox pad failed");
    let phone = Phone::alice(ports, &source);
    let conf = phone.folder(dir);
    let out = run_bounded(
        "baresip",
        Command::new("baresip")
            .arg("-f")
            .arg(&conf)
            .args(["-u", "audio_codecs=PCMU", "-t", "16"])
            .arg("-e")
            .arg(format!("/dial sip:15550001000@127.0.0.1:{}", ports.sip)),
        Duration::from_secs(40),
    );
    let (rate, heard) = baresip::heard(dir, phone.name).unwrap_or_else(|| {
        panic!(
            "baresip recorded nothing; baresip said:\n{}\ngateway log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            gateway.log()
        )
    });
    let (original_rate, original) = audio::read_wav(&speech.wav_8k);
    let (_, r) = audio::best_lag_correlation(
        &audio::envelope(&original, (original_rate / 50) as usize),
        &audio::envelope(&heard, (rate / 50) as usize),
        600,
    );
    assert!(r >= MIN_CORRELATION, "the echo baresip heard correlates only {r:.3} with the speech it played");
    r
}
