//! The Realtime side failing, end to end: the simulator in a fault mode (`switchboard-sim --help`)
//! against the release gateway, SIPp as the caller. A call is answered only once the session is
//! confirmed; every failure before that is a 503 within `realtime.connect_timeout_ms` with a
//! precise reason; a dead or hostile AI connection mid-call ends with BYE; a failed response is
//! answered by the agent's apology instead of silence.

use std::path::Path;
use std::time::{Duration, Instant};

use switchboard_e2e::pcap::{self, RtpPacket};
use switchboard_e2e::procs::{Capture, Gateway, Sim};
use switchboard_e2e::{Ports, audio, sip_raw, sipp, tools};

/// `connect_timeout_ms` in the harness's generated gateway config.
const SETUP_DEADLINE: Duration = Duration::from_millis(3000);
/// SIPp start-up, the ACK and scheduling on a loaded 2-core machine.
const MARGIN: Duration = Duration::from_millis(2500);

fn metric_line(outcome: &str, reason: &str) -> String {
    format!(r#"switchboard_calls_total{{direction="inbound",outcome="{outcome}",reason="{reason}"}} 1"#)
}

fn assert_recorded(gateway: &Gateway, outcome: &str, reason: &str) {
    // The call task records its end just after the last SIP message: give it a moment.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let metrics = gateway.metrics();
        if metrics.contains(&metric_line(outcome, reason)) {
            return;
        }
        assert!(Instant::now() < deadline, "no {outcome}/{reason} call recorded:\n{metrics}\nlog:\n{}", gateway.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One INVITE that must get `code` (503), with or without Retry-After, within the setup deadline.
fn refused_within_deadline(ports: Ports, dir: &Path, gateway: &Gateway, code: &str, retry_after: bool) -> Duration {
    let check = if retry_after { r#"check_it="true""# } else { r#"check_it_inverse="true""# };
    let started = Instant::now();
    let out = sipp::run(
        "uac_refused_retry_after.xml",
        &[("CODE", code), ("RETRY_CHECK", check)],
        dir,
        ports,
        "15550001000",
        0,
    );
    let elapsed = started.elapsed();
    assert!(
        out.status.success(),
        "expected {code} {} Retry-After; gateway log:\n{}",
        if retry_after { "with" } else { "without" },
        gateway.log()
    );
    elapsed
}

#[test]
#[cfg_attr(not(has_sipp), ignore = "needs sipp (scripts/install-deps.sh)")]
fn a_server_that_never_sends_session_created_gets_503_within_the_deadline() {
    let test = "never_sends_session_created";
    let ports = Ports::for_slot(38);
    let dir = tools::scratch_dir(test);
    let sim = Sim::start(ports, &["--no-session-created"], &dir);
    let gateway = Gateway::start(ports, &sim.url(), "", &dir);
    let elapsed = refused_within_deadline(ports, &dir, &gateway, "503", true);
    eprintln!("{test}: 503 after {elapsed:?}");
    assert!(elapsed >= SETUP_DEADLINE - Duration::from_millis(100), "refused before the deadline: {elapsed:?}");
    assert!(elapsed < SETUP_DEADLINE + MARGIN, "503 only after {elapsed:?}");
    assert_recorded(&gateway, "refused", "agent_timeout");
    assert!(gateway.log().contains("session.created"), "the log must say what was missing");
}

#[test]
#[cfg_attr(not(has_sipp), ignore = "needs sipp (scripts/install-deps.sh)")]
fn session_update_error_gets_503_and_so_does_a_delayed_offer() {
    let test = "error_for_session_update";
    let ports = Ports::for_slot(39);
    let dir = tools::scratch_dir(test);
    let sim = Sim::start(ports, &["--refuse-session-update"], &dir);
    let gateway = Gateway::start(ports, &sim.url(), "", &dir);
    let elapsed = refused_within_deadline(ports, &dir, &gateway, "503", true);
    eprintln!("{test}: 503 after {elapsed:?}");
    assert!(elapsed < MARGIN, "a refused update must be refused at once, not at the deadline: {elapsed:?}");
    assert_recorded(&gateway, "refused", "agent_session_refused");
    // The gateway sent nothing but the update: no audio into a session in the wrong format.
    let sessions = sim.sessions();
    let events = sessions[0]["events"].as_array().expect("events");
    assert!(
        !events.iter().any(|e| e["direction"] == "client" && e["event"]["type"] == "input_audio_buffer.append"),
        "audio was sent to a session whose formats were never confirmed"
    );

    // An INVITE without SDP (delayed offer) opens its session first, like any call: the same 503.
    let invite = "INVITE sip:15550001000@127.0.0.1 SIP/2.0\n\
                  Via: SIP/2.0/UDP LOCAL;branch=z9hG4bK-delayed-offer\n\
                  From: <sip:caller@127.0.0.1>;tag=abc\n\
                  To: <sip:15550001000@127.0.0.1>\n\
                  Call-ID: delayed-offer\n\
                  CSeq: 1 INVITE\n\
                  Contact: <sip:caller@LOCAL>\n\
                  Max-Forwards: 70\n\
                  Content-Length: 0\n\n";
    let answers = sip_raw::exchange(gateway.sip_addr(), invite, Duration::from_millis(800));
    assert!(answers.iter().any(|a| sip_raw::status_of(a) == Some(503)), "delayed offer: {answers:?}");
    assert!(!gateway.metrics().contains(r#"reason="no_common_codec""#), "{}", gateway.metrics());
}

#[test]
#[cfg_attr(not(has_sipp), ignore = "needs sipp (scripts/install-deps.sh)")]
fn refused_upgrades_get_503_with_retry_after() {
    let test = "refused_upgrades";
    let ports = Ports::for_slot(40);
    for (status, retry_after) in [("401", true), ("429", true), ("503", true)] {
        let dir = tools::scratch_dir(&format!("{test}_{status}"));
        let sim = Sim::start(ports, &["--reject-upgrade", status], &dir);
        let gateway = Gateway::start(ports, &sim.url(), "", &dir);
        let elapsed = refused_within_deadline(ports, &dir, &gateway, "503", retry_after);
        eprintln!("{test}: upgrade {status} -> 503 after {elapsed:?}");
        assert!(elapsed < MARGIN, "{elapsed:?}");
        assert_recorded(&gateway, "refused", "agent_rejected_upgrade");
        assert!(gateway.log().contains(&format!("HTTP {status}")), "the log must carry the upstream status");
        let class = if status == "503" { "5xx" } else { status };
        let failures = format!(r#"switchboard_realtime_connect_failures_total{{reason="http_{class}"}} 1"#);
        assert!(gateway.metrics().contains(&failures), "the metrics must carry the status class: {failures}");
        drop(gateway);
        drop(sim);
    }
}

#[test]
#[cfg_attr(not(has_sipp), ignore = "needs sipp (scripts/install-deps.sh)")]
fn other_confirmed_formats_are_converted_or_refused() {
    let test = "other_confirmed_formats";
    let ports = Ports::for_slot(41);

    // A-law confirmed for a µ-law call: no conversion exists, so no answer.
    let dir = tools::scratch_dir(&format!("{test}_pcma"));
    let sim = Sim::start(ports, &["--updated-format", "pcma"], &dir);
    let gateway = Gateway::start(ports, &sim.url(), "", &dir);
    refused_within_deadline(ports, &dir, &gateway, "503", true);
    assert_recorded(&gateway, "refused", "agent_format_mismatch");
    drop(gateway);
    drop(sim);

    // 24 kHz PCM confirmed for a µ-law call: the media code converts, and the call goes on
    // until the gateway's RTP timeout hangs up.
    let dir = tools::scratch_dir(&format!("{test}_pcm"));
    let sim = Sim::start(ports, &["--updated-format", "pcm"], &dir);
    let gateway =
        Gateway::start_with_env(ports, &sim.url(), "", &dir, &[("SWITCHBOARD__MEDIA__RTP_TIMEOUT_SECS", "2")]);
    let out = sipp::run("uac_wait_bye.xml", &[], &dir, ports, "15550001000", 0);
    assert!(out.status.success(), "the converted call was not answered; log:\n{}", gateway.log());
    assert_recorded(&gateway, "failed", "rtp_timeout");
    assert!(gateway.log().contains("converting"), "the conversion must be logged:\n{}", gateway.log());
}

#[test]
#[cfg_attr(not(has_sipp), ignore = "needs sipp (scripts/install-deps.sh)")]
fn a_server_that_stops_mid_call_gets_bye_within_the_watchdog_period() {
    let test = "server_stops_mid_call";
    let ports = Ports::for_slot(42);
    let dir = tools::scratch_dir(test);
    // The server answers pings for 4 s (two watchdog periods with no events at all: only pongs
    // keep the call up), then freezes: no events, no pongs.
    let stall = Duration::from_secs(4);
    let watchdog = Duration::from_secs(2);
    let sim = Sim::start(ports, &["--stall-after-secs", "4"], &dir);
    let gateway = Gateway::start_with_env(
        ports,
        &sim.url(),
        "",
        &dir,
        &[
            ("SWITCHBOARD__REALTIME__PING_INTERVAL_SECS", "1"),
            ("SWITCHBOARD__REALTIME__WATCHDOG_SECS", "2"),
            ("SWITCHBOARD__MEDIA__RTP_TIMEOUT_SECS", "30"),
        ],
    );
    let started = Instant::now();
    let out = sipp::run("uac_wait_bye.xml", &[], &dir, ports, "15550001000", 0);
    let elapsed = started.elapsed();
    eprintln!("{test}: BYE after {elapsed:?} (stall at {stall:?}, watchdog {watchdog:?})");
    assert!(out.status.success(), "no BYE after the server stopped; gateway log:\n{}", gateway.log());
    assert!(elapsed >= stall, "the call was dropped while the server still answered pings: {elapsed:?}");
    assert!(elapsed < stall + watchdog + MARGIN, "BYE only after {elapsed:?}");
    assert_recorded(&gateway, "failed", "agent_watchdog");
}

/// Peak resident memory of a process (`VmHWM`), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmHWM")
}

#[test]
#[cfg_attr(not(has_sipp), ignore = "needs sipp (scripts/install-deps.sh)")]
fn hostile_servers_cannot_grow_the_gateway_memory() {
    let test = "hostile_server_memory";
    let ports = Ports::for_slot(43);

    // One 50 MB message, 1 s after session.updated: refused from its frame header, BYE.
    let dir = tools::scratch_dir(&format!("{test}_huge_message"));
    let sim = Sim::start(ports, &["--huge-message-bytes", "50000000"], &dir);
    let gateway = Gateway::start(ports, &sim.url(), "", &dir);
    let before = peak_rss_kib(gateway.guard.pid());
    let started = Instant::now();
    let out = sipp::run("uac_wait_bye.xml", &[], &dir, ports, "15550001000", 0);
    let elapsed = started.elapsed();
    let peak = peak_rss_kib(gateway.guard.pid());
    eprintln!("{test}: 50 MB message: BYE after {elapsed:?}; gateway peak RSS {before} KiB before, {peak} KiB after");
    assert!(out.status.success(), "no BYE after the huge message; gateway log:\n{}", gateway.log());
    assert!(elapsed < Duration::from_secs(1) + MARGIN, "BYE only after {elapsed:?}");
    assert_recorded(&gateway, "failed", "agent_message_too_large");
    assert!(peak < before + 16 * 1024, "peak RSS grew from {before} to {peak} KiB for one message");
    drop(gateway);
    drop(sim);

    // Ten minutes of greeting audio sent as fast as possible: at most 5 s of it is queued, the
    // rest is dropped and counted; the call ends normally (RTP timeout: SIPp sends no RTP).
    let dir = tools::scratch_dir(&format!("{test}_audio_flood"));
    let sim = Sim::start(ports, &["--greeting-tone", "440:600000", "--speed", "0"], &dir);
    let gateway = Gateway::start_with_env(
        ports,
        &sim.url(),
        "[agents.default]\ngreeting = \"Hello\"\n",
        &dir,
        &[("SWITCHBOARD__REALTIME__MAX_QUEUED_AUDIO_SECS", "5"), ("SWITCHBOARD__MEDIA__RTP_TIMEOUT_SECS", "3")],
    );
    let before = peak_rss_kib(gateway.guard.pid());
    let out = sipp::run("uac_wait_bye.xml", &[], &dir, ports, "15550001000", 0);
    let peak = peak_rss_kib(gateway.guard.pid());
    assert!(out.status.success(), "the flooded call did not end normally; gateway log:\n{}", gateway.log());
    assert_recorded(&gateway, "failed", "rtp_timeout");
    let metrics = gateway.metrics();
    let dropped: u64 = metrics
        .lines()
        .find(|l| l.starts_with("switchboard_agent_audio_dropped_frames_total"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0);
    eprintln!("{test}: audio flood: {dropped} frames dropped; peak RSS {before} KiB before, {peak} KiB after");
    // 10 min = 30,000 frames of 20 ms; at most 5 s (250 frames) queued, 3 s of it played.
    assert!(dropped >= 29_000, "only {dropped} frames dropped:\n{metrics}");
    assert!(peak < before + 32 * 1024, "peak RSS grew from {before} to {peak} KiB");
}

#[test]
#[cfg_attr(
    not(all(has_sipp, has_tshark, has_espeak_ng)),
    ignore = "needs sipp, tshark and espeak-ng (scripts/install-deps.sh)"
)]
fn a_failed_response_is_followed_by_the_apology_not_silence() {
    let test = "failed_response_apology";
    let ports = Ports::for_slot(44);
    let dir = tools::scratch_dir(test);
    let speech = audio::make_speech(&dir);
    let mut stream = std::fs::read(&speech.ulaw).expect("speech");
    stream.extend(std::iter::repeat_n(0xFF, 8000 * 3));
    let stream_path = dir.join("stream.ul");
    std::fs::write(&stream_path, stream).expect("write stream");
    // Responses to the caller's speech fail; a client response.create (the apology) is answered
    // with a 1 s 440 Hz tone, which is what the caller must hear.
    let sim = Sim::start(ports, &["--fail-responses", "--greeting-tone", "440:1000"], &dir);
    let gateway = Gateway::start(ports, &sim.url(), "", &dir);
    let filter = format!("udp and portrange {}-{}", ports.peer_media, ports.peer_media + 3);
    let capture = Capture::start(&filter, &dir.join("media.pcap"), 60);
    let out = sipp::run(
        "uac_call.xml",
        &[
            ("FORMATS", "0"),
            ("RTPMAPS", &sipp::rtpmaps("0")),
            ("EXPECT_PT", "0"),
            ("MEDIA", &sipp::rtp_stream(&stream_path.display().to_string(), "0")),
        ],
        &dir,
        ports,
        "15550001000",
        9000,
    );
    let pcap_path = capture.finish();
    assert!(out.status.success(), "call failed; gateway log:\n{}", gateway.log());

    let metrics = gateway.metrics();
    assert!(metrics.contains(r#"switchboard_realtime_failed_responses_total{reason="server_error"} 1"#), "{metrics}");
    let sessions = sim.sessions();
    let events = sessions[0]["events"].as_array().expect("events");
    let apologies =
        events.iter().filter(|e| e["direction"] == "client" && e["event"]["event_id"] == "evt_apology").count();
    assert_eq!(apologies, 1, "one apology per failure");

    // The caller heard the tone: 20 ms frames where 440 Hz dominates.
    let packets = pcap::read_rtp(&pcap_path);
    let to_caller: Vec<&RtpPacket> = packets.iter().filter(|p| p.dst.port() == ports.peer_media).collect();
    let tone_frames = to_caller
        .iter()
        .filter(|p| {
            let samples: Vec<i16> = p.payload.iter().map(|&b| audio::ulaw_to_linear(b)).collect();
            let tone = audio::goertzel(&samples, 8000.0, 440.0);
            tone > 1.0e5 && tone > 20.0 * audio::goertzel(&samples, 8000.0, 1000.0)
        })
        .count();
    eprintln!("{test}: {tone_frames} frames of the apology tone reached the caller");
    assert!(tone_frames >= 25, "the caller heard silence: {tone_frames} tone frames");
}

#[test]
#[cfg_attr(not(has_sipp), ignore = "needs sipp (scripts/install-deps.sh)")]
fn cancel_during_session_setup_gets_487_and_is_recorded_as_cancelled() {
    let test = "cancel_during_setup";
    let ports = Ports::for_slot(45);
    let dir = tools::scratch_dir(test);
    // The session is connected and created at once, but session.updated takes 2 s: the CANCEL
    // (200 ms after 180 Ringing) lands while the gateway waits for it.
    let sim = Sim::start(ports, &["--session-update-delay-ms", "2000"], &dir);
    let gateway = Gateway::start(ports, &sim.url(), "", &dir);
    let out = sipp::run("uac_cancel.xml", &[], &dir, ports, "15550001000", 0);
    assert!(out.status.success(), "CANCEL during setup did not get 200 + 487; gateway log:\n{}", gateway.log());
    assert_recorded(&gateway, "cancelled", "caller_cancel");
    let metrics = gateway.metrics();
    assert!(!metrics.contains(r#"reason="caller_bye""#), "no dialog may exist:\n{metrics}");
    assert!(metrics.contains("switchboard_calls_active 0"), "{metrics}");
    assert_eq!(sim.sessions().as_array().map(Vec::len), Some(1), "the session was being set up");
}
