//! Session timers (RFC 4028, `core/session_timer.rs`) on the virtual clock: 422, the 2xx's
//! headers, our UPDATE refreshes and the expiry BYE.

use super::*;

/// Answers an INVITE carrying `extra` headers; returns the dialog, our tag and the 200.
fn answered(h: &mut Harness, extra: &str) -> (DialogId, String, Message) {
    let (dialog, tag, ok) = establish(h, extra);
    h.recv(50, &in_dialog("ACK", "z9hG4bKack", &tag, 1));
    h.events();
    (dialog, tag, ok)
}

fn byes(sent: &[(u64, Message)]) -> Vec<u64> {
    sent.iter().filter(|(_, m)| m.method() == Some(&Method::Bye)).map(|(t, _)| *t).collect()
}

fn expired(h: &mut Harness) -> Vec<session_timer::SessionEnd> {
    h.events()
        .into_iter()
        .filter_map(|e| match e {
            CoreEvent::Dialog { notice: DialogEvent::SessionExpired { cause }, .. } => Some(cause),
            _ => None,
        })
        .collect()
}

#[test]
fn an_interval_below_our_minimum_is_422_with_our_min_se() {
    let mut h = Harness::new();
    h.recv(0, &invite("z9hG4bKinv", "Supported: timer\r\nSession-Expires: 60\r\n"));
    let sent = h.sent();
    assert_eq!(sent[0].1.status(), Some(422));
    assert_eq!(sent[0].1.header("Min-SE"), Some("90"));
    assert!(h.events().is_empty(), "no call for the application");
}

#[test]
fn require_timer_and_100rel_are_supported_and_other_tags_still_get_420() {
    let mut h = Harness::new();
    h.recv(0, &invite("z9hG4bKinv", "Require: timer\r\nSession-Expires: 1800\r\n"));
    assert_eq!(h.statuses(), vec![100]);
    h.recv(0, &simple("INVITE", "z9hG4bK2", "Require: timer, 100rel, precondition\r\nContact: <sip:a@h>\r\n"));
    let sent = h.sent();
    assert_eq!(sent[0].1.status(), Some(420));
    assert_eq!(sent[0].1.header("Unsupported"), Some("precondition"));
}

#[test]
fn a_caller_refreshing_itself_keeps_the_call_and_one_that_stops_gets_our_bye() {
    let mut h = Harness::new();
    let (_dialog, tag, ok) =
        answered(&mut h, "Supported: timer\r\nSession-Expires: 120;refresher=uac\r\nMin-SE: 90\r\n");
    assert_eq!(ok.header("Session-Expires"), Some("120;refresher=uac"));
    assert_eq!(ok.header("Require"), Some("timer"), "§9: refresher=uac needs Require: timer");
    assert_eq!(ok.header("Supported"), Some("100rel, timer"));

    // The caller refreshes at 60 s with an UPDATE: answered with the timer, and the expiry moves.
    h.run_until(60, 59_990);
    let update = in_dialog("UPDATE", "z9hG4bKup", &tag, 2)
        .replace("Content-Length: 0", "Session-Expires: 120;refresher=uac\r\nSupported: timer\r\nContent-Length: 0");
    h.recv(60_000, &update);
    let sent = h.sent();
    assert_eq!(sent[0].1.status(), Some(200));
    assert_eq!(sent[0].1.header("Session-Expires"), Some("120;refresher=uac"));
    // 120 - min(32, 40) = 88 s after the last refresh: our BYE, not before.
    let sent = h.run_until(60_010, 150_000);
    assert_eq!(byes(&sent).first(), Some(&148_000), "88 s after the refresh at 60 s (then its retransmissions)");
    assert_eq!(expired(&mut h), vec![session_timer::SessionEnd::NotRefreshed]);
}

#[test]
fn we_refresh_with_update_at_half_the_interval_and_a_481_ends_the_call() {
    let mut h = Harness::new();
    // No timer support but UPDATE allowed: we refresh (§9).
    let (_dialog, _tag, ok) = answered(&mut h, "Session-Expires: 90\r\nAllow: INVITE, ACK, BYE, UPDATE\r\n");
    assert_eq!(ok.header("Session-Expires"), Some("90;refresher=uas"));
    assert_eq!(ok.header("Require"), None, "the caller does not support timer");

    let sent = h.run_until(60, 45_010);
    let updates: Vec<&(u64, Message)> = sent.iter().filter(|(_, m)| m.method() == Some(&Method::Update)).collect();
    assert_eq!(updates.len(), 1);
    let (at, update) = updates[0];
    assert_eq!(*at, 45_010, "half of 90 s after the 200 at 10 ms");
    assert_eq!(update.header("Session-Expires"), Some("90;refresher=uac"));
    assert!(update.body.is_empty());
    assert_eq!(update.to_tag().as_deref(), Some("caller"), "in the dialog: To is the caller");

    // 200: refreshed; the next one comes 45 s later.
    h.recv(45_100, &response(update, 200, "OK", ""));
    let sent = h.run_until(45_110, 90_110);
    let next: Vec<u64> = sent.iter().filter(|(_, m)| m.method() == Some(&Method::Update)).map(|(t, _)| *t).collect();
    assert_eq!(next, vec![90_100]);
    let second = sent.iter().find(|(_, m)| m.method() == Some(&Method::Update)).unwrap().1.clone();

    // 481: the dialog is gone on the other side: BYE at once, and the call ends (§10).
    h.recv(90_200, &response(&second, 481, "Call/Transaction Does Not Exist", ""));
    let sent = h.sent();
    assert!(sent.iter().any(|(_, m)| m.method() == Some(&Method::Bye)), "{sent:?}");
    assert_eq!(expired(&mut h), vec![session_timer::SessionEnd::RefreshFailed(481)]);
}

#[test]
fn an_unanswered_refresh_ends_the_call_with_bye() {
    let mut h = Harness::new();
    answered(&mut h, "Session-Expires: 90\r\nAllow: INVITE, ACK, BYE, UPDATE\r\n");
    let sent = h.run_until(60, 45_000 + 64 * 500 + 100);
    assert!(sent.iter().filter(|(_, m)| m.method() == Some(&Method::Update)).count() > 1, "retransmitted");
    assert!(!byes(&sent).is_empty(), "BYE after Timer F of the refresh");
    assert_eq!(expired(&mut h), vec![session_timer::SessionEnd::RefreshTimedOut]);
}

#[test]
fn without_update_or_timer_support_there_is_no_session_timer() {
    let mut h = Harness::new();
    let (_, _, ok) = answered(&mut h, "Session-Expires: 90\r\n");
    assert_eq!(ok.header("Session-Expires"), None, "we would have to send re-INVITEs");
    assert!(byes(&h.run_until(60, 200_000)).is_empty());
}

/// A response to one of our requests, as the peer sends it.
fn response(request: &Message, status: u16, reason: &str, extra: &str) -> String {
    let mut text = format!("SIP/2.0 {status} {reason}\r\n");
    for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
        for value in request.header_values(name) {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    text.push_str(extra);
    text.push_str("Content-Length: 0\r\n\r\n");
    text
}
