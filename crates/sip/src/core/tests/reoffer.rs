//! Re-INVITE and UPDATE re-offers, and offers in our 2xx (`core/reoffer.rs`), on the virtual
//! clock.

use super::*;

const OFFER_V1: &str =
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n";
const HOLD_V2: &str =
    "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=sendonly\r\n";

/// An in-dialog request with an SDP body.
fn with_sdp(method: &str, branch: &str, to_tag: &str, cseq: u32, sdp: &str) -> String {
    let head = in_dialog(method, branch, to_tag, cseq);
    format!(
        "{}Contact: <sip:alice@127.0.0.1:5099>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        head.trim_end_matches("Content-Length: 0\r\n\r\n"),
        sdp.len()
    )
}

/// A confirmed dialog (INVITE with OFFER_V1, 200, ACK).
fn confirmed(h: &mut Harness) -> (DialogId, String) {
    let (dialog, tag, _) = establish(h, "");
    h.recv(50, &in_dialog("ACK", "z9hG4bKack", &tag, 1));
    assert_eq!(h.events(), vec![CoreEvent::Dialog { dialog, notice: DialogEvent::Confirmed }]);
    (dialog, tag)
}

fn reoffer_event(h: &mut Harness) -> (ReofferId, ReofferKind, Option<String>) {
    match h.events().as_slice() {
        [CoreEvent::Dialog { notice: DialogEvent::Reoffer { id, kind, sdp }, .. }] => (*id, *kind, sdp.clone()),
        other => panic!("expected one Reoffer, got {other:?}"),
    }
}

#[test]
fn a_reinvite_with_new_sdp_waits_for_the_application_and_gets_its_answer() {
    let mut h = Harness::new();
    let (dialog, tag) = confirmed(&mut h);
    h.recv(1_000, &with_sdp("INVITE", "z9hG4bKre", &tag, 2, HOLD_V2));
    assert_eq!(h.statuses(), vec![100], "100 Trying while the application decides");
    let (id, kind, sdp) = reoffer_event(&mut h);
    assert_eq!((kind, sdp.as_deref()), (ReofferKind::Invite, Some(HOLD_V2)));
    // A retransmission is absorbed (its 100 again), not a second re-offer or a CSeq error.
    h.recv(1_500, &with_sdp("INVITE", "z9hG4bKre", &tag, 2, HOLD_V2));
    assert_eq!(h.statuses(), vec![100]);
    assert!(h.events().is_empty());

    assert!(h.core.answer_reoffer(h.at(1_600), dialog, id, ReofferAnswer::Sdp("v=0\r\nrecvonly\r\n".into())));
    let sent = h.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1.status(), Some(200));
    assert_eq!(sent[0].1.body, b"v=0\r\nrecvonly\r\n");
    assert!(!h.core.answer_reoffer(h.at(1_700), dialog, id, ReofferAnswer::Reject(488)), "answered once");
    // Its 2xx is retransmitted until the ACK, which is no new Confirmed and carries no answer.
    assert_eq!(h.run_until(1_610, 2_100).len(), 1, "one 2xx retransmission at T1");
    h.recv(2_200, &in_dialog("ACK", "z9hG4bKack2", &tag, 2));
    assert!(h.events().is_empty());
    assert!(h.run_until(2_210, 40_000).is_empty());

    // The same SDP again is now a refresh: our last SDP at once, no event.
    h.recv(50_000, &with_sdp("INVITE", "z9hG4bKre2", &tag, 3, HOLD_V2));
    let sent = h.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!((sent[0].1.status(), sent[0].1.body.as_slice()), (Some(200), &b"v=0\r\nrecvonly\r\n"[..]));
    assert!(h.events().is_empty());
}

#[test]
fn an_unacceptable_reoffer_is_488_and_the_dialog_goes_on() {
    let mut h = Harness::new();
    let (dialog, tag) = confirmed(&mut h);
    h.recv(1_000, &with_sdp("INVITE", "z9hG4bKre", &tag, 2, HOLD_V2));
    h.sent();
    let (id, _, _) = reoffer_event(&mut h);
    assert!(h.core.answer_reoffer(h.at(1_010), dialog, id, ReofferAnswer::Reject(488)));
    assert_eq!(h.statuses(), vec![488]);
    h.recv(1_020, &in_dialog("ACK", "z9hG4bKre", &tag, 2));
    // The old session stands: its SDP is still the refresh one.
    h.recv(5_000, &with_sdp("INVITE", "z9hG4bKre2", &tag, 3, OFFER_V1));
    let sent = h.sent();
    assert_eq!((sent[0].1.status(), sent[0].1.body.as_slice()), (Some(200), &b"v=0\r\nanswer\r\n"[..]));
    assert_eq!(h.core.live_state().1, 1, "dialog still up");
}

#[test]
fn a_reoffer_left_unanswered_gets_500_with_retry_after_and_glare_gets_491() {
    let mut h = Harness::new();
    let (dialog, tag) = confirmed(&mut h);
    h.recv(1_000, &with_sdp("INVITE", "z9hG4bKre", &tag, 2, HOLD_V2));
    h.sent();
    let (id, _, _) = reoffer_event(&mut h);
    // Glare: an UPDATE with an offer while the re-INVITE's is pending.
    h.recv(1_100, &with_sdp("UPDATE", "z9hG4bKup", &tag, 3, OFFER_V1));
    assert_eq!(h.statuses(), vec![491]);
    assert_eq!(h.core.poll_timeout(), Some(h.at(1_000) + crate::core::reoffer::REOFFER_ANSWER_WITHIN));
    h.tick(1_000 + 3_999);
    assert!(h.sent().iter().all(|(_, m)| m.status() != Some(500)));
    h.tick(5_000);
    let sent = h.sent();
    let five_hundred = sent.iter().find(|(_, m)| m.status() == Some(500)).expect("500");
    let retry: u32 = five_hundred.1.header("Retry-After").unwrap().parse().unwrap();
    assert!(retry <= 10, "§14.2: 0-10 s");
    assert!(!h.core.answer_reoffer(h.at(5_100), dialog, id, ReofferAnswer::Reject(488)), "too late");
}

#[test]
fn an_update_without_sdp_is_a_refresh_and_one_with_sdp_a_reoffer() {
    let mut h = Harness::new();
    let (dialog, tag) = confirmed(&mut h);
    h.recv(1_000, &in_dialog("UPDATE", "z9hG4bKup1", &tag, 2));
    let sent = h.sent();
    assert_eq!(sent[0].1.status(), Some(200));
    assert!(sent[0].1.body.is_empty() && sent[0].1.header("Contact").is_some());
    assert!(h.events().is_empty());

    h.recv(2_000, &with_sdp("UPDATE", "z9hG4bKup2", &tag, 3, HOLD_V2));
    assert!(h.sent().is_empty(), "no provisional for a non-INVITE");
    let (id, kind, _) = reoffer_event(&mut h);
    assert_eq!(kind, ReofferKind::Update);
    h.recv(2_500, &with_sdp("UPDATE", "z9hG4bKup2", &tag, 3, HOLD_V2));
    assert!(h.sent().is_empty() && h.events().is_empty(), "retransmission absorbed");
    assert!(h.core.answer_reoffer(h.at(2_600), dialog, id, ReofferAnswer::Sdp("v=0\r\nheld\r\n".into())));
    let sent = h.sent();
    assert_eq!((sent[0].1.status(), sent[0].1.body.as_slice()), (Some(200), &b"v=0\r\nheld\r\n"[..]));
    assert_eq!(sent[0].1.header("Content-Type"), Some("application/sdp"));
    // A retransmission after the answer gets the same 200.
    h.recv(2_700, &with_sdp("UPDATE", "z9hG4bKup2", &tag, 3, HOLD_V2));
    assert_eq!(h.statuses(), vec![200]);
}

#[test]
fn a_reinvite_without_sdp_gets_our_offer_and_its_ack_the_answer() {
    let mut h = Harness::new();
    let (dialog, tag) = confirmed(&mut h);
    h.recv(1_000, &in_dialog("INVITE", "z9hG4bKre", &tag, 2));
    assert_eq!(h.statuses(), vec![100]);
    let (id, _, sdp) = reoffer_event(&mut h);
    assert_eq!(sdp, None);
    assert!(h.core.answer_reoffer(h.at(1_010), dialog, id, ReofferAnswer::Sdp("v=0\r\nour offer\r\n".into())));
    assert_eq!(h.statuses(), vec![200]);
    h.recv(1_100, &with_sdp("ACK", "z9hG4bKack2", &tag, 2, HOLD_V2));
    assert_eq!(
        h.events(),
        vec![CoreEvent::Dialog { dialog, notice: DialogEvent::Answer { sdp: Some(HOLD_V2.into()) } }]
    );
    // The answer's o= line is now the peer's: the same SDP is a refresh.
    h.recv(9_000, &with_sdp("INVITE", "z9hG4bKre2", &tag, 3, HOLD_V2));
    assert_eq!(h.statuses(), vec![200]);
    assert!(h.events().is_empty());
}

#[test]
fn delayed_offer_our_2xx_carries_the_offer_and_the_ack_the_answer_or_none() {
    for ack_sdp in [Some(OFFER_V1), None] {
        let mut h = Harness::new();
        let no_sdp = invite("z9hG4bKinv", "");
        let no_sdp = format!(
            "{}Content-Length: 0\r\n\r\n",
            &no_sdp[..no_sdp.find("Content-Type").expect("the fixture INVITE has a body")]
        );
        h.recv(0, &no_sdp);
        assert_eq!(h.statuses(), vec![100]);
        let invite_id = match h.events().as_slice() {
            [CoreEvent::IncomingCall { invite, offer: None, .. }] => *invite,
            other => panic!("{other:?}"),
        };
        let dialog = h.core.accept(h.at(10), invite_id, "v=0\r\nour offer\r\n").unwrap();
        let ok = h.sent().remove(0).1;
        assert_eq!(ok.body, b"v=0\r\nour offer\r\n");
        let tag = ok.to_tag().unwrap();
        let ack = match ack_sdp {
            Some(sdp) => with_sdp("ACK", "z9hG4bKack", &tag, 1, sdp),
            None => in_dialog("ACK", "z9hG4bKack", &tag, 1),
        };
        h.recv(50, &ack);
        assert_eq!(
            h.events(),
            vec![
                CoreEvent::Dialog { dialog, notice: DialogEvent::Answer { sdp: ack_sdp.map(str::to_owned) } },
                CoreEvent::Dialog { dialog, notice: DialogEvent::Confirmed },
            ]
        );
    }
}
