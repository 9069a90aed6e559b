//! RFC 4475 ("SIP Torture Test Messages") end to end: every message of the corpus checked in at
//! crates/sip/testdata/rfc4475/ is sent to the release gateway over UDP, and its answer must be
//! the outcome listed for it in that folder's EXPECTED file:
//!
//! ```text
//! # <name> <outcome>        outcome: a status code (the final response), `final` (any final
//! wsinv final               response), or `drop` (a response, or a message that must get no
//! badvers 505               answer at all)
//! bigcode drop
//! ```
//!
//! The messages are sent as the RFC wrote them except for the top Via's sent-by, which becomes the
//! test's own address so the answer comes back (RFC 3261 §18.2.2). They name hosts such as
//! 192.0.2.2 in SDP and Contact, so the test runs in a network namespace with only loopback: nothing
//! the gateway sends because of them can leave it. Afterwards the gateway must still carry a real
//! call (SIPp, PCMU, the echoed speech correlates).
//!
//! SWITCHBOARD_RFC4475_DIR points the test at another folder of the same shape.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use switchboard_e2e::procs::{Gateway, Sim};
use switchboard_e2e::sip_raw::{self, header, rewrite_top_via_sent_by, status_of};
use switchboard_e2e::{Ports, netns, real_call, tools};

const SLOT: u16 = 54;
/// How long to wait for a final response (a valid INVITE opens a Realtime session first).
const FINAL_WAIT: Duration = Duration::from_secs(5);
/// How long a message that must get no answer is listened for.
const DROP_WAIT: Duration = Duration::from_millis(1500);

#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Status(u16),
    AnyFinal,
    Drop,
}

impl Outcome {
    fn parse(text: &str) -> Option<Outcome> {
        match text {
            "final" => Some(Outcome::AnyFinal),
            "drop" => Some(Outcome::Drop),
            code => code.parse().ok().filter(|c| (100..700).contains(c)).map(Outcome::Status),
        }
    }

    fn is_met_by(&self, answers: &[String]) -> bool {
        let final_status = sip_raw::final_status(answers);
        match self {
            Outcome::Status(code) => final_status == Some(*code),
            Outcome::AnyFinal => final_status.is_some(),
            Outcome::Drop => answers.is_empty(),
        }
    }
}

fn corpus_dir() -> PathBuf {
    std::env::var_os("SWITCHBOARD_RFC4475_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crates/sip/testdata/rfc4475"))
}

/// The corpus: every `<name>.sip` with its expected outcome. Panics, naming the problem, when the
/// folder is missing or the EXPECTED file and the messages do not match one to one.
fn load_corpus() -> Vec<(String, Vec<u8>, Outcome)> {
    let dir = corpus_dir();
    let expected_path = dir.join("EXPECTED");
    let expected_text = std::fs::read_to_string(&expected_path).unwrap_or_else(|e| {
        panic!(
            "RFC 4475 corpus missing: cannot read {} ({e}). The corpus (one <name>.sip per message and \
             an EXPECTED file, `<name> <outcome>` per line) belongs in crates/sip/testdata/rfc4475/.",
            expected_path.display()
        )
    });
    let mut expected = BTreeMap::new();
    for (number, line) in expected_text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(name), Some(outcome)) = (fields.next(), fields.next()) else {
            panic!("EXPECTED line {}: want `<name> <outcome>`, got {line:?}", number + 1);
        };
        let outcome = Outcome::parse(outcome)
            .unwrap_or_else(|| panic!("EXPECTED line {}: unknown outcome {outcome:?}", number + 1));
        let name = name.strip_suffix(".sip").unwrap_or(name).to_string();
        assert!(expected.insert(name.clone(), outcome).is_none(), "EXPECTED lists {name} twice");
    }
    let mut corpus = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("read corpus dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sip"))
        .collect();
    files.sort();
    for path in files {
        let name = path.file_stem().expect("file stem").to_string_lossy().into_owned();
        let outcome = expected.remove(&name).unwrap_or_else(|| panic!("{} has no line in EXPECTED", path.display()));
        corpus.push((name, std::fs::read(&path).expect("read message"), outcome));
    }
    assert!(expected.is_empty(), "EXPECTED names messages that are not in {}: {:?}", dir.display(), expected.keys());
    assert!(!corpus.is_empty(), "no .sip files in {}", dir.display());
    corpus
}

/// Listens until a final response has arrived (plus a moment for anything after it) or `limit`.
fn collect_until_final(socket: &UdpSocket, limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut answers = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Some(answer) = sip_raw::collect_one(socket, left) else { break };
        let is_final = status_of(&answer).is_some_and(|s| s >= 200);
        answers.push(answer);
        if is_final {
            answers.extend(sip_raw::collect(socket, Duration::from_millis(100)));
            break;
        }
    }
    answers
}

/// Ends a call the corpus opened: ACK the 2xx (RFC 3261 §13.2.2.4), then BYE, both built from
/// the gateway's own 200 so the dialog matches whatever the torture message looked like.
fn hang_up(socket: &UdpSocket, target: SocketAddr, ok: &str) {
    let local = socket.local_addr().expect("local addr");
    let (Some(call_id), Some(from), Some(to), Some(cseq)) =
        (header(ok, "Call-ID"), header(ok, "From"), header(ok, "To"), header(ok, "CSeq"))
    else {
        return;
    };
    let number: u32 = cseq.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(1);
    let contact = header(ok, "Contact").unwrap_or("<sip:127.0.0.1>");
    let uri = contact.trim().trim_start_matches('<').split('>').next().unwrap_or("sip:127.0.0.1");
    for (method, seq) in [("ACK", number), ("BYE", number + 1)] {
        let request = format!(
            "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-hangup-{method}-{seq}\r\n\
             Max-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {seq} {method}\r\n\
             Content-Length: 0\r\n\r\n"
        );
        socket.send_to(request.as_bytes(), target).expect("send ACK/BYE");
    }
    let _ = sip_raw::collect(socket, Duration::from_millis(300));
}

#[test]
#[cfg_attr(
    not(all(has_unshare, has_ip, has_sipp, has_tshark, has_espeak_ng)),
    ignore = "needs unshare, ip, sipp, tshark and espeak-ng (scripts/install-deps.sh)"
)]
fn rfc4475_torture_messages_get_their_expected_outcome_and_a_real_call_follows() {
    let test = "rfc4475_torture_messages_get_their_expected_outcome_and_a_real_call_follows";
    // Read first, outside the namespace: a missing corpus fails at once, with its own message.
    let corpus = load_corpus();
    if !netns::enter_loopback_namespace(test, Duration::from_secs(240)) {
        return;
    }
    let ports = Ports::for_slot(SLOT);
    let dir = tools::scratch_dir("rfc4475");
    let sim = Sim::start(ports, &["--behaviour", "echo"], &dir);
    let gateway = Gateway::start(ports, &sim.url(), "", &dir);
    let target = gateway.sip_addr();

    let mut report = Vec::new();
    let mut failures = Vec::new();
    for (name, message, outcome) in &corpus {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let local = socket.local_addr().expect("local addr").to_string();
        let wire = rewrite_top_via_sent_by(message, &local).unwrap_or_else(|| message.clone());
        socket.send_to(&wire, target).expect("send torture message");
        let answers = match outcome {
            Outcome::Drop => sip_raw::collect(&socket, DROP_WAIT),
            _ => collect_until_final(&socket, FINAL_WAIT),
        };
        let statuses: Vec<String> =
            answers.iter().map(|a| status_of(a).map_or_else(|| "?".to_string(), |s| s.to_string())).collect();
        let met = outcome.is_met_by(&answers);
        report.push(format!(
            "{name:<10} expected {outcome:?}, got [{}]{}",
            statuses.join(" "),
            if met { "" } else { "  <-- WRONG" }
        ));
        if !met {
            failures.push(name.clone());
        }
        if let Some(ok) = answers.iter().find(|a| {
            status_of(a).is_some_and(|s| (200..300).contains(&s))
                && header(a, "CSeq").is_some_and(|c| c.ends_with("INVITE"))
        }) {
            hang_up(&socket, target, ok);
        }
    }
    eprintln!("RFC 4475 outcomes ({} messages):\n{}", corpus.len(), report.join("\n"));

    // Whatever the corpus did, the gateway must still answer and carry a real call.
    let r = real_call::sipp_pcmu_echo_call(ports, &gateway, &dir);
    eprintln!("real call after the corpus: echo correlation r = {r:.3}");
    assert!(
        failures.is_empty(),
        "{} of {} RFC 4475 messages did not get their expected outcome: {failures:?}\n{}",
        failures.len(),
        corpus.len(),
        report.join("\n")
    );
}
