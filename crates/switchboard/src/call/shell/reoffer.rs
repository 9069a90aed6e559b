//! The caller's re-offers in the call's task: answered from the call's SDP state
//! ([`crate::call::renegotiate`]) at once (the SIP core waits a few seconds at most), then
//! applied to the call core ([`crate::call::core::hold`]).

use std::time::Instant;

use switchboard_sip::{ReofferAnswer, ReofferId, ReofferKind};
use tracing::{info, warn};

use super::MediaLoop;
use crate::call::end::CallEnd;
use crate::call::renegotiate::MediaUpdate;
use crate::telemetry;

impl MediaLoop<'_> {
    /// A re-INVITE or UPDATE with a new offer (`Some`) or a re-INVITE without one (`None`: our
    /// offer goes in the 200, the answer comes with the ACK: [`MediaLoop::on_answer_in_ack`]).
    pub(super) fn on_reoffer(&mut self, id: ReofferId, kind: ReofferKind, offer: Option<&str>) {
        // Worked out on a copy: the call's SDP state changes only once the SIP layer has taken
        // the answer (too late, the peer got 500 and keeps the session as it was).
        let mut next = self.sdp.clone();
        let (answer, update, result) = match offer {
            Some(offer) => match next.answer(offer) {
                Ok((sdp, update)) => (ReofferAnswer::Sdp(sdp), Some(update), "answered"),
                Err(e) => {
                    // §14.2: the session goes on unchanged.
                    info!(method = kind.label(), error = %e, "re-offer refused with 488");
                    (ReofferAnswer::Reject(488), None, "refused")
                }
            },
            None => match next.offer() {
                Ok(sdp) => (ReofferAnswer::Sdp(sdp), None, "answered"),
                Err(e) => {
                    warn!(error = %e, "no offer for a re-INVITE without SDP");
                    (ReofferAnswer::Reject(500), None, "refused")
                }
            },
        };
        metrics::counter!(telemetry::REOFFERS_ANSWERED_TOTAL, "method" => kind.label(), "result" => result)
            .increment(1);
        // Applied before the answer leaves: once the peer has our 200 to a hold, not one more
        // packet of the agent's audio may follow it (the media clock keeps running meanwhile).
        if let Some(update) = update {
            self.core.lock().handle_media_update(Instant::now(), update);
        }
        if !self.dialog.answer_reoffer(id, answer) {
            warn!(method = kind.label(), "re-offer answered too late (the SIP layer sent 500)");
            if update.is_some() {
                // The peer keeps the session as it was: so do we.
                self.core.lock().handle_media_update(Instant::now(), MediaUpdate::of(self.sdp.media()));
            }
            return;
        }
        self.sdp = next;
    }

    /// The ACK of our 200 that carried an offer (a re-INVITE without SDP): its answer takes
    /// effect, or, missing or unusable, the call ends with our BYE (RFC 3261 §14.2).
    pub(super) fn on_answer_in_ack(&mut self, answer: Option<&str>) {
        let mut core = self.core.lock();
        match self.sdp.on_answer(answer) {
            Ok(update) => core.handle_media_update(Instant::now(), update),
            Err(e) => {
                info!(error = %e, "no usable answer to our offer in the ACK; hanging up");
                core.handle_media_failure(CallEnd::BadSdpAnswer(e.to_string()));
            }
        }
    }
}
