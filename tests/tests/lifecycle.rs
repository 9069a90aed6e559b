//! The gateway's life around calls: `check`, the offline agent, the RTP timeout, and SIGTERM.

use std::process::Command;
use std::time::Duration;

use switchboard_e2e::procs::{Gateway, Sim, run_bounded};
use switchboard_e2e::{Ports, audio, sipp, tools};

#[test]
fn check_lists_every_problem_with_its_key_and_fails() {
    let dir = tools::scratch_dir("check_lists_every_problem");
    let config = dir.join("bad.toml");
    std::fs::write(
        &config,
        "[sip]\nudp = \"nowhere\"\n[media]\nrtp_ports = \"5-1\"\nbogus = 1\n[agents.default]\nvoice = \"robot\"\n",
    )
    .unwrap();
    let out = run_bounded(
        "switchboard check",
        Command::new(tools::gateway_binary()).arg("check").arg("--config").arg(&config),
        Duration::from_secs(10),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for key in ["sip.udp", "media.rtp_ports", "media.bogus", "agents.default.voice"] {
        assert!(stderr.contains(key), "`{key}` missing from:\n{stderr}");
    }

    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/switchboard.toml");
    let out = run_bounded(
        "switchboard check",
        Command::new(tools::gateway_binary()).arg("check").arg("--config").arg(shipped).env_remove("OPENAI_API_KEY"),
        Duration::from_secs(10),
    );
    assert!(out.status.success(), "the shipped config must pass: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
#[cfg_attr(not(all(has_sipp, has_espeak_ng)), ignore = "needs sipp and espeak-ng (scripts/install-deps.sh)")]
fn offline_agent_answers_without_an_api_key() {
    let test = "offline_agent_answers_without_an_api_key";
    let ports = Ports::for_slot(12);
    let dir = tools::scratch_dir(test);
    let speech = audio::make_speech(&dir);
    let mut stream = std::fs::read(&speech.ulaw).unwrap();
    stream.extend(std::iter::repeat_n(0xFF, 8000 * 2));
    let stream_path = dir.join("stream.ul");
    std::fs::write(&stream_path, stream).unwrap();
    let gateway = Gateway::start(ports, "", "", &dir);
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
        8000,
    );
    assert!(out.status.success(), "call failed; gateway log:\n{}", gateway.log());
    assert!(gateway.log().contains("OFFLINE AGENT"), "the log must say the offline agent answers");
    let metrics = gateway.metrics();
    assert!(
        metrics.contains(r#"switchboard_calls_total{direction="inbound",outcome="completed",reason="caller_bye"} 1"#),
        "{metrics}"
    );
    // The echo agent answered: more than the 20 ms silence packets a quiet agent would send.
    let out_packets: u64 = metrics
        .lines()
        .find(|l| l.starts_with(r#"switchboard_rtp_packets_total{direction="out"}"#))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0);
    assert!(out_packets > 300, "{out_packets} RTP packets sent");
}

#[test]
#[cfg_attr(not(has_sipp), ignore = "needs sipp (scripts/install-deps.sh)")]
fn rtp_timeout_ends_the_call_with_bye() {
    let test = "rtp_timeout_ends_the_call_with_bye";
    let ports = Ports::for_slot(13);
    let dir = tools::scratch_dir(test);
    let gateway = Gateway::start_with_env(ports, "", "", &dir, &[("SWITCHBOARD__MEDIA__RTP_TIMEOUT_SECS", "2")]);
    let out = sipp::run("uac_wait_bye.xml", &[], &dir, ports, "15550001000", 0);
    assert!(out.status.success(), "no BYE after the RTP timeout; gateway log:\n{}", gateway.log());
    std::thread::sleep(Duration::from_millis(200));
    let metrics = gateway.metrics();
    assert!(
        metrics.contains(r#"switchboard_calls_total{direction="inbound",outcome="failed",reason="rtp_timeout"} 1"#),
        "{metrics}"
    );
}

#[test]
#[cfg_attr(not(has_sipp), ignore = "needs sipp (scripts/install-deps.sh)")]
fn sigterm_without_drain_hangs_up_every_call_and_exits_cleanly() {
    let test = "sigterm_hangs_up_every_call";
    let ports = Ports::for_slot(14);
    let dir = tools::scratch_dir(test);
    // No drain: SIGTERM hangs up at once (tests/tests/drain.rs covers the drain).
    let mut gateway = Gateway::start_with_env(ports, "", "", &dir, &[("SWITCHBOARD__CALLS__DRAIN_SECS", "0")]);
    let sipp_dir = dir.clone();
    let caller = std::thread::spawn(move || sipp::run("uac_wait_bye.xml", &[], &sipp_dir, ports, "15550001000", 0));
    // Wait until the call is answered (a call still in setup at shutdown gets 503 instead).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !gateway.metrics().contains("switchboard_call_setup_seconds_count 1") {
        assert!(std::time::Instant::now() < deadline, "call never came up; log:\n{}", gateway.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = gateway.guard.terminate(Duration::from_secs(15));
    let out = caller.join().unwrap();
    assert!(out.status.success(), "the caller got no BYE on shutdown; gateway log:\n{}", gateway.log());
    assert_eq!(status.and_then(|s| s.code()), Some(0), "gateway exit; log:\n{}", gateway.log());
    assert!(gateway.log().contains("reason=GatewayShutdown"), "{}", gateway.log());
}

#[test]
#[cfg_attr(not(has_sipp), ignore = "needs sipp (scripts/install-deps.sh)")]
fn record_route_is_mirrored_and_our_bye_follows_the_route_set() {
    let test = "record_route_is_mirrored";
    let ports = Ports::for_slot(15);
    let dir = tools::scratch_dir(test);
    let gateway = Gateway::start_with_env(ports, "", "", &dir, &[("SWITCHBOARD__MEDIA__RTP_TIMEOUT_SECS", "1")]);
    let out = sipp::run("uac_record_route.xml", &[], &dir, ports, "15550001000", 0);
    assert!(out.status.success(), "route set not honoured; gateway log:\n{}", gateway.log());
}

/// SIGTERM (no drain) while a call is still being set up (its `session.updated` is slow): the call is refused
/// with 503 and Retry-After so a proxy can send it elsewhere, never answered only to be hung up,
/// and the gateway still exits cleanly.
#[test]
#[cfg_attr(not(has_sipp), ignore = "needs sipp (scripts/install-deps.sh)")]
fn sigterm_during_call_setup_refuses_the_call_with_503() {
    let test = "sigterm_during_call_setup";
    let ports = Ports::for_slot(19);
    let dir = tools::scratch_dir(test);
    let sim = Sim::start(ports, &["--session-update-delay-ms", "2000"], &dir);
    // No drain (which would let the call in setup complete): shutdown at once.
    let mut gateway = Gateway::start_with_env(ports, &sim.url(), "", &dir, &[("SWITCHBOARD__CALLS__DRAIN_SECS", "0")]);
    let sipp_dir = dir.clone();
    let caller = std::thread::spawn(move || {
        sipp::run(
            "uac_refused_retry_after.xml",
            &[("CODE", "503"), ("RETRY_CHECK", r#"check_it="true""#)],
            &sipp_dir,
            ports,
            "15550001000",
            0,
        )
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !gateway.metrics().contains("switchboard_calls_active 1") {
        assert!(std::time::Instant::now() < deadline, "call never arrived; log:\n{}", gateway.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = gateway.guard.terminate(Duration::from_secs(15));
    let out = caller.join().unwrap();
    assert!(out.status.success(), "the caller in setup did not get 503 + Retry-After; log:\n{}", gateway.log());
    assert_eq!(status.and_then(|s| s.code()), Some(0), "gateway exit; log:\n{}", gateway.log());
    assert!(
        !gateway.log().contains("answered setup_ms"),
        "a call in setup at shutdown must not be answered:\n{}",
        gateway.log()
    );
}
