//! Offer/answer after the call is set up, sans-IO (RFC 3264 §8, RFC 3261 §14): the caller's
//! re-offers (re-INVITE, UPDATE) answered from the call's own SDP state, our offer for a
//! re-INVITE without SDP and its answer in the ACK.
//!
//! The codec and its payload type stay what the call was set up with: the call's media
//! pipeline and its Realtime session were built for them. A re-offer that no longer offers them
//! is refused (488: the call goes on unchanged, §14.2); the ptime, the telephone-event payload
//! type, the address and the direction (hold, resume) may change. Our `o=` version moves only
//! when our SDP does (§8).

use std::net::SocketAddr;

use switchboard_sdp::{
    AnswerPolicy, Codec, Direction, LocalMedia, NegotiatedMedia, OfferPolicy, SdpError, SdpOffer, SrtpMode,
    answer_offer, create_offer, receive_answer,
};

/// What a new offer or answer changes in the call's media (the call core applies it:
/// [`super::core::CallCore::handle_media_update`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaUpdate {
    /// Where the caller now receives RTP (`0.0.0.0`: nowhere, a legacy hold).
    pub remote: SocketAddr,
    /// Whether our direction lets us send (sendrecv / sendonly).
    pub may_send: bool,
    /// The caller's telephone-event payload type.
    pub telephone_event: Option<u8>,
}

impl MediaUpdate {
    /// What `media` asks of the call's stream.
    pub fn of(media: &NegotiatedMedia) -> MediaUpdate {
        MediaUpdate {
            remote: media.remote_rtp,
            may_send: matches!(media.direction, Direction::SendRecv | Direction::SendOnly)
                && !media.remote_rtp.ip().is_unspecified(),
            telephone_event: media.telephone_event,
        }
    }
}

/// Why a re-offer or an answer was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenegotiationError {
    #[error(transparent)]
    Sdp(#[from] SdpError),
    #[error("the {codec:?} payload type moved from {was} to {now}; the call's stream cannot follow")]
    PayloadTypeChanged { codec: Codec, was: u8, now: u8 },
    #[error("the ACK carried no answer to our offer")]
    NoAnswer,
    #[error("no offer of ours is waiting for an answer")]
    NoOfferPending,
    /// SRTP on or off, another suite or another key: the call's SRTP contexts were built for the
    /// keys of its setup, and re-keying mid-call is not supported (RFC 4568 §7.1.4 allows keeping
    /// them, which is what peers do for hold and resume).
    #[error("the re-offer changes the SRTP keys or suite (or SRTP on/off); the call's stream cannot follow")]
    SrtpChanged,
}

/// The call's SDP state: our side, what was negotiated, our last SDP.
#[derive(Debug, Clone)]
pub struct SdpSession {
    local: LocalMedia,
    media: NegotiatedMedia,
    telephone_event: bool,
    last_sdp: String,
    /// Our offer in a 2xx, waiting for the answer in the ACK.
    pending_offer: Option<SdpOffer>,
    /// SRTP in our answers and offers: an SRTP call keeps its suite and both keys (our key
    /// again, the peer's checked), a plain call stays plain.
    srtp: SrtpMode,
}

impl SdpSession {
    /// The state after the call's setup: `local` with the `o=` version of `sdp` (our answer or
    /// our offer), `media` as negotiated.
    pub fn new(local: LocalMedia, media: NegotiatedMedia, sdp: String) -> SdpSession {
        let srtp = media.srtp.map_or(SrtpMode::Off, |keys| SrtpMode::Required(keys.local));
        SdpSession { local, telephone_event: true, media, last_sdp: sdp, pending_offer: None, srtp }
    }

    /// The current stream.
    pub fn media(&self) -> &NegotiatedMedia {
        &self.media
    }

    /// Our `o=` version now.
    pub fn version(&self) -> u64 {
        self.local.session_version
    }

    /// Answers the caller's re-offer: the answer SDP and what it changes. An error leaves the
    /// session as it was (the caller gets 488).
    pub fn answer(&mut self, offer: &str) -> Result<(String, MediaUpdate), RenegotiationError> {
        let policy = AnswerPolicy {
            codecs: vec![self.media.codec],
            ptime_ms: self.media.ptime_ms,
            telephone_event: self.telephone_event,
            srtp: self.srtp,
        };
        let mut answer = answer_offer(offer, &policy, &self.local)?;
        if answer.media.srtp != self.media.srtp {
            return Err(RenegotiationError::SrtpChanged);
        }
        if answer.media.payload_type != self.media.payload_type {
            return Err(RenegotiationError::PayloadTypeChanged {
                codec: self.media.codec,
                was: self.media.payload_type,
                now: answer.media.payload_type,
            });
        }
        if answer.sdp != self.last_sdp {
            self.local.session_version = self.local.session_version.saturating_add(1);
            answer = answer_offer(offer, &policy, &self.local)?;
        }
        self.last_sdp = answer.sdp.clone();
        self.media = answer.media;
        Ok((answer.sdp, MediaUpdate::of(&self.media)))
    }

    /// Our offer for a re-INVITE without SDP: the call's codec only, sendrecv. Its answer
    /// comes to [`SdpSession::on_answer`].
    pub fn offer(&mut self) -> Result<String, RenegotiationError> {
        let policy = OfferPolicy {
            codecs: vec![self.media.codec],
            ptime_ms: self.media.ptime_ms,
            telephone_event: self.telephone_event,
            srtp: self.srtp,
        };
        let mut offer = create_offer(&policy, &self.local)?;
        if offer.sdp != self.last_sdp {
            self.local.session_version = self.local.session_version.saturating_add(1);
            offer = create_offer(&policy, &self.local)?;
        }
        self.last_sdp = offer.sdp.clone();
        let sdp = offer.sdp.clone();
        self.pending_offer = Some(offer);
        Ok(sdp)
    }

    /// The answer to our offer, from the ACK (`None`: it had none). Any error means the session
    /// cannot go on (RFC 3261 §14.2: the offerer sends BYE).
    pub fn on_answer(&mut self, answer: Option<&str>) -> Result<MediaUpdate, RenegotiationError> {
        let offer = self.pending_offer.take().ok_or(RenegotiationError::NoOfferPending)?;
        let answer = answer.ok_or(RenegotiationError::NoAnswer)?;
        let media = receive_answer(&offer, answer)?;
        if media.srtp != self.media.srtp {
            return Err(RenegotiationError::SrtpChanged);
        }
        if media.payload_type != self.media.payload_type {
            return Err(RenegotiationError::PayloadTypeChanged {
                codec: self.media.codec,
                was: self.media.payload_type,
                now: media.payload_type,
            });
        }
        self.media = media;
        Ok(MediaUpdate::of(&self.media))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    fn local() -> LocalMedia {
        LocalMedia {
            address: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
            port: 40_000,
            session_id: 7,
            session_version: 1,
        }
    }

    fn offer(version: u32, port: u16, address: &str, extra: &str) -> String {
        format!(
            "v=0\r\no=- 5 {version} IN IP4 198.51.100.5\r\ns=-\r\nc=IN IP4 {address}\r\nt=0 0\r\n\
             m=audio {port} RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n{extra}"
        )
    }

    /// A PCMU call set up the way `call::run` does it.
    fn session() -> SdpSession {
        let policy = AnswerPolicy {
            codecs: vec![Codec::Pcmu, Codec::Pcma],
            ptime_ms: 20,
            telephone_event: true,
            srtp: SrtpMode::Off,
        };
        let answer = answer_offer(&offer(1, 30_000, "198.51.100.5", ""), &policy, &local()).unwrap();
        SdpSession::new(local(), answer.media, answer.sdp)
    }

    fn direction(sdp: &str) -> &str {
        ["sendrecv", "sendonly", "recvonly", "inactive"].into_iter().find(|d| sdp.contains(&format!("a={d}"))).unwrap()
    }

    #[test]
    fn hold_and_resume_answer_recvonly_then_sendrecv_and_move_the_version_only_on_change() {
        let mut s = session();
        let (same, update) = s.answer(&offer(2, 30_000, "198.51.100.5", "")).unwrap();
        assert!(same.contains("o=switchboard 7 1 "), "nothing changed: same version\n{same}");
        assert!(update.may_send);

        let (held, update) = s.answer(&offer(3, 30_000, "198.51.100.5", "a=sendonly\r\n")).unwrap();
        assert_eq!(direction(&held), "recvonly");
        assert!(held.contains("o=switchboard 7 2 "), "{held}");
        assert!(!update.may_send);

        let (inactive, update) = s.answer(&offer(4, 30_000, "198.51.100.5", "a=inactive\r\n")).unwrap();
        assert_eq!(direction(&inactive), "inactive");
        assert!(inactive.contains("o=switchboard 7 3 "));
        assert!(!update.may_send);

        let (legacy, update) = s.answer(&offer(5, 30_000, "0.0.0.0", "")).unwrap();
        assert_eq!(direction(&legacy), "recvonly", "c=0.0.0.0 is a hold (RFC 3264 §8.4)");
        assert!(!update.may_send);
        assert!(update.remote.ip().is_unspecified());

        let (resumed, update) = s.answer(&offer(6, 30_000, "198.51.100.5", "a=sendrecv\r\n")).unwrap();
        assert_eq!(direction(&resumed), "sendrecv");
        assert!(resumed.contains("o=switchboard 7 5 "));
        assert_eq!((update.may_send, update.remote), (true, "198.51.100.5:30000".parse().unwrap()));
        assert_eq!(s.version(), 5);
    }

    #[test]
    fn an_address_change_is_where_we_send_and_our_answer_keeps_its_version() {
        let mut s = session();
        let (answer, update) = s.answer(&offer(2, 31_000, "198.51.100.7", "")).unwrap();
        assert_eq!(update.remote, "198.51.100.7:31000".parse().unwrap());
        assert!(answer.contains("o=switchboard 7 1 "), "our side did not change");
        assert_eq!(s.media().remote_rtp, update.remote);
    }

    #[test]
    fn a_reoffer_without_our_codec_or_with_its_payload_type_moved_is_refused_and_changes_nothing() {
        let mut s = session();
        let pcma_only = offer(2, 30_000, "198.51.100.5", "").replace("RTP/AVP 0 8 101", "RTP/AVP 8 101");
        assert_eq!(s.answer(&pcma_only), Err(RenegotiationError::Sdp(SdpError::NoCommonCodec)));
        let moved = "v=0\r\no=- 5 3 IN IP4 198.51.100.5\r\ns=-\r\nc=IN IP4 198.51.100.5\r\nt=0 0\r\n\
                     m=audio 30000 RTP/AVP 96\r\na=rtpmap:96 PCMU/8000\r\n";
        assert!(matches!(s.answer(moved), Err(RenegotiationError::PayloadTypeChanged { was: 0, now: 96, .. })));
        assert_eq!(s.version(), 1);
        assert_eq!(s.media().codec, Codec::Pcmu);
    }

    #[test]
    fn our_offer_for_a_reinvite_without_sdp_and_its_answer_in_the_ack() {
        let mut s = session();
        let ours = s.offer().unwrap();
        assert!(ours.contains("m=audio 40000 RTP/AVP 0 101\r\n"), "the call's codec only:\n{ours}");
        assert!(ours.contains("o=switchboard 7 2 "), "a new SDP: a new version");
        let answer = "v=0\r\no=- 5 9 IN IP4 198.51.100.5\r\ns=-\r\nc=IN IP4 198.51.100.5\r\nt=0 0\r\n\
                      m=audio 32000 RTP/AVP 0\r\na=recvonly\r\n";
        let update = s.on_answer(Some(answer)).unwrap();
        assert_eq!(update.remote, "198.51.100.5:32000".parse().unwrap());
        assert!(update.may_send, "the caller receives: we send");
        assert_eq!(update.telephone_event, None);
        assert_eq!(s.on_answer(Some(answer)), Err(RenegotiationError::NoOfferPending));

        s.offer().unwrap();
        assert_eq!(s.version(), 2, "the same offer again: same version");
        assert_eq!(s.on_answer(None), Err(RenegotiationError::NoAnswer));
        s.offer().unwrap();
        let pcma = answer.replace("RTP/AVP 0", "RTP/AVP 8");
        assert!(matches!(s.on_answer(Some(&pcma)), Err(RenegotiationError::Sdp(SdpError::NoCommonCodec))));
    }

    /// An SRTP call keeps its keys: a re-offer with the same crypto line (hold, as peers send it)
    /// is answered with our same key; another key, or plain RTP, is refused (488) and the call's
    /// keys stay.
    #[test]
    fn srtp_calls_keep_their_keys_across_re_offers() {
        const KEY: &str = "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz";
        const OTHER_KEY: &str = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNk";
        let savp = |version: u32, key: &str, extra: &str| {
            offer(
                version,
                30_000,
                "198.51.100.5",
                &format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}\r\n{extra}"),
            )
            .replace("RTP/AVP", "RTP/SAVP")
        };
        let our_key = switchboard_sdp::MasterKey::new([7; 16], [9; 14]);
        let policy = AnswerPolicy {
            codecs: vec![Codec::Pcmu],
            ptime_ms: 20,
            telephone_event: true,
            srtp: SrtpMode::Required(our_key),
        };
        let setup = answer_offer(&savp(1, KEY, ""), &policy, &local()).unwrap();
        let keys = setup.media.srtp;
        assert!(keys.is_some());
        let our_crypto = setup.sdp.lines().find(|l| l.starts_with("a=crypto:")).unwrap().to_string();
        let mut s = SdpSession::new(local(), setup.media, setup.sdp);

        let (held, update) = s.answer(&savp(2, KEY, "a=sendonly\r\n")).unwrap();
        assert!(!update.may_send);
        assert!(held.contains("RTP/SAVP") && held.contains(&our_crypto), "our same key again\n{held}");
        assert!(matches!(s.answer(&savp(3, OTHER_KEY, "")), Err(RenegotiationError::SrtpChanged)));
        assert!(matches!(s.answer(&offer(4, 30_000, "198.51.100.5", "")), Err(RenegotiationError::Sdp(_))));
        assert_eq!(s.media().srtp, keys, "a refused re-offer leaves the keys");

        let (resumed, update) = s.answer(&savp(5, KEY, "")).unwrap();
        assert!(update.may_send && resumed.contains(&our_crypto));
    }
}
