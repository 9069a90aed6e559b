//! SIP over TLS against the release gateway: SIPp calls in over TLS (through tests/src/tls.rs's
//! relay: Debian's SIPp has no TLS) and a capture of the TLS port shows no cleartext SIP;
//! baresip calls in over TLS and the echo agent's audio correlates; `POST /v1/calls` reaches a
//! TLS trunk whose certificate verifies, and not one whose name does not match.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use switchboard_e2e::audio;
use switchboard_e2e::baresip::{Phone, heard};
use switchboard_e2e::procs::{Capture, ChildGuard, Gateway, Sim, http_get, http_post, run_bounded};
use switchboard_e2e::tls::{TestCerts, TlsRelay, contains, handshake_trusting, read_tcp_payloads};
use switchboard_e2e::{Ports, tools};

fn local(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

/// The gateway on the slot's ports with its TLS listener on `sip + 1`.
fn gateway_with_tls(ports: Ports, realtime_url: &str, extra_toml: &str, certs: &TestCerts, dir: &Path) -> Gateway {
    let env = certs.gateway_env(local(ports.sip + 1));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Gateway::start_with_env(ports, realtime_url, extra_toml, dir, &env)
}

/// A scenario of tests/scenarios with `@KEY@` placeholders filled, written into `dir`.
fn scenario(name: &str, placeholders: &[(&str, String)], dir: &Path) -> PathBuf {
    let mut text = std::fs::read_to_string(tools::scenario(name)).expect("read scenario");
    for (key, value) in placeholders {
        text = text.replace(&format!("@{key}@"), value);
    }
    assert!(!text.contains("_PORT@"), "unfilled placeholder in {name}");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write scenario");
    path
}

/// The value of a metric series in a /metrics text (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines().find_map(|line| line.strip_prefix(series)?.trim().parse().ok()).unwrap_or(0.0)
}

#[test]
#[cfg_attr(not(all(has_sipp, has_tshark)), ignore = "needs sipp and tshark (scripts/install-deps.sh)")]
fn sipp_calls_over_tls_and_the_tls_port_carries_no_cleartext_sip() {
    let test = "sipp_calls_over_tls_and_the_tls_port_carries_no_cleartext_sip";
    let ports = Ports::for_slot(106);
    let dir = tools::scratch_dir(test);
    let certs = TestCerts::make(&dir);
    let gateway = gateway_with_tls(ports, "", "", &certs, &dir);
    let (tls_port, relay_port) = (ports.sip + 1, ports.peer_sip + 1);
    let _relay = TlsRelay::tcp_to_tls(local(relay_port), local(tls_port), &certs);
    let pcap = dir.join("tls.pcap");
    let capture = Capture::start(&format!("tcp port {tls_port} or tcp port {relay_port}"), &pcap, 60);

    let path = scenario("tls_uac_call.xml", &[("TLS_PORT", tls_port.to_string())], &dir);
    let out = run_bounded(
        "sipp",
        Command::new("sipp")
            .arg(local(relay_port).to_string())
            .arg("-sf")
            .arg(&path)
            .args(["-s", "15550001000", "-t", "t1", "-i", "127.0.0.1", "-mi", "127.0.0.1"])
            .args(["-p", &ports.peer_sip.to_string(), "-mp", &ports.peer_media.to_string()])
            .args(["-d", "1000", "-m", "1", "-nostdin", "-timeout", "30s", "-timeout_error", "-trace_err"])
            .arg("-error_file")
            .arg(dir.join("sipp_errors.log"))
            .current_dir(&dir),
        Duration::from_secs(45),
    );
    capture.finish();
    assert!(
        out.status.success(),
        "SIPp over TLS failed: {}\nerrors:\n{}\ngateway log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        std::fs::read_to_string(dir.join("sipp_errors.log")).unwrap_or_default(),
        gateway.log()
    );

    // The capture judges the wire: on the TLS port no SIP in clear, on the relay's TCP port
    // the very same call in clear (so the check below can see cleartext when there is some).
    let payloads = read_tcp_payloads(&pcap);
    let on = |port: u16| payloads.iter().filter(move |p| p.src.port() == port || p.dst.port() == port);
    assert!(on(tls_port).count() >= 4, "the capture holds the TLS connection");
    for packet in on(tls_port) {
        for cleartext in [&b"INVITE sip:"[..], b"SIP/2.0 200", b"BYE sip:", b"Call-ID"] {
            assert!(!contains(&packet.payload, cleartext), "cleartext SIP on the TLS port: {packet:?}");
        }
    }
    assert!(
        on(relay_port).any(|p| contains(&p.payload, b"INVITE sip:")),
        "the relay's side carries the INVITE in clear"
    );
    // tshark's own dissector agrees that the port carried a TLS handshake.
    let hello = run_bounded(
        "tshark",
        Command::new("tshark")
            .arg("-r")
            .arg(&pcap)
            .args(["-d", &format!("tcp.port=={tls_port},tls"), "-Y", "tls.handshake.type == 1", "-T", "fields"])
            .args(["-e", "frame.number"]),
        Duration::from_secs(30),
    );
    assert!(!String::from_utf8_lossy(&hello.stdout).trim().is_empty(), "no TLS ClientHello to the gateway");

    let metrics = gateway.metrics();
    let handshakes = metric(&metrics, r#"switchboard_sip_tls_handshakes_total{direction="inbound",outcome="ok"}"#);
    assert!(handshakes >= 1.0, "{metrics}");
    assert!(gateway.log().contains("transport=Tls"), "the INVITE was logged as received over TLS");

    // A renewed certificate written over the configured files is presented after a reload,
    // without a restart.
    let renewed_dir = dir.join("renewed");
    std::fs::create_dir_all(&renewed_dir).expect("mkdir renewed");
    let renewed = TestCerts::make(&renewed_dir);
    assert!(handshake_trusting(local(tls_port), &certs).is_ok());
    assert!(handshake_trusting(local(tls_port), &renewed).is_err(), "the renewed CA does not know the old certificate");
    std::fs::copy(&renewed.cert, &certs.cert).expect("renew the certificate");
    std::fs::copy(&renewed.key, &certs.key).expect("renew the key");
    let (status, body) = http_post(local(ports.admin), "/v1/reload", "{}");
    assert_eq!(status, 200, "POST /v1/reload: {body}\ngateway log:\n{}", gateway.log());
    assert!(!body.contains("sip.tls_cert"), "not reported as needing a restart: {body}");
    handshake_trusting(local(tls_port), &renewed)
        .unwrap_or_else(|e| panic!("after the reload: {e}\n{}", gateway.log()));
    assert!(handshake_trusting(local(tls_port), &certs).is_err(), "the old certificate is no longer presented");
    assert!(gateway.log().contains("renewed certificate"), "the rotation is logged");
}

#[test]
#[cfg_attr(
    not(all(has_baresip, has_espeak_ng, has_sox)),
    ignore = "needs baresip, espeak-ng and sox (scripts/install-deps.sh)"
)]
fn baresip_calls_over_tls_and_the_echo_correlates() {
    let test = "baresip_calls_over_tls_and_the_echo_correlates";
    let ports = Ports::for_slot(107);
    let dir = tools::scratch_dir(test);
    let certs = TestCerts::make(&dir);
    let speech = audio::make_speech(&dir);
    let source = dir.join("speech_then_silence.wav");
    let padded = run_bounded(
        "sox",
        Command::new("sox").arg(&speech.wav_8k).arg(&source).args(["pad", "0", "7"]),
        Duration::from_secs(30),
    );
    assert!(padded.status.success(), "sox pad failed");
    let sim = Sim::start(ports, &["--behaviour", "echo"], &dir);
    let gateway = gateway_with_tls(ports, &sim.url(), "", &certs, &dir);
    let phone = Phone::alice(ports, &source);
    let conf = phone.folder_tls(&dir, &certs);

    let out = run_bounded(
        "baresip",
        Command::new("baresip")
            .arg("-f")
            .arg(&conf)
            .args(["-u", "audio_codecs=PCMU", "-t", "16"])
            .arg("-e")
            .arg(format!("/dial sip:15550001000@127.0.0.1:{};transport=tls", ports.sip + 1)),
        Duration::from_secs(40),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (rate, samples) = heard(&dir, phone.name).unwrap_or_else(|| {
        panic!("baresip recorded nothing; baresip said:\n{stdout}\ngateway log:\n{}", gateway.log())
    });
    let (original_rate, original) = audio::read_wav(&speech.wav_8k);
    let heard_env = audio::envelope(&samples, (rate / 50) as usize);
    let original_env = audio::envelope(&original, (original_rate / 50) as usize);
    let (lag, r) = audio::best_lag_correlation(&original_env, &heard_env, 600);
    eprintln!("{test}: envelope correlation r = {r:.3} at lag {} ms", lag * 20);
    assert!(r >= 0.8, "the echo heard by baresip over TLS correlates only {r:.3} with the original speech");

    // The call's signalling went over the TLS listener, not UDP or TCP.
    let metrics = gateway.metrics();
    let handshakes = metric(&metrics, r#"switchboard_sip_tls_handshakes_total{direction="inbound",outcome="ok"}"#);
    assert!(handshakes >= 1.0, "no inbound TLS handshake: {metrics}");
    assert_eq!(sim.sessions().as_array().map(Vec::len), Some(1), "one Realtime session: the call got through");
}

/// Polls `GET /v1/calls/{id}` until `done` holds (at most `limit`); returns the last view.
fn wait_for_call(ports: Ports, id: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let (status, body) = http_get(local(ports.admin), &format!("/v1/calls/{id}"));
        assert_eq!(status, 200, "GET /v1/calls/{id}: {body}");
        let view: Value = serde_json::from_str(&body).expect("JSON call");
        if done(&view) || Instant::now() > deadline {
            return view;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn place_call(ports: Ports, trunk: &str, gateway: &Gateway) -> String {
    let body = format!(r#"{{"to": "+1 555 000 1234", "agent": "default", "trunk": "{trunk}"}}"#);
    let (status, answer) = http_post(local(ports.admin), "/v1/calls", &body);
    assert_eq!(status, 201, "POST /v1/calls answered {status}: {answer}\ngateway log:\n{}", gateway.log());
    let answer: Value = serde_json::from_str(&answer).expect("JSON answer");
    answer["id"].as_str().expect("id").to_string()
}

#[test]
#[cfg_attr(not(has_sipp), ignore = "needs sipp (scripts/install-deps.sh)")]
fn an_outbound_call_reaches_a_tls_trunk_that_verifies_and_not_one_that_does_not() {
    let test = "an_outbound_call_reaches_a_tls_trunk_that_verifies_and_not_one_that_does_not";
    let ports = Ports::for_slot(110);
    let dir = tools::scratch_dir(test);
    let certs = TestCerts::make(&dir);
    let relay_port = ports.peer_sip + 1;
    let trunks = format!(
        "[trunks.secure]\naddress = \"127.0.0.1:{relay_port}\"\ntransport = \"tls\"\ntls_ca = \"{ca}\"\n\
         ring_timeout_secs = 5\ncodecs = [\"PCMU\"]\n\
         [trunks.misnamed]\naddress = \"127.0.0.1:{relay_port}\"\ntransport = \"tls\"\ntls_ca = \"{ca}\"\n\
         tls_server_name = \"pbx.wrong.example\"\nring_timeout_secs = 5\ncodecs = [\"PCMU\"]\n",
        ca = certs.ca.display()
    );
    let gateway = gateway_with_tls(ports, "", &trunks, &certs, &dir);
    let _relay = TlsRelay::tls_to_tcp(local(relay_port), local(ports.peer_sip), &certs);
    let path = scenario("tls_uas_answer.xml", &[("RELAY_PORT", relay_port.to_string())], &dir);
    let log = std::fs::File::create(dir.join("sipp.out")).expect("sipp log");
    let mut callee = ChildGuard::spawn(
        "sipp",
        Command::new("sipp")
            .arg("-sf")
            .arg(&path)
            .args(["-t", "t1", "-i", "127.0.0.1", "-mi", "127.0.0.1"])
            .args(["-p", &ports.peer_sip.to_string(), "-mp", &ports.peer_media.to_string()])
            .args(["-d", "2000", "-m", "1", "-nostdin", "-timeout", "30s", "-timeout_error", "-trace_err"])
            .arg("-error_file")
            .arg(dir.join("sipp_errors.log"))
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log),
    );
    std::thread::sleep(Duration::from_millis(300));

    // First the trunk whose certificate does not carry the expected name: the handshake fails,
    // the call is unreachable and no INVITE leaves in clear or otherwise. (First: a connection
    // that verified would be reused for the same address.)
    let id = place_call(ports, "misnamed", &gateway);
    let view = wait_for_call(ports, &id, Duration::from_secs(10), |v| v["state"] == "ended");
    assert_eq!(view["outcome"]["outcome"], "unreachable", "{view}\ngateway log:\n{}", gateway.log());
    let metrics = gateway.metrics();
    let failed = metric(&metrics, r#"switchboard_sip_tls_handshakes_total{direction="outbound",outcome="failed"}"#);
    assert!(failed >= 1.0, "{metrics}");

    // The trunk that verifies: answered over TLS, then the callee hangs up.
    let id = place_call(ports, "secure", &gateway);
    let answered =
        wait_for_call(ports, &id, Duration::from_secs(10), |v| v["state"] != "setup" && v["state"] != "ringing");
    assert_eq!(answered["state"], "answered", "{answered}\ngateway log:\n{}", gateway.log());
    let status = callee.wait_timeout(Duration::from_secs(20));
    let errors = std::fs::read_to_string(dir.join("sipp_errors.log")).unwrap_or_default();
    assert!(
        status.is_some_and(|s| s.success()),
        "SIPp callee failed ({status:?}): {errors}\ngateway log:\n{}",
        gateway.log()
    );
    let view = wait_for_call(ports, &id, Duration::from_secs(5), |v| v["state"] == "ended");
    assert_eq!(view["outcome"]["outcome"], "answered", "{view}");
    assert_eq!(view["outcome"]["end"], "caller_bye", "{view}");
    let metrics = gateway.metrics();
    let ok = metric(&metrics, r#"switchboard_sip_tls_handshakes_total{direction="outbound",outcome="ok"}"#);
    assert!(ok >= 1.0, "{metrics}");
}
