//! The SIP stack as a client: placing a call (RFC 3261 §13.2, the UAC side of an INVITE).
//!
//! [`crate::SipEndpoint::place_call`] takes an [`OutgoingCall`] and returns a
//! [`ClientInvite`]; its [`ClientInvite::progress`] yields each step ([`CallProgress`]) until a
//! final one: answered (with the confirmed [`crate::Dialog`], ACK already sent) or failed with a
//! typed [`CallFailure`] that says who is at fault.

use std::net::SocketAddr;
use std::time::Duration;

use crate::Transport;

/// Digest credentials (RFC 3261 §22.2) answered once per challenge.
///
/// `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).field("password", &"<redacted>").finish()
    }
}

/// A call to place.
#[derive(Debug, Clone)]
pub struct OutgoingCall {
    /// Request-URI, e.g. `sip:+15551234567@203.0.113.5:5060`.
    pub request_uri: String,
    /// To URI (usually the Request-URI).
    pub to: String,
    /// From URI (`sip:from_user@from_domain`).
    pub from_uri: String,
    /// From display name.
    pub from_display: Option<String>,
    /// Next hop, already resolved by the caller.
    pub destination: SocketAddr,
    pub transport: Transport,
    /// Our SDP offer (RFC 3264 §5), sent in the INVITE.
    pub sdp_offer: String,
    /// Answered once per call when a 401/407 comes back.
    pub credentials: Option<Credentials>,
    /// How long to let it ring: then CANCEL (RFC 3261 §9.1), outcome [`CallFailure::NoAnswer`].
    pub ring_timeout: Duration,
    /// Extra headers on the INVITE (a transfer's `X-` context headers), as given: the caller
    /// keeps CR/LF out of them.
    pub extra_headers: Vec<(String, String)>,
    /// With [`Transport::Tls`]: how to verify the peer (trust anchors, server name). `None`:
    /// the system's trust store and the destination's IP address as the name.
    pub tls: Option<crate::tls::TlsConnect>,
}

/// Why a call we placed did not connect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallFailure {
    /// The callee is busy: 486 Busy Here or 600 Busy Everywhere.
    #[error("busy ({status})")]
    Busy { status: u16 },
    /// Another final response 3xx-6xx (the callee's or a proxy's decision).
    #[error("rejected: {status} {reason}")]
    Rejected { status: u16, reason: String },
    /// Nobody answered within the ring timeout: CANCEL sent, 487 received (or no final
    /// response at all).
    #[error("no answer within the ring timeout")]
    NoAnswer,
    /// 401/407 again after our credentials (not `stale`), or a challenge without credentials.
    #[error("authentication failed ({status})")]
    AuthFailed { status: u16 },
    /// Timer B (nothing came back), a transport error, or 408.
    #[error("unreachable: {reason}")]
    Unreachable { reason: String },
    /// We cancelled it ([`ClientInvite::cancel`]).
    #[error("cancelled by us")]
    Cancelled,
}

impl CallFailure {
    /// Short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            CallFailure::Busy { .. } => "busy",
            CallFailure::Rejected { .. } => "rejected",
            CallFailure::NoAnswer => "no_answer",
            CallFailure::AuthFailed { .. } => "auth_failed",
            CallFailure::Unreachable { .. } => "unreachable",
            CallFailure::Cancelled => "cancelled",
        }
    }
}

pub use crate::endpoint::{CallProgress, ClientInvite};
