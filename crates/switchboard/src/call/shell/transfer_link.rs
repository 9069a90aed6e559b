//! The shell's side of a transfer: carries out what the [`TransferMachine`] asks (the
//! announcement, the REFER in its own task, the tool's output, the journal and the metric) and
//! feeds it what happens (the REFER's answer, NOTIFY sipfrag, the deadline, the caller's BYE).
//! A child of `call::shell` so that it extends `MediaLoop`; the decisions are in
//! `call/transfer/machine.rs`.

use std::time::{Duration, Instant};

use switchboard_sdp::NegotiatedMedia;
use switchboard_sip::message::Method;
use switchboard_sip::sipfrag;
use switchboard_sip::{Dialog, DialogEvent, DialogRequester};
use tokio::sync::mpsc;
use tracing::{Instrument, debug, info, warn};

use super::super::core::ToolCall;
use super::super::core::transfer::{TransferRule, TransferRules, TransferSignal};
use super::super::core::{CALLER, DtmfDigit, HUMAN, LegId};
use super::super::end::CallEnd;
use super::super::journal::{ToolRecord, ToolStatus, TransferRecord};
use super::super::transfer::dial::{AnsweredHuman, DialFailure, dial_human};
use super::super::transfer::machine::{Action, MachineConfig, Outcome, StartError, TransferMachine, Trigger};
use super::super::transfer::{HeaderContext, context_headers, parse_arguments, referred_by};
use super::{AbortOnDrop, MediaLoop};
use crate::calls::{CallGuard, OperatorCommand, TransferRefusal, TransferView};
use crate::config::{AgentConfig, TransferConfig};
use crate::rtp_ports::PortLease;
use crate::telemetry;

/// The trigger and stated reason of a transfer an operator started (admin API).
const OPERATOR_TRIGGER: &str = "operator";

/// REFER outcomes waiting for the call's task at most (one REFER is outstanding at a time).
const EVENT_QUEUE: usize = 4;

/// What a transfer's background task reports.
pub(super) enum TransferEvent {
    /// The REFER's final response.
    ReferAnswered(u16),
    /// The REFER got none (Timer F) or could not be sent.
    ReferFailed(String),
    /// Bridge: the human answered.
    HumanAnswered(Box<AnsweredHuman>),
    /// Bridge: the human's call did not connect.
    HumanFailed(DialFailure),
}

/// What [`TransferLink::next`] brings.
pub(super) enum TransferInput {
    Task(TransferEvent),
    /// The bridged human's dialog (`None`: it is over).
    Human(Option<DialogEvent>),
    /// An operator's command (admin API).
    Operator(OperatorCommand),
}

impl MediaLoop<'_> {
    pub(super) fn on_transfer_input(&mut self, input: TransferInput) {
        match input {
            TransferInput::Task(event) => self.on_transfer_event(event),
            TransferInput::Human(event) => self.on_human_dialog_event(event),
            TransferInput::Operator(command) => self.on_operator_command(command),
        }
    }
}

/// A bridged transfer's human, from the answer to the hang-up.
struct HumanCall {
    dialog: Dialog,
    /// Held while the leg uses the port; freed after the hang-up.
    lease: PortLease,
    /// The call's place in the registry (the trunk's concurrency).
    guard: CallGuard,
}

/// One call's transfer state in the shell.
pub(super) struct TransferLink {
    /// `None`: the agent has no queues.
    machine: Option<TransferMachine>,
    config: TransferConfig,
    /// The gateway's call id and the agent's name, for the `X-` headers.
    call_id: String,
    agent: String,
    requester: DialogRequester,
    events_tx: mpsc::Sender<TransferEvent>,
    events_rx: mpsc::Receiver<TransferEvent>,
    /// The stated reason of the transfer under way (the model's, or the rule's name).
    reason: String,
    /// The tool call being answered and when it came (for its journal entry).
    tool_call: Option<(String, Instant)>,
    /// The REFER or the human's INVITE in flight (aborting a ringing INVITE cancels it).
    task: Option<AbortOnDrop<()>>,
    /// Bridge: the answered human's dialog.
    human: Option<HumanCall>,
    /// Bridge: the human's negotiated stream and RTP socket, until the leg is attached.
    pending_leg: Option<(NegotiatedMedia, std::net::UdpSocket)>,
    /// Operator commands from the admin API (`None`: the call is not in the registry).
    commands: Option<mpsc::Receiver<OperatorCommand>>,
}

impl TransferLink {
    pub(super) fn new(
        agent: &AgentConfig,
        call_id: &str,
        agent_name: &str,
        requester: DialogRequester,
        commands: Option<mpsc::Receiver<OperatorCommand>>,
    ) -> Self {
        let config = agent.transfer.clone();
        let machine = config.enabled().then(|| {
            TransferMachine::new(MachineConfig {
                method: config.method,
                refer_timeout: Duration::from_secs(config.refer_timeout_secs),
                ring_timeout: Duration::from_secs(config.ring_timeout_secs),
                on_failure: config.on_failure(),
                announce: !config.announce.trim().is_empty(),
                queues: config.queues.clone(),
            })
        });
        let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
        TransferLink {
            machine,
            config,
            call_id: call_id.to_owned(),
            agent: agent_name.to_owned(),
            requester,
            events_tx,
            events_rx,
            reason: String::new(),
            tool_call: None,
            task: None,
            human: None,
            pending_leg: None,
            commands,
        }
    }

    /// The core's rules for this agent.
    pub(super) fn rules(agent: &AgentConfig) -> TransferRules {
        let cfg = &agent.transfer;
        if !cfg.enabled() {
            return TransferRules::default();
        }
        TransferRules {
            dtmf: cfg.dtmf_key().and_then(DtmfDigit::from_char),
            on_max_duration: cfg.on_max_duration,
            on_ai_unreachable: cfg.on_ai_unreachable,
        }
    }

    /// The next report of a background task, or event of the bridged human's dialog.
    /// Cancel-safe (both receives are).
    pub(super) async fn next(&mut self) -> TransferInput {
        let human = async {
            match &mut self.human {
                Some(human) => human.dialog.next_event().await,
                None => std::future::pending().await,
            }
        };
        let operator = async {
            match &mut self.commands {
                Some(commands) => commands.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // Never `None`: the link holds a sender.
            Some(event) = self.events_rx.recv() => TransferInput::Task(event),
            event = human => TransferInput::Human(event),
            // `None` (the registry entry is gone: the call is ending) disables this branch.
            Some(command) = operator => TransferInput::Operator(command),
        }
    }

    /// When the transfer under way times out.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.machine.as_ref().and_then(TransferMachine::poll_timeout)
    }
}

impl MediaLoop<'_> {
    /// `transfer_to_human` from the model (reached from the `Output::Tool` arm): a configured
    /// queue starts the transfer and the call id is answered once with its outcome; anything
    /// else is answered with an error at once, and nothing is dialled.
    pub(super) fn start_transfer(&mut self, call: ToolCall) {
        let now = Instant::now();
        let started = match (parse_arguments(&call.arguments), self.transfer.machine.as_mut()) {
            (_, None) => Err("transfers are not configured for this agent".to_owned()),
            (Err(e), _) => Err(e.to_string()),
            (Ok(args), Some(machine)) => {
                let started = machine.start(now, &args.queue, Trigger::Tool { call_id: call.call_id.clone() });
                if started.is_ok() {
                    self.transfer.reason = args.reason;
                }
                started.map_err(|e| e.to_string())
            }
        };
        match started {
            Ok(actions) => {
                info!(
                    queue = self.transfer.machine.as_ref().map_or("", |m| m.queue().0),
                    "transfer to a human requested by the agent"
                );
                self.transfer.tool_call = Some((call.call_id, now));
                self.core.lock().transfer_started();
                self.run_transfer_actions(now, actions);
            }
            Err(why) => {
                warn!(error = %why, "transfer_to_human refused");
                self.journal.tool(ToolRecord {
                    started: self.journal.offset(now),
                    duration: Duration::ZERO,
                    status: ToolStatus::Failed(why.clone()),
                    call_id: call.call_id.clone(),
                    name: call.name,
                });
                let output = serde_json::json!({"error": why}).to_string();
                self.core.lock().complete_tool(now, &call.call_id, output);
            }
        }
    }

    /// An operator's command: a transfer to one of the agent's queues starts as the model's
    /// would (announcement, REFER or bridge, outcome in the journal and the CDR); the agent is
    /// marked busy with it, as for `transfer_to_human`. The reply says whether it started.
    fn on_operator_command(&mut self, command: OperatorCommand) {
        let OperatorCommand::Transfer { queue, reply } = command;
        let now = Instant::now();
        let valid: Vec<String> = self.transfer.config.queues.keys().cloned().collect();
        let started = match self.transfer.machine.as_mut() {
            None => Err(TransferRefusal::NotConfigured),
            Some(machine) => machine.start(now, &queue, Trigger::Rule(OPERATOR_TRIGGER)).map_err(|e| match e {
                StartError::UnknownQueue(queue) => TransferRefusal::UnknownQueue { queue, valid },
                StartError::Busy => TransferRefusal::Busy,
            }),
        };
        match started {
            Ok(actions) => {
                info!(queue, "transfer to a human requested by the operator");
                self.transfer.reason = OPERATOR_TRIGGER.to_owned();
                let mut core = self.core.lock();
                core.transfer_started();
                // Told before the announcement is asked for, so it is not a surprise to the model.
                core.inform_agent(&format!(
                    "An operator is transferring the caller to a person ({queue}). Do not start a new \
                     topic; if the transfer fails you will be told."
                ));
                drop(core);
                // Answered before the actions run: the REFER or INVITE is under way.
                let _ = reply.send(Ok(()));
                self.run_transfer_actions(now, actions);
            }
            Err(refusal) => {
                info!(queue, why = %refusal, "operator's transfer refused");
                let _ = reply.send(Err(refusal));
            }
        }
    }

    /// The core's transfer signal: the announcement has played, or a rule fired.
    pub(super) fn on_transfer_signal(&mut self, signal: TransferSignal) {
        let now = Instant::now();
        match signal {
            TransferSignal::Announced => {
                let actions = self.transfer.machine.as_mut().map(|m| m.announced(now)).unwrap_or_default();
                self.run_transfer_actions(now, actions);
            }
            TransferSignal::Rule(rule) => self.start_rule_transfer(now, rule),
        }
    }

    fn start_rule_transfer(&mut self, now: Instant, rule: TransferRule) {
        let queue = self.transfer.config.default_queue.clone();
        let started = match self.transfer.machine.as_mut() {
            Some(machine) => machine.start(now, &queue, Trigger::Rule(rule.label())).map_err(|e| e.to_string()),
            None => Err("transfers are not configured for this agent".to_owned()),
        };
        match started {
            Ok(actions) => {
                info!(rule = rule.label(), queue, "transfer rule fired");
                self.transfer.reason = rule.label().to_owned();
                self.run_transfer_actions(now, actions);
            }
            Err(why) => {
                debug!(rule = rule.label(), why, "transfer rule ignored");
                if rule == TransferRule::AiUnreachable {
                    // The give-up prompt was skipped for the transfer: end as it would have.
                    self.core.lock().goodbye_after_transfer(CallEnd::AgentDisconnected(
                        "gave up reconnecting; no transfer possible".into(),
                    ));
                } else {
                    self.core.lock().transfer_finished();
                }
            }
        }
    }

    /// A REFER's answer or failure from its task.
    pub(super) fn on_transfer_event(&mut self, event: TransferEvent) {
        let now = Instant::now();
        self.transfer.task = None;
        if let TransferEvent::HumanAnswered(human) = event {
            return self.on_human_answered(now, *human);
        }
        let Some(machine) = self.transfer.machine.as_mut() else { return };
        let actions = match event {
            TransferEvent::ReferAnswered(status) => {
                debug!(status, "REFER answered");
                machine.refer_answered(now, status)
            }
            TransferEvent::ReferFailed(why) => machine.refer_failed(now, why),
            TransferEvent::HumanFailed(failure) => {
                info!(status = ?failure.status, why = failure.why, "the human's call did not connect");
                machine.human_failed(now, failure.status, &failure.why)
            }
            TransferEvent::HumanAnswered(_) => Vec::new(),
        };
        self.run_transfer_actions(now, actions);
    }

    /// The human answered: keep the dialog (hung up on every path that ends the call), then
    /// bridge if the transfer still wants them.
    fn on_human_answered(&mut self, now: Instant, human: AnsweredHuman) {
        let AnsweredHuman { dialog, media, socket, lease, guard } = human;
        info!(codec = media.codec.encoding_name(), "the human answered");
        self.transfer.human = Some(HumanCall { dialog, lease, guard });
        self.transfer.pending_leg = Some((media, socket));
        let actions =
            self.transfer.machine.as_mut().map_or_else(|| vec![Action::HangUpHuman], TransferMachine::human_answered);
        self.run_transfer_actions(now, actions);
    }

    /// The bridged human's dialog: their BYE (or the dialog gone) ends the call.
    pub(super) fn on_human_dialog_event(&mut self, event: Option<DialogEvent>) {
        match event {
            Some(DialogEvent::RemoteBye | DialogEvent::AckTimeout) | None => {
                info!("the human hung up");
                self.transfer_human_left();
            }
            Some(_) => {}
        }
    }

    /// The human is gone (BYE or no more RTP): the bridged call is over. Decision (documented
    /// in docs/configuration.md): the caller wanted a person and had one; the agent does not
    /// take the call back.
    pub(super) fn transfer_human_left(&mut self) {
        let now = Instant::now();
        let actions = self.transfer.machine.as_mut().map(TransferMachine::human_left).unwrap_or_default();
        if actions.is_empty() {
            // Not bridged (a late answer, already hung up): just let the dialog go.
            self.transfer.human = None;
        }
        self.run_transfer_actions(now, actions);
    }

    /// [`Output::LegLost`](super::Output::LegLost) of the human's leg.
    pub(super) fn transfer_leg_lost(&mut self, leg: LegId) {
        if leg == HUMAN && self.transfer.machine.as_ref().is_some_and(TransferMachine::is_bridged) {
            self.transfer_human_left();
        }
    }

    /// A NOTIFY of our REFER's subscription (already answered 200): its sipfrag's status line.
    pub(super) fn on_refer_notify(&mut self, subscription_state: &str, body: &str) {
        let now = Instant::now();
        let status = match sipfrag::parse_status(body) {
            Ok(status) => status,
            Err(e) => {
                // RFC 3515 §2.4.5: a NOTIFY must carry a sipfrag; one we cannot read tells nothing.
                debug!(error = %e, subscription_state, "NOTIFY without a readable sipfrag ignored");
                return;
            }
        };
        debug!(code = status.code, subscription_state, "REFER progress (NOTIFY)");
        let actions = self.transfer.machine.as_mut().map(|m| m.notified(now, status.code)).unwrap_or_default();
        self.run_transfer_actions(now, actions);
    }

    /// The transfer's deadline passed.
    pub(super) fn on_transfer_timeout(&mut self) {
        let now = Instant::now();
        let actions = self.transfer.machine.as_mut().map(|m| m.handle_timeout(now)).unwrap_or_default();
        self.run_transfer_actions(now, actions);
    }

    /// The caller hung up: an attempt under way is recorded, a bridged human hung up.
    pub(super) fn transfer_caller_left(&mut self) {
        let now = Instant::now();
        let actions = self.transfer.machine.as_mut().map(TransferMachine::caller_left).unwrap_or_default();
        self.run_transfer_actions(now, actions);
    }

    fn run_transfer_actions(&mut self, now: Instant, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Announce => {
                    let announced = self.core.lock().announce_transfer(&self.transfer.config.announce);
                    if !announced {
                        let next = self.transfer.machine.as_mut().map(|m| m.announced(now)).unwrap_or_default();
                        self.run_transfer_actions(now, next);
                    }
                }
                Action::Refer { target } => self.send_refer(&target),
                Action::Dial { target } => self.dial(target),
                Action::Bridge => self.bridge_human(now),
                Action::HangUpHuman => self.hang_up_human(),
                Action::ToolOutput { call_id, output, succeeded, respond } => {
                    let started = self.transfer.tool_call.take().map_or(now, |(_, at)| at);
                    self.journal.tool(ToolRecord {
                        call_id: call_id.clone(),
                        name: super::super::transfer::TRANSFER_TOOL.to_owned(),
                        started: self.journal.offset(started),
                        duration: now.saturating_duration_since(started),
                        status: if succeeded { ToolStatus::Ok } else { ToolStatus::Failed("transfer failed".into()) },
                    });
                    let mut core = self.core.lock();
                    if respond {
                        core.complete_tool(now, &call_id, output);
                    } else {
                        core.complete_tool_quietly(&call_id, output);
                    }
                }
                Action::TellAgent(text) => self.core.lock().tell_agent(&text),
                Action::Goodbye => self.core.lock().goodbye_after_transfer(CallEnd::TransferFailed),
                Action::EndCall => {
                    info!("caller transferred; ending our leg");
                    self.core.lock().end_transferred();
                }
                Action::Record { queue, target, outcome } => self.record_transfer(now, queue, target, &outcome),
                Action::BackToAgent => {
                    let mut core = self.core.lock();
                    core.transfer_finished();
                    if core.ai_unreachable() {
                        // Nobody to go back to: end as the give-up would have.
                        core.goodbye_after_transfer(CallEnd::AgentDisconnected(
                            "gave up reconnecting; the transfer failed".into(),
                        ));
                    }
                }
            }
        }
    }

    /// REFER in the caller's dialog (RFC 3515 §2.4.1): `Refer-To` the queue's URI,
    /// `Referred-By` us (RFC 3892), the context headers. Sent from a task: its answer comes
    /// back as a [`TransferEvent`], its NOTIFYs as dialog events.
    fn send_refer(&mut self, target: &str) {
        let link = &self.transfer;
        let queue = link.machine.as_ref().map_or("", |m| m.queue().0).to_owned();
        let mut headers = vec![("Refer-To".to_owned(), format!("<{target}>"))];
        if let Some(uri) = link.requester.local_uri() {
            headers.push(("Referred-By".to_owned(), referred_by(&uri)));
        }
        headers.extend(context_headers(
            &link.config,
            HeaderContext { call_id: &link.call_id, agent: &link.agent, queue: &queue, reason: &link.reason },
        ));
        let requester = link.requester.clone();
        let events = link.events_tx.clone();
        info!(queue, "sending REFER");
        let task = tokio::spawn(async move {
            let refs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            let event = match requester.send_request(Method::Refer, &refs, b"").await {
                Ok((status, _)) => TransferEvent::ReferAnswered(status),
                Err(e) => TransferEvent::ReferFailed(e.to_string()),
            };
            // The call may be over: nobody listens any more.
            let _ = events.send(event).await;
        });
        self.transfer.task = Some(AbortOnDrop(task));
    }

    /// The human's INVITE through the transfer trunk, in a task (its outcome comes back as a
    /// [`TransferEvent`]).
    fn dial(&mut self, target: String) {
        let link = &self.transfer;
        let queue = link.machine.as_ref().map_or("", |m| m.queue().0).to_owned();
        let headers = context_headers(
            &link.config,
            HeaderContext { call_id: &link.call_id, agent: &link.agent, queue: &queue, reason: &link.reason },
        );
        let state = std::sync::Arc::clone(self.link.state);
        let settings = std::sync::Arc::clone(self.link.settings);
        let trunk = link.config.trunk.clone();
        let agent = link.agent.clone();
        let ring = Duration::from_secs(link.config.ring_timeout_secs);
        let events = link.events_tx.clone();
        info!(queue, trunk, "dialling the human");
        let task = tokio::spawn(
            async move {
                let event = match dial_human(state, settings, trunk, target, agent, ring, headers).await {
                    Ok(human) => TransferEvent::HumanAnswered(Box::new(human)),
                    Err(failure) => TransferEvent::HumanFailed(failure),
                };
                // The call may be over: the human's dialog is then dropped (BYE in the background).
                let _ = events.send(event).await;
            }
            // The human leg's log lines belong to the call.
            .in_current_span(),
        );
        self.transfer.task = Some(AbortOnDrop(task));
    }

    /// Attaches the human's leg and bridges it with the caller's.
    fn bridge_human(&mut self, now: Instant) {
        let Some((media, socket)) = self.transfer.pending_leg.take() else { return };
        let config = self.leg_config(&media);
        match self.attach_leg(HUMAN, socket, config) {
            Ok(()) => {
                self.core.lock().bridge(now, CALLER, HUMAN);
                info!("caller and human bridged");
            }
            Err(e) => {
                warn!(error = %e, "the human's leg could not be attached; hanging up");
                self.transfer_human_left();
            }
        }
    }

    /// Hangs up the human (a ringing INVITE is cancelled) and detaches their leg.
    fn hang_up_human(&mut self) {
        self.transfer.task = None;
        self.transfer.pending_leg = None;
        if self.human.is_some() {
            self.detach_leg(HUMAN);
        }
        if let Some(HumanCall { mut dialog, lease, guard }) = self.transfer.human.take() {
            tokio::spawn(async move {
                if let Err(e) = dialog.hangup().await {
                    debug!(error = %e, "BYE to the human failed");
                }
                drop(lease);
                drop(guard);
            });
        }
    }

    fn record_transfer(&mut self, now: Instant, queue: String, target: String, outcome: &Outcome) {
        let method = self.transfer.config.method.label();
        info!(method, queue, outcome = %outcome.detail(), "transfer outcome");
        metrics::counter!(telemetry::TRANSFERS_TOTAL, "method" => method, "outcome" => outcome.label()).increment(1);
        let view = TransferView {
            queue: queue.clone(),
            method: method.to_owned(),
            reason: self.transfer.reason.clone(),
            outcome: outcome.detail(),
        };
        self.link.state.calls.set_transfer(&self.transfer.call_id, view);
        self.journal.transfer(TransferRecord {
            at: self.journal.offset(now),
            queue,
            method: method.to_owned(),
            target,
            reason: self.transfer.reason.clone(),
            outcome: outcome.detail(),
        });
    }
}
