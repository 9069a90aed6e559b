//! Switchboard's SIP user agent (RFC 3261): a server for calls it receives and a client for
//! calls it places.
//!
//! Layers, in the quinn-proto/quinn style:
//! - [`message`]: parser and serializer (typed errors with salvage, so that a malformed
//!   request still gets its 400 or 505);
//! - [`core`]: a sans-IO endpoint (server and client transactions §17, dialogs with a role
//!   §12, CANCEL §9, BYE §15, calls we place §13.2) driven by `handle_message`/`handle_timeout`
//!   with time passed in, drained with `poll_transmit`/`poll_event`/`poll_timeout`;
//! - [`digest`]: digest authentication as a client (RFC 7616, RFC 2617);
//! - [`endpoint`]: the tokio shell (UDP socket, TCP listener with Content-Length framing) and
//!   the public async API ([`SipEndpoint`], [`ServerInvite`], [`ClientInvite`], [`Dialog`]);
//! - [`client`]: the types of a call we place ([`OutgoingCall`], [`CallFailure`]);
//! - [`tls`]: SIP over TLS (RFC 3261 §26): rustls configurations for the listener and for the
//!   connections we open, loaded from PEM files.
//!
//! No panic on any input from the network, and how that is kept true rather than claimed:
//! - lints on this crate's non-test code: `clippy::indexing_slicing` and
//!   `clippy::string_slice` (no `[]` indexing or slicing of bytes or strings: `get`,
//!   `split_at_checked`, iterators and patterns instead), plus the workspace's `unwrap_used` /
//!   `expect_used`; CI runs clippy with `-D warnings`;
//! - property tests: every RFC 4475 message and our own vectors in `testdata/`, mutated (byte
//!   flips, insertions, multi-byte and invalid UTF-8 in the start line) and truncated at every
//!   byte, through [`message::parse_message`] (parse/serialize round trip) and
//!   [`crate::core::Core::handle_message`] (whatever we answer parses);
//! - `cargo fuzz` targets for the parser, the stream framer and the core under `fuzz/` at the
//!   repository root (see `docs/testing.md`).

#![warn(clippy::string_slice, clippy::indexing_slicing)]

pub mod client;
pub mod core;
pub mod digest;
pub mod digest_server;
pub mod endpoint;
pub mod message;
pub mod screen;
pub mod sipfrag;
pub mod tls;

use std::time::Duration;

pub use crate::client::{CallFailure, Credentials, OutgoingCall};
pub use crate::core::CallInfo;
pub use crate::endpoint::{
    CallProgress, ClientInvite, Dialog, DialogEvent, DialogRequester, EndpointConfig, EndpointError, HangupError,
    IncomingCall, RequestError, ServerInvite, SipEndpoint,
};

/// Transport a message arrived on (and the one its responses go back on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    /// TLS over TCP (RFC 3261 §26.2): framed and bounded as TCP is.
    Tls,
}

impl Transport {
    /// Lower-case name for URIs (`transport=udp`) and metric labels.
    pub fn as_lower(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }

    /// Upper-case name for Via headers.
    pub fn as_upper(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }

    /// Whether the transport is reliable (RFC 3261 §17: no retransmissions over TCP or TLS).
    pub fn is_reliable(self) -> bool {
        matches!(self, Transport::Tcp | Transport::Tls)
    }

    /// The port a URI without one means on this transport (RFC 3261 §19.1.2: 5061 for TLS).
    pub fn default_port(self) -> u16 {
        match self {
            Transport::Udp | Transport::Tcp => 5060,
            Transport::Tls => 5061,
        }
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
