//! The call core's side of a lost AI connection (docs/realtime-resilience.md): the caller stays
//! on the line. While the shell reconnects, the core is *reconnecting*: the caller's audio is not
//! sent anywhere, the agent's queued audio is dropped (it belonged to a session that is gone),
//! the caller hears a soft comfort pulse instead of dead air, and the outbound RTP stream goes on
//! (same SSRC, continuous sequence numbers and timestamps: silence between pulses). The new
//! session is told the conversation so far ([`History::replay`]); if none is up by
//! `realtime.reconnect_give_up_secs`, the give-up announcement plays and the call ends.

use std::time::{Duration, Instant};

use switchboard_realtime::client::Keepalive;
use switchboard_realtime::events::{ClientEvent, Item, ServerEvent};
use switchboard_realtime::history::HistoryLimits;
use tracing::{info, warn};

use super::{AgentPlayout, CALLER, CallCore, Output};
use crate::call::end::CallEnd;
use crate::call::prompt::LocalPrompt;
use crate::call::reconnect::{self, COMFORT_PERIOD, ReconnectPolicy, ReconnectReason};
use crate::telemetry;

/// The first comfort pulse comes this long after the loss: a quick reconnect is heard as a
/// short pause, not as a beep.
const FIRST_COMFORT_AFTER: Duration = Duration::from_millis(600);

/// The pacer tag of the comfort pulse and the give-up tones: no assistant item (the
/// conversation credits played milliseconds only to the tags it handed out).
const LOCAL_PROMPT_TAG: u32 = u32::MAX;

/// `realtime.reconnect_*`, `replay_budget_*` and the prompts, per call.
#[derive(Debug, Clone, Default)]
pub struct Resilience {
    /// `None`: reconnecting is off; a lost AI connection ends the call.
    pub policy: Option<ReconnectPolicy>,
    /// Played while reconnecting (`Tone`: the comfort pulse), every [`COMFORT_PERIOD`].
    pub reconnect_prompt: LocalPrompt,
    /// Played before hanging up after giving up (`Tone`: the three rising tones).
    pub give_up_prompt: LocalPrompt,
    pub history: HistoryLimits,
    /// Whether the session transcribes the caller (`realtime.transcription_model` set).
    pub caller_transcripts: bool,
}

/// An AI connection being replaced.
#[derive(Debug, Clone)]
pub(super) struct Outage {
    since: Instant,
    reason: ReconnectReason,
    give_up_at: Instant,
    next_comfort: Instant,
    gave_up: bool,
    /// The agent was speaking (a response streaming, or its audio still queued) when the
    /// connection went: the new session is asked to pick up where it was cut off.
    agent_was_speaking: bool,
}

/// The proactive rollover: when it is due, whether the shell was asked, and whether the caller
/// is speaking (a switch waits for a turn boundary).
#[derive(Debug, Clone, Default)]
pub(super) struct Rollover {
    due: Option<Instant>,
    requested: bool,
    caller_speaking: bool,
}

impl Rollover {
    pub(super) fn on_server_event(&mut self, event: &ServerEvent) {
        match event {
            ServerEvent::SpeechStarted(_) => self.caller_speaking = true,
            ServerEvent::SpeechStopped(_) | ServerEvent::InputAudioBufferCommitted(_) => self.caller_speaking = false,
            _ => {}
        }
    }
}

/// Told to the new session when the agent was cut off mid-answer by the lost connection.
const RESUME_NOTE: &str = "The phone connection to you dropped for a moment while you were speaking; your last \
     answer above was cut off where it ends with […]. The caller is still on the line. Briefly pick up where you \
     were cut off.";

impl CallCore {
    /// Whether the AI connection is being replaced (the shell reconnects; the caller's audio is
    /// not sent).
    pub fn is_reconnecting(&self) -> bool {
        self.outage.is_some()
    }

    /// The conversation so far, as the items a new session must be given before it goes on.
    pub fn replay_events(&self) -> Vec<ClientEvent> {
        self.history.replay()
    }

    /// A new session is confirmed and has been given [`replay_events`](Self::replay_events):
    /// the conversation goes on. Returns false when it is too late (the call gave up or
    /// ended): the shell closes the new session.
    pub fn handle_realtime_resumed(&mut self, now: Instant) -> bool {
        let Some(outage) = self.outage.take_if(|o| !o.gave_up) else { return false };
        if self.ended.is_some() {
            return false;
        }
        // The comfort pulse stops at once; the agent starts afresh in the new session.
        if self.ending_after_playout.is_none()
            && self.bridge.is_none()
            && let Some(leg) = self.caller_leg_mut()
        {
            leg.flush();
        }
        self.agent = AgentPlayout::default();
        self.keepalive = Keepalive::new(now, self.config.ping_interval, self.config.watchdog);
        // A goodbye cut off is asked for again; any other answer cut off is picked up.
        let asked = self.on_session_replaced(now);
        if outage.agent_was_speaking && !asked {
            // About the connection, not the conversation: past the history, so that a later
            // reconnect does not replay it.
            self.outputs.push_back(Output::Realtime(Box::new(ClientEvent::ConversationItemCreate {
                event_id: Some("evt_resume_note".into()),
                previous_item_id: None,
                item: Item::system_text(RESUME_NOTE),
            })));
            self.send_realtime(ClientEvent::ResponseCreate { event_id: Some("evt_resume".into()), response: None });
        }
        let pause = now.saturating_duration_since(outage.since);
        metrics::counter!(telemetry::REALTIME_RECONNECTS_TOTAL, "reason" => outage.reason.label(), "outcome" => "resumed")
            .increment(1);
        info!(
            reason = outage.reason.label(),
            pause_ms = pause.as_millis() as u64,
            replayed_items = self.history.replay().len(),
            "Realtime session replaced; conversation resumed"
        );
        true
    }

    /// When the current session is to be rolled over (`None`: never); the shell sets it for
    /// every new session ([`reconnect::rollover_at`]).
    pub fn set_rollover_at(&mut self, due: Option<Instant>) {
        self.rollover = Rollover { due, requested: false, caller_speaking: false };
    }

    /// A switch to a new session would go unheard now: no response active, the agent's audio
    /// played out, the caller not speaking, and no caller turn still waiting for its transcript.
    pub fn at_turn_boundary(&self) -> bool {
        self.ended.is_none()
            && self.outage.is_none()
            && self.ending_after_playout.is_none()
            && !self.rollover.caller_speaking
            && !self.agent.conversation.has_active_response()
            && (self.bridge.is_some() || self.caller_leg().is_none_or(|leg| leg.held_audio().is_zero()))
            && !self.history.has_pending_caller_turn()
    }

    /// The shell switched to the rolled-over session (already given
    /// [`replay_events`](Self::replay_events)) at a turn boundary
    /// ([`at_turn_boundary`](Self::at_turn_boundary), checked just before the replay was sent).
    /// Returns false when the call is over (the shell closes the new session).
    pub fn handle_realtime_switched(&mut self, now: Instant) -> bool {
        if self.ended.is_some() || self.outage.is_some() {
            return false;
        }
        self.agent = AgentPlayout::default();
        self.keepalive = Keepalive::new(now, self.config.ping_interval, self.config.watchdog);
        // At a turn boundary nothing was cut off; a goodbye waiting to be asked for is asked now.
        let _ = self.on_session_replaced(now);
        metrics::counter!(
            telemetry::REALTIME_RECONNECTS_TOTAL,
            "reason" => ReconnectReason::Rollover.label(),
            "outcome" => "resumed"
        )
        .increment(1);
        info!(replayed_items = self.history.replay().len(), "Realtime session rolled over at a turn boundary");
        true
    }

    /// Asks the shell for a new session once the rollover is due.
    pub(super) fn rollover_timeout(&mut self, now: Instant) {
        if self.outage.is_some() || self.rollover.requested || self.rollover.due.is_none_or(|due| now < due) {
            return;
        }
        self.rollover.requested = true;
        info!("Realtime session nears its end; opening the next one");
        self.outputs.push_back(Output::Rollover);
    }

    pub(super) fn rollover_deadline(&self) -> Option<Instant> {
        if self.outage.is_some() || self.rollover.requested {
            return None;
        }
        self.rollover.due
    }

    /// The AI connection is lost (`end` says how). Returns true when the call goes on in the
    /// reconnecting state; false when it must end (reconnecting is off, or the loss is not one a
    /// new session would cure).
    pub(super) fn start_outage(&mut self, now: Instant, end: &CallEnd) -> bool {
        if self.outage.is_some() {
            return true; // the old connection's last words (its close after an error)
        }
        let Some(policy) = self.config.resilience.policy else { return false };
        let Some(reason) = ReconnectReason::of(end) else { return false };
        warn!(reason = reason.label(), cause = ?end, "Realtime connection lost mid-call; reconnecting");
        // While bridged the caller's leg plays the human: the agent was not speaking.
        let agent_was_speaking = self.bridge.is_none()
            && (self.agent.conversation.has_active_response()
                || self.caller_leg().is_some_and(|leg| !leg.held_audio().is_zero()));
        self.history.on_connection_lost();
        // A goodbye being played out (the call ends after it) plays on; anything else the old
        // session queued is dropped: its items do not exist in the next session.
        if self.ending_after_playout.is_none()
            && self.bridge.is_none()
            && let Some(leg) = self.caller_leg_mut()
        {
            leg.flush();
        }
        // A confirm-mode pause would keep the comfort prompt silent.
        self.barge_in.forget();
        if let Some(leg) = self.caller_leg_mut() {
            leg.pacer.set_paused(false);
        }
        self.agent = AgentPlayout::default();
        self.outage = Some(Outage {
            since: now,
            reason,
            give_up_at: policy.give_up_at(now),
            next_comfort: now + FIRST_COMFORT_AFTER,
            gave_up: false,
            agent_was_speaking: agent_was_speaking && self.ending_after_playout.is_none(),
        });
        self.outputs.push_back(Output::Reconnect);
        true
    }

    /// The comfort pulse and the give-up deadline.
    pub(super) fn outage_timeout(&mut self, now: Instant) {
        if self.bridge.is_some() {
            return; // no comfort pulse over the human; giving up waits for the unbridge
        }
        let Some(outage) = &mut self.outage else { return };
        if outage.gave_up {
            return;
        }
        if now >= outage.give_up_at {
            outage.gave_up = true;
            let waited = now.saturating_duration_since(outage.since);
            let reason = outage.reason;
            metrics::counter!(telemetry::REALTIME_RECONNECTS_TOTAL, "reason" => reason.label(), "outcome" => "gave_up")
                .increment(1);
            warn!(reason = reason.label(), waited_ms = waited.as_millis() as u64, "Realtime not back; giving up");
            if self.transfer_on_ai_unreachable() {
                return;
            }
            if self.ending_after_playout.is_none() {
                if let Some(leg) = self.caller_leg_mut() {
                    leg.flush();
                }
                let format = self.config.model_output;
                if let Some(audio) = self.config.resilience.give_up_prompt.audio(format, reconnect::give_up_tones) {
                    self.play_local_prompt(&audio);
                }
            }
            self.end_after_playout(CallEnd::AgentDisconnected(format!(
                "gave up reconnecting after {} s (connection {})",
                waited.as_secs(),
                reason.label()
            )));
            return;
        }
        if now >= outage.next_comfort {
            outage.next_comfort = now + COMFORT_PERIOD;
            let idle = self.caller_leg().is_some_and(|leg| leg.held_audio().is_zero());
            let format = self.config.model_output;
            if idle
                && self.ending_after_playout.is_none()
                && let Some(audio) = self.config.resilience.reconnect_prompt.audio(format, reconnect::comfort_pulse)
            {
                self.play_local_prompt(&audio);
            }
        }
    }

    /// The next deadline of the reconnecting state.
    pub(super) fn outage_deadline(&self) -> Option<Instant> {
        if self.bridge.is_some() {
            return None;
        }
        let outage = self.outage.as_ref().filter(|o| !o.gave_up)?;
        Some(outage.give_up_at.min(outage.next_comfort))
    }

    /// Queues locally generated audio (in the model's output format) to the caller, through
    /// the same framing, encoder and pacer as the agent's voice.
    fn play_local_prompt(&mut self, audio: &[u8]) {
        let max_queued = self.config.max_queued_audio;
        let Some(leg) = self.legs.iter_mut().find(|leg| leg.id == CALLER) else { return };
        self.agent.queue_audio(leg, LOCAL_PROMPT_TAG, audio, max_queued);
        self.agent.finish_item(leg);
    }
}
