//! The non-INVITE server transaction (RFC 3261 §17.2.2).
//!
//! ```text
//!                           |Request received
//!                           |pass to TU
//!                           V
//!                     +-----------+
//!                     |           |
//!                     | Trying    |-------------+
//!                     |           |             |
//!                     +-----------+             |200-699 from TU
//!                           |                   |send response
//!                           |1xx from TU        |
//!                           |send response      |
//!                           |                   |
//!        Request            V      1xx from TU  |
//!        send response+-----------+send response|
//!            +--------|           |--------+    |
//!            |        | Proceeding|        |    |
//!            +------->|           |<-------+    |
//!     +<--------------|           |             |
//!     |Trnsprt Err    +-----------+             |
//!     |Inform TU            |                   |
//!     |                     |                   |
//!     |                     |200-699 from TU    |
//!     |                     |send response      |
//!     |  Request            V                   |
//!     |  send response+-----------+             |
//!     |      +--------|           |             |
//!     |      |        | Completed |<------------+
//!     |      +------->|           |
//!     +<--------------|           |
//!     |Trnsprt Err    +-----------+
//!     |Inform TU            |
//!     |                     |Timer J fires
//!     |                     |-
//!     |                     |
//!     |                     V
//!     |               +-----------+
//!     +-------------->|           |
//!                     | Terminated|
//!                     |           |
//!                     +-----------+
//! ```
//!
//! Every non-INVITE request we serve (OPTIONS, BYE, CANCEL, the error responses) is answered
//! at once, so a transaction starts in Completed; Trying and Proceeding exist for the diagram
//! and for a future TU that answers later. Timer J is 64*T1 over UDP; over TCP it is zero, so
//! no transaction is kept at all.

use std::time::Instant;

use crate::Timers;
use crate::core::{Origin, Transmit};

/// States of Figure 8. Terminated transactions are removed by the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerNonInviteState {
    Trying,
    Proceeding,
    Completed,
}

/// One non-INVITE server transaction.
#[derive(Debug)]
pub struct ServerNonInvite {
    state: ServerNonInviteState,
    reply: Transmit,
    origin: Origin,
    timer_j: Instant,
}

impl ServerNonInvite {
    /// A request answered with its final response (already sent): Completed until Timer J.
    /// `None` over a reliable transport (Timer J = 0: nothing to keep).
    pub fn completed(now: Instant, origin: Origin, reply: Transmit, timers: Timers) -> Option<ServerNonInvite> {
        if origin.transport.is_reliable() {
            return None;
        }
        Some(ServerNonInvite { state: ServerNonInviteState::Completed, reply, origin, timer_j: now + timers.t1_x64() })
    }

    pub fn state(&self) -> ServerNonInviteState {
        self.state
    }

    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// A retransmitted request: the final response again (§17.2.2).
    pub fn on_retransmission(&self) -> Option<Transmit> {
        (self.state == ServerNonInviteState::Completed && !self.reply.payload.is_empty()).then(|| self.reply.clone())
    }

    /// Whether Timer J has fired.
    pub fn expired(&self, now: Instant) -> bool {
        self.timer_j <= now
    }

    pub fn deadline(&self) -> Option<Instant> {
        Some(self.timer_j)
    }
}
