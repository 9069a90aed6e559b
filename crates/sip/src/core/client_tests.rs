//! The client side on a virtual clock, against the RFC 3261 timer tables (§17.1.1.2,
//! §17.1.2.2, Table 4 of §A): our INVITE, its CANCEL, digest retries, UAC dialogs and our
//! non-INVITE requests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::string_slice)]

use std::time::Duration;

use super::*;
use crate::client::Credentials;
use crate::digest::Challenge;

const TRUNK: &str = "127.0.0.1:5080";
const OFFER: &str =
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 7000 RTP/AVP 0 101\r\n";
const ANSWER: &str =
    "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 9000 RTP/AVP 0\r\n";

fn config() -> CoreConfig {
    CoreConfig {
        timers: Timers::default(),
        user_agent: "switchboard-test".into(),
        udp_contact: Some("127.0.0.1:5060".parse().unwrap()),
        tcp_contact: Some("127.0.0.1:5060".parse().unwrap()),
        tls_contact: None,
        max_message_bytes: 16 * 1024,
        max_headers: 100,
    }
}

fn call(transport: Transport, ring_timeout_ms: u64, credentials: Option<Credentials>) -> OutgoingCall {
    OutgoingCall {
        request_uri: format!("sip:+15551234567@{TRUNK}"),
        to: format!("sip:+15551234567@{TRUNK}"),
        from_uri: "sip:agent@gw.example".into(),
        from_display: Some("Agent \"Smith\"".into()),
        destination: TRUNK.parse().unwrap(),
        transport,
        sdp_offer: OFFER.into(),
        credentials,
        ring_timeout: Duration::from_millis(ring_timeout_ms),
        extra_headers: Vec::new(),
        tls: None,
    }
}

fn mufasa() -> Credentials {
    Credentials { username: "Mufasa".into(), password: "Circle of Life".into() }
}

/// Things at virtual times (ms).
type Timed<T> = Vec<(u64, T)>;

struct Harness {
    core: Core,
    base: Instant,
}

impl Harness {
    fn new() -> Harness {
        Harness { core: Core::new(config(), 11), base: Instant::now() }
    }

    fn at(&self, ms: u64) -> Instant {
        self.base + Duration::from_millis(ms)
    }

    /// Places the call at t=0 and returns its id and the INVITE sent.
    fn place(&mut self, call: OutgoingCall) -> (OutgoingId, Message) {
        let placed = self.core.place_call(self.at(0), call).unwrap();
        let sent = self.sent();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].1.call_id(), Some(placed.call_id.as_str()));
        (placed.id, sent[0].1.clone())
    }

    fn recv(&mut self, ms: u64, text: &str) {
        let origin = Origin { transport: Transport::Udp, source: TRUNK.parse().unwrap(), connection: None };
        self.core.handle_message(self.at(ms), origin, text.as_bytes());
    }

    fn tick(&mut self, ms: u64) {
        self.core.handle_timeout(self.at(ms));
    }

    fn sent(&mut self) -> Vec<(Transmit, Message)> {
        let mut out = Vec::new();
        while let Some(t) = self.core.poll_transmit() {
            out.push((t.clone(), parse_message(&t.payload, t.transport).expect("we send parseable messages")));
        }
        out
    }

    fn events(&mut self) -> Vec<CoreEvent> {
        std::iter::from_fn(|| self.core.poll_event()).collect()
    }

    /// Runs timers every 10 ms of virtual time; returns (time, message sent) and the events.
    fn run(&mut self, from_ms: u64, until_ms: u64) -> (Timed<Message>, Timed<CoreEvent>) {
        let mut sent = Vec::new();
        let mut events = Vec::new();
        let mut t = from_ms;
        while t <= until_ms {
            self.tick(t);
            sent.extend(self.sent().into_iter().map(|(_, m)| (t, m)));
            events.extend(self.events().into_iter().map(|e| (t, e)));
            t += 10;
        }
        (sent, events)
    }
}

/// A response to `request` as the trunk would send it (§8.2.6.2).
fn response(request: &Message, code: u16, reason: &str, to_tag: Option<&str>, extra: &str, body: &str) -> String {
    let mut text = format!("SIP/2.0 {code} {reason}\r\n");
    for via in request.header_values("Via") {
        text.push_str(&format!("Via: {via}\r\n"));
    }
    text.push_str(&format!("From: {}\r\n", request.header("From").unwrap()));
    match to_tag {
        Some(tag) => text.push_str(&format!("To: {};tag={tag}\r\n", request.header("To").unwrap())),
        None => text.push_str(&format!("To: {}\r\n", request.header("To").unwrap())),
    }
    text.push_str(&format!("Call-ID: {}\r\n", request.call_id().unwrap()));
    text.push_str(&format!("CSeq: {}\r\n", request.header("CSeq").unwrap()));
    text.push_str(extra);
    if !body.is_empty() {
        text.push_str("Content-Type: application/sdp\r\n");
    }
    text.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    text
}

fn ok_200(invite: &Message, tag: &str) -> String {
    response(
        invite,
        200,
        "OK",
        Some(tag),
        "Contact: <sip:callee@127.0.0.1:5090>\r\nRecord-Route: <sip:127.0.0.1:5081;lr>, <sip:127.0.0.1:5082;lr>\r\n",
        ANSWER,
    )
}

fn outgoing(events: &[CoreEvent]) -> Vec<OutgoingProgress> {
    events
        .iter()
        .filter_map(|e| match e {
            CoreEvent::Outgoing { progress, .. } => Some(progress.clone()),
            _ => None,
        })
        .collect()
}

fn branch(message: &Message) -> String {
    message.top_via().unwrap().branch().unwrap().to_string()
}

#[test]
fn invite_is_well_formed() {
    let mut h = Harness::new();
    let (_, invite) = h.place(call(Transport::Udp, 60_000, None));
    assert_eq!(invite.method(), Some(&Method::Invite));
    assert_eq!(invite.request_uri(), Some("sip:+15551234567@127.0.0.1:5080"));
    let via = invite.top_via().unwrap();
    assert!(via.branch().unwrap().starts_with("z9hG4bK"));
    assert!(via.param("rport").is_some());
    assert_eq!(via.transport, "UDP");
    assert_eq!(invite.header("Max-Forwards"), Some("70"));
    let from = invite.from().unwrap();
    assert_eq!(from.uri, "sip:agent@gw.example");
    assert!(from.param("tag").is_some());
    assert_eq!(invite.to_tag(), None);
    assert_eq!(invite.cseq().unwrap().1, Method::Invite);
    assert_eq!(invite.header("Contact"), Some("<sip:switchboard@127.0.0.1:5060;transport=udp>"));
    assert_eq!(invite.header("Allow"), Some(ALLOW));
    assert!(invite.header("Supported").is_some());
    assert_eq!(invite.header("Content-Type"), Some("application/sdp"));
    assert_eq!(invite.body, OFFER.as_bytes());
    assert!(invite.header("From").unwrap().starts_with(r#""Agent \"Smith\"" <sip:agent@gw.example>"#));
}

/// A transfer's context headers ride on the INVITE as given.
#[test]
fn extra_headers_are_sent_on_the_invite() {
    let mut h = Harness::new();
    let mut outgoing = call(Transport::Udp, 60_000, None);
    outgoing.extra_headers =
        vec![("X-Switchboard-Queue".into(), "sales".into()), ("X-Switchboard-Reason".into(), "a person".into())];
    let (_, invite) = h.place(outgoing);
    assert_eq!(invite.header("X-Switchboard-Queue"), Some("sales"));
    assert_eq!(invite.header("X-Switchboard-Reason"), Some("a person"));
    assert_eq!(invite.body, OFFER.as_bytes());
}

#[test]
fn place_call_refuses_unusable_uris() {
    let mut h = Harness::new();
    let mut bad = call(Transport::Udp, 1000, None);
    bad.request_uri = "mailto:x@y".into();
    assert!(h.core.place_call(h.at(0), bad).is_err());
    assert!(h.sent().is_empty());
}

/// §17.1.1.2: Timer A at T1, doubling (500 ms, 1 s, 2 s, ...) until Timer B at 64*T1.
#[test]
fn invite_retransmits_on_timer_a_until_timer_b() {
    let mut h = Harness::new();
    let (id, invite) = h.place(call(Transport::Udp, 120_000, None));
    let (sent, events) = h.run(10, 40_000);
    let times: Vec<u64> = sent.iter().map(|(t, _)| *t).collect();
    assert_eq!(times, [500, 1500, 3500, 7500, 15_500, 31_500]);
    assert!(sent.iter().all(|(_, m)| m.to_bytes() == invite.to_bytes()), "the same INVITE");
    assert_eq!(
        events,
        vec![(
            32_000,
            CoreEvent::Outgoing {
                call: id,
                progress: OutgoingProgress::Failed(CallFailure::Unreachable {
                    reason: "no response to INVITE (Timer B)".into()
                })
            }
        )]
    );
    assert!(sent.iter().all(|(_, m)| m.method() != Some(&Method::Cancel)), "no CANCEL without a 1xx");
    assert_eq!(h.core.live_state(), (0, 0, 0));
}

#[test]
fn invite_over_tcp_is_not_retransmitted() {
    let mut h = Harness::new();
    let (id, invite) = h.place(call(Transport::Tcp, 120_000, None));
    assert_eq!(invite.top_via().unwrap().transport, "TCP");
    let (sent, events) = h.run(10, 40_000);
    assert!(sent.is_empty());
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, 32_000);
    assert!(matches!(
        &events[0].1,
        CoreEvent::Outgoing { call, progress: OutgoingProgress::Failed(CallFailure::Unreachable { .. }) } if *call == id
    ));
}

/// A 1xx stops Timer A and Timer B no longer applies (Proceeding); 180 is reported, 100 not.
#[test]
fn provisional_stops_retransmissions() {
    let mut h = Harness::new();
    let (_, invite) = h.place(call(Transport::Udp, 120_000, None));
    h.recv(200, &response(&invite, 100, "Trying", None, "", ""));
    assert!(h.events().is_empty());
    h.recv(300, &response(&invite, 180, "Ringing", Some("callee"), "", ""));
    assert_eq!(outgoing(&h.events()), vec![OutgoingProgress::Provisional { status: 180, reason: "Ringing".into() }]);
    let (sent, events) = h.run(310, 60_000);
    assert!(sent.is_empty());
    assert!(events.is_empty());
}

/// §13.2.2.4: the 2xx creates the UAC dialog and is ACKed by it (new branch, the INVITE's
/// CSeq number, route set from Record-Route reversed); each retransmission gets the same ACK.
#[test]
fn answered_call_is_acked_from_the_dialog() {
    let mut h = Harness::new();
    let (id, invite) = h.place(call(Transport::Udp, 120_000, None));
    h.recv(100, &response(&invite, 180, "Ringing", Some("callee"), "", ""));
    h.events();
    h.recv(2_000, &ok_200(&invite, "callee"));
    let events = h.events();
    let dialog = match outgoing(&events).as_slice() {
        [OutgoingProgress::Answered { dialog, sdp_answer }] => {
            assert_eq!(sdp_answer, ANSWER);
            *dialog
        }
        other => panic!("expected Answered, got {other:?}"),
    };
    assert_eq!(events.last(), Some(&CoreEvent::Dialog { dialog, notice: DialogEvent::Confirmed }));
    assert_eq!(h.core.dialog_role(dialog), Some(Role::Uac));
    let sent = h.sent();
    assert_eq!(sent.len(), 1);
    let (transmit, ack) = &sent[0];
    assert_eq!(ack.method(), Some(&Method::Ack));
    assert_eq!(ack.request_uri(), Some("sip:callee@127.0.0.1:5090"));
    assert_eq!(ack.header_values("Route").collect::<Vec<_>>(), ["<sip:127.0.0.1:5082;lr>", "<sip:127.0.0.1:5081;lr>"]);
    assert_eq!(transmit.destination, "127.0.0.1:5082".parse().unwrap());
    assert_eq!(ack.cseq(), Some((invite.cseq().unwrap().0, Method::Ack)));
    assert_ne!(branch(ack), branch(&invite), "the ACK for a 2xx is a new transaction");
    assert_eq!(ack.to_tag().as_deref(), Some("callee"));
    assert_eq!(ack.call_id(), invite.call_id());
    // Retransmitted 2xx: the same ACK again, no new event.
    h.recv(2_500, &ok_200(&invite, "callee"));
    let again = h.sent();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].0.payload, transmit.payload);
    assert!(h.events().is_empty());
    // No retransmissions of our own; Timer M ends the transaction at 64*T1.
    let (sent, events) = h.run(2_510, 40_000);
    assert!(sent.is_empty() && events.is_empty());
    assert_eq!(h.core.live_state(), (0, 1, 0));
    assert!(!h.core.outgoing.contains_key(&id), "call state released after Timer M");
}

/// §17.1.1.3: a 3xx-6xx is ACKed by the transaction (same branch, response's To tag), its
/// retransmissions too, until Timer D (32 s over UDP).
#[test]
fn busy_is_acked_by_the_transaction() {
    let mut h = Harness::new();
    let (id, invite) = h.place(call(Transport::Udp, 120_000, None));
    h.recv(100, &response(&invite, 486, "Busy Here", Some("callee"), "", ""));
    assert_eq!(
        h.events(),
        vec![CoreEvent::Outgoing { call: id, progress: OutgoingProgress::Failed(CallFailure::Busy { status: 486 }) }]
    );
    let sent = h.sent();
    assert_eq!(sent.len(), 1);
    let ack = &sent[0].1;
    assert_eq!(ack.method(), Some(&Method::Ack));
    assert_eq!(branch(ack), branch(&invite));
    assert_eq!(ack.request_uri(), invite.request_uri());
    assert_eq!(ack.to_tag().as_deref(), Some("callee"));
    assert_eq!(ack.cseq(), Some((invite.cseq().unwrap().0, Method::Ack)));
    h.recv(600, &response(&invite, 486, "Busy Here", Some("callee"), "", ""));
    assert_eq!(h.sent().len(), 1, "retransmitted 486 ACKed again");
    assert!(h.events().is_empty());
    let (sent, events) = h.run(610, 40_000);
    assert!(sent.is_empty() && events.is_empty());
    assert_eq!(h.core.live_state(), (0, 0, 0));
}

#[test]
fn final_responses_map_to_typed_failures() {
    let cases = [
        (600, "Busy Everywhere", CallFailure::Busy { status: 600 }),
        (404, "Not Found", CallFailure::Rejected { status: 404, reason: "Not Found".into() }),
        (603, "Decline", CallFailure::Rejected { status: 603, reason: "Decline".into() }),
        (302, "Moved Temporarily", CallFailure::Rejected { status: 302, reason: "Moved Temporarily".into() }),
        (408, "Request Timeout", CallFailure::Unreachable { reason: "408 Request Timeout".into() }),
        (401, "Unauthorized", CallFailure::AuthFailed { status: 401 }),
    ];
    for (code, reason, expected) in cases {
        let mut h = Harness::new();
        let (_, invite) = h.place(call(Transport::Udp, 120_000, None));
        let extra = if code == 401 { "WWW-Authenticate: Digest realm=\"r\", nonce=\"n\"\r\n" } else { "" };
        h.recv(100, &response(&invite, code, reason, Some("x"), extra, ""));
        assert_eq!(outgoing(&h.events()), vec![OutgoingProgress::Failed(expected)], "{code}");
    }
}

/// §9.1: the ring timeout CANCELs a ringing INVITE; the CANCEL has the INVITE's branch,
/// Request-URI, Call-ID, From, To and CSeq number; 200 to it, then 487 ACKed by the
/// transaction: no answer.
#[test]
fn ring_timeout_cancels_after_a_provisional() {
    let mut h = Harness::new();
    let (id, invite) = h.place(call(Transport::Udp, 10_000, None));
    h.recv(1_000, &response(&invite, 180, "Ringing", Some("callee"), "", ""));
    h.events();
    let (sent, events) = h.run(1_010, 10_000);
    assert!(events.is_empty());
    assert_eq!(sent.len(), 1);
    let (at, cancel) = &sent[0];
    assert_eq!(*at, 10_000);
    assert_eq!(cancel.method(), Some(&Method::Cancel));
    assert_eq!(branch(cancel), branch(&invite));
    assert_eq!(cancel.request_uri(), invite.request_uri());
    assert_eq!(cancel.header("To"), invite.header("To"));
    assert_eq!(cancel.header("From"), invite.header("From"));
    assert_eq!(cancel.cseq(), Some((invite.cseq().unwrap().0, Method::Cancel)));
    assert_eq!(cancel.header_values("Via").count(), 1);
    // CANCEL is a non-INVITE transaction: Timer E until its 200.
    let (resent, _) = h.run(10_010, 10_500);
    assert_eq!(resent.len(), 1);
    assert_eq!(resent[0].1.method(), Some(&Method::Cancel));
    h.recv(10_600, &response(cancel, 200, "OK", Some("callee"), "", ""));
    assert!(h.sent().is_empty());
    h.recv(10_700, &response(&invite, 487, "Request Terminated", Some("callee"), "", ""));
    let ack = h.sent();
    assert_eq!(ack.len(), 1);
    assert_eq!(ack[0].1.method(), Some(&Method::Ack));
    assert_eq!(
        h.events(),
        vec![CoreEvent::Outgoing { call: id, progress: OutgoingProgress::Failed(CallFailure::NoAnswer) }]
    );
    let (sent, _) = h.run(10_710, 60_000);
    assert!(sent.is_empty());
    assert_eq!(h.core.live_state(), (0, 0, 0));
}

/// §9.1: no CANCEL before a provisional response; it goes out when the first 1xx arrives.
#[test]
fn cancel_before_a_provisional_is_held_back() {
    let mut h = Harness::new();
    let (id, invite) = h.place(call(Transport::Udp, 120_000, None));
    h.core.cancel_call(h.at(100), id, CancelReason::Caller);
    assert!(h.sent().is_empty(), "held back");
    let (sent, _) = h.run(110, 1_000);
    assert!(sent.iter().all(|(_, m)| m.method() == Some(&Method::Invite)), "Timer A goes on, no CANCEL");
    h.recv(1_200, &response(&invite, 180, "Ringing", Some("callee"), "", ""));
    let sent = h.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1.method(), Some(&Method::Cancel));
    h.recv(1_300, &response(&sent[0].1, 200, "OK", Some("callee"), "", ""));
    h.recv(1_400, &response(&invite, 487, "Request Terminated", Some("callee"), "", ""));
    let events = outgoing(&h.events());
    assert_eq!(events.last(), Some(&OutgoingProgress::Failed(CallFailure::Cancelled)));
}

/// A ring timeout with no response at all: no CANCEL may be sent, Timer B settles it.
#[test]
fn ring_timeout_without_any_response_waits_for_timer_b() {
    let mut h = Harness::new();
    let (_, _) = h.place(call(Transport::Udp, 5_000, None));
    let (sent, events) = h.run(10, 40_000);
    assert!(sent.iter().all(|(_, m)| m.method() == Some(&Method::Invite)));
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, 32_000);
    assert!(matches!(
        &events[0].1,
        CoreEvent::Outgoing { progress: OutgoingProgress::Failed(CallFailure::Unreachable { .. }), .. }
    ));
}

/// A 200 that crosses our CANCEL is ACKed, then BYEd; the outcome stays the cancellation.
#[test]
fn a_2xx_crossing_the_cancel_is_acked_and_byed() {
    let mut h = Harness::new();
    let (id, invite) = h.place(call(Transport::Udp, 120_000, None));
    h.recv(100, &response(&invite, 180, "Ringing", Some("callee"), "", ""));
    h.events();
    h.core.cancel_call(h.at(200), id, CancelReason::Caller);
    let cancel = h.sent().remove(0).1;
    h.recv(250, &ok_200(&invite, "callee"));
    h.recv(260, &response(&cancel, 200, "OK", Some("callee"), "", ""));
    let sent = h.sent();
    let methods: Vec<_> = sent.iter().map(|(_, m)| m.method().cloned().unwrap()).collect();
    assert_eq!(methods, [Method::Ack, Method::Bye]);
    assert_eq!(outgoing(&h.events()), vec![OutgoingProgress::Failed(CallFailure::Cancelled)]);
}

/// RFC 3261 §13.2.2.4: a second fork's 2xx (another To tag) is ACKed and BYEd; the call
/// keeps the first.
#[test]
fn a_second_forks_2xx_is_acked_and_byed() {
    let mut h = Harness::new();
    let (_, invite) = h.place(call(Transport::Udp, 120_000, None));
    h.recv(100, &ok_200(&invite, "fork1"));
    assert_eq!(outgoing(&h.events()).len(), 1);
    h.sent();
    h.recv(150, &ok_200(&invite, "fork2"));
    let sent = h.sent();
    let methods: Vec<_> = sent.iter().map(|(_, m)| (m.method().cloned().unwrap(), m.to_tag().unwrap())).collect();
    assert_eq!(methods, [(Method::Ack, "fork2".to_string()), (Method::Bye, "fork2".to_string())]);
    assert!(outgoing(&h.events()).is_empty());
}

fn sha256_challenge(stale: bool) -> String {
    format!(
        "WWW-Authenticate: Digest realm=\"trunk.example\", nonce=\"n{stale}\", qop=\"auth\", algorithm=SHA-256, opaque=\"op\"{}\r\n",
        if stale { ", stale=true" } else { "" }
    )
}

fn auth_param(header: &str, name: &str) -> String {
    let start = header.find(&format!("{name}=")).unwrap() + name.len() + 1;
    let rest = &header[start..];
    let value = rest.split(',').next().unwrap().trim();
    value.trim_matches('"').to_string()
}

/// §22.2: 401 → ACK, then the INVITE again with CSeq+1, the same Call-ID and From tag, a new
/// branch, and an Authorization with SHA-256 and qop=auth; 200 → answered, and the ACK for
/// the 2xx repeats the credentials.
#[test]
fn digest_401_then_200() {
    let mut h = Harness::new();
    let (_, invite) = h.place(call(Transport::Udp, 120_000, Some(mufasa())));
    h.recv(100, &response(&invite, 401, "Unauthorized", Some("t1"), &sha256_challenge(false), ""));
    let sent = h.sent();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0].1.method(), Some(&Method::Ack));
    assert_eq!(branch(&sent[0].1), branch(&invite));
    let retry = &sent[1].1;
    assert_eq!(retry.method(), Some(&Method::Invite));
    assert_eq!(retry.cseq().unwrap().0, invite.cseq().unwrap().0 + 1);
    assert_eq!(retry.call_id(), invite.call_id());
    assert_eq!(retry.from_tag(), invite.from_tag());
    assert_eq!(retry.to_tag(), None);
    assert_ne!(branch(retry), branch(&invite));
    let authorization = retry.header("Authorization").unwrap();
    assert!(authorization.contains("algorithm=SHA-256") && authorization.contains("qop=auth, nc=00000001"));
    let cnonce = auth_param(authorization, "cnonce");
    let challenge = Challenge::parse(sha256_challenge(false).trim_start_matches("WWW-Authenticate: ").trim()).unwrap();
    let expected = challenge.answer(&mufasa(), "INVITE", "sip:+15551234567@127.0.0.1:5080", &cnonce);
    assert_eq!(authorization, expected);
    assert!(h.events().is_empty(), "the challenge is not a step of the call");
    h.recv(200, &ok_200(retry, "callee"));
    assert!(matches!(outgoing(&h.events()).as_slice(), [OutgoingProgress::Answered { .. }]));
    let ack = h.sent().remove(0).1;
    assert_eq!(ack.cseq().unwrap().0, retry.cseq().unwrap().0);
    assert_eq!(ack.header("Authorization"), Some(authorization));
}

/// A second challenge after our credentials is AuthFailed (answered once per call), unless it
/// says stale=true (RFC 7616 §3.3); 407 is answered with Proxy-Authorization.
#[test]
fn digest_is_answered_once_unless_stale() {
    let proxy = |stale: bool| sha256_challenge(stale).replace("WWW-Authenticate", "Proxy-Authenticate");
    let mut h = Harness::new();
    let (_, invite) = h.place(call(Transport::Udp, 120_000, Some(mufasa())));
    h.recv(100, &response(&invite, 407, "Proxy Authentication Required", Some("t"), &proxy(false), ""));
    let retry = h.sent().remove(1).1;
    assert!(retry.header("Proxy-Authorization").is_some());
    h.recv(200, &response(&retry, 407, "Proxy Authentication Required", Some("t"), &proxy(true), ""));
    let sent = h.sent();
    assert_eq!(sent.len(), 2, "stale: ACK and one more INVITE");
    let third = sent[1].1.clone();
    assert!(third.header("Proxy-Authorization").unwrap().contains("nonce=\"ntrue\""));
    h.recv(300, &response(&third, 407, "Proxy Authentication Required", Some("t"), &proxy(false), ""));
    let sent = h.sent();
    assert_eq!(sent.len(), 1, "only the ACK: no further INVITE");
    assert_eq!(outgoing(&h.events()), vec![OutgoingProgress::Failed(CallFailure::AuthFailed { status: 407 })]);
}

/// Our BYE on a UAC dialog: Timer E doubles up to T2 (500, 1000, 2000, 4000, 4000 ...) until
/// Timer F at 64*T1 (§17.1.2.2).
#[test]
fn bye_on_a_uac_dialog_follows_timers_e_and_f() {
    let mut h = Harness::new();
    let (_, invite) = h.place(call(Transport::Udp, 120_000, None));
    h.recv(100, &ok_200(&invite, "callee"));
    let dialog = match outgoing(&h.events()).as_slice() {
        [OutgoingProgress::Answered { dialog, .. }] => *dialog,
        other => panic!("{other:?}"),
    };
    h.sent();
    assert_eq!(h.core.hangup(h.at(1_000), dialog), HangupStart::InProgress);
    let sent = h.sent();
    let bye = &sent[0].1;
    assert_eq!(bye.method(), Some(&Method::Bye));
    assert_eq!(bye.from_tag(), invite.from_tag());
    assert_eq!(bye.to_tag().as_deref(), Some("callee"));
    assert_eq!(bye.cseq().unwrap().0, invite.cseq().unwrap().0 + 1);
    let (resent, events) = h.run(1_010, 40_000);
    let times: Vec<u64> = resent.iter().map(|(t, _)| *t - 1_000).collect();
    assert_eq!(times, [500, 1500, 3500, 7500, 11_500, 15_500, 19_500, 23_500, 27_500, 31_500]);
    assert_eq!(events, vec![(33_000, CoreEvent::ByeFinished { dialog, outcome: Err(HangupError::Timeout) })]);
}

/// Timer K: after the final response to our request, retransmitted responses are absorbed for
/// T4 over UDP, then the transaction ends.
#[test]
fn request_on_a_dialog_ends_with_timer_k() {
    let mut h = Harness::new();
    let (_, invite) = h.place(call(Transport::Udp, 120_000, None));
    h.recv(100, &ok_200(&invite, "callee"));
    let dialog = match outgoing(&h.events()).as_slice() {
        [OutgoingProgress::Answered { dialog, .. }] => *dialog,
        other => panic!("{other:?}"),
    };
    h.sent();
    let destination = "127.0.0.1:5082".parse().unwrap();
    let headers = [("Content-Type", "application/dtmf-relay")];
    let request =
        h.core.send_request(h.at(1_000), dialog, destination, Method::Info, &headers, b"Signal=5\r\n").unwrap();
    let info = h.sent().remove(0).1;
    assert_eq!(info.method(), Some(&Method::Info));
    assert_eq!(info.body, b"Signal=5\r\n");
    h.recv(1_100, &response(&info, 200, "OK", None, "", ""));
    assert_eq!(
        h.events(),
        vec![CoreEvent::RequestFinished {
            dialog,
            request,
            outcome: RequestOutcome::Answered { status: 200, reason: "OK".into() }
        }]
    );
    assert_eq!(h.core.client_transactions.len(), 1, "Completed: absorbing retransmissions");
    h.recv(1_200, &response(&info, 200, "OK", None, "", ""));
    assert!(h.events().is_empty() && h.sent().is_empty());
    h.tick(6_099);
    assert_eq!(h.core.client_transactions.len(), 1);
    h.tick(6_100);
    assert_eq!(h.core.client_transactions.len(), 0, "Timer K = T4");
    assert!(h.core.send_request(h.at(7_000), dialog, destination, Method::Bye, &[], b"").is_none());
}

/// The callee hangs up: its BYE on our UAC dialog (From = its tag, To = ours) gets 200.
#[test]
fn bye_received_on_a_uac_dialog() {
    let mut h = Harness::new();
    let (_, invite) = h.place(call(Transport::Udp, 120_000, None));
    h.recv(100, &ok_200(&invite, "callee"));
    let dialog = match outgoing(&h.events()).as_slice() {
        [OutgoingProgress::Answered { dialog, .. }] => *dialog,
        other => panic!("{other:?}"),
    };
    h.sent();
    let our_from = invite.header("From").unwrap();
    let our_to = invite.header("To").unwrap();
    let bye = format!(
        "BYE sip:switchboard@127.0.0.1:5060 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bKcalleebye\r\n\
         Max-Forwards: 70\r\n\
         From: {our_to};tag=callee\r\n\
         To: {our_from}\r\n\
         Call-ID: {}\r\n\
         CSeq: 1 BYE\r\n\
         Content-Length: 0\r\n\r\n",
        invite.call_id().unwrap()
    );
    h.recv(5_000, &bye);
    let sent = h.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1.status(), Some(200));
    assert_eq!(h.events(), vec![CoreEvent::Dialog { dialog, notice: DialogEvent::RemoteBye }]);
    assert_eq!(h.core.live_state().1, 0);
}

/// A TCP connection that cannot be opened ends the INVITE at once: unreachable, not Timer B.
#[test]
fn tcp_connect_failure_ends_the_call_at_once() {
    let mut h = Harness::new();
    let (id, _) = h.place(call(Transport::Tcp, 120_000, None));
    h.core.transport_failed(TRUNK.parse().unwrap());
    assert_eq!(
        h.events(),
        vec![CoreEvent::Outgoing {
            call: id,
            progress: OutgoingProgress::Failed(CallFailure::Unreachable {
                reason: "cannot connect to 127.0.0.1:5080 over TCP".into()
            })
        }]
    );
    assert_eq!(h.core.live_state(), (0, 0, 0));
    assert_eq!(h.core.poll_timeout(), None);
}

/// A challenge that arrives after we cancelled is not answered: the outcome is the
/// cancellation, not an authentication failure.
#[test]
fn a_challenge_after_our_cancel_ends_as_cancelled() {
    let mut h = Harness::new();
    let (id, invite) = h.place(call(Transport::Udp, 120_000, Some(mufasa())));
    h.core.cancel_call(h.at(10), id, CancelReason::Caller);
    h.recv(100, &response(&invite, 401, "Unauthorized", Some("t"), &sha256_challenge(false), ""));
    let sent = h.sent();
    assert_eq!(sent.len(), 1, "the ACK only: no INVITE with credentials");
    assert_eq!(outgoing(&h.events()), vec![OutgoingProgress::Failed(CallFailure::Cancelled)]);
}

/// Runs every timer in order up to `until_ms` (as the shell does), answering the core like an
/// application would: answered calls are hung up, host names never resolve.
fn settle(h: &mut Harness, until_ms: u64) {
    let until = h.at(until_ms);
    let mut fired = 0u32;
    loop {
        for event in h.events() {
            match event {
                CoreEvent::Outgoing { progress: OutgoingProgress::Answered { dialog, .. }, .. } => {
                    let now = h.core.poll_timeout().unwrap_or(h.base).max(h.base);
                    h.core.hangup(now, dialog);
                }
                CoreEvent::ByeNeedsResolution { dialog, .. } => h.core.bye_unresolvable(dialog),
                _ => {}
            }
        }
        // Whatever we send must parse.
        h.sent();
        match h.core.poll_timeout() {
            Some(deadline) if deadline <= until => h.core.handle_timeout(deadline),
            _ => break,
        }
        fired += 1;
        assert!(fired < 100_000, "timer storm");
    }
}

/// No response to our INVITE or CANCEL, however mangled, panics the core, makes it send
/// something unreadable, or leaves state behind once the timers have run.
#[test]
fn mutated_responses_never_panic_and_leave_nothing_behind() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    let mut rng = StdRng::seed_from_u64(7);
    let challenge = sha256_challenge(false);
    let proxy_challenge = challenge.replace("WWW-Authenticate", "Proxy-Authenticate");
    for round in 0..120 {
        let mut h = Harness::new();
        let (id, invite) = h.place(call(Transport::Udp, 20_000, Some(mufasa())));
        let ringing = response(&invite, 180, "Ringing", Some("callee"), "", "");
        let vectors = [
            ringing.clone(),
            ok_200(&invite, "callee"),
            response(&invite, 401, "Unauthorized", Some("t"), &challenge, ""),
            response(&invite, 407, "Proxy Authentication Required", Some("t"), &proxy_challenge, ""),
            response(&invite, 486, "Busy Here", Some("callee"), "", ""),
            response(&invite, 487, "Request Terminated", Some("callee"), "", ""),
        ];
        // Half the rounds ring and cancel first, so that CANCEL responses and 487s meet a CANCEL.
        if round % 2 == 1 {
            h.recv(10, &ringing);
            h.core.cancel_call(h.at(20), id, CancelReason::Caller);
            h.sent();
        }
        for vector in &vectors {
            for _ in 0..20 {
                let mut mutated = vector.clone().into_bytes();
                for _ in 0..rng.random_range(1..6) {
                    if mutated.is_empty() {
                        break;
                    }
                    let at = rng.random_range(0..mutated.len());
                    match rng.random_range(0..4) {
                        0 => mutated[at] = rng.random(),
                        1 => {
                            mutated.remove(at);
                        }
                        2 => mutated.truncate(at),
                        _ => {
                            let specials = b"\r\n:;<>\",=@ \t\xff";
                            mutated.insert(at, specials[rng.random_range(0..specials.len())]);
                        }
                    }
                }
                let origin = Origin { transport: Transport::Udp, source: TRUNK.parse().unwrap(), connection: None };
                h.core.handle_message(h.at(30), origin, &mutated);
            }
            h.recv(40, vector);
        }
        settle(&mut h, 400_000);
        assert_eq!(h.core.live_state(), (0, 0, 0), "round {round}");
        assert!(h.core.outgoing.is_empty(), "round {round}: call state left behind");
    }
}
