//! SDP: parse, serialize, and the RFC 3264 answerer.

use std::net::{IpAddr, Ipv4Addr};

use switchboard_sdp::{
    AnswerPolicy, Codec, LocalMedia, MediaDescription, OfferPolicy, SessionDescription, SrtpMode, answer_offer,
    create_offer, receive_answer,
};

/// The codec an offered payload type stands for, as the offerer meant it: its rtpmap, else
/// the RFC 3551 §6 static assignment (written again here from the RFC, not taken from the
/// answerer, so the check is independent of the code under test).
fn offered_codec(media: &MediaDescription, payload_type: u8) -> Option<Codec> {
    match media.rtpmap(payload_type) {
        Some(map) => Codec::from_rtpmap(&map.encoding_name, map.clock_rate),
        None => match payload_type {
            0 => Some(Codec::Pcmu),
            8 => Some(Codec::Pcma),
            9 => Some(Codec::G722),
            _ => None,
        },
    }
}

/// The policies every input is answered with: the old default, the shipped default (G.711
/// first, then wideband), and a wideband-only gateway without DTMF.
fn policies() -> [AnswerPolicy; 3] {
    [
        AnswerPolicy::default(),
        AnswerPolicy {
            codecs: vec![Codec::Pcmu, Codec::Pcma, Codec::G722, Codec::Opus],
            ptime_ms: 20,
            telephone_event: true,
            srtp: SrtpMode::Off,
        },
        AnswerPolicy {
            codecs: vec![Codec::Opus, Codec::G722],
            ptime_ms: 40,
            telephone_event: false,
            srtp: SrtpMode::Off,
        },
    ]
}

/// `sdp_answer`: any text parses without panicking; what parses serializes and parses back to
/// the same media sections and attributes; every answer `answer_offer` produces parses as SDP, has one `m=` line per
/// offered one, exactly one of them enabled (on our port, with the negotiated payload type),
/// and its codec is one that was offered under that payload type and allowed by the policy.
pub fn answer(data: &[u8]) {
    // The gateway hands the SIP body over as text; invalid UTF-8 is replaced, not rejected.
    let text = String::from_utf8_lossy(data);
    let Ok(offer) = SessionDescription::parse(&text) else {
        for policy in policies() {
            let local = local_media();
            assert!(answer_offer(&text, &policy, &local).is_err(), "an unparseable offer was answered");
        }
        return;
    };
    let serialized = offer.to_string();
    match SessionDescription::parse(&serialized) {
        // Serialization writes the mandatory lines a lenient parse let go missing (`s=-`,
        // `t=0 0`), so the media sections must survive unchanged and the text must be a fixed
        // point from the first serialization on.
        Ok(reparsed) => {
            assert_eq!(
                canonical_media(&reparsed.media),
                canonical_media(&offer.media),
                "media sections changed by parse(to_string(sdp))\n{serialized:?}"
            );
            assert_eq!(reparsed.attributes, offer.attributes, "session attributes changed\n{serialized:?}");
            assert_eq!(reparsed.to_string(), serialized, "to_string is not a fixed point after one round trip");
        }
        Err(error) => panic!("a parsed SDP serializes to something unparseable ({error}):\n{serialized:?}"),
    }

    let local = local_media();
    for policy in policies() {
        let Ok(answer) = answer_offer(&text, &policy, &local) else {
            continue;
        };
        let parsed = match SessionDescription::parse(&answer.sdp) {
            Ok(parsed) => parsed,
            Err(error) => panic!("our answer is not valid SDP ({error}):\n{}", answer.sdp),
        };
        assert_eq!(parsed.media.len(), offer.media.len(), "RFC 3264 §6: one m= line per offered m= line");
        let enabled: Vec<usize> = (0..parsed.media.len()).filter(|&i| parsed.media[i].port != 0).collect();
        let [index] = enabled.as_slice() else {
            panic!("expected exactly one accepted stream, got {enabled:?}:\n{}", answer.sdp);
        };
        let ours = &parsed.media[*index];
        let offered = &offer.media[*index];
        let negotiated = answer.media;
        assert_eq!(ours.port, local.port, "the accepted stream is not on our port");
        assert_eq!(
            ours.formats.first().map(String::as_str),
            Some(negotiated.payload_type.to_string().as_str()),
            "the answer's first format is not the negotiated payload type"
        );
        assert!(policy.codecs.contains(&negotiated.codec), "{:?} is not allowed by the policy", negotiated.codec);
        assert!(
            offered.payload_types().any(|pt| pt == negotiated.payload_type),
            "payload type {} was not offered on m= line {index}",
            negotiated.payload_type
        );
        assert_eq!(
            offered_codec(offered, negotiated.payload_type),
            Some(negotiated.codec),
            "payload type {} was offered as another codec",
            negotiated.payload_type
        );
        assert_ne!(negotiated.remote_rtp.port(), 0, "a disabled stream was accepted");
        if let Some(events_pt) = negotiated.telephone_event {
            assert!(policy.telephone_event, "telephone-event answered although the policy refuses it");
            assert!(offered.payload_types().any(|pt| pt == events_pt), "telephone-event payload type not offered");
        }
    }
}

/// `sdp_answer_receive` (run by the `sdp_answer` target on the same input): the input read as
/// the answer to offers of ours. Never panics; an accepted answer names a codec we offered
/// under a payload type its `m=` line lists, a non-zero port, and telephone-event only when we
/// offered it and under a listed payload type.
pub fn answer_receive(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let offers = [
        OfferPolicy::default(),
        OfferPolicy {
            codecs: vec![Codec::Opus, Codec::G722, Codec::Pcmu],
            ptime_ms: 20,
            telephone_event: true,
            srtp: SrtpMode::Off,
        },
        OfferPolicy { codecs: vec![Codec::Opus], ptime_ms: 40, telephone_event: false, srtp: SrtpMode::Off },
    ];
    for policy in offers {
        let Ok(offer) = create_offer(&policy, &local_media()) else {
            panic!("a non-empty policy must make an offer");
        };
        let Ok(media) = receive_answer(&offer, &text) else {
            continue;
        };
        let answer = match SessionDescription::parse(&text) {
            Ok(answer) => answer,
            Err(error) => panic!("an unparseable answer was accepted ({error})"),
        };
        let [m] = answer.media.as_slice() else {
            panic!("an answer with {} m= lines was accepted", answer.media.len());
        };
        assert!(offer.codecs.iter().any(|c| c.codec == media.codec), "{:?} was not offered", media.codec);
        assert!(m.payload_types().any(|pt| pt == media.payload_type), "payload type not in the answer");
        assert_ne!(media.remote_rtp.port(), 0, "a rejected stream was accepted");
        if let Some(events) = media.telephone_event {
            assert!(offer.telephone_event, "telephone-event accepted although not offered");
            assert!(m.payload_types().any(|pt| pt == events), "telephone-event payload type not in the answer");
        }
    }
}

/// Media sections with their other lines (`i=`, `b=`, `k=`, unknown types) grouped by type:
/// serialization writes them in RFC 8866 §5 order, keeping the order within each type.
fn canonical_media(media: &[MediaDescription]) -> Vec<MediaDescription> {
    let mut media = media.to_vec();
    for section in &mut media {
        section.other_lines.sort_by_key(|(kind, _)| *kind);
    }
    media
}

fn local_media() -> LocalMedia {
    LocalMedia { address: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5)), port: 40000, session_id: 42, session_version: 1 }
}
