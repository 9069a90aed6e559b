//! What happened during one call, beyond audio: the tool calls and transfers, for the
//! recording's sidecar and the call detail record. Filled by the call's shell as things finish;
//! bounded (a model looping on a tool must not grow the call's memory).

use std::time::{Duration, Instant};

/// Entries of each kind kept at most; later ones are counted, not stored.
pub const MAX_ENTRIES: usize = 200;

/// How a tool call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolStatus {
    /// The webhook (or built-in) answered; its answer went to the model.
    Ok,
    /// It failed (HTTP status, connection refused, bad body...); the model got an error text.
    Failed(String),
    /// No answer within the tool's timeout; the model got an error text.
    TimedOut,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolRecord {
    pub call_id: String,
    pub name: String,
    /// From the start of the call.
    pub started: Duration,
    pub duration: Duration,
    pub status: ToolStatus,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferRecord {
    /// From the start of the call.
    pub at: Duration,
    /// The configured queue name (never a target the model made up).
    pub queue: String,
    /// `refer` or `bridge`.
    pub method: String,
    /// The SIP URI from the configuration.
    pub target: String,
    /// Why: the model's stated reason, or the rule (`dtmf`, `max_duration`, `ai_unreachable`).
    pub reason: String,
    /// `transferred`, `bridged`, `no_answer`, `refused 603`, `timeout`...
    pub outcome: String,
}

#[derive(Debug, Clone)]
pub struct CallJournal {
    started: Instant,
    pub tools: Vec<ToolRecord>,
    pub transfers: Vec<TransferRecord>,
    /// Entries not kept because of [`MAX_ENTRIES`].
    pub dropped: u64,
}

impl CallJournal {
    pub fn new(started: Instant) -> CallJournal {
        CallJournal { started, tools: Vec::new(), transfers: Vec::new(), dropped: 0 }
    }

    /// When the call started (what every offset is counted from).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Time since the start of the call.
    pub fn offset(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.started)
    }

    pub fn tool(&mut self, record: ToolRecord) {
        if self.tools.len() < MAX_ENTRIES {
            self.tools.push(record);
        } else {
            self.dropped += 1;
        }
    }

    pub fn transfer(&mut self, record: TransferRecord) {
        if self.transfers.len() < MAX_ENTRIES {
            self.transfers.push(record);
        } else {
            self.dropped += 1;
        }
    }
}
