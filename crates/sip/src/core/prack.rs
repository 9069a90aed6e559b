//! Reliable provisional responses (RFC 3262) on the INVITEs we answer.
//!
//! We send our 180 reliably only when the INVITE has `Require: 100rel`: with `Supported: 100rel`
//! alone the caller lets us choose, and reliability would only add a PRACK round trip before our
//! 200 (our 180 carries no SDP, so nothing in it needs to arrive for sure). A reliable 180 has
//! `Require: 100rel` and an `RSeq`, is retransmitted from T1 doubling (§3) until a PRACK whose
//! `RAck` names it (answered 200; any other PRACK 481), and after 64*T1 without one the INVITE
//! is rejected with 500 (§3). The 200 to the INVITE waits for that PRACK (§3: a 2xx must not
//! overtake an unacknowledged reliable provisional). An INVITE without an offer that requires
//! 100rel gets no 180 at all: its first reliable provisional would have to carry our offer (§5),
//! which we make in the 200.

use std::time::Instant;

use super::*;

/// A reliable provisional response of a pending INVITE.
#[derive(Debug)]
pub(super) struct Reliable {
    pub(super) key: TxKey,
    pub(super) rseq: u32,
    pub(super) cseq: u32,
    pub(super) call_id: String,
    pub(super) to_tag: String,
    pub(super) transmit: Transmit,
    pub(super) retransmit: Retransmit,
    pub(super) give_up_at: Instant,
    /// The application's 200, held until the PRACK: the dialog it created and the 2xx.
    pub(super) held: Option<(DialogId, Transmit, bool)>,
}

/// Whether the request requires an option tag.
pub(super) fn requires(request: &Message, tag: &str) -> bool {
    request.header_values("Require").flat_map(|v| v.split(',')).any(|t| t.trim().eq_ignore_ascii_case(tag))
}

/// `RAck: rseq cseq method` (RFC 3262 §7.2).
fn parse_rack(value: &str) -> Option<(u32, u32, Method)> {
    let mut parts = value.split_whitespace();
    let rseq = parts.next()?.parse().ok()?;
    let cseq = parts.next()?.parse().ok()?;
    let method = Method::from_token(parts.next()?);
    Some((rseq, cseq, method))
}

impl Core {
    /// Sends 180 Ringing reliably (RFC 3262 §3); `false` when the INVITE does not require it
    /// (the caller then sends a plain 180).
    pub(super) fn ringing_reliably(&mut self, now: Instant, invite: InviteId, key: &TxKey) -> bool {
        let Some((request, origin, to_tag)) = self.proceeding_invite(key) else {
            return false;
        };
        if !requires(&request, "100rel") || self.reliable.contains_key(&invite) {
            return false;
        }
        if request.body.is_empty() {
            // A delayed offer: the first reliable provisional would have to carry our offer
            // (§5), which the call makes only in its 200. No 180 at all then; the 100 Trying
            // already stopped the caller's retransmissions.
            return true;
        }
        // §3: the first RSeq is random, between 1 and 2**31 - 1.
        let rseq = self.rng.random_range(1..=0x7fff_ffff_u32);
        let rseq_text = rseq.to_string();
        let contact = self.contact_header_for(origin.transport, request_is_sips(&request));
        let mut extra: Vec<(&str, &str)> =
            request.header_values("Record-Route").map(|rr| ("Record-Route", rr)).collect();
        extra.push(("Contact", contact.as_str()));
        extra.push(("Require", "100rel"));
        extra.push(("RSeq", rseq_text.as_str()));
        let response = self.build_response(&request, &origin, 180, "Ringing", Some(&to_tag), &extra);
        let Some(reply) = self.reply_transmit(&request, &origin, response, &Method::Invite, 180) else {
            return true;
        };
        self.transmits.push_back(reply.clone());
        if let Some(tx) = self.transactions.get_mut(key).and_then(ServerTransaction::as_invite_mut) {
            tx.provisional(reply.clone());
        }
        let timers = self.config.timers;
        self.reliable.insert(
            invite,
            Reliable {
                key: key.clone(),
                rseq,
                cseq: request.cseq().map(|(n, _)| n).unwrap_or_default(),
                call_id: request.call_id().unwrap_or_default().to_string(),
                to_tag,
                transmit: reply,
                // §3: T1 doubling, no ceiling, over TCP too (the PRACK is end to end).
                retransmit: Retransmit::start(now, timers.t1, None, false),
                give_up_at: now + timers.t1_x64(),
                held: None,
            },
        );
        true
    }

    /// Whether the INVITE's 2xx must wait for a PRACK.
    pub(super) fn awaiting_prack(&self, invite: InviteId) -> bool {
        self.reliable.contains_key(&invite)
    }

    /// Holds the application's 200 until the PRACK.
    pub(super) fn hold_until_prack(
        &mut self,
        invite: InviteId,
        dialog: DialogId,
        reply: Transmit,
        carries_offer: bool,
    ) {
        if let Some(reliable) = self.reliable.get_mut(&invite) {
            reliable.held = Some((dialog, reply, carries_offer));
        }
    }

    /// A PRACK (RFC 3262 §7.2): the one acknowledging our pending reliable 180 gets 200 (and
    /// releases a held 200); any other 481.
    pub(super) fn handle_prack(&mut self, now: Instant, origin: Origin, request: Message, key: TxKey, to_tag: &str) {
        let rack = request.header("RAck").and_then(parse_rack);
        let call_id = request.call_id().unwrap_or_default();
        let found = self.reliable.iter().find_map(|(invite, r)| {
            let matches = r.call_id == call_id
                && r.to_tag == to_tag
                && rack.as_ref().is_some_and(|(rseq, cseq, method)| {
                    *rseq == r.rseq && *cseq == r.cseq && *method == Method::Invite
                });
            matches.then_some(*invite)
        });
        let Some(invite) = found else {
            self.respond(now, key, &origin, &request, 481, None, &[]);
            return;
        };
        self.respond(now, key, &origin, &request, 200, None, &[]);
        let Some(reliable) = self.reliable.remove(&invite) else { return };
        if let Some((dialog_id, reply, carries_offer)) = reliable.held {
            self.release_2xx(now, &reliable.key, dialog_id, reply, reliable.cseq, carries_offer);
        }
    }

    /// Sends a 2xx held for a PRACK and starts its retransmission until the ACK.
    fn release_2xx(
        &mut self,
        now: Instant,
        key: &TxKey,
        dialog_id: DialogId,
        reply: Transmit,
        cseq: u32,
        carries_offer: bool,
    ) {
        self.transmits.push_back(reply.clone());
        let timers = self.config.timers;
        if let Some(tx) = self.transactions.get_mut(key).and_then(ServerTransaction::as_invite_mut) {
            tx.accept(now, reply.clone());
        }
        if let Some(dialog) = self.dialogs.get_mut(&dialog_id) {
            let mut pending = Pending2xx::start(now, cseq, reply, timers, true);
            pending.carries_offer = carries_offer;
            dialog.pending_2xx = Some(pending);
        }
    }

    /// Retransmits unacknowledged reliable provisionals; 64*T1 without a PRACK rejects the
    /// INVITE with 500 (§3), ending the dialog of a held 200.
    pub(super) fn prack_timeouts(&mut self, now: Instant) {
        let mut expired = Vec::new();
        for (invite, reliable) in &mut self.reliable {
            if reliable.give_up_at <= now {
                expired.push(*invite);
            } else if reliable.retransmit.fire(now) {
                self.transmits.push_back(reliable.transmit.clone());
            }
        }
        for invite in expired {
            let Some(reliable) = self.reliable.remove(&invite) else { continue };
            tracing::info!("no PRACK for our reliable 180 within 64*T1; INVITE rejected with 500");
            let Some((request, origin, to_tag)) = self.proceeding_invite(&reliable.key) else { continue };
            let reason = "Server Internal Error (no PRACK)";
            let response = self.build_response(&request, &origin, 500, reason, Some(&to_tag), &[]);
            if let Some(reply) = self.reply_transmit(&request, &origin, response, &Method::Invite, 500) {
                self.transmits.push_back(reply.clone());
                if let Some(tx) = self.transactions.get_mut(&reliable.key).and_then(ServerTransaction::as_invite_mut) {
                    tx.complete(now, reply);
                }
            }
            self.invites.remove(&invite);
            if let Some((dialog, _, _)) = reliable.held {
                self.end_dialog(dialog);
                self.events.push_back(CoreEvent::Dialog { dialog, notice: DialogEvent::AckTimeout });
            }
        }
    }

    /// The earliest reliable-provisional deadline.
    pub(super) fn prack_deadline(&self) -> Option<Instant> {
        self.reliable.values().flat_map(|r| [r.retransmit.deadline(), Some(r.give_up_at)]).flatten().min()
    }

    /// Forgets the reliable provisional of an INVITE that got a final response otherwise.
    pub(super) fn forget_reliable(&mut self, invite: InviteId) {
        self.reliable.remove(&invite);
    }

    /// A CANCEL of an INVITE whose 200 is held for the PRACK (RFC 3262 §3, RFC 3261 §9.2): the
    /// INVITE is still pending for the caller, so it gets 487, the held 200 is never sent, and
    /// the application's dialog ends (`RemoteBye`: the caller left before the call began).
    /// `false` when no 200 is held for it.
    pub(super) fn cancel_held(&mut self, now: Instant, invite: InviteId) -> bool {
        let Some(dialog) = self.reliable.get(&invite).and_then(|r| r.held.as_ref()).map(|(dialog, _, _)| *dialog)
        else {
            return false;
        };
        let Some(reliable) = self.reliable.remove(&invite) else { return false };
        if let Some((request, origin, to_tag)) = self.proceeding_invite(&reliable.key) {
            let response = self.build_response(&request, &origin, 487, "Request Terminated", Some(&to_tag), &[]);
            if let Some(reply) = self.reply_transmit(&request, &origin, response, &Method::Invite, 487) {
                self.transmits.push_back(reply.clone());
                if let Some(tx) = self.transactions.get_mut(&reliable.key).and_then(ServerTransaction::as_invite_mut) {
                    tx.complete(now, reply);
                }
            }
        }
        self.end_dialog(dialog);
        self.events.push_back(CoreEvent::Dialog { dialog, notice: DialogEvent::RemoteBye });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rack_is_read() {
        assert_eq!(parse_rack("776656 1 INVITE"), Some((776_656, 1, Method::Invite)));
        assert_eq!(parse_rack(" 5  2 INVITE "), Some((5, 2, Method::Invite)));
        assert_eq!(parse_rack("x 1 INVITE"), None);
        assert_eq!(parse_rack("5 1"), None);
    }
}
