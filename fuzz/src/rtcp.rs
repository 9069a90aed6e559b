//! RTCP compound packets (RFC 3550 §6): what a peer's reports can do to the parser.

use switchboard_media::rtcp::{RtcpPacket, parse_compound, round_trip, write_report};

/// `rtcp`: parsing never panics; an SR or RR that parses re-writes (with our SDES) to a compound
/// packet that parses back to the same sender, report blocks and SSRC, 32-bit aligned; the
/// round-trip time of any block is either absent or under the 16.16 half range.
pub fn round_trip_reports(data: &[u8]) {
    let Ok(packets) = parse_compound(data) else {
        return;
    };
    assert!(!packets.is_empty(), "an Ok compound packet has a packet");
    for packet in &packets {
        let (ssrc, sender, reports) = match packet {
            RtcpPacket::SenderReport { ssrc, sender, reports } => (*ssrc, Some(sender), reports),
            RtcpPacket::ReceiverReport { ssrc, reports } => (*ssrc, None, reports),
            RtcpPacket::Other { .. } => continue,
        };
        assert!(reports.len() <= 31, "a 5-bit count");
        for block in reports {
            if let Some(rtt) = round_trip(block, 0x1234_5678_9ABC_DEF0) {
                assert!(rtt.as_secs() < 1 << 15, "rtt {rtt:?} beyond the half range");
            }
        }
        let mut written = Vec::new();
        write_report(&mut written, ssrc, sender, reports, "fuzz");
        assert_eq!(written.len() % 4, 0, "written RTCP is 32-bit aligned");
        let again = parse_compound(&written).unwrap_or_else(|e| panic!("write_report wrote an invalid packet: {e}"));
        assert_eq!(again.first(), Some(packet), "report changed on write/parse");
        assert_eq!(again.len(), 2, "report + SDES");
    }
}
