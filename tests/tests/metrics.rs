//! What an operator's Prometheus and log collector see (issue 10, "Metrics" and "Logs"): scripted
//! SIPp calls through the release gateway and the simulator (one of them interrupting the agent's
//! greeting), then `/metrics` is read and its series and values asserted, and `promtool check
//! metrics` must pass on it with nothing to say; the JSON log of the same calls must hold one
//! parseable summary line per call, carrying what the CDR carries, inside the call's span, with
//! numbers redacted (or not, when turned off).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use switchboard_e2e::procs::{ChildGuard, Gateway, Sim, promtool_check_metrics};
use switchboard_e2e::{Ports, audio, sipp, tools};

/// The dialled number of the answered calls (the `numbers` of the agent below).
const DIALLED: &str = "15550001000";

/// Two seconds of µ-law silence for SIPp's `rtp_stream`: the caller keeps sending RTP.
fn silence_stream(dir: &Path) -> String {
    let path = dir.join("silence.ul");
    std::fs::write(&path, vec![0xFF_u8; 16_000]).expect("write silence");
    path.display().to_string()
}

/// The exposition text as samples: `name{labels}` -> value (no timestamps are rendered).
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    *samples.get(series).unwrap_or_else(|| panic!("no series {series}"))
}

/// Polls `/metrics` until `series` reaches `want` (the gateway counts a call as its task ends,
/// a moment after SIPp has seen the final answer).
fn wait_for(gateway: &Gateway, series: &str, want: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = gateway.metrics();
        if samples(&text).get(series) == Some(&want) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every JSON log line of the gateway (a line that is not JSON fails the test).
fn json_lines(gateway: &Gateway) -> Vec<Value> {
    gateway
        .log()
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}")))
        .collect()
}

fn summaries(lines: &[Value]) -> Vec<&Value> {
    lines.iter().filter(|l| l["fields"]["message"] == "call summary").collect()
}

#[test]
#[cfg_attr(not(all(has_sipp, has_promtool)), ignore = "needs sipp and promtool (scripts/install-deps.sh)")]
fn metrics_after_scripted_calls_have_the_right_values_and_pass_promtool() {
    let test = "metrics_after_scripted_calls_have_the_right_values_and_pass_promtool";
    let ports = Ports::for_slot(90);
    let dir = tools::scratch_dir(test);
    let silence = silence_stream(&dir);
    let barge_in = audio::silence_tone_silence_ulaw(&dir, "barge_in.ul", 600, 300.0, 1000, 900);
    // The simulator answers the greeting's response.create with a 3 s tone: the agent speaks
    // first, and is still speaking when the second caller starts talking.
    let sim = Sim::start(ports, &["--greeting-tone", "440:3000"], &dir);
    let agent = format!("[agents.default]\ngreeting = \"Hello.\"\nnumbers = [\"{DIALLED}\"]\n");
    let gateway = Gateway::start_with_env(ports, &sim.url(), &agent, &dir, &[("SWITCHBOARD__LOG__FORMAT", "json")]);
    let started = SystemTime::now();

    // A caller who listens, then one who interrupts the greeting.
    for stream in [&silence, &barge_in] {
        let out = sipp::run(
            "uac_call.xml",
            &[
                ("FORMATS", "0 101"),
                ("RTPMAPS", &sipp::rtpmaps("0 101")),
                ("EXPECT_PT", "0"),
                ("MEDIA", &sipp::rtp_stream(stream, "0")),
            ],
            &dir,
            ports,
            DIALLED,
            2500,
        );
        assert!(out.status.success(), "SIPp call failed; gateway log:\n{}", gateway.log());
    }
    for (formats, service, code) in [("0 101", "999", "404"), ("18", DIALLED, "488")] {
        let out = sipp::run(
            "uac_refused.xml",
            &[("FORMATS", formats), ("RTPMAPS", &sipp::rtpmaps(formats)), ("CODE", code)],
            &dir,
            ports,
            service,
            0,
        );
        assert!(out.status.success(), "expected {code}; gateway log:\n{}", gateway.log());
    }

    let answered = r#"switchboard_calls_total{direction="inbound",outcome="completed",reason="caller_bye"}"#;
    let text = wait_for(&gateway, answered, 2.0);
    let m = samples(&text);
    // Calls by direction, outcome and reason: exactly the calls made.
    assert_eq!(value(&m, answered), 2.0, "{text}");
    assert_eq!(value(&m, r#"switchboard_calls_total{direction="inbound",outcome="refused",reason="no_route"}"#), 1.0);
    assert_eq!(
        value(&m, r#"switchboard_calls_total{direction="inbound",outcome="refused",reason="no_common_codec"}"#),
        1.0
    );
    let calls: f64 = m.iter().filter(|(k, _)| k.starts_with("switchboard_calls_total{")).map(|(_, v)| v).sum();
    assert_eq!(calls, 4.0, "no other call was counted:\n{text}");
    // SIP requests and responses by method and code.
    assert_eq!(value(&m, r#"switchboard_sip_requests_total{method="INVITE"}"#), 4.0);
    assert_eq!(value(&m, r#"switchboard_sip_requests_total{method="BYE"}"#), 2.0);
    assert_eq!(value(&m, r#"switchboard_sip_responses_total{method="INVITE",code="200"}"#), 2.0);
    assert_eq!(value(&m, r#"switchboard_sip_responses_total{method="INVITE",code="404"}"#), 1.0);
    assert_eq!(value(&m, r#"switchboard_sip_responses_total{method="INVITE",code="488"}"#), 1.0);
    assert_eq!(value(&m, r#"switchboard_sip_responses_total{method="BYE",code="200"}"#), 2.0);
    // RTP both ways: two seconds of the caller's silence, the greeting's tone back.
    assert!(value(&m, r#"switchboard_rtp_packets_total{direction="in"}"#) >= 100.0, "{text}");
    assert!(value(&m, r#"switchboard_rtp_packets_total{direction="out"}"#) >= 50.0, "{text}");
    // The second caller's tone interrupted the greeting, once; the first caller never spoke.
    assert_eq!(value(&m, "switchboard_barge_ins_total"), 1.0, "{text}");
    // Setup: INVITE to 200 and to the agent's first audio, once per answered call.
    assert_eq!(value(&m, "switchboard_call_setup_seconds_count"), 2.0);
    assert_eq!(value(&m, r#"switchboard_call_first_audio_seconds_count{direction="inbound"}"#), 2.0, "{text}");
    let first_audio = value(&m, r#"switchboard_call_first_audio_seconds_sum{direction="inbound"}"#) / 2.0;
    let setup = value(&m, "switchboard_call_setup_seconds_sum") / 2.0;
    eprintln!("mean INVITE to 200: {:.1} ms; to the agent's first audio: {:.1} ms", setup * 1e3, first_audio * 1e3);
    assert!(first_audio > setup, "the agent speaks after the answer: {first_audio} s vs {setup} s");
    // Realtime: one confirmed session per answered call; refused calls open none.
    assert_eq!(value(&m, r#"switchboard_realtime_connects_total{outcome="ok"}"#), 2.0);
    assert_eq!(value(&m, "switchboard_realtime_connect_seconds_count"), 2.0);
    assert_eq!(sim.sessions().as_array().map(Vec::len), Some(2));
    // The process, as every Prometheus client reports it.
    assert!(value(&m, "process_resident_memory_bytes") > 1_048_576.0, "{text}");
    assert!(value(&m, "process_open_fds") > 3.0, "{text}");
    assert!(value(&m, "process_max_fds") >= value(&m, "process_open_fds"), "{text}");
    assert!(value(&m, "process_cpu_seconds_total") > 0.0, "{text}");
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs_f64();
    let start = value(&m, "process_start_time_seconds");
    let before_calls = started.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(start <= before_calls + 1.0 && start > now - 120.0, "started at {start}, now {now}");
    // The build.
    let build: Vec<(&String, &f64)> = m.iter().filter(|(k, _)| k.starts_with("switchboard_build_info{")).collect();
    assert_eq!(build.len(), 1, "{text}");
    assert_eq!(*build[0].1, 1.0);
    assert!(
        build[0].0.starts_with(&format!(r#"switchboard_build_info{{version="{}",commit=""#, env!("CARGO_PKG_VERSION")))
    );
    // Every family has its HELP line, and no label carries the dialled number.
    for family in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()) {
        assert!(text.contains(&format!("# HELP {family} ")), "{family} has no HELP line");
    }
    assert!(!text.contains(DIALLED), "a phone number in a label:\n{text}");

    let (ok, said) = promtool_check_metrics(&text, &dir);
    assert!(ok && said.trim().is_empty(), "promtool check metrics: ok={ok}\n{said}\non:\n{text}");

    // The logs: one JSON object per line, a summary per call, numbers redacted at info level.
    let lines = json_lines(&gateway);
    let summaries = summaries(&lines);
    assert_eq!(summaries.len(), 4, "one summary line per call");
    let answered: Vec<&&Value> = summaries.iter().filter(|s| s["fields"]["outcome"] == "completed").collect();
    assert_eq!(answered.len(), 2);
    for summary in answered {
        let fields = &summary["fields"];
        assert_eq!(summary["level"], "INFO");
        let id = fields["call_id"].as_str().expect("call_id");
        assert!(id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()), "the gateway's id: {id}");
        assert_eq!(summary["span"]["call_id"], id, "the line is inside its call's span: {summary}");
        assert_eq!(summary["span"]["direction"], "inbound");
        assert!(!fields["sip_call_id"].as_str().unwrap_or_default().is_empty(), "{summary}");
        for (key, want) in [
            ("direction", "inbound"),
            ("to", "…1000"),
            ("from", "…sipp"),
            ("agent", "default"),
            ("codec", "PCMU"),
            ("reason", "caller_bye"),
            ("side", "none"),
        ] {
            assert_eq!(fields[key], want, "{key}: {summary}");
        }
        assert_eq!(fields["sip_status"], 200);
        assert_eq!((fields["tool_calls"].as_u64(), fields["transfers"].as_u64()), (Some(0), Some(0)));
        assert!(fields["duration_ms"].as_u64().unwrap_or(0) >= 1500, "{summary}");
        for time in ["started", "answered", "ended"] {
            assert!(fields[time].as_str().is_some_and(|t| t.ends_with('Z')), "{time}: {summary}");
        }
        // Every line the call logged carries its id.
        let call_lines = lines.iter().filter(|l| l["span"]["call_id"] == id).count();
        let invite = lines.iter().find(|l| l["fields"]["message"] == "INVITE" && l["span"]["call_id"] == id);
        assert!(call_lines > 3 && invite.is_some(), "{call_lines} lines in the call's span, INVITE line {invite:?}");
    }
    let refused = summaries.iter().find(|s| s["fields"]["reason"] == "no_route").expect("the 404's summary");
    assert_eq!(refused["fields"]["sip_status"], 404);
    assert_eq!(refused["fields"]["to"], "…999");
    for line in lines.iter().filter(|l| l["level"] != "DEBUG" && l["level"] != "TRACE") {
        assert!(!line.to_string().contains(DIALLED), "a full number at info level: {line}");
    }
}

#[test]
#[cfg_attr(not(has_sipp), ignore = "needs sipp (scripts/install-deps.sh)")]
fn an_outbound_call_is_counted_and_logged_by_direction_and_numbers_show_when_redaction_is_off() {
    let test = "an_outbound_call_is_counted_and_logged_by_direction_and_numbers_show_when_redaction_is_off";
    let ports = Ports::for_slot(91);
    let dir = tools::scratch_dir(test);
    let stream = silence_stream(&dir);
    let sim = Sim::start(ports, &[], &dir);
    let config = format!(
        "[agents.default]\ngreeting = \"Hello.\"\n[trunks.peer]\naddress = \"127.0.0.1:{}\"\nring_timeout_secs = 5\n",
        ports.peer_sip
    );
    let env = [("SWITCHBOARD__LOG__FORMAT", "json"), ("SWITCHBOARD__LOG__REDACT_NUMBERS", "false")];
    let gateway = Gateway::start_with_env(ports, &sim.url(), &config, &dir, &env);

    // SIPp answers the gateway's INVITE, sends two seconds of silence and hangs up.
    let mut scenario = std::fs::read_to_string(tools::scenario("uas_answer.xml")).expect("scenario");
    scenario = scenario.replace("@MEDIA@", &sipp::rtp_stream(&stream, "0"));
    let scenario_path = dir.join("uas_answer.xml");
    std::fs::write(&scenario_path, scenario).expect("write scenario");
    let mut callee = ChildGuard::spawn(
        "sipp",
        Command::new("sipp")
            .arg("-sf")
            .arg(&scenario_path)
            .args(["-i", "127.0.0.1", "-mi", "127.0.0.1"])
            .args(["-p", &ports.peer_sip.to_string(), "-mp", &ports.peer_media.to_string()])
            .args(["-d", "2000", "-m", "1", "-nostdin", "-timeout", "30s", "-timeout_error"])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    std::thread::sleep(Duration::from_millis(300));
    let admin = ([127, 0, 0, 1], ports.admin).into();
    let (status, body) =
        switchboard_e2e::procs::http_post(admin, "/v1/calls", r#"{"to": "5550123", "agent": "default"}"#);
    assert_eq!(status, 201, "POST /v1/calls: {body}");
    let id = serde_json::from_str::<Value>(&body).expect("JSON")["id"].as_str().expect("id").to_string();
    let exited = callee.wait_timeout(Duration::from_secs(20));
    assert!(exited.is_some_and(|s| s.success()), "SIPp callee: {exited:?}; gateway log:\n{}", gateway.log());

    let series = r#"switchboard_calls_total{direction="outbound",outcome="completed",reason="caller_bye"}"#;
    let text = wait_for(&gateway, series, 1.0);
    let m = samples(&text);
    assert_eq!(value(&m, series), 1.0, "{text}");
    assert_eq!(value(&m, r#"switchboard_outbound_calls_total{outcome="answered"}"#), 1.0);
    assert_eq!(value(&m, r#"switchboard_call_first_audio_seconds_count{direction="outbound"}"#), 1.0, "{text}");
    // SIP the other way round: the INVITE we sent, the callee's answers, the callee's BYE.
    assert_eq!(value(&m, r#"switchboard_sip_requests_sent_total{method="INVITE"}"#), 1.0, "{text}");
    assert!(value(&m, r#"switchboard_sip_responses_received_total{method="INVITE",code="180"}"#) >= 1.0);
    assert!(value(&m, r#"switchboard_sip_responses_received_total{method="INVITE",code="200"}"#) >= 1.0);
    assert_eq!(value(&m, r#"switchboard_sip_requests_total{method="BYE"}"#), 1.0);
    assert_eq!(value(&m, r#"switchboard_sip_responses_total{method="BYE",code="200"}"#), 1.0);
    assert!(!m.keys().any(|k| k.contains(r#"direction="inbound""#) && k.starts_with("switchboard_calls_total")));

    let lines = json_lines(&gateway);
    let summaries = summaries(&lines);
    assert_eq!(summaries.len(), 1, "one call, one summary");
    let summary = summaries[0];
    assert_eq!(summary["fields"]["call_id"], id.as_str());
    assert_eq!(summary["fields"]["direction"], "outbound");
    assert_eq!(summary["fields"]["to"], "5550123", "redaction off: the number in full: {summary}");
    assert_eq!(summary["span"]["call_id"], id.as_str(), "{summary}");
    assert_eq!(summary["span"]["direction"], "outbound", "{summary}");
    assert_eq!(summary["span"]["to"], "5550123", "{summary}");
    let sip_call_id = summary["fields"]["sip_call_id"].as_str().expect("sip_call_id");
    assert!(!sip_call_id.is_empty());
    assert_eq!(summary["span"]["sip_call_id"], sip_call_id, "the span learns the Call-ID of its INVITE");
}
