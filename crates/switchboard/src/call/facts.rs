//! Who called whom, through what: the facts of one call that tool webhooks, transfer headers,
//! the recording's sidecar and the call detail record all carry.

use std::net::SocketAddr;
use std::time::SystemTime;

use super::CallDirection;

#[derive(Debug, Clone)]
pub struct CallFacts {
    /// The gateway's id for the call (the admin API's, the recording's file name).
    pub id: String,
    /// The SIP Call-ID of the caller's dialog.
    pub sip_call_id: String,
    pub direction: CallDirection,
    /// The caller: From's URI (inbound), or our caller ID (outbound).
    pub from: String,
    /// The dialled number (Request-URI user, inbound) or the number we called (outbound).
    pub to: String,
    /// The agent answering.
    pub agent: String,
    /// The route that chose the agent (its name or index), empty for outbound calls.
    pub route: String,
    /// Where the INVITE came from (inbound) or the trunk's address (outbound).
    pub peer: Option<SocketAddr>,
    /// The negotiated codec's encoding name (`PCMU`, `opus`...).
    pub codec: String,
    /// When the INVITE arrived (inbound) or was sent (outbound).
    pub started: SystemTime,
    /// When the call was answered.
    pub answered: SystemTime,
    /// The trunk: an inbound call's by its source or credentials (`access`), an outbound call's.
    pub trunk: Option<String>,
    /// `rtp` for plain media, else the SRTP suite (`AES_CM_128_HMAC_SHA1_80`...).
    pub media_security: &'static str,
}
