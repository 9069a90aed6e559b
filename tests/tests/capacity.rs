//! The media clock and capacity admission in the release binary: a call's outbound RTP is sent
//! by the one media clock (every packet it sent has a lateness sample, the stream is continuous),
//! the capacity gauges are exported and stay open for a single call, and `switchboard check`
//! refuses inconsistent saturation marks. Saturation itself (503 to INVITE and OPTIONS, /readyz)
//! is tested in-process in `app.rs`, where it can be driven without loading the machine.
//! Loopback only, slot 24.

use std::process::Command;
use std::time::Duration;

use switchboard_e2e::pcap::{self, RtpPacket};
use switchboard_e2e::procs::{Capture, Gateway, Sim, run_bounded};
use switchboard_e2e::{Ports, audio, sipp, tools};

const SLOT: u16 = 24;

/// Value of an unlabelled sample in Prometheus text.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
#[cfg_attr(
    not(all(has_sipp, has_tshark, has_espeak_ng)),
    ignore = "needs sipp, tshark and espeak-ng (scripts/install-deps.sh)"
)]
fn a_call_is_paced_by_the_media_clock_and_admission_stays_open() {
    let test = "a_call_is_paced_by_the_media_clock";
    let ports = Ports::for_slot(SLOT);
    let dir = tools::scratch_dir(test);
    let speech = audio::make_speech(&dir);
    let sim = Sim::start(ports, &["--behaviour", "echo"], &dir);
    let gateway = Gateway::start(ports, &sim.url(), "", &dir);
    let filter = format!("udp and portrange {}-{} and dst port {}", ports.rtp_first, ports.rtp_last, ports.peer_media);
    let capture = Capture::start(&filter, &dir.join("media.pcap"), 60);

    let out = sipp::run(
        "uac_call.xml",
        &[
            ("FORMATS", "0 101"),
            ("RTPMAPS", &sipp::rtpmaps("0 101")),
            ("EXPECT_PT", "0"),
            ("MEDIA", &sipp::rtp_stream(&speech.ulaw.display().to_string(), "0")),
        ],
        &dir,
        ports,
        "15550001000",
        6000,
    );
    let pcap_path = capture.finish();
    assert!(out.status.success(), "SIPp call failed; gateway log:\n{}", gateway.log());

    let packets = pcap::read_rtp(&pcap_path);
    let to_caller: Vec<&RtpPacket> = packets.iter().filter(|p| p.dst.port() == ports.peer_media).collect();
    assert!(to_caller.len() > 200, "gateway sent only {} RTP packets", to_caller.len());
    // One continuous stream: the clock served the call every slot, in order.
    assert!(to_caller.windows(2).all(|w| w[0].ssrc == w[1].ssrc));
    assert!(to_caller.windows(2).all(|w| w[1].sequence == w[0].sequence.wrapping_add(1)));
    assert!(to_caller.windows(2).all(|w| w[1].timestamp == w[0].timestamp.wrapping_add(160)));

    let metrics = gateway.metrics();
    // Every packet the clock sent was measured; nothing was dropped at the socket.
    let measured = sample(&metrics, "switchboard_rtp_send_lateness_seconds_count").unwrap_or(0.0);
    assert!(measured >= to_caller.len() as f64, "{measured} lateness samples for {} packets", to_caller.len());
    let dropped: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("switchboard_rtp_send_dropped_total{") && !l.ends_with(" 0"))
        .collect();
    assert!(dropped.is_empty(), "{dropped:?}");
    // The capacity gauges exist, and one call does not saturate the gateway.
    assert_eq!(sample(&metrics, "switchboard_capacity_saturated"), Some(0.0), "{metrics}");
    assert!(sample(&metrics, "switchboard_media_clock_lateness_p99_seconds").is_some(), "{metrics}");
    assert!(!metrics.contains(r#"reason="saturated""#), "{metrics}");
}

#[test]
fn check_refuses_a_recovery_mark_above_the_saturation_mark() {
    let dir = tools::scratch_dir("check_refuses_inconsistent_saturation_marks");
    let config = dir.join("marks.toml");
    std::fs::write(&config, "[calls]\nsaturation_lateness_ms = 5\nrecovery_lateness_ms = 20\n").unwrap();
    let out = run_bounded(
        "switchboard check",
        Command::new(tools::gateway_binary()).arg("check").arg("--config").arg(&config),
        Duration::from_secs(10),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("calls.recovery_lateness_ms"), "{stderr}");
}
