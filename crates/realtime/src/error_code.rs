//! The `error.code` values of server `error` events (reference §7), as a bounded set: what the
//! gateway treats as fatal and how codes are labelled in metrics.

/// A Realtime `error.code`. Unknown codes are [`ErrorCode::Other`], so a metric label built from
/// it stays a small fixed set whatever the server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidEvent,
    InvalidValue,
    UnknownParameter,
    SessionExpired,
    BetaApiShapeDisabled,
    ConversationAlreadyHasActiveResponse,
    ResponseCancelNotActive,
    InputAudioBufferCommitEmpty,
    RateLimitExceeded,
    InvalidApiKey,
    ModelNotFound,
    /// Absent, or a code this crate does not know.
    Other,
}

impl ErrorCode {
    const ALL: [ErrorCode; 11] = [
        ErrorCode::InvalidEvent,
        ErrorCode::InvalidValue,
        ErrorCode::UnknownParameter,
        ErrorCode::SessionExpired,
        ErrorCode::BetaApiShapeDisabled,
        ErrorCode::ConversationAlreadyHasActiveResponse,
        ErrorCode::ResponseCancelNotActive,
        ErrorCode::InputAudioBufferCommitEmpty,
        ErrorCode::RateLimitExceeded,
        ErrorCode::InvalidApiKey,
        ErrorCode::ModelNotFound,
    ];

    /// The code of an `error` event (`None` when the event carries none).
    pub fn parse(code: Option<&str>) -> ErrorCode {
        code.and_then(|code| Self::ALL.into_iter().find(|known| known.as_str() == code)).unwrap_or(ErrorCode::Other)
    }

    /// The wire string, and the metric label (`other` for unknown codes).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidEvent => "invalid_event",
            ErrorCode::InvalidValue => "invalid_value",
            ErrorCode::UnknownParameter => "unknown_parameter",
            ErrorCode::SessionExpired => "session_expired",
            ErrorCode::BetaApiShapeDisabled => "beta_api_shape_disabled",
            ErrorCode::ConversationAlreadyHasActiveResponse => "conversation_already_has_active_response",
            ErrorCode::ResponseCancelNotActive => "response_cancel_not_active",
            ErrorCode::InputAudioBufferCommitEmpty => "input_audio_buffer_commit_empty",
            ErrorCode::RateLimitExceeded => "rate_limit_exceeded",
            ErrorCode::InvalidApiKey => "invalid_api_key",
            ErrorCode::ModelNotFound => "model_not_found",
            ErrorCode::Other => "other",
        }
    }

    /// Errors after which the session cannot go on (§7 "Error handling policy"); everything else
    /// is logged and the call continues.
    pub fn is_fatal(self) -> bool {
        matches!(
            self,
            ErrorCode::SessionExpired
                | ErrorCode::InvalidApiKey
                | ErrorCode::ModelNotFound
                | ErrorCode::BetaApiShapeDisabled
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_codes_round_trip_and_unknown_ones_are_other() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(Some(code.as_str())), code);
        }
        assert_eq!(ErrorCode::parse(Some("something_new")), ErrorCode::Other);
        assert_eq!(ErrorCode::parse(None), ErrorCode::Other);
        assert_eq!(ErrorCode::parse(Some("\u{1b}[31mred")).as_str(), "other");
    }

    #[test]
    fn only_the_documented_codes_are_fatal() {
        let fatal: Vec<&str> = ErrorCode::ALL.into_iter().filter(|c| c.is_fatal()).map(ErrorCode::as_str).collect();
        assert_eq!(fatal, ["session_expired", "beta_api_shape_disabled", "invalid_api_key", "model_not_found"]);
        assert!(!ErrorCode::Other.is_fatal());
    }
}
