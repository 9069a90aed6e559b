//! Switchboard's SIP user-agent-server endpoint (RFC 3261).
//!
//! Layers, in the quinn-proto/quinn style:
//! - [`message`]: parser and serializer (never panics; typed errors with salvage for 400s);
//! - [`core`]: a sans-IO endpoint (transactions §17.2, dialogs §12, CANCEL §9, our BYE §15)
//!   driven by `handle_message`/`handle_timeout` with time passed in, drained with
//!   `poll_transmit`/`poll_event`/`poll_timeout`;
//! - [`endpoint`]: the tokio shell (UDP socket, TCP listener with Content-Length framing) and
//!   the public async API ([`SipEndpoint`], [`ServerInvite`], [`Dialog`]).

#![warn(clippy::string_slice, clippy::indexing_slicing)]

pub mod core;
pub mod endpoint;
pub mod message;

use std::time::Duration;

pub use crate::core::CallInfo;
pub use crate::endpoint::{
    Dialog, DialogEvent, EndpointConfig, EndpointError, HangupError, IncomingCall, ServerInvite, SipEndpoint,
};

/// Transport a message arrived on (and the one its responses go back on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    /// Lower-case name for URIs (`transport=udp`) and metric labels.
    pub fn as_lower(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }

    /// Upper-case name for Via headers.
    pub fn as_upper(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        }
    }

    /// Whether the transport is reliable (RFC 3261 §17: no retransmissions over TCP).
    pub fn is_reliable(self) -> bool {
        matches!(self, Transport::Tcp)
    }
}

/// RFC 3261 §17.1.1.1 timer values (configurable so tests can run fast).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// RTT estimate; base of Timers A, E, G and the 64*T1 timeouts.
    pub t1: Duration,
    /// Maximum retransmit interval for non-INVITE requests and INVITE responses.
    pub t2: Duration,
    /// Maximum time a message stays in the network (Timers I, K).
    pub t4: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers { t1: Duration::from_millis(500), t2: Duration::from_secs(4), t4: Duration::from_secs(5) }
    }
}

impl Timers {
    /// 64*T1: Timers B, F, H, J and the 2xx ACK wait (§13.3.1.4).
    pub fn t1_x64(&self) -> Duration {
        self.t1 * 64
    }
}
