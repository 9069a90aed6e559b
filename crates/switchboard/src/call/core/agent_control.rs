//! The agent's own call control, sans-IO: the built-in `end_call` tool, idle re-prompts and
//! the maximum call length, and the one place where the gateway asks for a response
//! (`response.create`) so that it never asks while one is active (reference §3.2: only one
//! response may write to the default conversation; a second create is an error).
//!
//! - `end_call` (declared in `session.update` unless `agents.X.end_call = false`): executed
//!   when its `function_call` item is done with status `completed` (§5 step 3: the arguments
//!   also arrive for cancelled responses); the gateway answers the call id with a
//!   `function_call_output` (§5 step 4) and hangs up once the response is done (all its audio
//!   received) and that audio has been played out over RTP: the goodbye is heard in full.
//! - Idle (`agents.X.idle_timeout_secs`): the gateway's own timer, not the Realtime
//!   `idle_timeout_ms`: it runs from the agent's last packet actually *played* (the API's clock
//!   starts at `response.done` plus an estimate of playback), works whatever the turn detection
//!   and confirm mode (whose `create_response: false` would leave the API's re-prompt to us
//!   anyway), allows any timeout (the API takes 5-30 s) and counts the unanswered prompts, which
//!   the API does not. After `agents.X.idle_prompts` unanswered prompts the agent says goodbye
//!   and the call ends.
//! - Maximum length (`agents.X.max_call_secs`): the active response is cancelled, the agent
//!   says goodbye, BYE follows once it is played; [`GOODBYE_GRACE`] later the call ends anyway.

use std::time::{Duration, Instant};

use serde_json::json;
use switchboard_realtime::events::{ClientEvent, Item, ItemStatus, ResponseConfig, Tool};

use super::super::end::CallEnd;
use super::barge_in::BargeInConfig;

/// The built-in tool's name.
pub const END_CALL_TOOL: &str = "end_call";

/// How long after the time limit the call ends even if the goodbye never played.
pub const GOODBYE_GRACE: Duration = Duration::from_secs(10);

/// `event_id`s of the gateway's own `response.create`s: an `error` naming one means no response
/// is coming for it.
/// (`evt_greeting` is `session::greeting`'s.)
const RESPONSE_CREATE_IDS: [&str; 5] = ["evt_greeting", "evt_turn", "evt_idle_prompt", "evt_goodbye", "evt_announce"];

pub fn is_our_response_create(event_id: &str) -> bool {
    RESPONSE_CREATE_IDS.contains(&event_id)
}

/// The `end_call` function tool for `session.tools` (§2.4).
pub fn end_call_tool() -> Tool {
    Tool::Function {
        name: END_CALL_TOOL.into(),
        description: Some(
            "Hang up the phone call. Use it when the caller's business is done or the caller asks to end the \
             call: first say a short goodbye, then call this function in the same response."
                .into(),
        ),
        parameters: json!({"type": "object", "properties": {}}),
    }
}

/// Why the gateway asks for a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purpose {
    /// Answer what the caller said or pressed.
    Turn,
    /// "Are you still there?"
    IdlePrompt,
    /// A goodbye; the call ends this way once it has played.
    Goodbye(CallEnd),
    /// A transfer's announcement, said verbatim ("Please hold while I connect you."); the
    /// transfer goes on once it has played ([`Command::Announced`]).
    Announce(String),
}

/// What the call core must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Send(Box<ClientEvent>),
    /// Cancel the active response (the time limit).
    CancelActive,
    EndAfterPlayout(CallEnd),
    EndNow(CallEnd),
    /// The announcement's response is done (or will never come): the transfer goes on once
    /// its audio has played.
    Announced,
    /// `max_call_secs` is reached and the agent's transfer rule says to transfer rather than
    /// say goodbye.
    TransferAtMaxCall,
}

/// Everything conversational about one call, from the agent (`agents.X.*`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TalkConfig {
    pub barge_in: BargeInConfig,
    /// Keys within this time of each other make one item (`agents.X.dtmf_coalesce_ms`).
    pub dtmf_coalesce: Duration,
    /// Ask for a response after telling the model the keys (`agents.X.dtmf_response`).
    pub dtmf_response: bool,
    pub control: ControlConfig,
}

/// Settings from the agent (`agents.X.*`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ControlConfig {
    /// The `end_call` tool is declared (`agents.X.end_call`); a call of it is executed only then.
    pub end_call: bool,
    /// `None`: no idle handling.
    pub idle_timeout: Option<Duration>,
    pub idle_prompt: String,
    pub idle_prompts: u32,
    /// Said (verbatim) before the gateway ends the call itself.
    pub goodbye: String,
    /// `None`: no limit.
    pub max_call: Option<Duration>,
}

#[derive(Debug)]
pub struct AgentControl {
    config: ControlConfig,
    /// A `response.create` was sent and its `response.created` has not come yet.
    in_flight: Option<Purpose>,
    /// The response the gateway asks for next, once none is active (one slot: a goodbye wins).
    queued: Option<Purpose>,
    /// The goodbye response being said, and how the call ends after it.
    goodbye: Option<(String, CallEnd)>,
    /// The response that called `end_call`.
    end_call_response: Option<String>,
    /// The call is ending: no more prompts or turns.
    ending: bool,
    unanswered_prompts: u32,
    max_call_at: Option<Instant>,
    hard_stop_at: Option<Instant>,
    /// The announcement response being said.
    announce_response: Option<String>,
    /// `agents.X.transfer.on_max_duration`: at `max_call` transfer instead of a goodbye.
    transfer_at_max_call: bool,
}

impl AgentControl {
    pub fn new(started: Instant, config: ControlConfig) -> Self {
        let max_call_at = config.max_call.map(|max| started + max);
        Self {
            config,
            in_flight: None,
            queued: None,
            goodbye: None,
            end_call_response: None,
            ending: false,
            unanswered_prompts: 0,
            max_call_at,
            hard_stop_at: None,
            announce_response: None,
            transfer_at_max_call: false,
        }
    }

    /// Whether the gateway has asked for a response that has not started yet.
    pub fn response_pending(&self) -> bool {
        self.in_flight.is_some() || self.queued.is_some()
    }

    pub fn is_ending(&self) -> bool {
        self.ending
    }

    /// The greeting's `response.create` was sent at call start.
    pub fn on_greeting_sent(&mut self) {
        self.in_flight = Some(Purpose::Turn);
    }

    /// Asks for a response; it is sent now when none is active, else when the active one is
    /// done. A goodbye replaces whatever was queued; nothing but a goodbye once the call is ending.
    pub fn request(&mut self, purpose: Purpose, response_active: bool) -> Vec<Command> {
        if self.ending && !matches!(purpose, Purpose::Goodbye(_)) {
            return Vec::new();
        }
        if matches!(purpose, Purpose::Goodbye(_)) {
            self.ending = true;
        }
        if self.queued.as_ref().is_some_and(|q| matches!(q, Purpose::Goodbye(_))) {
            return Vec::new();
        }
        self.queued = Some(purpose);
        self.send_queued(response_active)
    }

    /// The caller spoke or pressed a key: the prompts so far were answered.
    pub fn on_caller_activity(&mut self) {
        self.unanswered_prompts = 0;
    }

    /// At `max_call` the call is transferred ([`Command::TransferAtMaxCall`]) instead of
    /// ended with a goodbye.
    pub fn set_transfer_at_max_call(&mut self, transfer: bool) {
        self.transfer_at_max_call = transfer;
    }

    /// `response.created`.
    pub fn on_response_created(&mut self, response_id: &str) {
        match self.in_flight.take() {
            Some(Purpose::Goodbye(end)) => self.goodbye = Some((response_id.to_owned(), end)),
            Some(Purpose::Announce(_)) => self.announce_response = Some(response_id.to_owned()),
            _ => {}
        }
    }

    /// `response.create` was refused (`error`, e.g. `conversation_already_has_active_response`):
    /// a goodbye is asked for again once the active response is done; anything else is dropped
    /// (the active response answers the caller anyway).
    pub fn on_create_refused(&mut self) {
        match self.in_flight.take() {
            Some(purpose @ (Purpose::Goodbye(_) | Purpose::Announce(_))) if self.queued.is_none() => {
                self.queued = Some(purpose);
            }
            _ => {}
        }
    }

    /// `response.done`; `response_active`: whether another response is still active.
    pub fn on_response_done(&mut self, response_id: &str, response_active: bool) -> Vec<Command> {
        let mut commands = Vec::new();
        if self.goodbye.as_ref().is_some_and(|(id, _)| id == response_id)
            && let Some((_, end)) = self.goodbye.take()
        {
            commands.push(Command::EndAfterPlayout(end));
        }
        if self.end_call_response.as_deref() == Some(response_id) {
            self.end_call_response = None;
            commands.push(Command::EndAfterPlayout(CallEnd::AgentHangup));
        }
        if self.announce_response.as_deref() == Some(response_id) {
            self.announce_response = None;
            commands.push(Command::Announced);
        }
        if commands.is_empty() {
            commands.extend(self.send_queued(response_active));
        }
        commands
    }

    /// The Realtime session was replaced (a reconnect or a rollover): what was asked of the old
    /// one will never be answered there. A goodbye asked for or playing is asked for again; an
    /// `end_call` whose response was cut off ends the call after what was heard; any other
    /// request is dropped (the new session is told the conversation and picks up on its own).
    pub fn on_session_replaced(&mut self) -> Vec<Command> {
        if self.end_call_response.take().is_some() {
            return vec![Command::EndAfterPlayout(CallEnd::AgentHangup)];
        }
        // An announcement the old session was saying (or was asked for): the transfer does not
        // wait for it.
        let announcing = self.announce_response.take().is_some();
        if announcing || matches!(self.in_flight, Some(Purpose::Announce(_))) {
            self.in_flight = None;
            return vec![Command::Announced];
        }
        let goodbye = match self.in_flight.take() {
            Some(Purpose::Goodbye(end)) => Some(end),
            _ => self.goodbye.take().map(|(_, end)| end),
        };
        if let Some(end) = goodbye {
            self.queued = Some(Purpose::Goodbye(end));
        }
        self.send_queued(false)
    }

    /// `response.output_item.done`: a completed `end_call` function call is executed.
    pub fn on_output_item_done(&mut self, response_id: &str, item: &Item) -> Vec<Command> {
        let Item::FunctionCall(call) = item else { return Vec::new() };
        if !self.config.end_call || call.name != END_CALL_TOOL || call.status != Some(ItemStatus::Completed) {
            return Vec::new();
        }
        let Some(call_id) = call.call_id.clone() else { return Vec::new() };
        self.ending = true;
        self.queued = None;
        self.end_call_response = Some(response_id.to_owned());
        let output = Item::function_call_output(call_id, json!({"status": "hanging_up"}).to_string());
        let event = ClientEvent::ConversationItemCreate { event_id: None, previous_item_id: None, item: output };
        vec![Command::Send(Box::new(event))]
    }

    /// When [`on_timeout`](Self::on_timeout) is next due, given when the line went quiet
    /// (`quiet_since`, `None` while anyone is talking or a response is coming).
    pub fn poll_timeout(&self, quiet_since: Option<Instant>) -> Option<Instant> {
        let idle = match (self.config.idle_timeout, quiet_since) {
            (Some(timeout), Some(since)) if !self.ending && !self.response_pending() => Some(since + timeout),
            _ => None,
        };
        let max_call = self.max_call_at.filter(|_| self.hard_stop_at.is_none());
        [idle, max_call, self.hard_stop_at].into_iter().flatten().min()
    }

    /// The idle and call-length timers.
    pub fn on_timeout(&mut self, now: Instant, quiet_since: Option<Instant>, response_active: bool) -> Vec<Command> {
        if self.hard_stop_at.is_some_and(|at| now >= at) {
            return vec![Command::EndNow(CallEnd::MaxDuration)];
        }
        if self.transfer_at_max_call && self.max_call_at.is_some_and(|at| now >= at) {
            // Once: a transfer that fails falls back as `on_failure` says, with no limit left.
            self.max_call_at = None;
            return vec![Command::TransferAtMaxCall];
        }
        if self.hard_stop_at.is_none() && self.max_call_at.is_some_and(|at| now >= at) {
            self.hard_stop_at = Some(now + GOODBYE_GRACE);
            let mut commands = Vec::new();
            if response_active {
                commands.push(Command::CancelActive);
            }
            commands.extend(self.request(Purpose::Goodbye(CallEnd::MaxDuration), response_active));
            return commands;
        }
        let idle_due = match (self.config.idle_timeout, quiet_since) {
            (Some(timeout), Some(since)) if !self.ending && !self.response_pending() => Some(since + timeout),
            _ => None,
        };
        if idle_due.is_none_or(|due| now < due) {
            return Vec::new();
        }
        if self.unanswered_prompts < self.config.idle_prompts {
            self.unanswered_prompts += 1;
            self.request(Purpose::IdlePrompt, response_active)
        } else {
            self.request(Purpose::Goodbye(CallEnd::CallerIdle), response_active)
        }
    }

    fn send_queued(&mut self, response_active: bool) -> Vec<Command> {
        if response_active || self.in_flight.is_some() {
            return Vec::new();
        }
        let Some(purpose) = self.queued.take() else { return Vec::new() };
        let event = self.response_create(&purpose);
        self.in_flight = Some(purpose);
        vec![Command::Send(Box::new(event))]
    }

    fn response_create(&self, purpose: &Purpose) -> ClientEvent {
        let (event_id, instructions) = match purpose {
            Purpose::Turn => ("evt_turn", None),
            Purpose::IdlePrompt => ("evt_idle_prompt", Some(self.config.idle_prompt.clone())),
            Purpose::Goodbye(_) => (
                "evt_goodbye",
                Some(format!("End the conversation now by saying exactly: \"{}\"", self.config.goodbye)),
            ),
            Purpose::Announce(text) => {
                ("evt_announce", Some(format!("You are transferring the caller. Say exactly: \"{text}\"")))
            }
        };
        ClientEvent::ResponseCreate {
            event_id: Some(event_id.into()),
            response: instructions
                .map(|instructions| ResponseConfig { instructions: Some(instructions), ..Default::default() }),
        }
    }
}
