//! Running SIPp scenarios from `tests/scenarios/`, with placeholders filled in.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::Ports;
use crate::procs::run_bounded;
use crate::tools;

/// rtpmap lines for the formats a test offers.
pub fn rtpmaps(formats: &str) -> String {
    formats
        .split_whitespace()
        .map(|pt| match pt {
            "0" => "      a=rtpmap:0 PCMU/8000".to_string(),
            "8" => "      a=rtpmap:8 PCMA/8000".to_string(),
            "18" => "      a=rtpmap:18 G729/8000".to_string(),
            "111" => "      a=rtpmap:111 opus/48000/2\n      a=fmtp:111 useinbandfec=1".to_string(),
            "101" => "      a=rtpmap:101 telephone-event/8000\n      a=fmtp:101 0-16".to_string(),
            other => panic!("no rtpmap for {other}"),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The media action that streams a raw G.711 file once as payload type `pt`.
pub fn rtp_stream(path: &str, pt: &str) -> String {
    format!("rtp_stream=\"{path},1,{pt}\"")
}

/// The media action that replays the RTP packets of a pcap with their original timing.
pub fn play_pcap(path: &str) -> String {
    format!("play_pcap_audio=\"{path}\"")
}

/// Fills `@KEY@` placeholders of a scenario into `dir` and runs SIPp against the gateway once.
/// `pause_ms` is the length of the scenario's `<pause/>`.
pub fn run(
    scenario: &str,
    placeholders: &[(&str, &str)],
    dir: &Path,
    ports: Ports,
    service: &str,
    pause_ms: u32,
) -> Output {
    let mut text = std::fs::read_to_string(tools::scenario(scenario)).expect("read scenario");
    for (key, value) in placeholders {
        text = text.replace(&format!("@{key}@"), value);
    }
    assert!(!text.contains("@FORMATS@") && !text.contains("@MEDIA@"), "unfilled placeholder in {scenario}");
    let path = dir.join(scenario);
    std::fs::write(&path, text).expect("write scenario");
    let output = run_bounded(
        "sipp",
        Command::new("sipp")
            .arg(format!("127.0.0.1:{}", ports.sip))
            .arg("-sf")
            .arg(&path)
            .args(["-s", service, "-i", "127.0.0.1", "-mi", "127.0.0.1"])
            .args(["-p", &ports.peer_sip.to_string(), "-mp", &ports.peer_media.to_string()])
            .args(["-d", &pause_ms.to_string(), "-m", "1", "-nostdin", "-timeout", "40s", "-timeout_error"])
            .arg("-trace_err")
            .arg("-error_file")
            .arg(dir.join("sipp_errors.log"))
            .current_dir(dir),
        Duration::from_secs(60),
    );
    if !output.status.success() {
        eprintln!(
            "sipp {scenario} failed ({}):\n{}\n{}\nerrors:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(dir.join("sipp_errors.log")).unwrap_or_default()
        );
    }
    output
}
