//! Offer/answer tests over a table of real-world offers.

use super::*;

fn local_v4() -> LocalMedia {
    LocalMedia { address: "203.0.113.5".parse().unwrap(), port: 40000, session_id: 42, session_version: 1 }
}

fn answer(offer: &str) -> Result<SdpAnswer, SdpError> {
    answer_offer(offer, &AnswerPolicy::default(), &local_v4())
}

fn m_lines(sdp: &str) -> Vec<&str> {
    sdp.split("\r\n").filter(|l| l.starts_with("m=")).collect()
}

const SIPP: &str = "v=0\r\n\
o=user1 53655765 2353687637 IN IP4 192.0.2.20\r\n\
s=-\r\n\
c=IN IP4 192.0.2.20\r\n\
t=0 0\r\n\
m=audio 6000 RTP/AVP 0 8 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-15\r\n\
a=ptime:20\r\n";

const BARESIP: &str = "v=0\r\n\
o=- 1417289345 3562493201 IN IP4 192.0.2.30\r\n\
s=-\r\n\
c=IN IP4 192.0.2.30\r\n\
t=0 0\r\n\
a=tool:baresip 3.10.0\r\n\
m=audio 10390 RTP/AVP 111 9 96 97 0 8 101 102\r\n\
b=AS:128\r\n\
a=rtpmap:111 opus/48000/2\r\n\
a=fmtp:111 stereo=1;sprop-stereo=1\r\n\
a=rtpmap:9 G722/8000\r\n\
a=rtpmap:96 L16/16000\r\n\
a=rtpmap:97 pcma/8000\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/48000\r\n\
a=rtpmap:102 telephone-event/8000\r\n\
a=fmtp:102 0-15,66,70\r\n\
a=rtcp-mux\r\n\
a=sendrecv\r\n\
a=label:1\r\n\
a=ssrc:1234 cname:abc\r\n";

#[test]
fn sipp_offer_pcmu_with_dtmf() {
    let answer = answer(SIPP).unwrap();
    assert_eq!(
        answer.sdp,
        "v=0\r\n\
o=switchboard 42 1 IN IP4 203.0.113.5\r\n\
s=switchboard\r\n\
c=IN IP4 203.0.113.5\r\n\
t=0 0\r\n\
m=audio 40000 RTP/AVP 0 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-15\r\n\
a=ptime:20\r\n\
a=sendrecv\r\n"
    );
    assert_eq!(
        answer.media,
        NegotiatedMedia {
            codec: Codec::Pcmu,
            payload_type: 0,
            telephone_event: Some(101),
            remote_rtp: "192.0.2.20:6000".parse().unwrap(),
            direction: Direction::SendRecv,
            ptime_ms: 20,
            opus: None,
            srtp: None,
        }
    );
    // Our answer must itself be parseable SDP.
    let parsed = SessionDescription::parse(&answer.sdp).unwrap();
    assert_eq!(parsed.media[0].port, 40000);
}

#[test]
fn baresip_offer_many_codecs_picks_our_preference_with_offerer_pts() {
    let answer = answer(BARESIP).unwrap();
    assert_eq!(answer.media.codec, Codec::Pcmu);
    assert_eq!(answer.media.payload_type, 0);
    // telephone-event at 48 kHz does not match PCMU's 8 kHz clock; 102 does.
    assert_eq!(answer.media.telephone_event, Some(102));
    assert!(answer.sdp.contains("m=audio 40000 RTP/AVP 0 102\r\n"));
    assert!(answer.sdp.contains("a=fmtp:102 0-15\r\n"));
    assert!(!answer.sdp.contains("opus"));
    assert_eq!(m_lines(&answer.sdp).len(), 1);
}

#[test]
fn preference_order_is_ours_and_dynamic_pt_is_echoed() {
    let policy = AnswerPolicy { codecs: vec![Codec::Pcma, Codec::Pcmu], ..AnswerPolicy::default() };
    let answer = answer_offer(BARESIP, &policy, &local_v4()).unwrap();
    // 97 is PCMA under a dynamic number and comes first in the offer.
    assert_eq!(answer.media.codec, Codec::Pcma);
    assert_eq!(answer.media.payload_type, 97);
    assert!(answer.sdp.contains("m=audio 40000 RTP/AVP 97 102\r\na=rtpmap:97 PCMA/8000\r\n"));
}

#[test]
fn pcma_only_offer() {
    let offer = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
m=audio 5004 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n";
    let answer = answer(offer).unwrap();
    assert_eq!(answer.media.codec, Codec::Pcma);
    assert_eq!(answer.media.payload_type, 8);
    assert_eq!(answer.media.telephone_event, None);
    assert!(answer.sdp.contains("m=audio 40000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=ptime:20\r\n"));
    assert!(!answer.sdp.contains("telephone-event"));
}

#[test]
fn g729_only_offer_has_no_common_codec() {
    let offer = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
m=audio 5004 RTP/AVP 18 101\r\na=rtpmap:18 G729/8000\r\na=fmtp:18 annexb=no\r\n\
a=rtpmap:101 telephone-event/8000\r\n";
    let error = answer(offer).unwrap_err();
    assert_eq!(error, SdpError::NoCommonCodec);
    assert!(error.is_offerers_fault());
}

#[test]
fn policy_without_offered_codec_has_no_common_codec() {
    let policy = AnswerPolicy { codecs: vec![Codec::Pcma], ..AnswerPolicy::default() };
    let offer = "v=0\nc=IN IP4 192.0.2.1\nm=audio 5004 RTP/AVP 0\n";
    assert_eq!(answer_offer(offer, &policy, &local_v4()), Err(SdpError::NoCommonCodec));
}

#[test]
fn video_and_audio_rejects_video_with_port_zero() {
    let offer = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
m=video 5006 RTP/AVP 96 97\r\na=rtpmap:96 H264/90000\r\n\
m=audio 5004 RTP/AVP 0\r\n\
m=application 5008 UDP/BFCP *\r\n";
    let answer = answer(offer).unwrap();
    assert_eq!(m_lines(&answer.sdp), ["m=video 0 RTP/AVP 96", "m=audio 40000 RTP/AVP 0", "m=application 0 UDP/BFCP *"]);
    assert_eq!(answer.media.remote_rtp, "192.0.2.1:5004".parse().unwrap());
}

#[test]
fn disabled_audio_then_second_audio_accepts_the_second() {
    let offer = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
m=audio 0 RTP/AVP 8\r\n\
m=audio 7000 RTP/AVP 0 8\r\n\
m=audio 7002 RTP/AVP 0\r\n";
    let answer = answer(offer).unwrap();
    assert_eq!(m_lines(&answer.sdp), ["m=audio 0 RTP/AVP 8", "m=audio 40000 RTP/AVP 0", "m=audio 0 RTP/AVP 0"]);
    assert_eq!(answer.media.remote_rtp.port(), 7000);
}

#[test]
fn srtp_audio_is_rejected_and_plain_audio_accepted() {
    let offer = "v=0\nc=IN IP4 192.0.2.1\nt=0 0\n\
m=audio 7000 RTP/SAVP 0\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\n\
m=audio 7002 RTP/AVP 0\n";
    let answer = answer(offer).unwrap();
    assert_eq!(m_lines(&answer.sdp), ["m=audio 0 RTP/SAVP 0", "m=audio 40000 RTP/AVP 0"]);
}

#[test]
fn only_secure_audio_is_unsupported_transport() {
    let offer = "v=0\nc=IN IP4 192.0.2.1\nm=audio 9 UDP/TLS/RTP/SAVPF 111 0\n";
    assert_eq!(answer(offer), Err(SdpError::UnsupportedTransport { proto: "UDP/TLS/RTP/SAVPF".to_owned() }));
}

#[test]
fn avpf_is_accepted() {
    let offer = "v=0\nc=IN IP4 192.0.2.1\nm=audio 7000 RTP/AVPF 0\na=rtcp-fb:* nack\n";
    let answer = answer(offer).unwrap();
    assert_eq!(answer.media.codec, Codec::Pcmu);
    assert_eq!(m_lines(&answer.sdp), ["m=audio 40000 RTP/AVPF 0"]);
}

#[test]
fn no_audio_at_all() {
    let offer = "v=0\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=video 5006 RTP/AVP 96\r\n";
    assert_eq!(answer(offer), Err(SdpError::NoAudioStream));
    let only_disabled = "v=0\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 0 RTP/AVP 0\r\n";
    assert_eq!(answer(only_disabled), Err(SdpError::NoAudioStream));
    assert_eq!(answer("v=0\r\ns=-\r\n"), Err(SdpError::NoAudioStream));
}

#[test]
fn ipv6_offer_and_ipv6_local() {
    let offer = "v=0\r\no=- 1 1 IN IP6 2001:db8::1\r\ns=-\r\nc=IN IP6 2001:db8::1\r\nt=0 0\r\n\
m=audio 5004 RTP/AVP 0\r\n";
    let local = LocalMedia { address: "2001:db8::5".parse().unwrap(), ..local_v4() };
    let answer = answer_offer(offer, &AnswerPolicy::default(), &local).unwrap();
    assert_eq!(answer.media.remote_rtp, "[2001:db8::1]:5004".parse().unwrap());
    assert!(answer.sdp.contains("o=switchboard 42 1 IN IP6 2001:db8::5\r\n"));
    assert!(answer.sdp.contains("c=IN IP6 2001:db8::5\r\n"));
}

#[test]
fn media_level_connection_wins_over_session_level() {
    let offer = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
m=audio 5004 RTP/AVP 0\r\nc=IN IP4 198.51.100.7\r\n";
    assert_eq!(answer(offer).unwrap().media.remote_rtp, "198.51.100.7:5004".parse().unwrap());
}

#[test]
fn media_connection_only() {
    let offer = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\n\
m=audio 5004 RTP/AVP 0\r\nc=IN IP4 198.51.100.8\r\n";
    assert_eq!(answer(offer).unwrap().media.remote_rtp, "198.51.100.8:5004".parse().unwrap());
}

#[test]
fn missing_connection_is_an_error() {
    let offer = "v=0\r\nm=audio 5004 RTP/AVP 0\r\n";
    assert_eq!(answer(offer), Err(SdpError::MissingConnection { media_index: 0 }));
}

#[test]
fn directions_are_reversed() {
    let cases = [
        ("a=sendonly\r\n", Direction::RecvOnly),
        ("a=recvonly\r\n", Direction::SendOnly),
        ("a=inactive\r\n", Direction::Inactive),
        ("a=sendrecv\r\n", Direction::SendRecv),
        ("", Direction::SendRecv),
    ];
    for (attribute, expected) in cases {
        let offer = format!("v=0\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 5004 RTP/AVP 0\r\n{attribute}");
        let answer = answer(&offer).unwrap();
        assert_eq!(answer.media.direction, expected, "{attribute:?}");
        assert!(answer.sdp.ends_with(&format!("a={}\r\n", expected.attribute_name())), "{}", answer.sdp);
    }
}

#[test]
fn session_level_direction_applies() {
    let offer = "v=0\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\na=sendonly\r\nm=audio 5004 RTP/AVP 0\r\n";
    assert_eq!(answer(offer).unwrap().media.direction, Direction::RecvOnly);
}

#[test]
fn legacy_hold_address_means_we_do_not_send() {
    let offer = "v=0\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\nm=audio 5004 RTP/AVP 0\r\n";
    let answer = answer(offer).unwrap();
    assert_eq!(answer.media.direction, Direction::RecvOnly);
    assert!(answer.media.remote_rtp.ip().is_unspecified());
}

#[test]
fn static_payload_types_without_rtpmap() {
    let offer = "v=0\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 5004 RTP/AVP 18 8 0\r\n";
    let answer = answer(offer).unwrap();
    assert_eq!(answer.media.codec, Codec::Pcmu);
    assert_eq!(answer.media.payload_type, 0);
    // We still describe the chosen payload type with an rtpmap.
    assert!(answer.sdp.contains("a=rtpmap:0 PCMU/8000\r\n"));
}

#[test]
fn rtpmap_overrides_static_meaning() {
    // Payload type 0 remapped to something else must not be taken as PCMU.
    let offer = "v=0\nc=IN IP4 192.0.2.1\nm=audio 5004 RTP/AVP 0 8\na=rtpmap:0 G729/8000\n";
    let answer = answer(offer).unwrap();
    assert_eq!((answer.media.codec, answer.media.payload_type), (Codec::Pcma, 8));
}

#[test]
fn lf_only_endings_are_accepted_and_answer_uses_crlf() {
    let answer = answer(&SIPP.replace("\r\n", "\n")).unwrap();
    assert_eq!(answer.media.codec, Codec::Pcmu);
    assert!(answer.sdp.lines().all(|l| !l.contains('\r')));
    assert_eq!(answer.sdp.matches("\r\n").count(), answer.sdp.lines().count());
}

#[test]
fn missing_session_name_and_origin_are_tolerated() {
    let offer = "v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 5004 RTP/AVP 0\r\n";
    assert!(answer(offer).is_ok());
}

#[test]
fn garbage_line_is_malformed_with_line_number() {
    let offer = SIPP.replace("a=ptime:20\r\n", "a=ptime:20\r\nthis is not sdp\r\n");
    match answer(&offer) {
        Err(SdpError::Malformed { line, .. }) => assert_eq!(line, 12),
        other => panic!("expected Malformed, got {other:?}"),
    }
}

#[test]
fn telephone_event_policy_off() {
    let policy = AnswerPolicy { telephone_event: false, ..AnswerPolicy::default() };
    let answer = answer_offer(SIPP, &policy, &local_v4()).unwrap();
    assert_eq!(answer.media.telephone_event, None);
    assert!(answer.sdp.contains("m=audio 40000 RTP/AVP 0\r\n"));
    assert!(!answer.sdp.contains("telephone-event"));
}

#[test]
fn telephone_event_ranges_are_intersected() {
    let cases = [
        ("a=fmtp:101 0-16\r\n", Some("0-16")),
        ("a=fmtp:101 0-255\r\n", Some("0-16")),
        ("a=fmtp:101 0-11,16\r\n", Some("0-11,16")),
        ("a=fmtp:101 0-15,66,70\r\n", Some("0-15")),
        ("", Some("0-15")),
        ("a=fmtp:101 32-40\r\n", None),
    ];
    for (fmtp, expected) in cases {
        let offer = format!(
            "v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 5004 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n{fmtp}"
        );
        let answer = answer(&offer).unwrap();
        match expected {
            Some(events) => {
                assert_eq!(answer.media.telephone_event, Some(101), "{fmtp:?}");
                assert!(answer.sdp.contains(&format!("a=fmtp:101 {events}\r\n")), "{}", answer.sdp);
            }
            None => {
                assert_eq!(answer.media.telephone_event, None, "{fmtp:?}");
                assert!(!answer.sdp.contains("101"), "{}", answer.sdp);
            }
        }
    }
}

fn opus_policy() -> AnswerPolicy {
    AnswerPolicy { codecs: vec![Codec::Opus, Codec::G722, Codec::Pcmu, Codec::Pcma], ..AnswerPolicy::default() }
}

#[test]
fn baresip_opus_offer_answers_mono_24k_with_fec_and_48k_dtmf() {
    let answer = answer_offer(BARESIP, &opus_policy(), &local_v4()).unwrap();
    assert_eq!(answer.media.codec, Codec::Opus);
    assert_eq!(answer.media.payload_type, 111);
    // RFC 4733 §7.1.1: telephone-event at the codec's clock rate, 48000 for Opus.
    assert_eq!(answer.media.telephone_event, Some(101));
    assert_eq!(
        answer.media.opus,
        Some(OpusParams { max_average_bitrate: None, max_playback_rate: None, use_inband_fec: false, ptime_ms: 20 })
    );
    assert_eq!(answer.media.ptime_ms, 20);
    let m_section = answer.sdp.split_once("m=audio").unwrap().1;
    assert_eq!(
        m_section,
        " 40000 RTP/AVP 111 101\r\n\
a=rtpmap:111 opus/48000/2\r\n\
a=fmtp:111 maxplaybackrate=24000;sprop-maxcapturerate=24000;stereo=0;sprop-stereo=0;useinbandfec=1\r\n\
a=rtpmap:101 telephone-event/48000\r\n\
a=fmtp:101 0-15\r\n\
a=ptime:20\r\n\
a=sendrecv\r\n"
    );
    let parsed = SessionDescription::parse(&answer.sdp).unwrap();
    assert_eq!(parsed.media[0].rtpmap(111).unwrap().channels, Some(2));
}

#[test]
fn opus_fmtp_limits_and_ptime_are_read_from_the_offer() {
    let offer = "v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 5004 RTP/AVP 96 0 97\r\n\
a=rtpmap:96 OPUS/48000/2\r\n\
a=fmtp:96 maxplaybackrate=16000; sprop-maxcapturerate=16000; MaxAverageBitrate=20000; useinbandfec=1; stereo=1\r\n\
a=rtpmap:97 telephone-event/8000\r\na=ptime:40\r\n";
    let answer = answer_offer(offer, &opus_policy(), &local_v4()).unwrap();
    assert_eq!(
        answer.media.opus,
        Some(OpusParams {
            max_average_bitrate: Some(20_000),
            max_playback_rate: Some(16_000),
            use_inband_fec: true,
            ptime_ms: 40,
        })
    );
    assert_eq!(answer.media.ptime_ms, 40);
    assert!(answer.sdp.contains("a=ptime:40\r\n"));
    // Only telephone-event/8000 was offered: it does not fit Opus' 48 kHz clock.
    assert_eq!(answer.media.telephone_event, None);
    assert!(answer.sdp.contains("m=audio 40000 RTP/AVP 96\r\n"));
}

#[test]
fn opus_odd_ptime_and_bad_fmtp_values_fall_back() {
    let offer = "v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 5004 RTP/AVP 96\r\n\
a=rtpmap:96 opus/48000/2\r\na=fmtp:96 maxaveragebitrate=1;maxplaybackrate=x;useinbandfec=0;junk\r\na=ptime:30\r\n";
    let answer = answer_offer(offer, &opus_policy(), &local_v4()).unwrap();
    assert_eq!(
        answer.media.opus,
        Some(OpusParams { max_average_bitrate: None, max_playback_rate: None, use_inband_fec: false, ptime_ms: 20 })
    );
    assert!(answer.sdp.contains("a=ptime:20\r\n"));
}

#[test]
fn g722_only_offer() {
    let offer = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
m=audio 5004 RTP/AVP 9 101\r\na=rtpmap:101 telephone-event/8000\r\n";
    // The default policy (G.711 only) cannot take it.
    assert_eq!(answer(offer), Err(SdpError::NoCommonCodec));
    let answer = answer_offer(offer, &opus_policy(), &local_v4()).unwrap();
    assert_eq!(answer.media.codec, Codec::G722);
    assert_eq!(answer.media.payload_type, 9);
    assert_eq!(answer.media.opus, None);
    // G.722's RTP clock is 8000 (RFC 3551 §4.5.2), so telephone-event/8000 matches.
    assert_eq!(answer.media.telephone_event, Some(101));
    assert!(
        answer
            .sdp
            .contains("m=audio 40000 RTP/AVP 9 101\r\na=rtpmap:9 G722/8000\r\na=rtpmap:101 telephone-event/8000\r\n")
    );
}

#[test]
fn our_codec_preference_picks_g722_over_pcmu() {
    let policy = AnswerPolicy { codecs: vec![Codec::G722, Codec::Pcmu], ..AnswerPolicy::default() };
    let answer = answer_offer(BARESIP, &policy, &local_v4()).unwrap();
    assert_eq!(answer.media.codec, Codec::G722);
    assert_eq!(answer.media.payload_type, 9);
    assert_eq!(answer.media.telephone_event, Some(102), "telephone-event/8000 for G.722");
    assert!(!answer.sdp.contains("opus"));
    // Offered in the other order, our preference still wins.
    let offer = "v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 5004 RTP/AVP 0 9\r\n";
    assert_eq!(answer_offer(offer, &policy, &local_v4()).unwrap().media.codec, Codec::G722);
    let policy = AnswerPolicy { codecs: vec![Codec::Pcmu, Codec::G722], ..AnswerPolicy::default() };
    assert_eq!(answer_offer(offer, &policy, &local_v4()).unwrap().media.codec, Codec::Pcmu);
}

#[test]
fn ptime_follows_policy() {
    let policy = AnswerPolicy { ptime_ms: 30, ..AnswerPolicy::default() };
    let answer = answer_offer(SIPP, &policy, &local_v4()).unwrap();
    assert_eq!(answer.media.ptime_ms, 30);
    assert!(answer.sdp.contains("a=ptime:30\r\n"));
}

/// A tiny deterministic generator (xorshift) so the property test needs no extra crates.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
}

#[test]
fn parse_and_answer_never_panic_on_mutated_offers() {
    let seeds = [SIPP, BARESIP];
    // Half the rounds answer with Opus first, exercising the Opus fmtp reader on mutations.
    let policies = [AnswerPolicy::default(), opus_policy()];
    let alphabet: &[u8] = b"=\r\n :/-0123456789amcvotsIP46AVPRTaudio.\xff\x00";
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut parsed_ok = 0;
    for round in 0..5000 {
        let mut bytes = seeds[round % seeds.len()].as_bytes().to_vec();
        for _ in 0..=rng.below(8) {
            let position = rng.below(bytes.len() + 1);
            match rng.below(4) {
                0 if position < bytes.len() => {
                    bytes.remove(position);
                }
                1 => bytes.insert(position, alphabet[rng.below(alphabet.len())]),
                2 if position < bytes.len() => bytes[position] = alphabet[rng.below(alphabet.len())],
                _ => bytes.truncate(position),
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(sdp) = SessionDescription::parse(&text) {
            parsed_ok += 1;
            // Property: serializing is a fixed point (Display normalizes line order, so the
            // second round must reproduce the first exactly) and keeps every m= section.
            let serialized = sdp.to_string();
            let reparsed = SessionDescription::parse(&serialized).unwrap();
            assert_eq!(reparsed.to_string(), serialized, "{text:?}");
            assert_eq!(reparsed.media.len(), sdp.media.len(), "{text:?}");
        }
        if let Ok(answer) = answer_offer(&text, &policies[(round / 2) % 2], &local_v4()) {
            // Property: an answer always parses and mirrors the offer's m= line count.
            let offered = SessionDescription::parse(&text).unwrap().media.len();
            let answered = SessionDescription::parse(&answer.sdp).unwrap().media.len();
            assert_eq!(offered, answered, "{text:?}");
        }
    }
    assert!(parsed_ok > 100, "mutations too destructive: {parsed_ok}");
}

#[test]
fn event_ranges_format_compactly() {
    let mut supported = [false; MAX_TELEPHONE_EVENT as usize + 1];
    assert_eq!(format_events(&supported), None);
    mark_events("0-11, 16", &mut supported);
    assert_eq!(format_events(&supported).as_deref(), Some("0-11,16"));
    mark_events("12-15", &mut supported);
    assert_eq!(format_events(&supported).as_deref(), Some("0-16"));
    let mut single = [false; 3];
    mark_events("1", &mut single);
    assert_eq!(format_events(&single).as_deref(), Some("1"));
}

#[test]
fn a_multibyte_character_at_the_line_type_position_is_malformed_not_a_panic() {
    // Byte 2 falls inside the two-byte 'é' of the second line: the type/value split must not cut it.
    let offer = "v=0\r\né=x\r\nvé\r\n";
    assert!(SessionDescription::parse(offer).is_err());
}
