//! SDES-SRTP negotiation (RFC 4568) with each policy, both sides.

use super::*;
use crate::crypto::{MasterKey, SrtpPolicy, SrtpSuite};
use crate::offer::{OfferPolicy, create_offer, receive_answer};

const PEER_KEY: &str = "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz";

fn our_key() -> MasterKey {
    MasterKey::new([7; 16], [9; 14])
}

fn local() -> LocalMedia {
    LocalMedia { address: "203.0.113.5".parse().unwrap(), port: 40000, session_id: 42, session_version: 1 }
}

fn policy(srtp: SrtpPolicy) -> AnswerPolicy {
    AnswerPolicy { srtp: SrtpMode::new(srtp, our_key()), ..AnswerPolicy::default() }
}

fn offer(proto: &str, crypto: &[&str]) -> String {
    let mut sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 192.0.2.20\r\ns=-\r\nc=IN IP4 192.0.2.20\r\nt=0 0\r\nm=audio 6000 {proto} 0\r\na=rtpmap:0 PCMU/8000\r\n"
    );
    for line in crypto {
        sdp.push_str(&format!("a=crypto:{}\r\n", line.replace("KEY", PEER_KEY)));
    }
    sdp
}

fn crypto_lines(sdp: &str) -> Vec<&str> {
    sdp.split("\r\n").filter(|l| l.starts_with("a=crypto:")).collect()
}

#[test]
fn a_savp_offer_is_answered_with_the_first_usable_suite_its_tag_and_our_key() {
    let sdp = offer(
        "RTP/SAVP",
        &[
            "1 AEAD_AES_256_GCM inline:KEY",
            "2 AES_CM_128_HMAC_SHA1_80 inline:KEY|1:4",
            "3 AES_CM_128_HMAC_SHA1_32 inline:KEY|2^31",
            "4 AES_CM_128_HMAC_SHA1_80 inline:KEY",
        ],
    );
    for srtp in [SrtpPolicy::Optional, SrtpPolicy::Required] {
        let answer = answer_offer(&sdp, &policy(srtp), &local()).unwrap();
        assert!(answer.sdp.contains("m=audio 40000 RTP/SAVP 0\r\n"), "{}", answer.sdp);
        let ours = CryptoAttribute { tag: 3, suite: SrtpSuite::AesCm128HmacSha1_32, key: our_key() }.to_value();
        assert_eq!(crypto_lines(&answer.sdp), vec![format!("a=crypto:{ours}")]);
        assert!(!answer.sdp.contains(PEER_KEY), "never the offerer's key back");
        let keys = answer.media.srtp.unwrap();
        assert_eq!(keys.suite, SrtpSuite::AesCm128HmacSha1_32);
        assert_eq!(keys.local, our_key());
        assert_eq!(
            keys.remote,
            CryptoAttribute::parse(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{PEER_KEY}")).unwrap().key
        );
    }
    let savpf = answer_offer(
        &offer("RTP/SAVPF", &["1 AES_CM_128_HMAC_SHA1_80 inline:KEY"]),
        &policy(SrtpPolicy::Optional),
        &local(),
    )
    .unwrap();
    assert!(savpf.sdp.contains("RTP/SAVPF 0\r\n") && savpf.media.srtp.is_some());
}

#[test]
fn the_policy_decides_between_plain_and_secure_offers() {
    let plain = offer("RTP/AVP", &[]);
    let secure = offer("RTP/SAVP", &["1 AES_CM_128_HMAC_SHA1_80 inline:KEY"]);
    // off: plain only; a SAVP-only offer is refused as before.
    let off = answer_offer(&plain, &policy(SrtpPolicy::Off), &local()).unwrap();
    assert!(off.media.srtp.is_none() && crypto_lines(&off.sdp).is_empty());
    assert_eq!(
        answer_offer(&secure, &policy(SrtpPolicy::Off), &local()).map(|a| a.media),
        Err(SdpError::UnsupportedTransport { proto: "RTP/SAVP".into() })
    );
    // optional: whatever was offered.
    let optional = answer_offer(&plain, &policy(SrtpPolicy::Optional), &local()).unwrap();
    assert!(optional.media.srtp.is_none() && optional.sdp.contains("RTP/AVP 0"));
    // required: plain is refused.
    assert_eq!(
        answer_offer(&plain, &policy(SrtpPolicy::Required), &local()).map(|a| a.media),
        Err(SdpError::SrtpRequired)
    );
    // An offer of both (two m= lines, RFC 4568 §7.1.1's fallback pattern): required takes the
    // secure one, optional the first it can use.
    let both = format!(
        "{}m=audio 6002 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{PEER_KEY}\r\n",
        offer("RTP/AVP", &[])
    );
    let required = answer_offer(&both, &policy(SrtpPolicy::Required), &local()).unwrap();
    assert_eq!(required.media.remote_rtp.port(), 6002);
    assert!(required.media.srtp.is_some());
    assert!(required.sdp.contains("m=audio 0 RTP/AVP 0\r\nm=audio 40000 RTP/SAVP 0\r\n"), "{}", required.sdp);
    let optional = answer_offer(&both, &policy(SrtpPolicy::Optional), &local()).unwrap();
    assert_eq!(optional.media.remote_rtp.port(), 6000);
}

#[test]
fn a_savp_offer_with_no_usable_crypto_is_refused_with_every_reason() {
    for (lines, expected) in [
        (&[][..], "RTP/SAVP stream without a=crypto (SDES) lines"),
        (&["1 AES_CM_128_HMAC_SHA1_80 inline:short"][..], "tag 1: inline key is not base64"),
        (
            &["1 F8_128_HMAC_SHA1_80 inline:KEY", "2 AES_CM_128_HMAC_SHA1_80 inline:KEY|2^10"][..],
            "tag 1: unsupported suite F8_128_HMAC_SHA1_80; tag 2: key lifetime",
        ),
        (&["5 AES_CM_128_HMAC_SHA1_80 inline:KEY|1:4"][..], "tag 5: MKI not supported"),
    ] {
        let refused = answer_offer(&offer("RTP/SAVP", lines), &policy(SrtpPolicy::Optional), &local()).map(|a| a.media);
        let Err(SdpError::NoUsableCrypto { reason }) = refused else { panic!("{refused:?}") };
        assert!(reason.starts_with(expected), "{reason}");
        assert!(!reason.contains(PEER_KEY), "no key in the reason");
    }
}

#[test]
fn required_offers_savp_with_both_suites_and_reads_the_answers_key() {
    let ours =
        create_offer(&OfferPolicy { srtp: SrtpMode::Required(our_key()), ..OfferPolicy::default() }, &local()).unwrap();
    assert!(ours.sdp.contains("m=audio 40000 RTP/SAVP 0 8 101\r\n"), "{}", ours.sdp);
    assert_eq!(crypto_lines(&ours.sdp).len(), 2);
    assert!(
        ours.sdp.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:")
            && ours.sdp.contains("a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:")
    );
    // Optional and off offer plain RTP.
    for srtp in [SrtpMode::Optional(our_key()), SrtpMode::Off] {
        let plain = create_offer(&OfferPolicy { srtp, ..OfferPolicy::default() }, &local()).unwrap();
        assert!(plain.sdp.contains("RTP/AVP") && crypto_lines(&plain.sdp).is_empty() && plain.srtp.is_none());
    }
    // Our own answerer answers it: the keys cross over.
    let peer_key = MasterKey::new([1; 16], [2; 14]);
    let answerer = AnswerPolicy { srtp: SrtpMode::Required(peer_key), ..AnswerPolicy::default() };
    let answer = answer_offer(&ours.sdp, &answerer, &local()).unwrap();
    let media = receive_answer(&ours, &answer.sdp).unwrap();
    let keys = media.srtp.unwrap();
    assert_eq!((keys.suite, keys.local, keys.remote), (SrtpSuite::AesCm128HmacSha1_80, our_key(), peer_key));
    assert_eq!(answer.media.srtp.map(|k| (k.local, k.remote)), Some((peer_key, our_key())));
}

#[test]
fn answers_to_our_savp_offer_that_do_not_fit_are_refused() {
    let ours =
        create_offer(&OfferPolicy { srtp: SrtpMode::Required(our_key()), ..OfferPolicy::default() }, &local()).unwrap();
    let answer = |proto: &str, crypto: &str| {
        let mut sdp = format!(
            "v=0\r\no=- 1 1 IN IP4 192.0.2.20\r\ns=-\r\nc=IN IP4 192.0.2.20\r\nt=0 0\r\nm=audio 6000 {proto} 0\r\n"
        );
        if !crypto.is_empty() {
            sdp.push_str(&format!("a=crypto:{}\r\n", crypto.replace("KEY", PEER_KEY)));
        }
        receive_answer(&ours, &sdp)
    };
    assert!(answer("RTP/SAVP", "1 AES_CM_128_HMAC_SHA1_80 inline:KEY").is_ok());
    assert!(answer("RTP/SAVP", "2 AES_CM_128_HMAC_SHA1_32 inline:KEY").unwrap().srtp.is_some());
    assert_eq!(
        answer("RTP/AVP", ""),
        Err(SdpError::UnsupportedTransport { proto: "RTP/AVP".into() }),
        "plain answer to a secure offer"
    );
    for (crypto, why) in [
        ("", "no a=crypto"),
        ("1 AES_CM_128_HMAC_SHA1_32 inline:KEY", "not one we offered"),
        ("3 AES_CM_128_HMAC_SHA1_80 inline:KEY", "not one we offered"),
        ("1 AES_CM_128_HMAC_SHA1_80 inline:KEY|1:4", "MKI"),
    ] {
        let Err(SdpError::NoUsableCrypto { reason }) = answer("RTP/SAVP", crypto) else { panic!("{crypto}") };
        assert!(reason.contains(why), "{reason}");
    }
    // A plain offer of ours does not take a secure answer.
    let plain = create_offer(&OfferPolicy::default(), &local()).unwrap();
    let savp = "v=0\r\no=- 1 1 IN IP4 192.0.2.20\r\ns=-\r\nc=IN IP4 192.0.2.20\r\nt=0 0\r\nm=audio 6000 RTP/SAVP 0\r\n";
    assert!(matches!(receive_answer(&plain, savp), Err(SdpError::UnsupportedTransport { .. })));
}
