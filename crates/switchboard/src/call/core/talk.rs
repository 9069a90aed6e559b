//! The call core's conversational hooks: barge-in decisions carried out on the playout, keys
//! told to the model, the agent's call control run on the core's timers. The decisions live in
//! [`super::barge_in`], [`super::dtmf_to_model`] and [`super::agent_control`]; this is where
//! they touch the pacer and leave as events (through [`CallCore::send_realtime`]).

use std::time::{Duration, Instant};

use switchboard_realtime::events::{ClientEvent, Item};
use tracing::{debug, info};

use super::agent_control::{Command, Purpose};
use super::barge_in::BargeInAction;
use super::{CALLER, CallCore, DtmfDigit, LegId, Output};
use crate::telemetry;

impl CallCore {
    /// A key from a leg (RFC 4733) or from a SIP INFO: an event for the routing rules, and for
    /// the caller's leg, text for the model.
    pub(super) fn on_dtmf(&mut self, now: Instant, leg: LegId, digit: DtmfDigit, duration: Duration) {
        self.stats.dtmf_events += 1;
        metrics::counter!(telemetry::DTMF_DIGITS_TOTAL).increment(1);
        self.outputs.push_back(Output::Dtmf { leg, digit, duration });
        if self.transfer_key(leg, digit) {
            return;
        }
        // A human's keys, or the caller's while bridged to one, are for the transfer logic only.
        if leg != CALLER || self.bridge.is_some() {
            return;
        }
        self.control.on_caller_activity();
        self.last_activity = now;
        if let Some(text) = self.dtmf_to_model.on_digit(now, digit) {
            self.tell_model_keys(text);
        }
    }

    /// One user `input_text` item naming the keys, then (`dtmf_response`) a response once none
    /// is active: the keys wait for the agent to finish what it is saying rather than cut it.
    fn tell_model_keys(&mut self, text: String) {
        // Not logged: keys can be a PIN.
        debug!(keys = text.matches(", ").count() + 1, "keys told to the model");
        let item = Item::user_text(text);
        self.send_realtime(ClientEvent::ConversationItemCreate { event_id: None, previous_item_id: None, item });
        if self.config.talk.dtmf_response {
            let active = self.agent.conversation.has_active_response();
            let commands = self.control.request(Purpose::Turn, active);
            self.run_control(commands);
        }
    }

    /// The caller's speech is a barge-in: the agent's queue is dropped at once, the items
    /// truncated at what was heard; `cancel`: the response too (confirm mode, where the API
    /// does not cancel by itself).
    pub(super) fn interrupt_agent(&mut self, cancel: bool) {
        self.barge_in.forget();
        let Some(leg) = self.legs.iter_mut().find(|leg| leg.id == CALLER) else { return };
        let (dropped, truncates) = self.agent.barge_in(leg);
        if cancel && self.agent.conversation.has_active_response() {
            // Reference §6 step 3; a `response_cancel_not_active` answer is harmless.
            self.send_realtime(ClientEvent::ResponseCancel { event_id: None, response_id: None });
        }
        if dropped > 0 || !truncates.is_empty() {
            self.stats.barge_ins += 1;
            metrics::counter!(telemetry::BARGE_INS_TOTAL).increment(1);
            info!(dropped_frames = dropped, "barge-in: agent audio flushed");
        }
        for truncate in truncates {
            self.send_realtime(truncate);
        }
    }

    pub(super) fn apply_barge_in(&mut self, action: BargeInAction) {
        match action {
            BargeInAction::Interrupt => self.interrupt_agent(true),
            BargeInAction::Resume => {
                if let Some(leg) = self.caller_leg_mut() {
                    leg.pacer.set_paused(false);
                }
                metrics::counter!(telemetry::BARGE_INS_RESUMED_TOTAL).increment(1);
                debug!("caller speech too short for a barge-in: agent resumed");
            }
            BargeInAction::Pause | BargeInAction::None => {}
        }
    }

    pub(super) fn run_control(&mut self, commands: Vec<Command>) {
        for command in commands {
            match command {
                Command::Send(event) => self.send_realtime(*event),
                Command::CancelActive => {
                    self.send_realtime(ClientEvent::ResponseCancel { event_id: None, response_id: None })
                }
                Command::EndAfterPlayout(end) => {
                    if let Some(leg) = self.caller_leg_mut() {
                        leg.pacer.set_paused(false);
                    }
                    self.barge_in.forget();
                    self.end_after_playout(end);
                }
                Command::EndNow(end) => self.end(end),
                Command::Announced => self.on_transfer_announced(),
                Command::TransferAtMaxCall => self.transfer_at_max_call(),
            }
            if self.ended.is_some() {
                return;
            }
        }
    }

    /// A new Realtime session took over (reconnect or rollover): the talk state that belonged to
    /// the old one goes, and the idle clock starts again. Returns whether the call's own control
    /// asked the new session for a response (a goodbye cut off, asked for again).
    pub(super) fn on_session_replaced(&mut self, now: Instant) -> bool {
        self.last_activity = now;
        self.barge_in.forget();
        if let Some(leg) = self.caller_leg_mut() {
            leg.pacer.set_paused(false);
        }
        self.meter.on_new_session();
        let commands = self.control.on_session_replaced();
        let asked = commands.iter().any(|c| matches!(c, Command::Send(_)));
        self.run_control(commands);
        self.tools_on_session_replaced();
        asked
    }

    /// Since when nobody has been talking and nothing is coming: `None` while the caller
    /// speaks, a response is active, the call is ending, or agent audio waits to be played.
    fn quiet_since(&self) -> Option<Instant> {
        let playing = self.caller_leg().is_some_and(|leg| !leg.held_audio().is_zero());
        (!playing && !self.talk_busy()).then_some(self.last_activity)
    }

    /// Whether anyone but the pacer keeps the line busy.
    fn talk_busy(&self) -> bool {
        self.barge_in.caller_speaking()
            || self.outage.is_some()
            || self.agent.conversation.has_active_response()
            || self.ending_after_playout.is_some()
            || self.bridge.is_some()
            || self.held
    }

    /// [`quiet_since`](Self::quiet_since) for planning the task's next wake-up: while only the
    /// agent's queued audio keeps the line busy, when that audio will have played. The media
    /// clock plays it without waking the call's task, and without caller RTP (a silent or
    /// muted phone) nothing else would wake it for the idle timer.
    fn expected_quiet_since(&self) -> Option<Instant> {
        if self.talk_busy() {
            return None;
        }
        match self.caller_leg() {
            Some(leg) if !leg.held_audio().is_zero() => Some(leg.pacer.next_deadline() + leg.held_audio()),
            _ => Some(self.last_activity),
        }
    }

    /// The next deadline of the conversational timers.
    pub(super) fn poll_talk_timeout(&self) -> Option<Instant> {
        let legs = self.legs.iter().filter_map(|leg| leg.dtmf.poll_timeout());
        // While bridged the agent keeps quiet: no idle prompt, no time-limit goodbye over the
        // human (they are due, if still due, once the caller is back with the agent).
        let control = if self.bridge.is_some() { None } else { self.control.poll_timeout(self.expected_quiet_since()) };
        [self.barge_in.poll_timeout(), self.dtmf_to_model.poll_timeout(), control]
            .into_iter()
            .flatten()
            .chain(legs)
            .min()
    }

    /// Runs the conversational timers due at `now`.
    pub(super) fn handle_talk_timeout(&mut self, now: Instant) {
        let action = self.barge_in.on_timeout(now);
        self.apply_barge_in(action);
        for index in 0..self.legs.len() {
            let expired = self.legs.get_mut(index).and_then(|leg| leg.dtmf.on_timeout(now).map(|key| (leg.id, key)));
            if let Some((leg, (digit, duration))) = expired {
                self.on_dtmf(now, leg, digit, duration);
            }
        }
        if let Some(text) = self.dtmf_to_model.on_timeout(now) {
            self.tell_model_keys(text);
        }
        if self.bridge.is_some() {
            return;
        }
        let active = self.agent.conversation.has_active_response();
        let commands = self.control.on_timeout(now, self.quiet_since(), active);
        if commands.iter().any(|c| matches!(c, Command::Send(_))) {
            info!("caller idle or call at its time limit: the agent speaks");
        }
        self.run_control(commands);
    }
}
