//! The screen: what the application decides about a new out-of-dialog request before the core
//! answers it at all (not even 100 Trying), so that a request refused by source, User-Agent,
//! rate or authentication costs nothing and, when dropped, tells its sender nothing.
//!
//! The core consults it once per new server transaction (retransmissions are absorbed first,
//! so they are not screened twice), for every method but ACK; in-dialog requests (a To-tag)
//! and responses are never screened. A CANCEL is screened too (by source and User-Agent), but
//! must not be challenged (RFC 3261 §22.1): the screen gets the method and decides.

use std::time::Instant;

use crate::core::Origin;
use crate::message::Message;

/// What the core does with a new request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Handle it as usual.
    Pass,
    /// Answer it with this final response (through a server transaction, so retransmissions
    /// get the same answer and the ACK of a refused INVITE is absorbed).
    Reject { status: u16, reason: String, headers: Vec<(String, String)> },
    /// Send nothing at all.
    Drop,
}

/// Decides about new out-of-dialog requests. Called on the SIP driver task: it must be quick
/// and must not block.
pub trait Screen: Send + Sync + std::fmt::Debug {
    fn screen(&self, now: Instant, origin: &Origin, request: &Message) -> Verdict;
}
