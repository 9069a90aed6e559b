//! Outbound calls: `POST /v1/calls` makes the release gateway dial a SIPp UAS or an
//! auto-answering baresip through a `[trunks]` entry; the callee's speech must come back through
//! the simulator's echo agent, and each way a call can fail must show up as its typed outcome in
//! `GET /v1/calls/{id}`. The capture is the judge of RTP; SIPp's scenario is the judge of SIP.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use switchboard_e2e::audio::{self, Speech};
use switchboard_e2e::baresip::{self, Phone};
use switchboard_e2e::pcap::{self, RtpPacket};
use switchboard_e2e::procs::{Capture, ChildGuard, Gateway, Sim, run_bounded};
use switchboard_e2e::real_call::MIN_CORRELATION;
use switchboard_e2e::{Ports, sipp, tools};

const TOKEN: &str = "e2e-admin-token";

/// One HTTP/1.1 request to the admin listener (`Connection: close`); returns (status, body).
fn http(ports: Ports, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> (u16, String) {
    let (status, _, body) = http_with_head(ports, method, path, token, body);
    (status, body)
}

/// [`http`], with the response head (status line and headers) too.
fn http_with_head(
    ports: Ports,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String, String) {
    let addr: SocketAddr = ([127, 0, 0, 1], ports.admin).into();
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect to admin");
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() {
        request.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((response.as_str(), ""));
    let (head, body) = (head.to_string(), body.to_string());
    // Bodies are small JSON documents: undo chunked framing if hyper chose it.
    let body = if body.starts_with(|c: char| c.is_ascii_hexdigit()) && !body.starts_with('{') {
        body.lines().nth(1).unwrap_or_default().to_string()
    } else {
        body
    };
    (status, head, body)
}

/// `POST /v1/calls`; returns the new call's id (asserts 201).
fn place_call(ports: Ports, token: Option<&str>, body: &str, gateway: &Gateway) -> String {
    let (status, answer) = http(ports, "POST", "/v1/calls", token, Some(body));
    assert_eq!(status, 201, "POST /v1/calls answered {status}: {answer}\ngateway log:\n{}", gateway.log());
    let answer: Value = serde_json::from_str(&answer).expect("JSON answer");
    answer["id"].as_str().expect("id").to_string()
}

/// Polls `GET /v1/calls/{id}` until `done` holds (at most `limit`); returns the last view.
fn wait_for_call(ports: Ports, token: Option<&str>, id: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let (status, body) = http(ports, "GET", &format!("/v1/calls/{id}"), token, None);
        assert_eq!(status, 200, "GET /v1/calls/{id}: {body}");
        let view: Value = serde_json::from_str(&body).expect("JSON call");
        if done(&view) || Instant::now() > deadline {
            return view;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ended(view: &Value) -> bool {
    view["state"] == "ended"
}

/// The gateway's config for a trunk pointing at the test's peer port.
fn trunk_toml(ports: Ports, extra: &str) -> String {
    format!("[trunks.peer]\naddress = \"127.0.0.1:{}\"\nring_timeout_secs = 2\n{extra}", ports.peer_sip)
}

/// SIPp as the callee (UAS) on the slot's peer ports, in the background. Placeholders `@KEY@` are
/// filled in as `sipp::run` does.
struct Callee {
    guard: ChildGuard,
    dir: std::path::PathBuf,
    scenario: String,
}

impl Callee {
    fn start(scenario: &str, placeholders: &[(&str, &str)], dir: &Path, ports: Ports, pause_ms: u32) -> Callee {
        let mut text = std::fs::read_to_string(tools::scenario(scenario)).expect("read scenario");
        for (key, value) in placeholders {
            text = text.replace(&format!("@{key}@"), value);
        }
        assert!(!text.contains("@MEDIA@") && !text.contains("@USER@"), "unfilled placeholder in {scenario}");
        let path = dir.join(scenario);
        std::fs::write(&path, text).expect("write scenario");
        let log = std::fs::File::create(dir.join(format!("{scenario}.out"))).expect("sipp log");
        let guard = ChildGuard::spawn(
            "sipp",
            Command::new("sipp")
                .arg("-sf")
                .arg(&path)
                .args(["-i", "127.0.0.1", "-mi", "127.0.0.1"])
                .args(["-p", &ports.peer_sip.to_string(), "-mp", &ports.peer_media.to_string()])
                .args(["-d", &pause_ms.to_string(), "-m", "1", "-nostdin", "-timeout", "40s", "-timeout_error"])
                .arg("-trace_err")
                .arg("-error_file")
                .arg(dir.join(format!("{scenario}.errors")))
                .current_dir(dir)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone log"))
                .stderr(log),
        );
        // SIPp binds its UDP port at once; give it a moment before the gateway dials.
        std::thread::sleep(Duration::from_millis(300));
        Callee { guard, dir: dir.to_path_buf(), scenario: scenario.to_string() }
    }

    /// Waits for SIPp to finish its scenario; asserts it succeeded.
    fn finish(mut self, limit: Duration, gateway: &Gateway) -> ExitStatus {
        let status = self.guard.wait_timeout(limit);
        let errors = std::fs::read_to_string(self.dir.join(format!("{}.errors", self.scenario))).unwrap_or_default();
        match status {
            Some(status) if status.success() => status,
            other => panic!(
                "SIPp {} did not succeed ({other:?}); errors:\n{errors}\ngateway log:\n{}",
                self.scenario,
                gateway.log()
            ),
        }
    }
}

/// Speech (µ-law) followed by 1.5 s of silence, for SIPp's `rtp_stream`.
fn speech_stream(ulaw: &Path, dir: &Path) -> String {
    let mut stream = std::fs::read(ulaw).expect("read speech");
    stream.extend(std::iter::repeat_n(0xFF_u8, 8000 * 3 / 2));
    let path = dir.join("callee_speech.ul");
    std::fs::write(&path, stream).expect("write stream");
    path.display().to_string()
}

fn capture_media(ports: Ports, dir: &Path) -> Capture {
    let filter = format!(
        "udp and (portrange {}-{} or portrange {}-{})",
        ports.rtp_first,
        ports.rtp_last,
        ports.peer_media,
        ports.peer_media + 99
    );
    Capture::start(&filter, &dir.join("media.pcap"), 60)
}

#[test]
#[cfg_attr(
    not(all(has_sipp, has_tshark, has_espeak_ng)),
    ignore = "needs sipp, tshark and espeak-ng (scripts/install-deps.sh)"
)]
fn outbound_call_to_sipp_echoes_the_callees_speech() {
    let test = "outbound_call_to_sipp_echoes_the_callees_speech";
    let ports = Ports::for_slot(20);
    let dir = tools::scratch_dir(test);
    let Speech { wav_8k, ulaw, .. } = audio::make_speech(&dir);
    let stream = speech_stream(&ulaw, &dir);
    let sim = Sim::start(ports, &["--behaviour", "echo"], &dir);
    let gateway = Gateway::start(ports, &sim.url(), &trunk_toml(ports, "codecs = [\"PCMU\", \"PCMA\"]\n"), &dir);
    let capture = capture_media(ports, &dir);
    let callee = Callee::start("uas_answer.xml", &[("MEDIA", &sipp::rtp_stream(&stream, "0"))], &dir, ports, 9000);

    let id = place_call(ports, None, r#"{"to": "+1 555 000 1234", "agent": "default"}"#, &gateway);
    let answered = wait_for_call(ports, None, &id, Duration::from_secs(10), |v| v["state"] == "answered");
    assert_eq!(answered["state"], "answered", "{answered}\n{}", gateway.log());
    assert_eq!(answered["direction"], "outbound");
    assert_eq!(answered["codec"], "PCMU");
    assert_eq!(answered["to"], "…1234", "numbers are redacted as in the logs");
    let (status, list) = http(ports, "GET", "/v1/calls", None, None);
    assert_eq!(status, 200);
    assert!(list.contains(&id), "GET /v1/calls lists the call: {list}");

    callee.finish(Duration::from_secs(30), &gateway);
    let view = wait_for_call(ports, None, &id, Duration::from_secs(5), ended);
    let pcap_path = capture.finish();
    assert_eq!(view["outcome"]["outcome"], "answered", "{view}");
    assert_eq!(view["outcome"]["end"], "caller_bye", "{view}");

    let packets = pcap::read_rtp(&pcap_path);
    let to_callee: Vec<&RtpPacket> = packets.iter().filter(|p| p.dst.port() == ports.peer_media).collect();
    assert!(to_callee.len() > 300, "the gateway sent only {} RTP packets to the callee", to_callee.len());
    assert!(to_callee.iter().all(|p| p.payload_type == 0), "PCMU was answered");
    let received: Vec<i16> =
        to_callee.iter().flat_map(|p| p.payload.iter().map(|&b| audio::ulaw_to_linear(b))).collect();
    let (_, reference) = audio::read_wav(&wav_8k);
    let (lag, r) =
        audio::best_lag_correlation(&audio::envelope(&reference, 160), &audio::envelope(&received, 160), 600);
    eprintln!("{test}: echo envelope correlation r = {r:.3} at lag {} ms", lag * 20);
    assert!(r >= MIN_CORRELATION, "the echo the callee heard correlates only {r:.3} with its speech");

    let metrics = gateway.metrics();
    assert!(metrics.contains(r#"switchboard_outbound_calls_total{outcome="answered"} 1"#), "{metrics}");
    let (_, list) = http(ports, "GET", "/v1/calls", None, None);
    assert!(!list.contains(&id), "an ended call is no longer listed as active: {list}");
}

#[test]
#[cfg_attr(
    not(all(has_baresip, has_espeak_ng, has_sox)),
    ignore = "needs baresip, espeak-ng and sox (scripts/install-deps.sh)"
)]
fn outbound_call_to_baresip_echoes_its_speech() {
    let test = "outbound_call_to_baresip_echoes_its_speech";
    let ports = Ports::for_slot(21);
    let dir = tools::scratch_dir(test);
    let speech = audio::make_speech(&dir);
    let source = dir.join("speech_then_silence.wav");
    let padded = run_bounded(
        "sox",
        Command::new("sox").arg(&speech.wav_8k).arg(&source).args(["pad", "0", "7"]),
        Duration::from_secs(30),
    );
    assert!(padded.status.success(), "sox pad failed");
    let sim = Sim::start(ports, &["--behaviour", "echo"], &dir);
    let gateway = Gateway::start(ports, &sim.url(), &trunk_toml(ports, "codecs = [\"PCMU\"]\n"), &dir);

    // baresip answers by itself (answermode=auto), plays the speech and records what it hears.
    let phone = Phone { auto_answer: true, ..Phone::alice(ports, &source) };
    let conf = phone.folder(&dir);
    let log = std::fs::File::create(dir.join("baresip.out")).expect("baresip log");
    let mut baresip = ChildGuard::spawn(
        "baresip",
        Command::new("baresip")
            .arg("-f")
            .arg(&conf)
            .args(["-u", "audio_codecs=PCMU", "-t", "18"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log),
    );
    std::thread::sleep(Duration::from_millis(800));

    let body = format!(r#"{{"to": "sip:alice@127.0.0.1:{}", "agent": "default"}}"#, ports.peer_sip);
    let id = place_call(ports, None, &body, &gateway);
    let answered = wait_for_call(ports, None, &id, Duration::from_secs(10), |v| v["state"] != "setup");
    assert_eq!(answered["state"], "answered", "{answered}\ngateway log:\n{}", gateway.log());
    if baresip.wait_timeout(Duration::from_secs(30)).is_none() {
        baresip.terminate(Duration::from_secs(3));
    }
    let view = wait_for_call(ports, None, &id, Duration::from_secs(15), ended);
    assert_eq!(view["outcome"]["outcome"], "answered", "{view}");

    let (rate, heard) = baresip::heard(&dir, phone.name).unwrap_or_else(|| {
        panic!(
            "baresip recorded nothing; baresip said:\n{}\ngateway log:\n{}",
            std::fs::read_to_string(dir.join("baresip.out")).unwrap_or_default(),
            gateway.log()
        )
    });
    let (original_rate, original) = audio::read_wav(&speech.wav_8k);
    let (_, r) = audio::best_lag_correlation(
        &audio::envelope(&original, (original_rate / 50) as usize),
        &audio::envelope(&heard, (rate / 50) as usize),
        600,
    );
    eprintln!("{test}: echo envelope correlation r = {r:.3}");
    assert!(r >= MIN_CORRELATION, "the echo baresip heard correlates only {r:.3} with the speech it played");
}

#[test]
#[cfg_attr(not(has_sipp), ignore = "needs sipp (scripts/install-deps.sh)")]
fn digest_challenge_is_answered_and_delete_hangs_up() {
    let test = "digest_challenge_is_answered_and_delete_hangs_up";
    let ports = Ports::for_slot(22);
    let dir = tools::scratch_dir(test);
    let trunk = trunk_toml(ports, "username = \"gw-user\"\npassword_env = \"E2E_TRUNK_PASSWORD\"\n");
    let agent = "[agents.default]\ngreeting = \"Hello {{name}}, this is your reminder.\"\n";
    let sim = Sim::start(ports, &["--behaviour", "echo"], &dir);
    let gateway = Gateway::start_with_env(
        ports,
        &sim.url(),
        &format!("{trunk}{agent}"),
        &dir,
        &[("E2E_TRUNK_PASSWORD", "pw-never-logged")],
    );

    // 401 with a challenge, then the INVITE again with Authorization (checked by the scenario).
    let callee = Callee::start("uas_auth.xml", &[("USER", "gw-user")], &dir, ports, 1000);
    let id =
        place_call(ports, None, r#"{"to": "5550100", "agent": "default", "variables": {"name": "Ada"}}"#, &gateway);
    callee.finish(Duration::from_secs(20), &gateway);
    let view = wait_for_call(ports, None, &id, Duration::from_secs(5), ended);
    assert_eq!(view["outcome"]["outcome"], "answered", "{view}\ngateway log:\n{}", gateway.log());
    assert!(!gateway.log().contains("pw-never-logged"), "the trunk password reached the log");
    // The agent greets first, with the request's variables filled in.
    let sessions = sim.sessions();
    let events = sessions[0]["events"].as_array().expect("events");
    let first_request = events
        .iter()
        .find(|e| e["direction"] == "client" && e["event"]["type"] != "session.update")
        .expect("a client event after session.update");
    assert_eq!(first_request["event"]["type"], "response.create", "{first_request}");
    let instructions = first_request["event"]["response"]["instructions"].as_str().unwrap_or_default();
    assert!(instructions.contains("Hello Ada, this is your reminder."), "{instructions}");

    // An answered call hung up through the API: the callee sees a BYE.
    let callee = Callee::start("uas_wait_bye.xml", &[], &dir, ports, 0);
    let id = place_call(ports, None, r#"{"to": "5550101", "agent": "default", "variables": {"name": "Bo"}}"#, &gateway);
    let answered = wait_for_call(ports, None, &id, Duration::from_secs(10), |v| v["state"] == "answered");
    assert_eq!(answered["state"], "answered", "{answered}\ngateway log:\n{}", gateway.log());
    std::thread::sleep(Duration::from_millis(500));
    let (status, body) = http(ports, "DELETE", &format!("/v1/calls/{id}"), None, None);
    assert_eq!(status, 204, "DELETE: {body}");
    callee.finish(Duration::from_secs(10), &gateway);
    let view = wait_for_call(ports, None, &id, Duration::from_secs(5), ended);
    assert_eq!(view["outcome"]["outcome"], "answered", "{view}");
    assert_eq!(view["outcome"]["end"], "operator_hangup", "{view}");
    let (status, _) = http(ports, "DELETE", &format!("/v1/calls/{id}"), None, None);
    assert_eq!(status, 409, "a second DELETE finds the call ended");
    let metrics = gateway.metrics();
    assert!(metrics.contains(r#"switchboard_outbound_calls_total{outcome="answered"} 2"#), "{metrics}");

    // Inbound calls are listed too, and DELETE hangs them up the same way.
    let sipp_dir = dir.clone();
    let caller = std::thread::spawn(move || sipp::run("uac_wait_bye.xml", &[], &sipp_dir, ports, "15550001000", 0));
    let deadline = Instant::now() + Duration::from_secs(10);
    let inbound = loop {
        let (status, body) = http(ports, "GET", "/v1/calls", None, None);
        assert_eq!(status, 200, "{body}");
        let list: Value = serde_json::from_str(&body).expect("JSON list");
        let answered = list["calls"]
            .as_array()
            .expect("calls")
            .iter()
            .find(|c| c["direction"] == "inbound" && c["state"] == "answered")
            .cloned();
        if let Some(call) = answered {
            break call;
        }
        assert!(Instant::now() < deadline, "the inbound call never showed up answered: {list}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(inbound["agent"], "default", "{inbound}");
    assert_eq!(inbound["codec"], "PCMU", "{inbound}");
    assert_eq!(inbound["to"], "…1000", "{inbound}");
    let inbound_id = inbound["id"].as_str().expect("id");
    assert_eq!(http(ports, "DELETE", &format!("/v1/calls/{inbound_id}"), None, None).0, 204);
    let out = caller.join().expect("SIPp thread");
    assert!(out.status.success(), "the inbound caller saw no BYE; gateway log:\n{}", gateway.log());
    let metrics = gateway.metrics();
    // One of each direction, hung up through the API.
    for direction in ["outbound", "inbound"] {
        assert!(
            metrics.contains(&format!(
                r#"switchboard_calls_total{{direction="{direction}",outcome="completed",reason="operator_hangup"}} 1"#
            )),
            "{metrics}"
        );
    }
}

#[test]
#[cfg_attr(not(has_sipp), ignore = "needs sipp (scripts/install-deps.sh)")]
fn failed_calls_report_their_outcome_and_the_api_checks_requests() {
    let test = "failed_calls_report_their_outcome_and_the_api_checks_requests";
    let ports = Ports::for_slot(23);
    let dir = tools::scratch_dir(test);
    // The generated config has its own [admin] table: the token comes in through the environment.
    let gateway = Gateway::start_with_env(
        ports,
        "",
        &trunk_toml(ports, "max_concurrent = 1\n"),
        &dir,
        &[("SWITCHBOARD__ADMIN__TOKEN", TOKEN)],
    );
    let auth = Some(TOKEN);

    // The API: 401 without the token, 400 naming the field, 404 unknown agent or trunk or call.
    let good = r#"{"to": "5550100", "agent": "default"}"#;
    assert_eq!(http(ports, "POST", "/v1/calls", None, Some(good)).0, 401);
    assert_eq!(http(ports, "GET", "/v1/calls", Some("wrong-token"), None).0, 401);
    assert_eq!(http(ports, "GET", "/v1/calls", auth, None).0, 200);
    let (status, body) = http(ports, "POST", "/v1/calls", auth, Some(r#"{"to": "not a number", "agent": "default"}"#));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains(r#""field":"to""#), "{body}");
    let (status, body) = http(ports, "POST", "/v1/calls", auth, Some(r#"{"agent": "default"}"#));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains(r#""field":"to""#), "{body}");
    let (status, body) = http(ports, "POST", "/v1/calls", auth, Some(r#"{"to": "1", "agent": "nobody"}"#));
    assert_eq!(status, 404, "{body}");
    assert!(body.contains(r#""field":"agent""#), "{body}");
    let (status, body) =
        http(ports, "POST", "/v1/calls", auth, Some(r#"{"to": "1", "agent": "default", "trunk": "nope"}"#));
    assert_eq!(status, 404, "{body}");
    assert!(body.contains(r#""field":"trunk""#), "{body}");
    assert_eq!(http(ports, "GET", "/v1/calls/unknown-id", auth, None).0, 404);
    assert_eq!(http(ports, "DELETE", "/v1/calls/unknown-id", auth, None).0, 404);
    assert!(!gateway.log().contains(TOKEN), "the admin token reached the log");

    // 486: busy.
    let callee = Callee::start("uas_busy.xml", &[], &dir, ports, 0);
    let id = place_call(ports, auth, good, &gateway);
    callee.finish(Duration::from_secs(10), &gateway);
    let view = wait_for_call(ports, auth, &id, Duration::from_secs(5), ended);
    assert_eq!(view["outcome"]["outcome"], "busy", "{view}\ngateway log:\n{}", gateway.log());
    assert_eq!(view["outcome"]["status"], 486, "{view}");

    // Never answered: CANCELled after the 2 s ring timeout.
    let callee = Callee::start("uas_no_answer.xml", &[], &dir, ports, 0);
    let placed = Instant::now();
    let id = place_call(ports, auth, good, &gateway);
    let ringing = wait_for_call(ports, auth, &id, Duration::from_secs(5), |v| v["state"] != "setup");
    assert_eq!(ringing["state"], "ringing", "{ringing}");
    callee.finish(Duration::from_secs(10), &gateway);
    let view = wait_for_call(ports, auth, &id, Duration::from_secs(5), ended);
    let took = placed.elapsed();
    assert_eq!(view["outcome"]["outcome"], "no_answer", "{view}\ngateway log:\n{}", gateway.log());
    assert!(took >= Duration::from_secs(2), "cancelled after {took:?}, before the 2 s ring timeout");

    // DELETE while ringing: CANCEL, outcome cancelled.
    let callee = Callee::start("uas_no_answer.xml", &[], &dir, ports, 0);
    let id = place_call(ports, auth, good, &gateway);
    let ringing = wait_for_call(ports, auth, &id, Duration::from_secs(5), |v| v["state"] == "ringing");
    assert_eq!(ringing["state"], "ringing", "{ringing}");
    // The trunk carries max_concurrent = 1 call: a second one is refused for now.
    let (status, head, body) = http_with_head(ports, "POST", "/v1/calls", auth, Some(good));
    assert_eq!(status, 503, "{body}");
    assert!(head.to_ascii_lowercase().contains("retry-after: 5"), "{head}");
    assert_eq!(http(ports, "DELETE", &format!("/v1/calls/{id}"), auth, None).0, 204);
    callee.finish(Duration::from_secs(10), &gateway);
    let view = wait_for_call(ports, auth, &id, Duration::from_secs(5), ended);
    assert_eq!(view["outcome"]["outcome"], "cancelled", "{view}\ngateway log:\n{}", gateway.log());

    let metrics = gateway.metrics();
    for outcome in ["busy", "no_answer", "cancelled"] {
        assert!(
            metrics.contains(&format!(r#"switchboard_outbound_calls_total{{outcome="{outcome}"}} 1"#)),
            "{outcome} missing:\n{metrics}"
        );
        // Every call counts once in switchboard_calls_total, connected or not.
        assert!(
            metrics.contains(&format!(
                r#"switchboard_calls_total{{direction="outbound",outcome="not_connected",reason="{outcome}"}} 1"#
            )),
            "{outcome} missing from switchboard_calls_total:\n{metrics}"
        );
    }
}
