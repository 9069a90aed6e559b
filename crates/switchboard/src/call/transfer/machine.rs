//! The transfer state machine, sans-IO (time is a parameter): what to do next after each thing
//! that happens to one transfer, from the announcement to the outcome and the fallback.
//!
//! ```text
//! Idle -start-> Announcing -announced-> Referring (REFER sent) -202-> Accepted
//!                     |                     |  NOTIFY 1xx: stay; NOTIFY 2xx: Transferred (BYE our leg)
//!                     |                     |  REFER 3xx-6xx, NOTIFY >= 300, timeout, dialog gone: Failed
//!                     +-(bridge)-> Dialing (INVITE via trunk) -answered-> Bridged
//!                                           |  no answer, busy, failure: Failed
//! Failed -> on_failure: agent (told, speaks) | hangup (goodbye, BYE) | queue:NAME (one more try)
//! Bridged: the human's BYE or lost media ends the call; the caller's BYE hangs up the human.
//! ```
//!
//! The model's `transfer_to_human` call gets exactly one `function_call_output`, held until
//! the outcome is known: `{"status":"transferred"}` (the call ends), `{"status":"connected"}`
//! (bridged; the model hears nothing while bridged), or `{"status":"failed", ...}` saying what
//! happened, after which the agent speaks (`on_failure = "agent"`) or says goodbye (`hangup`).
//! A transfer a rule started (no call id) is told to the model as a system message instead.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::config::{OnFailure, TransferMethod};

/// Who asked for the transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// The model's `transfer_to_human` call, answered once with its outcome.
    Tool { call_id: String },
    /// A rule (`dtmf`, `max_duration`, `ai_unreachable`).
    Rule(&'static str),
}

/// The settings one transfer runs with (`agents.X.transfer`).
#[derive(Debug, Clone)]
pub struct MachineConfig {
    pub method: TransferMethod,
    pub refer_timeout: Duration,
    pub ring_timeout: Duration,
    pub on_failure: OnFailure,
    /// Whether there is an announcement to play first.
    pub announce: bool,
    /// Queue name -> target URI.
    pub queues: BTreeMap<String, String>,
}

/// How a transfer attempt ended (the `outcome` label of `switchboard_transfers_total`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// REFER: the referred call was answered (NOTIFY 2xx); our leg ends.
    Transferred,
    /// Bridge: the human answered; the gateway relays the audio.
    Bridged,
    /// REFER refused by the caller's side (its final status).
    Refused(u16),
    /// The referred call failed (NOTIFY sipfrag status >= 300).
    Failed(u16),
    /// Bridge: the human's side answered with a failure status (busy is 486/600).
    Rejected(u16),
    /// Bridge: nobody answered within `ring_timeout_secs`.
    NoAnswer,
    /// No final NOTIFY (or no REFER answer) within `refer_timeout_secs`.
    Timeout,
    /// The request could not be sent or the dialog ended under it.
    Error(String),
}

impl Outcome {
    /// The bounded metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Transferred => "transferred",
            Outcome::Bridged => "bridged",
            Outcome::Refused(_) => "refused",
            Outcome::Failed(_) => "failed",
            Outcome::Rejected(486 | 600) => "busy",
            Outcome::Rejected(_) => "rejected",
            Outcome::NoAnswer => "no_answer",
            Outcome::Timeout => "timeout",
            Outcome::Error(_) => "error",
        }
    }

    /// The journal's text: the label and the SIP status or cause.
    pub fn detail(&self) -> String {
        match self {
            Outcome::Refused(code) | Outcome::Failed(code) | Outcome::Rejected(code) => {
                format!("{} {code}", self.label())
            }
            Outcome::Error(why) => format!("error: {why}"),
            _ => self.label().to_owned(),
        }
    }

    fn is_success(&self) -> bool {
        matches!(self, Outcome::Transferred | Outcome::Bridged)
    }

    /// What the model is told happened, in words.
    fn explanation(&self) -> String {
        match self {
            Outcome::Refused(code) => format!("the caller's phone refused the transfer (SIP {code})"),
            Outcome::Failed(code) | Outcome::Rejected(code) if matches!(code, 486 | 600) => {
                "the line was busy".to_owned()
            }
            Outcome::Failed(code) | Outcome::Rejected(code) => format!("the call to the person failed (SIP {code})"),
            Outcome::NoAnswer => "nobody answered".to_owned(),
            Outcome::Timeout => "the transfer did not complete in time".to_owned(),
            Outcome::Error(_) => "the transfer could not be started".to_owned(),
            Outcome::Transferred | Outcome::Bridged => "the transfer succeeded".to_owned(),
        }
    }
}

/// What the shell must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Ask the agent to say the announcement; call [`TransferMachine::announced`] once played.
    Announce,
    /// Send REFER in the caller's dialog with this target (`refer`).
    Refer { target: String },
    /// Call the human through the trunk (`bridge`).
    Dial { target: String },
    /// Connect the caller and the human's legs.
    Bridge,
    /// Hang up the human's leg (a call being set up is cancelled).
    HangUpHuman,
    /// The tool call's one output; `succeeded`: the transfer worked; `respond`: ask the model
    /// to speak after it.
    ToolOutput { call_id: String, output: String, succeeded: bool, respond: bool },
    /// Tell the model (system message) what happened and let it speak.
    TellAgent(String),
    /// The agent says goodbye, then the call ends (`on_failure = "hangup"`).
    Goodbye,
    /// End the call now with BYE: the caller is with the human (REFER) or the bridge is over.
    EndCall,
    /// Record an attempt's outcome (journal and `switchboard_transfers_total`).
    Record { queue: String, target: String, outcome: Outcome },
    /// The call is back with the agent: its rules may fire again.
    BackToAgent,
}

/// The announcement is waited for at most this long (a response that never comes must not
/// hold the transfer): then the transfer goes on.
pub const MAX_ANNOUNCEMENT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Idle,
    Announcing {
        deadline: Instant,
    },
    /// REFER sent; `accepted` once its 2xx came. A NOTIFY may come before the 2xx.
    Referring {
        deadline: Instant,
        accepted: bool,
    },
    Dialing {
        deadline: Instant,
    },
    Bridged,
}

/// One call's transfers, one at a time.
#[derive(Debug)]
pub struct TransferMachine {
    config: MachineConfig,
    phase: Phase,
    queue: String,
    target: String,
    trigger: Option<Trigger>,
    /// The `queue:NAME` fallback was used (it is tried once).
    retried: bool,
}

/// Why a transfer cannot start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    #[error("no queue named `{0}` is configured")]
    UnknownQueue(String),
    #[error("a transfer is already in progress")]
    Busy,
}

impl TransferMachine {
    pub fn new(config: MachineConfig) -> Self {
        TransferMachine {
            config,
            phase: Phase::Idle,
            queue: String::new(),
            target: String::new(),
            trigger: None,
            retried: false,
        }
    }

    /// Whether a transfer is under way (or the call is bridged).
    pub fn active(&self) -> bool {
        self.phase != Phase::Idle
    }

    pub fn is_bridged(&self) -> bool {
        self.phase == Phase::Bridged
    }

    /// The queue and target of the transfer under way.
    pub fn queue(&self) -> (&str, &str) {
        (&self.queue, &self.target)
    }

    /// Starts a transfer to a configured queue. A queue the configuration does not name is
    /// refused here: nothing is ever dialled from the model's free text.
    pub fn start(&mut self, now: Instant, queue: &str, trigger: Trigger) -> Result<Vec<Action>, StartError> {
        if self.active() {
            return Err(StartError::Busy);
        }
        let target = self.config.queues.get(queue).ok_or_else(|| StartError::UnknownQueue(queue.to_owned()))?;
        self.queue = queue.to_owned();
        self.target = target.clone();
        self.trigger = Some(trigger);
        self.retried = false;
        if self.config.announce {
            self.phase = Phase::Announcing { deadline: now + MAX_ANNOUNCEMENT };
            return Ok(vec![Action::Announce]);
        }
        Ok(self.go(now))
    }

    /// The announcement has played.
    pub fn announced(&mut self, now: Instant) -> Vec<Action> {
        if !matches!(self.phase, Phase::Announcing { .. }) {
            return Vec::new();
        }
        self.go(now)
    }

    /// The final response to our REFER (RFC 3515 §2.4.2: 2xx accepted; anything else refused).
    pub fn refer_answered(&mut self, now: Instant, status: u16) -> Vec<Action> {
        let Phase::Referring { deadline, .. } = self.phase else { return Vec::new() };
        if (200..300).contains(&status) {
            self.phase = Phase::Referring { deadline, accepted: true };
            return Vec::new();
        }
        self.fail(now, Outcome::Refused(status))
    }

    /// The REFER got no final response (Timer F) or could not be sent.
    pub fn refer_failed(&mut self, now: Instant, why: String) -> Vec<Action> {
        if !matches!(self.phase, Phase::Referring { .. }) {
            return Vec::new();
        }
        self.fail(now, Outcome::Error(why))
    }

    /// A NOTIFY's sipfrag status (RFC 3515 §2.4.5): 1xx progress, 2xx the caller is with the
    /// human, >= 300 the referred call failed.
    pub fn notified(&mut self, now: Instant, status: u16) -> Vec<Action> {
        if !matches!(self.phase, Phase::Referring { .. }) {
            return Vec::new();
        }
        match status {
            100..=199 => Vec::new(),
            200..=299 => self.succeed(Outcome::Transferred),
            _ => self.fail(now, Outcome::Failed(status)),
        }
    }

    /// The human answered the bridged transfer's INVITE.
    pub fn human_answered(&mut self) -> Vec<Action> {
        if !matches!(self.phase, Phase::Dialing { .. }) {
            return vec![Action::HangUpHuman];
        }
        self.succeed(Outcome::Bridged)
    }

    /// The human's INVITE failed (final status; `None`: no answer within the ring time, or the
    /// call could not be placed).
    pub fn human_failed(&mut self, now: Instant, status: Option<u16>, why: &str) -> Vec<Action> {
        if !matches!(self.phase, Phase::Dialing { .. }) {
            return Vec::new();
        }
        let outcome = match status {
            Some(code) => Outcome::Rejected(code),
            None if why == "no_answer" => Outcome::NoAnswer,
            None => Outcome::Error(why.to_owned()),
        };
        self.fail(now, outcome)
    }

    /// The bridged human hung up (BYE) or their media stopped: the call is over (the caller
    /// wanted a person, and had one; the agent does not take the call back).
    pub fn human_left(&mut self) -> Vec<Action> {
        if self.phase != Phase::Bridged {
            return Vec::new();
        }
        self.phase = Phase::Idle;
        vec![Action::HangUpHuman, Action::EndCall]
    }

    /// The caller's dialog ended (BYE) during the transfer: the human is hung up. The call's
    /// own end is recorded by the caller; an unfinished attempt is recorded as an error.
    pub fn caller_left(&mut self) -> Vec<Action> {
        let actions = match &self.phase {
            Phase::Idle | Phase::Announcing { .. } => Vec::new(),
            Phase::Bridged => vec![Action::HangUpHuman],
            Phase::Referring { .. } => vec![self.record(Outcome::Error("the caller's dialog ended".into()))],
            Phase::Dialing { .. } => {
                vec![Action::HangUpHuman, self.record(Outcome::Error("the caller hung up".into()))]
            }
        };
        self.phase = Phase::Idle;
        actions
    }

    /// The attempt's deadline (REFER outcome or ring time).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Announcing { deadline } | Phase::Referring { deadline, .. } | Phase::Dialing { deadline } => {
                Some(deadline)
            }
            _ => None,
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Action> {
        match self.phase {
            Phase::Announcing { deadline } if now >= deadline => self.go(now),
            Phase::Referring { deadline, .. } if now >= deadline => self.fail(now, Outcome::Timeout),
            Phase::Dialing { deadline } if now >= deadline => {
                let mut actions = vec![Action::HangUpHuman];
                actions.extend(self.fail(now, Outcome::NoAnswer));
                actions
            }
            _ => Vec::new(),
        }
    }

    fn go(&mut self, now: Instant) -> Vec<Action> {
        match self.config.method {
            TransferMethod::Refer => {
                self.phase = Phase::Referring { deadline: now + self.config.refer_timeout, accepted: false };
                vec![Action::Refer { target: self.target.clone() }]
            }
            TransferMethod::Bridge => {
                // The trunk's CANCEL on ring timeout comes first; this is the backstop.
                self.phase = Phase::Dialing { deadline: now + self.config.ring_timeout + Duration::from_secs(5) };
                vec![Action::Dial { target: self.target.clone() }]
            }
        }
    }

    fn record(&self, outcome: Outcome) -> Action {
        Action::Record { queue: self.queue.clone(), target: self.target.clone(), outcome }
    }

    fn succeed(&mut self, outcome: Outcome) -> Vec<Action> {
        let bridged = outcome == Outcome::Bridged;
        let mut actions = vec![self.record(outcome)];
        let status = if bridged { "connected" } else { "transferred" };
        if let Some(Trigger::Tool { call_id }) = self.trigger.take() {
            let output = json!({"status": status, "queue": self.queue}).to_string();
            actions.push(Action::ToolOutput { call_id, output, succeeded: true, respond: false });
        }
        if bridged {
            self.phase = Phase::Bridged;
            actions.push(Action::Bridge);
        } else {
            self.phase = Phase::Idle;
            actions.push(Action::EndCall);
        }
        actions
    }

    fn fail(&mut self, now: Instant, outcome: Outcome) -> Vec<Action> {
        debug_assert!(!outcome.is_success());
        let explanation = outcome.explanation();
        let mut actions = vec![self.record(outcome)];
        if let OnFailure::Queue(fallback) = &self.config.on_failure
            && !self.retried
            && let Some(target) = self.config.queues.get(fallback)
        {
            self.retried = true;
            self.queue = fallback.clone();
            self.target = target.clone();
            actions.extend(self.go(now));
            return actions;
        }
        self.phase = Phase::Idle;
        let queue = self.queue.clone();
        let hangup = self.config.on_failure == OnFailure::Hangup;
        let next = if hangup {
            "The call will now end: say a short goodbye."
        } else {
            "You are still talking with the caller: tell them, and offer to help or to try again later."
        };
        match self.trigger.take() {
            Some(Trigger::Tool { call_id }) => {
                let output =
                    json!({"status": "failed", "queue": queue, "reason": explanation, "next": next}).to_string();
                actions.push(Action::ToolOutput { call_id, output, succeeded: false, respond: !hangup });
            }
            Some(Trigger::Rule(_)) | None if !hangup => {
                actions.push(Action::TellAgent(format!(
                    "The caller was being transferred to a person ({queue}), but {explanation}. {next}"
                )));
            }
            _ => {}
        }
        actions.push(if hangup { Action::Goodbye } else { Action::BackToAgent });
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SALES: &str = "sip:sales@pbx.example.com";
    const BACKUP: &str = "sip:backup@pbx.example.com";

    fn config(method: TransferMethod, on_failure: OnFailure, announce: bool) -> MachineConfig {
        MachineConfig {
            method,
            refer_timeout: Duration::from_secs(30),
            ring_timeout: Duration::from_secs(20),
            on_failure,
            announce,
            queues: BTreeMap::from([("sales".into(), SALES.into()), ("backup".into(), BACKUP.into())]),
        }
    }

    fn tool() -> Trigger {
        Trigger::Tool { call_id: "call_1".into() }
    }

    fn record(queue: &str, target: &str, outcome: Outcome) -> Action {
        Action::Record { queue: queue.into(), target: target.into(), outcome }
    }

    /// Runs a REFER transfer with the announcement through `events` and returns the actions of
    /// the last one.
    fn refer_after(events: &[&str], on_failure: OnFailure) -> (TransferMachine, Vec<Action>) {
        let t0 = Instant::now();
        let mut m = TransferMachine::new(config(TransferMethod::Refer, on_failure, true));
        assert_eq!(m.start(t0, "sales", tool()).unwrap(), vec![Action::Announce]);
        assert_eq!(m.announced(t0), vec![Action::Refer { target: SALES.into() }]);
        let mut last = Vec::new();
        for event in events {
            last = match *event {
                "202" => m.refer_answered(t0, 202),
                "603" => m.refer_answered(t0, 603),
                "timer_f" => m.refer_failed(t0, "no answer".into()),
                "100" => m.notified(t0, 100),
                "180" => m.notified(t0, 180),
                "200" => m.notified(t0, 200),
                "486" => m.notified(t0, 486),
                "timeout" => m.handle_timeout(t0 + Duration::from_secs(30)),
                "bye" => m.caller_left(),
                other => panic!("{other}"),
            };
        }
        (m, last)
    }

    fn failed_output(reason: &str, respond: bool, next_agent: bool) -> Action {
        let next = if next_agent {
            "You are still talking with the caller: tell them, and offer to help or to try again later."
        } else {
            "The call will now end: say a short goodbye."
        };
        Action::ToolOutput {
            call_id: "call_1".into(),
            output: json!({"status":"failed","queue":"sales","reason":reason,"next":next}).to_string(),
            succeeded: false,
            respond,
        }
    }

    #[test]
    fn refer_outcomes_table() {
        let transferred = vec![
            record("sales", SALES, Outcome::Transferred),
            Action::ToolOutput {
                call_id: "call_1".into(),
                output: json!({"status":"transferred","queue":"sales"}).to_string(),
                succeeded: true,
                respond: false,
            },
            Action::EndCall,
        ];
        let back = |outcome: Outcome, reason: &str| {
            vec![record("sales", SALES, outcome), failed_output(reason, true, true), Action::BackToAgent]
        };
        let cases: Vec<(&[&str], Vec<Action>)> = vec![
            (&["202", "100", "180", "200"], transferred.clone()),
            // A NOTIFY may overtake the REFER's 202.
            (&["200"], transferred),
            (&["202", "100"], vec![]),
            (&["603"], back(Outcome::Refused(603), "the caller's phone refused the transfer (SIP 603)")),
            (&["202", "100", "486"], back(Outcome::Failed(486), "the line was busy")),
            (&["202", "180", "timeout"], back(Outcome::Timeout, "the transfer did not complete in time")),
            (&["timer_f"], back(Outcome::Error("no answer".into()), "the transfer could not be started")),
            (&["202", "bye"], vec![record("sales", SALES, Outcome::Error("the caller's dialog ended".into()))]),
            // Nothing after the outcome changes it.
            (&["202", "200", "486"], vec![]),
            (&["603", "200"], vec![]),
        ];
        for (events, expected) in cases {
            let (_, actions) = refer_after(events, OnFailure::Agent);
            assert_eq!(actions, expected, "{events:?}");
        }
    }

    #[test]
    fn a_failure_with_hangup_outputs_once_then_says_goodbye() {
        let (m, actions) = refer_after(&["603"], OnFailure::Hangup);
        assert_eq!(
            actions,
            vec![
                record("sales", SALES, Outcome::Refused(603)),
                failed_output("the caller's phone refused the transfer (SIP 603)", false, false),
                Action::Goodbye
            ]
        );
        assert!(!m.active());
    }

    #[test]
    fn a_queue_fallback_is_tried_once_then_the_agent() {
        let (mut m, actions) = refer_after(&["202", "486"], OnFailure::Queue("backup".into()));
        assert_eq!(
            actions,
            vec![record("sales", SALES, Outcome::Failed(486)), Action::Refer { target: BACKUP.into() }]
        );
        assert_eq!(m.queue(), ("backup", BACKUP));
        let now = Instant::now();
        let actions = m.refer_answered(now, 480);
        assert_eq!(actions.first(), Some(&record("backup", BACKUP, Outcome::Refused(480))));
        assert_eq!(actions.last(), Some(&Action::BackToAgent));
        assert_eq!(actions.iter().filter(|a| matches!(a, Action::ToolOutput { .. })).count(), 1);
    }

    #[test]
    fn unknown_queues_are_refused_and_nothing_is_dialled() {
        let mut m = TransferMachine::new(config(TransferMethod::Refer, OnFailure::Agent, true));
        let now = Instant::now();
        assert_eq!(
            m.start(now, "sip:+1900555@evil.example", tool()),
            Err(StartError::UnknownQueue("sip:+1900555@evil.example".into()))
        );
        assert!(!m.active());
        assert_eq!(m.start(now, "sales", tool()), Ok(vec![Action::Announce]));
        assert_eq!(m.start(now, "sales", tool()), Err(StartError::Busy));
        // An announcement that never plays does not hold the transfer.
        assert_eq!(m.poll_timeout(), Some(now + MAX_ANNOUNCEMENT));
        assert_eq!(m.handle_timeout(now + MAX_ANNOUNCEMENT), vec![Action::Refer { target: SALES.into() }]);
        assert!(m.announced(now + MAX_ANNOUNCEMENT).is_empty(), "once");
    }

    #[test]
    fn without_an_announcement_the_refer_goes_at_once_and_rules_are_told_as_messages() {
        let mut m = TransferMachine::new(config(TransferMethod::Refer, OnFailure::Agent, false));
        let now = Instant::now();
        assert_eq!(m.start(now, "sales", Trigger::Rule("dtmf")).unwrap(), vec![Action::Refer { target: SALES.into() }]);
        assert_eq!(m.poll_timeout(), Some(now + Duration::from_secs(30)));
        assert!(m.handle_timeout(now + Duration::from_secs(29)).is_empty());
        let actions = m.notified(now, 503);
        assert_eq!(
            actions,
            vec![
                record("sales", SALES, Outcome::Failed(503)),
                Action::TellAgent(
                    "The caller was being transferred to a person (sales), but the call to the person failed \
                     (SIP 503). You are still talking with the caller: tell them, and offer to help or to try \
                     again later."
                        .into()
                ),
                Action::BackToAgent
            ]
        );
        // Back with the agent: a new transfer may start.
        assert!(m.start(now, "sales", tool()).is_ok());
    }

    #[test]
    fn bridge_outcomes_table() {
        let now = Instant::now();
        let start = || {
            let mut m = TransferMachine::new(config(TransferMethod::Bridge, OnFailure::Agent, false));
            assert_eq!(m.start(now, "sales", tool()).unwrap(), vec![Action::Dial { target: SALES.into() }]);
            m
        };
        let mut m = start();
        let actions = m.human_answered();
        assert_eq!(actions.first(), Some(&record("sales", SALES, Outcome::Bridged)));
        assert_eq!(actions.last(), Some(&Action::Bridge));
        assert!(m.is_bridged());
        assert_eq!(m.human_left(), vec![Action::HangUpHuman, Action::EndCall]);

        let mut m = start();
        m.human_answered();
        assert_eq!(m.caller_left(), vec![Action::HangUpHuman]);

        for (status, why, label, reason) in [
            (Some(486), "", "busy", "the line was busy"),
            (Some(404), "", "rejected", "the call to the person failed (SIP 404)"),
            (None, "no_answer", "no_answer", "nobody answered"),
            (None, "trunk full", "error", "the transfer could not be started"),
        ] {
            let mut m = start();
            let actions = m.human_failed(now, status, why);
            let Some(Action::Record { outcome, .. }) = actions.first() else { panic!("{actions:?}") };
            assert_eq!(outcome.label(), label);
            assert_eq!(actions.get(1), Some(&failed_output(reason, true, true)));
            assert_eq!(actions.last(), Some(&Action::BackToAgent));
        }

        // Ring time backstop: the human's call is hung up, then the failure.
        let mut m = start();
        let due = m.poll_timeout().unwrap();
        let actions = m.handle_timeout(due);
        assert_eq!(actions.first(), Some(&Action::HangUpHuman));
        assert_eq!(actions.get(1), Some(&record("sales", SALES, Outcome::NoAnswer)));
        // A late answer after the outcome is hung up.
        assert_eq!(m.human_answered(), vec![Action::HangUpHuman]);
    }

    #[test]
    fn labels_are_bounded() {
        let labels: Vec<&str> = [
            Outcome::Transferred,
            Outcome::Bridged,
            Outcome::Refused(603),
            Outcome::Failed(486),
            Outcome::Rejected(600),
            Outcome::Rejected(503),
            Outcome::NoAnswer,
            Outcome::Timeout,
            Outcome::Error("x".into()),
        ]
        .iter()
        .map(Outcome::label)
        .collect();
        assert_eq!(
            labels,
            ["transferred", "bridged", "refused", "failed", "busy", "rejected", "no_answer", "timeout", "error"]
        );
        assert_eq!(Outcome::Refused(603).detail(), "refused 603");
    }
}
