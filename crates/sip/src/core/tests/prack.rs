//! Reliable provisional responses (RFC 3262, `core/prack.rs`) on the virtual clock.

use super::*;

/// A PRACK in the early dialog of our 180 (To tag `to_tag`).
fn prack(branch: &str, to_tag: &str, cseq: u32, rack: &str) -> String {
    in_dialog("PRACK", branch, to_tag, cseq).replace("Content-Length: 0", &format!("RAck: {rack}\r\nContent-Length: 0"))
}

/// An INVITE requiring 100rel, rung: returns the invite, our 180 and its RSeq.
fn rung(h: &mut Harness) -> (InviteId, Message, u32) {
    h.recv(0, &invite("z9hG4bKinv", "Require: 100rel\r\nSupported: timer\r\n"));
    assert_eq!(h.statuses(), vec![100], "Require: 100rel is supported, not 420");
    let id = h.incoming();
    h.core.ringing(h.at(5), id);
    let ringing = h.sent().remove(0).1;
    assert_eq!(ringing.status(), Some(180));
    assert_eq!(ringing.header("Require"), Some("100rel"));
    let rseq: u32 = ringing.header("RSeq").unwrap().parse().unwrap();
    assert!((1..=0x7fff_ffff).contains(&rseq));
    (id, ringing, rseq)
}

#[test]
fn a_reliable_180_is_retransmitted_until_its_prack_and_the_200_waits_for_it() {
    let mut h = Harness::new();
    let (id, ringing, rseq) = rung(&mut h);
    let tag = ringing.to_tag().unwrap();
    // T1 doubling: 500 ms, 1 s, 2 s after the first.
    let resent: Vec<u64> =
        h.run_until(10, 4_000).into_iter().filter(|(_, m)| m.status() == Some(180)).map(|(t, _)| t).collect();
    assert_eq!(resent, vec![510, 1_510, 3_510]);

    // The application answers before the PRACK: the 200 is held.
    let dialog = h.core.accept(h.at(4_000), id, "v=0\r\nanswer\r\n").unwrap();
    assert!(h.sent().is_empty(), "no 2xx before the PRACK (RFC 3262 §3)");

    // A PRACK for another RSeq: 481, nothing released.
    h.recv(4_100, &prack("z9hG4bKpr0", &tag, 2, &format!("{} 1 INVITE", rseq.wrapping_add(1))));
    assert_eq!(h.statuses(), vec![481]);

    h.recv(4_200, &prack("z9hG4bKpr1", &tag, 3, &format!("{rseq} 1 INVITE")));
    let sent = h.sent();
    let statuses: Vec<(Option<u16>, String)> =
        sent.iter().map(|(_, m)| (m.status(), m.header("CSeq").unwrap_or_default().to_string())).collect();
    assert_eq!(statuses, vec![(Some(200), "3 PRACK".into()), (Some(200), "1 INVITE".into())]);
    assert!(h.run_until(4_210, 4_600).iter().all(|(_, m)| m.status() != Some(180)), "180 no longer resent");

    h.recv(4_700, &in_dialog("ACK", "z9hG4bKack", &tag, 1));
    assert_eq!(h.events(), vec![CoreEvent::Dialog { dialog, notice: DialogEvent::Confirmed }]);
}

#[test]
fn without_a_prack_the_invite_is_rejected_with_500_after_64_t1() {
    let mut h = Harness::new();
    let (id, _, _) = rung(&mut h);
    let dialog = h.core.accept(h.at(1_000), id, "v=0\r\nanswer\r\n").unwrap();
    let sent = h.run_until(10, 40_000);
    let finals: Vec<(u64, u16)> =
        sent.iter().filter_map(|(t, m)| m.status().filter(|s| *s >= 200).map(|s| (*t, s))).collect();
    assert_eq!(finals.first(), Some(&(32_010, 500)), "64*T1 after the 180 at 5 ms");
    assert!(finals.iter().all(|(_, s)| *s == 500), "never a 200: {finals:?}");
    assert_eq!(h.events(), vec![CoreEvent::Dialog { dialog, notice: DialogEvent::AckTimeout }]);
    assert_eq!(h.core.live_state().1, 0, "the held dialog is gone");
}

#[test]
fn supported_100rel_alone_gets_a_plain_180() {
    let mut h = Harness::new();
    h.recv(0, &invite("z9hG4bKinv", "Supported: 100rel\r\n"));
    h.sent();
    let id = h.incoming();
    h.core.ringing(h.at(5), id);
    let ringing = h.sent().remove(0).1;
    assert_eq!((ringing.status(), ringing.header("RSeq"), ringing.header("Require")), (Some(180), None, None));
    h.core.accept(h.at(10), id, "v=0\r\nanswer\r\n").unwrap();
    assert_eq!(h.statuses(), vec![200], "nothing to wait for");
}

/// RFC 3262 §5: to an INVITE without an offer, the first reliable provisional would have to carry
/// our offer, which the call only makes in its 200: such an INVITE gets no 180 at all, and the
/// 200 (with the offer) is not held for a PRACK.
#[test]
fn a_delayed_offer_requiring_100rel_gets_no_180_and_an_unheld_200() {
    let mut h = Harness::new();
    let without_sdp = invite("z9hG4bKinv", "Require: 100rel\r\n");
    let headers_end = without_sdp.find("\r\n\r\n").unwrap();
    let without_sdp = without_sdp[..headers_end]
        .replace("Content-Type: application/sdp\r\n", "")
        .replace(&format!("Content-Length: {}", without_sdp.len() - headers_end - 4), "Content-Length: 0")
        + "\r\n\r\n";
    h.recv(0, &without_sdp);
    assert_eq!(h.statuses(), vec![100]);
    let id = h.incoming();
    h.core.ringing(h.at(5), id);
    assert!(h.sent().is_empty(), "no 180 without our offer in it");
    h.core.accept(h.at(10), id, "v=0\r\noffer\r\n").unwrap();
    assert_eq!(h.statuses(), vec![200], "nothing to wait for");
}

/// A CANCEL while our 200 waits for the PRACK: the INVITE is still pending for the caller, so the
/// CANCEL gets 200 and the INVITE 487, the held 200 is never sent, the reliable 180 stops, and the
/// application's dialog ends.
#[test]
fn a_cancel_while_the_200_waits_for_the_prack_gets_487_and_ends_the_dialog() {
    let mut h = Harness::new();
    let (id, _, _) = rung(&mut h);
    let dialog = h.core.accept(h.at(10), id, "v=0\r\nanswer\r\n").unwrap();
    assert!(h.sent().is_empty());
    h.recv(100, &cancel("z9hG4bKinv"));
    assert_eq!(h.statuses(), vec![200, 487]);
    assert_eq!(h.events(), vec![CoreEvent::Dialog { dialog, notice: DialogEvent::RemoteBye }]);
    let later = h.run_until(110, 40_000);
    assert!(later.iter().all(|(_, m)| m.status() != Some(180) && m.status() != Some(200)), "{later:?}");
}
