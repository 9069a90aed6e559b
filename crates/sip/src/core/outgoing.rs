//! Calls we place: the transaction user above our INVITE client transactions (RFC 3261
//! §13.2), with the CANCEL of §9.1 and the digest retry of §22.2.
//!
//! One [`OutgoingState`] per call, from [`Core::place_call`] until its final outcome is
//! reported and its last INVITE transaction has ended (Timer B, D or M). Steps are reported as
//! [`CoreEvent::Outgoing`].
//!
//! - 1xx: reported (except 100); with a To tag it opens an early dialog in the RFC's sense,
//!   which we keep no state for (no PRACK, no UPDATE, no requests inside an early dialog).
//! - 2xx: the dialog (role UAC) is created from it (§12.1.2) and ACKed from the dialog
//!   (§13.2.2.4); retransmissions of that 2xx get the same ACK again. A 2xx after we gave
//!   up (it crossed our CANCEL) or from a second fork is ACKed and then BYEd.
//! - 3xx-6xx: the transaction ACKs it; 401/407 are answered once with credentials (again only
//!   when the new challenge says `stale=true`), everything else is a typed [`CallFailure`].
//! - Ring timeout: CANCEL once a 1xx has arrived; before that the CANCEL is held back (§9.1)
//!   until a 1xx arrives or Timer B ends the INVITE. 64*T1 after our CANCEL without a final
//!   response the INVITE is considered cancelled (§9.1).

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use rand::Rng;

use super::*;
use crate::digest::Challenge;

/// Calls being placed at once (from `place_call` until their last INVITE transaction ends).
pub const MAX_OUTGOING_CALLS: usize = 10_000;

/// What the core keeps about a call we placed.
#[derive(Debug)]
pub(super) struct OutgoingState {
    call: OutgoingCall,
    call_id: String,
    from_tag: String,
    /// Our From header (with tag), the dialog's local party.
    from_header: String,
    cseq: u32,
    /// Branch of the INVITE transaction in charge (a new one after a digest challenge).
    branch: String,
    /// `(header, value)` of the credentials in the current INVITE, repeated in the ACK for its
    /// 2xx (§22.1: the ACK carries the INVITE's credentials).
    authorization: Option<(&'static str, String)>,
    /// A challenge has been answered (each call answers one, RFC 3261 §22.2).
    auth_answered: bool,
    phase: CallPhase,
}

/// Where a call we placed stands, as its transaction user sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallPhase {
    /// Our INVITE is out; the ring timeout runs.
    Inviting { ring_deadline: Instant },
    /// We cancel: the CANCEL is held back until a 1xx (`deadline` `None`), or sent and the
    /// INVITE given until `deadline` (64*T1, §9.1) to end.
    Cancelling { reason: CancelReason, deadline: Option<Instant> },
    /// The final outcome was reported (answered or failed); later 2xx are ACKed and BYEd.
    Finished,
}

impl OutgoingState {
    /// The next ring or CANCEL deadline.
    pub(super) fn deadline(&self) -> Option<Instant> {
        match self.phase {
            CallPhase::Inviting { ring_deadline } => Some(ring_deadline),
            CallPhase::Cancelling { deadline, .. } => deadline,
            CallPhase::Finished => None,
        }
    }

    fn is_finished(&self) -> bool {
        self.phase == CallPhase::Finished
    }

    /// Why we cancel, if we do.
    fn cancel_reason(&self) -> Option<CancelReason> {
        match self.phase {
            CallPhase::Cancelling { reason, .. } => Some(reason),
            CallPhase::Inviting { .. } | CallPhase::Finished => None,
        }
    }

    /// The outcome of a call we cancelled.
    fn cancelled_outcome(reason: CancelReason) -> CallFailure {
        match reason {
            CancelReason::RingTimeout => CallFailure::NoAnswer,
            CancelReason::Caller => CallFailure::Cancelled,
        }
    }
}

/// Escapes a display name for a quoted-string (RFC 3261 §25.1).
fn quoted(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The typed outcome of a final non-2xx (other than a challenge we answer).
fn classify(code: u16, reason: &str, cancel: Option<CancelReason>) -> CallFailure {
    match (code, cancel) {
        (486 | 600, _) => CallFailure::Busy { status: code },
        // We cancelled: its 487, or a challenge we chose not to answer.
        (401 | 407 | 487, Some(reason)) => OutgoingState::cancelled_outcome(reason),
        (401 | 407, None) => CallFailure::AuthFailed { status: code },
        (408, _) => CallFailure::Unreachable { reason: format!("{code} {reason}") },
        _ => CallFailure::Rejected { status: code, reason: reason.to_string() },
    }
}

fn is_sip_uri(uri: &str) -> bool {
    SipUri::parse(uri).is_some_and(|u| u.scheme.eq_ignore_ascii_case("sip") || u.scheme.eq_ignore_ascii_case("sips"))
}

impl Core {
    /// Places a call (§13.2.1): builds our INVITE (Via with a `z9hG4bK` branch and `rport`,
    /// Max-Forwards 70, From with a new tag, a new Call-ID, CSeq, Contact with our address and
    /// transport, Allow, Supported, the SDP offer), sends it and starts its INVITE client
    /// transaction. `Err` says which field is unusable.
    pub fn place_call(&mut self, now: Instant, call: OutgoingCall) -> Result<PlacedCall, String> {
        if !is_sip_uri(&call.request_uri) {
            return Err(format!("request URI {:?} is not a sip: URI", call.request_uri));
        }
        if !is_sip_uri(&call.to) && !call.to.to_ascii_lowercase().starts_with("tel:") {
            return Err(format!("To URI {:?} is not a sip: or tel: URI", call.to));
        }
        if !is_sip_uri(&call.from_uri) {
            return Err(format!("From URI {:?} is not a sip: URI", call.from_uri));
        }
        if self.contact_for(call.transport).is_none() {
            return Err(format!("no {} address of ours for Via and Contact", call.transport.as_upper()));
        }
        // The table is bounded: the application limits concurrent calls (trunk
        // max_concurrent); this is the backstop that refuses rather than grows.
        if self.outgoing.len() >= MAX_OUTGOING_CALLS {
            return Err(format!("{MAX_OUTGOING_CALLS} calls already being placed"));
        }
        let id = OutgoingId(self.fresh_id());
        let call_id = format!("{}{}", self.random_token(), self.random_token());
        let from_tag = self.random_token();
        let from_header = match &call.from_display {
            Some(display) => format!("{} <{}>;tag={from_tag}", quoted(display), call.from_uri),
            None => format!("<{}>;tag={from_tag}", call.from_uri),
        };
        // §8.1.1.5: below 2**31, and low enough that in-dialog requests never reach it.
        let cseq = self.rng.random_range(1..=0x3fff_ffff_u32);
        let ring_deadline = now + call.ring_timeout;
        self.outgoing.insert(
            id,
            OutgoingState {
                call,
                call_id: call_id.clone(),
                from_tag,
                from_header,
                cseq,
                branch: String::new(),
                authorization: None,
                auth_answered: false,
                phase: CallPhase::Inviting { ring_deadline },
            },
        );
        self.send_invite(now, id);
        Ok(PlacedCall { id, call_id })
    }

    /// Sends the INVITE of a call (again, after a challenge: with credentials, a new CSeq and
    /// a new branch) and starts its transaction.
    fn send_invite(&mut self, now: Instant, id: OutgoingId) {
        let branch = format!("z9hG4bK{}", self.random_token());
        let Some(state) = self.outgoing.get(&id) else {
            return;
        };
        let transport = state.call.transport;
        let mut invite = Message::request(Method::Invite, state.call.request_uri.clone());
        invite.push_header("Via", self.via_value(transport, &branch));
        invite.push_header("Max-Forwards", "70");
        invite.push_header("From", state.from_header.clone());
        invite.push_header("To", format!("<{}>", state.call.to));
        invite.push_header("Call-ID", state.call_id.clone());
        invite.push_header("CSeq", format!("{} INVITE", state.cseq));
        invite.push_header("Contact", self.contact_header_for(transport, is_sips(&state.call.request_uri)));
        invite.push_header("Allow", ALLOW);
        // We support no extension (no 100rel, no timer): an empty Supported says so (§20.37).
        invite.push_header("Supported", "");
        invite.push_header("User-Agent", self.config.user_agent.clone());
        if let Some((name, value)) = &state.authorization {
            invite.push_header(name, value.clone());
        }
        for (name, value) in &state.call.extra_headers {
            invite.push_header(name, value.clone());
        }
        invite.push_header("Content-Type", "application/sdp");
        invite.body = state.call.sdp_offer.clone().into_bytes();
        let transmit =
            Transmit { transport, destination: state.call.destination, connection: None, payload: invite.to_bytes() };
        metrics::counter!(crate::endpoint::metric_names::SIP_REQUESTS_SENT_TOTAL, "method" => "INVITE").increment(1);
        self.transmits.push_back(transmit.clone());
        let transaction = ClientInvite::start(now, invite, transmit, self.config.timers);
        self.client_invites.insert(branch.clone(), (id, transaction));
        if let Some(state) = self.outgoing.get_mut(&id) {
            state.branch = branch;
        }
    }

    /// Cancels a call we placed (§9.1): CANCEL at once if the INVITE has had a provisional
    /// response, else as soon as it gets one. No-op once the call has its final outcome.
    pub fn cancel_call(&mut self, now: Instant, id: OutgoingId, reason: CancelReason) {
        let Some(state) = self.outgoing.get_mut(&id) else {
            return;
        };
        if !matches!(state.phase, CallPhase::Inviting { .. }) {
            return;
        }
        state.phase = CallPhase::Cancelling { reason, deadline: None };
        let answered_once = self.client_invites.get(&state.branch).is_some_and(|(_, tx)| tx.has_response());
        if answered_once {
            self.send_cancel(now, id);
        }
    }

    fn send_cancel(&mut self, now: Instant, id: OutgoingId) {
        let Some(state) = self.outgoing.get_mut(&id) else {
            return;
        };
        let CallPhase::Cancelling { reason, deadline: None } = state.phase else {
            return;
        };
        let Some((_, invite)) = self.client_invites.get(&state.branch) else {
            return;
        };
        state.phase = CallPhase::Cancelling { reason, deadline: Some(now + self.config.timers.t1_x64()) };
        let cancel = invite.build_cancel();
        let transmit = Transmit { payload: cancel.to_bytes(), ..invite.transmit().clone() };
        let key = ClientKey { branch: state.branch.clone(), method: Method::Cancel };
        self.start_request(now, key, RequestOwner::Cancel(id), transmit);
    }

    /// Reports the final failure of a call (once).
    fn finish_outgoing(&mut self, id: OutgoingId, failure: CallFailure) {
        let Some(state) = self.outgoing.get_mut(&id) else {
            return;
        };
        if state.is_finished() {
            return;
        }
        state.phase = CallPhase::Finished;
        self.events.push_back(CoreEvent::Outgoing { call: id, progress: OutgoingProgress::Failed(failure) });
    }

    /// Drops the state of a finished call once none of its INVITE transactions is left.
    pub(super) fn forget_outgoing_if_done(&mut self, id: OutgoingId) {
        let finished = self.outgoing.get(&id).is_some_and(OutgoingState::is_finished);
        if finished && !self.client_invites.values().any(|(call, _)| *call == id) {
            self.outgoing.remove(&id);
        }
    }

    pub(super) fn outgoing_provisional(
        &mut self,
        now: Instant,
        id: OutgoingId,
        branch: &str,
        response: &Message,
        code: u16,
    ) {
        let Some(state) = self.outgoing.get(&id) else {
            return;
        };
        if state.branch != branch || state.is_finished() {
            return;
        }
        let cancel_held = matches!(state.phase, CallPhase::Cancelling { deadline: None, .. });
        if code > 100 {
            let reason = response.reason_phrase().to_owned();
            self.events.push_back(CoreEvent::Outgoing {
                call: id,
                progress: OutgoingProgress::Provisional { status: code, reason },
            });
        }
        if cancel_held {
            self.send_cancel(now, id);
        }
    }

    pub(super) fn outgoing_failure(
        &mut self,
        now: Instant,
        id: OutgoingId,
        branch: &str,
        response: &Message,
        code: u16,
    ) {
        let Some(state) = self.outgoing.get(&id) else {
            return;
        };
        if state.branch != branch || state.is_finished() {
            return;
        }
        let reason = response.reason_phrase().to_owned();
        if matches!(code, 401 | 407) && matches!(state.phase, CallPhase::Inviting { .. }) {
            let (challenge_header, answer_header) = if code == 401 {
                ("WWW-Authenticate", "Authorization")
            } else {
                ("Proxy-Authenticate", "Proxy-Authorization")
            };
            let challenge = Challenge::choose(response.header_values(challenge_header));
            let retry = match (&state.call.credentials, &challenge) {
                (Some(credentials), Ok(challenge)) if !state.auth_answered || challenge.stale => {
                    Some((credentials.clone(), challenge.clone()))
                }
                _ => None,
            };
            if let Err(error) = &challenge {
                tracing::debug!(%error, code, "cannot answer the authentication challenge");
            }
            let uri = state.call.request_uri.clone();
            if let Some((credentials, challenge)) = retry {
                let cnonce = self.random_token();
                let value = challenge.answer(&credentials, "INVITE", &uri, &cnonce);
                if let Some(state) = self.outgoing.get_mut(&id) {
                    state.auth_answered = true;
                    state.cseq = state.cseq.wrapping_add(1);
                    state.authorization = Some((answer_header, value));
                }
                self.send_invite(now, id);
                return;
            }
        }
        let cancel = self.outgoing.get(&id).and_then(OutgoingState::cancel_reason);
        let failure = classify(code, &reason, cancel);
        self.finish_outgoing(id, failure);
    }

    /// Timer B of an INVITE: nothing came back.
    pub(super) fn invite_timed_out(&mut self, _now: Instant, id: OutgoingId, branch: &str) {
        let current = self.outgoing.get(&id).is_some_and(|s| s.branch == branch);
        if current {
            let reason = "no response to INVITE (Timer B)".to_string();
            self.finish_outgoing(id, CallFailure::Unreachable { reason });
        }
    }

    /// A TCP or TLS connection to `destination` could not be opened (or its TLS handshake
    /// failed): every client transaction of
    /// ours still waiting on it ends as a transport error would end it (§17.1.1.2, §17.1.2.2):
    /// calls fail as unreachable, BYEs and other requests as timed out.
    pub fn transport_failed(&mut self, destination: SocketAddr) {
        let waiting_on = |t: &Transmit| t.transport.is_reliable() && t.destination == destination;
        let invites: Vec<(String, OutgoingId, Transport)> = self
            .client_invites
            .iter()
            .filter(|(_, (_, tx))| !tx.has_response() && waiting_on(tx.transmit()))
            .map(|(branch, (call, tx))| (branch.clone(), *call, tx.transmit().transport))
            .collect();
        for (branch, call, transport) in invites {
            self.client_invites.remove(&branch);
            let current = self.outgoing.get(&call).is_some_and(|s| s.branch == branch);
            if current {
                let reason = format!("cannot connect to {destination} over {}", transport.as_upper());
                self.finish_outgoing(call, CallFailure::Unreachable { reason });
            }
            self.forget_outgoing_if_done(call);
        }
        let requests: Vec<ClientKey> = self
            .client_transactions
            .iter()
            .filter(|(_, entry)| entry.transaction.is_waiting() && waiting_on(entry.transaction.transmit()))
            .map(|(key, _)| key.clone())
            .collect();
        for key in requests {
            if let Some(entry) = self.client_transactions.remove(&key) {
                self.request_timed_out(entry.owner);
            }
        }
    }

    /// Ring timeouts (CANCEL) and CANCELs left without a final response for 64*T1.
    pub(super) fn outgoing_timeouts(&mut self, now: Instant) {
        let ringing_out: Vec<OutgoingId> = self
            .outgoing
            .iter()
            .filter(|(_, s)| matches!(s.phase, CallPhase::Inviting { ring_deadline } if ring_deadline <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in ringing_out {
            self.cancel_call(now, id, CancelReason::RingTimeout);
        }
        let given_up: Vec<(OutgoingId, String, CancelReason)> = self
            .outgoing
            .iter()
            .filter_map(|(id, s)| match s.phase {
                CallPhase::Cancelling { reason, deadline: Some(at) } if at <= now => {
                    Some((*id, s.branch.clone(), reason))
                }
                _ => None,
            })
            .collect();
        for (id, branch, reason) in given_up {
            // §9.1: consider the INVITE transaction cancelled and destroy it.
            self.client_invites.remove(&branch);
            self.finish_outgoing(id, OutgoingState::cancelled_outcome(reason));
            self.forget_outgoing_if_done(id);
        }
    }

    /// A 2xx to our INVITE (first, retransmitted, or from another fork).
    pub(super) fn outgoing_success(&mut self, now: Instant, origin: Origin, id: OutgoingId, response: &Message) {
        let Some(to_tag) = response.to_tag() else {
            tracing::debug!("2xx to our INVITE without a To tag; dropped");
            return;
        };
        let Some(state) = self.outgoing.get(&id) else {
            return;
        };
        let index = (state.call_id.clone(), state.from_tag.clone(), to_tag.clone());
        if let Some(dialog) = self.dialog_index.get(&index).and_then(|d| self.dialogs.get(d)) {
            // §13.2.2.4: a retransmitted 2xx (same dialog, same CSeq) gets the same ACK again.
            let cseq = response.cseq().map(|(n, _)| n);
            if let Some((acked, ack)) = &dialog.ack_for_2xx
                && Some(*acked) == cseq
            {
                self.transmits.push_back(ack.clone());
            }
            return;
        }
        let unwanted = !matches!(state.phase, CallPhase::Inviting { .. });
        let cancel = state.cancel_reason();
        let Some(dialog) = self.create_uac_dialog(id, origin, response, to_tag) else {
            return;
        };
        if unwanted {
            // A 2xx that crossed our CANCEL, or a second fork's (§13.2.2.4): ACKed, then BYEd.
            tracing::debug!("unwanted 2xx to our INVITE: ACK and BYE");
            self.hangup(now, dialog);
            if let Some(reason) = cancel {
                self.finish_outgoing(id, OutgoingState::cancelled_outcome(reason));
            }
            return;
        }
        if let Some(state) = self.outgoing.get_mut(&id) {
            state.phase = CallPhase::Finished;
        }
        let sdp_answer = String::from_utf8_lossy(&response.body).into_owned();
        self.events
            .push_back(CoreEvent::Outgoing { call: id, progress: OutgoingProgress::Answered { dialog, sdp_answer } });
        // §12.1.2: the 2xx confirms a UAC's dialog (our ACK is sent). Reported like the UAS's
        // ACK, so that whoever waits for a confirmed dialog before sending media need not
        // know the role.
        self.events.push_back(CoreEvent::Dialog { dialog, notice: DialogEvent::Confirmed });
    }

    /// §12.1.2: the UAC's dialog from a 2xx, and the ACK for it (§13.2.2.4: a new request with
    /// the INVITE's CSeq number, sent by the dialog, not the transaction).
    fn create_uac_dialog(
        &mut self,
        id: OutgoingId,
        origin: Origin,
        response: &Message,
        to_tag: String,
    ) -> Option<DialogId> {
        let dialog_id = DialogId(self.fresh_id());
        let state = self.outgoing.get(&id)?;
        // A Contact we cannot route to (missing, or not a SIP URI) leaves the Request-URI as the
        // remote target: the dialog must stay usable for the ACK and the BYE.
        let remote_target = response
            .header("Contact")
            .and_then(NameAddr::parse)
            .map(|c| without_uri_headers(&c.uri).to_owned())
            .filter(|uri| SipUri::parse(uri).is_some())
            .unwrap_or_else(|| state.call.request_uri.clone());
        // §12.1.2: the route set is the Record-Route list in reverse order (entries that are not
        // SIP URIs cannot be routed through and are left out).
        let mut route_set: Vec<String> = response
            .header_values("Record-Route")
            .flat_map(crate::message::split_top_level_commas)
            .map(|r| r.trim().to_string())
            .filter(|r| NameAddr::parse(r).and_then(|r| SipUri::parse(&r.uri)).is_some())
            .collect();
        route_set.reverse();
        let call_id = state.call_id.clone();
        let local_tag = state.from_tag.clone();
        let cseq = state.cseq;
        let fallback = state.call.destination;
        let authorization = state.authorization.clone();
        let transport = state.call.transport;
        let connection = if origin.transport == transport { origin.connection } else { None };
        self.dialogs.insert(
            dialog_id,
            DialogState {
                call_id: call_id.clone(),
                local_tag: local_tag.clone(),
                remote_tag: to_tag.clone(),
                local_party: state.from_header.clone(),
                remote_party: response.header("To").unwrap_or_default().to_string(),
                remote_target,
                route_set,
                local_cseq: cseq,
                remote_cseq: None,
                origin: Origin { transport, source: fallback, connection },
                phase: DialogPhase::Confirmed,
                pending_2xx: None,
                // Answered to a session-refresh re-INVITE: our offer, unchanged.
                last_answer: state.call.sdp_offer.clone(),
                bye_branch: None,
                role: Role::Uac,
                ack_for_2xx: None,
            },
        );
        self.dialog_index.insert((call_id, local_tag, to_tag), dialog_id);
        // The next hop of the dialog when it is an address, else where the INVITE went.
        let destination = self
            .dialog_next_hop(dialog_id)
            .and_then(|hop| hop.host.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, hop.port)))
            .unwrap_or(fallback);
        let Some((mut ack, mut transmit, _)) = self.build_in_dialog(dialog_id, Method::Ack, cseq, destination) else {
            // Not reachable with the checks above; never keep a dialog we cannot ACK.
            self.end_dialog(dialog_id);
            return None;
        };
        if let Some((name, value)) = authorization {
            ack.push_header(name, value);
        }
        transmit.payload = ack.to_bytes();
        self.transmits.push_back(transmit.clone());
        if let Some(dialog) = self.dialogs.get_mut(&dialog_id) {
            dialog.ack_for_2xx = Some((cseq, transmit));
        }
        Some(dialog_id)
    }
}
