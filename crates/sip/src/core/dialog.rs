//! Dialogs (RFC 3261 §12) with a role: UAS (we answered the INVITE: 2xx retransmission until
//! the ACK, §13.3.1.4) or UAC (we placed it: the ACK for the 2xx is ours, §13.2.2.4). Inside a
//! dialog: requests we receive (BYE, re-INVITE, OPTIONS), and requests we send through
//! [`Core::send_request`] (REFER, INFO, NOTIFY, re-INVITE, UPDATE next) and [`Core::hangup`]
//! (BYE), with CSeq, route set and remote target kept here.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DialogPhase {
    /// 2xx sent, waiting for ACK.
    WaitingAck,
    Confirmed,
    /// Our BYE is in flight.
    Terminating,
}

/// 2xx retransmission state (§13.3.1.4).
#[derive(Debug)]
pub(super) struct Pending2xx {
    pub(super) cseq: u32,
    pub(super) transmit: Transmit,
    /// T1 doubling up to T2, UDP only (§13.3.1.4).
    pub(super) retransmit: Retransmit,
    pub(super) give_up_at: Instant,
    pub(super) initial: bool,
    /// The 2xx carries our offer (the request had none): its ACK carries the answer.
    pub(super) carries_offer: bool,
}

impl Pending2xx {
    pub(super) fn start(now: Instant, cseq: u32, transmit: Transmit, timers: Timers, initial: bool) -> Pending2xx {
        let reliable = transmit.transport.is_reliable();
        Pending2xx {
            cseq,
            transmit,
            retransmit: Retransmit::start(now, timers.t1, Some(timers.t2), reliable),
            give_up_at: now + timers.t1_x64(),
            initial,
            carries_offer: false,
        }
    }
}

#[derive(Debug)]
pub(super) struct DialogState {
    pub(super) call_id: String,
    pub(super) local_tag: String,
    pub(super) remote_tag: String,
    /// Our party, the From of our requests: UAS, the INVITE's To with our tag; UAC, our
    /// INVITE's From.
    pub(super) local_party: String,
    /// Their party, the To of our requests: UAS, the INVITE's From; UAC, the 2xx's To.
    pub(super) remote_party: String,
    pub(super) remote_target: String,
    pub(super) route_set: Vec<String>,
    pub(super) local_cseq: u32,
    /// The peer's last CSeq; `None` on a UAC dialog before the peer's first request.
    pub(super) remote_cseq: Option<u32>,
    pub(super) origin: Origin,
    pub(super) phase: DialogPhase,
    /// UAS: our 2xx until its ACK.
    pub(super) pending_2xx: Option<Pending2xx>,
    /// The SDP we answer a session-refresh re-INVITE with.
    pub(super) last_answer: String,
    pub(super) bye_branch: Option<String>,
    pub(super) role: Role,
    /// UAC: the ACK for the INVITE's 2xx (CSeq number, bytes), sent again for each
    /// retransmission of that 2xx (§13.2.2.4).
    pub(super) ack_for_2xx: Option<(u32, Transmit)>,
    /// The `o=` line of the peer's last SDP: a re-offer with the same one is a refresh.
    pub(super) remote_sdp_origin: Option<String>,
    /// A re-offer waiting for the application ([`super::reoffer`]).
    pub(super) reoffer: Option<super::reoffer::PendingReoffer>,
    /// The session timer (RFC 4028), if the dialog has one ([`super::session_timer`]).
    pub(super) session_timer: Option<super::session_timer::SessionTimer>,
    /// The peer listed UPDATE in its Allow (our refreshes can be UPDATEs).
    pub(super) peer_allows_update: bool,
}

/// Which side of the INVITE we were (RFC 3261 §12.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We sent the INVITE.
    Uac,
    /// We received it.
    Uas,
}

impl Core {
    pub(super) fn handle_in_dialog(
        &mut self,
        now: Instant,
        origin: Origin,
        request: Message,
        method: Method,
        key: TxKey,
        to_tag: String,
    ) {
        if method == Method::Prack {
            // The early dialog of a reliable 180 (RFC 3262), or a PRACK for nothing: 481.
            self.handle_prack(now, origin, request, key, &to_tag);
            return;
        }
        let index = (request.call_id().unwrap_or_default().to_string(), to_tag, request.from_tag().unwrap_or_default());
        let Some(&dialog_id) = self.dialog_index.get(&index) else {
            // §12.2.2: no matching dialog.
            self.respond(now, key, &origin, &request, 481, None, &[]);
            return;
        };
        let cseq = request.cseq().map(|(n, _)| n).unwrap_or_default();
        let Some(dialog) = self.dialogs.get_mut(&dialog_id) else {
            self.respond(now, key, &origin, &request, 481, None, &[]);
            return;
        };
        // §12.2.2: CSeq must increase within the dialog.
        if dialog.remote_cseq.is_some_and(|last| cseq <= last) {
            self.respond(now, key, &origin, &request, 500, Some("Server Internal Error (CSeq out of order)"), &[]);
            return;
        }
        dialog.remote_cseq = Some(cseq);
        match method {
            // §15.1.2: answer 200 and end the dialog.
            Method::Bye => {
                self.respond(now, key, &origin, &request, 200, None, &[]);
                self.end_dialog(dialog_id);
                self.events.push_back(CoreEvent::Dialog { dialog: dialog_id, notice: DialogEvent::RemoteBye });
            }
            Method::Options => {
                let status = self.options_status;
                self.respond(
                    now,
                    key,
                    &origin,
                    &request,
                    status,
                    None,
                    &[("Allow", ALLOW), ("Accept", "application/sdp")],
                );
            }
            Method::Invite => self.handle_reinvite(now, origin, request, key, dialog_id),
            Method::Update => self.handle_update(now, origin, request, key, dialog_id),
            Method::Info => self.handle_info(now, origin, request, key, dialog_id),
            Method::Notify => self.handle_notify(now, origin, request, key, dialog_id),
            Method::Refer => self.handle_refer(now, origin, request, key, dialog_id),
            _ => self.respond(now, key, &origin, &request, 501, None, &[]),
        }
    }

    /// INFO (RFC 6086): a DTMF body ([`INFO_CONTENT_TYPES`]) is answered 200 and handed to the
    /// application; an empty INFO is answered 200 (§4.2.1: no body is legal); any other body
    /// 415 with the types we take in Accept (§4.2.2).
    pub(super) fn handle_info(
        &mut self,
        now: Instant,
        origin: Origin,
        request: Message,
        key: TxKey,
        dialog_id: DialogId,
    ) {
        if request.body.is_empty() {
            self.respond(now, key, &origin, &request, 200, None, &[]);
            return;
        }
        let content_type = request.header("Content-Type").unwrap_or_default().to_owned();
        let media = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        if !INFO_CONTENT_TYPES.contains(&media.as_str()) {
            let accept = INFO_CONTENT_TYPES.join(", ");
            self.respond(now, key, &origin, &request, 415, None, &[("Accept", accept.as_str())]);
            return;
        }
        let body = String::from_utf8_lossy(&request.body).into_owned();
        self.respond(now, key, &origin, &request, 200, None, &[]);
        self.events
            .push_back(CoreEvent::Dialog { dialog: dialog_id, notice: DialogEvent::Info { content_type, body } });
    }

    /// NOTIFY of the implicit subscription a REFER we sent created (RFC 3515 §2.4.4): answered
    /// 200 and handed to the application with its `Event`, `Subscription-State`, content type
    /// and body (a `message/sipfrag`, parsed by [`crate::sipfrag`]). We subscribe to nothing
    /// else: another event package is answered 489 Bad Event (RFC 6665 §8.3.2), a NOTIFY
    /// without Event 400 (RFC 6665 §8.2.1: Event is mandatory).
    pub(super) fn handle_notify(
        &mut self,
        now: Instant,
        origin: Origin,
        request: Message,
        key: TxKey,
        dialog_id: DialogId,
    ) {
        let Some(event) = request.header("Event").map(str::to_owned) else {
            self.respond(now, key, &origin, &request, 400, Some("Bad Request (no Event)"), &[]);
            return;
        };
        let package = event.split(';').next().unwrap_or_default().trim();
        if !package.eq_ignore_ascii_case("refer") {
            self.respond(now, key, &origin, &request, 489, None, &[("Allow-Events", "refer")]);
            return;
        }
        let subscription_state = request.header("Subscription-State").unwrap_or_default().to_owned();
        let content_type = request.header("Content-Type").unwrap_or_default().to_owned();
        let body = String::from_utf8_lossy(&request.body).into_owned();
        self.respond(now, key, &origin, &request, 200, None, &[]);
        self.events.push_back(CoreEvent::Dialog {
            dialog: dialog_id,
            notice: DialogEvent::Notify { event, subscription_state, content_type, body },
        });
    }

    /// §13.3.1.4: the ACK for a 2xx is matched by dialog and CSeq, not by transaction.
    pub(super) fn handle_ack_for_2xx(&mut self, _now: Instant, request: &Message) {
        let (Some(to_tag), Some(call_id)) = (request.to_tag(), request.call_id()) else {
            return;
        };
        let index = (call_id.to_string(), to_tag, request.from_tag().unwrap_or_default());
        let Some(&dialog_id) = self.dialog_index.get(&index) else {
            return; // stray ACK: never answered
        };
        let Some(dialog) = self.dialogs.get_mut(&dialog_id) else {
            return;
        };
        let cseq = request.cseq().map(|(n, _)| n);
        let Some(pending) = &dialog.pending_2xx else {
            return; // retransmitted ACK
        };
        if Some(pending.cseq) != cseq {
            return;
        }
        let initial = pending.initial;
        let carries_offer = pending.carries_offer;
        dialog.pending_2xx = None;
        if dialog.phase == DialogPhase::WaitingAck {
            dialog.phase = DialogPhase::Confirmed;
        }
        if carries_offer {
            // Our 2xx carried the offer: the ACK carries the answer (§13.2.1, §14.2).
            let sdp = super::reoffer::sdp_body(request);
            if let Some(line) = sdp.as_deref().and_then(super::reoffer::sdp_origin_line) {
                dialog.remote_sdp_origin = Some(line);
            }
            self.events.push_back(CoreEvent::Dialog { dialog: dialog_id, notice: DialogEvent::Answer { sdp } });
        }
        if initial {
            self.events.push_back(CoreEvent::Dialog { dialog: dialog_id, notice: DialogEvent::Confirmed });
        }
    }

    /// Which side of the INVITE we were in this dialog.
    pub fn dialog_role(&self, dialog: DialogId) -> Option<Role> {
        self.dialogs.get(&dialog).map(|d| d.role)
    }

    /// Our URI in the dialog (the From of our requests, without its tag): what a REFER's
    /// `Referred-By` names (RFC 3892 §3).
    pub fn dialog_local_uri(&self, dialog: DialogId) -> Option<String> {
        let dialog = self.dialogs.get(&dialog)?;
        NameAddr::parse(&dialog.local_party).map(|party| without_uri_headers(&party.uri).to_owned())
    }

    /// The dialog's Call-ID.
    pub fn dialog_call_id(&self, dialog: DialogId) -> Option<&str> {
        self.dialogs.get(&dialog).map(|d| d.call_id.as_str())
    }

    /// §12.2.1.1 / §8.1.2: the next hop of an in-dialog request is the first route (loose or
    /// strict) or, without a route set, the remote target.
    pub(super) fn next_hop(&self, dialog: &DialogState) -> Option<NextHop> {
        let target = match dialog.route_set.first() {
            Some(route) => NameAddr::parse(route)?.uri,
            None => dialog.remote_target.clone(),
        };
        let uri = SipUri::parse(&target)?;
        let transport = match uri.param("transport") {
            // RFC 5630 §3.2: a sips URI is reached over TLS whatever its transport parameter.
            _ if uri.scheme.eq_ignore_ascii_case("sips") => Transport::Tls,
            Some(t) if t.eq_ignore_ascii_case("tls") => Transport::Tls,
            Some(t) if t.eq_ignore_ascii_case("tcp") => Transport::Tcp,
            Some(t) if t.eq_ignore_ascii_case("udp") => Transport::Udp,
            _ => dialog.origin.transport,
        };
        let port = uri.port.unwrap_or(transport.default_port());
        Some(NextHop { transport, host: uri.host_unbracketed().to_string(), port })
    }

    /// Starts our BYE (idempotent). IP-literal next hops are sent at once; for a host name the
    /// core emits [`CoreEvent::ByeNeedsResolution`] (the one signal for it) and waits for
    /// [`Core::send_bye`] or [`Core::bye_unresolvable`].
    pub fn hangup(&mut self, now: Instant, dialog_id: DialogId) -> HangupStart {
        let Some(dialog) = self.dialogs.get_mut(&dialog_id) else {
            return HangupStart::AlreadyEnded;
        };
        if dialog.phase == DialogPhase::Terminating {
            return HangupStart::InProgress;
        }
        dialog.phase = DialogPhase::Terminating;
        // Stop retransmitting a 2xx we no longer stand behind.
        dialog.pending_2xx = None;
        let Some(dialog) = self.dialogs.get(&dialog_id) else {
            return HangupStart::AlreadyEnded;
        };
        let Some(hop) = self.next_hop(dialog) else {
            tracing::warn!("dialog has no usable remote target; ending without BYE");
            self.end_dialog(dialog_id);
            self.events
                .push_back(CoreEvent::ByeFinished { dialog: dialog_id, outcome: Err(HangupError::NoRemoteTarget) });
            return HangupStart::InProgress;
        };
        match hop.host.parse::<IpAddr>() {
            Ok(ip) => self.send_bye(now, dialog_id, SocketAddr::new(ip, hop.port)),
            Err(_) => self.events.push_back(CoreEvent::ByeNeedsResolution { dialog: dialog_id, next_hop: hop }),
        }
        HangupStart::InProgress
    }

    /// Sends our BYE to a resolved next hop (§15.1.1) through a non-INVITE client transaction.
    pub fn send_bye(&mut self, now: Instant, dialog_id: DialogId, destination: SocketAddr) {
        let Some(dialog) = self.dialogs.get(&dialog_id) else {
            return;
        };
        if dialog.bye_branch.is_some() {
            return;
        }
        let cseq = dialog.local_cseq.wrapping_add(1);
        let Some((bye, mut transmit, branch)) = self.build_in_dialog(dialog_id, Method::Bye, cseq, destination) else {
            return;
        };
        let Some(dialog) = self.dialogs.get_mut(&dialog_id) else {
            return;
        };
        dialog.local_cseq = cseq;
        dialog.phase = DialogPhase::Terminating;
        dialog.pending_2xx = None;
        dialog.bye_branch = Some(branch.clone());
        transmit.payload = bye.to_bytes();
        self.start_request(now, ClientKey { branch, method: Method::Bye }, RequestOwner::Bye(dialog_id), transmit);
    }

    /// Sends a request inside a dialog (§12.2.1.1) to a resolved next hop: REFER, INFO,
    /// NOTIFY, OPTIONS, UPDATE, a re-INVITE... with the caller's extra headers and body
    /// (`Content-Type` among the headers when there is one). BYE goes through
    /// [`Core::hangup`], ACK and CANCEL are the transactions' business: those are refused, as
    /// is a dialog that is over or ending. The outcome arrives as
    /// [`CoreEvent::RequestFinished`].
    pub fn send_request(
        &mut self,
        now: Instant,
        dialog_id: DialogId,
        destination: SocketAddr,
        method: Method,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Option<RequestId> {
        self.send_request_owned(now, dialog_id, destination, method, headers, body, |request| RequestOwner::InDialog {
            dialog: dialog_id,
            request,
        })
    }

    /// [`Core::send_request`] with the owner its final response goes to.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn send_request_owned(
        &mut self,
        now: Instant,
        dialog_id: DialogId,
        destination: SocketAddr,
        method: Method,
        headers: &[(&str, &str)],
        body: &[u8],
        owner: impl FnOnce(RequestId) -> RequestOwner,
    ) -> Option<RequestId> {
        if matches!(method, Method::Bye | Method::Ack | Method::Cancel) {
            return None;
        }
        let dialog = self.dialogs.get(&dialog_id)?;
        if dialog.phase == DialogPhase::Terminating {
            return None;
        }
        let cseq = dialog.local_cseq.wrapping_add(1);
        let (mut request, mut transmit, branch) = self.build_in_dialog(dialog_id, method.clone(), cseq, destination)?;
        for (name, value) in headers {
            request.push_header(name, *value);
        }
        request.body = body.to_vec();
        if let Some(dialog) = self.dialogs.get_mut(&dialog_id) {
            dialog.local_cseq = cseq;
        }
        transmit.payload = request.to_bytes();
        let id = RequestId(self.fresh_id());
        let owner = owner(id);
        self.start_request(now, ClientKey { branch, method }, owner, transmit);
        Some(id)
    }

    /// Where an in-dialog request of this dialog goes (resolve a host name before
    /// [`Core::send_request`]).
    pub fn dialog_next_hop(&self, dialog: DialogId) -> Option<NextHop> {
        self.dialogs.get(&dialog).and_then(|d| self.next_hop(d))
    }

    /// Sends `transmit` once and starts its non-INVITE client transaction (§17.1.2).
    pub(super) fn start_request(&mut self, now: Instant, key: ClientKey, owner: RequestOwner, transmit: Transmit) {
        metrics::counter!(crate::endpoint::metric_names::SIP_REQUESTS_SENT_TOTAL, "method" => key.method.metric_label())
            .increment(1);
        self.transmits.push_back(transmit.clone());
        let transaction = ClientNonInvite::start(now, transmit, self.config.timers);
        self.client_transactions.insert(key, OwnedNonInvite { owner, transaction });
    }

    /// Builds a request inside a dialog (§12.2.1.1): Request-URI = remote target (or the first
    /// route when it is a strict router), Route = route set, the dialog's From, To and Call-ID,
    /// CSeq `cseq`, a new branch. Returns the request, a transmit to fill with its bytes, and
    /// the branch.
    pub(super) fn build_in_dialog(
        &mut self,
        dialog_id: DialogId,
        method: Method,
        cseq: u32,
        destination: SocketAddr,
    ) -> Option<(Message, Transmit, String)> {
        let dialog = self.dialogs.get(&dialog_id)?;
        let hop = self.next_hop(dialog)?;
        let transport = hop.transport;
        let strict = dialog
            .route_set
            .first()
            .and_then(|r| NameAddr::parse(r))
            .and_then(|r| SipUri::parse(&r.uri))
            .is_some_and(|u| u.param("lr").is_none());
        let (request_uri, routes): (String, Vec<String>) = if strict {
            // §12.2.1.1 strict routing: first route becomes the Request-URI.
            let first = dialog.route_set.first().and_then(|r| NameAddr::parse(r)).map(|r| r.uri).unwrap_or_default();
            let mut rest: Vec<String> = dialog.route_set.iter().skip(1).cloned().collect();
            rest.push(format!("<{}>", dialog.remote_target));
            (first, rest)
        } else {
            (dialog.remote_target.clone(), dialog.route_set.clone())
        };
        // Over TLS the peer's connection to us comes from an ephemeral port, never its Contact's
        // (5061): reuse it for any request to that address (RFC 5923's reasoning; carriers expect
        // it). A new connection would be verified against the default trust store with an IP as
        // the server name, which a carrier's certificate does not carry: our BYE would never
        // arrive. Closed meanwhile, the endpoint opens a new one as before.
        let same_peer = match transport {
            Transport::Tls => dialog.origin.source.ip() == destination.ip(),
            _ => dialog.origin.source == destination,
        };
        let connection = if transport.is_reliable() && dialog.origin.transport == transport && same_peer {
            dialog.origin.connection
        } else {
            None
        };
        let (local_party, remote_party, call_id) =
            (dialog.local_party.clone(), dialog.remote_party.clone(), dialog.call_id.clone());
        let sips = is_sips(&request_uri) || routes.first().is_some_and(|r| is_sips(r));
        let branch = format!("z9hG4bK{}", self.random_token());
        let mut request = Message::request(method.clone(), request_uri);
        request.push_header("Via", self.via_value(transport, &branch));
        request.push_header("Max-Forwards", "70");
        for route in routes {
            request.push_header("Route", route);
        }
        request.push_header("From", local_party);
        request.push_header("To", remote_party);
        request.push_header("Call-ID", call_id);
        request.push_header("CSeq", format!("{cseq} {method}"));
        if method != Method::Ack {
            request.push_header("Contact", self.contact_header_for(transport, sips));
            request.push_header("User-Agent", self.config.user_agent.clone());
        }
        let transmit = Transmit { transport, destination, connection, payload: Vec::new() };
        Some((request, transmit, branch))
    }

    /// Resolution of the next hop failed: give up on the BYE.
    pub fn bye_unresolvable(&mut self, dialog: DialogId) {
        if self.dialogs.contains_key(&dialog) {
            self.end_dialog(dialog);
            self.events.push_back(CoreEvent::ByeFinished { dialog, outcome: Err(HangupError::Unresolvable) });
        }
    }

    pub(super) fn end_dialog(&mut self, dialog_id: DialogId) {
        if let Some(dialog) = self.dialogs.remove(&dialog_id) {
            self.dialog_index.remove(&(dialog.call_id, dialog.local_tag, dialog.remote_tag));
            // BYE glare: the peer's BYE ended the dialog first.
            if let Some(branch) = dialog.bye_branch
                && self.client_transactions.remove(&ClientKey { branch, method: Method::Bye }).is_some()
            {
                self.events.push_back(CoreEvent::ByeFinished { dialog: dialog_id, outcome: Ok(()) });
            }
        }
    }

    /// Timer F of one of our non-INVITE requests.
    pub(super) fn request_timed_out(&mut self, owner: RequestOwner) {
        match owner {
            RequestOwner::Bye(dialog) => {
                if let Some(state) = self.dialogs.get_mut(&dialog) {
                    state.bye_branch = None;
                }
                self.end_dialog(dialog);
                self.events.push_back(CoreEvent::ByeFinished { dialog, outcome: Err(HangupError::Timeout) });
            }
            // §9.1: the INVITE's own timers (or the 64*T1 after CANCEL) settle the call.
            RequestOwner::Cancel(_) => {}
            RequestOwner::Refresh(dialog) => self.refresh_timed_out(dialog),
            RequestOwner::InDialog { dialog, request } => {
                self.events.push_back(CoreEvent::RequestFinished {
                    dialog,
                    request,
                    outcome: RequestOutcome::TimedOut,
                });
            }
            RequestOwner::OutOfDialog(request) => {
                self.events
                    .push_back(CoreEvent::OutOfDialogFinished { request, outcome: OutOfDialogOutcome::TimedOut });
            }
        }
    }
}
