//! The conversation features of issue 8 end to end (release gateway, simulator, SIPp): keys
//! pressed with SIP INFO and RFC 4733 reach the model as text items naming them; the agent's
//! `end_call` hangs up after its goodbye was heard in full; an idle caller is re-prompted, then
//! said goodbye to and hung up on; in confirm mode a short cough does not stop the agent.
//! Slots 69-76.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use switchboard_e2e::audio;
use switchboard_e2e::baresip::Phone;
use switchboard_e2e::pcap::{self, RtpPacket};
use switchboard_e2e::procs::{Capture, Gateway, Sim};
use switchboard_e2e::{Ports, sipp, tools};

/// The client events of the simulator's first session.
fn client_events(sim: &Sim) -> Vec<Value> {
    let sessions = sim.sessions();
    let events = sessions[0]["events"].as_array().expect("events").clone();
    events.into_iter().filter(|e| e["direction"] == "client").map(|e| e["event"].clone()).collect()
}

/// Texts of the user `input_text` items the gateway created, in order.
fn user_texts(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "conversation.item.create" && e["item"]["role"] == "user")
        .filter_map(|e| e["item"]["content"][0]["text"].as_str().map(str::to_owned))
        .collect()
}

/// Whether a `response.create` follows the item with this text.
fn response_follows(events: &[Value], text: &str) -> bool {
    let Some(at) = events.iter().position(|e| e["item"]["content"][0]["text"] == text) else { return false };
    events[at..].iter().any(|e| e["type"] == "response.create")
}

/// Waits (bounded) until the gateway has the call's ACK: the call is up.
fn wait_for_ack(gateway: &Gateway) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !gateway.log().contains("ACK received") {
        assert!(std::time::Instant::now() < deadline, "the call did not come up; log:\n{}", gateway.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pcmu_call(ports: Ports, scenario: &str, media: &str, extra: &[(&str, &str)], dir: &Path, pause_ms: u32) {
    let formats = "0 101";
    let rtpmaps = sipp::rtpmaps(formats);
    let mut placeholders =
        vec![("FORMATS", formats), ("RTPMAPS", rtpmaps.as_str()), ("EXPECT_PT", "0"), ("MEDIA", media)];
    placeholders.extend_from_slice(extra);
    let out = sipp::run(scenario, &placeholders, dir, ports, "15550001000", pause_ms);
    assert!(out.status.success(), "SIPp {scenario} failed (see above)");
}

#[test]
#[cfg_attr(not(has_sipp), ignore = "needs sipp (scripts/install-deps.sh)")]
fn sip_info_keys_reach_the_model_as_text_items_and_other_bodies_get_415() {
    let ports = Ports::for_slot(69);
    let dir = tools::scratch_dir("conversation_sip_info_dtmf");
    let silence = audio::silence_tone_silence_ulaw(&dir, "silence.ul", 6000, 0.0, 0, 0);
    let sim = Sim::start(ports, &[], &dir);
    let gateway = Gateway::start(ports, &sim.url(), "[agents.default]\ndtmf_coalesce_ms = 300\n", &dir);
    // The scenario checks the 200s and the 415 itself.
    pcmu_call(
        ports,
        "uac_info_dtmf.xml",
        &sipp::rtp_stream(&silence, "0"),
        &[("KEY1", "5"), ("KEY2", "#")],
        &dir,
        1500,
    );
    let events = client_events(&sim);
    let texts = user_texts(&events);
    assert_eq!(
        texts,
        vec!["The caller pressed 5.".to_string(), "The caller pressed #.".to_string()],
        "gateway log:\n{}",
        gateway.log()
    );
    assert!(response_follows(&events, "The caller pressed 5."), "dtmf_response asks for an answer");
    assert!(gateway.metrics().contains("switchboard_dtmf_digits_total 2"));
}

/// Packets dominated by a `hz` tone rather than `versus` (the simulator's scripted answer names
/// a key by its frequency: 500 + 100 * digit Hz; its greeting is 440 Hz).
fn tone_packets(packets: &[RtpPacket], hz: f64, versus: f64) -> usize {
    packets
        .iter()
        .filter(|p| {
            let samples: Vec<i16> = p.payload.iter().map(|&b| audio::ulaw_to_linear(b)).collect();
            let rms = (samples.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / samples.len() as f64).sqrt();
            rms > 300.0 && audio::goertzel(&samples, 8000.0, hz) > audio::goertzel(&samples, 8000.0, versus) * 10.0
        })
        .count()
}

#[test]
#[cfg_attr(not(all(has_sipp, has_tshark)), ignore = "needs sipp and tshark (scripts/install-deps.sh)")]
fn rfc_4733_keys_from_sipp_reach_the_model_and_its_answer_is_heard() {
    let ports = Ports::for_slot(70);
    let dir = tools::scratch_dir("conversation_rfc4733_sipp");
    // SIPp's own capture of key 1: payload type 101, marker on the first packet, three end packets.
    let pcap_file = Path::new("/usr/share/sip-tester/dtmf_2833_1.pcap");
    assert!(pcap_file.exists(), "SIPp's DTMF captures are installed with it");
    let sim = Sim::start(ports, &[], &dir);
    let gateway = Gateway::start(ports, &sim.url(), "[agents.default]\ndtmf_coalesce_ms = 300\n", &dir);
    let filter = format!("udp and dst portrange {}-{}", ports.peer_media, ports.peer_media + 3);
    let capture = Capture::start(&filter, &dir.join("to_caller.pcap"), 30);
    pcmu_call(ports, "uac_call.xml", &sipp::play_pcap(&pcap_file.display().to_string()), &[], &dir, 2500);
    let pcap_path = capture.finish();
    let events = client_events(&sim);
    assert_eq!(user_texts(&events), vec!["The caller pressed 1.".to_string()], "gateway log:\n{}", gateway.log());
    assert!(response_follows(&events, "The caller pressed 1."));
    assert!(gateway.metrics().contains("switchboard_dtmf_digits_total 1"), "one key, once");
    // The model "heard" the key: its scripted 600 ms answer at 600 Hz reached the caller.
    let answer_ms = tone_packets(&pcap::read_rtp(&pcap_path), 600.0, 440.0) * 20;
    assert!(answer_ms >= 500, "the answer to key 1 was heard ({answer_ms} ms of 600 Hz)");
}

#[test]
#[cfg_attr(not(has_sipp), ignore = "needs sipp (scripts/install-deps.sh)")]
fn an_idle_caller_is_re_prompted_then_said_goodbye_to_and_hung_up_on() {
    let ports = Ports::for_slot(71);
    let dir = tools::scratch_dir("conversation_idle");
    let sim = Sim::start(ports, &["--greeting-tone", "440:400"], &dir);
    let gateway = Gateway::start(
        ports,
        &sim.url(),
        "[agents.default]\ngreeting = \"Hello.\"\nidle_timeout_secs = 1\nidle_prompts = 1\n",
        &dir,
    );
    // The caller says nothing and sends no RTP; the scenario waits for our BYE.
    let formats = "0 101";
    let out = sipp::run(
        "uac_wait_bye.xml",
        &[("FORMATS", formats), ("RTPMAPS", &sipp::rtpmaps(formats)), ("EXPECT_PT", "0")],
        &dir,
        ports,
        "15550001000",
        0,
    );
    assert!(out.status.success(), "no BYE from the gateway; log:\n{}", gateway.log());
    let creates: Vec<String> = client_events(&sim)
        .iter()
        .filter(|e| e["type"] == "response.create")
        .map(|e| e["event_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(creates, ["evt_greeting", "evt_idle_prompt", "evt_goodbye"]);
    let metrics = gateway.metrics();
    assert!(
        metrics.lines().any(|l| l.starts_with("switchboard_calls_total") && l.contains("reason=\"caller_idle\"")),
        "{metrics}"
    );
}

/// A packet carries the agent's 440 Hz greeting (silence frames do not).
fn carries_greeting(packet: &RtpPacket) -> bool {
    let samples: Vec<i16> = packet.payload.iter().map(|&b| audio::ulaw_to_linear(b)).collect();
    let rms = (samples.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / samples.len() as f64).sqrt();
    rms > 300.0 && audio::goertzel(&samples, 8000.0, 440.0) > audio::goertzel(&samples, 8000.0, 1000.0) * 10.0
}

#[test]
#[cfg_attr(not(all(has_sipp, has_tshark)), ignore = "needs sipp and tshark (scripts/install-deps.sh)")]
fn confirm_mode_a_short_cough_keeps_the_agent_talking() {
    let ports = Ports::for_slot(72);
    let dir = tools::scratch_dir("conversation_confirm_cough");
    // 1.5 s into a 4 s greeting, a 200 ms cough; speech_stopped follows 300 ms of silence later.
    let cough = audio::silence_tone_silence_ulaw(&dir, "cough.ul", 1500, 1000.0, 200, 4000);
    let sim = Sim::start(ports, &["--greeting-tone", "440:4000"], &dir);
    let gateway = Gateway::start(
        ports,
        &sim.url(),
        "[agents.default]\ngreeting = \"Hello.\"\nbarge_in = \"confirm\"\nbarge_in_confirm_ms = 400\n\
         vad_silence_duration_ms = 300\n",
        &dir,
    );
    let filter = format!("udp and dst portrange {}-{}", ports.peer_media, ports.peer_media + 3);
    let capture = Capture::start(&filter, &dir.join("to_caller.pcap"), 30);
    pcmu_call(ports, "uac_call.xml", &sipp::rtp_stream(&cough, "0"), &[], &dir, 6500);
    let pcap_path = capture.finish();

    let sessions = sim.sessions();
    let all = sessions[0]["events"].as_array().expect("events").clone();
    let server = |kind: &str| all.iter().any(|e| e["direction"] == "server" && e["event"]["type"] == kind);
    assert!(server("input_audio_buffer.speech_started"), "the simulator heard the cough");
    assert!(server("input_audio_buffer.speech_stopped"));
    let client = client_events(&sim);
    let sent = |kind: &str| client.iter().any(|e| e["type"] == kind);
    assert!(!sent("conversation.item.truncate"), "a cough is no barge-in; log:\n{}", gateway.log());
    assert!(!sent("response.cancel"));
    let session_update = client.iter().find(|e| e["type"] == "session.update").expect("session.update");
    let vad = &session_update["session"]["audio"]["input"]["turn_detection"];
    assert_eq!((&vad["interrupt_response"], &vad["create_response"]), (&Value::Bool(false), &Value::Bool(false)));

    let greeting: Vec<RtpPacket> = pcap::read_rtp(&pcap_path).into_iter().filter(carries_greeting).collect();
    let heard_ms = greeting.len() * 20;
    eprintln!("confirm cough: the caller heard {heard_ms} ms of the 4000 ms greeting");
    assert!(heard_ms >= 3900, "the whole greeting is heard, paused and resumed ({heard_ms} ms)");
    let metrics = gateway.metrics();
    assert!(metrics.contains("switchboard_barge_ins_resumed_total 1"), "{metrics}");
    assert!(!metrics.contains("switchboard_barge_ins_total 1"));
}

#[test]
#[cfg_attr(not(all(has_sipp, has_tshark)), ignore = "needs sipp and tshark (scripts/install-deps.sh)")]
fn end_call_hangs_up_after_the_goodbye_was_heard_in_full() {
    let ports = Ports::for_slot(73);
    let dir = tools::scratch_dir("conversation_end_call");
    let sim = Sim::start(ports, &[], &dir);
    let gateway = Gateway::start(ports, &sim.url(), "[agents.default]\ngreeting = \"\"\n", &dir);
    let filter =
        format!("udp and (dst portrange {}-{} or port {})", ports.peer_media, ports.peer_media + 3, ports.peer_sip);
    let capture = Capture::start(&filter, &dir.join("to_caller.pcap"), 30);
    let formats = "0 101";
    let rtpmaps = sipp::rtpmaps(formats);
    let scenario_dir = dir.clone();
    let caller = std::thread::spawn(move || {
        sipp::run(
            "uac_wait_bye.xml",
            &[("FORMATS", formats), ("RTPMAPS", &rtpmaps), ("EXPECT_PT", "0")],
            &scenario_dir,
            ports,
            "15550001000",
            0,
        )
    });
    // Once the call is up, the model says goodbye and calls end_call.
    wait_for_ack(&gateway);
    std::thread::sleep(Duration::from_millis(300));
    sim.control("call_tool", r#"{"name":"end_call","arguments":"{}","say_ms":1500,"now":true}"#);
    let out = caller.join().expect("sipp thread");
    // The BYE is the last packet: give tshark time to write it before it is stopped.
    std::thread::sleep(Duration::from_millis(500));
    let pcap_path = capture.finish();
    assert!(out.status.success(), "no BYE from the gateway; log:\n{}", gateway.log());

    let client = client_events(&sim);
    assert!(
        client.iter().any(|e| e["type"] == "conversation.item.create" && e["item"]["type"] == "function_call_output"),
        "the end_call is answered"
    );
    let udp = pcap::read_udp(&pcap_path);
    let bye_us = udp
        .iter()
        .find(|p| p.payload.starts_with(b"BYE "))
        .map(|p| p.time_us)
        .unwrap_or_else(|| panic!("no BYE captured; log:\n{}", gateway.log()));
    let rtp = pcap::read_rtp(&pcap_path);
    let goodbye: Vec<&RtpPacket> = rtp
        .iter()
        .filter(|p| {
            let samples: Vec<i16> = p.payload.iter().map(|&b| audio::ulaw_to_linear(b)).collect();
            samples.iter().map(|&s| i32::from(s).abs()).max().unwrap_or(0) > 1000
        })
        .collect();
    let heard_ms = goodbye.len() * 20;
    eprintln!("end_call: the caller heard {heard_ms} ms of the 1500 ms goodbye before BYE");
    assert!((1480..=1520).contains(&heard_ms), "the whole goodbye, once ({heard_ms} ms)");
    assert!(goodbye.iter().all(|p| p.time_us < bye_us), "BYE only after the last goodbye packet");
    let metrics = gateway.metrics();
    assert!(
        metrics.lines().any(|l| l.starts_with("switchboard_calls_total") && l.contains("reason=\"agent_hangup\"")),
        "{metrics}"
    );
}

/// 16-bit mono 8 kHz WAV of silence (baresip's aufile source needs a file to play).
fn silence_wav(path: &Path, secs: u32) {
    let data_len = secs * 8000 * 2;
    let mut wav = Vec::with_capacity(44 + data_len as usize);
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data_len).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&1u16.to_le_bytes()); // mono
    wav.extend_from_slice(&8000u32.to_le_bytes());
    wav.extend_from_slice(&16_000u32.to_le_bytes());
    wav.extend_from_slice(&2u16.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data_len.to_le_bytes());
    wav.resize(44 + data_len as usize, 0);
    std::fs::write(path, wav).expect("write wav");
}

#[test]
#[cfg_attr(not(has_baresip), ignore = "needs baresip (scripts/install-deps.sh)")]
fn rfc_4733_keys_from_baresip_reach_the_model_as_a_text_item() {
    use std::io::Write;
    use std::process::Command;
    use switchboard_e2e::procs::ChildGuard;

    let ports = Ports::for_slot(74);
    let dir = tools::scratch_dir("conversation_rfc4733_baresip");
    let sim = Sim::start(ports, &[], &dir);
    let gateway = Gateway::start(ports, &sim.url(), "[agents.default]\ndtmf_coalesce_ms = 1500\n", &dir);
    let source = dir.join("silence.wav");
    silence_wav(&source, 10);
    // ctrl_tcp: baresip takes commands (sndcode: press keys) as netstrings on a TCP port.
    let control = format!("module_app ctrl_tcp.so\nctrl_tcp_listen 127.0.0.1:{}\n", ports.peer_control);
    let phone = Phone { record: false, extra: &control, ..Phone::alice(ports, &source) };
    let conf = phone.folder(&dir);
    let log = std::fs::File::create(dir.join("baresip.log")).expect("baresip log");
    let mut baresip = ChildGuard::spawn(
        "baresip",
        Command::new("baresip")
            .arg("-f")
            .arg(&conf)
            .args(["-u", "audio_codecs=PCMU", "-t", "7"])
            .arg("-e")
            .arg(format!("/dial sip:15550001000@127.0.0.1:{}", ports.sip))
            .stdout(log),
    );
    // Once the call is up, press 4 then 2.
    wait_for_ack(&gateway);
    std::thread::sleep(Duration::from_millis(500));
    let command = r#"{"command":"sndcode","params":"42","token":"keys"}"#;
    let mut control = std::net::TcpStream::connect(("127.0.0.1", ports.peer_control)).expect("baresip ctrl_tcp");
    control.write_all(format!("{}:{command},", command.len()).as_bytes()).expect("send sndcode");
    baresip.wait_timeout(Duration::from_secs(15)).expect("baresip quits after -t");
    let events = client_events(&sim);
    assert_eq!(
        user_texts(&events),
        vec!["The caller pressed 4, 2.".to_string()],
        "baresip said:\n{}\ngateway log:\n{}",
        std::fs::read_to_string(dir.join("baresip.log")).unwrap_or_default(),
        gateway.log()
    );
    assert!(response_follows(&events, "The caller pressed 4, 2."));
}

#[test]
#[cfg_attr(not(all(has_sipp, has_tshark)), ignore = "needs sipp and tshark (scripts/install-deps.sh)")]
fn phases_play_in_order_and_a_barge_in_truncates_each_item_at_its_own_ms() {
    let ports = Ports::for_slot(75);
    let dir = tools::scratch_dir("conversation_phases");
    // Each answer: commentary (400 ms at 660 Hz), then final_answer (1.5 s at 440 Hz); three
    // late deltas follow every interruption.
    let sim = Sim::start(ports, &["--phases", "--late-deltas", "3", "--behaviour", "tone:440:1500"], &dir);
    let gateway = Gateway::start(ports, &sim.url(), "[agents.default]\ngreeting = \"\"\n", &dir);
    // A question (0.3-0.9 s), then, as the answer plays, the caller talks again (from 1.9 s).
    let mut stream =
        std::fs::read(audio::silence_tone_silence_ulaw(&dir, "a.ul", 300, 1000.0, 600, 1000)).expect("read");
    stream.extend(std::fs::read(audio::silence_tone_silence_ulaw(&dir, "b.ul", 0, 1000.0, 600, 3000)).expect("read"));
    let stream_path = dir.join("two_utterances.ul");
    std::fs::write(&stream_path, stream).expect("write");
    let filter = format!("udp and dst portrange {}-{}", ports.peer_media, ports.peer_media + 3);
    let capture = Capture::start(&filter, &dir.join("to_caller.pcap"), 30);
    pcmu_call(ports, "uac_call.xml", &sipp::rtp_stream(&stream_path.display().to_string(), "0"), &[], &dir, 6000);
    let pcap_path = capture.finish();

    let sessions = sim.sessions();
    let all = sessions[0]["events"].as_array().expect("events").clone();
    let server: Vec<&Value> = all.iter().filter(|e| e["direction"] == "server").collect();
    assert!(!server.iter().any(|e| e["event"]["type"] == "error"), "the simulator refused something: {server:?}");
    let item_of_phase = |phase: &str| -> String {
        let added = server
            .iter()
            .find(|e| e["event"]["type"] == "response.output_item.added" && e["event"]["item"]["phase"] == phase);
        added.and_then(|e| e["event"]["item"]["id"].as_str()).expect("a phase item").to_owned()
    };
    let (commentary, answer) = (item_of_phase("commentary"), item_of_phase("final_answer"));
    // The first answer's audio is all sent before the second response starts.
    let second_created_us = server
        .iter()
        .filter(|e| e["event"]["type"] == "response.created")
        .nth(1)
        .and_then(|e| e["at_unix_us"].as_i64())
        .expect("the second utterance got its own response");
    let first: Vec<RtpPacket> =
        pcap::read_rtp(&pcap_path).into_iter().filter(|p| p.time_us < second_created_us).collect();
    let heard_commentary = tone_packets(&first, 660.0, 440.0) as i64 * 20;
    let heard_answer = tone_packets(&first, 440.0, 660.0) as i64 * 20;
    let truncates: Vec<(String, i64)> = client_events(&sim)
        .iter()
        .filter(|e| e["type"] == "conversation.item.truncate")
        .map(|e| (e["item_id"].as_str().unwrap_or_default().to_owned(), e["audio_end_ms"].as_i64().unwrap_or(-1)))
        .collect();
    eprintln!("phases: heard commentary {heard_commentary} ms, answer {heard_answer} ms; truncates {truncates:?}");
    assert_eq!(truncates.len(), 1 + usize::from(heard_answer == 0), "{truncates:?}; log:\n{}", gateway.log());
    if heard_answer == 0 {
        // Interrupted during the commentary: cut there, the unheard answer at 0.
        assert_eq!(truncates[0].0, commentary);
        assert!((truncates[0].1 - heard_commentary).abs() <= 20, "{truncates:?}");
        assert_eq!(truncates[1], (answer, 0));
    } else {
        // The commentary was heard in full, in order, then the answer was cut at its own ms
        // (late deltas never played: they would be heard beyond the truncate).
        assert!(heard_commentary >= 380, "the commentary in full ({heard_commentary} ms)");
        let starts = |hz: f64, versus: f64| {
            first.iter().find(|p| tone_packets(std::slice::from_ref(*p), hz, versus) == 1).map(|p| p.time_us)
        };
        assert!(starts(660.0, 440.0) < starts(440.0, 660.0), "the commentary plays first");
        assert_eq!(truncates[0].0, answer);
        assert!((truncates[0].1 - heard_answer).abs() <= 20, "{truncates:?} vs {heard_answer} ms heard");
    }
}

#[test]
#[cfg_attr(not(all(has_sipp, has_tshark)), ignore = "needs sipp and tshark (scripts/install-deps.sh)")]
fn confirm_mode_real_speech_stops_the_agent_truncates_and_gets_an_answer() {
    let ports = Ports::for_slot(76);
    let dir = tools::scratch_dir("conversation_confirm_speech");
    // 1 s into a 4 s greeting the caller talks for 1.2 s: longer than barge_in_confirm_ms.
    let speech = audio::silence_tone_silence_ulaw(&dir, "speech.ul", 1000, 1000.0, 1200, 3000);
    let sim = Sim::start(ports, &["--greeting-tone", "440:4000"], &dir);
    let gateway = Gateway::start(
        ports,
        &sim.url(),
        "[agents.default]\ngreeting = \"Hello.\"\nbarge_in = \"confirm\"\nbarge_in_confirm_ms = 400\n\
         vad_silence_duration_ms = 300\n",
        &dir,
    );
    let filter = format!("udp and dst portrange {}-{}", ports.peer_media, ports.peer_media + 3);
    let capture = Capture::start(&filter, &dir.join("to_caller.pcap"), 30);
    pcmu_call(ports, "uac_call.xml", &sipp::rtp_stream(&speech, "0"), &[], &dir, 5000);
    let pcap_path = capture.finish();

    let sessions = sim.sessions();
    let all = sessions[0]["events"].as_array().expect("events").clone();
    let server: Vec<&Value> = all.iter().filter(|e| e["direction"] == "server").collect();
    assert!(!server.iter().any(|e| e["event"]["type"] == "error"), "the simulator refused something: {server:?}");
    let at = |e: &Value| e["at_unix_us"].as_i64().unwrap_or_default();
    let client: Vec<&Value> = all.iter().filter(|e| e["direction"] == "client").collect();
    let truncate = client
        .iter()
        .find(|e| e["event"]["type"] == "conversation.item.truncate")
        .unwrap_or_else(|| panic!("a real barge-in truncates; log:\n{}", gateway.log()));
    let stopped =
        server.iter().find(|e| e["event"]["type"] == "input_audio_buffer.speech_stopped").expect("the speech ended");
    // The gateway, not the API, answers the turn (create_response is off in confirm mode).
    let turn = client
        .iter()
        .find(|e| e["event"]["type"] == "response.create" && e["event"]["event_id"] == "evt_turn")
        .expect("the gateway asks for the answer");
    assert!(at(turn) >= at(stopped), "asked for once the caller's turn ended");
    // What the caller heard of the greeting before the barge-in is what the item is cut to.
    let heard_ms = pcap::read_rtp(&pcap_path).iter().filter(|p| p.time_us < at(truncate) && carries_greeting(p)).count()
        as i64
        * 20;
    let audio_end_ms = truncate["event"]["audio_end_ms"].as_i64().expect("audio_end_ms");
    eprintln!("confirm speech: truncate at {audio_end_ms} ms, the caller heard {heard_ms} ms");
    assert!((audio_end_ms - heard_ms).abs() <= 20, "{audio_end_ms} vs {heard_ms} ms heard");
    assert!(heard_ms < 3000, "the greeting was stopped ({heard_ms} ms heard)");
    assert!(gateway.metrics().contains("switchboard_barge_ins_total 1"));
}
