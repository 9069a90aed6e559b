//! The answerer side of the RFC 3264 offer/answer model for one audio stream.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use crate::codec::{Codec, Direction};
use crate::crypto::{CryptoAttribute, SrtpKeys, SrtpMode, is_sdes_srtp};
use crate::error::SdpError;
use crate::model::{AddressType, MediaDescription, SessionDescription};

/// What we are willing to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerPolicy {
    /// Codecs we accept, in our order of preference (our preference wins over the offer's).
    pub codecs: Vec<Codec>,
    /// Packetization time we announce with `a=ptime`, in milliseconds.
    pub ptime_ms: u32,
    /// Whether to accept RFC 4733 telephone-event (DTMF) when offered.
    pub telephone_event: bool,
    /// SRTP (RFC 4568 SDES): off, optional or required, with our fresh key for the answer.
    pub srtp: SrtpMode,
}

impl Default for AnswerPolicy {
    fn default() -> Self {
        AnswerPolicy {
            codecs: vec![Codec::Pcmu, Codec::Pcma],
            ptime_ms: 20,
            telephone_event: true,
            srtp: SrtpMode::Off,
        }
    }
}

/// Our side of the media: where we receive RTP, and the `o=` identifiers of our SDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalMedia {
    /// The address written in `o=` and `c=` (the one the peer sends RTP to).
    pub address: IpAddr,
    /// Our RTP port.
    pub port: u16,
    /// `<sess-id>` of our `o=` line.
    pub session_id: u64,
    /// `<sess-version>` of our `o=` line; increment it whenever our SDP changes (RFC 3264 §8).
    pub session_version: u64,
}

/// The outcome of a successful negotiation, what the media layer needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NegotiatedMedia {
    /// The chosen codec.
    pub codec: Codec,
    /// The offerer's payload type number for the codec; we send and expect it.
    pub payload_type: u8,
    /// The offerer's payload type for telephone-event at the codec's clock rate, if offered
    /// and allowed by the policy.
    pub telephone_event: Option<u8>,
    /// Where to send RTP: the effective `c=` address and the `m=` port. The address is
    /// unspecified (`0.0.0.0`) for a legacy hold offer, in which case `direction` does not send.
    pub remote_rtp: SocketAddr,
    /// Our direction in the answer.
    pub direction: Direction,
    /// Our packetization time in milliseconds (for Opus the offered `a=ptime` when it is 10,
    /// 20, 40 or 60, else the policy's).
    pub ptime_ms: u32,
    /// The peer's Opus parameters when the codec is Opus (RFC 7587 §6.1), `None` otherwise.
    pub opus: Option<OpusParams>,
    /// The SRTP suite and keys when the stream is RTP/SAVP(F) (RFC 4568), `None` for plain RTP.
    pub srtp: Option<SrtpKeys>,
}

/// What the offerer's Opus fmtp asks of the stream we send (RFC 7587 §6.1): limits for our
/// encoder and the packet duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusParams {
    /// `maxaveragebitrate`: the most the peer wants to receive, bit/s (6000-510000).
    pub max_average_bitrate: Option<u32>,
    /// `maxplaybackrate`: the highest audio rate the peer renders, Hz (8000-48000).
    pub max_playback_rate: Option<u32>,
    /// `useinbandfec=1`: the peer's decoder uses in-band FEC, so ours should send it.
    pub use_inband_fec: bool,
    /// The packet duration to send, ms: the offered `a=ptime` if 10, 20, 40 or 60, else the
    /// policy's.
    pub ptime_ms: u32,
}

/// The receive side of our Opus stream, announced in the answer's fmtp (RFC 7587 §6.1): mono,
/// audio at most 24 kHz (the model's rate, so no wider band is worth the bits), and we decode
/// in-band FEC.
pub(crate) const OUR_OPUS_FMTP: &str =
    "maxplaybackrate=24000;sprop-maxcapturerate=24000;stereo=0;sprop-stereo=0;useinbandfec=1";

/// Our answer SDP (CRLF line endings) and the negotiated media parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdpAnswer {
    /// The answer body.
    pub sdp: String,
    /// The negotiated stream.
    pub media: NegotiatedMedia,
}

/// The encoding name of RFC 4733 DTMF events.
pub(crate) const TELEPHONE_EVENT: &str = "telephone-event";
/// The DTMF events we handle: 0-9, *, #, A-D (0-15) and flash (16), RFC 4733 §3.2.
const MAX_TELEPHONE_EVENT: u8 = 16;

/// Answers an SDP offer (RFC 3264 §6) accepting the first acceptable audio stream.
///
/// The answer has one `m=` line per offered `m=` line, in order. Rejected streams (non-audio,
/// transports other than RTP/AVP(F), port 0, audio after the accepted one, audio without a
/// common codec) are answered with port 0, the offered media type and proto and the first
/// offered format (RFC 3264 §6).
pub fn answer_offer(offer: &str, policy: &AnswerPolicy, local: &LocalMedia) -> Result<SdpAnswer, SdpError> {
    let offer = SessionDescription::parse(offer)?;

    let mut accepted: Option<(usize, NegotiatedMedia, Option<String>, Option<u32>)> = None;
    let mut saw_enabled_audio = false;
    let mut unsupported_proto: Option<&str> = None;
    let mut plain_refused = false;
    let mut crypto_refused: Option<String> = None;

    for (index, media) in offer.media.iter().enumerate() {
        if accepted.is_some() || !media.media.eq_ignore_ascii_case("audio") || media.port == 0 {
            continue;
        }
        let srtp = if is_plain_rtp(&media.proto) {
            if policy.srtp.is_required() {
                plain_refused = true;
                continue;
            }
            None
        } else if let (true, Some(local)) = (is_sdes_srtp(&media.proto), policy.srtp.key()) {
            match choose_crypto(media) {
                Ok(offered) => Some((offered, local)),
                Err(reason) => {
                    crypto_refused.get_or_insert(reason);
                    continue;
                }
            }
        } else {
            unsupported_proto.get_or_insert(&media.proto);
            continue;
        };
        saw_enabled_audio = true;
        let Some((codec, payload_type)) = choose_codec(media, policy) else {
            continue;
        };
        let connection = offer.media_connection(media).ok_or(SdpError::MissingConnection { media_index: index })?;
        let (telephone_event, events) = if policy.telephone_event {
            choose_telephone_event(media, codec).map_or((None, None), |(pt, events)| (Some(pt), Some(events)))
        } else {
            (None, None)
        };
        let mut offered_direction = offer.media_direction(media);
        // RFC 3264 §8.4: a legacy hold offer sets c= to 0.0.0.0: the offerer will not receive.
        if connection.is_hold() {
            offered_direction = match offered_direction {
                Direction::SendRecv | Direction::SendOnly => Direction::SendOnly,
                Direction::RecvOnly | Direction::Inactive => Direction::Inactive,
            };
        }
        let opus = (codec == Codec::Opus).then(|| opus_params(media, payload_type, policy.ptime_ms));
        let negotiated = NegotiatedMedia {
            codec,
            payload_type,
            telephone_event,
            remote_rtp: SocketAddr::new(connection.address, media.port),
            direction: offered_direction.reverse(),
            ptime_ms: opus.map_or(policy.ptime_ms, |params| params.ptime_ms),
            opus,
            srtp: srtp.map(|(offered, local)| SrtpKeys { suite: offered.suite, local, remote: offered.key }),
        };
        accepted = Some((index, negotiated, events, srtp.map(|(offered, _)| offered.tag)));
    }

    let Some((accepted_index, negotiated, events, crypto_tag)) = accepted else {
        return Err(if saw_enabled_audio {
            SdpError::NoCommonCodec
        } else if let Some(reason) = crypto_refused {
            SdpError::NoUsableCrypto { reason }
        } else if plain_refused {
            SdpError::SrtpRequired
        } else if let Some(proto) = unsupported_proto {
            SdpError::UnsupportedTransport { proto: proto.to_owned() }
        } else {
            SdpError::NoAudioStream
        });
    };

    let sdp = write_answer(&offer, accepted_index, &negotiated, events.as_deref(), crypto_tag, local);
    Ok(SdpAnswer { sdp, media: negotiated })
}

/// The first `a=crypto` line of an RTP/SAVP(F) stream we can use (RFC 4568 §7.1.1); else why
/// none is, line by line (tags only: never a key), for the 488's reason.
fn choose_crypto(media: &MediaDescription) -> Result<CryptoAttribute, String> {
    let mut reasons = Vec::new();
    for value in media.attributes.iter().filter(|a| a.name == "crypto").filter_map(|a| a.value.as_deref()) {
        match CryptoAttribute::parse(value) {
            Ok(line) => return Ok(line),
            Err(e) => {
                let tag = value.split_whitespace().next().unwrap_or("?").chars().take(9).collect::<String>();
                if reasons.len() < 4 {
                    reasons.push(format!("tag {tag}: {e}"));
                }
            }
        }
    }
    if reasons.is_empty() {
        return Err(format!("{} stream without a=crypto (SDES) lines", media.proto));
    }
    Err(reasons.join("; "))
}

/// RTP/AVP, and RTP/AVPF which is backwards compatible with it (RFC 4585 §3.1): we simply send
/// no feedback. Secure profiles need keys we do not have.
pub(crate) fn is_plain_rtp(proto: &str) -> bool {
    proto.eq_ignore_ascii_case("RTP/AVP") || proto.eq_ignore_ascii_case("RTP/AVPF")
}

/// Our preference order wins; within a codec, the first matching offered payload type.
fn choose_codec(media: &MediaDescription, policy: &AnswerPolicy) -> Option<(Codec, u8)> {
    policy.codecs.iter().find_map(|&codec| {
        media.payload_types().find(|&pt| offered_codec(media, pt) == Some(codec)).map(|pt| (codec, pt))
    })
}

/// The codec a payload type stands for: its rtpmap if present, else the static assignment
/// (RFC 3551 §6; static types may omit rtpmap, RFC 8866 §6.6).
fn offered_codec(media: &MediaDescription, payload_type: u8) -> Option<Codec> {
    match media.rtpmap(payload_type) {
        Some(map) => Codec::from_rtpmap(&map.encoding_name, map.clock_rate),
        None if payload_type < 96 => Codec::from_static_payload_type(payload_type),
        None => None,
    }
}

/// Reads the offerer's Opus fmtp (RFC 7587 §6.1: `;`-separated `name=value`, names
/// case-insensitive). Out-of-range or unparseable values are ignored, as if absent.
pub(crate) fn opus_params(media: &MediaDescription, payload_type: u8, policy_ptime_ms: u32) -> OpusParams {
    let mut params =
        OpusParams { max_average_bitrate: None, max_playback_rate: None, use_inband_fec: false, ptime_ms: 20 };
    for (name, value) in media.fmtp(payload_type).unwrap_or("").split(';').filter_map(|p| p.split_once('=')) {
        let (name, value) = (name.trim(), value.trim());
        let number = value.parse::<u32>().ok();
        if name.eq_ignore_ascii_case("maxaveragebitrate") {
            params.max_average_bitrate = number.filter(|n| (6000..=510_000).contains(n));
        } else if name.eq_ignore_ascii_case("maxplaybackrate") {
            params.max_playback_rate = number.filter(|n| (8000..=48_000).contains(n));
        } else if name.eq_ignore_ascii_case("useinbandfec") {
            params.use_inband_fec = number == Some(1);
        }
    }
    // Opus frames are 2.5-60 ms; an RTP packet of one frame of 10-60 ms covers what phones ask.
    let is_opus_ptime = |ms: &u32| matches!(ms, 10 | 20 | 40 | 60);
    params.ptime_ms =
        media.ptime_ms().filter(is_opus_ptime).or(Some(policy_ptime_ms).filter(is_opus_ptime)).unwrap_or(20);
    params
}

/// RFC 4733 §7.1.1: telephone-event must use the clock rate of the audio codec. Returns the
/// payload type and the event list to answer (the offered events intersected with 0-16), or
/// `None` when telephone-event was not offered at this rate or no common event remains.
fn choose_telephone_event(media: &MediaDescription, codec: Codec) -> Option<(u8, String)> {
    let map = media.payload_types().find_map(|pt| {
        media.rtpmap(pt).filter(|map| {
            map.encoding_name.eq_ignore_ascii_case(TELEPHONE_EVENT) && map.clock_rate == codec.clock_rate()
        })
    })?;
    let mut supported = [false; MAX_TELEPHONE_EVENT as usize + 1];
    match media.fmtp(map.payload_type).filter(|p| !p.is_empty()) {
        Some(params) => mark_events(params, &mut supported),
        // RFC 4733 §2.4.1: without the events parameter the offerer supports 0-15.
        None => supported[..=15].iter_mut().for_each(|e| *e = true),
    }
    let events = format_events(&supported)?;
    Some((map.payload_type, events))
}

/// Marks the events of an RFC 4733 event list (`0-15,16` style) that we support too.
/// Unparseable items are ignored rather than failing the call.
fn mark_events(list: &str, supported: &mut [bool]) {
    for item in list.split(',').map(str::trim) {
        let range = match item.split_once('-') {
            Some((low, high)) => low.trim().parse::<u32>().ok().zip(high.trim().parse().ok()),
            None => item.parse::<u32>().ok().map(|single| (single, single)),
        };
        if let Some((low, high)) = range {
            for event in low..=high.min(u32::from(MAX_TELEPHONE_EVENT)) {
                if let Some(slot) = supported.get_mut(event as usize) {
                    *slot = true;
                }
            }
        }
    }
}

/// Formats supported events as compact ranges, e.g. `0-15` or `0-11,16`.
fn format_events(supported: &[bool]) -> Option<String> {
    let mut out = String::new();
    // Walk the flags once, closing a run at each unsupported event (and at the end).
    let mut run_start: Option<usize> = None;
    for (event, &is_supported) in supported.iter().chain(std::iter::once(&false)).enumerate() {
        match (is_supported, run_start) {
            (true, None) => run_start = Some(event),
            (false, Some(start)) => {
                if !out.is_empty() {
                    out.push(',');
                }
                let last = event - 1;
                if start == last {
                    let _ = write!(out, "{start}");
                } else {
                    let _ = write!(out, "{start}-{last}");
                }
                run_start = None;
            }
            _ => {}
        }
    }
    (!out.is_empty()).then_some(out)
}

fn write_answer(
    offer: &SessionDescription,
    accepted_index: usize,
    negotiated: &NegotiatedMedia,
    events: Option<&str>,
    crypto_tag: Option<u32>,
    local: &LocalMedia,
) -> String {
    let address_type = match AddressType::of(local.address) {
        AddressType::Ip4 => "IP4",
        AddressType::Ip6 => "IP6",
    };
    let mut sdp = String::with_capacity(256);
    // Writing to a String cannot fail.
    let _ = write!(
        sdp,
        "v=0\r\no=switchboard {} {} IN {address_type} {}\r\ns=switchboard\r\nc=IN {address_type} {}\r\nt=0 0\r\n",
        local.session_id, local.session_version, local.address, local.address
    );
    for (index, media) in offer.media.iter().enumerate() {
        if index != accepted_index {
            // RFC 3264 §6: a rejected stream keeps its media type and proto, port 0, and at
            // least one format (parse guarantees there is one).
            let first_format = media.formats.first().map_or("0", String::as_str);
            let _ = write!(sdp, "m={} 0 {} {first_format}\r\n", media.media, media.proto);
            continue;
        }
        let codec = negotiated.codec;
        let pt = negotiated.payload_type;
        let _ = write!(sdp, "m=audio {} {} {pt}", local.port, media.proto);
        if let Some(te) = negotiated.telephone_event {
            let _ = write!(sdp, " {te}");
        }
        let _ = write!(sdp, "\r\na=rtpmap:{pt} {}/{}", codec.encoding_name(), codec.clock_rate());
        if let Some(channels) = codec.rtpmap_channels() {
            let _ = write!(sdp, "/{channels}");
        }
        sdp.push_str("\r\n");
        if codec == Codec::Opus {
            let _ = write!(sdp, "a=fmtp:{pt} {OUR_OPUS_FMTP}\r\n");
        }
        if let (Some(te), Some(events)) = (negotiated.telephone_event, events) {
            let _ = write!(sdp, "a=rtpmap:{te} {TELEPHONE_EVENT}/{}\r\na=fmtp:{te} {events}\r\n", codec.clock_rate());
        }
        // RFC 4568 §7.1.2: the offer's tag and suite, our own key.
        if let (Some(tag), Some(keys)) = (crypto_tag, negotiated.srtp) {
            let line = CryptoAttribute { tag, suite: keys.suite, key: keys.local };
            let _ = write!(sdp, "a=crypto:{}\r\n", line.to_value());
        }
        let _ = write!(sdp, "a=ptime:{}\r\na={}\r\n", negotiated.ptime_ms, negotiated.direction.attribute_name());
    }
    sdp
}

#[cfg(test)]
mod srtp_tests;
#[cfg(test)]
mod tests;
