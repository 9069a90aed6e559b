//! The caller's media changes mid-call (a re-INVITE or UPDATE answered by
//! [`crate::call::renegotiate`]): a new address to send to, and hold / resume.
//!
//! On hold (our direction no longer lets us send: the caller offered `sendonly`, `inactive` or
//! `c=0.0.0.0`) the agent's audio stops at once: its queue is dropped and its items truncated to
//! what the caller heard (as for a barge-in), an active response is cancelled, and the pacer
//! sends nothing. The model is told with a short text note (docs/conversation.md), hears no
//! caller audio (music on hold is not for it), and is not prompted: the idle timer and the
//! caller's RTP timeout wait. On resume it is told again and asked for a response (the agent
//! greets the caller back); the RTP timeout starts afresh.

use std::time::Instant;

use switchboard_realtime::events::{ClientEvent, Item};
use tracing::info;

use super::agent_control::Purpose;
use super::{CALLER, CallCore};
use crate::call::end::CallEnd;
use crate::call::renegotiate::MediaUpdate;
use crate::telemetry;

/// What the model is told when the caller puts the call on hold.
pub const HOLD_NOTE: &str = "[the caller put the call on hold]";
/// What the model is told when the caller resumes the call.
pub const RESUME_NOTE: &str = "[the caller resumed the call]";

impl CallCore {
    /// The caller's new offer or answer took effect (already answered on the SIP side).
    pub fn handle_media_update(&mut self, now: Instant, update: MediaUpdate) {
        if self.ended.is_some() {
            return;
        }
        let Some(leg) = self.legs.iter_mut().find(|leg| leg.id == CALLER) else { return };
        if update.remote != leg.signalled {
            // The old address is no longer trusted: the latch learns the new one afresh.
            info!(remote = %update.remote, "the caller's media moved");
            leg.latch.on_remote_offer(now, update.remote);
            leg.signalled = update.remote;
        }
        leg.may_send = update.may_send;
        leg.telephone_event = update.telephone_event;
        let held = !update.may_send;
        if held == self.held {
            return;
        }
        self.held = held;
        if held {
            info!("call on hold: the agent stops talking");
            metrics::counter!(telemetry::CALL_HOLDS_TOTAL).increment(1);
            let (_, truncates) = self.agent.barge_in(leg);
            if self.agent.conversation.has_active_response() {
                self.send_realtime(ClientEvent::ResponseCancel { event_id: None, response_id: None });
            }
            for truncate in truncates {
                self.send_realtime(truncate);
            }
            self.tell_model(HOLD_NOTE);
        } else {
            info!("call resumed");
            leg.last_rtp_in = now;
            self.last_activity = now;
            self.tell_model(RESUME_NOTE);
            let active = self.agent.conversation.has_active_response();
            let commands = self.control.request(Purpose::Turn, active);
            self.run_control(commands);
        }
    }

    /// The session cannot go on (our offer got no usable answer): ends the call with `end`.
    pub fn handle_media_failure(&mut self, end: CallEnd) {
        self.end(end);
    }

    /// Whether the caller has the call on hold.
    pub fn is_held(&self) -> bool {
        self.held
    }

    fn tell_model(&mut self, note: &str) {
        let item = Item::user_text(note);
        self.send_realtime(ClientEvent::ConversationItemCreate { event_id: None, previous_item_id: None, item });
    }
}
