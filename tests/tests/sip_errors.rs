//! Bad or unwanted SIP gets a precise answer and never a crash: 400, 501, 481, 503 + Retry-After.
//! These messages are hand-written (no well-behaved peer sends them), over raw UDP.

use std::net::UdpSocket;
use std::time::Duration;

use switchboard_e2e::procs::{Gateway, Sim};
use switchboard_e2e::sip_raw::{self, header, status_of};
use switchboard_e2e::{Ports, tools};

const WAIT: Duration = Duration::from_millis(800);

fn request(method: &str, call_id: &str, extra: &str, body: &str) -> String {
    format!(
        "{method} sip:15550001000@127.0.0.1 SIP/2.0\n\
         Via: SIP/2.0/UDP LOCAL;branch=z9hG4bK-{call_id}-{method}\n\
         From: <sip:caller@127.0.0.1>;tag=abc\n\
         To: <sip:15550001000@127.0.0.1>\n\
         Call-ID: {call_id}\n\
         CSeq: 1 {method}\n\
         Contact: <sip:caller@LOCAL>\n\
         Max-Forwards: 70\n\
         {extra}Content-Length: {}\n\n{body}",
        body.len()
    )
}

fn final_status(answers: &[String]) -> Option<u16> {
    answers.iter().filter_map(|a| status_of(a)).find(|s| *s >= 200)
}

fn offer(port: u16) -> String {
    format!(
        "v=0\no=- 1 1 IN IP4 127.0.0.1\ns=-\nc=IN IP4 127.0.0.1\nt=0 0\nm=audio {port} RTP/AVP 0\na=rtpmap:0 PCMU/8000\n"
    )
}

#[test]
fn bad_requests_get_precise_answers_and_the_gateway_survives() {
    let test = "bad_requests_get_precise_answers";
    let ports = Ports::for_slot(6);
    let dir = tools::scratch_dir(test);
    let sim = Sim::start(ports, &["--behaviour", "echo"], &dir);
    let gateway = Gateway::start(ports, &sim.url(), "", &dir);
    let target = gateway.sip_addr();

    let bad_length = request("INVITE", "bad-length", "", "").replace("Content-Length: 0", "Content-Length: abc");
    let answers = sip_raw::exchange(target, &bad_length, WAIT);
    assert_eq!(final_status(&answers), Some(400), "non-numeric Content-Length: {answers:?}");

    let bad_uri = request("INVITE", "bad-uri", "", "")
        .replace("INVITE sip:15550001000@127.0.0.1 SIP/2.0", "INVITE not a uri SIP/2.0");
    assert_eq!(final_status(&sip_raw::exchange(target, &bad_uri, WAIT)), Some(400), "malformed request line");

    let looped = request("INVITE", "loop", "", "").replace("Max-Forwards: 70", "Max-Forwards: 0");
    assert_eq!(final_status(&sip_raw::exchange(target, &looped, WAIT)), Some(483), "Max-Forwards exhausted");

    let unknown = request("FROBNICATE", "unknown-method", "", "");
    assert_eq!(final_status(&sip_raw::exchange(target, &unknown, WAIT)), Some(501), "unknown method");

    let stray_bye = request("BYE", "no-such-dialog", "", "")
        .replace("To: <sip:15550001000@127.0.0.1>", "To: <sip:15550001000@127.0.0.1>;tag=nope");
    assert_eq!(final_status(&sip_raw::exchange(target, &stray_bye, WAIT)), Some(481), "BYE outside a dialog");

    let garbage = "\u{1}\u{2}NOT SIP AT ALL\r\n\r\n";
    let _ = sip_raw::exchange(target, garbage, Duration::from_millis(200));

    // Still alive and answering calls properly.
    let options = request("OPTIONS", "still-alive", "", "");
    assert_eq!(final_status(&sip_raw::exchange(target, &options, WAIT)), Some(200));
    let metrics = gateway.metrics();
    assert!(metrics.contains("switchboard_sip_requests_total"), "{metrics}");
}

#[test]
fn overload_gets_503_with_retry_after() {
    let test = "overload_gets_503_with_retry_after";
    let ports = Ports::for_slot(7);
    let dir = tools::scratch_dir(test);
    let sim = Sim::start(ports, &["--behaviour", "echo"], &dir);
    let gateway = Gateway::start(ports, &sim.url(), "[calls]\nmax_concurrent = 1\nretry_after_secs = 7\n", &dir);
    let target = gateway.sip_addr();

    // The first call is answered and stays up.
    let caller = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let local = caller.local_addr().expect("addr").to_string();
    let first = request("INVITE", "first-call", "Content-Type: application/sdp\n", &offer(ports.peer_media))
        .replace("LOCAL", &local)
        .replace('\n', "\r\n");
    caller.send_to(first.as_bytes(), target).expect("send");
    let answers = sip_raw::collect(&caller, Duration::from_secs(2));
    assert_eq!(final_status(&answers), Some(200), "first call: {answers:?}\n{}", gateway.log());

    // The second is refused while the first is up.
    let second = request("INVITE", "second-call", "Content-Type: application/sdp\n", &offer(ports.peer_media + 2));
    let answers = sip_raw::exchange(target, &second, WAIT);
    let refusal = answers.iter().find(|a| status_of(a) == Some(503)).unwrap_or_else(|| panic!("no 503: {answers:?}"));
    assert_eq!(header(refusal, "Retry-After"), Some("7"));
    let (status, body) = switchboard_e2e::procs::http_get(([127, 0, 0, 1], ports.admin).into(), "/readyz");
    assert_eq!(status, 503, "at the call limit /readyz says not ready: {body}");
}
