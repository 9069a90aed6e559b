use super::*;
use crate::rtp::{RtpHeader, parse_rtp, write_rtp};

fn hex(text: &str) -> Vec<u8> {
    let text: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
}

fn rfc_master() -> MasterKey {
    MasterKey::from_bytes(&hex("E1F97A0D3E018BE0D64FA32C06DE4139 0EC675AD498AFEEBB6960B3AABE6")).unwrap()
}

fn rtp(sequence: u16, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut packet = Vec::new();
    let header = RtpHeader { payload_type: 0, marker: false, sequence, timestamp: u32::from(sequence) * 160, ssrc };
    write_rtp(&mut packet, &header, payload);
    packet
}

fn pair(suite: SrtpSuite) -> (SrtpContext, SrtpContext) {
    (SrtpContext::new(suite, &rfc_master()), SrtpContext::new(suite, &rfc_master()))
}

/// RFC 3711 Appendix B.3 (and the SRTCP labels' results, as libsrtp and pion compute them).
#[test]
fn key_derivation_matches_rfc_3711_b3() {
    let prf = Aes128::new(rfc_master().key().into());
    let mut out = [0u8; 16];
    derive(&prf, rfc_master().salt(), 0, &mut out);
    assert_eq!(out.to_vec(), hex("C61E7A93744F39EE10734AFE3FF7A087"), "cipher key");
    let mut salt = [0u8; 14];
    derive(&prf, rfc_master().salt(), 2, &mut salt);
    assert_eq!(salt.to_vec(), hex("30CBBC08863D8C85D49DB34A9AE1"), "cipher salt");
    let mut auth = [0u8; 20];
    derive(&prf, rfc_master().salt(), 1, &mut auth);
    assert_eq!(auth.to_vec(), hex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4"), "auth key");
    derive(&prf, rfc_master().salt(), 3, &mut out);
    assert_eq!(out.to_vec(), hex("4C1AA45A81F73D61C800BBB00FBB1EAA"), "SRTCP cipher key");
    derive(&prf, rfc_master().salt(), 5, &mut salt);
    assert_eq!(salt.to_vec(), hex("9581C7AD87B3E530BF3E4454A8B3"), "SRTCP salt");
}

/// RFC 3711 Appendix B.2: the AES-CM keystream for SSRC 0, index 0 (blocks 0-2 and
/// 0xFEFF-0xFF01).
#[test]
fn keystream_matches_rfc_3711_b2() {
    let keys = SessionKeys {
        cipher: Aes128::new_from_slice(&hex("2B7E151628AED2A6ABF7158809CF4F3C")).unwrap(),
        salt: hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD").try_into().unwrap(),
        auth: <HmacSha1 as KeyInit>::new(&[0u8; 64].into()),
    };
    let mut stream = vec![0u8; 0xFF02 * 16];
    keys.apply_keystream(0, 0, &mut stream);
    assert_eq!(
        stream[..48].to_vec(),
        hex("E03EAD0935C95E80E166B16DD92B4EB4 D23513162B02D0F72A43A2FE4A5F97AB 41E95B3BB0A2E8DD477901E4FCA894C0")
    );
    assert_eq!(
        stream[0xFEFF * 16..].to_vec(),
        hex("EC8CDF7398607CB0F2D21675EA9EA1E4 362B7C3C6773516318A077D7FC5073AE 6A2CC3787889374FBEB4C81B17BA6C44")
    );
}

#[test]
fn round_trip_both_suites_header_in_clear_payload_not() {
    for suite in [SrtpSuite::AesCm128HmacSha1_80, SrtpSuite::AesCm128HmacSha1_32] {
        let (mut sender, mut receiver) = pair(suite);
        for sequence in [65_530u16, 65_535, 0, 1, 2] {
            let plain = rtp(sequence, 0x1234, &[0xD5; 160]);
            let protected = sender.protect(&plain).unwrap();
            assert_eq!(protected.len(), plain.len() + suite.rtp_tag_len());
            assert_eq!(protected[..12], plain[..12], "the header stays readable");
            assert!(!protected[12..172].iter().all(|&b| b == 0xD5), "the payload is encrypted");
            let mut buf = protected.clone();
            let len = receiver.unprotect(&mut buf).unwrap();
            assert_eq!(&buf[..len], plain.as_slice());
            assert_eq!(parse_rtp(&buf[..len]).unwrap().0.sequence, sequence);
        }
        assert_eq!(receiver.stats().unprotected, 5);
        // RTCP both ways, with the E-bit and index trailer.
        let report = [
            0x81, 201, 0, 7, 0, 0, 0x12, 0x34, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
            21, 22, 23, 24,
        ];
        for index in 0..3u32 {
            let protected = sender.protect_rtcp(&report).unwrap();
            assert_eq!(protected.len(), report.len() + 4 + 10);
            assert_eq!(protected[..8], report[..8]);
            assert_eq!(protected[report.len()..report.len() + 4], (0x8000_0000 | index).to_be_bytes());
            let mut buf = protected;
            let len = receiver.unprotect_rtcp(&mut buf).unwrap();
            assert_eq!(&buf[..len], report.as_slice());
        }
    }
}

#[test]
fn tampered_foreign_and_replayed_packets_are_rejected_and_counted() {
    let (mut sender, mut receiver) = pair(SrtpSuite::AesCm128HmacSha1_80);
    let first = sender.protect(&rtp(10, 7, &[1; 160])).unwrap();
    // Every single-bit flip anywhere fails authentication (and is left unread).
    for at in [0, 3, 11, 12, 100, first.len() - 1] {
        let mut tampered = first.clone();
        tampered[at] ^= 0x01;
        let before = tampered.clone();
        assert!(matches!(receiver.unprotect(&mut tampered), Err(SrtpError::AuthenticationFailed)));
        assert_eq!(tampered, before);
    }
    // A packet under another key, and junk.
    let mut stranger = SrtpContext::new(SrtpSuite::AesCm128HmacSha1_80, &MasterKey::new([3; 16], [4; 14]));
    let mut foreign = stranger.protect(&rtp(11, 7, &[1; 160])).unwrap();
    assert_eq!(receiver.unprotect(&mut foreign), Err(SrtpError::AuthenticationFailed));
    assert_eq!(receiver.unprotect(&mut [0x80; 10]), Err(SrtpError::TooShort { len: 10 }));
    assert_eq!(receiver.stats().auth_failures, 7);
    // The genuine one passes once; its replay is refused.
    assert!(receiver.unprotect(&mut first.clone()).is_ok());
    assert_eq!(receiver.unprotect(&mut first.clone()), Err(SrtpError::Replayed { index: 10 }));
    assert_eq!(receiver.stats().replays, 1);
    // SRTCP too.
    let report = sender.protect_rtcp(&[0x80, 200, 0, 1, 0, 0, 0, 7]).unwrap();
    assert!(receiver.unprotect_rtcp(&mut report.clone()).is_ok());
    assert!(matches!(receiver.unprotect_rtcp(&mut report.clone()), Err(SrtpError::Replayed { .. })));
    let mut flipped = report.clone();
    flipped[9] ^= 0x80;
    assert_eq!(receiver.unprotect_rtcp(&mut flipped), Err(SrtpError::AuthenticationFailed));
}

/// The replay window's edges: out of order inside it is fine once, just outside it is not, and
/// the rollover counter follows a 2^16 wrap in both orders.
#[test]
fn replay_window_edges_and_rollover() {
    let (mut sender, mut receiver) = pair(SrtpSuite::AesCm128HmacSha1_32);
    let window = REPLAY_WINDOW as u16;
    // Protect 65_400..=65_535, 0..=300 (a wrap), keep them all, deliver out of order.
    let sequences: Vec<u16> = (65_400..=65_535).chain(0..=300).collect();
    let packets: Vec<(u16, Vec<u8>)> =
        sequences.iter().map(|&s| (s, sender.protect(&rtp(s, 9, &[s as u8; 20])).unwrap())).collect();
    let deliver = |receiver: &mut SrtpContext, sequence: u16| {
        let (_, packet) = packets.iter().find(|(s, _)| *s == sequence).unwrap();
        let mut buf = packet.clone();
        receiver.unprotect(&mut buf).map(|len| buf[..len].to_vec())
    };
    assert!(deliver(&mut receiver, 65_400).is_ok());
    assert!(deliver(&mut receiver, 65_535).is_ok());
    // Across the wrap: sequence 5 is in ROC 1 and decrypts correctly.
    let after_wrap = deliver(&mut receiver, 5).unwrap();
    assert_eq!(parse_rtp(&after_wrap).unwrap().1, &[5u8; 20]);
    // Late packets from before the wrap (ROC 0) still decrypt, once.
    let late = deliver(&mut receiver, 65_500).unwrap();
    assert_eq!(parse_rtp(&late).unwrap().1, &[(65_500u16 as u8); 20]);
    assert!(matches!(deliver(&mut receiver, 65_500), Err(SrtpError::Replayed { .. })));
    // Highest is now index 65_536 + 5: the oldest still acceptable is window - 1 behind.
    assert!(deliver(&mut receiver, 300).is_ok());
    let oldest_in_window = 300 - (window - 1);
    assert!(deliver(&mut receiver, oldest_in_window).is_ok());
    assert!(matches!(deliver(&mut receiver, oldest_in_window - 1), Err(SrtpError::Replayed { .. })), "just outside");
    assert!(matches!(deliver(&mut receiver, 300), Err(SrtpError::Replayed { .. })));
}

#[test]
fn a_new_ssrc_is_a_new_stream_and_old_ones_are_forgotten_past_the_limit() {
    let (mut sender, mut receiver) = pair(SrtpSuite::AesCm128HmacSha1_80);
    for ssrc in 0..(MAX_STREAMS as u32 + 2) {
        let mut packet = sender.protect(&rtp(100, ssrc, &[0; 10])).unwrap();
        assert!(receiver.unprotect(&mut packet).is_ok(), "ssrc {ssrc}");
    }
    assert_eq!(receiver.rtp_streams.len(), MAX_STREAMS);
    assert_eq!(sender.rtp_streams.len(), MAX_STREAMS);
}

#[test]
fn rtp_with_csrcs_and_an_extension_keeps_them_in_clear() {
    let (mut sender, mut receiver) = pair(SrtpSuite::AesCm128HmacSha1_80);
    // CC=1, X=1: 12 + 4 (CSRC) + 4 (ext header) + 4 (one ext word) = 24 header bytes.
    let mut plain = vec![0x91, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 5, 0xAA, 0xAA, 0xAA, 0xAA, 0xBE, 0xDE, 0, 1, 1, 2, 3, 4];
    plain.extend_from_slice(&[0x55; 40]);
    let protected = sender.protect(&plain).unwrap();
    assert_eq!(protected[..24], plain[..24]);
    let mut buf = protected;
    let len = receiver.unprotect(&mut buf).unwrap();
    assert_eq!(&buf[..len], plain.as_slice());
    // A header that claims more than the packet holds.
    assert!(matches!(sender.protect(&[0x9F, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 5]), Err(SrtpError::TooShort { .. })));
}
