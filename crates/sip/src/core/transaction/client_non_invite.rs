//! The non-INVITE client transaction (RFC 3261 §17.1.2): our BYE, CANCEL and any other
//! request we send.
//!
//! ```text
//!                                   |Request from TU
//!                                   |send request
//!               Timer E             V
//!               send request  +-----------+
//!                   +---------|           |-------------------+
//!                   |         |  Trying   |  Timer F          |
//!                   +-------->|           |  or Transport Err.|
//!                             +-----------+  inform TU        |
//!                200-699         |  |                         |
//!                resp. to TU     |  |1xx                      |
//!                +---------------+  |resp. to TU              |
//!                |                  |                         |
//!                |   Timer E        V       Timer F           |
//!                |   send req +-----------+ or Transport Err. |
//!                |  +---------|           | inform TU         |
//!                |  |         |Proceeding |------------------>|
//!                |  +-------->|           |-----+             |
//!                |            +-----------+     |1xx          |
//!                |              |      ^        |resp to TU   |
//!                | 200-699      |      +--------+             |
//!                | resp. to TU  |                             |
//!                |              |                             |
//!                |              V                             |
//!                |            +-----------+                   |
//!                |            |           |                   |
//!                |            | Completed |                   |
//!                |            |           |                   |
//!                |            +-----------+                   |
//!                |              ^   |                         |
//!                |              |   | Timer K                 |
//!                +--------------+   | -                       |
//!                                   |                         |
//!                                   V                         |
//!             NOTE:           +-----------+                   |
//!                             |           |                   |
//!         transitions         | Terminated|<------------------+
//!         labeled with        |           |
//!         the event           +-----------+
//!         over the action
//!         to take
//! ```
//!
//! Timer E starts at T1 and doubles up to T2 (in Proceeding it stays at T2); Timer F is
//! 64*T1; Timer K is T4 over UDP, zero over TCP (no retransmitted responses to absorb).

use std::time::Instant;

use super::{Retransmit, expired};
use crate::Timers;
use crate::core::Transmit;

/// States of Figure 6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientNonInviteState {
    Trying,
    Proceeding,
    Completed,
    Terminated,
}

/// What a response means for the transaction user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonInviteResponse {
    /// A 1xx: nothing to do but wait.
    Provisional,
    /// The first final response: pass it up.
    Final,
    /// A retransmitted final response (Completed): absorbed.
    Absorbed,
}

/// What a timer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NonInviteTimeout {
    /// Nothing due.
    Idle,
    /// Timer E: send the request again.
    Retransmit(Transmit),
    /// Timer F: no final response; inform the TU.
    TimedOut,
    /// Timer K: the transaction is over (already reported).
    Terminated,
}

/// One non-INVITE client transaction.
#[derive(Debug)]
pub struct ClientNonInvite {
    state: ClientNonInviteState,
    transmit: Transmit,
    timer_e: Retransmit,
    timer_f: Instant,
    timer_k: Option<Instant>,
    timers: Timers,
}

impl ClientNonInvite {
    /// Starts the transaction; the caller sends `transmit` once now.
    pub fn start(now: Instant, transmit: Transmit, timers: Timers) -> ClientNonInvite {
        let reliable = transmit.transport.is_reliable();
        ClientNonInvite {
            state: ClientNonInviteState::Trying,
            timer_e: Retransmit::start(now, timers.t1, Some(timers.t2), reliable),
            timer_f: now + timers.t1_x64(),
            timer_k: None,
            transmit,
            timers,
        }
    }

    pub fn state(&self) -> ClientNonInviteState {
        self.state
    }

    /// The request as sent (for a CANCEL's or a BYE's retransmission, and for tests).
    pub fn transmit(&self) -> &Transmit {
        &self.transmit
    }

    /// Whether it still waits for a final response (Trying or Proceeding).
    pub fn is_waiting(&self) -> bool {
        matches!(self.state, ClientNonInviteState::Trying | ClientNonInviteState::Proceeding)
    }

    /// A response matched to this transaction (§17.1.3).
    pub fn on_response(&mut self, now: Instant, code: u16) -> NonInviteResponse {
        match self.state {
            ClientNonInviteState::Trying | ClientNonInviteState::Proceeding if code < 200 => {
                self.state = ClientNonInviteState::Proceeding;
                self.timer_e.settle_at(self.timers.t2);
                NonInviteResponse::Provisional
            }
            ClientNonInviteState::Trying | ClientNonInviteState::Proceeding => {
                self.state = ClientNonInviteState::Completed;
                self.timer_e.stop();
                let linger = if self.transmit.transport.is_reliable() { Default::default() } else { self.timers.t4 };
                self.timer_k = Some(now + linger);
                NonInviteResponse::Final
            }
            ClientNonInviteState::Completed | ClientNonInviteState::Terminated => NonInviteResponse::Absorbed,
        }
    }

    /// Runs the timers due at `now`.
    pub fn on_timeout(&mut self, now: Instant) -> NonInviteTimeout {
        match self.state {
            ClientNonInviteState::Trying | ClientNonInviteState::Proceeding => {
                if self.timer_f <= now {
                    self.state = ClientNonInviteState::Terminated;
                    return NonInviteTimeout::TimedOut;
                }
                if self.timer_e.fire(now) {
                    return NonInviteTimeout::Retransmit(self.transmit.clone());
                }
                NonInviteTimeout::Idle
            }
            ClientNonInviteState::Completed if expired(self.timer_k, now) => {
                self.state = ClientNonInviteState::Terminated;
                NonInviteTimeout::Terminated
            }
            ClientNonInviteState::Completed => NonInviteTimeout::Idle,
            ClientNonInviteState::Terminated => NonInviteTimeout::Terminated,
        }
    }

    /// The next deadline.
    pub fn deadline(&self) -> Option<Instant> {
        match self.state {
            ClientNonInviteState::Trying | ClientNonInviteState::Proceeding => {
                [self.timer_e.deadline(), Some(self.timer_f)].into_iter().flatten().min()
            }
            ClientNonInviteState::Completed => self.timer_k,
            ClientNonInviteState::Terminated => None,
        }
    }
}
