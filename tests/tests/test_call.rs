//! `switchboard test-call` (issue 12) against the release gateway's offline echo agent and
//! against SIPp callees: the exit status, report.json, junit.xml and the stereo WAV are the
//! judges. Every process is bounded by a timeout and killed by PID.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use switchboard_e2e::procs::{ChildGuard, Gateway, Sim, run_bounded};
use switchboard_e2e::{Ports, tools};

/// The longest one test-call run may take (20 calls in load mode included).
const RUN_LIMIT: Duration = Duration::from_secs(90);

/// Runs `switchboard test-call` with `config` and a scenario written from `scenario_toml`;
/// reports go to `dir/report`.
fn test_call(dir: &Path, config: &Path, scenario_toml: &str, extra_args: &[&str]) -> (Output, PathBuf) {
    let scenario = dir.join("scenario.toml");
    std::fs::write(&scenario, scenario_toml).expect("write scenario");
    let reports = dir.join("report");
    let output = run_bounded(
        "switchboard test-call",
        Command::new(tools::gateway_binary())
            .arg("test-call")
            .arg("--config")
            .arg(config)
            .arg("--scenario")
            .arg(&scenario)
            .arg("--report-dir")
            .arg(&reports)
            .args(extra_args)
            .env_remove("OPENAI_API_KEY")
            .env_remove("RUST_LOG"),
        RUN_LIMIT,
    );
    std::fs::write(dir.join("test-call.out"), &output.stdout).expect("keep stdout");
    std::fs::write(dir.join("test-call.err"), &output.stderr).expect("keep stderr");
    (output, reports)
}

fn describe(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn report_json(reports: &Path) -> Value {
    let text = std::fs::read_to_string(reports.join("report.json")).expect("report.json written");
    serde_json::from_str(&text).expect("report.json is JSON")
}

/// A test-call configuration for a SIPp callee: loopback addresses, no API key.
fn plain_config(dir: &Path, ports: Ports) -> PathBuf {
    let path = dir.join("test-call.toml");
    let text = format!(
        "[sip]\nudp = \"127.0.0.1:{}\"\ntcp = \"\"\nt1_ms = 100\n\
         [media]\naddress = \"127.0.0.1\"\nbind = \"127.0.0.1\"\n[realtime]\napi_key = \"\"\n",
        ports.sip
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// SIPp as a callee on the slot's peer ports, in the background, for one call.
fn sipp_callee(scenario: &str, dir: &Path, ports: Ports) -> ChildGuard {
    let log = std::fs::File::create(dir.join(format!("{scenario}.out"))).expect("sipp log");
    let guard = ChildGuard::spawn(
        "sipp",
        Command::new("sipp")
            .arg("-sf")
            .arg(tools::scenario(scenario))
            .args(["-i", "127.0.0.1", "-mi", "127.0.0.1"])
            .args(["-p", &ports.peer_sip.to_string(), "-mp", &ports.peer_media.to_string()])
            .args(["-m", "1", "-nostdin", "-timeout", "30s", "-timeout_error"])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log),
    );
    // SIPp binds its UDP port at once; give it a moment before we dial.
    std::thread::sleep(Duration::from_millis(300));
    guard
}

/// The stereo WAV's channels (16-bit PCM, 2 channels): (left, right, rate).
fn read_stereo(path: &Path) -> (Vec<i16>, Vec<i16>, u32) {
    let bytes = std::fs::read(path).expect("WAV written");
    assert_eq!(&bytes[0..4], b"RIFF");
    assert_eq!(u16::from_le_bytes([bytes[22], bytes[23]]), 2, "stereo");
    let rate = u32::from_le_bytes([bytes[24], bytes[25], bytes[26], bytes[27]]);
    let samples: Vec<i16> = bytes[44..].chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect();
    let left = samples.iter().step_by(2).copied().collect();
    let right = samples.iter().skip(1).step_by(2).copied().collect();
    (left, right, rate)
}

fn rms(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    (samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum::<f64>() / samples.len() as f64).sqrt()
}

fn two_turns(ports: Ports, second_expects: &str) -> String {
    format!(
        "name = \"echo\"\ntarget = \"sip:agent@127.0.0.1:{}\"\n\
         [[turns]]\nsay = \"Hello I would like to check my order.\"\nexpect_within_ms = 3000\nexpect_says = \"transcribed audio\"\n\
         [[turns]]\nsay = \"Thank you goodbye.\"\nwait_ms = 200\nexpect_within_ms = 3000\nexpect_says = \"{second_expects}\"\n",
        ports.sip
    )
}

#[test]
#[cfg_attr(not(has_espeak_ng), ignore = "needs espeak-ng (scripts/install-deps.sh)")]
fn a_two_turn_scenario_against_the_echo_agent_passes_with_latencies() {
    let test = "test_call_two_turns_pass";
    let dir = tools::scratch_dir(test);
    let ports = Ports::for_slot(124);
    let gateway = Gateway::start(ports, "", "", &dir);
    let (output, reports) = test_call(&dir, &dir.join("switchboard.toml"), &two_turns(ports, "transcribed"), &[]);
    assert_eq!(output.status.code(), Some(0), "{}\ngateway log:\n{}", describe(&output), gateway.log());
    let report = report_json(&reports);
    assert_eq!(report["passed"], true);
    let call = &report["calls"][0];
    assert_eq!(call["connected"], true);
    assert_eq!(call["codec"], "PCMU");
    let turns = call["turns"].as_array().expect("turns");
    assert_eq!(turns.len(), 2);
    for turn in turns {
        let latency = turn["latency_ms"].as_u64().unwrap_or_else(|| panic!("latency_ms in {turn}"));
        // The echo agent answers after its VAD's silence (hundreds of ms), never at once.
        assert!((100..3000).contains(&latency), "latency {latency} ms in {turn}");
        let transcript = turn["transcript"].as_str().expect("transcript");
        assert!(transcript.starts_with("transcribed audio "), "{transcript}");
        assert!(turn["agent_end_ms"].as_u64() > turn["agent_first_audio_ms"].as_u64(), "{turn}");
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("call 1: PASS"), "{stdout}");
    // The recording: stereo, 8 kHz, the agent's answer in the right channel while the left
    // (the caller) is quiet, and the caller's speech in the left channel.
    let (left, right, rate) = read_stereo(&reports.join("call-1.wav"));
    assert_eq!(rate, 8000);
    let at = |ms: &Value| ms.as_u64().expect("ms") as usize * 8;
    let answer = at(&turns[0]["agent_first_audio_ms"])..at(&turns[0]["agent_end_ms"]);
    let speech = at(&turns[0]["caller_start_ms"])..at(&turns[0]["caller_end_ms"]);
    assert!(rms(&right[answer.clone()]) > 300.0, "agent energy in the right channel: {}", rms(&right[answer.clone()]));
    assert!(rms(&left[answer.clone()]) < 50.0, "the caller is quiet while the agent answers");
    assert!(rms(&left[speech.clone()]) > 300.0, "caller speech in the left channel");
}

#[test]
#[cfg_attr(not(has_espeak_ng), ignore = "needs espeak-ng (scripts/install-deps.sh)")]
fn words_the_echo_agent_never_says_fail_with_exit_1_and_a_junit_failure_naming_the_turn() {
    let test = "test_call_unsaid_words_fail";
    let dir = tools::scratch_dir(test);
    let ports = Ports::for_slot(125);
    let gateway = Gateway::start(ports, "", "", &dir);
    let (output, reports) = test_call(&dir, &dir.join("switchboard.toml"), &two_turns(ports, "refund approved"), &[]);
    assert_eq!(output.status.code(), Some(1), "{}\ngateway log:\n{}", describe(&output), gateway.log());
    let report = report_json(&reports);
    let turns = &report["calls"][0]["turns"];
    assert_eq!(turns[0]["passed"], true, "{turns}");
    assert_eq!(turns[1]["passed"], false, "{turns}");
    let junit = std::fs::read_to_string(reports.join("junit.xml")).expect("junit.xml");
    assert!(
        junit.contains(
            "<failure message=\"turn 1 (say &quot;Thank you goodbye.&quot;): expect_says: transcript lacks refund, approved\""
        ),
        "{junit}"
    );
    assert!(junit.contains("<testsuite name=\"echo call 1\" tests=\"2\" failures=\"1\""), "{junit}");
}

#[test]
#[cfg_attr(not(all(has_sipp, has_espeak_ng)), ignore = "needs sipp and espeak-ng (scripts/install-deps.sh)")]
fn a_callee_that_answers_and_stays_silent_fails_expect_within_ms() {
    let test = "test_call_silent_callee";
    let dir = tools::scratch_dir(test);
    let ports = Ports::for_slot(126);
    let config = plain_config(&dir, ports);
    let mut callee = sipp_callee("testcall_uas_silent.xml", &dir, ports);
    let scenario = format!(
        "target = \"sip:callee@127.0.0.1:{}\"\n[[turns]]\nsay = \"Hello?\"\nexpect_within_ms = 1000\nlisten_ms = 1500\n",
        ports.peer_sip
    );
    let (output, reports) = test_call(&dir, &config, &scenario, &[]);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let report = report_json(&reports);
    let turn = &report["calls"][0]["turns"][0];
    assert_eq!(report["calls"][0]["connected"], true, "{report}");
    assert_eq!(turn["latency_ms"], Value::Null);
    assert_eq!(turn["expectations"][0]["expectation"], "expect_within_ms");
    assert_eq!(turn["expectations"][0]["passed"], false);
    assert_eq!(turn["expectations"][0]["detail"], "no answer within 1000 ms");
    // SIPp saw our BYE after the turn: its scenario completed.
    let status = callee.wait_timeout(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "SIPp callee did not complete: {status:?}");
}

#[test]
#[cfg_attr(not(has_sipp), ignore = "needs sipp (scripts/install-deps.sh)")]
fn a_busy_callee_fails_the_call_as_busy() {
    let test = "test_call_busy_callee";
    let dir = tools::scratch_dir(test);
    let ports = Ports::for_slot(63);
    let config = plain_config(&dir, ports);
    let mut callee = sipp_callee("uas_busy.xml", &dir, ports);
    let scenario =
        format!("target = \"sip:callee@127.0.0.1:{}\"\n[[turns]]\nexpect_within_ms = 1000\n", ports.peer_sip);
    let (output, reports) = test_call(&dir, &config, &scenario, &[]);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let report = report_json(&reports);
    let call = &report["calls"][0];
    assert_eq!(call["connected"], false);
    assert_eq!(call["failure"]["kind"], "busy");
    assert_eq!(call["failure"]["detail"], "busy (486)");
    assert_eq!(report["summary"]["failures_by_kind"]["busy"], 1);
    let junit = std::fs::read_to_string(reports.join("junit.xml")).expect("junit.xml");
    assert!(junit.contains("<failure message=\"call 1: busy (486)\" type=\"busy\"/>"), "{junit}");
    let status = callee.wait_timeout(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "SIPp callee did not complete: {status:?}");
}

#[test]
#[cfg_attr(not(has_espeak_ng), ignore = "needs espeak-ng (scripts/install-deps.sh)")]
fn load_mode_reports_latency_percentiles_across_calls() {
    let test = "test_call_load_mode";
    let dir = tools::scratch_dir(test);
    let ports = Ports::for_slot(64);
    let gateway = Gateway::start(ports, "", "", &dir);
    let scenario = format!(
        "name = \"load\"\ntarget = \"sip:agent@127.0.0.1:{}\"\nagent_quiet_ms = 400\n\
         [[turns]]\nsay = \"Hi there.\"\nexpect_within_ms = 3000\n",
        ports.sip
    );
    let (output, reports) =
        test_call(&dir, &dir.join("switchboard.toml"), &scenario, &["--calls", "20", "--concurrency", "5"]);
    assert_eq!(output.status.code(), Some(0), "{}\ngateway log:\n{}", describe(&output), gateway.log());
    let report = report_json(&reports);
    let summary = &report["summary"];
    assert_eq!(summary["calls"], 20);
    assert_eq!(summary["passed"], 20);
    let latency = &summary["latency_ms"];
    assert_eq!(latency["count"], 20, "{summary}");
    let (p50, p95, p99) =
        (latency["p50"].as_u64().unwrap(), latency["p95"].as_u64().unwrap(), latency["p99"].as_u64().unwrap());
    assert!(p50 > 0 && p50 <= p95 && p95 <= p99 && p99 <= latency["max"].as_u64().unwrap(), "{latency}");
    // The percentiles are those of the calls' own latencies (nearest rank).
    let mut all: Vec<u64> = report["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["turns"][0]["latency_ms"].as_u64().expect("latency"))
        .collect();
    all.sort_unstable();
    assert_eq!((p50, p95, p99), (all[9], all[18], all[19]), "{all:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(&format!("p50 {p50} ms, p95 {p95} ms, p99 {p99} ms")), "{stdout}");
    assert_eq!(
        std::fs::read_dir(&reports)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "wav"))
            .count(),
        20
    );
}

#[test]
fn an_agent_transfer_by_refer_passes_expect_transfer_and_expect_hangup() {
    let test = "test_call_agent_transfer";
    let dir = tools::scratch_dir(test);
    let ports = Ports::for_slot(89);
    // An external simulator (so the test can cue the transfer tool); the API key set, so the
    // transcription session also goes to it through the "API key" path.
    let sim = Sim::start(ports, &[], &dir);
    let transfer = "[agents.default.transfer]\nannounce = \"Please hold while I connect you.\"\nrefer_timeout_secs = 10\n\
                    on_failure = \"agent\"\n[agents.default.transfer.queues]\nsales = \"sip:sales@127.0.0.1:5999\"\n";
    let gateway = Gateway::start(ports, &sim.url(), transfer, &dir);
    let scenario = format!(
        "target = \"sip:agent@127.0.0.1:{}\"\n[[turns]]\nlisten_ms = 10000\nexpect_transfer = true\nexpect_hangup = true\n",
        ports.sip
    );
    std::fs::write(dir.join("scenario.toml"), scenario).expect("write scenario");
    let reports = dir.join("report");
    let out = std::fs::File::create(dir.join("test-call.out")).expect("stdout file");
    let mut caller = ChildGuard::spawn(
        "switchboard test-call",
        Command::new(tools::gateway_binary())
            .arg("test-call")
            .arg("--config")
            .arg(dir.join("switchboard.toml"))
            .arg("--scenario")
            .arg(dir.join("scenario.toml"))
            .arg("--report-dir")
            .arg(&reports)
            .env_remove("OPENAI_API_KEY")
            .stdout(out)
            .stderr(Stdio::null()),
    );
    // Once the call's Realtime session is up, the model calls transfer_to_human.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while sim.sessions().as_array().is_none_or(Vec::is_empty) {
        assert!(std::time::Instant::now() < deadline, "no Realtime session: the call never came up");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    sim.control(
        "call_tool",
        r#"{"name":"transfer_to_human","arguments":"{\"queue\":\"sales\",\"reason\":\"wants a person\"}","say_ms":500,"now":true}"#,
    );
    let status = caller.wait_timeout(Duration::from_secs(40));
    let stdout = std::fs::read_to_string(dir.join("test-call.out")).unwrap_or_default();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{stdout}\ngateway log:\n{}", gateway.log());
    let report = report_json(&reports);
    let call = &report["calls"][0];
    assert_eq!(call["ended_by"], "agent", "{call}");
    let verdicts = call["turns"][0]["expectations"].as_array().expect("verdicts");
    assert_eq!(verdicts[0]["expectation"], "expect_hangup");
    assert_eq!(verdicts[1]["expectation"], "expect_transfer");
    assert!(verdicts[1]["detail"].as_str().unwrap().contains("sip:sales@127.0.0.1:5999"), "{verdicts:?}");
    assert!(gateway.log().contains("caller transferred; ending our leg"), "{}", gateway.log());
}
