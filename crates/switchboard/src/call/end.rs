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
    /// 503 + Retry-After: the gateway is shutting down (draining); a proxy sends the call elsewhere.
    ShuttingDown,
    /// 503 + Retry-After: the RTP port range is exhausted.
    NoMediaPort,
    /// 503 + Retry-After: the Realtime endpoint could not be reached (TCP, TLS, WebSocket).
    AgentUnavailable(String),
    /// 503: the Realtime endpoint answered the WebSocket upgrade with an HTTP error (§1.3), e.g.
    /// 401/403 (our key or account), 429 or 5xx.
    AgentRejectedUpgrade { status: u16, body: String },
    /// 503 + Retry-After: connect, `session.created` and `session.updated` did not all arrive
    /// within `realtime.connect_timeout_ms`. Says which one was missing.
    AgentTimeout(&'static str),
    /// 503: the session was refused after the upgrade: an `error` for our `session.update`, or
    /// the connection closed during setup.
    AgentSessionRefused(String),
    /// 503: `session.updated` confirmed audio formats the media code cannot produce or play.
    AgentFormatMismatch(String),
    /// A reject route's code (403, 404, 480, 486 or 603): refused as configured.
    Rejected(switchboard_router::RejectCode),
}

impl Refusal {
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            Refusal::BadRequest(_) => (400, "Bad Request"),
            Refusal::NoRoute => (404, "Not Found"),
            Refusal::NotAcceptable(_) => (488, "Not Acceptable Here"),
            Refusal::Overloaded
            | Refusal::ShuttingDown
            | Refusal::NoMediaPort
            | Refusal::AgentUnavailable(_)
            | Refusal::AgentRejectedUpgrade { .. }
            | Refusal::AgentTimeout(_)
            | Refusal::AgentSessionRefused(_)
            | Refusal::AgentFormatMismatch(_) => (503, "Service Unavailable"),
            Refusal::Rejected(code) => (code.code(), code.reason()),
        }
    }

    /// Whether the answer carries `Retry-After: calls.retry_after_secs` (RFC 3261 §21.5.4): every
    /// 503 does. Even a refusal that retrying here will not cure soon (401 from the Realtime
    /// endpoint) is one a proxy should route around for that long, to another gateway.
    pub fn retry_after(&self) -> bool {
        self.status().0 == 503
    }

    pub fn fault(&self) -> Fault {
        match self {
            Refusal::BadRequest(_) | Refusal::NotAcceptable(_) => Fault::Caller,
            Refusal::AgentUnavailable(_)
            | Refusal::AgentRejectedUpgrade { .. }
            | Refusal::AgentTimeout(_)
            | Refusal::AgentSessionRefused(_)
            | Refusal::AgentFormatMismatch(_) => Fault::Upstream,
            Refusal::NoRoute | Refusal::Overloaded | Refusal::ShuttingDown | Refusal::NoMediaPort => Fault::Gateway,
            // The configuration did what it was told: nobody to alert.
            Refusal::Rejected(_) => Fault::None,
        }
    }

    fn reason_label(&self) -> &'static str {
        match self {
            Refusal::BadRequest(_) => "bad_request",
            Refusal::NoRoute => "no_route",
            Refusal::NotAcceptable(_) => "no_common_codec",
            Refusal::Overloaded => "overloaded",
            Refusal::ShuttingDown => "shutdown",
            Refusal::NoMediaPort => "no_media_port",
            Refusal::AgentUnavailable(_) => "agent_unavailable",
            Refusal::AgentRejectedUpgrade { .. } => "agent_rejected_upgrade",
            Refusal::AgentTimeout(_) => "agent_timeout",
            Refusal::AgentSessionRefused(_) => "agent_session_refused",
            Refusal::AgentFormatMismatch(_) => "agent_format_mismatch",
            Refusal::Rejected(_) => "rejected_by_route",
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
    /// No frame from the Realtime API (not even a pong) for `realtime.watchdog_secs`; we sent BYE.
    AgentWatchdog(std::time::Duration),
    /// The Realtime API sent a message over `realtime.max_message_bytes`; we sent BYE.
    AgentMessageTooLarge(String),
    /// The gateway is shutting down; we sent BYE.
    GatewayShutdown,
    /// The answered call's media could not be set up (RTP socket); we sent BYE.
    MediaSetupFailed(String),
    /// The operator hung up through the admin API (`DELETE /v1/calls/{id}`); we sent BYE.
    Operator,
    /// The agent called its `end_call` tool; we sent BYE once its goodbye had played.
    AgentHangup,
    /// The caller stayed silent through `agents.X.idle_prompts` re-prompts; the agent said
    /// goodbye and we sent BYE.
    CallerIdle,
    /// The call reached `agents.X.max_call_secs`; the agent said goodbye (or the grace period
    /// ran out) and we sent BYE.
    MaxDuration,
    /// The caller was handed to a human: the REFER's NOTIFY said 2xx (the caller's side now
    /// talks to the queue; we sent BYE on our leg), or the bridged human hung up.
    Transferred,
    /// A transfer failed with `on_failure = "hangup"`: the agent said goodbye and we sent BYE.
    TransferFailed,
    /// Our offer (delayed offer, re-INVITE without SDP) got no usable answer in the ACK; we sent
    /// BYE (RFC 3261 §14.2).
    BadSdpAnswer(String),
    /// The session timer ran out (RFC 4028 §10): the caller did not refresh the session, or our
    /// refresh failed; the SIP layer sent BYE.
    SessionExpired,
}

impl CallEnd {
    pub fn fault(&self) -> Fault {
        match self {
            CallEnd::Refused(r) => r.fault(),
            CallEnd::CallerCancelled | CallEnd::CallerHangup => Fault::None,
            CallEnd::AckTimeout | CallEnd::RtpTimeout => Fault::Caller,
            CallEnd::AgentDisconnected(_)
            | CallEnd::AgentFatalError(_)
            | CallEnd::AgentWatchdog(_)
            | CallEnd::AgentMessageTooLarge(_) => Fault::Upstream,
            CallEnd::GatewayShutdown => Fault::Gateway,
            CallEnd::Operator => Fault::None,
            CallEnd::MediaSetupFailed(_) => Fault::Gateway,
            CallEnd::AgentHangup | CallEnd::CallerIdle | CallEnd::MaxDuration => Fault::None,
            CallEnd::Transferred | CallEnd::TransferFailed => Fault::None,
            CallEnd::BadSdpAnswer(_) | CallEnd::SessionExpired => Fault::Caller,
        }
    }

    /// `outcome` label: completed, refused, cancelled or failed.
    pub fn outcome_label(&self) -> &'static str {
        match self {
            CallEnd::Refused(_) => "refused",
            CallEnd::CallerCancelled => "cancelled",
            CallEnd::CallerHangup | CallEnd::GatewayShutdown | CallEnd::Operator => "completed",
            CallEnd::AgentHangup | CallEnd::CallerIdle | CallEnd::MaxDuration => "completed",
            CallEnd::Transferred | CallEnd::TransferFailed => "completed",
            CallEnd::AckTimeout
            | CallEnd::RtpTimeout
            | CallEnd::AgentDisconnected(_)
            | CallEnd::AgentFatalError(_)
            | CallEnd::AgentWatchdog(_)
            | CallEnd::AgentMessageTooLarge(_)
            | CallEnd::MediaSetupFailed(_)
            | CallEnd::BadSdpAnswer(_)
            | CallEnd::SessionExpired => "failed",
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
            CallEnd::AgentWatchdog(_) => "agent_watchdog",
            CallEnd::AgentMessageTooLarge(_) => "agent_message_too_large",
            CallEnd::GatewayShutdown => "shutdown",
            CallEnd::Operator => "operator_hangup",
            CallEnd::MediaSetupFailed(_) => "media_setup_failed",
            CallEnd::AgentHangup => "agent_hangup",
            CallEnd::CallerIdle => "caller_idle",
            CallEnd::MaxDuration => "max_duration",
            CallEnd::Transferred => "transferred",
            CallEnd::TransferFailed => "transfer_failed",
            CallEnd::BadSdpAnswer(_) => "bad_sdp_answer",
            CallEnd::SessionExpired => "session_expired",
        }
    }

    /// Whether the gateway must send BYE to end the dialog.
    pub fn needs_bye(&self) -> bool {
        matches!(
            self,
            CallEnd::RtpTimeout
                | CallEnd::AgentDisconnected(_)
                | CallEnd::AgentFatalError(_)
                | CallEnd::AgentWatchdog(_)
                | CallEnd::AgentMessageTooLarge(_)
                | CallEnd::GatewayShutdown
                | CallEnd::Operator
                | CallEnd::MediaSetupFailed(_)
                | CallEnd::AgentHangup
                | CallEnd::CallerIdle
                | CallEnd::MaxDuration
                | CallEnd::Transferred
                | CallEnd::TransferFailed
                | CallEnd::BadSdpAnswer(_)
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
    fn agent_refusals_have_precise_reasons_and_every_503_retry_after() {
        let upgrade = |status| Refusal::AgentRejectedUpgrade { status, body: String::new() };
        let cases = [
            (upgrade(401), "agent_rejected_upgrade", true),
            (upgrade(403), "agent_rejected_upgrade", true),
            (upgrade(429), "agent_rejected_upgrade", true),
            (upgrade(503), "agent_rejected_upgrade", true),
            (Refusal::AgentTimeout("session.created"), "agent_timeout", true),
            (Refusal::AgentSessionRefused("x".into()), "agent_session_refused", true),
            (Refusal::AgentFormatMismatch("x".into()), "agent_format_mismatch", true),
            (Refusal::AgentUnavailable("x".into()), "agent_unavailable", true),
        ];
        for (refusal, label, retry_after) in cases {
            assert_eq!(refusal.status().0, 503, "{refusal:?}");
            assert_eq!(refusal.reason_label(), label, "{refusal:?}");
            assert_eq!(refusal.retry_after(), retry_after, "{refusal:?}");
            assert_eq!(refusal.fault(), Fault::Upstream, "{refusal:?}");
        }
    }

    #[test]
    fn a_bad_answer_in_the_ack_is_the_callers_fault_and_ends_with_our_bye() {
        let end = CallEnd::BadSdpAnswer("no SDP in the ACK".into());
        assert!(end.needs_bye());
        assert_eq!((end.fault(), end.outcome_label(), end.reason_label()), (Fault::Caller, "failed", "bad_sdp_answer"));
        let expired = CallEnd::SessionExpired;
        assert!(!expired.needs_bye(), "the SIP layer already sent BYE");
        assert_eq!((expired.fault(), expired.reason_label()), (Fault::Caller, "session_expired"));
    }

    #[test]
    fn agent_watchdog_and_oversized_messages_hang_up_with_their_own_reason() {
        let watchdog = CallEnd::AgentWatchdog(std::time::Duration::from_secs(15));
        assert!(watchdog.needs_bye());
        assert_eq!((watchdog.outcome_label(), watchdog.reason_label()), ("failed", "agent_watchdog"));
        let large = CallEnd::AgentMessageTooLarge("x".into());
        assert!(large.needs_bye());
        assert_eq!(large.reason_label(), "agent_message_too_large");
        assert_eq!(CallEnd::CallerCancelled.outcome_label(), "cancelled");
    }

    #[test]
    fn only_gateway_initiated_ends_send_bye() {
        assert!(CallEnd::RtpTimeout.needs_bye());
        assert!(CallEnd::Operator.needs_bye(), "the operator's hang-up is ours to signal");
        assert_eq!(CallEnd::Operator.fault(), Fault::None);
        assert!(!CallEnd::CallerHangup.needs_bye());
        assert!(!CallEnd::AckTimeout.needs_bye(), "the SIP layer already sent BYE");
    }

    #[test]
    fn the_agents_own_ends_are_normal_completions_with_our_bye() {
        for (end, label) in [
            (CallEnd::AgentHangup, "agent_hangup"),
            (CallEnd::CallerIdle, "caller_idle"),
            (CallEnd::MaxDuration, "max_duration"),
        ] {
            assert!(end.needs_bye(), "{end:?}");
            assert_eq!((end.fault(), end.outcome_label(), end.reason_label()), (Fault::None, "completed", label));
        }
    }
}
