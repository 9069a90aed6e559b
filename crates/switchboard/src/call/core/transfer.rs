//! The call core's side of a transfer to a human (the rest is `call/transfer/`): the
//! announcement said by the agent and the moment it has played, the rules that start a
//! transfer (a DTMF key, `max_call_secs`, the AI unreachable), and how the model is told the
//! outcome. All sans-IO: the shell learns through [`Output::Transfer`].

use switchboard_realtime::events::{ClientEvent, Item};
use tracing::info;

use super::agent_control::Purpose;
use super::{CALLER, CallCore, DtmfDigit, Output};

/// What started a transfer other than the model's `transfer_to_human`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferRule {
    /// The caller pressed `agents.X.transfer.dtmf`.
    Dtmf,
    /// The call reached `max_call_secs` with `transfer.on_max_duration`.
    MaxDuration,
    /// The AI reconnect gave up with `transfer.on_ai_unreachable`.
    AiUnreachable,
}

impl TransferRule {
    /// The reason recorded and put in the `{reason}` header placeholder.
    pub fn label(self) -> &'static str {
        match self {
            TransferRule::Dtmf => "dtmf",
            TransferRule::MaxDuration => "max_duration",
            TransferRule::AiUnreachable => "ai_unreachable",
        }
    }
}

/// What the core tells the shell about a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferSignal {
    /// The announcement asked for with [`CallCore::announce_transfer`] has played (or was cut
    /// short by a barge-in, or lost with the session): go on with the transfer.
    Announced,
    /// A rule fired: transfer to the default queue.
    Rule(TransferRule),
}

/// The agent's transfer rules (`agents.X.transfer`), set once per call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransferRules {
    pub dtmf: Option<DtmfDigit>,
    pub on_max_duration: bool,
    pub on_ai_unreachable: bool,
}

#[derive(Debug, Default)]
pub(super) struct TransferHooks {
    rules: TransferRules,
    /// A transfer is under way: rules stay quiet, the key goes nowhere.
    busy: bool,
    /// The announcement's response is done; [`TransferSignal::Announced`] once it has played.
    announced_pending: bool,
}

impl CallCore {
    /// The agent's transfer rules for this call.
    pub fn set_transfer_rules(&mut self, rules: TransferRules) {
        self.transfer.rules = rules;
        self.control.set_transfer_at_max_call(rules.on_max_duration);
    }

    /// A transfer started (rules are quiet until [`transfer_finished`](Self::transfer_finished)).
    pub fn transfer_started(&mut self) {
        self.transfer.busy = true;
    }

    /// The transfer is over and the call goes on with the agent.
    pub fn transfer_finished(&mut self) {
        self.transfer.busy = false;
        self.transfer.announced_pending = false;
    }

    /// Asks the agent to say `text` (verbatim, once no response is active); the shell gets
    /// [`TransferSignal::Announced`] once it has played. Returns false when nothing will be
    /// said (empty text, no AI connection): go on at once.
    pub fn announce_transfer(&mut self, text: &str) -> bool {
        if text.trim().is_empty() || self.outage.is_some() || self.ended.is_some() || self.control.is_ending() {
            return false;
        }
        let active = self.agent.conversation.has_active_response();
        let commands = self.control.request(Purpose::Announce(text.to_owned()), active);
        self.run_control(commands);
        true
    }

    /// The one output of a tool call whose result needs no answer from the model now (the
    /// transfer succeeded, or the agent is about to say goodbye): no `response.create`.
    pub fn complete_tool_quietly(&mut self, call_id: &str, output: String) {
        // Through the tools' pending table: exactly one output per call_id (call/core/tools.rs).
        self.complete_pending_tool(call_id, output, false);
    }

    /// Tells the model what happened to a transfer it did not ask for (a rule's), as a system
    /// message, and asks it to speak.
    pub fn tell_agent(&mut self, text: &str) {
        if self.ended.is_some() {
            return;
        }
        let item = Item::system_text(text.to_owned());
        self.send_realtime(ClientEvent::ConversationItemCreate { event_id: None, previous_item_id: None, item });
        let active = self.agent.conversation.has_active_response();
        let commands = self.control.request(Purpose::Turn, active);
        self.run_control(commands);
    }

    /// Adds a system note to the conversation without asking the model to speak: an operator
    /// started a transfer, and the model should know why the announcement comes (admin API).
    pub fn inform_agent(&mut self, text: &str) {
        if self.ended.is_some() {
            return;
        }
        let item = Item::system_text(text.to_owned());
        self.send_realtime(ClientEvent::ConversationItemCreate { event_id: None, previous_item_id: None, item });
    }

    /// The agent says `goodbye` and the call ends after it (`on_failure = "hangup"`), or at
    /// once when there is no AI to say it.
    pub fn goodbye_after_transfer(&mut self, end: super::super::end::CallEnd) {
        if self.outage.is_some() {
            self.end_after_playout(end);
            return;
        }
        let active = self.agent.conversation.has_active_response();
        let commands = self.control.request(Purpose::Goodbye(end), active);
        self.run_control(commands);
    }

    /// [`super::agent_control::Command::Announced`].
    pub(super) fn on_transfer_announced(&mut self) {
        self.transfer.announced_pending = true;
        self.transfer_if_played_out();
    }

    /// Signals [`TransferSignal::Announced`] once the announcement's audio has all been sent.
    pub(super) fn transfer_if_played_out(&mut self) {
        if !self.transfer.announced_pending {
            return;
        }
        let played_out = self.legs.first().is_none_or(|leg| leg.held_audio().is_zero());
        if played_out {
            self.transfer.announced_pending = false;
            self.outputs.push_back(Output::Transfer(TransferSignal::Announced));
        }
    }

    /// A key from the caller: the transfer key (when set and no transfer is under way) starts
    /// a transfer and goes no further (not to the model). Returns whether it was taken.
    pub(super) fn transfer_key(&mut self, leg: super::LegId, digit: DtmfDigit) -> bool {
        if leg != CALLER || self.transfer.busy || self.transfer.rules.dtmf != Some(digit) {
            return false;
        }
        info!("transfer key pressed");
        self.transfer.busy = true;
        self.outputs.push_back(Output::Transfer(TransferSignal::Rule(TransferRule::Dtmf)));
        true
    }

    /// `max_call_secs` with `on_max_duration` ([`super::agent_control::Command::TransferAtMaxCall`]).
    pub(super) fn transfer_at_max_call(&mut self) {
        if self.transfer.busy {
            return;
        }
        self.transfer.busy = true;
        self.outputs.push_back(Output::Transfer(TransferSignal::Rule(TransferRule::MaxDuration)));
    }

    /// The reconnect gave up: with `on_ai_unreachable` a transfer replaces the give-up prompt
    /// and BYE. Returns whether it did.
    pub(super) fn transfer_on_ai_unreachable(&mut self) -> bool {
        if !self.transfer.rules.on_ai_unreachable || self.transfer.busy {
            return false;
        }
        self.transfer.busy = true;
        self.outputs.push_back(Output::Transfer(TransferSignal::Rule(TransferRule::AiUnreachable)));
        true
    }

    /// The caller is with the human (REFER's NOTIFY 2xx) or the bridged human left: BYE on the
    /// caller's leg.
    pub fn end_transferred(&mut self) {
        self.end(super::super::end::CallEnd::Transferred);
    }

    /// Whether the Realtime connection is down (a transfer then has nobody to announce it or
    /// to fall back to).
    pub fn ai_unreachable(&self) -> bool {
        self.outage.is_some()
    }
}

#[cfg(test)]
pub(super) fn rules_for_tests(key: char) -> TransferRules {
    TransferRules { dtmf: DtmfDigit::from_char(key), on_max_duration: true, on_ai_unreachable: true }
}
