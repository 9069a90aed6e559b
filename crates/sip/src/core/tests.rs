//! State-machine tests on a virtual clock: a base `Instant` plus offsets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::string_slice)]

use std::time::Duration;

use super::*;
use crate::message::parse_message;

const CALLER: &str = "127.0.0.1:5061";

fn config() -> CoreConfig {
    CoreConfig {
        timers: Timers::default(),
        user_agent: "switchboard-test".into(),
        udp_contact: Some("127.0.0.1:5060".parse().unwrap()),
        tcp_contact: Some("127.0.0.1:5060".parse().unwrap()),
        tls_contact: None,
        max_message_bytes: 16 * 1024,
        max_headers: 100,
        session_timer: Default::default(),
    }
}

struct Harness {
    core: Core,
    base: Instant,
}

impl Harness {
    fn new() -> Harness {
        Harness { core: Core::new(config(), 7), base: Instant::now() }
    }

    fn at(&self, ms: u64) -> Instant {
        self.base + Duration::from_millis(ms)
    }

    fn recv(&mut self, ms: u64, text: &str) {
        self.recv_on(ms, udp_origin(), text);
    }

    fn recv_on(&mut self, ms: u64, origin: Origin, text: &str) {
        let now = self.at(ms);
        self.core.handle_message(now, origin, text.as_bytes());
    }

    fn tick(&mut self, ms: u64) {
        let now = self.at(ms);
        self.core.handle_timeout(now);
    }

    fn sent(&mut self) -> Vec<(Transmit, Message)> {
        let mut out = Vec::new();
        while let Some(t) = self.core.poll_transmit() {
            // A 400 for a request without Call-ID cannot carry one: accept the salvage.
            let parsed = match parse_message(&t.payload, Transport::Udp) {
                Ok(m) => m,
                // A 400 or 505 for a broken request copies its broken headers (a Via we could
                // not read, no Call-ID): accept the salvage.
                Err(e) => match e.partial {
                    Some(m) if matches!(m.status(), Some(400 | 505)) => *m,
                    _ => panic!("we sent an unparseable message: {e:?}"),
                },
            };
            out.push((t, parsed));
        }
        out
    }

    fn statuses(&mut self) -> Vec<u16> {
        self.sent().iter().map(|(_, m)| m.status().unwrap_or(0)).collect()
    }

    fn events(&mut self) -> Vec<CoreEvent> {
        let mut out = Vec::new();
        while let Some(e) = self.core.poll_event() {
            out.push(e);
        }
        out
    }

    fn incoming(&mut self) -> InviteId {
        match self.events().as_slice() {
            [CoreEvent::IncomingCall { invite, .. }] => *invite,
            other => panic!("expected one IncomingCall, got {other:?}"),
        }
    }

    /// Runs timers every 10 ms of virtual time up to `until_ms`, returning (time, message).
    fn run_until(&mut self, from_ms: u64, until_ms: u64) -> Vec<(u64, Message)> {
        let mut out = Vec::new();
        let mut t = from_ms;
        while t <= until_ms {
            self.tick(t);
            for (_, m) in self.sent() {
                out.push((t, m));
            }
            t += 10;
        }
        out
    }
}

fn udp_origin() -> Origin {
    Origin { transport: Transport::Udp, source: CALLER.parse().unwrap(), connection: None }
}

fn tcp_origin() -> Origin {
    Origin { transport: Transport::Tcp, source: CALLER.parse().unwrap(), connection: Some(9) }
}

fn invite(branch: &str, extra: &str) -> String {
    let body = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n";
    format!(
        "INVITE sip:15550001000@127.0.0.1:5060 SIP/2.0\r\n\
         Via: SIP/2.0/UDP {CALLER};branch={branch}\r\n\
         Max-Forwards: 70\r\n\
         From: \"Alice\" <sip:alice@127.0.0.1>;tag=caller\r\n\
         To: <sip:15550001000@127.0.0.1>\r\n\
         Call-ID: call-1\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:alice@{CALLER}>\r\n\
         {extra}\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn in_dialog(method: &str, branch: &str, to_tag: &str, cseq: u32) -> String {
    format!(
        "{method} sip:switchboard@127.0.0.1:5060 SIP/2.0\r\n\
         Via: SIP/2.0/UDP {CALLER};branch={branch}\r\n\
         Max-Forwards: 70\r\n\
         From: \"Alice\" <sip:alice@127.0.0.1>;tag=caller\r\n\
         To: <sip:15550001000@127.0.0.1>;tag={to_tag}\r\n\
         Call-ID: call-1\r\n\
         CSeq: {cseq} {method}\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

fn simple(method: &str, branch: &str, extra: &str) -> String {
    format!(
        "{method} sip:15550001000@127.0.0.1:5060 SIP/2.0\r\n\
         Via: SIP/2.0/UDP {CALLER};branch={branch}\r\n\
         From: <sip:alice@127.0.0.1>;tag=caller\r\n\
         To: <sip:15550001000@127.0.0.1>\r\n\
         Call-ID: other-call\r\n\
         CSeq: 1 {method}\r\n\
         {extra}Content-Length: 0\r\n\r\n"
    )
}

fn cancel(branch: &str) -> String {
    format!(
        "CANCEL sip:15550001000@127.0.0.1:5060 SIP/2.0\r\n\
         Via: SIP/2.0/UDP {CALLER};branch={branch}\r\n\
         Max-Forwards: 70\r\n\
         From: \"Alice\" <sip:alice@127.0.0.1>;tag=caller\r\n\
         To: <sip:15550001000@127.0.0.1>\r\n\
         Call-ID: call-1\r\n\
         CSeq: 1 CANCEL\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

fn ack_non_2xx(branch: &str, to_tag: &str) -> String {
    format!(
        "ACK sip:15550001000@127.0.0.1:5060 SIP/2.0\r\n\
         Via: SIP/2.0/UDP {CALLER};branch={branch}\r\n\
         From: \"Alice\" <sip:alice@127.0.0.1>;tag=caller\r\n\
         To: <sip:15550001000@127.0.0.1>;tag={to_tag}\r\n\
         Call-ID: call-1\r\n\
         CSeq: 1 ACK\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// Accepts a call; returns the dialog, our To-tag and the 200 OK.
fn establish(h: &mut Harness, extra: &str) -> (DialogId, String, Message) {
    h.recv(0, &invite("z9hG4bKinv", extra));
    assert_eq!(h.statuses(), vec![100]);
    let id = h.incoming();
    let dialog = h.core.accept(h.at(10), id, "v=0\r\nanswer\r\n").unwrap();
    let sent = h.sent();
    assert_eq!(sent.len(), 1);
    let ok = sent[0].1.clone();
    assert_eq!(ok.status(), Some(200));
    let tag = ok.to_tag().unwrap();
    (dialog, tag, ok)
}

#[test]
fn invite_gets_100_and_retransmission_is_absorbed() {
    let mut h = Harness::new();
    h.recv(0, &invite("z9hG4bKinv", ""));
    let sent = h.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1.status(), Some(100));
    assert_eq!(sent[0].1.to_tag(), None, "100 Trying carries no To-tag");
    assert_eq!(sent[0].0.destination, CALLER.parse().unwrap());
    match h.events().as_slice() {
        [CoreEvent::IncomingCall { info, offer, .. }] => {
            assert_eq!(info.dialled, "15550001000");
            assert_eq!(info.from_display.as_deref(), Some("Alice"));
            assert_eq!(info.call_id, "call-1");
            assert!(offer.as_deref().unwrap().contains("m=audio 6000"));
        }
        other => panic!("{other:?}"),
    }
    // Retransmission: the last response again, no second call.
    h.recv(500, &invite("z9hG4bKinv", ""));
    assert_eq!(h.statuses(), vec![100]);
    assert!(h.events().is_empty());
}

#[test]
fn ringing_then_retransmitted_invite_resends_180() {
    let mut h = Harness::new();
    h.recv(0, &invite("z9hG4bKinv", "Record-Route: <sip:proxy.example;lr>\r\n"));
    h.sent();
    let id = h.incoming();
    h.core.ringing(h.at(0), id);
    let sent = h.sent();
    let ringing = &sent[0].1;
    assert_eq!(ringing.status(), Some(180));
    assert!(ringing.to_tag().is_some());
    assert_eq!(ringing.header("Record-Route"), Some("<sip:proxy.example;lr>"));
    h.recv(400, &invite("z9hG4bKinv", "Record-Route: <sip:proxy.example;lr>\r\n"));
    assert_eq!(h.statuses(), vec![180]);
}

#[test]
fn ok_is_retransmitted_with_t1_doubling_until_ack() {
    let mut h = Harness::new();
    let (dialog, tag, ok) = establish(&mut h, "Record-Route: <sip:p1.example;lr>, <sip:p2.example;lr>\r\n");
    assert_eq!(ok.body, b"v=0\r\nanswer\r\n");
    assert_eq!(ok.header("Content-Type"), Some("application/sdp"));
    assert_eq!(ok.header("Contact"), Some("<sip:switchboard@127.0.0.1:5060;transport=udp>"));
    let rr: Vec<_> = ok.header_values("Record-Route").collect();
    assert_eq!(rr, vec!["<sip:p1.example;lr>", "<sip:p2.example;lr>"]);

    // Accepted at t=10: retransmissions at +500, +1000, +2000, +4000 (T2 cap), +4000...
    let sent = h.run_until(10, 15_000);
    let times: Vec<u64> = sent.iter().map(|(t, _)| *t).collect();
    assert_eq!(times, vec![510, 1510, 3510, 7510, 11_510]);
    assert!(sent.iter().all(|(_, m)| m.status() == Some(200)));

    // Retransmitted INVITE while waiting: the 200 again (RFC 6026 Accepted state).
    h.recv(15_005, &invite("z9hG4bKinv", ""));
    assert_eq!(h.statuses(), vec![200]);

    h.recv(15_010, &in_dialog("ACK", "z9hG4bKack", &tag, 1));
    assert_eq!(h.events(), vec![CoreEvent::Dialog { dialog, notice: DialogEvent::Confirmed }]);
    assert!(h.run_until(15_020, 40_000).is_empty(), "no retransmission after ACK");
    // Retransmitted ACK: nothing.
    h.recv(40_010, &in_dialog("ACK", "z9hG4bKack", &tag, 1));
    assert!(h.sent().is_empty());
    assert!(h.events().is_empty());
}

#[test]
fn ack_timeout_sends_bye_after_64_t1() {
    let mut h = Harness::new();
    let (dialog, tag, _) = establish(&mut h, "");
    let sent = h.run_until(20, 32_000);
    assert!(sent.iter().all(|(_, m)| m.status() == Some(200)));
    assert!(h.events().is_empty(), "nothing before 64*T1");
    let sent = h.run_until(32_010, 32_020);
    let byes: Vec<_> = sent.iter().filter(|(_, m)| m.method() == Some(&Method::Bye)).collect();
    assert_eq!(byes.len(), 1);
    let bye = &byes[0].1;
    assert_eq!(bye.request_uri(), Some("sip:alice@127.0.0.1:5061"));
    assert_eq!(bye.from_tag().as_deref(), Some(tag.as_str()));
    assert_eq!(bye.to_tag().as_deref(), Some("caller"));
    assert_eq!(h.events(), vec![CoreEvent::Dialog { dialog, notice: DialogEvent::AckTimeout }]);
}

#[test]
fn cancel_gets_200_and_487_and_ack_is_absorbed() {
    let mut h = Harness::new();
    h.recv(0, &invite("z9hG4bKinv", ""));
    h.sent();
    let id = h.incoming();
    h.recv(100, &cancel("z9hG4bKinv"));
    let sent = h.sent();
    let statuses: Vec<_> = sent.iter().map(|(_, m)| m.status().unwrap()).collect();
    assert_eq!(statuses, vec![200, 487]);
    assert_eq!(sent[0].1.cseq(), Some((1, Method::Cancel)));
    assert_eq!(sent[1].1.cseq(), Some((1, Method::Invite)));
    let tag = sent[1].1.to_tag().unwrap();
    assert_eq!(sent[0].1.to_tag(), Some(tag.clone()), "same To-tag (§9.2)");
    assert_eq!(h.events(), vec![CoreEvent::InviteCancelled { invite: id }]);
    // The application's answer after CANCEL is a no-op.
    assert!(h.core.accept(h.at(150), id, "v=0").is_none());
    h.core.reject(h.at(150), id, 486, "Busy Here", &[]);
    assert!(h.sent().is_empty());
    // 487 retransmitted on Timer G until the ACK.
    let resent = h.run_until(110, 700);
    assert_eq!(resent.len(), 1);
    assert_eq!(resent[0].1.status(), Some(487));
    h.recv(700, &ack_non_2xx("z9hG4bKinv", &tag));
    assert!(h.sent().is_empty());
    assert!(h.run_until(710, 40_000).is_empty());
    assert!(h.events().is_empty());
    // Everything cleaned up (Timer I, J).
    assert_eq!(h.core.live_state(), (0, 0, 0));
    // Retransmitted CANCEL after the transaction is gone: 481.
    h.recv(40_010, &cancel("z9hG4bKinv"));
    assert_eq!(h.statuses(), vec![481]);
}

#[test]
fn reject_is_retransmitted_with_timer_g_until_timer_h() {
    let mut h = Harness::new();
    h.recv(0, &invite("z9hG4bKinv", ""));
    h.sent();
    let id = h.incoming();
    h.core.reject(h.at(0), id, 503, "Service Unavailable", &[("Retry-After", "5")]);
    let sent = h.sent();
    assert_eq!(sent[0].1.status(), Some(503));
    assert_eq!(sent[0].1.header("Retry-After"), Some("5"));
    let resent = h.run_until(10, 40_000);
    let times: Vec<u64> = resent.iter().map(|(t, _)| *t).collect();
    // G: 500, 1000, 2000, 4000, 4000, ... until H at 32 s.
    assert_eq!(&times[..5], &[500, 1500, 3500, 7500, 11_500]);
    assert!(times.iter().all(|t| *t < 32_000));
    assert_eq!(h.core.live_state(), (0, 0, 0));
}

#[test]
fn bye_gets_200_and_retransmission_gets_cached_200() {
    let mut h = Harness::new();
    let (dialog, tag, _) = establish(&mut h, "");
    h.recv(50, &in_dialog("ACK", "z9hG4bKack", &tag, 1));
    h.events();
    h.recv(1000, &in_dialog("BYE", "z9hG4bKbye", &tag, 2));
    let first = h.sent();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].1.status(), Some(200));
    assert_eq!(h.events(), vec![CoreEvent::Dialog { dialog, notice: DialogEvent::RemoteBye }]);
    h.recv(1500, &in_dialog("BYE", "z9hG4bKbye", &tag, 2));
    let again = h.sent();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].0.payload, first[0].0.payload, "cached response resent");
    // A new BYE for the ended dialog: 481.
    h.recv(1600, &in_dialog("BYE", "z9hG4bKbye2", &tag, 3));
    assert_eq!(h.statuses(), vec![481]);
    // Hangup afterwards is a no-op.
    assert_eq!(h.core.hangup(h.at(1700), dialog), HangupStart::AlreadyEnded);
}

#[test]
fn our_bye_retransmits_over_udp_and_stops_on_200() {
    let mut h = Harness::new();
    let (dialog, tag, _) =
        establish(&mut h, "Record-Route: <sip:127.0.0.1:5070;lr>\r\nRecord-Route: <sip:10.0.0.2;lr>\r\n");
    h.recv(50, &in_dialog("ACK", "z9hG4bKack", &tag, 1));
    h.events();
    assert_eq!(h.core.hangup(h.at(100), dialog), HangupStart::InProgress);
    let sent = h.sent();
    assert_eq!(sent.len(), 1);
    let (transmit, bye) = &sent[0];
    assert_eq!(transmit.destination, "127.0.0.1:5070".parse().unwrap());
    assert_eq!(bye.request_uri(), Some("sip:alice@127.0.0.1:5061"));
    let routes: Vec<_> = bye.header_values("Route").collect();
    assert_eq!(routes, vec!["<sip:127.0.0.1:5070;lr>", "<sip:10.0.0.2;lr>"]);
    assert_eq!(bye.call_id(), Some("call-1"));
    let (cseq, _) = bye.cseq().unwrap();
    // Idempotent.
    assert_eq!(h.core.hangup(h.at(110), dialog), HangupStart::InProgress);
    assert!(h.sent().is_empty());
    // Timer E: 500, 1000, 2000 ms.
    let resent = h.run_until(110, 3_700);
    let times: Vec<u64> = resent.iter().map(|(t, _)| *t).collect();
    assert_eq!(times, vec![600, 1600, 3600]);
    let via = bye.top_via().unwrap();
    let response = format!(
        "SIP/2.0 200 OK\r\nVia: {via}\r\nFrom: {}\r\nTo: {}\r\nCall-ID: call-1\r\nCSeq: {cseq} BYE\r\nContent-Length: 0\r\n\r\n",
        bye.header("From").unwrap(),
        bye.header("To").unwrap()
    );
    h.recv(3_800, &response);
    assert_eq!(h.events(), vec![CoreEvent::ByeFinished { dialog, outcome: Ok(()) }]);
    assert!(h.run_until(3_810, 60_000).is_empty());
    assert_eq!(h.core.live_state().1, 0);
    assert_eq!(h.core.live_state().2, 0);
}

#[test]
fn strict_route_puts_first_route_in_request_uri() {
    let mut h = Harness::new();
    let (dialog, tag, _) = establish(&mut h, "Record-Route: <sip:127.0.0.1:5070>\r\n");
    h.recv(50, &in_dialog("ACK", "z9hG4bKack", &tag, 1));
    h.core.hangup(h.at(100), dialog);
    let sent = h.sent();
    let (transmit, bye) = &sent[0];
    assert_eq!(transmit.destination, "127.0.0.1:5070".parse().unwrap());
    assert_eq!(bye.request_uri(), Some("sip:127.0.0.1:5070"));
    assert_eq!(bye.header("Route"), Some("<sip:alice@127.0.0.1:5061>"));
}

#[test]
fn our_bye_over_tcp_is_not_retransmitted_and_times_out() {
    let mut h = Harness::new();
    let text = invite("z9hG4bKinv", "").replace("SIP/2.0/UDP", "SIP/2.0/TCP");
    h.recv_on(0, tcp_origin(), &text);
    let sent = h.sent();
    assert_eq!(sent[0].0.connection, Some(9));
    let id = h.incoming();
    let dialog = h.core.accept(h.at(0), id, "v=0").unwrap();
    let ok = h.sent();
    assert_eq!(ok[0].1.header("Contact"), Some("<sip:switchboard@127.0.0.1:5060;transport=tcp>"));
    // No 2xx retransmission over TCP.
    let tag = ok[0].1.to_tag().unwrap();
    assert!(h.run_until(10, 5_000).is_empty());
    h.recv_on(5_000, tcp_origin(), &in_dialog("ACK", "z9hG4bKack", &tag, 1).replace("SIP/2.0/UDP", "SIP/2.0/TCP"));
    h.events();
    h.core.hangup(h.at(6_000), dialog);
    let sent = h.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0.transport, Transport::Tcp);
    assert_eq!(sent[0].0.connection, Some(9), "BYE reuses the dialog's connection");
    assert!(sent[0].1.top_via().unwrap().transport == "TCP");
    assert!(h.run_until(6_010, 37_990).is_empty());
    h.tick(38_000);
    assert_eq!(h.events(), vec![CoreEvent::ByeFinished { dialog, outcome: Err(HangupError::Timeout) }]);
}

#[test]
fn hostname_next_hop_asks_for_resolution() {
    let mut h = Harness::new();
    let (dialog, tag, _) = establish(&mut h, "Record-Route: <sip:proxy.example:5070;lr>\r\n");
    h.recv(50, &in_dialog("ACK", "z9hG4bKack", &tag, 1));
    h.events();
    assert_eq!(h.core.hangup(h.at(100), dialog), HangupStart::InProgress);
    assert_eq!(
        h.events(),
        vec![CoreEvent::ByeNeedsResolution {
            dialog,
            next_hop: NextHop { transport: Transport::Udp, host: "proxy.example".into(), port: 5070 }
        }]
    );
    h.core.send_bye(h.at(110), dialog, "127.0.0.1:5070".parse().unwrap());
    let sent = h.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0.destination, "127.0.0.1:5070".parse().unwrap());
}

#[test]
fn reinvite_is_answered_with_last_sdp() {
    let mut h = Harness::new();
    let (_dialog, tag, _) = establish(&mut h, "");
    h.recv(50, &in_dialog("ACK", "z9hG4bKack", &tag, 1));
    h.events();
    // The INVITE's own SDP again (same o= line): a session refresh (RFC 3264 §8).
    let offer = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n";
    let reinvite = in_dialog("INVITE", "z9hG4bKre", &tag, 2);
    let reinvite = format!(
        "{}Contact: <sip:alice@127.0.0.1:5099>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{offer}",
        reinvite.trim_end_matches("Content-Length: 0\r\n\r\n"),
        offer.len()
    );
    h.recv(60_000, &reinvite);
    let sent = h.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1.status(), Some(200));
    assert_eq!(sent[0].1.body, b"v=0\r\nanswer\r\n");
    h.recv(60_010, &in_dialog("ACK", "z9hG4bKack2", &tag, 2));
    assert!(h.events().is_empty(), "re-INVITE ACK is not a new Confirmed");
    assert!(h.run_until(60_020, 70_000).is_empty());
}

/// An INFO in the dialog with a body.
fn in_dialog_info(branch: &str, to_tag: &str, cseq: u32, content_type: &str, body: &str) -> String {
    let head = in_dialog("INFO", branch, to_tag, cseq);
    let head = head.trim_end_matches("Content-Length: 0\r\n\r\n");
    format!("{head}Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}", body.len())
}

/// RFC 6086: DTMF INFO bodies reach the application after a 200; other bodies get 415 with
/// the types taken; an empty INFO is a 200 and nothing else.
#[test]
fn in_dialog_info_dtmf_is_taken_and_other_bodies_refused() {
    let mut h = Harness::new();
    let (dialog, tag, _) = establish(&mut h, "");
    h.recv(50, &in_dialog("ACK", "z9hG4bKack", &tag, 1));
    h.events();
    h.recv(60, &in_dialog_info("z9hG4bKi1", &tag, 2, "application/dtmf-relay", "Signal=5\r\nDuration=160\r\n"));
    assert_eq!(h.statuses(), vec![200]);
    let info = DialogEvent::Info {
        content_type: "application/dtmf-relay".into(),
        body: "Signal=5\r\nDuration=160\r\n".into(),
    };
    assert_eq!(h.events(), vec![CoreEvent::Dialog { dialog, notice: info }]);
    h.recv(70, &in_dialog_info("z9hG4bKi2", &tag, 3, "application/dtmf", "7"));
    assert_eq!(h.statuses(), vec![200]);
    assert_eq!(h.events().len(), 1);
    h.recv(80, &in_dialog_info("z9hG4bKi3", &tag, 4, "application/x-foo", "x"));
    let sent = h.sent();
    assert_eq!(sent[0].1.status(), Some(415));
    assert_eq!(sent[0].1.header("Accept"), Some("application/dtmf-relay, application/dtmf"));
    assert!(h.events().is_empty());
    h.recv(90, &in_dialog("INFO", "z9hG4bKi4", &tag, 5));
    assert_eq!(h.statuses(), vec![200]);
    assert!(h.events().is_empty());
}

/// A NOTIFY in the dialog with the given Event (none: no header) and a sipfrag body.
fn in_dialog_notify(branch: &str, to_tag: &str, cseq: u32, event: Option<&str>, body: &str) -> String {
    let head = in_dialog("NOTIFY", branch, to_tag, cseq);
    let head = head.trim_end_matches("Content-Length: 0\r\n\r\n");
    let event = event.map(|e| format!("Event: {e}\r\n")).unwrap_or_default();
    format!(
        "{head}{event}Subscription-State: active;expires=60\r\nContent-Type: message/sipfrag;version=2.0\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// RFC 3515 §2.4.4: the NOTIFYs of our REFER's implicit subscription are answered 200 and
/// reach the application; another event package is 489 (RFC 6665 §8.3.2), no Event 400, and
/// neither reaches the application.
#[test]
fn in_dialog_notify_for_refer_is_taken_and_others_refused() {
    let mut h = Harness::new();
    let (dialog, tag, _) = establish(&mut h, "");
    h.recv(50, &in_dialog("ACK", "z9hG4bKack", &tag, 1));
    h.events();
    h.recv(60, &in_dialog_notify("z9hG4bKn1", &tag, 2, Some("refer"), "SIP/2.0 180 Ringing\r\n"));
    assert_eq!(h.statuses(), vec![200]);
    let notify = DialogEvent::Notify {
        event: "refer".into(),
        subscription_state: "active;expires=60".into(),
        content_type: "message/sipfrag;version=2.0".into(),
        body: "SIP/2.0 180 Ringing\r\n".into(),
    };
    assert_eq!(h.events(), vec![CoreEvent::Dialog { dialog, notice: notify }]);
    h.recv(70, &in_dialog_notify("z9hG4bKn2", &tag, 3, Some("presence"), ""));
    let sent = h.sent();
    assert_eq!(sent[0].1.status(), Some(489));
    assert_eq!(sent[0].1.header("Allow-Events"), Some("refer"));
    h.recv(80, &in_dialog_notify("z9hG4bKn3", &tag, 4, None, "SIP/2.0 200 OK"));
    assert_eq!(h.statuses(), vec![400]);
    assert!(h.events().is_empty());
    // A NOTIFY for a dialog we do not have is 481 (§12.2.2), as every in-dialog request.
    h.recv(90, &in_dialog_notify("z9hG4bKn4", "not-our-tag", 5, Some("refer"), "SIP/2.0 200 OK"));
    assert_eq!(h.statuses(), vec![481]);
    assert!(h.events().is_empty());
}

#[test]
fn in_dialog_unserved_and_options() {
    let mut h = Harness::new();
    let (_dialog, tag, _) = establish(&mut h, "");
    h.recv(50, &in_dialog("ACK", "z9hG4bKack", &tag, 1));
    h.recv(60, &in_dialog("MESSAGE", "z9hG4bKi", &tag, 2));
    assert_eq!(h.statuses(), vec![501]);
    h.recv(70, &in_dialog("OPTIONS", "z9hG4bKo", &tag, 3));
    let sent = h.sent();
    assert_eq!(sent[0].1.status(), Some(200));
    assert_eq!(sent[0].1.header("Allow"), Some(ALLOW));
    // Out-of-order CSeq.
    h.recv(80, &in_dialog("OPTIONS", "z9hG4bKo2", &tag, 2));
    assert_eq!(h.statuses(), vec![500]);
}

#[test]
fn out_of_dialog_error_responses() {
    let mut h = Harness::new();
    h.recv(0, &simple("FOO", "z9hG4bK1", ""));
    assert_eq!(h.statuses(), vec![501]);
    h.recv(0, &simple("REGISTER", "z9hG4bK2", ""));
    let sent = h.sent();
    assert_eq!(sent[0].1.status(), Some(405));
    assert_eq!(sent[0].1.header("Allow"), Some(ALLOW));
    // Max-Forwards 0 ends an INVITE here (§16.3) but OPTIONS is answered (§11; RFC 4475 zeromf).
    h.recv(0, &simple("INVITE", "z9hG4bK3", "Max-Forwards: 0\r\nContact: <sip:a@h>\r\n"));
    assert_eq!(h.statuses(), vec![483]);
    h.recv(0, &simple("OPTIONS", "z9hG4bK3o", "Max-Forwards: 0\r\n"));
    assert_eq!(h.statuses(), vec![200]);
    h.recv(0, &simple("INVITE", "z9hG4bK4", "Require: 100rel, foo\r\nContact: <sip:a@h>\r\n"));
    let sent = h.sent();
    assert_eq!(sent[0].1.status(), Some(420));
    assert_eq!(sent[0].1.header("Unsupported"), Some("foo"), "100rel is supported (RFC 3262)");
    h.recv(0, &simple("OPTIONS", "z9hG4bK5", ""));
    let sent = h.sent();
    assert_eq!(sent[0].1.status(), Some(200));
    assert_eq!(sent[0].1.header("Accept"), Some("application/sdp"));
    h.core.set_options_status(503);
    h.recv(0, &simple("OPTIONS", "z9hG4bK6", ""));
    assert_eq!(h.statuses(), vec![503]);
    h.recv(0, &in_dialog("BYE", "z9hG4bK7", "nosuchtag", 5));
    assert_eq!(h.statuses(), vec![481]);
    h.recv(0, &simple("INVITE", "z9hG4bK8", ""));
    let sent = h.sent();
    assert_eq!(sent[0].1.status(), Some(400));
    assert_eq!(sent[0].1.header("Call-ID"), Some("other-call"));
    // ACK matching nothing: silence.
    h.recv(0, &ack_non_2xx("z9hG4bK9", "x"));
    assert!(h.sent().is_empty());
    assert!(h.events().is_empty());
}

#[test]
fn malformed_gets_400_with_reason() {
    let mut h = Harness::new();
    let text = simple("OPTIONS", "z9hG4bK1", "").replace("Call-ID: other-call\r\n", "");
    h.recv(0, &text);
    let sent = h.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1.start, StartLine::Response { code: 400, reason: "Bad Request (missing Call-ID)".into() });
    let text = simple("OPTIONS", "z9hG4bK2", "").replace("Content-Length: 0", "Content-Length: x");
    h.recv(0, &text);
    let sent = h.sent();
    assert_eq!(sent[0].1.start, StartLine::Response { code: 400, reason: "Bad Request (bad Content-Length)".into() });
    // No Via: nothing can be answered.
    h.recv(0, "OPTIONS sip:x@h SIP/2.0\r\nCall-ID: x\r\n\r\n");
    assert!(h.sent().is_empty());
    // Oversized and too many headers: dropped before parsing.
    let big = simple("OPTIONS", "z9hG4bK3", &format!("X-Pad: {}\r\n", "a".repeat(20_000)));
    h.recv(0, &big);
    assert!(h.sent().is_empty());
    let many = simple("OPTIONS", "z9hG4bK4", &"X-A: b\r\n".repeat(150));
    h.recv(0, &many);
    assert!(h.sent().is_empty());
}

#[test]
fn rport_and_received_are_filled() {
    let mut h = Harness::new();
    let text = simple("OPTIONS", "z9hG4bK1", "").replace(&format!("UDP {CALLER};"), "UDP 10.9.9.9:5099;rport;");
    h.recv(0, &text);
    let sent = h.sent();
    assert_eq!(sent[0].0.destination, CALLER.parse().unwrap());
    assert_eq!(
        sent[0].1.header("Via"),
        Some("SIP/2.0/UDP 10.9.9.9:5099;rport=5061;branch=z9hG4bK1;received=127.0.0.1")
    );
    // Without rport: source IP, Via port.
    let text = simple("OPTIONS", "z9hG4bK2", "").replace(&format!("UDP {CALLER};"), "UDP 10.9.9.9:5099;");
    h.recv(0, &text);
    let sent = h.sent();
    assert_eq!(sent[0].0.destination, "127.0.0.1:5099".parse().unwrap());
}

#[test]
fn torture_vectors_never_panic_and_mutations_never_panic() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let mut vectors: Vec<Vec<u8>> = Vec::new();
    for dir in [dir.clone(), dir.join("rfc4475")] {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "sip") {
                vectors.push(std::fs::read(&path).unwrap());
            }
        }
    }
    assert!(vectors.len() >= 50, "torture vectors missing in {dir:?}");
    let mut rng = StdRng::seed_from_u64(42);
    let mut h = Harness::new();
    for (index, vector) in vectors.iter().enumerate() {
        for transport in [Transport::Udp, Transport::Tcp] {
            let _ = parse_message(vector, transport);
        }
        h.recv_on(index as u64, udp_origin(), &String::from_utf8_lossy(vector));
        h.core.handle_message(h.at(0), udp_origin(), vector);
        for _ in 0..400 {
            let mut mutated = vector.clone();
            for _ in 0..rng.random_range(1..8) {
                if mutated.is_empty() {
                    break;
                }
                let at = rng.random_range(0..mutated.len());
                match rng.random_range(0..6) {
                    0 => mutated[at] = rng.random(),
                    // Multi-byte and invalid UTF-8 in the start line, where byte slicing once
                    // panicked the driver task.
                    5 => {
                        let inserts: [&[u8]; 5] = [b"\xc3\xa9", "😀".as_bytes(), b"\xff", b"\xe2\x82", b"\x80"];
                        let line_end = mutated.iter().position(|b| *b == b'\n').unwrap_or(mutated.len());
                        let at = rng.random_range(0..=line_end);
                        mutated.splice(at..at, inserts[rng.random_range(0..inserts.len())].iter().copied());
                    }
                    1 => {
                        mutated.remove(at);
                    }
                    2 => {
                        let specials = b"\r\n:;<>\",@[]% \t\xff";
                        mutated.insert(at, specials[rng.random_range(0..specials.len())]);
                    }
                    3 => mutated.truncate(at),
                    _ => {
                        let end = (at + rng.random_range(1..40)).min(mutated.len());
                        let copy = mutated[at..end].to_vec();
                        mutated.splice(at..at, copy);
                    }
                }
            }
            let _ = parse_message(&mutated, Transport::Udp);
            let _ = crate::message::frame_stream(&mutated, 16 * 1024);
            h.core.handle_message(h.at(0), udp_origin(), &mutated);
            h.core.handle_message(h.at(0), tcp_origin(), &mutated);
        }
        // Every truncation of the vector.
        for cut in 0..=vector.len() {
            h.core.handle_message(h.at(0), udp_origin(), &vector[..cut]);
            h.core.handle_message(h.at(0), tcp_origin(), &vector[..cut]);
        }
        // Whatever we answered is itself a readable SIP message.
        h.sent();
        h.events();
    }
    h.core.handle_timeout(h.at(100_000));
}

#[test]
fn tel_request_uri_and_sip_user_params_give_dialled_number() {
    let mut h = Harness::new();
    let text = invite("z9hG4bKtel", "")
        .replace("INVITE sip:15550001000@127.0.0.1:5060 SIP/2.0", "INVITE tel:+15550001000;phone-context=+1 SIP/2.0");
    h.recv(0, &text);
    match h.events().as_slice() {
        [CoreEvent::IncomingCall { info, .. }] => {
            assert_eq!(info.dialled, "+15550001000");
            assert_eq!(info.request_uri, "tel:+15550001000;phone-context=+1");
        }
        other => panic!("{other:?}"),
    }
    let text = invite("z9hG4bKuser", "")
        .replace("Call-ID: call-1", "Call-ID: call-2")
        .replace("sip:15550001000@127.0.0.1:5060 SIP", "sip:%2B4930123;phone-context=x@127.0.0.1 SIP");
    h.recv(0, &text);
    match h.events().as_slice() {
        [CoreEvent::IncomingCall { info, .. }] => assert_eq!(info.dialled, "+4930123"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn remote_bye_before_ack_stops_2xx_retransmission() {
    let mut h = Harness::new();
    let (dialog, tag, _) = establish(&mut h, "");
    h.recv(100, &in_dialog("BYE", "z9hG4bKbye", &tag, 2));
    assert_eq!(h.statuses(), vec![200]);
    assert_eq!(h.events(), vec![CoreEvent::Dialog { dialog, notice: DialogEvent::RemoteBye }]);
    let later: Vec<_> = h.run_until(110, 40_000).into_iter().filter(|(_, m)| m.method().is_some()).collect();
    assert!(later.is_empty(), "no BYE of ours after the peer's BYE");
    assert!(h.events().is_empty(), "no AckTimeout for an ended dialog");
}

/// A minimal recorder capturing counter increments by rendered key.
#[derive(Default)]
struct CountingRecorder {
    counts: std::sync::Arc<std::sync::Mutex<HashMap<String, u64>>>,
}

struct CountingCounter {
    key: String,
    counts: std::sync::Arc<std::sync::Mutex<HashMap<String, u64>>>,
}

impl metrics::CounterFn for CountingCounter {
    fn increment(&self, value: u64) {
        *self.counts.lock().unwrap().entry(self.key.clone()).or_default() += value;
    }
    fn absolute(&self, value: u64) {
        self.counts.lock().unwrap().insert(self.key.clone(), value);
    }
}

impl metrics::Recorder for CountingRecorder {
    fn describe_counter(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_gauge(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_histogram(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        let mut labels: Vec<String> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
        labels.sort();
        let rendered = format!("{}{{{}}}", key.name(), labels.join(","));
        metrics::Counter::from_arc(std::sync::Arc::new(CountingCounter { key: rendered, counts: self.counts.clone() }))
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

#[test]
fn metrics_count_requests_responses_and_malformed() {
    let recorder = CountingRecorder::default();
    let counts = recorder.counts.clone();
    metrics::with_local_recorder(&recorder, || {
        let mut h = Harness::new();
        h.recv(0, &simple("OPTIONS", "z9hG4bK1", ""));
        h.recv(0, &simple("FROB", "z9hG4bK2", ""));
        h.recv(0, "garbage\r\n\r\n");
        h.recv(0, &invite("z9hG4bKinv", ""));
        h.sent();
    });
    let counts = counts.lock().unwrap();
    let get = |k: &str| counts.get(k).copied().unwrap_or(0);
    assert_eq!(get("switchboard_sip_requests_total{method=OPTIONS}"), 1);
    assert_eq!(get("switchboard_sip_requests_total{method=other}"), 1);
    assert_eq!(get("switchboard_sip_requests_total{method=INVITE}"), 1);
    assert_eq!(get("switchboard_sip_responses_total{code=200,method=OPTIONS}"), 1);
    assert_eq!(get("switchboard_sip_responses_total{code=501,method=other}"), 1);
    assert_eq!(get("switchboard_sip_responses_total{code=100,method=INVITE}"), 1);
    assert_eq!(get("switchboard_sip_malformed_total{transport=udp}"), 1);
}

#[test]
fn merged_invite_via_another_path_gets_482() {
    let mut h = Harness::new();
    h.recv(0, &invite("z9hG4bKpath1", ""));
    assert_eq!(h.statuses(), vec![100]);
    h.incoming();
    h.recv(5, &invite("z9hG4bKpath2", ""));
    assert_eq!(h.statuses(), vec![482]);
    assert!(h.events().is_empty(), "no second call for a merged request");
}

/// An INVITE with `body` and these headers (Content-Type and Content-Length included).
fn invite_with_body(branch: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut bytes = format!(
        "INVITE sip:15550001000@127.0.0.1:5060 SIP/2.0\r\n\
         Via: SIP/2.0/UDP {CALLER};branch={branch}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@127.0.0.1>;tag=caller\r\n\
         To: <sip:15550001000@127.0.0.1>\r\n\
         Call-ID: {branch}\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:alice@{CALLER}>\r\n\
         {headers}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// RFC 5621 / RFC 4475 mpart01: the SDP part of a multipart/mixed body is the offer, whatever
/// else (binary) travels with it.
#[test]
fn multipart_invite_offers_its_sdp_part() {
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n";
    let mut body = b"--b0und\r\nContent-Type: text/plain\r\n\r\nHello\r\n--b0und\r\n\
        Content-Type: application/octet-stream\r\n\r\n\x00\xff\r\n\x80"
        .to_vec();
    body.extend_from_slice(
        format!("\r\n--b0und\r\nContent-Type: Application/SDP\r\n\r\n{sdp}\r\n--b0und--\r\n").as_bytes(),
    );
    let mut h = Harness::new();
    let text = invite_with_body("z9hG4bKmp", "Content-Type: multipart/mixed;boundary=\"b0und\"\r\n", &body);
    h.core.handle_message(h.at(0), udp_origin(), &text);
    assert_eq!(h.statuses(), vec![100]);
    match h.events().as_slice() {
        [CoreEvent::IncomingCall { offer, .. }] => assert_eq!(offer.as_deref(), Some(sdp)),
        other => panic!("{other:?}"),
    }
    // Without an SDP part there is nothing we understand: 415.
    let text = invite_with_body(
        "z9hG4bKmp2",
        "Content-Type: multipart/mixed;boundary=b0und\r\n",
        b"--b0und\r\nContent-Type: text/plain\r\n\r\nHello\r\n--b0und--\r\n",
    );
    h.core.handle_message(h.at(0), udp_origin(), &text);
    assert_eq!(h.statuses(), vec![415]);
    assert!(h.events().is_empty());
}

/// RFC 3261 §8.2.3: an unknown body type or encoding is 415 with what we accept (§21.4.13);
/// §21.4.7: an Accept without SDP is 406. None of them reaches the application.
#[test]
fn unusable_bodies_and_accept_get_415_and_406() {
    let sdp = b"v=0\r\n";
    let mut h = Harness::new();
    let text = invite_with_body("z9hG4bKct", "Content-Type: application/unknownformat\r\n", b"<audio/>");
    h.core.handle_message(h.at(0), udp_origin(), &text);
    let sent = h.sent();
    assert_eq!(sent[0].1.status(), Some(415));
    assert_eq!(sent[0].1.header("Accept"), Some("application/sdp"));
    let text = invite_with_body("z9hG4bKce", "Content-Type: application/sdp\r\nContent-Encoding: gzip\r\n", sdp);
    h.core.handle_message(h.at(0), udp_origin(), &text);
    let sent = h.sent();
    assert_eq!(sent[0].1.status(), Some(415));
    assert_eq!(sent[0].1.header("Accept-Encoding"), Some("identity"));
    let text = invite_with_body("z9hG4bKac", "Content-Type: application/sdp\r\nAccept: text/plain\r\n", sdp);
    h.core.handle_message(h.at(0), udp_origin(), &text);
    let sent = h.sent();
    assert_eq!(sent[0].1.status(), Some(406));
    assert!(sent[0].1.header("Warning").is_some_and(|w| w.starts_with("399 switchboard \"")));
    assert!(h.events().is_empty());
    // Accept lists that admit SDP, and an identity encoding, are fine.
    for (branch, headers) in [
        ("z9hG4bKok1", "Accept: text/plain, application/sdp;level=1\r\n"),
        ("z9hG4bKok2", "Accept: application/*\r\nContent-Encoding: identity\r\n"),
        ("z9hG4bKok3", "Accept: */*\r\n"),
    ] {
        let text = invite_with_body(branch, &format!("Content-Type: application/sdp\r\n{headers}"), sdp);
        h.core.handle_message(h.at(0), udp_origin(), &text);
        assert_eq!(h.statuses(), vec![100], "{headers}");
        h.incoming();
    }
}

/// RFC 4475 §3.4.1 (inv2543): an RFC 2543 client (no `z9hG4bK` branch) may omit Contact; its
/// From URI is the remote target, so our BYE still reaches it. An RFC 3261 client gets 400.
#[test]
fn rfc2543_invite_without_contact_uses_from_as_remote_target() {
    let without_contact = |branch: &str| {
        invite(branch, "")
            .replace(&format!("Contact: <sip:alice@{CALLER}>\r\n"), "")
            .replace("From: \"Alice\" <sip:alice@127.0.0.1>;tag=caller", "From: <sip:alice@127.0.0.1:5099>;tag=caller")
    };
    let mut h = Harness::new();
    h.recv(0, &without_contact("z9hG4bKnocontact"));
    let sent = h.sent();
    assert_eq!(sent[0].1.status(), Some(400));
    assert_eq!(sent[0].1.start, StartLine::Response { code: 400, reason: "Bad Request (missing Contact)".into() });

    h.recv(10, &without_contact("old-2543-branch"));
    assert_eq!(h.statuses(), vec![100]);
    let id = h.incoming();
    let dialog = h.core.accept(h.at(20), id, "v=0\r\n").unwrap();
    h.sent();
    assert_eq!(h.core.hangup(h.at(30), dialog), HangupStart::InProgress);
    let sent = h.sent();
    assert_eq!(sent[0].1.method(), Some(&Method::Bye));
    assert_eq!(sent[0].1.request_uri(), Some("sip:alice@127.0.0.1:5099"));
    assert_eq!(sent[0].0.destination, "127.0.0.1:5099".parse().unwrap());
}

/// RFC 4475 badinv01: a Via we cannot read still gets its 400, sent back to the source with
/// the Via copied as received; 505 for another SIP version names it in a Warning.
#[test]
fn unreadable_via_and_other_version_are_still_answered() {
    let mut h = Harness::new();
    let text =
        simple("OPTIONS", "z9hG4bKv", "").replace(&format!("UDP {CALLER};branch=z9hG4bKv"), "UDP 192.0.2.15;;,;,,");
    h.recv(0, &text);
    let sent = h.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0.destination, CALLER.parse().unwrap());
    assert_eq!(sent[0].1.start, StartLine::Response { code: 400, reason: "Bad Request (malformed Via)".into() });
    assert_eq!(sent[0].1.header("Via"), Some("SIP/2.0/UDP 192.0.2.15;;"));

    let text = simple("OPTIONS", "z9hG4bKv2", "").replace("SIP/2.0\r\n", "SIP/2.1\r\n");
    h.recv(0, &text);
    let sent = h.sent();
    assert_eq!(sent[0].1.status(), Some(505));
    assert!(sent[0].1.header("Warning").is_some_and(|w| w.contains("SIP/2.0")));
    // An ACK is never answered, whatever is wrong with it.
    h.recv(0, &simple("ACK", "z9hG4bKv3", "").replace("SIP/2.0\r\n", "SIP/3.0\r\n"));
    assert!(h.sent().is_empty());
}

/// §8.2.1 before §8.2.2.1: an unknown method is 501 and an unserved one 405 whatever the
/// Request-URI scheme; the scheme is checked next (416).
#[test]
fn method_inspection_comes_before_the_scheme_check() {
    let mut h = Harness::new();
    let with_uri = |method: &str, branch: &str, uri: &str| {
        simple(method, branch, "").replace("sip:15550001000@127.0.0.1:5060", uri)
    };
    h.recv(0, &with_uri("OPTIONS", "z9hG4bKs1", "mailto:a@b"));
    let sent = h.sent();
    assert_eq!(sent[0].1.status(), Some(416));
    assert_eq!(sent[0].1.start, StartLine::Response { code: 416, reason: "Unsupported URI Scheme".into() });
    h.recv(0, &with_uri("REGISTER", "z9hG4bKs2", "mailto:a@b"));
    assert_eq!(h.statuses(), vec![405]);
    h.recv(0, &with_uri("FOO", "z9hG4bKs3", "mailto:a@b"));
    assert_eq!(h.statuses(), vec![501]);
    h.recv(0, &with_uri("OPTIONS", "z9hG4bKs4", "tel:+15550001000"));
    assert_eq!(h.statuses(), vec![200]);
}

#[test]
fn call_info_carries_the_asserted_identity_the_headers_and_to_when_the_request_uri_has_no_user() {
    let mut h = Harness::new();
    let extra = "P-Asserted-Identity: \"Bob\" <sip:+15557654321@carrier.example>, <tel:+15557654321>\r\n\
                 X-Customer-Id: C-42\r\n";
    let text =
        invite("z9hG4bKpai", extra).replace("INVITE sip:15550001000@127.0.0.1:5060", "INVITE sip:127.0.0.1:5060");
    h.recv(0, &text);
    match h.events().as_slice() {
        [CoreEvent::IncomingCall { info, .. }] => {
            assert_eq!(info.dialled, "15550001000", "from To, the Request-URI has no user");
            assert_eq!(info.asserted_identity.as_deref(), Some("sip:+15557654321@carrier.example"));
            assert!(info.headers.iter().any(|(n, v)| n == "X-Customer-Id" && v == "C-42"), "{:?}", info.headers);
        }
        other => panic!("{other:?}"),
    }
}

/// RFC 3261 §12.2.1.1 with §26.2 / RFC 5630: a route with `transport=tls`, or a `sips:` one, is
/// reached over TLS (5061 when no port is given), with our TLS Via and Contact (sips for sips).
#[test]
fn tls_and_sips_routes_are_followed_over_tls() {
    let tls_contact = Some("127.0.0.1:5091".parse().unwrap());
    for (record_route, destination, contact) in [
        ("<sip:127.0.0.1:5071;transport=tls;lr>", "127.0.0.1:5071", "<sip:switchboard@127.0.0.1:5091;transport=tls>"),
        ("<sips:127.0.0.1;lr>", "127.0.0.1:5061", "<sips:switchboard@127.0.0.1:5091>"),
    ] {
        let mut h = Harness { core: Core::new(CoreConfig { tls_contact, ..config() }, 7), base: Instant::now() };
        let (dialog, tag, _) = establish(&mut h, &format!("Record-Route: {record_route}\r\n"));
        h.recv(50, &in_dialog("ACK", "z9hG4bKack", &tag, 1));
        h.events();
        h.core.hangup(h.at(100), dialog);
        let sent = h.sent();
        let (transmit, bye) = &sent[0];
        assert_eq!(transmit.transport, Transport::Tls, "{record_route}");
        assert_eq!(transmit.destination, destination.parse().unwrap());
        assert_eq!(transmit.connection, None, "not the UDP caller's connection");
        assert_eq!(bye.top_via().unwrap().transport, "TLS");
        assert_eq!(bye.header("Contact"), Some(contact));
        assert!(h.run_until(110, 5_000).is_empty(), "no retransmission over TLS");
    }
}
/// Over TLS the caller's connection comes from an ephemeral port, not its Contact's: our BYE
/// goes to the Contact's address on that same connection (a new one would be verified against
/// the default trust store with an IP as the server name, and fail with a carrier's certificate).
#[test]
fn in_dialog_requests_over_tls_reuse_the_callers_connection() {
    let tls_contact = Some("127.0.0.1:5091".parse().unwrap());
    let mut h = Harness { core: Core::new(CoreConfig { tls_contact, ..config() }, 7), base: Instant::now() };
    let origin = Origin { transport: Transport::Tls, source: "127.0.0.1:40123".parse().unwrap(), connection: Some(9) };
    let over_tls = |text: String| {
        text.replace("SIP/2.0/UDP", "SIP/2.0/TLS")
            .replace("Contact: <sip:alice@127.0.0.1:5061>", "Contact: <sip:alice@127.0.0.1:5061;transport=tls>")
    };
    h.recv_on(0, origin, &over_tls(invite("z9hG4bKinv", "")));
    let id = h.incoming();
    let dialog = h.core.accept(h.at(10), id, "v=0\r\nanswer\r\n").unwrap();
    let tag = h.sent().into_iter().find_map(|(_, m)| (m.status() == Some(200)).then(|| m.to_tag().unwrap())).unwrap();
    h.recv_on(50, origin, &over_tls(in_dialog("ACK", "z9hG4bKack", &tag, 1)));
    h.events();
    h.core.hangup(h.at(100), dialog);
    let sent = h.sent();
    let (transmit, bye) = &sent[0];
    assert_eq!(bye.method(), Some(&Method::Bye));
    assert_eq!(transmit.transport, Transport::Tls);
    assert_eq!(transmit.destination, "127.0.0.1:5061".parse().unwrap(), "the remote target");
    assert_eq!(transmit.connection, Some(9), "on the caller's own TLS connection");
}

/// Re-offers, delayed offer (reoffer.rs).
mod reoffer;

/// Session timers (session_timer.rs).
mod session_timers;

/// Reliable provisional responses (prack.rs).
mod prack;
