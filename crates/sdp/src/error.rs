use thiserror::Error;

/// Why an offer could not be parsed or answered.
///
/// Every variant carries enough context to log what was wrong with the remote SDP; the SIP
/// layer maps them to a response code (488 Not Acceptable Here for all of today's variants).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SdpError {
    /// A line could not be parsed. `line` is 1-based.
    #[error("malformed SDP at line {line}: {reason}")]
    Malformed {
        /// 1-based line number in the offer.
        line: usize,
        /// What was wrong with it.
        reason: String,
    },
    /// The offer has no usable audio stream (none at all, or all disabled with port 0).
    #[error("the offer contains no audio stream")]
    NoAudioStream,
    /// Audio streams were offered, but only over transports we do not speak (e.g. SRTP).
    #[error("no offered audio stream uses RTP/AVP (offered: {proto})")]
    UnsupportedTransport {
        /// The transport of the first rejected audio stream, e.g. `RTP/SAVP`.
        proto: String,
    },
    /// SRTP was offered, but no `a=crypto` line is one we can use (RFC 4568).
    #[error("no usable SRTP crypto line: {reason}")]
    NoUsableCrypto {
        /// Why each line was skipped (tags and suites, never keys).
        reason: String,
    },
    /// Our policy requires SRTP and the offer has only plain RTP/AVP audio.
    #[error("SRTP is required and the offer has only plain RTP (RTP/AVP)")]
    SrtpRequired,
    /// Audio was offered, but with no codec from our policy.
    #[error("no common audio codec")]
    NoCommonCodec,
    /// The accepted audio stream has no `c=` line, neither at media nor at session level.
    #[error("audio stream {media_index} has no connection address (c=)")]
    MissingConnection {
        /// 0-based index of the m= section.
        media_index: usize,
    },
    /// Our offer policy lists no codec: nothing to offer (our configuration's fault).
    #[error("no codec to offer")]
    NothingToOffer,
    /// The answer rejected our audio stream (port 0, RFC 3264 §6).
    #[error("the answer rejected our audio stream")]
    StreamRejected,
    /// The answer does not fit our offer (RFC 3264 §6: same m= lines, same media types).
    #[error("the answer does not match our offer: {reason}")]
    AnswerMismatch {
        /// What did not match.
        reason: String,
    },
}

impl SdpError {
    /// True when the remote offer is to blame (drives the SIP response and the hang-up reason
    /// label). From [`crate::answer_offer`] every error is the offerer's; from
    /// [`crate::receive_answer`] the remote party is the answerer, and the answer-only
    /// variants (and [`SdpError::NothingToOffer`], ours) say false.
    pub fn is_offerers_fault(&self) -> bool {
        match self {
            SdpError::Malformed { .. }
            | SdpError::NoAudioStream
            | SdpError::UnsupportedTransport { .. }
            | SdpError::NoCommonCodec
            | SdpError::MissingConnection { .. }
            | SdpError::NoUsableCrypto { .. }
            | SdpError::SrtpRequired => true,
            SdpError::NothingToOffer | SdpError::StreamRejected | SdpError::AnswerMismatch { .. } => false,
        }
    }
}
