//! Transfer to a human (issue 9): the simulator's model calls `transfer_to_human` on cue; the
//! gateway announces, REFERs the caller's side to the configured queue and follows the REFER's
//! NOTIFYs (RFC 3515). Blind transfer with real softphones (a baresip caller following the
//! REFER to a baresip "human", who must hear the caller's speech), and a refused REFER with a
//! SIPp caller (603, then a NOTIFY saying 486) falling back as `on_failure` says.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use switchboard_e2e::audio;
use switchboard_e2e::baresip::{Phone, heard};
use switchboard_e2e::procs::{ChildGuard, Gateway, Sim, run_bounded};
use switchboard_e2e::{Ports, sipp, tools};

/// The cue: the model's next response says a short tone, then calls the tool.
const CALL_TRANSFER: &str = r#"{"name":"transfer_to_human","arguments":"{\"queue\":\"sales\",\"reason\":\"wants a person\"}","say_ms":500,"now":true}"#;

/// The agent's transfer section; `target` is the `sales` queue's URI.
fn transfer_toml(target: &str, on_failure: &str) -> String {
    transfer_toml_with(target, on_failure, "")
}

/// [`transfer_toml`] with `extra` keys in the transfer table.
fn transfer_toml_with(target: &str, on_failure: &str, extra: &str) -> String {
    format!(
        "[agents.default.transfer]\nannounce = \"Please hold while I connect you.\"\nrefer_timeout_secs = 10\n\
         on_failure = \"{on_failure}\"\n{extra}[agents.default.transfer.queues]\nsales = \"{target}\"\n"
    )
}

/// Waits until the simulator has a session (the call is up), then gives the cue.
fn cue_transfer(sim: &Sim) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while sim.sessions().as_array().is_none_or(Vec::is_empty) {
        assert!(Instant::now() < deadline, "no Realtime session: the call never came up");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Let the greeting-less session settle (session.update confirmed) before the cue.
    std::thread::sleep(Duration::from_millis(500));
    sim.control("call_tool", CALL_TRANSFER);
}

/// The client events of the simulator's first session.
fn client_events(sim: &Sim) -> Vec<Value> {
    let sessions = sim.sessions();
    let events = sessions[0]["events"].as_array().cloned().unwrap_or_default();
    events.into_iter().filter(|e| e["direction"] == "client").map(|e| e["event"].clone()).collect()
}

/// The `function_call_output` items the gateway sent, as (call_id, output).
fn tool_outputs(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e["type"] == "conversation.item.create" && e["item"]["type"] == "function_call_output")
        .map(|e| {
            (
                e["item"]["call_id"].as_str().unwrap_or_default().to_owned(),
                e["item"]["output"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// The call id of the `transfer_to_human` call the simulator made.
fn transfer_call_id(sim: &Sim) -> String {
    let sessions = sim.sessions();
    let events = sessions[0]["events"].as_array().cloned().unwrap_or_default();
    events
        .iter()
        .find(|e| {
            e["direction"] == "server"
                && e["event"]["type"] == "response.output_item.done"
                && e["event"]["item"]["name"] == "transfer_to_human"
        })
        .and_then(|e| e["event"]["item"]["call_id"].as_str())
        .expect("the simulator called transfer_to_human")
        .to_owned()
}

/// The value of a counter line whose labels include every `label`.
fn counter(metrics: &str, name: &str, labels: &[&str]) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .map(|v| v as u64)
        .sum()
}

/// Waits for a gateway log line (the call's end is logged after its BYE).
fn wait_for_log(gateway: &Gateway, needle: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if gateway.log().contains(needle) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Waits until a counter (labels as in [`counter`]) reaches 1: the call's end is counted after
/// its BYE.
fn wait_for_counter(gateway: &Gateway, name: &str, labels: &[&str], limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if counter(&gateway.metrics(), name, labels) >= 1 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// A recording baresip phone named `name` (`auto_answer` for the human).
fn baresip(dir: &Path, name: &str, sip_port: u16, media: (u16, u16), source: &Path, auto_answer: bool) -> PathBuf {
    Phone { name, sip_port, media, source, auto_answer, record: true, codecs: &[], extra: "" }.folder(dir)
}

/// Blind transfer end to end: a baresip caller talks to the agent, the agent transfers it to the
/// `sales` queue (a baresip "human" on loopback); the caller's baresip accepts the REFER, calls
/// the human and reports the answer by NOTIFY; the gateway ends its leg with BYE. The human
/// must hear the caller's speech (envelope correlation >= 0.8), and the metric and the call's
/// end say `transferred`, with exactly one `function_call_output` for the tool call.
#[test]
#[cfg_attr(
    not(all(has_baresip, has_espeak_ng, has_sox)),
    ignore = "needs baresip, espeak-ng and sox (scripts/install-deps.sh)"
)]
fn blind_transfer_by_refer_reaches_a_baresip_human() {
    let ports = Ports::for_slot(84);
    let dir = tools::scratch_dir("blind_transfer_by_refer_reaches_a_baresip_human");
    let speech = audio::make_speech(&dir);
    let source = dir.join("speech_then_silence.wav");
    let padded = run_bounded(
        "sox",
        Command::new("sox").arg(&speech.wav_8k).arg(&source).args(["pad", "0", "6"]),
        Duration::from_secs(30),
    );
    assert!(padded.status.success(), "sox pad failed");
    let silence = dir.join("silence.wav");
    let made = run_bounded(
        "sox",
        Command::new("sox").args(["-n", "-r", "8000", "-c", "1", "-b", "16"]).arg(&silence).args(["trim", "0", "20"]),
        Duration::from_secs(30),
    );
    assert!(made.status.success(), "sox silence failed");

    // baresip also binds SIP over TLS on its port + 1.
    let human_port = ports.peer_sip + 4;
    let target = format!("sip:human@127.0.0.1:{human_port}");
    let sim = Sim::start(ports, &["--behaviour", "echo"], &dir);
    let gateway = Gateway::start(ports, &sim.url(), &transfer_toml(&target, "agent"), &dir);
    let human_conf = baresip(&dir, "human", human_port, (ports.peer_media + 50, ports.peer_media + 99), &silence, true);
    let caller_conf =
        baresip(&dir, "caller", ports.peer_sip, (ports.peer_media, ports.peer_media + 49), &source, false);
    let mut human = ChildGuard::spawn(
        "baresip (human)",
        Command::new("baresip")
            .arg("-f")
            .arg(&human_conf)
            .args(["-u", "audio_codecs=PCMU", "-t", "14"])
            .stdout(std::process::Stdio::null()),
    );
    let mut caller = ChildGuard::spawn(
        "baresip (caller)",
        Command::new("baresip")
            .arg("-f")
            .arg(&caller_conf)
            .args(["-u", "audio_codecs=PCMU", "-t", "10"])
            .arg("-e")
            .arg(format!("/dial sip:15550001000@127.0.0.1:{}", ports.sip))
            .stdout(std::process::Stdio::null()),
    );
    cue_transfer(&sim);
    let transferred = wait_for_log(&gateway, "caller transferred; ending our leg", Duration::from_secs(15));
    let _ = caller.wait_timeout(Duration::from_secs(30));
    let _ = human.wait_timeout(Duration::from_secs(10));
    assert!(transferred, "the gateway never saw the transfer succeed; log:\n{}", gateway.log());

    let (rate, heard) =
        heard(&dir, "human").unwrap_or_else(|| panic!("the human recorded no call; gateway log:\n{}", gateway.log()));
    let (original_rate, original) = audio::read_wav(&speech.wav_8k);
    let (lag, r) = audio::best_lag_correlation(
        &audio::envelope(&original, (original_rate / 50) as usize),
        &audio::envelope(&heard, (rate / 50) as usize),
        600,
    );
    eprintln!("the human heard the caller: r = {r:.3} at lag {} ms", lag * 20);
    assert!(r >= 0.8, "what the human heard correlates only {r:.3} with the caller's speech");

    let metrics = gateway.metrics();
    assert_eq!(
        counter(&metrics, "switchboard_transfers_total", &["method=\"refer\"", "outcome=\"transferred\""]),
        1,
        "{metrics}"
    );
    assert!(
        wait_for_counter(&gateway, "switchboard_calls_total", &["reason=\"transferred\""], Duration::from_secs(5)),
        "{metrics}"
    );
    let call_id = transfer_call_id(&sim);
    let outputs = tool_outputs(&client_events(&sim));
    assert_eq!(outputs.len(), 1, "exactly one output for the tool call: {outputs:?}");
    assert_eq!(outputs[0].0, call_id);
    assert!(outputs[0].1.contains("\"transferred\""), "{outputs:?}");
}

/// A failed transfer falls back as configured. `on_failure = "agent"`: the caller's phone answers
/// the REFER 603; the call goes on and the model is told (one `function_call_output` saying the
/// transfer failed, then a `response.create`); the caller hangs up later. `on_failure =
/// "hangup"`: the phone accepts (202) but its NOTIFY says 486; the agent says goodbye and the
/// gateway sends BYE. Both REFERs carry Refer-To, Referred-By and the context headers (checked
/// by the SIPp scenarios). Bridged with nobody answering: the human's INVITE (context headers
/// checked) is CANCELled at the ring timeout and the model is told "nobody answered".
#[test]
#[cfg_attr(not(has_sipp), ignore = "needs sipp (scripts/install-deps.sh)")]
fn failed_transfers_fall_back_as_configured() {
    let ports = Ports::for_slot(85);
    let dir = tools::scratch_dir("failed_transfers_fall_back_as_configured");
    // 15 s of µ-law silence: RTP flows (no RTP timeout), the simulator's VAD stays quiet.
    let silence = dir.join("silence.ul");
    std::fs::write(&silence, vec![0xFF_u8; 8000 * 15]).expect("write silence");
    let target = "sip:sales@127.0.0.1:5999";
    let run_caller = |scenario: &'static str, pause_ms: u32| {
        let dir = dir.clone();
        let media = sipp::rtp_stream(&silence.display().to_string(), "0");
        std::thread::spawn(move || {
            sipp::run(
                scenario,
                &[
                    ("FORMATS", "0 101"),
                    ("RTPMAPS", &sipp::rtpmaps("0 101")),
                    ("EXPECT_PT", "0"),
                    ("MEDIA", &media),
                    ("TARGET", target),
                ],
                &dir,
                ports,
                "15550001000",
                pause_ms,
            )
        })
    };

    // on_failure = "agent": 603, the model is told, the call goes on until the caller's BYE.
    {
        let sim = Sim::start(ports, &["--behaviour", "tone:440:300"], &dir);
        let gateway = Gateway::start(ports, &sim.url(), &transfer_toml(target, "agent"), &dir);
        let caller = run_caller("uac_refer_decline.xml", 4000);
        cue_transfer(&sim);
        let out = caller.join().expect("sipp thread");
        assert!(out.status.success(), "the SIPp caller failed; gateway log:\n{}", gateway.log());
        assert!(
            wait_for_counter(&gateway, "switchboard_calls_total", &["reason=\"caller_bye\""], Duration::from_secs(5)),
            "log:\n{}",
            gateway.log()
        );
        let metrics = gateway.metrics();
        assert_eq!(
            counter(&metrics, "switchboard_transfers_total", &["method=\"refer\"", "outcome=\"refused\""]),
            1,
            "{metrics}"
        );
        assert_eq!(counter(&metrics, "switchboard_calls_total", &["reason=\"caller_bye\""]), 1, "{metrics}");
        let call_id = transfer_call_id(&sim);
        let events = client_events(&sim);
        let outputs = tool_outputs(&events);
        assert_eq!(outputs.len(), 1, "exactly one output for the tool call: {outputs:?}");
        assert_eq!(outputs[0].0, call_id);
        let output: Value = serde_json::from_str(&outputs[0].1).expect("JSON output");
        assert_eq!(output["status"], "failed");
        assert!(output["reason"].as_str().is_some_and(|r| r.contains("603")), "{output}");
        // The model was asked to speak after it (the agent tells the caller).
        let at_output = events
            .iter()
            .position(|e| e["item"]["type"] == "function_call_output")
            .expect("the output is among the events");
        assert!(
            events.iter().skip(at_output).any(|e| e["type"] == "response.create"),
            "no response.create after the failed transfer's output"
        );
        // The announcement came first.
        assert!(events.iter().any(|e| e["type"] == "response.create" && e["event_id"] == "evt_announce"));
    }

    // on_failure = "hangup": 202, NOTIFY 486, goodbye, BYE from the gateway.
    {
        let sim = Sim::start(ports, &["--behaviour", "tone:440:300"], &dir);
        let gateway = Gateway::start(ports, &sim.url(), &transfer_toml(target, "hangup"), &dir);
        let caller = run_caller("uac_refer_busy.xml", 1000);
        cue_transfer(&sim);
        let out = caller.join().expect("sipp thread");
        assert!(out.status.success(), "the SIPp caller got no BYE; gateway log:\n{}", gateway.log());
        assert!(
            wait_for_counter(
                &gateway,
                "switchboard_calls_total",
                &["reason=\"transfer_failed\""],
                Duration::from_secs(5)
            ),
            "log:\n{}",
            gateway.log()
        );
        let metrics = gateway.metrics();
        assert_eq!(
            counter(&metrics, "switchboard_transfers_total", &["method=\"refer\"", "outcome=\"failed\""]),
            1,
            "{metrics}"
        );
        let events = client_events(&sim);
        let outputs = tool_outputs(&events);
        assert_eq!(outputs.len(), 1, "exactly one output for the tool call: {outputs:?}");
        assert!(outputs[0].1.contains("busy"), "{outputs:?}");
        assert!(
            events.iter().any(|e| e["type"] == "response.create" && e["event_id"] == "evt_goodbye"),
            "the agent was asked for its goodbye"
        );
    }

    // The transfer key (a rule, no tool call): the caller presses 0 (SIP INFO); the REFER to the
    // default queue carries reason "dtmf"; refused, the model is told by a system message, and
    // the key itself never reaches the model.
    {
        let sim = Sim::start(ports, &["--behaviour", "tone:440:300"], &dir);
        let toml = transfer_toml_with(target, "agent", "dtmf = \"0\"\ndefault_queue = \"sales\"\n");
        let gateway = Gateway::start(ports, &sim.url(), &toml, &dir);
        let out = run_caller("uac_refer_dtmf.xml", 3000).join().expect("sipp thread");
        assert!(out.status.success(), "the SIPp caller failed; gateway log:\n{}", gateway.log());
        let metrics = gateway.metrics();
        assert_eq!(
            counter(&metrics, "switchboard_transfers_total", &["method=\"refer\"", "outcome=\"refused\""]),
            1,
            "{metrics}"
        );
        let events = client_events(&sim);
        assert!(tool_outputs(&events).is_empty(), "no tool call, no output");
        let told = events.iter().position(|e| {
            e["type"] == "conversation.item.create"
                && e["item"]["role"] == "system"
                && e["item"]["content"][0]["text"].as_str().is_some_and(|t| t.contains("(sales), but"))
        });
        let told = told.unwrap_or_else(|| panic!("the model was not told; events: {events:?}"));
        assert!(events.iter().skip(told).any(|e| e["type"] == "response.create"), "the agent speaks again");
        assert!(
            !events.iter().any(|e| e["item"]["role"] == "user"
                && e["item"]["content"][0]["text"].as_str().is_some_and(|t| t.contains("pressed"))),
            "the transfer key reached the model"
        );
    }

    // Bridged, nobody answers: the human's INVITE (with the context headers, checked by SIPp)
    // is CANCELled at ring_timeout_secs; the caller stays with the agent, which is told.
    {
        let human_port = ports.peer_sip + 4;
        let scenario = tools::scenario("uas_transfer_no_answer.xml");
        let errors = dir.join("uas_errors.log");
        let human = std::thread::spawn(move || {
            run_bounded(
                "sipp (human)",
                Command::new("sipp")
                    .arg("-sf")
                    .arg(&scenario)
                    .args(["-i", "127.0.0.1", "-mi", "127.0.0.1"])
                    .args(["-p", &human_port.to_string(), "-mp", &(ports.peer_media + 50).to_string()])
                    .args(["-m", "1", "-nostdin", "-timeout", "30s", "-timeout_error", "-trace_err", "-error_file"])
                    .arg(&errors),
                Duration::from_secs(40),
            )
        });
        let sim = Sim::start(ports, &["--behaviour", "tone:440:300"], &dir);
        let toml = format!(
            "[trunks.humans]\naddress = \"127.0.0.1:{human_port}\"\n[agents.default.transfer]\nmethod = \"bridge\"\n\
             trunk = \"humans\"\nannounce = \"\"\nring_timeout_secs = 2\n[agents.default.transfer.queues]\n\
             sales = \"sip:human@127.0.0.1:{human_port}\"\n"
        );
        let gateway = Gateway::start(ports, &sim.url(), &toml, &dir);
        let caller = run_caller("uac_call.xml", 7000);
        cue_transfer(&sim);
        let out = caller.join().expect("sipp thread");
        assert!(out.status.success(), "the SIPp caller failed; gateway log:\n{}", gateway.log());
        let human = human.join().expect("sipp human thread");
        assert!(
            human.status.success(),
            "the human's SIPp saw no INVITE with the context headers, or no CANCEL: {}\ngateway log:\n{}",
            String::from_utf8_lossy(&human.stderr),
            gateway.log()
        );
        let metrics = gateway.metrics();
        assert_eq!(
            counter(&metrics, "switchboard_transfers_total", &["method=\"bridge\"", "outcome=\"no_answer\""]),
            1,
            "{metrics}"
        );
        assert!(
            wait_for_counter(&gateway, "switchboard_calls_total", &["reason=\"caller_bye\""], Duration::from_secs(5)),
            "the call went on until the caller hung up"
        );
        let events = client_events(&sim);
        let outputs = tool_outputs(&events);
        assert_eq!(outputs.len(), 1, "exactly one output for the tool call: {outputs:?}");
        let output: Value = serde_json::from_str(&outputs[0].1).expect("JSON output");
        assert_eq!(output["status"], "failed");
        assert_eq!(output["reason"], "nobody answered");
        let at_output =
            events.iter().position(|e| e["item"]["type"] == "function_call_output").expect("the output is there");
        assert!(events.iter().skip(at_output).any(|e| e["type"] == "response.create"), "the agent speaks again");
    }
}

/// The agent's bridged transfer through a `[trunks.humans]` pointing at the human's baresip,
/// the call recorded under `recordings`.
fn bridge_toml(human_port: u16, recordings: &Path) -> String {
    format!(
        "[trunks.humans]\naddress = \"127.0.0.1:{human_port}\"\nfrom_user = \"switchboard\"\n\
         [recording]\ndir = \"{}\"\n[agents.default]\nrecord = true\n\
         [agents.default.transfer]\nmethod = \"bridge\"\ntrunk = \"humans\"\n\
         announce = \"Please hold while I connect you.\"\nring_timeout_secs = 10\n\
         [agents.default.transfer.queues]\nsales = \"sip:human@127.0.0.1:{human_port}\"\n",
        recordings.display()
    )
}

/// Bridged transfer: the gateway calls a baresip human through a trunk and relays the audio both
/// ways while staying in the media path. The caller plays speech, the human plays the same
/// speech reversed (a different envelope, so neither can pass for the other); the human must
/// hear the caller's speech and the caller the human's (envelope correlation >= 0.8 each way).
/// The agent is a tone, not an echo: nothing but the bridge carries speech.
#[test]
#[cfg_attr(
    not(all(has_baresip, has_espeak_ng, has_sox)),
    ignore = "needs baresip, espeak-ng and sox (scripts/install-deps.sh)"
)]
fn bridged_transfer_relays_speech_both_ways() {
    let ports = Ports::for_slot(86);
    let dir = tools::scratch_dir("bridged_transfer_relays_speech_both_ways");
    let speech = audio::make_speech(&dir);
    let sox = |args: &[&str], what: &str| {
        let out = run_bounded("sox", Command::new("sox").args(args), Duration::from_secs(30));
        assert!(out.status.success(), "sox {what} failed");
    };
    let speech_8k = speech.wav_8k.display().to_string();
    // The caller speaks 4 s into the call (after the transfer), the human 1 s after answering.
    let caller_source = dir.join("caller.wav");
    sox(&[&speech_8k, &caller_source.display().to_string(), "pad", "4", "5"], "caller");
    let reversed = dir.join("reversed.wav");
    sox(&[&speech_8k, &reversed.display().to_string(), "reverse"], "reverse");
    let human_source = dir.join("human.wav");
    sox(&[&reversed.display().to_string(), &human_source.display().to_string(), "pad", "1", "8"], "human");

    // baresip also binds SIP over TLS on its port + 1.
    let human_port = ports.peer_sip + 4;
    let sim = Sim::start(ports, &["--behaviour", "tone:440:300"], &dir);
    let recordings = dir.join("rec");
    let gateway = Gateway::start(ports, &sim.url(), &bridge_toml(human_port, &recordings), &dir);
    let human_conf =
        baresip(&dir, "human", human_port, (ports.peer_media + 50, ports.peer_media + 99), &human_source, true);
    let caller_conf =
        baresip(&dir, "caller", ports.peer_sip, (ports.peer_media, ports.peer_media + 49), &caller_source, false);
    let mut human = ChildGuard::spawn(
        "baresip (human)",
        Command::new("baresip")
            .arg("-f")
            .arg(&human_conf)
            .args(["-u", "audio_codecs=PCMU", "-t", "15"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    let mut caller = ChildGuard::spawn(
        "baresip (caller)",
        Command::new("baresip")
            .arg("-f")
            .arg(&caller_conf)
            .args(["-u", "audio_codecs=PCMU", "-t", "11"])
            .arg("-e")
            .arg(format!("/dial sip:15550001000@127.0.0.1:{}", ports.sip))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    cue_transfer(&sim);
    let bridged = wait_for_log(&gateway, "caller and human bridged", Duration::from_secs(15));
    let _ = caller.wait_timeout(Duration::from_secs(30));
    let _ = human.wait_timeout(Duration::from_secs(15));
    assert!(bridged, "the gateway never bridged the human; log:\n{}", gateway.log());

    let envelope = |(rate, samples): (u32, Vec<i16>)| audio::envelope(&samples, (rate / 50) as usize);
    let spoken = envelope(audio::read_wav(&speech.wav_8k));
    let spoken_reversed = envelope(audio::read_wav(&reversed));
    let human_heard = envelope(heard(&dir, "human").expect("the human recorded the call"));
    let caller_heard = envelope(heard(&dir, "caller").expect("the caller recorded the call"));
    let (lag, to_human) = audio::best_lag_correlation(&spoken, &human_heard, 600);
    eprintln!("caller -> human: r = {to_human:.3} at {} ms", lag * 20);
    let (lag, to_caller) = audio::best_lag_correlation(&spoken_reversed, &caller_heard, 600);
    eprintln!("human -> caller: r = {to_caller:.3} at {} ms", lag * 20);
    assert!(to_human >= 0.8, "the human heard the caller at r = {to_human:.3}; log:\n{}", gateway.log());
    assert!(to_caller >= 0.8, "the caller heard the human at r = {to_caller:.3}; log:\n{}", gateway.log());
    // Neither side heard itself: the agent is no echo and the bridge does not loop.
    let (_, self_heard) = audio::best_lag_correlation(&spoken, &caller_heard, 600);
    assert!(self_heard < to_caller, "the caller heard its own speech (r = {self_heard:.3}) as well as the human");

    let metrics = gateway.metrics();
    assert_eq!(
        counter(&metrics, "switchboard_transfers_total", &["method=\"bridge\"", "outcome=\"bridged\""]),
        1,
        "{metrics}"
    );
    assert!(
        wait_for_counter(&gateway, "switchboard_calls_total", &["reason=\"caller_bye\""], Duration::from_secs(5)),
        "{}",
        gateway.metrics()
    );
    let outputs = tool_outputs(&client_events(&sim));
    assert_eq!(outputs.len(), 1, "exactly one output for the tool call: {outputs:?}");
    assert!(outputs[0].1.contains("\"connected\""), "{outputs:?}");

    // The recording holds both sides of the bridged conversation: the caller on the left, the
    // human (what the caller heard) on the right.
    assert!(
        wait_for_counter(&gateway, "switchboard_recordings_total", &[], Duration::from_secs(10)),
        "the recording was never closed; log:\n{}",
        gateway.log()
    );
    let wav = find_wav(&recordings).unwrap_or_else(|| panic!("no WAV under {}", recordings.display()));
    let (rate, left, right) = audio::read_stereo_wav(&wav);
    assert_eq!(rate, 8000, "a PCMU call is recorded at 8 kHz");
    let frame = (rate / 50) as usize;
    let (_, caller_left) = audio::best_lag_correlation(&spoken, &audio::envelope(&left, frame), 600);
    let (_, human_right) = audio::best_lag_correlation(&spoken_reversed, &audio::envelope(&right, frame), 600);
    eprintln!("recording: caller left r = {caller_left:.3}, human right r = {human_right:.3}");
    assert!(caller_left >= 0.8, "the caller's speech is not in the left channel (r = {caller_left:.3})");
    assert!(human_right >= 0.8, "the human's speech is not in the right channel (r = {human_right:.3})");
}

/// The one WAV under `dir` (recordings are filed as `<dir>/<YYYY>/<MM>/<DD>/<call id>.wav`).
fn find_wav(dir: &Path) -> Option<PathBuf> {
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).ok()?.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "wav") {
                return Some(path);
            }
        }
    }
    None
}
