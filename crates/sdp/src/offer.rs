//! The offerer side of the RFC 3264 offer/answer model for one audio stream: the offer in our
//! INVITE (§5) and what we make of the answer in its 2xx (§6, read from the offerer's side).
//!
//! Payload types: the static ones for PCMU (0), PCMA (8) and G.722 (9) (RFC 3551 §6), dynamic
//! ones as common practice numbers them: Opus 111, telephone-event 101 at 8000 Hz and 110 at
//! 48000 Hz (RFC 4733 §7.1.1: an event stream uses its audio codec's clock rate, so an offer
//! with Opus and G.711 carries one of each).

use std::fmt::Write as _;
use std::net::SocketAddr;

use crate::codec::{Codec, Direction};
use crate::crypto::{CryptoAttribute, MasterKey, SrtpKeys, SrtpMode, SrtpSuite, is_sdes_srtp};
use crate::error::SdpError;
use crate::model::{AddressType, SessionDescription};
use crate::negotiate::{LocalMedia, NegotiatedMedia, OUR_OPUS_FMTP, TELEPHONE_EVENT, is_plain_rtp, opus_params};

/// Dynamic payload type we offer Opus under.
pub const OPUS_PAYLOAD_TYPE: u8 = 111;
/// Dynamic payload type of telephone-event at 8000 Hz (G.711, G.722).
pub const TELEPHONE_EVENT_8K_PAYLOAD_TYPE: u8 = 101;
/// Dynamic payload type of telephone-event at 48000 Hz (Opus).
pub const TELEPHONE_EVENT_48K_PAYLOAD_TYPE: u8 = 110;
/// The DTMF events we offer: 0-9, *, #, A-D and flash (RFC 4733 §3.2).
const OFFERED_EVENTS: &str = "0-16";

/// What we offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferPolicy {
    /// Codecs in our order of preference (duplicates are offered once).
    pub codecs: Vec<Codec>,
    /// Packetization time we ask for with `a=ptime`, in milliseconds.
    pub ptime_ms: u32,
    /// Whether to offer RFC 4733 telephone-event (DTMF).
    pub telephone_event: bool,
    /// SRTP: only [`SrtpMode::Required`] offers RTP/SAVP (with one `a=crypto` per suite of
    /// [`SrtpSuite::OFFERED`], tags 1, 2, ...); `Optional` offers plain RTP (see
    /// [`crate::SrtpPolicy::Optional`]).
    pub srtp: SrtpMode,
}

impl Default for OfferPolicy {
    fn default() -> Self {
        OfferPolicy { codecs: vec![Codec::Pcmu, Codec::Pcma], ptime_ms: 20, telephone_event: true, srtp: SrtpMode::Off }
    }
}

/// One format of our offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfferedCodec {
    pub codec: Codec,
    pub payload_type: u8,
}

/// Our offer: the SDP body and what it offered, to check the answer against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdpOffer {
    /// The offer body (CRLF line endings).
    pub sdp: String,
    /// Offered codecs in preference order.
    pub codecs: Vec<OfferedCodec>,
    /// Whether telephone-event was offered.
    pub telephone_event: bool,
    /// The `a=ptime` we asked for.
    pub ptime_ms: u32,
    /// Our master key when we offered RTP/SAVP (the answer must then pick one of our suites).
    pub srtp: Option<MasterKey>,
}

fn payload_type_of(codec: Codec) -> u8 {
    codec.static_payload_type().unwrap_or(OPUS_PAYLOAD_TYPE)
}

/// Builds our offer (RFC 3264 §5): one audio stream, sendrecv, on `local`'s address and port.
/// `Err(SdpError::NothingToOffer)` when the policy lists no codec.
pub fn create_offer(policy: &OfferPolicy, local: &LocalMedia) -> Result<SdpOffer, SdpError> {
    let mut codecs: Vec<OfferedCodec> = Vec::new();
    for &codec in &policy.codecs {
        if !codecs.iter().any(|c| c.codec == codec) {
            codecs.push(OfferedCodec { codec, payload_type: payload_type_of(codec) });
        }
    }
    if codecs.is_empty() {
        return Err(SdpError::NothingToOffer);
    }
    let mut events: Vec<(u8, u32)> = Vec::new();
    if policy.telephone_event {
        if codecs.iter().any(|c| c.codec.clock_rate() == 8000) {
            events.push((TELEPHONE_EVENT_8K_PAYLOAD_TYPE, 8000));
        }
        if codecs.iter().any(|c| c.codec.clock_rate() == 48000) {
            events.push((TELEPHONE_EVENT_48K_PAYLOAD_TYPE, 48000));
        }
    }
    let address_type = match AddressType::of(local.address) {
        AddressType::Ip4 => "IP4",
        AddressType::Ip6 => "IP6",
    };
    let mut sdp = String::with_capacity(320);
    // Writing to a String cannot fail.
    let _ = write!(
        sdp,
        "v=0\r\no=switchboard {} {} IN {address_type} {}\r\ns=switchboard\r\nc=IN {address_type} {}\r\nt=0 0\r\n",
        local.session_id, local.session_version, local.address, local.address
    );
    let srtp = match policy.srtp {
        SrtpMode::Required(key) => Some(key),
        SrtpMode::Off | SrtpMode::Optional(_) => None,
    };
    let proto = if srtp.is_some() { "RTP/SAVP" } else { "RTP/AVP" };
    let _ = write!(sdp, "m=audio {} {proto}", local.port);
    for offered in &codecs {
        let _ = write!(sdp, " {}", offered.payload_type);
    }
    for (pt, _) in &events {
        let _ = write!(sdp, " {pt}");
    }
    sdp.push_str("\r\n");
    for offered in &codecs {
        let codec = offered.codec;
        let pt = offered.payload_type;
        let _ = write!(sdp, "a=rtpmap:{pt} {}/{}", codec.encoding_name(), codec.clock_rate());
        if let Some(channels) = codec.rtpmap_channels() {
            let _ = write!(sdp, "/{channels}");
        }
        sdp.push_str("\r\n");
        if codec == Codec::Opus {
            let _ = write!(sdp, "a=fmtp:{pt} {OUR_OPUS_FMTP}\r\n");
        }
    }
    for (pt, rate) in &events {
        let _ = write!(sdp, "a=rtpmap:{pt} {TELEPHONE_EVENT}/{rate}\r\na=fmtp:{pt} {OFFERED_EVENTS}\r\n");
    }
    if let Some(key) = srtp {
        for (tag, suite) in (1..).zip(SrtpSuite::OFFERED) {
            let _ = write!(sdp, "a=crypto:{}\r\n", CryptoAttribute { tag, suite, key }.to_value());
        }
    }
    let _ = write!(sdp, "a=ptime:{}\r\na=sendrecv\r\n", policy.ptime_ms);
    Ok(SdpOffer { sdp, codecs, telephone_event: !events.is_empty(), ptime_ms: policy.ptime_ms, srtp })
}

/// Reads the answer to our offer (RFC 3264 §6 and §7 from the offerer's side): the same number
/// of `m=` lines (one), not rejected (port 0), RTP/AVP(F), a codec we offered (the answer's
/// first one is the one it will send), telephone-event at that codec's rate if we offered it,
/// the answer's direction turned into ours, its `a=ptime`, the peer's Opus fmtp.
///
/// Every error here is the answerer's fault.
pub fn receive_answer(offer: &SdpOffer, answer_sdp: &str) -> Result<NegotiatedMedia, SdpError> {
    let answer = SessionDescription::parse(answer_sdp)?;
    if answer.media.len() != 1 {
        return Err(SdpError::AnswerMismatch {
            reason: format!("{} m= lines answer our 1 (RFC 3264 §6)", answer.media.len()),
        });
    }
    let Some(media) = answer.media.first() else {
        return Err(SdpError::NoAudioStream);
    };
    if !media.media.eq_ignore_ascii_case("audio") {
        return Err(SdpError::AnswerMismatch { reason: format!("m={} answers our m=audio", media.media) });
    }
    if media.port == 0 {
        return Err(SdpError::StreamRejected);
    }
    let srtp = match offer.srtp {
        None if is_plain_rtp(&media.proto) => None,
        Some(local) if is_sdes_srtp(&media.proto) => Some(answered_crypto(media, local)?),
        _ => return Err(SdpError::UnsupportedTransport { proto: media.proto.clone() }),
    };
    // The answer's codec: its first format that names a codec we offered. Its payload type
    // number is the answerer's (RFC 3264 §6.1 recommends ours; we send what it asked for).
    let (codec, payload_type) = media
        .payload_types()
        .find_map(|pt| {
            let named = match media.rtpmap(pt) {
                Some(map) => Codec::from_rtpmap(&map.encoding_name, map.clock_rate),
                None if pt < 96 => Codec::from_static_payload_type(pt),
                // A dynamic type without rtpmap: only meaningful as the one we offered.
                None => offer.codecs.iter().find(|c| c.payload_type == pt).map(|c| c.codec),
            };
            named.filter(|codec| offer.codecs.iter().any(|c| c.codec == *codec)).map(|codec| (codec, pt))
        })
        .ok_or(SdpError::NoCommonCodec)?;
    let connection = answer.media_connection(media).ok_or(SdpError::MissingConnection { media_index: 0 })?;
    let telephone_event = if offer.telephone_event {
        media.payload_types().find(|&pt| {
            media.rtpmap(pt).is_some_and(|map| {
                map.encoding_name.eq_ignore_ascii_case(TELEPHONE_EVENT) && map.clock_rate == codec.clock_rate()
            })
        })
    } else {
        None
    };
    let mut answered = answer.media_direction(media);
    // RFC 3264 §8.4: c=0.0.0.0 (legacy hold) means the answerer will not receive.
    if connection.is_hold() {
        answered = match answered {
            Direction::SendRecv | Direction::SendOnly => Direction::SendOnly,
            Direction::RecvOnly | Direction::Inactive => Direction::Inactive,
        };
    }
    let opus = (codec == Codec::Opus).then(|| opus_params(media, payload_type, offer.ptime_ms));
    let ptime_ms = match opus {
        Some(params) => params.ptime_ms,
        None => media.ptime_ms().filter(|ms| (10..=60).contains(ms)).unwrap_or(offer.ptime_ms),
    };
    Ok(NegotiatedMedia {
        codec,
        payload_type,
        telephone_event,
        remote_rtp: SocketAddr::new(connection.address, media.port),
        direction: answered.reverse(),
        ptime_ms,
        opus,
        srtp,
    })
}

/// The answer's `a=crypto` (RFC 4568 §7.1.3): one line, the tag of one of our lines with its
/// suite, and the answerer's key.
fn answered_crypto(media: &crate::model::MediaDescription, local: MasterKey) -> Result<SrtpKeys, SdpError> {
    let refused = |reason: String| SdpError::NoUsableCrypto { reason };
    let value = media
        .attributes
        .iter()
        .find(|a| a.name == "crypto")
        .and_then(|a| a.value.as_deref())
        .ok_or_else(|| refused("the RTP/SAVP answer has no a=crypto line".to_owned()))?;
    let line = CryptoAttribute::parse(value).map_err(|e| refused(format!("answer's a=crypto: {e}")))?;
    let offered =
        usize::try_from(line.tag).ok().and_then(|tag| tag.checked_sub(1)).and_then(|i| SrtpSuite::OFFERED.get(i));
    if offered != Some(&line.suite) {
        return Err(refused(format!("answer's a=crypto tag {} {} is not one we offered", line.tag, line.suite)));
    }
    Ok(SrtpKeys { suite: line.suite, local, remote: line.key })
}

#[cfg(test)]
mod tests {
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

    fn offer(codecs: Vec<Codec>) -> SdpOffer {
        create_offer(&OfferPolicy { codecs, ptime_ms: 20, telephone_event: true, ..OfferPolicy::default() }, &local())
            .unwrap()
    }

    fn answer(m_line: &str, attributes: &str) -> String {
        format!(
            "v=0\r\no=- 1 1 IN IP4 198.51.100.5\r\ns=-\r\nc=IN IP4 198.51.100.5\r\nt=0 0\r\n{m_line}\r\n{attributes}"
        )
    }

    #[test]
    fn offer_lists_codecs_in_order_with_events_per_clock_rate() {
        let offer = offer(vec![Codec::Opus, Codec::Pcmu, Codec::Pcma, Codec::Pcmu]);
        let expected = "v=0\r\no=switchboard 7 1 IN IP4 192.0.2.10\r\ns=switchboard\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n\
            m=audio 40000 RTP/AVP 111 0 8 101 110\r\n\
            a=rtpmap:111 opus/48000/2\r\n\
            a=fmtp:111 maxplaybackrate=24000;sprop-maxcapturerate=24000;stereo=0;sprop-stereo=0;useinbandfec=1\r\n\
            a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
            a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n\
            a=rtpmap:110 telephone-event/48000\r\na=fmtp:110 0-16\r\n\
            a=ptime:20\r\na=sendrecv\r\n";
        assert_eq!(offer.sdp, expected);
        assert_eq!(offer.codecs.len(), 3, "duplicates offered once");
        assert!(SessionDescription::parse(&offer.sdp).is_ok());
        let g711 = create_offer(
            &OfferPolicy {
                codecs: vec![Codec::Pcma, Codec::G722],
                ptime_ms: 30,
                telephone_event: false,
                ..OfferPolicy::default()
            },
            &local(),
        )
        .unwrap();
        assert!(g711.sdp.contains("m=audio 40000 RTP/AVP 8 9\r\n") && g711.sdp.contains("a=ptime:30"));
        assert!(!g711.sdp.contains("telephone-event"));
        assert_eq!(
            create_offer(&OfferPolicy { codecs: vec![], ..OfferPolicy::default() }, &local()),
            Err(SdpError::NothingToOffer)
        );
    }

    #[test]
    fn answer_with_one_of_our_codecs_is_negotiated() {
        let offer = offer(vec![Codec::Pcmu, Codec::Pcma]);
        let media = receive_answer(
            &offer,
            &answer(
                "m=audio 30000 RTP/AVP 8 101",
                "a=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=ptime:30\r\n",
            ),
        )
        .unwrap();
        assert_eq!(media.codec, Codec::Pcma);
        assert_eq!(media.payload_type, 8);
        assert_eq!(media.telephone_event, Some(101));
        assert_eq!(media.remote_rtp, "198.51.100.5:30000".parse().unwrap());
        assert_eq!(media.direction, Direction::SendRecv);
        assert_eq!(media.ptime_ms, 30);
        assert_eq!(media.opus, None);
    }

    #[test]
    fn opus_answer_carries_the_peers_fmtp_and_ptime() {
        let offer = offer(vec![Codec::Opus, Codec::Pcmu]);
        let media = receive_answer(
            &offer,
            &answer(
                "m=audio 30000 RTP/AVP 96 110",
                "a=rtpmap:96 opus/48000/2\r\na=fmtp:96 maxaveragebitrate=20000;useinbandfec=1\r\n\
                 a=rtpmap:110 telephone-event/48000\r\na=ptime:40\r\n",
            ),
        )
        .unwrap();
        assert_eq!(media.codec, Codec::Opus);
        assert_eq!(media.payload_type, 96, "the answerer's own number for the codec");
        assert_eq!(media.telephone_event, Some(110));
        let opus = media.opus.unwrap();
        assert_eq!(opus.max_average_bitrate, Some(20_000));
        assert!(opus.use_inband_fec);
        assert_eq!(media.ptime_ms, 40);
    }

    #[test]
    fn answer_direction_and_hold() {
        let offer = offer(vec![Codec::Pcmu]);
        let recvonly = receive_answer(&offer, &answer("m=audio 30000 RTP/AVP 0", "a=recvonly\r\n")).unwrap();
        assert_eq!(recvonly.direction, Direction::SendOnly);
        let hold = answer("m=audio 30000 RTP/AVP 0", "").replace("c=IN IP4 198.51.100.5", "c=IN IP4 0.0.0.0");
        assert_eq!(receive_answer(&offer, &hold).unwrap().direction, Direction::RecvOnly);
        let telephone_event_at_the_wrong_rate =
            receive_answer(&offer, &answer("m=audio 30000 RTP/AVP 0 110", "a=rtpmap:110 telephone-event/48000\r\n"))
                .unwrap();
        assert_eq!(telephone_event_at_the_wrong_rate.telephone_event, None);
    }

    #[test]
    fn answers_that_break_rfc_3264_are_refused() {
        let offer = offer(vec![Codec::Pcmu]);
        assert_eq!(receive_answer(&offer, &answer("m=audio 0 RTP/AVP 0", "")), Err(SdpError::StreamRejected));
        assert_eq!(
            receive_answer(&offer, &answer("m=audio 30000 RTP/AVP 8", "a=rtpmap:8 PCMA/8000\r\n")),
            Err(SdpError::NoCommonCodec),
            "a codec we did not offer"
        );
        assert!(matches!(
            receive_answer(&offer, &answer("m=audio 30000 RTP/AVP 0\r\nm=video 0 RTP/AVP 31", "")),
            Err(SdpError::AnswerMismatch { .. })
        ));
        assert!(matches!(
            receive_answer(&offer, &answer("m=video 30000 RTP/AVP 0", "")),
            Err(SdpError::AnswerMismatch { .. })
        ));
        assert_eq!(
            receive_answer(&offer, &answer("m=audio 30000 RTP/SAVP 0", "")),
            Err(SdpError::UnsupportedTransport { proto: "RTP/SAVP".into() })
        );
        let no_connection = "v=0\r\no=- 1 1 IN IP4 198.51.100.5\r\ns=-\r\nt=0 0\r\nm=audio 30000 RTP/AVP 0\r\n";
        assert_eq!(receive_answer(&offer, no_connection), Err(SdpError::MissingConnection { media_index: 0 }));
        assert!(matches!(receive_answer(&offer, "garbage"), Err(SdpError::Malformed { .. })));
        assert!(!SdpError::StreamRejected.is_offerers_fault());
    }

    /// Mutated answers (byte flips, deletions, truncations, inserted SDP punctuation) never
    /// panic, and whatever is accepted keeps the RFC 3264 promises: a codec we offered under a
    /// payload type the answer lists, a non-zero port, telephone-event only as offered.
    #[test]
    fn mutated_answers_never_panic_and_accepted_ones_fit_the_offer() {
        let offer = offer(vec![Codec::Opus, Codec::G722, Codec::Pcmu, Codec::Pcma]);
        let base = answer(
            "m=audio 30000 RTP/AVP 111 0 101",
            "a=rtpmap:111 opus/48000/2\r\na=fmtp:111 maxaveragebitrate=20000;useinbandfec=1\r\n\
             a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\na=recvonly\r\n",
        );
        assert!(receive_answer(&offer, &base).is_ok());
        // xorshift64*: a fixed sequence, no dependency.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |bound: usize| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % bound.max(1)
        };
        let specials = [b'\r', b'\n', b'=', b' ', b'/', b':', b'0', b'9', 0xff];
        let mut accepted = 0;
        for _ in 0..20_000 {
            let mut bytes = base.clone().into_bytes();
            for _ in 0..1 + next(4) {
                if bytes.is_empty() {
                    break;
                }
                let at = next(bytes.len());
                match next(4) {
                    0 => bytes[at] = next(256) as u8,
                    1 => {
                        bytes.remove(at);
                    }
                    2 => bytes.truncate(at),
                    _ => bytes.insert(at, specials[next(specials.len())]),
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            let Ok(media) = receive_answer(&offer, &text) else {
                continue;
            };
            accepted += 1;
            let parsed = SessionDescription::parse(&text).expect("an accepted answer parses");
            let m = &parsed.media[0];
            assert!(offer.codecs.iter().any(|c| c.codec == media.codec));
            assert!(m.payload_types().any(|pt| pt == media.payload_type));
            assert_ne!(media.remote_rtp.port(), 0);
            if let Some(events) = media.telephone_event {
                assert!(m.payload_types().any(|pt| pt == events));
            }
        }
        assert!(accepted > 1_000, "the mutations should leave many answers usable ({accepted})");
    }

    /// Our own offer, answered by our own answerer, comes back as the same stream.
    #[test]
    fn our_answerer_answers_our_offer() {
        use crate::negotiate::{AnswerPolicy, answer_offer};
        let offer = offer(vec![Codec::Opus, Codec::G722, Codec::Pcmu]);
        let policy = AnswerPolicy { codecs: vec![Codec::G722, Codec::Pcmu], ..AnswerPolicy::default() };
        let remote = LocalMedia {
            address: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 5)),
            port: 30_000,
            session_id: 1,
            session_version: 1,
        };
        let answered = answer_offer(&offer.sdp, &policy, &remote).unwrap();
        let media = receive_answer(&offer, &answered.sdp).unwrap();
        assert_eq!(media.codec, Codec::G722);
        assert_eq!(media.payload_type, 9);
        assert_eq!(media.telephone_event, Some(101));
        assert_eq!(media.remote_rtp, "198.51.100.5:30000".parse().unwrap());
    }
}
