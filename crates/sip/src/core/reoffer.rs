//! Re-offers inside a dialog: re-INVITE (RFC 3261 §14) and UPDATE (RFC 3311), and the offer we
//! put in a 2xx when the request had none (RFC 3261 §13.2.1 delayed offer, §14.2).
//!
//! The core does not negotiate SDP; it tells a session refresh from a real re-offer:
//!
//! - a re-INVITE or UPDATE whose SDP has the `o=` line of the peer's previous SDP is "no
//!   change" (RFC 3264 §8): answered at once with our last SDP, unchanged;
//! - an UPDATE without SDP is a refresh (RFC 4028 §7.4): 200 without a body at once;
//! - anything else (new SDP, or a re-INVITE without SDP) goes to the application as
//!   [`DialogEvent::Reoffer`], answered with [`Core::answer_reoffer`] within
//!   [`REOFFER_ANSWER_WITHIN`]; unanswered by then it gets 500 with a random Retry-After of
//!   0-10 s (§14.2), and the session goes on unchanged.
//!
//! A 2xx that carries our offer (a delayed-offer INVITE, a re-INVITE without SDP) waits for the
//! answer in the ACK: [`DialogEvent::Answer`] carries it (`None`: the ACK had none; the
//! application must then hang up, §14.2 / §13.2.1).

use std::time::{Duration, Instant};

use super::*;

/// How long the application has to answer a re-offer before the core answers 500.
pub const REOFFER_ANSWER_WITHIN: Duration = Duration::from_secs(4);

/// Identifies a re-offer waiting for the application's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReofferId(pub u64);

/// The request that carried a re-offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReofferKind {
    Invite,
    Update,
}

impl ReofferKind {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            ReofferKind::Invite => "INVITE",
            ReofferKind::Update => "UPDATE",
        }
    }
}

/// The application's answer to a [`DialogEvent::Reoffer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReofferAnswer {
    /// 200 with this SDP: the answer to the peer's offer, or, for a re-INVITE without SDP,
    /// our offer (its answer comes in the ACK as [`DialogEvent::Answer`]).
    Sdp(String),
    /// A final failure, normally 488 for an offer we cannot take: the session goes on as it
    /// was (§14.2).
    Reject(u16),
}

/// A re-offer waiting for the application.
#[derive(Debug)]
pub(super) struct PendingReoffer {
    pub(super) id: ReofferId,
    pub(super) key: TxKey,
    pub(super) kind: ReofferKind,
    pub(super) request: Message,
    pub(super) origin: Origin,
    /// The 100 Trying of a re-INVITE, sent again for its retransmissions.
    pub(super) trying: Option<Transmit>,
    pub(super) answer_by: Instant,
}

/// The SDP body of a request or response (`application/sdp`, or a body without Content-Type),
/// if it has one that is UTF-8.
pub(super) fn sdp_body(message: &Message) -> Option<String> {
    if message.body.is_empty() {
        return None;
    }
    let is_sdp = message.header("Content-Type").is_none_or(|ct| media_type(ct) == "application/sdp");
    if !is_sdp {
        return None;
    }
    String::from_utf8(message.body.clone()).ok()
}

/// The `o=` line of an SDP body, whitespace-normalised: equal lines mean "no change"
/// (RFC 3264 §8: the version only moves when the SDP does).
pub(super) fn sdp_origin_line(sdp: &str) -> Option<String> {
    sdp.lines()
        .map(str::trim)
        .find(|line| line.starts_with("o="))
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
}

impl Core {
    /// A re-INVITE: a refresh is answered at once with our last SDP, anything else goes to the
    /// application. Glare (an INVITE or re-offer of this dialog still pending) is 491 (§14.2).
    pub(super) fn handle_reinvite(
        &mut self,
        now: Instant,
        origin: Origin,
        request: Message,
        key: TxKey,
        dialog_id: DialogId,
    ) {
        if self.session_interval_too_small(now, &origin, &request, &key) {
            return;
        }
        let Some(dialog) = self.dialogs.get(&dialog_id) else {
            return;
        };
        if dialog.pending_2xx.is_some() || dialog.reoffer.is_some() || dialog.phase == DialogPhase::Terminating {
            // §14.2: an INVITE is already in progress.
            self.respond(now, key, &origin, &request, 491, None, &[]);
            return;
        }
        let offer = sdp_body(&request);
        let unchanged = offer
            .as_deref()
            .and_then(sdp_origin_line)
            .is_some_and(|line| dialog.remote_sdp_origin.as_deref() == Some(line.as_str()));
        if unchanged {
            count_reoffer(ReofferKind::Invite, "refresh");
            let answer = dialog.last_answer.clone();
            self.answer_reinvite(now, origin, request, key, dialog_id, answer, false);
            return;
        }
        self.surface_reoffer(now, origin, request, key, dialog_id, ReofferKind::Invite, offer);
    }

    /// An UPDATE (RFC 3311): without SDP a session refresh (200 at once), with the peer's
    /// previous SDP a refresh too (our last SDP), else a re-offer for the application. An UPDATE
    /// while another offer of this dialog is pending gets 491 (§5.2).
    pub(super) fn handle_update(
        &mut self,
        now: Instant,
        origin: Origin,
        request: Message,
        key: TxKey,
        dialog_id: DialogId,
    ) {
        if self.session_interval_too_small(now, &origin, &request, &key) {
            return;
        }
        let offer = sdp_body(&request);
        let contact = self.dialog_contact(dialog_id, origin.transport);
        let Some(sdp) = offer else {
            count_reoffer(ReofferKind::Update, "refresh");
            self.apply_target_refresh(dialog_id, &request);
            let timer = self.refresh_on_request(now, dialog_id, &request).unwrap_or_default();
            let mut extra =
                vec![("Contact", contact.as_str()), ("Allow", ALLOW), ("Supported", session_timer::SUPPORTED)];
            extra.extend(timer.iter().map(|(name, value)| (*name, value.as_str())));
            self.respond(now, key, &origin, &request, 200, None, &extra);
            return;
        };
        let Some(dialog) = self.dialogs.get(&dialog_id) else {
            return;
        };
        if dialog.reoffer.is_some() || dialog.pending_2xx.as_ref().is_some_and(|p| p.carries_offer) {
            self.respond(now, key, &origin, &request, 491, None, &[]);
            return;
        }
        let unchanged = sdp_origin_line(&sdp).is_some_and(|line| dialog.remote_sdp_origin.as_deref() == Some(&*line));
        if unchanged {
            count_reoffer(ReofferKind::Update, "refresh");
            let answer = dialog.last_answer.clone();
            self.apply_target_refresh(dialog_id, &request);
            self.respond_sdp(now, key, &origin, &request, dialog_id, answer);
            return;
        }
        self.surface_reoffer(now, origin, request, key, dialog_id, ReofferKind::Update, Some(sdp));
    }

    /// Hands a re-offer to the application (a re-INVITE gets 100 Trying meanwhile).
    #[allow(clippy::too_many_arguments)]
    fn surface_reoffer(
        &mut self,
        now: Instant,
        origin: Origin,
        request: Message,
        key: TxKey,
        dialog_id: DialogId,
        kind: ReofferKind,
        sdp: Option<String>,
    ) {
        count_reoffer(kind, if sdp.is_some() { "offer" } else { "no_sdp" });
        let trying = match kind {
            ReofferKind::Invite => {
                let trying = self.build_response(&request, &origin, 100, "Trying", None, &[]);
                let transmit = self.reply_transmit(&request, &origin, trying, &Method::Invite, 100);
                if let Some(transmit) = &transmit {
                    self.transmits.push_back(transmit.clone());
                }
                transmit
            }
            ReofferKind::Update => None,
        };
        let id = ReofferId(self.fresh_id());
        let Some(dialog) = self.dialogs.get_mut(&dialog_id) else {
            return;
        };
        dialog.reoffer =
            Some(PendingReoffer { id, key, kind, request, origin, trying, answer_by: now + REOFFER_ANSWER_WITHIN });
        self.events.push_back(CoreEvent::Dialog { dialog: dialog_id, notice: DialogEvent::Reoffer { id, kind, sdp } });
    }

    /// Answers a [`DialogEvent::Reoffer`]. `false` when it is no longer pending (answered 500
    /// at its deadline, or the dialog is over).
    pub fn answer_reoffer(&mut self, now: Instant, dialog_id: DialogId, id: ReofferId, answer: ReofferAnswer) -> bool {
        let Some(dialog) = self.dialogs.get_mut(&dialog_id) else {
            return false;
        };
        if dialog.reoffer.as_ref().map(|p| p.id) != Some(id) {
            return false;
        }
        let Some(pending) = dialog.reoffer.take() else {
            return false;
        };
        let PendingReoffer { key, kind, request, origin, .. } = pending;
        match answer {
            ReofferAnswer::Sdp(sdp) => {
                let offer = sdp_body(&request);
                if let Some(line) = offer.as_deref().and_then(sdp_origin_line) {
                    dialog.remote_sdp_origin = Some(line);
                }
                dialog.last_answer = sdp.clone();
                match kind {
                    ReofferKind::Invite => {
                        self.answer_reinvite(now, origin, request, key, dialog_id, sdp, offer.is_none());
                    }
                    ReofferKind::Update => {
                        self.apply_target_refresh(dialog_id, &request);
                        self.respond_sdp(now, key, &origin, &request, dialog_id, sdp);
                    }
                }
            }
            ReofferAnswer::Reject(status) => {
                let status = if (300..=699).contains(&status) { status } else { 500 };
                self.respond(now, key, &origin, &request, status, None, &[]);
            }
        }
        true
    }

    /// 200 to a re-INVITE with `body` (our answer, or our offer when `carries_offer`), kept
    /// retransmitted until its ACK like any 2xx (§13.3.1.4); the Contact is a target refresh.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn answer_reinvite(
        &mut self,
        now: Instant,
        origin: Origin,
        request: Message,
        key: TxKey,
        dialog_id: DialogId,
        body: String,
        carries_offer: bool,
    ) {
        let Some(dialog) = self.dialogs.get(&dialog_id) else {
            return;
        };
        let local_tag = dialog.local_tag.clone();
        let cseq = request.cseq().map(|(n, _)| n).unwrap_or_default();
        let contact = self.dialog_contact(dialog_id, origin.transport);
        let timer = self.refresh_on_request(now, dialog_id, &request).unwrap_or_default();
        let mut extra = vec![
            ("Contact", contact.as_str()),
            ("Allow", ALLOW),
            ("Supported", session_timer::SUPPORTED),
            ("Content-Type", "application/sdp"),
        ];
        extra.extend(timer.iter().map(|(name, value)| (*name, value.as_str())));
        let mut response = self.build_response(&request, &origin, 200, "OK", Some(&local_tag), &extra);
        response.body = body.into_bytes();
        let Some(reply) = self.reply_transmit(&request, &origin, response, &Method::Invite, 200) else {
            return;
        };
        self.transmits.push_back(reply.clone());
        let timers = self.config.timers;
        self.apply_target_refresh(dialog_id, &request);
        if let Some(dialog) = self.dialogs.get_mut(&dialog_id) {
            let mut pending = Pending2xx::start(now, cseq, reply.clone(), timers, false);
            pending.carries_offer = carries_offer;
            dialog.pending_2xx = Some(pending);
        }
        let transaction = ServerInvite::answered(now, request, origin, local_tag, reply, 200, timers);
        self.transactions.insert(key, ServerTransaction::Invite(Box::new(transaction)));
    }

    /// Our Contact in a dialog's responses: sips for a sips dialog over TLS (RFC 3261 §8.1.1.8).
    fn dialog_contact(&self, dialog_id: DialogId, transport: Transport) -> String {
        let sips = self.dialogs.get(&dialog_id).is_some_and(|d| is_sips(&d.remote_target));
        self.contact_header_for(transport, sips)
    }

    /// §12.2.2: a target refresh request's Contact becomes the remote target.
    fn apply_target_refresh(&mut self, dialog_id: DialogId, request: &Message) {
        let new_target =
            request.header("Contact").and_then(NameAddr::parse).map(|c| without_uri_headers(&c.uri).to_owned());
        if let (Some(target), Some(dialog)) = (new_target, self.dialogs.get_mut(&dialog_id)) {
            dialog.remote_target = target;
        }
    }

    /// RFC 4028 §9 on a re-INVITE or UPDATE: an interval below our minimum is answered 422 with
    /// our Min-SE. `true` when it was.
    fn session_interval_too_small(&mut self, now: Instant, origin: &Origin, request: &Message, key: &TxKey) -> bool {
        let wishes = session_timer::TimerRequest::read(request);
        let session_timer::TimerDecision::TooSmall { min_se } =
            session_timer::negotiate_uas(self.config.session_timer, &wishes)
        else {
            return false;
        };
        let min_se = min_se.to_string();
        self.respond(now, key.clone(), origin, request, 422, None, &[("Min-SE", min_se.as_str())]);
        true
    }

    /// 200 to a non-INVITE request (UPDATE) with an SDP body and our Contact.
    #[allow(clippy::too_many_arguments)]
    fn respond_sdp(
        &mut self,
        now: Instant,
        key: TxKey,
        origin: &Origin,
        request: &Message,
        dialog_id: DialogId,
        sdp: String,
    ) {
        let Some(tag) = request.to_tag() else {
            return;
        };
        let contact = self.dialog_contact(dialog_id, origin.transport);
        let timer = self.refresh_on_request(now, dialog_id, request).unwrap_or_default();
        let mut extra = vec![
            ("Contact", contact.as_str()),
            ("Allow", ALLOW),
            ("Supported", session_timer::SUPPORTED),
            ("Content-Type", "application/sdp"),
        ];
        extra.extend(timer.iter().map(|(name, value)| (*name, value.as_str())));
        let mut response = self.build_response(request, origin, 200, "OK", Some(&tag), &extra);
        response.body = sdp.into_bytes();
        let method = request.method().cloned().unwrap_or(Method::Update);
        let Some(reply) = self.reply_transmit(request, origin, response, &method, 200) else {
            return;
        };
        self.transmits.push_back(reply.clone());
        if let Some(tx) = ServerNonInvite::completed(now, *origin, reply, self.config.timers) {
            self.transactions.insert(key, ServerTransaction::NonInvite(tx));
        }
    }

    /// A retransmission of a request whose re-offer waits for the application: absorbed (a
    /// re-INVITE gets its 100 Trying again). `true` when `key` was one.
    pub(super) fn absorb_pending_reoffer(&mut self, key: &TxKey) -> bool {
        let pending = self.dialogs.values().filter_map(|d| d.reoffer.as_ref()).find(|p| p.key == *key);
        let Some(pending) = pending else {
            return false;
        };
        if let Some(trying) = pending.trying.clone() {
            self.transmits.push_back(trying);
        }
        true
    }

    /// Re-offers the application did not answer in time: 500 with Retry-After 0-10 s (§14.2).
    pub(super) fn reoffer_timeouts(&mut self, now: Instant) {
        let due: Vec<DialogId> = self
            .dialogs
            .iter()
            .filter(|(_, d)| d.reoffer.as_ref().is_some_and(|p| p.answer_by <= now))
            .map(|(id, _)| *id)
            .collect();
        for dialog_id in due {
            let Some(pending) = self.dialogs.get_mut(&dialog_id).and_then(|d| d.reoffer.take()) else {
                continue;
            };
            tracing::warn!(method = pending.kind.label(), "re-offer not answered in time; 500 sent");
            let retry_after = self.rng.random_range(0..=10_u32).to_string();
            let PendingReoffer { key, request, origin, .. } = pending;
            self.respond(now, key, &origin, &request, 500, None, &[("Retry-After", retry_after.as_str())]);
        }
    }

    /// The earliest re-offer deadline.
    pub(super) fn reoffer_deadline(&self) -> Option<Instant> {
        self.dialogs.values().filter_map(|d| d.reoffer.as_ref().map(|p| p.answer_by)).min()
    }
}

/// `switchboard_sip_reoffers_total`, by `method` and `kind` (`refresh`, `offer`, `no_sdp`).
fn count_reoffer(kind: ReofferKind, what: &'static str) {
    metrics::counter!(crate::endpoint::metric_names::SIP_REOFFERS_TOTAL, "method" => kind.label(), "kind" => what)
        .increment(1);
}
