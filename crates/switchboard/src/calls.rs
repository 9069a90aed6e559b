//! The registry of calls: every call up (inbound and outbound) with what the admin API shows of
//! it, and the outcomes of the last outbound calls so an operator can see why a callback failed.
//!
//! Bounded both ways: at most `capacity` calls up (the gateway's call slots plus the trunks'
//! outbound capacity, so a call that holds a slot always finds room), and a ring of the last
//! [`FINISHED_KEPT`] finished outbound calls (the oldest is forgotten first). An entry leaves
//! the active table when its [`CallGuard`] is dropped, however the call's task ended.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use crate::telemetry::Redacted;

/// Finished outbound calls whose outcome `GET /v1/calls/{id}` still answers.
pub const FINISHED_KEPT: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Inbound,
    Outbound,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CallState {
    /// Routed; the Realtime session is being opened or the INVITE is on its way.
    Setup,
    /// The callee's phone rings (an 18x arrived).
    Ringing,
    Answered,
    /// Hanging up (BYE or CANCEL sent, waiting for its answer).
    Ending,
    /// Finished: only finished outbound calls are kept, with their outcome.
    Ended,
}

/// How an outbound call ended, as the API, the log and `switchboard_outbound_calls_total` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum OutboundOutcome {
    /// The callee answered; `end` is how the conversation ended (a `switchboard_calls_total` reason).
    Answered { end: String },
    /// 486 Busy Here or 600 Busy Everywhere.
    Busy { status: u16 },
    /// Not answered within the trunk's ring timeout: CANCELled.
    NoAnswer,
    /// Another final 4xx-6xx answer.
    Rejected { status: u16, reason: String },
    /// The trunk challenged again after our credentials, or we had none to give.
    AuthFailed { status: u16 },
    /// No answer at all from the trunk (Timer B), a transport error or 408.
    Unreachable { reason: String },
    /// The Realtime session could not be opened or confirmed: nothing was dialled.
    AgentUnavailable { reason: String },
    /// Hung up through the API (`DELETE /v1/calls/{id}`) before it was answered.
    Cancelled,
    /// The gateway could not place the call (no RTP port, shutting down, SDP it cannot use).
    Failed { reason: String },
}

impl OutboundOutcome {
    /// The `outcome` label of `switchboard_outbound_calls_total` (a fixed set).
    pub fn label(&self) -> &'static str {
        match self {
            OutboundOutcome::Answered { .. } => "answered",
            OutboundOutcome::Busy { .. } => "busy",
            OutboundOutcome::NoAnswer => "no_answer",
            OutboundOutcome::Rejected { .. } => "rejected",
            OutboundOutcome::AuthFailed { .. } => "auth_failed",
            OutboundOutcome::Unreachable { .. } => "unreachable",
            OutboundOutcome::AgentUnavailable { .. } => "agent_unavailable",
            OutboundOutcome::Cancelled => "cancelled",
            OutboundOutcome::Failed { .. } => "failed",
        }
    }
}

/// A call as the admin API shows it. Numbers are redacted as in the logs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallView {
    pub id: String,
    pub direction: Direction,
    pub agent: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trunk: Option<String>,
    /// The negotiated codec, once known.
    pub codec: Option<String>,
    pub state: CallState,
    /// RFC 3339, UTC.
    pub started_at: String,
    /// The called number, redacted (`…1234`).
    pub to: String,
    /// The calling number, redacted.
    pub from: String,
    /// Outbound calls once ended (and answered calls while up: `null`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<OutboundOutcome>,
    /// The last transfer to a human (model, rule or operator initiated) and how it went.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfer: Option<TransferView>,
}

/// A transfer's outcome as `GET /v1/calls/{id}` shows it (the CDR's `transfers` entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransferView {
    pub queue: String,
    /// `refer` or `bridge`.
    pub method: String,
    /// Who asked: the model's stated reason, a rule's name, or `operator`.
    pub reason: String,
    /// `transferred`, `bridged`, `failed (…)`... as in the CDR.
    pub outcome: String,
}

/// What is known of a call when it is registered.
#[derive(Debug, Clone)]
pub struct NewCall {
    pub direction: Direction,
    pub agent: String,
    /// The called number or URI (stored redacted).
    pub to: String,
    /// The calling number or URI (stored redacted).
    pub from: String,
    /// The trunk an outbound call goes through, and how many calls it may carry at once.
    pub trunk: Option<(String, usize)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    #[error("the trunk `{0}` carries its max_concurrent calls")]
    TrunkFull(String),
    #[error("the call registry is full ({0} calls)")]
    Full(usize),
}

struct Entry {
    view: CallView,
    hangup: watch::Sender<bool>,
    /// Operator commands to the call's task, once it converses ([`CallRegistry::accept_commands`]).
    commands: Option<mpsc::Sender<OperatorCommand>>,
}

/// Operator commands waiting for a call's task at most; more are refused (409).
pub const COMMAND_QUEUE: usize = 4;

/// What an operator asks of a live call through the admin API (hang-up has its own channel).
#[derive(Debug)]
pub enum OperatorCommand {
    /// `POST /v1/calls/{id}/transfer`: transfer the caller to one of the agent's queues, by the
    /// agent's method, as `transfer_to_human` would. The call's task answers whether it started.
    Transfer { queue: String, reply: oneshot::Sender<Result<(), TransferRefusal>> },
}

/// Why the call's task did not start an operator's transfer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferRefusal {
    /// 422: the agent has no `[agents.X.transfer]` queues.
    #[error("no transfer is configured for this call's agent")]
    NotConfigured,
    /// 422: not one of the agent's queues (a name, never a URI).
    #[error("no queue named `{queue}` for this call's agent")]
    UnknownQueue { queue: String, valid: Vec<String> },
    /// 409: one is under way.
    #[error("a transfer is already in progress")]
    Busy,
}

/// Why a command could not reach a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandRefusal {
    Unknown,
    AlreadyEnded,
    /// Up, but not answered yet (or not taking commands).
    NotAnswered,
    /// Ending, or its command queue is full.
    Busy,
}

struct Tables {
    active: HashMap<String, Entry>,
    finished: VecDeque<CallView>,
}

pub struct CallRegistry {
    tables: Mutex<Tables>,
    /// Calls up at most; a reload that adds trunk capacity raises it (`set_capacity`).
    capacity: AtomicUsize,
}

impl CallRegistry {
    pub fn new(capacity: usize) -> Arc<CallRegistry> {
        Arc::new(CallRegistry {
            tables: Mutex::new(Tables { active: HashMap::new(), finished: VecDeque::new() }),
            capacity: AtomicUsize::new(capacity),
        })
    }

    /// A reload changed what the trunks may carry.
    pub fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity, Ordering::Release);
    }

    fn tables(&self) -> MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a call in state `setup`. The receiver turns `true` when an operator hangs it up.
    pub fn register(
        self: &Arc<Self>,
        call: NewCall,
        now: SystemTime,
    ) -> Result<(CallGuard, watch::Receiver<bool>), RegisterError> {
        let mut tables = self.tables();
        let capacity = self.capacity.load(Ordering::Acquire);
        if tables.active.len() >= capacity {
            return Err(RegisterError::Full(capacity));
        }
        if let Some((trunk, limit)) = &call.trunk {
            let up = tables
                .active
                .values()
                .filter(|e| e.view.direction == call.direction && e.view.trunk.as_deref() == Some(trunk.as_str()))
                .count();
            if up >= *limit {
                return Err(RegisterError::TrunkFull(trunk.clone()));
            }
        }
        let id = loop {
            let id = new_call_id();
            if !tables.active.contains_key(&id) {
                break id;
            }
        };
        let (hangup, hangup_rx) = watch::channel(false);
        let view = CallView {
            id: id.clone(),
            direction: call.direction,
            agent: call.agent,
            trunk: call.trunk.map(|(name, _)| name),
            codec: None,
            state: CallState::Setup,
            started_at: rfc3339_utc(now),
            to: redact_party(&call.to),
            from: redact_party(&call.from),
            outcome: None,
            transfer: None,
        };
        tables.active.insert(id.clone(), Entry { view, hangup, commands: None });
        Ok((CallGuard { registry: Arc::clone(self), id }, hangup_rx))
    }

    /// Every call up, oldest first.
    pub fn list(&self) -> Vec<CallView> {
        let mut calls: Vec<CallView> = self.tables().active.values().map(|e| e.view.clone()).collect();
        calls.sort_by(|a, b| a.started_at.cmp(&b.started_at).then_with(|| a.id.cmp(&b.id)));
        calls
    }

    /// A call up, or a finished outbound call still remembered.
    pub fn get(&self, id: &str) -> Option<CallView> {
        let tables = self.tables();
        if let Some(entry) = tables.active.get(id) {
            return Some(entry.view.clone());
        }
        tables.finished.iter().rev().find(|view| view.id == id).cloned()
    }

    /// Asks the call to hang up (BYE when answered, CANCEL while ringing).
    pub fn hang_up(&self, id: &str) -> HangUp {
        let tables = self.tables();
        match tables.active.get(id) {
            Some(entry) => {
                entry.hangup.send_replace(true);
                HangUp::Requested
            }
            None if tables.finished.iter().any(|view| view.id == id) => HangUp::AlreadyEnded,
            None => HangUp::Unknown,
        }
    }

    /// The call `id` now converses and takes operator commands: they arrive on the receiver
    /// (bounded, [`COMMAND_QUEUE`]). `None` when the call is not registered.
    pub fn accept_commands(&self, id: &str) -> Option<mpsc::Receiver<OperatorCommand>> {
        let mut tables = self.tables();
        let entry = tables.active.get_mut(id)?;
        let (sender, receiver) = mpsc::channel(COMMAND_QUEUE);
        entry.commands = Some(sender);
        Some(receiver)
    }

    /// Hands `command` to the call's task (which answers through the command's reply).
    pub fn command(&self, id: &str, command: OperatorCommand) -> Result<(), CommandRefusal> {
        let tables = self.tables();
        match tables.active.get(id) {
            Some(Entry { commands: Some(sender), .. }) => sender.try_send(command).map_err(|_| CommandRefusal::Busy),
            Some(_) => Err(CommandRefusal::NotAnswered),
            None if tables.finished.iter().any(|view| view.id == id) => Err(CommandRefusal::AlreadyEnded),
            None => Err(CommandRefusal::Unknown),
        }
    }

    /// Records the outcome of a transfer of call `id` (shown while the call is listed).
    pub fn set_transfer(&self, id: &str, transfer: TransferView) {
        self.update(id, |view| view.transfer = Some(transfer));
    }

    /// Calls up.
    pub fn active(&self) -> usize {
        self.tables().active.len()
    }

    fn update(&self, id: &str, change: impl FnOnce(&mut CallView)) {
        if let Some(entry) = self.tables().active.get_mut(id) {
            change(&mut entry.view);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HangUp {
    Requested,
    AlreadyEnded,
    Unknown,
}

/// A registered call; dropping it removes the call from the active table (an outbound call's
/// view moves to the finished ring).
pub struct CallGuard {
    registry: Arc<CallRegistry>,
    id: String,
}

impl CallGuard {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn set_state(&self, state: CallState) {
        self.registry.update(&self.id, |view| view.state = state);
    }

    /// An inbound call's agent and codec, known once it is routed and negotiated.
    pub fn set_routed(&self, agent: &str, codec: &str) {
        self.registry.update(&self.id, |view| {
            view.agent = agent.to_string();
            view.codec = Some(codec.to_string());
        });
    }

    pub fn set_codec(&self, codec: &str) {
        self.registry.update(&self.id, |view| view.codec = Some(codec.to_string()));
    }

    /// Records how an outbound call ended (kept in the finished ring when the guard drops).
    pub fn set_outcome(&self, outcome: OutboundOutcome) {
        self.registry.update(&self.id, |view| view.outcome = Some(outcome));
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        let mut tables = self.registry.tables();
        let Some(entry) = tables.active.remove(&self.id) else { return };
        if entry.view.direction == Direction::Outbound {
            let mut view = entry.view;
            view.state = CallState::Ended;
            if tables.finished.len() >= FINISHED_KEPT {
                tables.finished.pop_front();
            }
            tables.finished.push_back(view);
        }
    }
}

/// A number or URI as the logs show it: only the last digits of its user part
/// (`sip:+15550001234@192.0.2.1` → `…1234`).
pub fn redact_party(text: &str) -> String {
    let without_scheme = ["sip:", "sips:", "tel:"]
        .iter()
        .find_map(|scheme| {
            text.get(..scheme.len()).filter(|s| s.eq_ignore_ascii_case(scheme)).map(|s| &text[s.len()..])
        })
        .unwrap_or(text);
    let user = without_scheme.split(['@', ';', '?']).next().unwrap_or(without_scheme);
    Redacted(user).to_string()
}

/// 128 random bits as 32 lowercase hex digits (URL-safe, unguessable).
fn new_call_id() -> String {
    use std::fmt::Write;
    let bytes: [u8; 16] = rand::random();
    bytes.iter().fold(String::with_capacity(32), |mut id, byte| {
        let _ = write!(id, "{byte:02x}");
        id
    })
}

/// `2026-11-30T11:43:09Z` (RFC 3339, UTC, whole seconds).
pub fn rfc3339_utc(time: SystemTime) -> String {
    let secs = time.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (H. Hinnant, "chrono-Compatible Low-Level Date Algorithms").
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn outbound(trunk: &str, limit: usize) -> NewCall {
        NewCall {
            direction: Direction::Outbound,
            agent: "default".into(),
            to: "sip:+15550001234@192.0.2.1".into(),
            from: "sip:switchboard@gw".into(),
            trunk: Some((trunk.into(), limit)),
        }
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339_utc(at(0)), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(at(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(at(1_796_039_589)), "2026-11-30T11:53:09Z");
    }

    #[test]
    fn a_call_is_listed_while_its_guard_lives_and_numbers_are_redacted() {
        let registry = CallRegistry::new(10);
        let (guard, _) = registry.register(outbound("carrier", 2), at(0)).unwrap();
        assert_eq!(guard.id().len(), 32);
        assert!(guard.id().chars().all(|c| c.is_ascii_hexdigit()));
        guard.set_state(CallState::Ringing);
        guard.set_codec("PCMU");
        let listed = registry.list();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].state, CallState::Ringing);
        assert_eq!(listed[0].codec.as_deref(), Some("PCMU"));
        assert_eq!(listed[0].to, "…1234");
        assert_eq!(redact_party("tel:+1-555-0100;phone-context=x"), "…0100");
        assert_eq!(redact_party("5550100"), "…0100");
        assert!(!serde_json::to_string(&listed).unwrap().contains("5550001234"));
        drop(guard);
        assert!(registry.list().is_empty());
    }

    #[test]
    fn a_finished_outbound_call_keeps_its_outcome_and_inbound_calls_are_forgotten() {
        let registry = CallRegistry::new(10);
        let (guard, _) = registry.register(outbound("carrier", 2), at(0)).unwrap();
        let id = guard.id().to_string();
        guard.set_outcome(OutboundOutcome::Busy { status: 486 });
        drop(guard);
        let view = registry.get(&id).unwrap();
        assert_eq!(view.state, CallState::Ended);
        assert_eq!(view.outcome, Some(OutboundOutcome::Busy { status: 486 }));
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["outcome"]["outcome"], "busy");
        assert_eq!(json["outcome"]["status"], 486);
        assert_eq!(registry.hang_up(&id), HangUp::AlreadyEnded);

        let inbound = NewCall { direction: Direction::Inbound, trunk: None, ..outbound("x", 1) };
        let (guard, _) = registry.register(inbound, at(1)).unwrap();
        let id = guard.id().to_string();
        drop(guard);
        assert_eq!(registry.get(&id), None);
        assert_eq!(registry.hang_up(&id), HangUp::Unknown);
    }

    #[test]
    fn the_finished_ring_is_bounded_oldest_out() {
        let registry = CallRegistry::new(10);
        let (first, _) = registry.register(outbound("carrier", 2), at(0)).unwrap();
        let first_id = first.id().to_string();
        drop(first);
        for i in 0..FINISHED_KEPT {
            let (guard, _) = registry.register(outbound("carrier", 2), at(i as u64)).unwrap();
            drop(guard);
        }
        assert_eq!(registry.tables().finished.len(), FINISHED_KEPT);
        assert_eq!(registry.get(&first_id), None, "the oldest outcome is forgotten first");
    }

    #[test]
    fn trunk_and_registry_limits_are_enforced() {
        let registry = CallRegistry::new(3);
        let (_a, _) = registry.register(outbound("carrier", 2), at(0)).unwrap();
        let (_b, _) = registry.register(outbound("carrier", 2), at(0)).unwrap();
        assert_eq!(
            registry.register(outbound("carrier", 2), at(0)).err(),
            Some(RegisterError::TrunkFull("carrier".into()))
        );
        let (_c, _) = registry.register(outbound("other", 2), at(0)).unwrap();
        assert_eq!(registry.register(outbound("third", 2), at(0)).err(), Some(RegisterError::Full(3)));
    }

    #[tokio::test]
    async fn commands_reach_a_conversing_call_only() {
        let registry = CallRegistry::new(3);
        let (guard, _) = registry.register(outbound("carrier", 2), at(0)).unwrap();
        let id = guard.id().to_string();
        let transfer = |queue: &str| {
            let (reply, answer) = oneshot::channel();
            (OperatorCommand::Transfer { queue: queue.into(), reply }, answer)
        };
        assert_eq!(registry.command("nope", transfer("sales").0).err(), Some(CommandRefusal::Unknown));
        assert_eq!(registry.command(&id, transfer("sales").0).err(), Some(CommandRefusal::NotAnswered));

        let mut commands = registry.accept_commands(&id).unwrap();
        let (command, answer) = transfer("sales");
        registry.command(&id, command).unwrap();
        let Some(OperatorCommand::Transfer { queue, reply }) = commands.recv().await else { panic!("no command") };
        assert_eq!(queue, "sales");
        reply.send(Err(TransferRefusal::Busy)).unwrap();
        assert_eq!(answer.await.unwrap(), Err(TransferRefusal::Busy));

        // The queue is bounded: a call that does not read refuses more.
        for _ in 0..COMMAND_QUEUE {
            registry.command(&id, transfer("sales").0).unwrap();
        }
        assert_eq!(registry.command(&id, transfer("sales").0).err(), Some(CommandRefusal::Busy));
        // A call whose task stopped reading (ending) refuses too.
        drop(commands);
        assert_eq!(registry.command(&id, transfer("sales").0).err(), Some(CommandRefusal::Busy));
        drop(guard);
        assert_eq!(registry.command(&id, transfer("sales").0).err(), Some(CommandRefusal::AlreadyEnded));
    }

    #[test]
    fn hang_up_reaches_the_call() {
        let registry = CallRegistry::new(3);
        let (guard, hangup) = registry.register(outbound("carrier", 2), at(0)).unwrap();
        assert!(!*hangup.borrow());
        assert_eq!(registry.hang_up(guard.id()), HangUp::Requested);
        assert!(*hangup.borrow());
        assert_eq!(registry.hang_up("nope"), HangUp::Unknown);
    }
}
