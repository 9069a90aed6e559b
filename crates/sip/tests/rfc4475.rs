//! RFC 4475 (SIP torture test messages) as a test: every message of `testdata/rfc4475/`, bytes
//! exactly as in the RFC, fed to the sans-IO core over UDP on a virtual clock, with an
//! application that accepts calls with an SDP offer and refuses the others (488), as the
//! gateway does. Each message must get the outcome `testdata/rfc4475/EXPECTED` names for it:
//! a status code (decided by the core), `final` (the core hands the call to the application,
//! which sends the final response), or `drop` (a response: never answered).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use switchboard_sip::Timers;
use switchboard_sip::Transport;
use switchboard_sip::core::{Core, CoreConfig, CoreEvent, Origin};
use switchboard_sip::message::{Message, parse_message};

const ANSWER: &str =
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 7000 RTP/AVP 0\r\n";

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata").join("rfc4475")
}

fn expected() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(corpus_dir().join("EXPECTED")).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (name, outcome) = l.split_once(' ').unwrap_or_else(|| panic!("bad EXPECTED line {l:?}"));
            (name.to_string(), outcome.to_string())
        })
        .collect()
}

fn core() -> Core {
    Core::new(
        CoreConfig {
            timers: Timers::default(),
            user_agent: "switchboard-rfc4475".into(),
            udp_contact: Some("127.0.0.1:5060".parse().unwrap()),
            tcp_contact: None,
            tls_contact: None,
            max_message_bytes: 64 * 1024,
            max_headers: 200,
        },
        4475,
    )
}

/// What one message led to.
#[derive(Debug, Default)]
struct Outcome {
    /// (status, reason, response) of every response we sent.
    responses: Vec<(u16, String, Message)>,
    /// The core handed a call to the application.
    incoming_call: bool,
}

impl Outcome {
    fn finals(&self) -> Vec<u16> {
        self.responses.iter().map(|(s, _, _)| *s).filter(|s| *s >= 200).collect()
    }
}

/// Runs one message through a fresh core, playing the application, then runs the timers for
/// two virtual minutes so that every transaction and dialog it opened ends.
fn run(bytes: &[u8]) -> (Outcome, Core) {
    let mut core = core();
    let base = Instant::now();
    let source: SocketAddr = "192.0.2.99:5062".parse().unwrap();
    core.handle_message(base, Origin { transport: Transport::Udp, source, connection: None }, bytes);
    let mut outcome = Outcome::default();
    let mut now = base;
    while now <= base + Duration::from_secs(120) {
        while let Some(event) = core.poll_event() {
            match event {
                CoreEvent::IncomingCall { invite, offer, .. } => {
                    outcome.incoming_call = true;
                    match offer {
                        Some(_) => {
                            core.accept(now, invite, ANSWER);
                        }
                        None => core.reject(now, invite, 488, "", &[]),
                    }
                }
                // The caller never ACKs our 200: the core sends BYE to a host we cannot resolve.
                CoreEvent::ByeNeedsResolution { dialog, .. } => core.bye_unresolvable(dialog),
                _ => {}
            }
        }
        while let Some(transmit) = core.poll_transmit() {
            let message = match parse_message(&transmit.payload, Transport::Udp) {
                Ok(m) => m,
                // A 400 or 505 for a broken request copies its broken headers.
                Err(e) => *e.partial.filter(|m| matches!(m.status(), Some(400 | 505))).unwrap_or_else(|| {
                    panic!("we sent an unreadable message:\n{}", String::from_utf8_lossy(&transmit.payload))
                }),
            };
            if let Some(status) = message.status() {
                // Retransmissions (Timer G, 2xx) repeat the same response: count it once.
                if !outcome.responses.iter().any(|(s, _, _)| *s == status) {
                    let reason = match &message.start {
                        switchboard_sip::message::StartLine::Response { reason, .. } => reason.clone(),
                        _ => String::new(),
                    };
                    outcome.responses.push((status, reason, message));
                }
            }
        }
        now += Duration::from_millis(100);
        core.handle_timeout(now);
    }
    (outcome, core)
}

#[test]
fn every_rfc4475_message_gets_its_expected_outcome() {
    let expected = expected();
    let mut files: Vec<String> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".sip"))
        .collect();
    files.sort();
    let listed: Vec<String> = expected.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(files, listed, "EXPECTED must list every .sip file of the corpus, in order");
    assert_eq!(files.len(), 49);

    let mut failures = Vec::new();
    for (name, want) in &expected {
        let bytes = std::fs::read(corpus_dir().join(name)).unwrap();
        let (outcome, core) = run(&bytes);
        let finals = outcome.finals();
        let summary = format!(
            "{name}: expected {want}, got {:?} (call handed over: {})",
            outcome.responses.iter().map(|(s, r, _)| format!("{s} {r}")).collect::<Vec<_>>(),
            outcome.incoming_call
        );
        eprintln!("{summary}");
        let ok = match want.as_str() {
            "drop" => outcome.responses.is_empty() && !outcome.incoming_call,
            "final" => outcome.incoming_call && finals.len() == 1,
            code => {
                let code: u16 = code.parse().unwrap_or_else(|_| panic!("bad outcome {code:?} for {name}"));
                !outcome.incoming_call && finals == vec![code]
            }
        };
        if !ok {
            failures.push(summary);
        }
        // Nothing is left behind: no transaction, dialog or BYE still running.
        assert_eq!(core.live_state(), (0, 0, 0), "{name}: state left after two minutes");
        // Error responses say what was wrong (reason phrase or Warning), and carry what the
        // RFC asks for.
        for (status, reason, response) in &outcome.responses {
            match status {
                400 => assert!(reason.starts_with("Bad Request (") && reason.len() > 14, "{name}: {reason}"),
                415 => assert_eq!(response.header("Accept"), Some("application/sdp"), "{name}"),
                406 | 416 | 505 => assert!(response.header("Warning").is_some_and(|w| w.starts_with("399 ")), "{name}"),
                _ => {}
            }
        }
    }
    assert!(failures.is_empty(), "wrong outcomes:\n{}", failures.join("\n"));
}

/// The §3.1.2 invalid requests named in issue 6 that went unanswered, or were answered 200, and
/// the precise codes they get now.
#[test]
fn invalid_requests_named_in_the_issue_get_precise_codes() {
    for (name, code) in [
        ("badinv01", 400),
        ("ltgtruri", 400),
        ("lwsstart", 400),
        ("trws", 400),
        ("escruri", 400),
        ("baddate", 400),
        ("badaspec", 400),
        ("baddn", 400),
        ("multi01", 400),
        ("badvers", 505),
        ("unkscm", 416),
        ("invut", 415),
        ("sdp01", 406),
    ] {
        let bytes = std::fs::read(corpus_dir().join(format!("{name}.sip"))).unwrap();
        let (outcome, _) = run(&bytes);
        assert!(!outcome.incoming_call, "{name} must not reach the application");
        assert_eq!(outcome.finals(), vec![code], "{name}");
    }
}
