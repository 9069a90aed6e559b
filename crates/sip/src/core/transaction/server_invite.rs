//! The INVITE server transaction (RFC 3261 §17.2.1, with RFC 6026's Accepted state).
//!
//! ```text
//!                                |INVITE
//!                                |pass INV to TU
//!             INVITE             V send 100 if TU won't in 200 ms
//!             send response+-----------+
//!                 +--------|           |--------+ 101-199 from TU
//!                 |        |           |        | send response
//!                 +------->|           |<-------+
//!                          | Proceeding|
//!                          |           |--------+ Transport Err.
//!                          |           |        | Inform TU
//!                          |           |<-------+
//!                          +-----------+
//!             300-699 from TU |    |2xx from TU
//!             send response   |    |send response
//!              +--------------+    +------------+
//!              |                                |
//!  INVITE      V          Timer G fires         |
//!  send resp+-----------+ send response         |
//!     +-----|           |------+                |
//!     |     | Completed |      |                V
//!     +---->|           |<-----+         +-----------+
//!           +-----------+                |           |<--+ INVITE: resend 2xx
//!              |     |                   | Accepted  |   |
//!          ACK |     | Timer H fires     |           |---+
//!          -   |     | or Transport Err. +-----------+
//!              |     | Inform TU               |
//!              V     |                         | Timer L fires
//!     +-----------+  |                         | -
//!     |           |  |                         |
//!     | Confirmed |  |                         |
//!     |           |  |                         |
//!     +-----------+  |                         |
//!           |        |                         |
//!           |Timer I |                         |
//!           |-       |                         |
//!           V        V                         V
//!          +-------------------------------------+
//!          |             Terminated              |
//!          +-------------------------------------+
//! ```
//!
//! We send 100 Trying at once (we do not wait 200 ms for the application). Timer G starts at
//! T1 and doubles up to T2 (UDP only); Timer H is 64*T1; Timer I is T4 over UDP and zero over
//! TCP; Timer L is 64*T1. The dialog retransmits a 2xx on its own timer (§13.3.1.4); a
//! retransmitted INVITE, in any state, gets the last response again at once (in Accepted that
//! is the 2xx: harmless, and it reaches a caller whose ACK was lost sooner).

use std::time::Instant;

use super::{Retransmit, expired};
use crate::Timers;
use crate::core::{InviteId, Origin, Transmit};
use crate::message::Message;

/// States of Figure 7 (RFC 6026). Terminated transactions are removed by the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerInviteState {
    /// 100 or 180 sent; the application has not answered.
    Proceeding,
    /// A 3xx-6xx sent; Timer G retransmits it until the ACK or Timer H.
    Completed,
    /// The ACK for our 3xx-6xx arrived; Timer I absorbs its retransmissions.
    Confirmed,
    /// A 2xx sent; retransmitted INVITEs are absorbed until Timer L.
    Accepted,
}

/// What a timer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerTimeout {
    Idle,
    /// Timer G: send the response again.
    Retransmit(Transmit),
    /// Timer H, I or L: the transaction is over.
    Terminated,
}

/// One INVITE server transaction.
#[derive(Debug)]
pub struct ServerInvite {
    state: ServerInviteState,
    /// The last response sent.
    reply: Transmit,
    request: Message,
    origin: Origin,
    /// Our To tag for every response of this INVITE (and the CANCEL's 200, §9.2).
    to_tag: String,
    /// The pending application decision, for an initial INVITE.
    invite: Option<InviteId>,
    timer_g: Retransmit,
    /// Timer H, I or L.
    expires_at: Option<Instant>,
    timers: Timers,
}

impl ServerInvite {
    /// A new INVITE answered 100 Trying (`trying`, already sent): Proceeding.
    pub fn proceeding(
        request: Message,
        origin: Origin,
        to_tag: String,
        invite: Option<InviteId>,
        trying: Transmit,
        timers: Timers,
    ) -> ServerInvite {
        ServerInvite {
            state: ServerInviteState::Proceeding,
            reply: trying,
            request,
            origin,
            to_tag,
            invite,
            timer_g: Retransmit::off(timers.t1),
            expires_at: None,
            timers,
        }
    }

    /// An INVITE answered at once with a final response (already sent): a 3xx-6xx goes to
    /// Completed, a 2xx to Accepted.
    pub fn answered(
        now: Instant,
        request: Message,
        origin: Origin,
        to_tag: String,
        reply: Transmit,
        status: u16,
        timers: Timers,
    ) -> ServerInvite {
        let mut transaction = ServerInvite::proceeding(request, origin, to_tag, None, reply.clone(), timers);
        if (200..300).contains(&status) {
            transaction.accept(now, reply);
        } else {
            transaction.complete(now, reply);
        }
        transaction
    }

    pub fn state(&self) -> ServerInviteState {
        self.state
    }

    pub fn request(&self) -> &Message {
        &self.request
    }

    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    pub fn to_tag(&self) -> &str {
        &self.to_tag
    }

    pub fn invite(&self) -> Option<InviteId> {
        self.invite
    }

    /// A 1xx from the TU (sent by the caller): the response a retransmitted INVITE gets.
    pub fn provisional(&mut self, reply: Transmit) {
        if self.state == ServerInviteState::Proceeding {
            self.reply = reply;
        }
    }

    /// A 3xx-6xx from the TU (sent by the caller): Completed; Timer G over UDP, Timer H.
    pub fn complete(&mut self, now: Instant, reply: Transmit) {
        let reliable = self.origin.transport.is_reliable();
        self.state = ServerInviteState::Completed;
        self.reply = reply;
        self.timer_g = Retransmit::start(now, self.timers.t1, Some(self.timers.t2), reliable);
        self.expires_at = Some(now + self.timers.t1_x64());
    }

    /// A 2xx from the TU (sent by the caller): Accepted until Timer L (RFC 6026 §7.1).
    pub fn accept(&mut self, now: Instant, reply: Transmit) {
        self.state = ServerInviteState::Accepted;
        self.reply = reply;
        self.timer_g.stop();
        self.expires_at = Some(now + self.timers.t1_x64());
    }

    /// An ACK matching this transaction (§17.2.3). `true` when the transaction takes it (an ACK
    /// for our 3xx-6xx): Completed -> Confirmed with Timer I (T4, or zero when the ACK came
    /// over a reliable transport). `false`: the ACK is for a 2xx, the dialog's business.
    pub fn on_ack(&mut self, now: Instant, reliable: bool) -> bool {
        match self.state {
            ServerInviteState::Completed => {
                self.state = ServerInviteState::Confirmed;
                self.timer_g.stop();
                self.expires_at = Some(if reliable { now } else { now + self.timers.t4 });
                true
            }
            ServerInviteState::Confirmed => true,
            ServerInviteState::Proceeding | ServerInviteState::Accepted => false,
        }
    }

    /// A retransmitted INVITE: the last response is sent again (§17.2.1).
    pub fn on_retransmission(&self) -> Option<Transmit> {
        (!self.reply.payload.is_empty()).then(|| self.reply.clone())
    }

    /// Runs the timers due at `now`.
    pub fn on_timeout(&mut self, now: Instant) -> ServerTimeout {
        if expired(self.expires_at, now) {
            return ServerTimeout::Terminated;
        }
        if self.timer_g.fire(now) {
            return ServerTimeout::Retransmit(self.reply.clone());
        }
        ServerTimeout::Idle
    }

    /// The next deadline.
    pub fn deadline(&self) -> Option<Instant> {
        [self.timer_g.deadline(), self.expires_at].into_iter().flatten().min()
    }
}
