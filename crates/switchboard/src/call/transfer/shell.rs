//! The shell's side of a transfer: carries out what the [`TransferMachine`] asks (the
//! announcement, the REFER in its own task, the tool's output, the journal and the metric) and
//! feeds it what happens (the REFER's answer, NOTIFY sipfrag, the deadline, the caller's BYE).
//! A child of `call::shell` (declared there with `#[path]`) so that it extends `MediaLoop`.

use std::time::{Duration, Instant};

use switchboard_sip::DialogRequester;
use switchboard_sip::message::Method;
use switchboard_sip::sipfrag;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::super::core::DtmfDigit;
use super::super::core::ToolCall;
use super::super::core::transfer::{TransferRule, TransferRules, TransferSignal};
use super::super::end::CallEnd;
use super::super::journal::{ToolRecord, ToolStatus, TransferRecord};
use super::super::transfer::machine::{Action, MachineConfig, Outcome, TransferMachine, Trigger};
use super::super::transfer::{HeaderContext, context_headers, parse_arguments, referred_by};
use super::{AbortOnDrop, MediaLoop};
use crate::config::{AgentConfig, TransferConfig};
use crate::telemetry;

/// REFER outcomes waiting for the call's task at most (one REFER is outstanding at a time).
const EVENT_QUEUE: usize = 4;

/// What a transfer's background task reports.
#[derive(Debug)]
pub(super) enum TransferEvent {
    /// The REFER's final response.
    ReferAnswered(u16),
    /// The REFER got none (Timer F) or could not be sent.
    ReferFailed(String),
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
    refer_task: Option<AbortOnDrop<()>>,
}

impl TransferLink {
    pub(super) fn new(agent: &AgentConfig, call_id: &str, agent_name: &str, requester: DialogRequester) -> Self {
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
            refer_task: None,
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

    /// The next report of a background task (never ends: the link holds a sender).
    pub(super) async fn next_event(&mut self) -> Option<TransferEvent> {
        self.events_rx.recv().await
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
        self.transfer.refer_task = None;
        let Some(machine) = self.transfer.machine.as_mut() else { return };
        let actions = match event {
            TransferEvent::ReferAnswered(status) => {
                debug!(status, "REFER answered");
                machine.refer_answered(now, status)
            }
            TransferEvent::ReferFailed(why) => machine.refer_failed(now, why),
        };
        self.run_transfer_actions(now, actions);
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
                Action::Dial { .. } | Action::Bridge | Action::HangUpHuman => {
                    // Bridged transfers are refused by the configuration check until the second
                    // leg exists; a call never gets here.
                    warn!("bridged transfer requested but not available");
                    let next = self
                        .transfer
                        .machine
                        .as_mut()
                        .map(|m| m.human_failed(now, None, "bridging is not available"))
                        .unwrap_or_default();
                    self.run_transfer_actions(now, next);
                }
                Action::ToolOutput { call_id, output, respond } => {
                    let failed = output.contains("\"failed\"");
                    let started = self.transfer.tool_call.take().map_or(now, |(_, at)| at);
                    self.journal.tool(ToolRecord {
                        call_id: call_id.clone(),
                        name: super::super::transfer::TRANSFER_TOOL.to_owned(),
                        started: self.journal.offset(started),
                        duration: now.saturating_duration_since(started),
                        status: if failed { ToolStatus::Failed("transfer failed".into()) } else { ToolStatus::Ok },
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
        self.transfer.refer_task = Some(AbortOnDrop(task));
    }

    fn record_transfer(&mut self, now: Instant, queue: String, target: String, outcome: &Outcome) {
        let method = self.transfer.config.method.label();
        info!(method, queue, outcome = %outcome.detail(), "transfer outcome");
        metrics::counter!(telemetry::TRANSFERS_TOTAL, "method" => method, "outcome" => outcome.label()).increment(1);
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
