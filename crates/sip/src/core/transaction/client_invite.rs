//! The INVITE client transaction (RFC 3261 §17.1.1, with RFC 6026's Accepted state).
//!
//! ```text
//!                                |INVITE from TU
//!              Timer A fires     |INVITE sent      Timer B fires
//!              Reset A,          V                 or Transport Err.
//!              INVITE sent +-----------+           inform TU
//!                +---------|           |--------------------------+
//!                |         |  Calling  |                          |
//!                +-------->|           |-----------+              |
//!   300-699                +-----------+ 2xx       |              |
//!   ACK sent                  |  |       2xx to TU |              |
//!   resp. to TU               |  |1xx              |              |
//!   +-------------------------+  |1xx to TU        |              |
//!   |                            |                 |              |
//!   |                1xx         V                 |              |
//!   |                1xx to TU +-----------+       |              |
//!   |                +---------|           |       |              |
//!   |                |         |Proceeding |       |              |
//!   |                +-------->|           |       |              |
//!   |                          +-----------+ 2xx   |              |
//!   |         300-699             |    |     2xx to TU            |
//!   |         ACK sent,  +--------+    +---------------+          |
//!   |         resp. to TU|                         |   |          |
//!   |                    |                         V   V          |
//!   |                    |                   +-----------+        |
//!   |                    |                   | Accepted  |<--+    |
//!   |                    |                   +-----------+   |    |
//!   |                    |                      |   |  2xx to TU  |
//!   |                    |                      |   +--------+    |
//!   |                    |                      |Timer M fires    |
//!   |                    V                      |                 |
//!   |   300-699    +-----------+                |                 |
//!   |   ACK sent   |           |                |                 |
//!   |  +-----------| Completed |                |                 |
//!   |  |           |           |                |                 |
//!   |  +---------->+-----------+                |                 |
//!   |                 ^   |                     |                 |
//!   |                 |   | Timer D fires       |                 |
//!   +-----------------+   | -                   |                 |
//!                         V                     V                 |
//!                   +-----------+                                 |
//!                   | Terminated|<--------------------------------+
//!                   +-----------+
//! ```
//!
//! Timer A starts at T1 and doubles without ceiling (UDP only); Timer B is 64*T1 and applies in
//! Calling only (a ringing phone is bounded by the caller's ring timeout, not by B); Timer D is
//! 32 s over UDP (at least 64*T1 would also do; §17.1.1.2 says "at least 32 seconds"), zero over
//! TCP; Timer M (RFC 6026 §8.4) is 64*T1 and lets every 2xx of the INVITE (retransmissions,
//! forks) reach the TU, which ACKs each from its dialog (§13.2.2.4).
//!
//! The ACK for a non-2xx is built here (§17.1.1.3): same Request-URI, Call-ID, From, CSeq
//! number and top Via (same branch) as the INVITE, the response's To (with its tag), the
//! INVITE's Route headers.

use std::time::{Duration, Instant};

use super::{Retransmit, expired};
use crate::Timers;
use crate::core::Transmit;
use crate::message::{Message, Method};

/// States of Figure 5 (RFC 6026).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientInviteState {
    Calling,
    Proceeding,
    Accepted,
    Completed,
    Terminated,
}

/// What a response means for the transaction user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InviteResponse {
    /// A 1xx: pass it up.
    Provisional,
    /// A 2xx (first, retransmitted or from another fork): pass it up; the TU ACKs it.
    Success,
    /// The first 3xx-6xx: send this ACK and pass the response up.
    Failure { ack: Transmit },
    /// A retransmitted 3xx-6xx: send the ACK again, nothing for the TU.
    RetransmittedFailure { ack: Transmit },
    /// Nothing to do (a late response after the transaction ended).
    Absorbed,
}

/// What a timer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InviteTimeout {
    Idle,
    /// Timer A: send the INVITE again.
    Retransmit(Transmit),
    /// Timer B: no response at all; inform the TU.
    TimedOut,
    /// Timer D or M: the transaction is over (already reported).
    Terminated,
}

/// Timer D over UDP (§17.1.1.2: at least 32 s).
const TIMER_D_UNRELIABLE: Duration = Duration::from_secs(32);

/// One INVITE client transaction.
#[derive(Debug)]
pub struct ClientInvite {
    state: ClientInviteState,
    request: Message,
    transmit: Transmit,
    timer_a: Retransmit,
    timer_b: Instant,
    /// Timer D (Completed) or Timer M (Accepted).
    linger_until: Option<Instant>,
    /// The ACK for our non-2xx, resent for each retransmission of it.
    ack: Option<Transmit>,
    timers: Timers,
}

impl ClientInvite {
    /// Starts the transaction for `request` (already serialized in `transmit`, which the
    /// caller sends once now).
    pub fn start(now: Instant, request: Message, transmit: Transmit, timers: Timers) -> ClientInvite {
        let reliable = transmit.transport.is_reliable();
        ClientInvite {
            state: ClientInviteState::Calling,
            request,
            timer_a: Retransmit::start(now, timers.t1, None, reliable),
            timer_b: now + timers.t1_x64(),
            linger_until: None,
            ack: None,
            transmit,
            timers,
        }
    }

    pub fn state(&self) -> ClientInviteState {
        self.state
    }

    /// The INVITE as sent.
    pub fn request(&self) -> &Message {
        &self.request
    }

    /// Whether a provisional or final response has arrived (§9.1: a CANCEL may be sent only
    /// once the INVITE got a provisional response).
    pub fn has_response(&self) -> bool {
        self.state != ClientInviteState::Calling
    }

    /// A response matched to this transaction (§17.1.3).
    pub fn on_response(&mut self, now: Instant, response: &Message, code: u16) -> InviteResponse {
        use ClientInviteState::*;
        match (self.state, code) {
            (Calling | Proceeding, 100..=199) => {
                self.state = Proceeding;
                self.timer_a.stop();
                InviteResponse::Provisional
            }
            (Calling | Proceeding, 200..=299) => {
                self.state = Accepted;
                self.timer_a.stop();
                self.linger_until = Some(now + self.timers.t1_x64());
                InviteResponse::Success
            }
            (Accepted, 200..=299) => InviteResponse::Success,
            (Calling | Proceeding, _) if code >= 300 => {
                self.state = Completed;
                self.timer_a.stop();
                let linger = if self.transmit.transport.is_reliable() { Duration::ZERO } else { TIMER_D_UNRELIABLE };
                self.linger_until = Some(now + linger);
                let ack = Transmit { payload: self.build_ack(response).to_bytes(), ..self.transmit.clone() };
                self.ack = Some(ack.clone());
                InviteResponse::Failure { ack }
            }
            (Completed, _) if code >= 300 => match &self.ack {
                Some(ack) => InviteResponse::RetransmittedFailure { ack: ack.clone() },
                None => InviteResponse::Absorbed,
            },
            _ => InviteResponse::Absorbed,
        }
    }

    /// Runs the timers due at `now`.
    pub fn on_timeout(&mut self, now: Instant) -> InviteTimeout {
        use ClientInviteState::*;
        match self.state {
            Calling if self.timer_b <= now => {
                self.state = Terminated;
                InviteTimeout::TimedOut
            }
            Calling if self.timer_a.fire(now) => InviteTimeout::Retransmit(self.transmit.clone()),
            Accepted | Completed if expired(self.linger_until, now) => {
                self.state = Terminated;
                InviteTimeout::Terminated
            }
            Terminated => InviteTimeout::Terminated,
            _ => InviteTimeout::Idle,
        }
    }

    /// The next deadline.
    pub fn deadline(&self) -> Option<Instant> {
        match self.state {
            ClientInviteState::Calling => [self.timer_a.deadline(), Some(self.timer_b)].into_iter().flatten().min(),
            ClientInviteState::Proceeding | ClientInviteState::Terminated => None,
            ClientInviteState::Accepted | ClientInviteState::Completed => self.linger_until,
        }
    }

    /// §17.1.1.3: the ACK for a non-2xx final response.
    fn build_ack(&self, response: &Message) -> Message {
        let mut ack = Message::request(Method::Ack, self.request.request_uri().unwrap_or_default());
        if let Some(via) = self.request.header("Via") {
            ack.push_header("Via", via);
        }
        ack.push_header("Max-Forwards", "70");
        for route in self.request.header_values("Route") {
            ack.push_header("Route", route);
        }
        self.copy(&mut ack, "From");
        match response.header("To") {
            Some(to) => ack.push_header("To", to),
            None => self.copy(&mut ack, "To"),
        }
        self.copy(&mut ack, "Call-ID");
        let number = self.request.cseq().map(|(n, _)| n).unwrap_or_default();
        ack.push_header("CSeq", format!("{number} ACK"));
        ack
    }

    /// §9.1: the CANCEL for this INVITE: same Request-URI, Call-ID, To, From, CSeq number and
    /// Route; a single Via equal to the INVITE's top Via, so it matches the same server
    /// transaction.
    pub fn build_cancel(&self) -> Message {
        let mut cancel = Message::request(Method::Cancel, self.request.request_uri().unwrap_or_default());
        if let Some(via) = self.request.header("Via") {
            cancel.push_header("Via", via);
        }
        cancel.push_header("Max-Forwards", "70");
        for route in self.request.header_values("Route") {
            cancel.push_header("Route", route);
        }
        for name in ["From", "To", "Call-ID"] {
            self.copy(&mut cancel, name);
        }
        let number = self.request.cseq().map(|(n, _)| n).unwrap_or_default();
        cancel.push_header("CSeq", format!("{number} CANCEL"));
        cancel
    }

    /// The transmit template (transport, destination, connection) of this transaction.
    pub fn transmit(&self) -> &Transmit {
        &self.transmit
    }

    fn copy(&self, into: &mut Message, name: &str) {
        if let Some(value) = self.request.header(name) {
            into.push_header(name, value);
        }
    }
}
