//! How a call ended, and whose fault it was. One typed value drives the SIP response code (for
//! calls refused before answer), the log line and the `switchboard_calls_total` labels.

use std::fmt;

/// Who caused the end of a call. Operators alert on `Upstream` and `Gateway`, not on `Caller`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Nobody: a normal hang-up.
    None,
    /// The caller or its network (bad request, no common codec, media gone).
    Caller,
    /// The AI side (Realtime connect failed, dropped, fatal error).
    Upstream,
    /// Us or our configuration (overload, no route, no port, shutdown).
    Gateway,
}

/// Why a call was refused before it was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 400: the INVITE or its SDP could not be understood.
    BadRequest(String),
    /// 404: no agent answers the dialled number.
    NoRoute,
    /// 488: no codec in common, or no usable audio stream.
    NotAcceptable(String),
    /// 503 + Retry-After: at `calls.max_concurrent`.
    Overloaded,
    /// 503: the RTP port range is exhausted.
    NoMediaPort,
    /// 503: the Realtime session could not be opened.
    AgentUnavailable(String),
}

impl Refusal {
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            Refusal::BadRequest(_) => (400, "Bad Request"),
            Refusal::NoRoute => (404, "Not Found"),
            Refusal::NotAcceptable(_) => (488, "Not Acceptable Here"),
            Refusal::Overloaded | Refusal::NoMediaPort | Refusal::AgentUnavailable(_) => (503, "Service Unavailable"),
        }
    }

    pub fn fault(&self) -> Fault {
        match self {
            Refusal::BadRequest(_) | Refusal::NotAcceptable(_) => Fault::Caller,
            Refusal::AgentUnavailable(_) => Fault::Upstream,
            Refusal::NoRoute | Refusal::Overloaded | Refusal::NoMediaPort => Fault::Gateway,
        }
    }

    fn reason_label(&self) -> &'static str {
        match self {
            Refusal::BadRequest(_) => "bad_request",
            Refusal::NoRoute => "no_route",
            Refusal::NotAcceptable(_) => "no_common_codec",
            Refusal::Overloaded => "overloaded",
            Refusal::NoMediaPort => "no_media_port",
            Refusal::AgentUnavailable(_) => "agent_unavailable",
        }
    }
}

/// The one way every call ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallEnd {
    Refused(Refusal),
    /// CANCEL before we answered (487 sent).
    CallerCancelled,
    /// BYE from the caller.
    CallerHangup,
    /// No ACK for our 200 OK (the SIP layer sent BYE).
    AckTimeout,
    /// No RTP from the caller for `media.rtp_timeout_secs`; we sent BYE.
    RtpTimeout,
    /// The Realtime WebSocket closed or failed mid-call; we sent BYE.
    AgentDisconnected(String),
    /// The Realtime API sent a fatal `error` (expired session, bad key, ...); we sent BYE.
    AgentFatalError(String),
    /// The gateway is shutting down; we sent BYE.
    GatewayShutdown,
}

impl CallEnd {
    pub fn fault(&self) -> Fault {
        match self {
            CallEnd::Refused(r) => r.fault(),
            CallEnd::CallerCancelled | CallEnd::CallerHangup => Fault::None,
            CallEnd::AckTimeout | CallEnd::RtpTimeout => Fault::Caller,
            CallEnd::AgentDisconnected(_) | CallEnd::AgentFatalError(_) => Fault::Upstream,
            CallEnd::GatewayShutdown => Fault::Gateway,
        }
    }

    /// `outcome` label: completed, refused, cancelled or failed.
    pub fn outcome_label(&self) -> &'static str {
        match self {
            CallEnd::Refused(_) => "refused",
            CallEnd::CallerCancelled => "cancelled",
            CallEnd::CallerHangup | CallEnd::GatewayShutdown => "completed",
            CallEnd::AckTimeout | CallEnd::RtpTimeout | CallEnd::AgentDisconnected(_) | CallEnd::AgentFatalError(_) => {
                "failed"
            }
        }
    }

    /// `reason` label: a fixed, small set.
    pub fn reason_label(&self) -> &'static str {
        match self {
            CallEnd::Refused(r) => r.reason_label(),
            CallEnd::CallerCancelled => "caller_cancel",
            CallEnd::CallerHangup => "caller_bye",
            CallEnd::AckTimeout => "ack_timeout",
            CallEnd::RtpTimeout => "rtp_timeout",
            CallEnd::AgentDisconnected(_) => "agent_disconnected",
            CallEnd::AgentFatalError(_) => "agent_error",
            CallEnd::GatewayShutdown => "shutdown",
        }
    }

    /// Whether the gateway must send BYE to end the dialog.
    pub fn needs_bye(&self) -> bool {
        matches!(
            self,
            CallEnd::RtpTimeout
                | CallEnd::AgentDisconnected(_)
                | CallEnd::AgentFatalError(_)
                | CallEnd::GatewayShutdown
        )
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::None => "none",
            Fault::Caller => "caller",
            Fault::Upstream => "upstream",
            Fault::Gateway => "gateway",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_map_to_precise_status_codes_and_faults() {
        assert_eq!(Refusal::NoRoute.status().0, 404);
        assert_eq!(Refusal::NotAcceptable("x".into()).status().0, 488);
        assert_eq!(Refusal::BadRequest("x".into()).status().0, 400);
        assert_eq!(Refusal::Overloaded.status().0, 503);
        assert_eq!(Refusal::AgentUnavailable("x".into()).fault(), Fault::Upstream);
        assert_eq!(CallEnd::Refused(Refusal::NotAcceptable("x".into())).fault(), Fault::Caller);
    }

    #[test]
    fn only_gateway_initiated_ends_send_bye() {
        assert!(CallEnd::RtpTimeout.needs_bye());
        assert!(!CallEnd::CallerHangup.needs_bye());
        assert!(!CallEnd::AckTimeout.needs_bye(), "the SIP layer already sent BYE");
    }
}
